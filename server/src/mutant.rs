//! Deliberately broken builds, switched on per thread by the cluster
//! simulation (`sim.rs`) to prove that it catches each one. Compiled into
//! test builds only: production code has no switch.

use std::cell::Cell;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutant {
    None,
    /// The engine acknowledges a write once published, before its barrier.
    AckBeforeBarrier,
    /// A read is answered without validating the owner word after it was computed.
    NoReadValidation,
    /// The lock manager's shell reports a fence done without fencing.
    GrantBeforeFence,
    /// A new owner appends into the old owner's segment (storage's switch,
    /// `sharedisk_storage::mutant`): no allocation by CAS after a claim.
    NewOwnerReusesOldSegment,
    /// A hot standby takes its partition over without reading the tail
    /// published since its last poll (storage's switch).
    StandbySkipsTail,
    /// A standby answers `READONLY` reads however long ago it last matched
    /// its owner's head.
    StaleReplicaReads,
    /// The volume does not check a lock manager's term (storage's switch):
    /// a paused lock manager that wakes up deposed goes on writing.
    LockmgrIgnoresTerm,
}

thread_local! {
    static ACTIVE: Cell<Mutant> = const { Cell::new(Mutant::None) };
}

/// Switch this thread's mutant (`Mutant::None`: the real build).
pub fn set(m: Mutant) {
    ACTIVE.with(|a| a.set(m));
    sharedisk_storage::mutant::set_new_owner_reuses_old_segment(m == Mutant::NewOwnerReusesOldSegment);
    sharedisk_storage::mutant::set_standby_skips_tail(m == Mutant::StandbySkipsTail);
    sharedisk_storage::mutant::set_lockmgr_ignores_term(m == Mutant::LockmgrIgnoresTerm);
}

pub fn is(m: Mutant) -> bool {
    ACTIVE.with(|a| a.get() == m)
}
