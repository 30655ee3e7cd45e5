//! Reject replies, built in place and sent back out of the receiving interface with XDP_TX.
//! Whether to answer at all is decided in `inbound.rs` (`reject`), with the checks and the
//! budgets below.
//!
//! Everything needed from the offending packet is already copied into [`Packet`], so the builders
//! can overwrite its headers. Checksums are computed from scratch ([`crate::csum`]).
//!
//! Who gets a reply: only a frame sent to this host, that is to the receiving interface's own
//! MAC ([`IFACE_MAC`]) and to one of the host's addresses ([`LOCAL_ADDRS`]), both kept by the
//! daemon; the reply leaves from that MAC. A frame for another host (on a hub, a mirror port,
//! a bridge in promiscuous mode, or with a forged destination) would otherwise make the host
//! answer in that host's name. Then two token buckets: one per source address
//! ([`REJECT_RATE`]) and one for the whole host ([`REJECT_GLOBAL`]), so spoofing many sources
//! cannot make the host an amplifier (Linux caps its own ICMP errors the same way).

use aya_ebpf::{
    Global,
    bindings::xdp_md,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    macros::map,
    maps::{Array, HashMap, LruHashMap},
    programs::XdpContext,
};
use firewall_common::{
    ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH,
    IFACE_MAC_ENTRIES, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IfaceMac, LOCAL_ADDRS_ENTRIES,
    LocalAddrKey, RateBucket, RateKey, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

use crate::{
    addr::Addr,
    csum,
    parse::{L2, Packet, TCP_HDR_LEN, ptr_at, ptr_at_mut},
};

#[unsafe(no_mangle)]
static REJECT_RATE_PER_SEC: Global<u32> = Global::new(100);
#[unsafe(no_mangle)]
static REJECT_BURST: Global<u32> = Global::new(200);
#[unsafe(no_mangle)]
static REJECT_GLOBAL_RATE: Global<u32> = Global::new(1000);

// Pinned, shared by every generation.
#[map]
static REJECT_RATE: LruHashMap<RateKey, RateBucket> = LruHashMap::pinned(65536, 0);
#[map]
static REJECT_GLOBAL: Array<RateBucket> = Array::pinned(1, 0);
#[map]
static IFACE_MAC: HashMap<u32, IfaceMac> = HashMap::pinned(IFACE_MAC_ENTRIES, 0);
#[map]
static LOCAL_ADDRS: HashMap<LocalAddrKey, u32> = HashMap::pinned(LOCAL_ADDRS_ENTRIES, 0);

const TTL: u8 = 64;
const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;
const ICMP_HDR_LEN: usize = 8;
/// Bytes of the offending datagram's transport header quoted in ICMP errors (RFC 792).
const QUOTED_L4: usize = 8;
/// Most IPv6 extension-header bytes quoted back; a longer chain degrades the reject to a drop.
const MAX_QUOTED_EXT: usize = 64;
/// 32-bit words of quoted datagram: IPv6 header + extension headers + 8 bytes, the larger case.
const MAX_QUOTED_WORDS: usize = (IPV6_HDR_LEN + MAX_QUOTED_EXT + QUOTED_L4) / 4;

#[inline(always)]
fn v4_unicast(a: [u8; 4]) -> bool {
    a != [0, 0, 0, 0] && a != [255, 255, 255, 255] && a[0] & 0xf0 != 0xe0
}

/// Whether a reply may be sent at all (RFC 1122 3.2.2, 4.2.3.10): never to a link-layer or IP
/// group address, never to a source that cannot be answered (unspecified, broadcast,
/// multicast, loopback), so the host cannot be made an amplifier. Only the reject path asks.
#[inline(always)]
pub fn answerable(pkt: &Packet) -> bool {
    if pkt.l2 == L2::Group {
        return false;
    }
    match (pkt.remote, pkt.local) {
        (Addr::V4(src), Addr::V4(dst)) => v4_unicast(src) && v4_unicast(dst) && src[0] != 127,
        (Addr::V6(src), Addr::V6(dst)) => {
            src[0] != 0xff
                && dst[0] != 0xff
                && src != [0; 16]
                && src != [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        }
        _ => false,
    }
}

#[inline(always)]
fn mac_bits(m: &[u8; 6]) -> u64 {
    u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0])
}

