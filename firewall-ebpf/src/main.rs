//! The inbound datapath: one XDP program that parses a frame, classifies it against the compiled
//! rule maps with a constant number of lookups, and allows, rejects (answers with RST or ICMP
//! port unreachable via XDP_TX) or drops it.
//!
//! The same object holds the outbound hooks (`outbound.rs`): the daemon loads a second copy of
//! it whose rule maps hold the outbound rules, and attaches only its cgroup programs, which
//! call the same [`classify_parts`].
//!
//! Every outcome, including every malformed-packet drop, is counted in `COUNTERS`; the verdict
//! of each malformed case is listed on [`firewall_common::Counter`] and in the README.
#![no_std]
#![no_main]

mod conntrack;
mod csum;
mod identity;
mod outbound;
mod parse;
mod reply;
mod scoped;

use aya_ebpf::{
    Global,
    bindings::{
        TC_ACT_OK, TC_ACT_SHOT,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use firewall_common::{
    ACTION_ALLOW, ACTION_REJECT, AddrValue, Counter, DEFAULT_RULE, FRAG_STEALTH, NO_MATCH,
    PROTO_CLASSES, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PairKey, PortValue, port_slot, verdict,
    verdict_action, verdict_rule,
};

use crate::parse::{Addr, Packet, Parsed};

// Load-time constants, set by the daemon for each rule-set generation (a reload loads a new
// program), so the verifier sees them as constants and prunes what a rule set does not use.
#[unsafe(no_mangle)]
static DEFAULT_INBOUND: Global<u32> = Global::new(verdict(DEFAULT_RULE, 2));
#[unsafe(no_mangle)]
static FRAGMENTS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static HAS_PAIRS: Global<u32> = Global::new(1);
#[unsafe(no_mangle)]
static PROTO_VERDICTS: Global<[u32; PROTO_CLASSES]> = Global::new([NO_MATCH; PROTO_CLASSES]);

// Rule maps: created per generation, sized by the daemon (`map_max_entries`).
#[map]
static ADDR4: LpmTrie<[u8; 4], AddrValue> = LpmTrie::with_max_entries(1, 0);
#[map]
static ADDR6: LpmTrie<[u8; 16], AddrValue> = LpmTrie::with_max_entries(1, 0);
#[map]
static PORTS: aya_ebpf::maps::Array<PortValue> =
    aya_ebpf::maps::Array::with_max_entries(firewall_common::PORT_SLOTS, 0);
#[map]
static PAIRS: HashMap<PairKey, u32> = HashMap::with_max_entries(1, 0);
#[map]
static RULE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

// State that outlives a generation: pinned by name, so every generation shares one copy.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, the program is not re-entered on this CPU.
        unsafe { *slot += 1 };
    }
}

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
    inbound(&ctx, parse::parse(&ctx))
}

/// Inbound on devices without a link-layer header: the frame starts at the IP header.
#[xdp]
pub fn firewall_xdp_l3(ctx: XdpContext) -> u32 {
    count(Counter::Packets);
    let ether_type = parse::l3_ether_type(&ctx);
    inbound(&ctx, parse::parse_l3(&ctx, ether_type))
}

#[inline(always)]
fn inbound(ctx: &XdpContext, parsed: Result<Parsed, Counter>) -> u32 {
    match parsed {
        Ok(Parsed::NonIp) => {
            count(Counter::PassNonIp);
            XDP_PASS
        }
        Ok(Parsed::IcmpEssential) => {
            count(Counter::PassIcmpEssential);
            XDP_PASS
        }
        Ok(Parsed::LaterFragment) => {
            if FRAGMENTS.load() == FRAG_STEALTH {
                count(Counter::DropFragment);
                XDP_DROP
            } else {
                count(Counter::PassFragment);
                XDP_PASS
            }
        }
        Ok(Parsed::Packet(pkt)) => {
            // SAFETY: a helper without preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            match conntrack::inbound(ctx, &pkt, now) {
                conntrack::Inbound::Tracked => {
                    count(Counter::PassTracked);
                    XDP_PASS
                }
                conntrack::Inbound::Related => {
                    count(Counter::PassRelated);
                    XDP_PASS
                }
                conntrack::Inbound::Invalid => {
                    count(Counter::DropCtInvalid);
                    XDP_DROP
                }
                conntrack::Inbound::Denied(word) => act(ctx, &pkt, word),
                conntrack::Inbound::NoConnection => {
                    count(Counter::CtInvalidNoConn);
                    let word = conntrack::config()
                        .map(|c| c.invalid_verdict)
                        .unwrap_or(verdict(DEFAULT_RULE, firewall_common::ACTION_STEALTH));
                    act(ctx, &pkt, word)
                }
                conntrack::Inbound::Unknown => judge(ctx, &pkt, now),
            }
        }
        Err(reason) => {
            count(reason);
            XDP_DROP
        }
    }
}

