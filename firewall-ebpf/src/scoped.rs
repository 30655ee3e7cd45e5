//! Rules about programs, units and users (`program`, `unit`, `user` selectors).
//!
//! The compiler puts rules whose selectors resolve to the same values into one *group* and
//! compiles each group into tables shaped like the unscoped ones (compile.md, "Rules about
//! programs"), keyed by group id. Who is asking is an [`Owner`]: the calling task in the cgroup
//! hooks ([`current_owner`]), the program that bound the port for a new inbound connection
//! ([`listener`], filled by the post_bind hooks below).
//!
//! An owner belongs to at most one group per *shape* (which selectors a group gives: program,
//! unit, user, or a combination), because each selector has one value per owner: one
//! executable, one uid, one unit (the deepest cgroup ancestor a rule names). So the kernel
//! makes one `GROUPS` lookup per shape the rule set uses (at most 7), then the group's four
//! table lookups; the cost does not grow with the number of rules or groups.

use aya_ebpf::{
    EbpfContext as _, Global,
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_uid_gid, bpf_get_socket_cookie},
    macros::{cgroup_sock, map},
    maps::{HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::SockContext,
};
use firewall_common::{
    AddrValue, Counter, NO_MATCH, PROTO_CLASSES, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PortValue,
    identity::{
        ExeId, GroupKey, LISTENER_ENTRIES, Listener, ListenerKey, MAX_UNIT_LEVEL, NO_UID, Owner,
        SHAPE_PROGRAM, SHAPE_UNIT, SHAPE_USER, SHAPES, ScopedSlot,
    },
    port_slot,
};

use crate::{count, identity::current_exe, min, pair_verdict, parse::Addr};

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

/// Who bound each address and port: pinned, shared by every generation and both copies.
#[map]
static LISTENERS: HashMap<ListenerKey, Listener> = HashMap::pinned(LISTENER_ENTRIES, 0);
/// Socket cookie -> its key in `LISTENERS`: sock_release may not read the address and port.
#[map]
static LISTENER_OF: HashMap<u64, ListenerKey> = HashMap::pinned(LISTENER_ENTRIES, 0);

/// Whether any rule of this copy names a program, unit or user.
#[inline(always)]
pub(crate) fn active() -> bool {
    SCOPED_SHAPES.load() != 0
}

/// The calling task: its executable, uid and cgroup ancestors. Only in process context (the
/// cgroup hooks).
#[inline(always)]
pub(crate) fn current_owner() -> Owner {
    owner_of_current(true, true)
}

/// [`current_owner`] with only what the rules in force can use: the executable walk (five
/// kernel reads) only if a rule names a program, the ancestors (eight helper calls) only if
/// one names a unit.
#[inline(always)]
pub(crate) fn current_owner_for_rules() -> Owner {
    let shapes = SCOPED_SHAPES.load();
    // Shapes 1, 3, 5 and 7 include a program.
    const WITH_PROGRAM: u32 = (1 << 1) | (1 << 3) | (1 << 5) | (1 << 7);
    owner_of_current(shapes & WITH_PROGRAM != 0, UNIT_LEVELS.load() != 0)
}

#[inline(always)]
fn owner_of_current(exe: bool, ancestors: bool) -> Owner {
    let exe = if exe {
        match current_exe() {
            Ok(exe) => exe,
            Err(_) => {
                count(Counter::OutNoExe);
                ExeId { dev: 0, ino: 0 }
            }
        }
    } else {
        ExeId { dev: 0, ino: 0 }
    };
    let mut owner = Owner {
        exe,
        uid: bpf_get_current_uid_gid() as u32,
        _pad: 0,
        ancestors: [0; MAX_UNIT_LEVEL],
    };
    if ancestors {
        let mut level = 0;
        while level < MAX_UNIT_LEVEL {
            // SAFETY: a helper without pointer arguments; 0 above the task's own level.
            owner.ancestors[level] =
                unsafe { bpf_get_current_ancestor_cgroup_id((level + 1) as i32) };
            level += 1;
        }
    }
    owner
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

/// The lookup's inputs and keys, kept off the stack: the XDP program's frame plus these
/// subprograms' must stay within the kernel's 512 bytes.
#[repr(C)]
struct Scratch {
    group: GroupKey,
    listener: ListenerKey,
    slot: ScopedSlot,
    k4: Key<[u8; 8]>,
    k6: Key<[u8; 20]>,
    exe: ExeId,
    unit: u64,
    hi: u64,
    lo: u64,
    uid: u32,
    proto: u32,
    port: u32,
    v4: u32,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: this CPU's slot of a per-CPU array; a program is not re-entered on one CPU.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// A remote address as two words: IPv4 in the low 32 bits of `hi` (its bytes in memory order),
/// IPv6 as its first and last eight bytes.
#[derive(Clone, Copy)]
pub(crate) struct Remote {
    pub v4: bool,
    pub hi: u64,
    pub lo: u64,
}

impl Remote {
    #[inline(always)]
    pub(crate) fn of(a: &Addr) -> Self {
        match a {
            Addr::V4(a) => Self {
                v4: true,
                hi: u64::from(u32::from_ne_bytes(*a)),
                lo: 0,
            },
            Addr::V6(a) => Self {
                v4: false,
                hi: u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
                lo: u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
            },
        }
    }
}

/// The first rule about `owner` that matches, as a verdict word, or [`NO_MATCH`].
#[inline(always)]
pub(crate) fn classify_owner(owner: &Owner, remote: Remote, proto: u32, port: u16) -> u32 {
    let Some(s) = scratch() else {
        return NO_MATCH;
    };
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
            best = min(best, classify_shape(shape));
        }
        shape += 1;
    }
    best
}

