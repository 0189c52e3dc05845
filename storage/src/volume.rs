//! The volume handle: superblock, create/open, and the SCSI-3-style
//! reservation table (REGISTER, PREEMPT, READ KEYS, READ RESERVATION).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::layout::{self, *};
use crate::media::{Media, MemMedia, MmapMedia, Region};
use crate::procinfo::{Liveness, ProcessIdentity};
use crate::{Error, Result};

/// Options for `Volume::create`.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub volume_bytes: u64,
    pub partitions: u32,
    pub registrant_slots: u32,
    pub segment_bytes: u32,
    /// Overwrite an existing file.
    pub force: bool,
    /// Reserve the blocks now (fallocate) instead of leaving the file sparse.
    pub preallocate: bool,
}

impl CreateOptions {
    pub fn new(volume_bytes: u64, partitions: u32) -> CreateOptions {
        CreateOptions {
            volume_bytes,
            partitions,
            registrant_slots: 64,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            force: false,
            preallocate: false,
        }
    }
}

/// A registered incarnation: its key and the slot that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registration {
    pub slot: u8,
    pub key: u64,
}

/// One registrant slot as READ FULL STATUS would show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot: u8,
    pub key: u64,
    pub state: SlotState,
    pub identity: ProcessIdentity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    Empty,
    /// The key was claimed but registration did not finish (crash mid-REGISTER).
    Registering,
    Registered,
    /// Preempted; kept until the incarnation is proven dead.
    Fenced,
}

/// READ RESERVATION.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservationStatus {
    pub generation: u64,
    pub type_code: u64,
    pub registrants: u32,
}

/// What a PREEMPT did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreemptReport {
    pub slot: u8,
    /// Partitions that were owned by the victim, with their new fence token.
    pub fenced: Vec<(u32, u32)>,
}

/// An open volume. Shared by every partition of one process (`Arc<Volume>`).
#[derive(Debug)]
pub struct Volume {
    region: Region,
    geo: Geometry,
    uuid: [u8; 16],
    path: Option<PathBuf>,
    failed: AtomicBool,
    syncs: SyncGroup,
}

/// Whole-volume syncs shared by every caller in this process (group
/// commit): a caller needs a sync that *started after* its call, and one
/// running sync serves everyone who arrived before it started. Without it,
/// an engine's barrier and several concurrent claims each issued their own
/// fdatasync, and the device flushed its cache once for each in turn.
#[derive(Debug, Default)]
struct SyncGroup {
    state: std::sync::Mutex<SyncState>,
    done: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Syncs started so far (the number of the latest).
    started: u64,
    /// The number of the latest sync that has returned.
    completed: u64,
    running: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_owned(), source }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Validate a superblock taken from untrusted bytes (see `layout`).
pub use crate::layout::decode_superblock;

fn fresh_uuid() -> [u8; 16] {
    // Not cryptographic: only needs to tell volumes apart.
    let mut seed = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut seed);
    }
    let t = now_unix_ms() ^ u64::from(std::process::id()) << 40;
    for (i, b) in t.to_le_bytes().iter().enumerate() {
        seed[i] ^= b;
    }
    seed[6] = (seed[6] & 0x0f) | 0x40; // RFC 4122 version 4
    seed[8] = (seed[8] & 0x3f) | 0x80;
    seed
}

pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

