//! The engine's core: which requests run, what is published, when a barrier
//! starts, and which answers may go out — with no thread, channel or clock
//! of its own. The shell (`engine::run`) moves messages in, runs the barrier
//! (one volume sync) on its own thread, and sends the answers the core hands
//! out; a simulation drives the same core step by step.
//!
//! A request's life, in cycles:
//!
//! ```text
//!  submit ──execute──> Executed::Read ───────────────────────────┐
//!                │                                               │ validate after read
//!                ├───> Executed::Staged ──publish──> Published{b}│──barrier b done──> answer
//!                │          (append)        (floor+head CAS)     │
//!                └───> Executed::Refused (failed before staging) ┴──────────────────> answer
//! ```
//!
//! The core's contract, each rule written once:
//! * **nothing is answered before the barrier that covers it**: a request
//!   with writes is acknowledged only once its publication succeeded and a
//!   completed barrier covers it ([`Core::answer`], asserted in release
//!   builds too);
//! * **a read is answered only if validated after it was computed**: the
//!   lease still valid and the owner word still ours ([`ServedPartition::validated`],
//!   which the connections' read fast path calls too);
//! * nothing executes without a valid lease ([`Core::execute`]);
//! * a head is replaced only once durable: a cycle publishes only when the
//!   previous cycle's barrier has completed ([`Core::publish`] asserts it).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use sharedisk_storage::{Error as StorageError, Op, Partition, SyncMark};

use super::watch::{Watch, WatchTable, Watched};
use crate::commands::{self, Overlay, Published, Txn, Value};
use crate::resp::Reply;

/// What a connection asks of a partition.
#[derive(Clone, Debug)]
pub enum Request {
    /// One data command (`multi: false`) or a MULTI block, executed atomically.
    Exec { cmds: Vec<commands::Command>, multi: bool },
    /// Live keys in the partition (in `slot` only, if given).
    Count { slot: Option<u16> },
    /// Keys of the partition's index and how many of them carry an expiry
    /// (`INFO keyspace`, as Redis counts them: expired keys not reclaimed
    /// yet included): `[keys, expires]`.
    KeyStats,
    /// The live keys of the partition in `slot` (if given) that match the
    /// glob `pattern` (if given), at most `limit` of them (`KEYS`,
    /// `CLUSTER GETKEYSINSLOT`). Published keys only, like every read.
    Keys { slot: Option<u16>, pattern: Option<bytes::Bytes>, limit: usize },
    /// Delete every key of the partition (`FLUSHALL`, `FLUSHDB`): one
    /// record, durable like any write, answered `+OK`.
    Flush,
    /// One step of `SCAN` in this partition: live keys whose [`scan_hash`]
    /// is at least `from`, the `count` smallest (or more, see
    /// [`scan_keys`]), those matching `pattern` and of type `kind` answered
    /// with where the next step starts (`[next or -1, [keys…]]`).
    Scan { from: u64, count: usize, pattern: Option<bytes::Bytes>, kind: Option<bytes::Bytes> },
    /// `WATCH keys…` (one slot): register them with the connection's watch,
    /// answered `+OK` once the cycle is published.
    Watch { keys: Vec<bytes::Bytes>, watch: Arc<Watch> },
    /// The EXEC of a MULTI under WATCH: the commands (maybe none, if only
    /// connection commands were queued) run as one transaction unless the
    /// watch is broken, which answers a null array.
    Checked { cmds: Vec<commands::Command>, watch: Arc<Watch> },
}

/// How a request ends.
#[derive(Debug)]
pub enum Outcome {
    Reply(Reply),
    /// Not answered here (the partition is going or gone): route it again.
    Reroute,
}

/// A request for a partition, with the handle its answer goes to.
#[derive(Debug)]
pub struct Job<R> {
    pub partition: u32,
    pub request: Request,
    pub reply: R,
}

/// A served partition, shared between the engine (which writes) and the
/// connections' read fast path (which reads the published index).
#[derive(Debug)]
pub struct ServedPartition {
    pub id: u32,
    /// `None` once the engine released it.
    part: RwLock<Option<Partition>>,
    /// The barrier count after which everything published so far is durable:
    /// a read of the index may be answered only once the barriers reach it.
    durable_after: AtomicU64,
}

