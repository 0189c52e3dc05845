//! The cleaner: reclaims the oldest segment of the chain by copying its live
//! records to the head, then cutting the tail past it (FORMAT.md,
//! "Publication protocol", step 6), and the policy that runs it from
//! `append` when few segments are free.

use crate::index::Index;
use crate::layout::{LogWord, Pos, REC_KIND_LARGE, REC_KIND_PUT, SEGMENT_HEADER_BYTES, SegState};
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
        if (fits && extra == 0) || self.writer.free_segments >= threshold + extra {
            return Ok(false);
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
        self.holder.ensure_usable()?;
        if self.writer.chain.len() < 2 || self.writer.has_pending() {
            return Ok(false);
        }
        let victim = self.writer.chain[0];
        // The victim's records, each checked against the index: the current
        // versions are relocated, the expired ones evicted. (Not a scan of
        // the index for entries naming the victim: that costs every key per
        // cleaned segment, and a nearly full partition cleans many segments
        // per write; a partition of 500 thousand keys spent seconds of CPU
        // per write that way.)
        let (mut live, mut expired, mut touched) = (Vec::new(), Vec::new(), Vec::new());
        let (keyspace, vol, id) = (&self.keyspace, &self.holder.vol, self.holder.id);
        let mut mismatch = None;
        recovery::replay(vol, id, std::slice::from_ref(&victim), |segment, offset, r| {
            match keyspace.current_at(r.key, segment, offset, now_ms) {
                // The index names this very record: it must be that put.
                Some((_, e)) if r.seq != e.seq || r.kind != if e.is_large() { REC_KIND_LARGE } else { REC_KIND_PUT } => {
                    mismatch.get_or_insert((segment, offset, e.seq));
                }
                // A large put's reference moves; its blob stays where it is.
                Some((true, e)) if e.is_large() => {
                    touched.push(e.touched.secs());
                    live.push(Op::PutLarge { key: r.key.to_vec(), blob: r.value.to_vec(), expire_at_ms: e.expire_at_ms })
                }
                Some((true, e)) => {
                    touched.push(e.touched.secs());
                    live.push(Op::Put { key: r.key.to_vec(), value: r.value.to_vec(), expire_at_ms: e.expire_at_ms })
                }
                Some((false, _)) => expired.push(r.key.to_vec()),
                None => {}
            }
        })?;
        if let Some((segment, offset, seq)) = mismatch {
            let at = vol.geometry().log_byte(id, segment, offset);
            return Err(Error::corrupted("record", at, format!("not the put of seq {seq} the index holds")));
        }
        // Relocating needs room in the head segment or one more free segment.
        let need: usize = live.iter().map(Op::encoded_bytes).sum();
        if need > self.writer.room(self.holder.vol.geometry()) && self.writer.free_segments == 0 {
            return Ok(false);
        }
        for op in &live {
            let bytes = op.encoded_bytes();
            self.stage(std::slice::from_ref(op), bytes, true)?;
        }
        self.commit()?;
        // A relocation is no access: the moved versions keep their access time.
        for (op, secs) in live.iter().zip(touched) {
            if let Op::Put { key, .. } | Op::PutLarge { key, .. } = op {
                self.keyspace.set_touched(key, secs);
            }
        }
        // Expired records are dropped, not relocated: older versions are all
        // behind the tail. (Before the check below, which they would fail.)
        for k in expired {
            self.keyspace.evict(&k);
        }
        if self.writer.chain.front().map(|c| c.segment) != Some(victim.segment) || self.keyspace.holds_segment(victim.segment) {
            return Ok(false); // the chain moved under us (cannot happen single-threaded)
        }
        self.cut_tail(victim)?;
        Ok(true)
    }

    /// Move the tail word past `victim` (the chain's first segment, whose
    /// live records are relocated and committed), then free it if SEALED.
    fn cut_tail(&mut self, victim: ChainSeg) -> Result<()> {
        let next = self.writer.chain[1];
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
        }
        let new_tail = LogWord { token, pos: Some(Pos { segment: next.segment, offset: next.start }) };
        if region.cas(geo.tail_word(id), tail_word, new_tail.encode()).is_err() {
            return Err(self.holder.fenced("tail cut refused"));
        }
        vol.flush(geo.tail_word(id), 8)?;
        self.writer.chain.pop_front();
        // Free it unless a fenced incarnation may still store into it.
        let at = geo.descriptor(id, victim.segment);
        let word = region.load(at);
        if let SegState::Sealed { .. } = SegState::decode(word, at)?
            && region.cas(at, word, 0).is_ok()
        {
            self.writer.free_segments += 1;
            vol.flush(at, 8)?;
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
        let put = |k: &str, expire_at_ms| Op::Put { key: k.as_bytes().to_vec(), value: vec![b'v'; 3000], expire_at_ms };
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
        let put = |k: u32| Op::Put { key: format!("k{k}").into_bytes(), value: vec![b'v'; 700], expire_at_ms: 0 };
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
}
