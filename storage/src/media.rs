//! The media seam: the bytes of a volume, shared between processes.
//!
//! Two implementations: [`MmapMedia`] maps the volume file `MAP_SHARED` (the
//! production "device"), and [`MemMedia`] keeps the bytes in memory with an
//! optional separate *durable image* that only `flush` updates, so crash
//! tests can "lose power" at any flush.
//!
//! # Safety
//!
//! This is the only module with `unsafe`. The argument, once:
//!
//! * A media hands out one base pointer, 8-byte aligned, valid for `len`
//!   bytes for as long as the media lives (`MmapRaw` keeps the mapping; the
//!   file is never shrunk, so no page of it can fault with SIGBUS; `open`
//!   checks the file length before mapping).
//! * Other processes change these bytes concurrently, so we never form a
//!   `&[u8]` or `&mut [u8]` over them (that would assert no aliasing). We use
//!   `AtomicU64::from_ptr` for the words the protocol shares, and raw-pointer
//!   copies for record bytes. Record bytes are only read after the
//!   publication word that covers them has been read with `Acquire`, and the
//!   writer never stores below its own publication point again, so a read of
//!   published bytes does not race with a store: late stores, a fenced
//!   zombie's included, land beyond the head they would have published, in a
//!   segment open to their writer (FORMAT.md, fencing).
//! * No word is accessed both atomically and non-atomically: the atomic words
//!   (`layout::PE_*`, `RES_*`, `SLOT_*`, descriptors) live in the metadata
//!   area; record and segment-header bytes live in the data area.
//! * Every accessor bounds-checks and alignment-checks its offset against the
//!   media length, with assertions that stay on in release builds: an
//!   out-of-range offset is our bug, never a memory error.
//! * Cross-process atomics on a shared mapping are outside the Rust abstract
//!   machine but are what pthread process-shared primitives rely on; lock-free
//!   64-bit atomics are address-free on every supported target.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[cfg(not(target_has_atomic = "64"))]
compile_error!("sharedisk needs lock-free 64-bit atomics");

/// The bytes of a volume. Implementations must uphold the contract in the
/// module documentation, hence `unsafe trait`.
///
/// # Safety
/// `base()` must be 8-byte aligned and valid for reads and writes of `len()`
/// bytes for the lifetime of `self`.
pub unsafe trait Media: Send + Sync + std::fmt::Debug {
    fn base(&self) -> *mut u8;
    fn len(&self) -> usize;
    /// Make `[offset, offset + len)` durable. Returns only once it is.
    fn flush(&self, offset: usize, len: usize) -> io::Result<()>;
    /// Make every byte stored so far durable (the whole volume): one call
    /// that can stand for many range flushes (group commit across partitions).
    fn sync_all(&self) -> io::Result<()> {
        self.flush(0, self.len())
    }
    /// Store `data` at `offset` the way bulk data (log records) is written.
    /// The default stores through the mapping; a file-backed media may use
    /// `pwrite` instead, which leaves the mapping's page-table entries clean
    /// (an fsync then needs no TLB shootdown to write-protect them again).
    ///
    /// # Safety
    /// Callers go through `Region::write_bulk`, which checks the range.
    unsafe fn write_bulk(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        // SAFETY: the caller checked the range; the mapping is valid for `len`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base().add(offset), data.len()) };
        Ok(())
    }
    /// Copy out bulk data (log records, for recovery and hot standbys) the
    /// way it is read in bulk; false if this media has no such path (then
    /// the bytes are copied out of the mapping). A file-backed media uses
    /// `pread`, which leaves no page-table entries behind: a process that
    /// read a whole log through the mapping keeps a mapped page per 4 KiB of
    /// it, which its exit must tear down before its sockets close.
    ///
    /// # Safety
    /// Callers go through `Region::read_bulk`, which checks the range.
    unsafe fn read_bulk(&self, _offset: usize, _buf: &mut [u8]) -> bool {
        false
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bounds- and alignment-checked access to a media. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Region {
    media: Arc<dyn Media>,
    base: *mut u8,
    len: usize,
}

// SAFETY: the pointer is only used through the checked accessors below, whose
// accesses are atomic or go to bytes the protocol gives to a single writer.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    pub fn new(media: Arc<dyn Media>) -> Region {
        let base = media.base();
        let len = media.len();
        assert!((base as usize).is_multiple_of(8), "media base must be 8-byte aligned");
        Region { media, base, len }
    }

