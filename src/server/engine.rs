//! The partition engine: one thread serves every partition this server
//! owns, in cycles, and acknowledges with a single-barrier group commit.
//!
//! A cycle takes every queued request, runs each against its partition plus
//! the writes staged before it in the cycle, stages each request's writes as
//! one atomic storage batch, publishes every written partition (one floor CAS
//! and one head CAS each), then starts **one** fdatasync for the whole volume
//! on the barrier thread and goes on to execute the next cycle; the cycle is
//! answered when its barrier returns, which the engine awaits before it
//! publishes again (each head it replaces must be durable: it becomes the
//! floor). The publication precedes the barrier, so a power
//! loss inside the barrier may leave a head word on disk that points past
//! records that never made it: recovery then falls back to the partition's
//! floor word, the previous head, durable since the previous cycle's barrier
//! (storage/FORMAT.md). That costs nothing at run time and halves the
//! latency of the two-barrier commit (records, then heads) used before.
//! A cycle with nothing to make durable (reads only) issues no barrier. One
//! thread instead of one per partition: on two cores the context switches,
//! not the syncs, were the cost.
//!
//! Fencing, per the brief:
//! * before executing, the lease must be valid by our own conservative clock,
//!   otherwise the engine waits (a renewed lease resumes it; a lost one stops it);
//! * a request with writes is acknowledged only if its publication succeeded,
//!   which after a fence it cannot (the head word carries the token);
//! * a read-only request is answered only if, after computing it, the lease is
//!   still valid and the owner word on the volume still names us (validate
//!   after read): no new owner can have published anything yet.
//!
//! Requests the engine can no longer answer are handed back as
//! [`Outcome::Reroute`]: the connection routes them again (hold, then MOVED).
//!
//! Reads usually do not come here: a connection answers a read-only command
//! itself from the partition's [`Cell`] under a read lock, with the same
//! checks (`conn::fast_read`); before changing the index the engine records
//! in the cell the barrier after which it is durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sharedisk_storage::{Error as StorageError, Partition, Volume};
use tokio::sync::{mpsc, oneshot};

use super::commands::{self, Overlay, Published, Txn, Value};
use crate::resp::Reply;

/// What a connection asks of a partition.
#[derive(Clone, Debug)]
pub enum Request {
    /// One data command (`multi: false`) or a MULTI block, executed atomically.
    Exec { cmds: Vec<Vec<Bytes>>, multi: bool },
    /// Live keys in the partition.
    Count,
}

#[derive(Debug)]
pub enum Outcome {
    Reply(Reply),
    /// Not answered here (the partition is going or gone): route it again.
    Reroute,
}

#[derive(Debug)]
pub struct Job {
    pub partition: u32,
    pub request: Request,
    pub reply: oneshot::Sender<Outcome>,
}

/// A served partition, shared between the engine (which writes) and the
/// connections' read fast path (which reads the published index).
#[derive(Debug)]
pub struct Cell {
    pub id: u32,
    /// `None` once the engine released it.
    pub part: std::sync::RwLock<Option<Partition>>,
    /// The barrier count after which everything published so far is durable:
    /// a read of the index may be answered only once `barriers` reaches it.
    pub durable_after: std::sync::atomic::AtomicU64,
}

impl Cell {
    pub fn new(part: Partition) -> Cell {
        Cell { id: part.id(), part: std::sync::RwLock::new(Some(part)), durable_after: std::sync::atomic::AtomicU64::new(0) }
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<Partition>> {
        self.part.write().unwrap_or_else(|e| e.into_inner())
    }
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Partition>> {
        self.part.read().unwrap_or_else(|e| e.into_inner())
    }
}

pub enum Msg {
    Job(Job),
    /// Serve this claimed partition.
    Add(Arc<Cell>),
    /// Finish what is queued for the partition, make it durable, release it
    /// on the volume, report.
    Stop {
        partition: u32,
        done: oneshot::Sender<Result<(), String>>,
    },
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Job(j) => write!(f, "Job({}, {:?})", j.partition, j.request),
            Msg::Add(c) => write!(f, "Add({})", c.id),
            Msg::Stop { partition, .. } => write!(f, "Stop({partition})"),
        }
    }
}

