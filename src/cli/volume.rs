//! `sharedisk volume …`

use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;
use sharedisk_storage::check::{self, PartitionReport};
use sharedisk_storage::volume::format_uuid;
use sharedisk_storage::{CreateOptions, SlotState, Volume};

use crate::VolumeCommand;
use crate::units::human_bytes;

fn key_hex(k: u64) -> String {
    format!("{k:#018x}")
}

fn state_name(s: SlotState) -> &'static str {
    match s {
        SlotState::Empty => "empty",
        SlotState::Registering => "registering",
        SlotState::Registered => "registered",
        SlotState::Fenced => "fenced",
    }
}

fn liveness_name(l: sharedisk_storage::Liveness) -> &'static str {
    match l {
        sharedisk_storage::Liveness::Alive => "alive",
        sharedisk_storage::Liveness::Dead => "dead (seat reusable)",
        sharedisk_storage::Liveness::Unknown => "unknown (another machine)",
    }
}

fn open(path: &std::path::Path) -> Result<Volume> {
    Volume::open(path).with_context(|| format!("cannot open volume {}", path.display()))
}

fn partition_json(r: &PartitionReport) -> serde_json::Value {
    json!({
        "id": r.partition,
        "owner_key": r.owner_key.map(key_hex),
        "owner_slot": r.owner_slot,
        "fence_token": r.fence_token,
        "chain_segments": r.chain_segments,
        "records": r.records,
        "log_bytes": r.log_bytes,
        "bytes_used": r.bytes_used,
        "bytes_free": r.bytes_free,
        "free_segments": r.free_segments,
        "open_segments": r.open_segments,
        "sealed_segments": r.sealed_segments,
        "torn_commit": r.torn_commit,
        "error": r.error,
    })
}

