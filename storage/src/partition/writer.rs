//! The writer of a claimed partition: stages batches into its own OPEN
//! segment, holds their bytes back until they are needed, publishes with one
//! CAS on the head word, and seals.
//!
//! The rule it lives by (FORMAT.md, "Fencing"): **a writer stores only into
//! a segment OPEN to its own (slot, token)**. It is established where the
//! writer switches a descriptor from FREE to OPEN(its slot, its token) by
//! CAS, which is the only way to get an [`OpenSegment`], and asserted (in
//! release builds too) before every store, against that `OpenSegment`;
//! before storing record bytes the writer also re-reads the shared
//! descriptor and refuses, as fenced, if it is no longer OPEN to it.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::blob::{self, BlobRef};
use crate::layout::*;
use crate::record::{self, Op, Stamp};
use crate::{Error, Result};

use super::durability::Tracker;
use super::recovery::ChainSeg;
use super::{FAILPOINT_BEFORE_PUBLISH, FAILPOINT_BEFORE_STORES, Holder};

/// An operation staged and not yet published.
#[derive(Debug)]
pub(super) struct Staged {
    pub(super) op: Op,
    pub(super) segment: u16,
    /// Where its record starts in that segment.
    pub(super) offset: u32,
    pub(super) seq: u64,
    /// Staged by the cleaner (a relocation), not by `append`.
    pub(super) relocated: bool,
}

/// A segment this writer switched from FREE to OPEN(slot, token) by CAS, and
/// where its next record goes.
#[derive(Clone, Copy, Debug)]
struct OpenSegment {
    segment: u16,
    offset: u32,
    slot: u8,
    token: u32,
    /// We sealed it to switch, and found no segment to switch to. Nothing
    /// more is stored here, but the records staged up to `offset` are still
    /// ours to publish: the cursor stays until a switch succeeds.
    sealed: bool,
    /// Mutant: the previous owner's OPEN segment, continued in without
    /// taking it over (`slot` and `token` are that owner's).
    #[cfg(feature = "mutants")]
    borrowed: bool,
}

/// Where the writer stood before a batch (to take it back).
#[derive(Clone, Copy, Debug)]
struct Mark {
    open: Option<OpenSegment>,
    pending: usize,
    chain: usize,
    chain_end: Option<u32>,
    next_seq: u64,
}

/// What `stage` did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Staging {
    Staged,
    /// The batch needed a new segment and none was free.
    NoFreeSegment,
}

#[derive(Debug)]
pub(super) struct Writer {
    pub(super) chain: VecDeque<ChainSeg>,
    /// `None` until we own a segment.
    open: Option<OpenSegment>,
    published: Option<Pos>,
    pending: Vec<Staged>,
    next_seq: u64,
    pub(super) free_segments: u32,
    buf: Vec<u8>,
    /// Staged record bytes not yet written to the volume, contiguous from
    /// `wbuf_at`: one `pwrite` per partition and publication instead of one
    /// per batch. Nobody reads past the head, so holding them back is
    /// invisible; they are written before the publication, a commit, or
    /// the seal of their segment.
    wbuf: Vec<u8>,
    wbuf_at: u64,
    alloc_hint: u16,
}

/// The rule of this module, on the writer's own state: `[at, at + len)` lies
/// in `open`, a segment of our partition opened under our (slot, token).
fn assert_own_segment(h: &Holder, open: OpenSegment, at: u64, len: usize) {
    assert!(!open.sealed, "partition {}: a store into segment {} after we sealed it", h.id, open.segment);
    let ours = (open.slot, open.token) == (h.reg.slot, h.token);
    // Mutant: a borrowed segment is exactly what this assertion exists to
    // catch; let the harm show as what it is instead (clobbered records).
    #[cfg(feature = "mutants")]
    let ours = ours || open.borrowed;
    assert!(
        ours,
        "partition {}: a store into segment {} opened under (slot {}, token {}), not ours (slot {}, token {})",
        h.id, open.segment, open.slot, open.token, h.reg.slot, h.token
    );
    let geo = h.vol.geometry();
    let (start, end) = (geo.segment(h.id, open.segment), geo.log_byte(h.id, open.segment, geo.segment_bytes));
    assert!(
        at >= start && at + len as u64 <= end,
        "partition {}: a store of {len} bytes at {at} is outside our open segment {}",
        h.id,
        open.segment
    );
}