impl ServedPartition {
    pub fn new(part: Partition) -> ServedPartition {
        ServedPartition { id: part.id(), part: RwLock::new(Some(part)), durable_after: AtomicU64::new(0) }
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Option<Partition>> {
        self.part.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Option<Partition>> {
        self.part.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The barrier count a read of the index as it is now must wait for.
    pub fn durable_after(&self) -> u64 {
        self.durable_after.load(Ordering::Acquire)
    }

    /// Readers that see the index from now on must wait for barrier `n`.
    /// Set before the index changes, under its write lock.
    pub(crate) fn set_durable_after(&self, n: u64) {
        self.durable_after.store(n, Ordering::Release);
    }

    /// Validate after read: a reply computed from this partition may go out
    /// only if, now that it is computed, our lease is still valid and the
    /// owner word on the volume still names us. A new owner publishes only
    /// after the fence changed that word, so a read that passes is
    /// linearized before any of its writes. The one copy of this rule: the
    /// engine and the connections' fast path both call it.
    pub fn validated(&self, lease_valid: bool) -> bool {
        #[cfg(test)]
        if crate::mutant::is(crate::mutant::Mutant::NoReadValidation) {
            return lease_valid;
        }
        lease_valid && self.read().as_ref().is_some_and(|p| p.check_owner().is_ok())
    }
}

/// The committed view of a partition, as commands read it.
pub(crate) struct Committed<'a>(pub(crate) &'a Partition);

impl Published for Committed<'_> {
    fn get(&self, key: &[u8], now_ms: u64) -> Option<Value> {
        self.0.value_accessed(key, now_ms).map(|(data, expire_at_ms)| Value { data: data.into(), expire_at_ms })
    }
    fn peek(&self, key: &[u8], now_ms: u64) -> Option<Value> {
        self.0.value_and_expiry(key, now_ms).map(|(data, expire_at_ms)| Value { data: data.into(), expire_at_ms })
    }
    fn expiry(&self, key: &[u8], now_ms: u64) -> Option<u64> {
        self.0.get(key, now_ms).map(|e| e.expire_at_ms)
    }
    fn touch(&self, key: &[u8], now_ms: u64) -> bool {
        self.0.get(key, now_ms).inspect(|e| e.touched.touch(now_ms)).is_some()
    }
    fn idle_secs(&self, key: &[u8], now_ms: u64) -> Option<u64> {
        self.0.get(key, now_ms).map(|e| e.touched.idle_secs(now_ms))
    }
    /// Without reading the value: the entry, a key too long to be inline,
    /// the record, and a large value's blob.
    fn usage(&self, key: &[u8], now_ms: u64) -> Option<u64> {
        let e = self.0.get(key, now_ms)?;
        let heap_key = if key.len() > sharedisk_storage::index::INLINE_KEY_BYTES { key.len() } else { 0 };
        let blob = if e.is_large() { self.0.keyspace().blob(key).map_or(0, |b| b.len) } else { 0 };
        let fields = self.0.keyspace().fields(key, now_ms).map_or(0, |f| {
            f.iter().map(|(name, f)| (sharedisk_storage::index::FIELD_ENTRY_BYTES + name.len()) as u64 + u64::from(f.record_bytes())).sum()
        });
        Some((commands::ENTRY_BYTES + heap_key) as u64 + u64::from(e.record_bytes()) + blob + fields)
    }
    fn kind(&self, key: &[u8], now_ms: u64) -> Option<commands::Type> {
        self.0.get(key, now_ms).map(|e| if e.is_hash() { commands::Type::Hash } else { commands::Type::String })
    }
    fn holds(&self, key: &[u8]) -> bool {
        self.0.keyspace().holds(key)
    }
    fn field(&self, key: &[u8], field: &[u8], now_ms: u64) -> Option<bytes::Bytes> {
        self.0.field_value(key, field, now_ms, true).map(Into::into)
    }
    fn has_field(&self, key: &[u8], field: &[u8], now_ms: u64) -> bool {
        self.0.keyspace().fields(key, now_ms).is_some_and(|f| f.contains_key(field))
    }
    fn field_count(&self, key: &[u8], now_ms: u64) -> usize {
        self.0.keyspace().fields(key, now_ms).map_or(0, |f| f.len())
    }
    fn fields(&self, key: &[u8], now_ms: u64, values: bool) -> Vec<(Vec<u8>, bytes::Bytes)> {
        if values {
            if let Some(e) = self.0.get(key, now_ms) {
                e.touched.touch(now_ms);
            }
            return self.0.field_values(key, now_ms).unwrap_or_default().into_iter().map(|(f, v)| (f, v.into())).collect();
        }
        self.0.keyspace().fields(key, now_ms).map_or_else(Vec::new, |f| f.keys().map(|k| (k.to_vec(), bytes::Bytes::new())).collect())
    }
}

/// What the engine did, for INFO (an operator's view of the group commit).
#[derive(Debug)]
pub struct Counters {
    /// Cycles that executed at least one request, and those requests.
    pub cycles: AtomicU64,
    pub requests: AtomicU64,
    /// Volume syncs, and the time spent in them (counted by the shell).
    pub barriers: AtomicU64,
    pub barrier_usec: AtomicU64,
    /// The same as distributions, for `--metrics`: each barrier's seconds,
    /// each cycle's requests.
    pub barrier_seconds: prometheus_client::metrics::histogram::Histogram,
    pub cycle_requests: prometheus_client::metrics::histogram::Histogram,
}

impl Default for Counters {
    fn default() -> Counters {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        Counters {
            cycles: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            barriers: AtomicU64::new(0),
            barrier_usec: AtomicU64::new(0),
            // 50 µs to ~1.6 s.
            barrier_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            // 1 to 4096 requests.
            cycle_requests: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        }
    }
}

/// Where an executed request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Failed before staging anything (or needs no validation): answer as is.
    Refused,
    /// Read only: answer after validation.
    Read,
    /// Its writes are staged in the partition, not yet published.
    Staged,
    /// Published; durable once `barrier` barriers have completed.
    Published { barrier: u64 },
    /// Published and durable already (a commit `append` ran to clean).
    Durable,
}

/// An executed request waiting to be answered.
#[derive(Debug)]
struct Executed<R> {
    partition: u32,
    reply: R,
    answer: Reply,
    step: Step,
}

#[derive(Debug)]
struct Serving {
    cell: Arc<ServedPartition>,
    fenced: bool,
    /// The keys of this partition connections WATCH.
    watches: WatchTable,
}

/// A cycle whose barrier is running, and what that barrier covers per partition.
#[derive(Debug)]
struct Awaiting<R> {
    done: Vec<Executed<R>>,
    marks: Vec<(u32, SyncMark)>,
}

/// A barrier the shell must run now: one sync of the whole volume.
#[derive(Debug)]
#[must_use = "the shell must run the barrier and report it with barrier_done"]
pub struct Barrier {
    /// The barrier's number (barriers complete in order): once it completes,
    /// [`Core::barriers`] equals it.
    pub number: u64,
}

/// The engine's state. `R` is where a request's answer goes, `S` where a
/// stop's result goes (channels in the shell, ids in a simulation).
#[derive(Debug)]
pub struct Core<R, S> {
    parts: BTreeMap<u32, Serving>,
    /// Jobs accepted, not yet executed.
    queued: Vec<Job<R>>,
    /// Executed this cycle, not yet published.
    executed: Vec<Executed<R>>,
    /// Per partition, the writes this cycle staged: what later requests of
    /// the cycle read on top of the published index, until `publish`.
    overlays: HashMap<u32, Overlay>,
    /// The cycle whose barrier is running.
    awaiting: Option<Awaiting<R>>,
    stops: Vec<(u32, S)>,
    /// Barriers completed; they complete in order.
    barriers: u64,
    /// A barrier failed: the volume handle is poisoned, nothing more is served.
    failed: bool,
    answers: Vec<(R, Outcome)>,
    stopped: Vec<(S, Result<(), String>)>,
    /// Indexes of released partitions, for the shell to free off this thread.
    released: Vec<sharedisk_storage::Keyspace>,
    counters: Arc<Counters>,
}

/// Requests executed in one cycle at most.
pub const BATCH_REQUESTS_MAX: usize = 4096;

impl<R, S> Core<R, S> {
    pub fn new(counters: Arc<Counters>) -> Core<R, S> {
        Core {
            parts: BTreeMap::new(),
            queued: Vec::new(),
            executed: Vec::new(),
            overlays: HashMap::new(),
            awaiting: None,
            stops: Vec::new(),
            barriers: 0,
            failed: false,
            answers: Vec::new(),
            stopped: Vec::new(),
            released: Vec::new(),
            counters,
        }
    }

    /// Serve this claimed partition.
    pub fn add(&mut self, cell: Arc<ServedPartition>) {
        self.parts.insert(cell.id, Serving { cell, fenced: false, watches: WatchTable::default() });
    }

