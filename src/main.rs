//! `sharedisk`: the command line of the shared-storage cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// Large blocks (the indexes' tables) in huge pages: see `sharedisk_storage::hugealloc`.
#[global_allocator]
static ALLOC: sharedisk_storage::hugealloc::HugePageAlloc = sharedisk_storage::hugealloc::HugePageAlloc;

use cli::{debug, lockmgr as lockmgr_cmd, secret, server, units, up, volume as volume_cmd};

#[derive(Parser, Debug)]
#[command(name = "sharedisk", version, about = "A shared-storage data-sharing cluster with a global lock manager")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, inspect, check and fence a shared volume.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Start a whole local cluster (volume, lock manager, servers) in the foreground.
    Up(up::UpArgs),
    /// Serve partitions of a volume over the Redis Cluster protocol.
    Server(server::ServerArgs),
    /// Run the lock manager for a volume.
    Lockmgr(lockmgr_cmd::LockmgrArgs),
    /// Ask the lock manager: status, move, drain, rebalance.
    Admin(lockmgr_cmd::AdminArgs),
    /// Make a cluster secret.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Tools for tests and fault drills (not for production use).
    #[command(subcommand, hide = true)]
    Debug(debug::DebugCommand),
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume file (sparse unless --preallocate).
    Create {
        path: PathBuf,
        /// Total size, e.g. 1GiB, 512MiB.
        #[arg(long, default_value = "1GiB", value_parser = units::parse_size)]
        size: u64,
        /// Number of partitions (each a contiguous range of hash slots).
        #[arg(long, default_value_t = 16)]
        partitions: u32,
        /// Segment size: a power of two from 8KiB to 256KiB.
        #[arg(long, default_value = "256KiB", value_parser = units::parse_size)]
        segment_size: u64,
        /// Registrant slots (server incarnations registered at once), at most 254.
        #[arg(long, default_value_t = 64)]
        slots: u32,
        /// Overwrite an existing file (its data is lost).
        #[arg(long)]
        force: bool,
        /// Reserve all blocks now instead of leaving the file sparse.
        #[arg(long)]
        preallocate: bool,
    },
    /// Show geometry, reservations and per-partition state.
    Inspect {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List registered reservation keys (like `sg_persist --read-keys`).
    Keys {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Fence a server incarnation: remove its key and fence every partition it owns.
    Preempt {
        path: PathBuf,
        /// The victim's reservation key (decimal or 0x-hex).
        #[arg(long, value_parser = units::parse_key)]
        key: u64,
    },
    /// Verify every structure and checksum; exit 0 when consistent, 1 otherwise.
    Check {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Free the slots and leaked segments of fenced incarnations that are dead.
    Reap { path: PathBuf },
    /// Give back a lock-manager seat whose holder is gone (the operator
    /// vouches for a holder on another machine; a holder alive here is
    /// refused). Seats of holders proven dead are reused by themselves.
    FreeSeat { path: PathBuf, seat: u8 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The long-running commands log as asked; the others as text.
    match &cli.command {
        Command::Lockmgr(args) => args.log.init(),
        Command::Server(args) => args.log.init(),
        Command::Up(args) => args.log.init(),
        _ => sharedisk_lockmgr::logging::init(sharedisk_lockmgr::logging::LogFormat::Text),
    }
    let result = match cli.command {
        Command::Volume(cmd) => volume_cmd::run(cmd),
        Command::Lockmgr(args) => lockmgr_cmd::run_lockmgr(args),
        Command::Up(args) => up::run(args),
        Command::Server(args) => server::run(args),
        Command::Admin(args) => lockmgr_cmd::run_admin(args),
        Command::Secret(cmd) => secret::run(cmd),
        Command::Debug(cmd) => debug::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
