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
//! for the cgroup hooks (connect(), sendmsg()): they run in the calling task, where a softirq
//! (the XDP program judging an arriving packet) can run between two of their instructions,
//! and on a preemptible kernel (`preempt=full`, PREEMPT_RT) another task's hook too. Sharing
//! `SCRATCH` let an arriving packet's address and listener stand in for a connect()'s. So:
//! - the hooks have a room of their own, `OUT_SCRATCH`, which no packet program touches;
//! - each judging writes the calling thread's id into it first and checks it is still there
//!   at the end: another task's hook that ran on this CPU meanwhile has written its own, and
//!   the call is refused (`selector::classify_caller`, counted as `out_interleaved`).
//! (Keys on the hook's own stack would need neither, but the verifier then tracks every byte
//! of them: with rules about programs and names the hooks went past its 1,000,000
//! instructions.) Other
//! per-CPU maps the hooks use are those where a lost update costs a count: the counters, the
//! rule hits and the log budget (`tests/outbound.rs` checks which maps they use).

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

/// The hooks' room: the judging's thread id, then the keys.
#[repr(C)]
pub(crate) struct HookScratch {
    pub token: u64,
    pub keys: Scratch,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map]
static OUT_SCRATCH: PerCpuArray<HookScratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn scratch() -> Option<&'static mut Scratch> {
    this_cpus(&SCRATCH)
}

/// This CPU's slot of the hooks' room. Not exclusively theirs while they run (see above):
/// only through `selector::classify_caller`, which checks.
#[inline(always)]
pub(crate) fn hook_scratch() -> Option<&'static mut HookScratch> {
    // SAFETY: this CPU's slot; another task's hook may write it meanwhile, which the caller
    // detects by the token (see above).
    OUT_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
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
