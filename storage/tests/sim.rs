//! Seeded simulation of the storage layer against a reference model.
//!
//! Each run interleaves, at random: registrations, claims (takeovers),
//! writes by owners and by fenced zombies, PREEMPTs, writers paused at the
//! fail points (between the last fence check and the stores, or before the
//! publication CAS) while others fence them and publish, kill -9 of single
//! writers, kill -9 of everything (the page cache survives) and power loss at
//! flush k (only the durable image survives). After every takeover and every
//! reboot the recovered partition must equal the model: every acknowledged
//! write present, nothing unpublished or fenced present, at most the one
//! group whose flush failed in doubt. Then `check` must find nothing.
//!
//! `SEED=n` replays one run; `SIM_RUNS=n` sets how many runs (default 100).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sharedisk_storage::media::MemMedia;
use sharedisk_storage::partition::{FAILPOINT_BEFORE_PUBLISH, FAILPOINT_BEFORE_STORES, PauseHook};
use sharedisk_storage::{CreateOptions, Error, Op, Partition, ProcessIdentity, Registration, Volume, check};
use sharedisk_testkit::Rng;

const PARTITIONS: u32 = 2;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
/// How often each fault really happened, over all runs: the simulation must
/// prove it exercised them, or it proves nothing.
static PAUSES_FENCED: AtomicU64 = AtomicU64::new(0);
static ZOMBIES_REFUSED: AtomicU64 = AtomicU64::new(0);
static POWER_LOSSES: AtomicU64 = AtomicU64::new(0);
static KILL_ALLS: AtomicU64 = AtomicU64::new(0);
static TAKEOVERS: AtomicU64 = AtomicU64::new(0);
static FULL: AtomicU64 = AtomicU64::new(0);
static COMMITS: AtomicU64 = AtomicU64::new(0);
static SINGLE_BARRIER_COMMITS: AtomicU64 = AtomicU64::new(0);
static TORN_COMMITS_DROPPED: AtomicU64 = AtomicU64::new(0);

/// A string's key, or a hash field as `key#field`, to its value.
type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// `key#field`: where the model keeps a hash's field.
fn field_key(key: &[u8], field: &[u8]) -> Vec<u8> {
    [key, b"#", field].concat()
}

fn apply(map: &mut Map, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Put { key, value, .. } => {
                map.insert(key.clone(), value.to_vec());
            }
            Op::Del { key } => {
                map.remove(key);
                let prefix = field_key(key, b"");
                map.retain(|k, _| !k.starts_with(&prefix));
            }
            Op::Clear => map.clear(),
            Op::FieldPut { key, field, value } => {
                map.insert(field_key(key, field), value.to_vec());
            }
            Op::FieldDel { key, field } => {
                map.remove(&field_key(key, field));
            }
            Op::PutLarge { .. } | Op::Expire { .. } => {
                unreachable!("the simulation writes no expiries; large puts are made inside the partition")
            }
        }
    }
}

/// What a partition holds, as the model keeps it.
fn contents(part: &Partition) -> Map {
    let mut out = Map::new();
    for k in part.keys() {
        if part.keyspace().fields(k, 0).is_some() {
            for (f, v) in part.field_values(k, 0).unwrap() {
                out.insert(field_key(k, &f), v);
            }
        } else {
            out.insert(k.to_vec(), part.value(k, 0).unwrap());
        }
    }
    out
}

struct Inc {
    key: u64,
    reg: Registration,
    /// Handles this incarnation holds; stale ones are zombies.
    parts: Vec<Option<Partition>>,
    /// Ops appended per partition and not yet known published.
    /// Batches appended per partition (each atomic) and not yet known published.
    staged: Vec<Vec<Vec<Op>>>,
    dead: bool,
}

