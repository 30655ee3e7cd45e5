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
//! sock_release hook forgets the destinations of a socket `OUT_HELD` lists), or when the
//! daemon releases it because the rules changed; and a call that cannot be recorded (a table
//! full) is refused (EPERM) rather than let through.

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

const _: () = assert!(core::mem::size_of::<OutStealthKey>() == 32);

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), explicit padding (size asserted above), valid for every bit pattern.
    unsafe impl aya::Pod for super::OutStealthKey {}
}
