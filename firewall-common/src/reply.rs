//! What the reject replies need from the daemon: the host's own addresses and interfaces'
//! MACs (answer only what was sent to this host, from the interface it arrived on) and the
//! reply budgets (token buckets per source and for the whole host), so spoofed sources cannot
//! make the host answer in another's name or act as an amplifier. The kernel side is
//! `firewall-ebpf/src/reply.rs`.

/// Source of a rejected packet (IPv4 as `::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateKey {
    pub addr: [u8; 16],
}

/// Value of [`crate::maps::IFACE_MAC`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceMac {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Key of [`crate::maps::LOCAL_ADDRS`]: an address as `CtKey` stores it (IPv4 as
/// `::ffff:a.b.c.d`) and its family ([`crate::ct::FAMILY_V4`] or [`crate::ct::FAMILY_V6`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalAddrKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Capacity of [`crate::maps::IFACE_MAC`].
pub const IFACE_MAC_ENTRIES: u32 = 4096;
/// Capacity of [`crate::maps::LOCAL_ADDRS`]. Addresses beyond it get no reject replies (the
/// daemon warns).
pub const LOCAL_ADDRS_ENTRIES: u32 = 4096;

/// Token bucket for reject replies. Tokens are kept in millitokens so refill is integer math.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateBucket {
    pub millitokens: u64,
    pub last_ns: u64,
}

const _: () = {
    assert!(core::mem::size_of::<RateKey>() == 16);
    assert!(core::mem::size_of::<RateBucket>() == 16);
    assert!(core::mem::size_of::<IfaceMac>() == 8);
    assert!(core::mem::size_of::<LocalAddrKey>() == 20);
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), padding-free (sizes asserted above), valid for every bit pattern.
    unsafe impl aya::Pod for super::RateKey {}
    unsafe impl aya::Pod for super::RateBucket {}
    unsafe impl aya::Pod for super::IfaceMac {}
    unsafe impl aya::Pod for super::LocalAddrKey {}
}
