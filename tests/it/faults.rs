//! The fault harness: a real cluster on a prefilled volume, with hot
//! standbys, under concurrent client load, with a seeded schedule of kill
//! -9s, SIGSTOP/SIGCONT past the lease, short pauses of a partition's
//! standby, kill -9 of the active lock manager (its standby takes over),
//! SIGSTOP of it past its lease (it must stop, deposed, on SIGCONT), kill -9
//! of every lock manager and their restart, server restarts, admin moves
//! (to a partition's standby and elsewhere), drains and rebalances; every
//! operation's invocation and completion is recorded and the history is
//! checked for linearizability per key (`sharedisk_testkit::history`), and
//! the prefilled keys must all read back after healing.
//!
//! What the check covers: a lost acknowledged write, a stale read from a
//! deposed owner, or a write a fenced server applied although its client was
//! told `-MOVED`/`-CLUSTERDOWN` (values are unique, so such a value would be
//! one nobody wrote) all make the history non-linearizable.
//!
//! `FAULT_SEEDS=a,b,c` replays given seeds; `FAULT_SCHEDULES=N` runs N random
//! seeds (a soak); by default CI runs a bounded set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sharedisk_testkit::Rng;
use sharedisk_testkit::history::{self, Entry, Op, Ret};
use sharedisk_testkit::router::{Outcome as RouterOutcome, Router};

use crate::cluster::*;
use crate::util::*;

const PARTITIONS: u32 = 8;
const KEYS: usize = 8;
const CLIENTS: u32 = 8;
/// How long a client waits for one reply before calling the outcome unknown:
/// patient clients outwait a paused server (so what it answers when it wakes
/// is checked), impatient ones move on to the new owner meanwhile (so there
/// is something newer to be stale against).
const PATIENT: Duration = Duration::from_secs(3);
const IMPATIENT: Duration = Duration::from_millis(250);
/// MB of distinct keys prefilled into every partition before the cluster starts.
const PREFILL_MB: u64 = 2;

/// What one operation's attempts came to, for the history.
enum Outcome {
    Done(redis::Value),
    Unknown,
}

/// Run `cmd` through the router: `None` if it was certainly never applied.
fn attempt(router: &mut Router, key: &str, cmd: &redis::Cmd, give_up: Instant) -> Option<Outcome> {
    match router.run(slot(key), cmd, give_up) {
        RouterOutcome::Reply(Ok(v)) => Some(Outcome::Done(v)),
        // Refused before anything was staged.
        RouterOutcome::Reply(Err(e)) if e.code() == Some("OOM") => None,
        RouterOutcome::Reply(Err(_)) | RouterOutcome::Unknown => Some(Outcome::Unknown),
        RouterOutcome::GaveUp => None,
    }
}

fn to_ret(op: Op, v: &redis::Value) -> Ret {
    let int = |v: &redis::Value| match v {
        redis::Value::Int(n) => *n,
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).parse().expect("an integer value"),
        other => panic!("unexpected reply {other:?}"),
    };
    match op {
        Op::Get => Ret::Value(match v {
            redis::Value::Nil => None,
            other => Some(int(other)),
        }),
        Op::Set(_) => {
            assert!(matches!(v, redis::Value::Okay | redis::Value::SimpleString(_)), "SET answered {v:?}");
            Ret::Ok
        }
        Op::Incr => Ret::Int(int(v)),
        Op::Del => Ret::Deleted(int(v) == 1),
    }
}

fn command(op: Op, key: &str) -> redis::Cmd {
    match op {
        Op::Get => redis::cmd("GET").arg(key).clone(),
        Op::Set(v) => redis::cmd("SET").arg(key).arg(v).clone(),
        Op::Incr => redis::cmd("INCR").arg(key).clone(),
        Op::Del => redis::cmd("DEL").arg(key).clone(),
    }
}

type History = Arc<Mutex<Vec<Entry>>>;

