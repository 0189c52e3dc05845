//! The cleaner: reclaims the oldest segment of the chain by copying its live
//! records to the head, then cutting the tail past it (FORMAT.md,
//! "Publication protocol", step 6), and the policy that runs it from
//! `append` when few segments are free.

use crate::index::Index;
use crate::layout::{LogWord, Pos, REC_KIND_EXPIRE, REC_KIND_FIELD, REC_KIND_LARGE, REC_KIND_PUT, SEGMENT_HEADER_BYTES, SegState};
use crate::record::Op;
use crate::{Error, Result};

use super::Partition;
use super::recovery::{self, ChainSeg};

/// The cleaner's policy and memory.
#[derive(Debug)]
pub(super) struct Cleaner {
    /// Start cleaning when this few segments are free.
    clean_below_free_segments: u32,
    /// The live bytes when the partition was last found full: it stays full
    /// (without re-copying everything on every write) until deletes lower them.
    full_at_live_bytes: Option<u64>,
}

/// Segments cleaned together (one commit, one tail cut: the flushes of
/// one) when a segment is opened while the log is space amplified: more
/// than one, so the garbage shrinks when the tail is mostly garbage, and
/// the cleaning's flushes are paid once per that many segments of writes.
const SPACE_CLEAN_BATCH: usize = 8;

/// The garbage a partition's log may hold whatever its live bytes: 16 MiB
/// (a volume of 16 partitions: 256 MiB), or a quarter of a small
/// partition's log space.
pub(super) fn space_slack(geo: &crate::layout::Geometry) -> u64 {
    let log_bytes = u64::from(geo.segments_per_partition) * u64::from(geo.segment_bytes - SEGMENT_HEADER_BYTES);
    (16u64 << 20).min(log_bytes / 4)
}

impl Cleaner {
    pub(super) fn new(clean_below_free_segments: u32) -> Cleaner {
        Cleaner { clean_below_free_segments, full_at_live_bytes: None }
    }
}

impl<I: Index> Partition<I> {
    /// Before staging `ops` (`total` bytes): if they need a new segment and
    /// few are free, commit what is staged, clean (at most one rotation of
    /// the chain), and refuse puts that would take the last free segment.
    /// True if it committed.
    ///
    /// `blob_segments`: segments the batch's large values take besides (FORMAT.md,
    /// "Large values"); they are counted as needed on top of the threshold.
    pub(super) fn make_room(&mut self, ops: &[Op], total: usize, blob_segments: u32, now_ms: u64) -> Result<bool> {
        let geo = *self.holder.vol.geometry();
        let threshold = self.cleaner.clean_below_free_segments;
        let fits = self.writer.fits(total, &geo);
        // Log segments a batch larger than one takes beyond the first (one
        // more than its bytes fill: records do not split across segments).
        let payload = (geo.segment_bytes - SEGMENT_HEADER_BYTES) as usize;
        let spill = if total > payload { total.div_ceil(payload) as u32 } else { 0 };
        let extra = blob_segments + spill;
        if fits && extra == 0 {
            return Ok(false);
        }
        if self.writer.free_segments >= threshold + extra {
            // Room enough; but a new segment is about to be written: first
            // bound the space the log takes (see `space_amplified`).
            if !self.space_amplified() {
                return Ok(false);
            }
            self.commit()?;
            self.clean_oldest(now_ms, SPACE_CLEAN_BATCH)?;
            // Relocating may have taken segments: unless the usual margin
            // still holds, go on as a partition short of segments does.
            if self.writer.free_segments >= threshold + extra {
                return Ok(true);
            }
        }
        // More than the partition could ever hold: say so without cleaning.
        if u64::from(extra) + u64::from(threshold) > u64::from(geo.segments_per_partition) {
            return Err(self.full_error());
        }
        let only_deletes = ops.iter().all(|o| matches!(o, Op::Del { .. } | Op::Clear));
        // Once full, stay full (without re-copying the whole partition on
        // every write) until deletes have lowered the live bytes.
        if !only_deletes && self.cleaner.full_at_live_bytes.is_some_and(|b| self.keyspace.live_bytes() >= b) {
            return Err(self.full_error());
        }
        self.commit()?;
        // FIFO cleaning: at most one rotation of the chain per write, so a
        // log that is all live data ends in a verdict, not a loop; and none
        // when the chain holds less than a segment of garbage: it would
        // rewrite the whole log to free nothing (3 partitions of 512 MB
        // filled by one client did that at every segment they opened, and
        // the write-back of it stalled the lock manager's own flushes until
        // every session expired).
        let mut budget = if self.garbage_worth_cleaning() { self.writer.chain.len() } else { 0 };
        while self.writer.free_segments < threshold + extra && budget > 0 && self.clean_one(now_ms)? {
            budget -= 1;
        }
        // Puts may not take the last free segment: it is the cleaner's (and
        // deletes') way out of a full partition.
        let fits = self.writer.fits(total, &geo);
        if self.writer.free_segments < extra + u32::from(!fits) + u32::from(!only_deletes) {
            self.cleaner.full_at_live_bytes = Some(self.keyspace.live_bytes());
            return Err(self.full_error());
        }
        self.cleaner.full_at_live_bytes = None;
        Ok(true)
    }

