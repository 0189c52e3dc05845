//! The live page (`lockmgr --http`) in a real headless Chromium (Debian's
//! `chromium`; CI installs it), driven over the DevTools protocol: the page
//! is loaded once and must redraw by itself as servers and lock managers
//! die. Screenshots are kept in `target/tmp/page/` as the test's artefact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use sharedisk_lockmgr::core::Status;

use crate::cluster::*;
use crate::util::*;

/// A headless Chromium in its own process group (its helpers die with it),
/// and a DevTools connection to its one page.
struct Browser {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next_id: u64,
    log: PathBuf,
    // Last: the connection closes before the browser is killed.
    _group: Group,
}

/// A process group, SIGKILLed when dropped.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
        let _ = self.0.wait();
    }
}

impl Browser {
    /// Start Chromium on `url`, with its profile and log in `dir`.
    fn open(url: &str, dir: &Path) -> Browser {
        use std::os::unix::process::CommandExt;
        std::fs::create_dir_all(dir).unwrap();
        let profile = dir.join("chromium-profile");
        let log = dir.join("chromium.log");
        let program = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
        let group = std::process::Command::new(&program)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1400,1150",
                &format!("--user-data-dir={}", profile.display()),
                url,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{program} is needed by this test (apt-get install chromium, or set CHROMIUM): {e}"));
        let group = Group(group);
        // Chromium writes the port it listens on into the profile.
        let mut port = String::new();
        wait_for(Duration::from_secs(30), "Chromium's DevTools port", || {
            port = std::fs::read_to_string(profile.join("DevToolsActivePort")).unwrap_or_default().lines().next().unwrap_or("").to_owned();
            !port.is_empty()
        });
        let devtools = format!("127.0.0.1:{port}");
        let mut page_ws = String::new();
        wait_for(Duration::from_secs(30), "Chromium's page target", || {
            let (_, body) = http_get(&devtools, "/json/list");
            let targets: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            page_ws = targets
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url)))
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                .unwrap_or("")
                .to_owned();
            !page_ws.is_empty()
        });
        let (ws, _) = tungstenite::connect(page_ws.as_str()).unwrap_or_else(|e| panic!("DevTools at {page_ws}: {e}"));
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        let mut b = Browser { ws, next_id: 1, log, _group: group };
        wait_for(Duration::from_secs(30), "the page to load and draw once", || {
            b.eval("document.readyState === 'complete' && Number(document.body && document.body.dataset.updates) > 0") == json!(true)
        });
        b
    }

    /// One DevTools command; its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(tungstenite::Message::Text(msg.into())).unwrap();
        loop {
            let m = self.ws.read().unwrap_or_else(|e| panic!("DevTools: {e}; Chromium said:\n{}", self.log_tail()));
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap();
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluate `expr` in the page; its value (JSON).
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({ "expression": expr, "returnByValue": true }));
        assert!(r["exceptionDetails"].is_null(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// What the page shows, read from its DOM.
    fn shown(&mut self) -> Shown {
        let v = self.eval(SHOWN);
        serde_json::from_str(v.as_str().expect("a JSON string")).unwrap()
    }

    /// A PNG of the page, kept as `name` in the artefact directory.
    fn screenshot(&mut self, name: &str) -> PathBuf {
        use base64::Engine as _;
        let r = self.call("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": true }));
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("page");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// The page's DOM, as data (its rows carry data- attributes).
const SHOWN: &str = r##"JSON.stringify({
  updates: Number(document.body.dataset.updates),
  marker: window.testMarker || null,
  summary: document.getElementById("summary").textContent,
  banner: document.getElementById("banner").textContent,
  stale: document.body.classList.contains("stale"),
  lockmgrs: [...document.querySelectorAll("#lockmgrs tbody tr")].map(r => ({ seat: Number(r.dataset.seat), role: r.dataset.role })),
  servers: [...document.querySelectorAll("#servers tbody tr")].map(r => ({ id: r.dataset.server, health: r.dataset.health })),
  partitions: [...document.querySelectorAll("#partitions tbody tr")].map(r => ({
    id: Number(r.dataset.partition), owner: r.dataset.owner, standby: r.dataset.standby, epoch: Number(r.dataset.epoch) })),
  slotmap: [...document.querySelectorAll("#slotmap div")].map(d => ({
    id: Number(d.dataset.partition), server: d.dataset.server, width: d.getBoundingClientRect().width })),
  handovers: [...document.querySelectorAll(".handover[data-partition]")].map(h => ({
    partition: Number(h.dataset.partition), cause: h.dataset.cause, from: h.dataset.from, to: h.dataset.to,
    epoch: h.dataset.epoch === "" ? null : Number(h.dataset.epoch), served: h.dataset.served === "true",
    steps: ["fence", "release", "grant", "serve", "total"].map(k => h.dataset[k + "Ms"] === "" ? null : Number(h.dataset[k + "Ms"])),
    track: (r => [r.left, r.width])(h.querySelector(".track").getBoundingClientRect()),
    bars: [...h.querySelectorAll(".seg")].map(s => (r => ({ step: s.classList[1], left: r.left, width: r.width }))(s.getBoundingClientRect())) })),
})"##;

