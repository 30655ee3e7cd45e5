//! Every map and load-time constant of the eBPF object, in one registry.
//!
//! The kernel programs declare their maps and globals where they use them; the daemon sizes,
//! pins, adopts and layout-checks them. Both sides used to keep their own lists (which maps a
//! generation pins, which shared maps a pin left by another version must match), and those
//! lists drifted. Here each map is described once: its name, what it is to the loader
//! ([`Kind`]), its key and value sizes taken from the shared types, and where its capacity
//! comes from ([`Capacity`]). The daemon's loader walks [`MAPS`]; a test parses the built
//! object and checks that its maps and globals are exactly [`MAPS`] and [`GLOBALS`].

use core::mem::size_of;

use crate::{
    AddrValue, Counter, EXACT4_FILTER_WORDS, HELD_SOCKETS, IFACE_MAC_ENTRIES, IfaceMac,
    LOCAL_ADDRS_ENTRIES, LOG_RING_BYTES, LocalAddrKey, OUT_STEALTH_ENTRIES, OutStealthKey,
    PORT_SLOTS, PROTO_CLASSES, PairKey, PortValue, RateBucket, RateKey, SOCK_OWNER_ENTRIES,
    ct::{ConnOwner, CtConfig, CtEntry, CtKey},
    dns::{
        DNS_QUERY_ENTRIES, DnsOn, DnsQuery, DnsQueryKey, NameKey, NameSlot, RESOLVED_ENTRIES,
        Resolved, SEEN_NAME_ENTRIES, SeenName,
    },
    globals,
    identity::{
        self, ExeId, GroupKey, IDENTITY_PROBE_ENTRIES, LISTENER_ENTRIES, Listener, ListenerKey,
        ScopedSlot,
    },
};

// Map names (the kernel program's `static` names; the shared ones are also pin names, so they
// never change).

