//! Test frames built with etherparse, and the packet metadata the evaluator sees for them.

use std::net::IpAddr;

use etherparse::{
    IpHeaders, IpNumber, Ipv4Header, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader,
    PacketBuilder, VlanId,
};
use rules::model::{PacketMeta, PacketProto};

pub const REMOTE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LOCAL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with these flags (etherparse names: syn, ack, fin, rst) and sequence numbers.
    Tcp {
        syn: bool,
        ack: Option<u32>,
        fin: bool,
        rst: bool,
        seq: u32,
    },
    Udp,
    /// ICMP/ICMPv6 echo request.
    Echo,
    /// A protocol the classifier has no ports for (GRE, 47).
    Other,
}

impl L4 {
    pub const SYN: L4 = L4::Tcp {
        syn: true,
        ack: None,
        fin: false,
        rst: false,
        seq: 1000,
    };

    pub fn proto(self) -> PacketProto {
        match self {
            L4::Tcp { .. } => PacketProto::Tcp,
            L4::Udp => PacketProto::Udp,
            L4::Echo => PacketProto::Icmp,
            L4::Other => PacketProto::Other,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub remote: IpAddr,
    pub local: IpAddr,
    pub l4: L4,
    pub remote_port: u16,
    pub local_port: u16,
    pub vlans: u8,
    pub payload: Vec<u8>,
    /// IPv4 options bytes (multiple of 4) or, for IPv6, a destination-options header.
    pub ip_options: bool,
    /// IPv6 only: put a fragment header (offset 0) in front of the transport header.
    pub frag_header: bool,
}

impl Spec {
    pub fn new(remote: &str, local: &str, l4: L4, local_port: u16) -> Self {
        Self {
            remote: remote.parse().expect("remote address"),
            local: local.parse().expect("local address"),
            l4,
            remote_port: 40000,
            local_port,
            vlans: 0,
            payload: Vec::new(),
            ip_options: false,
            frag_header: false,
        }
    }

    pub fn meta(&self) -> PacketMeta {
        PacketMeta {
            remote: self.remote,
            proto: self.l4.proto(),
            local_port: match self.l4 {
                L4::Tcp { .. } | L4::Udp => self.local_port,
                _ => 0,
            },
        }
    }

    pub fn frame(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(REMOTE_MAC, LOCAL_MAC);
        let ip = self.ip_headers();
        let step = match self.vlans {
            0 => eth.ip(ip),
            1 => eth.single_vlan(VlanId::try_new(7).expect("vlan id")).ip(ip),
            _ => eth
                .double_vlan(
                    VlanId::try_new(7).expect("vlan id"),
                    VlanId::try_new(8).expect("vlan id"),
                )
                .ip(ip),
        };
        let mut out = Vec::new();
        let r = match self.l4 {
            L4::Tcp {
                syn,
                ack,
                fin,
                rst,
                seq,
            } => {
                let mut t = step.tcp(self.remote_port, self.local_port, seq, 64240);
                if syn {
                    t = t.syn();
                }
                if let Some(a) = ack {
                    t = t.ack(a);
                }
                if fin {
                    t = t.fin();
                }
                if rst {
                    t = t.rst();
                }
                t.write(&mut out, &self.payload)
            }
            L4::Udp => step
                .udp(self.remote_port, self.local_port)
                .write(&mut out, &self.payload),
            L4::Echo => match self.remote {
                IpAddr::V4(_) => step
                    .icmpv4_echo_request(1, 1)
                    .write(&mut out, &self.payload),
                IpAddr::V6(_) => step
                    .icmpv6_echo_request(1, 1)
                    .write(&mut out, &self.payload),
            },
            L4::Other => {
                // etherparse writes no payload for unknown protocols through the builder:
                // write the headers, then append a GRE-looking payload.
                let r = step.write(&mut out, IpNumber(47), &self.payload);
                r.map(|_| ())
            }
        };
        r.expect("building the test frame");
        out
    }

    fn ip_headers(&self) -> IpHeaders {
        let next = match self.l4 {
            L4::Tcp { .. } => IpNumber::TCP,
            L4::Udp => IpNumber::UDP,
            L4::Echo => match self.remote {
                IpAddr::V4(_) => IpNumber::ICMP,
                IpAddr::V6(_) => IpNumber::IPV6_ICMP,
            },
            L4::Other => IpNumber(47),
        };
        match (self.remote, self.local) {
            (IpAddr::V4(r), IpAddr::V4(l)) => {
                let mut h =
                    Ipv4Header::new(0, 64, next, r.octets(), l.octets()).expect("ipv4 header");
                if self.ip_options {
                    h.options = [1u8, 1, 1, 0][..].try_into().expect("ipv4 options");
                }
                IpHeaders::Ipv4(h, Default::default())
            }
            (IpAddr::V6(r), IpAddr::V6(l)) => {
                let h = Ipv6Header {
                    traffic_class: 0,
                    flow_label: Default::default(),
                    payload_length: 0,
                    next_header: next,
                    hop_limit: 64,
                    source: r.octets(),
                    destination: l.octets(),
                };
                let mut exts = etherparse::Ipv6Extensions::default();
                if self.ip_options {
                    exts.destination_options = Some(
                        Ipv6RawExtHeader::new_raw(next, &[1, 4, 0, 0, 0, 0])
                            .expect("destination options"),
                    );
                }
                if self.frag_header {
                    exts.fragment = Some(Ipv6FragmentHeader::new(
                        next,
                        etherparse::IpFragOffset::ZERO,
                        false,
                        42,
                    ));
                }
                IpHeaders::Ipv6(h, exts)
            }
            _ => panic!("remote and local must be the same family"),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Raw frames: what etherparse will not build (malformed headers, arbitrary extension-header
// chains, ICMP types other than echo, ARP, three VLAN tags). Addresses and MACs follow the same
// convention as `Spec`: the frame goes from REMOTE (source) to LOCAL (destination).

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// RFC 1071 one's-complement sum, folded and complemented. A buffer that already holds a
/// correct checksum sums to 0.
pub fn inet_checksum(chunks: &[&[u8]]) -> u16 {
    let mut acc: u64 = 0;
    for chunk in chunks {
        let mut it = chunk.chunks(2);
        for pair in &mut it {
            let hi = u64::from(pair[0]) << 8;
            let lo = pair.get(1).copied().map(u64::from).unwrap_or(0);
            acc += hi | lo;
        }
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Ethernet header (dst LOCAL_MAC, src REMOTE_MAC) followed by one VLAN tag per entry of `tpids`
/// (VLAN ids 7, 8, 9, ...), ending with `ether_type`.
pub fn ethernet(tpids: &[u16], ether_type: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&LOCAL_MAC);
    out.extend_from_slice(&REMOTE_MAC);
    for (i, tpid) in tpids.iter().enumerate() {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&(7 + i as u16).to_be_bytes());
    }
    out.extend_from_slice(&ether_type.to_be_bytes());
    out
}

fn v4(addr: &str) -> [u8; 4] {
    addr.parse::<std::net::Ipv4Addr>()
        .expect("IPv4 address")
        .octets()
}

fn v6(addr: &str) -> [u8; 16] {
    addr.parse::<std::net::Ipv6Addr>()
        .expect("IPv6 address")
        .octets()
}

/// IPv4 header with a correct checksum. `options` must be a multiple of 4 bytes.
pub fn ipv4_header(
    remote: &str,
    local: &str,
    proto: u8,
    payload_len: usize,
    options: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "IPv4 options must fill 32-bit words");
    let hdr_len = 20 + options.len();
    let total = (hdr_len + payload_len) as u16;
    let mut h = vec![0x40 | (hdr_len / 4) as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&v4(remote));
    h.extend_from_slice(&v4(local));
    h.extend_from_slice(options);
    let c = inet_checksum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// Recomputes the IPv4 header checksum of the header at `l3`.
pub fn fix_ipv4_checksum(frame: &mut [u8], l3: usize) {
    let len = usize::from(frame[l3] & 0x0f) * 4;
    frame[l3 + 10] = 0;
    frame[l3 + 11] = 0;
    let c = inet_checksum(&[&frame[l3..l3 + len]]);
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// A whole IPv4 frame (no VLAN) carrying `l4` as protocol `proto`.
pub fn ipv4_frame(remote: &str, local: &str, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = ethernet(&[], ETH_P_IP);
    f.extend(ipv4_header(remote, local, proto, l4.len(), &[]));
    f.extend_from_slice(l4);
    f
}

/// An ICMPv4 message with a correct checksum.
pub fn icmpv4_message(icmp_type: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![icmp_type, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let c = inet_checksum(&[&m]);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An IPv6 extension header for [`ipv6_frame`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options, `units` * 8 bytes long (padding only).
    HopByHop { units: usize },
    /// Hop-by-hop with a Router Alert option (MLD), 8 bytes.
    RouterAlert,
    /// Destination options, `units` * 8 bytes long (padding only).
    DstOpts { units: usize },
    /// Routing header (type 0, segments left 0), 8 bytes.
    Routing,
    /// Fragment header: offset in 8-byte units, more-fragments flag.
    Fragment { offset: u16, more: bool },
}

impl Ext {
    pub fn kind(&self) -> u8 {
        match self {
            Ext::HopByHop { .. } | Ext::RouterAlert => IPPROTO_HOPOPTS,
            Ext::DstOpts { .. } => IPPROTO_DSTOPTS,
            Ext::Routing => IPPROTO_ROUTING,
            Ext::Fragment { .. } => IPPROTO_FRAGMENT,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop { units } | Ext::DstOpts { units } => {
                assert!(*units >= 1, "an options header is at least 8 bytes");
                let len = units * 8;
                // PadN covering everything after next-header and length.
                let mut h = vec![next, (units - 1) as u8, 1, (len - 4) as u8];
                h.resize(len, 0);
                h
            }
            // Router Alert (type 5, length 2, value 0 = MLD), then PadN of 0 bytes.
            Ext::RouterAlert => vec![next, 0, 5, 2, 0, 0, 1, 0],
            Ext::Routing => vec![next, 0, 0, 0, 0, 0, 0, 0],
            Ext::Fragment { offset, more } => {
                let field = (offset << 3) | u16::from(*more);
                let f = field.to_be_bytes();
                vec![next, 0, f[0], f[1], 0, 0, 0, 42]
            }
        }
    }
}

/// The IPv6 extension-header chain as bytes, the last header pointing at `proto`.
pub fn ipv6_ext_chain(exts: &[Ext], proto: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map(Ext::kind).unwrap_or(proto);
        out.extend(e.bytes(next));
    }
    out
}

/// IPv6 header whose payload length covers `payload_len` bytes.
pub fn ipv6_header(remote: &str, local: &str, next: u8, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload_len as u16).to_be_bytes());
    h.push(next);
    h.push(64);
    h.extend_from_slice(&v6(remote));
    h.extend_from_slice(&v6(local));
    h
}

/// A whole IPv6 frame (no VLAN): header, extension headers, then `l4` as protocol `proto`.
pub fn ipv6_frame(remote: &str, local: &str, exts: &[Ext], proto: u8, l4: &[u8]) -> Vec<u8> {
    let chain = ipv6_ext_chain(exts, proto);
    let first = exts.first().map(Ext::kind).unwrap_or(proto);
    let mut f = ethernet(&[], ETH_P_IPV6);
    f.extend(ipv6_header(remote, local, first, chain.len() + l4.len()));
    f.extend(chain);
    f.extend_from_slice(l4);
    f
}

/// An ICMPv6 message with a correct checksum (pseudo header included).
pub fn icmpv6_message(remote: &str, local: &str, icmp_type: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![icmp_type, code, 0, 0];
    m.extend_from_slice(body);
    let len = (m.len() as u32).to_be_bytes();
    let c = inet_checksum(&[
        &v6(remote),
        &v6(local),
        &len,
        &[0, 0, 0, IPPROTO_ICMPV6],
        &m,
    ]);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A 20-byte TCP header (no options) with the given flags byte; checksum left zero (the
/// program does not verify it).
pub fn tcp_header(remote_port: u16, local_port: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&remote_port.to_be_bytes());
    t.extend_from_slice(&local_port.to_be_bytes());
    t.extend_from_slice(&1000u32.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&[5 << 4, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    t
}

/// An 8-byte UDP header for `payload_len` bytes of payload; checksum zero.
pub fn udp_header(remote_port: u16, local_port: u16, payload_len: usize) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&remote_port.to_be_bytes());
    u.extend_from_slice(&local_port.to_be_bytes());
    u.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u
}

/// An ARP request (who-has 192.0.2.1 tell 192.0.2.2), after `tpids` VLAN tags.
pub fn arp_frame(tpids: &[u16]) -> Vec<u8> {
    let mut f = ethernet(tpids, ETH_P_ARP);
    f[..6].copy_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&REMOTE_MAC);
    f.extend_from_slice(&[192, 0, 2, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[192, 0, 2, 1]);
    f
}

/// Offset of the IP header: after Ethernet and any 802.1Q/802.1ad tags.
pub fn l3_offset(frame: &[u8]) -> usize {
    let mut off = 12;
    loop {
        let et = u16::from_be_bytes([frame[off], frame[off + 1]]);
        if et == ETH_P_8021Q || et == ETH_P_8021AD {
            off += 4;
        } else {
            return off + 2;
        }
    }
}

pub fn set_dst_mac(frame: &mut [u8], mac: [u8; 6]) {
    frame[..6].copy_from_slice(&mac);
}

/// Turns the IPv4 packet of `frame` into a fragment: `offset` in 8-byte units, MF flag.
pub fn set_ipv4_fragment(frame: &mut [u8], offset: u16, more: bool) {
    let l3 = l3_offset(frame);
    assert_eq!(frame[l3] >> 4, 4, "not an IPv4 frame");
    let field = (offset & 0x1fff) | if more { 0x2000 } else { 0 };
    frame[l3 + 6..l3 + 8].copy_from_slice(&field.to_be_bytes());
    fix_ipv4_checksum(frame, l3);
}

/// Offset of the transport header of a well-formed IPv4/IPv6 frame (IPv6 extension headers
/// followed).
pub fn l4_offset(frame: &[u8]) -> usize {
    let l3 = l3_offset(frame);
    match frame[l3] >> 4 {
        4 => l3 + usize::from(frame[l3] & 0x0f) * 4,
        6 => {
            let mut next = frame[l3 + 6];
            let mut off = l3 + 40;
            loop {
                match next {
                    IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                        next = frame[off];
                        off += (usize::from(frame[off + 1]) + 1) * 8;
                    }
                    IPPROTO_FRAGMENT => {
                        next = frame[off];
                        off += 8;
                    }
                    _ => return off,
                }
            }
        }
        v => panic!("IP version {v} in a test frame"),
    }
}

// ------------------------------------------------------------------------------------------
// Reply parsers: what a reject answer (XDP_TX) looks like, checked with etherparse.

/// The link layer of a reply and what it says about the request it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// Bytes 12..l3: VLAN tags and the final EtherType.
    pub tags_and_type: Vec<u8>,
    pub l3: usize,
}

fn link(frame: &[u8]) -> Link {
    let l3 = l3_offset(frame);
    Link {
        dst_mac: frame[..6].try_into().expect("6 bytes"),
        src_mac: frame[6..12].try_into().expect("6 bytes"),
        tags_and_type: frame[12..l3].to_vec(),
        l3,
    }
}

/// IP layer of a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL or hop limit.
    pub ttl: u8,
    /// Protocol / next header.
    pub proto: u8,
    /// IPv4: header length; IPv6: 40 (a reply carries no extension headers).
    pub hdr_len: usize,
    /// IPv4 total length or 40 + IPv6 payload length.
    pub total_len: usize,
    /// IPv4 header checksum correct (always true for IPv6, which has none).
    pub header_checksum_ok: bool,
}

fn ip_info(frame: &[u8], l3: usize) -> IpInfo {
    let ip = &frame[l3..];
    match ip[0] >> 4 {
        4 => {
            let h = etherparse::Ipv4HeaderSlice::from_slice(ip).expect("reply IPv4 header parses");
            let header = h.to_header();
            IpInfo {
                src: IpAddr::V4(h.source_addr()),
                dst: IpAddr::V4(h.destination_addr()),
                ttl: h.ttl(),
                proto: h.protocol().0,
                hdr_len: usize::from(h.ihl()) * 4,
                total_len: usize::from(h.total_len()),
                header_checksum_ok: header.calc_header_checksum() == h.header_checksum()
                    && inet_checksum(&[h.slice()]) == 0,
            }
        }
        6 => {
            let h = etherparse::Ipv6HeaderSlice::from_slice(ip).expect("reply IPv6 header parses");
            IpInfo {
                src: IpAddr::V6(h.source_addr()),
                dst: IpAddr::V6(h.destination_addr()),
                ttl: h.hop_limit(),
                proto: h.next_header().0,
                hdr_len: 40,
                total_len: 40 + usize::from(h.payload_length()),
                header_checksum_ok: true,
            }
        }
        v => panic!("reply has IP version {v}"),
    }
}

/// A TCP reset built by the program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpReply {
    pub link: Link,
    pub ip: IpInfo,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// The flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub flags: u8,
    pub data_offset: u8,
    /// Bytes after the TCP header within the IP length.
    pub payload_len: usize,
    /// Bytes in the frame after the IP packet.
    pub trailing: usize,
    /// TCP checksum (with pseudo header) correct, as etherparse computes it.
    pub checksum_ok: bool,
}

pub fn parse_tcp_reply(frame: &[u8]) -> TcpReply {
    let link = link(frame);
    let ip = ip_info(frame, link.l3);
    assert_eq!(ip.proto, IPPROTO_TCP, "reply is not TCP: {frame:02x?}");
    let end = link.l3 + ip.total_len;
    assert!(end <= frame.len(), "IP length runs past the reply frame");
    let seg = &frame[link.l3 + ip.hdr_len..end];
    let tcp = etherparse::TcpSlice::from_slice(seg).expect("reply TCP header parses");
    let expected = match (ip.src, ip.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => tcp.calc_checksum_ipv4(s.octets(), d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => tcp.calc_checksum_ipv6(s.octets(), d.octets()),
        _ => panic!("mixed families"),
    }
    .expect("checksum computable");
    TcpReply {
        src_port: tcp.source_port(),
        dst_port: tcp.destination_port(),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        flags: tcp.header_slice()[13],
        data_offset: tcp.data_offset(),
        payload_len: tcp.payload().len(),
        trailing: frame.len() - end,
        checksum_ok: expected == tcp.checksum(),
        link,
        ip,
    }
}

/// An ICMP or ICMPv6 error built by the program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IcmpReply {
    pub link: Link,
    pub ip: IpInfo,
    pub icmp_type: u8,
    pub code: u8,
    /// Bytes 4..8 of the ICMP header (unused for port unreachable: zero).
    pub rest: [u8; 4],
    /// The quoted offending datagram.
    pub quoted: Vec<u8>,
    /// Bytes in the frame after the IP packet.
    pub trailing: usize,
    /// Checksum correct (ICMPv6: including the pseudo header), as etherparse computes it.
    pub checksum_ok: bool,
}

pub fn parse_icmp_reply(frame: &[u8]) -> IcmpReply {
    let link = link(frame);
    let ip = ip_info(frame, link.l3);
    let end = link.l3 + ip.total_len;
    assert!(end <= frame.len(), "IP length runs past the reply frame");
    let msg = &frame[link.l3 + ip.hdr_len..end];
    let checksum_ok = match (ip.src, ip.dst, ip.proto) {
        (IpAddr::V4(_), IpAddr::V4(_), IPPROTO_ICMP) => {
            let s = etherparse::Icmpv4Slice::from_slice(msg).expect("reply ICMP parses");
            s.icmp_type().calc_checksum(s.payload()) == s.checksum() && inet_checksum(&[msg]) == 0
        }
        (IpAddr::V6(s), IpAddr::V6(d), IPPROTO_ICMPV6) => etherparse::Icmpv6Slice::from_slice(msg)
            .expect("reply ICMPv6 parses")
            .is_checksum_valid(s.octets(), d.octets()),
        _ => panic!("reply is not ICMP for its family: {frame:02x?}"),
    };
    IcmpReply {
        icmp_type: msg[0],
        code: msg[1],
        rest: msg[4..8].try_into().expect("4 bytes"),
        quoted: msg[8..].to_vec(),
        trailing: frame.len() - end,
        checksum_ok,
        link,
        ip,
    }
}
