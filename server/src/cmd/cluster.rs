//! `CLUSTER SLOTS|SHARDS|NODES|MYID|MYSHARDID|INFO|KEYSLOT|HELP`, rendered
//! from the slot map the lock manager pushed (`server/cluster.rs`).

use bytes::Bytes;

use super::lower;
use crate::resp::{Reply, key_slot};
use crate::{ServerState, commands};

pub fn cluster(shared: &ServerState, args: &[Bytes]) -> Reply {
    let sub = lower(&args[1]);
    let view = shared.view();
    match (sub.as_str(), args.len()) {
        ("slots", 2) => view.slots_reply(),
        ("shards", 2) => view.shards_reply(),
        ("nodes", 2) => Reply::Verbatim(view.nodes_text()),
        ("myid" | "myshardid", 2) => Reply::bulk(shared.me.id.clone()),
        ("info", 2) => Reply::Verbatim(view.info_text()),
        ("keyslot", 3) => Reply::Int(i64::from(key_slot(&args[2]))),
        ("help", 2) => Reply::Array(
            [
                "SLOTS",
                "SHARDS",
                "NODES",
                "MYID",
                "MYSHARDID",
                "INFO",
                "KEYSLOT <key>",
                "COUNTKEYSINSLOT <slot>",
                "GETKEYSINSLOT <slot> <count>",
                "HELP",
            ]
            .iter()
            .map(|s| Reply::Simple((*s).into()))
            .collect(),
        ),
        ("slots" | "shards" | "nodes" | "myid" | "myshardid" | "info" | "keyslot" | "help", _) => {
            commands::wrong_args(&format!("cluster|{sub}"))
        }
        _ => Reply::error(format!("ERR unknown subcommand '{}'. Try CLUSTER HELP.", String::from_utf8_lossy(&args[1]))),
    }
}
