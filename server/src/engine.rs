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
//! floor). The publication precedes the barrier, so a power loss inside the
//! barrier may leave a head word on disk that points past records that never
//! made it: recovery then falls back to the partition's floor word, the
//! previous head, durable since the previous cycle's barrier
//! (storage/FORMAT.md). A cycle with nothing to make durable (reads only)
//! issues no barrier. One thread instead of one per partition: on two cores
//! the context switches, not the syncs, were the cost.
//!
//! What runs, what is published and what may be answered is decided by the
//! pure [`core::Core`], where the fencing rules are written once (its module
//! doc lists them). This file is its shell: the queue, the wait for a lease
//! that is being renewed, the barrier thread, and the channels the answers
//! go out on.
//!
//! Requests the engine can no longer answer are handed back as
//! [`Outcome::Reroute`]: the connection routes them again (hold, then MOVED).
//! Reads usually do not come here: a connection answers a read-only command
//! itself from the partition's [`ServedPartition`] (`conn::fast_read`), with the same
//! checks.

pub mod core;
pub mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sharedisk_storage::{Error as StorageError, Volume};
use tokio::sync::{mpsc, oneshot};

pub(crate) use self::core::Committed;
pub use self::core::{BATCH_REQUESTS_MAX, Counters, Outcome, Request, ServedPartition};
pub use self::watch::Watch;

/// A request as the shell carries it: answered on a oneshot channel.
pub type Job = self::core::Job<oneshot::Sender<Outcome>>;
type StopDone = oneshot::Sender<Result<(), String>>;
type Core = self::core::Core<oneshot::Sender<Outcome>, StopDone>;