    /// Take a request; after a stop was asked for its partition, it is handed back.
    pub fn submit(&mut self, job: Job<R>) {
        if self.stops.iter().any(|(p, _)| *p == job.partition) {
            self.answers.push((job.reply, Outcome::Reroute));
        } else {
            self.queued.push(job);
        }
    }

    /// Finish what is queued for the partition, make it durable, release it
    /// on the volume, report (see [`Core::finish_stops`]).
    pub fn stop(&mut self, partition: u32, done: S) {
        self.stops.push((partition, done));
    }

    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    pub fn barrier_running(&self) -> bool {
        self.awaiting.is_some()
    }

    pub fn barriers(&self) -> u64 {
        self.barriers
    }

    pub fn stops_pending(&self) -> bool {
        !self.stops.is_empty()
    }

    /// Answers that may go out now.
    pub fn take_answers(&mut self) -> std::vec::Drain<'_, (R, Outcome)> {
        self.answers.drain(..)
    }

    /// Stops that finished, with their results.
    pub fn take_stopped(&mut self) -> std::vec::Drain<'_, (S, Result<(), String>)> {
        self.stopped.drain(..)
    }

    /// The indexes of partitions released since the last call: freeing one
    /// of many keys takes milliseconds, which the caller should spend
    /// elsewhere than in the engine.
    pub fn take_released(&mut self) -> Vec<sharedisk_storage::Keyspace> {
        std::mem::take(&mut self.released)
    }

    /// Execute every queued request against its partition plus what the
    /// cycle staged before it (in this call or an earlier one since the last
    /// `publish`), and stage its writes (one atomic storage batch each). Without a valid lease nothing runs: every request is
    /// handed back. Publications of the previous cycle are visible here;
    /// nothing of this cycle is answered before its own barrier.
    pub fn execute(&mut self, now_ms: u64, lease_valid: bool) {
        let jobs = std::mem::take(&mut self.queued);
        if !lease_valid || self.failed {
            let outcome = |failed| if failed { Outcome::Reply(volume_error()) } else { Outcome::Reroute };
            self.answers.extend(jobs.into_iter().map(|j| (j.reply, outcome(self.failed && lease_valid))));
            return;
        }
        let before = self.executed.len();
        for mut job in jobs {
            if self.parts.get(&job.partition).is_none_or(|s| s.fenced) {
                self.answers.push((job.reply, Outcome::Reroute));
                continue;
            }
            if let Request::Checked { watch, cmds } = &mut job.request
                && !self.watch_holds(watch, now_ms)
            {
                cmds.clear();
                let answer = Reply::NullArray;
                self.executed.push(Executed { partition: job.partition, reply: job.reply, answer, step: Step::Read });
                continue;
            }
            let Some(s) = self.parts.get_mut(&job.partition) else { unreachable!("checked above") };
            let staged = self.overlays.entry(job.partition).or_default();
            match execute_one(&s.cell, &mut s.watches, job, staged, now_ms, &mut self.executed) {
                Ok(None) => {}
                Ok(Some(reply)) => self.answers.push((reply, Outcome::Reroute)),
                Err(reply) => {
                    s.fenced = true;
                    self.answers.push((reply, Outcome::Reroute));
                }
            }
        }
        let ran = self.executed.len() - before;
        if ran > 0 {
            self.counters.cycles.fetch_add(1, Ordering::Relaxed);
            self.counters.requests.fetch_add(ran as u64, Ordering::Relaxed);
            self.counters.cycle_requests.observe(ran as f64);
        }
    }

    /// Whether a transaction under `watch` may run now, at this place in
    /// the engine's order (see [`super::watch`]).
    fn watch_holds(&self, watch: &Watch, now: u64) -> bool {
        !watch.is_dirty()
            && watch.all(|w| {
                let Some(s) = self.parts.get(&w.partition).filter(|s| !s.fenced) else { return false };
                if !std::ptr::eq(w.cell.as_ptr(), Arc::as_ptr(&s.cell)) {
                    return false;
                }
                if !w.existed {
                    return true;
                }
                // Existed then: it must still (it expired, unless written since).
                let g = s.cell.read();
                let Some(part) = g.as_ref() else { return false };
                let empty = Overlay::new();
                let staged = self.overlays.get(&w.partition).unwrap_or(&empty);
                Txn::new(&Committed(part), staged, now).get(&w.key).is_some()
            })
    }

    /// Publish every partition the cycle wrote to (floor and head CAS), then
    /// either start a barrier for the cycle (returned: the shell runs it and
    /// reports with [`Core::barrier_done`]) or, if nothing needs one, answer
    /// the cycle at once.
    pub fn publish(&mut self, lease_valid: bool) -> Option<Barrier> {
        assert!(
            self.awaiting.is_none(),
            "a cycle published before the previous barrier completed: the head it replaces may not be durable"
        );
        let mut done = std::mem::take(&mut self.executed);
        // What was staged is in the index once published (or never will be).
        self.overlays.clear();
        if self.failed {
            self.answer(done, lease_valid);
            return None;
        }
        let next = self.barriers + 1;
        let mut published: Vec<u32> = Vec::new();
        for (p, s) in self.parts.iter_mut().filter(|(_, s)| !s.fenced) {
            let mut g = s.cell.write();
            let Some(part) = g.as_mut().filter(|part| part.has_unpublished()) else { continue };
            // Readers that see the new index must wait for this barrier: set
            // before the index changes, under the same lock.
            s.cell.set_durable_after(next);
            match part.publish() {
                Ok(()) => published.push(*p),
                Err(e) if e.is_fenced() => s.fenced = true,
                Err(_) => {}
            }
        }
        let mut needs_barrier = !published.is_empty();
        for d in done.iter_mut() {
            if d.step == Step::Staged {
                // Staged bytes are on their way to the disk even if the
                // publication failed: the barrier covers them either way.
                needs_barrier = true;
                if published.contains(&d.partition) {
                    d.step = Step::Published { barrier: next };
                }
            }
        }
        #[cfg(test)]
        if crate::mutant::is(crate::mutant::Mutant::AckBeforeBarrier) {
            let (early, rest): (Vec<_>, Vec<_>) = done.into_iter().partition(|d| matches!(d.step, Step::Published { .. }));
            self.answers.extend(early.into_iter().map(|d| (d.reply, Outcome::Reply(d.answer))));
            done = rest;
        }
        if !needs_barrier {
            self.answer(done, lease_valid);
            return None;
        }
        let marks = self.parts.iter().filter_map(|(p, s)| s.cell.read().as_ref().map(|part| (*p, part.barrier_started()))).collect();
        self.awaiting = Some(Awaiting { done, marks });
        Some(Barrier { number: next })
    }

    /// The running barrier completed (`ok`) or failed: its cycle is durable
    /// now, or lost with the volume handle. Answers that cycle.
    pub fn barrier_done(&mut self, ok: bool, lease_valid: bool) {
        let Awaiting { done, marks } = self.awaiting.take().expect("barrier_done without a running barrier");
        if ok {
            self.barriers += 1;
            for (p, mark) in marks {
                if let Some(s) = self.parts.get(&p)
                    && let Some(part) = s.cell.write().as_mut()
                {
                    part.barrier_completed(mark);
                }
            }
        } else {
            self.failed = true;
        }
        self.answer(done, lease_valid);
    }

    /// The volume handle failed outside a barrier (a flush inside a claim or
    /// a cleaner's commit): nothing more is served from it.
    pub fn poison(&mut self) {
        self.failed = true;
    }

    /// Release the partitions whose stop was asked, once nothing waits for
    /// a publication or a barrier: false (nothing done) while a barrier runs
    /// or requests executed since the last `publish` are unanswered — a
    /// release commits what is staged, and those requests would then be
    /// answered as never applied.
    pub fn finish_stops(&mut self) -> bool {
        if self.awaiting.is_some() || !self.executed.is_empty() {
            return false;
        }
        for (p, done) in std::mem::take(&mut self.stops) {
            let result = match self.parts.remove(&p).map(|s| (s.fenced, s.cell.write().take())) {
                Some((true, _)) => Err("fenced".to_owned()),
                Some((false, Some(part))) => match part.release_keeping_index() {
                    Ok(keyspace) => {
                        self.released.push(keyspace);
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                },
                _ => Err("not served".to_owned()),
            };
            self.stopped.push((done, result));
        }
        true
    }

    /// Answer executed requests whose writes (if any) are durable or known
    /// lost. The one place an answer of an executed request is decided.
    fn answer(&mut self, done: Vec<Executed<R>>, lease_valid: bool) {
        let mut validated: HashMap<u32, bool> = HashMap::new();
        let unknown = |why: &str| Outcome::Reply(Reply::error(format!("ERR {why}; this write's outcome is unknown")));
        for d in done {
            let served = self.parts.get(&d.partition);
            let outcome = match d.step {
                // Refused before staging, or published and durable: answered
                // even if the lease lapsed since (retrying elsewhere would
                // apply it twice).
                Step::Refused | Step::Durable => Outcome::Reply(d.answer),
                Step::Published { barrier } if barrier <= self.barriers => Outcome::Reply(d.answer),
                Step::Published { .. } | Step::Staged if self.failed => unknown("the volume failed a flush"),
                Step::Read if self.failed => Outcome::Reply(volume_error()),
                Step::Published { barrier } => {
                    panic!("a write answered before the barrier that makes its publication durable ({barrier} > {})", self.barriers)
                }
                // Never published, never will be: route it again.
                Step::Staged if served.is_none_or(|s| s.fenced) => Outcome::Reroute,
                Step::Staged => unknown("publication failed"),
                Step::Read => match served {
                    Some(s) if *validated.entry(d.partition).or_insert_with(|| s.cell.validated(lease_valid)) => Outcome::Reply(d.answer),
                    _ => Outcome::Reroute,
                },
            };
            self.answers.push((d.reply, outcome));
        }
    }
}

