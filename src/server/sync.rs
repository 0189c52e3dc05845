//! Group commit across partitions: one fdatasync for every partition of this
//! server that needs a durability barrier at about the same time.
//!
//! A caller needs a sync that *starts* after its call (everything it stored
//! is then covered). If none is running it runs one; if one is running it
//! waits for it to end and for the next one, which a waiter then runs for
//! everybody who arrived meanwhile. With 16 partitions committing at once
//! this turns 32 msyncs into 2 fdatasyncs.

use std::sync::{Arc, Condvar, Mutex};

use sharedisk_storage::{Error, Volume};

#[derive(Debug)]
pub struct SyncGroup {
    vol: Arc<Volume>,
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    started: u64,
    finished: u64,
    running: bool,
}

impl SyncGroup {
    pub fn new(vol: Arc<Volume>) -> SyncGroup {
        SyncGroup { vol, state: Mutex::new(State::default()), done: Condvar::new() }
    }

    /// Returns once everything stored before the call is durable.
    pub fn sync(&self) -> Result<(), Error> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let target = st.started + 1;
        loop {
            if st.finished >= target {
                // A failed sync poisons the volume handle; nobody is told "durable" after it.
                return if self.vol.is_failed() { Err(Error::HandleFailed) } else { Ok(()) };
            }
            if !st.running {
                st.started += 1;
                st.running = true;
                let round = st.started;
                drop(st);
                let result = self.vol.sync_all();
                st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.running = false;
                st.finished = round;
                self.done.notify_all();
                if round >= target {
                    return result;
                }
                continue;
            }
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharedisk_storage::CreateOptions;
    use sharedisk_storage::media::MemMedia;

    #[test]
    fn concurrent_callers_share_syncs_and_each_gets_one_that_started_after_it() {
        let opts = CreateOptions { segment_bytes: 64 << 10, ..CreateOptions::new(4 << 20, 2) };
        let media = Arc::new(MemMedia::from_image(&vec![0; 4 << 20], None));
        let (vol, media) = Volume::create_in_memory(&opts, Some(media)).unwrap();
        let g = Arc::new(SyncGroup::new(Arc::new(vol)));
        let before = media.flushes();
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        g.sync().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let syncs = media.flushes() - before;
        assert!(syncs >= 50, "every caller needs its own barrier: {syncs}");
        assert!(syncs < 16 * 50, "no sharing at all: {syncs}");
    }

    #[test]
    fn a_failed_sync_is_never_reported_durable_afterwards() {
        let opts = CreateOptions { segment_bytes: 64 << 10, ..CreateOptions::new(4 << 20, 2) };
        let media = Arc::new(MemMedia::from_image(&vec![0; 4 << 20], None));
        let (vol, media) = Volume::create_in_memory(&opts, Some(media)).unwrap();
        let g = SyncGroup::new(Arc::new(vol));
        g.sync().unwrap();
        media.set_fail_after(Some(0));
        assert!(g.sync().is_err());
        assert!(g.sync().is_err());
    }
}
