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
    path::PathBuf,
    time::{Duration, Instant},
};

use log::{error, info, warn};
use sd_notify::NotifyState;
use std::sync::{Arc, atomic::AtomicU32};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    conntrack::Tables,
    host::addrs::HostMaps,
    host::cgroups::Cgroup,
    host::selectors::{Resolved, Watcher},
    kernel::{self, Generation, OutboundGeneration},
};
use rules::model::{Interfaces, OnStop, Ruleset, XdpMode};

mod attach;
mod confirm;
mod history;
mod memory;
mod metrics;
mod monitor;
mod recheck;
mod reload;
mod server;
mod sets;
mod start;
mod views;

use attach::{Attached, HookLinks};
use reload::summarize;
use server::{ControlCall, MAX_CONTROL_CONNECTIONS, serve};
/// Command-line settings that take precedence over `[daemon]` in the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub interfaces: Vec<String>,
    pub xdp_mode: Option<XdpMode>,
    pub control_socket: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
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
        if let Some(p) = &self.state_dir {
            rs.daemon.state_dir = p.clone();
        }
        if let Some(p) = &self.cgroup {
            rs.daemon.cgroup = Some(p.clone());
        }
    }
}

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
    /// Rule names of the generations connections may still name (`history.rs`).
    history: history::RuleHistory,
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
    /// A reload waiting for `fwctl confirm`, and what comes back without it.
    pending: Option<confirm::Pending>,
    /// Decision and connection events for `fwctl monitor` connections.
    events: tokio::sync::broadcast::Sender<crate::decision_log::Published>,
    /// Reloads and their duration, for `[metrics]`.
    reload_stats: metrics::ReloadStats,
    /// The members of the runtime sets (`sets.rs`).
    sets: sets::RuntimeSets,
    /// An in-place change of them failed: the next one loads them whole (`sets.rs`).
    sets_stale: bool,
    /// A failed expiry is tried again no sooner than this.
    expiry_retry: Option<Instant>,
}

/// How often selectors are resolved again even without a file-system event: a unit's cgroup
/// appears without notification, and a program's directory may not exist yet.
const RESOLVE_PERIOD: Duration = Duration::from_secs(2);

pub async fn run(config_path: PathBuf, overrides: Overrides) -> anyhow::Result<()> {
    memory::one_heap();
    // Handlers first: a SIGTERM that arrives as soon as the readiness line is out must stop
    // the daemon the orderly way (on_stop), not kill it.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (mut cleanup, started) = start::start(config_path, overrides)?;
    // Declared after `cleanup`, so dropped before it: links and maps go before the pins.
    let start::Started {
        mut state,
        mut link_events,
        listener,
        socket_path,
        mut log_events,
        metrics: endpoint,
    } = started;
    // `[metrics]`: scrapes of the endpoint, answered by this loop; the textfile's timer.
    let (scrape_tx, mut scrapes) = tokio::sync::mpsc::channel::<metrics::Scrape>(4);
    if let Some(endpoint) = endpoint {
        tokio::spawn(endpoint.serve(scrape_tx));
    }
    let textfile = state.ruleset.metrics.textfile.clone();
    let mut textfile_tick = tokio::time::interval(Duration::from_secs(u64::from(
        state.ruleset.metrics.interval_secs.max(1),
    )));
    textfile_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
    // The readiness line on stdout is the signal tests wait for, and the one line that says
    // so (under systemd stdout goes to the journal too: no log entry besides it); systemd
    // (Type=notify) gets READY=1, only now that every program is attached and the socket
    // listens.
    memory::release_freed_heap();
    println!("{summary}");
    let _ = std::io::stdout().flush();
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&state.status_line()),
    ]);

    loop {
        // The rollback timer of a reload waiting for `fwctl confirm` (a day away when none is).
        let rollback_at = state.pending.as_ref().map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(86_400),
            |p| p.deadline.into(),
        );
        // The next runtime set member to expire (a day away when none will).
        let expiry = state.next_expiry_in();
        let expire_at = tokio::time::Instant::now()
            + expiry
                .unwrap_or(Duration::from_secs(86_400))
                .min(Duration::from_secs(86_400));
        tokio::select! {
            _ = tokio::time::sleep_until(expire_at), if expiry.is_some() => {
                state.expire();
            }
            _ = tokio::time::sleep_until(rollback_at), if state.pending.is_some() => {
                state.roll_back();
                memory::release_freed_heap();
            }
            _ = hup.recv() => {
                match state.reload(false) {
                    Ok(d) => info!(generation = d.generation; "reloaded on SIGHUP: {}", summarize(&d)),
                    Err(e) => error!("reload on SIGHUP failed, previous rules stay in force: {e:#}"),
                }
                memory::release_freed_heap();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            // Resolving may walk the cgroup tree or wait for systemctl: done on a blocking
            // thread, so that interface events and control requests are served meanwhile.
            // Also every RESOLVE_PERIOD: then the inbound rules' names whose records expired
            // are asked for again (`host::lookups`).
            _ = watcher.changed(), if resolving.is_none() => {
                resolving = Some((state.generation_no, state.resolve_again()));
            }
            done = async { (&mut resolving.as_mut().expect("guarded by is_some").1).await }, if resolving.is_some() => {
                let started_at = resolving.take().map(|(generation, _)| generation);
                match done {
                    // Rules loaded meanwhile were resolved on their own; the next wake looks again.
                    Ok(_) if started_at != Some(state.generation_no) => {}
                    Ok(resolved) => match state.reresolve(resolved) {
                        Ok(Some(d)) => info!(generation = d.generation; "a program, unit or inbound rule's name the rules name changed; rules recompiled: {}", summarize(&d)),
                        Ok(None) => {}
                        Err(e) => error!("recompiling for a changed program, unit or name failed, the rules in force stay: {e:#}"),
                    },
                    Err(e) => error!("resolving the rules' programs and units failed: {e}"),
                }
                memory::release_freed_heap();
            }
            ev = link_events.next() => match ev {
                Ok(()) => state.reconcile_interfaces(),
                Err(e) => warn!("{e:#}"),
            },
            Some(raw) = log_events.recv() => state.decision(raw),
            Some(reply) = scrapes.recv() => {
                let text = state.metrics_text().unwrap_or_else(|e| {
                    error!("metrics: {e:#}");
                    String::new()
                });
                let _ = reply.send(text);
            }
            _ = textfile_tick.tick(), if textfile.is_some() => {
                if let Some(path) = &textfile {
                    match state.metrics_text() {
                        Ok(text) => {
                            if let Err(e) = metrics::write_textfile(path, &metrics::prometheus_text(&text)) {
                                warn!("{e:#}");
                            }
                        }
                        Err(e) => error!("metrics: {e:#}"),
                    }
                }
            }
            Some(call) = calls_rx.recv() => {
                let response = state.answer(call.cred, &call.line);
                // The client may have gone; its task then ends with nothing to write.
                let _ = call.reply.send(response);
                state.history.prune();
                memory::release_freed_heap();
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
                        tokio::spawn(serve(stream, calls_tx.clone(), state.events.clone(), permit));
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

/// A directory inside `parent` that everyone may write, like `/tmp` (for tests of what the
/// daemon refuses to put there).
#[cfg(test)]
fn dir_others_may_write(parent: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let open = parent.join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    open
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
