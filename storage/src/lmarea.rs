//! The lock-manager area: seats, the lease word, and the map copies.
//!
//! Several lock managers may serve one volume; one is active. Which one,
//! and in which *term*, is the lease word in the reservation header
//! ([`LmLease`]): the active one renews it by CAS, a standby takes it by CAS
//! (raising the term) once it has seen no renewal for a lease period or
//! knows the holder is dead. Each lock-manager process holds a *seat*: a
//! header page naming it (process identity, listen address) and two map
//! slots that only it writes. The map is read from every seat and the copy
//! with the highest (term, sequence) wins.
//!
//! The fencing argument (FORMAT.md has it in full): a lock manager reveals a
//! state only after it has written it into its own seat *and* then found the
//! lease word still naming its term. A standby that took the lease reads the
//! map after its CAS, so it sees every state the deposed one revealed. What
//! the deposed one may still write is at most one copy, in its own seat,
//! with its old term, which every later reader ranks below the new term's
//! copies: it can change nothing.

use std::sync::atomic::{Ordering, fence};

use crate::layout::{self, *};
use crate::procinfo::ProcessIdentity;
use crate::volume::Volume;
use crate::{Error, Result};

/// A seat this process holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LmSeat {
    pub seat: u8,
    /// The random id the seat word holds while we hold it.
    pub id: u64,
}

/// A held seat, as the volume shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeatInfo {
    pub seat: u8,
    pub id: u64,
    pub identity: ProcessIdentity,
    /// Where its lock manager listens (empty if not told).
    pub addr: String,
}

/// A valid copy of the lock manager's persisted map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapCopy {
    pub term: u32,
    pub seq: u64,
    pub seat: u8,
    pub bytes: Vec<u8>,
}

/// One map slot: valid, never written (`Ok(None)`), or damaged at a byte offset.
type SlotRead = std::result::Result<Option<MapCopy>, u64>;

impl Volume {
    /// The lease word.
    pub fn lockmgr_lease(&self) -> Result<LmLease> {
        let at = self.geometry().lockmgr_lease();
        LmLease::decode(self.region().load(at), at)
    }

    /// Whether the lease still names `term` held by `seat` (the count may have moved).
    pub fn holds_lockmgr_lease(&self, seat: LmSeat, term: u32) -> bool {
        #[cfg(feature = "mutants")]
        if crate::mutant::lockmgr_ignores_term() {
            return true;
        }
        self.lockmgr_lease().is_ok_and(|l| l.term == term && l.seat == Some(seat.seat))
    }

    /// The seat `seat`, if held.
    pub fn seat_info(&self, seat: u8) -> Option<SeatInfo> {
        let (geo, r) = (self.geometry(), self.region());
        let at = geo.lockmgr_seat(seat);
        let id = r.load(at + SEAT_ID);
        if id == 0 {
            return None;
        }
        let (machine, boot) = layout::host_parts(r.load(at + SEAT_HOST));
        let identity =
            ProcessIdentity { pid: (r.load(at + SEAT_STATUS) >> 32) as u32, start_ticks: r.load(at + SEAT_START_TICKS), machine, boot };
        let len = r.load(at + SEAT_ADDR_LEN).min(SEAT_ADDR_BYTES_MAX) as usize;
        if id & SEAT_CLAIMING != 0 {
            // Being claimed (or a claimer died mid-claim): no identity yet,
            // so nothing can prove it dead; only an operator frees it.
            let identity = ProcessIdentity { pid: id as u32, ..ProcessIdentity::default() };
            return Some(SeatInfo { seat, id, identity, addr: String::new() });
        }
        let mut addr = vec![0u8; len];
        r.read(at + SEAT_ADDR, &mut addr);
        Some(SeatInfo { seat, id, identity, addr: String::from_utf8_lossy(&addr).into_owned() })
    }

    /// Every held seat.
    pub fn lockmgr_seats(&self) -> Vec<SeatInfo> {
        (0..LM_SEATS as u8).filter_map(|s| self.seat_info(s)).collect()
    }

