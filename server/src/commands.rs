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

use super::limits::{REPLY_BYTES_MAX, VALUE_BYTES_MAX, VALUE_RESERVE_BYTES};
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
    Setnx,
    Setex,
    Psetex,
    Getset,
    Getdel,
    Getex,
    Msetnx,
    IncrByFloat,
    Getrange,
    Substr,
    Setrange,
    Setbit,
    Getbit,
    Bitcount,
    Bitpos,
    Type,
    Touch,
    Expireat,
    Pexpireat,
    Expiretime,
    Pexpiretime,
    Rename,
    Renamenx,
    Copy,
    Lcs,
    Bitop,
    Bitfield,
    BitfieldRo,
    Object,
    Keys,
    Scan,
    Randomkey,
    Flushall,
    Flushdb,
    Time,
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
    Watch,
    Unwatch,
    Function,
    Slowlog,
    Latency,
    Shutdown,
    Memory,
    Reset,
    Auth,
    Acl,
    /// Our own: what servers ask each other (`SHAREDISK STANDBY-APPLIED`).
    Sharedisk,
    Subscribe,
    Unsubscribe,
    Psubscribe,
    Punsubscribe,
    Ssubscribe,
    Sunsubscribe,
    Publish,
    Spublish,
    Pubsub,
    Hset,
    Hsetnx,
    Hmset,
    Hget,
    Hmget,
    Hgetall,
    Hdel,
    Hexists,
    Hlen,
    Hstrlen,
    Hkeys,
    Hvals,
    Hincrby,
    Hincrbyfloat,
    Hrandfield,
    Hscan,
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
const HASH_R: &[&str] = &["@read", "@hash", "@slow"];
const HASH_RF: &[&str] = &["@read", "@hash", "@fast"];
const HASH_WF: &[&str] = &["@write", "@hash", "@fast"];
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
    spec(Id::Setnx, Write, "setnx", 3, WRF, (1, 1, 1), STR_WF),
    spec(Id::Setex, Write, "setex", 4, WR, (1, 1, 1), STR_W),
    spec(Id::Psetex, Write, "psetex", 4, WR, (1, 1, 1), STR_W),
    spec(Id::Getset, Write, "getset", 3, WRF, (1, 1, 1), STR_WF),
    spec(Id::Getdel, Write, "getdel", 2, WF, (1, 1, 1), STR_WF),
    spec(Id::Getex, Write, "getex", -2, WF, (1, 1, 1), STR_WF),
    spec(Id::Msetnx, Write, "msetnx", -3, WR, (1, -1, 2), STR_W),
    spec(Id::IncrByFloat, Write, "incrbyfloat", 3, WRF, (1, 1, 1), STR_WF),
    spec(Id::Getrange, Read, "getrange", 4, &["readonly"], (1, 1, 1), &["@read", "@string", "@slow"]),
    spec(Id::Substr, Read, "substr", 4, &["readonly"], (1, 1, 1), &["@read", "@string", "@slow"]),
    spec(Id::Setrange, Write, "setrange", 4, WR, (1, 1, 1), STR_W),
    spec(Id::Setbit, Write, "setbit", 4, WR, (1, 1, 1), &["@write", "@bitmap", "@slow"]),
    spec(Id::Getbit, Read, "getbit", 3, RO, (1, 1, 1), &["@read", "@bitmap", "@fast"]),
    spec(Id::Bitcount, Read, "bitcount", -2, &["readonly"], (1, 1, 1), &["@read", "@bitmap", "@slow"]),
    spec(Id::Bitpos, Read, "bitpos", -3, &["readonly"], (1, 1, 1), &["@read", "@bitmap", "@slow"]),
    spec(Id::Type, Read, "type", 2, RO, (1, 1, 1), KS_R),
    spec(Id::Touch, Read, "touch", -2, RO, (1, -1, 1), KS_R),
    spec(Id::Expireat, Write, "expireat", -3, WF, (1, 1, 1), KS_W),
    spec(Id::Pexpireat, Write, "pexpireat", -3, WF, (1, 1, 1), KS_W),
    spec(Id::Expiretime, Read, "expiretime", 2, RO, (1, 1, 1), KS_R),
    spec(Id::Pexpiretime, Read, "pexpiretime", 2, RO, (1, 1, 1), KS_R),
    spec(Id::Rename, Write, "rename", 3, &["write"], (1, 2, 1), &["@keyspace", "@write", "@slow"]),
    spec(Id::Renamenx, Write, "renamenx", 3, WF, (1, 2, 1), KS_W),
    spec(Id::Copy, Write, "copy", -3, WR, (1, 2, 1), &["@keyspace", "@write", "@slow"]),
    spec(Id::Bitop, Write, "bitop", -4, WR, (2, -1, 1), &["@write", "@bitmap", "@slow"]),
    spec(Id::Bitfield, Write, "bitfield", -2, WR, (1, 1, 1), &["@write", "@bitmap", "@slow"]),
    spec(Id::BitfieldRo, Read, "bitfield_ro", -2, RO, (1, 1, 1), &["@read", "@bitmap", "@fast"]),
    spec(Id::Object, Read, "object", -2, &["readonly"], (2, 2, 1), &["@keyspace", "@read", "@slow"]),
    spec(Id::Lcs, Read, "lcs", -3, &["readonly"], (1, 2, 1), &["@read", "@string", "@slow"]),
    spec(Id::Hset, Write, "hset", -4, WRF, (1, 1, 1), HASH_WF),
    spec(Id::Hsetnx, Write, "hsetnx", 4, WRF, (1, 1, 1), HASH_WF),
    spec(Id::Hmset, Write, "hmset", -4, WRF, (1, 1, 1), HASH_WF),
    spec(Id::Hget, Read, "hget", 3, RO, (1, 1, 1), HASH_RF),
    spec(Id::Hmget, Read, "hmget", -3, RO, (1, 1, 1), HASH_RF),
    spec(Id::Hgetall, Read, "hgetall", 2, &["readonly"], (1, 1, 1), HASH_R),
    spec(Id::Hdel, Write, "hdel", -3, WF, (1, 1, 1), HASH_WF),
    spec(Id::Hexists, Read, "hexists", 3, RO, (1, 1, 1), HASH_RF),
    spec(Id::Hlen, Read, "hlen", 2, RO, (1, 1, 1), HASH_RF),
    spec(Id::Hstrlen, Read, "hstrlen", 3, RO, (1, 1, 1), HASH_RF),
    spec(Id::Hkeys, Read, "hkeys", 2, &["readonly"], (1, 1, 1), HASH_R),
    spec(Id::Hvals, Read, "hvals", 2, &["readonly"], (1, 1, 1), HASH_R),
    spec(Id::Hincrby, Write, "hincrby", 4, WRF, (1, 1, 1), HASH_WF),
    spec(Id::Hincrbyfloat, Write, "hincrbyfloat", 4, WRF, (1, 1, 1), HASH_WF),
    spec(Id::Hrandfield, Read, "hrandfield", -2, &["readonly"], (1, 1, 1), HASH_R),
    spec(Id::Hscan, Read, "hscan", -3, &["readonly"], (1, 1, 1), HASH_R),
    spec(Id::Ping, Conn, "ping", -1, &["fast"], NOKEY, CONN),
    spec(Id::Echo, Conn, "echo", 2, &["fast"], NOKEY, CONN),
    spec(Id::Time, Conn, "time", 1, &["loading", "stale", "fast"], NOKEY, &["@fast"]),
    spec(Id::Select, Conn, "select", 2, &["loading", "stale", "fast"], NOKEY, CONN),
    spec(Id::Hello, Conn, "hello", -1, &["noscript", "loading", "stale", "fast", "no_auth"], NOKEY, CONN),
    spec(Id::Quit, Conn, "quit", -1, &["allow_busy", "noscript", "loading", "stale", "fast", "no_auth"], NOKEY, CONN),
    spec(Id::Info, Admin, "info", -1, &["loading", "stale"], NOKEY, &["@slow", "@dangerous"]),
    spec(Id::Keys, Admin, "keys", 2, &["readonly"], NOKEY, &["@keyspace", "@read", "@slow", "@dangerous"]),
    spec(Id::Scan, Admin, "scan", -2, &["readonly"], NOKEY, &["@keyspace", "@read", "@slow"]),
    spec(Id::Randomkey, Admin, "randomkey", 1, &["readonly"], NOKEY, &["@keyspace", "@read", "@slow"]),
    spec(Id::Flushall, Admin, "flushall", -1, &["write"], NOKEY, &["@keyspace", "@write", "@slow", "@dangerous"]),
    spec(Id::Flushdb, Admin, "flushdb", -1, &["write"], NOKEY, &["@keyspace", "@write", "@slow", "@dangerous"]),
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
    spec(Id::Watch, Conn, "watch", -2, &["noscript", "loading", "stale", "fast", "allow_busy"], (1, -1, 1), &["@fast", "@transaction"]),
    spec(Id::Unwatch, Conn, "unwatch", 1, &["noscript", "loading", "stale", "fast", "allow_busy"], NOKEY, &["@fast", "@transaction"]),
    spec(Id::Function, Admin, "function", -2, &[], NOKEY, &["@slow", "@scripting"]),
    spec(Id::Slowlog, Admin, "slowlog", -2, &["admin", "random", "loading", "stale"], NOKEY, ADMIN),
    spec(Id::Latency, Admin, "latency", -2, &["admin", "noscript", "loading", "stale"], NOKEY, ADMIN),
    spec(Id::Memory, Read, "memory", -2, &["readonly"], (2, 2, 1), &["@read", "@slow"]),
    spec(Id::Reset, Conn, "reset", 1, &["noscript", "loading", "stale", "fast", "no_auth", "allow_busy"], NOKEY, CONN),
    spec(Id::Shutdown, Conn, "shutdown", -1, &["admin", "noscript", "loading", "stale", "no_multi", "allow_busy"], NOKEY, ADMIN),
    spec(Id::Auth, Conn, "auth", -2, &["noscript", "loading", "stale", "fast", "no_auth", "allow_busy"], NOKEY, &["@fast", "@connection"]),
    spec(Id::Acl, Conn, "acl", -2, &[], NOKEY, &["@slow"]),
    spec(Id::Sharedisk, Admin, "sharedisk", -2, &["loading", "stale"], NOKEY, &["@slow"]),
    spec(Id::Subscribe, Conn, "subscribe", -2, PUBSUB_SUB, NOKEY, PUBSUB_SLOW),
    spec(Id::Unsubscribe, Conn, "unsubscribe", -1, PUBSUB_SUB, NOKEY, PUBSUB_SLOW),
    spec(Id::Psubscribe, Conn, "psubscribe", -2, PUBSUB_SUB, NOKEY, PUBSUB_SLOW),
    spec(Id::Punsubscribe, Conn, "punsubscribe", -1, PUBSUB_SUB, NOKEY, PUBSUB_SLOW),
    // Shard channels are not keys to the ACL (Redis checks them as channels):
    // their slot is found by the connection.
    spec(Id::Ssubscribe, Conn, "ssubscribe", -2, PUBSUB_SUB, NOKEY, PUBSUB_SLOW),
    spec(Id::Sunsubscribe, Conn, "sunsubscribe", -1, PUBSUB_SUB, NOKEY, PUBSUB_SLOW),
    spec(Id::Publish, Conn, "publish", 3, &["pubsub", "loading", "stale", "fast"], NOKEY, &["@pubsub", "@fast"]),
    spec(Id::Spublish, Conn, "spublish", 3, &["pubsub", "loading", "stale", "fast"], NOKEY, &["@pubsub", "@fast"]),
    spec(Id::Pubsub, Conn, "pubsub", -2, &[], NOKEY, &["@slow"]),
];

const PUBSUB_SUB: &[&str] = &["pubsub", "noscript", "loading", "stale"];
const PUBSUB_SLOW: &[&str] = &["@pubsub", "@slow"];

/// Flags and categories the subcommands share (Redis 7's).
const SUB_ADMIN: &[&str] = &["admin", "noscript", "loading", "stale"];
const SUB_CONN: &[&str] = &["noscript", "loading", "stale"];
const LOADING_STALE: &[&str] = &["loading", "stale"];
const CONN_ADMIN: &[&str] = &["@connection", "@admin", "@dangerous", "@slow"];
const CONN_SLOW: &[&str] = &["@connection", "@slow"];