/// The group of shape `shape` the owner in the scratch belongs to, if any, and its first
/// matching rule. A subprogram: its locals live in its own small frame, not the caller's.
#[inline(never)]
fn classify_shape(shape: u32) -> u32 {
    let Some(s) = scratch() else {
        return NO_MATCH;
    };
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
        Some(group) => classify_group(s, group),
        None => NO_MATCH,
    }
}

/// [`crate::classify_parts`] over one group's tables, for the call in the scratch.
///
/// The combining steps repeat `classify_parts`' on purpose: sharing them as one inline
/// function changed how LLVM lays out the XDP program's packet parsing, and the verifier
/// refused it (a bitwise operation on a packet pointer).
#[inline(always)]
fn classify_group(s: &mut Scratch, group: u32) -> u32 {
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
    min(best, pair_verdict(addr_class, port_class))
}

/// Rules about programs for a new inbound connection: judged by who listens on its local
/// address and port (recorded at bind()). A BPF subprogram of its own taking only scalars, so
/// that the XDP program's frame is not grown by it. `hi`, `lo`: the remote address, `local_hi`,
/// `local_lo`: the local one ([`Remote`]).
#[inline(never)]
pub(crate) fn classify_inbound(hi: u64, lo: u64, meta: u64, local_hi: u64, local_lo: u64) -> u32 {
    let v4 = meta >> 32 != 0;
    let proto = ((meta >> 16) & 0xff) as u32;
    let port = meta as u16;
    let local = Remote {
        v4,
        hi: local_hi,
        lo: local_lo,
    };
    match listener(local, proto, port) {
        Some(l) => {
            count(Counter::InListenerFound);
            classify_owner(&l.owner, Remote { v4, hi, lo }, proto, port)
        }
        None => {
            count(Counter::InNoListener);
            NO_MATCH
        }
    }
}

/// Who listens on the `local` address and `port` a new inbound connection is for: the socket
/// the kernel will hand it to, in its order of preference (`ListenerKey::receivers`): bound to
/// the exact address (an IPv4 socket, then an IPv6 one bound to the mapped address), else to
/// the wildcard (`0.0.0.0`, then a dual-stack `::`). The key is built in the per-CPU scratch,
/// not on the caller's stack.
#[inline(always)]
pub(crate) fn listener(local: Remote, proto: u32, port: u16) -> Option<&'static Listener> {
    let proto = match proto {
        PROTO_TCP => 6,
        PROTO_UDP => 17,
        _ => return None,
    };
    let s = scratch()?;
    let key = &mut s.listener;
    key.port = port;
    key.proto = proto;
    key._pad = 0;
    // IPv4 as `::ffff:a.b.c.d` (see `Addr::write_mapped`); `hi`/`lo` as `Remote` has them.
    let (own_family, exact_hi, exact_lo, any_lo) = if local.v4 {
        (4, 0, 0xffff_0000 | (local.hi << 32), 0xffff_0000)
    } else {
        (6, local.hi, local.lo, 0)
    };
    let words = key.addr.as_mut_ptr() as *mut u64;
    // SAFETY: `addr` is 16 bytes at the start of an 8-aligned struct.
    unsafe {
        words.write(exact_hi);
        words.add(1).write(exact_lo);
    }
    key.family = own_family;
    // SAFETY: entries are only ever replaced whole; the reference is used within this run.
    if let Some(l) = unsafe { LISTENERS.get(key) } {
        return Some(l);
    }
    if local.v4 {
        key.family = 6;
        // SAFETY: as above.
        if let Some(l) = unsafe { LISTENERS.get(key) } {
            return Some(l);
        }
    }
    // SAFETY: as above.
    unsafe {
        words.write(0);
        words.add(1).write(any_lo);
    }
    key.family = own_family;
    // SAFETY: as above.
    if let Some(l) = unsafe { LISTENERS.get(key) } {
        return Some(l);
    }
    if local.v4 {
        // SAFETY: as above.
        unsafe { words.add(1).write(0) };
        key.family = 6;
        // SAFETY: as above.
        return unsafe { LISTENERS.get(key) };
    }
    None
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const PROCEED: i32 = 1;

