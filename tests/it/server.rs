//! The Redis-protocol servers, end to end: real processes, the `redis`
//! crate's async cluster client, redis-cli and redis-benchmark.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use crate::cluster::*;
use crate::util::*;

const PARTITIONS: u32 = 8;

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A plain (non-cluster) connection to one server.
async fn direct(addr: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{addr}/")).unwrap().get_multiplexed_async_connection().await.unwrap()
}

fn err_code(e: &redis::RedisError) -> String {
    e.code().unwrap_or("").to_owned()
}

#[test]
fn cluster_client_runs_every_command_with_redis_semantics() {
    let c = Cluster::start(3, PARTITIONS);
    rt().block_on(async {
        let mut con = client(&c).await;
        // Strings and counters, on keys spread over every partition.
        for i in 0..64 {
            let k = format!("key:{i}");
            let _: () = con.set(&k, i).await.unwrap();
            assert_eq!(con.get::<_, i64>(&k).await.unwrap(), i);
            assert_eq!(con.incr::<_, _, i64>(&k, 5).await.unwrap(), i + 5);
        }
        assert_eq!(con.decr::<_, _, i64>("key:1", 10).await.unwrap(), -4);
        let n: i64 = redis::cmd("INCR").arg("ctr").query_async(&mut con).await.unwrap();
        assert_eq!(n, 1);
        let n: i64 = redis::cmd("DECR").arg("ctr").query_async(&mut con).await.unwrap();
        assert_eq!(n, 0);
        assert_eq!(con.append::<_, _, i64>("s", "abc").await.unwrap(), 3);
        assert_eq!(con.append::<_, _, i64>("s", "de").await.unwrap(), 5);
        assert_eq!(con.strlen::<_, i64>("s").await.unwrap(), 5);
        assert_eq!(con.get::<_, String>("s").await.unwrap(), "abcde");
        let e = con.incr::<_, _, i64>("s", 1).await.unwrap_err();
        assert!(e.to_string().contains("not an integer"), "{e}");
        assert_eq!(con.exists::<_, i64>(&["key:2", "nope"][..1]).await.unwrap(), 1);
        assert_eq!(con.del::<_, i64>("key:2").await.unwrap(), 1);
        assert_eq!(con.del::<_, i64>("key:2").await.unwrap(), 0);
        assert_eq!(con.get::<_, Option<String>>("key:2").await.unwrap(), None);
        // SET options.
        let r: Option<String> = redis::cmd("SET").arg("o").arg("1").arg("NX").query_async(&mut con).await.unwrap();
        assert_eq!(r.as_deref(), Some("OK"));
        let r: Option<String> = redis::cmd("SET").arg("o").arg("2").arg("NX").query_async(&mut con).await.unwrap();
        assert_eq!(r, None);
        let r: Option<String> = redis::cmd("SET").arg("o").arg("3").arg("XX").arg("GET").query_async(&mut con).await.unwrap();
        assert_eq!(r.as_deref(), Some("1"));
        let r: Option<String> = redis::cmd("SET").arg("none").arg("3").arg("XX").query_async(&mut con).await.unwrap();
        assert_eq!(r, None);
        // Multi-key commands in one slot (hash tags) and the client's own splitting.
        let _: () = con.mset(&[("{u}a", "1"), ("{u}b", "2")]).await.unwrap();
        let v: Vec<Option<String>> = con.mget(&["{u}a", "{u}b", "{u}c"]).await.unwrap();
        assert_eq!(v, vec![Some("1".into()), Some("2".into()), None]);
        assert_eq!(con.exists::<_, i64>(&["{u}a", "{u}b", "{u}c"]).await.unwrap(), 2);
        assert_eq!(con.del::<_, i64>(&["{u}a", "{u}b"]).await.unwrap(), 2);
        // Expiry: EX/PX, EXPIRE/PEXPIRE, TTL/PTTL, PERSIST, and keys really expire.
        let _: () = redis::cmd("SET").arg("e").arg("v").arg("EX").arg(100).query_async(&mut con).await.unwrap();
        let ttl: i64 = con.ttl("e").await.unwrap();
        assert!((99..=100).contains(&ttl), "{ttl}");
        assert_eq!(con.persist::<_, i64>("e").await.unwrap(), 1);
        assert_eq!(con.ttl::<_, i64>("e").await.unwrap(), -1);
        assert_eq!(con.pexpire::<_, i64>("e", 50_000).await.unwrap(), 1);
        let pttl: i64 = con.pttl("e").await.unwrap();
        assert!((40_000..=50_000).contains(&pttl), "{pttl}");
        assert_eq!(con.expire::<_, i64>("e", 200).await.unwrap(), 1);
        assert_eq!(con.ttl::<_, i64>("nope").await.unwrap(), -2);
        let _: () = redis::cmd("SET").arg("short").arg("v").arg("PX").arg(100).query_async(&mut con).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while con.exists::<_, i64>("short").await.unwrap() == 1 {
            assert!(Instant::now() < deadline, "a 100 ms key never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(con.get::<_, Option<String>>("short").await.unwrap(), None);
        // Unknown commands and wrong argument counts are errors, not crashes.
        let e = redis::cmd("FROB").arg("x").query_async::<String>(&mut con).await.unwrap_err();
        assert!(e.to_string().contains("unknown command"), "{e}");
        let e = redis::cmd("GET").arg("a").arg("b").query_async::<String>(&mut con).await.unwrap_err();
        assert!(e.to_string().contains("wrong number of arguments"), "{e}");
    });
}

/// One command through the cluster client (routed by its first key).
async fn q<T: redis::FromRedisValue>(con: &mut redis::cluster_async::ClusterConnection, line: &str) -> redis::RedisResult<T> {
    let mut words = line.split(' ');
    let mut cmd = redis::cmd(words.next().unwrap());
    for w in words {
        cmd.arg(w);
    }
    cmd.query_async(con).await
}

#[test]
fn string_and_keyspace_commands_through_a_cluster_client() {
    let c = Cluster::start(3, PARTITIONS);
    rt().block_on(async {
        let mut con = client(&c).await;
        let ok = |r: redis::RedisResult<String>| assert_eq!(r.unwrap(), "OK");
        for i in 0..32 {
            let k = format!("n:{i}");
            assert_eq!(q::<i64>(&mut con, &format!("SETNX {k} a")).await.unwrap(), 1);
            assert_eq!(q::<i64>(&mut con, &format!("SETNX {k} b")).await.unwrap(), 0);
            assert_eq!(q::<String>(&mut con, &format!("GETSET {k} c")).await.unwrap(), "a");
            assert_eq!(q::<String>(&mut con, &format!("INCRBYFLOAT f:{i} 1.5")).await.unwrap(), "1.5");
            assert_eq!(q::<String>(&mut con, &format!("INCRBYFLOAT f:{i} 0.25")).await.unwrap(), "1.75");
        }
        ok(q(&mut con, "SETEX ex 100 v").await);
        let ttl: i64 = q(&mut con, "TTL ex").await.unwrap();
        assert!((99..=100).contains(&ttl), "{ttl}");
        ok(q(&mut con, "PSETEX pex 100000 v").await);
        assert_eq!(q::<String>(&mut con, "GETEX pex PERSIST").await.unwrap(), "v");
        assert_eq!(q::<i64>(&mut con, "PTTL pex").await.unwrap(), -1);
        assert_eq!(q::<String>(&mut con, "GETDEL pex").await.unwrap(), "v");
        assert_eq!(q::<Option<String>>(&mut con, "GET pex").await.unwrap(), None);
        ok(q(&mut con, "SET r Hello_World").await);
        assert_eq!(q::<i64>(&mut con, "SETRANGE r 6 Redis").await.unwrap(), 11);
        assert_eq!(q::<String>(&mut con, "GETRANGE r -5 -1").await.unwrap(), "Redis");
        assert_eq!(q::<i64>(&mut con, "SETBIT b 100 1").await.unwrap(), 0);
        assert_eq!(q::<i64>(&mut con, "GETBIT b 100").await.unwrap(), 1);
        assert_eq!(q::<i64>(&mut con, "BITCOUNT b").await.unwrap(), 1);
        assert_eq!(q::<i64>(&mut con, "BITPOS b 1").await.unwrap(), 100);
        assert_eq!(q::<String>(&mut con, "TYPE r").await.unwrap(), "string");
        assert_eq!(q::<String>(&mut con, "TYPE nope").await.unwrap(), "none");
        assert_eq!(q::<i64>(&mut con, "EXPIREAT r 4102444800").await.unwrap(), 1);
        assert_eq!(q::<i64>(&mut con, "EXPIRETIME r").await.unwrap(), 4102444800);
        // Two keys: one slot with a hash tag, else CROSSSLOT from the server.
        assert_eq!(q::<i64>(&mut con, "MSETNX {t}a 1 {t}b 2").await.unwrap(), 1);
        assert_eq!(q::<i64>(&mut con, "MSETNX {t}b 3 {t}c 4").await.unwrap(), 0);
        ok(q(&mut con, "RENAME {t}a {t}z").await);
        assert_eq!(q::<i64>(&mut con, "RENAMENX {t}z {t}b").await.unwrap(), 0);
        assert_eq!(q::<i64>(&mut con, "COPY {t}z {t}y").await.unwrap(), 1);
        let v: Vec<Option<String>> = q(&mut con, "MGET {t}a {t}b {t}c {t}y {t}z").await.unwrap();
        assert_eq!(v, [None, Some("2".into()), None, Some("1".into()), Some("1".into())]);
        // Sent to a server as it is (the cluster client refuses it itself).
        let mut one = direct(&c.servers[0].addr).await;
        for line in ["RENAME n:1 n:2", "COPY n:1 n:2", "MSETNX n:1 x n:2 y"] {
            let mut cmd = redis::cmd(line.split(' ').next().unwrap());
            for w in line.split(' ').skip(1) {
                cmd.arg(w);
            }
            let e = cmd.query_async::<redis::Value>(&mut one).await.unwrap_err();
            assert_eq!(err_code(&e), "CROSSSLOT", "{line}: {e}");
        }
        assert_eq!(q::<String>(&mut con, "GET n:1").await.unwrap(), "c", "a refused RENAME changed nothing");
        // The new writers are atomic inside MULTI like every other one.
        let (a, b, cnt): (i64, String, i64) = redis::pipe()
            .atomic()
            .cmd("SETNX")
            .arg("{m}x")
            .arg("1")
            .cmd("INCRBYFLOAT")
            .arg("{m}x")
            .arg("0.5")
            .cmd("SETBIT")
            .arg("{m}y")
            .arg("3")
            .arg("1")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!((a, b.as_str(), cnt), (1, "1.5", 0));
        // KEYS answers each server's own keys; together they are all of them.
        let mut found = std::collections::BTreeSet::new();
        for s in &c.servers {
            let mut d = direct(&s.addr).await;
            let keys: Vec<String> = redis::cmd("KEYS").arg("n:*").query_async(&mut d).await.unwrap();
            for k in keys {
                assert!(found.insert(k.clone()), "{k} listed by two servers");
            }
            let none: Vec<String> = redis::cmd("KEYS").arg("n:[x]*").query_async(&mut d).await.unwrap();
            assert!(none.is_empty(), "{none:?}");
        }
        let all: std::collections::BTreeSet<String> = (0..32).map(|i| format!("n:{i}")).collect();
        assert_eq!(found, all);
        // The slot's owner counts and lists its keys; another server has none of them.
        let s0 = slot("n:0");
        let owner = c.owner_of(partition_of_slot(s0, PARTITIONS)).unwrap();
        let mut at = direct(&c.servers.iter().find(|s| s.name == owner).unwrap().addr).await;
        let mut elsewhere = direct(&c.servers.iter().find(|s| s.name != owner).unwrap().addr).await;
        let in_slot = all.iter().filter(|k| slot(k) == s0).count() as i64;
        let n: i64 = redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(s0).query_async(&mut at).await.unwrap();
        assert_eq!(n, in_slot);
        let n: i64 = redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(s0).query_async(&mut elsewhere).await.unwrap();
        assert_eq!(n, 0);
        let listed: Vec<String> = redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(s0).arg(100).query_async(&mut at).await.unwrap();
        assert!(listed.contains(&"n:0".to_owned()) && listed.len() as i64 == in_slot, "{listed:?}");
        let listed: Vec<String> = redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(s0).arg(0).query_async(&mut at).await.unwrap();
        assert!(listed.is_empty());
        for (args, msg) in [
            (vec!["COUNTKEYSINSLOT", "16384"], "Invalid slot"),
            (vec!["GETKEYSINSLOT", "1", "-1"], "Invalid number of keys"),
            (vec!["COUNTKEYSINSLOT"], "wrong number"),
        ] {
            let e = redis::cmd("CLUSTER").arg(&args).query_async::<redis::Value>(&mut at).await.unwrap_err();
            assert!(e.to_string().contains(msg), "{args:?}: {e}");
        }
        // Connection commands inside MULTI are queued and answered in their places.
        let p = partition_of_slot(slot("{m}x"), PARTITIONS);
        let owner = c.owner_of(p).unwrap();
        let mut at_owner = direct(&c.servers.iter().find(|s| s.name == owner).unwrap().addr).await;
        let (set, pong, echo, got): (String, String, String, String) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg("{m}x")
            .arg("7")
            .cmd("PING")
            .cmd("ECHO")
            .arg("e")
            .cmd("GET")
            .arg("{m}x")
            .query_async(&mut at_owner)
            .await
            .unwrap();
        assert_eq!((set.as_str(), pong.as_str(), echo.as_str(), got.as_str()), ("OK", "PONG", "e", "7"));
        let time: Vec<String> = redis::cmd("TIME").query_async(&mut con).await.unwrap();
        let secs: u64 = time[0].parse().unwrap();
        assert!(secs > 1_700_000_000 && time[1].parse::<u32>().unwrap() < 1_000_000, "{time:?}");
        let e = redis::cmd("PING").arg("a").arg("b").query_async::<String>(&mut con).await.unwrap_err();
        assert!(e.to_string().contains("wrong number of arguments"), "{e}");
    });
}

#[test]
fn moved_crossslot_and_multi_exec_on_a_single_connection() {
    let c = Cluster::start(3, PARTITIONS);
    // Settled means all three registered: a server registering late asks for
    // a rebalance, which moved the partition under this test once (its EXEC
    // answered -MOVED, which the `redis` crate reports as an invalid multi
    // response).
    assert_eq!(c.status().servers.iter().filter(|s| s.alive).count(), 3);
    rt().block_on(async {
        let key = "{tx}k";
        let p = partition_of_slot(slot(key), PARTITIONS);
        let owner = c.owner_of(p).unwrap();
        let owner_addr = c.servers.iter().find(|s| s.name == owner).unwrap().addr.clone();
        let other = c.servers.iter().find(|s| s.name != owner).unwrap().addr.clone();
        // A server that does not own the slot redirects to the one that does.
        let mut wrong = direct(&other).await;
        let e = wrong.get::<_, Option<String>>(key).await.unwrap_err();
        assert_eq!(err_code(&e), "MOVED", "{e}");
        assert!(e.to_string().contains(&format!("{} {owner_addr}", slot(key))), "{e}");
        // CROSSSLOT: different slots, even on the same server.
        let e = redis::cmd("MGET").arg("a").arg("b").query_async::<Vec<Option<String>>>(&mut wrong).await.unwrap_err();
        assert_eq!(err_code(&e), "CROSSSLOT", "{e}");
        let mut con = direct(&owner_addr).await;
        // MULTI/EXEC: queued, then executed together, each seeing the previous.
        let (a, b, g): (i64, i64, String) = redis::pipe()
            .atomic()
            .cmd("INCR")
            .arg(key)
            .cmd("INCRBY")
            .arg(key)
            .arg(10)
            .cmd("GET")
            .arg(key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!((a, b, g.as_str()), (1, 11, "11"));
        // A transaction over two slots is refused as a whole, even when one
        // server owns both (a slot owned elsewhere is answered MOVED at once).
        let same_owner =
            (0..).map(|i| format!("other{i}")).find(|k| partition_of_slot(slot(k), PARTITIONS) == p && slot(k) != slot(key)).unwrap();
        let _: () = redis::cmd("MULTI").query_async(&mut con).await.unwrap();
        for k in [key, same_owner.as_str()] {
            let q: String = redis::cmd("SET").arg(k).arg("x").query_async(&mut con).await.unwrap();
            assert_eq!(q, "QUEUED");
        }
        let e = redis::cmd("EXEC").query_async::<redis::Value>(&mut con).await.unwrap_err();
        assert_eq!(err_code(&e), "CROSSSLOT", "{e}");
        assert_eq!(con.get::<_, String>(key).await.unwrap(), "11");
        // A slot another server owns: MOVED while queuing, and EXEC then aborts.
        let elsewhere = (0..)
            .map(|i| format!("elsewhere{i}"))
            .find(|k| c.owner_of(partition_of_slot(slot(k), PARTITIONS)).is_some_and(|o| o != owner))
            .unwrap();
        let _: () = redis::cmd("MULTI").query_async(&mut con).await.unwrap();
        let q: String = redis::cmd("SET").arg(key).arg("x").query_async(&mut con).await.unwrap();
        assert_eq!(q, "QUEUED");
        let e = redis::cmd("SET").arg(&elsewhere).arg("x").query_async::<String>(&mut con).await.unwrap_err();
        assert_eq!(err_code(&e), "MOVED", "{e}");
        let e = redis::cmd("EXEC").query_async::<redis::Value>(&mut con).await.unwrap_err();
        assert_eq!(err_code(&e), "EXECABORT", "{e}");
        assert_eq!(con.get::<_, String>(key).await.unwrap(), "11");
        // A command refused while queuing aborts the transaction (nothing applied).
        let r = redis::pipe().atomic().cmd("SET").arg(key).arg("x").cmd("GET").query_async::<()>(&mut con).await;
        assert!(r.is_err(), "{r:?}");
        assert_eq!(con.get::<_, String>(key).await.unwrap(), "11");
        // DISCARD drops the queue.
        let _: () = redis::cmd("MULTI").query_async(&mut con).await.unwrap();
        let q: String = redis::cmd("SET").arg(key).arg("y").query_async(&mut con).await.unwrap();
        assert_eq!(q, "QUEUED");
        let _: () = redis::cmd("DISCARD").query_async(&mut con).await.unwrap();
        assert_eq!(con.get::<_, String>(key).await.unwrap(), "11");
        // Cluster introspection is consistent across servers.
        let ids: Vec<String> = {
            let mut v = Vec::new();
            for s in &c.servers {
                let mut d = direct(&s.addr).await;
                v.push(redis::cmd("CLUSTER").arg("MYID").query_async::<String>(&mut d).await.unwrap());
            }
            v
        };
        assert!(ids.iter().all(|i| i.len() == 40));
        let mut maps = Vec::new();
        for s in &c.servers {
            let mut d = direct(&s.addr).await;
            let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut d).await.unwrap();
            maps.push(format!("{slots:?}"));
            let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut d).await.unwrap();
            // One master line per server; one replica line per (owner, standby) pair.
            let (masters, replicas): (Vec<&str>, Vec<&str>) =
                nodes.lines().partition(|l| l.split(' ').nth(2).is_some_and(|f| f.ends_with("master")));
            assert_eq!(masters.len(), 3, "{nodes}");
            assert!((3..=6).contains(&replicas.len()), "{nodes}");
            for r in replicas {
                let f: Vec<&str> = r.split(' ').collect();
                assert!(f[2] == "slave" && ids.iter().any(|i| i == f[3]) && f.len() == 8, "{r}");
            }
            assert!(nodes.ends_with('\n'));
            let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut d).await.unwrap();
            assert!(info.starts_with("cluster_state:ok\r\n"), "{info}");
            let ks: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg("foo").query_async(&mut d).await.unwrap();
            assert_eq!(ks, 12182);
        }
        assert!(maps.windows(2).all(|w| w[0] == w[1]), "servers disagree on the slot map: {maps:?}");
    });
}

