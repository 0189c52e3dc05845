//! The command table, commands parsed once, and the key-value commands' semantics.
//!
//! [`SPECS`] is what `COMMAND` reports and what routing uses: arity and key
//! positions exactly as Redis 7 declares them, plus our own [`Id`] and
//! [`Kind`]. A request is looked up and arity-checked once, at the
//! connection, into a [`Command`] that carries its spec from there on: the
//! connection routes by `spec.kind`, the engine runs it by `spec.id`, and
//! nobody compares names again. [`execute`] runs one data command against a
//! [`Txn`] (a view of one partition plus the writes staged before it) and
//! returns the reply; its writes are recorded as storage ops. Everything here
//! is pure: time comes in as `now_ms`.

use std::collections::HashMap;

use bytes::Bytes;
use sharedisk_storage::Op;

use super::limits::{REPLY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::resp::Reply;

/// Every command this server answers, as a value to `match` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Id {
    Get,
    Set,
    Del,
    Unlink,
    Exists,
    Incr,
    IncrBy,
    Decr,
    DecrBy,
    Append,
    Strlen,
    Mget,
    Mset,
    Expire,
    Pexpire,
    Ttl,
    Pttl,
    Persist,
    Ping,
    Echo,
    Select,
    Hello,
    Quit,
    Info,
    Dbsize,
    Command,
    Config,
    Client,
    Cluster,
    Readonly,
    Readwrite,
    Asking,
    Multi,
    Exec,
    Discard,
    Wait,
    /// Our own: what servers ask each other (`SHAREDISK STANDBY-APPLIED`).
    Sharedisk,
}

/// Who answers a command, and whether it may change data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Keys, reads only: the partition's published index can answer it.
    ReadData,
    /// Keys, may write: the partition's engine runs it, in order.
    WriteData,
    /// The connection answers it from its own state (PING, HELLO, MULTI, ...).
    Connection,
    /// The connection answers it from the server's state (INFO, CONFIG, CLUSTER, ...).
    Admin,
}

impl Kind {
    /// Executed by a partition (true) or by the connection (false).
    pub fn is_data(self) -> bool {
        matches!(self, Kind::ReadData | Kind::WriteData)
    }
}

/// One command as `COMMAND` describes it, with how we route and run it.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub id: Id,
    pub kind: Kind,
    pub name: &'static str,
    /// Redis arity: N = exactly N arguments with the name, -N = at least N.
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
    pub categories: &'static [&'static str],
}

const fn spec(
    id: Id,
    kind: Kind,
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    categories: &'static [&'static str],
) -> Spec {
    Spec { id, kind, name, arity, flags, first_key: keys.0, last_key: keys.1, step: keys.2, categories }
}

const RO: &[&str] = &["readonly", "fast"];
const WR: &[&str] = &["write", "denyoom"];
const WRF: &[&str] = &["write", "denyoom", "fast"];
const WF: &[&str] = &["write", "fast"];
const STR_R: &[&str] = &["@read", "@string", "@fast"];
const STR_W: &[&str] = &["@write", "@string", "@slow"];
const STR_WF: &[&str] = &["@write", "@string", "@fast"];
const KS_W: &[&str] = &["@keyspace", "@write", "@fast"];
const KS_R: &[&str] = &["@keyspace", "@read", "@fast"];
const CONN: &[&str] = &["@connection", "@fast"];
const ADMIN: &[&str] = &["@admin", "@slow", "@dangerous"];
const NOKEY: (i64, i64, i64) = (0, 0, 0);

use Kind::{Admin, Connection as Conn, ReadData as Read, WriteData as Write};