pub enum Msg {
    Job(Job),
    /// Serve this claimed partition.
    Add(Arc<ServedPartition>),
    /// Finish what is queued for the partition, make it durable, release it
    /// on the volume, report.
    Stop {
        partition: u32,
        done: StopDone,
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

/// How long a cycle waits for an invalid lease to be renewed before giving up on it.
const LEASE_WAIT_MAX: Duration = Duration::from_secs(2);

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The barrier thread: one volume sync per request, reported in order.
struct BarrierThread {
    start: std::sync::mpsc::Sender<()>,
    done: std::sync::mpsc::Receiver<Result<(), StorageError>>,
    thread: std::thread::JoinHandle<()>,
}

impl BarrierThread {
    fn spawn(vol: Arc<Volume>, counters: Arc<Counters>) -> BarrierThread {
        let (start, start_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("barrier".into())
            .spawn(crate::fatal_on_panic("barrier", move || {
                while start_rx.recv().is_ok() {
                    let t = Instant::now();
                    let r = vol.sync_all();
                    counters.barriers.fetch_add(1, Ordering::Relaxed);
                    counters.barrier_usec.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    counters.barrier_seconds.observe(t.elapsed().as_secs_f64());
                    if done_tx.send(r).is_err() {
                        return;
                    }
                }
            }))
            .expect("cannot start the barrier thread");
        BarrierThread { start, done, thread }
    }
}

/// The engine's shell around its core.
struct Shell {
    core: Core,
    vol: Arc<Volume>,
    lease: Arc<dyn Lease>,
    barrier: BarrierThread,
    barriers_tx: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Shell {
    fn accept(&mut self, m: Msg) {
        match m {
            Msg::Job(j) => self.core.submit(j),
            Msg::Add(cell) => self.core.add(cell),
            Msg::Stop { partition, done } => self.core.stop(partition, done),
        }
    }

    /// Send what the core decided may go out.
    fn send_answers(&mut self) {
        for (reply, outcome) in self.core.take_answers() {
            let _ = reply.send(outcome);
        }
        for (done, result) in self.core.take_stopped() {
            let _ = done.send(result);
        }
        let released = self.core.take_released();
        if !released.is_empty() {
            crate::free_later(released);
        }
    }

    /// Wait for the running barrier, if any, and answer its cycle.
    fn complete_barrier(&mut self) {
        if !self.core.barrier_running() {
            return;
        }
        let ok = matches!(self.barrier.done.recv(), Ok(Ok(())));
        self.core.barrier_done(ok, self.lease.valid());
        if ok {
            self.barriers_tx.send_replace(self.core.barriers());
        }
        self.send_answers();
    }

    /// One cycle over what `rx` holds; false once the queue is closed.
    fn cycle(&mut self, rx: &mut mpsc::Receiver<Msg>, abandon: &AtomicBool) -> bool {
        // 1. Gather: wait for work unless a barrier is running, then take
        //    what else is queued.
        let mut open = true;
        if !self.core.barrier_running() {
            match rx.blocking_recv() {
                Some(m) => self.accept(m),
                None => open = false,
            }
        }
        while open && self.core.queued() < BATCH_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(m) => self.accept(m),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        // 2. The lease, before touching anything. A running barrier's cycle
        //    is answered first: waiting for a lease must not delay it.
        if self.core.queued() > 0 && !self.lease.valid() {
            self.complete_barrier();
            wait_for_lease(&*self.lease, abandon);
        }
        // 3. Execute and stage while the previous cycle's barrier runs.
        self.core.execute(now_ms(), self.lease.valid());
        self.send_answers();
        // 4. The previous barrier; only then may this cycle publish.
        self.complete_barrier();
        // 5. Publish, and start the cycle's barrier if it needs one.
        if self.vol.is_failed() {
            self.core.poison();
        }
        if let Some(barrier) = self.core.publish(self.lease.valid()) {
            debug_assert_eq!(barrier.number, self.core.barriers() + 1);
            if self.barrier.start.send(()).is_err() {
                // The barrier thread is gone: nothing of this cycle is durable.
                self.core.barrier_done(false, self.lease.valid());
            }
        }
        self.send_answers();
        // 6. Stops, once nothing of theirs waits for a barrier.
        if self.core.stops_pending() || !open {
            self.complete_barrier();
            let finished = self.core.finish_stops();
            assert!(finished, "stops are finished after the cycle published and its barrier completed");
            self.send_answers();
        }
        open
    }
}

/// The engine's thread: serves partitions until its queue closes.
///
/// `barriers_tx` publishes the count of completed volume syncs, for the
/// read fast path.
pub fn run(
    vol: Arc<Volume>,
    mut rx: mpsc::Receiver<Msg>,
    lease: Arc<dyn Lease>,
    abandon: Arc<AtomicBool>,
    barriers_tx: Arc<tokio::sync::watch::Sender<u64>>,
    counters: Arc<Counters>,
) {
    let barrier = BarrierThread::spawn(vol.clone(), counters.clone());
    let mut shell = Shell { core: Core::new(counters), vol, lease, barrier, barriers_tx };
    while shell.cycle(&mut rx, &abandon) {}
    let Shell { barrier, .. } = shell;
    drop(barrier.start);
    let _ = barrier.thread.join();
}

/// Wait (briefly) for a lease that is being renewed; false if it is not.
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

#[cfg(test)]
mod tests {
    //! The engine's fence rules, deterministically: a second owner takes the
    //! partition over while the first one's engine is still serving it.

    use super::*;
    use crate::resp::Reply;
    use bytes::Bytes;
    use sharedisk_storage::{CreateOptions, Op, Partition, ProcessIdentity, Volume};

    struct FakeLease(AtomicBool);
    impl Lease for FakeLease {
        fn valid(&self) -> bool {
            self.0.load(Ordering::Acquire)
        }
    }

    struct Running {
        tx: mpsc::Sender<Msg>,
        lease: Arc<FakeLease>,
        abandon: Arc<AtomicBool>,
        thread: std::thread::JoinHandle<()>,
    }

    /// An engine serving partition 0, claimed with a fresh key.
    fn start(vol: &Arc<Volume>, key: u64) -> Running {
        let reg = vol.register(key, ProcessIdentity::current()).unwrap();
        let part = Partition::claim(vol.clone(), reg, 0).unwrap();
        let (tx, rx) = mpsc::channel(crate::limits::ENGINE_QUEUE_MAX);
        let lease = Arc::new(FakeLease(AtomicBool::new(true)));
        let abandon = Arc::new(AtomicBool::new(false));
        let (v, l, a): (_, Arc<dyn Lease>, _) = (vol.clone(), lease.clone(), abandon.clone());
        let barriers = Arc::new(tokio::sync::watch::channel(0).0);
        let thread = std::thread::spawn(move || run(v, rx, l, a, barriers, Default::default()));
        tx.blocking_send(Msg::Add(Arc::new(ServedPartition::new(part)))).unwrap();
        Running { tx, lease, abandon, thread }
    }

    fn send(w: &Running, cmds: Vec<Vec<Bytes>>, multi: bool) -> oneshot::Receiver<Outcome> {
        let (reply, rx) = oneshot::channel();
        let cmds = cmds.into_iter().map(|args| crate::commands::Command::parse(args).unwrap()).collect();
        w.tx.blocking_send(Msg::Job(Job { partition: 0, request: Request::Exec { cmds, multi }, reply })).unwrap();
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
        p.append(&[Op::Put { key: b"k".to_vec(), value: b"new".to_vec().into(), expire_at_ms: 0 }], now_ms()).unwrap();
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
        assert_eq!(b.value(b"k", now_ms()).unwrap(), b"new");
        drop(a.tx);
        a.thread.join().unwrap();
        // Nothing of the deposed owner became visible to a later owner either.
        drop(b);
        let reg = vol.register(0xC, ProcessIdentity::current()).unwrap();
        let c = Partition::claim(vol.clone(), reg, 0).unwrap();
        assert_eq!(c.value(b"k", now_ms()).unwrap(), b"new");
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
        a.tx.blocking_send(Msg::Stop { partition: 0, done }).unwrap();
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
        // A record larger than a segment (a key of 70,000 bytes: keys are
        // not blobs) fails alone; the rest commits.
        let long_key = "k".repeat(70_000);
        let r1 = send(&a, vec![words(&["SET", &long_key, "v"])], false);
        let r2 = send(&a, vec![words(&["SET", "y", "1"])], false);
        assert!(matches!(r1.blocking_recv().unwrap(), Outcome::Reply(Reply::Error(e)) if e.starts_with("ERR record of")));
        assert!(matches!(r2.blocking_recv().unwrap(), Outcome::Reply(Reply::Simple(_))));
        assert!(matches!(ask(&a, &["EXISTS", &long_key, "y"]), Outcome::Reply(Reply::Int(1))));
        // A batch of small values larger than a segment spans segments: it commits whole.
        let value = "v".repeat(20_000);
        let mut mset = vec!["MSET".to_owned()];
        for i in 0..8 {
            mset.extend([format!("big{i}"), value.clone()]);
        }
        assert!(matches!(ask(&a, &mset.iter().map(String::as_str).collect::<Vec<_>>()), Outcome::Reply(Reply::Simple(_))));
        assert!(matches!(ask(&a, &["EXISTS", "big0", "big7"]), Outcome::Reply(Reply::Int(2))));
        // A value larger than a record is a blob: it commits.
        let huge = "h".repeat(200_000);
        assert!(matches!(ask(&a, &["SET", "huge", &huge]), Outcome::Reply(Reply::Simple(_))));
        assert!(matches!(ask(&a, &["STRLEN", "huge"]), Outcome::Reply(Reply::Int(200_000))));
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
                    p.value(format!("k{j}").as_bytes(), now_ms()),
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
