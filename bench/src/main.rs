//! `sharedisk-bench`: the benchmarks, a binary of their own so that the
//! product binary carries no test or benchmark harness.
//!
//! `sharedisk-bench storage`: append+publish and recovery rates on this
//! machine. One thread, one partition of a fresh sparse volume file in `--dir`.
//! "publish only" makes each record visible with one CAS and no flush (safe
//! against kill -9, not against power loss); "flush every N" is the durable
//! group commit: N records, one data msync, one CAS, one head-word msync.

mod failover;
mod locks;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use sharedisk_storage::partition::{read_chain, replay};
use sharedisk_storage::{CreateOptions, Durability, Op, Partition, PartitionOptions, ProcessIdentity, Volume};

#[derive(Parser, Debug)]
#[command(name = "sharedisk-bench", version, about = "sharedisk's benchmarks (the cluster ones run the sharedisk binary beside this one)")]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Client-visible unavailability of a partition on kill -9, SIGSTOP and
    /// admin move of its owner, and acknowledged writes lost, on a local
    /// 3-server cluster.
    Failover(failover::FailoverArgs),
    /// The named-lease workload against a running lock manager, etcd's lock
    /// API and Redis SET NX PX, side by side (used by bench/compare.sh).
    Locks(locks::LocksArgs),
    /// Append+publish rates (100 B and 4 KiB values, flush per 1/64/1024 records) and recovery MB/s.
    Storage {
        /// Where to put the scratch volume (it is deleted afterwards).
        #[arg(long, default_value_os_t = std::env::temp_dir())]
        dir: PathBuf,
        /// Seconds to spend per configuration (roughly).
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        #[arg(long)]
        json: bool,
    },
    /// Named-lease acquire+release pairs/s and latency (1 and 64 sessions
    /// over 1024 names), and heartbeat cost with 1000 partitions over 64
    /// servers, against an in-process lock manager on 127.0.0.1.
    Lockmgr {
        #[arg(long, default_value_os_t = std::env::temp_dir())]
        dir: PathBuf,
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        #[arg(long)]
        json: bool,
    },
    /// Fill every partition of an existing volume (no server running on it)
    /// with this many MB of distinct keys, 1000-byte values: a loaded volume
    /// to start `sharedisk up` on.
    Prefill {
        #[arg(long)]
        volume: PathBuf,
        #[arg(long)]
        data_mb: u64,
    },
}

