//! The lease core: pure state, no I/O, no clock of its own.
//!
//! The shell feeds it requests and the current monotonic time in ms
//! (`handle`), wakes it at `poll_timeout` (`handle_timeout`), performs the
//! outputs it queues (`poll_output`) in order, and reports back when a fence
//! on the volume is done (`fence_done`). Because nothing here reads a clock
//! or a socket, transcript tests and seeded simulations drive it exactly.
//!
//! Words: a partition's **epoch** counts its grants; a grant carries it and a
//! release must present it, and the pushed map shows it (Redis's config
//! epoch). It is not the volume's **fence token**, the number a writer
//! presents to the volume, which a claim and a fence (PREEMPT) raise there.
//! A named lease has epochs of its own. A **slot** is always a Redis hash
//! slot.
//!
//! Rules:
//! * **Fence first, grant second.** A partition whose owner's session expired
//!   or closed goes to `Fencing` and is granted again only after the shell
//!   has PREEMPTed that owner's key on the volume and called `fence_done`.
//! * **Epochs strictly increase** per partition and per lease name, across
//!   restarts (they are persisted before the grant that uses them is sent:
//!   `Persist` is queued ahead of the grants it covers).
//! * **Planned moves** never wait for a lease: the owner is asked to release
//!   (`Revoke`), and its `Release` lets the target be granted at once. An
//!   owner that does not release within `revoke_timeout` is treated as failed.
//! * After a restart, holders from the persisted map keep their partitions
//!   if they reconnect with the same key within `restart_grace`; otherwise
//!   their keys are fenced and the partitions reassigned.
//! * **A fenced key gets nothing**: a session's key is never granted a
//!   partition after the core asked for its fence, and no two live
//!   incarnations share a key.
//!
//! These rules are checked with plain `assert!`s, on in release builds: where
//! a rule is established (`fence_done`, `release`, `expire_session`,
//! `register`, when a `Persist` is taken) and where it is relied on (`grant`,
//! a reclaim, when a `Grant` is taken, `persisted`, `cluster_map`). A failed
//! check is a bug in the lock manager, never a reaction to its input.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::Timeouts;

/// Milliseconds on the lock manager's monotonic clock.
pub type Millis = u64;

/// Named leases: names are 1..=48 bytes, and at most 1024 distinct names
/// are ever used per volume (their epochs are kept forever, and must fit the
/// lock manager's area on the volume).
pub const NAMED_LEASE_NAME_BYTES_MAX: usize = 48;
pub const NAMED_LEASES_MAX: usize = 1024;

/// Expired servers `status` keeps showing (as not alive).
pub const DEPARTED_SHOWN_MAX: usize = 64;

/// Named-lease epochs reserved per persisted high-water mark.
pub const NAMED_EPOCH_BLOCK: u64 = 1024;

/// Hash slots of the Redis Cluster protocol.
pub const SLOTS: u32 = 16384;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// Who a session is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Stable server name (`--id`).
    pub server: String,
    /// This incarnation's reservation key on the volume.
    pub key: u64,
    /// RESP address clients are sent to.
    pub addr: String,
    pub pid: u32,
    /// Whether it hosts hot standbys of other servers' partitions.
    pub standby: bool,
    /// Whether it sends `StandbyReport`s: then only a standby it reported
    /// synced is moved to warm, and no cold move goes to it by rebalance.
    pub reports_standbys: bool,
    /// The partitions it keeps a hot standby of right now (a server coming
    /// to a lock manager that took over, or restarted, keeps that placement
    /// instead of rebuilding standbys elsewhere from their logs).
    pub keeps: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Register(ServerInfo),
    Heartbeat {
        session: SessionId,
    },
    /// Give a partition back (after a `Revoke`, or on shutdown).
    Release {
        session: SessionId,
        partition: u32,
        epoch: u64,
    },
    /// The session's connection closed.
    Disconnect {
        session: SessionId,
    },
    AcquireNamed {
        session: SessionId,
        name: String,
    },
    ReleaseNamed {
        session: SessionId,
        name: String,
    },
    Move {
        partition: u32,
        server: String,
    },
    Drain {
        server: String,
    },
    Rebalance,
    /// The owner was asked to give `partition` back while it is still
    /// recovering it (a claim reads the whole log when there is no hot
    /// standby): it will release as soon as that is done. The move's deadline
    /// becomes `revoke_cap` instead of `revoke_timeout`.
    Claiming {
        session: SessionId,
        partition: u32,
        epoch: u64,
    },
    /// How the hot standbys the session keeps stand (sent every few
    /// heartbeats; `admin status` shows it). Changes nothing else.
    StandbyReport {
        session: SessionId,
        standbys: Vec<StandbyLag>,
    },
    /// The owner serves `partition` at `epoch` now (claimed and routed):
    /// the last step of its handover's timeline. Changes nothing else.
    Served {
        session: SessionId,
        partition: u32,
        epoch: u64,
    },
}

/// One hot standby as its server last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyLag {
    pub partition: u32,
    /// Its index matches the owner's published head as of its last poll.
    pub synced: bool,
    /// Bytes of published log not applied yet at that poll.
    pub lag_bytes: u64,
    /// Milliseconds since it last matched the head.
    pub stale_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Registered {
        session: SessionId,
    },
    Ack,
    /// The session is unknown or expired: the server must stop serving and register anew.
    SessionExpired,
    /// The lease on the name is the session's, at this epoch of the name.
    NamedGranted {
        epoch: u64,
    },
    NamedHeld {
        holder: String,
    },
    /// An admin operation was accepted; `moves` planned moves started.
    Accepted {
        moves: u32,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    UnknownPartition,
    UnknownServer,
    Busy,
    NoTarget,
    /// A release named an epoch the partition is no longer at.
    StaleEpoch,
    /// The key was fenced: register as a new incarnation with a new key.
    KeyFenced,
    /// The request itself is malformed (a name too long or empty); retrying it won't help.
    InvalidArgument,
    /// A fixed limit is reached (see the constants in this module).
    LimitExceeded,
}

/// Work for the shell, to be performed in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// Write `persisted()` to the volume before performing later outputs.
    Persist,
    /// PREEMPT this key on the volume (which raises the fence token of every
    /// partition it owns there), then call `fence_done(key)`.
    Fence { key: u64 },
    /// Tell the session it owns the partition with this epoch.
    Grant { session: SessionId, partition: u32, epoch: u64 },
    /// Ask the session to release the partition (planned move).
    Revoke { session: SessionId, partition: u32 },
    /// Tell the session it is expired and close its connection.
    Expire { session: SessionId },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionState {
    Unowned,
    Owned {
        session: SessionId,
    },
    /// Revoke sent; waiting for the owner's release until `deadline`.
    Moving {
        session: SessionId,
        target: Option<String>,
        deadline: Millis,
    },
    /// Waiting for the volume fence of `key`.
    Fencing {
        key: u64,
    },
    /// Restored after a restart; `server`/`key` may reclaim until `until`.
    Orphaned {
        server: String,
        key: u64,
        until: Millis,
    },
}

#[derive(Clone, Debug)]
struct Partition {
    state: PartitionState,
    epoch: u64,
    /// The key of the last incarnation granted this partition that has not
    /// released it: until that key is fenced, it may still write. None when
    /// never granted, released cleanly, or persisted as unowned.
    holder_key: Option<u64>,
    /// The live session keeping a hot standby of it (never its owner).
    /// Not persisted: a restarted lock manager (or one that took over)
    /// adopts what the registering servers say they keep (`ServerInfo::keeps`).
    standby: Option<SessionId>,
    /// The last report of a standby of it: by whom, what, when. Shown only
    /// while that session is still its standby.
    standby_report: Option<(SessionId, StandbyLag, Millis)>,
}

#[derive(Clone, Debug)]
struct Session {
    info: ServerInfo,
    last_heartbeat: Millis,
    draining: bool,
}

/// Who holds a partition, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Holder {
    /// Granted to this incarnation (it may reclaim after a restart).
    Owner { server: String, key: u64 },
    /// Its owner's key is being fenced: a restarted lock manager must finish
    /// that fence before granting the partition again.
    Fencing { key: u64 },
}

/// What survives a lock-manager restart (stored on the volume by the shell).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// Per partition: its holder and its epoch (the last one granted).
    pub partitions: Vec<(Option<Holder>, u64)>,
    /// Per lease name: a high-water mark no epoch handed out exceeds.
    pub named_epoch_marks: BTreeMap<String, u64>,
}

#[derive(Clone, Debug)]
struct Named {
    holder: SessionId,
    epoch: u64,
}

/// Status for `admin status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub servers: Vec<ServerStatus>,
    pub partitions: Vec<PartitionStatus>,
    /// The lock managers of the volume (filled in by the shell, which reads
    /// their seats): which one is active, in which term.
    #[serde(default)]
    pub lockmgrs: Vec<LockmgrStatus>,
    /// The last ownership changes, oldest first (`admin events`).
    #[serde(default)]
    pub handovers: Vec<Handover>,
    /// This lock manager's clock when it answered (what the handovers' times count on).
    #[serde(default)]
    pub now_ms: Millis,
}

