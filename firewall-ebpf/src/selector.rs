//! Rules about programs, units and users (`program`, `unit`, `user` selectors).
//!
//! The compiler puts rules whose selectors resolve to the same values into one *group* and
//! compiles each group into tables shaped like the unscoped ones (compile.md, "Rules about
//! programs"), keyed by group id. Who is asking is an [`Owner`]: the calling task in the cgroup
//! hooks ([`current_owner_for_rules`]), the program that bound the port for a new inbound
//! connection ([`listeners::listener`], filled by the post_bind hooks).
//!
//! An owner belongs to at most one group per *shape* (which selectors a group gives: program,
//! unit, user, or a combination), because each selector has one value per owner: one
//! executable, one uid, one unit (the deepest cgroup ancestor a rule names). So the kernel
//! makes one `GROUPS` lookup per shape the rule set uses (at most 7), then the group's four
//! table lookups; the cost does not grow with the number of rules or groups.
//!
//! Key layout (the daemon writes these per generation, for each direction's copy):
//! - `GROUPS`: `GroupKey` (executable, unit's cgroup id, uid; the parts the shape does not
//!   give are zero, or `NO_UID`) -> group id.
//! - `UNITS`: cgroup id -> 1, the units the rules name (`UNIT_LEVELS` says at which levels).
//! - `SCOPED_ADDR4` / `SCOPED_ADDR6`: LPM tries keyed by the group id (big-endian, so it is
//!   the prefix's first 32 bits) followed by the remote address, looked up at full length
//!   (64 or 160 bits) -> `AddrValue`, as `ADDR4`/`ADDR6` (`classifier.rs`).
//! - `SCOPED_PORTS`: `ScopedSlot` (group id, `port_slot`) -> `PortValue`, as `PORTS`.
//! - `SCOPED_PROTO`: group id -> per protocol class, as `PROTO_VERDICTS`.
//! - Address and port classes of the groups share `PAIRS` with the unscoped ones: their ids
//!   never collide.
//!
//! Precedence: the group's candidate joins the unscoped rules' through the same `min`
//! (`classifier.rs`): whichever rule comes first in the file wins.

use core::sync::atomic::{Ordering, compiler_fence};

use aya_ebpf::{
    Global,
    macros::map,
    maps::{HashMap, LpmTrie},
};
use firewall_common::{
    AddrValue, Counter, NO_MATCH, PROTO_CLASSES, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PortValue,
    identity::{
        ExeId, GroupKey, MAX_UNIT_LEVEL, NO_UID, Owner, SHAPE_PROGRAM, SHAPE_UNIT, SHAPE_USER,
        SHAPES, ScopedSlot,
    },
    port_slot,
};

use crate::{
    addr::AddrWords,
    classifier::{min, pair_verdict},
    counters::count,
    dns, identity, listeners,
    scratch::{Scratch, hook_scratch, scratch},
};

/// Bit `s` set when a group of shape `s` exists in this copy's rules (0: no selectors).
#[unsafe(no_mangle)]
static SCOPED_SHAPES: Global<u32> = Global::new(0);
/// Bit `l` set when a unit the rules name has its cgroup at level `l`.
#[unsafe(no_mangle)]
static UNIT_LEVELS: Global<u32> = Global::new(0);

// Per generation, sized by the daemon.
#[map]
static GROUPS: HashMap<GroupKey, u32> = HashMap::with_max_entries(1, 0);
#[map]
static UNITS: HashMap<u64, u32> = HashMap::with_max_entries(1, 0);
#[map]
static SCOPED_ADDR4: LpmTrie<[u8; 8], AddrValue> = LpmTrie::with_max_entries(1, 0);
#[map]
static SCOPED_ADDR6: LpmTrie<[u8; 20], AddrValue> = LpmTrie::with_max_entries(1, 0);
#[map]
static SCOPED_PORTS: HashMap<ScopedSlot, PortValue> = HashMap::with_max_entries(1, 0);
#[map]
static SCOPED_PROTO: HashMap<u32, [u32; PROTO_CLASSES]> = HashMap::with_max_entries(1, 0);

/// Whether any rule of this copy names a program, unit or user.
#[inline(always)]
pub(crate) fn active() -> bool {
    SCOPED_SHAPES.load() != 0
}

