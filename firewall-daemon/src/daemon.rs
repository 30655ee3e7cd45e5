//! The daemon: validates and compiles the rules, attaches the datapath (XDP and TC egress on
//! the interfaces, the outbound hooks on the cgroup), serves the control socket, reloads
//! atomically on SIGHUP or `fwctl reload`, and on SIGTERM/SIGINT either leaves the pinned
//! firewall enforcing (`on_stop = "keep"`) or detaches it.
//!
//! Everything that touches the kernel objects runs in one loop, one event at a time, which keeps
//! them single-owner and reloads strictly ordered. Control connections are read and written by
//! tasks of their own (with timeouts and a size cap), so a slow or silent client never holds
//! that loop: only its complete request does, for as long as answering takes.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::programs::{cgroup_sock_addr::CgroupSockAddrLink, xdp::XdpLink};
use firewall_common::{
    ct::ConnOwner,
    identity::{Listener, ListenerKey, Owner},
};
use log::{error, info, warn};
use sd_notify::NotifyState;
use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::UCred},
    signal::unix::{SignalKind, signal},
};

use crate::{
    cgroup::{self, Cgroup},
    compile, config,
    conntrack::{self, Tables},
    control::{
        self, ConnView, ConnsData, ConntrackStatus, DefaultsView, HookStatus, InterfaceStatus,
        KernelStatus, ListData, OutboundStatus, ReloadData, Request, Response, RuleView,
        StatusData,
    },
    hostaddrs::HostMaps,
    interfaces::{self, LinkLayer},
    kernel::{self, EgressLink, Generation, Hook, ListenerTable, OutboundGeneration, StealthTable},
    listeners,
    model::{
        Action, ConnectMeta, Direction, Interfaces, OnStop, PacketMeta, PacketProto, Ruleset,
        XdpMode,
    },
    owners::OwnerNames,
    policy::Policy,
    resolve::{Resolved, Watcher},
    sockets,
};

/// Command-line settings that take precedence over `[daemon]` in the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub interfaces: Vec<String>,
    pub xdp_mode: Option<XdpMode>,
    pub control_socket: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub cgroup: Option<PathBuf>,
}

impl Overrides {
    fn apply(&self, rs: &mut Ruleset) {
        if !self.interfaces.is_empty() {
            rs.daemon.interfaces = Interfaces::List(self.interfaces.clone());
        }
        if let Some(m) = self.xdp_mode {
            rs.daemon.xdp_mode = m;
        }
        if let Some(p) = &self.control_socket {
            rs.daemon.control_socket = p.clone();
        }
        if let Some(p) = &self.pin_dir {
            rs.daemon.pin_dir = p.clone();
        }
        if let Some(p) = &self.cgroup {
            rs.daemon.cgroup = Some(p.clone());
        }
    }
}

struct Attached {
    ifname: String,
    /// The interface's index when attached: a new interface with the same name is another one.
    ifindex: u32,
    mode: &'static str,
    /// Which entry points it runs (Ethernet or IP frames).
    layer: LinkLayer,
    link: XdpLink,
    /// None only while a reload is moving it.
    egress: Option<EgressLink>,
    /// "tcx" or "netlink", kept for status while `egress` is moving.
    egress_kind: &'static str,
}

/// The outbound hooks' attachments to the cgroup, one pinned link per hook.
type HookLinks = Vec<(Hook, CgroupSockAddrLink)>;

/// Rule names of recent generations, so `fwctl conns` can name the rule that admitted a flow
/// after the rules were reloaded.
const RULE_HISTORY: usize = 16;

struct State {
    config_path: PathBuf,
    overrides: Overrides,
    ruleset: Ruleset,
    generation: Generation,
    attached: Vec<Attached>,
    /// The outbound rules: their generation, the cgroup it judges and the hooks' links.
    outbound: OutboundGeneration,
    cgroup: Cgroup,
    hooks: HookLinks,
    generation_no: u64,
    started: Instant,
    last_reload: Option<String>,
    tables: Tables,
    /// The interfaces' MACs and the host's addresses, for the reject path.
    host: HostMaps,
    history: VecDeque<(u32, Vec<String>)>,
    gc_interval: Arc<AtomicU32>,
    seeded: usize,
    adopted: bool,
    /// The interfaces setting in force (command line or file at start).
    interfaces: Interfaces,
    /// Configured interfaces that do not exist yet.
    waiting: Vec<String>,
    /// Interfaces the setting covers that are not protected, with the reason.
    unprotected: Vec<(String, String)>,
    /// What does not work as documented on this host (see `fwctl status`).
    degraded: Vec<String>,
    /// What the rules' `program` and `unit` selectors resolve to in the rules in force.
    resolved: Resolved,
    resolve_warnings: Vec<String>,
}

/// How often selectors are resolved again even without a file-system event: a unit's cgroup
/// appears without notification, and a program's directory may not exist yet.
const RESOLVE_PERIOD: Duration = Duration::from_secs(2);

/// A generation id for the datapath: seconds since the epoch, kept increasing, so ids stay
/// distinct across reloads and daemon restarts.
fn next_generation_id(last: u32) -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    now.max(last.wrapping_add(1)).max(1)
}

fn rule_names(rs: &Ruleset) -> Vec<String> {
    rs.rules.iter().map(|r| r.name.clone()).collect()
}

/// Loads and validates the file, with command-line overrides applied.
fn load_rules(path: &Path, overrides: &Overrides) -> anyhow::Result<Ruleset> {
    let mut rs = config::load(path).map_err(|e| anyhow!("{e}"))?;
    overrides.apply(&mut rs);
    Ok(rs)
}

