//! Pub/sub against real servers: a PUBLISH reaches the subscribers of
//! every server, patterns, RESP2's subscribed mode and RESP3's pushes,
//! shard channels with their slot's owner (and told `sunsubscribe` when it
//! moves), and a subscriber that does not read is disconnected at its limit.

use std::io::{Read, Write};
use std::time::Duration;

use crate::cluster::*;
use crate::util::*;

const PARTITIONS: u32 = 8;

/// One RESP value as it came (pushes apart from arrays).
#[derive(Clone, Debug, PartialEq)]
enum V {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<V>),
    Push(Vec<V>),
}

impl V {
    fn bulk(s: &str) -> V {
        V::Bulk(s.as_bytes().to_vec())
    }
}

/// A raw connection that reads whole RESP2/RESP3 values.
struct Raw {
    s: std::net::TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { s, buf: Vec::new() }
    }

    fn send(&mut self, words: &[&str]) {
        let mut req = format!("*{}\r\n", words.len()).into_bytes();
        for w in words {
            req.extend_from_slice(format!("${}\r\n{w}\r\n", w.len()).as_bytes());
        }
        self.s.write_all(&req).unwrap();
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + 2);
                return line;
            }
            self.fill();
        }
    }

    fn fill(&mut self) {
        let mut b = [0u8; 65536];
        let n = self.s.read(&mut b).unwrap_or_else(|e| panic!("no reply within the timeout: {e}"));
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&b[..n]);
    }

    /// The next value (waits at most the read timeout).
    fn read(&mut self) -> V {
        let line = self.line();
        let (kind, rest) = line.split_at(1);
        let n = || rest.parse::<i64>().unwrap();
        match kind {
            "+" => V::Simple(rest.to_owned()),
            "-" => V::Error(rest.to_owned()),
            ":" => V::Int(n()),
            "_" => V::Nil,
            "$" if n() < 0 => V::Nil,
            "$" => {
                let len = n() as usize;
                while self.buf.len() < len + 2 {
                    self.fill();
                }
                let b = self.buf[..len].to_vec();
                self.buf.drain(..len + 2);
                V::Bulk(b)
            }
            "*" if n() < 0 => V::Nil,
            "*" => V::Array((0..n()).map(|_| self.read()).collect()),
            ">" => V::Push((0..n()).map(|_| self.read()).collect()),
            "%" => V::Array((0..2 * n()).map(|_| self.read()).collect()),
            _ => panic!("unexpected RESP line {line:?}"),
        }
    }

    fn call(&mut self, words: &[&str]) -> V {
        self.send(words);
        self.read()
    }
}

/// The next two values of `sub`, in either order: `news`'s message with
/// `payload`, and the same through the pattern `n*`.
fn assert_message_and_pmessage(sub: &mut Raw, payload: &str) {
    let mut got = vec![sub.read(), sub.read()];
    got.sort_by_key(|v| format!("{v:?}"));
    assert_eq!(
        got,
        [
            V::Array(vec![V::bulk("message"), V::bulk("news"), V::bulk(payload)]),
            V::Array(vec![V::bulk("pmessage"), V::bulk("n*"), V::bulk("news"), V::bulk(payload)]),
        ]
    );
}

/// `[kind, a, b]` of bulk strings and one integer, as pub/sub confirms.
fn confirm(word: &str, name: &str, n: i64) -> Vec<V> {
    vec![V::bulk(word), V::bulk(name), V::Int(n)]
}

