//! The key-value index a claimed partition keeps of its published log.
//!
//! [`Index`] is the seam: a map from a key to the [`Entry`] of its latest
//! published version. [`MapIndex`] (a `HashMap`) is the default.
//! [`Keyspace`] wraps any index with the one piece of code that turns log
//! records into index updates and keeps the live-bytes count the cleaner
//! needs. Recovery, publication and the cleaner all go through it, so
//! anything else that reads the same log (a hot standby tailing it, say)
//! builds the same index with the same code, by feeding the visits of
//! [`crate::partition::recover`] to [`Keyspace::replayed`].
//!
//! A partition takes its index as a generic parameter with a default,
//! `Partition<I = MapIndex>`, rather than as a `Box<dyn Index>`:
//! * the read path (`get` for every GET) stays a static call the compiler
//!   can inline, and `keys()` can return a plain iterator;
//! * every existing use of `Partition` still means `Partition<MapIndex>`,
//!   and `Partition::claim`/`claim_with` are defined for `MapIndex` only
//!   (like `HashMap::new` for `RandomState`), so their callers need no type
//!   annotation; `Partition::claim_with_index` takes any other index.
//!
//! The cost, a type parameter, is paid only by code that picks another index.

use std::collections::HashMap;

use crate::blob::BlobRef;
use crate::layout::{REC_KIND_CLEAR, REC_KIND_EXPIRE, REC_KIND_FIELD, REC_KIND_FIELD_DEL, REC_KIND_LARGE, REC_KIND_PUT};
use crate::partition::Replayed;
use crate::record::{Op, Record};

/// A key's current version, as published: where its record is on the log,
/// not its value. Values stay on the volume (in the page cache) and are read
/// back, checksum and all, when asked for: an index costs about the keys, not
/// the data (a hot standby keeps a second one), and a process that dies
/// frees little anonymous memory, so its sockets close at once (the kernel
/// tears down about 30 ms of anonymous memory per GB before it closes a
/// killed process's files: a kill -9 would be seen that much later).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub expire_at_ms: u64,
    pub seq: u64,
    /// The segment holding this version's record.
    segment: u16,
    /// Where the record starts in that segment.
    offset: u32,
    /// Bytes of that record, trailer included.
    bytes: u32,
    /// What the key holds: a string in its record or in a blob
    /// ([`Keyspace`] keeps the blob's reference), or a hash ([`Keyspace`]
    /// keeps its fields; this entry's record is the hash's latest expire
    /// record, if it has one).
    shape: Shape,
    /// When the key was last written or read here (`OBJECT IDLETIME`).
    pub touched: Touched,
}

// The access time lives in what was padding: an entry is still 32 bytes.
const _: () = assert!(std::mem::size_of::<Entry>() == 32);

/// What a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Str,
    Large,
    Hash,
}

/// The segment a hash's entry names while no expire record of it is
/// current (never a real segment: indexes are below
/// [`crate::layout::SEGMENTS_PER_PARTITION_MAX`]).
const NO_RECORD: u16 = u16::MAX;

/// A hash field's current version: where its record is on the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldEntry {
    pub seq: u64,
    segment: u16,
    offset: u32,
    bytes: u32,
}

impl FieldEntry {
    pub fn segment(&self) -> u16 {
        self.segment
    }
    pub fn offset(&self) -> u32 {
        self.offset
    }
    pub fn record_bytes(&self) -> u32 {
        self.bytes
    }
}

/// The fields of one hash, hashed as the index's keys are.
pub type Fields = HashMap<Box<[u8]>, FieldEntry, foldhash::fast::RandomState>;

/// What a field entry costs in memory besides the field's bytes: the entry,
/// the boxed field's pointer and length, and the allocator's header of the box.
pub const FIELD_ENTRY_BYTES: usize = size_of::<FieldEntry>() + size_of::<Box<[u8]>>() + 16;

/// When a key was last accessed on this server, in unix seconds (Redis's
/// LRU clock has the same resolution). Memory only, never on the volume:
/// a version written, replayed by a claim, or applied by a standby starts
/// at the time it entered this index; reads store into it through a
/// shared reference, so it is atomic, and it takes no part in an entry's
/// identity (two entries differing only in it are equal).
#[derive(Default)]
pub struct Touched(std::sync::atomic::AtomicU32);

