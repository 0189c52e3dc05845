//! A deterministic simulation of a whole cluster in one thread.
//!
//! The real lock-manager core (with its fences and map persisted on the
//! volume through the real `VolumeBackend`), three servers made of the real
//! control core, engine core and storage partitions, all on one in-memory
//! volume whose power losses tear at page granularity, and eight clients
//! running register operations (GET, SET, INCR, DEL) on six keys of
//! different lengths. One seeded generator decides everything: message
//! delays (FIFO per connection, now and then past a lease), which process
//! takes the next step and how many actions it takes, and a schedule of
//! faults — a server paused between any two of its actions, killed, stopped
//! with SIGTERM, its connection to the lock manager broken (sometimes with
//! the lock manager unreachable from it for up to a second while clients
//! still reach it: a network partition), the clock jumping past every lease,
//! planned moves, drains and rebalances, a lock-manager restart, a power
//! loss. The shells are modelled the way `shell.rs`, `engine.rs`,
//! `conn::fast_read` and the lock-manager service drive the same cores.
//!
//! Checked on every run: the history of every key is linearizable (the
//! checker of `sharedisk_testkit::history`, which also catches a lost
//! acknowledged write: a later read misses it), and at every grant the
//! volume's owner word of the partition names no live registrant other than
//! the grantee ("fence first, grant second"); after the faults, every key is
//! readable again within a deadline (liveness).
//!
//! `SEED=n` replays one run; `SIM_RUNS=n` sets how many (default 300 in a
//! release build, 30 in a debug one); `SIM_TRACE=1` logs every answer,
//! takeover and control event; a failure prints its seed, the shortest
//! failing prefix of the offending key's history and the run's fault log.
//! `the_simulation_catches_each_broken_build` switches on each mutant of
//! `mutant.rs` in turn and fails unless the simulation catches it within
//! `SIM_MUTANT_RUNS` runs (default 500, seeds 1 and up); with
//! `SIM_MUTANT_RATE=1` it counts the runs that catch each (over seeds
//! 1..=1000 on 2026-12-01, before the last fidelity fixes: 96, 45, 993 and 9
//! runs; the segment-reuse mutant is the rarest, its damage needs a zombie
//! that stores after the new owner wrote, then a recovery or a check).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use sharedisk_lockmgr::core::{Core as LmCore, ErrorCode, Output, Request as LmRequest, Response as LmResponse, ServerInfo, SessionId};
use sharedisk_lockmgr::election::Seat;
use sharedisk_lockmgr::service::{Backend, VolumeBackend};
use sharedisk_lockmgr::{Timeouts, core::slot_range};
use sharedisk_storage::media::MemMedia;
use sharedisk_storage::{CreateOptions, Partition, ProcessIdentity, Registration, SlotState, Standby, Volume};
use sharedisk_testkit::Rng;
use sharedisk_testkit::history::{self, Entry, Op as HOp, Ret};

use super::commands::Command;
use super::control::{Action, Control, Event};
use super::engine::core::{Committed, Core as EngineCore, Job, Outcome, Request, ServedPartition};
use super::mutant::{self, Mutant};
use crate::resp::{Reply, key_slot};

const PARTITIONS: u32 = 4;
const SERVERS: usize = 3;
const CLIENTS: usize = 8;
const KEYS: usize = 6;
/// Simulated milliseconds of faults, then of healing.
const FAULT_MS: u64 = 10_000;
const HEAL_MS: u64 = 12_000;
/// A client gives up on an operation after this long (its outcome is then unknown).
const CLIENT_TIMEOUT_MS: u64 = 1_500;
/// How far behind its owner a standby may be and still answer a replica
/// read (the servers' `--replica-max-lag-ms`; larger than their default, as
/// the simulated standby thread polls less often than the real one).
const REPLICA_MAX_LAG_MS: u64 = 40;
/// Distinct keys written into every partition before the cluster starts;
/// clients never touch them, and every one must read back at the end.
const PREFILLED_PER_PARTITION: u64 = 60;

/// Server -> lock manager.
#[derive(Debug)]
enum Up {
    /// Sent at `sent` by the server's clock: its lease counts from then.
    Register {
        info: ServerInfo,
        sent: u64,
    },
    Heartbeat {
        session: SessionId,
        sent: u64,
    },
    Release {
        session: SessionId,
        partition: u32,
        epoch: u64,
    },
    Claiming {
        session: SessionId,
        partition: u32,
        epoch: u64,
    },
    Rebalance,
}

/// Lock manager -> server.
#[derive(Debug)]
enum Down {
    Registered {
        result: Result<SessionId, ErrorCode>,
        sent: u64,
    },
    HeartbeatAck {
        sent: u64,
        expired: bool,
    },
    Grant {
        partition: u32,
        epoch: u64,
    },
    Revoke {
        partition: u32,
    },
    Expire,
    /// The slot map changed (owners and hot standbys).
    Map(sharedisk_lockmgr::core::ClusterMap),
}

/// One connection between a server and the lock manager: FIFO both ways.
#[derive(Default)]
struct Conn {
    up: VecDeque<(u64, Up)>,
    down: VecDeque<(u64, Down)>,
    /// The session registered over it, as the lock manager knows it.
    session: Option<SessionId>,
    /// Which lock manager it goes to (`LockManager::incarnation`).
    lm_gen: u64,
    /// Closed by the server after what it sent (it moved its session): the
    /// lock manager reads the rest, then sees the close.
    closing: bool,
}

/// What a client asked a server, and where the answer goes.
#[derive(Clone, Copy, Debug)]
struct Ticket {
    client: usize,
    attempt: u64,
}

#[derive(Debug)]
enum Answer {
    /// Not applied: try elsewhere (MOVED, CLUSTERDOWN, a rerouted request).
    NotApplied,
    Reply(Reply),
}

/// A read computed on the connection's fast path, waiting for its barrier.
struct FastRead {
    ticket: Ticket,
    cell: Arc<ServedPartition>,
    reply: Reply,
    need: u64,
    cmd: Command,
    /// The fast path waits this long for its barrier, then asks the engine.
    hold_until: u64,
}

/// A claim started by `Action::Claim`.
struct Claim {
    reg: Registration,
    incarnation: u64,
    partition: u32,
    epoch: u64,
}

/// A partition being stopped in the engine: what to do once it is.
struct Stopping {
    partition: u32,
    epoch: u64,
    tell: bool,
}

struct Server {
    name: String,
    key: u64,
    reg: Registration,
    conn: Option<u64>,
    session: Option<SessionId>,
    lease_until: u64,
    next_heartbeat: u64,
    /// Since when a heartbeat has been waiting for its answer: past one
    /// interval the session looks for the active lock manager (the shell's
    /// `Session::stalled`), leaving the old connection as it is.
    heartbeat_unanswered_since: Option<u64>,
    /// Connections left behind by a stalled heartbeat, closed once the
    /// session is registered again (as the shell drops the old session).
    abandoned: Vec<u64>,
    /// First registration done (it then asks for a rebalance, as `serve` does).
    joined: bool,
    paused_until: u64,
    control: Control,
    engine: EngineCore<Ticket, u32>,
    routes: BTreeMap<u32, Arc<ServedPartition>>,
    /// When the running barrier completes.
    barrier_at: Option<u64>,
    /// Claims running on a blocking thread: when each finishes, and what it is.
    claims: Vec<(u64, Claim)>,
    fast_reads: Vec<FastRead>,
    /// Control events wait while a release is in progress (the shell awaits it).
    stopping: BTreeMap<u32, Stopping>,
    next_stop: u32,
    /// The connection broke: deliver `Event::Disconnected` at the next step.
    disconnected: bool,
    /// Requests that arrived: when, whose, what, and whether as a replica read.
    inbox: VecDeque<(u64, Ticket, HOp, String, bool)>,
    /// Stopped (SIGTERM): exits once its releases are done.
    exiting: bool,
    /// Until then the lock manager is unreachable from this server (clients
    /// still reach it): a network partition.
    partitioned_until: u64,
    /// The hot standbys the slot map gives this server (the shell's
    /// standby thread: polled at random steps, taken by claims).
    standbys: BTreeMap<u32, Standby>,
    /// The standby thread is stalled (descheduled, a long resync elsewhere)
    /// until then: its standbys fall behind their owners.
    standby_stall_until: u64,
    /// Per standby: when the last poll that ended synced started.
    standby_synced_at: BTreeMap<u32, u64>,
}

