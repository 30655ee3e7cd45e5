//! Loading compiled rule sets into the kernel, one *generation* at a time.
//!
//! A generation is a freshly loaded copy of the XDP program with its own rule maps, sized for and
//! filled with one compiled rule set before anything points at it. Switching generations is a
//! single `bpf_link_update` per interface (see compile.md, "Atomic replacement"). Counters and
//! reject buckets are pinned by name under the pin directory and shared by all generations.
//!
//! The outbound rules get a generation of their own ([`OutboundGeneration`]): a second copy of
//! the same object whose rule maps hold the outbound rules, of which only the cgroup hooks are
//! loaded. Switching it is one `bpf_link_update` per hook (four links on one cgroup).

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapInfo, PerCpuArray, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, NetworkInterface, ProgramError,
        SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode as AyaXdpMode,
        cgroup_sock_addr::CgroupSockAddrLink,
        links::{FdLink, LinkError, LinkOrder, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttach, TcHandle},
        xdp::{XdpLink, XdpLinkId},
    },
};
pub mod features;

use firewall_common::{
    AddrValue, Counter, DEFAULT_RULE, OutStealthKey, PROTO_CLASSES, PairKey, PortValue,
    ct::{ConnOwner, CtConfig, state},
    globals,
    identity::{GroupKey, Listener, ListenerKey, ScopedSlot},
    maps, verdict,
};
use log::warn;

use crate::{
    EBPF_OBJECT,
    cgroup::Cgroup,
    compile::Compiled,
    interfaces::LinkLayer,
    model::{Conntrack, Direction, FragmentPolicy, InvalidPolicy, Ruleset, XdpMode},
};

/// statfs magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// statfs magic of sysfs: what `/sys/fs/bpf` is when nothing is mounted on it.
const SYSFS_MAGIC: i64 = 0x6265_6572;
/// Where bpf filesystems are mounted by convention (systemd mounts one there at boot).
pub const BPF_FS_ROOT: &str = "/sys/fs/bpf";

/// What [`prepare_pin_dir`] has to do before pinning under a pin directory.
#[derive(Debug, PartialEq, Eq)]
enum PinFs {
    /// The pin directory is (or will be created) on a bpf filesystem.
    Ready,
    /// The pin directory is under [`BPF_FS_ROOT`] and nothing is mounted there: mount a bpf
    /// filesystem there, as systemd and Cilium do.
    MountRoot,
    /// Anything else: mounting over another filesystem or in an arbitrary place is the
    /// administrator's decision, not the daemon's.
    NotBpf,
}

/// `existing_fs`: the filesystem type of `pin_dir` or of its nearest existing ancestor;
/// `root_fs`: that of [`BPF_FS_ROOT`], if it exists.
fn pin_fs_plan(pin_dir: &Path, existing_fs: i64, root_fs: Option<i64>) -> PinFs {
    if existing_fs == BPF_FS_MAGIC {
        PinFs::Ready
    } else if pin_dir.starts_with(BPF_FS_ROOT) && root_fs == Some(SYSFS_MAGIC) {
        PinFs::MountRoot
    } else {
        PinFs::NotBpf
    }
}

fn fs_type(path: &Path) -> anyhow::Result<i64> {
    let st =
        nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(st.filesystem_type().0 as i64)
}