/// Every command this server answers.
pub const SPECS: &[Spec] = &[
    spec(Id::Get, Read, "get", 2, RO, (1, 1, 1), STR_R),
    spec(Id::Set, Write, "set", -3, WR, (1, 1, 1), STR_W),
    spec(Id::Del, Write, "del", -2, &["write"], (1, -1, 1), &["@keyspace", "@write", "@slow"]),
    spec(Id::Unlink, Write, "unlink", -2, &["write", "fast"], (1, -1, 1), KS_W),
    spec(Id::Exists, Read, "exists", -2, RO, (1, -1, 1), KS_R),
    spec(Id::Incr, Write, "incr", 2, WRF, (1, 1, 1), STR_WF),
    spec(Id::IncrBy, Write, "incrby", 3, WRF, (1, 1, 1), STR_WF),
    spec(Id::Decr, Write, "decr", 2, WRF, (1, 1, 1), STR_WF),
    spec(Id::DecrBy, Write, "decrby", 3, WRF, (1, 1, 1), STR_WF),
    spec(Id::Append, Write, "append", 3, WRF, (1, 1, 1), STR_WF),
    spec(Id::Strlen, Read, "strlen", 2, RO, (1, 1, 1), STR_R),
    spec(Id::Mget, Read, "mget", -2, RO, (1, -1, 1), STR_R),
    spec(Id::Mset, Write, "mset", -3, WR, (1, -1, 2), STR_W),
    spec(Id::Expire, Write, "expire", -3, WF, (1, 1, 1), KS_W),
    spec(Id::Pexpire, Write, "pexpire", -3, WF, (1, 1, 1), KS_W),
    spec(Id::Ttl, Read, "ttl", 2, RO, (1, 1, 1), KS_R),
    spec(Id::Pttl, Read, "pttl", 2, RO, (1, 1, 1), KS_R),
    spec(Id::Persist, Write, "persist", 2, WF, (1, 1, 1), KS_W),
    spec(Id::Ping, Conn, "ping", -1, &["fast"], NOKEY, CONN),
    spec(Id::Echo, Conn, "echo", 2, &["fast"], NOKEY, CONN),
    spec(Id::Select, Conn, "select", 2, &["loading", "stale", "fast"], NOKEY, CONN),
    spec(Id::Hello, Conn, "hello", -1, &["noscript", "loading", "stale", "fast", "no_auth"], NOKEY, CONN),
    spec(Id::Quit, Conn, "quit", -1, &["allow_busy", "noscript", "loading", "stale", "fast", "no_auth"], NOKEY, CONN),
    spec(Id::Info, Admin, "info", -1, &["loading", "stale"], NOKEY, &["@slow", "@dangerous"]),
    spec(Id::Dbsize, Admin, "dbsize", 1, &["readonly", "fast"], NOKEY, &["@keyspace", "@read", "@fast"]),
    spec(Id::Command, Admin, "command", -1, &["loading", "stale"], NOKEY, &["@slow", "@connection"]),
    spec(Id::Config, Admin, "config", -2, &["admin", "noscript", "loading", "stale"], NOKEY, ADMIN),
    spec(Id::Client, Conn, "client", -2, &["noscript", "loading", "stale"], NOKEY, &["@slow", "@connection"]),
    spec(Id::Cluster, Admin, "cluster", -2, &["stale"], NOKEY, &["@slow"]),
    spec(Id::Readonly, Conn, "readonly", 1, &["loading", "stale", "fast"], NOKEY, CONN),
    spec(Id::Readwrite, Conn, "readwrite", 1, &["loading", "stale", "fast"], NOKEY, CONN),
    spec(Id::Asking, Conn, "asking", 1, &["fast"], NOKEY, CONN),
    spec(Id::Multi, Conn, "multi", 1, &["noscript", "loading", "stale", "fast", "allow_busy"], NOKEY, &["@fast", "@transaction"]),
    spec(Id::Exec, Conn, "exec", 1, &["noscript", "loading", "stale", "skip_slowlog"], NOKEY, &["@slow", "@transaction"]),
    spec(Id::Discard, Conn, "discard", 1, &["noscript", "loading", "stale", "fast", "allow_busy"], NOKEY, &["@fast", "@transaction"]),
    spec(Id::Wait, Conn, "wait", 3, &[], NOKEY, &["@slow", "@connection"]),
    spec(Id::Sharedisk, Admin, "sharedisk", -2, &["loading", "stale"], NOKEY, &["@slow"]),
];

/// A request looked up and arity-checked: its spec and its arguments (the name first).
#[derive(Clone, Debug)]
pub struct Command {
    pub spec: &'static Spec,
    pub args: Vec<Bytes>,
}

/// The most bytes a reply without values takes (integers, OK, errors).
const SMALL_REPLY_BYTES_MAX: usize = 256;

impl Command {
    /// Look the name up and check the arity; `Err` is the reply Redis gives.
    pub fn parse(args: Vec<Bytes>) -> Result<Command, Reply> {
        let Some(spec) = lookup(&args[0]) else { return Err(unknown_command(&args)) };
        if !arity_ok(spec, args.len()) {
            return Err(wrong_args(spec.name));
        }
        Ok(Command { spec, args })
    }

    pub fn id(&self) -> Id {
        self.spec.id
    }

