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
fn parameters(shared: &ServerState) -> Vec<(&'static str, String)> {
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let mut all = vec![
        ("appendfsync", "always".into()),
        // Every write is durable before it is acknowledged: what Redis calls
        // an append-only file synced always.
        ("appendonly", "yes".into()),
        // The address this server serves at, as the slot map names it.
        ("bind", shared.me.host.clone()),
        ("client-output-buffer-limit", output_limits(shared.controls.pubsub.limit.load(relaxed))),
        ("client-query-buffer-limit", QUERY_BUFFER_BYTES_MAX.to_string()),
        ("cluster-enabled", "yes".into()),
        ("daemonize", "no".into()),
        ("databases", "1".into()),
        ("maxclients", shared.clients_max.to_string()),
        ("maxmemory", shared.controls.maxmemory.load(relaxed).to_string()),
        // No connection is ever evicted to make room (the query buffer and
        // reply limits bound each one).
        ("maxmemory-clients", "0".into()),
        ("maxmemory-policy", "noeviction".into()),
        // Redis's default; sampling matters to eviction only, which never runs.
        ("maxmemory-samples", "5".into()),
        ("latency-monitor-threshold", "0".into()),
        ("port", shared.me.port.to_string()),
        ("proto-max-bulk-len", RESP.bulk_bytes_max.to_string()),
        // A hot standby reads the owner's log on the volume: nobody is a
        // replica of anybody in Redis's sense.
        ("replicaof", String::new()),
        ("save", String::new()),
        ("slaveof", String::new()),
        ("slowlog-log-slower-than", shared.controls.slowlog.slower_than.load(relaxed).to_string()),
        ("slowlog-max-len", shared.controls.slowlog.max_len().to_string()),
        ("timeout", "0".into()),
    ];
    let set = shared.controls.encodings.lock().unwrap_or_else(|e| e.into_inner());
    for &(name, alias, default) in ENCODINGS {
        let v = set.get(name).copied().unwrap_or(default).to_string();
        all.push((name, v.clone()));
        if let Some(alias) = alias {
            all.push((alias, v));
        }
    }
    all
}

/// Redis's encoding thresholds (name, its old `ziplist` alias, Redis's
/// default). `CONFIG SET` takes them and `CONFIG GET` answers what was set,
/// so that tools and test suites that tune them run; they change nothing:
/// a hash here is one table of field records whatever its size (there is
/// no small encoding to switch from).
const ENCODINGS: &[(&str, Option<&str>, i64)] = &[
    ("hash-max-listpack-entries", Some("hash-max-ziplist-entries"), 128),
    ("hash-max-listpack-value", Some("hash-max-ziplist-value"), 64),
    ("list-max-listpack-size", Some("list-max-ziplist-size"), -2),
    ("set-max-intset-entries", None, 512),
    ("zset-max-listpack-entries", Some("zset-max-ziplist-entries"), 128),
    ("zset-max-listpack-value", Some("zset-max-ziplist-value"), 64),
];

/// The canonical name of an encoding threshold (an alias maps to it).
fn encoding(name: &str) -> Option<&'static str> {
    ENCODINGS.iter().find(|(n, a, _)| *n == name || *a == Some(name)).map(|(n, _, _)| *n)
}

/// `client-output-buffer-limit` as Redis writes it. Only the pub/sub
/// class's hard limit is in force (a subscriber past it is disconnected);
/// a normal connection's replies are bounded by the pipeline's reply
/// limit instead, and there are no replicas of Redis's kind.
fn output_limits(pubsub_hard: usize) -> String {
    format!("normal 0 0 0 slave 0 0 0 pubsub {pubsub_hard} 0 0")
}

