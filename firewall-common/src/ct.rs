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

/// IP protocol numbers that appear in [`CtKey::proto`] (defined with the other protocol
/// numbers in `proto.rs`).
pub use crate::proto::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

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
    /// CLOCK_MONOTONIC when the entry was created, to the last tick (the datapath reads the
    /// coarse clock, `firewall-ebpf/src/clock.rs`).
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
    /// TCP, per side: the end of what that side has sent (the sequence number after its last
    /// byte, SYN and FIN counted), i.e. the next sequence number expected from it. Valid with
    /// [`FLAG_REMOTE_SEQ`] / [`FLAG_LOCAL_SEQ`]; the host's is taken from what it sends.
    pub remote_next: u32,
    pub local_next: u32,
    /// TCP, per side: the highest sequence number that side may send, i.e. the largest
    /// acknowledgment + window the other side advertised (nf_conntrack's `td_maxend`).
    pub remote_maxend: u32,
    pub local_maxend: u32,
    /// TCP, per side: the largest window that side advertised, scaled (`td_maxwin`).
    pub remote_maxwin: u32,
    pub local_maxwin: u32,
    /// TCP, with [`FLAG_REUSE`]: the sequence number, window and window scale option of the
    /// last SYN the remote opener sent on this tuple while the flow was live (a new connection
    /// reusing the tuple, whose predecessor's end the tracker missed).
    pub reuse_seq: u32,
    pub reuse_win: u16,
    /// One of [`state`].
    pub state: u8,
    /// [`ORIGIN_LOCAL`] or [`ORIGIN_REMOTE`]: which side opened the flow.
    pub origin: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// TCP, per side: the window scale shift (RFC 7323) applied to its windows outside SYNs;
    /// [`MAX_WSCALE`] where the handshake was not seen.
    pub remote_scale: u8,
    pub local_scale: u8,
    pub reuse_wscale: u8,
    pub _pad: [u8; 4],
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
/// The host's / the remote's SYN carried the window scale option.
pub const FLAG_LOCAL_WSCALE: u8 = 32;
pub const FLAG_REMOTE_WSCALE: u8 = 64;
/// The remote opener sent a SYN on the live flow ([`CtEntry::reuse_seq`]).
pub const FLAG_REUSE: u8 = 128;

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

    /// Whether a flow belongs in the confirmed table, which never evicts: one whose packets
    /// prove a two-way exchange. A TCP connection past its handshake (the tracker moves to
    /// ESTABLISHED only on an acknowledgment of the host's SYN-ACK, or on the host's ACK of a
    /// SYN-ACK that acknowledged its SYN), and a UDP flow the host opened that got an answer.
    /// A UDP flow a remote host opened proves nothing (UDP has no sequence numbers: a blind
    /// sender can send the "further datagram" too), so it stays in the evicting table.
    pub const fn confirmed(s: u8, origin: u8) -> bool {
        match s {
            ESTABLISHED | FIN_WAIT | CLOSE_WAIT | LAST_ACK | TIME_WAIT | CLOSE => true,
            UDP_REPLIED => origin == super::ORIGIN_LOCAL,
            _ => false,
        }
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

/// TCP flag bits, as the state machine reads them (defined in `proto.rs`).
pub use crate::proto::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// What the tracker says about a packet of a known flow.
pub mod outcome {
    /// Part of the flow: pass.
    pub const PASS: u8 = 0;
    /// Impossible in the flow's state: drop, counted.
    pub const INVALID: u8 = 1;
    /// A SYN reusing the tuple of a finished connection: forget the entry and judge the packet
    /// as a new connection.
    pub const NEW: u8 = 2;
    /// The flow was denied by a recheck: apply the verdict recorded in the entry.
    pub const DENIED: u8 = 3;
    /// A RST ended a handshake: pass it and delete the entry, so the tuple is unknown again
    /// (an ACK scan of it gets `[conntrack] invalid`) and nothing of it is confirmed.
    pub const FORGET: u8 = 4;
    /// Outside the windows (sequence number too far from what the sender may send, or an
    /// acknowledgment of data the host never sent): drop, counted.
    pub const WINDOW: u8 = 5;
    /// The host's SYN-ACK answers the SYN the remote opener sent on the live flow
    /// ([`super::FLAG_REUSE`]): both ends have started a new connection on the tuple while the
    /// tracker missed the end of the old one. Pass, and start the flow over from that SYN
    /// ([`super::restart`]).
    pub const RESTART: u8 = 6;
}

/// The largest window scale shift (RFC 7323 2.3). Also the assumed shift of a side whose SYN
/// was not seen (a flow picked up mid-connection or seeded at start-up): overestimating a
/// window only loosens the checks, underestimating it would drop the flow's packets.
pub const MAX_WSCALE: u8 = 14;
/// [`TcpSeg::wscale`] of a segment without the window scale option.
pub const NO_WSCALE: u8 = 0xff;
/// [`TcpSeg::wscale`] of a SYN whose option list was too long to read to the end: it may
/// carry the option, with any shift, so the largest is assumed (any value above
/// [`MAX_WSCALE`] is read as it).
pub const WSCALE_UNKNOWN: u8 = 0xfe;
/// The least distance an acknowledgment may lag behind the data sent (nf_conntrack's
/// `MAXACKWINDOW` floor): covers the data in flight before the sender's window is known.
pub const MIN_ACK_WINDOW: u32 = 66000;

/// What the tracker reads from a TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSeg {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// The window field, unscaled.
    pub win: u16,
    /// The window scale option's shift (SYN segments only), or [`NO_WSCALE`].
    pub wscale: u8,
    /// Bytes of payload.
    pub payload: u32,
}

