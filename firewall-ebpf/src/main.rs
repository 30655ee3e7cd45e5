//! The entry points of the firewall's eBPF object, and nothing else: each program the daemon
//! attaches is a thin function here that hands its context to the module of its concern.
//!
//! - Inbound, XDP ([`firewall_xdp`], [`firewall_xdp_l3`]): parse a frame (`parse`), look it up
//!   in the connection table (`conntrack`), else classify it against the compiled rule maps
//!   with a constant number of lookups (`classifier`, and `selector` for rules about
//!   programs), then allow, reject (answer with RST or ICMP port unreachable via XDP_TX,
//!   `reply`) or drop it (`inbound`).
//! - Egress, TC ([`firewall_egress`], [`firewall_egress_l3`]): record the flows the host
//!   opens and drop the packets of sockets held by an outbound `stealth` (`egress`).
//! - Outbound, cgroup sock_addr hooks ([`firewall_connect4`] ...): judge the host's own
//!   connect() and sendmsg() calls (`outbound`). The daemon loads a second copy of this object
//!   whose rule maps hold the outbound rules, and attaches only its cgroup programs, which call
//!   the same classifier.
//! - Listeners, cgroup sock hooks ([`firewall_post_bind4`] ...): record who bound each port,
//!   and forget it when the socket is released (`listeners`).
//!
//! Decisions the rules say to log go to the daemon through a ring buffer, within a per-CPU
//! budget (`decision_log`). Trace messages for debugging (`diagnostics`) are compiled in and
//! removed at load unless the daemon turns them on.
//!
//! Every outcome, including every malformed-packet drop, is counted in `COUNTERS`
//! (`counters`); the verdict of each malformed case is listed on [`firewall_common::Counter`]
//! and in the README.
//!
//! Modules depend on each other in one direction only (a DAG; `counters`, `addr`, `clock`,
//! `csum`, `diagnostics` and `scratch` use no other module; the benchmark's `generator` uses
//! only `csum`, its `blocklist` none):
//! `inbound` -> `conntrack`, `reply`, `selector`, `classifier`, `decision_log`, `dns`;
//! `egress` -> `conntrack`, `outbound`, `dns`; `outbound` -> `selector`, `owners`,
//! `classifier`, `decision_log`, `dns`;
//! `decision_log` -> `identity`, `reply`, `parse`; `selector` -> `listeners`,
//! `classifier`, `identity`, `scratch`, `dns`; `dns` -> `classifier`, `parse`, `scratch`,
//! `clock`; `conntrack` -> `listeners`, `owners`, `scratch`;
//! `listeners` -> `owners`, `identity`, `scratch`; `owners` -> `identity` -> `counters`;
//! `reply` -> `csum`; `classifier`, `conntrack`, `reply` -> `parse` -> `addr`.
#![no_std]
#![no_main]

mod addr;
mod blocklist;
mod classifier;
mod clock;
mod conntrack;
mod counters;
mod csum;
mod decision_log;
mod diagnostics;
mod dns;
mod egress;
mod generator;
mod identity;
mod inbound;
mod listeners;
mod outbound;
mod owners;
mod parse;
mod reply;
mod scratch;
mod selector;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action::XDP_PASS},
    macros::{cgroup_sock, cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, SockContext, TcContext, XdpContext},
};
use firewall_common::{AF_INET, AF_INET6, Counter};

use crate::counters::count;

// Devices without a link-layer header (tun, wireguard, ppp, ip tunnels) get their own entry
// points, `firewall_xdp_l3` and `firewall_egress_l3`, in the same object as the Ethernet ones.
// Both pairs share every map and load-time constant of a generation, and the daemon picks the
// pair per interface from the device type. A load-time constant would have needed a second
// load (and a second set of per-generation maps) for each rule-set generation as soon as one
// such device exists; a second entry point costs one more verification per generation and
// nothing per packet: the start offset is a constant in each, and the Ethernet code is not in
// the L3 programs at all.

/// Inbound on Ethernet devices.
#[xdp]
pub fn firewall_xdp(ctx: XdpContext) -> u32 {
    count(Counter::Packets);
    inbound::inbound(&ctx, parse::parse(&ctx))
}

/// Inbound on devices without a link-layer header: the frame starts at the IP header.
#[xdp]
pub fn firewall_xdp_l3(ctx: XdpContext) -> u32 {
    count(Counter::Packets);
    let ether_type = parse::l3_ether_type(&ctx);
    inbound::inbound(&ctx, parse::parse_l3(&ctx, ether_type))
}

