//! The firewall's userspace: rules, compiler, reference evaluator, loader, daemon and client.
pub mod cli;
pub mod compile;
pub mod conntrack;
pub mod control;
pub mod daemon;
pub mod decision_log;
pub mod explain;
pub mod host;
pub mod kernel;
pub mod logging;
pub mod names;
pub mod replace;

/// The compiled XDP object, built by build.rs from `firewall-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/firewall"));
