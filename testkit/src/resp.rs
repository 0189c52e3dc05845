//! A small blocking Redis Cluster client for the benchmarks: one request at a
//! time, RESP2 replies parsed with limits, routing by `CLUSTER SLOTS`,
//! `-MOVED` followed. (The tests use the `redis` crate; the binary does not
//! depend on it.)

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

const BULK_BYTES_MAX: usize = 512 << 20;
const ARRAY_LEN_MAX: usize = 1 << 20;
const DEPTH_MAX: usize = 8;

fn bad(m: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.into())
}

pub fn read_value(r: &mut impl BufRead, depth: usize) -> io::Result<Value> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err(bad("reply line not terminated by CRLF"));
    }
    let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let int = || body.parse::<i64>().map_err(|_| bad(format!("bad integer {body:?}")));
    match line[0] {
        b'+' => Ok(Value::Simple(body)),
        b'-' => Ok(Value::Error(body)),
        b':' => Ok(Value::Int(int()?)),
        b'$' => {
            let n = int()?;
            if n < 0 {
                return Ok(Value::Bulk(None));
            }
            let n = usize::try_from(n).map_err(|_| bad("bulk length"))?;
            if n > BULK_BYTES_MAX {
                return Err(bad("bulk too long"));
            }
            let mut b = vec![0; n + 2];
            r.read_exact(&mut b)?;
            if &b[n..] != b"\r\n" {
                return Err(bad("bulk not terminated by CRLF"));
            }
            b.truncate(n);
            Ok(Value::Bulk(Some(b)))
        }
        b'*' => {
            let n = int()?;
            if n < 0 {
                return Ok(Value::Array(None));
            }
            let n = usize::try_from(n).map_err(|_| bad("array length"))?;
            if n > ARRAY_LEN_MAX || depth >= DEPTH_MAX {
                return Err(bad("array too long or too deep"));
            }
            (0..n).map(|_| read_value(r, depth + 1)).collect::<io::Result<Vec<_>>>().map(|v| Value::Array(Some(v)))
        }
        other => Err(bad(format!("unexpected reply type {:?}", char::from(other)))),
    }
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    pub fn connect(addr: &str, timeout: Duration) -> io::Result<Conn> {
        let sock = addr.parse().map_err(|_| bad(format!("bad address {addr}")))?;
        let s = TcpStream::connect_timeout(&sock, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Conn { r: BufReader::new(s.try_clone()?), w: s })
    }

    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<Value> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&req)?;
        read_value(&mut self.r, 0)
    }
}

/// What one routed call met on its way.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trip {
    /// Error replies other than MOVED (CLUSTERDOWN, …) before success.
    pub errors: u32,
    /// Connection failures (refused, reset, timed out) before success.
    pub io_errors: u32,
}

/// Routes by slot; retries until `give_up` passes.
#[derive(Debug)]
pub struct Router {
    pub known: Vec<String>,
    slots: Vec<Option<String>>,
    conns: HashMap<String, Conn>,
    pub timeout: Duration,
}

impl Router {
    pub fn new(known: Vec<String>, timeout: Duration) -> Router {
        Router { known, slots: vec![None; 16384], conns: HashMap::new(), timeout }
    }

    fn conn(&mut self, addr: &str) -> io::Result<&mut Conn> {
        if !self.conns.contains_key(addr) {
            let c = Conn::connect(addr, self.timeout)?;
            self.conns.insert(addr.to_owned(), c);
        }
        Ok(self.conns.get_mut(addr).expect("just inserted"))
    }

    /// Reload the slot map from the first server that answers.
    pub fn refresh(&mut self) -> bool {
        for addr in self.known.clone() {
            let reply = self.conn(&addr).and_then(|c| c.call(&[b"CLUSTER", b"SLOTS"]));
            let Ok(Value::Array(Some(ranges))) = reply else {
                self.conns.remove(&addr);
                continue;
            };
            for r in ranges {
                let Value::Array(Some(r)) = r else { continue };
                let (Some(Value::Int(a)), Some(Value::Int(b)), Some(Value::Array(Some(node)))) = (r.first(), r.get(1), r.get(2)) else {
                    continue;
                };
                let (Some(Value::Bulk(Some(host))), Some(Value::Int(port))) = (node.first(), node.get(1)) else { continue };
                let owner = format!("{}:{port}", String::from_utf8_lossy(host));
                for s in (*a).max(0)..=(*b).min(16383) {
                    self.slots[s as usize] = Some(owner.clone());
                }
            }
            return true;
        }
        false
    }

    /// Run a command on the owner of `slot`, following redirects and
    /// retrying errors until `give_up`; the reply and what it took.
    pub fn call(&mut self, slot: u16, args: &[&[u8]], give_up: std::time::Instant) -> (io::Result<Value>, Trip) {
        let mut trip = Trip::default();
        loop {
            if std::time::Instant::now() >= give_up {
                return (Err(io::Error::new(io::ErrorKind::TimedOut, "gave up")), trip);
            }
            let Some(addr) = self.slots[usize::from(slot)].clone() else {
                if !self.refresh() {
                    std::thread::sleep(Duration::from_millis(2));
                }
                if self.slots[usize::from(slot)].is_none() {
                    std::thread::sleep(Duration::from_millis(2));
                }
                continue;
            };
            match self.conn(&addr).and_then(|c| c.call(args)) {
                Ok(Value::Error(e)) if e.starts_with("MOVED ") => {
                    self.slots[usize::from(slot)] = e.rsplit(' ').next().map(str::to_owned);
                }
                Ok(Value::Error(e)) if e.starts_with("CLUSTERDOWN") || e.starts_with("TRYAGAIN") => {
                    trip.errors += 1;
                    std::thread::sleep(Duration::from_millis(2));
                    self.refresh();
                }
                Ok(v) => return (Ok(v), trip),
                Err(_) => {
                    trip.io_errors += 1;
                    self.conns.remove(&addr);
                    self.slots[usize::from(slot)] = None;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies_and_refuses_garbage() {
        let parse = |b: &[u8]| read_value(&mut &b[..], 0);
        assert_eq!(parse(b"+OK\r\n").unwrap(), Value::Simple("OK".into()));
        assert_eq!(parse(b"-MOVED 1 a:1\r\n").unwrap(), Value::Error("MOVED 1 a:1".into()));
        assert_eq!(parse(b":-5\r\n").unwrap(), Value::Int(-5));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Value::Bulk(None));
        assert_eq!(parse(b"$2\r\nhi\r\n").unwrap(), Value::Bulk(Some(b"hi".to_vec())));
        assert_eq!(parse(b"*2\r\n:1\r\n*0\r\n").unwrap(), Value::Array(Some(vec![Value::Int(1), Value::Array(Some(vec![]))])));
        for bad in [&b""[..], b"+OK", b"$5\r\nhi\r\n", b"$2\r\nhixx", b"?\r\n", b":x\r\n", b"$9999999999999\r\n", b"*99999999999\r\n"] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "*1\r\n".repeat(20) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
    }
}