/// The subcommands of the container commands, as `COMMAND` lists them
/// (`client|list`; Redis 7's arity, flags, keys and categories): only those
/// this server answers.
pub const SUBCOMMANDS: &[Spec] = &[
    spec(Id::Acl, Conn, "acl|cat", -2, SUB_CONN, NOKEY, &["@slow"]),
    spec(Id::Acl, Conn, "acl|deluser", -3, SUB_ADMIN, NOKEY, &["@admin", "@slow", "@dangerous"]),
    spec(Id::Acl, Conn, "acl|dryrun", -4, SUB_ADMIN, NOKEY, &["@admin", "@slow", "@dangerous"]),
    spec(Id::Acl, Conn, "acl|genpass", -2, SUB_CONN, NOKEY, &["@slow"]),
    spec(Id::Acl, Conn, "acl|getuser", 3, SUB_ADMIN, NOKEY, &["@admin", "@slow", "@dangerous"]),
    spec(Id::Acl, Conn, "acl|help", 2, LOADING_STALE, NOKEY, &["@slow"]),
    spec(Id::Acl, Conn, "acl|list", 2, SUB_ADMIN, NOKEY, &["@admin", "@slow", "@dangerous"]),
    spec(Id::Acl, Conn, "acl|load", 2, SUB_ADMIN, NOKEY, &["@admin", "@slow", "@dangerous"]),
    spec(Id::Acl, Conn, "acl|save", 2, SUB_ADMIN, NOKEY, &["@admin", "@slow", "@dangerous"]),
    spec(Id::Acl, Conn, "acl|setuser", -3, SUB_ADMIN, NOKEY, &["@admin", "@slow", "@dangerous"]),
    spec(Id::Acl, Conn, "acl|users", 2, SUB_ADMIN, NOKEY, &["@admin", "@slow", "@dangerous"]),
    spec(Id::Acl, Conn, "acl|whoami", 2, SUB_CONN, NOKEY, &["@slow"]),
    spec(Id::Client, Conn, "client|getname", 2, SUB_CONN, NOKEY, CONN_SLOW),
    spec(Id::Client, Conn, "client|getredir", 2, SUB_CONN, NOKEY, CONN_SLOW),
    spec(Id::Client, Conn, "client|help", 2, LOADING_STALE, NOKEY, CONN_SLOW),
    spec(Id::Client, Conn, "client|id", 2, SUB_CONN, NOKEY, CONN_SLOW),
    spec(Id::Client, Conn, "client|info", 2, SUB_CONN, NOKEY, CONN_SLOW),
    spec(Id::Client, Conn, "client|kill", -3, SUB_ADMIN, NOKEY, CONN_ADMIN),
    spec(Id::Client, Conn, "client|list", -2, SUB_ADMIN, NOKEY, CONN_ADMIN),
    spec(Id::Client, Conn, "client|no-evict", 3, SUB_ADMIN, NOKEY, CONN_ADMIN),
    spec(Id::Client, Conn, "client|pause", -3, SUB_ADMIN, NOKEY, CONN_ADMIN),
    spec(Id::Client, Conn, "client|reply", 3, SUB_CONN, NOKEY, CONN_SLOW),
    spec(Id::Client, Conn, "client|setname", 3, SUB_CONN, NOKEY, CONN_SLOW),
    spec(Id::Client, Conn, "client|trackinginfo", 2, SUB_CONN, NOKEY, CONN_SLOW),
    spec(Id::Client, Conn, "client|unpause", 2, SUB_ADMIN, NOKEY, CONN_ADMIN),
    spec(Id::Cluster, Admin, "cluster|countkeysinslot", 3, &["stale"], NOKEY, &["@slow"]),
    spec(Id::Cluster, Admin, "cluster|getkeysinslot", 4, &["stale"], NOKEY, &["@slow"]),
    spec(Id::Cluster, Admin, "cluster|help", 2, LOADING_STALE, NOKEY, &["@slow"]),
    spec(Id::Cluster, Admin, "cluster|info", 2, &["stale"], NOKEY, &["@slow"]),
    spec(Id::Cluster, Admin, "cluster|keyslot", 3, &["stale"], NOKEY, &["@slow"]),
    spec(Id::Cluster, Admin, "cluster|myid", 2, &["stale"], NOKEY, &["@slow"]),
    spec(Id::Cluster, Admin, "cluster|nodes", 2, &["stale"], NOKEY, &["@slow"]),
    spec(Id::Cluster, Admin, "cluster|shards", 2, &["stale"], NOKEY, &["@slow"]),
    spec(Id::Cluster, Admin, "cluster|slots", 2, &["stale"], NOKEY, &["@slow"]),
    spec(Id::Command, Admin, "command|count", 2, LOADING_STALE, NOKEY, CONN_SLOW),
    spec(Id::Command, Admin, "command|docs", -2, LOADING_STALE, NOKEY, CONN_SLOW),
    spec(Id::Command, Admin, "command|getkeys", -4, LOADING_STALE, NOKEY, CONN_SLOW),
    spec(Id::Command, Admin, "command|getkeysandflags", -4, LOADING_STALE, NOKEY, CONN_SLOW),
    spec(Id::Command, Admin, "command|help", 2, LOADING_STALE, NOKEY, CONN_SLOW),
    spec(Id::Command, Admin, "command|info", -2, LOADING_STALE, NOKEY, CONN_SLOW),
    spec(Id::Command, Admin, "command|list", -2, LOADING_STALE, NOKEY, CONN_SLOW),
    spec(Id::Config, Admin, "config|get", -3, SUB_ADMIN, NOKEY, &["@admin", "@dangerous", "@slow"]),
    spec(Id::Config, Admin, "config|help", 2, LOADING_STALE, NOKEY, &["@slow"]),
    spec(Id::Config, Admin, "config|resetstat", 2, SUB_ADMIN, NOKEY, &["@admin", "@dangerous", "@slow"]),
    spec(Id::Config, Admin, "config|rewrite", 2, SUB_ADMIN, NOKEY, &["@admin", "@dangerous", "@slow"]),
    spec(Id::Config, Admin, "config|set", -4, SUB_ADMIN, NOKEY, &["@admin", "@dangerous", "@slow"]),
    spec(Id::Object, Read, "object|encoding", 3, &["readonly"], (2, 2, 1), &["@keyspace", "@read", "@slow"]),
    spec(Id::Object, Read, "object|freq", 3, &["readonly"], (2, 2, 1), &["@keyspace", "@read", "@slow"]),
    spec(Id::Object, Read, "object|help", 2, LOADING_STALE, NOKEY, &["@keyspace", "@slow"]),
    spec(Id::Object, Read, "object|idletime", 3, &["readonly"], (2, 2, 1), &["@keyspace", "@read", "@slow"]),
    spec(Id::Object, Read, "object|refcount", 3, &["readonly"], (2, 2, 1), &["@keyspace", "@read", "@slow"]),
    spec(Id::Function, Admin, "function|flush", -2, &["noscript", "write"], NOKEY, &["@scripting", "@write", "@slow"]),
    spec(Id::Function, Admin, "function|list", -2, &["noscript"], NOKEY, &["@scripting", "@slow"]),
    spec(Id::Slowlog, Admin, "slowlog|get", -2, &["admin", "loading", "stale"], NOKEY, &["@admin", "@dangerous", "@slow"]),
    spec(Id::Slowlog, Admin, "slowlog|help", 2, LOADING_STALE, NOKEY, &["@slow"]),
    spec(Id::Slowlog, Admin, "slowlog|len", 2, &["admin", "loading", "stale"], NOKEY, &["@admin", "@dangerous", "@slow"]),
    spec(Id::Slowlog, Admin, "slowlog|reset", 2, &["admin", "loading", "stale"], NOKEY, &["@admin", "@dangerous", "@slow"]),
    spec(Id::Latency, Admin, "latency|doctor", 2, SUB_ADMIN, NOKEY, &["@admin", "@dangerous", "@slow"]),
    spec(Id::Latency, Admin, "latency|help", 2, LOADING_STALE, NOKEY, &["@slow"]),
    spec(Id::Latency, Admin, "latency|histogram", -2, SUB_ADMIN, NOKEY, &["@admin", "@dangerous", "@slow"]),
    spec(Id::Latency, Admin, "latency|history", 3, SUB_ADMIN, NOKEY, &["@admin", "@dangerous", "@slow"]),
    spec(Id::Latency, Admin, "latency|latest", 2, SUB_ADMIN, NOKEY, &["@admin", "@dangerous", "@slow"]),
    spec(Id::Memory, Read, "memory|help", 2, LOADING_STALE, NOKEY, &["@slow"]),
    spec(Id::Memory, Read, "memory|usage", -3, &["readonly"], (2, 2, 1), &["@read", "@slow"]),
    spec(Id::Pubsub, Conn, "pubsub|channels", -2, &["pubsub", "loading", "stale"], NOKEY, PUBSUB_SLOW),
    spec(Id::Pubsub, Conn, "pubsub|help", 2, LOADING_STALE, NOKEY, &["@slow"]),
    spec(Id::Pubsub, Conn, "pubsub|numpat", 2, &["pubsub", "loading", "stale"], NOKEY, PUBSUB_SLOW),
    spec(Id::Pubsub, Conn, "pubsub|numsub", -2, &["pubsub", "loading", "stale"], NOKEY, PUBSUB_SLOW),
    spec(Id::Pubsub, Conn, "pubsub|shardchannels", -2, &["pubsub", "loading", "stale"], NOKEY, PUBSUB_SLOW),
    spec(Id::Pubsub, Conn, "pubsub|shardnumsub", -2, &["pubsub", "loading", "stale"], NOKEY, PUBSUB_SLOW),
    spec(Id::Latency, Admin, "latency|reset", -2, SUB_ADMIN, NOKEY, &["@admin", "@dangerous", "@slow"]),
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

    /// What its reply is reserved before anyone has computed it (a value
    /// [`VALUE_RESERVE_BYTES`], a larger one is counted once it exists; an
    /// `MGET` reply at most [`REPLY_BYTES_MAX`]).
    pub fn reply_bytes_max(&self) -> usize {
        let value = VALUE_RESERVE_BYTES + SMALL_REPLY_BYTES_MAX;
        match self.spec.id {
            Id::Get | Id::Getset | Id::Getdel | Id::Getex | Id::Getrange | Id::Substr => value,
            // A field's value; a whole hash is counted once it exists.
            Id::Hget | Id::Hincrbyfloat | Id::Hgetall | Id::Hvals | Id::Hkeys | Id::Hrandfield | Id::Hscan => value,
            Id::Hmget => (self.args.len() - 2).saturating_mul(value).min(REPLY_BYTES_MAX + value),
            // The string, or at most one range per byte of the shorter string,
            // which the table's bound keeps below LCS_TABLE_BYTES_MAX^(1/2).
            Id::Lcs => value + LCS_RANGE_REPLY_BYTES * (LCS_TABLE_BYTES_MAX / 4).isqrt(),
            Id::Set if self.args[3..].iter().any(|a| a.eq_ignore_ascii_case(b"GET")) => value,
            Id::Mget => (self.args.len() - 1).saturating_mul(value).min(REPLY_BYTES_MAX + value),
            _ => SMALL_REPLY_BYTES_MAX,
        }
    }
}

impl Id {
    /// A container command, named with its subcommand (`client|list`) in
    /// `CLIENT LIST`'s `cmd=`.
    pub fn has_subcommands(self) -> bool {
        matches!(
            self,
            Id::Client
                | Id::Config
                | Id::Cluster
                | Id::Command
                | Id::Object
                | Id::Function
                | Id::Slowlog
                | Id::Latency
                | Id::Memory
                | Id::Acl
                | Id::Pubsub
        )
    }
}

/// The position of `spec` in [`SPECS`] (per-command counters are indexed by it).
pub fn spec_index(spec: &'static Spec) -> usize {
    let at = (spec as *const Spec as usize).wrapping_sub(SPECS.as_ptr() as usize) / size_of::<Spec>();
    assert!(at < SPECS.len() && std::ptr::eq(&SPECS[at], spec), "a spec outside the table");
    at
}

/// Look a command up by name, case-insensitively.
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Look a subcommand up by its full name (`config|get`), case-insensitively.
pub fn lookup_sub(name: &[u8]) -> Option<&'static Spec> {
    SUBCOMMANDS.iter().find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

/// The subcommands of a container command.
pub fn subcommands_of(id: Id) -> impl Iterator<Item = &'static Spec> {
    SUBCOMMANDS.iter().filter(move |s| s.id == id)
}