/// [`Request::Keys`]: refused once the keys add up to more than
/// [`REPLY_BYTES_MAX`](crate::limits::REPLY_BYTES_MAX), as MGET is.
fn matching_keys(part: &Partition, slot: Option<u16>, pattern: Option<&[u8]>, limit: usize, now: u64) -> Reply {
    let max = crate::limits::REPLY_BYTES_MAX;
    let mut keys = Vec::new();
    let mut bytes = 0usize;
    for k in part.keys() {
        if keys.len() >= limit {
            break;
        }
        if slot.is_some_and(|s| crate::resp::key_slot(k) != s)
            || pattern.is_some_and(|p| !crate::glob::matches(p, k))
            || part.get(k, now).is_none()
        {
            continue;
        }
        bytes += k.len();
        if bytes > max {
            return Reply::error(format!("ERR the reply would exceed {max} bytes of keys; use a narrower pattern"));
        }
        keys.push(Reply::bulk(k.to_vec()));
    }
    Reply::Array(keys)
}

/// Bits of [`scan_hash`]: a SCAN cursor is the partition above them.
pub const SCAN_HASH_BITS: u32 = 48;

/// The order in which `SCAN` visits a partition's keys: a fixed 48-bit
/// hash of the key's bytes, the same on every server (a cursor started on
/// one owner continues on the next).
pub fn scan_hash(key: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x5348_4152_4544_4953).hash_one(key) >> (64 - SCAN_HASH_BITS)
}

/// Steps a whole `SCAN` of a partition takes at most, whatever `COUNT`:
/// each step reads every key once, so a step returns at least 1/this of them.
const SCAN_STEPS_MAX: usize = 256;

/// The live keys with the smallest [`scan_hash`] at or above `from`: at
/// least `count` (or `len / SCAN_STEPS_MAX`) of them, and every key sharing
/// the largest hash returned, so that the next step, from that hash + 1,
/// skips nothing. `None`: no live key is left above. A key live throughout
/// a scan is returned by the step whose range holds its hash — Redis's
/// guarantee, whatever is written meanwhile.
fn scan_keys(part: &Partition, from: u64, count: usize, now: u64) -> (Vec<Vec<u8>>, Option<u64>) {
    scan_keys_by(part, from, count, now, scan_hash)
}

fn scan_keys_by(part: &Partition, from: u64, count: usize, now: u64, scan_hash: impl Fn(&[u8]) -> u64) -> (Vec<Vec<u8>>, Option<u64>) {
    use std::collections::BinaryHeap;
    let count = count.max(part.len() / SCAN_STEPS_MAX).max(1);
    let mut heap: BinaryHeap<(u64, &[u8])> = BinaryHeap::with_capacity(count + 1);
    // The smallest hash left out: equal to the largest kept means a tie was cut.
    let mut min_out: Option<u64> = None;
    let mut out = |h: u64| min_out = Some(min_out.map_or(h, |m| m.min(h)));
    for k in part.keys() {
        let h = scan_hash(k);
        if h < from || part.get(k, now).is_none() {
            continue;
        }
        heap.push((h, k));
        if heap.len() > count {
            let (h, _) = heap.pop().expect("over count");
            out(h);
        }
    }
    let Some(&(max, _)) = heap.peek() else { return (Vec::new(), None) };
    let mut keys: Vec<Vec<u8>> = heap.into_iter().filter(|(h, _)| *h != max || min_out != Some(max)).map(|(_, k)| k.to_vec()).collect();
    if min_out == Some(max) {
        keys.extend(part.keys().filter(|k| scan_hash(k) == max && part.get(k, now).is_some()).map(<[u8]>::to_vec));
    }
    (keys, min_out.map(|_| max + 1))
}

