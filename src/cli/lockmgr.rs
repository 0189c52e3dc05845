//! `sharedisk lockmgr` and `sharedisk admin`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use sharedisk_lockmgr::Timeouts;
use sharedisk_lockmgr::client::Client;
use sharedisk_lockmgr::core::{Request, Response};
use sharedisk_lockmgr::election::{self, Seat};
use sharedisk_lockmgr::service::{Service, VolumeBackend};
use sharedisk_storage::Volume;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Args, Debug)]
pub struct LockmgrArgs {
    /// The shared volume (fences are PREEMPTs on it).
    #[arg(long)]
    volume: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: String,
    /// Base of every timeout (heartbeat interval); the lease is 6x this.
    #[arg(long, default_value = "100ms", value_parser = parse_ms)]
    base: Duration,
    #[command(flatten)]
    secret: super::secret::SecretArgs,
    /// Listen beyond loopback without a cluster secret (anyone who can
    /// reach the port may then register servers and move partitions).
    #[arg(long)]
    insecure_no_secret: bool,
    /// Serve Prometheus metrics over HTTP at this address (`/metrics`,
    /// `/health`): sessions, partitions by state, owners, epochs, standby
    /// lag, term, grants, fences and their latency, persist latency, and
    /// each handover step's duration (as `admin events` shows them). A
    /// standby answers `sharedisk_lockmgr_active 0`.
    #[arg(long)]
    metrics: Option<String>,
    /// Serve the live page over HTTP at this address: the slot and
    /// partition map, the servers and their health, the last handovers as
    /// bars, updated twice a second (`/`; its data at `/status.json`). A
    /// standby lock manager serves it too, asking the active one, so a page
    /// open on it lives through a lock-manager failover. Read-only, no
    /// login: an address beyond loopback needs --insecure-http; a request
    /// must name the host by IP address or `localhost` (a DNS-rebinding
    /// page cannot read it).
    #[arg(long)]
    http: Option<String>,
    /// Serve `--http` on an address beyond loopback.
    #[arg(long, requires = "http")]
    insecure_http: bool,
    #[command(flatten)]
    pub log: super::log::LogArgs,
}

fn parse_ms(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, mul) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else {
        return Err(format!("invalid duration {s:?}: use e.g. 100ms or 1s"));
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("invalid duration {s:?}"))?;
    Ok(Duration::from_millis(n.checked_mul(mul).ok_or_else(|| format!("duration {s:?} too large"))?))
}

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The lock managers (comma-separated): the active one is found.
    #[arg(long, default_value = "127.0.0.1:7000")]
    lockmgr: String,
    #[command(flatten)]
    secret: super::secret::SecretArgs,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Servers, partitions, owners and fence tokens.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Move one partition to a server (no lease wait; the owner releases first).
    Move { partition: u32, server: String },
    /// Move every partition off a server.
    Drain { server: String },
    /// Even out partitions across live servers.
    Rebalance,
    /// The last ownership changes (failovers, moves, stops), step by step:
    /// when the owner was lost or the move asked, fenced, released,
    /// granted, first served, and how long each step took.
    Events {
        #[arg(long)]
        json: bool,
    },
}

/// `admin events`: one line per handover, each step's duration since the
/// step before it.
fn events_text(st: &sharedisk_lockmgr::core::Status) -> Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    writeln!(
        out,
        "{:>4}  {:<17} {:<10} {:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "part", "cause", "from", "to", "fence", "release", "grant", "serve", "total", "ago"
    )?;
    let ms = |d: u64| format!("{d}ms");
    for h in &st.handovers {
        let cause = h.cause.name().replace('_', " ");
        let [fence, release, grant, serve, total] = h.steps().map(|(_, d)| d.map_or("-".to_owned(), ms));
        writeln!(
            out,
            "{:>4}  {cause:<17} {:<10} {:<10} {fence:>9} {release:>9} {grant:>9} {serve:>9} {total:>9} {:>7}s",
            h.partition,
            h.from.as_deref().unwrap_or("-"),
            h.to.as_deref().unwrap_or("-"),
            format!("{:.1}", st.now_ms.saturating_sub(h.start_ms) as f64 / 1000.0),
        )?;
    }
    Ok(out)
}

/// Where the live page's `/status.json` comes from: this lock manager's
/// core while it is active, else the active one, asked over the protocol
/// (one connection, kept while that one stays active). One answer serves
/// every poll for `PAGE_CACHE`, and one ask takes at most `PAGE_ASK`: a
/// flood of polls costs the core a status a quarter-second at most, and no
/// poll waits behind a slow one for long.
#[derive(Clone)]
struct PageSource {
    serving: Arc<std::sync::Mutex<Option<sharedisk_lockmgr::service::MetricsHandle>>>,
    vol: Arc<Volume>,
    secret: Option<sharedisk_lockmgr::Secret>,
    addr: String,
    timeouts: Timeouts,
    #[allow(clippy::type_complexity)]
    last: Arc<tokio::sync::Mutex<(Option<(std::time::Instant, sharedisk_lockmgr::page::PageState)>, Option<ActiveConn>)>>,
}

