//! `sharedisk server`: the flags, then the server library runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use sharedisk_server::{ServerConfig, limits};

#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The shared volume file.
    #[arg(long)]
    pub volume: PathBuf,
    /// The lock managers' addresses, comma-separated: the server finds the
    /// active one and follows it when a standby takes over.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub lockmgr: String,
    /// Where to serve RESP (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub listen: String,
    /// This server's stable name: its node id derives from it.
    #[arg(long)]
    pub id: String,
    /// The address clients are told to use (default: the bound listen address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Most client connections at once.
    #[arg(long, default_value_t = limits::CONNECTIONS_MAX)]
    pub max_clients: usize,
    /// Keep hot standbys of other servers' partitions (1) or not (0): a
    /// standby holds a second copy of its partition's index in memory, and
    /// makes a failover or move to this server read only the lag.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub standbys: u8,
    /// How far behind its owner's published head a standby may be and still
    /// answer a `READONLY` connection's reads (milliseconds; beyond it, and
    /// with 0, such reads get `-MOVED` to the owner).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub replica_max_lag_ms: u64,
}

pub fn run(args: ServerArgs) -> Result<ExitCode> {
    super::up::die_with_parent_if_asked();
    let ServerArgs { volume, lockmgr, listen, id, advertise, max_clients, standbys, replica_max_lag_ms } = args;
    let replica_max_lag = std::time::Duration::from_millis(replica_max_lag_ms);
    sharedisk_server::run(ServerConfig { volume, lockmgr, listen, id, advertise, max_clients, standby: standbys == 1, replica_max_lag })
}