struct LockManager {
    /// Tells its connections from those of an earlier lock manager.
    incarnation: u64,
    core: LmCore,
    backend: VolumeBackend,
    /// Session -> connection.
    conns: BTreeMap<SessionId, u64>,
    fences: Vec<(u64, u64)>,
    disconnects: Vec<(u64, SessionId)>,
    /// The map last pushed to every session (the service pushes on change).
    pushed: sharedisk_lockmgr::core::ClusterMap,
    /// Sessions that have not heard a map yet.
    unmapped: std::collections::BTreeSet<SessionId>,
}

struct Pending {
    key: String,
    op: HOp,
    /// A `READONLY` GET sent to the partition's standby (after a refusal, to the owner).
    replica: bool,
    call: u64,
    deadline: u64,
    attempt: u64,
    /// Where the current attempt went and when to retry if refused.
    retry_at: Option<u64>,
}

struct Client {
    pending: Option<Pending>,
    next_at: u64,
    attempts: u64,
    /// One of its writes timed out (its outcome unknown): from then on it
    /// only reads. Each unknown write stays callable to the end of the
    /// history, and the linearizability check is exponential in them: one
    /// per client keeps it at most 2^CLIENTS (a seed with dozens on one
    /// key ran the checker out of memory).
    uncertain: bool,
}

struct World {
    seed: u64,
    rng: Rng,
    now: u64,
    /// Logical time for the history (every call and return gets its own tick).
    tick: u64,
    timeouts: Timeouts,
    media: Arc<MemMedia>,
    vol: Arc<Volume>,
    lm: Option<LockManager>,
    /// An active lock manager paused past its lease (a standby took over
    /// meanwhile), and when it wakes up.
    zombie_lm: Option<(LockManager, u64)>,
    next_lm_gen: u64,
    lm_down_until: u64,
    servers: Vec<Option<Server>>,
    restart_at: Vec<u64>,
    /// Keys of incarnations that died (killed): reaped when their server restarts, as `server` does.
    dead_keys: Vec<u64>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    next_key: u64,
    clients: Vec<Client>,
    replies: Vec<(u64, Ticket, Answer)>,
    history: Vec<Entry>,
    /// Replica reads a standby answered, with their calls moved back by the
    /// staleness bound (each may see the state of any moment from
    /// `REPLICA_MAX_LAG_MS` before its call on); emptied by a power loss,
    /// which may take back a published write they saw (FORMAT.md).
    replica_history: Vec<Entry>,
    /// The simulated ms of every tick: tick `t` was taken at `tick_times[t - 1]`.
    tick_times: Vec<u64>,
    next_value: i64,
    log: Vec<String>,
    faults: bool,
    /// SIM_TRACE=1: log every answer and takeover too.
    trace: bool,
    /// Clients start no new operations (the final reads are started by hand).
    quiet: bool,
    /// Servers killed (kill -9, a power loss, an exit that runs no
    /// destructor): kept, never dropped while the run goes on, and freed
    /// with the world. (Forgetting them leaked each run's volumes: about
    /// 7 MB a run, 27 GB at SIM_RUNS=4000.)
    graveyard: Vec<Server>,
}

fn opts() -> CreateOptions {
    CreateOptions { segment_bytes: 8192, registrant_slots: 200, ..CreateOptions::new(1192 << 10, PARTITIONS) }
}

/// Keys of different lengths, so that records differ in size: a store
/// landing over someone else's record then breaks its framing (checksums)
/// instead of replacing it with one of the same shape.
fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("k{i}{}", "-".repeat(i * 7))).collect()
}

/// The prefilled keys of `partition` and their values (200-digit numbers:
/// records of some size, so the cleaner has real work relocating them).
fn prefilled(partition: u32) -> impl Iterator<Item = (String, String)> {
    (0..)
        .map(move |i| format!("pre{partition}-{i}"))
        .filter(move |k| partition_of(k) == partition)
        .take(PREFILLED_PER_PARTITION as usize)
        .enumerate()
        .map(move |(i, k)| (k, format!("{:0>200}", u64::from(partition) * 1_000_000 + i as u64)))
}

/// Write the prefilled keys into every partition, durably, as a loaded
/// volume holds them before the cluster starts.
fn prefill(vol: &Arc<Volume>) {
    let reg = vol.register(0xF111, ProcessIdentity::current()).unwrap();
    for p in 0..PARTITIONS {
        let mut part = Partition::claim(vol.clone(), reg, p).unwrap();
        for (key, value) in prefilled(p) {
            part.append(&[sharedisk_storage::Op::Put { key: key.into_bytes(), value: value.into_bytes().into(), expire_at_ms: 0 }], 0)
                .unwrap();
        }
        part.commit().unwrap();
        part.release().unwrap();
    }
    vol.unregister(reg).unwrap();
}

fn partition_of(key: &str) -> u32 {
    let slot = u32::from(key_slot(key.as_bytes()));
    (0..PARTITIONS).find(|p| (slot_range(*p, PARTITIONS)[0]..=slot_range(*p, PARTITIONS)[1]).contains(&slot)).unwrap()
}

impl World {
    fn new(seed: u64) -> World {
        let opts = opts();
        let media = Arc::new(MemMedia::from_image(&vec![0u8; opts.volume_bytes as usize], None));
        let (vol, _) = Volume::create_in_memory(&opts, Some(media.clone())).unwrap();
        let vol = Arc::new(vol);
        prefill(&vol);
        let timeouts = Timeouts::from_base(std::time::Duration::from_millis(100));
        let mut w = World {
            seed,
            rng: Rng::new(seed),
            now: 1_000,
            tick: 0,
            timeouts,
            media,
            vol,
            lm: None,
            zombie_lm: None,
            next_lm_gen: 1,
            lm_down_until: 0,
            servers: (0..SERVERS).map(|_| None).collect(),
            restart_at: vec![0; SERVERS],
            dead_keys: Vec::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            next_key: 0x5EED_0000_0000 ^ (seed << 8),
            clients: (0..CLIENTS).map(|_| Client { pending: None, next_at: 0, attempts: 0, uncertain: false }).collect(),
            replies: Vec::new(),
            history: Vec::new(),
            replica_history: Vec::new(),
            tick_times: Vec::new(),
            next_value: 1,
            log: Vec::new(),
            faults: true,
            trace: std::env::var_os("SIM_TRACE").is_some(),
            quiet: false,
            graveyard: Vec::new(),
        };
        w.start_lockmgr();
        for i in 0..SERVERS {
            w.start_server(i);
        }
        w
    }

    fn delay(&mut self) -> u64 {
        match self.rng.below(100) {
            0..=79 => self.rng.below(3),
            80..=97 => self.rng.below(40),
            // Now and then a message is held up past a lease.
            _ => self.rng.below(900),
        }
    }