pub fn run(cmd: VolumeCommand) -> Result<ExitCode> {
    match cmd {
        VolumeCommand::Create { path, size, partitions, segment_size, slots, force, preallocate } => {
            let segment_bytes = u32::try_from(segment_size).map_err(|_| anyhow::anyhow!("segment size {segment_size} is too large"))?;
            let opts = CreateOptions { volume_bytes: size, partitions, registrant_slots: slots, segment_bytes, force, preallocate };
            let vol = Volume::create(&path, &opts).with_context(|| format!("cannot create volume {}", path.display()))?;
            let g = vol.geometry();
            println!(
                "created {}: {} in {} partitions of {} segments x {} ({} per partition), uuid {}",
                path.display(),
                human_bytes(g.volume_bytes),
                g.partitions,
                g.segments_per_partition,
                human_bytes(u64::from(g.segment_bytes)),
                human_bytes(g.partition_data_bytes),
                format_uuid(&vol.uuid())
            );
        }
        VolumeCommand::Inspect { path, json } => {
            let vol = open(&path)?;
            let g = *vol.geometry();
            let lease = vol.lockmgr_lease()?;
            let seats = vol.lockmgr_seats();
            let res = vol.read_reservation();
            let slots = vol.read_full_status();
            let parts: Vec<PartitionReport> = (0..g.partitions).map(|p| check::inspect_partition(&vol, p)).collect();
            if json {
                let v = json!({
                    "path": path,
                    "uuid": format_uuid(&vol.uuid()),
                    "format_version": sharedisk_storage::layout::FORMAT_VERSION,
                    "volume_bytes": g.volume_bytes,
                    "partitions": g.partitions,
                    "segment_bytes": g.segment_bytes,
                    "segments_per_partition": g.segments_per_partition,
                    "registrant_slots": g.registrant_slots,
                    "reservation": {
                        "generation": res.generation,
                        "type": "Write Exclusive - Registrants Only",
                        "type_code": res.type_code,
                        "registrants": slots.iter().map(|s| json!({
                            "slot": s.slot, "key": key_hex(s.key), "state": state_name(s.state), "pid": s.identity.pid,
                        })).collect::<Vec<_>>(),
                    },
                    "lockmgr_lease": { "term": lease.term, "seat": lease.seat, "renewals": lease.count },
                    "lockmgr_seats": seats.iter().map(|s| json!({
                        "seat": s.seat, "pid": s.identity.pid, "addr": s.addr, "liveness": liveness_name(s.identity.liveness()),
                        "active": lease.seat == Some(s.seat),
                    })).collect::<Vec<_>>(),
                    "partition_table": parts.iter().map(partition_json).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("volume      {}", path.display());
                println!("uuid        {}", format_uuid(&vol.uuid()));
                println!("size        {} ({} bytes)", human_bytes(g.volume_bytes), g.volume_bytes);
                println!(
                    "geometry    {} partitions x {} segments x {} ({} each), {} registrant slots",
                    g.partitions,
                    g.segments_per_partition,
                    human_bytes(u64::from(g.segment_bytes)),
                    human_bytes(g.partition_data_bytes),
                    g.registrant_slots
                );
                println!("reservation Write Exclusive - Registrants Only, generation {}", res.generation);
                for s in &slots {
                    println!("  slot {:>3}  key {}  {:<11} pid {}", s.slot, key_hex(s.key), state_name(s.state), s.identity.pid);
                }
                match lease.seat {
                    Some(s) => println!("lock manager lease: term {}, held by seat {s}", lease.term),
                    None => println!("lock manager lease: never held"),
                }
                for s in &seats {
                    println!(
                        "  seat {}  pid {:<8} {:<22} {}{}",
                        s.seat,
                        s.identity.pid,
                        s.addr,
                        liveness_name(s.identity.liveness()),
                        if lease.seat == Some(s.seat) { ", active" } else { "" }
                    );
                }
                println!();
                println!(
                    "{:>4}  {:<18}  {:>6}  {:>5}  {:>8}  {:>10}  {:>10}  {:>10}",
                    "part", "owner key", "token", "segs", "records", "log", "used", "free"
                );
                for r in &parts {
                    println!(
                        "{:>4}  {:<18}  {:>6}  {:>5}  {:>8}  {:>10}  {:>10}  {:>10}{}",
                        r.partition,
                        r.owner_key.map_or("-".to_owned(), key_hex),
                        r.fence_token,
                        r.chain_segments,
                        r.records,
                        human_bytes(r.log_bytes),
                        human_bytes(r.bytes_used),
                        human_bytes(r.bytes_free),
                        match (&r.error, &r.torn_commit) {
                            (Some(e), _) => format!("  ERROR: {e}"),
                            (None, Some(why)) => format!("  torn last commit (unacknowledged; the next claim drops it): {why}"),
                            (None, None) => String::new(),
                        }
                    );
                }
            }
        }
        VolumeCommand::Keys { path, json } => {
            let vol = open(&path)?;
            let res = vol.read_reservation();
            let keys = vol.read_keys();
            if json {
                let v = json!({ "generation": res.generation, "keys": keys.iter().map(|&k| key_hex(k)).collect::<Vec<_>>() });
                println!("{v}");
            } else {
                println!("  PR generation={:#x}, {} registered reservation key(s) follow:", res.generation, keys.len());
                for k in keys {
                    println!("    {}", key_hex(k));
                }
            }
        }
        VolumeCommand::Preempt { path, key } => {
            let vol = open(&path)?;
            let report = vol.preempt(key).with_context(|| format!("cannot preempt key {}", key_hex(key)))?;
            let fenced: Vec<String> = report.fenced.iter().map(|(p, t)| format!("{p} (token now {t})")).collect();
            println!(
                "preempted key {}: removed from slot {}; fenced partitions: {}",
                key_hex(key),
                report.slot,
                if fenced.is_empty() { "none".to_owned() } else { fenced.join(", ") }
            );
        }
        VolumeCommand::Check { path, json } => {
            let vol = open(&path)?;
            let problems = check::check(&vol);
            if json {
                let v = json!({
                    "consistent": problems.is_empty(),
                    "problems": problems.iter().map(|p| json!({"what": p.what, "offset": p.offset, "detail": p.detail})).collect::<Vec<_>>(),
                });
                println!("{v}");
            } else if problems.is_empty() {
                println!("ok: {} is consistent ({} partitions)", path.display(), vol.geometry().partitions);
            } else {
                println!("{} problem(s) in {}:", problems.len(), path.display());
                for p in &problems {
                    println!("  {p}");
                }
            }
            if !problems.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        VolumeCommand::FreeSeat { path, seat } => {
            let vol = open(&path)?;
            let seats = sharedisk_storage::layout::LM_SEATS;
            if u64::from(seat) >= seats {
                anyhow::bail!("no seat {seat}: the volume has {seats} (0..={})", seats - 1);
            }
            let Some(info) = vol.seat_info(seat) else {
                println!("seat {seat} is already free");
                return Ok(ExitCode::SUCCESS);
            };
            if info.identity.liveness() == sharedisk_storage::Liveness::Alive {
                anyhow::bail!(
                    "seat {seat} is held by a running process (pid {}, {}); stop that lock manager instead",
                    info.identity.pid,
                    info.addr
                );
            }
            vol.release_lockmgr_seat(sharedisk_storage::LmSeat { seat, id: info.id })?;
            println!("freed seat {seat} (was pid {}, {})", info.identity.pid, info.addr);
        }
        VolumeCommand::Reap { path } => {
            let vol = open(&path)?;
            let reaped = vol.reap()?;
            println!(
                "reaped {} dead incarnation(s){}",
                reaped.len(),
                reaped.iter().map(|&k| format!(" {}", key_hex(k))).collect::<String>()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
