// The live page: polls status.json twice a second and redraws. No framework;
// every text goes in through textContent (names come from the cluster).
"use strict";

const POLL_MS = 500;
const HANDOVERS_SHOWN = 16;
// How many the page remembers across lock-manager takeovers.
const HANDOVERS_KEPT = 64;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k === "style") Object.assign(e.style, v);
    else if (k.startsWith("data-")) e.setAttribute(k, String(v));
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

// One colour per server, the same on every page and every reload.
function colour(name) {
  if (!name) return "#b8bdc8";
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${(h * 137) % 360}, 55%, 45%)`;
}

function ms(v) {
  if (v === null || v === undefined) return "–";
  return v >= 10000 ? `${(v / 1000).toFixed(1)} s` : `${v} ms`;
}

function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}

function rows(tbody, list) {
  tbody.replaceChildren(...list);
}

function health(s, state) {
  if (!s.alive) return ["lost", "bad"];
  if (s.draining) return ["draining", "warn"];
  if (s.last_heartbeat_ms_ago > state.lease_ms / 2) return ["late", "warn"];
  return ["ok", "ok"];
}

// A handover's steps as Handover::steps counts them (lockmgr/src/core.rs).
function steps(h) {
  const before = h.fenced_ms ?? h.released_ms ?? h.start_ms;
  const since = (from, at) => (at === null || at === undefined ? null : Math.max(0, at - from));
  return {
    fence: since(h.start_ms, h.fenced_ms),
    release: since(h.start_ms, h.released_ms),
    grant: since(before, h.granted_ms),
    serve: since(h.granted_ms ?? h.start_ms, h.served_ms),
    total: since(h.start_ms, h.served_ms),
  };
}

function cause(c) {
  return {
    ConnectionClosed: "connection closed", LeaseExpired: "lease expired", ReleaseTimedOut: "release timed out",
    Move: "move", Released: "released", Replaced: "restarted", Unowned: "unowned",
    LostBeforeTakeover: "lost before takeover",
  }[c] || c;
}

function drawLockmgrs(st) {
  rows(document.querySelector("#lockmgrs tbody"), st.lockmgrs.map((l) => {
    const role = l.active ? (l.alive ? "active" : "active, but gone") : (l.alive ? "standby" : "gone");
    return el("tr", { "data-seat": l.seat, "data-role": role, class: l.alive ? "" : "dead" },
      el("td", {}, l.seat), el("td", {}, l.addr), el("td", { class: "num" }, l.pid),
      el("td", { class: "num" }, l.active ? l.term : "–"),
      el("td", { class: l.active && l.alive ? "ok" : l.alive ? "" : "bad" }, role));
  }));
}

function drawMap(st) {
  const part = (p, who, label) => el("div", {
    "data-partition": p.id, "data-server": who || "",
    title: `partition ${p.id}, slots ${p.slots[0]}–${p.slots[1]}: ${label} ${who || "none"}`,
    style: { flexGrow: String(p.slots[1] - p.slots[0] + 1), flexBasis: "0", background: colour(who) },
  }, label === "owner" ? `p${p.id}` : "");
  document.getElementById("slotmap").replaceChildren(...st.partitions.map((p) => part(p, p.owner, "owner")));
  document.getElementById("standbymap").replaceChildren(...st.partitions.map((p) => part(p, p.standby, "standby")));
  const names = [...new Set(st.servers.map((s) => s.id))];
  document.getElementById("legend").replaceChildren(...names.map((n) =>
    el("span", {}, el("i", { class: "sw", style: { background: colour(n) } }), n)));
}

function drawServers(st, state) {
  rows(document.querySelector("#servers tbody"), st.servers.map((s) => {
    const [h, cls] = health(s, state);
    return el("tr", { "data-server": s.id, "data-health": h, class: s.alive ? "" : "dead" },
      el("td", {}, el("i", { class: "sw", style: { background: colour(s.id) } }), s.id),
      el("td", {}, s.addr), el("td", { class: "num" }, s.pid),
      el("td", { class: "num" }, s.partitions), el("td", { class: "num" }, ms(s.last_heartbeat_ms_ago)),
      el("td", { class: cls }, h));
  }));
}

function drawPartitions(st) {
  rows(document.querySelector("#partitions tbody"), st.partitions.map((p) => {
    const lag = p.standby_lag;
    const lagText = !p.standby ? "–" : !lag ? "no report" : lag.synced ? `${bytes(lag.lag_bytes)}` : `catching up, ${bytes(lag.lag_bytes)}`;
    return el("tr", {
      "data-partition": p.id, "data-owner": p.owner || "", "data-standby": p.standby || "",
      "data-epoch": p.fence_token, "data-state": p.state,
    },
      el("td", { class: "num" }, p.id), el("td", {}, `${p.slots[0]}–${p.slots[1]}`),
      el("td", {}, el("i", { class: "sw", style: { background: colour(p.owner) } }), p.owner || "none"),
      el("td", {}, p.standby || "–"), el("td", { class: "num" }, lagText),
      el("td", { class: "num" }, p.fence_token), el("td", { class: p.state.startsWith("owned") ? "" : "warn" }, p.state));
  }));
}

// Every handover this page has been shown, by term: a lock manager keeps
// its own in memory only, so after a takeover the page still shows what
// the one before said. Each is placed on this browser's clock when seen.
const seen = new Map();

function remember(st, term) {
  const at = Date.now();
  // Current: in the active lock manager's list now (it keeps its last 128).
  for (const e of seen.values()) e.current = false;
  for (const h of st.handovers) {
    // A move's cause may change while it runs (its owner is lost): not part of the key.
    const key = `${term}/${h.partition}/${h.start_ms}`;
    const old = seen.get(key);
    seen.set(key, { h, term, wallStart: old ? old.wallStart : at - (st.now_ms - h.start_ms), now_ms: st.now_ms, current: true });
  }
  const keep = [...seen.entries()].sort((a, b) => b[1].wallStart - a[1].wallStart).slice(0, HANDOVERS_KEPT);
  seen.clear();
  for (const [k, v] of keep) seen.set(k, v);
}

// Bars on a log scale of ms since the handover began: a 3 ms fence and a
// 600 ms lease wait both show.
function drawHandovers(st, term) {
  remember(st, term);
  const list = [...seen.values()].sort((a, b) => b.wallStart - a.wallStart).slice(0, HANDOVERS_SHOWN);
  const box = document.getElementById("handovers");
  if (!list.length) { box.replaceChildren(el("p", { class: "mute" }, "none yet")); return; }
  const end = (e) => e.h.served_ms ?? e.now_ms;
  const max = Math.max(10, ...list.map((e) => end(e) - e.h.start_ms));
  const pos = (t) => Math.log10(1 + Math.max(0, t)) / Math.log10(1 + max) * 100;
  const seg = (h, cls, from, to) => {
    if (from === null || from === undefined || to === null || to === undefined) return null;
    const a = pos(from - h.start_ms), b = pos(to - h.start_ms);
    return el("div", { class: `seg ${cls}`, title: `${cls} ${ms(to - from)}`, style: { left: `${a}%`, width: `${Math.max(0, b - a)}%` } });
  };
  const axis = el("div", { class: "track axis" });
  for (let t = 1; t <= max; t *= 10) {
    axis.append(el("span", { class: pos(t) > 90 ? "tick end" : "tick", style: { left: `${pos(t)}%` } }, ms(t)));
  }
  const out = [el("div", { class: "handover head" }, el("span", {}, ""), el("span", {}, ""), el("span", {}, ""), axis, el("span", { class: "mute" }, "log scale"))];
  for (const e of list) {
    const h = e.h;
    const s = steps(h);
    const before = h.fenced_ms ?? h.released_ms ?? h.start_ms;
    const served = h.served_ms !== null && h.served_ms !== undefined;
    const last = h.served_ms ?? h.granted_ms ?? (h.fenced_ms ?? h.released_ms) ?? h.start_ms;
    const track = el("div", { class: "track" }, ...[
      seg(h, "fence", h.start_ms, h.fenced_ms),
      seg(h, "release", h.start_ms, h.released_ms),
      seg(h, "grant", before, h.granted_ms),
      seg(h, "serve", h.granted_ms, h.served_ms),
      !served && e.current ? seg(h, "pending", last, e.now_ms) : null,
    ].filter(Boolean));
    const parts = [];
    if (s.fence !== null) parts.push(`fence ${ms(s.fence)}`);
    if (s.release !== null) parts.push(`release ${ms(s.release)}`);
    if (s.grant !== null) parts.push(`grant ${ms(s.grant)}`);
    if (s.serve !== null) parts.push(`serve ${ms(s.serve)}`);
    const ago = `${((Date.now() - e.wallStart) / 1000).toFixed(1)} s ago`;
    const state = s.total !== null ? `${ms(s.total)} total` : e.current ? "in progress" : "unfinished when its lock manager went";
    out.push(el("div", {
      class: `handover${e.current ? "" : " earlier"}`, "data-partition": h.partition, "data-cause": h.cause, "data-from": h.from || "",
      "data-to": h.to || "", "data-epoch": h.epoch ?? "", "data-served": served, "data-term": e.term,
      "data-fence-ms": s.fence ?? "", "data-release-ms": s.release ?? "", "data-grant-ms": s.grant ?? "",
      "data-serve-ms": s.serve ?? "", "data-total-ms": s.total ?? "",
      title: parts.join(", "),
    },
      el("span", { class: "what" }, `p${h.partition}`),
      el("span", {}, cause(h.cause)),
      el("span", {}, `${h.from || "–"} → ${h.to || "–"}`),
      track,
      el("span", { class: "times" }, `${state}, ${ago}${e.current ? "" : ` (term ${e.term})`}`)));
  }
  box.replaceChildren(...out);
}

let lastTerm = 0;

// Draws `state`; false if it carried no status (what is shown is then old).
function render(state) {
  const st = state.status;
  banner(state.error ? `${state.role} lock manager ${state.addr}: ${state.error}` : null);
  document.body.classList.toggle("stale", !st);
  if (!st) return false;
  const alive = st.servers.filter((s) => s.alive).length;
  const owned = st.partitions.filter((p) => p.owner).length;
  lastTerm = state.term ?? lastTerm;
  document.getElementById("summary").textContent =
    `${alive} server${alive === 1 ? "" : "s"} alive · ${owned}/${st.partitions.length} partitions owned` +
    (lastTerm ? ` · term ${lastTerm}` : "") +
    ` · this page from the ${state.role} lock manager ${state.addr}`;
  drawLockmgrs(st);
  drawMap(st);
  drawServers(st, state);
  drawPartitions(st);
  drawHandovers(st, lastTerm);
  document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
  return true;
}

function banner(text) {
  const b = document.getElementById("banner");
  b.textContent = text || "";
  b.classList.toggle("on", !!text);
}

let lastOk = null;
async function poll() {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 2000);
  try {
    const r = await fetch("status.json", { cache: "no-store", signal: ctl.signal });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    if (render(await r.json())) {
      lastOk = new Date();
      document.getElementById("updated").textContent = `updated ${lastOk.toLocaleTimeString()}`;
    } else if (lastOk) {
      document.getElementById("updated").textContent = `what is shown is from ${lastOk.toLocaleTimeString()}`;
    }
  } catch (e) {
    document.body.classList.add("stale");
    const since = lastOk ? `; what is shown is from ${lastOk.toLocaleTimeString()}` : "";
    banner(`cannot reach the lock manager at ${location.host} (${e.name === "AbortError" ? "no answer in 2 s" : e.message})${since}`);
  } finally {
    clearTimeout(timer);
    setTimeout(poll, POLL_MS);
  }
}

poll();
