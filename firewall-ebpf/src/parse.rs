//! Bounds-checked header parsing. Every read goes through [`ptr_at`], which checks the whole
//! object against `data_end`; offsets follow the headers (VLAN tags, IPv4 IHL, IPv6 extension
//! headers), never fixed positions.
//!
//! Verdicts for malformed input (all drops, each counted under its own reason):
//! - shorter than Ethernet (+ VLAN tags): `DropMalformedL2`; a third VLAN tag: `DropTooManyVlans`;
//! - on a device without a link-layer header, a frame that does not start with an IPv4 or IPv6
//!   header: `DropL3NotIp`;
//! - IPv4 header truncated, version != 4, IHL < 5, options past the frame or total length below
//!   the header: `DropMalformedIpv4`;
//! - IPv6 header truncated or version != 6: `DropMalformedIpv6`;
//! - an IPv6 source or destination that embeds an IPv4 address (see [`embeds_ipv4`]):
//!   `DropIpv6EmbeddedIpv4`;
//! - an extension header truncated, past the payload length, or more than
//!   [`MAX_EXT_HEADERS`] of them: `DropIpv6ExtHeaders`;
//! - TCP header truncated, data offset < 5 or past the frame, UDP header truncated, ICMP/ICMPv6
//!   shorter than its 8-byte header: `DropMalformedL4`. "Truncated" means past the end of
//!   the frame or past the end of the IP packet (IPv4 total length, IPv6 payload length),
//!   whichever comes first: Ethernet pads short frames, and a header read from the padding
//!   (a tiny first fragment) is not the one the receiver reassembles.

use core::mem;

use aya_ebpf::{
    macros::map,
    maps::PerCpuArray,
    programs::{TcContext, XdpContext},
};
use firewall_common::{
    Counter, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMPV6_MLD_QUERY, ICMPV6_MLD2_REPORT,
    ICMPV6_PACKET_TOO_BIG, ICMPV6_REDIRECT, IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP,
    PROTO_ICMP, PROTO_OTHER, PROTO_TCP, PROTO_UDP,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::addr::Addr;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HDR_LEN: usize = 4;
/// VLAN tags followed (QinQ); a frame with more is dropped.
const MAX_VLAN_TAGS: usize = 2;
/// The longest link-layer header followed: Ethernet and two VLAN tags.
const MAX_L2_LEN: usize = EthHdr::LEN + MAX_VLAN_TAGS * VLAN_HDR_LEN;
/// IPv6 extension headers followed before the upper-layer header; more are dropped. Real
/// traffic carries at most a few (hop-by-hop, routing, fragment, destination options).
pub const MAX_EXT_HEADERS: usize = 8;

pub const TCP_HDR_LEN: usize = 20;
/// ICMP and ICMPv6 headers: type, code, checksum and 4 bytes that depend on the type.
const ICMP_HDR_LEN: usize = 8;

/// A frame the parser can read: XDP frames and (egress) socket buffers.
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The program's context pointer, to hand to a subprogram ([`Frame::from_raw`]).
    fn raw(&self) -> *mut core::ffi::c_void;
    /// # Safety
    /// `raw` must be this program's own context pointer ([`Frame::raw`]).
    unsafe fn from_raw(raw: *mut core::ffi::c_void) -> Self;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn raw(&self) -> *mut core::ffi::c_void {
        aya_ebpf::EbpfContext::as_ptr(self)
    }
    #[inline(always)]
    unsafe fn from_raw(raw: *mut core::ffi::c_void) -> Self {
        XdpContext::new(raw.cast())
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn raw(&self) -> *mut core::ffi::c_void {
        aya_ebpf::EbpfContext::as_ptr(self)
    }
    #[inline(always)]
    unsafe fn from_raw(raw: *mut core::ffi::c_void) -> Self {
        // SAFETY: the caller passes the program's (non-null) context pointer.
        TcContext::new(unsafe { core::ptr::NonNull::new_unchecked(raw.cast()) })
    }
}

/// What the classifier and the reply builders need, copied out of the frame so replies can
/// overwrite the headers they were read from. `remote` is the source address and `local` the
/// destination, as seen on receive; the egress program swaps them.
pub struct Packet {
    /// Where the IP header starts: 0 on devices without a link-layer header ([`parse_l3`]).
    pub l3_off: usize,
    pub l4_off: usize,
    pub remote: Addr,
    pub local: Addr,
    /// `PROTO_*` class.
    pub proto: u32,
    pub local_port: u16,
    pub remote_port: u16,
    pub tcp_flags: u8,
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    /// Bytes of TCP payload (from the IP length fields).
    pub tcp_payload: u32,
    /// TCP window field (unscaled), and the window scale option's shift on a SYN segment
    /// (`ct::NO_WSCALE` when absent or not a SYN).
    pub tcp_window: u16,
    pub tcp_wscale: u8,
    /// ICMP/ICMPv6 type, and the echo identifier (bytes 4-5 of the header).
    pub icmp_type: u8,
    pub icmp_id: u16,
    /// What the link-layer header said of the frame's destination.
    pub l2: L2,
}

/// The frame's link-layer header, as far as answering it goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L2 {
    /// None (tun, wireguard, ppp, ip tunnels): the frame starts at the IP header.
    None,
    /// Ethernet, to this host's address.
    Unicast,
    /// Ethernet, to a group address (broadcast or multicast).
    Group,
}