pub async fn run(config_path: PathBuf, overrides: Overrides) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives as soon as the readiness line is out must stop
    // the daemon the orderly way (on_stop), not kill it.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let ruleset = load_rules(&config_path, &overrides)?;
    for w in &ruleset.warnings {
        warn!("{w}");
    }
    // The outbound hooks' cgroup: the configured one, else the whole host (the root of the
    // cgroup2 mount). Checked before anything is touched.
    let cgroup_path = match &ruleset.daemon.cgroup {
        Some(p) => p.clone(),
        None => cgroup::mount()?,
    };
    let cgroup = Cgroup::open(&cgroup_path)?;
    let resolved = Resolved::resolve(&ruleset, &cgroup.path);
    let resolve_warnings = resolved.warnings(&ruleset);
    for w in &resolve_warnings {
        warn!("{w}");
    }
    let compiled = compile::compile(&ruleset, &resolved)?;
    let compiled_out = compile::compile_direction(&ruleset, Direction::Out, &resolved)?;
    crate::kernel::features::check_required()?;
    // Before touching anything shared (pins, interfaces): a second daemon must not disturb
    // the first, and a file that is not a stale socket stops the start before anything does.
    remove_stale_socket(&ruleset.daemon.control_socket)?;
    let pin_dir = ruleset.daemon.pin_dir.clone();
    kernel::prepare_pin_dir(&pin_dir)?;
    // A previous daemon that died (or was killed) leaves its links pinned: they go on
    // enforcing its rules, and this daemon adopts them, its connection table included.
    let adopting = std::fs::read_dir(pin_dir.join(kernel::LINK_DIR))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    // Declared before everything that pins or attaches, so it is dropped last. On a fresh
    // start every failure undoes everything; when adopting, a failed start leaves the previous
    // daemon's enforcement as it was.
    let mut cleanup = PinCleanup {
        dir: pin_dir.clone(),
        armed: !adopting,
    };
    kernel::discard_incompatible_pins(&pin_dir);
    // Entries adopted from a previous daemon name its generations: start after them.
    let last_gen = Tables::open(&pin_dir)
        .map(|t| {
            t.flows()
                .iter()
                .map(|f| f.entry.generation)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let gen_id = next_generation_id(last_gen);
    let mut generation = Generation::load(&compiled, &ruleset, &pin_dir, gen_id)?;
    let mut outbound = OutboundGeneration::load(&compiled_out, &ruleset, &pin_dir, gen_id)?;
    let mut tables = Tables::open(&pin_dir)?;
    let mut host = HostMaps::open(&pin_dir)?;

    // Seed before attaching, so enforcement never starts without the host's connections.
    let ct_cfg = kernel::ct_config(&ruleset.conntrack, gen_id);
    let mut degraded = Vec::new();
    let seeded = match sockets::host_flows() {
        Ok(flows) => {
            let listeners = sockets::tcp_listeners().unwrap_or_else(|e| {
                warn!("could not list listening sockets: {e:#}; seeded connections count as opened by this host");
                degraded.push(format!(
                    "listening sockets could not be listed ({e:#}): connections open at start \
                     count as opened by this host and `reload --recheck` leaves them alone"
                ));
                Vec::new()
            });
            tables.seed(&flows, &listeners, &ct_cfg, conntrack::monotonic_ns())
        }
        Err(e) => {
            warn!("could not list the host's connections to seed the table: {e:#}");
            degraded.push(format!(
                "the connection table was not seeded from the host's sockets ({e:#}): \
                 connections open before the daemon started may be cut"
            ));
            0
        }
    };
    info!("seeded the connection table with {seeded} existing connection(s)");

    // Subscribed before listing, so an interface appearing in between is not missed.
    let mut link_events = interfaces::LinkEvents::subscribe()?;
    sync_host_addrs(&mut host);
    let all = interfaces::current()?;
    let interfaces::Wanted {
        attach: want,
        missing: waiting,
        unsupported,
    } = interfaces::wanted(&ruleset.daemon.interfaces, &all);
    for name in &waiting {
        warn!("interface {name} does not exist yet; the firewall attaches when it appears");
    }
    if want.is_empty() && waiting.is_empty() {
        warn!("no interface to protect yet; the firewall attaches to interfaces as they appear");
    }
    let named = matches!(ruleset.daemon.interfaces, Interfaces::List(_));
    let mut unprotected = Vec::new();
    for iface in &unsupported {
        let why = unsupported_reason(iface);
        if named {
            bail!("interface {}: {why}", iface.name);
        }
        warn!("{}: {why}", iface.name);
        unprotected.push((iface.name.clone(), why));
    }
    let mut attached = Vec::new();
    for iface in &want {
        match attach_interface(&mut generation, iface, ruleset.daemon.xdp_mode, &pin_dir) {
            Ok(a) => attached.push(a),
            // A named interface that cannot be protected stops the start; with "auto", one
            // odd interface (a tunnel without XDP support) does not.
            Err(e) if named => return Err(e),
            Err(e) => {
                warn!("{}: NOT protected: {e:#}", iface.name);
                unprotected.push((iface.name.clone(), format!("NOT protected: {e:#}")));
            }
        }
    }
    let names: Vec<String> = want.iter().map(|i| i.name.clone()).collect();
    forget_other_links(&pin_dir, &names);
    let hooks = attach_hooks(&mut outbound, &cgroup, &pin_dir)?;
    let listened = start_listener_table(&cgroup, &pin_dir, adopting, &mut degraded)?;
    info!("listener table: {listened} socket(s) bound before the daemon started recorded");
    let released = rejudge_stealth(&ruleset, &resolved, &pin_dir);
    if released > 0 {
        info!("released {released} socket(s) held by an outbound stealth the rules no longer say");
    }

    generation.pin(&pin_dir)?;
    let gc_interval = Arc::new(AtomicU32::new(ruleset.conntrack.gc_interval_secs));
    conntrack::spawn_expiry(&pin_dir, gc_interval.clone())?;
    let socket_path = ruleset.daemon.control_socket.clone();
    let listener = bind_control_socket(&socket_path, ruleset.daemon.control_group.as_deref())?;
    // From here on, stopping the daemon detaches the firewall and removes the pins.
    cleanup.armed = true;
    let ruleset_interfaces = ruleset.daemon.interfaces.clone();
    let mut history = VecDeque::new();
    history.push_back((gen_id, rule_names(&ruleset)));
    let mut state = State {
        config_path,
        overrides,
        ruleset,
        generation,
        attached,
        outbound,
        cgroup,
        hooks,
        generation_no: 1,
        started: Instant::now(),
        last_reload: None,
        tables,
        host,
        history,
        gc_interval,
        seeded,
        adopted: adopting,
        interfaces: ruleset_interfaces,
        waiting,
        unprotected,
        degraded,
        resolved,
        resolve_warnings,
    };
    // Each control connection is read and written by a task of its own; only complete
    // requests reach this loop, so a client that sends nothing (or reads nothing) delays no
    // interface attach, reload or other client.
    let (calls_tx, mut calls_rx) = tokio::sync::mpsc::channel::<ControlCall>(16);
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNECTIONS));
    let mut watched = state.program_paths();
    let mut watcher = Watcher::new(&watched, RESOLVE_PERIOD)?;
    // A resolution under way: the generation it started in, and its result.
    let mut resolving: Option<(u64, tokio::task::JoinHandle<Resolved>)> = None;

    let summary = format!(
        "firewall-daemon: ready ({} rules; interfaces: {}; outbound hooks on cgroup {}; control socket {})",
        state.ruleset.rules.len(),
        state
            .attached
            .iter()
            .map(|a| format!("{} {}", a.ifname, a.mode))
            .collect::<Vec<_>>()
            .join(", "),
        state.cgroup.path.display(),
        socket_path.display()
    );
    info!("{summary}");
    // The readiness line on stdout is the signal tests wait for; systemd (Type=notify) gets
    // READY=1, only now that every program is attached and the socket listens.
    println!("{summary}");
    let _ = std::io::stdout().flush();
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&state.status_line()),
    ]);

    loop {
        tokio::select! {
            _ = hup.recv() => {
                match state.reload(false) {
                    Ok(d) => info!(generation = d.generation; "reloaded on SIGHUP: {}", summarize(&d)),
                    Err(e) => error!("reload on SIGHUP failed, previous rules stay in force: {e:#}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            // Resolving may walk the cgroup tree or wait for systemctl: done on a blocking
            // thread, so that interface events and control requests are served meanwhile.
            _ = watcher.changed(), if resolving.is_none() => {
                let (rules, root) = (state.ruleset.clone(), state.cgroup.path.clone());
                let task = tokio::task::spawn_blocking(move || Resolved::resolve(&rules, &root));
                resolving = Some((state.generation_no, task));
            }
            done = async { (&mut resolving.as_mut().expect("guarded by is_some").1).await }, if resolving.is_some() => {
                let started_at = resolving.take().map(|(generation, _)| generation);
                match done {
                    // Rules loaded meanwhile were resolved on their own; the next wake looks again.
                    Ok(_) if started_at != Some(state.generation_no) => {}
                    Ok(resolved) => match state.reresolve(resolved) {
                        Ok(Some(d)) => info!(generation = d.generation; "a program or unit the rules name changed; rules recompiled: {}", summarize(&d)),
                        Ok(None) => {}
                        Err(e) => error!("recompiling for a changed program or unit failed, the rules in force stay: {e:#}"),
                    },
                    Err(e) => error!("resolving the rules' programs and units failed: {e}"),
                }
            }
            ev = link_events.next() => match ev {
                Ok(()) => state.reconcile_interfaces(),
                Err(e) => warn!("{e:#}"),
            },
            Some(call) = calls_rx.recv() => {
                let response = state.answer(call.cred, &call.line);
                // The client may have gone; its task then ends with nothing to write.
                let _ = call.reply.send(response);
            }
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    // Root's own connections are never turned away: whatever members of the
                    // control group hold open, the administrator can still reach the daemon.
                    let privileged = stream.peer_cred().is_ok_and(|c| {
                        c.uid() == 0 || c.uid() == nix::unistd::geteuid().as_raw()
                    });
                    let permit = connections.clone().try_acquire_owned().ok();
                    if privileged || permit.is_some() {
                        tokio::spawn(serve(stream, calls_tx.clone(), permit));
                    } else {
                        warn!(
                            "{MAX_CONTROL_CONNECTIONS} control connections of unprivileged \
                             users are open; closing a new one"
                        );
                    }
                }
                Err(e) => warn!("accepting a control connection: {e}"),
            },
        }
        let paths = state.program_paths();
        if paths != watched {
            watched = paths;
            watcher = Watcher::new(&watched, RESOLVE_PERIOD)?;
        }
    }
    notify(&[NotifyState::Stopping]);
    match state.ruleset.daemon.on_stop {
        OnStop::Keep => {
            cleanup.armed = false;
            info!(
                "stopping; the firewall keeps enforcing the last rules on {} interface(s) and \
                 the cgroup {} (on_stop = \"keep\"; pinned under {}); the next daemon adopts them",
                state.attached.len(),
                state.cgroup.path.display(),
                state.ruleset.daemon.pin_dir.display()
            );
        }
        OnStop::Detach => info!(
            "stopping: detaching from {} interface(s) and the cgroup {} (on_stop = \"detach\")",
            state.attached.len(),
            state.cgroup.path.display()
        ),
    }
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

/// Tells the service manager (systemd, with `Type=notify`); nothing happens when the daemon
/// was not started with `NOTIFY_SOCKET`.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("sd_notify: {e}");
    }
}