    /// Its key arguments.
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        keys(self.spec, &self.args)
    }

    /// What holding it costs: its arguments' bytes and their handles.
    pub fn held_bytes(&self) -> usize {
        self.args.iter().map(|a| a.len() + size_of::<Bytes>()).sum::<usize>() + size_of::<Command>()
    }

    /// The most bytes its reply can take, before anyone has computed it
    /// (a stored value is at most [`VALUE_BYTES_MAX`]; an `MGET` reply at
    /// most [`REPLY_BYTES_MAX`]).
    pub fn reply_bytes_max(&self) -> usize {
        let value = VALUE_BYTES_MAX + SMALL_REPLY_BYTES_MAX;
        match self.spec.id {
            Id::Get => value,
            Id::Set if self.args[3..].iter().any(|a| a.eq_ignore_ascii_case(b"GET")) => value,
            Id::Mget => (self.args.len() - 1).saturating_mul(value).min(REPLY_BYTES_MAX + value),
            _ => SMALL_REPLY_BYTES_MAX,
        }
    }
}

/// Look a command up by name, case-insensitively.
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Whether `argc` (with the name) satisfies the arity.
pub fn arity_ok(spec: &Spec, argc: usize) -> bool {
    let argc = argc as i64;
    if spec.arity >= 0 { argc == spec.arity } else { argc >= -spec.arity }
}

/// The key arguments of a command whose arity was checked.
pub fn keys<'a>(spec: &Spec, args: &'a [Bytes]) -> impl Iterator<Item = &'a Bytes> {
    let (first, step) = (spec.first_key, spec.step.max(1));
    let last = if spec.last_key < 0 { args.len() as i64 + spec.last_key } else { spec.last_key };
    let range = if first <= 0 { 0..0 } else { first as usize..(last.max(first - 1) + 1) as usize };
    args.get(range).unwrap_or(&[]).iter().step_by(step as usize)
}

/// The `COMMAND` entry of a spec (10 elements, as Redis 7 sends).
pub fn command_entry(s: &Spec) -> Reply {
    let set = |v: &[&str]| Reply::Array(v.iter().map(|f| Reply::Simple((*f).to_owned())).collect());
    let key_specs = if s.first_key > 0 {
        let (limit, last) = if s.last_key < 0 { (0, s.last_key) } else { (0, s.last_key - s.first_key) };
        Reply::Array(vec![Reply::Map(vec![
            (
                Reply::bulk("begin_search"),
                Reply::Map(vec![
                    (Reply::bulk("type"), Reply::bulk("index")),
                    (Reply::bulk("spec"), Reply::Map(vec![(Reply::bulk("index"), Reply::Int(s.first_key))])),
                ]),
            ),
            (
                Reply::bulk("find_keys"),
                Reply::Map(vec![
                    (Reply::bulk("type"), Reply::bulk("range")),
                    (
                        Reply::bulk("spec"),
                        Reply::Map(vec![
                            (Reply::bulk("lastkey"), Reply::Int(last)),
                            (Reply::bulk("keystep"), Reply::Int(s.step)),
                            (Reply::bulk("limit"), Reply::Int(limit)),
                        ]),
                    ),
                ]),
            ),
        ])])
    } else {
        Reply::Array(vec![])
    };
    Reply::Array(vec![
        Reply::bulk(s.name),
        Reply::Int(s.arity),
        set(s.flags),
        Reply::Int(s.first_key),
        Reply::Int(s.last_key),
        Reply::Int(s.step),
        set(s.categories),
        Reply::Array(vec![]),
        key_specs,
        Reply::Array(vec![]),
    ])
}

pub fn wrong_args(name: &str) -> Reply {
    Reply::error(format!("ERR wrong number of arguments for '{name}' command"))
}

/// Redis's unknown-command error, argument preview included.
pub fn unknown_command(args: &[Bytes]) -> Reply {
    let name = String::from_utf8_lossy(&args[0]);
    let mut m = format!("ERR unknown command '{}', with args beginning with: ", truncate(&name, 128));
    for a in &args[1..] {
        if m.len() >= 128 {
            break;
        }
        m.push_str(&format!("'{}' ", truncate(&String::from_utf8_lossy(a), 128 - m.len().min(128))));
    }
    Reply::Error(m)
}

fn truncate(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

const NOT_INT: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

/// A strict Redis integer: optional '-', digits, no spaces, fits i64.
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.starts_with('+') || (s.len() > 1 && s.starts_with('0')) || s.starts_with("-0") {
        return None;
    }
    s.parse().ok()
}

/// A value as a key currently holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub data: Vec<u8>,
    /// Unix ms; 0 = no expiry.
    pub expire_at_ms: u64,
}

