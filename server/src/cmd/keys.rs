//! `KEYS pattern`, `SCAN`, `RANDOMKEY`, `FLUSHALL`, `CLUSTER COUNTKEYSINSLOT` and `CLUSTER GETKEYSINSLOT`:
//! the keys of the partitions this server serves, as a Redis Cluster node
//! answers them for its own slots. Each partition's engine lists its own
//! published keys (a partition is private to its engine).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use crate::ServerState;
use crate::commands::{parse_i64, wrong_args};
use crate::engine::core::SCAN_HASH_BITS;
use crate::engine::{Job, Msg, Outcome, Request};
use crate::limits::{HOLD_MAX, REPLY_BYTES_MAX};
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

/// How long after a partition leaves this server a `SCAN` here still
/// covers it (through its new owner): a scan of the whole cluster that
/// finishes within it misses no key present throughout, whatever moved.
pub const SCAN_FOLLOW_WINDOW: Duration = Duration::from_secs(600);

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]` over this server's
/// partitions, as a Redis Cluster node scans its own slots. The cursor is
/// the partition above [`SCAN_HASH_BITS`] and, below, the hash where its
/// next step starts ([`crate::engine::core::scan_hash`] orders keys within a
/// partition): partitions in order, each in hash order, so a key present
/// throughout is returned whatever is written meanwhile.
///
/// Partitions move. A client scans each node in turn (redis-py's
/// `scan_iter`), so a partition that leaves a node after or before that
/// node's scan reached it, for a node already scanned, would be missed by
/// both. So a partition this server served within [`SCAN_FOLLOW_WINDOW`]
/// is scanned here too, step by step at its new owner (`SHAREDISK
/// SCANSTEP`): its keys may come twice (SCAN allows that), never not at all.
/// Other partitions not served here are skipped, as a Redis Cluster node
/// has no keys of slots it does not serve.
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
        let request = Request::Scan { from, count, pattern: pattern.clone(), kind: kind.clone() };
        let step = match shared.route(partition) {
            Route::Local(local) => match ask(&local.tx, partition, request.clone()).await {
                Some(Reply::Array(step)) => Some(step),
                // Gone while asked: followed below, as one that left.
                _ => None,
            },
            _ => None,
        };
        let step = match step {
            Some(step) => step,
            None if shared.served_within(partition, SCAN_FOLLOW_WINDOW) => match follow(shared, partition, &request).await {
                Ok(step) => step,
                Err(e) => return e,
            },
            None => {
                cursor = next_partition;
                continue;
            }
        };
        let mut step = step;
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

/// One `SCAN` step of `partition`, which left this server, at whoever
/// serves it now (here again, or another server asked with `SHAREDISK
/// SCANSTEP`); the step's `[next, keys]`. While it has no owner, or its
/// owner changes under the question, it is asked again until [`HOLD_MAX`]
/// (then `-TRYAGAIN`: the same cursor may be sent again).
async fn follow(shared: &ServerState, partition: u32, request: &Request) -> Result<Vec<Reply>, Reply> {
    let until = Instant::now() + HOLD_MAX;
    let mut ver = shared.subscribe();
    loop {
        ver.borrow_and_update();
        let step = match shared.route(partition) {
            Route::Local(local) => match ask(&local.tx, partition, request.clone()).await {
                Some(Reply::Array(step)) => Some(step),
                _ => None,
            },
            Route::Moved(addr) => scan_step_at(shared, &addr, partition, request).await,
            Route::Wait => None,
        };
        if let Some(step) = step {
            return Ok(step);
        }
        if Instant::now() >= until {
            return Err(Reply::error(format!("TRYAGAIN partition {partition} is moving; send SCAN again with the same cursor")));
        }
        let _ = tokio::time::timeout_at(until.min(Instant::now() + Duration::from_millis(50)).into(), ver.changed()).await;
    }
}

