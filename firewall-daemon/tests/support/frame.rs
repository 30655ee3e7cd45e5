//! The reference datapath: what the XDP program does with a raw frame, written plainly over a
//! byte slice. [`parse`] restates the kernel parser (`firewall-ebpf/src/parse.rs`) and its drop
//! reasons; [`inbound`] follows it with the stateful model ([`Tracker`]), the rules
//! ([`rules::policy`]) and the reject path, and [`outbound`] with the tracker as the egress
//! program does. The differential fuzzer (`tests/fuzz_datapath.rs`) runs random and mutated
//! frames through both and requires the same XDP action, the same counters, the same deciding
//! rule and the same connection tables.
//!
//! Each malformed case is one line returning its [`Counter`]: a new drop reason in the kernel
//! is a new line here.
//!
//! Test support, not product code: it lives here so that the shipped binaries do not carry it.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use firewall_common::{Counter, ct};
use rules::{
    model::{Action, FragmentPolicy, PacketProto, Ruleset},
    tracker::{Inbound, Quoted, Segment, Tracker},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_HLEN: usize = 14;
/// VLAN tags the parser follows; a third is dropped.
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers the parser follows; more are dropped.
const MAX_EXT_HEADERS: usize = 8;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const TCP_HDR_LEN: usize = 20;
const ICMP_HDR_LEN: usize = 8;
/// A port unreachable quotes the IP header, its options or extension headers and 8 bytes of
/// UDP; beyond this many bytes the reply is not built (`firewall-ebpf/src/reply.rs`).
const MAX_QUOTED: usize = 40 + 64 + 8;

/// What the parser makes of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4/IPv6: passed.
    NonIp,
    /// ICMP that IPv6 or path MTU discovery cannot do without: passed.
    IcmpEssential,
    /// A fragment with a non-zero offset: `[defaults] fragments` decides.
    LaterFragment,
    Packet(Packet),
}

/// A packet to judge: the segment as the tracker sees it, and what the reject path needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub segment: Segment,
    /// Destination MAC is a group address.
    pub l2_multicast: bool,
    pub dst_mac: [u8; 6],
    pub l3_off: usize,
    pub l4_off: usize,
}

fn get<const N: usize>(frame: &[u8], off: usize) -> Option<[u8; N]> {
    frame.get(off..off.checked_add(N)?)?.try_into().ok()
}

fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// The IPv6 address at `b[at..at + 16]` (`b` must be that long).
fn v6_at(b: &[u8], at: usize) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses an Ethernet frame as the XDP program does.
pub fn parse(frame: &[u8]) -> Result<Parsed, Counter> {
    let eth: [u8; ETH_HLEN] = get(frame, 0).ok_or(Counter::DropMalformedL2)?;
    let is_vlan = |t: u16| t == ETH_P_8021Q || t == ETH_P_8021AD;
    let mut ether_type = be16([eth[12], eth[13]]);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ether_type) {
            break;
        }
        let tag: [u8; 4] = get(frame, off).ok_or(Counter::DropMalformedL2)?;
        ether_type = be16([tag[2], tag[3]]);
        off += 4;
    }
    if is_vlan(ether_type) {
        return Err(Counter::DropTooManyVlans);
    }
    let mut dst_mac = [0u8; 6];
    dst_mac.copy_from_slice(&eth[..6]);
    match ether_type {
        ETH_P_IP => parse_v4(frame, off, dst_mac),
        ETH_P_IPV6 => parse_v6(frame, off, dst_mac),
        _ => Ok(Parsed::NonIp),
    }
}

/// Parses a frame that starts at the IP header, as the XDP program for devices without a
/// link-layer header does (`parse::l3_ether_type`, `parse_l3`): the version nibble decides.
pub fn parse_l3(frame: &[u8]) -> Result<Parsed, Counter> {
    let v: [u8; 4] = get(frame, 0).ok_or(Counter::DropL3NotIp)?;
    match v[0] >> 4 {
        4 => parse_v4(frame, 0, [0; 6]),
        6 => parse_v6(frame, 0, [0; 6]),
        _ => Err(Counter::DropL3NotIp),
    }
}

