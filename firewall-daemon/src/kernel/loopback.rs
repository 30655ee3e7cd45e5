//! The loopback program: TC egress on `lo` of the daemon's network namespace, reading the DNS
//! queries the host's programs send to a resolver on the host and its answers
//! (`firewall-ebpf/src/dns.rs` says why there, and why only this namespace's `lo`).
//!
//! It holds no rules: it is loaded from a copy of the object of its own and attached while the
//! rules read names ([`sync`]: at start, and after every reload), detached when they stop;
//! `DNS_ON` tells it what the rules in force want. Where the kernel has TCX (6.6) its link is
//! pinned as `links/dns-lo`, a name no interface's link has, so the interfaces' bookkeeping
//! leaves it alone; before TCX it is a cls_bpf filter at the egress filters' priority and
//! handle, found again by that and removed by program name, its program pinned as
//! `links/dns-lo-filter` to say so.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aya::{Ebpf, programs::SchedClassifier};
use firewall_common::maps;

use super::{
    hooks::bare_copy,
    links::{self, EgressLink, LINK_DIR},
    object::{program_mut, verifier_context},
};

/// The loopback device: `lo` in every network namespace.
const LO: &str = "lo";

/// Where the TCX link is pinned.
fn pin(pin_dir: &Path) -> PathBuf {
    pin_dir.join(LINK_DIR).join("dns-lo")
}

/// Where the program is pinned while it is a cls_bpf filter (which has no link to pin): what
/// says it is attached (bpffs holds pins only).
fn netlink_marker(pin_dir: &Path) -> PathBuf {
    pin_dir.join(LINK_DIR).join("dns-lo-filter")
}

/// A copy of the object with the loopback program and its reader loaded (the reader in
/// `DNS_LOOPBACK_PROGS`), nothing attached.
pub(super) fn load(pin_dir: &Path) -> anyhow::Result<Ebpf> {
    let mut ebpf = bare_copy(pin_dir, |_| {})?;
    let reader: &mut SchedClassifier = program_mut(
        &mut ebpf,
        firewall_common::DNS_LOOPBACK_READ_PROGRAM,
        "a TC program",
    )?;
    reader.load().map_err(verifier_context)?;
    let fd = reader
        .fd()
        .context("the loopback reader's fd")?
        .try_clone()?;
    let mut slots: aya::maps::ProgramArray<&mut aya::maps::MapData> =
        aya::maps::ProgramArray::try_from(
            ebpf.map_mut(maps::DNS_LOOPBACK_PROGS)
                .context("the object has no DNS_LOOPBACK_PROGS")?,
        )?;
    slots
        .set(0, &fd, 0)
        .context("putting the loopback reader in DNS_LOOPBACK_PROGS")?;
    let prog: &mut SchedClassifier = program_mut(
        &mut ebpf,
        firewall_common::DNS_LOOPBACK_PROGRAM,
        "a TC program",
    )?;
    prog.load().map_err(verifier_context)?;
    Ok(ebpf)
}

/// Loads the loopback program and attaches it to `lo`, in place of one attached before (a
/// previous daemon's, or this one's).
fn attach(pin_dir: &Path) -> anyhow::Result<()> {
    let mut ebpf = load(pin_dir)?;
    let prog: &mut SchedClassifier = program_mut(
        &mut ebpf,
        firewall_common::DNS_LOOPBACK_PROGRAM,
        "a TC program",
    )?;
    let link = links::attach_egress(prog, LO).context("attaching the loopback program to lo")?;
    match links::pin_egress_link(link, &pin(pin_dir))? {
        EgressLink::Tcx(_) => {}
        EgressLink::Netlink { .. } => {
            let marker = netlink_marker(pin_dir);
            let _ = std::fs::remove_file(&marker);
            prog.pin(&marker).with_context(|| {
                format!(
                    "pinning the loopback filter's program at {}",
                    marker.display()
                )
            })?;
        }
    }
    Ok(())
}

/// Whether the loopback program is attached.
pub fn attached(pin_dir: &Path) -> bool {
    pin(pin_dir).exists() || netlink_marker(pin_dir).exists()
}

/// Detaches the loopback program (if attached).
pub fn detach(pin_dir: &Path) {
    let _ = std::fs::remove_file(pin(pin_dir));
    if std::fs::remove_file(netlink_marker(pin_dir)).is_ok() {
        links::detach_netlink_program(LO, firewall_common::DNS_LOOPBACK_PROGRAM);
    }
}

/// Attaches the loopback program when `reads_names` and it is not attached (`fresh`: attach
/// it again in any case, this daemon's program in place of an older one's), detaches it when
/// not.
pub fn sync(reads_names: bool, fresh: bool, pin_dir: &Path) -> anyhow::Result<()> {
    if !reads_names {
        detach(pin_dir);
        return Ok(());
    }
    if let Some(start) = unprivileged_port_start()
        && start <= 53
    {
        detach(pin_dir);
        anyhow::bail!(
            "net.ipv4.ip_unprivileged_port_start is {start} in this network namespace: any \
             user may bind port 53 and answer queries over lo, so lo is not read (set it above \
             53 and reload)"
        );
    }
    if fresh || !attached(pin_dir) {
        attach(pin_dir)?;
    }
    Ok(())
}

/// `net.ipv4.ip_unprivileged_port_start` of the daemon's network namespace (the sysctl is per
/// namespace), if it can be read. What the loopback program trusts is that only a process
/// allowed to bind a port below 1024 sends from port 53 over `lo`; with this at 53 or below,
/// any user's can.
fn unprivileged_port_start() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()?
        .trim()
        .parse()
        .ok()
}