/// Whether this process may act on its leases right now.
pub trait Lease: Send + Sync + 'static {
    fn valid(&self) -> bool;
}

/// Requests taken in one cycle at most.
pub const BATCH_REQUESTS_MAX: usize = 4096;
/// How long a cycle waits for an invalid lease to be renewed before giving up on it.
const LEASE_WAIT_MAX: Duration = Duration::from_secs(2);

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub(crate) struct View<'a>(pub(crate) &'a Partition);
impl Published for View<'_> {
    fn get(&self, key: &[u8], now_ms: u64) -> Option<Value> {
        self.0.get(key, now_ms).map(|e| Value { data: e.value.clone(), expire_at_ms: e.expire_at_ms })
    }
}

/// A request after execution, waiting to be answered.
struct Done {
    partition: u32,
    reply: oneshot::Sender<Outcome>,
    answer: Reply,
    wrote: bool,
    /// Its writes were staged (false: it failed before staging anything).
    staged: bool,
    /// Its writes were published (by this cycle's CAS, or by the full commit
    /// an `append` runs before cleaning).
    published: bool,
    /// The barrier count that must be reached before it is answered.
    after_barrier: u64,
}

struct Served {
    cell: Arc<Cell>,
    fenced: bool,
}

/// What the engine did, for INFO (an operator's view of the group commit).
#[derive(Debug, Default)]
pub struct Counters {
    /// Cycles that executed at least one request, and those requests.
    pub cycles: AtomicU64,
    pub requests: AtomicU64,
    /// Volume syncs, and the time spent in them.
    pub barriers: AtomicU64,
    pub barrier_usec: AtomicU64,
}

