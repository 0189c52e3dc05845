//! Durability bookkeeping of a claimed partition: which of the writer's
//! stores a barrier has made durable, whether the published head is durable
//! (the precondition of every publication), and the floor word.
//!
//! Stores and publications are counted. A store is a byte range the writer
//! changed (records, a segment header, a descriptor); a range is *dirty*
//! until a flush of it, or a full barrier (`Volume::sync_all`) that started
//! after it, returned. The invariant this module owns (FORMAT.md,
//! "Publication protocol"): **a publication replaces only a head whose log
//! is durable**, i.e. every store made before the last publication is
//! flushed, because the head being replaced becomes the floor that recovery
//! falls back to when this publication is torn. It is established by
//! `flush_stores` (commit's first barrier), `barrier_completed` and the
//! claim's sync, and asserted, in release builds too, where the floor is
//! raised ([`Tracker::raise_floor`]: by every publication, and by the
//! cleaner before it cuts the tail). A partition claimed with
//! [`Durability::OffForBenchmarks`] publishes without barriers by design and
//! skips that assertion only.

use crate::layout::{HT_ENTRY_BYTES, LogWord, Pos};
use crate::volume::Volume;
use crate::{Error, Result};

use super::Holder;

/// Whether a partition's publications must be durable before the next one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Every publication is followed by a completed barrier (`commit`, or a
    /// `Volume::sync_all` reported with `note_synced`/`barrier_completed`)
    /// before the next one: asserted.
    #[default]
    Required,
    /// For benchmarks of the publication path only: `publish` with no
    /// barrier at all. Safe against process crashes (the page cache is
    /// shared), not against power loss: after one, the head may name records
    /// that never reached the disk and the floor may lag, which `check`
    /// reports as corruption.
    OffForBenchmarks,
}

/// What a barrier started at some moment covers (`Partition::barrier_started`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncMark {
    /// The claim it belongs to (a mark is only good for the handle that made it).
    token: u32,
    stores: u64,
    publications: u64,
}

#[derive(Debug)]
pub(super) struct Tracker {
    mode: Durability,
    token: u32,
    /// Dirty ranges (offset, length), oldest first: stores number
    /// `flushed .. stores`.
    dirty: Vec<(u64, u64)>,
    stores: u64,
    /// Stores `0 .. flushed` are durable.
    flushed: u64,
    publications: u64,
    /// The head words of publications `1 ..= head_flushed` are durable.
    head_flushed: u64,
    /// `stores` when the last publication was made: its log is those stores.
    stores_at_publication: u64,
    /// The floor word as we last stored it.
    floor: u64,
    /// Stored since the floor word was last flushed by [`Tracker::floor_flushed`]'s caller.
    floor_unflushed: bool,
}

impl Tracker {
    /// After the claim's sync, which made the recovered log (ending at `end`)
    /// durable: store it as the floor (FORMAT.md, claim step 5). It need not
    /// be flushed now: the floor on disk is a prefix of this log, or its end
    /// after a torn commit.
    pub(super) fn after_claim_sync(vol: &Volume, partition: u32, token: u32, end: Option<Pos>, mode: Durability) -> Result<Tracker> {
        let at = vol.geometry().floor_word(partition);
        let floor = LogWord { token, pos: end }.encode();
        loop {
            let word = vol.region().load(at);
            let current = LogWord::decode(word).token;
            if word != 0 && current > token {
                return Err(Error::Fenced { partition, presented: token, current });
            }
            // Fence tokens only rise, on the floor word too.
            assert!(word == 0 || current <= token, "floor token would go back from {current} to {token}");
            if vol.region().cas(at, word, floor).is_ok() {
                break;
            }
        }
        Ok(Tracker {
            mode,
            token,
            dirty: Vec::new(),
            stores: 0,
            flushed: 0,
            publications: 0,
            head_flushed: 0,
            stores_at_publication: 0,
            floor,
            // Stored above, not flushed: a tail cut must flush it first.
            floor_unflushed: true,
        })
    }

    /// The writer changed `[offset, offset + len)`.
    pub(super) fn stored(&mut self, offset: u64, len: u64) {
        self.dirty.push((offset, len));
        self.stores += 1;
    }