fn parse_v4(frame: &[u8], off: usize, dst_mac: [u8; 6]) -> Result<Parsed, Counter> {
    let ip: [u8; 20] = get(frame, off).ok_or(Counter::DropMalformedIpv4)?;
    if ip[0] >> 4 != 4 {
        return Err(Counter::DropMalformedIpv4);
    }
    let hdr_len = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16([ip[2], ip[3]]));
    if hdr_len < 20 || total < hdr_len || off + hdr_len > frame.len() {
        return Err(Counter::DropMalformedIpv4);
    }
    if be16([ip[6], ip[7]]) & 0x1fff != 0 {
        return Ok(Parsed::LaterFragment);
    }
    let src = IpAddr::from([ip[12], ip[13], ip[14], ip[15]]);
    let dst = IpAddr::from([ip[16], ip[17], ip[18], ip[19]]);
    transport(
        frame,
        Addrs {
            off,
            end: off + total,
            src,
            dst,
        },
        off + hdr_len,
        (total - hdr_len) as u32,
        ip[9],
        dst_mac,
    )
}

fn parse_v6(frame: &[u8], off: usize, dst_mac: [u8; 6]) -> Result<Parsed, Counter> {
    let ip: [u8; 40] = get(frame, off).ok_or(Counter::DropMalformedIpv6)?;
    if ip[0] >> 4 != 6 {
        return Err(Counter::DropMalformedIpv6);
    }
    let (src, dst) = (v6_at(&ip, 8), v6_at(&ip, 24));
    if rules::model::embeds_ipv4(src) || rules::model::embeds_ipv4(dst) {
        return Err(Counter::DropIpv6EmbeddedIpv4);
    }
    // A zero payload length (jumbogram, BIG TCP): the frame bounds the packet.
    let payload_len = usize::from(be16([ip[4], ip[5]]));
    let end = if payload_len == 0 {
        frame.len()
    } else {
        off + 40 + payload_len
    };
    let is_ext = |n: u8| {
        matches!(
            n,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
        )
    };
    let mut next = ip[6];
    let mut l4 = off + 40;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let h: [u8; 2] = get(frame, l4).ok_or(Counter::DropIpv6ExtHeaders)?;
                next = h[0];
                l4 += (usize::from(h[1]) + 1) * 8;
            }
            IPPROTO_AH => {
                let h: [u8; 2] = get(frame, l4).ok_or(Counter::DropIpv6ExtHeaders)?;
                next = h[0];
                l4 += (usize::from(h[1]) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let h: [u8; 4] = get(frame, l4).ok_or(Counter::DropIpv6ExtHeaders)?;
                if be16([h[2], h[3]]) >> 3 != 0 {
                    return Ok(Parsed::LaterFragment);
                }
                next = h[0];
                l4 += 8;
            }
            _ => break,
        }
    }
    if l4 > frame.len() || l4 > end || is_ext(next) {
        return Err(Counter::DropIpv6ExtHeaders);
    }
    let ext_len = l4 - off - 40;
    let payload = payload_len.saturating_sub(ext_len) as u32;
    transport(
        frame,
        Addrs { off, end, src, dst },
        l4,
        payload,
        next,
        dst_mac,
    )
}

/// The IP layer of a packet: where it starts and ends (its own length: Ethernet padding
/// follows), its source (the remote host) and destination.
struct Addrs {
    off: usize,
    end: usize,
    src: IpAddr,
    dst: IpAddr,
}