/// Reads the partition's published state.
pub trait Published {
    fn get(&self, key: &[u8], now_ms: u64) -> Option<Value>;
}

/// Writes staged ahead of the command being run: `Some` = put, `None` = deleted.
pub type Overlay = HashMap<Vec<u8>, Option<Value>>;

/// A view for one request: its own writes, over the batch's staged writes,
/// over what is published. Its ops are appended as one atomic batch.
pub struct Txn<'a, P: Published> {
    published: &'a P,
    staged: &'a Overlay,
    own: Overlay,
    pub ops: Vec<Op>,
    pub now_ms: u64,
}

impl<P: Published> std::fmt::Debug for Txn<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn").field("staged", &self.staged.len()).field("own", &self.own.len()).finish_non_exhaustive()
    }
}

impl<'a, P: Published> Txn<'a, P> {
    pub fn new(published: &'a P, staged: &'a Overlay, now_ms: u64) -> Self {
        Txn { published, staged, own: HashMap::new(), ops: Vec::new(), now_ms }
    }

    pub fn get(&self, key: &[u8]) -> Option<Value> {
        let layered = self.own.get(key).or_else(|| self.staged.get(key));
        match layered {
            Some(Some(v)) if v.expire_at_ms == 0 || v.expire_at_ms > self.now_ms => Some(v.clone()),
            Some(_) => None,
            None => self.published.get(key, self.now_ms),
        }
    }

    fn put(&mut self, key: &[u8], data: Vec<u8>, expire_at_ms: u64) {
        self.ops.push(Op::Put { key: key.to_vec(), value: data.clone(), expire_at_ms });
        self.own.insert(key.to_vec(), Some(Value { data, expire_at_ms }));
    }

    fn del(&mut self, key: &[u8]) {
        self.ops.push(Op::Del { key: key.to_vec() });
        self.own.insert(key.to_vec(), None);
    }

    /// The writes of this request, to be layered under later requests once staged.
    pub fn into_writes(self) -> (Overlay, Vec<Op>) {
        (self.own, self.ops)
    }
}

/// Run one data command.
pub fn execute<P: Published>(t: &mut Txn<'_, P>, cmd: &Command) -> Reply {
    let now = t.now_ms;
    let args = &cmd.args[..];
    match cmd.spec.id {
        Id::Get => t.get(&args[1]).map_or(Reply::Null, |v| Reply::bulk(v.data)),
        Id::Set => set(t, args),
        Id::Del | Id::Unlink => {
            let mut n = 0;
            for k in &args[1..] {
                if t.get(k).is_some() {
                    t.del(k);
                    n += 1;
                }
            }
            Reply::Int(n)
        }
        Id::Exists => Reply::Int(args[1..].iter().filter(|k| t.get(k).is_some()).count() as i64),
        Id::Incr => incr_by(t, &args[1], 1),
        Id::Decr => incr_by(t, &args[1], -1),
        Id::IncrBy => match parse_i64(&args[2]) {
            Some(d) => incr_by(t, &args[1], d),
            None => Reply::error(NOT_INT),
        },
        Id::DecrBy => match parse_i64(&args[2]) {
            Some(d) => match d.checked_neg() {
                Some(d) => incr_by(t, &args[1], d),
                None => Reply::error("ERR decrement would overflow"),
            },
            None => Reply::error(NOT_INT),
        },
        Id::Append => {
            let (mut data, exp) = t.get(&args[1]).map_or((Vec::new(), 0), |v| (v.data, v.expire_at_ms));
            data.extend_from_slice(&args[2]);
            let len = data.len() as i64;
            t.put(&args[1], data, exp);
            Reply::Int(len)
        }
        Id::Strlen => Reply::Int(t.get(&args[1]).map_or(0, |v| v.data.len() as i64)),
        Id::Mget => mget(t, &args[1..]),
        Id::Mset => {
            if args.len().is_multiple_of(2) {
                return wrong_args("mset");
            }
            for kv in args[1..].chunks(2) {
                t.put(&kv[0], kv[1].to_vec(), 0);
            }
            Reply::ok()
        }
        Id::Expire => expire(t, "expire", 1000, args),
        Id::Pexpire => expire(t, "pexpire", 1, args),
        Id::Ttl | Id::Pttl => match t.get(&args[1]) {
            None => Reply::Int(-2),
            Some(v) if v.expire_at_ms == 0 => Reply::Int(-1),
            Some(v) => {
                let ms = v.expire_at_ms.saturating_sub(now) as i64;
                Reply::Int(if cmd.spec.id == Id::Ttl { (ms + 500) / 1000 } else { ms })
            }
        },
        Id::Persist => match t.get(&args[1]) {
            Some(v) if v.expire_at_ms != 0 => {
                t.put(&args[1], v.data, 0);
                Reply::Int(1)
            }
            _ => Reply::Int(0),
        },
        _ => Reply::error(format!("ERR command '{}' is not a data command", cmd.spec.name)),
    }
}

