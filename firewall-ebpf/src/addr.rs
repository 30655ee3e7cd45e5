//! Addresses as the datapath carries them between its parts.
//!
//! [`Addr`] is an address copied out of a frame or a socket call, of either family. Keys that
//! hold either family store IPv4 as `::ffff:a.b.c.d` ([`Addr::write_mapped`]), with the family
//! beside it so an IPv6 flow can never stand for an IPv4 one. [`AddrWords`] is the same
//! address as two 64-bit scalars: what a BPF subprogram (`#[inline(never)]`) can take in
//! registers, so that the address is not spilled onto the calling program's 512-byte stack.

#[derive(Clone, Copy)]
pub enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Addr {
    /// `CtKey::family` of the address.
    #[inline(always)]
    pub fn family(&self) -> u8 {
        match self {
            Addr::V4(_) => firewall_common::ct::FAMILY_V4,
            Addr::V6(_) => firewall_common::ct::FAMILY_V6,
        }
    }

    /// IPv4 as `::ffff:a.b.c.d`, for keys that hold either family, written in place with two
    /// 64-bit stores (byte-wise copies cost tens of nanoseconds per packet). `out` must be
    /// 8-byte aligned: the address fields of `CtKey` are.
    #[inline(always)]
    pub fn write_mapped(&self, out: &mut [u8; 16]) {
        let p = out.as_mut_ptr() as *mut u64;
        // SAFETY: `out` is 16 bytes and 8-byte aligned (see above); little-endian target.
        unsafe {
            match self {
                Addr::V4(a) => {
                    p.write(0);
                    p.add(1)
                        .write(0xffff_0000 | (u64::from(u32::from_le_bytes(*a)) << 32));
                }
                Addr::V6(a) => {
                    let q = a.as_ptr() as *const u64;
                    p.write(q.read_unaligned());
                    p.add(1).write(q.add(1).read_unaligned());
                }
            }
        }
    }
}

/// An address as two words: IPv4 in the low 32 bits of `hi` (its bytes in memory order),
/// IPv6 as its first and last eight bytes.
#[derive(Clone, Copy)]
pub(crate) struct AddrWords {
    pub v4: bool,
    pub hi: u64,
    pub lo: u64,
}

impl AddrWords {
    #[inline(always)]
    pub(crate) fn of(a: &Addr) -> Self {
        match a {
            Addr::V4(a) => Self {
                v4: true,
                hi: u64::from(u32::from_ne_bytes(*a)),
                lo: 0,
            },
            Addr::V6(a) => Self {
                v4: false,
                hi: u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
                lo: u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
            },
        }
    }
}