/// Why a partition changed hands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandoverCause {
    /// The owner's connection closed (its process died, say).
    ConnectionClosed,
    /// The owner's heartbeats stopped for a lease period.
    LeaseExpired,
    /// A planned move (admin move, drain, rebalance) whose owner did not
    /// release in time: it was fenced instead.
    ReleaseTimedOut,
    /// A planned move: the owner released, the target was granted.
    Move,
    /// The owner gave it back on its own (a stop).
    Released,
    /// The owner's server registered again as a new incarnation.
    Replaced,
    /// It had no owner (a new cluster, or the lock manager's restart).
    Unowned,
    /// Its owner was lost before this lock manager took over (the map
    /// it read was fencing it; why, it does not know).
    LostBeforeTakeover,
}

/// One ownership change, step by step, on the lock manager's clock (ms):
/// when the owner was lost (or the move asked), fenced on the volume (a
/// lost owner only), released (a move), granted, and first served by the
/// new owner (as it reports). Kept in memory only (the last
/// [`HANDOVERS_KEPT`]); a restarted lock manager starts a new list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub partition: u32,
    pub cause: HandoverCause,
    pub from: Option<String>,
    pub to: Option<String>,
    /// The grant's epoch, once granted.
    pub epoch: Option<u64>,
    pub start_ms: Millis,
    pub fenced_ms: Option<Millis>,
    pub released_ms: Option<Millis>,
    pub granted_ms: Option<Millis>,
    pub served_ms: Option<Millis>,
}

/// Ownership changes `status` shows.
pub const HANDOVERS_KEPT: usize = 128;

impl HandoverCause {
    /// Its name in metrics labels (`admin events` shows it with spaces).
    pub fn name(self) -> &'static str {
        match self {
            HandoverCause::ConnectionClosed => "connection_closed",
            HandoverCause::LeaseExpired => "lease_expired",
            HandoverCause::ReleaseTimedOut => "release_timed_out",
            HandoverCause::Move => "move",
            HandoverCause::Released => "released",
            HandoverCause::Replaced => "restarted",
            HandoverCause::Unowned => "unowned",
            HandoverCause::LostBeforeTakeover => "lost_before_takeover",
        }
    }
}

impl Handover {
    /// Each step's duration in ms, from the step before it (fence and
    /// release from the start, the grant from whichever of them came, the
    /// serving from the grant), and the total; None for a step not taken
    /// (yet). `admin events` and the metrics both show these.
    pub fn steps(&self) -> [(&'static str, Option<Millis>); 5] {
        let since = |from: Millis, at: Option<Millis>| at.map(|t| t.saturating_sub(from));
        let before_grant = self.fenced_ms.or(self.released_ms).unwrap_or(self.start_ms);
        [
            ("fence", since(self.start_ms, self.fenced_ms)),
            ("release", since(self.start_ms, self.released_ms)),
            ("grant", since(before_grant, self.granted_ms)),
            ("serve", since(self.granted_ms.unwrap_or(self.start_ms), self.served_ms)),
            ("total", since(self.start_ms, self.served_ms)),
        ]
    }
}

/// One lock manager of the volume, as its seat shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockmgrStatus {
    pub seat: u8,
    pub addr: String,
    pub pid: u32,
    pub active: bool,
    /// The term it is active in (0 for a standby).
    pub term: u32,
    /// False once its process is provably gone (its seat is free to reuse).
    pub alive: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub id: String,
    pub session: u64,
    pub addr: String,
    pub pid: u32,
    pub key: u64,
    pub alive: bool,
    pub draining: bool,
    pub last_heartbeat_ms_ago: u64,
    pub partitions: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub id: u32,
    pub owner: Option<String>,
    /// The partition's epoch, not the volume's fence token: the field (and
    /// its key in `admin status --json`) keeps its old name because the
    /// server crate and scripts read it.
    pub fence_token: u64,
    /// The first and last Redis hash slot of the partition.
    pub slots: [u32; 2],
    pub state: String,
    /// The server keeping its hot standby.
    pub standby: Option<String>,
    /// What that server last reported of the standby (None: nothing yet).
    #[serde(default)]
    pub standby_lag: Option<StandbyLagStatus>,
}

/// A standby's last report, as `admin status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyLagStatus {
    pub synced: bool,
    pub lag_bytes: u64,
    pub stale_ms: u64,
    pub reported_ms_ago: u64,
}

/// Who serves what, as every server must advertise it (the Redis Cluster slot
/// map). Pushed to every registered session whenever it changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Live servers, in session order.
    pub servers: Vec<MapServer>,
    /// Per partition: the index in `servers` of the server that serves it now
    /// (owned, or moving away but not yet released), or None (no owner yet).
    pub owners: Vec<Option<u32>>,
    /// Per partition: its epoch, the last one granted (Redis's config epoch).
    /// Named `tokens` from before the word was split; the server crate reads it.
    pub tokens: Vec<u64>,
    /// Per partition: the index in `servers` of the server keeping its hot
    /// standby (a replica, in Redis Cluster's words), or None.
    pub standbys: Vec<Option<u32>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapServer {
    /// The server's stable name (`--id`).
    pub id: String,
    /// Where clients reach it.
    pub addr: String,
}

/// The first and last hash slot of `partition` out of `partitions`.
pub fn slot_range(partition: u32, partitions: u32) -> [u32; 2] {
    let first = (u64::from(partition) * u64::from(SLOTS) / u64::from(partitions)) as u32;
    let end = (u64::from(partition + 1) * u64::from(SLOTS) / u64::from(partitions)) as u32;
    [first, end - 1]
}

#[derive(Debug)]
pub struct Core {
    timeouts: Timeouts,
    partitions: Vec<Partition>,
    sessions: BTreeMap<SessionId, Session>,
    next_session: u64,
    named: BTreeMap<String, Named>,
    /// Last epoch handed out per lease name.
    named_epochs: BTreeMap<String, u64>,
    /// Persisted high-water marks: epochs up to these need no disk write.
    named_hwm: BTreeMap<String, u64>,
    fencing_keys: BTreeSet<u64>,
    /// Recently expired sessions, shown by `status` as not alive.
    departed: VecDeque<(SessionId, ServerInfo, Millis)>,
    /// Keys fenced by this incarnation of the lock manager.
    fenced_keys: BTreeSet<u64>,
    outputs: VecDeque<Output>,
    /// The latest `now` any entry point was given (the timeline's clock).
    clock: Millis,
    /// Per partition, its handover in progress (until served or superseded).
    handing_over: BTreeMap<u32, Handover>,
    /// Finished (or superseded) handovers, oldest first.
    handovers: VecDeque<Handover>,
    /// Handovers served since the shell last took them (`take_served`), at most HANDOVERS_KEPT.
    served: VecDeque<Handover>,
    /// Per partition, the epoch in the last map handed to the shell to
    /// persist (or restored from): what may be revealed, and the floor for
    /// every new grant.
    durable_epochs: Vec<u64>,
    /// Per lease name, the high-water mark in that map.
    durable_named_hwm: BTreeMap<String, u64>,
}

fn ms(d: std::time::Duration) -> Millis {
    d.as_millis() as Millis
}

impl Core {
    pub fn new(timeouts: Timeouts, partitions: u32) -> Core {
        Core {
            timeouts,
            partitions: (0..partitions)
                .map(|_| Partition { state: PartitionState::Unowned, epoch: 0, holder_key: None, standby: None, standby_report: None })
                .collect(),
            sessions: BTreeMap::new(),
            next_session: 1,
            named: BTreeMap::new(),
            named_epochs: BTreeMap::new(),
            named_hwm: BTreeMap::new(),
            fencing_keys: BTreeSet::new(),
            departed: VecDeque::new(),
            fenced_keys: BTreeSet::new(),
            outputs: VecDeque::new(),
            clock: 0,
            handing_over: BTreeMap::new(),
            handovers: VecDeque::new(),
            served: VecDeque::new(),
            durable_epochs: vec![0; partitions as usize],
            durable_named_hwm: BTreeMap::new(),
        }
    }

