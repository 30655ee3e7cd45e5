//! Types shared by the XDP program and the daemon.
//!
//! Everything here is `#[repr(C)]` with explicit padding, so the kernel and userspace agree on
//! layout byte for byte; sizes are asserted at compile time. No `bool` or `Option` crosses the
//! boundary: flags are `u32`, "nothing" is [`NO_MATCH`].
//!
//! The classifier these maps implement is described in `firewall-daemon/src/compile.md`.
//!
//! One module per concern, each re-exported here so that every item keeps its path
//! `firewall_common::X`: the classifier's tables and verdict words (`classifier`), protocol
//! numbers and classes (`proto`), the counters (`counters`), reject replies (`reply`),
//! outbound `stealth` (`outbound`), socket owners (`owners`), the program names
//! (`programs`); connection tracking ([`ct`]) and program identity ([`identity`]) are public
//! modules of their own.
#![no_std]

mod classifier;
mod counters;
mod outbound;
mod owners;
mod programs;
mod proto;
mod reply;

pub mod ct;
pub mod identity;

pub use classifier::*;
pub use counters::*;
pub use outbound::*;
pub use owners::*;
pub use programs::*;
pub use proto::*;
pub use reply::*;

/// Map names, shared so the loader and the kernel program cannot drift apart.
pub mod maps {
    /// LPM trie (key: prefix length + 4 address bytes), IPv4 remote address -> [`super::AddrValue`].
    pub const ADDR4: &str = "ADDR4";
    /// LPM trie, IPv6 remote address -> [`super::AddrValue`].
    pub const ADDR6: &str = "ADDR6";
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
    /// LRU hash ([`super::OutStealthKey`]) -> verdict word: sockets an outbound rule (or
    /// `[defaults] outbound`) said `stealth` for, with the destination the verdict is about.
    /// Filled by the cgroup hooks, read by the TC egress program, which drops the matching
    /// packets. Pinned and shared by every generation.
    pub const OUT_STEALTH: &str = "OUT_STEALTH";
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
}

/// Names of the load-time constants (`Global<u32>`) in the XDP program.
pub mod globals {
    /// Verdict word for inbound packets no rule matches (rule index [`super::DEFAULT_RULE`]).
    pub const DEFAULT_INBOUND: &str = "DEFAULT_INBOUND";
    /// [`super::FRAG_ALLOW`] or [`super::FRAG_STEALTH`]: non-first fragments.
    pub const FRAGMENTS: &str = "FRAGMENTS";
    /// Reject replies a source may receive per second (token refill rate).
    pub const REJECT_RATE_PER_SEC: &str = "REJECT_RATE_PER_SEC";
    /// Reject replies a source may receive in a burst (bucket size).
    pub const REJECT_BURST: &str = "REJECT_BURST";
    /// Reject replies the host sends per second, to all sources together (token refill rate;
    /// the bucket holds one second's worth).
    pub const REJECT_GLOBAL_RATE: &str = "REJECT_GLOBAL_RATE";
    /// Non-zero when [`super::maps::PAIRS`] holds entries (lets the verifier prune the lookup).
    pub const HAS_PAIRS: &str = "HAS_PAIRS";
    /// `[u32; PROTO_CLASSES]`: per protocol class, the first rule (verdict word) that matches
    /// every remote address and every port of that protocol, or [`super::NO_MATCH`]. Kept out
    /// of [`super::maps::PORTS`] so such rules do not have to be written into every port slot.
    pub const PROTO_VERDICTS: &str = "PROTO_VERDICTS";
    /// Verdict word for outbound socket calls no rule matches (rule index
    /// [`super::DEFAULT_RULE`]): set in the outbound generation, read by the cgroup hooks.
    pub const DEFAULT_OUTBOUND: &str = "DEFAULT_OUTBOUND";
    /// Non-zero when some outbound verdict of the rule set in force can be `stealth`: only then
    /// does the egress program look its packets up in [`super::maps::OUT_STEALTH`].
    pub const OUT_CAN_STEALTH: &str = "OUT_CAN_STEALTH";
    /// Non-zero when connections record their owner (`[conntrack] record_owner`): the outbound
    /// hooks fill [`super::maps::SOCK_OWNER`] and new flows copy the owner.
    pub const RECORD_OWNER: &str = "RECORD_OWNER";
    /// Bit `s` set when some group of this direction has shape `s`
    /// ([`super::identity::SHAPE_PROGRAM`] | ...): the shapes whose `GROUPS` lookup is made.
    /// 0: no rule names a program, unit or user, and nothing beyond the unscoped lookups runs.
    pub const SCOPED_SHAPES: &str = "SCOPED_SHAPES";
    /// Bit `l` set when a unit the rules name has its cgroup at level `l`.
    pub const UNIT_LEVELS: &str = "UNIT_LEVELS";
}
