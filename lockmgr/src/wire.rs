//! The lock manager's wire protocol: length-delimited postcard frames.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of a
//! postcard-encoded message. Frames over [`FRAME_BYTES_MAX`] and bytes that do
//! not decode close the connection with an error frame; nothing else happens.
//! The first frame from a client is [`ClientMsg::Hello`] with the protocol
//! version (then, if the lock manager has a cluster secret, its challenge and
//! the proofs, `secret.rs`); messages are versioned enums that only ever gain variants.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::core::{ClusterMap, Request, Response, Status};

/// 2: Hello carries the volume's uuid; the slot-map push.
/// 3: hot standbys (`ServerInfo::standby`, `ClusterMap::standbys`).
/// 4: standby lag reports.
/// 5: standby lock managers (`ServerMsg::NotActive`, `Status::lockmgrs`).
/// 6: the cluster secret's challenge and proofs (`secret.rs`).
pub const PROTOCOL_VERSION: u32 = 6;
/// Largest frame either side accepts.
pub const FRAME_BYTES_MAX: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    Hello {
        protocol: u32,
    },
    Call {
        id: u64,
        request: Request,
    },
    Status {
        id: u64,
    },
    /// The answer to [`ServerMsg::Challenge`]: our nonce, and our proof of
    /// the cluster secret (`secret.rs`).
    Proof {
        nonce: [u8; 32],
        mac: [u8; 32],
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    Hello {
        protocol: u32,
        partitions: u32,
        heartbeat_interval_ms: u64,
        lease_timeout_ms: u64,
        server_guard_ms: u64,
        /// The volume this lock manager fences: a server must serve the same one.
        volume_uuid: [u8; 16],
    },
    Reply {
        id: u64,
        response: Response,
    },
    Status {
        id: u64,
        status: Status,
    },
    /// Unsolicited: what the lock manager decided for this session.
    Push(Push),
    /// The connection is being closed because of this.
    Error {
        message: String,
    },
    /// Answered to Hello by a standby lock manager: go to the active one
    /// (its address, if one is active), then the connection closes.
    NotActive {
        active: Option<String>,
    },
    /// Answered to Hello by a lock manager that has a cluster secret:
    /// prove it (with [`ClientMsg::Proof`]).
    Challenge {
        nonce: [u8; 32],
    },
    /// The client's proof checked out; the lock manager's own proof. Hello
    /// (or NotActive) follows.
    Proven {
        mac: [u8; 32],
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Push {
    /// The session owns `partition` at this grant epoch.
    Grant {
        partition: u32,
        epoch: u64,
    },
    Revoke {
        partition: u32,
    },
    Expired,
    /// The slot map changed (sent to registered sessions, and once on registration).
    Map(ClusterMap),
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the {FRAME_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("undecodable frame: {0}")]
    Decode(String),
}

pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> Result<(), WireError> {
    let mut buf = Vec::new();
    encode_frame(msg, &mut buf)?;
    w.write_all(&buf).await?;
    Ok(())
}

/// Append `msg` as one frame to `buf`.
pub fn encode_frame<T: Serialize>(msg: &T, buf: &mut Vec<u8>) -> Result<(), WireError> {
    let bytes = postcard::to_stdvec(msg).map_err(|e| WireError::Decode(e.to_string()))?;
    if bytes.len() > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge(bytes.len()));
    }
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(&bytes);
    Ok(())
}

/// Bytes gathered into one write at most.
const WRITE_BATCH_BYTES: usize = 64 << 10;

/// Write every message of `rx` as it comes, each burst in one write (one
/// syscall for the replies of a whole group commit), until `rx` closes, a
/// write fails, or a message `last` says ends the connection was written.
pub async fn write_frames<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    last: impl Fn(&T) -> bool,
) {
    let mut buf = Vec::new();
    while let Some(first) = rx.recv().await {
        buf.clear();
        let mut end = last(&first);
        if encode_frame(&first, &mut buf).is_err() {
            return;
        }
        while !end && buf.len() < WRITE_BATCH_BYTES {
            let Ok(msg) = rx.try_recv() else { break };
            end = last(&msg);
            if encode_frame(&msg, &mut buf).is_err() {
                return;
            }
        }
        if w.write_all(&buf).await.is_err() || end {
            return;
        }
    }
}

pub async fn read_frame<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(r: &mut R) -> Result<T, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    postcard::from_bytes(&buf).map_err(|e| WireError::Decode(e.to_string()))
}
