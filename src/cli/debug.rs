//! `sharedisk debug …`: a scripted writer process for fault drills.
//!
//! `debug writer` registers a fresh key, claims one partition and appends
//! numbered batches, printing `acked N` only after batch N's group commit
//! returned. Tests kill -9 it, SIGSTOP it at a fail point, and compare what
//! recovery finds with what it acknowledged.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
#[cfg(feature = "failpoints")]
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::Subcommand;
use sharedisk_storage::{Op, Partition, ProcessIdentity, Volume};

use crate::units;

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Append numbered batches to one partition, printing `acked N` per durable batch.
    Writer {
        #[arg(long)]
        volume: PathBuf,
        #[arg(long, value_parser = units::parse_key)]
        key: u64,
        #[arg(long)]
        partition: u32,
        /// First batch number.
        #[arg(long, default_value_t = 0)]
        start_batch: u64,
        /// How many batches (0 = until killed).
        #[arg(long, default_value_t = 0)]
        batches: u64,
        #[arg(long, default_value_t = 8)]
        batch_ops: u32,
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// SIGSTOP this process at the named fail point (needs the `failpoints` build).
        #[arg(long)]
        stop_at: Option<String>,
        /// ... once this many batches were acknowledged.
        #[arg(long, default_value_t = 0)]
        stop_after_batches: u64,
    },
    /// Hold partitions for the lock manager like a server would (without
    /// serving clients): claim each granted partition on the volume, release
    /// on revoke. Prints `granted P TOKEN`, `released P`, `expired`.
    Holder {
        #[arg(long)]
        volume: PathBuf,
        #[arg(long)]
        lockmgr: String,
        #[command(flatten)]
        secret: super::secret::SecretArgs,
        #[arg(long)]
        id: String,
        #[arg(long, value_parser = units::parse_key)]
        key: u64,
    },
}

pub use sharedisk_testkit::batch::{batch_key, batch_value};

#[cfg(feature = "failpoints")]
static ARMED: AtomicBool = AtomicBool::new(false);

/// From now on, the next hit of the configured fail point stops us.
fn arm() {
    #[cfg(feature = "failpoints")]
    ARMED.store(true, Ordering::SeqCst);
}

fn arm_stop(name: &str) -> Result<()> {
    #[cfg(feature = "failpoints")]
    {
        fail::cfg_callback(name.to_owned(), || {
            if ARMED.swap(false, Ordering::SeqCst) {
                println!("stopping at fail point");
                let _ = std::io::stdout().flush();
                let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
            }
        })
        .map_err(|e| anyhow::anyhow!("fail point {name}: {e}"))?;
        Ok(())
    }
    #[cfg(not(feature = "failpoints"))]
    {
        anyhow::bail!("--stop-at {name}: this build has no fail points (build with --features failpoints)")
    }
}

pub fn run(cmd: DebugCommand) -> Result<ExitCode> {
    if let DebugCommand::Holder { volume, lockmgr, id, key, secret } = cmd {
        return holder(volume, lockmgr, id, key, secret.load()?);
    }
    let DebugCommand::Writer { volume, key, partition, start_batch, batches, batch_ops, value_bytes, stop_at, stop_after_batches } = cmd
    else {
        unreachable!("handled above")
    };
    if let Some(name) = &stop_at {
        arm_stop(name)?;
    }
    let vol = Arc::new(Volume::open(&volume).with_context(|| format!("cannot open {}", volume.display()))?);
    let reg = vol.register(key, ProcessIdentity::current())?;
    let mut part = Partition::claim(vol.clone(), reg, partition)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "claimed partition {partition} token {}", part.token())?;
    out.flush()?;
    let mut batch = start_batch;
    loop {
        if batches != 0 && batch >= start_batch + batches {
            break;
        }
        if stop_at.is_some() && batch - start_batch == stop_after_batches {
            arm();
        }
        let ops: Vec<Op> = (0..batch_ops)
            .map(|i| Op::Put { key: batch_key(batch, i), value: batch_value(batch, i, value_bytes).into(), expire_at_ms: 0 })
            .collect();
        let result = part.append(&ops, 0).and_then(|_| part.commit());
        match result {
            Ok(()) => {
                writeln!(out, "acked {batch}")?;
                out.flush()?;
            }
            Err(e) if e.is_fenced() => {
                writeln!(out, "fenced: {e}")?;
                out.flush()?;
                return Ok(ExitCode::from(3));
            }
            Err(e) => return Err(e.into()),
        }
        batch += 1;
    }
    writeln!(out, "done")?;
    Ok(ExitCode::SUCCESS)
}

fn holder(volume: PathBuf, lockmgr: String, id: String, key: u64, secret: Option<sharedisk_lockmgr::Secret>) -> Result<ExitCode> {
    use sharedisk_lockmgr::client::{Client, Event, Session};
    use sharedisk_lockmgr::core::ServerInfo;
    let vol = Arc::new(Volume::open(&volume).with_context(|| format!("cannot open {}", volume.display()))?);
    let reg = vol.register(key, ProcessIdentity::current())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut held: std::collections::BTreeMap<u32, (u64, Partition)> = Default::default();
        let say = |s: String| {
            println!("{s}");
            let _ = std::io::stdout().flush();
        };
        // Across lock-manager restarts: reconnect with the same key and keep
        // what we hold; the lock manager re-grants it with the same token.
        loop {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let (client, mut events) = loop {
                match Client::connect_any(std::slice::from_ref(&lockmgr), secret.as_ref()).await {
                    Ok(c) => break c,
                    Err(_) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let info = ServerInfo {
                server: id.clone(),
                key,
                addr: String::new(),
                pid: std::process::id(),
                standby: false,
                reports_standbys: false,
                keeps: Vec::new(),
            };
            let session = match Session::register(client, info).await {
                Ok(s) => s,
                Err(e) => {
                    say(format!("register refused: {e}"));
                    return Ok(ExitCode::from(4));
                }
            };
            say(format!("registered {}", session.id));
            while let Some(ev) = events.recv().await {
                match ev {
                    Event::Granted { partition, token } => {
                        if held.get(&partition).is_some_and(|(t, _)| *t == token) {
                            say(format!("reclaimed {partition} {token}"));
                            continue;
                        }
                        match Partition::claim(vol.clone(), reg, partition) {
                            Ok(p) => {
                                say(format!("granted {partition} {token} volume-token {}", p.token()));
                                held.insert(partition, (token, p));
                            }
                            Err(e) => {
                                say(format!("claim of {partition} refused: {e}"));
                                return Ok(ExitCode::from(4));
                            }
                        }
                    }
                    Event::Revoked { partition } => {
                        if let Some((token, p)) = held.remove(&partition) {
                            p.release()?;
                            session.release(partition, token).await?;
                            say(format!("released {partition}"));
                        }
                    }
                    Event::Expired => {
                        say("expired".into());
                        return Ok(ExitCode::from(4));
                    }
                    Event::Map(_) => {}
                    Event::Disconnected => {
                        say("disconnected".into());
                        break;
                    }
                }
            }
        }
    })
}
