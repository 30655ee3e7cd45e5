//! `[conntrack]` and `[conntrack.timeouts]`: table sizes, the verdict for stray TCP segments,
//! and how long idle flows are kept. The bounds keep the kernel memory a table pins reasonable
//! and every timeout within what the daemon's collector can express.

use toml::{Spanned, de::DeValue};

use super::{
    checker::Checker,
    raw::{RawConntrack, RawCtTimeouts},
    values::{DAY, HOUR},
};
use crate::model::{Conntrack, CtTimeouts, InvalidPolicy};

/// Bounds of `[conntrack] table_size`, the confirmed-flow map: small enough that the kernel
/// memory it pins stays reasonable for a host, large enough to be of use at all.
const CT_TABLE_SIZE: (i64, i64) = (1024, 16_777_216);
/// Bounds of `[conntrack] unconfirmed_size`, the LRU map of handshakes and unreplied flows.
const CT_UNCONFIRMED_SIZE: (i64, i64) = (1024, 4_194_304);
/// Bounds of `[conntrack] gc_interval`, in seconds.
const CT_GC_INTERVAL: (u32, u32) = (1, HOUR);
/// Bounds of every `[conntrack.timeouts]` value but `tcp_established`, in seconds.
const CT_TIMEOUT: (u32, u32) = (1, DAY);
/// Bounds of `[conntrack.timeouts] tcp_established`, in seconds.
const CT_TIMEOUT_ESTABLISHED: (u32, u32) = (1, 365 * DAY);

impl Checker<'_> {
    pub(super) fn conntrack(&mut self, value: Option<Spanned<DeValue<'_>>>) -> Conntrack {
        let mut out = Conntrack::default();
        let Some(mut value) = value else {
            return out;
        };
        // The nested table is checked on its own: a problem in one does not hide the other's.
        if let DeValue::Table(entries) = value.get_mut()
            && let Some(timeouts) = entries.remove("timeouts")
        {
            out.timeouts = self.ct_timeouts(timeouts);
        }
        let Some(raw) = self.table::<RawConntrack>(value, "", "[conntrack]", "conntrack.", &[])
        else {
            return out;
        };
        if let Some(size) = raw.table_size
            && let Some(size) = self.bounded(
                &size,
                "conntrack.table_size",
                CT_TABLE_SIZE.0,
                CT_TABLE_SIZE.1,
            )
        {
            out.table_size = size;
        }
        if let Some(size) = raw.unconfirmed_size
            && let Some(size) = self.bounded(
                &size,
                "conntrack.unconfirmed_size",
                CT_UNCONFIRMED_SIZE.0,
                CT_UNCONFIRMED_SIZE.1,
            )
        {
            out.unconfirmed_size = size;
        }
        if let Some(v) = raw.invalid {
            let options = [
                ("stealth", InvalidPolicy::Stealth),
                ("reject", InvalidPolicy::Reject),
            ];
            if let Some(policy) = self.choice(&v, "", "conntrack.invalid", &options) {
                out.invalid = policy;
            }
        }
        if let Some(v) = raw.gc_interval
            && let Some(secs) = self.duration(&v, "conntrack.gc_interval", CT_GC_INTERVAL)
        {
            out.gc_interval_secs = secs;
        }
        if let Some(v) = raw.record_owner {
            out.record_owner = *v.get_ref();
        }
        out
    }

    fn ct_timeouts(&mut self, value: Spanned<DeValue<'_>>) -> CtTimeouts {
        let mut out = CtTimeouts::default();
        let Some(raw) = self.table::<RawCtTimeouts>(
            value,
            "",
            "[conntrack.timeouts]",
            "conntrack.timeouts.",
            &[],
        ) else {
            return out;
        };
        let fields = [
            (raw.tcp_syn_sent, "tcp_syn_sent", &mut out.tcp_syn_sent),
            (raw.tcp_syn_recv, "tcp_syn_recv", &mut out.tcp_syn_recv),
            (
                raw.tcp_established,
                "tcp_established",
                &mut out.tcp_established,
            ),
            (raw.tcp_fin_wait, "tcp_fin_wait", &mut out.tcp_fin_wait),
            (
                raw.tcp_close_wait,
                "tcp_close_wait",
                &mut out.tcp_close_wait,
            ),
            (raw.tcp_last_ack, "tcp_last_ack", &mut out.tcp_last_ack),
            (raw.tcp_time_wait, "tcp_time_wait", &mut out.tcp_time_wait),
            (raw.tcp_close, "tcp_close", &mut out.tcp_close),
            (raw.udp_unreplied, "udp_unreplied", &mut out.udp_unreplied),
            (raw.udp_replied, "udp_replied", &mut out.udp_replied),
            (raw.icmp, "icmp", &mut out.icmp),
        ];
        for (value, name, slot) in fields {
            let bounds = if name == "tcp_established" {
                CT_TIMEOUT_ESTABLISHED
            } else {
                CT_TIMEOUT
            };
            if let Some(value) = value
                && let Some(secs) =
                    self.duration(&value, &format!("conntrack.timeouts.{name}"), bounds)
            {
                *slot = secs;
            }
        }
        out
    }
}
