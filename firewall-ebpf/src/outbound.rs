//! Outbound: the cgroup socket hooks that judge the host's own connections.
//!
//! `cgroup/connect4` and `cgroup/connect6` run when a TCP socket connects or a UDP socket is
//! connected; `cgroup/sendmsg4` and `cgroup/sendmsg6` when a UDP datagram is sent with an
//! address (sendto/sendmsg on an unconnected socket). Each builds what the classifier needs
//! from the socket address (the destination as the remote address, the destination port as the
//! port, TCP or UDP from the socket's protocol) and calls the same [`classify_parts`] as the
//! XDP program: the daemon loads a separate copy of this object for outbound, whose rule maps
//! and `PROTO_VERDICTS` hold the outbound rules and whose `DEFAULT_OUTBOUND` is
//! `[defaults] outbound`. So the cost of a call does not grow with the number of rules.
//!
//! Every judged call may be logged (`decision_log.rs`), with the caller's pid, uid, cgroup and
//! executable: before the verdict is carried out, so a refused call is logged too.
//!
//! - `allow`: return 1, the call proceeds.
//! - `reject`: return 0, the call fails at once with EPERM.
//! - `stealth`: return 1, and record (socket cookie, destination) in `OUT_STEALTH`;
//!   the TC egress program drops that socket's packets to that destination ([`held`]), so the
//!   application waits and times out as behind a black hole. A call that cannot be recorded
//!   is refused instead.
//!
//! `OUT_STEALTH` key layout (`OutStealthKey`, 32 bytes): the socket's cookie, the destination
//! address (IPv4 as `::ffff:a.b.c.d`, as the packets leave), the destination port (host
//! order) and the IP protocol number; the value is the verdict word. The destination is part
//! of the key because one unconnected UDP socket may send to several. `OUT_HELD` lists the
//! held sockets, so that the sock_release hook ([`forget_held`]) forgets their holds. Both
//! are plain hashes, pinned by name and shared by both copies and every generation: an LRU
//! would let any local process push a hold out (`firewall-common/src/outbound.rs`). A held
//! socket's owner is in `SOCK_OWNER`, an LRU: when it is gone the daemon keeps the socket held
//! where the rules ask who it is.
//!
//! An allowed call also records who made it (`SOCK_OWNER`, by socket cookie: executable, uid,
//! pid, see `owners.rs`), and the egress program copies that into the connection the socket's
//! first packet creates, so `fwctl conns` can say which program owns each connection. The
//! executable walk is the same as for `program` rules, and made once per call at most.
//!
//! Destinations on loopback (127.0.0.0/8, ::1, IPv4-mapped 127.0.0.0/8, and the unspecified
//! addresses, which Linux connects over loopback) are always allowed: local services talk over
//! loopback, and the inbound side does not filter `lo` either. Sockets that are neither TCP
//! nor UDP (ICMP ping sockets, SCTP, UDP-Lite) are allowed without being judged.

use aya_ebpf::{
    EbpfContext as _,
    cty::c_void,
    helpers::{bpf_get_socket_cookie, generated::bpf_for_each_map_elem},
    macros::map,
    maps::{Array, HashMap},
    programs::{SockAddrContext, TcContext},
};
use firewall_common::{
    ACTION_ALLOW, ACTION_REJECT, AF_INET, AF_INET6, Counter, HELD_SOCKETS, IPPROTO_TCP,
    IPPROTO_UDP, NO_MATCH, OUT_STEALTH_ENTRIES, OutStealthKey, PROTO_TCP, PROTO_UDP, WHY_DEFAULT,
    WHY_RULE, identity::ExeId, verdict_action,
};

use crate::{
    addr::{Addr, AddrWords},
    classifier::{DEFAULT_OUTBOUND, classify_parts, count_rule_hit, min},
    clock,
    counters::count,
    decision_log, dns,
    owners::{record_owner, remember_owner},
    parse::Packet,
    selector,
};

