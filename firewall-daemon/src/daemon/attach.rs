//! Where the firewall runs: attaching (or adopting) the XDP and egress programs on each
//! interface and the outbound hooks on the cgroup, pinning their links, following interfaces
//! as they come and go, and moving the hooks between generations on a reload.
//!
//! Every attachment is a pinned bpf link, so a daemon that stops with `on_stop = "keep"` (or
//! dies) leaves the firewall enforcing and the next daemon adopts the links instead of
//! attaching anew: the datapath never has a moment without a program.

use std::path::Path;

use aya::programs::{cgroup_sock_addr::CgroupSockAddrLink, xdp::XdpLink};
use firewall_common::identity::Listener;
use log::{error, info, warn};

use super::State;
use crate::{
    host::addrs::HostMaps,
    host::cgroups::{self, Cgroup},
    host::interfaces::{self, LinkLayer},
    host::listeners,
    kernel::{self, EgressLink, Generation, Hook, ListenerTable, OutboundGeneration},
};
use rules::model::XdpMode;

pub(super) struct Attached {
    pub(super) ifname: String,
    /// The interface's index when attached: a new interface with the same name is another one.
    pub(super) ifindex: u32,
    pub(super) mode: &'static str,
    /// Which entry points it runs (Ethernet or IP frames).
    pub(super) layer: LinkLayer,
    pub(super) link: XdpLink,
    /// None only while a reload is moving it.
    pub(super) egress: Option<EgressLink>,
    /// "tcx" or "netlink", kept for status while `egress` is moving.
    pub(super) egress_kind: &'static str,
}

/// The outbound hooks' attachments to the cgroup, one pinned link per hook.
pub(super) type HookLinks = Vec<(Hook, CgroupSockAddrLink)>;

/// Why an interface of a link layer the firewall cannot parse is not protected.
pub(super) fn unsupported_reason(iface: &interfaces::IfInfo) -> String {
    format!(
        "NOT protected: link layer {}: the firewall parses only Ethernet frames and frames \
         that start at the IP header",
        iface.link.describe()
    )
}

/// Brings the reject path's view of the host's addresses up to date; a failure only costs
/// replies (rejects degrade to drops), so it is logged, not fatal.
pub(super) fn sync_host_addrs(host: &mut HostMaps) {
    match host.sync() {
        Ok(0) => {}
        Ok(n) => warn!(
            "{n} interface or address entries did not fit the reject path's maps: rejects to \
             them are silent drops"
        ),
        Err(e) => warn!("updating the host's addresses for reject replies: {e:#}"),
    }
}

/// Attaches (or adopts) the egress and XDP programs on one interface and pins both links.
/// Egress goes first so the host's new flows are recorded before inbound filtering starts.
pub(super) fn attach_interface(
    generation: &mut Generation,
    iface: &interfaces::IfInfo,
    mode: XdpMode,
    pin_dir: &Path,
) -> anyhow::Result<Attached> {
    let ifname = iface.name.as_str();
    let layer = iface.link;
    let egress_pin = kernel::link_pin(pin_dir, "egress", ifname);
    let egress = kernel::adopt_or_attach(
        generation,
        ifname,
        &egress_pin,
        iface.index,
        |g, link| g.replace_egress(EgressLink::Tcx(link), layer),
        |g| g.attach_egress(ifname, layer),
    )?;
    let egress = kernel::pin_egress_link(egress, &egress_pin)?;
    let egress_kind = egress.kind();
    let xdp_pin = kernel::link_pin(pin_dir, "xdp", ifname);
    let (link, mode) = kernel::adopt_or_attach(
        generation,
        ifname,
        &xdp_pin,
        iface.index,
        |g, link| {
            let link = g.replace(link, layer)?;
            info!("{ifname}: adopting the pinned attachment of a previous daemon");
            Ok((link, "adopted"))
        },
        |g| g.attach(ifname, mode, layer),
    )?;
    let link = kernel::pin_xdp_link(link, &xdp_pin)?;
    info!(
        interface = ifname;
        "attached to {ifname} ({mode} mode; link layer {}; egress {egress_kind})",
        layer.describe()
    );
    Ok(Attached {
        ifname: ifname.to_string(),
        ifindex: iface.index,
        mode,
        layer,
        link,
        egress: Some(egress),
        egress_kind,
    })
}

