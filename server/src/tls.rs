//! TLS on RESP (rustls with the ring provider): what `--tls-cert-file`,
//! `--tls-key-file`, `--tls-ca-cert-file` and `--tls-auth-clients` set up.
//!
//! With TLS the listen address speaks TLS only, as a Redis with `port 0`
//! and `tls-port` does; `CLUSTER SLOTS` names the same port, so a cluster
//! client that connects with TLS to one server does to all. Servers also
//! ask each other questions over RESP (`peer.rs`): they do it over TLS,
//! each presenting its own certificate as a client certificate and
//! checking the other's against the CA (Redis's `tls-cluster yes`), which
//! is why the CA file is required.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Whether a client must present a certificate the CA signed (Redis's
/// `tls-auth-clients`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must (Redis's default).
    Required,
    /// A client may; one that does must present a valid one.
    Optional,
    /// None is asked for.
    No,
}

/// The files TLS is set up from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// This server's certificate chain (PEM), leaf first; also its client
    /// certificate towards other servers.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates (PEM) that client and peer certificates must chain to.
    pub ca: PathBuf,
    pub auth_clients: ClientAuth,
}

/// A server's TLS: how it accepts connections and how it connects to peers.
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let read = || -> Result<Vec<CertificateDer<'static>>, rustls::pki_types::pem::Error> { CertificateDer::pem_file_iter(path)?.collect() };
    let certs = read().map_err(|e| anyhow!("cannot read the {what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("the {what} {} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

impl Tls {
    /// Load and check everything now, so that a bad file stops the server
    /// at start with the file's name rather than failing handshakes later.
    pub fn load(files: &TlsFiles) -> Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certificates(&files.cert, "TLS certificate file (--tls-cert-file)")?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| anyhow!("cannot read the TLS key file (--tls-key-file) {}: {e}", files.key.display()))?;
        let mut roots = RootCertStore::empty();
        for ca in certificates(&files.ca, "TLS CA certificate file (--tls-ca-cert-file)")? {
            roots.add(ca).with_context(|| format!("a certificate of {} is not a usable CA certificate", files.ca.display()))?;
        }
        let roots = Arc::new(roots);
        let versions = |e: rustls::Error| anyhow!("no TLS protocol version available: {e}");
        let server = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(versions)?;
        let server = match files.auth_clients {
            ClientAuth::No => server.with_no_client_auth(),
            auth => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
                let verifier = if auth == ClientAuth::Optional { verifier.allow_unauthenticated() } else { verifier };
                server.with_client_cert_verifier(verifier.build().context("cannot verify client certificates with this CA")?)
            }
        };
        let mismatch = |e: rustls::Error| {
            anyhow!("the TLS certificate {} and key {} do not make a pair: {e}", files.cert.display(), files.key.display())
        };
        let server = server.with_single_cert(chain.clone(), key.clone_key()).map_err(mismatch)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(versions)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(mismatch)?;
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        })
    }
}

/// Whether a failed handshake with a peer may be logged now: at most one
/// line every 10 s.
pub fn say_now() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    (last == 0 || now >= last + 10) && LAST.compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

/// The name a peer at `addr` (host:port) must have in its certificate: its
/// host, a DNS name or an IP address.
pub fn server_name(addr: &str) -> Option<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_peer_is_checked_by_the_host_of_its_address() {
        use rustls::pki_types::ServerName;
        assert_eq!(
            super::server_name("127.0.0.1:7001"),
            Some(ServerName::IpAddress("127.0.0.1".parse::<std::net::IpAddr>().unwrap().into()))
        );
        assert_eq!(super::server_name("[::1]:7001"), Some(ServerName::IpAddress("::1".parse::<std::net::IpAddr>().unwrap().into())));
        assert_eq!(super::server_name("db1.example:7001"), ServerName::try_from("db1.example").ok().map(|n| n.to_owned()));
        assert_eq!(super::server_name("bad host:1"), None);
    }
}