/// First-match classification with a fixed number of lookups (see
/// `firewall-daemon/src/compile.md`): the longest-prefix match of the remote address and the
/// (protocol, port) slot each carry the first rule that needs only that field; rules that need
/// both meet in `PAIRS`; rules that need neither are a load-time constant per protocol. The
/// smallest verdict word is the first rule in file order.
#[inline(always)]
fn classify(pkt: &Packet) -> u32 {
    classify_parts(&pkt.remote, pkt.proto, pkt.local_port)
}

/// [`classify`] on its parts: the remote address, the `PROTO_*` class and the port the rules
/// name. Inbound that is the packet's local (destination) port; the outbound copy of the
/// program (cgroup hooks, `outbound.rs`) passes the destination address and port of a
/// connect() or sendmsg(), and its maps hold the outbound rules.
#[inline(always)]
pub(crate) fn classify_parts(remote: &Addr, proto: u32, port: u16) -> u32 {
    let proto = proto & 3;
    let addr = match remote {
        Addr::V4(a) => ADDR4.get(&Key::new(32, *a)),
        Addr::V6(a) => ADDR6.get(&Key::new(128, *a)),
    };
    let (addr_class, mut best) = match addr {
        Some(v) => (v.class, min(v.any_proto, v.proto[proto as usize])),
        None => (NO_MATCH, NO_MATCH),
    };
    // A match rather than an index: indexing a stack array makes LLVM OR an offset into the
    // frame pointer, which the verifier rejects.
    let pv = PROTO_VERDICTS.load();
    best = min(
        best,
        match proto {
            PROTO_TCP => pv[0],
            PROTO_UDP => pv[1],
            PROTO_ICMP => pv[2],
            _ => pv[3],
        },
    );
    let port_class = match PORTS.get(port_slot(proto, port)) {
        Some(v) => {
            best = min(best, v.any_addr());
            v.class()
        }
        None => NO_MATCH,
    };
    min(best, pair_verdict(addr_class, port_class))
}

/// The `PAIRS` entry of an address class and a port class (unscoped and group classes share
/// the map: their ids never collide), or [`NO_MATCH`].
#[inline(always)]
pub(crate) fn pair_verdict(addr_class: u32, port_class: u32) -> u32 {
    if HAS_PAIRS.load() == 0 || addr_class == NO_MATCH || port_class == NO_MATCH {
        return NO_MATCH;
    }
    let key = PairKey {
        addr_class,
        port_class,
    };
    // SAFETY: the value is a plain u32 copied out immediately.
    match unsafe { PAIRS.get(&key) } {
        Some(word) => *word,
        None => NO_MATCH,
    }
}

/// Counts a decision of rule `word` in `RULE_HITS` (not for `[defaults]`).
#[inline(always)]
pub(crate) fn count_rule_hit(word: u32) {
    if let Some(hits) = RULE_HITS.get_ptr_mut(verdict_rule(word)) {
        // SAFETY: per-CPU slot.
        unsafe { *hits += 1 };
    }
}

#[inline(always)]
pub(crate) fn min(a: u32, b: u32) -> u32 {
    if a < b { a } else { b }
}

#[inline(always)]
fn judge(ctx: &XdpContext, pkt: &Packet, now: u64) -> u32 {
    let mut word = classify(pkt);
    if scoped::active() {
        // Scalars only: a pointer argument would force the packet onto this frame's stack.
        let r = scoped::Remote::of(&pkt.remote);
        let l = scoped::Remote::of(&pkt.local);
        let meta = (u64::from(r.v4) << 32)
            | (u64::from(pkt.proto & 0xff) << 16)
            | u64::from(pkt.local_port);
        word = min(word, scoped::classify_inbound(r.hi, r.lo, meta, l.hi, l.lo));
    }
    if word == NO_MATCH {
        word = DEFAULT_INBOUND.load();
        count(Counter::DefaultVerdict);
    } else {
        count_rule_hit(word);
    }
    if verdict_action(word) == ACTION_ALLOW {
        conntrack::admit(ctx, pkt, word, now);
    }
    act(ctx, pkt, word)
}

