//! `[metrics]`: the daemon's counters for Prometheus, as OpenMetrics text (prometheus-client's
//! encoder), served at `GET /metrics` on a TCP address or a Unix socket, and/or rewritten
//! every `interval` into a file for node_exporter's textfile collector.
//!
//! What is exported is what `fwctl status`, `fwctl list` and `fwctl conns` show: every
//! datapath counter, each rule's decisions, the connection tables' fill and capacity, the
//! reloads and how long the last took, and the tracked connections per program. The text is
//! built in the daemon's loop, which owns the kernel objects (like a control request); the
//! HTTP side runs in tasks of its own, at most [`MAX_CONNECTIONS`] at once, each bounded in
//! time, so a scraper that hangs holds nothing but its own task.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::warn;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use rules::model::MetricsListen;
use tokio::sync::{mpsc, oneshot};

use super::State;

/// Scrapes served at once; more wait for the listener's backlog.
const MAX_CONNECTIONS: usize = 4;
/// A connection's whole life: reading the request, waiting for the loop, writing the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A request for the metrics text, answered by the daemon's loop.
pub(super) type Scrape = oneshot::Sender<String>;

/// Reloads, for the metrics: counted in `State::announced`, which every reload goes through.
#[derive(Default)]
pub(super) struct ReloadStats {
    pub(super) ok: u64,
    pub(super) failed: u64,
    /// How long the last reload (successful or not) took.
    pub(super) last_secs: f64,
}

type Labels = Vec<(String, String)>;

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

impl State {
    /// The metrics, as OpenMetrics text.
    pub(super) fn metrics_text(&mut self) -> anyhow::Result<String> {
        let status = self.status()?;
        let list = self.list()?;
        let mut registry = Registry::with_prefix("firewall");

        let counters = Family::<Labels, Counter>::default();
        for (name, value) in &status.counters {
            counters
                .get_or_create(&labels([("counter", name)]))
                .inc_by(*value);
        }
        registry.register(
            "datapath",
            "Datapath counters by name, as fwctl status shows them (every verdict and drop \
             reason), since the pin directory was created",
            counters,
        );

        let decisions = Family::<Labels, Counter>::default();
        for r in &list.rules {
            let number = r.number.to_string();
            let mut l = labels([
                ("rule", number.as_str()),
                ("name", r.name.as_str()),
                ("direction", &r.direction.to_string()),
                ("action", &r.action.to_string()),
            ]);
            if let Some(file) = &r.file {
                l.push(("file".into(), file.clone()));
            }
            decisions.get_or_create(&l).inc_by(r.hits);
        }
        registry.register(
            "rule_decisions",
            "Packets (inbound) or socket calls (outbound) each rule decided, since the rules in \
             force were loaded (a reload starts them again)",
            decisions,
        );

        let rules = Family::<Labels, Gauge>::default();
        rules
            .get_or_create(&labels([("direction", "in")]))
            .set(status.inbound_rules as i64);
        rules
            .get_or_create(&labels([("direction", "out")]))
            .set(status.outbound_rules as i64);
        registry.register("rules", "Rules in force", rules);

        let ct = &status.conntrack;
        let entries = Family::<Labels, Gauge>::default();
        let capacity = Family::<Labels, Gauge>::default();
        for (table, n, cap) in [
            ("confirmed", ct.confirmed, ct.confirmed_capacity),
            ("unconfirmed", ct.unconfirmed, ct.unconfirmed_capacity),
            ("host_pending", ct.host_pending, ct.host_pending_capacity),
        ] {
            entries
                .get_or_create(&labels([("table", table)]))
                .set(n as i64);
            capacity
                .get_or_create(&labels([("table", table)]))
                .set(i64::from(cap));
        }
        registry.register(
            "conntrack_entries",
            "Entries in each connection table",
            entries,
        );
        registry.register(
            "conntrack_capacity",
            "Size of each connection table",
            capacity,
        );
        let evicted = Counter::<u64>::default();
        evicted.inc_by(ct.evicted);
        registry.register(
            "conntrack_evicted",
            "Unconfirmed entries the tables dropped to make room",
            evicted,
        );

        let by_program = Family::<Labels, Gauge>::default();
        for ((program, origin), n) in self.connections_by_program() {
            by_program
                .get_or_create(&labels([("program", &program), ("origin", origin)]))
                .set(n as i64);
        }
        registry.register(
            "connections",
            "Tracked connections by the program that owns them (\"unknown\" when none was \
             recorded) and by who opened them (local: this host, remote: a peer)",
            by_program,
        );

        let reloads = Family::<Labels, Counter>::default();
        reloads
            .get_or_create(&labels([("result", "ok")]))
            .inc_by(self.reload_stats.ok);
        reloads
            .get_or_create(&labels([("result", "failed")]))
            .inc_by(self.reload_stats.failed);
        registry.register(
            "reloads",
            "Reloads since the daemon started, by result",
            reloads,
        );
        let last = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        last.set(self.reload_stats.last_secs);
        registry.register(
            "reload_duration_seconds",
            "How long the last reload took",
            last,
        );
        for (name, help, value) in [
            (
                "generation",
                "Rule-set generation: 1 at start, +1 per reload that changed the rules",
                status.generation as i64,
            ),
            (
                "uptime_seconds",
                "Seconds since the daemon started",
                status.uptime_secs as i64,
            ),
            (
                "interfaces_protected",
                "Interfaces the XDP program is attached to",
                status.interfaces.len() as i64,
            ),
        ] {
            let g = Gauge::<i64>::default();
            g.set(value);
            registry.register(name, help, g);
        }
        let mut text = String::new();
        encode(&mut text, &registry).context("encoding the metrics")?;
        Ok(text)
    }