fn transport(
    frame: &[u8],
    ip: Addrs,
    l4_off: usize,
    l4_len: u32,
    ip_proto: u8,
    dst_mac: [u8; 6],
) -> Result<Parsed, Counter> {
    let v6 = ip.src.is_ipv6();
    let mut seg = Segment {
        local: ip.dst,
        remote: ip.src,
        proto: PacketProto::Other,
        local_port: 0,
        remote_port: 0,
        tcp_flags: 0,
        seq: 0,
        ack: 0,
        payload: 0,
        icmp_type: 0,
        icmp_id: 0,
        quoted: None,
        window: 0,
        wscale: None,
    };
    match (ip_proto, v6) {
        (ct::IPPROTO_TCP, _) => {
            let t: [u8; TCP_HDR_LEN] = get(frame, l4_off).ok_or(Counter::DropMalformedL4)?;
            let data_off = usize::from(t[12] >> 4) * 4;
            if data_off < TCP_HDR_LEN
                || l4_off + data_off > frame.len()
                || l4_off + data_off > ip.end
            {
                return Err(Counter::DropMalformedL4);
            }
            seg.proto = PacketProto::Tcp;
            seg.remote_port = be16([t[0], t[1]]);
            seg.local_port = be16([t[2], t[3]]);
            seg.seq = be32(&t[4..8]);
            seg.ack = be32(&t[8..12]);
            seg.tcp_flags = t[13];
            seg.payload = l4_len.saturating_sub(data_off as u32);
            seg.window = be16([t[14], t[15]]);
            if t[13] & ct::TCP_SYN != 0 {
                seg.wscale = Some(window_scale(frame, l4_off + TCP_HDR_LEN, l4_off + data_off));
            }
        }
        (ct::IPPROTO_UDP, _) => {
            let u: [u8; 8] = get(frame, l4_off).ok_or(Counter::DropMalformedL4)?;
            if l4_off + 8 > ip.end {
                return Err(Counter::DropMalformedL4);
            }
            seg.proto = PacketProto::Udp;
            seg.remote_port = be16([u[0], u[1]]);
            seg.local_port = be16([u[2], u[3]]);
        }
        (ct::IPPROTO_ICMP, false) | (ct::IPPROTO_ICMPV6, true) => {
            let h: [u8; ICMP_HDR_LEN] = get(frame, l4_off).ok_or(Counter::DropMalformedL4)?;
            if l4_off + ICMP_HDR_LEN > ip.end {
                return Err(Counter::DropMalformedL4);
            }
            let essential = if v6 {
                // Packet too big, MLD, router and neighbour discovery.
                matches!(h[0], 2 | 130..=137 | 143)
            } else {
                // Fragmentation needed: path MTU discovery.
                h[0] == 3 && h[1] == 4
            };
            if essential {
                return Ok(Parsed::IcmpEssential);
            }
            seg.proto = PacketProto::Icmp;
            seg.icmp_type = h[0];
            seg.icmp_id = be16([h[4], h[5]]);
            seg.quoted = quoted(frame, l4_off + ICMP_HDR_LEN, v6);
        }
        _ => {}
    }
    Ok(Parsed::Packet(Packet {
        segment: seg,
        l2_multicast: dst_mac[0] & 1 != 0,
        dst_mac,
        l3_off: ip.off,
        l4_off,
    }))
}

/// The window scale option among the TCP options in `[start, end)`, as the kernel parser reads
/// it: at most 8 options; `NO_WSCALE` at the end of the list, `WSCALE_UNKNOWN` for a list it
/// cannot read to the option or its end.
fn window_scale(frame: &[u8], start: usize, end: usize) -> u8 {
    let len = end.saturating_sub(start).min(40);
    let mut off = 0;
    for _ in 0..8 {
        if off >= len {
            return ct::NO_WSCALE;
        }
        let Some(&kind) = frame.get(start + off) else {
            return ct::WSCALE_UNKNOWN;
        };
        match kind {
            0 => return ct::NO_WSCALE,
            1 => off += 1,
            _ => {
                let Some(o): Option<[u8; 3]> = get(frame, start + off) else {
                    return ct::WSCALE_UNKNOWN;
                };
                if kind == 3 && o[1] == 3 {
                    return o[2];
                }
                if o[1] < 2 {
                    return ct::WSCALE_UNKNOWN;
                }
                off += usize::from(o[1]);
            }
        }
    }
    ct::WSCALE_UNKNOWN
}

/// The packet an ICMP error quotes, as the kernel's related-flow lookup reads it: an IPv4
/// header (version and IHL checked) or a fixed IPv6 header (nothing checked, no extension
/// headers), then 8 bytes of TCP, UDP or an echo request. `None` when the kernel looks nothing
/// up, or looks up a key no flow can have.
fn quoted(frame: &[u8], inner: usize, v6: bool) -> Option<Quoted> {
    let (src, dst, proto, l4) = if v6 {
        let h: [u8; 40] = get(frame, inner)?;
        (v6_at(&h, 8), v6_at(&h, 24), h[6], inner + 40)
    } else {
        let h: [u8; 20] = get(frame, inner)?;
        let ihl = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || ihl < 20 {
            return None;
        }
        (
            IpAddr::from([h[12], h[13], h[14], h[15]]),
            IpAddr::from([h[16], h[17], h[18], h[19]]),
            h[9],
            inner + ihl,
        )
    };
    let t: [u8; 8] = get(frame, l4)?;
    let ports = |proto| Quoted {
        proto,
        src,
        dst,
        src_port: be16([t[0], t[1]]),
        dst_port: be16([t[2], t[3]]),
    };
    let echo = |src: IpAddr, dst: IpAddr| Quoted {
        proto: PacketProto::Icmp,
        src,
        dst,
        src_port: be16([t[4], t[5]]),
        dst_port: 0,
    };
    // The kernel keys the lookup with the quoted protocol number and the addresses as 16
    // bytes, whatever the outer family: an echo request of the other family is expressed as
    // the `Quoted` that yields that key (flows keyed by ICMP have IPv4-mapped addresses).
    let as_v6 = |a: IpAddr| match a {
        IpAddr::V4(a) => IpAddr::V6(a.to_ipv6_mapped()),
        v6 => v6,
    };
    let as_v4 = |a: IpAddr| match a {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4),
        v4 => Some(v4),
    };
    match proto {
        ct::IPPROTO_TCP => Some(ports(PacketProto::Tcp)),
        ct::IPPROTO_UDP => Some(ports(PacketProto::Udp)),
        ct::IPPROTO_ICMP if t[0] == 8 => Some(echo(as_v4(src)?, as_v4(dst)?)),
        ct::IPPROTO_ICMPV6 if t[0] == 128 => Some(echo(as_v6(src), as_v6(dst))),
        _ => None,
    }
}