#[derive(Debug, serde::Deserialize)]
struct Shown {
    updates: u64,
    marker: Option<String>,
    summary: String,
    banner: String,
    stale: bool,
    lockmgrs: Vec<ShownLockmgr>,
    servers: Vec<ShownServer>,
    partitions: Vec<ShownPartition>,
    slotmap: Vec<ShownSlots>,
    handovers: Vec<ShownHandover>,
}

#[derive(Debug, serde::Deserialize)]
struct ShownLockmgr {
    seat: u8,
    role: String,
}

#[derive(Debug, serde::Deserialize)]
struct ShownServer {
    id: String,
    health: String,
}

#[derive(Debug, PartialEq, Eq, serde::Deserialize)]
struct ShownPartition {
    id: u32,
    owner: String,
    standby: String,
    epoch: u64,
}

#[derive(Debug, serde::Deserialize)]
struct ShownSlots {
    id: u32,
    server: String,
    width: f64,
}

#[derive(Debug, serde::Deserialize)]
struct ShownHandover {
    partition: u32,
    cause: String,
    from: String,
    to: String,
    epoch: Option<u64>,
    served: bool,
    /// fence, release, grant, serve, total (ms), as `Handover::steps`.
    steps: [Option<u64>; 5],
    /// The bar's track: left edge and width (px).
    track: [f64; 2],
    bars: Vec<ShownBar>,
}

#[derive(Debug, serde::Deserialize)]
struct ShownBar {
    step: String,
    left: f64,
    width: f64,
}

/// `wait_until`, polling every 100 ms: each poll here runs `admin status`
/// or reads the browser's DOM, which must not crowd two loaded cores.
fn wait_for(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    wait_until_every(timeout, Duration::from_millis(100), what, cond)
}

/// The partitions as `admin status` gives them, in the page's terms.
fn partitions_of(st: &Status) -> Vec<ShownPartition> {
    st.partitions
        .iter()
        .map(|p| ShownPartition {
            id: p.id,
            owner: p.owner.clone().unwrap_or_default(),
            standby: p.standby.clone().unwrap_or_default(),
            epoch: p.fence_token,
        })
        .collect()
}

