//! Standby lock managers as real processes: kill -9 and SIGSTOP of the
//! active one under client load, simultaneous starts, and the loss of all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::Commands;
use rustix::process::Signal;
use sharedisk_lockmgr::core::Status;
use sharedisk_testkit::cluster::{Cluster, key_in_partition, spawn_lockmgr, status_of};
use sharedisk_testkit::readiness::LOCKMGR_SERVING;

use crate::util::*;

const PARTITIONS: u32 = 8;
const T: Duration = Duration::from_secs(20);

/// Owner and fence token of every partition.
fn placement(st: &Status) -> BTreeMap<u32, (Option<String>, u64)> {
    st.partitions.iter().map(|p| (p.id, (p.owner.clone(), p.fence_token))).collect()
}

/// Until every one of the `n` servers heartbeats to the lock manager now
/// active (their sessions moved there).
fn wait_servers_moved(c: &Cluster, n: usize) {
    wait_until(T, &format!("{n} servers registered with the new lock manager"), || {
        c.try_status().is_some_and(|st| st.servers.iter().filter(|s| s.alive && s.last_heartbeat_ms_ago < 300).count() == n)
    });
}

/// Writes to every partition through its owner directly (no redirects
/// followed, no retries): any error reply or failed connection counts.
struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(c: &Cluster) -> Load {
        let (stop, ops) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let owners = placement(&c.status());
        let threads = (0..PARTITIONS)
            .map(|p| {
                let owner = owners[&p].0.clone().expect("settled");
                let addr = c.servers.iter().find(|s| s.name == owner).unwrap().addr.clone();
                let (stop, ops) = (stop.clone(), ops.clone());
                std::thread::spawn(move || {
                    let mut errors = Vec::new();
                    let key = key_in_partition("ha", p, PARTITIONS);
                    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
                    let mut con = client.get_connection_with_timeout(Duration::from_secs(5)).unwrap();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        i += 1;
                        match con.set::<_, _, ()>(&key, i) {
                            Ok(()) => {
                                ops.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => errors.push(format!("p{p} SET #{i}: {e}")),
                        }
                    }
                    match con.get::<_, u64>(&key) {
                        Ok(v) if v == i || errors.iter().any(|e| e.contains(&format!("#{i}:"))) => {}
                        other => errors.push(format!("p{p}: read back {other:?}, last written {i}")),
                    }
                    errors
                })
            })
            .collect();
        Load { stop, ops, threads }
    }

    /// Wait until `n` more writes were acknowledged.
    fn wait_more(&self, n: u64) {
        let target = self.ops.load(Ordering::Relaxed) + n;
        wait_until(T, &format!("{n} more acknowledged writes"), || self.ops.load(Ordering::Relaxed) >= target);
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Release);
        std::mem::take(&mut self.threads).into_iter().flat_map(|t| t.join().unwrap()).collect()
    }
}