/// Redis's key-spec flags of a command's key number `i` (from 0), for
/// `COMMAND GETKEYSANDFLAGS` and the key specs of `COMMAND INFO`: how the
/// command uses the key (RO read, RW read-write, OW overwrite, RM remove)
/// and what it does to it. `args` (the whole command) decides SET's, as
/// Redis's own `setGetKeys` does: with GET it reads the old value.
pub fn key_flags(spec: &Spec, i: usize, args: &[Bytes]) -> &'static [&'static str] {
    const RO_ACCESS: &[&str] = &["RO", "access"];
    const RW_ACCESS_UPDATE: &[&str] = &["RW", "access", "update"];
    const RW_ACCESS_DELETE: &[&str] = &["RW", "access", "delete"];
    const RW_UPDATE: &[&str] = &["RW", "update"];
    const OW_UPDATE: &[&str] = &["OW", "update"];
    const OW_INSERT: &[&str] = &["OW", "insert"];
    match spec.id {
        Id::Get | Id::Mget | Id::Ttl | Id::Pttl | Id::Getrange | Id::Substr | Id::Getbit | Id::Bitcount | Id::Bitpos => RO_ACCESS,
        Id::Expiretime | Id::Pexpiretime | Id::BitfieldRo | Id::Lcs => RO_ACCESS,
        Id::Exists | Id::Strlen | Id::Type | Id::Touch | Id::Watch | Id::Object | Id::Memory => &["RO"],
        Id::Set if args.get(3..).unwrap_or(&[]).iter().any(|a| a.eq_ignore_ascii_case(b"GET")) => RW_ACCESS_UPDATE,
        Id::Set | Id::Mset | Id::Setex | Id::Psetex => OW_UPDATE,
        Id::Del | Id::Unlink => &["RM", "delete"],
        Id::Incr | Id::IncrBy | Id::Decr | Id::DecrBy | Id::IncrByFloat | Id::Getset | Id::Getex | Id::Setbit | Id::Bitfield => {
            RW_ACCESS_UPDATE
        }
        Id::Append => &["RW", "insert"],
        Id::Expire | Id::Pexpire | Id::Expireat | Id::Pexpireat | Id::Persist | Id::Setrange => RW_UPDATE,
        Id::Setnx | Id::Msetnx => OW_INSERT,
        Id::Getdel => RW_ACCESS_DELETE,
        Id::Rename | Id::Renamenx if i == 0 => RW_ACCESS_DELETE,
        Id::Rename => OW_UPDATE,
        Id::Renamenx => OW_INSERT,
        Id::Copy if i == 0 => RO_ACCESS,
        Id::Copy => OW_UPDATE,
        Id::Bitop if i == 0 => OW_UPDATE,
        Id::Bitop => RO_ACCESS,
        Id::Hset | Id::Hmset | Id::Hsetnx => &["RW", "update", "insert"],
        Id::Hincrby | Id::Hincrbyfloat => RW_ACCESS_UPDATE,
        Id::Hdel => &["RW", "delete"],
        Id::Hexists | Id::Hlen | Id::Hstrlen => &["RO"],
        Id::Hget | Id::Hmget | Id::Hgetall | Id::Hkeys | Id::Hvals | Id::Hrandfield | Id::Hscan => RO_ACCESS,
        _ => &[],
    }
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

/// The `COMMAND` entry of a spec (10 elements, as Redis 7 sends): its key
/// specs (one per run of keys with the same flags) and, for a container,
/// its subcommands' entries.
pub fn command_entry(s: &Spec) -> Reply {
    let set = |v: &[&str]| Reply::Array(v.iter().map(|f| Reply::Simple((*f).to_owned())).collect());
    let key_spec = |index: i64, lastkey: i64, keystep: i64, flags: &[&str]| {
        Reply::Map(vec![
            (Reply::bulk("flags"), set(flags)),
            (
                Reply::bulk("begin_search"),
                Reply::Map(vec![
                    (Reply::bulk("type"), Reply::bulk("index")),
                    (Reply::bulk("spec"), Reply::Map(vec![(Reply::bulk("index"), Reply::Int(index))])),
                ]),
            ),
            (
                Reply::bulk("find_keys"),
                Reply::Map(vec![
                    (Reply::bulk("type"), Reply::bulk("range")),
                    (
                        Reply::bulk("spec"),
                        Reply::Map(vec![
                            (Reply::bulk("lastkey"), Reply::Int(lastkey)),
                            (Reply::bulk("keystep"), Reply::Int(keystep)),
                            (Reply::bulk("limit"), Reply::Int(0)),
                        ]),
                    ),
                ]),
            ),
        ])
    };
    let key_specs = if s.first_key <= 0 {
        vec![]
    } else {
        let last = if s.last_key < 0 { s.last_key } else { s.last_key - s.first_key };
        let (first, rest) = (key_flags(s, 0, &[]), key_flags(s, 1, &[]));
        if first == rest || last == 0 {
            vec![key_spec(s.first_key, last, s.step, first)]
        } else {
            // The first key apart (RENAME's source, BITOP's destination).
            let rest_last = if s.last_key < 0 { s.last_key } else { s.last_key - s.first_key - s.step };
            vec![key_spec(s.first_key, 0, 1, first), key_spec(s.first_key + s.step, rest_last, s.step, rest)]
        }
    };
    let subs: Vec<Reply> = subcommands_of(s.id).filter(|_| !s.name.contains('|')).map(command_entry).collect();
    Reply::Array(vec![
        Reply::bulk(s.name),
        Reply::Int(s.arity),
        set(s.flags),
        Reply::Int(s.first_key),
        Reply::Int(s.last_key),
        Reply::Int(s.step),
        set(s.categories),
        Reply::Array(vec![]),
        Reply::Array(key_specs),
        Reply::Array(subs),
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Value {
    /// Shared, so a value passes from the request to the log and to later
    /// commands of the batch without being copied.
    pub data: Bytes,
    /// Unix ms; 0 = no expiry.
    pub expire_at_ms: u64,
}

/// Reads the partition's published state.
pub trait Published {
    /// The value of `key`, counted as an access (`OBJECT IDLETIME`).
    fn get(&self, key: &[u8], now_ms: u64) -> Option<Value>;
    /// The value, not counted as an access (TYPE, TTL, EXISTS, OBJECT: as
    /// Redis's `LOOKUP_NOTOUCH`).
    fn peek(&self, key: &[u8], now_ms: u64) -> Option<Value> {
        self.get(key, now_ms)
    }
    /// Whether `key` exists and its expiry, without reading its value (a
    /// SET without GET must not read 100 MB it is about to replace).
    fn expiry(&self, key: &[u8], now_ms: u64) -> Option<u64> {
        self.peek(key, now_ms).map(|v| v.expire_at_ms)
    }
    /// Count an access to `key` without reading it (TOUCH); whether it exists.
    fn touch(&self, key: &[u8], now_ms: u64) -> bool {
        self.peek(key, now_ms).is_some()
    }
    /// Seconds since `key` was last accessed, where that is tracked (the
    /// owner's index; not a standby's).
    fn idle_secs(&self, _key: &[u8], _now_ms: u64) -> Option<u64> {
        None
    }
    /// What `key` costs (`MEMORY USAGE`): its index entry and its record
    /// on the log, where the value is (in the volume's page cache).
    fn usage(&self, key: &[u8], now_ms: u64) -> Option<u64> {
        self.peek(key, now_ms).map(|v| (ENTRY_BYTES + key.len() + v.data.len()) as u64)
    }
    /// What `key` holds, if it is live (not counted as an access).
    fn kind(&self, key: &[u8], now_ms: u64) -> Option<Type> {
        self.expiry(key, now_ms).map(|_| Type::String)
    }
    /// Whether the index has any version of `key`, expired included.
    fn holds(&self, _key: &[u8]) -> bool {
        false
    }
    /// The value of `field` of the live hash at `key` (an access to the key).
    fn field(&self, _key: &[u8], _field: &[u8], _now_ms: u64) -> Option<Bytes> {
        None
    }
    /// Whether the live hash at `key` has `field`, without reading it.
    fn has_field(&self, key: &[u8], field: &[u8], now_ms: u64) -> bool {
        self.field(key, field, now_ms).is_some()
    }
    /// Fields of the live hash at `key`.
    fn field_count(&self, _key: &[u8], _now_ms: u64) -> usize {
        0
    }
    /// Every field of the live hash at `key`, with its value if `values`
    /// (else an empty one: nothing read from the log).
    fn fields(&self, _key: &[u8], _now_ms: u64, _values: bool) -> Vec<(Vec<u8>, Bytes)> {
        Vec::new()
    }
}

/// What a key's entry in the index costs, besides its bytes (the entry and
/// the map's slot; [`sharedisk_storage::index::INLINE_KEY_BYTES`] of key inline).
pub const ENTRY_BYTES: usize = size_of::<sharedisk_storage::Entry>() + size_of::<sharedisk_storage::index::StoredKey>();

/// What a key holds, as `TYPE` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    String,
    Hash,
}

impl Type {
    pub fn name(self) -> &'static str {
        match self {
            Type::String => "string",
            Type::Hash => "hash",
        }
    }
}

/// A key's state in one layer of staged writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Staged {
    /// A string put here.
    Str(Value),
    /// Deleted here.
    Gone,
    /// Fields of a hash changed here.
    Hash(HashDelta),
}

/// The changes one layer made to a hash, and the hash as they leave it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HashDelta {
    /// The hash was created here: nothing underneath shows through.
    fresh: bool,
    /// Fields set (`Some`) or removed (`None`) here.
    fields: HashMap<Vec<u8>, Option<Bytes>>,
    /// Fields the hash has with these changes.
    len: usize,
    /// Its expiry with these changes (unix ms, 0 = never).
    expire_at_ms: u64,
}

impl HashDelta {
    fn live(&self, now_ms: u64) -> bool {
        self.len > 0 && (self.expire_at_ms == 0 || self.expire_at_ms > now_ms)
    }
}

/// What one layer says of a key.
enum Layer<'a> {
    /// Nothing: look underneath.
    Below,
    Str(&'a Value),
    Gone,
    Hash(&'a HashDelta),
}

/// Writes staged ahead of the command being run, by key; and whether the
/// partition was cleared (FLUSHALL) before them, so that what is published
/// reads as absent.
#[derive(Debug, Default)]
pub struct Overlay {
    writes: HashMap<Vec<u8>, Staged>,
    cleared: bool,
}

impl Overlay {
    pub fn new() -> Overlay {
        Overlay::default()
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && !self.cleared
    }

    fn layer(&self, key: &[u8]) -> Layer<'_> {
        match self.writes.get(key) {
            Some(Staged::Str(v)) => Layer::Str(v),
            Some(Staged::Gone) => Layer::Gone,
            Some(Staged::Hash(d)) => Layer::Hash(d),
            None if self.cleared => Layer::Gone,
            None => Layer::Below,
        }
    }

    pub fn insert(&mut self, key: Vec<u8>, value: Option<Value>) {
        self.writes.insert(key, value.map_or(Staged::Gone, Staged::Str));
    }

    /// Every key of the partition deleted (a staged clear).
    pub fn clear_all(&mut self) {
        self.writes.clear();
        self.cleared = true;
    }

    /// Layer `later` (writes staged after these) on top: a hash changed
    /// there, not created, keeps the fields changed here.
    pub fn extend(&mut self, later: Overlay) {
        if later.cleared {
            self.clear_all();
        }
        for (key, state) in later.writes {
            match (state, self.writes.get_mut(&key)) {
                (Staged::Hash(d), Some(Staged::Hash(mine))) if !d.fresh => {
                    mine.fields.extend(d.fields);
                    mine.len = d.len;
                    mine.expire_at_ms = d.expire_at_ms;
                }
                (state, _) => {
                    self.writes.insert(key, state);
                }
            }
        }
    }

    /// Every key with what this layer staged for it, and whether a clear
    /// came first (tests apply a layer to a model).
    #[cfg(test)]
    pub(crate) fn into_parts(self) -> (bool, HashMap<Vec<u8>, Staged>) {
        (self.cleared, self.writes)
    }
}

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
        Txn { published, staged, own: Overlay::new(), ops: Vec::new(), now_ms }
    }

    /// The topmost staged layer's word on `key`.
    fn top(&self, key: &[u8]) -> Layer<'_> {
        match self.own.layer(key) {
            Layer::Below => self.staged.layer(key),
            l => l,
        }
    }

    fn live(&self, v: &Value) -> bool {
        v.expire_at_ms == 0 || v.expire_at_ms > self.now_ms
    }

    /// The string at `key` (None for a key of another type), counted as an access.
    pub fn get(&self, key: &[u8]) -> Option<Value> {
        match self.top(key) {
            Layer::Str(v) if self.live(v) => Some(v.clone()),
            Layer::Below => self.published.get(key, self.now_ms),
            _ => None,
        }
    }

    /// [`Txn::get`] not counted as an access.
    pub fn peek(&self, key: &[u8]) -> Option<Value> {
        match self.top(key) {
            Layer::Str(v) if self.live(v) => Some(v.clone()),
            Layer::Below => self.published.peek(key, self.now_ms),
            _ => None,
        }
    }

    /// What `key` holds, if it exists.
    pub fn kind(&self, key: &[u8]) -> Option<Type> {
        match self.top(key) {
            Layer::Str(v) => self.live(v).then_some(Type::String),
            Layer::Hash(d) => d.live(self.now_ms).then_some(Type::Hash),
            Layer::Gone => None,
            Layer::Below => self.published.kind(key, self.now_ms),
        }
    }

    /// Whether `key` exists, whatever it holds.
    pub fn exists(&self, key: &[u8]) -> bool {
        self.kind(key).is_some()
    }

    /// Whether `key` exists and its expiry, of any type, without reading it.
    pub(crate) fn expiry(&self, key: &[u8]) -> Option<u64> {
        match self.top(key) {
            Layer::Str(v) => self.live(v).then_some(v.expire_at_ms),
            Layer::Hash(d) => d.live(self.now_ms).then_some(d.expire_at_ms),
            Layer::Gone => None,
            Layer::Below => self.published.expiry(key, self.now_ms),
        }
    }

    /// Count an access to `key` (TOUCH); whether it exists. A version
    /// staged here is stamped when it is published.
    fn touch(&self, key: &[u8]) -> bool {
        match self.top(key) {
            Layer::Below => self.published.touch(key, self.now_ms),
            _ => self.exists(key),
        }
    }

    /// `MEMORY USAGE` of `key` (a version staged here: as it will be).
    fn usage(&self, key: &[u8]) -> Option<u64> {
        match self.top(key) {
            Layer::Str(v) if self.live(v) => Some((ENTRY_BYTES + key.len() + v.data.len()) as u64),
            Layer::Hash(d) if d.live(self.now_ms) => {
                let fields = self.hash_entries(key, true);
                Some(ENTRY_BYTES as u64 + key.len() as u64 + fields.iter().map(|(f, v)| field_usage(key, f, v.len())).sum::<u64>())
            }
            Layer::Below => self.published.usage(key, self.now_ms),
            _ => None,
        }
    }

    /// Seconds since `key` was last accessed (0 for a version staged here).
    fn idle_secs(&self, key: &[u8]) -> Option<u64> {
        match self.top(key) {
            Layer::Below => self.published.idle_secs(key, self.now_ms),
            _ => Some(0),
        }
    }

    /// The layers' changes to the hash at `key`, topmost first, down to the
    /// one that created it; and whether the published hash shows through.
    fn hash_layers(&self, key: &[u8]) -> (Vec<&HashDelta>, bool) {
        let mut deltas = Vec::with_capacity(2);
        for layer in [self.own.layer(key), self.staged.layer(key)] {
            match layer {
                Layer::Below => continue,
                Layer::Hash(d) => {
                    deltas.push(d);
                    if d.fresh {
                        return (deltas, false);
                    }
                }
                Layer::Str(_) | Layer::Gone => return (deltas, false),
            }
        }
        (deltas, true)
    }

    /// The value of `field` of the hash at `key` (None: no such hash or
    /// field; the caller checked the key's type), counted as an access.
    pub(crate) fn field(&self, key: &[u8], field: &[u8]) -> Option<Bytes> {
        if self.kind(key) != Some(Type::Hash) {
            return None;
        }
        let (deltas, published) = self.hash_layers(key);
        for d in deltas {
            if let Some(v) = d.fields.get(field) {
                return v.clone();
            }
        }
        if published { self.published.field(key, field, self.now_ms) } else { None }
    }

    /// Whether the hash at `key` has `field`, without reading its value.
    pub(crate) fn has_field(&self, key: &[u8], field: &[u8]) -> bool {
        if self.kind(key) != Some(Type::Hash) {
            return false;
        }
        let (deltas, published) = self.hash_layers(key);
        for d in deltas {
            if let Some(v) = d.fields.get(field) {
                return v.is_some();
            }
        }
        published && self.published.has_field(key, field, self.now_ms)
    }

    /// Fields of the hash at `key` (0 if there is none).
    pub(crate) fn field_count(&self, key: &[u8]) -> usize {
        match self.top(key) {
            Layer::Hash(d) if d.live(self.now_ms) => d.len,
            Layer::Below if self.published.kind(key, self.now_ms) == Some(Type::Hash) => self.published.field_count(key, self.now_ms),
            _ => 0,
        }
    }

    /// Every field of the hash at `key`, with its value if `values` (else
    /// an empty one): the published ones in their order, then those added
    /// since.
    pub(crate) fn hash_entries(&self, key: &[u8], values: bool) -> Vec<(Vec<u8>, Bytes)> {
        if self.kind(key) != Some(Type::Hash) {
            return Vec::new();
        }
        let (deltas, published) = self.hash_layers(key);
        let mut out = if published { self.published.fields(key, self.now_ms, values) } else { Vec::new() };
        if deltas.is_empty() {
            return out;
        }
        let mut at: HashMap<Vec<u8>, usize> = out.iter().enumerate().map(|(i, (f, _))| (f.clone(), i)).collect();
        let mut removed = false;
        for d in deltas.into_iter().rev() {
            for (f, v) in &d.fields {
                let v = v.as_ref().map(|v| if values { v.clone() } else { Bytes::new() });
                match (at.get(f), v) {
                    (Some(&i), Some(v)) => out[i].1 = v,
                    (Some(_), None) => {
                        at.remove(f);
                        removed = true;
                    }
                    (None, Some(v)) => {
                        at.insert(f.clone(), out.len());
                        out.push((f.clone(), v));
                    }
                    (None, None) => {}
                }
            }
        }
        if removed {
            let keep: std::collections::HashSet<usize> = at.values().copied().collect();
            out = out.into_iter().enumerate().filter(|(i, _)| keep.contains(i)).map(|(_, e)| e).collect();
        }
        out
    }

    /// This request's own layer for the hash at `key`, made if need be: over
    /// a live hash underneath, its changes; else a new hash, preceded by a
    /// delete of whatever an expired version left.
    fn own_hash(&mut self, key: &[u8]) -> &mut HashDelta {
        if !matches!(self.own.layer(key), Layer::Hash(_)) {
            let delta = if self.kind(key) == Some(Type::Hash) {
                let expire_at_ms = self.expiry(key).unwrap_or(0);
                HashDelta { fresh: false, fields: HashMap::new(), len: self.field_count(key), expire_at_ms }
            } else {
                let leftover = match self.top(key) {
                    Layer::Gone => false,
                    Layer::Below => self.published.holds(key),
                    Layer::Str(_) | Layer::Hash(_) => true,
                };
                if leftover {
                    self.ops.push(Op::Del { key: key.to_vec() });
                }
                HashDelta { fresh: true, ..HashDelta::default() }
            };
            self.own.writes.insert(key.to_vec(), Staged::Hash(delta));
        }
        match self.own.writes.get_mut(key) {
            Some(Staged::Hash(d)) => d,
            _ => unreachable!("just staged a hash for the key"),
        }
    }

    /// Set `field` of the hash at `key` (the caller checked its type);
    /// whether the field is new.
    pub(crate) fn set_field(&mut self, key: &[u8], field: &[u8], value: Bytes) -> bool {
        let new = !self.has_field(key, field);
        let d = self.own_hash(key);
        d.fields.insert(field.to_vec(), Some(value.clone()));
        d.len += usize::from(new);
        self.ops.push(Op::FieldPut { key: key.to_vec(), field: field.to_vec(), value });
        new
    }

    /// Remove `field` from the hash at `key`; whether it was there. The
    /// last field's removal deletes the key, as in Redis.
    pub(crate) fn del_field(&mut self, key: &[u8], field: &[u8]) -> bool {
        if !self.has_field(key, field) {
            return false;
        }
        let d = self.own_hash(key);
        d.fields.insert(field.to_vec(), None);
        d.len -= 1;
        if d.len == 0 {
            self.del(key);
        } else {
            self.ops.push(Op::FieldDel { key: key.to_vec(), field: field.to_vec() });
        }
        true
    }

    /// Set the expiry of the key, whatever it holds (it exists; an expiry
    /// in the past is the caller's delete): a string is written again with
    /// it, a hash gets an expire record.
    pub(crate) fn set_expiry(&mut self, key: &[u8], expire_at_ms: u64) {
        match self.kind(key) {
            Some(Type::Hash) => {
                self.own_hash(key).expire_at_ms = expire_at_ms;
                self.ops.push(Op::Expire { key: key.to_vec(), expire_at_ms });
            }
            _ => {
                if let Some(v) = self.get(key) {
                    self.put(key, v.data, expire_at_ms);
                }
            }
        }
    }

    pub(crate) fn put(&mut self, key: &[u8], data: impl Into<Bytes>, expire_at_ms: u64) {
        let data = data.into();
        self.ops.push(Op::Put { key: key.to_vec(), value: data.clone(), expire_at_ms });
        self.own.insert(key.to_vec(), Some(Value { data, expire_at_ms }));
    }

    pub(crate) fn del(&mut self, key: &[u8]) {
        self.ops.push(Op::Del { key: key.to_vec() });
        self.own.insert(key.to_vec(), None);
    }

    /// Delete every key of the partition (FLUSHALL): one record.
    pub fn clear(&mut self) {
        self.ops.push(Op::Clear);
        self.own.clear_all();
    }

    /// The request's writes: its overlay, and the operations to append.
    /// Within one batch only a key's (or a field's) last write can ever be
    /// seen (the batch is published whole or not at all), so earlier writes
    /// it supersedes, and everything before a clear, are dropped: `MSET k v
    /// k v ...` of 10,000 pairs is one record, not 10,000. A write of the
    /// whole key (a put, a delete) supersedes every earlier write of it;
    /// a field's, the field's; an expire, the key's earlier expires.
    pub fn into_writes(self) -> (Overlay, Vec<Op>) {
        let mut ops = self.ops;
        if ops.len() > 1 {
            let mut whole = std::collections::HashSet::new();
            let mut fields = std::collections::HashSet::new();
            let mut expires = std::collections::HashSet::new();
            let mut kept = Vec::with_capacity(ops.len());
            for op in ops.into_iter().rev() {
                let keep = match &op {
                    Op::Clear => {
                        kept.push(op);
                        break;
                    }
                    Op::FieldPut { key, field, .. } | Op::FieldDel { key, field } => {
                        !whole.contains(key) && fields.insert((key.clone(), field.clone()))
                    }
                    Op::Expire { key, .. } => !whole.contains(key) && expires.insert(key.clone()),
                    _ => whole.insert(op.key().to_vec()),
                };
                if keep {
                    kept.push(op);
                }
            }
            kept.reverse();
            ops = kept;
        }
        (self.own, ops)
    }
}