impl TcpSeg {
    /// The sequence number after the segment.
    #[inline(always)]
    pub const fn end(&self) -> u32 {
        self.seq.wrapping_add(seq_len(self.flags, self.payload))
    }
}

/// One side's view of the window fields of an entry.
#[derive(Clone, Copy)]
struct Side {
    next: u32,
    maxend: u32,
    maxwin: u32,
    scale: u8,
    known: bool,
}

#[inline(always)]
fn side(e: &CtEntry, local: bool) -> Side {
    if local {
        Side {
            next: e.local_next,
            maxend: e.local_maxend,
            maxwin: e.local_maxwin,
            scale: e.local_scale,
            known: e.flags & FLAG_LOCAL_SEQ != 0,
        }
    } else {
        Side {
            next: e.remote_next,
            maxend: e.remote_maxend,
            maxwin: e.remote_maxwin,
            scale: e.remote_scale,
            known: e.flags & FLAG_REMOTE_SEQ != 0,
        }
    }
}

#[inline(always)]
fn set_side(e: &mut CtEntry, local: bool, s: &Side) {
    let (bit, next, maxend, maxwin, scale) = if local {
        (
            FLAG_LOCAL_SEQ,
            &mut e.local_next,
            &mut e.local_maxend,
            &mut e.local_maxwin,
            &mut e.local_scale,
        )
    } else {
        (
            FLAG_REMOTE_SEQ,
            &mut e.remote_next,
            &mut e.remote_maxend,
            &mut e.remote_maxwin,
            &mut e.remote_scale,
        )
    };
    *next = s.next;
    *maxend = s.maxend;
    *maxwin = s.maxwin;
    *scale = s.scale;
    if s.known {
        e.flags |= bit;
    }
}

/// The larger of two sequence numbers.
#[inline(always)]
const fn seq_max(a: u32, b: u32) -> u32 {
    if seq_after(a, b) { a } else { b }
}

/// nf_conntrack's `tcp_in_window` bounds for a segment from the remote side: its sequence
/// number at most what the host allowed it to send (`remote_maxend`), its end not more than
/// the host's largest window behind what it already sent, and its acknowledgment neither of
/// data the host never sent nor further back than the remote's largest window (at least
/// [`MIN_ACK_WINDOW`]). A side not seen yet is not checked (a flow picked up from the host's
/// traffic learns the remote side from the host's acknowledgments first). SACK blocks are not
/// read: the cumulative acknowledgment is checked, which is never past a SACK block.
#[inline(always)]
pub fn in_window(e: &CtEntry, seg: &TcpSeg) -> bool {
    let local = side(e, true);
    let remote = side(e, false);
    if seg.flags & TCP_ACK != 0 && local.known {
        let maxack = if remote.maxwin > MIN_ACK_WINDOW {
            remote.maxwin
        } else {
            MIN_ACK_WINDOW
        };
        if seq_after(seg.ack, local.next) || seq_after(local.next.wrapping_sub(maxack), seg.ack) {
            return false;
        }
    }
    if !remote.known {
        return true;
    }
    !seq_after(seg.seq, remote.maxend)
        && !seq_after(remote.next.wrapping_sub(local.maxwin), seg.end())
}

