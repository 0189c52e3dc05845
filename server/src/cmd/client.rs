//! `CLIENT SETNAME|GETNAME|SETINFO|ID|INFO|LIST|KILL|PAUSE|UNPAUSE|NO-EVICT|TRACKINGINFO|GETREDIR`
//! (`CLIENT REPLY` shapes the reply stream: `conn.rs`), and the registry of
//! connections `LIST` and `KILL` read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use super::{ClientState, lower};
use crate::resp::Reply;
use crate::{ServerState, commands};

/// One connection as other connections may see it (`CLIENT LIST`) and stop
/// it (`CLIENT KILL`).
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub addr: String,
    pub laddr: String,
    pub fd: i32,
    created: Instant,
    name: Mutex<Option<Bytes>>,
    user: Mutex<String>,
    /// When the last command arrived (ms after `created`), and which (its
    /// index in the spec table + 1; 0: none yet); a container command's
    /// subcommand (`client|list`) in `last_sub`. Atomics: written per command.
    last_ms: AtomicU64,
    last_cmd: AtomicUsize,
    last_sub: Mutex<Option<String>>,
    pub resp: AtomicU8,
    pub readonly: AtomicBool,
    /// Commands queued in MULTI, or -1 outside one.
    pub multi: AtomicI64,
    /// Bytes of the query buffer: the command running and what follows it.
    pub qbuf: AtomicUsize,
    /// Its pub/sub subscriptions: channels, patterns, shard channels.
    pub subs: [AtomicUsize; 3],
    killed: AtomicBool,
    /// The connection whose CLIENT KILL chose this one (0: none, or another cause).
    killed_by: AtomicU64,
    kill: tokio::sync::Notify,
}

impl ClientInfo {
    pub fn new(id: u64, addr: String, laddr: String, fd: i32) -> ClientInfo {
        let now = Instant::now();
        ClientInfo {
            id,
            addr,
            laddr,
            fd,
            created: now,
            name: Mutex::new(None),
            user: Mutex::new(crate::acl::DEFAULT_USER.to_owned()),
            last_ms: AtomicU64::new(0),
            last_cmd: AtomicUsize::new(0),
            last_sub: Mutex::new(None),
            resp: AtomicU8::new(2),
            readonly: AtomicBool::new(false),
            multi: AtomicI64::new(-1),
            qbuf: AtomicUsize::new(0),
            subs: Default::default(),
            killed: AtomicBool::new(false),
            killed_by: AtomicU64::new(0),
            kill: tokio::sync::Notify::new(),
        }
    }

    /// A command arrived at `at`: its index in the spec table and, for a
    /// container command, its subcommand.
    pub fn arrived(&self, at: Instant, command: usize, sub: Option<&[u8]>) {
        self.last_ms.store(at.saturating_duration_since(self.created).as_millis() as u64, Ordering::Relaxed);
        self.last_cmd.store(command + 1, Ordering::Relaxed);
        if let Some(sub) = sub {
            *self.last_sub.lock().unwrap_or_else(|e| e.into_inner()) = Some(String::from_utf8_lossy(sub).to_ascii_lowercase());
        }
    }

    /// `CLIENT SETNAME`, `HELLO … SETNAME`.
    pub fn set_name(&self, name: Option<Bytes>) {
        *self.name.lock().unwrap_or_else(|e| e.into_inner()) = name;
    }

    pub fn set_user(&self, user: &str) {
        *self.user.lock().unwrap_or_else(|e| e.into_inner()) = user.to_owned();
    }

