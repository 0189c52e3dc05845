//! The hot standbys this server keeps of other servers' partitions.
//!
//! The lock manager names a standby per partition in the slot map
//! (`ClusterMap::standbys`). [`Standbys`] keeps one
//! [`sharedisk_storage::Standby`] per partition the map gives us, on one
//! thread of its own ("standby"), which polls their heads and applies what
//! their owners publish; a new standby is built (a read of the whole live
//! log) on that same thread, one at a time, so building standbys never
//! competes with more than one core's worth of the server's work and never
//! touches the tokio runtime that carries the lock-manager session.
//!
//! When the lock manager grants us a partition we keep a standby of, the
//! claim takes it ([`Standbys::take`]) and reads only the lag
//! ([`sharedisk_storage::Standby::claim`]). A standby never writes to the
//! volume, so keeping, dropping or losing one is never a safety matter: the
//! worst a stale one costs is a cold claim.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sharedisk_storage::{Standby, Volume};

/// How long the standby thread sleeps when no followed head moved.
const IDLE_POLL: Duration = Duration::from_micros(500);

/// One partition's standby, or the mark that the thread is polling it.
#[derive(Debug)]
enum Slot {
    Idle(Box<Standby>),
    /// Taken out by the thread for a poll (possibly a long resync).
    Polling,
}

/// What a standby looked like at its last poll, for INFO and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StandbyView {
    pub synced: bool,
    /// Bytes of published log not applied yet at the last poll (None: not synced).
    pub lag_bytes: Option<u64>,
    /// Milliseconds since the index was last known to match the head.
    pub stale_ms: u64,
    pub keys: usize,
    pub resyncs: u64,
}

#[derive(Debug, Default)]
struct Inner {
    slots: BTreeMap<u32, Slot>,
    views: BTreeMap<u32, (StandbyView, Instant)>,
    /// Standbys a claim is about to take: a slot map that no longer names
    /// us as their standby (it names us as the owner) must not drop them.
    reserved: BTreeSet<u32>,
}

/// The standbys of one server, and the thread that keeps them hot.
#[derive(Debug)]
pub struct Standbys {
    vol: Arc<Volume>,
    inner: Mutex<Inner>,
    returned: Condvar,
    stop: AtomicBool,
}

impl Standbys {
    /// Start the standby thread (it runs until [`Standbys::stop`]).
    pub fn start(vol: Arc<Volume>) -> std::io::Result<Arc<Standbys>> {
        let me = Arc::new(Standbys { vol, inner: Mutex::new(Inner::default()), returned: Condvar::new(), stop: AtomicBool::new(false) });
        let runner = me.clone();
        std::thread::Builder::new().name("standby".into()).spawn(move || runner.run())?;
        Ok(me)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep standbys of exactly `wanted` (from the slot map): new ones are
    /// built in the background; ones no longer wanted are dropped.
    pub fn want(&self, wanted: &BTreeSet<u32>) {
        let mut inner = self.lock();
        let dropped: Vec<Slot> = {
            let gone: Vec<u32> = inner.slots.keys().copied().filter(|p| !wanted.contains(p) && !inner.reserved.contains(p)).collect();
            gone.iter().filter_map(|p| inner.slots.remove(p)).collect()
        };
        if !dropped.is_empty() {
            // Not here, under the lock, on the control task: see `free_later`.
            crate::free_later(dropped);
        }
        inner.views.retain(|p, _| wanted.contains(p));
        for &p in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = inner.slots.entry(p) {
                match Standby::new(self.vol.clone(), p) {
                    Ok(s) => {
                        slot.insert(Slot::Idle(Box::new(s)));
                    }
                    Err(e) => eprintln!("standby: cannot follow partition {p}: {e}"),
                }
            }
        }
    }

    /// Keep the standby of `partition` for a claim that will [`Standbys::take`]
    /// it (slot maps no longer drop it); false if we keep none. Never blocks.
    pub fn reserve(&self, partition: u32) -> bool {
        let mut inner = self.lock();
        let follows = inner.slots.contains_key(&partition);
        if follows {
            inner.reserved.insert(partition);
        }
        follows
    }

    /// Take the standby of `partition` for a claim (waiting for a poll in
    /// progress to finish: call it where blocking is fine), if we keep one.
    pub fn take(&self, partition: u32) -> Option<Standby> {
        let mut inner = self.lock();
        inner.reserved.remove(&partition);
        loop {
            match inner.slots.remove(&partition) {
                None => return None,
                Some(Slot::Idle(s)) => {
                    inner.views.remove(&partition);
                    return Some(*s);
                }
                Some(Slot::Polling) => {
                    inner.slots.insert(partition, Slot::Polling);
                    inner = self.returned.wait(inner).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// The partitions we keep standbys of, with their state at the last poll.
    pub fn views(&self) -> BTreeMap<u32, StandbyView> {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .views
            .iter()
            .map(|(p, (v, synced_at))| (*p, StandbyView { stale_ms: now.duration_since(*synced_at).as_millis() as u64, ..*v }))
            .collect()
    }

    /// Wait until every standby we keep matches its owner's head (or, after
    /// a moment, if the slot map gives us none), at most `patience`.
    pub async fn wait_synced(&self, patience: Duration) {
        let start = Instant::now();
        while start.elapsed() < patience {
            let (kept, synced) = {
                let inner = self.lock();
                let synced = inner.views.values().filter(|(v, _)| v.synced).count();
                (inner.slots.len(), synced)
            };
            if (kept > 0 && synced == kept) || (kept == 0 && start.elapsed() >= Duration::from_millis(300)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn run(&self) {
        while !self.stop.load(Ordering::Acquire) {
            let partitions: Vec<u32> = self.lock().slots.keys().copied().collect();
            let mut progressed = false;
            for p in partitions {
                progressed |= self.poll_one(p);
            }
            if !progressed {
                std::thread::sleep(IDLE_POLL);
            }
        }
    }

    /// Poll one standby outside the lock; true if it applied anything.
    fn poll_one(&self, partition: u32) -> bool {
        let mut standby = {
            let mut inner = self.lock();
            match inner.slots.get_mut(&partition) {
                Some(slot @ Slot::Idle(_)) => match std::mem::replace(slot, Slot::Polling) {
                    Slot::Idle(s) => s,
                    Slot::Polling => unreachable!("matched Idle"),
                },
                _ => return false,
            }
        };
        let polled = standby.poll();
        let progressed = polled.as_ref().is_ok_and(|p| p.records > 0 || p.resynced);
        if let Err(e) = &polled {
            eprintln!("standby: partition {partition}: {e}");
        }
        let stats = standby.stats();
        let view = StandbyView {
            synced: standby.is_synced(),
            lag_bytes: standby.lag_bytes(),
            stale_ms: 0,
            keys: standby.keyspace().len(),
            resyncs: stats.resyncs,
        };
        let mut inner = self.lock();
        // Still wanted (`want` may have dropped it meanwhile)?
        if let Some(slot) = inner.slots.get_mut(&partition) {
            *slot = Slot::Idle(standby);
            let now = Instant::now();
            let synced_at = match inner.views.get(&partition) {
                Some((_, at)) if !view.synced => *at,
                _ => now,
            };
            inner.views.insert(partition, (view, synced_at));
        }
        drop(inner);
        self.returned.notify_all();
        progressed
    }
}