impl Touched {
    /// Now, by the system clock.
    pub fn now() -> Touched {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Touched(std::sync::atomic::AtomicU32::new(secs as u32))
    }
    /// Count an access at `now_ms` (unix ms).
    pub fn touch(&self, now_ms: u64) {
        self.set_secs((now_ms / 1000) as u32);
    }
    /// The unix second of the last access.
    pub fn secs(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn set_secs(&self, secs: u32) {
        self.0.store(secs, std::sync::atomic::Ordering::Relaxed)
    }
    /// Whole seconds since the last access, at `now_ms`.
    pub fn idle_secs(&self, now_ms: u64) -> u64 {
        (now_ms / 1000).saturating_sub(u64::from(self.secs()))
    }
}

impl Clone for Touched {
    fn clone(&self) -> Touched {
        Touched(std::sync::atomic::AtomicU32::new(self.secs()))
    }
}

impl PartialEq for Touched {
    fn eq(&self, _: &Touched) -> bool {
        true
    }
}
impl Eq for Touched {}

impl std::fmt::Debug for Touched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.secs())
    }
}

impl Entry {
    /// The segment holding this version's record (the cleaner relocates by segment).
    pub fn segment(&self) -> u16 {
        self.segment
    }
    /// Where this version's record starts in its segment.
    pub fn offset(&self) -> u32 {
        self.offset
    }
    /// Bytes this version's record occupies on the log, trailer included.
    pub fn record_bytes(&self) -> u32 {
        self.bytes
    }
    /// Whether the value is stored in a blob (the record holds its reference).
    pub fn is_large(&self) -> bool {
        self.shape == Shape::Large
    }
    /// Whether the key holds a hash (its fields are in [`Keyspace::fields`]).
    pub fn is_hash(&self) -> bool {
        self.shape == Shape::Hash
    }
    /// The record kind this entry's record must have.
    pub(crate) fn record_kind(&self) -> u8 {
        match self.shape {
            Shape::Str => REC_KIND_PUT,
            Shape::Large => REC_KIND_LARGE,
            Shape::Hash => REC_KIND_EXPIRE,
        }
    }
    fn is_live(&self, now_ms: u64) -> bool {
        self.expire_at_ms == 0 || self.expire_at_ms > now_ms
    }
}

/// A map from key to its latest published [`Entry`]. Implementations only
/// store what they are given: [`Keyspace`] decides what goes in.
pub trait Index {
    /// Set `key` to `entry`; returns the entry it replaced.
    fn insert(&mut self, key: Vec<u8>, entry: Entry) -> Option<Entry>;
    /// Remove `key`; returns the entry it held.
    fn remove(&mut self, key: &[u8]) -> Option<Entry>;
    fn get(&self, key: &[u8]) -> Option<&Entry>;
    /// Forget every key.
    fn clear(&mut self);
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Every key with its entry, in any order.
    fn iter(&self) -> impl Iterator<Item = (&[u8], &Entry)>;
}

/// The default index: every key in a `HashMap`, hashed with foldhash
/// seeded at random per map (`foldhash::fast::RandomState`): several times
/// cheaper than std's SipHash-1-3 on short keys, and still seeded, so a
/// client cannot precompute colliding keys for this process.
///
/// Keys of up to [`INLINE_KEY_BYTES`] live in the table itself
/// ([`StoredKey`]): one allocation per map rather than one per key, 56
/// bytes a key plus the table's slack instead of 56 plus a 32-byte heap
/// block, and the table is one large block, which the binary's allocator
/// puts in huge pages (`hugealloc`: a killed server's memory is torn down
/// in a time that does not grow with its keys).
#[derive(Debug, Default)]
pub struct MapIndex(HashMap<StoredKey, Entry, foldhash::fast::RandomState>);

/// Keys of at most this many bytes are stored inline in [`MapIndex`].
pub const INLINE_KEY_BYTES: usize = 22;

/// A key as [`MapIndex`] holds it: inline if short, else boxed. It hashes
/// and compares as its bytes (so the map is searched with a `&[u8]`).
#[derive(Clone)]
pub struct StoredKey(Stored);

#[derive(Clone)]
enum Stored {
    Inline { len: u8, bytes: [u8; INLINE_KEY_BYTES] },
    Boxed(Box<[u8]>),
}

const _: () = assert!(std::mem::size_of::<StoredKey>() == 24);
const _: () = assert!(INLINE_KEY_BYTES <= u8::MAX as usize);

