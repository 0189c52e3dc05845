//! Hot standbys, end to end: every partition is followed by another
//! server, a failover or a planned move to it reads only its lag, and
//! nothing acknowledged is lost on the way. Which claims were warm is read
//! from the servers' own counters (`INFO replication`), not from timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::cluster::*;
use crate::server::{Acked, assert_all_readable, rt, wait_for_progress, writer};
use crate::util::*;

const PARTITIONS: u32 = 8;

/// `sharedisk_<name>:` of a server's `INFO replication`.
fn replication_stat(addr: &str, name: &str) -> u64 {
    let mut con = redis::Client::open(format!("redis://{addr}/")).unwrap().get_connection_with_timeout(Duration::from_secs(5)).unwrap();
    let text: String = redis::cmd("INFO").arg("replication").query(&mut con).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("sharedisk_{name}:")))
        .unwrap_or_else(|| panic!("{name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Per server: (claims from a standby, cold claims).
fn claims(c: &Cluster) -> Vec<(String, u64, u64)> {
    c.servers
        .iter()
        .map(|s| (s.name.clone(), replication_stat(&s.addr, "claims_from_standby"), replication_stat(&s.addr, "claims_cold")))
        .collect()
}

fn owned_by(c: &Cluster, server: &str) -> Vec<u32> {
    c.status().partitions.iter().filter(|p| p.owner.as_deref() == Some(server)).map(|p| p.id).collect()
}

/// A 3-server cluster with every standby synced, and a partition of it
/// with an owner and a standby: (cluster, partition, owner, standby).
fn cluster_with_a_standby() -> (Cluster, u32, String, String) {
    let c = Cluster::start(3, PARTITIONS);
    c.wait_standbys_synced(Duration::from_secs(30));
    let st = c.status();
    let p = st.partitions.iter().find(|p| p.owner.is_some() && p.standby.is_some()).expect("a partition with a standby");
    let (partition, owner, standby) = (p.id, p.owner.clone().unwrap(), p.standby.clone().unwrap());
    (c, partition, owner, standby)
}

/// Every partition has a standby on another server than its owner, and
/// each server keeps about as many as the others.
#[test]
fn every_partition_has_a_standby_elsewhere_and_a_kill9_goes_to_them() {
    let mut c = Cluster::start(3, PARTITIONS);
    c.wait_standbys_synced(Duration::from_secs(30));
    let st = c.status();
    let mut per_server = std::collections::BTreeMap::<String, u32>::new();
    for p in &st.partitions {
        let standby = p.standby.clone().unwrap_or_else(|| panic!("partition {} has no standby: {st:?}", p.id));
        assert_ne!(Some(&standby), p.owner.as_ref(), "partition {} is its own standby", p.id);
        *per_server.entry(standby).or_default() += 1;
    }
    let (min, max) = (per_server.values().min().unwrap(), per_server.values().max().unwrap());
    assert!(per_server.len() == 3 && max - min <= 1, "standbys not balanced: {per_server:?}");
    // Their servers report their lag, which `admin status` shows.
    wait_until(Duration::from_secs(10), "every standby's lag reported, synced", || {
        c.status().partitions.iter().all(|p| p.standby_lag.as_ref().is_some_and(|l| l.synced && l.reported_ms_ago < 5000))
    });
    let text = c.admin(&["status"]);
    assert!(text.contains(" lag ") && text.lines().filter(|l| l.contains(" B ")).count() >= PARTITIONS as usize, "{text}");

    let (stop, errors, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let acked: Acked = Default::default();
    let w = writer(&c, 300, stop.clone(), acked.clone(), errors.clone(), ok.clone());
    wait_for_progress(&ok, 1000, "writes before the kill");
    let victims = owned_by(&c, "s2");
    assert!(!victims.is_empty());
    let survivors = |c: &Cluster| claims(c).into_iter().filter(|(n, _, _)| n != "s2").collect::<Vec<_>>();
    let before: u64 = survivors(&c).iter().map(|(_, warm, _)| warm).sum();
    let cold_before: u64 = survivors(&c).iter().map(|(_, _, cold)| cold).sum();
    c.server("s2").proc.kill9();
    c.servers.retain(|s| s.name != "s2");
    c.wait_reassigned_from("s2");
    wait_for_progress(&ok, 1000, "writes after the kill");
    stop.store(true, Ordering::Release);
    w.join().unwrap();
    let after: u64 = claims(&c).iter().map(|(_, warm, _)| warm).sum();
    let cold_after: u64 = claims(&c).iter().map(|(_, _, cold)| cold).sum();
    assert_eq!(after - before, victims.len() as u64, "not every partition of the killed server was taken over by its standby");
    assert_eq!(cold_after, cold_before, "a partition of the killed server was claimed cold");
    rt().block_on(assert_all_readable(&c, &acked));
}

/// A planned move to the standby is warm; a move to another server is a
/// cold claim and works too; under a writing client, neither is an error.
#[test]
fn a_move_to_the_standby_is_warm_and_a_move_elsewhere_is_cold() {
    let c = Cluster::start(3, PARTITIONS);
    c.wait_standbys_synced(Duration::from_secs(30));
    let (stop, errors, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let acked: Acked = Default::default();
    let w = writer(&c, 300, stop.clone(), acked.clone(), errors.clone(), ok.clone());
    wait_for_progress(&ok, 500, "writes before the moves");
    let st = c.status();
    let p0 = &st.partitions[0];
    let standby = p0.standby.clone().unwrap();
    let other = c.servers.iter().map(|s| s.name.clone()).find(|n| Some(n) != p0.owner.as_ref() && *n != standby).unwrap();
    let stat_of = |name: &str, what: &str| replication_stat(&c.servers.iter().find(|s| s.name == name).unwrap().addr, what);

    let warm_before = stat_of(&standby, "claims_from_standby");
    c.admin(&["move", "0", &standby]);
    wait_until(Duration::from_secs(10), "partition 0 moved to its standby", || c.owner_of(0).as_deref() == Some(standby.as_str()));
    wait_until(Duration::from_secs(10), "the move's claim counted", || stat_of(&standby, "claims_from_standby") == warm_before + 1);

    let cold_before = stat_of(&other, "claims_cold");
    // Partition 0's new standby may be `other`; pick one whose standby is not.
    let st = c.status();
    let q = st
        .partitions
        .iter()
        .find(|p| p.owner.as_deref() != Some(other.as_str()) && p.standby.as_deref() != Some(other.as_str()))
        .unwrap()
        .id;
    c.admin(&["move", &q.to_string(), &other]);
    wait_until(Duration::from_secs(10), "the second move", || c.owner_of(q).as_deref() == Some(other.as_str()));
    wait_until(Duration::from_secs(10), "the cold claim counted", || stat_of(&other, "claims_cold") == cold_before + 1);
    wait_for_progress(&ok, 500, "writes after the moves");
    stop.store(true, Ordering::Release);
    w.join().unwrap();
    assert_eq!(errors.load(Ordering::Acquire), 0, "planned moves caused client errors");
    rt().block_on(assert_all_readable(&c, &acked));
}

/// Writes to the keys of `partitions` (20 per partition, overwritten in
/// turn) through the harness router, which gives up on a hung server after
/// 200 ms and asks the slot map again; acknowledged values are recorded.
fn router_writer(
    c: &Cluster,
    partitions: Vec<u32>,
    stop: Arc<AtomicBool>,
    acked: Acked,
    ok: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    use sharedisk_testkit::router::{Router, key_slot};
    let known = Arc::new(std::sync::Mutex::new(c.addrs()));
    let keys: Vec<String> =
        partitions.iter().flat_map(|p| (0..20).map(move |i| format!("{}:{i}", key_in_partition("sb", *p, PARTITIONS)))).collect();
    std::thread::spawn(move || {
        let mut router = Router::new(known, Duration::from_millis(200));
        router.refresh();
        let mut n = 0u64;
        while !stop.load(Ordering::Acquire) {
            n += 1;
            let key = &keys[n as usize % keys.len()];
            let (res, _) = router.call(
                key_slot(key.as_bytes()),
                redis::cmd("SET").arg(key).arg(n),
                std::time::Instant::now() + Duration::from_secs(20),
            );
            match res {
                Some(Ok(redis::Value::Okay)) => {
                    acked.lock().unwrap().insert(key.clone(), n);
                    ok.fetch_add(1, Ordering::AcqRel);
                }
                // Unknown outcome: forget what we knew of the key.
                _ => {
                    acked.lock().unwrap().remove(key);
                }
            }
        }
    })
}

/// A standby server SIGSTOPped while the owners it follows write and clean
/// hard: it falls behind (its session lapses too, it is a server), and on
/// SIGCONT it comes back, follows again, and a later kill -9 of an owner is
/// still a warm takeover that loses nothing.
#[test]
fn a_paused_standby_falls_behind_and_catches_up_without_harm() {
    // An owner and a server that follows some of its partitions: the
    // standby falls behind on them while it is paused.
    let (mut c, p0, owner, standby) = cluster_with_a_standby();
    let owner_parts = owned_by(&c, &owner);
    let (stop, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let acked: Acked = Default::default();
    // Few keys overwritten fast: the cleaner frees and reuses segments all the time.
    let w = router_writer(&c, owner_parts, stop.clone(), acked.clone(), ok.clone());
    wait_for_progress(&ok, 300, "writes before the pause");
    c.server(&standby).proc.signal(rustix::process::Signal::STOP);
    wait_for_progress(&ok, 3000, "writes while the standby is paused");
    c.server(&standby).proc.signal(rustix::process::Signal::CONT);
    c.settle();
    c.wait_standbys_synced(Duration::from_secs(30));
    wait_for_progress(&ok, 300, "writes after the pause");
    // The owner may have changed meanwhile (the paused server's own
    // partitions moved, a rebalance followed): kill whoever owns the
    // partitions written now.
    let owner = c.owner_of(p0).expect("owned");
    let victims = owned_by(&c, &owner);
    let survivors = |c: &Cluster| claims(c).into_iter().filter(|(n, _, _)| *n != owner).map(|(_, warm, _)| warm).sum::<u64>();
    let before = survivors(&c);
    c.server(&owner).proc.kill9();
    c.servers.retain(|s| s.name != owner);
    c.wait_reassigned_from(&owner);
    wait_for_progress(&ok, 300, "writes after the kill");
    stop.store(true, Ordering::Release);
    w.join().unwrap();
    assert_eq!(survivors(&c) - before, victims.len() as u64, "a takeover after the pause was not warm");
    rt().block_on(assert_all_readable(&c, &acked));
}

/// One `READONLY` read of the counter: when it was sent, and what came back.
#[derive(Debug)]
enum Seen {
    /// Answered with a value (None: the key did not exist yet).
    Value(Option<u64>),
    Moved,
    /// No answer in time (the server is paused), or another error.
    Failed,
}

/// `READONLY` reads from a standby are never staler than the bound, even
/// when its server is SIGSTOPped while the owner writes and cleans hard:
/// every value a read returns includes every write acknowledged more than
/// the bound before the read was sent. The paused standby is dropped (the
/// lock manager places the partition's standby elsewhere) and, on SIGCONT,
/// its server keeps standbys again and they resync.
#[test]
fn readonly_reads_from_a_paused_standby_are_never_staler_than_the_bound() {
    use sharedisk_testkit::router::{Router, key_slot};
    use std::time::Instant;
    const BOUND: Duration = Duration::from_millis(10);
    let (mut c, partition, _, standby) = cluster_with_a_standby();
    let standby_addr = c.server(&standby).addr.clone();
    let counter = format!("{{{}}}:counter", key_in_partition("ro", partition, PARTITIONS));
    let stop = Arc::new(AtomicBool::new(false));
    // (acknowledged at, value), in order: the writer is the only one.
    let acks = Arc::new(std::sync::Mutex::new(Vec::<(Instant, u64)>::new()));
    let attempted = Arc::new(AtomicU64::new(0));
    let writer = {
        let (known, stop, acks, attempted, counter) =
            (Arc::new(std::sync::Mutex::new(c.addrs())), stop.clone(), acks.clone(), attempted.clone(), counter.clone());
        std::thread::spawn(move || {
            let mut router = Router::new(known, Duration::from_millis(200));
            router.refresh();
            let slot = key_slot(counter.as_bytes());
            // Filler overwritten in turn in the same partition: garbage for the cleaner.
            let filler = vec![b'f'; 4096];
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                attempted.store(n, Ordering::Release);
                let give_up = Instant::now() + Duration::from_secs(20);
                if let (Some(Ok(redis::Value::Okay)), _) = router.call(slot, redis::cmd("SET").arg(&counter).arg(n), give_up) {
                    acks.lock().unwrap().push((Instant::now(), n));
                }
                let fill = format!("{counter}:fill:{}", n % 16);
                let _ = router.call(slot, redis::cmd("SET").arg(fill).arg(&filler[..]), give_up);
            }
        })
    };
    let reads = Arc::new(std::sync::Mutex::new(Vec::<(Instant, Seen)>::new()));
    let reader = {
        let (stop, reads, counter, addr) = (stop.clone(), reads.clone(), counter.clone(), standby_addr.clone());
        std::thread::spawn(move || {
            let connect = || -> redis::RedisResult<redis::Connection> {
                let mut con = redis::Client::open(format!("redis://{addr}/"))?.get_connection_with_timeout(Duration::from_secs(1))?;
                con.set_read_timeout(Some(Duration::from_secs(1)))?;
                redis::cmd("READONLY").query::<()>(&mut con)?;
                Ok(con)
            };
            let mut con = None;
            while !stop.load(Ordering::Acquire) {
                let Some(c) = con.as_mut() else {
                    con = connect().ok();
                    continue;
                };
                let sent = Instant::now();
                let seen = match redis::cmd("GET").arg(&counter).query::<Option<u64>>(c) {
                    Ok(v) => Seen::Value(v),
                    Err(e) if e.code() == Some("MOVED") => Seen::Moved,
                    Err(_) => {
                        con = None;
                        Seen::Failed
                    }
                };
                reads.lock().unwrap().push((sent, seen));
            }
        })
    };
    let served =
        |reads: &std::sync::Mutex<Vec<(Instant, Seen)>>| reads.lock().unwrap().iter().filter(|r| matches!(r.1, Seen::Value(_))).count();
    wait_until(Duration::from_secs(20), "reads served by the standby", || served(&reads) >= 200 && acks.lock().unwrap().len() >= 200);
    let served_before_pause = served(&reads);

    c.server(&standby).proc.signal(rustix::process::Signal::STOP);
    let paused_at = acks.lock().unwrap().len();
    wait_until(Duration::from_secs(20), "the paused standby dropped from the partition", || {
        c.status().partitions[partition as usize].standby.as_deref() != Some(standby.as_str())
    });
    wait_until(Duration::from_secs(20), "writes while the standby is paused", || acks.lock().unwrap().len() >= paused_at + 1000);
    c.server(&standby).proc.signal(rustix::process::Signal::CONT);
    c.settle();
    c.wait_standbys_synced(Duration::from_secs(30));
    let resumed_at = reads.lock().unwrap().len();
    wait_until(Duration::from_secs(20), "reads answered after the pause", || reads.lock().unwrap().len() >= resumed_at + 200);
    stop.store(true, Ordering::Release);
    writer.join().unwrap();
    reader.join().unwrap();

    // The returned server keeps standbys again, each rebuilt and synced.
    let info: String = {
        let mut con = redis::Client::open(format!("redis://{standby_addr}/")).unwrap().get_connection().unwrap();
        redis::cmd("INFO").arg("replication").query(&mut con).unwrap()
    };
    let kept: Vec<&str> = info.lines().filter(|l| l.starts_with("sharedisk_standby_p")).collect();
    assert!(!kept.is_empty() && kept.iter().all(|l| l.contains("synced=1")), "after SIGCONT: {info}");

    // The bound: a read sent at t sees every write acknowledged before t - BOUND.
    let acks = acks.lock().unwrap();
    let reads = reads.lock().unwrap();
    let most = attempted.load(Ordering::Acquire);
    let mut checked = 0;
    for (sent, seen) in reads.iter() {
        let Seen::Value(v) = seen else { continue };
        let before = acks.partition_point(|(at, _)| *at + BOUND < *sent);
        let must = before.checked_sub(1).map_or(0, |i| acks[i].1);
        let got = v.unwrap_or(0);
        assert!(got >= must, "a READONLY read sent at {sent:?} returned {got}, but {must} was acknowledged more than {BOUND:?} before");
        assert!(got <= most, "a read returned {got}, never written");
        checked += 1;
    }
    assert!(served_before_pause >= 200 && checked >= served_before_pause, "{checked} reads checked");
    let moved = reads.iter().filter(|r| matches!(r.1, Seen::Moved)).count();
    eprintln!("{checked} READONLY reads served and checked, {moved} sent to the owner, {} writes acknowledged", acks.len());
}

/// The `redis` crate's replica reads work unmodified: it finds each
/// partition's standby as a replica in `CLUSTER SLOTS`, sends `READONLY`,
/// and the standbys answer (counted by the servers themselves).
#[test]
fn a_redis_cluster_client_reads_from_the_standbys_as_replicas() {
    use redis::AsyncCommands;
    let c = Cluster::start(3, PARTITIONS);
    c.wait_standbys_synced(Duration::from_secs(30));
    let replica_reads = |c: &Cluster| c.servers.iter().map(|s| replication_stat(&s.addr, "replica_reads")).sum::<u64>();
    let before = replica_reads(&c);
    rt().block_on(async {
        let mut w = client(&c).await;
        for i in 0..200u64 {
            let () = w.set(format!("rr:{i}"), i).await.unwrap();
        }
        let r = redis::cluster::ClusterClient::builder(c.urls())
            .read_routing_strategy(redis::cluster_read_routing::RandomReplicaStrategy)
            .response_timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut r = r.get_async_connection().await.unwrap();
        // A replica may be up to the bound behind: what it answers converges.
        let give_up = std::time::Instant::now() + Duration::from_secs(20);
        for i in 0..200u64 {
            loop {
                let got: Option<u64> = r.get(format!("rr:{i}")).await.unwrap();
                if got == Some(i) {
                    break;
                }
                assert!(std::time::Instant::now() < give_up, "rr:{i} read from replicas as {got:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let served = replica_reads(&c) - before;
    assert!(served >= 200, "only {served} of at least 200 reads were answered by standbys");
}

/// `WAIT numreplicas timeout` answers whether the partition's standby has
/// applied the connection's last write: at once when it has, 0 at the
/// timeout when its server is paused, and 1 again once it caught up.
#[test]
fn wait_counts_the_standby_that_applied_the_last_write() {
    use std::time::Instant;
    let (mut c, partition, owner, standby) = cluster_with_a_standby();
    let key = key_in_partition("wait", partition, PARTITIONS);
    let mut con = redis::Client::open(format!("redis://{}/", c.server(&owner).addr)).unwrap().get_connection().unwrap();
    let wait = |con: &mut redis::Connection, n: i64, ms: u64| -> i64 { redis::cmd("WAIT").arg(n).arg(ms).query(con).unwrap() };
    // No write on this connection yet: nothing to wait for.
    assert_eq!(wait(&mut con, 1, 100), 0);
    let () = redis::cmd("SET").arg(&key).arg("v1").query(&mut con).unwrap();
    assert_eq!(wait(&mut con, 1, 5000), 1, "the standby did not apply an acknowledged write within 5 s");
    assert_eq!(wait(&mut con, 1, 0), 1, "WAIT without a timeout");
    // Pipelined: WAIT is answered after the write before it, not when parsed.
    let (ok, n): (String, i64) = redis::pipe().cmd("SET").arg(&key).arg("v2").cmd("WAIT").arg(1).arg(5000).query(&mut con).unwrap();
    assert_eq!((ok.as_str(), n), ("OK", 1));
    let bad: redis::RedisResult<i64> = redis::cmd("WAIT").arg(1).arg(-1).query(&mut con);
    assert!(bad.unwrap_err().to_string().contains("timeout is negative"));

    c.server(&standby).proc.signal(rustix::process::Signal::STOP);
    let () = redis::cmd("SET").arg(&key).arg("v3").query(&mut con).unwrap();
    let asked = Instant::now();
    assert_eq!(wait(&mut con, 1, 300), 0, "a paused standby was counted");
    assert!(asked.elapsed() >= Duration::from_millis(300), "WAIT returned before its timeout");
    // numreplicas 0 never waits.
    assert_eq!(wait(&mut con, 0, 0), 0);
    c.server(&standby).proc.signal(rustix::process::Signal::CONT);
    // Whoever keeps the standby now (the paused server may have been
    // dropped meanwhile), it catches up with the write.
    assert_eq!(wait(&mut con, 1, 20_000), 1, "no standby applied the write after SIGCONT");
}

/// `admin events` shows how each failover and move went, step by step: a
/// kill -9 of an owner is a "connection closed" handover of each of its
/// partitions, fenced, granted to the standby and served, in that order;
/// a planned move is asked, released, granted and served.
#[test]
fn admin_events_show_each_step_of_a_failover_and_a_move() {
    let (mut c, partition, owner, standby) = cluster_with_a_standby();
    let events = |c: &Cluster| -> serde_json::Value { serde_json::from_str(&c.admin(&["events", "--json"])).unwrap() };
    let lost: Vec<u32> = owned_by(&c, &owner);
    c.server(&owner).proc.kill9();
    let mut seen = serde_json::Value::Null;
    wait_until(Duration::from_secs(20), "every lost partition's handover served", || {
        seen = events(&c);
        lost.iter().all(|p| {
            seen["handovers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["partition"] == *p && h["cause"] == "ConnectionClosed" && h["from"] == owner.as_str() && h["served_ms"].is_u64())
        })
    });
    for h in seen["handovers"].as_array().unwrap().iter().filter(|h| h["cause"] == "ConnectionClosed") {
        let t = |k: &str| h[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {h}"));
        assert!(t("start_ms") <= t("fenced_ms") && t("fenced_ms") <= t("granted_ms") && t("granted_ms") <= t("served_ms"), "{h}");
        assert!(h["released_ms"].is_null(), "a lost owner releases nothing: {h}");
        if h["partition"] == partition {
            assert_eq!(h["to"], standby.as_str(), "the failover went to the standby: {h}");
        }
    }
    // A planned move back to the restarted owner's name is asked, released, granted, served.
    c.restart_server(&owner);
    c.settle();
    let p = c.status().partitions.iter().find(|p| p.owner.as_deref() != Some(owner.as_str())).unwrap().id;
    c.admin(&["move", &p.to_string(), &owner]);
    wait_until(Duration::from_secs(20), "the move's handover served", || {
        events(&c)["handovers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["partition"] == p && h["cause"] == "Move" && h["to"] == owner.as_str() && h["served_ms"].is_u64())
    });
    let moved = events(&c)["handovers"].as_array().unwrap().iter().rfind(|h| h["partition"] == p && h["cause"] == "Move").unwrap().clone();
    let t = |k: &str| moved[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {moved}"));
    assert!(t("start_ms") <= t("released_ms") && t("released_ms") <= t("granted_ms") && t("granted_ms") <= t("served_ms"), "{moved}");
    assert!(moved["fenced_ms"].is_null(), "a move fences nothing: {moved}");
    // The table says the same in words.
    let text = c.admin(&["events"]);
    assert!(text.contains("connection closed") && text.contains("move"), "{text}");
}

/// Prometheus's own linter accepts the text (`promtool check metrics`,
/// Debian's prometheus package; CI installs it).
fn promtool_accepts(body: &str) {
    let o = run_with_input("promtool", &["check", "metrics"], body, "apt-get install prometheus");
    assert!(o.status.success(), "promtool: {}{}\n{body}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

/// The value of the first sample line that starts with `prefix`.
fn sample(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{body}"))
}

/// `--metrics`: every server serves Prometheus text with the partitions as
/// the lock manager placed them, and counters that move with the load.
#[test]
fn each_server_serves_prometheus_metrics_that_match_the_cluster() {
    let s = Scratch::new();
    let volume = s.volume("vol", "64MiB", PARTITIONS);
    let mut c = Cluster::start_with(s, volume, 2, &["--metrics", "127.0.0.1:0"], Duration::from_secs(30));
    c.wait_standbys_synced(Duration::from_secs(30));
    let names: Vec<String> = c.servers.iter().map(|s| s.name.clone()).collect();
    let addrs: Vec<String> = names
        .iter()
        .map(|n| {
            let l = c.server(n).proc.wait_line(Duration::from_secs(10), |l| l.contains("metrics on http://"));
            l.split("http://").nth(1).unwrap().trim_end_matches("/metrics").to_owned()
        })
        .collect();
    let mut con = redis::cluster::ClusterClient::new(c.urls()).unwrap().get_connection().unwrap();
    for i in 0..200 {
        let _: () = redis::cmd("SET").arg(format!("m{i}")).arg(i).query(&mut con).unwrap();
    }
    let st = c.status();
    for (name, addr) in names.iter().zip(&addrs) {
        let (status, body) = http_get(addr, "/metrics");
        assert!(status.contains("200"), "{status}");
        assert!(sample(&body, "sharedisk_commands_total") > 0.0);
        assert!(sample(&body, "sharedisk_barrier_seconds_count") > 0.0, "a write cost at least one barrier");
        assert!(body.contains("sharedisk_engine_cycle_requests_bucket"), "{body}");
        for p in &st.partitions {
            let owner = p.owner.as_deref().unwrap();
            let line = format!("sharedisk_partition_owner{{partition=\"{}\",server=\"{owner}\"}} 1", p.id);
            assert!(body.contains(&line), "{line} missing on {name}");
            let here = if owner == name { 1 } else { 0 };
            assert_eq!(
                sample(&body, &format!("sharedisk_partition_served{{partition=\"{}\"}}", p.id)),
                f64::from(here),
                "{name} p{}",
                p.id
            );
            if p.standby.as_deref() == Some(name.as_str()) {
                assert_eq!(sample(&body, &format!("sharedisk_standby_synced{{partition=\"{}\"}}", p.id)), 1.0);
            }
        }
        promtool_accepts(&body);
        let open = http_get_with(addr, "/metrics", "Accept: application/openmetrics-text; version=1.0.0\r\n").1;
        assert!(open.trim_end().ends_with("# EOF"), "OpenMetrics, asked for, ends with # EOF");
        assert!(open.contains("# TYPE sharedisk_commands counter") && body.contains("# TYPE sharedisk_commands_total counter"));
        assert_eq!(http_get(addr, "/health"), ("HTTP/1.1 200 OK".to_owned(), "ok\n".to_owned()));
        // Garbage instead of a request: refused, and the endpoint stays up.
        {
            use std::io::{Read, Write};
            let mut raw = std::net::TcpStream::connect(addr).unwrap();
            raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            raw.write_all(b"\x00\xffNOT HTTP\r\n\r\n").unwrap();
            let mut answer = Vec::new();
            let _ = raw.read_to_end(&mut answer);
            assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
        }
        assert!(http_get(addr, "/metrics").0.contains("200"));
    }
}

/// The lock manager's `--metrics`: active, sessions and partitions, and a
/// kill -9's fences and handover steps as histograms; a standby lock
/// manager says it is one.
#[test]
fn the_lock_manager_serves_metrics_with_each_handover_step() {
    let s = Scratch::new();
    let vol = s.volume("vol", "64MiB", 4);
    let v = vol.to_str().unwrap().to_owned();
    let spawn_lm = || {
        let mut lm = ChildGuard::spawn(&["lockmgr", "--volume", &v, "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
        let line = lm.wait_line(Duration::from_secs(20), |l| l.contains("metrics on http://"));
        let metrics = line.split("http://").nth(1).unwrap().trim_end_matches("/metrics").to_owned();
        (lm, metrics)
    };
    let (mut lm, metrics) = spawn_lm();
    let addr = lm.wait_lockmgr_ready(Duration::from_secs(20));
    let (mut standby_lm, standby_metrics) = spawn_lm();
    standby_lm.wait_lockmgr_standing_by(Duration::from_secs(20));
    let both = format!("{addr},{}", {
        let st = status_of(&addr).unwrap();
        st.lockmgrs.iter().find(|l| !l.active).unwrap().addr.clone()
    });
    let server = |name: &str| {
        let mut p = ChildGuard::spawn(&["server", "--volume", &v, "--lockmgr", &both, "--listen", "127.0.0.1:0", "--id", name]);
        p.wait_server_ready(Duration::from_secs(20));
        p
    };
    let (mut a, _b) = (server("a"), server("b"));
    wait_until(Duration::from_secs(20), "both servers own partitions", || {
        status_of(&addr).is_some_and(|st| st.servers.iter().filter(|s| s.partitions > 0).count() == 2)
    });
    // A rebalance may still be moving one: wait until the metrics say all four are owned.
    let mut body = String::new();
    wait_until(Duration::from_secs(20), "the metrics to show 4 owned partitions", || {
        body = http_get(&metrics, "/metrics").1;
        body.lines().any(|l| l == "sharedisk_lockmgr_partitions{state=\"owned\"} 4")
    });
    assert_eq!(sample(&body, "sharedisk_lockmgr_active"), 1.0);
    assert_eq!(sample(&body, "sharedisk_lockmgr_sessions"), 2.0);
    assert!(sample(&body, "sharedisk_lockmgr_persist_seconds_count") > 0.0);
    assert_eq!(sample(&http_get(&standby_metrics, "/metrics").1, "sharedisk_lockmgr_active"), 0.0);
    a.kill9();
    wait_until(Duration::from_secs(20), "a handover of a's partitions in the histograms", || {
        let body = http_get(&metrics, "/metrics").1;
        body.lines().any(|l| {
            l.starts_with("sharedisk_lockmgr_handover_seconds_count{")
                && l.contains("step=\"total\"")
                && l.contains("cause=\"connection_closed\"")
                && !l.ends_with(" 0")
        })
    });
    let body = http_get(&metrics, "/metrics").1;
    promtool_accepts(&body);
    promtool_accepts(&http_get(&standby_metrics, "/metrics").1);
    assert!(sample(&body, "sharedisk_lockmgr_fences_total") >= 1.0);
    assert!(sample(&body, "sharedisk_lockmgr_fence_seconds_count") >= 1.0);
    assert!(body.contains("step=\"fence\""), "{body}");
}

/// `--log-format json`: every line a lock manager or server logs is one
/// JSON object (timestamp, level, message) with the metrics' label names as
/// fields; the readiness lines still say where they serve (the harness
/// reads them as `up` does); warnings go to stderr, as JSON too.
#[test]
fn with_log_format_json_every_line_is_an_object_keyed_as_the_metrics() {
    let t = Duration::from_secs(20);
    let s = Scratch::new();
    let vol = s.volume("v", "64MiB", 4);
    let v = vol.to_str().unwrap();
    let object = |line: &str| -> serde_json::Value {
        let o: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(o["timestamp"].is_string() && o["level"].is_string() && o["message"].is_string(), "{line}");
        o
    };
    let mut lm = ChildGuard::spawn(&["lockmgr", "--volume", v, "--listen", "127.0.0.1:0", "--log-format", "json"]);
    let serving = object(&lm.wait_line(t, |l| object(l)["message"].as_str().unwrap().starts_with("lockmgr: serving ")));
    let lm_addr = sharedisk_testkit::readiness::lockmgr_addr(&serving.to_string()).expect("the readiness line, read from JSON");
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["addr"], lm_addr.as_str());
    assert_eq!(serving["term"], 1);

    let mut s1 = ChildGuard::spawn(&[
        "server",
        "--volume",
        v,
        "--lockmgr",
        &lm_addr,
        "--listen",
        "127.0.0.1:0",
        "--id",
        "s1",
        "--log-format",
        "json",
    ]);
    let ready = s1.wait_server_ready(t);
    let joined = object(&s1.wait_line(t, |l| object(l)["message"].as_str().unwrap().contains("joined;")));
    assert_eq!(joined["server"], "s1");
    let pong: String =
        redis::cmd("PING").query(&mut redis::Client::open(format!("redis://{ready}")).unwrap().get_connection().unwrap()).unwrap();
    assert_eq!(pong, "PONG");

    // A warning: a server whose lock manager does not answer says so on
    // stderr, with its name and the error as fields.
    let mut lonely = std::process::Command::new(bin())
        .args(["server", "--volume", v, "--lockmgr", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--id", "s2", "--log-format", "json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = lonely.stderr.take().unwrap();
    let _guard = Kill(lonely);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let warning = object(&rx.recv_timeout(t).expect("a warning on stderr"));
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["server"], "s2", "{warning}");
    assert!(warning["error"].as_str().is_some_and(|e| e.contains("127.0.0.1:1")), "{warning}");
}