pub enum Parsed {
    /// Not IPv4/IPv6: ARP and other link protocols.
    NonIp,
    /// ICMP that IPv6 or path MTU discovery cannot do without.
    IcmpEssential,
    /// A fragment with a non-zero offset: it carries no transport header to judge.
    LaterFragment,
    Packet(Packet),
}

#[inline(always)]
pub fn ptr_at<T, F: Frame>(ctx: &F, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    ptr_at::<T, XdpContext>(ctx, off).map(|p| p as *mut T)
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD
}

#[inline(always)]
pub fn parse<F: Frame>(ctx: &F) -> Result<Parsed, Counter> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Counter::DropMalformedL2)?;
    // SAFETY: bounds checked by ptr_at.
    let (dst_mac0, mut ether_type) =
        unsafe { ((*eth).dst_addr[0], u16::from_be((*eth).ether_type)) };
    let mut off = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ether_type) {
            break;
        }
        let tag: *const [u8; 4] = ptr_at(ctx, off).ok_or(Counter::DropMalformedL2)?;
        // SAFETY: bounds checked by ptr_at.
        let tag = unsafe { *tag };
        ether_type = be16([tag[2], tag[3]]);
        off += VLAN_HDR_LEN;
    }
    if is_vlan(ether_type) {
        return Err(Counter::DropTooManyVlans);
    }
    let l2 = if dst_mac0 & 1 != 0 {
        L2::Group
    } else {
        L2::Unicast
    };
    let off = widen(off).ok_or(Counter::DropMalformedL2)?;
    match ether_type {
        ETH_P_IP => parse_v4(ctx, off, l2),
        ETH_P_IPV6 => parse_v6(ctx, off, l2),
        _ => Ok(Parsed::NonIp),
    }
}

