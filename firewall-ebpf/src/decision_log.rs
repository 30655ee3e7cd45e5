//! The decision log, kernel side: whether a decision is logged, the per-CPU budget, and
//! writing the event into the ring buffer the daemon reads.
//!
//! The why of the design (ring buffer, per-CPU token bucket, what a dropped event counts) is on
//! `firewall_common::LogEvent`'s module. In order, for one decision:
//!
//! 1. [`wanted`]: `LOG_FLAGS` (a load-time constant: 0 when nothing of this direction logs, and
//!    the verifier then drops everything below) says whether the default, the invalid verdict
//!    or some rule logs; a rule's own flag is one lookup in `LOG_RULES`, indexed by the
//!    verdict word's rule index, whatever the number of rules.
//! 2. `take_token`: this CPU's bucket in `LOG_BUDGET`; over budget, the event is counted
//!    (`LogOverBudget`) and nothing else is done.
//! 3. `LOG_RING.reserve`: a full ring is counted (`LogRingFull`), never waited for.
//! 4. The caller fills every field (ring memory is not zeroed) and submits; `LogEvents` counts
//!    what was written.
//!
//! Only decisions are logged, never the packets of tracked flows: one event per packet the
//! rules judge (a new flow's first packet, a denial), per denial of a flow a recheck ended,
//! and per outbound call judged.

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf, ring_buf::RingBufEntry},
    programs::XdpContext,
};
use firewall_common::{
    Counter, DEFAULT_RULE, EVENT_INBOUND, EVENT_OUTBOUND, LOG_DEFAULT, LOG_INVALID, LOG_RING_BYTES,
    LOG_SOME_RULE, LogEvent, RateBucket, WHY_DEFAULT, WHY_INVALID, identity::ExeId, verdict_rule,
};

use crate::{addr::Addr, clock, counters::count, identity, parse::Packet, reply::take_token};

/// Which decisions of this copy's direction are logged: `LOG_DEFAULT` | `LOG_INVALID` |
/// `LOG_SOME_RULE`. Set per generation.
#[unsafe(no_mangle)]
static LOG_FLAGS: Global<u32> = Global::new(0);
/// `[log] rate`: tokens per second of each CPU's bucket.
#[unsafe(no_mangle)]
static LOG_RATE: Global<u32> = Global::new(50);
/// `[log] burst`: each CPU's bucket size.
#[unsafe(no_mangle)]
static LOG_BURST: Global<u32> = Global::new(100);
/// The id of this copy's generation (the daemon names rules by it).
#[unsafe(no_mangle)]
static GENERATION: Global<u32> = Global::new(0);

/// The events, for the daemon. Pinned: every generation and both copies write the same ring.
#[map]
static LOG_RING: RingBuf = RingBuf::pinned(LOG_RING_BYTES, 0);
/// Each CPU's budget. Pinned, so a reload does not refill it.
#[map]
static LOG_BUDGET: PerCpuArray<RateBucket> = PerCpuArray::pinned(1, 0);
/// Per rule index: non-zero when the rule's decisions are logged. Sized per generation.
#[map]
static LOG_RULES: Array<u32> = Array::with_max_entries(1, 0);

/// The generation id to put in an event.
#[inline(always)]
pub(crate) fn generation() -> u32 {
    GENERATION.load()
}

/// Whether the decision `word`, reached for the reason `why` (`WHY_*`), is logged.
#[inline(always)]
fn wanted(word: u32, why: u32) -> bool {
    let flags = LOG_FLAGS.load();
    if flags == 0 {
        return false;
    }
    let rule = verdict_rule(word);
    match why {
        WHY_DEFAULT => flags & LOG_DEFAULT != 0,
        WHY_INVALID => flags & LOG_INVALID != 0,
        // A flow a recheck ended under `[defaults]` (its word names no rule).
        _ if rule == DEFAULT_RULE => flags & LOG_DEFAULT != 0,
        _ => flags & LOG_SOME_RULE != 0 && matches!(LOG_RULES.get(rule), Some(on) if *on != 0),
    }
}

