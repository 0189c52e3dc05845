//! Who may talk to the cluster: the cluster secret on the lock manager's
//! protocol, passwords and ACL users on RESP, and the refusals at start.
//! Real processes on 127.0.0.1 and the `redis` crate.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::util::*;

const T: Duration = Duration::from_secs(20);

/// A lock manager and `n` servers with a cluster secret, every server
/// started with `server_args` too.
struct Secured {
    s: Scratch,
    vol: PathBuf,
    secret: PathBuf,
    lockmgr: String,
    _lm: ChildGuard,
    servers: Vec<(ChildGuard, String)>,
}

fn secret_file(s: &Scratch, name: &str) -> PathBuf {
    let p = s.path(name);
    assert_success(&run(&["secret", "new", p.to_str().unwrap()]));
    p
}

impl Secured {
    fn start(n: usize, server_args: &[&str]) -> Secured {
        let s = Scratch::new();
        let vol = s.volume("v", "64MiB", 4);
        let secret = secret_file(&s, "cluster.secret");
        let mut lm = ChildGuard::spawn(&[
            "lockmgr",
            "--volume",
            vol.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--secret-file",
            secret.to_str().unwrap(),
        ]);
        let lockmgr = lm.wait_lockmgr_ready(T);
        let mut c = Secured { s, vol, secret, lockmgr, _lm: lm, servers: Vec::new() };
        for i in 1..=n {
            let server = c.spawn_server(&format!("s{i}"), server_args);
            c.servers.push(server);
        }
        c.wait(|st| st["partitions"].as_array().unwrap().iter().all(|p| p["owner"].is_string()));
        c
    }

