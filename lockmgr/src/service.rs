//! The lock-manager service: a thin tokio shell around [`Core`].
//!
//! One task owns the core and is the only place that touches it; connection
//! tasks only move frames. Time is read here (monotonic, ms since start) and
//! passed in. Fences run on a blocking thread (`PREEMPT` on the volume) and
//! report back; the core grants nothing of a fenced owner before that.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::core::{ClusterMap, Core, Output, Persisted, Request, Response, SessionId};
use crate::election::{Reign, Seat};
use crate::secret::{Role, Secret};
use crate::wire::{self, ClientMsg, PROTOCOL_VERSION, Push, ServerMsg};
use crate::{Millis, Timeouts};

/// What the lock manager needs from the volume: fences (PREEMPT) and its persisted map.
pub trait Backend: Send + Sync + 'static {
    /// PREEMPT `key`. Ok also when the key is not registered (already gone).
    fn fence(&self, key: u64) -> Result<(), String>;
    /// Durably store the map; returns only once it is durable.
    fn persist(&self, state: &Persisted) -> Result<(), String>;
    /// The last stored map, if any.
    fn load(&self) -> Result<Option<Persisted>, String>;
    /// The identity of the volume fenced (told to servers, which must serve the same one).
    fn volume_uuid(&self) -> [u8; 16];
    /// Whether this lock manager may still act (it was not deposed). The
    /// core task stops as soon as it is not.
    fn active(&self) -> bool {
        true
    }
    /// The lock managers of the volume, for `admin status`.
    fn lockmgrs(&self) -> Vec<crate::core::LockmgrStatus> {
        Vec::new()
    }
    /// The core begins and ends a batch (a stuck core must not keep its lease).
    fn batch_started(&self) {}
    fn batch_done(&self) {}
}

/// Fencing and persistence on a `sharedisk_storage::Volume`, in the term of
/// a [`Reign`]: every write checks that the term is still current.
#[derive(Debug)]
pub struct VolumeBackend {
    vol: Arc<sharedisk_storage::Volume>,
    reign: Reign,
    seq: std::sync::atomic::AtomicU64,
}

impl VolumeBackend {
    /// Take a seat and the lease at once, whoever holds it: for tests, the
    /// simulation and benchmarks, which run one lock manager at a time in
    /// one process (the caller vouches for that).
    pub fn new(vol: Arc<sharedisk_storage::Volume>) -> VolumeBackend {
        let seat = Seat::claim_vouched(vol.clone()).expect("a free lock-manager seat");
        let reign = seat.take_now().expect("the lock-manager lease");
        VolumeBackend::with_reign(reign)
    }

    /// Act in `reign`'s term.
    pub fn with_reign(reign: Reign) -> VolumeBackend {
        // Sequences count within the term: every copy of an earlier term
        // ranks below ours whatever its sequence, so there is nothing to read.
        VolumeBackend { vol: reign.volume().clone(), reign, seq: std::sync::atomic::AtomicU64::new(0) }
    }

    pub fn reign(&self) -> &Reign {
        &self.reign
    }
}