    pub fn len(&self) -> u64 {
        self.len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn media(&self) -> &Arc<dyn Media> {
        &self.media
    }

    /// The shared 64-bit word at `offset`.
    pub fn word(&self, offset: u64) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8), "word offset {offset} is not 8-byte aligned");
        assert!(offset.checked_add(8).is_some_and(|end| end <= self.len as u64), "word offset {offset} out of range");
        // SAFETY: in bounds and aligned (checked above); the media outlives
        // `self`; the word is only ever accessed atomically (module doc).
        unsafe { AtomicU64::from_ptr(self.base.add(offset as usize).cast::<u64>()) }
    }

    pub fn load(&self, offset: u64) -> u64 {
        self.word(offset).load(Ordering::Acquire)
    }

    pub fn store(&self, offset: u64, value: u64) {
        self.word(offset).store(value, Ordering::Release)
    }

    /// Compare-and-swap with AcqRel ordering; `Err(actual)` on mismatch.
    pub fn cas(&self, offset: u64, current: u64, new: u64) -> Result<(), u64> {
        self.word(offset).compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire).map(|_| ())
    }

    fn check_range(&self, offset: u64, len: usize) {
        assert!(offset.checked_add(len as u64).is_some_and(|end| end <= self.len as u64), "byte range {offset}+{len} out of range");
    }

    /// Copy bytes out of the volume.
    pub fn read(&self, offset: u64, buf: &mut [u8]) {
        self.check_range(offset, buf.len());
        // SAFETY: in bounds; raw copy, no reference to shared bytes is formed.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(offset as usize), buf.as_mut_ptr(), buf.len()) }
    }

    /// Store bytes into the volume. Callers only store into space their own
    /// (key, fence token) allocated by CAS (the design rule in FORMAT.md).
    pub fn write(&self, offset: u64, data: &[u8]) {
        self.check_range(offset, data.len());
        // SAFETY: in bounds; raw copy into bytes owned by this writer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(offset as usize), data.len()) }
    }

    /// Make a byte range durable.
    pub fn flush(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_range(offset, len as usize);
        self.media.flush(offset as usize, len as usize)
    }
    pub fn sync_all(&self) -> io::Result<()> {
        self.media.sync_all()
    }

    /// Store bulk data (records, segment headers): see `Media::write_bulk`.
    /// Copy bulk bytes out of the volume (whole segments of log): through
    /// the media's bulk path if it has one, else as [`Region::read`].
    pub fn read_bulk(&self, offset: u64, buf: &mut [u8]) {
        self.check_range(offset, buf.len());
        // SAFETY: the range was checked just above.
        if !unsafe { self.media.read_bulk(offset as usize, buf) } {
            self.read(offset, buf);
        }
    }

    pub fn write_bulk(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_range(offset, data.len());
        // SAFETY: the range was checked just above.
        unsafe { self.media.write_bulk(offset as usize, data) }
    }
}

/// The volume file mapped `MAP_SHARED` with `memmap2::MmapRaw`.
#[derive(Debug)]
pub struct MmapMedia {
    map: memmap2::MmapRaw,
    _file: File,
}

impl MmapMedia {
    /// Map exactly `len` bytes of `file`. The caller has checked that the file
    /// is at least that long.
    pub fn map(file: File, len: u64) -> io::Result<MmapMedia> {
        let file_len = file.metadata()?.len();
        if file_len < len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "volume file shorter than its geometry"));
        }
        let len = usize::try_from(len).map_err(|_| io::Error::other("volume larger than the address space"))?;
        let map = memmap2::MmapOptions::new().len(len).map_raw(&file)?;
        Ok(MmapMedia { map, _file: file })
    }
}