struct Scratch {
    path: PathBuf,
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn fresh_volume(dir: &std::path::Path) -> Result<(Scratch, Arc<Volume>)> {
    let path = dir.join(format!("sharedisk-bench-{}.vol", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let opts = CreateOptions { force: true, ..CreateOptions::new(4 << 30, 1) };
    let vol = Volume::create(&path, &opts).with_context(|| format!("creating {}", path.display()))?;
    Ok((Scratch { path }, Arc::new(vol)))
}

struct Row {
    value_bytes: usize,
    flush_every: u64,
    records: u64,
    elapsed: Duration,
    record_bytes: u64,
}

/// Returns the writer too: recovery is measured while it still holds its
/// index, as it would in another process (freeing a million small
/// allocations first would charge glibc's consolidation to the scan).
fn one(dir: &std::path::Path, value_bytes: usize, flush_every: u64, budget: Duration) -> Result<(Row, Scratch, Arc<Volume>, Partition)> {
    let (scratch, vol) = fresh_volume(dir)?;
    let reg = vol.register(1, ProcessIdentity::current())?;
    // flush_every 0 publishes with no barrier at all: say so at the claim.
    let durability = if flush_every == 0 { Durability::OffForBenchmarks } else { Durability::Required };
    let (mut p, _) = Partition::claim_with(vol.clone(), reg, 0, PartitionOptions { durability, ..Default::default() })?;
    let value = bytes::Bytes::from(vec![b'v'; value_bytes]);
    let record_bytes = Op::Put { key: b"k0000000000".to_vec(), value: value.clone(), expire_at_ms: 0 }.encoded_bytes() as u64;
    // Stay well inside the partition so the cleaner never runs.
    let cap = vol.geometry().partition_data_bytes / record_bytes * 8 / 10;
    let start = Instant::now();
    let mut n = 0u64;
    while n < cap {
        let op = Op::Put { key: format!("k{n:010}").into_bytes(), value: value.clone(), expire_at_ms: 0 };
        p.append(std::slice::from_ref(&op), 0)?;
        n += 1;
        if flush_every == 0 {
            p.publish()?;
        } else if n.is_multiple_of(flush_every) {
            p.commit()?;
        }
        if n.is_multiple_of(256) && start.elapsed() >= budget {
            break;
        }
    }
    if flush_every == 0 {
        p.publish()?;
    } else {
        p.commit()?;
    }
    let elapsed = start.elapsed();
    Ok((Row { value_bytes, flush_every, records: n, elapsed, record_bytes }, scratch, vol, p))
}

pub fn run(cmd: BenchCommand) -> Result<ExitCode> {
    if let BenchCommand::Failover(args) = cmd {
        return failover::run(args);
    }
    if let BenchCommand::Prefill { volume, data_mb } = cmd {
        let partitions = Volume::open(&volume)?.geometry().partitions;
        let t = Instant::now();
        let keys = sharedisk_testkit::prefill::prefill(&volume, partitions, data_mb)?;
        println!("prefilled {keys} keys ({data_mb} MB per partition, {partitions} partitions) in {:.1} s", t.elapsed().as_secs_f64());
        return Ok(ExitCode::SUCCESS);
    }
    if let BenchCommand::Locks(args) = cmd {
        return locks::run(args);
    }
    if let BenchCommand::Lockmgr { dir, seconds, json } = cmd {
        return lockmgr_bench(&dir, Duration::from_secs_f64(seconds), json);
    }
    let BenchCommand::Storage { dir, seconds, json } = cmd else { unreachable!("handled above") };
    let budget = Duration::from_secs_f64(seconds);
    let mut rows = Vec::new();
    let mut recovery = Vec::new();
    for value_bytes in [100usize, 4096] {
        for flush_every in [0u64, 1, 64, 1024] {
            let (row, scratch, vol, writer) = one(&dir, value_bytes, flush_every, budget)?;
            if flush_every == 0 {
                // Recovery from the page cache: a pure scan (decode + crc),
                // then a full claim (scan + index build).
                let t = Instant::now();
                let chain = read_chain(&vol, 0)?;
                let bytes = replay(&vol, 0, &chain, |_, _, _| {})?;
                let scan = t.elapsed();
                let reg = vol.register(2, ProcessIdentity::current())?;
                let t = Instant::now();
                let p = Partition::claim(vol.clone(), reg, 0)?;
                let claim = t.elapsed();
                anyhow::ensure!(p.len() as u64 == row.records, "recovery found {} records, {} were written", p.len(), row.records);
                recovery.push((value_bytes, bytes, scan, claim));
            }
            drop(writer);
            drop(vol);
            drop(scratch);
            rows.push(row);
        }
    }
    let rate = |r: &Row| r.records as f64 / r.elapsed.as_secs_f64();
    if json {
        let v = json!({
            "append": rows.iter().map(|r| json!({
                "value_bytes": r.value_bytes,
                "flush_every": if r.flush_every == 0 { serde_json::Value::Null } else { json!(r.flush_every) },
                "records": r.records,
                "records_per_s": rate(r),
                "mb_per_s": rate(r) * r.record_bytes as f64 / 1e6,
            })).collect::<Vec<_>>(),
            "recovery": recovery.iter().map(|(v, b, s, c)| json!({
                "value_bytes": v, "bytes": b,
                "scan_mb_per_s": *b as f64 / s.as_secs_f64() / 1e6,
                "claim_mb_per_s": *b as f64 / c.as_secs_f64() / 1e6,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("append + publish, one thread, volume in {}", dir.display());
    println!("| value | durability | records | records/s | MB/s |");
    println!("|---|---|---:|---:|---:|");
    for r in &rows {
        let mode = if r.flush_every == 0 { "publish only, no flush".to_owned() } else { format!("flush every {}", r.flush_every) };
        println!("| {} B | {} | {} | {:.0} | {:.1} |", r.value_bytes, mode, r.records, rate(r), rate(r) * r.record_bytes as f64 / 1e6);
    }
    println!();
    println!("recovery from the page cache");
    println!("| value | log bytes | scan (decode+crc) MB/s | claim (scan+index) MB/s |");
    println!("|---|---:|---:|---:|");
    for (v, b, s, c) in &recovery {
        println!("| {v} B | {b} | {:.0} | {:.0} |", *b as f64 / s.as_secs_f64() / 1e6, *b as f64 / c.as_secs_f64() / 1e6);
    }
    Ok(ExitCode::SUCCESS)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct LoadResult {
    ops_per_s: f64,
    p50_us: u32,
    p99_us: u32,
}

fn lockmgr_bench(dir: &std::path::Path, budget: Duration, json: bool) -> Result<ExitCode> {
    use sharedisk_lockmgr::client::{Client, Session};
    use sharedisk_lockmgr::core::{Request, Response, ServerInfo};
    use sharedisk_lockmgr::service::{Service, VolumeBackend};

    let path = dir.join(format!("sharedisk-bench-lockmgr-{}.vol", std::process::id()));
    let scratch = Scratch { path: path.clone() };
    let opts = CreateOptions { force: true, segment_bytes: 8192, ..CreateOptions::new(96 << 20, 1000) };
    let vol = Arc::new(Volume::create(&path, &opts)?);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let results = rt.block_on(async move {
        let svc =
            Service::start("127.0.0.1:0", 1000, sharedisk_lockmgr::Timeouts::default(), Arc::new(VolumeBackend::new(vol)), None).await?;
        let addr = svc.addr.to_string();
        let mut sessions = Vec::new();
        for i in 0..64u64 {
            let (client, events) = Client::connect(&addr, None).await?;
            let info = ServerInfo {
                server: format!("bench{i}"),
                key: 0xbe00 + i,
                addr: String::new(),
                pid: 0,
                standby: false,
                reports_standbys: false,
                keeps: Vec::new(),
            };
            sessions.push((Arc::new(Session::register(client, info).await?), events));
        }
        // Behave like servers: release what the lock manager revokes.
        for (s, events) in sessions.iter_mut() {
            let (s, mut events) = (s.clone(), std::mem::replace(events, tokio::sync::mpsc::unbounded_channel().1));
            tokio::spawn(async move {
                let mut tokens = std::collections::HashMap::new();
                while let Some(ev) = events.recv().await {
                    match ev {
                        sharedisk_lockmgr::client::Event::Granted { partition, token } => {
                            tokens.insert(partition, token);
                        }
                        sharedisk_lockmgr::client::Event::Revoked { partition } => {
                            if let Some(t) = tokens.remove(&partition) {
                                let s = s.clone();
                                tokio::spawn(async move { s.release(partition, t).await });
                            }
                        }
                        _ => break,
                    }
                }
            });
        }
        let admin = Client::connect(&addr, None).await?.0;
        admin.call(Request::Rebalance).await?;
        // Wait until the rebalance has settled.
        let settle = Instant::now() + Duration::from_secs(10);
        while admin.status().await?.partitions.iter().any(|p| p.state != "owned") && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let named = |n: usize| {
            let sessions: Vec<Arc<Session>> = sessions.iter().take(n).map(|s| s.0.clone()).collect();
            async move {
                let deadline = Instant::now() + budget;
                let mut tasks = Vec::new();
                for (i, s) in sessions.into_iter().enumerate() {
                    tasks.push(tokio::spawn(async move {
                        let mut lat = Vec::new();
                        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64);
                        while Instant::now() < deadline {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let name = format!("lease-{:04}", x % 1024);
                            let t = Instant::now();
                            if let Ok(Response::NamedGranted { .. }) = s.acquire_named(&name).await {
                                lat.push(t.elapsed().as_micros() as u32);
                                let _ = s.release_named(&name).await;
                            }
                        }
                        lat
                    }));
                }
                let start = Instant::now();
                let mut all = Vec::new();
                for t in tasks {
                    all.extend(t.await.unwrap_or_default());
                }
                let secs = start.elapsed().as_secs_f64().max(budget.as_secs_f64());
                all.sort_unstable();
                LoadResult { ops_per_s: all.len() as f64 / secs, p50_us: percentile(&all, 0.5), p99_us: percentile(&all, 0.99) }
            }
        };
        let one = named(1).await;
        let many = named(64).await;

        // Heartbeat round trips, saturated, from 64 sessions holding 1000 partitions.
        let deadline = Instant::now() + budget;
        let mut tasks = Vec::new();
        for (s, _) in &sessions {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if let Ok(Response::Ack) = s.client.call(Request::Heartbeat { session: s.id }).await {
                        lat.push(t.elapsed().as_micros() as u32);
                    }
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all.sort_unstable();
        let hb = LoadResult {
            ops_per_s: all.len() as f64 / budget.as_secs_f64(),
            p50_us: percentile(&all, 0.5),
            p99_us: percentile(&all, 0.99),
        };
        let st = admin.status().await?;
        let owned: u32 = st.servers.iter().map(|s| s.partitions).sum();
        anyhow::ensure!(st.servers.len() == 64, "only {} of 64 bench sessions survived", st.servers.len());
        svc.abort();
        anyhow::Ok((one, many, hb, owned))
    })?;
    drop(scratch);
    let (one, many, hb, owned) = results;
    // At the default 100 ms interval, 64 servers send 640 heartbeats/s.
    let hb_share = 640.0 / hb.ops_per_s * 100.0;
    if json {
        let r = |l: &LoadResult| json!({"per_s": l.ops_per_s, "p50_us": l.p50_us, "p99_us": l.p99_us});
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "named_acquire_release_1_session": r(&one),
                "named_acquire_release_64_sessions": r(&many),
                "heartbeats_64_servers_1000_partitions": r(&hb),
                "partitions_owned": owned,
                "heartbeat_load_at_default_interval_percent_of_capacity": hb_share,
            }))?
        );
    } else {
        println!("lock manager on 127.0.0.1, clients in the same process, 2 worker threads");
        println!("| workload | per second | p50 | p99 |");
        println!("|---|---:|---:|---:|");
        println!("| named lease acquire+release, 1 session, 1024 names | {:.0} | {} us | {} us |", one.ops_per_s, one.p50_us, one.p99_us);
        println!(
            "| named lease acquire+release, 64 sessions, 1024 names | {:.0} | {} us | {} us |",
            many.ops_per_s, many.p50_us, many.p99_us
        );
        println!(
            "| heartbeat round trips, 64 servers, {owned} partitions owned | {:.0} | {} us | {} us |",
            hb.ops_per_s, hb.p50_us, hb.p99_us
        );
        println!();
        println!("64 servers at the default 100 ms interval use {hb_share:.1}% of that heartbeat capacity.");
    }
    Ok(ExitCode::SUCCESS)
}