fn client(
    id: u32,
    seed: u64,
    keys: Arc<Vec<String>>,
    known: Arc<Mutex<Vec<String>>>,
    base: Instant,
    stop: Arc<AtomicBool>,
    history: History,
) {
    let mut rng = Rng::new(seed ^ (u64::from(id) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let reply_timeout = if id.is_multiple_of(2) { PATIENT } else { IMPATIENT };
    let mut router = Router::new(known, reply_timeout);
    router.refresh();
    let mut seq = 0i64;
    while !stop.load(Ordering::Acquire) {
        let key = &keys[rng.below(keys.len() as u64) as usize];
        seq += 1;
        let op = match rng.below(10) {
            0..=3 => Op::Get,
            4..=6 => Op::Set(i64::from(id) * 1_000_000_000 + seq), // unique values
            7..=8 => Op::Incr,
            _ => Op::Del,
        };
        let call = base.elapsed().as_nanos() as u64;
        let outcome = attempt(&mut router, key, &command(op, key), Instant::now() + Duration::from_secs(10));
        let ret = match outcome {
            None => continue, // never applied anywhere
            Some(Outcome::Done(v)) => Some((base.elapsed().as_nanos() as u64, to_ret(op, &v))),
            Some(Outcome::Unknown) => None,
        };
        history.lock().unwrap().push(Entry { client: id, key: key.clone(), op, call, ret });
    }
}

/// One seeded schedule: faults for `duration`, then heal, final reads, check.
fn run_schedule(seed: u64, duration: Duration) {
    eprintln!("fault schedule SEED={seed} (replay: FAULT_SEEDS={seed})");
    let mut rng = Rng::new(seed);
    let scratch = Scratch::new();
    let volume = scratch.volume("vol", "64MiB", PARTITIONS);
    let prefilled = sharedisk_testkit::prefill::prefill(&volume, PARTITIONS, PREFILL_MB).expect("prefill");
    // Two lock managers: kills and pauses of the active one hand over to the standby.
    let mut c = Cluster::start_full(scratch, volume, 3, 2, &[], Duration::from_secs(30));
    c.wait_standbys_synced(Duration::from_secs(30));
    let keys: Arc<Vec<String>> =
        Arc::new((0..KEYS).map(|i| key_in_partition(&format!("f{i}-"), i as u32 % PARTITIONS, PARTITIONS)).collect());
    let known = Arc::new(Mutex::new(c.servers.iter().map(|s| s.addr.clone()).collect::<Vec<_>>()));
    let history: History = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let base = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (keys, known, stop, history) = (keys.clone(), known.clone(), stop.clone(), history.clone());
            std::thread::spawn(move || client(id, seed, keys, known, base, stop, history))
        })
        .collect();

    let mut log = Vec::new();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.between(150, 500)));
        let live: Vec<String> = c.servers.iter().map(|s| s.name.clone()).collect();
        let victim = live[rng.below(live.len() as u64) as usize].clone();
        match rng.below(9) {
            0 => {
                log.push(format!("kill -9 {victim}, restart"));
                c.server(&victim).proc.kill9();
                std::thread::sleep(Duration::from_millis(rng.between(100, 600)));
                let s = c.spawn_server(&victim);
                let i = c.servers.iter().position(|x| x.name == victim).unwrap();
                c.servers[i] = s;
                *known.lock().unwrap() = c.servers.iter().map(|s| s.addr.clone()).collect();
            }
            1 => {
                let pause = Duration::from_millis(rng.between(700, 1500));
                log.push(format!("SIGSTOP {victim} for {pause:?}"));
                c.server(&victim).proc.signal(rustix::process::Signal::STOP);
                std::thread::sleep(pause);
                c.server(&victim).proc.signal(rustix::process::Signal::CONT);
            }
            2 => match rng.below(3) {
                0 => {
                    log.push("kill -9 the active lock manager (a standby takes over), restart it".into());
                    c.kill9_active_lockmgr();
                }
                1 => {
                    let pause = Duration::from_millis(rng.between(300, 1200));
                    log.push(format!("SIGSTOP the active lock manager for {pause:?} (a standby takes over), SIGCONT: it stops, deposed"));
                    c.pause_active_lockmgr(pause);
                }
                _ => {
                    let outage = Duration::from_millis(rng.between(50, 500));
                    log.push(format!("kill -9 every lock manager, restart them after {outage:?}"));
                    c.kill9_all_lockmgrs(outage);
                }
            },
            5 => {
                log.push(format!("admin drain {victim}, SIGTERM it, restart"));
                let _ = run(&["admin", "--lockmgr", &c.lockmgr_addr, "drain", &victim]);
                std::thread::sleep(Duration::from_millis(rng.between(50, 400)));
                c.server(&victim).proc.signal(rustix::process::Signal::TERM);
                c.server(&victim).proc.wait_exit(Duration::from_secs(20));
                let s = c.spawn_server(&victim);
                let i = c.servers.iter().position(|x| x.name == victim).unwrap();
                c.servers[i] = s;
                *known.lock().unwrap() = c.servers.iter().map(|s| s.addr.clone()).collect();
            }
            3 | 4 => {
                let p = rng.below(u64::from(PARTITIONS));
                log.push(format!("admin move {p} {victim}"));
                let _ = run(&["admin", "--lockmgr", &c.lockmgr_addr, "move", &p.to_string(), &victim]);
            }
            6 => {
                // A partition's standby falls behind its owner (within the lease).
                let p = rng.below(u64::from(PARTITIONS)) as u32;
                let pause = Duration::from_millis(rng.between(50, 400));
                if let Some(s) = standby_of(&c, p).filter(|s| c.servers.iter().any(|x| x.name == *s)) {
                    log.push(format!("SIGSTOP {s} (standby of {p}) for {pause:?}"));
                    c.server(&s).proc.signal(rustix::process::Signal::STOP);
                    std::thread::sleep(pause);
                    c.server(&s).proc.signal(rustix::process::Signal::CONT);
                }
            }
            7 => {
                let p = rng.below(u64::from(PARTITIONS)) as u32;
                if let Some(s) = standby_of(&c, p) {
                    log.push(format!("admin move {p} {s} (its standby)"));
                    let _ = run(&["admin", "--lockmgr", &c.lockmgr_addr, "move", &p.to_string(), &s]);
                }
            }
            _ => {
                log.push("admin rebalance".into());
                let _ = run(&["admin", "--lockmgr", &c.lockmgr_addr, "rebalance"]);
            }
        }
    }
    // Heal: everything running, every partition owned; then stop the load.
    c.settle();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.join().unwrap();
    }
    // Final reads through a fresh client, recorded like any other operation.
    let mut router = Router::new(known.clone(), PATIENT);
    router.refresh();
    for key in keys.iter() {
        let call = base.elapsed().as_nanos() as u64;
        match attempt(&mut router, key, &command(Op::Get, key), Instant::now() + Duration::from_secs(20)) {
            Some(Outcome::Done(v)) => {
                let ret = Some((base.elapsed().as_nanos() as u64, to_ret(Op::Get, &v)));
                history.lock().unwrap().push(Entry { client: 99, key: key.clone(), op: Op::Get, call, ret });
            }
            _ => panic!("SEED={seed}: the final read of {key} failed after healing"),
        }
    }
    // Every prefilled key survived every takeover, warm or cold (a sample).
    let (mut read_back, step) = (0, 37);
    for partition in 0..PARTITIONS {
        for (i, key) in sharedisk_testkit::prefill::keys(PARTITIONS, partition, PREFILL_MB).enumerate() {
            if i % step != 0 {
                continue;
            }
            match router.run(slot(&key), redis::cmd("STRLEN").arg(&key), Instant::now() + Duration::from_secs(20)) {
                RouterOutcome::Reply(Ok(redis::Value::Int(n))) if n as usize == sharedisk_testkit::prefill::PREFILL_VALUE_BYTES => {
                    read_back += 1
                }
                other => panic!("SEED={seed}: prefilled key {key} reads back as {other:?}\nfaults: {}", log.join("; ")),
            }
        }
    }
    assert!(read_back as u64 >= prefilled / step as u64, "SEED={seed}: {read_back} of {prefilled} prefilled keys checked");
    let h = history.lock().unwrap().clone();
    let acked = h.iter().filter(|e| e.ret.is_some()).count();
    let unknown = h.len() - acked;
    eprintln!("SEED={seed}: {} operations ({acked} completed, {unknown} unknown); faults: {}", h.len(), log.join("; "));
    assert!(acked > 100, "SEED={seed}: too little load got through to check anything ({acked} completed)");
    if let Err(v) = history::check(&h) {
        panic!("SEED={seed}: {v}\nfaults: {}", log.join("; "));
    }
}

/// The server keeping `partition`'s standby, if the lock manager answers.
fn standby_of(c: &Cluster, partition: u32) -> Option<String> {
    let o = run(&["admin", "--lockmgr", &c.lockmgr_addr, "status", "--json"]);
    let st: sharedisk_lockmgr::core::Status = serde_json::from_slice(&o.stdout).ok()?;
    st.partitions.get(partition as usize)?.standby.clone()
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("FAULT_SEEDS") {
        return s.split(',').map(|x| x.trim().parse().expect("FAULT_SEEDS: comma-separated integers")).collect();
    }
    let n: u64 = std::env::var("FAULT_SCHEDULES").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if n > 0 {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        return (0..n).map(|i| t.wrapping_add(i.wrapping_mul(0x9e37_79b9))).collect();
    }
    vec![1, 2, 3]
}

#[test]
fn fault_schedules_keep_every_history_linearizable() {
    for seed in seeds() {
        run_schedule(seed, Duration::from_secs(5));
    }
}