    fn spawn_server(&self, name: &str, extra: &[&str]) -> (ChildGuard, String) {
        let mut args = vec![
            "server",
            "--volume",
            self.vol.to_str().unwrap(),
            "--lockmgr",
            &self.lockmgr,
            "--listen",
            "127.0.0.1:0",
            "--id",
            name,
            "--secret-file",
            self.secret.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut p = ChildGuard::spawn(&args);
        let addr = p.wait_server_ready(T);
        (p, addr)
    }

    fn admin(&self, args: &[&str]) -> std::process::Output {
        let mut a = vec!["admin", "--lockmgr", &self.lockmgr, "--secret-file", self.secret.to_str().unwrap()];
        a.extend_from_slice(args);
        run(&a)
    }

    fn wait(&self, mut cond: impl FnMut(&serde_json::Value) -> bool) {
        wait_until(T, "the cluster state", || {
            let o = self.admin(&["status", "--json"]);
            o.status.success() && cond(&serde_json::from_slice(&o.stdout).unwrap())
        });
    }
}

fn password_file(s: &Scratch, pw: &str) -> PathBuf {
    let p = s.path("pw");
    std::fs::write(&p, format!("{pw}\n")).unwrap();
    p
}

/// A connection, logged in as `auth` (user, password) if given.
fn conn(addr: &str, auth: Option<(&str, &str)>) -> redis::Connection {
    let mut c = redis::Client::open(format!("redis://{addr}")).unwrap().get_connection_with_timeout(Duration::from_secs(5)).unwrap();
    if let Some((u, p)) = auth {
        let ok: String = redis::cmd("AUTH").arg(u).arg(p).query(&mut c).unwrap();
        assert_eq!(ok, "OK");
    }
    c
}

fn err(r: redis::RedisResult<redis::Value>) -> String {
    match r {
        // As on the wire: "NOAUTH Authentication required."
        Err(e) => match (e.code(), e.detail()) {
            (Some(code), Some(detail)) => format!("{code} {detail}"),
            _ => e.to_string(),
        },
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn query(c: &mut redis::Connection, words: &str) -> redis::RedisResult<redis::Value> {
    let mut cmd = redis::cmd(words.split(' ').next().unwrap());
    for w in words.split(' ').skip(1) {
        cmd.arg(w);
    }
    cmd.query(c)
}

#[test]
fn only_who_proves_the_cluster_secret_reaches_the_lock_manager() {
    let c = Secured::start(1, &[]);
    // No secret, a wrong one: refused, saying why; nothing changes.
    let o = run(&["admin", "--lockmgr", &c.lockmgr, "move", "0", "s1"]);
    assert_clean_failure(&o, "requires the cluster secret");
    let wrong = secret_file(&c.s, "wrong.secret");
    let o = run(&["admin", "--lockmgr", &c.lockmgr, "--secret-file", wrong.to_str().unwrap(), "drain", "s1"]);
    assert_clean_failure(&o, "wrong cluster secret");
    // The environment variable stands for the flag.
    let o = std::process::Command::new(bin())
        .args(["admin", "--lockmgr", &c.lockmgr, "status"])
        .env("SHAREDISK_SECRET_FILE", &c.secret)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("s1"));
    // A server with the wrong secret exits at once, saying why (no retry loop).
    let mut bad = ChildGuard::spawn(&[
        "server",
        "--volume",
        c.vol.to_str().unwrap(),
        "--lockmgr",
        &c.lockmgr,
        "--listen",
        "127.0.0.1:0",
        "--id",
        "intruder",
        "--secret-file",
        wrong.to_str().unwrap(),
    ]);
    assert!(!bad.wait_exit(T).success());
    let st: serde_json::Value = serde_json::from_str(&assert_success(&c.admin(&["status", "--json"]))).unwrap();
    let servers: Vec<&str> = st["servers"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(servers, ["s1"], "the refused server registered");
    assert!(st["partitions"].as_array().unwrap().iter().all(|p| p["owner"] == "s1"));
}

#[test]
fn a_password_is_needed_before_anything_and_servers_still_ask_each_other() {
    let s = Scratch::new();
    let pw = password_file(&s, "s3cret pass");
    let c = Secured::start(2, &["--requirepass-file", pw.to_str().unwrap()]);
    let addr = &c.servers[0].1;
    let mut anon = conn(addr, None);
    assert!(err(query(&mut anon, "GET k")).starts_with("NOAUTH"), "a command before AUTH");
    assert!(err(query(&mut anon, "CLUSTER SLOTS")).starts_with("NOAUTH"));
    assert!(err(query(&mut anon, "HELLO 3")).contains("NOAUTH"));
    assert!(err(query(&mut anon, "AUTH wrong")).starts_with("WRONGPASS"));
    assert!(err(query(&mut anon, "AUTH default wrong")).starts_with("WRONGPASS"));
    assert!(err(query(&mut anon, "GET k")).starts_with("NOAUTH"), "still not logged in");
    assert!(err(query(&mut anon, "PING")).starts_with("NOAUTH"));
    let mut auth = redis::cmd("AUTH");
    auth.arg("s3cret pass");
    let ok: String = auth.query(&mut anon).unwrap();
    assert_eq!(ok, "OK");
    let who: String = redis::cmd("ACL").arg("WHOAMI").query(&mut anon).unwrap();
    assert_eq!(who, "default");
    // RESET logs out again.
    let _: String = redis::cmd("RESET").query(&mut anon).unwrap();
    assert!(err(query(&mut anon, "GET k")).starts_with("NOAUTH"));
    // HELLO 3 AUTH logs in and switches in one step; a wrong password neither.
    let hello: redis::RedisResult<redis::Value> = redis::cmd("HELLO").arg(3).arg("AUTH").arg("default").arg("nope").query(&mut anon);
    assert!(err(hello).starts_with("WRONGPASS"));
    let hello: redis::Value = redis::cmd("HELLO").arg(3).arg("AUTH").arg("default").arg("s3cret pass").query(&mut anon).unwrap();
    assert!(format!("{hello:?}").contains("proto"), "{hello:?}");

    // A cluster client with the password writes across both servers, and
    // WAIT counts the standby: the owner asked it over RESP, logged in
    // with the cluster secret.
    let urls: Vec<String> = c.servers.iter().map(|(_, a)| format!("redis://{a}")).collect();
    let client = redis::cluster::ClusterClient::builder(urls).password("s3cret pass").build().unwrap();
    let mut cc = client.get_connection().unwrap();
    for i in 0..50 {
        let _: () = redis::cmd("SET").arg(format!("k{i}")).arg(i).query(&mut cc).unwrap();
    }
    let v: i64 = redis::cmd("GET").arg("k7").query(&mut cc).unwrap();
    assert_eq!(v, 7);
    let mut owner = conn(addr, Some(("default", "s3cret pass")));
    let deadline = Instant::now() + T;
    loop {
        // A key of a partition the first server owns, then WAIT on the same connection.
        // (Bounded: a server owning nothing fails here, not hangs.)
        let key = (0..10_000).map(|i| format!("w{i}")).find(|k| {
            let r: redis::RedisResult<()> = redis::cmd("SET").arg(k).arg("v").query(&mut owner);
            r.is_ok()
        });
        let acked: i64 = redis::cmd("WAIT").arg(1).arg(2000).query(&mut owner).unwrap();
        if acked == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "WAIT never counted the standby ({key:?})");
    }
    // SCAN across the cluster works too (it may ask another server).
    let mut seen = std::collections::BTreeSet::new();
    for (_, a) in &c.servers {
        let mut node = conn(a, Some(("default", "s3cret pass")));
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(100).query(&mut node).unwrap();
            seen.extend(keys);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    assert!((0..50).all(|i| seen.contains(&format!("k{i}"))), "SCAN missed keys");
    // Without the proof, the internal questions are refused like anything else.
    assert!(err(query(&mut conn(addr, None), "SHAREDISK STANDBY-APPLIED 0 1 0")).starts_with("NOAUTH"));
    assert!(
        err(query(&mut conn(addr, None), &format!("SHAREDISK PROVE {} {}", "0".repeat(64), "0".repeat(64)))).contains("does not check out")
    );
}

#[test]
fn acl_users_are_limited_to_their_keys_and_commands_and_persist() {
    let s = Scratch::new();
    let pw = password_file(&s, "adminpw");
    let acl = s.path("users.acl");
    let args = ["--requirepass-file", pw.to_str().unwrap(), "--aclfile", acl.to_str().unwrap()];
    let mut c = Secured::start(1, &args);
    let addr = c.servers[0].1.clone();
    let mut admin = conn(&addr, Some(("default", "adminpw")));
    let set = |c: &mut redis::Connection, rules: &str| -> redis::RedisResult<String> {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER");
        for r in rules.split(' ') {
            cmd.arg(r);
        }
        cmd.query(c)
    };
    set(&mut admin, "app on >apppw ~app:* %R~shared:* +@read +@write +@transaction -@dangerous").unwrap();
    let e = set(&mut admin, "bad on +nosuchcommand").unwrap_err().to_string();
    assert!(e.contains("Unknown command or category name in ACL"), "{e}");
    let users: Vec<String> = redis::cmd("ACL").arg("USERS").query(&mut admin).unwrap();
    assert_eq!(users, ["app", "default"], "a failed SETUSER creates nobody");

    let mut app = conn(&addr, Some(("app", "apppw")));
    let ok: String = redis::cmd("SET").arg("app:1").arg("x").query(&mut app).unwrap();
    assert_eq!(ok, "OK");
    assert!(err(query(&mut app, "SET shared:1 x")).contains("no permissions to access one of the keys"));
    let _: String = redis::cmd("SET").arg("shared:1").arg("x").query(&mut admin).unwrap();
    let r: String = redis::cmd("GET").arg("shared:1").query(&mut app).unwrap();
    assert_eq!(r, "x", "a read-only pattern reads");
    assert!(err(query(&mut app, "CONFIG GET maxmemory")).contains("no permissions to run the 'config|get' command"));
    assert!(err(query(&mut app, "FLUSHALL")).contains("no permissions to run the 'flushall' command"));
    assert!(err(query(&mut app, "GET other")).contains("NOPERM"));
    // In a transaction a refused command aborts EXEC, as in Redis.
    let _: String = redis::cmd("MULTI").query(&mut app).unwrap();
    assert!(err(query(&mut app, "GET other")).contains("NOPERM"));
    assert!(err(query(&mut app, "EXEC")).starts_with("EXECABORT"));
    let dry: String = redis::cmd("ACL").arg("DRYRUN").arg("app").arg("SET").arg("other").arg("v").query(&mut admin).unwrap();
    assert!(dry.contains("keys"), "{dry}");
    let listed: Vec<String> = redis::cmd("ACL").arg("LIST").query(&mut admin).unwrap();
    assert!(listed.iter().any(|l| l.starts_with("user app on #") && l.contains("~app:*") && l.contains("%R~shared:*")), "{listed:?}");
    assert!(listed.iter().all(|l| !l.contains("apppw")), "a password in clear: {listed:?}");
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();
    assert!(clients.contains("user=app"), "{clients}");

    // Saved, then the server restarts: the user is still there.
    let _: String = redis::cmd("ACL").arg("SAVE").query(&mut admin).unwrap();
    let text = std::fs::read_to_string(&acl).unwrap();
    assert!(text.contains("user app on #") && !text.contains("apppw"), "{text}");
    c.servers[0].0.kill9();
    let restarted = c.spawn_server("s1", &args);
    c.servers[0] = restarted;
    c.wait(|st| st["partitions"].as_array().unwrap().iter().all(|p| p["owner"] == "s1"));
    let addr = c.servers[0].1.clone();
    let mut app = conn(&addr, Some(("app", "apppw")));
    let r: String = redis::cmd("GET").arg("shared:1").query(&mut app).unwrap();
    assert_eq!(r, "x");
    // Deleting the user closes its connections.
    let mut admin = conn(&addr, Some(("default", "adminpw")));
    let n: i64 = redis::cmd("ACL").arg("DELUSER").arg("app").query(&mut admin).unwrap();
    assert_eq!(n, 1);
    wait_until(T, "the deleted user's connection to close", || query(&mut app, "PING").is_err());
    assert!(redis::Client::open(format!("redis://app:apppw@{addr}")).unwrap().get_connection().is_err());
}

fn refused(args: &[&str], needle: &str) {
    let o = run(args);
    assert_clean_failure(&o, needle);
}

#[test]
fn servers_and_lock_managers_refuse_to_start_open_beyond_loopback() {
    let s = Scratch::new();
    let vol = s.volume("v", "32MiB", 2);
    let v = vol.to_str().unwrap();
    refused(&["lockmgr", "--volume", v, "--listen", "0.0.0.0:0"], "without a cluster secret");
    refused(&["server", "--volume", v, "--id", "a", "--listen", "0.0.0.0:0", "--lockmgr", "127.0.0.1:1"], "without a password");
    let pw = password_file(&s, "pw");
    refused(
        &["server", "--volume", v, "--id", "a", "--listen", "127.0.0.1:0", "--requirepass-file", pw.to_str().unwrap()],
        "need --secret-file too",
    );
    let empty = s.path("empty");
    std::fs::write(&empty, "").unwrap();
    refused(&["server", "--volume", v, "--id", "a", "--requirepass-file", empty.to_str().unwrap()], "is empty");
    // A secret file others may read is refused, as ssh refuses such a key.
    let open = secret_file(&s, "open.secret");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(&["lockmgr", "--volume", v, "--secret-file", open.to_str().unwrap()], "chmod 600");
    refused(&["secret", "new", open.to_str().unwrap()], "cannot write");
    let acl = s.path("broken.acl");
    std::fs::write(&acl, "user bob on +nosuch\n").unwrap();
    refused(&["server", "--volume", v, "--id", "a", "--aclfile", acl.to_str().unwrap()], "line 1");
    // A metrics address that cannot be bound is said before anything serves.
    refused(&["lockmgr", "--volume", v, "--listen", "127.0.0.1:0", "--metrics", "not-an-address"], "cannot listen for metrics");
    refused(&["lockmgr", "--volume", v, "--listen", "127.0.0.1:0", "--http", "not-an-address"], "cannot listen for the page");
    // The page shows the map without a login: not beyond loopback unless asked.
    refused(&["lockmgr", "--volume", v, "--listen", "127.0.0.1:0", "--http", "0.0.0.0:0"], "--insecure-http");
    refused(&["server", "--volume", v, "--id", "a", "--listen", "127.0.0.1:0", "--metrics", "not-an-address"], "cannot listen for metrics");
}

/// A test CA and PEM files it signed: a server certificate for 127.0.0.1
/// (servers present it to clients and to each other) and a client's.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn new(s: &Scratch) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "sharedisk test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let write = |name: &str, text: String| {
            let p = s.path(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let leaf = |name: &str, sans: &[&str]| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(sans.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            let cert = params.signed_by(&key, &ca).unwrap();
            (write(&format!("{name}.crt"), cert.pem()), write(&format!("{name}.key"), key.serialize_pem()))
        };
        let (cert, key) = leaf("server", &["127.0.0.1", "localhost"]);
        let (client_cert, client_key) = leaf("client", &[]);
        let ca = write("ca.crt", ca.pem());
        Pki { ca, cert, key, client_cert, client_key }
    }

    fn server_args(&self) -> Vec<&str> {
        fn p(p: &std::path::Path) -> &str {
            p.to_str().unwrap()
        }
        vec!["--tls-cert-file", p(&self.cert), "--tls-key-file", p(&self.key), "--tls-ca-cert-file", p(&self.ca)]
    }

    fn redis_certs(&self) -> redis::TlsCertificates {
        let read = |p: &PathBuf| std::fs::read(p).unwrap();
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig { client_cert: read(&self.client_cert), client_key: read(&self.client_key) }),
            root_cert: Some(read(&self.ca)),
        }
    }

