//! The kernel programs' trace messages (`firewall-ebpf/src/diagnostics.rs`) carry numbers only:
//! aya-log copies strings byte by byte, which the verifier walks on every path. These are the
//! numbers the programs write and the words the daemon (`kernel/diagnostics.rs`) puts back,
//! in one place so that the two sides cannot drift apart.

/// What the connection table says about an inbound packet: the code a `conntrack` message
/// carries, an index into [`CT_ANSWERS`].
pub mod ct_answer {
    pub const TRACKED: u32 = 0;
    pub const RELATED: u32 = 1;
    pub const INVALID: u32 = 2;
    pub const DENIED: u32 = 3;
    pub const NO_CONNECTION: u32 = 4;
    pub const UNKNOWN: u32 = 5;
}

/// [`ct_answer`] codes in words.
pub const CT_ANSWERS: [&str; 6] = [
    "a packet of a tracked flow: pass",
    "an ICMP error about a tracked flow: pass",
    "a packet its tracked flow's state or window does not allow: drop",
    "a packet of a flow a recheck denied: its verdict",
    "TCP without a connection: [conntrack] invalid decides",
    "not tracked: the rules decide",
];
