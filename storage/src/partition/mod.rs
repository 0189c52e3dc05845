//! A claimed partition, made of parts with one concern each:
//!
//! * [`Partition`] (this module): the claim (a new fence token), the public
//!   API, and the glue between the parts;
//! * `writer`: staging, the held-back record bytes, segment allocation and
//!   sealing, the publication CAS;
//! * `recovery`: the claim-time walk of the log ([`recover`], [`read_chain`],
//!   [`replay`]), the torn-commit repair and the garbage sweep;
//! * `cleaner`: reclaiming the oldest segment, and when to;
//! * `durability`: which stores are durable, the barrier marks
//!   ([`SyncMark`]), the floor word;
//! * the key-value index is injected: any [`Index`] (default [`MapIndex`]),
//!   fed through [`Keyspace`] (see [`crate::index`] for why a generic
//!   parameter with a default rather than a trait object).
//!
//! The design rule (FORMAT.md, "Fencing"): a writer stores bytes only into a
//! segment whose descriptor it switched from FREE to OPEN(its slot, its
//! token) by CAS, and a segment stays out of everyone else's reach until that
//! incarnation seals it or is proven dead. Publication is one CAS on the head
//! word, which carries the writer's fence token; a fence raises that token
//! first, so a fenced writer's publication fails, and its late stores land
//! only in space nobody else reads or will reuse.

mod cleaner;
mod durability;
mod recovery;
mod standby;
mod writer;

use std::sync::Arc;

pub use self::durability::{Durability, SyncMark};
pub use self::recovery::{ChainSeg, RecoveredLog, Replayed, TornCommit, read_chain, recover, replay};
pub use self::standby::{Polled, Standby, StandbyStats};
use crate::blob::{self, BlobRef};
pub use crate::index::Entry;
use crate::index::{Index, Keyspace, MapIndex};
use crate::layout::HT_ENTRY_BYTES;
use crate::record::Op;
use crate::volume::{Registration, Volume};
use crate::{Error, Result};

use self::cleaner::Cleaner;
use self::durability::Tracker;
use self::writer::{Staging, Writer};

/// Fail point between the writer's last fence check and its stores of record
/// bytes (which it holds back until it publishes, commits or seals): the
/// window a paused zombie exploits.
pub const FAILPOINT_BEFORE_STORES: &str = "storage::append::before_stores";
/// Fail point after the stores, before the publication CAS.
pub const FAILPOINT_BEFORE_PUBLISH: &str = "storage::commit::before_publish";

/// A test hook run at each fail point, in-process: lets a simulation "pause"
/// a writer there and run other actors before it continues.
pub struct PauseHook(pub Box<dyn FnMut(&'static str) + Send + Sync>);

impl std::fmt::Debug for PauseHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PauseHook")
    }
}

/// Tuning knobs of a claimed partition.
#[derive(Clone, Copy, Debug)]
pub struct PartitionOptions {
    /// Start cleaning when this few segments are free.
    pub clean_below_free_segments: u32,
    /// Whether publications must be durable before the next one (always,
    /// except in benchmarks of the publication path).
    pub durability: Durability,
}

impl Default for PartitionOptions {
    fn default() -> Self {
        PartitionOptions { clean_below_free_segments: 3, durability: Durability::Required }
    }
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
    /// Taken over from a hot standby: `records` and `bytes` are its lag only.
    pub from_standby: bool,
}

/// What `append` did besides staging its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// It first ran a full `commit` (to make room for cleaning): every batch
    /// appended before this call is now published and durable.
    pub committed_earlier: bool,
}

/// Who holds the partition (volume, partition, registration, fence token),
/// and the one-way switch a fence throws: once poisoned, never usable again.
#[derive(Debug)]
struct Holder {
    vol: Arc<Volume>,
    id: u32,
    reg: Registration,
    token: u32,
    poisoned: Option<String>,
    pause_hook: Option<PauseHook>,
}

impl Holder {
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
    /// Fence tokens only rise, so a lower one means the word was damaged.
    fn check_head_token(&mut self) -> Result<()> {
        let head = self.vol.head(self.id)?;
        if head.token < self.token {
            let at = self.vol.geometry().head_word(self.id);
            return Err(Error::corrupted("head word", at, format!("token went back from our {} to {}", self.token, head.token)));
        }
        if head.token != self.token {
            return Err(self.fenced("head token moved"));
        }
        Ok(())
    }

    /// "Full", unless we were fenced meanwhile: a fenced writer always hears
    /// RESERVATION CONFLICT, whatever else also went wrong.
    fn full_error(&mut self, live_bytes: u64) -> Error {
        if self.vol.head(self.id).is_ok_and(|h| h.token != self.token) {
            return self.fenced("fenced while out of space");
        }
        let geo = self.vol.geometry();
        Error::PartitionFull { partition: self.id, live_bytes, segments: geo.segments_per_partition, segment_bytes: geo.segment_bytes }
    }

    fn failpoint(&mut self, name: &'static str) {
        #[cfg(feature = "failpoints")]
        fail::fail_point!(name);
        if let Some(hook) = self.pause_hook.as_mut() {
            (hook.0)(name);
        }
    }
}

