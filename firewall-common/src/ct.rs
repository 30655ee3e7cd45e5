//! Connection tracking: the table's key and entry, the states, and the TCP state machine.
//!
//! The state machine is a pure function shared by the XDP program (packets from remote
//! hosts), the TC egress program (packets the host sends) and the daemon's model, so the
//! three cannot disagree about a transition. The kernel tests drive it through the real
//! programs with hand-written expectations (firewall-daemon/tests/conntrack.rs).
//!
//! Flows are keyed from the host's point of view (local and remote address and port), which
//! is a normalisation of the 5-tuple: the host's packets and the replies to them map to the
//! same key without sorting addresses.

/// IP protocol numbers that appear in [`CtKey::proto`].
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// A flow, as the host sees it. IPv4 addresses are stored as `::ffff:a.b.c.d`; `family` tells
/// them apart from the same bytes in an IPv6 packet, so an IPv6 flow can never stand for an
/// IPv4 one (the datapath also drops IPv6 packets carrying such addresses). For ICMP echo
/// the local port is the echo identifier and the remote port is 0.
/// Aligned to 8 so the datapath can build it with 64-bit stores.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 2],
}

/// [`CtKey::family`] of an IPv4 flow.
pub const FAMILY_V4: u8 = 4;
/// [`CtKey::family`] of an IPv6 flow.
pub const FAMILY_V6: u8 = 6;

/// A tracked flow. Packet and byte counts are updated without atomics: exact per CPU,
/// approximate when the packets of one flow are handled on several CPUs at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the entry was created.
    pub created_ns: u64,
    /// When the entry stops counting: last packet + the timeout of its state.
    pub expires_ns: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Verdict word of the rule that admitted an inbound flow, or one of the `RULE_*` markers.
    pub rule: u32,
    /// Rule-set generation `rule` refers to (rule indices change across reloads).
    pub generation: u32,
    /// TCP: next sequence number expected from the remote side (valid with
    /// [`FLAG_REMOTE_SEQ`]).
    pub remote_next: u32,
    /// TCP: next sequence number expected from the host (valid with [`FLAG_LOCAL_SEQ`]).
    pub local_next: u32,
    /// One of [`state`].
    pub state: u8,
    /// [`ORIGIN_LOCAL`] or [`ORIGIN_REMOTE`]: which side opened the flow.
    pub origin: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    pub _pad: [u8; 5],
    /// Who owns the flow on this host: for a flow the host opened, the process whose
    /// connect()/sendmsg() created the socket's first verdict (recorded by the outbound hooks,
    /// copied here by the egress program); for a flow a remote host opened, the owner of the
    /// listening socket when the first packet arrived. All zero when unknown.
    pub owner: ConnOwner,
}

/// The process a connection belongs to (value of [`crate::maps::SOCK_OWNER`] and part of
/// [`CtEntry`]). `pid` 0 and an all-zero `exe` mean "not known".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnOwner {
    /// The executable, as (device, inode): see [`crate::identity::ExeId`].
    pub exe: crate::identity::ExeId,
    pub uid: u32,
    /// Thread-group id (the process id userspace sees); 0 for a listener's flow, whose socket
    /// outlives the process that bound it as often as not.
    pub pid: u32,
}

impl ConnOwner {
    pub const fn is_known(&self) -> bool {
        self.pid != 0 || self.exe.dev != 0 || self.exe.ino != 0
    }
}

/// The host opened the flow.
pub const ORIGIN_LOCAL: u8 = 0;
/// A remote host opened the flow and a rule allowed it.
pub const ORIGIN_REMOTE: u8 = 1;

/// [`CtEntry::rule`] of a flow the host opened.
pub const RULE_LOCAL: u32 = u32::MAX - 1;
/// [`CtEntry::rule`] of a flow seeded from the host's sockets when the daemon started.
pub const RULE_SEEDED: u32 = u32::MAX - 2;
/// [`CtEntry::rule`] of a flow picked up from a packet the host sent mid-connection.
pub const RULE_PICKUP: u32 = u32::MAX - 3;

