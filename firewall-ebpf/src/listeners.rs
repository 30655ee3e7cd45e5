//! Listeners: which program holds each bound address and port, for rules about programs on
//! new inbound connections.
//!
//! Why: the XDP program sees a packet long before any socket does, so it cannot ask who will
//! receive it. The post_bind hooks record, at bind() time, who bound what (`LISTENERS`), and
//! a new inbound connection is judged by the owner of the socket the kernel would hand it to
//! ([`listener`]). The flow's entry takes that owner too (`conntrack.rs`).
//!
//! Key layout (`ListenerKey`, 24 bytes): the bound address as 16 bytes (IPv6 as it is, IPv4
//! as `::ffff:a.b.c.d`, all zero for `::`), the port (host order), the IP protocol number (6
//! or 17) and the socket's family (4 or 6: an IPv6 socket may also receive IPv4). Keyed by
//! address, not by port alone: a socket bound to `127.0.0.1:8080` must not stand for the
//! server on `0.0.0.0:8080`. The value (`Listener`) is the owner and the socket's cookie, so
//! that only that socket's release removes the entry. sock_release may not read the bound
//! address, so `LISTENER_OF` maps the cookie back to the key.
//!
//! Both maps are pinned by name, shared by every generation and both copies of the object.

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_get_socket_cookie, macros::map, maps::HashMap,
    programs::SockContext,
};
use firewall_common::{
    AF_INET, AF_INET6, Counter, IPPROTO_TCP, IPPROTO_UDP, PROTO_TCP, PROTO_UDP,
    identity::{LISTENER_ENTRIES, Listener, ListenerKey},
};

use crate::{addr::AddrWords, counters::count, identity, owners, scratch::scratch};

/// Who bound each address and port: pinned, shared by every generation and both copies.
#[map]
static LISTENERS: HashMap<ListenerKey, Listener> = HashMap::pinned(LISTENER_ENTRIES, 0);
/// Socket cookie -> its key in `LISTENERS`: sock_release may not read the address and port.
#[map]
static LISTENER_OF: HashMap<u64, ListenerKey> = HashMap::pinned(LISTENER_ENTRIES, 0);

/// Return value of a cgroup sock program: the call proceeds (these hooks never refuse).
const PROCEED: i32 = 1;
/// `bpf_sock.protocol` of the sockets recorded.
const TCP: u32 = IPPROTO_TCP as u32;
const UDP: u32 = IPPROTO_UDP as u32;

/// Who listens on the `local` address and `port` a new inbound connection is for: the socket
/// the kernel will hand it to, in its order of preference (`ListenerKey::receivers`): bound to
/// the exact address (an IPv4 socket, then an IPv6 one bound to the mapped address), else to
/// the wildcard (`0.0.0.0`, then a dual-stack `::`). The key is built in the per-CPU scratch,
/// not on the caller's stack.
#[inline(always)]
pub(crate) fn listener(local: AddrWords, proto: u32, port: u16) -> Option<&'static Listener> {
    let proto = match proto {
        PROTO_TCP => IPPROTO_TCP,
        PROTO_UDP => IPPROTO_UDP,
        _ => return None,
    };
    let s = scratch()?;
    let key = &mut s.listener;
    key.port = port;
    key.proto = proto;
    key._pad = 0;
    // IPv4 as `::ffff:a.b.c.d` (see `Addr::write_mapped`); `hi`/`lo` as `AddrWords` has them.
    let (own_family, exact_hi, exact_lo, any_lo) = if local.v4 {
        (4, 0, 0xffff_0000 | (local.hi << 32), 0xffff_0000)
    } else {
        (6, local.hi, local.lo, 0)
    };
    let words = key.addr.as_mut_ptr() as *mut u64;
    // SAFETY: `addr` is 16 bytes at the start of an 8-aligned struct.
    unsafe {
        words.write(exact_hi);
        words.add(1).write(exact_lo);
    }
    key.family = own_family;
    // SAFETY: entries are only ever replaced whole; the reference is used within this run.
    if let Some(l) = unsafe { LISTENERS.get(key) } {
        return Some(l);
    }
    if local.v4 {
        key.family = 6;
        // SAFETY: as above.
        if let Some(l) = unsafe { LISTENERS.get(key) } {
            return Some(l);
        }
    }
    // SAFETY: as above.
    unsafe {
        words.write(0);
        words.add(1).write(any_lo);
    }
    key.family = own_family;
    // SAFETY: as above.
    if let Some(l) = unsafe { LISTENERS.get(key) } {
        return Some(l);
    }
    if local.v4 {
        // SAFETY: as above.
        unsafe { words.add(1).write(0) };
        key.family = 6;
        // SAFETY: as above.
        return unsafe { LISTENERS.get(key) };
    }
    None
}

