//! The benchmarks as a user runs them: real processes, their JSON, their
//! refusals.

use std::time::Duration;

use sharedisk_testkit::process::*;

fn bench(args: &[&str]) -> std::process::Output {
    run_program(std::path::Path::new(env!("CARGO_BIN_EXE_sharedisk-bench")), args)
}

#[test]
fn bench_failover_reports_every_figure_and_loses_nothing() {
    let s = Scratch::new();
    let o = assert_success(&bench(&["failover", "--runs", "2", "--json", "--dir", s.dir.path().to_str().unwrap()]));
    let j: serde_json::Value = serde_json::from_str(o.trim()).expect("one JSON object");
    for k in ["kill9_ms", "move_ms", "hang_ms"] {
        for f in ["min", "p50", "p99", "max"] {
            assert!(j[k][f].as_f64().is_some_and(|v| v > 0.0), "{k}.{f} in {o}");
        }
    }
    assert_eq!(j["lost_acked_writes"], 0, "{o}");
    assert_eq!(j["client_errors_during_moves"], 0, "{o}");
    assert_eq!(j["runs"], 2);
    // It cleans up after itself.
    assert_eq!(std::fs::read_dir(s.dir.path()).unwrap().count(), 0);
    assert_clean_failure(&bench(&["failover", "--runs", "0"]), "--runs");
}

#[test]
fn bench_locks_measures_the_lock_manager_and_refuses_no_target() {
    let s = Scratch::new();
    let vol = s.volume("locks", "16MiB", 2);
    let mut lm = ChildGuard::spawn(&["lockmgr", "--volume", vol.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let addr = lm.wait_lockmgr_ready(Duration::from_secs(20));
    let o = assert_success(&bench(&["locks", "--lockmgr", &addr, "--seconds", "0.3", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(o.trim()).expect("JSON");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{o}");
    for (r, clients) in rows.iter().zip([1, 64]) {
        assert_eq!(r["system"], "sharedisk lock manager");
        assert_eq!(r["clients"], clients);
        assert!(r["per_s"].as_f64().unwrap() > 0.0, "{o}");
    }
    assert_clean_failure(&bench(&["locks"]), "--lockmgr");
    assert_clean_failure(&bench(&["locks", "--redis", "127.0.0.1:1", "--seconds", "0.1"]), "refused");
}
