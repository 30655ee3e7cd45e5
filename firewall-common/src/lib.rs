//! Types shared by the XDP program and the daemon.
//!
//! Everything here is `#[repr(C)]` with explicit padding, so the kernel and userspace agree on
//! layout byte for byte; sizes are asserted at compile time. No `bool` or `Option` crosses the
//! boundary: flags are `u32`, "nothing" is [`NO_MATCH`].
//!
//! The classifier these maps implement is described in `firewall-daemon/src/compile.md`.
#![no_std]

pub mod addr;
pub mod ct;
pub mod identity;
pub mod maps;

/// Names of the load-time constants (`Global<u32>`) in the XDP program.
pub mod globals {
    /// Verdict word for inbound packets no rule matches (rule index [`super::DEFAULT_RULE`]).
    pub const DEFAULT_INBOUND: &str = "DEFAULT_INBOUND";
    /// [`super::FRAG_ALLOW`] or [`super::FRAG_STEALTH`]: non-first fragments.
    pub const FRAGMENTS: &str = "FRAGMENTS";
    /// Reject replies a source may receive per second (token refill rate).
    pub const REJECT_RATE_PER_SEC: &str = "REJECT_RATE_PER_SEC";
    /// Reject replies a source may receive in a burst (bucket size).
    pub const REJECT_BURST: &str = "REJECT_BURST";
    /// Reject replies the host sends per second, to all sources together (token refill rate;
    /// the bucket holds one second's worth).
    pub const REJECT_GLOBAL_RATE: &str = "REJECT_GLOBAL_RATE";
    /// Non-zero when [`super::maps::PAIRS`] holds entries (lets the verifier prune the lookup).
    pub const HAS_PAIRS: &str = "HAS_PAIRS";
    /// `[u32; PROTO_CLASSES]`: per protocol class, the first rule (verdict word) that matches
    /// every remote address and every port of that protocol, or [`super::NO_MATCH`]. Kept out
    /// of [`super::maps::PORTS`] so such rules do not have to be written into every port slot.
    pub const PROTO_VERDICTS: &str = "PROTO_VERDICTS";
    /// Verdict word for outbound socket calls no rule matches (rule index
    /// [`super::DEFAULT_RULE`]): set in the outbound generation, read by the cgroup hooks.
    pub const DEFAULT_OUTBOUND: &str = "DEFAULT_OUTBOUND";
    /// Non-zero when some outbound verdict of the rule set in force can be `stealth`: only then
    /// does the egress program look its packets up in [`super::maps::OUT_STEALTH`].
    pub const OUT_CAN_STEALTH: &str = "OUT_CAN_STEALTH";
    /// Non-zero when connections record their owner (`[conntrack] record_owner`): the outbound
    /// hooks fill [`super::maps::SOCK_OWNER`] and new flows copy the owner.
    pub const RECORD_OWNER: &str = "RECORD_OWNER";
    /// Bit `s` set when some group of this direction has shape `s`
    /// ([`super::identity::SHAPE_PROGRAM`] | ...): the shapes whose `GROUPS` lookup is made.
    /// 0: no rule names a program, unit or user, and nothing beyond the unscoped lookups runs.
    pub const SCOPED_SHAPES: &str = "SCOPED_SHAPES";
    /// Bit `l` set when a unit the rules name has its cgroup at level `l`.
    pub const UNIT_LEVELS: &str = "UNIT_LEVELS";
}

/// Name of the firewall's XDP program in the object file (devices with Ethernet headers).
pub const XDP_PROGRAM: &str = "firewall_xdp";
/// The same for devices without a link-layer header, whose frames start at the IP header.
pub const XDP_L3_PROGRAM: &str = "firewall_xdp_l3";
/// Name of a program that only returns `XDP_PASS` (veth peers in tests, the benchmark floor).
pub const XDP_PASS_PROGRAM: &str = "xdp_pass";
/// Name of the TC egress program that records the flows the host opens (and drops the packets
/// of sockets an outbound verdict said `stealth` for).
pub const TC_EGRESS_PROGRAM: &str = "firewall_egress";
/// The egress program for devices without a link-layer header.
pub const TC_EGRESS_L3_PROGRAM: &str = "firewall_egress_l3";
/// The outbound hooks: `cgroup/connect4`, `cgroup/connect6` (TCP and connected UDP),
/// `cgroup/sendmsg4`, `cgroup/sendmsg6` (UDP datagrams sent with an address).
pub const CONNECT4_PROGRAM: &str = "firewall_connect4";
pub const CONNECT6_PROGRAM: &str = "firewall_connect6";
pub const SENDMSG4_PROGRAM: &str = "firewall_sendmsg4";
pub const SENDMSG6_PROGRAM: &str = "firewall_sendmsg6";
/// `cgroup/post_bind4`, `cgroup/post_bind6`: record who bound a port (`LISTENERS`).
pub const POST_BIND4_PROGRAM: &str = "firewall_post_bind4";
pub const POST_BIND6_PROGRAM: &str = "firewall_post_bind6";
/// `cgroup/sock_release`: forget a released socket's port.
pub const SOCK_RELEASE_PROGRAM: &str = "firewall_sock_release";