/// LPM trie (key: prefix length + 4 address bytes), IPv4 remote address -> [`super::AddrValue`],
/// for prefixes shorter than /32 (see [`super::ADDR_EXACT4`]).
pub const ADDR4: &str = "ADDR4";
/// LPM trie, IPv6 remote address -> [`super::AddrValue`], for prefixes shorter than /128.
pub const ADDR6: &str = "ADDR6";
/// Hash, IPv4 address (4 bytes) -> [`super::AddrValue`]: the /32 prefixes.
pub const EXACT4: &str = "EXACT4";
/// Array of [`super::EXACT4_FILTER_WORDS`] `u32`: a bit per IPv4 /16 that holds an
/// [`EXACT4`] entry ([`super::exact4_filter_slot`]).
pub const EXACT4_FILTER: &str = "EXACT4_FILTER";
/// Hash, IPv6 address (16 bytes) -> [`super::AddrValue`]: the /128 prefixes.
pub const EXACT6: &str = "EXACT6";
/// Array indexed by [`super::port_slot`] -> [`super::PortValue`].
pub const PORTS: &str = "PORTS";
/// Hash ([`super::PairKey`]) -> verdict word, for rules naming both an address and a port.
pub const PAIRS: &str = "PAIRS";
/// Per-CPU array of `u64`, indexed by [`super::Counter`].
pub const COUNTERS: &str = "COUNTERS";
/// Per-CPU array of `u64`, indexed by rule index: packets decided by each rule.
pub const RULE_HITS: &str = "RULE_HITS";
/// LRU hash ([`super::RateKey`]) -> [`super::RateBucket`]: reject replies per source.
pub const REJECT_RATE: &str = "REJECT_RATE";
/// Hash ([`super::ct::CtKey`]) -> [`super::ct::CtEntry`]: confirmed flows (established TCP,
/// replied UDP). Never evicted; when full, new confirmed flows stay in [`CT_NEW`].
pub const CT_EST: &str = "CT_EST";
/// LRU hash ([`super::ct::CtKey`]) -> [`super::ct::CtEntry`]: unconfirmed flows remote
/// hosts opened (TCP handshakes, UDP). A flood of spoofed SYNs churns only this table.
pub const CT_NEW: &str = "CT_NEW";
/// LRU hash ([`super::ct::CtKey`]) -> [`super::ct::CtEntry`]: unconfirmed flows the host
/// opened (SYN_SENT, unreplied UDP, ICMP echo), and the host's flows that found
/// [`CT_EST`] full. Only the host's packets create entries here, so a remote flood
/// cannot evict them.
pub const CT_LOCAL: &str = "CT_LOCAL";
/// Array with one [`super::ct::CtConfig`]: timeouts and the invalid-packet verdict of the
/// rule set in force.
pub const CT_CONFIG: &str = "CT_CONFIG";
/// Hash ([`super::OutStealthKey`]) -> verdict word: sockets an outbound rule (or
/// `[defaults] outbound`) said `stealth` for, with the destination the verdict is about.
/// Filled by the cgroup hooks, read by the TC egress program, which drops the matching
/// packets. Pinned and shared by every generation. Not an LRU: see `outbound.rs`.
pub const OUT_STEALTH: &str = "OUT_STEALTH";
/// Hash, socket cookie -> 1: the sockets [`OUT_STEALTH`] holds; the sock_release hook forgets
/// a listed socket's holds.
pub const OUT_HELD: &str = "OUT_HELD";
/// Array with one u32, non-zero while sockets may be held: the egress program looks packets
/// up in [`OUT_STEALTH`] only then. Written by the daemon: on before hooks that can say
/// `stealth` run, off only once no rule in force can and nothing is held.
pub const OUT_HOLDING: &str = "OUT_HOLDING";
/// Hash ([`super::identity::GroupKey`]) -> group id: the groups of rules with `program`,
/// `unit` or `user` selectors (see compile.md, "Rules about programs").
pub const GROUPS: &str = "GROUPS";
/// Hash, cgroup id -> 1: the cgroups of the units the rules name.
pub const UNITS: &str = "UNITS";
/// LPM trie, key = group id (big-endian) + IPv4 address -> [`super::AddrValue`].
pub const SCOPED_ADDR4: &str = "SCOPED_ADDR4";
/// LPM trie, key = group id (big-endian) + IPv6 address -> [`super::AddrValue`].
pub const SCOPED_ADDR6: &str = "SCOPED_ADDR6";
/// Hash ([`super::identity::ScopedSlot`]) -> [`super::PortValue`].
pub const SCOPED_PORTS: &str = "SCOPED_PORTS";
/// Hash, group id -> `[u32; PROTO_CLASSES]`: the group's per-protocol constants.
pub const SCOPED_PROTO: &str = "SCOPED_PROTO";
/// Hash ([`super::identity::ListenerKey`]) -> [`super::identity::Listener`]: who bound each
/// local address and port. Written by the post_bind hooks, cleared by sock_release, read by the XDP
/// program for new inbound connections when inbound rules name programs. Pinned.
pub const LISTENERS: &str = "LISTENERS";
/// Hash, socket cookie -> [`super::identity::ListenerKey`]: the address and port each
/// recorded socket holds, for sock_release (which may not read them). Pinned.
pub const LISTENER_OF: &str = "LISTENER_OF";
/// LRU hash, socket cookie -> [`super::ct::ConnOwner`]: the process that connected (or
/// first sent from) each socket the outbound hooks allowed. The egress program copies it
/// into the flow it creates. Pinned.
pub const SOCK_OWNER: &str = "SOCK_OWNER";
/// Hash, ifindex -> [`super::IfaceMac`]: the MAC address of every interface of the host
/// that has one. Reject replies answer only frames sent to the receiving interface's MAC,
/// and are sent from it. Written by the daemon (at start and on link changes). Pinned.
pub const IFACE_MAC: &str = "IFACE_MAC";
/// Hash ([`super::LocalAddrKey`]) -> 1: the host's own addresses, of every interface (Linux
/// accepts a packet for any of them on any interface). Reject replies answer only packets
/// sent to one of them. Written by the daemon (at start and on address changes). Pinned.
pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
/// Array with one [`super::RateBucket`]: the host-wide reject reply budget
/// ([`super::globals::REJECT_GLOBAL_RATE`]). Pinned.
pub const REJECT_GLOBAL: &str = "REJECT_GLOBAL";
/// Ring buffer of [`super::LogEvent`]s, [`super::LOG_RING_BYTES`] bytes: the decision log,
/// written by every program and copy of the object, read by the daemon. Pinned.
pub const LOG_RING: &str = "LOG_RING";
/// Per-CPU array with one [`super::RateBucket`]: each CPU's decision log budget. Pinned.
pub const LOG_BUDGET: &str = "LOG_BUDGET";
/// Array of `u32` indexed by rule index: non-zero when the rule's decisions are logged.
pub const LOG_RULES: &str = "LOG_RULES";
/// Per-CPU room for the flow key and entry the tracker builds (the XDP stack is full).
pub const CT_SCRATCH: &str = "CT_SCRATCH";
/// Per-CPU room for the selector lookup's inputs and keys (the packet programs').
pub const SCRATCH: &str = "SCRATCH";
/// Per-CPU room for the outbound hooks' selector lookups, which no packet program touches
/// (`firewall-ebpf/src/scratch.rs`).
pub const OUT_SCRATCH: &str = "OUT_SCRATCH";
/// Per-CPU slot the parser launders the IP header offset through (see `parse.rs`, `widen`).
pub const WIDEN: &str = "WIDEN";
/// Ring buffer of aya-log's trace messages (`firewall-ebpf/src/diagnostics.rs`); its name is
/// aya-log's.
pub const AYA_LOGS: &str = "AYA_LOGS";
/// LRU hash ([`super::dns::DnsQueryKey`]) -> [`super::dns::DnsQuery`]: DNS queries the host
/// sent, awaiting their answer. Written by the egress program and the loopback program, each
/// query read and emptied by the reader of the way it was sent (XDP or loopback). Pinned.
pub const DNS_QUERIES: &str = "DNS_QUERIES";
/// LRU hash, address (IPv4 as `::ffff:a.b.c.d`) -> [`super::dns::Resolved`]: the names each
/// address was seen under in DNS answers. Written by the XDP program, read by the outbound
/// hooks and the daemon. Pinned.
pub const RESOLVED: &str = "RESOLVED";
/// LRU hash, name key -> [`super::dns::SeenName`]: each name's text and its suffixes' keys.
/// Pinned.
pub const SEEN_NAMES: &str = "SEEN_NAMES";
/// Array with one [`super::dns::NameKey`]: the key of the names' hash, drawn at random by the
/// first daemon. Pinned.
pub const NAME_KEY: &str = "NAME_KEY";
/// Hash ([`super::dns::NameSlot`]: name key, group) -> [`super::AddrValue`]: the rules' names
/// and wildcards, of the rules about every process and of each group (outbound copy).
pub const NAMES: &str = "NAMES";
/// Array with one [`super::dns::DnsOn`]: whether the rules in force read DNS answers, and
/// their `[dns]` times. The loopback program, which belongs to no generation, reads it; the daemon
/// writes it when a generation goes in force. Pinned.
pub const DNS_ON: &str = "DNS_ON";
/// Program array with one slot: `firewall_dns`, which the XDP programs tail-call to read a DNS
/// answer. Set per generation when the rules name names.
pub const DNS_PROGS: &str = "DNS_PROGS";
/// Program array with one slot: `firewall_dns_loopback_read`, which the loopback program
/// tail-calls to read an answer. Set when the loopback program is attached. Pinned (the copy
/// of the object it comes from is closed, and the kernel empties a program array no one
/// holds).
pub const DNS_LOOPBACK_PROGS: &str = "DNS_LOOPBACK_PROGS";
/// Per-CPU room for one DNS query being recorded (egress).
pub const QUERY_SCRATCH: &str = "QUERY_SCRATCH";
/// Per-CPU room for one DNS answer being read.
pub const DNS_SCRATCH: &str = "DNS_SCRATCH";
/// aya-log's ring buffer size (its own constant: 128 KiB).
pub const AYA_LOGS_BYTES: u32 = 1 << 17;
/// Hash, tgid -> [`ExeId`]: what the identity probe program observed (tests only).
pub const IDENTITY_PROBE: &str = identity::IDENTITY_PROBE;
/// Hash, IPv4 address -> `u32`: the addresses the benchmark's reference blocklist drops
/// (`firewall-ebpf/src/blocklist.rs`; sized and filled by `testrun_bench` only).
pub const BENCH_BLOCKLIST: &str = "BENCH_BLOCKLIST";

