//! A linearizability checker for histories of single-key register
//! operations (GET, SET, INCR, DEL), as recorded by fault tests.
//!
//! The algorithm is Wing & Gong's search with Lowe's memoization (the one
//! Porcupine and Knossos use), run per key (linearizability is compositional
//! over independent objects). An operation whose outcome the client does not
//! know (a timeout, a lost connection) has no return: it may take effect at
//! any point after its call, or never. Operations the server refused in a way
//! that guarantees they were not applied (`-MOVED`, `-CLUSTERDOWN`) are simply
//! not recorded; if one of them took effect anyway, some read sees a value
//! nothing wrote, and the check fails.

use std::collections::{BTreeMap, HashSet};

/// An operation on one key's integer register (None = the key is absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get,
    Set(i64),
    Incr,
    Del,
}

/// What the operation returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    /// GET: the value read.
    Value(Option<i64>),
    /// SET: OK.
    Ok,
    /// INCR: the new value.
    Int(i64),
    /// DEL: whether a key was deleted.
    Deleted(bool),
}

/// One operation of one client, with its invocation and completion times
/// (any monotonic clock; only their order matters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub client: u32,
    pub key: String,
    pub op: Op,
    pub call: u64,
    /// `None`: unknown outcome (it may or may not have happened, after `call`).
    pub ret: Option<(u64, Ret)>,
}

/// Why a history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// The key's operations, in call order.
    pub history: Vec<Entry>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "history of key {:?} is not linearizable:", self.key)?;
        for e in &self.history {
            match &e.ret {
                Some((t, r)) => writeln!(f, "  client {:>3} [{:>12} .. {:>12}] {:?} -> {:?}", e.client, e.call, t, e.op, r)?,
                None => writeln!(f, "  client {:>3} [{:>12} .. {:>12}] {:?} -> unknown", e.client, e.call, "?", e.op)?,
            }
        }
        Ok(())
    }
}

/// The register's transition: the new state if `ret` is consistent with
/// applying `op` to `state` (any `ret` is, when it is unknown).
fn step(state: Option<i64>, op: Op, ret: Option<Ret>) -> Option<Option<i64>> {
    let (next, expected) = match op {
        Op::Get => (state, Ret::Value(state)),
        Op::Set(v) => (Some(v), Ret::Ok),
        Op::Incr => {
            let n = state.unwrap_or(0).checked_add(1)?;
            (Some(n), Ret::Int(n))
        }
        Op::Del => (None, Ret::Deleted(state.is_some())),
    };
    match ret {
        Some(r) if r != expected => None,
        _ => Some(next),
    }
}