/// Learns from a segment that passed (either direction): the sender's end, largest window and
/// window scale, and how far the receiver may send (acknowledgment + window). The host's
/// acknowledgments also tell where the remote side is: that is how a flow picked up from the
/// host's traffic learns it. RSTs teach nothing (an in-window but inexact RST must not move
/// the sequence number the next RST is checked against), and neither does the opener's SYN on
/// a flow past its handshake (a reused tuple the host will answer, see [`tcp_step`]).
#[inline(always)]
pub fn tcp_learn(e: &mut CtEntry, from_local: bool, seg: &TcpSeg) {
    if seg.flags & TCP_RST != 0 {
        return;
    }
    if is_initial_syn(seg.flags) && e.state != state::SYN_SENT {
        if !from_local {
            e.reuse_seq = seg.seq;
            e.reuse_win = seg.win;
            e.reuse_wscale = seg.wscale;
        }
        return;
    }
    let syn = seg.flags & TCP_SYN != 0;
    let mut me = side(e, from_local);
    let mut peer = side(e, !from_local);
    let end = seg.end();
    if syn && !me.known {
        // The side's first SYN: its scale counts once the other side's SYN has one too.
        let (bit, other_bit) = if from_local {
            (FLAG_LOCAL_WSCALE, FLAG_REMOTE_WSCALE)
        } else {
            (FLAG_REMOTE_WSCALE, FLAG_LOCAL_WSCALE)
        };
        me.scale = 0;
        if seg.wscale != NO_WSCALE {
            e.flags |= bit;
            me.scale = if seg.wscale > MAX_WSCALE {
                MAX_WSCALE
            } else {
                seg.wscale
            };
        }
        if seg.flags & TCP_ACK != 0 && (e.flags & bit == 0 || e.flags & other_bit == 0) {
            me.scale = 0;
            peer.scale = 0;
        }
        me.next = end;
        // The answering side may send what the opener's SYN window allows (a TCP Fast Open
        // server's data may come before the opener's ACK).
        me.maxend = if seg.flags & TCP_ACK != 0 && peer.known {
            end.wrapping_add(peer.maxwin)
        } else {
            end
        };
        me.maxwin = 0;
        me.known = true;
    } else if !me.known {
        me.next = end;
        me.maxend = end;
        me.known = true;
    }
    // Windows in SYN segments are never scaled (RFC 7323 2.2).
    let win = if syn {
        seg.win as u32
    } else {
        (seg.win as u32) << (me.scale & 15)
    };
    if win > me.maxwin {
        me.maxwin = win;
    }
    if me.maxwin == 0 {
        me.maxwin = 1;
    }
    me.next = seq_max(me.next, end);
    me.maxend = seq_max(me.maxend, end);
    if seg.flags & TCP_ACK != 0 {
        if from_local && !peer.known {
            peer.next = seg.ack;
            peer.maxend = seg.ack;
            peer.known = true;
        }
        if from_local {
            // The host acknowledges only what it received.
            peer.next = seq_max(peer.next, seg.ack);
        }
        if peer.known {
            // A zero window still lets the peer probe one byte.
            let reach = seg.ack.wrapping_add(win).wrapping_add((win == 0) as u32);
            peer.maxend = seq_max(peer.maxend, reach);
        }
    }
    set_side(e, from_local, &me);
    set_side(e, !from_local, &peer);
}

/// Prepares an entry picked up from a segment the host sent on a connection the table did not
/// know (before [`tcp_learn`] reads the segment): the handshake was not seen, so each side's
/// window scale is assumed to be the largest, except that a SYN-ACK without the option shows
/// that neither side scales. The remote side is then learned from the host's acknowledgment.
#[inline(always)]
pub fn pickup(e: &mut CtEntry, seg: &TcpSeg) {
    e.local_scale = MAX_WSCALE;
    e.remote_scale = MAX_WSCALE;
    if seg.flags & TCP_SYN != 0 && seg.wscale != NO_WSCALE {
        // The host answers with the option only when the remote's SYN had it.
        e.flags |= FLAG_REMOTE_WSCALE;
    }
    if seg.flags & TCP_FIN != 0 {
        e.flags |= FLAG_FIN_LOCAL;
    }
}

/// Starts a flow over as the handshake of the remote's reusing SYN ([`CtEntry::reuse_seq`])
/// and the host's SYN-ACK `synack`, which answers it ([`outcome::RESTART`]).
#[inline(always)]
pub fn restart(e: &mut CtEntry, synack: &TcpSeg) {
    let syn = TcpSeg {
        flags: TCP_SYN,
        seq: e.reuse_seq,
        ack: 0,
        win: e.reuse_win,
        wscale: e.reuse_wscale,
        payload: 0,
    };
    e.flags = 0;
    e.remote_next = 0;
    e.local_next = 0;
    e.remote_maxend = 0;
    e.local_maxend = 0;
    e.remote_maxwin = 0;
    e.local_maxwin = 0;
    e.remote_scale = 0;
    e.local_scale = 0;
    e.state = state::SYN_SENT;
    tcp_learn(e, false, &syn);
    e.state = state::SYN_RECV;
    tcp_learn(e, true, synack);
}