pub const ACTION_ALLOW: u32 = 0;
pub const ACTION_REJECT: u32 = 1;
pub const ACTION_STEALTH: u32 = 2;
const ACTION_BITS: u32 = 2;
const ACTION_MASK: u32 = (1 << ACTION_BITS) - 1;

/// "No rule of this kind matches." Larger than every verdict word, so `min` ignores it.
pub const NO_MATCH: u32 = u32::MAX;
/// Rule index recorded for packets decided by `[defaults]`.
pub const DEFAULT_RULE: u32 = (1 << (32 - ACTION_BITS)) - 2;
/// Most rules a rule set may hold (indices below [`DEFAULT_RULE`]).
pub const MAX_RULES: u32 = DEFAULT_RULE;

/// A verdict word packs `rule index << 2 | action`. Because the rule index is in the high bits,
/// the numerically smallest word among several candidates is the first rule in file order: the
/// kernel resolves first-match precedence with `min`, no rule scan.
#[inline(always)]
pub const fn verdict(rule: u32, action: u32) -> u32 {
    (rule << ACTION_BITS) | (action & ACTION_MASK)
}

#[inline(always)]
pub const fn verdict_rule(word: u32) -> u32 {
    word >> ACTION_BITS
}

#[inline(always)]
pub const fn verdict_action(word: u32) -> u32 {
    word & ACTION_MASK
}

/// Protocol classes the classifier distinguishes.
pub const PROTO_TCP: u32 = 0;
pub const PROTO_UDP: u32 = 1;
/// ICMP (IPv4) and ICMPv6 both: `proto = "icmp"`.
pub const PROTO_ICMP: u32 = 2;
pub const PROTO_OTHER: u32 = 3;
pub const PROTO_CLASSES: usize = 4;

/// Number of entries in [`maps::PORTS`]: every TCP port, every UDP port, then one slot each for
/// ICMP and other protocols (they have no ports).
pub const PORT_SLOTS: u32 = 2 * 65536 + 2;

/// Index into [`maps::PORTS`] for a protocol class and local (service) port.
#[inline(always)]
pub const fn port_slot(proto: u32, port: u16) -> u32 {
    match proto {
        PROTO_TCP => port as u32,
        PROTO_UDP => 65536 + port as u32,
        PROTO_ICMP => 2 * 65536,
        _ => 2 * 65536 + 1,
    }
}

/// Value of the address tries: what the longest matching prefix tells about a remote address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrValue {
    /// Address class for [`maps::PAIRS`], or [`NO_MATCH`] when no rule naming both an address
    /// and a port covers this address.
    pub class: u32,
    /// First rule (verdict word) that names this address and matches every protocol and port.
    pub any_proto: u32,
    /// Per protocol class: first rule naming this address and the protocol, with no port.
    pub proto: [u32; PROTO_CLASSES],
}

/// Value of [`maps::PORTS`]. Both fields hold their value **plus one** (wrapping), so the
/// all-zero entry a new array starts with means "nothing matches" and the daemon only writes
/// the slots rules use. Read them with [`PortValue::class`] and [`PortValue::any_addr`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortValue {
    class_plus_one: u32,
    any_addr_plus_one: u32,
}

impl PortValue {
    pub const EMPTY: Self = Self::new(NO_MATCH, NO_MATCH);

    /// `class`: port class for [`maps::PAIRS`] or [`NO_MATCH`]; `any_addr`: first rule
    /// (verdict word) that matches this protocol/port from any remote address, or [`NO_MATCH`].
    #[inline(always)]
    pub const fn new(class: u32, any_addr: u32) -> Self {
        Self {
            class_plus_one: class.wrapping_add(1),
            any_addr_plus_one: any_addr.wrapping_add(1),
        }
    }

