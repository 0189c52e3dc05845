//! Which lock manager is active: seats and terms on the volume.
//!
//! Every lock-manager process holds a [`Seat`] in the volume's lock-manager
//! area (`sharedisk_storage::lmarea`). One of them holds the lease word and
//! is active in a term ([`Reign`]); the others [`Seat::campaign`]: they
//! watch the word and take it, raising the term, when its holder is
//! provably dead, gave its seat back, or has not renewed for
//! `Timeouts::lockmgr_lease`. Every write of the active one checks the term
//! (`Volume::write_lockmgr_state`, [`Reign::is_current`] before a fence), so
//! a deposed one that wakes up changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sharedisk_storage::layout::LmLease;
use sharedisk_storage::{Liveness, LmSeat, ProcessIdentity, SeatInfo, Volume};

/// This process's seat on the volume.
#[derive(Debug)]
pub struct Seat {
    vol: Arc<Volume>,
    seat: LmSeat,
}

fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        let id = h.finish() & !sharedisk_storage::layout::SEAT_CLAIMING;
        if id != 0 {
            return id;
        }
    }
}

impl Seat {
    /// Take a free seat, or one whose lock manager is provably dead.
    pub fn claim(vol: Arc<Volume>, addr: &str) -> Result<Seat, sharedisk_storage::Error> {
        let seat = vol.claim_lockmgr_seat(random_id(), ProcessIdentity::current(), addr, |s| s.identity.liveness() == Liveness::Dead)?;
        Ok(Seat { vol, seat })
    }

    /// For tests and the simulation, which restart lock managers inside one
    /// process: seats held by this very process count as free too. The
    /// caller vouches that no lock manager of this process is still running.
    pub fn claim_vouched(vol: Arc<Volume>) -> Result<Seat, sharedisk_storage::Error> {
        let me = ProcessIdentity::current().pid;
        Seat::claim_with(vol, "", |s| s.identity.pid == me)
    }

    /// Take a free seat, or one that is provably dead or `reusable` says the
    /// caller may reuse (the simulation's lock managers share one process).
    pub fn claim_with(vol: Arc<Volume>, addr: &str, reusable: impl Fn(&SeatInfo) -> bool) -> Result<Seat, sharedisk_storage::Error> {
        let seat = vol.claim_lockmgr_seat(random_id(), ProcessIdentity::current(), addr, |s| {
            reusable(s) || s.identity.liveness() == Liveness::Dead
        })?;
        Ok(Seat { vol, seat })
    }

    pub fn seat(&self) -> LmSeat {
        self.seat
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.vol
    }

    /// Whether the lease `lease` may be taken now without waiting: nobody
    /// holds it, or its holder gave its seat back or cannot run any more.
    fn vacant(&self, lease: LmLease) -> bool {
        match lease.seat {
            None => true,
            Some(s) if s == self.seat.seat => true,
            Some(s) => self.vol.seat_info(s).is_none_or(|info| info.identity.liveness() == Liveness::Dead),
        }
    }

    /// Wait until this lock manager is active and return its term; `None`
    /// if `stop` was set first. Blocking.
    pub fn campaign(&self, lease: Duration, poll: Duration, stop: &AtomicBool) -> Result<Option<Reign>, sharedisk_storage::Error> {
        let mut seen = self.vol.lockmgr_lease()?;
        let mut since = Instant::now();
        while !stop.load(Ordering::Acquire) {
            let now = self.vol.lockmgr_lease()?;
            if now != seen {
                (seen, since) = (now, Instant::now());
            }
            if (self.vacant(now) || since.elapsed() >= lease)
                && let Some(taken) = self.vol.take_lockmgr_lease(now, self.seat)?
            {
                return Ok(Some(Reign::new(self.vol.clone(), self.seat, taken.term)));
            }
            std::thread::sleep(poll);
        }
        Ok(None)
    }

    /// Take the lease whoever holds it (tests and the simulation, whose
    /// caller vouches that no other lock manager acts).
    pub fn take_now(&self) -> Result<Reign, sharedisk_storage::Error> {
        loop {
            let now = self.vol.lockmgr_lease()?;
            if let Some(taken) = self.vol.take_lockmgr_lease(now, self.seat)? {
                return Ok(Reign::new(self.vol.clone(), self.seat, taken.term));
            }
        }
    }