/// Capacity of [`REJECT_RATE`]: sources with a reply budget at once (the least recently
/// answered is forgotten first).
pub const REJECT_RATE_ENTRIES: u32 = 65536;

/// What a map is to the loader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Created with each generation (one loaded copy of the object for one rule set), filled
    /// from the compiled rules before anything points at it, and pinned for inspection while
    /// that generation is in force.
    Generation,
    /// Pinned by name and shared by every generation, both directions' copies and the next
    /// daemon (state that outlives a rule set: counters, connections, listeners).
    Shared,
    /// Per-CPU scratch space of the kernel programs: never read or written by the daemon.
    Scratch,
    /// Filled only for a program that tests or the benchmark load on its own (the identity
    /// probe, the reference blocklist); every copy of the object creates it, empty.
    Probe,
    /// aya-log's ring buffer of trace messages (`diagnostics`): every copy of the object
    /// creates its own; the daemon reads it while kernel tracing is on.
    Diagnostics,
}

/// The kernel's `enum bpf_map_type` of a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MapType {
    Hash = 1,
    Array = 2,
    ProgramArray = 3,
    PerCpuArray = 6,
    LruHash = 9,
    LpmTrie = 11,
    RingBuf = 27,
}

/// Which count of the compiled rules a per-generation map is sized by (at least 1 entry: the
/// kernel refuses empty maps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleCount {
    /// Rules of the direction ([`RULE_HITS`] is indexed by rule).
    Rules,
    /// IPv4 prefixes shorter than /32 (the unscoped trie).
    Addr4,
    /// IPv6 prefixes shorter than /128 (the unscoped trie).
    Addr6,
    /// IPv4 /32 prefixes (the unscoped hash).
    Exact4,
    /// IPv6 /128 prefixes (the unscoped hash).
    Exact6,
    /// (address class, port class) pairs.
    Pairs,
    /// Selector groups (the rules naming programs, units or users).
    Groups,
    /// Units (cgroups) the rules name.
    Units,
    /// IPv4 prefixes over every group.
    ScopedAddr4,
    /// IPv6 prefixes over every group.
    ScopedAddr6,
    /// Port slots over every group.
    ScopedPorts,
    /// Names and wildcards the rules name.
    Names,
}

