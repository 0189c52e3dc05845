//! Every byte offset and bit field of the volume format, in one place.
//!
//! All integers are little-endian. Nothing outside this module and `media.rs`
//! computes a raw volume offset; everything else asks for a named field.
//! The prose version of this file is `storage/FORMAT.md`; keep them in step.
//!
//! An all-zero region is a valid initial state for every mutable word
//! (unowned partition, empty log, free segment, free registrant slot), so a
//! freshly created sparse file only needs its superblock and reservation
//! header written.

use crate::Error;

/// Alignment unit for the metadata areas and the minimum flush granule.
pub const PAGE_BYTES: u64 = 4096;

// ---------------------------------------------------------------- superblock
/// Magic at offset 0: identifies a sharedisk volume.
pub const MAGIC: [u8; 8] = *b"SHRDSK\x00\x01";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 3;

pub const SB_MAGIC: usize = 0; // [u8; 8]
pub const SB_VERSION: usize = SB_MAGIC + 8; // u32
pub const SB_FLAGS: usize = SB_VERSION + 4; // u32, must be 0
pub const SB_UUID: usize = SB_FLAGS + 4; // [u8; 16]
pub const SB_VOLUME_BYTES: usize = SB_UUID + 16; // u64
pub const SB_PARTITIONS: usize = SB_VOLUME_BYTES + 8; // u32
pub const SB_REGISTRANT_SLOTS: usize = SB_PARTITIONS + 4; // u32
pub const SB_SEGMENT_BYTES: usize = SB_REGISTRANT_SLOTS + 4; // u32
pub const SB_SEGMENTS_PER_PARTITION: usize = SB_SEGMENT_BYTES + 4; // u32
pub const SB_RESERVATION_OFFSET: usize = SB_SEGMENTS_PER_PARTITION + 4; // u64
pub const SB_PARTITION_TABLE_OFFSET: usize = SB_RESERVATION_OFFSET + 8; // u64
pub const SB_PARTITION_ENTRY_BYTES: usize = SB_PARTITION_TABLE_OFFSET + 8; // u64
pub const SB_DATA_OFFSET: usize = SB_PARTITION_ENTRY_BYTES + 8; // u64
pub const SB_PARTITION_DATA_BYTES: usize = SB_DATA_OFFSET + 8; // u64
pub const SB_CREATED_UNIX_MS: usize = SB_PARTITION_DATA_BYTES + 8; // u64
pub const SB_LOCKMGR_OFFSET: usize = SB_CREATED_UNIX_MS + 8; // u64
pub const SB_LOCKMGR_SLOT_BYTES: usize = SB_LOCKMGR_OFFSET + 8; // u32
pub const SB_RESERVED: usize = SB_LOCKMGR_SLOT_BYTES + 4; // zeros up to the checksum
pub const SB_CRC: usize = 124; // u32 crc32c of bytes [0, SB_CRC)
pub const SB_BYTES: usize = SB_CRC + 4;
const _: () = assert!(SB_RESERVED <= SB_CRC);
const _: () = assert!(SB_BYTES as u64 <= PAGE_BYTES);

/// The superblock occupies the whole first page.
pub const RESERVATION_OFFSET: u64 = PAGE_BYTES;

/// The superblock of a volume of geometry `geo`.
pub fn encode_superblock(geo: &Geometry, uuid: [u8; 16], created_unix_ms: u64) -> [u8; SB_BYTES] {
    let mut b = [0u8; SB_BYTES];
    b[SB_MAGIC..SB_MAGIC + 8].copy_from_slice(&MAGIC);
    put_u32(&mut b, SB_VERSION, FORMAT_VERSION);
    b[SB_UUID..SB_UUID + 16].copy_from_slice(&uuid);
    put_u64(&mut b, SB_VOLUME_BYTES, geo.volume_bytes);
    put_u32(&mut b, SB_PARTITIONS, geo.partitions);
    put_u32(&mut b, SB_REGISTRANT_SLOTS, geo.registrant_slots);
    put_u32(&mut b, SB_SEGMENT_BYTES, geo.segment_bytes);
    put_u32(&mut b, SB_SEGMENTS_PER_PARTITION, geo.segments_per_partition);
    put_u64(&mut b, SB_RESERVATION_OFFSET, geo.reservation_offset);
    put_u64(&mut b, SB_PARTITION_TABLE_OFFSET, geo.partition_table_offset);
    put_u64(&mut b, SB_PARTITION_ENTRY_BYTES, geo.partition_entry_bytes);
    put_u64(&mut b, SB_DATA_OFFSET, geo.data_offset);
    put_u64(&mut b, SB_PARTITION_DATA_BYTES, geo.partition_data_bytes);
    put_u64(&mut b, SB_CREATED_UNIX_MS, created_unix_ms);
    put_u64(&mut b, SB_LOCKMGR_OFFSET, geo.lockmgr_offset);
    put_u32(&mut b, SB_LOCKMGR_SLOT_BYTES, geo.lockmgr_slot_bytes as u32);
    let crc = crc32c::crc32c(&b[..SB_CRC]);
    put_u32(&mut b, SB_CRC, crc);
    b
}

