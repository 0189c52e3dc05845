//! The Redis Cluster view of the lock manager's map: `CLUSTER SLOTS`,
//! `NODES`, `SHARDS`, `INFO`, and node ids.
//!
//! Every server renders the same map (the lock manager pushes it to all), so
//! they agree on owners. A partition without an owner (being fenced, or not
//! granted yet) is shown as served by the answering server: clients need full
//! coverage (redis-py refuses a map with holes), and that server holds such
//! requests until an owner appears, then answers `-MOVED` or `-CLUSTERDOWN`.
//!
//! A partition's hot standby is shown as a replica of its owner: after the
//! owner in `CLUSTER SLOTS`, as a replica member of its shard in `CLUSTER
//! SHARDS`, and as a replica line in `CLUSTER NODES`. A Redis replica
//! follows one master, while each of our servers owns some partitions and
//! keeps standbys of others; so ranges and shards are cut per (owner,
//! standby) pair, and `NODES`, whose lines have one role each, gets one
//! replica line per pair with an id of its own ([`replica_id`]).

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

/// The id of the replica line `CLUSTER NODES` shows for the standbys that
/// server `standby` keeps of server `owner`'s partitions.
pub fn replica_id(standby: &str, owner: &str) -> String {
    node_id(&format!("{standby}\0standby-of\0{owner}"))
}

/// The cluster-bus port shown (we have no bus; tools expect a number).
fn cport(n: &Node) -> u32 {
    u32::from(n.port) + 10000
}

