//! The firewall's userspace: rules, compiler, reference evaluator, loader, daemon and client.
pub mod cgroup;
pub mod cli;
pub mod compile;
pub mod config;
pub mod conntrack;
pub mod control;
pub mod daemon;
pub mod frame;
pub mod hostaddrs;
pub mod identity;
pub mod interfaces;
pub mod kernel;
pub mod listeners;
pub mod logging;
pub mod model;
pub mod owners;
pub mod policy;
pub mod resolve;
pub mod sockets;
pub mod tracker;

/// The compiled XDP object, built by build.rs from `firewall-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/firewall"));
