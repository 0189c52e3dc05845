//! Fencing and recovery properties of the storage crate, in-process.

use std::sync::{Arc, Mutex};

use sharedisk_storage::layout::SegState;
use sharedisk_storage::media::MemMedia;
use sharedisk_storage::partition::{FAILPOINT_BEFORE_PUBLISH, FAILPOINT_BEFORE_STORES, PauseHook};
use sharedisk_storage::{
    CreateOptions, Durability, Entry, Error, Index, Keyspace, MapCopy, Op, Partition, PartitionOptions, ProcessIdentity, Volume, check,
};

fn small_volume(partitions: u32, segment_bytes: u32, volume_bytes: u64) -> Arc<Volume> {
    let opts = CreateOptions { segment_bytes, ..CreateOptions::new(volume_bytes, partitions) };
    Arc::new(Volume::create_in_memory(&opts, None).unwrap().0)
}

fn put(k: &str, v: &str) -> Op {
    Op::Put { key: k.as_bytes().to_vec(), value: v.as_bytes().to_vec().into(), expire_at_ms: 0 }
}

fn value(p: &Partition, k: &str) -> Option<String> {
    p.value(k.as_bytes(), 0).map(|v| String::from_utf8(v).unwrap())
}

#[test]
fn preempt_refuses_the_victims_next_write_and_removes_its_key() {
    let vol = small_volume(4, 8192, 4 << 20);
    let a = vol.register(0xA, ProcessIdentity::default()).unwrap();
    let b = vol.register(0xB, ProcessIdentity::default()).unwrap();
    assert_eq!(vol.read_keys(), vec![0xA, 0xB]);
    let gen0 = vol.read_reservation().generation;

    let mut pa = Partition::claim(vol.clone(), a, 2).unwrap();
    pa.append(&[put("k1", "a1")], 0).unwrap();
    pa.commit().unwrap();
    let token_a = pa.token();

    let report = vol.preempt(0xA).unwrap();
    assert_eq!(report.fenced, vec![(2, token_a + 1)]);
    assert!(vol.read_reservation().generation > gen0);
    assert_eq!(vol.read_keys(), vec![0xB]);

    // A's next write: refused with a reservation conflict, at append or commit.
    let err = pa.append(&[put("k1", "zombie")], 0).and_then(|_| pa.commit()).unwrap_err();
    assert!(matches!(err, Error::Fenced { partition: 2, presented, .. } if presented == token_a), "{err}");
    assert!(err.to_string().contains("RESERVATION CONFLICT"));
    // And it stays refused.
    assert!(pa.commit().is_err());

    let pb = Partition::claim(vol.clone(), b, 2).unwrap();
    assert!(pb.token() > token_a + 1);
    assert_eq!(value(&pb, "k1").as_deref(), Some("a1"));
    // A cannot claim anything any more.
    assert!(matches!(Partition::claim(vol.clone(), a, 3), Err(Error::NotRegistered { .. })));
    assert!(check::check(&vol).is_empty());
}

#[test]
fn takeover_without_preempt_fences_the_old_owner() {
    let vol = small_volume(2, 8192, 4 << 20);
    let a = vol.register(1, ProcessIdentity::default()).unwrap();
    let b = vol.register(2, ProcessIdentity::default()).unwrap();
    let mut pa = Partition::claim(vol.clone(), a, 0).unwrap();
    pa.append(&[put("x", "1")], 0).unwrap();
    pa.commit().unwrap();
    pa.append(&[put("x", "2")], 0).unwrap(); // staged, not published
    let mut pb = Partition::claim(vol.clone(), b, 0).unwrap();
    assert_eq!(value(&pb, "x").as_deref(), Some("1"));
    assert!(pa.commit().unwrap_err().is_fenced());
    assert!(pa.check_owner().is_err());
    pb.append(&[put("x", "3")], 0).unwrap();
    pb.commit().unwrap();
    pb.check_owner().unwrap();
    let pc = Partition::claim(vol.clone(), a, 1).unwrap(); // A is still registered: may own others
    drop(pc);
}

