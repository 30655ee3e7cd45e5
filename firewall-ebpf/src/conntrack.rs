//! The connection table, as the datapath uses it.
//!
//! Three tables hold flows, keyed from the host's point of view:
//! - `CT_EST`, a plain hash, holds confirmed flows: TCP past a handshake whose packets prove
//!   a two-way exchange (see [`ct::state::confirmed`]), UDP the host opened and the remote
//!   answered. A blind sender cannot create one, and it never evicts.
//! - `CT_NEW`, an LRU hash, holds what remote hosts opened and is not confirmed (handshakes,
//!   UDP). Anyone can create entries here by sending SYNs or datagrams to an allowed port, so
//!   it is the table that churns under a flood.
//! - `CT_LOCAL`, an LRU hash, holds what the host opened and is not confirmed (SYN_SENT, DNS
//!   queries, echo requests). Only the host's own packets create entries here, so a remote
//!   flood cannot evict them.
//!
//! When `CT_EST` is full, a flow that should move there stays in the LRU table of its origin
//! (counted): a host-opened or picked-up flow in `CT_LOCAL`, a remote-opened one in `CT_NEW`.
//!
//! All three are pinned by name and shared by every generation of the programs, so reloads and
//! daemon restarts keep the connections. Entries expire by time (`expires_ns`); the datapath
//! ignores expired entries and the daemon deletes them.
//!
//! A new entry records its owner ([`ConnOwner`]): for a flow the host opens, what the outbound
//! hooks recorded for the sending socket (`SOCK_OWNER`, by socket cookie); for a flow a remote
//! host opens, the owner of the listening socket (`LISTENERS`). Both lookups happen only when
//! an entry is created, never for packets of known flows.

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use firewall_common::{
    Counter, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_PARAMETER_PROBLEM,
    ICMP_TIME_EXCEEDED, ICMPV6_DEST_UNREACH, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST,
    ICMPV6_PARAMETER_PROBLEM, ICMPV6_TIME_EXCEEDED,
    ct::{
        self, ConnOwner, CtConfig, CtEntry, CtKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP, ORIGIN_LOCAL, ORIGIN_REMOTE, TcpSeg, outcome, state,
    },
};

use crate::{
    addr::{Addr, AddrWords},
    counters::count,
    listeners, owners,
    parse::Packet,
};

#[map]
static CT_EST: HashMap<CtKey, CtEntry> = HashMap::pinned(1, 0);
#[map]
static CT_NEW: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(1, 0);
#[map]
static CT_LOCAL: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(1, 0);
#[map]
static CT_CONFIG: Array<CtConfig> = Array::with_max_entries(1, 0);

/// Per-CPU room for the key and entry being built: the XDP program's stack (512 bytes) is
/// already used by parsing and replies.
#[repr(C)]
pub struct Scratch {
    key: CtKey,
    entry: CtEntry,
}

#[map]
static CT_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    crate::scratch::this_cpus(&CT_SCRATCH)
}

/// What the table says about an inbound packet.
pub enum Inbound {
    /// A packet of a tracked flow: pass without the rules.
    Tracked,
    /// An ICMP error about a tracked flow: pass.
    Related,
    /// A packet of a tracked flow that its state does not allow: drop.
    Invalid,
    /// A flow the rules in force deny (`fwctl reload --recheck`): apply this verdict word.
    Denied(u32),
    /// TCP, not a SYN, no flow: judged by `[conntrack] invalid`.
    NoConnection,
    /// Not tracked: judge by the rules (and [`admit`] if they allow).
    Unknown,
}

impl Inbound {
    /// For trace messages (`diagnostics`): `firewall_common::diagnostics::ct_answer`.
    #[inline(always)]
    pub fn code(&self) -> u32 {
        use firewall_common::diagnostics::ct_answer;
        match self {
            Inbound::Tracked => ct_answer::TRACKED,
            Inbound::Related => ct_answer::RELATED,
            Inbound::Invalid => ct_answer::INVALID,
            Inbound::Denied(_) => ct_answer::DENIED,
            Inbound::NoConnection => ct_answer::NO_CONNECTION,
            Inbound::Unknown => ct_answer::UNKNOWN,
        }
    }
}

/// The settings of the rule set in force; `None` until the daemon has written them
/// (generation ids start at 1), in which case nothing is tracked.
#[inline(always)]
pub fn config() -> Option<&'static CtConfig> {
    CT_CONFIG.get(0).filter(|c| c.generation != 0)
}