/// The values of `keys`, refused once they add up to more than
/// [`REPLY_BYTES_MAX`] (one key named a million times must not make us
/// build a million copies of its value).
fn mget<P: Published>(t: &mut Txn<'_, P>, keys: &[Bytes]) -> Reply {
    let mut bytes = 0usize;
    let mut values = Vec::with_capacity(keys.len());
    for k in keys {
        let v = t.get(k).map_or(Reply::Null, |v| {
            bytes += v.data.len();
            Reply::bulk(v.data)
        });
        if bytes > REPLY_BYTES_MAX {
            return Reply::error(format!("ERR MGET reply would exceed {REPLY_BYTES_MAX} bytes; ask for fewer keys"));
        }
        values.push(v);
    }
    Reply::Array(values)
}

fn incr_by<P: Published>(t: &mut Txn<'_, P>, key: &[u8], delta: i64) -> Reply {
    let (cur, exp) = match t.get(key) {
        None => (0, 0),
        Some(v) => match parse_i64(&v.data) {
            Some(n) => (n, v.expire_at_ms),
            None => return Reply::error(NOT_INT),
        },
    };
    match cur.checked_add(delta) {
        Some(n) => {
            t.put(key, n.to_string().into_bytes(), exp);
            Reply::Int(n)
        }
        None => Reply::error("ERR increment or decrement would overflow"),
    }
}

/// Unix ms `amount` units from now; None when it overflows.
fn deadline(now_ms: u64, amount: i64, unit_ms: i64) -> Option<i64> {
    amount.checked_mul(unit_ms)?.checked_add(now_ms as i64)
}

fn set<P: Published>(t: &mut Txn<'_, P>, args: &[Bytes]) -> Reply {
    let (mut nx, mut xx, mut get, mut keepttl) = (false, false, false, false);
    let mut expire_at: Option<i64> = None;
    let mut i = 3;
    while i < args.len() {
        let opt = args[i].to_ascii_uppercase();
        let next = args.get(i + 1);
        match opt.as_slice() {
            b"NX" if !xx => nx = true,
            b"XX" if !nx => xx = true,
            b"GET" => get = true,
            b"KEEPTTL" if expire_at.is_none() => keepttl = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if expire_at.is_none() && !keepttl && next.is_some() => {
                let Some(n) = next.and_then(|b| parse_i64(b)) else { return Reply::error(NOT_INT) };
                if n <= 0 {
                    return Reply::error("ERR invalid expire time in 'set' command");
                }
                let at = match opt.as_slice() {
                    b"EX" => deadline(t.now_ms, n, 1000),
                    b"PX" => deadline(t.now_ms, n, 1),
                    b"EXAT" => n.checked_mul(1000),
                    _ => Some(n),
                };
                let Some(at) = at else { return Reply::error("ERR invalid expire time in 'set' command") };
                expire_at = Some(at);
                i += 1;
            }
            _ => return Reply::error(SYNTAX),
        }
        i += 1;
    }
    let old = t.get(&args[1]);
    let reply_old = || if get { old.clone().map_or(Reply::Null, |v| Reply::bulk(v.data)) } else { Reply::Null };
    if (nx && old.is_some()) || (xx && old.is_none()) {
        return reply_old();
    }
    let exp = match (expire_at, keepttl) {
        (Some(at), _) => at as u64,
        (None, true) => old.as_ref().map_or(0, |v| v.expire_at_ms),
        (None, false) => 0,
    };
    if exp != 0 && exp <= t.now_ms {
        // An absolute deadline in the past: Redis sets and expires at once.
        if old.is_some() {
            t.del(&args[1]);
        }
    } else {
        t.put(&args[1], args[2].to_vec(), exp);
    }
    if get { reply_old() } else { Reply::ok() }
}

