//! The keys and values the `debug writer` stores, batch by batch, so that a
//! recovered partition says which batches it holds and whether each is whole.

/// The key of op `i` of batch `batch`.
pub fn batch_key(batch: u64, i: u32) -> Vec<u8> {
    format!("w{batch:010}-{i:04}").into_bytes()
}

/// The value of op `i` of batch `batch`: self-describing, padded to `len`.
pub fn batch_value(batch: u64, i: u32, len: usize) -> Vec<u8> {
    let mut v = format!("b{batch}-{i}-").into_bytes();
    let fill = b'a' + (batch % 26) as u8;
    v.resize(len.max(v.len()), fill);
    v
}

/// The batch and index a key of [`batch_key`] names.
pub fn parse_batch_key(key: &[u8]) -> Option<(u64, u32)> {
    let s = std::str::from_utf8(key).ok()?;
    if s.len() != 16 || !s.starts_with('w') || s.as_bytes()[11] != b'-' {
        return None;
    }
    Some((s[1..11].parse().ok()?, s[12..].parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_batch() {
        assert_eq!(batch_key(12, 3), b"w0000000012-0003");
        assert_eq!(parse_batch_key(&batch_key(12, 3)), Some((12, 3)));
        assert_eq!(parse_batch_key(b"w00000000120003"), None);
        assert_eq!(batch_value(1, 2, 12), b"b1-2-bbbbbbb");
        assert_eq!(batch_value(1, 2, 0), b"b1-2-");
    }
}
