//! One thread per served partition: executes requests in arrival order and
//! acknowledges them with group commit.
//!
//! A loop iteration takes every queued request (a batch), runs each against
//! the partition plus the writes staged before it, stages each request's
//! writes as one atomic storage batch, commits once (data flush, publication
//! CAS, head flush), and only then replies. Fencing, per the brief:
//!
//! * before a batch, the lease must be valid by our own conservative clock,
//!   otherwise the worker waits (a renewed lease resumes it; a lost one stops it);
//! * a request with writes is acknowledged only if its publication succeeded,
//!   which after a fence it cannot (the head word carries the token);
//! * a read-only request is answered only if, after computing it, the lease is
//!   still valid and the owner word on the volume still names us (validate
//!   after read): no new owner can have published anything yet.
//!
//! Requests the worker can no longer answer are handed back as
//! [`Outcome::Reroute`]: the connection routes them again (hold, then MOVED).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sharedisk_storage::{Error as StorageError, Partition};
use tokio::sync::{mpsc, oneshot};

use super::commands::{self, Overlay, Published, Txn, Value};
use super::sync::SyncGroup;
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
    pub request: Request,
    pub reply: oneshot::Sender<Outcome>,
}

pub enum Msg {
    Job(Job),
    /// Finish what is queued, commit, release the partition on the volume, report.
    Stop(oneshot::Sender<Result<(), String>>),
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Job(j) => write!(f, "Job({:?})", j.request),
            Msg::Stop(_) => f.write_str("Stop"),
        }
    }
}

/// Whether this process may act on its leases right now.
pub trait Lease: Send + Sync + 'static {
    fn valid(&self) -> bool;
}

/// Requests taken in one batch (one commit) at most.
pub const BATCH_REQUESTS_MAX: usize = 4096;
/// How long a batch waits for an invalid lease to be renewed before giving up on it.
const LEASE_WAIT_MAX: Duration = Duration::from_secs(2);

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

struct View<'a>(&'a Partition);
impl Published for View<'_> {
    fn get(&self, key: &[u8], now_ms: u64) -> Option<Value> {
        self.0.get(key, now_ms).map(|e| Value { data: e.value.clone(), expire_at_ms: e.expire_at_ms })
    }
}

/// A request after execution, waiting for the commit.
struct Done {
    reply: oneshot::Sender<Outcome>,
    answer: Reply,
    wrote: bool,
    /// Its writes were staged (false: it failed before staging anything).
    staged: bool,
}

/// Run the worker on the current thread until stopped or its queue closes.
pub fn run(mut part: Partition, mut rx: mpsc::UnboundedReceiver<Msg>, lease: Arc<dyn Lease>, stop_flag: Arc<AtomicBool>, sync: Arc<SyncGroup>) {
    let mut fenced = false;
    let mut stop: Option<oneshot::Sender<Result<(), String>>> = None;
    while stop.is_none() {
        let Some(first) = rx.blocking_recv() else { break };
        let mut jobs = Vec::new();
        match first {
            Msg::Job(j) => jobs.push(j),
            Msg::Stop(s) => stop = Some(s),
        }
        while stop.is_none() && jobs.len() < BATCH_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(Msg::Job(j)) => jobs.push(j),
                Ok(Msg::Stop(s)) => stop = Some(s),
                Err(_) => break,
            }
        }
        if fenced || !wait_for_lease(&*lease, &stop_flag) {
            for j in jobs {
                let _ = j.reply.send(Outcome::Reroute);
            }
            continue;
        }
        fenced = run_batch(&mut part, jobs, &*lease, &sync);
    }
    // Requests that raced with the stop are routed again by their connections.
    rx.close();
    while let Ok(m) = rx.try_recv() {
        if let Msg::Job(j) = m {
            let _ = j.reply.send(Outcome::Reroute);
        }
    }
    let result = if fenced { Err("fenced".to_owned()) } else { part.release().map_err(|e| e.to_string()) };
    if let Some(s) = stop {
        let _ = s.send(result);
    }
}