    /// A core restarted from persisted state at `now`: recorded holders may
    /// reclaim within `restart_grace`; nothing they held is granted before.
    /// `partitions` comes from the volume's geometry, not from the snapshot,
    /// which is empty if the previous incarnation never persisted anything.
    pub fn restore(timeouts: Timeouts, partitions: u32, persisted: &Persisted, now: Millis) -> Core {
        let mut core = Core::new(timeouts, partitions);
        core.clock = now;
        let until = now + ms(timeouts.restart_grace);
        let mut fence = BTreeSet::new();
        // Partitions whose holder was being fenced when the map was written:
        // their handover started before this lock manager (its cause unknown
        // here; the holder's name is not in the map).
        let mut lost = Vec::new();
        for (i, (p, (holder, epoch))) in core.partitions.iter_mut().zip(&persisted.partitions).enumerate() {
            p.epoch = *epoch;
            match holder {
                Some(Holder::Owner { server, key }) => {
                    p.state = PartitionState::Orphaned { server: server.clone(), key: *key, until };
                    p.holder_key = Some(*key);
                }
                Some(Holder::Fencing { key }) => {
                    p.state = PartitionState::Fencing { key: *key };
                    p.holder_key = Some(*key);
                    fence.insert(*key);
                    lost.push(i);
                }
                // Persisted unowned: released cleanly or fenced before the
                // map was written (a partition becomes unowned only so).
                None => {}
            }
        }
        core.durable_epochs = core.partitions.iter().map(|p| p.epoch).collect();
        for i in lost {
            core.handover_starts(i, HandoverCause::LostBeforeTakeover, None, None);
        }
        for key in fence {
            core.request_fence(key);
        }
        // Resume above every mark: epochs handed out before the restart were
        // at most the mark, so the next ones are strictly greater.
        core.named_epochs = persisted.named_epoch_marks.clone();
        core.named_hwm = persisted.named_epoch_marks.clone();
        core.durable_named_hwm = persisted.named_epoch_marks.clone();
        core
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// A partition's state and epoch.
    pub fn partition_state(&self, partition: u32) -> Option<(&PartitionState, u64)> {
        self.partitions.get(partition as usize).map(|p| (&p.state, p.epoch))
    }

    pub fn session_info(&self, session: SessionId) -> Option<&ServerInfo> {
        self.sessions.get(&session).map(|s| &s.info)
    }

    /// The next output for the shell. The shell writes `persisted()` when it
    /// takes a `Persist`, before it performs anything that follows.
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.outputs.pop_front()?;
        match &out {
            Output::Persist => self.note_persisted(),
            // Durable before visible: the map handed out at the last Persist
            // already carries this epoch (or a later one).
            Output::Grant { partition, epoch, .. } => {
                let durable = self.durable_epochs[*partition as usize];
                assert!(*epoch <= durable, "p{partition}: grant of epoch {epoch} revealed, but the persisted map has only {durable}");
            }
            _ => {}
        }
        Some(out)
    }

    /// The shell is persisting `persisted()` now: remember what it holds.
    /// Epochs and named-lease marks only rise from one map to the next.
    fn note_persisted(&mut self) {
        for (i, (p, durable)) in self.partitions.iter().zip(&mut self.durable_epochs).enumerate() {
            assert!(p.epoch >= *durable, "p{i}: epoch {} would replace the persisted {durable}", p.epoch);
            *durable = p.epoch;
        }
        for (name, hwm) in &self.named_hwm {
            let durable = self.durable_named_hwm.get(name).copied().unwrap_or(0);
            assert!(*hwm >= durable, "lease {name:?}: mark {hwm} would replace the persisted {durable}");
        }
        assert!(self.durable_named_hwm.keys().all(|name| self.named_hwm.contains_key(name)), "a persisted lease name was dropped");
        self.durable_named_hwm.clone_from(&self.named_hwm);
    }

    /// What to write to the volume on `Output::Persist`.
    pub fn persisted(&self) -> Persisted {
        Persisted {
            partitions: self
                .partitions
                .iter()
                .map(|p| {
                    let owner = match &p.state {
                        PartitionState::Owned { session } | PartitionState::Moving { session, .. } => {
                            // Persisting a holder as absent would let a restarted
                            // lock manager grant the partition without a fence.
                            let s = self.sessions.get(session).unwrap_or_else(|| panic!("partition held by {session}, which is gone"));
                            Some(Holder::Owner { server: s.info.server.clone(), key: s.info.key })
                        }
                        PartitionState::Orphaned { server, key, .. } => Some(Holder::Owner { server: server.clone(), key: *key }),
                        PartitionState::Fencing { key } => Some(Holder::Fencing { key: *key }),
                        PartitionState::Unowned => None,
                    };
                    (owner, p.epoch)
                })
                .collect(),
            named_epoch_marks: self.named_hwm.clone(),
        }
    }

