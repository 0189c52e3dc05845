//! Deliberately broken storage, for the cluster simulation of the root
//! package to prove that it catches each mistake. Compiled only with the
//! `mutants` feature, which only the root package's dev-dependency enables:
//! a production build has neither this module nor any switch. Each switch is
//! per thread and off by default.

use std::cell::Cell;

thread_local! {
    static NEW_OWNER_REUSES_OLD_SEGMENT: Cell<bool> = const { Cell::new(false) };
}

/// A claiming writer, instead of allocating a fresh segment by CAS for its
/// first append, continues in the previous owner's tail segment, which that
/// incarnation still holds OPEN to its own (slot, token): the breach of "a
/// writer only stores into space allocated to its own (key, fence token) by
/// a CAS" (FORMAT.md, "Fencing"). The old owner's late stores then land on
/// the new owner's records.
pub fn set_new_owner_reuses_old_segment(on: bool) {
    NEW_OWNER_REUSES_OLD_SEGMENT.with(|s| s.set(on));
}

pub(crate) fn new_owner_reuses_old_segment() -> bool {
    NEW_OWNER_REUSES_OLD_SEGMENT.with(Cell::get)
}

thread_local! {
    static STANDBY_SKIPS_TAIL: Cell<bool> = const { Cell::new(false) };
    static STANDBY_SKIPS_REUSE_CHECK: Cell<bool> = const { Cell::new(false) };
}

/// A standby taking a partition over serves the index it has, without
/// reading the tail published since its last poll: the acknowledged writes
/// of that tail are lost.
pub fn set_standby_skips_tail(on: bool) {
    STANDBY_SKIPS_TAIL.with(|s| s.set(on));
}

pub(crate) fn standby_skips_tail() -> bool {
    STANDBY_SKIPS_TAIL.with(Cell::get)
}

/// A standby knows the segment it reads by its index alone, not by
/// (index, `chain_seq`), and does not re-read the headers after copying
/// records: once the owner's cleaner has freed and reused that segment, the
/// standby continues in its new life and skips everything in between.
pub fn set_standby_skips_reuse_check(on: bool) {
    STANDBY_SKIPS_REUSE_CHECK.with(|s| s.set(on));
}

pub(crate) fn standby_skips_reuse_check() -> bool {
    STANDBY_SKIPS_REUSE_CHECK.with(Cell::get)
}

thread_local! {
    static STANDBY_STORES_READ_POINT: Cell<bool> = const { Cell::new(false) };
}

/// A standby stores the position it applied up to into its partition's
/// entry (a read point for the owner's cleaner to honour): a standby that
/// writes into the partition's area, which the design forbids.
pub fn set_standby_stores_read_point(on: bool) {
    STANDBY_STORES_READ_POINT.with(|s| s.set(on));
}

pub(crate) fn standby_stores_read_point() -> bool {
    STANDBY_STORES_READ_POINT.with(Cell::get)
}
