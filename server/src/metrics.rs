//! `--metrics ADDR`: this server's state and counters for Prometheus (text
//! format, `GET /metrics`), and `GET /health`.
//!
//! Counters are the server's own (`Stats`, the engine's `Counters`), read
//! at each scrape into a fresh registry: nothing on the request path
//! changes for metrics, except the two histograms the barrier thread and
//! the engine observe once per barrier and per cycle.

use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::ServerState;

type Labels = Vec<(&'static str, String)>;

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    r.register(name, help, c);
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    r.register(name, help, g);
}

/// The text a scrape gets.
pub fn render(shared: &ServerState) -> String {
    let mut r = Registry::with_prefix("sharedisk");
    let s = &shared.stats;
    counter(&mut r, "commands", "Commands answered", s.commands.load(Relaxed));
    counter(&mut r, "errors", "Error replies", s.errors.load(Relaxed));
    counter(&mut r, "redirects", "MOVED and ASK replies", s.redirects.load(Relaxed));
    counter(&mut r, "connections", "Connections accepted", s.connections.load(Relaxed));
    gauge(&mut r, "connected_clients", "Connections open now", shared.clients.load(Relaxed) as i64);
    counter(&mut r, "replica_reads", "READONLY reads answered from a hot standby", s.replica_reads.load(Relaxed));
    let claims: Family<Labels, Counter> = Family::default();
    claims.get_or_create(&vec![("from", "standby".to_owned())]).inc_by(s.claims_warm.load(Relaxed));
    claims.get_or_create(&vec![("from", "log".to_owned())]).inc_by(s.claims_cold.load(Relaxed));
    r.register("claims", "Partitions claimed: from a hot standby (reading its lag) or cold (the whole log)", claims);
    counter(&mut r, "claim_read_bytes", "Log bytes claims read", s.claim_bytes.load(Relaxed));
    let e = &s.engine;
    counter(&mut r, "engine_cycles", "Engine cycles that ran at least one request", e.cycles.load(Relaxed));
    counter(&mut r, "engine_requests", "Requests the engine ran", e.requests.load(Relaxed));
    r.register("engine_cycle_requests", "Requests per engine cycle", e.cycle_requests.clone());
    r.register("barrier_seconds", "Volume syncs (the commit of a cycle's writes), in seconds", e.barrier_seconds.clone());

    // Per partition, as this server sees the cluster: who owns it, who keeps
    // its standby, the grant epoch, whether this server serves it, and the
    // lag of the standby kept here.
    let view = shared.view();
    let owner: Family<Labels, Gauge> = Family::default();
    let standby: Family<Labels, Gauge> = Family::default();
    let epoch: Family<Labels, Gauge> = Family::default();
    let served: Family<Labels, Gauge> = Family::default();
    let name = |i: Option<u32>| i.and_then(|i| view.map.servers.get(i as usize)).map_or_else(|| "-".to_owned(), |s| s.id.clone());
    for p in 0..shared.partitions {
        let at = p as usize;
        let part = ("partition", p.to_string());
        owner.get_or_create(&vec![part.clone(), ("server", name(view.map.owners.get(at).copied().flatten()))]).set(1);
        standby.get_or_create(&vec![part.clone(), ("server", name(view.map.standbys.get(at).copied().flatten()))]).set(1);
        epoch.get_or_create(&vec![part.clone()]).set(view.map.tokens.get(at).copied().unwrap_or(0) as i64);
        let here = matches!(shared.route(p), crate::shell::Route::Local(_));
        served.get_or_create(&vec![part]).set(i64::from(here));
    }
    r.register("partition_owner", "1 for each partition's owner in the slot map", owner);
    r.register("partition_standby", "1 for each partition's hot standby in the slot map", standby);
    r.register("partition_epoch", "Each partition's grant epoch (its config epoch)", epoch);
    r.register("partition_served", "1 if this server serves the partition now", served);
    if let Some(standbys) = &shared.standbys {
        let lag: Family<Labels, Gauge> = Family::default();
        let synced: Family<Labels, Gauge> = Family::default();
        for (p, v) in standbys.views() {
            let l = vec![("partition", p.to_string())];
            lag.get_or_create(&l).set(v.lag_bytes.unwrap_or(0) as i64);
            synced.get_or_create(&l).set(i64::from(v.synced));
        }
        r.register("standby_lag_bytes", "Published log bytes a hot standby kept here has not applied", lag);
        r.register("standby_synced", "1 if the hot standby kept here matched its owner's head at its last poll", synced);
    }
    let mut out = String::new();
    // Writing into a String does not fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}
