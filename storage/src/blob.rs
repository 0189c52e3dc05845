//! Large values: a value too big for a log record is stored in whole
//! segments of its own (a **blob**), and the log carries a small record of
//! kind 4 (large put) whose value is the blob's reference: its length, its
//! checksum, who wrote it, and its segments in order (FORMAT.md, "Large
//! values").
//!
//! Why not records spanning segments: the cleaner copies the live records
//! of the oldest segment to the head. A 100 MB value in the log would be
//! copied whole whenever the segment holding any part of it is cleaned,
//! and would need 100 MB free to do so in a partition that cleans only
//! when it is nearly full. Out of the log, the cleaner relocates the
//! reference (a few hundred bytes) and the blob stays where it is; a blob
//! is freed only when the version it holds is superseded durably.

use crate::Error;
use crate::layout::{Geometry, SEGMENT_HEADER_BYTES, get_u32, get_u64, put_u32, put_u64};
use crate::volume::Volume;

/// Magic of a blob segment's header ("BLB1", little-endian).
pub const BLOB_MAGIC: u32 = u32::from_le_bytes(*b"BLB1");

// Blob segment header (64 bytes).
const BH_MAGIC: usize = 0; // u32
const BH_PARTITION: usize = 4; // u32
const BH_SEGMENT: usize = 8; // u32
const BH_TOKEN: usize = 12; // u32: token of the writer (the blob's identity, with seq)
const BH_WRITER_KEY: usize = 16; // u64
const BH_SEQ: usize = 24; // u64: the seq of the large put it was written for
const BH_PART: usize = 32; // u32: index of this segment in the blob
const BH_BYTES: usize = 36; // u32: value bytes in this segment
const BH_CRC: usize = 60; // u32: crc32c of [0, 60)

// Reference (the value of a large-put record).
const BR_LEN: usize = 0; // u64: value bytes
const BR_CRC: usize = 8; // u32: crc32c of the whole value
const BR_TOKEN: usize = 12; // u32
const BR_SEQ: usize = 16; // u64
const BR_COUNT: usize = 24; // u32: segments
const BR_RESERVED: usize = 28; // u32, zero
const BR_SEGMENTS: usize = 32; // u16 × count
/// The bytes of a reference to a blob of `count` segments.
pub fn ref_bytes(count: usize) -> usize {
    BR_SEGMENTS + 2 * count
}

/// Where a large value is and how to check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    pub len: u64,
    pub crc: u32,
    /// The identity of the blob: the writer's token and the seq of the large
    /// put it was written for (kept when the cleaner relocates the record).
    pub token: u32,
    pub seq: u64,
    pub segments: Vec<u16>,
}

impl BlobRef {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; ref_bytes(self.segments.len())];
        put_u64(&mut b, BR_LEN, self.len);
        put_u32(&mut b, BR_CRC, self.crc);
        put_u32(&mut b, BR_TOKEN, self.token);
        put_u64(&mut b, BR_SEQ, self.seq);
        put_u32(&mut b, BR_COUNT, self.segments.len() as u32);
        for (i, s) in self.segments.iter().enumerate() {
            b[BR_SEGMENTS + 2 * i..BR_SEGMENTS + 2 * i + 2].copy_from_slice(&s.to_le_bytes());
        }
        b
    }

    /// Decode a reference (a large put's value, read at volume offset `at`).
    /// Untrusted bytes: never panics. The segment count must be the one the
    /// length needs in `payload`-byte segments (0: not checked).
    pub fn decode(b: &[u8], at: u64, payload: usize) -> Result<BlobRef, Error> {
        let bad = |d: String| Err(Error::corrupted("large-value reference", at, d));
        if b.len() < BR_SEGMENTS {
            return bad(format!("{} bytes, a reference has at least {BR_SEGMENTS}", b.len()));
        }
        let count = get_u32(b, BR_COUNT) as usize;
        if b.len() != ref_bytes(count) || get_u32(b, BR_RESERVED) != 0 {
            return bad(format!("{} bytes for {count} segments", b.len()));
        }
        let len = get_u64(b, BR_LEN);
        if payload > 0 && (len == 0 || len.div_ceil(payload as u64) != count as u64) {
            return bad(format!("{len} bytes in {count} segments of {payload}"));
        }
        let segments = (0..count).map(|i| u16::from_le_bytes([b[BR_SEGMENTS + 2 * i], b[BR_SEGMENTS + 2 * i + 1]])).collect();
        Ok(BlobRef { len, crc: get_u32(b, BR_CRC), token: get_u32(b, BR_TOKEN), seq: get_u64(b, BR_SEQ), segments })
    }

    /// The same blob (a relocated reference names the one it was copied from).
    pub fn same_blob(&self, other: &BlobRef) -> bool {
        (self.token, self.seq) == (other.token, other.seq)
    }
}

/// Bytes of value a blob segment holds.
pub fn payload(geo: &Geometry) -> usize {
    (geo.segment_bytes - SEGMENT_HEADER_BYTES) as usize
}

/// Segments a value of `len` bytes takes as a blob.
pub fn segments_for(geo: &Geometry, len: usize) -> usize {
    len.div_ceil(payload(geo))
}

