//! A real cluster for tests and benchmarks: a lock manager and N servers on
//! 127.0.0.1 ephemeral ports, every process behind a [`ChildGuard`]. Harness
//! failures (a process that does not come up, a cluster that does not
//! settle) panic with what was seen.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sharedisk_lockmgr::core::Status;

use crate::process::*;

#[derive(Debug)]
pub struct Server {
    pub name: String,
    pub addr: String,
    pub proc: ChildGuard,
}

/// Fields drop in order: servers first, then the lock managers, then the files.
#[derive(Debug)]
pub struct Cluster {
    pub servers: Vec<Server>,
    /// The lock manager active at the start.
    pub lockmgr: ChildGuard,
    /// What servers and `admin` are given: every lock manager's address,
    /// comma-separated (one, unless started with standbys).
    pub lockmgr_addr: String,
    /// Standby lock managers and their addresses (`start_ha`).
    pub standby_lockmgrs: Vec<(ChildGuard, String)>,
    pub volume: PathBuf,
    pub scratch: Scratch,
    /// Extra flags every server of this cluster starts with.
    pub server_args: Vec<String>,
}

impl Cluster {
    /// A fresh volume (64 MiB, 64 KiB segments), a lock manager, and `n`
    /// servers, settled and balanced.
    pub fn start(n: usize, partitions: u32) -> Cluster {
        let scratch = Scratch::new();
        let volume = scratch.volume("vol", "64MiB", partitions);
        Cluster::start_on(scratch, volume, n)
    }

    /// A lock manager and `n` servers (`s1`…) on the volume at `volume`
    /// (inside `scratch`, which lives as long as the cluster), settled.
    pub fn start_on(scratch: Scratch, volume: PathBuf, n: usize) -> Cluster {
        Cluster::start_with(scratch, volume, n, &[], Duration::from_secs(30))
    }

    /// `start_on`, every server started with `server_args`, settled within `patience`.
    pub fn start_with(scratch: Scratch, volume: PathBuf, n: usize, server_args: &[&str], patience: Duration) -> Cluster {
        Cluster::start_full(scratch, volume, n, 1, server_args, patience)
    }

    /// A fresh volume, `lockmgrs` lock managers (the first active, the
    /// others standing by) and `n` servers that know them all, settled.
    pub fn start_ha(n: usize, partitions: u32, lockmgrs: usize) -> Cluster {
        let scratch = Scratch::new();
        let volume = scratch.volume("vol", "64MiB", partitions);
        Cluster::start_full(scratch, volume, n, lockmgrs, &[], Duration::from_secs(30))
    }

    /// `start_with`, with `lockmgrs` lock managers (the first active).
    pub fn start_full(scratch: Scratch, volume: PathBuf, n: usize, lockmgrs: usize, server_args: &[&str], patience: Duration) -> Cluster {
        let mut lockmgr = spawn_lockmgr(&volume, "127.0.0.1:0");
        let first = lockmgr.wait_lockmgr_ready(Duration::from_secs(20));
        let standby_lockmgrs: Vec<(ChildGuard, String)> = (1..lockmgrs)
            .map(|_| {
                let mut lm = spawn_lockmgr(&volume, "127.0.0.1:0");
                let addr = lm.wait_lockmgr_standing_by(Duration::from_secs(20));
                (lm, addr)
            })
            .collect();
        let lockmgr_addr = std::iter::once(first).chain(standby_lockmgrs.iter().map(|(_, a)| a.clone())).collect::<Vec<_>>().join(",");
        let server_args = server_args.iter().map(|a| a.to_string()).collect();
        let mut c = Cluster { servers: Vec::new(), lockmgr, lockmgr_addr, standby_lockmgrs, volume, scratch, server_args };
        for i in 1..=n {
            let s = c.spawn_server(&format!("s{i}"));
            c.servers.push(s);
        }
        c.settle_within(patience);
        c
    }

    /// Every lock manager's guard, in the order of `lockmgr_addr`.
    fn lockmgr_guards(&mut self) -> Vec<&mut ChildGuard> {
        std::iter::once(&mut self.lockmgr).chain(self.standby_lockmgrs.iter_mut().map(|(g, _)| g)).collect()
    }