pub const FLAG_FIN_LOCAL: u8 = 1;
pub const FLAG_FIN_REMOTE: u8 = 2;
pub const FLAG_REMOTE_SEQ: u8 = 4;
pub const FLAG_LOCAL_SEQ: u8 = 8;
/// Set by `fwctl reload --recheck` on a flow the new rules deny: its inbound packets get the
/// action in [`CtEntry::rule`] instead of passing.
pub const FLAG_DENIED: u8 = 16;

/// Connection states. TCP states follow Linux nf_conntrack's names and meaning (the state of
/// the connection, not of either endpoint): SYN_SENT after the opener's SYN, SYN_RECV after
/// the answering SYN-ACK, ESTABLISHED after the opener's ACK.
pub mod state {
    pub const SYN_SENT: u8 = 1;
    pub const SYN_RECV: u8 = 2;
    pub const ESTABLISHED: u8 = 3;
    /// One side has sent a FIN.
    pub const FIN_WAIT: u8 = 4;
    /// The first FIN was acknowledged; the other side has not closed yet.
    pub const CLOSE_WAIT: u8 = 5;
    /// Both sides have sent a FIN; waiting for the last ACK.
    pub const LAST_ACK: u8 = 6;
    pub const TIME_WAIT: u8 = 7;
    /// Reset.
    pub const CLOSE: u8 = 8;
    pub const UDP_UNREPLIED: u8 = 9;
    pub const UDP_REPLIED: u8 = 10;
    /// ICMP/ICMPv6 echo request sent, replies expected.
    pub const ICMP_ECHO: u8 = 11;
    /// Number of states (plus the unused 0).
    pub const COUNT: usize = 12;
    /// Slots of [`super::CtConfig::timeout_ns`], indexed by state: a power of two, so the
    /// datapath bounds the index with a mask the verifier can follow.
    pub const SLOTS: usize = 16;

    pub const fn name(s: u8) -> &'static str {
        match s {
            SYN_SENT => "SYN_SENT",
            SYN_RECV => "SYN_RECV",
            ESTABLISHED => "ESTABLISHED",
            FIN_WAIT => "FIN_WAIT",
            CLOSE_WAIT => "CLOSE_WAIT",
            LAST_ACK => "LAST_ACK",
            TIME_WAIT => "TIME_WAIT",
            CLOSE => "CLOSE",
            UDP_UNREPLIED => "UNREPLIED",
            UDP_REPLIED => "REPLIED",
            ICMP_ECHO => "ECHO",
            _ => "UNKNOWN",
        }
    }

    /// Confirmed flows live in the table an attacker cannot fill by spoofing.
    pub const fn confirmed(s: u8) -> bool {
        matches!(
            s,
            ESTABLISHED | FIN_WAIT | CLOSE_WAIT | LAST_ACK | TIME_WAIT | CLOSE | UDP_REPLIED
        )
    }
}

/// Per rule-set settings of the tracker, the single entry of [`crate::maps::CT_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtConfig {
    /// Timeout per state, in nanoseconds (index 0 and those past the last state unused).
    pub timeout_ns: [u64; state::SLOTS],
    /// Verdict word for a TCP segment that is not a SYN and belongs to no connection.
    pub invalid_verdict: u32,
    /// Rule-set generation, recorded in new entries.
    pub generation: u32,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What the tracker says about a packet of a known flow.
pub mod outcome {
    /// Part of the flow: pass.
    pub const PASS: u8 = 0;
    /// Impossible in the flow's state (or a RST outside the window): drop, counted.
    pub const INVALID: u8 = 1;
    /// A SYN reusing the tuple of a finished connection: forget the entry and judge the packet
    /// as a new connection.
    pub const NEW: u8 = 2;
    /// The flow was denied by a recheck: apply the verdict recorded in the entry.
    pub const DENIED: u8 = 3;
}

/// How far (in sequence space) a RST from the remote may be from the next expected sequence
/// number and still reach the host. A blind attacker guessing sequence numbers gets through
/// this check with probability 2^21 / 2^32; what passes meets the host's own RFC 5961 check
/// (a challenge ACK unless the sequence number is exact). Only an exact RST ends the entry.
pub const RST_WINDOW: u32 = 1 << 20;

