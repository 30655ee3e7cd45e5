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
//! numbers and classes (`proto`), the counters (`counters`), the decision log's events and
//! budget (`decision_log`), reject replies (`reply`),
//! outbound `stealth` (`outbound`), socket owners (`owners`), the program names
//! (`programs`); connection tracking ([`ct`]), program identity ([`identity`]) and the
//! benchmark's frame generator ([`generator`]) are public modules of their own.
#![no_std]

pub mod addr;
mod classifier;
mod counters;
mod decision_log;
mod outbound;
mod owners;
mod programs;
mod proto;
mod reply;

pub mod ct;
pub mod diagnostics;
pub mod dns;
pub mod generator;
pub mod identity;
pub mod maps;

pub use classifier::*;
pub use counters::*;
pub use decision_log::*;
pub use outbound::*;
pub use owners::*;
pub use programs::*;
pub use proto::*;
pub use reply::*;

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
    /// Bits [`super::ADDR_EXACT4`] | [`super::ADDR_PREFIX4`] | ...: which remote-address
    /// tables hold entries (lets the verifier prune the lookups of empty ones).
    pub const ADDR_TABLES: &str = "ADDR_TABLES";
    /// `[u32; PROTO_CLASSES]`: per protocol class, the first rule (verdict word) that matches
    /// every remote address and every port of that protocol, or [`super::NO_MATCH`]. Kept out
    /// of [`super::maps::PORTS`] so such rules do not have to be written into every port slot.
    pub const PROTO_VERDICTS: &str = "PROTO_VERDICTS";
    /// Verdict word for outbound socket calls no rule matches (rule index
    /// [`super::DEFAULT_RULE`]): set in the outbound generation, read by the cgroup hooks.
    pub const DEFAULT_OUTBOUND: &str = "DEFAULT_OUTBOUND";
    /// Non-zero when connections record their owner (`[conntrack] record_owner`): the outbound
    /// hooks fill [`super::maps::SOCK_OWNER`] and new flows copy the owner.
    pub const RECORD_OWNER: &str = "RECORD_OWNER";
    /// Bit `s` set when some group of this direction has shape `s`
    /// ([`super::identity::SHAPE_PROGRAM`] | ...): the shapes whose `GROUPS` lookup is made.
    /// 0: no rule names a program, unit or user, and nothing beyond the unscoped lookups runs.
    pub const SCOPED_SHAPES: &str = "SCOPED_SHAPES";
    /// Bit `l` set when a unit the rules name has its cgroup at level `l`.
    pub const UNIT_LEVELS: &str = "UNIT_LEVELS";
    /// Bits [`super::LOG_DEFAULT`] | [`super::LOG_INVALID`] | [`super::LOG_SOME_RULE`]: which
    /// decisions of this direction are logged (0: none, and the verifier prunes the log).
    pub const LOG_FLAGS: &str = "LOG_FLAGS";
    /// Log events each CPU may write per second (`[log] rate`).
    pub const LOG_RATE: &str = "LOG_RATE";
    /// Log events each CPU may write in a burst (`[log] burst`).
    pub const LOG_BURST: &str = "LOG_BURST";
    /// The generation id of this copy of the object, copied into its log events.
    pub const GENERATION: &str = "GENERATION";
    /// `u8`, aya-log's own: the most verbose level of trace message the programs write
    /// (`firewall-ebpf/src/diagnostics.rs`); 0 writes none, and the verifier removes them.
    pub const AYA_LOG_LEVEL: &str = "AYA_LOG_LEVEL";
    /// [`AYA_LOG_LEVEL`] with kernel tracing on: aya-log's `Level::Trace`.
    pub const AYA_LOG_TRACE: u8 = 5;
    /// Non-zero when the rules name names: DNS queries and answers are read, and outbound
    /// calls look their destination's names up (`dns`).
    pub const DNS_NAMES: &str = "DNS_NAMES";
    /// `[dns] min_ttl`, `max_ttl`, `grace` in seconds: a name recorded from an answer lasts
    /// the shortest TTL of its record and the answer's CNAMEs clamped to the first two, plus
    /// the third.
    pub const DNS_MIN_TTL: &str = "DNS_MIN_TTL";
    pub const DNS_MAX_TTL: &str = "DNS_MAX_TTL";
    pub const DNS_GRACE: &str = "DNS_GRACE";
    /// Non-zero when groups of rules about programs name names (outbound copy): their
    /// lookups then ask `NAMES` too.
    pub const NAMES_SCOPED: &str = "NAMES_SCOPED";
    /// Verdict word for an outbound call no rule decides to an address no DNS answer named:
    /// [`DEFAULT_OUTBOUND`], or `reject` with `[dns] enforce` where that allows.
    pub const DNS_UNNAMED: &str = "DNS_UNNAMED";
    /// [`super::generator::GenConfig`]: the benchmark generator's settings (never set by the
    /// daemon).
    pub const GEN_CONFIG: &str = "GEN_CONFIG";
}