impl Drop for Load {
    /// A test that fails half-way must not leave its writers running
    /// against the next test's cluster.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

#[test]
fn lock_managers_started_at_the_same_instant_elect_exactly_one() {
    let scratch = Scratch::new();
    let vol = scratch.volume("vol", "64MiB", PARTITIONS);
    let mut lms: Vec<ChildGuard> = (0..3).map(|_| spawn_lockmgr(&vol, "127.0.0.1:0")).collect();
    let addrs = lms.iter_mut().map(|l| l.wait_lockmgr_standing_by(T)).collect::<Vec<_>>().join(",");
    let active = |st: &Status| st.lockmgrs.iter().filter(|l| l.active).map(|l| (l.seat, l.term)).collect::<Vec<_>>();
    wait_until(T, "a lock manager active", || status_of(&addrs).is_some_and(|st| active(&st).len() == 1));
    let first = active(&status_of(&addrs).unwrap());
    // Over several lease periods the same one stays active, alone, and only
    // it ever said it serves.
    let mut looks = 0;
    let until = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < until {
        let st = status_of(&addrs).expect("an active lock manager answers");
        assert_eq!(active(&st), first, "exactly one active lock manager, in one term: {:?}", st.lockmgrs);
        assert_eq!(st.lockmgrs.len(), 3, "three seats held: {:?}", st.lockmgrs);
        looks += 1;
    }
    assert!(looks > 3, "the status was looked at {looks} times only");
    let serving: usize = lms
        .iter_mut()
        .map(|l| std::iter::from_fn(|| l.next_line(Duration::from_millis(50))).filter(|x| x.starts_with(LOCKMGR_SERVING)).count())
        .sum();
    assert_eq!(serving, 1, "one lock manager printed that it serves");
}

#[test]
fn kill9_of_the_active_lock_manager_under_load_costs_clients_nothing() {
    let mut c = Cluster::start_ha(3, PARTITIONS, 2);
    let before = placement(&c.status());
    let load = Load::start(&c);
    load.wait_more(200);
    c.lockmgr.kill9();
    let (standby, _) = &mut c.standby_lockmgrs[0];
    standby.wait_line(T, |l| l.starts_with(LOCKMGR_SERVING));
    // Every server finds the new one and moves its session there.
    wait_servers_moved(&c, 3);
    load.wait_more(2000);
    let errors = load.finish();
    assert!(errors.is_empty(), "clients saw errors across the lock-manager takeover: {errors:?}");
    // No partition changed hands or token: the servers kept serving throughout.
    let st = c.status();
    assert_eq!(placement(&st), before, "placement and fence tokens unchanged");
    assert!(st.lockmgrs.iter().any(|l| l.active && l.term == 2), "the standby is active in term 2: {:?}", st.lockmgrs);
}

#[test]
fn a_paused_active_lock_manager_is_deposed_and_writes_nothing_when_it_wakes() {
    let mut c = Cluster::start_ha(2, PARTITIONS, 2);
    let before = placement(&c.status());
    let old_pid = c.lockmgr.pid();
    let old_seat = c.status().lockmgrs.iter().find(|l| l.pid == old_pid).expect("its seat").seat;
    let load = Load::start(&c);
    load.wait_more(200);
    c.lockmgr.signal(Signal::STOP);
    c.standby_lockmgrs[0].0.wait_line(T, |l| l.starts_with(LOCKMGR_SERVING));
    wait_servers_moved(&c, 2);
    load.wait_more(500);
    // What the old one could still write: the registrant slots (fences),
    // its seat (map copies, seat release), the owner words (tokens).
    let g = geometry(&c.volume);
    let region = |c: &Cluster, at: u64, len: u64| std::fs::read(&c.volume).unwrap()[at as usize..(at + len) as usize].to_vec();
    let slots_at = g.reservation_offset + sharedisk_storage::layout::RES_HEADER_BYTES;
    let slots_len = g.reservation_bytes() - sharedisk_storage::layout::RES_HEADER_BYTES;
    let seat_len = 4096 + 2 * g.lockmgr_slot_bytes;
    let (slots, seat) = (region(&c, slots_at, slots_len), region(&c, g.lockmgr_seat(old_seat), seat_len));
    c.lockmgr.signal(Signal::CONT);
    let st = c.lockmgr.wait_exit(T);
    assert_eq!(st.code(), Some(1), "a deposed lock manager stops with exit code 1 (not a panic, not success): {st}");
    load.wait_more(500);
    let errors = load.finish();
    assert!(region(&c, slots_at, slots_len) == slots, "the deposed lock manager fenced or released a registrant");
    assert!(region(&c, g.lockmgr_seat(old_seat), seat_len) == seat, "the deposed lock manager wrote into its seat");
    assert_eq!(placement(&c.status()), before, "placement and fence tokens unchanged");
    assert!(errors.is_empty(), "clients saw errors across the pause and the takeover: {errors:?}");
}

#[test]
fn every_lock_manager_killed_and_one_restarted_keeps_the_map_and_tokens() {
    let mut c = Cluster::start_ha(2, PARTITIONS, 2);
    let key = key_in_partition("all", 3, PARTITIONS);
    let owner = c.owner_of(3).unwrap();
    let addr = c.server(&owner).addr.clone();
    let mut con = redis::Client::open(format!("redis://{addr}/")).unwrap().get_connection_with_timeout(Duration::from_secs(5)).unwrap();
    let _: () = con.set(&key, "kept").unwrap();
    let before = placement(&c.status());
    c.lockmgr.kill9();
    c.standby_lockmgrs[0].0.wait_line(T, |l| l.starts_with(LOCKMGR_SERVING));
    c.standby_lockmgrs[0].0.kill9();
    // Started again on the first one's address: the map comes back from the
    // volume (the newest copy of the highest term), the servers reclaim.
    let first = c.lockmgr_addr.split(',').next().unwrap().to_owned();
    c.lockmgr = spawn_lockmgr(&c.volume, &first);
    c.lockmgr.wait_lockmgr_ready(T);
    c.settle();
    let st = c.status();
    assert_eq!(placement(&st), before, "owners and fence tokens survive the loss of every lock manager");
    assert!(st.lockmgrs.iter().any(|l| l.active && l.term == 3), "a third term: {:?}", st.lockmgrs);
    assert_eq!(con.get::<_, String>(&key).unwrap(), "kept");
}

#[test]
fn sigterm_of_the_active_lock_manager_hands_over_at_once() {
    // A planned stop (a rolling upgrade): the seat is given back after the
    // lock manager stopped acting, so the standby need not wait a lease.
    let mut c = Cluster::start_ha(2, PARTITIONS, 2);
    let before = placement(&c.status());
    let load = Load::start(&c);
    load.wait_more(200);
    c.lockmgr.signal(Signal::TERM);
    let st = c.lockmgr.wait_exit(T);
    assert!(st.success(), "a stopped lock manager exits 0: {st}");
    c.standby_lockmgrs[0].0.wait_line(T, |l| l.starts_with(LOCKMGR_SERVING));
    wait_servers_moved(&c, 2);
    load.wait_more(1000);
    let errors = load.finish();
    assert!(errors.is_empty(), "clients saw errors across a planned lock-manager stop: {errors:?}");
    let st = c.status();
    assert_eq!(placement(&st), before, "placement and fence tokens unchanged");
    assert_eq!(st.lockmgrs.len(), 1, "the stopped one gave its seat back (not merely died): {:?}", st.lockmgrs);
}