/// Removes the daemon's pins (and so detaches the firewall) when dropped, if armed: on a failed
/// fresh start, and on SIGTERM/SIGINT with `on_stop = "detach"`. A daemon that dies without
/// running this (a crash, SIGKILL), or stops with `on_stop = "keep"`, leaves the links pinned
/// and enforcing, for the next daemon to adopt.
struct PinCleanup {
    dir: PathBuf,
    armed: bool,
}

impl Drop for PinCleanup {
    fn drop(&mut self) {
        if self.armed {
            kernel::remove_pins(&self.dir);
        }
    }
}

/// Why an interface of a link layer the firewall cannot parse is not protected.
fn unsupported_reason(iface: &interfaces::IfInfo) -> String {
    format!(
        "NOT protected: link layer {}: the firewall parses only Ethernet frames and frames \
         that start at the IP header",
        iface.link.describe()
    )
}

/// Attaches (or adopts) the egress and XDP programs on one interface and pins both links.
/// Egress goes first so the host's new flows are recorded before inbound filtering starts.
/// Brings the reject path's view of the host's addresses up to date; a failure only costs
/// replies (rejects degrade to drops), so it is logged, not fatal.
fn sync_host_addrs(host: &mut HostMaps) {
    match host.sync() {
        Ok(0) => {}
        Ok(n) => warn!(
            "{n} interface or address entries did not fit the reject path's maps: rejects to \
             them are silent drops"
        ),
        Err(e) => warn!("updating the host's addresses for reject replies: {e:#}"),
    }
}