#[test]
fn redis_cli_sets_and_reads_1000_keys_over_all_slots() {
    let c = Cluster::start(3, PARTITIONS);
    let port = c.servers[0].addr.rsplit(':').next().unwrap().to_owned();
    let script: String = (0..1000).map(|i| format!("SET cli:{i} v{i}\n")).collect();
    let out = redis_cli(&port, &script);
    assert_eq!(out.lines().filter(|l| *l == "OK").count(), 1000, "{out}");
    let script: String = (0..1000).map(|i| format!("GET cli:{i}\n")).collect();
    let out = redis_cli(&port, &script);
    let got: Vec<&str> = out.lines().filter(|l| l.starts_with('v')).collect();
    assert_eq!(got, (0..1000).map(|i| format!("v{i}")).collect::<Vec<_>>());
    // The keys really cover every partition.
    let parts: std::collections::BTreeSet<u32> = (0..1000).map(|i| partition_of_slot(slot(&format!("cli:{i}")), PARTITIONS)).collect();
    assert_eq!(parts.len(), PARTITIONS as usize);
}

fn redis_cli(port: &str, stdin: &str) -> String {
    let out = run_with_input("redis-cli", &["-c", "-h", "127.0.0.1", "-p", port], stdin, "apt-get install redis-tools");
    assert!(out.status.success(), "redis-cli failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn redis_benchmark_cluster_runs_to_completion() {
    let c = Cluster::start(3, PARTITIONS);
    let port = c.servers[1].addr.rsplit(':').next().unwrap().to_owned();
    for pipeline in ["1", "16"] {
        let out = std::process::Command::new("redis-benchmark")
            .args([
                "--cluster",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                "set,get",
                "-n",
                "5000",
                "-r",
                "1000",
                "-c",
                "20",
                "-P",
                pipeline,
                "-q",
            ])
            .output()
            .expect("redis-benchmark is installed (apt-get install redis-tools)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "redis-benchmark failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("SET: ") && text.contains("GET: ") && text.contains("requests per second"), "{text}");
    }
}

/// Acknowledged writes: key -> last acknowledged value.
pub(crate) type Acked = Arc<std::sync::Mutex<BTreeMap<String, u64>>>;

/// Write `w:{n}` keys round-robin over `keys` keys with increasing values until told to stop.
pub(crate) fn writer(
    c: &Cluster,
    keys: u64,
    stop: Arc<AtomicBool>,
    acked: Acked,
    errors: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let urls = c.urls();
    std::thread::spawn(move || {
        rt().block_on(async move {
            let client = redis::cluster::ClusterClient::builder(urls)
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut con = client.get_async_connection().await.unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let key = format!("w:{}", n % keys);
                match con.set::<_, _, ()>(&key, n).await {
                    Ok(()) => {
                        acked.lock().unwrap().insert(key, n);
                        ok.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::AcqRel);
                        eprintln!("writer: {key} = {n}: {e}");
                        // The value may or may not be applied; forget what we knew of the key.
                        acked.lock().unwrap().remove(&key);
                    }
                }
            }
        })
    })
}