    #[inline(always)]
    pub const fn class(&self) -> u32 {
        self.class_plus_one.wrapping_sub(1)
    }

    #[inline(always)]
    pub const fn any_addr(&self) -> u32 {
        self.any_addr_plus_one.wrapping_sub(1)
    }
}

/// Key of [`maps::PAIRS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PairKey {
    pub addr_class: u32,
    pub port_class: u32,
}

/// Source of a rejected packet (IPv4 as `::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateKey {
    pub addr: [u8; 16],
}

/// Value of [`maps::IFACE_MAC`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceMac {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Key of [`maps::LOCAL_ADDRS`]: an address as `CtKey` stores it (IPv4 as `::ffff:a.b.c.d`)
/// and its family ([`ct::FAMILY_V4`] or [`ct::FAMILY_V6`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalAddrKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Capacity of [`maps::IFACE_MAC`].
pub const IFACE_MAC_ENTRIES: u32 = 4096;
/// Capacity of [`maps::LOCAL_ADDRS`]. Addresses beyond it get no reject replies (the daemon
/// warns).
pub const LOCAL_ADDRS_ENTRIES: u32 = 4096;

/// Token bucket for reject replies. Tokens are kept in millitokens so refill is integer math.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateBucket {
    pub millitokens: u64,
    pub last_ns: u64,
}

/// Key of [`maps::OUT_STEALTH`]: one socket (its cookie, `bpf_get_socket_cookie`) and one
/// destination. IPv4 addresses are stored as `::ffff:a.b.c.d`, as the packets leave. The
/// destination is part of the key because one unconnected UDP socket may send to several.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OutStealthKey {
    pub cookie: u64,
    pub remote: [u8; 16],
    /// Host byte order.
    pub remote_port: u16,
    /// IP protocol number (6 or 17).
    pub proto: u8,
    pub _pad: [u8; 5],
}

/// Capacity of [`maps::OUT_STEALTH`]: sockets held by `stealth` at once. The oldest is
/// forgotten when it is full (its packets then leave: see the README's limits).
pub const OUT_STEALTH_ENTRIES: u32 = 65536;

/// Capacity of [`maps::SOCK_OWNER`]. An entry is needed only between a socket's connect()
/// (or first sendmsg()) and its first packet, or again when its flow has expired and a later
/// packet starts a new one; the least recently used socket is forgotten first.
pub const SOCK_OWNER_ENTRIES: u32 = 65536;

pub const FRAG_ALLOW: u32 = 0;
pub const FRAG_STEALTH: u32 = 1;