/// Check every key's history; the first violation found, if any.
pub fn check(entries: &[Entry]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for e in entries {
        by_key.entry(&e.key).or_default().push(e);
    }
    for (key, mut ops) in by_key {
        // A read whose outcome nobody learned constrains nothing.
        ops.retain(|e| e.ret.is_some() || e.op != Op::Get);
        if !check_key(&ops) {
            let mut history: Vec<Entry> = ops.into_iter().cloned().collect();
            history.sort_by_key(|e| e.call);
            return Err(Violation { key: key.to_owned(), history });
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
struct Node {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// Search states kept per key, at most: past it the check gives up, loudly
/// (a search that ran on would exhaust memory and say nothing: checking
/// linearizability is NP-complete, exponential in the operations of
/// unknown outcome, which stay callable to the end; a seed of the cluster
/// simulation with dozens of them on one key held 17 GB before the
/// simulation bounded them).
pub const STATES_MAX: usize = 4_000_000;

/// Wing & Gong with memoization over (linearized set, state).
fn check_key(ops: &[&Entry]) -> bool {
    let n = ops.len();
    if n == 0 {
        return true;
    }
    // Events: calls before returns at equal times (the permissive reading:
    // touching intervals count as concurrent). Unknown returns at +inf.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in ops.iter().enumerate() {
        events.push((e.call, true, i));
        events.push((e.ret.map_or(u64::MAX, |r| r.0.max(e.call)), false, i));
    }
    events.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    // A doubly linked list with a sentinel head at index 0.
    let head = 0;
    let mut nodes = vec![Node { op: usize::MAX, is_call: false, prev: 0, next: 1 }];
    let (mut call_node, mut ret_node) = (vec![0; n], vec![0; n]);
    for (k, &(_, is_call, i)) in events.iter().enumerate() {
        let idx = k + 1;
        nodes.push(Node { op: i, is_call, prev: idx - 1, next: if k + 1 < events.len() { idx + 1 } else { usize::MAX } });
        if is_call {
            call_node[i] = idx;
        } else {
            ret_node[i] = idx;
        }
    }
    let unlink = |nodes: &mut Vec<Node>, x: usize| {
        let (p, nx) = (nodes[x].prev, nodes[x].next);
        nodes[p].next = nx;
        if nx != usize::MAX {
            nodes[nx].prev = p;
        }
    };
    let relink = |nodes: &mut Vec<Node>, x: usize| {
        let (p, nx) = (nodes[x].prev, nodes[x].next);
        nodes[p].next = x;
        if nx != usize::MAX {
            nodes[nx].prev = x;
        }
    };
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<i64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<i64>)> = Vec::new();
    let mut state: Option<i64> = None;
    let mut cur = nodes[head].next;
    loop {
        if cur == usize::MAX {
            return true; // every event consumed
        }
        let node = nodes[cur];
        let e = ops[node.op];
        if !node.is_call && e.ret.is_none() {
            // Only unknown operations remain unlinearized: they may never have happened.
            return true;
        }
        if node.is_call {
            let i = node.op;
            if let Some(next) = step(state, e.op, e.ret.map(|r| r.1)) {
                linearized[i / 64] |= 1 << (i % 64);
                if cache.insert((linearized.clone(), next)) {
                    assert!(
                        cache.len() <= STATES_MAX,
                        "the linearizability check gave up after {STATES_MAX} states on key {:?}: {n} operations, {} of unknown outcome",
                        e.key,
                        ops.iter().filter(|o| o.ret.is_none()).count()
                    );
                    stack.push((i, state));
                    state = next;
                    unlink(&mut nodes, call_node[i]);
                    unlink(&mut nodes, ret_node[i]);
                    cur = nodes[head].next;
                    continue;
                }
                linearized[i / 64] &= !(1 << (i % 64));
            }
            cur = node.next;
        } else {
            // A completed operation is not linearized yet: undo the last choice.
            let Some((i, prev)) = stack.pop() else { return false };
            state = prev;
            linearized[i / 64] &= !(1 << (i % 64));
            relink(&mut nodes, ret_node[i]);
            relink(&mut nodes, call_node[i]);
            cur = nodes[call_node[i]].next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(client: u32, op: Op, call: u64, ret: Option<(u64, Ret)>) -> Entry {
        Entry { client, key: "k".into(), op, call, ret }
    }

    #[test]
    fn sequential_histories_follow_the_register() {
        let h = vec![
            e(1, Op::Get, 0, Some((1, Ret::Value(None)))),
            e(1, Op::Set(5), 2, Some((3, Ret::Ok))),
            e(1, Op::Incr, 4, Some((5, Ret::Int(6)))),
            e(1, Op::Get, 6, Some((7, Ret::Value(Some(6))))),
            e(1, Op::Del, 8, Some((9, Ret::Deleted(true)))),
            e(1, Op::Del, 10, Some((11, Ret::Deleted(false)))),
            e(1, Op::Incr, 12, Some((13, Ret::Int(1)))),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_fails() {
        let h = vec![
            e(1, Op::Set(1), 0, Some((1, Ret::Ok))),
            e(1, Op::Set(2), 2, Some((3, Ret::Ok))),
            e(2, Op::Get, 4, Some((5, Ret::Value(Some(1))))),
        ];
        let v = check(&h).unwrap_err();
        assert_eq!(v.key, "k");
        assert!(v.to_string().contains("not linearizable"));
    }

    #[test]
    fn a_lost_acknowledged_write_fails() {
        let h = vec![e(1, Op::Set(7), 0, Some((1, Ret::Ok))), e(2, Op::Get, 10, Some((11, Ret::Value(None))))];
        assert!(check(&h).is_err());
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // Set(1) and Set(2) overlap; readers after both may see either, but
        // two later sequential reads cannot see 2 then 1.
        let base = vec![e(1, Op::Set(1), 0, Some((10, Ret::Ok))), e(2, Op::Set(2), 1, Some((9, Ret::Ok)))];
        for v in [1, 2] {
            let mut h = base.clone();
            h.push(e(3, Op::Get, 11, Some((12, Ret::Value(Some(v))))));
            assert_eq!(check(&h), Ok(()), "final value {v}");
        }
        let mut h = base.clone();
        h.push(e(3, Op::Get, 11, Some((12, Ret::Value(Some(2))))));
        h.push(e(3, Op::Get, 13, Some((14, Ret::Value(Some(1))))));
        assert!(check(&h).is_err());
        // A read overlapping a write may see before or after.
        let h = vec![
            e(1, Op::Set(1), 0, Some((1, Ret::Ok))),
            e(2, Op::Set(2), 2, Some((6, Ret::Ok))),
            e(3, Op::Get, 3, Some((4, Ret::Value(Some(1))))),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn an_unknown_outcome_may_or_may_not_have_happened_but_only_after_its_call() {
        let unknown = e(1, Op::Set(9), 5, None);
        for seen in [None, Some(9)] {
            let h = vec![unknown.clone(), e(2, Op::Get, 6, Some((7, Ret::Value(seen))))];
            assert_eq!(check(&h), Ok(()), "{seen:?}");
        }
        // Not before its call.
        let h = vec![e(2, Op::Get, 0, Some((1, Ret::Value(Some(9))))), unknown.clone()];
        assert!(check(&h).is_err());
        // And once seen, it cannot be unseen.
        let h = vec![unknown, e(2, Op::Get, 6, Some((7, Ret::Value(Some(9))))), e(2, Op::Get, 8, Some((9, Ret::Value(None))))];
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_value_nobody_wrote_fails_which_catches_a_refused_write_that_took_effect() {
        // The client was told MOVED for Set(3) and did not record it; a read sees 3.
        let h = vec![e(1, Op::Set(1), 0, Some((1, Ret::Ok))), e(2, Op::Get, 5, Some((6, Ret::Value(Some(3)))))];
        assert!(check(&h).is_err());
    }

    #[test]
    fn an_increment_applied_twice_fails() {
        let h = vec![
            e(1, Op::Set(0), 0, Some((1, Ret::Ok))),
            e(1, Op::Incr, 2, Some((3, Ret::Int(1)))),
            e(2, Op::Get, 4, Some((5, Ret::Value(Some(2))))),
        ];
        assert!(check(&h).is_err());
        // With an unknown second increment it is fine.
        let mut ok = h.clone();
        ok.insert(2, e(3, Op::Incr, 2, None));
        assert_eq!(check(&ok), Ok(()));
    }

    #[test]
    fn reads_of_unknown_outcome_are_left_out_so_many_of_them_cost_nothing() {
        // Each could be linearized or not: 2^60 subsets of one state, were
        // they kept (the budget would then fail the check).
        let mut h = vec![e(1, Op::Set(1), 0, Some((1, Ret::Ok)))];
        for i in 0..60 {
            h.push(e(2 + i, Op::Get, 2 + u64::from(i), None));
        }
        h.push(e(99, Op::Get, 100, Some((101, Ret::Value(Some(1))))));
        assert_eq!(check(&h), Ok(()));
        h.push(e(99, Op::Get, 102, Some((103, Ret::Value(Some(2))))));
        assert!(check(&h).is_err());
    }

    #[test]
    fn keys_are_checked_independently_and_large_concurrent_histories_finish() {
        let mut h = Vec::new();
        // 8 clients x 60 overlapping increments on one key, results consistent with some order.
        let mut t = 0;
        let mut n = 0;
        for _round in 0..60 {
            for c in 0..8u32 {
                n += 1;
                h.push(Entry {
                    client: c,
                    key: "hot".into(),
                    op: Op::Incr,
                    call: t + u64::from(c),
                    ret: Some((t + 20 + u64::from(c), Ret::Int(n))),
                });
            }
            t += 10;
        }
        h.push(Entry { client: 0, key: "other".into(), op: Op::Get, call: 0, ret: Some((1, Ret::Value(None))) });
        assert_eq!(check(&h), Ok(()));
        // Break one result: no order explains it.
        let last = h.len() - 2;
        if let Some((t, _)) = h[last].ret {
            h[last].ret = Some((t, Ret::Int(10_000)));
        }
        assert_eq!(check(&h).unwrap_err().key, "hot");
    }

    /// Brute force: some permutation consistent with real time and the register.
    fn brute(h: &[Entry]) -> bool {
        fn go(h: &[Entry], used: &mut Vec<bool>, state: Option<i64>) -> bool {
            let definite_left = h.iter().zip(used.iter()).any(|(e, u)| !u && e.ret.is_some());
            if !definite_left {
                return true;
            }
            for i in 0..h.len() {
                if used[i] {
                    continue;
                }
                // i may go next only if no unused definite op returned before i was called.
                let blocked = h.iter().zip(used.iter()).any(|(o, u)| !u && o.ret.is_some_and(|r| r.0 < h[i].call));
                if blocked {
                    continue;
                }
                if let Some(next) = step(state, h[i].op, h[i].ret.map(|r| r.1)) {
                    used[i] = true;
                    if go(h, used, next) {
                        return true;
                    }
                    used[i] = false;
                }
            }
            false
        }
        go(h, &mut vec![false; h.len()], None)
    }

    #[test]
    fn agrees_with_brute_force_on_random_small_histories() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut pass, mut fail) = (0, 0);
        for _ in 0..6000 {
            let n = 1 + rnd(8) as usize;
            let mut h = Vec::new();
            for c in 0..n {
                let op = match rnd(4) {
                    0 => Op::Get,
                    1 => Op::Set(rnd(3) as i64),
                    2 => Op::Incr,
                    _ => Op::Del,
                };
                let call = rnd(20);
                let ret = match rnd(4) {
                    0 => None,
                    _ => {
                        let r = match op {
                            Op::Get => Ret::Value(if rnd(3) == 0 { None } else { Some(rnd(4) as i64) }),
                            Op::Set(_) => Ret::Ok,
                            Op::Incr => Ret::Int(rnd(4) as i64),
                            Op::Del => Ret::Deleted(rnd(2) == 0),
                        };
                        Some((call + rnd(10), r))
                    }
                };
                h.push(Entry { client: c as u32, key: "k".into(), op, call, ret });
            }
            let want = brute(&h);
            assert_eq!(check(&h).is_ok(), want, "{h:#?}");
            if want { pass += 1 } else { fail += 1 }
        }
        assert!(pass > 300 && fail > 300, "both verdicts exercised: {pass} pass, {fail} fail");
    }
}
