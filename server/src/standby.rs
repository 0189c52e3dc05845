//! The hot standbys this server keeps of other servers' partitions.
//!
//! The lock manager names a standby per partition in the slot map
//! (`ClusterMap::standbys`). [`Standbys`] keeps one
//! [`sharedisk_storage::Standby`] per partition the map gives us, on two
//! threads of their own, neither the tokio runtime that carries the
//! lock-manager session:
//! * "standby" follows the synced ones: polls their heads and applies what
//!   their owners publish;
//! * "standby-sync" builds the others (a read of the whole live log), one at
//!   a time, at a lower CPU priority ([`SYNC_THREAD_NICE`]). A takeover is
//!   when standbys get built: the lock manager places new ones for the dead
//!   server's partitions as soon as it sees the connection close, and at
//!   the same CPU priority their builds took most of a 2-core machine from
//!   the claims that were ending the outage (at 200 MB per partition, a
//!   kill -9 took 15–30 ms instead of 5).
//!
//! When the lock manager grants us a partition we keep a standby of, the
//! claim takes it ([`Standbys::take`]) and reads only the lag
//! ([`sharedisk_storage::Standby::claim`]). A standby never writes to the
//! volume, so keeping, dropping or losing one is never a safety matter: the
//! worst a stale one costs is a cold claim.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sharedisk_storage::{Standby, Volume};

use crate::commands;
use crate::resp::Reply;

/// How long the standby thread sleeps when no followed head moved.
const IDLE_POLL: Duration = Duration::from_micros(500);
/// How long the building thread sleeps when it found nothing to build.
const SYNC_IDLE_POLL: Duration = Duration::from_millis(2);
/// A standby the slot map gives us is built only once it has been ours
/// this long. Placements change in bursts, a takeover's above all: the lock
/// manager re-places the dead server's standbys as soon as it sees its
/// connection close, while the survivors' claims are still running. Even
/// at a low priority, builds then took CPU and disk from those claims (the
/// kernel half of a build, its reads and page clearing, is not preempted
/// like its user half). A build takes about a second per 200 MB of log, so
/// waiting this long first costs little, and placements that are undone at
/// once cost nothing.
pub const BUILD_DELAY: Duration = Duration::from_millis(250);
/// The nice value of the thread that builds standbys (a weight of about a
/// tenth of a normal thread's when the CPU is contended; all of an idle one).
pub const SYNC_THREAD_NICE: i32 = 10;

/// Which standbys a thread polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Duty {
    /// The synced ones, never rebuilding.
    Follow,
    /// The others: rebuild from the whole live log.
    Build,
}

/// Whether a standby last synced `age` ago may answer a `READONLY` read
/// (the rule the shell and the simulation share).
pub(crate) fn fresh_enough(age: Duration, max_lag: Duration) -> bool {
    #[cfg(test)]
    if crate::mutant::is(crate::mutant::Mutant::StaleReplicaReads) {
        return true;
    }
    age <= max_lag
}

