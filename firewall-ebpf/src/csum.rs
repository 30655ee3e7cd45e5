//! Internet checksums (RFC 1071), computed from scratch over headers the program builds:
//! incremental updates would inherit the partial checksums that veth and offloading NICs leave
//! in received frames.

/// One's-complement sum of big-endian 16-bit words; `N` must be even.
#[inline(always)]
pub fn sum<const N: usize>(bytes: &[u8; N]) -> u64 {
    let mut acc = 0u64;
    let mut i = 0;
    while i + 1 < N {
        acc += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u64;
        i += 2;
    }
    acc
}

/// Pseudo-header sum for TCP/UDP/ICMPv6 checksums.
#[inline(always)]
pub fn pseudo<const A: usize>(src: &[u8; A], dst: &[u8; A], proto: u8, len: u32) -> u64 {
    sum(src) + sum(dst) + proto as u64 + (len >> 16) as u64 + (len & 0xffff) as u64
}

/// Folds a sum to 16 bits and complements it. Five folds bring any u64 below 2^16 (a fixed
/// count keeps the verifier's job trivial).
#[inline(always)]
pub fn finish(mut acc: u64) -> [u8; 2] {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    (!(acc as u16)).to_be_bytes()
}