/// Run one request against its partition and stage its writes.
///
/// `Ok(None)`: executed (pushed to `out`); `Ok(Some(r))`: not served here,
/// hand `r` back; `Err(r)`: the partition is fenced, hand `r` back.
fn execute_one<R>(
    cell: &Arc<ServedPartition>,
    watches: &mut WatchTable,
    job: Job<R>,
    staged: &mut Overlay,
    now: u64,
    out: &mut Vec<Executed<R>>,
) -> Result<Option<R>, R> {
    let mut g = cell.write();
    let Some(part) = g.as_mut() else { return Ok(Some(job.reply)) };
    let cmds = match job.request {
        Request::Count { slot } => {
            let n = part.keys().filter(|k| slot.is_none_or(|s| crate::resp::key_slot(k) == s) && part.get(k, now).is_some()).count();
            out.push(Executed { partition: job.partition, reply: job.reply, answer: Reply::Int(n as i64), step: Step::Read });
            return Ok(None);
        }
        Request::KeyStats => {
            // The index's own counts, O(1) (redis-cli --stat asks every
            // second): like Redis's, they include keys that expired and
            // were not reclaimed yet.
            let (keys, expires) = (part.len() as i64, part.keyspace().expiring() as i64);
            let answer = Reply::Array(vec![Reply::Int(keys), Reply::Int(expires)]);
            out.push(Executed { partition: job.partition, reply: job.reply, answer, step: Step::Read });
            return Ok(None);
        }
        Request::Keys { slot, pattern, limit } => {
            let answer = matching_keys(part, slot, pattern.as_deref(), limit, now);
            out.push(Executed { partition: job.partition, reply: job.reply, answer, step: Step::Read });
            return Ok(None);
        }
        Request::Watch { keys, watch } => {
            if !watch.is_dirty() {
                let view = Committed(part);
                let t = Txn::new(&view, staged, now);
                for key in keys {
                    watches.add(&key, &watch);
                    let existed = t.get(&key).is_some();
                    watch.add(Watched { partition: job.partition, cell: Arc::downgrade(cell), key: key.to_vec(), existed });
                }
            }
            // Answered once the cycle is published: a read after it sees every write before it.
            out.push(Executed { partition: job.partition, reply: job.reply, answer: Reply::ok(), step: Step::Read });
            return Ok(None);
        }
        Request::Scan { from, count, pattern, kind } => {
            let (keys, next) = scan_keys(part, from, count, now);
            // Filters apply after the step, as in Redis.
            let type_of = |k: &[u8]| part.get(k, now).map_or("none", |e| if e.is_hash() { "hash" } else { "string" });
            let keep = |k: &Vec<u8>| {
                pattern.as_ref().is_none_or(|p| crate::glob::matches(p, k))
                    && kind.as_ref().is_none_or(|t| t.eq_ignore_ascii_case(type_of(k).as_bytes()))
            };
            let keys = keys.into_iter().filter(keep).map(Reply::bulk).collect();
            let answer = Reply::Array(vec![Reply::Int(next.map_or(-1, |n| n as i64)), Reply::Array(keys)]);
            out.push(Executed { partition: job.partition, reply: job.reply, answer, step: Step::Read });
            return Ok(None);
        }
        Request::Exec { cmds, multi } => Some((cmds, multi)),
        // Its watch held (checked by the caller).
        Request::Checked { cmds, .. } => Some((cmds, true)),
        Request::Flush => None,
    };
    let mut flushed = Vec::new();
    let (answer, writes, ops) = {
        let view = Committed(part);
        let mut t = Txn::new(&view, staged, now);
        let answer = match cmds {
            Some((cmds, multi)) => {
                let mut answers: Vec<Reply> = cmds.iter().map(|cmd| commands::execute(&mut t, cmd)).collect();
                if multi { Reply::Array(answers) } else { answers.pop().unwrap_or(Reply::Null) }
            }
            None => {
                if !watches.is_empty() {
                    flushed = watches.existing(|k| t.get(k).is_some());
                }
                t.clear();
                Reply::ok()
            }
        };
        let (writes, ops) = t.into_writes();
        (answer, writes, ops)
    };
    let partition = job.partition;
    if ops.is_empty() {
        out.push(Executed { partition, reply: job.reply, answer, step: Step::Read });
        return Ok(None);
    }
    match part.append(&ops, now) {
        Ok(appended) => {
            if appended.committed_earlier {
                // `append` ran a full commit of what was staged before (to
                // clean): those writes are published and durable already.
                for d in out.iter_mut().filter(|d| d.partition == partition && d.step == Step::Staged) {
                    d.step = Step::Durable;
                }
            }
            staged.extend(writes);
            if !watches.is_empty() {
                for op in &ops {
                    match op {
                        Op::Clear => flushed.iter().for_each(|k| watches.touch(k)),
                        op => watches.touch(op.key()),
                    }
                }
            }
            out.push(Executed { partition, reply: job.reply, answer, step: Step::Staged });
            Ok(None)
        }
        Err(e) if e.is_fenced() => Err(job.reply),
        Err(e) => {
            out.push(Executed { partition, reply: job.reply, answer: storage_error(&e), step: Step::Refused });
            Ok(None)
        }
    }
}

pub(crate) fn volume_error() -> Reply {
    Reply::error("IOERR the volume failed a flush; this server serves nothing more from it until restarted")
}

fn storage_error(e: &StorageError) -> Reply {
    match e {
        // What to do about it, for whoever reads the client's log.
        StorageError::PartitionFull { .. } => Reply::error(format!(
            "OOM {e} (a larger one: `sharedisk up --size` or `sharedisk volume create --size`, in a new directory; \
             `--partitions` spreads a hot slot range over more partitions)"
        )),
        StorageError::RecordTooLarge { .. } => Reply::error(format!("ERR {e}")),
        _ => Reply::error(format!("IOERR {e}")),
    }
}