/// An exclusively claimed partition: writer, cleaner, durability tracker,
/// and the index `I` of what it published.
#[derive(Debug)]
pub struct Partition<I = MapIndex> {
    holder: Holder,
    writer: Writer,
    durability: Tracker,
    keyspace: Keyspace<I>,
    cleaner: Cleaner,
    recovered_bytes: u64,
    /// Blobs of versions superseded by publication number `.0`: freed once
    /// that publication is durable (before, a torn commit could fall back to
    /// a log whose current version is theirs).
    to_free: Vec<(u64, BlobRef)>,
}

impl Partition {
    /// Take `partition` for `reg`: a new fence token (fencing any previous
    /// owner), then recovery of the published log into an in-memory index.
    pub fn claim(vol: Arc<Volume>, reg: Registration, partition: u32) -> Result<Partition> {
        Partition::claim_with(vol, reg, partition, PartitionOptions::default()).map(|(p, _)| p)
    }

    pub fn claim_with(vol: Arc<Volume>, reg: Registration, partition: u32, opts: PartitionOptions) -> Result<(Partition, RecoveryStats)> {
        Partition::claim_with_index(vol, reg, partition, opts, MapIndex::default())
    }
}

/// The value of the version `e` of `key`, read back from the log: the
/// record must decode (checksum) and be that key's put at that sequence.
pub(crate) fn load_value(vol: &Volume, partition: u32, key: &[u8], e: &Entry) -> Result<Vec<u8>> {
    let at = vol.geometry().log_byte(partition, e.segment(), e.offset());
    let mut buf = vec![0u8; e.record_bytes() as usize];
    vol.region().read(at, &mut buf);
    let r = crate::record::decode(&buf, at)?;
    if r.key != key || r.seq != e.seq || r.kind != e.record_kind() || e.is_hash() {
        return Err(Error::corrupted("record", at, format!("not the put of seq {} the index holds", e.seq)));
    }
    if e.is_large() {
        let blob = crate::blob::BlobRef::decode(r.value, at, crate::blob::payload(vol.geometry()))?;
        return crate::blob::read_value(vol, partition, &blob, at);
    }
    // The value in place: one allocation per read.
    let start = r.value.as_ptr() as usize - buf.as_ptr() as usize;
    let len = r.value.len();
    buf.copy_within(start..start + len, 0);
    buf.truncate(len);
    Ok(buf)
}

/// The value of `field` of the hash at `key` whose current version is `f`,
/// read back from the log: the record must decode and be that field's.
pub(crate) fn load_field(vol: &Volume, partition: u32, key: &[u8], field: &[u8], f: &crate::index::FieldEntry) -> Result<Vec<u8>> {
    let at = vol.geometry().log_byte(partition, f.segment(), f.offset());
    let mut buf = vec![0u8; f.record_bytes() as usize];
    vol.region().read(at, &mut buf);
    let r = crate::record::decode(&buf, at)?;
    let split = crate::record::split_field(r.value).filter(|_| r.kind == crate::layout::REC_KIND_FIELD);
    match split {
        Some((name, value)) if r.key == key && name == field && r.seq == f.seq => Ok(value.to_vec()),
        _ => Err(Error::corrupted("record", at, format!("not the field record of seq {} the index holds", f.seq))),
    }
}

/// Claim steps 1–3 (FORMAT.md, "Publication protocol"): a fresh fence token
/// with our slot in the owner word, raised onto the head and tail words; our
/// registration re-checked (a racing PREEMPT may have missed the claim).
fn take_owner(vol: &Volume, reg: Registration, partition: u32) -> Result<u32> {
    let token = vol.claim_owner(partition, reg.slot)?;
    if !vol.is_registered(reg) {
        vol.fence_partition(partition, Some(reg.slot))?;
        return Err(Error::NotRegistered { key: reg.key });
    }
    let head = vol.head(partition)?;
    if head.token != token {
        return Err(Error::Fenced { partition, presented: token, current: head.token });
    }
    Ok(token)
}

impl<I: Index> Partition<I> {
    /// `claim_with`, recovering into `index` (which is cleared first).
    pub fn claim_with_index(
        vol: Arc<Volume>,
        reg: Registration,
        partition: u32,
        opts: PartitionOptions,
        index: I,
    ) -> Result<(Partition<I>, RecoveryStats)> {
        vol.ensure_ok()?;
        vol.check_partition(partition)?;
        if !vol.is_registered(reg) {
            return Err(Error::NotRegistered { key: reg.key });
        }
        let token = take_owner(&vol, reg, partition)?;
        Partition::recover_claimed(vol, reg, partition, opts, token, index)
    }

    /// Claim steps 4–6, after `take_owner` gave us `token`: the cold path
    /// (the whole live log read into `index`).
    pub(super) fn recover_claimed(
        vol: Arc<Volume>,
        reg: Registration,
        partition: u32,
        opts: PartitionOptions,
        token: u32,
        index: I,
    ) -> Result<(Partition<I>, RecoveryStats)> {
        // 4. Recovery: the head's log, or the floor's if the last commit was torn.
        let mut keyspace = Keyspace::new(index);
        let (log, records) = recovery::rebuild(&vol, partition, token, &mut keyspace)?;
        Partition::finish_claim(vol, reg, partition, opts, token, log, records, keyspace, false)
    }

