//! Deliberately broken storage, for the cluster simulation of the root
//! package to prove that it catches each mistake. Compiled only with the
//! `mutants` feature, which only the root package's dev-dependency enables:
//! a production build has neither this module nor any switch. Each switch is
//! per thread and off by default.

use std::cell::Cell;

/// One per-thread switch: `set_NAME(on)` for tests, `NAME()` for the code
/// that misbehaves when it is on.
macro_rules! switch {
    ($(#[$doc:meta])* $cell:ident, $set:ident, $get:ident) => {
        thread_local! {
            static $cell: Cell<bool> = const { Cell::new(false) };
        }

        $(#[$doc])*
        pub fn $set(on: bool) {
            $cell.with(|s| s.set(on));
        }

        pub(crate) fn $get() -> bool {
            $cell.with(Cell::get)
        }
    };
}

switch!(
    /// A claiming writer, instead of allocating a fresh segment by CAS for its
    /// first append, continues in the previous owner's tail segment, which that
    /// incarnation still holds OPEN to its own (slot, token): the breach of "a
    /// writer only stores into space allocated to its own (key, fence token) by
    /// a CAS" (FORMAT.md, "Fencing"). The old owner's late stores then land on
    /// the new owner's records.
    NEW_OWNER_REUSES_OLD_SEGMENT,
    set_new_owner_reuses_old_segment,
    new_owner_reuses_old_segment
);

switch!(
    /// A standby taking a partition over serves the index it has, without
    /// reading the tail published since its last poll: the acknowledged writes
    /// of that tail are lost.
    STANDBY_SKIPS_TAIL,
    set_standby_skips_tail,
    standby_skips_tail
);

switch!(
    /// A standby knows the segment it reads by its index alone, not by
    /// (index, `chain_seq`), and does not re-read the headers after copying
    /// records: once the owner's cleaner has freed and reused that segment, the
    /// standby continues in its new life and skips everything in between.
    STANDBY_SKIPS_REUSE_CHECK,
    set_standby_skips_reuse_check,
    standby_skips_reuse_check
);

switch!(
    /// A standby stores the position it applied up to into its partition's
    /// entry (a read point for the owner's cleaner to honour): a standby that
    /// writes into the partition's area, which the design forbids.
    STANDBY_STORES_READ_POINT,
    set_standby_stores_read_point,
    standby_stores_read_point
);

switch!(
    /// The volume does not check a lock manager's term: a map copy is
    /// revealed without looking at the lease word afterwards, a renewal
    /// succeeds whoever holds the lease, and a deposed lock manager that
    /// wakes up goes on fencing and writing.
    LOCKMGR_IGNORES_TERM,
    set_lockmgr_ignores_term,
    lockmgr_ignores_term
);
