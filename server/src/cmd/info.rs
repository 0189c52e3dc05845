//! `INFO [section]` and `DBSIZE`.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::lower;
use crate::ServerState;
use crate::engine::Request;
use crate::resp::Reply;

/// Live keys in the partitions this server serves (each engine counts its own).
pub async fn dbsize(shared: &ServerState) -> Reply {
    let mut total = 0;
    for (partition, tx) in shared.local_routes() {
        if let Some(Reply::Int(n)) = super::keys::ask(&tx, partition, Request::Count { slot: None }).await {
            total += n;
        }
    }
    Reply::Int(total)
}

/// `INFO replication`: we are a master of what we serve, and keep hot
/// standbys (replicas, in Redis's words) of other servers' partitions; per
/// standby, whether it matches its owner's published head and how far
/// behind it is.
fn replication(shared: &ServerState) -> String {
    let views = shared.standbys.as_ref().map(|s| s.views()).unwrap_or_default();
    let stat = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut out = format!(
        "# Replication\r\nrole:master\r\nsharedisk_standbys:{}\r\nsharedisk_claims_from_standby:{}\r\nsharedisk_claims_cold:{}\r\n\
         sharedisk_claim_records_read:{}\r\nsharedisk_claim_bytes_read:{}\r\nsharedisk_replica_reads:{}\r\n\
         sharedisk_replica_max_lag_ms:{}\r\n",
        views.len(),
        stat(&shared.stats.claims_warm),
        stat(&shared.stats.claims_cold),
        stat(&shared.stats.claim_records),
        stat(&shared.stats.claim_bytes),
        stat(&shared.stats.replica_reads),
        shared.replica_max_lag.as_millis()
    );
    for (p, v) in views {
        let lag = v.lag_bytes.map_or("-1".to_owned(), |b| b.to_string());
        out.push_str(&format!(
            "sharedisk_standby_p{p}:synced={},lag_bytes={lag},stale_ms={},keys={},resyncs={}\r\n",
            u8::from(v.synced),
            v.stale_ms,
            v.keys,
            v.resyncs
        ));
    }
    out
}

pub fn info(shared: &ServerState, args: &[Bytes]) -> Reply {
    let port = shared.me.port;
    let sections = [
        (
            "server",
            format!(
                "# Server\r\nredis_version:7.0.15\r\nredis_mode:cluster\r\nsharedisk_version:{}\r\nsharedisk_node:{}\r\nos:{}\r\nprocess_id:{}\r\ntcp_port:{port}\r\nuptime_in_seconds:{}\r\n",
                env!("CARGO_PKG_VERSION"),
                shared.me.name,
                std::env::consts::OS,
                std::process::id(),
                shared.started.elapsed().as_secs()
            ),
        ),
        (
            "clients",
            format!("# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n", shared.clients.load(Ordering::Relaxed), shared.clients_max),
        ),
        ("persistence", "# Persistence\r\nloading:0\r\naof_enabled:1\r\nsharedisk_durability:group-commit-fdatasync\r\n".to_owned()),
        (
            "stats",
            format!(
                "# Stats\r\ntotal_commands_processed:{}\r\ntotal_error_replies:{}\r\nsharedisk_moved_replies:{}\r\n\
                 sharedisk_engine_cycles:{}\r\nsharedisk_engine_requests:{}\r\nsharedisk_barriers:{}\r\nsharedisk_barrier_usec:{}\r\n",
                shared.stats.commands.load(Ordering::Relaxed),
                shared.stats.errors.load(Ordering::Relaxed),
                shared.stats.redirects.load(Ordering::Relaxed),
                shared.stats.engine.cycles.load(Ordering::Relaxed),
                shared.stats.engine.requests.load(Ordering::Relaxed),
                shared.stats.engine.barriers.load(Ordering::Relaxed),
                shared.stats.engine.barrier_usec.load(Ordering::Relaxed)
            ),
        ),
        (
            "cluster",
            format!(
                "# Cluster\r\ncluster_enabled:1\r\nsharedisk_partitions:{}\r\nsharedisk_partitions_served:{}\r\n",
                shared.partitions,
                shared.local_routes().len()
            ),
        ),
        ("replication", replication(shared)),
        ("keyspace", "# Keyspace\r\n".to_owned()),
    ];

    let want = args.get(1).map(|a| lower(a));
    let all = matches!(want.as_deref(), None | Some("all" | "everything" | "default"));
    Reply::Verbatim(
        sections.iter().filter(|(n, _)| all || want.as_deref() == Some(*n)).map(|(_, s)| s.as_str()).collect::<Vec<_>>().join("\r\n"),
    )
}