/// After a successful bind(): records who holds the port. Never refuses the bind.
#[inline(always)]
pub(crate) fn record_bind(ctx: &SockContext, family: u8) -> i32 {
    let sk = ctx.sock;
    // SAFETY: the context the kernel passed; the verifier allows post_bind to read these.
    let (protocol, port) = unsafe {
        (
            core::ptr::read_volatile(&(*sk).protocol),
            core::ptr::read_volatile(&(*sk).src_port),
        )
    };
    // The bound address, in network order: IPv4 mapped into IPv6 as `ListenerKey` has it.
    // SAFETY: as above; post_bind4 may read src_ip4, post_bind6 src_ip6.
    let addr: [u32; 4] = unsafe {
        if family == 4 {
            [
                0,
                0,
                0xffff_u32.to_be(),
                core::ptr::read_volatile(&(*sk).src_ip4),
            ]
        } else {
            [
                core::ptr::read_volatile(&(*sk).src_ip6[0]),
                core::ptr::read_volatile(&(*sk).src_ip6[1]),
                core::ptr::read_volatile(&(*sk).src_ip6[2]),
                core::ptr::read_volatile(&(*sk).src_ip6[3]),
            ]
        }
    };
    let proto = match protocol {
        TCP => IPPROTO_TCP,
        UDP => IPPROTO_UDP,
        _ => return PROCEED,
    };
    if port == 0 || port > 0xffff {
        return PROCEED;
    }
    let mut key = ListenerKey {
        addr: [0; 16],
        port: port as u16,
        proto,
        family,
        _pad: 0,
    };
    let words = key.addr.as_mut_ptr() as *mut u32;
    // SAFETY: `addr` is 16 bytes, 8-aligned.
    unsafe {
        words.write(addr[0]);
        words.add(1).write(addr[1]);
        words.add(2).write(addr[2]);
        words.add(3).write(addr[3]);
    }
    let listener = Listener {
        owner: identity::current_owner(),
        // SAFETY: the helper takes this program type's context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
    };
    if LISTENERS.insert(&key, &listener, 0).is_ok()
        && LISTENER_OF.insert(&listener.cookie, &key, 0).is_ok()
    {
        count(Counter::ListenerBound);
    } else {
        count(Counter::ListenerRecordFailed);
    }
    PROCEED
}

/// A socket is released (sock_release): forget its owner ([`owners::forget`]), what it was
/// held for ([`crate::outbound::forget_held`]) and its port, unless another socket has bound
/// that port since.
#[inline(always)]
pub(crate) fn release(ctx: &SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: `family` is readable by every cgroup_sock program.
    let family = unsafe { core::ptr::read_volatile(&(*sk).family) };
    if family != AF_INET && family != AF_INET6 {
        return PROCEED;
    }
    // SAFETY: the helper takes this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    owners::forget(&cookie);
    crate::outbound::forget_held(cookie);
    // SAFETY: a plain key copied out at once.
    let Some(key) = (unsafe { LISTENER_OF.get(&cookie) }).copied() else {
        return PROCEED;
    };
    let _ = LISTENER_OF.remove(&cookie);
    // SAFETY: as above.
    let ours = unsafe { LISTENERS.get(&key) }.is_some_and(|l| l.cookie == cookie);
    if ours && LISTENERS.remove(&key).is_ok() {
        count(Counter::ListenerReleased);
    }
    PROCEED
}