/// Creates `pin_dir` if needed and checks that it lives on a bpf filesystem (pins elsewhere fail
/// with an obscure EPERM otherwise). When `pin_dir` is under [`BPF_FS_ROOT`] and no bpf
/// filesystem is mounted there (hosts without systemd, some minimal images), mounts one.
pub fn prepare_pin_dir(pin_dir: &Path) -> anyhow::Result<()> {
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let root = Path::new(BPF_FS_ROOT);
    let root_fs = if root.exists() {
        Some(fs_type(root)?)
    } else {
        None
    };
    match pin_fs_plan(pin_dir, fs_type(existing)?, root_fs) {
        PinFs::Ready => {}
        PinFs::MountRoot => {
            use nix::mount::{MsFlags, mount};
            // The options systemd uses for this mount.
            mount(
                Some("bpf"),
                root,
                Some("bpf"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=0700"),
            )
            .with_context(|| {
                format!(
                    "no bpf filesystem is mounted at {BPF_FS_ROOT} and mounting one failed; \
                     mount it (`mount -t bpf bpf {BPF_FS_ROOT}`) or set [daemon] pin_dir to a \
                     directory on a bpf filesystem"
                )
            })?;
            log::info!("mounted a bpf filesystem at {BPF_FS_ROOT} (none was mounted)");
        }
        PinFs::NotBpf => bail!(
            "pin_dir {} is not on a bpf filesystem; mount one there first \
             (`mount -t bpf bpf DIR`), or set [daemon] pin_dir to a directory under \
             {BPF_FS_ROOT}, where the daemon mounts one when none is",
            pin_dir.display()
        ),
    }
    std::fs::create_dir_all(pin_dir)
        .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
    if fs_type(pin_dir)? != BPF_FS_MAGIC {
        bail!(
            "pin_dir {} is not on a bpf filesystem; mount one first \
             (`mount -t bpf bpf {BPF_FS_ROOT}`, which systemd does at boot) or set [daemon] pin_dir",
            pin_dir.display()
        );
    }
    Ok(())
}

/// Pin names of the generation in force, for inspection (`bpftool prog show pinned ...`).
pub const PROGRAM_PIN: &str = "firewall_xdp";
const GENERATION_MAPS: [&str; 5] = [
    maps::ADDR4,
    maps::ADDR6,
    maps::PORTS,
    maps::PAIRS,
    maps::RULE_HITS,
];
/// Maps shared by every generation (and kept across daemon restarts while pinned).
pub const SHARED_MAPS: [&str; 12] = [
    maps::COUNTERS,
    maps::REJECT_RATE,
    maps::REJECT_GLOBAL,
    maps::IFACE_MAC,
    maps::LOCAL_ADDRS,
    maps::CT_EST,
    maps::CT_NEW,
    maps::CT_LOCAL,
    maps::OUT_STEALTH,
    maps::LISTENERS,
    maps::LISTENER_OF,
    maps::SOCK_OWNER,
];

/// Key size, value size and (where the program indexes it by constant) the number of entries
/// each shared map must have. A pin left by another version of the daemon with a different
/// layout would be adopted by the loader as it is, and the verifier or the programs would then
/// misread it.
fn shared_layout(name: &str) -> Option<(usize, usize, Option<u32>)> {
    use core::mem::size_of;
    use firewall_common::{
        IfaceMac, LocalAddrKey, RateBucket, RateKey,
        ct::{ConnOwner, CtEntry, CtKey},
    };
    Some(match name {
        maps::COUNTERS => (4, size_of::<u64>(), Some(Counter::COUNT)),
        maps::REJECT_RATE => (size_of::<RateKey>(), size_of::<RateBucket>(), None),
        maps::REJECT_GLOBAL => (4, size_of::<RateBucket>(), Some(1)),
        maps::IFACE_MAC => (4, size_of::<IfaceMac>(), None),
        maps::LOCAL_ADDRS => (size_of::<LocalAddrKey>(), 4, None),
        maps::CT_EST | maps::CT_NEW | maps::CT_LOCAL => {
            (size_of::<CtKey>(), size_of::<CtEntry>(), None)
        }
        maps::OUT_STEALTH => (size_of::<OutStealthKey>(), 4, None),
        maps::LISTENERS => (size_of::<ListenerKey>(), size_of::<Listener>(), None),
        maps::LISTENER_OF => (8, size_of::<ListenerKey>(), None),
        maps::SOCK_OWNER => (8, size_of::<ConnOwner>(), None),
        _ => return None,
    })
}

/// Unpins every shared map whose layout is not this version's (an upgrade that changed it):
/// the next load creates it afresh. Returns the names of the maps discarded. Connections in a
/// discarded table are forgotten; the seeding from the host's sockets at start-up brings back
/// those still open.
pub fn discard_incompatible_pins(pin_dir: &Path) -> Vec<&'static str> {
    let mut discarded = Vec::new();
    for name in SHARED_MAPS {
        let path = pin_dir.join(name);
        let Ok(info) = MapInfo::from_pin(&path) else {
            continue;
        };
        let Some((key, value, entries)) = shared_layout(name) else {
            continue;
        };
        let fits = info.key_size() as usize == key
            && info.value_size() as usize == value
            && entries.is_none_or(|n| info.max_entries() == n);
        if !fits {
            warn!(
                "{name}: the pinned map has another layout (key {} B, value {} B, {} entries; \
                 this version needs key {key} B, value {value} B), left by another version of \
                 the daemon: replacing it",
                info.key_size(),
                info.value_size(),
                info.max_entries()
            );
            if let Err(e) = std::fs::remove_file(&path) {
                warn!("{name}: could not remove the pin {}: {e}", path.display());
            }
            discarded.push(name);
        }
    }
    discarded
}
/// Directory under the pin directory holding the attachments (bpf links), one per interface
/// and hook: while pinned they keep enforcing after the daemon is gone.
pub const LINK_DIR: &str = "links";