struct World {
    media: Arc<MemMedia>,
    vol: Arc<Volume>,
    incs: Vec<Inc>,
    model: Vec<Map>,
    /// A published group whose head flush failed: present or absent after power loss.
    /// Published batches whose barrier failed: after power loss, any prefix of
    /// them may be present (each batch whole or not at all; a cleaner's
    /// commit may have made the first ones durable already).
    in_doubt: Vec<Option<Vec<Vec<Op>>>>,
    next_key: u64,
    log: Vec<String>,
}

enum Outcome {
    Ok,
    Fenced,
    Full,
    MediaFailed,
}

fn classify(e: &Error) -> Outcome {
    match e {
        Error::Fenced { .. } | Error::NotRegistered { .. } => Outcome::Fenced,
        Error::PartitionFull { .. } | Error::RecordTooLarge { .. } => Outcome::Full,
        Error::Media(_) | Error::HandleFailed => Outcome::MediaFailed,
        other => panic!("unexpected error: {other}"),
    }
}

impl World {
    fn new() -> World {
        let opts = CreateOptions { segment_bytes: 8192, registrant_slots: 16, ..CreateOptions::new(724 * 1024, PARTITIONS) };
        let bytes = opts.volume_bytes as usize;
        let media = Arc::new(MemMedia::from_image(&vec![0u8; bytes], None));
        let (vol, _) = Volume::create_in_memory(&opts, Some(media.clone())).unwrap();
        World {
            media,
            vol: Arc::new(vol),
            incs: Vec::new(),
            model: vec![Map::new(); PARTITIONS as usize],
            in_doubt: vec![None; PARTITIONS as usize],
            next_key: 1,
            log: Vec::new(),
        }
    }

    fn register(&mut self) -> Result<usize, Outcome> {
        let key = self.next_key;
        self.next_key += 1;
        match self.vol.register(key, ProcessIdentity::default()) {
            Ok(reg) => {
                self.incs.push(Inc {
                    key,
                    reg,
                    parts: (0..PARTITIONS).map(|_| None).collect(),
                    staged: vec![Vec::new(); PARTITIONS as usize],
                    dead: false,
                });
                Ok(self.incs.len() - 1)
            }
            Err(Error::NoFreeSlot { .. }) => Err(Outcome::Full),
            Err(e) => Err(classify(&e)),
        }
    }

    /// Reconcile the model with what a handle actually published.
    fn settle(&mut self, i: usize, p: usize, outcome_media_failed: bool) {
        let Some(part) = self.incs[i].parts[p].as_ref() else { return };
        let mut pending = part.pending_ops();
        let staged = &mut self.incs[i].staged[p];
        // Unpublished operations are the last ones staged, whole batches.
        let mut keep = staged.len();
        while keep > 0 && pending >= staged[keep - 1].len() && pending > 0 {
            pending -= staged[keep - 1].len();
            keep -= 1;
        }
        assert_eq!(pending, 0, "pending operations do not end on a batch boundary");
        let done: Vec<Vec<Op>> = staged.drain(..keep).collect();
        if outcome_media_failed && !done.is_empty() {
            self.in_doubt[p] = Some(done);
        } else {
            apply(&mut self.model[p], &done.concat());
        }
    }

    fn verify(&self, part: &Partition, p: usize, ctx: &str) {
        let got = contents(part);
        let mut candidate = self.model[p].clone();
        if got == candidate {
            return;
        }
        let doubt = self.in_doubt[p].clone().unwrap_or_default();
        for batch in &doubt {
            apply(&mut candidate, batch);
            if got == candidate {
                return;
            }
        }
        panic!(
            "{ctx}: partition {p} recovered {} keys, model has {} (with all {} batches in doubt: {}); diff: {:?}; last steps: {:?}",
            got.len(),
            self.model[p].len(),
            doubt.len(),
            candidate.len(),
            diff(&got, &candidate),
            &self.log[self.log.len().saturating_sub(12)..]
        );
    }
}