/// A `[conntrack]` setting that sizes a connection table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtSize {
    /// `table_size`: confirmed flows.
    Table,
    /// `unconfirmed_size`: flows not yet confirmed (remote hosts' and the host's own).
    Unconfirmed,
}

/// Where a map's number of entries comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capacity {
    /// Fixed in the object, and the programs index the map by constant: a pinned copy with
    /// another count has another layout.
    Indexed(u32),
    /// Fixed in the object: how much room a hash map has.
    Fixed(u32),
    /// Sized at load from the compiled rules.
    Rules(RuleCount),
    /// Sized from `[conntrack]`; a pinned table is adopted with its own size.
    Conntrack(CtSize),
}

/// One map of the eBPF object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: Kind,
    pub map_type: MapType,
    /// Key size in bytes, as the kernel sees it (an LPM trie's key includes its 4-byte prefix
    /// length).
    pub key_size: usize,
    /// Value size in bytes (one CPU's for per-CPU maps); `None` for a type private to the
    /// kernel program (scratch space).
    pub value_size: Option<usize>,
    pub capacity: Capacity,
}

/// An LPM trie's key: the prefix length, then `N` bytes.
const fn lpm_key<const N: usize>() -> usize {
    4 + N
}

const fn spec(
    name: &'static str,
    kind: Kind,
    map_type: MapType,
    key_size: usize,
    value_size: usize,
    capacity: Capacity,
) -> MapSpec {
    MapSpec {
        name,
        kind,
        map_type,
        key_size,
        value_size: Some(value_size),
        capacity,
    }
}