/// Removes everything this daemon pins under `pin_dir`, and the directory if it is then empty.
/// Removing a link's pin detaches it once the daemon's own handle is closed; the egress filters
/// of kernels without TCX, which have no pin, are detached from every interface with a pinned
/// link pin.
pub fn remove_pins(pin_dir: &Path) {
    for name in std::iter::once(PROGRAM_PIN)
        .chain(GENERATION_MAPS)
        .chain(SHARED_MAPS)
    {
        let _ = std::fs::remove_file(pin_dir.join(name));
    }
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

/// Capacity of a connection table: the pinned table's if one exists (it is adopted with its
/// connections; a new size applies once the table is gone), else the configured one.
fn table_capacity(pin_dir: &Path, name: &str, configured: u32) -> u32 {
    match MapInfo::from_pin(pin_dir.join(name)) {
        Ok(info) => {
            let pinned = info.max_entries();
            if pinned != configured {
                warn!(
                    "{name}: keeping the existing table of {pinned} entries with its connections; \
                     the configured size {configured} applies after the pinned tables are removed \
                     (daemon stopped with SIGTERM, or a reboot)"
                );
            }
            pinned
        }
        Err(_) => configured,
    }
}

/// The tracker's settings as the datapath reads them.
pub fn ct_config(ct: &Conntrack, generation: u32) -> CtConfig {
    let t = &ct.timeouts;
    let mut timeout_ns = [0u64; state::SLOTS];
    for (s, secs) in [
        (state::SYN_SENT, t.tcp_syn_sent),
        (state::SYN_RECV, t.tcp_syn_recv),
        (state::ESTABLISHED, t.tcp_established),
        (state::FIN_WAIT, t.tcp_fin_wait),
        (state::CLOSE_WAIT, t.tcp_close_wait),
        (state::LAST_ACK, t.tcp_last_ack),
        (state::TIME_WAIT, t.tcp_time_wait),
        (state::CLOSE, t.tcp_close),
        (state::UDP_UNREPLIED, t.udp_unreplied),
        (state::UDP_REPLIED, t.udp_replied),
        (state::ICMP_ECHO, t.icmp),
    ] {
        timeout_ns[s as usize] = u64::from(secs) * 1_000_000_000;
    }
    let action = match ct.invalid {
        InvalidPolicy::Stealth => firewall_common::ACTION_STEALTH,
        InvalidPolicy::Reject => firewall_common::ACTION_REJECT,
    };
    CtConfig {
        timeout_ns,
        invalid_verdict: verdict(DEFAULT_RULE, action),
        generation,
    }
}

pub struct Generation {
    ebpf: Ebpf,
    pub rule_count: u32,
    /// Identifies this rule set in connection entries ([`firewall_common::ct::CtEntry::generation`]).
    pub id: u32,
}

/// Loads one copy of the object for `compiled` (one direction of `ruleset`): the rule maps
/// sized for it and filled, the load-time constants set, the shared maps opened from (or
/// pinned to) `pin_dir`. No program is loaded into the kernel yet.
fn load_object(compiled: &Compiled, ruleset: &Ruleset, pin_dir: &Path) -> anyhow::Result<Ebpf> {
    prepare_pin_dir(pin_dir)?;
    let frag = match ruleset.defaults.fragments {
        FragmentPolicy::Allow => firewall_common::FRAG_ALLOW,
        FragmentPolicy::Stealth => firewall_common::FRAG_STEALTH,
    };
    let has_pairs = u32::from(!compiled.pairs.is_empty());
    let rules = compiled.rule_count.max(1);
    let n4 = (compiled.addr4.len() as u32).max(1);
    let n6 = (compiled.addr6.len() as u32).max(1);
    let np = (compiled.pairs.len() as u32).max(1);
    // The inbound copy's egress program drops the packets of sockets held by an outbound
    // `stealth`; the outbound copy's hooks fall back to `[defaults] outbound`.
    let out_can_stealth = u32::from(ruleset.outbound_can_stealth());
    let record_owner = u32::from(ruleset.conntrack.record_owner);
    let (default_in, default_out) = match compiled.direction {
        Direction::In => (
            compiled.default_verdict,
            verdict(DEFAULT_RULE, ruleset.defaults.outbound.to_kernel()),
        ),
        Direction::Out => (
            verdict(DEFAULT_RULE, ruleset.defaults.inbound.to_kernel()),
            compiled.default_verdict,
        ),
    };
    let scoped_shapes = compiled.scoped_shapes;
    let unit_levels = compiled.unit_levels();
    let g = &compiled.groups;
    let sized = |n: usize| (n as u32).max(1);
    let offsets = crate::identity::kernel_offsets();
    let names_programs = compiled
        .groups
        .iter()
        .any(|g| g.key.shape() & firewall_common::identity::SHAPE_PROGRAM != 0);
    if names_programs && let Err(why) = offsets {
        bail!(
            "{} rules name programs, but this kernel's structure offsets for program \
             identity could not be resolved: {why}",
            compiled.direction
        );
    }
    let mut loader = EbpfLoader::new();
    if let Ok(offsets) = offsets {
        offsets.set_globals(&mut loader);
    }
    let mut ebpf = loader
        .default_map_pin_directory(pin_dir)
        .map_max_entries(maps::GROUPS, sized(g.len()))
        .map_max_entries(maps::UNITS, sized(compiled.units.len()))
        .map_max_entries(
            maps::SCOPED_ADDR4,
            sized(g.iter().map(|g| g.addr4.len()).sum()),
        )
        .map_max_entries(
            maps::SCOPED_ADDR6,
            sized(g.iter().map(|g| g.addr6.len()).sum()),
        )
        .map_max_entries(
            maps::SCOPED_PORTS,
            sized(g.iter().map(|g| g.ports.len()).sum()),
        )
        .map_max_entries(maps::SCOPED_PROTO, sized(g.len()))
        .override_global(globals::SCOPED_SHAPES, &scoped_shapes, true)
        .override_global(globals::UNIT_LEVELS, &unit_levels, true)
        .map_max_entries(maps::ADDR4, n4)
        .map_max_entries(maps::ADDR6, n6)
        .map_max_entries(maps::PAIRS, np)
        .map_max_entries(maps::RULE_HITS, rules)
        .map_max_entries(
            maps::CT_EST,
            table_capacity(pin_dir, maps::CT_EST, ruleset.conntrack.table_size),
        )
        .map_max_entries(
            maps::CT_NEW,
            table_capacity(pin_dir, maps::CT_NEW, ruleset.conntrack.unconfirmed_size),
        )
        // The host's own pending flows get as much room as remote hosts' handshakes.
        .map_max_entries(
            maps::CT_LOCAL,
            table_capacity(pin_dir, maps::CT_LOCAL, ruleset.conntrack.unconfirmed_size),
        )
        .override_global(globals::DEFAULT_INBOUND, &default_in, true)
        .override_global(globals::DEFAULT_OUTBOUND, &default_out, true)
        .override_global(globals::OUT_CAN_STEALTH, &out_can_stealth, true)
        .override_global(globals::RECORD_OWNER, &record_owner, true)
        .override_global(globals::FRAGMENTS, &frag, true)
        .override_global(
            globals::REJECT_RATE_PER_SEC,
            &ruleset.reject.rate_per_sec,
            true,
        )
        .override_global(globals::REJECT_BURST, &ruleset.reject.burst, true)
        .override_global(
            globals::REJECT_GLOBAL_RATE,
            &ruleset.reject.global_rate_per_sec,
            true,
        )
        .override_global(globals::HAS_PAIRS, &has_pairs, true)
        .override_global(globals::PROTO_VERDICTS, &compiled.proto_verdicts, true)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    fill(&mut ebpf, compiled).context("writing the rule maps")?;
    Ok(ebpf)
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
        if compiled.direction != Direction::In {
            bail!("the XDP generation takes the inbound rules");
        }
        let mut ebpf = load_object(compiled, ruleset, pin_dir)?;
        {
            let mut cfg: Array<&mut MapData, CtConfig> =
                Array::try_from(map_mut(&mut ebpf, maps::CT_CONFIG)?)?;
            cfg.set(0, &ct_config(&ruleset.conntrack, id), 0)
                .context("writing the conntrack settings")?;
        }
        for link in [LinkLayer::Ethernet, LinkLayer::Ip] {
            let (xdp, tc) = entry_points(link)?;
            xdp_program(&mut ebpf, xdp)?
                .load()
                .map_err(verifier_context)?;
            tc_program(&mut ebpf, tc)?
                .load()
                .map_err(verifier_context)?;
        }
        Ok(Self {
            ebpf,
            rule_count: compiled.rule_count,
            id,
        })
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
        xdp_program(&mut self.ebpf, entry_points(link)?.0)
    }

    fn egress(&mut self, link: LinkLayer) -> anyhow::Result<&mut SchedClassifier> {
        tc_program(&mut self.ebpf, entry_points(link)?.1)
    }

    /// Attaches the egress program to `ifname`: a TCX link where the kernel has TCX (Linux
    /// 6.6), else a cls_bpf filter under a clsact qdisc. A filter a previous daemon left at
    /// our priority and handle is replaced in place rather than joined by a second one.
    pub fn attach_egress(&mut self, ifname: &str, link: LinkLayer) -> anyhow::Result<EgressLink> {
        let cname =
            std::ffi::CString::new(ifname).with_context(|| format!("interface name {ifname:?}"))?;
        let iface = || NetworkInterface::Name(&cname);
        let prog = self.egress(link)?;
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
            .map_err(|e| {
                anyhow!("attaching the egress program to {ifname}: {e} (TCX: {tcx_err})")
            })?;
        forget_netlink(prog.take_link(id))?;
        Ok(EgressLink::Netlink { ifindex })
    }

    /// Atomically replaces the program an egress attachment runs with this generation's
    /// (`bpf_link_update` for TCX, a cls_bpf replace for netlink).
    pub fn replace_egress(
        &mut self,
        link: EgressLink,
        layer: LinkLayer,
    ) -> anyhow::Result<EgressLink> {
        let prog = self.egress(layer)?;
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

    /// Runs the egress program once on `frame` (BPF_PROG_TEST_RUN); returns its TC action.
    pub fn test_run_egress(&mut self, frame: &[u8]) -> anyhow::Result<i32> {
        self.test_run_egress_on(LinkLayer::Ethernet, frame)
    }

    /// [`Self::test_run_egress`] with the program for interfaces of `link`.
    pub fn test_run_egress_on(&mut self, link: LinkLayer, frame: &[u8]) -> anyhow::Result<i32> {
        Ok(run_program(self.egress(link)?, frame, 1)?.0 as i32)
    }

    pub fn program(&mut self) -> anyhow::Result<&mut Xdp> {
        xdp_program(&mut self.ebpf, firewall_common::XDP_PROGRAM)
    }

    /// Pins this generation's program and rule maps under `pin_dir`, replacing the pins of the
    /// generation before it. The pins are for inspection: enforcement goes through the links.
    pub fn pin(&mut self, pin_dir: &Path) -> anyhow::Result<()> {
        for name in std::iter::once(PROGRAM_PIN).chain(GENERATION_MAPS) {
            let path = pin_dir.join(name);
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing the old pin {}", path.display()))?;
            }
        }
        self.program()?
            .pin(pin_dir.join(PROGRAM_PIN))
            .context("pinning the program")?;
        for name in GENERATION_MAPS {
            self.ebpf
                .map(name)
                .ok_or_else(|| anyhow!("map {name} missing"))?
                .pin(pin_dir.join(name))
                .with_context(|| format!("pinning map {name}"))?;
        }
        Ok(())
    }

    /// Runs the program once on `frame` (BPF_PROG_TEST_RUN); returns the XDP action and the
    /// frame as the program left it.
    pub fn test_run(&mut self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        self.test_run_on(LinkLayer::Ethernet, frame)
    }

    /// [`Self::test_run`] with the program for interfaces of `link` (for [`LinkLayer::Ip`],
    /// `frame` starts at the IP header).
    pub fn test_run_on(&mut self, link: LinkLayer, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        let (action, out, _) = run_program(self.program_for(link)?, frame, 1)?;
        Ok((action, out))
    }

    /// Runs the program `repeat` times on `frame` in the kernel; returns ns per run as the
    /// kernel measured it.
    pub fn time_run(&mut self, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
        time_program(self.program()?, frame, repeat)
    }

    /// Sum over CPUs of every counter.
    pub fn counters(&self) -> anyhow::Result<BTreeMap<&'static str, u64>> {
        let map = self
            .ebpf
            .map(maps::COUNTERS)
            .ok_or_else(|| anyhow!("map {} missing", maps::COUNTERS))?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        let mut out = BTreeMap::new();
        for c in Counter::ALL {
            let v = arr.get(&(c as u32), 0)?;
            out.insert(c.name(), v.iter().sum());
        }
        Ok(out)
    }

    /// Packets decided by each rule (index = rule index), summed over CPUs.
    pub fn rule_hits(&self) -> anyhow::Result<Vec<u64>> {
        let map = self
            .ebpf
            .map(maps::RULE_HITS)
            .ok_or_else(|| anyhow!("map {} missing", maps::RULE_HITS))?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        (0..self.rule_count)
            .map(|i| Ok(arr.get(&i, 0)?.iter().sum()))
            .collect()
    }

    /// Attaches to `ifname` for the first time. Returns the link (which owns the attachment:
    /// dropping it detaches) and the mode actually used.
    pub fn attach(
        &mut self,
        ifname: &str,
        mode: XdpMode,
        link: LinkLayer,
    ) -> anyhow::Result<(XdpLink, &'static str)> {
        attach_xdp(self.program_for(link)?, ifname, mode)
    }

    /// Atomically replaces whatever program `link` runs with this generation's for interfaces
    /// of `layer`.
    pub fn replace(&mut self, link: XdpLink, layer: LinkLayer) -> anyhow::Result<XdpLink> {
        let prog = self.program_for(layer)?;
        let id = prog
            .attach_to_link(link)
            .context("replacing the attached program (bpf_link_update)")?;
        take(prog, id)
    }
}