/// The zombie race, in-process: A is paused after its last fence check and
/// before its stores; meanwhile B preempts A, takes the partition and
/// publishes. A then completes its stores and tries to publish.
#[test]
fn zombie_stores_after_fence_never_touch_published_bytes() {
    for point in [FAILPOINT_BEFORE_STORES, FAILPOINT_BEFORE_PUBLISH] {
        let vol = small_volume(2, 8192, 4 << 20);
        let a = vol.register(0xA, ProcessIdentity::default()).unwrap();
        let b = vol.register(0xB, ProcessIdentity::default()).unwrap();
        let mut pa = Partition::claim(vol.clone(), a, 0).unwrap();
        for i in 0..5 {
            pa.append(&[put(&format!("a{i}"), "before")], 0).unwrap();
        }
        pa.commit().unwrap();

        let b_records: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let fired = Arc::new(Mutex::new(false));
        {
            let (vol, b_records, fired) = (vol.clone(), b_records.clone(), fired.clone());
            pa.set_pause_hook(Some(PauseHook(Box::new(move |name| {
                if name != point || std::mem::replace(&mut *fired.lock().unwrap(), true) {
                    return;
                }
                vol.preempt(0xA).unwrap();
                let mut pb = Partition::claim(vol.clone(), b, 0).unwrap();
                for i in 0..40 {
                    let (k, v) = (format!("b{i}"), format!("value-{i}-{}", "x".repeat(i * 7)));
                    pb.append(&[put(&k, &v)], 0).unwrap();
                    pb.commit().unwrap();
                    b_records.lock().unwrap().push((k, v));
                }
                pb.release().unwrap();
            }))));
        }
        // A's write: a batch big enough to overlap where B wrote, if A could.
        let batch: Vec<Op> = (0..20).map(|i| put(&format!("a{i}"), &"Z".repeat(200))).collect();
        let r = pa.append(&batch, 0).and_then(|_| pa.commit());
        assert!(*fired.lock().unwrap(), "pause point {point} was never reached");
        assert!(r.unwrap_err().is_fenced(), "zombie publication must be refused at {point}");

        let c = vol.register(0xC, ProcessIdentity::default()).unwrap();
        let pc = Partition::claim(vol.clone(), c, 0).unwrap();
        for (k, v) in b_records.lock().unwrap().iter() {
            assert_eq!(value(&pc, k).as_deref(), Some(v.as_str()), "B's record {k} changed ({point})");
        }
        for i in 0..5 {
            assert_eq!(value(&pc, &format!("a{i}")).as_deref(), Some("before"));
        }
        assert_eq!(pc.len(), 45);
        assert!(check::check(&vol).is_empty(), "{:?}", check::check(&vol));
    }
}

#[test]
fn cleaner_reclaims_space_and_full_partition_is_a_clear_error() {
    let vol = small_volume(1, 8192, 1 << 20);
    let geo = *vol.geometry();
    let a = vol.register(1, ProcessIdentity::default()).unwrap();
    let mut p = Partition::claim(vol.clone(), a, 0).unwrap();
    // Overwrite a few keys far more often than the partition could hold.
    let capacity = u64::from(geo.segments_per_partition) * u64::from(geo.segment_bytes);
    let mut written = 0u64;
    let mut i = 0u64;
    while written < capacity * 5 {
        let op = put(&format!("k{}", i % 10), &format!("{i:0>300}"));
        written += op.encoded_bytes() as u64;
        p.append(&[op], 0).unwrap();
        if i.is_multiple_of(7) {
            p.commit().unwrap();
        }
        i += 1;
    }
    p.commit().unwrap();
    for k in 0..10 {
        assert!(value(&p, &format!("k{k}")).is_some());
    }
    assert!(check::check(&vol).is_empty());
    // Now fill it with distinct keys until it is truly full.
    let mut n = 0;
    let err = loop {
        match p.append(&[put(&format!("fill{n}"), &"f".repeat(500))], 0).and_then(|_| p.commit()) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 100_000);
    };
    assert!(matches!(err, Error::PartitionFull { .. }), "{err}");
    // Nothing lost: every acknowledged key is there, and a delete still works.
    for j in 0..n {
        assert!(value(&p, &format!("fill{j}")).is_some());
    }
    p.append(&[Op::Del { key: b"fill0".to_vec() }], 0).unwrap();
    p.commit().unwrap();
    drop(p);
    let b = vol.register(2, ProcessIdentity::default()).unwrap();
    let p2 = Partition::claim(vol.clone(), b, 0).unwrap();
    assert_eq!(p2.len(), 10 + n - 1);
    assert!(check::check(&vol).is_empty());
}

