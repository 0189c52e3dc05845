//! Servers asking each other over RESP (`SHAREDISK STANDBY-APPLIED`,
//! `SCANSTEP`): the connection, and the login with the cluster secret
//! that lets such a question through a server whose users need passwords.
//!
//! ```text
//! asker → server   SHAREDISK CHALLENGE             server → asker  $64 <its nonce, hex>
//! asker → server   SHAREDISK PROVE <nonce> <mac>   server → asker  $64 <its proof, hex>
//! ```
//!
//! Both prove the secret (`secret.rs`: `Role::Peer`, then
//! `Role::PeerAnswer`), each over both nonces, so a proof cannot be
//! replayed on another connection, and an asker believes no answer from a
//! process that merely took a server's address. A logged-in peer runs as
//! [`PEER_USER`], which may run `SHAREDISK` only. With TLS the connection
//! is TLS too, each server presenting its certificate (`tls.rs`).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sharedisk_lockmgr::secret::{self, Role};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ServerState;
use crate::resp::Reply;

/// Who a peer that proved the secret runs as.
pub const PEER_USER: &str = "sharedisk-peer";

/// Whether listening on `addr` (host:port) reaches beyond loopback. An
/// address that does not resolve is not judged here: binding it fails
/// with its own error.
pub fn beyond_loopback(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs().is_ok_and(|mut all| all.any(|a| !a.ip().is_loopback()))
}

/// The user of a logged-in peer: `SHAREDISK` only, no keys.
pub fn peer_user() -> crate::acl::User {
    let mut u = crate::acl::User::new(PEER_USER);
    for r in ["on", "+sharedisk"] {
        u.apply(r.as_bytes()).expect("a valid rule");
    }
    u
}

/// A connection to a peer: plain TCP, or TLS when the server has it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

/// Send one command (flushed: over TLS a write may stay in the session's
/// buffer until then).
pub async fn send(s: &mut Stream, args: Vec<Bytes>) -> Option<()> {
    let mut req = BytesMut::new();
    Reply::Array(args.into_iter().map(Reply::Bulk).collect()).encode(2, &mut req);
    s.write_all(&req).await.ok()?;
    s.flush().await.ok()
}

/// One short reply line (`+OK`, `$64`), then for a bulk its bytes.
async fn read_line(s: &mut Stream, buf: &mut BytesMut) -> Option<Bytes> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf.split_to(end + 2).freeze();
            return Some(line.slice(..end));
        }
        if buf.len() > 256 || s.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// Connect to the server at `addr` for a question; with a cluster secret,
/// log in with it first. None if it cannot be reached or refuses us.
pub async fn connect(shared: &ServerState, addr: &str) -> Option<Stream> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let mut s: Stream = match &shared.tls {
        None => Box::new(tcp),
        // Over TLS, each checks the other's certificate against the CA.
        Some(tls) => {
            let name = crate::tls::server_name(addr)?;
            match tokio::time::timeout(Duration::from_secs(1), tls.connector.connect(name, tcp)).await {
                Ok(Ok(s)) => Box::new(s),
                // Said, at most every 10 s: otherwise WAIT would just count
                // no standby and SCAN fail over, and nobody would know why
                // (typically a certificate not valid for this address).
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the handshake timed out".to_owned(),
                    };
                    if crate::tls::say_now() {
                        tracing::warn!(server = %shared.me.name, addr, error = %why, "server {}: cannot ask {addr} over TLS: {why}", shared.me.name);
                    }
                    return None;
                }
            }
        }
    };
    let Some(secret) = &shared.secret else { return Some(s) };
    let login = async {
        send(&mut s, vec![Bytes::from_static(b"SHAREDISK"), Bytes::from_static(b"CHALLENGE")]).await?;
        let mut buf = BytesMut::new();
        if read_line(&mut s, &mut buf).await?.as_ref() != b"$64" {
            return None;
        }
        let theirs = secret::unhex(&read_line(&mut s, &mut buf).await?)?;
        let ours = secret::random().ok()?;
        let mac = secret.prove(Role::Peer, &theirs, &ours);
        let prove = vec![
            Bytes::from_static(b"SHAREDISK"),
            Bytes::from_static(b"PROVE"),
            Bytes::from(secret::hex(&ours)),
            Bytes::from(secret::hex(&mac)),
        ];
        send(&mut s, prove).await?;
        if read_line(&mut s, &mut buf).await?.as_ref() != b"$64" {
            return None;
        }
        let answer = secret::unhex(&read_line(&mut s, &mut buf).await?)?;
        (buf.is_empty() && secret.verify(Role::PeerAnswer, &ours, &theirs, &answer)).then_some(())
    };
    tokio::time::timeout(Duration::from_secs(1), login).await.ok().flatten()?;
    Some(s)
}

/// `SHAREDISK CHALLENGE`: a fresh nonce for this connection.
pub fn challenge(client: &mut crate::cmd::ClientState) -> Reply {
    match secret::random() {
        Ok(n) => {
            client.peer_nonce = Some(n);
            Reply::Bulk(Bytes::from(secret::hex(&n)))
        }
        Err(e) => Reply::error(format!("ERR {e}")),
    }
}

/// `SHAREDISK PROVE nonce mac`: log in as [`PEER_USER`] if `mac` proves
/// the cluster secret for this connection's challenge (used once).
pub fn prove(client: &mut crate::cmd::ClientState, shared: &ServerState, args: &[Bytes]) -> Reply {
    let refused = || Reply::error("ERR the proof of the cluster secret does not check out");
    let (Some(secret), Some(ours)) = (&shared.secret, client.peer_nonce.take()) else { return refused() };
    let (Some(theirs), Some(mac)) = (args.get(2).and_then(|a| secret::unhex(a)), args.get(3).and_then(|a| secret::unhex(a))) else {
        return refused();
    };
    if args.len() != 4 || !secret.verify(Role::Peer, &ours, &theirs, &mac) {
        return refused();
    }
    let epoch = shared.acl.epoch();
    client.log_in(std::sync::Arc::new(peer_user()), epoch);
    client.peer = true;
    Reply::Bulk(Bytes::from(secret::hex(&secret.prove(Role::PeerAnswer, &theirs, &ours))))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_addresses_beyond_loopback_count() {
        for (addr, beyond) in [
            ("127.0.0.1:1", false),
            ("[::1]:1", false),
            ("localhost:1", false),
            ("0.0.0.0:1", true),
            ("[::]:1", true),
            ("not-an-address", false),
        ] {
            assert_eq!(super::beyond_loopback(addr), beyond, "{addr}");
        }
    }
}