/// Validate a superblock taken from untrusted bytes; never panics. Returns
/// the geometry (recomputed from the four inputs, and required to match
/// every derived field stored) and the uuid.
pub fn decode_superblock(b: &[u8]) -> Result<(Geometry, [u8; 16]), Error> {
    if b.len() < SB_BYTES {
        return Err(Error::Truncated { actual: b.len() as u64, expected: PAGE_BYTES });
    }
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&b[SB_MAGIC..SB_MAGIC + 8]);
    if magic != MAGIC {
        return Err(Error::NotAVolume { found: magic, expected: MAGIC });
    }
    let crc = crc32c::crc32c(&b[..SB_CRC]);
    if crc != get_u32(b, SB_CRC) {
        return Err(Error::corrupted("superblock", 0, format!("checksum {crc:#010x} != stored {:#010x}", get_u32(b, SB_CRC))));
    }
    let version = get_u32(b, SB_VERSION);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
    }
    if get_u32(b, SB_FLAGS) != 0 || b[SB_RESERVED..SB_CRC].iter().any(|&x| x != 0) {
        return Err(Error::corrupted("superblock", SB_FLAGS as u64, "unknown flags or reserved bytes set"));
    }
    let geo = Geometry::compute(
        get_u64(b, SB_VOLUME_BYTES),
        get_u32(b, SB_PARTITIONS),
        get_u32(b, SB_REGISTRANT_SLOTS),
        get_u32(b, SB_SEGMENT_BYTES),
    )
    .map_err(|e| Error::corrupted("superblock", SB_VOLUME_BYTES as u64, format!("stored geometry is invalid: {e}")))?;
    let stored = (
        get_u32(b, SB_SEGMENTS_PER_PARTITION),
        get_u64(b, SB_RESERVATION_OFFSET),
        get_u64(b, SB_PARTITION_TABLE_OFFSET),
        get_u64(b, SB_PARTITION_ENTRY_BYTES),
        get_u64(b, SB_DATA_OFFSET),
        get_u64(b, SB_PARTITION_DATA_BYTES),
        get_u64(b, SB_LOCKMGR_OFFSET),
        u64::from(get_u32(b, SB_LOCKMGR_SLOT_BYTES)),
    );
    let derived = (
        geo.segments_per_partition,
        geo.reservation_offset,
        geo.partition_table_offset,
        geo.partition_entry_bytes,
        geo.data_offset,
        geo.partition_data_bytes,
        geo.lockmgr_offset,
        geo.lockmgr_slot_bytes,
    );
    if stored != derived {
        return Err(Error::corrupted(
            "superblock",
            SB_SEGMENTS_PER_PARTITION as u64,
            format!("stored layout {stored:?} != derived {derived:?}"),
        ));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[SB_UUID..SB_UUID + 16]);
    Ok((geo, uuid))
}

// ------------------------------------------------------- reservation table
// Header: one 64-byte line, then `registrant_slots` slots of 32 bytes.
pub const RES_GENERATION: u64 = 0; // AtomicU64: +1 on every change
pub const RES_TYPE: u64 = 8; // AtomicU64: SCSI reservation type code
pub const RES_LM_LEASE: u64 = 16; // AtomicU64: the lock-manager lease ([`LmLease`])
pub const RES_HEADER_BYTES: u64 = 64;
pub const SLOT_BYTES: u64 = 32;
pub const SLOT_KEY: u64 = 0; // AtomicU64: registered key, 0 = slot free
pub const SLOT_STATUS: u64 = 8; // AtomicU64: state (low 8 bits) | pid << 32
pub const SLOT_START_TICKS: u64 = 16; // AtomicU64: process start time (clock ticks since boot)
pub const SLOT_HOST: u64 = 24; // AtomicU64: machine-id hash << 32 | boot-id hash
const _: () = assert!(SLOT_HOST + 8 == SLOT_BYTES);

/// SCSI-3 PR type code for Write Exclusive – Registrants Only.
pub const RESERVATION_TYPE_WERO: u64 = 5;

pub const SLOT_STATE_EMPTY: u64 = 0;
pub const SLOT_STATE_REGISTERED: u64 = 1;
/// Preempted: the key no longer counts as registered, but the slot is not
/// reusable until the incarnation is known dead (see `reap`).
pub const SLOT_STATE_FENCED: u64 = 2;

/// Registrant slot indexes are stored in 8 bits (plus one), so at most 254.
pub const REGISTRANT_SLOTS_MAX: u32 = 254;

/// The reservation header as `volume create` writes it: generation 0, type
/// WERO (the rest of the table is zero: every slot free).
pub fn encode_reservation_header() -> [u8; RES_TYPE as usize + 8] {
    let mut b = [0u8; RES_TYPE as usize + 8];
    put_u64(&mut b, RES_TYPE as usize, RESERVATION_TYPE_WERO);
    b
}

/// The lock-manager lease word: which lock manager is active, in which
/// term, and a renewal count standbys watch. Every change of the active lock
/// manager raises the term; the active one's writes check it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LmLease {
    /// 0 = never held.
    pub term: u32,
    /// The active lock manager's seat.
    pub seat: Option<u8>,
    /// Renewals in this term (24 bits, wrapping).
    pub count: u32,
}

/// Renewal counts wrap at this.
pub const LM_LEASE_COUNT_MOD: u32 = 1 << 24;

impl LmLease {
    pub fn encode(&self) -> u64 {
        let seat = self.seat.map_or(0, |s| u64::from(s) + 1);
        u64::from(self.term) | seat << 32 | u64::from(self.count % LM_LEASE_COUNT_MOD) << 40
    }
    pub fn decode(word: u64, offset: u64) -> Result<LmLease, Error> {
        let seat = (word >> 32) & 0xff;
        if seat > LM_SEATS {
            return Err(Error::corrupted("lock-manager lease word", offset, format!("seat {} in {word:#018x}", seat - 1)));
        }
        Ok(LmLease { term: word as u32, seat: seat.checked_sub(1).map(|s| s as u8), count: (word >> 40) as u32 })
    }
}

