//! One client connection: parse, route, hold, answer in order.
//!
//! Pipelined commands are parsed up to [`PIPELINE_MAX`], each dispatched at
//! once (so requests for one partition share a group commit), then the
//! replies are awaited and written in request order. A command whose
//! partition has no ready owner is held until the route or the slot map
//! changes, for at most [`HOLD_MAX`]; then it gets `-MOVED` (someone else
//! owns it now) or `-CLUSTERDOWN Hash slot not served`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::commands::{self, SPECS, Spec};
use super::engine::{self, Job, Msg, Outcome, Request};
use super::limits::{HOLD_MAX, MULTI_COMMANDS_MAX, PIPELINE_MAX, RESP};
use super::{Route, Shared};
use crate::resp::{Reply, key_slot, parse_command};

/// Bytes a client may make us buffer without completing a command.
const QUERY_BUFFER_BYTES_MAX: usize = 64 << 20;

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("server {}: accept failed: {e}; retrying in 50 ms", shared.me.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            if shared.clients.fetch_add(1, Ordering::AcqRel) >= shared.clients_max {
                let (mut r, mut w) = stream.into_split();
                let _ = w.write_all(b"-ERR max number of clients reached\r\n").await;
                close_gracefully(&mut r, w).await;
            } else {
                serve(&shared, stream).await;
            }
            shared.clients.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

enum Pending {
    Ready(Reply),
    Job { rx: oneshot::Receiver<Outcome>, partition: u32, slot: u16, request: Request, hold_until: Instant },
}

struct Conn {
    id: u64,
    proto: u8,
    name: Option<Bytes>,
    /// Commands queued since MULTI, and whether one was refused (EXECABORT).
    multi: Option<(Vec<Vec<Bytes>>, bool)>,
    close: bool,
}

async fn serve(shared: &Arc<Shared>, stream: TcpStream) {
    let (mut r, mut w) = stream.into_split();
    let mut c = Conn { id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed), proto: 2, name: None, multi: None, close: false };
    let mut rbuf = BytesMut::with_capacity(16 << 10);
    let mut wbuf = BytesMut::with_capacity(16 << 10);
    let mut pending: VecDeque<Pending> = VecDeque::new();
    loop {
        let mut protocol_error = None;
        while pending.len() < PIPELINE_MAX && !c.close {
            match parse_command(&mut rbuf, &RESP) {
                Ok(Some(args)) => {
                    let writes_pending = pending.iter().any(|p| matches!(p, Pending::Job { request, .. } if !read_only(request)));
                    pending.push_back(c.handle(shared, args, writes_pending).await)
                }
                Ok(None) => break,
                Err(e) => {
                    protocol_error = Some(Reply::Error(format!("ERR {e}")));
                    break;
                }
            }
        }
        if pending.is_empty() && protocol_error.is_none() && !c.close {
            if rbuf.len() > QUERY_BUFFER_BYTES_MAX {
                protocol_error = Some(Reply::error("ERR Protocol error: query buffer limit exceeded"));
            } else {
                match r.read_buf(&mut rbuf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        }
        let proto = c.proto;
        while let Some(p) = pending.pop_front() {
            let reply = resolve(shared, p).await;
            shared.stats.count(&reply);
            reply.encode(proto, &mut wbuf);
        }
        if let Some(e) = &protocol_error {
            e.encode(proto, &mut wbuf);
        }
        if w.write_all(&wbuf).await.is_err() {
            return;
        }
        wbuf.clear();
        if protocol_error.is_some() || c.close {
            close_gracefully(&mut r, w).await;
            return;
        }
    }
}

/// Send FIN, then discard what the client still sends for a moment: closing
/// with unread input makes the kernel send RST, which can destroy the error
/// reply we just wrote before the client reads it.
async fn close_gracefully(r: &mut tokio::net::tcp::OwnedReadHalf, mut w: tokio::net::tcp::OwnedWriteHalf) {
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

/// Await a reply; a rerouted request is dispatched again until its hold ends.
async fn resolve(shared: &Shared, p: Pending) -> Reply {
    let (mut rx, partition, slot, request, hold_until) = match p {
        Pending::Ready(r) => return r,
        Pending::Job { rx, partition, slot, request, hold_until } => (rx, partition, slot, request, hold_until),
    };
    loop {
        match (&mut rx).await {
            Ok(Outcome::Reply(r)) => return r,
            Ok(Outcome::Reroute) | Err(_) => {}
        }
        // The partition is going away here; the control task will update the route or the map.
        let mut ver = shared.subscribe();
        ver.borrow_and_update();
        let wait = Instant::now() + Duration::from_millis(10);
        let _ = tokio::time::timeout_at(wait.min(hold_until).into(), ver.changed()).await;
        match dispatch(shared, partition, slot, &request, hold_until).await {
            Ok(next) => rx = next,
            Err(reply) => return reply,
        }
    }
}

fn cluster_down() -> Reply {
    Reply::error("CLUSTERDOWN Hash slot not served")
}

/// Send `request` to the engine serving the partition, or answer where else to go.
async fn dispatch(
    shared: &Shared,
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
                if local.tx.send(Msg::Job(Job { partition, request: request.clone(), reply: otx })).is_ok() {
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

fn read_only(r: &Request) -> bool {
    match r {
        Request::Count => true,
        Request::Exec { cmds, .. } => cmds.iter().all(|c| commands::lookup(&c[0]).is_some_and(|s| s.flags.contains(&"readonly"))),
    }
}

/// Answer a read-only command from the published index, on this thread,
/// with the engine's rules: the lease valid before; the state it saw durable
/// (wait for the barrier that covers its last publication); the lease and
/// the owner word still ours after (validate after read). `None`: let the
/// engine handle it (partition going away, lease in doubt, volume failed).
async fn fast_read(shared: &Shared, cell: &engine::Cell, name: &str, args: &[Bytes], hold_until: Instant) -> Option<Reply> {
    if !shared.lease_valid() {
        return None;
    }
    let (reply, need) = {
        let guard = cell.read();
        let part = guard.as_ref()?;
        let view = engine::View(part);
        let staged = commands::Overlay::new();
        let mut t = commands::Txn::new(&view, &staged, engine::now_ms());
        let reply = commands::execute(&mut t, name, args);
        if !t.ops.is_empty() {
            return None; // not a read after all: never stage from here
        }
        (reply, cell.durable_after())
    };
    let mut barriers = shared.barriers.subscribe();
    while *barriers.borrow_and_update() < need {
        match tokio::time::timeout_at(hold_until.into(), barriers.changed()).await {
            Ok(Ok(())) => {}
            _ => return None,
        }
    }
    cell.validated(shared.lease_valid()).then_some(reply)
}

fn crossslot() -> Reply {
    Reply::error("CROSSSLOT Keys in request don't hash to the same slot")
}

/// The one slot all keys of these commands hash to; Err(CROSSSLOT), Ok(None) without keys.
fn slot_of<'a>(cmds: impl Iterator<Item = &'a Vec<Bytes>>) -> Result<Option<u16>, Reply> {
    let mut slot = None;
    for args in cmds {
        let Some(spec) = commands::lookup(&args[0]) else { continue };
        for k in commands::keys(spec, args) {
            let s = key_slot(k);
            if slot.is_some_and(|x| x != s) {
                return Err(crossslot());
            }
            slot = Some(s);
        }
    }
    Ok(slot)
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

impl Conn {
    /// `writes_pending`: an earlier command of this pipeline that may write
    /// is not answered yet (a read must then queue behind it, in order).
    async fn handle(&mut self, shared: &Arc<Shared>, args: Vec<Bytes>, writes_pending: bool) -> Pending {
        let Some(spec) = commands::lookup(&args[0]) else {
            if let Some(m) = &mut self.multi {
                m.1 = true;
            }
            return Pending::Ready(commands::unknown_command(&args));
        };
        if !commands::arity_ok(spec, args.len()) {
            if let Some(m) = &mut self.multi {
                m.1 = true;
            }
            return Pending::Ready(commands::wrong_args(spec.name));
        }
        if let Some((queued, dirty)) = &mut self.multi {
            match spec.name {
                "exec" | "discard" | "multi" | "quit" => {}
                _ if spec.data && queued.len() < MULTI_COMMANDS_MAX => {
                    queued.push(args);
                    return Pending::Ready(Reply::Simple("QUEUED".into()));
                }
                _ if spec.data => {
                    *dirty = true;
                    return Pending::Ready(Reply::error(format!("ERR MULTI holds at most {MULTI_COMMANDS_MAX} commands")));
                }
                other => {
                    *dirty = true;
                    return Pending::Ready(Reply::error(format!("ERR '{other}' is not allowed inside MULTI on sharedisk")));
                }
            }
        }
        let hold_until = Instant::now() + HOLD_MAX;
        if spec.data {
            let slot = match slot_of(std::iter::once(&args)) {
                Ok(Some(s)) => s,
                Ok(None) => return Pending::Ready(commands::wrong_args(spec.name)),
                Err(e) => return Pending::Ready(e),
            };
            if !writes_pending
                && spec.flags.contains(&"readonly")
                && let Route::Local(local) = shared.route(shared.partition_of_slot(slot))
                && let Some(reply) = fast_read(shared, &local.cell, spec.name, &args, hold_until).await
            {
                return Pending::Ready(reply);
            }
            return self.submit(shared, slot, Request::Exec { cmds: vec![args], multi: false }, hold_until).await;
        }
        let reply = match spec.name {
            "ping" => match args.get(1) {
                Some(m) => Reply::Bulk(m.clone()),
                None => Reply::Simple("PONG".into()),
            },
            "echo" => Reply::Bulk(args[1].clone()),
            "select" => match args[1].as_ref() {
                b"0" => Reply::ok(),
                _ => Reply::error("ERR SELECT is not allowed in cluster mode"),
            },
            "quit" => {
                self.close = true;
                Reply::ok()
            }
            "readonly" | "readwrite" | "asking" => Reply::ok(),
            "multi" if self.multi.is_some() => Reply::error("ERR MULTI calls can not be nested"),
            "multi" => {
                self.multi = Some((Vec::new(), false));
                Reply::ok()
            }
            "discard" => match self.multi.take() {
                Some(_) => Reply::ok(),
                None => Reply::error("ERR DISCARD without MULTI"),
            },
            "exec" => match self.multi.take() {
                None => Reply::error("ERR EXEC without MULTI"),
                Some((_, true)) => Reply::error("EXECABORT Transaction discarded because of previous errors."),
                Some((cmds, false)) if cmds.is_empty() => Reply::Array(vec![]),
                Some((cmds, false)) => match slot_of(cmds.iter()) {
                    Ok(Some(slot)) => return self.submit(shared, slot, Request::Exec { cmds, multi: true }, hold_until).await,
                    Ok(None) => Reply::error("ERR no keys in transaction"),
                    Err(e) => e,
                },
            },
            "hello" => self.hello(&args),
            "dbsize" => Reply::Int(dbsize(shared).await),
            "info" => Reply::Verbatim(info_text(shared, &args)),
            "command" => command(&args),
            "config" => config(&args),
            "client" => self.client(&args),
            "cluster" => cluster(shared, &args),
            other => Reply::error(format!("ERR '{other}' is not implemented")),
        };
        Pending::Ready(reply)
    }

    async fn submit(&mut self, shared: &Shared, slot: u16, request: Request, hold_until: Instant) -> Pending {
        let partition = shared.partition_of_slot(slot);
        match dispatch(shared, partition, slot, &request, hold_until).await {
            Ok(rx) => Pending::Job { rx, partition, slot, request, hold_until },
            Err(reply) => Pending::Ready(reply),
        }
    }

    fn hello(&mut self, args: &[Bytes]) -> Reply {
        let mut proto = self.proto;
        if let Some(v) = args.get(1) {
            match commands::parse_i64(v) {
                Some(2) => proto = 2,
                Some(3) => proto = 3,
                Some(_) => return Reply::error("NOPROTO unsupported protocol version"),
                None => return Reply::error("ERR Protocol version is not an integer or out of range"),
            }
        }
        let mut i = 2;
        while i < args.len() {
            match (lower(&args[i]).as_str(), args.len() - i) {
                ("auth", n) if n >= 3 => i += 3, // no users or passwords: every client is the default user
                ("setname", n) if n >= 2 => {
                    self.name = Some(args[i + 1].clone());
                    i += 2;
                }
                (other, _) => return Reply::error(format!("ERR Syntax error in HELLO option '{other}'")),
            }
        }
        self.proto = proto;
        Reply::Map(vec![
            (Reply::bulk("server"), Reply::bulk("redis")),
            (Reply::bulk("version"), Reply::bulk("7.0.15")),
            (Reply::bulk("proto"), Reply::Int(i64::from(proto))),
            (Reply::bulk("id"), Reply::Int(self.id as i64)),
            (Reply::bulk("mode"), Reply::bulk("cluster")),
            (Reply::bulk("role"), Reply::bulk("master")),
            (Reply::bulk("modules"), Reply::Array(vec![])),
        ])
    }

    fn client(&mut self, args: &[Bytes]) -> Reply {
        let sub = lower(&args[1]);
        match (sub.as_str(), args.len()) {
            ("setname", 3) => {
                if args[2].iter().any(|b| *b <= b' ' || *b > b'~') {
                    return Reply::error("ERR Client names cannot contain spaces, newlines or special characters.");
                }
                self.name = (!args[2].is_empty()).then(|| args[2].clone());
                Reply::ok()
            }
            ("getname", 2) => self.name.clone().map_or(Reply::Null, Reply::Bulk),
            ("setinfo", 4) => match lower(&args[2]).as_str() {
                "lib-name" | "lib-ver" => Reply::ok(),
                _ => Reply::error(format!("ERR Unrecognized option '{}'", String::from_utf8_lossy(&args[2]))),
            },
            ("id", 2) => Reply::Int(self.id as i64),
            ("info", 2) => Reply::Verbatim(format!(
                "id={} name={} resp={}\n",
                self.id,
                self.name.as_ref().map_or(String::new(), |n| String::from_utf8_lossy(n).into_owned()),
                self.proto
            )),
            ("setname" | "getname" | "setinfo" | "id" | "info", _) => commands::wrong_args(&format!("client|{sub}")),
            _ => Reply::error(format!("ERR unknown subcommand '{}'. Try CLIENT HELP.", String::from_utf8_lossy(&args[1]))),
        }
    }
}

async fn dbsize(shared: &Shared) -> i64 {
    let mut total = 0;
    for (partition, tx) in shared.local_routes() {
        let (otx, orx) = oneshot::channel();
        if tx.send(Msg::Job(Job { partition, request: Request::Count, reply: otx })).is_ok()
            && let Ok(Outcome::Reply(Reply::Int(n))) = orx.await
        {
            total += n;
        }
    }
    total
}

fn info_text(shared: &Shared, args: &[Bytes]) -> String {
    let port = shared.me.port;
    let sections = [
        (
            "server",
            format!(
                "# Server\r\nredis_version:7.0.15\r\nredis_mode:cluster\r\nsharedisk_version:{}\r\nsharedisk_node:{}\r\nos:{}\r\nprocess_id:{}\r\ntcp_port:{port}\r\nuptime_in_seconds:{}\r\n",
                env!("CARGO_PKG_VERSION"),
                shared.me.name,
                std::env::consts::OS,
                std::process::id(),
                shared.started.elapsed().as_secs()
            ),
        ),
        (
            "clients",
            format!("# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n", shared.clients.load(Ordering::Relaxed), shared.clients_max),
        ),
        ("persistence", "# Persistence\r\nloading:0\r\naof_enabled:0\r\nsharedisk_durability:group-commit-fdatasync\r\n".to_owned()),
        (
            "stats",
            format!(
                "# Stats\r\ntotal_commands_processed:{}\r\ntotal_error_replies:{}\r\nsharedisk_moved_replies:{}\r\n\
                 sharedisk_engine_cycles:{}\r\nsharedisk_engine_requests:{}\r\nsharedisk_barriers:{}\r\nsharedisk_barrier_usec:{}\r\n",
                shared.stats.commands.load(Ordering::Relaxed),
                shared.stats.errors.load(Ordering::Relaxed),
                shared.stats.redirects.load(Ordering::Relaxed),
                shared.stats.engine.cycles.load(Ordering::Relaxed),
                shared.stats.engine.requests.load(Ordering::Relaxed),
                shared.stats.engine.barriers.load(Ordering::Relaxed),
                shared.stats.engine.barrier_usec.load(Ordering::Relaxed)
            ),
        ),
        (
            "cluster",
            format!(
                "# Cluster\r\ncluster_enabled:1\r\nsharedisk_partitions:{}\r\nsharedisk_partitions_served:{}\r\n",
                shared.partitions,
                shared.local_routes().len()
            ),
        ),
        ("keyspace", "# Keyspace\r\n".to_owned()),
    ];

    let want = args.get(1).map(|a| lower(a));
    let all = matches!(want.as_deref(), None | Some("all" | "everything" | "default"));
    sections.iter().filter(|(n, _)| all || want.as_deref() == Some(*n)).map(|(_, s)| s.as_str()).collect::<Vec<_>>().join("\r\n")
}

fn command(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1).map(|a| lower(a)) else { return Reply::Array(SPECS.iter().map(commands::command_entry).collect()) };
    match sub.as_str() {
        "count" => Reply::Int(SPECS.len() as i64),
        "list" => Reply::Array(SPECS.iter().map(|s| Reply::bulk(s.name)).collect()),
        "docs" => Reply::Map(vec![]),
        "info" => Reply::Array(args[2..].iter().map(|n| commands::lookup(n).map_or(Reply::Null, commands::command_entry)).collect()),
        "getkeys" if args.len() >= 3 => {
            let cmd = &args[2..];
            match commands::lookup(&cmd[0]) {
                None => Reply::error("ERR Invalid command specified"),
                Some(s) if !commands::arity_ok(s, cmd.len()) => Reply::error("ERR Invalid number of arguments specified for command"),
                Some(Spec { first_key: 0, .. }) => Reply::error("ERR The command has no key arguments"),
                Some(s) => Reply::Array(commands::keys(s, cmd).map(|k| Reply::Bulk(k.clone())).collect()),
            }
        }
        _ => Reply::error(format!("ERR unknown subcommand '{}'. Try COMMAND HELP.", String::from_utf8_lossy(&args[1]))),
    }
}

/// `*` and `?` globbing, enough for CONFIG GET patterns: the linear-time
/// two-pointer match (no backtracking blow-up on patterns full of stars).
fn glob(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, i));
                p += 1;
            }
            Some(c) if *c == b'?' || c.eq_ignore_ascii_case(&s[i]) => {
                p += 1;
                i += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// What clients probe with CONFIG GET (redis-benchmark: save, appendonly).
const CONFIG: &[(&str, &str)] = &[
    ("appendfsync", "always"),
    ("appendonly", "no"),
    ("cluster-enabled", "yes"),
    ("databases", "1"),
    ("maxclients", "10000"),
    ("maxmemory", "0"),
    ("proto-max-bulk-len", "16777216"),
    ("save", ""),
    ("timeout", "0"),
];

fn config(args: &[Bytes]) -> Reply {
    match lower(&args[1]).as_str() {
        "get" if args.len() >= 3 => Reply::Map(
            CONFIG
                .iter()
                .filter(|(k, _)| args[2..].iter().any(|p| glob(p, k.as_bytes())))
                .map(|(k, v)| (Reply::bulk(*k), Reply::bulk(*v)))
                .collect(),
        ),
        "get" => commands::wrong_args("config|get"),
        "set" => Reply::error("ERR CONFIG SET is not supported by sharedisk: configure it with command-line flags"),
        "resetstat" => Reply::ok(),
        _ => Reply::error(format!("ERR unknown subcommand '{}'. Try CONFIG HELP.", String::from_utf8_lossy(&args[1]))),
    }
}

fn cluster(shared: &Shared, args: &[Bytes]) -> Reply {
    let sub = lower(&args[1]);
    let view = shared.view();
    match (sub.as_str(), args.len()) {
        ("slots", 2) => view.slots_reply(),
        ("shards", 2) => view.shards_reply(),
        ("nodes", 2) => Reply::Verbatim(view.nodes_text()),
        ("myid" | "myshardid", 2) => Reply::bulk(shared.me.id.clone()),
        ("info", 2) => Reply::Verbatim(view.info_text()),
        ("keyslot", 3) => Reply::Int(i64::from(key_slot(&args[2]))),
        ("help", 2) => Reply::Array(
            ["SLOTS", "SHARDS", "NODES", "MYID", "MYSHARDID", "INFO", "KEYSLOT <key>", "HELP"]
                .iter()
                .map(|s| Reply::Simple((*s).into()))
                .collect(),
        ),
        ("slots" | "shards" | "nodes" | "myid" | "myshardid" | "info" | "keyslot" | "help", _) => {
            commands::wrong_args(&format!("cluster|{sub}"))
        }
        _ => Reply::error(format!("ERR unknown subcommand '{}'. Try CLUSTER HELP.", String::from_utf8_lossy(&args[1]))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let cell = engine::Cell::new(part);
        let shared = Shared::for_test(Arc::new(Always), 2);
        let get = [Bytes::from_static(b"GET"), Bytes::from_static(b"k")];
        let soon = || Instant::now() + Duration::from_millis(100);
        // Published but not yet covered by a barrier (as the engine leaves it
        // between its publication and the next sync): not answered from here.
        {
            let mut g = cell.write();
            let p = g.as_mut().unwrap();
            p.append(&[Op::Put { key: b"k".to_vec(), value: b"v1".to_vec(), expire_at_ms: 0 }], engine::now_ms()).unwrap();
            cell.set_durable_after(1);
            p.publish().unwrap();
        }
        assert_eq!(fast_read(&shared, &cell, "get", &get, soon()).await, None, "answered a read of state not yet durable");
        shared.barriers.send_replace(1);
        assert_eq!(fast_read(&shared, &cell, "get", &get, soon()).await, Some(Reply::bulk("v1")));
        // Another server takes the partition over: our lease still looks valid,
        // but the owner word says otherwise, so nothing stale is served.
        let reg_b = vol.register(0xB, ProcessIdentity::current()).unwrap();
        let _b = Partition::claim(vol.clone(), reg_b, 0).unwrap();
        assert_eq!(fast_read(&shared, &cell, "get", &get, soon()).await, None, "a deposed owner served a read");
        // Commands that would write are never run here.
        let set = [Bytes::from_static(b"SET"), Bytes::from_static(b"k"), Bytes::from_static(b"x")];
        assert_eq!(fast_read(&shared, &cell, "set", &set, soon()).await, None);
    }

    #[test]
    fn config_globs() {
        assert!(glob(b"save", b"save"));
        assert!(glob(b"app*", b"appendonly"));
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"s?ve", b"save"));
        assert!(!glob(b"save", b"saves"));
        assert!(!glob(&[b'*'; 100].iter().chain(b"x").copied().collect::<Vec<_>>(), b"appendonlyappendonly"));
        let Reply::Map(m) = config(&[Bytes::from_static(b"CONFIG"), Bytes::from_static(b"GET"), Bytes::from_static(b"save")]) else {
            panic!()
        };
        assert_eq!(m, vec![(Reply::bulk("save"), Reply::bulk(""))]);
    }
}
