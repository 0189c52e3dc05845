//! The zombie race with a real process (needs `--features failpoints`).
//!
//! A is a separate `sharedisk debug writer` process. At the fail point after
//! its last fence check and before its memory stores, it SIGSTOPs itself. B
//! preempts A, takes the partition, writes and publishes many records. A is
//! SIGCONTed, completes its stores and its publication attempt. A's
//! publication must be refused; B's records must read back byte-identical;
//! `volume check` must pass; a fresh open must recover exactly B's records
//! (plus what A had published before it was fenced).

#[path = "it/util.rs"]
mod util;

use std::time::Duration;

use sharedisk_storage::partition::{FAILPOINT_BEFORE_PUBLISH, FAILPOINT_BEFORE_STORES};
use util::*;

const T: Duration = Duration::from_secs(30);

fn zombie_race(point: &str) {
    let s = Scratch::new();
    let vol = s.volume("v", "32MiB", 2);
    let v = vol.to_str().unwrap();
    // A: 5 acknowledged batches, then stops itself at `point` in batch 5.
    // Small batches, so that A's paused batch still fits in its current
    // segment: its late stores then target the bytes right after its
    // published end, exactly where a careless new owner would append.
    let mut a = spawn_writer(&writer_args(
        &vol,
        0xA,
        0,
        0,
        0,
        &["--stop-at", point, "--stop-after-batches", "5", "--batch-ops", "4", "--value-bytes", "500"],
    ));
    a.wait_line(T, |l| l == "stopping at fail point");
    wait_until(T, "A stopped", || a.state() == Some('T'));

    // B preempts A, claims p, publishes 40 batches of small records.
    assert_success(&run(&["volume", "preempt", v, "--key", "0xa"]));
    let mut b = spawn_writer(&writer_args(&vol, 0xB, 0, 1000, 40, &["--batch-ops", "8", "--value-bytes", "100"]));
    assert!(b.wait_exit(T).success(), "B failed");
    assert_success(&run(&["volume", "check", v]));

    // A resumes: its stores land in its own segment, its publication fails.
    a.signal(rustix::process::Signal::CONT);
    let fenced = a.wait_line(T, |l| l.starts_with("fenced") || l.starts_with("acked"));
    assert!(fenced.starts_with("fenced") && fenced.contains("RESERVATION CONFLICT"), "zombie A was not refused: {fenced}");
    assert_eq!(a.wait_exit(T).code(), Some(3));

    assert_success(&run(&["volume", "check", v]));
    // Recovery: A's 5 acknowledged batches and B's 40, each byte-identical;
    // nothing of A's 6th batch.
    use sharedisk_storage::{Partition, ProcessIdentity, Volume};
    let vol_h = std::sync::Arc::new(Volume::open(&vol).unwrap());
    let reg = vol_h.register(0xC, ProcessIdentity::current()).unwrap();
    let part = Partition::claim(vol_h.clone(), reg, 0).unwrap();
    for batch in 0..5 {
        for i in 0..4 {
            assert_eq!(part.value(&batch_key(batch, i), 0).unwrap(), batch_value(batch, i, 500));
        }
    }
    for i in 0..4 {
        assert!(part.get(&batch_key(5, i), 0).is_none(), "the zombie's batch became visible");
    }
    for batch in 1000..1040 {
        for i in 0..8 {
            assert_eq!(part.value(&batch_key(batch, i), 0), Some(batch_value(batch, i, 100)), "B's record {batch}/{i}");
        }
    }
    assert_eq!(part.len(), 5 * 4 + 40 * 8);
}

#[test]
fn zombie_paused_before_stores_cannot_touch_published_bytes() {
    zombie_race(FAILPOINT_BEFORE_STORES);
}

#[test]
fn zombie_paused_before_publication_is_refused() {
    zombie_race(FAILPOINT_BEFORE_PUBLISH);
}