    fn tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick_times.push(self.now);
        self.tick
    }

    /// The first tick after every tick taken before simulated time `t`.
    fn tick_from(&self, t: u64) -> u64 {
        // The ticks taken before `t` are 1..=n; the next one is n + 1.
        self.tick_times.partition_point(|at| *at < t) as u64 + 1
    }

    // ---- the lock manager ------------------------------------------------

    fn start_lockmgr(&mut self) {
        // A seat of its own: never the one a paused lock manager still holds.
        let me = ProcessIdentity::current().pid;
        let avoid = self.zombie_lm.as_ref().map(|(z, _)| z.backend.reign().seat().seat);
        let seat = Seat::claim_with(self.vol.clone(), "", |s| s.identity.pid == me && Some(s.seat) != avoid).unwrap();
        let backend = VolumeBackend::with_reign(seat.take_now().unwrap());
        let incarnation = self.next_lm_gen;
        self.next_lm_gen += 1;
        let core = match backend.load().unwrap() {
            Some(p) => LmCore::restore(self.timeouts, PARTITIONS, &p, self.now),
            None => LmCore::new(self.timeouts, PARTITIONS),
        };
        self.lm = Some(LockManager {
            incarnation,
            core,
            backend,
            conns: BTreeMap::new(),
            fences: Vec::new(),
            disconnects: Vec::new(),
            pushed: Default::default(),
            unmapped: Default::default(),
        });
    }

    fn lm_step(&mut self) {
        let Some(mut lm) = self.lm.take() else { return };
        let now = self.now;
        // Requests that arrived, connection by connection, in order.
        let ids: Vec<u64> = self.conns.iter().filter(|(_, c)| c.lm_gen == lm.incarnation).map(|(id, _)| *id).collect();
        for id in ids {
            while let Some(conn) = self.conns.get_mut(&id)
                && conn.up.front().is_some_and(|(at, _)| *at <= now)
            {
                let (_, msg) = conn.up.pop_front().unwrap();
                let session = conn.session;
                self.lm_request(&mut lm, id, session, msg);
            }
            // A closed connection, read to its end: its session, unless it
            // moved to another connection, is disconnected.
            if self.conns.get(&id).is_some_and(|c| c.closing && c.up.is_empty()) {
                let c = self.conns.remove(&id).unwrap();
                if let Some(session) = c.session
                    && lm.conns.get(&session) == Some(&id)
                {
                    lm.conns.remove(&session);
                    lm.disconnects.push((now + self.rng.below(20), session));
                }
            }
        }
        for (_, session) in take_due(&mut lm.disconnects, now) {
            lm.core.handle(now, LmRequest::Disconnect { session });
        }
        for (_, key) in take_due(&mut lm.fences, now) {
            if self.trace {
                self.log.push(format!("{now}: lockmgr fences {key:x} on the volume"));
            }
            if !mutant::is(Mutant::GrantBeforeFence) {
                lm.backend.fence(key).unwrap();
            }
            lm.core.fence_done(now, key);
        }
        if lm.core.poll_timeout().is_some_and(|t| t <= now) {
            lm.core.handle_timeout(now);
        }
        self.lm_outputs(&mut lm);
        // As the service: after the replies, the map to every session when it
        // changed, and to a new session once.
        let map = lm.core.cluster_map();
        let changed = map != lm.pushed;
        lm.pushed = map;
        let targets: Vec<(SessionId, u64)> = lm.conns.iter().map(|(s, c)| (*s, *c)).collect();
        for (session, conn) in targets {
            if changed || lm.unmapped.remove(&session) {
                self.send_down(conn, Down::Map(lm.pushed.clone()));
            }
        }
        self.lm = Some(lm);
    }

    fn lm_request(&mut self, lm: &mut LockManager, conn: u64, session: Option<SessionId>, msg: Up) {
        let now = self.now;
        let down = match msg {
            Up::Register { info, sent } => {
                let result = match lm.core.handle(now, LmRequest::Register(info)) {
                    LmResponse::Registered { session } => {
                        lm.conns.insert(session, conn);
                        lm.unmapped.insert(session);
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.session = Some(session);
                        }
                        Ok(session)
                    }
                    LmResponse::Error { code, .. } => Err(code),
                    other => panic!("register answered {other:?}"),
                };
                Some(Down::Registered { result, sent })
            }
            Up::Heartbeat { session: s, sent } => {
                let expired = session != Some(s) || !matches!(lm.core.handle(now, LmRequest::Heartbeat { session: s }), LmResponse::Ack);
                Some(Down::HeartbeatAck { sent, expired })
            }
            Up::Release { session: s, partition, epoch } => {
                lm.core.handle(now, LmRequest::Release { session: s, partition, epoch });
                None
            }
            Up::Rebalance => {
                lm.core.handle(now, LmRequest::Rebalance);
                None
            }
            Up::Claiming { session: s, partition, epoch } => {
                lm.core.handle(now, LmRequest::Claiming { session: s, partition, epoch });
                None
            }
        };
        // The answer first: a server handles the pushes a request caused
        // (a registration's reclaimed grants) once it has the answer, as the
        // real client's session does.
        if let Some(d) = down {
            self.send_down(conn, d);
        }
        self.lm_outputs(lm);
    }

    fn lm_outputs(&mut self, lm: &mut LockManager) {
        while let Some(out) = lm.core.poll_output() {
            if self.trace {
                self.log.push(format!("{}: lockmgr -> {out:?}", self.now));
            }
            match out {
                Output::Persist => lm.backend.persist(&lm.core.persisted()).unwrap(),
                Output::Fence { key } => {
                    let at = self.now + self.delay();
                    lm.fences.push((at, key));
                }
                Output::Grant { session, partition, epoch } => {
                    self.check_fenced_before_grant(lm, session, partition);
                    if let Some(conn) = lm.conns.get(&session).copied() {
                        self.send_down(conn, Down::Grant { partition, epoch });
                    }
                }
                Output::Revoke { session, partition } => {
                    if let Some(conn) = lm.conns.get(&session).copied() {
                        self.send_down(conn, Down::Revoke { partition });
                    }
                }
                Output::Expire { session } => {
                    if let Some(conn) = lm.conns.remove(&session) {
                        self.send_down(conn, Down::Expire);
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.session = None;
                        }
                    }
                }
            }
        }
    }

    /// Fence first, grant second, as the volume sees it: when a partition is
    /// granted, its owner word names no live registrant but the grantee.
    fn check_fenced_before_grant(&self, lm: &LockManager, session: SessionId, partition: u32) {
        let grantee = lm.core.session_info(session).map(|i| i.key);
        let owner = self.vol.owner(partition).unwrap();
        let Some(slot) = owner.slot else { return };
        let live = self.vol.read_full_status().into_iter().find(|s| s.slot == slot && s.state == SlotState::Registered);
        if let Some(holder) = live {
            assert!(
                Some(holder.key) == grantee,
                "seed {}: partition {partition} granted to key {grantee:x?} while its owner word names live key {:x} (fence first, grant second)\n{}",
                self.seed,
                holder.key,
                self.dump()
            );
        }
    }

    fn send_down(&mut self, conn: u64, d: Down) {
        let at = self.now + self.delay();
        if let Some(c) = self.conns.get_mut(&conn) {
            let at = c.down.back().map_or(at, |(last, _)| at.max(*last));
            c.down.push_back((at, d));
        }
    }

    fn send_up(&mut self, conn: u64, u: Up) {
        let at = self.now + self.delay();
        if let Some(c) = self.conns.get_mut(&conn) {
            let at = c.up.back().map_or(at, |(last, _)| at.max(*last));
            c.up.push_back((at, u));
        }
    }

    /// Close a connection: the lock manager notices (and fences) its session.
    fn break_conn(&mut self, conn: u64) {
        if let Some(c) = self.conns.remove(&conn)
            && let Some(session) = c.session
            && let Some(lm) = &mut self.lm
            && lm.incarnation == c.lm_gen
        {
            lm.conns.remove(&session);
            let at = self.now + self.rng.below(20);
            lm.disconnects.push((at, session));
        }
    }

    fn restart_lockmgr(&mut self) {
        self.log.push(format!("{}: lock manager restarts", self.now));
        self.lm = None;
        for id in self.conns.keys().copied().collect::<Vec<_>>() {
            self.conns.remove(&id);
        }
        for s in self.servers.iter_mut().flatten() {
            if s.conn.take().is_some() {
                s.disconnected = true;
            }
        }
        self.lm_down_until = self.now + self.rng.below(1500);
    }

    /// The active lock manager is paused past its lease: a standby takes
    /// over once the lease word has been silent for `lockmgr_lease`; the
    /// paused one wakes up later, after the sessions it knew have expired
    /// by its clock, so that a build that does not check its term acts.
    fn depose_lockmgr(&mut self) {
        let lm = self.lm.take().expect("a lock manager");
        let t = self.timeouts;
        let takeover = self.now + (t.lockmgr_lease + t.lockmgr_poll).as_millis() as u64;
        let wake = takeover + t.lease_timeout.as_millis() as u64 + self.rng.below(t.lease_timeout.as_millis() as u64);
        self.log.push(format!("{}: lock manager paused until {wake}; a standby takes over at {takeover}", self.now));
        self.zombie_lm = Some((lm, wake));
        self.lm_down_until = takeover;
    }

    /// The paused lock manager wakes up. As the service does, it looks at
    /// its term before it reveals or fences anything: deposed, it stops.
    /// Only a build that skips that look gets further, and any write it
    /// then makes to the volume is the failure.
    fn wake_zombie_lockmgr(&mut self) {
        let Some((mut z, _)) = self.zombie_lm.take() else { return };
        // Its connections die with it.
        self.conns.retain(|_, c| c.lm_gen != z.incarnation);
        let term = z.backend.reign().term();
        assert!(
            self.vol.lockmgr_lease().is_ok_and(|l| l.term > term),
            "seed {}: the paused lock manager wakes before a standby took over",
            self.seed
        );
        if !z.backend.active() {
            self.log.push(format!("{}: the paused lock manager (term {term}) wakes up deposed and stops", self.now));
            return;
        }
        z.core.handle_timeout(self.now);
        while let Some(out) = z.core.poll_output() {
            let wrote = match out {
                Output::Persist => z.backend.persist(&z.core.persisted()).is_ok().then(|| "its map".to_owned()),
                Output::Fence { key } => z.backend.fence(key).is_ok().then(|| format!("a fence of key {key:x}")),
                _ => None,
            };
            if let Some(what) = wrote {
                panic!(
                    "seed {}: a deposed lock manager (term {term}, the volume's is {:?}) wrote {what} to the volume\n{}",
                    self.seed,
                    self.vol.lockmgr_lease().map(|l| l.term),
                    self.dump()
                );
            }
        }
    }

    // ---- servers -----------------------------------------------------------

    fn new_key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    fn start_server(&mut self, i: usize) {
        // Free the slots of earlier incarnations that are dead and fenced.
        for key in std::mem::take(&mut self.dead_keys) {
            let fenced = self.vol.read_full_status().iter().any(|s| s.key == key && s.state == SlotState::Fenced);
            if fenced {
                self.vol.reap_key(key).unwrap();
            } else {
                self.dead_keys.push(key);
            }
        }
        let key = self.new_key();
        let reg = self.vol.register(key, ProcessIdentity::current()).unwrap();
        let mut s = Server {
            name: format!("s{i}"),
            key,
            reg,
            conn: None,
            session: None,
            lease_until: 0,
            next_heartbeat: 0,
            heartbeat_unanswered_since: None,
            abandoned: Vec::new(),
            joined: false,
            paused_until: 0,
            control: Control::new(),
            engine: EngineCore::new(Arc::default()),
            routes: BTreeMap::new(),
            barrier_at: None,
            claims: Vec::new(),
            fast_reads: Vec::new(),
            stopping: BTreeMap::new(),
            next_stop: 0,
            disconnected: false,
            inbox: VecDeque::new(),
            exiting: false,
            partitioned_until: 0,
            standbys: BTreeMap::new(),
            standby_stall_until: 0,
            standby_synced_at: BTreeMap::new(),
        };
        self.connect(&mut s);
        self.servers[i] = Some(s);
    }

    fn connect(&mut self, s: &mut Server) {
        if self.lm.is_none() || self.now < s.partitioned_until {
            // Nothing listening, or the network between us and the lock
            // manager is cut: try again at a later step.
            s.disconnected = true;
            return;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let lm_gen = self.lm.as_ref().map_or(0, |lm| lm.incarnation);
        self.conns.insert(id, Conn { lm_gen, ..Conn::default() });
        s.conn = Some(id);
        s.heartbeat_unanswered_since = None;
        let info = ServerInfo {
            server: s.name.clone(),
            key: s.key,
            addr: format!("127.0.0.1:{}", 7000 + id),
            pid: 1,
            standby: true,
            reports_standbys: false,
            keeps: Vec::new(),
        };
        self.send_up(id, Up::Register { info, sent: self.now });
    }

    /// The lease outlives a lost connection, as the shell's does: it lapses
    /// by its own deadline (a new incarnation starts with none).
    fn lease_valid(&self, s: &Server) -> bool {
        self.now < s.lease_until
    }

    fn server_step(&mut self, i: usize) {
        let Some(mut s) = self.servers[i].take() else { return };
        if s.paused_until > self.now {
            self.servers[i] = Some(s);
            return;
        }
        // A few things, each picked at random: any interleaving the shells
        // allow (a pause, which falls between two steps, can cut anywhere).
        for _ in 0..1 + self.rng.below(16) {
            self.server_action(&mut s);
            self.server_outputs(&mut s);
        }
        if s.exiting && s.stopping.is_empty() {
            // The shell unregisters and the process exits: claims still
            // running on blocking threads die with it.
            self.log.push(format!("{}: {} exits", self.now, s.name));
            let _ = self.vol.unregister(s.reg);
            if let Some(conn) = s.conn {
                self.break_conn(conn);
            }
            self.graveyard.push(s);
            self.restart_at[i] = self.now + 100 + self.rng.below(1000);
            return;
        }
        self.servers[i] = Some(s);
    }

    fn server_action(&mut self, s: &mut Server) {
        match self.rng.below(9) {
            0 => self.server_control(s),
            1 => self.server_requests(s),
            2 => {
                let valid = self.lease_valid(s);
                s.engine.execute(self.now, valid);
            }
            3 => self.server_barrier(s),
            4 => self.server_claims(s),
            8 => self.server_standbys(s),
            5 => self.server_fast_reads(s),
            6 => self.server_heartbeat(s),
            _ => {
                if s.engine.stops_pending() {
                    s.engine.finish_stops();
                }
            }
        }
    }

    fn server_heartbeat(&mut self, s: &mut Server) {
        let interval = self.timeouts.heartbeat_interval.as_millis() as u64;
        if let Some(since) = s.heartbeat_unanswered_since
            && self.now > since + interval
            && s.conn.is_some()
        {
            // Stalled: find the active lock manager; the old connection
            // stays open (what is queued on it still arrives), unread.
            if self.trace {
                self.log.push(format!("{}: {} heartbeat unanswered since {since}: looking for the lock manager", self.now, s.name));
            }
            s.abandoned.extend(s.conn.take());
            s.heartbeat_unanswered_since = None;
            s.disconnected = true;
            return;
        }
        if let (Some(session), Some(conn)) = (s.session, s.conn)
            && self.now >= s.next_heartbeat
        {
            s.next_heartbeat = self.now + interval;
            s.heartbeat_unanswered_since.get_or_insert(self.now);
            self.send_up(conn, Up::Heartbeat { session, sent: self.now });
        }
    }

    fn server_barrier(&mut self, s: &mut Server) {
        let valid = self.lease_valid(s);
        match s.barrier_at {
            Some(at) if at <= self.now => {
                s.barrier_at = None;
                let ok = self.vol.sync_all().is_ok();
                s.engine.barrier_done(ok, valid);
            }
            Some(_) => {}
            None => {
                if let Some(_barrier) = s.engine.publish(valid) {
                    // Mostly quick, sometimes a slow disk: power can fail inside it.
                    let d = if self.rng.percent(80) { self.rng.below(4) } else { self.rng.below(40) };
                    s.barrier_at = Some(self.now + d);
                }
            }
        }
    }

    fn server_claims(&mut self, s: &mut Server) {
        // The shell takes finished claims only while it has a session.
        if s.session.is_none() {
            return;
        }
        let due = take_due(&mut s.claims, self.now);
        for (_, Claim { reg, incarnation, partition, epoch }) in due {
            // From our hot standby if we keep one (reading only its lag), as the shell does.
            s.standby_synced_at.remove(&partition);
            let result = match s.standbys.remove(&partition) {
                Some(standby) => standby.claim(reg, Default::default()).map(|(p, st)| {
                    if self.trace {
                        let how = if st.from_standby { "from its standby" } else { "cold (its standby could not follow)" };
                        self.log.push(format!("{}: {} claims p{partition} {how}, {} records of lag", self.now, s.name, st.records));
                    }
                    p
                }),
                None => Partition::claim(self.vol.clone(), reg, partition),
            };
            let key_lost = matches!(result, Err(sharedisk_storage::Error::NotRegistered { .. }));
            self.control_event(s, Event::Claimed { incarnation, partition, epoch, result: result.map_err(|e| e.to_string()) });
            if key_lost {
                // As the shell: the core decides whether this incarnation is done.
                self.control_event(s, Event::KeyLost { incarnation });
            }
        }
    }

    /// The standby thread: poll some of the standbys (a poll may find the
    /// owner's cleaner lapped it, and resynchronise).
    fn server_standbys(&mut self, s: &mut Server) {
        if self.now < s.standby_stall_until {
            return;
        }
        if self.rng.percent(15) {
            s.standby_stall_until = self.now + self.rng.below(1000);
            return;
        }
        for (p, standby) in s.standbys.iter_mut() {
            if self.rng.percent(30) {
                // As the shell: the time is taken before the poll loads the head.
                let started = self.now;
                standby.poll().expect("a standby poll on a healthy volume");
                if standby.is_synced() {
                    s.standby_synced_at.insert(*p, started);
                }
            }
        }
    }

    /// The fast path: answered once its barrier completed and validated, else the engine's.
    fn server_fast_reads(&mut self, s: &mut Server) {
        let valid = self.lease_valid(s);
        for r in std::mem::take(&mut s.fast_reads) {
            if s.engine.barriers() < r.need && self.now < r.hold_until {
                s.fast_reads.push(r);
            } else if s.engine.barriers() < r.need {
                s.engine.submit(Job { partition: r.cell.id, request: Request::Exec { cmds: vec![r.cmd], multi: false }, reply: r.ticket });
            } else if r.cell.validated(valid) {
                self.reply(r.ticket, Answer::Reply(r.reply));
            } else {
                s.engine.submit(Job { partition: r.cell.id, request: Request::Exec { cmds: vec![r.cmd], multi: false }, reply: r.ticket });
            }
        }
    }

    /// Client requests that arrived: route, answer from the fast path, or queue.
    fn server_requests(&mut self, s: &mut Server) {
        while s.inbox.front().is_some_and(|(at, ..)| *at <= self.now) {
            let (_, ticket, op, key, replica) = s.inbox.pop_front().unwrap();
            let partition = partition_of(&key);
            let cmd = command(op, &key);
            let Some(cell) = s.routes.get(&partition).cloned() else {
                // A `READONLY` read of a partition we keep the standby of,
                // under the shell's rule (`conn::standby_read`).
                let age = s.standby_synced_at.get(&partition).map(|at| self.now - at);
                let answer = match (replica, s.standbys.get(&partition), age) {
                    (true, Some(standby), Some(age))
                        if standby.is_synced()
                            && super::standby::fresh_enough(
                                std::time::Duration::from_millis(age),
                                std::time::Duration::from_millis(REPLICA_MAX_LAG_MS),
                            ) =>
                    {
                        super::standby::execute_read(standby, &cmd).map_or(Answer::NotApplied, Answer::Reply)
                    }
                    _ => Answer::NotApplied,
                };
                self.reply(ticket, answer);
                continue;
            };
            if op == HOp::Get && self.lease_valid(s) && self.rng.percent(50) {
                let reply = {
                    let g = cell.read();
                    g.as_ref().map(|part| {
                        let staged = super::commands::Overlay::new();
                        let view = Committed(part);
                        let mut t = super::commands::Txn::new(&view, &staged, self.now);
                        super::commands::execute(&mut t, &cmd)
                    })
                };
                if let Some(reply) = reply {
                    let need = cell.durable_after();
                    s.fast_reads.push(FastRead { ticket, cell, reply, need, cmd, hold_until: self.now + 3_000 });
                    continue;
                }
            }
            s.engine.submit(Job { partition, request: Request::Exec { cmds: vec![cmd], multi: false }, reply: ticket });
        }
    }

    fn server_control(&mut self, s: &mut Server) {
        if !s.stopping.is_empty() {
            return; // the shell awaits a release before it looks at anything else
        }
        if s.disconnected {
            s.disconnected = false;
            self.control_event(s, Event::Disconnected);
            return;
        }
        let Some(conn) = s.conn else { return };
        let Some(c) = self.conns.get_mut(&conn) else {
            s.conn = None;
            s.disconnected = true;
            return;
        };
        if c.down.front().is_none_or(|(at, _)| *at > self.now) {
            return;
        }
        let (_, msg) = c.down.pop_front().unwrap();
        match msg {
            Down::Registered { result: Ok(session), sent } => {
                for old in std::mem::take(&mut s.abandoned) {
                    if let Some(c) = self.conns.get_mut(&old) {
                        c.closing = true;
                    }
                }
                s.session = Some(session);
                s.lease_until = sent + self.timeouts.server_lease().as_millis() as u64;
                if !std::mem::replace(&mut s.joined, true) {
                    self.send_up(conn, Up::Rebalance);
                }
            }
            Down::Registered { result: Err(ErrorCode::KeyFenced), .. } | Down::Expire => self.control_event(s, Event::Expired),
            Down::Registered { result: Err(code), .. } => panic!("registration refused: {code:?}"),
            Down::HeartbeatAck { expired: true, .. } => self.control_event(s, Event::Expired),
            Down::HeartbeatAck { sent, expired: false } => {
                s.heartbeat_unanswered_since = None;
                s.lease_until = s.lease_until.max(sent + self.timeouts.server_lease().as_millis() as u64);
            }
            Down::Grant { partition, epoch } => self.control_event(s, Event::Granted { partition, epoch }),
            Down::Revoke { partition } => self.control_event(s, Event::Revoked { partition }),
            Down::Map(map) => self.control_event(s, Event::Map(map)),
        }
    }

    fn control_event(&mut self, s: &mut Server, event: Event<Partition>) {
        if self.trace {
            let what = match &event {
                Event::Claimed { incarnation, partition, epoch, result } => {
                    format!("Claimed i{incarnation} p{partition} e{epoch} ok={}", result.is_ok())
                }
                other => format!("{other:?}"),
            };
            self.log.push(format!("{}: {} <- {what}", self.now, s.name));
        }
        let actions = s.control.handle(event);
        if self.trace {
            let acts: Vec<String> = actions
                .iter()
                .map(|a| match a {
                    Action::Serve { partition, .. } => format!("Serve p{partition}"),
                    Action::Discard { partition, epoch, tell, .. } => format!("Discard p{partition} e{epoch} tell={tell}"),
                    other => format!("{other:?}"),
                })
                .collect();
            self.log.push(format!("{}: {} -> {}", self.now, s.name, acts.join(", ")));
        }
        self.perform(s, actions);
    }

    /// What `ControlShell::perform` does, with the sim's connections.
    fn perform(&mut self, s: &mut Server, actions: Vec<Action<Partition>>) {
        for action in actions {
            match action {
                Action::Claim { incarnation, partition, epoch } => {
                    let at = self.now + self.rng.below(30);
                    s.claims.push((at, Claim { reg: s.reg, incarnation, partition, epoch }));
                }
                Action::Serve { partition, part, .. } => {
                    if self.trace {
                        self.log.push(format!("{}: {} serves partition {partition} at token {}", self.now, s.name, part.token()));
                    }
                    let cell = Arc::new(ServedPartition::new(part));
                    s.engine.add(cell.clone());
                    s.routes.insert(partition, cell);
                }
                Action::Release { partition, epoch, tell } => {
                    s.routes.remove(&partition);
                    let id = s.next_stop;
                    s.next_stop += 1;
                    s.engine.stop(partition, id);
                    s.stopping.insert(id, Stopping { partition, epoch, tell });
                }
                Action::Discard { partition, epoch, part, tell } => {
                    if part.release().is_ok() && tell {
                        self.tell_released(s, partition, epoch);
                    }
                }
                Action::GiveBack { partition, epoch, .. } | Action::Disown { partition, epoch } => self.tell_released(s, partition, epoch),
                Action::StillClaiming { partition, epoch } => {
                    if let (Some(session), Some(conn)) = (s.session, s.conn) {
                        self.send_up(conn, Up::Claiming { session, partition, epoch });
                    }
                }
                Action::Route(map) => {
                    let me = map.servers.iter().position(|m| m.id == s.name).map(|i| i as u32);
                    let wanted: std::collections::BTreeSet<u32> =
                        map.standbys.iter().enumerate().filter(|(_, x)| me.is_some() && **x == me).map(|(p, _)| p as u32).collect();
                    s.standbys.retain(|p, _| wanted.contains(p));
                    s.standby_synced_at.retain(|p, _| s.standbys.contains_key(p));
                    for p in wanted {
                        s.standbys.entry(p).or_insert_with(|| Standby::new(self.vol.clone(), p).expect("a partition of the volume"));
                    }
                }
                // The sim has no lease wait to abandon: its engine never waits.
                Action::AbandonLease => {}
                Action::Reregister => {
                    if let Some(conn) = s.conn.take() {
                        self.break_conn(conn);
                    }
                    s.session = None;
                    s.lease_until = 0;
                    s.key = self.new_key();
                    s.reg = self.vol.register(s.key, ProcessIdentity::current()).unwrap();
                    self.connect(s);
                }
                Action::Reconnect => {
                    if let Some(conn) = s.conn.take() {
                        self.break_conn(conn);
                    }
                    // The session was the connection's; the next one registers anew.
                    s.session = None;
                    self.connect(s);
                }
                Action::Exit => s.exiting = true,
            }
        }
    }

    fn tell_released(&mut self, s: &Server, partition: u32, epoch: u64) {
        if let (Some(session), Some(conn)) = (s.session, s.conn) {
            self.send_up(conn, Up::Release { session, partition, epoch });
        }
    }

    /// Answers the engine decided may go out, and finished stops.
    fn server_outputs(&mut self, s: &mut Server) {
        let answers: Vec<(Ticket, Outcome)> = s.engine.take_answers().collect();
        for (ticket, outcome) in answers {
            if self.trace {
                self.log.push(format!("{}: {} answers client {} attempt {}: {outcome:?}", self.now, s.name, ticket.client, ticket.attempt));
            }
            let a = match outcome {
                Outcome::Reply(r) => Answer::Reply(r),
                Outcome::Reroute => Answer::NotApplied,
            };
            self.reply(ticket, a);
        }
        let stopped: Vec<(u32, Result<(), String>)> = s.engine.take_stopped().collect();
        drop(s.engine.take_released());
        for (id, result) in stopped {
            let st = s.stopping.remove(&id).expect("a stop we asked for");
            if result.is_ok() && st.tell {
                self.tell_released(s, st.partition, st.epoch);
            }
        }
    }

    fn reply(&mut self, ticket: Ticket, a: Answer) {
        let at = self.now + self.delay();
        self.replies.push((at, ticket, a));
    }

    // ---- faults --------------------------------------------------------------

    fn kill(&mut self, i: usize) {
        let Some(s) = self.servers[i].take() else { return };
        self.log.push(format!("{}: kill -9 {}", self.now, s.name));
        if let Some(conn) = s.conn {
            self.break_conn(conn);
        }
        // kill -9: no destructor runs, nothing is released or flushed.
        self.dead_keys.push(s.key);
        self.graveyard.push(s);
        self.restart_at[i] = self.now + 200 + self.rng.below(2000);
    }

    fn power_loss(&mut self) {
        self.log.push(format!("{}: power loss", self.now));
        self.replica_history.clear();
        let image = sharedisk_testkit::power::torn_image(&self.media, &mut self.rng);
        for i in 0..SERVERS {
            if let Some(s) = self.servers[i].take() {
                self.graveyard.push(s);
            }
            self.restart_at[i] = self.now + 100 + self.rng.below(500);
        }
        self.conns.clear();
        self.lm = None;
        // A paused lock manager dies with the rest.
        self.zombie_lm = None;
        self.media = Arc::new(MemMedia::from_image(&image, None));
        self.vol = Arc::new(Volume::from_media(self.media.clone()).expect("the volume opens after a power loss"));
        for inc in self.vol.read_full_status() {
            // Every process died: an operator reaps their registrations.
            let _ = self.vol.preempt(inc.key);
        }
        self.lm_down_until = self.now + self.rng.below(300);
    }

    fn fault(&mut self) {
        let i = self.rng.below(SERVERS as u64) as usize;
        let name = format!("s{i}");
        match self.rng.below(100) {
            0..=24 => {
                if let Some(s) = self.servers[i].as_mut() {
                    let d = self.rng.below(2 * self.timeouts.lease_timeout.as_millis() as u64);
                    s.paused_until = self.now + d;
                    self.log.push(format!("{}: pause {name} for {d} ms", self.now));
                }
            }
            25..=34 => self.kill(i),
            35..=49 => {
                // The lock manager sees the connection close and fences at
                // once; the server may not reach it again for a while, and
                // serves on while its own lease lasts.
                let cut = if self.rng.percent(50) { 0 } else { self.rng.below(1_000) };
                if let Some(s) = self.servers[i].as_mut()
                    && let Some(conn) = s.conn.take()
                {
                    s.disconnected = true;
                    s.partitioned_until = self.now + cut;
                    self.log.push(format!("{}: connection of {name} breaks (lock manager unreachable for {cut} ms)", self.now));
                    self.break_conn(conn);
                }
            }
            50..=54 => {
                let jump = self.timeouts.lease_timeout.as_millis() as u64 * 2;
                self.log.push(format!("{}: clock jumps {jump} ms", self.now));
                self.now += jump;
            }
            55..=69 => {
                let partition = self.rng.below(u64::from(PARTITIONS)) as u32;
                self.admin(LmRequest::Move { partition, server: name })
            }
            70..=74 => self.admin(LmRequest::Drain { server: name }),
            75..=81 => self.admin(LmRequest::Rebalance),
            82..=83 => {
                if self.lm.is_some() {
                    self.restart_lockmgr();
                }
            }
            84..=86 => {
                if self.lm.is_some() && self.zombie_lm.is_none() {
                    self.depose_lockmgr();
                }
            }
            87..=92 => self.power_loss(),
            _ => {
                // SIGTERM: hand everything back, then the process exits and restarts later.
                if let Some(mut s) = self.servers[i].take() {
                    self.log.push(format!("{}: SIGTERM {name}", self.now));
                    self.control_event(&mut s, Event::Stop);
                    self.servers[i] = Some(s);
                }
            }
        }
    }

    fn admin(&mut self, req: LmRequest) {
        self.log.push(format!("{}: admin {req:?}", self.now));
        if let Some(mut lm) = self.lm.take() {
            lm.core.handle(self.now, req);
            self.lm_outputs(&mut lm);
            self.lm = Some(lm);
        }
    }

    // ---- clients ---------------------------------------------------------------

    fn client_step(&mut self, c: usize) {
        let now = self.now;
        // Answers that arrived.
        let arrived: Vec<(u64, Ticket, Answer)> = {
            let (due, rest): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.replies).into_iter().partition(|(at, t, _)| *at <= now && t.client == c);
            self.replies = rest;
            due
        };
        for (_, ticket, answer) in arrived {
            self.client_answer(c, ticket, answer);
        }
        let client = &mut self.clients[c];
        match &mut client.pending {
            None if now >= client.next_at && !self.quiet => self.client_start(c),
            Some(p) if now >= p.deadline => {
                // A GET whose outcome is unknown constrains nothing, replica read or not.
                let p = client.pending.take().unwrap();
                client.uncertain |= p.op != HOp::Get;
                self.history.push(Entry { client: c as u32, key: p.key, op: p.op, call: p.call, ret: None });
            }
            Some(p) if p.retry_at.is_some_and(|t| now >= t) => {
                p.retry_at = None;
                self.client_send(c);
            }
            _ => {}
        }
    }

    fn client_start(&mut self, c: usize) {
        let key = keys()[self.rng.below(KEYS as u64) as usize].clone();
        let op = match self.rng.below(10) {
            _ if self.clients[c].uncertain => HOp::Get,
            0..=3 => HOp::Get,
            4..=6 => {
                self.next_value += 1;
                HOp::Set(self.next_value)
            }
            7..=8 => HOp::Incr,
            _ => HOp::Del,
        };
        // Some reads go to the partition's standby, as a client reading from replicas.
        let replica = op == HOp::Get && self.rng.percent(50);
        self.client_begin(c, key, op, replica);
    }

    /// Start `op`; `replica`: a GET sent to the partition's standby first.
    fn client_begin(&mut self, c: usize, key: String, op: HOp, replica: bool) {
        let call = self.tick();
        self.clients[c].pending =
            Some(Pending { key, op, replica, call, deadline: self.now + CLIENT_TIMEOUT_MS, attempt: 0, retry_at: None });
        self.client_send(c);
    }

    fn client_send(&mut self, c: usize) {
        self.clients[c].attempts += 1;
        let attempt = self.clients[c].attempts;
        let p = self.clients[c].pending.as_mut().unwrap();
        p.attempt = attempt;
        let (key, op, replica) = (p.key.clone(), p.op, p.replica);
        // Mostly the owner the lock manager names (a slot map), or for a
        // replica read its standby; sometimes anyone (a stale map).
        let owner = self.lm.as_ref().and_then(|lm| {
            let map = lm.core.cluster_map();
            let of = if replica { &map.standbys } else { &map.owners };
            of[partition_of(&key) as usize].map(|o| map.servers[o as usize].id.clone())
        });
        let target = match owner {
            // A client with a stale map tries a server that may be a deposed owner.
            Some(name) if self.rng.percent(if replica { 90 } else { 60 }) => name[1..].parse::<usize>().unwrap(),
            _ => self.rng.below(SERVERS as u64) as usize,
        };
        let at = self.now + self.delay();
        let ticket = Ticket { client: c, attempt };
        if self.trace {
            self.log.push(format!("{}: client {c} attempt {attempt}: {op:?} {key} to s{target}", self.now));
        }
        match self.servers[target].as_mut() {
            Some(s) => s.inbox.push_back((at, ticket, op, key, replica)),
            // Connection refused: nothing was applied.
            None => self.replies.push((at, ticket, Answer::NotApplied)),
        }
    }

    fn client_answer(&mut self, c: usize, ticket: Ticket, answer: Answer) {
        let Some(p) = self.clients[c].pending.as_mut().filter(|p| p.attempt == ticket.attempt) else { return };
        let ret = match answer {
            Answer::NotApplied => {
                // Refused (MOVED): the next attempt goes to the owner.
                p.replica = false;
                p.retry_at = Some(self.now + 1 + self.rng.below(20));
                return;
            }
            Answer::Reply(r) => ret_of(p.op, &r),
        };
        let p = self.clients[c].pending.take().unwrap();
        let ret = ret.map(|r| (self.tick(), r));
        // An error reply leaves a write's outcome unknown, like a timeout.
        self.clients[c].uncertain |= ret.is_none() && p.op != HOp::Get;
        if self.trace {
            let from = if p.replica { " from a standby" } else { "" };
            self.log
                .push(format!("{}: client {c} attempt {} {} {:?} -> {ret:?}{from} (call {})", self.now, p.attempt, p.key, p.op, p.call));
        }
        if p.replica {
            // Answered by a standby: its call as far back as the bound allows.
            let sent_at = self.tick_times[p.call as usize - 1];
            let call = self.tick_from(sent_at.saturating_sub(REPLICA_MAX_LAG_MS));
            self.replica_history.push(Entry { client: 1000 + c as u32, key: p.key, op: p.op, call, ret });
        } else {
            self.history.push(Entry { client: c as u32, key: p.key, op: p.op, call: p.call, ret });
        }
        self.clients[c].next_at = self.now + self.rng.below(5);
    }

    // ---- the run -------------------------------------------------------------------

    fn step(&mut self) {
        self.now += self.rng.below(2);
        if self.faults && self.rng.percent(1) && self.rng.percent(40) {
            self.fault();
        }
        if self.lm.is_none() && self.now >= self.lm_down_until {
            self.start_lockmgr();
            for i in 0..SERVERS {
                if let Some(mut s) = self.servers[i].take() {
                    if s.conn.is_none() {
                        s.disconnected = true;
                    }
                    self.servers[i] = Some(s);
                }
            }
        }
        // After the standby's takeover above (a clock jump can pass both at once).
        if self.zombie_lm.as_ref().is_some_and(|(_, wake)| self.now >= *wake) {
            self.wake_zombie_lockmgr();
        }
        for i in 0..SERVERS {
            if self.servers[i].is_none() && self.now >= self.restart_at[i] && self.lm.is_some() {
                self.log.push(format!("{}: s{i} starts", self.now));
                self.start_server(i);
            }
        }
        match self.rng.below(SERVERS as u64 + 2) {
            0 => self.lm_step(),
            1 => {
                for c in 0..CLIENTS {
                    self.client_step(c);
                }
            }
            n => self.server_step(n as usize - 2),
        }
    }

    /// The state of every process, for a failure's report.
    fn dump(&self) -> String {
        let mut out = vec![format!("now {} ms; lock manager {}", self.now, if self.lm.is_some() { "up" } else { "down" })];
        if let Some(lm) = &self.lm {
            for p in 0..PARTITIONS {
                out.push(format!("  partition {p}: {:?}", lm.core.partition_state(p)));
            }
        }
        for s in self.servers.iter().flatten() {
            out.push(format!(
                "  {}: key {:x} session {:?} lease {} conn {:?} routes {:?} stopping {} claims {} paused_until {} disconnected {} queued {} barrier {:?}",
                s.name,
                s.key,
                s.session,
                s.lease_until as i64 - self.now as i64,
                s.conn,
                s.routes.keys().collect::<Vec<_>>(),
                s.stopping.len(),
                s.claims.len(),
                s.paused_until,
                s.disconnected,
                s.engine.queued(),
                s.barrier_at
            ));
        }
        let from = self.log.len().saturating_sub(if self.trace { 400 } else { 40 });
        out.push(format!("log (last {} lines):", self.log.len() - from));
        out.extend(self.log[from..].iter().cloned());
        out.join("\n")
    }

    /// After the faults: every key must be readable again.
    fn final_reads(&mut self) {
        for key in keys() {
            let deadline = self.now + HEAL_MS;
            self.client_begin(0, key.clone(), HOp::Get, false);
            self.clients[0].pending.as_mut().unwrap().deadline = deadline;
            while self.clients[0].pending.is_some() {
                assert!(self.now < deadline, "seed {}: liveness: {key} not readable within {HEAL_MS} ms after the faults", self.seed);
                self.step();
                self.client_step(0);
            }
            let e = self.history.last().unwrap();
            assert!(e.ret.is_some(), "seed {}: liveness: the final read of {key} timed out\n{}", self.seed, self.dump());
        }
        // Prefilled keys (a sample per partition) survived every takeover,
        // warm or cold, every cleaning and every power loss.
        for p in 0..PARTITIONS {
            let sample: Vec<(String, String)> = prefilled(p).filter(|_| self.rng.percent(5)).collect();
            for (key, value) in sample {
                let deadline = self.now + HEAL_MS;
                self.client_begin(0, key.clone(), HOp::Get, false);
                self.clients[0].pending.as_mut().unwrap().deadline = deadline;
                while self.clients[0].pending.is_some() {
                    self.step();
                    self.client_step(0);
                }
                // Not part of the register histories: those keys start absent.
                let e = self.history.pop().unwrap();
                let want = Ret::Value(Some(value.parse().unwrap()));
                assert_eq!(e.ret.map(|r| r.1), Some(want), "seed {}: prefilled key {key} reads back wrong\n{}", self.seed, self.dump());
            }
        }
    }
}