#[cfg(test)]
mod tests {
    //! The core's rules, step by step: no threads, the barrier run by hand.

    use super::*;
    use bytes::Bytes;
    use sharedisk_storage::{CreateOptions, ProcessIdentity, Volume};

    type TestCore = Core<u32, u32>;

    fn volume() -> Arc<Volume> {
        let opts = CreateOptions { segment_bytes: 64 << 10, ..CreateOptions::new(4 << 20, 2) };
        Arc::new(Volume::create_in_memory(&opts, None).unwrap().0)
    }

    fn serving(vol: &Arc<Volume>, key: u64) -> TestCore {
        let reg = vol.register(key, ProcessIdentity::current()).unwrap();
        let mut core = TestCore::new(Arc::default());
        core.add(Arc::new(ServedPartition::new(Partition::claim(vol.clone(), reg, 0).unwrap())));
        core
    }

    fn submit(core: &mut TestCore, id: u32, line: &str) {
        let args = line.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect();
        let cmd = commands::Command::parse(args).unwrap();
        core.submit(Job { partition: 0, request: Request::Exec { cmds: vec![cmd], multi: false }, reply: id });
    }

    fn answers(core: &mut TestCore) -> Vec<(u32, String)> {
        core.take_answers()
            .map(|(id, o)| {
                let text = match o {
                    Outcome::Reply(Reply::Simple(s) | Reply::Error(s)) => s,
                    Outcome::Reply(Reply::Bulk(b)) => String::from_utf8_lossy(&b).into_owned(),
                    Outcome::Reply(r) => format!("{r:?}"),
                    Outcome::Reroute => "reroute".into(),
                };
                (id, text)
            })
            .collect()
    }

    #[test]
    fn a_write_is_answered_only_once_its_barrier_completed() {
        let vol = volume();
        let mut core = serving(&vol, 0xA);
        submit(&mut core, 1, "SET k v");
        core.execute(1, true);
        let barrier = core.publish(true).expect("a write needs a barrier");
        assert_eq!(barrier.number, 1);
        assert!(answers(&mut core).is_empty(), "answered before the barrier");
        // The next cycle executes while the barrier runs; its read sees the publication.
        submit(&mut core, 2, "GET k");
        core.execute(2, true);
        assert!(answers(&mut core).is_empty());
        vol.sync_all().unwrap();
        core.barrier_done(true, true);
        assert_eq!(answers(&mut core), vec![(1, "OK".to_owned())]);
        assert!(core.publish(true).is_none(), "a read-only cycle needs no barrier");
        assert_eq!(answers(&mut core), vec![(2, "v".to_owned())]);
    }

    /// A flush staged in a cycle: requests after it in the same cycle read
    /// an empty partition (theirs on top), requests before it are not
    /// affected; it is answered after its barrier, and the next owner
    /// replays it.
    #[test]
    fn a_flush_clears_the_partition_in_order_within_a_cycle() {
        let vol = volume();
        let mut core = serving(&vol, 0xA);
        submit(&mut core, 1, "SET old 1");
        core.execute(1, true);
        let _b = core.publish(true).unwrap();
        vol.sync_all().unwrap();
        core.barrier_done(true, true);
        answers(&mut core);
        submit(&mut core, 2, "SET staged 2");
        submit(&mut core, 3, "GET old");
        core.submit(Job { partition: 0, request: Request::Flush, reply: 4 });
        submit(&mut core, 5, "GET old");
        submit(&mut core, 6, "GET staged");
        submit(&mut core, 7, "SET new 3");
        submit(&mut core, 8, "EXISTS old staged new");
        core.execute(2, true);
        let _b = core.publish(true).unwrap();
        vol.sync_all().unwrap();
        core.barrier_done(true, true);
        let want = [(2, "OK"), (3, "1"), (4, "OK"), (5, "Null"), (6, "Null"), (7, "OK"), (8, "Int(1)")];
        assert_eq!(answers(&mut core), want.map(|(i, s)| (i, s.to_owned())));
        submit(&mut core, 9, "GET old");
        core.execute(3, true);
        assert!(core.publish(true).is_none());
        assert_eq!(answers(&mut core), vec![(9, "Null".to_owned())]);
        let reg = vol.register(0xB, ProcessIdentity::current()).unwrap();
        let p = Partition::claim(vol.clone(), reg, 0).unwrap();
        assert_eq!((p.len(), p.value(b"new", 1)), (1, Some(b"3".to_vec())), "the next owner did not replay the flush");
    }

    /// One cycle, run to its answers.
    fn cycle(core: &mut TestCore, vol: &Volume, now: u64) -> Vec<(u32, String)> {
        core.execute(now, true);
        if core.publish(true).is_some() {
            vol.sync_all().unwrap();
            core.barrier_done(true, true);
        }
        answers(core)
    }

    /// OBJECT IDLETIME counts from the last write or read; TTL, TYPE,
    /// EXISTS and OBJECT leave it alone, TOUCH and GET reset it (Redis's
    /// `LOOKUP_NOTOUCH` rules).
    #[test]
    fn idle_time_counts_from_the_last_access_and_not_from_lookups_that_do_not_touch() {
        let vol = volume();
        let mut core = serving(&vol, 0xA);
        let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let at = |core: &mut TestCore, ms: u64, lines: &[&str]| {
            for (i, l) in lines.iter().enumerate() {
                submit(core, i as u32, l);
            }
            cycle(core, &vol, t0 + ms).into_iter().map(|(_, s)| s).collect::<Vec<_>>()
        };
        assert_eq!(at(&mut core, 0, &["SET k v"]), ["OK"]);
        let idle = |s: &str| s.trim_start_matches("Int(").trim_end_matches(')').parse::<u64>().unwrap();
        let first = at(&mut core, 5_000, &["OBJECT IDLETIME k", "TTL k", "PTTL k", "TYPE k", "EXISTS k", "EXPIRETIME k"]);
        assert!((4..=6).contains(&idle(&first[0])), "{first:?}");
        let later = at(&mut core, 9_000, &["OBJECT IDLETIME k"]);
        assert!(idle(&later[0]) >= 8, "a lookup that does not touch reset the idle time: {later:?}");
        assert_eq!(at(&mut core, 10_000, &["GET k", "OBJECT IDLETIME k"]), ["v", "Int(0)"]);
        assert_eq!(at(&mut core, 13_000, &["TOUCH k nope"]), ["Int(1)"]);
        assert_eq!(at(&mut core, 15_000, &["OBJECT IDLETIME k", "OBJECT IDLETIME nope"]), ["Int(2)", "Null"]);
        assert!(at(&mut core, 15_000, &["OBJECT FREQ k"])[0].contains("LFU"));
    }

