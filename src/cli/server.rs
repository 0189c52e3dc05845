//! `sharedisk server`: the flags, then the server library runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use sharedisk_server::tls::{ClientAuth, TlsFiles};
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
    #[command(flatten)]
    pub secret: super::secret::SecretArgs,
    /// The default user's password, the first line of this file (as
    /// Redis's `requirepass`; a file keeps it out of `ps`). Connections
    /// then AUTH first. Needs --secret-file.
    #[arg(long)]
    pub requirepass_file: Option<PathBuf>,
    /// Users and permissions in Redis's ACL file format, a line per user
    /// such as `user alice on >password ~app:* +@read`; `ACL SAVE` writes
    /// it, `ACL LOAD` reads it again. A missing file starts empty.
    #[arg(long)]
    pub aclfile: Option<PathBuf>,
    /// Serve beyond loopback without any password (Redis's `protected-mode
    /// no`): anyone who can reach the port may read and write everything.
    #[arg(long)]
    pub insecure_no_password: bool,
    /// Serve Prometheus metrics over HTTP at this address (`/metrics`, and
    /// `/health`): per partition owner, standby, epoch, whether served here,
    /// standby lag; requests, errors, barrier latency, engine cycle sizes,
    /// connections, claims.
    #[arg(long)]
    pub metrics: Option<String>,
    /// Serve RESP over TLS only, with this certificate chain (PEM, leaf
    /// first). It is also this server's client certificate when it asks
    /// other servers, so it must be valid for the host of --advertise (by
    /// default the bound address, an IP) and usable for client
    /// authentication (no extended key usage, or serverAuth and
    /// clientAuth). Needs --tls-key-file and --tls-ca-cert-file.
    #[arg(long, requires_all = ["tls_key_file", "tls_ca_cert_file"])]
    pub tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// The CA certificates (PEM) that client certificates, and other
    /// servers' certificates, must chain to.
    #[arg(long, requires = "tls_cert_file")]
    pub tls_ca_cert_file: Option<PathBuf>,
    /// Whether clients must present a certificate the CA signed (Redis's
    /// `tls-auth-clients`): yes, optional (if they present one it must be
    /// valid) or no.
    #[arg(long, value_enum, default_value_t = AuthClients::Yes)]
    pub tls_auth_clients: AuthClients,
    #[command(flatten)]
    pub log: super::log::LogArgs,
}

/// `--tls-auth-clients`.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum AuthClients {
    Yes,
    Optional,
    No,
}

/// The first line of a password file, without its line end.
pub fn read_password(path: &std::path::Path) -> Result<Vec<u8>> {
    let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read the password file {}: {e}", path.display()))?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        anyhow::bail!("the password file {} is empty", path.display());
    }
    Ok(line.to_vec())
}

pub fn run(args: ServerArgs) -> Result<ExitCode> {
    super::up::die_with_parent_if_asked();
    let ServerArgs {
        volume,
        lockmgr,
        listen,
        id,
        advertise,
        max_clients,
        standbys,
        replica_max_lag_ms,
        secret,
        requirepass_file,
        aclfile,
        insecure_no_password,
        metrics,
        tls_cert_file,
        tls_key_file,
        tls_ca_cert_file,
        tls_auth_clients,
        log: _,
    } = args;
    let tls = match (tls_cert_file, tls_key_file, tls_ca_cert_file) {
        (Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
            cert,
            key,
            ca,
            auth_clients: match tls_auth_clients {
                AuthClients::Yes => ClientAuth::Required,
                AuthClients::Optional => ClientAuth::Optional,
                AuthClients::No => ClientAuth::No,
            },
        }),
        // clap makes the three flags go together.
        _ => None,
    };
    let replica_max_lag = std::time::Duration::from_millis(replica_max_lag_ms);
    let secret = secret.load()?;
    let requirepass = requirepass_file.as_deref().map(read_password).transpose()?;
    sharedisk_server::run(ServerConfig {
        volume,
        lockmgr,
        listen,
        id,
        advertise,
        max_clients,
        standby: standbys == 1,
        replica_max_lag,
        secret,
        requirepass,
        aclfile,
        insecure_no_password,
        metrics,
        tls,
    })
}