impl Backend for VolumeBackend {
    fn active(&self) -> bool {
        self.reign.is_current()
    }
    fn lockmgrs(&self) -> Vec<crate::core::LockmgrStatus> {
        crate::election::lockmgrs(&self.vol)
    }
    fn batch_started(&self) {
        self.reign.batch_started();
    }
    fn batch_done(&self) {
        self.reign.batch_done();
    }
    fn fence(&self, key: u64) -> Result<(), String> {
        // A deposed lock manager fences nothing (see FORMAT.md for the
        // window between this look and the PREEMPT).
        if !self.reign.is_current() {
            return Err(format!("deposed: term {} is over", self.reign.term()));
        }
        match self.vol.preempt(key) {
            Ok(_) | Err(sharedisk_storage::Error::NotRegistered { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
    fn persist(&self, state: &Persisted) -> Result<(), String> {
        let bytes = postcard::to_stdvec(state).map_err(|e| e.to_string())?;
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        self.vol.write_lockmgr_state(self.reign.seat(), self.reign.term(), seq, &bytes).map_err(|e| e.to_string())
    }
    fn volume_uuid(&self) -> [u8; 16] {
        self.vol.uuid()
    }
    fn load(&self) -> Result<Option<Persisted>, String> {
        match self.vol.read_lockmgr_state().map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(copy) => postcard::from_bytes(&copy.bytes).map(Some).map_err(|e| {
                format!("lock-manager state (term {}, sequence {}, seat {}) does not decode: {e}", copy.term, copy.seq, copy.seat)
            }),
        }
    }
}

/// Connections accepted at once; more are refused with an error frame.
pub const CONNECTIONS_MAX: usize = 4096;
/// Server names longer than this are refused.
pub const SERVER_NAME_BYTES_MAX: usize = 128;

enum Event {
    Open {
        conn: u64,
        tx: mpsc::UnboundedSender<ServerMsg>,
    },
    Msg {
        conn: u64,
        msg: ClientMsg,
    },
    Closed {
        conn: u64,
    },
    FenceDone {
        key: u64,
    },
    FenceFailed {
        key: u64,
        error: String,
    },
    /// A scrape of `/metrics` (`MetricsHandle`).
    Metrics {
        reply: tokio::sync::oneshot::Sender<String>,
    },
    /// The live page's poll (`MetricsHandle::status`).
    Status {
        reply: tokio::sync::oneshot::Sender<crate::core::Status>,
    },
}

/// Asks the running core for its metrics (`metrics.rs`) or its status
/// (the live page, `page.rs`), as a connection's status query would.
#[derive(Clone, Debug)]
pub struct MetricsHandle(mpsc::UnboundedSender<Event>);

impl MetricsHandle {
    /// The Prometheus text, or None once the service has stopped.
    pub async fn render(&self) -> Option<String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.0.send(Event::Metrics { reply }).ok()?;
        rx.await.ok()
    }

    /// What `admin status` shows, or None once the service has stopped.
    pub async fn status(&self) -> Option<crate::core::Status> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.0.send(Event::Status { reply }).ok()?;
        rx.await.ok()
    }
}

/// A running lock manager.
#[derive(Debug)]
pub struct Service {
    pub addr: SocketAddr,
    events: mpsc::UnboundedSender<Event>,
    /// None once it has stopped and been awaited.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Service {
    /// Bind `listen` and serve `partitions` partitions. Must run on a
    /// multi-thread tokio runtime: persisting the map blocks the core task
    /// (`block_in_place`) so that nothing is granted before it is durable.
    /// With `secret`, every connection must prove it knows the cluster
    /// secret before anything else (`secret.rs`).
    pub async fn start(
        listen: &str,
        partitions: u32,
        timeouts: Timeouts,
        backend: Arc<dyn Backend>,
        secret: Option<Secret>,
    ) -> std::io::Result<Service> {
        let listener = TcpListener::bind(listen).await?;
        Service::start_on(listener, partitions, timeouts, backend, secret).await
    }

    /// Like `start`, on a bound listener (a standby that became active
    /// keeps the one it answered on).
    pub async fn start_on(
        listener: TcpListener,
        partitions: u32,
        timeouts: Timeouts,
        backend: Arc<dyn Backend>,
        secret: Option<Secret>,
    ) -> std::io::Result<Service> {
        timeouts.validate().map_err(std::io::Error::other)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        // A restarted lock manager recovers its map and epochs; recorded
        // holders may reclaim for one lease period before anything of theirs
        // is fenced and granted elsewhere.
        let core = match backend.load().map_err(std::io::Error::other)? {
            Some(state) => Core::restore(timeouts, partitions, &state, 0),
            None => Core::new(timeouts, partitions),
        };
        let events = tx.clone();
        let task = tokio::spawn(async move {
            let acceptor = tokio::spawn(accept_loop(listener, tx.clone(), secret.map(Arc::new)));
            run_core(core, start, rx, tx, backend).await;
            acceptor.abort();
        });
        Ok(Service { addr, events, task: Some(task) })
    }

    /// What `/metrics` asks.
    pub fn metrics(&self) -> MetricsHandle {
        MetricsHandle(self.events.clone())
    }

    pub fn abort(&self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }

    /// Resolves once the service has stopped: by itself (it cannot persist
    /// its map, or it was deposed) or after `abort`. Again and again, once it has.
    pub async fn stopped(&mut self) {
        if let Some(t) = &mut self.task {
            let _ = t.await;
            self.task = None;
        }
    }
}

async fn accept_loop(listener: TcpListener, events: mpsc::UnboundedSender<Event>, secret: Option<Arc<Secret>>) {
    let mut next = 1u64;
    let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "lockmgr: accept failed: {e}; retrying in 50 ms");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = next;
        next += 1;
        let live = live.clone();
        let events = events.clone();
        let secret = secret.clone();
        tokio::spawn(async move {
            if live.fetch_add(1, std::sync::atomic::Ordering::AcqRel) >= CONNECTIONS_MAX {
                let (_, mut w) = stream.into_split();
                let _ = wire::write_frame(&mut w, &ServerMsg::Error { message: "too many connections".into() }).await;
            } else {
                serve_conn(conn, stream, events, secret.as_deref()).await;
            }
            live.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        });
    }
}

/// How long a client has to answer the cluster secret's challenge (a lost
/// packet costs a retransmission, about a second).
const PROOF_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a new connection has for its whole handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The handshake's first steps, before the core hears of the connection:
/// the client's Hello, and with a `secret` its proof (then ours). `Err` is
/// the refusal to send; a refused connection changes nothing.
async fn handshake<R, W>(r: &mut R, w: &mut W, secret: Option<&Secret>) -> Result<u32, String>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let protocol = match wire::read_frame::<_, ClientMsg>(r).await {
        Ok(ClientMsg::Hello { protocol }) if protocol == PROTOCOL_VERSION => protocol,
        Ok(ClientMsg::Hello { protocol }) => {
            return Err(format!("unsupported protocol version {protocol}; this lock manager speaks {PROTOCOL_VERSION}"));
        }
        Ok(_) => return Err("the first frame must be Hello".into()),
        Err(e) => return Err(format!("protocol error: {e}")),
    };
    let Some(secret) = secret else { return Ok(protocol) };
    let ours = crate::secret::random().map_err(|e| e.to_string())?;
    wire::write_frame(w, &ServerMsg::Challenge { nonce: ours }).await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(PROOF_TIMEOUT, wire::read_frame::<_, ClientMsg>(r)).await {
        Ok(Ok(ClientMsg::Proof { nonce, mac })) if secret.verify(Role::Client, &ours, &nonce, &mac) => {
            let proof = ServerMsg::Proven { mac: secret.prove(Role::Lockmgr, &nonce, &ours) };
            wire::write_frame(w, &proof).await.map_err(|e| e.to_string())?;
            Ok(protocol)
        }
        Ok(Ok(ClientMsg::Proof { .. })) => Err("wrong cluster secret".into()),
        Ok(Ok(_)) => Err("this lock manager requires the cluster secret (--secret-file); the challenge was not answered".into()),
        Ok(Err(e)) => Err(format!("protocol error: {e}")),
        Err(_) => Err(format!("no proof of the cluster secret within {PROOF_TIMEOUT:?}")),
    }
}

/// Refuse a connection whose handshake failed, saying why to both ends.
async fn refuse<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, peer: &str, message: String) {
    // A client that simply closed needs no log line.
    if message != format!("protocol error: {}", wire::WireError::Closed) {
        tracing::warn!(addr = %peer, error = %message, "lockmgr: refused a connection from {peer}: {message}");
    }
    let _ = wire::write_frame(w, &ServerMsg::Error { message }).await;
}

async fn serve_conn(conn: u64, stream: TcpStream, events: mpsc::UnboundedSender<Event>, secret: Option<&Secret>) {
    let peer = stream.peer_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let (r, mut w) = stream.into_split();
    // Buffered: a frame's length and body, and frames that arrive together,
    // are one read.
    let mut r = tokio::io::BufReader::new(r);
    // A connection that says nothing holds a slot of CONNECTIONS_MAX: not for long.
    let protocol = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut r, &mut w, secret)).await {
        Ok(Ok(p)) => p,
        Ok(Err(message)) => return refuse(&mut w, &peer, message).await,
        Err(_) => return refuse(&mut w, &peer, format!("no handshake within {HANDSHAKE_TIMEOUT:?}")).await,
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<ServerMsg>();
    let writer = tokio::spawn(async move {
        wire::write_frames(&mut w, &mut rx, |m| matches!(m, ServerMsg::Error { .. })).await;
    });
    let _ = events.send(Event::Open { conn, tx: tx.clone() });
    let _ = events.send(Event::Msg { conn, msg: ClientMsg::Hello { protocol } });
    loop {
        match wire::read_frame::<_, ClientMsg>(&mut r).await {
            Ok(msg) => {
                if events.send(Event::Msg { conn, msg }).is_err() {
                    break;
                }
            }
            Err(wire::WireError::Closed) => break,
            Err(e) => {
                let _ = tx.send(ServerMsg::Error { message: format!("protocol error: {e}") });
                break;
            }
        }
    }
    drop(tx);
    let _ = events.send(Event::Closed { conn });
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}