fn attach_xdp(
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

fn tc_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("{name} is not a TC program"))
}

/// Where the link of `kind` ("xdp" or "egress") on `ifname` is pinned.
pub fn link_pin(pin_dir: &Path, kind: &str, ifname: &str) -> std::path::PathBuf {
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
    let Ok(cname) = std::ffi::CString::new(ifname) else {
        return;
    };
    match aya::programs::tc::qdisc_detach_program(
        NetworkInterface::Name(&cname),
        TcAttachType::Egress.into(),
        // cls_bpf records the program's name with the filter.
        firewall_common::TC_EGRESS_PROGRAM,
    ) {
        Ok(()) => {}
        Err(aya::programs::tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {
        }
        Err(e) => warn!("{ifname}: removing the egress filter: {e}"),
    }
}

fn pin_fd_link(fd: FdLink, path: &Path) -> anyhow::Result<PinnedLink> {
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
    let info = crate::cgroup::pinned_link_info(path)?;
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

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))
}

fn verifier_context(e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            // The message keeps the log's tail; FW_VERIFIER_DUMP=<file> keeps all of it, for
            // whoever changes the kernel programs.
            if let Ok(p) = std::env::var("FW_VERIFIER_DUMP") {
                let _ = std::fs::write(p, verifier_log.to_string());
            }
            anyhow!(
                "the kernel refused an eBPF program: {io_error}\nverifier log (tail):\n{}",
                tail(&verifier_log.to_string(), 40)
            )
        }
        other => anyhow::Error::new(other).context("loading the eBPF program"),
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn fill_trie<const N: usize>(
    ebpf: &mut Ebpf,
    name: &str,
    entries: impl Iterator<Item = (u8, [u8; N], AddrValue)>,
) -> anyhow::Result<()> {
    let mut t: LpmTrie<&mut MapData, [u8; N], AddrValue> = LpmTrie::try_from(map_mut(ebpf, name)?)?;
    for (prefix_len, addr, v) in entries {
        t.insert(&Key::new(u32::from(prefix_len), addr), &v, 0)?;
    }
    Ok(())
}

