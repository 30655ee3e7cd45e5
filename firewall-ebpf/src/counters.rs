//! The counters: every outcome of every program, one per-CPU slot each.
//!
//! Every verdict and every malformed-packet drop has its own reason ([`Counter`], whose
//! discriminant is the slot), so `fwctl status` can say why a packet went where it went. The
//! map is pinned by name: every generation and both copies of the object (inbound and
//! outbound) share one, and a reload never resets a count. Per-CPU, so counting is a plain
//! increment: the programs are not re-entered on one CPU, and the daemon sums the CPUs.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use firewall_common::Counter;

// State that outlives a generation: pinned by name, so every generation shares one copy.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, the program is not re-entered on this CPU.
        unsafe { *slot += 1 };
    }
}