/// Slot host word: crc32c(machine-id) << 32 | crc32c(boot-id).
pub fn host_word(machine: u32, boot: u32) -> u64 {
    (u64::from(machine) << 32) | u64::from(boot)
}
/// (machine, boot) of a slot host word.
pub fn host_parts(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

pub fn status_word(state: u64, pid: u32) -> u64 {
    state | (u64::from(pid) << 32)
}
pub fn status_state(word: u64) -> u64 {
    word & 0xff
}
pub fn status_pid(word: u64) -> u32 {
    (word >> 32) as u32
}

// ---------------------------------------------------------- partition table
// The head table first: per partition, its head and floor words side by side,
// so one page holds 256 partitions' publication words and a barrier writes
// one page for all the partitions of a server rather than one per partition.
pub const HT_ENTRY_BYTES: u64 = 16;
pub const HT_HEAD: u64 = 0; // AtomicU64: publication word (end of the published log)
pub const HT_FLOOR: u64 = 8; // AtomicU64: a durable earlier head (0 = none); see FORMAT.md
// Then one entry per partition, page aligned. Each hot word has its own cache line.
pub const PE_OWNER: u64 = 0; // AtomicU64: owner word
pub const PE_TAIL: u64 = 128; // AtomicU64: start of the live log (the checkpoint)
pub const PE_DESCRIPTORS: u64 = 256; // AtomicU64 per segment: segment descriptor

/// Owner word: `token` (bits 0..32) | `slot + 1` (bits 32..40); slot field 0 = no owner.
/// The remaining bits must be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub token: u32,
    pub slot: Option<u8>,
}

impl Owner {
    pub fn encode(self) -> u64 {
        u64::from(self.token) | (self.slot.map_or(0, |s| u64::from(s) + 1) << 32)
    }
    pub fn decode(word: u64, offset: u64) -> Result<Owner, Error> {
        if word >> 40 != 0 {
            return Err(Error::corrupted("owner word", offset, format!("reserved bits set in {word:#018x}")));
        }
        let slot_field = ((word >> 32) & 0xff) as u8;
        Ok(Owner { token: word as u32, slot: slot_field.checked_sub(1) })
    }
}

/// A position in a partition's log: a segment and a byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub segment: u16,
    pub offset: u32,
}

/// Publication (head) and tail words: `offset / 8` (bits 0..16) |
/// `segment + 1` (bits 16..32; 0 = empty log) | `token` (bits 32..64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogWord {
    pub token: u32,
    pub pos: Option<Pos>,
}

impl LogWord {
    pub fn encode(self) -> u64 {
        (u64::from(self.token) << 32) | encode_pos(self.pos)
    }
    pub fn decode(word: u64) -> LogWord {
        LogWord { token: (word >> 32) as u32, pos: decode_pos(word & 0xffff_ffff) }
    }
}

/// `segment + 1` in bits 16..32 and `offset / 8` in bits 0..16; 0 = none.
pub fn encode_pos(pos: Option<Pos>) -> u64 {
    match pos {
        None => 0,
        Some(p) => {
            assert!(p.offset.is_multiple_of(8) && p.offset / 8 <= 0xffff && p.segment < 0xffff, "{p:?} has no encoding");
            ((u64::from(p.segment) + 1) << 16) | u64::from(p.offset / 8)
        }
    }
}
pub fn decode_pos(bits: u64) -> Option<Pos> {
    let seg = ((bits >> 16) & 0xffff) as u16;
    seg.checked_sub(1).map(|segment| Pos { segment, offset: ((bits & 0xffff) as u32) * 8 })
}

/// The floor word: 0 = none (no fallback); otherwise a log word naming a head
/// position whose whole chain was durable when it was stored.
pub fn decode_floor(word: u64) -> Option<Option<Pos>> {
    (word != 0).then(|| LogWord::decode(word).pos)
}

/// Segment descriptor: `token` (bits 0..32) | `slot + 1` (bits 32..40) | state (bits 56..64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegState {
    /// Nobody may store into it; anyone may allocate it by CAS.
    Free,
    /// Allocated to one writer incarnation (slot, token); only it stores here.
    Open { slot: u8, token: u32 },
    /// The writer promised no further stores (or was proven dead). Freed by
    /// the partition owner once it is outside the live chain.
    Sealed { slot: u8, token: u32 },
}

impl SegState {
    pub fn encode(self) -> u64 {
        match self {
            SegState::Free => 0,
            SegState::Open { slot, token } => (1 << 56) | ((u64::from(slot) + 1) << 32) | u64::from(token),
            SegState::Sealed { slot, token } => (2 << 56) | ((u64::from(slot) + 1) << 32) | u64::from(token),
        }
    }
    pub fn decode(word: u64, offset: u64) -> Result<SegState, Error> {
        let state = word >> 56;
        let slot = ((word >> 32) & 0xff) as u8;
        let token = word as u32;
        let bad = |d: &str| Err(Error::corrupted("segment descriptor", offset, format!("{d} in {word:#018x}")));
        if (word >> 40) & 0xffff != 0 {
            return bad("reserved bits set");
        }
        match (state, slot.checked_sub(1)) {
            (0, _) if word == 0 => Ok(SegState::Free),
            (0, _) => bad("free descriptor with owner bits"),
            (1, Some(slot)) => Ok(SegState::Open { slot, token }),
            (2, Some(slot)) => Ok(SegState::Sealed { slot, token }),
            _ => bad("unknown state"),
        }
    }
}

