//! A hot standby: a read-only follower of a partition's published log that
//! keeps the same index the owner has, so that taking the partition over
//! reads only what it has not applied yet (FORMAT.md, "Readers of the log:
//! hot standbys").
//!
//! A standby never stores anything into the partition: no word, no
//! descriptor, no byte of the log. It loads the head and tail words and
//! reads published records, which are immutable while they are on the live
//! chain. What it must survive is the owner's cleaner, which frees segments
//! behind the tail and may reuse them as new head segments while the standby
//! is still reading there. It detects that instead of preventing it:
//! * every segment it reads is identified by (index, `chain_seq`), and
//!   `chain_seq` only rises along a partition's log, so a reused segment
//!   has a different header;
//! * records are decoded into a private list and applied only after the
//!   headers of every segment they came from were read again, unchanged: a
//!   writer writes a reused segment's header before any record into it, so
//!   unchanged headers mean the copied bytes were the published ones;
//! * every record must decode with its checksum, and sequence numbers must
//!   rise;
//! * the chain from the head must lead back, through `prev` pointers, to the
//!   exact position applied so far (a head that moved backwards, a torn
//!   commit repaired, or a chain that no longer contains that position, all
//!   fail this).
//!
//! Anything that fails a check makes the standby *resynchronise*: forget its
//! index and rebuild it from the live log, as a claim would. A resync costs
//! the standby time, never the owner, and the owner never waits for a
//! standby.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::index::{Index, Keyspace, MapIndex};
use crate::layout::*;
use crate::record;
use crate::volume::{Registration, Volume};
use crate::{Error, Result};

use super::recovery::{self, ChainSeg, RecoveredLog};
use super::{Partition, PartitionOptions, RecoveryStats, take_owner};

/// What one [`Standby::poll`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Polled {
    /// Records applied.
    pub records: u64,
    /// Bytes of log read.
    pub bytes: u64,
    /// The standby had to rebuild its index from the whole live log.
    pub resynced: bool,
}

/// Counters of a standby's life (the server's `INFO replication`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StandbyStats {
    pub records: u64,
    pub bytes: u64,
    pub resyncs: u64,
}

/// Why the tail could not be followed from where the standby is.
#[derive(Debug)]
enum Lost {
    /// Resynchronise from the live log.
    Resync(String),
    /// A real error (the volume is gone, or the partition does not exist).
    Failed(Error),
}

impl From<Error> for Lost {
    fn from(e: Error) -> Lost {
        match e {
            // Damage seen while following a log that changes under us is a
            // race with the cleaner until a resync proves otherwise.
            Error::Corrupted { .. } => Lost::Resync(e.to_string()),
            e => Lost::Failed(e),
        }
    }
}

/// A read-only follower of one partition's published log.
#[derive(Debug)]
pub struct Standby<I = MapIndex> {
    vol: Arc<Volume>,
    id: u32,
    keyspace: Keyspace<I>,
    /// The part of the live chain applied so far, oldest first; the last
    /// segment's `end` is the position applied up to.
    chain: VecDeque<ChainSeg>,
    last_seq: u64,
    /// The head word as last followed (raw), and whether the index matches
    /// the log up to it.
    head_seen: u64,
    /// The tail word (raw) the chain was last cut to.
    tail_seen: u64,
    synced: bool,
    stats: StandbyStats,
    /// Why the last resync was needed (for the log and tests).
    last_resync: Option<String>,
}

impl Standby {
    /// A standby of `partition` with the default index, not yet synchronised.
    pub fn new(vol: Arc<Volume>, partition: u32) -> Result<Standby> {
        Standby::with_index(vol, partition, MapIndex::default())
    }
}