/// A `client-output-buffer-limit` value: the pub/sub class's hard limit it
/// sets (the other classes, and soft limits, only as they are).
fn parse_output_limits(v: &[u8], now: usize) -> Result<usize, String> {
    let words: Vec<&str> = std::str::from_utf8(v).map_err(|_| "wrong format".to_owned())?.split_whitespace().collect();
    if words.is_empty() || !words.len().is_multiple_of(4) {
        return Err("Wrong number of arguments in buffer limit configuration.".to_owned());
    }
    let mut hard = now;
    for w in words.chunks(4) {
        let memory = |s: &str| {
            crate::procstat::parse_memory(s.as_bytes())
                .ok_or_else(|| "Error in hard, soft or soft_seconds setting in buffer limit configuration.".to_owned())
        };
        let (h, soft) = (memory(w[1])?, memory(w[2])?);
        let secs = commands::parse_i64(w[3].as_bytes())
            .filter(|s| *s >= 0)
            .ok_or("Error in hard, soft or soft_seconds setting in buffer limit configuration.")?;
        match w[0].to_ascii_lowercase().as_str() {
            "pubsub" if soft == 0 && secs == 0 => hard = h as usize,
            "pubsub" => return Err("sharedisk enforces the pubsub hard limit only: set soft and soft_seconds to 0".to_owned()),
            "normal" | "slave" | "replica" if h == 0 && soft == 0 && secs == 0 => {}
            "normal" | "slave" | "replica" => {
                return Err(format!(
                    "sharedisk cannot change the {} class: a connection's replies are bounded by the pipeline's reply limit",
                    w[0]
                ));
            }
            _ => return Err("Invalid client class specified in buffer limit configuration.".to_owned()),
        }
    }
    Ok(hard)
}

/// Redis's test-only settings, answered only when asked for by exact name
/// (never through a pattern), as Redis's hidden configs are.
const HIDDEN: &[(&str, &str)] = &[("key-load-delay", "0")];

/// Redis's immutable configs (refused even to the value in force, as Redis does).
fn immutable(name: &str) -> bool {
    matches!(name, "daemonize" | "databases" | "cluster-enabled")
}

/// A `maxmemory-clients` value as Redis parses it: bytes, or a percentage
/// of maxmemory up to 100.
fn memory_or_percent(v: &[u8]) -> Result<u64, &'static str> {
    match v.strip_suffix(b"%") {
        Some(pct) => match commands::parse_i64(pct) {
            Some(n) if n > 100 => Err("percentage argument must be less or equal to 100"),
            Some(n) if n >= 0 => Ok(n as u64),
            _ => Err("argument must be a memory or percent value"),
        },
        None => crate::procstat::parse_memory(v).ok_or("argument must be a memory or percent value"),
    }
}

