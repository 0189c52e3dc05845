//! Connection-level and introspection commands, one file per command.
//!
//! Each is a small function of the connection's own state ([`ClientState`]),
//! the server's shared state and the arguments, returning the reply.
//! `conn.rs` keeps what shapes the request stream itself: MULTI, EXEC,
//! DISCARD and QUIT.

mod acl;
mod basic;
mod client;
mod cluster;
mod command;
mod config;
mod hello;
mod info;
mod keys;
mod pubsub;
mod sharedisk;
mod slowlog;

pub use sharedisk::WAIT_MAX as STANDBY_WAIT_MAX;

use super::ServerState;
use super::commands::{Command, Id};
use crate::resp::Reply;

pub use client::{ClientInfo, Clients};
pub use slowlog::SlowLog;

/// What a command may see and change of its connection.
#[derive(Debug)]
pub struct ClientState {
    /// What `CLIENT LIST` and `CLIENT KILL` see of this connection: its id
    /// and name live there only.
    pub info: std::sync::Arc<ClientInfo>,
    /// RESP version of the replies: 2 or 3.
    pub proto: u8,
    /// `READONLY` was sent: reads of partitions we keep a hot standby of
    /// are answered from it (within the staleness bound), as a Redis
    /// replica answers them.
    pub readonly: bool,
    /// Who this connection runs as (the default user until AUTH), and
    /// whether it has authenticated (or needed not: the default user
    /// without a password).
    pub user: std::sync::Arc<crate::acl::User>,
    pub authenticated: bool,
    /// The ACL epoch `user` was looked up at.
    pub acl_epoch: u64,
    /// The nonce of `SHAREDISK CHALLENGE`, for the peer's `PROVE`.
    pub peer_nonce: Option<[u8; 32]>,
    /// Logged in as a peer server (`peer.rs`): its user is not in the ACL.
    pub peer: bool,
}

impl ClientState {
    pub fn new(info: std::sync::Arc<ClientInfo>, shared: &ServerState) -> ClientState {
        let epoch = shared.acl.epoch();
        let user = shared.acl.default_user();
        let authenticated = user.needs_no_password();
        ClientState { info, proto: 2, readonly: false, user, authenticated, acl_epoch: epoch, peer_nonce: None, peer: false }
    }

    /// Run as `user` from now on.
    pub fn log_in(&mut self, user: std::sync::Arc<crate::acl::User>, epoch: u64) {
        self.info.set_user(&user.name);
        self.user = user;
        self.authenticated = true;
        self.acl_epoch = epoch;
        self.peer = false;
    }
}

/// Answer a connection-level or introspection command.
pub async fn run(cmd: &Command, client: &mut ClientState, shared: &ServerState) -> Reply {
    let args = &cmd.args[..];
    match cmd.id() {
        Id::Ping => basic::ping(args),
        Id::Echo => basic::echo(args),
        Id::Time => basic::time(),
        Id::Select => basic::select(args),
        Id::Readonly | Id::Readwrite => {
            client.readonly = cmd.id() == Id::Readonly;
            client.info.readonly.store(client.readonly, std::sync::atomic::Ordering::Relaxed);
            Reply::ok()
        }
        // Queued inside MULTI: the watch was checked before EXEC ran it.
        Id::Asking | Id::Unwatch => Reply::ok(),
        Id::Hello => hello::hello(client, shared, args),
        Id::Auth => acl::auth(client, shared, args),
        Id::Acl => acl::acl(client, shared, args),
        Id::Client => client::client(client, shared, args),
        Id::Dbsize => info::dbsize(shared).await,
        Id::Info => info::info(shared, args).await,
        Id::Command => command::command(args),
        Id::Config => config::config(shared, args),
        Id::Cluster => match lower(&args[1]).as_str() {
            sub @ ("countkeysinslot" | "getkeysinslot") => keys::in_slot(shared, sub, &args[2..]).await,
            _ => cluster::cluster(shared, args),
        },
        Id::Keys => keys::keys(shared, &args[1]).await,
        Id::Scan => keys::scan(shared, args).await,
        Id::Randomkey => keys::random_key(shared).await,
        Id::Flushall | Id::Flushdb => keys::flush(shared, args).await,
        Id::Function => basic::function(args),
        Id::Slowlog => slowlog::slowlog(shared, args),
        Id::Latency => slowlog::latency(args),
        Id::Sharedisk => sharedisk::sharedisk(shared, args).await,
        Id::Publish | Id::Spublish if !client.user.may_use_channel(&args[1]) => Reply::error(NOPERM_CHANNELS),
        Id::Publish => pubsub::publish(shared, args),
        Id::Spublish => pubsub::spublish(shared, args),
        Id::Pubsub => pubsub::pubsub(shared, args),
        _ => Reply::error(format!("ERR '{}' is not implemented", cmd.spec.name)),
    }
}

/// Redis 7.0's refusal of a channel the user's `&pattern` rules do not allow.
pub const NOPERM_CHANNELS: &str = "NOPERM this user has no permissions to access one of the channels used as arguments";

/// A container's `HELP` reply, in Redis's shape: the usage line, the
/// subcommands' lines, then HELP's own.
fn help(command: &str, lines: &[&str]) -> Reply {
    let head = format!("{command} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:");
    let tail = ["HELP", "    Print this help."];
    Reply::Array(std::iter::once(head).chain(lines.iter().chain(&tail).map(|l| (*l).to_owned())).map(Reply::Simple).collect())
}

/// A subcommand or option name, lower-cased for matching.
fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}
