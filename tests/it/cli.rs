//! The `volume` CLI, including every bad input we can think of.

use crate::util::*;

#[test]
fn create_inspect_keys_check_round_trip() {
    let s = Scratch::new();
    let vol = s.volume("v", "16MiB", 4);
    let v = vol.to_str().unwrap();
    let out = assert_success(&run(&["volume", "inspect", v]));
    assert!(out.contains("4 partitions"), "{out}");
    assert!(out.contains("Write Exclusive - Registrants Only"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&assert_success(&run(&["volume", "inspect", v, "--json"]))).unwrap();
    assert_eq!(json["partitions"], 4);
    assert_eq!(json["partition_table"].as_array().unwrap().len(), 4);
    assert_eq!(json["partition_table"][0]["owner_key"], serde_json::Value::Null);
    assert!(json["partition_table"][0]["bytes_free"].as_u64().unwrap() > 0);
    let keys = assert_success(&run(&["volume", "keys", v]));
    assert!(keys.contains("0 registered reservation key"), "{keys}");
    assert!(assert_success(&run(&["volume", "check", v])).starts_with("ok:"));
    // The file is sparse: about nothing allocated yet.
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&vol).unwrap().blocks() * 512 < 4 << 20);
}

#[test]
fn create_refuses_to_overwrite_without_force() {
    let s = Scratch::new();
    let vol = s.volume("v", "16MiB", 4);
    let v = vol.to_str().unwrap();
    let uuid = |v: &str| {
        serde_json::from_str::<serde_json::Value>(&assert_success(&run(&["volume", "inspect", v, "--json"]))).unwrap()["uuid"].clone()
    };
    let before = uuid(v);
    let o = run(&["volume", "create", v, "--size", "16MiB", "--partitions", "2"]);
    assert_clean_failure(&o, "--force");
    assert_eq!(uuid(v), before, "the existing volume must be untouched");
    assert_success(&run(&["volume", "create", v, "--size", "16MiB", "--partitions", "2", "--force"]));
    assert_ne!(uuid(v), before);
}