    /// Claim steps 5–6, once `keyspace` holds the index of `log` (read by
    /// recovery, or followed by a hot standby, `from_standby`), and return
    /// the claimed partition.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_claim(
        vol: Arc<Volume>,
        reg: Registration,
        partition: u32,
        opts: PartitionOptions,
        token: u32,
        log: RecoveredLog,
        records: u64,
        mut keyspace: Keyspace<I>,
        from_standby: bool,
    ) -> Result<(Partition<I>, RecoveryStats)> {
        // 5. One sync: our owner word and raised tokens, a repaired head, and
        //    the log itself — the previous owner publishes before its
        //    barrier, so what the log covers may still be only in the page
        //    cache. Durable before anything is built on it or served; then it
        //    becomes the floor.
        vol.sync_all()?;
        let durability = Tracker::after_claim_sync(&vol, partition, token, log.end, opts.durability)?;
        // 6. Segments: free the garbage a crashed cleaner or a dead owner left
        //    (blobs no current version names among it).
        let blobs: std::collections::HashSet<u16> = keyspace.blob_segments().collect();
        let (free, freed) = recovery::free_garbage(&vol, partition, &log.chain, &blobs)?;
        keyspace.track_released();
        let stats = RecoveryStats {
            records,
            bytes: log.bytes,
            segments: log.chain.len() as u32,
            garbage_segments_freed: freed,
            torn_commit_dropped: log.torn.is_some(),
            from_standby,
        };
        let partition = Partition {
            holder: Holder { vol, id: partition, reg, token, poisoned: None, pause_hook: None },
            writer: Writer::new(log.chain, log.end, log.last_seq + 1, free),
            durability,
            keyspace,
            cleaner: Cleaner::new(opts.clean_below_free_segments),
            recovered_bytes: log.bytes,
            to_free: Vec::new(),
        };
        Ok((partition, stats))
    }

    /// Install a hook run at every fail point (tests and simulations only).
    #[doc(hidden)]
    pub fn set_pause_hook(&mut self, hook: Option<PauseHook>) {
        self.holder.pause_hook = hook;
    }

    pub fn id(&self) -> u32 {
        self.holder.id
    }
    pub fn token(&self) -> u32 {
        self.holder.token
    }
    pub fn registration(&self) -> Registration {
        self.holder.reg
    }
    /// Operations staged by `append` and not yet published (the cleaner's
    /// relocations are not counted). An observation for tests and the
    /// simulation's model; a caller learns what `append` committed from
    /// its [`Appended`].
    pub fn pending_ops(&self) -> usize {
        self.writer.pending_ops()
    }
    /// The sequence number of the last record published: a hot standby
    /// whose [`Standby::last_seq`] reached it has applied everything
    /// published so far (the server's `WAIT`).
    pub fn published_seq(&self) -> u64 {
        self.writer.published_seq()
    }
    pub fn recovered_bytes(&self) -> u64 {
        self.recovered_bytes
    }
    pub fn free_segments(&self) -> u32 {
        self.writer.free_segments
    }
    pub fn chain(&self) -> impl Iterator<Item = &ChainSeg> {
        self.writer.chain.iter()
    }
    /// Bytes of live (latest-version) records.
    pub fn live_bytes(&self) -> u64 {
        self.keyspace.live_bytes()
    }
    pub fn len(&self) -> usize {
        self.keyspace.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keyspace.is_empty()
    }
    /// The index of what this partition published.
    pub fn keyspace(&self) -> &Keyspace<I> {
        &self.keyspace
    }

    /// The published version of `key` at time `now_ms` (expired keys are
    /// absent): where it is, its expiry; [`Partition::value`] reads it.
    pub fn get(&self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        self.keyspace.get(key, now_ms)
    }

    /// The published value of `key` at time `now_ms`, read back from the log
    /// with its checksum. Published bytes never change while they are on the
    /// chain, so a record that does not check out means something broke the
    /// fencing rules or the medium: the volume handle is poisoned (every
    /// later operation, and the validation of the read that saw it, fails)
    /// and None is returned.
    pub fn value(&self, key: &[u8], now_ms: u64) -> Option<Vec<u8>> {
        self.value_and_expiry(key, now_ms).map(|(v, _)| v)
    }

    /// [`Partition::value`] with the version's expiry (unix ms, 0 = never).
    pub fn value_and_expiry(&self, key: &[u8], now_ms: u64) -> Option<(Vec<u8>, u64)> {
        self.read_value(key, now_ms, false)
    }

    /// [`Partition::value_and_expiry`], the key's access time set to
    /// `now_ms` (a client read it: `OBJECT IDLETIME`).
    pub fn value_accessed(&self, key: &[u8], now_ms: u64) -> Option<(Vec<u8>, u64)> {
        self.read_value(key, now_ms, true)
    }

    fn read_value(&self, key: &[u8], now_ms: u64, access: bool) -> Option<(Vec<u8>, u64)> {
        let e = self.keyspace.get(key, now_ms).filter(|e| !e.is_hash())?;
        if access {
            e.touched.touch(now_ms);
        }
        let v = self.checked(load_value(&self.holder.vol, self.holder.id, key, e))?;
        Some((v, e.expire_at_ms))
    }

    /// A value read back from the log, or None with the volume poisoned if
    /// its record did not check out (see [`Partition::value`]).
    fn checked<T>(&self, read: Result<T>) -> Option<T> {
        match read {
            Ok(v) => Some(v),
            Err(err) => {
                self.holder.vol.poison(&format!("partition {}: a published record does not check out: {err}", self.holder.id));
                None
            }
        }
    }

    /// The published value of `field` of the hash at `key` at `now_ms`
    /// (None: no such hash or field), read back as [`Partition::value`] is.
    /// `access`: the key's access time is set (a client read it).
    pub fn field_value(&self, key: &[u8], field: &[u8], now_ms: u64, access: bool) -> Option<Vec<u8>> {
        let fields = self.keyspace.fields(key, now_ms)?;
        if access && let Some(e) = self.keyspace.get(key, now_ms) {
            e.touched.touch(now_ms);
        }
        let f = fields.get(field)?;
        self.checked(load_field(&self.holder.vol, self.holder.id, key, field, f))
    }

    /// Every field of the hash at `key` with its value, in the index's order.
    pub fn field_values(&self, key: &[u8], now_ms: u64) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let fields = self.keyspace.fields(key, now_ms)?;
        let mut out = Vec::with_capacity(fields.len());
        for (name, f) in fields {
            out.push((name.to_vec(), self.checked(load_field(&self.holder.vol, self.holder.id, key, name, f))?));
        }
        Some(out)
    }

    /// Every published key, expired or not.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.keyspace.keys()
    }

    /// Whether we still own the partition on the volume (the per-reply check).
    pub fn check_owner(&self) -> Result<()> {
        let h = &self.holder;
        h.vol.ensure_ok()?;
        let owner = h.vol.owner(h.id)?;
        if owner.token != h.token || owner.slot != Some(h.reg.slot) {
            return Err(Error::Fenced { partition: h.id, presented: h.token, current: owner.token });
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
        self.holder.ensure_usable()?;
        if ops.is_empty() {
            return Ok(Appended { committed_earlier: false });
        }
        // A fenced writer hears "reservation conflict" before anything else.
        self.holder.check_head_token()?;
        let geo = *self.holder.vol.geometry();
        // A put of a large value is a blob of its own segments and a record
        // holding its reference (FORMAT.md, "Large values").
        let large = |op: &Op| match op {
            Op::Put { value, .. } if blob::is_large(&geo, value.len()) => Some(blob::segments_for(&geo, value.len())),
            _ => None,
        };
        // Every record must fit a segment; a batch may fill several.
        let (mut total, mut blob_segments) = (0usize, 0usize);
        let max = geo.record_bytes_max();
        for op in ops {
            let bytes = match (large(op), op) {
                (Some(n), Op::Put { key, .. }) => {
                    blob_segments += n;
                    crate::layout::record_bytes(key.len(), blob::ref_bytes(n))
                }
                _ => op.encoded_bytes(),
            };
            if bytes > max {
                return Err(Error::RecordTooLarge { bytes, max });
            }
            total += bytes;
        }
        let committed_earlier = self.make_room(ops, total, blob_segments as u32, now_ms)?;
        if blob_segments == 0 {
            self.stage(ops, total, false)?;
            return Ok(Appended { committed_earlier });
        }
        // The blobs first, each named by the seq its record will get.
        let first_seq = self.writer.next_seq();
        let mut staged = Vec::with_capacity(ops.len());
        let mut written: Vec<BlobRef> = Vec::new();
        for (op, seq) in ops.iter().zip(first_seq..) {
            let (Some(_), Op::Put { key, value, expire_at_ms }) = (large(op), op) else {
                staged.push(op.clone());
                continue;
            };
            let blob = match self.writer.write_blob(&mut self.holder, &mut self.durability, value, seq) {
                Ok(Some(blob)) => blob,
                failed => {
                    for b in &written {
                        self.writer.free_blob(&mut self.holder, &b.segments);
                    }
                    failed?;
                    return Err(self.full_error());
                }
            };
            staged.push(Op::PutLarge { key: key.clone(), blob: blob.encode(), expire_at_ms: *expire_at_ms });
            written.push(blob);
        }
        debug_assert_eq!(self.writer.next_seq(), first_seq, "the blobs took no sequence numbers");
        if let Err(e) = self.stage(&staged, total, false) {
            if self.holder.poisoned.is_none() {
                for b in &written {
                    self.writer.free_blob(&mut self.holder, &b.segments);
                }
            }
            return Err(e);
        }
        Ok(Appended { committed_earlier })
    }

    /// Free the blobs whose superseding publication is durable now.
    fn free_released(&mut self) {
        let durable = self.durability.durable_publications();
        let n = self.to_free.iter().take_while(|(at, _)| *at <= durable).count();
        if n == 0 || self.holder.poisoned.is_some() {
            return;
        }
        for (_, b) in self.to_free.drain(..n).collect::<Vec<_>>() {
            self.writer.free_blob(&mut self.holder, &b.segments);
        }
    }

    fn stage(&mut self, ops: &[Op], total: usize, relocated: bool) -> Result<()> {
        match self.writer.stage(&mut self.holder, &mut self.durability, ops, total, relocated)? {
            Staging::Staged => Ok(()),
            Staging::NoFreeSegment => Err(self.full_error()),
        }
    }

    fn full_error(&mut self) -> Error {
        self.holder.full_error(self.keyspace.live_bytes())
    }

    /// Make staged records visible (one CAS), without waiting for the disk.
    /// Safe against process crashes (the page cache is shared). Against power
    /// loss, either `commit`, or this followed by a full barrier
    /// (`Volume::sync_all`) that starts after it returns: the single-barrier
    /// commit. Its precondition, asserted: the head being replaced is durable
    /// (every earlier publication was followed by a completed barrier),
    /// because it becomes the floor recovery falls back to if this
    /// publication is torn. A partition claimed with
    /// [`Durability::OffForBenchmarks`] is exempt.
    pub fn publish(&mut self) -> Result<()> {
        self.holder.ensure_usable()?;
        for s in self.writer.publish(&mut self.holder, &mut self.durability)? {
            self.keyspace.apply_op(s.op, s.seq, s.segment, s.offset);
        }
        let publication = self.durability.publications();
        self.to_free.extend(self.keyspace.take_released().into_iter().map(|b| (publication, b)));
        Ok(())
    }

    /// Group commit: flush every staged byte, publish with one CAS, flush the
    /// head word. When this returns Ok, every staged batch is durable and
    /// visible; on Err none of them is acknowledged.
    pub fn commit(&mut self) -> Result<()> {
        self.holder.ensure_usable()?;
        self.writer.write_out(&mut self.holder)?;
        self.durability.flush_stores(&self.holder.vol)?;
        self.publish()?;
        self.durability.flush_head(&self.holder.vol, self.holder.id)?;
        self.free_released();
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
        self.durability.barrier_started()
    }

    /// The barrier that started at `mark` returned Ok.
    pub fn barrier_completed(&mut self, mark: SyncMark) {
        self.durability.barrier_completed(mark);
        self.free_released();
    }

    /// Whether `append` staged records not yet published.
    pub fn has_unpublished(&self) -> bool {
        self.writer.has_unpublished()
    }

    /// Planned hand-over: commit what is staged, seal our segment, give the
    /// partition up (a new token, no owner). The next owner need not wait.
    pub fn release(self) -> Result<()> {
        self.release_keeping_index().map(drop)
    }

    /// `release`, handing the index back instead of freeing it: freeing an
    /// index of many keys takes milliseconds per 100,000 of them (one free
    /// per key), which a hand-over should not wait for. The caller frees it
    /// where that costs nobody.
    pub fn release_keeping_index(mut self) -> Result<Keyspace<I>> {
        self.commit()?;
        self.writer.seal_for_release(&self.holder);
        let (vol, id) = (&self.holder.vol, self.holder.id);
        vol.fence_partition(id, Some(self.holder.reg.slot))?;
        vol.flush(vol.geometry().head_word(id), HT_ENTRY_BYTES)?;
        vol.flush(vol.geometry().partition_entry(id), vol.geometry().partition_entry_bytes)?;
        Ok(self.keyspace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{LogWord, SegState};
    use crate::{CreateOptions, ProcessIdentity};

    fn put(k: &str, bytes: usize) -> Op {
        Op::Put { key: k.as_bytes().to_vec(), value: vec![b'v'; bytes].into(), expire_at_ms: 0 }
    }

    /// Every FREE descriptor of partition 0 taken by `slot` (as a fenced
    /// zombie's allocation holds one until it sees the fence and gives it
    /// back), or given back.
    fn hold_free_segments(vol: &Volume, slot: u8, hold: bool) {
        let geo = *vol.geometry();
        let held = SegState::Open { slot, token: 1 }.encode();
        for s in 0..geo.segments_per_partition as u16 {
            let at = geo.descriptor(0, s);
            let _ = if hold { vol.region().cas(at, 0, held) } else { vol.region().cas(at, held, 0) };
        }
    }

    /// A batch that needs a new segment when none is actually free (our
    /// count says otherwise: another incarnation holds them for a moment)
    /// fails with "full" after the current segment was sealed. The batches
    /// staged before it are in that segment: they must still publish with
    /// the next commit, and stay on the log.
    #[test]
    fn batches_staged_before_a_failed_allocation_still_commit() {
        let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(4 << 20, 1) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let a = vol.register(1, ProcessIdentity::default()).unwrap();
        let zombie = vol.register(2, ProcessIdentity::default()).unwrap();
        let mut p = Partition::claim(vol.clone(), a, 0).unwrap();
        p.append(&[put("a", 3000)], 0).unwrap();
        p.commit().unwrap();
        p.append(&[put("b", 3000)], 0).unwrap(); // same segment, staged
        hold_free_segments(&vol, zombie.slot, true);
        assert!(matches!(p.append(&[put("c", 3000)], 0), Err(Error::PartitionFull { .. })));
        hold_free_segments(&vol, zombie.slot, false);
        p.commit().unwrap();
        assert!(p.get(b"b", 0).is_some(), "a committed batch is not visible");
        p.append(&[put("d", 3000)], 0).unwrap();
        p.commit().unwrap();
        let problems = crate::check::check(&vol);
        assert!(problems.is_empty(), "{problems:?}");
        drop(p);
        let b = vol.register(3, ProcessIdentity::default()).unwrap();
        let q = Partition::claim(vol.clone(), b, 0).unwrap();
        for k in ["a", "b", "d"] {
            assert!(q.get(k.as_bytes(), 0).is_some(), "committed key {k} lost");
        }
        assert!(q.get(b"c", 0).is_none());
    }

    /// The cleaner's relocation of a record is no access: the key keeps
    /// its access time (OBJECT IDLETIME) however often its record moves.
    #[test]
    fn a_relocated_version_keeps_its_access_time() {
        let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(1 << 20, 1) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let mut p = Partition::claim(vol.clone(), vol.register(1, ProcessIdentity::default()).unwrap(), 0).unwrap();
        p.append(&[put("old", 10)], 0).unwrap();
        p.commit().unwrap();
        p.get(b"old", 0).unwrap().touched.set_secs(1000);
        let first = (p.get(b"old", 0).unwrap().segment(), p.get(b"old", 0).unwrap().offset());
        for i in 0..3000 {
            p.append(&[put(&format!("churn{}", i % 20), 900)], 0).unwrap();
            p.commit().unwrap();
        }
        let e = p.get(b"old", 0).unwrap();
        assert_ne!((e.segment(), e.offset()), first, "the cleaner never moved the record");
        assert_eq!(e.touched.secs(), 1000, "a relocation counted as an access");
        // A read that counts as one does.
        p.value_accessed(b"old", 5_000_000).unwrap();
        assert_eq!(p.get(b"old", 0).unwrap().touched.secs(), 5000);
    }

    /// A clear (FLUSHALL) is one record: the keys before it are gone from
    /// the owner at once, gone for the next owner that replays the log, and
    /// the segments they fill are reclaimed without copying a byte of them.
    #[test]
    fn a_clear_survives_a_new_claim_and_leaves_the_old_log_to_the_cleaner() {
        let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(4 << 20, 1) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let [a, b] = [1, 2].map(|key| vol.register(key, ProcessIdentity::default()).unwrap());
        let mut p = Partition::claim(vol.clone(), a, 0).unwrap();
        for i in 0..40 {
            p.append(&[put(&format!("k{i}"), 1000)], 0).unwrap();
        }
        p.commit().unwrap();
        let segments_before = p.chain().count();
        assert!(segments_before > 3);
        let head_before = vol.region().load(vol.geometry().head_word(0));
        p.append(&[Op::Clear], 0).unwrap();
        p.append(&[put("after", 10)], 0).unwrap();
        p.commit().unwrap();
        assert_eq!((p.len(), p.live_bytes()), (1, Op::encoded_bytes(&put("after", 10)) as u64));
        assert!(p.get(b"k0", 0).is_none());
        let head = LogWord::decode(vol.region().load(vol.geometry().head_word(0))).pos.unwrap();
        let before = LogWord::decode(head_before).pos.unwrap();
        assert_eq!(
            u64::from(head.offset - before.offset),
            (Op::Clear.encoded_bytes() + put("after", 10).encoded_bytes()) as u64,
            "a clear wrote more than one record"
        );
        drop(p);
        let mut q = Partition::claim(vol.clone(), b, 0).unwrap();
        assert_eq!(q.len(), 1, "a cleared key came back after a new claim");
        assert_eq!(q.value(b"after", 0), Some(vec![b'v'; 10]));
        // Every segment before the clear's goes without relocating anything.
        while q.chain().count() > 1 {
            assert!(q.clean_one(0).unwrap());
        }
        assert_eq!(q.value(b"after", 0), Some(vec![b'v'; 10]));
        let problems = crate::check::check(&vol);
        assert!(problems.is_empty(), "{problems:?}");
    }

    fn big(seed: u8, bytes: usize) -> Vec<u8> {
        (0..bytes).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn large_put(k: &str, value: Vec<u8>) -> Op {
        Op::Put { key: k.as_bytes().to_vec(), value: value.into(), expire_at_ms: 0 }
    }

    /// Free descriptors of partition 0, counted on the volume.
    fn free_on_volume(vol: &Volume) -> u32 {
        (0..vol.geometry().segments_per_partition as u16).filter(|&s| vol.descriptor(0, s).is_ok_and(|d| d == SegState::Free)).count()
            as u32
    }

    /// A value larger than a segment is a blob of its own segments: read
    /// back whole, untouched by the cleaner (which relocates only its
    /// reference, however often the chain rotates), freed when an overwrite
    /// or a delete is durable, and found by the next owner.
    #[test]
    fn a_large_value_lives_in_a_blob_the_cleaner_never_copies() {
        let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(4 << 20, 1) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let [a, b] = [1, 2].map(|key| vol.register(key, ProcessIdentity::default()).unwrap());
        let mut p = Partition::claim(vol.clone(), a, 0).unwrap();
        let v1 = big(1, 60_000);
        p.append(&[large_put("big", v1.clone()), put("small", 10)], 0).unwrap();
        p.commit().unwrap();
        assert_eq!(p.value(b"big", 0), Some(v1.clone()));
        let blob = p.keyspace().blob(b"big").cloned().expect("stored as a blob");
        assert_eq!(blob.segments.len(), 60_000usize.div_ceil(8192 - 64));
        assert_eq!(p.free_segments(), free_on_volume(&vol));
        // Churn small keys until the chain has rotated past the reference many times.
        let first_tail = p.chain().next().unwrap().segment;
        let mut rotations = 0;
        for i in 0..20_000 {
            p.append(&[put(&format!("churn{}", i % 50), 900)], 0).unwrap();
            p.commit().unwrap();
            if p.chain().next().unwrap().segment != first_tail {
                rotations += 1;
            }
        }
        assert!(rotations > 1000, "the cleaner never ran ({rotations})");
        assert_eq!(p.keyspace().blob(b"big"), Some(&blob), "the cleaner moved the blob");
        assert_eq!(p.value(b"big", 0), Some(v1.clone()));
        assert_eq!(p.free_segments(), free_on_volume(&vol));
        assert!(crate::check::check(&vol).is_empty(), "{:?}", crate::check::check(&vol));
        // An overwrite frees the old blob once durable; so does a delete.
        let v2 = big(2, 20_000);
        p.append(&[large_put("big", v2.clone())], 0).unwrap();
        p.commit().unwrap();
        assert!(blob.segments.iter().all(|&s| vol.descriptor(0, s).is_ok_and(|d| d == SegState::Free)), "the superseded blob was kept");
        assert_eq!(p.free_segments(), free_on_volume(&vol));
        drop(p);
        let mut q = Partition::claim(vol.clone(), b, 0).unwrap();
        assert_eq!(q.value(b"big", 0), Some(v2));
        let blob2 = q.keyspace().blob(b"big").cloned().unwrap();
        q.append(&[Op::Del { key: b"big".to_vec() }], 0).unwrap();
        q.commit().unwrap();
        assert!(blob2.segments.iter().all(|&s| vol.descriptor(0, s).is_ok_and(|d| d == SegState::Free)));
        assert_eq!(q.free_segments(), free_on_volume(&vol));
        assert!(crate::check::check(&vol).is_empty(), "{:?}", crate::check::check(&vol));
    }

    /// A blob whose put never published (staged, then the writer died) is
    /// named by nothing: the next claim frees it; one that did publish is
    /// kept. A clear releases every blob.
    #[test]
    fn blobs_named_by_nothing_are_freed_and_a_clear_releases_them_all() {
        let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(4 << 20, 1) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let [a, b] = [1, 2].map(|key| vol.register(key, ProcessIdentity::default()).unwrap());
        let mut p = Partition::claim(vol.clone(), a, 0).unwrap();
        p.append(&[large_put("kept", big(3, 30_000))], 0).unwrap();
        p.commit().unwrap();
        p.append(&[large_put("lost", big(4, 30_000))], 0).unwrap(); // never published
        drop(p);
        let (mut q, stats) = Partition::claim_with(vol.clone(), b, 0, PartitionOptions::default()).unwrap();
        assert!(stats.garbage_segments_freed >= 4, "{stats:?}");
        assert_eq!(q.value(b"kept", 0), Some(big(3, 30_000)));
        assert!(q.get(b"lost", 0).is_none());
        assert_eq!(q.free_segments(), free_on_volume(&vol));
        q.append(&[large_put("more", big(5, 30_000))], 0).unwrap();
        q.append(&[Op::Clear], 0).unwrap();
        q.commit().unwrap();
        assert_eq!(q.keyspace().blob_stats(), (0, 0));
        assert_eq!(free_on_volume(&vol) + q.chain().count() as u32, vol.geometry().segments_per_partition);
        assert!(crate::check::check(&vol).is_empty(), "{:?}", crate::check::check(&vol));
    }

    /// The single-barrier commit publishes before its barrier: a power loss
    /// may leave the head on the disk and a blob not. The blob of a large put
    /// past the floor is read back at the claim, and a bad one drops that
    /// (never acknowledged) commit like any torn record.
    #[test]
    fn a_torn_blob_drops_its_unacknowledged_commit() {
        let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(4 << 20, 1) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let [a, b] = [1, 2].map(|key| vol.register(key, ProcessIdentity::default()).unwrap());
        let mut p = Partition::claim(vol.clone(), a, 0).unwrap();
        p.append(&[large_put("k", big(6, 25_000))], 0).unwrap();
        p.commit().unwrap();
        p.append(&[large_put("k", big(7, 25_000)), put("other", 5)], 0).unwrap();
        p.publish().unwrap(); // no barrier: not acknowledged
        let torn = p.keyspace().blob(b"k").cloned().unwrap();
        let at = vol.geometry().segment(0, torn.segments[1]) + 64 + 100;
        vol.write_bulk(at, &[0xee; 8]).unwrap();
        drop(p);
        let (q, stats) = Partition::claim_with(vol.clone(), b, 0, PartitionOptions::default()).unwrap();
        assert!(stats.torn_commit_dropped, "{stats:?}");
        assert_eq!(q.value(b"k", 0), Some(big(6, 25_000)));
        assert!(q.get(b"other", 0).is_none(), "half of a torn commit survived");
        assert!(crate::check::check(&vol).is_empty(), "{:?}", crate::check::check(&vol));
    }

    /// A value bigger than the partition could ever hold is refused at once
    /// with "full", and takes nothing; one that fits only after cleaning
    /// gets it.
    #[test]
    fn a_blob_larger_than_the_partition_is_full_and_leaks_nothing() {
        let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(1448 << 10, 1) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let a = vol.register(1, ProcessIdentity::default()).unwrap();
        let mut p = Partition::claim(vol.clone(), a, 0).unwrap();
        let free = free_on_volume(&vol);
        let e = p.append(&[large_put("huge", big(8, 8192 * 400))], 0).unwrap_err();
        assert!(matches!(e, Error::PartitionFull { .. }), "{e}");
        assert_eq!((free_on_volume(&vol), p.free_segments()), (free, free));
        for i in 0..200 {
            p.append(&[put(&format!("k{}", i % 5), 3000)], 0).unwrap();
            p.commit().unwrap();
        }
        let most = (p.free_segments() as usize - 8) * (8192 - 64) + (8192 - 64) * 20;
        p.append(&[large_put("fits", big(9, most))], 0).unwrap();
        p.commit().unwrap();
        assert_eq!(p.value(b"fits", 0), Some(big(9, most)));
        assert_eq!(p.free_segments(), free_on_volume(&vol));
        assert!(crate::check::check(&vol).is_empty(), "{:?}", crate::check::check(&vol));
    }

    /// A batch larger than a segment fills several and is published whole:
    /// all of it after the commit, none of it before, and all of it after a
    /// new claim replays the log.
    #[test]
    fn a_batch_larger_than_a_segment_spans_segments_atomically() {
        let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(4 << 20, 1) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let [a, b] = [1, 2].map(|key| vol.register(key, ProcessIdentity::default()).unwrap());
        let mut p = Partition::claim(vol.clone(), a, 0).unwrap();
        p.append(&[put("before", 100)], 0).unwrap();
        let batch: Vec<Op> = (0..200).map(|i| put(&format!("m{i}"), 300)).collect();
        let bytes: usize = batch.iter().map(Op::encoded_bytes).sum();
        assert!(bytes > 6 * 8192, "the batch must need several segments ({bytes})");
        p.append(&batch, 0).unwrap();
        assert!(p.get(b"m0", 0).is_none() && p.get(b"m199", 0).is_none(), "visible before its publication");
        p.commit().unwrap();
        assert!(p.chain().count() >= 7);
        for i in 0..200 {
            assert_eq!(p.value(format!("m{i}").as_bytes(), 0), Some(vec![b'v'; 300]), "m{i}");
        }
        drop(p);
        let q = Partition::claim(vol.clone(), b, 0).unwrap();
        assert_eq!(q.len(), 201);
        assert!(crate::check::check(&vol).is_empty(), "{:?}", crate::check::check(&vol));
    }

    /// A spanning batch whose segments run out halfway is taken back whole:
    /// its segments are free again, the batches staged before it still
    /// publish with the next commit, and nothing of it is ever visible, to
    /// this owner or the next.
    #[test]
    fn a_spanning_batch_that_runs_out_of_segments_is_taken_back_whole() {
        let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(4 << 20, 1) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let [a, zombie, b] = [1, 2, 3].map(|key| vol.register(key, ProcessIdentity::default()).unwrap());
        let mut p = Partition::claim(vol.clone(), a, 0).unwrap();
        p.append(&[put("a", 3000)], 0).unwrap();
        p.commit().unwrap();
        p.append(&[put("b", 3000)], 0).unwrap(); // staged, same segment
        // Leave exactly two free segments: the batch needs more.
        let geo = *vol.geometry();
        let held = SegState::Open { slot: zombie.slot, token: 1 }.encode();
        let mut taken = Vec::new();
        for s in 0..geo.segments_per_partition as u16 {
            if free_on_volume(&vol) <= 2 {
                break;
            }
            if vol.region().cas(geo.descriptor(0, s), 0, held).is_ok() {
                taken.push(s);
            }
        }
        let batch: Vec<Op> = (0..100).map(|i| put(&format!("m{i}"), 400)).collect();
        let e = p.append(&batch, 0).unwrap_err();
        assert!(matches!(e, Error::PartitionFull { .. }), "{e}");
        assert_eq!(free_on_volume(&vol), 2, "the taken-back batch kept segments");
        assert_eq!(p.pending_ops(), 1, "only the batch before it is still staged");
        p.commit().unwrap();
        assert!(p.get(b"b", 0).is_some(), "the batch staged before was lost");
        assert!(p.get(b"m0", 0).is_none() && p.get(b"m99", 0).is_none(), "part of a taken-back batch published");
        for s in taken {
            vol.region().cas(geo.descriptor(0, s), held, 0).unwrap();
        }
        p.append(&[put("after", 10)], 0).unwrap();
        p.append(&batch, 0).unwrap();
        p.commit().unwrap();
        assert_eq!(p.len(), 103);
        drop(p);
        let q = Partition::claim(vol.clone(), b, 0).unwrap();
        assert_eq!(q.len(), 103);
        assert_eq!(q.value(b"m99", 0), Some(vec![b'v'; 400]));
        assert!(crate::check::check(&vol).is_empty(), "{:?}", crate::check::check(&vol));
    }

    /// A zombie (fenced owner) whose batch was staged before the fence
    /// stores it late; then a third owner recovers. Which of the zombie's
    /// and the new owner's records does it find?
    #[cfg(feature = "mutants")]
    fn a_zombie_stores_late(new_owner_reuses_old_segment: bool) -> (bool, bool) {
        let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(4 << 20, 1) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let [a, b, c] = [1, 2, 3].map(|key| vol.register(key, ProcessIdentity::default()).unwrap());
        let mut zombie = Partition::claim(vol.clone(), a, 0).unwrap();
        zombie.append(&[put("x", 100)], 0).unwrap();
        zombie.commit().unwrap();
        zombie.append(&[put("zz", 100)], 0).unwrap(); // staged, its bytes held back
        crate::mutant::set_new_owner_reuses_old_segment(new_owner_reuses_old_segment);
        let mut owner = Partition::claim(vol.clone(), b, 0).unwrap();
        owner.append(&[put("yy", 100)], 0).unwrap(); // as long as the zombie's record
        owner.commit().unwrap();
        crate::mutant::set_new_owner_reuses_old_segment(false);
        assert!(zombie.commit().is_err(), "a fenced writer published");
        drop(owner);
        let next = Partition::claim(vol.clone(), c, 0).unwrap();
        (next.get(b"yy", 0).is_some(), next.get(b"zz", 0).is_some())
    }

    /// The mutant does what it says, and only when switched on: the
    /// zombie's late store replaces the new owner's committed record.
    #[cfg(feature = "mutants")]
    #[test]
    fn the_segment_reuse_mutant_lets_a_zombie_clobber_a_committed_record() {
        assert_eq!(a_zombie_stores_late(false), (true, false), "the real build");
        assert_eq!(a_zombie_stores_late(true), (false, true), "the mutant");
    }
}