#[test]
fn expired_keys_are_hidden_and_dropped_by_the_cleaner() {
    let vol = small_volume(1, 8192, 1 << 20);
    let a = vol.register(1, ProcessIdentity::default()).unwrap();
    let mut p = Partition::claim(vol.clone(), a, 0).unwrap();
    p.append(&[Op::Put { key: b"t".to_vec(), value: b"v".to_vec().into(), expire_at_ms: 1000 }], 0).unwrap();
    p.commit().unwrap();
    assert!(p.get(b"t", 999).is_some());
    assert!(p.get(b"t", 1000).is_none());
    // The expiry survives a takeover.
    drop(p);
    let b = vol.register(2, ProcessIdentity::default()).unwrap();
    let p = Partition::claim(vol.clone(), b, 0).unwrap();
    assert_eq!(p.get(b"t", 500).map(|e| e.expire_at_ms), Some(1000));
}

#[test]
fn reap_frees_a_dead_incarnations_slot_and_leaked_segment() {
    let vol = small_volume(1, 8192, 1 << 20);
    // An incarnation that is certainly dead: a pid that exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let dead = ProcessIdentity { pid, ..ProcessIdentity::current() };
    let a = vol.register(0xDEAD, dead).unwrap();
    let mut pa = Partition::claim(vol.clone(), a, 0).unwrap();
    pa.append(&[put("k", "v")], 0).unwrap();
    pa.commit().unwrap();
    let open_before = (0..vol.geometry().segments_per_partition as u16)
        .filter(|&s| matches!(vol.descriptor(0, s).unwrap(), SegState::Open { .. }))
        .count();
    assert_eq!(open_before, 1);
    vol.preempt(0xDEAD).unwrap();
    // The live registrant is never reaped; the dead one is.
    let me = vol.register(0xB, ProcessIdentity::current()).unwrap();
    assert_eq!(vol.reap().unwrap(), vec![0xDEAD]);
    assert!(vol.is_registered(me));
    assert!(vol.read_full_status().iter().all(|s| s.key != 0xDEAD));
    let pb = Partition::claim(vol.clone(), me, 0).unwrap();
    assert_eq!(value(&pb, "k").as_deref(), Some("v"));
    assert!(check::check(&vol).is_empty());
}

#[test]
fn a_live_stopped_process_is_not_reaped() {
    let vol = small_volume(1, 8192, 1 << 20);
    let a = vol.register(0xA1, ProcessIdentity::current()).unwrap();
    vol.preempt(a.key).unwrap();
    assert!(vol.reap().unwrap().is_empty(), "we are alive: our slot must stay fenced");
}

fn me() -> ProcessIdentity {
    ProcessIdentity::current()
}

