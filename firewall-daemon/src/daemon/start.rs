//! Starting: validate and compile the rules, prepare the pin directory, load the first
//! generation, seed the connection table from the host's sockets, attach (or adopt what a
//! previous daemon left), and bind the control socket. The order is what makes a start safe:
//! nothing is attached before the rules compiled, and the table is seeded before filtering
//! starts, so the administrator's own SSH session survives.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context as _, bail};
use log::{error, info, warn};
use std::sync::{Arc, atomic::AtomicU32};
use tokio::net::UnixListener;

use super::{Overrides, PinCleanup, State};
use super::{
    attach::{
        attach_hooks, attach_interface, forget_other_links, start_listener_table, sync_host_addrs,
        unsupported_reason,
    },
    history::RuleHistory,
    recheck::rejudge_stealth,
    reload::{load_rules, next_generation_id},
    server::{bind_control_socket, remove_stale_socket},
};
use crate::{
    compile,
    conntrack::{self, Tables},
    decision_log,
    host::addrs::HostMaps,
    host::cgroups::{self, Cgroup},
    host::interfaces::{self},
    host::selectors::Resolved,
    host::sock_diag,
    kernel::{self, Generation, OutboundGeneration},
};
use rules::model::{Direction, Interfaces};

/// What [`start`] leaves running for the daemon's loop.
pub(super) struct Started {
    pub state: State,
    pub link_events: interfaces::LinkEvents,
    pub listener: UnixListener,
    pub socket_path: PathBuf,
    /// The kernel's decision log events, for the loop to name and publish.
    pub log_events: tokio::sync::mpsc::Receiver<firewall_common::LogEvent>,
    /// The `[metrics] listen` endpoint, bound.
    pub metrics: Option<super::metrics::Endpoint>,
}

