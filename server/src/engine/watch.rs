//! `WATCH`: Redis's optimistic transactions, in the engine's order.
//!
//! A connection's watch is one [`Watch`], held by the connection until EXEC,
//! DISCARD or UNWATCH, and weakly by the [`WatchTable`] of every partition it
//! watches a key of. Everything that decides it happens on the engine, in
//! the one order in which the engine executes requests:
//! * `WATCH k…` registers the keys at its place in that order, noting which
//!   exist then; it is answered only after the cycle it ran in is published
//!   (a read it precedes sees every write staged before it), and the
//!   connection sends later reads of its pipeline through the engine behind it;
//! * staging a write to a watched key marks its watches dirty (a clear,
//!   FLUSHALL: every watched key that exists then); a write that changes
//!   nothing stages nothing and marks nothing (DEL of a missing key);
//! * EXEC runs at its own place in that order and aborts (a null reply) if
//!   the watch is dirty, if a key that existed at WATCH has expired since,
//!   or if a watched partition is no longer the instance it watched here
//!   (moved, failed over, reclaimed: writes elsewhere are not seen, so the
//!   transaction must not commit on what it read).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::core::ServedPartition;

/// One connection's watched keys and whether any was touched.
#[derive(Debug, Default)]
pub struct Watch {
    dirty: AtomicBool,
    /// Set by the engine only; a mutex to be shared, never contended.
    keys: Mutex<Vec<Watched>>,
}

/// A key as it was when watched.
#[derive(Debug)]
pub(crate) struct Watched {
    pub partition: u32,
    /// The partition instance it was watched in: a later claim is another one.
    pub cell: Weak<ServedPartition>,
    pub key: Vec<u8>,
    /// It existed (and had not expired) then.
    pub existed: bool,
}

impl Watch {
    pub fn new() -> Arc<Watch> {
        Arc::default()
    }

    /// A watched key was written since it was watched.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    fn touch(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    pub(crate) fn add(&self, w: Watched) {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).push(w);
    }

    /// Whether every watched key passes `holds`.
    pub(crate) fn all(&self, holds: impl FnMut(&Watched) -> bool) -> bool {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).iter().all(holds)
    }
}

/// One partition's watched keys and their watches.
#[derive(Debug, Default)]
pub(crate) struct WatchTable {
    by_key: HashMap<Vec<u8>, Vec<Weak<Watch>>>,
    /// Entries after the last sweep of watches that were dropped.
    swept_len: usize,
}

/// Entries the table may grow to before the first sweep.
const SWEEP_AFTER: usize = 1024;

impl WatchTable {
    pub fn add(&mut self, key: &[u8], watch: &Arc<Watch>) {
        let list = self.by_key.entry(key.to_vec()).or_default();
        if !list.iter().any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(watch))) {
            list.push(Arc::downgrade(watch));
        }
        // Watches dropped (UNWATCH, EXEC, a closed connection) stay until
        // their key is written; sweep them once the table has doubled, so
        // what it holds stays proportional to the live watches.
        if self.by_key.len() > SWEEP_AFTER.max(2 * self.swept_len) {
            self.by_key.retain(|_, list| {
                list.retain(|w| w.strong_count() > 0);
                !list.is_empty()
            });
            self.swept_len = self.by_key.len();
        }
    }

    /// A write to `key` was staged.
    pub fn touch(&mut self, key: &[u8]) {
        if let Some(list) = self.by_key.remove(key) {
            list.iter().filter_map(Weak::upgrade).for_each(|w| w.touch());
        }
    }

    /// The watched keys that pass `exists` (a clear touches those only).
    pub fn existing(&self, mut exists: impl FnMut(&[u8]) -> bool) -> Vec<Vec<u8>> {
        self.by_key.keys().filter(|k| exists(k)).cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_touch_marks_live_watches_once_and_dropped_ones_are_swept() {
        let mut t = WatchTable::default();
        let (a, b) = (Watch::new(), Watch::new());
        t.add(b"k", &a);
        t.add(b"k", &a);
        t.add(b"k", &b);
        t.add(b"other", &b);
        t.touch(b"missing");
        assert!(!a.is_dirty() && !b.is_dirty());
        t.touch(b"k");
        assert!(a.is_dirty() && b.is_dirty());
        assert_eq!(t.len(), 1, "a touched key is forgotten");
        assert_eq!(t.existing(|k| k == b"other"), vec![b"other".to_vec()]);
        // Watches nobody holds any more do not accumulate.
        drop((a, b));
        for i in 0..10 * SWEEP_AFTER {
            let w = Watch::new();
            t.add(format!("key{i}").as_bytes(), &w);
        }
        assert!(t.len() <= 2 * SWEEP_AFTER + 1, "{} entries kept for dropped watches", t.len());
    }
}