/// XDP return codes.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// What the XDP program does with a frame: its return code, the verdict counters it moves
/// (see [`is_verdict_counter`]) and the rule whose `RULE_HITS` slot moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub xdp: u32,
    pub counters: Vec<Counter>,
    pub rule: Option<u32>,
}

/// The counters an [`Outcome`] accounts for: every verdict, pass and drop reason of the XDP
/// program (by name, so that a new `drop_*` or `pass_*` counter is compared from the start),
/// not the packet count, the tables' bookkeeping or other programs' counters.
pub fn is_verdict_counter(counter: Counter) -> bool {
    let name = counter.name();
    [
        "pass_",
        "drop_",
        "reject",
        "allowed",
        "stealthed",
        "default_verdict",
    ]
    .iter()
    .any(|p| name.starts_with(p))
        || counter == Counter::CtInvalidNoConn
}

/// What the reject path takes for this host (the daemon's `IFACE_MAC` entry of the receiving
/// interface and `LOCAL_ADDRS`, see `firewall_daemon::host::addrs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostView {
    /// The receiving interface's MAC; `None` before the daemon recorded it.
    pub mac: Option<[u8; 6]>,
    pub addrs: BTreeSet<IpAddr>,
    /// Replies left in the host-wide budget (`[reject] global_rate_per_sec`, taken after the
    /// per-source one); `None`: never used up. The reference has no clock: a caller that sets
    /// it keeps the kernel's bucket from refilling meanwhile.
    pub replies_left: Option<u64>,
}

impl HostView {
    /// The frame was sent to this host: to the interface's MAC and one of its addresses.
    fn is_for_us(&self, pkt: &Packet) -> bool {
        self.mac == Some(pkt.dst_mac) && self.addrs.contains(&pkt.segment.local)
    }
}

/// Runs one inbound frame through the reference datapath, updating `tracker` as the kernel
/// updates its tables. Assumes the per-source reply budget of `[reject]` is never used up.
pub fn inbound(
    tracker: &mut Tracker,
    ruleset: &Ruleset,
    host: &mut HostView,
    frame: &[u8],
) -> Outcome {
    judge(tracker, ruleset, host, parse(frame))
}

/// [`inbound`] for a frame that starts at the IP header (the XDP program of devices without
/// a link-layer header, `firewall_xdp_l3`).
pub fn inbound_l3(
    tracker: &mut Tracker,
    ruleset: &Ruleset,
    host: &mut HostView,
    frame: &[u8],
) -> Outcome {
    judge(tracker, ruleset, host, parse_l3(frame))
}