struct Conns {
    tx: BTreeMap<u64, mpsc::UnboundedSender<ServerMsg>>,
    session_conn: BTreeMap<SessionId, u64>,
    conn_sessions: BTreeMap<u64, Vec<SessionId>>,
    /// Connections that registered a session and have not been sent the map yet.
    unmapped: std::collections::BTreeSet<u64>,
    /// Per connection, sessions registered over it that moved to another
    /// one since: what the server sent before it moved (a release, say)
    /// still counts.
    moved_from: BTreeMap<u64, Vec<SessionId>>,
}

impl Conns {
    fn push(&self, session: SessionId, push: Push) {
        if let Some(tx) = self.session_conn.get(&session).and_then(|c| self.tx.get(c)) {
            let _ = tx.send(ServerMsg::Push(push));
        }
    }
}

async fn run_core(
    mut core: Core,
    start: Instant,
    mut rx: mpsc::UnboundedReceiver<Event>,
    events: mpsc::UnboundedSender<Event>,
    backend: Arc<dyn Backend>,
) {
    let now = || start.elapsed().as_millis() as Millis;
    let mut conns = Conns {
        tx: BTreeMap::new(),
        session_conn: BTreeMap::new(),
        conn_sessions: BTreeMap::new(),
        unmapped: Default::default(),
        moved_from: BTreeMap::new(),
    };
    let mut last_map = ClusterMap::default();
    let counters = Arc::new(crate::metrics::Counters::default());
    // Replies wait until the state they reveal is durable (a named lease's
    // epoch must never be handed out twice, even across a crash).
    let mut replies: Vec<(mpsc::UnboundedSender<ServerMsg>, ServerMsg)> = Vec::new();
    // Metrics scrapes and status polls of this batch (`Event::Metrics`, `Event::Status`).
    let mut observers: Vec<Event> = Vec::new();
    loop {
        let sleep = core.poll_timeout().map(|t| start + Duration::from_millis(t));
        let first = tokio::select! {
            e = rx.recv() => match e { Some(e) => Some(e), None => return },
            _ = async { match sleep { Some(at) => tokio::time::sleep_until(at.into()).await, None => std::future::pending().await } } => None,
        };
        backend.batch_started();
        let mut batch = vec![first];
        // Group commit: everything already queued shares one persist.
        while batch.len() < EVENTS_PER_BATCH_MAX {
            match rx.try_recv() {
                Ok(e) => batch.push(Some(e)),
                Err(_) => break,
            }
        }
        let mut map_maybe_changed = false;
        for event in batch {
            // Heartbeats, named leases and status queries never change the
            // slot map (building and comparing it for every batch of named
            // leases was a tenth of the lock manager's time at 64 sessions).
            map_maybe_changed |= !matches!(
                &event,
                Some(Event::Msg {
                    msg: ClientMsg::Call {
                        request: Request::Heartbeat { .. }
                            | Request::StandbyReport { .. }
                            | Request::AcquireNamed { .. }
                            | Request::ReleaseNamed { .. },
                        ..
                    } | ClientMsg::Status { .. },
                    ..
                }) | Some(Event::Metrics { .. } | Event::Status { .. })
            );
            // Scrapes and the page's polls are answered after the batch
            // is persisted, as replies are: what they show is durable.
            let event = match event {
                Some(e @ (Event::Metrics { .. } | Event::Status { .. })) => {
                    observers.push(e);
                    continue;
                }
                other => other,
            };
            handle_event(event, &mut core, &mut conns, &mut replies, &now, &backend, &events, &counters);
        }
        for h in core.take_served() {
            counters.handover(&h);
        }
        // Deposed (a standby took the lease while we were paused, say):
        // reveal nothing of this batch, fence nothing, and stop.
        if !backend.active() {
            tracing::error!("lockmgr: deposed: another lock manager holds the lease now; stopping");
            return;
        }
        let mut persisted = false;
        while let Some(out) = core.poll_output() {
            map_maybe_changed = true;
            match out {
                // One durable write covers every later output of this batch:
                // the core's state already includes them. Grants and replies
                // go out only after it; without it, nothing more is granted.
                Output::Persist if persisted => {}
                Output::Persist => {
                    let t = Instant::now();
                    if let Err(e) = tokio::task::block_in_place(|| backend.persist(&core.persisted())) {
                        tracing::error!(error = %e, "lockmgr: cannot persist the partition map: {e}; stopping");
                        return;
                    }
                    counters.persist_seconds.observe(t.elapsed().as_secs_f64());
                    persisted = true;
                }
                Output::Fence { key } => spawn_fence(backend.clone(), events.clone(), key, counters.clone()),
                Output::Grant { session, partition, epoch } => {
                    counters.grant_pushes.inc();
                    conns.push(session, Push::Grant { partition, epoch })
                }
                Output::Revoke { session, partition } => conns.push(session, Push::Revoke { partition }),
                Output::Expire { session } => {
                    conns.push(session, Push::Expired);
                    if let Some(c) = conns.session_conn.remove(&session)
                        && let Some(v) = conns.conn_sessions.get_mut(&c)
                    {
                        v.retain(|s| *s != session);
                    }
                }
            }
        }
        for (tx, msg) in replies.drain(..) {
            let _ = tx.send(msg);
        }
        if !observers.is_empty() {
            let mut st = core.status(now());
            st.lockmgrs = backend.lockmgrs();
            for o in observers.drain(..) {
                match o {
                    Event::Metrics { reply } => {
                        let _ = reply.send(counters.render(&st));
                    }
                    Event::Status { reply } => {
                        let _ = reply.send(st.clone());
                    }
                    _ => {}
                }
            }
        }
        // After the replies: a new session hears Registered before its first map.
        if map_maybe_changed {
            let map = core.cluster_map();
            let changed = map != last_map;
            if changed {
                last_map = map;
            }
            for (conn, sessions) in &conns.conn_sessions {
                if sessions.is_empty() || !(changed || conns.unmapped.contains(conn)) {
                    continue;
                }
                if let Some(tx) = conns.tx.get(conn) {
                    let _ = tx.send(ServerMsg::Push(Push::Map(last_map.clone())));
                }
            }
            conns.unmapped.clear();
        }
        backend.batch_done();
    }
}

