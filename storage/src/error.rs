//! The storage crate's one error type.

use std::path::PathBuf;

/// Everything the volume can refuse, with the facts an operator needs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("volume I/O failed: {0}; the handle refuses further work until the volume is reopened")]
    Media(std::io::Error),
    #[error("the volume handle failed earlier (I/O error); reopen the volume")]
    HandleFailed,
    #[error("not a sharedisk volume: magic is {found:02x?}, expected {expected:02x?}")]
    NotAVolume { found: [u8; 8], expected: [u8; 8] },
    #[error(
        "unsupported volume format version {found}; this build reads version {supported} only (serve it with a matching build, or create a new volume)"
    )]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("volume truncated: the file has {actual} bytes but its geometry needs {expected}")]
    Truncated { actual: u64, expected: u64 },
    #[error("corrupted {what} at byte offset {offset}: {detail}")]
    Corrupted { what: &'static str, offset: u64, detail: String },
    #[error("invalid geometry: {0}")]
    Geometry(String),
    #[error("{path} already exists; pass --force to overwrite it")]
    Exists { path: PathBuf },
    #[error("RESERVATION CONFLICT: partition {partition} is fenced (presented fence token {presented}, current {current})")]
    Fenced { partition: u32, presented: u32, current: u32 },
    #[error("RESERVATION CONFLICT: key {key:#018x} is not registered on this volume")]
    NotRegistered { key: u64 },
    #[error("key {key:#018x} is already registered")]
    AlreadyRegistered { key: u64 },
    #[error("reservation key 0 is reserved (it marks a free slot)")]
    ZeroKey,
    #[error("all {slots} registrant slots are in use")]
    NoFreeSlot { slots: u32 },
    #[error("no partition {partition}: the volume has {partitions}")]
    NoSuchPartition { partition: u32, partitions: u32 },
    #[error(
        "partition {partition} is full: {live_bytes} bytes live in {segments} segments of {segment_bytes} bytes; delete data or use a larger volume"
    )]
    PartitionFull { partition: u32, live_bytes: u64, segments: u32, segment_bytes: u32 },
    #[error("record of {bytes} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { bytes: usize, max: usize },
    #[error("this lock manager (term {term}) was deposed: the lock-manager lease is in term {now}, held by {}", seat.map_or("no seat".to_owned(), |s| format!("seat {s}")))]
    Deposed { term: u32, now: u32, seat: Option<u8> },
    #[error("all {seats} lock-manager seats are held by live lock managers")]
    NoFreeSeat { seats: u64 },
    #[error("fence tokens of partition {partition} are exhausted")]
    TokensExhausted { partition: u32 },
}

impl Error {
    pub fn corrupted(what: &'static str, offset: u64, detail: impl Into<String>) -> Error {
        Error::Corrupted { what, offset, detail: detail.into() }
    }

    /// True for the errors that mean "someone else owns this now".
    pub fn is_fenced(&self) -> bool {
        matches!(self, Error::Fenced { .. } | Error::NotRegistered { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
