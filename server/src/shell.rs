//! The server process: its listener, its lock-manager session, and the
//! shell that carries out the control core's actions.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sharedisk_lockmgr::client::{Client, ClientError, Event as LmEvent, Session};
use sharedisk_lockmgr::core::{ClusterMap, Request as LmRequest, ServerInfo};
use sharedisk_storage::{Partition, ProcessIdentity, Registration, Volume};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::cluster::{ClusterView, Node};
use crate::conn;
use crate::control::{Action, Control, Event};
use crate::engine::{self, Lease, Msg};

/// How to run a server (the `sharedisk server` flags).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The shared volume file.
    pub volume: PathBuf,
    /// The lock manager's address.
    pub lockmgr: String,
    /// Where to serve RESP (port 0 picks a free port; the chosen address is printed).
    pub listen: String,
    /// This server's stable name: its node id derives from it.
    pub id: String,
    /// The address clients are told to use (default: the bound listen address).
    pub advertise: Option<String>,
    /// Most client connections at once.
    pub max_clients: usize,
    /// Host hot standbys of other servers' partitions (the lock manager
    /// places them on servers that do).
    pub standby: bool,
    /// How far behind its owner a standby may be and still answer
    /// `READONLY` reads (zero: never).
    pub replica_max_lag: Duration,
    /// The cluster secret, proven to the lock manager (`None`: it has none).
    pub secret: Option<sharedisk_lockmgr::Secret>,
    /// The default user's password (`--requirepass-file`).
    pub requirepass: Option<Vec<u8>>,
    /// Users and permissions, Redis's ACL file format (`--aclfile`).
    pub aclfile: Option<PathBuf>,
    /// Serve beyond loopback with no password (Redis's `protected-mode no`).
    pub insecure_no_password: bool,
    /// Where to serve Prometheus metrics over HTTP (`/metrics`, `/health`).
    pub metrics: Option<String>,
    /// Serve RESP over TLS only, and ask peers over TLS (`tls.rs`).
    pub tls: Option<crate::tls::TlsFiles>,
}

/// What a connection may see of the server.
pub struct ServerState {
    pub me: Node,
    pub partitions: u32,
    /// slot -> partition.
    slot_partition: Vec<u32>,
    /// Per partition: the engine queue when we serve it.
    routes: RwLock<Vec<Option<Local>>>,
    /// Our lease (the read fast path checks it as the engine does).
    lease: Arc<dyn Lease>,
    /// Completed volume syncs of the engine (the read fast path waits on it).
    pub barriers: Arc<watch::Sender<u64>>,
    view: RwLock<ClusterView>,
    /// Bumped on every route or map change; holds wait on it.
    version: watch::Sender<u64>,
    pub clients: AtomicUsize,
    pub clients_max: usize,
    /// Replies sent, error replies (MOVED excluded) and MOVED redirects, for INFO.
    pub stats: Stats,
    pub started: Instant,
    /// The hot standbys we keep (None in unit tests).
    pub standbys: Option<Arc<crate::standby::Standbys>>,
    /// [`ServerConfig::replica_max_lag`].
    pub replica_max_lag: Duration,
    /// What clients set and see of the server while it runs.
    pub controls: Controls,
    /// Users and permissions of RESP connections.
    pub acl: crate::acl::Acl,
    /// The cluster secret: what servers prove to each other (`peer.rs`).
    pub secret: Option<sharedisk_lockmgr::Secret>,
    /// TLS for clients and peers (None: plain TCP).
    pub tls: Option<Arc<crate::tls::Tls>>,
}

/// What clients set and see of a server while it runs (`CONFIG SET`,
/// `CLIENT`, `SLOWLOG`, `SCAN`'s memory of partitions that left): all of
/// it starts empty, in every server.
#[derive(Debug, Default)]
pub struct Controls {
    /// `CONFIG SET maxmemory` (0: none): above it, commands that may grow
    /// the data are refused (`noeviction`, the only policy).
    pub maxmemory: std::sync::atomic::AtomicU64,
    /// Every open client connection (`CLIENT LIST`, `CLIENT KILL`).
    pub conns: Arc<crate::cmd::Clients>,
    /// When we last stopped serving each partition we served.
    released: Mutex<HashMap<u32, Instant>>,
    /// `CLIENT PAUSE`: until when, and whether all commands (else writes)
    /// wait; `pause_active` is set while one may be in force (the per-command check).
    pub pause: watch::Sender<Option<(Instant, bool)>>,
    pub pause_active: AtomicBool,
    /// Connections waiting out a `CLIENT PAUSE` (INFO `blocked_clients`).
    pub blocked: AtomicUsize,
    /// `SLOWLOG`.
    pub slowlog: crate::cmd::SlowLog,
    /// Every pub/sub subscription of this server's connections.
    pub pubsub: Arc<crate::pubsub::Hub>,
    /// `SHUTDOWN`: stop as on SIGTERM.
    pub shutdown: tokio::sync::Notify,
    /// The encoding thresholds `CONFIG SET` took (`hash-max-listpack-entries`
    /// …), by canonical name: kept and answered, with no effect (one
    /// encoding per type here).
    pub encodings: Mutex<HashMap<&'static str, i64>>,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState").field("me", &self.me).finish_non_exhaustive()
    }
}

