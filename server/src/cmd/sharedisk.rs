//! `SHAREDISK <subcommand>`: what our servers ask each other.
//!
//! * `STANDBY-APPLIED <partition> <seq> <timeout-ms>`: wait (at most the
//!   timeout, itself at most [`WAIT_MAX`]) until our hot standby of the
//!   partition is synced and has applied the record `seq`; answers the
//!   sequence number it has applied, or -1 if we keep no synced standby of
//!   it. An owner asks its partition's standby this to answer `WAIT`.
//! * `SCANSTEP <partition> <from> <count> [MATCH p] [TYPE t]`: one SCAN step
//!   of a partition served here (a server whose SCAN follows a partition
//!   that left it asks its new owner: `cmd::keys::scan`).
//! * `PUBLISH <channel> <message>`: another server's PUBLISH, delivered to
//!   the subscribers here (`pubsub.rs`).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::lower;
use crate::ServerState;
use crate::commands::{self, parse_i64};
use crate::resp::Reply;

/// The longest one `STANDBY-APPLIED` waits (a `WAIT` without a timeout asks again).
pub const WAIT_MAX: Duration = Duration::from_secs(10);

pub async fn sharedisk(shared: &ServerState, args: &[Bytes]) -> Reply {
    match (lower(&args[1]).as_str(), args.len()) {
        ("standby-applied", 5) => {
            let partition = parse_i64(&args[2]).filter(|p| (0..i64::from(shared.partitions)).contains(p));
            let (seq, ms) = (parse_i64(&args[3]).filter(|s| *s >= 0), parse_i64(&args[4]).filter(|m| *m >= 0));
            let (Some(partition), Some(seq), Some(ms)) = (partition, seq, ms) else {
                return Reply::error("ERR STANDBY-APPLIED takes a partition of this volume, a sequence number and a timeout in ms");
            };
            let until = Instant::now() + Duration::from_millis(ms as u64).min(WAIT_MAX);
            let applied = match &shared.standbys {
                Some(s) => s.wait_applied(partition as u32, seq as u64, until).await,
                None => None,
            };
            Reply::Int(applied.map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX)))
        }
        ("standby-applied", _) => commands::wrong_args("sharedisk|standby-applied"),
        ("scanstep", _) => super::keys::scan_step(shared, args).await,
        ("publish", _) => super::pubsub::publish_forwarded(shared, args),
        _ => Reply::error(format!("ERR unknown subcommand '{}'. Try STANDBY-APPLIED or SCANSTEP.", String::from_utf8_lossy(&args[1]))),
    }
}
