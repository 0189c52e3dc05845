//! Run `sharedisk`, guard its children, wait on conditions with deadlines.
//!
//! Every child is a [`ChildGuard`]: SIGCONTed and SIGKILLed when dropped, so
//! a failed test never leaves a stopped or running process behind. The
//! program is the `sharedisk` binary of the same build: `SHAREDISK_BIN` if
//! set, the running executable if it is `sharedisk`, else `sharedisk` beside
//! the running executable (`sharedisk-bench`) or beside the test
//! executable's `deps/` folder (what Cargo builds for integration tests).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `sharedisk` binary to run.
pub fn program() -> PathBuf {
    if let Some(p) = std::env::var_os("SHAREDISK_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the running executable");
    if exe.file_stem().is_some_and(|n| n == "sharedisk") {
        return exe;
    }
    let dir = exe.parent().expect("an executable has a folder");
    let dir = if dir.ends_with("deps") { dir.parent().expect("deps has a parent") } else { dir };
    let p = dir.join("sharedisk");
    assert!(p.exists(), "{} is not built: build the workspace first (cargo build --workspace), or set SHAREDISK_BIN", p.display());
    p
}

/// How long any one-shot `sharedisk` command may take.
pub const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// Run `sharedisk ARGS…` to completion. A command still running at
/// [`RUN_DEADLINE`] (say, a server that should have refused to start) is
/// killed and the test fails, instead of hanging the suite.
pub fn run(args: &[&str]) -> Output {
    run_program(&program(), args)
}

/// Run `program ARGS…` to completion, with the same deadline as [`run`].
pub fn run_program(program: &std::path::Path, args: &[&str]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
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
#[derive(Debug)]
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch::new()
    }
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::tempdir().expect("tempdir") }
    }
    /// A scratch directory inside `parent`.
    pub fn new_in(parent: &std::path::Path) -> std::io::Result<Scratch> {
        Ok(Scratch { dir: tempfile::tempdir_in(parent)? })
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
#[derive(Debug)]
pub struct ChildGuard {
    pub child: Child,
    lines: Option<std::sync::mpsc::Receiver<String>>,
}

impl ChildGuard {
    pub fn spawn(args: &[&str]) -> ChildGuard {
        let mut child =
            Command::new(program()).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn sharedisk");
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

    /// Wait for exit, at most `timeout` (panics past it).
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
pub fn wait_until(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    wait_until_every(timeout, Duration::from_millis(2), what, cond)
}

/// [`wait_until`], polling every `every` (a poll that runs a process or
/// asks a browser must not crowd a loaded machine).
pub fn wait_until_every(timeout: Duration, every: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(every);
    }
}

impl ChildGuard {
    /// Wait for the lock manager's readiness line; its address.
    pub fn wait_lockmgr_ready(&mut self, timeout: Duration) -> String {
        let line = self.wait_line(timeout, |l| crate::readiness::lockmgr_addr(l).is_some());
        crate::readiness::lockmgr_addr(&line).expect("checked")
    }

    /// Wait for a lock manager's standing-by line (every one prints it,
    /// active or not); its address.
    pub fn wait_lockmgr_standing_by(&mut self, timeout: Duration) -> String {
        let line = self.wait_line(timeout, |l| crate::readiness::lockmgr_standby_addr(l).is_some());
        crate::readiness::lockmgr_standby_addr(&line).expect("checked")
    }

    /// Wait for a server's readiness line; its RESP address.
    pub fn wait_server_ready(&mut self, timeout: Duration) -> String {
        let line = self.wait_line(timeout, |l| crate::readiness::server_addr(l).is_some());
        crate::readiness::server_addr(&line).expect("checked")
    }
}
