//! Protocol numbers and classes, in one place for the kernel programs and the daemon.
//!
//! The wire numbers (IANA's IP protocol numbers, ICMP and ICMPv6 types and codes, TCP flag
//! bits) are what the parser, the connection table and the reply builders compare against;
//! the classes ([`PROTO_TCP`] ...) are how the rules and their tables name a protocol: ICMP
//! and ICMPv6 are one class (`proto = "icmp"`), so the tables need four slots, not one per
//! protocol number.

/// Protocol classes the classifier distinguishes.
pub const PROTO_TCP: u32 = 0;
pub const PROTO_UDP: u32 = 1;
/// ICMP (IPv4) and ICMPv6 both: `proto = "icmp"`.
pub const PROTO_ICMP: u32 = 2;
pub const PROTO_OTHER: u32 = 3;
pub const PROTO_CLASSES: usize = 4;

/// IP protocol numbers (the IPv4 protocol field, the IPv6 next header): the transport
/// protocols the datapath judges, and the IPv6 extension headers the parser follows.
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// TCP header flag bits.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// ICMP (IPv4) types and codes (RFC 792).
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// Codes of [`ICMP_DEST_UNREACH`]: port unreachable, fragmentation needed (path MTU
/// discovery, RFC 1191).
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;

/// ICMPv6 types and codes (RFC 4443; MLD and neighbour discovery: RFC 2710, 3810, 4861).
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
/// MLD query (the first of the MLD and neighbour discovery types, 130-137).
pub const ICMPV6_MLD_QUERY: u8 = 130;
/// Neighbour discovery redirect (the last of them).
pub const ICMPV6_REDIRECT: u8 = 137;
pub const ICMPV6_MLD2_REPORT: u8 = 143;
/// Code of [`ICMPV6_DEST_UNREACH`]: port unreachable.
pub const ICMPV6_PORT_UNREACH: u8 = 4;

/// Socket address families as the cgroup hooks read them (`bpf_sock.family`,
/// `bpf_sock_addr.user_family`).
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
