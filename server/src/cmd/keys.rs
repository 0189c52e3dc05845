//! `KEYS pattern`, `SCAN`, `RANDOMKEY`, `FLUSHALL`, `CLUSTER COUNTKEYSINSLOT` and `CLUSTER GETKEYSINSLOT`:
//! the keys of the partitions this server serves, as a Redis Cluster node
//! answers them for its own slots. Each partition's engine lists its own
//! published keys (a partition is private to its engine).

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::ServerState;
use crate::commands::{parse_i64, wrong_args};
use crate::engine::core::SCAN_HASH_BITS;
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

/// Keys one `SCAN` step asks a partition for at most (`COUNT` is a hint).
const SCAN_COUNT_MAX: usize = 100_000;

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]` over this server's
/// partitions, as a Redis Cluster node scans its own slots. The cursor is
/// the partition above [`SCAN_HASH_BITS`] and, below, the hash where its
/// next step starts ([`crate::engine::core::scan_hash`] orders keys within a
/// partition): partitions in order, each in hash order, so a key present
/// throughout is returned whatever is written meanwhile. A partition that
/// is not served here when the cursor reaches it is skipped, as a Redis
/// Cluster node has no keys of slots it does not serve.
pub async fn scan(shared: &ServerState, args: &[Bytes]) -> Reply {
    let Some(mut cursor) = std::str::from_utf8(&args[1]).ok().and_then(|c| c.parse::<u64>().ok()) else {
        return Reply::error("ERR invalid cursor");
    };
    let (mut pattern, mut count, mut kind) = (None, 10usize, None);
    let mut i = 2;
    while i < args.len() {
        let Some(value) = args.get(i + 1) else { return Reply::error("ERR syntax error") };
        match super::lower(&args[i]).as_str() {
            "match" => pattern = Some(value.clone()),
            "count" => match parse_i64(value) {
                Some(n) if n >= 1 => count = (n as usize).min(SCAN_COUNT_MAX),
                Some(_) => return Reply::error("ERR syntax error"),
                None => return Reply::error("ERR value is not an integer or out of range"),
            },
            "type" => kind = Some(value.clone()),
            _ => return Reply::error("ERR syntax error"),
        }
        i += 2;
    }
    // `*` matches everything: no filter to run.
    pattern = pattern.filter(|p| p.as_ref() != b"*");
    let mask = (1u64 << SCAN_HASH_BITS) - 1;
    let mut found = Vec::new();
    loop {
        let (partition, from) = (cursor >> SCAN_HASH_BITS, cursor & mask);
        if partition >= u64::from(shared.partitions) {
            return Reply::Array(vec![Reply::bulk("0"), Reply::Array(found)]);
        }
        let partition = partition as u32;
        let next_partition = u64::from(partition + 1) << SCAN_HASH_BITS;
        let Route::Local(local) = shared.route(partition) else {
            cursor = next_partition;
            continue;
        };
        let request = Request::Scan { from, count, pattern: pattern.clone(), kind: kind.clone() };
        let Some(Reply::Array(mut step)) = ask(&local.tx, partition, request).await else {
            // Gone while asked: its keys are not here any more.
            cursor = next_partition;
            continue;
        };
        let (Some(Reply::Array(keys)), Some(Reply::Int(next))) = (step.pop(), step.pop()) else {
            return Reply::error("ERR internal: a malformed SCAN step");
        };
        found.extend(keys);
        cursor = if next < 0 { next_partition } else { (u64::from(partition) << SCAN_HASH_BITS) + next as u64 };
        // One step per reply unless it found nothing and finished its partition.
        if !found.is_empty() || next >= 0 {
            let cursor = if cursor >> SCAN_HASH_BITS >= u64::from(shared.partitions) { 0 } else { cursor };
            return Reply::Array(vec![Reply::bulk(cursor.to_string()), Reply::Array(found)]);
        }
    }
}

/// `RANDOMKEY`: a key of a partition served here, chosen at random (a
/// partition at random among those holding keys, a key at random within).
pub async fn random_key(shared: &ServerState) -> Reply {
    // A fresh random number per call (calls within one millisecond differ).
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut x = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        ^ CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = move || {
        // splitmix64
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    // One key from each partition (the first at or after a random hash, or
    // the smallest), then one of those: every partition holding keys is as
    // likely, and within one every key's hash range.
    let mut candidates = Vec::new();
    for (partition, tx) in shared.local_routes() {
        let from = next() >> (64 - SCAN_HASH_BITS);
        for from in [from, 0] {
            let request = Request::Scan { from, count: 1, pattern: None, kind: None };
            if let Some(Reply::Array(mut step)) = ask(&tx, partition, request).await
                && let Some(Reply::Array(mut keys)) = step.pop()
                && let Some(k) = keys.pop()
            {
                candidates.push(k);
                break;
            }
        }
    }
    match candidates.len() {
        0 => Reply::Null,
        n => candidates.swap_remove((next() % n as u64) as usize),
    }
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