/// An address as two 64-bit words of its `::ffff:a.b.c.d`-mapped form (native order), so
/// it can be passed to a subprogram in registers.
#[inline(always)]
fn words(a: &Addr) -> (u64, u64) {
    match a {
        Addr::V4(a) => (0, 0xffff_0000 | (u64::from(u32::from_le_bytes(*a)) << 32)),
        Addr::V6(a) => (
            u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
            u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
        ),
    }
}

#[inline(always)]
fn mapped_bytes(hi: u64, lo: u64) -> [u8; 16] {
    let (h, l) = (hi.to_ne_bytes(), lo.to_ne_bytes());
    [
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5], l[6],
        l[7],
    ]
}

/// The receiving interface's MAC, if the frame was sent to it and to one of the host's
/// addresses; `None` (no reply) otherwise, including when the daemon has not (yet) recorded
/// the interface.
#[inline(always)]
pub fn our_mac(ctx: &XdpContext, pkt: &Packet) -> Option<u64> {
    let (hi, lo) = words(&pkt.local);
    match our_mac_bits(ctx.ctx, hi, lo, pkt.local.family()) {
        0 => None,
        mac => Some(mac),
    }
}

/// [`our_mac`] as a subprogram with scalar arguments, so its keys live in its own frame
/// rather than the XDP program's (which is close to the 512-byte limit). 0: not ours (the
/// daemon never records an all-zero MAC).
#[inline(never)]
fn our_mac_bits(ctx: *mut xdp_md, hi: u64, lo: u64, family: u8) -> u64 {
    let ctx = XdpContext::new(ctx);
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    // SAFETY: the value is copied out immediately.
    let Some(iface) = (unsafe { IFACE_MAC.get(&ifindex) }) else {
        return 0;
    };
    let mac = mac_bits(&iface.mac);
    let Some(dst) = ptr_at::<[u8; 6], _>(&ctx, 0) else {
        return 0;
    };
    // SAFETY: bounds checked by ptr_at.
    if mac_bits(unsafe { &*dst }) != mac {
        return 0;
    }
    let key = LocalAddrKey {
        addr: mapped_bytes(hi, lo),
        family,
        _pad: [0; 3],
    };
    // SAFETY: only presence is read.
    match unsafe { LOCAL_ADDRS.get(&key) } {
        Some(_) => mac,
        None => 0,
    }
}

/// Addresses the reply back to the frame's source, from the interface's own MAC
/// ([`mac_bits`] form).
#[inline(always)]
fn set_macs(ctx: &XdpContext, mac: u64) -> Result<(), ()> {
    let eth: *mut [u8; 12] = ptr_at_mut(ctx, 0).ok_or(())?;
    // SAFETY: bounds checked by ptr_at_mut.
    let old = unsafe { *eth };
    let mut new = [0u8; 12];
    new[..6].copy_from_slice(&old[6..]);
    new[6..].copy_from_slice(&mac.to_le_bytes()[..6]);
    // SAFETY: as above.
    unsafe { *eth = new };
    Ok(())
}

const MILLI: u64 = 1000;

/// Takes one token from `bucket` (millitokens) refilled at `rate` per second up to `burst`
/// tokens.
#[inline(always)]
pub(crate) fn take_token(bucket: &mut RateBucket, now: u64, rate: u64, burst: u64) -> bool {
    let burst = burst * MILLI;
    let elapsed_us = min64(now.saturating_sub(bucket.last_ns) / 1000, 1 << 40);
    // millitokens gained = elapsed_us * rate / 1000; bounded above by the cap on elapsed.
    let refill = elapsed_us * rate / 1000;
    let tokens = min64(bucket.millitokens + refill, burst);
    bucket.last_ns = now;
    if tokens >= MILLI {
        bucket.millitokens = tokens - MILLI;
        true
    } else {
        bucket.millitokens = tokens;
        false
    }
}