    /// Whether the log's garbage (superseded and deleted versions on the
    /// chain) is at least its live bytes and at least [`space_slack`]: then
    /// the segment opened then first cleans [`SPACE_CLEAN_BATCH`] from the
    /// tail, so the log takes about twice its live bytes plus the
    /// slack, not the whole partition (on a sparse volume, where a
    /// segment's blocks go back to the file system when it is freed, that
    /// is the disk it takes: allocation keeps to the lowest segments). Redis
    /// rewrites its AOF by a rule of the same shape
    /// (`auto-aof-rewrite-percentage 100`, `auto-aof-rewrite-min-size 64mb`).
    /// The write amplification this costs is at most about 2 for uniform
    /// overwrites (the tail is then about half live), less with hot keys.
    fn space_amplified(&self) -> bool {
        let geo = self.holder.vol.geometry();
        let (mut used, mut live) = (0u64, 0u64);
        for c in &self.writer.chain {
            used += u64::from(c.end - c.start);
            live += self.keyspace.segment_live_bytes(c.segment).min(u64::from(c.end - c.start));
        }
        let garbage = used - live;
        garbage >= live && garbage >= space_slack(geo)
    }

    /// Whether cleaning may free a segment: the chain holds at least a
    /// segment's payload of garbage (versions superseded or deleted), or
    /// versions with an expiry (live until the cleaner sees them expired).
    /// A chain with less garbage than that is full to within its records'
    /// fit at segment ends.
    fn garbage_worth_cleaning(&self) -> bool {
        if self.keyspace.expiring() > 0 {
            return true;
        }
        let payload = u64::from(self.holder.vol.geometry().segment_bytes - SEGMENT_HEADER_BYTES);
        let garbage: u64 =
            self.writer.chain.iter().map(|c| u64::from(c.end - c.start).saturating_sub(self.keyspace.segment_live_bytes(c.segment))).sum();
        garbage >= payload
    }

    /// Reclaim the oldest segment of the chain: copy its live records to the
    /// head, publish, move the tail past it, free it. Returns false when there
    /// is nothing to clean (the chain is a single segment).
    pub fn clean_one(&mut self, now_ms: u64) -> Result<bool> {
        self.clean_oldest(now_ms, 1)
    }