    /// MEMORY USAGE: the entry, the record and nothing else; a missing key
    /// is null; SAMPLES is parsed and changes nothing.
    #[test]
    fn memory_usage_counts_the_entry_and_the_record() {
        let vol = volume();
        let mut core = serving(&vol, 0xA);
        let value = "v".repeat(1000);
        submit(&mut core, 1, &format!("SET k {value}"));
        cycle(&mut core, &vol, 1);
        for (i, l) in
            ["MEMORY USAGE k", "MEMORY USAGE k SAMPLES 0", "MEMORY USAGE nope", "MEMORY USAGE k SAMPLES x", "MEMORY USAGE k BOGUS"]
                .iter()
                .enumerate()
        {
            submit(&mut core, i as u32, l);
        }
        let got: Vec<String> = cycle(&mut core, &vol, 2).into_iter().map(|(_, s)| s).collect();
        let bytes: u64 = got[0].trim_start_matches("Int(").trim_end_matches(')').parse().unwrap();
        let record = u64::from(core.parts[&0].cell.read().as_ref().unwrap().get(b"k", 2).unwrap().record_bytes());
        assert_eq!(bytes, commands::ENTRY_BYTES as u64 + record, "{got:?}");
        assert!(record > 1000 && record < 1100);
        assert_eq!(got[1], got[0]);
        assert_eq!(got[2..], ["Null", "ERR value is not an integer or out of range", "ERR syntax error"]);
        // Keyless, as only MULTI can bring it here: an error, not a panic.
        submit(&mut core, 9, "MEMORY USAGE");
        submit(&mut core, 10, "MEMORY HELP");
        let got = cycle(&mut core, &vol, 3);
        assert_eq!(got[0].1, "ERR wrong number of arguments for 'memory|usage' command");
        assert!(got[1].1.starts_with("Array"), "{got:?}");
    }

    fn watch(core: &mut TestCore, id: u32, w: &Arc<Watch>, keys: &[&str]) {
        let keys = keys.iter().map(|k| Bytes::copy_from_slice(k.as_bytes())).collect();
        core.submit(Job { partition: 0, request: Request::Watch { keys, watch: w.clone() }, reply: id });
    }

    fn checked(core: &mut TestCore, id: u32, w: &Arc<Watch>, lines: &[&str]) {
        let cmds = lines
            .iter()
            .map(|l| commands::Command::parse(l.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()).unwrap())
            .collect();
        core.submit(Job { partition: 0, request: Request::Checked { cmds, watch: w.clone() }, reply: id });
    }

    #[test]
    fn watch_aborts_exec_on_any_write_expiry_or_flush_of_a_watched_key_in_engine_order() {
        let vol = volume();
        let mut core = serving(&vol, 0xA);
        let ok = |id: u32| (id, "OK".to_owned());
        // Untouched: the transaction runs. Touched (even to the same value), it does not.
        let w = Watch::new();
        submit(&mut core, 1, "SET k 1");
        watch(&mut core, 2, &w, &["k", "absent"]);
        checked(&mut core, 3, &w, &["INCR k"]);
        assert_eq!(cycle(&mut core, &vol, 10), vec![ok(1), ok(2), (3, "Array([Int(2)])".to_owned())]);
        let w = Watch::new();
        watch(&mut core, 4, &w, &["k"]);
        submit(&mut core, 5, "SET k 2");
        checked(&mut core, 6, &w, &["INCR k"]);
        assert_eq!(cycle(&mut core, &vol, 11), vec![ok(4), ok(5), (6, "NullArray".to_owned())]);
        // A write before the WATCH, in the same cycle, is not a touch; one after it is.
        let (before, after) = (Watch::new(), Watch::new());
        submit(&mut core, 7, "SET k 3");
        watch(&mut core, 8, &before, &["k"]);
        checked(&mut core, 9, &before, &[]);
        assert_eq!(cycle(&mut core, &vol, 12), vec![ok(7), ok(8), (9, "Array([])".to_owned())]);
        watch(&mut core, 10, &after, &["k"]);
        submit(&mut core, 11, "DEL nothing");
        assert_eq!(cycle(&mut core, &vol, 13), vec![ok(10), (11, "Int(0)".to_owned())]);
        // A write that changes nothing (DEL of a missing key) touches nothing.
        checked(&mut core, 12, &after, &[]);
        assert_eq!(cycle(&mut core, &vol, 14), vec![(12, "Array([])".to_owned())]);
        // A flush touches the watched keys that exist, not the others.
        let (exists, missing) = (Watch::new(), Watch::new());
        watch(&mut core, 13, &exists, &["k"]);
        watch(&mut core, 14, &missing, &["nope"]);
        core.submit(Job { partition: 0, request: Request::Flush, reply: 15 });
        checked(&mut core, 16, &exists, &[]);
        checked(&mut core, 17, &missing, &[]);
        let want = vec![ok(13), ok(14), ok(15), (16, "NullArray".to_owned()), (17, "Array([])".to_owned())];
        assert_eq!(cycle(&mut core, &vol, 15), want);
        // A key that existed when watched and expired since aborts; one that
        // had expired already when watched does not.
        submit(&mut core, 18, "SET e v PX 10");
        submit(&mut core, 19, "SET gone v PX 1");
        assert_eq!(cycle(&mut core, &vol, 20), vec![ok(18), ok(19)]);
        let w = Watch::new();
        watch(&mut core, 20, &w, &["e", "gone"]);
        assert_eq!(cycle(&mut core, &vol, 25), vec![ok(20)]);
        let w2 = Watch::new();
        watch(&mut core, 21, &w2, &["gone"]);
        checked(&mut core, 22, &w2, &[]);
        checked(&mut core, 23, &w, &[]);
        assert_eq!(cycle(&mut core, &vol, 31), vec![ok(21), (22, "Array([])".to_owned()), (23, "NullArray".to_owned())]);
    }

