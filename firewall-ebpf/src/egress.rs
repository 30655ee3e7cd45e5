//! Egress: what the TC program does with a packet the host sends. It records the flows the
//! host opens in the connection table (so their replies pass the XDP program) and follows the
//! state of every tracked flow; it drops only the packets of sockets held by an outbound
//! `stealth` ([`outbound::held`]).

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use firewall_common::Counter;

use crate::{clock, conntrack, counters::count, dns, outbound, parse::Parsed};

/// Headers of locally built packets are normally in the linear area; pulls them if not.
#[inline(always)]
pub(crate) fn pull_headers(ctx: &TcContext) {
    let len = ctx.len();
    let want = if len < EGRESS_PULL { len } else { EGRESS_PULL };
    if ctx.data_end() - ctx.data() < want as usize {
        let _ = ctx.pull_data(want);
    }
}

#[inline(always)]
pub(crate) fn egress(ctx: &TcContext, parsed: Result<Parsed, Counter>) -> i32 {
    let len = ctx.len();
    if let Ok(Parsed::Packet(pkt)) = parsed {
        if outbound::held(ctx, &pkt) {
            count(Counter::OutStealthDropped);
            return TC_ACT_SHOT;
        }
        let now = clock::now();
        conntrack::outbound(ctx, &pkt, len as u64, now);
        dns::query_leaves(ctx, &pkt, now);
    }
    TC_ACT_OK
}

/// Bytes the egress program needs linear: Ethernet + VLANs + IPv6 with extension headers + TCP.
const EGRESS_PULL: u32 = 192;