fn judge(
    tracker: &mut Tracker,
    ruleset: &Ruleset,
    host: &mut HostView,
    parsed: Result<Parsed, Counter>,
) -> Outcome {
    let pass = |c| Outcome {
        xdp: XDP_PASS,
        counters: vec![c],
        rule: None,
    };
    let pkt = match parsed {
        Err(reason) => {
            return Outcome {
                xdp: XDP_DROP,
                counters: vec![reason],
                rule: None,
            };
        }
        Ok(Parsed::NonIp) => return pass(Counter::PassNonIp),
        Ok(Parsed::IcmpEssential) => return pass(Counter::PassIcmpEssential),
        Ok(Parsed::LaterFragment) => {
            return match ruleset.defaults.fragments {
                FragmentPolicy::Allow => pass(Counter::PassFragment),
                FragmentPolicy::Stealth => Outcome {
                    xdp: XDP_DROP,
                    counters: vec![Counter::DropFragment],
                    rule: None,
                },
            };
        }
        Ok(Parsed::Packet(pkt)) => pkt,
    };
    let (action, mut counters, rule) = match tracker.inbound(&pkt.segment) {
        Inbound::Tracked => return pass(Counter::PassTracked),
        Inbound::Related => return pass(Counter::PassRelated),
        Inbound::Invalid => {
            return Outcome {
                xdp: XDP_DROP,
                counters: vec![Counter::DropCtInvalid],
                rule: None,
            };
        }
        // The parser drops these before the table (the tracker checks again for its own users).
        Inbound::EmbeddedIpv4 => {
            return Outcome {
                xdp: XDP_DROP,
                counters: vec![Counter::DropIpv6EmbeddedIpv4],
                rule: None,
            };
        }
        Inbound::Denied(action) => (action, vec![], None),
        Inbound::NoConnection(action) => (action, vec![Counter::CtInvalidNoConn], None),
        Inbound::Rules(d) => match d.rule {
            Some(i) => (d.action, vec![], Some(i)),
            None => (d.action, vec![Counter::DefaultVerdict], None),
        },
    };
    let xdp = match action {
        Action::Allow => {
            counters.push(Counter::Allowed);
            XDP_PASS
        }
        Action::Stealth => {
            counters.push(Counter::Stealthed);
            XDP_DROP
        }
        Action::Reject => {
            counters.push(Counter::Rejected);
            let (xdp, c) = reject(&pkt, host);
            counters.push(c);
            xdp
        }
    };
    Outcome {
        xdp,
        counters,
        rule,
    }
}

/// Runs a frame the host sends through the reference egress path: the same parser, then the
/// tracker from the host's side. The egress program never drops (it has no outbound `stealth`
/// to apply here).
pub fn outbound(tracker: &mut Tracker, frame: &[u8]) {
    if let Ok(Parsed::Packet(pkt)) = parse(frame) {
        let s = pkt.segment;
        tracker.outbound(&Segment {
            local: s.remote,
            remote: s.local,
            local_port: s.remote_port,
            remote_port: s.local_port,
            ..s
        });
    }
}

/// The reject path (`firewall-ebpf/src/main.rs` `reject`, `reply.rs`), in its order: what
/// may be answered, whether the frame is for this host, the per-source budget (never used up
/// here), the host-wide one, then the reply's construction (whose failure still spent the
/// tokens).
fn reject(pkt: &Packet, host: &mut HostView) -> (u32, Counter) {
    // Without a link-layer header no reply can be sent (see `firewall_xdp_l3`).
    if pkt.l3_off == 0 {
        return (XDP_DROP, Counter::RejectNoLinkLayer);
    }
    let seg = &pkt.segment;
    let defined = match seg.proto {
        // Never answer a RST; never an ICMP error about ICMP or other protocols.
        PacketProto::Tcp => seg.tcp_flags & ct::TCP_RST == 0,
        PacketProto::Udp => true,
        PacketProto::Icmp | PacketProto::Other => false,
    };
    if !defined || !answerable(pkt) {
        return (XDP_DROP, Counter::RejectNoReply);
    }
    if !host.is_for_us(pkt) {
        return (XDP_DROP, Counter::RejectNotForUs);
    }
    if let Some(left) = &mut host.replies_left {
        if *left == 0 {
            return (XDP_DROP, Counter::RejectGlobalRateLimited);
        }
        *left -= 1;
    }
    match seg.proto {
        PacketProto::Tcp => (XDP_TX, Counter::RejectTcpRst),
        _ if pkt.l4_off - pkt.l3_off + 8 > MAX_QUOTED => (XDP_DROP, Counter::RejectBuildFailed),
        _ => (XDP_TX, Counter::RejectIcmpUnreachable),
    }
}

/// Never a reply to a link-layer group address, nor from or to an address that cannot be
/// answered (unspecified, broadcast, multicast, loopback).
fn answerable(pkt: &Packet) -> bool {
    if pkt.l2_multicast {
        return false;
    }
    let v4_unicast = |a: Ipv4Addr| !a.is_unspecified() && !a.is_broadcast() && !a.is_multicast();
    match (pkt.segment.remote, pkt.segment.local) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            v4_unicast(src) && v4_unicast(dst) && src.octets()[0] != 127
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            !src.is_multicast()
                && !dst.is_multicast()
                && !src.is_unspecified()
                && !src.is_loopback()
        }
        _ => false,
    }
}