/// Token bucket per source address. Concurrent CPUs may race on one bucket; the worst case is a
/// few extra replies, which is acceptable for a reflection limit and keeps the path lock-free.
#[inline(always)]
pub fn take_source_token(remote: &Addr, now: u64) -> bool {
    let (hi, lo) = words(remote);
    source_token(hi, lo, now)
}

/// [`take_source_token`] as a subprogram with scalar arguments (see [`our_mac_bits`]).
#[inline(never)]
fn source_token(hi: u64, lo: u64, now: u64) -> bool {
    let key = RateKey {
        addr: mapped_bytes(hi, lo),
    };
    let rate = REJECT_RATE_PER_SEC.load() as u64;
    let burst = REJECT_BURST.load() as u64;
    match REJECT_RATE.get_ptr_mut(&key) {
        // SAFETY: a map value pointer, valid for this program run.
        Some(bucket) => take_token(unsafe { &mut *bucket }, now, rate, burst),
        None => {
            let bucket = RateBucket {
                millitokens: (burst * MILLI).saturating_sub(MILLI),
                last_ns: now,
            };
            // A full LRU evicts the oldest source; if even that fails, err on not answering.
            REJECT_RATE.insert(&key, &bucket, 0).is_ok() && burst >= 1
        }
    }
}

/// The host-wide bucket: `REJECT_GLOBAL_RATE` replies per second, one second's worth of burst.
/// One bucket for every CPU, updated without atomics: CPUs replying at the same instant can
/// take the same token, so under a flood spread over several CPUs the cap is exceeded by at
/// most one reply per racing CPU per update (approximate, as the per-source bucket is). A
/// never-used bucket (all zero) refills from boot time to full.
#[inline(always)]
pub fn take_global_token(now: u64) -> bool {
    let Some(bucket) = REJECT_GLOBAL.get_ptr_mut(0) else {
        return false;
    };
    let rate = REJECT_GLOBAL_RATE.load() as u64;
    // SAFETY: a map value pointer, valid for this program run.
    take_token(unsafe { &mut *bucket }, now, rate, rate)
}

#[inline(always)]
fn min64(a: u64, b: u64) -> u64 {
    if a < b { a } else { b }
}

#[inline(always)]
fn trim_to(ctx: &XdpContext, len: usize) -> Result<(), ()> {
    let cur = ctx.data_end() - ctx.data();
    if len > cur {
        return Err(());
    }
    let delta = (cur - len) as i32;
    if delta != 0 {
        // SAFETY: helper call on our own context.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -delta) } != 0 {
            return Err(());
        }
    }
    Ok(())
}

#[inline(always)]
fn ipv4_header(total_len: u16, proto: u8, src: [u8; 4], dst: [u8; 4]) -> [u8; IPV4_HDR_LEN] {
    let len = total_len.to_be_bytes();
    let mut h = [
        0x45, 0, len[0], len[1], 0, 0, 0x40, 0, TTL, proto, 0, 0, src[0], src[1], src[2], src[3],
        dst[0], dst[1], dst[2], dst[3],
    ];
    let c = csum::finish(csum::sum(&h));
    h[10] = c[0];
    h[11] = c[1];
    h
}

#[inline(always)]
fn ipv6_header(payload_len: u16, next: u8, src: [u8; 16], dst: [u8; 16]) -> [u8; IPV6_HDR_LEN] {
    let len = payload_len.to_be_bytes();
    let mut h = [0u8; IPV6_HDR_LEN];
    h[0] = 0x60;
    h[4] = len[0];
    h[5] = len[1];
    h[6] = next;
    h[7] = TTL;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h
}

