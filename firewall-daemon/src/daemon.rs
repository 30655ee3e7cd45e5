//! The daemon: validates and compiles the rules, attaches the datapath, serves the control
//! socket, reloads atomically on SIGHUP or `fwctl reload`, and detaches on SIGTERM/SIGINT.
//!
//! Everything runs on one thread: control requests are short and handled one at a time (with a
//! timeout), which keeps the kernel objects single-owner and reloads strictly ordered.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::programs::xdp::XdpLink;
use log::{error, info, warn};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
};

use crate::{
    compile, config,
    control::{
        self, DefaultsView, InterfaceStatus, ListData, ReloadData, Request, Response, RuleView,
        StatusData,
    },
    datapath::{self, Generation},
    model::{Direction, Interfaces, Ruleset, XdpMode},
};

/// Command-line settings that take precedence over `[daemon]` in the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub interfaces: Vec<String>,
    pub xdp_mode: Option<XdpMode>,
    pub control_socket: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
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
    }
}

struct Attached {
    ifname: String,
    mode: &'static str,
    link: XdpLink,
}

struct State {
    config_path: PathBuf,
    overrides: Overrides,
    ruleset: Ruleset,
    generation: Generation,
    attached: Vec<Attached>,
    generation_no: u64,
    started: Instant,
    last_reload: Option<String>,
}

/// Loads and validates the file, with command-line overrides applied.
fn load_rules(path: &Path, overrides: &Overrides) -> anyhow::Result<Ruleset> {
    let mut rs = config::load(path).map_err(|e| anyhow!("{e}"))?;
    overrides.apply(&mut rs);
    Ok(rs)
}

/// Interfaces to attach to: the configured list, or every non-loopback interface that is up.
fn resolve_interfaces(interfaces: &Interfaces) -> anyhow::Result<Vec<String>> {
    match interfaces {
        Interfaces::List(names) => Ok(names.clone()),
        Interfaces::Auto => {
            use nix::net::if_::InterfaceFlags;
            let mut names: Vec<String> = nix::ifaddrs::getifaddrs()
                .context("listing interfaces")?
                .filter(|i| {
                    i.flags.contains(InterfaceFlags::IFF_UP)
                        && !i.flags.contains(InterfaceFlags::IFF_LOOPBACK)
                })
                .map(|i| i.interface_name)
                .collect();
            names.sort();
            names.dedup();
            if names.is_empty() {
                bail!("interfaces = \"auto\" found no interface that is up (besides loopback)");
            }
            Ok(names)
        }
    }
}

pub async fn run(config_path: PathBuf, overrides: Overrides) -> anyhow::Result<()> {
    let ruleset = load_rules(&config_path, &overrides)?;
    for w in &ruleset.warnings {
        warn!("{w}");
    }
    let not_enforced = ruleset
        .rules
        .iter()
        .filter(|r| r.direction == Direction::Out)
        .count();
    if not_enforced > 0 {
        warn!(
            "{not_enforced} outbound rule(s) are listed but not enforced by this version; \
             [defaults] outbound does not apply yet either"
        );
    }
    let compiled = compile::compile(&ruleset)?;
    // Before touching anything shared (pins, interfaces): a second daemon must not disturb
    // the first.
    ensure_not_running(&ruleset.daemon.control_socket)?;
    let pin_dir = ruleset.daemon.pin_dir.clone();
    // Declared before everything that pins or attaches, so it is dropped last: whatever way
    // run() ends, the programs are detached first and then the pins removed.
    let _pins = PinCleanup(pin_dir.clone());
    let mut generation = Generation::load(&compiled, &ruleset, &pin_dir)?;

    let ifnames = resolve_interfaces(&ruleset.daemon.interfaces)?;
    let mut attached = Vec::new();
    for ifname in ifnames {
        let (link, mode) = generation.attach(&ifname, ruleset.daemon.xdp_mode)?;
        info!("attached to {ifname} ({mode} mode)");
        attached.push(Attached { ifname, mode, link });
    }

    generation.pin(&pin_dir)?;
    let socket_path = ruleset.daemon.control_socket.clone();
    let listener = bind_control_socket(&socket_path, ruleset.daemon.control_group.as_deref())?;
    let mut state = State {
        config_path,
        overrides,
        ruleset,
        generation,
        attached,
        generation_no: 1,
        started: Instant::now(),
        last_reload: None,
    };

    let summary = format!(
        "firewall-daemon: ready ({} rules; interfaces: {}; control socket {})",
        state.ruleset.rules.len(),
        state
            .attached
            .iter()
            .map(|a| format!("{} {}", a.ifname, a.mode))
            .collect::<Vec<_>>()
            .join(", "),
        socket_path.display()
    );
    info!("{summary}");
    // The readiness line on stdout is the signal supervisors and tests wait for.
    println!("{summary}");
    let _ = std::io::stdout().flush();

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match state.reload() {
                    Ok(d) => info!("reloaded on SIGHUP: {}", summarize(&d)),
                    Err(e) => error!("reload on SIGHUP failed, previous rules stay in force: {e:#}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    let group = state.ruleset.daemon.control_group.clone();
                    if let Err(e) = serve(&mut state, stream, group.as_deref()).await {
                        warn!("control connection: {e:#}");
                    }
                }
                Err(e) => warn!("accepting a control connection: {e}"),
            },
        }
    }
    info!(
        "stopping: detaching from {} interface(s)",
        state.attached.len()
    );
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

