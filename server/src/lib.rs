//! The Redis Cluster server of sharedisk: serves partitions of the shared
//! volume over RESP.
//!
//! Crate map: [`resp`] (the protocol), [`acl`] (users and permissions), [`cluster`] (the slot map as clients
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

pub mod acl;
pub mod cluster;
mod cmd;
pub mod commands;
mod conn;
pub mod control;
pub mod engine;
mod glob;
mod hashes;
pub mod limits;
pub mod metrics;
#[cfg(test)]
mod mutant;
pub mod peer;
mod procstat;
mod pubsub;
pub mod resp;
mod shell;
#[cfg(test)]
mod sim;
mod standby;
pub mod tls;

pub use shell::{Local, Route, ServerConfig, ServerState, Stats, run};

/// The body of a thread whose panic must end the process: the engine, its
/// barrier and the standby threads. If one of them died alone, the server
/// would keep its session and its leases (heartbeats run elsewhere) and
/// serve nothing: every client of its partitions would hang until an
/// operator noticed. Aborting closes the session at once, and the lock
/// manager fails the partitions over in milliseconds, as after a kill -9.
/// (A connection's task is not such a thread: its panic ends that
/// connection only.)
pub(crate) fn fatal_on_panic<F: FnOnce() + Send + 'static>(what: &'static str, f: F) -> impl FnOnce() + Send + 'static {
    move || {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
            eprintln!("sharedisk: the {what} thread panicked (above); aborting, so that the cluster fails this server over");
            std::process::abort();
        }
    }
}

/// Free `x` on a thread of its own: an index of many keys takes milliseconds
/// per 100,000 keys to free (a free per key), which a hand-over or the
/// control task should not wait for.
pub(crate) fn free_later<T: Send + 'static>(x: T) {
    if let Err(e) = std::thread::Builder::new().name("free".into()).spawn(move || drop(x)) {
        eprintln!("cannot start a thread to free memory ({e}); freeing inline");
    }
}

#[cfg(test)]
mod tests {
    /// Run in a child process (the test binary itself), the panicking
    /// thread takes the whole process down with SIGABRT.
    #[test]
    fn a_panic_on_a_fatal_thread_aborts_the_process() {
        if std::env::var_os("SHAREDISK_TEST_FATAL_PANIC").is_some() {
            let t = std::thread::spawn(super::fatal_on_panic("test", || panic!("a bug")));
            let _ = t.join();
            std::process::exit(0);
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::a_panic_on_a_fatal_thread_aborts_the_process", "--test-threads=1", "--nocapture"])
            .env("SHAREDISK_TEST_FATAL_PANIC", "1")
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(6), "not aborted: {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("the test thread panicked"));
    }
}