/// The standby's connection to the active lock manager (its address, the
/// client, and the client's event stream, kept so the client stays whole).
type ActiveConn = (String, Client, tokio::sync::mpsc::UnboundedReceiver<sharedisk_lockmgr::client::Event>);

const PAGE_CACHE: Duration = Duration::from_millis(250);
const PAGE_ASK: Duration = Duration::from_millis(1500);

impl PageSource {
    async fn state(&self) -> sharedisk_lockmgr::page::PageState {
        let mut last = self.last.lock().await;
        if let Some((at, st)) = &last.0
            && at.elapsed() < PAGE_CACHE
        {
            return st.clone();
        }
        let handle = self.serving.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (role, status) = match handle {
            Some(h) => match tokio::time::timeout(PAGE_ASK, h.status()).await {
                Ok(Some(st)) => ("active", Ok(st)),
                Ok(None) => ("active", Err("stopping".to_owned())),
                Err(_) => ("active", Err(format!("its core did not answer within {PAGE_ASK:?}"))),
            },
            None => ("standby", self.ask_active(&mut last.1).await),
        };
        let (status, error) = match status {
            Ok(st) => (Some(st), None),
            Err(e) => (None, Some(e)),
        };
        let st = sharedisk_lockmgr::page::PageState {
            role,
            addr: self.addr.clone(),
            term: self.vol.lockmgr_lease().ok().map(|l| l.term).filter(|t| *t > 0),
            heartbeat_ms: self.timeouts.heartbeat_interval.as_millis() as u64,
            lease_ms: self.timeouts.lease_timeout.as_millis() as u64,
            status,
            error,
        };
        last.0 = Some((std::time::Instant::now(), st.clone()));
        st
    }

    /// The active lock manager's status, within `PAGE_ASK` in all (connecting included).
    async fn ask_active(&self, conn: &mut Option<ActiveConn>) -> Result<sharedisk_lockmgr::core::Status, String> {
        let Some(active) = sharedisk_lockmgr::election::active_addr(&self.vol) else {
            return Err("no lock manager is active yet (an election is under way, or none runs)".to_owned());
        };
        if active == self.addr {
            return Err("taking over as the active lock manager".to_owned());
        }
        let ask = async {
            if conn.as_ref().is_none_or(|(a, ..)| *a != active) {
                *conn = None;
                let (c, events) = Client::connect(&active, self.secret.as_ref())
                    .await
                    .map_err(|e| format!("cannot ask the active lock manager {active}: {e}"))?;
                *conn = Some((active.clone(), c, events));
            }
            match conn.as_ref() {
                Some((_, c, _)) => c.status().await.map_err(|e| format!("the active lock manager {active} did not answer: {e}")),
                None => Err("no connection".to_owned()),
            }
        };
        let r = tokio::time::timeout(PAGE_ASK, ask)
            .await
            .unwrap_or_else(|_| Err(format!("the active lock manager {active} did not answer within {PAGE_ASK:?}")));
        if r.is_err() {
            *conn = None;
        }
        r
    }
}