#[inline(always)]
fn write<const N: usize>(ctx: &XdpContext, off: usize, bytes: &[u8; N]) -> Result<(), ()> {
    let p: *mut [u8; N] = ptr_at_mut(ctx, off).ok_or(())?;
    // SAFETY: bounds checked by ptr_at_mut.
    unsafe { *p = *bytes };
    Ok(())
}

/// RST for a segment arriving at a closed port, RFC 9293 3.10.7.1: if the segment has ACK,
/// `<SEQ=SEG.ACK><CTL=RST>`; otherwise `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`, where
/// SEG.LEN counts SYN and FIN. Options and payload are dropped; VLAN tags are kept.
#[inline(always)]
pub fn tcp_rst(ctx: &XdpContext, pkt: &Packet, mac: u64) -> Result<(), ()> {
    let (seq, ack, flags) = if pkt.tcp_flags & TCP_ACK != 0 {
        (pkt.tcp_ack, 0u32, TCP_RST)
    } else {
        let mut seg_len = pkt.tcp_payload;
        if pkt.tcp_flags & TCP_SYN != 0 {
            seg_len += 1;
        }
        if pkt.tcp_flags & TCP_FIN != 0 {
            seg_len += 1;
        }
        (0u32, pkt.tcp_seq.wrapping_add(seg_len), TCP_RST | TCP_ACK)
    };
    let sp = pkt.local_port.to_be_bytes();
    let dp = pkt.remote_port.to_be_bytes();
    let s = seq.to_be_bytes();
    let a = ack.to_be_bytes();
    #[rustfmt::skip]
    let mut tcp: [u8; TCP_HDR_LEN] = [
        sp[0], sp[1], dp[0], dp[1], // ports
        s[0], s[1], s[2], s[3], // seq
        a[0], a[1], a[2], a[3], // ack
        5 << 4, flags, 0, 0, // data offset, flags, window 0
        0, 0, 0, 0, // checksum (filled below), urgent pointer
    ];
    set_macs(ctx, mac)?;
    let l3 = pkt.l3_off;
    match (pkt.local, pkt.remote) {
        (Addr::V4(src), Addr::V4(dst)) => {
            let c = csum::finish(
                csum::pseudo(&src, &dst, IPPROTO_TCP, TCP_HDR_LEN as u32) + csum::sum(&tcp),
            );
            tcp[16] = c[0];
            tcp[17] = c[1];
            let ip = ipv4_header((IPV4_HDR_LEN + TCP_HDR_LEN) as u16, IPPROTO_TCP, src, dst);
            write(ctx, l3, &ip)?;
            write(ctx, l3 + IPV4_HDR_LEN, &tcp)?;
            trim_to(ctx, l3 + IPV4_HDR_LEN + TCP_HDR_LEN)
        }
        (Addr::V6(src), Addr::V6(dst)) => {
            let c = csum::finish(
                csum::pseudo(&src, &dst, IPPROTO_TCP, TCP_HDR_LEN as u32) + csum::sum(&tcp),
            );
            tcp[16] = c[0];
            tcp[17] = c[1];
            let ip = ipv6_header(TCP_HDR_LEN as u16, IPPROTO_TCP, src, dst);
            write(ctx, l3, &ip)?;
            write(ctx, l3 + IPV6_HDR_LEN, &tcp)?;
            trim_to(ctx, l3 + IPV6_HDR_LEN + TCP_HDR_LEN)
        }
        _ => Err(()),
    }
}

