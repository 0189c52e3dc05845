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

/// A seat id: never 0, never with the claiming bit.
fn random_id() -> u64 {
    loop {
        let id = sharedisk_storage::procinfo::random_id() & !sharedisk_storage::layout::SEAT_CLAIMING;
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

/// What one turn of the renewal thread did.
#[derive(Debug, PartialEq, Eq)]
enum Renewal {
    Renewed,
    /// The core is stuck in one batch: no renewal.
    Stuck {
        busy_ms: u64,
    },
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

    /// One turn of [`Reign::keep_renewed`] at `now_ms`: renew, unless the core
    /// has been in one batch for longer than `stuck_after`.
    fn renew_unless_stuck(&self, stuck_after: Duration, now_ms: u64) -> Result<Renewal, sharedisk_storage::Error> {
        let since = self.busy_since.load(Ordering::Acquire);
        let busy_ms = if since == 0 { 0 } else { now_ms.saturating_sub(since) };
        if busy_ms > stuck_after.as_millis() as u64 {
            return Ok(Renewal::Stuck { busy_ms });
        }
        self.renew().map(|()| Renewal::Renewed)
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
                    match reign.renew_unless_stuck(stuck_after, reign.now_ms()) {
                        Ok(Renewal::Renewed) => said = false,
                        Ok(Renewal::Stuck { busy_ms }) if !std::mem::replace(&mut said, true) => tracing::warn!(
                            busy_ms,
                            "lockmgr: the core has been in one batch for {busy_ms} ms; not renewing the lease, so that a standby takes over"
                        ),
                        Ok(Renewal::Stuck { .. }) => {}
                        Err(e) => {
                            on_deposed(e);
                            return;
                        }
                    }
                }
            })
            .expect("cannot start the lease thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharedisk_storage::CreateOptions;

    /// A core stuck in one batch gets no renewals (a standby then takes
    /// over); a busy but progressing one, and an idle one, do.
    #[test]
    fn a_stuck_core_stops_the_renewals() {
        let vol = Arc::new(Volume::create_in_memory(&CreateOptions::new(4 << 20, 2), None).unwrap().0);
        let reign = Seat::claim_vouched(vol.clone()).unwrap().take_now().unwrap();
        let count = || vol.lockmgr_lease().unwrap().count;
        let stuck = Duration::from_millis(1000);
        assert_eq!(reign.renew_unless_stuck(stuck, reign.now_ms()).unwrap(), Renewal::Renewed, "idle");
        reign.batch_started();
        let t = reign.now_ms();
        assert_eq!(reign.renew_unless_stuck(stuck, t + 500).unwrap(), Renewal::Renewed, "busy, within the bound");
        let before = count();
        assert!(matches!(reign.renew_unless_stuck(stuck, t + 1500).unwrap(), Renewal::Stuck { busy_ms } if busy_ms >= 1500));
        assert_eq!(count(), before, "a stuck core renews nothing");
        reign.batch_done();
        assert_eq!(reign.renew_unless_stuck(stuck, t + 1500).unwrap(), Renewal::Renewed, "done: renewals resume");
        assert_eq!(count(), before + 1);
        // Deposed: an error, for good.
        let other = Seat::claim_with(vol.clone(), "", |_| false).unwrap();
        other.take_now().unwrap();
        assert!(reign.renew_unless_stuck(stuck, t + 1500).is_err());
        assert!(!reign.is_current());
    }
}