/// Where [`widen`] puts an offset for the verifier to lose sight of its value.
#[map]
static WIDEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The IP header's offset (0 or past the link-layer header), unchanged, but as a value the
/// verifier knows only to lie in `[0, 31]`.
///
/// Why: the VLAN loop leaves the offset a different constant on each path (14, 18 or 22), and
/// the verifier prunes a path only where its state matches one already verified, which a
/// packet pointer at another constant offset never does. Every path then walked all of the
/// program after the parser again: the Ethernet XDP program took 789,000 verified
/// instructions on Linux 6.18 (the limit is 1,000,000), 270,000 with no VLAN tags, and
/// 165,000 with this. A value read back from a map is unknown to the verifier (so is its sum
/// with any constant), and one state with a range covers every path. The devices without a
/// link-layer header take the same range for their offset 0 (their XDP program 211,000
/// verified instructions before, 99,000 after); [`L2::None`], not the offset, tells the
/// reject path there is no header to answer with.
/// Costs a per-CPU array lookup per packet. If the slot cannot be had (it always can), the
/// frame is dropped as malformed.
#[inline(always)]
fn widen(off: usize) -> Option<usize> {
    // Bounded with a mask, not a comparison: Linux 6.1 loses a comparison's bound when LLVM
    // has spilled the register to the stack before comparing it (it links a spilled scalar to
    // its register only since 6.8). The value read is the value written, below the mask.
    const MASK: u64 = 0x1f;
    const _: () = assert!(MAX_L2_LEN as u64 <= MASK);
    let slot = WIDEN.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; the program is not re-entered on a CPU while it runs (XDP and
    // TC both run with bottom halves disabled).
    let off = unsafe {
        core::ptr::write_volatile(slot, off as u64);
        core::ptr::read_volatile(slot)
    };
    Some((off & MASK) as usize)
}

/// [`parse`] for devices without a link-layer header (tun, wireguard, ppp, ip tunnels): the
/// frame starts with the IP header, whose version nibble says which. Anything else is dropped
/// (`DropL3NotIp`): such a device carries only IP, and a frame the parser cannot place must not
/// pass unjudged. The egress program passes `ether_type` from `skb->protocol` instead.
#[inline(always)]
pub fn parse_l3<F: Frame>(ctx: &F, ether_type: u16) -> Result<Parsed, Counter> {
    let off = widen(0).ok_or(Counter::DropL3NotIp)?;
    match ether_type {
        ETH_P_IP => parse_v4(ctx, off, L2::None),
        ETH_P_IPV6 => parse_v6(ctx, off, L2::None),
        _ => Err(Counter::DropL3NotIp),
    }
}

/// The ether type an IP header's version nibble stands for (0 for neither version, or a frame
/// shorter than 4 bytes, which no IP header is).
#[inline(always)]
pub fn l3_ether_type<F: Frame>(ctx: &F) -> u16 {
    // Four bytes, not one: LLVM turns a one-byte bound check into `data >= data_end`, which
    // the verifier does not take as a bound.
    match ptr_at::<[u8; 4], F>(ctx, 0) {
        // SAFETY: bounds checked by ptr_at.
        Some(v) => match unsafe { (*v)[0] } >> 4 {
            4 => ETH_P_IP,
            6 => ETH_P_IPV6,
            _ => 0,
        },
        None => 0,
    }
}

#[inline(always)]
fn parse_v4<F: Frame>(ctx: &F, off: usize, l2: L2) -> Result<Parsed, Counter> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, off).ok_or(Counter::DropMalformedIpv4)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { *ip };
    if ip.vihl >> 4 != 4 {
        return Err(Counter::DropMalformedIpv4);
    }
    let hdr_len = ((ip.vihl & 0x0f) as usize) * 4;
    let total = be16(ip.tot_len) as usize;
    if hdr_len < Ipv4Hdr::LEN || total < hdr_len || ctx.data() + off + hdr_len > ctx.data_end() {
        return Err(Counter::DropMalformedIpv4);
    }
    if be16(ip.frags) & 0x1fff != 0 {
        return Ok(Parsed::LaterFragment);
    }
    transport(
        ctx,
        off,
        off + hdr_len,
        off + total,
        (total - hdr_len) as u32,
        ip.proto,
        Addr::V4(ip.src_addr),
        Addr::V4(ip.dst_addr),
        l2,
    )
}

#[inline(always)]
fn parse_v6<F: Frame>(ctx: &F, off: usize, l2: L2) -> Result<Parsed, Counter> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, off).ok_or(Counter::DropMalformedIpv6)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { *ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(Counter::DropMalformedIpv6);
    }
    // Read again as words from the packet: testing the copy in `ip` makes LLVM spill parts
    // of the packet pointer where the verifier refuses them. Checked again (opaque to LLVM,
    // which would drop the check as implied by the first): `off` is not a constant (see
    // [`widen`]), and the verifier takes a bound only on the register it was checked with.
    let w: *const [u32; 8] =
        ptr_at(ctx, core::hint::black_box(off + 8)).ok_or(Counter::DropMalformedIpv6)?;
    // SAFETY: bounds checked by ptr_at.
    let w = unsafe { *w };
    if embeds_ipv4(w[0], w[1], w[2], w[3]) || embeds_ipv4(w[4], w[5], w[6], w[7]) {
        return Err(Counter::DropIpv6EmbeddedIpv4);
    }
    // A zero payload length is a jumbogram's (RFC 2675), or a BIG TCP packet's the host sends
    // (more than 64 KiB, on egress): the frame bounds it.
    let payload_len = be16(ip.payload_len) as usize;
    let l3_end = if payload_len == 0 {
        ctx.data_end() - ctx.data()
    } else {
        off + Ipv6Hdr::LEN + payload_len
    };
    let mut next = ip.next_hdr;
    let mut l4 = off + Ipv6Hdr::LEN;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let h: *const [u8; 2] = ptr_at(ctx, l4).ok_or(Counter::DropIpv6ExtHeaders)?;
                // SAFETY: bounds checked by ptr_at.
                let h = unsafe { *h };
                next = h[0];
                l4 += (h[1] as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let h: *const [u8; 2] = ptr_at(ctx, l4).ok_or(Counter::DropIpv6ExtHeaders)?;
                // SAFETY: bounds checked by ptr_at.
                let h = unsafe { *h };
                next = h[0];
                l4 += (h[1] as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let h: *const [u8; 4] = ptr_at(ctx, l4).ok_or(Counter::DropIpv6ExtHeaders)?;
                // SAFETY: bounds checked by ptr_at.
                let h = unsafe { *h };
                if be16([h[2], h[3]]) >> 3 != 0 {
                    return Ok(Parsed::LaterFragment);
                }
                next = h[0];
                l4 += 8;
            }
            _ => break,
        }
    }
    // Each header's first bytes were bounds-checked when read; this checks that the last one
    // (whatever its declared length) ends inside the frame. Earlier ones end where a later
    // one was read, so they are covered.
    if ctx.data() + l4 > ctx.data_end()
        || l4 > l3_end
        || matches!(
            next,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
        )
    {
        return Err(Counter::DropIpv6ExtHeaders);
    }
    let ext_len = l4 - off - Ipv6Hdr::LEN;
    let payload = payload_len.saturating_sub(ext_len) as u32;
    transport(
        ctx,
        off,
        l4,
        l3_end,
        payload,
        next,
        Addr::V6(ip.src_addr),
        Addr::V6(ip.dst_addr),
        l2,
    )
}