/// Run a read-only command on a standby's index; `None` if it turned out
/// to write, or a value's record was no longer the one the index names (the
/// owner's cleaner got there first): the owner must answer it.
pub(crate) fn execute_read(standby: &Standby, cmd: &commands::Command) -> Option<Reply> {
    struct OnStandby<'a> {
        standby: &'a Standby,
        raced: Cell<bool>,
    }
    impl commands::Published for OnStandby<'_> {
        fn get(&self, key: &[u8], now_ms: u64) -> Option<commands::Value> {
            match self.standby.value_and_expiry(key, now_ms) {
                Ok(v) => v.map(|(data, expire_at_ms)| commands::Value { data: data.into(), expire_at_ms }),
                Err(_) => {
                    self.raced.set(true);
                    None
                }
            }
        }
        fn expiry(&self, key: &[u8], now_ms: u64) -> Option<u64> {
            self.standby.get(key, now_ms).map(|e| e.expire_at_ms)
        }
        fn kind(&self, key: &[u8], now_ms: u64) -> Option<commands::Type> {
            self.standby.get(key, now_ms).map(|e| if e.is_hash() { commands::Type::Hash } else { commands::Type::String })
        }
        fn holds(&self, key: &[u8]) -> bool {
            self.standby.keyspace().holds(key)
        }
        fn field(&self, key: &[u8], field: &[u8], now_ms: u64) -> Option<bytes::Bytes> {
            match self.standby.field_value(key, field, now_ms) {
                Ok(v) => v.map(Into::into),
                Err(_) => {
                    self.raced.set(true);
                    None
                }
            }
        }
        fn has_field(&self, key: &[u8], field: &[u8], now_ms: u64) -> bool {
            self.standby.keyspace().fields(key, now_ms).is_some_and(|f| f.contains_key(field))
        }
        fn field_count(&self, key: &[u8], now_ms: u64) -> usize {
            self.standby.keyspace().fields(key, now_ms).map_or(0, |f| f.len())
        }
        fn fields(&self, key: &[u8], now_ms: u64, values: bool) -> Vec<(Vec<u8>, bytes::Bytes)> {
            let Some(fields) = self.standby.keyspace().fields(key, now_ms) else { return Vec::new() };
            let names: Vec<Vec<u8>> = fields.keys().map(|k| k.to_vec()).collect();
            if !values {
                return names.into_iter().map(|f| (f, bytes::Bytes::new())).collect();
            }
            names.into_iter().filter_map(|f| self.field(key, &f, now_ms).map(|v| (f, v))).collect()
        }
    }
    let view = OnStandby { standby, raced: Cell::new(false) };
    let staged = commands::Overlay::new();
    let mut t = commands::Txn::new(&view, &staged, crate::engine::now_ms());
    let reply = commands::execute(&mut t, cmd);
    (t.ops.is_empty() && !view.raced.get()).then_some(reply)
}

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
    /// The sequence number of the last record applied (`WAIT` compares it
    /// with the owner's `Partition::published_seq`).
    pub applied_seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    slots: BTreeMap<u32, Slot>,
    views: BTreeMap<u32, (StandbyView, Instant)>,
    /// Standbys a claim is about to take: a slot map that no longer names
    /// us as their standby (it names us as the owner) must not drop them.
    reserved: BTreeSet<u32>,
    /// When each standby was given to us (see [`BUILD_DELAY`]).
    since: BTreeMap<u32, Instant>,
}

/// The standbys of one server, and the thread that keeps them hot.
#[derive(Debug)]
pub struct Standbys {
    vol: Arc<Volume>,
    inner: Mutex<Inner>,
    returned: Condvar,
    /// The same event for connections waiting to read from a standby.
    polled: tokio::sync::Notify,
    stop: AtomicBool,
}

/// What [`Standbys::read`] could do.
#[derive(Debug, PartialEq, Eq)]
pub enum Read<R> {
    /// Run on an index that matched the owner's head within the bound.
    Done(R),
    /// A poll is in progress, or the last one is older than the bound (or
    /// did not end synced): wait for [`Standbys::polled`] and try again.
    Wait,
    /// We keep no standby of that partition.
    NotKept,
}

