//! `[log]`: whether denials are logged by default, and the kernel's budget for log events.
//! A rule's own `log` key is read with the rule (`rule.rs`).

use toml::{Spanned, de::DeValue};

use super::{checker::Checker, raw::RawLog};
use crate::model::LogConfig;

/// Bounds of `[log] rate` and `burst`: far above what a journal can take, low enough that the
/// kernel's token arithmetic (per-CPU, in nanoseconds) cannot overflow.
const MAX_LOG_RATE: i64 = 100_000;

impl Checker<'_> {
    pub(super) fn log(&mut self, value: Option<Spanned<DeValue<'_>>>) -> LogConfig {
        let mut out = LogConfig::default();
        let Some(raw) = value.and_then(|v| self.table::<RawLog>(v, "", "[log]", "log.", &[]))
        else {
            return out;
        };
        if let Some(v) = raw.denied {
            out.denied = *v.get_ref();
        }
        if let Some(rate) = raw.rate
            && let Some(rate) = self.bounded(&rate, "log.rate", 1, MAX_LOG_RATE)
        {
            out.rate = rate;
        }
        if let Some(burst) = raw.burst
            && let Some(burst) = self.bounded(&burst, "log.burst", 1, MAX_LOG_RATE)
        {
            out.burst = burst;
        }
        out
    }
}