pub(crate) fn wait_for_progress(ok: &AtomicU64, more: u64, what: &str) {
    let start = ok.load(Ordering::Acquire);
    wait_until(Duration::from_secs(30), what, || ok.load(Ordering::Acquire) >= start + more);
}

pub(crate) async fn assert_all_readable(c: &Cluster, acked: &Acked) {
    let mut con =
        client_via(&c.servers.iter().filter(|s| s.proc.state() != Some('Z')).map(|s| format!("redis://{}/", s.addr)).collect::<Vec<_>>())
            .await;
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    for (k, v) in acked {
        let got: Option<u64> = con.get(&k).await.unwrap();
        assert_eq!(got, Some(v), "acknowledged write {k} = {v} lost");
    }
}

#[test]
fn kill9_of_a_server_under_load_loses_no_acknowledged_write_and_the_client_recovers() {
    let mut c = Cluster::start(3, PARTITIONS);
    let (stop, errors, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let acked: Acked = Default::default();
    let w = writer(&c, 200, stop.clone(), acked.clone(), errors.clone(), ok.clone());
    wait_for_progress(&ok, 500, "writes before the kill");
    let dead_addr = c.server("s2").addr.clone();
    c.server("s2").proc.kill9();
    // The survivors take over, and the client carries on by itself.
    c.wait_reassigned_from("s2");
    wait_for_progress(&ok, 1000, "writes after the kill");
    stop.store(true, Ordering::Release);
    w.join().unwrap();
    c.servers.retain(|s| s.name != "s2");
    // Once reassigned, no survivor names the dead server any more.
    rt().block_on(async {
        for s in &c.servers {
            let mut d = direct(&s.addr).await;
            let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut d).await.unwrap();
            assert!(!nodes.contains(&dead_addr), "{} still names {dead_addr}: {nodes}", s.name);
            let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut d).await.unwrap();
            let port = dead_addr.rsplit(':').next().unwrap().parse::<i64>().unwrap();
            assert!(!format!("{slots:?}").contains(&format!("Int({port})")), "{} still routes to {dead_addr}: {slots:?}", s.name);
        }
    });
    eprintln!("kill -9: {} acknowledged writes, {} client errors", ok.load(Ordering::Acquire), errors.load(Ordering::Acquire));
    rt().block_on(assert_all_readable(&c, &acked));
}

/// FLUSHALL on every server (as redis-py's `flushall` sends it to every
/// primary), new writes, then kill -9 of a server: what its partitions'
/// new owners serve, from their hot standbys or from the log, holds the new
/// keys and none of the flushed ones.
#[test]
fn flushall_then_a_kill9_failover_brings_nothing_flushed_back() {
    let mut c = Cluster::start(3, PARTITIONS);
    rt().block_on(async {
        let mut con = client(&c).await;
        for i in 0..300 {
            let _: () = con.set(format!("old:{i}"), i).await.unwrap();
        }
        for s in &c.servers {
            let mut d = direct(&s.addr).await;
            let r: String = redis::cmd("FLUSHALL").query_async(&mut d).await.unwrap();
            assert_eq!(r, "OK");
            let n: i64 = redis::cmd("DBSIZE").query_async(&mut d).await.unwrap();
            assert_eq!(n, 0, "{} holds keys after FLUSHALL", s.name);
            let e = redis::cmd("FLUSHALL").arg("NOW").query_async::<String>(&mut d).await.unwrap_err();
            assert!(e.to_string().contains("syntax error"), "{e}");
        }
        for i in 0..50 {
            let _: () = con.set(format!("new:{i}"), i).await.unwrap();
            assert_eq!(con.get::<_, Option<i64>>(format!("old:{i}")).await.unwrap(), None);
        }
    });
    let victim = c.owner_of(0).unwrap();
    c.server(&victim).proc.kill9();
    c.wait_reassigned_from(&victim);
    c.servers.retain(|s| s.name != victim);
    rt().block_on(async {
        let mut con = client(&c).await;
        for i in 0..300 {
            assert_eq!(con.get::<_, Option<i64>>(format!("old:{i}")).await.unwrap(), None, "old:{i} came back after the failover");
        }
        for i in 0..50 {
            assert_eq!(con.get::<_, Option<i64>>(format!("new:{i}")).await.unwrap(), Some(i), "new:{i} lost");
        }
        let mut total = 0;
        for s in &c.servers {
            total += redis::cmd("DBSIZE").query_async::<i64>(&mut direct(&s.addr).await).await.unwrap();
        }
        assert_eq!(total, 50);
    });
}