    #[test]
    fn a_watched_partition_that_left_and_came_back_aborts_the_transaction() {
        let vol = volume();
        let mut core = serving(&vol, 0xA);
        let w = Watch::new();
        watch(&mut core, 1, &w, &["k"]);
        assert_eq!(cycle(&mut core, &vol, 1), vec![(1, "OK".to_owned())]);
        // Released, written by another owner, claimed again: this engine saw
        // none of those writes, so the watch cannot vouch for the key.
        core.stop(0, 0);
        assert!(core.finish_stops());
        let reg = vol.register(0xB, ProcessIdentity::current()).unwrap();
        let mut other = Partition::claim(vol.clone(), reg, 0).unwrap();
        other.append(&[Op::Put { key: b"k".to_vec(), value: b"theirs".to_vec().into(), expire_at_ms: 0 }], 2).unwrap();
        other.commit().unwrap();
        other.release().unwrap();
        let reg = vol.register(0xC, ProcessIdentity::current()).unwrap();
        core.add(Arc::new(ServedPartition::new(Partition::claim(vol.clone(), reg, 0).unwrap())));
        checked(&mut core, 2, &w, &["SET k mine"]);
        assert_eq!(cycle(&mut core, &vol, 3), vec![(2, "NullArray".to_owned())]);
    }

    #[test]
    fn a_scan_returns_every_key_present_throughout_whatever_is_written_and_whatever_ties() {
        let put = |k: String| Op::Put { key: k.into_bytes(), value: b"v".to_vec().into(), expire_at_ms: 0 };
        // Real hashes, and a hash of the first byte only (ties everywhere).
        let first_byte = |k: &[u8]| u64::from(k[0]);
        for (name, hash) in [("scan_hash", &scan_hash as &dyn Fn(&[u8]) -> u64), ("first byte", &first_byte)] {
            let vol = volume();
            let reg = vol.register(0xA, ProcessIdentity::current()).unwrap();
            let mut part = Partition::claim(vol.clone(), reg, 0).unwrap();
            let stay: Vec<String> = (0..600).map(|i| format!("{}stay{i}", (b'a' + (i % 7) as u8) as char)).collect();
            let go: Vec<String> = (0..300).map(|i| format!("{}go{i}", (b'a' + (i % 5) as u8) as char)).collect();
            part.append(&stay.iter().chain(&go).cloned().map(put).collect::<Vec<_>>(), 1).unwrap();
            part.commit().unwrap();
            let (mut seen, mut from, mut steps) = (std::collections::HashSet::new(), 0, 0);
            loop {
                let (keys, next) = scan_keys_by(&part, from, 5, 1, hash);
                steps += 1;
                assert!(steps < 2000, "{name}: the scan does not end");
                seen.extend(keys.into_iter().map(|k| String::from_utf8(k).unwrap()));
                // Writes between steps: keys come and go.
                let i = steps;
                let mut ops = vec![put(format!("{}new{i}", (b'a' + (i % 9) as u8) as char))];
                if let Some(k) = go.get(i) {
                    ops.push(Op::Del { key: k.clone().into_bytes() });
                }
                part.append(&ops, 1).unwrap();
                part.commit().unwrap();
                match next {
                    Some(n) => from = n,
                    None => break,
                }
            }
            let missed: Vec<&String> = stay.iter().filter(|k| !seen.contains(*k)).collect();
            assert!(missed.is_empty(), "{name}: keys present throughout were missed: {missed:?}");
        }
    }

    #[test]
    fn a_failed_barrier_leaves_every_write_of_its_cycle_unknown_and_poisons_the_engine() {
        let vol = volume();
        let mut core = serving(&vol, 0xA);
        submit(&mut core, 1, "SET k v");
        core.execute(1, true);
        let _barrier = core.publish(true).unwrap();
        core.barrier_done(false, true);
        let a = answers(&mut core);
        assert!(a[0].1.contains("outcome is unknown"), "{a:?}");
        submit(&mut core, 2, "GET k");
        core.execute(2, true);
        assert!(answers(&mut core)[0].1.starts_with("IOERR"));
    }

    #[test]
    fn a_read_is_validated_after_it_was_computed() {
        let vol = volume();
        let mut core = serving(&vol, 0xA);
        submit(&mut core, 1, "SET k old");
        core.execute(1, true);
        let _b = core.publish(true).unwrap();
        vol.sync_all().unwrap();
        core.barrier_done(true, true);
        answers(&mut core);
        // Computed while we own the partition ...
        submit(&mut core, 2, "GET k");
        core.execute(2, true);
        // ... then another server takes it over before the answer goes out.
        let reg = vol.register(0xB, ProcessIdentity::current()).unwrap();
        let _new_owner = Partition::claim(vol.clone(), reg, 0).unwrap();
        assert!(core.publish(true).is_none());
        assert_eq!(answers(&mut core), vec![(2, "reroute".to_owned())], "a stale read went out");
        // A lapsed lease is as good as a fence for reads.
        let vol = volume();
        let mut core = serving(&vol, 0xC);
        submit(&mut core, 3, "GET k");
        core.execute(3, true);
        assert!(core.publish(false).is_none());
        assert_eq!(answers(&mut core), vec![(3, "reroute".to_owned())]);
    }

    #[test]
    fn nothing_executes_without_a_valid_lease() {
        let vol = volume();
        let mut core = serving(&vol, 0xA);
        submit(&mut core, 1, "SET k v");
        core.execute(1, false);
        assert_eq!(answers(&mut core), vec![(1, "reroute".to_owned())]);
        assert!(core.publish(false).is_none(), "nothing was staged");
    }

    #[test]
    fn a_stop_finishes_the_partition_and_hands_later_requests_back() {
        let vol = volume();
        let mut core = serving(&vol, 0xA);
        submit(&mut core, 1, "SET k v");
        core.execute(1, true);
        core.stop(0, 7);
        submit(&mut core, 2, "GET k");
        assert_eq!(answers(&mut core), vec![(2, "reroute".to_owned())]);
        let _b = core.publish(true).unwrap();
        vol.sync_all().unwrap();
        core.barrier_done(true, true);
        core.finish_stops();
        assert_eq!(answers(&mut core), vec![(1, "OK".to_owned())]);
        assert_eq!(core.take_stopped().collect::<Vec<_>>(), vec![(7, Ok(()))]);
        // Released on the volume: the next owner finds the write.
        let reg = vol.register(0xB, ProcessIdentity::current()).unwrap();
        let p = Partition::claim(vol.clone(), reg, 0).unwrap();
        assert_eq!(p.value(b"k", 1).unwrap(), b"v");
    }

    #[test]
    #[should_panic(expected = "published before the previous barrier completed")]
    fn publishing_over_a_head_not_yet_durable_is_refused() {
        let vol = volume();
        let mut core = serving(&vol, 0xA);
        submit(&mut core, 1, "SET k v");
        core.execute(1, true);
        let _b = core.publish(true).unwrap();
        submit(&mut core, 2, "SET k w");
        core.execute(2, true);
        let _ = core.publish(true);
    }
}