#[test]
fn create_rejects_impossible_geometry_and_bad_arguments() {
    let s = Scratch::new();
    let p = s.path("v");
    let v = p.to_str().unwrap();
    for (args, needle) in [
        (vec!["--size", "1MiB", "--partitions", "64"], "too small"),
        (vec!["--size", "16MiB", "--partitions", "0"], "partitions"),
        (vec!["--size", "16MiB", "--partitions", "100000"], "partitions"),
        (vec!["--size", "16MiB", "--segment-size", "3000"], "segment size"),
        (vec!["--size", "16MiB", "--segment-size", "1MiB"], "segment size"),
        (vec!["--size", "16MiB", "--slots", "300"], "slots"),
    ] {
        let mut a = vec!["volume", "create", v];
        a.extend(args.iter());
        assert_clean_failure(&run(&a), needle);
        assert!(!p.exists(), "a rejected create must not leave a file ({args:?})");
    }
    // Argument syntax errors are usage errors (exit 2).
    for args in [vec!["--size", "12XB"], vec!["--size", "-5"], vec!["--size", "0"], vec!["--partitions", "many"]] {
        let mut a = vec!["volume", "create", v];
        a.extend(args.iter());
        let o = run(&a);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(run(&["volume", "create"]).status.code(), Some(2));
    assert_eq!(run(&["volume", "frobnicate", v]).status.code(), Some(2));
    assert_clean_failure(&run(&["volume", "create", "/nonexistent-dir/x/v", "--size", "64MiB"]), "no such file");
}

#[test]
fn every_command_rejects_missing_foreign_empty_and_truncated_files() {
    let s = Scratch::new();
    let missing = s.path("missing");
    let foreign = s.path("foreign");
    std::fs::write(&foreign, b"#!/bin/sh\necho this is not a volume\n".repeat(200)).unwrap();
    let empty = s.path("empty");
    std::fs::write(&empty, b"").unwrap();
    let truncated = s.volume("trunc", "16MiB", 4);
    std::fs::OpenOptions::new().write(true).open(&truncated).unwrap().set_len(8 << 20).unwrap();
    let tiny = s.path("tiny");
    std::fs::write(&tiny, &std::fs::read(&truncated).unwrap()[..100]).unwrap();
    for (file, needle) in [
        (&missing, "no such file"),
        (&foreign, "not a sharedisk volume"),
        (&empty, "truncated"),
        (&truncated, "truncated"),
        (&tiny, "truncated"),
    ] {
        let f = file.to_str().unwrap();
        for cmd in [vec!["inspect", f], vec!["keys", f], vec!["check", f], vec!["preempt", f, "--key", "0x5"], vec!["reap", f]] {
            let mut a = vec!["volume"];
            a.extend(cmd.iter());
            assert_clean_failure(&run(&a), needle);
        }
    }
    // Nothing was written to the foreign file.
    assert_eq!(std::fs::read(&foreign).unwrap(), b"#!/bin/sh\necho this is not a volume\n".repeat(200));
}

#[test]
fn check_finds_flipped_bytes_and_says_where() {
    let s = Scratch::new();
    let vol = s.volume("v", "16MiB", 2);
    let v = vol.to_str().unwrap();
    let mut w = spawn_writer(&writer_args(&vol, 0x77, 0, 0, 5, &[]));
    assert!(w.wait_exit(std::time::Duration::from_secs(30)).success());
    assert!(assert_success(&run(&["volume", "check", v])).starts_with("ok:"));
    let data = geometry(&vol).data_offset;

    // A flipped bit inside a published record (segment 0 of partition 0).
    flip(&vol, data + 64 + 50, 0x10);
    let o = run(&["volume", "check", v]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("record") && out.contains("checksum") && out.contains("offset"), "{out}");
    let j: serde_json::Value = serde_json::from_str(&stdout(&run(&["volume", "check", v, "--json"]))).unwrap();
    assert_eq!(j["consistent"], false);
    // inspect still works and shows the damage instead of crashing.
    assert!(assert_success(&run(&["volume", "inspect", v])).contains("ERROR"));
    flip(&vol, data + 64 + 50, 0x10);
    assert_success(&run(&["volume", "check", v]));

    // Reserved bits of an owner word (after the reservation table and the head table).
    let json: serde_json::Value = serde_json::from_str(&assert_success(&run(&["volume", "inspect", v, "--json"]))).unwrap();
    let slots = json["registrant_slots"].as_u64().unwrap();
    let owner0 = 4096 + (64 + 32 * slots).div_ceil(4096) * 4096 + 4096;
    assert_eq!(owner0, geometry(&vol).partition_entry(0));
    flip(&vol, owner0 + 7, 0x80);
    let o = run(&["volume", "check", v]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("owner word"), "{}", stdout(&o));
    flip(&vol, owner0 + 7, 0x80);

    // A head token ahead of the owner's (the head table's first word).
    let head0 = geometry(&vol).head_word(0);
    flip(&vol, head0 + 7, 0x40);
    let o = run(&["volume", "check", v]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("head word"), "{}", stdout(&o));
    flip(&vol, head0 + 7, 0x40);

    // The superblock: every command refuses the volume.
    flip(&vol, 40, 0x01);
    assert_clean_failure(&run(&["volume", "check", v]), "superblock");
    assert_clean_failure(&run(&["volume", "inspect", v]), "superblock");
    flip(&vol, 40, 0x01);
    assert_success(&run(&["volume", "check", v]));
}

#[test]
fn preempt_and_reap_from_the_cli() {
    let s = Scratch::new();
    let vol = s.volume("v", "16MiB", 2);
    let v = vol.to_str().unwrap();
    let mut w = spawn_writer(&writer_args(&vol, 0xABC, 1, 0, 3, &[]));
    assert!(w.wait_exit(std::time::Duration::from_secs(30)).success());
    assert!(assert_success(&run(&["volume", "keys", v])).contains("0x0000000000000abc"));
    let out = assert_success(&run(&["volume", "preempt", v, "--key", "0xabc"]));
    assert!(out.contains("fenced partitions: 1"), "{out}");
    assert!(!assert_success(&run(&["volume", "keys", v])).contains("abc"));
    // Preempting again, or an unknown key: a clear error.
    assert_clean_failure(&run(&["volume", "preempt", v, "--key", "0xabc"]), "not registered");
    assert_clean_failure(&run(&["volume", "preempt", v, "--key", "12345"]), "not registered");
    for bad in ["0", "zz", "0x"] {
        assert_eq!(run(&["volume", "preempt", v, "--key", bad]).status.code(), Some(2), "{bad}");
    }
    assert_eq!(run(&["volume", "preempt", v]).status.code(), Some(2));
    // The writer process is gone: its slot can be reaped.
    let out = assert_success(&run(&["volume", "reap", v]));
    assert!(out.contains("reaped 1"), "{out}");
    let j: serde_json::Value = serde_json::from_str(&assert_success(&run(&["volume", "inspect", v, "--json"]))).unwrap();
    assert!(j["reservation"]["registrants"].as_array().unwrap().is_empty());
    assert_success(&run(&["volume", "check", v]));
}

#[test]
fn lock_manager_seats_in_inspect_and_free_seat() {
    let s = Scratch::new();
    let vol = s.volume("v", "16MiB", 2);
    let v = vol.to_str().unwrap();
    let mut lm = sharedisk_testkit::cluster::spawn_lockmgr(&vol, "127.0.0.1:0");
    let addr = lm.wait_lockmgr_ready(std::time::Duration::from_secs(20));
    let j: serde_json::Value = serde_json::from_str(&assert_success(&run(&["volume", "inspect", v, "--json"]))).unwrap();
    assert_eq!(j["lockmgr_lease"]["term"], 1, "{j}");
    let seats = j["lockmgr_seats"].as_array().unwrap();
    assert_eq!(seats.len(), 1, "{j}");
    assert_eq!(
        (seats[0]["addr"].as_str(), seats[0]["active"].as_bool(), seats[0]["liveness"].as_str()),
        (Some(addr.as_str()), Some(true), Some("alive"))
    );
    let seat = seats[0]["seat"].as_u64().unwrap().to_string();
    // A running holder's seat is not the operator's to free.
    assert_clean_failure(&run(&["volume", "free-seat", v, &seat]), "running process");
    lm.kill9();
    assert!(assert_success(&run(&["volume", "inspect", v])).contains("dead (seat reusable), active"));
    assert!(assert_success(&run(&["volume", "free-seat", v, &seat])).contains(&format!("freed seat {seat}")));
    assert!(assert_success(&run(&["volume", "free-seat", v, &seat])).contains("already free"));
    assert_clean_failure(&run(&["volume", "free-seat", v, "4"]), "no seat 4");
    assert_eq!(run(&["volume", "free-seat", v, "x"]).status.code(), Some(2));
    let j: serde_json::Value = serde_json::from_str(&assert_success(&run(&["volume", "inspect", v, "--json"]))).unwrap();
    assert!(j["lockmgr_seats"].as_array().unwrap().is_empty(), "{j}");
    // The map and the term stay: the next lock manager starts in term 2.
    let mut lm = sharedisk_testkit::cluster::spawn_lockmgr(&vol, "127.0.0.1:0");
    let line = lm.wait_line(std::time::Duration::from_secs(20), |l| l.starts_with("lockmgr: serving"));
    assert!(line.contains("term 2"), "{line}");
}

#[test]
fn create_with_preallocate_reserves_the_blocks() {
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::new();
    let p = s.path("v");
    assert_success(&run(&[
        "volume",
        "create",
        p.to_str().unwrap(),
        "--size",
        "16MiB",
        "--partitions",
        "2",
        "--segment-size",
        "64KiB",
        "--preallocate",
    ]));
    assert!(std::fs::metadata(&p).unwrap().blocks() * 512 >= 16 << 20, "the file should be fully allocated");
    assert_success(&run(&["volume", "check", p.to_str().unwrap()]));
}