/// The engine's thread: serves partitions until its queue closes.
///
/// `barriers` counts the completed volume syncs, for the read fast path.
pub fn run(
    vol: Arc<Volume>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    lease: Arc<dyn Lease>,
    abandon: Arc<AtomicBool>,
    barriers_tx: Arc<tokio::sync::watch::Sender<u64>>,
    counters: Arc<Counters>,
) {
    let mut parts: BTreeMap<u32, Served> = BTreeMap::new();
    let mut stops: Vec<(u32, oneshot::Sender<Result<(), String>>)> = Vec::new();
    // Barriers (volume syncs) started and completed so far; they complete in order.
    let mut barriers: u64 = 0;
    // The barrier thread: the fdatasync of one cycle runs while the engine
    // executes and stages the next.
    let (sync_tx, sync_rx) = std::sync::mpsc::channel::<()>();
    let (synced_tx, synced_rx) = std::sync::mpsc::channel::<Result<(), StorageError>>();
    let barrier_vol = vol.clone();
    let barrier_counters = counters.clone();
    let barrier_thread = std::thread::Builder::new()
        .name("barrier".into())
        .spawn(move || {
            while sync_rx.recv().is_ok() {
                let t = Instant::now();
                let r = barrier_vol.sync_all();
                barrier_counters.barriers.fetch_add(1, Ordering::Relaxed);
                barrier_counters.barrier_usec.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                if synced_tx.send(r).is_err() {
                    return;
                }
            }
        })
        .expect("cannot start the barrier thread");
    let mut inflight: Option<InFlight> = None;
    loop {
        // 1. Gather: wait for work unless a barrier is running, then take
        //    what else is queued.
        let mut jobs: Vec<Job> = Vec::new();
        let mut closed = false;
        if inflight.is_none() {
            match rx.blocking_recv() {
                Some(m) => take(m, &mut parts, &mut jobs, &mut stops),
                None => closed = true,
            }
        }
        while !closed && jobs.len() < BATCH_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(m) => take(m, &mut parts, &mut jobs, &mut stops),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        // 2. The lease, before touching anything. (A running barrier's cycle
        //    is answered first: waiting for a lease must not delay it.)
        let mut failed = false;
        if !jobs.is_empty()
            && !lease.valid()
            && let Some(f) = inflight.take()
        {
            failed = !complete(f, &synced_rx, &mut barriers, &parts, &*lease, &barriers_tx);
        }
        if !jobs.is_empty() && !wait_for_lease(&*lease, &abandon) {
            for j in jobs.drain(..) {
                let _ = j.reply.send(Outcome::Reroute);
            }
        }
        // 3. Execute and stage, per partition in arrival order, while the
        //    previous cycle's barrier runs. Its publications are visible
        //    here; nothing of this cycle is answered before that barrier.
        let now = now_ms();
        let mut current: Vec<Done> = Vec::with_capacity(jobs.len());
        let mut overlays: HashMap<u32, Overlay> = HashMap::new();
        let mut staged_any = false;
        for job in jobs {
            let Some(s) = parts.get_mut(&job.partition).filter(|s| !s.fenced) else {
                let _ = job.reply.send(Outcome::Reroute);
                continue;
            };
            let staged = overlays.entry(job.partition).or_default();
            match execute(s, job, staged, now, &mut current) {
                Executed::Staged => staged_any = true,
                Executed::Nothing => {}
                Executed::Fenced => s.fenced = true,
            }
        }
        if !current.is_empty() {
            counters.cycles.fetch_add(1, Ordering::Relaxed);
            counters.requests.fetch_add(current.len() as u64, Ordering::Relaxed);
        }
        // 4. The previous barrier: its cycle is durable now (or lost with the
        //    volume handle). Only then may this cycle publish: each head it
        //    replaces must be durable (it becomes the floor).
        if let Some(f) = inflight.take() {
            failed |= !complete(f, &synced_rx, &mut barriers, &parts, &*lease, &barriers_tx);
        }
        // 5. Publish every partition this cycle wrote to (floor and head CAS).
        let mut published_now: Vec<u32> = Vec::new();
        if !failed {
            for (p, s) in parts.iter_mut().filter(|(_, s)| !s.fenced) {
                let mut g = s.cell.write();
                let Some(part) = g.as_mut().filter(|part| part.has_unpublished()) else { continue };
                // Readers that see the new index must wait for this cycle's
                // barrier: set before the index changes, under the same lock.
                s.cell.durable_after.store(barriers + 1, Ordering::Release);
                match part.publish() {
                    Ok(()) => published_now.push(*p),
                    Err(e) if e.is_fenced() => s.fenced = true,
                    Err(_) => {}
                }
            }
        }
        for d in current.iter_mut() {
            if d.wrote && published_now.contains(&d.partition) {
                d.published = true;
                d.after_barrier = barriers + 1;
            }
        }
        // 6. One barrier for the whole cycle, started now and awaited after
        //    the next cycle has executed. None for a cycle that wrote nothing:
        //    it is answered at once (what it read is durable: step 4).
        if !failed && (staged_any || !published_now.is_empty()) {
            let marks = parts.iter().filter_map(|(p, s)| s.cell.read().as_ref().map(|part| (*p, part.barrier_started()))).collect();
            if sync_tx.send(()).is_ok() {
                inflight = Some(InFlight { done: current, marks });
            } else {
                answer(current, &parts, &*lease, Some(volume_error()), barriers);
            }
        } else {
            answer(current, &parts, &*lease, (failed || vol.is_failed()).then(volume_error), barriers);
        }
        // 7. Stops, once nothing of theirs waits for a barrier.
        if !stops.is_empty() || closed {
            if let Some(f) = inflight.take() {
                complete(f, &synced_rx, &mut barriers, &parts, &*lease, &barriers_tx);
            }
            for (p, done) in stops.drain(..) {
                let result = match parts.remove(&p).map(|s| (s.fenced, s.cell.write().take())) {
                    Some((true, _)) => Err("fenced".to_owned()),
                    Some((false, Some(part))) => part.release().map_err(|e| e.to_string()),
                    _ => Err("not served".to_owned()),
                };
                let _ = done.send(result);
            }
        }
        if closed {
            drop(sync_tx);
            let _ = barrier_thread.join();
            return;
        }
    }
}

/// A cycle waiting for its barrier.
struct InFlight {
    done: Vec<Done>,
    /// What the barrier covers, per served partition.
    marks: Vec<(u32, sharedisk_storage::SyncMark)>,
}

