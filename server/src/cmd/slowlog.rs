//! `SLOWLOG GET|LEN|RESET|HELP` and `LATENCY` (the latency monitor is off,
//! as Redis's is by default, and says so).
//!
//! A command is logged when the time from its arrival to its reply is at
//! least `slowlog-log-slower-than` microseconds (default 10,000; 0 logs
//! every command, a negative value none). That time includes waiting for
//! the group commit's barrier: it is what the client waited, not CPU time.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;

use super::lower;
use crate::ServerState;
use crate::resp::Reply;

/// Arguments, and bytes of each, an entry keeps (Redis's limits).
const ARGS_MAX: usize = 32;
const ARG_BYTES_MAX: usize = 128;

#[derive(Debug)]
struct Entry {
    id: u64,
    unix_secs: u64,
    usec: u64,
    args: Vec<Bytes>,
    addr: String,
    name: String,
}

#[derive(Debug)]
pub struct SlowLog {
    /// `slowlog-log-slower-than` (µs; negative: off).
    pub slower_than: AtomicI64,
    log: Mutex<(u64, VecDeque<Entry>, usize)>,
}

impl Default for SlowLog {
    fn default() -> Self {
        SlowLog { slower_than: AtomicI64::new(10_000), log: Mutex::new((0, VecDeque::new(), 128)) }
    }
}

impl SlowLog {
    /// Whether a command that took `usec` from arrival to reply is logged.
    pub fn is_slow(&self, usec: u64) -> bool {
        let threshold = self.slower_than.load(Ordering::Relaxed);
        threshold >= 0 && usec >= threshold as u64
    }

    pub fn max_len(&self) -> usize {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).2
    }

    pub fn set_max_len(&self, n: usize) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.2 = n;
        log.1.truncate(n);
    }

    /// What an entry keeps of a command's arguments (Redis's cut: at most
    /// 32, the last saying how many more; each at most 128 bytes, saying
    /// how many more).
    pub fn argv(args: &[Bytes]) -> Vec<Bytes> {
        let mut kept: Vec<Bytes> = args
            .iter()
            .take(if args.len() > ARGS_MAX { ARGS_MAX - 1 } else { ARGS_MAX })
            .map(|a| {
                if a.len() > ARG_BYTES_MAX {
                    let mut t = a[..ARG_BYTES_MAX].to_vec();
                    t.extend_from_slice(format!("... ({} more bytes)", a.len() - ARG_BYTES_MAX).as_bytes());
                    Bytes::from(t)
                } else {
                    a.clone()
                }
            })
            .collect();
        if args.len() > ARGS_MAX {
            kept.push(Bytes::from(format!("... ({} more arguments)", args.len() - ARGS_MAX + 1)));
        }
        kept
    }

    /// A command (its [`Self::argv`]) took `usec` from arrival to reply.
    pub fn record(&self, kept: &[Bytes], usec: u64, addr: &str, name: Option<&Bytes>) {
        if !self.is_slow(usec) {
            return;
        }
        // Commands that carry secrets are not logged.
        if kept.first().is_some_and(|c| c.eq_ignore_ascii_case(b"auth") || c.eq_ignore_ascii_case(b"hello")) {
            return;
        }
        let kept = kept.to_vec();
        let unix_secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let name = name.map_or(String::new(), |n| String::from_utf8_lossy(n).into_owned());
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let (next, entries, max) = &mut *log;
        entries.push_front(Entry { id: *next, unix_secs, usec, args: kept, addr: addr.to_owned(), name });
        *next += 1;
        entries.truncate(*max);
    }
}

pub fn slowlog(shared: &ServerState, args: &[Bytes]) -> Reply {
    let log = &shared.controls.slowlog;
    match (lower(&args[1]).as_str(), args.len()) {
        ("get", 2 | 3) => {
            let count = match args.get(2).map(|c| crate::commands::parse_i64(c)) {
                None => 10,
                Some(Some(-1)) => usize::MAX,
                Some(Some(n)) if n >= 0 => n as usize,
                Some(_) => return Reply::error("ERR count should be greater than or equal to -1"),
            };
            let entries = log.log.lock().unwrap_or_else(|e| e.into_inner());
            Reply::Array(
                entries
                    .1
                    .iter()
                    .take(count)
                    .map(|e| {
                        Reply::Array(vec![
                            Reply::Int(e.id as i64),
                            Reply::Int(e.unix_secs as i64),
                            Reply::Int(e.usec as i64),
                            Reply::Array(e.args.iter().cloned().map(Reply::Bulk).collect()),
                            Reply::bulk(e.addr.clone()),
                            Reply::bulk(e.name.clone()),
                        ])
                    })
                    .collect(),
            )
        }
        ("len", 2) => Reply::Int(log.log.lock().unwrap_or_else(|e| e.into_inner()).1.len() as i64),
        ("reset", 2) => {
            log.log.lock().unwrap_or_else(|e| e.into_inner()).1.clear();
            Reply::ok()
        }
        ("help", 2) => Reply::Array(
            [
                "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GET [<count>]",
                "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
                "LEN",
                "    Return the length of the slowlog.",
                "RESET",
                "    Reset the slowlog.",
                "HELP",
                "    Print this help.",
            ]
            .into_iter()
            .map(|l| Reply::Simple(l.to_owned()))
            .collect(),
        ),
        ("get" | "len" | "reset" | "help", _) => crate::commands::wrong_args(&format!("slowlog|{}", lower(&args[1]))),
        _ => Reply::error(format!("ERR unknown subcommand '{}'. Try SLOWLOG HELP.", String::from_utf8_lossy(&args[1]))),
    }
}

/// `LATENCY LATEST|HISTORY|RESET|DOCTOR|HELP`: the latency monitor is off
/// (`latency-monitor-threshold 0`, Redis's default): nothing is sampled.
pub fn latency(args: &[Bytes]) -> Reply {
    match lower(&args[1]).as_str() {
        "latest" => Reply::Array(vec![]),
        "history" if args.len() == 3 => Reply::Array(vec![]),
        "reset" => Reply::Int(0),
        "doctor" => Reply::Verbatim(
            "I'm sorry, Dave, I can't do that. Latency monitoring is disabled in this sharedisk instance: SLOWLOG and INFO \
             commandstats time every command.\n"
                .to_owned(),
        ),
        "histogram" => Reply::Map(vec![]),
        "help" => Reply::Array(
            [
                "LATENCY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "DOCTOR",
                "LATEST",
                "HISTORY <event>",
                "RESET [<event> ...]",
                "HELP",
            ]
            .into_iter()
            .map(|l| Reply::Simple(l.to_owned()))
            .collect(),
        ),
        "history" => crate::commands::wrong_args("latency|history"),
        _ => Reply::error(format!("ERR unknown subcommand '{}'. Try LATENCY HELP.", String::from_utf8_lossy(&args[1]))),
    }
}