const fn scratch(name: &'static str, value_size: Option<usize>) -> MapSpec {
    MapSpec {
        name,
        kind: Kind::Scratch,
        map_type: MapType::PerCpuArray,
        key_size: 4,
        value_size,
        capacity: Capacity::Indexed(1),
    }
}

/// Every map of the eBPF object.
#[rustfmt::skip]
pub const MAPS: [MapSpec; 49] = {
    use Capacity::{Conntrack, Fixed, Indexed, Rules};
    use Kind::{Diagnostics, Generation, Probe, Shared};
    use MapType::{Array, Hash, LpmTrie, LruHash, PerCpuArray, ProgramArray, RingBuf};
    [
        // The unscoped classifier (compile.md): one lookup per dimension.
        spec(ADDR4, Generation, LpmTrie, lpm_key::<4>(), size_of::<AddrValue>(), Rules(RuleCount::Addr4)),
        spec(ADDR6, Generation, LpmTrie, lpm_key::<16>(), size_of::<AddrValue>(), Rules(RuleCount::Addr6)),
        spec(EXACT4, Generation, Hash, 4, size_of::<AddrValue>(), Rules(RuleCount::Exact4)),
        spec(EXACT4_FILTER, Generation, Array, 4, 4, Indexed(EXACT4_FILTER_WORDS)),
        spec(EXACT6, Generation, Hash, 16, size_of::<AddrValue>(), Rules(RuleCount::Exact6)),
        spec(PORTS, Generation, Array, 4, size_of::<PortValue>(), Indexed(PORT_SLOTS)),
        spec(PAIRS, Generation, Hash, size_of::<PairKey>(), 4, Rules(RuleCount::Pairs)),
        spec(RULE_HITS, Generation, PerCpuArray, 4, 8, Rules(RuleCount::Rules)),
        spec(CT_CONFIG, Generation, Array, 4, size_of::<CtConfig>(), Indexed(1)),
        spec(LOG_RULES, Generation, Array, 4, 4, Rules(RuleCount::Rules)),
        // The selectors (compile.md, "Rules about programs").
        spec(GROUPS, Generation, Hash, size_of::<GroupKey>(), 4, Rules(RuleCount::Groups)),
        spec(UNITS, Generation, Hash, 8, 4, Rules(RuleCount::Units)),
        spec(SCOPED_ADDR4, Generation, LpmTrie, lpm_key::<8>(), size_of::<AddrValue>(), Rules(RuleCount::ScopedAddr4)),
        spec(SCOPED_ADDR6, Generation, LpmTrie, lpm_key::<20>(), size_of::<AddrValue>(), Rules(RuleCount::ScopedAddr6)),
        spec(SCOPED_PORTS, Generation, Hash, size_of::<ScopedSlot>(), size_of::<PortValue>(), Rules(RuleCount::ScopedPorts)),
        spec(SCOPED_PROTO, Generation, Hash, 4, 4 * PROTO_CLASSES, Rules(RuleCount::Groups)),
        // Names (`dns`).
        spec(NAMES, Generation, Hash, size_of::<NameSlot>(), size_of::<AddrValue>(), Rules(RuleCount::Names)),
        spec(DNS_PROGS, Generation, ProgramArray, 4, 4, Indexed(1)),
        spec(DNS_LOOPBACK_PROGS, Shared, ProgramArray, 4, 4, Indexed(1)),
        // State that outlives a generation.
        spec(COUNTERS, Shared, PerCpuArray, 4, 8, Indexed(Counter::COUNT)),
        spec(REJECT_RATE, Shared, LruHash, size_of::<RateKey>(), size_of::<RateBucket>(), Fixed(REJECT_RATE_ENTRIES)),
        spec(REJECT_GLOBAL, Shared, Array, 4, size_of::<RateBucket>(), Indexed(1)),
        spec(IFACE_MAC, Shared, Hash, 4, size_of::<IfaceMac>(), Fixed(IFACE_MAC_ENTRIES)),
        spec(LOCAL_ADDRS, Shared, Hash, size_of::<LocalAddrKey>(), 4, Fixed(LOCAL_ADDRS_ENTRIES)),
        spec(CT_EST, Shared, Hash, size_of::<CtKey>(), size_of::<CtEntry>(), Conntrack(CtSize::Table)),
        spec(CT_NEW, Shared, LruHash, size_of::<CtKey>(), size_of::<CtEntry>(), Conntrack(CtSize::Unconfirmed)),
        // The host's own pending flows get as much room as remote hosts' handshakes.
        spec(CT_LOCAL, Shared, LruHash, size_of::<CtKey>(), size_of::<CtEntry>(), Conntrack(CtSize::Unconfirmed)),
        spec(OUT_STEALTH, Shared, Hash, size_of::<OutStealthKey>(), 4, Fixed(OUT_STEALTH_ENTRIES)),
        spec(OUT_HELD, Shared, Hash, 8, 4, Fixed(HELD_SOCKETS)),
        spec(OUT_HOLDING, Shared, Array, 4, 4, Indexed(1)),
        spec(LISTENERS, Shared, Hash, size_of::<ListenerKey>(), size_of::<Listener>(), Fixed(LISTENER_ENTRIES)),
        spec(LISTENER_OF, Shared, Hash, 8, size_of::<ListenerKey>(), Fixed(LISTENER_ENTRIES)),
        spec(SOCK_OWNER, Shared, LruHash, 8, size_of::<ConnOwner>(), Fixed(SOCK_OWNER_ENTRIES)),
        spec(DNS_QUERIES, Shared, LruHash, size_of::<DnsQueryKey>(), size_of::<DnsQuery>(), Fixed(DNS_QUERY_ENTRIES)),
        spec(RESOLVED, Shared, LruHash, 16, size_of::<Resolved>(), Fixed(RESOLVED_ENTRIES)),
        spec(SEEN_NAMES, Shared, LruHash, 8, size_of::<SeenName>(), Fixed(SEEN_NAME_ENTRIES)),
        spec(NAME_KEY, Shared, Array, 4, size_of::<NameKey>(), Indexed(1)),
        spec(DNS_ON, Shared, Array, 4, size_of::<DnsOn>(), Indexed(1)),
        // The decision log: a ring buffer has no key or value, its entries are its bytes.
        spec(LOG_RING, Shared, RingBuf, 0, 0, Fixed(LOG_RING_BYTES)),
        spec(LOG_BUDGET, Shared, PerCpuArray, 4, size_of::<RateBucket>(), Indexed(1)),
        // The kernel programs' own scratch space.
        scratch(CT_SCRATCH, None),
        scratch(SCRATCH, None),
        scratch(OUT_SCRATCH, None),
        scratch(WIDEN, Some(8)),
        scratch(DNS_SCRATCH, None),
        scratch(QUERY_SCRATCH, None),
        // Trace messages, while kernel tracing is on (see [`Kind::Diagnostics`]).
        spec(AYA_LOGS, Diagnostics, RingBuf, 0, 0, Fixed(AYA_LOGS_BYTES)),
        // Tests only (see [`Kind::Probe`]).
        spec(IDENTITY_PROBE, Probe, Hash, 4, size_of::<ExeId>(), Fixed(IDENTITY_PROBE_ENTRIES)),
        // The benchmark only: one entry unless testrun_bench sizes it.
        spec(BENCH_BLOCKLIST, Probe, Hash, 4, 4, Fixed(1)),
    ]
};

