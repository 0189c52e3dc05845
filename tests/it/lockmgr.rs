//! The lock manager as a real process, with real holder processes: kill -9
//! and SIGSTOP of a lease holder, admin move/drain/rebalance.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rustix::process::Signal;

use crate::util::*;

const T: Duration = Duration::from_secs(20);

fn start_lockmgr(vol: &Path) -> (ChildGuard, String) {
    let mut lm = ChildGuard::spawn(&["lockmgr", "--volume", vol.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let addr = lm.wait_lockmgr_ready(T);
    (lm, addr)
}

fn holder(vol: &Path, addr: &str, id: &str, key: u64) -> ChildGuard {
    let mut h = ChildGuard::spawn(&[
        "debug",
        "holder",
        "--volume",
        vol.to_str().unwrap(),
        "--lockmgr",
        addr,
        "--id",
        id,
        "--key",
        &format!("{key:#x}"),
    ]);
    h.wait_line(T, |l| l.starts_with("registered"));
    h
}

/// Read `granted P TOKEN` lines until `n` grants were seen.
fn grants(h: &mut ChildGuard, n: usize) -> BTreeMap<u32, u64> {
    let mut m = BTreeMap::new();
    while m.len() < n {
        let l = h.wait_line(T, |l| l.starts_with("granted") || l.starts_with("claim") || l == "expired");
        let w: Vec<&str> = l.split(' ').collect();
        assert_eq!(w[0], "granted", "holder {}: {l}", h.pid());
        m.insert(w[1].parse().unwrap(), w[2].parse().unwrap());
    }
    m
}

fn status(addr: &str) -> serde_json::Value {
    serde_json::from_str(&assert_success(&run(&["admin", "--lockmgr", addr, "status", "--json"]))).unwrap()
}

fn owners(addr: &str) -> Vec<Option<String>> {
    status(addr)["partitions"].as_array().unwrap().iter().map(|p| p["owner"].as_str().map(str::to_owned)).collect()
}

#[test]
fn kill9_of_a_holder_fences_its_key_and_reassigns_with_higher_tokens() {
    let s = Scratch::new();
    let vol = s.volume("v", "32MiB", 4);
    let v = vol.to_str().unwrap();
    let (_lm, addr) = start_lockmgr(&vol);
    let mut a = holder(&vol, &addr, "a", 0xA);
    let first = grants(&mut a, 4);
    let mut b = holder(&vol, &addr, "b", 0xB);
    assert!(assert_success(&run(&["admin", "--lockmgr", &addr, "rebalance"])).contains("2 move"));
    let moved = grants(&mut b, 2);
    for (p, t) in &moved {
        assert!(*t > first[p]);
    }
    assert!(assert_success(&run(&["volume", "keys", v])).contains("0x000000000000000a"));
    a.kill9();
    let taken = grants(&mut b, 2);
    for (p, t) in &taken {
        assert!(!moved.contains_key(p));
        assert!(*t > first[p], "p{p}: token {t} not above {}", first[p]);
    }
    assert!(!assert_success(&run(&["volume", "keys", v])).contains("0x000000000000000a"), "a's key must be preempted");
    assert!(owners(&addr).iter().all(|o| o.as_deref() == Some("b")));
    let st = status(&addr);
    let servers = st["servers"].as_array().unwrap();
    let alive: Vec<(&str, bool)> = servers.iter().map(|s| (s["id"].as_str().unwrap(), s["alive"].as_bool().unwrap())).collect();
    assert_eq!(alive, vec![("b", true), ("a", false)], "the dead server is shown, not alive");
    for field in ["id", "addr", "pid", "alive", "last_heartbeat_ms_ago"] {
        assert!(servers[0].get(field).is_some(), "status lacks servers[].{field}");
    }
    for field in ["id", "owner", "fence_token", "slots", "state"] {
        assert!(st["partitions"][0].get(field).is_some(), "status lacks partitions[].{field}");
    }
}

#[test]
fn sigstopped_holder_loses_its_leases_and_learns_it_on_sigcont() {
    let s = Scratch::new();
    let vol = s.volume("v", "32MiB", 2);
    let (_lm, addr) = start_lockmgr(&vol);
    let mut a = holder(&vol, &addr, "a", 0xA);
    let first = grants(&mut a, 2);
    let mut b = holder(&vol, &addr, "b", 0xB);
    a.signal(Signal::STOP);
    wait_until(T, "a stopped", || a.state() == Some('T'));
    let taken = grants(&mut b, 2);
    for (p, t) in &taken {
        assert!(*t > first[p]);
    }
    assert!(!assert_success(&run(&["volume", "keys", vol.to_str().unwrap()])).contains("0x000000000000000a"));
    a.signal(Signal::CONT);
    a.wait_line(T, |l| l == "expired");
    assert_eq!(a.wait_exit(T).code(), Some(4));
}

#[test]
fn admin_move_drain_rebalance_and_bad_requests() {
    let s = Scratch::new();
    let vol = s.volume("v", "32MiB", 4);
    let (_lm, addr) = start_lockmgr(&vol);
    let mut a = holder(&vol, &addr, "a", 0xA);
    grants(&mut a, 4);
    let mut b = holder(&vol, &addr, "b", 0xB);
    assert_success(&run(&["admin", "--lockmgr", &addr, "move", "1", "b"]));
    a.wait_line(T, |l| l == "released 1");
    assert_eq!(grants(&mut b, 1).keys().copied().collect::<Vec<_>>(), vec![1]);
    assert_eq!(owners(&addr)[1].as_deref(), Some("b"));
    assert_success(&run(&["admin", "--lockmgr", &addr, "drain", "a"]));
    grants(&mut b, 3);
    assert!(owners(&addr).iter().all(|o| o.as_deref() == Some("b")));
    let text = assert_success(&run(&["admin", "--lockmgr", &addr, "status"]));
    assert!(text.contains("draining"), "{text}");
    // Bad requests: clear errors, non-zero exit, nothing changed.
    let before = owners(&addr);
    assert_clean_failure(&run(&["admin", "--lockmgr", &addr, "move", "99", "b"]), "UnknownPartition");
    assert_clean_failure(&run(&["admin", "--lockmgr", &addr, "move", "0", "nosuch"]), "UnknownServer");
    assert_clean_failure(&run(&["admin", "--lockmgr", &addr, "drain", "nosuch"]), "UnknownServer");
    assert_eq!(run(&["admin", "--lockmgr", &addr, "move", "x", "b"]).status.code(), Some(2));
    assert_eq!(owners(&addr), before);
    assert_clean_failure(&run(&["admin", "--lockmgr", "127.0.0.1:1", "status"]), "connection refused");
}

#[test]
fn lockmgr_rejects_bad_arguments() {
    let s = Scratch::new();
    let vol = s.volume("v", "32MiB", 2);
    let v = vol.to_str().unwrap();
    assert_clean_failure(&run(&["lockmgr", "--volume", s.path("missing").to_str().unwrap()]), "no such file");
    assert_eq!(run(&["lockmgr", "--volume", v, "--base", "fast"]).status.code(), Some(2));
    assert_clean_failure(&run(&["lockmgr", "--volume", v, "--base", "1ms"]), "heartbeat interval");
    assert_clean_failure(&run(&["lockmgr", "--volume", v, "--listen", "not-an-address"]), "cannot listen");
}

fn start_lockmgr_at(vol: &Path, addr: &str) -> ChildGuard {
    let mut lm = ChildGuard::spawn(&["lockmgr", "--volume", vol.to_str().unwrap(), "--listen", addr]);
    lm.wait_lockmgr_ready(T);
    lm
}

fn tokens(addr: &str) -> Vec<u64> {
    status(addr)["partitions"].as_array().unwrap().iter().map(|p| p["fence_token"].as_u64().unwrap()).collect()
}

fn states(addr: &str) -> Vec<String> {
    status(addr)["partitions"].as_array().unwrap().iter().map(|p| p["state"].as_str().unwrap().to_owned()).collect()
}

/// Read `reclaimed P TOKEN` lines until `n` were seen; a fresh grant instead
/// would mean the partition was granted twice.
fn reclaims(h: &mut ChildGuard, n: usize) -> BTreeMap<u32, u64> {
    let mut m = BTreeMap::new();
    while m.len() < n {
        let l = h.wait_line(T, |l| l.starts_with("reclaimed") || l.starts_with("granted") || l == "expired");
        let w: Vec<&str> = l.split(' ').collect();
        assert_eq!(w[0], "reclaimed", "after a lock-manager restart a holder must reclaim, not be granted anew: {l}");
        m.insert(w[1].parse().unwrap(), w[2].parse().unwrap());
    }
    m
}

#[test]
fn lockmgr_kill9_and_restart_keeps_the_map_and_tokens() {
    let s = Scratch::new();
    let vol = s.volume("v", "32MiB", 4);
    let (mut lm, addr) = start_lockmgr(&vol);
    let mut a = holder(&vol, &addr, "a", 0xA);
    let mut first = grants(&mut a, 4);
    let mut b = holder(&vol, &addr, "b", 0xB);
    assert_success(&run(&["admin", "--lockmgr", &addr, "rebalance"]));
    let moved = grants(&mut b, 2);
    for p in moved.keys() {
        first.remove(p);
    }
    let owners_before = owners(&addr);
    let tokens_before = tokens(&addr);
    lm.kill9();
    a.wait_line(T, |l| l == "disconnected");
    b.wait_line(T, |l| l == "disconnected");
    let lm2 = start_lockmgr_at(&vol, &addr);
    assert_eq!(reclaims(&mut a, 2), first);
    assert_eq!(reclaims(&mut b, 2), moved);
    assert!(states(&addr).iter().all(|s| s == "owned"), "{:?}", states(&addr));
    assert_eq!(owners(&addr), owners_before);
    assert_eq!(tokens(&addr), tokens_before, "tokens must survive a restart unchanged");
    // A second lock manager on the same volume stands by; the first stays active.
    let mut second = ChildGuard::spawn(&["lockmgr", "--volume", vol.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let second_addr = second.wait_lockmgr_standing_by(T);
    let both = format!("{addr},{second_addr}");
    wait_until(T, "the second lock manager's seat shows", || {
        let st: sharedisk_lockmgr::core::Status =
            serde_json::from_str(&assert_success(&run(&["admin", "--lockmgr", &both, "status", "--json"]))).unwrap();
        let roles: Vec<(u32, bool)> = st.lockmgrs.iter().filter(|l| l.alive).map(|l| (l.pid, l.active)).collect();
        roles.len() == 2 && roles.contains(&(lm2.pid(), true)) && roles.contains(&(second.pid(), false))
    });
    assert_eq!(tokens(&addr), tokens_before);
}

#[test]
fn lockmgr_restart_fences_a_holder_that_does_not_return() {
    let s = Scratch::new();
    let vol = s.volume("v", "32MiB", 2);
    let (mut lm, addr) = start_lockmgr(&vol);
    let mut a = holder(&vol, &addr, "a", 0xA);
    let first = grants(&mut a, 2);
    let mut b = holder(&vol, &addr, "b", 0xB);
    assert_success(&run(&["admin", "--lockmgr", &addr, "move", "1", "b"]));
    let b_first = grants(&mut b, 1);
    lm.kill9();
    a.kill9();
    b.wait_line(T, |l| l == "disconnected");
    let _lm2 = start_lockmgr_at(&vol, &addr);
    assert_eq!(reclaims(&mut b, 1), b_first);
    // a never comes back: after the restart grace its key is fenced and p0
    // goes to b with a higher token.
    let got = grants(&mut b, 1);
    assert!(got[&0] > first[&0], "{got:?} vs {first:?}");
    assert!(!assert_success(&run(&["volume", "keys", vol.to_str().unwrap()])).contains("0x000000000000000a"));
    assert!(owners(&addr).iter().all(|o| o.as_deref() == Some("b")));
}

#[test]
fn lockmgr_refuses_to_start_on_a_damaged_map() {
    let s = Scratch::new();
    let vol = s.volume("v", "32MiB", 2);
    let (mut lm, addr) = start_lockmgr(&vol);
    let mut a = holder(&vol, &addr, "a", 0xA);
    grants(&mut a, 2); // the map was persisted before these grants
    lm.kill9();
    a.kill9();
    // Only one copy was ever written (seat 0, slot 0); damage it.
    let g = geometry(&vol);
    flip(&vol, g.lockmgr_slot(0, 0) + 64 + 1, 0xff);
    let o = run(&["lockmgr", "--volume", vol.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert_clean_failure(&o, "lock-manager area");
    let o = run(&["volume", "check", vol.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("lock-manager area"), "{}", stdout(&o));
}

#[test]
fn a_damaged_lock_manager_lease_word_is_a_clear_error() {
    let s = Scratch::new();
    let vol = s.volume("v", "32MiB", 2);
    let (mut lm, _) = start_lockmgr(&vol);
    lm.kill9();
    // The seat byte of the lease word (bits 32..40) names seat 200: no such seat.
    let g = geometry(&vol);
    flip(&vol, g.lockmgr_lease() + 4, 0xc8 ^ 0x01);
    let o = run(&["lockmgr", "--volume", vol.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert_clean_failure(&o, "lock-manager lease word");
    let o = run(&["volume", "check", vol.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("lock-manager lease word"), "{}", stdout(&o));
    assert_clean_failure(&run(&["volume", "inspect", vol.to_str().unwrap()]), "lock-manager lease word");
}