fn diff(a: &Map, b: &Map) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in a {
        if b.get(k) != Some(v) {
            out.push(format!("{} got {} want {:?}", String::from_utf8_lossy(k), v.len(), b.get(k).map(|v| v.len())));
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out.push(format!("{} missing", String::from_utf8_lossy(k)));
        }
    }
    out.truncate(5);
    out
}

thread_local! {
    /// Distinct keys in this run: small runs exercise overwrites and the
    /// cleaner, large ones a full partition.
    static KEY_SPACE: std::cell::Cell<u64> = const { std::cell::Cell::new(24) };
}

fn random_batch(rng: &mut Rng) -> Vec<Op> {
    let keys = KEY_SPACE.with(|k| k.get());
    // Now and then a batch larger than a segment (8 KiB): it spans several.
    let ops = if rng.percent(3) { 12 + rng.below(40) } else { 1 + rng.below(4) };
    (0..ops)
        .map(|_| {
            let key = format!("key{}", rng.below(keys)).into_bytes();
            if rng.percent(1) {
                Op::Clear
            } else if rng.percent(20) {
                // A hash of its own keys: fields set and removed, the key deleted.
                let key = format!("hash{}", rng.below(keys / 4 + 1)).into_bytes();
                let field = format!("f{}", rng.below(20)).into_bytes();
                if rng.percent(10) {
                    Op::Del { key }
                } else if rng.percent(20) {
                    Op::FieldDel { key, field }
                } else {
                    let len = rng.below(400) as usize;
                    Op::FieldPut { key, field, value: vec![b'a' + rng.below(26) as u8; len].into() }
                }
            } else if rng.percent(15) {
                Op::Del { key }
            } else if rng.percent(4) {
                // A large value: a blob of its own segments (2 or 3 of 8 KiB).
                let len = 4100 + rng.below(12_000) as usize;
                let fill = b'a' + rng.below(26) as u8;
                Op::Put { key, value: vec![fill; len].into(), expire_at_ms: 0 }
            } else {
                let len = rng.below(if keys >= 600 { 3000 } else { 700 }) as usize;
                let fill = b'a' + rng.below(26) as u8;
                Op::Put { key, value: vec![fill; len].into(), expire_at_ms: 0 }
            }
        })
        .collect()
}

/// Append `batches` and commit through incarnation `i`'s handle for `p`.
fn write(w: &mut World, rng: &mut Rng, i: usize, p: usize) -> Outcome {
    let batches: Vec<Vec<Op>> = (0..1 + rng.below(3)).map(|_| random_batch(rng)).collect();
    let Some(mut part) = w.incs[i].parts[p].take() else { return Outcome::Ok };
    let mut outcome = Outcome::Ok;
    for b in &batches {
        match part.append(b, 0) {
            Ok(appended) => {
                // A commit inside `append` published every earlier batch:
                // only this one is left unpublished.
                if appended.committed_earlier {
                    assert_eq!(part.pending_ops(), b.len(), "append committed earlier batches, yet some are unpublished");
                }
                w.incs[i].staged[p].push(b.clone());
            }
            Err(e) => {
                outcome = classify(&e);
                break;
            }
        }
    }
    let single = rng.percent(50);
    if matches!(outcome, Outcome::Ok | Outcome::Full)
        && let Err(e) = commit(&mut part, &w.vol, single)
    {
        outcome = classify(&e);
    }
    w.incs[i].parts[p] = Some(part);
    w.settle(i, p, matches!(outcome, Outcome::MediaFailed));
    match outcome {
        Outcome::Ok if single => SINGLE_BARRIER_COMMITS.fetch_add(1, Relaxed),
        Outcome::Ok => COMMITS.fetch_add(1, Relaxed),
        Outcome::Full => FULL.fetch_add(1, Relaxed),
        _ => 0,
    };
    outcome
}

