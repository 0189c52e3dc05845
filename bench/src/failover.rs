//! `sharedisk bench failover`: client-visible unavailability of one
//! partition when its owner is killed (kill -9), hangs (SIGSTOP, the
//! connection stays open) or hands it over (`admin move`), and when the
//! active lock manager is killed (a standby takes over), on a real local
//! cluster: two lock managers and 3 servers as child processes on 127.0.0.1.
//!
//! Per run, one client writes distinct keys of one partition back to back
//! (each `SET` acknowledged = durable); the unavailability is the time from
//! the last acknowledgement before the event to the first one after it.
//! Afterwards every acknowledged key is read back: a missing or different
//! value is a lost acknowledged write.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sharedisk_lockmgr::client::Client;
use sharedisk_lockmgr::core::slot_range;
use sharedisk_server::resp::key_slot;
use sharedisk_storage::{CreateOptions, Volume};
use sharedisk_testkit::cluster::Cluster;
use sharedisk_testkit::prefill::prefill;
use sharedisk_testkit::process::Scratch;
use sharedisk_testkit::router::Router;

#[derive(clap::Args, Debug)]
pub struct FailoverArgs {
    /// Measurements of each kind (kill -9, hang, move).
    #[arg(long, default_value_t = 20)]
    runs: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Partitions of the scratch volume.
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// Where the scratch volume goes (deleted afterwards).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Prefill every partition with this many MB of distinct keys (1000-byte
    /// values) before measuring: failover and move times with data.
    #[arg(long, default_value_t = 0)]
    data_mb: u64,
    /// Hot standbys on the servers (1) or not (0).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    standbys: u8,
    /// Lock managers (the first active): with 2 or more, each run also
    /// kills the active one (kill -9) under the client's writes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=4))]
    lockmgrs: u8,
}

/// The client's per-request timeout: how long it waits on a silent server
/// before trying the slot map again (real clients default to none; a hang
/// is only visible to a client that gives up at some point).
const CLIENT_TIMEOUT: Duration = Duration::from_millis(100);
const SERVERS: u16 = 3;

/// A writer of distinct keys in one partition.
struct Load {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<(Instant, u64)>>>,
    errors: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Router>,
    tag: String,
    slot: u16,
    run: String,
}