    pub fn user(&self) -> String {
        self.user.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn name(&self) -> Option<Bytes> {
        self.name.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Resolves once `CLIENT KILL` chose this connection.
    pub async fn killed(&self) {
        let notified = self.kill.notified();
        if !self.is_killed() {
            notified.await;
        }
    }

    /// Subscribed to anything (`CLIENT LIST TYPE pubsub`, flag `P`).
    pub fn is_pubsub(&self) -> bool {
        self.subs.iter().any(|n| n.load(Ordering::Relaxed) > 0)
    }

    /// Close this connection after the reply it is writing (`CLIENT
    /// KILL`, or a subscriber past its output limit).
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill.notify_one();
    }

    /// `CLIENT KILL` from the connection `killer`.
    fn kill_by(&self, killer: u64) {
        self.killed_by.store(killer, Ordering::Release);
        self.kill();
    }

    /// It ran the CLIENT KILL that chose it: it gets that reply before it closes.
    pub fn killed_itself(&self) -> bool {
        self.killed_by.load(Ordering::Acquire) == self.id
    }

    /// Its `CLIENT LIST` line.
    fn line(&self) -> String {
        let cmd = match self.last_cmd.load(Ordering::Relaxed) {
            0 => "NULL".to_owned(),
            n => {
                let spec = &crate::commands::SPECS[n - 1];
                let container = spec.id.has_subcommands();
                match self.last_sub.lock().unwrap_or_else(|e| e.into_inner()).as_ref().filter(|_| container) {
                    Some(sub) => format!("{}|{sub}", spec.name),
                    None => spec.name.to_owned(),
                }
            }
        };
        let idle_secs = self.created.elapsed().as_millis().saturating_sub(u128::from(self.last_ms.load(Ordering::Relaxed))) / 1000;
        let name = self.name().map(|n| String::from_utf8_lossy(&n).into_owned());
        let multi = self.multi.load(Ordering::Relaxed);
        let mut flags = String::new();
        if multi >= 0 {
            flags.push('x');
        }
        if self.readonly.load(Ordering::Relaxed) {
            flags.push('r');
        }
        if self.is_pubsub() {
            flags.push('P');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        format!(
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags={flags} db=0 sub={} psub={} ssub={} multi={multi} qbuf={} \
             qbuf-free=0 argv-mem=0 multi-mem=0 rbs=16384 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={cmd} user={} \
             redir=-1 resp={}\n",
            self.id,
            self.addr,
            self.laddr,
            self.fd,
            name.unwrap_or_default(),
            self.created.elapsed().as_secs(),
            idle_secs,
            self.subs[0].load(Ordering::Relaxed),
            self.subs[1].load(Ordering::Relaxed),
            self.subs[2].load(Ordering::Relaxed),
            self.qbuf.load(Ordering::Relaxed),
            self.user(),
            self.resp.load(Ordering::Relaxed)
        )
    }
}

/// Every open connection of the server, by id.
#[derive(Debug, Default)]
pub struct Clients(Mutex<BTreeMap<u64, Arc<ClientInfo>>>);

impl Clients {
    /// Register `info`; it is listed until the guard drops.
    pub fn register(self: &Arc<Self>, info: Arc<ClientInfo>) -> Registered {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(info.id, info.clone());
        Registered { clients: self.clone(), id: info.id }
    }

    fn all(&self) -> Vec<Arc<ClientInfo>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Close every connection running as one of `users` (`ACL DELUSER`).
    pub fn kill_users(&self, users: &[String]) {
        for c in self.all() {
            if users.contains(&c.user()) {
                c.kill();
            }
        }
    }
}

/// Takes a connection out of the registry when it ends.
#[derive(Debug)]
pub struct Registered {
    clients: Arc<Clients>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.clients.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

pub fn client(client: &mut ClientState, shared: &ServerState, args: &[Bytes]) -> Reply {
    let sub = lower(&args[1]);
    match (sub.as_str(), args.len()) {
        ("setname", 3) => {
            if args[2].iter().any(|b| *b <= b' ' || *b > b'~') {
                return Reply::error("ERR Client names cannot contain spaces, newlines or special characters.");
            }
            client.info.set_name((!args[2].is_empty()).then(|| args[2].clone()));
            Reply::ok()
        }
        ("getname", 2) => client.info.name().map_or(Reply::Null, Reply::Bulk),
        ("setinfo", 4) => match lower(&args[2]).as_str() {
            "lib-name" | "lib-ver" => Reply::ok(),
            _ => Reply::error(format!("ERR Unrecognized option '{}'", String::from_utf8_lossy(&args[2]))),
        },
        ("id", 2) => Reply::Int(client.info.id as i64),
        ("info", 2) => Reply::Verbatim(client.info.line()),
        ("list", _) => list(shared, &args[2..]),
        ("kill", 2) => commands::wrong_args("client|kill"),
        ("kill", _) => kill(client, shared, &args[2..]),
        ("no-evict", 3) => match lower(&args[2]).as_str() {
            // Nothing is evicted, ever (noeviction): the flag changes nothing.
            "on" | "off" => Reply::ok(),
            _ => Reply::error("ERR syntax error"),
        },
        ("trackinginfo", 2) => Reply::Map(vec![
            (Reply::bulk("flags"), Reply::Array(vec![Reply::bulk("off")])),
            (Reply::bulk("redirect"), Reply::Int(-1)),
            (Reply::bulk("prefixes"), Reply::Array(vec![])),
        ]),
        ("getredir", 2) => Reply::Int(-1),
        ("help", 2) => super::help(
            "CLIENT",
            &[
                "GETNAME",
                "    Return the name of the current connection.",
                "GETREDIR",
                "    Return the client ID we are redirecting to when tracking is enabled (-1: tracking is off).",
                "ID",
                "    Return the ID of the current connection.",
                "INFO",
                "    Return information about the current client connection.",
                "KILL <ip:port> | <option> <value> [<option> <value> [...]]",
                "    Kill connections. Options: ID, TYPE, USER, ADDR, LADDR, SKIPME, MAXAGE.",
                "LIST [TYPE <normal|master|replica|pubsub>] [ID <id> [<id> ...]]",
                "    Return information about client connections.",
                "NO-EVICT (ON|OFF)",
                "    Accepted; no connection is ever evicted.",
                "PAUSE <timeout> [WRITE|ALL]",
                "    Suspend all, or just write, clients for <timeout> milliseconds.",
                "REPLY (ON|OFF|SKIP)",
                "    Control the replies sent to the current connection.",
                "SETNAME <name>",
                "    Assign the name <name> to the current connection.",
                "TRACKINGINFO",
                "    Report tracking status (off: client-side caching is not supported).",
                "UNPAUSE",
                "    Stop the current client pause, resuming traffic.",
            ],
        ),
        ("pause", 3 | 4) => {
            let Some(ms) = commands::parse_i64(&args[2]).filter(|ms| *ms >= 0) else {
                return Reply::error("ERR timeout is not an integer or out of range");
            };
            let all = match args.get(3).map(|a| lower(a)).as_deref() {
                None | Some("all") => true,
                Some("write") => false,
                Some(_) => return Reply::error("ERR syntax error"),
            };
            let until = Instant::now() + std::time::Duration::from_millis(ms as u64);
            // A pause in force is extended, and made stricter, never loosened.
            shared.controls.pause_active.store(true, Ordering::Relaxed);
            shared.controls.pause.send_modify(|p| {
                *p = Some(match *p {
                    Some((u, a)) if u > Instant::now() => (u.max(until), a || all),
                    _ => (until, all),
                })
            });
            Reply::ok()
        }
        ("unpause", 2) => {
            shared.controls.pause.send_replace(None);
            shared.controls.pause_active.store(false, Ordering::Relaxed);
            Reply::ok()
        }
        (
            "setname" | "getname" | "setinfo" | "id" | "info" | "no-evict" | "trackinginfo" | "getredir" | "pause" | "unpause" | "help",
            _,
        ) => commands::wrong_args(&format!("client|{sub}")),
        _ => Reply::error(format!("ERR unknown subcommand '{}'. Try CLIENT HELP.", String::from_utf8_lossy(&args[1]))),
    }
}

/// A `TYPE` of `CLIENT LIST` and `CLIENT KILL`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Any,
    Normal,
    Pubsub,
    /// master, replica: none here (standbys read the volume).
    Replication,
}

impl Class {
    fn parse(v: &[u8]) -> Result<Class, Reply> {
        match lower(v).as_str() {
            "normal" => Ok(Class::Normal),
            "pubsub" => Ok(Class::Pubsub),
            "master" | "replica" | "slave" => Ok(Class::Replication),
            t => Err(Reply::error(format!("ERR Unknown client type '{t}'"))),
        }
    }

    fn has(self, c: &ClientInfo) -> bool {
        match self {
            Class::Any => true,
            Class::Normal => !c.is_pubsub(),
            Class::Pubsub => c.is_pubsub(),
            Class::Replication => false,
        }
    }
}

/// `CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id ...]`.
fn list(shared: &ServerState, args: &[Bytes]) -> Reply {
    let mut ids: Option<Vec<u64>> = None;
    let mut class = Class::Any;
    match args.first().map(|a| lower(a)).as_deref() {
        None => {}
        Some("type") if args.len() == 2 => match Class::parse(&args[1]) {
            Ok(c) => class = c,
            Err(e) => return e,
        },
        Some("id") if args.len() >= 2 => {
            let mut v = Vec::new();
            for a in &args[1..] {
                match commands::parse_i64(a) {
                    Some(n) if n > 0 => v.push(n as u64),
                    _ => return Reply::error("ERR Invalid client ID"),
                }
            }
            ids = Some(v);
        }
        _ => return Reply::error("ERR syntax error"),
    }
    let lines: String = shared
        .controls
        .conns
        .all()
        .iter()
        .filter(|c| class.has(c) && ids.as_ref().is_none_or(|ids| ids.contains(&c.id)))
        .map(|c| c.line())
        .collect();
    Reply::Verbatim(lines)
}

/// `CLIENT KILL addr:port` (OK, or no such client) and `CLIENT KILL
/// [ID id] [TYPE t] [USER u] [ADDR a] [LADDR a] [SKIPME yes|no] [MAXAGE s]`
/// (how many were killed). A killed connection closes at once, even in the
/// middle of writing replies its client does not read; one that kills
/// itself gets this reply first.
fn kill(client: &ClientState, shared: &ServerState, args: &[Bytes]) -> Reply {
    let all = shared.controls.conns.all();
    if args.len() == 1 {
        let addr = String::from_utf8_lossy(&args[0]);
        return match all.iter().find(|c| c.addr == addr) {
            Some(c) => {
                c.kill_by(client.info.id);
                Reply::ok()
            }
            None => Reply::error("ERR No such client"),
        };
    }
    if !args.len().is_multiple_of(2) {
        return Reply::error("ERR syntax error");
    }
    let (mut id, mut addr, mut laddr, mut skipme, mut maxage, mut class, mut user) = (None, None, None, true, None, Class::Any, None);
    for pair in args.chunks(2) {
        let value = &pair[1];
        match lower(&pair[0]).as_str() {
            "id" => match commands::parse_i64(value) {
                Some(n) if n > 0 => id = Some(n as u64),
                _ => return Reply::error("ERR client-id should be greater than 0"),
            },
            "type" => match Class::parse(value) {
                Ok(c) => class = c,
                Err(e) => return e,
            },
            "user" => {
                let name = String::from_utf8_lossy(value).into_owned();
                if shared.acl.user(&name).is_none() {
                    return Reply::error(format!("ERR No such user '{name}'"));
                }
                user = Some(name);
            }
            "addr" => addr = Some(String::from_utf8_lossy(value).into_owned()),
            "laddr" => laddr = Some(String::from_utf8_lossy(value).into_owned()),
            "skipme" => match lower(value).as_str() {
                "yes" => skipme = true,
                "no" => skipme = false,
                _ => return Reply::error("ERR syntax error"),
            },
            "maxage" => match commands::parse_i64(value) {
                Some(n) if n >= 0 => maxage = Some(n as u64),
                _ => return Reply::error("ERR syntax error"),
            },
            _ => return Reply::error("ERR syntax error"),
        }
    }
    let mut killed = 0;
    for c in all.iter().filter(|c| class.has(c) && (!skipme || c.id != client.info.id)) {
        let matches = id.is_none_or(|i| i == c.id)
            && addr.as_ref().is_none_or(|a| *a == c.addr)
            && laddr.as_ref().is_none_or(|a| *a == c.laddr)
            && maxage.is_none_or(|m| c.created.elapsed().as_secs() >= m)
            && user.as_ref().is_none_or(|u| *u == c.user());
        if matches {
            c.kill_by(client.info.id);
            killed += 1;
        }
    }
    Reply::Int(killed)
}
