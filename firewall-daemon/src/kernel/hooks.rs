//! The cgroup hooks: the outbound rules' four socket-address hooks and the listener hooks.
//!
//! The outbound hooks judge a host program's connect() and sendmsg() against the outbound
//! rules; they belong to the outbound generation and move with it. The listener hooks hold no
//! rules: they keep the listener table (`LISTENERS`) that inbound rules naming programs read,
//! so they are loaded once per start from a bare copy of the object and left alone by reloads.
//! Both are attached with bpf links pinned under [`LINK_DIR`].

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, links::FdLink, links::PinnedLink},
};
use firewall_common::maps::{self, Capacity};

use super::{
    links::{LINK_DIR, pin_fd_link},
    object::{program_mut, verifier_context},
    pins::{pinned_capacity, prepare_pin_dir},
};
use crate::{EBPF_OBJECT, host::cgroups::Cgroup};

/// The outbound hooks, each a `cgroup_sock_addr` program attached to the configured cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// connect() of IPv4 TCP and UDP sockets.
    Connect4,
    /// connect() of IPv6 sockets (also to IPv4-mapped addresses).
    Connect6,
    /// sendto()/sendmsg() with an address on IPv4 UDP sockets.
    Sendmsg4,
    /// sendto()/sendmsg() with an address on IPv6 UDP sockets.
    Sendmsg6,
}

impl Hook {
    pub const ALL: [Hook; 4] = [
        Hook::Connect4,
        Hook::Connect6,
        Hook::Sendmsg4,
        Hook::Sendmsg6,
    ];

    /// "connect4", ...: the kernel's attach point, for status and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Connect4 => "connect4",
            Hook::Connect6 => "connect6",
            Hook::Sendmsg4 => "sendmsg4",
            Hook::Sendmsg6 => "sendmsg6",
        }
    }

    pub const fn program(self) -> &'static str {
        match self {
            Hook::Connect4 => firewall_common::CONNECT4_PROGRAM,
            Hook::Connect6 => firewall_common::CONNECT6_PROGRAM,
            Hook::Sendmsg4 => firewall_common::SENDMSG4_PROGRAM,
            Hook::Sendmsg6 => firewall_common::SENDMSG6_PROGRAM,
        }
    }

    /// `enum bpf_attach_type` of the hook, as link info reports it.
    pub const fn attach_type(self) -> u32 {
        match self {
            Hook::Connect4 => 10, // BPF_CGROUP_INET4_CONNECT
            Hook::Connect6 => 11, // BPF_CGROUP_INET6_CONNECT
            Hook::Sendmsg4 => 14, // BPF_CGROUP_UDP4_SENDMSG
            Hook::Sendmsg6 => 15, // BPF_CGROUP_UDP6_SENDMSG
        }
    }
}

/// The context of a failed attachment of a cgroup hook (outbound or listener).
pub(super) fn attaching(hook: &str, cgroup: &Cgroup) -> String {
    format!(
        "attaching the {hook} hook to the cgroup {}",
        cgroup.path.display()
    )
}

/// Where the link of an outbound hook is pinned: `links/cgroup-connect4`, ...
pub fn hook_pin(pin_dir: &Path, hook: Hook) -> PathBuf {
    pin_dir
        .join(LINK_DIR)
        .join(format!("cgroup-{}", hook.name()))
}

/// The program of `hook` in `ebpf`.
pub(super) fn hook_program(ebpf: &mut Ebpf, hook: Hook) -> anyhow::Result<&mut CgroupSockAddr> {
    program_mut(ebpf, hook.program(), "a cgroup_sock_addr program")
}

/// The hooks that keep the listener table (`LISTENERS`): who bound each local address and
/// port, read by the XDP program for new inbound connections when inbound rules name programs.
/// They hold no rules, so a reload leaves them alone; each start attaches fresh ones (the new
/// code) before removing what a previous daemon pinned, so there is no moment without them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockHook {
    PostBind4,
    PostBind6,
    Release,
}

impl SockHook {
    pub const ALL: [SockHook; 3] = [SockHook::PostBind4, SockHook::PostBind6, SockHook::Release];

    pub const fn name(self) -> &'static str {
        match self {
            SockHook::PostBind4 => "post_bind4",
            SockHook::PostBind6 => "post_bind6",
            SockHook::Release => "sock_release",
        }
    }

    const fn program(self) -> &'static str {
        match self {
            SockHook::PostBind4 => firewall_common::POST_BIND4_PROGRAM,
            SockHook::PostBind6 => firewall_common::POST_BIND6_PROGRAM,
            SockHook::Release => firewall_common::SOCK_RELEASE_PROGRAM,
        }
    }
}

/// A copy of the object for hooks that hold no rules, its maps the pinned ones; `configure`
/// sets the loader's globals.
pub(super) fn bare_copy<'a>(
    pin_dir: &'a Path,
    configure: impl FnOnce(&mut EbpfLoader<'a>),
) -> anyhow::Result<Ebpf> {
    prepare_pin_dir(pin_dir)?;
    let mut loader = EbpfLoader::new();
    super::diagnostics::set_level(&mut loader);
    configure(&mut loader);
    // The object declares every shared map; these open the ones the generations pinned, so
    // the tables sized from `[conntrack]` take their pinned size (1 where none is pinned yet).
    for spec in maps::MAPS {
        if let Capacity::Conntrack(_) = spec.capacity {
            loader.map_max_entries(spec.name, pinned_capacity(pin_dir, spec.name)?.unwrap_or(1));
        }
    }
    loader
        .default_map_pin_directory(pin_dir)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")
}

/// Where a listener hook's link is pinned: `links/cgroup-post_bind4`, ...
pub fn sock_hook_pin(pin_dir: &Path, hook: SockHook) -> PathBuf {
    pin_dir
        .join(LINK_DIR)
        .join(format!("cgroup-{}", hook.name()))
}

/// Loads the listener hooks, attaches them to `cgroup` and pins their links, replacing links a
/// previous daemon pinned (attached first, then the old pin removed). Without the kernel
/// offsets for program identity the hooks still record uid and cgroups.
pub fn attach_listener_hooks(cgroup: &Cgroup, pin_dir: &Path) -> anyhow::Result<Vec<PinnedLink>> {
    let mut ebpf = bare_copy(pin_dir, |loader| {
        if let Ok(offsets) = crate::host::btf::kernel_offsets() {
            offsets.set_globals(loader);
        }
    })?;
    let mut pinned = Vec::new();
    for hook in SockHook::ALL {
        let name = hook.program();
        let prog: &mut CgroupSock = program_mut(&mut ebpf, name, "a cgroup_sock program")?;
        prog.load().map_err(verifier_context)?;
        let id = prog
            .attach(&cgroup.file, CgroupAttachMode::Single)
            .with_context(|| attaching(hook.name(), cgroup))?;
        let link = prog.take_link(id).context("taking the cgroup link")?;
        let fd: FdLink = link
            .try_into()
            .context("the cgroup link is not a bpf link")?;
        let pin = sock_hook_pin(pin_dir, hook);
        if pin.exists() {
            std::fs::remove_file(&pin)
                .with_context(|| format!("removing the previous pin {}", pin.display()))?;
        }
        pinned.push(pin_fd_link(fd, &pin)?);
    }
    Ok(pinned)
}