/// Whether an IPv6 address (as four words in network order) embeds an IPv4 one:
/// IPv4-mapped (`::ffff:0:0/96`), which only a host's own dual-stack sockets use and never the
/// wire (RFC 4291 2.5.5.2; Linux drops such a source on receive), or IPv4-compatible (`::/96`,
/// deprecated by RFC 4291 2.5.5.1) except the unspecified address `::` and loopback `::1`.
/// `::` is the source of duplicate address detection and MLD reports, which must pass; `::1`
/// is no IPv4 address in disguise. Flows keep their family
/// ([`firewall_common::ct::CtKey::family`]), so these could not share an IPv4 flow's entry
/// anyway; they are dropped because no legitimate packet carries them, and the rules,
/// written per family, would judge an IPv4 peer by the IPv6 rules.
#[inline(always)]
fn embeds_ipv4(w0: u32, w1: u32, w2: u32, w3: u32) -> bool {
    let (mid, v4) = (u32::from_be(w2), u32::from_be(w3));
    w0 | w1 == 0 && (mid == 0xffff || (mid == 0 && v4 > 1))
}

/// ICMPv6 types IPv6 does not work without: packet too big (2), MLD (130-132, 143), router
/// and neighbour discovery (133-137).
#[inline(always)]
fn icmp6_essential(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        ICMPV6_PACKET_TOO_BIG | ICMPV6_MLD_QUERY..=ICMPV6_REDIRECT | ICMPV6_MLD2_REPORT
    )
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site per family, inlined"
)]
#[inline(always)]
fn transport<F: Frame>(
    ctx: &F,
    l3_off: usize,
    l4_off: usize,
    l3_end: usize,
    l4_len: u32,
    ip_proto: u8,
    remote: Addr,
    local: Addr,
    l2: L2,
) -> Result<Parsed, Counter> {
    let is_v6 = matches!(remote, Addr::V6(_));
    let mut pkt = Packet {
        l3_off,
        l4_off,
        remote,
        local,
        proto: PROTO_OTHER,
        local_port: 0,
        remote_port: 0,
        tcp_flags: 0,
        tcp_seq: 0,
        tcp_ack: 0,
        tcp_payload: 0,
        tcp_window: 0,
        tcp_wscale: firewall_common::ct::NO_WSCALE,
        icmp_type: 0,
        icmp_id: 0,
        l2,
    };
    match ip_proto {
        IPPROTO_TCP => {
            let t: *const [u8; TCP_HDR_LEN] =
                ptr_at(ctx, l4_off).ok_or(Counter::DropMalformedL4)?;
            // SAFETY: bounds checked by ptr_at.
            let t = unsafe { *t };
            let data_off = ((t[12] >> 4) as u32) * 4;
            // Options must be in the frame too: the stack drops such a segment, so must we.
            if data_off < TCP_HDR_LEN as u32
                || ctx.data() + l4_off + data_off as usize > ctx.data_end()
                || l4_off + data_off as usize > l3_end
            {
                return Err(Counter::DropMalformedL4);
            }
            pkt.proto = PROTO_TCP;
            pkt.remote_port = be16([t[0], t[1]]);
            pkt.local_port = be16([t[2], t[3]]);
            pkt.tcp_seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            pkt.tcp_ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
            pkt.tcp_flags = t[13];
            pkt.tcp_payload = l4_len.saturating_sub(data_off);
            pkt.tcp_window = be16([t[14], t[15]]);
            if t[13] & firewall_common::ct::TCP_SYN != 0 {
                pkt.tcp_wscale =
                    window_scale(ctx, l4_off + TCP_HDR_LEN, l4_off + data_off as usize);
            }
        }
        IPPROTO_UDP => {
            let u: *const UdpHdr = ptr_at(ctx, l4_off).ok_or(Counter::DropMalformedL4)?;
            if l4_off + UdpHdr::LEN > l3_end {
                return Err(Counter::DropMalformedL4);
            }
            // SAFETY: bounds checked by ptr_at.
            let u = unsafe { *u };
            pkt.proto = PROTO_UDP;
            pkt.remote_port = be16(u.src);
            pkt.local_port = be16(u.dst);
        }
        IPPROTO_ICMP if !is_v6 => {
            let h: *const [u8; ICMP_HDR_LEN] =
                ptr_at(ctx, l4_off).ok_or(Counter::DropMalformedL4)?;
            if l4_off + ICMP_HDR_LEN > l3_end {
                return Err(Counter::DropMalformedL4);
            }
            // SAFETY: bounds checked by ptr_at.
            let h = unsafe { *h };
            // Destination unreachable / fragmentation needed: path MTU discovery.
            if h[0] == ICMP_DEST_UNREACH && h[1] == ICMP_FRAG_NEEDED {
                return Ok(Parsed::IcmpEssential);
            }
            pkt.proto = PROTO_ICMP;
            pkt.icmp_type = h[0];
            pkt.icmp_id = be16([h[4], h[5]]);
        }
        IPPROTO_ICMPV6 if is_v6 => {
            let h: *const [u8; ICMP_HDR_LEN] =
                ptr_at(ctx, l4_off).ok_or(Counter::DropMalformedL4)?;
            if l4_off + ICMP_HDR_LEN > l3_end {
                return Err(Counter::DropMalformedL4);
            }
            // SAFETY: bounds checked by ptr_at.
            let h = unsafe { *h };
            if icmp6_essential(h[0]) {
                return Ok(Parsed::IcmpEssential);
            }
            pkt.proto = PROTO_ICMP;
            pkt.icmp_type = h[0];
            pkt.icmp_id = be16([h[4], h[5]]);
        }
        _ => {}
    }
    Ok(Parsed::Packet(pkt))
}