    /// The next time `handle_timeout` has work.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let lease = ms(self.timeouts.lease_timeout);
        let sessions = self.sessions.values().map(|s| s.last_heartbeat + lease);
        let parts = self.partitions.iter().filter_map(|p| match p.state {
            PartitionState::Moving { deadline, .. } => Some(deadline),
            PartitionState::Orphaned { until, .. } => Some(until),
            _ => None,
        });
        sessions.chain(parts).min()
    }

    pub fn handle_timeout(&mut self, now: Millis) {
        self.clock = self.clock.max(now);
        let lease = ms(self.timeouts.lease_timeout);
        let expired: Vec<SessionId> = self.sessions.iter().filter(|(_, s)| now >= s.last_heartbeat + lease).map(|(id, _)| *id).collect();
        for id in expired {
            self.expire_session(id, HandoverCause::LeaseExpired);
        }
        // Owners that did not release in time are treated as failed.
        let stuck: BTreeSet<SessionId> = self
            .partitions
            .iter()
            .filter_map(|p| match p.state {
                PartitionState::Moving { session, deadline, .. } if now >= deadline => Some(session),
                _ => None,
            })
            .collect();
        for id in stuck {
            self.expire_session(id, HandoverCause::ReleaseTimedOut);
        }
        let mut fence = BTreeSet::new();
        let mut lost = Vec::new();
        for (i, p) in self.partitions.iter_mut().enumerate() {
            if let PartitionState::Orphaned { key, until, ref server } = p.state
                && now >= until
            {
                assert_eq!(p.holder_key, Some(key), "an orphaned partition is fenced under its holder's key");
                lost.push((i, server.clone()));
                p.state = PartitionState::Fencing { key };
                fence.insert(key);
            }
        }
        // Its holder did not come back to a restarted lock manager.
        for (i, server) in lost {
            self.handover_starts(i, HandoverCause::LeaseExpired, Some(server), None);
        }
        if !fence.is_empty() {
            self.outputs.push_back(Output::Persist);
        }
        for key in fence {
            self.request_fence(key);
        }
        self.assign();
        self.place_standbys();
    }

    /// The shell finished PREEMPTing `key` on the volume.
    pub fn fence_done(&mut self, now: Millis, key: u64) {
        self.clock = self.clock.max(now);
        self.fencing_keys.remove(&key);
        self.fenced_keys.insert(key);
        for (i, p) in self.partitions.iter_mut().enumerate() {
            if p.state == (PartitionState::Fencing { key }) {
                if let Some(h) = self.handing_over.get_mut(&(i as u32)) {
                    h.fenced_ms.get_or_insert(self.clock);
                }
                // Fence first: the only incarnation that may still write is
                // the one just fenced; `grant` checks this before it grants.
                assert_eq!(p.holder_key, Some(key), "a partition is fenced under its holder's key");
                p.state = PartitionState::Unowned;
            }
        }
        self.assign();
        self.place_standbys();
    }

    fn request_fence(&mut self, key: u64) {
        // A fenced key gets nothing again: no live session may have it
        // (its own session is gone by now; `register` refuses it from now on).
        assert!(self.sessions.values().all(|s| s.info.key != key), "key {key:#x} fenced while a live session has it");
        if self.fencing_keys.insert(key) {
            self.outputs.push_back(Output::Fence { key });
        }
    }

    /// The handovers served since the last call (for the shell's metrics).
    pub fn take_served(&mut self) -> Vec<Handover> {
        self.served.drain(..).collect()
    }

    /// Start the timeline of `partition`'s handover; one still in progress
    /// (never served) is kept as it stands.
    fn handover_starts(&mut self, partition: usize, cause: HandoverCause, from: Option<String>, to: Option<String>) {
        let h = Handover {
            partition: partition as u32,
            cause,
            from,
            to,
            epoch: None,
            start_ms: self.clock,
            fenced_ms: None,
            released_ms: None,
            granted_ms: None,
            served_ms: None,
        };
        if let Some(old) = self.handing_over.insert(partition as u32, h) {
            self.handover_ends(old);
        }
    }

    fn handover_ends(&mut self, h: Handover) {
        if self.handovers.len() >= HANDOVERS_KEPT {
            self.handovers.pop_front();
        }
        self.handovers.push_back(h);
    }

    /// The owner `server` of `partition` is lost: a move of it in progress
    /// (not granted yet) becomes this loss, keeping its start; else a new one.
    fn owner_lost(&mut self, partition: usize, server: &str, cause: HandoverCause) {
        if let Some(h) = self.handing_over.get_mut(&(partition as u32))
            && h.granted_ms.is_none()
            && h.from.as_deref() == Some(server)
        {
            h.cause = cause;
            return;
        }
        self.handover_starts(partition, cause, Some(server.to_owned()), None);
    }

    fn expire_session(&mut self, id: SessionId, cause: HandoverCause) {
        let Some(session) = self.sessions.remove(&id) else { return };
        let key = session.info.key;
        self.departed.retain(|(_, info, _)| info.server != session.info.server);
        if self.departed.len() >= DEPARTED_SHOWN_MAX {
            self.departed.pop_front();
        }
        self.departed.push_back((id, session.info.clone(), session.last_heartbeat));
        let mut lost = Vec::new();
        for (i, p) in self.partitions.iter_mut().enumerate() {
            if let PartitionState::Owned { session } | PartitionState::Moving { session, .. } = p.state
                && session == id
            {
                assert_eq!(p.holder_key, Some(key), "{id} holds a partition granted under another key");
                p.state = PartitionState::Fencing { key };
                lost.push(i);
            }
        }
        let owned_any = !lost.is_empty();
        for i in lost {
            self.owner_lost(i, &session.info.server, cause);
        }
        // Nothing names the session any more (persisted() and cluster_map() rely on it).
        assert!(self.partitions.iter().all(|p| Self::serving(&p.state) != Some(id)), "{id} expired but still holds a partition");
        self.named.retain(|_, n| n.holder != id);
        self.outputs.push_back(Output::Expire { session: id });
        if owned_any {
            self.outputs.push_back(Output::Persist);
        }
        // Fence even without partitions: the key must not write again.
        self.request_fence(key);
    }

    /// Partitions each live session owns or is about to own, in one pass: a
    /// partition on the move counts at its target, not at its source. Every
    /// placement decision starts from this and updates it as it goes, so
    /// assigning or moving many partitions costs O(partitions + moves x
    /// sessions), never a scan per partition per session.
    fn loads(&self) -> BTreeMap<SessionId, usize> {
        let mut loads: BTreeMap<SessionId, usize> = self.sessions.keys().map(|id| (*id, 0)).collect();
        let by_name: BTreeMap<&str, SessionId> = self.sessions.iter().map(|(id, s)| (s.info.server.as_str(), *id)).collect();
        for p in &self.partitions {
            let holder = match &p.state {
                PartitionState::Owned { session } => Some(*session),
                PartitionState::Moving { target, .. } => target.as_deref().and_then(|t| by_name.get(t).copied()),
                _ => None,
            };
            if let Some(c) = holder.and_then(|h| loads.get_mut(&h)) {
                *c += 1;
            }
        }
        loads
    }

    /// Sessions that may be granted partitions: the ones not draining, or,
    /// when every live session is draining, all of them (a drained server
    /// that is the last one alive serves rather than leave partitions unowned).
    fn candidates(&self) -> Vec<SessionId> {
        let active: Vec<SessionId> = self.sessions.iter().filter(|(_, s)| !s.draining).map(|(id, _)| *id).collect();
        if active.is_empty() { self.sessions.keys().copied().collect() } else { active }
    }

    /// The least loaded candidate (ties: lowest session id).
    fn pick(loads: &BTreeMap<SessionId, usize>, candidates: &[SessionId], exclude: Option<SessionId>) -> Option<SessionId> {
        candidates.iter().copied().filter(|c| Some(*c) != exclude).min_by_key(|c| (loads.get(c).copied().unwrap_or(0), *c))
    }

    fn least_loaded(&self, exclude: Option<SessionId>) -> Option<SessionId> {
        Self::pick(&self.loads(), &self.candidates(), exclude)
    }

    fn session_of(&self, server: &str) -> Option<SessionId> {
        self.sessions.iter().find(|(_, s)| s.info.server == server).map(|(id, _)| *id)
    }

    /// The partition's hot standby, if it may take the partition over now
    /// (a candidate, and not `exclude`).
    fn standby_of(&self, partition: usize, candidates: &[SessionId], exclude: Option<SessionId>) -> Option<SessionId> {
        self.partitions[partition].standby.filter(|s| Some(*s) != exclude && candidates.contains(s))
    }

    /// Give every partition with a serving owner a hot standby on another
    /// live server that hosts standbys, balanced: a standby stays where it
    /// is (it costs a full read to build one) unless its server is gone,
    /// draining, or became the owner; then the server with the fewest
    /// standbys (ties: fewest partitions, lowest session) gets it; and while
    /// one server keeps two more than another, one moves. O(partitions x
    /// servers) at worst.
    fn place_standbys(&mut self) {
        let hosts: Vec<SessionId> = self.sessions.iter().filter(|(_, s)| s.info.standby && !s.draining).map(|(id, _)| *id).collect();
        let owner_of = |p: &Partition| match &p.state {
            PartitionState::Owned { session } | PartitionState::Moving { session, .. } => Some(*session),
            _ => None,
        };
        let mut counts: BTreeMap<SessionId, usize> = hosts.iter().map(|h| (*h, 0)).collect();
        for p in &mut self.partitions {
            let owner = owner_of(p);
            // Unowned or fencing: the standby is kept, to be granted the partition.
            if p.standby.is_some_and(|s| Some(s) == owner || !counts.contains_key(&s)) {
                p.standby = None;
            }
            if let Some(c) = p.standby.and_then(|s| counts.get_mut(&s)) {
                *c += 1;
            }
        }
        let loads = self.loads();
        let rank = |counts: &BTreeMap<SessionId, usize>, h: SessionId| (counts[&h], loads.get(&h).copied().unwrap_or(0), h);
        for i in 0..self.partitions.len() {
            let Some(owner) = owner_of(&self.partitions[i]) else { continue };
            if self.partitions[i].standby.is_some() {
                continue;
            }
            if let Some(h) = hosts.iter().copied().filter(|h| *h != owner).min_by_key(|h| rank(&counts, *h)) {
                self.partitions[i].standby = Some(h);
                *counts.get_mut(&h).expect("a host") += 1;
            }
        }
        // Even out: move one standby at a time from the busiest host to an
        // idler one that does not own the partition. Only standbys of owned
        // partitions move: an unowned one is about to be granted to its
        // standby, the one server that holds it warm.
        for _ in 0..self.partitions.len() {
            let Some(&max) = hosts.iter().max_by_key(|h| (counts[h], std::cmp::Reverse(**h))) else { break };
            let mut idle: Vec<SessionId> = hosts.iter().copied().filter(|h| counts[h] + 1 < counts[&max]).collect();
            idle.sort_by_key(|h| rank(&counts, *h));
            let found = idle.iter().find_map(|&min| {
                (0..self.partitions.len())
                    .rev()
                    .find(|&i| {
                        let p = &self.partitions[i];
                        p.standby == Some(max) && matches!(p.state, PartitionState::Owned { session } if session != min)
                    })
                    .map(|i| (i, min))
            });
            let Some((i, min)) = found else { break };
            self.partitions[i].standby = Some(min);
            *counts.get_mut(&max).expect("a host") -= 1;
            *counts.get_mut(&min).expect("a host") += 1;
        }
        // A report describes the standby its sender kept: one placed anew
        // (elsewhere, or again) starts without one.
        for p in &mut self.partitions {
            if p.standby_report.is_some_and(|(s, _, _)| p.standby != Some(s)) {
                p.standby_report = None;
            }
        }
        debug_assert!(self.partitions.iter().all(|p| p.standby.is_none() || p.standby != owner_of(p)), "a standby on its own owner");
    }

    /// Whether `session` keeps a synced hot standby of partition `i`, as far
    /// as we know: its last report since the standby was placed says so, or
    /// it never reports.
    fn synced_standby(&self, i: usize, session: SessionId) -> bool {
        let p = &self.partitions[i];
        p.standby == Some(session)
            && match self.sessions.get(&session) {
                // A server that reports: synced once it said so; one that
                // does not (older, or a simulation) is taken at its word.
                Some(s) if s.info.reports_standbys => p.standby_report.is_some_and(|(s, r, _)| s == session && r.synced),
                Some(_) => true,
                None => false,
            }
    }

    /// Grant every unowned partition to the least loaded live session.
    fn assign(&mut self) {
        if !self.partitions.iter().any(|p| p.state == PartitionState::Unowned) {
            return;
        }
        let mut loads = self.loads();
        let candidates = self.candidates();
        let mut grants = Vec::new();
        for i in 0..self.partitions.len() {
            if self.partitions[i].state != PartitionState::Unowned {
                continue;
            }
            // Its hot standby first: a takeover that reads only the lag.
            let Some(to) = self.standby_of(i, &candidates, None).or_else(|| Self::pick(&loads, &candidates, None)) else { break };
            *loads.entry(to).or_default() += 1;
            grants.push(self.grant(i, to));
        }
        if !grants.is_empty() {
            self.outputs.push_back(Output::Persist);
            self.outputs.extend(grants);
        }
    }

    fn grant_to(&mut self, partition: usize, to: SessionId) {
        let grant = self.grant(partition, to);
        self.outputs.push_back(Output::Persist);
        self.outputs.push_back(grant);
    }

    /// The one place a partition gets a new owner and epoch; the caller
    /// queues a `Persist` ahead of the returned output.
    fn grant(&mut self, partition: usize, to: SessionId) -> Output {
        let key = self.sessions[&to].info.key;
        assert!(!self.key_fenced(key), "p{partition}: grant to fenced key {key:#x}");
        let durable = self.durable_epochs[partition];
        let p = &mut self.partitions[partition];
        // Fence first, grant second: only an unowned partition, and only if
        // whoever held it last released it or has been fenced.
        assert_eq!(p.state, PartitionState::Unowned, "p{partition}: grant of a partition that is not unowned");
        assert!(
            p.holder_key.is_none_or(|k| self.fenced_keys.contains(&k)),
            "p{partition}: grant while its last holder {:#x} is neither released nor fenced",
            p.holder_key.unwrap_or(0)
        );
        p.epoch += 1;
        // Above every epoch ever persisted, so above every epoch ever revealed.
        assert!(p.epoch > durable, "p{partition}: new epoch {} not above the persisted {durable}", p.epoch);
        p.state = PartitionState::Owned { session: to };
        p.holder_key = Some(key);
        let epoch = p.epoch;
        let name = self.sessions[&to].info.server.clone();
        if self.handing_over.get(&(partition as u32)).is_none_or(|h| h.granted_ms.is_some()) {
            self.handover_starts(partition, HandoverCause::Unowned, None, None);
        }
        let h = self.handing_over.get_mut(&(partition as u32)).expect("just started");
        (h.to, h.epoch, h.granted_ms) = (Some(name), Some(epoch), Some(self.clock));
        Output::Grant { session: to, partition: partition as u32, epoch }
    }

    /// The session a partition's clients are served by (owned, or moving away).
    fn serving(state: &PartitionState) -> Option<SessionId> {
        match state {
            PartitionState::Owned { session } | PartitionState::Moving { session, .. } => Some(*session),
            _ => None,
        }
    }

    fn start_move(&mut self, now: Millis, partition: usize, target: SessionId) -> bool {
        let target_name = self.sessions[&target].info.server.clone();
        match self.partitions[partition].state {
            PartitionState::Owned { session } if session == target => false,
            PartitionState::Owned { session } => {
                let deadline = now + ms(self.timeouts.revoke_timeout);
                let from = self.sessions.get(&session).map(|s| s.info.server.clone());
                self.handover_starts(partition, HandoverCause::Move, from, Some(target_name.clone()));
                self.partitions[partition].state = PartitionState::Moving { session, target: Some(target_name), deadline };
                self.outputs.push_back(Output::Revoke { session, partition: partition as u32 });
                true
            }
            PartitionState::Unowned => {
                self.grant_to(partition, target);
                true
            }
            _ => false,
        }
    }

    fn error(code: ErrorCode, message: String) -> Response {
        Response::Error { code, message }
    }

    pub fn handle(&mut self, now: Millis, req: Request) -> Response {
        self.clock = self.clock.max(now);
        // Heartbeats (the bulk of all requests), named leases and claiming
        // notices change no owner, session or draining flag: no placement.
        let places = !matches!(
            req,
            Request::Heartbeat { .. }
                | Request::AcquireNamed { .. }
                | Request::ReleaseNamed { .. }
                | Request::Claiming { .. }
                | Request::StandbyReport { .. }
                | Request::Served { .. }
        );
        let response = self.handle_request(now, req);
        if places {
            self.place_standbys();
        }
        response
    }

    fn handle_request(&mut self, now: Millis, req: Request) -> Response {
        match req {
            Request::Register(info) => self.register(now, info),
            Request::Heartbeat { session } => match self.sessions.get_mut(&session) {
                Some(s) => {
                    s.last_heartbeat = now;
                    Response::Ack
                }
                None => Response::SessionExpired,
            },
            Request::Disconnect { session } => {
                self.expire_session(session, HandoverCause::ConnectionClosed);
                self.assign();
                Response::Ack
            }
            Request::Release { session, partition, epoch } => self.release(now, session, partition, epoch),
            Request::AcquireNamed { session, name } => self.acquire_named(session, name),
            Request::ReleaseNamed { session, name } => {
                if self.named.get(&name).is_some_and(|n| n.holder == session) {
                    self.named.remove(&name);
                }
                Response::Ack
            }
            Request::Move { partition, server } => self.move_partition(now, partition, &server),
            Request::Drain { server } => self.drain(now, &server),
            Request::Rebalance => self.rebalance(now),
            Request::Claiming { session, partition, epoch } => self.claiming(now, session, partition, epoch),
            Request::Served { session, partition, epoch } => {
                if !self.sessions.contains_key(&session) {
                    return Response::SessionExpired;
                }
                let is_owner = self.partitions.get(partition as usize).is_some_and(|p| {
                    p.epoch == epoch && matches!(p.state, PartitionState::Owned { session: s } | PartitionState::Moving { session: s, .. } if s == session)
                });
                if is_owner && let Some(h) = self.handing_over.remove(&partition) {
                    if h.epoch == Some(epoch) {
                        let h = Handover { served_ms: Some(now), ..h };
                        if self.served.len() >= HANDOVERS_KEPT {
                            self.served.pop_front();
                        }
                        self.served.push_back(h.clone());
                        self.handover_ends(h);
                    } else {
                        self.handing_over.insert(partition, h);
                    }
                }
                Response::Ack
            }
            Request::StandbyReport { session, standbys } => {
                if !self.sessions.contains_key(&session) {
                    return Response::SessionExpired;
                }
                for r in standbys {
                    if let Some(p) = self.partitions.get_mut(r.partition as usize)
                        && p.standby == Some(session)
                    {
                        p.standby_report = Some((session, r, now));
                    }
                }
                Response::Ack
            }
        }
    }

    /// A new incarnation registers: it replaces an older session of the same
    /// server, reclaims what the persisted map says it held, and joins the
    /// assignment.
    fn register(&mut self, now: Millis, mut info: ServerInfo) -> Response {
        if self.key_fenced(info.key) {
            return Self::error(ErrorCode::KeyFenced, format!("key {:#x} was fenced; register with a new key", info.key));
        }
        // A key names one incarnation of one server: another server's key is refused.
        if let Some(other) = self.key_used_elsewhere(info.key, &info.server) {
            return Self::error(ErrorCode::InvalidArgument, format!("key {:#x} belongs to server {other:?}", info.key));
        }
        // The same incarnation on a new connection (it lost sight of us, or
        // went looking for the active lock manager, and came back): the
        // session moves and nothing is fenced. What may have been lost in
        // flight on the old connection is said again (a grant the server
        // already serves is a no-op for it).
        if let Some((&id, s)) = self.sessions.iter_mut().find(|(_, s)| s.info.server == info.server && s.info.key == info.key) {
            s.last_heartbeat = now;
            for (i, p) in self.partitions.iter().enumerate() {
                match p.state {
                    PartitionState::Owned { session } if session == id => {
                        self.outputs.push_back(Output::Grant { session: id, partition: i as u32, epoch: p.epoch });
                    }
                    PartitionState::Moving { session, .. } if session == id => {
                        self.outputs.push_back(Output::Revoke { session: id, partition: i as u32 });
                    }
                    _ => {}
                }
            }
            return Response::Registered { session: id };
        }
        // A new incarnation of a server replaces the old one.
        let old: Vec<SessionId> = self.sessions.iter().filter(|(_, s)| s.info.server == info.server).map(|(id, _)| *id).collect();
        for id in old {
            self.expire_session(id, HandoverCause::Replaced);
        }
        // That fences the old session's key; if it is this one (the same
        // incarnation registering again before its old connection was seen to
        // close), it must not come back under a fenced key either.
        if self.key_fenced(info.key) {
            return Self::error(ErrorCode::KeyFenced, format!("key {:#x} was fenced; register with a new key", info.key));
        }
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.departed.retain(|(_, i, _)| i.server != info.server);
        let key = info.key;
        let server = info.server.clone();
        // What it keeps matters once, now (the session keeps no copy).
        let keeps = if info.standby { std::mem::take(&mut info.keeps) } else { Vec::new() };
        self.sessions.insert(id, Session { info, last_heartbeat: now, draining: false });
        // Reclaim what the persisted map says this incarnation held (under a
        // key that, as checked above, is not fenced).
        assert!(!self.key_fenced(key), "{id} registered under fenced key {key:#x}");
        let mut reclaimed = Vec::new();
        for (i, p) in self.partitions.iter_mut().enumerate() {
            if let PartitionState::Orphaned { server: s, key: k, .. } = &p.state
                && *s == server
                && *k == key
            {
                // A reclaim reveals nothing new: the persisted grant, to the same key.
                assert!(p.holder_key == Some(key) && p.epoch == self.durable_epochs[i], "p{i}: reclaim differs from the persisted grant");
                p.state = PartitionState::Owned { session: id };
                reclaimed.push(Output::Grant { session: id, partition: i as u32, epoch: p.epoch });
            }
        }
        self.outputs.extend(reclaimed);
        // Adopt the standbys it keeps where none is placed (a placement the
        // previous lock manager made; it is volatile, the servers hold it).
        for p in keeps {
            if let Some(part) = self.partitions.get_mut(p as usize)
                && part.standby.is_none()
                && !matches!(part.state, PartitionState::Owned { session } | PartitionState::Moving { session, .. } if session == id)
                && !matches!(&part.state, PartitionState::Orphaned { key: k, .. } if *k == key)
            {
                part.standby = Some(id);
            }
        }
        self.assign();
        Response::Registered { session: id }
    }

    /// Whether `key` is fenced or being fenced by this lock manager.
    fn key_fenced(&self, key: u64) -> bool {
        self.fencing_keys.contains(&key) || self.fenced_keys.contains(&key)
    }

    /// Another server than `server` whose live session or persisted holder has `key`.
    fn key_used_elsewhere(&self, key: u64, server: &str) -> Option<&str> {
        let live = self.sessions.values().map(|s| (s.info.key, s.info.server.as_str()));
        let orphaned = self.partitions.iter().filter_map(|p| match &p.state {
            PartitionState::Orphaned { server, key, .. } => Some((*key, server.as_str())),
            _ => None,
        });
        live.chain(orphaned).find(|(k, s)| *k == key && *s != server).map(|(_, s)| s)
    }

    /// Give a partition back: the owner (or the source of a planned move)
    /// released it on the volume, so it may be granted at once.
    fn release(&mut self, now: Millis, session: SessionId, partition: u32, epoch: u64) -> Response {
        let Some(p) = self.partitions.get(partition as usize) else {
            return Self::error(ErrorCode::UnknownPartition, format!("no partition {partition}"));
        };
        if !self.sessions.contains_key(&session) {
            return Response::SessionExpired;
        }
        if p.epoch != epoch {
            return Self::error(ErrorCode::StaleEpoch, format!("partition {partition} is at epoch {}, not {epoch}", p.epoch));
        }
        let target = match &p.state {
            PartitionState::Owned { session: s } if *s == session => None,
            PartitionState::Moving { session: s, target, .. } if *s == session => target.clone(),
            _ => return Self::error(ErrorCode::Busy, format!("partition {partition} is not held by {session}")),
        };
        // Released cleanly, by the very incarnation that may write: nothing to fence.
        let releaser = self.sessions[&session].info.server.clone();
        match self.handing_over.get_mut(&partition) {
            Some(h) if target.is_some() && h.granted_ms.is_none() => {
                h.released_ms.get_or_insert(now);
            }
            _ => {
                self.handover_starts(partition as usize, HandoverCause::Released, Some(releaser), None);
                self.handing_over.get_mut(&partition).expect("just started").released_ms = Some(now);
            }
        }
        let p = &mut self.partitions[partition as usize];
        assert_eq!(p.holder_key, Some(self.sessions[&session].info.key), "p{partition} released by {session}, not its holder");
        p.state = PartitionState::Unowned;
        p.holder_key = None;
        // An owner that is releasing is cooperating: its other pending
        // moves get a fresh deadline (a bulk drain takes a while).
        let extended = now + ms(self.timeouts.revoke_timeout);
        for p in &mut self.partitions {
            if let PartitionState::Moving { session: s, deadline, .. } = &mut p.state
                && *s == session
            {
                *deadline = (*deadline).max(extended);
            }
        }
        match target.and_then(|t| self.session_of(&t)).filter(|t| !self.sessions[t].draining) {
            Some(to) => self.grant_to(partition as usize, to),
            // The releaser is not the first choice for what it gave up;
            // if nobody else can take it, ordinary assignment decides
            // (possibly giving it back) rather than leave it unowned.
            None => {
                match self.standby_of(partition as usize, &self.candidates(), Some(session)).or_else(|| self.least_loaded(Some(session))) {
                    Some(to) => self.grant_to(partition as usize, to),
                    None => {
                        self.assign();
                        if self.partitions[partition as usize].state == PartitionState::Unowned {
                            self.outputs.push_back(Output::Persist);
                        }
                    }
                }
            }
        }
        Response::Ack
    }

    /// The owner of a partition on the move is still claiming it: give it
    /// until `revoke_cap` (from the revoke) to release, rather than treat it
    /// as failed after `revoke_timeout`. Liveness only: nothing is granted
    /// before its release or its fence either way.
    fn claiming(&mut self, _now: Millis, session: SessionId, partition: u32, epoch: u64) -> Response {
        if !self.sessions.contains_key(&session) {
            return Response::SessionExpired;
        }
        let Some(p) = self.partitions.get_mut(partition as usize) else {
            return Self::error(ErrorCode::UnknownPartition, format!("no partition {partition}"));
        };
        if p.epoch != epoch {
            return Self::error(ErrorCode::StaleEpoch, format!("partition {partition} is at epoch {}, not {epoch}", p.epoch));
        }
        let cap = ms(self.timeouts.revoke_cap);
        let revoke = ms(self.timeouts.revoke_timeout);
        match &mut p.state {
            PartitionState::Moving { session: s, deadline, .. } if *s == session => {
                // The deadline was set to revoke + revoke_timeout when the revoke went out.
                *deadline = (*deadline).max(deadline.saturating_sub(revoke) + cap);
                Response::Ack
            }
            _ => Self::error(ErrorCode::Busy, format!("partition {partition} is not moving away from {session}")),
        }
    }

    fn acquire_named(&mut self, session: SessionId, name: String) -> Response {
        if !self.sessions.contains_key(&session) {
            return Response::SessionExpired;
        }
        if name.is_empty() || name.len() > NAMED_LEASE_NAME_BYTES_MAX {
            return Self::error(ErrorCode::InvalidArgument, format!("lease names are 1..={NAMED_LEASE_NAME_BYTES_MAX} bytes"));
        }
        if !self.named_epochs.contains_key(&name) && self.named_epochs.len() >= NAMED_LEASES_MAX {
            return Self::error(ErrorCode::LimitExceeded, format!("at most {NAMED_LEASES_MAX} distinct lease names per volume"));
        }
        if let Some(n) = self.named.get(&name) {
            if n.holder == session {
                return Response::NamedGranted { epoch: n.epoch };
            }
            let holder = self.sessions.get(&n.holder).map_or_else(|| "?".to_owned(), |s| s.info.server.clone());
            return Response::NamedHeld { holder };
        }
        let epoch = self.named_epochs.get(&name).copied().unwrap_or(0) + 1;
        self.named_epochs.insert(name.clone(), epoch);
        // Hi/lo allocation: persist a mark a block ahead, so most
        // acquisitions need no disk write and none can repeat an epoch.
        let hwm = self.named_hwm.get(&name).copied().unwrap_or(0);
        let persist = epoch > hwm;
        if persist {
            self.named_hwm.insert(name.clone(), epoch + NAMED_EPOCH_BLOCK - 1);
            self.outputs.push_back(Output::Persist);
        }
        // The reply goes out after the outputs queued now: it reveals an epoch
        // the persisted mark covers, or one a queued Persist will cover.
        let durable = self.durable_named_hwm.get(&name).copied().unwrap_or(0);
        assert!(
            epoch <= durable || (epoch <= self.named_hwm[&name] && self.outputs.contains(&Output::Persist)),
            "lease {name:?}: epoch {epoch} revealed above the persisted mark {durable}"
        );
        self.named.insert(name, Named { holder: session, epoch });
        Response::NamedGranted { epoch }
    }

    /// Admin: move one partition to `server` (a planned move).
    fn move_partition(&mut self, now: Millis, partition: u32, server: &str) -> Response {
        if partition >= self.partition_count() {
            return Self::error(ErrorCode::UnknownPartition, format!("no partition {partition}: there are {}", self.partition_count()));
        }
        let Some(target) = self.session_of(server) else {
            return Self::error(ErrorCode::UnknownServer, format!("no live server {server:?}"));
        };
        if self.sessions[&target].draining {
            return Self::error(ErrorCode::NoTarget, format!("server {server:?} is draining"));
        }
        match self.partitions[partition as usize].state {
            PartitionState::Owned { .. } | PartitionState::Unowned => {
                let moved = self.start_move(now, partition as usize, target);
                Response::Accepted { moves: u32::from(moved) }
            }
            _ => Self::error(ErrorCode::Busy, format!("partition {partition} is changing owner; retry")),
        }
    }

    /// Admin: move everything `server` owns elsewhere, and grant it nothing new.
    fn drain(&mut self, now: Millis, server: &str) -> Response {
        let Some(victim) = self.session_of(server) else {
            return Self::error(ErrorCode::UnknownServer, format!("no live server {server:?}"));
        };
        if self.least_loaded(Some(victim)).is_none() {
            return Self::error(ErrorCode::NoTarget, format!("no other live server to drain {server:?} to"));
        }
        self.sessions.get_mut(&victim).expect("exists").draining = true;
        let mut loads = self.loads();
        let candidates = self.candidates();
        let mut moves = 0;
        for i in 0..self.partitions.len() {
            if self.partitions[i].state == (PartitionState::Owned { session: victim }) {
                let to = self
                    .standby_of(i, &candidates, Some(victim))
                    .or_else(|| Self::pick(&loads, &candidates, Some(victim)))
                    .expect("checked");
                if self.start_move(now, i, to) {
                    moves += 1;
                    *loads.entry(to).or_default() += 1;
                }
            }
        }
        Response::Accepted { moves }
    }

    /// Admin: planned moves until no candidate owns more than one partition
    /// more than another.
    fn rebalance(&mut self, now: Millis) -> Response {
        let mut loads = self.loads();
        let cands = self.candidates();
        // Partitions each session owns outright (movable), ascending.
        let mut owned: BTreeMap<SessionId, Vec<usize>> = BTreeMap::new();
        for (i, p) in self.partitions.iter().enumerate() {
            if let PartitionState::Owned { session } = p.state {
                owned.entry(session).or_default().push(i);
            }
        }
        let load = |loads: &BTreeMap<SessionId, usize>, c: SessionId| loads.get(&c).copied().unwrap_or(0);
        let mut moves = 0;
        while let Some(&min) = cands.iter().min_by_key(|c| (load(&loads, **c), **c)) {
            // Those with two or more partitions more than the idlest, busiest first.
            let mut donors: Vec<SessionId> = cands.iter().copied().filter(|c| load(&loads, *c) > load(&loads, min) + 1).collect();
            donors.sort_by_key(|c| (std::cmp::Reverse(load(&loads, *c)), *c));
            let Some(&busiest) = donors.first() else { break };
            // A partition whose synced hot standby is the idlest one, from the
            // busiest donor that has one (a warm move); else, if the idlest
            // one keeps standbys and reports them, none now: a cold move would hold
            // that partition's clients for a whole log read, so the
            // placement (standbys move to idler servers) makes the next
            // rebalance warm instead (a joining server asks again once its
            // standbys are synced). Else the highest-numbered partition the
            // busiest one owns, cold.
            let warm = donors.iter().find_map(|d| {
                let list = owned.get(d)?;
                list.iter().rposition(|&i| self.synced_standby(i, min)).map(|at| (*d, at))
            });
            let will_be_warm = self.sessions.get(&min).is_some_and(|s| s.info.standby && s.info.reports_standbys);
            let (max, i) = match warm {
                Some((d, at)) => (d, owned.get_mut(&d).expect("a donor").remove(at)),
                None if will_be_warm => break,
                None => match owned.get_mut(&busiest).and_then(|l| l.pop()) {
                    Some(i) => (busiest, i),
                    None => break,
                },
            };
            if self.start_move(now, i, min) {
                moves += 1;
                *loads.entry(max).or_default() -= 1;
                *loads.entry(min).or_default() += 1;
            }
        }
        Response::Accepted { moves }
    }

    /// The slot map servers advertise: O(partitions + servers).
    pub fn cluster_map(&self) -> ClusterMap {
        let index: BTreeMap<SessionId, u32> = self.sessions.keys().enumerate().map(|(i, s)| (*s, i as u32)).collect();
        ClusterMap {
            servers: self.sessions.values().map(|s| MapServer { id: s.info.server.clone(), addr: s.info.addr.clone() }).collect(),
            owners: self
                .partitions
                .iter()
                // Only live sessions serve (expire_session checks it when it removes one).
                .map(|p| Self::serving(&p.state).map(|s| *index.get(&s).unwrap_or_else(|| panic!("{s} serves a partition but is gone"))))
                .collect(),
            tokens: self.partitions.iter().map(|p| p.epoch).collect(),
            standbys: self.partitions.iter().map(|p| p.standby.and_then(|s| index.get(&s).copied())).collect(),
        }
    }

    pub fn status(&self, now: Millis) -> Status {
        let n = self.partition_count();
        let loads = self.loads();
        Status {
            servers: self
                .sessions
                .iter()
                .map(|(id, s)| ServerStatus {
                    id: s.info.server.clone(),
                    session: id.0,
                    addr: s.info.addr.clone(),
                    pid: s.info.pid,
                    key: s.info.key,
                    alive: true,
                    draining: s.draining,
                    last_heartbeat_ms_ago: now.saturating_sub(s.last_heartbeat),
                    partitions: loads.get(id).copied().unwrap_or(0) as u32,
                })
                .chain(self.departed.iter().map(|(id, info, last)| ServerStatus {
                    id: info.server.clone(),
                    session: id.0,
                    addr: info.addr.clone(),
                    pid: info.pid,
                    key: info.key,
                    alive: false,
                    draining: false,
                    last_heartbeat_ms_ago: now.saturating_sub(*last),
                    partitions: 0,
                }))
                .collect(),
            partitions: self
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let (owner, state) = match &p.state {
                        PartitionState::Unowned => (None, "unowned".to_owned()),
                        PartitionState::Owned { session } => {
                            (self.sessions.get(session).map(|s| s.info.server.clone()), "owned".to_owned())
                        }
                        PartitionState::Moving { session, target, .. } => (
                            self.sessions.get(session).map(|s| s.info.server.clone()),
                            format!("moving to {}", target.as_deref().unwrap_or("?")),
                        ),
                        PartitionState::Fencing { key } => (None, format!("fencing {key:#x}")),
                        PartitionState::Orphaned { server, .. } => (Some(server.clone()), "awaiting reclaim".to_owned()),
                    };
                    PartitionStatus {
                        id: i as u32,
                        owner,
                        fence_token: p.epoch,
                        slots: slot_range(i as u32, n),
                        state,
                        standby: p.standby.and_then(|s| self.sessions.get(&s)).map(|s| s.info.server.clone()),
                        standby_lag: p.standby_report.filter(|(s, _, _)| p.standby == Some(*s)).map(|(_, r, at)| StandbyLagStatus {
                            synced: r.synced,
                            lag_bytes: r.lag_bytes,
                            stale_ms: r.stale_ms,
                            reported_ms_ago: now.saturating_sub(at),
                        }),
                    }
                })
                .collect(),
            lockmgrs: Vec::new(),
            // Finished ones, then those in progress (by start).
            handovers: {
                let mut all: Vec<Handover> = self.handovers.iter().chain(self.handing_over.values()).cloned().collect();
                all.sort_by_key(|h| h.start_ms);
                all.split_off(all.len().saturating_sub(HANDOVERS_KEPT))
            },
            now_ms: now,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The invariant checks are live: break an invariant behind the core's
    //! back and the next step that relies on it stops the process.
    use super::*;

    fn info(server: &str, key: u64) -> ServerInfo {
        ServerInfo { server: server.into(), key, addr: String::new(), pid: 1, standby: true, reports_standbys: false, keeps: Vec::new() }
    }

    /// A core with server `a` (key 0xa) owning both partitions, outputs drained.
    fn owned_by_a() -> Core {
        let mut core = Core::new(Timeouts::default(), 2);
        assert_eq!(core.handle(0, Request::Register(info("a", 0xa))), Response::Registered { session: SessionId(1) });
        while core.poll_output().is_some() {}
        core
    }

    /// A lock manager that took over (or restarted) learns the standby
    /// placement from the servers that keep the standbys, instead of placing
    /// them anew (each new one a whole log read, and no hot backup meanwhile).
    #[test]
    fn a_restored_lock_manager_keeps_the_standbys_the_servers_hold() {
        let t = Timeouts::default();
        let mut core = Core::new(t, 6);
        for (name, key) in [("a", 0xa), ("b", 0xb), ("c", 0xc)] {
            core.handle(0, Request::Register(info(name, key)));
        }
        core.handle(0, Request::Rebalance);
        while core.poll_output().is_some() {}
        let standbys = |core: &Core| core.status(0).partitions.iter().map(|p| p.standby.clone()).collect::<Vec<_>>();
        let before = standbys(&core);
        assert!(before.iter().all(|s| s.is_some()), "{before:?}");
        let mut restored = Core::restore(t, 6, &core.persisted(), 10);
        // They come back in another order, each saying what it keeps.
        for (name, key) in [("c", 0xc), ("b", 0xb), ("a", 0xa)] {
            let keeps = (0..6u32).filter(|&p| before[p as usize].as_deref() == Some(name)).collect();
            restored.handle(11, Request::Register(ServerInfo { keeps, ..info(name, key) }));
        }
        while restored.poll_output().is_some() {}
        assert_eq!(standbys(&restored), before, "the standbys stay where the servers keep them");
    }

    /// Every ownership change leaves its timeline: a lost owner's (closed
    /// connection: lost, fenced, granted, served), a move's (asked,
    /// released, granted, served), a stop's; times on the core's clock, in
    /// order, and a report of another epoch does not end it.
    #[test]
    fn each_handover_records_its_steps_in_order() {
        let mut core = owned_by_a();
        let first: Vec<_> = core.status(0).handovers.iter().map(|h| (h.partition, h.cause, h.to.clone())).collect();
        assert_eq!(first, [(0, HandoverCause::Unowned, Some("a".into())), (1, HandoverCause::Unowned, Some("a".into()))]);
        core.handle(1, Request::Served { session: SessionId(1), partition: 0, epoch: 1 });
        assert_eq!(core.status(1).handovers[0].served_ms, Some(1));
        core.handle(2, Request::Register(info("b", 0xb)));
        while core.poll_output().is_some() {}
        let b = SessionId(2);
        // A move of partition 1 from a to b.
        core.handle(10, Request::Move { partition: 1, server: "b".into() });
        core.handle(12, Request::Release { session: SessionId(1), partition: 1, epoch: 1 });
        while core.poll_output().is_some() {}
        core.handle(15, Request::Served { session: b, partition: 1, epoch: 1 });
        assert_eq!(core.status(15).handovers.last().unwrap().served_ms, None, "a report of an older epoch ends nothing");
        core.handle(16, Request::Served { session: b, partition: 1, epoch: 2 });
        let m = core.status(16).handovers.into_iter().find(|h| h.cause == HandoverCause::Move).expect("the move");
        assert_eq!((m.from.as_deref(), m.to.as_deref(), m.epoch), (Some("a"), Some("b"), Some(2)));
        assert_eq!((m.start_ms, m.released_ms, m.granted_ms, m.served_ms, m.fenced_ms), (10, Some(12), Some(12), Some(16), None));
        // a's connection closes: partition 0 is lost, fenced, granted to b, served.
        core.handle(20, Request::Disconnect { session: SessionId(1) });
        let fence = std::iter::from_fn(|| core.poll_output()).find_map(|o| match o {
            Output::Fence { key } => Some(key),
            _ => None,
        });
        assert_eq!(fence, Some(0xa));
        core.fence_done(23, 0xa);
        while core.poll_output().is_some() {}
        core.handle(27, Request::Served { session: b, partition: 0, epoch: 2 });
        let st = core.status(30);
        let l = st.handovers.iter().find(|h| h.cause == HandoverCause::ConnectionClosed).expect("the loss");
        assert_eq!((l.partition, l.from.as_deref(), l.to.as_deref()), (0, Some("a"), Some("b")));
        assert_eq!((l.start_ms, l.fenced_ms, l.granted_ms, l.served_ms), (20, Some(23), Some(23), Some(27)));
        assert_eq!(st.now_ms, 30);
        // b stops and gives partition 1 back: a handover of its own.
        core.handle(40, Request::Release { session: b, partition: 1, epoch: 2 });
        let r = core.status(40).handovers.into_iter().rfind(|h| h.partition == 1).unwrap();
        assert_eq!((r.cause, r.from.as_deref(), r.released_ms), (HandoverCause::Released, Some("b"), Some(40)));
        assert!(core.status(40).handovers.windows(2).all(|w| w[0].start_ms <= w[1].start_ms), "oldest first");
    }

    /// Only the last HANDOVERS_KEPT are kept.
    #[test]
    fn the_timeline_keeps_a_bounded_number_of_handovers() {
        let mut core = owned_by_a();
        core.handle(1, Request::Register(info("b", 0xb)));
        while core.poll_output().is_some() {}
        for i in 0..(HANDOVERS_KEPT as u64 + 20) {
            let (to, from, epoch) = if i % 2 == 0 { ("b", 1, i + 1) } else { ("a", 2, i + 1) };
            core.handle(10 + i * 10, Request::Move { partition: 0, server: to.into() });
            core.handle(11 + i * 10, Request::Release { session: SessionId(from), partition: 0, epoch });
            while core.poll_output().is_some() {}
        }
        let hs = core.status(0).handovers;
        assert_eq!(hs.len(), HANDOVERS_KEPT);
        assert_eq!(hs.last().unwrap().start_ms, 10 + (HANDOVERS_KEPT as u64 + 19) * 10, "the newest stay");
    }

    #[test]
    #[should_panic(expected = "neither released nor fenced")]
    fn a_grant_before_the_fence_is_refused() {
        let mut core = owned_by_a();
        core.handle(0, Request::Register(info("b", 0xb)));
        // A path that forgot the fence: unowned, but a's key may still write.
        core.partitions[0].state = PartitionState::Unowned;
        core.assign();
    }

    #[test]
    #[should_panic(expected = "grant to fenced key")]
    fn a_fenced_key_is_granted_nothing() {
        let mut core = owned_by_a();
        // A fence of a's key while a is still registered (say, a wrong key).
        core.fenced_keys.insert(0xa);
        core.partitions[0].state = PartitionState::Unowned;
        core.partitions[0].holder_key = None;
        core.assign();
    }

    #[test]
    #[should_panic(expected = "but the persisted map has only")]
    fn a_grant_is_not_revealed_before_it_is_persisted() {
        let mut core = owned_by_a();
        core.outputs.push_back(Output::Grant { session: SessionId(1), partition: 0, epoch: 2 });
        core.poll_output();
    }

    #[test]
    #[should_panic(expected = "would replace the persisted")]
    fn a_persisted_epoch_never_goes_down() {
        let mut core = owned_by_a();
        core.partitions[1].epoch = 0;
        core.outputs.push_back(Output::Persist);
        core.poll_output();
    }

    #[test]
    fn standby_reports_are_shown_only_for_the_standby_that_sent_them() {
        let mut core = owned_by_a();
        assert!(matches!(core.handle(0, Request::Register(info("b", 0xb))), Response::Registered { .. }));
        while core.poll_output().is_some() {}
        let st = core.status(0);
        let b = SessionId(2);
        let (ours, theirs): (Vec<_>, Vec<_>) = st.partitions.iter().partition(|p| p.standby.as_deref() == Some("b"));
        assert!(!ours.is_empty(), "b keeps no standby: {st:?}");
        let lag = |partition| StandbyLag { partition, synced: true, lag_bytes: 42, stale_ms: 3 };
        // b reports every partition: only those it keeps the standby of count.
        let report = Request::StandbyReport { session: b, standbys: vec![lag(0), lag(1), lag(7)] };
        assert_eq!(core.handle(10, report), Response::Ack);
        let st = core.status(25);
        for p in &st.partitions {
            let shown = p.standby_lag.clone();
            if p.standby.as_deref() == Some("b") {
                assert_eq!(shown, Some(StandbyLagStatus { synced: true, lag_bytes: 42, stale_ms: 3, reported_ms_ago: 15 }));
            } else {
                assert_eq!(shown, None, "partition {}: a report of a server that is not its standby", p.id);
            }
        }
        assert!(theirs.iter().all(|p| p.standby.as_deref() != Some("b")));
        // A session that is gone reports nothing.
        let gone = Request::StandbyReport { session: SessionId(9), standbys: vec![lag(0)] };
        assert_eq!(core.handle(30, gone), Response::SessionExpired);
    }

    /// A rebalance hands a server that reports its standbys only partitions
    /// whose standby it reported synced (a cold move would hold clients for
    /// a whole log read); one that does not report gets cold moves as before.
    #[test]
    fn a_rebalance_moves_to_a_reporting_server_only_its_synced_standbys() {
        for reports in [true, false] {
            let mut core = Core::new(Timeouts::default(), 6);
            assert!(matches!(core.handle(0, Request::Register(info("a", 0xa))), Response::Registered { .. }));
            while core.poll_output().is_some() {}
            let b = match core.handle(1, Request::Register(ServerInfo { reports_standbys: reports, ..info("b", 0xb) })) {
                Response::Registered { session } => session,
                other => panic!("{other:?}"),
            };
            while core.poll_output().is_some() {}
            let st = core.status(1);
            let kept: Vec<u32> = st.partitions.iter().filter(|p| p.standby.as_deref() == Some("b")).map(|p| p.id).collect();
            assert!(!kept.is_empty(), "{st:?}");
            let moves = |core: &mut Core| match core.handle(2, Request::Rebalance) {
                Response::Accepted { moves } => moves,
                other => panic!("{other:?}"),
            };
            if reports {
                // Nothing reported yet: no move at all.
                assert_eq!(moves(&mut core), 0);
                // One standby reported synced, the others still syncing: only that one moves.
                let lag = |partition, synced| StandbyLag { partition, synced, lag_bytes: 0, stale_ms: 0 };
                let report = kept.iter().map(|p| lag(*p, *p == kept[0])).collect();
                assert_eq!(core.handle(2, Request::StandbyReport { session: b, standbys: report }), Response::Ack);
                assert_eq!(moves(&mut core), 1);
                let moving: Vec<u32> = core.status(2).partitions.iter().filter(|p| p.state.starts_with("moving")).map(|p| p.id).collect();
                assert_eq!(moving, vec![kept[0]]);
            } else {
                assert_eq!(moves(&mut core), 3, "a server that does not report is balanced as before");
            }
        }
    }
}
