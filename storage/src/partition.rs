//! A claimed partition: the fence-safe log writer, recovery, and the cleaner.
//!
//! The design rule (FORMAT.md, "Fencing"): a writer stores bytes only into a
//! segment whose descriptor it switched from FREE to OPEN(its slot, its
//! token) by CAS, and a segment stays out of everyone else's reach until that
//! incarnation seals it or is proven dead. Publication is one CAS on the head
//! word, which carries the writer's fence token; a fence raises that token
//! first, so a fenced writer's publication fails, and its late stores land
//! only in space nobody else reads or will reuse.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::layout::*;
use crate::record::{self, Op, Stamp};
use crate::volume::{Registration, SlotState, Volume};
use crate::{Error, Result};

/// Fail point between the writer's last fence check and its stores of record
/// bytes (which it holds back until it publishes, commits or seals): the
/// window a paused zombie exploits.
pub const FAILPOINT_BEFORE_STORES: &str = "storage::append::before_stores";
/// Fail point after the stores, before the publication CAS.
pub const FAILPOINT_BEFORE_PUBLISH: &str = "storage::commit::before_publish";

macro_rules! failpoint {
    ($self:ident, $name:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
        if let Some(hook) = $self.pause_hook.as_mut() {
            (hook.0)($name);
        }
    };
}

/// A test hook run at each fail point, in-process: lets a simulation "pause"
/// a writer there and run other actors before it continues.
pub struct PauseHook(pub Box<dyn FnMut(&'static str) + Send + Sync>);

impl std::fmt::Debug for PauseHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PauseHook")
    }
}

/// One segment of the live chain, with the byte range holding records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainSeg {
    pub segment: u16,
    pub start: u32,
    pub end: u32,
    pub chain_seq: u64,
}

/// A key's current version, as published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub expire_at_ms: u64,
    pub seq: u64,
    loc: u16,
    bytes: u32,
}

#[derive(Debug)]
struct SegHeader {
    token: u32,
    writer_key: u64,
    chain_seq: u64,
    prev: Option<Pos>,
}

fn read_header(vol: &Volume, partition: u32, segment: u16) -> Result<SegHeader> {
    let geo = vol.geometry();
    let at = geo.segment(partition, segment);
    let mut b = [0u8; SEGMENT_HEADER_BYTES as usize];
    vol.region().read(at, &mut b);
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
    let bad = |d: String| Err(Error::corrupted("segment header", at, d));
    let crc = crc32c::crc32c(&b[..SH_CRC]);
    if u32_at(SH_MAGIC) != SEG_MAGIC || crc != u32_at(SH_CRC) {
        return bad(format!("bad magic or checksum (partition {partition} segment {segment})"));
    }
    if u32_at(SH_PARTITION) != partition || u32_at(SH_SEGMENT) != u32::from(segment) {
        return bad(format!("header names partition {} segment {}", u32_at(SH_PARTITION), u32_at(SH_SEGMENT)));
    }
    let prev_bits = u64_at(SH_PREV);
    if prev_bits >> 32 != 0 {
        return bad(format!("bad prev pointer {prev_bits:#x}"));
    }
    Ok(SegHeader {
        token: u32_at(SH_TOKEN),
        writer_key: u64_at(SH_WRITER_KEY),
        chain_seq: u64_at(SH_CHAIN_SEQ),
        prev: decode_pos(prev_bits),
    })
}