/// Carries out a verdict word's action.
#[inline(always)]
fn act(ctx: &XdpContext, pkt: &Packet, word: u32) -> u32 {
    match verdict_action(word) {
        ACTION_ALLOW => {
            count(Counter::Allowed);
            XDP_PASS
        }
        ACTION_REJECT => {
            count(Counter::Rejected);
            reject(ctx, pkt)
        }
        _ => {
            count(Counter::Stealthed);
            XDP_DROP
        }
    }
}

/// Answers the way a closed port does, or degrades to a silent drop (counted) where no answer
/// is defined, the frame was not for this host, or a reply budget is used up.
#[inline(always)]
fn reject(ctx: &XdpContext, pkt: &Packet) -> u32 {
    // No link-layer header, so no reply: after XDP_TX, generic XDP (the only mode these
    // devices attach in) re-derives skb->protocol from the first 14 bytes as if they were an
    // Ethernet header, and wireguard and the ip tunnels drop a packet whose protocol does not
    // match its IP version (kernel source, bpf_prog_run_generic_xdp; not measured here). One
    // behaviour for every such device: a silent drop, counted.
    if pkt.l2 == parse::L2::None {
        count(Counter::RejectNoLinkLayer);
        return XDP_DROP;
    }
    let answerable = match pkt.proto {
        // Never answer a RST (RFC 9293 3.10.7.1).
        PROTO_TCP => pkt.tcp_flags & reply::TCP_RST == 0,
        PROTO_UDP => true,
        // ICMP errors are never sent about ICMP (RFC 1122 3.2.2); other protocols are dropped.
        _ => false,
    };
    if !answerable || !reply::answerable(pkt) {
        count(Counter::RejectNoReply);
        return XDP_DROP;
    }
    let Some(mac) = reply::our_mac(ctx, pkt) else {
        count(Counter::RejectNotForUs);
        return XDP_DROP;
    };
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if !reply::take_source_token(&pkt.remote, now) {
        count(Counter::RejectRateLimited);
        return XDP_DROP;
    }
    if !reply::take_global_token(now) {
        count(Counter::RejectGlobalRateLimited);
        return XDP_DROP;
    }
    let built = if pkt.proto == PROTO_TCP {
        reply::tcp_rst(ctx, pkt, mac).map(|()| Counter::RejectTcpRst)
    } else {
        reply::port_unreachable(ctx, pkt, mac).map(|()| Counter::RejectIcmpUnreachable)
    };
    match built {
        Ok(counter) => {
            count(counter);
            XDP_TX
        }
        Err(()) => {
            count(Counter::RejectBuildFailed);
            XDP_DROP
        }
    }
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
    pull_headers(&ctx);
    egress(&ctx, parse::parse(&ctx))
}

/// [`firewall_egress`] on devices without a link-layer header, where the socket buffer starts
/// at the IP header and `skb->protocol` says which one.
#[classifier]
pub fn firewall_egress_l3(ctx: TcContext) -> i32 {
    count(Counter::EgressPackets);
    pull_headers(&ctx);
    let ether_type = u16::from_be(ctx.skb.protocol() as u16);
    egress(&ctx, parse::parse_l3(&ctx, ether_type))
}

/// Headers of locally built packets are normally in the linear area; pulls them if not.
#[inline(always)]
fn pull_headers(ctx: &TcContext) {
    let len = ctx.len();
    let want = if len < EGRESS_PULL { len } else { EGRESS_PULL };
    if ctx.data_end() - ctx.data() < want as usize {
        let _ = ctx.pull_data(want);
    }
}

#[inline(always)]
fn egress(ctx: &TcContext, parsed: Result<Parsed, Counter>) -> i32 {
    let len = ctx.len();
    if let Ok(Parsed::Packet(pkt)) = parsed {
        if outbound::held(ctx, &pkt) {
            count(Counter::OutStealthDropped);
            return TC_ACT_SHOT;
        }
        // SAFETY: a helper without preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        conntrack::outbound(ctx, &pkt, len as u64, now);
    }
    TC_ACT_OK
}

/// Bytes the egress program needs linear: Ethernet + VLANs + IPv6 with extension headers + TCP.
const EGRESS_PULL: u32 = 192;

/// Passes everything: attached to veth peers in tests (native XDP_TX on veth is only delivered
/// when the peer has an XDP program) and measured as the floor of the benchmarks.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