fn take_due<T>(v: &mut Vec<(u64, T)>, now: u64) -> Vec<(u64, T)> {
    let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(v).into_iter().partition(|(at, _)| *at <= now);
    *v = rest;
    due
}

fn command(op: HOp, key: &str) -> Command {
    let words: Vec<String> = match op {
        HOp::Get => vec!["GET".into(), key.into()],
        HOp::Set(v) => vec!["SET".into(), key.into(), v.to_string()],
        HOp::Incr => vec!["INCR".into(), key.into()],
        HOp::Del => vec!["DEL".into(), key.into()],
    };
    Command::parse(words.into_iter().map(Bytes::from).collect()).expect("a well-formed command")
}

/// What a reply says happened; None when the outcome is unknown.
fn ret_of(op: HOp, r: &Reply) -> Option<Ret> {
    match (op, r) {
        (HOp::Get, Reply::Bulk(b)) => Some(Ret::Value(Some(std::str::from_utf8(b).ok()?.parse().ok()?))),
        (HOp::Get, Reply::Null) => Some(Ret::Value(None)),
        (HOp::Set(_), Reply::Simple(s)) if s == "OK" => Some(Ret::Ok),
        (HOp::Incr, Reply::Int(n)) => Some(Ret::Int(*n)),
        (HOp::Del, Reply::Int(n)) => Some(Ret::Deleted(*n == 1)),
        (_, Reply::Error(_)) => None,
        (op, r) => panic!("{op:?} answered {r:?}"),
    }
}