#[inline(always)]
fn proto_number(pkt: &Packet) -> u8 {
    match pkt.proto {
        firewall_common::PROTO_TCP => IPPROTO_TCP,
        firewall_common::PROTO_UDP => IPPROTO_UDP,
        _ => match pkt.remote {
            Addr::V4(_) => IPPROTO_ICMP,
            Addr::V6(_) => IPPROTO_ICMPV6,
        },
    }
}

/// The key of `pkt`'s flow; `from_local` when the host sent it (egress), which swaps the
/// parser's source/destination naming.
#[inline(always)]
fn key_of(pkt: &Packet, from_local: bool, key: &mut CtKey) {
    let (local, remote, local_port, remote_port) = if from_local {
        (&pkt.remote, &pkt.local, pkt.remote_port, pkt.local_port)
    } else {
        (&pkt.local, &pkt.remote, pkt.local_port, pkt.remote_port)
    };
    let (local_port, remote_port) = if pkt.proto == firewall_common::PROTO_ICMP {
        (pkt.icmp_id, 0)
    } else {
        (local_port, remote_port)
    };
    local.write_mapped(&mut key.local);
    remote.write_mapped(&mut key.remote);
    write_tail(
        key,
        local_port,
        remote_port,
        proto_number(pkt),
        remote.family(),
    );
}

/// Ports, protocol, family and padding of a key in one 64-bit store.
#[inline(always)]
fn write_tail(key: &mut CtKey, local_port: u16, remote_port: u16, proto: u8, family: u8) {
    let v = u64::from(local_port)
        | u64::from(remote_port) << 16
        | u64::from(proto) << 32
        | u64::from(family) << 40;
    // SAFETY: bytes 32..40 of an 8-aligned CtKey: local_port, remote_port, proto, family,
    // padding, in that order (little-endian target).
    unsafe { (&mut key.local_port as *mut u16 as *mut u64).write(v) };
}

/// Which table an entry is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    Est,
    New,
    Local,
}

/// The unconfirmed table of a flow opened by `origin`.
#[inline(always)]
fn pending_table(origin: u8) -> Table {
    if origin == ORIGIN_LOCAL {
        Table::Local
    } else {
        Table::New
    }
}

#[inline(always)]
fn lru(t: Table) -> &'static LruHashMap<CtKey, CtEntry> {
    if t == Table::Local {
        &CT_LOCAL
    } else {
        &CT_NEW
    }
}

/// Finds the live entry of `key`: confirmed table first.
#[inline(always)]
fn lookup(key: &CtKey, now: u64) -> Option<(*mut CtEntry, Table)> {
    if let Some(found) = lookup_confirmed(key, now) {
        return Some(found);
    }
    for t in [Table::Local, Table::New] {
        if let Some(e) = lru(t).get_ptr_mut(key)
            // SAFETY: a map value pointer, valid for this program run.
            && unsafe { (*e).expires_ns } > now
        {
            return Some((e, t));
        }
    }
    None
}

#[inline(always)]
fn lookup_confirmed(key: &CtKey, now: u64) -> Option<(*mut CtEntry, Table)> {
    if let Some(e) = CT_EST.get_ptr_mut(key)
        // SAFETY: a map value pointer, valid for this program run.
        && unsafe { (*e).expires_ns } > now
    {
        return Some((e, Table::Est));
    }
    None
}

#[inline(always)]
fn timeout(cfg: &CtConfig, s: u8) -> u64 {
    cfg.timeout_ns[s as usize & (state::SLOTS - 1)]
}

/// Moves a newly confirmed flow from its unconfirmed table to the confirmed one. If the
/// confirmed table is full, the flow stays where it is.
#[inline(always)]
fn confirm(key: &CtKey, e: &CtEntry, from: Table) {
    // An expired entry of an earlier flow with this tuple may still be there until the daemon
    // collects it: overwrite it.
    let stored = CT_EST.insert(key, e, BPF_NOEXIST as u64).is_ok()
        || (CT_EST.get_ptr(key).is_some() && CT_EST.insert(key, e, BPF_EXIST as u64).is_ok());
    if stored {
        count(Counter::CtConfirmed);
        if lru(from).remove(key).is_ok() {
            count(Counter::CtNewRemoved);
        }
    } else {
        count(Counter::CtConfirmedFull);
    }
}

/// The tracker's view of a TCP segment.
#[inline(always)]
fn tcp_seg(pkt: &Packet) -> TcpSeg {
    TcpSeg {
        flags: pkt.tcp_flags,
        seq: pkt.tcp_seq,
        ack: pkt.tcp_ack,
        win: pkt.tcp_window,
        wscale: pkt.tcp_wscale,
        payload: pkt.tcp_payload,
    }
}