    /// Flush every dirty range, merged (the first barrier of `commit`).
    pub(super) fn flush_stores(&mut self, vol: &Volume) -> Result<()> {
        if !self.dirty.is_empty() {
            self.dirty.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::new();
            for &(off, len) in &self.dirty {
                match merged.last_mut() {
                    Some((o, l)) if *o + *l >= off => *l = (*l).max(off + len - *o),
                    _ => merged.push((off, len)),
                }
            }
            for (off, len) in merged {
                vol.flush(off, len)?;
            }
            self.dirty.clear();
        }
        self.flushed = self.stores;
        Ok(())
    }

    /// The head word now names the writer's cursor.
    pub(super) fn published(&mut self) {
        self.publications += 1;
        self.stores_at_publication = self.stores;
    }

    /// Flush the head word if a publication since the last flush or barrier
    /// changed it (the second barrier of `commit`).
    pub(super) fn flush_head(&mut self, vol: &Volume, partition: u32) -> Result<()> {
        if self.head_flushed < self.publications {
            vol.flush(vol.geometry().head_word(partition), HT_ENTRY_BYTES)?;
            self.head_flushed = self.publications;
        }
        Ok(())
    }

    /// Publications made so far.
    pub(super) fn publications(&self) -> u64 {
        self.publications
    }
    /// Publications `1 ..= this` are durable, head word and all.
    pub(super) fn durable_publications(&self) -> u64 {
        self.head_flushed
    }

    /// Every store made before the last publication is durable: the log the
    /// head names is, and so it may become the floor.
    pub(super) fn head_is_durable(&self) -> bool {
        self.flushed >= self.stores_at_publication
    }

    pub(super) fn barrier_started(&self) -> SyncMark {
        SyncMark { token: self.token, stores: self.stores, publications: self.publications }
    }

    /// The barrier that started at `mark` returned Ok.
    pub(super) fn barrier_completed(&mut self, mark: SyncMark) {
        assert!(
            mark.token == self.token && mark.stores <= self.stores && mark.publications <= self.publications,
            "a SyncMark of another partition handle ({mark:?})"
        );
        // A `commit` since then flushed everything older already.
        if mark.stores > self.flushed {
            self.dirty.drain(..(mark.stores - self.flushed) as usize);
            self.flushed = mark.stores;
        }
        self.head_flushed = self.head_flushed.max(mark.publications);
    }

    /// CAS the floor word to `head`, our published head. True if the floor
    /// word may not be durable: it changed now, or since the last
    /// [`Tracker::floor_flushed`] (the claim stores one without a flush). A
    /// tail cut flushes it then: if it only flushed a floor that changed
    /// now, a cut right after a claim (nothing to relocate, so nothing
    /// published) would move the tail past the durable floor, and a power
    /// loss then leaves a floor off the log.
    /// Relies on the invariant of this module: `head`'s log is durable.
    pub(super) fn raise_floor(&mut self, h: &mut Holder, head: Option<Pos>) -> Result<bool> {
        assert!(
            self.mode == Durability::OffForBenchmarks || self.head_is_durable(),
            "partition {}: publishing over a head whose log is not durable yet (no barrier completed since the last \
             publication); it would become the floor a torn commit falls back to",
            h.id
        );
        let at = h.vol.geometry().floor_word(h.id);
        let floor = LogWord { token: h.token, pos: head }.encode();
        if floor == self.floor {
            return Ok(self.floor_unflushed);
        }
        if let Err(actual) = h.vol.region().cas(at, self.floor, floor) {
            if actual != 0 && LogWord::decode(actual).token == h.token {
                return Err(Error::corrupted("floor word", at, format!("moved under our own token to {actual:#x}")));
            }
            return Err(h.fenced("floor moved"));
        }
        self.floor = floor;
        self.floor_unflushed = true;
        Ok(true)
    }

    /// The floor word was flushed (after [`Tracker::raise_floor`] said it may not be durable).
    pub(super) fn floor_flushed(&mut self) {
        self.floor_unflushed = false;
    }
}