fn attach_interface(
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
fn attach_hooks(
    out: &mut OutboundGeneration,
    cgroup: &Cgroup,
    pin_dir: &Path,
) -> anyhow::Result<HookLinks> {
    let mut links = Vec::new();
    for hook in Hook::ALL {
        let pin = kernel::hook_pin(pin_dir, hook);
        let adoptable = pin.exists()
            && match cgroup::link_target(&pin) {
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
fn start_listener_table(
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
fn switch_hooks(
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

/// Who a flow a remote host opened belongs to, for judging it again as the XDP program judged
/// it: the owner the flow recorded (the listening socket's program and uid), with the unit of
/// the socket listening there now if that is the same program and uid (flows do not record
/// cgroups); a flow without a recorded owner (`record_owner = false`, seeded at start) belongs
/// to the socket that would receive it now.
fn flow_owner(
    f: &conntrack::Flow,
    listeners: &std::collections::HashMap<ListenerKey, Listener>,
) -> Option<Owner> {
    let listening =
        listeners::receiver(listeners, f.local(), f.key.proto, f.key.local_port).map(|l| l.owner);
    let recorded = f.entry.owner;
    if !recorded.is_known() {
        return listening;
    }
    let ancestors = listening
        .filter(|l| l.exe == recorded.exe && l.uid == recorded.uid)
        .map(|l| l.ancestors)
        .unwrap_or_default();
    Some(Owner {
        exe: recorded.exe,
        uid: recorded.uid,
        _pad: 0,
        ancestors,
    })
}

/// Who made a socket an outbound rule holds: what the hook recorded, with the cgroup the
/// process is in now (if it still runs the same executable).
fn socket_owner(recorded: ConnOwner) -> Owner {
    let ancestors = listeners::owner_of_pid(recorded.pid)
        .ok()
        .filter(|now| now.exe == recorded.exe)
        .map(|now| now.ancestors)
        .unwrap_or_default();
    Owner {
        exe: recorded.exe,
        uid: recorded.uid,
        _pad: 0,
        ancestors,
    }
}

/// Releases the sockets held by an outbound `stealth` that the rules in force no longer say
/// `stealth` for (their next packets leave). Returns how many.
fn rejudge_stealth(ruleset: &Ruleset, resolved: &Resolved, pin_dir: &Path) -> usize {
    let mut table = match StealthTable::open(pin_dir) {
        Ok(t) => t,
        Err(e) => {
            warn!("{e:#}");
            return 0;
        }
    };
    let policy = Policy::with_selectors(ruleset, resolved);
    let mut released = 0;
    for (key, _) in table.entries() {
        let proto = match key.proto {
            firewall_common::ct::IPPROTO_TCP => PacketProto::Tcp,
            _ => PacketProto::Udp,
        };
        let call = ConnectMeta {
            remote: conntrack::addr(key.remote),
            proto,
            remote_port: key.remote_port,
        };
        let d = match table.owner(key.cookie) {
            Some(recorded) => policy.decide_out_as(&call, &socket_owner(recorded)),
            None => policy.decide_out(&call),
        };
        if d.action != Action::Stealth {
            table.release(&key);
            released += 1;
        }
    }
    released
}

/// Unpins links a previous daemon left on interfaces this one does not protect (which
/// detaches them).
fn forget_other_links(pin_dir: &Path, ifnames: &[String]) {
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

fn summarize(d: &ReloadData) -> String {
    if d.unchanged() {
        return format!("no changes ({} rules)", d.rules);
    }
    format!(
        "{} added, {} removed{}{}; {} rules in force",
        d.added.len(),
        d.removed.len(),
        if d.reordered { ", reordered" } else { "" },
        if d.settings.is_empty() {
            String::new()
        } else {
            format!(", settings: {}", d.settings.join("; "))
        },
        d.rules
    )
}

/// Creates the socket with mode 0660 (group set to `group` if given). Failing to set
/// ownership or permissions is fatal: a world-usable control socket would let anyone rewrite
/// the firewall.
fn bind_control_socket(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    remove_stale_socket(path)?;
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    if let Some(g) = group {
        let gid = group_id(g)?;
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("setting group {g} on {}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting mode 0660 on {}", path.display()))?;
    Ok(listener)
}

/// Removes what a previous daemon left at `path`: only a socket nobody listens on. Anything
/// else there (a file, a directory, a symbolic link, a live socket) is not the daemon's to
/// delete, and starting is refused.
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "control_socket {} exists and is not a socket; the daemon only replaces a stale \
             socket: move that file away or set [daemon] control_socket to another path",
            path.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!(
            "another daemon is already answering on {}; stop it first",
            path.display()
        ),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display())),
        Err(e) => Err(e).with_context(|| {
            format!(
                "{} is a socket the daemon cannot tell is stale; remove it if no daemon runs",
                path.display()
            )
        }),
    }
}

fn group_id(name: &str) -> anyhow::Result<nix::unistd::Gid> {
    nix::unistd::Group::from_name(name)
        .with_context(|| format!("looking up group {name}"))?
        .map(|g| g.gid)
        .ok_or_else(|| anyhow!("control_group {name:?} does not exist"))
}

/// Root, the daemon's own user, or a member of the control group may use the socket.
fn authorize(cred: Result<UCred, String>, group: Option<&str>) -> Result<(), String> {
    let cred = cred?;
    let uid = cred.uid();
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    if let Some(g) = group
        && let Ok(gid) = group_id(g)
    {
        let gid = gid.as_raw();
        if cred.gid() == gid || supplementary_groups(cred.pid()).contains(&gid) {
            return Ok(());
        }
    }
    Err(format!(
        "permission denied: uid {uid} is not root{}",
        group
            .map(|g| format!(" and not in the control group {g:?}"))
            .unwrap_or_default()
    ))
}

fn supplementary_groups(pid: Option<i32>) -> Vec<u32> {
    let Some(pid) = pid else { return Vec::new() };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Control connections of users other than root served at once; more are closed at once.
/// Members of the control group must not be able to exhaust the daemon's descriptors.
const MAX_CONTROL_CONNECTIONS: usize = 32;

/// A complete request line read from a control connection, for the daemon's loop to answer.
struct ControlCall {
    cred: Result<UCred, String>,
    line: String,
    reply: tokio::sync::oneshot::Sender<Response>,
}

/// One control connection's task: reads the request (at most [`control::MAX_REQUEST`] bytes,
/// within [`REQUEST_TIMEOUT`]), has the loop answer it, writes the answer (within
/// [`REQUEST_TIMEOUT`]).
async fn serve(
    stream: UnixStream,
    calls: tokio::sync::mpsc::Sender<ControlCall>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    if let Err(e) = serve_one(stream, calls).await {
        warn!("control connection: {e:#}");
    }
}

async fn serve_one(
    stream: UnixStream,
    calls: tokio::sync::mpsc::Sender<ControlCall>,
) -> anyhow::Result<()> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"));
    let (read, mut write) = stream.into_split();
    // The request is read before answering even a refusal, so the client sees the refusal
    // rather than a broken pipe.
    let mut reader = BufReader::new(read).take(control::MAX_REQUEST as u64 + 1);
    let mut line = String::new();
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Response::err("timed out waiting for the request"),
        Ok(Err(e)) => Response::err(format!("reading the request: {e}")),
        Ok(Ok(_)) => {
            let (reply, answer) = tokio::sync::oneshot::channel();
            calls
                .send(ControlCall { cred, line, reply })
                .await
                .map_err(|_| anyhow!("the daemon is stopping"))?;
            answer
                .await
                .map_err(|_| anyhow!("the daemon is stopping"))?
        }
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(&out))
        .await
        .map_err(|_| anyhow!("timed out writing the response"))??;
    Ok(())
}

impl State {
    /// The response to one request line from a client with credentials `cred`.
    fn answer(&mut self, cred: Result<UCred, String>, line: &str) -> Response {
        let group = self.ruleset.daemon.control_group.clone();
        match authorize(cred, group.as_deref()) {
            Err(msg) => Response::err(msg),
            Ok(()) if line.len() > control::MAX_REQUEST => Response::err(format!(
                "request longer than {} bytes",
                control::MAX_REQUEST
            )),
            Ok(()) => match serde_json::from_str::<Request>(line.trim()) {
                Err(e) => Response::err(format!(
                    "malformed request ({e}); expected one JSON line like {{\"cmd\":\"status\"}}"
                )),
                Ok(req) => self.handle(req),
            },
        }
    }

    fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::List => Response::ok(self.list()),
            Request::Status => match self.status() {
                Ok(s) => Response::ok(s),
                Err(e) => Response::err(format!("{e:#}")),
            },
            Request::Conns => match self.conns() {
                Ok(c) => Response::ok(c),
                Err(e) => Response::err(format!("{e:#}")),
            },
            Request::Reload { recheck } => match self.reload(recheck) {
                Ok(d) => {
                    info!(generation = d.generation; "reloaded on request: {}", summarize(&d));
                    Response::ok(d)
                }
                Err(e) => {
                    error!("reload failed, previous rules stay in force: {e:#}");
                    Response::err(format!("{e:#}\nthe previous rules stay in force"))
                }
            },
        }
    }

    fn list(&self) -> ListData {
        let hits_in = self.generation.rule_hits().unwrap_or_default();
        let hits_out = self.outbound.rule_hits().unwrap_or_default();
        ListData {
            source: self.config_path.display().to_string(),
            defaults: DefaultsView::from(&self.ruleset.defaults),
            rules: self
                .ruleset
                .rules
                .iter()
                .map(|r| {
                    let hits = match r.direction {
                        Direction::In => &hits_in,
                        Direction::Out => &hits_out,
                    };
                    RuleView::new(r, hits.get(r.index as usize).copied().unwrap_or(0))
                })
                .collect(),
        }
    }

    fn status(&mut self) -> anyhow::Result<StatusData> {
        let interfaces = self.interface_status();
        let outbound_status = self.outbound_status();
        let rs = &self.ruleset;
        let outbound = rs
            .rules
            .iter()
            .filter(|r| r.direction == Direction::Out)
            .count();
        Ok(StatusData {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            config: self.config_path.display().to_string(),
            pin_dir: rs.daemon.pin_dir.display().to_string(),
            interfaces,
            waiting_for: self.waiting.clone(),
            kernel: self.kernel_status(),
            rules: rs.rules.len(),
            inbound_rules: rs.rules.len() - outbound,
            outbound_rules: outbound,
            outbound_rules_not_enforced: 0,
            outbound: outbound_status,
            defaults: DefaultsView::from(&rs.defaults),
            generation: self.generation_no,
            uptime_secs: self.started.elapsed().as_secs(),
            last_reload: self.last_reload.clone(),
            counters: self
                .generation
                .counters()?
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            warnings: rs
                .warnings
                .iter()
                .chain(&self.resolve_warnings)
                .cloned()
                .collect(),
            conntrack: self.conntrack_status(),
        })
    }

    /// Each protected interface, checked against its pinned attachment: someone with root can
    /// point the link at another program or unpin it, and the user should hear of it.
    fn interface_status(&mut self) -> Vec<InterfaceStatus> {
        let pin_dir = self.ruleset.daemon.pin_dir.clone();
        let generation = &mut self.generation;
        self.attached
            .iter()
            .map(|a| {
                let ours = generation.program_id(a.layer).unwrap_or(0);
                let running =
                    kernel::pinned_link_program(&kernel::link_pin(&pin_dir, "xdp", &a.ifname));
                let state = match running {
                    None => "the pinned attachment was removed by someone else".to_string(),
                    Some(id) if id != ours => {
                        format!("replaced: runs program {id}, not the firewall's {ours}")
                    }
                    Some(_) => "ok".to_string(),
                };
                InterfaceStatus {
                    name: a.ifname.clone(),
                    mode: a.mode.into(),
                    index: a.ifindex,
                    program_id: running.unwrap_or(0),
                    state,
                    egress: a.egress_kind.into(),
                    link_layer: a.layer.describe(),
                }
            })
            .chain(self.unprotected.iter().map(|(name, why)| InterfaceStatus {
                name: name.clone(),
                mode: String::new(),
                index: 0,
                program_id: 0,
                state: why.clone(),
                egress: String::new(),
                link_layer: String::new(),
            }))
            .collect()
    }

    /// The outbound hooks, each checked against its pinned link like the interfaces.
    fn outbound_status(&mut self) -> OutboundStatus {
        let pin_dir = self.ruleset.daemon.pin_dir.clone();
        let mut hooks = Vec::new();
        for hook in Hook::ALL {
            let ours = self.outbound.program_id(hook).unwrap_or(0);
            let pin = kernel::hook_pin(&pin_dir, hook);
            let target = cgroup::link_target(&pin).ok();
            let state = match target {
                None => "the pinned attachment was removed by someone else".to_string(),
                Some(t) if t.prog_id != ours => {
                    format!(
                        "replaced: runs program {}, not the firewall's {ours}",
                        t.prog_id
                    )
                }
                Some(t) if t.cgroup_id != self.cgroup.id => format!(
                    "attached to cgroup id {}, not {} (id {})",
                    t.cgroup_id,
                    self.cgroup.path.display(),
                    self.cgroup.id
                ),
                Some(_) => "ok".to_string(),
            };
            hooks.push(HookStatus {
                hook: hook.name().into(),
                program_id: target.map(|t| t.prog_id).unwrap_or(0),
                state,
            });
        }
        OutboundStatus {
            cgroup: self.cgroup.path.display().to_string(),
            cgroup_id: self.cgroup.id,
            hooks,
        }
    }

    fn kernel_status(&self) -> KernelStatus {
        let mut features = vec![
            "XDP attached through pinned bpf links".to_string(),
            "outbound rules in cgroup connect4/connect6/sendmsg4/sendmsg6 hooks (pinned bpf \
             links on the cgroup)"
                .to_string(),
        ];
        let kinds: std::collections::BTreeSet<&str> =
            self.attached.iter().map(|a| a.egress_kind).collect();
        for kind in kinds {
            features.push(match kind {
                "tcx" => "tc egress through TCX links (Linux 6.6 and later)".into(),
                _ => "tc egress through a cls_bpf filter under clsact (no TCX before Linux 6.6): \
                      not pinned, found again by its fixed priority and handle"
                    .into(),
            });
        }
        features.push(format!(
            "listener table kept by cgroup post_bind4/post_bind6/sock_release hooks on {} \
             (read by XDP for inbound rules that name programs)",
            self.cgroup.path.display()
        ));
        let mut degraded = self.degraded.clone();
        match crate::identity::kernel_offsets() {
            Ok(_) => features.push(format!(
                "program identity: (device, inode) of task->mm->exe_file, structure offsets \
                 from {}",
                crate::identity::VMLINUX_BTF
            )),
            Err(why) => degraded.push(format!(
                "program identity unavailable ({why}): rules that name a program cannot be \
                 loaded"
            )),
        }
        KernelStatus {
            release: crate::kernel::features::release(),
            features,
            degraded,
        }
    }

    fn conntrack_status(&self) -> ConntrackStatus {
        let (confirmed, unconfirmed) = self.tables.sizes();
        let (host_pending, host_pending_capacity) = self.tables.host_pending();
        let c = self.generation.counters().unwrap_or_default();
        let get = |name: &str| c.get(name).copied().unwrap_or(0);
        // The counters cover both LRU tables.
        let evicted = get("ct_new_inserted")
            .saturating_sub(get("ct_new_removed"))
            .saturating_sub(get("ct_daemon_removed"))
            .saturating_sub((unconfirmed + host_pending) as u64);
        ConntrackStatus {
            confirmed,
            confirmed_capacity: self.tables.capacity(true),
            unconfirmed,
            unconfirmed_capacity: self.tables.capacity(false),
            host_pending,
            host_pending_capacity,
            evicted,
            seeded_at_start: self.seeded,
            adopted: self.adopted,
        }
    }

    /// What admitted a flow, in words.
    fn admitted_by(&self, rule: u32, generation: u32) -> String {
        use firewall_common::{DEFAULT_RULE, ct, verdict_rule};
        match rule {
            ct::RULE_LOCAL => "host (outbound)".into(),
            ct::RULE_SEEDED => "host socket at start-up".into(),
            ct::RULE_PICKUP => "host traffic (picked up)".into(),
            word => {
                let idx = verdict_rule(word);
                if idx == DEFAULT_RULE {
                    return "[defaults] inbound".into();
                }
                let name = self
                    .history
                    .iter()
                    .find(|(id, _)| *id == generation)
                    .and_then(|(_, names)| names.get(idx as usize));
                match name {
                    Some(n) if generation == self.generation.id => {
                        format!("rule {} \"{n}\"", idx + 1)
                    }
                    Some(n) => format!("rule {} \"{n}\" (earlier rules)", idx + 1),
                    None => format!("rule {} (earlier rules)", idx + 1),
                }
            }
        }
    }

    fn conns(&self) -> anyhow::Result<ConnsData> {
        use firewall_common::ct::{self, FLAG_DENIED, ORIGIN_LOCAL, state};
        let now = conntrack::monotonic_ns();
        let mut names = OwnerNames::new(
            self.resolved
                .programs
                .iter()
                .filter_map(|(p, id)| Some((p.as_path(), (*id)?))),
        );
        let mut connections: Vec<ConnView> = self
            .tables
            .flows()
            .into_iter()
            .filter(|f| f.entry.expires_ns > now)
            .map(|f| {
                let e = &f.entry;
                let icmp = matches!(f.key.proto, ct::IPPROTO_ICMP | ct::IPPROTO_ICMPV6);
                let endpoint = |ip: std::net::IpAddr, port: u16| {
                    if icmp {
                        ip.to_string()
                    } else {
                        std::net::SocketAddr::new(ip, port).to_string()
                    }
                };
                let local = if icmp {
                    format!("{} id={}", f.local(), f.key.local_port)
                } else {
                    endpoint(f.local(), f.key.local_port)
                };
                ConnView {
                    proto: conntrack::proto_name(f.key.proto).into(),
                    local,
                    remote: endpoint(f.remote(), f.key.remote_port),
                    state: state::name(e.state).into(),
                    origin: if e.origin == ORIGIN_LOCAL {
                        "local"
                    } else {
                        "remote"
                    }
                    .into(),
                    table: if f.confirmed() {
                        "confirmed"
                    } else {
                        "unconfirmed"
                    }
                    .into(),
                    age_secs: now.saturating_sub(e.created_ns) / 1_000_000_000,
                    expires_in_secs: e.expires_ns.saturating_sub(now) / 1_000_000_000,
                    packets_in: e.packets_in,
                    packets_out: e.packets_out,
                    bytes_in: e.bytes_in,
                    bytes_out: e.bytes_out,
                    admitted_by: self.admitted_by(e.rule, e.generation),
                    denied: e.flags & FLAG_DENIED != 0,
                    program: names.program(&e.owner),
                    pid: (e.owner.pid != 0).then_some(e.owner.pid),
                    user: e.owner.is_known().then(|| names.user(e.owner.uid)),
                }
            })
            .collect();
        connections
            .sort_by(|a, b| (&a.proto, &a.local, &a.remote).cmp(&(&b.proto, &b.local, &b.remote)));
        Ok(ConnsData { connections })
    }

    /// Re-judges every tracked flow a remote host opened under the rules now in force; marks
    /// those they deny. Returns their descriptions. `pin_dir`: where the maps are pinned (the
    /// listener table).
    fn recheck(&mut self, pin_dir: &Path) -> Vec<String> {
        use firewall_common::{
            ACTION_ALLOW, ACTION_REJECT, ACTION_STEALTH, DEFAULT_RULE, ct, verdict,
        };
        let now = conntrack::monotonic_ns();
        let cfg = kernel::ct_config(&self.ruleset.conntrack, self.generation.id);
        let policy = Policy::with_selectors(&self.ruleset, &self.resolved);
        let listeners = match ListenerTable::open(pin_dir) {
            Ok(t) => t.entries(),
            Err(e) => {
                warn!(
                    "recheck: {e:#}; rules about programs are judged by the owners flows recorded only"
                );
                std::collections::HashMap::new()
            }
        };
        let mut ended = Vec::new();
        for f in self.tables.flows() {
            if f.entry.origin != ct::ORIGIN_REMOTE || f.entry.expires_ns <= now {
                continue;
            }
            let proto = match f.key.proto {
                ct::IPPROTO_TCP => PacketProto::Tcp,
                ct::IPPROTO_UDP => PacketProto::Udp,
                _ => continue,
            };
            let owner = flow_owner(&f, &listeners);
            let d = policy.decide_for(
                &PacketMeta {
                    remote: f.remote(),
                    proto,
                    local_port: f.key.local_port,
                },
                owner.as_ref(),
            );
            let action = match d.action {
                Action::Allow => ACTION_ALLOW,
                Action::Reject => ACTION_REJECT,
                Action::Stealth => ACTION_STEALTH,
            };
            if action == ACTION_ALLOW {
                continue;
            }
            let word = verdict(d.rule.unwrap_or(DEFAULT_RULE), action);
            if self.tables.deny(&f, word, &cfg, now) {
                let by = d
                    .rule
                    .and_then(|i| self.ruleset.rules.get(i as usize))
                    .map(|r| format!("rule {} \"{}\"", r.index + 1, r.name))
                    .unwrap_or_else(|| "[defaults] inbound".into());
                let local = std::net::SocketAddr::new(f.local(), f.key.local_port);
                let remote = std::net::SocketAddr::new(f.remote(), f.key.remote_port);
                // Close the host's end too (like `ss -K`), so the application sees the
                // connection end instead of waiting on a peer it can no longer hear.
                let closed = if f.key.proto == ct::IPPROTO_TCP {
                    match sockets::destroy_tcp(local, remote) {
                        Ok(true) => "; host socket closed",
                        Ok(false) => "",
                        Err(e) => {
                            warn!("closing the host's socket {local} <- {remote}: {e:#}");
                            "; host socket left open"
                        }
                    }
                } else {
                    ""
                };
                let proto = conntrack::proto_name(f.key.proto);
                let line = format!(
                    "{proto} {local} <- {remote} ({}): {} by {by}{closed}",
                    firewall_common::ct::state::name(f.entry.state),
                    d.action,
                );
                info!(
                    rule = by.as_str(), action = d.action.to_string().as_str(), direction = "in",
                    proto = proto, local_addr = local.ip().to_string().as_str(),
                    local_port = local.port(), remote_addr = remote.ip().to_string().as_str(),
                    remote_port = remote.port();
                    "recheck ended {line}"
                );
                ended.push(line);
            }
        }
        ended
    }

    /// Follows the interfaces: attaches to wanted ones that appeared, forgets those that went
    /// away (the kernel detached their programs with them).
    fn reconcile_interfaces(&mut self) {
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

    /// One line for `systemctl status`.
    fn status_line(&self) -> String {
        let (confirmed, unconfirmed) = self.tables.sizes();
        let (host_pending, _) = self.tables.host_pending();
        format!(
            "{} rules (generation {}) on {}, outbound on cgroup {}; {} connections tracked",
            self.ruleset.rules.len(),
            self.generation_no,
            self.attached
                .iter()
                .map(|a| a.ifname.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            self.cgroup.path.display(),
            confirmed + unconfirmed + host_pending
        )
    }

    /// [`Self::switch_rules`], announced to the service manager (RELOADING=1 ... READY=1).
    fn reload(&mut self, recheck: bool) -> anyhow::Result<ReloadData> {
        let mut reloading = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            reloading.push(now);
        }
        notify(&reloading);
        let result = self.switch_rules(recheck);
        let status = match &result {
            Ok(_) => self.status_line(),
            Err(e) => format!(
                "{}; the last reload failed: {}",
                self.status_line(),
                format!("{e:#}").replace('\n', " ")
            ),
        };
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        result
    }

    /// Builds the new generation completely beside the old one, then switches every interface
    /// to it. Any failure before the switch leaves the old rules untouched.
    fn switch_rules(&mut self, recheck: bool) -> anyhow::Result<ReloadData> {
        let t0 = Instant::now();
        let new_rules = load_rules(&self.config_path, &self.overrides)?;
        let resolved = Resolved::resolve(&new_rules, &self.cgroup.path);
        self.switch_to(new_rules, resolved, recheck, t0)
    }

    /// The executables the rules in force name, for the watcher.
    fn program_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.resolved.programs.keys().cloned().collect();
        paths.dedup();
        paths
    }

    /// Takes the selectors of the rules in force resolved again; when a program was replaced
    /// or appeared, or a unit (re)started, recompiles the same rules for it (`None`: no change).
    fn reresolve(&mut self, resolved: Resolved) -> anyhow::Result<Option<ReloadData>> {
        if resolved == self.resolved {
            return Ok(None);
        }
        let rules = self.ruleset.clone();
        self.switch_to(rules, resolved, false, Instant::now())
            .map(Some)
    }

    /// Builds the new generation for `new_rules` with their selectors resolved as `resolved`,
    /// then switches to it (see [`Self::switch_rules`]).
    fn switch_to(
        &mut self,
        new_rules: Ruleset,
        resolved: Resolved,
        recheck: bool,
        t0: Instant,
    ) -> anyhow::Result<ReloadData> {
        let compiled = compile::compile(&new_rules, &resolved)
            .with_context(|| format!("{}", self.config_path.display()))?;
        let compiled_out = compile::compile_direction(&new_rules, Direction::Out, &resolved)
            .with_context(|| format!("{} (outbound rules)", self.config_path.display()))?;
        // Pins stay where the running generation has them even if the file moved pin_dir.
        let pin_dir = self.ruleset.daemon.pin_dir.clone();
        let new_id = next_generation_id(self.generation.id);
        let mut new_gen = Generation::load(&compiled, &new_rules, &pin_dir, new_id)?;
        let mut new_out = OutboundGeneration::load(&compiled_out, &new_rules, &pin_dir, new_id)?;
        let mut data = control::diff(&self.ruleset, &new_rules);

        let old_attached = std::mem::take(&mut self.attached);
        let mut switched = Vec::new();
        let mut failure = None;
        for a in old_attached {
            if failure.is_some() {
                // Keep the remaining interfaces on the old program.
                switched.push((a, false));
                continue;
            }
            let ifname = a.ifname.clone();
            // Only the link moves; the rest of `a` is rebuilt around whichever link results.
            let link = a.link;
            match new_gen.replace(link, a.layer) {
                Ok(link) => switched.push((Attached { link, ..a }, true)),
                Err(e) => {
                    // The link was consumed by the failed update: attach the old program again.
                    match self
                        .generation
                        .attach(&ifname, self.ruleset.daemon.xdp_mode, a.layer)
                    {
                        Ok((link, mode)) => {
                            let pin = kernel::link_pin(&pin_dir, "xdp", &ifname);
                            match kernel::pin_xdp_link(link, &pin) {
                                Ok(link) => switched.push((Attached { link, mode, ..a }, false)),
                                Err(e3) => {
                                    error!("{ifname}: pinning the re-attached link: {e3:#}")
                                }
                            }
                        }
                        Err(e2) => {
                            error!("{ifname}: re-attaching the previous rules failed: {e2:#}")
                        }
                    }
                    failure = Some(e.context(format!("switching {ifname} to the new rules")));
                }
            }
        }
        if let Some(e) = failure {
            // Roll the interfaces already switched back to the old generation.
            for (a, on_new) in switched {
                if on_new {
                    let ifname = a.ifname.clone();
                    let link = a.link;
                    match self.generation.replace(link, a.layer) {
                        Ok(link) => self.attached.push(Attached { link, ..a }),
                        Err(e2) => error!("{ifname}: rolling back failed: {e2:#}"),
                    }
                } else {
                    self.attached.push(a);
                }
            }
            return Err(e);
        }
        // The outbound hooks follow. If one cannot be switched, they are all put back and the
        // interfaces are switched back too: the old rules stay in force in both directions.
        let (hooks, failure) = switch_hooks(
            std::mem::take(&mut self.hooks),
            &mut new_out,
            &mut self.outbound,
            &pin_dir,
        );
        self.hooks = hooks;
        if let Some(e) = failure {
            for (a, _) in switched {
                let ifname = a.ifname.clone();
                let link = a.link;
                match self.generation.replace(link, a.layer) {
                    Ok(link) => self.attached.push(Attached { link, ..a }),
                    Err(e2) => error!("{ifname}: rolling back failed: {e2:#}"),
                }
            }
            return Err(e);
        }
        self.attached = switched.into_iter().map(|(a, _)| a).collect();
        // The egress programs only record flows; one that cannot be switched keeps running
        // the previous generation's copy, which shares the tables.
        for a in &mut self.attached {
            if let Some(link) = a.egress.take() {
                match new_gen.replace_egress(link, a.layer) {
                    Ok(link) => a.egress = Some(link),
                    Err(e) => error!("{}: switching the egress program: {e:#}", a.ifname),
                }
            }
        }
        if let Err(e) = new_gen.pin(&self.ruleset.daemon.pin_dir) {
            warn!("the new rules are in force, but pinning them for inspection failed: {e:#}");
        }
        self.generation = new_gen;
        self.outbound = new_out;
        self.resolve_warnings = resolved.warnings(&new_rules);
        for w in &self.resolve_warnings {
            warn!("{w}");
        }
        self.resolved = resolved;
        self.ruleset = new_rules;
        let released = rejudge_stealth(&self.ruleset, &self.resolved, &pin_dir);
        if released > 0 {
            info!(
                "released {released} socket(s) held by an outbound stealth the new rules no longer say"
            );
        }
        self.generation_no += 1;
        self.history.push_back((new_id, rule_names(&self.ruleset)));
        while self.history.len() > RULE_HISTORY {
            self.history.pop_front();
        }
        self.gc_interval
            .store(self.ruleset.conntrack.gc_interval_secs, Ordering::Relaxed);
        if recheck {
            data.rechecked = true;
            data.ended = self.recheck(&pin_dir);
        }
        data.generation = self.generation_no;
        data.took_ms = t0.elapsed().as_millis() as u64;
        data.warnings = self.ruleset.warnings.clone();
        data.warnings.extend(self.resolve_warnings.iter().cloned());
        self.last_reload = Some(format!(
            "{} (generation {})",
            jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .unwrap_or(jiff::Timestamp::now()),
            self.generation_no
        ));
        Ok(data)
    }
}
