//! The benchmark's frame generator (see `firewall_common::generator`): run in live-frame mode,
//! it gives each frame of its template a source address and redirects it into a veth. Not part
//! of the firewall; the daemon never loads it.
//!
//! The frame is the benchmark's own template (Ethernet, a 20-byte IPv4 header, UDP), so the
//! header positions are known; they are still bounds-checked, as the verifier requires.

use aya_ebpf::{
    Global,
    bindings::xdp_action::XDP_ABORTED,
    helpers::{bpf_get_prandom_u32, bpf_redirect},
    programs::XdpContext,
};
use firewall_common::generator::GenConfig;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};

use crate::csum;

#[unsafe(no_mangle)]
static GEN_CONFIG: Global<GenConfig> = Global::new(GenConfig {
    ifindex: 0,
    prefix: 0,
    mask: 0,
    mul: 0,
    first: 0,
    span: 1,
    sources: 1,
    random_port: 0,
});

#[inline(always)]
pub fn generate(ctx: &XdpContext) -> u32 {
    let cfg = GEN_CONFIG.load();
    let start = ctx.data();
    let ip_at = start + EthHdr::LEN;
    let udp_at = ip_at + Ipv4Hdr::LEN;
    if udp_at + UdpHdr::LEN > ctx.data_end() {
        return XDP_ABORTED;
    }
    // SAFETY: both headers lie within [data, data_end), checked above.
    let (ip, udp) = unsafe { (&mut *(ip_at as *mut Ipv4Hdr), &mut *(udp_at as *mut UdpHdr)) };
    // SAFETY: helper without preconditions.
    let r = unsafe { bpf_get_prandom_u32() };
    ip.src_addr = cfg.source(r).to_be_bytes();
    if cfg.random_port != 0 {
        // SAFETY: as above.
        set_source_port(udp, unsafe { bpf_get_prandom_u32() } as u16);
    }
    // The header checksum from scratch: the frame may hold an earlier run's changes (live
    // frames are recycled without being reset).
    ip.check = [0, 0];
    // SAFETY: Ipv4Hdr is 20 plain bytes.
    let bytes = unsafe { &*(ip as *const Ipv4Hdr as *const [u8; Ipv4Hdr::LEN]) };
    ip.check = csum::finish(csum::sum(bytes));
    // SAFETY: helper without preconditions; returns XDP_REDIRECT, or XDP_ABORTED when the
    // interface does not exist.
    unsafe { bpf_redirect(cfg.ifindex, 0) as u32 }
}

/// The UDP source port (the datagram has no checksum to update: 0 means none for IPv4).
#[inline(always)]
fn set_source_port(udp: &mut UdpHdr, port: u16) {
    udp.src = port.to_be_bytes();
}
