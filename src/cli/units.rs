//! Parsing of human sizes ("1GiB", "64MiB", "4096") and reservation keys.

/// Parse a byte size: a number with an optional unit (K, KB, KiB, M, ... ;
/// all binary, as disk tools use). Rejects zero, overflow and junk.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("invalid size {s:?}: expected a number with an optional unit, like 1GiB or 512MiB"));
    }
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}: number too large"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("invalid size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB or TiB)")),
    };
    let bytes = n.checked_mul(1 << shift).ok_or_else(|| format!("invalid size {s:?}: too large"))?;
    if bytes == 0 {
        return Err(format!("invalid size {s:?}: must be greater than zero"));
    }
    Ok(bytes)
}

/// Parse a 64-bit reservation key: `0x`-prefixed hex or decimal, not zero.
pub fn parse_key(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    }
    .map_err(|_| format!("invalid key {s:?}: expected a 64-bit number, decimal or 0x-prefixed hex"))?;
    if v == 0 {
        return Err("invalid key 0: key 0 marks a free slot".into());
    }
    Ok(v)
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[i]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("8k"), Ok(8192));
        for bad in ["", "GiB", "-1", "1.5G", "1XB", "0", "99999999999999999999", "18446744073709551615TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        assert_eq!(parse_key("0xA"), Ok(10));
        assert_eq!(parse_key("42"), Ok(42));
        for bad in ["0", "0x", "abc", "-3", "0x1ffffffffffffffff"] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
    }
}