/// One run: faults, then healing and final reads, then the checks.
fn run(seed: u64) -> World {
    let mut w = World::new(seed);
    let fault_end = w.now + FAULT_MS;
    while w.now < fault_end {
        w.step();
    }
    w.faults = false;
    for s in w.servers.iter_mut().flatten() {
        s.paused_until = 0;
    }
    // Let in-flight operations end, then read every key.
    let settle = w.now + 2 * CLIENT_TIMEOUT_MS;
    while w.now < settle {
        w.step();
    }
    w.quiet = true;
    while w.clients.iter().any(|c| c.pending.is_some()) {
        w.step();
    }
    w.final_reads();
    let mut all = w.history.clone();
    all.extend(w.replica_history.iter().cloned());
    if let Err(v) = history::check(&all) {
        panic!("seed {seed}: {}\nfaults:\n{}", shortest_violation(&v), w.log.join("\n"));
    }
    w
}

/// The violation cut to its shortest failing prefix (in call order): the
/// culprit is among its last entries.
fn shortest_violation(v: &history::Violation) -> String {
    let mut entries = v.history.clone();
    entries.sort_by_key(|e| e.call);
    let n = (1..=entries.len()).find(|&n| history::check(&entries[..n]).is_err()).unwrap_or(entries.len());
    let lines: Vec<String> = entries[..n].iter().rev().take(12).rev().map(|e| format!("  {e:?}")).collect();
    if std::env::var_os("SIM_TRACE").is_some() {
        for e in &entries {
            eprintln!("{e:?}");
        }
    }
    format!("key {:?} is not linearizable; the shortest failing prefix has {n} operations, ending:\n{}", v.key, lines.join("\n"))
}