#[test]
fn lockmgr_state_survives_a_torn_write_of_either_slot() {
    let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(4 << 20, 4) };
    let (vol, media) = Volume::create_in_memory(&opts, None).unwrap();
    assert!(vol.read_lockmgr_state().unwrap().is_none());
    let seat = vol.claim_lockmgr_seat(1, me(), "127.0.0.1:1", |_| false).unwrap();
    let term = vol.take_lockmgr_lease(vol.lockmgr_lease().unwrap(), seat).unwrap().unwrap().term;
    let copy = |seq: u64, b: &[u8]| MapCopy { term, seq, seat: seat.seat, bytes: b.to_vec() };
    vol.write_lockmgr_state(seat, term, 1, b"first").unwrap();
    vol.write_lockmgr_state(seat, term, 2, b"second").unwrap();
    assert_eq!(vol.read_lockmgr_state().unwrap(), Some(copy(2, b"second")));
    vol.write_lockmgr_state(seat, term, 3, b"third").unwrap();
    assert_eq!(vol.read_lockmgr_state().unwrap(), Some(copy(3, b"third")));
    // Damage the newest copy (a torn write): the previous one is still there.
    let g = *vol.geometry();
    let mut image = media.snapshot();
    let newest_at =
        (0..2u64).map(|i| g.lockmgr_slot(seat.seat, i)).find(|&at| image[at as usize + 64..at as usize + 69] == *b"third").unwrap();
    image[newest_at as usize + 66] ^= 0xff;
    let damaged = Volume::from_media(Arc::new(sharedisk_storage::media::MemMedia::from_image(&image, None))).unwrap();
    assert_eq!(damaged.read_lockmgr_state().unwrap(), Some(copy(2, b"second")));
    assert!(check::check(&damaged).is_empty(), "a torn write beside a valid copy is not a problem");
    // Both copies damaged: an error (tokens could go backwards), and check says so.
    let other_at = (0..2u64).map(|i| g.lockmgr_slot(seat.seat, i)).find(|&at| at != newest_at).unwrap();
    image[other_at as usize + 66] ^= 0xff;
    let both = Volume::from_media(Arc::new(sharedisk_storage::media::MemMedia::from_image(&image, None))).unwrap();
    assert!(matches!(both.read_lockmgr_state(), Err(Error::Corrupted { what: "lock-manager area", .. })));
    assert!(check::check(&both).iter().any(|p| p.what == "lock-manager area"));
    let too_big = vec![0u8; g.lockmgr_slot_bytes as usize];
    assert!(vol.write_lockmgr_state(seat, term, 4, &too_big).is_err());
}