/// Every verdict and every reason the XDP, TC egress and cgroup programs count. The order is
/// the map layout; append only. `fwctl status` prints these by [`Counter::name`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets seen by the program.
    Packets = 0,
    /// Passed: a rule or the default said allow.
    Allowed,
    /// Dropped: a rule or the default said stealth.
    Stealthed,
    /// Reject verdicts (answered or degraded; see the reject counters).
    Rejected,
    /// Decided by `[defaults] inbound` (included in the three verdicts above).
    DefaultVerdict,
    /// Passed without judging: not IPv4/IPv6 (ARP and other link protocols).
    PassNonIp,
    /// Passed without judging: ICMPv6 neighbour discovery, MLD, packet-too-big, and ICMPv4
    /// fragmentation-needed, without which IPv6 and path MTU discovery break.
    PassIcmpEssential,
    /// Non-first fragment passed under `fragments = "allow"`.
    PassFragment,
    /// Non-first fragment dropped under `fragments = "stealth"`.
    DropFragment,
    /// Dropped: frame shorter than its Ethernet or VLAN headers.
    DropMalformedL2,
    /// Dropped: more than two VLAN tags.
    DropTooManyVlans,
    /// Dropped: IPv4 header truncated, version != 4, IHL < 5 or total length too short.
    DropMalformedIpv4,
    /// Dropped: IPv6 header truncated or version != 6.
    DropMalformedIpv6,
    /// Dropped: IPv6 extension header truncated, or more of them than the parser follows.
    DropIpv6ExtHeaders,
    /// Dropped: TCP/UDP/ICMP header truncated, or TCP data offset < 5 or past the frame.
    DropMalformedL4,
    /// Reject answered with a TCP RST.
    RejectTcpRst,
    /// Reject answered with ICMP/ICMPv6 port unreachable.
    RejectIcmpUnreachable,
    /// Reject degraded to a silent drop: the source exceeded its reply budget.
    RejectRateLimited,
    /// Reject degraded to a silent drop: no answer is defined (ICMP, other protocols, TCP RST).
    RejectNoReply,
    /// Reject degraded to a silent drop: building the reply failed (no headroom, oversized
    /// headers).
    RejectBuildFailed,
    /// Passed as a packet of a tracked connection, without running the rules.
    PassTracked,
    /// Passed: an ICMP/ICMPv6 error about a tracked connection.
    PassRelated,
    /// Dropped: a packet of a tracked connection that its state does not allow (for instance a
    /// SYN-ACK from the opener, or a RST far outside the expected sequence numbers).
    DropCtInvalid,
    /// A TCP segment that is not a SYN and belongs to no connection, judged by
    /// `[conntrack] invalid` (also counted under stealthed or rejected).
    CtInvalidNoConn,
    /// Entries added to the unconfirmed (LRU) table.
    CtNewInserted,
    /// Entries removed from the unconfirmed table by the datapath (confirmed or reused).
    CtNewRemoved,
    /// Flows moved to the confirmed table.
    CtConfirmed,
    /// The confirmed table was full: the flow stayed in the unconfirmed table.
    CtConfirmedFull,
    /// Inserting into the unconfirmed table failed (the flow is not tracked).
    CtInsertFailed,
    /// Flows picked up from a packet the host sent on a connection the table did not know.
    CtPickedUp,
    /// Packets seen by the egress program.
    EgressPackets,
    /// Expired entries the daemon removed from the unconfirmed table. Written by the daemon
    /// only; with the counters above it gives the LRU's evictions (see `fwctl status`).
    CtDaemonRemoved,
    /// Expired entries the daemon removed from the confirmed table. Written by the daemon only.
    CtDaemonRemovedConfirmed,
    /// Outbound socket calls (connect of TCP and UDP sockets, sendmsg of UDP datagrams with an
    /// address) judged by the outbound rules. Each is also counted under exactly one of
    /// `OutAllowed`, `OutRejected`, `OutStealthed`.
    OutJudged,
    /// Outbound calls a rule or `[defaults] outbound` allowed.
    OutAllowed,
    /// Outbound calls refused: the call fails with EPERM.
    OutRejected,
    /// Outbound calls that proceed but whose packets the egress program drops (`stealth`).
    OutStealthed,
    /// Outbound calls decided by `[defaults] outbound` (included in the three above).
    OutDefaultVerdict,
    /// Outbound calls to a loopback destination (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104):
    /// always allowed, never judged.
    OutLoopback,
    /// Outbound calls of sockets that are neither TCP nor UDP (ping sockets, SCTP, UDP-Lite):
    /// allowed, not judged.
    OutNotJudged,
    /// Packets the egress program dropped because their socket is held by `stealth`.
    OutStealthDropped,
    /// A `stealth` verdict that could not be recorded (the map update failed): the call was
    /// refused with EPERM instead (also counted under `OutRejected`).
    OutStealthRecordFailed,
    /// Outbound calls whose caller's executable could not be read (kernel thread, exiting
    /// task): judged with no program identity.
    OutNoExe,
    /// Ports recorded in the listener table by post_bind.
    ListenerBound,
    /// Listener entries removed when their socket was released.
    ListenerReleased,
    /// Recording a bound port failed (the table is full): its connections are judged as if
    /// no program listened.
    ListenerRecordFailed,
    /// New inbound connections judged with the listening program's identity.
    InListenerFound,
    /// New inbound connections to a port no recorded socket listens on, while inbound rules
    /// name programs: only rules without selectors apply.
    InNoListener,
    /// Outbound hooks: the owner of an allowed socket could not be recorded (`SOCK_OWNER`).
    OwnerRecordFailed,
    /// Egress: a new flow the host opened got its socket's owner from `SOCK_OWNER`.
    CtOwnerRecorded,
    /// Egress: a new flow the host opened has no recorded owner (its socket never passed a
    /// connect/sendmsg hook, e.g. a raw socket, a socket outside the cgroup, or one the LRU
    /// forgot).
    CtOwnerUnknown,
    /// Dropped: an IPv6 packet whose source or destination embeds an IPv4 address
    /// (IPv4-mapped `::ffff:0:0/96`, or IPv4-compatible `::/96` other than `::` and `::1`).
    /// No host sends these on the wire (RFC 4291 2.5.5); they exist to be confused with IPv4.
    DropIpv6EmbeddedIpv4,
    /// Reject degraded to a silent drop: the frame was not addressed to this host (its
    /// destination MAC is not the receiving interface's, or its destination IP is not one of
    /// the host's addresses), so answering would forge a reply for another host.
    RejectNotForUs,
    /// Reject degraded to a silent drop: the host-wide reply budget
    /// (`[reject] global_rate_per_sec`) is used up.
    RejectGlobalRateLimited,
    /// Dropped: on a device without a link-layer header (tun, wireguard, ppp, ip tunnels), a
    /// frame that starts with neither an IPv4 nor an IPv6 header.
    DropL3NotIp,
    /// Reject degraded to a silent drop: the device has no link-layer header, and a reply sent
    /// back with XDP_TX would not reach the sender (see the README).
    RejectNoLinkLayer,
    /// Dropped: a segment of a tracked TCP flow outside the windows (its sequence number
    /// beyond what the host allowed or too far behind, or it acknowledges data the host never
    /// sent or data too far back). Also counted under `DropCtInvalid`.
    CtOutOfWindow,
    /// Entries deleted because a RST ended the handshake (passed to the endpoint; the tuple
    /// is unknown again).
    CtHandshakeReset,
}

