//! The global lock manager of sharedisk.
//!
//! * [`core`]: the pure lease core (sessions, heartbeats, partition leases
//!   with fence tokens, failure detection, balanced assignment, planned
//!   moves, named leases, restart recovery). No I/O, no clock.
//! * [`timeouts`]: every timeout, derived from one base and validated, with
//!   the timeline that proves the old owner stops before a new one is granted.
//!
//! * [`wire`]: length-delimited postcard frames, with limits;
//! * [`service`]: the tokio shell: one task owns the core, fences on the
//!   volume (PREEMPT) before it grants, pushes grants and revocations;
//! * [`client`]: connections, registered sessions with heartbeats and a
//!   conservative lease deadline.
//!
//! Not built yet (issue 3 continues): persisting the partition map on the
//! volume (so a restarted lock manager recovers it; the core already
//! supports restore), and the benchmark.

pub mod client;
pub mod core;
pub mod service;
pub mod timeouts;
pub mod wire;

pub use crate::core::{Core, Millis, Output, Persisted, Request, Response, ServerInfo, SessionId};
pub use timeouts::Timeouts;
