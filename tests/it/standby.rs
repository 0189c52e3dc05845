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
    let mut c = Cluster::start(3, PARTITIONS);
    c.wait_standbys_synced(Duration::from_secs(30));
    // An owner and a server that follows some of its partitions: the
    // standby falls behind on them while it is paused.
    let st = c.status();
    let p0 = st.partitions.iter().find(|p| p.owner.is_some() && p.standby.is_some()).expect("a partition with a standby");
    let (owner, standby) = (p0.owner.clone().unwrap(), p0.standby.clone().unwrap());
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
    let owner = c.owner_of(p0.id).expect("owned");
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
