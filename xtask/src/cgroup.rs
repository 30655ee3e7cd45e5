//! A cgroup v2 directory for a daemon that xtask starts (the sandbox, the benchmarks).
//!
//! The daemon attaches its outbound hooks to `[daemon] cgroup`, whose default is the root of
//! the cgroup2 mount: every process on the machine. Every daemon xtask starts therefore gets
//! `--cgroup` with a cgroup made for it below xtask's own, removed when the guard drops
//! (processes left in it are moved back to the parent first). The guard comes from the crate the
//! daemon shares with xtask (firewall-daemon/sandbox): xtask does not link the daemon.

pub use firewall_sandbox::scratch::ScratchCgroup as DaemonCgroup;