impl<I: Index> Standby<I> {
    pub fn with_index(vol: Arc<Volume>, partition: u32, index: I) -> Result<Standby<I>> {
        vol.check_partition(partition)?;
        Ok(Standby {
            vol,
            id: partition,
            keyspace: Keyspace::new(index),
            chain: VecDeque::new(),
            last_seq: 0,
            head_seen: 0,
            tail_seen: 0,
            synced: false,
            stats: StandbyStats::default(),
            last_resync: None,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }
    pub fn keyspace(&self) -> &Keyspace<I> {
        &self.keyspace
    }
    pub fn stats(&self) -> StandbyStats {
        self.stats
    }
    /// Whether the index matches the published log up to the head word
    /// seen at the last poll.
    pub fn is_synced(&self) -> bool {
        self.synced
    }
    /// The position applied up to (None: empty log, or not synced).
    pub fn position(&self) -> Option<Pos> {
        self.chain.back().map(|c| Pos { segment: c.segment, offset: c.end })
    }
    pub fn last_resync_reason(&self) -> Option<&str> {
        self.last_resync.as_deref()
    }
    /// The published version of `key` at `now_ms`, as of the last poll.
    pub fn get(&self, key: &[u8], now_ms: u64) -> Option<&crate::index::Entry> {
        self.keyspace.get(key, now_ms)
    }

    /// The value and expiry (unix ms, 0 = never) of `key` at `now_ms` as of
    /// the last poll, read from the log. `Err`: the record is no longer what
    /// the index says (the owner's cleaner reused its segment since the last
    /// poll, or it is being rewritten under us); unlike an owner's read this
    /// is a race, not damage, so nothing is poisoned: the caller asks the
    /// owner instead.
    pub fn value_and_expiry(&self, key: &[u8], now_ms: u64) -> Result<Option<(Vec<u8>, u64)>> {
        let Some(e) = self.keyspace.get(key, now_ms).filter(|e| !e.is_hash()) else { return Ok(None) };
        let value = super::load_value(&self.vol, self.id, key, e)?;
        Ok(Some((value, e.expire_at_ms)))
    }

    /// The value of `field` of the hash at `key` as of the last poll; `Err`
    /// as for [`Self::value_and_expiry`].
    pub fn field_value(&self, key: &[u8], field: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>> {
        let Some(f) = self.keyspace.fields(key, now_ms).and_then(|f| f.get(field)) else { return Ok(None) };
        super::load_field(&self.vol, self.id, key, field, f).map(Some)
    }

    /// The sequence number of the last record applied (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Bytes of published log the standby has not applied yet (None while
    /// it is not synced), from the positions of the head and of what it
    /// applied: the rest of its segment and the head's part of the head's
    /// segment; segments in between, if any, are not counted.
    pub fn lag_bytes(&self) -> Option<u64> {
        if !self.synced {
            return None;
        }
        let head = LogWord::decode(self.vol.region().load(self.vol.geometry().head_word(self.id)));
        Some(match (head.pos, self.position()) {
            (None, _) => 0,
            (Some(h), None) => u64::from(h.offset - SEGMENT_HEADER_BYTES),
            (Some(h), Some(p)) if h.segment == p.segment => u64::from(h.offset.saturating_sub(p.offset)),
            (Some(h), Some(p)) => {
                let seg = u64::from(self.vol.geometry().segment_bytes);
                seg - u64::from(p.offset) + u64::from(h.offset - SEGMENT_HEADER_BYTES)
            }
        })
    }

    /// Follow the published log: apply every whole record between what was
    /// applied and the current head, or resynchronise if that cannot be
    /// done safely. Errors are for a volume that is gone or a partition
    /// whose log cannot be read even from scratch (then the standby stays
    /// unsynced and a later poll tries again).
    pub fn poll(&mut self) -> Result<Polled> {
        match self.follow_published()? {
            Ok(p) => Ok(p),
            Err(why) => self.resync(why),
        }
    }

    /// [`Standby::poll`] without the rebuild: follow the published log if
    /// that can be done safely; otherwise end unsynced (with the reason in
    /// [`Standby::last_resync_reason`]) and leave the rebuild, a read of
    /// the whole live log, to a later [`Standby::poll`]. The server follows
    /// with this on one thread and rebuilds on another, at a lower CPU
    /// priority, so that building a standby never competes with a claim.
    pub fn poll_follow_only(&mut self) -> Result<Polled> {
        match self.follow_published()? {
            Ok(p) => Ok(p),
            Err(why) => {
                self.synced = false;
                self.last_resync = Some(why);
                Ok(Polled::default())
            }
        }
    }

    /// Follow from where we are; `Err(why)` inside if only a rebuild can go on.
    fn follow_published(&mut self) -> Result<std::result::Result<Polled, String>> {
        self.vol.ensure_ok()?;
        let head_word = self.vol.region().load(self.vol.geometry().head_word(self.id));
        if self.synced && head_word == self.head_seen {
            // The idle path, every poll: two loads, the chain cut only when
            // the owner's cleaner moved the tail.
            if self.vol.region().load(self.vol.geometry().tail_word(self.id)) != self.tail_seen {
                self.trim_to_tail();
            }
            return Ok(Ok(Polled::default()));
        }
        let followed = if self.synced {
            self.follow(head_word)
        } else {
            // Keep the reason a follower gave up for (`poll_follow_only`).
            Err(Lost::Resync(self.last_resync.clone().unwrap_or_else(|| "not synchronised yet".into())))
        };
        match followed {
            Ok(p) => Ok(Ok(p)),
            Err(Lost::Failed(e)) => Err(e),
            Err(Lost::Resync(why)) => Ok(Err(why)),
        }
    }

    /// Rebuild the index from the live log (the claim-time walk, read-only).
    fn resync(&mut self, why: String) -> Result<Polled> {
        self.synced = false;
        self.stats.resyncs += 1;
        self.last_resync = Some(why);
        self.keyspace.reset();
        self.chain.clear();
        let head_word = self.vol.region().load(self.vol.geometry().head_word(self.id));
        let keyspace = &mut self.keyspace;
        let mut records = 0u64;
        let log = recovery::recover(&self.vol, self.id, |v| {
            records = if matches!(v, recovery::Replayed::Reset) { 0 } else { records + 1 };
            keyspace.replayed(v);
        });
        let log = match log {
            Ok(log) if log.torn.is_none() && log.end == LogWord::decode(head_word).pos => log,
            Ok(_) => {
                // The head moved during the walk, or the walk fell back to the
                // floor: not a state we can vouch for. Try again next poll.
                self.keyspace.reset();
                return Ok(Polled { records: 0, bytes: 0, resynced: true });
            }
            Err(e @ Error::Corrupted { .. }) => {
                self.keyspace.reset();
                self.last_resync = Some(format!("resync failed (will retry): {e}"));
                return Ok(Polled { records: 0, bytes: 0, resynced: true });
            }
            Err(e) => {
                self.keyspace.reset();
                return Err(e);
            }
        };
        // The walk read the head before the records; confirm nothing we read
        // was freed and reused meanwhile.
        if !self.headers_unchanged(log.chain.iter()) {
            self.keyspace.reset();
            return Ok(Polled { records: 0, bytes: 0, resynced: true });
        }
        self.chain = log.chain.into_iter().collect();
        self.last_seq = log.last_seq;
        self.head_seen = head_word;
        self.synced = true;
        self.stats.records += records;
        self.stats.bytes += log.bytes;
        self.trim_to_tail();
        Ok(Polled { records, bytes: log.bytes, resynced: true })
    }

    /// Whether every segment of `segs` still carries the header we read.
    fn headers_unchanged<'a>(&self, mut segs: impl Iterator<Item = &'a ChainSeg>) -> bool {
        #[cfg(feature = "mutants")]
        if crate::mutant::standby_skips_reuse_check() {
            return true;
        }
        segs.all(|c| self.read_header(c.segment).is_ok_and(|h| h.chain_seq == c.chain_seq))
    }

    fn read_header(&self, segment: u16) -> Result<SegmentHeader> {
        recovery::read_header(&self.vol, self.id, segment)
    }

    /// Apply what was published since the last poll, from the position
    /// applied so far.
    fn follow(&mut self, head_word: u64) -> std::result::Result<Polled, Lost> {
        let geo = *self.vol.geometry();
        let Some(head) = LogWord::decode(head_word).pos else {
            return if self.chain.is_empty() {
                self.adopt(head_word, Vec::new(), Vec::new(), 0)
            } else {
                Err(Lost::Resync("the log became empty".into()))
            };
        };
        let Some(cur) = self.chain.back().copied() else { return Err(Lost::Resync("following an empty log".into())) };
        // Walk back from the head to the segment we are in.
        let mut fresh = Vec::new();
        let mut pos = head;
        let cur_end = loop {
            if u32::from(pos.segment) >= geo.segments_per_partition || pos.offset > geo.segment_bytes || pos.offset < SEGMENT_HEADER_BYTES {
                return Err(Lost::Resync(format!("log pointer {pos:?} out of range")));
            }
            if fresh.len() >= geo.segments_per_partition as usize {
                return Err(Lost::Resync("chain longer than the partition".into()));
            }
            let h = self.read_header(pos.segment)?;
            #[cfg(feature = "mutants")]
            let same_life = h.chain_seq == cur.chain_seq || crate::mutant::standby_skips_reuse_check();
            #[cfg(not(feature = "mutants"))]
            let same_life = h.chain_seq == cur.chain_seq;
            if pos.segment == cur.segment && same_life {
                if pos.offset < cur.end {
                    return Err(Lost::Resync(format!("the head went back from {} to {} in segment {}", cur.end, pos.offset, cur.segment)));
                }
                break pos.offset;
            }
            if h.chain_seq <= cur.chain_seq {
                return Err(Lost::Resync(format!("the chain from the head does not pass our position {:?}", self.position())));
            }
            if let Some(next) = fresh.last().map(|c: &ChainSeg| c.chain_seq)
                && h.chain_seq + 1 != next
            {
                return Err(Lost::Resync("chain sequence is not contiguous".into()));
            }
            fresh.push(ChainSeg { segment: pos.segment, start: SEGMENT_HEADER_BYTES, end: pos.offset, chain_seq: h.chain_seq });
            match h.prev {
                Some(p) => pos = p,
                None => return Err(Lost::Resync("the chain from the head ends before our position".into())),
            }
        };
        fresh.reverse();
        // Copy and decode the new records, then confirm the segments were not reused.
        let mut ranges = Vec::with_capacity(fresh.len() + 1);
        ranges.push(ChainSeg { start: cur.end, end: cur_end, ..cur });
        ranges.extend(fresh.iter().copied());
        let (mut decoded, mut last_seq, mut behind) = (Vec::new(), self.last_seq, None);
        let bytes = recovery::replay(&self.vol, self.id, &ranges, |segment, offset, r| {
            if r.seq <= last_seq && behind.is_none() {
                behind = Some(format!("sequence {} after {last_seq} in segment {segment} at {offset}", r.seq));
            }
            last_seq = r.seq;
            decoded.push((segment, offset, OwnedRecord::of(r)));
        })?;
        if let Some(why) = behind {
            return Err(Lost::Resync(why));
        }
        if !self.headers_unchanged(ranges.iter()) {
            return Err(Lost::Resync("a segment was reused while we read it".into()));
        }
        if let Some(last) = self.chain.back_mut() {
            last.end = cur_end;
        }
        self.adopt(head_word, fresh, decoded, bytes)
    }

    /// Mutant: publish the position applied up to in the partition entry.
    #[cfg(feature = "mutants")]
    fn store_read_point(&self) {
        if crate::mutant::standby_stores_read_point()
            && let Some(p) = self.position()
        {
            let at = self.vol.geometry().partition_entry(self.id) + 64;
            self.vol.region().store(at, LogWord { token: 0, pos: Some(p) }.encode());
        }
    }

    /// Take what `follow` read: the new segments and their records.
    fn adopt(
        &mut self,
        head_word: u64,
        fresh: Vec<ChainSeg>,
        decoded: Vec<(u16, u32, OwnedRecord)>,
        bytes: u64,
    ) -> std::result::Result<Polled, Lost> {
        let records = decoded.len() as u64;
        // The batch's versions arrive now (their access time).
        self.keyspace.tick();
        for (segment, offset, r) in decoded {
            self.last_seq = r.seq;
            self.keyspace.apply_owned(segment, offset, r.kind, r.key, &r.field, r.expire_at_ms, r.seq, r.total, r.blob);
        }
        self.chain.extend(fresh);
        #[cfg(feature = "mutants")]
        self.store_read_point();
        self.head_seen = head_word;
        self.stats.records += records;
        self.stats.bytes += bytes;
        self.trim_to_tail();
        Ok(Polled { records, bytes, resynced: false })
    }

    /// Drop the segments the owner's cleaner cut off the front of the
    /// chain. True if the tail is on our chain: it is then exactly the live
    /// chain up to our position.
    fn trim_to_tail(&mut self) -> bool {
        let tail_word = self.vol.region().load(self.vol.geometry().tail_word(self.id));
        self.tail_seen = tail_word;
        let tail = LogWord::decode(tail_word);
        let Some(t) = tail.pos else { return self.chain.is_empty() };
        let Some(i) = self.chain.iter().position(|c| c.segment == t.segment && t.offset >= c.start && t.offset <= c.end) else {
            return false;
        };
        self.chain.drain(..i);
        if let Some(first) = self.chain.front_mut() {
            first.start = t.offset;
        }
        true
    }

    /// The first current blob whose large put lies past the floor (the last
    /// commit, whose barrier may not have completed) and does not check out.
    fn torn_blob(&self, chain: &[ChainSeg]) -> Option<Error> {
        let geo = *self.vol.geometry();
        let floor = decode_floor(self.vol.region().load(geo.floor_word(self.id)))?;
        let order: std::collections::HashMap<u16, usize> = chain.iter().enumerate().map(|(i, c)| (c.segment, i)).collect();
        let at = |segment: u16, offset: u32| order.get(&segment).map(|&i| (i, offset));
        // No floor position: the whole log is past it.
        let floor_at = match floor {
            Some(f) => at(f.segment, f.offset)?,
            None => (0, 0),
        };
        for (_, e, blob) in self.keyspace.blob_entries() {
            if at(e.segment(), e.offset()).is_none_or(|p| p < floor_at) {
                continue;
            }
            let where_ = geo.log_byte(self.id, e.segment(), e.offset());
            for &s in &blob.segments {
                let d = geo.descriptor(self.id, s);
                if u32::from(s) < geo.segments_per_partition && SegState::decode(self.vol.region().load(d), d).ok()? == SegState::Free {
                    return Some(Error::corrupted("segment descriptor", d, "a current blob's segment is marked free"));
                }
            }
            if let Err(err) = crate::blob::read_value(&self.vol, self.id, blob, where_) {
                return Some(err);
            }
        }
        None
    }

    /// Take the partition over from its standby: a new fence token (the
    /// previous owner can publish nothing after it), then the tail since our
    /// position, one sync, and serving. Work proportional to the lag, not to
    /// the data. If the tail cannot be followed from here, this is a cold
    /// claim (the whole log is read).
    pub fn claim(mut self, reg: Registration, opts: PartitionOptions) -> Result<(Partition<I>, RecoveryStats)> {
        let vol = self.vol.clone();
        let partition = self.id;
        vol.ensure_ok()?;
        if !vol.is_registered(reg) {
            return Err(Error::NotRegistered { key: reg.key });
        }
        let token = take_owner(&vol, reg, partition)?;
        // The head is final now: nobody else can publish under our token.
        let head_word = vol.region().load(vol.geometry().head_word(partition));
        #[cfg(feature = "mutants")]
        let skip = crate::mutant::standby_skips_tail() && self.synced;
        #[cfg(not(feature = "mutants"))]
        let skip = false;
        let caught_up = if skip {
            Ok(Polled::default())
        } else if self.synced {
            if head_word == self.head_seen { Ok(Polled::default()) } else { self.follow(head_word) }
        } else {
            Err(Lost::Resync("not synchronised".into()))
        };
        let (records, bytes) = match caught_up {
            Ok(p) => (p.records, p.bytes),
            Err(Lost::Failed(e)) => return Err(e),
            // A cold claim: the whole log, with the torn-commit repair.
            Err(Lost::Resync(_)) => return Partition::recover_claimed(vol, reg, partition, opts, token, self.keyspace.into_index()),
        };
        // The full chain for the writer: ours, cut to the tail as it is now
        // (final too: only the owner moves it, and we are the owner); if the
        // tail is not on it, read it from the head (headers only).
        let chain: Vec<ChainSeg> =
            if self.trim_to_tail() { self.chain.iter().copied().collect() } else { recovery::read_chain(&vol, partition)? };
        debug_assert_eq!(chain, recovery::read_chain(&vol, partition)?, "the standby's chain is not the live chain");
        // The blobs of the last commit (past the floor) are not covered by
        // the records' checksums: a power loss of the owner's machine may
        // have torn one. Checked here as recovery checks them; if one does
        // not check out, this is a cold claim (which drops that commit).
        if self.torn_blob(&chain).is_some() {
            return Partition::recover_claimed(vol, reg, partition, opts, token, self.keyspace.into_index());
        }
        // The index may still hold versions the owner's cleaner dropped
        // without a record (keys that had expired, in segments it freed).
        // They are invisible (expired) and our own cleaner evicts each when
        // it cleans the segment number they name; until then they count in
        // `live_bytes`. Not scanning for them here keeps the takeover
        // independent of the number of keys.
        let log = RecoveredLog { chain, end: LogWord::decode(head_word).pos, bytes, last_seq: self.last_seq, torn: None };
        Partition::finish_claim(vol, reg, partition, opts, token, log, records, self.keyspace, true)
    }
}

/// A decoded record (its key; the value stays on the log), copied out
/// before it is known to be valid.
#[derive(Debug)]
struct OwnedRecord {
    kind: u8,
    key: Vec<u8>,
    /// A field record's field (empty for other kinds).
    field: Vec<u8>,
    expire_at_ms: u64,
    seq: u64,
    total: u32,
    /// A large put's reference (its value is the blob's, not copied).
    blob: Option<crate::blob::BlobRef>,
}

impl OwnedRecord {
    fn of(r: &record::Record<'_>) -> OwnedRecord {
        // `record::decode` checked a large put's reference.
        let blob = (r.kind == REC_KIND_LARGE).then(|| crate::blob::BlobRef::decode(r.value, 0, 0).expect("a decoded reference"));
        let field = match r.kind {
            REC_KIND_FIELD => record::split_field(r.value).expect("a decoded field record").0.to_vec(),
            REC_KIND_FIELD_DEL => r.value.to_vec(),
            _ => Vec::new(),
        };
        OwnedRecord { kind: r.kind, key: r.key.to_vec(), field, expire_at_ms: r.expire_at_ms, seq: r.seq, total: r.total as u32, blob }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::record::Op;
    use crate::{CreateOptions, ProcessIdentity};

    fn volume(segment_bytes: u32, bytes: u64) -> Arc<Volume> {
        let opts = CreateOptions { segment_bytes, ..CreateOptions::new(bytes, 1) };
        Arc::new(Volume::create_in_memory(&opts, None).unwrap().0)
    }

    fn put(k: u64, v: u64, bytes: usize) -> Op {
        let mut value = v.to_le_bytes().to_vec();
        value.resize(bytes.max(8), b'v');
        Op::Put { key: format!("k{k}").into_bytes(), value: value.into(), expire_at_ms: 0 }
    }

    type Contents = BTreeMap<Vec<u8>, Vec<u8>>;

    /// Every key that never expires with its value, and every hash live at
    /// `now_ms` with its fields (`field=value;` in order, then its expiry),
    /// read back from the log (a version whose record does not check out
    /// reads as "unreadable", which no value equals).
    fn contents<I: Index>(vol: &Volume, ks: &Keyspace<I>, now_ms: u64) -> Contents {
        let unreadable = |err: Error| format!("unreadable: {err}").into_bytes();
        ks.index()
            .iter()
            .filter(|(_, e)| if e.is_hash() { e.expire_at_ms == 0 || e.expire_at_ms > now_ms } else { e.expire_at_ms == 0 })
            .map(|(k, e)| {
                if !e.is_hash() {
                    return (k.to_vec(), super::super::load_value(vol, 0, k, e).unwrap_or_else(unreadable));
                }
                let fields = ks.fields(k, now_ms).expect("a live hash has fields");
                let mut all: Vec<Vec<u8>> = fields
                    .iter()
                    .map(|(name, f)| {
                        let v = super::super::load_field(vol, 0, k, name, f).unwrap_or_else(unreadable);
                        [&name[..], b"=", &v, b";"].concat()
                    })
                    .collect();
                all.sort();
                all.push(format!("expire {}", e.expire_at_ms).into_bytes());
                (k.to_vec(), all.concat())
            })
            .collect()
    }

    /// A write to one of a few hashes: mostly a field set, sometimes a
    /// field removed, an expiry set (some soon after `now`), the hash
    /// deleted or replaced by a string.
    fn hash_op(rng: &mut Rng, now: u64) -> Op {
        let key = format!("h{}", rng.below(6)).into_bytes();
        let field = format!("f{}", rng.below(30)).into_bytes();
        match rng.below(24) {
            0 => Op::Del { key },
            1 => Op::Put { key, value: vec![b's'; 100].into(), expire_at_ms: 0 },
            2 | 3 => Op::Expire { key, expire_at_ms: if rng.below(2) == 0 { 0 } else { now + 1 + rng.below(60) } },
            4..=7 => Op::FieldDel { key, field },
            _ => {
                let mut value = now.to_le_bytes().to_vec();
                value.resize(50 + rng.below(400) as usize, b'f');
                Op::FieldPut { key, field, value: value.into() }
            }
        }
    }

    /// A seeded xorshift: the tests are reproducible.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// An owner overwriting a few keys in small segments, so that its
    /// cleaner frees and reuses segments all the time, and a standby that
    /// polls every `poll_every` commits: whenever it is synced, its index is
    /// the owner's. Returns the standby's resync count.
    fn follow_a_cleaning_owner(poll_every: u64, commits: u64, seed: u64) -> u64 {
        let vol = volume(8192, 744 << 10);
        let reg = vol.register(1, ProcessIdentity::default()).unwrap();
        let (mut owner, _) = Partition::claim_with(vol.clone(), reg, 0, PartitionOptions::default()).unwrap();
        let mut standby = Standby::new(vol.clone(), 0).unwrap();
        let mut rng = Rng(seed | 1);
        for i in 0..commits {
            for _ in 0..1 + rng.below(4) {
                let op = if rng.below(150) == 0 {
                    Op::Clear
                } else if rng.below(3) == 0 {
                    hash_op(&mut rng, i)
                } else if rng.below(10) == 0 {
                    Op::Del { key: format!("k{}", rng.below(20)).into_bytes() }
                } else if rng.below(12) == 0 {
                    // A large value: a blob the owner frees when it is overwritten.
                    put(rng.below(20), i, 5000 + rng.below(15_000) as usize)
                } else {
                    put(rng.below(20), i, 200 + rng.below(600) as usize)
                };
                // The clock is the commit count: hashes expire, and the
                // cleaner deletes them with a record.
                owner.append(&[op], i).unwrap();
            }
            owner.commit().unwrap();
            if i % poll_every == 0 {
                standby.poll().unwrap();
                if standby.is_synced() {
                    assert_eq!(
                        contents(&vol, standby.keyspace(), i),
                        contents(&vol, owner.keyspace(), i),
                        "commit {i}: the standby's index differs from the owner's"
                    );
                }
            }
        }
        standby.poll().unwrap();
        assert!(standby.is_synced(), "a standby of an idle owner did not synchronise: {:?}", standby.last_resync_reason());
        assert_eq!(contents(&vol, standby.keyspace(), commits), contents(&vol, owner.keyspace(), commits));
        // And a cold claim (recovery replaying the whole log) builds the same.
        let reg = vol.register(2, ProcessIdentity::default()).unwrap();
        let claimed = Partition::claim(vol.clone(), reg, 0).unwrap();
        let (hashes, fields) = claimed.keyspace().hash_stats();
        assert!(hashes > 0 && fields > 0, "seed {seed}: no hash at the end");
        assert_eq!(contents(&vol, claimed.keyspace(), commits), contents(&vol, owner.keyspace(), commits), "recovery differs");
        standby.stats().resyncs
    }

    #[test]
    fn a_standby_polling_after_every_commit_follows_the_cleaner_without_resyncing() {
        for seed in 1..4 {
            // One resync: the first synchronisation.
            assert_eq!(follow_a_cleaning_owner(1, 600, seed), 1, "seed {seed}");
        }
    }

    #[test]
    fn a_standby_left_behind_by_the_cleaner_notices_and_resynchronises() {
        for seed in 1..4 {
            let resyncs = follow_a_cleaning_owner(300, 3000, seed);
            assert!(resyncs > 1, "seed {seed}: a standby polling every 300 commits of a cleaning owner never lost its place");
        }
    }

    /// The owner laps the standby: it writes until its head is back in the
    /// segment the standby last read, in a new life of that segment, past
    /// the standby's offset there. Then the standby polls. Returns whether
    /// its index equals the owner's afterwards. Records are all one size, so
    /// the standby's offset is a record boundary in the new life too (the
    /// hardest case: a record decodes there, with a higher sequence number).
    fn a_lapped_standby_matches(seed: u64) -> bool {
        let vol = volume(8192, 744 << 10);
        let reg = vol.register(1, ProcessIdentity::default()).unwrap();
        let mut owner = Partition::claim(vol.clone(), reg, 0).unwrap();
        let mut rng = Rng(seed | 1);
        let mut write = |owner: &mut Partition, i: u64| {
            owner.append(&[put(rng.below(20), i, 500)], 0).unwrap();
            owner.commit().unwrap();
        };
        for i in 0..50 {
            write(&mut owner, i);
        }
        let mut standby = Standby::new(vol.clone(), 0).unwrap();
        standby.poll().unwrap();
        let at = standby.position().unwrap();
        let mut lapped = false;
        for i in 50..100_000 {
            write(&mut owner, i);
            let head = LogWord::decode(vol.region().load(vol.geometry().head_word(0))).pos.unwrap();
            lapped |= head.segment != at.segment;
            if lapped && head.segment == at.segment && head.offset > at.offset {
                break;
            }
        }
        standby.poll().unwrap();
        standby.is_synced() && contents(&vol, standby.keyspace(), 0) == contents(&vol, owner.keyspace(), 0)
    }

    /// Small segments, an owner that wrote keys k0..k19 (300-byte values).
    fn owner_of_20_keys() -> (Arc<Volume>, Partition) {
        let vol = volume(8192, 744 << 10);
        let reg = vol.register(1, ProcessIdentity::default()).unwrap();
        let (mut owner, _) = Partition::claim_with(vol.clone(), reg, 0, PartitionOptions::default()).unwrap();
        for k in 0..20 {
            owner.append(&[put(k, 0, 300)], 0).unwrap();
        }
        owner.commit().unwrap();
        (vol, owner)
    }

    /// Overwrite those keys for about three laps of the partition's
    /// segments: the cleaner frees and reuses every one of them.
    fn lap_three_times(owner: &mut Partition) {
        for i in 1..3000 {
            owner.append(&[put(i % 20, i, 300)], 0).unwrap();
            owner.commit().unwrap();
        }
    }

    /// A standby's reads between polls: the version its index names, or an
    /// error once the owner's cleaner reused that record's segment; never
    /// another value, and never a poisoned volume (it is a race, not damage).
    #[test]
    fn a_standby_left_behind_reads_its_own_versions_or_nothing() {
        let (vol, mut owner) = owner_of_20_keys();
        let mut standby = Standby::new(vol.clone(), 0).unwrap();
        standby.poll().unwrap();
        assert!(standby.is_synced());
        let then = contents(&vol, owner.keyspace(), 0);
        lap_three_times(&mut owner);
        let (mut same, mut gone) = (0, 0);
        for k in then.keys() {
            match standby.value_and_expiry(k, 0) {
                Ok(Some((v, 0))) => {
                    assert_eq!(&v, &then[k], "a standby read returned another version than its index names");
                    same += 1;
                }
                Ok(other) => panic!("{}: {other:?}", String::from_utf8_lossy(k)),
                Err(_) => gone += 1,
            }
        }
        assert!(gone > 0, "the cleaner never reused a segment the standby reads ({same} reads matched)");
        vol.ensure_ok().expect("a standby's lost race poisoned the volume");
        standby.poll().unwrap();
        assert_eq!(contents(&vol, standby.keyspace(), 0), contents(&vol, owner.keyspace(), 0));
        let k0 = b"k0".as_slice();
        assert_eq!(standby.value_and_expiry(k0, 0).unwrap().map(|(v, _)| v), owner.value(k0, 0));
        // Positions in sequence numbers (the server's WAIT): staged is not
        // published; published and polled is applied; a new owner goes on.
        let published = owner.published_seq();
        assert_eq!(standby.last_seq(), published);
        owner.append(&[put(1, 1, 300)], 0).unwrap();
        assert_eq!(owner.published_seq(), published);
        owner.commit().unwrap();
        assert_eq!(owner.published_seq(), published + 1);
        assert!(standby.last_seq() < owner.published_seq());
        standby.poll().unwrap();
        assert_eq!(standby.last_seq(), published + 1);
        drop(owner);
        let reg = vol.register(2, ProcessIdentity::default()).unwrap();
        let (next, _) = Partition::claim_with(vol.clone(), reg, 0, PartitionOptions::default()).unwrap();
        assert_eq!(next.published_seq(), published + 1, "a new owner's published sequence starts where the log ends");
    }

    /// The server's follower thread: following never rebuilds. A standby
    /// never synced, or lost (lapped by the cleaner), ends unsynced with a
    /// reason and its rebuild count unchanged; `poll` then rebuilds it.
    #[test]
    fn following_only_never_rebuilds_and_leaves_a_lost_standby_to_poll() {
        let (vol, mut owner) = owner_of_20_keys();
        let mut standby = Standby::new(vol.clone(), 0).unwrap();
        assert_eq!(standby.poll_follow_only().unwrap(), Polled::default());
        assert!(!standby.is_synced());
        assert_eq!(standby.stats().resyncs, 0, "following built a standby");
        standby.poll().unwrap();
        assert!(standby.is_synced());
        assert_eq!(standby.stats().resyncs, 1);
        owner.append(&[put(3, 1, 300)], 0).unwrap();
        owner.commit().unwrap();
        assert_eq!(standby.poll_follow_only().unwrap().records, 1);
        assert!(standby.is_synced());
        assert_eq!(contents(&vol, standby.keyspace(), 0), contents(&vol, owner.keyspace(), 0));
        lap_three_times(&mut owner);
        standby.poll_follow_only().unwrap();
        assert!(!standby.is_synced(), "a lapped standby followed on");
        assert_eq!(standby.stats().resyncs, 1, "following rebuilt a lost standby");
        let why = standby.last_resync_reason().expect("a reason").to_owned();
        standby.poll().unwrap();
        assert!(standby.is_synced());
        assert_eq!(standby.stats().resyncs, 2);
        assert_eq!(standby.last_resync_reason(), Some(why.as_str()), "the rebuild forgot why the follower gave up");
        assert_eq!(contents(&vol, standby.keyspace(), 0), contents(&vol, owner.keyspace(), 0));
    }

    #[test]
    fn a_standby_lapped_by_the_owner_resynchronises() {
        for seed in 1..6 {
            assert!(a_lapped_standby_matches(seed), "seed {seed}");
        }
    }

    /// A reused segment is exactly what the checks exist for: without them,
    /// a standby that was lapped builds a wrong index.
    #[cfg(feature = "mutants")]
    #[test]
    fn the_reuse_check_mutant_builds_a_wrong_index() {
        crate::mutant::set_standby_skips_reuse_check(true);
        let wrong = (1..6).filter(|seed| !a_lapped_standby_matches(*seed)).count();
        crate::mutant::set_standby_skips_reuse_check(false);
        assert!(wrong > 0, "a standby that skips the reuse checks still matched the owner");
    }

    /// The owner keeps writing after the standby's last poll, then dies;
    /// the standby takes over: the tail since its poll is read (not the
    /// whole log), and nothing acknowledged is missing.
    fn take_over(lagging_commits: u64) -> (Contents, Contents, RecoveryStats) {
        let vol = volume(64 << 10, 32 << 20);
        let [a, b, c] = [1, 2, 3].map(|k| vol.register(k, ProcessIdentity::default()).unwrap());
        let mut owner = Partition::claim(vol.clone(), a, 0).unwrap();
        let mut standby = Standby::new(vol.clone(), 0).unwrap();
        for i in 0..300 {
            owner.append(&[put(i, i, 500)], 0).unwrap();
            owner.commit().unwrap();
        }
        owner.append(&[put(9000, 1, 100_000), put(9001, 1, 100_000)], 0).unwrap(); // blobs
        owner.commit().unwrap();
        standby.poll().unwrap();
        for i in 0..lagging_commits {
            // The lag overwrites a large value and writes another.
            let op = if i == 1 { put(9000 + i, i, 70_000) } else { put(1000 + i, i, 500) };
            owner.append(&[op], 0).unwrap();
            owner.commit().unwrap();
        }
        owner.append(&[put(5000, 0, 10)], 0).unwrap(); // staged, never published
        let expected = contents(&vol, owner.keyspace(), 0);
        let (mut new_owner, stats) = standby.claim(b, PartitionOptions::default()).unwrap();
        assert!(owner.commit().is_err(), "the old owner published after the takeover");
        assert_eq!(contents(&vol, new_owner.keyspace(), 0), expected, "the standby's takeover lost or invented writes");
        new_owner.append(&[put(7, 7, 10)], 0).unwrap();
        new_owner.commit().unwrap();
        let after = contents(&vol, new_owner.keyspace(), 0);
        drop(new_owner);
        let cold = Partition::claim(vol.clone(), c, 0).unwrap();
        assert_eq!(contents(&vol, cold.keyspace(), 0), after, "a cold claim after the takeover reads another log");
        assert!(crate::check::check(&vol).is_empty(), "{:?}", crate::check::check(&vol));
        (expected, after, stats)
    }

    /// The owner published a large value and died before its barrier, and
    /// the blob did not reach the disk (a power loss of its machine): the
    /// standby followed the record, but its takeover checks the blobs of the
    /// last commit, finds this one torn, and claims cold, which drops that
    /// commit: the previous value is served, not a blob that does not check out.
    #[test]
    fn a_takeover_checks_the_last_commits_blobs() {
        let vol = volume(8192, 2 << 20);
        let [a, b] = [1, 2].map(|k| vol.register(k, ProcessIdentity::default()).unwrap());
        let mut owner = Partition::claim(vol.clone(), a, 0).unwrap();
        let mut standby = Standby::new(vol.clone(), 0).unwrap();
        owner.append(&[put(1, 1, 20_000)], 0).unwrap();
        owner.commit().unwrap();
        owner.append(&[put(1, 2, 20_000)], 0).unwrap();
        owner.publish().unwrap(); // no barrier
        standby.poll().unwrap();
        let torn = standby.keyspace().blob(b"k1").cloned().unwrap();
        vol.write_bulk(vol.geometry().segment(0, torn.segments[0]) + 64, &[0xee; 16]).unwrap();
        drop(owner);
        let (new_owner, stats) = standby.claim(b, PartitionOptions::default()).unwrap();
        assert!(!stats.from_standby && stats.torn_commit_dropped, "{stats:?}");
        let mut want = 1u64.to_le_bytes().to_vec();
        want.resize(20_000, b'v');
        assert_eq!(new_owner.value(b"k1", 0), Some(want));
        assert!(crate::check::check(&vol).is_empty(), "{:?}", crate::check::check(&vol));
    }

    #[test]
    fn a_takeover_reads_only_the_lag() {
        let (_, _, idle) = take_over(0);
        assert_eq!(idle.records, 0, "a caught-up standby read records at takeover");
        assert_eq!(idle.garbage_segments_freed, 0, "the takeover freed a segment (a blob?) still in use");
        let (_, _, lagging) = take_over(40);
        assert_eq!(lagging.records, 40, "the takeover did not read exactly the 40 commits of lag");
    }

    #[cfg(feature = "mutants")]
    #[test]
    fn the_skipped_tail_mutant_loses_acknowledged_writes() {
        crate::mutant::set_standby_skips_tail(true);
        let caught = std::panic::catch_unwind(|| take_over(40));
        crate::mutant::set_standby_skips_tail(false);
        assert!(caught.is_err(), "a takeover that skips the tail kept every write");
    }

    /// A standby never stores anything into the volume: the whole volume
    /// is compared around every poll. Returns the first commit after which
    /// a poll changed it, if any.
    fn first_poll_that_writes() -> Option<u64> {
        let vol = volume(8192, 4 << 20);
        let reg = vol.register(1, ProcessIdentity::default()).unwrap();
        let mut owner = Partition::claim(vol.clone(), reg, 0).unwrap();
        let mut standby = Standby::new(vol.clone(), 0).unwrap();
        let snapshot = |vol: &Volume| {
            let mut b = vec![0u8; vol.geometry().volume_bytes as usize];
            vol.region().read(0, &mut b);
            b
        };
        for i in 0..200 {
            owner.append(&[put(i % 15, i, 300)], 0).unwrap();
            owner.commit().unwrap();
            let before = snapshot(&vol);
            standby.poll().unwrap();
            if before != snapshot(&vol) {
                return Some(i);
            }
        }
        assert!(standby.is_synced());
        None
    }

    #[test]
    fn a_standby_writes_nothing() {
        assert_eq!(first_poll_that_writes(), None, "a poll changed the volume");
    }

    /// A standby that publishes how far it read (a "read point" kept in the
    /// partition entry's reserved bytes, the design this one rejects) is a
    /// standby that writes into the partition's area: caught.
    #[cfg(feature = "mutants")]
    #[test]
    fn the_read_point_mutant_is_caught_writing() {
        crate::mutant::set_standby_stores_read_point(true);
        let caught = first_poll_that_writes();
        crate::mutant::set_standby_stores_read_point(false);
        assert!(caught.is_some(), "a standby that stores a read point was not seen writing");
    }

    /// A torn-commit repair or any head that moves back is not followed.
    #[test]
    fn a_head_that_moves_back_makes_the_standby_resynchronise() {
        let vol = volume(64 << 10, 8 << 20);
        let reg = vol.register(1, ProcessIdentity::default()).unwrap();
        let mut owner = Partition::claim(vol.clone(), reg, 0).unwrap();
        owner.append(&[put(1, 1, 100)], 0).unwrap();
        owner.commit().unwrap();
        let early = vol.region().load(vol.geometry().head_word(0));
        owner.append(&[put(2, 2, 100)], 0).unwrap();
        owner.commit().unwrap();
        let mut standby = Standby::new(vol.clone(), 0).unwrap();
        standby.poll().unwrap();
        assert_eq!(standby.keyspace().len(), 2);
        // As a claim's torn-commit repair does (same segment, earlier offset).
        let at = vol.geometry().head_word(0);
        let now = vol.region().load(at);
        vol.region().cas(at, now, early).unwrap();
        let polled = standby.poll().unwrap();
        assert!(polled.resynced, "followed a head that went back");
        assert_eq!(standby.keyspace().len(), 1);
        assert!(standby.get(b"k2", 0).is_none());
    }
}