    /// Where the active lock manager listens, as its seat says.
    pub fn active_addr(&self) -> Option<String> {
        active_addr(&self.vol)
    }

    /// Give the seat back (a clean stop; the caller stopped acting first).
    pub fn release(&self) -> Result<(), sharedisk_storage::Error> {
        self.vol.release_lockmgr_seat(self.seat)
    }
}

/// Where the active lock manager listens, as its seat says.
pub fn active_addr(vol: &Volume) -> Option<String> {
    let seat = vol.lockmgr_lease().ok()?.seat?;
    vol.seat_info(seat).map(|i| i.addr).filter(|a| !a.is_empty())
}

/// Every lock manager of the volume, for `admin status`.
pub fn lockmgrs(vol: &Volume) -> Vec<crate::core::LockmgrStatus> {
    let lease = vol.lockmgr_lease().unwrap_or_default();
    vol.lockmgr_seats()
        .into_iter()
        .map(|SeatInfo { seat, identity, addr, .. }| crate::core::LockmgrStatus {
            seat,
            addr,
            pid: identity.pid,
            active: lease.seat == Some(seat),
            term: if lease.seat == Some(seat) { lease.term } else { 0 },
            alive: identity.liveness() != Liveness::Dead,
        })
        .collect()
}

/// The lease of one term, held by this process.
#[derive(Clone, Debug)]
pub struct Reign {
    vol: Arc<Volume>,
    seat: LmSeat,
    term: u32,
    deposed: Arc<AtomicBool>,
    /// When the core began the batch it is working on (ms since `epoch`), 0
    /// when idle: a core stuck in one batch stops the renewals.
    busy_since: Arc<std::sync::atomic::AtomicU64>,
    epoch: Instant,
}

impl Reign {
    fn new(vol: Arc<Volume>, seat: LmSeat, term: u32) -> Reign {
        Reign { vol, seat, term, deposed: Arc::default(), busy_since: Arc::default(), epoch: Instant::now() }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// The core begins a batch of events.
    pub fn batch_started(&self) {
        self.busy_since.store(self.now_ms(), Ordering::Release);
    }

    /// The core finished its batch.
    pub fn batch_done(&self) {
        self.busy_since.store(0, Ordering::Release);
    }

    pub fn term(&self) -> u32 {
        self.term
    }

    pub fn seat(&self) -> LmSeat {
        self.seat
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.vol
    }

    /// Whether the lease word still names this term (one load of it).
    pub fn is_current(&self) -> bool {
        !self.deposed.load(Ordering::Acquire) && self.vol.holds_lockmgr_lease(self.seat, self.term)
    }

    /// Renew once; a failure means deposed, for good.
    pub fn renew(&self) -> Result<(), sharedisk_storage::Error> {
        self.vol.renew_lockmgr_lease(self.seat, self.term).map(|_| ()).inspect_err(|_| self.deposed.store(true, Ordering::Release))
    }

    /// Renew every `every` on a thread of its own (a slow map write never
    /// delays it) until deposed; `on_deposed` runs once then. A core stuck in
    /// one batch for longer than `stuck_after` (a wedged disk, a bug) is not
    /// vouched for: renewals pause, and a standby takes over after the lease.
    pub fn keep_renewed(&self, every: Duration, stuck_after: Duration, on_deposed: impl FnOnce(sharedisk_storage::Error) + Send + 'static) {
        let reign = self.clone();
        std::thread::Builder::new()
            .name("lockmgr-lease".into())
            .spawn(move || {
                let mut said = false;
                loop {
                    std::thread::sleep(every);
                    let since = reign.busy_since.load(Ordering::Acquire);
                    let busy = if since == 0 { 0 } else { reign.now_ms().saturating_sub(since) };
                    if busy > stuck_after.as_millis() as u64 {
                        if !std::mem::replace(&mut said, true) {
                            eprintln!("lockmgr: the core has been in one batch for {busy} ms; not renewing the lease, so that a standby takes over");
                        }
                        continue;
                    }
                    said = false;
                    if let Err(e) = reign.renew() {
                        on_deposed(e);
                        return;
                    }
                }
            })
            .expect("cannot start the lease thread");
    }
}