/// The fencing argument of the lock-manager area, step by step: a deposed
/// lock manager's writes can change nothing a reader takes.
#[test]
fn a_deposed_lock_manager_changes_nothing() {
    let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(4 << 20, 4) };
    let (vol, media) = Volume::create_in_memory(&opts, None).unwrap();
    let a = vol.claim_lockmgr_seat(1, me(), "a:1", |_| false).unwrap();
    let b = vol.claim_lockmgr_seat(2, me(), "b:1", |_| false).unwrap();
    assert_ne!(a.seat, b.seat);
    assert!(matches!(vol.claim_lockmgr_seat(0, me(), "c:1", |_| false), Err(Error::ZeroKey)));
    let seen = vol.lockmgr_lease().unwrap();
    let t1 = vol.take_lockmgr_lease(seen, a).unwrap().unwrap();
    assert_eq!((t1.term, t1.seat), (1, Some(a.seat)));
    // Two takers of the same lease word: exactly one wins.
    assert!(vol.take_lockmgr_lease(seen, b).unwrap().is_none(), "the word moved: the second taker loses");
    vol.write_lockmgr_state(a, 1, 1, b"a1").unwrap();
    let renewed = vol.renew_lockmgr_lease(a, 1).unwrap();
    assert_eq!(renewed.count, 1);
    // b takes over (a paused, say): a's renewal and its next write fail.
    let t2 = vol.take_lockmgr_lease(renewed, b).unwrap().unwrap();
    assert_eq!((t2.term, t2.seat), (2, Some(b.seat)));
    assert!(matches!(vol.renew_lockmgr_lease(a, 1), Err(Error::Deposed { term: 1, now: 2, .. })));
    assert!(!vol.holds_lockmgr_lease(a, 1));
    // b reads what a revealed, then writes its own term.
    assert_eq!(vol.read_lockmgr_state().unwrap().unwrap().bytes, b"a1");
    vol.write_lockmgr_state(b, 2, 2, b"b2").unwrap();
    let g = *vol.geometry();
    let seat_bytes = |s: u8| {
        let at = g.lockmgr_seat(s) as usize;
        media.snapshot()[at..at + (4096 + 2 * g.lockmgr_slot_bytes) as usize].to_vec()
    };
    let b_before = seat_bytes(b.seat);
    // a wakes up and writes once more (a higher sequence even): refused, and
    // ranked below every copy of the later term.
    assert!(matches!(vol.write_lockmgr_state(a, 1, 99, b"a99"), Err(Error::Deposed { term: 1, now: 2, .. })));
    let newest = vol.read_lockmgr_state().unwrap().unwrap();
    assert_eq!((newest.term, newest.seq, &newest.bytes[..]), (2, 2, &b"b2"[..]));
    // It could only have written into its own seat: b's is byte for byte intact.
    assert!(seat_bytes(b.seat) == b_before, "a deposed lock manager wrote into another seat");
    // A seat given back is free for the next lock manager; a live holder's is not.
    vol.release_lockmgr_seat(a).unwrap();
    let c = vol.claim_lockmgr_seat(3, me(), "c:1", |_| false).unwrap();
    assert_eq!(c.seat, a.seat, "the freed seat is taken first");
    assert_eq!(vol.seat_info(b.seat).unwrap().addr, "b:1");
    let full: Vec<_> = (4..8).map(|id| vol.claim_lockmgr_seat(id, me(), "x", |_| false)).collect();
    assert!(full.iter().any(|r| matches!(r, Err(Error::NoFreeSeat { .. }))), "four seats only");
    // Reusable holders (proven dead) give their seat up.
    assert!(vol.claim_lockmgr_seat(9, me(), "d:1", |s| s.id == 3).is_ok());
}

/// A volume whose durable image only flushes update ("power loss" = reopen
/// from that image).
fn durable_volume(partitions: u32) -> (Arc<Volume>, Arc<MemMedia>) {
    let opts = CreateOptions { segment_bytes: 8192, ..CreateOptions::new(4 << 20, partitions) };
    let media = Arc::new(MemMedia::from_image(&vec![0u8; opts.volume_bytes as usize], None));
    let (vol, _) = Volume::create_in_memory(&opts, Some(media.clone())).unwrap();
    (Arc::new(vol), media)
}

fn power_loss(image: Vec<u8>) -> Arc<Volume> {
    Arc::new(Volume::from_media(Arc::new(MemMedia::from_image(&image, None))).unwrap())
}

/// A publishes and dies before its barrier (the server publishes first, then
/// syncs). B's claim sees A's records in the page cache and may serve them at
/// once, so the claim itself must make them durable: after a power loss they
/// are still there.
#[test]
fn a_claim_makes_the_previous_owners_unsynced_publication_durable() {
    let (vol, media) = durable_volume(1);
    let a = vol.register(1, ProcessIdentity::default()).unwrap();
    let b = vol.register(2, ProcessIdentity::default()).unwrap();
    let mut pa = Partition::claim(vol.clone(), a, 0).unwrap();
    pa.append(&[put("x", "1")], 0).unwrap();
    pa.commit().unwrap();
    pa.append(&[put("x", "2")], 0).unwrap();
    pa.publish().unwrap(); // visible, not yet durable; then A is killed
    drop(pa);
    let pb = Partition::claim(vol.clone(), b, 0).unwrap();
    assert_eq!(value(&pb, "x").as_deref(), Some("2"), "B serves what A published");
    drop(pb);
    let vol = power_loss(media.durable_image().unwrap());
    assert!(check::check(&vol).is_empty(), "{:?}", check::check(&vol));
    vol.reap_key(1).unwrap();
    vol.reap_key(2).unwrap();
    let c = vol.register(3, ProcessIdentity::default()).unwrap();
    let pc = Partition::claim(vol.clone(), c, 0).unwrap();
    assert_eq!(value(&pc, "x").as_deref(), Some("2"), "what B could serve survives a power loss");
}