/// [`identity::current_owner`] with only what the rules in force can use: the executable walk (five
/// kernel reads) only if a rule names a program, the ancestors (eight helper calls) only if
/// one names a unit.
#[inline(always)]
pub(crate) fn current_owner_for_rules() -> Owner {
    let shapes = SCOPED_SHAPES.load();
    // Shapes 1, 3, 5 and 7 include a program.
    const WITH_PROGRAM: u32 = (1 << 1) | (1 << 3) | (1 << 5) | (1 << 7);
    identity::owner_of_current(shapes & WITH_PROGRAM != 0, UNIT_LEVELS.load() != 0)
}

/// The owner's unit: its deepest cgroup ancestor that a rule names, or 0.
#[inline(always)]
fn unit_of(owner: &Owner) -> u64 {
    let levels = UNIT_LEVELS.load();
    if levels == 0 {
        return 0;
    }
    let mut i = MAX_UNIT_LEVEL;
    while i > 0 {
        i -= 1;
        if levels & (1 << (i + 1)) != 0 {
            let id = owner.ancestors[i];
            // SAFETY: the value is only tested for presence.
            if id != 0 && unsafe { UNITS.get(&id) }.is_some() {
                return id;
            }
        }
    }
    0
}

/// The first rule about `owner` that matches, as a verdict word, or [`NO_MATCH`]. `NAMES`:
/// the groups' names are looked up too (the outbound hooks). The inbound path is another
/// instance without them: the verifier counts a subprogram's whole frame whatever path runs,
/// and the names' keys on the frame took the XDP program's chain of calls past 512 bytes.
/// The keys are built in this CPU's scratch room: for the packet programs only (the hooks
/// call [`classify_caller`], `scratch.rs` says why).
#[inline(always)]
pub(crate) fn classify_owner(owner: &Owner, remote: AddrWords, proto: u32, port: u16) -> u32 {
    match scratch() {
        Some(s) => classify_owner_in::<false>(s, owner, remote, proto, port),
        None => NO_MATCH,
    }
}

/// [`classify_owner`] for the outbound hooks, names included, in their own room
/// (`OUT_SCRATCH`). `None` if another task's hook used the room meanwhile (`scratch.rs`):
/// the call is then refused, not judged again (a second judging in the same program doubled
/// what the verifier walks, past its limit with rules naming programs and names).
#[inline(always)]
pub(crate) fn classify_caller(
    owner: &Owner,
    remote: AddrWords,
    proto: u32,
    port: u16,
) -> Option<u32> {
    let room = hook_scratch()?;
    let me = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    // SAFETY: this CPU's slot (`hook_scratch`); volatile, and fenced, so the token is written
    // before the keys and read after the judging, as the check needs.
    unsafe { core::ptr::write_volatile(&mut room.token, me) };
    compiler_fence(Ordering::SeqCst);
    let word = classify_owner_in::<true>(&mut room.keys, owner, remote, proto, port);
    compiler_fence(Ordering::SeqCst);
    // SAFETY: as above.
    if unsafe { core::ptr::read_volatile(&room.token) } == me {
        return Some(word);
    }
    count(Counter::OutInterleaved);
    None
}

/// [`classify_owner`] with the keys built in `s`.
#[inline(always)]
fn classify_owner_in<const NAMES: bool>(
    s: &mut Scratch,
    owner: &Owner,
    remote: AddrWords,
    proto: u32,
    port: u16,
) -> u32 {
    s.exe = owner.exe;
    s.uid = owner.uid;
    s.unit = unit_of(owner);
    s.hi = remote.hi;
    s.lo = remote.lo;
    s.v4 = u32::from(remote.v4);
    s.proto = proto & 3;
    s.port = u32::from(port);
    let shapes = SCOPED_SHAPES.load();
    let mut best = NO_MATCH;
    let mut shape = 1;
    while shape < SHAPES {
        if shapes & (1 << shape) != 0 {
            best = min(best, classify_shape::<NAMES>(s, shape));
        }
        shape += 1;
    }
    best
}