impl Standbys {
    /// Start the standby threads (they run until [`Standbys::stop`]).
    pub fn start(vol: Arc<Volume>) -> std::io::Result<Arc<Standbys>> {
        let me = Standbys::new(vol);
        let follower = me.clone();
        std::thread::Builder::new().name("standby".into()).spawn(crate::fatal_on_panic("standby", move || follower.run(Duty::Follow)))?;
        let builder = me.clone();
        std::thread::Builder::new().name("standby-sync".into()).spawn(crate::fatal_on_panic("standby-sync", move || {
            // This thread only (a thread id names one thread to setpriority).
            // Raising one's own nice value needs no privilege; if it fails
            // anyway, building goes on at the normal priority.
            if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), SYNC_THREAD_NICE) {
                tracing::warn!(error = %e, "standby: cannot lower the priority of the building thread: {e}");
            }
            builder.run(Duty::Build)
        }))?;
        Ok(me)
    }

    /// Standbys nobody polls yet: [`Standbys::start`] runs the thread that
    /// does (tests poll by hand).
    fn new(vol: Arc<Volume>) -> Arc<Standbys> {
        Arc::new(Standbys {
            vol,
            inner: Mutex::new(Inner::default()),
            returned: Condvar::new(),
            polled: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
        })
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
        let Inner { slots, since, .. } = &mut *inner;
        since.retain(|p, _| slots.contains_key(p));
        for &p in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = slots.entry(p) {
                match Standby::new(self.vol.clone(), p) {
                    Ok(s) => {
                        slot.insert(Slot::Idle(Box::new(s)));
                        since.insert(p, Instant::now());
                    }
                    Err(e) => tracing::warn!(partition = p, error = %e, "standby: cannot follow partition {p}: {e}"),
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

    /// Run `f` on the standby of `partition` if its index matched the
    /// owner's published head at most `max_lag` ago: then whatever the
    /// owner published more than `max_lag` before this call is in it (the
    /// time kept is taken before the poll loads the head word). `f` runs
    /// under the lock the standby thread takes between polls: keep it short.
    pub fn read<R>(&self, partition: u32, max_lag: Duration, f: impl FnOnce(&Standby) -> R) -> Read<R> {
        let inner = self.lock();
        match inner.slots.get(&partition) {
            None => Read::NotKept,
            Some(Slot::Polling) => Read::Wait,
            Some(Slot::Idle(s)) => match inner.views.get(&partition) {
                Some((v, synced_at)) if v.synced && fresh_enough(synced_at.elapsed(), max_lag) => Read::Done(f(s)),
                _ => Read::Wait,
            },
        }
    }

    /// Completes after the next poll of any standby (create it before
    /// [`Standbys::read`] answers `Wait`, and `enable` it, to miss none).
    pub fn polled(&self) -> tokio::sync::futures::Notified<'_> {
        self.polled.notified()
    }

    /// Wait until our standby of `partition` is synced and has applied the
    /// record `seq`, at most until `until`; the sequence number it has
    /// applied then (None: we keep no standby of it, or it is not synced).
    pub async fn wait_applied(&self, partition: u32, seq: u64, until: Instant) -> Option<u64> {
        loop {
            let polled = self.polled();
            tokio::pin!(polled);
            polled.as_mut().enable();
            let (kept, applied) = {
                let inner = self.lock();
                let applied = inner.views.get(&partition).filter(|(v, _)| v.synced).map(|(v, _)| v.applied_seq);
                (inner.slots.contains_key(&partition), applied)
            };
            if !kept || applied.is_some_and(|a| a >= seq) || tokio::time::timeout_at(until.into(), polled).await.is_err() {
                return applied;
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

    fn run(&self, duty: Duty) {
        while !self.stop.load(Ordering::Acquire) {
            let partitions: Vec<u32> = self.lock().slots.keys().copied().collect();
            let mut progressed = false;
            for p in partitions {
                progressed |= self.poll_one(p, Some(duty));
            }
            if !progressed {
                std::thread::sleep(if duty == Duty::Follow { IDLE_POLL } else { SYNC_IDLE_POLL });
            }
        }
    }

    /// Poll one standby outside the lock if `duty` covers it (None: any,
    /// following and building alike); true if it applied anything.
    fn poll_one(&self, partition: u32, duty: Option<Duty>) -> bool {
        let mut standby = {
            let mut inner = self.lock();
            let Inner { slots, since, .. } = &mut *inner;
            // A first build waits until the standby has been ours a while.
            let new = since.get(&partition).is_some_and(|t| t.elapsed() < BUILD_DELAY);
            match slots.get_mut(&partition) {
                Some(Slot::Idle(s)) if duty.is_some_and(|d| (d == Duty::Follow) != s.is_synced()) => return false,
                Some(Slot::Idle(s)) if duty == Some(Duty::Build) && new && s.stats().resyncs == 0 => return false,
                Some(slot @ Slot::Idle(_)) => match std::mem::replace(slot, Slot::Polling) {
                    Slot::Idle(s) => s,
                    Slot::Polling => unreachable!("matched Idle"),
                },
                _ => return false,
            }
        };
        // Taken before the poll loads the head word: if the poll ends synced,
        // everything published before this instant is in the index.
        let started = Instant::now();
        let polled = if duty == Some(Duty::Follow) { standby.poll_follow_only() } else { standby.poll() };
        let progressed = polled.as_ref().is_ok_and(|p| p.records > 0 || p.resynced);
        if let Err(e) = &polled {
            tracing::warn!(partition, error = %e, "standby: partition {partition}: {e}");
        }
        let stats = standby.stats();
        let view = StandbyView {
            synced: standby.is_synced(),
            lag_bytes: standby.lag_bytes(),
            stale_ms: 0,
            keys: standby.keyspace().len(),
            resyncs: stats.resyncs,
            applied_seq: standby.last_seq(),
        };
        let mut inner = self.lock();
        // Still wanted (`want` may have dropped it meanwhile)?
        if let Some(slot) = inner.slots.get_mut(&partition) {
            *slot = Slot::Idle(standby);
            let synced_at = match inner.views.get(&partition) {
                Some((_, at)) if !view.synced => *at,
                _ => started,
            };
            inner.views.insert(partition, (view, synced_at));
        }
        drop(inner);
        self.returned.notify_all();
        self.polled.notify_waiters();
        progressed
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Standbys polled by hand, for tests of what reads them.
    pub(crate) fn unpolled(vol: Arc<Volume>) -> Arc<Standbys> {
        Standbys::new(vol)
    }

    /// Poll every standby once, as the threads' loops do.
    pub(crate) fn poll_all(s: &Standbys) {
        let partitions: Vec<u32> = s.lock().slots.keys().copied().collect();
        for p in partitions {
            s.poll_one(p, None);
        }
    }

    fn synced(s: &Standbys, partition: u32) -> bool {
        s.views().get(&partition).is_some_and(|v| v.synced)
    }

    /// The follower never builds; the builder leaves a standby placed less
    /// than BUILD_DELAY ago alone, then builds it, and leaves it to the
    /// follower once synced; a standby lost later is rebuilt at once.
    #[test]
    fn the_follower_never_builds_and_a_new_standby_is_built_after_the_delay() {
        use sharedisk_storage::{CreateOptions, Op, Partition, ProcessIdentity};
        let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(744 << 10, 1) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let reg = vol.register(0xA, ProcessIdentity::current()).unwrap();
        let mut owner = Partition::claim(vol.clone(), reg, 0).unwrap();
        let mut put = |k: u64| {
            owner
                .append(&[Op::Put { key: format!("k{}", k % 20).into_bytes(), value: vec![b'v'; 300].into(), expire_at_ms: 0 }], 0)
                .unwrap();
            owner.commit().unwrap();
        };
        put(0);
        let s = unpolled(vol.clone());
        s.want(&BTreeSet::from([0]));
        assert!(!s.poll_one(0, Some(Duty::Follow)) && !synced(&s, 0), "the follower built a standby");
        assert!(!s.poll_one(0, Some(Duty::Build)) && !synced(&s, 0), "built before BUILD_DELAY");
        // Placed long enough ago (backdated: no sleep).
        s.lock().since.insert(0, Instant::now() - BUILD_DELAY);
        assert!(s.poll_one(0, Some(Duty::Build)) && synced(&s, 0));
        put(1);
        assert!(!s.poll_one(0, Some(Duty::Build)), "the builder polled a synced standby");
        assert!(s.poll_one(0, Some(Duty::Follow)) && synced(&s, 0));
        // Lapped by the owner's cleaner: the follower gives up, and the
        // builder rebuilds it at once (only a first build waits).
        s.lock().since.insert(0, Instant::now());
        for k in 2..3000 {
            put(k);
        }
        s.poll_one(0, Some(Duty::Follow));
        assert!(!synced(&s, 0), "the follower followed a lapped standby");
        assert_eq!(s.views()[&0].resyncs, 1, "the follower rebuilt");
        assert!(s.poll_one(0, Some(Duty::Build)) && synced(&s, 0));
        assert_eq!(s.views()[&0].resyncs, 2);
    }
}
