//! `sharedisk bench storage`: append+publish and recovery rates on this machine.
//!
//! One thread, one partition of a fresh sparse volume file in `--dir`.
//! "publish only" makes each record visible with one CAS and no flush (safe
//! against kill -9, not against power loss); "flush every N" is the durable
//! group commit: N records, one data msync, one CAS, one head-word msync.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;
use sharedisk_storage::partition::{read_chain, replay};
use sharedisk_storage::{CreateOptions, Op, Partition, ProcessIdentity, Volume};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
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
    let mut p = Partition::claim(vol.clone(), reg, 0)?;
    let value = vec![b'v'; value_bytes];
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
    let BenchCommand::Storage { dir, seconds, json } = cmd;
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
                assert_eq!(p.len() as u64, row.records);
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