impl StoredKey {
    pub fn new(key: Vec<u8>) -> StoredKey {
        if key.len() <= INLINE_KEY_BYTES {
            let mut bytes = [0; INLINE_KEY_BYTES];
            bytes[..key.len()].copy_from_slice(&key);
            StoredKey(Stored::Inline { len: key.len() as u8, bytes })
        } else {
            StoredKey(Stored::Boxed(key.into_boxed_slice()))
        }
    }
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Stored::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Stored::Boxed(b) => b,
        }
    }
    /// Whether the key is held inline (no allocation of its own).
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Stored::Inline { .. })
    }
}

impl std::borrow::Borrow<[u8]> for StoredKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

// As `[u8]` hashes, as `Borrow` requires.
impl std::hash::Hash for StoredKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl PartialEq for StoredKey {
    fn eq(&self, other: &StoredKey) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for StoredKey {}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl Index for MapIndex {
    fn insert(&mut self, key: Vec<u8>, entry: Entry) -> Option<Entry> {
        self.0.insert(StoredKey::new(key), entry)
    }
    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        self.0.remove(key)
    }
    fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.0.get(key)
    }
    fn clear(&mut self) {
        self.0.clear()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn iter(&self) -> impl Iterator<Item = (&[u8], &Entry)> {
        self.0.iter().map(|(k, e)| (k.as_bytes(), e))
    }
}

/// An index fed from a partition's log, with the bytes of its live records.
#[derive(Debug)]
pub struct Keyspace<I = MapIndex> {
    index: I,
    live_bytes: u64,
    /// Bytes of live records per segment (the cleaner's accounting: which
    /// segments still hold current versions, and how much is garbage).
    segment_live_bytes: Vec<u64>,
    /// Current versions that carry an expiry (they count as live until
    /// the cleaner finds them expired).
    expiring: u64,
    /// The blob of every current large put, by key.
    blobs: HashMap<Vec<u8>, BlobRef>,
    /// The fields of every hash, by key (its entry in `index` has the
    /// key's expiry).
    hashes: HashMap<Vec<u8>, Fields, foldhash::fast::RandomState>,
    /// Fields in `hashes`, all together.
    field_count: u64,
    /// Bytes of value those blobs hold (part of `live_bytes`).
    blob_bytes: u64,
    /// Blobs whose version was superseded, deleted or cleared, in the order
    /// that happened: the owner frees their segments once that is durable
    /// (`take_released`); anyone else just drops them.
    released: Vec<BlobRef>,
    /// Whether `released` is kept (the owner's keyspace only, once claimed).
    track_released: bool,
    /// The clock for entries' access times, read once per [`CLOCK_REUSE`]
    /// versions applied in one go (a claim replays millions, 26 ns a read
    /// here) and again for each batch a standby applies ([`Self::tick`]).
    clock: (u32, u32),
}

/// Versions applied per read of the system clock.
const CLOCK_REUSE: u32 = 4096;

impl<I: Index> Keyspace<I> {
    /// An empty keyspace over `index` (cleared: the log is its only source).
    pub fn new(mut index: I) -> Keyspace<I> {
        index.clear();
        Keyspace {
            index,
            live_bytes: 0,
            segment_live_bytes: Vec::new(),
            expiring: 0,
            blobs: HashMap::new(),
            hashes: HashMap::default(),
            field_count: 0,
            blob_bytes: 0,
            released: Vec::new(),
            track_released: false,
            clock: (0, 0),
        }
    }

    /// An access time of now, for a version entering the index.
    fn arrived(&mut self) -> Touched {
        let (secs, uses) = &mut self.clock;
        if *uses == 0 {
            *secs = Touched::now().secs();
        }
        *uses = (*uses + 1) % CLOCK_REUSE;
        Touched(std::sync::atomic::AtomicU32::new(*secs))
    }

    /// Read the clock again for the next version applied: a batch applied
    /// later than the last one arrives at its own time.
    pub(crate) fn tick(&mut self) {
        self.clock.1 = 0;
    }

    /// Set `key`'s access time back to `secs` (the cleaner moved its record:
    /// a relocation is no access).
    pub(crate) fn set_touched(&self, key: &[u8], secs: u32) {
        if let Some(e) = self.index.get(key) {
            e.touched.set_secs(secs);
        }
    }

    /// From now on keep the blobs released (the owner, which frees them);
    /// the ones released so far (while recovery replayed the log) are
    /// dropped: the claim's sweep frees whatever no current version names.
    pub(crate) fn track_released(&mut self) {
        self.released.clear();
        self.track_released = true;
    }

