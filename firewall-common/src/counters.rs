//! The counters: every outcome of every program, one slot each in `COUNTERS`.
//!
//! Why one enum for all programs: the map is a per-CPU array indexed by [`Counter`], pinned
//! and shared by every generation and both copies of the object, so the daemon reads one map
//! for `fwctl status` and a reload never resets a count. Every verdict and every malformed
//! case has its own reason, so a drop can always be told apart from another. The discriminant
//! is the slot: the order is the map layout, and new counters are only appended.

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
    /// A `stealth` verdict that could not be recorded (a table full): the call was refused
    /// with EPERM instead (also counted under `OutRejected`).
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
    /// Decision log events written to the ring buffer.
    LogEvents,
    /// Decision log events dropped: the CPU's budget (`[log] rate`, `burst`) was used up.
    LogOverBudget,
    /// Decision log events dropped: the ring buffer was full (the daemon is not reading, or
    /// not fast enough).
    LogRingFull,
    /// Egress: DNS queries the host sent (UDP to port 53), recorded so their answers are
    /// read (only while the rules name names).
    DnsQueries,
    /// DNS answers read: they answered a recorded query and gave addresses, now recorded
    /// under the question's name.
    DnsAnswers,
    /// UDP from port 53 that answers no query the host sent (forged, late, a second answer,
    /// another question, no question, not a response): passed or dropped by the rules as
    /// any datagram, nothing recorded, the query (if any) still waiting for its answer.
    DnsUnsolicited,
    /// DNS answers to a recorded query (its id and question) with nothing to record: an
    /// error, truncated (asked again over TCP), not class IN, a question neither A nor AAAA,
    /// or no record of the question's type. The query is used up.
    DnsNoAddress,
    /// UDP from port 53 with a recorded query's id that is malformed (a compression pointer
    /// that does not point back, a name over 255 bytes, a record past the end): nothing
    /// recorded. Malformed in its question, it cannot be told to answer the query, which
    /// waits on; past its question, it is the query's answer and uses the query up.
    DnsMalformed,
    /// A query or an answer could not be recorded (a map update failed, or the daemon has
    /// not set the hash key).
    DnsRecordFailed,
    /// Addresses recorded under a name.
    DnsAddresses,
    /// Outbound calls whose destination was seen under some name.
    OutNamed,
    /// Outbound calls no rule decided to a destination without a name, refused by
    /// `[dns] enforce` where `[defaults] outbound` allows (also counted under
    /// `OutDefaultVerdict` and `OutRejected`).
    OutUnnamedRefused,
    /// Outbound calls refused because another task's hook ran on the same CPU in the middle
    /// of their judging by rules about programs, units or users and reused its scratch room
    /// (a preemptible kernel): judged on keys that were not theirs, the verdict is not used
    /// (also counted under `OutRejected`).
    OutInterleaved,
}

impl Counter {
    pub const COUNT: u32 = Counter::OutInterleaved as u32 + 1;

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
        Counter::LogEvents,
        Counter::LogOverBudget,
        Counter::LogRingFull,
        Counter::DnsQueries,
        Counter::DnsAnswers,
        Counter::DnsUnsolicited,
        Counter::DnsNoAddress,
        Counter::DnsMalformed,
        Counter::DnsRecordFailed,
        Counter::DnsAddresses,
        Counter::OutNamed,
        Counter::OutUnnamedRefused,
        Counter::OutInterleaved,
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
            Counter::LogEvents => "log_events",
            Counter::LogOverBudget => "log_over_budget",
            Counter::LogRingFull => "log_ring_full",
            Counter::DnsQueries => "dns_queries",
            Counter::DnsAnswers => "dns_answers",
            Counter::DnsUnsolicited => "dns_unsolicited",
            Counter::DnsNoAddress => "dns_no_address",
            Counter::DnsMalformed => "dns_malformed",
            Counter::DnsRecordFailed => "dns_record_failed",
            Counter::DnsAddresses => "dns_addresses",
            Counter::OutNamed => "out_named",
            Counter::OutUnnamedRefused => "out_unnamed_refused",
            Counter::OutInterleaved => "out_interleaved",
        }
    }
}