/// A value of 100 MB (a blob of 1,600 segments of its own: FORMAT.md,
/// "Large values"), written and read through the cluster client, and an
/// MSET of 1 MB and a MULTI of 2 MB (batches spanning segments), read back
/// whole from the new owner after their owner is killed with -9; overwritten
/// by another 100 MB value and then deleted, its space comes back: the
/// partition (256 MiB) could not hold a third copy otherwise.
#[test]
fn a_100_mb_value_survives_a_kill9_failover_and_its_space_comes_back() {
    let scratch = Scratch::new();
    let volume = scratch.volume("vol", "1GiB", 4);
    let mut c = Cluster::start_on(scratch, volume, 3);
    // Every 8 bytes differ from their neighbours and from other seeds', so
    // a segment out of place or from another version shows; 8 bytes per
    // step keeps this quick in a debug build.
    let value = |seed: u64| -> Vec<u8> {
        let mut v = vec![0u8; 100_000_000];
        for (i, word) in v.chunks_exact_mut(8).enumerate() {
            let x = (i as u64 ^ (seed << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            word.copy_from_slice(&(x ^ (x >> 29)).to_le_bytes());
        }
        v
    };
    let first = value(1);
    rt().block_on(async {
        let mut con = client(&c).await;
        let _: () = con.set("big", first.as_slice()).await.unwrap();
        let got: Vec<u8> = con.get("big").await.unwrap();
        assert!(got == first, "the 100 MB value read back differs");
        let len: i64 = con.strlen("big").await.unwrap();
        assert_eq!(len, 100_000_000);
        // A batch of small values larger than a segment (1 MB in one MSET,
        // 2 MB in one MULTI) spans segments and commits whole.
        let pairs: Vec<(String, Vec<u8>)> = (0..1000).map(|i| (format!("{{big}}:m{i}"), vec![b'm'; 1000])).collect();
        let _: () = con.mset(&pairs).await.unwrap();
        let mut tx = redis::pipe();
        tx.atomic();
        for i in 0..2000 {
            tx.set(format!("{{big}}:t{i}"), vec![b't'; 1000]).ignore();
        }
        let _: () = tx.query_async(&mut con).await.unwrap();
    });
    let partition = partition_of_slot(slot("big"), 4);
    let victim = c.owner_of(partition).unwrap();
    c.server(&victim).proc.kill9();
    c.wait_reassigned_from(&victim);
    c.servers.retain(|s| s.name != victim);
    rt().block_on(async {
        let mut con = client(&c).await;
        let got: Vec<u8> = con.get("big").await.unwrap();
        assert!(got == first, "the 100 MB value differs after the failover");
        for i in [0, 499, 999] {
            assert_eq!(con.get::<_, Vec<u8>>(format!("{{big}}:m{i}")).await.unwrap(), vec![b'm'; 1000], "m{i} after the failover");
        }
        for i in [0, 1999] {
            assert_eq!(con.get::<_, Vec<u8>>(format!("{{big}}:t{i}")).await.unwrap(), vec![b't'; 1000], "t{i} after the failover");
        }
        // Overwrites and a delete free the blobs they replace: six more
        // copies of 100 MB pass through a partition of 256 MiB.
        for round in 2..8 {
            let v = value(round);
            let _: () = con.set("big", v.as_slice()).await.unwrap_or_else(|e| panic!("overwrite {round}: {e}"));
            let got: Vec<u8> = con.get("big").await.unwrap();
            assert!(got == v, "overwrite {round} read back differs");
        }
        let n: i64 = con.del("big").await.unwrap();
        assert_eq!(n, 1);
        let _: () = con.set("big", first.as_slice()).await.unwrap();
        let _: () = con.set("big2", first.as_slice()).await.unwrap();
        let got: Vec<u8> = con.get("big2").await.unwrap();
        assert!(got == first);
    });
}

/// What redis-cli, redis_exporter and Redis's own tests read of a server,
/// against a real one: CLIENT LIST names every connection (and what it ran
/// last), CLIENT KILL closes the one it names and no other, CLIENT REPLY
/// OFF/SKIP silence exactly the replies they say, INFO keyspace counts keys
/// and expiries, commandstats and errorstats count what was sent,
/// `CONFIG SET maxmemory` refuses writes (not reads) above it until reset,
/// and `CLIENT PAUSE WRITE` holds writes (not reads) until `CLIENT UNPAUSE`.
#[test]
fn client_list_kill_reply_info_and_maxmemory_tell_the_truth() {
    let c = Cluster::start(1, 4);
    let addr = c.servers[0].addr.clone();
    rt().block_on(async {
        let mut a = direct(&addr).await;
        let mut b = direct(&addr).await;
        let _: () = redis::cmd("CLIENT").arg("SETNAME").arg("worker").query_async(&mut b).await.unwrap();
        let b_id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut b).await.unwrap();
        let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut a).await.unwrap();
        let line = list.lines().find(|l| l.starts_with(&format!("id={b_id} "))).unwrap_or_else(|| panic!("b missing from {list}"));
        assert!(line.contains(" name=worker ") && line.contains(" cmd=client|id "), "{line}");
        assert!(list.lines().any(|l| l.contains(" cmd=client|list ")), "{list}");
        let only: String = redis::cmd("CLIENT").arg("LIST").arg("ID").arg(b_id).query_async(&mut a).await.unwrap();
        assert_eq!(only.lines().count(), 1, "{only}");
        let e = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(0).query_async::<i64>(&mut a).await.unwrap_err();
        assert!(e.to_string().contains("greater than 0"), "{e}");
        let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(b_id).query_async(&mut a).await.unwrap();
        assert_eq!(killed, 1);
        assert!(redis::cmd("PING").query_async::<String>(&mut b).await.is_err(), "a killed connection still answers");
        let pong: String = redis::cmd("PING").query_async(&mut a).await.unwrap();
        assert_eq!(pong, "PONG", "the killer was killed too");
        wait_until(Duration::from_secs(5), "the killed connection leaves CLIENT LIST", || {
            let list = replies(&raw(&addr, b"CLIENT LIST\r\n", Duration::from_millis(300))).join("\n");
            !list.contains(&format!("id={b_id} "))
        });
        // A client that reads nothing, its replies filling the sockets (the
        // server's write to it blocked): CLIENT KILL still closes it.
        {
            use std::io::Write;
            let _: () = redis::cmd("SET").arg("{k}big").arg(vec![b'x'; 1 << 20]).query_async(&mut a).await.unwrap();
            let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
            let me = stalled.local_addr().unwrap().to_string();
            let gets = "*2\r\n$3\r\nGET\r\n$6\r\n{k}big\r\n".repeat(64);
            stalled.write_all(gets.as_bytes()).unwrap();
            let listed =
                |a: &str| replies(&raw(a, b"CLIENT LIST\r\n", Duration::from_millis(300))).join("\n").contains(&format!("addr={me} "));
            wait_until(Duration::from_secs(10), "the stalled client to be listed", || listed(&addr));
            let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("ADDR").arg(&me).query_async(&mut a).await.unwrap();
            assert_eq!(killed, 1);
            wait_until(Duration::from_secs(10), "the stalled client to leave CLIENT LIST while it reads nothing", || !listed(&addr));
            let _: () = redis::cmd("DEL").arg("{k}big").query_async(&mut a).await.unwrap();
        }

        // INFO keyspace, commandstats, errorstats.
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut a).await.unwrap();
        let mut con = client(&c).await;
        for i in 0..20 {
            let _: () = con.set(format!("k{i}"), i).await.unwrap();
        }
        for i in 0..5 {
            let _: () = con.expire(format!("k{i}"), 1000).await.unwrap();
        }
        let _ = con.incr::<_, _, i64>("k0x", "notanumber").await.unwrap_err();
        let info: String = redis::cmd("INFO").arg("keyspace").arg("commandstats").arg("errorstats").query_async(&mut a).await.unwrap();
        assert!(info.contains("db0:keys=20,expires=5,avg_ttl=0"), "{info}");
        assert!(info.contains("cmdstat_set:calls=20,"), "{info}");
        assert!(info.contains("cmdstat_expire:calls=5,"), "{info}");
        assert!(info.contains("cmdstat_incrby:calls=1,") && info.contains("failed_calls=1"), "{info}");
        assert!(info.contains("errorstat_ERR:count=1"), "{info}");
        let default: String = redis::cmd("INFO").query_async(&mut a).await.unwrap();
        for field in ["used_memory:", "used_cpu_user:", "maxmemory_policy:noeviction", "aof_enabled:1", "db0:keys=20"] {
            assert!(default.contains(field), "INFO lacks {field}");
        }
        assert!(!default.contains("cmdstat_"), "commandstats is not a default section");

        // maxmemory: writes refused above it, reads answered; then lifted.
        let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(1).query_async(&mut a).await.unwrap();
        let e = con.set::<_, _, ()>("k1", "x").await.unwrap_err();
        assert!(e.to_string().contains("maxmemory"), "{e}");
        assert_eq!(con.get::<_, i64>("k1").await.unwrap(), 1);
        let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query_async(&mut a).await.unwrap();
        let _: () = con.set("k1", "x").await.unwrap();

        // SLOWLOG: every command logged at threshold 0, the newest first, at most max-len.
        let set = |k: &'static str, v: i64| redis::cmd("CONFIG").arg("SET").arg(k).arg(v).to_owned();
        let _: () = set("slowlog-log-slower-than", 0).query_async(&mut a).await.unwrap();
        let _: () = set("slowlog-max-len", 5).query_async(&mut a).await.unwrap();
        let _: () = redis::cmd("SLOWLOG").arg("RESET").query_async(&mut a).await.unwrap();
        for _ in 0..10 {
            let _: String = redis::cmd("PING").query_async(&mut a).await.unwrap();
        }
        assert_eq!(redis::cmd("SLOWLOG").arg("LEN").query_async::<i64>(&mut a).await.unwrap(), 5);
        let _: () = redis::cmd("SET").arg("slow").arg("v").query_async(&mut a).await.unwrap();
        let entries: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").arg(2).query_async(&mut a).await.unwrap();
        let args_of = |v: &redis::Value| {
            let redis::Value::Array(e) = v else { panic!("{v:?}") };
            assert_eq!(e.len(), 6, "{e:?}");
            redis::from_redis_value::<Vec<String>>(e[3].clone()).unwrap()
        };
        // Newest first; a command the engine ran with its arguments, one
        // answered by the connection by its name.
        assert_eq!(args_of(&entries[0]), ["SET", "slow", "v"]);
        assert_eq!(args_of(&entries[1]), ["slowlog"]);
        let _: () = set("slowlog-log-slower-than", 10_000).query_async(&mut a).await.unwrap();

        // CLIENT PAUSE WRITE holds writes (counted as blocked), not reads, until UNPAUSE.
        let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(60_000).arg("WRITE").query_async(&mut a).await.unwrap();
        let mut w = direct(&addr).await;
        let write = tokio::spawn(async move { redis::cmd("SET").arg("held").arg("after").query_async::<()>(&mut w).await });
        assert_eq!(con.get::<_, String>("k1").await.unwrap(), "x", "a read waited for the pause");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let clients: String = redis::cmd("INFO").arg("clients").query_async(&mut a).await.unwrap();
            if clients.contains("blocked_clients:1") {
                break;
            }
            assert!(Instant::now() < deadline, "the paused write is not counted as blocked: {clients}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!write.is_finished(), "a write went through a pause");
        assert_eq!(con.get::<_, Option<String>>("held").await.unwrap(), None);
        let _: () = redis::cmd("CLIENT").arg("UNPAUSE").query_async(&mut a).await.unwrap();
        write.await.unwrap().unwrap();
        assert_eq!(con.get::<_, String>("held").await.unwrap(), "after");
    });
    // CLIENT REPLY: OFF silences until ON; SKIP silences the next reply only.
    let got = raw(
        &addr,
        b"CLIENT REPLY OFF\r\nPING a\r\nCLIENT REPLY ON\r\nPING b\r\nCLIENT REPLY SKIP\r\nPING c\r\nPING d\r\n",
        Duration::from_millis(500),
    );
    assert_eq!(replies(&got), ["+OK", "b", "d"]);
}

