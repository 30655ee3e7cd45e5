//! The datapath's clock: CLOCK_MONOTONIC_COARSE, read with `bpf_ktime_get_coarse_ns`.
//!
//! Every IP packet reads the clock before the connection lookup (an entry found must be
//! checked for expiry, a new one gets its deadline). The precise clock (`bpf_ktime_get_ns`)
//! reads the clock source on every call; the coarse one returns the time of the last tick.
//! Measured on BPF_PROG_TEST_RUN, the switch took about 20 ns off every packet that reaches
//! the connection table (established TCP 93-97 -> 70-71 ns, replied UDP 62-67 -> 37) and twice
//! that off a reject, which reads it twice (README, "Many sources").
//! What it is used for needs no more than a tick (1 to 4 ms): connection timeouts counted in
//! seconds, the reject and log budgets (whole tokens per second, with a burst), and the
//! decision log's timestamps, which the journal shows to the millisecond. Both clocks count
//! from the same origin, so the daemon still compares the tables' deadlines with its own
//! CLOCK_MONOTONIC (`conntrack::monotonic_ns`): the coarse time is behind it by less than a
//! tick, far below the shortest timeout. Cilium reads `bpf_jiffies64` for the same reason;
//! nanoseconds keep the tables' units unchanged. Every program of the object uses this one
//! clock, so deadlines written by one are compared with the same clock by the others.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

/// Now, in nanoseconds of CLOCK_MONOTONIC, to the last tick.
#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: a helper without preconditions (Linux 5.11; every supported kernel has it).
    unsafe { bpf_ktime_get_coarse_ns() }
}