/// The registry entry of the map called `name`.
pub fn map(name: &str) -> Option<&'static MapSpec> {
    MAPS.iter().find(|m| m.name == name)
}

/// The maps of one kind, in registry order.
pub fn of_kind(kind: Kind) -> impl Iterator<Item = &'static MapSpec> {
    MAPS.iter().filter(move |m| m.kind == kind)
}

/// One load-time constant (a `Global` of the kernel program, set with `override_global`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalSpec {
    pub name: &'static str,
    /// Size in bytes: what the value written at load must have.
    pub size: usize,
}

const fn global(name: &'static str, size: usize) -> GlobalSpec {
    GlobalSpec { name, size }
}

/// Every load-time constant of the eBPF object. The rule set's are set for each generation
/// from the compiled rules and `[defaults]`/`[reject]`/`[conntrack]`; the structure offsets
/// ([`identity::globals`]) from the running kernel's BTF.
pub const GLOBALS: [GlobalSpec; 30] = [
    global(globals::DEFAULT_INBOUND, 4),
    global(globals::DEFAULT_OUTBOUND, 4),
    global(globals::FRAGMENTS, 4),
    global(globals::HAS_PAIRS, 4),
    global(globals::ADDR_TABLES, 4),
    global(globals::PROTO_VERDICTS, 4 * PROTO_CLASSES),
    global(globals::REJECT_RATE_PER_SEC, 4),
    global(globals::REJECT_BURST, 4),
    global(globals::REJECT_GLOBAL_RATE, 4),
    global(globals::RECORD_OWNER, 4),
    global(globals::SCOPED_SHAPES, 4),
    global(globals::UNIT_LEVELS, 4),
    global(globals::LOG_FLAGS, 4),
    global(globals::LOG_RATE, 4),
    global(globals::LOG_BURST, 4),
    global(globals::GENERATION, 4),
    global(globals::DNS_NAMES, 4),
    global(globals::DNS_MIN_TTL, 4),
    global(globals::DNS_MAX_TTL, 4),
    global(globals::DNS_GRACE, 4),
    global(globals::DNS_UNNAMED, 4),
    global(globals::NAMES_SCOPED, 4),
    // aya-log's level (`diagnostics`): 0 (no message) unless kernel tracing is on.
    global(globals::AYA_LOG_LEVEL, 1),
    global(identity::globals::OFF_TASK_MM, 4),
    global(identity::globals::OFF_MM_EXE_FILE, 4),
    global(identity::globals::OFF_FILE_INODE, 4),
    global(identity::globals::OFF_INODE_INO, 4),
    global(identity::globals::OFF_INODE_SB, 4),
    global(identity::globals::OFF_SB_DEV, 4),
    // The benchmark's frame generator (`generator`), which the daemon never loads.
    global(
        globals::GEN_CONFIG,
        size_of::<crate::generator::GenConfig>(),
    ),
];

/// The registry entry of the global called `name`.
pub fn global_spec(name: &str) -> Option<&'static GlobalSpec> {
    GLOBALS.iter().find(|g| g.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, m) in MAPS.iter().enumerate() {
            assert!(
                MAPS[..i].iter().all(|o| o.name != m.name),
                "map {} listed twice",
                m.name
            );
        }
        for (i, g) in GLOBALS.iter().enumerate() {
            assert!(
                GLOBALS[..i].iter().all(|o| o.name != g.name),
                "global {} listed twice",
                g.name
            );
        }
    }

    #[test]
    fn only_the_kernel_programs_scratch_space_has_a_private_layout() {
        for m in MAPS {
            assert_eq!(
                m.value_size.is_none(),
                m.kind == Kind::Scratch && m.name != WIDEN,
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn shared_maps_have_a_size_that_does_not_depend_on_the_rules() {
        for m in of_kind(Kind::Shared) {
            assert!(
                !matches!(m.capacity, Capacity::Rules(_)),
                "{} is shared by generations of different sizes",
                m.name
            );
        }
        assert_eq!(map(CT_EST).map(|m| m.kind), Some(Kind::Shared));
        assert_eq!(map("NOPE"), None);
    }
}