/// One node's whole SCAN (cursor 0 to 0, COUNT 20), as redis-py's
/// `scan_iter` runs it on each primary; `between` runs after each step.
async fn scan_node(addr: &str, mut between: impl FnMut(usize)) -> Vec<String> {
    let mut con = direct(addr).await;
    let (mut cursor, mut keys, mut steps) = ("0".to_owned(), Vec::new(), 0);
    loop {
        let (next, batch): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg("COUNT")
            .arg(20)
            .query_async(&mut con)
            .await
            .unwrap_or_else(|e| panic!("SCAN on {addr}: {e}"));
        keys.extend(batch);
        steps += 1;
        between(steps);
        if next == "0" {
            return keys;
        }
        cursor = next;
    }
}

/// SCAN over a cluster, node after node as redis-py scans one, while a
/// client writes new keys and partitions move: one from a node not scanned
/// yet to one scanned already (neither would have it when scanned), one
/// away from the node being scanned before its cursor reaches it. No key
/// present throughout is missed: a node still scans a partition it served
/// recently, at its new owner.
#[test]
fn scan_over_a_cluster_misses_no_key_while_partitions_move() {
    let c = Cluster::start(3, PARTITIONS);
    let names: Vec<String> = c.servers.iter().map(|s| s.name.clone()).collect();
    let addr_of = |name: &str| c.servers.iter().find(|s| s.name == name).unwrap().addr.clone();
    let owned_by = |name: &str| (0..PARTITIONS).filter(|p| c.owner_of(*p).as_deref() == Some(name)).collect::<Vec<u32>>();
    let moved = |p: u32, to: &str| {
        c.admin(&["move", &p.to_string(), to]);
        wait_until(Duration::from_secs(10), "the move", || c.owner_of(p).as_deref() == Some(to));
    };
    let present: Vec<String> = (0..1500).map(|i| format!("base:{i}")).collect();
    let writing = Arc::new(AtomicBool::new(true));
    let seen = rt().block_on(async {
        let mut con = client(&c).await;
        for k in &present {
            let _: () = con.set(k, 1).await.unwrap();
        }
        let writer = {
            let (writing, urls) = (writing.clone(), c.urls());
            tokio::spawn(async move {
                let mut con = client_via(&urls).await;
                let mut i = 0u64;
                while writing.load(Ordering::Relaxed) {
                    // Moves make some writes wait or fail for a moment: that is not what is tested.
                    let _ = con.set::<_, _, ()>(format!("new:{i}"), i).await;
                    i += 1;
                }
                i
            })
        };
        let (first, second, third) = (&names[0], &names[1], &names[2]);
        let mut seen = scan_node(&addr_of(first), |_| {}).await;
        // A partition of the node not scanned yet moves to the one scanned already.
        let from_third = *owned_by(third).first().expect("the third server owns partitions");
        moved(from_third, first);
        // A partition of the node being scanned moves away before its cursor reaches it.
        let ahead = *owned_by(second).last().expect("the second server owns partitions");
        seen.extend(
            scan_node(&addr_of(second), |step| {
                if step == 2 {
                    moved(ahead, first)
                }
            })
            .await,
        );
        seen.extend(scan_node(&addr_of(third), |_| {}).await);
        writing.store(false, Ordering::Relaxed);
        assert!(writer.await.unwrap() > 0, "nothing was written during the scan");
        seen
    });
    let seen: std::collections::HashSet<String> = seen.into_iter().collect();
    let missed: Vec<&String> = present.iter().filter(|k| !seen.contains(*k)).collect();
    assert!(missed.is_empty(), "{} keys present throughout were not returned, e.g. {:?}", missed.len(), &missed[..missed.len().min(5)]);
}

/// The address of the server owning `partition` now.
fn owner_addr(c: &Cluster, partition: u32) -> String {
    let owner = c.owner_of(partition).expect("an owner");
    c.servers.iter().find(|s| s.name == owner).unwrap().addr.clone()
}