/// Commit the staged batches: `Partition::commit` (flush, publish, flush the
/// head), or the server's single-barrier commit (publish, then one
/// `Volume::sync_all`; a power loss in it may tear the publication).
fn commit(part: &mut Partition, vol: &Volume, single: bool) -> Result<(), Error> {
    if single {
        part.publish()?;
        vol.sync_all()?;
        part.note_synced();
        Ok(())
    } else {
        part.commit()
    }
}

fn owner_of(w: &World, p: usize) -> Option<usize> {
    let owner = w.vol.owner(p as u32).ok()?;
    w.incs
        .iter()
        .position(|inc| !inc.dead && Some(inc.reg.slot) == owner.slot && inc.parts[p].as_ref().is_some_and(|h| h.token() == owner.token))
}

fn claim(w: &mut World, i: usize, p: usize, ctx: &str) -> Outcome {
    match Partition::claim_with(w.vol.clone(), w.incs[i].reg, p as u32, Default::default()) {
        Ok((part, stats)) => {
            TAKEOVERS.fetch_add(1, Relaxed);
            if stats.torn_commit_dropped {
                TORN_COMMITS_DROPPED.fetch_add(1, Relaxed);
            }
            w.verify(&part, p, ctx);
            w.in_doubt[p] = None;
            w.incs[i].staged[p].clear();
            w.incs[i].parts[p] = Some(part);
            Outcome::Ok
        }
        Err(e) => classify(&e),
    }
}

/// Power loss or kill -9 of every process: reopen from `image`, verify all.
fn reboot(w: &mut World, image: Vec<u8>, what: &str) {
    w.log.push(format!("reboot after {what}"));
    let media = Arc::new(MemMedia::from_image(&image, None));
    let vol = Arc::new(Volume::from_media(media.clone()).expect("volume must reopen after a crash"));
    let old_keys: Vec<u64> = w.incs.iter().map(|i| i.key).collect();
    w.incs.clear();
    w.media = media;
    w.vol = vol;
    // The operator vouches that every old incarnation is dead.
    for k in old_keys {
        match w.vol.reap_key(k) {
            Ok(()) | Err(Error::NotRegistered { .. }) => {}
            Err(e) => panic!("reap_key after {what}: {e}"),
        }
    }
    let i = w.register().unwrap_or_else(|_| panic!("register after {what}"));
    for p in 0..PARTITIONS as usize {
        assert!(matches!(claim(w, i, p, what), Outcome::Ok), "claim after {what}");
        // What was in doubt is now decided: the recovered state is the truth.
        let part = w.incs[i].parts[p].as_ref().unwrap();
        w.model[p] = contents(part);
    }
    let problems = check::check(&w.vol);
    assert!(problems.is_empty(), "check after {what}: {problems:?}");
}