fn encode_header(partition: u32, segment: u16, h: &SegHeader) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut b = [0u8; SEGMENT_HEADER_BYTES as usize];
    b[SH_MAGIC..SH_MAGIC + 4].copy_from_slice(&SEG_MAGIC.to_le_bytes());
    b[SH_PARTITION..SH_PARTITION + 4].copy_from_slice(&partition.to_le_bytes());
    b[SH_SEGMENT..SH_SEGMENT + 4].copy_from_slice(&u32::from(segment).to_le_bytes());
    b[SH_TOKEN..SH_TOKEN + 4].copy_from_slice(&h.token.to_le_bytes());
    b[SH_WRITER_KEY..SH_WRITER_KEY + 8].copy_from_slice(&h.writer_key.to_le_bytes());
    b[SH_CHAIN_SEQ..SH_CHAIN_SEQ + 8].copy_from_slice(&h.chain_seq.to_le_bytes());
    b[SH_PREV..SH_PREV + 8].copy_from_slice(&encode_pos(h.prev).to_le_bytes());
    let crc = crc32c::crc32c(&b[..SH_CRC]);
    b[SH_CRC..SH_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    b
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
    let entry = geo.partition_entry(partition);
    let tail = LogWord::decode(vol.region().load(entry + PE_TAIL));
    let Some(mut pos) = end else {
        if tail.pos.is_some() {
            return Err(Error::corrupted("tail word", entry + PE_TAIL, "tail set but the log is empty"));
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
            return Err(Error::corrupted("tail word", entry + PE_TAIL, format!("tail {start} past the end {}", pos.offset)));
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
        return Err(Error::corrupted("tail word", entry + PE_TAIL, "tail segment is not on the chain"));
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
        let base = geo.segment(partition, c.segment);
        buf.resize((c.end - c.start) as usize, 0);
        vol.region().read(base + u64::from(c.start), &mut buf);
        let mut at = 0usize;
        while at < buf.len() {
            let off = base + u64::from(c.start) + at as u64;
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

/// The floor word: 0 = none (no fallback); otherwise a log word naming a head
/// position whose whole chain was durable when it was stored.
fn decode_floor(word: u64) -> Option<Option<Pos>> {
    (word != 0).then(|| LogWord::decode(word).pos)
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
    let bytes = replay(vol, partition, &chain, |seg, off, r| {
        last_seq = r.seq;
        passed |= Some(Pos { segment: seg, offset: off + r.total as u32 }) == target;
        visit(Replayed::Record(seg, off, r));
    })?;
    if !passed {
        let at = vol.geometry().floor_word(partition);
        return Err(Error::corrupted("floor word", at, format!("{target:?} is not a record boundary of the log ending at {end:?}")));
    }
    Ok(RecoveredLog { chain, end, bytes, last_seq, torn: None })
}

/// Tuning knobs of a claimed partition.
#[derive(Clone, Copy, Debug)]
pub struct PartitionOptions {
    /// Start cleaning when this few segments are free.
    pub clean_below_free_segments: u32,
}

impl Default for PartitionOptions {
    fn default() -> Self {
        PartitionOptions { clean_below_free_segments: 3 }
    }
}

#[derive(Clone, Copy, Debug)]
struct Cursor {
    segment: u16,
    offset: u32,
}

/// An exclusively claimed partition: index, writer and cleaner.
#[derive(Debug)]
pub struct Partition {
    vol: Arc<Volume>,
    id: u32,
    reg: Registration,
    token: u32,
    opts: PartitionOptions,
    chain: VecDeque<ChainSeg>,
    /// Where the next record goes; `None` until we own a segment.
    cur: Option<Cursor>,
    published: Option<Pos>,
    /// The floor word as we last stored it.
    floor: u64,
    /// Data ranges stored but not yet flushed.
    dirty: Vec<(u64, u64)>,
    /// +1 each time `commit` flushes and clears `dirty` (for `SyncMark`).
    dirty_epoch: u64,
    head_dirty: bool,
    /// Staged but unpublished operations: (op, segment, offset, seq, relocated by the cleaner).
    pending: Vec<(Op, u16, u32, u64, bool)>,
    index: HashMap<Vec<u8>, Entry>,
    next_seq: u64,
    free_segments: u32,
    live_bytes: u64,
    poisoned: Option<String>,
    buf: Vec<u8>,
    /// Staged record bytes not yet written to the volume, contiguous from
    /// `wbuf_at`: one `pwrite` per partition and publication instead of one
    /// per batch. Nobody reads past the head, so holding them back is
    /// invisible; they are written before the publication, a commit, or
    /// the seal of their segment.
    wbuf: Vec<u8>,
    wbuf_at: u64,
    alloc_hint: u16,
    recovered_bytes: u64,
    pause_hook: Option<PauseHook>,
    full_at_live_bytes: Option<u64>,
}

/// What a barrier started at some moment covers (`Partition::barrier_started`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncMark {
    epoch: u64,
    ranges: usize,
    head: bool,
}

/// What `append` did besides staging its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// It first ran a full `commit` (to make room for cleaning): every batch
    /// appended before this call is now published and durable.
    pub committed_earlier: bool,
}

/// What `claim` found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    pub records: u64,
    pub bytes: u64,
    pub segments: u32,
    pub garbage_segments_freed: u32,
    /// The last commit was torn by a power loss (never acknowledged) and dropped.
    pub torn_commit_dropped: bool,
}

impl Partition {
    /// Take `partition` for `reg`: a new fence token (fencing any previous
    /// owner), then recovery of the published log into an in-memory index.
    pub fn claim(vol: Arc<Volume>, reg: Registration, partition: u32) -> Result<Partition> {
        Partition::claim_with(vol, reg, partition, PartitionOptions::default()).map(|(p, _)| p)
    }

    pub fn claim_with(vol: Arc<Volume>, reg: Registration, partition: u32, opts: PartitionOptions) -> Result<(Partition, RecoveryStats)> {
        vol.ensure_ok()?;
        vol.check_partition(partition)?;
        if !vol.is_registered(reg) {
            return Err(Error::NotRegistered { key: reg.key });
        }
        let geo = *vol.geometry();
        let entry = geo.partition_entry(partition);
        let region = vol.region().clone();
        // 1. The owner word: one CAS to a fresh token in our slot.
        let token = loop {
            let word = region.load(entry + PE_OWNER);
            let owner = Owner::decode(word, entry + PE_OWNER)?;
            if owner.token >= u32::MAX - 1 {
                return Err(Error::TokensExhausted { partition });
            }
            let mine = Owner { token: owner.token + 1, slot: Some(reg.slot) };
            if region.cas(entry + PE_OWNER, word, mine.encode()).is_ok() {
                break mine.token;
            }
        };
        // 2. Fence the log words: from here on the old owner cannot publish or cut.
        vol.raise_log_tokens(partition, token);
        // 3. A PREEMPT that raced with step 1 may have missed us: re-check and
        //    give the partition back if our key is gone.
        if !vol.is_registered(reg) {
            vol.fence_partition(partition, Some(reg.slot))?;
            return Err(Error::NotRegistered { key: reg.key });
        }
        let (head_at, floor_at) = (geo.head_word(partition), geo.floor_word(partition));
        let head = LogWord::decode(region.load(head_at));
        if head.token != token {
            return Err(Error::Fenced { partition, presented: token, current: head.token });
        }
        // 4. Recovery: the head's log, or the floor's if the last commit was torn.
        let mut index: HashMap<Vec<u8>, Entry> = HashMap::new();
        let mut records = 0;
        let log = recover(&vol, partition, |v| match v {
            Replayed::Reset => {
                index.clear();
                records = 0;
            }
            Replayed::Record(seg, _off, r) => {
                records += 1;
                match r.kind {
                    REC_KIND_PUT => {
                        index.insert(
                            r.key.to_vec(),
                            Entry { value: r.value.to_vec(), expire_at_ms: r.expire_at_ms, seq: r.seq, loc: seg, bytes: r.total as u32 },
                        );
                    }
                    _ => {
                        index.remove(r.key);
                    }
                }
            }
        })?;
        let chain = log.chain;
        let mut stats = RecoveryStats {
            segments: chain.len() as u32,
            records,
            bytes: log.bytes,
            torn_commit_dropped: log.torn.is_some(),
            ..Default::default()
        };
        if log.torn.is_some() {
            // The torn commit was never acknowledged: the head goes back to the floor.
            let mine = |pos| LogWord { token, pos }.encode();
            if region.cas(head_at, mine(head.pos), mine(log.end)).is_err() {
                let current = LogWord::decode(region.load(head_at)).token;
                return Err(Error::Fenced { partition, presented: token, current });
            }
        }
        // 5. One sync: our owner word and raised tokens, a repaired head, and
        //    the log itself — the previous owner publishes before its
        //    barrier, so what the log covers may still be only in the page
        //    cache. Durable before anything is built on it or served; then it
        //    becomes the floor.
        vol.sync_all()?;
        let floor = LogWord { token, pos: log.end }.encode();
        loop {
            let word = region.load(floor_at);
            if word != 0 && LogWord::decode(word).token > token {
                return Err(Error::Fenced { partition, presented: token, current: LogWord::decode(word).token });
            }
            if region.cas(floor_at, word, floor).is_ok() {
                break;
            }
        }
        let bytes = log.bytes;
        let last_seq = log.last_seq;
        let head = LogWord { token, pos: log.end };
        // 6. Segments: free the garbage a crashed cleaner or a dead owner left.
        let in_chain: std::collections::HashSet<u16> = chain.iter().map(|c| c.segment).collect();
        let mut free = 0;
        for s in 0..geo.segments_per_partition as u16 {
            let at = geo.descriptor(partition, s);
            let word = region.load(at);
            let state = SegState::decode(word, at)?;
            let garbage = match state {
                // (`recover` rejected a chain segment marked FREE.)
                SegState::Free => {
                    free += 1;
                    false
                }
                _ if in_chain.contains(&s) => false,
                SegState::Sealed { .. } => true,
                // An open segment of a slot that is empty now: its incarnation
                // retired without sealing it (crash mid-retire).
                SegState::Open { slot, .. } => vol.slot_info(slot).state == SlotState::Empty,
            };
            if garbage && region.cas(at, word, SegState::Free.encode()).is_ok() {
                free += 1;
                stats.garbage_segments_freed += 1;
            }
        }
        // The floor need not be durable yet: the one on disk is a prefix of
        // this log (or this log's end, after a torn commit).
        if stats.garbage_segments_freed > 0 {
            vol.flush(entry, geo.partition_entry_bytes)?;
        }
        let live_bytes = index.values().map(|e| u64::from(e.bytes)).sum();
        let next_seq = last_seq + 1;
        Ok((
            Partition {
                vol,
                id: partition,
                reg,
                token,
                opts,
                chain: chain.into_iter().collect(),
                cur: None,
                published: head.pos,
                floor,
                dirty: Vec::new(),
                dirty_epoch: 0,
                head_dirty: false,
                pending: Vec::new(),
                index,
                next_seq,
                free_segments: free,
                live_bytes,
                poisoned: None,
                buf: Vec::new(),
                wbuf: Vec::new(),
                wbuf_at: 0,
                alloc_hint: 0,
                recovered_bytes: bytes,
                pause_hook: None,
                full_at_live_bytes: None,
            },
            stats,
        ))
    }

    /// Install a hook run at every fail point (tests and simulations only).
    #[doc(hidden)]
    pub fn set_pause_hook(&mut self, hook: Option<PauseHook>) {
        self.pause_hook = hook;
    }

    pub fn id(&self) -> u32 {
        self.id
    }
    pub fn token(&self) -> u32 {
        self.token
    }
    pub fn registration(&self) -> Registration {
        self.reg
    }
    /// Operations staged by `append` and not yet published (the cleaner's
    /// relocations are not counted). An observation for tests and the
    /// simulation's model; a caller learns what `append` committed from
    /// its [`Appended`].
    pub fn pending_ops(&self) -> usize {
        self.pending.iter().filter(|p| !p.4).count()
    }
    pub fn recovered_bytes(&self) -> u64 {
        self.recovered_bytes
    }
    pub fn free_segments(&self) -> u32 {
        self.free_segments
    }
    pub fn chain(&self) -> impl Iterator<Item = &ChainSeg> {
        self.chain.iter()
    }
    /// Bytes of live (latest-version) records.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }
    pub fn len(&self) -> usize {
        self.index.len()
    }
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The published value of `key` at time `now_ms` (expired keys are absent).
    pub fn get(&self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        self.index.get(key).filter(|e| e.expire_at_ms == 0 || e.expire_at_ms > now_ms)
    }

    /// Every published key, expired or not.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.index.keys().map(|k| k.as_slice())
    }

    /// Whether we still own the partition on the volume (the per-reply check).
    pub fn check_owner(&self) -> Result<()> {
        self.vol.ensure_ok()?;
        let owner = self.vol.owner(self.id)?;
        if owner.token != self.token || owner.slot != Some(self.reg.slot) {
            return Err(Error::Fenced { partition: self.id, presented: self.token, current: owner.token });
        }
        Ok(())
    }

    fn ensure_usable(&self) -> Result<()> {
        self.vol.ensure_ok()?;
        if self.poisoned.is_some() {
            let current = self.vol.head(self.id).map(|h| h.token).unwrap_or(0);
            return Err(Error::Fenced { partition: self.id, presented: self.token, current });
        }
        Ok(())
    }

    fn fenced(&mut self, why: &str) -> Error {
        // Staged operations stay staged: they were never published, and the
        // poisoned handle will never publish them.
        self.poisoned = Some(why.to_owned());
        let current = self.vol.head(self.id).map(|h| h.token).unwrap_or(0);
        Error::Fenced { partition: self.id, presented: self.token, current }
    }

    /// The last fence check before stores: our token still on the head word.
    fn check_head_token(&mut self) -> Result<()> {
        let head = self.vol.head(self.id)?;
        if head.token != self.token {
            return Err(self.fenced("head token moved"));
        }
        Ok(())
    }

    /// Stage a batch: its records are stored in our own segment, and become
    /// visible together at the next `publish`/`commit`, or never.
    ///
    /// When the partition is short of free segments, `append` first commits
    /// the batches staged before it (to clean safely), so they become durable
    /// and visible before the caller's own `commit`; the returned
    /// [`Appended::committed_earlier`] says so. An error from `append` says
    /// nothing about them, and the caller's next `commit` settles them.
    pub fn append(&mut self, ops: &[Op], now_ms: u64) -> Result<Appended> {
        self.ensure_usable()?;
        let mut appended = Appended { committed_earlier: false };
        if ops.is_empty() {
            return Ok(appended);
        }
        // A fenced writer hears "reservation conflict" before anything else.
        self.check_head_token()?;
        let total: usize = ops.iter().map(Op::encoded_bytes).sum();
        let max = self.vol.geometry().record_bytes_max();
        if total > max {
            return Err(Error::RecordTooLarge { bytes: total, max });
        }
        let needs_segment = self.cur.is_none_or(|c| c.offset as usize + total > self.vol.geometry().segment_bytes as usize);
        if needs_segment && self.free_segments < self.opts.clean_below_free_segments {
            let only_deletes = ops.iter().all(|o| matches!(o, Op::Del { .. }));
            // Once full, stay full (without re-copying the whole partition on
            // every write) until deletes have lowered the live bytes.
            if !only_deletes && self.full_at_live_bytes.is_some_and(|b| self.live_bytes >= b) {
                return Err(self.full_error());
            }
            self.commit()?;
            appended.committed_earlier = true;
            // FIFO cleaning: at most one rotation of the chain per write, so a
            // log that is all live data ends in a verdict, not a loop.
            let mut budget = self.chain.len();
            while self.free_segments < self.opts.clean_below_free_segments && budget > 0 && self.clean_one(now_ms)? {
                budget -= 1;
            }
            // Puts may not take the last free segment: it is the cleaner's
            // (and deletes') way out of a full partition.
            if self.free_segments <= u32::from(!only_deletes) {
                self.full_at_live_bytes = Some(self.live_bytes);
                return Err(self.full_error());
            }
            self.full_at_live_bytes = None;
        }
        self.stage(ops, total, false)?;
        Ok(appended)
    }

    /// "Full", unless we were fenced meanwhile: a fenced writer always hears
    /// RESERVATION CONFLICT, whatever else also went wrong.
    fn full_error(&mut self) -> Error {
        if self.vol.head(self.id).is_ok_and(|h| h.token != self.token) {
            return self.fenced("fenced while out of space");
        }
        let geo = self.vol.geometry();
        Error::PartitionFull {
            partition: self.id,
            live_bytes: self.live_bytes,
            segments: geo.segments_per_partition,
            segment_bytes: geo.segment_bytes,
        }
    }

    fn stage(&mut self, ops: &[Op], total: usize, relocated: bool) -> Result<()> {
        let geo = *self.vol.geometry();
        if self.cur.is_none_or(|c| c.offset as usize + total > geo.segment_bytes as usize) {
            self.switch_segment()?;
        }
        let cur = self.cur.expect("switch_segment sets the cursor");
        self.buf.clear();
        let mut locs = Vec::with_capacity(ops.len());
        for op in ops {
            let at = cur.offset + self.buf.len() as u32;
            let seq = self.next_seq;
            self.next_seq += 1;
            record::encode(op, Stamp { writer_key: self.reg.key, token: self.token, seq }, &mut self.buf);
            locs.push((at, seq));
        }
        self.check_head_token()?;
        let base = geo.segment(self.id, cur.segment) + u64::from(cur.offset);
        if !self.wbuf.is_empty() && self.wbuf_at + self.wbuf.len() as u64 != base {
            self.write_out()?;
        }
        if self.wbuf.is_empty() {
            self.wbuf_at = base;
        }
        self.wbuf.extend_from_slice(&self.buf);
        self.dirty.push((base, self.buf.len() as u64));
        for (op, (at, seq)) in ops.iter().zip(locs) {
            self.pending.push((op.clone(), cur.segment, at, seq, relocated));
        }
        let end = cur.offset + self.buf.len() as u32;
        self.cur = Some(Cursor { segment: cur.segment, offset: end });
        if let Some(last) = self.chain.back_mut() {
            last.end = end;
        }
        Ok(())
    }

    /// Store the held-back record bytes (into our own OPEN segment).
    fn write_out(&mut self) -> Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        failpoint!(self, FAILPOINT_BEFORE_STORES);
        self.vol.write_bulk(self.wbuf_at, &self.wbuf)?;
        self.wbuf.clear();
        Ok(())
    }

    /// Seal the current segment, allocate a fresh one by CAS and write its header.
    fn switch_segment(&mut self) -> Result<()> {
        // Every store into the segment precedes its seal (FORMAT.md, "Fencing").
        self.write_out()?;
        let geo = *self.vol.geometry();
        let region = self.vol.region().clone();
        let (slot, token) = (self.reg.slot, self.token);
        let prev = match self.cur {
            Some(c) => {
                let at = geo.descriptor(self.id, c.segment);
                if region.cas(at, SegState::Open { slot, token }.encode(), SegState::Sealed { slot, token }.encode()).is_err() {
                    return Err(self.fenced("our open segment was sealed by someone else"));
                }
                self.dirty.push((at, 8));
                Some(Pos { segment: c.segment, offset: c.offset })
            }
            None => self.published,
        };
        let n = geo.segments_per_partition as u16;
        let mut found = None;
        for i in 0..n {
            let s = (self.alloc_hint + i) % n;
            let at = geo.descriptor(self.id, s);
            if region.load(at) == 0 && region.cas(at, 0, SegState::Open { slot, token }.encode()).is_ok() {
                found = Some(s);
                break;
            }
        }
        let Some(segment) = found else {
            self.cur = None;
            return Err(self.full_error());
        };
        self.alloc_hint = (segment + 1) % n;
        // The descriptor must be durable before any publication that puts
        // this segment on the chain: `commit` flushes `dirty` first.
        self.dirty.push((geo.descriptor(self.id, segment), 8));
        self.free_segments = self.free_segments.saturating_sub(1);
        // Allocated but fenced in the meantime? Give it back: we will not store.
        if self.vol.head(self.id)?.token != token {
            let _ = region.cas(geo.descriptor(self.id, segment), SegState::Open { slot, token }.encode(), 0);
            return Err(self.fenced("fenced while allocating"));
        }
        let chain_seq = self.chain.back().map_or(1, |c| c.chain_seq + 1);
        let header = encode_header(self.id, segment, &SegHeader { token, writer_key: self.reg.key, chain_seq, prev });
        let base = geo.segment(self.id, segment);
        self.vol.write_bulk(base, &header)?;
        self.dirty.push((base, header.len() as u64));
        self.chain.push_back(ChainSeg { segment, start: SEGMENT_HEADER_BYTES, end: SEGMENT_HEADER_BYTES, chain_seq });
        self.cur = Some(Cursor { segment, offset: SEGMENT_HEADER_BYTES });
        Ok(())
    }

    /// Make staged records visible (one CAS), without waiting for the disk.
    /// Safe against process crashes (the page cache is shared). Against power
    /// loss, either `commit`, or this followed by a full barrier
    /// (`Volume::sync_all`) that starts after it returns: the single-barrier
    /// commit. Its precondition: the head being replaced is durable (every
    /// earlier publication was followed by a completed barrier), because it
    /// becomes the floor recovery falls back to if this publication is torn.
    pub fn publish(&mut self) -> Result<()> {
        self.ensure_usable()?;
        let Some(cur) = self.cur else { return Ok(()) };
        let target = Some(Pos { segment: cur.segment, offset: cur.offset });
        if target == self.published {
            return Ok(());
        }
        self.write_out()?;
        failpoint!(self, FAILPOINT_BEFORE_PUBLISH);
        // The floor first: the head being replaced is durable (the caller's
        // barrier made it so before this publication), so if a power loss
        // tears this publication, recovery falls back to it.
        self.raise_floor()?;
        let at = self.vol.geometry().head_word(self.id);
        let old = LogWord { token: self.token, pos: self.published }.encode();
        let new = LogWord { token: self.token, pos: target }.encode();
        if let Err(actual) = self.vol.region().cas(at, old, new) {
            let actual = LogWord::decode(actual);
            if actual.token == self.token {
                return Err(Error::corrupted("head word", at, format!("moved under our own token to {actual:?}")));
            }
            return Err(self.fenced("publication refused"));
        }
        self.published = target;
        self.head_dirty = true;
        for (op, seg, _at, seq, _) in std::mem::take(&mut self.pending) {
            let bytes = op.encoded_bytes() as u32;
            match op {
                Op::Put { key, value, expire_at_ms } => {
                    if let Some(old) = self.index.insert(key, Entry { value, expire_at_ms, seq, loc: seg, bytes }) {
                        self.live_bytes -= u64::from(old.bytes);
                    }
                    self.live_bytes += u64::from(bytes);
                }
                Op::Del { key } => {
                    if let Some(old) = self.index.remove(&key) {
                        self.live_bytes -= u64::from(old.bytes);
                    }
                }
            }
        }
        Ok(())
    }

    /// CAS the floor word to our published head (which the caller knows to be
    /// durable). True if it changed.
    fn raise_floor(&mut self) -> Result<bool> {
        let at = self.vol.geometry().floor_word(self.id);
        let floor = LogWord { token: self.token, pos: self.published }.encode();
        if floor == self.floor {
            return Ok(false);
        }
        if let Err(actual) = self.vol.region().cas(at, self.floor, floor) {
            if actual != 0 && LogWord::decode(actual).token == self.token {
                return Err(Error::corrupted("floor word", at, format!("moved under our own token to {actual:#x}")));
            }
            return Err(self.fenced("floor moved"));
        }
        self.floor = floor;
        Ok(true)
    }

    /// Group commit: flush every staged byte, publish with one CAS, flush the
    /// head word. When this returns Ok, every staged batch is durable and
    /// visible; on Err none of them is acknowledged.
    pub fn commit(&mut self) -> Result<()> {
        self.ensure_usable()?;
        self.write_out()?;
        if !self.dirty.is_empty() {
            self.dirty.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::new();
            for &(off, len) in &self.dirty {
                match merged.last_mut() {
                    Some((o, l)) if *o + *l >= off => *l = (*l).max(off + len - *o),
                    _ => merged.push((off, len)),
                }
            }
            for (off, len) in merged {
                self.vol.flush(off, len)?;
            }
            self.dirty.clear();
            self.dirty_epoch += 1;
        }
        self.publish()?;
        if self.head_dirty {
            self.vol.flush(self.vol.geometry().head_word(self.id), HT_ENTRY_BYTES)?;
            self.head_dirty = false;
        }
        Ok(())
    }

    /// For callers that pipeline their own barriers: a full barrier
    /// (`Volume::sync_all`) that *started after* every store made so far has
    /// returned, so nothing staged or published needs its own flush. Staged
    /// records may then be published; a publication made before the barrier
    /// is durable.
    pub fn note_synced(&mut self) {
        let mark = self.barrier_started();
        self.barrier_completed(mark);
    }

    /// For callers whose barriers overlap further stores: what a barrier
    /// (`Volume::sync_all`) starting now will cover. Stores made after this
    /// (the next cycle's, while the barrier runs) stay marked unflushed, so a
    /// `commit` meanwhile still flushes them and the ones before.
    pub fn barrier_started(&self) -> SyncMark {
        SyncMark { epoch: self.dirty_epoch, ranges: self.dirty.len(), head: self.head_dirty }
    }

    /// The barrier that started at `mark` returned Ok.
    pub fn barrier_completed(&mut self, mark: SyncMark) {
        // A `commit` since then flushed and cleared everything older.
        if mark.epoch == self.dirty_epoch {
            self.dirty.drain(..mark.ranges.min(self.dirty.len()));
        }
        if mark.head {
            self.head_dirty = false;
        }
    }

    /// Whether `append` staged records not yet published.
    pub fn has_unpublished(&self) -> bool {
        let Some(cur) = self.cur else { return false };
        Some(Pos { segment: cur.segment, offset: cur.offset }) != self.published
    }

    /// Reclaim the oldest segment of the chain: copy its live records to the
    /// head, publish, move the tail past it, free it. Returns false when there
    /// is nothing to clean (the chain is a single segment).
    pub fn clean_one(&mut self, now_ms: u64) -> Result<bool> {
        self.ensure_usable()?;
        if self.chain.len() < 2 || !self.pending.is_empty() {
            return Ok(false);
        }
        let victim = self.chain[0];
        let mut live: Vec<Op> = Vec::new();
        let mut expired: Vec<Vec<u8>> = Vec::new();
        for (k, e) in &self.index {
            if e.loc == victim.segment {
                if e.expire_at_ms != 0 && e.expire_at_ms <= now_ms {
                    expired.push(k.clone());
                } else {
                    live.push(Op::Put { key: k.clone(), value: e.value.clone(), expire_at_ms: e.expire_at_ms });
                }
            }
        }
        // Relocating needs room in the head segment or one more free segment.
        let need: usize = live.iter().map(Op::encoded_bytes).sum();
        let room = self.cur.map_or(0, |c| self.vol.geometry().segment_bytes - c.offset) as usize;
        if need > room && self.free_segments == 0 {
            return Ok(false);
        }
        for op in live {
            let bytes = op.encoded_bytes();
            self.stage(std::slice::from_ref(&op), bytes, true)?;
        }
        self.commit()?;
        if self.chain.front().map(|c| c.segment) != Some(victim.segment) || self.index.values().any(|e| e.loc == victim.segment) {
            return Ok(false); // the chain moved under us (cannot happen single-threaded)
        }
        // Expired records are dropped: older versions are all behind the tail.
        for k in expired {
            if let Some(old) = self.index.remove(&k) {
                self.live_bytes -= u64::from(old.bytes);
            }
        }
        let next = self.chain[1];
        let geo = *self.vol.geometry();
        let entry = geo.partition_entry(self.id);
        let tail_word = self.vol.region().load(entry + PE_TAIL);
        let tail = LogWord::decode(tail_word);
        if tail.token != self.token {
            return Err(self.fenced("tail token moved"));
        }
        // The floor must stay on the live log: raise it to the head (durable:
        // just committed) and make that durable before the tail passes it.
        if self.raise_floor()? {
            self.vol.flush(geo.floor_word(self.id), 8)?;
        }
        let new_tail = LogWord { token: self.token, pos: Some(Pos { segment: next.segment, offset: next.start }) };
        if self.vol.region().cas(entry + PE_TAIL, tail_word, new_tail.encode()).is_err() {
            return Err(self.fenced("tail cut refused"));
        }
        self.vol.flush(entry + PE_TAIL, 8)?;
        self.chain.pop_front();
        // Free it unless a fenced incarnation may still store into it.
        let at = geo.descriptor(self.id, victim.segment);
        let word = self.vol.region().load(at);
        if let SegState::Sealed { .. } = SegState::decode(word, at)?
            && self.vol.region().cas(at, word, 0).is_ok()
        {
            self.free_segments += 1;
            self.vol.flush(at, 8)?;
        }
        Ok(true)
    }

    /// Planned hand-over: commit what is staged, seal our segment, give the
    /// partition up (a new token, no owner). The next owner need not wait.
    pub fn release(mut self) -> Result<()> {
        self.commit()?;
        let geo = *self.vol.geometry();
        if let Some(c) = self.cur {
            let (slot, token) = (self.reg.slot, self.token);
            let at = geo.descriptor(self.id, c.segment);
            let _ = self.vol.region().cas(at, SegState::Open { slot, token }.encode(), SegState::Sealed { slot, token }.encode());
        }
        self.vol.fence_partition(self.id, Some(self.reg.slot))?;
        self.vol.flush(geo.head_word(self.id), HT_ENTRY_BYTES)?;
        self.vol.flush(geo.partition_entry(self.id), geo.partition_entry_bytes)
    }
}
