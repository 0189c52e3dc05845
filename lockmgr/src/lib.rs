//! The global lock manager of sharedisk.
//!
//! * [`core`]: the pure lease core (sessions, heartbeats, partition leases
//!   with grant epochs, failure detection, balanced assignment, planned
//!   moves, named leases, restart recovery). No I/O, no clock.
//! * [`timeouts`]: every timeout, derived from one base and validated, with
//!   the timeline that proves the old owner stops before a new one is granted.
//!
//! * [`election`]: which of several lock managers is active: seats and a
//!   term on the volume, taken by CAS, checked by every write;
//! * [`wire`]: length-delimited postcard frames, with limits;
//! * [`secret`]: the cluster secret and its challenge-response handshake;
//! * [`metrics`]: Prometheus metrics and the `/metrics` endpoint;
//! * [`page`]: the live page (`--http`): map, servers, handovers as bars;
//! * [`service`]: the tokio shell: one task owns the core, fences on the
//!   volume (PREEMPT) before it grants, persists the map on the volume
//!   before revealing it, pushes grants, revocations and the cluster slot
//!   map ([`core::ClusterMap`]) to registered sessions;
//! * [`client`]: connections, registered sessions with heartbeats and a
//!   conservative lease deadline.

pub mod client;
pub mod core;
pub mod election;
pub mod logging;
pub mod metrics;
pub mod page;
pub mod secret;
pub mod service;
pub mod timeouts;
pub mod wire;

pub use crate::core::{Core, Millis, Output, Persisted, Request, Response, ServerInfo, SessionId};
pub use secret::Secret;
pub use timeouts::Timeouts;
