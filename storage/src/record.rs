//! Log records: encoding into a buffer, and strict decoding of untrusted bytes.

use crate::Error;
use crate::layout::*;

/// One operation in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`; `expire_at_ms` is a unix time in ms, 0 = never.
    /// The value is shared, not owned: a 100 MB SET goes from the
    /// connection's buffer to the log without a copy.
    Put {
        key: Vec<u8>,
        value: bytes::Bytes,
        expire_at_ms: u64,
    },
    Del {
        key: Vec<u8>,
    },
    /// Set `key` to a large value stored out of the log in a blob: the
    /// record carries the blob's encoded [`crate::blob::BlobRef`] (a put of
    /// a large value becomes this inside `Partition::append`; the cleaner
    /// relocates it as it is).
    PutLarge {
        key: Vec<u8>,
        blob: Vec<u8>,
        expire_at_ms: u64,
    },
    /// Delete every key of the partition (`FLUSHALL`): one record, whatever
    /// the keys; every record before it in the log is dead.
    Clear,
    /// Set `field` of the hash at `key` to `value` (the hash is created if
    /// the key holds none). A hash is its fields' records, so a write of one
    /// field costs that field, whatever the hash holds.
    FieldPut {
        key: Vec<u8>,
        field: Vec<u8>,
        value: bytes::Bytes,
    },
    /// Remove `field` from the hash at `key` (never its last field: that is
    /// a `Del` of the key).
    FieldDel {
        key: Vec<u8>,
        field: Vec<u8>,
    },
    /// Set the expiry of the hash at `key` (unix ms, 0 = never).
    Expire {
        key: Vec<u8>,
        expire_at_ms: u64,
    },
}

impl Op {
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. }
            | Op::Del { key }
            | Op::PutLarge { key, .. }
            | Op::FieldPut { key, .. }
            | Op::FieldDel { key, .. }
            | Op::Expire { key, .. } => key,
            Op::Clear => &[],
        }
    }
    pub fn encoded_bytes(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => record_bytes(key.len(), value.len()),
            Op::PutLarge { key, blob, .. } => record_bytes(key.len(), blob.len()),
            Op::Del { key } | Op::Expire { key, .. } => record_bytes(key.len(), 0),
            Op::Clear => record_bytes(0, 0),
            Op::FieldPut { key, field, value } => record_bytes(key.len(), FIELD_LEN_BYTES + field.len() + value.len()),
            Op::FieldDel { key, field } => record_bytes(key.len(), field.len()),
        }
    }
}

/// The field length that starts a field record's value.
const FIELD_LEN_BYTES: usize = 4;

