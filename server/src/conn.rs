//! One client connection: parse, route, hold, answer in order.
//!
//! Each request is parsed once into a [`Command`] (its spec says who runs
//! it). Data commands go to the partition serving their slot; the others
//! are answered here, by `server/cmd/`. Pipelined commands are taken up to
//! the [`Pipeline`]'s bounds (count and reply bytes, `limits.rs`), each
//! dispatched at once (so requests for one partition share a group commit),
//! then the replies are awaited and written in request order, a buffer's
//! worth at a time. A command whose partition has no ready owner is held
//! until the route or the slot map changes, for at most [`HOLD_MAX`]; then
//! it gets `-MOVED` (someone else owns it now) or
//! `-CLUSTERDOWN Hash slot not served`. After `READONLY`, a read of a
//! partition another server owns is answered from our hot standby of it
//! when that is fresh enough ([`standby_read`]); `WAIT` asks the standby's
//! server how far it has applied ([`wait_for_standby`]). Inside MULTI, data commands are
//! queued (bounded by count and bytes); one whose slot the map gives to
//! another server is answered `-MOVED` at once and makes EXEC answer
//! `-EXECABORT`, as Redis Cluster does.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::cmd::{self, ClientState};
use super::commands::{self, Command, Id, Kind};
use super::engine::{self, Job, Msg, Outcome, Request};
use super::limits::{
    HOLD_MAX, MULTI_COMMANDS_MAX, MULTI_QUEUED_BYTES_MAX, PIPELINE_MAX, PIPELINE_REPLY_BYTES_MAX, QUERY_BUFFER_BYTES_MAX, RESP,
    WRITE_BUFFER_BYTES_MAX,
};
use super::{Route, ServerState};
use crate::resp::{Reply, key_slot, parse_command};

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