/// Counters INFO reports (`total_commands_processed`, `total_error_replies`
/// as Redis names them): a benchmark can check that nothing was refused.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted since the start.
    pub connections: std::sync::atomic::AtomicU64,
    pub commands: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
    pub redirects: std::sync::atomic::AtomicU64,
    pub engine: Arc<engine::Counters>,
    /// Claims taken over from our hot standby (reading only its lag), and
    /// claims that read a whole log; records and bytes those claims read.
    pub claims_warm: std::sync::atomic::AtomicU64,
    pub claims_cold: std::sync::atomic::AtomicU64,
    pub claim_records: std::sync::atomic::AtomicU64,
    pub claim_bytes: std::sync::atomic::AtomicU64,
    /// `READONLY` reads answered from a hot standby.
    pub replica_reads: std::sync::atomic::AtomicU64,
    /// INFO commandstats.
    pub commands_by_name: CommandStats,
    /// INFO errorstats: error replies by their first word (at most
    /// [`ERROR_KINDS_MAX`] kinds, as Redis keeps).
    pub errors_by_kind: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Kinds of error replies INFO errorstats tracks (Redis: 128).
pub const ERROR_KINDS_MAX: usize = 128;

/// A connection's counts for one batch of replies, added to [`Stats`] once
/// per batch (`flush`) rather than per command: counters every connection
/// bumps are one cache line bouncing between the cores.
#[derive(Debug, Default)]
pub struct Tally {
    commands: u64,
    /// (command, [calls, usec, rejected, failed]), a few distinct per batch.
    per: Vec<(usize, [u64; 4])>,
}

impl Tally {
    /// One reply of command `stat` (its index, refused before it ran?), `usec` after its arrival.
    pub fn add(&mut self, stats: &Stats, stat: Option<(usize, bool)>, reply: &crate::resp::Reply, usec: u64) {
        self.commands += 1;
        stats.count_error(reply);
        let Some((command, rejected)) = stat else { return };
        let at = match self.per.iter().position(|(c, _)| *c == command) {
            Some(at) => at,
            None => {
                self.per.push((command, [0; 4]));
                self.per.len() - 1
            }
        };
        let c = &mut self.per[at].1;
        if rejected {
            c[2] += 1;
        } else {
            c[0] += 1;
            c[1] += usec;
            c[3] += u64::from(matches!(reply, crate::resp::Reply::Error(e) if !e.starts_with("MOVED ")));
        }
    }

    pub fn flush(&mut self, stats: &Stats) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.commands > 0 {
            stats.commands.fetch_add(std::mem::take(&mut self.commands), Relaxed);
        }
        for (command, c) in self.per.drain(..) {
            for (counter, n) in stats.commands_by_name.0[command].iter().zip(c) {
                if n > 0 {
                    counter.fetch_add(n, Relaxed);
                }
            }
        }
    }
}

impl Stats {
    /// An error reply's counters (MOVED apart).
    fn count_error(&self, reply: &crate::resp::Reply) {
        use std::sync::atomic::Ordering::Relaxed;
        if let crate::resp::Reply::Error(e) = reply {
            if e.starts_with("MOVED ") { &self.redirects } else { &self.errors }.fetch_add(1, Relaxed);
            let kind = e.split(' ').next().unwrap_or("ERR");
            let mut kinds = self.errors_by_kind.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = kinds.get_mut(kind) {
                *n += 1;
            } else if kinds.len() < ERROR_KINDS_MAX {
                kinds.insert(kind.to_owned(), 1);
            }
        }
    }

