//! A generation: one compiled rule set of one direction, loaded and ready to switch to.
//!
//! A generation is a freshly loaded copy of the object with its own rule maps, sized for and
//! filled with one compiled rule set before anything points at it. Switching generations is a
//! single `bpf_link_update` per link (see compile.md, "Atomic replacement"): per interface for
//! the inbound rules ([`Generation`]: the XDP and TC egress programs), per hook for the
//! outbound rules ([`OutboundGeneration`]: a second copy of the same object whose rule maps
//! hold the outbound rules, of which only the four cgroup hooks are loaded). Both are loaded
//! the same way (the private `load`), and differ only in which programs they load and attach.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, Xdp,
        cgroup_sock_addr::CgroupSockAddrLink, xdp::XdpLink,
    },
};
use firewall_common::{
    Counter,
    ct::CtConfig,
    dns::DnsOn,
    maps::{self, Kind},
};

use super::{
    hooks::{Hook, attaching, hook_program},
    links::{self, EgressLink},
    object::{load_object, program_mut, verifier_context},
    pins::PROGRAM_PIN,
    tables::{ct_config, map_mut, per_cpu_sums},
};
use crate::{
    compile::{Change, Compiled, Runtime},
    host::cgroups::Cgroup,
    host::interfaces::LinkLayer,
};
use rules::model::{Direction, Ruleset, XdpMode};

/// Loads a copy of the object for `compiled`, checking that it holds the rules of `direction`.
/// No program is loaded yet.
fn load(
    compiled: &Compiled,
    ruleset: &Ruleset,
    pin_dir: &Path,
    direction: Direction,
    id: u32,
) -> anyhow::Result<Ebpf> {
    if compiled.direction != direction {
        match direction {
            Direction::In => bail!("the XDP generation takes the inbound rules"),
            Direction::Out => bail!("the outbound generation takes the outbound rules"),
        }
    }
    load_object(compiled, ruleset, pin_dir, id)
}

pub struct Generation {
    /// Its trace messages' reader while kernel tracing is on (see `diagnostics`). Declared
    /// first, so dropped before the object.
    _trace: Option<super::diagnostics::Reader>,
    pub(super) ebpf: Ebpf,
    pub rule_count: u32,
    /// Identifies this rule set in connection entries ([`firewall_common::ct::CtEntry::generation`]).
    pub id: u32,
    /// Runtime sets' updates of these maps, when the rules name runtime sets.
    pub runtime: Option<Box<Runtime>>,
    /// What the loopback program reads while this generation is in force ([`Self::in_force`]).
    dns_on: DnsOn,
}

impl Generation {
    /// Loads new programs + maps for `compiled` (the inbound rules) and fills the maps. Nothing
    /// is attached. `id` must differ from the ids of earlier generations whose connections may
    /// still be listed.
    pub fn load(
        compiled: &Compiled,
        ruleset: &Ruleset,
        pin_dir: &Path,
        id: u32,
    ) -> anyhow::Result<Self> {
        let mut ebpf = load(compiled, ruleset, pin_dir, Direction::In, id)?;
        {
            let mut cfg: Array<&mut MapData, CtConfig> =
                Array::try_from(map_mut(&mut ebpf, maps::CT_CONFIG)?)?;
            cfg.set(0, &ct_config(&ruleset.conntrack, id), 0)
                .context("writing the conntrack settings")?;
        }
        // The Ethernet pair now; the pair for devices without a link layer when one is
        // attached (`prepare`, or the first `program_for`): verifying it is a quarter of a
        // reload's verifier time, and most hosts have no such device.
        load_pair(&mut ebpf, LinkLayer::Ethernet)?;
        if ruleset.reads_names() {
            load_dns(&mut ebpf)?;
        }
        // After the programs are loaded: the reader takes the ring buffer out of `ebpf`.
        let trace = super::diagnostics::read(&mut ebpf)?;
        Ok(Self {
            _trace: trace,
            ebpf,
            rule_count: compiled.rule_count,
            id,
            runtime: compiled.runtime.clone(),
            dns_on: DnsOn {
                on: u32::from(ruleset.reads_names()),
                min_ttl: ruleset.dns.min_ttl,
                max_ttl: ruleset.dns.max_ttl,
                grace: ruleset.dns.grace,
            },
        })
    }

