//! The Redis Cluster view of the lock manager's map: `CLUSTER SLOTS`,
//! `NODES`, `SHARDS`, `INFO`, and node ids.
//!
//! Every server renders the same map (the lock manager pushes it to all), so
//! they agree on owners. A partition without an owner (being fenced, or not
//! granted yet) is shown as served by the answering server: clients need full
//! coverage (redis-py refuses a map with holes), and that server holds such
//! requests until an owner appears, then answers `-MOVED` or `-CLUSTERDOWN`.

use sharedisk_lockmgr::core::{ClusterMap, slot_range};

use crate::resp::Reply;

/// A server as clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub id: String,
    pub host: String,
    pub port: u16,
}

impl Node {
    pub fn new(name: &str, addr: &str) -> Node {
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "0"));
        Node { name: name.to_owned(), id: node_id(name), host: host.to_owned(), port: port.parse().unwrap_or(0) }
    }
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A stable 40-hex-digit node id derived from the server's name, so it
/// survives restarts (redis-benchmark matches ids across refreshes).
pub fn node_id(name: &str) -> String {
    (0u32..5).map(|i| format!("{:08x}", crc32c::crc32c_append(0x5d5d_0000 ^ i.wrapping_mul(0x9e37_79b9), name.as_bytes()))).collect()
}

/// The slot map as this server renders it.
#[derive(Clone, Debug)]
pub struct ClusterView {
    pub me: Node,
    pub map: ClusterMap,
    pub partitions: u32,
}

impl ClusterView {
    /// Nodes in map order, with this server added if it is not in the map yet.
    pub fn nodes(&self) -> Vec<Node> {
        let mut v: Vec<Node> = self.map.servers.iter().map(|s| Node::new(&s.id, &s.addr)).collect();
        if !v.iter().any(|n| n.name == self.me.name) {
            v.push(self.me.clone());
        }
        v
    }

    /// The node shown as serving `partition` (see the module doc).
    fn shown_owner(&self, partition: u32, nodes: &[Node]) -> usize {
        let owner = self.map.owners.get(partition as usize).copied().flatten();
        match owner.and_then(|i| self.map.servers.get(i as usize)) {
            Some(s) => nodes.iter().position(|n| n.name == s.id).unwrap_or(0),
            None => nodes.iter().position(|n| n.name == self.me.name).unwrap_or(0),
        }
    }

    /// Contiguous slot ranges with their node index, ascending.
    pub fn ranges(&self) -> (Vec<Node>, Vec<(u32, u32, usize)>) {
        let nodes = self.nodes();
        let mut out: Vec<(u32, u32, usize)> = Vec::new();
        for p in 0..self.partitions {
            let [first, last] = slot_range(p, self.partitions);
            let n = self.shown_owner(p, &nodes);
            match out.last_mut() {
                Some((_, l, o)) if *o == n && *l + 1 == first => *l = last,
                _ => out.push((first, last, n)),
            }
        }
        (nodes, out)
    }

    /// The owner the lock manager names for `partition`, if any.
    pub fn owner(&self, partition: u32) -> Option<Node> {
        let i = self.map.owners.get(partition as usize).copied().flatten()?;
        self.map.servers.get(i as usize).map(|s| Node::new(&s.id, &s.addr))
    }

    fn epoch_of(&self, node: &Node) -> u64 {
        let mut e = 0;
        for (p, o) in self.map.owners.iter().enumerate() {
            if o.and_then(|i| self.map.servers.get(i as usize)).is_some_and(|s| s.id == node.name) {
                e = e.max(self.map.tokens.get(p).copied().unwrap_or(0));
            }
        }
        e
    }

    pub fn slots_reply(&self) -> Reply {
        let (nodes, ranges) = self.ranges();
        Reply::Array(
            ranges
                .into_iter()
                .map(|(first, last, n)| {
                    let node = &nodes[n];
                    Reply::Array(vec![
                        Reply::Int(i64::from(first)),
                        Reply::Int(i64::from(last)),
                        Reply::Array(vec![
                            Reply::bulk(node.host.clone()),
                            Reply::Int(i64::from(node.port)),
                            Reply::bulk(node.id.clone()),
                            Reply::Map(vec![]),
                        ]),
                    ])
                })
                .collect(),
        )
    }

    /// `CLUSTER NODES` text: one line per node, each ending in '\n'.
    pub fn nodes_text(&self) -> String {
        let (nodes, ranges) = self.ranges();
        let mut s = String::new();
        for (i, n) in nodes.iter().enumerate() {
            let flags = if n.name == self.me.name { "myself,master" } else { "master" };
            let cport = u32::from(n.port) + 10000;
            s.push_str(&format!("{} {}:{}@{cport} {flags} - 0 0 {} connected", n.id, n.host, n.port, self.epoch_of(n)));
            for (first, last, _) in ranges.iter().filter(|r| r.2 == i) {
                if first == last {
                    s.push_str(&format!(" {first}"));
                } else {
                    s.push_str(&format!(" {first}-{last}"));
                }
            }
            s.push('\n');
        }
        s
    }