/// Wait for the running barrier and answer its cycle. False if it failed.
fn complete(
    f: InFlight,
    synced_rx: &std::sync::mpsc::Receiver<Result<(), StorageError>>,
    barriers: &mut u64,
    parts: &BTreeMap<u32, Served>,
    lease: &dyn Lease,
    barriers_tx: &tokio::sync::watch::Sender<u64>,
) -> bool {
    let ok = matches!(synced_rx.recv(), Ok(Ok(())));
    if ok {
        *barriers += 1;
        for (p, mark) in f.marks {
            if let Some(s) = parts.get(&p)
                && let Some(part) = s.cell.write().as_mut()
            {
                part.barrier_completed(mark);
            }
        }
        barriers_tx.send_replace(*barriers);
    }
    answer(f.done, parts, lease, (!ok).then(volume_error), *barriers);
    ok
}

fn take(m: Msg, parts: &mut BTreeMap<u32, Served>, jobs: &mut Vec<Job>, stops: &mut Vec<(u32, oneshot::Sender<Result<(), String>>)>) {
    match m {
        Msg::Job(j) => {
            // After a stop was asked, nothing more for that partition.
            if stops.iter().any(|(p, _)| *p == j.partition) {
                let _ = j.reply.send(Outcome::Reroute);
            } else {
                jobs.push(j);
            }
        }
        Msg::Add(cell) => {
            parts.insert(cell.id, Served { cell, fenced: false });
        }
        Msg::Stop { partition, done } => stops.push((partition, done)),
    }
}