fn wait_for_lease(lease: &dyn Lease, stop: &AtomicBool) -> bool {
    let until = Instant::now() + LEASE_WAIT_MAX;
    while !lease.valid() {
        if stop.load(Ordering::Acquire) || Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Execute, commit, reply. Returns true when the partition was found fenced.
fn run_batch(part: &mut Partition, jobs: Vec<Job>, lease: &dyn Lease, sync: &SyncGroup) -> bool {
    let now = now_ms();
    let mut staged = Overlay::new();
    let mut done: Vec<Done> = Vec::with_capacity(jobs.len());
    // Index of the first request whose staging committed earlier ones inside
    // `append` (cleaning): those before it may be published already.
    let mut early_commit_before: Option<usize> = None;
    let mut fenced = false;
    for job in jobs {
        let cmds = match job.request {
            Request::Count => {
                let n = part.keys().filter(|k| part.get(k, now).is_some()).count();
                done.push(Done { reply: job.reply, answer: Reply::Int(n as i64), wrote: false, staged: true });
                continue;
            }
            Request::Exec { cmds, multi } => (cmds, multi),
        };
        if fenced {
            let _ = job.reply.send(Outcome::Reroute);
            continue;
        }
        let (answer, writes, ops) = {
            let view = View(part);
            let mut t = Txn::new(&view, &staged, now);
            let mut answers: Vec<Reply> = cmds.0.iter().map(|args| commands::execute(&mut t, &name_of(args), args)).collect();
            let answer = if cmds.1 { Reply::Array(answers) } else { answers.pop().unwrap_or(Reply::Null) };
            let (writes, ops) = t.into_writes();
            (answer, writes, ops)
        };
        let wrote = !ops.is_empty();
        let before = part.pending_ops();
        match part.append(&ops, now) {
            Ok(()) => {
                if part.pending_ops() < before + ops.len() && early_commit_before.is_none() {
                    early_commit_before = Some(done.len());
                }
                staged.extend(writes);
                done.push(Done { reply: job.reply, answer, wrote, staged: true });
            }
            Err(e) if e.is_fenced() => {
                fenced = true;
                let _ = job.reply.send(Outcome::Reroute);
            }
            Err(e) => done.push(Done { reply: job.reply, answer: storage_error(&e), wrote: false, staged: false }),
        }
    }
    // Both flushes join the server-wide group commit (one fdatasync for every
    // partition committing at the same time).
    let committed = if fenced { Err(None) } else { part.commit_with(&|| sync.sync()).map_err(Some) };
    if let Err(Some(e)) = &committed
        && e.is_fenced()
    {
        fenced = true;
    }
    // Reads are validated after they were computed and the batch committed.
    let reads_valid = committed.is_ok() && lease.valid() && part.check_owner().is_ok();
    for (i, d) in done.into_iter().enumerate() {
        let outcome = match &committed {
            _ if !d.staged => Outcome::Reply(d.answer),
            Ok(()) if d.wrote || reads_valid => Outcome::Reply(d.answer),
            Ok(()) => Outcome::Reroute,
            // Staged before an early commit: it may be visible, so it must not be retried.
            Err(_) if d.wrote && early_commit_before.is_some_and(|b| i < b) => {
                Outcome::Reply(Reply::error("ERR partition lost during commit; this write's outcome is unknown"))
            }
            Err(Some(e)) if !e.is_fenced() => Outcome::Reply(storage_error(e)),
            Err(_) => Outcome::Reroute,
        };
        let _ = d.reply.send(outcome);
    }
    fenced || (committed.is_ok() && !reads_valid && part.check_owner().is_err())
}

fn name_of(args: &[Bytes]) -> String {
    commands::lookup(&args[0]).map_or_else(|| String::from_utf8_lossy(&args[0]).to_ascii_lowercase(), |s| s.name.to_owned())
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
    //! The worker's fence rules, deterministically: a second owner takes the
    //! partition over while the first one's worker is still running.

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
        stop_flag: Arc<AtomicBool>,
        thread: std::thread::JoinHandle<()>,
    }

    fn start(vol: &Arc<Volume>, key: u64) -> Running {
        let reg = vol.register(key, ProcessIdentity::current()).unwrap();
        let part = Partition::claim(vol.clone(), reg, 0).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let lease = Arc::new(FakeLease(AtomicBool::new(true)));
        let stop_flag = Arc::new(AtomicBool::new(false));
        let (l, f): (Arc<dyn Lease>, _) = (lease.clone(), stop_flag.clone());
        let sync = Arc::new(SyncGroup::new(vol.clone()));
        let thread = std::thread::spawn(move || run(part, rx, l, f, sync));
        Running { tx, lease, stop_flag, thread }
    }

    fn ask(w: &Running, words: &[&str]) -> Outcome {
        let cmds = vec![words.iter().map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()];
        let (reply, rx) = oneshot::channel();
        w.tx.send(Msg::Job(Job { request: Request::Exec { cmds, multi: false }, reply })).unwrap();
        rx.blocking_recv().unwrap()
    }

    fn volume() -> Arc<Volume> {
        let mut opts = CreateOptions::new(4 << 20, 2);
        opts.segment_bytes = 64 << 10;
        Arc::new(Volume::create_in_memory(&opts, None).unwrap().0)
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
        a.stop_flag.store(true, Ordering::Release);
        // No fence happened, yet neither reads nor writes are served.
        assert!(matches!(ask(&a, &["GET", "k"]), Outcome::Reroute));
        assert!(matches!(ask(&a, &["SET", "k", "w"]), Outcome::Reroute));
        // A renewed lease resumes service.
        a.stop_flag.store(false, Ordering::Release);
        a.lease.0.store(true, Ordering::Release);
        assert!(matches!(ask(&a, &["GET", "k"]), Outcome::Reply(Reply::Bulk(b)) if b == "v"));
        // A planned stop commits, releases, and reports success.
        let (done, rx) = oneshot::channel();
        a.tx.send(Msg::Stop(done)).unwrap();
        assert_eq!(rx.blocking_recv().unwrap(), Ok(()));
        a.thread.join().unwrap();
    }

    #[test]
    fn one_batch_of_many_requests_is_one_commit_and_multi_is_atomic() {
        let vol = volume();
        let a = start(&vol, 0xA);
        let cmds: Vec<Vec<Bytes>> =
            ["SET x 1", "INCR x", "GET x"].iter().map(|c| c.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()).collect();
        let (reply, rx) = oneshot::channel();
        a.tx.send(Msg::Job(Job { request: Request::Exec { cmds, multi: true }, reply })).unwrap();
        match rx.blocking_recv().unwrap() {
            Outcome::Reply(Reply::Array(v)) => assert_eq!(v, vec![Reply::ok(), Reply::Int(2), Reply::bulk("2")]),
            other => panic!("{other:?}"),
        }
        // A value larger than a record can hold fails alone; the rest of the batch commits.
        let huge = "v".repeat(70_000);
        let (r1, rx1) = oneshot::channel();
        let (r2, rx2) = oneshot::channel();
        let cmd = |w: &[&str]| vec![w.iter().map(|s| Bytes::copy_from_slice(s.as_bytes())).collect::<Vec<_>>()];
        a.tx.send(Msg::Job(Job { request: Request::Exec { cmds: cmd(&["SET", "big", &huge]), multi: false }, reply: r1 })).unwrap();
        a.tx.send(Msg::Job(Job { request: Request::Exec { cmds: cmd(&["SET", "y", "1"]), multi: false }, reply: r2 })).unwrap();
        assert!(matches!(rx1.blocking_recv().unwrap(), Outcome::Reply(Reply::Error(e)) if e.starts_with("ERR record of")));
        assert!(matches!(rx2.blocking_recv().unwrap(), Outcome::Reply(Reply::Simple(_))));
        assert!(matches!(ask(&a, &["EXISTS", "big", "y"]), Outcome::Reply(Reply::Int(1))));
    }
}