#[cgroup_sock(post_bind4)]
pub fn firewall_post_bind4(ctx: SockContext) -> i32 {
    record_bind(&ctx, 4)
}

#[cgroup_sock(post_bind6)]
pub fn firewall_post_bind6(ctx: SockContext) -> i32 {
    record_bind(&ctx, 6)
}

/// After a successful bind(): records who holds the port. Never refuses the bind.
#[inline(always)]
fn record_bind(ctx: &SockContext, family: u8) -> i32 {
    let sk = ctx.sock;
    // SAFETY: the context the kernel passed; the verifier allows post_bind to read these.
    let (protocol, port) = unsafe {
        (
            core::ptr::read_volatile(&(*sk).protocol),
            core::ptr::read_volatile(&(*sk).src_port),
        )
    };
    // The bound address, in network order: IPv4 mapped into IPv6 as `ListenerKey` has it.
    // SAFETY: as above; post_bind4 may read src_ip4, post_bind6 src_ip6.
    let addr: [u32; 4] = unsafe {
        if family == 4 {
            [
                0,
                0,
                0xffff_u32.to_be(),
                core::ptr::read_volatile(&(*sk).src_ip4),
            ]
        } else {
            [
                core::ptr::read_volatile(&(*sk).src_ip6[0]),
                core::ptr::read_volatile(&(*sk).src_ip6[1]),
                core::ptr::read_volatile(&(*sk).src_ip6[2]),
                core::ptr::read_volatile(&(*sk).src_ip6[3]),
            ]
        }
    };
    let proto = match protocol {
        6 => 6u8,
        17 => 17u8,
        _ => return PROCEED,
    };
    if port == 0 || port > 0xffff {
        return PROCEED;
    }
    let mut key = ListenerKey {
        addr: [0; 16],
        port: port as u16,
        proto,
        family,
        _pad: 0,
    };
    let words = key.addr.as_mut_ptr() as *mut u32;
    // SAFETY: `addr` is 16 bytes, 8-aligned.
    unsafe {
        words.write(addr[0]);
        words.add(1).write(addr[1]);
        words.add(2).write(addr[2]);
        words.add(3).write(addr[3]);
    }
    let listener = Listener {
        owner: current_owner(),
        // SAFETY: the helper takes this program type's context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
    };
    if LISTENERS.insert(&key, &listener, 0).is_ok()
        && LISTENER_OF.insert(&listener.cookie, &key, 0).is_ok()
    {
        count(Counter::ListenerBound);
    } else {
        count(Counter::ListenerRecordFailed);
    }
    PROCEED
}

/// A socket is released: forget its owner (`SOCK_OWNER`: its flows have theirs already, and
/// deleting keeps the LRU from evicting, which costs every later insert) and its port, unless
/// another socket has bound that port since.
#[cgroup_sock(sock_release)]
pub fn firewall_sock_release(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: `family` is readable by every cgroup_sock program.
    let family = unsafe { core::ptr::read_volatile(&(*sk).family) };
    if family != AF_INET && family != AF_INET6 {
        return PROCEED;
    }
    // SAFETY: the helper takes this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = crate::outbound::SOCK_OWNER.remove(&cookie);
    // SAFETY: a plain key copied out at once.
    let Some(key) = (unsafe { LISTENER_OF.get(&cookie) }).copied() else {
        return PROCEED;
    };
    let _ = LISTENER_OF.remove(&cookie);
    // SAFETY: as above.
    let ours = unsafe { LISTENERS.get(&key) }.is_some_and(|l| l.cookie == cookie);
    if ours && LISTENERS.remove(&key).is_ok() {
        count(Counter::ListenerReleased);
    }
    PROCEED
}