fn wait_for_lease(lease: &dyn Lease, abandon: &AtomicBool) -> bool {
    let until = Instant::now() + LEASE_WAIT_MAX;
    while !lease.valid() {
        if abandon.load(Ordering::Acquire) || Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

enum Executed {
    Staged,
    Nothing,
    Fenced,
}

/// Run one request against its partition and stage its writes.
fn execute(s: &mut Served, job: Job, staged: &mut Overlay, now: u64, out: &mut Vec<Done>) -> Executed {
    let mut g = s.cell.write();
    let Some(part) = g.as_mut() else {
        let _ = job.reply.send(Outcome::Reroute);
        return Executed::Nothing;
    };
    let (cmds, multi) = match job.request {
        Request::Count => {
            let n = part.keys().filter(|k| part.get(k, now).is_some()).count();
            out.push(Done {
                partition: job.partition,
                reply: job.reply,
                answer: Reply::Int(n as i64),
                wrote: false,
                staged: true,
                published: false,
                after_barrier: 0,
            });
            return Executed::Nothing;
        }
        Request::Exec { cmds, multi } => (cmds, multi),
    };
    let (answer, writes, ops) = {
        let view = View(part);
        let mut t = Txn::new(&view, staged, now);
        let mut answers: Vec<Reply> = cmds.iter().map(|args| commands::execute(&mut t, name_of(args), args)).collect();
        let answer = if multi { Reply::Array(answers) } else { answers.pop().unwrap_or(Reply::Null) };
        let (writes, ops) = t.into_writes();
        (answer, writes, ops)
    };
    if ops.is_empty() {
        out.push(Done {
            partition: job.partition,
            reply: job.reply,
            answer,
            wrote: false,
            staged: true,
            published: false,
            after_barrier: 0,
        });
        return Executed::Nothing;
    }
    match part.append(&ops, now) {
        Ok(appended) => {
            if appended.committed_earlier {
                // `append` ran a full commit of what was staged before (to clean):
                // those writes are published and durable already.
                for d in out.iter_mut().filter(|d| d.partition == job.partition && d.wrote) {
                    d.published = true;
                    d.after_barrier = 0;
                }
            }
            staged.extend(writes);
            out.push(Done {
                partition: job.partition,
                reply: job.reply,
                answer,
                wrote: true,
                staged: true,
                published: false,
                after_barrier: 0,
            });
            Executed::Staged
        }
        Err(e) if e.is_fenced() => {
            let _ = job.reply.send(Outcome::Reroute);
            Executed::Fenced
        }
        Err(e) => {
            out.push(Done {
                partition: job.partition,
                reply: job.reply,
                answer: storage_error(&e),
                wrote: false,
                staged: false,
                published: false,
                after_barrier: 0,
            });
            Executed::Nothing
        }
    }
}

/// Answer requests whose writes (if any) are durable or known lost.
fn answer(done: Vec<Done>, parts: &BTreeMap<u32, Served>, lease: &dyn Lease, volume_failed: Option<Reply>, barriers: u64) {
    let lease_ok = lease.valid();
    let mut owner_ok: HashMap<u32, bool> = HashMap::new();
    let unknown = |why: &str| Outcome::Reply(Reply::error(format!("ERR {why}; this write's outcome is unknown")));
    for d in done {
        let served = parts.get(&d.partition);
        let durable = d.published && d.after_barrier <= barriers;
        let outcome = if !d.staged || durable {
            // Refused before staging, or published and durable: acknowledged
            // even if the lease lapsed since (retrying elsewhere would apply it twice).
            Outcome::Reply(d.answer)
        } else if let Some(err) = &volume_failed {
            if d.wrote { unknown("the volume failed a flush") } else { Outcome::Reply(err.clone()) }
        } else {
            assert!(!d.published, "a write answered before the barrier that makes its publication durable");
            match served {
                // Never published, never will be: route it again.
                None => Outcome::Reroute,
                Some(s) if s.fenced => Outcome::Reroute,
                Some(_) if d.wrote => unknown("publication failed"),
                // Read-only: validate after read.
                Some(s) => {
                    let ok = lease_ok
                        && *owner_ok.entry(d.partition).or_insert_with(|| s.cell.read().as_ref().is_some_and(|p| p.check_owner().is_ok()));
                    if ok { Outcome::Reply(d.answer) } else { Outcome::Reroute }
                }
            }
        };
        let _ = d.reply.send(outcome);
    }
}

fn name_of(args: &[Bytes]) -> &'static str {
    commands::lookup(&args[0]).map_or("", |s| s.name)
}

fn volume_error() -> Reply {
    Reply::error("IOERR the volume failed a flush; this server serves nothing more from it until restarted")
}

fn storage_error(e: &StorageError) -> Reply {
    match e {
        StorageError::PartitionFull { .. } => Reply::error(format!("OOM {e}")),
        StorageError::RecordTooLarge { .. } => Reply::error(format!("ERR {e}")),
        _ => Reply::error(format!("IOERR {e}")),
    }
}

#[cfg(test)]
mod tests {
    //! The engine's fence rules, deterministically: a second owner takes the
    //! partition over while the first one's engine is still serving it.

    use super::*;
    use sharedisk_storage::{CreateOptions, Op, ProcessIdentity, Volume};

    struct FakeLease(AtomicBool);
    impl Lease for FakeLease {
        fn valid(&self) -> bool {
            self.0.load(Ordering::Acquire)
        }
    }

    struct Running {
        tx: mpsc::UnboundedSender<Msg>,
        lease: Arc<FakeLease>,
        abandon: Arc<AtomicBool>,
        thread: std::thread::JoinHandle<()>,
    }

    /// An engine serving partition 0, claimed with a fresh key.
    fn start(vol: &Arc<Volume>, key: u64) -> Running {
        let reg = vol.register(key, ProcessIdentity::current()).unwrap();
        let part = Partition::claim(vol.clone(), reg, 0).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let lease = Arc::new(FakeLease(AtomicBool::new(true)));
        let abandon = Arc::new(AtomicBool::new(false));
        let (v, l, a): (_, Arc<dyn Lease>, _) = (vol.clone(), lease.clone(), abandon.clone());
        let barriers = Arc::new(tokio::sync::watch::channel(0).0);
        let thread = std::thread::spawn(move || run(v, rx, l, a, barriers, Default::default()));
        tx.send(Msg::Add(Arc::new(Cell::new(part)))).unwrap();
        Running { tx, lease, abandon, thread }
    }

    fn send(w: &Running, cmds: Vec<Vec<Bytes>>, multi: bool) -> oneshot::Receiver<Outcome> {
        let (reply, rx) = oneshot::channel();
        w.tx.send(Msg::Job(Job { partition: 0, request: Request::Exec { cmds, multi }, reply })).unwrap();
        rx
    }

    fn words(line: &[&str]) -> Vec<Bytes> {
        line.iter().map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()
    }

    fn ask(w: &Running, line: &[&str]) -> Outcome {
        send(w, vec![words(line)], false).blocking_recv().unwrap()
    }

    /// Small segments, so that a few thousand writes make the cleaner run.
    fn options() -> CreateOptions {
        CreateOptions { segment_bytes: 64 << 10, ..CreateOptions::new(4 << 20, 2) }
    }

    /// A volume whose flushes are recorded in a durable image (and can be made to fail).
    fn volume_with_durable_image() -> (Arc<Volume>, Arc<sharedisk_storage::media::MemMedia>) {
        let media = Arc::new(sharedisk_storage::media::MemMedia::from_image(&vec![0; 4 << 20], None));
        let (vol, media) = Volume::create_in_memory(&options(), Some(media)).unwrap();
        (Arc::new(vol), media)
    }

    fn volume() -> Arc<Volume> {
        Arc::new(Volume::create_in_memory(&options(), None).unwrap().0)
    }

    /// The new owner takes partition 0 and publishes `k = new`.
    fn take_over(vol: &Arc<Volume>) -> Partition {
        let reg = vol.register(0xB, ProcessIdentity::current()).unwrap();
        let mut p = Partition::claim(vol.clone(), reg, 0).unwrap();
        p.append(&[Op::Put { key: b"k".to_vec(), value: b"new".to_vec(), expire_at_ms: 0 }], now_ms()).unwrap();
        p.commit().unwrap();
        p
    }

    #[test]
    fn a_deposed_owner_with_a_valid_lease_serves_no_stale_read_and_acks_no_write() {
        let vol = volume();
        let a = start(&vol, 0xA);
        assert!(matches!(ask(&a, &["SET", "k", "old"]), Outcome::Reply(Reply::Simple(s)) if s == "OK"));
        assert!(matches!(ask(&a, &["GET", "k"]), Outcome::Reply(Reply::Bulk(b)) if b == "old"));
        // Its own clock still says the lease is valid: only the volume knows better.
        let b = take_over(&vol);
        assert!(matches!(ask(&a, &["GET", "k"]), Outcome::Reroute), "stale read served");
        assert!(matches!(ask(&a, &["SET", "k", "zombie"]), Outcome::Reroute), "write acknowledged after the fence");
        assert!(matches!(ask(&a, &["INCR", "n"]), Outcome::Reroute));
        assert_eq!(b.get(b"k", now_ms()).unwrap().value, b"new");
        drop(a.tx);
        a.thread.join().unwrap();
        // Nothing of the deposed owner became visible to a later owner either.
        drop(b);
        let reg = vol.register(0xC, ProcessIdentity::current()).unwrap();
        let c = Partition::claim(vol.clone(), reg, 0).unwrap();
        assert_eq!(c.get(b"k", now_ms()).unwrap().value, b"new");
        assert!(c.get(b"n", now_ms()).is_none());
    }

    #[test]
    fn an_expired_lease_stops_serving_before_anyone_fences() {
        let vol = volume();
        let a = start(&vol, 0xA);
        assert!(matches!(ask(&a, &["SET", "k", "v"]), Outcome::Reply(_)));
        a.lease.0.store(false, Ordering::Release);
        a.abandon.store(true, Ordering::Release);
        // No fence happened, yet neither reads nor writes are served.
        assert!(matches!(ask(&a, &["GET", "k"]), Outcome::Reroute));
        assert!(matches!(ask(&a, &["SET", "k", "w"]), Outcome::Reroute));
        // A renewed lease resumes service.
        a.abandon.store(false, Ordering::Release);
        a.lease.0.store(true, Ordering::Release);
        assert!(matches!(ask(&a, &["GET", "k"]), Outcome::Reply(Reply::Bulk(b)) if b == "v"));
        // A planned stop commits, releases, and reports success.
        let (done, rx) = oneshot::channel();
        a.tx.send(Msg::Stop { partition: 0, done }).unwrap();
        assert_eq!(rx.blocking_recv().unwrap(), Ok(()));
        // Nothing is served any more: requests are handed back.
        assert!(matches!(ask(&a, &["GET", "k"]), Outcome::Reroute));
        drop(a.tx);
        a.thread.join().unwrap();
    }

    #[test]
    fn multi_is_atomic_and_a_failed_request_fails_alone() {
        let vol = volume();
        let a = start(&vol, 0xA);
        let cmds: Vec<Vec<Bytes>> = ["SET x 1", "INCR x", "GET x"].iter().map(|c| words(&c.split(' ').collect::<Vec<_>>())).collect();
        match send(&a, cmds, true).blocking_recv().unwrap() {
            Outcome::Reply(Reply::Array(v)) => assert_eq!(v, vec![Reply::ok(), Reply::Int(2), Reply::bulk("2")]),
            other => panic!("{other:?}"),
        }
        // A value larger than a record can hold fails alone; the rest of the batch commits.
        let huge = "v".repeat(70_000);
        let r1 = send(&a, vec![words(&["SET", "big", &huge])], false);
        let r2 = send(&a, vec![words(&["SET", "y", "1"])], false);
        assert!(matches!(r1.blocking_recv().unwrap(), Outcome::Reply(Reply::Error(e)) if e.starts_with("ERR record of")));
        assert!(matches!(r2.blocking_recv().unwrap(), Outcome::Reply(Reply::Simple(_))));
        assert!(matches!(ask(&a, &["EXISTS", "big", "y"]), Outcome::Reply(Reply::Int(1))));
    }

    #[test]
    fn acknowledged_writes_are_durable_when_acknowledged() {
        // Power is "lost" right after each acknowledgement: the durable image
        // must already hold every acknowledged write.
        let (vol, media) = volume_with_durable_image();
        let a = start(&vol, 0xA);
        // Many requests in flight at once: several cycles, pipelined.
        let rxs: Vec<_> = (0..40).map(|i| send(&a, vec![words(&["SET", &format!("k{i}"), &i.to_string()])], false)).collect();
        for (i, rx) in rxs.into_iter().enumerate() {
            assert!(matches!(rx.blocking_recv().unwrap(), Outcome::Reply(Reply::Simple(_))));
            let image = media.durable_image().unwrap();
            let crashed = Arc::new(Volume::from_media(Arc::new(sharedisk_storage::media::MemMedia::from_image(&image, None))).unwrap());
            let reg = crashed.register(0xC0 + i as u64, ProcessIdentity::current()).unwrap();
            let p = Partition::claim(crashed.clone(), reg, 0).unwrap();
            for j in 0..=i {
                assert_eq!(
                    p.get(format!("k{j}").as_bytes(), now_ms()).map(|e| e.value.clone()),
                    Some(j.to_string().into_bytes()),
                    "acknowledged k{j} not durable when k{i} was acknowledged"
                );
            }
        }
    }

    #[test]
    fn the_cleaner_running_mid_cycle_loses_nothing_and_every_write_is_acknowledged() {
        // Overwrites fill the partition: `append` then commits what the cycle
        // staged so far and cleans. Every write must be answered OK (it is
        // durable), and the last value of each key must be there.
        let vol = volume();
        let a = start(&vol, 0xA);
        let value = "v".repeat(1000);
        let mut last = std::collections::HashMap::new();
        for round in 0..20 {
            let rxs: Vec<_> = (0..200)
                .map(|i| {
                    let key = format!("k{}", i % 50);
                    let v = format!("{round}-{i}-{value}");
                    last.insert(key.clone(), v.clone());
                    send(&a, vec![words(&["SET", &key, &v])], false)
                })
                .collect();
            for rx in rxs {
                match rx.blocking_recv().unwrap() {
                    Outcome::Reply(Reply::Simple(ok)) if ok == "OK" => {}
                    other => panic!("round {round}: {other:?}"),
                }
            }
        }
        for (k, v) in last {
            assert!(matches!(ask(&a, &["GET", &k]), Outcome::Reply(Reply::Bulk(b)) if b == v.as_bytes()), "{k}");
        }
    }

    #[test]
    fn a_failed_flush_is_never_acknowledged_and_the_engine_stops_serving() {
        let (vol, media) = volume_with_durable_image();
        let a = start(&vol, 0xA);
        assert!(matches!(ask(&a, &["SET", "k", "1"]), Outcome::Reply(Reply::Simple(_))));
        // The disk dies: the next barrier fails.
        media.set_fail_after(Some(0));
        match ask(&a, &["SET", "k", "2"]) {
            Outcome::Reply(Reply::Error(e)) => assert!(e.contains("outcome is unknown"), "{e}"),
            other => panic!("a write was answered {other:?} after its flush failed"),
        }
        // Nothing is served from a volume handle that failed (fsyncgate: no retry, no "OK").
        match ask(&a, &["SET", "j", "3"]) {
            Outcome::Reply(Reply::Error(e)) => assert!(e.contains("IOERR") || e.contains("unknown"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