/// What one field costs in memory (`MEMORY USAGE`): its entry and name in
/// the index, and its record on the log.
fn field_usage(key: &[u8], field: &[u8], value_len: usize) -> u64 {
    let record = sharedisk_storage::layout::record_bytes(key.len(), 4 + field.len() + value_len);
    (sharedisk_storage::index::FIELD_ENTRY_BYTES + field.len() + record) as u64
}

/// Run one data command.
pub fn execute<P: Published>(t: &mut Txn<'_, P>, cmd: &Command) -> Reply {
    let now = t.now_ms;
    let args = &cmd.args[..];
    if on_strings_only(cmd).any(|k| t.kind(k).is_some_and(|k| k != Type::String)) {
        return Reply::error(WRONGTYPE);
    }
    if cmd.spec.categories.contains(&"@hash") {
        return crate::hashes::execute(t, cmd);
    }
    match cmd.spec.id {
        Id::Get => t.get(&args[1]).map_or(Reply::Null, |v| Reply::bulk(v.data)),
        Id::Set => set(t, args),
        Id::Del | Id::Unlink => {
            let mut n = 0;
            for k in &args[1..] {
                if t.exists(k) {
                    t.del(k);
                    n += 1;
                }
            }
            Reply::Int(n)
        }
        Id::Exists => Reply::Int(args[1..].iter().filter(|k| t.exists(k)).count() as i64),
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
            let (mut data, exp) = t.get(&args[1]).map_or((Vec::new(), 0), |v| (Vec::from(v.data), v.expire_at_ms));
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
        Id::Expire => expire(t, "expire", 1000, false, args),
        Id::Pexpire => expire(t, "pexpire", 1, false, args),
        Id::Ttl | Id::Pttl => match t.expiry(&args[1]) {
            None => Reply::Int(-2),
            Some(0) => Reply::Int(-1),
            Some(at) => {
                let ms = at.saturating_sub(now) as i64;
                Reply::Int(if cmd.spec.id == Id::Ttl { (ms + 500) / 1000 } else { ms })
            }
        },
        Id::Persist => match t.expiry(&args[1]) {
            Some(at) if at != 0 => {
                t.set_expiry(&args[1], 0);
                Reply::Int(1)
            }
            _ => Reply::Int(0),
        },
        Id::Setnx => match t.exists(&args[1]) {
            true => Reply::Int(0),
            false => {
                t.put(&args[1], args[2].to_vec(), 0);
                Reply::Int(1)
            }
        },
        Id::Setex | Id::Psetex => {
            let (name, unit) = if cmd.spec.id == Id::Setex { ("setex", 1000) } else { ("psetex", 1) };
            let Some(n) = parse_i64(&args[2]) else { return Reply::error(NOT_INT) };
            match deadline(now, n, unit) {
                Some(at) if n > 0 => {
                    t.put(&args[1], args[3].to_vec(), at as u64);
                    Reply::ok()
                }
                _ => Reply::error(format!("ERR invalid expire time in '{name}' command")),
            }
        }
        Id::Getset => {
            let old = t.get(&args[1]);
            t.put(&args[1], args[2].to_vec(), 0);
            old.map_or(Reply::Null, |v| Reply::bulk(v.data))
        }
        Id::Getdel => match t.get(&args[1]) {
            Some(v) => {
                t.del(&args[1]);
                Reply::bulk(v.data)
            }
            None => Reply::Null,
        },
        Id::Getex => getex(t, args),
        Id::Msetnx => {
            if args.len().is_multiple_of(2) {
                return wrong_args("msetnx");
            }
            if args[1..].chunks(2).any(|kv| t.exists(&kv[0])) {
                return Reply::Int(0);
            }
            for kv in args[1..].chunks(2) {
                t.put(&kv[0], kv[1].to_vec(), 0);
            }
            Reply::Int(1)
        }
        Id::IncrByFloat => incr_by_float(t, &args[1], &args[2]),
        Id::Getrange | Id::Substr => {
            let (Some(start), Some(end)) = (parse_i64(&args[2]), parse_i64(&args[3])) else { return Reply::error(NOT_INT) };
            let data = t.get(&args[1]).map_or(Vec::new(), |v| Vec::from(v.data));
            match byte_range(data.len(), start, end) {
                Some(r) => Reply::bulk(data[r].to_vec()),
                None => Reply::bulk(Vec::new()),
            }
        }
        Id::Setrange => setrange(t, args),
        Id::Setbit => setbit(t, args),
        Id::Getbit => {
            let Some(bit) = parse_i64(&args[2]).filter(|b| (0..=BIT_OFFSET_MAX).contains(b)) else {
                return Reply::error("ERR bit offset is not an integer or out of range");
            };
            let data = t.get(&args[1]).map_or(Vec::new(), |v| Vec::from(v.data));
            let byte = data.get((bit / 8) as usize).copied().unwrap_or(0);
            Reply::Int(i64::from(byte >> (7 - bit % 8) & 1))
        }
        Id::Bitcount => bitcount(t, args),
        Id::Bitpos => bitpos(t, args),
        Id::Type => Reply::Simple(t.kind(&args[1]).map_or("none", Type::name).to_owned()),
        Id::Touch => Reply::Int(args[1..].iter().filter(|k| t.touch(k)).count() as i64),
        Id::Expireat => expire(t, "expireat", 1000, true, args),
        Id::Pexpireat => expire(t, "pexpireat", 1, true, args),
        Id::Expiretime | Id::Pexpiretime => match t.expiry(&args[1]) {
            None => Reply::Int(-2),
            Some(0) => Reply::Int(-1),
            Some(at) => Reply::Int(if cmd.spec.id == Id::Expiretime { at / 1000 } else { at } as i64),
        },
        Id::Rename | Id::Renamenx => {
            if !t.exists(&args[1]) {
                return Reply::error("ERR no such key");
            }
            let nx = cmd.spec.id == Id::Renamenx;
            if args[1] == args[2] {
                return if nx { Reply::Int(0) } else { Reply::ok() };
            }
            if nx && t.exists(&args[2]) {
                return Reply::Int(0);
            }
            copy_key(t, &args[1], &args[2]);
            t.del(&args[1]);
            if nx { Reply::Int(1) } else { Reply::ok() }
        }
        Id::Copy => copy(t, args),
        Id::Lcs => lcs(t, args),
        Id::Bitop => bitop(t, args),
        Id::Bitfield => bitfield(t, args, false),
        Id::BitfieldRo => bitfield(t, args, true),
        Id::Object => object(t, args),
        Id::Memory => memory(t, args),
        _ => Reply::error(format!("ERR command '{}' is not a data command", cmd.spec.name)),
    }
}

/// The largest bit offset `SETBIT`/`GETBIT` take: the last bit of the largest value.
const BIT_OFFSET_MAX: i64 = VALUE_BYTES_MAX as i64 * 8 - 1;
const TOO_BIG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";

/// Redis's inclusive `start..=end` with negative indices from the end,
/// clamped to a string of `len` bytes (GETRANGE, BITCOUNT, BITPOS);
/// `None` for an empty range.
fn byte_range(len: usize, start: i64, end: i64) -> Option<std::ops::Range<usize>> {
    let len = len as i64;
    if (start < 0 && end < 0 && start > end) || len == 0 {
        return None;
    }
    let start = if start < 0 { (len + start).max(0) } else { start };
    let end = if end < 0 { (len + end).max(0) } else { end.min(len - 1) };
    (start <= end).then(|| start as usize..end as usize + 1)
}

/// The deadline (unix ms) of an `EX|PX|EXAT|PXAT n` option of SET or GETEX
/// (`opt` upper-cased), or the error Redis gives for it.
fn expiry_option(opt: &[u8], n: &[u8], now_ms: u64, command: &str) -> Result<i64, Reply> {
    let Some(n) = parse_i64(n) else { return Err(Reply::error(NOT_INT)) };
    let at = match opt {
        b"EX" => deadline(now_ms, n, 1000),
        b"PX" => deadline(now_ms, n, 1),
        b"EXAT" => n.checked_mul(1000),
        _ => Some(n),
    };
    match at {
        Some(at) if n > 0 => Ok(at),
        _ => Err(Reply::error(format!("ERR invalid expire time in '{command}' command"))),
    }
}

fn getex<P: Published>(t: &mut Txn<'_, P>, args: &[Bytes]) -> Reply {
    // None: leave the expiry; Some(0): PERSIST; Some(at): a new deadline.
    let mut change: Option<u64> = None;
    let mut i = 2;
    while i < args.len() {
        let opt = args[i].to_ascii_uppercase();
        match opt.as_slice() {
            b"PERSIST" if change.is_none() => change = Some(0),
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if change.is_none() && i + 1 < args.len() => {
                match expiry_option(&opt, &args[i + 1], t.now_ms, "getex") {
                    Ok(at) => change = Some(at as u64),
                    Err(e) => return e,
                }
                i += 1;
            }
            _ => return Reply::error(SYNTAX),
        }
        i += 1;
    }
    let Some(v) = t.get(&args[1]) else { return Reply::Null };
    match change {
        Some(at) if at != 0 && at <= t.now_ms => t.del(&args[1]),
        Some(at) if at != v.expire_at_ms => t.put(&args[1], v.data.clone(), at),
        _ => {}
    }
    Reply::bulk(v.data)
}

/// A float as Redis reads one for INCRBYFLOAT: the whole string, no spaces, finite.
pub(crate) fn parse_f64(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| !f.is_nan())
}

/// A float as Redis prints one after INCRBYFLOAT: no exponent, no trailing
/// zeros (Rust's shortest round-trip form is that for every finite f64).
pub(crate) fn format_f64(f: f64) -> String {
    if f == 0.0 { "0".to_owned() } else { format!("{f}") }
}

fn incr_by_float<P: Published>(t: &mut Txn<'_, P>, key: &[u8], by: &[u8]) -> Reply {
    const NOT_FLOAT: &str = "ERR value is not a valid float";
    let Some(by) = parse_f64(by) else { return Reply::error(NOT_FLOAT) };
    let (cur, exp) = match t.get(key) {
        None => (0.0, 0),
        Some(v) => match parse_f64(&v.data) {
            Some(f) => (f, v.expire_at_ms),
            None => return Reply::error(NOT_FLOAT),
        },
    };
    let n = cur + by;
    if !n.is_finite() {
        return Reply::error("ERR increment would produce NaN or Infinity");
    }
    let text = format_f64(n);
    t.put(key, text.clone().into_bytes(), exp);
    Reply::bulk(text)
}

