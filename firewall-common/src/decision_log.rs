//! The decision log: what the kernel tells the daemon about one decision, and its budget.
//!
//! Why a ring buffer: events go from every program (XDP inbound, the cgroup hooks outbound) to
//! one reader, the daemon, in order, with a reservation that fails at once when the buffer is
//! full rather than waiting (`BPF_MAP_TYPE_RINGBUF`, Linux 5.8; every supported kernel has
//! it). A failed reservation is counted (`Counter::LogRingFull`), never retried.
//!
//! Why a budget in the kernel: an unrated deny log is a denial-of-service lever (a scan of a
//! few thousand ports would write a few thousand journal lines). Each CPU has a token bucket
//! (a [`crate::RateBucket`], as the reject budgets: `LOG_RATE` tokens per second, `LOG_BURST`
//! at most) in a per-CPU array, `LOG_BUDGET`, so
//! taking a token is a plain read-modify-write with no contention and no atomics (the BPF
//! target lowers Rust atomics to plain accesses, and a shared bucket updated without them
//! loses updates under exactly the floods the budget is for). The price: the host-wide budget
//! is `LOG_RATE` per CPU that sees denials, up to CPUs x `LOG_RATE`. An event over budget is
//! dropped before anything else is done for it, and counted (`Counter::LogOverBudget`); one
//! written is counted as `Counter::LogEvents`. The datapath never waits for the reader.
//!
//! Which decisions are logged is decided by the daemon per rule set: `LOG_RULES` (one `u32`
//! per rule index, non-zero when the rule logs) and the bits of `LOG_FLAGS` for what has no
//! rule ([`LOG_DEFAULT`], [`LOG_INVALID`]) and whether `LOG_RULES` needs a lookup at all
//! ([`LOG_SOME_RULE`]). A packet pays for the log only when its decision is a logged one, and
//! never more than one array lookup whatever the number of rules.

/// Bytes of the ring buffer (a power of two, a multiple of the page size): 2,340 events of
/// [`LogEvent`]'s 104 bytes (plus an 8-byte header each), the default burst of 23 CPUs at
/// once, read by the daemon as they come.
pub const LOG_RING_BYTES: u32 = 256 * 1024;

/// [`LogEvent::kind`]: a packet judged by the inbound (XDP) program.
pub const EVENT_INBOUND: u32 = 1;
/// [`LogEvent::kind`]: a connect() or sendmsg() judged by an outbound (cgroup) hook.
pub const EVENT_OUTBOUND: u32 = 2;

/// [`LogEvent::why`]: the rule of the verdict word decided.
pub const WHY_RULE: u32 = 0;
/// [`LogEvent::why`]: no rule matched; `[defaults]` decided.
pub const WHY_DEFAULT: u32 = 1;
/// [`LogEvent::why`]: a TCP segment of no connection, judged by `[conntrack] invalid`.
pub const WHY_INVALID: u32 = 2;
/// [`LogEvent::why`]: a packet of a flow a `fwctl reload --recheck` ended, judged by the rule
/// that denies it now.
pub const WHY_RECHECK: u32 = 3;

/// `LOG_FLAGS` bit: log the direction's `[defaults]` verdict.
pub const LOG_DEFAULT: u32 = 1;
/// `LOG_FLAGS` bit: log `[conntrack] invalid` verdicts.
pub const LOG_INVALID: u32 = 2;
/// `LOG_FLAGS` bit: some rule of the direction logs (`LOG_RULES` is worth a lookup).
pub const LOG_SOME_RULE: u32 = 4;

/// One decision, as the kernel hands it to the daemon through the ring buffer.
///
/// Addresses are 16 bytes, IPv4 as `::ffff:a.b.c.d` with [`LogEvent::family`] beside them.
/// Inbound, `local` is the packet's destination and `ifindex` the receiving interface; the
/// process fields are 0 (the XDP program runs before any socket). Outbound, `local` is all
/// zero (the source is chosen later) and `local_port` 0, `remote` is the destination, and
/// `pid`, `uid`, `cgroup` and `exe` are the caller's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogEvent {
    /// CLOCK_MONOTONIC, to the last tick (`firewall-ebpf/src/clock.rs`).
    pub ts_ns: u64,
    /// The caller's cgroup id (outbound), 0 inbound.
    pub cgroup: u64,
    /// The caller's executable (outbound), zero when unknown or inbound.
    pub exe: crate::identity::ExeId,
    pub local: [u8; 16],
    pub remote: [u8; 16],
    /// The verdict word: rule index and action ([`crate::verdict`]).
    pub verdict: u32,
    /// The generation whose rules decided (`CtConfig::generation`), for the rule's name.
    pub generation: u32,
    /// [`EVENT_INBOUND`] or [`EVENT_OUTBOUND`].
    pub kind: u32,
    /// [`WHY_RULE`] ...
    pub why: u32,
    /// Receiving interface (inbound), 0 outbound.
    pub ifindex: u32,
    pub pid: u32,
    pub uid: u32,
    pub local_port: u16,
    pub remote_port: u16,
    /// `ct::FAMILY_V4` or `ct::FAMILY_V6`.
    pub family: u8,
    /// Protocol class: `PROTO_TCP`, `PROTO_UDP`, `PROTO_ICMP` (ICMP or ICMPv6, by family) or
    /// `PROTO_OTHER`.
    pub proto: u8,
    pub tcp_flags: u8,
    pub _pad: [u8; 5],
}

const _: () = {
    assert!(core::mem::size_of::<LogEvent>() == 104);
    assert!(LOG_RING_BYTES.is_power_of_two() && LOG_RING_BYTES.is_multiple_of(4096));
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), padding-free (sizes asserted above), valid for every bit pattern.
    unsafe impl aya::Pod for super::LogEvent {}
}
