//! The cluster secret: what everything that talks to the lock manager
//! proves it knows (servers' sessions, `admin` commands, servers asking
//! each other over RESP), and what the lock manager proves back.
//!
//! The secret never crosses the wire. Each side sends a fresh random nonce
//! and answers the other's with an HMAC-SHA256 over both nonces and its role
//! (so a proof can neither be replayed on another connection nor reflected
//! back as the other side's):
//!
//! ```text
//! client → lockmgr   Hello { protocol }
//! lockmgr → client   Challenge { nonce: Nl }
//! client → lockmgr   Proof { nonce: Nc, mac: HMAC(secret, "client" Nl Nc) }
//! lockmgr → client   Proven { mac: HMAC(secret, "lockmgr" Nc Nl) }   (or Error, and close)
//! ```
//!
//! A lock manager without a secret sends no challenge; a client that holds
//! one then refuses it (it cannot prove it is ours), and a client without
//! one refuses a challenge with a message naming the flag.
//!
//! The file holds the secret as 64 hex digits (32 random bytes) and a
//! newline. Like ssh with a private key, we refuse a file that other users
//! may read.

use std::io::Write;
use std::path::Path;

use hmac::{KeyInit, Mac};

/// Bytes of a secret, of a nonce and of a proof.
pub const SECRET_BYTES: usize = 32;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The cluster secret. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; SECRET_BYTES]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the cluster secret {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write the cluster secret {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("the cluster secret {path} is not 64 hex digits (make one with `sharedisk secret new FILE`)")]
    Malformed { path: String },
    #[error("the cluster secret {path} may be read by other users (mode {mode:o}); `chmod 600` it")]
    TooOpen { path: String, mode: u32 },
    #[error("no random bytes from the system: {0}")]
    Random(String),
}

/// Fresh random bytes (a nonce, or a new secret).
pub fn random() -> Result<[u8; SECRET_BYTES], SecretError> {
    let mut b = [0u8; SECRET_BYTES];
    getrandom::fill(&mut b).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(b)
}

/// What each side of the handshake proves as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A lock-manager client (a server's session, `admin`).
    Client,
    /// The lock manager answering it.
    Lockmgr,
    /// A server asking another over RESP (`SHAREDISK PROVE`).
    Peer,
    /// The server asked, proving back in its answer to `PROVE`.
    PeerAnswer,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Client => b"sharedisk v1 client\0",
            Role::Lockmgr => b"sharedisk v1 lockmgr\0",
            Role::Peer => b"sharedisk v1 resp peer\0",
            Role::PeerAnswer => b"sharedisk v1 resp peer answer\0",
        }
    }
}

impl Secret {
    pub fn generate() -> Result<Secret, SecretError> {
        random().map(Secret)
    }

    /// Read a secret file (see the module docs for its shape and mode).
    pub fn load(path: &Path) -> Result<Secret, SecretError> {
        use std::os::unix::fs::MetadataExt;
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| SecretError::Read { path: shown.clone(), source })?;
        if meta.mode() & 0o077 != 0 {
            return Err(SecretError::TooOpen { path: shown, mode: meta.mode() & 0o777 });
        }
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read { path: shown.clone(), source })?;
        Secret::parse(text.trim_end_matches(['\n', '\r'])).ok_or(SecretError::Malformed { path: shown })
    }

    /// A secret from its 64 hex digits.
    pub fn parse(hex: &str) -> Option<Secret> {
        if hex.len() != 2 * SECRET_BYTES || !hex.is_ascii() {
            return None;
        }
        let mut b = [0u8; SECRET_BYTES];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Secret(b))
    }

    /// Write a new random secret to `path`, which must not exist yet
    /// (mode 0600, synced).
    pub fn create_file(path: &Path) -> Result<Secret, SecretError> {
        use std::os::unix::fs::OpenOptionsExt;
        let shown = path.display().to_string();
        let secret = Secret::generate()?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            f.write_all(format!("{}\n", hex(&secret.0)).as_bytes())?;
            f.sync_all()
        };
        write().map_err(|source| SecretError::Write { path: shown, source })?;
        Ok(secret)
    }

    /// The proof `role` gives: an HMAC over its own label, the nonce it
    /// answers (`theirs`) and the one it sent (`ours`).
    pub fn prove(&self, role: Role, theirs: &[u8; SECRET_BYTES], ours: &[u8; SECRET_BYTES]) -> [u8; SECRET_BYTES] {
        self.mac(role, theirs, ours).finalize().into_bytes().into()
    }

    /// Whether `mac` is the proof `role` owes for these nonces (compared in
    /// constant time).
    pub fn verify(&self, role: Role, theirs: &[u8; SECRET_BYTES], ours: &[u8; SECRET_BYTES], mac: &[u8]) -> bool {
        self.mac(role, theirs, ours).verify_slice(mac).is_ok()
    }

    fn mac(&self, role: Role, theirs: &[u8; SECRET_BYTES], ours: &[u8; SECRET_BYTES]) -> HmacSha256 {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        m.update(role.label());
        m.update(theirs);
        m.update(ours);
        m
    }
}

/// Hex of `bytes` (nonces and proofs in RESP).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `SECRET_BYTES` bytes from hex; None if it is not exactly that.
pub fn unhex(text: &[u8]) -> Option<[u8; SECRET_BYTES]> {
    let text = std::str::from_utf8(text).ok()?;
    Secret::parse(text).map(|s| s.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_checks_only_with_the_same_secret_role_and_nonces() {
        let (a, b) = (Secret::generate().unwrap(), Secret::generate().unwrap());
        let (n1, n2) = (random().unwrap(), random().unwrap());
        let p = a.prove(Role::Client, &n1, &n2);
        assert!(a.verify(Role::Client, &n1, &n2, &p));
        assert!(!b.verify(Role::Client, &n1, &n2, &p), "another secret");
        assert!(!a.verify(Role::Lockmgr, &n1, &n2, &p), "reflected as the other side's proof");
        assert!(!a.verify(Role::Client, &n2, &n1, &p), "nonces swapped");
        assert!(!a.verify(Role::Client, &random().unwrap(), &n2, &p), "another connection's challenge");
        assert!(!a.verify(Role::Client, &n1, &n2, &p[..31]), "truncated");
    }

    #[test]
    fn files_round_trip_and_bad_ones_are_refused_clearly() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.secret");
        let made = Secret::create_file(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Secret::load(&path).unwrap(), made);
        assert!(matches!(Secret::create_file(&path), Err(SecretError::Write { .. })), "never overwrites one");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Secret::load(&path).unwrap_err();
        assert!(matches!(e, SecretError::TooOpen { mode: 0o644, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"));

        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63), &"a".repeat(65), &"é".repeat(32)] {
            std::fs::write(&path, bad).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(matches!(Secret::load(&path), Err(SecretError::Malformed { .. })), "{bad:?}");
        }
        assert!(matches!(Secret::load(&dir.path().join("none")), Err(SecretError::Read { .. })));
        assert!(!format!("{made:?}").contains(&hex(&made.0)[..8]), "Debug shows the secret");
    }
}
