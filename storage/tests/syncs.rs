//! Whole-volume syncs shared by the callers of one process (group commit):
//! a caller returns only once a sync that started after its call has
//! returned, and a failed sync fails everyone who waited on it.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sharedisk_storage::media::{Media, MemMedia};
use sharedisk_storage::{CreateOptions, Error, Volume};

/// A media whose whole-volume syncs are held until the test releases them.
/// A sync covers what was stored when it started (the bytes are copied
/// then), as an fdatasync need not cover stores made while it runs.
#[derive(Debug)]
struct Gated {
    inner: MemMedia,
    state: Mutex<Gate>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Gate {
    started: u64,
    released: u64,
    /// Syncs (by number) that fail.
    failing: Vec<u64>,
    durable: Vec<u8>,
}

// SAFETY: delegates the memory to `inner`, which upholds the contract.
unsafe impl Media for Gated {
    fn base(&self) -> *mut u8 {
        self.inner.base()
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn flush(&self, offset: usize, len: usize) -> io::Result<()> {
        self.inner.flush(offset, len)
    }
    fn sync_all(&self) -> io::Result<()> {
        let covered = self.inner.snapshot();
        let mut g = self.state.lock().unwrap();
        g.started += 1;
        let mine = g.started;
        self.changed.notify_all();
        while g.released < mine {
            g = self.changed.wait(g).unwrap();
        }
        if g.failing.contains(&mine) {
            return Err(io::Error::other("injected: the device lost the writes"));
        }
        g.durable = covered;
        Ok(())
    }
}

impl Gated {
    fn wait_started(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut g = self.state.lock().unwrap();
        while g.started < n {
            let left = deadline.checked_duration_since(Instant::now()).expect("sync {n} never started");
            g = self.changed.wait_timeout(g, left).unwrap().0;
        }
    }
    fn release(&self, n: u64) {
        let mut g = self.state.lock().unwrap();
        g.released = g.released.max(n);
        self.changed.notify_all();
    }
    fn started(&self) -> u64 {
        self.state.lock().unwrap().started
    }
}

/// A fresh volume on a gated media, and the offset of a spare word at its end.
fn gated_volume() -> (Arc<Volume>, Arc<Gated>, usize) {
    let (vol, mem) = Volume::create_in_memory(&CreateOptions::new(4 << 20, 2), None).unwrap();
    drop(vol);
    let media = Arc::new(Gated { inner: MemMedia::from_image(&mem.snapshot(), None), state: Mutex::default(), changed: Condvar::new() });
    let vol = Arc::new(Volume::from_media(media.clone()).unwrap());
    let spare = media.len() - 8;
    (vol, media, spare)
}

fn store(media: &Gated, offset: usize, value: u64) {
    // SAFETY: in range and 8-aligned; the media's words are atomics.
    unsafe { &*(media.base().add(offset) as *const AtomicU64) }.store(value, Ordering::Release);
}

struct Caller {
    done: Arc<AtomicBool>,
    /// The thread's id once it is about to call `sync_all`.
    tid: Arc<AtomicI32>,
    thread: std::thread::JoinHandle<Result<(), Error>>,
}

fn spawn_sync(vol: &Arc<Volume>) -> Caller {
    let (vol, done, tid) = (vol.clone(), Arc::new(AtomicBool::new(false)), Arc::new(AtomicI32::new(0)));
    let (flag, id) = (done.clone(), tid.clone());
    let thread = std::thread::spawn(move || {
        id.store(rustix::thread::gettid().as_raw_nonzero().get(), Ordering::Release);
        let r = vol.sync_all();
        flag.store(true, Ordering::Release);
        r
    });
    Caller { done, tid, thread }
}

impl Caller {
    /// Whether it is asleep inside `sync_all` (the group's lock or condvar:
    /// nothing else blocks after it noted its id).
    fn blocked(&self) -> bool {
        let tid = self.tid.load(Ordering::Acquire);
        tid != 0
            && std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('S')))
                .unwrap_or(false)
    }
}

#[test]
fn a_sync_already_running_does_not_count_for_a_later_caller() {
    let (vol, media, spare) = gated_volume();
    let first = spawn_sync(&vol);
    media.wait_started(1);
    // Stored while sync 1 runs: sync 1 does not cover it.
    store(&media, spare, 0x5eed);
    let second = spawn_sync(&vol);
    wait_until(|| second.blocked());
    media.release(1);
    first.thread.join().unwrap().unwrap();
    // The second caller must start a sync of its own rather than return
    // on the one that was running when it came.
    media.wait_started(2);
    assert!(!second.done.load(Ordering::Acquire), "returned before a sync that covers its stores");
    media.release(2);
    second.thread.join().unwrap().unwrap();
    let durable = media.state.lock().unwrap().durable.clone();
    assert_eq!(u64::from_le_bytes(durable[spare..spare + 8].try_into().unwrap()), 0x5eed);
}

#[test]
fn callers_that_wait_on_a_running_sync_share_the_next_one() {
    let (vol, media, _) = gated_volume();
    let first = spawn_sync(&vol);
    media.wait_started(1);
    let waiters: Vec<_> = (0..4).map(|_| spawn_sync(&vol)).collect();
    // Let sync 1 finish once all four wait inside `sync_all`.
    wait_until(|| waiters.iter().all(Caller::blocked));
    assert_eq!(media.started(), 1, "sync 1 is held: nobody else may start one");
    media.release(u64::MAX);
    first.thread.join().unwrap().unwrap();
    for w in waiters {
        w.thread.join().unwrap().unwrap();
    }
    assert_eq!(media.started(), 2, "four callers that came during one sync need only one more");
}

#[test]
fn a_failed_sync_fails_its_waiters_and_no_later_sync_hides_it() {
    let (vol, media, _) = gated_volume();
    media.state.lock().unwrap().failing.push(1);
    let first = spawn_sync(&vol);
    media.wait_started(1);
    let second = spawn_sync(&vol);
    wait_until(|| second.blocked());
    media.release(u64::MAX);
    assert!(matches!(first.thread.join().unwrap(), Err(Error::Media(_))));
    // Sync 2 would succeed, but what sync 1 failed to write may be gone.
    assert!(matches!(second.thread.join().unwrap(), Err(Error::HandleFailed)));
    assert!(matches!(vol.sync_all(), Err(Error::HandleFailed)));
    assert_eq!(media.started(), 1, "no sync after a failed one");
}

fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached within 10 s");
        std::thread::yield_now();
    }
}