fn expire<P: Published>(t: &mut Txn<'_, P>, name: &str, unit_ms: i64, args: &[Bytes]) -> Reply {
    let Some(n) = parse_i64(&args[2]) else { return Reply::error(NOT_INT) };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for a in &args[3..] {
        match a.to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            other => return Reply::error(format!("ERR Unsupported option {}", String::from_utf8_lossy(other))),
        }
    }
    if nx && (xx || gt || lt) {
        return Reply::error("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return Reply::error("ERR GT and LT options at the same time are not compatible");
    }
    let Some(at) = deadline(t.now_ms, n, unit_ms) else {
        return Reply::error(format!("ERR invalid expire time in '{name}' command"));
    };
    let Some(v) = t.get(&args[1]) else { return Reply::Int(0) };
    // No expiry counts as an infinite TTL for GT/LT.
    let cur = if v.expire_at_ms == 0 { i64::MAX } else { v.expire_at_ms as i64 };
    if (nx && v.expire_at_ms != 0) || (xx && v.expire_at_ms == 0) || (gt && at <= cur) || (lt && at >= cur) {
        return Reply::Int(0);
    }
    if at <= t.now_ms as i64 {
        t.del(&args[1]);
    } else {
        t.put(&args[1], v.data, at as u64);
    }
    Reply::Int(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Map(HashMap<Vec<u8>, Value>);
    impl Published for Map {
        fn get(&self, key: &[u8], now_ms: u64) -> Option<Value> {
            self.0.get(key).filter(|v| v.expire_at_ms == 0 || v.expire_at_ms > now_ms).cloned()
        }
    }

    /// Run commands one after another, publishing each one's writes.
    fn run(db: &mut Map, now: u64, line: &str) -> Reply {
        let args: Vec<Bytes> = line.split(' ').map(|s| Bytes::copy_from_slice(s.as_bytes())).collect();
        let cmd = match Command::parse(args) {
            Ok(cmd) => cmd,
            Err(reply) => return reply,
        };
        let staged = Overlay::new();
        let mut t = Txn::new(&*db, &staged, now);
        let r = execute(&mut t, &cmd);
        let (own, _ops) = t.into_writes();
        for (k, v) in own {
            match v {
                Some(v) => db.0.insert(k, v),
                None => db.0.remove(&k),
            };
        }
        r
    }
    fn b(s: &str) -> Reply {
        Reply::bulk(s.to_owned())
    }
    fn e(s: &str) -> Reply {
        Reply::error(s)
    }

    #[test]
    fn strings_and_counters_follow_redis() {
        let db = &mut Map::default();
        assert_eq!(run(db, 0, "GET a"), Reply::Null);
        assert_eq!(run(db, 0, "SET a 1"), Reply::ok());
        assert_eq!(run(db, 0, "INCR a"), Reply::Int(2));
        assert_eq!(run(db, 0, "INCRBY a -5"), Reply::Int(-3));
        assert_eq!(run(db, 0, "DECRBY a 2"), Reply::Int(-5));
        assert_eq!(run(db, 0, "DECR a"), Reply::Int(-6));
        assert_eq!(run(db, 0, "APPEND a 0"), Reply::Int(3));
        assert_eq!(run(db, 0, "GET a"), b("-60"));
        assert_eq!(run(db, 0, "STRLEN a"), Reply::Int(3));
        assert_eq!(run(db, 0, "SET s hello"), Reply::ok());
        assert_eq!(run(db, 0, "INCR s"), e(NOT_INT));
        assert_eq!(run(db, 0, "INCRBY a x"), e(NOT_INT));
        assert_eq!(run(db, 0, "SET big 9223372036854775807"), Reply::ok());
        assert_eq!(run(db, 0, "INCR big"), e("ERR increment or decrement would overflow"));
        assert_eq!(run(db, 0, "DECRBY a -9223372036854775808"), e("ERR decrement would overflow"));
        for bad in ["+1", " 1", "01", "-0", "1.0", ""] {
            assert_eq!(parse_i64(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(run(db, 0, "EXISTS a s nope a"), Reply::Int(3));
        assert_eq!(run(db, 0, "DEL a nope"), Reply::Int(1));
        assert_eq!(run(db, 0, "MSET x 1 y 2"), Reply::ok());
        assert_eq!(run(db, 0, "MGET x nope y"), Reply::Array(vec![b("1"), Reply::Null, b("2")]));
        assert_eq!(run(db, 0, "MSET x 1 y"), wrong_args("mset"));
        assert_eq!(run(db, 0, "GET"), wrong_args("get"));
    }

    #[test]
    fn set_options_follow_redis() {
        let db = &mut Map::default();
        assert_eq!(run(db, 0, "SET k v NX"), Reply::ok());
        assert_eq!(run(db, 0, "SET k w NX"), Reply::Null);
        assert_eq!(run(db, 0, "SET k w NX GET"), b("v"));
        assert_eq!(run(db, 0, "SET k w XX GET"), b("v"));
        assert_eq!(run(db, 0, "SET n w XX"), Reply::Null);
        assert_eq!(run(db, 0, "SET n w GET"), Reply::Null);
        assert_eq!(run(db, 0, "SET k v NX XX"), e(SYNTAX));
        assert_eq!(run(db, 0, "SET k v EX"), e(SYNTAX));
        assert_eq!(run(db, 0, "SET k v EX 0"), e("ERR invalid expire time in 'set' command"));
        assert_eq!(run(db, 0, "SET k v EX x"), e(NOT_INT));
        assert_eq!(run(db, 0, "SET k v EX 1 PX 1"), e(SYNTAX));
        assert_eq!(run(db, 0, "SET k v BOGUS"), e(SYNTAX));
        assert_eq!(run(db, 0, "SET k v EX 9223372036854775807"), e("ERR invalid expire time in 'set' command"));
        assert_eq!(run(db, 1000, "SET k v EX 10"), Reply::ok());
        assert_eq!(run(db, 1000, "TTL k"), Reply::Int(10));
        assert_eq!(run(db, 1000, "PTTL k"), Reply::Int(10_000));
        // KEEPTTL keeps it, a plain SET clears it.
        assert_eq!(run(db, 1000, "SET k w KEEPTTL"), Reply::ok());
        assert_eq!(run(db, 1000, "PTTL k"), Reply::Int(10_000));
        assert_eq!(run(db, 1000, "SET k w"), Reply::ok());
        assert_eq!(run(db, 1000, "TTL k"), Reply::Int(-1));
        assert_eq!(run(db, 1000, "SET k w PX 5"), Reply::ok());
        assert_eq!(run(db, 1004, "GET k"), b("w"));
        assert_eq!(run(db, 1005, "GET k"), Reply::Null);
        assert_eq!(run(db, 1005, "TTL k"), Reply::Int(-2));
        // PXAT in the past: set and gone.
        assert_eq!(run(db, 1000, "SET p v PXAT 999"), Reply::ok());
        assert_eq!(run(db, 1000, "EXISTS p"), Reply::Int(0));
    }

    #[test]
    fn expiry_commands_follow_redis() {
        let db = &mut Map::default();
        assert_eq!(run(db, 0, "EXPIRE nope 10"), Reply::Int(0));
        assert_eq!(run(db, 0, "SET k v"), Reply::ok());
        assert_eq!(run(db, 0, "PERSIST k"), Reply::Int(0));
        assert_eq!(run(db, 0, "EXPIRE k 10 XX"), Reply::Int(0));
        assert_eq!(run(db, 0, "EXPIRE k 10 NX"), Reply::Int(1));
        assert_eq!(run(db, 0, "EXPIRE k 20 NX"), Reply::Int(0));
        assert_eq!(run(db, 0, "EXPIRE k 5 GT"), Reply::Int(0));
        assert_eq!(run(db, 0, "EXPIRE k 5 LT"), Reply::Int(1));
        assert_eq!(run(db, 0, "TTL k"), Reply::Int(5));
        assert_eq!(run(db, 0, "PEXPIRE k 1500"), Reply::Int(1));
        assert_eq!(run(db, 0, "TTL k"), Reply::Int(2)); // rounded like Redis
        assert_eq!(run(db, 0, "PERSIST k"), Reply::Int(1));
        assert_eq!(run(db, 0, "TTL k"), Reply::Int(-1));
        assert_eq!(run(db, 0, "EXPIRE k x"), e(NOT_INT));
        assert_eq!(run(db, 0, "EXPIRE k 1 NX XX"), e("ERR NX and XX, GT or LT options at the same time are not compatible"));
        assert_eq!(run(db, 0, "EXPIRE k 1 BOGUS"), e("ERR Unsupported option BOGUS"));
        assert_eq!(run(db, 0, "EXPIRE k 9223372036854775807"), e("ERR invalid expire time in 'expire' command"));
        // A deadline in the past deletes.
        assert_eq!(run(db, 0, "EXPIRE k 0"), Reply::Int(1));
        assert_eq!(run(db, 0, "EXISTS k"), Reply::Int(0));
        // INCR and APPEND keep the TTL.
        assert_eq!(run(db, 0, "SET c 1 EX 100"), Reply::ok());
        assert_eq!(run(db, 0, "INCR c"), Reply::Int(2));
        assert_eq!(run(db, 0, "APPEND c 0"), Reply::Int(2));
        assert_eq!(run(db, 0, "TTL c"), Reply::Int(100));
    }

    #[test]
    fn writes_within_one_request_see_each_other_and_layer_over_staged() {
        let db = Map::default();
        let mut staged = Overlay::new();
        staged.insert(b"a".to_vec(), Some(Value { data: b"5".to_vec(), expire_at_ms: 0 }));
        staged.insert(b"gone".to_vec(), None);
        let mut t = Txn::new(&db, &staged, 0);
        let cmd = |s: &str| Command::parse(s.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()).unwrap();
        assert_eq!(execute(&mut t, &cmd("INCR a")), Reply::Int(6));
        assert_eq!(execute(&mut t, &cmd("INCR a")), Reply::Int(7));
        assert_eq!(execute(&mut t, &cmd("GET gone")), Reply::Null);
        assert_eq!(t.ops.len(), 2);
    }

    #[test]
    fn key_positions_match_the_table() {
        let args = |s: &str| s.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect::<Vec<_>>();
        let ks = |s: &str| {
            let a = args(s);
            keys(lookup(&a[0]).unwrap(), &a).map(|k| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>()
        };
        assert_eq!(ks("SET k v EX 1"), ["k"]);
        assert_eq!(ks("MSET a 1 b 2"), ["a", "b"]);
        assert_eq!(ks("MGET a b c"), ["a", "b", "c"]);
        assert_eq!(ks("DEL a"), ["a"]);
        assert!(ks("PING").is_empty());
        // Every data command has keys, its kind agrees with its Redis flags,
        // every entry has the 10 fields redis-py needs, and ids are unique.
        for s in SPECS {
            assert_eq!(s.kind.is_data(), s.first_key > 0, "{}", s.name);
            if s.kind.is_data() {
                assert_eq!(s.kind == Kind::ReadData, s.flags.contains(&"readonly"), "{}", s.name);
                assert_eq!(s.kind == Kind::WriteData, s.flags.contains(&"write"), "{}", s.name);
            }
            assert_eq!(SPECS.iter().filter(|o| o.id == s.id).count(), 1, "{}", s.name);
            assert_eq!(format!("{:?}", s.id).to_ascii_lowercase(), s.name, "the id names the command");
            let Reply::Array(v) = command_entry(s) else { panic!() };
            assert_eq!(v.len(), 10);
        }
        let c = Command::parse(args("mget a b")).unwrap();
        assert_eq!((c.id(), c.keys().count()), (Id::Mget, 2));
        assert_eq!(Command::parse(args("GET")).unwrap_err(), wrong_args("get"));
        assert!(matches!(Command::parse(args("FOO")), Err(Reply::Error(m)) if m.starts_with("ERR unknown command 'FOO'")));
        assert!(lookup(b"gEt").is_some());
        let Reply::Error(m) = unknown_command(&args("FOO a b")) else { panic!() };
        assert_eq!(m, "ERR unknown command 'FOO', with args beginning with: 'a' 'b' ");
    }

    #[test]
    fn a_reply_is_bounded_before_it_is_built() {
        let db = &mut Map::default();
        // The largest value a key can hold, asked for over and over.
        let value = "v".repeat(VALUE_BYTES_MAX);
        assert_eq!(run(db, 0, &format!("SET big {value}")), Reply::ok());
        let within = format!("MGET{}", " big".repeat(REPLY_BYTES_MAX / VALUE_BYTES_MAX));
        let Reply::Array(v) = run(db, 0, &within) else { panic!("MGET within the limit refused") };
        assert_eq!(v.len(), REPLY_BYTES_MAX / VALUE_BYTES_MAX);
        let over = format!("{within} big");
        assert_eq!(run(db, 0, &over), e(&format!("ERR MGET reply would exceed {REPLY_BYTES_MAX} bytes; ask for fewer keys")));
        // What a pipeline reserves for a reply not computed yet covers the real one,
        // and no more than the limit allows.
        let cmd = |s: &str| Command::parse(s.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()).unwrap();
        assert!(cmd(&within).reply_bytes_max() >= REPLY_BYTES_MAX);
        assert!(cmd(&over).reply_bytes_max() <= REPLY_BYTES_MAX + VALUE_BYTES_MAX + SMALL_REPLY_BYTES_MAX);
        assert!(cmd("GET k").reply_bytes_max() > VALUE_BYTES_MAX);
        assert!(cmd("SET k v get").reply_bytes_max() > VALUE_BYTES_MAX);
        assert_eq!(cmd("SET k v").reply_bytes_max(), SMALL_REPLY_BYTES_MAX);
        assert_eq!(cmd("INCR k").reply_bytes_max(), SMALL_REPLY_BYTES_MAX);
    }
}