    /// Called once this generation is in force: tells the loopback program, which belongs to no
    /// generation, whether its rules read DNS answers and their `[dns]` times (`DNS_ON`).
    pub fn in_force(&mut self) -> anyhow::Result<()> {
        let mut a: Array<&mut MapData, DnsOn> =
            Array::try_from(map_mut(&mut self.ebpf, maps::DNS_ON)?)?;
        a.set(0, &self.dns_on, 0).context("writing DNS_ON")
    }

    /// Writes an update of runtime sets' members into this generation's maps.
    pub fn write_change(&mut self, change: &Change) -> anyhow::Result<()> {
        super::tables::write_change(&mut self.ebpf, change)
    }

    /// Loads the programs for interfaces of each of `links` that are not loaded yet, so that a
    /// reload fails (on a verifier refusal) before anything is switched to it.
    pub fn prepare(&mut self, links: impl IntoIterator<Item = LinkLayer>) -> anyhow::Result<()> {
        for link in links {
            load_pair(&mut self.ebpf, link)?;
        }
        Ok(())
    }

    /// The kernel's id of each loaded program of this generation (program name, id).
    pub fn program_ids(&self) -> Vec<(String, u32)> {
        self.ebpf
            .programs()
            .filter_map(|(name, prog)| Some((name.to_string(), prog.info().ok()?.id())))
            .collect()
    }

    /// How many instructions the verifier walked for each loaded program of this generation
    /// (program name, count), as the kernel reports it (Linux 5.16 and later; none before).
    /// Verification time follows it, and the limit is 1,000,000 per program.
    pub fn verified_instructions(&self) -> Vec<(String, u32)> {
        self.ebpf
            .programs()
            .filter_map(|(name, prog)| {
                let count = prog.info().ok()?.verified_instruction_count()?;
                Some((name.to_string(), count))
            })
            .collect()
    }

    /// The kernel's id of this generation's XDP program for interfaces of `link`.
    pub fn program_id(&mut self, link: LinkLayer) -> anyhow::Result<u32> {
        Ok(self.program_for(link)?.info().context("program info")?.id())
    }

    /// The XDP program for interfaces of `link`.
    pub fn program_for(&mut self, link: LinkLayer) -> anyhow::Result<&mut Xdp> {
        load_pair(&mut self.ebpf, link)?;
        xdp_program(&mut self.ebpf, entry_points(link)?.0)
    }

    pub(super) fn egress(&mut self, link: LinkLayer) -> anyhow::Result<&mut SchedClassifier> {
        load_pair(&mut self.ebpf, link)?;
        tc_program(&mut self.ebpf, entry_points(link)?.1)
    }

    /// Attaches the egress program to `ifname`: a TCX link where the kernel has TCX (Linux
    /// 6.6), else a cls_bpf filter under a clsact qdisc. A filter a previous daemon left at
    /// our priority and handle is replaced in place rather than joined by a second one.
    pub fn attach_egress(&mut self, ifname: &str, link: LinkLayer) -> anyhow::Result<EgressLink> {
        links::attach_egress(self.egress(link)?, ifname)
    }

    /// Atomically replaces the program an egress attachment runs with this generation's
    /// (`bpf_link_update` for TCX, a cls_bpf replace for netlink).
    pub fn replace_egress(
        &mut self,
        link: EgressLink,
        layer: LinkLayer,
    ) -> anyhow::Result<EgressLink> {
        links::replace_egress(self.egress(layer)?, link)
    }

    pub fn program(&mut self) -> anyhow::Result<&mut Xdp> {
        xdp_program(&mut self.ebpf, firewall_common::XDP_PROGRAM)
    }