    /// Apply what recovery (`partition::recover`) hands its visitor.
    pub fn replayed(&mut self, visit: Replayed<'_, '_>) {
        match visit {
            Replayed::Reset => self.reset(),
            Replayed::Record(segment, offset, r) => self.apply_record(segment, offset, r),
        }
    }

    /// Apply one record read from the log at (`segment`, `offset`), in log order.
    pub fn apply_record(&mut self, segment: u16, offset: u32, r: &Record<'_>) {
        let bytes = r.total as u32;
        match r.kind {
            REC_KIND_PUT | REC_KIND_LARGE => {
                let shape = if r.kind == REC_KIND_LARGE { Shape::Large } else { Shape::Str };
                let touched = self.arrived();
                let entry = Entry { expire_at_ms: r.expire_at_ms, seq: r.seq, segment, offset, bytes, shape, touched };
                // `record::decode` checked the reference of a large put.
                let blob =
                    (shape == Shape::Large).then(|| BlobRef::decode(r.value, 0, 0).expect("a decoded large put carries a valid reference"));
                self.put(r.key.to_vec(), entry, blob);
            }
            REC_KIND_CLEAR => self.reset(),
            REC_KIND_FIELD => {
                let (field, _) = crate::record::split_field(r.value).expect("`record::decode` checked the field's length");
                self.field_put(r.key, field, FieldEntry { seq: r.seq, segment, offset, bytes });
            }
            REC_KIND_FIELD_DEL => self.field_del(r.key, r.value),
            REC_KIND_EXPIRE => self.hash_expire(r.key, r.expire_at_ms, r.seq, segment, offset, bytes),
            _ => self.delete(r.key),
        }
    }