/// Whether a put of `value_len` bytes is stored as a blob: beyond half a
/// segment's payload (128 KiB with 256 KiB segments), so that a record never
/// leaves more than half a segment unused at a segment's end.
pub fn is_large(geo: &Geometry, value_len: usize) -> bool {
    value_len > payload(geo) / 2
}

/// The header of part `part` of a blob.
pub(crate) fn encode_header(partition: u32, segment: u16, blob: (u32, u64), writer_key: u64, part: u32, bytes: u32) -> [u8; 64] {
    let mut b = [0u8; SEGMENT_HEADER_BYTES as usize];
    put_u32(&mut b, BH_MAGIC, BLOB_MAGIC);
    put_u32(&mut b, BH_PARTITION, partition);
    put_u32(&mut b, BH_SEGMENT, u32::from(segment));
    put_u32(&mut b, BH_TOKEN, blob.0);
    put_u64(&mut b, BH_WRITER_KEY, writer_key);
    put_u64(&mut b, BH_SEQ, blob.1);
    put_u32(&mut b, BH_PART, part);
    put_u32(&mut b, BH_BYTES, bytes);
    let crc = crc32c::crc32c(&b[..BH_CRC]);
    put_u32(&mut b, BH_CRC, crc);
    b
}

/// Check the header `h` of part `part` of `blob` (segment `segment` of
/// `partition`, read at `at`); the bytes of value it must hold.
fn check_header(h: &[u8], partition: u32, segment: u16, blob: &BlobRef, part: usize, bytes: usize, at: u64) -> Result<(), Error> {
    let bad = |d: String| Err(Error::corrupted("blob segment header", at, d));
    if get_u32(h, BH_MAGIC) != BLOB_MAGIC || crc32c::crc32c(&h[..BH_CRC]) != get_u32(h, BH_CRC) {
        return bad(format!("bad magic or checksum (partition {partition} segment {segment})"));
    }
    let names = (get_u32(h, BH_PARTITION), get_u32(h, BH_SEGMENT), get_u32(h, BH_TOKEN), get_u64(h, BH_SEQ), get_u32(h, BH_PART));
    if names != (partition, u32::from(segment), blob.token, blob.seq, part as u32) || get_u32(h, BH_BYTES) as usize != bytes {
        return bad(format!(
            "names partition {} segment {} blob ({}, {}) part {} of {} bytes; the reference wants ({partition}, {segment}, ({}, {}), {part}, {bytes})",
            names.0,
            names.1,
            names.2,
            names.3,
            names.4,
            get_u32(h, BH_BYTES),
            blob.token,
            blob.seq
        ));
    }
    Ok(())
}

/// Read the value of `blob` in `partition`: every segment's header must name
/// that blob and part, and the whole value its checksum. (A standby may find
/// the segments freed and reused by the owner since it read the reference:
/// that is an error here, and a race for it, not damage.)
pub fn read_value(vol: &Volume, partition: u32, blob: &BlobRef, at: u64) -> Result<Vec<u8>, Error> {
    let geo = *vol.geometry();
    let payload = payload(&geo);
    // Checked before anything is allocated: a reference names at most the partition's segments.
    if blob.len == 0
        || blob.segments.len() > geo.segments_per_partition as usize
        || (blob.len as usize).div_ceil(payload) != blob.segments.len()
    {
        return Err(Error::corrupted("large-value reference", at, format!("{} bytes in {} segments", blob.len, blob.segments.len())));
    }
    let mut value = vec![0u8; blob.len as usize];
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    for (part, (&segment, chunk)) in blob.segments.iter().zip(value.chunks_mut(payload)).enumerate() {
        if u32::from(segment) >= geo.segments_per_partition {
            return Err(Error::corrupted("large-value reference", at, format!("segment {segment} is outside the partition")));
        }
        let base = geo.segment(partition, segment);
        vol.region().read_bulk(base, &mut header);
        check_header(&header, partition, segment, blob, part, chunk.len(), base)?;
        vol.region().read_bulk(base + u64::from(SEGMENT_HEADER_BYTES), chunk);
    }
    if crc32c::crc32c(&value) != blob.crc {
        return Err(Error::corrupted("large value", at, format!("checksum of {} bytes does not match", blob.len)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_round_trips_and_garbage_is_an_error_not_a_panic() {
        let r = BlobRef { len: 9000, crc: 7, token: 3, seq: 11, segments: vec![5, 9, 2] };
        let b = r.encode();
        assert_eq!(b.len(), ref_bytes(3));
        assert_eq!(BlobRef::decode(&b, 0, 4000).unwrap(), r);
        assert!(BlobRef::decode(&b, 0, 8000).is_err(), "a count the length does not need");
        assert!(BlobRef::decode(&b[..b.len() - 1], 0, 0).is_err());
        let mut rng = sharedisk_testkit::Rng::new(3);
        for n in 0..2000 {
            let mut g = b.clone();
            g.truncate(rng.below(b.len() as u64 + 1) as usize);
            for _ in 0..n % 4 {
                if !g.is_empty() {
                    let i = rng.below(g.len() as u64) as usize;
                    g[i] = rng.below(256) as u8;
                }
            }
            let _ = BlobRef::decode(&g, 0, 4000);
        }
    }
}