fn run(seed: u64, steps: usize) {
    let mut rng = Rng::new(seed);
    KEY_SPACE.with(|k| k.set([24, 24, 120, 600][rng.below(4) as usize]));
    let mut w = World::new();
    for _ in 0..2 {
        w.register().ok().unwrap();
    }
    for step in 0..steps {
        let live: Vec<usize> = (0..w.incs.len()).filter(|&i| !w.incs[i].dead && w.vol.is_registered(w.incs[i].reg)).collect();
        let p = rng.below(u64::from(PARTITIONS)) as usize;
        let action = rng.below(100);
        let mut media_failed = false;
        match action {
            0..=5 if live.len() < 5 => {
                if let Err(Outcome::MediaFailed) = w.register() {
                    media_failed = true;
                }
            }
            0..=14 if !live.is_empty() => {
                let i = live[rng.below(live.len() as u64) as usize];
                w.log.push(format!("{step}: inc {i} claims p{p}"));
                media_failed = matches!(claim(&mut w, i, p, &format!("seed {seed} step {step} claim")), Outcome::MediaFailed);
            }
            15..=54 => {
                if let Some(i) = owner_of(&w, p) {
                    w.log.push(format!("{step}: owner {i} writes p{p}"));
                    media_failed = matches!(write(&mut w, &mut rng, i, p), Outcome::MediaFailed);
                }
            }
            55..=62 => {
                // A zombie (a stale handle) writes: must be refused, change nothing.
                let owner = owner_of(&w, p);
                let zombies: Vec<usize> = (0..w.incs.len()).filter(|&i| Some(i) != owner && w.incs[i].parts[p].is_some()).collect();
                if !zombies.is_empty() {
                    let i = zombies[rng.below(zombies.len() as u64) as usize];
                    w.log.push(format!("{step}: zombie {i} writes p{p}"));
                    let before = w.model[p].clone();
                    match write(&mut w, &mut rng, i, p) {
                        Outcome::Fenced => {
                            ZOMBIES_REFUSED.fetch_add(1, Relaxed);
                        }
                        Outcome::MediaFailed => media_failed = true,
                        _ => panic!("seed {seed} step {step}: a zombie write was accepted"),
                    }
                    assert_eq!(before, w.model[p]);
                }
            }
            63..=70 if live.len() >= 2 => {
                let victim = live[rng.below(live.len() as u64) as usize];
                w.log.push(format!("{step}: preempt inc {victim}"));
                match w.vol.preempt(w.incs[victim].key) {
                    Ok(_) => {}
                    Err(e) => media_failed = matches!(classify(&e), Outcome::MediaFailed),
                }
            }
            71..=82 => media_failed |= paused_writer(&mut w, &mut rng, &live, p, seed, step),
            83..=86 if !live.is_empty() => {
                // kill -9 of one writer: its handles and staged work vanish.
                let i = live[rng.below(live.len() as u64) as usize];
                w.log.push(format!("{step}: kill -9 inc {i}"));
                w.incs[i].dead = true;
                w.incs[i].parts.iter_mut().for_each(|h| *h = None);
                w.incs[i].staged.iter_mut().for_each(Vec::clear);
            }
            87..=90 => {
                // kill -9 of every process: the page cache (volatile bytes) survives.
                let image = w.media.snapshot();
                KILL_ALLS.fetch_add(1, Relaxed);
                reboot(&mut w, image, &format!("seed {seed} step {step}: kill -9 of all"));
            }
            91..=96 => {
                // Power will be lost at one of the next few flushes.
                w.media.set_fail_after(Some(rng.below(6)));
                w.log.push(format!("{step}: power fails soon"));
            }
            _ => {}
        }
        if media_failed || w.vol.is_failed() {
            let image = sharedisk_testkit::power::torn_image(&w.media, &mut rng);
            POWER_LOSSES.fetch_add(1, Relaxed);
            reboot(&mut w, image, &format!("seed {seed} step {step}: power loss"));
        }
    }
    let image = sharedisk_testkit::power::torn_image(&w.media, &mut rng);
    w.media.set_fail_after(None);
    // Final: flush-complete state must also survive a power loss.
    reboot(&mut w, image, &format!("seed {seed}: final power loss"));
}

