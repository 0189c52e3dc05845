//! Pub/sub: channels, patterns and shard channels, as Redis 7 has them.
//!
//! Not durable, as in Redis: a message goes to whoever is subscribed when
//! it is published, and to nobody else. A `PUBLISH` reaches the subscribers
//! of every server of the cluster (as Redis Cluster's bus carries it): it
//! is delivered here and forwarded to each other server (`SHAREDISK
//! PUBLISH`, over the peers' login); its reply counts the subscribers here
//! only, as in Redis Cluster. Shard channels live with their slot's owner
//! (`SSUBSCRIBE` and `SPUBLISH` are answered `-MOVED` elsewhere), and a
//! subscriber whose slot leaves this server is told `sunsubscribe`, as
//! Redis tells it when a slot migrates.
//!
//! A subscriber's unsent messages are bounded in bytes
//! (`client-output-buffer-limit pubsub`, hard limit): past it the
//! connection is closed, as Redis closes it, rather than let one slow
//! reader grow the server's memory without end.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::resp::Reply;

/// Redis's default hard limit of a pub/sub client's output buffer.
pub const SUBSCRIBER_BYTES_MAX_DEFAULT: usize = 32 << 20;
/// Forwarded `PUBLISH`es queued for other servers, at most (past it they
/// are dropped and counted: pub/sub delivers at most once)...
pub const FORWARD_QUEUE_MAX: usize = 65536;
/// ...and their bytes, counted once in the queue and once per peer.
pub const FORWARD_BYTES_MAX: usize = 64 << 20;
/// Forwards queued for one peer, at most (the bytes bound all of them).
const PEER_QUEUE_MAX: usize = 65536;
/// One write to a peer carries at most this much of its queue.
const PEER_WRITE_BYTES_MAX: usize = 1 << 20;

/// What a subscription names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Channel = 0,
    Pattern = 1,
    Shard = 2,
}

impl Kind {
    /// The push's name for a subscription and its end.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Kind::Channel => ("subscribe", "unsubscribe"),
            Kind::Pattern => ("psubscribe", "punsubscribe"),
            Kind::Shard => ("ssubscribe", "sunsubscribe"),
        }
    }
}

/// One message on its way to one subscriber.
#[derive(Clone, Debug)]
pub struct Msg {
    pub kind: Kind,
    /// The pattern it matched (a pattern subscription's).
    pub pattern: Option<Bytes>,
    pub channel: Bytes,
    pub payload: Bytes,
}

impl Msg {
    pub fn reply(&self) -> Reply {
        let b = |b: &Bytes| Reply::Bulk(b.clone());
        Reply::Push(match (self.kind, &self.pattern) {
            (Kind::Pattern, Some(p)) => vec![Reply::bulk("pmessage"), b(p), b(&self.channel), b(&self.payload)],
            (Kind::Shard, _) => vec![Reply::bulk("smessage"), b(&self.channel), b(&self.payload)],
            _ => vec![Reply::bulk("message"), b(&self.channel), b(&self.payload)],
        })
    }

    /// What it takes of the subscriber's output limit.
    fn bytes(&self) -> usize {
        self.channel.len() + self.payload.len() + self.pattern.as_ref().map_or(0, Bytes::len) + 32
    }
}

#[derive(Clone, Debug)]
struct Sink {
    tx: mpsc::UnboundedSender<Msg>,
    queued: Arc<AtomicUsize>,
    info: Arc<crate::cmd::ClientInfo>,
}

/// Every subscription of this server.
#[derive(Debug)]
pub struct Hub {
    tables: Mutex<[HashMap<Bytes, HashMap<u64, Sink>>; 3]>,
    next: AtomicU64,
    /// The output limit of a subscriber, bytes (0: none).
    pub limit: AtomicUsize,
    /// Subscribers closed for passing it; forwards dropped for a full queue.
    pub disconnected: AtomicU64,
    pub forward_dropped: AtomicU64,
    /// Bytes of forwards queued (`FORWARD_BYTES_MAX`).
    forward_bytes: AtomicUsize,
    /// Other servers in the map (0: a PUBLISH has nobody to forward to).
    peers: AtomicUsize,
    forward: Mutex<Option<mpsc::Sender<(Bytes, Bytes)>>>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            tables: Mutex::default(),
            next: AtomicU64::new(1),
            limit: AtomicUsize::new(SUBSCRIBER_BYTES_MAX_DEFAULT),
            disconnected: AtomicU64::new(0),
            forward_dropped: AtomicU64::new(0),
            forward_bytes: AtomicUsize::new(0),
            peers: AtomicUsize::new(0),
            forward: Mutex::new(None),
        }
    }
}

