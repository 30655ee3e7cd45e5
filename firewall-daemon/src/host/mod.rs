//! The daemon's host side: what it learns from the running system rather than from the rules
//! file or the kernel program, read when the daemon starts, reloads or is asked, never per
//! packet.
//!
//! Why these live together: each one answers for the network, mount, cgroup and PID namespaces
//! of the calling thread, so each has the same limits (the daemon must run in the namespaces it
//! protects), and each is a snapshot that may be stale by the time it is used; the callers
//! (the daemon's start-up, reloads and `fwctl` answers) reconcile instead of trusting them.
//!
//! Two words are kept apart throughout: a *selector* is the rule side, which local processes a
//! rule applies to (`program`, `unit`, `user`); an *owner* is what the kernel records about the
//! process behind a socket (executable, uid, cgroup ancestors).
//!
//! - [`sock_diag`]: the host's sockets through NETLINK_SOCK_DIAG (seeding connections, the
//!   listening and bound sockets, SOCK_DESTROY).
//! - [`procfs`]: what is read from `/proc` about other processes.
//! - [`cgroups`]: the cgroup the outbound hooks attach to, the cgroup links pinned earlier, and
//!   a process's cgroup ancestors.
//! - [`interfaces`] and [`addrs`]: the interfaces to protect, rtnetlink notifications, and the
//!   host's own addresses for the reject path.
//! - [`btf`] and [`exe_id`]: how the kernel program and the daemon name an executable alike.
//! - [`selectors`]: what the rules' selectors resolve to, and when to resolve them again.
//! - [`lookups`]: the addresses of the inbound rules' names, asked of DNS servers.
//! - [`listeners`] and [`owners`]: the owners of sockets bound before the daemon, and names
//!   for recorded owners.
pub mod addrs;
pub mod btf;
pub mod cgroups;
pub mod exe_id;
pub mod interfaces;
pub mod listeners;
pub mod lookups;
pub mod owners;
pub mod procfs;
pub mod selectors;
pub mod sock_diag;