impl Counter {
    pub const COUNT: u32 = Counter::CtHandshakeReset as u32 + 1;

    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::Packets,
        Counter::Allowed,
        Counter::Stealthed,
        Counter::Rejected,
        Counter::DefaultVerdict,
        Counter::PassNonIp,
        Counter::PassIcmpEssential,
        Counter::PassFragment,
        Counter::DropFragment,
        Counter::DropMalformedL2,
        Counter::DropTooManyVlans,
        Counter::DropMalformedIpv4,
        Counter::DropMalformedIpv6,
        Counter::DropIpv6ExtHeaders,
        Counter::DropMalformedL4,
        Counter::RejectTcpRst,
        Counter::RejectIcmpUnreachable,
        Counter::RejectRateLimited,
        Counter::RejectNoReply,
        Counter::RejectBuildFailed,
        Counter::PassTracked,
        Counter::PassRelated,
        Counter::DropCtInvalid,
        Counter::CtInvalidNoConn,
        Counter::CtNewInserted,
        Counter::CtNewRemoved,
        Counter::CtConfirmed,
        Counter::CtConfirmedFull,
        Counter::CtInsertFailed,
        Counter::CtPickedUp,
        Counter::EgressPackets,
        Counter::CtDaemonRemoved,
        Counter::CtDaemonRemovedConfirmed,
        Counter::OutJudged,
        Counter::OutAllowed,
        Counter::OutRejected,
        Counter::OutStealthed,
        Counter::OutDefaultVerdict,
        Counter::OutLoopback,
        Counter::OutNotJudged,
        Counter::OutStealthDropped,
        Counter::OutStealthRecordFailed,
        Counter::OutNoExe,
        Counter::ListenerBound,
        Counter::ListenerReleased,
        Counter::ListenerRecordFailed,
        Counter::InListenerFound,
        Counter::InNoListener,
        Counter::OwnerRecordFailed,
        Counter::CtOwnerRecorded,
        Counter::CtOwnerUnknown,
        Counter::DropIpv6EmbeddedIpv4,
        Counter::RejectNotForUs,
        Counter::RejectGlobalRateLimited,
        Counter::DropL3NotIp,
        Counter::RejectNoLinkLayer,
        Counter::CtOutOfWindow,
        Counter::CtHandshakeReset,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::Packets => "packets",
            Counter::Allowed => "allowed",
            Counter::Stealthed => "stealthed",
            Counter::Rejected => "rejected",
            Counter::DefaultVerdict => "default_verdict",
            Counter::PassNonIp => "pass_non_ip",
            Counter::PassIcmpEssential => "pass_icmp_essential",
            Counter::PassFragment => "pass_fragment",
            Counter::DropFragment => "drop_fragment",
            Counter::DropMalformedL2 => "drop_malformed_l2",
            Counter::DropTooManyVlans => "drop_too_many_vlans",
            Counter::DropMalformedIpv4 => "drop_malformed_ipv4",
            Counter::DropMalformedIpv6 => "drop_malformed_ipv6",
            Counter::DropIpv6ExtHeaders => "drop_ipv6_ext_headers",
            Counter::DropMalformedL4 => "drop_malformed_l4",
            Counter::RejectTcpRst => "reject_tcp_rst",
            Counter::RejectIcmpUnreachable => "reject_icmp_unreachable",
            Counter::RejectRateLimited => "reject_rate_limited",
            Counter::RejectNoReply => "reject_no_reply",
            Counter::RejectBuildFailed => "reject_build_failed",
            Counter::PassTracked => "pass_tracked",
            Counter::PassRelated => "pass_related",
            Counter::DropCtInvalid => "drop_ct_invalid",
            Counter::CtInvalidNoConn => "ct_invalid_no_conn",
            Counter::CtNewInserted => "ct_new_inserted",
            Counter::CtNewRemoved => "ct_new_removed",
            Counter::CtConfirmed => "ct_confirmed",
            Counter::CtConfirmedFull => "ct_confirmed_full",
            Counter::CtInsertFailed => "ct_insert_failed",
            Counter::CtPickedUp => "ct_picked_up",
            Counter::EgressPackets => "egress_packets",
            Counter::CtDaemonRemoved => "ct_daemon_removed",
            Counter::CtDaemonRemovedConfirmed => "ct_daemon_removed_confirmed",
            Counter::OutJudged => "out_judged",
            Counter::OutAllowed => "out_allowed",
            Counter::OutRejected => "out_rejected",
            Counter::OutStealthed => "out_stealthed",
            Counter::OutDefaultVerdict => "out_default_verdict",
            Counter::OutLoopback => "out_loopback",
            Counter::OutNotJudged => "out_not_judged",
            Counter::OutStealthDropped => "out_stealth_dropped",
            Counter::OutStealthRecordFailed => "out_stealth_record_failed",
            Counter::OutNoExe => "out_no_exe",
            Counter::ListenerBound => "listener_bound",
            Counter::ListenerReleased => "listener_released",
            Counter::ListenerRecordFailed => "listener_record_failed",
            Counter::InListenerFound => "in_listener_found",
            Counter::InNoListener => "in_no_listener",
            Counter::OwnerRecordFailed => "out_owner_record_failed",
            Counter::CtOwnerRecorded => "ct_owner_recorded",
            Counter::CtOwnerUnknown => "ct_owner_unknown",
            Counter::DropIpv6EmbeddedIpv4 => "drop_ipv6_embedded_ipv4",
            Counter::RejectNotForUs => "reject_not_for_us",
            Counter::RejectGlobalRateLimited => "reject_global_rate_limited",
            Counter::DropL3NotIp => "drop_l3_not_ip",
            Counter::RejectNoLinkLayer => "reject_no_link_layer",
            Counter::CtOutOfWindow => "ct_out_of_window",
            Counter::CtHandshakeReset => "ct_handshake_reset",
        }
    }
}

