//! `sharedisk bench locks`: the named-lease workload of `bench lockmgr`
//! (acquire + release of random names out of 1024, from 1 and from 64
//! clients) against a running sharedisk lock manager and, side by side, its
//! peers: etcd's lock API (v3 JSON gateway: lease grant once per client,
//! then lock/unlock) and Redis `SET name token NX PX 10000` + `DEL name`.
//! Each client runs on its own thread with its own connection; a pair
//! counts when the acquire succeeded; latency is the acquire's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct LocksArgs {
    /// A running sharedisk lock manager, used only by this benchmark (its
    /// sessions register as servers named bench-N).
    #[arg(long)]
    lockmgr: Option<String>,
    /// etcd's client address (its JSON gateway), e.g. 127.0.0.1:2379.
    #[arg(long)]
    etcd: Option<String>,
    /// A Redis server, e.g. 127.0.0.1:6379.
    #[arg(long)]
    redis: Option<String>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    #[arg(long)]
    json: bool,
}

const NAMES: u64 = 1024;

#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Figures {
    per_s: f64,
    p50_us: u64,
    p99_us: u64,
}

fn figures(mut lat: Vec<u64>, secs: f64) -> Figures {
    lat.sort_unstable();
    let at = |p: f64| if lat.is_empty() { 0 } else { lat[((lat.len() - 1) as f64 * p).round() as usize] };
    Figures { per_s: lat.len() as f64 / secs, p50_us: at(0.5), p99_us: at(0.99) }
}

/// One client's loop: `pair(name)` acquires (returning whether it got it and
/// the acquire latency) and releases.
trait Locker: Send {
    fn pair(&mut self, name: &str) -> Result<Option<Duration>>;
}

fn drive<L: Locker + 'static>(clients: Vec<L>, budget: Duration) -> Result<Figures> {
    let deadline = Instant::now() + budget;
    let start = Instant::now();
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut l)| {
            std::thread::spawn(move || -> Result<Vec<u64>> {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if let Some(d) = l.pair(&format!("lease-{:04}", x % NAMES))? {
                        lat.push(d.as_micros() as u64);
                    }
                }
                Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().map_err(|_| anyhow::anyhow!("client thread panicked"))??);
    }
    Ok(figures(all, start.elapsed().as_secs_f64()))
}

struct RedisLocker {
    conn: redis::Connection,
    token: String,
}

impl Locker for RedisLocker {
    fn pair(&mut self, name: &str) -> Result<Option<Duration>> {
        let t = Instant::now();
        let got: redis::Value = redis::cmd("SET").arg(name).arg(&self.token).arg("NX").arg("PX").arg(10_000).query(&mut self.conn)?;
        let d = t.elapsed();
        match got {
            redis::Value::Okay => {
                redis::cmd("DEL").arg(name).query::<redis::Value>(&mut self.conn)?;
                Ok(Some(d))
            }
            redis::Value::Nil => Ok(None),
            other => bail!("redis answered {other:?}"),
        }
    }
}

