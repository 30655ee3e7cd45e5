//! `[defaults]` (what happens when no rule matches) and `[reject]` (how often a `reject` may
//! answer, so that it cannot be turned into a reflector).

use toml::{Spanned, de::DeValue};

use super::{
    checker::Checker,
    raw::{RawDefaults, RawReject},
};
use crate::model::{Action, Defaults, FragmentPolicy, RejectLimits};

/// Bounds of `[reject] rate_per_sec`.
const MAX_REJECT_RATE: i64 = 1_000_000;

impl Checker<'_> {
    pub(super) fn defaults(&mut self, value: Option<Spanned<DeValue<'_>>>) -> Defaults {
        let mut out = Defaults::default();
        let Some(raw) =
            value.and_then(|v| self.table::<RawDefaults>(v, "", "[defaults]", "defaults.", &[]))
        else {
            return out;
        };
        let actions = [
            ("allow", Action::Allow),
            ("reject", Action::Reject),
            ("stealth", Action::Stealth),
        ];
        if let Some(v) = raw.inbound
            && let Some(action) = self.choice(&v, "", "defaults.inbound", &actions)
        {
            out.inbound = action;
        }
        if let Some(v) = raw.outbound
            && let Some(action) = self.choice(&v, "", "defaults.outbound", &actions)
        {
            out.outbound = action;
        }
        if let Some(v) = raw.fragments {
            let options = [
                ("allow", FragmentPolicy::Allow),
                ("stealth", FragmentPolicy::Stealth),
            ];
            if let Some(policy) = self.choice(&v, "", "defaults.fragments", &options) {
                out.fragments = policy;
            }
        }
        out
    }

    pub(super) fn reject(&mut self, value: Option<Spanned<DeValue<'_>>>) -> RejectLimits {
        let mut out = RejectLimits::default();
        let Some(raw) =
            value.and_then(|v| self.table::<RawReject>(v, "", "[reject]", "reject.", &[]))
        else {
            return out;
        };
        if let Some(rate) = raw.rate_per_sec
            && let Some(rate) = self.bounded(&rate, "reject.rate_per_sec", 1, MAX_REJECT_RATE)
        {
            out.rate_per_sec = rate;
        }
        if let Some(burst) = raw.burst
            && let Some(burst) = self.bounded(&burst, "reject.burst", 1, u32::MAX.into())
        {
            out.burst = burst;
        }
        if let Some(rate) = raw.global_rate_per_sec
            && let Some(rate) =
                self.bounded(&rate, "reject.global_rate_per_sec", 1, MAX_REJECT_RATE)
        {
            out.global_rate_per_sec = rate;
        }
        out
    }
}