/// Applies a packet to its flow's entry; returns the tracker's outcome.
#[expect(clippy::too_many_arguments, reason = "inlined")]
#[inline(always)]
fn step(
    key: &CtKey,
    entry: *mut CtEntry,
    table: Table,
    pkt: &Packet,
    from_local: bool,
    bytes: u64,
    now: u64,
    cfg: &CtConfig,
) -> u8 {
    // SAFETY: a map value pointer, valid for this program run; concurrent updates from other
    // CPUs can only make the statistics approximate.
    let e = unsafe { &mut *entry };
    if e.flags & ct::FLAG_DENIED != 0 {
        // Kept as long as the host's end may still send, so the flow is not picked up again.
        if from_local {
            e.expires_ns = now + timeout(cfg, e.state);
        }
        return outcome::DENIED;
    }
    let seg = tcp_seg(pkt);
    let tcp = key.proto == IPPROTO_TCP;
    let s = ct::step(e, tcp, from_local, &seg);
    match s.outcome {
        outcome::PASS | outcome::RESTART => {}
        outcome::WINDOW => {
            count(Counter::CtOutOfWindow);
            return outcome::INVALID;
        }
        out => return out,
    }
    let was_confirmed = state::confirmed(e.state, e.origin);
    e.state = s.state;
    e.flags = s.flags;
    e.expires_ns = now + timeout(cfg, s.state);
    if from_local {
        e.packets_out += 1;
        e.bytes_out += bytes;
    } else {
        e.packets_in += 1;
        e.bytes_in += bytes;
    }
    // A restart happens in place, in whichever table the flow is: the entry of a connection
    // that reached the confirmed table carries the next one on its tuple.
    ct::learn(e, s.outcome, tcp, from_local, &seg);
    if table != Table::Est && !was_confirmed && state::confirmed(s.state, e.origin) {
        confirm(key, e, table);
    }
    outcome::PASS
}

/// Forgets a flow: its tuple is reused by a new connection, or its handshake was reset.
#[inline(always)]
fn forget(key: &CtKey, table: Table) {
    if table == Table::Est {
        let _ = CT_EST.remove(key);
    } else if lru(table).remove(key).is_ok() {
        count(Counter::CtNewRemoved);
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "inlined; fills a map value in place"
)]
#[inline(always)]
fn new_entry(
    e: &mut CtEntry,
    cfg: &CtConfig,
    now: u64,
    st: u8,
    origin: u8,
    rule: u32,
    from_local: bool,
    bytes: u64,
) {
    e.created_ns = now;
    e.expires_ns = now + timeout(cfg, st);
    e.packets_in = (!from_local) as u64;
    e.packets_out = from_local as u64;
    e.bytes_in = if from_local { 0 } else { bytes };
    e.bytes_out = if from_local { bytes } else { 0 };
    e.rule = rule;
    e.generation = cfg.generation;
    e.remote_next = 0;
    e.local_next = 0;
    e.remote_maxend = 0;
    e.local_maxend = 0;
    e.remote_maxwin = 0;
    e.local_maxwin = 0;
    e.state = st;
    e.origin = origin;
    e.flags = 0;
    e.reuse_seq = 0;
    e.reuse_win = 0;
    e.remote_scale = 0;
    e.local_scale = 0;
    e.reuse_wscale = 0;
    e._pad = [0; 4];
    e.owner = ConnOwner::default();
}

/// Stores a new flow: in the confirmed table if its state is confirmed and there is room,
/// else in the LRU table of its origin. Only a new key counts as inserted (an expired entry
/// with the same tuple is overwritten), so the daemon can derive the LRU tables' evictions
/// from the counters.
#[inline(always)]
fn insert(key: &CtKey, e: &CtEntry) {
    if state::confirmed(e.state, e.origin) {
        if CT_EST.insert(key, e, BPF_NOEXIST as u64).is_ok()
            || (CT_EST.get_ptr(key).is_some() && CT_EST.insert(key, e, BPF_EXIST as u64).is_ok())
        {
            return;
        }
        count(Counter::CtConfirmedFull);
    }
    let table = lru(pending_table(e.origin));
    if table.insert(key, e, BPF_NOEXIST as u64).is_ok() {
        count(Counter::CtNewInserted);
    } else if table.insert(key, e, BPF_EXIST as u64).is_err() {
        count(Counter::CtInsertFailed);
    }
}