impl Writer {
    /// The writer of a log recovered as `chain`, published up to `published`.
    pub(super) fn new(chain: Vec<ChainSeg>, published: Option<Pos>, next_seq: u64, free_segments: u32) -> Writer {
        Writer {
            chain: chain.into_iter().collect(),
            open: None,
            published,
            pending: Vec::new(),
            next_seq,
            free_segments,
            buf: Vec::new(),
            wbuf: Vec::new(),
            wbuf_at: 0,
            alloc_hint: 0,
        }
    }

    /// Where the next record goes (`None` before the first segment).
    fn cursor(&self) -> Option<Pos> {
        self.open.map(|o| Pos { segment: o.segment, offset: o.offset })
    }
    pub(super) fn published(&self) -> Option<Pos> {
        self.published
    }
    /// Whether records were staged that are not yet published.
    pub(super) fn has_unpublished(&self) -> bool {
        self.open.is_some() && self.cursor() != self.published
    }
    /// Operations staged by `append` and not yet published.
    pub(super) fn pending_ops(&self) -> usize {
        self.pending.iter().filter(|p| !p.relocated).count()
    }
    /// The sequence number of the last record published (0: none yet).
    pub(super) fn published_seq(&self) -> u64 {
        self.pending.first().map_or(self.next_seq, |p| p.seq).saturating_sub(1)
    }
    /// The sequence number the next staged record gets.
    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq
    }
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
    /// Whether `bytes` more fit into the open segment (false without one).
    pub(super) fn fits(&self, bytes: usize, geo: &Geometry) -> bool {
        self.open.is_some_and(|o| !o.sealed && o.offset as usize + bytes <= geo.segment_bytes as usize)
    }
    /// Bytes left in the open segment.
    pub(super) fn room(&self, geo: &Geometry) -> usize {
        self.open.filter(|o| !o.sealed).map_or(0, |o| geo.segment_bytes - o.offset) as usize
    }

    /// Encode `ops` (`total` bytes) after the cursor. They become visible
    /// together at the next `publish`, or never. A batch larger than a
    /// segment fills as many segments as it needs (each record whole in one);
    /// if one of them cannot be allocated, what the batch staged is taken
    /// back (its segments freed again) and nothing of it publishes.
    pub(super) fn stage(&mut self, h: &mut Holder, dur: &mut Tracker, ops: &[Op], total: usize, relocated: bool) -> Result<Staging> {
        let geo = *h.vol.geometry();
        if total <= geo.record_bytes_max() {
            return self.stage_in_one(h, dur, ops, total, relocated);
        }
        let mark = Mark {
            open: self.open,
            pending: self.pending.len(),
            chain: self.chain.len(),
            chain_end: self.chain.back().map(|c| c.end),
            next_seq: self.next_seq,
        };
        let mut i = 0;
        while i < ops.len() {
            // What fits after the cursor, or else in a fresh segment.
            let first = ops[i].encoded_bytes();
            assert!(first <= geo.record_bytes_max(), "a record larger than a segment reached the writer");
            let cap = if self.room(&geo) >= first { self.room(&geo) } else { geo.record_bytes_max() };
            let (mut n, mut bytes) = (0, 0);
            while i + n < ops.len() && bytes + ops[i + n].encoded_bytes() <= cap {
                bytes += ops[i + n].encoded_bytes();
                n += 1;
            }
            match self.stage_in_one(h, dur, &ops[i..i + n], bytes, relocated) {
                Ok(Staging::Staged) => i += n,
                Ok(Staging::NoFreeSegment) => {
                    self.roll_back(h, mark);
                    return Ok(Staging::NoFreeSegment);
                }
                // Fenced, or the volume failed: this handle publishes nothing
                // more, but what it reports staged stays whole batches.
                Err(e) => {
                    self.roll_back(h, mark);
                    return Err(e);
                }
            }
        }
        Ok(Staging::Staged)
    }

    /// Take back what a batch staged since `mark` (its allocation failed
    /// halfway): its records leave `pending`, the segments it allocated are
    /// freed (nobody reads past the head, and they hold nothing else), and
    /// the cursor returns to where the batch began, in a segment that stays
    /// sealed if the batch switched away from it (the next switch continues
    /// the chain from the cursor, so its stale bytes are never read).
    fn roll_back(&mut self, h: &mut Holder, mark: Mark) {
        // Held-back bytes of the batch (after an error) are never written.
        if let Some(o) = mark.open {
            let batch_at = h.vol.geometry().log_byte(h.id, o.segment, o.offset);
            let keep = batch_at.saturating_sub(self.wbuf_at).min(self.wbuf.len() as u64) as usize;
            let same_segment = self.open.is_some_and(|now| now.segment == o.segment);
            self.wbuf.truncate(if same_segment && batch_at >= self.wbuf_at { keep } else { 0 });
        } else {
            self.wbuf.clear();
        }
        let (geo, region) = (*h.vol.geometry(), h.vol.region());
        let switched = self.chain.len() > mark.chain;
        for c in self.chain.drain(mark.chain..) {
            let at = geo.descriptor(h.id, c.segment);
            let word = region.load(at);
            let ours = [SegState::Open { slot: h.reg.slot, token: h.token }, SegState::Sealed { slot: h.reg.slot, token: h.token }];
            if ours.iter().any(|s| s.encode() == word) && region.cas(at, word, SegState::Free.encode()).is_ok() {
                self.free_segments += 1;
            }
        }
        self.pending.truncate(mark.pending);
        self.next_seq = mark.next_seq;
        if let (Some(last), Some(end)) = (self.chain.back_mut(), mark.chain_end) {
            last.end = end;
        }
        self.open = mark.open.map(|o| OpenSegment { sealed: o.sealed || switched || self.open.is_some_and(|now| now.sealed), ..o });
    }

    /// [`Self::stage`] of a batch that fits one segment: after the cursor,
    /// or in a new segment if it does not fit there.
    fn stage_in_one(&mut self, h: &mut Holder, dur: &mut Tracker, ops: &[Op], total: usize, relocated: bool) -> Result<Staging> {
        let geo = *h.vol.geometry();
        #[cfg(feature = "mutants")]
        if self.open.is_none() && crate::mutant::new_owner_reuses_old_segment() {
            self.open = self.borrow_previous_owners_segment(h);
        }
        if !self.fits(total, &geo) && !self.switch_segment(h, dur)? {
            return Ok(Staging::NoFreeSegment);
        }
        let open = self.open.expect("switch_segment opens a segment");
        self.buf.clear();
        let first_seq = self.next_seq;
        for op in ops {
            record::encode(op, Stamp { writer_key: h.reg.key, token: h.token, seq: self.next_seq }, &mut self.buf);
            self.next_seq += 1;
        }
        h.check_head_token()?;
        let base = geo.log_byte(h.id, open.segment, open.offset);
        if !self.wbuf.is_empty() && self.wbuf_at + self.wbuf.len() as u64 != base {
            self.write_out(h)?;
        }
        if self.wbuf.is_empty() {
            self.wbuf_at = base;
        }
        self.wbuf.extend_from_slice(&self.buf);
        dur.stored(base, self.buf.len() as u64);
        let mut offset = open.offset;
        for (op, seq) in ops.iter().zip(first_seq..) {
            self.pending.push(Staged { op: op.clone(), segment: open.segment, offset, seq, relocated });
            offset += op.encoded_bytes() as u32;
        }
        let end = open.offset + self.buf.len() as u32;
        self.open = Some(OpenSegment { offset: end, ..open });
        if let Some(last) = self.chain.back_mut() {
            last.end = end;
        }
        Ok(Staging::Staged)
    }

    /// Store the held-back record bytes (into our own OPEN segment).
    pub(super) fn write_out(&mut self, h: &mut Holder) -> Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let open = self.open.expect("held-back bytes belong to the open segment");
        assert_own_segment(h, open, self.wbuf_at, self.wbuf.len());
        let at = h.vol.geometry().descriptor(h.id, open.segment);
        if h.vol.region().load(at) != (SegState::Open { slot: open.slot, token: open.token }).encode() {
            return Err(h.fenced("our open segment is no longer open to us"));
        }
        h.failpoint(FAILPOINT_BEFORE_STORES);
        h.vol.write_bulk(self.wbuf_at, &self.wbuf)?;
        self.wbuf.clear();
        Ok(())
    }

    /// Seal the current segment, allocate a fresh one by CAS and write its
    /// header. False if no segment was free: then the sealed segment stays
    /// the cursor, so that what is staged in it still publishes (and the
    /// next switch continues the chain from its end).
    fn switch_segment(&mut self, h: &mut Holder, dur: &mut Tracker) -> Result<bool> {
        // Every store into the segment precedes its seal (FORMAT.md, "Fencing").
        self.write_out(h)?;
        let prev = match self.open {
            Some(open) => {
                if !open.sealed {
                    self.seal(h, dur, open)?;
                }
                Some(Pos { segment: open.segment, offset: open.offset })
            }
            None => self.published,
        };
        let Some(open) = self.allocate(h, dur)? else {
            if let Some(current) = self.open.as_mut() {
                current.sealed = true;
            }
            return Ok(false);
        };
        let chain_seq = self.chain.back().map_or(1, |c| c.chain_seq + 1);
        let header = SegmentHeader { partition: h.id, segment: open.segment, token: open.token, writer_key: h.reg.key, chain_seq, prev };
        let base = h.vol.geometry().segment(h.id, open.segment);
        assert_own_segment(h, open, base, header.encode().len());
        h.vol.write_bulk(base, &header.encode())?;
        dur.stored(base, u64::from(SEGMENT_HEADER_BYTES));
        self.chain.push_back(ChainSeg { segment: open.segment, start: SEGMENT_HEADER_BYTES, end: SEGMENT_HEADER_BYTES, chain_seq });
        self.open = Some(open);
        Ok(true)
    }

    /// OPEN → SEALED by CAS: we promise no more stores into `open`.
    fn seal(&mut self, h: &mut Holder, dur: &mut Tracker, open: OpenSegment) -> Result<()> {
        let at = h.vol.geometry().descriptor(h.id, open.segment);
        let (slot, token) = (open.slot, open.token);
        if h.vol.region().cas(at, SegState::Open { slot, token }.encode(), SegState::Sealed { slot, token }.encode()).is_err() {
            return Err(h.fenced("our open segment was sealed by someone else"));
        }
        dur.stored(at, 8);
        Ok(())
    }

    /// CAS a FREE descriptor to OPEN(our slot, our token). `None` if none is free.
    fn allocate(&mut self, h: &mut Holder, dur: &mut Tracker) -> Result<Option<OpenSegment>> {
        let vol = Arc::clone(&h.vol);
        let (geo, region) = (*vol.geometry(), vol.region());
        let mine = SegState::Open { slot: h.reg.slot, token: h.token }.encode();
        let n = geo.segments_per_partition as u16;
        // Next-fit within a window of the lowest segments, as many as are in
        // use plus a reserve (`allocation_window`), then beyond it: the
        // segments ever written (on a sparse volume, the disk the partition
        // takes) stay about what the log needs, while a freed segment is
        // still reused only after about the reserve's worth of writes (a
        // hot standby reading behind the cleaner is not outrun at once).
        let window = allocation_window(&geo, self.free_segments);
        let take = |s: u16| {
            let at = geo.descriptor(h.id, s);
            region.load(at) == 0 && region.cas(at, 0, mine).is_ok()
        };
        let hint = if self.alloc_hint < window { u32::from(self.alloc_hint) } else { 0 };
        let found = (0..u32::from(window))
            .map(|i| ((hint + i) % u32::from(window)) as u16)
            .find(|&s| take(s))
            .or_else(|| (window..n).find(|&s| take(s)));
        let Some(segment) = found else { return Ok(None) };
        self.alloc_hint = segment + 1;
        // The descriptor must be durable before any publication that puts
        // this segment on the chain: `commit` flushes the stores first.
        dur.stored(geo.descriptor(h.id, segment), 8);
        self.free_segments = self.free_segments.saturating_sub(1);
        // Allocated but fenced in the meantime? Give it back: we will not store.
        if vol.head(h.id)?.token != h.token {
            let _ = region.cas(geo.descriptor(h.id, segment), mine, 0);
            return Err(h.fenced("fenced while allocating"));
        }
        Ok(Some(OpenSegment {
            segment,
            offset: SEGMENT_HEADER_BYTES,
            slot: h.reg.slot,
            token: h.token,
            sealed: false,
            #[cfg(feature = "mutants")]
            borrowed: false,
        }))
    }

    /// Store `value` as a blob (FORMAT.md, "Large values") for the large put
    /// that will be staged with `seq`: each part in a segment allocated like
    /// any other (FREE → OPEN(us) by CAS), written after the same fence
    /// checks as records, then sealed. Its stores are tracked like the log's,
    /// so the barrier that makes the put durable makes the blob durable.
    /// `None` if the partition ran out of free segments (the ones it took
    /// are given back).
    pub(super) fn write_blob(&mut self, h: &mut Holder, dur: &mut Tracker, value: &[u8], seq: u64) -> Result<Option<BlobRef>> {
        let geo = *h.vol.geometry();
        let payload = blob::payload(&geo);
        let mut segments = Vec::with_capacity(value.len().div_ceil(payload));
        let mut buf = Vec::with_capacity(geo.segment_bytes as usize);
        h.check_head_token()?;
        for (part, chunk) in value.chunks(payload).enumerate() {
            let Some(open) = self.allocate(h, dur)? else {
                self.free_blob(h, &segments);
                return Ok(None);
            };
            segments.push(open.segment);
            buf.clear();
            buf.extend_from_slice(&blob::encode_header(h.id, open.segment, (h.token, seq), h.reg.key, part as u32, chunk.len() as u32));
            buf.extend_from_slice(chunk);
            let base = geo.segment(h.id, open.segment);
            assert_own_segment(h, open, base, buf.len());
            let at = geo.descriptor(h.id, open.segment);
            if h.vol.region().load(at) != (SegState::Open { slot: open.slot, token: open.token }).encode() {
                return Err(h.fenced("our blob segment is no longer open to us"));
            }
            h.failpoint(FAILPOINT_BEFORE_STORES);
            h.vol.write_bulk(base, &buf)?;
            dur.stored(base, buf.len() as u64);
            self.seal(h, dur, open)?;
        }
        Ok(Some(BlobRef { len: value.len() as u64, crc: crc32c::crc32c(value), token: h.token, seq, segments }))
    }

    /// Free the `segments` of a blob no version needs any more (SEALED →
    /// FREE by CAS). Not flushed: a crash before the next barrier leaves
    /// them SEALED and named by nothing, and the next claim frees them. A
    /// segment of the blob that is not SEALED breaks the format's rules:
    /// the volume is poisoned rather than the segment touched.
    pub(super) fn free_blob(&mut self, h: &mut Holder, segments: &[u16]) {
        let (geo, region) = (*h.vol.geometry(), h.vol.region());
        for &s in segments {
            let at = geo.descriptor(h.id, s);
            let word = region.load(at);
            match SegState::decode(word, at) {
                // Sealed under a higher token: we were fenced, and the next
                // owner's claim freed this blob (named by no current version
                // it saw) and reused the segment. Not ours to free.
                Ok(SegState::Sealed { token, .. }) if token > h.token => return,
                Ok(SegState::Sealed { .. }) => {
                    if region.cas(at, word, SegState::Free.encode()).is_ok() {
                        self.free_segments += 1;
                    }
                }
                // Fenced meanwhile: the next owner's claim swept the blob.
                _ if h.check_head_token().is_err() => return,
                other => {
                    h.vol.poison(&format!("partition {}: segment {s} of a blob to free is {other:?}, not sealed", h.id));
                    return;
                }
            }
        }
    }

    /// Mutant (`mutant::set_new_owner_reuses_old_segment`): right after a
    /// claim, the segment the published log ends in, if another incarnation
    /// still holds it OPEN, becomes our cursor as it is, with no CAS, no
    /// seal and no header: the old owner's late stores (the ones it staged
    /// before our fence) still pass its own descriptor check and land on
    /// our records.
    #[cfg(feature = "mutants")]
    fn borrow_previous_owners_segment(&self, h: &Holder) -> Option<OpenSegment> {
        let end = self.published?;
        let at = h.vol.geometry().descriptor(h.id, end.segment);
        match SegState::decode(h.vol.region().load(at), at).ok()? {
            SegState::Open { slot, token } if (slot, token) != (h.reg.slot, h.token) => {
                Some(OpenSegment { segment: end.segment, offset: end.offset, slot, token, sealed: false, borrowed: true })
            }
            _ => None,
        }
    }

    /// Make the staged records visible: the floor to the head being replaced
    /// (durable: asserted by `Tracker::raise_floor`), then the head to the
    /// cursor, one CAS each. Returns the operations it published.
    pub(super) fn publish(&mut self, h: &mut Holder, dur: &mut Tracker) -> Result<Vec<Staged>> {
        let Some(target) = self.cursor() else { return Ok(Vec::new()) };
        if Some(target) == self.published {
            return Ok(Vec::new());
        }
        self.write_out(h)?;
        h.failpoint(FAILPOINT_BEFORE_PUBLISH);
        dur.raise_floor(h, self.published)?;
        let at = h.vol.geometry().head_word(h.id);
        let old = LogWord { token: h.token, pos: self.published }.encode();
        let new = LogWord { token: h.token, pos: Some(target) }.encode();
        if let Err(actual) = h.vol.region().cas(at, old, new) {
            let actual = LogWord::decode(actual);
            if actual.token == h.token {
                return Err(Error::corrupted("head word", at, format!("moved under our own token to {actual:?}")));
            }
            if actual.token < h.token {
                return Err(Error::corrupted("head word", at, format!("token went back from our {} to {}", h.token, actual.token)));
            }
            return Err(h.fenced("publication refused"));
        }
        self.published = Some(target);
        dur.published();
        Ok(std::mem::take(&mut self.pending))
    }

    /// Seal our segment on a planned hand-over (the caller flushes the entry).
    pub(super) fn seal_for_release(&mut self, h: &Holder) {
        if let Some(open) = self.open.take().filter(|o| !o.sealed) {
            let (slot, token) = (open.slot, open.token);
            let at = h.vol.geometry().descriptor(h.id, open.segment);
            let _ = h.vol.region().cas(at, SegState::Open { slot, token }.encode(), SegState::Sealed { slot, token }.encode());
        }
    }
}

/// How many of the lowest segments allocation cycles through first: those
/// in use (not free) plus [`super::cleaner::space_slack`]'s worth, and at
/// least 8.
pub(super) fn allocation_window(geo: &crate::layout::Geometry, free_segments: u32) -> u16 {
    let n = geo.segments_per_partition;
    let reserve = (super::cleaner::space_slack(geo) / u64::from(geo.segment_bytes - SEGMENT_HEADER_BYTES)).max(8) as u32;
    (n.saturating_sub(free_segments) + reserve).min(n) as u16
}
