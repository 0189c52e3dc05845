//! The shared volume of sharedisk.
//!
//! A volume is one file (a SAN LUN or NFS file in production) that several
//! server processes map at once. It holds a superblock, a reservation table
//! modelled on SCSI-3 persistent reservations, a partition table, and the
//! partitions' data areas. Each partition is a log of checksummed records in
//! segments, owned by one writer incarnation at a time and fenced by tokens
//! that the volume itself checks at publication. See `FORMAT.md`.
//!
//! The pieces:
//! * [`layout`]: every offset, bit field and codec of the format, each codec
//!   pinned by a golden-bytes test (nothing else computes offsets);
//!   [`record`] encodes and decodes log records on its constants;
//! * [`media`]: the mapping (all `unsafe`), and in-memory media for crash tests;
//! * [`Volume`]: create/open, REGISTER, PREEMPT, READ KEYS, reaping;
//! * [`Partition`]: a claimed partition, in parts with one concern each
//!   (see [`partition`]): the claim, the writer (append, publish, group
//!   commit, seal), recovery, the cleaner, and durability bookkeeping
//!   ([`SyncMark`], [`Durability`]);
//! * [`index`]: the key-value index a partition keeps, injected
//!   ([`Index`], default [`MapIndex`]) and fed only through [`Keyspace`], so
//!   that anything reading the same log builds the same index;
//! * [`check`]: the offline/online consistency check and inspection;
//! * [`hugealloc`]: the binary's allocator, large blocks (the indexes'
//!   tables) in transparent huge pages, so a killed server's memory is torn
//!   down, and its sockets closed, in a time that does not grow with its keys.
//!
//! Invariants of our own are `assert!`s that stay on in release builds;
//! bytes read from the volume are untrusted and become [`Error`]s.

pub mod blob;
pub mod check;
mod error;
pub mod hugealloc;
pub mod index;
pub mod layout;
pub mod lmarea;
pub mod media;
#[cfg(feature = "mutants")]
pub mod mutant;
pub mod partition;
pub mod procinfo;
pub mod record;
pub mod volume;

pub use error::{Error, Result};
pub use index::{Entry, Index, Keyspace, MapIndex};
pub use lmarea::{LmSeat, MapCopy, SeatInfo};
pub use partition::{
    Appended, Durability, Partition, PartitionOptions, Polled, RecoveredLog, RecoveryStats, Standby, StandbyStats, SyncMark, TornCommit,
};
pub use procinfo::{Liveness, ProcessIdentity};
pub use record::Op;
pub use volume::{CreateOptions, PreemptReport, Registration, SlotInfo, SlotState, Volume};
