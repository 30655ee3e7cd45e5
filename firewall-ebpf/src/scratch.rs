//! Room for the keys and inputs of the selector and listener lookups.
//!
//! Why: the XDP program's frame plus these lookups' subprograms' must stay within the
//! kernel's 512 bytes of stack, and the parser and the reply builders already use most of the
//! XDP program's. The keys are built here instead, in this CPU's slot of `SCRATCH`. One map for
//! both users (`selector.rs`, `listeners.rs`): the listener lookup runs before the selector
//! lookup that needs its result, and each writes only its own fields.
//!
//! A per-CPU slot is a program's own only while nothing else can run on that CPU before the
//! program ends. That holds for the packet programs: XDP runs in softirq, and TC egress with
//! bottom halves off, so neither starts on a CPU while the other runs there. It does not hold
//! for the cgroup hooks (connect(), sendmsg(), bind()): they run in the calling task, where a
//! softirq (the XDP program judging an arriving packet) can run between two of their
//! instructions, and on a preemptible kernel (`preempt=full`, PREEMPT_RT) another task's hook
//! too. A hook sharing `SCRATCH` could then judge a connect() by an arriving packet's address
//! and listener. So the hooks build the same keys in a [`Scratch`] on their own stack
//! ([`Scratch::EMPTY`]), and use per-CPU maps only where a lost update costs a count: the
//! counters, the rule hits and the log budget (`tests/outbound.rs` checks which maps they
//! use).

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, lpm_trie::Key},
};
use firewall_common::identity::{ExeId, GroupKey, ListenerKey, ScopedSlot};

/// The lookup's inputs and keys.
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

impl Scratch {
    /// All zero: a hook's own, on its stack.
    pub const EMPTY: Self = {
        let exe = ExeId { dev: 0, ino: 0 };
        Self {
            group: GroupKey {
                exe,
                unit: 0,
                uid: 0,
                _pad: 0,
            },
            listener: ListenerKey {
                addr: [0; 16],
                port: 0,
                proto: 0,
                family: 0,
                _pad: 0,
            },
            slot: ScopedSlot { group: 0, slot: 0 },
            k4: Key::new(0, [0; 8]),
            k6: Key::new(0, [0; 20]),
            exe,
            unit: 0,
            hi: 0,
            lo: 0,
            uid: 0,
            proto: 0,
            port: 0,
            v4: 0,
        }
    };
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn scratch() -> Option<&'static mut Scratch> {
    this_cpus(&SCRATCH)
}

/// This CPU's slot of a one-entry per-CPU scratch map (this module's, the connection
/// tracker's `CT_SCRATCH`, the DNS reader's): for the packet programs only (see above).
#[inline(always)]
pub(crate) fn this_cpus<T>(map: &'static PerCpuArray<T>) -> Option<&'static mut T> {
    // SAFETY: this CPU's slot of a per-CPU array; only packet programs call this, and no
    // other packet program starts on this CPU while one runs (see above), so no other
    // reference to the slot exists while the program runs.
    map.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