    /// Take a free seat, or one whose holder `reusable` says can no longer
    /// run (normally: proven dead), for the lock manager `who` listening on
    /// `addr`. Durable before it returns.
    pub fn claim_lockmgr_seat(&self, id: u64, who: ProcessIdentity, addr: &str, reusable: impl Fn(&SeatInfo) -> bool) -> Result<LmSeat> {
        self.ensure_ok()?;
        if id == 0 {
            return Err(Error::ZeroKey);
        }
        if addr.len() as u64 > SEAT_ADDR_BYTES_MAX {
            return Err(Error::RecordTooLarge { bytes: addr.len(), max: SEAT_ADDR_BYTES_MAX as usize });
        }
        if id >= SEAT_CLAIMING {
            return Err(Error::corrupted("lock-manager seat id", 0, format!("{id:#x} has the claiming bit set")));
        }
        let (geo, r) = (*self.geometry(), self.region());
        for seat in 0..LM_SEATS as u8 {
            let at = geo.lockmgr_seat(seat);
            let old = r.load(at + SEAT_ID);
            // The identity read here belongs to `old`: a claimer writes it
            // while its id word says "claiming" (never reusable), and only
            // then stores its id; so the CAS below takes the seat only from
            // the holder `reusable` judged.
            let free = match self.seat_info(seat) {
                None => true,
                Some(info) => info.id == old && old & SEAT_CLAIMING == 0 && reusable(&info),
            };
            if !free || r.cas(at + SEAT_ID, old, SEAT_CLAIMING | u64::from(who.pid)).is_err() {
                continue;
            }
            r.store(at + SEAT_ADDR_LEN, 0);
            r.store(at + SEAT_START_TICKS, who.start_ticks);
            r.store(at + SEAT_HOST, layout::host_word(who.machine, who.boot));
            r.store(at + SEAT_STATUS, u64::from(who.pid) << 32 | 1);
            r.write(at + SEAT_ADDR, addr.as_bytes());
            r.store(at + SEAT_ADDR_LEN, addr.len() as u64);
            r.store(at + SEAT_ID, id);
            self.flush(at, PAGE_BYTES)?;
            if r.load(at + SEAT_ID) != id {
                // Freed under us by an operator (`volume free-seat`).
                return Err(Error::NoFreeSeat { seats: LM_SEATS });
            }
            return Ok(LmSeat { seat, id });
        }
        Err(Error::NoFreeSeat { seats: LM_SEATS })
    }

    /// Give a seat back (a clean stop). Its map copies stay: a later reader
    /// still ranks them.
    pub fn release_lockmgr_seat(&self, seat: LmSeat) -> Result<()> {
        self.ensure_ok()?;
        let at = self.geometry().lockmgr_seat(seat.seat);
        if self.region().cas(at + SEAT_ID, seat.id, 0).is_ok() {
            self.flush(at, PAGE_BYTES)?;
        }
        Ok(())
    }

    /// Take the lease from `seen` into term `seen.term + 1` for `seat`;
    /// durable before it returns, so no later term can repeat it. `Ok(None)`
    /// if the word is no longer `seen` (someone renewed or took it).
    pub fn take_lockmgr_lease(&self, seen: LmLease, seat: LmSeat) -> Result<Option<LmLease>> {
        self.ensure_ok()?;
        let term = seen.term.checked_add(1).ok_or(Error::TokensExhausted { partition: u32::MAX })?;
        let next = LmLease { term, seat: Some(seat.seat), count: 0 };
        if self.region().cas(self.geometry().lockmgr_lease(), seen.encode(), next.encode()).is_err() {
            return Ok(None);
        }
        // Our later reads of the map come after the CAS (see the writer's fence).
        fence(Ordering::SeqCst);
        self.flush_reservations()?;
        Ok(Some(next))
    }

    /// Renew the lease of `term` held by `seat`. `Err(Deposed)` if it is no
    /// longer ours. Not flushed: renewals only need to be seen, and a lease
    /// word that reverts to an older count on a crash is still ours.
    pub fn renew_lockmgr_lease(&self, seat: LmSeat, term: u32) -> Result<LmLease> {
        self.ensure_ok()?;
        let at = self.geometry().lockmgr_lease();
        loop {
            let word = self.region().load(at);
            let lease = LmLease::decode(word, at)?;
            #[cfg(feature = "mutants")]
            if crate::mutant::lockmgr_ignores_term() && lease.term != term {
                return Ok(LmLease { term, seat: Some(seat.seat), count: 0 });
            }
            if lease.term != term || lease.seat != Some(seat.seat) {
                return Err(Error::Deposed { term, now: lease.term, seat: lease.seat });
            }
            let next = LmLease { count: (lease.count + 1) % LM_LEASE_COUNT_MOD, ..lease };
            if self.region().cas(at, word, next.encode()).is_ok() {
                return Ok(next);
            }
        }
    }

    fn read_map_slot(&self, seat: u8, i: u64) -> SlotRead {
        let (geo, r) = (*self.geometry(), self.region());
        let at = geo.lockmgr_slot(seat, i);
        let mut b = [0u8; LM_HEADER_BYTES];
        r.read(at, &mut b);
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        let h = LockmgrHeader::decode(&b).filter(|h| u64::from(h.len) <= geo.lockmgr_payload_bytes_max()).ok_or(at)?;
        let mut bytes = vec![0u8; h.len as usize];
        r.read(geo.lockmgr_payload(seat, i), &mut bytes);
        if !h.matches(&bytes) {
            return Err(at);
        }
        Ok(Some(MapCopy { term: h.term, seq: h.seq, seat, bytes }))
    }