/// Attaches (or adopts) the outbound hooks on `cgroup` and pins their links. A link a previous
/// daemon left on another cgroup is replaced by one on this cgroup (attached first, then the
/// old pin is removed, which detaches it).
pub(super) fn attach_hooks(
    out: &mut OutboundGeneration,
    cgroup: &Cgroup,
    pin_dir: &Path,
) -> anyhow::Result<HookLinks> {
    let mut links = Vec::new();
    for hook in Hook::ALL {
        let pin = kernel::hook_pin(pin_dir, hook);
        let adoptable = pin.exists()
            && match cgroups::link_target(&pin) {
                Ok(t) if t.cgroup_id == cgroup.id && t.attach_type == hook.attach_type() => true,
                Ok(t) => {
                    info!(
                        "the {} hook a previous daemon left is attached to cgroup id {}; \
                         moving it to {} (id {})",
                        hook.name(),
                        t.cgroup_id,
                        cgroup.path.display(),
                        cgroup.id
                    );
                    false
                }
                Err(e) => {
                    warn!("{e:#}; attaching the {} hook afresh", hook.name());
                    false
                }
            };
        let adopted = if adoptable {
            match kernel::adopt_link::<CgroupSockAddrLink>(&pin) {
                Ok(link) => link,
                Err(e) => {
                    warn!("{e:#}; attaching the {} hook afresh", hook.name());
                    None
                }
            }
        } else {
            None
        };
        let link = match adopted {
            Some(link) => {
                info!(
                    "{}: adopting the pinned attachment of a previous daemon",
                    hook.name()
                );
                out.replace(hook, link)?
            }
            None => out.attach(hook, cgroup)?,
        };
        links.push((hook, kernel::pin_hook_link(link, &pin)?));
    }
    info!(
        "outbound hooks (connect4, connect6, sendmsg4, sendmsg6) attached to the cgroup {}",
        cgroup.path.display()
    );
    Ok(links)
}

/// Attaches the listener hooks and fills the listener table with the sockets bound before
/// they ran. A fresh start forgets what the table held (sockets may have closed while no hook
/// ran); an adopting start keeps it, since the previous daemon's hooks kept it current.
pub(super) fn start_listener_table(
    cgroup: &Cgroup,
    pin_dir: &Path,
    adopting: bool,
    degraded: &mut Vec<String>,
) -> anyhow::Result<usize> {
    let mut table = ListenerTable::open(pin_dir)?;
    if !adopting {
        table.clear();
    }
    kernel::attach_listener_hooks(cgroup, pin_dir)?;
    let report = match listeners::bound_sockets_report() {
        Ok(r) => r,
        Err(e) => {
            warn!("could not list bound sockets: {e:#}");
            degraded.push(format!(
                "the sockets bound before the daemon started could not be listed ({e:#}): \
                 inbound rules that name programs do not match them until they bind again"
            ));
            return Ok(0);
        }
    };
    if report.unowned > 0 {
        info!(
            "{} bound socket(s) have no process this daemon can see; not recorded",
            report.unowned
        );
    }
    let mut n = 0;
    for s in report.sockets {
        let listener = Listener {
            owner: s.owner,
            cookie: s.cookie,
        };
        if table.seed(s.key, listener)? {
            n += 1;
        }
    }
    Ok(n)
}