// ------------------------------------------------------- lock manager area
// `LM_SEATS` seats, one per lock-manager process that may become active.
// A seat is a header page (who holds it, where it listens) and two map
// slots; only the seat's holder writes them, into the slot that does not
// hold its newest valid copy, so a torn write never loses both, and a
// deposed lock manager can only ever write into its own seat.
pub const LM_SEATS: u64 = 4;
pub const SEAT_ID: u64 = 0; // AtomicU64: the holder's random id, 0 = free seat
/// Set in the seat id word while a claimer writes its identity (the low 32
/// bits are its pid); such a seat is never taken by another claim.
pub const SEAT_CLAIMING: u64 = 1 << 63;
pub const SEAT_STATUS: u64 = 8; // AtomicU64: pid << 32 | 1 while held
pub const SEAT_START_TICKS: u64 = 16; // AtomicU64: the holder's start time (clock ticks since boot)
pub const SEAT_HOST: u64 = 24; // AtomicU64: machine-id hash << 32 | boot-id hash
pub const SEAT_ADDR_LEN: u64 = 32; // AtomicU64: bytes of the listen address at SEAT_ADDR, 0 = none
pub const SEAT_ADDR: u64 = 64; // the listen address, UTF-8
pub const SEAT_ADDR_BYTES_MAX: u64 = 256;

pub const LM_MAGIC: u32 = u32::from_le_bytes(*b"LKMG");
pub const LM_VERSION: u32 = 2;
pub const LMH_MAGIC: usize = 0; // u32
pub const LMH_VERSION: usize = 4; // u32
pub const LMH_SEQ: usize = 8; // u64, higher = newer within a term
pub const LMH_TERM: usize = 16; // u32, the writer's term: higher = newer
pub const LMH_LEN: usize = 20; // u32 payload bytes
pub const LMH_CRC: usize = 24; // u32 crc32c of header bytes [0, 24) and the payload
pub const LM_HEADER_BYTES: usize = 64;
/// A lock-manager slot header; the payload follows at `LM_HEADER_BYTES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockmgrHeader {
    /// The term of the lock manager that wrote it.
    pub term: u32,
    /// Higher is newer within a term (each term counts from 1).
    pub seq: u64,
    pub len: u32,
    /// crc32c of header bytes [0, LMH_CRC) and the payload.
    pub crc: u32,
}

impl LockmgrHeader {
    /// The header for `payload` written in `term` with sequence `seq`.
    pub fn for_payload(term: u32, seq: u64, payload: &[u8]) -> LockmgrHeader {
        let mut h = LockmgrHeader { term, seq, len: payload.len() as u32, crc: 0 };
        let b = h.encode();
        h.crc = crc32c::crc32c_append(crc32c::crc32c(&b[..LMH_CRC]), payload);
        h
    }
    pub fn encode(&self) -> [u8; LM_HEADER_BYTES] {
        let mut b = [0u8; LM_HEADER_BYTES];
        put_u32(&mut b, LMH_MAGIC, LM_MAGIC);
        put_u32(&mut b, LMH_VERSION, LM_VERSION);
        put_u64(&mut b, LMH_SEQ, self.seq);
        put_u32(&mut b, LMH_TERM, self.term);
        put_u32(&mut b, LMH_LEN, self.len);
        put_u32(&mut b, LMH_CRC, self.crc);
        b
    }
    /// `None` if the magic or version is wrong; the caller checks the
    /// length against the slot and the checksum against the payload.
    pub fn decode(b: &[u8; LM_HEADER_BYTES]) -> Option<LockmgrHeader> {
        (get_u32(b, LMH_MAGIC) == LM_MAGIC && get_u32(b, LMH_VERSION) == LM_VERSION).then(|| LockmgrHeader {
            seq: get_u64(b, LMH_SEQ),
            term: get_u32(b, LMH_TERM),
            len: get_u32(b, LMH_LEN),
            crc: get_u32(b, LMH_CRC),
        })
    }
    /// Whether `payload` is the one this header describes.
    pub fn matches(&self, payload: &[u8]) -> bool {
        payload.len() == self.len as usize && LockmgrHeader::for_payload(self.term, self.seq, payload).crc == self.crc
    }
}

/// Room per partition in a slot (the holder's name is at most 128 bytes).
pub const LM_BYTES_PER_PARTITION: u64 = 160;
/// Room for named-lease tokens in a slot.
pub const LM_NAMED_BYTES: u64 = 64 * 1024;

// ----------------------------------------------------------------- segments
/// Segment header, written by the allocating writer before it publishes
/// anything in the segment.
pub const SEG_MAGIC: u32 = u32::from_le_bytes(*b"SEG1");
pub const SH_MAGIC: usize = 0; // u32
pub const SH_PARTITION: usize = 4; // u32
pub const SH_SEGMENT: usize = 8; // u32
pub const SH_TOKEN: usize = 12; // u32
pub const SH_WRITER_KEY: usize = 16; // u64
pub const SH_CHAIN_SEQ: usize = 24; // u64, 1 for the first segment of a chain
pub const SH_PREV: usize = 32; // u64, encode_pos of where the previous segment's log ends
pub const SH_RESERVED: usize = 40; // zeros
pub const SH_CRC: usize = 60; // u32 crc32c of [0, SH_CRC)
pub const SEGMENT_HEADER_BYTES: u32 = 64;
const _: () = assert!(SH_CRC + 4 == SEGMENT_HEADER_BYTES as usize);