/// Room for the event of a logged decision within this CPU's budget, or `None` (not logged,
/// over budget or the ring full: the last two counted). The caller must fill every field and
/// [`submit`] it.
#[inline(always)]
pub(crate) fn reserve(word: u32, why: u32, now: u64) -> Option<RingBufEntry<LogEvent>> {
    if !wanted(word, why) {
        return None;
    }
    let bucket = LOG_BUDGET.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot. A cgroup hook can be interrupted by a packet program (or
    // preempted by another task's hook) on this CPU between its read and write of the bucket:
    // one of the two updates is lost, a log line more or less, which is all the bucket decides.
    let bucket = unsafe { &mut *bucket };
    if !take_token(
        bucket,
        now,
        u64::from(LOG_RATE.load()),
        u64::from(LOG_BURST.load()),
    ) {
        count(Counter::LogOverBudget);
        return None;
    }
    let entry = LOG_RING.reserve::<LogEvent>(0);
    if entry.is_none() {
        count(Counter::LogRingFull);
    }
    entry
}

/// Hands a filled event to the daemon.
#[inline(always)]
pub(crate) fn submit(entry: RingBufEntry<LogEvent>) {
    entry.submit(0);
    count(Counter::LogEvents);
}

/// Logs an inbound decision, if it is logged and the budget allows: the packet's addresses,
/// ports and protocol, the receiving interface.
#[inline(always)]
pub(crate) fn inbound(ctx: &XdpContext, pkt: &Packet, word: u32, why: u32, now: u64) {
    let Some(mut entry) = reserve(word, why, now) else {
        return;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: `p` is the reservation, sized and aligned for a `LogEvent`; zeroed first, so
    // every byte (padding included) is written before the reference is made.
    let e = unsafe {
        p.write_bytes(0, 1);
        &mut *p
    };
    e.ts_ns = now;
    pkt.local.write_mapped(&mut e.local);
    pkt.remote.write_mapped(&mut e.remote);
    e.verdict = word;
    e.generation = generation();
    e.kind = EVENT_INBOUND;
    e.why = why;
    e.ifindex = ctx.ingress_ifindex() as u32;
    e.local_port = pkt.local_port;
    e.remote_port = pkt.remote_port;
    e.family = pkt.remote.family();
    e.proto = pkt.proto as u8;
    e.tcp_flags = pkt.tcp_flags;
    submit(entry);
}

/// Logs an outbound decision (a connect() or sendmsg() to `remote`:`port`), if it is logged
/// and the budget allows, with the caller: pid, uid, cgroup and executable (`exe` when the
/// rules already read it, else read here, only for an event that is written).
#[inline(always)]
pub(crate) fn outbound(remote: &Addr, proto: u32, port: u16, word: u32, why: u32, exe: ExeId) {
    // SAFETY: helpers without preconditions.
    let now = clock::now();
    let Some(mut entry) = reserve(word, why, now) else {
        return;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: as in `inbound`.
    let e = unsafe {
        p.write_bytes(0, 1);
        &mut *p
    };
    e.ts_ns = now;
    e.exe = if exe.dev != 0 || exe.ino != 0 {
        exe
    } else {
        identity::current_exe().unwrap_or(ExeId { dev: 0, ino: 0 })
    };
    // SAFETY: helpers without preconditions, allowed in the cgroup sock_addr programs.
    e.cgroup = unsafe { bpf_get_current_cgroup_id() };
    e.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    e.uid = bpf_get_current_uid_gid() as u32;
    remote.write_mapped(&mut e.remote);
    e.verdict = word;
    e.generation = generation();
    e.kind = EVENT_OUTBOUND;
    e.why = why;
    e.remote_port = port;
    e.family = remote.family();
    e.proto = proto as u8;
    submit(entry);
}