/// Moves every hook link to `to`'s programs. If one cannot be moved, every hook is put back on
/// `from`'s programs (re-opened from its pin: a failed update leaves a pinned link attached)
/// and the error is returned with the links as they were.
pub(super) fn switch_hooks(
    links: HookLinks,
    to: &mut OutboundGeneration,
    from: &mut OutboundGeneration,
    pin_dir: &Path,
) -> (HookLinks, Option<anyhow::Error>) {
    let mut moved = Vec::new();
    let mut failure = None;
    for (hook, link) in links {
        if failure.is_some() {
            moved.push((hook, link));
            continue;
        }
        match to.replace(hook, link) {
            Ok(link) => moved.push((hook, link)),
            Err(e) => failure = Some((hook, e)),
        }
    }
    let Some((failed, e)) = failure else {
        return (moved, None);
    };
    let mut back = Vec::new();
    for hook in Hook::ALL {
        let link = match moved.iter().position(|(h, _)| *h == hook) {
            Some(i) => Some(moved.swap_remove(i).1),
            None => kernel::adopt_link::<CgroupSockAddrLink>(&kernel::hook_pin(pin_dir, hook))
                .ok()
                .flatten(),
        };
        let Some(link) = link else {
            error!("{}: the hook's pinned link is gone", hook.name());
            continue;
        };
        match from.replace(hook, link) {
            Ok(link) => back.push((hook, link)),
            Err(e2) => error!(
                "{}: rolling the outbound hook back failed: {e2:#}",
                hook.name()
            ),
        }
    }
    (
        back,
        Some(e.context(format!(
            "switching the {} hook to the new rules",
            failed.name()
        ))),
    )
}

/// Unpins links a previous daemon left on interfaces this one does not protect (which
/// detaches them).
pub(super) fn forget_other_links(pin_dir: &Path, ifnames: &[String]) {
    let Ok(dir) = std::fs::read_dir(pin_dir.join(kernel::LINK_DIR)) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // The outbound hooks' links are not about an interface.
        let Some(ifname) = kernel::link_interface(&name) else {
            continue;
        };
        if !ifnames.iter().any(|i| i == ifname) {
            info!("detaching from {ifname}, which is no longer configured");
            if name.starts_with("xdp-") {
                kernel::detach_netlink_egress(ifname);
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl State {
    /// Follows the interfaces: attaches to wanted ones that appeared, forgets those that went
    /// away (the kernel detached their programs with them).
    pub(super) fn reconcile_interfaces(&mut self) {
        sync_host_addrs(&mut self.host);
        let all = match interfaces::current() {
            Ok(all) => all,
            Err(e) => {
                warn!("{e:#}");
                return;
            }
        };
        let pin_dir = self.ruleset.daemon.pin_dir.clone();
        self.attached.retain(|a| {
            let present = all.get(&a.ifname).is_some_and(|i| i.index == a.ifindex);
            if !present {
                info!(interface = a.ifname.as_str(); "{} went away; no longer protecting it", a.ifname);
                for kind in ["xdp", "egress"] {
                    let _ = std::fs::remove_file(kernel::link_pin(&pin_dir, kind, &a.ifname));
                }
            }
            present
        });
        let wanted = interfaces::wanted(&self.interfaces, &all);
        self.waiting = wanted.missing;
        let mut unprotected = Vec::new();
        for iface in &wanted.unsupported {
            let why = unsupported_reason(iface);
            if !self.unprotected.iter().any(|(n, _)| *n == iface.name) {
                // Named or not: it exists now, and the daemon cannot stop over it any more.
                error!("{}: {why}", iface.name);
            }
            unprotected.push((iface.name.clone(), why));
        }
        for iface in wanted.attach {
            if self.attached.iter().any(|a| a.ifname == iface.name) {
                continue;
            }
            match attach_interface(
                &mut self.generation,
                &iface,
                self.ruleset.daemon.xdp_mode,
                &pin_dir,
            ) {
                Ok(a) => {
                    info!(interface = a.ifname.as_str(); "{} appeared; protecting it", a.ifname);
                    self.attached.push(a);
                }
                Err(e) => {
                    if !self.unprotected.iter().any(|(n, _)| *n == iface.name) {
                        warn!("{}: NOT protected: {e:#}", iface.name);
                    }
                    unprotected.push((iface.name.clone(), format!("NOT protected: {e:#}")));
                }
            }
        }
        self.unprotected = unprotected;
    }
}