    /// Live tracked connections per (program, origin).
    fn connections_by_program(&self) -> BTreeMap<(String, &'static str), u64> {
        let mut out = BTreeMap::new();
        match self.conns() {
            Ok(c) => {
                for conn in c.connections {
                    let origin = if conn.origin == "local" {
                        "local"
                    } else {
                        "remote"
                    };
                    let program = conn.program.unwrap_or_else(|| "unknown".into());
                    *out.entry((program, origin)).or_insert(0) += 1;
                }
            }
            Err(e) => warn!("metrics: reading the connection tables: {e:#}"),
        }
        out
    }
}

/// Where the endpoint listens, bound.
pub(super) enum Endpoint {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Endpoint {
    /// Binds `listen`. A Unix socket gets mode 0600, or 0660 and the group `gid` (the
    /// `[daemon] control_group`) when one is given: the metrics name rules and programs.
    pub(super) fn bind(listen: &MetricsListen, gid: Option<u32>) -> anyhow::Result<Self> {
        match listen {
            MetricsListen::Tcp(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("[metrics] listen: binding {addr}"))?;
                l.set_nonblocking(true)?;
                Ok(Endpoint::Tcp(tokio::net::TcpListener::from_std(l)?))
            }
            MetricsListen::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
                super::server::trusted_socket_dir(path)?;
                // Only a socket left by an earlier daemon is removed, never another file.
                if let Ok(meta) = std::fs::symlink_metadata(path)
                    && meta.file_type().is_socket()
                {
                    let _ = std::fs::remove_file(path);
                }
                let l = std::os::unix::net::UnixListener::bind(path)
                    .with_context(|| format!("[metrics] listen: binding {}", path.display()))?;
                let mode = if gid.is_some() { 0o660 } else { 0o600 };
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
                if let Some(gid) = gid {
                    std::os::unix::fs::chown(path, None, Some(gid))?;
                }
                l.set_nonblocking(true)?;
                Ok(Endpoint::Unix(
                    tokio::net::UnixListener::from_std(l)?,
                    path.clone(),
                ))
            }
        }
    }

    /// Serves `GET /metrics` until the daemon stops, asking the loop through `scrapes`.
    pub(super) async fn serve(self, scrapes: mpsc::Sender<Scrape>) {
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let scrapes = scrapes.clone();
            match &self {
                Endpoint::Tcp(l) => match l.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(connection(TokioIo::new(s), scrapes, permit));
                    }
                    Err(e) => warn!("metrics: accepting a connection: {e}"),
                },
                Endpoint::Unix(l, _) => match l.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(connection(TokioIo::new(s), scrapes, permit));
                    }
                    Err(e) => warn!("metrics: accepting a connection: {e}"),
                },
            }
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Endpoint::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn connection<IO>(
    io: IO,
    scrapes: mpsc::Sender<Scrape>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let scrapes = scrapes.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(&req, &scrapes).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .keep_alive(false)
        .serve_connection(io, service);
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
}

async fn answer(
    req: &Request<hyper::body::Incoming>,
    scrapes: &mpsc::Sender<Scrape>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = kind.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "the firewall's metrics are at /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        );
    }
    let (tx, rx) = oneshot::channel();
    if scrapes.send(tx).await.is_err() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "the daemon is stopping\n".into(),
        );
    }
    match rx.await {
        Ok(text) if !text.is_empty() => reply(StatusCode::OK, CONTENT_TYPE, text),
        _ => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "the metrics could not be read (see the daemon's log)\n".into(),
        ),
    }
}

/// Replaces the textfile (`crate::replace`: node_exporter never reads half a file), mode 0644.
pub(super) fn write_textfile(path: &Path, text: &str) -> anyhow::Result<()> {
    crate::replace::replace(path, text.as_bytes(), 0o644, None)
        .with_context(|| format!("[metrics] textfile: replacing {}", path.display()))
}

/// OpenMetrics text as the Prometheus text format (0.0.4) that node_exporter's textfile
/// collector reads: a counter's `# TYPE` and `# HELP` name its `_total` samples, and the
/// `# EOF` and `# UNIT` lines go.
pub(super) fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# TYPE ", "# HELP "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Endpoint, prometheus_text};

    /// The socket's mode and group are set by path after binding: not in a directory others
    /// may write, where the path could be swapped for a link to another file.
    #[tokio::test]
    async fn a_unix_endpoint_is_refused_in_a_directory_others_may_write() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let open = super::super::dir_others_may_write(dir.path());
        let listen = rules::model::MetricsListen::Unix(open.join("metrics.sock"));
        let err = Endpoint::bind(&listen, None)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("which others may write"), "{err}");
        let listen = rules::model::MetricsListen::Unix(dir.path().join("metrics.sock"));
        let ok = Endpoint::bind(&listen, None).expect("a private directory");
        let mode = std::fs::metadata(dir.path().join("metrics.sock"))
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(ok);
        assert!(
            !dir.path().join("metrics.sock").exists(),
            "removed when dropped"
        );
    }

    #[test]
    fn textfile_format_names_counters_by_their_samples_and_has_no_eof() {
        let om = "# HELP firewall_reloads Reloads.\n# TYPE firewall_reloads counter\n\
                  firewall_reloads_total{result=\"ok\"} 1\n\
                  # HELP firewall_rules Rules.\n# TYPE firewall_rules gauge\n\
                  # UNIT firewall_rules rules\nfirewall_rules 3\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP firewall_reloads_total Reloads.\n# TYPE firewall_reloads_total counter\n\
             firewall_reloads_total{result=\"ok\"} 1\n\
             # HELP firewall_rules Rules.\n# TYPE firewall_rules gauge\nfirewall_rules 3\n"
        );
    }
}
