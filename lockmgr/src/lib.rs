//! The global lock manager of sharedisk.
//!
//! * [`core`]: the pure lease core (sessions, heartbeats, partition leases
//!   with fence tokens, failure detection, balanced assignment, planned
//!   moves, named leases, restart recovery). No I/O, no clock.
//! * [`timeouts`]: every timeout, derived from one base and validated, with
//!   the timeline that proves the old owner stops before a new one is granted.
//!
//! The tokio service, the client library and the admin commands that wrap
//! the core are not built yet (issue 3 continues).

pub mod core;
pub mod timeouts;

pub use crate::core::{Core, Millis, Output, Persisted, Request, Response, ServerInfo, SessionId};
pub use timeouts::Timeouts;