pub fn config(shared: &ServerState, args: &[Bytes]) -> Reply {
    match lower(&args[1]).as_str() {
        "get" if args.len() >= 3 => {
            let asked = |k: &str| args[2..].iter().any(|p| glob(p, k.as_bytes()));
            let named = |k: &str| args[2..].iter().any(|p| p.eq_ignore_ascii_case(k.as_bytes()));
            let hidden = HIDDEN.iter().filter(|(k, _)| named(k)).map(|(k, v)| (*k, (*v).to_owned()));
            Reply::Map(
                parameters(shared)
                    .into_iter()
                    .filter(|(k, _)| asked(k))
                    .chain(hidden)
                    .map(|(k, v)| (Reply::bulk(k), Reply::bulk(v)))
                    .collect(),
            )
        }
        "get" => commands::wrong_args("config|get"),
        "set" if args.len() >= 4 && args.len().is_multiple_of(2) => {
            let now = parameters(shared);
            let (mut maxmemory, mut slower_than, mut max_len, mut pubsub_hard) = (None, None, None, None);
            let mut encodings = Vec::new();
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
                let failed = |why: &str| Reply::error(format!("ERR CONFIG SET failed (possibly related to argument '{name}') - {why}"));
                if let Some(canonical) = encoding(&name) {
                    match commands::parse_i64(&pair[1]) {
                        Some(n) if n >= 0 || canonical == "list-max-listpack-size" => encodings.push((canonical, n)),
                        _ => return failed("argument couldn't be parsed into an integer"),
                    }
                    continue;
                }
                if name == "client-output-buffer-limit" {
                    match parse_output_limits(&pair[1], shared.controls.pubsub.limit.load(std::sync::atomic::Ordering::Relaxed)) {
                        Ok(hard) => pubsub_hard = Some(hard),
                        Err(why) => return failed(&why),
                    }
                    continue;
                }
                if name == "maxmemory-clients" {
                    match memory_or_percent(&pair[1]) {
                        Err(why) => return failed(why),
                        Ok(0) => continue,
                        Ok(_) => {
                            return failed(
                                "sharedisk cannot change it at run time: no connection is evicted; each is bounded by client-query-buffer-limit and the reply limit",
                            );
                        }
                    }
                }
                let Some((_, value)) = now.iter().find(|(k, _)| *k == name) else {
                    return Reply::error(format!("ERR Unknown option or number of arguments for CONFIG SET - '{name}'"));
                };
                if immutable(&name) {
                    return failed("can't set immutable config");
                }
                if pair[1].as_ref() != value.as_bytes() {
                    let how = match name.as_str() {
                        "maxclients" => "it is set by --max-clients when the server starts",
                        "bind" | "port" => "the cluster's slot map carries this server's address (--listen, --advertise at start)",
                        "appendonly" | "appendfsync" => "every write is durable before it is acknowledged, always",
                        "maxmemory-policy" => "it evicts nothing (noeviction): data lives on the volume, not in memory",
                        "latency-monitor-threshold" => "the latency monitor is not built: SLOWLOG and INFO commandstats time every command",
                        _ => "sharedisk fixes it",
                    };
                    return failed(&format!("sharedisk cannot change it at run time: {how}"));
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
            if let Some(n) = pubsub_hard {
                shared.controls.pubsub.limit.store(n, std::sync::atomic::Ordering::Relaxed);
            }
            shared.controls.encodings.lock().unwrap_or_else(|e| e.into_inner()).extend(encodings);
            Reply::ok()
        }
        "set" => commands::wrong_args("config|set"),
        // Redis's answer when it was started without a configuration file:
        // sharedisk is configured by its flags.
        "rewrite" if args.len() == 2 => Reply::error("ERR The server is running without a config file"),
        "help" if args.len() == 2 => super::help(
            "CONFIG",
            &[
                "GET <pattern>",
                "    Return parameters matching the glob-like <pattern> and their values.",
                "SET <directive> <value>",
                "    Set the configuration <directive> to <value>.",
                "RESETSTAT",
                "    Reset statistics reported by the INFO command.",
                "REWRITE",
                "    Rewrite the configuration file (none: sharedisk is configured by its flags).",
            ],
        ),
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

    /// Encoding thresholds are taken and answered under both names, and
    /// change nothing else.
    #[test]
    fn encoding_thresholds_are_kept_under_both_names() {
        let shared = ServerState::for_test(Arc::new(Always), 2);
        let set = |k: &str, v: &str| {
            let args: Vec<Bytes> = ["CONFIG", "SET", k, v].iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect();
            config(&shared, &args)
        };
        assert_eq!(get(&shared, "hash-max-listpack-value"), vec![(Reply::bulk("hash-max-listpack-value"), Reply::bulk("64"))]);
        assert_eq!(set("hash-max-ziplist-value", "10"), Reply::ok());
        for name in ["hash-max-listpack-value", "hash-max-ziplist-value"] {
            assert_eq!(get(&shared, name), vec![(Reply::bulk(name), Reply::bulk("10"))]);
        }
        assert!(matches!(set("hash-max-listpack-entries", "many"), Reply::Error(e) if e.contains("integer")));
        assert_eq!(set("list-max-listpack-size", "-3"), Reply::ok());
        assert!(matches!(set("zset-max-listpack-value", "-1"), Reply::Error(_)));
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
        assert_eq!(get(&shared, "*").len(), parameters(&shared).len());
        // maxmemory is set at run time (noeviction: writes refused above it).
        let set = |words: &[&str]| config(&shared, &words.iter().map(|w| Bytes::copy_from_slice(w.as_bytes())).collect::<Vec<_>>());
        // A hidden setting only by its exact name; immutable ones refused as such.
        assert!(get(&shared, "*").iter().all(|(k, _)| *k != Reply::bulk("key-load-delay")));
        assert_eq!(get(&shared, "key-load-delay"), vec![(Reply::bulk("key-load-delay"), Reply::bulk("0"))]);
        assert!(matches!(set(&["CONFIG", "SET", "daemonize", "no"]), Reply::Error(e) if e.contains("immutable")));
        assert!(matches!(set(&["CONFIG", "SET", "port", "2"]), Reply::Error(e) if e.contains("'port'") && e.contains("slot map")));
        assert_eq!(set(&["CONFIG", "SET", "port", "1", "bind", "127.0.0.1"]), Reply::ok(), "the values in force");
        assert_eq!(
            set(&["CONFIG", "SET", "maxmemory", "7", "maxmemory-clients", "200%"]),
            Reply::error(
                "ERR CONFIG SET failed (possibly related to argument 'maxmemory-clients') - percentage argument must be less or equal to 100"
            )
        );
        assert!(matches!(set(&["CONFIG", "SET", "maxmemory-clients", "10mb"]), Reply::Error(e) if e.contains("evicted")));
        assert_eq!(set(&["CONFIG", "SET", "maxmemory-clients", "0%"]), Reply::ok());
        assert_eq!(
            get(&shared, "maxmemory"),
            vec![(Reply::bulk("maxmemory"), Reply::bulk("0"))],
            "a refused CONFIG SET applied part of itself"
        );
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
