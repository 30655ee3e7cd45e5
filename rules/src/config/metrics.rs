//! `[metrics]`: where the daemon serves its counters for Prometheus, and the file it rewrites
//! for node_exporter's textfile collector. Both off by default: the metrics name rules,
//! programs and connection counts, which are the administrator's to publish.

use std::path::PathBuf;

use toml::{Spanned, de::DeValue};

use super::{checker::Checker, raw::RawMetrics, values::HOUR};
use crate::model::{MetricsConfig, MetricsListen};

/// Bounds of `[metrics] interval`, in seconds.
const INTERVAL: (u32, u32) = (1, HOUR);

impl Checker<'_> {
    pub(super) fn metrics(&mut self, value: Option<Spanned<DeValue<'_>>>) -> MetricsConfig {
        let mut out = MetricsConfig {
            interval_secs: 15,
            ..MetricsConfig::default()
        };
        let Some(raw) =
            value.and_then(|v| self.table::<RawMetrics>(v, "", "[metrics]", "metrics.", &[]))
        else {
            return out;
        };
        if let Some(listen) = &raw.listen {
            let text = listen.get_ref().trim();
            if text.starts_with('/') {
                out.listen = Some(MetricsListen::Unix(PathBuf::from(text)));
            } else {
                match text.parse::<std::net::SocketAddr>() {
                    Ok(addr) => {
                        if !addr.ip().is_loopback() {
                            self.warn(
                                listen.span(),
                                format!(
                                    "metrics.listen = {text:?}: whoever can connect to it reads \
                                     the rules' names and the programs with connections; a \
                                     loopback address or a Unix socket keeps them on the host"
                                ),
                            );
                        }
                        out.listen = Some(MetricsListen::Tcp(addr));
                    }
                    Err(_) => self.error(
                        Some(listen.span()),
                        format!(
                            "metrics.listen = {text:?}: expected an address and port \
                             (\"127.0.0.1:9741\", \"[::1]:9741\") or the absolute path of a \
                             Unix socket"
                        ),
                    ),
                }
            }
        }
        if let Some(file) = &raw.textfile {
            let text = file.get_ref();
            if !text.starts_with('/') || !text.ends_with(".prom") {
                self.error(
                    Some(file.span()),
                    format!(
                        "metrics.textfile = {text:?}: expected an absolute path ending in .prom \
                         (node_exporter's textfile collector reads only those)"
                    ),
                );
            } else {
                out.textfile = Some(PathBuf::from(text));
            }
        }
        if let Some(v) = raw.interval
            && let Some(secs) = self.duration(&v, "metrics.interval", INTERVAL)
        {
            out.interval_secs = secs;
        }
        out
    }
}