fn setrange<P: Published>(t: &mut Txn<'_, P>, args: &[Bytes]) -> Reply {
    let Some(offset) = parse_i64(&args[2]) else { return Reply::error(NOT_INT) };
    if offset < 0 {
        return Reply::error("ERR offset is out of range");
    }
    let value = &args[3];
    let old = t.get(&args[1]);
    if value.is_empty() {
        // Nothing to write: no key is created, none is changed.
        return Reply::Int(old.map_or(0, |v| v.data.len() as i64));
    }
    let end = offset as usize + value.len();
    if end > VALUE_BYTES_MAX {
        return Reply::error(TOO_BIG);
    }
    let (mut data, exp) = old.map_or((Vec::new(), 0), |v| (Vec::from(v.data), v.expire_at_ms));
    if data.len() < end {
        data.resize(end, 0);
    }
    data[offset as usize..end].copy_from_slice(value);
    let len = data.len() as i64;
    t.put(&args[1], data, exp);
    Reply::Int(len)
}

fn setbit<P: Published>(t: &mut Txn<'_, P>, args: &[Bytes]) -> Reply {
    let Some(bit) = parse_i64(&args[2]).filter(|b| (0..=BIT_OFFSET_MAX).contains(b)) else {
        return Reply::error("ERR bit offset is not an integer or out of range");
    };
    let on = match args[3].as_ref() {
        b"0" => false,
        b"1" => true,
        _ => return Reply::error("ERR bit is not an integer or out of range"),
    };
    let (mut data, exp) = t.get(&args[1]).map_or((Vec::new(), 0), |v| (Vec::from(v.data), v.expire_at_ms));
    let (byte, mask) = ((bit / 8) as usize, 0x80u8 >> (bit % 8));
    if data.len() <= byte {
        data.resize(byte + 1, 0);
    }
    let was = data[byte] & mask != 0;
    if on {
        data[byte] |= mask
    } else {
        data[byte] &= !mask
    }
    t.put(&args[1], data, exp);
    Reply::Int(i64::from(was))
}

/// The `start end [BYTE|BIT]` arguments of BITCOUNT and BITPOS, from
/// `args[at..]`: a range in bytes or bits, and whether it is in bits.
/// `Ok(None)` when there are none.
fn bit_range(args: &[Bytes], at: usize, need_end: bool) -> Result<Option<(i64, Option<i64>, bool)>, Reply> {
    let Some(start) = args.get(at) else { return Ok(None) };
    let Some(start) = parse_i64(start) else { return Err(Reply::error(NOT_INT)) };
    let end = match args.get(at + 1) {
        Some(e) => Some(parse_i64(e).ok_or_else(|| Reply::error(NOT_INT))?),
        None if need_end => return Err(Reply::error(SYNTAX)),
        None => None,
    };
    let bits = match args.get(at + 2).map(|u| u.to_ascii_uppercase()) {
        None => false,
        Some(u) if u == b"BIT" => true,
        Some(u) if u == b"BYTE" => false,
        Some(_) => return Err(Reply::error(SYNTAX)),
    };
    if args.len() > at + 3 {
        return Err(Reply::error(SYNTAX));
    }
    Ok(Some((start, end, bits)))
}

fn bit_at(data: &[u8], bit: usize) -> bool {
    data[bit / 8] & (0x80 >> (bit % 8)) != 0
}

fn bitcount<P: Published>(t: &mut Txn<'_, P>, args: &[Bytes]) -> Reply {
    let range = match bit_range(args, 2, true) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let data = t.get(&args[1]).map_or(Vec::new(), |v| Vec::from(v.data));
    let n = match range {
        None => data.iter().map(|b| b.count_ones() as usize).sum(),
        Some((start, end, false)) => {
            byte_range(data.len(), start, end.unwrap_or(-1)).map_or(0, |r| data[r].iter().map(|b| b.count_ones() as usize).sum())
        }
        Some((start, end, true)) => {
            byte_range(data.len() * 8, start, end.unwrap_or(-1)).map_or(0, |r| r.filter(|&i| bit_at(&data, i)).count())
        }
    };
    Reply::Int(n as i64)
}

fn bitpos<P: Published>(t: &mut Txn<'_, P>, args: &[Bytes]) -> Reply {
    let want = match args[2].as_ref() {
        b"0" => false,
        b"1" => true,
        _ => return Reply::error("ERR The bit argument must be 1 or 0."),
    };
    let range = match bit_range(args, 3, false) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let Some(v) = t.get(&args[1]) else { return Reply::Int(if want { -1 } else { 0 }) };
    let data = v.data;
    let (start, end, bits) = range.map_or((0, None, false), |(s, e, b)| (s, e, b));
    let unit = if bits { 1 } else { 8 };
    let Some(r) = byte_range(data.len() * 8 / unit, start, end.unwrap_or(-1)) else { return Reply::Int(-1) };
    let (from, to) = (r.start * unit, r.end * unit);
    match (from..to).find(|&i| bit_at(&data, i) == want) {
        Some(i) => Reply::Int(i as i64),
        // Looking for a clear bit with no end given: the string is taken as
        // padded with zeros on the right, so the first one is past its end.
        None if !want && end.is_none() => Reply::Int(to as i64),
        None => Reply::Int(-1),
    }
}

/// `BITOP AND|OR|XOR|NOT dest src…`: missing sources are zeros, the result
/// as long as the longest source; an empty result deletes `dest`.
fn bitop<P: Published>(t: &mut Txn<'_, P>, args: &[Bytes]) -> Reply {
    let op = args[1].to_ascii_uppercase();
    if !matches!(op.as_slice(), b"AND" | b"OR" | b"XOR" | b"NOT") {
        return Reply::error(SYNTAX);
    }
    if op == b"NOT" && args.len() != 4 {
        return Reply::error("ERR BITOP NOT must be called with a single source key.");
    }
    let sources: Vec<Vec<u8>> = args[3..].iter().map(|k| t.get(k).map_or(Vec::new(), |v| Vec::from(v.data))).collect();
    let len = sources.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = vec![0u8; len];
    for (i, byte) in out.iter_mut().enumerate() {
        let at = |s: &Vec<u8>| s.get(i).copied().unwrap_or(0);
        *byte = match op.as_slice() {
            b"NOT" => !at(&sources[0]),
            b"AND" => sources.iter().map(at).fold(0xff, |a, b| a & b),
            b"OR" => sources.iter().map(at).fold(0, |a, b| a | b),
            _ => sources.iter().map(at).fold(0, |a, b| a ^ b),
        };
    }
    if out.is_empty() {
        if t.get(&args[2]).is_some() {
            t.del(&args[2]);
        }
    } else {
        t.put(&args[2], out, 0);
    }
    Reply::Int(len as i64)
}

/// One operation of `BITFIELD`: its field (signed?, bits, bit offset) and what it does.
#[derive(Clone, Copy, Debug)]
enum FieldOp {
    Get,
    Set(i64),
    Incrby(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overflow {
    Wrap,
    Sat,
    Fail,
}

/// The value of `bits` bits at bit `offset` of `data` (bit 0 is the most
/// significant of byte 0; past the end reads as zeros).
fn get_bits(data: &[u8], offset: u64, bits: u32) -> u64 {
    (0..u64::from(bits)).fold(0u64, |v, i| {
        let at = offset + i;
        let bit = data.get((at / 8) as usize).map_or(0, |b| (b >> (7 - at % 8)) & 1);
        (v << 1) | u64::from(bit)
    })
}

fn set_bits(data: &mut Vec<u8>, offset: u64, bits: u32, value: u64) {
    let end = (offset + u64::from(bits)).div_ceil(8) as usize;
    if data.len() < end {
        data.resize(end, 0);
    }
    for i in 0..u64::from(bits) {
        let at = offset + i;
        let bit = (value >> (u64::from(bits) - 1 - i)) & 1;
        let mask = 1u8 << (7 - at % 8);
        let byte = &mut data[(at / 8) as usize];
        *byte = if bit == 1 { *byte | mask } else { *byte & !mask };
    }
}

/// `value + incr` in a field of `bits` bits (signed or not), under Redis's
/// overflow rules: None if it overflows under FAIL.
fn field_add(signed: bool, bits: u32, value: i128, incr: i128, overflow: Overflow) -> Option<i128> {
    let (min, max) = if signed { (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1) } else { (0, (1i128 << bits) - 1) };
    let sum = value + incr;
    if (min..=max).contains(&sum) {
        return Some(sum);
    }
    match overflow {
        Overflow::Fail => None,
        Overflow::Sat => Some(if sum > max { max } else { min }),
        Overflow::Wrap => {
            let m = sum.rem_euclid(1i128 << bits);
            Some(if signed && m > max { m - (1i128 << bits) } else { m })
        }
    }
}

/// `BITFIELD key [GET type offset] [SET type offset value] [INCRBY type
/// offset increment] [OVERFLOW WRAP|SAT|FAIL] ...` and `BITFIELD_RO key
/// [GET type offset] ...`, as Redis: every operation parsed before any runs;
/// types `i1`..`i64`, `u1`..`u63`; offsets in bits or `#N` fields.
fn bitfield<P: Published>(t: &mut Txn<'_, P>, args: &[Bytes], read_only: bool) -> Reply {
    let mut ops = Vec::new();
    let mut overflow = Overflow::Wrap;
    let mut i = 2;
    while i < args.len() {
        let sub = args[i].to_ascii_uppercase();
        if sub == b"OVERFLOW" && !read_only {
            let Some(kind) = args.get(i + 1) else { return Reply::error(SYNTAX) };
            overflow = match kind.to_ascii_uppercase().as_slice() {
                b"WRAP" => Overflow::Wrap,
                b"SAT" => Overflow::Sat,
                b"FAIL" => Overflow::Fail,
                _ => return Reply::error("ERR Invalid OVERFLOW type specified"),
            };
            i += 2;
            continue;
        }
        let arity = match sub.as_slice() {
            b"GET" => 3,
            b"SET" | b"INCRBY" if !read_only => 4,
            b"SET" | b"INCRBY" => return Reply::error("ERR BITFIELD_RO only supports the GET subcommand"),
            _ => return Reply::error(SYNTAX),
        };
        if i + arity > args.len() {
            return Reply::error(SYNTAX);
        }
        let ty = &args[i + 1];
        let signed = ty.first().is_some_and(|c| *c == b'i' || *c == b'I');
        let bits = match (ty.first().map(u8::to_ascii_lowercase), parse_i64(&ty[1.min(ty.len())..])) {
            (Some(b'i'), Some(n)) if (1..=64).contains(&n) => n as u32,
            (Some(b'u'), Some(n)) if (1..=63).contains(&n) => n as u32,
            _ => return Reply::error("ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is."),
        };
        let raw = &args[i + 2];
        let offset = match raw.strip_prefix(b"#") {
            Some(n) => parse_i64(n).and_then(|n| n.checked_mul(i64::from(bits))),
            None => parse_i64(raw),
        };
        let Some(offset) = offset.filter(|o| *o >= 0 && (*o as u64 + u64::from(bits)).div_ceil(8) <= VALUE_BYTES_MAX as u64) else {
            return Reply::error("ERR bit offset is not an integer or out of range");
        };
        let op = match sub.as_slice() {
            b"GET" => FieldOp::Get,
            _ => {
                let Some(v) = parse_i64(&args[i + 3]) else { return Reply::error(NOT_INT) };
                if sub == b"SET" { FieldOp::Set(v) } else { FieldOp::Incrby(v) }
            }
        };
        ops.push((signed, bits, offset as u64, op, overflow));
        i += arity;
    }
    let writes = ops.iter().any(|(.., op, _)| !matches!(op, FieldOp::Get));
    let current = t.get(&args[1]);
    let expire = current.as_ref().map_or(0, |v| v.expire_at_ms);
    let mut data = current.map_or_else(Vec::new, |v| Vec::from(v.data));
    let mut changed = false;
    let read = |data: &[u8], signed: bool, bits: u32, offset: u64| -> i128 {
        let raw = get_bits(data, offset, bits);
        if signed && bits < 64 && raw >> (bits - 1) == 1 {
            raw as i128 - (1i128 << bits)
        } else if signed {
            raw as i64 as i128
        } else {
            raw as i128
        }
    };
    let mut replies = Vec::with_capacity(ops.len());
    for (signed, bits, offset, op, overflow) in ops {
        let old = read(&data, signed, bits, offset);
        let new = match op {
            FieldOp::Get => {
                replies.push(Reply::Int(old as i64));
                continue;
            }
            // SET checks its value as an increment from zero, as Redis does.
            FieldOp::Set(v) => field_add(signed, bits, 0, if signed { i128::from(v) } else { i128::from(v as u64) }, overflow),
            FieldOp::Incrby(by) => field_add(signed, bits, old, i128::from(by), overflow),
        };
        let Some(new) = new else {
            replies.push(Reply::Null);
            continue;
        };
        set_bits(&mut data, offset, bits, new as u64 & (u64::MAX >> (64 - bits)));
        changed = true;
        replies.push(Reply::Int(if matches!(op, FieldOp::Set(_)) { old as i64 } else { new as i64 }));
    }
    if writes && changed {
        t.put(&args[1], data, expire);
    }
    Reply::Array(replies)
}

const OBJECT_HELP: &[&str] = &[
    "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "ENCODING <key>",
    "    Return the kind of internal representation used in order to store the value associated with a <key>.",
    "FREQ <key>",
    "    Not tracked by sharedisk (no LFU eviction).",
    "IDLETIME <key>",
    "    Return the idle time of the <key>, that is the approximated number of seconds elapsed since the last access to the key.",
    "REFCOUNT <key>",
    "    Return the number of references of the value associated with the specified <key>: always 1.",
];

/// `OBJECT ENCODING|FREQ|IDLETIME|REFCOUNT|HELP key`, where meaningful: a
/// value is bytes, so its encoding is what Redis would pick for those bytes
/// when written (`int`, `embstr`, `raw`); the idle time counts from the
/// key's last access on this server (a claim or takeover counts as one);
/// access frequencies are not tracked (no LFU policy), and say so as Redis
/// does.
fn object<P: Published>(t: &mut Txn<'_, P>, args: &[Bytes]) -> Reply {
    let sub = args[1].to_ascii_lowercase();
    if sub == b"help" {
        return Reply::Array(OBJECT_HELP.iter().map(|l| Reply::Simple((*l).to_owned())).collect());
    }
    if args.len() != 3 || !matches!(sub.as_slice(), b"encoding" | b"freq" | b"idletime" | b"refcount") {
        return Reply::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try OBJECT HELP.",
            String::from_utf8_lossy(&args[1])
        ));
    }
    let Some(kind) = t.kind(&args[2]) else { return Reply::Null };
    let v = if kind == Type::String { t.peek(&args[2]).unwrap_or_default() } else { Value::default() };
    match sub.as_slice() {
        // A hash is a table of fields whatever its size.
        b"encoding" if kind == Type::Hash => Reply::bulk("hashtable"),
        b"encoding" => Reply::bulk(if v.data.len() <= 20 && parse_i64(&v.data).is_some() {
            "int"
        } else if v.data.len() <= 44 {
            "embstr"
        } else {
            "raw"
        }),
        b"refcount" => Reply::Int(1),
        b"freq" => Reply::error(
            "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust.",
        ),
        _ => match t.idle_secs(&args[2]) {
            Some(secs) => Reply::Int(secs as i64),
            None => Reply::error("ERR OBJECT IDLETIME is answered by the key's owner only (a standby does not track access times)"),
        },
    }
}