/// What a RST may do to its flow.
pub mod rst {
    /// Acceptable: the connection is over.
    pub const CLOSE: u8 = 0;
    /// Plausible but not exact: pass it to the host (which answers with a challenge ACK),
    /// keep the state.
    pub const IN_WINDOW: u8 = 1;
    /// Not from the peer: drop.
    pub const OUTSIDE: u8 = 2;
}

/// Classifies a RST. The host's own RSTs always close; a RST answering the host's SYN must
/// acknowledge it (RFC 9293 3.10.7.3); otherwise the sequence number is checked against what
/// the remote is expected to send next.
#[inline(always)]
pub fn rst_class(e: &CtEntry, from_local: bool, tcp_flags: u8, seq: u32, ack: u32) -> u8 {
    if from_local {
        return rst::CLOSE;
    }
    if e.state == state::SYN_SENT && e.origin == ORIGIN_LOCAL {
        let acks_syn =
            tcp_flags & TCP_ACK != 0 && (e.flags & FLAG_LOCAL_SEQ == 0 || ack == e.local_next);
        return if acks_syn { rst::CLOSE } else { rst::OUTSIDE };
    }
    if e.flags & FLAG_REMOTE_SEQ == 0 || seq == e.remote_next {
        return rst::CLOSE;
    }
    let d = seq.wrapping_sub(e.remote_next);
    if d <= RST_WINDOW || d.wrapping_neg() <= RST_WINDOW {
        rst::IN_WINDOW
    } else {
        rst::OUTSIDE
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpStep {
    pub state: u8,
    pub flags: u8,
    pub outcome: u8,
}

const EV_SYN: u8 = 0;
const EV_SYNACK: u8 = 1;
const EV_FIN: u8 = 2;
const EV_ACK: u8 = 3;
const EV_RST: u8 = 4;
const EV_BAD: u8 = 5;

#[inline(always)]
const fn event(tcp_flags: u8) -> u8 {
    let syn = tcp_flags & TCP_SYN != 0;
    if tcp_flags & TCP_RST != 0 {
        if syn { EV_BAD } else { EV_RST }
    } else if syn {
        if tcp_flags & TCP_FIN != 0 {
            EV_BAD
        } else if tcp_flags & TCP_ACK != 0 {
            EV_SYNACK
        } else {
            EV_SYN
        }
    } else if tcp_flags & TCP_FIN != 0 {
        EV_FIN
    } else if tcp_flags & TCP_ACK != 0 {
        EV_ACK
    } else {
        // Every segment but a SYN or RST carries ACK (RFC 9293 3.10.7.4).
        EV_BAD
    }
}

/// True for a segment that may open a connection: SYN without ACK, FIN or RST.
#[inline(always)]
pub const fn is_initial_syn(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) == TCP_SYN
}

/// The TCP transition for a segment of a tracked flow. `from_local`: the host sent it.
/// `rst`: [`rst_class`] of the segment when it carries RST.
#[inline(always)]
pub fn tcp_step(e: &CtEntry, from_local: bool, tcp_flags: u8, rst: u8) -> TcpStep {
    let s = e.state;
    let flags = e.flags;
    let from_opener = from_local == (e.origin == ORIGIN_LOCAL);
    let mine = if from_local {
        FLAG_FIN_LOCAL
    } else {
        FLAG_FIN_REMOTE
    };
    let pass = |state: u8, flags: u8| TcpStep {
        state,
        flags,
        outcome: outcome::PASS,
    };
    let invalid = TcpStep {
        state: s,
        flags,
        outcome: outcome::INVALID,
    };
    match event(tcp_flags) {
        EV_RST => match rst {
            rst::CLOSE => pass(state::CLOSE, flags),
            rst::IN_WINDOW => pass(s, flags),
            _ => invalid,
        },
        EV_BAD => invalid,
        ev => match s {
            state::SYN_SENT => match ev {
                // A retransmitted SYN, or a simultaneous open (rare; left to the endpoints).
                EV_SYN => pass(s, flags),
                EV_SYNACK if !from_opener => pass(state::SYN_RECV, flags),
                _ => invalid,
            },
            state::SYN_RECV => match ev {
                EV_SYN if from_opener => pass(s, flags),
                EV_SYNACK if !from_opener => pass(s, flags),
                EV_ACK if from_opener => pass(state::ESTABLISHED, flags),
                EV_ACK => pass(s, flags),
                EV_FIN => pass(state::FIN_WAIT, flags | mine),
                _ => invalid,
            },
            state::ESTABLISHED => match ev {
                EV_ACK => pass(s, flags),
                EV_FIN => pass(state::FIN_WAIT, flags | mine),
                // The opener's final ACK was lost and the SYN-ACK is retransmitted.
                EV_SYNACK if !from_opener => pass(s, flags),
                // The opener reusing the tuple while the old connection's RST is still on
                // its way (a RST and the next SYN sent from different CPUs can swap places):
                // passed without touching the state, as nf_conntrack ignores it. The host's
                // stack answers it (a challenge ACK if its socket is still there), and a
                // spoofed SYN cannot end a live connection.
                EV_SYN if from_opener => pass(s, flags),
                _ => invalid,
            },
            state::FIN_WAIT | state::CLOSE_WAIT => {
                let first_fin_mine = flags & mine != 0;
                match ev {
                    EV_FIN if !first_fin_mine => pass(state::LAST_ACK, flags | mine),
                    EV_FIN => pass(s, flags),
                    EV_ACK if !first_fin_mine && s == state::FIN_WAIT => {
                        pass(state::CLOSE_WAIT, flags)
                    }
                    EV_ACK => pass(s, flags),
                    // As in ESTABLISHED.
                    EV_SYN if from_opener => pass(s, flags),
                    _ => invalid,
                }
            }
            state::LAST_ACK => match ev {
                EV_ACK => pass(state::TIME_WAIT, flags),
                EV_FIN => pass(s, flags),
                EV_SYN if from_opener => pass(s, flags),
                _ => invalid,
            },
            state::TIME_WAIT | state::CLOSE => match ev {
                EV_SYN => TcpStep {
                    state: s,
                    flags,
                    outcome: outcome::NEW,
                },
                EV_ACK | EV_FIN => pass(s, flags),
                _ => invalid,
            },
            _ => invalid,
        },
    }
}

/// Whether a segment from the remote end moves the expected sequence number the RST check
/// uses. RSTs do not, and neither do SYNs: a flow's first SYN sets it when the flow is
/// created, and a later one is a retransmission or (on a live flow) a reused tuple that
/// [`tcp_step`] passes without touching the flow.
#[inline(always)]
pub const fn moves_remote_seq(tcp_flags: u8) -> bool {
    tcp_flags & TCP_RST == 0 && !is_initial_syn(tcp_flags)
}

/// Sequence space a segment occupies: payload, plus one each for SYN and FIN.
#[inline(always)]
pub const fn seq_len(tcp_flags: u8, payload: u32) -> u32 {
    payload
        .wrapping_add((tcp_flags & TCP_SYN != 0) as u32)
        .wrapping_add((tcp_flags & TCP_FIN != 0) as u32)
}

/// True if `a` is after `b` in sequence space.
#[inline(always)]
pub const fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

const _: () = {
    assert!(core::mem::size_of::<CtKey>() == 40);
    // The datapath writes bytes 32..40 (ports, protocol, padding) as one u64.
    assert!(core::mem::offset_of!(CtKey, local_port) == 32);
    assert!(core::mem::offset_of!(CtKey, remote_port) == 34);
    assert!(core::mem::offset_of!(CtKey, proto) == 36);
    assert!(core::mem::offset_of!(CtKey, family) == 37);
    assert!(core::mem::align_of::<CtKey>() == 8);
    assert!(core::mem::size_of::<CtEntry>() == 96);
    assert!(core::mem::size_of::<ConnOwner>() == 24);
    assert!(core::mem::size_of::<CtConfig>() == 8 * state::SLOTS + 8);
    assert!(state::COUNT <= state::SLOTS && state::SLOTS.is_power_of_two());
};

/// UDP and ICMP echo: the state after a packet of a tracked flow. A flow is replied once the
/// side that did not open it has sent something.
#[inline(always)]
pub fn udp_step(e: &CtEntry, from_local: bool) -> u8 {
    let from_opener = from_local == (e.origin == ORIGIN_LOCAL);
    if e.state == state::UDP_UNREPLIED && !from_opener {
        state::UDP_REPLIED
    } else {
        e.state
    }
}