    /// redis-cli over TLS (with the client certificate if `with_cert`), in
    /// cluster mode, `script` on its input.
    fn redis_cli(&self, addr: &str, with_cert: bool, script: &str) -> std::process::Output {
        let port = addr.rsplit(':').next().unwrap();
        let p = |p: &PathBuf| p.to_str().unwrap().to_owned();
        let mut args = vec![
            "--tls".to_owned(),
            "--cacert".into(),
            p(&self.ca),
            "-c".into(),
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.into(),
        ];
        if with_cert {
            args.extend(["--cert".into(), p(&self.client_cert), "--key".into(), p(&self.client_key)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_with_input("redis-cli", &args, script, "apt-get install redis-tools")
    }
}

/// With TLS a server speaks TLS only: redis-cli --tls and the `redis`
/// crate's cluster client (rediss://) write and read across both servers;
/// WAIT counts the standby, which the owner asked over TLS with its own
/// certificate; a client without a certificate, or speaking plain text,
/// gets nothing, unless `--tls-auth-clients optional` lets it in.
#[test]
fn tls_carries_clients_and_servers_and_refuses_who_cannot_prove_itself() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = Scratch::new();
    let pki = Pki::new(&s);
    let c = Secured::start(2, &pki.server_args());
    let (a, b) = (c.servers[0].1.clone(), c.servers[1].1.clone());

    let script: String = (0..200).map(|i| format!("SET tls:{i} v{i}\n")).collect();
    let o = pki.redis_cli(&a, true, &script);
    assert!(o.status.success(), "redis-cli --tls: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().filter(|l| *l == "OK").count(), 200, "{o:?}");
    let o = pki.redis_cli(&b, true, "GET tls:7\nGET tls:199\n");
    // (redis-cli says where it was redirected: over TLS too.)
    let got: Vec<String> =
        String::from_utf8_lossy(&o.stdout).lines().filter(|l| !l.starts_with("-> Redirected")).map(String::from).collect();
    assert_eq!(got, ["v7", "v199"], "{o:?}");

    let urls: Vec<String> = c.servers.iter().map(|(_, a)| format!("rediss://{a}")).collect();
    let client = redis::cluster::ClusterClient::builder(urls).certs(pki.redis_certs()).build().unwrap();
    let mut cc = client.get_connection().unwrap();
    for i in 0..200 {
        let v: String = redis::cmd("GET").arg(format!("tls:{i}")).query(&mut cc).unwrap();
        assert_eq!(v, format!("v{i}"));
    }
    let _: () = redis::cmd("SET").arg("big").arg(vec![b'x'; 3 << 20]).query(&mut cc).unwrap();
    let big: Vec<u8> = redis::cmd("GET").arg("big").query(&mut cc).unwrap();
    assert!(big.len() == 3 << 20 && big.iter().all(|&x| x == b'x'), "a 3 MB value over TLS");

    let direct = redis::Client::build_with_tls(format!("rediss://{a}"), pki.redis_certs()).unwrap();
    let mut owner = direct.get_connection_with_timeout(Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + T;
    loop {
        let key = (0..10_000).map(|i| format!("w{i}")).find(|k| redis::cmd("SET").arg(k).arg("v").query::<()>(&mut owner).is_ok());
        let acked: i64 = redis::cmd("WAIT").arg(1).arg(2000).query(&mut owner).unwrap();
        if acked == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "WAIT never counted the standby over TLS ({key:?})");
    }

    // No client certificate: the handshake fails, nothing is answered.
    let o = pki.redis_cli(&a, false, "PING\n");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("PONG"), "answered a client without a certificate: {o:?}");
    let anonymous = redis::Client::build_with_tls(
        format!("rediss://{a}"),
        redis::TlsCertificates { client_tls: None, root_cert: Some(std::fs::read(&pki.ca).unwrap()) },
    )
    .unwrap();
    assert!(
        anonymous.get_connection_with_timeout(Duration::from_secs(5)).and_then(|mut c| redis::cmd("PING").query::<String>(&mut c)).is_err()
    );
    // Plain text to a TLS port: no RESP reply, and the server carries on.
    let reply = sharedisk_testkit::cluster::raw(&a, b"PING\r\n", Duration::from_millis(500));
    assert!(!String::from_utf8_lossy(&reply).contains("PONG"), "a plain-text PING was answered");
    let pong: String = redis::cmd("PING").query(&mut owner).unwrap();
    assert_eq!(pong, "PONG");

    // `--tls-auth-clients optional`: a client without a certificate is let in.
    let (_guard, optional) = c.spawn_server("s3", &[pki.server_args(), vec!["--tls-auth-clients", "optional"]].concat());
    let o = pki.redis_cli(&optional, false, "PING\n");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "PONG", "{o:?}");
}

/// Bad TLS files stop a server at start, saying which file and why.
#[test]
fn bad_tls_files_are_refused_at_start() {
    let s = Scratch::new();
    let vol = s.volume("v", "32MiB", 2);
    let pki = Pki::new(&s);
    let elsewhere = Scratch::new();
    let other = Pki::new(&elsewhere);
    let garbage = s.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let p = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let server = |extra: &[String]| -> Vec<String> {
        let mut a: Vec<String> =
            ["server", "--volume", vol.to_str().unwrap(), "--id", "a", "--listen", "127.0.0.1:0", "--lockmgr", "127.0.0.1:1"]
                .map(String::from)
                .to_vec();
        a.extend_from_slice(extra);
        a
    };
    let refused_with = |extra: &[String], needle: &str| {
        let args = server(extra);
        refused(&args.iter().map(String::as_str).collect::<Vec<_>>(), needle);
    };
    let tls = |cert: &PathBuf, key: &PathBuf, ca: &PathBuf| {
        vec!["--tls-cert-file".into(), p(cert), "--tls-key-file".into(), p(key), "--tls-ca-cert-file".into(), p(ca)]
    };
    refused_with(&["--tls-cert-file".into(), p(&pki.cert)], "--tls-key-file");
    refused_with(&tls(&garbage, &pki.key, &pki.ca), "holds no PEM certificate");
    refused_with(&tls(&pki.cert, &garbage, &pki.ca), "--tls-key-file");
    refused_with(&tls(&pki.cert, &pki.key, &s.path("missing.crt")), "missing.crt");
    refused_with(&tls(&pki.cert, &other.key, &pki.ca), "do not make a pair");
}
