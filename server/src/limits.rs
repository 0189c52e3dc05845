//! Every limit on what clients can make a server hold, in one place.
//!
//! What one connection can make us buffer, and what bounds it:
//! * unparsed input: [`QUERY_BUFFER_BYTES_MAX`] (and [`RESP`] per argument,
//!   per command, per inline line);
//! * commands parsed and not yet answered: [`PIPELINE_MAX`] of them, and
//!   [`PIPELINE_REPLY_BYTES_MAX`] of replies, counting those not computed
//!   yet at what they may take ([`VALUE_RESERVE_BYTES`] per value, a
//!   larger value counted once its reply exists; [`REPLY_BYTES_MAX`] per `MGET`);
//! * replies encoded and not yet written: [`WRITE_BUFFER_BYTES_MAX`], then
//!   the connection writes (and waits for a slow reader) before encoding more;
//! * a MULTI queue: [`MULTI_COMMANDS_MAX`] commands and
//!   [`MULTI_QUEUED_BYTES_MAX`] bytes;
//! * connections: [`CONNECTIONS_MAX`] (`--max-clients`).
//!
//! What all connections together can queue for the engine: at most
//! [`ENGINE_QUEUE_MAX`] requests; a connection whose request finds the queue
//! full waits (backpressure, not an error).
//!
//! `CONFIG GET` reports these under Redis's names (`maxclients`,
//! `proto-max-bulk-len`, `client-query-buffer-limit`) with the values in force.

use std::time::Duration;

use crate::resp::Limits;

/// Client connections at once (the default of `--max-clients`); more are told so and closed.
pub const CONNECTIONS_MAX: usize = 10_000;
/// Requests queued for the engine, from all connections together.
pub const ENGINE_QUEUE_MAX: usize = 16_384;
/// Bytes a client may make us buffer without completing a command (Redis's
/// `client-query-buffer-limit`: room for one argument of the largest value).
pub const QUERY_BUFFER_BYTES_MAX: usize = 1 << 30;
/// Commands of one connection in flight before it stops reading (pipelining backpressure).
pub const PIPELINE_MAX: usize = 1024;
/// Reply bytes one connection's unanswered commands may hold or have
/// reserved before it stops reading; one command is always taken.
pub const PIPELINE_REPLY_BYTES_MAX: usize = 64 << 20;
/// Encoded replies held before they are written out.
pub const WRITE_BUFFER_BYTES_MAX: usize = 1 << 20;
/// The largest reply an `MGET` may build from more than one value (one
/// value alone is always answered, whatever its size).
pub const REPLY_BYTES_MAX: usize = 64 << 20;
/// The largest value a key can hold: Redis's `proto-max-bulk-len` (a value
/// beyond half a segment is stored as a blob of whole segments, so only the
/// partition's free space bounds it below this).
pub const VALUE_BYTES_MAX: usize = 512 << 20;
/// What a read reserves in its connection's pipeline budget before its reply
/// is computed: an inline record's value at most. A larger value is counted
/// at its size once its reply exists (so a pipeline of reads of large values
/// holds those replies, as Redis does, rather than one read at a time).
pub const VALUE_RESERVE_BYTES: usize = sharedisk_storage::layout::SEGMENT_BYTES_MAX as usize;
/// Commands queued in one MULTI.
pub const MULTI_COMMANDS_MAX: usize = 10_000;
/// Bytes the commands queued in one MULTI may hold (arguments and their
/// handles): as much as one connection may make us buffer.
pub const MULTI_QUEUED_BYTES_MAX: usize = QUERY_BUFFER_BYTES_MAX;
/// How long a request for a partition without a ready owner is held before `-CLUSTERDOWN`.
pub const HOLD_MAX: Duration = Duration::from_secs(3);

/// RESP parsing limits: an argument as large as a value (Redis's defaults).
pub const RESP: Limits = Limits { bulk_bytes_max: VALUE_BYTES_MAX, args_max: 1 << 20, inline_bytes_max: 64 << 10 };

const _: () = assert!(QUERY_BUFFER_BYTES_MAX >= RESP.bulk_bytes_max && QUERY_BUFFER_BYTES_MAX >= RESP.inline_bytes_max);
const _: () = assert!(PIPELINE_REPLY_BYTES_MAX >= REPLY_BYTES_MAX && REPLY_BYTES_MAX >= VALUE_RESERVE_BYTES);

/// Claims that read a partition's whole log (no hot standby of it here) at
/// once: each is CPU-bound (building the index), so more than the cores
/// would only starve the session and the engine; claims from a hot standby
/// read only the lag and need no permit.
pub const COLD_CLAIMS_MAX: usize = 2;
