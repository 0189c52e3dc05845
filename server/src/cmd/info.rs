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
/// behind it is. There is no replication stream (a standby reads the
/// owner's log on the volume), so Redis's stream offset stays 0 and its
/// backlog inactive; the stream's id is the node id.
fn replication(shared: &ServerState) -> String {
    let views = shared.standbys.as_ref().map(|s| s.views()).unwrap_or_default();
    let stat = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut out = format!(
        "# Replication\r\nrole:master\r\nmaster_failover_state:no-failover\r\nmaster_replid:{}\r\n\
         master_replid2:0000000000000000000000000000000000000000\r\nmaster_repl_offset:0\r\nsecond_repl_offset:-1\r\n\
         repl_backlog_active:0\r\nsharedisk_standbys:{}\r\nsharedisk_claims_from_standby:{}\r\nsharedisk_claims_cold:{}\r\n\
         sharedisk_claim_records_read:{}\r\nsharedisk_claim_bytes_read:{}\r\nsharedisk_replica_reads:{}\r\n\
         sharedisk_replica_max_lag_ms:{}\r\n",
        shared.me.id,
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

/// Sections INFO answers with no argument or `default` (Redis 7.0's order).
const DEFAULT: &[&str] =
    &["server", "clients", "memory", "persistence", "stats", "replication", "cpu", "errorstats", "cluster", "keyspace"];
/// Besides the default ones, with `all` or `everything`.
const ALL_ONLY: &[&str] = &["commandstats"];

/// `INFO [section ...]`: the sections named (case-insensitive), `default`,
/// `all` or `everything` among them standing for those sets.
pub async fn info(shared: &ServerState, args: &[Bytes]) -> Reply {
    let mut want: Vec<&str> = Vec::new();
    let mut add = |name: &str| {
        if let Some(&s) = DEFAULT.iter().chain(ALL_ONLY).find(|s| **s == name)
            && !want.contains(&s)
        {
            want.push(s);
        }
    };
    let names: Vec<String> = args[1..].iter().map(|a| lower(a)).collect();
    if names.is_empty() {
        DEFAULT.iter().for_each(|s| add(s));
    }
    for n in &names {
        match n.as_str() {
            "default" => DEFAULT.iter().for_each(|s| add(s)),
            "all" | "everything" => DEFAULT.iter().chain(ALL_ONLY).for_each(|s| add(s)),
            other => add(other),
        }
    }
    // In Redis's order whatever the order asked.
    let mut out = Vec::new();
    for name in DEFAULT.iter().chain(ALL_ONLY).filter(|s| want.contains(s)) {
        out.push(section(shared, name).await);
    }
    Reply::Verbatim(out.join("\r\n"))
}

async fn section(shared: &ServerState, name: &str) -> String {
    let port = shared.me.port;
    let stat = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    match name {
        "server" => format!(
            "# Server\r\nredis_version:7.0.15\r\nredis_mode:cluster\r\nsharedisk_version:{}\r\nsharedisk_node:{}\r\nos:{}\r\n\
             arch_bits:64\r\nprocess_id:{}\r\nrun_id:{}\r\ntcp_port:{port}\r\nuptime_in_seconds:{}\r\nuptime_in_days:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            shared.me.name,
            std::env::consts::OS,
            std::process::id(),
            shared.me.id,
            shared.started.elapsed().as_secs(),
            shared.started.elapsed().as_secs() / 86_400
        ),
        "clients" => format!(
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:{}\r\n",
            shared.clients.load(Ordering::Relaxed),
            shared.clients_max,
            shared.controls.blocked.load(Ordering::Relaxed)
        ),
        "memory" => {
            // Values live in the volume's page cache: what this process holds
            // is its indexes, buffers and replies in flight (its resident set).
            let rss = crate::procstat::rss_bytes();
            let max = shared.controls.maxmemory.load(Ordering::Relaxed);
            format!(
                "# Memory\r\nused_memory:{rss}\r\nused_memory_human:{}\r\nused_memory_rss:{rss}\r\nused_memory_rss_human:{}\r\n\
                 maxmemory:{max}\r\nmaxmemory_human:{}\r\nmaxmemory_policy:noeviction\r\nmem_allocator:libc\r\n",
                crate::procstat::human(rss),
                crate::procstat::human(rss),
                crate::procstat::human(max)
            )
        }
        "persistence" => "# Persistence\r\nloading:0\r\nasync_loading:0\r\nrdb_changes_since_last_save:0\r\nrdb_bgsave_in_progress:0\r\n\
                          rdb_last_bgsave_status:ok\r\naof_enabled:1\r\naof_rewrite_in_progress:0\r\naof_last_write_status:ok\r\n\
                          sharedisk_durability:group-commit-fdatasync\r\n"
            .to_owned(),
        "stats" => {
            let [channels, patterns, shard_channels] = shared.controls.pubsub.counts();
            format!(
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\ntotal_error_replies:{}\r\n\
             sharedisk_moved_replies:{}\r\nsharedisk_engine_cycles:{}\r\nsharedisk_engine_requests:{}\r\nsharedisk_barriers:{}\r\n\
             sharedisk_barrier_usec:{}\r\npubsub_channels:{}\r\npubsub_patterns:{}\r\npubsubshard_channels:{}\r\n\
             client_output_buffer_limit_disconnections:{}\r\nsharedisk_pubsub_forwards_dropped:{}\r\n",
                stat(&shared.stats.connections),
                stat(&shared.stats.commands),
                stat(&shared.stats.errors),
                stat(&shared.stats.redirects),
                stat(&shared.stats.engine.cycles),
                stat(&shared.stats.engine.requests),
                stat(&shared.stats.engine.barriers),
                stat(&shared.stats.engine.barrier_usec),
                channels,
                patterns,
                shard_channels,
                stat(&shared.controls.pubsub.disconnected),
                stat(&shared.controls.pubsub.forward_dropped)
            )
        }
        "replication" => replication(shared),
        "cpu" => {
            let (user, system) = crate::procstat::cpu_seconds();
            format!(
                "# CPU\r\nused_cpu_sys:{system:.6}\r\nused_cpu_user:{user:.6}\r\nused_cpu_sys_children:0.000000\r\n\
                 used_cpu_user_children:0.000000\r\n"
            )
        }
        "errorstats" => {
            let kinds = shared.stats.errors_by_kind.lock().unwrap_or_else(|e| e.into_inner());
            let mut out = "# Errorstats\r\n".to_owned();
            for (kind, n) in kinds.iter() {
                out.push_str(&format!("errorstat_{kind}:count={n}\r\n"));
            }
            out
        }
        "commandstats" => {
            let mut out = "# Commandstats\r\n".to_owned();
            for (i, [calls, usec, rejected, failed]) in shared.stats.commands_by_name.used() {
                let per_call = if calls == 0 { 0.0 } else { usec as f64 / calls as f64 };
                out.push_str(&format!(
                    "cmdstat_{}:calls={calls},usec={usec},usec_per_call={per_call:.2},rejected_calls={rejected},failed_calls={failed}\r\n",
                    crate::commands::SPECS[i].name
                ));
            }
            out
        }
        "cluster" => format!(
            "# Cluster\r\ncluster_enabled:1\r\nsharedisk_partitions:{}\r\nsharedisk_partitions_served:{}\r\n",
            shared.partitions,
            shared.local_routes().len()
        ),
        "keyspace" => {
            let (mut keys, mut expires) = (0, 0);
            for (partition, tx) in shared.local_routes() {
                if let Some(Reply::Array(v)) = super::keys::ask(&tx, partition, Request::KeyStats).await
                    && let [Reply::Int(k), Reply::Int(e)] = v.as_slice()
                {
                    keys += k;
                    expires += e;
                }
            }
            // Redis lists a database only once it holds keys.
            if keys > 0 { format!("# Keyspace\r\ndb0:keys={keys},expires={expires},avg_ttl=0\r\n") } else { "# Keyspace\r\n".to_owned() }
        }
        _ => String::new(),
    }
}
