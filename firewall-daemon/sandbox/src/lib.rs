//! What the daemon shares with the tools that run it without touching the host: where the
//! cgroup2 file system is and which cgroup this process is in ([`cgroup2`]), a throwaway cgroup
//! below that one ([`scratch`]) and, for tests and examples, a private bpffs (`bpffs`, behind
//! the feature of that name).
//!
//! Why a crate of its own: xtask starts daemons in scratch cgroups (the sandbox, the
//! benchmarks) but must not link the daemon, whose build needs the eBPF toolchain. Without the
//! `bpffs` feature this crate needs std and anyhow only.
pub mod cgroup2;
pub mod scratch;

#[cfg(feature = "bpffs")]
pub mod bpffs;