/// A segment header, as the allocating writer wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub partition: u32,
    pub segment: u16,
    pub token: u32,
    pub writer_key: u64,
    /// 1 for the first segment of a chain, +1 per segment.
    pub chain_seq: u64,
    /// Where the previous segment's log ends; `None` for the first.
    pub prev: Option<Pos>,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES as usize] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES as usize];
        put_u32(&mut b, SH_MAGIC, SEG_MAGIC);
        put_u32(&mut b, SH_PARTITION, self.partition);
        put_u32(&mut b, SH_SEGMENT, u32::from(self.segment));
        put_u32(&mut b, SH_TOKEN, self.token);
        put_u64(&mut b, SH_WRITER_KEY, self.writer_key);
        put_u64(&mut b, SH_CHAIN_SEQ, self.chain_seq);
        put_u64(&mut b, SH_PREV, encode_pos(self.prev));
        let crc = crc32c::crc32c(&b[..SH_CRC]);
        put_u32(&mut b, SH_CRC, crc);
        b
    }

    /// Decode the header read at volume offset `at`, which must be the one of
    /// `segment` of `partition`. Untrusted bytes: never panics.
    pub fn decode(b: &[u8; SEGMENT_HEADER_BYTES as usize], partition: u32, segment: u16, at: u64) -> Result<SegmentHeader, Error> {
        let bad = |d: String| Err(Error::corrupted("segment header", at, d));
        if get_u32(b, SH_MAGIC) != SEG_MAGIC || crc32c::crc32c(&b[..SH_CRC]) != get_u32(b, SH_CRC) {
            return bad(format!("bad magic or checksum (partition {partition} segment {segment})"));
        }
        if get_u32(b, SH_PARTITION) != partition || get_u32(b, SH_SEGMENT) != u32::from(segment) {
            return bad(format!("header names partition {} segment {}", get_u32(b, SH_PARTITION), get_u32(b, SH_SEGMENT)));
        }
        let prev_bits = get_u64(b, SH_PREV);
        if prev_bits >> 32 != 0 {
            return bad(format!("bad prev pointer {prev_bits:#x}"));
        }
        Ok(SegmentHeader {
            partition,
            segment,
            token: get_u32(b, SH_TOKEN),
            writer_key: get_u64(b, SH_WRITER_KEY),
            chain_seq: get_u64(b, SH_CHAIN_SEQ),
            prev: decode_pos(prev_bits),
        })
    }
}

/// Segment sizes: a power of two between these bounds (offsets are stored in
/// 16 bits of 8-byte units).
pub const SEGMENT_BYTES_MIN: u32 = 8 * 1024;
pub const SEGMENT_BYTES_MAX: u32 = 256 * 1024;
pub const SEGMENT_BYTES_DEFAULT: u32 = 256 * 1024;
/// Segment indexes are stored as `index + 1` in 16 bits.
pub const SEGMENTS_PER_PARTITION_MAX: u32 = 0xfffe;
/// Fewer segments than this cannot both serve writes and clean.
pub const SEGMENTS_PER_PARTITION_MIN: u32 = 4;
pub const PARTITIONS_MAX: u32 = 16384;

// ------------------------------------------------------------------ records
pub const REC_MAGIC: u16 = 0x5344; // "DS"
pub const REC_VERSION: u8 = 1;
pub const REC_KIND_PUT: u8 = 1;
pub const REC_KIND_DEL: u8 = 2;
/// Clears the partition: every record before it in the log is dead (FLUSHALL).
/// No key, no value.
pub const REC_KIND_CLEAR: u8 = 3;
/// Sets a key to a large value stored in a blob; the record's value is the
/// blob's reference (`blob::BlobRef`).
pub const REC_KIND_LARGE: u8 = 4;
/// Sets one field of the hash at the key (creating the hash, or replacing
/// an expired string's last version); the record's value is the field's
/// length (u32), the field, then the field's value (FORMAT.md, "Hashes").
pub const REC_KIND_FIELD: u8 = 5;
/// Removes one field of the hash at the key; the record's value is the field.
pub const REC_KIND_FIELD_DEL: u8 = 6;
/// Sets the expiry of the hash at the key (creating it empty if its fields
/// come later in the log: the cleaner relocated them); no value.
pub const REC_KIND_EXPIRE: u8 = 7;
pub const RH_MAGIC: usize = 0; // u16
pub const RH_VERSION: usize = 2; // u8
pub const RH_KIND: usize = 3; // u8
pub const RH_KEY_LEN: usize = 4; // u32
pub const RH_VALUE_LEN: usize = 8; // u32
pub const RH_TOKEN: usize = 12; // u32 fence token of the writer
pub const RH_WRITER_KEY: usize = 16; // u64 reservation key of the writer
pub const RH_SEQ: usize = 24; // u64 per-partition sequence
pub const RH_EXPIRE_AT_MS: usize = 32; // u64 unix ms, 0 = never
pub const RECORD_HEADER_BYTES: usize = 40;
/// Trailer: u32 total record length, u32 crc32c of everything before the crc.
pub const RECORD_TRAILER_BYTES: usize = 8;

pub fn record_bytes(key_len: usize, value_len: usize) -> usize {
    round_up((RECORD_HEADER_BYTES + key_len + value_len) as u64, 8) as usize + RECORD_TRAILER_BYTES
}

pub fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Little-endian field access on a byte buffer (the codecs of this module).
pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes())
}
pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes())
}
pub fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

// ----------------------------------------------------------------- geometry
/// The derived layout of one volume. Computed from four inputs; the
/// superblock stores both inputs and results, and `open` recomputes and
/// compares them, so a damaged superblock cannot steer offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub volume_bytes: u64,
    pub partitions: u32,
    pub registrant_slots: u32,
    pub segment_bytes: u32,
    pub segments_per_partition: u32,
    pub reservation_offset: u64,
    pub partition_table_offset: u64,
    /// The head table at the start of the partition table, page rounded.
    pub head_table_bytes: u64,
    pub partition_entry_bytes: u64,
    pub lockmgr_offset: u64,
    pub lockmgr_slot_bytes: u64,
    pub data_offset: u64,
    pub partition_data_bytes: u64,
}

