//! The hash commands (`HSET`, `HGET`, … `HSCAN`), with Redis's replies.
//!
//! A hash is stored as one record per field (storage's `Op::FieldPut` /
//! `FieldDel`, FORMAT.md "Hashes"): a command writes the fields it changes
//! and nothing else, whatever the hash holds. Reads go through the same
//! [`Txn`] layers as strings: the request's own writes, the cycle's staged
//! writes, what is published. Everything here is pure: time comes in the
//! `Txn`, randomness from a per-call seed.

use bytes::Bytes;

use crate::commands::{Command, Id, Published, Txn, Type, WRONGTYPE, format_f64, parse_f64, parse_i64, wrong_args};
use crate::resp::Reply;

const NOT_INT: &str = "ERR value is not an integer or out of range";

/// Run one hash command (its key is a hash or absent; `execute` checked).
pub fn execute<P: Published>(t: &mut Txn<'_, P>, cmd: &Command) -> Reply {
    let args = &cmd.args[..];
    let key = &args[1];
    if t.kind(key).is_some_and(|k| k != Type::Hash) {
        return Reply::error(WRONGTYPE);
    }
    match cmd.spec.id {
        Id::Hset | Id::Hmset => {
            if !args.len().is_multiple_of(2) {
                return wrong_args(cmd.spec.name);
            }
            let added = args[2..].chunks(2).filter(|fv| t.set_field(key, &fv[0], fv[1].clone())).count();
            if cmd.spec.id == Id::Hset { Reply::Int(added as i64) } else { Reply::ok() }
        }
        Id::Hsetnx => {
            if t.has_field(key, &args[2]) {
                return Reply::Int(0);
            }
            t.set_field(key, &args[2], args[3].clone());
            Reply::Int(1)
        }
        Id::Hget => t.field(key, &args[2]).map_or(Reply::Null, Reply::bulk),
        Id::Hmget => Reply::Array(args[2..].iter().map(|f| t.field(key, f).map_or(Reply::Null, Reply::bulk)).collect()),
        Id::Hgetall => Reply::Map(t.hash_entries(key, true).into_iter().map(|(f, v)| (Reply::bulk(f), Reply::bulk(v))).collect()),
        Id::Hkeys => Reply::Array(t.hash_entries(key, false).into_iter().map(|(f, _)| Reply::bulk(f)).collect()),
        Id::Hvals => Reply::Array(t.hash_entries(key, true).into_iter().map(|(_, v)| Reply::bulk(v)).collect()),
        Id::Hdel => Reply::Int(args[2..].iter().filter(|f| t.del_field(key, f)).count() as i64),
        Id::Hexists => Reply::Int(i64::from(t.has_field(key, &args[2]))),
        Id::Hlen => Reply::Int(t.field_count(key) as i64),
        Id::Hstrlen => Reply::Int(t.field(key, &args[2]).map_or(0, |v| v.len() as i64)),
        Id::Hincrby => {
            let Some(by) = parse_i64(&args[3]) else { return Reply::error(NOT_INT) };
            let cur = match t.field(key, &args[2]) {
                None => 0,
                Some(v) => match parse_i64(&v) {
                    Some(n) => n,
                    None => return Reply::error("ERR hash value is not an integer"),
                },
            };
            let Some(n) = cur.checked_add(by) else { return Reply::error("ERR increment or decrement would overflow") };
            t.set_field(key, &args[2], n.to_string().into());
            Reply::Int(n)
        }
        Id::Hincrbyfloat => {
            let Some(by) = parse_f64(&args[3]) else { return Reply::error("ERR value is not a valid float") };
            let cur = match t.field(key, &args[2]) {
                None => 0.0,
                Some(v) => match parse_f64(&v) {
                    Some(n) => n,
                    None => return Reply::error("ERR hash value is not a float"),
                },
            };
            let n = cur + by;
            if !n.is_finite() {
                return Reply::error("ERR value is NaN or Infinity");
            }
            let text = format_f64(n);
            t.set_field(key, &args[2], Bytes::from(text.clone()));
            Reply::bulk(text)
        }
        Id::Hrandfield => randfield(t, args),
        Id::Hscan => hscan(t, args),
        _ => Reply::error(format!("ERR command '{}' is not a hash command", cmd.spec.name)),
    }
}