/// Ask the server at `addr` for one SCAN step of `partition`
/// (`SHAREDISK SCANSTEP partition from count [MATCH p] [TYPE t]`); None if
/// it does not serve it (any more) or cannot be asked.
async fn scan_step_at(shared: &ServerState, addr: &str, partition: u32, request: &Request) -> Option<Vec<Reply>> {
    let Request::Scan { from, count, pattern, kind } = request else { return None };
    let ask = async {
        let mut s = crate::peer::connect(shared, addr).await?;
        let mut args = vec![Bytes::from_static(b"SHAREDISK"), Bytes::from_static(b"SCANSTEP")];
        args.extend([partition.to_string(), from.to_string(), count.to_string()].map(Bytes::from));
        if let Some(p) = pattern {
            args.extend([Bytes::from_static(b"MATCH"), p.clone()]);
        }
        if let Some(t) = kind {
            args.extend([Bytes::from_static(b"TYPE"), t.clone()]);
        }
        crate::peer::send(&mut s, args).await?;
        let mut buf = BytesMut::with_capacity(16 << 10);
        loop {
            if let Some(step) = parse_step(&buf)? {
                return Some(step);
            }
            if buf.len() > REPLY_BYTES_MAX || s.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
    };
    tokio::time::timeout(HOLD_MAX, ask).await.ok().flatten()
}

/// A `SCANSTEP` reply, `*2 :next *n $key...`: `Some(Some(step))` when whole,
/// `Some(None)` while incomplete, None if it is anything else (an error).
fn parse_step(b: &[u8]) -> Option<Option<Vec<Reply>>> {
    fn line(b: &[u8], at: usize, prefix: u8) -> Option<Option<(i64, usize)>> {
        let Some(end) = b.get(at..)?.windows(2).position(|w| w == b"\r\n") else { return Some(None) };
        if b.get(at) != Some(&prefix) {
            return None;
        }
        let n = std::str::from_utf8(&b[at + 1..at + end]).ok()?.parse::<i64>().ok()?;
        Some(Some((n, at + end + 2)))
    }
    macro_rules! next {
        ($e:expr) => {
            match $e? {
                Some(v) => v,
                None => return Some(None),
            }
        };
    }
    if b.is_empty() {
        return Some(None);
    }
    let (two, at) = next!(line(b, 0, b'*'));
    let (next, at) = next!(line(b, at, b':'));
    let (n, mut at) = next!(line(b, at, b'*'));
    if two != 2 || n < 0 {
        return None;
    }
    let mut keys = Vec::with_capacity((n as usize).min(1 << 16));
    for _ in 0..n {
        let (len, from) = next!(line(b, at, b'$'));
        let len = usize::try_from(len).ok()?;
        if b.len() < from + len + 2 {
            return Some(None);
        }
        keys.push(Reply::Bulk(Bytes::copy_from_slice(&b[from..from + len])));
        at = from + len + 2;
    }
    Some(Some(vec![Reply::Int(next), Reply::Array(keys)]))
}

/// `SHAREDISK SCANSTEP partition from count [MATCH p] [TYPE t]`: one SCAN
/// step of a partition served here, `[next, keys]` (next -1: done), for a
/// server whose SCAN follows a partition that left it.
pub async fn scan_step(shared: &ServerState, args: &[Bytes]) -> Reply {
    let bad = || Reply::error("ERR SCANSTEP takes a partition, a hash, a count, and MATCH or TYPE");
    let (Some(partition), Some(from), Some(count)) = (
        args.get(2).and_then(|a| parse_i64(a)).filter(|p| (0..i64::from(shared.partitions)).contains(p)),
        args.get(3).and_then(|a| parse_i64(a)).filter(|f| *f >= 0),
        args.get(4).and_then(|a| parse_i64(a)).filter(|c| (1..=SCAN_COUNT_MAX as i64).contains(c)),
    ) else {
        return bad();
    };
    let (mut pattern, mut kind) = (None, None);
    for pair in args.get(5..).unwrap_or_default().chunks(2) {
        match (super::lower(&pair[0]).as_str(), pair.get(1)) {
            ("match", Some(p)) => pattern = Some(p.clone()),
            ("type", Some(t)) => kind = Some(t.clone()),
            _ => return bad(),
        }
    }
    let Route::Local(local) = shared.route(partition as u32) else {
        return Reply::error("TRYAGAIN not served here");
    };
    let request = Request::Scan { from: from as u64, count: count as usize, pattern, kind };
    match ask(&local.tx, partition as u32, request).await {
        Some(step @ Reply::Array(_)) => step,
        _ => Reply::error("TRYAGAIN not served here"),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A SCANSTEP reply is taken only whole, byte by byte as it may arrive,
    /// binary keys and all; an error reply or garbage is no step.
    #[test]
    fn a_scan_step_reply_parses_only_whole() {
        let mut wire = BytesMut::new();
        let keys = vec![Reply::bulk("a"), Reply::Bulk(Bytes::from_static(b"b\r\n\0c")), Reply::bulk("")];
        Reply::Array(vec![Reply::Int(77), Reply::Array(keys.clone())]).encode(2, &mut wire);
        for cut in 0..wire.len() {
            assert_eq!(parse_step(&wire[..cut]), Some(None), "a step parsed from {cut} of {} bytes", wire.len());
        }
        assert_eq!(parse_step(&wire), Some(Some(vec![Reply::Int(77), Reply::Array(keys)])));
        let mut done = BytesMut::new();
        Reply::Array(vec![Reply::Int(-1), Reply::Array(vec![])]).encode(2, &mut done);
        assert_eq!(parse_step(&done), Some(Some(vec![Reply::Int(-1), Reply::Array(vec![])])));
        for bad in
            [&b"-TRYAGAIN not served here\r\n"[..], b"*3\r\n:1\r\n*0\r\n", b"*2\r\n$1\r\nx\r\n", b"*2\r\n:x\r\n", b"*2\r\n:1\r\n*-1\r\n"]
        {
            assert_eq!(parse_step(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
