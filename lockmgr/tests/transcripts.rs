//! Transcript tests for the lease core.
//!
//! Each file in `tests/transcripts/` is a script: `partitions N` first, then
//! steps `@TIME COMMAND ARGS…`, each followed by the exact lines the core must
//! produce (`> …`): its response, then the outputs it queued, in order.
//! `UPDATE_TRANSCRIPTS=1` rewrites the expected lines from the actual ones;
//! review the diff before committing it.

use sharedisk_lockmgr::core::{Core, Output, Persisted, Request, Response, ServerInfo, SessionId};
use sharedisk_lockmgr::{Millis, Timeouts};

fn session(s: &str) -> SessionId {
    SessionId(s.strip_prefix('s').unwrap_or_else(|| panic!("bad session {s}")).parse().unwrap())
}

fn num(s: &str, prefix: char) -> u64 {
    s.strip_prefix(prefix).unwrap_or_else(|| panic!("expected {prefix}N, got {s}")).parse().unwrap()
}

fn parse_key(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("key=").trim_start_matches("0x"), 16).unwrap()
}

fn response_line(r: &Response) -> String {
    match r {
        Response::Registered { session } => format!("registered {session}"),
        Response::Ack => "ack".into(),
        Response::SessionExpired => "session-expired".into(),
        Response::NamedGranted { epoch } => format!("named-granted e{epoch}"),
        Response::NamedHeld { holder } => format!("named-held {holder}"),
        Response::Accepted { moves } => format!("accepted moves={moves}"),
        Response::Error { code, .. } => format!("error {code:?}"),
    }
}

fn output_line(o: &Output) -> String {
    match o {
        Output::Persist => "persist".into(),
        Output::Fence { key } => format!("fence {key:#x}"),
        Output::Grant { session, partition, epoch } => format!("grant {session} p{partition} e{epoch}"),
        Output::Revoke { session, partition } => format!("revoke {session} p{partition}"),
        Output::Expire { session } => format!("expire {session}"),
    }
}

struct Runner {
    core: Core,
    persisted: Persisted,
}

impl Runner {
    fn step(&mut self, now: Millis, words: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let resp = match words {
            ["register", name, key, rest @ ..] => Some(self.core.handle(
                now,
                Request::Register(ServerInfo {
                    server: name.to_string(),
                    key: parse_key(key),
                    addr: format!("127.0.0.1:{}", 7000 + name.len()),
                    pid: 1,
                    // `register NAME KEY standby`: it hosts hot standbys.
                    standby: rest == ["standby"],
                    reports_standbys: false,
                    keeps: Vec::new(),
                }),
            )),
            ["heartbeat", s] => Some(self.core.handle(now, Request::Heartbeat { session: session(s) })),
            ["disconnect", s] => Some(self.core.handle(now, Request::Disconnect { session: session(s) })),
            ["release", s, p, e] => {
                Some(self.core.handle(now, Request::Release { session: session(s), partition: num(p, 'p') as u32, epoch: num(e, 'e') }))
            }
            ["acquire", s, name] => Some(self.core.handle(now, Request::AcquireNamed { session: session(s), name: name.to_string() })),
            ["unacquire", s, name] => Some(self.core.handle(now, Request::ReleaseNamed { session: session(s), name: name.to_string() })),
            ["move", p, server] => Some(self.core.handle(now, Request::Move { partition: num(p, 'p') as u32, server: server.to_string() })),
            ["drain", server] => Some(self.core.handle(now, Request::Drain { server: server.to_string() })),
            ["rebalance"] => Some(self.core.handle(now, Request::Rebalance)),
            ["claiming", s, p, e] => {
                Some(self.core.handle(now, Request::Claiming { session: session(s), partition: num(p, 'p') as u32, epoch: num(e, 'e') }))
            }
            ["tick"] => {
                self.core.handle_timeout(now);
                None
            }
            ["fenced", key] => {
                self.core.fence_done(now, parse_key(key));
                None
            }
            ["restart"] => {
                self.core = Core::restore(*self.core.timeouts(), self.core.partition_count(), &self.persisted, now);
                None
            }
            ["status"] => {
                let st = self.core.status(now);
                for p in st.partitions {
                    out.push(format!(
                        "p{} owner={} e{} slots={}-{} {}{}",
                        p.id,
                        p.owner.as_deref().unwrap_or("-"),
                        p.fence_token,
                        p.slots[0],
                        p.slots[1],
                        p.state,
                        p.standby.map(|s| format!(" standby={s}")).unwrap_or_default()
                    ));
                }
                for s in st.servers {
                    out.push(format!(
                        "server {} s{} partitions={} hb={}ms{}",
                        s.id,
                        s.session,
                        s.partitions,
                        s.last_heartbeat_ms_ago,
                        if !s.alive {
                            " dead"
                        } else if s.draining {
                            " draining"
                        } else {
                            ""
                        }
                    ));
                }
                None
            }
            ["next-timeout"] => {
                out.push(format!("next {}", self.core.poll_timeout().map_or("none".to_owned(), |t| t.to_string())));
                None
            }
            other => panic!("unknown transcript command {other:?}"),
        };
        if let Some(r) = resp {
            out.push(response_line(&r));
        }
        while let Some(o) = self.core.poll_output() {
            if o == Output::Persist {
                self.persisted = self.core.persisted();
            }
            out.push(output_line(&o));
        }
        out
    }
}

fn run_file(path: &std::path::Path) -> (String, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut rendered = String::new();
    let mut runner: Option<Runner> = None;
    for line in text.lines() {
        if line.starts_with('>') {
            continue;
        }
        rendered.push_str(line);
        rendered.push('\n');
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(n) = t.strip_prefix("partitions ") {
            runner = Some(Runner { core: Core::new(Timeouts::default(), n.parse().unwrap()), persisted: Persisted::default() });
            continue;
        }
        let (at, rest) = t.split_once(' ').unwrap_or_else(|| panic!("{}: bad line {t:?}", path.display()));
        let now: Millis = at.strip_prefix('@').unwrap_or_else(|| panic!("expected @TIME in {t:?}")).parse().unwrap();
        let words: Vec<&str> = rest.split_whitespace().collect();
        let r = runner.as_mut().expect("`partitions N` must come first");
        for l in r.step(now, &words) {
            rendered.push_str("> ");
            rendered.push_str(&l);
            rendered.push('\n');
        }
    }
    (text, rendered)
}

#[test]
fn transcripts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "txt")).collect();
    files.sort();
    assert!(!files.is_empty());
    let update = std::env::var("UPDATE_TRANSCRIPTS").is_ok();
    let mut failed = Vec::new();
    for f in files {
        let (expected, actual) = run_file(&f);
        if expected != actual {
            if update {
                std::fs::write(&f, &actual).unwrap();
            } else {
                eprintln!("--- {} differs; actual run:\n{actual}", f.display());
                failed.push(f.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "transcripts differ: {failed:?} (UPDATE_TRANSCRIPTS=1 rewrites them)");
}