#[test]
fn publish_reaches_subscribers_on_every_server_with_redis_replies() {
    let c = Cluster::start(2, PARTITIONS);
    let (a, b) = (c.servers[0].addr.clone(), c.servers[1].addr.clone());
    // RESP2: confirmations are arrays, one per channel; then only
    // (un)subscriptions, PING, QUIT and RESET are allowed.
    let mut sub = Raw::connect(&a);
    sub.send(&["SUBSCRIBE", "news", "sport"]);
    assert_eq!(sub.read(), V::Array(confirm("subscribe", "news", 1)));
    assert_eq!(sub.read(), V::Array(confirm("subscribe", "sport", 2)));
    assert_eq!(sub.call(&["PSUBSCRIBE", "n*"]), V::Array(confirm("psubscribe", "n*", 3)));
    match sub.call(&["GET", "x"]) {
        V::Error(e) => assert!(e.starts_with("ERR Can't execute 'get'"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(sub.call(&["PING"]), V::Array(vec![V::bulk("pong"), V::bulk("")]));

    // Published on the other server: forwarded here. The reply counts the
    // subscribers of the server it was published on (none there).
    let mut publisher = Raw::connect(&b);
    assert_eq!(publisher.call(&["PUBLISH", "news", "from b"]), V::Int(0));
    assert_message_and_pmessage(&mut sub, "from b");
    // Here: the channel's subscriber and the pattern's.
    let mut local = Raw::connect(&a);
    assert_eq!(local.call(&["PUBLISH", "news", "from a"]), V::Int(2));
    assert_message_and_pmessage(&mut sub, "from a");
    assert_eq!(local.call(&["PUBSUB", "NUMSUB", "news", "none"]), V::Array(vec![V::bulk("news"), V::Int(1), V::bulk("none"), V::Int(0)]));
    assert_eq!(local.call(&["PUBSUB", "CHANNELS", "s*"]), V::Array(vec![V::bulk("sport")]));
    assert_eq!(local.call(&["PUBSUB", "NUMPAT"]), V::Int(1));
    // CLIENT LIST counts them, flags the subscriber P, and TYPE pubsub lists it alone.
    let listed = |r: V| match r {
        V::Bulk(b) => String::from_utf8(b).unwrap(),
        other => panic!("{other:?}"),
    };
    let pubsub = listed(local.call(&["CLIENT", "LIST", "TYPE", "pubsub"]));
    assert_eq!(pubsub.lines().count(), 1, "{pubsub}");
    assert!(pubsub.contains(" flags=P ") && pubsub.contains(" sub=2 psub=1 ssub=0 "), "{pubsub}");
    assert!(!listed(local.call(&["CLIENT", "LIST", "TYPE", "normal"])).contains("sub=2"));

    // Unsubscribed from everything, the connection takes any command again.
    sub.send(&["UNSUBSCRIBE"]);
    let mut ended = vec![sub.read(), sub.read()];
    ended.sort_by_key(|v| format!("{v:?}"));
    assert_eq!(ended, [V::Array(confirm("unsubscribe", "news", 2)), V::Array(confirm("unsubscribe", "sport", 1))]);
    assert_eq!(sub.call(&["PUNSUBSCRIBE"]), V::Array(confirm("punsubscribe", "n*", 0)));
    match sub.call(&["GET", "{x}"]) {
        V::Nil => {}
        V::Error(e) => assert!(e.starts_with("MOVED "), "GET runs (or is redirected): {e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(local.call(&["PUBLISH", "news", "nobody"]), V::Int(0));
    assert_eq!(local.call(&["PUBSUB", "NUMPAT"]), V::Int(0));

    // RESP3: confirmations and messages are pushes, and other commands run
    // between them.
    let mut r3 = Raw::connect(&b);
    assert!(matches!(r3.call(&["HELLO", "3"]), V::Array(_)));
    // (Its own channel: "nobody" above may still be on its way to b.)
    assert_eq!(r3.call(&["SUBSCRIBE", "news3"]), V::Push(confirm("subscribe", "news3", 1)));
    assert_eq!(r3.call(&["PING"]), V::Simple("PONG".into()));
    assert_eq!(local.call(&["PUBLISH", "news3", "to b"]), V::Int(0));
    assert_eq!(r3.read(), V::Push(vec![V::bulk("message"), V::bulk("news3"), V::bulk("to b")]));
    // Not inside a transaction (it would run at EXEC ahead of its writes).
    assert_eq!(local.call(&["MULTI"]), V::Simple("OK".into()));
    assert!(matches!(local.call(&["PUBLISH", "news3", "in multi"]), V::Error(e) if e.contains("not allowed inside MULTI")));
    assert!(matches!(local.call(&["EXEC"]), V::Error(e) if e.starts_with("EXECABORT")));
    // RESET ends every subscription.
    assert_eq!(r3.call(&["RESET"]), V::Simple("RESET".into()));
    // A user's channels are its &pattern rules (Redis's): none unless given.
    let mut admin = Raw::connect(&a);
    assert_eq!(admin.call(&["ACL", "SETUSER", "bob", "on", ">pw", "~*", "+@all", "&news*"]), V::Simple("OK".into()));
    assert_eq!(admin.call(&["ACL", "SETUSER", "eve", "on", ">pw", "~*", "+@all"]), V::Simple("OK".into()));
    let mut bob = Raw::connect(&a);
    assert_eq!(bob.call(&["AUTH", "bob", "pw"]), V::Simple("OK".into()));
    let noperm = |v: V| matches!(&v, V::Error(e) if e.starts_with("NOPERM ")) || panic!("{v:?}");
    assert_eq!(bob.call(&["PUBLISH", "news9", "ok"]), V::Int(0));
    assert!(noperm(bob.call(&["PUBLISH", "sport", "no"])));
    assert!(noperm(bob.call(&["SUBSCRIBE", "news1", "sport"])), "all or nothing");
    assert!(noperm(bob.call(&["PSUBSCRIBE", "n*"])), "a pattern must be one of the user's own");
    assert_eq!(bob.call(&["PSUBSCRIBE", "news*"]), V::Array(confirm("psubscribe", "news*", 1)));
    let mut eve = Raw::connect(&a);
    assert_eq!(eve.call(&["AUTH", "eve", "pw"]), V::Simple("OK".into()));
    assert!(noperm(eve.call(&["PUBLISH", "news9", "no"])), "+@all and ~* open no channel");
    // Pushes are sent even with replies off, as Redis sends them.
    let mut quiet = Raw::connect(&a);
    quiet.send(&["CLIENT", "REPLY", "OFF"]);
    assert_eq!(quiet.call(&["SUBSCRIBE", "quiet"]), V::Array(confirm("subscribe", "quiet", 1)));
    assert_eq!(local.call(&["PUBLISH", "quiet", "still"]), V::Int(1));
    assert_eq!(quiet.read(), V::Array(vec![V::bulk("message"), V::bulk("quiet"), V::bulk("still")]));
    assert_eq!(publisher.call(&["PUBLISH", "news", "after reset"]), V::Int(0));
}

#[test]
fn shard_channels_live_with_their_slot_and_end_when_it_moves() {
    let c = Cluster::start(2, PARTITIONS);
    let channel = key_in_partition("orders", 0, PARTITIONS);
    let slot = slot(&channel);
    let owner = c.owner_of(0).unwrap();
    let other = c.servers.iter().find(|s| s.name != owner).unwrap().name.clone();
    let owner_addr = c.servers.iter().find(|s| s.name == owner).unwrap().addr.clone();
    let other_addr = c.servers.iter().find(|s| s.name == other).unwrap().addr.clone();
    let mut elsewhere = Raw::connect(&other_addr);
    assert_eq!(elsewhere.call(&["SSUBSCRIBE", &channel]), V::Error(format!("MOVED {slot} {owner_addr}")));
    assert_eq!(elsewhere.call(&["SPUBLISH", &channel, "x"]), V::Error(format!("MOVED {slot} {owner_addr}")));
    match elsewhere.call(&["SSUBSCRIBE", "{a}1", "{b}1"]) {
        V::Error(e) => assert!(e.starts_with("CROSSSLOT"), "{e}"),
        other => panic!("{other:?}"),
    }
    let mut sub = Raw::connect(&owner_addr);
    assert_eq!(sub.call(&["SSUBSCRIBE", &channel]), V::Array(confirm("ssubscribe", &channel, 1)));
    let mut publisher = Raw::connect(&owner_addr);
    assert_eq!(publisher.call(&["SPUBLISH", &channel, "o1"]), V::Int(1));
    assert_eq!(sub.read(), V::Array(vec![V::bulk("smessage"), V::bulk(&channel), V::bulk("o1")]));
    // A plain PUBLISH of the same name is another channel.
    assert_eq!(publisher.call(&["PUBLISH", &channel, "plain"]), V::Int(0));
    assert_eq!(publisher.call(&["PUBSUB", "SHARDCHANNELS"]), V::Array(vec![V::bulk(&channel)]));
    assert_eq!(publisher.call(&["PUBSUB", "SHARDNUMSUB", &channel]), V::Array(vec![V::bulk(&channel), V::Int(1)]));
    // The slot moves: the subscriber is told, as Redis tells it.
    c.admin(&["move", "0", &other]);
    sub.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(sub.read(), V::Array(confirm("sunsubscribe", &channel, 0)));
    let mut moved_sub = Raw::connect(&other_addr);
    wait_until(Duration::from_secs(20), "the new owner to take shard subscriptions", || {
        moved_sub.call(&["SSUBSCRIBE", &channel]) == V::Array(confirm("ssubscribe", &channel, 1))
    });
    // The old owner redirects; the new one delivers.
    assert_eq!(publisher.call(&["SPUBLISH", &channel, "o2"]), V::Error(format!("MOVED {slot} {other_addr}")));
    assert_eq!(Raw::connect(&other_addr).call(&["SPUBLISH", &channel, "o2"]), V::Int(1));
    assert_eq!(moved_sub.read(), V::Array(vec![V::bulk("smessage"), V::bulk(&channel), V::bulk("o2")]));
    assert_eq!(Raw::connect(&owner_addr).call(&["PUBSUB", "SHARDNUMSUB", &channel]), V::Array(vec![V::bulk(&channel), V::Int(0)]));
}

#[test]
fn a_subscriber_that_does_not_read_is_disconnected_at_its_limit() {
    let c = Cluster::start(1, PARTITIONS);
    let addr = c.servers[0].addr.clone();
    let mut admin = Raw::connect(&addr);
    assert_eq!(admin.call(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 256kb 0 0"]), V::Simple("OK".into()));
    assert_eq!(
        admin.call(&["CONFIG", "GET", "client-output-buffer-limit"]),
        V::Array(vec![V::bulk("client-output-buffer-limit"), V::bulk("normal 0 0 0 slave 0 0 0 pubsub 262144 0 0")])
    );
    match admin.call(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 1mb 256kb 60"]) {
        V::Error(e) => assert!(e.contains("hard limit only"), "{e}"),
        other => panic!("{other:?}"),
    }
    let mut slow = Raw::connect(&addr);
    assert_eq!(slow.call(&["SUBSCRIBE", "firehose"]), V::Array(confirm("subscribe", "firehose", 1)));
    // It never reads again. 64 MB of messages, slowly enough that the
    // server keeps writing them out until the sockets' buffers are full and
    // its write to the subscriber blocks; then its queue passes the limit.
    let payload = "x".repeat(64 << 10);
    let mut publisher = Raw::connect(&addr);
    let mut delivered = 0;
    for _ in 0..1024 {
        match publisher.call(&["PUBLISH", "firehose", &payload]) {
            V::Int(n) => delivered += n,
            other => panic!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(delivered < 1024, "the slow subscriber stopped being sent to ({delivered} of 1024)");
    let info = match admin.call(&["INFO", "stats"]) {
        V::Bulk(b) => String::from_utf8(b).unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(info.contains("client_output_buffer_limit_disconnections:1\r\n"), "{info}");
    // Closed by the server while it still reads nothing (its subscription
    // gone with its connection), not only once it reads again.
    wait_until(Duration::from_secs(10), "the slow subscriber's connection to close", || {
        Raw::connect(&addr).call(&["PUBSUB", "NUMSUB", "firehose"]) == V::Array(vec![V::bulk("firehose"), V::Int(0)])
    });
    // What was sent before ends at the close.
    let mut b = [0u8; 1 << 16];
    loop {
        match slow.s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("the slow subscriber's connection was not closed: {e}"),
        }
    }
}
