//! Kernel-side diagnostics: trace-level messages from the programs, for finding out on one's
//! own machine why a packet got its verdict (`firewall-daemon --log-level trace`, or `fwctl
//! debug on` on a running daemon). They go through aya-log's ring buffer (`AYA_LOGS`) to the
//! daemon, which writes them to its log (`kernel/diagnostics.rs`).
//!
//! Off, they cost nothing: every message is guarded by aya-log's load-time constant
//! `AYA_LOG_LEVEL`, which the daemon sets to 0 (no message) unless tracing is on. A global of
//! frozen read-only data is a known value to the verifier, which removes the guarded code as
//! dead before it is verified or run: a program loaded with tracing off verifies to the same
//! instruction count as one built without the messages (README, "Measured cost"). Switching
//! tracing on or off loads the rules in force again as a new generation, with the other value.
//!
//! What is traced, for each inbound packet: why a frame is dropped before the rules (the drop
//! counter), what the connection table says about it, and the verdict of the rules on a packet
//! the table does not know (address, protocol, port, rule, action). Messages are few, outside
//! loops, numbers only (below), and absent from the egress and cgroup programs, so the
//! programs still verify with tracing on.

use aya_log_ebpf::trace;

use aya_ebpf::EbpfContext;
use aya_log_ebpf::macro_support::{Level, level_enabled};

/// Whether trace messages are on: a load-time constant, so a guarded call is dead code the
/// verifier removes when they are off.
#[inline(always)]
pub(crate) fn on() -> bool {
    level_enabled(Level::Trace)
}

// Each message is written by a function of its own (a BPF subprogram, with its own stack
// frame): the XDP programs' frames are nearly full, and aya-log's record builders inlined into
// them would not fit in the 512 bytes of stack a program has. The functions take scalars only,
// not the program's context: aya-log's macros ignore the context they are given, and passing
// it down into the connection tracker kept it live in a register across all of it (6,500 more
// verified instructions per egress program, with tracing off).

/// The context aya-log's macros ask for and do not use.
struct Unused;

impl EbpfContext for Unused {
    fn as_ptr(&self) -> *mut core::ffi::c_void {
        core::ptr::null_mut()
    }
}

// Messages carry numbers only, never strings: aya-log copies a string byte by byte, and the
// verifier walks every byte's copy on every path to the message; with state names and counter
// names the XDP program went past the verifier's 1,000,000 instructions with tracing on. The
// daemon turns the numbers into words (`kernel/diagnostics.rs`, `describe`, with the codes of
// `firewall_common::diagnostics`). For the same reason there is no message at each state change
// of a tracked flow: reached from many paths, it took the XDP program to 856,035 verified
// instructions with tracing on even as numbers, too close to the limit (the daemon's
// connection watcher reports state changes instead).

/// Why a frame is dropped before the rules: the drop counter's index (`firewall_common::Counter`).
#[inline(never)]
pub(crate) fn dropped(reason: u32) {
    trace!(&Unused, "drop {}", reason);
}

/// What the connection table says about an inbound packet: a
/// `firewall_common::diagnostics::ct_answer` code.
#[inline(never)]
pub(crate) fn conntrack(outcome: u32) {
    trace!(&Unused, "conntrack {}", outcome);
}

/// The rules' verdict on an IPv4 packet the connection table does not know (the address's
/// bytes in memory order, as one word).
#[inline(never)]
pub(crate) fn verdict4(remote: u32, proto: u32, port: u32, word: u32) {
    let a: [u8; 4] = remote.to_ne_bytes();
    trace!(
        &Unused,
        "rules {:i} {} {} {} {}",
        a,
        proto,
        port,
        firewall_common::verdict_rule(word),
        firewall_common::verdict_action(word)
    );
}

/// The rules' verdict on an IPv6 packet (the address as its two halves, in memory order).
#[inline(never)]
pub(crate) fn verdict6(hi: u64, lo: u64, proto: u32, port: u32, word: u32) {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&hi.to_ne_bytes());
    a[8..].copy_from_slice(&lo.to_ne_bytes());
    trace!(
        &Unused,
        "rules {:i} {} {} {} {}",
        a,
        proto,
        port,
        firewall_common::verdict_rule(word),
        firewall_common::verdict_action(word)
    );
}
