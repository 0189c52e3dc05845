//! `sharedisk up`: a whole cluster on this machine in one command.
//!
//! Creates the volume if absent (keeps it otherwise), starts the lock manager
//! and N servers as children on 127.0.0.1, waits until every partition is
//! served, prints the endpoints and how to connect, and stays in the
//! foreground. Ctrl-C or SIGTERM stops the servers (each commits and hands
//! back its partitions) and then the lock manager. Children die with us even
//! if we are killed (`PR_SET_PDEATHSIG`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sharedisk_lockmgr::client::Client;
use sharedisk_storage::{CreateOptions, Volume};

const DIE_WITH_PARENT_ENV: &str = "SHAREDISK_DIE_WITH_PARENT";

/// Called first by `server` and `lockmgr`: when started by `up`, die with it.
pub fn die_with_parent_if_asked() {
    if std::env::var_os(DIE_WITH_PARENT_ENV).is_some() {
        let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
        // The parent may have died before the prctl took effect.
        if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
            std::process::exit(1);
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Where the volume lives (created if absent; reused, data and all, if present).
    #[arg(long, default_value = "sharedisk-data")]
    dir: PathBuf,
    /// Number of servers.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    servers: u16,
    /// Partitions of a new volume (an existing volume keeps its own).
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// Lock manager port; servers listen on the next N ports.
    #[arg(long, default_value_t = 7000)]
    port: u16,
    /// Size of a new volume: sparse, so it takes disk only as data is
    /// written (and the log's garbage until the cleaner reclaims it, which
    /// it does when a partition runs short of free segments). 16 GiB: 1 GiB
    /// per partition of the default 16, room for a value of 512 MB.
    #[arg(long, default_value = "16GiB", value_parser = crate::units::parse_size)]
    size: u64,
    /// Hot standbys: 1 (every partition followed by another server, so a
    /// failover or move reads only the lag; a second copy of the index in
    /// memory) or 0.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    standbys: u8,
    /// Lock managers: one active, the others standing by to take over
    /// within one lease (ports after the servers' ones).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=4))]
    lockmgrs: u8,
    /// The default user's password for every server (the file's first
    /// line; see `sharedisk server --requirepass-file`).
    #[arg(long)]
    requirepass_file: Option<PathBuf>,
    /// One ACL file for every server (see `sharedisk server --aclfile`;
    /// each server's `ACL SAVE` writes it, the others read it at start or
    /// on `ACL LOAD`).
    #[arg(long)]
    aclfile: Option<PathBuf>,
    /// RESP over TLS only on every server, with this certificate (see
    /// `sharedisk server --tls-cert-file`; valid for 127.0.0.1). Needs
    /// --tls-key-file and --tls-ca-cert-file.
    #[arg(long, requires_all = ["tls_key_file", "tls_ca_cert_file"])]
    tls_cert_file: Option<PathBuf>,
    #[arg(long, requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    #[arg(long, requires = "tls_cert_file")]
    tls_ca_cert_file: Option<PathBuf>,
    /// Whether clients need a certificate (see `sharedisk server --tls-auth-clients`).
    #[arg(long, value_enum, requires = "tls_cert_file")]
    tls_auth_clients: Option<super::server::AuthClients>,
    /// Serve the live page (see `sharedisk lockmgr --http`): the first
    /// lock manager's on 127.0.0.1:PORT, the others' on the ports after it.
    /// Any of them shows the whole cluster.
    #[arg(long, value_name = "PORT")]
    http: Option<u16>,
    /// How the lock managers and servers log (their lines are forwarded).
    #[command(flatten)]
    pub log: super::log::LogArgs,
}

/// The least time between two starts of one lock manager by `up`.
const RESTART_PAUSE: Duration = Duration::from_secs(2);

/// A child that is stopped when dropped: SIGTERM, a grace period, then SIGKILL.
pub(crate) struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    pub(crate) fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_child(&self.child)
    }
    fn terminate(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = rustix::process::kill_process(self.pid(), rustix::process::Signal::TERM);
        }
    }
    fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.terminate();
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("up: {} did not stop within {grace:?}; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Start `sharedisk ARGS` and wait for a stdout line containing `ready`;
/// later output is forwarded with the child's name (or dropped).
pub(crate) fn start(name: &str, args: &[String], ready: &str, forward: bool) -> Result<(Proc, String)> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the sharedisk executable")?;
    // Own process group: Ctrl-C reaches only us, and we stop the children in order.
    let mut child = Command::new(exe)
        .process_group(0)
        .args(args)
        .env(DIE_WITH_PARENT_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let out = child.stdout.take().expect("piped");
    let mut proc = Proc { name: name.to_owned(), child };
    let (tx, rx) = std::sync::mpsc::channel();
    let label = name.to_owned();
    let ready_text = ready.to_owned();
    std::thread::spawn(move || {
        let mut first = Some(tx);
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            match &first {
                Some(tx) if line.contains(&ready_text) => {
                    let _ = tx.send(line);
                    first = None;
                }
                _ if forward => println!("[{label}] {line}"),
                _ => {}
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => Ok((proc, line)),
        Err(_) => {
            proc.stop(Duration::from_secs(1));
            bail!("{name} did not report `{ready}` within 30 s (see its messages above)")
        }
    }
}

pub fn run(args: UpArgs) -> Result<ExitCode> {
    if let Some(p) = args.http {
        let (pages, used) = (
            u32::from(p)..u32::from(p) + u32::from(args.lockmgrs),
            u32::from(args.port)..=u32::from(args.port) + u32::from(args.servers) + u32::from(args.lockmgrs) - 1,
        );
        if p == 0 || pages.end > 65536 {
            bail!("--http {p}: the {} lock managers' pages need ports {}-{}", args.lockmgrs, pages.start.max(1), pages.end - 1);
        }
        if pages.clone().any(|q| used.contains(&q)) {
            bail!("--http {p}: the pages' ports {}-{} overlap the cluster's {}-{}", pages.start, pages.end - 1, used.start(), used.end());
        }
    }
    if u32::from(args.port) + u32::from(args.servers) + u32::from(args.lockmgrs) > 65535 {
        bail!("--port {} leaves no room for {} servers and {} lock managers", args.port, args.servers, args.lockmgrs);
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let volume = args.dir.join("volume");
    let partitions = if volume.exists() {
        let v = Volume::open(&volume).with_context(|| format!("{} exists but is not a usable volume", volume.display()))?;
        println!("up: reusing {} ({} partitions; data kept)", volume.display(), v.geometry().partitions);
        v.geometry().partitions
    } else {
        let v = Volume::create(&volume, &CreateOptions::new(args.size, args.partitions))
            .with_context(|| format!("cannot create {}", volume.display()))?;
        println!("up: created {} ({} bytes, sparse, {} partitions)", volume.display(), args.size, v.geometry().partitions);
        v.geometry().partitions
    };
    // Everything that talks to the lock manager proves it knows this.
    let secret_path = args.dir.join("cluster.secret");
    let secret = if secret_path.exists() {
        sharedisk_lockmgr::Secret::load(&secret_path)?
    } else {
        let s = sharedisk_lockmgr::Secret::create_file(&secret_path)?;
        println!("up: wrote a new cluster secret to {}", secret_path.display());
        s
    };
    let secret_arg = secret_path.to_string_lossy().into_owned();
    let vol_arg = volume.to_string_lossy().into_owned();
    // The first lock manager on --port, the others after the servers.
    let lm_addrs: Vec<String> = (0..u16::from(args.lockmgrs))
        .map(|j| format!("127.0.0.1:{}", if j == 0 { args.port } else { args.port + args.servers + j }))
        .collect();
    let lm_addr = lm_addrs.join(",");
    let s = |v: &str| v.to_owned();
    let log_format = if args.log.log_format == super::log::Format::Json { "json" } else { "text" };
    let lm_args = |j: usize, addr: &str| {
        let listen = addr.to_owned();
        let mut a = vec![
            s("lockmgr"),
            s("--volume"),
            vol_arg.clone(),
            s("--listen"),
            listen,
            s("--secret-file"),
            secret_arg.clone(),
            s("--log-format"),
            s(log_format),
        ];
        if let Some(port) = args.http {
            a.extend([s("--http"), format!("127.0.0.1:{}", u32::from(port) + j as u32)]);
        }
        a
    };
    let mut lockmgrs = Vec::new();
    for (j, addr) in lm_addrs.iter().enumerate() {
        // The first one becomes active (an old active one on this volume
        // is dead, or `up` would not own the ports); wait for that.
        let ready = if j == 0 { "lockmgr: serving " } else { "lockmgr: standing by on " };
        lockmgrs.push(start(&format!("lockmgr{}", j + 1), &lm_args(j, addr), ready, true)?.0);
    }
    let mut lm_started = vec![Instant::now(); lockmgrs.len()];
    let mut servers = Vec::new();
    for i in 1..=args.servers {
        let name = format!("s{i}");
        let listen = format!("127.0.0.1:{}", args.port + i);
        let mut a = vec![
            s("server"),
            s("--volume"),
            vol_arg.clone(),
            s("--lockmgr"),
            lm_addr.clone(),
            s("--listen"),
            listen.clone(),
            s("--id"),
            name.clone(),
            s("--standbys"),
            args.standbys.to_string(),
            s("--secret-file"),
            secret_arg.clone(),
            s("--log-format"),
            s(log_format),
        ];
        if let Some(f) = &args.requirepass_file {
            a.extend([s("--requirepass-file"), f.to_string_lossy().into_owned()]);
        }
        if let Some(f) = &args.aclfile {
            a.extend([s("--aclfile"), f.to_string_lossy().into_owned()]);
        }
        for (flag, f) in [
            ("--tls-cert-file", &args.tls_cert_file),
            ("--tls-key-file", &args.tls_key_file),
            ("--tls-ca-cert-file", &args.tls_ca_cert_file),
        ] {
            if let Some(f) = f {
                a.extend([s(flag), f.to_string_lossy().into_owned()]);
            }
        }
        if let Some(auth) = args.tls_auth_clients {
            use clap::ValueEnum;
            a.extend([s("--tls-auth-clients"), auth.to_possible_value().expect("no variant is skipped").get_name().to_owned()]);
        }
        let (p, _) = start(&name, &a, "serving RESP on ", true)?;
        servers.push((p, listen));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(wait_balanced(&lm_addr, partitions, args.servers, &secret))?;
    println!();
    println!("  sharedisk is up: {} servers, {partitions} partitions, volume {}", args.servers, volume.display());
    println!();
    println!("  ROLE          ADDRESS");
    for (j, addr) in lm_addrs.iter().enumerate() {
        println!("  lock manager  {addr}{}", if j == 0 { "  (active at start)" } else { "  (standby)" });
    }
    for (p, addr) in &servers {
        println!("  server {:<6} {addr}", p.name);
    }
    println!();
    match (&args.tls_cert_file, &args.tls_ca_cert_file) {
        (Some(_), Some(ca)) => {
            println!("  connect:  redis-cli --tls --cacert {} --cert CLIENT.crt --key CLIENT.key -c -p {}", ca.display(), args.port + 1)
        }
        _ => println!("  connect:  redis-cli -c -p {}", args.port + 1),
    }
    println!("  status:   sharedisk admin --lockmgr {lm_addr} --secret-file {secret_arg} status");
    if let Some(port) = args.http {
        println!("  page:     http://127.0.0.1:{port}/");
    }
    println!("  stop:     Ctrl-C");
    println!();
    let _ = std::io::stdout().flush();
    let mut reported = vec![false; servers.len()];
    let why = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok::<_, anyhow::Error>("interrupted".to_owned()),
                _ = term.recv() => return Ok("terminated".to_owned()),
                _ = tick.tick() => {}
            }
            // A lock manager that exits (deposed, or killed) comes back as a
            // standby; the others carry on meanwhile.
            // At most one start per lock manager every RESTART_PAUSE: one
            // that fails at once (a damaged map, say) is not restarted in a
            // tight loop.
            for ((j, lm), started) in lockmgrs.iter_mut().enumerate().zip(lm_started.iter_mut()) {
                if started.elapsed() >= RESTART_PAUSE
                    && let Ok(Some(st)) = lm.child.try_wait()
                {
                    println!("up: lock manager {} exited ({st}); starting it again", j + 1);
                    *started = Instant::now();
                    match start(&format!("lockmgr{}", j + 1), &lm_args(j, &lm_addrs[j]), "lockmgr: standing by on ", true) {
                        Ok((p, _)) => *lm = p,
                        Err(e) => return Ok(format!("lock manager {} cannot start again: {e:#}", j + 1)),
                    }
                }
            }
            for i in 0..servers.len() {
                if !reported[i]
                    && let Ok(Some(st)) = servers[i].0.child.try_wait()
                {
                    reported[i] = true;
                    let rest = if reported.iter().any(|r| !r) {
                        "the others took over its partitions"
                    } else {
                        "no server is left to serve its partitions"
                    };
                    println!("up: server {} exited ({st}); {rest}", servers[i].0.name);
                }
            }
        }
    })?;
    println!("up: {why}; stopping servers, then the lock manager");
    // All at once: stopping one by one would hand partitions to servers about to stop.
    for (p, _) in &mut servers {
        p.terminate();
    }
    for (mut p, _) in servers {
        p.stop(Duration::from_secs(5));
    }
    drop(lockmgrs);
    println!("up: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Until every partition is owned and the servers' loads differ by at most
/// one; asks for a rebalance whenever no move is in flight. A loaded volume
/// takes a while (claims read whole logs): it shows progress every 2 s, and
/// gives up only after 30 s without any.
async fn wait_balanced(lm: &str, partitions: u32, servers: u16, secret: &sharedisk_lockmgr::Secret) -> Result<()> {
    const PATIENCE: Duration = Duration::from_secs(30);
    let (client, _events) = Client::connect_any(&[lm.to_owned()], Some(secret)).await?;
    let started = Instant::now();
    let (mut last, mut changed, mut shown) = (None, Instant::now(), Instant::now());
    loop {
        let st = client.status().await?;
        let owned = st.partitions.iter().filter(|p| p.state == "owned").count() as u32;
        let loads: Vec<u32> = st.servers.iter().filter(|s| s.alive).map(|s| s.partitions).collect();
        let (min, max) = (loads.iter().copied().min().unwrap_or(0), loads.iter().copied().max().unwrap_or(0));
        if owned == partitions && loads.len() == usize::from(servers) && max - min <= 1 {
            return Ok(());
        }
        if owned == partitions && loads.len() == usize::from(servers) {
            client.call(sharedisk_lockmgr::core::Request::Rebalance).await?;
        }
        let now = (owned, loads.clone());
        if last.as_ref() != Some(&now) {
            last = Some(now);
            changed = Instant::now();
        }
        if changed.elapsed() >= PATIENCE {
            bail!("the cluster made no progress for 30 s: {owned}/{partitions} partitions served, loads {loads:?}");
        }
        if shown.elapsed() >= Duration::from_secs(2) {
            shown = Instant::now();
            println!(
                "up: {owned}/{partitions} partitions served, {}/{servers} servers registered, loads {loads:?} ({:.0} s)",
                loads.len(),
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