    /// Pins this generation's program and rule maps under `pin_dir`, replacing the pins of the
    /// generation before it. The pins are for inspection: enforcement goes through the links.
    pub fn pin(&mut self, pin_dir: &Path) -> anyhow::Result<()> {
        let rule_maps = || maps::of_kind(Kind::Generation).map(|m| m.name);
        for name in std::iter::once(PROGRAM_PIN).chain(rule_maps()) {
            let path = pin_dir.join(name);
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing the old pin {}", path.display()))?;
            }
        }
        self.program()?
            .pin(pin_dir.join(PROGRAM_PIN))
            .context("pinning the program")?;
        for name in rule_maps() {
            self.ebpf
                .map(name)
                .ok_or_else(|| anyhow!("map {name} missing"))?
                .pin(pin_dir.join(name))
                .with_context(|| format!("pinning map {name}"))?;
        }
        Ok(())
    }

    /// Sum over CPUs of every counter.
    pub fn counters(&self) -> anyhow::Result<BTreeMap<&'static str, u64>> {
        let sums = per_cpu_sums(&self.ebpf, maps::COUNTERS, Counter::COUNT)?;
        Ok(Counter::ALL
            .iter()
            .map(|&c| (c.name(), sums[c as usize]))
            .collect())
    }

    /// Packets decided by each rule (index = rule index), summed over CPUs.
    pub fn rule_hits(&self) -> anyhow::Result<Vec<u64>> {
        per_cpu_sums(&self.ebpf, maps::RULE_HITS, self.rule_count)
    }

    /// Attaches to `ifname` for the first time. Returns the link (which owns the attachment:
    /// dropping it detaches) and the mode actually used.
    pub fn attach(
        &mut self,
        ifname: &str,
        mode: XdpMode,
        link: LinkLayer,
    ) -> anyhow::Result<(XdpLink, &'static str)> {
        links::attach_xdp(self.program_for(link)?, ifname, mode)
    }

    /// Atomically replaces whatever program `link` runs with this generation's for interfaces
    /// of `layer`.
    pub fn replace(&mut self, link: XdpLink, layer: LinkLayer) -> anyhow::Result<XdpLink> {
        links::replace_xdp(self.program_for(layer)?, link)
    }
}

/// The XDP and TC entry points for interfaces of `link` (see `firewall-ebpf/src/main.rs`).
fn entry_points(link: LinkLayer) -> anyhow::Result<(&'static str, &'static str)> {
    match link {
        LinkLayer::Ethernet => Ok((
            firewall_common::XDP_PROGRAM,
            firewall_common::TC_EGRESS_PROGRAM,
        )),
        LinkLayer::Ip => Ok((
            firewall_common::XDP_L3_PROGRAM,
            firewall_common::TC_EGRESS_L3_PROGRAM,
        )),
        other => bail!(
            "the firewall cannot parse frames of this link layer: {}",
            other.describe()
        ),
    }
}

/// Loads the XDP and TC entry points for interfaces of `link`, unless they are loaded.
fn load_pair(ebpf: &mut Ebpf, link: LinkLayer) -> anyhow::Result<()> {
    let (xdp, tc) = entry_points(link)?;
    let prog = xdp_program(ebpf, xdp)?;
    if prog.fd().is_err() {
        prog.load().map_err(verifier_context)?;
    }
    let prog = tc_program(ebpf, tc)?;
    if prog.fd().is_err() {
        prog.load().map_err(verifier_context)?;
    }
    Ok(())
}

/// Loads `firewall_dns`, the reader of DNS answers, into `DNS_PROGS`, where the XDP programs
/// tail-call it (`firewall-ebpf/src/dns.rs`).
fn load_dns(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let prog = xdp_program(ebpf, firewall_common::DNS_PROGRAM)?;
    prog.load().map_err(verifier_context)?;
    let fd = prog.fd().context("firewall_dns's fd")?.try_clone()?;
    let mut slots: aya::maps::ProgramArray<&mut MapData> =
        aya::maps::ProgramArray::try_from(map_mut(ebpf, maps::DNS_PROGS)?)?;
    slots
        .set(0, &fd, 0)
        .context("putting firewall_dns in DNS_PROGS")
}

