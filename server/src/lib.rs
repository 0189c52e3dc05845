//! The Redis Cluster server of sharedisk: serves partitions of the shared
//! volume over RESP.
//!
//! Crate map: [`resp`] (the protocol), [`cluster`] (the slot map as clients
//! see it), [`commands`] (the command table and the key-value semantics),
//! `cmd` (connection and introspection commands), `conn` (one connection:
//! parse, route, hold, answer in order), [`control`] (the pure control core),
//! [`engine`] (the partition engine: its pure core and its shell), [`limits`]
//! (every bound on what clients can make a server hold), and `shell` (the
//! process: listener, lock-manager session, the control shell).
//!
//! ```text
//!  clients ──RESP──> conn task ──route(slot)──> partition engine ──> volume
//!                       │  (MOVED / hold / CLUSTERDOWN)      (group commit, fence checks)
//!                       └── view: slot map pushed by the lock manager
//!  lock manager ──Grant/Revoke/Expired/Map──> control task (claims, releases, re-registers)
//! ```
//!
//! The control task is the only writer of the route table: a partition is
//! routed to the engine only after `Partition::claim` recovered it, and is
//! unrouted before the engine is told to stop it, so no request reaches a
//! partition we no longer serve. What it does on each event is decided by
//! the pure control core (`control.rs`); `shell.rs` is its shell (sockets,
//! blocking claims, the engine queue). Connections wait on a version counter
//! for routes or map changes (the "hold" of a handover).

pub mod cluster;
mod cmd;
pub mod commands;
mod conn;
pub mod control;
pub mod engine;
mod glob;
pub mod limits;
#[cfg(test)]
mod mutant;
mod procstat;
pub mod resp;
mod shell;
#[cfg(test)]
mod sim;
mod standby;

pub use shell::{Local, Route, ServerConfig, ServerState, Stats, run};

/// Free `x` on a thread of its own: an index of many keys takes milliseconds
/// per 100,000 keys to free (a free per key), which a hand-over or the
/// control task should not wait for.
pub(crate) fn free_later<T: Send + 'static>(x: T) {
    if let Err(e) = std::thread::Builder::new().name("free".into()).spawn(move || drop(x)) {
        eprintln!("cannot start a thread to free memory ({e}); freeing inline");
    }
}