fn seeds() -> Vec<u64> {
    // A debug build runs about 20x slower; CI runs thousands in release.
    sharedisk_testkit::rng::seeds("SIM_RUNS", if cfg!(debug_assertions) { 30 } else { 300 })
}

/// Runs until one fails; the seed that failed, if any.
fn first_failure(seeds: &[u64]) -> Option<(u64, String)> {
    for &seed in seeds {
        let r = std::panic::catch_unwind(|| run(seed));
        if let Err(e) = r {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            return Some((seed, msg));
        }
    }
    None
}

#[test]
fn the_cluster_stays_linearizable_and_loses_no_acknowledged_write_under_faults() {
    let seeds = seeds();
    let mut ops = 0;
    let mut acked = 0;
    let mut replica_reads = 0;
    for &seed in &seeds {
        let r = std::panic::catch_unwind(|| run(seed));
        match r {
            Ok(w) => {
                ops += w.history.len();
                acked += w.history.iter().filter(|e| e.ret.is_some()).count();
                replica_reads += w.replica_history.iter().filter(|e| e.ret.is_some()).count();
            }
            Err(e) => {
                eprintln!("cluster simulation failed; replay with SEED={seed} cargo test --bin sharedisk sim::");
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!(
        "cluster simulation: {} runs, {ops} operations, {acked} with a known outcome, {replica_reads} replica reads checked against the bound",
        seeds.len()
    );
    assert!(replica_reads > seeds.len() * 3, "standbys answered only {replica_reads} replica reads in {} runs", seeds.len());
    assert!(acked > seeds.len() * 50, "the simulation did little work: {acked} answered operations in {} runs", seeds.len());
}

/// Each deliberately broken build is caught within a bounded number of runs.
///
/// `SIM_MUTANT_RATE=1` runs every seed of the budget instead of stopping at
/// the first catch, and prints how many runs caught each mutant.
#[test]
fn the_simulation_catches_each_broken_build() {
    let budget: u64 = std::env::var("SIM_MUTANT_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(500);
    let rate = std::env::var_os("SIM_MUTANT_RATE").is_some();
    for m in [
        Mutant::AckBeforeBarrier,
        Mutant::NoReadValidation,
        Mutant::GrantBeforeFence,
        Mutant::NewOwnerReusesOldSegment,
        Mutant::StandbySkipsTail,
        Mutant::StaleReplicaReads,
        Mutant::LockmgrIgnoresTerm,
    ] {
        mutant::set(m);
        let seeds: Vec<u64> = (1..=budget).collect();
        let found = if rate {
            let caught: Vec<u64> = seeds.iter().copied().filter(|s| first_failure(&[*s]).is_some()).collect();
            eprintln!("mutant {m:?}: caught by {} of {budget} runs (first: {:?})", caught.len(), caught.first());
            caught.first().map(|s| (*s, String::new()))
        } else {
            first_failure(&seeds)
        };
        mutant::set(Mutant::None);
        match found {
            Some((seed, why)) => {
                eprintln!("mutant {m:?}: caught at seed {seed} (run {seed} of {budget}): {}", why.lines().next().unwrap_or(""))
            }
            None => panic!("mutant {m:?} survived {budget} runs of the cluster simulation"),
        }
    }
}
