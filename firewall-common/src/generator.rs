//! The benchmark's frame generator: an XDP program run in live-frame mode
//! (`BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`) that writes a source address into a
//! template frame and redirects it into a veth, so that the receiving veth's XDP program sees
//! `xdp_frame`s, as it would from a NIC, instead of socket buffers copied into XDP buffers
//! (what any sender above the driver, trafgen included, costs a veth receiver). It is not part
//! of the firewall: the daemon never loads it; `cargo xtask bench` does, through
//! `testrun_bench generate`.
//!
//! The source of each frame is drawn from a family of addresses described by [`GenConfig`],
//! with one random number per frame, so the generator keeps no state. The kernel program and
//! the benchmark compute it with the same [`GenConfig::source`].

/// Name of the generator program in the object.
pub const GEN_PROGRAM: &str = "xdp_generate";

/// The generator's settings, a load-time constant (`globals::GEN_CONFIG`).
///
/// Source of a frame, for a random `r`: `prefix | ((first + (r % sources) * span / sources) *
/// mul) & mask)`. With `mask = 0` it is `prefix` itself; with `sources = span` and `mul = 1`,
/// `prefix` plus a random host part; with the benchmark's `rule_addr` constants, the address
/// of one of `sources` rules spread over `span`, starting at rule `first`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConfig {
    /// Interface (in the generator's namespace) the frames are redirected into.
    pub ifindex: u32,
    pub prefix: u32,
    pub mask: u32,
    pub mul: u32,
    pub first: u32,
    pub span: u32,
    /// Number of distinct sources; at least 1.
    pub sources: u32,
    /// Non-zero: a random UDP source port per frame too (a new flow nearly every frame).
    pub random_port: u32,
}

impl GenConfig {
    /// The IPv4 source address (host order) of a frame, for the random number `r`.
    #[inline(always)]
    pub fn source(&self, r: u32) -> u32 {
        let sources = if self.sources == 0 { 1 } else { self.sources } as u64;
        let idx = self.first as u64 + (r as u64 % sources) * self.span as u64 / sources;
        self.prefix | ((idx as u32).wrapping_mul(self.mul) & self.mask)
    }
}

const _: () = assert!(core::mem::size_of::<GenConfig>() == 32);

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), eight u32 fields, no padding, valid for every bit pattern.
    unsafe impl aya::Pod for super::GenConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_cover_the_family() {
        let fixed = GenConfig {
            prefix: 0x0ac9_0001,
            sources: 1,
            span: 1,
            ..Default::default()
        };
        assert_eq!(fixed.source(12345), 0x0ac9_0001);
        let random = GenConfig {
            prefix: 0x0aca_0000,
            mask: 0xffff,
            mul: 1,
            span: 1 << 16,
            sources: 1 << 16,
            ..Default::default()
        };
        assert_eq!(random.source(0x1234_5678), 0x0aca_5678);
        // Rules spread over span = 100 with 4 sources: rules 0, 25, 50, 75.
        let spread = GenConfig {
            mask: u32::MAX,
            mul: 1,
            span: 100,
            sources: 4,
            ..Default::default()
        };
        let mut seen = [false; 100];
        for r in 0..64 {
            seen[spread.source(r) as usize] = true;
        }
        let mut expected = [false; 100];
        for i in [0, 25, 50, 75] {
            expected[i] = true;
        }
        assert_eq!(seen, expected);
    }
}
