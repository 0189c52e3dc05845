//! The integration tests' own helpers; the process harness itself is
//! `sharedisk_testkit::process`.

#![allow(dead_code)]

use std::path::Path;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sharedisk")
}

#[allow(unused_imports)] // util is shared by two test binaries
pub use sharedisk_testkit::batch::{batch_key, batch_value};
pub use sharedisk_testkit::process::*;

/// Run `program` with `args`, `stdin` written to it, to its end; `needs`
/// says what to install when it is missing.
pub fn run_with_input(program: &str, args: &[&str], stdin: &str, needs: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} is needed by this test ({needs}): {e}"));
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
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
        assert_eq!(part.value(k, 0).unwrap(), batch_value(batch, i, value_bytes), "value of {s} is not what was written");
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

/// One HTTP GET on 127.0.0.1: the status line and the body.
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    http_get_with(addr, path, "")
}

/// `http_get` with extra header lines.
pub fn http_get_with(addr: &str, path: &str, headers: &str) -> (String, String) {
    let (head, body) = http_exchange(addr, path, headers);
    (head.lines().next().unwrap_or("").to_owned(), body)
}

/// One HTTP/1.1 GET with `headers` (whole lines): the whole head and the
/// body (its Content-Length, or up to the end of the connection).
pub fn http_exchange(addr: &str, path: &str, headers: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
            });
            if length.is_none_or(|n| got.len() >= end + 4 + n) {
                let n = length.unwrap_or(usize::MAX);
                let mut body = got[end + 4..].to_vec();
                if length.is_none() {
                    let _ = s.read_to_end(&mut body);
                }
                body.truncate(n);
                return (head, String::from_utf8_lossy(&body).into_owned());
            }
        }
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            let text = String::from_utf8_lossy(&got).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            return (head.to_owned(), body.to_owned());
        }
        got.extend_from_slice(&buf[..n]);
    }
}