/// What a RST may do to its flow.
pub mod rst {
    /// Acceptable: the connection is over.
    pub const CLOSE: u8 = 0;
    /// In the window but not exact: pass it to the host (which answers with a challenge ACK,
    /// RFC 5961 3.2), keep the state.
    pub const IN_WINDOW: u8 = 1;
    /// Not from the peer: drop.
    pub const OUTSIDE: u8 = 2;
}

/// Classifies a RST that passed [`in_window`]. The host's own RSTs always close; a RST
/// answering the host's SYN must acknowledge it (RFC 9293 3.10.7.3); otherwise only a RST at
/// exactly the next expected sequence number ends the flow (RFC 5961 3.2).
#[inline(always)]
pub fn rst_class(e: &CtEntry, from_local: bool, seg: &TcpSeg) -> u8 {
    if from_local {
        return rst::CLOSE;
    }
    if e.state == state::SYN_SENT && e.origin == ORIGIN_LOCAL {
        return if acks_host(e, seg) {
            rst::CLOSE
        } else {
            rst::OUTSIDE
        };
    }
    if e.flags & FLAG_REMOTE_SEQ == 0 || seg.seq == e.remote_next {
        rst::CLOSE
    } else {
        rst::IN_WINDOW
    }
}

/// The segment acknowledges everything the host sent (for a handshake: the host's SYN or
/// SYN-ACK), which a sender that never received the host's packets cannot know.
#[inline(always)]
fn acks_host(e: &CtEntry, seg: &TcpSeg) -> bool {
    seg.flags & TCP_ACK != 0 && (e.flags & FLAG_LOCAL_SEQ == 0 || seg.ack == e.local_next)
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

/// The TCP transition for a segment of a tracked flow. `from_local`: the host sent it (the
/// host's segments are never dropped, only followed). A segment from the remote side must
/// pass [`in_window`] first, except a SYN, which carries a new initial sequence number.
#[inline(always)]
pub fn tcp_step(e: &CtEntry, from_local: bool, seg: &TcpSeg) -> TcpStep {
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
    let fail = |outcome: u8| TcpStep {
        state: s,
        flags,
        outcome,
    };
    let ev = event(seg.flags);
    if ev == EV_BAD {
        return fail(outcome::INVALID);
    }
    if !from_local && ev != EV_SYN && !in_window(e, seg) {
        return fail(outcome::WINDOW);
    }
    // What proves a two-way exchange: the host's own segment (it answers only what it
    // received), or an acknowledgment of exactly what the host sent.
    let proven = from_local || acks_host(e, seg);
    // SYNs and SYN-ACKs on a flow past its handshake.
    let live_syn = || match ev {
        // The host opening the tuple again: its old connection is gone.
        EV_SYN if from_opener && from_local => fail(outcome::NEW),
        // The remote opener reusing the tuple while the old connection's RST is still on its
        // way (a RST and the next SYN sent from different CPUs can swap places), or after the
        // tracker missed the old connection's end: passed without touching the state, as
        // nf_conntrack ignores it, and remembered. The host's stack answers it: a challenge
        // ACK if its socket is still there (a spoofed SYN cannot end a live connection), or a
        // SYN-ACK acknowledging it, which starts the flow over.
        EV_SYN if from_opener => pass(s, flags | FLAG_REUSE),
        EV_SYNACK
            if from_local
                && !from_opener
                && flags & FLAG_REUSE != 0
                && seg.ack == e.reuse_seq.wrapping_add(1) =>
        {
            TcpStep {
                state: state::SYN_RECV,
                flags: 0,
                outcome: outcome::RESTART,
            }
        }
        // The opener's final ACK was lost and the SYN-ACK is retransmitted.
        EV_SYNACK if !from_opener => pass(s, flags),
        _ => fail(outcome::INVALID),
    };
    match ev {
        EV_RST => match rst_class(e, from_local, seg) {
            // A handshake ended by a RST leaves nothing behind.
            rst::CLOSE if s == state::SYN_SENT || s == state::SYN_RECV => fail(outcome::FORGET),
            rst::CLOSE => pass(state::CLOSE, flags),
            rst::IN_WINDOW => pass(s, flags),
            _ => fail(outcome::INVALID),
        },
        _ => match s {
            state::SYN_SENT => match ev {
                // A retransmitted SYN, or a simultaneous open (rare; left to the endpoints).
                EV_SYN => pass(s, flags),
                EV_SYNACK if !from_opener && proven => pass(state::SYN_RECV, flags),
                _ => fail(outcome::INVALID),
            },
            state::SYN_RECV => match ev {
                EV_SYN if from_opener => pass(s, flags),
                EV_SYNACK if !from_opener => pass(s, flags),
                EV_ACK if from_opener && proven => pass(state::ESTABLISHED, flags),
                EV_FIN if from_opener && proven => pass(state::FIN_WAIT, flags | mine),
                // In the window but proving nothing: passed, the state stays.
                EV_ACK | EV_FIN => pass(s, flags),
                _ => fail(outcome::INVALID),
            },
            state::ESTABLISHED => match ev {
                EV_ACK => pass(s, flags),
                EV_FIN => pass(state::FIN_WAIT, flags | mine),
                _ => live_syn(),
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
                    _ => live_syn(),
                }
            }
            state::LAST_ACK => match ev {
                EV_ACK => pass(state::TIME_WAIT, flags),
                EV_FIN => pass(s, flags),
                _ => live_syn(),
            },
            state::TIME_WAIT | state::CLOSE => match ev {
                EV_SYN => fail(outcome::NEW),
                EV_ACK | EV_FIN => pass(s, flags),
                // The answer to a reusing SYN that overtook the old connection's RST.
                _ => live_syn(),
            },
            _ => fail(outcome::INVALID),
        },
    }
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
    assert!(core::mem::size_of::<CtEntry>() == 120);
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

/// What a TCP segment the host sends on a tuple the tables do not know starts, as (state,
/// origin, rule word): the host's own SYN opens a flow; its SYN-ACK answers a remote opener the
/// tables missed; a FIN or any other segment continues a connection the host already had (both
/// picked up). `None` for a RST (the host answering something unknown, a closed port):
/// nothing to track. The egress program and the oracle both decide with this.
#[inline(always)]
pub fn local_tcp_pickup(tcp_flags: u8) -> Option<(u8, u8, u32)> {
    let syn_ack = TCP_SYN | TCP_ACK;
    if is_initial_syn(tcp_flags) {
        Some((state::SYN_SENT, ORIGIN_LOCAL, RULE_LOCAL))
    } else if tcp_flags & TCP_RST != 0 {
        None
    } else if tcp_flags & syn_ack == syn_ack {
        Some((state::SYN_RECV, ORIGIN_REMOTE, RULE_PICKUP))
    } else if tcp_flags & TCP_FIN != 0 {
        Some((state::FIN_WAIT, ORIGIN_LOCAL, RULE_PICKUP))
    } else {
        Some((state::ESTABLISHED, ORIGIN_LOCAL, RULE_PICKUP))
    }
}

/// The state machine's step for a packet of a tracked flow of either kind: [`tcp_step`] for
/// TCP, [`udp_step`] (always [`outcome::PASS`]) for UDP and ICMP echo. Nothing is changed: the
/// caller sets the entry's state and flags from the step when it passes, then calls [`learn`].
#[inline(always)]
pub fn step(e: &CtEntry, tcp: bool, from_local: bool, seg: &TcpSeg) -> TcpStep {
    if tcp {
        tcp_step(e, from_local, seg)
    } else {
        TcpStep {
            state: udp_step(e, from_local),
            flags: e.flags,
            outcome: outcome::PASS,
        }
    }
}

/// What a packet that passed ([`step`] said [`outcome::PASS`] or [`outcome::RESTART`], and the
/// entry has the step's state and flags) teaches the entry: for TCP the windows
/// ([`tcp_learn`]), or the flow started over ([`restart`]). The kernel and the oracle both
/// follow `step`, state and flags, `learn`, so they cannot disagree on the order of these
/// updates; what they do in between (expiry, statistics) and after (moving the flow between
/// tables) is theirs.
#[inline(always)]
pub fn learn(e: &mut CtEntry, outcome: u8, tcp: bool, from_local: bool, seg: &TcpSeg) {
    if outcome == outcome::RESTART {
        restart(e, seg);
    } else if tcp {
        tcp_learn(e, from_local, seg);
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), explicit padding (sizes asserted above), every bit pattern valid.
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::CtConfig {}
    unsafe impl aya::Pod for super::ConnOwner {}
}