fn fill(ebpf: &mut Ebpf, c: &Compiled) -> anyhow::Result<()> {
    fill_trie(
        ebpf,
        maps::ADDR4,
        c.addr4
            .iter()
            .map(|(n, v)| (n.prefix_len(), n.network().octets(), *v)),
    )?;
    fill_trie(
        ebpf,
        maps::ADDR6,
        c.addr6
            .iter()
            .map(|(n, v)| (n.prefix_len(), n.network().octets(), *v)),
    )?;
    {
        let mut a: Array<&mut MapData, PortValue> = Array::try_from(map_mut(ebpf, maps::PORTS)?)?;
        for (slot, v) in &c.ports {
            a.set(*slot, v, 0)?;
        }
    }
    {
        let mut h: HashMap<&mut MapData, PairKey, u32> =
            HashMap::try_from(map_mut(ebpf, maps::PAIRS)?)?;
        for (k, v) in &c.pairs {
            h.insert(k, v, 0)?;
        }
    }
    fill_groups(ebpf, c)
}

/// A key of the scoped tries: the group id (big-endian, matched whole) before the address, and
/// the prefix length counting both.
fn scoped_key<const N: usize>(group: u32, addr: &[u8], prefix_len: u8) -> (u8, [u8; N]) {
    let mut k = [0u8; N];
    k[..4].copy_from_slice(&group.to_be_bytes());
    k[4..].copy_from_slice(addr);
    (32 + prefix_len, k)
}

