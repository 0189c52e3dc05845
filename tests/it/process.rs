//! Real writer processes: preemption, kill -9 in the middle of batches.

use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(30);

/// Acceptance (a), with real processes: A owns p and writes; the operator
/// preempts A; A's next write is refused with RESERVATION CONFLICT; `volume
/// keys` no longer lists A; everything A acknowledged survives.
#[test]
fn preempted_writer_gets_reservation_conflict() {
    let s = Scratch::new();
    let vol = s.volume("v", "32MiB", 2);
    let v = vol.to_str().unwrap();
    let mut a = spawn_writer(&writer_args(&vol, 0xA, 0, 0, 0, &[]));
    a.wait_line(T, |l| l.starts_with("acked 20"));
    assert!(assert_success(&run(&["volume", "keys", v])).contains("0x000000000000000a"));
    assert_success(&run(&["volume", "preempt", v, "--key", "0xa"]));
    let fenced = a.wait_line(T, |l| l.starts_with("fenced"));
    assert!(fenced.contains("RESERVATION CONFLICT"), "{fenced}");
    assert_eq!(a.wait_exit(T).code(), Some(3));
    assert!(!assert_success(&run(&["volume", "keys", v])).contains("0x000000000000000a"));
    // Collect A's acknowledgements (the reader thread has them buffered).
    let mut last_acked = 20;
    while let Some(l) = a.next_line(Duration::from_millis(10)) {
        if let Some(n) = l.strip_prefix("acked ") {
            last_acked = last_acked.max(n.parse().unwrap());
        }
    }
    let batches = recovered_batches(&vol, 0xB, 0, 8, 100);
    assert!(batches.len() as u64 > last_acked, "acknowledged batch {last_acked} lost: recovered {}", batches.len());
    assert_eq!(batches, (0..batches.len() as u64).collect::<Vec<_>>(), "recovered batches are not a prefix");
    assert_success(&run(&["volume", "check", v]));
}

/// kill -9 of a writer in the middle of its batches, many times: every
/// reopen recovers exactly a published prefix, which contains every
/// acknowledged batch, with no torn batch.
#[test]
fn kill9_mid_batch_recovers_exactly_the_published_prefix() {
    let s = Scratch::new();
    let vol = s.volume("v", "64MiB", 2);
    let (ops, value_bytes) = (16u32, 1500usize);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("kill -9 schedule seed {seed}");
    let mut x = seed | 1;
    let mut next_batch = 0u64;
    for round in 0..12u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let wait_for = 1 + x % 40;
        let extra = ["--batch-ops", &ops.to_string(), "--value-bytes", &value_bytes.to_string()];
        let mut w = spawn_writer(&writer_args(&vol, 0x1000 + round, 1, next_batch, 0, &extra));
        let mut acked = None;
        let target = next_batch + wait_for;
        w.wait_line(T, |l| {
            if let Some(n) = l.strip_prefix("acked ") {
                acked = Some(n.parse::<u64>().unwrap());
            }
            acked.is_some_and(|a| a + 1 >= target)
        });
        w.kill9();
        while let Some(l) = w.next_line(Duration::from_millis(1)) {
            if let Some(n) = l.strip_prefix("acked ") {
                acked = Some(n.parse().unwrap());
            }
        }
        let acked = acked.unwrap();
        let batches = recovered_batches(&vol, 0x9000 + round, 1, ops, value_bytes);
        let expect_prefix: Vec<u64> = (0..batches.len() as u64).collect();
        assert_eq!(batches, expect_prefix, "round {round} (seed {seed}): not a prefix");
        assert!(batches.len() as u64 > acked, "round {round} (seed {seed}): acknowledged batch {acked} lost");
        next_batch = batches.len() as u64;
        // The dead writer's key is still registered: fence it, then reap it.
        assert_success(&run(&["volume", "preempt", vol.to_str().unwrap(), "--key", &format!("{:#x}", 0x1000 + round)]));
    }
    let out = assert_success(&run(&["volume", "reap", vol.to_str().unwrap()]));
    assert!(out.contains("reaped 12"), "{out}");
    assert_success(&run(&["volume", "check", vol.to_str().unwrap()]));
}