/// The window scale option (kind 3, length 3) among the TCP options in `[start, end)`, or
/// `ct::NO_WSCALE`. Follows at most [`MAX_TCP_OPTIONS`] options (the SYNs of Linux, Windows
/// and the BSDs carry the option among their first five); a longer list whose first options
/// do not include it, or one that cannot be read to its end, gives `ct::WSCALE_UNKNOWN`.
///
/// A subprogram of its own (scalar arguments and the context pointer): inlined, its loop's
/// states multiplied with every path that reaches it (VLAN tags, IPv4 or IPv6 and their
/// extension headers) and the XDP program went past the verifier's million instructions.
#[inline(always)]
fn window_scale<F: Frame>(ctx: &F, start: usize, end: usize) -> u8 {
    window_scale_at::<F>(ctx.raw(), start, end)
}

#[inline(never)]
fn window_scale_at<F: Frame>(raw: *mut core::ffi::c_void, start: usize, end: usize) -> u8 {
    use firewall_common::ct::{NO_WSCALE, WSCALE_UNKNOWN};
    // SAFETY: `raw` is the program's context, passed through by `window_scale`.
    let ctx = unsafe { F::from_raw(raw) };
    let ctx = &ctx;
    // Options take at most 40 bytes: an offset below that is a bound the verifier can use.
    let len = end.saturating_sub(start);
    let len = if len > 40 { 40 } else { len };
    let mut off = 0usize;
    for _ in 0..MAX_TCP_OPTIONS {
        if off >= len {
            return NO_WSCALE;
        }
        // Opaque to LLVM, which would otherwise turn the bounds check into arithmetic on the
        // packet's end pointer (rejected by the verifier).
        let Some(o) = ptr_at::<u8, F>(ctx, core::hint::black_box(start + off)) else {
            return WSCALE_UNKNOWN;
        };
        // SAFETY: bounds checked by ptr_at.
        match unsafe { *o } {
            // End of the option list.
            0 => return NO_WSCALE,
            1 => off += 1,
            kind => {
                let Some(o) = ptr_at::<[u8; 3], F>(ctx, core::hint::black_box(start + off)) else {
                    return WSCALE_UNKNOWN;
                };
                // SAFETY: bounds checked by ptr_at.
                let o = unsafe { *o };
                if kind == 3 && o[1] == 3 {
                    return o[2];
                }
                if o[1] < 2 {
                    return WSCALE_UNKNOWN;
                }
                off += o[1] as usize;
            }
        }
    }
    WSCALE_UNKNOWN
}

/// TCP options [`window_scale`] looks at.
const MAX_TCP_OPTIONS: usize = 8;
