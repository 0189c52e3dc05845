//! `CONFIG GET` (what clients probe, with the limits actually in force),
//! `CONFIG RESETSTAT`; `CONFIG SET` of a parameter to the value in force
//! answers OK (Redis's test harness saves and restores settings so), any
//! other is refused naming what sets it (configuration is by flags).

use bytes::Bytes;

use super::lower;
use crate::glob::matches_nocase as glob;
use crate::limits::{QUERY_BUFFER_BYTES_MAX, RESP};
use crate::resp::Reply;
use crate::{ServerState, commands};

/// What `CONFIG GET` reports, under Redis's names (redis-benchmark probes
/// `save` and `appendonly`). The limits come from the running server.
fn parameters(shared: &ServerState) -> [(&'static str, String); 14] {
    [
        ("appendfsync", "always".into()),
        // Every write is durable before it is acknowledged: what Redis calls
        // an append-only file synced always.
        ("appendonly", "yes".into()),
        ("client-query-buffer-limit", QUERY_BUFFER_BYTES_MAX.to_string()),
        ("cluster-enabled", "yes".into()),
        ("databases", "1".into()),
        ("maxclients", shared.clients_max.to_string()),
        ("maxmemory", shared.controls.maxmemory.load(std::sync::atomic::Ordering::Relaxed).to_string()),
        ("maxmemory-policy", "noeviction".into()),
        ("latency-monitor-threshold", "0".into()),
        ("slowlog-log-slower-than", shared.controls.slowlog.slower_than.load(std::sync::atomic::Ordering::Relaxed).to_string()),
        ("slowlog-max-len", shared.controls.slowlog.max_len().to_string()),
        ("proto-max-bulk-len", RESP.bulk_bytes_max.to_string()),
        ("save", String::new()),
        ("timeout", "0".into()),
    ]
}

pub fn config(shared: &ServerState, args: &[Bytes]) -> Reply {
    match lower(&args[1]).as_str() {
        "get" if args.len() >= 3 => Reply::Map(
            parameters(shared)
                .into_iter()
                .filter(|(k, _)| args[2..].iter().any(|p| glob(p, k.as_bytes())))
                .map(|(k, v)| (Reply::bulk(k), Reply::bulk(v)))
                .collect(),
        ),
        "get" => commands::wrong_args("config|get"),
        "set" if args.len() >= 4 && args.len().is_multiple_of(2) => {
            let now = parameters(shared);
            let (mut maxmemory, mut slower_than, mut max_len) = (None, None, None);
            for (i, pair) in args[2..].chunks(2).enumerate() {
                let name = lower(&pair[0]);
                if args[2..].chunks(2).take(i).any(|p| lower(&p[0]) == name) {
                    return Reply::error(format!("ERR CONFIG SET failed (possibly related to argument '{name}') - duplicate parameter"));
                }
                if name == "maxmemory" {
                    let Some(bytes) = crate::procstat::parse_memory(&pair[1]) else {
                        return Reply::error(
                            "ERR CONFIG SET failed (possibly related to argument 'maxmemory') - argument must be a memory value",
                        );
                    };
                    maxmemory = Some(bytes);
                    continue;
                }
                if name == "slowlog-log-slower-than" || name == "slowlog-max-len" {
                    let n = commands::parse_i64(&pair[1]).filter(|n| name == "slowlog-log-slower-than" || *n >= 0);
                    let Some(n) = n else {
                        return Reply::error(format!(
                            "ERR CONFIG SET failed (possibly related to argument '{name}') - argument couldn't be parsed into an integer"
                        ));
                    };
                    if name == "slowlog-max-len" {
                        max_len = Some(n as usize)
                    } else {
                        slower_than = Some(n)
                    }
                    continue;
                }
                let Some((_, value)) = now.iter().find(|(k, _)| *k == name) else {
                    return Reply::error(format!("ERR Unknown option or number of arguments for CONFIG SET - '{name}'"));
                };
                if pair[1].as_ref() != value.as_bytes() {
                    let how = match name.as_str() {
                        "maxclients" => "it is set by --max-clients when the server starts",
                        "appendonly" | "appendfsync" => "every write is durable before it is acknowledged, always",
                        "maxmemory-policy" => "it evicts nothing (noeviction): data lives on the volume, not in memory",
                        "latency-monitor-threshold" => "the latency monitor is not built: SLOWLOG and INFO commandstats time every command",
                        _ => "sharedisk fixes it",
                    };
                    return Reply::error(format!(
                        "ERR CONFIG SET failed (possibly related to argument '{name}') - sharedisk cannot change it at run time: {how}"
                    ));
                }
            }
            // Applied only once every pair checked out (all or nothing, as Redis).
            if let Some(bytes) = maxmemory {
                shared.controls.maxmemory.store(bytes, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(us) = slower_than {
                shared.controls.slowlog.slower_than.store(us, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(n) = max_len {
                shared.controls.slowlog.set_max_len(n);
            }
            Reply::ok()
        }
        "set" => commands::wrong_args("config|set"),
        "resetstat" => {
            shared.stats.reset();
            Reply::ok()
        }
        _ => Reply::error(format!("ERR unknown subcommand '{}'. Try CONFIG HELP.", String::from_utf8_lossy(&args[1]))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::Lease;

    struct Always;
    impl Lease for Always {
        fn valid(&self) -> bool {
            true
        }
    }

    fn get(shared: &ServerState, pattern: &str) -> Vec<(Reply, Reply)> {
        let args = [Bytes::from_static(b"CONFIG"), Bytes::from_static(b"GET"), Bytes::copy_from_slice(pattern.as_bytes())];
        let Reply::Map(m) = config(shared, &args) else { panic!() };
        m
    }

    #[test]
    fn config_globs() {
        assert!(glob(b"save", b"save"));
        assert!(glob(b"app*", b"appendonly"));
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"s?ve", b"save"));
        assert!(!glob(b"save", b"saves"));
        assert!(!glob(&[b'*'; 100].iter().chain(b"x").copied().collect::<Vec<_>>(), b"appendonlyappendonly"));
        let shared = ServerState::for_test(Arc::new(Always), 2);
        assert_eq!(get(&shared, "save"), vec![(Reply::bulk("save"), Reply::bulk(""))]);
    }

    #[test]
    fn config_set_accepts_the_value_in_force_only() {
        let shared = ServerState::for_test(Arc::new(Always), 2);
        let set = |words: &[&str]| {
            let args: Vec<Bytes> = words.iter().map(|w| Bytes::copy_from_slice(w.as_bytes())).collect();
            config(&shared, &args)
        };
        assert_eq!(set(&["CONFIG", "SET", "appendonly", "yes", "save", ""]), Reply::ok());
        let Reply::Error(e) = set(&["CONFIG", "SET", "appendonly", "no"]) else { panic!() };
        assert!(e.contains("'appendonly'") && e.contains("durable"), "{e}");
        let Reply::Error(e) = set(&["CONFIG", "SET", "maxclients", "5"]) else { panic!() };
        assert!(e.contains("--max-clients"), "{e}");
        let Reply::Error(e) = set(&["CONFIG", "SET", "no-such-thing", "1"]) else { panic!() };
        assert!(e.starts_with("ERR Unknown option"), "{e}");
        assert_eq!(set(&["CONFIG", "SET", "save"]), commands::wrong_args("config|set"));
    }

    #[test]
    fn config_get_reports_the_limits_in_force() {
        // `ServerState::for_test` runs with at most one client (as `--max-clients 1` would).
        let shared = ServerState::for_test(Arc::new(Always), 2);
        assert_eq!(shared.clients_max, 1);
        assert_eq!(get(&shared, "maxclients"), vec![(Reply::bulk("maxclients"), Reply::bulk("1"))]);
        assert_eq!(
            get(&shared, "proto-max-bulk-len"),
            vec![(Reply::bulk("proto-max-bulk-len"), Reply::bulk(RESP.bulk_bytes_max.to_string()))]
        );
        assert_eq!(
            get(&shared, "client-query-buffer-limit"),
            vec![(Reply::bulk("client-query-buffer-limit"), Reply::bulk(QUERY_BUFFER_BYTES_MAX.to_string()))]
        );
        assert_eq!(get(&shared, "*").len(), 14);
        // maxmemory is set at run time (noeviction: writes refused above it).
        let set = |words: &[&str]| config(&shared, &words.iter().map(|w| Bytes::copy_from_slice(w.as_bytes())).collect::<Vec<_>>());
        assert_eq!(get(&shared, "maxmemory"), vec![(Reply::bulk("maxmemory"), Reply::bulk("0"))]);
        assert_eq!(set(&["CONFIG", "SET", "maxmemory", "1"]), Reply::ok());
        assert!(shared.over_maxmemory());
        assert!(matches!(set(&["CONFIG", "SET", "maxmemory", "bla"]), Reply::Error(_)));
        assert!(matches!(set(&["CONFIG", "SET", "maxmemory", "5", "maxmemory", "6"]), Reply::Error(e) if e.contains("duplicate")));
        assert!(matches!(set(&["CONFIG", "SET", "maxmemory", "0", "appendonly", "no"]), Reply::Error(_)));
        assert!(shared.over_maxmemory(), "a refused CONFIG SET applied part of itself");
        assert_eq!(set(&["CONFIG", "SET", "maxmemory", "0"]), Reply::ok());
        assert!(!shared.over_maxmemory());
        assert_eq!(set(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]), Reply::ok());
        assert!(matches!(set(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]), Reply::Error(e) if e.contains("noeviction")));
    }
}