/// `MEMORY USAGE key [SAMPLES count]` (the bytes `key` costs: its entry in
/// the index, and its record with the value on the volume, which the page
/// cache holds; a value is one string, so SAMPLES changes nothing) and
/// `MEMORY HELP`.
fn memory<P: Published>(t: &mut Txn<'_, P>, args: &[Bytes]) -> Reply {
    let sub = args[1].to_ascii_lowercase();
    match sub.as_slice() {
        // (Only inside MULTI does a keyless MEMORY reach a partition.)
        b"usage" if args.len() < 3 => wrong_args("memory|usage"),
        b"help" => keyless(&Command { spec: lookup(b"memory").expect("in the table"), args: args.to_vec() }).expect("MEMORY HELP"),
        b"usage" => {
            match &args[3..] {
                [] => {}
                [samples, n] if samples.eq_ignore_ascii_case(b"samples") => {
                    if parse_i64(n).is_none_or(|n| n < 0) {
                        return Reply::error(NOT_INT);
                    }
                }
                _ => return Reply::error(SYNTAX),
            }
            t.usage(&args[2]).map_or(Reply::Null, |b| Reply::Int(b as i64))
        }
        _ => Reply::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try MEMORY HELP.",
            String::from_utf8_lossy(&args[1])
        )),
    }
}

/// The reply of a keyed container's subcommand that names no key
/// (`OBJECT HELP`, `MEMORY HELP`): answered without a partition.
pub fn keyless(cmd: &Command) -> Option<Reply> {
    let help = |lines: &[&str]| Some(Reply::Array(lines.iter().map(|l| Reply::Simple((*l).to_owned())).collect()));
    match (cmd.id(), cmd.args.get(1).map(|a| a.to_ascii_lowercase()).as_deref()) {
        (Id::Object, Some(b"help")) => help(OBJECT_HELP),
        (Id::Memory, Some(b"help")) => help(&[
            "MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "USAGE <key> [SAMPLES <count>]",
            "    Return the bytes <key> costs: its entry in the index and its record (the value) on the volume.",
            "HELP",
            "    Print this help.",
        ]),
        _ => None,
    }
}

/// The most transient memory the LCS table may take (Redis's bound is
/// proto-max-bulk-len; ours is smaller, the table is built on the
/// connection's task).
const LCS_TABLE_BYTES_MAX: usize = 16 << 20;
/// What one `IDX` match takes at most, encoded.
const LCS_RANGE_REPLY_BYTES: usize = 128;

/// `LCS a b [LEN] [IDX] [MINMATCHLEN n] [WITHMATCHLEN]`, Redis's dynamic
/// programme and its walk back, reply for reply.
fn lcs<P: Published>(t: &mut Txn<'_, P>, args: &[Bytes]) -> Reply {
    let (mut len_only, mut idx, mut with_len, mut min_len) = (false, false, false, 0i64);
    let mut j = 3;
    while j < args.len() {
        let opt = args[j].to_ascii_uppercase();
        match opt.as_slice() {
            b"IDX" => idx = true,
            b"LEN" => len_only = true,
            b"WITHMATCHLEN" => with_len = true,
            b"MINMATCHLEN" if j + 1 < args.len() => {
                let Some(n) = parse_i64(&args[j + 1]) else { return Reply::error(NOT_INT) };
                min_len = n.max(0);
                j += 1;
            }
            _ => return Reply::error(SYNTAX),
        }
        j += 1;
    }
    if len_only && idx {
        return Reply::error("ERR If you want both the length and indexes, please just use IDX.");
    }
    let a = t.get(&args[1]).map_or(Vec::new(), |v| Vec::from(v.data));
    let b = t.get(&args[2]).map_or(Vec::new(), |v| Vec::from(v.data));
    let (alen, blen) = (a.len(), b.len());
    let cells = (alen + 1).saturating_mul(blen + 1);
    if cells.saturating_mul(4) > LCS_TABLE_BYTES_MAX {
        return Reply::error("ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len");
    }
    let w = blen + 1;
    let mut table = vec![0u32; cells];
    for i in 1..=alen {
        for j in 1..=blen {
            table[i * w + j] =
                if a[i - 1] == b[j - 1] { table[(i - 1) * w + j - 1] + 1 } else { table[(i - 1) * w + j].max(table[i * w + j - 1]) };
        }
    }
    let total = table[alen * w + blen];
    if len_only {
        return Reply::Int(i64::from(total));
    }
    let mut result = vec![0u8; total as usize];
    let mut matches = Vec::new();
    let mut k = total as usize;
    // `None`: no range open; else (a_start, a_end, b_start, b_end).
    let mut range: Option<(usize, usize, usize, usize)> = None;
    let (mut i, mut j) = (alen, blen);
    while i > 0 && j > 0 {
        let mut emit = false;
        if a[i - 1] == b[j - 1] {
            result[k - 1] = a[i - 1];
            match &mut range {
                None => range = Some((i - 1, i - 1, j - 1, j - 1)),
                Some((a0, _, b0, _)) if *a0 == i && *b0 == j => {
                    *a0 -= 1;
                    *b0 -= 1;
                }
                Some(_) => emit = true,
            }
            if range.is_some_and(|(a0, _, b0, _)| a0 == 0 || b0 == 0) {
                emit = true;
            }
            k -= 1;
            i -= 1;
            j -= 1;
        } else {
            if table[(i - 1) * w + j] > table[i * w + j - 1] {
                i -= 1;
            } else {
                j -= 1;
            }
            emit |= range.is_some();
        }
        if emit && let Some((a0, a1, b0, b1)) = range.take() {
            let n = (a1 - a0 + 1) as i64;
            if idx && (min_len == 0 || n >= min_len) {
                let pair = |x: usize, y: usize| Reply::Array(vec![Reply::Int(x as i64), Reply::Int(y as i64)]);
                let mut m = vec![pair(a0, a1), pair(b0, b1)];
                if with_len {
                    m.push(Reply::Int(n));
                }
                matches.push(Reply::Array(m));
            }
        }
    }
    if idx {
        Reply::Map(vec![(Reply::bulk("matches"), Reply::Array(matches)), (Reply::bulk("len"), Reply::Int(i64::from(total)))])
    } else {
        Reply::bulk(result)
    }
}

fn copy<P: Published>(t: &mut Txn<'_, P>, args: &[Bytes]) -> Reply {
    let mut replace = false;
    let mut i = 3;
    while i < args.len() {
        match args[i].to_ascii_uppercase().as_slice() {
            b"REPLACE" => replace = true,
            // Redis parses the number before it refuses another database.
            b"DB" if i + 1 < args.len() => match parse_i64(&args[i + 1]) {
                None => return Reply::error(NOT_INT),
                Some(0) => i += 1,
                Some(db) if db < 0 => return Reply::error("ERR DB index is out of range"),
                Some(_) => return Reply::error("ERR Copying to another database is not allowed in cluster mode"),
            },
            _ => return Reply::error(SYNTAX),
        }
        i += 1;
    }
    if args[1] == args[2] {
        return Reply::error("ERR source and destination objects are the same");
    }
    if !t.exists(&args[1]) || (!replace && t.exists(&args[2])) {
        return Reply::Int(0);
    }
    copy_key(t, &args[1], &args[2]);
    Reply::Int(1)
}

/// Write what `from` holds (it exists) to `to`, replacing what `to` held,
/// expiry included (RENAME, COPY): a hash is written field by field.
fn copy_key<P: Published>(t: &mut Txn<'_, P>, from: &[u8], to: &[u8]) {
    let expire_at_ms = t.expiry(from).unwrap_or(0);
    if t.kind(from) != Some(Type::Hash) {
        if let Some(v) = t.get(from) {
            t.put(to, v.data, expire_at_ms);
        }
        return;
    }
    let fields = t.hash_entries(from, true);
    if t.exists(to) {
        t.del(to);
    }
    for (f, v) in fields {
        t.set_field(to, &f, v);
    }
    if expire_at_ms != 0 {
        t.set_expiry(to, expire_at_ms);
    }
}

/// The keys a command reads or writes as strings (a key of another type
/// there is `WRONGTYPE`): every key of a string command, except those that
/// replace whatever the key holds, count it, or only look at its keyspace
/// entry.
fn on_strings_only(cmd: &Command) -> impl Iterator<Item = &Bytes> {
    let args = &cmd.args[..];
    let keys: &[Bytes] = match cmd.spec.id {
        Id::Get
        | Id::Incr
        | Id::IncrBy
        | Id::Decr
        | Id::DecrBy
        | Id::Append
        | Id::Strlen
        | Id::Getset
        | Id::Getdel
        | Id::Getex
        | Id::IncrByFloat
        | Id::Getrange
        | Id::Substr
        | Id::Setrange
        | Id::Setbit
        | Id::Getbit
        | Id::Bitcount
        | Id::Bitpos
        | Id::Bitfield
        | Id::BitfieldRo => &args[1..2],
        Id::Lcs => &args[1..3],
        Id::Bitop => args.get(3..).unwrap_or(&[]),
        Id::Set if args[3..].iter().any(|a| a.eq_ignore_ascii_case(b"GET")) => &args[1..2],
        _ => &[],
    };
    keys.iter()
}

pub(crate) const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// The values of `keys`, refused once more than one of them add up to
/// more than [`REPLY_BYTES_MAX`] (one key named a million times must not
/// make us build a million copies of its value; one value alone is always
/// answered, as GET answers it).
fn mget<P: Published>(t: &mut Txn<'_, P>, keys: &[Bytes]) -> Reply {
    let mut bytes = 0usize;
    let mut values = Vec::with_capacity(keys.len());
    for k in keys {
        let v = t.get(k).map_or(Reply::Null, |v| {
            bytes += v.data.len();
            Reply::bulk(v.data)
        });
        if bytes > REPLY_BYTES_MAX && !values.is_empty() {
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
                match expiry_option(&opt, next.map_or(&[][..], |b| b), t.now_ms, "set") {
                    Ok(at) => expire_at = Some(at),
                    Err(e) => return e,
                }
                i += 1;
            }
            _ => return Reply::error(SYNTAX),
        }
        i += 1;
    }
    // The old value is read only for GET; otherwise only whether it
    // exists and its expiry, from the index.
    let (old, old_expiry) = if get {
        let old = t.get(&args[1]);
        let expiry = old.as_ref().map(|v| v.expire_at_ms);
        (old, expiry)
    } else {
        (None, t.expiry(&args[1]))
    };
    let reply_old = || if get { old.clone().map_or(Reply::Null, |v| Reply::bulk(v.data)) } else { Reply::Null };
    if (nx && old_expiry.is_some()) || (xx && old_expiry.is_none()) {
        return reply_old();
    }
    let exp = match (expire_at, keepttl) {
        (Some(at), _) => at as u64,
        (None, true) => old_expiry.unwrap_or(0),
        (None, false) => 0,
    };
    if exp != 0 && exp <= t.now_ms {
        // An absolute deadline in the past: Redis sets and expires at once.
        if old_expiry.is_some() {
            t.del(&args[1]);
        }
    } else {
        t.put(&args[1], args[2].clone(), exp);
    }
    if get { reply_old() } else { Reply::ok() }
}

