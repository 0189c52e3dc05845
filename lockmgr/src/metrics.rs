//! The lock manager's metrics (Prometheus text), and the small HTTP
//! endpoint both the lock manager and the servers serve them on
//! (`--metrics ADDR`: `GET /metrics`, `GET /health`).
//!
//! Counters and histograms live on the core's task (`service.rs`), which
//! also renders them: a scrape is one message to it, like a status query.

use std::future::Future;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::core::{Handover, Status};

type Labels = Vec<(&'static str, String)>;

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 100 µs to ~6.5 s.
    exponential_buckets(0.000_1, 2.0, 17)
}

/// What the core's task counts.
#[derive(Debug)]
pub struct Counters {
    pub grant_pushes: Counter,
    pub fences: Counter,
    pub fence_seconds: Histogram,
    pub persist_seconds: Histogram,
    /// Each finished handover's steps, by step and cause.
    handover_seconds: Family<Labels, Histogram>,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            grant_pushes: Counter::default(),
            fences: Counter::default(),
            fence_seconds: Histogram::new(seconds_buckets()),
            persist_seconds: Histogram::new(seconds_buckets()),
            handover_seconds: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
        }
    }
}

impl Counters {
    /// A handover finished (served): its steps into the histograms.
    pub fn handover(&self, h: &Handover) {
        if h.served_ms.is_none() {
            return;
        }
        for (step, ms) in h.steps() {
            if let Some(ms) = ms {
                let l = vec![("step", step.to_owned()), ("cause", h.cause.name().to_owned())];
                self.handover_seconds.get_or_create(&l).observe(ms as f64 / 1000.0);
            }
        }
    }

    /// The text a scrape gets, with the core's `status` for the gauges.
    pub fn render(&self, st: &Status) -> String {
        let mut r = Registry::with_prefix("sharedisk_lockmgr");
        let gauge = |r: &mut Registry, name: &str, help: &str, v: i64| {
            let g: Gauge = Gauge::default();
            g.set(v);
            r.register(name, help, g);
        };
        gauge(&mut r, "active", "1: this lock manager is the active one", 1);
        let term = st.lockmgrs.iter().find(|l| l.active && l.alive).map_or(0, |l| l.term as i64);
        gauge(&mut r, "term", "The active lock manager's term", term);
        gauge(&mut r, "sessions", "Registered servers alive", st.servers.iter().filter(|s| s.alive).count() as i64);
        let states: Family<Labels, Gauge> = Family::default();
        for p in &st.partitions {
            let state = p.state.split(' ').next().unwrap_or("").to_owned();
            states.get_or_create(&vec![("state", state)]).inc();
        }
        r.register("partitions", "Partitions by state (owned, moving, fencing, unowned, awaiting)", states);
        let owner: Family<Labels, Gauge> = Family::default();
        let epoch: Family<Labels, Gauge> = Family::default();
        let lag: Family<Labels, Gauge> = Family::default();
        for p in &st.partitions {
            let part = ("partition", p.id.to_string());
            let standby = p.standby.clone().unwrap_or_else(|| "-".to_owned());
            owner
                .get_or_create(&vec![part.clone(), ("owner", p.owner.clone().unwrap_or_else(|| "-".to_owned())), ("standby", standby)])
                .set(1);
            epoch.get_or_create(&vec![part.clone()]).set(p.fence_token as i64);
            if let Some(l) = &p.standby_lag {
                lag.get_or_create(&vec![part]).set(l.lag_bytes as i64);
            }
        }
        r.register("partition", "1 per partition with its owner and standby", owner);
        r.register("partition_epoch", "Each partition's grant epoch", epoch);
        r.register("standby_lag_bytes", "Each partition's standby lag, as its server last reported", lag);
        r.register("grant_pushes", "Grants sent to servers (new ones, and again to a reconnected session)", self.grant_pushes.clone());
        r.register("fences", "PREEMPTs of a lost server's key on the volume", self.fences.clone());
        r.register("fence_seconds", "How long a fence on the volume took", self.fence_seconds.clone());
        r.register("persist_seconds", "How long persisting the map on the volume took", self.persist_seconds.clone());
        r.register(
            "handover_seconds",
            "Each step of each finished handover (admin events): fence, release, grant, serve, total",
            self.handover_seconds.clone(),
        );
        let mut out = String::new();
        // Writing into a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

/// The same metrics in Prometheus's classic text format (0.0.4), for
/// scrapers that do not ask for OpenMetrics (and `promtool check
/// metrics`): a counter's family is named with its `_total`, and there is
/// no `# EOF`.
pub fn classic_text(openmetrics: &str) -> String {
    let mut lines: Vec<String> = openmetrics.lines().filter(|l| *l != "# EOF").map(str::to_owned).collect();
    for i in 0..lines.len() {
        let Some(name) = lines[i].strip_prefix("# TYPE ").and_then(|t| t.strip_suffix(" counter")).map(str::to_owned) else {
            continue;
        };
        lines[i] = format!("# TYPE {name}_total counter");
        if i > 0
            && let Some(help) = lines[i - 1].strip_prefix(&format!("# HELP {name} "))
        {
            lines[i - 1] = format!("# HELP {name}_total {help}");
        }
    }
    lines.into_iter().map(|l| l + "\n").collect()
}

/// Serve `/metrics` (what `render` gives at each scrape) and `/health` on
/// `listener` until the process ends. OpenMetrics to a scraper that asks
/// for it (`Accept: application/openmetrics-text`, as Prometheus does),
/// the classic text format otherwise.
pub async fn serve<F, Fut>(listener: tokio::net::TcpListener, render: F)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    use axum::http::header::{ACCEPT, CONTENT_TYPE};
    use axum::routing::get;
    let metrics = move |headers: axum::http::HeaderMap| {
        let render = render.clone();
        async move {
            let open = headers.get(ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/openmetrics-text"));
            let text = render().await;
            if open {
                ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            } else {
                ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], classic_text(&text))
            }
        }
    };
    let app = axum::Router::new().route("/metrics", get(metrics)).route("/health", get(|| async { "ok\n" }));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics: the endpoint stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_classic_format_names_counters_with_total_and_has_no_eof() {
        let open = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total 3\n# HELP x_g A gauge.\n# TYPE x_g gauge\nx_g 1\n# EOF\n";
        assert_eq!(
            super::classic_text(open),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total 3\n# HELP x_g A gauge.\n# TYPE x_g gauge\nx_g 1\n"
        );
    }
}