/// A field record's value split into (field, the field's value); None if
/// the length prefix does not fit (`decode` refuses such a record).
pub fn split_field(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(value.get(..FIELD_LEN_BYTES)?.try_into().ok()?) as usize;
    let rest = &value[FIELD_LEN_BYTES..];
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// The identity stamped into every record.
#[derive(Clone, Copy, Debug)]
pub struct Stamp {
    pub writer_key: u64,
    pub token: u32,
    pub seq: u64,
}

/// Append the encoding of `op` to `out` (whose length must be a multiple of 8).
pub fn encode(op: &Op, stamp: Stamp, out: &mut Vec<u8>) {
    let field_len;
    // The value in up to three parts (a field record's: length, field, value).
    let (kind, key, parts, expire): (u8, &[u8], [&[u8]; 3], u64) = match op {
        Op::Put { key, value, expire_at_ms } => (REC_KIND_PUT, key, [value, &[], &[]], *expire_at_ms),
        Op::PutLarge { key, blob, expire_at_ms } => (REC_KIND_LARGE, key, [blob, &[], &[]], *expire_at_ms),
        Op::Del { key } => (REC_KIND_DEL, key, [&[], &[], &[]], 0),
        Op::Clear => (REC_KIND_CLEAR, &[], [&[], &[], &[]], 0),
        Op::FieldPut { key, field, value } => {
            field_len = (field.len() as u32).to_le_bytes();
            (REC_KIND_FIELD, key, [&field_len, field, value], 0)
        }
        Op::FieldDel { key, field } => (REC_KIND_FIELD_DEL, key, [field, &[], &[]], 0),
        Op::Expire { key, expire_at_ms } => (REC_KIND_EXPIRE, key, [&[], &[], &[]], *expire_at_ms),
    };
    let value_len: usize = parts.iter().map(|p| p.len()).sum();
    let start = out.len();
    let total = record_bytes(key.len(), value_len);
    out.resize(start + total, 0);
    let r = &mut out[start..];
    r[RH_MAGIC..RH_MAGIC + 2].copy_from_slice(&REC_MAGIC.to_le_bytes());
    r[RH_VERSION] = REC_VERSION;
    r[RH_KIND] = kind;
    r[RH_KEY_LEN..RH_KEY_LEN + 4].copy_from_slice(&(key.len() as u32).to_le_bytes());
    r[RH_VALUE_LEN..RH_VALUE_LEN + 4].copy_from_slice(&(value_len as u32).to_le_bytes());
    r[RH_TOKEN..RH_TOKEN + 4].copy_from_slice(&stamp.token.to_le_bytes());
    r[RH_WRITER_KEY..RH_WRITER_KEY + 8].copy_from_slice(&stamp.writer_key.to_le_bytes());
    r[RH_SEQ..RH_SEQ + 8].copy_from_slice(&stamp.seq.to_le_bytes());
    r[RH_EXPIRE_AT_MS..RH_EXPIRE_AT_MS + 8].copy_from_slice(&expire.to_le_bytes());
    let k = RECORD_HEADER_BYTES;
    r[k..k + key.len()].copy_from_slice(key);
    let mut at = k + key.len();
    for p in parts {
        r[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    r[total - 8..total - 4].copy_from_slice(&(total as u32).to_le_bytes());
    let crc = crc32c::crc32c(&r[..total - 4]);
    r[total - 4..total].copy_from_slice(&crc.to_le_bytes());
}

/// A decoded record, borrowing its key and value from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: u8,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub token: u32,
    pub writer_key: u64,
    pub seq: u64,
    pub expire_at_ms: u64,
    /// Bytes the record occupies, trailer included.
    pub total: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decode the record at the start of `buf`. `offset` is only for messages.
/// Never panics, whatever the bytes.
pub fn decode(buf: &[u8], offset: u64) -> Result<Record<'_>, Error> {
    let bad = |d: String| Err(Error::corrupted("record", offset, d));
    if buf.len() < RECORD_HEADER_BYTES + RECORD_TRAILER_BYTES {
        return bad(format!("only {} bytes left, a record needs at least 48", buf.len()));
    }
    let magic = u16::from_le_bytes([buf[RH_MAGIC], buf[RH_MAGIC + 1]]);
    if magic != REC_MAGIC || buf[RH_VERSION] != REC_VERSION {
        return bad(format!("bad magic/version {magic:#06x}/{}", buf[RH_VERSION]));
    }
    let kind = buf[RH_KIND];
    if !(REC_KIND_PUT..=REC_KIND_EXPIRE).contains(&kind) {
        return bad(format!("unknown record kind {kind}"));
    }
    let key_len = u32_at(buf, RH_KEY_LEN) as usize;
    let value_len = u32_at(buf, RH_VALUE_LEN) as usize;
    if key_len > buf.len() || value_len > buf.len() {
        return bad(format!("lengths {key_len}/{value_len} exceed the {} bytes left", buf.len()));
    }
    let total = record_bytes(key_len, value_len);
    if total > buf.len() {
        return bad(format!("record of {total} bytes runs past the end ({} left)", buf.len()));
    }
    if u32_at(buf, total - 8) as usize != total {
        return bad(format!("trailer length {} does not match {total}", u32_at(buf, total - 8)));
    }
    let crc = crc32c::crc32c(&buf[..total - 4]);
    if crc != u32_at(buf, total - 4) {
        return bad(format!("checksum {crc:#010x} does not match stored {:#010x}", u32_at(buf, total - 4)));
    }
    if kind == REC_KIND_DEL && value_len != 0 {
        return bad("delete record with a value".into());
    }
    if kind == REC_KIND_CLEAR && (key_len != 0 || value_len != 0 || u64_at(buf, RH_EXPIRE_AT_MS) != 0) {
        return bad("clear record with a key, value or expiry".into());
    }
    let k = RECORD_HEADER_BYTES;
    let value = &buf[k + key_len..k + key_len + value_len];
    let expire = u64_at(buf, RH_EXPIRE_AT_MS);
    match kind {
        REC_KIND_FIELD if split_field(value).is_none() => return bad("field record whose field runs past its value".into()),
        REC_KIND_FIELD | REC_KIND_FIELD_DEL if expire != 0 => return bad("field record with an expiry".into()),
        REC_KIND_EXPIRE if value_len != 0 => return bad("expire record with a value".into()),
        _ => {}
    }
    if kind == REC_KIND_LARGE {
        crate::blob::BlobRef::decode(&buf[k + key_len..k + key_len + value_len], offset, 0)?;
    }
    Ok(Record {
        kind,
        key: &buf[k..k + key_len],
        value: &buf[k + key_len..k + key_len + value_len],
        token: u32_at(buf, RH_TOKEN),
        writer_key: u64_at(buf, RH_WRITER_KEY),
        seq: u64_at(buf, RH_SEQ),
        expire_at_ms: u64_at(buf, RH_EXPIRE_AT_MS),
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flip_detected() {
        let op = Op::Put { key: b"hello".to_vec(), value: b"world!!".to_vec().into(), expire_at_ms: 42 };
        let mut buf = Vec::new();
        encode(&op, Stamp { writer_key: 7, token: 3, seq: 9 }, &mut buf);
        assert_eq!(buf.len() % 8, 0);
        let r = decode(&buf, 0).unwrap();
        assert_eq!((r.key, r.value, r.expire_at_ms, r.seq, r.token, r.writer_key), (&b"hello"[..], &b"world!!"[..], 42, 9, 3, 7));
        assert_eq!(r.total, buf.len());
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                // A flip in padding is covered by the crc too.
                assert!(decode(&b, 0).is_err(), "flip at byte {i} bit {bit} went undetected");
            }
        }
    }

    /// Golden bytes of a known record (FORMAT.md, "Segments and records").
    #[test]
    fn golden_record() {
        let op = Op::Put { key: b"k".to_vec(), value: b"vv".to_vec().into(), expire_at_ms: 0x10 };
        let mut buf = Vec::new();
        encode(&op, Stamp { writer_key: 0xab, token: 2, seq: 3 }, &mut buf);
        let hex: String = buf.iter().map(|x| format!("{x:02x}")).collect();
        let golden = concat!(
            "4453",             // magic 0x5344
            "01",               // version
            "01",               // kind: put
            "01000000",         // key_len
            "02000000",         // value_len
            "02000000",         // fence token
            "ab00000000000000", // writer key
            "0300000000000000", // seq
            "1000000000000000", // expire_at_ms
            "6b7676",           // key, value
            "0000000000",       // pad to a multiple of 8
            "38000000",         // total length 56
            "77df1f83",         // crc32c of the 52 bytes before it
        );
        assert_eq!(hex, golden);
        assert_eq!(decode(&buf, 0).unwrap().total, 56);
    }

    /// A clear is one fixed-size record with no key, value or expiry, and a
    /// record of that kind carrying any of them is refused as corrupted.
    #[test]
    fn a_clear_is_a_bare_record() {
        let mut buf = Vec::new();
        encode(&Op::Clear, Stamp { writer_key: 1, token: 2, seq: 3 }, &mut buf);
        assert_eq!(buf.len(), Op::Clear.encoded_bytes());
        let r = decode(&buf, 0).unwrap();
        assert_eq!((r.kind, r.key, r.value, r.seq), (REC_KIND_CLEAR, &b""[..], &b""[..], 3));
        let mut with_key = Vec::new();
        encode(&Op::Del { key: b"k".to_vec() }, Stamp { writer_key: 1, token: 2, seq: 3 }, &mut with_key);
        with_key[RH_KIND] = REC_KIND_CLEAR;
        let total = with_key.len();
        let crc = crc32c::crc32c(&with_key[..total - 4]);
        with_key[total - 4..].copy_from_slice(&crc.to_le_bytes());
        let err = decode(&with_key, 0).unwrap_err().to_string();
        assert!(err.contains("clear record with a key"), "{err}");
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..300 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode(&buf, 0);
        }
        let mut huge = vec![0u8; 64];
        huge[0..2].copy_from_slice(&REC_MAGIC.to_le_bytes());
        huge[2] = REC_VERSION;
        huge[3] = REC_KIND_PUT;
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge, 0).is_err());
    }
}