impl Load {
    fn start(known: Vec<String>, partition: u32, partitions: u32, run: String) -> Load {
        let [first, last] = slot_range(partition, partitions);
        let tag = (0..)
            .map(|i| format!("p{partition}t{i}"))
            .find(|t| (first..=last).contains(&u32::from(key_slot(t.as_bytes()))))
            .expect("a tag");
        let slot = key_slot(tag.as_bytes());
        let (stop, acks, errors) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicU64::new(0)));
        let (s, a, e, t, r) = (stop.clone(), acks.clone(), errors.clone(), tag.clone(), run.clone());
        let thread = std::thread::spawn(move || {
            let mut router = Router::new(Arc::new(Mutex::new(known)), CLIENT_TIMEOUT);
            router.refresh();
            let mut seq = 0u64;
            while !s.load(Ordering::Acquire) {
                let key = format!("{{{t}}}:{r}:{seq}");
                let (res, trip) = router.call(slot, redis::cmd("SET").arg(&key).arg(seq), Instant::now() + Duration::from_secs(10));
                // Every failed attempt the client saw (error reply, reset, refusal, timeout);
                // a followed MOVED is not an error.
                e.fetch_add(u64::from(trip.errors + trip.io_errors), Ordering::AcqRel);
                if let Some(Ok(redis::Value::Okay)) = res {
                    a.lock().unwrap_or_else(|e| e.into_inner()).push((Instant::now(), seq));
                }
                seq += 1;
            }
            router
        });
        Load { stop, acks, errors, thread, tag, slot, run }
    }

    fn acks_after(&self, t: Instant) -> usize {
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|a| a.0 > t).count()
    }

    fn wait_acks_after(&self, t: Instant, n: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.acks_after(t) < n {
            if Instant::now() >= deadline {
                bail!("no progress after the event for 20 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Stop; the unavailability and the acknowledged writes lost.
    ///
    /// The unavailability is the longest time between two consecutive
    /// acknowledgements from the event on: a reply already on its way when
    /// the signal is sent may be recorded just after the event, so "first
    /// acknowledgement after the event" alone would measure that straggler.
    fn finish(self, event: Instant) -> Result<(Duration, u64)> {
        self.stop.store(true, Ordering::Release);
        let mut router = self.thread.join().map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        let acks = std::mem::take(&mut *self.acks.lock().unwrap_or_else(|e| e.into_inner()));
        let before = acks.iter().filter(|a| a.0 <= event).map(|a| a.0).max().unwrap_or(event);
        let after = acks.iter().filter(|a| a.0 > event).map(|a| a.0).min().context("no acknowledgement after the event")?;
        let mut worst = after - before;
        for w in acks.windows(2) {
            if w[1].0 > event {
                worst = worst.max(w[1].0 - w[0].0);
            }
        }
        let mut lost = 0;
        for (_, seq) in &acks {
            let key = format!("{{{}}}:{}:{seq}", self.tag, self.run);
            let (res, _) = router.call(self.slot, redis::cmd("GET").arg(&key), Instant::now() + Duration::from_secs(10));
            if !matches!(res, Some(Ok(redis::Value::BulkString(v))) if v == seq.to_string().as_bytes()) {
                lost += 1;
            }
        }
        Ok((worst, lost))
    }
}

#[derive(serde::Serialize)]
struct Summary {
    min: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

fn summary(v: &[Duration]) -> Summary {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    Summary { min: at(0.0), p50: at(0.5), p99: at(0.99), max: at(1.0) }
}

#[derive(serde::Serialize)]
struct Report {
    runs: u32,
    kill9_ms: Summary,
    hang_ms: Summary,
    move_ms: Summary,
    /// kill -9 of the active lock manager: the client's longest gap between
    /// acknowledgements, and the time until a standby serves.
    lockmgr_kill9_ms: Option<Summary>,
    lockmgr_takeover_ms: Option<Summary>,
    client_errors_during_lockmgr_kills: u64,
    lost_acked_writes: u64,
    client_errors_during_moves: u64,
    lease_ms: u64,
    client_timeout_ms: u64,
    data_mb_per_partition: u64,
    standbys: bool,
    /// From starting the cluster on the (prefilled) volume until every
    /// partition is served and balanced.
    start_ms: f64,
}

pub fn run(args: FailoverArgs) -> Result<ExitCode> {
    if args.runs == 0 || args.partitions < u32::from(SERVERS) {
        bail!("--runs must be at least 1 and --partitions at least {SERVERS}");
    }
    let scratch = Scratch::new_in(&args.dir).with_context(|| format!("cannot make a scratch directory in {}", args.dir.display()))?;
    let volume = scratch.path("volume");
    // Room for the data twice over (the cleaner needs slack) plus the runs' writes.
    let bytes = (256 << 20) + args.data_mb * u64::from(args.partitions) * 5 / 2 * (1 << 20);
    Volume::create(&volume, &CreateOptions::new(bytes, args.partitions))?;
    if args.data_mb > 0 {
        let t = Instant::now();
        let keys = prefill(&volume, args.partitions, args.data_mb)?;
        if !args.json {
            eprintln!("prefilled {keys} keys ({} MB per partition) in {:.1} s", args.data_mb, t.elapsed().as_secs_f64());
        }
    }
    let standbys = args.standbys == 1;
    let started = Instant::now();
    let mut c = Cluster::start_full(
        scratch,
        volume,
        usize::from(SERVERS),
        usize::from(args.lockmgrs),
        &["--standbys", &args.standbys.to_string()],
        Duration::from_secs(600),
    );
    let start_ms = started.elapsed().as_secs_f64() * 1e3;
    let ready = |c: &Cluster| {
        c.settle_within(Duration::from_secs(600));
        if standbys {
            c.wait_standbys_synced(Duration::from_secs(600));
        }
    };
    ready(&c);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let lease_ms = rt.block_on(async {
        Client::connect_any(&[c.lockmgr_addr.clone()], None).await.map(|(cl, _)| cl.hello.lease_timeout.as_millis() as u64)
    })?;
    let owner_of = |c: &Cluster, partition: u32| c.owner_of(partition).with_context(|| format!("partition {partition} is not owned"));

    let (mut kill9, mut hang, mut moves) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lost, mut move_errors) = (0u64, 0u64);
    let (mut lm_kill9, mut lm_takeover, mut lm_errors) = (Vec::new(), Vec::new(), 0u64);
    for run in 0..args.runs {
        let partition = run % args.partitions;
        // kill -9 of the owner; it restarts and the cluster rebalances.
        let owner = owner_of(&c, partition)?;
        let load = Load::start(c.addrs(), partition, args.partitions, format!("k{run}"));
        load.wait_acks_after(Instant::now(), 50)?;
        let event = Instant::now();
        c.server(&owner).proc.kill9();
        load.wait_acks_after(event, 20)?;
        let (gap, l) = load.finish(event)?;
        kill9.push(gap);
        lost += l;
        c.restart_server(&owner);
        ready(&c);

        // SIGSTOP of the owner (connections stay open), SIGCONT after the failover.
        let owner = owner_of(&c, partition)?;
        let load = Load::start(c.addrs(), partition, args.partitions, format!("h{run}"));
        load.wait_acks_after(Instant::now(), 50)?;
        let event = Instant::now();
        c.server(&owner).proc.signal(rustix::process::Signal::STOP);
        let waited = load.wait_acks_after(event, 20);
        c.server(&owner).proc.signal(rustix::process::Signal::CONT);
        waited?;
        let (gap, l) = load.finish(event)?;
        hang.push(gap);
        lost += l;
        ready(&c);

        // A planned move to another server.
        let owner = owner_of(&c, partition)?;
        // To its hot standby (a warm hand-over), else to another server.
        let standby = c.status().partitions.iter().find(|p| p.id == partition).and_then(|p| p.standby.clone());
        let target = standby.or_else(|| c.servers.iter().map(|s| s.name.clone()).find(|n| *n != owner)).context("a target")?;
        let load = Load::start(c.addrs(), partition, args.partitions, format!("m{run}"));
        load.wait_acks_after(Instant::now(), 50)?;
        let errors_before = load.errors.load(Ordering::Acquire);
        let event = Instant::now();
        c.admin(&["move", &partition.to_string(), &target]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.owner_of(partition).as_deref() != Some(target.as_str()) {
            if Instant::now() >= deadline {
                bail!("partition {partition} did not move to {target}");
            }
            // Each look is an `admin status` process: not in a tight loop.
            std::thread::sleep(Duration::from_millis(20));
        }
        let moved = Instant::now();
        load.wait_acks_after(moved, 20)?;
        move_errors += load.errors.load(Ordering::Acquire) - errors_before;
        let (worst, l) = load.finish(event)?;
        moves.push(worst);
        lost += l;
        ready(&c);

        // kill -9 of the active lock manager: a standby takes over, the
        // servers move their sessions; the client should notice nothing.
        if args.lockmgrs > 1 {
            let load = Load::start(c.addrs(), partition, args.partitions, format!("l{run}"));
            load.wait_acks_after(Instant::now(), 50)?;
            let errors_before = load.errors.load(Ordering::Acquire);
            let event = Instant::now();
            lm_takeover.push(c.kill9_active_lockmgr());
            // Past the servers' reconnection and a few of their heartbeats.
            load.wait_acks_after(event + Duration::from_millis(300), 20)?;
            lm_errors += load.errors.load(Ordering::Acquire) - errors_before;
            let (gap, l) = load.finish(event)?;
            lm_kill9.push(gap);
            lost += l;
            ready(&c);
        }
        if !args.json {
            eprintln!(
                "run {run}: kill -9 {:.1} ms, hang {:.1} ms, move {:.1} ms, lock manager kill -9 {}",
                kill9.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
                hang.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
                worst.as_secs_f64() * 1e3,
                lm_kill9.last().map_or("-".to_owned(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3)),
            );
        }
    }
    let report = Report {
        runs: args.runs,
        kill9_ms: summary(&kill9),
        hang_ms: summary(&hang),
        move_ms: summary(&moves),
        lockmgr_kill9_ms: (!lm_kill9.is_empty()).then(|| summary(&lm_kill9)),
        lockmgr_takeover_ms: (!lm_takeover.is_empty()).then(|| summary(&lm_takeover)),
        client_errors_during_lockmgr_kills: lm_errors,
        lost_acked_writes: lost,
        client_errors_during_moves: move_errors,
        lease_ms,
        client_timeout_ms: CLIENT_TIMEOUT.as_millis() as u64,
        data_mb_per_partition: args.data_mb,
        standbys,
        start_ms,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "failover, {} runs each (lease {lease_ms} ms, client timeout {} ms, {} MB per partition, standbys {}):",
            args.runs,
            report.client_timeout_ms,
            args.data_mb,
            if standbys { "on" } else { "off" }
        );
        println!("cluster start until every partition served: {:.0} ms", start_ms);
        println!("{:<10} {:>9} {:>9} {:>9} {:>9}", "event", "min ms", "p50 ms", "p99 ms", "max ms");
        let mut rows = vec![("kill -9", &report.kill9_ms), ("hang", &report.hang_ms), ("move", &report.move_ms)];
        rows.extend(report.lockmgr_kill9_ms.as_ref().map(|s| ("lm kill -9", s)));
        rows.extend(report.lockmgr_takeover_ms.as_ref().map(|s| ("lm takeover", s)));
        for (name, s) in rows {
            println!("{name:<11} {:>9.1} {:>9.1} {:>9.1} {:>9.1}", s.min, s.p50, s.p99, s.max);
        }
        println!("lost acknowledged writes: {}", report.lost_acked_writes);
        println!("client errors during moves: {}", report.client_errors_during_moves);
        if args.lockmgrs > 1 {
            println!("client errors during lock-manager kills: {}", report.client_errors_during_lockmgr_kills);
        }
    }
    Ok(if lost == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
