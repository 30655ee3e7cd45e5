//! Outbound `stealth`: a socket call the rules say `stealth` for proceeds, and its packets to
//! that destination vanish. The cgroup hooks cannot drop packets, only allow or refuse the
//! call, so they record (socket, destination) in `OUT_STEALTH` and the TC egress program drops
//! what matches. The kernel side is `firewall-ebpf/src/outbound.rs`.
//!
//! Why neither table forgets on its own (plain hashes, not LRUs): a hold that is forgotten
//! lets the socket's packets out, and any local process could make the table forget by
//! holding sockets of its own (one unconnected UDP socket sending to 65,536 destinations the
//! rules hold was enough to push a connected socket's entry out, after which its send()s,
//! which run no hook, left freely). So a hold ends only when its socket is released (the
//! sock_release hook forgets every destination the socket is held for, listed in
//! `OUT_HELD`), or when the daemon releases it because the rules changed; and a call that
//! cannot be recorded (a table full, more than [`HELD_DESTS`] destinations on one socket) is
//! refused (EPERM) rather than let through.

use crate::ct::ConnOwner;

/// Key of [`crate::maps::OUT_STEALTH`]: one socket (its cookie, `bpf_get_socket_cookie`) and
/// one destination. IPv4 addresses are stored as `::ffff:a.b.c.d`, as the packets leave. The
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

/// Capacity of [`crate::maps::OUT_STEALTH`]: (socket, destination) pairs held by `stealth` at
/// once. When it is full, a call the rules say `stealth` for is refused.
pub const OUT_STEALTH_ENTRIES: u32 = 65536;

/// Capacity of [`crate::maps::OUT_HELD`]: sockets held at once.
pub const HELD_SOCKETS: u32 = 65536;

/// The most destinations one socket can be held for at once (an unconnected UDP socket may
/// send to several): a call to one more is refused.
pub const HELD_DESTS: usize = 8;

/// A destination a socket is held for: the rest of its [`OutStealthKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldDest {
    pub remote: [u8; 16],
    /// Host byte order.
    pub remote_port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl HeldDest {
    pub const EMPTY: Self = Self {
        remote: [0; 16],
        remote_port: 0,
        proto: 0,
        _pad: 0,
    };
}

/// Value of [`crate::maps::OUT_HELD`] (key: the socket's cookie): who made the calls that held
/// it (the daemon judges the socket again by them when the rules change) and the destinations
/// it is held for (the sock_release hook forgets them all). Written only by the hooks, which
/// the kernel runs under the socket's lock, so one socket's entry has one writer at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldSocket {
    pub owner: ConnOwner,
    /// How many of `dests` are used.
    pub count: u32,
    pub _pad: u32,
    pub dests: [HeldDest; HELD_DESTS],
}

const _: () = assert!(core::mem::size_of::<OutStealthKey>() == 32);
const _: () = assert!(core::mem::size_of::<HeldDest>() == 20);
const _: () = assert!(core::mem::size_of::<HeldSocket>() == 24 + 8 + 20 * HELD_DESTS);

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), explicit padding (sizes asserted above), valid for every bit pattern.
    unsafe impl aya::Pod for super::OutStealthKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HeldSocket {}
}