/// Slots `first..=last`, served by node `owner`, with node `replica`
/// keeping their hot standby (indexes into [`ClusterView::nodes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub first: u32,
    pub last: u32,
    pub owner: usize,
    pub replica: Option<usize>,
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

    /// The node keeping `partition`'s hot standby, shown as a replica of
    /// its owner (none while the partition has no owner in the map).
    fn shown_replica(&self, partition: u32, nodes: &[Node], owner: usize) -> Option<usize> {
        self.owner(partition)?;
        let s = self.standby_of(partition)?;
        nodes.iter().position(|n| n.name == s.name).filter(|r| *r != owner)
    }

    /// Contiguous slot ranges with the same owner and replica, ascending.
    pub fn ranges(&self) -> (Vec<Node>, Vec<Range>) {
        let nodes = self.nodes();
        let mut out: Vec<Range> = Vec::new();
        for p in 0..self.partitions {
            let [first, last] = slot_range(p, self.partitions);
            let owner = self.shown_owner(p, &nodes);
            let replica = self.shown_replica(p, &nodes, owner);
            match out.last_mut() {
                Some(r) if r.owner == owner && r.replica == replica && r.last + 1 == first => r.last = last,
                _ => out.push(Range { first, last, owner, replica }),
            }
        }
        (nodes, out)
    }

    /// The owner the lock manager names for `partition`, if any.
    pub fn owner(&self, partition: u32) -> Option<Node> {
        let i = self.map.owners.get(partition as usize).copied().flatten()?;
        self.map.servers.get(i as usize).map(|s| Node::new(&s.id, &s.addr))
    }

    /// Whether every server in the map serves within one partition of every
    /// other (and every partition has an owner).
    pub fn balanced(&self) -> bool {
        let mut loads = vec![0usize; self.map.servers.len()];
        for o in &self.map.owners {
            match o.and_then(|i| loads.get_mut(i as usize)) {
                Some(l) => *l += 1,
                None => return false,
            }
        }
        loads.iter().max().unwrap_or(&0) - loads.iter().min().unwrap_or(&0) <= 1
    }

    /// The server keeping `partition`'s hot standby, if the map names one
    /// other than its owner.
    pub fn standby_of(&self, partition: u32) -> Option<Node> {
        let i = self.map.standbys.get(partition as usize).copied().flatten()?;
        let s = self.map.servers.get(i as usize)?;
        (self.map.owners.get(partition as usize).copied().flatten() != Some(i)).then(|| Node::new(&s.id, &s.addr))
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
        let entry = |n: &Node| {
            Reply::Array(vec![Reply::bulk(n.host.clone()), Reply::Int(i64::from(n.port)), Reply::bulk(n.id.clone()), Reply::Map(vec![])])
        };
        Reply::Array(
            ranges
                .into_iter()
                .map(|r| {
                    let mut v = vec![Reply::Int(i64::from(r.first)), Reply::Int(i64::from(r.last)), entry(&nodes[r.owner])];
                    v.extend(r.replica.map(|i| entry(&nodes[i])));
                    Reply::Array(v)
                })
                .collect(),
        )
    }

    /// `CLUSTER NODES` text: one line per node, each ending in '\n'. A line
    /// has one role, and our servers are masters of some partitions and
    /// standbys of others, so each (owner, standby) pair gets a replica
    /// line of its own: the standby's address, an id derived from both
    /// names ([`replica_id`]), the owner as its master.
    pub fn nodes_text(&self) -> String {
        let (nodes, ranges) = self.ranges();
        let mut s = String::new();
        for (i, n) in nodes.iter().enumerate() {
            let flags = if n.name == self.me.name { "myself,master" } else { "master" };
            s.push_str(&format!("{} {}:{}@{} {flags} - 0 0 {} connected", n.id, n.host, n.port, cport(n), self.epoch_of(n)));
            // The owner's slots, adjacent ranges (cut by their standbys) merged.
            let mut mine: Vec<(u32, u32)> = Vec::new();
            for r in ranges.iter().filter(|r| r.owner == i) {
                match mine.last_mut() {
                    Some((_, last)) if *last + 1 == r.first => *last = r.last,
                    _ => mine.push((r.first, r.last)),
                }
            }
            for (first, last) in mine {
                if first == last {
                    s.push_str(&format!(" {first}"));
                } else {
                    s.push_str(&format!(" {first}-{last}"));
                }
            }
            s.push('\n');
        }
        let mut pairs: Vec<(usize, usize)> = ranges.iter().filter_map(|r| Some((r.owner, r.replica?))).collect();
        pairs.sort_unstable();
        pairs.dedup();
        for (o, r) in pairs {
            let (owner, replica) = (&nodes[o], &nodes[r]);
            s.push_str(&format!(
                "{} {}:{}@{} slave {} 0 0 {} connected\n",
                replica_id(&replica.name, &owner.name),
                replica.host,
                replica.port,
                cport(replica),
                owner.id,
                self.epoch_of(owner)
            ));
        }
        s
    }

    /// `CLUSTER SHARDS`: one shard per (owner, standby) pair holding slots,
    /// its owner as master and the standby as replica; a server owning
    /// nothing is a shard of its own without slots.
    pub fn shards_reply(&self) -> Reply {
        let (nodes, ranges) = self.ranges();
        let node = |n: &Node, role: &str| {
            Reply::Map(vec![
                (Reply::bulk("id"), Reply::bulk(n.id.clone())),
                (Reply::bulk("port"), Reply::Int(i64::from(n.port))),
                (Reply::bulk("ip"), Reply::bulk(n.host.clone())),
                (Reply::bulk("endpoint"), Reply::bulk(n.host.clone())),
                (Reply::bulk("role"), Reply::bulk(role.to_owned())),
                (Reply::bulk("replication-offset"), Reply::Int(0)),
                (Reply::bulk("health"), Reply::bulk("online")),
            ])
        };
        // In the order of their first slots.
        let mut shards: Vec<(usize, Option<usize>)> = Vec::new();
        for r in &ranges {
            if !shards.contains(&(r.owner, r.replica)) {
                shards.push((r.owner, r.replica));
            }
        }
        shards.extend((0..nodes.len()).filter(|i| !ranges.iter().any(|r| r.owner == *i)).map(|i| (i, None)));
        Reply::Array(
            shards
                .into_iter()
                .map(|(o, rep)| {
                    let slots = ranges
                        .iter()
                        .filter(|r| r.owner == o && r.replica == rep)
                        .flat_map(|r| [Reply::Int(i64::from(r.first)), Reply::Int(i64::from(r.last))])
                        .collect();
                    let mut members = vec![node(&nodes[o], "master")];
                    members.extend(rep.map(|r| node(&nodes[r], "replica")));
                    Reply::Map(vec![(Reply::bulk("slots"), Reply::Array(slots)), (Reply::bulk("nodes"), Reply::Array(members))])
                })
                .collect(),
        )
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
        let n = owners.len();
        with_standbys(me, owners, vec![None; n])
    }

    fn with_standbys(me: &str, owners: Vec<Option<u32>>, standbys: Vec<Option<u32>>) -> ClusterView {
        let servers = vec![
            MapServer { id: "s1".into(), addr: "127.0.0.1:7001".into() },
            MapServer { id: "s2".into(), addr: "127.0.0.1:7002".into() },
        ];
        let n = owners.len() as u32;
        ClusterView {
            me: Node::new(me, "127.0.0.1:7001"),
            map: ClusterMap { servers, tokens: vec![3; n as usize], owners, standbys },
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
        let r = |first, last, owner| Range { first, last, owner, replica: None };
        assert_eq!(ranges, vec![r(0, 8191, 0), r(8192, 12287, 1), r(12288, 16383, 0)]);
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

    #[test]
    fn standbys_are_listed_as_replicas_of_their_owners() {
        let servers = ["s1", "s2", "s3"];
        let mut v = with_standbys("s1", vec![Some(0), Some(0), Some(1), None], vec![Some(1), Some(2), Some(0), Some(1)]);
        v.map.servers.push(MapServer { id: "s3".into(), addr: "127.0.0.1:7003".into() });
        let (nodes, ranges) = v.ranges();
        assert_eq!(nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), servers);
        // Partitions 0 and 1 have one owner but different standbys: two ranges.
        // An unowned partition shows no replica (its standby would only say MOVED).
        let r = |first, last, owner, replica| Range { first, last, owner, replica };
        assert_eq!(ranges, vec![r(0, 4095, 0, Some(1)), r(4096, 8191, 0, Some(2)), r(8192, 12287, 1, Some(0)), r(12288, 16383, 0, None)]);
        let mut out = BytesMut::new();
        v.slots_reply().encode(2, &mut out);
        let (id1, id2) = (node_id("s1"), node_id("s2"));
        let first = format!(
            "*4\r\n*4\r\n:0\r\n:4095\r\n*4\r\n$9\r\n127.0.0.1\r\n:7001\r\n$40\r\n{id1}\r\n*0\r\n*4\r\n$9\r\n127.0.0.1\r\n:7002\r\n$40\r\n{id2}\r\n*0\r\n"
        );
        assert!(out.starts_with(first.as_bytes()), "{:?}", String::from_utf8_lossy(&out));
        // NODES: three masters, then one replica line per (owner, standby) pair.
        let text = v.nodes_text();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert_eq!(lines[0], format!("{id1} 127.0.0.1:7001@17001 myself,master - 0 0 3 connected 0-8191 12288-16383\n"));
        assert_eq!(lines[3], format!("{} 127.0.0.1:7002@17002 slave {id1} 0 0 3 connected\n", replica_id("s2", "s1")));
        assert_eq!(lines[4], format!("{} 127.0.0.1:7003@17003 slave {id1} 0 0 3 connected\n", replica_id("s3", "s1")));
        assert_eq!(lines[5], format!("{} 127.0.0.1:7001@17001 slave {id2} 0 0 3 connected\n", replica_id("s1", "s2")));
        let ids: std::collections::BTreeSet<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(ids.len(), 6, "ids are distinct");
        // SHARDS: one per (owner, standby) pair with slots; s3 owns nothing.
        let Reply::Array(shards) = v.shards_reply() else { panic!() };
        assert_eq!(shards.len(), 5);
        let Reply::Map(first) = &shards[0] else { panic!() };
        assert_eq!(first[0].1, Reply::Array(vec![Reply::Int(0), Reply::Int(4095)]));
        let Reply::Array(members) = &first[1].1 else { panic!() };
        assert_eq!(members.len(), 2);
        let Reply::Map(replica) = &members[1] else { panic!() };
        assert!(
            replica.contains(&(Reply::bulk("role"), Reply::bulk("replica"))) && replica.contains(&(Reply::bulk("id"), Reply::bulk(id2)))
        );
    }
}