/// Pause the owner of `p` at a fail point; meanwhile another incarnation
/// fences it (PREEMPT or plain takeover), claims, and publishes. Then the
/// owner goes on and must be refused. True if the media failed.
fn paused_writer(w: &mut World, rng: &mut Rng, live: &[usize], p: usize, seed: u64, step: usize) -> bool {
    let Some(i) = owner_of(w, p) else { return false };
    let others: Vec<usize> = live.iter().copied().filter(|&j| j != i).collect();
    if others.is_empty() {
        return false;
    }
    let j = others[rng.below(others.len() as u64) as usize];
    let point = if rng.percent(50) { FAILPOINT_BEFORE_STORES } else { FAILPOINT_BEFORE_PUBLISH };
    let preempt = rng.percent(50);
    let rounds = 1 + rng.below(4);
    w.log.push(format!("{step}: pause owner {i} at {point}; inc {j} takes p{p} (preempt={preempt})"));
    let shared = Arc::new(Mutex::new(std::mem::replace(w, World::new())));
    let mut victim = shared.lock().unwrap().incs[i].parts[p].take().unwrap();
    let fired = Arc::new(Mutex::new(false));
    let hook_seed = rng.next_u64();
    {
        let (shared, fired) = (shared.clone(), fired.clone());
        victim.set_pause_hook(Some(PauseHook(Box::new(move |name| {
            if name != point || std::mem::replace(&mut *fired.lock().unwrap(), true) {
                return;
            }
            let mut w = shared.lock().unwrap();
            let mut rng = Rng::new(hook_seed);
            if preempt && w.vol.preempt(w.incs[i].key).is_err() {
                return;
            }
            if !matches!(claim(&mut w, j, p, "claim during pause"), Outcome::Ok) {
                return;
            }
            for _ in 0..rounds {
                if !matches!(write(&mut w, &mut rng, j, p), Outcome::Ok | Outcome::Full) {
                    return;
                }
            }
        }))));
    }
    let batch = random_batch(rng);
    let appended = victim.append(&batch, 0);
    let staged_batch = appended.is_ok();
    let single = rng.percent(50);
    let vol = shared.lock().unwrap().vol.clone();
    let r = appended.and_then(|_| commit(&mut victim, &vol, single));
    victim.set_pause_hook(None);
    let fired = *fired.lock().unwrap();
    *w = Arc::try_unwrap(shared).ok().unwrap().into_inner().unwrap();
    if fired {
        match r {
            Err(e) if e.is_fenced() => {
                PAUSES_FENCED.fetch_add(1, Relaxed);
            }
            Err(e) if matches!(classify(&e), Outcome::MediaFailed) => {}
            other => {
                // Success (or "full") is only possible if the takeover
                // inside the pause did not happen.
                assert!(owner_of_handle(w, p, &victim), "seed {seed} step {step}: a paused, fenced writer was not refused: {other:?}");
            }
        }
    }
    if staged_batch {
        w.incs[i].staged[p].push(batch);
    }
    let failed_media = w.vol.is_failed();
    w.incs[i].parts[p] = Some(victim);
    w.settle(i, p, failed_media);
    failed_media
}

fn owner_of_handle(w: &World, p: usize, h: &Partition) -> bool {
    w.vol.owner(p as u32).is_ok_and(|o| o.token == h.token())
}

#[test]
fn seeded_simulation() {
    let runs: u64 = std::env::var("SIM_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    let seeds: Vec<u64> = match std::env::var("SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
            (0..runs).map(|i| base.wrapping_add(i.wrapping_mul(0x9e37_79b9))).collect()
        }
    };
    let many = seeds.len() >= 20;
    for seed in seeds {
        let result = std::panic::catch_unwind(|| run(seed, 200));
        if let Err(e) = result {
            eprintln!("simulation failed; replay with SEED={seed} cargo test -p sharedisk-storage --test sim");
            std::panic::resume_unwind(e);
        }
    }
    let counts = [
        ("commits", COMMITS.load(Relaxed)),
        ("takeovers", TAKEOVERS.load(Relaxed)),
        ("paused writers fenced", PAUSES_FENCED.load(Relaxed)),
        ("zombie writes refused", ZOMBIES_REFUSED.load(Relaxed)),
        ("power losses", POWER_LOSSES.load(Relaxed)),
        ("kill -9 of all", KILL_ALLS.load(Relaxed)),
        ("partition full", FULL.load(Relaxed)),
        ("single-barrier commits", SINGLE_BARRIER_COMMITS.load(Relaxed)),
        ("torn commits dropped", TORN_COMMITS_DROPPED.load(Relaxed)),
    ];
    eprintln!("simulation coverage: {counts:?}");
    if many {
        for (what, n) in counts {
            assert!(n > 0, "the simulation never exercised: {what}");
        }
    }
}
