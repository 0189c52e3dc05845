//! The process harness: run `sharedisk`, guard children, wait on conditions.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sharedisk")
}

/// How long any one-shot `sharedisk` command may take.
pub const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// Run `sharedisk ARGS…` to completion. A command still running at
/// [`RUN_DEADLINE`] (say, a server that should have refused to start) is
/// killed and the test fails, instead of hanging the suite.
pub fn run(args: &[&str]) -> Output {
    let mut child = Command::new(bin()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn sharedisk");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let readers = (
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut out, &mut v);
            v
        }),
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut err, &mut v);
            v
        }),
    );
    let deadline = Instant::now() + RUN_DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`sharedisk {}` still running after {RUN_DEADLINE:?}; killed", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output { status, stdout: readers.0.join().unwrap(), stderr: readers.1.join().unwrap() }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert a clean failure: non-zero exit, not a panic (101) or a signal, and
/// stderr mentioning `needle`.
pub fn assert_clean_failure(o: &Output, needle: &str) {
    let code = o.status.code();
    assert!(code.is_some(), "killed by a signal: {o:?}");
    assert_ne!(code, Some(0), "expected failure, got success: {}", stdout(o));
    assert_ne!(code, Some(101), "panicked: {}", stderr(o));
    assert!(!stderr(o).contains("panicked"), "panicked: {}", stderr(o));
    assert!(stderr(o).to_lowercase().contains(&needle.to_lowercase()), "stderr does not mention {needle:?}: {}", stderr(o));
}

pub fn assert_success(o: &Output) -> String {
    assert!(o.status.success(), "sharedisk failed: {}\n{}", stdout(o), stderr(o));
    stdout(o)
}

/// A scratch directory with a volume in it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::tempdir().expect("tempdir") }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Create a small volume (`partitions`, 8 KiB segments) and return its path.
    pub fn volume(&self, name: &str, size: &str, partitions: u32) -> PathBuf {
        let p = self.path(name);
        assert_success(&run(&[
            "volume",
            "create",
            p.to_str().unwrap(),
            "--size",
            size,
            "--partitions",
            &partitions.to_string(),
            "--segment-size",
            "64KiB",
        ]));
        p
    }
}

/// A child process that is SIGCONTed and SIGKILLed when dropped, so a failed
/// test never leaves a stopped or running process behind.
pub struct ChildGuard {
    pub child: Child,
    lines: Option<std::sync::mpsc::Receiver<String>>,
}

impl ChildGuard {
    pub fn spawn(args: &[&str]) -> ChildGuard {
        let mut child = Command::new(bin()).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn sharedisk");
        let out: ChildStdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildGuard { child, lines: Some(rx) }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, waiting at most `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        self.lines.as_ref()?.recv_timeout(timeout).ok()
    }

    /// Read lines until one satisfies `f`; returns it, panics at the deadline.
    pub fn wait_line(&mut self, timeout: Duration, mut f: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some(l) if f(&l) => return l,
                Some(_) => {}
                None => panic!("no matching line from pid {} within {timeout:?}", self.pid()),
            }
        }
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, sig);
    }

    pub fn kill9(&mut self) {
        self.signal(rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }

    /// Wait for exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "pid {} did not exit within {timeout:?}", self.pid());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The process state letter from /proc (R, S, T = stopped, Z, …).
    pub fn state(&self) -> Option<char> {
        proc_state(self.pid())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.signal(rustix::process::Signal::CONT);
        self.signal(rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }
}

pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().next()?.chars().next()
}

/// Poll `cond` until it holds or the deadline passes.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Arguments for a `debug writer` process.
pub fn writer_args(volume: &Path, key: u64, partition: u32, start_batch: u64, batches: u64, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "debug",
        "writer",
        "--volume",
        volume.to_str().unwrap(),
        "--key",
        &format!("{key:#x}"),
        "--partition",
        &partition.to_string(),
        "--start-batch",
        &start_batch.to_string(),
        "--batches",
        &batches.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

pub fn spawn_writer(args: &[String]) -> ChildGuard {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ChildGuard::spawn(&refs)
}

/// Same formulas as `src/debug.rs`.
pub fn batch_key(batch: u64, i: u32) -> Vec<u8> {
    format!("w{batch:010}-{i:04}").into_bytes()
}
pub fn batch_value(batch: u64, i: u32, len: usize) -> Vec<u8> {
    let mut v = format!("b{batch}-{i}-").into_bytes();
    v.resize(len.max(v.len()), b'a' + (batch % 26) as u8);
    v
}

/// Recover a partition in this process (a fresh key takes it over) and
/// return which batches it holds, checking each is complete and exact.
pub fn recovered_batches(volume: &Path, key: u64, partition: u32, batch_ops: u32, value_bytes: usize) -> Vec<u64> {
    use sharedisk_storage::{Partition, ProcessIdentity, Volume};
    use std::collections::BTreeMap;
    let vol = std::sync::Arc::new(Volume::open(volume).expect("open volume"));
    let reg = vol.register(key, ProcessIdentity::current()).expect("register");
    let part = Partition::claim(vol.clone(), reg, partition).expect("claim");
    let mut per_batch: BTreeMap<u64, u32> = BTreeMap::new();
    for k in part.keys() {
        let s = std::str::from_utf8(k).unwrap();
        let batch: u64 = s[1..11].parse().unwrap();
        let i: u32 = s[12..].parse().unwrap();
        assert_eq!(part.get(k, 0).unwrap().value, batch_value(batch, i, value_bytes), "value of {s} is not what was written");
        *per_batch.entry(batch).or_default() += 1;
    }
    for (b, n) in &per_batch {
        assert_eq!(*n, batch_ops, "batch {b} is torn: {n} of {batch_ops} records recovered");
    }
    drop(part);
    vol.unregister(reg).expect("unregister");
    per_batch.into_keys().collect()
}

/// The geometry of a volume, derived the way the storage crate derives it
/// from what `volume inspect --json` reports (and cross-checked with it).
pub fn geometry(volume: &Path) -> sharedisk_storage::layout::Geometry {
    let o = assert_success(&run(&["volume", "inspect", volume.to_str().unwrap(), "--json"]));
    let j: serde_json::Value = serde_json::from_str(&o).unwrap();
    let g = sharedisk_storage::layout::Geometry::compute(
        j["volume_bytes"].as_u64().unwrap(),
        j["partitions"].as_u64().unwrap() as u32,
        j["registrant_slots"].as_u64().unwrap() as u32,
        j["segment_bytes"].as_u64().unwrap() as u32,
    )
    .unwrap();
    assert_eq!(u64::from(g.segments_per_partition), j["segments_per_partition"].as_u64().unwrap());
    g
}

/// XOR one byte of a file.
pub fn flip(path: &Path, offset: u64, mask: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, offset).unwrap();
}
