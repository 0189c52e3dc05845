//! `volume check` and `volume inspect`: read-only walks over a volume.

use crate::Error;
use crate::layout::*;
use crate::partition::{Replayed, recover};
use crate::volume::{SlotState, Volume};

/// One inconsistency: what, where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    pub offset: u64,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte offset {}: {}", self.what, self.offset, self.detail)
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Problem {
        match e {
            Error::Corrupted { what, offset, detail } => Problem { what: what.to_owned(), offset, detail },
            other => Problem { what: "volume".into(), offset: 0, detail: other.to_string() },
        }
    }
}

/// Per-partition facts for `inspect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionReport {
    pub partition: u32,
    pub owner_slot: Option<u8>,
    pub owner_key: Option<u64>,
    pub fence_token: u32,
    pub head_token: u32,
    pub chain_segments: u32,
    pub log_bytes: u64,
    pub records: u64,
    pub free_segments: u32,
    pub open_segments: u32,
    pub sealed_segments: u32,
    pub bytes_used: u64,
    pub bytes_free: u64,
    /// The last commit was torn by a power loss (unacknowledged; the next
    /// claim drops it): why the walk from the head failed.
    pub torn_commit: Option<String>,
    pub error: Option<String>,
}

pub fn inspect_partition(vol: &Volume, p: u32) -> PartitionReport {
    let geo = *vol.geometry();
    let owner = vol.owner(p).ok();
    let owner_key = owner.and_then(|o| o.slot).map(|s| vol.slot_info(s).key).filter(|&k| k != 0);
    let mut r = PartitionReport {
        partition: p,
        owner_slot: owner.and_then(|o| o.slot),
        owner_key,
        fence_token: owner.map_or(0, |o| o.token),
        head_token: vol.head(p).map_or(0, |h| h.token),
        chain_segments: 0,
        log_bytes: 0,
        records: 0,
        free_segments: 0,
        open_segments: 0,
        sealed_segments: 0,
        bytes_used: 0,
        bytes_free: 0,
        torn_commit: None,
        error: None,
    };
    for s in 0..geo.segments_per_partition as u16 {
        match vol.descriptor(p, s) {
            Ok(SegState::Free) => r.free_segments += 1,
            Ok(SegState::Open { .. }) => r.open_segments += 1,
            Ok(SegState::Sealed { .. }) => r.sealed_segments += 1,
            Err(e) => r.error = Some(e.to_string()),
        }
    }
    r.bytes_free = u64::from(r.free_segments) * u64::from(geo.segment_bytes);
    r.bytes_used = geo.partition_data_bytes - r.bytes_free;
    let mut records = 0;
    match recover(vol, p, |v| match v {
        Replayed::Reset => records = 0,
        Replayed::Record(..) => records += 1,
    }) {
        Ok(log) => {
            r.chain_segments = log.chain.len() as u32;
            r.log_bytes = log.bytes;
            r.records = records;
            r.torn_commit = log.torn.map(|t| t.reason);
        }
        Err(e) => r.error = Some(e.to_string()),
    }
    r
}

/// Every consistency rule of FORMAT.md, checked. Empty = consistent.
pub fn check(vol: &Volume) -> Vec<Problem> {
    let geo = *vol.geometry();
    let mut problems = Vec::new();
    let res = vol.read_reservation();
    if res.type_code != RESERVATION_TYPE_WERO {
        problems.push(Problem {
            what: "reservation type".into(),
            offset: geo.reservation_type(),
            detail: format!("type code {} is not Write Exclusive - Registrants Only (5)", res.type_code),
        });
    }
    let mut seen = std::collections::HashMap::new();
    for slot in 0..geo.registrant_slots as u8 {
        let at = geo.slot_offset(slot);
        let info = vol.slot_info(slot);
        let status = vol.region().load(geo.slot_status(slot));
        let state = status_state(status);
        if state > SLOT_STATE_FENCED || status & 0xffff_ff00 != 0 {
            problems.push(Problem {
                what: "registrant slot".into(),
                offset: geo.slot_status(slot),
                detail: format!("invalid status word {status:#018x}"),
            });
        }
        if info.key == 0 && status != 0 {
            problems.push(Problem { what: "registrant slot".into(), offset: at, detail: "free slot with a non-zero status".into() });
        }
        if info.state != SlotState::Empty
            && let Some(other) = seen.insert(info.key, slot)
        {
            problems.push(Problem {
                what: "registrant slot".into(),
                offset: at,
                detail: format!("key {:#018x} also in slot {other}", info.key),
            });
        }
    }
    if let Err(e) = vol.read_lockmgr_state() {
        problems.push(e.into());
    }
    if let Err(e) = vol.lockmgr_lease() {
        problems.push(e.into());
    }
    for p in 0..geo.partitions {
        let owner = match vol.owner(p) {
            Ok(o) => o,
            Err(e) => {
                problems.push(e.into());
                continue;
            }
        };
        if owner.slot.is_some_and(|s| u32::from(s) >= geo.registrant_slots) {
            problems.push(Problem {
                what: "owner word".into(),
                offset: geo.owner_word(p),
                detail: format!("slot {:?} out of range", owner.slot),
            });
        }
        for (name, at) in [("head word", geo.head_word(p)), ("tail word", geo.tail_word(p)), ("floor word", geo.floor_word(p))] {
            let lw = LogWord::decode(vol.region().load(at));
            if lw.token > owner.token {
                problems.push(Problem {
                    what: name.into(),
                    offset: at,
                    detail: format!("token {} is ahead of the owner token {}", lw.token, owner.token),
                });
            }
        }
        for s in 0..geo.segments_per_partition as u16 {
            match vol.descriptor(p, s) {
                Ok(st) => {
                    if let SegState::Open { slot, .. } | SegState::Sealed { slot, .. } = st
                        && u32::from(slot) >= geo.registrant_slots
                    {
                        problems.push(Problem {
                            what: "segment descriptor".into(),
                            offset: geo.descriptor(p, s),
                            detail: format!("slot {slot} out of range"),
                        });
                    }
                }
                Err(e) => problems.push(e.into()),
            }
        }
        // A torn last commit is not a problem: it was never acknowledged and
        // the next claim drops it (`inspect` reports it).
        // (Recovery also rejects a chain segment whose descriptor is FREE.)
        // Every current large put's blob: its segments allocated, its
        // headers naming it, its value matching its checksum.
        let mut keyspace = crate::index::Keyspace::new(crate::index::MapIndex::default());
        if let Err(e) = recover(vol, p, |v| keyspace.replayed(v)) {
            problems.push(e.into());
            continue;
        }
        for blob in keyspace.blobs() {
            for &s in &blob.segments {
                if !matches!(vol.descriptor(p, s), Ok(SegState::Sealed { .. })) {
                    problems.push(Problem {
                        what: "segment descriptor".into(),
                        offset: geo.descriptor(p, s),
                        detail: format!("segment {s} holds part of a current blob but is not sealed"),
                    });
                }
            }
            if let Err(e) = crate::blob::read_value(vol, p, blob, geo.partition_entry(p)) {
                problems.push(e.into());
            }
        }
    }
    problems
}