/// The single-barrier commit torn by a power loss: the head word reached the
/// disk, the records did not. Recovery falls back to the floor (the previous,
/// acknowledged head), drops the unacknowledged commit, reports it, and the
/// partition goes on from there.
#[test]
fn a_torn_single_barrier_commit_is_dropped_back_to_the_floor() {
    let (vol, media) = durable_volume(1);
    let a = vol.register(1, ProcessIdentity::default()).unwrap();
    let mut pa = Partition::claim(vol.clone(), a, 0).unwrap();
    pa.append(&[put("x", "acked")], 0).unwrap();
    pa.publish().unwrap();
    vol.sync_all().unwrap();
    pa.note_synced();
    let acked = media.durable_image().unwrap();
    pa.append(&[put("x", "torn"), put("y", "torn")], 0).unwrap();
    pa.publish().unwrap();
    // Power fails inside the barrier: only the page with the head word made it.
    let now = media.snapshot();
    let mut image = acked.clone();
    let page = vol.geometry().head_word(0) as usize / 4096 * 4096;
    image[page..page + 4096].copy_from_slice(&now[page..page + 4096]);
    assert!(image != acked, "the head page changed");
    let vol = power_loss(image);
    let report = check::inspect_partition(&vol, 0);
    assert!(report.error.is_none() && report.torn_commit.is_some(), "{report:?}");
    assert!(check::check(&vol).is_empty(), "a torn unacknowledged commit is not corruption");
    vol.reap_key(1).unwrap();
    let b = vol.register(2, ProcessIdentity::default()).unwrap();
    let (mut pb, stats) = Partition::claim_with(vol.clone(), b, 0, Default::default()).unwrap();
    assert!(stats.torn_commit_dropped);
    assert_eq!(value(&pb, "x").as_deref(), Some("acked"));
    assert_eq!(value(&pb, "y"), None);
    pb.append(&[put("y", "after")], 0).unwrap();
    pb.commit().unwrap();
    drop(pb);
    assert_eq!(check::inspect_partition(&vol, 0).torn_commit, None);
    let c = vol.register(3, ProcessIdentity::default()).unwrap();
    let pc = Partition::claim(vol.clone(), c, 0).unwrap();
    assert_eq!((value(&pc, "x").as_deref(), value(&pc, "y").as_deref()), (Some("acked"), Some("after")));
}

/// Damage below the floor is corruption, never silently dropped.
#[test]
fn damage_before_the_floor_is_corruption_not_a_torn_commit() {
    let (vol, media) = durable_volume(1);
    let a = vol.register(1, ProcessIdentity::default()).unwrap();
    let mut pa = Partition::claim(vol.clone(), a, 0).unwrap();
    for v in ["1", "2", "3"] {
        pa.append(&[put("x", v)], 0).unwrap();
        pa.publish().unwrap();
        vol.sync_all().unwrap();
        pa.note_synced();
    }
    drop(pa);
    let mut image = media.durable_image().unwrap();
    // Flip a byte of the first record (acknowledged long ago, below the floor).
    let mut found = false;
    for seg in 0..vol.geometry().segments_per_partition as u16 {
        let at = vol.geometry().segment(0, seg) as usize;
        if image[at..at + 4] == *b"SEG1" {
            image[at + 64 + 41] ^= 0xff;
            found = true;
            break;
        }
    }
    assert!(found);
    let vol = power_loss(image);
    let report = check::inspect_partition(&vol, 0);
    assert!(report.error.is_some() && report.torn_commit.is_none(), "{report:?}");
    vol.reap_key(1).unwrap();
    let b = vol.register(2, ProcessIdentity::default()).unwrap();
    assert!(matches!(Partition::claim(vol.clone(), b, 0), Err(Error::Corrupted { .. })));
}

