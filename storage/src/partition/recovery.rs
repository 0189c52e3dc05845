//! Recovery: the claim-time walk of a partition's log.
//!
//! Read-only over the volume except for the claim's two repairs: a torn last
//! commit's head CASed back to the floor ([`rebuild`]), and garbage segments
//! freed ([`free_garbage`]). The walk itself ([`recover`]) is what `volume
//! check` and `inspect` run too.

use std::collections::{HashMap, HashSet};

use crate::index::{Index, Keyspace};
use crate::layout::*;
use crate::record;
use crate::volume::{SlotState, Volume};
use crate::{Error, Result};

/// One segment of the live chain, with the byte range holding records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainSeg {
    pub segment: u16,
    pub start: u32,
    pub end: u32,
    pub chain_seq: u64,
}

/// The header of `segment`, checked (magic, checksum, partition, index).
pub(super) fn read_header(vol: &Volume, partition: u32, segment: u16) -> Result<SegmentHeader> {
    let at = vol.geometry().segment(partition, segment);
    let mut b = [0u8; SEGMENT_HEADER_BYTES as usize];
    // Not through the mapping: a fault there maps the pages around it too
    // (the kernel's fault-around, 64 KiB), so reading every header of a
    // large log (claims, standby builds, their re-checks) left the process
    // with hundreds of MB of mapped pages, which a kill -9 tears down
    // before the kernel closes its sockets.
    vol.region().read_bulk(at, &mut b);
    SegmentHeader::decode(&b, partition, segment, at)
}

/// The live chain of a partition, oldest segment first, read from the head
/// and tail words. Read-only; validates headers and pointers, not records.
pub fn read_chain(vol: &Volume, partition: u32) -> Result<Vec<ChainSeg>> {
    vol.check_partition(partition)?;
    let head = LogWord::decode(vol.region().load(vol.geometry().head_word(partition)));
    read_chain_from(vol, partition, head.pos)
}

/// The chain that ends at `end` (the head, or the floor), back to the tail.
fn read_chain_from(vol: &Volume, partition: u32, end: Option<Pos>) -> Result<Vec<ChainSeg>> {
    let geo = *vol.geometry();
    let (entry, tail_at) = (geo.partition_entry(partition), geo.tail_word(partition));
    let tail = LogWord::decode(vol.region().load(tail_at));
    let Some(mut pos) = end else {
        if tail.pos.is_some() {
            return Err(Error::corrupted("tail word", tail_at, "tail set but the log is empty"));
        }
        return Ok(Vec::new());
    };
    let mut chain = Vec::new();
    loop {
        if u32::from(pos.segment) >= geo.segments_per_partition || pos.offset > geo.segment_bytes || pos.offset < SEGMENT_HEADER_BYTES {
            return Err(Error::corrupted("log pointer", entry, format!("{pos:?} is outside partition {partition}")));
        }
        if chain.len() >= geo.segments_per_partition as usize {
            return Err(Error::corrupted("segment chain", entry, "chain is longer than the partition (a cycle)"));
        }
        let h = read_header(vol, partition, pos.segment)?;
        let stop_here = tail.pos.filter(|t| t.segment == pos.segment);
        let start = stop_here.map_or(SEGMENT_HEADER_BYTES, |t| t.offset);
        if start > pos.offset {
            return Err(Error::corrupted("tail word", tail_at, format!("tail {start} past the end {}", pos.offset)));
        }
        if let Some(next) = chain.last().map(|c: &ChainSeg| c.chain_seq)
            && h.chain_seq + 1 != next
        {
            return Err(Error::corrupted("segment chain", geo.segment(partition, pos.segment), "chain sequence is not contiguous"));
        }
        chain.push(ChainSeg { segment: pos.segment, start, end: pos.offset, chain_seq: h.chain_seq });
        match (stop_here, h.prev) {
            (Some(_), _) | (None, None) => break,
            (None, Some(prev)) => pos = prev,
        }
    }
    if let Some(t) = tail.pos
        && !chain.iter().any(|c| c.segment == t.segment)
    {
        return Err(Error::corrupted("tail word", tail_at, "tail segment is not on the chain"));
    }
    chain.reverse();
    Ok(chain)
}