impl Hub {
    fn tables(&self) -> std::sync::MutexGuard<'_, [HashMap<Bytes, HashMap<u64, Sink>>; 3]> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection's subscriptions (none yet).
    pub fn subscriber(self: &Arc<Hub>, info: Arc<crate::cmd::ClientInfo>) -> Subscriber {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        Subscriber { hub: self.clone(), id, sink: Sink { tx, queued: Arc::default(), info }, rx, subs: Default::default() }
    }

    /// Deliver to the subscribers here: of `channel` (or, `shard`, of the
    /// shard channel) and of the patterns it matches. How many got it.
    pub fn publish(&self, channel: &Bytes, payload: &Bytes, shard: bool) -> usize {
        let limit = self.limit.load(Ordering::Relaxed);
        let mut sent = 0;
        let send = |sink: &Sink, msg: Msg| {
            let n = msg.bytes();
            let queued = sink.queued.fetch_add(n, Ordering::AcqRel) + n;
            if limit > 0 && queued > limit {
                // Too slow a reader: closed, as Redis closes it.
                if !sink.info.is_killed() {
                    self.disconnected.fetch_add(1, Ordering::Relaxed);
                    sink.info.kill();
                }
                sink.queued.fetch_sub(n, Ordering::AcqRel);
                return false;
            }
            sink.tx.send(msg).is_ok()
        };
        let tables = self.tables();
        let kind = if shard { Kind::Shard } else { Kind::Channel };
        if let Some(subs) = tables[kind as usize].get(channel) {
            for sink in subs.values() {
                sent += usize::from(send(sink, Msg { kind, pattern: None, channel: channel.clone(), payload: payload.clone() }));
            }
        }
        if !shard {
            for (pattern, subs) in &tables[Kind::Pattern as usize] {
                if crate::glob::matches(pattern, channel) {
                    for sink in subs.values() {
                        let msg =
                            Msg { kind: Kind::Pattern, pattern: Some(pattern.clone()), channel: channel.clone(), payload: payload.clone() };
                        sent += usize::from(send(sink, msg));
                    }
                }
            }
        }
        sent
    }

    /// `PUBSUB CHANNELS|SHARDCHANNELS [pattern]`: the channels here with a subscriber.
    pub fn channels(&self, kind: Kind, pattern: Option<&[u8]>) -> Vec<Bytes> {
        let mut v: Vec<Bytes> =
            self.tables()[kind as usize].keys().filter(|c| pattern.is_none_or(|p| crate::glob::matches(p, c))).cloned().collect();
        v.sort();
        v
    }

    /// `PUBSUB NUMSUB|SHARDNUMSUB`: subscribers of `channel` here.
    pub fn numsub(&self, kind: Kind, channel: &[u8]) -> usize {
        self.tables()[kind as usize].get(channel).map_or(0, HashMap::len)
    }

    /// Channels, patterns and shard channels with a subscriber here (INFO, `PUBSUB NUMPAT`).
    pub fn counts(&self) -> [usize; 3] {
        let t = self.tables();
        [t[0].len(), t[1].len(), t[2].len()]
    }

    /// Where `forward` sends to: set once the forwarding task runs.
    pub fn set_forward(&self, tx: mpsc::Sender<(Bytes, Bytes)>) {
        *self.forward.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }

    /// Queue a `PUBLISH` for every other server (dropped, and counted, if
    /// the queue is full: pub/sub promises at most once).
    pub fn forward(&self, channel: Bytes, payload: Bytes) {
        if self.peers.load(Ordering::Relaxed) == 0 {
            return;
        }
        let n = channel.len() + payload.len();
        let Some(tx) = self.forward.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
        if !self.take_forward_bytes(n) {
            return;
        }
        if tx.try_send((channel, payload)).is_err() {
            self.give_forward_bytes(n);
            self.forward_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Room for `n` more bytes of forwards, or the forward is dropped (counted).
    fn take_forward_bytes(&self, n: usize) -> bool {
        if self.forward_bytes.fetch_add(n, Ordering::AcqRel) + n > FORWARD_BYTES_MAX {
            self.forward_bytes.fetch_sub(n, Ordering::AcqRel);
            self.forward_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give_forward_bytes(&self, n: usize) {
        self.forward_bytes.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One connection's subscriptions, and its queue of messages. Dropped with
/// the connection (or at `RESET`): every subscription ends.
#[derive(Debug)]
pub struct Subscriber {
    hub: Arc<Hub>,
    id: u64,
    sink: Sink,
    rx: mpsc::UnboundedReceiver<Msg>,
    subs: [BTreeSet<Bytes>; 3],
}

impl Subscriber {
    /// Subscribe to each of `names`: the pushes that confirm them.
    pub fn subscribe(&mut self, kind: Kind, names: &[Bytes]) -> Vec<Reply> {
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if self.subs[kind as usize].insert(n.clone()) {
                self.hub.tables()[kind as usize].entry(n.clone()).or_default().insert(self.id, self.sink.clone());
            }
            out.push(self.confirm(kind.words().0, Reply::Bulk(n.clone()), kind));
        }
        out
    }

    /// Unsubscribe from each of `names`, or from all of `kind` if none are
    /// named: the pushes that confirm it (one with a null channel if there
    /// was nothing to end, as Redis answers).
    pub fn unsubscribe(&mut self, kind: Kind, names: &[Bytes]) -> Vec<Reply> {
        let names: Vec<Bytes> = if names.is_empty() { self.subs[kind as usize].iter().cloned().collect() } else { names.to_vec() };
        if names.is_empty() {
            return vec![self.confirm(kind.words().1, Reply::Null, kind)];
        }
        names
            .into_iter()
            .map(|n| {
                self.end(kind, &n);
                self.confirm(kind.words().1, Reply::Bulk(n), kind)
            })
            .collect()
    }

    fn end(&mut self, kind: Kind, name: &Bytes) {
        if self.subs[kind as usize].remove(name) {
            let mut t = self.hub.tables();
            if let Some(subs) = t[kind as usize].get_mut(name) {
                subs.remove(&self.id);
                if subs.is_empty() {
                    t[kind as usize].remove(name);
                }
            }
        }
    }

    /// `[word, name, count]`: the count is of channels and patterns, or
    /// of shard channels for a shard subscription (Redis's two counts).
    fn confirm(&self, word: &'static str, name: Reply, kind: Kind) -> Reply {
        let count = if kind == Kind::Shard { self.subs[2].len() } else { self.subs[0].len() + self.subs[1].len() };
        Reply::Push(vec![Reply::bulk(word), name, Reply::Int(count as i64)])
    }

    /// Subscribed to anything: in RESP2 the connection then takes only
    /// (un)subscriptions, PING, QUIT and RESET.
    pub fn active(&self) -> bool {
        self.subs.iter().any(|s| !s.is_empty())
    }

    /// Counts for `CLIENT LIST` (sub, psub, ssub).
    pub fn counts(&self) -> [usize; 3] {
        [self.subs[0].len(), self.subs[1].len(), self.subs[2].len()]
    }

    /// The shard channels subscribed to.
    pub fn shard_channels(&self) -> impl Iterator<Item = &Bytes> {
        self.subs[2].iter()
    }

    /// End the shard subscriptions `lost` names (their slot left this
    /// server): the `sunsubscribe` pushes.
    pub fn lose_shards(&mut self, lost: &[Bytes]) -> Vec<Reply> {
        lost.iter()
            .map(|n| {
                self.end(Kind::Shard, n);
                self.confirm("sunsubscribe", Reply::Bulk(n.clone()), Kind::Shard)
            })
            .collect()
    }

    /// The next message (waits).
    pub async fn recv(&mut self) -> Option<Msg> {
        let m = self.rx.recv().await?;
        self.sink.queued.fetch_sub(m.bytes(), Ordering::AcqRel);
        Some(m)
    }

    /// A message already queued, if any.
    pub fn try_recv(&mut self) -> Option<Msg> {
        let m = self.rx.try_recv().ok()?;
        self.sink.queued.fetch_sub(m.bytes(), Ordering::AcqRel);
        Some(m)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let mut t = self.hub.tables();
        for (table, names) in t.iter_mut().zip(&self.subs) {
            for n in names {
                if let Some(subs) = table.get_mut(n) {
                    subs.remove(&self.id);
                    if subs.is_empty() {
                        table.remove(n);
                    }
                }
            }
        }
    }
}

/// Forward queued `PUBLISH`es to every other server of the cluster: each
/// peer has a task of its own with its own queue, so a slow or dead one
/// delays nobody else's messages, and messages to one peer keep their order.
pub async fn forward_loop(shared: Arc<crate::ServerState>, mut rx: mpsc::Receiver<(Bytes, Bytes)>) {
    let hub = shared.controls.pubsub.clone();
    let mut peers: HashMap<String, mpsc::Sender<(Bytes, u64)>> = HashMap::new();
    let mut batch = bytes::BytesMut::new();
    // The other servers, read again only when the map changes; with none,
    // PUBLISH queues nothing (`Hub::forward`).
    let mut changes = shared.subscribe();
    let mut others: Vec<String> = Vec::new();
    let refresh = |others: &mut Vec<String>, peers: &mut HashMap<String, mpsc::Sender<(Bytes, u64)>>| {
        *others = shared.view().nodes().into_iter().filter(|n| n.name != shared.me.name).map(|n| n.addr()).collect();
        // A server gone from the map: its queue closes and its task ends.
        peers.retain(|a, _| others.contains(a));
        hub.peers.store(others.len(), Ordering::Relaxed);
    };
    refresh(&mut others, &mut peers);
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                refresh(&mut others, &mut peers);
                continue;
            }
        };
        // What else is queued goes out with it: one frame per peer.
        batch.clear();
        let mut count = 0u64;
        let mut next = Some(first);
        while let Some((channel, payload)) = next {
            hub.give_forward_bytes(channel.len() + payload.len());
            let args = [Bytes::from_static(b"SHAREDISK"), Bytes::from_static(b"PUBLISH"), channel, payload];
            Reply::Array(args.into_iter().map(Reply::Bulk).collect()).encode(2, &mut batch);
            count += 1;
            next = if batch.len() < PEER_WRITE_BYTES_MAX { rx.try_recv().ok() } else { None };
        }
        let frame = batch.split().freeze();
        for addr in &others {
            let tx = peers.entry(addr.clone()).or_insert_with(|| {
                let addr = addr.clone();
                let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
                tokio::spawn(forward_to(shared.clone(), addr, rx));
                tx
            });
            if !hub.take_forward_bytes(frame.len()) {
                hub.forward_dropped.fetch_add(count - 1, Ordering::Relaxed);
                continue;
            }
            if tx.try_send((frame.clone(), count)).is_err() {
                hub.give_forward_bytes(frame.len());
                hub.forward_dropped.fetch_add(count, Ordering::Relaxed);
            }
        }
    }
}

/// One peer's forwards, over one connection (logged in as a peer), made
/// again when it fails; a peer that cannot be reached is left alone for a
/// second (its forwards meanwhile dropped and counted). Its replies are
/// read and dropped; the end of the connection is noticed by the reader.
async fn forward_to(shared: Arc<crate::ServerState>, addr: String, mut rx: mpsc::Receiver<(Bytes, u64)>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const WAIT: std::time::Duration = std::time::Duration::from_secs(1);
    struct Link {
        w: tokio::io::WriteHalf<crate::peer::Stream>,
        reader: tokio::task::JoinHandle<()>,
    }
    impl Drop for Link {
        fn drop(&mut self) {
            // Both halves gone: the socket closes.
            self.reader.abort();
        }
    }
    let hub = shared.controls.pubsub.clone();
    let mut link: Option<Link> = None;
    let mut down_until: Option<tokio::time::Instant> = None;
    let mut batch = bytes::BytesMut::new();
    while let Some((frame, count)) = rx.recv().await {
        // What else is queued goes in the same write.
        batch.clear();
        batch.extend_from_slice(&frame);
        let mut frames = count;
        while batch.len() < PEER_WRITE_BYTES_MAX {
            let Ok((more, count)) = rx.try_recv() else { break };
            batch.extend_from_slice(&more);
            frames += count;
        }
        let n = batch.len();
        if link.as_ref().is_some_and(|l| l.reader.is_finished()) {
            link = None;
        }
        if link.is_none() && down_until.is_none_or(|t| tokio::time::Instant::now() >= t) {
            match tokio::time::timeout(WAIT, crate::peer::connect(&shared, &addr)).await {
                Ok(Some(s)) => {
                    let (mut r, w) = tokio::io::split(s);
                    let reader = tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
                    });
                    link = Some(Link { w, reader });
                    down_until = None;
                }
                _ => down_until = Some(tokio::time::Instant::now() + WAIT),
            }
        }
        let sent = match &mut link {
            Some(l) => matches!(
                tokio::time::timeout(WAIT, async {
                    l.w.write_all(&batch).await?;
                    l.w.flush().await
                })
                .await,
                Ok(Ok(()))
            ),
            None => false,
        };
        hub.give_forward_bytes(n);
        if !sent {
            link = None;
            hub.forward_dropped.fetch_add(frames, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> Arc<crate::cmd::ClientInfo> {
        Arc::new(crate::cmd::ClientInfo::new(1, "127.0.0.1:1".into(), "127.0.0.1:2".into(), -1))
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn confirm(r: &Reply) -> (String, Option<String>, i64) {
        let Reply::Push(v) = r else { panic!("{r:?}") };
        let text = |r: &Reply| match r {
            Reply::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        };
        let Reply::Int(n) = v[2] else { panic!("{r:?}") };
        (text(&v[0]).unwrap(), text(&v[1]), n)
    }

    #[tokio::test]
    async fn messages_reach_channel_and_pattern_subscribers_and_counts_follow() {
        let hub = Arc::new(Hub::default());
        let mut a = hub.subscriber(info());
        let mut p = hub.subscriber(info());
        let got: Vec<_> = a.subscribe(Kind::Channel, &[b("news"), b("news"), b("sport")]).iter().map(confirm).collect();
        assert_eq!(
            got,
            [
                ("subscribe".into(), Some("news".into()), 1),
                ("subscribe".into(), Some("news".into()), 1),
                ("subscribe".into(), Some("sport".into()), 2)
            ]
        );
        assert_eq!(confirm(&p.subscribe(Kind::Pattern, &[b("n*")])[0]), ("psubscribe".into(), Some("n*".into()), 1));
        assert_eq!(hub.publish(&b("news"), &b("hi"), false), 2, "the channel's subscriber and the pattern's");
        assert_eq!(hub.publish(&b("weather"), &b("x"), false), 0);
        assert_eq!(hub.publish(&b("news"), &b("shard?"), true), 0, "a shard message is for shard subscribers only");
        let m = a.recv().await.unwrap();
        assert_eq!((m.kind, &m.channel[..], &m.payload[..]), (Kind::Channel, &b"news"[..], &b"hi"[..]));
        let m = p.recv().await.unwrap();
        assert_eq!((m.kind, m.pattern.as_deref(), &m.channel[..]), (Kind::Pattern, Some(&b"n*"[..]), &b"news"[..]));
        assert!(a.try_recv().is_none() && p.try_recv().is_none());
        assert_eq!(hub.channels(Kind::Channel, None), [b("news"), b("sport")]);
        assert_eq!(hub.channels(Kind::Channel, Some(b"s*")), [b("sport")]);
        assert_eq!((hub.numsub(Kind::Channel, b"news"), hub.counts()), (1, [2, 1, 0]));
        // UNSUBSCRIBE without names ends them all; again, it says there was nothing.
        let ended: Vec<_> = a.unsubscribe(Kind::Channel, &[]).iter().map(confirm).collect();
        assert_eq!(ended, [("unsubscribe".into(), Some("news".into()), 1), ("unsubscribe".into(), Some("sport".into()), 0)]);
        assert_eq!(a.unsubscribe(Kind::Channel, &[]).iter().map(confirm).collect::<Vec<_>>(), [("unsubscribe".into(), None, 0)]);
        assert!(!a.active() && p.active());
        // A dropped subscriber leaves nothing behind.
        drop(p);
        assert_eq!(hub.counts(), [0, 0, 0]);
        assert_eq!(hub.publish(&b("news"), &b("hi"), false), 0);
    }

    #[tokio::test]
    async fn a_subscriber_past_its_output_limit_is_disconnected() {
        let hub = Arc::new(Hub::default());
        hub.limit.store(10_000, Ordering::Relaxed);
        let who = info();
        let mut slow = hub.subscriber(who.clone());
        slow.subscribe(Kind::Channel, &[b("c")]);
        let payload = Bytes::from(vec![b'x'; 1000]);
        let delivered: usize = (0..20).map(|_| hub.publish(&b("c"), &payload, false)).sum();
        assert_eq!(delivered, 9, "1033 bytes a message, 10 000 allowed");
        assert!(who.is_killed(), "closed, as Redis closes a pub/sub client past its hard limit");
        assert_eq!(hub.disconnected.load(Ordering::Relaxed), 1);
        // What it was sent is still readable, and reading gives its budget back.
        let mut n = 0;
        while slow.try_recv().is_some() {
            n += 1;
        }
        assert_eq!(n, delivered);
        assert_eq!(slow.sink.queued.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn shard_subscriptions_count_apart_and_end_when_their_slot_leaves() {
        let hub = Arc::new(Hub::default());
        let mut s = hub.subscriber(info());
        s.subscribe(Kind::Channel, &[b("a")]);
        assert_eq!(confirm(&s.subscribe(Kind::Shard, &[b("{x}1"), b("{x}2")])[1]), ("ssubscribe".into(), Some("{x}2".into()), 2));
        assert_eq!(hub.publish(&b("{x}1"), &b("m"), true), 1);
        let lost = s.lose_shards(&[b("{x}1")]);
        assert_eq!(confirm(&lost[0]), ("sunsubscribe".into(), Some("{x}1".into()), 1));
        assert_eq!(hub.channels(Kind::Shard, None), [b("{x}2")]);
        assert_eq!(s.counts(), [1, 0, 1]);
    }
}