/// `WATCH key; GET; MULTI; SET key n+1; EXEC` on `con`: `Some(true)`
/// committed, `Some(false)` aborted by the watch, `None` redirected.
async fn watched_increment(con: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<bool> {
    redis::cmd("WATCH").arg(key).query_async::<()>(con).await.ok()?;
    let n: i64 = con.get::<_, Option<i64>>(key).await.ok()?.unwrap_or(0);
    redis::cmd("MULTI").query_async::<()>(con).await.unwrap();
    if redis::cmd("SET").arg(key).arg(n + 1).query_async::<String>(con).await.is_err() {
        let _ = redis::cmd("EXEC").query_async::<redis::Value>(con).await;
        return None;
    }
    match redis::cmd("EXEC").query_async::<Option<Vec<redis::Value>>>(con).await {
        Ok(r) => Some(r.is_some()),
        Err(_) => None,
    }
}

#[test]
fn watch_retry_loops_lose_no_update_under_concurrent_writers_and_a_moved_partition_aborts() {
    let c = Cluster::start(3, PARTITIONS);
    let key = key_in_partition("counter", 0, PARTITIONS);
    let addr = owner_addr(&c, 0);
    rt().block_on(async {
        // Another client's write between WATCH and EXEC, even of the same
        // value, aborts the transaction; without one it commits.
        let (mut a, mut b) = (direct(&addr).await, direct(&addr).await);
        let _: () = a.set(&key, 0).await.unwrap();
        redis::cmd("WATCH").arg(&key).query_async::<()>(&mut a).await.unwrap();
        let _: () = b.set(&key, 0).await.unwrap();
        redis::cmd("MULTI").query_async::<()>(&mut a).await.unwrap();
        redis::cmd("INCR").arg(&key).query_async::<String>(&mut a).await.unwrap();
        let r: Option<Vec<i64>> = redis::cmd("EXEC").query_async(&mut a).await.unwrap();
        assert_eq!(r, None, "EXEC committed after a watched key was written");
        assert_eq!(watched_increment(&mut a, &key).await, Some(true));
        // Read-modify-write loops racing each other: each increment commits
        // exactly once, whatever the interleaving.
        let (tasks, each) = (4, 40);
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let (addr, key) = (addr.clone(), key.clone());
            handles.push(tokio::spawn(async move {
                let mut con = direct(&addr).await;
                let (mut done, mut aborted) = (0, 0);
                while done < each {
                    match watched_increment(&mut con, &key).await {
                        Some(true) => done += 1,
                        Some(false) => aborted += 1,
                        None => panic!("redirected while the partition stayed put"),
                    }
                }
                aborted
            }));
        }
        let mut aborted = 0;
        for h in handles {
            aborted += h.await.unwrap();
        }
        let total: i64 = a.get(&key).await.unwrap();
        assert_eq!(total, 1 + tasks * each, "increments lost or doubled ({aborted} transactions aborted and retried)");
    });
    // Watched, then the partition moves away, is written there, and comes
    // back: this server never saw that write, so the transaction must abort.
    let home = c.owner_of(0).unwrap();
    let away = c.servers.iter().map(|s| s.name.clone()).find(|n| *n != home).unwrap();
    rt().block_on(async {
        let mut a = direct(&addr).await;
        redis::cmd("WATCH").arg(&key).query_async::<()>(&mut a).await.unwrap();
        c.admin(&["move", "0", &away]);
        wait_until(Duration::from_secs(10), "the move away", || c.owner_of(0).as_deref() == Some(away.as_str()));
        let mut there = direct(&owner_addr(&c, 0)).await;
        let _: () = there.set(&key, "written elsewhere").await.unwrap();
        c.admin(&["move", "0", &home]);
        wait_until(Duration::from_secs(10), "the move back", || c.owner_of(0).as_deref() == Some(home.as_str()));
        let mut settled = false;
        for _ in 0..100 {
            if a.get::<_, Option<String>>(&key).await.is_ok() {
                settled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(settled, "the partition is not served again at home");
        redis::cmd("MULTI").query_async::<()>(&mut a).await.unwrap();
        redis::cmd("SET").arg(&key).arg("stale").query_async::<String>(&mut a).await.unwrap();
        let r: Option<Vec<redis::Value>> = redis::cmd("EXEC").query_async(&mut a).await.unwrap();
        assert_eq!(r, None, "a transaction watched before its partition moved committed");
        assert_eq!(a.get::<_, String>(&key).await.unwrap(), "written elsewhere");
    });
}

#[test]
fn admin_moves_under_load_cause_no_client_error() {
    let c = Cluster::start(3, PARTITIONS);
    let (stop, errors, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let acked: Acked = Default::default();
    let w = writer(&c, 200, stop.clone(), acked.clone(), errors.clone(), ok.clone());
    wait_for_progress(&ok, 300, "writes before the moves");
    for round in 0..6u32 {
        let p = round % PARTITIONS;
        let owner = c.owner_of(p).unwrap();
        let target = c.servers.iter().map(|s| s.name.clone()).find(|n| *n != owner).unwrap();
        c.admin(&["move", &p.to_string(), &target]);
        wait_until(Duration::from_secs(10), "the move to finish", || c.owner_of(p).as_deref() == Some(target.as_str()));
        wait_for_progress(&ok, 100, "writes after a move");
    }
    c.admin(&["drain", "s3"]);
    wait_until(Duration::from_secs(10), "s3 drained", || {
        c.status().partitions.iter().all(|p| p.state == "owned" && p.owner.as_deref() != Some("s3"))
    });
    wait_for_progress(&ok, 200, "writes after the drain");
    stop.store(true, Ordering::Release);
    w.join().unwrap();
    assert_eq!(errors.load(Ordering::Acquire), 0, "planned moves must not surface as client errors");
    rt().block_on(assert_all_readable(&c, &acked));
}

/// Send raw bytes and return the first `n` replies (fewer if the connection closes or 10 s pass).
fn ask(addr: &str, bytes: &[u8], n: usize) -> Vec<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    read_replies(s, n, Duration::from_secs(10))
}

/// Read from `s` until `n` replies have arrived, the connection closes, or `timeout` passes.
fn read_replies(mut s: std::net::TcpStream, n: usize, timeout: Duration) -> Vec<String> {
    use std::io::Read;
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while replies(&buf).len() < n {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    replies(&buf)
}

/// Parse RESP replies from raw bytes, just enough for simple/error/bulk/int.
fn replies(bytes: &[u8]) -> Vec<String> {
    let s = String::from_utf8_lossy(bytes);
    let mut out = Vec::new();
    let mut lines = s.split("\r\n");
    while let Some(l) = lines.next() {
        if l.is_empty() {
            continue;
        }
        if let Some(n) = l.strip_prefix('$') {
            if n == "-1" {
                out.push("(nil)".into());
            } else {
                out.push(lines.next().unwrap_or("").to_owned());
            }
        } else {
            out.push(l.to_owned());
        }
    }
    out
}

#[test]
fn a_paused_old_owner_acknowledges_no_write_and_serves_no_read_after_failover() {
    let mut c = Cluster::start(3, PARTITIONS);
    let key = key_in_partition("z", 0, PARTITIONS);
    let owner = c.owner_of(0).unwrap();
    let owner_addr = c.server(&owner).addr.clone();
    rt().block_on(async {
        let mut con = client(&c).await;
        let _: () = con.set(&key, "before").await.unwrap();
    });
    c.server(&owner).proc.signal(rustix::process::Signal::STOP);
    c.wait_reassigned_from(&owner);
    let survivors: Vec<String> = c.servers.iter().filter(|s| s.name != owner).map(|s| format!("redis://{}/", s.addr)).collect();
    rt().block_on(async {
        let mut con = client_via(&survivors).await;
        let _: () = con.set(&key, "after").await.unwrap();
    });
    // Requests already waiting in the paused server's socket when it wakes up.
    let stale = {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&owner_addr).unwrap();
        let k = key.as_bytes();
        let mut req = Vec::new();
        for cmd in [vec![&b"SET"[..], k, b"zombie"], vec![&b"GET"[..], k], vec![&b"INCR"[..], k]] {
            req.extend_from_slice(format!("*{}\r\n", cmd.len()).as_bytes());
            for a in cmd {
                req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                req.extend_from_slice(a);
                req.extend_from_slice(b"\r\n");
            }
        }
        s.write_all(&req).unwrap();
        s
    };
    c.server(&owner).proc.signal(rustix::process::Signal::CONT);
    let got = read_replies(stale, 3, Duration::from_secs(15));
    assert_eq!(got.len(), 3, "{got:?}");
    for r in &got {
        assert!(r.starts_with("-MOVED ") || r.starts_with("-CLUSTERDOWN") || r == "after", "the deposed owner answered {r:?}: {got:?}");
    }
    rt().block_on(async {
        let mut con = client_via(&survivors).await;
        assert_eq!(con.get::<_, String>(&key).await.unwrap(), "after", "a write of the deposed owner became visible");
    });
}

#[test]
fn bad_input_gets_errors_or_a_closed_connection_and_changes_nothing() {
    let c = Cluster::start(2, PARTITIONS);
    let key = key_in_partition("bad", 0, PARTITIONS);
    let owner = c.owner_of(0).unwrap();
    let addr = c.servers.iter().find(|s| s.name == owner).unwrap().addr.clone();
    let t = Duration::from_secs(5);
    let set = format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$4\r\nkeep\r\n", key.len());
    assert_eq!(replies(&raw(&addr, set.as_bytes(), Duration::from_millis(500))), ["+OK"]);
    // Garbage, a 2^40 bulk length, a negative array, a bad bulk header: one error, then closed.
    for bad in [&b"*1\r\n$1099511627776\r\n"[..], b"*2\r\n$3\r\nGET\r\n:5\r\n", b"*-5x\r\n", b"*1\r\n$3\r\nGETX\r\n", b"\"unbalanced\r\n"] {
        let r = replies(&raw(&addr, bad, t));
        assert_eq!(r.len(), 1, "{:?} -> {r:?}", String::from_utf8_lossy(bad));
        assert!(r[0].starts_with("-ERR Protocol error"), "{:?} -> {r:?}", String::from_utf8_lossy(bad));
    }
    let mut noise = vec![0u8; 4096];
    let mut x = 0x1234_5678u32;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let _ = raw(&addr, &noise, Duration::from_millis(500));
    // An unterminated frame: nothing is answered, and the server is fine.
    let r = raw(&addr, b"*3\r\n$3\r\nSET\r\n$3\r\nabc\r\n$10\r\nshort", Duration::from_millis(300));
    assert!(r.is_empty(), "{:?}", String::from_utf8_lossy(&r));
    // Wrong argument counts and unknown commands: error replies, connection stays open.
    let r = replies(&raw(&addr, b"GET\r\nSET a\r\nCLUSTER\r\nNOPE 1 2\r\nPING\r\n", Duration::from_millis(500)));
    assert_eq!(r.len(), 5, "{r:?}");
    assert!(r[..4].iter().all(|l| l.starts_with("-ERR")), "{r:?}");
    assert_eq!(r[4], "+PONG");
    // 10,000 pipelined commands: 10,000 replies, in order.
    let mut big = Vec::new();
    for i in 0..10_000 {
        if i % 2 == 0 {
            big.extend_from_slice(format!("*2\r\n$4\r\nECHO\r\n${}\r\n{i}\r\n", i.to_string().len()).as_bytes());
        } else {
            big.extend_from_slice(format!("*2\r\n$6\r\nEXISTS\r\n${}\r\n{key}\r\n", key.len()).as_bytes());
        }
    }
    let r = replies(&raw(&addr, &big, Duration::from_secs(2)));
    assert_eq!(r.len(), 10_000);
    for (i, l) in r.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(l, &i.to_string());
        } else {
            assert_eq!(l, ":1");
        }
    }
    // Still up, data intact.
    let get = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
    assert_eq!(replies(&raw(&addr, get.as_bytes(), Duration::from_millis(500))), ["keep"]);
    for s in &c.servers {
        assert_eq!(s.proc.state().map(|c| c != 'Z'), Some(true), "{} died", s.name);
    }
}