impl Geometry {
    pub fn compute(volume_bytes: u64, partitions: u32, registrant_slots: u32, segment_bytes: u32) -> Result<Geometry, Error> {
        let geo = |m: String| Err(Error::Geometry(m));
        if partitions == 0 || partitions > PARTITIONS_MAX {
            return geo(format!("partitions must be 1..={PARTITIONS_MAX}, got {partitions}"));
        }
        if registrant_slots == 0 || registrant_slots > REGISTRANT_SLOTS_MAX {
            return geo(format!("registrant slots must be 1..={REGISTRANT_SLOTS_MAX}, got {registrant_slots}"));
        }
        if !segment_bytes.is_power_of_two() || !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&segment_bytes) {
            return geo(format!(
                "segment size must be a power of two between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX} bytes, got {segment_bytes}"
            ));
        }
        let reservation_bytes = round_up(RES_HEADER_BYTES + SLOT_BYTES * u64::from(registrant_slots), PAGE_BYTES);
        let partition_table_offset = RESERVATION_OFFSET + reservation_bytes;
        let lockmgr_slot_bytes =
            round_up(LM_HEADER_BYTES as u64 + LM_BYTES_PER_PARTITION * u64::from(partitions) + LM_NAMED_BYTES, PAGE_BYTES);
        let head_table_bytes = round_up(HT_ENTRY_BYTES * u64::from(partitions), PAGE_BYTES);
        let layout = |segs: u64| {
            let entry = round_up(PE_DESCRIPTORS + 8 * segs, PAGE_BYTES);
            let lockmgr_offset = round_up(partition_table_offset + head_table_bytes + entry * u64::from(partitions), PAGE_BYTES);
            let data_offset = lockmgr_offset + LM_SEATS * (PAGE_BYTES + 2 * lockmgr_slot_bytes);
            let data_bytes = segs * u64::from(segment_bytes);
            (entry, data_offset, data_offset + data_bytes * u64::from(partitions))
        };
        let mut segs = (volume_bytes / u64::from(partitions) / u64::from(segment_bytes)).min(u64::from(SEGMENTS_PER_PARTITION_MAX));
        while segs > 0 && layout(segs).2 > volume_bytes {
            segs -= 1;
        }
        if segs < u64::from(SEGMENTS_PER_PARTITION_MIN) {
            let need = layout(u64::from(SEGMENTS_PER_PARTITION_MIN)).2;
            return geo(format!(
                "volume of {volume_bytes} bytes is too small for {partitions} partitions of at least \
                 {SEGMENTS_PER_PARTITION_MIN} segments of {segment_bytes} bytes (needs at least {need} bytes)"
            ));
        }
        let (entry, data_offset, _) = layout(segs);
        let lockmgr_offset = data_offset - LM_SEATS * (PAGE_BYTES + 2 * lockmgr_slot_bytes);
        Ok(Geometry {
            volume_bytes,
            partitions,
            registrant_slots,
            segment_bytes,
            segments_per_partition: segs as u32,
            reservation_offset: RESERVATION_OFFSET,
            partition_table_offset,
            head_table_bytes,
            partition_entry_bytes: entry,
            lockmgr_offset,
            lockmgr_slot_bytes,
            data_offset,
            partition_data_bytes: segs * u64::from(segment_bytes),
        })
    }

    pub fn slot_offset(&self, slot: u8) -> u64 {
        self.reservation_offset + RES_HEADER_BYTES + SLOT_BYTES * u64::from(slot)
    }
    pub fn reservation_generation(&self) -> u64 {
        self.reservation_offset + RES_GENERATION
    }
    pub fn reservation_type(&self) -> u64 {
        self.reservation_offset + RES_TYPE
    }
    pub fn slot_key(&self, slot: u8) -> u64 {
        self.slot_offset(slot) + SLOT_KEY
    }
    pub fn slot_status(&self, slot: u8) -> u64 {
        self.slot_offset(slot) + SLOT_STATUS
    }
    pub fn slot_start_ticks(&self, slot: u8) -> u64 {
        self.slot_offset(slot) + SLOT_START_TICKS
    }
    pub fn slot_host(&self, slot: u8) -> u64 {
        self.slot_offset(slot) + SLOT_HOST
    }
    pub fn lockmgr_lease(&self) -> u64 {
        self.reservation_offset + RES_LM_LEASE
    }
    /// Lock-manager seat `seat`: its header page; its two map slots follow.
    pub fn lockmgr_seat(&self, seat: u8) -> u64 {
        assert!(u64::from(seat) < LM_SEATS, "the lock-manager area has {LM_SEATS} seats");
        self.lockmgr_offset + u64::from(seat) * (PAGE_BYTES + 2 * self.lockmgr_slot_bytes)
    }
    /// Map slot `i` (0 or 1) of `seat`: its header; the payload follows.
    pub fn lockmgr_slot(&self, seat: u8, i: u64) -> u64 {
        assert!(i < 2, "a lock-manager seat has two slots");
        self.lockmgr_seat(seat) + PAGE_BYTES + i * self.lockmgr_slot_bytes
    }
    pub fn lockmgr_payload(&self, seat: u8, i: u64) -> u64 {
        self.lockmgr_slot(seat, i) + LM_HEADER_BYTES as u64
    }
    /// The largest payload a lock-manager slot holds.
    pub fn lockmgr_payload_bytes_max(&self) -> u64 {
        self.lockmgr_slot_bytes - LM_HEADER_BYTES as u64
    }
    pub fn reservation_bytes(&self) -> u64 {
        self.partition_table_offset - self.reservation_offset
    }
    pub fn partition_entry(&self, partition: u32) -> u64 {
        self.partition_table_offset + self.head_table_bytes + self.partition_entry_bytes * u64::from(partition)
    }
    /// The partition's head word (its floor word follows it).
    pub fn head_word(&self, partition: u32) -> u64 {
        self.partition_table_offset + HT_ENTRY_BYTES * u64::from(partition) + HT_HEAD
    }
    pub fn floor_word(&self, partition: u32) -> u64 {
        self.partition_table_offset + HT_ENTRY_BYTES * u64::from(partition) + HT_FLOOR
    }
    pub fn owner_word(&self, partition: u32) -> u64 {
        self.partition_entry(partition) + PE_OWNER
    }
    pub fn tail_word(&self, partition: u32) -> u64 {
        self.partition_entry(partition) + PE_TAIL
    }
    pub fn descriptor(&self, partition: u32, segment: u16) -> u64 {
        self.partition_entry(partition) + PE_DESCRIPTORS + 8 * u64::from(segment)
    }
    pub fn segment(&self, partition: u32, segment: u16) -> u64 {
        self.data_offset + self.partition_data_bytes * u64::from(partition) + u64::from(self.segment_bytes) * u64::from(segment)
    }
    /// The volume offset of byte `offset` of a segment (a log position).
    pub fn log_byte(&self, partition: u32, segment: u16, offset: u32) -> u64 {
        self.segment(partition, segment) + u64::from(offset)
    }
    /// Largest record a partition accepts (one record must fit a segment).
    pub fn record_bytes_max(&self) -> usize {
        (self.segment_bytes - SEGMENT_HEADER_BYTES) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_fits_and_rejects_small() {
        let g = Geometry::compute(64 << 20, 16, 64, 64 * 1024).unwrap();
        assert!(g.data_offset + g.partition_data_bytes * 16 <= 64 << 20);
        assert!(g.segments_per_partition >= 60);
        assert_eq!(g.data_offset % PAGE_BYTES, 0);
        assert!(Geometry::compute(1 << 20, 16, 64, 64 * 1024).is_err());
        assert!(Geometry::compute(64 << 20, 0, 64, 64 * 1024).is_err());
        assert!(Geometry::compute(64 << 20, 4, 64, 3000).is_err());
        assert!(Geometry::compute(64 << 20, 4, 255, 65536).is_err());
    }

    #[test]
    fn words_round_trip() {
        for o in [Owner { token: 0, slot: None }, Owner { token: 7, slot: Some(0) }, Owner { token: u32::MAX, slot: Some(253) }] {
            assert_eq!(Owner::decode(o.encode(), 0).unwrap(), o);
        }
        assert_eq!(Owner::decode(0, 0).unwrap(), Owner { token: 0, slot: None });
        for w in [
            LogWord { token: 3, pos: None },
            LogWord { token: 9, pos: Some(Pos { segment: 0, offset: 64 }) },
            LogWord { token: u32::MAX, pos: Some(Pos { segment: 0xfffd, offset: 0xffff * 8 }) },
        ] {
            assert_eq!(LogWord::decode(w.encode()), w);
        }
        for s in [SegState::Free, SegState::Open { slot: 3, token: 9 }, SegState::Sealed { slot: 0, token: 1 }] {
            assert_eq!(SegState::decode(s.encode(), 0).unwrap(), s);
        }
        assert!(SegState::decode(3 << 56 | 1 << 32, 0).is_err());
        assert!(Owner::decode(1 << 50, 0).is_err());
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Golden bytes: each codec pinned to the exact encoding of a known value
    /// (FORMAT.md's tables), so a change of the format cannot slip in.
    #[test]
    fn golden_superblock() {
        let geo = Geometry::compute(64 << 20, 16, 64, 64 * 1024).unwrap();
        let uuid: [u8; 16] = std::array::from_fn(|i| 0x10 + i as u8);
        let b = encode_superblock(&geo, uuid, 0x0102_0304_0506_0708);
        assert_eq!(hex(&b), GOLDEN_SUPERBLOCK);
        assert_eq!(decode_superblock(&b).unwrap(), (geo, uuid));
    }

    #[test]
    fn golden_reservation_and_slot_words() {
        assert_eq!(hex(&encode_reservation_header()), "00000000000000000500000000000000");
        assert_eq!(status_word(SLOT_STATE_FENCED, 0x1234), 0x0000_1234_0000_0002);
        assert_eq!((status_state(0x0000_1234_0000_0002), status_pid(0x0000_1234_0000_0002)), (SLOT_STATE_FENCED, 0x1234));
        assert_eq!(host_word(0xaabb_ccdd, 0x1122_3344), 0xaabb_ccdd_1122_3344);
        assert_eq!(host_parts(0xaabb_ccdd_1122_3344), (0xaabb_ccdd, 0x1122_3344));
    }

    #[test]
    fn golden_head_table_and_partition_entry_words() {
        assert_eq!(Owner { token: 7, slot: Some(3) }.encode(), 0x0000_0004_0000_0007);
        assert_eq!(Owner { token: 7, slot: None }.encode(), 7);
        let head = LogWord { token: 9, pos: Some(Pos { segment: 2, offset: 128 }) };
        assert_eq!(head.encode(), 0x0000_0009_0003_0010);
        assert_eq!(LogWord { token: 9, pos: None }.encode(), 0x0000_0009_0000_0000);
        assert_eq!(decode_floor(0), None);
        assert_eq!(decode_floor(0x0000_0009_0003_0010), Some(Some(Pos { segment: 2, offset: 128 })));
        assert_eq!(SegState::Open { slot: 1, token: 5 }.encode(), 0x0100_0002_0000_0005);
        assert_eq!(SegState::Sealed { slot: 0, token: 1 }.encode(), 0x0200_0001_0000_0001);
        assert_eq!(SegState::Free.encode(), 0);
    }

    #[test]
    fn golden_segment_header() {
        let h = SegmentHeader {
            partition: 3,
            segment: 5,
            token: 7,
            writer_key: 0x1122_3344_5566_7788,
            chain_seq: 2,
            prev: Some(Pos { segment: 4, offset: 1024 }),
        };
        let b = h.encode();
        assert_eq!(hex(&b), GOLDEN_SEGMENT_HEADER);
        assert_eq!(SegmentHeader::decode(&b, 3, 5, 0).unwrap(), h);
        assert!(SegmentHeader::decode(&b, 3, 6, 0).is_err(), "a header names its own segment");
    }

    #[test]
    fn golden_lockmgr_lease_word() {
        let l = LmLease { term: 7, seat: Some(2), count: 0x12_3456 };
        assert_eq!(l.encode(), 0x1234_5603_0000_0007);
        assert_eq!(LmLease::decode(l.encode(), 0).unwrap(), l);
        assert_eq!(LmLease::decode(0, 0).unwrap(), LmLease::default());
        assert!(LmLease::decode(0x0000_0005_0000_0001, 0).is_err(), "seat 4 does not exist");
    }

    #[test]
    fn golden_lockmgr_header() {
        let h = LockmgrHeader::for_payload(3, 9, b"hello");
        assert_eq!(hex(&h.encode()), GOLDEN_LOCKMGR_HEADER);
        assert_eq!(LockmgrHeader::decode(&h.encode()), Some(h));
        assert!(h.matches(b"hello") && !h.matches(b"hellp"));
    }

    #[test]
    fn geometry_offsets_are_pinned() {
        let g = Geometry::compute(64 << 20, 16, 64, 64 * 1024).unwrap();
        let offsets =
            [g.partition_table_offset, g.head_table_bytes, g.partition_entry_bytes, g.lockmgr_offset, g.lockmgr_slot_bytes, g.data_offset];
        assert_eq!(offsets, GOLDEN_OFFSETS);
        assert_eq!((g.head_word(1), g.floor_word(1)), (g.partition_table_offset + 16, g.partition_table_offset + 24));
        assert_eq!(g.owner_word(1), g.partition_entry(1));
        assert_eq!(g.tail_word(1), g.partition_entry(1) + 128);
        assert_eq!(g.descriptor(1, 2), g.partition_entry(1) + 256 + 16);
        assert_eq!(g.slot_host(2), 4096 + 64 + 2 * 32 + 24);
        assert_eq!(g.lockmgr_payload(0, 1), g.lockmgr_offset + 4096 + g.lockmgr_slot_bytes + 64);
        assert_eq!(g.lockmgr_seat(2), g.lockmgr_offset + 2 * (4096 + 2 * g.lockmgr_slot_bytes));
        assert_eq!(g.lockmgr_lease(), 4096 + 16);
        assert_eq!(g.data_offset, g.lockmgr_seat(3) + 4096 + 2 * g.lockmgr_slot_bytes);
        assert_eq!(g.log_byte(1, 2, 64), g.data_offset + g.partition_data_bytes + 2 * 65536 + 64);
    }

    // Checked field by field against FORMAT.md: magic, version 2, flags 0,
    // uuid, volume_bytes 64 MiB, 16 partitions, 64 slots, 64 KiB segments,
    // 63 per partition, the derived offsets, created_unix_ms, zero reserved
    // bytes, crc32c.
    const GOLDEN_SUPERBLOCK: &str = concat!(
        "53485244534b0001",
        "03000000",
        "00000000",
        "101112131415161718191a1b1c1d1e1f",
        "0000000400000000",
        "10000000",
        "40000000",
        "00000100",
        "3f000000",
        "0010000000000000",
        "0020000000000000",
        "0010000000000000",
        "00f0090000000000",
        "00003f0000000000",
        "0807060504030201",
        "0030010000000000",
        "00100100",
        "0000000000000000",
        "c2feddfe",
    );
    // "SEG1", partition 3, segment 5, token 7, key, chain_seq 2,
    // prev = (4 + 1) << 16 | 1024 / 8, 20 reserved zero bytes, crc32c.
    const GOLDEN_SEGMENT_HEADER: &str = concat!(
        "53454731",
        "03000000",
        "05000000",
        "07000000",
        "8877665544332211",
        "0200000000000000",
        "8000050000000000",
        "0000000000000000000000000000000000000000",
        "02798e02",
    );
    // "LKMG", version 2, sequence 9, term 3, length 5, crc32c, 36 reserved zero bytes.
    const GOLDEN_LOCKMGR_HEADER: &str = concat!(
        "4c4b4d47",
        "02000000",
        "0900000000000000",
        "03000000",
        "05000000",
        "8dd33ee5",
        "000000000000000000000000000000000000000000000000000000000000000000000000",
    );
    // partition_table_offset, head_table_bytes, partition_entry_bytes,
    // lockmgr_offset, lockmgr_slot_bytes, data_offset.
    const GOLDEN_OFFSETS: [u64; 6] = [8192, 4096, 4096, 77824, 69632, 651264];
}