    /// The newest valid map copy of any seat, by (term, sequence), or `None`
    /// if the area was never written. A damaged slot beside a valid copy is
    /// a torn write (nothing its writer revealed) and is ignored; damage
    /// with no valid copy at all is an error, because starting afresh
    /// would let tokens go backwards.
    pub fn read_lockmgr_state(&self) -> Result<Option<MapCopy>> {
        let reads: Vec<SlotRead> = (0..LM_SEATS as u8).flat_map(|s| [0, 1].map(|i| self.read_map_slot(s, i))).collect();
        let newest = reads.iter().filter_map(|s| s.as_ref().ok().and_then(|v| v.clone())).max_by_key(|c| (c.term, c.seq));
        if newest.is_none()
            && let Some(&Err(offset)) = reads.iter().find(|s| s.is_err())
        {
            return Err(Error::corrupted(
                "lock-manager area",
                offset,
                "no valid copy of the lock manager's map (partition owners and fence tokens); refusing to start afresh, which could reuse tokens",
            ));
        }
        Ok(newest)
    }

    /// Durably store a map copy of `term` with sequence `seq` (greater than
    /// the last one of this term) into `seat`'s slot that does not hold its newest
    /// valid copy, then check that the lease is still ours: only then may
    /// the caller reveal what the copy covers. `Err(Deposed)` otherwise.
    pub fn write_lockmgr_state(&self, seat: LmSeat, term: u32, seq: u64, bytes: &[u8]) -> Result<()> {
        self.ensure_ok()?;
        let geo = *self.geometry();
        let room = geo.lockmgr_payload_bytes_max() as usize;
        if bytes.len() > room {
            return Err(Error::RecordTooLarge { bytes: bytes.len(), max: room });
        }
        if self.region().load(geo.lockmgr_seat(seat.seat) + SEAT_ID) != seat.id {
            let lease = self.lockmgr_lease()?;
            return Err(Error::Deposed { term, now: lease.term, seat: lease.seat });
        }
        let [a, b] = [0, 1].map(|i| self.read_map_slot(seat.seat, i).ok().flatten().map(|c| (c.term, c.seq)));
        let slot = match (a, b) {
            (Some(x), Some(y)) if x > y => 1,
            (Some(_), None) => 1,
            _ => 0,
        };
        let at = geo.lockmgr_slot(seat.seat, slot);
        self.region().write(geo.lockmgr_payload(seat.seat, slot), bytes);
        self.region().write(at, &LockmgrHeader::for_payload(term, seq, bytes).encode());
        self.flush(at, LM_HEADER_BYTES as u64 + bytes.len() as u64)?;
        // The copy is stored before we look: a standby that takes the lease
        // after this load reads the map after its CAS and so sees the copy.
        fence(Ordering::SeqCst);
        #[cfg(feature = "mutants")]
        if crate::mutant::lockmgr_ignores_term() {
            return Ok(());
        }
        let lease = self.lockmgr_lease()?;
        if lease.term != term || lease.seat != Some(seat.seat) {
            return Err(Error::Deposed { term, now: lease.term, seat: lease.seat });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CreateOptions;

    /// A seat caught mid-claim (its id word says "claiming") is never taken
    /// by another claim, even one that would reuse any seat: the identity
    /// it would judge is not the claimer's yet.
    #[test]
    fn a_seat_being_claimed_is_not_taken_from_its_claimer() {
        let (vol, _) = Volume::create_in_memory(&CreateOptions::new(4 << 20, 2), None).unwrap();
        let me = ProcessIdentity::current();
        let a = vol.claim_lockmgr_seat(7, me, "a:1", |_| false).unwrap();
        // The dead holder D of seat 0 was reusable; P1 has CASed the id word
        // to "claiming" and not yet written its identity.
        let at = vol.geometry().lockmgr_seat(a.seat);
        vol.region().store(at + SEAT_ID, SEAT_CLAIMING | 4242);
        assert_eq!(vol.seat_info(a.seat).unwrap().identity.liveness(), crate::Liveness::Unknown);
        let b = vol.claim_lockmgr_seat(8, me, "b:1", |_| true).unwrap();
        assert_ne!(b.seat, a.seat, "P2 took the seat P1 is claiming");
        assert!(vol.claim_lockmgr_seat(SEAT_CLAIMING | 9, me, "c:1", |_| true).is_err(), "ids never carry the claiming bit");
        // Only an operator frees a seat whose claimer died mid-claim.
        vol.release_lockmgr_seat(LmSeat { seat: a.seat, id: SEAT_CLAIMING | 4242 }).unwrap();
        assert!(vol.seat_info(a.seat).is_none());
    }
}