/// A lock manager with `--http`: its guard, its protocol address and its page's.
fn spawn_lockmgr_with_page(volume: &str, active: bool) -> (ChildGuard, String, String) {
    let t = Duration::from_secs(20);
    let mut lm = ChildGuard::spawn(&["lockmgr", "--volume", volume, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    let line = lm.wait_line(t, |l| l.contains("page on http://"));
    let page = line.split("http://").nth(1).unwrap().trim_end_matches('/').to_owned();
    let addr = if active { lm.wait_lockmgr_ready(t) } else { lm.wait_lockmgr_standing_by(t) };
    (lm, addr, page)
}

/// Load the page of a standby lock manager once; kill -9 a server, then the
/// active lock manager: without a reload the page shows the partitions on
/// their new owners, the dead server as lost, each handover as a served
/// timeline with its fence, grant and serve bars (the same as `admin
/// status` reports), and then the standby serving as the active one.
#[test]
fn the_live_page_redraws_a_failover_by_itself_in_a_headless_browser() {
    let t = Duration::from_secs(30);
    let s = Scratch::new();
    let vol = s.volume("vol", "64MiB", 6);
    let v = vol.to_str().unwrap().to_owned();
    let (mut lm1, addr1, page1) = spawn_lockmgr_with_page(&v, true);
    let (_lm2, addr2, page2) = spawn_lockmgr_with_page(&v, false);
    let both = format!("{addr1},{addr2}");
    let mut servers: BTreeMap<String, ChildGuard> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let mut p = ChildGuard::spawn(&["server", "--volume", &v, "--lockmgr", &both, "--listen", "127.0.0.1:0", "--id", name]);
            p.wait_server_ready(t);
            (name.to_string(), p)
        })
        .collect();
    // Settled: two partitions each, every standby synced, every handover served.
    let settled = |st: &Status| {
        st.partitions.iter().all(|p| p.owner.is_some() && p.standby_lag.as_ref().is_some_and(|l| l.synced))
            && st.servers.iter().all(|s| s.partitions == 2)
            && st.handovers.iter().all(|h| h.served_ms.is_some())
    };
    wait_for(t, "two partitions on each server, every standby synced", || status_of(&both).is_some_and(|st| settled(&st)));

    // The endpoints themselves: the page and its data, with their headers.
    let (head, html) = http_exchange(&page1, "/", "");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-security-policy: default-src 'self'"), "{head}");
    assert!(html.contains("<script src=\"page.js\""), "{html}");
    assert!(http_get(&page1, "/page.js").0.contains("200") && http_get(&page1, "/page.css").0.contains("200"));
    assert!(http_get(&page1, "/no-such-thing").0.contains("404"));
    let page_state = |page: &str| -> Value { serde_json::from_str(&http_get(page, "/status.json").1).unwrap() };
    let active = page_state(&page1);
    assert_eq!((&active["role"], &active["term"]), (&json!("active"), &json!(1)), "{active}");
    wait_for(t, "the standby's page to show the active one's status", || {
        let standby = page_state(&page2);
        standby["role"] == "standby" && standby["status"]["partitions"].as_array().is_some_and(|p| p.len() == 6)
    });
    // A page from elsewhere that rebinds its DNS name to this address is refused.
    let refused = raw(&page1, b"GET /status.json HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n", Duration::from_secs(10));
    let refused = String::from_utf8_lossy(&refused);
    assert!(refused.starts_with("HTTP/1.1 421") && !refused.contains("partitions"), "{refused}");

    let url = format!("http://{page2}/");
    let mut b = Browser::open(&url, s.path("browser").as_path());
    // The page draws what the lock manager says (a rebalance may still be
    // moving a partition: compared with a fresh status each time).
    let mut shown = b.shown();
    let mut settled_status = None;
    wait_for(t, "the page to show the settled cluster as admin status does", || {
        shown = b.shown();
        let Some(st) = status_of(&both) else { return false };
        let same = shown.partitions == partitions_of(&st)
            && shown.servers.len() == 3
            && shown.servers.iter().all(|s| s.health == "ok")
            && settled(&st);
        settled_status = Some(st);
        same
    });
    let st0 = settled_status.unwrap();
    assert!(shown.summary.contains("3 servers alive") && shown.summary.contains("6/6 partitions owned"), "{}", shown.summary);
    assert!(shown.summary.contains(&format!("standby lock manager {addr2}")), "{}", shown.summary);
    assert_eq!(shown.slotmap.len(), 6);
    for (cell, p) in shown.slotmap.iter().zip(&shown.partitions) {
        assert_eq!((cell.id, cell.server.as_str()), (p.id, p.owner.as_str()), "the slot map is coloured by owner");
        assert!(cell.width > 50.0, "each of 6 equal partitions takes a sixth of the bar: {cell:?}");
    }
    assert!(!shown.stale && shown.banner.is_empty(), "{shown:?}");
    b.screenshot("1-settled.png");

    // kill -9 the server with the most partitions; the page is not reloaded.
    b.eval("window.testMarker = 'loaded once'");
    let before = b.shown();
    // Victim and its partitions from the one status the page was seen to match.
    let victim = st0.servers[0].id.clone();
    let lost: Vec<u32> = st0.partitions.iter().filter(|p| p.owner.as_deref() == Some(victim.as_str())).map(|p| p.id).collect();
    assert_eq!(lost.len(), 2);
    servers.get_mut(&victim).unwrap().kill9();
    let served_handover = |shown: &Shown, p: u32| -> bool {
        shown.handovers.iter().any(|h| h.partition == p && h.cause == "ConnectionClosed" && h.from == victim && h.served)
    };
    wait_for(t, "the page to show the dead server's partitions served elsewhere, with their timelines", || {
        shown = b.shown();
        lost.iter().all(|&p| {
            let owner = &shown.partitions.iter().find(|s| s.id == p).unwrap().owner;
            !owner.is_empty() && *owner != victim && served_handover(&shown, p)
        }) && shown.servers.iter().any(|s| s.id == victim && s.health == "lost")
    });
    assert_eq!(shown.marker.as_deref(), Some("loaded once"), "the page redrew itself, it was not reloaded");
    assert!(shown.updates > before.updates);
    assert!(shown.summary.contains("2 servers alive"), "{}", shown.summary);
    let st = status_of(&both).unwrap();
    for &p in &lost {
        let owner = &shown.partitions.iter().find(|s| s.id == p).unwrap().owner;
        let h = shown.handovers.iter().find(|h| h.partition == p && h.cause == "ConnectionClosed" && h.from == victim).unwrap();
        assert_eq!(&h.to, owner, "p{p}: the timeline ends on the partition's new owner");
        // The same handover as the lock manager reports it.
        let r = st
            .handovers
            .iter()
            .rev()
            .find(|r| r.partition == p && r.from.as_deref() == Some(victim.as_str()))
            .unwrap_or_else(|| panic!("p{p}: no handover in admin status: {:?}", st.handovers));
        assert_eq!((r.to.as_deref(), r.epoch), (Some(h.to.as_str()), h.epoch), "p{p}");
        assert_eq!(h.steps, r.steps().map(|(_, ms)| ms), "p{p}: each step's duration is the lock manager's");
        assert!(h.steps[0].is_some() && h.steps[1].is_none(), "p{p}: a lost owner is fenced, not released: {h:?}");
        let steps: Vec<&str> = h.bars.iter().map(|b| b.step.as_str()).collect();
        assert_eq!(steps, ["fence", "grant", "serve"], "p{p}: a lost owner is fenced, then the partition granted and served: {h:?}");
        // The bars in time order, the first at the track's start, none past its end.
        let [left, width] = h.track;
        assert!((h.bars[0].left - left).abs() < 1.0, "p{p}: {h:?}");
        assert!(h.bars.windows(2).all(|w| w[0].left <= w[1].left + 0.5), "p{p}: {h:?}");
        assert!(h.bars.iter().all(|b| b.left + b.width <= left + width + 2.5), "p{p}: {h:?}");
    }
    // On one log scale: of two served handovers the longer one's bar reaches further.
    let served: Vec<&ShownHandover> = shown.handovers.iter().filter(|h| h.served).collect();
    let end = |h: &ShownHandover| h.bars.iter().map(|b| b.left + b.width).fold(0.0, f64::max);
    for a in &served {
        for c in &served {
            if a.steps[4] > c.steps[4] {
                assert!(end(a) >= end(c) - 2.5, "{a:?} is longer than {c:?}");
            }
        }
    }
    b.screenshot("2-after-kill-9-of-a-server.png");

    // The active lock manager dies: the page, served by the standby, shows
    // the standby serving.
    let updates = shown.updates;
    lm1.kill9();
    wait_for(t, "the page to show its lock manager active", || {
        shown = b.shown();
        shown.summary.contains(&format!("active lock manager {addr2}")) && shown.banner.is_empty()
    });
    assert_eq!(shown.marker.as_deref(), Some("loaded once"));
    assert!(shown.updates > updates);
    let active_seat = shown.lockmgrs.iter().filter(|l| l.role == "active").map(|l| l.seat).collect::<Vec<_>>();
    assert_eq!(active_seat.len(), 1, "one active lock manager: {:?}", shown.lockmgrs);
    assert!(shown.summary.contains("term 2"), "{}", shown.summary);
    wait_for(t, "every partition owned after the lock manager's takeover", || {
        shown = b.shown();
        shown.partitions.iter().all(|p| !p.owner.is_empty() && p.owner != victim)
    });
    // The new lock manager's list starts empty; the page keeps what the one
    // before it showed.
    for &p in &lost {
        assert!(served_handover(&shown, p), "p{p}'s failover is still shown after the takeover: {:?}", shown.handovers);
    }
    b.screenshot("3-after-kill-9-of-the-active-lock-manager.png");
}