/// Non-zero while sockets may be held: the egress program (loaded in the inbound copy) only
/// then looks packets up in `OUT_STEALTH`. The daemon's, not a generation's: it is on before
/// hooks that can say `stealth` run and stays on while anything is held, whatever the rules
/// of the egress program in force say.
#[map]
static OUT_HOLDING: Array<u32> = Array::pinned(1, 0);
/// Sockets held by `stealth`: written by the hooks, read by the egress program. Pinned, so both
/// copies of the program and every generation share it.
#[map]
static OUT_STEALTH: HashMap<OutStealthKey, u32> = HashMap::pinned(OUT_STEALTH_ENTRIES, 0);
/// The sockets `OUT_STEALTH` holds (value 1), for the sock_release hook. Allocated as sockets
/// are held: few are.
#[map]
static OUT_HELD: HashMap<u64, u32> =
    HashMap::pinned(HELD_SOCKETS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// `bpf_sock_addr.protocol` of the sockets judged.
const TCP: u32 = IPPROTO_TCP as u32;
const UDP: u32 = IPPROTO_UDP as u32;

/// Return values of a cgroup sock_addr program.
const PROCEED: i32 = 1;
const REFUSE: i32 = 0;

/// The destination of the call, as the packets will carry it: an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d` given to an IPv6 socket) is IPv4.
#[inline(always)]
fn destination<const FAMILY: u32>(ctx: &SockAddrContext) -> Option<Addr> {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the context the kernel passed; these are plain 4-byte reads of fields
    // the verifier allows this program type to read.
    unsafe {
        match FAMILY {
            AF_INET => {
                let a = core::ptr::read_volatile(&(*sa).user_ip4);
                Some(Addr::V4(a.to_le_bytes()))
            }
            AF_INET6 => {
                let w0 = core::ptr::read_volatile(&(*sa).user_ip6[0]);
                let w1 = core::ptr::read_volatile(&(*sa).user_ip6[1]);
                let w2 = core::ptr::read_volatile(&(*sa).user_ip6[2]);
                let w3 = core::ptr::read_volatile(&(*sa).user_ip6[3]);
                // Words hold the address in network byte order: bytes 10-11 are 0xffff for a
                // mapped address.
                if w0 == 0 && w1 == 0 && w2 == 0xffff_0000 {
                    return Some(Addr::V4(w3.to_le_bytes()));
                }
                let mut a = [0u8; 16];
                a[0..4].copy_from_slice(&w0.to_le_bytes());
                a[4..8].copy_from_slice(&w1.to_le_bytes());
                a[8..12].copy_from_slice(&w2.to_le_bytes());
                a[12..16].copy_from_slice(&w3.to_le_bytes());
                Some(Addr::V6(a))
            }
            _ => None,
        }
    }
}

/// Destinations Linux reaches over loopback: 127.0.0.0/8, ::1, and the unspecified addresses
/// (connecting to 0.0.0.0 or :: connects to the host itself).
#[inline(always)]
fn on_loopback(a: &Addr) -> bool {
    match a {
        Addr::V4(a) => a[0] == 127 || u32::from_ne_bytes(*a) == 0,
        Addr::V6(a) => {
            let hi = u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
            let lo = u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
            hi == 0 && (lo == 0 || lo == 1u64 << 56)
        }
    }
}

/// Judges a connect() (`CONNECT`) or sendmsg() of a socket of `FAMILY`: the cgroup hook's
/// return value.
#[inline(always)]
pub(crate) fn judge<const FAMILY: u32, const CONNECT: bool>(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as in `destination`.
    let (protocol, port) = unsafe {
        (
            core::ptr::read_volatile(&(*sa).protocol),
            core::ptr::read_volatile(&(*sa).user_port),
        )
    };
    let (proto, proto_number) = match protocol {
        TCP => (PROTO_TCP, IPPROTO_TCP),
        UDP => (PROTO_UDP, IPPROTO_UDP),
        _ => {
            count(Counter::OutNotJudged);
            return PROCEED;
        }
    };
    let Some(remote) = destination::<FAMILY>(ctx) else {
        count(Counter::OutNotJudged);
        return PROCEED;
    };
    if on_loopback(&remote) {
        count(Counter::OutLoopback);
        return PROCEED;
    }
    // The port is stored in network byte order in the low 16 bits.
    let port = u16::from_be(port as u16);
    count(Counter::OutJudged);
    let (by_name, named) = dns::name_verdict(&remote, proto, port, clock::now());
    let mut word = min(classify_parts(&remote, proto, port), by_name);
    let mut exe = ExeId { dev: 0, ino: 0 };
    if selector::active() {
        let owner = selector::current_owner_for_rules();
        exe = owner.exe;
        let Some(by_owner) = selector::classify_caller(&owner, AddrWords::of(&remote), proto, port)
        else {
            count(Counter::OutRejected);
            return REFUSE;
        };
        word = min(word, by_owner);
    }
    let why = if word == NO_MATCH {
        let default = DEFAULT_OUTBOUND.load();
        word = if named {
            default
        } else {
            dns::unnamed_default()
        };
        if word != default {
            count(Counter::OutUnnamedRefused);
        }
        count(Counter::OutDefaultVerdict);
        WHY_DEFAULT
    } else {
        count_rule_hit(word);
        WHY_RULE
    };
    decision_log::outbound(&remote, proto, port, word, why, exe);
    match verdict_action(word) {
        ACTION_ALLOW => {
            count(Counter::OutAllowed);
            record_owner::<CONNECT>(ctx, exe);
            PROCEED
        }
        ACTION_REJECT => {
            count(Counter::OutRejected);
            REFUSE
        }
        _ => {
            let mut key = OutStealthKey {
                // SAFETY: the helper takes this program type's context.
                cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
                remote: [0; 16],
                remote_port: port,
                proto: proto_number,
                _pad: [0; 5],
            };
            remote.write_mapped(&mut key.remote);
            // Listed first, so that its release forgets every hold it gets.
            if OUT_HELD.insert(&key.cookie, &1, 0).is_ok()
                && OUT_STEALTH.insert(&key, &word, 0).is_ok()
            {
                count(Counter::OutStealthed);
                remember_owner::<CONNECT>(ctx, exe);
                PROCEED
            } else {
                // Holding the socket failed: refuse rather than let its packets out.
                count(Counter::OutStealthRecordFailed);
                count(Counter::OutRejected);
                REFUSE
            }
        }
    }
}

/// A socket is released (the sock_release hook): forgets every destination it was held for,
/// if `OUT_HELD` lists it (most released sockets were never held and cost one lookup). The
/// walk is over the whole table (a socket's destinations are not listed apart: listing them
/// in the hooks cost the verifier more than it allows, the judging reaching the `stealth`
/// branch by many paths), which only the release of a held socket pays.
#[inline(always)]
pub(crate) fn forget_held(cookie: u64) {
    // SAFETY: only tested for presence.
    if unsafe { OUT_HELD.get(&cookie) }.is_none() {
        return;
    }
    let mut wanted = cookie;
    // SAFETY: the map is a hash of this object, the callback takes its arguments as the
    // kernel passes them, and `wanted` outlives the walk.
    unsafe {
        bpf_for_each_map_elem(
            core::ptr::addr_of!(OUT_STEALTH).cast_mut().cast(),
            forget_one as *mut c_void,
            core::ptr::addr_of_mut!(wanted).cast(),
            0,
        )
    };
    let _ = OUT_HELD.remove(&cookie);
}

/// One entry of [`forget_held`]'s walk: removed if it is the released socket's.
extern "C" fn forget_one(
    _map: *mut c_void,
    key: *mut c_void,
    _value: *mut c_void,
    cookie: *mut c_void,
) -> i64 {
    // SAFETY: the kernel passes the entry's key and the walk's context (a u64 on the
    // caller's stack).
    unsafe {
        let key = &*(key as *const OutStealthKey);
        if key.cookie == *(cookie as *const u64) {
            // The walk allows deleting the entry it is at.
            let _ = OUT_STEALTH.remove(key);
        }
    }
    0
}

/// Egress: is `pkt` (leaving the host) from a socket held by `stealth`, to the destination
/// that verdict was about? Only looked up while sockets may be held (`OUT_HOLDING`).
#[inline(always)]
pub(crate) fn held(ctx: &TcContext, pkt: &Packet) -> bool {
    if !OUT_HOLDING.get(0).is_some_and(|on| *on != 0) {
        return false;
    }
    let proto = match pkt.proto {
        PROTO_TCP => IPPROTO_TCP,
        PROTO_UDP => IPPROTO_UDP,
        _ => return false,
    };
    // SAFETY: the helper takes an skb context; it returns 0 when the packet has no socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if cookie == 0 {
        return false;
    }
    // On egress the parser's `local` side is the destination.
    let mut key = OutStealthKey {
        cookie,
        remote: [0; 16],
        remote_port: pkt.local_port,
        proto,
        _pad: [0; 5],
    };
    pkt.local.write_mapped(&mut key.remote);
    // SAFETY: the value is only tested for presence.
    unsafe { OUT_STEALTH.get(&key) }.is_some()
}
