//! A Redis Cluster router on the `redis` crate's blocking connections: the
//! one client of the fault harness and of the failover benchmark.
//!
//! It keeps the slot map (from `CLUSTER SLOTS`), follows `-MOVED`, and says
//! what an attempt means for the history: a `-MOVED`, `-CLUSTERDOWN` or a
//! connection that could not be opened promise that nothing was applied, so
//! [`Router::run`] tries again; an error after the command was sent (a reset,
//! a timeout) leaves its outcome unknown, so `run` stops there and says so.
//! Benchmarks that write distinct keys may retry unknowns too
//! ([`Router::call`]), counting what the client saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How one command ended.
#[derive(Debug)]
pub enum Outcome {
    /// The server answered (an error reply other than a redirect included).
    Reply(redis::RedisResult<redis::Value>),
    /// Sent, but no answer came (a reset, a timeout): it may or may not apply.
    Unknown,
    /// Never applied anywhere before the deadline.
    GaveUp,
}

/// What one [`Router::call`] met on its way.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trip {
    /// Error replies other than MOVED (CLUSTERDOWN, …) before success.
    pub errors: u32,
    /// Connection failures (refused, reset, timed out) before success.
    pub io_errors: u32,
}

/// Routes commands by slot over one connection per server.
pub struct Router {
    /// Where to look for the slot map (shared: a harness updates it as servers restart).
    pub known: Arc<Mutex<Vec<String>>>,
    slots: Vec<Option<String>>,
    conns: HashMap<String, redis::Connection>,
    /// How long a server may take to answer before the outcome is unknown.
    pub reply_timeout: Duration,
    /// The server that last failed to answer: asked for the slot map last
    /// (a real cluster client refreshes from another node than the one that
    /// just timed out).
    suspect: Option<String>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("known", &self.known).field("reply_timeout", &self.reply_timeout).finish_non_exhaustive()
    }
}

/// The slot of a key, with hash tags (CRC16/XMODEM, as Redis Cluster).
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|c| *c == b'{') {
        Some(o) => match key[o + 1..].iter().position(|c| *c == b'}') {
            Some(l) if l > 0 => &key[o + 1..o + 1 + l],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for b in hashed {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc & 0x3fff
}

impl Router {
    pub fn new(known: Arc<Mutex<Vec<String>>>, reply_timeout: Duration) -> Router {
        Router { known, slots: vec![None; 16384], conns: HashMap::new(), reply_timeout, suspect: None }
    }

    fn conn(&mut self, addr: &str) -> Option<&mut redis::Connection> {
        if !self.conns.contains_key(addr) {
            let client = redis::Client::open(format!("redis://{addr}/")).ok()?;
            // A hung server (SIGSTOP) accepts the TCP connection and never
            // answers the `redis` crate's handshake, which waits up to about
            // twice the timeout given here: while the slot map still names
            // that server, every attempt costs this, so keep it to about one
            // reply timeout in all.
            let c = client.get_connection_with_timeout(self.reply_timeout / 2).ok()?;
            c.set_read_timeout(Some(self.reply_timeout)).ok()?;
            c.set_write_timeout(Some(self.reply_timeout)).ok()?;
            self.conns.insert(addr.to_owned(), c);
        }
        self.conns.get_mut(addr)
    }

    /// Reload the slot map from the first known server that answers.
    pub fn refresh(&mut self) -> bool {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(s) = &self.suspect {
            known.sort_by_key(|a| a == s);
        }
        for addr in known {
            let Some(c) = self.conn(&addr) else { continue };
            let Ok(redis::Value::Array(ranges)) = redis::cmd("CLUSTER").arg("SLOTS").query::<redis::Value>(c) else {
                self.conns.remove(&addr);
                self.suspect = Some(addr);
                continue;
            };
            for r in ranges {
                let redis::Value::Array(r) = r else { continue };
                let (Some(redis::Value::Int(a)), Some(redis::Value::Int(b)), Some(redis::Value::Array(node))) =
                    (r.first(), r.get(1), r.get(2))
                else {
                    continue;
                };
                let (Some(redis::Value::BulkString(host)), Some(redis::Value::Int(port))) = (node.first(), node.get(1)) else { continue };
                let owner = format!("{}:{port}", String::from_utf8_lossy(host));
                for s in (*a).max(0)..=(*b).min(16383) {
                    self.slots[s as usize] = Some(owner.clone());
                }
            }
            return true;
        }
        false
    }

    /// Run `cmd` on the owner of `slot`, retrying only what was certainly not
    /// applied (redirects, CLUSTERDOWN, connections that could not open).
    pub fn run(&mut self, slot: u16, cmd: &redis::Cmd, give_up: Instant) -> Outcome {
        self.run_counting(slot, cmd, give_up, &mut Trip::default())
    }

    fn run_counting(&mut self, slot: u16, cmd: &redis::Cmd, give_up: Instant, trip: &mut Trip) -> Outcome {
        let s = usize::from(slot);
        while Instant::now() < give_up {
            let Some(addr) = self.slots[s].clone() else {
                if !self.refresh() || self.slots[s].is_none() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                continue;
            };
            let Some(c) = self.conn(&addr) else {
                // Nothing sent: safe to look elsewhere.
                trip.io_errors += 1;
                self.slots[s] = None;
                self.suspect = Some(addr);
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            match cmd.query::<redis::Value>(c) {
                Err(e) if e.code() == Some("MOVED") => {
                    self.slots[s] = e.redirect_node().map(|(a, port)| {
                        // A redirect names host:port; keep our own spelling of it.
                        if a.contains(':') { a.to_owned() } else { format!("{a}:{port}") }
                    });
                }
                Err(e) if e.code() == Some("CLUSTERDOWN") || e.code() == Some("TRYAGAIN") => {
                    trip.errors += 1;
                    std::thread::sleep(Duration::from_millis(20));
                    self.refresh();
                }
                Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                    trip.io_errors += 1;
                    self.conns.remove(&addr);
                    self.slots[s] = None;
                    self.suspect = Some(addr);
                    return Outcome::Unknown;
                }
                other => return Outcome::Reply(other),
            }
        }
        Outcome::GaveUp
    }

    /// Run `cmd` until a reply or `give_up`, retrying unknown outcomes too
    /// (for benchmarks whose writes are distinct keys); the reply and what
    /// the client met on the way.
    pub fn call(&mut self, slot: u16, cmd: &redis::Cmd, give_up: Instant) -> (Option<redis::RedisResult<redis::Value>>, Trip) {
        let mut trip = Trip::default();
        loop {
            match self.run_counting(slot, cmd, give_up, &mut trip) {
                Outcome::Reply(r) => return (Some(r), trip),
                Outcome::Unknown => std::thread::sleep(Duration::from_millis(1)),
                Outcome::GaveUp => return (None, trip),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis_cluster_with_hash_tags() {
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"{}x"), key_slot(b"{}x"));
        assert_ne!(key_slot(b"{}x"), key_slot(b"x"));
    }
}