/// Events handled before one persist.
const EVENTS_PER_BATCH_MAX: usize = 1024;

#[allow(clippy::too_many_arguments)]
fn handle_event(
    event: Option<Event>,
    core: &mut Core,
    conns: &mut Conns,
    replies: &mut Vec<(mpsc::UnboundedSender<ServerMsg>, ServerMsg)>,
    now: &dyn Fn() -> Millis,
    backend: &Arc<dyn Backend>,
    events: &mpsc::UnboundedSender<Event>,
    counters: &Arc<crate::metrics::Counters>,
) {
    match event {
        None => core.handle_timeout(now()),
        // Answered by the loop (it needs the backend's seats too).
        Some(Event::Metrics { .. } | Event::Status { .. }) => {}
        Some(Event::Open { conn, tx }) => {
            conns.tx.insert(conn, tx);
        }
        Some(Event::Closed { conn }) => {
            conns.tx.remove(&conn);
            conns.moved_from.remove(&conn);
            for s in conns.conn_sessions.remove(&conn).unwrap_or_default() {
                conns.session_conn.remove(&s);
                core.handle(now(), Request::Disconnect { session: s });
            }
        }
        Some(Event::FenceDone { key }) => core.fence_done(now(), key),
        Some(Event::FenceFailed { key, error }) => {
            // Never grant past a failed fence: retry until the volume answers.
            tracing::warn!(key = %format!("{key:#x}"), error = %error, "lockmgr: fencing key {key:#x} failed: {error}; retrying");
            let (f, ev, c) = (backend.clone(), events.clone(), counters.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                spawn_fence(f, ev, key, c);
            });
        }
        Some(Event::Msg { conn, msg }) => {
            let Some(tx) = conns.tx.get(&conn).cloned() else { return };
            match msg {
                ClientMsg::Hello { .. } => {
                    let t = core.timeouts();
                    let hello = ServerMsg::Hello {
                        protocol: PROTOCOL_VERSION,
                        partitions: core.partition_count(),
                        heartbeat_interval_ms: t.heartbeat_interval.as_millis() as u64,
                        lease_timeout_ms: t.lease_timeout.as_millis() as u64,
                        server_guard_ms: t.server_guard.as_millis() as u64,
                        volume_uuid: backend.volume_uuid(),
                    };
                    replies.push((tx, hello));
                }
                // Only the handshake has a proof (`handshake`).
                ClientMsg::Proof { .. } => {
                    replies.push((tx, ServerMsg::Error { message: "protocol error: a proof outside the handshake".into() }));
                }
                ClientMsg::Status { id } => {
                    let mut status = core.status(now());
                    status.lockmgrs = backend.lockmgrs();
                    replies.push((tx, ServerMsg::Status { id, status }));
                }
                ClientMsg::Call { id, request } => {
                    if let Request::Register(info) = &request
                        && (info.server.is_empty() || info.server.len() > SERVER_NAME_BYTES_MAX)
                    {
                        let message = format!("server name must be 1..={SERVER_NAME_BYTES_MAX} bytes");
                        let response = Response::Error { code: crate::core::ErrorCode::InvalidArgument, message };
                        replies.push((tx, ServerMsg::Reply { id, response }));
                        return;
                    }
                    // A connection may only speak for its own sessions.
                    let own = |s: &SessionId| {
                        conns.session_conn.get(s) == Some(&conn) || conns.moved_from.get(&conn).is_some_and(|v| v.contains(s))
                    };
                    let foreign = match &request {
                        Request::Heartbeat { session }
                        | Request::StandbyReport { session, .. }
                        | Request::Claiming { session, .. }
                        | Request::Served { session, .. }
                        | Request::Release { session, .. }
                        | Request::Disconnect { session }
                        | Request::AcquireNamed { session, .. }
                        | Request::ReleaseNamed { session, .. } => !own(session),
                        _ => false,
                    };
                    let response = if foreign { Response::SessionExpired } else { core.handle(now(), request) };
                    if let Response::Registered { session } = response {
                        // A session that moved here leaves its old connection.
                        if let Some(old) = conns.session_conn.insert(session, conn)
                            && old != conn
                            && let Some(v) = conns.conn_sessions.get_mut(&old)
                        {
                            v.retain(|s| *s != session);
                            conns.moved_from.entry(old).or_default().push(session);
                        }
                        conns.conn_sessions.entry(conn).or_default().push(session);
                        conns.unmapped.insert(conn);
                    }
                    replies.push((tx, ServerMsg::Reply { id, response }));
                }
            }
        }
    }
}