#[test]
fn server_refuses_bad_arguments_cleanly() {
    let s = Scratch::new();
    let vol = s.volume("v", "16MiB", 4);
    let o = run(&["server", "--volume", s.path("missing").to_str().unwrap(), "--id", "a", "--listen", "127.0.0.1:0"]);
    assert_clean_failure(&o, "cannot open volume");
    let o = run(&["server", "--volume", vol.to_str().unwrap(), "--id", "has space", "--listen", "127.0.0.1:0"]);
    assert_clean_failure(&o, "--id");
    let o = run(&["server", "--volume", vol.to_str().unwrap(), "--id", "a", "--listen", "not-an-address"]);
    assert_clean_failure(&o, "cannot listen");
    let o = run(&["up", "--port", "65530", "--servers", "10", "--dir", s.path("d").to_str().unwrap()]);
    assert_clean_failure(&o, "no room");
    let o = run(&["up", "--http", "0", "--dir", s.path("d").to_str().unwrap()]);
    assert_clean_failure(&o, "--http 0");
    let o = run(&["up", "--port", "7000", "--http", "7002", "--dir", s.path("d").to_str().unwrap()]);
    assert_clean_failure(&o, "overlap");
    // A lock manager of another volume: its fences would not protect ours.
    let other = s.volume("other", "16MiB", 4);
    let mut lm = ChildGuard::spawn(&["lockmgr", "--volume", other.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let lm_addr = lm.wait_lockmgr_ready(Duration::from_secs(20));
    let o = run(&["server", "--volume", vol.to_str().unwrap(), "--id", "a", "--listen", "127.0.0.1:0", "--lockmgr", &lm_addr]);
    assert_clean_failure(&o, "serves volume");
}

#[test]
fn connection_commands_resp3_and_client_limits() {
    let c = Cluster::start(2, PARTITIONS);
    let addr = c.servers[0].addr.clone();
    rt().block_on(async {
        let mut d = direct(&addr).await;
        let pong: String = redis::cmd("PING").query_async(&mut d).await.unwrap();
        assert_eq!(pong, "PONG");
        let echo: String = redis::cmd("ECHO").arg("hi").query_async(&mut d).await.unwrap();
        assert_eq!(echo, "hi");
        let _: () = redis::cmd("SELECT").arg(0).query_async(&mut d).await.unwrap();
        assert!(redis::cmd("SELECT").arg(1).query_async::<()>(&mut d).await.is_err());
        for cmd in ["READONLY", "READWRITE", "ASKING"] {
            let _: () = redis::cmd(cmd).query_async(&mut d).await.unwrap();
        }
        let _: () = redis::cmd("CLIENT").arg("SETNAME").arg("me").query_async(&mut d).await.unwrap();
        let name: String = redis::cmd("CLIENT").arg("GETNAME").query_async(&mut d).await.unwrap();
        assert_eq!(name, "me");
        let _: () = redis::cmd("CLIENT").arg("SETINFO").arg("LIB-NAME").arg("x").query_async(&mut d).await.unwrap();
        let cfg: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("save").query_async(&mut d).await.unwrap();
        assert_eq!(cfg, ["save", ""]);
        let cfg: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("appendonly").query_async(&mut d).await.unwrap();
        assert_eq!(cfg, ["appendonly", "yes"], "every write is synced before it is acknowledged");
        let info: String = redis::cmd("INFO").query_async(&mut d).await.unwrap();
        assert!(info.contains("redis_mode:cluster") && info.contains("cluster_enabled:1"), "{info}");
        // COMMAND: every command with its key positions (redis-py routes from these).
        let table: Vec<redis::Value> = redis::cmd("COMMAND").query_async(&mut d).await.unwrap();
        assert!(table.len() >= 30);
        let keys: Vec<String> =
            redis::cmd("COMMAND").arg("GETKEYS").arg("MSET").arg("a").arg("1").arg("b").arg("2").query_async(&mut d).await.unwrap();
        assert_eq!(keys, ["a", "b"]);
        let docs: redis::Value = redis::cmd("COMMAND").arg("DOCS").query_async(&mut d).await.unwrap();
        assert!(
            matches!(docs, redis::Value::Array(ref v) if v.is_empty()) || matches!(docs, redis::Value::Map(ref v) if v.is_empty()),
            "{docs:?}"
        );
    });
    // DBSIZE counts the keys a server serves; over all servers, every key once.
    rt().block_on(async {
        let mut con = client(&c).await;
        for i in 0..100 {
            let _: () = con.set(format!("db:{i}"), i).await.unwrap();
        }
        let mut total = 0;
        for s in &c.servers {
            let mut d = direct(&s.addr).await;
            total += redis::cmd("DBSIZE").query_async::<i64>(&mut d).await.unwrap();
        }
        assert_eq!(total, 100);
    });
    // RESP3 after HELLO 3: maps and verbatim strings; QUIT answers and closes.
    let r = raw(&addr, b"HELLO 3\r\nCLUSTER MYID\r\nCONFIG GET save\r\nQUIT\r\nPING\r\n", Duration::from_secs(2));
    let text = String::from_utf8_lossy(&r);
    assert!(text.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"), "{text}");
    assert!(text.contains("$5\r\nproto\r\n:3\r\n"), "{text}");
    assert!(text.contains("%1\r\n$4\r\nsave\r\n$0\r\n\r\n"), "{text}");
    assert!(text.ends_with("+OK\r\n"), "PING after QUIT must not be answered: {text}");
    let r = raw(&addr, b"HELLO 4\r\n", Duration::from_millis(300));
    assert!(String::from_utf8_lossy(&r).starts_with("-NOPROTO"), "{}", String::from_utf8_lossy(&r));
    // The connection limit: the one too many is told so and closed; the server stays up.
    // (Other clients may connect to the new server too, so count what we get.)
    let limited = c.spawn_server_with("tiny", &["--max-clients", "2"]);
    let mut open = Vec::new();
    let refused = loop {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&limited.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"PING\r\n").unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        if reply == "+PONG\r\n" {
            open.push(s);
            assert!(open.len() <= 2, "more than --max-clients connections served");
        } else {
            break reply;
        }
    };
    assert_eq!(refused, "-ERR max number of clients reached\r\n");
    drop(open);
    wait_until(Duration::from_secs(10), "a connection accepted again", || {
        raw(&limited.addr, b"PING\r\n", Duration::from_millis(300)) == b"+PONG\r\n"
    });
    // CONFIG GET answers the limits in force, not the defaults.
    let maxclients = |addr: &str| replies(&raw(addr, b"CONFIG GET maxclients\r\n", Duration::from_millis(300)));
    wait_until(Duration::from_secs(10), "CONFIG GET maxclients answered", || maxclients(&limited.addr).len() == 3);
    assert_eq!(maxclients(&limited.addr), ["*2", "maxclients", "2"]);
    assert_eq!(maxclients(&addr), ["*2", "maxclients", "10000"]);
    let bulk = replies(&raw(&addr, b"CONFIG GET proto-max-bulk-len client-query-buffer-limit\r\n", Duration::from_millis(300)));
    assert_eq!(bulk, ["*4", "client-query-buffer-limit", "1073741824", "proto-max-bulk-len", "536870912"]);
}

/// A block of `n` consecutive free loopback ports, below Linux's ephemeral
/// range (32768+) so that other tests' port-0 binds cannot take them meanwhile.
fn free_ports(n: u16) -> u16 {
    for attempt in 0..1000u32 {
        let base = 20000 + ((std::process::id().wrapping_mul(7919) + attempt * 104_729) % 12000) as u16;
        let all: Vec<_> = (0..n).map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i))).collect();
        if all.iter().all(Result::is_ok) {
            return base;
        }
    }
    panic!("no block of {n} free ports");
}

#[test]
fn up_starts_a_cluster_stops_it_on_sigterm_and_keeps_the_data() {
    let s = Scratch::new();
    let dir = s.path("data");
    // The lock manager, 3 servers, the standby lock manager, their pages.
    let base = free_ports(7);
    let http = (base + 5).to_string();
    let args = ["up", "--dir", dir.to_str().unwrap(), "--port", &base.to_string(), "--partitions", "6", "--size", "64MiB", "--http", &http];
    for round in 0..2 {
        let mut up = ChildGuard::spawn(&args);
        let line = up.wait_line(Duration::from_secs(60), |l| l.contains("redis-cli -c -p"));
        assert!(line.contains(&format!("-p {}", base + 1)), "{line}");
        let line = up.wait_line(Duration::from_secs(10), |l| l.contains("page:"));
        assert!(line.contains(&format!("http://127.0.0.1:{http}/")), "{line}");
        // Each lock manager's page, the standby's asking the active one.
        for (port, role) in [(base + 5, "active"), (base + 6, "standby")] {
            wait_until(Duration::from_secs(20), "each lock manager's page to show the cluster", || {
                let page: serde_json::Value =
                    serde_json::from_str(&http_get(&format!("127.0.0.1:{port}"), "/status.json").1).unwrap_or_default();
                page["role"] == role && page["status"]["partitions"].as_array().map(Vec::len) == Some(6)
            });
        }
        let urls: Vec<String> = (1..=3).map(|i| format!("redis://127.0.0.1:{}/", base + i)).collect();
        rt().block_on(async {
            let client = redis::cluster::ClusterClient::builder(urls.clone()).build().unwrap();
            let mut con = client.get_async_connection().await.unwrap();
            if round == 0 {
                for i in 0..50 {
                    let _: () = con.set(format!("up:{i}"), i).await.unwrap();
                }
            } else {
                for i in 0..50 {
                    assert_eq!(con.get::<_, Option<i64>>(format!("up:{i}")).await.unwrap(), Some(i), "data lost across up restarts");
                }
            }
        });
        let children: Vec<u32> = std::fs::read_to_string(format!("/proc/{}/task/{}/children", up.pid(), up.pid()))
            .unwrap_or_default()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(children.len(), 5, "two lock managers and 3 servers");
        if round == 0 {
            // kill -9 the active lock manager: the standby takes over, `up`
            // starts the killed one again as a standby, data still served.
            let lockmgrs = format!("127.0.0.1:{base},127.0.0.1:{}", base + 4);
            // `up` made a cluster secret (0600) in its directory; without it admin is refused.
            let secret = dir.join("cluster.secret");
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
            assert_clean_failure(&run(&["admin", "--lockmgr", &lockmgrs, "status"]), "requires the cluster secret");
            let secret = secret.to_str().unwrap().to_owned();
            let status = || -> sharedisk_lockmgr::core::Status {
                serde_json::from_str(&assert_success(&run(&[
                    "admin",
                    "--lockmgr",
                    &lockmgrs,
                    "--secret-file",
                    &secret,
                    "status",
                    "--json",
                ])))
                .unwrap()
            };
            let active = status().lockmgrs.iter().find(|l| l.active).expect("an active lock manager").pid;
            let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(active as i32).unwrap(), rustix::process::Signal::KILL);
            up.wait_line(Duration::from_secs(20), |l| l.contains("exited") && l.contains("starting it again"));
            wait_until(Duration::from_secs(20), "a new active lock manager and the old one back as a standby", || {
                let st = status();
                let alive: Vec<_> = st.lockmgrs.iter().filter(|l| l.alive).collect();
                alive.len() == 2 && alive.iter().any(|l| l.active && l.term == 2 && l.pid != active)
            });
            rt().block_on(async {
                let client = redis::cluster::ClusterClient::builder(urls.clone()).build().unwrap();
                let mut con = client.get_async_connection().await.unwrap();
                assert_eq!(con.get::<_, Option<i64>>("up:7").await.unwrap(), Some(7));
            });
        }
        up.signal(rustix::process::Signal::TERM);
        let st = up.wait_exit(Duration::from_secs(30));
        assert!(st.success(), "up exited with {st}");
        for pid in children {
            wait_until(Duration::from_secs(10), "children gone", || proc_state(pid).is_none_or(|s| s == 'Z'));
        }
    }
}

