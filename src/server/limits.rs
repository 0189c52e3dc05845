//! Every limit on what clients can make a server hold, in one place.

use std::time::Duration;

use crate::resp::Limits;

/// Client connections at once; more are told so and closed.
pub const CONNECTIONS_MAX: usize = 10_000;
/// Commands of one connection in flight before it stops reading (pipelining backpressure).
pub const PIPELINE_MAX: usize = 1024;
/// Commands queued in one MULTI.
pub const MULTI_COMMANDS_MAX: usize = 10_000;
/// How long a request for a partition without a ready owner is held before `-CLUSTERDOWN`.
pub const HOLD_MAX: Duration = Duration::from_secs(3);

/// RESP parsing limits: a value is bounded by the volume's record size anyway.
pub const RESP: Limits = Limits { bulk_bytes_max: 16 << 20, args_max: 1 << 20, inline_bytes_max: 64 << 10 };