/// The cleaner frees the old tail segment; the floor must not be left
/// pointing into it, even when the cleaning publishes nothing (every record
/// there is dead), or a later torn commit could not fall back.
#[test]
fn the_cleaner_keeps_the_floor_on_the_live_log() {
    let (vol, _media) = durable_volume(1);
    let a = vol.register(1, ProcessIdentity::default()).unwrap();
    let mut pa = Partition::claim(vol.clone(), a, 0).unwrap();
    let big = |c: char| Op::Put { key: b"k".to_vec(), value: vec![c as u8; 3000].into(), expire_at_ms: 0 };
    for c in ['a', 'b', 'c'] {
        // Two fit in the first segment (8 KiB); the third opens a second one,
        // so the floor (the previous head) is the end of the first.
        pa.append(&[big(c)], 0).unwrap();
        pa.publish().unwrap();
        vol.sync_all().unwrap();
        pa.note_synced();
    }
    let first = pa.chain().next().unwrap().segment;
    assert_eq!(pa.chain().count(), 2);
    // Everything in the first segment is dead: cleaning it relocates nothing.
    assert!(pa.clean_one(0).unwrap());
    assert!(pa.chain().all(|c| c.segment != first));
    let problems = check::check(&vol);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(check::inspect_partition(&vol, 0).torn_commit, None);
}

/// The engine stages the next cycle while the previous cycle's barrier runs:
/// that barrier does not cover those stores, so a commit after it completes
/// (the cleaner's) must still flush them itself.
#[test]
fn a_barrier_covers_only_the_stores_made_before_it_started() {
    let (vol, media) = durable_volume(1);
    let a = vol.register(1, ProcessIdentity::default()).unwrap();
    let mut pa = Partition::claim(vol.clone(), a, 0).unwrap();
    pa.append(&[put("x", "1")], 0).unwrap();
    pa.publish().unwrap();
    let mark = pa.barrier_started();
    vol.sync_all().unwrap();
    pa.append(&[put("y", "2")], 0).unwrap(); // staged while the barrier "runs"
    pa.barrier_completed(mark);
    pa.commit().unwrap();
    drop(pa);
    let vol = power_loss(media.durable_image().unwrap());
    vol.reap_key(1).unwrap();
    let b = vol.register(2, ProcessIdentity::default()).unwrap();
    let (pb, stats) = Partition::claim_with(vol.clone(), b, 0, Default::default()).unwrap();
    assert!(!stats.torn_commit_dropped);
    assert_eq!((value(&pb, "x").as_deref(), value(&pb, "y").as_deref()), (Some("1"), Some("2")));
}

/// The publication precondition holds in release builds too: a second
/// publication before the first one's barrier completed would make a
/// non-durable head the floor.
#[test]
#[should_panic(expected = "publishing over a head whose log is not durable")]
fn a_publication_over_an_unsynced_head_is_refused() {
    let vol = small_volume(1, 8192, 4 << 20);
    let a = vol.register(1, ProcessIdentity::default()).unwrap();
    let mut pa = Partition::claim(vol.clone(), a, 0).unwrap();
    pa.append(&[put("x", "1")], 0).unwrap();
    pa.publish().unwrap();
    pa.append(&[put("x", "2")], 0).unwrap();
    let _ = pa.publish();
}

/// A barrier mark is only good for the handle that took it.
#[test]
#[should_panic(expected = "a SyncMark of another partition handle")]
fn a_barrier_mark_of_another_claim_is_refused() {
    let vol = small_volume(1, 8192, 4 << 20);
    let a = vol.register(1, ProcessIdentity::default()).unwrap();
    let mut pa = Partition::claim(vol.clone(), a, 0).unwrap();
    pa.append(&[put("x", "1")], 0).unwrap();
    let mark = pa.barrier_started();
    drop(pa);
    let mut pb = Partition::claim(vol.clone(), a, 0).unwrap();
    pb.barrier_completed(mark);
}

