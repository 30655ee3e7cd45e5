//! Socket owners: which process connected (or first sent from) each socket, so that the
//! connection its packets create can name its owner (`fwctl conns`).
//!
//! Why in two steps: the cgroup hooks run in the calling process's context, where its
//! executable, uid and pid can be read; the egress program, which creates the flow, runs
//! wherever the packet leaves from (often a softirq: retransmissions, ACKs), so the task it
//! could read is not reliably the socket's owner. So the outbound hooks record the owner of every
//! socket they allow (or hold by `stealth`) in `SOCK_OWNER`, keyed by socket cookie
//! (`bpf_get_socket_cookie`, the same in both program types), and the egress program copies
//! it into the flow's entry when the socket's first packet creates one ([`sender`]). A flow a
//! remote host opens takes the owner of the listening socket instead (`listeners.rs`).
//!
//! `SOCK_OWNER` is an LRU hash (`u64` cookie -> `ConnOwner`): an entry is needed only until
//! the socket's first packet (or a later one that starts a new flow), and sock_release deletes
//! it ([`forget`]). Pinned by name, shared by both copies of the object and every generation.
//! `RECORD_OWNER` (`[conntrack] record_owner`) turns recording off, except for the sockets
//! held by `stealth` ([`remember_owner`]).

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_get_socket_cookie},
    macros::map,
    maps::LruHashMap,
    programs::{SockAddrContext, TcContext},
};
use firewall_common::{
    Counter, SOCK_OWNER_ENTRIES,
    ct::{ConnOwner, CtEntry},
    identity::ExeId,
};

use crate::{counters::count, identity};

/// `[conntrack] record_owner`: non-zero when connections record their owner.
#[unsafe(no_mangle)]
pub(crate) static RECORD_OWNER: Global<u32> = Global::new(1);

/// Who connected (or first sent from) each allowed socket, by socket cookie: written by the
/// hooks, copied into new flows by the egress program. Pinned, shared like `OUT_STEALTH`.
#[map]
static SOCK_OWNER: LruHashMap<u64, ConnOwner> = LruHashMap::pinned(SOCK_OWNER_ENTRIES, 0);

/// Records the caller as the owner of the socket, unless it already is: a socket that
/// connects again or sends more datagrams pays one lookup, not the executable walk and the
/// update. A connect() from another process (a socket passed on or inherited) records the new
/// caller; a sendmsg() records only a socket without an owner. `exe` is the caller's
/// executable when the rules already read it.
#[inline(always)]
pub(crate) fn record_owner<const CONNECT: bool>(ctx: &SockAddrContext, exe: ExeId) {
    if RECORD_OWNER.load() == 0 {
        return;
    }
    remember_owner::<CONNECT>(ctx, exe);
}

/// [`record_owner`] whatever `record_owner` says: a socket held by `stealth` is judged again
/// by its owner when the rules change (the daemon releases it only if the rules no longer
/// hold *its* calls).
#[inline(always)]
pub(crate) fn remember_owner<const CONNECT: bool>(ctx: &SockAddrContext, exe: ExeId) {
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

/// The owner of the socket sending `ctx`, as the outbound hooks recorded it.
#[inline(always)]
pub(crate) fn sender(ctx: &TcContext, e: &mut CtEntry) {
    if RECORD_OWNER.load() == 0 {
        return;
    }
    // SAFETY: the helper takes an skb context; it returns 0 when the packet has no socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a map value, copied out at once.
    if cookie != 0
        && let Some(o) = unsafe { SOCK_OWNER.get(&cookie) }
    {
        e.owner = *o;
        count(Counter::CtOwnerRecorded);
    } else {
        count(Counter::CtOwnerUnknown);
    }
}

/// A released socket's owner: its flows have theirs already, and deleting keeps the LRU from
/// evicting, which costs every later insert.
#[inline(always)]
pub(crate) fn forget(cookie: &u64) {
    // Most released sockets have no entry (never allowed by a hook, or already evicted), so a
    // failed delete is the usual case and nothing to report.
    let _ = SOCK_OWNER.remove(cookie);
}
