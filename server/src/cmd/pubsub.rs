//! `PUBLISH`, `SPUBLISH` and `PUBSUB` (the subscriptions themselves are the
//! connection's: `conn.rs`; the hub is `pubsub.rs`).

use bytes::Bytes;

use super::lower;
use crate::ServerState;
use crate::pubsub::Kind;
use crate::resp::Reply;
use crate::shell::Route;

/// `PUBLISH channel message`: to the subscribers here (counted in the
/// reply, as Redis Cluster counts) and, forwarded, to every other server's.
pub fn publish(shared: &ServerState, args: &[Bytes]) -> Reply {
    let hub = &shared.controls.pubsub;
    let (channel, payload) = owned(args);
    let n = hub.publish(&channel, &payload, false);
    hub.forward(channel, payload);
    Reply::Int(n as i64)
}

/// The channel and message as buffers of their own: the arguments are
/// slices of the connection's read buffer, which a queued message would
/// otherwise keep whole (a 40-byte message pinning a megabyte).
fn owned(args: &[Bytes]) -> (Bytes, Bytes) {
    (Bytes::copy_from_slice(&args[1]), Bytes::copy_from_slice(&args[2]))
}

/// `SHAREDISK PUBLISH channel message`: another server's PUBLISH, for the
/// subscribers here only.
pub fn publish_forwarded(shared: &ServerState, args: &[Bytes]) -> Reply {
    match args {
        [_, _, channel, payload] => {
            let (channel, payload) = (Bytes::copy_from_slice(channel), Bytes::copy_from_slice(payload));
            Reply::Int(shared.controls.pubsub.publish(&channel, &payload, false) as i64)
        }
        _ => crate::commands::wrong_args("sharedisk|publish"),
    }
}

/// `SPUBLISH shardchannel message`: on the owner of the channel's slot, to
/// its subscribers here.
pub fn spublish(shared: &ServerState, args: &[Bytes]) -> Reply {
    let slot = crate::resp::key_slot(&args[1]);
    match shared.route(shared.partition_of_slot(slot)) {
        Route::Local(_) => {
            let (channel, payload) = owned(args);
            Reply::Int(shared.controls.pubsub.publish(&channel, &payload, true) as i64)
        }
        Route::Moved(addr) => Reply::error(format!("MOVED {slot} {addr}")),
        Route::Wait => Reply::error("CLUSTERDOWN Hash slot not served"),
    }
}

/// `PUBSUB CHANNELS|NUMSUB|NUMPAT|SHARDCHANNELS|SHARDNUMSUB|HELP`, of this
/// server's subscriptions (as each Redis Cluster node answers of its own).
pub fn pubsub(shared: &ServerState, args: &[Bytes]) -> Reply {
    let hub = &shared.controls.pubsub;
    let sub = lower(&args[1]);
    let list = |kind: Kind| match args.len() {
        2 | 3 => Reply::Array(hub.channels(kind, args.get(2).map(|p| p.as_ref())).into_iter().map(Reply::Bulk).collect()),
        _ => crate::commands::wrong_args(&format!("pubsub|{sub}")),
    };
    let numsub = |kind: Kind| {
        Reply::Array(args[2..].iter().flat_map(|c| [Reply::Bulk(c.clone()), Reply::Int(hub.numsub(kind, c) as i64)]).collect())
    };
    match (sub.as_str(), args.len()) {
        ("channels", _) => list(Kind::Channel),
        ("shardchannels", _) => list(Kind::Shard),
        ("numsub", _) => numsub(Kind::Channel),
        ("shardnumsub", _) => numsub(Kind::Shard),
        ("numpat", 2) => Reply::Int(hub.counts()[1] as i64),
        ("numpat", _) => crate::commands::wrong_args("pubsub|numpat"),
        ("help", 2) => super::help(
            "PUBSUB",
            &[
                "CHANNELS [<pattern>]",
                "    Return the currently active channels matching a <pattern> (default: '*').",
                "NUMPAT",
                "    Return number of subscriptions to patterns.",
                "NUMSUB [<channel> ...]",
                "    Return the number of subscribers for the specified channels, excluding",
                "    pattern subscriptions(default: no channels).",
                "SHARDCHANNELS [<pattern>]",
                "    Return the currently active shard level channels matching a <pattern> (default: '*').",
                "SHARDNUMSUB [<shardchannel> ...]",
                "    Return the number of subscribers for the specified shard level channel(s)",
            ],
        ),
        _ => Reply::error(format!("ERR unknown subcommand '{}'. Try PUBSUB HELP.", String::from_utf8_lossy(&args[1]))),
    }
}