/// Removes the daemon's pins when dropped. This version stops enforcing when the daemon
/// stops, so pins left behind would only mislead.
struct PinCleanup(PathBuf);

impl Drop for PinCleanup {
    fn drop(&mut self) {
        datapath::remove_pins(&self.0);
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

fn ensure_not_running(socket: &Path) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        bail!(
            "another daemon is already answering on {}; stop it first",
            socket.display()
        );
    }
    Ok(())
}

/// Creates the socket with mode 0660 (group set to `group` if given). Failing to set
/// ownership or permissions is fatal: a world-usable control socket would let anyone rewrite
/// the firewall.
fn bind_control_socket(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    ensure_not_running(path)?;
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
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

fn group_id(name: &str) -> anyhow::Result<nix::unistd::Gid> {
    nix::unistd::Group::from_name(name)
        .with_context(|| format!("looking up group {name}"))?
        .map(|g| g.gid)
        .ok_or_else(|| anyhow!("control_group {name:?} does not exist"))
}

/// Root, the daemon's own user, or a member of the control group may use the socket.
fn authorize(stream: &UnixStream, group: Option<&str>) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
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

async fn serve(state: &mut State, stream: UnixStream, group: Option<&str>) -> anyhow::Result<()> {
    let auth = authorize(&stream, group);
    let (read, mut write) = stream.into_split();
    // The request is read before answering even a refusal, so the client sees the refusal
    // rather than a broken pipe.
    let mut reader = BufReader::new(read).take(control::MAX_REQUEST as u64 + 1);
    let mut line = String::new();
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Response::err("timed out waiting for the request"),
        Ok(Err(e)) => Response::err(format!("reading the request: {e}")),
        Ok(Ok(_)) => match auth {
            Err(msg) => Response::err(msg),
            Ok(()) if line.len() > control::MAX_REQUEST => Response::err(format!(
                "request longer than {} bytes",
                control::MAX_REQUEST
            )),
            Ok(()) => match serde_json::from_str::<Request>(line.trim()) {
                Err(e) => Response::err(format!(
                    "malformed request ({e}); expected one JSON line like {{\"cmd\":\"status\"}}"
                )),
                Ok(req) => state.handle(req),
            },
        },
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(&out))
        .await
        .map_err(|_| anyhow!("timed out writing the response"))??;
    Ok(())
}

impl State {
    fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::List => Response::ok(self.list()),
            Request::Status => match self.status() {
                Ok(s) => Response::ok(s),
                Err(e) => Response::err(format!("{e:#}")),
            },
            Request::Reload => match self.reload() {
                Ok(d) => {
                    info!("reloaded on request: {}", summarize(&d));
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
        let hits = self.generation.rule_hits().unwrap_or_default();
        ListData {
            source: self.config_path.display().to_string(),
            defaults: DefaultsView::from(&self.ruleset.defaults),
            rules: self
                .ruleset
                .rules
                .iter()
                .map(|r| RuleView::new(r, hits.get(r.index as usize).copied().unwrap_or(0)))
                .collect(),
        }
    }

    fn status(&self) -> anyhow::Result<StatusData> {
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
            interfaces: self
                .attached
                .iter()
                .map(|a| InterfaceStatus {
                    name: a.ifname.clone(),
                    mode: a.mode.into(),
                })
                .collect(),
            rules: rs.rules.len(),
            inbound_rules: rs.rules.len() - outbound,
            outbound_rules_not_enforced: outbound,
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
            warnings: rs.warnings.clone(),
        })
    }

    /// Builds the new generation completely beside the old one, then switches every interface
    /// to it. Any failure before the switch leaves the old rules untouched.
    fn reload(&mut self) -> anyhow::Result<ReloadData> {
        let t0 = Instant::now();
        let new_rules = load_rules(&self.config_path, &self.overrides)?;
        let compiled = compile::compile(&new_rules)
            .with_context(|| format!("{}", self.config_path.display()))?;
        // Pins stay where the running generation has them even if the file moved pin_dir.
        let mut new_gen = Generation::load(&compiled, &new_rules, &self.ruleset.daemon.pin_dir)?;
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
            let Attached { ifname, mode, link } = a;
            match new_gen.replace(link) {
                Ok(link) => switched.push((Attached { ifname, mode, link }, true)),
                Err(e) => {
                    // The link was consumed by the failed update: attach the old program again.
                    match self
                        .generation
                        .attach(&ifname, self.ruleset.daemon.xdp_mode)
                    {
                        Ok((link, mode)) => switched.push((
                            Attached {
                                ifname: ifname.clone(),
                                mode,
                                link,
                            },
                            false,
                        )),
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
                    let Attached { ifname, mode, link } = a;
                    match self.generation.replace(link) {
                        Ok(link) => self.attached.push(Attached { ifname, mode, link }),
                        Err(e2) => error!("{ifname}: rolling back failed: {e2:#}"),
                    }
                } else {
                    self.attached.push(a);
                }
            }
            return Err(e);
        }
        self.attached = switched.into_iter().map(|(a, _)| a).collect();
        if let Err(e) = new_gen.pin(&self.ruleset.daemon.pin_dir) {
            warn!("the new rules are in force, but pinning them for inspection failed: {e:#}");
        }
        self.generation = new_gen;
        self.ruleset = new_rules;
        self.generation_no += 1;
        data.generation = self.generation_no;
        data.took_ms = t0.elapsed().as_millis() as u64;
        data.warnings = self.ruleset.warnings.clone();
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