/// The benchmarks' publish-only mode says so at the claim, and only then may
/// it publish with no barrier at all.
#[test]
fn durability_off_publishes_without_barriers_when_claimed_so() {
    let vol = small_volume(1, 8192, 4 << 20);
    let a = vol.register(1, ProcessIdentity::default()).unwrap();
    let opts = PartitionOptions { durability: Durability::OffForBenchmarks, ..Default::default() };
    let (mut pa, _) = Partition::claim_with(vol.clone(), a, 0, opts).unwrap();
    for i in 0..50 {
        pa.append(&[put(&format!("k{i}"), "v")], 0).unwrap();
        pa.publish().unwrap();
    }
    assert_eq!(pa.len(), 50);
    drop(pa);
    let problems = check::check(&vol);
    assert!(problems.is_empty(), "{problems:?}");
    let b = vol.register(2, ProcessIdentity::default()).unwrap();
    assert_eq!(Partition::claim(vol.clone(), b, 0).unwrap().len(), 50, "visible to the next owner (same page cache)");
}

/// Another index, kept in key order.
#[derive(Debug, Default)]
struct OrderedIndex(std::collections::BTreeMap<Vec<u8>, Entry>);

impl Index for OrderedIndex {
    fn insert(&mut self, key: Vec<u8>, entry: Entry) -> Option<Entry> {
        self.0.insert(key, entry)
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
        self.0.iter().map(|(k, e)| (k.as_slice(), e))
    }
}

/// The index is injected: a claim with another index, and a reader that only
/// walks the log (a standby), build the same keyspace as the writer's own,
/// through the cleaner's relocations, deletes and overwrites.
#[test]
fn an_injected_index_and_a_log_reader_build_the_same_keyspace() {
    let vol = small_volume(1, 8192, 680 * 1024);
    let a = vol.register(1, ProcessIdentity::default()).unwrap();
    let mut pa = Partition::claim(vol.clone(), a, 0).unwrap();
    let mut tails = std::collections::HashSet::new();
    for round in 0..200 {
        let k = format!("k{}", round % 7);
        let batch = if round % 5 == 4 { vec![Op::Del { key: k.into_bytes() }] } else { vec![put(&k, &"v".repeat(700 + round))] };
        pa.append(&batch, 0).unwrap();
        pa.commit().unwrap();
        tails.insert(pa.chain().next().unwrap().segment);
    }
    assert!(tails.len() > 3, "the cleaner moved the tail only {} times", tails.len() - 1);
    let snapshot = |keys: Vec<&[u8]>, get: &dyn Fn(&[u8]) -> Option<Entry>| {
        // The same version of every key, at the same place on the log.
        let mut all: Vec<(Vec<u8>, Entry)> = keys.into_iter().map(|k| (k.to_vec(), get(k).unwrap())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    };
    let want = snapshot(pa.keys().collect(), &|k| pa.get(k, 0).cloned());
    let mut standby = Keyspace::new(OrderedIndex::default());
    sharedisk_storage::partition::recover(&vol, 0, |v| standby.replayed(v)).unwrap();
    assert_eq!(snapshot(standby.keys().collect(), &|k| standby.get(k, 0).cloned()), want);
    assert_eq!(standby.live_bytes(), pa.live_bytes());
    drop(pa);
    let b = vol.register(2, ProcessIdentity::default()).unwrap();
    let (pb, _) = Partition::claim_with_index(vol.clone(), b, 0, Default::default(), OrderedIndex::default()).unwrap();
    assert_eq!(snapshot(pb.keys().collect(), &|k| pb.get(k, 0).cloned()), want);
    assert_eq!(pb.live_bytes(), standby.live_bytes());
}