/// Inbound (XDP): is this packet part of a tracked flow?
#[inline(always)]
pub fn inbound(ctx: &aya_ebpf::programs::XdpContext, pkt: &Packet, now: u64) -> Inbound {
    let (Some(cfg), Some(sc)) = (config(), scratch()) else {
        return Inbound::Unknown;
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let key = &mut sc.key;
    match pkt.proto {
        firewall_common::PROTO_TCP | firewall_common::PROTO_UDP => {
            key_of(pkt, false, key);
            let no_syn =
                pkt.proto == firewall_common::PROTO_TCP && !ct::is_initial_syn(pkt.tcp_flags);
            let mut found = lookup(key, now);
            if found.is_none() && no_syn {
                // [`confirm`] on another CPU may have moved the flow from the unconfirmed
                // table to the confirmed one between the two lookups (an ACK and a RST of
                // one connection, processed at once): look again before calling it invalid.
                // Only packets about to be dropped pay for it.
                found = lookup_confirmed(key, now);
            }
            if let Some((e, table)) = found {
                match step(key, e, table, pkt, false, bytes, now, cfg) {
                    outcome::PASS => return Inbound::Tracked,
                    outcome::INVALID => return Inbound::Invalid,
                    // SAFETY: a map value pointer, valid for this program run.
                    outcome::DENIED => return Inbound::Denied(unsafe { (*e).rule }),
                    outcome::FORGET => {
                        forget(key, table);
                        count(Counter::CtHandshakeReset);
                        return Inbound::Tracked;
                    }
                    _ => forget(key, table),
                }
            }
            if no_syn {
                Inbound::NoConnection
            } else {
                Inbound::Unknown
            }
        }
        firewall_common::PROTO_ICMP => {
            let is_v6 = matches!(pkt.remote, Addr::V6(_));
            let t = pkt.icmp_type;
            let echo_reply = if is_v6 {
                t == ICMPV6_ECHO_REPLY
            } else {
                t == ICMP_ECHO_REPLY
            };
            if echo_reply {
                key_of(pkt, false, key);
                if let Some((e, _)) = lookup(key, now) {
                    // SAFETY: a map value pointer, valid for this program run.
                    let e = unsafe { &mut *e };
                    e.packets_in += 1;
                    e.bytes_in += bytes;
                    return Inbound::Tracked;
                }
                return Inbound::Unknown;
            }
            let error = if is_v6 {
                matches!(
                    t,
                    ICMPV6_DEST_UNREACH | ICMPV6_TIME_EXCEEDED | ICMPV6_PARAMETER_PROBLEM
                )
            } else {
                matches!(
                    t,
                    ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
                )
            };
            if error && related(ctx, pkt, now, key) {
                return Inbound::Related;
            }
            Inbound::Unknown
        }
        _ => Inbound::Unknown,
    }
}

/// Records an inbound flow a rule (or the default) allowed: TCP SYNs and UDP.
#[inline(always)]
pub fn admit(ctx: &aya_ebpf::programs::XdpContext, pkt: &Packet, word: u32, now: u64) {
    let (Some(cfg), Some(sc)) = (config(), scratch()) else {
        return;
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let st = match pkt.proto {
        firewall_common::PROTO_TCP if ct::is_initial_syn(pkt.tcp_flags) => state::SYN_SENT,
        firewall_common::PROTO_UDP => state::UDP_UNREPLIED,
        _ => return,
    };
    key_of(pkt, false, &mut sc.key);
    let e = &mut sc.entry;
    new_entry(e, cfg, now, st, ORIGIN_REMOTE, word, false, bytes);
    if st == state::SYN_SENT {
        ct::tcp_learn(e, false, &tcp_seg(pkt));
    }
    if owners::RECORD_OWNER.load() != 0
        && let Some(l) = listeners::listener(AddrWords::of(&pkt.local), pkt.proto, pkt.local_port)
    {
        e.owner.exe = l.owner.exe;
        e.owner.uid = l.owner.uid;
    }
    insert(&sc.key, &sc.entry);
}

/// Egress (TC): records the flows the host opens and follows the state of all tracked flows.
/// Never drops.
#[inline(always)]
pub fn outbound(ctx: &TcContext, pkt: &Packet, bytes: u64, now: u64) {
    let (Some(cfg), Some(sc)) = (config(), scratch()) else {
        return;
    };
    key_of(pkt, true, &mut sc.key);
    let key = &sc.key;
    let e = &mut sc.entry;
    match pkt.proto {
        firewall_common::PROTO_TCP => {
            if let Some((found, table)) = lookup(key, now) {
                match step(key, found, table, pkt, true, bytes, now, cfg) {
                    outcome::NEW => forget(key, table),
                    outcome::FORGET => {
                        forget(key, table);
                        count(Counter::CtHandshakeReset);
                        return;
                    }
                    _ => return,
                }
            }
            // A RST of the host about something unknown (a closed port): nothing to track.
            let Some((st, origin, rule)) = ct::local_tcp_pickup(pkt.tcp_flags) else {
                return;
            };
            new_entry(e, cfg, now, st, origin, rule, true, bytes);
            owners::sender(ctx, e);
            if st != state::SYN_SENT {
                ct::pickup(e, &tcp_seg(pkt));
                count(Counter::CtPickedUp);
            }
            ct::tcp_learn(e, true, &tcp_seg(pkt));
            insert(key, e);
        }
        firewall_common::PROTO_UDP => {
            if let Some((found, table)) = lookup(key, now) {
                step(key, found, table, pkt, true, bytes, now, cfg);
                return;
            }
            new_entry(
                e,
                cfg,
                now,
                state::UDP_UNREPLIED,
                ORIGIN_LOCAL,
                ct::RULE_LOCAL,
                true,
                bytes,
            );
            owners::sender(ctx, e);
            insert(key, e);
        }
        firewall_common::PROTO_ICMP => {
            let echo_request = match pkt.remote {
                Addr::V4(_) => pkt.icmp_type == ICMP_ECHO_REQUEST,
                Addr::V6(_) => pkt.icmp_type == ICMPV6_ECHO_REQUEST,
            };
            if !echo_request {
                return;
            }
            if let Some((found, _)) = lookup(key, now) {
                // SAFETY: a map value pointer, valid for this program run.
                let found = unsafe { &mut *found };
                found.expires_ns = now + timeout(cfg, state::ICMP_ECHO);
                found.packets_out += 1;
                found.bytes_out += bytes;
                return;
            }
            new_entry(
                e,
                cfg,
                now,
                state::ICMP_ECHO,
                ORIGIN_LOCAL,
                ct::RULE_LOCAL,
                true,
                bytes,
            );
            insert(key, e);
        }
        _ => {}
    }
}

/// An ICMP/ICMPv6 error quotes the header of a packet the host sent: look that packet's flow
/// up. Only the fixed IPv6 header is followed in the quote (no extension headers).
#[inline(always)]
fn related(ctx: &aya_ebpf::programs::XdpContext, pkt: &Packet, now: u64, key: &mut CtKey) -> bool {
    use crate::parse::ptr_at;
    let inner = pkt.l4_off + 8;
    let (proto, l4) = match pkt.remote {
        Addr::V4(_) => {
            let Some(h) = ptr_at::<[u8; 20], _>(ctx, inner) else {
                return false;
            };
            // SAFETY: bounds checked by ptr_at.
            let h = unsafe { &*h };
            if h[0] >> 4 != 4 {
                return false;
            }
            let ihl = ((h[0] & 0x0f) as usize) * 4;
            if ihl < 20 {
                return false;
            }
            Addr::V4([h[12], h[13], h[14], h[15]]).write_mapped(&mut key.local);
            Addr::V4([h[16], h[17], h[18], h[19]]).write_mapped(&mut key.remote);
            (h[9], inner + ihl)
        }
        Addr::V6(_) => {
            let Some(h) = ptr_at::<[u8; 40], _>(ctx, inner) else {
                return false;
            };
            // SAFETY: bounds checked by ptr_at.
            let h = unsafe { &*h };
            key.local.copy_from_slice(&h[8..24]);
            key.remote.copy_from_slice(&h[24..40]);
            (h[6], inner + 40)
        }
    };
    let Some(t) = ptr_at::<[u8; 8], _>(ctx, l4) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    let t = unsafe { &*t };
    let (local_port, remote_port) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (
            u16::from_be_bytes([t[0], t[1]]),
            u16::from_be_bytes([t[2], t[3]]),
        ),
        IPPROTO_ICMP if t[0] == ICMP_ECHO_REQUEST => (u16::from_be_bytes([t[4], t[5]]), 0),
        IPPROTO_ICMPV6 if t[0] == ICMPV6_ECHO_REQUEST => (u16::from_be_bytes([t[4], t[5]]), 0),
        _ => return false,
    };
    write_tail(key, local_port, remote_port, proto, pkt.remote.family());
    lookup(key, now).is_some()
}
