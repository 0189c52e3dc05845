//! `KEYS pattern`, `CLUSTER COUNTKEYSINSLOT` and `CLUSTER GETKEYSINSLOT`:
//! the keys of the partitions this server serves, as a Redis Cluster node
//! answers them for its own slots. Each partition's engine lists its own
//! published keys (a partition is private to its engine).

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::ServerState;
use crate::commands::{parse_i64, wrong_args};
use crate::engine::{Job, Msg, Outcome, Request};
use crate::limits::REPLY_BYTES_MAX;
use crate::resp::Reply;
use crate::shell::Route;

/// One partition's answer to `request`; None if it is not served here any more.
pub(super) async fn ask(tx: &tokio::sync::mpsc::Sender<Msg>, partition: u32, request: Request) -> Option<Reply> {
    let (otx, orx) = oneshot::channel();
    tx.send(Msg::Job(Job { partition, request, reply: otx })).await.ok()?;
    match orx.await {
        Ok(Outcome::Reply(r)) => Some(r),
        _ => None,
    }
}

/// `KEYS pattern`: every live key of this server's partitions that matches.
pub async fn keys(shared: &ServerState, pattern: &Bytes) -> Reply {
    let mut all = Vec::new();
    let mut bytes = 0usize;
    for (partition, tx) in shared.local_routes() {
        let request = Request::Keys { slot: None, pattern: Some(pattern.clone()), limit: usize::MAX };
        match ask(&tx, partition, request).await {
            Some(Reply::Array(keys)) => {
                for k in keys {
                    if let Reply::Bulk(b) = &k {
                        bytes += b.len();
                    }
                    if bytes > REPLY_BYTES_MAX {
                        return Reply::error(format!("ERR the reply would exceed {REPLY_BYTES_MAX} bytes of keys; use a narrower pattern"));
                    }
                    all.push(k);
                }
            }
            Some(e @ Reply::Error(_)) => return e,
            _ => {}
        }
    }
    Reply::Array(all)
}

/// `FLUSHALL [ASYNC|SYNC]` and `FLUSHDB [ASYNC|SYNC]` (one database): every
/// partition this server serves is cleared, one durable record each, as a
/// Redis Cluster node flushes its own slots. A partition that moved away
/// meanwhile is not flushed, and the reply says so.
pub async fn flush(shared: &ServerState, args: &[Bytes]) -> Reply {
    match args.get(1).map(|a| super::lower(a)) {
        None => {}
        Some(m) if args.len() == 2 && (m == "async" || m == "sync") => {}
        Some(_) => return Reply::error("ERR syntax error"),
    }
    let mut missed = 0;
    for (partition, tx) in shared.local_routes() {
        match ask(&tx, partition, Request::Flush).await {
            Some(Reply::Simple(_)) => {}
            Some(e @ Reply::Error(_)) => return e,
            _ => missed += 1,
        }
    }
    if missed > 0 {
        return Reply::error(format!("TRYAGAIN {missed} partitions moved away while being flushed; the others are flushed"));
    }
    Reply::ok()
}

/// `CLUSTER COUNTKEYSINSLOT slot` and `CLUSTER GETKEYSINSLOT slot count`
/// (`args` from the subcommand on). A slot served elsewhere holds no keys
/// here, as on a Redis Cluster node.
pub async fn in_slot(shared: &ServerState, sub: &str, args: &[Bytes]) -> Reply {
    let want = if sub == "countkeysinslot" { 1 } else { 2 };
    if args.len() != want {
        return wrong_args(&format!("cluster|{sub}"));
    }
    let Some(slot) = parse_i64(&args[0]).filter(|s| (0..16384).contains(s)).map(|s| s as u16) else {
        return Reply::error("ERR Invalid slot");
    };
    let limit = match args.get(1).map(|c| parse_i64(c)) {
        None => None,
        Some(Some(n)) if n >= 0 => Some(n as usize),
        Some(_) => return Reply::error("ERR Invalid number of keys"),
    };
    let (request, none) = match limit {
        None => (Request::Count { slot: Some(slot) }, Reply::Int(0)),
        Some(limit) => (Request::Keys { slot: Some(slot), pattern: None, limit }, Reply::Array(vec![])),
    };
    let partition = shared.partition_of_slot(slot);
    let Route::Local(local) = shared.route(partition) else { return none };
    ask(&local.tx, partition, request).await.unwrap_or(none)
}