    /// [`Self::clean_one`] for the `count` oldest segments at once (never
    /// the head): their live records relocated in one commit, the tail moved
    /// past them all in one cut, so that cleaning several costs the flushes
    /// of one. Fewer if the chain is shorter; one at a time if relocating
    /// them all might not find the room.
    fn clean_oldest(&mut self, now_ms: u64, count: usize) -> Result<bool> {
        self.holder.ensure_usable()?;
        if self.writer.chain.len() < 2 || self.writer.has_pending() {
            return Ok(false);
        }
        let count = count.clamp(1, self.writer.chain.len() - 1);
        let victims: Vec<ChainSeg> = self.writer.chain.iter().take(count).copied().collect();
        // The victims' records, each checked against the index: the current
        // versions are relocated, the expired ones evicted. (Not a scan of
        // the index for entries naming the victim: that costs every key per
        // cleaned segment, and a nearly full partition cleans many segments
        // per write; a partition of 500 thousand keys spent seconds of CPU
        // per write that way.)
        let (mut live, mut expired, mut touched) = (Vec::new(), Vec::new(), Vec::new());
        let mut expired_fields = Vec::new();
        let (keyspace, vol, id) = (&self.keyspace, &self.holder.vol, self.holder.id);
        let mut mismatch = None;
        recovery::replay(vol, id, &victims, |segment, offset, r| {
            // A field's current version is relocated while its hash lives;
            // a field of an expired hash is dropped (the hash's expire
            // record, still current, keeps the hash expired on replay).
            if r.kind == REC_KIND_FIELD {
                let (field, value) = crate::record::split_field(r.value).expect("`record::decode` checked the field's length");
                match keyspace.field_at(r.key, field, segment, offset, now_ms) {
                    Some((_, seq)) if seq != r.seq => {
                        mismatch.get_or_insert((segment, offset, seq));
                    }
                    Some((true, _)) => {
                        live.push(Op::FieldPut { key: r.key.to_vec(), field: field.to_vec(), value: bytes::Bytes::copy_from_slice(value) })
                    }
                    Some((false, _)) => expired_fields.push((r.key.to_vec(), field.to_vec())),
                    None => {}
                }
                return;
            }
            if !matches!(r.kind, REC_KIND_PUT | REC_KIND_LARGE | REC_KIND_EXPIRE) {
                return; // deletes and clears: what they removed is behind them
            }
            match keyspace.current_at(r.key, segment, offset, now_ms) {
                // The index names this very record: it must be that put.
                Some((_, e)) if r.seq != e.seq || r.kind != e.record_kind() => {
                    mismatch.get_or_insert((segment, offset, e.seq));
                }
                // A hash's expire record moves while the hash lives; an
                // expired hash is deleted with a record (its fields in later
                // segments would bring it back on replay otherwise).
                Some((true, e)) if e.is_hash() => {
                    touched.push(e.touched.secs());
                    live.push(Op::Expire { key: r.key.to_vec(), expire_at_ms: e.expire_at_ms });
                }
                Some((false, e)) if e.is_hash() => {
                    touched.push(0);
                    live.push(Op::Del { key: r.key.to_vec() });
                }
                // A large put's reference moves; its blob stays where it is.
                Some((true, e)) if e.is_large() => {
                    touched.push(e.touched.secs());
                    live.push(Op::PutLarge { key: r.key.to_vec(), blob: r.value.to_vec(), expire_at_ms: e.expire_at_ms })
                }
                Some((true, e)) => {
                    touched.push(e.touched.secs());
                    live.push(Op::Put { key: r.key.to_vec(), value: bytes::Bytes::copy_from_slice(r.value), expire_at_ms: e.expire_at_ms })
                }
                Some((false, _)) => expired.push(r.key.to_vec()),
                None => {}
            }
        })?;
        if let Some((segment, offset, seq)) = mismatch {
            let at = vol.geometry().log_byte(id, segment, offset);
            return Err(Error::corrupted("record", at, format!("not the put of seq {seq} the index holds")));
        }
        // Relocating needs room in the head segment or more free segments
        // (one for a single victim, as before; for several, every segment
        // their live bytes could take, records not splitting across ends).
        let geo = *self.holder.vol.geometry();
        let need: usize = live.iter().map(Op::encoded_bytes).sum();
        if need > self.writer.room(&geo) {
            let payload = (geo.segment_bytes - SEGMENT_HEADER_BYTES) as usize;
            let segments = if count == 1 { 1 } else { need.div_ceil(payload / 2) as u32 + 1 };
            if self.writer.free_segments < segments {
                return if count > 1 { self.clean_oldest(now_ms, 1) } else { Ok(false) };
            }
        }
        // If the segments run out halfway after all (our count of free ones
        // can be ahead of the volume while a fenced writer's allocation
        // holds one for a moment), what was staged is committed and the
        // victims stay: a duplicate of a current version is harmless.
        let mut staged = 0;
        for op in &live {
            match self.stage(std::slice::from_ref(op), op.encoded_bytes(), true) {
                Ok(()) => staged += 1,
                Err(Error::PartitionFull { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        self.commit()?;
        // A relocation is no access: the moved versions keep their access time.
        let mut touched = touched.into_iter();
        for op in live.iter().take(staged) {
            if let Op::Put { key, .. } | Op::PutLarge { key, .. } | Op::Expire { key, .. } = op {
                self.keyspace.set_touched(key, touched.next().unwrap_or(0));
            } else if let Op::Del { .. } = op {
                touched.next();
            }
        }
        if staged < live.len() {
            return Ok(false);
        }
        // Expired records are dropped, not relocated: older versions are all
        // behind the tail. (Before the check below, which they would fail.)
        for k in expired {
            self.keyspace.evict(&k);
        }
        for (k, f) in expired_fields {
            self.keyspace.evict_field(&k, &f);
        }
        let front: Vec<u16> = self.writer.chain.iter().take(count).map(|c| c.segment).collect();
        if front != victims.iter().map(|v| v.segment).collect::<Vec<_>>() || victims.iter().any(|v| self.keyspace.holds_segment(v.segment))
        {
            return Ok(false); // the chain moved under us (cannot happen single-threaded)
        }
        self.cut_tail(&victims)?;
        Ok(true)
    }

    /// Move the tail word past `victims` (the chain's first segments, whose
    /// live records are relocated and committed), then free each that is
    /// SEALED.
    fn cut_tail(&mut self, victims: &[ChainSeg]) -> Result<()> {
        let next = self.writer.chain[victims.len()];
        let (id, token) = (self.holder.id, self.holder.token);
        let vol = std::sync::Arc::clone(&self.holder.vol);
        let (geo, region) = (*vol.geometry(), vol.region());
        let tail_word = region.load(geo.tail_word(id));
        let tail = LogWord::decode(tail_word);
        if tail.token < token {
            return Err(Error::corrupted("tail word", geo.tail_word(id), format!("token went back from our {token} to {}", tail.token)));
        }
        if tail.token != token {
            return Err(self.holder.fenced("tail token moved"));
        }
        // The floor must stay on the live log: raise it to the head (durable:
        // just committed) and make that durable before the tail passes it.
        if self.durability.raise_floor(&mut self.holder, self.writer.published())? {
            vol.flush(geo.floor_word(id), 8)?;
            self.durability.floor_flushed();
        }
        let new_tail = LogWord { token, pos: Some(Pos { segment: next.segment, offset: next.start }) };
        if region.cas(geo.tail_word(id), tail_word, new_tail.encode()).is_err() {
            return Err(self.holder.fenced("tail cut refused"));
        }
        vol.flush(geo.tail_word(id), 8)?;
        let mut freed = Vec::with_capacity(victims.len());
        for victim in victims {
            self.writer.chain.pop_front();
            // Free it unless a fenced incarnation may still store into it,
            // and only as we or an earlier owner sealed it: if we were fenced
            // right after the tail cut, the next owner may have freed it
            // (it is off the chain), reallocated and sealed it under its own
            // higher token; that one is not ours to free.
            let at = geo.descriptor(id, victim.segment);
            let word = region.load(at);
            if let SegState::Sealed { token: sealed_by, .. } = SegState::decode(word, at)?
                && sealed_by <= token
                && region.cas(at, word, 0).is_ok()
            {
                self.writer.free_segments += 1;
                freed.push(at);
            }
        }
        match freed[..] {
            [] => {}
            [at] => vol.flush(at, 8)?,
            _ => vol.flush(geo.partition_entry(id), geo.partition_entry_bytes)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::record::Op;
    use crate::{CreateOptions, Index, Partition, ProcessIdentity, Volume};

    /// A claimed partition of 8 KiB segments on an in-memory volume of 1448 KiB.
    fn small_partition() -> (Arc<Volume>, Partition) {
        let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(1448 << 10, 1) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let reg = vol.register(1, ProcessIdentity::default()).unwrap();
        let p = Partition::claim(vol.clone(), reg, 0).unwrap();
        (vol, p)
    }

    /// An expired key in the oldest segment is dropped, not relocated, and
    /// does not stop the cleaner from reclaiming that segment.
    #[test]
    fn an_expired_key_does_not_pin_its_segment() {
        let (_vol, mut p) = small_partition();
        let put = |k: &str, expire_at_ms| Op::Put { key: k.as_bytes().to_vec(), value: vec![b'v'; 3000].into(), expire_at_ms };
        p.append(&[put("expires", 5)], 0).unwrap();
        p.append(&[put("stays", 0)], 0).unwrap();
        p.commit().unwrap();
        for _ in 0..3 {
            p.append(&[put("other", 0)], 0).unwrap();
            p.commit().unwrap();
        }
        let first = p.chain().next().unwrap().segment;
        assert!(p.clean_one(10).unwrap(), "the cleaner gave up on a segment holding an expired key");
        assert_ne!(p.chain().next().unwrap().segment, first);
        assert!(p.get(b"stays", 10).is_some());
        assert!(p.keyspace().index().get(b"expires").is_none(), "the expired key was kept");
    }

    /// A partition filled with distinct live keys answers "full" without
    /// rewriting its log to find out (no garbage: nothing to clean), fails
    /// fast after that, goes on serving every key, and takes deletes, after
    /// which the cleaner (relocating the victims' records it reads) frees
    /// room for puts.
    #[test]
    fn a_partition_full_of_live_data_says_so_without_rewriting_its_log() {
        let (vol, mut p) = small_partition();
        let put = |k: u32| Op::Put { key: format!("k{k}").into_bytes(), value: vec![b'v'; 700].into(), expire_at_ms: 0 };
        let head_word = || vol.region().load(vol.geometry().head_word(0));
        let mut k = 0;
        let (full, head) = loop {
            let head = head_word();
            match p.append(&[put(k)], 0).and_then(|_| p.commit()) {
                Ok(_) => k += 1,
                Err(e) => break (e, head),
            }
            assert!(k < 100_000, "never full");
        };
        assert!(matches!(full, crate::Error::PartitionFull { .. }), "{full}");
        assert_eq!(head_word(), head, "a full partition rewrote its log to say so");
        for attempt in 0..3 {
            let again = p.append(&[put(k + 1 + attempt)], 0).and_then(|_| p.commit());
            assert!(matches!(again, Err(crate::Error::PartitionFull { .. })), "{again:?}");
        }
        assert_eq!(head_word(), head, "a full partition rewrote its log to say so");
        for i in 0..k {
            assert_eq!(p.value(format!("k{i}").as_bytes(), 0), Some(vec![b'v'; 700]), "k{i} after the cleaner's rotations");
        }
        // Deletes are let through, and then the cleaner frees room for puts.
        for d in 0..k / 2 {
            p.append(&[Op::Del { key: format!("k{d}").into_bytes() }], 0).unwrap();
        }
        p.commit().unwrap();
        for n in 0..k / 4 {
            p.append(&[put(1_000_000 + n)], 0).unwrap();
            p.commit().unwrap();
        }
        assert!(p.value(format!("k{}", k - 1).as_bytes(), 0).is_some());
    }

    /// Overwrites of a few keys, many times the partition's size: the log
    /// stays within about twice its live bytes plus the slack (cleaned in
    /// batches before it is anywhere near full), allocation keeps to the
    /// lowest segments (on a sparse volume the disk taken follows), and
    /// every value is the last one written.
    #[test]
    fn churn_keeps_the_log_near_its_live_bytes_in_the_lowest_segments() {
        let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(8 << 20, 1) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let mut p = Partition::claim(vol.clone(), vol.register(1, ProcessIdentity::default()).unwrap(), 0).unwrap();
        let geo = *vol.geometry();
        let payload = u64::from(geo.segment_bytes - crate::layout::SEGMENT_HEADER_BYTES);
        let slack = super::space_slack(&geo);
        assert!(slack < u64::from(geo.segments_per_partition) * payload / 2, "the test needs a partition much larger than its slack");
        let (mut highest, mut worst) = (0u16, 0u64);
        let (keys, rounds) = (200u32, 300u32);
        for round in 0..rounds {
            for k in 0..keys {
                let value: Vec<u8> = format!("{round}:{k}:").into_bytes().into_iter().chain(std::iter::repeat_n(b'x', 300)).collect();
                p.append(&[Op::Put { key: format!("k{k}").into_bytes(), value: value.into(), expire_at_ms: 0 }], 0).unwrap();
                p.commit().unwrap();
                let used: u64 = p.chain().map(|c| u64::from(c.end - c.start)).sum();
                worst = worst.max(used.saturating_sub(2 * p.keyspace().live_bytes()));
                highest = highest.max(p.chain().map(|c| c.segment).max().unwrap());
            }
        }
        let written = u64::from(keys * rounds) * 320;
        assert!(written > 4 * u64::from(geo.segments_per_partition) * payload / 2, "not enough churn to matter");
        // Garbage beyond the live bytes: the slack, a cleaning batch, the head.
        let bound = slack + (super::SPACE_CLEAN_BATCH as u64 + 2) * payload;
        assert!(worst <= bound, "the log grew {worst} bytes beyond twice its live bytes (bound {bound})");
        let window = u64::from(super::super::writer::allocation_window(&geo, 0).min(geo.segments_per_partition as u16));
        let needed = (2 * p.keyspace().live_bytes() + bound) / payload + (slack / payload).max(8) + 1;
        assert!(u64::from(highest) < needed.min(window), "segments up to {highest} were written, {needed} would do");
        for k in 0..keys {
            let v = p.value(format!("k{k}").as_bytes(), 0).unwrap();
            assert!(v.starts_with(format!("{}:{k}:", rounds - 1).as_bytes()), "k{k} is not its last value");
        }
        assert!(crate::check::check(&vol).is_empty(), "{:?}", crate::check::check(&vol));
    }

    /// A claim stores the floor without flushing it; the tail cut that
    /// follows must flush it even when nothing was published in between
    /// (all the tail was garbage), or a power loss leaves the floor on a
    /// segment the tail already passed, and the next claim fails. (The
    /// simulation found it once cleaning passed several segments at once.)
    #[test]
    fn a_tail_cut_right_after_a_claim_makes_the_floor_durable() {
        use crate::media::MemMedia;
        let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(1448 << 10, 1) };
        let media = Arc::new(MemMedia::from_image(&vec![0u8; opts.volume_bytes as usize], None));
        let vol = Arc::new(Volume::create_in_memory(&opts, Some(media.clone())).unwrap().0);
        let put = |k: &str| Op::Put { key: k.as_bytes().to_vec(), value: vec![b'v'; 3000].into(), expire_at_ms: 0 };
        let del = |k: &str| Op::Del { key: k.as_bytes().to_vec() };
        let mut a = Partition::claim(vol.clone(), vol.register(1, ProcessIdentity::default()).unwrap(), 0).unwrap();
        for batch in [vec![put("a")], vec![put("b")], vec![del("a"), del("b"), put("c")]] {
            a.append(&batch, 0).unwrap();
            a.commit().unwrap();
        }
        assert_eq!(a.chain().count(), 2, "the last commit must cross into a second segment");
        drop(a);
        let mut b = Partition::claim(vol.clone(), vol.register(2, ProcessIdentity::default()).unwrap(), 0).unwrap();
        assert!(b.clean_one(0).unwrap(), "the all-garbage tail was not cleaned");
        // Power loss now: only what was flushed survives.
        let image = media.durable_image().expect("the media keeps a durable image");
        let after = Arc::new(Volume::from_media(Arc::new(MemMedia::from_image(&image, None))).unwrap());
        for key in [1, 2] {
            after.reap_key(key).unwrap();
        }
        let c = Partition::claim(after.clone(), after.register(3, ProcessIdentity::default()).unwrap(), 0)
            .expect("the log must be recoverable after a power loss");
        assert_eq!(c.value(b"c", 0), Some(vec![b'v'; 3000]));
        assert!(c.value(b"a", 0).is_none() && c.value(b"b", 0).is_none());
    }

    /// A writer fenced right after its tail cut: the next owner may free the
    /// victim (off the chain now), reallocate and seal it under its own
    /// higher token before the fenced writer gets to the free. The fenced
    /// writer must leave a segment sealed under a higher token alone.
    #[test]
    fn a_tail_cut_never_frees_a_segment_sealed_by_a_later_owner() {
        use crate::layout::SegState;
        let (vol, mut p) = small_partition();
        let put = |k: &str| Op::Put { key: k.as_bytes().to_vec(), value: vec![b'v'; 3000].into(), expire_at_ms: 0 };
        for batch in [vec![put("a")], vec![put("b")], vec![Op::Del { key: b"a".to_vec() }, Op::Del { key: b"b".to_vec() }, put("c")]] {
            p.append(&batch, 0).unwrap();
            p.commit().unwrap();
        }
        let tail = p.chain().next().unwrap().segment;
        let at = vol.geometry().descriptor(0, tail);
        // What the later owner would have done meanwhile, on the victim.
        let later = SegState::Sealed { slot: 9, token: p.token() + 1 }.encode();
        vol.region().store(at, later);
        assert!(p.clean_one(0).unwrap());
        assert_eq!(vol.region().load(at), later, "a segment sealed by a later owner was freed");
        assert_ne!(p.chain().next().unwrap().segment, tail, "the tail was not cut");
    }
}
