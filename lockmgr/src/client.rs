//! The client library servers and admin tools use.
//!
//! [`Client`] is one connection (requests and replies matched by id, pushes
//! delivered as [`Event`]s). [`Session::register`] adds a registered session
//! with a heartbeat task and a lease deadline computed conservatively: from
//! the time the acknowledged heartbeat was *sent*, plus the lock manager's
//! lease minus its guard, so the server always considers itself expired
//! before the lock manager does (see `timeouts`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::core::{ClusterMap, ErrorCode, Request, Response, ServerInfo, SessionId, Status};
use crate::secret::{self, Role, Secret};
use crate::wire::{self, ClientMsg, PROTOCOL_VERSION, Push, ServerMsg, WireError};

/// The next frame of the handshake, within [`HELLO_TIMEOUT`].
async fn next_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<ServerMsg, ClientError> {
    Ok(tokio::time::timeout(HELLO_TIMEOUT, wire::read_frame::<_, ServerMsg>(r))
        .await
        .map_err(|_| ClientError::Timeout(HELLO_TIMEOUT))??)
}

/// What the lock manager tells a session, unasked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The session owns `partition` at this epoch (present it when releasing).
    /// `token` is the grant's epoch; the field keeps its old name because
    /// the server crate matches on it.
    Granted {
        partition: u32,
        token: u64,
    },
    Revoked {
        partition: u32,
    },
    /// The session is gone: stop serving everything, register anew with a new key.
    Expired,
    /// The connection is gone.
    Disconnected,
    /// The slot map changed.
    Map(ClusterMap),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("lock manager at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("lock manager protocol: {0}")]
    Wire(#[from] WireError),
    #[error("lock manager refused: {0}")]
    Refused(String),
    #[error("lock manager refused ({code:?}): {message}")]
    Rejected { code: ErrorCode, message: String },
    #[error("connection to the lock manager closed")]
    Closed,
    #[error("the lock manager did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the lock manager at {addr} is a standby (the active one: {})", active.as_deref().unwrap_or("none yet"))]
    NotActive { addr: String, active: Option<String> },
    #[error("no lock manager given")]
    NoAddress,
    /// The cluster secret did not check out, either way: final, not a
    /// reason to retry.
    #[error("{0}")]
    Unauthenticated(String),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<ServerMsg>>>>;

/// Facts the lock manager announced in its Hello.
#[derive(Clone, Copy, Debug)]
pub struct Hello {
    pub partitions: u32,
    pub volume_uuid: [u8; 16],
    pub heartbeat_interval: Duration,
    pub lease_timeout: Duration,
    pub server_guard: Duration,
}

/// One connection to the lock manager.
#[derive(Clone, Debug)]
pub struct Client {
    tx: mpsc::UnboundedSender<ClientMsg>,
    pending: Pending,
    /// The connection is gone (set before `pending` is cleared).
    closed: Arc<AtomicBool>,
    next_id: Arc<AtomicU64>,
    pub hello: Hello,
    call_timeout: Duration,
    /// Closes the connection from our side (a lock manager that stopped
    /// answering, as a SIGSTOPped one does, still holds it open).
    closer: Arc<tokio::sync::Notify>,
    /// The address this connection went to.
    pub addr: String,
}

/// How long a lock manager has to answer Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(1);
/// In [`Client::connect_any`], how long the other addresses still have
/// once a standby has answered.
const NOT_ACTIVE_GRACE: Duration = Duration::from_millis(50);

impl Client {
    /// Connect to the active lock manager among `addrs` (a comma-separated
    /// list is split too): all are tried at once, the first active one wins;
    /// a standby's pointer to the active one is followed.
    pub async fn connect_any(addrs: &[String], secret: Option<&Secret>) -> Result<(Client, mpsc::UnboundedReceiver<Event>), ClientError> {
        let mut todo: Vec<String> =
            addrs.iter().flat_map(|a| a.split(',')).map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect();
        todo.dedup();
        if todo.is_empty() {
            return Err(ClientError::NoAddress);
        }
        let mut tried = std::collections::BTreeSet::new();
        let mut last = None;
        while !todo.is_empty() {
            let mut set = tokio::task::JoinSet::new();
            for a in todo.drain(..) {
                if tried.insert(a.clone()) {
                    let secret = secret.cloned();
                    set.spawn(async move { Client::connect(&a, secret.as_ref()).await });
                }
            }
            // Once a standby has answered, the others get a little longer
            // only: a stopped lock manager accepts connections and never
            // answers, and must not hold the search up for HELLO_TIMEOUT.
            let mut grace: Option<tokio::time::Instant> = None;
            loop {
                let next = match grace {
                    Some(at) => match tokio::time::timeout_at(at, set.join_next()).await {
                        Ok(n) => n,
                        Err(_) => break,
                    },
                    None => set.join_next().await,
                };
                let Some(done) = next else { break };
                match done {
                    Ok(Ok(c)) => return Ok(c),
                    // Another address may still be the real one (anyone can
                    // answer on one address); said if none is.
                    Ok(Err(e @ ClientError::Unauthenticated(_))) => last = Some(e),
                    Ok(Err(ClientError::NotActive { addr, active })) => {
                        if let Some(a) = &active
                            && !tried.contains(a)
                        {
                            todo.push(a.clone());
                        }
                        last = Some(ClientError::NotActive { addr, active });
                        grace.get_or_insert(tokio::time::Instant::now() + NOT_ACTIVE_GRACE);
                    }
                    Ok(Err(e)) => {
                        // A standby's answer, or a refusal of our secret, says
                        // more than a refused connection.
                        if !matches!(last, Some(ClientError::NotActive { .. } | ClientError::Unauthenticated(_))) {
                            last = Some(e);
                        }
                    }
                    Err(_) => {}
                }
            }
        }
        Err(last.unwrap_or(ClientError::NoAddress))
    }

    /// Connect to the lock manager at `addr`; with `secret`, both sides
    /// prove they know it (`secret.rs`), and a lock manager that cannot is
    /// refused.
    pub async fn connect(addr: &str, secret: Option<&Secret>) -> Result<(Client, mpsc::UnboundedReceiver<Event>), ClientError> {
        // A host that is gone drops the SYN: the kernel would retry for minutes.
        let stream = tokio::time::timeout(HELLO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(HELLO_TIMEOUT))?
            .map_err(|source| ClientError::Connect { addr: addr.to_owned(), source })?;
        let _ = stream.set_nodelay(true);
        let (r, mut w) = stream.into_split();
        let mut r = tokio::io::BufReader::new(r);
        wire::write_frame(&mut w, &ClientMsg::Hello { protocol: PROTOCOL_VERSION }).await?;
        let mut greeting = next_frame(&mut r).await?;
        match (&greeting, secret) {
            (ServerMsg::Error { .. }, _) => {}
            (ServerMsg::Challenge { nonce: theirs }, Some(s)) => {
                let theirs = *theirs;
                let ours = secret::random().map_err(|e| ClientError::Unauthenticated(e.to_string()))?;
                wire::write_frame(&mut w, &ClientMsg::Proof { nonce: ours, mac: s.prove(Role::Client, &theirs, &ours) }).await?;
                match next_frame(&mut r).await? {
                    ServerMsg::Proven { mac } if s.verify(Role::Lockmgr, &ours, &theirs, &mac) => {}
                    ServerMsg::Error { message } => {
                        return Err(ClientError::Unauthenticated(format!("the lock manager at {addr} refused us: {message}")));
                    }
                    _ => return Err(ClientError::Unauthenticated(format!("the lock manager at {addr} did not prove the cluster secret"))),
                }
                greeting = next_frame(&mut r).await?;
            }
            (ServerMsg::Challenge { .. }, None) => {
                return Err(ClientError::Unauthenticated(format!(
                    "the lock manager at {addr} requires the cluster secret: pass --secret-file (or set SHAREDISK_SECRET_FILE)"
                )));
            }
            (_, Some(_)) => {
                return Err(ClientError::Unauthenticated(format!(
                    "the lock manager at {addr} does not know the cluster secret (started without --secret-file?); not trusting it"
                )));
            }
            (_, None) => {}
        }
        let hello = match greeting {
            ServerMsg::Hello { partitions, heartbeat_interval_ms, lease_timeout_ms, server_guard_ms, volume_uuid, .. } => Hello {
                partitions,
                volume_uuid,
                heartbeat_interval: Duration::from_millis(heartbeat_interval_ms),
                lease_timeout: Duration::from_millis(lease_timeout_ms),
                server_guard: Duration::from_millis(server_guard_ms),
            },
            ServerMsg::Error { message } => return Err(ClientError::Refused(message)),
            ServerMsg::NotActive { active } => return Err(ClientError::NotActive { addr: addr.to_owned(), active }),
            other => return Err(ClientError::Refused(format!("unexpected greeting {other:?}"))),
        };
        let (tx, mut out) = mpsc::unbounded_channel::<ClientMsg>();
        tokio::spawn(async move { wire::write_frames(&mut w, &mut out, |_| false).await });
        let pending: Pending = Arc::default();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let p = pending.clone();
        let closed = Arc::new(AtomicBool::new(false));
        let c = closed.clone();
        let closer = Arc::new(tokio::sync::Notify::new());
        let close = closer.clone();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    f = wire::read_frame::<_, ServerMsg>(&mut r) => f,
                    _ = close.notified() => break,
                };
                match frame {
                    Ok(ServerMsg::Reply { id, response }) => {
                        if let Some(tx) = p.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
                            let _ = tx.send(ServerMsg::Reply { id, response });
                        }
                    }
                    Ok(ServerMsg::Status { id, status }) => {
                        if let Some(tx) = p.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
                            let _ = tx.send(ServerMsg::Status { id, status });
                        }
                    }
                    Ok(ServerMsg::Push(push)) => {
                        let ev = match push {
                            Push::Grant { partition, epoch } => Event::Granted { partition, token: epoch },
                            Push::Revoke { partition } => Event::Revoked { partition },
                            Push::Expired => Event::Expired,
                            Push::Map(map) => Event::Map(map),
                        };
                        let _ = ev_tx.send(ev);
                    }
                    Ok(
                        ServerMsg::Hello { .. }
                        | ServerMsg::Error { .. }
                        | ServerMsg::NotActive { .. }
                        | ServerMsg::Challenge { .. }
                        | ServerMsg::Proven { .. },
                    )
                    | Err(_) => break,
                }
            }
            c.store(true, Ordering::Release);
            p.lock().unwrap_or_else(|e| e.into_inner()).clear();
            let _ = ev_tx.send(Event::Disconnected);
        });
        let call_timeout = hello.lease_timeout * 4;
        let client =
            Client { tx, pending, closed, next_id: Arc::new(AtomicU64::new(1)), hello, call_timeout, closer, addr: addr.to_owned() };
        Ok((client, ev_rx))
    }

    /// Close the connection: its session's events end with `Disconnected`.
    pub fn close(&self) {
        self.closer.notify_one();
    }

    async fn exchange(&self, make: impl FnOnce(u64) -> ClientMsg) -> Result<ServerMsg, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        // After the reader has given up, nobody would ever answer: fail at once.
        if self.closed.load(Ordering::Acquire) {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(ClientError::Closed);
        }
        self.tx.send(make(id)).map_err(|_| ClientError::Closed)?;
        match tokio::time::timeout(self.call_timeout, rx).await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                Err(ClientError::Timeout(self.call_timeout))
            }
        }
    }

    pub async fn call(&self, request: Request) -> Result<Response, ClientError> {
        match self.exchange(|id| ClientMsg::Call { id, request }).await? {
            ServerMsg::Reply { response, .. } => Ok(response),
            other => Err(ClientError::Refused(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn status(&self) -> Result<Status, ClientError> {
        match self.exchange(|id| ClientMsg::Status { id }).await? {
            ServerMsg::Status { status, .. } => Ok(status),
            other => Err(ClientError::Refused(format!("unexpected reply {other:?}"))),
        }
    }
}

/// A registered session: heartbeats itself and knows its lease deadline.
#[derive(Debug)]
pub struct Session {
    pub client: Client,
    pub id: SessionId,
    deadline: Arc<Mutex<Option<Instant>>>,
    expired: Arc<AtomicBool>,
    heartbeat: tokio::task::JoinHandle<()>,
    stalled: Arc<tokio::sync::Notify>,
}

impl Session {
    /// Register `info` over `client` and start heartbeating.
    pub async fn register(client: Client, info: ServerInfo) -> Result<Session, ClientError> {
        let server_lease = client.hello.lease_timeout.saturating_sub(client.hello.server_guard);
        let sent = Instant::now();
        let id = match client.call(Request::Register(info)).await? {
            Response::Registered { session } => session,
            Response::Error { code, message } => return Err(ClientError::Rejected { code, message }),
            other => return Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        };
        let deadline = Arc::new(Mutex::new(Some(sent + server_lease)));
        let expired = Arc::new(AtomicBool::new(false));
        let (c, d, e) = (client.clone(), deadline.clone(), expired.clone());
        let interval = client.hello.heartbeat_interval;
        // A lock manager that does not answer a heartbeat within this is
        // gone for us (stopped, or deposed and paused): `stalled` resolves,
        // and the server looks for the active one, moving its session there
        // without losing anything. The old connection stays open until the
        // session is registered anew, so that its close cannot expire the
        // session at a lock manager that was only slow.
        let stall = interval;
        let stalled = Arc::new(tokio::sync::Notify::new());
        let st = stalled.clone();
        let heartbeat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let sent = Instant::now();
                let answer = match tokio::time::timeout(stall, c.call(Request::Heartbeat { session: id })).await {
                    Ok(a) => a,
                    Err(_) => {
                        st.notify_one();
                        break;
                    }
                };
                match answer {
                    Ok(Response::Ack) => {
                        let mut dl = d.lock().unwrap_or_else(|e| e.into_inner());
                        let new = sent + server_lease;
                        if dl.is_none_or(|old| new > old) {
                            *dl = Some(new);
                        }
                    }
                    Ok(_) => {
                        e.store(true, Ordering::Release);
                        *d.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        break;
                    }
                    Err(ClientError::Timeout(_)) => continue,
                    Err(_) => break,
                }
            }
        });
        Ok(Session { client, id, deadline, expired, heartbeat, stalled })
    }

    /// Resolves once a heartbeat went unanswered for a heartbeat interval.
    pub async fn stalled(&self) {
        self.stalled.notified().await
    }

    /// Until when this process may act on its leases (None: never again).
    pub fn lease_deadline(&self) -> Option<Instant> {
        if self.expired.load(Ordering::Acquire) {
            return None;
        }
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn lease_valid(&self) -> bool {
        self.lease_deadline().is_some_and(|d| Instant::now() < d)
    }

    /// Give `partition` back; `epoch` is the one it was granted with.
    pub async fn release(&self, partition: u32, epoch: u64) -> Result<Response, ClientError> {
        self.client.call(Request::Release { session: self.id, partition, epoch }).await
    }

    /// Tell the lock manager how the hot standbys we keep stand.
    pub async fn report_standbys(&self, standbys: Vec<crate::core::StandbyLag>) -> Result<Response, ClientError> {
        self.client.call(Request::StandbyReport { session: self.id, standbys }).await
    }

    pub async fn acquire_named(&self, name: &str) -> Result<Response, ClientError> {
        self.client.call(Request::AcquireNamed { session: self.id, name: name.to_owned() }).await
    }

    pub async fn release_named(&self, name: &str) -> Result<Response, ClientError> {
        self.client.call(Request::ReleaseNamed { session: self.id, name: name.to_owned() }).await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.heartbeat.abort();
        // Gone for good: a session that moved must not linger on its old connection.
        self.client.close();
    }
}