// SAFETY: MmapRaw's pointer is page aligned and valid for its length while the
// mapping lives; it lives as long as `self`.
unsafe impl Media for MmapMedia {
    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
    fn len(&self) -> usize {
        self.map.len()
    }
    fn flush(&self, offset: usize, len: usize) -> io::Result<()> {
        // msync(MS_SYNC) on the page-aligned range.
        self.map.flush_range(offset, len)
    }
    unsafe fn write_bulk(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        // Same page cache as the mapping, so every reader sees the bytes at once.
        std::os::unix::fs::FileExt::write_all_at(&self._file, data, offset as u64)
    }
    unsafe fn read_bulk(&self, offset: usize, buf: &mut [u8]) -> bool {
        // The same page cache as the mapping, and as `write_bulk`. On an
        // error (EIO) fall back to the mapping, which reads the same bytes.
        std::os::unix::fs::FileExt::read_exact_at(&self._file, buf, offset as u64).is_ok()
    }
    fn sync_all(&self) -> io::Result<()> {
        // fdatasync: on Linux msync(MS_SYNC) is an fsync of the range, and
        // pages dirtied through a shared mapping are dirty in the page cache,
        // so this covers every store made through the mapping.
        self._file.sync_data()
    }
}

/// An in-memory volume for tests. With a durable image attached, only
/// `flush` copies bytes into the image, and after `fail_after_flushes`
/// successful flushes every further flush fails with EIO: "power is lost at
/// flush k", and `durable_image` is what a reboot would find.
#[derive(Debug)]
pub struct MemMedia {
    words: Box<[AtomicU64]>,
    durable: Option<Mutex<Durable>>,
}

#[derive(Debug)]
struct Durable {
    image: Vec<u8>,
    flushes: u64,
    fail_after: Option<u64>,
}

impl MemMedia {
    /// A zeroed in-memory volume of `len` bytes (rounded up to 8) whose
    /// flushes always succeed and are not recorded.
    pub fn new(len: usize) -> MemMedia {
        MemMedia { words: (0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect(), durable: None }
    }

    /// An in-memory volume starting from `image`, recording a durable image
    /// that fails every flush after the first `fail_after` ones.
    pub fn from_image(image: &[u8], fail_after: Option<u64>) -> MemMedia {
        let media = MemMedia::new(image.len());
        for (i, chunk) in image.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            media.words[i].store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        MemMedia { durable: Some(Mutex::new(Durable { image: image.to_vec(), flushes: 0, fail_after })), ..media }
    }

    /// The bytes as the last successful flushes left them on "disk".
    pub fn durable_image(&self) -> Option<Vec<u8>> {
        self.durable.as_ref().map(|d| d.lock().unwrap_or_else(|e| e.into_inner()).image.clone())
    }

    /// From now on, fail every flush after `k` more successful ones.
    pub fn set_fail_after(&self, k: Option<u64>) {
        if let Some(d) = &self.durable {
            let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
            d.fail_after = k.map(|k| d.flushes + k);
        }
    }

    /// How many flushes succeeded so far.
    pub fn flushes(&self) -> u64 {
        self.durable.as_ref().map_or(0, |d| d.lock().unwrap_or_else(|e| e.into_inner()).flushes)
    }

    /// The current (volatile) bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.load(Ordering::Acquire).to_le_bytes()).collect()
    }
}

// SAFETY: the boxed slice of AtomicU64 is 8-aligned and lives with `self`;
// interior mutability makes writes through the pointer legal.
unsafe impl Media for MemMedia {
    fn base(&self) -> *mut u8 {
        self.words.as_ptr() as *mut u8
    }
    fn len(&self) -> usize {
        self.words.len() * 8
    }
    fn flush(&self, offset: usize, len: usize) -> io::Result<()> {
        let Some(durable) = &self.durable else { return Ok(()) };
        let mut d = durable.lock().unwrap_or_else(|e| e.into_inner());
        if d.fail_after.is_some_and(|k| d.flushes >= k) {
            return Err(io::Error::other("injected media failure: power lost"));
        }
        d.flushes += 1;
        // Flushes cover whole pages, like msync.
        let start = offset / 4096 * 4096;
        let end = (offset + len).div_ceil(4096) * 4096;
        let end = end.min(self.len());
        for w in start / 8..end / 8 {
            let bytes = self.words[w].load(Ordering::Acquire).to_le_bytes();
            let at = w * 8;
            let n = bytes.len().min(d.image.len().saturating_sub(at));
            d.image[at..at + n].copy_from_slice(&bytes[..n]);
        }
        Ok(())
    }
}