    pub fn shards_reply(&self) -> Reply {
        let (nodes, ranges) = self.ranges();
        let shard = |i: usize, n: &Node| {
            let slots = ranges.iter().filter(|r| r.2 == i).flat_map(|r| [Reply::Int(i64::from(r.0)), Reply::Int(i64::from(r.1))]).collect();
            let node = Reply::Map(vec![
                (Reply::bulk("id"), Reply::bulk(n.id.clone())),
                (Reply::bulk("port"), Reply::Int(i64::from(n.port))),
                (Reply::bulk("ip"), Reply::bulk(n.host.clone())),
                (Reply::bulk("endpoint"), Reply::bulk(n.host.clone())),
                (Reply::bulk("role"), Reply::bulk("master")),
                (Reply::bulk("replication-offset"), Reply::Int(0)),
                (Reply::bulk("health"), Reply::bulk("online")),
            ]);
            Reply::Map(vec![(Reply::bulk("slots"), Reply::Array(slots)), (Reply::bulk("nodes"), Reply::Array(vec![node]))])
        };
        Reply::Array(nodes.iter().enumerate().map(|(i, n)| shard(i, n)).collect())
    }

    pub fn info_text(&self) -> String {
        let owned = (0..self.partitions).filter(|p| self.owner(*p).is_some()).map(|p| {
            let [a, b] = slot_range(p, self.partitions);
            b - a + 1
        });
        let ok: u32 = owned.sum();
        let nodes = self.nodes();
        let epoch = self.map.tokens.iter().copied().max().unwrap_or(0);
        let state = if ok == 16384 { "ok" } else { "fail" };
        format!(
            "cluster_state:{state}\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:{ok}\r\ncluster_slots_pfail:0\r\n\
             cluster_slots_fail:{}\r\ncluster_known_nodes:{}\r\ncluster_size:{}\r\ncluster_current_epoch:{epoch}\r\n\
             cluster_my_epoch:{}\r\ncluster_stats_messages_sent:0\r\ncluster_stats_messages_received:0\r\n",
            16384 - ok,
            nodes.len(),
            nodes.len(),
            self.epoch_of(&self.me),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use sharedisk_lockmgr::core::MapServer;

    fn view(me: &str, owners: Vec<Option<u32>>) -> ClusterView {
        let servers = vec![
            MapServer { id: "s1".into(), addr: "127.0.0.1:7001".into() },
            MapServer { id: "s2".into(), addr: "127.0.0.1:7002".into() },
        ];
        let n = owners.len() as u32;
        ClusterView {
            me: Node::new(me, "127.0.0.1:7001"),
            map: ClusterMap { servers, tokens: vec![3; n as usize], owners, standbys: vec![None; n as usize] },
            partitions: n,
        }
    }

    #[test]
    fn node_ids_are_stable_40_hex_and_distinct() {
        let a = node_id("s1");
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(a, node_id("s1"));
        assert_ne!(a, node_id("s2"));
    }

    #[test]
    fn slots_merge_ranges_cover_everything_and_encode_like_redis() {
        let v = view("s1", vec![Some(0), Some(0), Some(1), None]);
        let (_, ranges) = v.ranges();
        // Partitions 0-1 merge; the unowned partition 3 is shown as served by us (s1).
        assert_eq!(ranges, vec![(0, 8191, 0), (8192, 12287, 1), (12288, 16383, 0)]);
        let mut out = BytesMut::new();
        v.slots_reply().encode(2, &mut out);
        let id1 = node_id("s1");
        let want_first = format!("*3\r\n*3\r\n:0\r\n:8191\r\n*4\r\n$9\r\n127.0.0.1\r\n:7001\r\n$40\r\n{id1}\r\n*0\r\n");
        assert!(out.starts_with(want_first.as_bytes()), "{:?}", String::from_utf8_lossy(&out));
        let text = v.nodes_text();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], format!("{id1} 127.0.0.1:7001@17001 myself,master - 0 0 3 connected 0-8191 12288-16383\n"));
        assert_eq!(lines[1], format!("{} 127.0.0.1:7002@17002 master - 0 0 3 connected 8192-12287\n", node_id("s2")));
        assert!(v.info_text().starts_with("cluster_state:fail\r\n"));
        assert!(view("s2", vec![Some(0); 4]).info_text().contains("cluster_slots_ok:16384\r\n"));
    }
}