/// EXPIRE and PEXPIRE (`absolute` false: `args[2]` units from now) and
/// EXPIREAT and PEXPIREAT (`absolute`: a unix time in those units).
fn expire<P: Published>(t: &mut Txn<'_, P>, name: &str, unit_ms: i64, absolute: bool, args: &[Bytes]) -> Reply {
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
    let Some(at) = deadline(if absolute { 0 } else { t.now_ms }, n, unit_ms) else {
        return Reply::error(format!("ERR invalid expire time in '{name}' command"));
    };
    let Some(old) = t.expiry(&args[1]) else { return Reply::Int(0) };
    // No expiry counts as an infinite TTL for GT/LT.
    let cur = if old == 0 { i64::MAX } else { old as i64 };
    if (nx && old != 0) || (xx && old == 0) || (gt && at <= cur) || (lt && at >= cur) {
        return Reply::Int(0);
    }
    if at <= t.now_ms as i64 {
        t.del(&args[1]);
    } else {
        t.set_expiry(&args[1], at as u64);
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
        let (cleared, writes) = own.into_parts();
        if cleared {
            db.0.clear();
        }
        for (k, v) in writes {
            match v {
                Staged::Str(v) => db.0.insert(k, v),
                _ => db.0.remove(&k),
            };
        }
        r
    }
    /// SET reads the value it replaces only for its GET option: NX, XX and
    /// KEEPTTL need only whether the key exists and its expiry, which the
    /// index has (a SET over a 100 MB value must not read it back first).
    /// And the value it stores is the request's own bytes, not a copy.
    #[test]
    fn set_reads_the_old_value_only_for_get_and_stores_the_argument_itself() {
        struct Counting(Map, std::cell::Cell<u32>);
        impl Published for Counting {
            fn get(&self, key: &[u8], now_ms: u64) -> Option<Value> {
                self.1.set(self.1.get() + 1);
                self.0.get(key, now_ms)
            }
            fn expiry(&self, key: &[u8], now_ms: u64) -> Option<u64> {
                self.0.get(key, now_ms).map(|v| v.expire_at_ms)
            }
        }
        let mut db = Map::default();
        db.0.insert(b"k".to_vec(), Value { data: Bytes::from_static(b"old"), expire_at_ms: 5000 });
        let db = Counting(db, std::cell::Cell::new(0));
        let staged = Overlay::new();
        let value = Bytes::from(vec![b'v'; 1000]);
        for (opts, reply, stored_exp) in
            [(&["NX"][..], Reply::Null, None), (&["XX", "KEEPTTL"][..], Reply::ok(), Some(5000)), (&[][..], Reply::ok(), Some(0))]
        {
            let mut t = Txn::new(&db, &staged, 1000);
            let mut args = vec![Bytes::from_static(b"SET"), Bytes::from_static(b"k"), value.clone()];
            args.extend(opts.iter().map(|o| Bytes::copy_from_slice(o.as_bytes())));
            assert_eq!(execute(&mut t, &Command::parse(args).unwrap()), reply, "SET {opts:?}");
            let (_, ops) = t.into_writes();
            match (ops.as_slice(), stored_exp) {
                ([], None) => {}
                ([Op::Put { value: v, expire_at_ms, .. }], Some(exp)) => {
                    assert_eq!(*expire_at_ms, exp, "SET {opts:?}");
                    assert_eq!(v.as_ptr(), value.as_ptr(), "SET {opts:?} copied its value");
                }
                (ops, _) => panic!("SET {opts:?}: {ops:?}"),
            }
        }
        assert_eq!(db.1.get(), 0, "a SET without GET read the old value");
        let mut t = Txn::new(&db, &staged, 1000);
        let args = ["SET", "k", "new", "GET"].iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect();
        assert_eq!(execute(&mut t, &Command::parse(args).unwrap()), Reply::bulk("old"));
        assert_eq!(db.1.get(), 1);
    }

    /// A batch appends only each key's last write: the rest could never be seen.
    #[test]
    fn a_batch_appends_each_keys_last_write_only() {
        let db = Map::default();
        let staged = Overlay::new();
        let mut t = Txn::new(&db, &staged, 0);
        let mut line = "MSET".to_owned();
        for i in 0..10_000 {
            line.push_str(&format!(" k v{i}"));
        }
        line.push_str(" {k}2 v2 k last");
        let cmd = Command::parse(line.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()).unwrap();
        assert_eq!(execute(&mut t, &cmd), Reply::ok());
        let del = Command::parse(vec![Bytes::from_static(b"DEL"), Bytes::from_static(b"{k}2")]).unwrap();
        assert_eq!(execute(&mut t, &del), Reply::Int(1));
        let (own, ops) = t.into_writes();
        assert_eq!(
            ops,
            vec![Op::Put { key: b"k".to_vec(), value: b"last".to_vec().into(), expire_at_ms: 0 }, Op::Del { key: b"{k}2".to_vec() }]
        );
        assert_eq!(own.len(), 2);
    }

    fn b(s: &str) -> Reply {
        Reply::bulk(s.to_owned())
    }
    fn e(s: &str) -> Reply {
        Reply::error(s)
    }

    /// BITFIELD as Redis's own tests and docs give it, replies and all.
    #[test]
    fn bitfield_follows_redis() {
        let db = &mut Map::default();
        let ints = |v: &[i64]| Reply::Array(v.iter().map(|n| Reply::Int(*n)).collect());
        assert_eq!(run(db, 0, "BITFIELD bits SET u8 0 255"), ints(&[0]));
        assert_eq!(run(db, 0, "BITFIELD bits GET u8 0"), ints(&[255]));
        assert_eq!(run(db, 0, "BITFIELD bits GET i8 0"), ints(&[-1]));
        assert_eq!(run(db, 0, "BITFIELD bits SET u8 0 100 GET u8 0"), ints(&[255, 100]));
        assert_eq!(run(db, 0, "BITFIELD bits INCRBY u2 100 1 OVERFLOW SAT INCRBY u2 102 1"), ints(&[1, 1]));
        assert_eq!(run(db, 0, "BITFIELD bits INCRBY u2 100 1 OVERFLOW SAT INCRBY u2 102 1"), ints(&[2, 2]));
        assert_eq!(run(db, 0, "BITFIELD bits INCRBY u2 100 1 OVERFLOW SAT INCRBY u2 102 1"), ints(&[3, 3]));
        assert_eq!(run(db, 0, "BITFIELD bits INCRBY u2 100 1 OVERFLOW SAT INCRBY u2 102 1"), ints(&[0, 3]));
        assert_eq!(run(db, 0, "BITFIELD bits OVERFLOW FAIL INCRBY u2 102 1"), Reply::Array(vec![Reply::Null]));
        // Signed wrap and saturation.
        assert_eq!(run(db, 0, "BITFIELD s SET i8 0 127 INCRBY i8 0 1"), ints(&[0, -128]));
        assert_eq!(run(db, 0, "BITFIELD s OVERFLOW SAT INCRBY i8 0 -10"), ints(&[-128]));
        assert_eq!(run(db, 0, "BITFIELD s OVERFLOW WRAP INCRBY i8 0 -1"), ints(&[127]));
        assert_eq!(run(db, 0, "BITFIELD s SET i64 0 -1 GET i64 0 GET u63 1"), ints(&[0x7f << 56, -1, i64::MAX]));
        // #N offsets count fields; bits past the end read as zero; the value is big-endian bits.
        assert_eq!(run(db, 0, "BITFIELD f SET u8 #1 65 GET u8 8 GET u16 0"), ints(&[0, 65, 65]));
        assert_eq!(run(db, 0, "GET f"), Reply::bulk(vec![0, 65]));
        assert_eq!(run(db, 0, "BITFIELD f GET u4 1000"), ints(&[0]));
        assert_eq!(run(db, 0, "BITFIELD_RO f GET u8 8"), ints(&[65]));
        // Reads of a missing key create nothing.
        assert_eq!(run(db, 0, "BITFIELD none GET u8 0"), ints(&[0]));
        assert_eq!(run(db, 0, "EXISTS none"), Reply::Int(0));
        // Errors, before anything runs.
        assert_eq!(
            run(db, 0, "BITFIELD f SET u8 0 1 GET u64 0"),
            e("ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is.")
        );
        assert_eq!(run(db, 0, "GET f"), Reply::bulk(vec![0, 65]), "a refused BITFIELD ran part of itself");
        assert_eq!(
            run(db, 0, "BITFIELD f GET i0 0"),
            e("ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is.")
        );
        assert_eq!(run(db, 0, "BITFIELD f GET u8 -1"), e("ERR bit offset is not an integer or out of range"));
        assert_eq!(run(db, 0, "BITFIELD f SET u8 0 x"), e(NOT_INT));
        assert_eq!(run(db, 0, "BITFIELD f OVERFLOW NOPE"), e("ERR Invalid OVERFLOW type specified"));
        assert_eq!(run(db, 0, "BITFIELD f FOO u8 0"), e(SYNTAX));
        assert_eq!(run(db, 0, "BITFIELD f GET u8"), e(SYNTAX));
        assert_eq!(run(db, 0, "BITFIELD_RO f SET u8 0 1"), e("ERR BITFIELD_RO only supports the GET subcommand"));
        // Unsigned SET of a negative value wraps (as an increment from zero).
        assert_eq!(run(db, 0, "BITFIELD w SET u8 0 -1 GET u8 0"), ints(&[0, 255]));
        assert_eq!(run(db, 0, "BITFIELD w OVERFLOW SAT SET u8 0 300 GET u8 0"), ints(&[255, 255]));
    }

    #[test]
    fn bitop_and_object_follow_redis() {
        let db = &mut Map::default();
        run(db, 0, "MSET a abc b zz");
        assert_eq!(run(db, 0, "BITOP AND d a b"), Reply::Int(3));
        assert_eq!(run(db, 0, "GET d"), Reply::bulk(vec![b'a' & b'z', b'b' & b'z', 0]));
        assert_eq!(run(db, 0, "BITOP OR d a b missing"), Reply::Int(3));
        assert_eq!(run(db, 0, "GET d"), Reply::bulk(vec![b'a' | b'z', b'b' | b'z', b'c']));
        assert_eq!(run(db, 0, "BITOP XOR d a a"), Reply::Int(3));
        assert_eq!(run(db, 0, "GET d"), Reply::bulk(vec![0, 0, 0]));
        assert_eq!(run(db, 0, "BITOP NOT d b"), Reply::Int(2));
        assert_eq!(run(db, 0, "GET d"), Reply::bulk(vec![!b'z', !b'z']));
        assert_eq!(run(db, 0, "BITOP NOT d a b"), e("ERR BITOP NOT must be called with a single source key."));
        assert_eq!(run(db, 0, "BITOP NAND d a b"), e(SYNTAX));
        // Only missing sources: an empty result deletes the destination.
        assert_eq!(run(db, 0, "BITOP OR d x y"), Reply::Int(0));
        assert_eq!(run(db, 0, "EXISTS d"), Reply::Int(0));
        run(db, 0, &format!("MSET i 12345 s hello l {}", "x".repeat(45)));
        assert_eq!(run(db, 0, "OBJECT ENCODING i"), b("int"));
        assert_eq!(run(db, 0, "OBJECT ENCODING s"), b("embstr"));
        assert_eq!(run(db, 0, "OBJECT ENCODING l"), b("raw"));
        assert_eq!(run(db, 0, "OBJECT ENCODING nope"), Reply::Null);
        assert_eq!(run(db, 0, "OBJECT REFCOUNT s"), Reply::Int(1));
        assert!(matches!(run(db, 0, "OBJECT FREQ s"), Reply::Error(e) if e.contains("LFU")));
        assert!(matches!(run(db, 0, "OBJECT NOPE s"), Reply::Error(e) if e.contains("OBJECT HELP")));
        assert!(matches!(run(db, 0, "OBJECT HELP"), Reply::Array(_)));
    }

    #[test]
    fn lcs_matches_redis_reply_for_reply() {
        // The examples of Redis's own LCS documentation and test suite.
        let db = &mut Map::default();
        run(db, 0, "MSET a ohmytext b mynewtext");
        assert_eq!(run(db, 0, "LCS a b"), b("mytext"));
        assert_eq!(run(db, 0, "LCS a b LEN"), Reply::Int(6));
        assert_eq!(run(db, 0, "LCS a missing"), b(""));
        let pair = |x, y| Reply::Array(vec![Reply::Int(x), Reply::Int(y)]);
        let m = |a: (i64, i64), b: (i64, i64), n: Option<i64>| {
            let mut v = vec![pair(a.0, a.1), pair(b.0, b.1)];
            v.extend(n.map(Reply::Int));
            Reply::Array(v)
        };
        let idx = |matches: Vec<Reply>, len| Reply::Map(vec![(b("matches"), Reply::Array(matches)), (b("len"), Reply::Int(len))]);
        assert_eq!(run(db, 0, "LCS a b IDX"), idx(vec![m((4, 7), (5, 8), None), m((2, 3), (0, 1), None)], 6));
        assert_eq!(run(db, 0, "LCS a b IDX MINMATCHLEN 4 WITHMATCHLEN"), idx(vec![m((4, 7), (5, 8), Some(4))], 6));
        assert_eq!(run(db, 0, "LCS a b IDX LEN"), e("ERR If you want both the length and indexes, please just use IDX."));
        assert_eq!(run(db, 0, "LCS a b FOO"), e(SYNTAX));
        assert_eq!(run(db, 0, "LCS a b MINMATCHLEN x"), e(NOT_INT));
        let long = "x".repeat(3000);
        run(db, 0, &format!("MSET l1 {long} l2 {long}"));
        assert_eq!(run(db, 0, "LCS l1 l2 LEN"), e("ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len"));
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
        staged.insert(b"a".to_vec(), Some(Value { data: Bytes::from_static(b"5"), expire_at_ms: 0 }));
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
            // (WATCH names keys, and is a connection's command.)
            assert_eq!(s.kind.is_data() || s.id == Id::Watch, s.first_key > 0, "{}", s.name);
            if s.kind.is_data() {
                assert_eq!(s.kind == Kind::ReadData, s.flags.contains(&"readonly"), "{}", s.name);
                assert_eq!(s.kind == Kind::WriteData, s.flags.contains(&"write"), "{}", s.name);
            }
            assert_eq!(SPECS.iter().filter(|o| o.id == s.id).count(), 1, "{}", s.name);
            // (An id is the name in CamelCase: `BitfieldRo` is `bitfield_ro`.)
            assert_eq!(format!("{:?}", s.id).to_ascii_lowercase(), s.name.replace('_', ""), "the id names the command");
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
        // A value as large as a read reserves, asked for over and over.
        let value = "v".repeat(VALUE_RESERVE_BYTES);
        assert_eq!(run(db, 0, &format!("SET big {value}")), Reply::ok());
        let within = format!("MGET{}", " big".repeat(REPLY_BYTES_MAX / VALUE_RESERVE_BYTES));
        let Reply::Array(v) = run(db, 0, &within) else { panic!("MGET within the limit refused") };
        assert_eq!(v.len(), REPLY_BYTES_MAX / VALUE_RESERVE_BYTES);
        let over = format!("{within} big");
        assert_eq!(run(db, 0, &over), e(&format!("ERR MGET reply would exceed {REPLY_BYTES_MAX} bytes; ask for fewer keys")));
        // One value alone is answered whatever its size.
        let huge = "h".repeat(REPLY_BYTES_MAX + 1);
        assert_eq!(run(db, 0, &format!("SET huge {huge}")), Reply::ok());
        let Reply::Array(v) = run(db, 0, "MGET huge") else { panic!("MGET of one large value refused") };
        assert_eq!(v, vec![Reply::bulk(huge.into_bytes())]);
        assert!(matches!(run(db, 0, "MGET huge big"), Reply::Error(_)));
        // What a pipeline reserves for a reply not computed yet covers the real one,
        // and no more than the limit allows.
        let cmd = |s: &str| Command::parse(s.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()).unwrap();
        assert!(cmd(&within).reply_bytes_max() >= REPLY_BYTES_MAX);
        assert!(cmd(&over).reply_bytes_max() <= REPLY_BYTES_MAX + VALUE_RESERVE_BYTES + SMALL_REPLY_BYTES_MAX);
        assert!(cmd("GET k").reply_bytes_max() > VALUE_RESERVE_BYTES);
        assert!(cmd("SET k v get").reply_bytes_max() > VALUE_RESERVE_BYTES);
        assert_eq!(cmd("SET k v").reply_bytes_max(), SMALL_REPLY_BYTES_MAX);
        assert_eq!(cmd("INCR k").reply_bytes_max(), SMALL_REPLY_BYTES_MAX);
    }

    fn raw(db: &mut Map, key: &str, bytes: &[u8]) {
        db.0.insert(key.as_bytes().to_vec(), Value { data: Bytes::copy_from_slice(bytes), expire_at_ms: 0 });
    }
    fn stored(db: &Map, key: &str) -> Option<Vec<u8>> {
        db.0.get(key.as_bytes()).map(|v| v.data.to_vec())
    }

    /// The examples of Redis's own documentation of each command, reply for reply.
    #[test]
    fn string_commands_answer_as_redis_documents() {
        let db = &mut Map::default();
        let now = 1_000_000;
        assert_eq!(run(db, now, "SETNX k Hello"), Reply::Int(1));
        assert_eq!(run(db, now, "SETNX k World"), Reply::Int(0));
        assert_eq!(run(db, now, "GET k"), b("Hello"));

        assert_eq!(run(db, now, "SETEX k 10 Hello"), Reply::ok());
        assert_eq!(run(db, now, "TTL k"), Reply::Int(10));
        assert_eq!(run(db, now, "PSETEX k 1500 Hello"), Reply::ok());
        assert_eq!(run(db, now, "PTTL k"), Reply::Int(1500));
        assert_eq!(run(db, now, "SETEX k 0 v"), e("ERR invalid expire time in 'setex' command"));
        assert_eq!(run(db, now, "PSETEX k -1 v"), e("ERR invalid expire time in 'psetex' command"));
        assert_eq!(run(db, now, "SETEX k x v"), e(NOT_INT));
        assert_eq!(run(db, now, "SETEX k 9223372036854775807 v"), e("ERR invalid expire time in 'setex' command"));

        assert_eq!(run(db, now, "INCR counter"), Reply::Int(1));
        assert_eq!(run(db, now, "GETSET counter 0"), b("1"));
        assert_eq!(run(db, now, "GET counter"), b("0"));
        assert_eq!(run(db, now, "SET t v EX 100"), Reply::ok());
        assert_eq!(run(db, now, "GETSET t w"), b("v"));
        assert_eq!(run(db, now, "TTL t"), Reply::Int(-1), "GETSET clears the expiry");
        assert_eq!(run(db, now, "GETSET fresh x"), Reply::Null);

        assert_eq!(run(db, now, "GETDEL t"), b("w"));
        assert_eq!(run(db, now, "GET t"), Reply::Null);
        assert_eq!(run(db, now, "GETDEL t"), Reply::Null);

        assert_eq!(run(db, now, "SET g Hello"), Reply::ok());
        assert_eq!(run(db, now, "GETEX g"), b("Hello"));
        assert_eq!(run(db, now, "TTL g"), Reply::Int(-1));
        assert_eq!(run(db, now, "GETEX g EX 60"), b("Hello"));
        assert_eq!(run(db, now, "TTL g"), Reply::Int(60));
        assert_eq!(run(db, now, "GETEX g PERSIST"), b("Hello"));
        assert_eq!(run(db, now, "TTL g"), Reply::Int(-1));
        assert_eq!(run(db, now, "GETEX g PXAT 2000000"), b("Hello"));
        assert_eq!(run(db, now, "PTTL g"), Reply::Int(1_000_000));
        assert_eq!(run(db, now, "GETEX g EX 0"), e("ERR invalid expire time in 'getex' command"));
        assert_eq!(run(db, now, "GETEX g EX 10 PX 10"), e(SYNTAX));
        assert_eq!(run(db, now, "GETEX g FOO"), e(SYNTAX));
        assert_eq!(run(db, now, "GETEX g EX"), e(SYNTAX));
        assert_eq!(run(db, now, "GETEX nope EX 10"), Reply::Null);
        assert_eq!(run(db, now, "GETEX g EXAT 999"), b("Hello"), "a deadline in the past answers, then deletes");
        assert_eq!(run(db, now, "EXISTS g"), Reply::Int(0));

        assert_eq!(run(db, now, "MSETNX key1 Hello key2 there"), Reply::Int(1));
        assert_eq!(run(db, now, "MSETNX key2 new key3 world"), Reply::Int(0));
        assert_eq!(run(db, now, "MGET key1 key2 key3"), Reply::Array(vec![b("Hello"), b("there"), Reply::Null]));
        assert_eq!(run(db, now, "MSETNX a 1 b"), wrong_args("msetnx"));

        assert_eq!(run(db, now, "SET f 10.50"), Reply::ok());
        assert_eq!(run(db, now, "INCRBYFLOAT f 0.1"), b("10.6"));
        assert_eq!(run(db, now, "INCRBYFLOAT f -5"), b("5.6"));
        assert_eq!(run(db, now, "SET f 5.0e3"), Reply::ok());
        assert_eq!(run(db, now, "INCRBYFLOAT f 2.0e2"), b("5200"));
        assert_eq!(run(db, now, "GET f"), b("5200"));
        assert_eq!(run(db, now, "INCRBYFLOAT nf 3"), b("3"));
        assert_eq!(run(db, now, "INCRBYFLOAT nf -3"), b("0"));
        assert_eq!(run(db, now, "INCRBYFLOAT key1 1"), e("ERR value is not a valid float"));
        assert_eq!(run(db, now, "INCRBYFLOAT nf x"), e("ERR value is not a valid float"));
        assert_eq!(run(db, now, "INCRBYFLOAT nf +inf"), e("ERR increment would produce NaN or Infinity"));
        assert_eq!(run(db, now, "SET big 1.7e308"), Reply::ok());
        assert_eq!(run(db, now, "INCRBYFLOAT big 1.7e308"), e("ERR increment would produce NaN or Infinity"));
        assert_eq!(run(db, now, "GET big"), b("1.7e308"), "a refused increment changes nothing");

        assert_eq!(run(db, now, "SET s This_is_a_string"), Reply::ok());
        assert_eq!(run(db, now, "GETRANGE s 0 3"), b("This"));
        assert_eq!(run(db, now, "GETRANGE s -3 -1"), b("ing"));
        assert_eq!(run(db, now, "GETRANGE s 0 -1"), b("This_is_a_string"));
        assert_eq!(run(db, now, "GETRANGE s 10 100"), b("string"));
        assert_eq!(run(db, now, "SUBSTR s 5 6"), b("is"));
        assert_eq!(run(db, now, "GETRANGE s 5 3"), b(""));
        assert_eq!(run(db, now, "GETRANGE s -1 -5"), b(""));
        assert_eq!(run(db, now, "GETRANGE s -100 1"), b("Th"));
        assert_eq!(run(db, now, "GETRANGE nope 0 -1"), b(""));
        assert_eq!(run(db, now, "GETRANGE s a 1"), e(NOT_INT));

        assert_eq!(run(db, now, "SET r Hello_World"), Reply::ok());
        assert_eq!(run(db, now, "SETRANGE r 6 Redis"), Reply::Int(11));
        assert_eq!(run(db, now, "GET r"), b("Hello_Redis"));
        assert_eq!(run(db, now, "SETRANGE r2 6 Redis"), Reply::Int(11));
        assert_eq!(stored(db, "r2").unwrap(), b"\0\0\0\0\0\0Redis");
        assert_eq!(run(db, now, "SETRANGE r3 0 "), Reply::Int(0));
        assert_eq!(run(db, now, "EXISTS r3"), Reply::Int(0), "an empty SETRANGE creates no key");
        assert_eq!(run(db, now, "SETRANGE r 0 "), Reply::Int(11));
        assert_eq!(run(db, now, "SETRANGE r -1 x"), e("ERR offset is out of range"));
        assert_eq!(run(db, now, &format!("SETRANGE r {VALUE_BYTES_MAX} x")), e(TOO_BIG));
        assert_eq!(run(db, now, "SET rt v EX 100"), Reply::ok());
        assert_eq!(run(db, now, "SETRANGE rt 1 w"), Reply::Int(2));
        assert_eq!(run(db, now, "TTL rt"), Reply::Int(100), "SETRANGE keeps the expiry");

        assert_eq!(run(db, now, "SETBIT bits 7 1"), Reply::Int(0));
        assert_eq!(run(db, now, "SETBIT bits 7 0"), Reply::Int(1));
        assert_eq!(stored(db, "bits").unwrap(), b"\0");
        assert_eq!(run(db, now, "SETBIT bits 7 1"), Reply::Int(0));
        assert_eq!(run(db, now, "GETBIT bits 0"), Reply::Int(0));
        assert_eq!(run(db, now, "GETBIT bits 7"), Reply::Int(1));
        assert_eq!(run(db, now, "GETBIT bits 100"), Reply::Int(0));
        assert_eq!(run(db, now, "GETBIT nope 3"), Reply::Int(0));
        assert_eq!(run(db, now, "SETBIT bits 17 1"), Reply::Int(0));
        assert_eq!(stored(db, "bits").unwrap(), [1, 0, 0x40]);
        assert_eq!(run(db, now, "SETBIT bits 1 2"), e("ERR bit is not an integer or out of range"));
        assert_eq!(run(db, now, "SETBIT bits -1 1"), e("ERR bit offset is not an integer or out of range"));
        assert_eq!(run(db, now, &format!("SETBIT bits {} 1", BIT_OFFSET_MAX + 1)), e("ERR bit offset is not an integer or out of range"));
        assert_eq!(run(db, now, "GETBIT bits x"), e("ERR bit offset is not an integer or out of range"));

        assert_eq!(run(db, now, "SET fb foobar"), Reply::ok());
        assert_eq!(run(db, now, "BITCOUNT fb"), Reply::Int(26));
        assert_eq!(run(db, now, "BITCOUNT fb 0 0"), Reply::Int(4));
        assert_eq!(run(db, now, "BITCOUNT fb 1 1"), Reply::Int(6));
        assert_eq!(run(db, now, "BITCOUNT fb 1 1 BYTE"), Reply::Int(6));
        assert_eq!(run(db, now, "BITCOUNT fb 5 30 BIT"), Reply::Int(17));
        assert_eq!(run(db, now, "BITCOUNT fb -2 -1"), Reply::Int(7));
        assert_eq!(run(db, now, "BITCOUNT fb 0"), e(SYNTAX));
        assert_eq!(run(db, now, "BITCOUNT fb 0 1 WORD"), e(SYNTAX));
        assert_eq!(run(db, now, "BITCOUNT nope"), Reply::Int(0));

        raw(db, "bp", b"\xff\xf0\x00");
        assert_eq!(run(db, now, "BITPOS bp 0"), Reply::Int(12));
        raw(db, "bp", b"\x00\xff\xf0");
        assert_eq!(run(db, now, "BITPOS bp 1 0"), Reply::Int(8));
        assert_eq!(run(db, now, "BITPOS bp 1 2"), Reply::Int(16));
        assert_eq!(run(db, now, "BITPOS bp 1 2 -1 BYTE"), Reply::Int(16));
        assert_eq!(run(db, now, "BITPOS bp 1 7 15 BIT"), Reply::Int(8));
        raw(db, "bp", b"\x00\x00\x00");
        assert_eq!(run(db, now, "BITPOS bp 1"), Reply::Int(-1));
        assert_eq!(run(db, now, "BITPOS bp 1 7 -3 BIT"), Reply::Int(-1));
        raw(db, "bp", b"\xff\xff\xff");
        assert_eq!(run(db, now, "BITPOS bp 0"), Reply::Int(24), "no clear bit and no end: the first bit past the string");
        assert_eq!(run(db, now, "BITPOS bp 0 0 -1"), Reply::Int(-1), "no clear bit within an explicit end");
        assert_eq!(run(db, now, "BITPOS nope 1"), Reply::Int(-1));
        assert_eq!(run(db, now, "BITPOS nope 0"), Reply::Int(0));
        assert_eq!(run(db, now, "BITPOS bp 2"), e("ERR The bit argument must be 1 or 0."));
    }

    #[test]
    fn keyspace_commands_answer_as_redis_documents() {
        let db = &mut Map::default();
        let now = 1_000_000;
        assert_eq!(run(db, now, "SET k Hello"), Reply::ok());
        assert_eq!(run(db, now, "TYPE k"), Reply::Simple("string".into()));
        assert_eq!(run(db, now, "TYPE nope"), Reply::Simple("none".into()));
        assert_eq!(run(db, now, "TOUCH k nope k"), Reply::Int(2));

        assert_eq!(run(db, now, "EXPIRETIME k"), Reply::Int(-1));
        assert_eq!(run(db, now, "EXPIRETIME nope"), Reply::Int(-2));
        assert_eq!(run(db, now, "EXPIREAT k 2000"), Reply::Int(1));
        assert_eq!(run(db, now, "TTL k"), Reply::Int(1000));
        assert_eq!(run(db, now, "EXPIRETIME k"), Reply::Int(2000));
        assert_eq!(run(db, now, "PEXPIRETIME k"), Reply::Int(2_000_000));
        assert_eq!(run(db, now, "PEXPIREAT k 1500000 GT"), Reply::Int(0));
        assert_eq!(run(db, now, "PEXPIREAT k 1500000 LT"), Reply::Int(1));
        assert_eq!(run(db, now, "PEXPIRETIME k"), Reply::Int(1_500_000));
        assert_eq!(run(db, now, "EXPIREAT k 1293840000 NX"), Reply::Int(0));
        assert_eq!(run(db, now, "EXPIREAT k 999"), Reply::Int(1), "a time in the past deletes");
        assert_eq!(run(db, now, "EXISTS k"), Reply::Int(0));
        assert_eq!(run(db, now, "EXPIREAT nope 5000"), Reply::Int(0));
        assert_eq!(run(db, now, "EXPIREAT k x"), e(NOT_INT));

        assert_eq!(run(db, now, "SET mykey Hello EX 100"), Reply::ok());
        assert_eq!(run(db, now, "RENAME mykey other"), Reply::ok());
        assert_eq!(run(db, now, "GET other"), b("Hello"));
        assert_eq!(run(db, now, "TTL other"), Reply::Int(100), "RENAME keeps the expiry");
        assert_eq!(run(db, now, "EXISTS mykey"), Reply::Int(0));
        assert_eq!(run(db, now, "RENAME mykey x"), e("ERR no such key"));
        assert_eq!(run(db, now, "RENAME other other"), Reply::ok());
        assert_eq!(run(db, now, "SET world World"), Reply::ok());
        assert_eq!(run(db, now, "RENAMENX other world"), Reply::Int(0));
        assert_eq!(run(db, now, "GET world"), b("World"));
        assert_eq!(run(db, now, "RENAMENX other fresh"), Reply::Int(1));
        assert_eq!(run(db, now, "GET fresh"), b("Hello"));
        assert_eq!(run(db, now, "RENAMENX fresh fresh"), Reply::Int(0));
        assert_eq!(run(db, now, "RENAMENX gone x"), e("ERR no such key"));

        assert_eq!(run(db, now, "SET dolly sheep"), Reply::ok());
        assert_eq!(run(db, now, "COPY dolly clone"), Reply::Int(1));
        assert_eq!(run(db, now, "GET clone"), b("sheep"));
        assert_eq!(run(db, now, "SET dolly goat"), Reply::ok());
        assert_eq!(run(db, now, "COPY dolly clone"), Reply::Int(0));
        assert_eq!(run(db, now, "COPY dolly clone REPLACE"), Reply::Int(1));
        assert_eq!(run(db, now, "GET clone"), b("goat"));
        assert_eq!(run(db, now, "COPY dolly clone DB 0 REPLACE"), Reply::Int(1));
        assert_eq!(run(db, now, "COPY dolly clone DB 1"), e("ERR Copying to another database is not allowed in cluster mode"));
        assert_eq!(run(db, now, "COPY dolly clone DB notanumber"), e("ERR value is not an integer or out of range"));
        assert_eq!(run(db, now, "COPY dolly clone DB -1"), e("ERR DB index is out of range"));
        assert_eq!(run(db, now, "COPY dolly dolly"), e("ERR source and destination objects are the same"));
        assert_eq!(run(db, now, "COPY nope x"), Reply::Int(0));
        assert_eq!(run(db, now, "COPY dolly clone NOW"), e(SYNTAX));
    }
}