/// A blocking connection to a Redis at `addr`, with a 10 s reply timeout.
fn redis_connection(addr: &str) -> Result<redis::Connection> {
    let c = redis::Client::open(format!("redis://{addr}/"))?
        .get_connection_with_timeout(Duration::from_secs(10))
        .with_context(|| format!("cannot connect to redis at {addr}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(c)
}

/// A minimal HTTP/1.1 keep-alive JSON client for etcd's gateway.
struct Http {
    r: BufReader<TcpStream>,
    w: TcpStream,
    host: String,
}

impl Http {
    fn connect(addr: &str) -> Result<Http> {
        let s = TcpStream::connect(addr).with_context(|| format!("cannot connect to etcd at {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Http { r: BufReader::new(s.try_clone()?), w: s, host: addr.to_owned() })
    }

    fn post(&mut self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        let body = body.to_string();
        write!(
            self.w,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        )?;
        let mut status = String::new();
        self.r.read_line(&mut status)?;
        let (mut len, mut chunked) = (None, false);
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = Some(v.trim().parse::<usize>()?);
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut data = Vec::new();
        if chunked {
            loop {
                let mut l = String::new();
                self.r.read_line(&mut l)?;
                let n = usize::from_str_radix(l.trim(), 16)?;
                let mut c = vec![0; n + 2];
                self.r.read_exact(&mut c)?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&c[..n]);
            }
        } else {
            let n = len.context("etcd reply without a length")?;
            data.resize(n, 0);
            self.r.read_exact(&mut data)?;
        }
        if !status.contains(" 200 ") {
            bail!("etcd {path}: {} {}", status.trim(), String::from_utf8_lossy(&data));
        }
        Ok(serde_json::from_slice(&data)?)
    }
}

fn b64(s: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].iter().enumerate() {
            out.push(if i <= c.len() { char::from(T[((n >> shift) & 63) as usize]) } else { '=' });
        }
    }
    out
}

struct EtcdLocker {
    http: Http,
    lease: String,
}

impl EtcdLocker {
    fn new(addr: &str) -> Result<EtcdLocker> {
        let mut http = Http::connect(addr)?;
        let g = http.post("/v3/lease/grant", &json!({"TTL": 60}))?;
        let lease = g["ID"].as_str().map(str::to_owned).or_else(|| g["ID"].as_i64().map(|i| i.to_string())).context("etcd lease id")?;
        Ok(EtcdLocker { http, lease })
    }
}

impl Locker for EtcdLocker {
    fn pair(&mut self, name: &str) -> Result<Option<Duration>> {
        let t = Instant::now();
        let r = self.http.post("/v3/lock/lock", &json!({"name": b64(name.as_bytes()), "lease": self.lease}))?;
        let d = t.elapsed();
        let key = r["key"].as_str().context("etcd lock reply without a key")?.to_owned();
        self.http.post("/v3/lock/unlock", &json!({"key": key}))?;
        Ok(Some(d))
    }
}

struct SharediskLocker {
    rt: tokio::runtime::Handle,
    session: sharedisk_lockmgr::client::Session,
}

impl Locker for SharediskLocker {
    fn pair(&mut self, name: &str) -> Result<Option<Duration>> {
        use sharedisk_lockmgr::core::Response;
        let t = Instant::now();
        let got = self.rt.block_on(self.session.acquire_named(name))?;
        let d = t.elapsed();
        match got {
            Response::NamedGranted { .. } => {
                self.rt.block_on(self.session.release_named(name))?;
                Ok(Some(d))
            }
            Response::NamedHeld { .. } => Ok(None),
            other => bail!("lock manager answered {other:?}"),
        }
    }
}

/// Sessions on a shared runtime, whose workers keep their heartbeats going.
fn sharedisk_lockers(rt: &tokio::runtime::Runtime, addr: &str, n: usize, base: usize) -> Result<Vec<SharediskLocker>> {
    use sharedisk_lockmgr::client::{Client, Session};
    use sharedisk_lockmgr::core::ServerInfo;
    (0..n)
        .map(|i| {
            let session = rt.block_on(async {
                let (client, _events) = Client::connect_any(&[addr.to_owned()], None).await?;
                // Keys are per incarnation: a second run against the same
                // lock manager must not present the first run's (fenced) keys.
                let key = u64::from(std::process::id()) << 32 | (base + i) as u64;
                Session::register(
                    client,
                    ServerInfo {
                        server: format!("bench-{}", base + i),
                        key,
                        addr: String::new(),
                        pid: std::process::id(),
                        standby: false,
                        reports_standbys: false,
                        keeps: Vec::new(),
                    },
                )
                .await
                .map_err(anyhow::Error::from)
            })?;
            Ok(SharediskLocker { rt: rt.handle().clone(), session })
        })
        .collect()
}

pub fn run(args: LocksArgs) -> Result<ExitCode> {
    if args.lockmgr.is_none() && args.etcd.is_none() && args.redis.is_none() {
        bail!("name at least one of --lockmgr, --etcd, --redis");
    }
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        bail!("--seconds must be in (0, 600]");
    }
    let budget = Duration::from_secs_f64(args.seconds);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut rows: Vec<(&str, usize, Figures)> = Vec::new();
    for clients in [1usize, 64] {
        if let Some(a) = &args.lockmgr {
            let lockers = sharedisk_lockers(&rt, a, clients, clients * 100)?;
            rows.push(("sharedisk lock manager", clients, drive(lockers, budget)?));
        }
        if let Some(a) = &args.etcd {
            let lockers = (0..clients).map(|_| EtcdLocker::new(a)).collect::<Result<Vec<_>>>()?;
            rows.push(("etcd lock API", clients, drive(lockers, budget)?));
        }
        if let Some(a) = &args.redis {
            let lockers =
                (0..clients).map(|i| Ok(RedisLocker { conn: redis_connection(a)?, token: format!("t{i}") })).collect::<Result<Vec<_>>>()?;
            rows.push(("Redis SET NX PX", clients, drive(lockers, budget)?));
        }
    }
    if args.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, c, f)| json!({"system": n, "clients": c, "per_s": f.per_s, "p50_us": f.p50_us, "p99_us": f.p99_us}))
            .collect();
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("| system | clients | acquire+release pairs/s | acquire p50 | acquire p99 |");
        println!("|---|---:|---:|---:|---:|");
        for (n, c, f) in &rows {
            println!("| {n} | {c} | {:.0} | {} us | {} us |", f.per_s, f.p50_us, f.p99_us);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("lease-0001", "bGVhc2UtMDAwMQ==")] {
            assert_eq!(super::b64(i.as_bytes()), o);
        }
    }
}