/// Answer every connection on `listener` with [`ServerMsg::NotActive`]
/// (naming the active lock manager, as `active` says) until `until`
/// resolves; then give the listener back, for [`Service::start_on`].
pub async fn stand_by(
    listener: TcpListener,
    active: impl Fn() -> Option<String> + Send + Sync + 'static,
    until: impl std::future::Future<Output = ()>,
    secret: Option<Secret>,
) -> TcpListener {
    let active = Arc::new(active);
    let secret = secret.map(Arc::new);
    tokio::pin!(until);
    loop {
        let stream = tokio::select! {
            _ = &mut until => return listener,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (active, secret) = (active.clone(), secret.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let peer = stream.peer_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
            let (mut r, mut w) = stream.into_split();
            // Who is active is told only to those who prove the secret too.
            match tokio::time::timeout(Duration::from_secs(1), handshake(&mut r, &mut w, secret.as_deref())).await {
                Ok(Ok(_)) => {
                    let _ = wire::write_frame(&mut w, &ServerMsg::NotActive { active: active() }).await;
                }
                Ok(Err(message)) => refuse(&mut w, &peer, message).await,
                Err(_) => {}
            }
        });
    }
}

fn spawn_fence(backend: Arc<dyn Backend>, events: mpsc::UnboundedSender<Event>, key: u64, counters: Arc<crate::metrics::Counters>) {
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let fenced = backend.fence(key);
        counters.fence_seconds.observe(t.elapsed().as_secs_f64());
        counters.fences.inc();
        let ev = match fenced {
            Ok(()) => Event::FenceDone { key },
            Err(error) => Event::FenceFailed { key, error },
        };
        let _ = events.send(ev);
    });
}
