//! The benchmark's reference: the smallest useful XDP blocklist, one hash lookup of the IPv4
//! source address and a drop on a hit. `testrun_bench` times it beside the firewall, on the
//! same addresses in the same run, so that the firewall's cost per dropped packet reads
//! against what any XDP blocklist pays (issue 17's "minimal XDP hash blocklist"). Not part of
//! the firewall; the daemon never loads it, and its map has one entry unless the benchmark
//! sizes it.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::map,
    maps::HashMap,
    programs::XdpContext,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

#[map]
static BENCH_BLOCKLIST: HashMap<[u8; 4], u32> = HashMap::with_max_entries(1, 0);

#[inline(always)]
pub fn judge(ctx: &XdpContext) -> u32 {
    let start = ctx.data();
    if start + EthHdr::LEN + Ipv4Hdr::LEN > ctx.data_end() {
        return XDP_PASS;
    }
    // SAFETY: both headers lie within [data, data_end), checked above.
    let (eth, ip) = unsafe {
        (
            &*(start as *const EthHdr),
            &*((start + EthHdr::LEN) as *const Ipv4Hdr),
        )
    };
    if eth.ether_type != EtherType::Ipv4 as u16 {
        return XDP_PASS;
    }
    // SAFETY: the value is not read.
    if unsafe { BENCH_BLOCKLIST.get(&ip.src_addr) }.is_some() {
        XDP_DROP
    } else {
        XDP_PASS
    }
}