/// ICMP destination unreachable / port unreachable (type 3 code 3, RFC 792/1812) or ICMPv6
/// destination unreachable / port unreachable (type 1 code 4, RFC 4443), quoting the offending
/// IP header (with options or extension headers) and the first 8 bytes of its UDP header, which
/// is what the sender's stack needs to find the socket and report ECONNREFUSED.
#[inline(always)]
pub fn port_unreachable(ctx: &XdpContext, pkt: &Packet, mac: u64) -> Result<(), ()> {
    let l3 = pkt.l3_off;
    let quoted = pkt.l4_off - l3 + QUOTED_L4;
    let v6 = matches!(pkt.remote, Addr::V6(_));
    let new_hdrs = if v6 {
        IPV6_HDR_LEN + ICMP_HDR_LEN
    } else {
        IPV4_HDR_LEN + ICMP_HDR_LEN
    };
    if quoted % 4 != 0 || quoted > MAX_QUOTED_WORDS * 4 {
        return Err(());
    }

    // Keep the link-layer header (Ethernet + up to two VLAN tags) to put back in front.
    let eth: *const [u8; 14] = ptr_at(ctx, 0).ok_or(())?;
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { *eth };
    let tag1: [u8; 4] = read_tag(ctx, l3, 14)?;
    let tag2: [u8; 4] = read_tag(ctx, l3, 18)?;

    // Make room in front of the quoted datagram for new IP + ICMP headers.
    // SAFETY: helper call on our own context; all packet pointers are re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(new_hdrs as i32)) } != 0 {
        return Err(());
    }
    trim_to(ctx, l3 + new_hdrs + quoted)?;

    let mut l2 = [0u8; 14];
    l2[..6].copy_from_slice(&eth[6..12]);
    l2[6..12].copy_from_slice(&mac.to_le_bytes()[..6]);
    l2[12..].copy_from_slice(&eth[12..]);
    write(ctx, 0, &l2)?;
    if l3 >= 18 {
        write(ctx, 14, &tag1)?;
    }
    if l3 >= 22 {
        write(ctx, 18, &tag2)?;
    }

    // Sum of the quoted datagram, word by word with a fixed upper bound.
    let quoted_off = l3 + new_hdrs;
    let words = quoted / 4;
    let mut acc = 0u64;
    for i in 0..MAX_QUOTED_WORDS {
        if i >= words {
            break;
        }
        let w: *const [u8; 4] = ptr_at(ctx, quoted_off + i * 4).ok_or(())?;
        // SAFETY: bounds checked by ptr_at.
        acc += csum::sum(unsafe { &*w });
    }

    match (pkt.local, pkt.remote) {
        (Addr::V4(src), Addr::V4(dst)) => {
            let mut icmp = [ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, 0, 0, 0, 0, 0];
            let c = csum::finish(acc + csum::sum(&icmp));
            icmp[2] = c[0];
            icmp[3] = c[1];
            let ip = ipv4_header((new_hdrs + quoted) as u16, IPPROTO_ICMP, src, dst);
            write(ctx, l3, &ip)?;
            write(ctx, l3 + IPV4_HDR_LEN, &icmp)
        }
        (Addr::V6(src), Addr::V6(dst)) => {
            let len = (ICMP_HDR_LEN + quoted) as u32;
            let mut icmp = [ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, 0, 0, 0, 0, 0, 0];
            let c = csum::finish(
                acc + csum::sum(&icmp) + csum::pseudo(&src, &dst, IPPROTO_ICMPV6, len),
            );
            icmp[2] = c[0];
            icmp[3] = c[1];
            let ip = ipv6_header(len as u16, IPPROTO_ICMPV6, src, dst);
            write(ctx, l3, &ip)?;
            write(ctx, l3 + IPV6_HDR_LEN, &icmp)
        }
        _ => Err(()),
    }
}

/// The VLAN tag at `off` if the link-layer header (`l3` bytes) reaches that far.
#[inline(always)]
fn read_tag(ctx: &XdpContext, l3: usize, off: usize) -> Result<[u8; 4], ()> {
    if l3 < off + 4 {
        return Ok([0; 4]);
    }
    let t: *const [u8; 4] = ptr_at(ctx, off).ok_or(())?;
    // SAFETY: bounds checked by ptr_at.
    Ok(unsafe { *t })
}
