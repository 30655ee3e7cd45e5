//! Per-CPU room for the keys and inputs of the selector and listener lookups.
//!
//! Why: the XDP program's frame plus these lookups' subprograms' must stay within the
//! kernel's 512 bytes of stack, and the parser and the reply builders already use most of the
//! XDP program's. The keys are built here instead, in this CPU's slot of `SCRATCH` (a program
//! is not re-entered on one CPU while it runs, so the slot is the program's own). One map for
//! both users (`selector.rs`, `listeners.rs`): the listener lookup runs before the selector
//! lookup that needs its result, and each writes only its own fields.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, lpm_trie::Key},
};
use firewall_common::identity::{ExeId, GroupKey, ListenerKey, ScopedSlot};

/// The lookup's inputs and keys, kept off the stack: the XDP program's frame plus these
/// subprograms' must stay within the kernel's 512 bytes.
#[repr(C)]
pub(crate) struct Scratch {
    pub group: GroupKey,
    pub listener: ListenerKey,
    pub slot: ScopedSlot,
    pub k4: Key<[u8; 8]>,
    pub k6: Key<[u8; 20]>,
    pub exe: ExeId,
    pub unit: u64,
    pub hi: u64,
    pub lo: u64,
    pub uid: u32,
    pub proto: u32,
    pub port: u32,
    pub v4: u32,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn scratch() -> Option<&'static mut Scratch> {
    this_cpus(&SCRATCH)
}

/// This CPU's slot of a one-entry per-CPU scratch map (this module's, or the connection
/// tracker's `CT_SCRATCH`).
#[inline(always)]
pub(crate) fn this_cpus<T>(map: &'static PerCpuArray<T>) -> Option<&'static mut T> {
    // SAFETY: this CPU's slot of a per-CPU array; a program is not re-entered on one CPU, so
    // no other reference to the slot exists while the program runs.
    map.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
