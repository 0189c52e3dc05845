//! Who a registrant is, as a process on a machine, so that a fenced
//! incarnation can later be proven dead and its leaked space reclaimed.

/// The identity of a process: pid, its start time (which defeats pid reuse),
/// and hashes of the machine id and boot id (which say whether a liveness
/// check from here means anything).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub start_ticks: u64,
    pub machine: u32,
    pub boot: u32,
}

/// Whether an incarnation can still execute stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Dead,
    /// Another machine, or no identity recorded: only an offline check can tell.
    Unknown,
}

/// A random non-zero 64-bit number (not cryptographic: it tells incarnations
/// apart, as reservation keys and lock-manager seat ids).
pub fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        let id = h.finish();
        if id != 0 {
            return id;
        }
    }
}

fn hash32(s: &str) -> u32 {
    crc32c::crc32c(s.trim().as_bytes()) | 1
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// Field 22 (starttime) and field 3 (state) of /proc/PID/stat.
fn stat_of(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; it ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

impl ProcessIdentity {
    /// The calling process (read once: a process's identity does not change;
    /// standby lock managers judge liveness every poll).
    pub fn current() -> ProcessIdentity {
        static HERE: std::sync::OnceLock<ProcessIdentity> = std::sync::OnceLock::new();
        *HERE.get_or_init(|| {
            let pid = std::process::id();
            ProcessIdentity {
                pid,
                start_ticks: stat_of(pid).map_or(0, |s| s.1),
                machine: read_trim("/etc/machine-id").map_or(0, |s| hash32(&s)),
                boot: read_trim("/proc/sys/kernel/random/boot_id").map_or(0, |s| hash32(&s)),
            }
        })
    }

    /// Whether this incarnation may still run, as seen from this process.
    pub fn liveness(&self) -> Liveness {
        let here = ProcessIdentity::current();
        if self.pid == 0 || self.machine == 0 || self.boot == 0 || self.machine != here.machine {
            return Liveness::Unknown;
        }
        if self.boot != here.boot {
            return Liveness::Dead; // same machine, rebooted since
        }
        match stat_of(self.pid) {
            None => Liveness::Dead,
            Some((_, start)) if start != self.start_ticks => Liveness::Dead, // pid reused
            Some(('Z' | 'X', _)) => Liveness::Dead,                          // exited, not yet reaped
            Some(_) => Liveness::Alive,                                      // running, sleeping or stopped
        }
    }
}