pub fn run_lockmgr(args: LockmgrArgs) -> Result<ExitCode> {
    crate::up::die_with_parent_if_asked();
    let timeouts = Timeouts::from_base(args.base);
    timeouts.validate().map_err(|e| anyhow::anyhow!("invalid timeouts: {e}"))?;
    let vol = Arc::new(Volume::open(&args.volume).with_context(|| format!("cannot open volume {}", args.volume.display()))?);
    let partitions = vol.geometry().partitions;
    let secret = args.secret.load()?;
    if secret.is_none() && !args.insecure_no_secret && super::secret::beyond_loopback(&args.listen) {
        bail!(
            "refusing to listen on {} without a cluster secret: anyone who can reach it could register servers, \
             move partitions and read the map. Pass --secret-file (make one with `sharedisk secret new FILE`), \
             listen on 127.0.0.1, or pass --insecure-no-secret",
            args.listen
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?.to_string();
        // Metrics from the start: a standby says it is one; once active, the core answers.
        let serving: Arc<std::sync::Mutex<Option<sharedisk_lockmgr::service::MetricsHandle>>> = Arc::default();
        if let Some(m) = &args.metrics {
            let l = tokio::net::TcpListener::bind(m).await.with_context(|| format!("cannot listen for metrics on {m}"))?;
            tracing::info!("lockmgr: metrics on http://{}/metrics", l.local_addr()?);
            let serving = serving.clone();
            tokio::spawn(sharedisk_lockmgr::metrics::serve(l, move || {
                let handle = serving.lock().unwrap_or_else(|e| e.into_inner()).clone();
                async move {
                    let standby = "# HELP sharedisk_lockmgr_active 1: this lock manager is the active one.\n# TYPE sharedisk_lockmgr_active gauge\nsharedisk_lockmgr_active 0\n# EOF\n";
                    match handle {
                        Some(h) => h.render().await.unwrap_or_else(|| standby.to_owned()),
                        None => standby.to_owned(),
                    }
                }
            }));
        }
        if let Some(h) = &args.http {
            if super::secret::beyond_loopback(h) && !args.insecure_http {
                bail!(
                    "refusing to serve the page on {h}: it shows the cluster's map to anyone who can reach it, with no login. \
                     Serve it on 127.0.0.1 (and reach it through an SSH tunnel or a proxy that asks for a login), or pass --insecure-http"
                );
            }
            let l = tokio::net::TcpListener::bind(h).await.with_context(|| format!("cannot listen for the page on {h}"))?;
            tracing::info!("lockmgr: page on http://{}/", l.local_addr()?);
            let source = PageSource {
                serving: serving.clone(),
                vol: vol.clone(),
                secret: secret.clone(),
                addr: addr.clone(),
                timeouts,
                last: Arc::default(),
            };
            tokio::spawn(sharedisk_lockmgr::page::serve(l, move || {
                let source = source.clone();
                async move { source.state().await }
            }));
        }
        // Several lock managers may serve one volume: each holds a seat, one
        // holds the lease (the volume decides, by CAS; no file lock).
        let seat = Arc::new(Seat::claim(vol.clone(), &addr).context("cannot take a lock-manager seat on the volume")?);
        tracing::info!(addr = %addr, seat = seat.seat().seat, "lockmgr: standing by on {addr} (seat {})", seat.seat().seat);
        let stop = Arc::new(AtomicBool::new(false));
        let (result_tx, result_rx) = tokio::sync::oneshot::channel();
        let campaign = {
            let (seat, stop) = (seat.clone(), stop.clone());
            std::thread::Builder::new().name("lockmgr-campaign".into()).spawn(move || {
                let _ = result_tx.send(seat.campaign(timeouts.lockmgr_lease, timeouts.lockmgr_poll, &stop));
            })?
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let pointer = vol.clone();
        // Stand by until the campaign ends: won, failed, or its thread died
        // (the sender dropped): never answer `NotActive` with nobody campaigning.
        let outcome = Arc::new(std::sync::Mutex::new(None));
        let ended = {
            let outcome = outcome.clone();
            async move {
                let r = result_rx.await;
                *outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            }
        };
        let standby_secret = secret.clone();
        let standby = async {
            Some(sharedisk_lockmgr::service::stand_by(listener, move || election::active_addr(&pointer), ended, standby_secret).await)
        };
        let listener = tokio::select! {
            l = standby => l,
            _ = tokio::signal::ctrl_c() => None,
            _ = term.recv() => None,
        };
        let Some(listener) = listener else {
            // Stop campaigning before the seat goes.
            stop.store(true, Ordering::Release);
            let _ = tokio::task::spawn_blocking(move || campaign.join()).await;
            // Had it just won, nothing was done with the lease: giving the
            // seat back lets a standby take it at once.
            let _ = seat.release();
            return Ok(ExitCode::SUCCESS);
        };
        let result = outcome.lock().unwrap_or_else(|e| e.into_inner()).take().expect("the campaign ended");
        let Some(reign) = result.context("the campaign thread died")?.context("cannot read the lock-manager lease")? else {
            return Ok(ExitCode::SUCCESS);
        };
        let deposed = Arc::new(tokio::sync::Notify::new());
        let d = deposed.clone();
        reign.keep_renewed(timeouts.lockmgr_renew, timeouts.lockmgr_lease * 8, move |e| {
            tracing::error!(error = %e, "lockmgr: {e}");
            d.notify_one();
        });
        let backend = Arc::new(VolumeBackend::with_reign(reign.clone()));
        let mut svc = Service::start_on(listener, partitions, timeouts, backend, secret).await.context("cannot start the lock manager")?;
        *serving.lock().unwrap_or_else(|e| e.into_inner()) = Some(svc.metrics());
        tracing::info!(
            addr = %svc.addr,
            term = reign.term(),
            "lockmgr: serving {partitions} partitions on {} (term {}, lease {:?})",
            svc.addr,
            reign.term(),
            timeouts.lease_timeout
        );
        let code = tokio::select! {
            _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
            _ = term.recv() => ExitCode::SUCCESS,
            _ = deposed.notified() => ExitCode::FAILURE,
            _ = svc.stopped() => ExitCode::FAILURE,
        };
        // Stop acting before the seat goes: a standby takes over at once.
        svc.abort();
        svc.stopped().await;
        if reign.is_current() {
            let _ = seat.release();
        } else {
            tracing::error!(term = reign.term(), "lockmgr: deposed from term {}: another lock manager is active; stopping", reign.term());
        }
        Ok(code)
    })
}

pub fn run_admin(args: AdminArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let secret = args.secret.load()?;
        let (client, _events) = Client::connect_any(std::slice::from_ref(&args.lockmgr), secret.as_ref()).await?;
        let request = match args.command {
            AdminCommand::Status { json } => {
                use std::fmt::Write as _;
                let st = client.status().await?;
                let mut out = String::new();
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&st)?)?;
                } else {
                    writeln!(out, "{:<16} {:<22} {:>8} {:>6}  role", "lock manager", "addr", "pid", "term")?;
                    for l in &st.lockmgrs {
                        let (term, role) = match (l.active, l.alive) {
                            (true, true) => (l.term.to_string(), "active"),
                            (true, false) => (l.term.to_string(), "active, but gone (a standby takes over)"),
                            (false, true) => ("-".to_owned(), "standby"),
                            (false, false) => ("-".to_owned(), "gone (seat free)"),
                        };
                        writeln!(out, "{:<16} {:<22} {:>8} {:>6}  {role}", format!("seat {}", l.seat), l.addr, l.pid, term)?;
                    }
                    writeln!(out)?;
                    writeln!(out, "{:<16} {:<22} {:>8} {:>6} {:>10}  key", "server", "addr", "pid", "parts", "heartbeat")?;
                    for s in &st.servers {
                        let note = if !s.alive {
                            "  DEAD"
                        } else if s.draining {
                            "  draining"
                        } else {
                            ""
                        };
                        writeln!(
                            out,
                            "{:<16} {:<22} {:>8} {:>6} {:>8}ms  {:#018x}{note}",
                            s.id, s.addr, s.pid, s.partitions, s.last_heartbeat_ms_ago, s.key
                        )?;
                    }
                    writeln!(out)?;
                    writeln!(
                        out,
                        "{:>4}  {:<16} {:<16} {:>10}  {:>6}  {:<13}  state",
                        "part", "owner", "standby", "lag", "token", "slots"
                    )?;
                    for p in &st.partitions {
                        let slots = format!("{}-{}", p.slots[0], p.slots[1]);
                        writeln!(
                            out,
                            "{:>4}  {:<16} {:<16} {:>10}  {:>6}  {slots:<13}  {}",
                            p.id,
                            p.owner.as_deref().unwrap_or("-"),
                            p.standby.as_deref().unwrap_or("-"),
                            lag_text(p.standby_lag.as_ref()),
                            p.fence_token,
                            p.state
                        )?;
                    }
                }
                // `admin status | head` closes the pipe early: that is not an error.
                match std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes()) {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                    _ => {}
                }
                return Ok(ExitCode::SUCCESS);
            }
            AdminCommand::Events { json } => {
                let st = client.status().await?;
                let out = if json {
                    let v = serde_json::json!({ "now_ms": st.now_ms, "handovers": st.handovers });
                    format!("{}\n", serde_json::to_string_pretty(&v)?)
                } else {
                    events_text(&st)?
                };
                match std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes()) {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                    _ => {}
                }
                return Ok(ExitCode::SUCCESS);
            }
            AdminCommand::Move { partition, server } => Request::Move { partition, server },
            AdminCommand::Drain { server } => Request::Drain { server },
            AdminCommand::Rebalance => Request::Rebalance,
        };
        match client.call(request).await? {
            Response::Accepted { moves } => {
                println!("accepted: {moves} move(s) started");
                Ok(ExitCode::SUCCESS)
            }
            Response::Error { code, message } => bail!("{code:?}: {message}"),
            other => bail!("unexpected answer {other:?}"),
        }
    })
}

/// A standby's lag for `admin status`: bytes behind its owner's head, or
/// `syncing` while it rebuilds its index, or `-` with no report.
fn lag_text(lag: Option<&sharedisk_lockmgr::core::StandbyLagStatus>) -> String {
    match lag {
        None => "-".into(),
        Some(l) if !l.synced => "syncing".into(),
        Some(l) if l.lag_bytes < 1 << 10 => format!("{} B", l.lag_bytes),
        Some(l) if l.lag_bytes < 1 << 20 => format!("{:.1} KiB", l.lag_bytes as f64 / 1024.0),
        Some(l) => format!("{:.1} MiB", l.lag_bytes as f64 / f64::from(1 << 20)),
    }
}