/// A fresh random number per call.
fn random() -> u64 {
    use std::hash::BuildHasher;
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    foldhash::fast::RandomState::default().hash_one(CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// `HRANDFIELD key [count [WITHVALUES]]`: a positive count, distinct
/// fields (all of them if fewer); a negative one, that many, repeats
/// allowed; WITHVALUES, field-value pairs.
fn randfield<P: Published>(t: &mut Txn<'_, P>, args: &[Bytes]) -> Reply {
    let key = &args[1];
    if args.len() == 2 {
        let fields = t.hash_entries(key, false);
        if fields.is_empty() {
            return Reply::Null;
        }
        let i = (random() % fields.len() as u64) as usize;
        return Reply::bulk(fields[i].0.clone());
    }
    let with_values = match args.get(3) {
        None => false,
        Some(a) if a.eq_ignore_ascii_case(b"WITHVALUES") && args.len() == 4 => true,
        Some(_) => return Reply::error("ERR syntax error"),
    };
    let Some(count) = parse_i64(&args[2]) else { return Reply::error(NOT_INT) };
    // Redis's bound: a reply of twice |count| entries must be countable.
    if count < -(i64::MAX / 2) || (count.unsigned_abs() > crate::limits::REPLY_BYTES_MAX as u64 && count < 0) {
        return Reply::error("ERR value is out of range");
    }
    let fields = t.hash_entries(key, with_values);
    if fields.is_empty() || count == 0 {
        return Reply::Array(Vec::new());
    }
    let mut out = Vec::new();
    let mut push = |(f, v): (Vec<u8>, Bytes)| out.push((Reply::bulk(f), Reply::bulk(v)));
    if count < 0 {
        for _ in 0..count.unsigned_abs() {
            push(fields[(random() % fields.len() as u64) as usize].clone());
        }
    } else {
        // A partial Fisher–Yates shuffle: `count` distinct ones.
        let mut fields = fields;
        let n = (count as usize).min(fields.len());
        for i in 0..n {
            let j = i + (random() % (fields.len() - i) as u64) as usize;
            fields.swap(i, j);
        }
        fields.truncate(n);
        fields.into_iter().for_each(push);
    }
    if with_values { Reply::Pairs(out) } else { Reply::Array(out.into_iter().map(|(f, _)| f).collect()) }
}

/// Fields an `HSCAN` step returns at least, if `COUNT` does not say.
const HSCAN_COUNT_DEFAULT: usize = 10;

/// `HSCAN key cursor [MATCH pattern] [COUNT count]`: the fields whose
/// fixed hash (the `SCAN` order, `engine::scan_hash`) is at or above the
/// cursor, the `count` smallest, and every field sharing the largest hash
/// returned; the next cursor is that hash + 1 (0 when done). A field
/// present throughout a scan is returned, whatever is written meanwhile:
/// Redis's guarantee. Each step reads the hash's field names once.
fn hscan<P: Published>(t: &mut Txn<'_, P>, args: &[Bytes]) -> Reply {
    let Some(cursor) = std::str::from_utf8(&args[2]).ok().and_then(|s| s.parse::<u64>().ok()) else {
        return Reply::error("ERR invalid cursor");
    };
    let (mut pattern, mut count) = (None, HSCAN_COUNT_DEFAULT);
    let mut i = 3;
    while i < args.len() {
        let Some(value) = args.get(i + 1) else { return Reply::error("ERR syntax error") };
        match args[i].to_ascii_uppercase().as_slice() {
            b"MATCH" => pattern = Some(value.clone()),
            b"COUNT" => match parse_i64(value) {
                Some(n) if n >= 1 => count = n as usize,
                Some(_) => return Reply::error("ERR syntax error"),
                None => return Reply::error(NOT_INT),
            },
            _ => return Reply::error("ERR syntax error"),
        }
        i += 2;
    }
    let key = &args[1];
    let mut names: Vec<(u64, Vec<u8>)> = t
        .hash_entries(key, false)
        .into_iter()
        .map(|(f, _)| (crate::engine::core::scan_hash(&f), f))
        .filter(|(h, _)| *h >= cursor)
        .collect();
    names.sort_unstable();
    let next = if names.len() > count {
        let last = names[count - 1].0;
        let end = names.iter().position(|(h, _)| *h > last).unwrap_or(names.len());
        let more = end < names.len();
        names.truncate(end);
        if more { last + 1 } else { 0 }
    } else {
        0
    };
    let mut out = Vec::with_capacity(names.len() * 2);
    for (_, f) in names {
        if pattern.as_ref().is_some_and(|p| !crate::glob::matches(p, &f)) {
            continue;
        }
        let Some(v) = t.field(key, &f) else { continue };
        out.push(Reply::bulk(f));
        out.push(Reply::bulk(v));
    }
    Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(out)])
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use sharedisk_storage::{CreateOptions, Partition, ProcessIdentity, Volume};

    use crate::commands::{Command, Overlay, Txn, execute};
    use crate::engine::core::Committed;
    use crate::resp::Reply;

    /// A claimed partition of small segments (the cleaner runs often).
    fn partition() -> (Arc<Volume>, Partition) {
        let opts = CreateOptions { segment_bytes: 16 << 10, ..CreateOptions::new(4 << 20, 1) };
        let vol = Arc::new(Volume::create_in_memory(&opts, None).unwrap().0);
        let reg = vol.register(1, ProcessIdentity::current()).unwrap();
        let p = Partition::claim(vol.clone(), reg, 0).unwrap();
        (vol, p)
    }

    fn cmd(line: &str) -> Command {
        Command::parse(line.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()).unwrap()
    }

    /// Run each line as one request in one cycle (each sees the ones before
    /// through the staged overlay), then publish and commit them together.
    fn cycle(p: &mut Partition, now: u64, lines: &[&str]) -> Vec<Reply> {
        let mut staged = Overlay::new();
        let mut replies = Vec::new();
        let mut ops = Vec::new();
        for line in lines {
            let view = Committed(p);
            let mut t = Txn::new(&view, &staged, now);
            replies.push(execute(&mut t, &cmd(line)));
            let (own, mine) = t.into_writes();
            staged.extend(own);
            ops.extend(mine);
        }
        if !ops.is_empty() {
            p.append(&ops, now).unwrap();
            p.commit().unwrap();
        }
        replies
    }

    fn run(p: &mut Partition, now: u64, line: &str) -> Reply {
        cycle(p, now, &[line]).pop().unwrap()
    }

    fn b(s: &str) -> Reply {
        Reply::bulk(s.to_owned())
    }

    fn sorted(r: Reply) -> Vec<Reply> {
        let mut items = match r {
            Reply::Array(items) => items,
            Reply::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            other => panic!("not an array: {other:?}"),
        };
        items.sort_by_key(|r| format!("{r:?}"));
        items
    }

    #[test]
    fn hash_commands_answer_as_redis_documents() {
        let (_vol, mut p) = partition();
        let p = &mut p;
        assert_eq!(run(p, 0, "HSET h a 1 b 2"), Reply::Int(2));
        assert_eq!(run(p, 0, "HSET h a 10 c 3"), Reply::Int(1));
        assert_eq!(run(p, 0, "HGET h a"), b("10"));
        assert_eq!(run(p, 0, "HGET h zz"), Reply::Null);
        assert_eq!(run(p, 0, "HGET nohash a"), Reply::Null);
        assert_eq!(run(p, 0, "HMGET h a zz c"), Reply::Array(vec![b("10"), Reply::Null, b("3")]));
        assert_eq!(run(p, 0, "HLEN h"), Reply::Int(3));
        assert_eq!(run(p, 0, "HLEN nohash"), Reply::Int(0));
        assert_eq!(sorted(run(p, 0, "HGETALL h")), sorted(Reply::Array(vec![b("a"), b("10"), b("b"), b("2"), b("c"), b("3")])));
        assert_eq!(sorted(run(p, 0, "HKEYS h")), vec![b("a"), b("b"), b("c")]);
        assert_eq!(sorted(run(p, 0, "HVALS h")), vec![b("10"), b("2"), b("3")]);
        assert_eq!(run(p, 0, "HEXISTS h b"), Reply::Int(1));
        assert_eq!(run(p, 0, "HEXISTS h zz"), Reply::Int(0));
        assert_eq!(run(p, 0, "HSTRLEN h a"), Reply::Int(2));
        assert_eq!(run(p, 0, "HSETNX h a 99"), Reply::Int(0));
        assert_eq!(run(p, 0, "HSETNX h d 4"), Reply::Int(1));
        assert_eq!(run(p, 0, "HMSET h e 5 f 6"), Reply::ok());
        assert_eq!(run(p, 0, "HINCRBY h a 5"), Reply::Int(15));
        assert_eq!(run(p, 0, "HINCRBY h new -3"), Reply::Int(-3));
        assert_eq!(run(p, 0, "HINCRBY h a x"), Reply::error("ERR value is not an integer or out of range"));
        run(p, 0, "HSET h text hello");
        assert_eq!(run(p, 0, "HINCRBY h text 1"), Reply::error("ERR hash value is not an integer"));
        assert_eq!(run(p, 0, "HINCRBYFLOAT h f 1.5"), b("7.5"));
        assert_eq!(run(p, 0, "HINCRBYFLOAT h text 1"), Reply::error("ERR hash value is not a float"));
        assert_eq!(run(p, 0, "HINCRBYFLOAT h f inf"), Reply::error("ERR value is NaN or Infinity"));
        run(p, 0, "HSET h big 9223372036854775807");
        assert_eq!(run(p, 0, "HINCRBY h big 1"), Reply::error("ERR increment or decrement would overflow"));
        assert_eq!(run(p, 0, "HDEL h a zz b"), Reply::Int(2));
        assert_eq!(run(p, 0, "TYPE h"), Reply::Simple("hash".into()));
        assert_eq!(run(p, 0, "EXISTS h"), Reply::Int(1));
        assert_eq!(run(p, 0, "OBJECT ENCODING h"), b("hashtable"));
        assert_eq!(run(p, 0, "HSET h a 1 odd"), crate::commands::wrong_args("hset"));
        // The last field's removal removes the key.
        run(p, 0, "HSET two x 1 y 2");
        assert_eq!(run(p, 0, "HDEL two x y"), Reply::Int(2));
        assert_eq!(run(p, 0, "EXISTS two"), Reply::Int(0));
        assert_eq!(run(p, 0, "TYPE two"), Reply::Simple("none".into()));
        assert!(!p.keyspace().holds(b"two"), "an empty hash was left in the index");
    }

    #[test]
    fn types_are_kept_apart() {
        let (_vol, mut p) = partition();
        let p = &mut p;
        let wrong = Reply::error(super::WRONGTYPE);
        run(p, 0, "SET s v");
        run(p, 0, "HSET h f v");
        for line in ["HSET s f v", "HGET s f", "HGETALL s", "HLEN s", "HDEL s f", "HINCRBY s f 1", "HSCAN s 0"] {
            assert_eq!(run(p, 0, line), wrong, "{line}");
        }
        for line in
            ["GET h", "APPEND h x", "INCR h", "STRLEN h", "GETRANGE h 0 1", "SETRANGE h 0 x", "GETDEL h", "GETSET h x", "SET h x GET"]
        {
            assert_eq!(run(p, 0, line), wrong, "{line}");
        }
        assert_eq!(run(p, 0, "MGET s h"), Reply::Array(vec![b("v"), Reply::Null]));
        assert_eq!(run(p, 0, "SETNX h x"), Reply::Int(0));
        assert_eq!(run(p, 0, "HGET h f"), b("v"));
        // SET replaces a hash, as in Redis; a DEL removes it.
        assert_eq!(run(p, 0, "SET h plain"), Reply::ok());
        assert_eq!(run(p, 0, "GET h"), b("plain"));
        assert_eq!(run(p, 0, "HSET h2 f v"), Reply::Int(1));
        assert_eq!(run(p, 0, "DEL h2 s"), Reply::Int(2));
        assert_eq!(run(p, 0, "HGET h2 f"), Reply::Null);
        assert_eq!(run(p, 0, "HSET h2 g w"), Reply::Int(1), "a deleted hash came back with its fields");
        assert_eq!(run(p, 0, "HGETALL h2"), Reply::Map(vec![(b("g"), b("w"))]));
    }

    #[test]
    fn expiry_rename_and_copy_of_a_hash() {
        let (_vol, mut p) = partition();
        let p = &mut p;
        run(p, 1000, "HSET h a 1 b 2");
        assert_eq!(run(p, 1000, "TTL h"), Reply::Int(-1));
        assert_eq!(run(p, 1000, "EXPIRE h 10"), Reply::Int(1));
        assert_eq!(run(p, 1000, "PTTL h"), Reply::Int(10_000));
        // A field write keeps the key's expiry.
        run(p, 2000, "HSET h c 3");
        assert_eq!(run(p, 2000, "PEXPIRETIME h"), Reply::Int(11_000));
        assert_eq!(run(p, 2000, "RENAME h r"), Reply::ok());
        assert_eq!(run(p, 2000, "EXISTS h"), Reply::Int(0));
        assert_eq!(run(p, 2000, "PEXPIRETIME r"), Reply::Int(11_000));
        assert_eq!(sorted(run(p, 2000, "HGETALL r")), sorted(Reply::Array(vec![b("a"), b("1"), b("b"), b("2"), b("c"), b("3")])));
        assert_eq!(run(p, 2000, "COPY r c"), Reply::Int(1));
        run(p, 2000, "HSET c only-in-copy 1");
        assert_eq!(run(p, 2000, "HLEN c"), Reply::Int(4));
        assert_eq!(run(p, 2000, "HLEN r"), Reply::Int(3));
        assert_eq!(run(p, 2000, "PERSIST c"), Reply::Int(1));
        assert_eq!(run(p, 2000, "TTL c"), Reply::Int(-1));
        // Expired: gone, and a new hash there starts empty.
        assert_eq!(run(p, 12_000, "EXISTS r"), Reply::Int(0));
        assert_eq!(run(p, 12_000, "HGET r a"), Reply::Null);
        assert_eq!(run(p, 12_000, "HSET r z 26"), Reply::Int(1));
        assert_eq!(run(p, 12_000, "HGETALL r"), Reply::Map(vec![(b("z"), b("26"))]));
        assert_eq!(run(p, 12_000, "TTL r"), Reply::Int(-1));
        // An expiry in the past deletes.
        assert_eq!(run(p, 12_000, "PEXPIREAT c 1"), Reply::Int(1));
        assert_eq!(run(p, 12_000, "EXISTS c"), Reply::Int(0));
    }

    /// Requests of one cycle see each other's field writes through the
    /// staged overlay, and what they publish together equals what they
    /// would have published one cycle each.
    #[test]
    fn writes_within_a_cycle_layer_field_by_field() {
        let (_vol, mut p) = partition();
        run(&mut p, 0, "HSET h a 1 b 2");
        let replies = cycle(
            &mut p,
            0,
            &["HSET h c 3", "HDEL h a", "HLEN h", "HGETALL h", "HINCRBY h b 5", "DEL h", "HSET h x 9", "HLEN h", "HGET h b"],
        );
        assert_eq!(replies[0], Reply::Int(1));
        assert_eq!(replies[1], Reply::Int(1));
        assert_eq!(replies[2], Reply::Int(2));
        assert_eq!(sorted(replies[3].clone()), sorted(Reply::Array(vec![b("b"), b("2"), b("c"), b("3")])));
        assert_eq!(replies[4], Reply::Int(7));
        assert_eq!(replies[5], Reply::Int(1));
        assert_eq!((&replies[6], &replies[7], &replies[8]), (&Reply::Int(1), &Reply::Int(1), &Reply::Null));
        assert_eq!(run(&mut p, 0, "HGETALL h"), Reply::Map(vec![(b("x"), b("9"))]));
    }

    /// A cleaner relocating fields of a hash whose fields are rewritten
    /// again and again, and a reclaim (recovery) after it: every field as written.
    #[test]
    fn a_hash_survives_the_cleaner_and_recovery() {
        let (vol, mut p) = partition();
        let mut model = std::collections::BTreeMap::new();
        let first = p.chain().next().map(|c| c.segment);
        for round in 0..3000u32 {
            let f = round % 37;
            let v = format!("{round}-{}", "x".repeat(300));
            run(&mut p, 0, &format!("HSET big f{f} {v}"));
            model.insert(format!("f{f}"), v);
            if round % 5 == 0 {
                run(&mut p, 0, &format!("SET pad{round} {}", "p".repeat(2000)));
                run(&mut p, 0, &format!("DEL pad{round}"));
            }
        }
        let check = |p: &mut Partition| {
            assert_eq!(run(p, 0, "HLEN big"), Reply::Int(model.len() as i64));
            for (f, v) in &model {
                assert_eq!(run(p, 0, &format!("HGET big {f}")), b(v), "{f}");
            }
        };
        assert_ne!(p.chain().next().map(|c| c.segment), first, "the cleaner never ran");
        check(&mut p);
        drop(p);
        let reg = vol.register(2, ProcessIdentity::current()).unwrap();
        let mut q = Partition::claim(vol.clone(), reg, 0).unwrap();
        check(&mut q);
    }

    /// The issue's bound: one HSET into a hash of a million fields changes
    /// about that one field's record on the volume (counted at the media
    /// seam: the bytes that differ before and after), not the hash.
    #[test]
    fn one_field_written_into_a_million_field_hash_costs_one_field() {
        let opts = CreateOptions::new(256 << 20, 1);
        let (vol, media) = Volume::create_in_memory(&opts, None).unwrap();
        let vol = Arc::new(vol);
        let reg = vol.register(1, ProcessIdentity::current()).unwrap();
        let mut p = Partition::claim(vol.clone(), reg, 0).unwrap();
        for batch in 0..100u32 {
            let ops: Vec<_> = (0..10_000u32)
                .map(|i| sharedisk_storage::Op::FieldPut {
                    key: b"big".to_vec(),
                    field: format!("field{}", batch * 10_000 + i).into_bytes(),
                    value: Bytes::from_static(b"12345678"),
                })
                .collect();
            p.append(&ops, 0).unwrap();
            p.commit().unwrap();
        }
        assert_eq!(run(&mut p, 0, "HLEN big"), Reply::Int(1_000_000));
        let live = p.live_bytes();
        let before = media.snapshot();
        assert_eq!(run(&mut p, 0, "HSET big field17 changed"), Reply::Int(0));
        let after = media.snapshot();
        // Page by page (a memcmp each), then word by word in the pages that differ.
        let changed: usize = before
            .chunks(4096)
            .zip(after.chunks(4096))
            .filter(|(a, b)| a != b)
            .map(|(a, b)| a.chunks(8).zip(b.chunks(8)).filter(|(x, y)| x != y).count() * 8)
            .sum();
        let record =
            sharedisk_storage::Op::FieldPut { key: b"big".to_vec(), field: b"field17".to_vec(), value: Bytes::from_static(b"changed") }
                .encoded_bytes();
        println!("one HSET into a million-field hash of {live} bytes changed {changed} bytes (its record: {record})");
        assert!(changed <= record + 64, "one HSET changed {changed} bytes of the volume (its record: {record}; the hash: {live})");
        assert!(live > 50_000_000, "the hash holds {live} bytes");
        assert_eq!(run(&mut p, 0, "HGET big field17"), b("changed"));
    }

    #[test]
    fn hscan_returns_every_field_once_and_hrandfield_follows_its_count() {
        let (_vol, mut p) = partition();
        let fields: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
        run(&mut p, 0, &format!("HSET h {}", fields.iter().map(|f| format!("{f} v{f}")).collect::<Vec<_>>().join(" ")));
        let mut seen = Vec::new();
        let mut cursor = "0".to_owned();
        for step in 0.. {
            assert!(step < 100, "HSCAN did not end");
            let Reply::Array(parts) = run(&mut p, 0, &format!("HSCAN h {cursor} COUNT 7")) else { panic!() };
            let [Reply::Bulk(next), Reply::Array(items)] = &parts[..] else { panic!("{parts:?}") };
            for pair in items.chunks(2) {
                let (Reply::Bulk(f), Reply::Bulk(v)) = (&pair[0], &pair[1]) else { panic!() };
                assert_eq!(&v[..], [b"v", &f[..]].concat().as_slice());
                seen.push(String::from_utf8(f.to_vec()).unwrap());
            }
            cursor = String::from_utf8(next.to_vec()).unwrap();
            if cursor == "0" {
                break;
            }
        }
        seen.sort();
        let mut want = fields.clone();
        want.sort();
        assert_eq!(seen, want);
        let Reply::Array(m) = run(&mut p, 0, "HSCAN h 0 MATCH f1* COUNT 1000") else { panic!() };
        assert!(matches!(&m[1], Reply::Array(items) if items.len() == 2 * 11), "{m:?}");
        let Reply::Array(r) = run(&mut p, 0, "HRANDFIELD h 500") else { panic!() };
        assert_eq!(r.len(), 100, "a positive count returns each field at most once");
        let Reply::Pairs(r) = run(&mut p, 0, "HRANDFIELD h -500 WITHVALUES") else { panic!() };
        assert_eq!(r.len(), 500, "a negative count returns that many, with values");
        assert_eq!(run(&mut p, 0, "HRANDFIELD nohash"), Reply::Null);
        assert_eq!(run(&mut p, 0, "HRANDFIELD h 0"), Reply::Array(vec![]));
    }
}