/// The group of shape `shape` the owner in `s` belongs to, if any, and its first matching
/// rule. A subprogram: its locals live in its own small frame, not the caller's.
#[inline(never)]
fn classify_shape<const NAMES: bool>(s: &mut Scratch, shape: u32) -> u32 {
    let has_exe = s.exe.dev != 0 || s.exe.ino != 0;
    if (shape & SHAPE_PROGRAM != 0 && !has_exe) || (shape & SHAPE_UNIT != 0 && s.unit == 0) {
        return NO_MATCH;
    }
    if shape & SHAPE_PROGRAM != 0 {
        s.group.exe = s.exe;
    } else {
        s.group.exe = ExeId { dev: 0, ino: 0 };
    }
    s.group.unit = if shape & SHAPE_UNIT != 0 { s.unit } else { 0 };
    s.group.uid = if shape & SHAPE_USER != 0 {
        s.uid
    } else {
        NO_UID
    };
    s.group._pad = 0;
    // SAFETY: a plain u32 copied out at once.
    match unsafe { GROUPS.get(&s.group) }.copied() {
        Some(group) => classify_group::<NAMES>(s, group),
        None => NO_MATCH,
    }
}

/// [`crate::classifier::classify_parts`] over one group's tables, for the call in `s`.
///
/// The combining steps repeat `classify_parts`' on purpose: sharing them as one inline
/// function changed how LLVM lays out the XDP program's packet parsing, and the verifier
/// refused it (a bitwise operation on a packet pointer).
#[inline(always)]
fn classify_group<const NAMES: bool>(s: &mut Scratch, group: u32) -> u32 {
    let proto = s.proto & 3;
    let addr = if s.v4 != 0 {
        s.k4.prefix_len = 64;
        s.k4.data = (u64::from(group.to_be()) | (s.hi << 32)).to_ne_bytes();
        SCOPED_ADDR4.get(&s.k4)
    } else {
        s.k6.prefix_len = 160;
        let h = s.hi.to_ne_bytes();
        let l = s.lo.to_ne_bytes();
        let gb = group.to_be_bytes();
        s.k6.data = [
            gb[0], gb[1], gb[2], gb[3], h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1],
            l[2], l[3], l[4], l[5], l[6], l[7],
        ];
        SCOPED_ADDR6.get(&s.k6)
    };
    let (addr_class, mut best) = match addr {
        Some(v) => (v.class, min(v.any_proto, v.proto[proto as usize])),
        None => (NO_MATCH, NO_MATCH),
    };
    // SAFETY: plain integers copied out at once.
    if let Some(pv) = unsafe { SCOPED_PROTO.get(&group) } {
        best = min(
            best,
            match proto {
                PROTO_TCP => pv[0],
                PROTO_UDP => pv[1],
                PROTO_ICMP => pv[2],
                _ => pv[3],
            },
        );
    }
    s.slot.group = group;
    s.slot.slot = port_slot(proto, s.port as u16);
    // SAFETY: as above.
    let port_class = match unsafe { SCOPED_PORTS.get(&s.slot) } {
        Some(v) => {
            best = min(best, v.any_addr());
            v.class()
        }
        None => NO_MATCH,
    };
    if NAMES {
        let remote = AddrWords {
            v4: s.v4 != 0,
            hi: s.hi,
            lo: s.lo,
        };
        best = min(best, dns::group_name_rule(remote, group, proto, port_class));
    }
    min(best, pair_verdict(addr_class, port_class))
}

/// Rules about programs for a new inbound connection: judged by who listens on its local
/// address and port (recorded at bind()). A BPF subprogram of its own taking only scalars, so
/// that the XDP program's frame is not grown by it. `hi`, `lo`: the remote address, `local_hi`,
/// `local_lo`: the local one ([`AddrWords`]).
#[inline(never)]
pub(crate) fn classify_inbound(hi: u64, lo: u64, meta: u64, local_hi: u64, local_lo: u64) -> u32 {
    let v4 = meta >> 32 != 0;
    let proto = ((meta >> 16) & 0xff) as u32;
    let port = meta as u16;
    let local = AddrWords {
        v4,
        hi: local_hi,
        lo: local_lo,
    };
    match listeners::listener(local, proto, port) {
        Some(l) => {
            count(Counter::InListenerFound);
            classify_owner(&l.owner, AddrWords { v4, hi, lo }, proto, port)
        }
        None => {
            count(Counter::InNoListener);
            NO_MATCH
        }
    }
}
