//! Test frames built with etherparse, and the packet metadata the evaluator sees for them.

use std::net::IpAddr;

use etherparse::{
    IpHeaders, IpNumber, Ipv4Header, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader,
    PacketBuilder, VlanId,
};
use firewall_daemon::model::{PacketMeta, PacketProto};

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
                let mut h = Ipv4Header::new(0, 64, next, r.octets(), l.octets())
                    .expect("ipv4 header");
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