/// Validates, compiles, loads, seeds, attaches and binds the control socket, in that order.
/// The returned [`PinCleanup`] undoes the start when dropped while armed: on any error here
/// (unless a previous daemon's pins are being adopted), and after a detaching stop.
pub(super) fn start(
    config_path: PathBuf,
    overrides: Overrides,
) -> anyhow::Result<(PinCleanup, Started)> {
    let ruleset = load_rules(&config_path, &overrides)?;
    for w in &ruleset.warnings {
        warn!("{w}");
    }
    // The outbound hooks' cgroup: the configured one, else the whole host (the root of the
    // cgroup2 mount). Checked before anything is touched.
    let cgroup_path = match &ruleset.daemon.cgroup {
        Some(p) => p.clone(),
        None => cgroups::mount()?,
    };
    let cgroup = Cgroup::open(&cgroup_path)?;
    let resolved = Resolved::resolve(&ruleset, &cgroup.path);
    let resolve_warnings = resolved.warnings(&ruleset);
    for w in &resolve_warnings {
        warn!("{w}");
    }
    // `[[assert]]` entries hold at start as at every reload: a file that breaks one is refused
    // like an invalid file, before anything is touched (rules pinned by an earlier daemon stay).
    crate::explain::refuse_broken(&ruleset, &resolved)?;
    // Runtime sets' members kept by an earlier daemon (`sets.rs`); those of sets the file no
    // longer declares empty, or expired while no daemon ran, are dropped.
    let (mut sets, sets_problem) = super::sets::RuntimeSets::load(&ruleset.daemon.state_dir);
    if let Some(p) = &sets_problem {
        error!("{p}");
    }
    let sets_dropped = sets.retain(&ruleset);
    for d in &sets_dropped {
        warn!("{d}");
    }
    let mut compiled = compile::compile(&ruleset, &resolved)?;
    let mut compiled_out = compile::compile_direction(&ruleset, Direction::Out, &resolved)?;
    let members = sets.members();
    compiled.add_members(&members);
    compiled_out.add_members(&members);
    crate::kernel::features::check_required()?;
    // Before touching anything shared (pins, interfaces): a second daemon must not disturb
    // the first, and a file that is not a stale socket stops the start before anything does.
    remove_stale_socket(&ruleset.daemon.control_socket)?;
    // Only now, with no other daemon running: the file this one could not take is kept
    // aside, and what it dropped is saved.
    if sets_problem.is_some() {
        super::sets::RuntimeSets::set_aside(&ruleset.daemon.state_dir);
    }
    if !sets_dropped.is_empty()
        && let Err(e) = sets.save(&ruleset.daemon.state_dir)
    {
        warn!("runtime sets: {e:#}");
    }
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
    // The decision log is read from before anything is attached, so no event waits.
    let (log_tx, log_events) = tokio::sync::mpsc::channel(decision_log::READER_BACKLOG);
    decision_log::spawn_reader(&pin_dir, log_tx)?;
    let (events, _) = tokio::sync::broadcast::channel(decision_log::MONITOR_BACKLOG);

    // Seed before attaching, so enforcement never starts without the host's connections.
    let ct_cfg = kernel::ct_config(&ruleset.conntrack, gen_id);
    let mut degraded: Vec<String> = sets_problem.into_iter().collect();
    let seeded = match sock_diag::host_flows() {
        Ok(flows) => {
            let listeners = sock_diag::tcp_listeners().unwrap_or_else(|e| {
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
    let link_events = interfaces::LinkEvents::subscribe()?;
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
    // The egress programs look for held sockets before hooks that can hold one run.
    kernel::StealthTable::open(&pin_dir)
        .and_then(|mut t| t.before_hooks(ruleset.outbound_can_stealth()))
        .context("telling the egress program that sockets may be held")?;
    let hooks = attach_hooks(&mut outbound, &cgroup, &pin_dir)?;
    let listened = start_listener_table(&cgroup, &pin_dir, adopting, &mut degraded)?;
    generation.in_force()?;
    // A resolver on the host answering over lo is then not read: names learnt from the wire
    // still work, and the firewall is not left down for it (fwctl status says so).
    if let Err(e) = kernel::loopback::sync(ruleset.reads_names(), true, &pin_dir) {
        warn!("the loopback program could not be attached: {e:#}");
        degraded.push(format!(
            "a resolver on this host answering over lo is not read (the loopback program \
             could not be attached: {e:#}): names its cache gives are not known"
        ));
    }
    info!("listener table: {listened} socket(s) bound before the daemon started recorded");
    let released = rejudge_stealth(&ruleset, &resolved, &pin_dir);
    if released > 0 {
        info!("released {released} socket(s) held by an outbound stealth the rules no longer say");
    }

    generation.pin(&pin_dir)?;
    let gc_interval = Arc::new(AtomicU32::new(ruleset.conntrack.gc_interval_secs));
    let in_use = conntrack::SharedInUse::default();
    conntrack::spawn_expiry(
        &pin_dir,
        gc_interval.clone(),
        events.clone(),
        in_use.clone(),
    )?;
    conntrack::spawn_watch(&pin_dir, events.clone())?;
    let socket_path = ruleset.daemon.control_socket.clone();
    let listener = bind_control_socket(&socket_path, ruleset.daemon.control_group.as_deref())?;
    // An endpoint that cannot listen does not keep the firewall from starting: it is logged
    // and `fwctl status` lists it with what else does not work as configured.
    let metrics = ruleset.metrics.listen.as_ref().and_then(|listen| {
        let gid = match ruleset
            .daemon
            .control_group
            .as_deref()
            .map(super::server::group_id)
        {
            Some(Ok(g)) => Some(g.as_raw()),
            _ => None,
        };
        match super::metrics::Endpoint::bind(listen, gid) {
            Ok(e) => {
                log::info!("metrics at {listen}");
                Some(e)
            }
            Err(e) => {
                log::error!("{e:#}");
                degraded.push(format!("metrics are not served: {e:#}"));
                None
            }
        }
    });
    // From here on, stopping the daemon detaches the firewall and removes the pins.
    cleanup.armed = true;
    let ruleset_interfaces = ruleset.daemon.interfaces.clone();
    let history = RuleHistory::new(gen_id, &ruleset, in_use);
    let state = State {
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
        pending: None,
        events,
        reload_stats: Default::default(),
        sets,
        sets_stale: false,
        expiry_retry: None,
    };
    Ok((
        cleanup,
        Started {
            state,
            link_events,
            listener,
            socket_path,
            log_events,
            metrics,
        },
    ))
}
