//! Outbound `stealth`: a socket call the rules say `stealth` for proceeds, and its packets to
//! that destination vanish. The cgroup hooks cannot drop packets, only allow or refuse the
//! call, so they record (socket, destination) in `OUT_STEALTH` and the TC egress program drops
//! what matches. The kernel side is `firewall-ebpf/src/outbound.rs`.

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

/// Capacity of [`crate::maps::OUT_STEALTH`]: sockets held by `stealth` at once. The oldest is
/// forgotten when it is full (its packets then leave: see the README's limits).
pub const OUT_STEALTH_ENTRIES: u32 = 65536;

const _: () = assert!(core::mem::size_of::<OutStealthKey>() == 32);

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), explicit padding (size asserted above), valid for every bit pattern.
    unsafe impl aya::Pod for super::OutStealthKey {}
}