/// The tables of the rules with selectors (compile.md, "Rules about programs").
fn fill_groups(ebpf: &mut Ebpf, c: &Compiled) -> anyhow::Result<()> {
    if c.groups.is_empty() {
        return Ok(());
    }
    fill_trie(
        ebpf,
        maps::SCOPED_ADDR4,
        c.groups.iter().flat_map(|g| {
            g.addr4.iter().map(move |(n, v)| {
                let (len, k) = scoped_key::<8>(g.id, &n.network().octets(), n.prefix_len());
                (len, k, *v)
            })
        }),
    )?;
    fill_trie(
        ebpf,
        maps::SCOPED_ADDR6,
        c.groups.iter().flat_map(|g| {
            g.addr6.iter().map(move |(n, v)| {
                let (len, k) = scoped_key::<20>(g.id, &n.network().octets(), n.prefix_len());
                (len, k, *v)
            })
        }),
    )?;
    {
        let mut h: HashMap<&mut MapData, ScopedSlot, PortValue> =
            HashMap::try_from(map_mut(ebpf, maps::SCOPED_PORTS)?)?;
        for g in &c.groups {
            for (slot, v) in &g.ports {
                h.insert(
                    &ScopedSlot {
                        group: g.id,
                        slot: *slot,
                    },
                    v,
                    0,
                )?;
            }
        }
    }
    {
        let mut h: HashMap<&mut MapData, u32, [u32; PROTO_CLASSES]> =
            HashMap::try_from(map_mut(ebpf, maps::SCOPED_PROTO)?)?;
        for g in &c.groups {
            h.insert(&g.id, &g.proto_verdicts, 0)?;
        }
    }
    {
        let mut h: HashMap<&mut MapData, GroupKey, u32> =
            HashMap::try_from(map_mut(ebpf, maps::GROUPS)?)?;
        for g in &c.groups {
            h.insert(&g.key, &g.id, 0)?;
        }
    }
    let mut h: HashMap<&mut MapData, u64, u32> = HashMap::try_from(map_mut(ebpf, maps::UNITS)?)?;
    for id in c.units.keys() {
        h.insert(id, &1, 0)?;
    }
    Ok(())
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

/// One BPF_PROG_TEST_RUN of `frame`, `repeat` times (XDP or TC): the program's return value,
/// the frame as the program left it, and the kernel's ns per run.
fn run_program<P>(prog: &P, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, Vec<u8>, f64)>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::TestRunResult>,
{
    // Room for replies that grow the frame (ICMP errors prepend up to 48 bytes).
    let mut out = vec![0u8; frame.len() + 256];
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    out.truncate(res.data_size_out as usize);
    Ok((res.return_value, out, res.duration.as_nanos() as f64))
}

fn time_program(prog: &Xdp, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    Ok(run_program(prog, frame, repeat)?.2)
}

/// The object's pass-everything program, loaded on its own: for veth peers in tests (native
/// XDP_TX on veth is only delivered when the peer has an XDP program) and as the benchmark floor.
pub struct PassProgram {
    ebpf: Ebpf,
}

impl PassProgram {
    pub fn load(pin_dir: &Path) -> anyhow::Result<Self> {
        prepare_pin_dir(pin_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(EBPF_OBJECT)
            .context("loading the eBPF object")?;
        xdp_program(&mut ebpf, firewall_common::XDP_PASS_PROGRAM)?
            .load()
            .map_err(verifier_context)?;
        Ok(Self { ebpf })
    }

    pub fn program(&mut self) -> anyhow::Result<&mut Xdp> {
        xdp_program(&mut self.ebpf, firewall_common::XDP_PASS_PROGRAM)
    }

    pub fn time_run(&mut self, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
        time_program(self.program()?, frame, repeat)
    }

    pub fn attach(
        &mut self,
        ifname: &str,
        mode: XdpMode,
    ) -> anyhow::Result<(XdpLink, &'static str)> {
        attach_xdp(self.program()?, ifname, mode)
    }
}

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

/// Where the link of an outbound hook is pinned: `links/cgroup-connect4`, ...
pub fn hook_pin(pin_dir: &Path, hook: Hook) -> std::path::PathBuf {
    pin_dir
        .join(LINK_DIR)
        .join(format!("cgroup-{}", hook.name()))
}

/// A copy of the object for the outbound rules: its rule maps hold the outbound rules, its
/// `DEFAULT_OUTBOUND` is `[defaults] outbound`, and only its four cgroup hooks are loaded.
pub struct OutboundGeneration {
    ebpf: Ebpf,
    pub rule_count: u32,
    pub id: u32,
}

impl OutboundGeneration {
    /// Loads the hooks with maps filled from `compiled` (the outbound rules). Nothing is
    /// attached.
    pub fn load(
        compiled: &Compiled,
        ruleset: &Ruleset,
        pin_dir: &Path,
        id: u32,
    ) -> anyhow::Result<Self> {
        if compiled.direction != Direction::Out {
            bail!("the outbound generation takes the outbound rules");
        }
        let mut ebpf = load_object(compiled, ruleset, pin_dir)?;
        for hook in Hook::ALL {
            hook_program(&mut ebpf, hook)?
                .load()
                .map_err(verifier_context)?;
        }
        Ok(Self {
            ebpf,
            rule_count: compiled.rule_count,
            id,
        })
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
            .with_context(|| {
                format!(
                    "attaching the {} hook to the cgroup {}",
                    hook.name(),
                    cgroup.path.display()
                )
            })?;
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
        let map = self
            .ebpf
            .map(maps::RULE_HITS)
            .ok_or_else(|| anyhow!("map {} missing", maps::RULE_HITS))?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        (0..self.rule_count)
            .map(|i| Ok(arr.get(&i, 0)?.iter().sum()))
            .collect()
    }
}

fn hook_program(ebpf: &mut Ebpf, hook: Hook) -> anyhow::Result<&mut CgroupSockAddr> {
    let name = hook.program();
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("{name} is not a cgroup_sock_addr program"))
}

/// The sockets held by an outbound `stealth` ([`maps::OUT_STEALTH`]), opened from its pin, with
/// who made them ([`maps::SOCK_OWNER`]).
pub struct StealthTable {
    map: HashMap<MapData, OutStealthKey, u32>,
    owners: HashMap<MapData, u64, ConnOwner>,
}

impl StealthTable {
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let open = |name: &str| -> anyhow::Result<aya::maps::Map> {
            let data = MapData::from_pin(pin_dir.join(name))
                .with_context(|| format!("opening the pinned map {name}"))?;
            aya::maps::Map::from_map_data(data).with_context(|| format!("map {name}"))
        };
        Ok(Self {
            map: HashMap::try_from(open(maps::OUT_STEALTH)?)
                .context("OUT_STEALTH has an unexpected layout")?,
            owners: HashMap::try_from(open(maps::SOCK_OWNER)?)
                .context("SOCK_OWNER has an unexpected layout")?,
        })
    }

    /// Every held (socket, destination) and the verdict word that holds it.
    pub fn entries(&self) -> Vec<(OutStealthKey, u32)> {
        self.map.iter().filter_map(Result::ok).collect()
    }

    /// Who made the socket `cookie` (`None`: not recorded, or forgotten).
    pub fn owner(&self, cookie: u64) -> Option<ConnOwner> {
        self.owners.get(&cookie, 0).ok().filter(ConnOwner::is_known)
    }

    /// Releases a socket: its packets to that destination leave again.
    pub fn release(&mut self, key: &OutStealthKey) {
        let _ = self.map.remove(key);
    }
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

/// Where a listener hook's link is pinned: `links/cgroup-post_bind4`, ...
pub fn sock_hook_pin(pin_dir: &Path, hook: SockHook) -> std::path::PathBuf {
    pin_dir
        .join(LINK_DIR)
        .join(format!("cgroup-{}", hook.name()))
}

/// Loads the listener hooks, attaches them to `cgroup` and pins their links, replacing links a
/// previous daemon pinned (attached first, then the old pin removed). Without the kernel
/// offsets for program identity the hooks still record uid and cgroups.
pub fn attach_listener_hooks(cgroup: &Cgroup, pin_dir: &Path) -> anyhow::Result<Vec<PinnedLink>> {
    prepare_pin_dir(pin_dir)?;
    let mut loader = EbpfLoader::new();
    if let Ok(offsets) = crate::identity::kernel_offsets() {
        offsets.set_globals(&mut loader);
    }
    // The object declares every shared map; these open the ones the generations pinned.
    let pinned_size = |name: &str| {
        MapInfo::from_pin(pin_dir.join(name))
            .map(|i| i.max_entries())
            .unwrap_or(1)
    };
    let mut ebpf = loader
        .default_map_pin_directory(pin_dir)
        .map_max_entries(maps::CT_EST, pinned_size(maps::CT_EST))
        .map_max_entries(maps::CT_NEW, pinned_size(maps::CT_NEW))
        .map_max_entries(maps::CT_LOCAL, pinned_size(maps::CT_LOCAL))
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let mut pinned = Vec::new();
    for hook in SockHook::ALL {
        let name = hook.program();
        let prog: &mut CgroupSock = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?
            .try_into()
            .with_context(|| format!("{name} is not a cgroup_sock program"))?;
        prog.load().map_err(verifier_context)?;
        let id = prog
            .attach(&cgroup.file, CgroupAttachMode::Single)
            .with_context(|| {
                format!(
                    "attaching the {} hook to the cgroup {}",
                    hook.name(),
                    cgroup.path.display()
                )
            })?;
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

/// The listener table ([`maps::LISTENERS`]), opened from its pin.
pub struct ListenerTable {
    map: HashMap<MapData, ListenerKey, Listener>,
    owners: HashMap<MapData, u64, ListenerKey>,
}

impl ListenerTable {
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let open = |name: &str| -> anyhow::Result<aya::maps::Map> {
            let data = MapData::from_pin(pin_dir.join(name))
                .with_context(|| format!("opening the pinned map {name}"))?;
            aya::maps::Map::from_map_data(data).with_context(|| format!("map {name}"))
        };
        Ok(Self {
            map: HashMap::try_from(open(maps::LISTENERS)?)
                .context("LISTENERS has an unexpected layout")?,
            owners: HashMap::try_from(open(maps::LISTENER_OF)?)
                .context("LISTENER_OF has an unexpected layout")?,
        })
    }

    /// Forgets every entry (a fresh start: sockets may have closed while no hook ran).
    pub fn clear(&mut self) {
        let keys: Vec<ListenerKey> = self.map.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.map.remove(&k);
        }
        let cookies: Vec<u64> = self.owners.keys().filter_map(Result::ok).collect();
        for c in cookies {
            let _ = self.owners.remove(&c);
        }
    }

    /// Every recorded socket.
    pub fn entries(&self) -> std::collections::HashMap<ListenerKey, Listener> {
        self.map.iter().filter_map(Result::ok).collect()
    }

    /// Records a socket bound before the hooks ran, unless the hooks recorded that address and
    /// port since.
    pub fn seed(&mut self, key: ListenerKey, listener: Listener) -> anyhow::Result<bool> {
        if self.map.get(&key, 0).is_ok() {
            return Ok(false);
        }
        self.map
            .insert(&key, &listener, 0)
            .context("recording a listening socket")?;
        if listener.cookie != 0 {
            self.owners
                .insert(&listener.cookie, &key, 0)
                .context("recording a listening socket's cookie")?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_a_bpf_filesystem_only_where_none_is_and_only_under_sys_fs_bpf() {
        let default = Path::new("/sys/fs/bpf/firewall");
        // Mounted (by systemd): nothing to do, wherever the pin directory is.
        assert_eq!(
            pin_fs_plan(default, BPF_FS_MAGIC, Some(BPF_FS_MAGIC)),
            PinFs::Ready
        );
        assert_eq!(
            pin_fs_plan(Path::new("/run/fw"), BPF_FS_MAGIC, Some(SYSFS_MAGIC)),
            PinFs::Ready
        );
        // Nothing on /sys/fs/bpf (the bare sysfs directory): mount there.
        assert_eq!(
            pin_fs_plan(default, SYSFS_MAGIC, Some(SYSFS_MAGIC)),
            PinFs::MountRoot
        );
        assert_eq!(
            pin_fs_plan(Path::new(BPF_FS_ROOT), SYSFS_MAGIC, Some(SYSFS_MAGIC)),
            PinFs::MountRoot
        );
        // Something else mounted on /sys/fs/bpf is not covered up.
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        assert_eq!(
            pin_fs_plan(default, TMPFS_MAGIC, Some(TMPFS_MAGIC)),
            PinFs::NotBpf
        );
        // A pin directory elsewhere is the administrator's to mount; a name that merely
        // starts with the same characters is elsewhere.
        assert_eq!(
            pin_fs_plan(Path::new("/run/fw"), TMPFS_MAGIC, Some(SYSFS_MAGIC)),
            PinFs::NotBpf
        );
        assert_eq!(
            pin_fs_plan(Path::new("/sys/fs/bpfx/fw"), SYSFS_MAGIC, Some(SYSFS_MAGIC)),
            PinFs::NotBpf
        );
        // No /sys/fs/bpf at all (a kernel without bpf): nothing to mount on.
        assert_eq!(pin_fs_plan(default, SYSFS_MAGIC, None), PinFs::NotBpf);
    }

    #[test]
    fn a_pin_directory_off_bpffs_fails_saying_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = format!(
            "{:#}",
            prepare_pin_dir(&dir.path().join("fw")).expect_err("not a bpf filesystem")
        );
        assert!(
            err.contains("not on a bpf filesystem") && err.contains("mount -t bpf"),
            "{err}"
        );
        assert!(!dir.path().join("fw").exists(), "nothing created: {err}");
    }
}
