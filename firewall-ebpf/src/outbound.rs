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
//! - `allow`: return 1, the call proceeds.
//! - `reject`: return 0, the call fails at once with EPERM.
//! - `stealth`: return 1, and record (socket cookie, destination) in `OUT_STEALTH`; the TC
//!   egress program drops that socket's packets to that destination ([`held`]), so the
//!   application waits and times out as behind a black hole.
//!
//! An allowed call also records who made it (`SOCK_OWNER`, by socket cookie: executable, uid,
//! pid), and the egress program copies that into the connection the socket's first packet
//! creates, so `fwctl conns` can say which program owns each connection. The executable walk
//! is the same as for `program` rules, and made once per call at most.
//!
//! Destinations on loopback (127.0.0.0/8, ::1, IPv4-mapped 127.0.0.0/8, and the unspecified
//! addresses, which Linux connects over loopback) are always allowed: local services talk over
//! loopback, and the inbound side does not filter `lo` either. Sockets that are neither TCP
//! nor UDP (ICMP ping sockets, SCTP, UDP-Lite) are allowed without being judged.

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map},
    maps::LruHashMap,
    programs::{SockAddrContext, TcContext},
};
use firewall_common::{
    ACTION_ALLOW, ACTION_REJECT, Counter, DEFAULT_RULE, NO_MATCH, OUT_STEALTH_ENTRIES,
    OutStealthKey, PROTO_TCP, PROTO_UDP, SOCK_OWNER_ENTRIES, ct::ConnOwner, identity::ExeId,
    verdict, verdict_action,
};

use crate::{
    classify_parts, count, count_rule_hit, identity, min,
    parse::{Addr, Packet},
    scoped,
};

/// `[defaults] outbound`, as a verdict word. Set in the outbound copy of the program.
#[unsafe(no_mangle)]
static DEFAULT_OUTBOUND: Global<u32> = Global::new(verdict(DEFAULT_RULE, ACTION_ALLOW));
/// Non-zero when the outbound rules in force can say `stealth`: the egress program (loaded in
/// the inbound copy) only then looks packets up in `OUT_STEALTH`.
#[unsafe(no_mangle)]
static OUT_CAN_STEALTH: Global<u32> = Global::new(0);
/// `[conntrack] record_owner`: non-zero when connections record their owner.
#[unsafe(no_mangle)]
pub(crate) static RECORD_OWNER: Global<u32> = Global::new(1);

/// Sockets held by `stealth`: written by the hooks, read by the egress program. Pinned, so both
/// copies of the program and every generation share it.
#[map]
static OUT_STEALTH: LruHashMap<OutStealthKey, u32> = LruHashMap::pinned(OUT_STEALTH_ENTRIES, 0);

/// Who connected (or first sent from) each allowed socket, by socket cookie: written by the
/// hooks, copied into new flows by the egress program. Pinned, shared like `OUT_STEALTH`.
#[map]
pub(crate) static SOCK_OWNER: LruHashMap<u64, ConnOwner> =
    LruHashMap::pinned(SOCK_OWNER_ENTRIES, 0);

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

/// Return values of a cgroup sock_addr program.
const PROCEED: i32 = 1;
const REFUSE: i32 = 0;

// The verifier lets the IPv4 hooks read only `user_ip4` and the IPv6 hooks only `user_ip6`:
// each hook reads the address of its own family (an IPv4-mapped destination given to an IPv6
// socket reaches connect6 as IPv6, and sendmsg4 as IPv4).

#[cgroup_sock_addr(connect4)]
pub fn firewall_connect4(ctx: SockAddrContext) -> i32 {
    judge::<AF_INET, true>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn firewall_connect6(ctx: SockAddrContext) -> i32 {
    judge::<AF_INET6, true>(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn firewall_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge::<AF_INET, false>(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn firewall_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge::<AF_INET6, false>(&ctx)
}

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

/// Records the caller as the owner of the socket, unless it already is: a socket that
/// connects again or sends more datagrams pays one lookup, not the executable walk and the
/// update. A connect() from another process (a socket passed on or inherited) records the new
/// caller; a sendmsg() records only a socket without an owner. `exe` is the caller's
/// executable when the rules already read it.
#[inline(always)]
fn record_owner<const CONNECT: bool>(ctx: &SockAddrContext, exe: ExeId) {
    if RECORD_OWNER.load() == 0 {
        return;
    }
    remember_owner::<CONNECT>(ctx, exe);
}

/// [`record_owner`] whatever `record_owner` says: a socket held by `stealth` is judged again
/// by its owner when the rules change (the daemon releases it only if the rules no longer
/// hold *its* calls).
#[inline(always)]
fn remember_owner<const CONNECT: bool>(ctx: &SockAddrContext, exe: ExeId) {
    // SAFETY: the helper takes this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a map value, read at once.
    if let Some(known) = unsafe { SOCK_OWNER.get(&cookie) }
        && (!CONNECT || known.pid == pid)
    {
        return;
    }
    let exe = if exe.dev != 0 || exe.ino != 0 {
        exe
    } else {
        identity::current_exe().unwrap_or(ExeId { dev: 0, ino: 0 })
    };
    let owner = ConnOwner {
        exe,
        uid: bpf_get_current_uid_gid() as u32,
        pid,
    };
    let flags = if CONNECT { 0 } else { BPF_NOEXIST as u64 };
    // A racing sendmsg on another CPU may have recorded the socket first: that is fine.
    if SOCK_OWNER.insert(&cookie, &owner, flags).is_err() && CONNECT {
        count(Counter::OwnerRecordFailed);
    }
}

#[inline(always)]
fn judge<const FAMILY: u32, const CONNECT: bool>(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as in `destination`.
    let (protocol, port) = unsafe {
        (
            core::ptr::read_volatile(&(*sa).protocol),
            core::ptr::read_volatile(&(*sa).user_port),
        )
    };
    let (proto, proto_number) = match protocol {
        IPPROTO_TCP => (PROTO_TCP, IPPROTO_TCP as u8),
        IPPROTO_UDP => (PROTO_UDP, IPPROTO_UDP as u8),
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
    let mut word = classify_parts(&remote, proto, port);
    let mut exe = ExeId { dev: 0, ino: 0 };
    if scoped::active() {
        let owner = scoped::current_owner_for_rules();
        exe = owner.exe;
        word = min(
            word,
            scoped::classify_owner(&owner, scoped::Remote::of(&remote), proto, port),
        );
    }
    if word == NO_MATCH {
        word = DEFAULT_OUTBOUND.load();
        count(Counter::OutDefaultVerdict);
    } else {
        count_rule_hit(word);
    }
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
            if OUT_STEALTH.insert(&key, &word, 0).is_ok() {
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

/// Egress: is `pkt` (leaving the host) from a socket held by `stealth`, to the destination
/// that verdict was about? Only looked up when the rules in force can say `stealth` outbound.
#[inline(always)]
pub fn held(ctx: &TcContext, pkt: &Packet) -> bool {
    if OUT_CAN_STEALTH.load() == 0 {
        return false;
    }
    let proto = match pkt.proto {
        PROTO_TCP => IPPROTO_TCP as u8,
        PROTO_UDP => IPPROTO_UDP as u8,
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