    /// Signal the active lock manager with `signal`, wait until another one
    /// says it serves; the index of the signalled one among
    /// `lockmgr_guards`, and the time from the signal to that line.
    fn displace_active_lockmgr(&mut self, signal: rustix::process::Signal) -> (usize, Duration) {
        let st = self.status();
        let active = st.lockmgrs.iter().find(|l| l.active && l.alive).expect("an active lock manager").pid;
        let mut guards = self.lockmgr_guards();
        let i = guards.iter().position(|g| g.pid() == active).expect("the active lock manager is one of ours");
        let sent = Instant::now();
        if signal == rustix::process::Signal::KILL {
            guards[i].kill9();
        } else {
            guards[i].signal(signal);
        }
        let deadline = sent + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "no standby took over within 20 s");
            let served = guards.iter_mut().enumerate().any(|(j, g)| {
                j != i && g.next_line(Duration::from_millis(1)).is_some_and(|l| l.starts_with(crate::readiness::LOCKMGR_SERVING))
            });
            if served {
                return (i, sent.elapsed());
            }
        }
    }

    /// Start lock manager `i` (of `lockmgr_guards`) again on its address,
    /// as a standby.
    fn restart_lockmgr_standing_by(&mut self, i: usize) {
        let addr = self.lockmgr_addr.split(',').nth(i).expect("an address per lock manager").to_owned();
        let lm = spawn_lockmgr(&self.volume, &addr);
        let guard = self.lockmgr_guards().swap_remove(i);
        *guard = lm;
        guard.wait_lockmgr_standing_by(Duration::from_secs(20));
    }

    /// kill -9 the active lock manager, wait until another one says it
    /// serves, and start the killed one again on its address (a standby
    /// now). Returns the time from the kill to that line.
    pub fn kill9_active_lockmgr(&mut self) -> Duration {
        let (i, took) = self.displace_active_lockmgr(rustix::process::Signal::KILL);
        self.restart_lockmgr_standing_by(i);
        took
    }

    /// SIGSTOP the active lock manager for `pause` (past its lease: a
    /// standby takes over meanwhile), SIGCONT it, check that it stops by
    /// itself (deposed, exit code 1), and start it again as a standby.
    pub fn pause_active_lockmgr(&mut self, pause: Duration) {
        let (i, took) = self.displace_active_lockmgr(rustix::process::Signal::STOP);
        // The pause is the fault's length, not a wait for anything.
        std::thread::sleep(pause.saturating_sub(took));
        let paused = &mut self.lockmgr_guards().swap_remove(i);
        paused.signal(rustix::process::Signal::CONT);
        let st = paused.wait_exit(Duration::from_secs(20));
        assert_eq!(st.code(), Some(1), "a deposed lock manager stops with exit code 1: {st}");
        self.restart_lockmgr_standing_by(i);
    }

    /// kill -9 every lock manager, wait `outage`, start them all again on
    /// their addresses; returns once one of them is active.
    pub fn kill9_all_lockmgrs(&mut self, outage: Duration) {
        for g in self.lockmgr_guards() {
            g.kill9();
        }
        std::thread::sleep(outage);
        for i in 0..self.lockmgr_guards().len() {
            self.restart_lockmgr_standing_by(i);
        }
        wait_until(Duration::from_secs(20), "a lock manager active again", || {
            self.try_status().is_some_and(|st| st.lockmgrs.iter().any(|l| l.active && l.alive))
        });
    }

    /// Start server `name` again (after a kill), in its place in `servers`.
    pub fn restart_server(&mut self, name: &str) {
        let s = self.spawn_server(name);
        match self.servers.iter_mut().find(|x| x.name == name) {
            Some(slot) => *slot = s,
            None => self.servers.push(s),
        }
    }

    pub fn spawn_server(&self, name: &str) -> Server {
        self.spawn_server_with(name, &[])
    }

    pub fn spawn_server_with(&self, name: &str, extra: &[&str]) -> Server {
        let mut args = vec![
            "server",
            "--volume",
            self.volume.to_str().unwrap(),
            "--lockmgr",
            &self.lockmgr_addr,
            "--listen",
            "127.0.0.1:0",
            "--id",
            name,
        ];
        args.extend(self.server_args.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let mut proc = ChildGuard::spawn(&args);
        let addr = proc.wait_server_ready(Duration::from_secs(20));
        Server { name: name.to_owned(), addr, proc }
    }

    pub fn server(&mut self, name: &str) -> &mut Server {
        self.servers.iter_mut().find(|s| s.name == name).unwrap()
    }

    pub fn status(&self) -> Status {
        let o = assert_success(&run(&["admin", "--lockmgr", &self.lockmgr_addr, "status", "--json"]));
        serde_json::from_str(&o).expect("status json")
    }

    /// `status`, or None while no lock manager answers (during a takeover).
    pub fn try_status(&self) -> Option<Status> {
        status_of(&self.lockmgr_addr)
    }

    pub fn admin(&self, args: &[&str]) -> String {
        let mut a = vec!["admin", "--lockmgr", &self.lockmgr_addr];
        a.extend_from_slice(args);
        assert_success(&run(&a))
    }

    /// Wait until every server of `servers` is registered and alive, every
    /// partition is owned by a live server and loads differ by at most one
    /// (asking for rebalances while none is in flight).
    ///
    /// A server prints its readiness line before it registers with the lock
    /// manager, so "balanced among those registered so far" is not settled:
    /// the late server's first act is a rebalance, which would move
    /// partitions under the test that just looked their owners up.
    pub fn settle(&self) {
        self.settle_within(Duration::from_secs(30))
    }

    /// `settle`, for as long as `patience` (claims of a loaded volume take a while).
    pub fn settle_within(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        loop {
            let st = self.status();
            let alive: Vec<_> = st.servers.iter().filter(|s| s.alive).collect();
            let all_registered = self.servers.iter().all(|s| alive.iter().any(|a| a.id == s.name));
            let all_owned = st.partitions.iter().all(|p| p.state == "owned");
            let (min, max) = (alive.iter().map(|s| s.partitions).min().unwrap_or(0), alive.iter().map(|s| s.partitions).max().unwrap_or(0));
            if all_registered && all_owned && max - min <= 1 {
                return;
            }
            if all_registered && all_owned {
                self.admin(&["rebalance"]);
            }
            assert!(Instant::now() < deadline, "cluster did not settle: {st:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until every partition is owned by another server than `server`
    /// (after it was killed, paused or drained), at most 10 s.
    pub fn wait_reassigned_from(&self, server: &str) {
        wait_until(Duration::from_secs(10), &format!("{server}'s partitions reassigned"), || {
            self.status().partitions.iter().all(|p| p.state == "owned" && p.owner.as_deref() != Some(server))
        });
    }

    /// The server (name) owning a partition, per the lock manager.
    pub fn owner_of(&self, partition: u32) -> Option<String> {
        let st = self.status();
        st.partitions.iter().find(|p| p.id == partition && p.state == "owned").and_then(|p| p.owner.clone())
    }

    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| format!("redis://{}/", s.addr)).collect()
    }

    /// Every partition's hot standby, per the servers' `INFO replication`:
    /// the partitions some server follows with its index matching the
    /// owner's published head.
    pub fn synced_standbys(&self) -> std::collections::BTreeSet<u32> {
        let mut synced = std::collections::BTreeSet::new();
        for s in &self.servers {
            let info = redis::Client::open(format!("redis://{}/", s.addr))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
                .and_then(|mut c| redis::cmd("INFO").arg("replication").query::<String>(&mut c));
            let Ok(text) = info else { continue };
            for line in text.lines() {
                let Some((name, fields)) = line.split_once(':') else { continue };
                let Some(p) = name.strip_prefix("sharedisk_standby_p").and_then(|p| p.parse().ok()) else { continue };
                if fields.split(',').any(|f| f == "synced=1") {
                    synced.insert(p);
                }
            }
        }
        synced
    }

    /// Wait until every partition that has a standby in the lock manager's
    /// status is followed, synced, by its server.
    pub fn wait_standbys_synced(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        loop {
            let want: std::collections::BTreeSet<u32> =
                self.status().partitions.iter().filter(|p| p.standby.is_some()).map(|p| p.id).collect();
            let synced = self.synced_standbys();
            if !want.is_empty() && want.is_subset(&synced) {
                return;
            }
            assert!(Instant::now() < deadline, "standbys not synced: want {want:?}, synced {synced:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addrs(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.addr.clone()).collect()
    }
}

/// The partition of a hash slot, as the lock manager splits slots.
/// `sharedisk lockmgr` on `volume`, listening on `listen`.
pub fn spawn_lockmgr(volume: &std::path::Path, listen: &str) -> ChildGuard {
    ChildGuard::spawn(&["lockmgr", "--volume", volume.to_str().expect("a UTF-8 path"), "--listen", listen])
}

/// `admin status` of the lock managers at `addrs` (comma-separated), or
/// None while none of them answers as the active one.
pub fn status_of(addrs: &str) -> Option<Status> {
    let o = run(&["admin", "--lockmgr", addrs, "status", "--json"]);
    o.status.success().then(|| serde_json::from_slice(&o.stdout).ok()).flatten()
}

pub fn partition_of_slot(slot: u16, partitions: u32) -> u32 {
    (0..partitions)
        .find(|p| {
            let [a, b] = sharedisk_lockmgr::core::slot_range(*p, partitions);
            (a..=b).contains(&u32::from(slot))
        })
        .unwrap()
}

/// CRC16/XMODEM hash slot with hash tags, independent of the server's code.
pub fn slot(key: &str) -> u16 {
    crate::router::key_slot(key.as_bytes())
}

/// A key (with prefix) whose slot falls in `partition`.
pub fn key_in_partition(prefix: &str, partition: u32, partitions: u32) -> String {
    (0..).map(|i| format!("{prefix}{i}")).find(|k| partition_of_slot(slot(k), partitions) == partition).unwrap()
}

/// Send raw bytes on a fresh connection and read until `want` replies or EOF/timeout.
pub fn raw(addr: &str, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}