#[test]
fn without_the_lock_manager_servers_stop_serving_then_resume_after_its_restart() {
    let mut c = Cluster::start(2, PARTITIONS);
    let key = key_in_partition("lm", 0, PARTITIONS);
    let owner = c.owner_of(0).unwrap();
    let addr = c.server(&owner).addr.clone();
    rt().block_on(async {
        let mut con = client(&c).await;
        let _: () = con.set(&key, "kept").await.unwrap();
    });
    c.lockmgr.kill9();
    // Its lease cannot be renewed: once it lapses the server must not answer
    // for the partition (it cannot know whether it still owns it).
    let get = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
    wait_until(Duration::from_secs(20), "CLUSTERDOWN while the lock manager is away", || {
        ask(&addr, get.as_bytes(), 1).first().is_some_and(|r| r.starts_with("-CLUSTERDOWN"))
    });
    // Restarted on the same address: the server reconnects with the same key,
    // reclaims its partitions, and serves them again with the data intact.
    c.lockmgr = ChildGuard::spawn(&["lockmgr", "--volume", c.volume.to_str().unwrap(), "--listen", &c.lockmgr_addr]);
    c.lockmgr.wait_lockmgr_ready(Duration::from_secs(20));
    wait_until(Duration::from_secs(20), "served again", || ask(&addr, get.as_bytes(), 1) == ["kept"]);
    c.settle();
    rt().block_on(async {
        let mut con = client(&c).await;
        assert_eq!(con.get::<_, String>(&key).await.unwrap(), "kept");
        let _: () = con.set(&key, "after").await.unwrap();
        assert_eq!(con.get::<_, String>(&key).await.unwrap(), "after");
    });
}

#[test]
fn sigterm_stops_a_server_even_while_the_lock_manager_is_gone() {
    let mut c = Cluster::start(1, PARTITIONS);
    c.lockmgr.kill9();
    let s = c.server("s1");
    s.proc.wait_line(Duration::from_secs(10), |l| l.contains("lost the lock manager"));
    s.proc.signal(rustix::process::Signal::TERM);
    let st = s.proc.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st}");
}

/// RESET puts a connection back as a new one finds it: the open MULTI is
/// discarded (its queued write never runs), the watch dropped, the name
/// cleared, READONLY off, RESP2, replies on; and it answers `RESET`.
#[test]
fn reset_gives_a_connection_back_as_new() {
    let mut c = Cluster::start(1, PARTITIONS);
    let addr = c.server("s1").addr.clone();
    rt().block_on(async {
        let mut d = direct(&addr).await;
        let _: () = redis::cmd("CLIENT").arg("SETNAME").arg("before").query_async(&mut d).await.unwrap();
        let _: () = redis::cmd("READONLY").query_async(&mut d).await.unwrap();
        let info: String = redis::cmd("CLIENT").arg("INFO").query_async(&mut d).await.unwrap();
        assert!(info.contains(" flags=r ") && info.contains("name=before"), "{info}");
        let _: () = redis::cmd("WATCH").arg("rk").query_async(&mut d).await.unwrap();
        let _: () = redis::cmd("MULTI").query_async(&mut d).await.unwrap();
        let _: () = redis::cmd("SET").arg("rk").arg("queued").query_async(&mut d).await.unwrap();
        let r: String = redis::cmd("RESET").query_async(&mut d).await.unwrap();
        assert_eq!(r, "RESET");
        let e = redis::cmd("EXEC").query_async::<()>(&mut d).await.unwrap_err();
        assert!(e.to_string().contains("EXEC without MULTI"), "{e}");
        assert_eq!(redis::cmd("GET").arg("rk").query_async::<Option<String>>(&mut d).await.unwrap(), None, "the discarded SET ran");
        assert_eq!(redis::cmd("CLIENT").arg("GETNAME").query_async::<Option<String>>(&mut d).await.unwrap(), None);
        let info: String = redis::cmd("CLIENT").arg("INFO").query_async(&mut d).await.unwrap();
        assert!(info.contains(" flags=N ") && info.contains(" resp=2") && !info.contains("name=before"), "{info}");
        // The watch is gone too: a write by another client does not abort this EXEC.
        let mut other = direct(&addr).await;
        let _: () = redis::cmd("MULTI").query_async(&mut d).await.unwrap();
        let _: () = redis::cmd("SET").arg("rk").arg("mine").query_async(&mut d).await.unwrap();
        let _: () = redis::cmd("SET").arg("rk").arg("theirs").query_async(&mut other).await.unwrap();
        let r: Vec<String> = redis::cmd("EXEC").query_async(&mut d).await.unwrap();
        assert_eq!(r, ["OK"]);
    });
}

/// SHUTDOWN stops a server as SIGTERM does: no reply (the connection just
/// closes, which redis-py's `shutdown()` counts as success), the process
/// exits 0 and its partitions are served by the other server with their
/// data. Inside MULTI it is refused and voids the transaction, as in Redis.
#[test]
fn shutdown_stops_a_server_as_sigterm_does_and_is_refused_inside_multi() {
    let mut c = Cluster::start(2, PARTITIONS);
    rt().block_on(async {
        let mut con = client(&c).await;
        for i in 0..100 {
            let _: () = con.set(format!("sd:{i}"), i).await.unwrap();
        }
    });
    let addr = c.server("s2").addr.clone();
    rt().block_on(async {
        let mut d = direct(&addr).await;
        let _: () = redis::cmd("MULTI").query_async(&mut d).await.unwrap();
        let e = redis::cmd("SHUTDOWN").query_async::<()>(&mut d).await.unwrap_err();
        assert!(e.to_string().contains("Command not allowed inside a transaction"), "{e}");
        let e = redis::cmd("EXEC").query_async::<()>(&mut d).await.unwrap_err();
        assert_eq!(e.code(), Some("EXECABORT"), "{e}");
        let e = redis::cmd("SHUTDOWN").arg("ABORT").query_async::<()>(&mut d).await.unwrap_err();
        assert!(e.to_string().contains("No shutdown in progress"), "{e}");
        let e = redis::cmd("SHUTDOWN").arg("LATER").query_async::<()>(&mut d).await.unwrap_err();
        assert!(e.to_string().contains("syntax error"), "{e}");
        let pong: String = redis::cmd("PING").query_async(&mut d).await.unwrap();
        assert_eq!(pong, "PONG", "a refused SHUTDOWN stopped something");
        let e = redis::cmd("SHUTDOWN").arg("NOSAVE").query_async::<redis::Value>(&mut d).await.unwrap_err();
        assert!(e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error(), "answered instead of closing: {e:?}");
    });
    let st = c.server("s2").proc.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st}");
    c.servers.retain(|s| s.name != "s2");
    c.wait_reassigned_from("s2");
    rt().block_on(async {
        let mut con = client(&c).await;
        for i in 0..100 {
            assert_eq!(con.get::<_, i64>(format!("sd:{i}")).await.unwrap(), i);
        }
    });
}

#[test]
fn a_killed_server_restarts_under_its_name_and_takes_its_share_back() {
    let mut c = Cluster::start(3, PARTITIONS);
    rt().block_on(async {
        let mut con = client(&c).await;
        for i in 0..100 {
            let _: () = con.set(format!("r:{i}"), i).await.unwrap();
        }
    });
    let id_before = rt().block_on(async {
        let mut d = direct(&c.server("s3").addr.clone()).await;
        redis::cmd("CLUSTER").arg("MYID").query_async::<String>(&mut d).await.unwrap()
    });
    c.server("s3").proc.kill9();
    c.servers.retain(|s| s.name != "s3");
    c.wait_reassigned_from("s3");
    let s3 = c.spawn_server("s3");
    c.servers.push(s3);
    // It rejoins with the same node id and gets partitions back by planned moves.
    c.settle();
    assert!(c.status().servers.iter().any(|s| s.id == "s3" && s.alive && s.partitions > 0));
    rt().block_on(async {
        let mut d = direct(&c.server("s3").addr.clone()).await;
        assert_eq!(redis::cmd("CLUSTER").arg("MYID").query_async::<String>(&mut d).await.unwrap(), id_before);
        let mut con = client(&c).await;
        for i in 0..100 {
            assert_eq!(con.get::<_, i64>(format!("r:{i}")).await.unwrap(), i);
        }
    });
}

#[test]
fn admin_status_into_a_closed_pipe_is_not_a_crash_and_info_counts_errors() {
    let c = Cluster::start(1, PARTITIONS);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(bin())
        .args(["admin", "--lockmgr", &c.lockmgr_addr, "status"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    // INFO stats counts error replies (a benchmark checks nothing was refused).
    let addr = &c.servers[0].addr;
    let stat = |name: &str| -> u64 {
        let text = String::from_utf8_lossy(&raw(addr, b"INFO stats\r\n", Duration::from_millis(300))).into_owned();
        text.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).unwrap_or_else(|| panic!("{name} in {text}")).trim().parse().unwrap()
    };
    let before = stat("total_error_replies");
    let _ = raw(addr, b"NOPE\r\nGET\r\nPING\r\n", Duration::from_millis(300));
    assert_eq!(stat("total_error_replies"), before + 2);
    assert!(stat("total_commands_processed") >= 3);
    // And the group commit: writes go through engine cycles and barriers.
    let (barriers, requests) = (stat("sharedisk_barriers"), stat("sharedisk_engine_requests"));
    let replies = raw(addr, b"SET info:a 1\r\nSET info:b 2\r\n", Duration::from_millis(300));
    assert_eq!(replies, b"+OK\r\n+OK\r\n");
    assert!(stat("sharedisk_barriers") > barriers);
    assert!(stat("sharedisk_engine_requests") >= requests + 2);
    assert!(stat("sharedisk_engine_cycles") >= 1 && stat("sharedisk_barrier_usec") > 0);
}