const _: () = {
    assert!(core::mem::size_of::<AddrValue>() == 24);
    assert!(core::mem::size_of::<PortValue>() == 8);
    assert!(core::mem::size_of::<PairKey>() == 8);
    assert!(core::mem::size_of::<RateKey>() == 16);
    assert!(core::mem::size_of::<RateBucket>() == 16);
    assert!(core::mem::size_of::<IfaceMac>() == 8);
    assert!(core::mem::size_of::<LocalAddrKey>() == 20);
    assert!(core::mem::size_of::<OutStealthKey>() == 32);
    assert!(verdict_rule(verdict(DEFAULT_RULE, ACTION_STEALTH)) == DEFAULT_RULE);
    assert!(verdict(DEFAULT_RULE, ACTION_STEALTH) < NO_MATCH);
    assert!(PortValue::EMPTY.class_plus_one == 0 && PortValue::EMPTY.any_addr_plus_one == 0);
};

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), padding-free (sizes asserted above), and valid for
    // every bit pattern.
    unsafe impl aya::Pod for AddrValue {}
    unsafe impl aya::Pod for PortValue {}
    unsafe impl aya::Pod for PairKey {}
    unsafe impl aya::Pod for RateKey {}
    unsafe impl aya::Pod for RateBucket {}
    unsafe impl aya::Pod for IfaceMac {}
    unsafe impl aya::Pod for LocalAddrKey {}
    unsafe impl aya::Pod for OutStealthKey {}
    unsafe impl aya::Pod for crate::ct::CtKey {}
    unsafe impl aya::Pod for crate::ct::CtEntry {}
    unsafe impl aya::Pod for crate::ct::CtConfig {}
    unsafe impl aya::Pod for crate::ct::ConnOwner {}
}
