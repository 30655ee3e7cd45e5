//! Attachments (bpf links): how a generation's programs get onto interfaces and cgroups, and
//! stay there.
//!
//! Enforcement goes through links, not through the programs: a pinned link keeps its program
//! attached after the daemon is gone, the next daemon adopts it, and switching generations is
//! one `bpf_link_update` per link, so no packet ever meets an interface without a program. The
//! TC egress program has no link before TCX (Linux 6.6): there it is a cls_bpf filter at a
//! fixed priority and handle, found again by those rather than by a pin.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use aya::programs::{
    NetworkInterface, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode,
    cgroup_sock_addr::CgroupSockAddrLink,
    links::{FdLink, LinkError, LinkOrder, PinnedLink},
    tc::{NlOptions, SchedClassifierLink, TcAttach, TcHandle},
    xdp::{XdpLink, XdpLinkId},
};
use firewall_common::maps::{self, Kind};
use log::warn;

use super::pins::PROGRAM_PIN;
use rules::model::XdpMode;

/// Directory under the pin directory holding the attachments (bpf links), one per interface
/// and hook: while pinned they keep enforcing after the daemon is gone.
pub const LINK_DIR: &str = "links";

/// Removes everything this daemon pins under `pin_dir`, and the directory if it is then empty.
/// Removing a link's pin detaches it once the daemon's own handle is closed; the egress filters
/// of kernels without TCX, which have no pin, are detached from every interface with a pinned
/// link pin.
pub fn remove_pins(pin_dir: &Path) {
    let maps = maps::MAPS
        .iter()
        .filter(|m| matches!(m.kind, Kind::Generation | Kind::Shared))
        .map(|m| m.name);
    for name in std::iter::once(PROGRAM_PIN).chain(maps) {
        let _ = std::fs::remove_file(pin_dir.join(name));
    }
    super::loopback::detach(pin_dir);
    let links = pin_dir.join(LINK_DIR);
    if let Ok(dir) = std::fs::read_dir(&links) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(ifname) = link_interface(&name) {
                detach_netlink_egress(ifname);
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(&links);
    let _ = std::fs::remove_dir(pin_dir);
}

/// Attaches the egress program `prog` to `ifname`: a TCX link where the kernel has TCX (Linux
/// 6.6), else a cls_bpf filter under a clsact qdisc. A filter a previous daemon left at
/// our priority and handle is replaced in place rather than joined by a second one.
pub(super) fn attach_egress(
    prog: &mut SchedClassifier,
    ifname: &str,
) -> anyhow::Result<EgressLink> {
    let cname =
        std::ffi::CString::new(ifname).with_context(|| format!("interface name {ifname:?}"))?;
    let iface = || NetworkInterface::Name(&cname);
    let tcx = TcAttach::Tcx {
        attach_type: TcAttachType::Egress,
        order: LinkOrder::default(),
    };
    let tcx_err = match prog.attach(iface(), tcx) {
        Ok(id) => {
            let link = prog.take_link(id).context("taking the egress link")?;
            return Ok(EgressLink::Tcx(link));
        }
        Err(e) => e,
    };
    let ifindex = nix::net::if_::if_nametoindex(cname.as_c_str())
        .with_context(|| format!("interface {ifname}"))?;
    // Before TCX, cls_bpf needs a clsact qdisc; it may already exist.
    let _ = aya::programs::tc::qdisc_add_clsact(iface());
    if let Ok(link) = (EgressLink::Netlink { ifindex }).netlink_handle()
        && let Ok(id) = prog.attach_to_link(link)
    {
        forget_netlink(prog.take_link(id))?;
        return Ok(EgressLink::Netlink { ifindex });
    }
    let options = NlOptions {
        priority: EGRESS_NL_PRIORITY,
        handle: TcHandle::new(0, EGRESS_NL_HANDLE),
        classid: None,
    };
    let id = prog
        .attach(
            iface(),
            TcAttach::Netlink {
                parent: TcAttachType::Egress.into(),
                options,
            },
        )
        .map_err(|e| anyhow!("attaching the egress program to {ifname}: {e} (TCX: {tcx_err})"))?;
    forget_netlink(prog.take_link(id))?;
    Ok(EgressLink::Netlink { ifindex })
}

/// Atomically replaces the program an egress attachment runs with `prog`
/// (`bpf_link_update` for TCX, a cls_bpf replace for netlink).
pub(super) fn replace_egress(
    prog: &mut SchedClassifier,
    link: EgressLink,
) -> anyhow::Result<EgressLink> {
    match link {
        EgressLink::Tcx(link) => {
            let id = prog
                .attach_to_link(link)
                .context("replacing the egress program (bpf_link_update)")?;
            Ok(EgressLink::Tcx(
                prog.take_link(id).context("taking the egress link")?,
            ))
        }
        EgressLink::Netlink { ifindex } => {
            let handle = (EgressLink::Netlink { ifindex }).netlink_handle()?;
            let id = prog
                .attach_to_link(handle)
                .context("replacing the egress filter (cls_bpf)")?;
            forget_netlink(prog.take_link(id))?;
            Ok(EgressLink::Netlink { ifindex })
        }
    }
}

/// Atomically replaces whatever program the XDP `link` runs with `prog`.
pub(super) fn replace_xdp(prog: &mut Xdp, link: XdpLink) -> anyhow::Result<XdpLink> {
    let id = prog
        .attach_to_link(link)
        .context("replacing the attached program (bpf_link_update)")?;
    take(prog, id)
}

pub(super) fn attach_xdp(
    prog: &mut Xdp,
    ifname: &str,
    mode: XdpMode,
) -> anyhow::Result<(XdpLink, &'static str)> {
    let tries: &[(AyaXdpMode, &'static str)] = match mode {
        XdpMode::Native => &[(AyaXdpMode::Driver, "native")],
        XdpMode::Generic => &[(AyaXdpMode::Skb, "generic")],
        XdpMode::Auto => &[(AyaXdpMode::Driver, "native"), (AyaXdpMode::Skb, "generic")],
    };
    let cname =
        std::ffi::CString::new(ifname).with_context(|| format!("interface name {ifname:?}"))?;
    let mut last = None;
    for (flags, name) in tries {
        match prog.attach(NetworkInterface::Name(&cname), *flags) {
            Ok(id) => return Ok((take(prog, id)?, name)),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow!(
        "attaching XDP to {ifname}: {}",
        last.map(|e| format!("{e:#}"))
            .unwrap_or_else(|| "no mode".into())
    ))
}

fn take(prog: &mut Xdp, id: XdpLinkId) -> anyhow::Result<XdpLink> {
    prog.take_link(id)
        .context("taking ownership of the XDP link")
}

/// Where the link of `kind` ("xdp" or "egress") on `ifname` is pinned.
pub fn link_pin(pin_dir: &Path, kind: &str, ifname: &str) -> PathBuf {
    pin_dir.join(LINK_DIR).join(format!("{kind}-{ifname}"))
}

/// The interface a pin name under [`LINK_DIR`] is about (`xdp-eth0`, `egress-eth0`), or `None`
/// for the outbound hooks' pins (`cgroup-connect4`, ...).
pub fn link_interface(pin_name: &str) -> Option<&str> {
    match pin_name.split_once('-') {
        Some(("xdp" | "egress", ifname)) => Some(ifname),
        _ => None,
    }
}

/// Pins `link` so the attachment outlives the daemon; returns it, still usable.
fn pin_link<L>(link: L, path: &Path) -> anyhow::Result<L>
where
    L: TryFrom<FdLink, Error = LinkError>,
    FdLink: TryFrom<L, Error = LinkError>,
{
    let fd = FdLink::try_from(link).context("an attachment without a bpf link")?;
    let pinned = pin_fd_link(fd, path)?;
    L::try_from(FdLink::from(pinned)).context("re-opening the pinned link")
}

pub fn pin_xdp_link(link: XdpLink, path: &Path) -> anyhow::Result<XdpLink> {
    pin_link(link, path)
}

/// As [`pin_xdp_link`], for an outbound hook's link on the cgroup.
pub fn pin_hook_link(link: CgroupSockAddrLink, path: &Path) -> anyhow::Result<CgroupSockAddrLink> {
    pin_link(link, path)
}

/// As [`pin_xdp_link`]; a netlink (pre-TCX) filter cannot be pinned and needs not be: it stays
/// until detached.
pub fn pin_egress_link(link: EgressLink, path: &Path) -> anyhow::Result<EgressLink> {
    match link {
        EgressLink::Tcx(link) => Ok(EgressLink::Tcx(pin_link(link, path)?)),
        netlink => Ok(netlink),
    }
}

/// Priority and handle of the egress cls_bpf filter on kernels without TCX. Fixed, so a
/// daemon finds the filter a killed one left (it cannot be pinned) and replaces it.
pub const EGRESS_NL_PRIORITY: u16 = 0x4657;
pub const EGRESS_NL_HANDLE: u16 = 0x4657;

/// The egress program's attachment to one interface.
#[derive(Debug)]
pub enum EgressLink {
    /// A TCX bpf link (Linux 6.6 and later), pinned like the XDP link.
    Tcx(SchedClassifierLink),
    /// A cls_bpf filter under the clsact qdisc at [`EGRESS_NL_PRIORITY`]/[`EGRESS_NL_HANDLE`]
    /// (older kernels). Nothing detaches it but [`detach_netlink_egress`] or the interface
    /// going away, so `on_stop = "keep"` and a killed daemon leave it recording flows.
    Netlink { ifindex: u32 },
}

impl EgressLink {
    /// "tcx" or "netlink", for status and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            EgressLink::Tcx(_) => "tcx",
            EgressLink::Netlink { .. } => "netlink",
        }
    }

    fn netlink_handle(&self) -> anyhow::Result<SchedClassifierLink> {
        let EgressLink::Netlink { ifindex } = *self else {
            bail!("not a netlink attachment");
        };
        SchedClassifierLink::attached(
            NetworkInterface::Index(ifindex),
            TcAttachType::Egress.into(),
            EGRESS_NL_PRIORITY,
            TcHandle::new(0, EGRESS_NL_HANDLE),
            None,
        )
        .context("naming the egress filter")
    }
}

/// aya detaches a netlink filter when its link handle is dropped; ours must outlive the
/// handle (reloads replace it in place, `on_stop = "keep"` leaves it), so the handle, which
/// holds no file descriptor, is forgotten and the filter detached explicitly.
fn forget_netlink(link: Result<SchedClassifierLink, ProgramError>) -> anyhow::Result<()> {
    std::mem::forget(link.context("taking the egress filter")?);
    Ok(())
}

/// Removes the egress cls_bpf filters (ours, by program name) from `ifname`, if any. On
/// kernels with TCX there are none and this does nothing.
pub fn detach_netlink_egress(ifname: &str) {
    detach_netlink_program(ifname, firewall_common::TC_EGRESS_PROGRAM);
}

/// Removes the egress cls_bpf filters of `program` from `ifname`, if any.
pub fn detach_netlink_program(ifname: &str, program: &str) {
    let Ok(cname) = std::ffi::CString::new(ifname) else {
        return;
    };
    match aya::programs::tc::qdisc_detach_program(
        NetworkInterface::Name(&cname),
        TcAttachType::Egress.into(),
        // cls_bpf records the program's name with the filter.
        program,
    ) {
        Ok(()) => {}
        Err(aya::programs::tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {
        }
        Err(e) => warn!("{ifname}: removing the egress filter: {e}"),
    }
}

pub(super) fn pin_fd_link(fd: FdLink, path: &Path) -> anyhow::Result<PinnedLink> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    fd.pin(path)
        .with_context(|| format!("pinning the link at {}", path.display()))
}

/// The program a pinned link runs now, or `None` if the pin is gone.
pub fn pinned_link_program(path: &Path) -> Option<u32> {
    let pinned = PinnedLink::from_pin(path).ok()?;
    FdLink::from(pinned).info().ok().map(|i| i.program_id())
}

/// The link (XDP or TCX) a previous daemon left pinned at `path`, if any.
pub fn adopt_link<L: TryFrom<FdLink, Error = LinkError>>(path: &Path) -> anyhow::Result<Option<L>> {
    if !path.exists() {
        return Ok(None);
    }
    let pinned = PinnedLink::from_pin(path)
        .with_context(|| format!("opening the pinned link {}", path.display()))?;
    let link = L::try_from(FdLink::from(pinned))
        .with_context(|| format!("{} is not a link of the expected kind", path.display()))?;
    Ok(Some(link))
}

/// bpf_link_type of an XDP and of a TCX link.
const BPF_LINK_TYPE_XDP: u32 = 6;
const BPF_LINK_TYPE_TCX: u32 = 11;

/// As [`adopt_link`], for the XDP or TCX link pinned at `path` for the interface with index
/// `ifindex`. A link whose interface is gone (deleted, perhaps created again under the same
/// name with another index) is severed: the kernel reports its interface as 0 and refuses to
/// update it (ENOLINK). Such a pin is removed and `None` returned, so the caller attaches
/// afresh instead of failing on the leftover.
pub fn adopt_interface_link<L: TryFrom<FdLink, Error = LinkError>>(
    path: &Path,
    ifindex: u32,
) -> anyhow::Result<Option<L>> {
    if !path.exists() {
        return Ok(None);
    }
    let info = crate::host::cgroups::links::pinned_link_info(path)?;
    let link_type = info[0] as u32;
    if link_type != BPF_LINK_TYPE_XDP && link_type != BPF_LINK_TYPE_TCX {
        bail!(
            "{} is not an XDP or TCX link (link type {link_type})",
            path.display()
        );
    }
    // Both link types start their member with the interface index.
    let attached_to = info[2] as u32;
    if attached_to != ifindex {
        log::info!(
            "the link a previous daemon pinned at {} belongs to {}; unpinning it and attaching \
             afresh",
            path.display(),
            if attached_to == 0 {
                "an interface that no longer exists".to_string()
            } else {
                format!("interface index {attached_to}, not {ifindex}")
            }
        );
        std::fs::remove_file(path)
            .with_context(|| format!("unpinning the severed link {}", path.display()))?;
        return Ok(None);
    }
    adopt_link(path)
}

/// Takes over, with `adopt`, the XDP or TCX link a previous daemon pinned at `pin` for the
/// interface `ifname` (index `ifindex`), or attaches afresh with `attach` when there is none.
/// A leftover link that cannot be taken over (it belongs to another interface, or its
/// interface went away between the check and the update) is unpinned and replaced by a fresh
/// attachment rather than failing the start. `state` is what both closures work on (the
/// generation).
pub fn adopt_or_attach<S, L, T>(
    state: &mut S,
    ifname: &str,
    pin: &Path,
    ifindex: u32,
    adopt: impl FnOnce(&mut S, L) -> anyhow::Result<T>,
    attach: impl FnOnce(&mut S) -> anyhow::Result<T>,
) -> anyhow::Result<T>
where
    L: TryFrom<FdLink, Error = LinkError>,
{
    match adopt_interface_link::<L>(pin, ifindex) {
        Ok(Some(link)) => match adopt(state, link) {
            Ok(adopted) => return Ok(adopted),
            Err(e) => warn!("{ifname}: {e:#}; attaching afresh"),
        },
        Ok(None) => return attach(state),
        Err(e) => warn!("{ifname}: {e:#}; attaching afresh"),
    }
    // Gone already or not, the fresh attachment is pinned there next.
    let _ = std::fs::remove_file(pin);
    attach(state)
}