pub(super) fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    program_mut(ebpf, name, "an XDP program")
}

fn tc_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    program_mut(ebpf, name, "a TC program")
}

/// A copy of the object for the outbound rules: its rule maps hold the outbound rules, its
/// `DEFAULT_OUTBOUND` is `[defaults] outbound`, and only its four cgroup hooks are loaded.
pub struct OutboundGeneration {
    ebpf: Ebpf,
    pub rule_count: u32,
    /// Runtime sets' updates of these maps, when the outbound rules name runtime sets.
    pub runtime: Option<Box<Runtime>>,
}

impl OutboundGeneration {
    /// Loads the hooks with maps filled from `compiled` (the outbound rules). Nothing is
    /// attached. `id` is the id of the inbound [`Generation`] loaded with it, which names the
    /// rules of its log events.
    pub fn load(
        compiled: &Compiled,
        ruleset: &Ruleset,
        pin_dir: &Path,
        id: u32,
    ) -> anyhow::Result<Self> {
        let mut ebpf = load(compiled, ruleset, pin_dir, Direction::Out, id)?;
        for hook in Hook::ALL {
            hook_program(&mut ebpf, hook)?
                .load()
                .map_err(verifier_context)?;
        }
        Ok(Self {
            ebpf,
            rule_count: compiled.rule_count,
            runtime: compiled.runtime.clone(),
        })
    }

    /// Writes an update of runtime sets' members into this generation's maps.
    pub fn write_change(&mut self, change: &Change) -> anyhow::Result<()> {
        super::tables::write_change(&mut self.ebpf, change)
    }

    fn program(&mut self, hook: Hook) -> anyhow::Result<&mut CgroupSockAddr> {
        hook_program(&mut self.ebpf, hook)
    }

    /// The kernel's id of this generation's program for `hook`.
    pub fn program_id(&mut self, hook: Hook) -> anyhow::Result<u32> {
        Ok(self.program(hook)?.info().context("program info")?.id())
    }

    /// Attaches `hook` to the cgroup (a bpf link, which keeps the program attached while
    /// pinned). Returns the link.
    pub fn attach(&mut self, hook: Hook, cgroup: &Cgroup) -> anyhow::Result<CgroupSockAddrLink> {
        let prog = self.program(hook)?;
        // A bpf link on a cgroup always combines with the other programs there and above
        // (the kernel attaches links as BPF_F_ALLOW_MULTI and refuses any flag on
        // BPF_LINK_CREATE): `Single` passes no flag.
        let id = prog
            .attach(&cgroup.file, CgroupAttachMode::Single)
            .with_context(|| attaching(hook.name(), cgroup))?;
        prog.take_link(id)
            .context("taking ownership of the cgroup link")
    }

    /// Atomically replaces the program `link` runs with this generation's (`bpf_link_update`).
    /// On failure the link's descriptor is gone, but a pinned link stays attached, running
    /// what it ran before.
    pub fn replace(
        &mut self,
        hook: Hook,
        link: CgroupSockAddrLink,
    ) -> anyhow::Result<CgroupSockAddrLink> {
        let prog = self.program(hook)?;
        let id = prog.attach_to_link(link).with_context(|| {
            format!(
                "replacing the {} hook's program (bpf_link_update)",
                hook.name()
            )
        })?;
        prog.take_link(id)
            .context("taking ownership of the cgroup link")
    }

    /// Socket calls decided by each rule (index = rule index; only outbound rules move).
    pub fn rule_hits(&self) -> anyhow::Result<Vec<u64>> {
        per_cpu_sums(&self.ebpf, maps::RULE_HITS, self.rule_count)
    }
}