    /// `CONFIG RESETSTAT`: the counters Redis resets.
    pub fn reset(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        for c in [&self.commands, &self.errors, &self.redirects, &self.replica_reads] {
            c.store(0, Relaxed);
        }
        self.commands_by_name.reset();
        self.errors_by_kind.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Per command of the spec table: calls, time from arrival to reply,
/// calls refused before they ran, calls that ran and answered an error.
#[derive(Debug)]
pub struct CommandStats(Box<[[std::sync::atomic::AtomicU64; 4]]>);

impl Default for CommandStats {
    fn default() -> Self {
        CommandStats(crate::commands::SPECS.iter().map(|_| Default::default()).collect())
    }
}

impl CommandStats {
    /// (command index, [calls, usec, rejected, failed]) of every command used since the last reset.
    pub fn used(&self) -> impl Iterator<Item = (usize, [u64; 4])> + '_ {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.iter().map(|c| [0, 1, 2, 3].map(|i| c[i].load(Relaxed))).enumerate().filter(|(_, c)| c[0] + c[2] > 0)
    }

    fn reset(&self) {
        for c in self.0.iter().flatten() {
            c.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A partition we serve: the engine's queue and the shared cell.
#[derive(Clone, Debug)]
pub struct Local {
    pub tx: mpsc::Sender<Msg>,
    pub cell: Arc<engine::ServedPartition>,
}

/// Where a request for a partition goes now.
#[derive(Debug)]
pub enum Route {
    Local(Local),
    Moved(String),
    /// No one (or we, not ready yet): wait for a change.
    Wait,
}

impl ServerState {
    pub fn partition_of_slot(&self, slot: u16) -> u32 {
        self.slot_partition[usize::from(slot)]
    }

    pub fn route(&self, partition: u32) -> Route {
        if let Some(local) = &self.routes.read().unwrap_or_else(|e| e.into_inner())[partition as usize] {
            return Route::Local(local.clone());
        }
        match self.view.read().unwrap_or_else(|e| e.into_inner()).owner(partition) {
            Some(n) if n.name != self.me.name => Route::Moved(n.addr()),
            _ => Route::Wait,
        }
    }

    pub fn view(&self) -> ClusterView {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    fn set_route(&self, partition: u32, local: Option<Local>) {
        let leaving = local.is_none();
        let was = std::mem::replace(&mut self.routes.write().unwrap_or_else(|e| e.into_inner())[partition as usize], local);
        if leaving && was.is_some() {
            self.controls.released.lock().unwrap_or_else(|e| e.into_inner()).insert(partition, Instant::now());
        }
        self.bump();
    }

    /// Wait while a `CLIENT PAUSE` holds commands like this one (`writes`:
    /// it may write); counted in `blocked` meanwhile.
    pub async fn wait_unpaused(&self, writes: bool) {
        // The common case, no pause ever or none in force: one read, no subscription.
        if self.controls.pause.borrow().is_none_or(|(until, all)| !(all || writes) || Instant::now() >= until) {
            return;
        }
        let mut rx = self.controls.pause.subscribe();
        let mut counted = false;
        loop {
            let pause = *rx.borrow_and_update();
            match pause {
                Some((until, all)) if (all || writes) && Instant::now() < until => {
                    if !counted {
                        self.controls.blocked.fetch_add(1, Ordering::Relaxed);
                        counted = true;
                    }
                    let _ = tokio::time::timeout_at(until.into(), rx.changed()).await;
                }
                _ => break,
            }
        }
        if counted {
            self.controls.blocked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether we served `partition` within the last `window` (a `SCAN`
    /// that reaches it follows it to its owner: `cmd::keys::scan`).
    pub fn served_within(&self, partition: u32, window: Duration) -> bool {
        self.controls.released.lock().unwrap_or_else(|e| e.into_inner()).get(&partition).is_some_and(|at| at.elapsed() <= window)
    }

    pub fn lease_valid(&self) -> bool {
        self.lease.valid()
    }

    pub(crate) fn set_map(&self, map: ClusterMap) {
        self.view.write().unwrap_or_else(|e| e.into_inner()).map = map;
        self.bump();
    }

    /// The partitions we serve, with the queue that serves them.
    pub fn local_routes(&self) -> Vec<(u32, mpsc::Sender<Msg>)> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        routes.iter().enumerate().filter_map(|(p, r)| r.as_ref().map(|l| (p as u32, l.tx.clone()))).collect()
    }
}

/// Redis's reply to a command that may grow the data above `maxmemory`.
pub const OOM_MAXMEMORY: &str = "OOM command not allowed when used memory > 'maxmemory'.";

impl ServerState {
    /// Whether `maxmemory` is set and this process's resident memory is above
    /// it (read only when it is set: no cost otherwise).
    pub fn over_maxmemory(&self) -> bool {
        let max = self.controls.maxmemory.load(std::sync::atomic::Ordering::Relaxed);
        max > 0 && crate::procstat::rss_bytes() > max
    }
}

#[cfg(test)]
impl ServerState {
    /// A server's shared state with nothing routed, for unit tests.
    pub(crate) fn for_test(lease: Arc<dyn Lease>, partitions: u32) -> ServerState {
        let me = Node::new("test", "127.0.0.1:1");
        ServerState {
            lease,
            barriers: Arc::new(watch::channel(0u64).0),
            me: me.clone(),
            partitions,
            slot_partition: vec![0; 16384],
            routes: RwLock::new(vec![None; partitions as usize]),
            view: RwLock::new(ClusterView { me, map: ClusterMap::default(), partitions }),
            version: watch::channel(0).0,
            clients: AtomicUsize::new(0),
            clients_max: 1,
            stats: Stats::default(),
            started: Instant::now(),
            standbys: None,
            replica_max_lag: Duration::ZERO,
            controls: Controls::default(),
            acl: crate::acl::Acl::default(),
            secret: None,
            tls: None,
        }
    }
}

/// The current session's lease, swapped when we re-register.
#[derive(Default)]
struct SessionLease(Mutex<Option<Arc<Session>>>);

impl Lease for SessionLease {
    fn valid(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|s| s.lease_valid())
    }
}

pub fn run(args: ServerConfig) -> Result<ExitCode> {
    if args.id.is_empty() || args.id.len() > 128 || args.id.contains(char::is_whitespace) {
        bail!("--id must be 1 to 128 bytes without spaces, got {:?}", args.id);
    }
    let vol = Arc::new(Volume::open(&args.volume).with_context(|| format!("cannot open volume {}", args.volume.display()))?);
    // Free the slots of earlier incarnations that are provably dead (kill -9 leaves them).
    if let Err(e) = vol.reap() {
        tracing::warn!(server = %args.id, error = %e, "server {}: reaping dead registrations failed: {e}", args.id);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(args, vol))
}

/// Whom this server would let in, checked before it starts: beyond
/// loopback a password is needed (Redis's protected mode), and with
/// passwords the cluster secret (servers ask each other questions over
/// RESP, `peer.rs`, and prove themselves with it).
fn access(args: &ServerConfig) -> Result<crate::acl::Acl> {
    let acl = crate::acl::Acl::configure(args.requirepass.as_deref(), args.aclfile.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    if acl.auth_required() && args.secret.is_none() {
        bail!(
            "--requirepass-file and an ACL file with a password for the default user need --secret-file too: \
             servers ask each other (WAIT, SCAN across moves) and prove themselves with the cluster secret"
        );
    }
    if !acl.auth_required() && !args.insecure_no_password && crate::peer::beyond_loopback(&args.listen) {
        bail!(
            "refusing to serve {} without a password: anyone who can reach it could read and write everything. \
             Pass --requirepass-file (or an --aclfile whose default user has a password), listen on 127.0.0.1, \
             or pass --insecure-no-password",
            args.listen
        );
    }
    Ok(acl)
}

async fn serve(args: ServerConfig, vol: Arc<Volume>) -> Result<ExitCode> {
    let acl = access(&args)?;
    let tls = args.tls.as_ref().map(crate::tls::Tls::load).transpose()?.map(Arc::new);
    let listener = TcpListener::bind(&args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr()?.to_string();
    let advertise = args.advertise.clone().unwrap_or_else(|| bound.clone());
    let partitions = vol.geometry().partitions;
    let me = Node::new(&args.id, &advertise);
    let mut slot_partition = vec![0u32; 16384];
    for p in 0..partitions {
        let [a, b] = sharedisk_lockmgr::core::slot_range(p, partitions);
        for s in a..=b {
            slot_partition[s as usize] = p;
        }
    }
    let lease = Arc::new(SessionLease::default());
    let standbys = crate::standby::Standbys::start(vol.clone()).context("cannot start the standby threads")?;
    let barriers = Arc::new(watch::channel(0u64).0);
    let shared = Arc::new(ServerState {
        lease: lease.clone(),
        barriers: barriers.clone(),
        me: me.clone(),
        partitions,
        slot_partition,
        routes: RwLock::new(vec![None; partitions as usize]),
        view: RwLock::new(ClusterView { me, map: ClusterMap::default(), partitions }),
        version: watch::channel(0).0,
        clients: AtomicUsize::new(0),
        clients_max: args.max_clients,
        stats: Stats::default(),
        started: Instant::now(),
        standbys: Some(standbys.clone()),
        replica_max_lag: args.replica_max_lag,
        controls: Controls::default(),
        acl,
        secret: args.secret.clone(),
        tls,
    });
    let metrics = match &args.metrics {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("cannot listen for metrics on {addr}"))?),
        None => None,
    };
    tokio::spawn(conn::accept_loop(listener, shared.clone()));
    // PUBLISH reaches the other servers' subscribers too.
    let (forward, queued) = tokio::sync::mpsc::channel(crate::pubsub::FORWARD_QUEUE_MAX);
    shared.controls.pubsub.set_forward(forward);
    tokio::spawn(crate::pubsub::forward_loop(shared.clone(), queued));
    let tls = if shared.tls.is_some() { ", TLS only" } else { "" };
    tracing::info!(server = %args.id, addr = %bound, tls = shared.tls.is_some(), "server {}: serving RESP on {bound} (node id {}{tls})", args.id, shared.me.id);
    if let Some(l) = metrics {
        tracing::info!(server = %args.id, "server {}: metrics on http://{}/metrics", args.id, l.local_addr()?);
        let state = shared.clone();
        tokio::spawn(sharedisk_lockmgr::metrics::serve(l, move || {
            let state = state.clone();
            async move { crate::metrics::render(&state) }
        }));
    }

    let (claims_tx, mut claims_rx) = mpsc::unbounded_channel();
    let abandon = Arc::new(AtomicBool::new(false));
    let (engine, engine_rx) = mpsc::channel(crate::limits::ENGINE_QUEUE_MAX);
    let (v, l, a): (_, Arc<dyn Lease>, _) = (vol.clone(), lease.clone(), abandon.clone());
    let counters = shared.stats.engine.clone();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(crate::fatal_on_panic("engine", move || engine::run(v, engine_rx, l, a, barriers, counters)))
        .context("cannot start the engine thread")?;
    let claims = Arc::new(tokio::sync::Semaphore::new(crate::limits::COLD_CLAIMS_MAX));
    let mut ctl = ControlShell {
        core: Control::new(),
        shared: shared.clone(),
        vol: vol.clone(),
        lease,
        claims_tx,
        engine,
        abandon,
        standbys: standbys.clone(),
        cold_claims: claims,
        name: args.id.clone(),
    };
    // SIGTERM or Ctrl-C, whatever we are doing (serving, or waiting for the lock manager).
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let asked = shared.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            () = asked.controls.shutdown.notified() => tracing::info!(server = %asked.me.name, "server {}: SHUTDOWN: stopping as on SIGTERM", asked.me.name),
        }
        let _ = stop_tx.send(true);
    });
    let mut first = true;
    // One iteration per incarnation (a new reservation key after being fenced).
    loop {
        let key = new_key();
        let reg = vol.register(key, ProcessIdentity::current()).context("cannot register on the volume")?;
        let info = ServerInfo {
            server: args.id.clone(),
            key,
            addr: advertise.clone(),
            pid: std::process::id(),
            standby: args.standby,
            reports_standbys: args.standby,
            keeps: Vec::new(),
        };
        let inc = Incarnation { reg, info, lockmgr: &args.lockmgr, secret: args.secret.as_ref() };
        match ctl.incarnation(&inc, &mut first, &mut stop_rx, &mut claims_rx).await {
            Ended::Exit(code) => {
                standbys.stop();
                let _ = vol.unregister(reg);
                return Ok(code);
            }
            Ended::Fenced => {
                // Our key is (being) fenced: nothing we held is ours any more.
                tracing::info!(server = %args.id, "server {}: session expired; registering as a new incarnation", args.id);
                *ctl.lease.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
    }
}

/// One registration of this server on the volume.
struct Incarnation<'a> {
    reg: Registration,
    info: ServerInfo,
    lockmgr: &'a str,
    secret: Option<&'a sharedisk_lockmgr::Secret>,
}

/// How an incarnation ended.
enum Ended {
    /// Our key was fenced: register a new one.
    Fenced,
    /// Unregister and exit with this code.
    Exit(ExitCode),
}

/// What the control loop does after an event's actions.
enum Flow {
    Continue,
    Reconnect,
    Reregister,
    Exit,
}

/// The lock manager fenced this incarnation's key while we were away.
fn is_key_fenced(e: &anyhow::Error) -> bool {
    use sharedisk_lockmgr::client::ClientError;
    e.chain().any(|c| {
        matches!(c.downcast_ref::<ClientError>(), Some(ClientError::Rejected { code: sharedisk_lockmgr::core::ErrorCode::KeyFenced, .. }))
    })
}

fn new_key() -> u64 {
    sharedisk_storage::procinfo::random_id()
}

/// Connect and register, retrying while the lock manager is not up (for at
/// most `patience`, or forever).
async fn connect(
    addr: &str,
    secret: Option<&sharedisk_lockmgr::Secret>,
    info: ServerInfo,
    patience: Option<Duration>,
    volume_uuid: [u8; 16],
) -> Result<(Session, mpsc::UnboundedReceiver<LmEvent>)> {
    let start = Instant::now();
    let mut logged = false;
    let addrs = [addr.to_owned()];
    loop {
        match Client::connect_any(&addrs, secret).await {
            Ok((client, events)) => {
                // Its fences must land on our volume, or they protect nothing.
                if client.hello.volume_uuid != volume_uuid {
                    bail!(
                        "the lock manager at {} serves volume {}, but --volume is {}; refusing to serve",
                        client.addr,
                        sharedisk_storage::volume::format_uuid(&client.hello.volume_uuid),
                        sharedisk_storage::volume::format_uuid(&volume_uuid)
                    );
                }
                // A lock manager that answered Hello may still go away (stopped,
                // deposed, paused) before it answers the registration: look
                // again, as for a failed connection. A refusal is final.
                let wait = client.hello.heartbeat_interval * 3;
                match tokio::time::timeout(wait, Session::register(client, info.clone())).await {
                    Ok(Ok(s)) => return Ok((s, events)),
                    Ok(Err(e @ sharedisk_lockmgr::client::ClientError::Rejected { .. })) => {
                        return Err(e).context("the lock manager refused to register us");
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(server = %info.server, error = %e, "server {}: registration not answered ({e}); looking for the lock manager again", info.server)
                    }
                    Err(_) => {
                        tracing::warn!(server = %info.server, "server {}: registration not answered within {wait:?}; looking for the lock manager again", info.server)
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // At start, a secret that does not check out is a configuration
            // to fix: say so and stop. Later (a reconnect), it may be anyone
            // answering on an address: keep looking for the real one.
            Err(e @ ClientError::Unauthenticated(_)) if patience.is_some() => return Err(e).context("cannot join the cluster"),
            Err(e) if patience.is_some_and(|p| start.elapsed() >= p) => {
                return Err(e).context(format!("cannot reach the lock manager for {:?}", patience.unwrap_or_default()));
            }
            Err(e) => {
                if !logged && start.elapsed() >= Duration::from_secs(1) {
                    tracing::warn!(server = %info.server, error = %e, "server {}: {e}; still trying", info.server);
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The control task's shell: carries out what the control core decides
/// (`control.rs`), with the sockets, the blocking claims and the engine queue.
struct ControlShell {
    core: Control,
    shared: Arc<ServerState>,
    vol: Arc<Volume>,
    lease: Arc<SessionLease>,
    /// Where finished claims report (as [`Event::Claimed`]).
    claims_tx: mpsc::UnboundedSender<Event<Partition>>,
    /// The partition engine queue (engine.rs).
    engine: mpsc::Sender<Msg>,
    /// Set when our lease is gone for good: the engine stops waiting for it.
    abandon: Arc<AtomicBool>,
    /// The hot standbys we keep; a claim of one of their partitions takes it.
    standbys: Arc<crate::standby::Standbys>,
    /// Claims that read a whole log run at most this many at a time, so a
    /// loaded volume's claims leave the cores to the session and the
    /// engine.
    cold_claims: Arc<tokio::sync::Semaphore>,
    /// Our `--id`, as the slot map names us.
    name: String,
}

impl ControlShell {
    /// Serve one incarnation: one lock-manager connection after another,
    /// the same key surviving reconnects.
    async fn incarnation(
        &mut self,
        inc: &Incarnation<'_>,
        first: &mut bool,
        stop_rx: &mut watch::Receiver<bool>,
        claims_rx: &mut mpsc::UnboundedReceiver<Event<Partition>>,
    ) -> Ended {
        let name = inc.info.server.clone();
        loop {
            // The first connection must succeed soon (a wrong address is an
            // error); later ones retry for as long as it takes.
            let patience = if *first { Some(Duration::from_secs(30)) } else { None };
            // The standbys we keep, so that a lock manager that took over
            // (its placement is volatile) keeps them where they are.
            let mut info = inc.info.clone();
            info.keeps = self.standbys.views().into_keys().collect();
            let connected = tokio::select! {
                c = connect(inc.lockmgr, inc.secret, info, patience, self.vol.uuid()) => c,
                _ = stop_rx.changed() => {
                    let actions = self.core.stop_unreachable();
                    self.perform(actions, inc.reg, None).await;
                    tracing::info!(server = %name, "server {name}: stopped (the lock manager was unreachable)");
                    return Ended::Exit(ExitCode::SUCCESS);
                }
            };
            let (session, mut events) = match connected {
                Ok(s) => s,
                Err(e) if is_key_fenced(&e) => {
                    let actions = self.core.handle(Event::Expired);
                    self.perform(actions, inc.reg, None).await;
                    return Ended::Fenced;
                }
                Err(e) => {
                    tracing::error!(server = %name, error = %format!("{e:#}"), "server {name}: {e:#}");
                    let actions = self.core.stop_unreachable();
                    self.perform(actions, inc.reg, None).await;
                    return Ended::Exit(ExitCode::FAILURE);
                }
            };
            let session = Arc::new(session);
            self.abandon.store(false, Ordering::Release);
            *self.lease.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(session.clone());
            tokio::spawn(report_standbys(Arc::downgrade(&session), self.standbys.clone()));
            if std::mem::take(first) {
                // Join the load: the lock manager moves partitions to us
                // (planned moves, no client errors), preferring those we keep
                // a hot standby of; so first let the standbys it gives us
                // catch up, or every move would be a cold claim under the
                // clients' feet.
                let (session, standbys, shared) = (session.clone(), self.standbys.clone(), self.shared.clone());
                tokio::spawn(join_the_load(session, standbys, shared));
            }
            loop {
                let event = tokio::select! {
                    // Unanswered heartbeats: look for the active lock manager
                    // (the session moves; this connection closes after).
                    _ = session.stalled() => Event::Disconnected,
                    ev = events.recv() => match ev {
                        Some(LmEvent::Granted { partition, token }) => Event::Granted { partition, epoch: token },
                        Some(LmEvent::Revoked { partition }) => Event::Revoked { partition },
                        Some(LmEvent::Map(map)) => Event::Map(map),
                        Some(LmEvent::Expired) => Event::Expired,
                        Some(LmEvent::Disconnected) | None => Event::Disconnected,
                    },
                    Some(claimed) = claims_rx.recv() => claimed,
                    _ = stop_rx.changed() => Event::Stop,
                };
                let actions = self.core.handle(event);
                match self.perform(actions, inc.reg, Some(&session)).await {
                    Flow::Continue => {}
                    Flow::Reconnect => {
                        tracing::info!(server = %name, "server {name}: lost the lock manager; reconnecting (serving while the lease lasts)");
                        break;
                    }
                    Flow::Reregister => return Ended::Fenced,
                    Flow::Exit => {
                        tracing::info!(server = %name, "server {name}: stopped");
                        return Ended::Exit(ExitCode::SUCCESS);
                    }
                }
            }
        }
    }

    /// Carry out the core's actions in order.
    async fn perform(&mut self, actions: Vec<Action<Partition>>, reg: Registration, session: Option<&Session>) -> Flow {
        let mut flow = Flow::Continue;
        for action in actions {
            match action {
                Action::Claim { incarnation, partition, epoch } => {
                    // Claims run on blocking threads, so a large recovery delays
                    // no slot-map update; a claim from our hot standby reads
                    // only its lag, a cold one waits for a permit.
                    let (vol, tx) = (self.vol.clone(), self.claims_tx.clone());
                    let warm = self.standbys.reserve(partition);
                    let (standbys, permits, shared) = (self.standbys.clone(), self.cold_claims.clone(), self.shared.clone());
                    tokio::spawn(async move {
                        let _permit = if warm { None } else { permits.acquire_owned().await.ok() };
                        // Taking the standby may wait for a poll (a resync) in
                        // progress: on the blocking thread, never on the runtime
                        // that carries the session's heartbeats.
                        let claimed = tokio::task::spawn_blocking(move || {
                            let standby = standbys.take(partition);
                            claim(vol, reg, partition, standby, &shared)
                        })
                        .await;
                        // Our key is gone from the volume (fenced by a lock manager
                        // that has since restarted and forgotten it): this
                        // incarnation can claim nothing, so start a new one.
                        let key_lost = matches!(claimed, Ok(Err(sharedisk_storage::Error::NotRegistered { .. })));
                        let result = match claimed {
                            Ok(r) => r.map_err(|e| e.to_string()),
                            Err(panicked) => Err(format!("the claim panicked: {panicked}")),
                        };
                        let _ = tx.send(Event::Claimed { incarnation, partition, epoch, result });
                        if key_lost {
                            let _ = tx.send(Event::KeyLost { incarnation });
                        }
                    });
                }
                Action::Serve { partition, epoch, part } => {
                    let cell = Arc::new(engine::ServedPartition::new(part));
                    if self.engine.send(Msg::Add(cell.clone())).await.is_err() {
                        tracing::error!(server = %self.shared.me.name, partition, "server {}: the engine is gone; cannot serve partition {partition}", self.shared.me.name);
                    } else {
                        self.shared.set_route(partition, Some(Local { tx: self.engine.clone(), cell }));
                        // The last step of the handover's timeline (`admin events`); nothing waits for it.
                        if let Some(s) = session {
                            let (client, req) = (s.client.clone(), LmRequest::Served { session: s.id, partition, epoch });
                            tokio::spawn(async move {
                                let _ = tokio::time::timeout(Duration::from_millis(500), client.call(req)).await;
                            });
                        }
                    }
                }
                Action::Release { partition, epoch, tell } => {
                    release(&self.shared, &self.engine, partition, epoch, session.filter(|_| tell)).await
                }
                Action::Discard { partition, epoch, part, tell } => {
                    let released = tokio::task::spawn_blocking(move || part.release()).await.is_ok_and(|r| r.is_ok());
                    if released && tell {
                        tell_released(session, partition, epoch).await;
                    }
                }
                Action::Disown { partition, epoch } => tell_released(session, partition, epoch).await,
                Action::StillClaiming { partition, epoch } => {
                    if let Some(s) = session {
                        let req = LmRequest::Claiming { session: s.id, partition, epoch };
                        let _ = tokio::time::timeout(Duration::from_millis(500), s.client.call(req)).await;
                    }
                }
                Action::GiveBack { partition, epoch, why } => {
                    tracing::warn!(server = %self.shared.me.name, partition, error = %why, "server {}: cannot claim partition {partition}: {why}; giving it back", self.shared.me.name);
                    tell_released(session, partition, epoch).await;
                }
                Action::Route(map) => {
                    let me = map.servers.iter().position(|s| s.id == self.name).map(|i| i as u32);
                    let wanted =
                        map.standbys.iter().enumerate().filter(|(_, s)| me.is_some() && **s == me).map(|(p, _)| p as u32).collect();
                    self.standbys.want(&wanted);
                    self.shared.set_map(map)
                }
                Action::AbandonLease => self.abandon.store(true, Ordering::Release),
                Action::Reregister => flow = Flow::Reregister,
                Action::Reconnect => flow = Flow::Reconnect,
                Action::Exit => flow = Flow::Exit,
            }
        }
        flow
    }
}

/// A joining server takes its share by planned moves, each to a synced
/// standby (the lock manager makes no cold move to a server that keeps
/// standbys): wait for ours to catch up, say so, ask for a rebalance; again
/// while the slot map is not balanced (moving partitions to us re-places
/// standbys, which then catch up), at most [`JOIN_REBALANCE_ROUNDS`] times.
async fn join_the_load(session: Arc<Session>, standbys: Arc<crate::standby::Standbys>, shared: Arc<ServerState>) {
    let started = Instant::now();
    for round in 0..JOIN_REBALANCE_ROUNDS {
        standbys.wait_synced(JOIN_WAIT_FOR_STANDBYS).await;
        if round == 0 {
            let views = standbys.views();
            let synced = views.values().filter(|v| v.synced).count();
            tracing::info!(
                server = %shared.me.name,
                "server {}: joined; {synced} of {} standbys synced after {} ms; asking for a rebalance",
                shared.me.name,
                views.len(),
                started.elapsed().as_millis()
            );
        }
        if session.lease_deadline().is_none() || session.report_standbys(standby_report(&standbys)).await.is_err() {
            return;
        }
        let moved = session.client.call(LmRequest::Rebalance).await;
        let none = matches!(moved, Ok(sharedisk_lockmgr::core::Response::Accepted { moves: 0 }));
        if none && shared.view().balanced() {
            return;
        }
        // Let the moves finish and the placement follow before asking again.
        tokio::time::sleep(JOIN_REBALANCE_PAUSE).await;
    }
}

/// Rounds and pauses of [`join_the_load`].
const JOIN_REBALANCE_ROUNDS: u32 = 10;
const JOIN_REBALANCE_PAUSE: Duration = Duration::from_millis(500);

/// What [`report_standbys`] sends.
fn standby_report(standbys: &crate::standby::Standbys) -> Vec<sharedisk_lockmgr::core::StandbyLag> {
    standbys
        .views()
        .into_iter()
        .map(|(partition, v)| sharedisk_lockmgr::core::StandbyLag {
            partition,
            synced: v.synced,
            lag_bytes: v.lag_bytes.unwrap_or(0),
            stale_ms: v.stale_ms,
        })
        .collect()
}

/// How often a server tells the lock manager how its standbys stand.
const STANDBY_REPORT_EVERY: Duration = Duration::from_millis(500);

/// Report our standbys' lag to the lock manager (`admin status` shows it)
/// for as long as the session lives.
async fn report_standbys(session: std::sync::Weak<Session>, standbys: Arc<crate::standby::Standbys>) {
    let mut tick = tokio::time::interval(STANDBY_REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(session) = session.upgrade() else { return };
        match session.report_standbys(standby_report(&standbys)).await {
            Ok(sharedisk_lockmgr::core::Response::Ack) | Err(sharedisk_lockmgr::client::ClientError::Timeout(_)) => {}
            _ => return,
        }
    }
}

/// How long a joining server waits for its standbys to catch up before it
/// asks for its share of partitions anyway.
const JOIN_WAIT_FOR_STANDBYS: Duration = Duration::from_secs(30);

/// Claim `partition`: from our hot standby of it if we keep one (reading
/// only its lag), else cold (its whole log).
fn claim(
    vol: Arc<Volume>,
    reg: Registration,
    partition: u32,
    standby: Option<sharedisk_storage::Standby>,
    shared: &ServerState,
) -> Result<Partition, sharedisk_storage::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    let counters = &shared.stats;
    let started = Instant::now();
    let kept = standby.is_some();
    let claimed = match standby {
        Some(s) => s.claim(reg, sharedisk_storage::PartitionOptions::default()),
        None => Partition::claim_with(vol, reg, partition, sharedisk_storage::PartitionOptions::default()),
    };
    if let Ok((_, stats)) = &claimed {
        if stats.from_standby { &counters.claims_warm } else { &counters.claims_cold }.fetch_add(1, Relaxed);
        counters.claim_records.fetch_add(stats.records, Relaxed);
        counters.claim_bytes.fetch_add(stats.bytes, Relaxed);
        if started.elapsed() > Duration::from_millis(100) || std::env::var_os("SHAREDISK_LOG_CLAIMS").is_some() {
            let how = match (stats.from_standby, kept) {
                (true, _) => "from its hot standby",
                (false, true) => "cold (its standby could not follow)",
                (false, false) => "cold (no standby of it here)",
            };
            tracing::info!(
                server = %shared.me.name,
                partition,
                records = stats.records,
                bytes = stats.bytes,
                "server {}: claim: partition {partition} {how} in {:?}: {} records, {} bytes read",
                shared.me.name,
                started.elapsed(),
                stats.records,
                stats.bytes
            );
        }
    }
    claimed.map(|(p, _)| p)
}

/// Tell the lock manager a partition is free, so it grants it at once (no
/// fence, no lease wait); if it does not answer soon, it will notice our
/// session closing instead.
async fn tell_released(session: Option<&Session>, partition: u32, epoch: u64) {
    if let Some(s) = session {
        let _ = tokio::time::timeout(Duration::from_millis(500), s.release(partition, epoch)).await;
    }
}

/// Unroute, let the engine finish the partition and release it on the
/// volume, then tell the lock manager (`session`).
async fn release(shared: &ServerState, engine: &mpsc::Sender<Msg>, partition: u32, epoch: u64, session: Option<&Session>) {
    shared.set_route(partition, None);
    let (done, done_rx) = oneshot::channel();
    let result = match engine.send(Msg::Stop { partition, done }).await {
        Ok(()) => done_rx.await.unwrap_or_else(|_| Err("engine gone".into())),
        Err(_) => Err("engine gone".into()),
    };
    match result {
        Ok(()) => tell_released(session, partition, epoch).await,
        Err(e) if session.is_some() => {
            tracing::warn!(server = %shared.me.name, partition, epoch, error = %e, "server {}: partition {partition} not released cleanly: {e}", shared.me.name)
        }
        Err(_) => {}
    }
}