    /// Apply one record a standby copied out of the log (`record_bytes`:
    /// its length on the log): the same effect as [`Self::apply_record`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply_owned(
        &mut self,
        segment: u16,
        offset: u32,
        kind: u8,
        key: Vec<u8>,
        field: &[u8],
        expire_at_ms: u64,
        seq: u64,
        record_bytes: u32,
        blob: Option<BlobRef>,
    ) {
        let bytes = record_bytes;
        match kind {
            REC_KIND_PUT | REC_KIND_LARGE => {
                let shape = if blob.is_some() { Shape::Large } else { Shape::Str };
                let touched = self.arrived();
                self.put(key, Entry { expire_at_ms, seq, segment, offset, bytes, shape, touched }, blob);
            }
            REC_KIND_CLEAR => self.reset(),
            REC_KIND_FIELD => self.field_put(&key, field, FieldEntry { seq, segment, offset, bytes }),
            REC_KIND_FIELD_DEL => self.field_del(&key, field),
            REC_KIND_EXPIRE => self.hash_expire(&key, expire_at_ms, seq, segment, offset, bytes),
            _ => self.delete(&key),
        }
    }

    /// The index itself, for reuse.
    pub(crate) fn into_index(self) -> I {
        self.index
    }

    /// Apply one operation the writer just published, with its sequence
    /// number and segment: the same effect as replaying its record.
    pub(crate) fn apply_op(&mut self, op: Op, seq: u64, segment: u16, offset: u32) {
        let bytes = op.encoded_bytes() as u32;
        match op {
            Op::Put { key, expire_at_ms, .. } => {
                self.put(key, Entry { expire_at_ms, seq, segment, offset, bytes, shape: Shape::Str, touched: Touched::now() }, None)
            }
            Op::PutLarge { key, blob, expire_at_ms } => {
                let blob = BlobRef::decode(&blob, 0, 0).expect("the writer encoded this reference");
                let entry = Entry { expire_at_ms, seq, segment, offset, bytes, shape: Shape::Large, touched: Touched::now() };
                self.put(key, entry, Some(blob))
            }
            Op::Del { key } => self.delete(&key),
            Op::Clear => self.reset(),
            Op::FieldPut { key, field, .. } => self.field_put(&key, &field, FieldEntry { seq, segment, offset, bytes }),
            Op::FieldDel { key, field } => self.field_del(&key, &field),
            Op::Expire { key, expire_at_ms } => self.hash_expire(&key, expire_at_ms, seq, segment, offset, bytes),
        }
    }

    /// Bytes of a current record at `segment` now count as live.
    fn account(&mut self, segment: u16, bytes: u32) {
        if bytes == 0 {
            return;
        }
        let (segment, bytes) = (usize::from(segment), u64::from(bytes));
        self.live_bytes += bytes;
        if self.segment_live_bytes.len() <= segment {
            self.segment_live_bytes.resize(segment + 1, 0);
        }
        self.segment_live_bytes[segment] += bytes;
    }

    /// A record at `segment` is no longer current.
    fn unaccount(&mut self, segment: u16, bytes: u32) {
        if bytes == 0 {
            return;
        }
        self.live_bytes -= u64::from(bytes);
        self.segment_live_bytes[usize::from(segment)] -= u64::from(bytes);
    }

    /// Make `key` a hash if it is not one (a string there, expired, is
    /// replaced); its fields.
    fn hash_at(&mut self, key: &[u8], seq: u64) -> &mut Fields {
        if !self.index.get(key).is_some_and(Entry::is_hash) {
            self.delete(key);
            let touched = self.arrived();
            let entry = Entry { expire_at_ms: 0, seq, segment: NO_RECORD, offset: 0, bytes: 0, shape: Shape::Hash, touched };
            self.index.insert(key.to_vec(), entry);
            self.hashes.insert(key.to_vec(), Fields::default());
        }
        self.hashes.get_mut(key).expect("every hash entry has its fields")
    }

    fn field_put(&mut self, key: &[u8], field: &[u8], entry: FieldEntry) {
        let (segment, bytes) = (entry.segment, entry.bytes);
        let old = self.hash_at(key, entry.seq).insert(field.into(), entry);
        match old {
            Some(old) => self.unaccount(old.segment, old.bytes),
            None => self.field_count += 1,
        }
        self.account(segment, bytes);
    }

    fn field_del(&mut self, key: &[u8], field: &[u8]) {
        let Some(old) = self.hashes.get_mut(key).and_then(|f| f.remove(field)) else { return };
        self.field_count -= 1;
        self.unaccount(old.segment, old.bytes);
    }

    /// The hash at `key` (made one if it is not: its fields may come later
    /// in the log) gets the expiry of the record at (`segment`, `offset`).
    fn hash_expire(&mut self, key: &[u8], expire_at_ms: u64, seq: u64, segment: u16, offset: u32, bytes: u32) {
        self.hash_at(key, seq);
        let touched = self.index.get(key).map_or_else(Touched::default, |e| e.touched.clone());
        let entry = Entry { expire_at_ms, seq, segment, offset, bytes, shape: Shape::Hash, touched };
        let old = self.index.insert(key.to_vec(), entry).expect("made a hash just now");
        self.unaccount(old.segment, old.bytes);
        self.expiring -= u64::from(old.expire_at_ms != 0);
        self.account(segment, bytes);
        self.expiring += u64::from(expire_at_ms != 0);
    }

    fn put(&mut self, key: Vec<u8>, entry: Entry, blob: Option<BlobRef>) {
        let (bytes, segment, expires) = (entry.bytes, entry.segment, entry.expire_at_ms != 0);
        // The key is needed again only for a blob (this one, or the one of
        // the version it replaces) or a hash it replaces (the maps are empty
        // unless blobs or hashes exist).
        let needs_key = blob.is_some()
            || (!self.blobs.is_empty() && self.blobs.contains_key(&key))
            || (!self.hashes.is_empty() && self.hashes.contains_key(&key));
        let key_for_blob = needs_key.then(|| key.clone());
        if let Some(old) = self.index.insert(key, entry) {
            self.forget(&old, key_for_blob.as_deref(), blob.as_ref());
        }
        if let (Some(key), Some(blob)) = (key_for_blob, blob) {
            self.blob_bytes += self.blob_cost(&blob);
            self.live_bytes += self.blob_cost(&blob);
            self.blobs.insert(key, blob);
        }
        self.account(segment, bytes);
        self.expiring += u64::from(expires);
    }

    fn delete(&mut self, key: &[u8]) {
        if let Some(old) = self.index.remove(key) {
            self.forget(&old, Some(key), None);
        }
    }

    /// Take a version that is no longer current out of the accounting; a
    /// blob it had is released unless `successor` (the new version's) is
    /// the same blob (a relocated reference). `key` is needed only when
    /// `old` was a large put (a put of a small value passes None).
    fn forget(&mut self, old: &Entry, key: Option<&[u8]>, successor: Option<&BlobRef>) {
        self.unaccount(old.segment, old.bytes);
        self.expiring -= u64::from(old.expire_at_ms != 0);
        if old.is_hash() {
            let fields = key.and_then(|k| self.hashes.remove(k)).expect("a hash entry has its fields, and its key was kept for them");
            self.field_count -= fields.len() as u64;
            for f in fields.values() {
                self.unaccount(f.segment, f.bytes);
            }
        }
        if old.is_large() {
            let blob = key.and_then(|k| self.blobs.remove(k)).expect("a large entry has its blob, and its key was kept for it");
            let cost = self.blob_cost(&blob);
            self.blob_bytes -= cost;
            self.live_bytes -= cost;
            if self.track_released && !successor.is_some_and(|s| s.same_blob(&blob)) {
                self.released.push(blob);
            }
        }
    }

    fn blob_cost(&self, blob: &BlobRef) -> u64 {
        blob.len
    }

    /// Drop an expired key whose older versions are all behind the tail (the cleaner).
    pub(crate) fn evict(&mut self, key: &[u8]) {
        self.delete(key)
    }

    /// Forget everything (recovery starts again from the floor).
    pub fn reset(&mut self) {
        self.clock.1 = 0;
        self.index.clear();
        self.live_bytes = 0;
        self.segment_live_bytes.clear();
        self.expiring = 0;
        let blobs = self.blobs.drain().map(|(_, b)| b);
        if self.track_released {
            self.released.extend(blobs);
        }
        self.blob_bytes = 0;
        self.hashes.clear();
        self.field_count = 0;
    }

    /// The blobs released since the last call (superseded, deleted or
    /// cleared versions), in order.
    pub(crate) fn take_released(&mut self) -> Vec<BlobRef> {
        std::mem::take(&mut self.released)
    }

    /// The segments of every current blob.
    pub fn blob_segments(&self) -> impl Iterator<Item = u16> + '_ {
        self.blobs.values().flat_map(|b| b.segments.iter().copied())
    }

    /// The blob of every current large put.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        self.blobs.values()
    }

    /// Every current large put: its key, entry and blob.
    pub fn blob_entries(&self) -> impl Iterator<Item = (&[u8], &Entry, &BlobRef)> {
        self.blobs.iter().filter_map(|(k, b)| self.index.get(k).map(|e| (k.as_slice(), e, b)))
    }

    /// The blob of `key`'s current version, if it is a large put.
    pub fn blob(&self, key: &[u8]) -> Option<&BlobRef> {
        self.blobs.get(key)
    }

    /// Current large puts, and the bytes of value their blobs hold.
    pub fn blob_stats(&self) -> (usize, u64) {
        (self.blobs.len(), self.blob_bytes)
    }

    /// The published version of `key` at time `now_ms` (expired keys are
    /// absent), whatever it holds.
    pub fn get(&self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        self.index.get(key).filter(|e| e.is_live(now_ms))
    }

    /// Whether the index holds `key` at all, expired or not (a hash created
    /// there must first delete what an expired version left).
    pub fn holds(&self, key: &[u8]) -> bool {
        self.index.get(key).is_some()
    }

    /// The fields of the hash at `key`, if it holds a live one at `now_ms`.
    pub fn fields(&self, key: &[u8], now_ms: u64) -> Option<&Fields> {
        self.get(key, now_ms).filter(|e| e.is_hash())?;
        self.hashes.get(key)
    }

    /// Hashes, and their fields all together.
    pub fn hash_stats(&self) -> (usize, u64) {
        (self.hashes.len(), self.field_count)
    }

    /// The cleaner's view of a field record at (`segment`, `offset`): if it
    /// is the current version of `field` of the hash at `key`, whether the
    /// hash is live at `now_ms` (to relocate) or expired (to evict).
    pub(crate) fn field_at(&self, key: &[u8], field: &[u8], segment: u16, offset: u32, now_ms: u64) -> Option<(bool, u64)> {
        let e = self.index.get(key).filter(|e| e.is_hash())?;
        let f = self.hashes.get(key)?.get(field).filter(|f| f.segment == segment && f.offset == offset)?;
        Some((e.is_live(now_ms), f.seq))
    }

    /// Drop a field of an expired hash whose older versions are all behind
    /// the tail (the cleaner; the hash's expire record is still current).
    pub(crate) fn evict_field(&mut self, key: &[u8], field: &[u8]) {
        self.field_del(key, field)
    }

    /// Every published key, expired or not.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.index.iter().map(|(k, _)| k)
    }

    /// Every published key with its entry, expired or not.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &Entry)> {
        self.index.iter()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
    /// Bytes of live (latest-version) records.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }
    pub fn index(&self) -> &I {
        &self.index
    }

    /// The cleaner's view of one record it read from the log at
    /// (`segment`, `offset`): if it is `key`'s current version, whether that
    /// is live at `now_ms` (to relocate) or expired (to evict), with its
    /// entry; None if a later version or a delete superseded it. The cleaner
    /// walks the victim segment's records and asks this of each, so
    /// cleaning a segment costs that segment, not the whole index.
    pub(crate) fn current_at(&self, key: &[u8], segment: u16, offset: u32, now_ms: u64) -> Option<(bool, &Entry)> {
        self.index.get(key).filter(|e| e.segment == segment && e.offset == offset).map(|e| (e.is_live(now_ms), e))
    }

    /// Bytes of current versions in `segment`.
    pub fn segment_live_bytes(&self, segment: u16) -> u64 {
        self.segment_live_bytes.get(usize::from(segment)).copied().unwrap_or(0)
    }

    /// Whether any current version lives in `segment`.
    pub(crate) fn holds_segment(&self, segment: u16) -> bool {
        self.segment_live_bytes(segment) > 0
    }

    /// Current versions with an expiry (some may have expired unseen).
    pub fn expiring(&self) -> u64 {
        self.expiring
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Stamp, decode, encode};

    #[test]
    fn short_keys_are_inline_long_ones_boxed_and_both_are_found_by_their_bytes() {
        let mut index = MapIndex::default();
        let e = |seq| Entry { expire_at_ms: 0, seq, segment: 1, offset: 2, bytes: 3, shape: Shape::Str, touched: Touched::now() };
        let keys: Vec<Vec<u8>> =
            vec![vec![], b"a".to_vec(), vec![7; INLINE_KEY_BYTES], vec![8; INLINE_KEY_BYTES + 1], vec![0; 300], b"a\0".to_vec()];
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(StoredKey::new(k.clone()).is_inline(), k.len() <= INLINE_KEY_BYTES);
            assert_eq!(StoredKey::new(k.clone()).as_bytes(), k.as_slice());
            assert!(index.insert(k.clone(), e(i as u64)).is_none(), "{k:?} collided with another key");
        }
        assert_eq!(index.len(), keys.len());
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(index.get(k).map(|e| e.seq), Some(i as u64), "{k:?}");
        }
        assert_eq!(index.insert(keys[2].clone(), e(99)).map(|e| e.seq), Some(2));
        assert_eq!(index.remove(&keys[3]).map(|e| e.seq), Some(3));
        assert!(index.get(&keys[3]).is_none());
        assert!(index.get(&[7; INLINE_KEY_BYTES - 1]).is_none(), "a prefix matched an inline key");
        let mut seen: Vec<Vec<u8>> = index.iter().map(|(k, _)| k.to_vec()).collect();
        seen.sort();
        let mut want: Vec<Vec<u8>> = keys.iter().filter(|k| **k != keys[3]).cloned().collect();
        want.sort();
        assert_eq!(seen, want);
    }

    #[test]
    fn replaying_records_and_applying_ops_build_the_same_keyspace() {
        let ops = [
            Op::Put { key: b"a".to_vec(), value: b"1".to_vec().into(), expire_at_ms: 0 },
            Op::Put { key: b"b".to_vec(), value: b"22".to_vec().into(), expire_at_ms: 5 },
            Op::Put { key: b"a".to_vec(), value: b"333".to_vec().into(), expire_at_ms: 0 },
            Op::Del { key: b"b".to_vec() },
            Op::Put { key: b"c".to_vec(), value: b"4".to_vec().into(), expire_at_ms: 0 },
        ];
        let mut from_log = Keyspace::new(MapIndex::default());
        let mut from_ops = Keyspace::new(MapIndex::default());
        for (i, op) in ops.iter().enumerate() {
            let mut buf = Vec::new();
            encode(op, Stamp { writer_key: 1, token: 1, seq: i as u64 + 1 }, &mut buf);
            from_log.apply_record(i as u16 % 2, 64 + 100 * i as u32, &decode(&buf, 0).unwrap());
            from_ops.apply_op(op.clone(), i as u64 + 1, i as u16 % 2, 64 + 100 * i as u32);
        }
        for ks in [&from_log, &from_ops] {
            assert_eq!(ks.len(), 2);
            assert_eq!(ks.get(b"a", 0).unwrap().seq, 3);
            assert!(ks.get(b"b", 0).is_none());
            let live: u64 = ks.index().iter().map(|(_, e)| u64::from(e.record_bytes())).sum();
            assert_eq!(ks.live_bytes(), live);
            assert_accounting_matches_the_index(ks);
        }
        assert_eq!(from_log.index().iter().collect::<HashMap<_, _>>(), from_ops.index().iter().collect::<HashMap<_, _>>());
        let mut ks = from_log;
        ks.replayed(Replayed::Reset);
        assert!(ks.is_empty() && ks.live_bytes() == 0);
        assert_accounting_matches_the_index(&ks);
    }

    /// A clear forgets every version before it, by replay as by applying
    /// the op, and the accounting with them (the cleaner then finds the
    /// older segments all garbage).
    #[test]
    fn a_clear_forgets_everything_before_it() {
        let ops = [
            Op::Put { key: b"a".to_vec(), value: b"1".to_vec().into(), expire_at_ms: 0 },
            Op::Put { key: b"b".to_vec(), value: b"22".to_vec().into(), expire_at_ms: 5 },
            Op::Clear,
            Op::Put { key: b"c".to_vec(), value: b"4".to_vec().into(), expire_at_ms: 0 },
        ];
        let mut from_log = Keyspace::new(MapIndex::default());
        let mut from_ops = Keyspace::new(MapIndex::default());
        for (i, op) in ops.iter().enumerate() {
            let mut buf = Vec::new();
            encode(op, Stamp { writer_key: 1, token: 1, seq: i as u64 + 1 }, &mut buf);
            from_log.apply_record(i as u16, 64, &decode(&buf, 0).unwrap());
            from_ops.apply_op(op.clone(), i as u64 + 1, i as u16, 64);
        }
        for ks in [&from_log, &from_ops] {
            assert_eq!(ks.len(), 1);
            assert!(ks.get(b"a", 0).is_none() && ks.get(b"b", 0).is_none());
            assert_eq!(ks.get(b"c", 0).unwrap().seq, 4);
            assert_eq!((ks.segment_live_bytes(0), ks.segment_live_bytes(1), ks.expiring()), (0, 0, 0));
            assert_accounting_matches_the_index(ks);
        }
    }

    /// The per-segment live bytes and the expiring count, recounted from the index.
    fn assert_accounting_matches_the_index(ks: &Keyspace) {
        let mut per_segment = HashMap::new();
        for (_, e) in ks.index().iter() {
            *per_segment.entry(e.segment()).or_insert(0u64) += u64::from(e.record_bytes());
        }
        for segment in 0..64u16 {
            assert_eq!(ks.segment_live_bytes(segment), per_segment.get(&segment).copied().unwrap_or(0), "segment {segment}");
            assert_eq!(ks.holds_segment(segment), per_segment.contains_key(&segment));
        }
        assert_eq!(ks.expiring(), ks.index().iter().filter(|(_, e)| e.expire_at_ms != 0).count() as u64);
    }

    /// Random puts (some with expiry), overwrites across segments, deletes
    /// and evictions: the accounting always equals a recount.
    #[test]
    fn the_cleaners_accounting_follows_every_change() {
        let mut ks = Keyspace::new(MapIndex::default());
        let mut rng = sharedisk_testkit::Rng::new(7);
        let mut next = |n: u64| rng.below(n);
        for seq in 1..5000u64 {
            let key = format!("k{}", next(300)).into_bytes();
            match next(10) {
                0 => ks.delete(&key),
                1 => ks.evict(&key),
                n => {
                    let expire_at_ms = if n == 2 { 1 + next(100) } else { 0 };
                    let (segment, offset) = (next(40) as u16, 64 + next(1000) as u32);
                    ks.put(
                        key,
                        Entry {
                            expire_at_ms,
                            seq,
                            segment,
                            offset,
                            bytes: 40 + next(500) as u32,
                            shape: Shape::Str,
                            touched: Touched::now(),
                        },
                        None,
                    );
                }
            }
            if seq % 500 == 0 {
                assert_accounting_matches_the_index(&ks);
            }
        }
        let some = ks.index().iter().next().map(|(k, e)| (k.to_vec(), e.clone())).expect("keys left");
        assert_eq!(ks.current_at(&some.0, some.1.segment(), some.1.offset(), 0).map(|(_, e)| e.seq), Some(some.1.seq));
        assert!(ks.current_at(&some.0, some.1.segment(), some.1.offset() + 1, 0).is_none(), "another offset matched");
        ks.reset();
        assert_accounting_matches_the_index(&ks);
    }
}