impl Volume {
    /// Create a volume file. Refuses to overwrite without `force`.
    pub fn create(path: &Path, opts: &CreateOptions) -> Result<Volume> {
        let geo = Geometry::compute(opts.volume_bytes, opts.partitions, opts.registrant_slots, opts.segment_bytes)?;
        let mut oo = OpenOptions::new();
        oo.read(true).write(true);
        if opts.force {
            oo.create(true).truncate(true);
        } else {
            oo.create_new(true);
        }
        let mut file = oo.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Exists { path: path.to_owned() }
            } else {
                Error::Io { path: path.to_owned(), source: e }
            }
        })?;
        file.lock().map_err(io_err(path))?;
        file.set_len(geo.volume_bytes).map_err(io_err(path))?;
        if opts.preallocate {
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, geo.volume_bytes)
                .map_err(|e| Error::Io { path: path.to_owned(), source: e.into() })?;
        }
        let uuid = fresh_uuid();
        // The reservation header first, the superblock last: a crash before the
        // superblock lands leaves a file that `open` rejects, never a half volume.
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(geo.reservation_offset)).map_err(io_err(path))?;
        file.write_all(&encode_reservation_header()).map_err(io_err(path))?;
        file.sync_data().map_err(io_err(path))?;
        file.seek(std::io::SeekFrom::Start(0)).map_err(io_err(path))?;
        file.write_all(&encode_superblock(&geo, uuid, now_unix_ms())).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
        file.unlock().map_err(io_err(path))?;
        drop(file);
        Volume::open(path)
    }

    /// Open and validate a volume file. Takes a shared `flock` for as long as
    /// the handle lives, so offline tools can tell the volume is in use.
    pub fn open(path: &Path) -> Result<Volume> {
        let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(io_err(path))?;
        let file_len = file.metadata().map_err(io_err(path))?.len();
        let mut sb = vec![0u8; SB_BYTES.min(file_len as usize)];
        file.read_exact(&mut sb).map_err(io_err(path))?;
        let (geo, uuid) = decode_superblock(&sb)?;
        if file_len < geo.volume_bytes {
            return Err(Error::Truncated { actual: file_len, expected: geo.volume_bytes });
        }
        file.lock_shared().map_err(io_err(path))?;
        let media = MmapMedia::map(file, geo.volume_bytes).map_err(io_err(path))?;
        let mut vol = Volume::from_media(Arc::new(media))?;
        debug_assert_eq!(vol.uuid, uuid);
        vol.path = Some(path.to_owned());
        Ok(vol)
    }

    /// Create a volume in memory (tests, simulations).
    pub fn create_in_memory(opts: &CreateOptions, media: Option<Arc<MemMedia>>) -> Result<(Volume, Arc<MemMedia>)> {
        let geo = Geometry::compute(opts.volume_bytes, opts.partitions, opts.registrant_slots, opts.segment_bytes)?;
        let media = media.unwrap_or_else(|| Arc::new(MemMedia::new(geo.volume_bytes as usize)));
        let region = Region::new(media.clone());
        region.write(0, &encode_superblock(&geo, fresh_uuid(), now_unix_ms()));
        region.store(geo.reservation_type(), RESERVATION_TYPE_WERO);
        region.flush(0, geo.partition_table_offset).map_err(Error::Media)?;
        Ok((Volume::from_media(media.clone())?, media))
    }

    /// Open a volume on any media (validates the superblock).
    pub fn from_media(media: Arc<dyn Media>) -> Result<Volume> {
        let region = Region::new(media);
        let mut sb = vec![0u8; SB_BYTES.min(region.len() as usize)];
        region.read(0, &mut sb);
        let (geo, uuid) = decode_superblock(&sb)?;
        if region.len() < geo.volume_bytes {
            return Err(Error::Truncated { actual: region.len(), expected: geo.volume_bytes });
        }
        Ok(Volume { region, geo, uuid, path: None, failed: AtomicBool::new(false), syncs: SyncGroup::default() })
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }
    pub fn uuid(&self) -> [u8; 16] {
        self.uuid
    }
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// Refuse all further work through this handle, saying why once: what it
    /// read contradicts what it wrote or validated (fail-stop).
    pub(crate) fn poison(&self, why: &str) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %why, "sharedisk: the volume handle is failed: {why}");
        }
    }

    /// True once a flush failed: the handle refuses all further work.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Refuse work after an I/O failure.
    pub(crate) fn ensure_ok(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) { Err(Error::HandleFailed) } else { Ok(()) }
    }

    /// Make a range durable. A failure poisons the handle: we never retry a
    /// failed flush and assume success (fsyncgate).
    pub(crate) fn flush(&self, offset: u64, len: u64) -> Result<()> {
        self.ensure_ok()?;
        self.region.flush(offset, len).map_err(|e| {
            self.failed.store(true, Ordering::Release);
            Error::Media(e)
        })
    }

    /// Store log bytes; an I/O error (say ENOSPC on a sparse file) poisons the
    /// handle like a failed flush.
    pub(crate) fn write_bulk(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.ensure_ok()?;
        self.region.write_bulk(offset, data).map_err(|e| {
            self.failed.store(true, Ordering::Release);
            Error::Media(e)
        })
    }

    /// Make everything stored on the volume so far durable (fdatasync). The
    /// same failure rule as `flush`: an error poisons the handle. Callers
    /// in this process share syncs: this returns once a sync that started
    /// after the call has returned, whoever ran it (`SyncGroup`).
    pub fn sync_all(&self) -> Result<()> {
        self.ensure_ok()?;
        let lock = || self.syncs.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut g = lock();
        // Any sync numbered `need` or later starts after this point.
        let need = g.started + 1;
        loop {
            // A failed sync poisoned the handle before it completed; a later
            // one that succeeds proves nothing about what the failed one
            // dropped (fsyncgate), so nobody waiting may start one.
            if g.completed >= need || self.failed.load(Ordering::Acquire) {
                return self.ensure_ok();
            }
            if !g.running {
                g.running = true;
                g.started += 1;
                let mine = g.started;
                drop(g);
                let r = self.region.sync_all().map_err(|e| {
                    self.failed.store(true, Ordering::Release);
                    Error::Media(e)
                });
                let mut g = lock();
                g.running = false;
                g.completed = mine;
                self.syncs.done.notify_all();
                return r;
            }
            g = self.syncs.done.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub(crate) fn check_partition(&self, partition: u32) -> Result<()> {
        if partition >= self.geo.partitions {
            return Err(Error::NoSuchPartition { partition, partitions: self.geo.partitions });
        }
        Ok(())
    }

    fn bump_generation(&self) {
        self.region.word(self.geo.reservation_generation()).fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn flush_reservations(&self) -> Result<()> {
        self.flush(self.geo.reservation_offset, self.geo.reservation_bytes())
    }

    fn slots(&self) -> impl Iterator<Item = u8> + use<> {
        0..self.geo.registrant_slots as u8
    }

    /// The raw state of one slot.
    pub fn slot_info(&self, slot: u8) -> SlotInfo {
        let key = self.region.load(self.geo.slot_key(slot));
        let status = self.region.load(self.geo.slot_status(slot));
        let (machine, boot) = layout::host_parts(self.region.load(self.geo.slot_host(slot)));
        let state = match (key, layout::status_state(status)) {
            (0, _) => SlotState::Empty,
            (_, SLOT_STATE_REGISTERED) => SlotState::Registered,
            (_, SLOT_STATE_FENCED) => SlotState::Fenced,
            _ => SlotState::Registering,
        };
        SlotInfo {
            slot,
            key,
            state,
            identity: ProcessIdentity {
                pid: layout::status_pid(status),
                start_ticks: self.region.load(self.geo.slot_start_ticks(slot)),
                machine,
                boot,
            },
        }
    }

    /// All non-empty slots.
    pub fn read_full_status(&self) -> Vec<SlotInfo> {
        self.slots().map(|s| self.slot_info(s)).filter(|s| s.state != SlotState::Empty).collect()
    }

    /// READ KEYS: the keys that currently count as registered.
    pub fn read_keys(&self) -> Vec<u64> {
        self.read_full_status().into_iter().filter(|s| s.state == SlotState::Registered).map(|s| s.key).collect()
    }

    /// READ RESERVATION.
    pub fn read_reservation(&self) -> ReservationStatus {
        ReservationStatus {
            generation: self.region.load(self.geo.reservation_generation()),
            type_code: self.region.load(self.geo.reservation_type()),
            registrants: self.read_keys().len() as u32,
        }
    }

    /// Whether `reg` still holds its slot with its key, registered.
    pub fn is_registered(&self, reg: Registration) -> bool {
        self.region.load(self.geo.slot_key(reg.slot)) == reg.key
            && layout::status_state(self.region.load(self.geo.slot_status(reg.slot))) == SLOT_STATE_REGISTERED
    }

    /// REGISTER `key` for the incarnation `who`. Keys are per incarnation: a
    /// key that was registered or fenced before cannot be registered again.
    pub fn register(&self, key: u64, who: ProcessIdentity) -> Result<Registration> {
        self.ensure_ok()?;
        if key == 0 {
            return Err(Error::ZeroKey);
        }
        if self.slots().any(|s| self.region.load(self.geo.slot_key(s)) == key) {
            return Err(Error::AlreadyRegistered { key });
        }
        for slot in self.slots() {
            if self.region.cas(self.geo.slot_key(slot), 0, key).is_ok() {
                self.region.store(self.geo.slot_start_ticks(slot), who.start_ticks);
                self.region.store(self.geo.slot_host(slot), layout::host_word(who.machine, who.boot));
                self.region.store(self.geo.slot_status(slot), layout::status_word(SLOT_STATE_REGISTERED, who.pid));
                self.bump_generation();
                self.flush_reservations()?;
                return Ok(Registration { slot, key });
            }
        }
        Err(Error::NoFreeSlot { slots: self.geo.registrant_slots })
    }

    fn find_key(&self, key: u64) -> Option<u8> {
        if key == 0 {
            return None;
        }
        self.slots().find(|&s| self.region.load(self.geo.slot_key(s)) == key)
    }

    /// PREEMPT: remove `victim`'s registration and fence every partition it
    /// owns (each gets a new fence token and no owner). After this returns,
    /// no publication of the victim can succeed on any partition.
    pub fn preempt(&self, victim: u64) -> Result<PreemptReport> {
        self.ensure_ok()?;
        let slot = self.find_key(victim).ok_or(Error::NotRegistered { key: victim })?;
        let at = self.geo.slot_status(slot);
        loop {
            let status = self.region.load(at);
            if layout::status_state(status) == SLOT_STATE_FENCED {
                return Err(Error::NotRegistered { key: victim });
            }
            let fenced = layout::status_word(SLOT_STATE_FENCED, layout::status_pid(status));
            if self.region.cas(at, status, fenced).is_ok() {
                break;
            }
        }
        self.bump_generation();
        let mut fenced = Vec::new();
        for p in 0..self.geo.partitions {
            if let Some(token) = self.fence_partition(p, Some(slot))? {
                fenced.push((p, token));
            }
        }
        self.flush_reservations()?;
        // Only the entries it fenced changed: their owner, head and tail words
        // (the heads all in the head table: one flush).
        if !fenced.is_empty() {
            self.flush_head_table()?;
        }
        for &(p, _) in &fenced {
            self.flush(self.geo.partition_entry(p), PE_DESCRIPTORS)?;
        }
        Ok(PreemptReport { slot, fenced })
    }

    /// Make every head and floor word durable (one flush of the head table).
    pub(crate) fn flush_head_table(&self) -> Result<()> {
        self.flush(self.geo.partition_table_offset, self.geo.head_table_bytes)
    }

    /// Take the partition away from its owner: a new token and no owner.
    /// With `only_slot`, only if that slot owns it. Returns the new token.
    /// The caller flushes.
    pub(crate) fn fence_partition(&self, partition: u32, only_slot: Option<u8>) -> Result<Option<u32>> {
        self.next_owner(partition, None, u32::MAX, |owner| only_slot.is_none() || owner.slot == only_slot)
    }

    /// Claim step 1: the next fence token, owned by `slot` (one short of the
    /// last, so that the claim can still be fenced). Returns the token.
    pub(crate) fn claim_owner(&self, partition: u32, slot: u8) -> Result<u32> {
        let token = self.next_owner(partition, Some(slot), u32::MAX - 1, |_| true)?;
        Ok(token.expect("a claim takes any owner word"))
    }

    /// The one writer of owner words: CAS it to (token + 1, `slot`) if
    /// `wanted(owner)`, refusing past `token_max`, then raise the head and
    /// tail tokens to match. Fence tokens only rise.
    fn next_owner(&self, partition: u32, slot: Option<u8>, token_max: u32, wanted: impl Fn(Owner) -> bool) -> Result<Option<u32>> {
        let at = self.geo.owner_word(partition);
        loop {
            let word = self.region.load(at);
            let owner = Owner::decode(word, at)?;
            if !wanted(owner) {
                return Ok(None);
            }
            if owner.token >= token_max {
                return Err(Error::TokensExhausted { partition });
            }
            let next = Owner { token: owner.token + 1, slot };
            assert!(next.token > owner.token, "fence tokens only rise");
            if self.region.cas(at, word, next.encode()).is_ok() {
                self.raise_log_tokens(partition, next.token);
                return Ok(Some(next.token));
            }
        }
    }

    /// Raise the head and tail words' tokens to at least `token`, so that a
    /// writer presenting an older token can no longer publish or cut.
    pub(crate) fn raise_log_tokens(&self, partition: u32, token: u32) {
        for at in [self.geo.head_word(partition), self.geo.tail_word(partition)] {
            loop {
                let word = self.region.load(at);
                let lw = LogWord::decode(word);
                if lw.token >= token {
                    break;
                }
                let raised = LogWord { token, pos: lw.pos };
                assert!(raised.token > lw.token, "fence tokens only rise");
                if self.region.cas(at, word, raised.encode()).is_ok() {
                    break;
                }
            }
        }
    }

    /// Graceful end of an incarnation: fence what it still owns, seal its
    /// open segments, free its slot.
    pub fn unregister(&self, reg: Registration) -> Result<()> {
        self.ensure_ok()?;
        if !self.is_registered(reg) {
            return Err(Error::NotRegistered { key: reg.key });
        }
        self.retire_slot(reg.slot)?;
        Ok(())
    }

    /// Seal `slot`'s open segments and fence its partitions, then free it.
    fn retire_slot(&self, slot: u8) -> Result<()> {
        let mut fenced_any = false;
        for p in 0..self.geo.partitions {
            let fenced = self.fence_partition(p, Some(slot))?.is_some();
            fenced_any |= fenced;
            let mut touched = fenced;
            for s in 0..self.geo.segments_per_partition as u16 {
                let at = self.geo.descriptor(p, s);
                let word = self.region.load(at);
                if let Ok(SegState::Open { slot: owner, token }) = SegState::decode(word, at)
                    && owner == slot
                {
                    touched |= self.region.cas(at, word, SegState::Sealed { slot, token }.encode()).is_ok();
                }
            }
            // Durable before the slot is freed below; untouched entries need nothing.
            if touched {
                self.flush(self.geo.partition_entry(p), self.geo.partition_entry_bytes)?;
            }
        }
        if fenced_any {
            self.flush_head_table()?;
        }
        self.region.store(self.geo.slot_status(slot), 0);
        self.region.store(self.geo.slot_start_ticks(slot), 0);
        self.region.store(self.geo.slot_host(slot), 0);
        self.region.store(self.geo.slot_key(slot), 0);
        self.bump_generation();
        self.flush_reservations()
    }

    /// Free the slots (and leaked segments) of fenced incarnations that are
    /// now provably dead. Returns the keys reclaimed.
    pub fn reap(&self) -> Result<Vec<u64>> {
        self.ensure_ok()?;
        let mut reaped = Vec::new();
        for info in self.read_full_status() {
            if info.state == SlotState::Fenced && info.identity.liveness() == Liveness::Dead {
                self.retire_slot(info.slot)?;
                reaped.push(info.key);
            }
        }
        Ok(reaped)
    }

    /// Like `reap`, but the caller vouches that `key`'s incarnation is dead
    /// (for example an offline check, or a process on another machine).
    pub fn reap_key(&self, key: u64) -> Result<()> {
        self.ensure_ok()?;
        let slot = self.find_key(key).ok_or(Error::NotRegistered { key })?;
        if self.slot_info(slot).state == SlotState::Registered {
            self.preempt(key)?;
        }
        self.retire_slot(slot)
    }

    /// The owner word of a partition.
    pub fn owner(&self, partition: u32) -> Result<Owner> {
        self.check_partition(partition)?;
        let at = self.geo.owner_word(partition);
        Owner::decode(self.region.load(at), at)
    }

    pub fn head(&self, partition: u32) -> Result<LogWord> {
        self.check_partition(partition)?;
        Ok(LogWord::decode(self.region.load(self.geo.head_word(partition))))
    }

    pub fn tail(&self, partition: u32) -> Result<LogWord> {
        self.check_partition(partition)?;
        Ok(LogWord::decode(self.region.load(self.geo.tail_word(partition))))
    }

    pub fn descriptor(&self, partition: u32, segment: u16) -> Result<SegState> {
        let at = self.geo.descriptor(partition, segment);
        SegState::decode(self.region.load(at), at)
    }
}