/// Decode every record of a chain in order; `f(segment, offset, record)`.
pub fn replay(vol: &Volume, partition: u32, chain: &[ChainSeg], mut f: impl FnMut(u16, u32, &record::Record<'_>)) -> Result<u64> {
    let geo = *vol.geometry();
    let mut buf = Vec::new();
    let mut last_seq = 0u64;
    let mut bytes = 0u64;
    for c in chain {
        buf.resize((c.end - c.start) as usize, 0);
        vol.region().read_bulk(geo.log_byte(partition, c.segment, c.start), &mut buf);
        let mut at = 0usize;
        while at < buf.len() {
            let off = geo.log_byte(partition, c.segment, c.start + at as u32);
            let r = record::decode(&buf[at..], off)?;
            if r.seq <= last_seq {
                return Err(Error::corrupted("record", off, format!("sequence {} after {last_seq}", r.seq)));
            }
            last_seq = r.seq;
            f(c.segment, c.start + at as u32, &r);
            at += r.total;
        }
        bytes += buf.len() as u64;
    }
    Ok(bytes)
}

/// What `recover` hands its visitor, in log order.
#[derive(Debug)]
pub enum Replayed<'a, 'r> {
    /// Forget every record seen so far: the walk from the head failed and
    /// recovery starts again from the floor.
    Reset,
    /// A record at (segment, offset).
    Record(u16, u32, &'a record::Record<'r>),
}

/// A partition's log as recovery found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredLog {
    pub chain: Vec<ChainSeg>,
    /// Where the recovered log ends: the head, or the floor if the last
    /// commit was torn.
    pub end: Option<Pos>,
    pub bytes: u64,
    pub last_seq: u64,
    /// Set when the last publication was torn by a power loss.
    pub torn: Option<TornCommit>,
}

/// A publication whose records did not all reach the disk before power was
/// lost. It was never acknowledged (acknowledgement waits for the barrier
/// that would have made it whole), so recovery drops it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornCommit {
    /// The head that pointed past the valid records.
    pub dropped_head: Option<Pos>,
    /// Why the walk from that head failed.
    pub reason: String,
}

/// Read a partition's log: the chain from the head, every record in order to
/// `visit`. If that walk finds damage and the floor word names an earlier
/// head whose log is intact, the damage is a torn, unacknowledged last
/// commit: recovery ends at the floor instead (FORMAT.md, "Publication
/// protocol"). Damage anywhere else is corruption.
pub fn recover(vol: &Volume, partition: u32, mut visit: impl FnMut(Replayed<'_, '_>)) -> Result<RecoveredLog> {
    vol.check_partition(partition)?;
    let head = LogWord::decode(vol.region().load(vol.geometry().head_word(partition))).pos;
    let floor = decode_floor(vol.region().load(vol.geometry().floor_word(partition)));
    let below_head = floor.filter(|f| *f != head);
    match walk(vol, partition, head, below_head, &mut visit) {
        Ok(log) => Ok(log),
        Err(e @ Error::Corrupted { .. }) => {
            let Some(floor) = below_head else { return Err(e) };
            visit(Replayed::Reset);
            let Ok(mut log) = walk(vol, partition, floor, None, &mut visit) else { return Err(e) };
            log.torn = Some(TornCommit { dropped_head: head, reason: e.to_string() });
            Ok(log)
        }
        Err(e) => Err(e),
    }
}