/// Egress: records the flows the host opens, so their replies pass the XDP program, and
/// follows the state of every tracked flow.
///
/// It drops exactly one kind of packet: those of a socket an outbound verdict said `stealth`
/// for, to the destination that verdict was about (recorded by the cgroup hooks in
/// `OUT_STEALTH`, see `outbound.rs`). The application's connect() or sendmsg() succeeded, and
/// its packets vanish, as behind a black hole. That lookup is made only when the rule set can
/// say `stealth` outbound (`OUT_CAN_STEALTH`); every other packet passes (`TC_ACT_OK`). Dropped
/// packets are not recorded in the connection table.
#[classifier]
pub fn firewall_egress(ctx: TcContext) -> i32 {
    count(Counter::EgressPackets);
    egress::pull_headers(&ctx);
    egress::egress(&ctx, parse::parse(&ctx))
}

/// [`firewall_egress`] on devices without a link-layer header, where the socket buffer starts
/// at the IP header and `skb->protocol` says which one.
#[classifier]
pub fn firewall_egress_l3(ctx: TcContext) -> i32 {
    count(Counter::EgressPackets);
    egress::pull_headers(&ctx);
    let ether_type = u16::from_be(ctx.skb.protocol() as u16);
    egress::egress(&ctx, parse::parse_l3(&ctx, ether_type))
}

/// Reads a DNS answer the XDP programs let pass (`dns`): tail-called by them through
/// `DNS_PROGS`, never attached. The answer always passes.
#[xdp]
pub fn firewall_dns(ctx: XdpContext) -> u32 {
    dns::read(&ctx);
    XDP_PASS
}

/// Passes everything: attached to veth peers in tests (native XDP_TX on veth is only delivered
/// when the peer has an XDP program) and measured as the floor of the benchmarks.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// The benchmark's reference blocklist (`blocklist`), timed beside the firewall by
/// `testrun_bench`; the daemon never loads it.
#[xdp]
pub fn xdp_blocklist(ctx: XdpContext) -> u32 {
    blocklist::judge(&ctx)
}

/// The benchmark's frame generator (`generator`), run with live frames by `cargo xtask bench`;
/// the daemon never loads it.
#[xdp]
pub fn xdp_generate(ctx: XdpContext) -> u32 {
    generator::generate(&ctx)
}

// The verifier lets the IPv4 hooks read only `user_ip4` and the IPv6 hooks only `user_ip6`:
// each hook reads the address of its own family (an IPv4-mapped destination given to an IPv6
// socket reaches connect6 as IPv6, and sendmsg4 as IPv4).

#[cgroup_sock_addr(connect4)]
pub fn firewall_connect4(ctx: SockAddrContext) -> i32 {
    outbound::judge::<AF_INET, true>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn firewall_connect6(ctx: SockAddrContext) -> i32 {
    outbound::judge::<AF_INET6, true>(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn firewall_sendmsg4(ctx: SockAddrContext) -> i32 {
    outbound::judge::<AF_INET, false>(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn firewall_sendmsg6(ctx: SockAddrContext) -> i32 {
    outbound::judge::<AF_INET6, false>(&ctx)
}

#[cgroup_sock(post_bind4)]
pub fn firewall_post_bind4(ctx: SockContext) -> i32 {
    listeners::record_bind(&ctx, 4)
}

#[cgroup_sock(post_bind6)]
pub fn firewall_post_bind6(ctx: SockContext) -> i32 {
    listeners::record_bind(&ctx, 6)
}

/// A socket is released: forget its owner (`SOCK_OWNER`: its flows have theirs already, and
/// deleting keeps the LRU from evicting, which costs every later insert) and its port, unless
/// another socket has bound that port since.
#[cgroup_sock(sock_release)]
pub fn firewall_sock_release(ctx: SockContext) -> i32 {
    listeners::release(&ctx)
}

/// TC egress on `lo`: queries to a resolver on the host and its answers (`dns`). Never drops.
#[classifier]
pub fn firewall_dns_loopback(ctx: TcContext) -> i32 {
    egress::pull_headers(&ctx);
    dns::loopback(&ctx);
    TC_ACT_OK
}

/// Reads an answer the loopback program handed over (`dns`): tail-called through
/// `DNS_LOOPBACK_PROGS`, never attached. Never drops.
#[classifier]
pub fn firewall_dns_loopback_read(ctx: TcContext) -> i32 {
    dns::loopback_read(&ctx);
    TC_ACT_OK
}

/// Prototype of the per-program connect hook: records who connects, decides nothing.
#[cgroup_sock_addr(connect4)]
pub fn identity_connect4(_ctx: SockAddrContext) -> i32 {
    identity::probe()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