pub async fn accept_loop(listener: TcpListener, shared: Arc<ServerState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(server = %shared.me.name, error = %e, "server {}: accept failed: {e}; retrying in 50 ms", shared.me.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let over_limit = shared.clients.fetch_add(1, Ordering::AcqRel) >= shared.clients_max;
            let info = client_info(&stream);
            match &shared.tls {
                None => {
                    let (r, w) = stream.into_split();
                    serve_or_refuse(&shared, info, r, w, over_limit).await;
                }
                Some(tls) => {
                    // A handshake that does not finish in time (or fails:
                    // no certificate, a wrong one, plain text) is dropped.
                    if let Ok(Ok(stream)) = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await {
                        let (r, w) = tokio::io::split(stream);
                        serve_or_refuse(&shared, info, r, w, over_limit).await;
                    }
                }
            }
            shared.clients.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn client_info(stream: &TcpStream) -> Arc<crate::cmd::ClientInfo> {
    use std::os::fd::AsRawFd;
    let addr = |a: std::io::Result<std::net::SocketAddr>| a.map_or_else(|_| "?:0".to_owned(), |a| a.to_string());
    Arc::new(crate::cmd::ClientInfo::new(
        NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
        addr(stream.peer_addr()),
        addr(stream.local_addr()),
        stream.as_raw_fd(),
    ))
}

async fn serve_or_refuse<R, W>(shared: &Arc<ServerState>, info: Arc<crate::cmd::ClientInfo>, mut r: R, mut w: W, over_limit: bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if over_limit {
        let _ = w.write_all(b"-ERR max number of clients reached\r\n").await;
        close_gracefully(&mut r, w).await;
    } else {
        serve(shared, info, r, w).await;
    }
}

enum Pending {
    Ready(Reply),
    Job {
        rx: oneshot::Receiver<Outcome>,
        partition: u32,
        slot: u16,
        request: Request,
        hold_until: Instant,
        /// The replies of a transaction's commands that are not data
        /// commands (PING, TIME, INFO, ...), answered at EXEC by the
        /// connection, by their place in the transaction: they go into
        /// the engine's array of the others' replies.
        splice: Vec<(usize, Reply)>,
    },
    /// `WAIT numreplicas timeout` (None: no timeout), answered in its turn:
    /// after the writes before it.
    Wait {
        numreplicas: i64,
        timeout: Option<Duration>,
    },
}

/// What an unanswered entry counts for in its pipeline.
#[derive(Clone, Copy, Debug)]
struct Held {
    /// It may write: a later read must queue behind it, not take the fast path.
    writes: bool,
    /// Its reply's bytes, or the most they can be while it is not computed.
    reply_bytes: usize,
}

/// What an entry's reply is counted as and whether it is sent.
#[derive(Clone, Copy, Debug, Default)]
struct Meta {
    /// The command (its index in the spec table) and whether it was refused
    /// before it ran (INFO commandstats: `rejected_calls`).
    stat: Option<(usize, bool)>,
    /// When it arrived (commandstats `usec`: arrival to reply).
    started: Option<Instant>,
    /// `CLIENT REPLY OFF|SKIP`: computed, counted, not sent.
    silent: bool,
}

/// A connection's commands not answered yet, in request order, with counters
/// kept as entries come and go (so no command scans the others).
#[derive(Default)]
struct Pipeline {
    entries: VecDeque<(Pending, Held, Meta)>,
    writes_unanswered: usize,
    reply_bytes: usize,
}

impl Pipeline {
    #[cfg(test)]
    fn push(&mut self, p: Pending) {
        self.push_with(p, Meta::default())
    }

    fn push_with(&mut self, p: Pending, meta: Meta) {
        let held = match &p {
            Pending::Ready(r) => Held { writes: false, reply_bytes: reply_bytes(r) },
            Pending::Wait { .. } => Held { writes: false, reply_bytes: size_of::<Reply>() },
            Pending::Job { request, .. } => Held { writes: writes(request), reply_bytes: reply_bytes_max(request) },
        };
        self.writes_unanswered += usize::from(held.writes);
        self.reply_bytes += held.reply_bytes;
        self.entries.push_back((p, held, meta));
    }

    #[cfg(test)]
    fn pop(&mut self) -> Option<Pending> {
        self.pop_with().map(|(p, _)| p)
    }

    fn pop_with(&mut self) -> Option<(Pending, Meta)> {
        let (p, held, meta) = self.entries.pop_front()?;
        self.writes_unanswered -= usize::from(held.writes);
        self.reply_bytes -= held.reply_bytes;
        Some((p, meta))
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Take no more commands until these are answered.
    fn full(&self) -> bool {
        self.entries.len() >= PIPELINE_MAX || self.reply_bytes >= PIPELINE_REPLY_BYTES_MAX
    }
}

fn writes(r: &Request) -> bool {
    match r {
        Request::Count { .. } | Request::KeyStats | Request::Keys { .. } | Request::Scan { .. } => false,
        // A WATCH must see what reads after it see: they queue behind it.
        Request::Flush | Request::Watch { .. } => true,
        Request::Exec { cmds, .. } | Request::Checked { cmds, .. } => cmds.iter().any(|c| c.spec.kind != Kind::ReadData),
    }
}

/// What an engine's reply to `r` can take at most.
fn reply_bytes_max(r: &Request) -> usize {
    match r {
        Request::Count { .. } | Request::Flush | Request::Watch { .. } => size_of::<Reply>(),
        Request::KeyStats => 3 * size_of::<Reply>(),
        Request::Keys { .. } | Request::Scan { .. } => crate::limits::REPLY_BYTES_MAX,
        Request::Exec { cmds, .. } | Request::Checked { cmds, .. } => {
            size_of::<Reply>() + cmds.iter().map(Command::reply_bytes_max).sum::<usize>()
        }
    }
}

/// What a reply holds: its payload and its nodes.
fn reply_bytes(r: &Reply) -> usize {
    size_of::<Reply>()
        + match r {
            Reply::Simple(s) | Reply::Error(s) | Reply::Verbatim(s) => s.len(),
            Reply::Bulk(b) => b.len(),
            Reply::Int(_) | Reply::Null | Reply::NullArray => 0,
            Reply::Array(v) | Reply::Push(v) | Reply::Seq(v) => v.iter().map(reply_bytes).sum(),
            Reply::Map(v) | Reply::Pairs(v) => v.iter().map(|(k, x)| reply_bytes(k) + reply_bytes(x)).sum(),
        }
}

/// Commands queued since MULTI.
#[derive(Debug, Default)]
struct Multi {
    queued: Vec<Command>,
    /// What `queued` holds ([`Command::held_bytes`]).
    bytes: usize,
    /// A command was refused while queuing: EXEC answers EXECABORT.
    dirty: bool,
}

impl Multi {
    fn queue(&mut self, shared: &ServerState, cmd: Command) -> Reply {
        // Redis Cluster redirects at queue time, and the transaction is then void.
        if let Ok(Some(slot)) = slot_of(std::iter::once(&cmd))
            && let Route::Moved(addr) = shared.route(shared.partition_of_slot(slot))
        {
            self.dirty = true;
            return Reply::error(format!("MOVED {slot} {addr}"));
        }
        if self.queued.len() >= MULTI_COMMANDS_MAX {
            self.dirty = true;
            return Reply::error(format!("ERR MULTI holds at most {MULTI_COMMANDS_MAX} commands"));
        }
        let bytes = cmd.held_bytes();
        if self.bytes + bytes > MULTI_QUEUED_BYTES_MAX {
            self.dirty = true;
            return Reply::error(format!("ERR MULTI holds at most {MULTI_QUEUED_BYTES_MAX} bytes of commands"));
        }
        self.bytes += bytes;
        self.queued.push(cmd);
        Reply::Simple("QUEUED".into())
    }
}

/// `CLIENT REPLY`: whether replies are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplyMode {
    On,
    Off,
    /// The next command's reply is not sent.
    Skip,
}

struct Conn {
    client: ClientState,
    /// The command just handled, for INFO commandstats (see [`Meta::stat`]),
    /// and when it arrived.
    stat: Option<(usize, bool)>,
    arrived_at: Instant,
    reply_mode: ReplyMode,
    /// Whether the command just handled is `CLIENT REPLY` (its own reply
    /// follows the mode it sets: ON answers, OFF and SKIP do not).
    reply_command: bool,
    multi: Option<Multi>,
    /// Since the first WATCH (until EXEC, DISCARD, UNWATCH): the watch, and
    /// the slot of its first key (where an EXEC without data commands is checked).
    watch: Option<(Arc<engine::Watch>, u16)>,
    close: bool,
    /// The reply of the command just handled is not sent (SHUTDOWN).
    no_reply: bool,
    /// The partition of the last write acknowledged to this connection,
    /// and the sequence number published there then (`WAIT`'s target).
    last_write: Option<(u32, u64)>,
    /// Its pub/sub subscriptions and their queue (since the first SUBSCRIBE).
    subs: Option<crate::pubsub::Subscriber>,
    /// The command just handled answered with pub/sub pushes.
    pushed: bool,
    /// While it has shard subscriptions: route changes, to tell it
    /// `sunsubscribe` when their slot leaves this server.
    shard_watch: Option<tokio::sync::watch::Receiver<u64>>,
}

/// The next pub/sub message of `subs` (never, without subscriptions).
async fn next_message(subs: &mut Option<crate::pubsub::Subscriber>) -> Option<crate::pubsub::Msg> {
    match subs {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the routes change (never, without a watch).
async fn routes_changed(watch: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    match watch {
        Some(w) => {
            if w.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Messages queued for a subscriber, into `wbuf`, at most a buffer's worth.
fn pending_messages(subs: &mut Option<crate::pubsub::Subscriber>, proto: u8, wbuf: &mut BytesMut) {
    let Some(s) = subs else { return };
    while wbuf.len() < WRITE_BUFFER_BYTES_MAX {
        let Some(m) = s.try_recv() else { break };
        m.reply().encode(proto, wbuf);
    }
}

async fn serve<R, W>(shared: &Arc<ServerState>, info: Arc<crate::cmd::ClientInfo>, mut r: R, mut w: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _listed = shared.controls.conns.register(info.clone());
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut c = Conn::new(info.clone(), shared);
    let mut rbuf = BytesMut::with_capacity(16 << 10);
    let mut wbuf = BytesMut::with_capacity(16 << 10);
    let mut pipeline = Pipeline::default();
    loop {
        let mut protocol_error = None;
        while !pipeline.full() && !c.close && !info.is_killed() {
            match parse_command(&mut rbuf, &RESP) {
                Ok(Some(args)) => {
                    let started = Instant::now();
                    c.arrived_at = started;
                    info.qbuf.store(resp_bytes(&args) + rbuf.len(), Ordering::Relaxed);
                    let p = c.handle(shared, args, pipeline.writes_unanswered > 0).await;
                    let silent = c.reply_silent();
                    info.multi.store(c.multi.as_ref().map_or(-1, |m| m.queued.len() as i64), Ordering::Relaxed);
                    pipeline.push_with(p, Meta { stat: c.stat.take(), started: Some(started), silent });
                }
                Ok(None) => break,
                Err(e) => {
                    protocol_error = Some(Reply::Error(format!("ERR {e}")));
                    break;
                }
            }
        }
        if pipeline.is_empty() && protocol_error.is_none() && !c.close {
            if info.is_killed() {
                return;
            }
            if rbuf.len() > QUERY_BUFFER_BYTES_MAX {
                protocol_error = Some(Reply::error("ERR Protocol error: query buffer limit exceeded"));
            } else {
                tokio::select! {
                    read = r.read_buf(&mut rbuf) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => continue,
                    },
                    // CLIENT KILL from another connection.
                    () = info.killed() => return,
                    Some(m) = next_message(&mut c.subs) => {
                        let proto = c.client.proto;
                        m.reply().encode(proto, &mut wbuf);
                        pending_messages(&mut c.subs, proto, &mut wbuf);
                        // A subscriber that reads nothing blocks this write;
                        // past its output limit it is killed meanwhile.
                        tokio::select! {
                            written = write_out(&mut w, &mut wbuf) => if written.is_err() { return },
                            () = info.killed() => return,
                        }
                        continue;
                    }
                    () = routes_changed(&mut c.shard_watch) => {
                        let lost = c.shards_lost(shared);
                        lost.encode(c.client.proto, &mut wbuf);
                        if write_out(&mut w, &mut wbuf).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
        }
        let proto = c.client.proto;
        // A client that reads nothing blocks these writes: CLIENT KILL from
        // another connection ends them (one that killed itself still gets
        // its reply, as Redis sends it).
        let owes_reply = info.killed_itself();
        let io = async {
            answer(shared, &mut pipeline, proto, &mut wbuf, &mut w, &mut c.last_write, &info).await?;
            if let Some(e) = &protocol_error {
                e.encode(proto, &mut wbuf);
            }
            pending_messages(&mut c.subs, proto, &mut wbuf);
            write_out(&mut w, &mut wbuf).await
        };
        let written = if owes_reply {
            io.await
        } else {
            tokio::select! {
                written = io => written,
                () = info.killed() => return,
            }
        };
        if written.is_err() {
            return;
        }
        if protocol_error.is_some() || c.close || info.is_killed() {
            close_gracefully(&mut r, w).await;
            return;
        }
    }
}

/// `SHUTDOWN [NOSAVE|SAVE] [NOW] [FORCE] [ABORT]`: every write is durable
/// already and no replica is waited for, so the modifiers change nothing;
/// a shutdown starts at once, so there is none in progress to abort.
fn shutdown_options(args: &[Bytes]) -> Result<(), Reply> {
    let (mut save, mut abort) = (0, false);
    for a in args {
        match a.to_ascii_lowercase().as_slice() {
            b"nosave" | b"save" => save += 1,
            b"now" | b"force" => {}
            b"abort" => abort = true,
            _ => return Err(Reply::error("ERR syntax error")),
        }
    }
    match (save, abort) {
        (0, true) if args.len() == 1 => Err(Reply::error("ERR No shutdown in progress.")),
        (2.., _) | (_, true) => Err(Reply::error("ERR syntax error")),
        _ => Ok(()),
    }
}

/// What `args` take as a RESP array of bulk strings (`CLIENT LIST`'s `qbuf`).
fn resp_bytes(args: &[Bytes]) -> usize {
    let header = |n: usize| 3 + n.checked_ilog10().map_or(1, |d| d as usize + 1);
    header(args.len()) + args.iter().map(|a| header(a.len()) + a.len() + 2).sum::<usize>()
}

/// Answer the pipeline in order, writing whenever [`WRITE_BUFFER_BYTES_MAX`]
/// of replies are encoded (a slow reader then holds up the connection, not
/// our memory). What is left in `wbuf` is the caller's to write.
async fn answer<W: AsyncWrite + Unpin>(
    shared: &ServerState,
    pipeline: &mut Pipeline,
    proto: u8,
    wbuf: &mut BytesMut,
    w: &mut W,
    last_write: &mut Option<(u32, u64)>,
    info: &crate::cmd::ClientInfo,
) -> std::io::Result<()> {
    // Counted for the whole batch, added to the server's counters once.
    let mut tally = crate::shell::Tally::default();
    let answered = async {
        while let Some((p, meta)) = pipeline.pop_with() {
            let wrote = match &p {
                Pending::Job { partition, request, .. } if writes(request) => Some(*partition),
                _ => None,
            };
            let (reply, request) = match p {
                Pending::Wait { numreplicas, timeout } => {
                    // WAIT may hold for long (timeout 0: for ever): the
                    // replies before it go out first, as Redis sends them.
                    if !wbuf.is_empty() {
                        write_out(w, wbuf).await?;
                    }
                    (wait_for_standby(shared, *last_write, numreplicas, timeout).await, None)
                }
                p => resolve(shared, p).await,
            };
            if let Some(partition) = wrote
                && !matches!(reply, Reply::Error(_))
            {
                // Published before it was answered: the sequence published now covers it.
                *last_write = match shared.route(partition) {
                    Route::Local(local) => local.cell.read().as_ref().map(|p| (partition, p.published_seq())),
                    _ => None,
                };
            }
            let usec = meta.started.map_or(0, |t| t.elapsed().as_micros() as u64);
            tally.add(&shared.stats, meta.stat, &reply, usec);
            if shared.controls.slowlog.is_slow(usec) {
                // The arguments are at hand for a command the engine ran; for
                // one answered here, its name.
                let argv = match &request {
                    Some(Request::Exec { cmds, multi: false }) if cmds.len() == 1 => crate::cmd::SlowLog::argv(&cmds[0].args),
                    Some(Request::Exec { .. } | Request::Checked { .. }) => vec![Bytes::from_static(b"exec")],
                    _ => meta.stat.map(|(c, _)| vec![Bytes::from_static(commands::SPECS[c].name.as_bytes())]).unwrap_or_default(),
                };
                shared.controls.slowlog.record(&argv, usec, &info.addr, info.name().as_ref());
            }
            if meta.silent {
                continue;
            }
            if let Reply::Bulk(value) = &reply
                && value.len() >= WRITE_BUFFER_BYTES_MAX
            {
                // A large value goes out from where it is: copied into the
                // buffer, a 100 MB GET would touch 200 MB of fresh memory.
                // Finished and flushed at once, so that a reply held behind
                // it (a WAIT) never leaves this one without its end.
                wbuf.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
                write_out(w, wbuf).await?;
                w.write_all(value).await?;
                wbuf.extend_from_slice(b"\r\n");
                write_out(w, wbuf).await?;
                continue;
            }
            reply.encode(proto, wbuf);
            if wbuf.len() >= WRITE_BUFFER_BYTES_MAX {
                write_out(w, wbuf).await?;
            }
        }
        Ok::<(), std::io::Error>(())
    }
    .await;
    tally.flush(&shared.stats);
    answered
}

/// Write `wbuf` and empty it; a buffer grown well past the limit by one
/// large reply is given back rather than kept for the connection's lifetime
/// (one that merely doubled past it while filling is kept: it is reused).
async fn write_out<W: AsyncWrite + Unpin>(w: &mut W, wbuf: &mut BytesMut) -> std::io::Result<()> {
    w.write_all(wbuf).await?;
    // Nothing for TCP; over TLS the last record may wait in the session.
    w.flush().await?;
    wbuf.clear();
    if wbuf.capacity() > 2 * WRITE_BUFFER_BYTES_MAX {
        *wbuf = BytesMut::with_capacity(16 << 10);
    }
    Ok(())
}

/// Send FIN, then discard what the client still sends for a moment: closing
/// with unread input makes the kernel send RST, which can destroy the error
/// reply we just wrote before the client reads it.
async fn close_gracefully<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(r: &mut R, mut w: W) {
    let _ = w.shutdown().await;
    let mut sink = [0u8; 16 << 10];
    let until = Instant::now() + Duration::from_millis(200);
    let mut left = 4usize << 20;
    while left > 0 {
        match tokio::time::timeout_at(until.into(), r.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

/// A transaction's replies with the connection's own put in their places
/// (an EXEC that failed as a whole, MOVED or EXECABORT, stays as it is).
fn spliced(reply: Reply, splice: Vec<(usize, Reply)>) -> Reply {
    match reply {
        Reply::Array(mut replies) if !splice.is_empty() => {
            for (at, r) in splice {
                replies.insert(at.min(replies.len()), r);
            }
            Reply::Array(replies)
        }
        reply => reply,
    }
}

/// Await a reply; a rerouted request is dispatched again until its hold
/// ends. The request comes back with the reply (the slow log names it).
async fn resolve(shared: &ServerState, p: Pending) -> (Reply, Option<Request>) {
    let (mut rx, partition, slot, request, hold_until, splice) = match p {
        Pending::Ready(r) => return (r, None),
        Pending::Wait { .. } => unreachable!("answered by `answer`"),
        Pending::Job { rx, partition, slot, request, hold_until, splice } => (rx, partition, slot, request, hold_until, splice),
    };
    loop {
        match (&mut rx).await {
            Ok(Outcome::Reply(r)) => return (spliced(r, splice), Some(request)),
            Ok(Outcome::Reroute) | Err(_) => {}
        }
        // The partition is going away here; the control task will update the route or the map.
        let mut ver = shared.subscribe();
        ver.borrow_and_update();
        let wait = Instant::now() + Duration::from_millis(10);
        let _ = tokio::time::timeout_at(wait.min(hold_until).into(), ver.changed()).await;
        match dispatch(shared, partition, slot, &request, hold_until).await {
            Ok(next) => rx = next,
            Err(reply) => return (reply, Some(request)),
        }
    }
}

fn cluster_down() -> Reply {
    Reply::error("CLUSTERDOWN Hash slot not served")
}

/// Send `request` to the engine serving the partition, or answer where else to go.
async fn dispatch(
    shared: &ServerState,
    partition: u32,
    slot: u16,
    request: &Request,
    hold_until: Instant,
) -> Result<oneshot::Receiver<Outcome>, Reply> {
    let mut ver = shared.subscribe();
    loop {
        ver.borrow_and_update();
        if Instant::now() >= hold_until {
            return Err(cluster_down());
        }
        match shared.route(partition) {
            Route::Local(local) => {
                let (otx, orx) = oneshot::channel();
                if local.tx.send(Msg::Job(Job { partition, request: request.clone(), reply: otx })).await.is_ok() {
                    return Ok(orx);
                }
            }
            Route::Moved(addr) => return Err(Reply::error(format!("MOVED {slot} {addr}"))),
            Route::Wait => {}
        }
        if tokio::time::timeout_at(hold_until.into(), ver.changed()).await.is_err() {
            return Err(cluster_down());
        }
    }
}

/// Answer a read-only command from the published index, on this thread,
/// with the engine's rules: the lease valid before; the state it saw durable
/// (wait for the barrier that covers its last publication); the lease and
/// the owner word still ours after (validate after read). `None`: let the
/// engine handle it (partition going away, lease in doubt, volume failed).
async fn fast_read(shared: &ServerState, cell: &engine::ServedPartition, cmd: &Command, hold_until: Instant) -> Option<Reply> {
    if !shared.lease_valid() {
        return None;
    }
    let (reply, need) = {
        let guard = cell.read();
        let part = guard.as_ref()?;
        let view = engine::Committed(part);
        let staged = commands::Overlay::new();
        let mut t = commands::Txn::new(&view, &staged, engine::now_ms());
        let reply = commands::execute(&mut t, cmd);
        if !t.ops.is_empty() {
            return None; // not a read after all: never stage from here
        }
        (reply, cell.durable_after())
    };
    // Usually the barrier covering it already returned: no subscription then.
    if *shared.barriers.borrow() < need {
        wait_for_barrier(shared, need, hold_until).await?;
    }
    cell.validated(shared.lease_valid()).then_some(reply)
}

/// Wait until barrier `need` has returned, at most until `hold_until`.
async fn wait_for_barrier(shared: &ServerState, need: u64, hold_until: Instant) -> Option<()> {
    let mut barriers = shared.barriers.subscribe();
    while *barriers.borrow_and_update() < need {
        match tokio::time::timeout_at(hold_until.into(), barriers.changed()).await {
            Ok(Ok(())) => {}
            _ => return None,
        }
    }
    Some(())
}

/// Answer a read-only command of a `READONLY` connection from our hot
/// standby of `partition` (another server owns it), if the standby matched
/// the owner's published head at most `replica_max_lag` ago, waiting at
/// most that long for a poll to make it so. `None`: not ours to answer (no
/// standby, too far behind, or a record moved under the read); the caller
/// then sends the client to the owner, as a Redis replica would.
async fn standby_read(shared: &ServerState, partition: u32, cmd: &Command) -> Option<Reply> {
    use crate::standby::Read;
    let standbys = shared.standbys.as_ref()?;
    let max_lag = shared.replica_max_lag;
    if max_lag.is_zero() {
        return None;
    }
    let until = Instant::now() + max_lag;
    loop {
        let polled = standbys.polled();
        tokio::pin!(polled);
        polled.as_mut().enable();
        match standbys.read(partition, max_lag, |s| crate::standby::execute_read(s, cmd)) {
            Read::Done(reply) => {
                if reply.is_some() {
                    shared.stats.replica_reads.fetch_add(1, Ordering::Relaxed);
                }
                return reply;
            }
            Read::NotKept => return None,
            Read::Wait => tokio::time::timeout_at(until.into(), polled).await.ok()?,
        }
    }
}

/// `WAIT numreplicas timeout`: whether the hot standby of the partition of
/// this connection's last write has applied it (1) or not (0) when
/// `numreplicas` standbys have, or when the timeout ends (Redis's rules: a
/// timeout of 0 waits for ever, `numreplicas` <= 0 does not wait). A
/// partition has one standby, kept by another server, which we ask
/// (`SHAREDISK STANDBY-APPLIED`); the slot map may name another one
/// meanwhile, so each question goes to the standby it names then.
async fn wait_for_standby(shared: &ServerState, last_write: Option<(u32, u64)>, numreplicas: i64, timeout: Option<Duration>) -> Reply {
    let Some((partition, seq)) = last_write else { return Reply::Int(0) };
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut ver = shared.subscribe();
    loop {
        ver.borrow_and_update();
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let wait = if numreplicas <= 0 { Duration::ZERO } else { left.unwrap_or(Duration::MAX).min(cmd::STANDBY_WAIT_MAX) };
        let asked_at = Instant::now();
        let applied = match shared.view().standby_of(partition) {
            Some(node) if node.name != shared.me.name => standby_applied(shared, &node.addr(), partition, seq, wait).await,
            _ => None,
        };
        if applied.is_some_and(|a| a >= seq) {
            return Reply::Int(1);
        }
        if numreplicas <= 0 || deadline.is_some_and(|d| Instant::now() >= d) {
            return Reply::Int(0);
        }
        // Asked in vain at once (no standby, or it cannot answer): wait
        // for the map to change rather than ask again at once.
        if asked_at.elapsed() < wait {
            let pause = left.unwrap_or(Duration::MAX).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(pause, ver.changed()).await;
        }
    }
}

/// Ask the server at `addr` how far its standby of `partition` has applied
/// the log, letting it wait up to `wait` for `seq`; None if it keeps no
/// synced standby of it or cannot be asked.
async fn standby_applied(shared: &ServerState, addr: &str, partition: u32, seq: u64, wait: Duration) -> Option<u64> {
    let ask = async {
        let mut s = crate::peer::connect(shared, addr).await?;
        // A command is an array of bulk strings: encoded as a reply would be.
        let args = ["SHAREDISK".to_owned(), "STANDBY-APPLIED".into(), partition.to_string(), seq.to_string(), wait.as_millis().to_string()];
        crate::peer::send(&mut s, args.into_iter().map(Bytes::from).collect()).await?;
        // One integer reply, ":<n>\r\n"; anything else is no answer.
        let (mut line, mut len) = ([0u8; 32], 0);
        while !line[..len].ends_with(b"\r\n") {
            match s.read(&mut line[len..]).await.ok()? {
                0 => return None,
                n => len += n,
            }
            if len == line.len() {
                return None;
            }
        }
        let text = std::str::from_utf8(line[..len].strip_prefix(b":")?.strip_suffix(b"\r\n")?).ok()?;
        u64::try_from(text.parse::<i64>().ok()?).ok()
    };
    // Room for the round trip: a paused or gone standby costs WAIT this much past its timeout.
    tokio::time::timeout(wait + Duration::from_millis(100), ask).await.ok().flatten()
}

fn crossslot() -> Reply {
    Reply::error("CROSSSLOT Keys in request don't hash to the same slot")
}

/// The one slot all keys of these commands hash to; Err(CROSSSLOT), Ok(None) without keys.
fn slot_of<'a>(cmds: impl Iterator<Item = &'a Command>) -> Result<Option<u16>, Reply> {
    let mut slot = None;
    for cmd in cmds {
        for k in cmd.keys() {
            let s = key_slot(k);
            if slot.is_some_and(|x| x != s) {
                return Err(crossslot());
            }
            slot = Some(s);
        }
    }
    Ok(slot)
}

/// The one slot shard channels hash to (CROSSSLOT if several).
fn slot_of_names(names: &[Bytes]) -> Result<u16, Reply> {
    let mut slots = names.iter().map(|n| key_slot(n));
    let first = slots.next().unwrap_or(0);
    if slots.any(|s| s != first) { Err(crossslot()) } else { Ok(first) }
}

/// Whether a RESP2 connection with subscriptions may run `id` (Redis's rule).
fn allowed_while_subscribed(id: Id) -> bool {
    matches!(
        id,
        Id::Subscribe
            | Id::Psubscribe
            | Id::Ssubscribe
            | Id::Unsubscribe
            | Id::Punsubscribe
            | Id::Sunsubscribe
            | Id::Ping
            | Id::Quit
            | Id::Reset
    )
}

impl Conn {
    fn new(info: Arc<crate::cmd::ClientInfo>, shared: &ServerState) -> Conn {
        let client = ClientState::new(info, shared);
        Conn {
            client,
            stat: None,
            arrived_at: Instant::now(),
            reply_mode: ReplyMode::On,
            reply_command: false,
            multi: None,
            watch: None,
            close: false,
            no_reply: false,
            last_write: None,
            subs: None,
            pushed: false,
            shard_watch: None,
        }
    }

    /// `(P|S)SUBSCRIBE` and `(P|S)UNSUBSCRIBE`: a push per channel.
    fn pubsub(&mut self, shared: &ServerState, cmd: &Command) -> Reply {
        use crate::pubsub::Kind;
        let names = &cmd.args[1..];
        let kind = match cmd.id() {
            Id::Subscribe | Id::Unsubscribe => Kind::Channel,
            Id::Psubscribe | Id::Punsubscribe => Kind::Pattern,
            _ => Kind::Shard,
        };
        let subscribing = matches!(cmd.id(), Id::Subscribe | Id::Psubscribe | Id::Ssubscribe);
        if subscribing {
            let user = &self.client.user;
            let allowed = |n: &Bytes| if kind == Kind::Pattern { user.may_use_pattern(n) } else { user.may_use_channel(n) };
            if !names.iter().all(allowed) {
                return Reply::error(crate::cmd::NOPERM_CHANNELS);
            }
        }
        if kind == Kind::Shard && subscribing {
            // One slot, served here: where its SPUBLISHes are answered. The
            // watch first: a release right after the check is then seen.
            let slot = match slot_of_names(names) {
                Ok(slot) => slot,
                Err(e) => return e,
            };
            // (A watch already kept may hold a change not handled yet: it
            // stays unseen, and its handling checks this channel too.)
            if self.shard_watch.is_none() {
                let mut watch = shared.subscribe();
                watch.borrow_and_update();
                self.shard_watch = Some(watch);
            }
            let refused = match shared.route(shared.partition_of_slot(slot)) {
                Route::Local(_) => None,
                Route::Moved(addr) => Some(Reply::error(format!("MOVED {slot} {addr}"))),
                Route::Wait => Some(cluster_down()),
            };
            if let Some(r) = refused {
                if self.subs.as_ref().is_none_or(|s| s.counts()[2] == 0) {
                    self.shard_watch = None;
                }
                return r;
            }
        }
        let info = self.client.info.clone();
        self.pushed = true;
        let subs = self.subs.get_or_insert_with(|| shared.controls.pubsub.subscriber(info));
        // Messages already queued go out before the confirmations: a client
        // that has left subscribed mode must not read one as a reply.
        let mut pushes: Vec<Reply> = std::iter::from_fn(|| subs.try_recv()).map(|m| m.reply()).collect();
        pushes.extend(if subscribing { subs.subscribe(kind, names) } else { subs.unsubscribe(kind, names) });
        if subs.counts()[2] == 0 {
            self.shard_watch = None;
        }
        self.show_subscriptions();
        Reply::Seq(pushes)
    }

    /// Its subscription counts where `CLIENT LIST` reads them.
    fn show_subscriptions(&self) {
        let counts = self.subs.as_ref().map_or([0; 3], |s| s.counts());
        for (at, n) in self.client.info.subs.iter().zip(counts) {
            at.store(n, Ordering::Relaxed);
        }
    }

    /// The shard subscriptions whose slot no longer is served here, ended:
    /// their `sunsubscribe` pushes.
    fn shards_lost(&mut self, shared: &ServerState) -> Reply {
        let Some(subs) = &mut self.subs else { return Reply::Seq(Vec::new()) };
        let lost: Vec<Bytes> = subs
            .shard_channels()
            .filter(|c| !matches!(shared.route(shared.partition_of_slot(crate::resp::key_slot(c))), Route::Local(_)))
            .cloned()
            .collect();
        let pushes = subs.lose_shards(&lost);
        if subs.counts()[2] == 0 {
            self.shard_watch = None;
        }
        self.show_subscriptions();
        Reply::Seq(pushes)
    }

    /// Whether this connection may run `cmd` (Redis's order: a login first,
    /// then the ACL); Some is the refusal. The peer login (`peer.rs`) and
    /// the `no_auth` commands (AUTH, HELLO, QUIT, RESET) need no login.
    /// `SHAREDISK CHALLENGE|PROVE` are answered here.
    fn admit(&mut self, shared: &ServerState, cmd: &Command) -> Option<Reply> {
        if cmd.spec.id == Id::Sharedisk {
            match cmd.args[1].to_ascii_lowercase().as_slice() {
                b"challenge" => return Some(crate::peer::challenge(&mut self.client)),
                b"prove" => return Some(crate::peer::prove(&mut self.client, shared, &cmd.args)),
                _ => {}
            }
        }
        // The ACL changed: look our user up again; one that is gone takes
        // the connection with it, as in Redis.
        let epoch = shared.acl.epoch();
        if epoch != self.client.acl_epoch && !self.client.peer {
            match shared.acl.user(&self.client.user.name) {
                Some(u) => {
                    self.client.user = u;
                    self.client.acl_epoch = epoch;
                }
                None => {
                    self.close = true;
                    return Some(Reply::error("ERR the user of this connection was deleted"));
                }
            }
        }
        if !self.client.authenticated && !cmd.spec.flags.contains(&"no_auth") && shared.acl.auth_required() {
            return Some(Reply::error("NOAUTH Authentication required."));
        }
        if self.client.user.unrestricted() {
            return None;
        }
        self.client.user.check(cmd).err().map(|d| Reply::error(d.message()))
    }

    /// Whether the reply of the command just handled is to be dropped
    /// (`CLIENT REPLY OFF`, or the command after `CLIENT REPLY SKIP`).
    fn reply_silent(&mut self) -> bool {
        if std::mem::take(&mut self.no_reply) {
            return true;
        }
        if std::mem::take(&mut self.reply_command) {
            return self.reply_mode != ReplyMode::On;
        }
        // Pub/sub confirmations are pushes: sent whatever the reply mode, as
        // Redis sends them (messages never pass through here).
        let pushed = std::mem::take(&mut self.pushed);
        match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => !pushed,
            ReplyMode::Skip => {
                self.reply_mode = ReplyMode::On;
                !pushed
            }
        }
    }

    /// `writes_pending`: an earlier command of this pipeline that may write
    /// is not answered yet (a read must then queue behind it, in order).
    async fn handle(&mut self, shared: &Arc<ServerState>, args: Vec<Bytes>, writes_pending: bool) -> Pending {
        let name = args.first().cloned();
        let cmd = match Command::parse(args) {
            Ok(cmd) => cmd,
            Err(reply) => {
                self.stat = name.and_then(|n| commands::lookup(&n)).map(|spec| (commands::spec_index(spec), true));
                if let Some(m) = &mut self.multi {
                    m.dirty = true;
                }
                return Pending::Ready(reply);
            }
        };
        let index = commands::spec_index(cmd.spec);
        self.stat = Some((index, false));
        let container = cmd.id().has_subcommands();
        self.client.info.arrived(self.arrived_at, index, if container { cmd.args.get(1).map(|a| a.as_ref()) } else { None });
        if let Some(refused) = self.admit(shared, &cmd) {
            if let Some(m) = &mut self.multi {
                m.dirty = true;
            }
            return Pending::Ready(refused);
        }
        let subscribed = self.subs.as_ref().is_some_and(|s| s.active());
        if subscribed && self.client.proto < 3 && !allowed_while_subscribed(cmd.id()) {
            return Pending::Ready(Reply::error(format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                cmd.spec.name
            )));
        }
        if cmd.id() == Id::Client && cmd.args.len() == 3 && cmd.args[1].eq_ignore_ascii_case(b"reply") {
            let mode = match cmd.args[2].to_ascii_lowercase().as_slice() {
                b"on" => ReplyMode::On,
                b"off" => ReplyMode::Off,
                b"skip" => ReplyMode::Skip,
                _ => return Pending::Ready(Reply::error("ERR syntax error")),
            };
            self.reply_mode = mode;
            self.reply_command = true;
            return Pending::Ready(Reply::ok());
        }
        // `maxmemory` (noeviction): refused before it is queued or run, as in Redis.
        if shared.over_maxmemory() && cmd.spec.flags.contains(&"denyoom") {
            if let Some(m) = &mut self.multi {
                m.dirty = true;
            }
            return Pending::Ready(Reply::error(crate::shell::OOM_MAXMEMORY));
        }
        if let Some(m) = &mut self.multi {
            match cmd.id() {
                Id::Exec | Id::Discard | Id::Multi | Id::Quit | Id::Reset => {}
                _ if cmd.spec.flags.contains(&"no_multi") => {
                    m.dirty = true;
                    return Pending::Ready(Reply::error("ERR Command not allowed inside a transaction"));
                }
                // Refused, and the transaction goes on (as in Redis).
                Id::Watch => return Pending::Ready(Reply::error("ERR WATCH inside MULTI is not allowed")),
                // WAIT waits for replicas of earlier writes: not inside a
                // transaction. A flush spans every partition, a transaction
                // runs in one: it could not take its place in the order.
                Id::Wait
                | Id::Flushall
                | Id::Flushdb
                | Id::Publish
                | Id::Spublish
                | Id::Subscribe
                | Id::Psubscribe
                | Id::Ssubscribe
                | Id::Unsubscribe
                | Id::Punsubscribe
                | Id::Sunsubscribe => {
                    m.dirty = true;
                    return Pending::Ready(Reply::error(format!("ERR '{}' is not allowed inside MULTI on sharedisk", cmd.spec.name)));
                }
                // Queued as Redis queues them; the connection answers the
                // ones that are not data commands at EXEC.
                _ => return Pending::Ready(m.queue(shared, cmd)),
            }
        }
        // CLIENT PAUSE holds what it names (CLIENT itself never, so that
        // UNPAUSE gets through); a transaction waits at EXEC.
        if cmd.id() != Id::Client && shared.controls.pause_active.load(Ordering::Relaxed) {
            let writes = match (cmd.id(), &self.multi) {
                (Id::Exec, Some(m)) => m.queued.iter().any(|c| c.spec.flags.contains(&"write")),
                _ => cmd.spec.flags.contains(&"write"),
            };
            shared.wait_unpaused(writes).await;
        }
        let hold_until = Instant::now() + HOLD_MAX;
        if cmd.spec.kind.is_data() {
            let slot = match slot_of(std::iter::once(&cmd)) {
                Ok(Some(s)) => s,
                Ok(None) => return Pending::Ready(commands::keyless(&cmd).unwrap_or_else(|| commands::wrong_args(cmd.spec.name))),
                Err(e) => return Pending::Ready(e),
            };
            if !writes_pending
                && cmd.spec.kind == Kind::ReadData
                && let Route::Local(local) = shared.route(shared.partition_of_slot(slot))
                && let Some(reply) = fast_read(shared, &local.cell, &cmd, hold_until).await
            {
                return Pending::Ready(reply);
            }
            if cmd.spec.kind == Kind::ReadData
                && self.client.readonly
                && let partition = shared.partition_of_slot(slot)
                && let Route::Moved(_) = shared.route(partition)
                && let Some(reply) = standby_read(shared, partition, &cmd).await
            {
                return Pending::Ready(reply);
            }
            return self.submit(shared, slot, Request::Exec { cmds: vec![cmd], multi: false }, hold_until, Vec::new()).await;
        }
        let reply = match cmd.id() {
            Id::Watch => {
                let slot = match slot_of(std::iter::once(&cmd)) {
                    Ok(Some(s)) => s,
                    Ok(None) => return Pending::Ready(commands::wrong_args("watch")),
                    Err(e) => return Pending::Ready(e),
                };
                let (watch, _) = self.watch.get_or_insert_with(|| (engine::Watch::new(), slot));
                let request = Request::Watch { keys: cmd.args[1..].to_vec(), watch: watch.clone() };
                return self.submit(shared, slot, request, hold_until, Vec::new()).await;
            }
            Id::Unwatch => {
                self.watch = None;
                Reply::ok()
            }
            Id::Subscribe | Id::Psubscribe | Id::Ssubscribe | Id::Unsubscribe | Id::Punsubscribe | Id::Sunsubscribe => {
                self.pubsub(shared, &cmd)
            }
            // Subscribed, RESP2: PING answers in the shape of a message.
            Id::Ping if subscribed && self.client.proto < 3 && cmd.args.len() <= 2 => {
                Reply::Array(vec![Reply::bulk("pong"), Reply::Bulk(cmd.args.get(1).cloned().unwrap_or_default())])
            }
            Id::Quit => {
                self.close = true;
                Reply::ok()
            }
            // As if the client had reconnected (Redis's `clearClientConnectionState`):
            // no transaction, no watch, RESP2, replies on, READWRITE, no name.
            Id::Reset => {
                // Back to the default user: a login again if it needs one.
                let user = shared.acl.default_user();
                self.client.authenticated = user.needs_no_password();
                self.client.info.set_user(&user.name);
                self.client.user = user;
                self.client.acl_epoch = shared.acl.epoch();
                self.client.peer = false;
                self.multi = None;
                self.watch = None;
                self.subs = None;
                self.shard_watch = None;
                self.show_subscriptions();
                self.reply_mode = ReplyMode::On;
                self.client.proto = 2;
                self.client.info.resp.store(2, Ordering::Relaxed);
                self.client.readonly = false;
                self.client.info.readonly.store(false, Ordering::Relaxed);
                self.client.info.set_name(None);
                Reply::Simple("RESET".into())
            }
            // As Redis: on success no reply, the connection just closes
            // (redis-py's `shutdown()` counts that as success). The server
            // then stops as on SIGTERM: its partitions go to their standbys.
            Id::Shutdown => match shutdown_options(&cmd.args[1..]) {
                Err(reply) => reply,
                Ok(()) => {
                    shared.controls.shutdown.notify_one();
                    self.close = true;
                    self.no_reply = true;
                    Reply::ok()
                }
            },
            Id::Multi if self.multi.is_some() => Reply::error("ERR MULTI calls can not be nested"),
            Id::Multi => {
                self.multi = Some(Multi::default());
                Reply::ok()
            }
            Id::Wait => {
                let (n, t) = (commands::parse_i64(&cmd.args[1]), commands::parse_i64(&cmd.args[2]));
                return Pending::Ready(match (n, t) {
                    (Some(_), Some(t)) if t < 0 => Reply::error("ERR timeout is negative"),
                    (Some(numreplicas), Some(t)) => {
                        let timeout = (t > 0).then(|| Duration::from_millis(t as u64));
                        return Pending::Wait { numreplicas, timeout };
                    }
                    _ => Reply::error("ERR value is not an integer or out of range"),
                });
            }
            Id::Discard => match self.multi.take() {
                Some(_) => {
                    self.watch = None;
                    Reply::ok()
                }
                None => Reply::error("ERR DISCARD without MULTI"),
            },
            Id::Exec => match self.multi.take() {
                None => Reply::error("ERR EXEC without MULTI"),
                Some(m) if m.dirty => {
                    self.watch = None;
                    Reply::error("EXECABORT Transaction discarded because of previous errors.")
                }
                Some(m) if m.queued.iter().any(|c| c.spec.flags.contains(&"denyoom")) && shared.over_maxmemory() => {
                    self.watch = None;
                    Reply::error(format!("EXECABORT Transaction discarded because of: {}", crate::shell::OOM_MAXMEMORY))
                }
                Some(m) => {
                    let watch = self.watch.take();
                    let (mut data, mut own) = (Vec::new(), Vec::new());
                    for (at, c) in m.queued.into_iter().enumerate() {
                        if c.spec.kind.is_data() {
                            data.push(c);
                        } else {
                            own.push((at, cmd::run(&c, &mut self.client, shared).await));
                        }
                    }
                    match (slot_of(data.iter()), watch) {
                        (Ok(Some(slot)), None) => {
                            return self.submit(shared, slot, Request::Exec { cmds: data, multi: true }, hold_until, own).await;
                        }
                        (Ok(Some(slot)), Some((watch, _))) | (Ok(None), Some((watch, slot))) => {
                            return self.submit(shared, slot, Request::Checked { cmds: data, watch }, hold_until, own).await;
                        }
                        (Ok(None), None) => Reply::Array(own.into_iter().map(|(_, r)| r).collect()),
                        (Err(e), _) => e,
                    }
                }
            },
            _ => cmd::run(&cmd, &mut self.client, shared).await,
        };
        Pending::Ready(reply)
    }

    async fn submit(
        &mut self,
        shared: &ServerState,
        slot: u16,
        request: Request,
        hold_until: Instant,
        splice: Vec<(usize, Reply)>,
    ) -> Pending {
        let partition = shared.partition_of_slot(slot);
        match dispatch(shared, partition, slot, &request, hold_until).await {
            Ok(rx) => Pending::Job { rx, partition, slot, request, hold_until, splice },
            Err(reply) => Pending::Ready(reply),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::VALUE_RESERVE_BYTES;

    fn words(line: &str) -> Vec<Bytes> {
        line.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()
    }

    fn command(line: &str) -> Command {
        Command::parse(words(line)).unwrap()
    }

    struct Always;
    impl engine::Lease for Always {
        fn valid(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn fast_reads_wait_for_durability_and_validate_the_owner_after_reading() {
        use sharedisk_storage::{CreateOptions, Op, Partition, ProcessIdentity, Volume};
        let opts = CreateOptions { segment_bytes: 64 << 10, ..CreateOptions::new(4 << 20, 2) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let reg = vol.register(0xA, ProcessIdentity::current()).unwrap();
        let part = Partition::claim(vol.clone(), reg, 0).unwrap();
        let cell = engine::ServedPartition::new(part);
        let shared = ServerState::for_test(Arc::new(Always), 2);
        let get = command("GET k");
        let soon = || Instant::now() + Duration::from_millis(100);
        // Published but not yet covered by a barrier (as the engine leaves it
        // between its publication and the next sync): not answered from here.
        {
            let mut g = cell.write();
            let p = g.as_mut().unwrap();
            p.append(&[Op::Put { key: b"k".to_vec(), value: b"v1".to_vec().into(), expire_at_ms: 0 }], engine::now_ms()).unwrap();
            cell.set_durable_after(1);
            p.publish().unwrap();
        }
        assert_eq!(fast_read(&shared, &cell, &get, soon()).await, None, "answered a read of state not yet durable");
        shared.barriers.send_replace(1);
        assert_eq!(fast_read(&shared, &cell, &get, soon()).await, Some(Reply::bulk("v1")));
        // Another server takes the partition over: our lease still looks valid,
        // but the owner word says otherwise, so nothing stale is served.
        let reg_b = vol.register(0xB, ProcessIdentity::current()).unwrap();
        let _b = Partition::claim(vol.clone(), reg_b, 0).unwrap();
        assert_eq!(fast_read(&shared, &cell, &get, soon()).await, None, "a deposed owner served a read");
        // Commands that would write are never run here.
        assert_eq!(fast_read(&shared, &cell, &command("SET k x"), soon()).await, None);
    }

    /// READONLY reads answered from a standby of a partition another
    /// server owns: only while it matched the owner's head within the
    /// bound. Err: what went wrong (the stale-read mutant must cause one).
    async fn standby_reads_respect_the_bound() -> Result<(), String> {
        use sharedisk_storage::{CreateOptions, Op, Partition, ProcessIdentity, Volume};
        let opts = CreateOptions { segment_bytes: 64 << 10, ..CreateOptions::new(4 << 20, 2) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let reg = vol.register(0xA, ProcessIdentity::current()).unwrap();
        let mut owner = Partition::claim(vol.clone(), reg, 0).unwrap();
        let mut put = |v: &str| {
            owner
                .append(&[Op::Put { key: b"k".to_vec(), value: v.as_bytes().to_vec().into(), expire_at_ms: 0 }], engine::now_ms())
                .unwrap();
            owner.commit().unwrap();
        };
        put("v1");
        let standbys = crate::standby::tests::unpolled(vol.clone());
        standbys.want(&std::collections::BTreeSet::from([0]));
        let mut state = ServerState::for_test(Arc::new(Always), 2);
        state.standbys = Some(standbys.clone());
        state.replica_max_lag = Duration::from_millis(20);
        let get = command("GET k");
        let read = || standby_read(&state, 0, &get);
        if let Some(r) = read().await {
            return Err(format!("a standby that never synchronised answered {r:?}"));
        }
        crate::standby::tests::poll_all(&standbys);
        if read().await != Some(Reply::bulk("v1")) {
            return Err("a fresh standby did not answer".into());
        }
        put("v2");
        // No poll since: once the bound has passed, the standby must not answer.
        let polled_at = Instant::now();
        while polled_at.elapsed() <= state.replica_max_lag {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(r) = read().await {
            return Err(format!("a standby last synced {:?} ago answered {r:?}", polled_at.elapsed()));
        }
        crate::standby::tests::poll_all(&standbys);
        if read().await != Some(Reply::bulk("v2")) {
            return Err("the standby did not answer after catching up".into());
        }
        // Writes are never run there; a partition we keep no standby of is not answered.
        if standby_read(&state, 0, &command("SET k x")).await.is_some() || standby_read(&state, 1, &get).await.is_some() {
            return Err("answered what is not a standby's".into());
        }
        Ok(())
    }

    #[tokio::test]
    async fn wait_and_standby_applied_refuse_bad_arguments() {
        let shared = Arc::new(ServerState::for_test(Arc::new(Always), 2));
        let mut c = Conn::new(Arc::new(crate::cmd::ClientInfo::new(1, "127.0.0.1:2".into(), "127.0.0.1:1".into(), 0)), &shared);
        let not_int = Reply::error("ERR value is not an integer or out of range");
        assert_eq!(ready(&mut c, &shared, words("WAIT x 10")).await, not_int);
        assert_eq!(ready(&mut c, &shared, words("WAIT 1 1.5")).await, not_int);
        assert_eq!(ready(&mut c, &shared, words("WAIT 1 -1")).await, Reply::error("ERR timeout is negative"));
        assert_eq!(ready(&mut c, &shared, words("WAIT 1")).await, commands::wrong_args("wait"));
        // 0 is no timeout; answered in its turn, after what is before it.
        assert!(matches!(c.handle(&shared, words("WAIT 2 0"), false).await, Pending::Wait { numreplicas: 2, timeout: None }));
        // No write on this connection: nothing to wait for.
        assert_eq!(wait_for_standby(&shared, None, 1, Some(Duration::from_millis(1))).await, Reply::Int(0));
        let bad = Reply::error("ERR STANDBY-APPLIED takes a partition of this volume, a sequence number and a timeout in ms");
        for args in [
            "SHAREDISK STANDBY-APPLIED 2 1 0",
            "SHAREDISK STANDBY-APPLIED x 1 0",
            "SHAREDISK STANDBY-APPLIED 0 -1 0",
            "SHAREDISK STANDBY-APPLIED 0 1 -5",
        ] {
            assert_eq!(ready(&mut c, &shared, words(args)).await, bad, "{args}");
        }
        assert_eq!(ready(&mut c, &shared, words("SHAREDISK STANDBY-APPLIED 0 1")).await, commands::wrong_args("sharedisk|standby-applied"));
        assert!(
            matches!(ready(&mut c, &shared, words("SHAREDISK NOPE")).await, Reply::Error(e) if e.starts_with("ERR unknown subcommand"))
        );
        // A server keeping no standby of the partition answers -1 at once.
        assert_eq!(ready(&mut c, &shared, words("SHAREDISK STANDBY-APPLIED 1 5 10000")).await, Reply::Int(-1));
    }

    #[tokio::test]
    async fn readonly_reads_come_from_a_standby_only_within_the_bound() {
        standby_reads_respect_the_bound().await.unwrap();
        crate::mutant::set(crate::mutant::Mutant::StaleReplicaReads);
        let broken = standby_reads_respect_the_bound().await;
        crate::mutant::set(crate::mutant::Mutant::None);
        assert!(broken.is_err(), "the stale-read mutant went unnoticed");
    }

    /// The reply of a command that is answered at once.
    async fn ready(c: &mut Conn, shared: &Arc<ServerState>, args: Vec<Bytes>) -> Reply {
        match c.handle(shared, args, false).await {
            Pending::Ready(r) => r,
            Pending::Job { .. } => panic!("sent to a partition"),
            Pending::Wait { .. } => panic!("a WAIT"),
        }
    }

    /// A server whose slot map gives every partition to `other` at 127.0.0.1:7999.
    fn shared_with_another_owner() -> Arc<ServerState> {
        use sharedisk_lockmgr::core::{ClusterMap, MapServer};
        let shared = Arc::new(ServerState::for_test(Arc::new(Always), 2));
        let servers = vec![MapServer { id: "other".into(), addr: "127.0.0.1:7999".into() }];
        shared.set_map(ClusterMap { servers, tokens: vec![1, 1], owners: vec![Some(0), Some(0)], standbys: vec![None, None] });
        shared
    }

    #[tokio::test]
    async fn multi_answers_moved_at_queue_time_and_exec_then_aborts() {
        let shared = shared_with_another_owner();
        let mut c = Conn::new(Arc::new(crate::cmd::ClientInfo::new(1, "127.0.0.1:2".into(), "127.0.0.1:1".into(), 0)), &shared);
        assert_eq!(ready(&mut c, &shared, words("MULTI")).await, Reply::ok());
        let slot = key_slot(b"k");
        assert_eq!(ready(&mut c, &shared, words("SET k v")).await, Reply::error(format!("MOVED {slot} 127.0.0.1:7999")));
        assert_eq!(ready(&mut c, &shared, words("GET k")).await, Reply::error(format!("MOVED {slot} 127.0.0.1:7999")));
        assert_eq!(
            ready(&mut c, &shared, words("EXEC")).await,
            Reply::error("EXECABORT Transaction discarded because of previous errors.")
        );
        // Outside MULTI the same command is redirected too, and nothing stays flagged.
        assert_eq!(ready(&mut c, &shared, words("SET k v")).await, Reply::error(format!("MOVED {slot} 127.0.0.1:7999")));
        assert!(c.multi.is_none());
        // With no owner named (or ours), commands are queued: EXEC holds them.
        let unowned = Arc::new(ServerState::for_test(Arc::new(Always), 2));
        assert_eq!(ready(&mut c, &unowned, words("MULTI")).await, Reply::ok());
        assert_eq!(ready(&mut c, &unowned, words("SET k v")).await, Reply::Simple("QUEUED".into()));
        assert_eq!(ready(&mut c, &unowned, words("DISCARD")).await, Reply::ok());
    }

    #[tokio::test]
    async fn multi_is_bounded_by_bytes_as_well_as_by_count() {
        let shared = Arc::new(ServerState::for_test(Arc::new(Always), 2));
        let mut c = Conn::new(Arc::new(crate::cmd::ClientInfo::new(1, "127.0.0.1:2".into(), "127.0.0.1:1".into(), 0)), &shared);
        assert_eq!(ready(&mut c, &shared, words("MULTI")).await, Reply::ok());
        // One value shared by every command: the test itself holds it once.
        let value = Bytes::from(vec![b'v'; 1 << 20]);
        let set = || vec![Bytes::from_static(b"SET"), Bytes::from_static(b"k"), value.clone()];
        let fits = MULTI_QUEUED_BYTES_MAX / Command::parse(set()).unwrap().held_bytes();
        assert!(fits < MULTI_COMMANDS_MAX, "the byte bound is the one reached here");
        for _ in 0..fits {
            assert_eq!(ready(&mut c, &shared, set()).await, Reply::Simple("QUEUED".into()));
        }
        let held = c.multi.as_ref().unwrap().bytes;
        assert!(held <= MULTI_QUEUED_BYTES_MAX);
        assert_eq!(
            ready(&mut c, &shared, set()).await,
            Reply::error(format!("ERR MULTI holds at most {MULTI_QUEUED_BYTES_MAX} bytes of commands"))
        );
        assert_eq!(c.multi.as_ref().unwrap().bytes, held, "the refused command is not held");
        assert_eq!(
            ready(&mut c, &shared, words("EXEC")).await,
            Reply::error("EXECABORT Transaction discarded because of previous errors.")
        );
        // And by count: small commands up to MULTI_COMMANDS_MAX, not one more.
        assert_eq!(ready(&mut c, &shared, words("MULTI")).await, Reply::ok());
        for _ in 0..MULTI_COMMANDS_MAX {
            assert_eq!(ready(&mut c, &shared, words("INCR k")).await, Reply::Simple("QUEUED".into()));
        }
        assert_eq!(
            ready(&mut c, &shared, words("INCR k")).await,
            Reply::error(format!("ERR MULTI holds at most {MULTI_COMMANDS_MAX} commands"))
        );
        assert_eq!(
            ready(&mut c, &shared, words("EXEC")).await,
            Reply::error("EXECABORT Transaction discarded because of previous errors.")
        );
    }

    #[tokio::test]
    async fn commands_are_answered_by_kind_and_multi_queues_them_typed() {
        let shared = Arc::new(ServerState::for_test(Arc::new(Always), 2));
        let mut c = Conn::new(Arc::new(crate::cmd::ClientInfo::new(1, "127.0.0.1:2".into(), "127.0.0.1:1".into(), 0)), &shared);
        assert_eq!(ready(&mut c, &shared, words("PING")).await, Reply::Simple("PONG".into()));
        assert_eq!(ready(&mut c, &shared, words("CLIENT ID")).await, Reply::Int(c.client.info.id as i64));
        // A name set by HELLO is the one CLIENT GETNAME and CLIENT INFO see.
        assert!(matches!(ready(&mut c, &shared, words("HELLO 3 SETNAME viahello")).await, Reply::Map(_)));
        assert_eq!(ready(&mut c, &shared, words("CLIENT GETNAME")).await, Reply::bulk("viahello"));
        let Reply::Verbatim(line) = ready(&mut c, &shared, words("CLIENT INFO")).await else { panic!() };
        assert!(line.contains(" name=viahello ") && line.contains(" resp=3"), "{line}");
        assert!(matches!(ready(&mut c, &shared, words("HELLO 2")).await, Reply::Map(_)));
        assert_eq!(ready(&mut c, &shared, words("MULTI")).await, Reply::ok());
        assert_eq!(ready(&mut c, &shared, words("SET k v")).await, Reply::Simple("QUEUED".into()));
        assert_eq!(ready(&mut c, &shared, words("get k")).await, Reply::Simple("QUEUED".into()));
        let queued: Vec<Id> = c.multi.as_ref().unwrap().queued.iter().map(Command::id).collect();
        assert_eq!(queued, [Id::Set, Id::Get]);
        // Commands that are not data commands are queued too, as Redis queues them.
        assert_eq!(ready(&mut c, &shared, words("CONFIG GET save")).await, Reply::Simple("QUEUED".into()));
        assert_eq!(ready(&mut c, &shared, words("PING")).await, Reply::Simple("QUEUED".into()));
        let queued: Vec<Id> = c.multi.as_ref().unwrap().queued.iter().map(Command::id).collect();
        assert_eq!(queued, [Id::Set, Id::Get, Id::Config, Id::Ping]);
        // WAIT is not: it waits for replicas of writes made before it.
        assert_eq!(ready(&mut c, &shared, words("WAIT 0 0")).await, Reply::error("ERR 'wait' is not allowed inside MULTI on sharedisk"));
        assert_eq!(
            ready(&mut c, &shared, words("EXEC")).await,
            Reply::error("EXECABORT Transaction discarded because of previous errors.")
        );
        assert_eq!(ready(&mut c, &shared, words("EXEC")).await, Reply::error("ERR EXEC without MULTI"));
        // A transaction of connection commands only is answered here, in order.
        assert_eq!(ready(&mut c, &shared, words("MULTI")).await, Reply::ok());
        for line in ["PING", "ECHO hi", "PING x"] {
            assert_eq!(ready(&mut c, &shared, words(line)).await, Reply::Simple("QUEUED".into()));
        }
        assert_eq!(
            ready(&mut c, &shared, words("EXEC")).await,
            Reply::Array(vec![Reply::Simple("PONG".into()), Reply::bulk("hi"), Reply::bulk("x")])
        );
    }

    #[test]
    fn a_transactions_own_replies_are_spliced_into_their_places() {
        let (a, b, x, y) = (Reply::bulk("a"), Reply::bulk("b"), Reply::Int(1), Reply::Int(2));
        let engine = Reply::Array(vec![a.clone(), b.clone()]);
        assert_eq!(
            spliced(engine.clone(), vec![(0, x.clone()), (2, y.clone())]),
            Reply::Array(vec![x.clone(), a.clone(), y.clone(), b.clone()])
        );
        assert_eq!(
            spliced(engine.clone(), vec![(2, x.clone()), (3, y.clone())]),
            Reply::Array(vec![a.clone(), b.clone(), x.clone(), y.clone()])
        );
        assert_eq!(spliced(engine.clone(), vec![]), engine);
        // A transaction refused as a whole keeps its one error.
        let moved = Reply::error("MOVED 1 127.0.0.1:1");
        assert_eq!(spliced(moved.clone(), vec![(0, x)]), moved);
    }

    fn job(cmds: Vec<Command>) -> (Pending, oneshot::Sender<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let request = Request::Exec { cmds, multi: false };
        (Pending::Job { rx, partition: 0, slot: 0, request, hold_until: Instant::now(), splice: Vec::new() }, tx)
    }

    #[test]
    fn the_pipeline_counts_unanswered_writes_and_bounds_reply_bytes() {
        let mut p = Pipeline::default();
        let (get, _g) = job(vec![command("GET a")]);
        let (set, _s) = job(vec![command("SET a 1")]);
        let (multi, _m) = job(vec![command("GET a"), command("INCR a")]);
        p.push(get);
        assert_eq!(p.writes_unanswered, 0);
        p.push(set);
        p.push(Pending::Ready(Reply::ok()));
        p.push(multi);
        assert_eq!(p.writes_unanswered, 2);
        assert!(p.reply_bytes > 2 * VALUE_RESERVE_BYTES, "two GETs not answered yet reserve a value each");
        p.pop();
        assert_eq!(p.writes_unanswered, 2);
        p.pop();
        assert_eq!(p.writes_unanswered, 1);
        p.pop();
        p.pop();
        assert_eq!((p.writes_unanswered, p.reply_bytes, p.is_empty()), (0, 0, true));
        // By count: PIPELINE_MAX small replies.
        for _ in 0..PIPELINE_MAX - 1 {
            p.push(Pending::Ready(Reply::Int(1)));
        }
        assert!(!p.full());
        p.push(Pending::Ready(Reply::Int(1)));
        assert!(p.full());
        while p.pop().is_some() {}
        // By bytes: replies held, and replies still to come at their most.
        let value = Bytes::from(vec![b'v'; 1 << 20]);
        for _ in 0..(PIPELINE_REPLY_BYTES_MAX >> 20) - 1 {
            p.push(Pending::Ready(Reply::Bulk(value.clone())));
        }
        assert!(!p.full());
        p.push(Pending::Ready(Reply::Bulk(value.clone())));
        assert!(p.full(), "{} reply bytes held", p.reply_bytes);
        while p.pop().is_some() {}
        let mut rxs = Vec::new();
        for _ in 0..PIPELINE_REPLY_BYTES_MAX / VALUE_RESERVE_BYTES {
            let (get, tx) = job(vec![command("GET a")]);
            rxs.push(tx);
            p.push(get);
        }
        assert!(p.full() && p.entries.len() < PIPELINE_MAX, "reads in flight bounded by what their replies may take");
    }

    /// A socket that takes at most `chunk` bytes a call and records each write.
    struct Recorder {
        writes: Vec<usize>,
    }
    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes.push(buf.len());
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// The replies ahead of a WAIT are sent before it waits (a WAIT 1 0
    /// waits for ever), not kept in the buffer behind it.
    #[tokio::test]
    async fn replies_before_a_wait_go_out_before_it_waits() {
        let shared = ServerState::for_test(Arc::new(Always), 2);
        let mut p = Pipeline::default();
        p.push(Pending::Ready(Reply::ok()));
        p.push(Pending::Wait { numreplicas: 1, timeout: Some(Duration::from_millis(10)) });
        let (mut wbuf, mut w) = (BytesMut::new(), Recorder { writes: Vec::new() });
        answer(&shared, &mut p, 2, &mut wbuf, &mut w, &mut None, &crate::cmd::ClientInfo::new(1, "a".into(), "b".into(), 0)).await.unwrap();
        assert_eq!(w.writes, ["+OK\r\n".len()], "the OK went out before the WAIT");
        assert_eq!(&wbuf[..], b":0\r\n");
    }

    #[tokio::test]
    async fn replies_are_written_a_buffer_at_a_time_in_order() {
        let shared = ServerState::for_test(Arc::new(Always), 2);
        let mut p = Pipeline::default();
        let value = Bytes::from(vec![b'v'; 100 << 10]);
        let n = 64;
        for _ in 0..n {
            p.push(Pending::Ready(Reply::Bulk(value.clone())));
        }
        let (mut wbuf, mut w) = (BytesMut::new(), Recorder { writes: Vec::new() });
        answer(&shared, &mut p, 2, &mut wbuf, &mut w, &mut None, &crate::cmd::ClientInfo::new(1, "a".into(), "b".into(), 0)).await.unwrap();
        let one = 100 * 1024 + "$102400\r\n\r\n".len();
        assert!(w.writes.len() >= n * one / (WRITE_BUFFER_BYTES_MAX + one), "{:?}", w.writes);
        assert!(w.writes.iter().all(|b| *b < WRITE_BUFFER_BYTES_MAX + one), "a write larger than the buffer limit: {:?}", w.writes);
        assert_eq!(w.writes.iter().sum::<usize>() + wbuf.len(), n * one);
        assert!(wbuf.len() < WRITE_BUFFER_BYTES_MAX);
        // One value far larger than the buffer: written from where it is,
        // after what was buffered ahead of it; the buffer never grows.
        let before = w.writes.iter().sum::<usize>() + wbuf.len();
        let big = 8 * WRITE_BUFFER_BYTES_MAX;
        p.push(Pending::Ready(Reply::Bulk(Bytes::from(vec![b'v'; big]))));
        answer(&shared, &mut p, 2, &mut wbuf, &mut w, &mut None, &crate::cmd::ClientInfo::new(1, "a".into(), "b".into(), 0)).await.unwrap();
        assert_eq!(w.writes[w.writes.len() - 2..], [big, 2], "the value is one write of its own, then its end: {:?}", w.writes);
        assert!(wbuf.is_empty(), "the reply is finished, not left for the next write");
        assert_eq!(w.writes.iter().sum::<usize>() + wbuf.len(), before + format!("${big}\r\n\r\n").len() + big);
        assert!(wbuf.capacity() <= 2 * WRITE_BUFFER_BYTES_MAX, "{} bytes kept", wbuf.capacity());
    }

    #[tokio::test]
    async fn unparsed_input_is_bounded_by_the_query_buffer_limit() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(ServerState::for_test(Arc::new(Always), 2));
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let info = client_info(&stream);
            let (r, w) = stream.into_split();
            serve(&shared, info, r, w).await;
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        // One command of five arguments at the bulk limit, never finished:
        // its first four are more than the query buffer may hold.
        let arg = vec![b'x'; RESP.bulk_bytes_max];
        let header = format!("${}\r\n", arg.len());
        let (mut rd, mut wr) = client.split();
        let send = async {
            wr.write_all(b"*5\r\n").await?;
            for _ in 0..QUERY_BUFFER_BYTES_MAX / RESP.bulk_bytes_max {
                wr.write_all(header.as_bytes()).await?;
                wr.write_all(&arg).await?;
                wr.write_all(b"\r\n").await?;
            }
            wr.write_all(header.as_bytes()).await?;
            wr.write_all(b"xx").await?;
            std::io::Result::Ok(())
        };
        let mut got = Vec::new();
        let (_, read) = tokio::join!(send, rd.read_to_end(&mut got));
        read.unwrap();
        assert_eq!(String::from_utf8_lossy(&got), "-ERR Protocol error: query buffer limit exceeded\r\n");
        server.await.unwrap();
    }
}