/// Replay the chain ending at `end`; with `must_pass`, that position must be
/// a record boundary on it (the floor lies on the head's log).
fn walk(
    vol: &Volume,
    partition: u32,
    end: Option<Pos>,
    must_pass: Option<Option<Pos>>,
    visit: &mut impl FnMut(Replayed<'_, '_>),
) -> Result<RecoveredLog> {
    let chain = read_chain_from(vol, partition, end)?;
    // A segment allocated by a torn commit may be on the head's chain with
    // its descriptor still FREE on disk (another page than the head).
    for c in &chain {
        let at = vol.geometry().descriptor(partition, c.segment);
        if SegState::decode(vol.region().load(at), at)? == SegState::Free {
            return Err(Error::corrupted("segment descriptor", at, format!("segment {} is on the live chain but marked free", c.segment)));
        }
    }
    let target = must_pass.flatten();
    let mut passed = target.is_none() || chain.iter().any(|c| Some(Pos { segment: c.segment, offset: c.start }) == target);
    let mut last_seq = 0;
    // The blobs of large puts past the floor that are still current at the
    // end are read back whole: that commit is the one a power loss may have
    // torn, and a blob is not in the log, so only its checksum can tell
    // (FORMAT.md, "Large values"). A superseded one is not read: the owner
    // frees a blob once its successor is durable, so it may be reused.
    let mut recent: HashMap<Vec<u8>, (u64, Result<crate::blob::BlobRef>)> = HashMap::new();
    let payload = crate::blob::payload(vol.geometry());
    let bytes = replay(vol, partition, &chain, |seg, off, r| {
        last_seq = r.seq;
        if must_pass.is_some() && passed {
            match r.kind {
                REC_KIND_CLEAR => recent.clear(),
                REC_KIND_LARGE => {
                    let at = vol.geometry().log_byte(partition, seg, off);
                    recent.insert(r.key.to_vec(), (at, crate::blob::BlobRef::decode(r.value, at, payload)));
                }
                _ if !recent.is_empty() => {
                    recent.remove(r.key);
                }
                _ => {}
            }
        }
        passed |= Some(Pos { segment: seg, offset: off + r.total as u32 }) == target;
        visit(Replayed::Record(seg, off, r));
    })?;
    for (at, blob) in recent.into_values() {
        let blob = blob?;
        // Its descriptors too (another page than the records and the head).
        for &s in &blob.segments {
            let d = vol.geometry().descriptor(partition, s);
            if u32::from(s) < vol.geometry().segments_per_partition && SegState::decode(vol.region().load(d), d)? == SegState::Free {
                return Err(Error::corrupted(
                    "segment descriptor",
                    d,
                    format!("segment {s} holds part of a current blob but is marked free"),
                ));
            }
        }
        crate::blob::read_value(vol, partition, &blob, at)?;
    }
    if !passed {
        let at = vol.geometry().floor_word(partition);
        return Err(Error::corrupted("floor word", at, format!("{target:?} is not a record boundary of the log ending at {end:?}")));
    }
    Ok(RecoveredLog { chain, end, bytes, last_seq, torn: None })
}

/// Claim step 4: replay the log into `keyspace` (and count its records);
/// after a torn commit, CAS the head (carrying our `token`) back to the floor.
pub(super) fn rebuild<I: Index>(vol: &Volume, partition: u32, token: u32, keyspace: &mut Keyspace<I>) -> Result<(RecoveredLog, u64)> {
    let mut records = 0;
    let log = recover(vol, partition, |v| {
        records = if matches!(v, Replayed::Reset) { 0 } else { records + 1 };
        keyspace.replayed(v);
    })?;
    if let Some(torn) = &log.torn {
        // The torn commit was never acknowledged: the head goes back to the floor.
        let at = vol.geometry().head_word(partition);
        let mine = |pos| LogWord { token, pos }.encode();
        if vol.region().cas(at, mine(torn.dropped_head), mine(log.end)).is_err() {
            let current = LogWord::decode(vol.region().load(at)).token;
            return Err(Error::Fenced { partition, presented: token, current });
        }
    }
    Ok((log, records))
}

/// Claim step 6: free the garbage a crashed cleaner or a dead owner left
/// (SEALED segments off the chain that are not the `blobs` of current
/// versions; OPEN segments of slots that are empty now). Returns (free segments, segments freed).
pub(super) fn free_garbage(vol: &Volume, partition: u32, chain: &[ChainSeg], blobs: &HashSet<u16>) -> Result<(u32, u32)> {
    let geo = *vol.geometry();
    let region = vol.region();
    let in_chain: HashSet<u16> = chain.iter().map(|c| c.segment).collect();
    let (mut free, mut freed) = (0, 0);
    for s in 0..geo.segments_per_partition as u16 {
        let at = geo.descriptor(partition, s);
        let word = region.load(at);
        let garbage = match SegState::decode(word, at)? {
            // (`recover` rejected a chain segment marked FREE.)
            SegState::Free => {
                free += 1;
                false
            }
            _ if in_chain.contains(&s) || blobs.contains(&s) => false,
            SegState::Sealed { .. } => true,
            // An open segment of a slot that is empty now: its incarnation
            // retired without sealing it (crash mid-retire).
            SegState::Open { slot, .. } => vol.slot_info(slot).state == SlotState::Empty,
        };
        if garbage && region.cas(at, word, SegState::Free.encode()).is_ok() {
            free += 1;
            freed += 1;
        }
    }
    if freed > 0 {
        vol.flush(geo.partition_entry(partition), geo.partition_entry_bytes)?;
    }
    Ok((free, freed))
}
