//! Resolving the rules' `program` and `unit` selectors to what the kernel compares.
//!
//! # Programs
//!
//! A `program` path is resolved to the (device, inode) of the file it names, symlinks followed
//! ([`crate::identity::exe_id`]). A path that does not exist (yet), or that cannot be
//! stat'ed, resolves to nothing: its rules match nothing until the file appears and the daemon
//! resolves again. A package upgrade replaces a binary with a new inode, so the path must be
//! resolved again when it changes: [`Watcher`] says when.
//!
//! # Units
//!
//! A `unit` (`nginx.service`) is resolved to the cgroup v2 directory systemd made for it. When
//! systemd runs (`/run/systemd/system` exists), systemd says where: the unit's `ControlGroup`
//! property (`systemctl show`, bounded by [`SYSTEMCTL_TIMEOUT`]). Otherwise, and for units
//! systemd does not know, the directory is searched for: the first directory named exactly
//! like the unit in a breadth-first search below the daemon's cgroup (`[daemon] cgroup`, the
//! cgroup2 mount by default), so the shallowest one wins, among *trusted* cgroups only
//! ([`trust`]): owned by root, with `cgroup.procs`, `cgroup.threads` and
//! `cgroup.subtree_control` owned by root (not delegated), not named `user@*.service`, and
//! below trusted ancestors only. Any user may create cgroups in a subtree delegated to it
//! (systemd gives every user `user@UID.service`): a name found there says nothing about which
//! unit runs there, so delegated subtrees are neither matched nor searched.
//!
//! The kernel compares the cgroup id (the directory's inode number on cgroup2) with the id of
//! the calling task's ancestor at the unit's level (`bpf_get_current_ancestor_cgroup_id`), so a
//! unit is the pair (id, level). Levels count path components below the root of the cgroup2
//! hierarchy (level 0), including those above the mount point when the mount is not the
//! hierarchy's root (inside a cgroup namespace, or a bind mount). Only levels
//! 1..=[`MAX_UNIT_LEVEL`] can be matched.
//!
//! A unit that is not running has no cgroup: its rules match nothing until it starts and the
//! daemon resolves again. cgroup directories do not report changes through inotify, so
//! [`Watcher`] also wakes periodically.
//!
//! Resolution never fails as a whole: each selector that cannot be resolved resolves to
//! nothing and [`Resolved::warnings`] says why.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    ffi::OsString,
    fs, io,
    os::{
        fd::{AsFd as _, AsRawFd, RawFd},
        unix::fs::MetadataExt as _,
    },
    path::{Component, Path, PathBuf},
    time::Duration,
};

use firewall_common::identity::MAX_UNIT_LEVEL;
use log::{debug, warn};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use rules::model::Ruleset;
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::{Instant, Interval, MissedTickBehavior},
};

use crate::{cgroup::scratch, identity::ExeId};

/// How deep the unit search goes at most, to tell "too deep to match" from "not running".
const SEARCH_LEVELS: u32 = MAX_UNIT_LEVEL as u32 + 8;
/// Most directories one unit search visits (a host has hundreds to a few thousand cgroups).
const SEARCH_DIRS: usize = 100_000;
/// How long asking systemd for one unit's cgroup may take; past it, the cgroups are searched.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(2);

/// How units are looked up.
#[derive(Clone, Copy, Debug)]
struct UnitLookup {
    /// systemd runs: ask it first.
    systemd: bool,
    /// The owner of trusted cgroups: root (the search's own tests use theirs).
    owner: u32,
}

impl UnitLookup {
    fn host() -> Self {
        Self {
            // What sd_booted(3) checks.
            systemd: Path::new("/run/systemd/system").is_dir(),
            owner: 0,
        }
    }
}

/// The cgroup of a running unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitCgroup {
    /// The cgroup id: the directory's inode number.
    pub id: u64,
    /// Path components below the root of the cgroup2 hierarchy (1..=[`MAX_UNIT_LEVEL`]).
    pub level: u32,
    pub path: PathBuf,
}

/// Why a program resolved to nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ProgramProblem {
    NotAbsolute,
    Missing,
    NotAFile,
    Stat(String),
}

/// Why a unit resolved to nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum UnitProblem {
    /// systemd gives it no cgroup, and no trusted directory of that name is below the root.
    NotRunning,
    /// Found, but below [`MAX_UNIT_LEVEL`] (or at level 0).
    Unmatchable { path: PathBuf, level: u32 },
    /// The search could not be made (no cgroup2, root not on it); the text says why.
    Search(String),
}

/// What every selector of a rule set resolved to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Every program path the rules name; `None`: it does not exist or cannot be stat'ed.
    pub programs: BTreeMap<PathBuf, Option<ExeId>>,
    /// Every unit the rules name; `None`: no cgroup of that name (or one that cannot be
    /// matched).
    pub units: BTreeMap<String, Option<UnitCgroup>>,
    program_problems: BTreeMap<PathBuf, ProgramProblem>,
    unit_problems: BTreeMap<String, UnitProblem>,
    /// Where the units were searched, for messages.
    cgroup_root: PathBuf,
}

impl Resolved {
    /// Resolves every selector `ruleset.rules` name. `cgroup_root`: the directory under which
    /// units are searched (the daemon's configured `[daemon] cgroup`, which is the cgroup2
    /// mount by default; tests pass a cgroup of their own).
    pub fn resolve(ruleset: &Ruleset, cgroup_root: &Path) -> Self {
        let needs_cgroup = ruleset.rules.iter().any(|r| r.selector.unit.is_some());
        match scratch::cgroup2() {
            Ok((mount, mount_root)) => resolve_in(ruleset, cgroup_root, &mount, &mount_root),
            Err(e) if needs_cgroup => {
                let mut out = resolve_in(ruleset, cgroup_root, Path::new("/"), "/");
                let why = UnitProblem::Search(format!("{e:#}"));
                for (name, unit) in &mut out.units {
                    *unit = None;
                    out.unit_problems.insert(name.clone(), why.clone());
                }
                out
            }
            // No unit to search for: the mount point is never used.
            Err(_) => resolve_in(ruleset, cgroup_root, Path::new("/"), "/"),
        }
    }

    /// What `path` resolved to (`None` also when no rule names it).
    pub fn exe(&self, path: &Path) -> Option<ExeId> {
        self.programs.get(path).copied().flatten()
    }

    /// The cgroup `name` resolved to (`None` also when no rule names it).
    pub fn unit(&self, name: &str) -> Option<&UnitCgroup> {
        self.units.get(name).and_then(Option::as_ref)
    }

    /// Bit `l` is set for each level `l` a resolved unit is at: the ancestor levels the
    /// kernel has to look at.
    pub fn unit_levels(&self) -> u32 {
        self.units
            .values()
            .flatten()
            .filter(|u| u.level < u32::BITS)
            .fold(0, |bits, u| bits | 1 << u.level)
    }

    /// Human-readable warnings about selectors that match nothing, or not what they seem to:
    /// missing programs, units that are not running or too deep, units inside other units.
    pub fn warnings(&self, ruleset: &Ruleset) -> Vec<String> {
        let mut out = Vec::new();
        for rule in &ruleset.rules {
            let Some(program) = &rule.selector.program else {
                continue;
            };
            if self.exe(program).is_some() {
                continue;
            }
            let shown = program.display();
            let ctx = format!("rule {} ({:?}): program {shown}", rule.index + 1, rule.name);
            let msg = match self.program_problems.get(program) {
                Some(ProgramProblem::NotAbsolute) => {
                    format!("{ctx} is not an absolute path; the rule matches nothing")
                }
                Some(ProgramProblem::Missing) => {
                    format!("{ctx} does not exist yet; the rule matches nothing until it appears")
                }
                Some(ProgramProblem::NotAFile) => {
                    format!("{ctx} is not a regular file; the rule matches nothing until it is one")
                }
                Some(ProgramProblem::Stat(e)) => {
                    format!("{ctx} cannot be stat'ed ({e}); the rule matches nothing until it can")
                }
                None => format!("{ctx} was not resolved; the rule matches nothing"),
            };
            out.push(msg);
        }

        let mut named = BTreeSet::new();
        let root = self.cgroup_root.display();
        for rule in &ruleset.rules {
            let Some(name) = &rule.selector.unit else {
                continue;
            };
            if !named.insert(name.as_str()) || self.unit(name).is_some() {
                continue;
            }
            let msg = match self.unit_problems.get(name) {
                Some(UnitProblem::NotRunning) => format!(
                    "unit {name} is not running (no cgroup named {name} under {root} that \
                     is owned by root and not delegated); its rules match nothing until it \
                     starts"
                ),
                Some(UnitProblem::Unmatchable { path, level }) if *level == 0 => format!(
                    "unit {name}: its cgroup {} is the cgroup2 root, which the firewall cannot \
                     tell apart from no unit; its rules match nothing",
                    path.display()
                ),
                Some(UnitProblem::Unmatchable { path, level }) => format!(
                    "unit {name}: its cgroup {} is at level {level}, deeper than the \
                     {MAX_UNIT_LEVEL} levels the firewall can match; its rules match nothing",
                    path.display()
                ),
                Some(UnitProblem::Search(e)) => {
                    format!("unit {name} cannot be looked up ({e}); its rules match nothing")
                }
                None => format!("unit {name} was not resolved; its rules match nothing"),
            };
            out.push(msg);
        }

        // Units whose cgroups nest, innermost named first.
        let resolved: Vec<(&str, &UnitCgroup)> = named
            .iter()
            .filter_map(|n| Some((*n, self.unit(n)?)))
            .collect();
        for (inner, inner_cg) in &resolved {
            for (outer, outer_cg) in &resolved {
                if inner_cg.path != outer_cg.path && inner_cg.path.starts_with(&outer_cg.path) {
                    out.push(format!(
                        "unit {inner} ({}) is inside unit {outer} ({}): processes of {inner} \
                         are matched as {inner} only, so rules naming {outer} do not apply \
                         to them",
                        inner_cg.path.display(),
                        outer_cg.path.display()
                    ));
                }
            }
        }
        out
    }
}

/// [`Resolved::resolve`] with the cgroup2 mount given: `mount` is its mount point,
/// `mount_root` the root of the mounted tree within the hierarchy as mountinfo gives it (`/`
/// unless the mount is of a sub-tree, as in a cgroup namespace).
pub fn resolve_in(
    ruleset: &Ruleset,
    cgroup_root: &Path,
    mount: &Path,
    mount_root: &str,
) -> Resolved {
    resolve_with(ruleset, cgroup_root, mount, mount_root, UnitLookup::host())
}

fn resolve_with(
    ruleset: &Ruleset,
    cgroup_root: &Path,
    mount: &Path,
    mount_root: &str,
    lookup: UnitLookup,
) -> Resolved {
    let mut out = Resolved {
        cgroup_root: cgroup_root.to_path_buf(),
        ..Resolved::default()
    };

    for rule in &ruleset.rules {
        let Some(path) = &rule.selector.program else {
            continue;
        };
        if out.programs.contains_key(path) {
            continue;
        }
        let resolved = resolve_program(path);
        if let Err(problem) = &resolved {
            out.program_problems.insert(path.clone(), problem.clone());
        }
        out.programs.insert(path.clone(), resolved.ok());
    }

    let wanted: BTreeSet<&str> = ruleset
        .rules
        .iter()
        .filter_map(|r| r.selector.unit.as_deref())
        .collect();
    if wanted.is_empty() {
        return out;
    }
    let mut found = if lookup.systemd {
        from_systemd(&wanted, mount, mount_root)
    } else {
        BTreeMap::new()
    };
    let rest: BTreeSet<&str> = wanted
        .iter()
        .copied()
        .filter(|n| !found.contains_key(*n))
        .collect();
    let mut search_error = None;
    if !rest.is_empty() {
        match root_level(cgroup_root, mount, mount_root)
            .and_then(|level| trusted_path(cgroup_root, mount, lookup.owner).map(|()| level))
        {
            Ok(level) => found.extend(search(cgroup_root, level, &rest, lookup.owner)),
            Err(e) => search_error = Some(e),
        }
    }
    for name in wanted {
        let unit = match (found.get(name), &search_error) {
            (None, Some(e)) => Err(UnitProblem::Search(e.clone())),
            (None, None) => Err(UnitProblem::NotRunning),
            (Some((path, level)), _) if *level == 0 || *level > MAX_UNIT_LEVEL as u32 => {
                Err(UnitProblem::Unmatchable {
                    path: path.clone(),
                    level: *level,
                })
            }
            (Some((path, level)), _) => match fs::metadata(path) {
                Ok(md) => Ok(UnitCgroup {
                    id: md.ino(),
                    level: *level,
                    path: path.clone(),
                }),
                // It went away between the listing and now.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(UnitProblem::NotRunning),
                Err(e) => Err(UnitProblem::Search(format!("stat {}: {e}", path.display()))),
            },
        };
        if let Err(problem) = &unit {
            out.unit_problems.insert(name.to_owned(), problem.clone());
        }
        out.units.insert(name.to_owned(), unit.ok());
    }
    out
}

/// The cgroups systemd gives the `wanted` units that have one (running units), with their
/// levels. A unit systemd cannot be asked about is left out (and then searched for).
fn from_systemd(
    wanted: &BTreeSet<&str>,
    mount: &Path,
    mount_root: &str,
) -> BTreeMap<String, (PathBuf, u32)> {
    let mut found = BTreeMap::new();
    for name in wanted {
        match systemd_cgroup(name) {
            Ok(Some(cg)) => {
                let (Some(level), Some(path)) = (
                    depth(Path::new(&cg)),
                    scratch::own_cgroup_in(&format!("0::{cg}"), mount, mount_root),
                ) else {
                    debug!("systemd gives {name} the cgroup {cg:?}, which is not a cgroup path");
                    continue;
                };
                found.insert((*name).to_owned(), (path, level));
            }
            Ok(None) => {}
            Err(e) => debug!("asking systemd for the cgroup of {name}: {e}; searching instead"),
        }
    }
    found
}

/// `systemctl show --property=ControlGroup --value UNIT`: the unit's cgroup path in the
/// hierarchy, `None` when it has none (not running, not loaded).
fn systemd_cgroup(name: &str) -> Result<Option<String>, String> {
    use std::{io::Read as _, process::Stdio};
    let mut child = std::process::Command::new("systemctl")
        .args(["show", "--property=ControlGroup", "--value", "--", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("running systemctl: {e}"))?;
    let deadline = std::time::Instant::now() + SYSTEMCTL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("systemctl took more than {SYSTEMCTL_TIMEOUT:?}"));
            }
            Err(e) => return Err(format!("waiting for systemctl: {e}")),
        }
    };
    if !status.success() {
        return Err(format!("systemctl failed ({status})"));
    }
    let mut text = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout
            .read_to_string(&mut text)
            .map_err(|e| format!("reading systemctl's output: {e}"))?;
    }
    let cg = text.trim();
    Ok((!cg.is_empty()).then(|| cg.to_owned()))
}

/// Whether `dir` is a cgroup whose name says which unit runs there: owned by `owner` (root),
/// not delegated (the files a delegatee gets write access to are `owner`'s too), and not a
/// user's manager (`user@UID.service`, whose subtree its user controls). `Err` says why not.
fn trust(dir: &Path, owner: u32) -> Result<(), String> {
    if let Some(name) = dir.file_name().and_then(|n| n.to_str())
        && name.starts_with("user@")
        && name.ends_with(".service")
    {
        return Err(format!("{} is a user's own subtree", dir.display()));
    }
    for file in [
        "",
        "cgroup.procs",
        "cgroup.threads",
        "cgroup.subtree_control",
    ] {
        let path = dir.join(file);
        match fs::symlink_metadata(&path) {
            Ok(md) if md.uid() == owner => {}
            Ok(md) => return Err(format!("{} is owned by uid {}", path.display(), md.uid())),
            // Only directories that are not cgroups (the search's own tests) lack these.
            Err(e) if !file.is_empty() && e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("stat {}: {e}", path.display())),
        }
    }
    Ok(())
}

/// [`trust`] for `root` and each of its ancestors up to the mount point `mount`.
fn trusted_path(root: &Path, mount: &Path, owner: u32) -> Result<(), String> {
    let canon =
        |p: &Path| fs::canonicalize(p).map_err(|e| format!("resolving {}: {e}", p.display()));
    let (root, mount) = (canon(root)?, canon(mount)?);
    let mut dir = root.as_path();
    loop {
        trust(dir, owner).map_err(|why| {
            format!("{why}: units are looked up in root-owned cgroups that are not delegated only")
        })?;
        if dir == mount {
            return Ok(());
        }
        match dir.parent() {
            Some(parent) if parent.starts_with(&mount) => dir = parent,
            _ => return Ok(()),
        }
    }
}

fn resolve_program(path: &Path) -> Result<ExeId, ProgramProblem> {
    if !path.is_absolute() {
        return Err(ProgramProblem::NotAbsolute);
    }
    let stat_problem = |e: &io::Error| match e.kind() {
        io::ErrorKind::NotFound => ProgramProblem::Missing,
        _ => ProgramProblem::Stat(e.to_string()),
    };
    let md = fs::metadata(path).map_err(|e| stat_problem(&e))?;
    if !md.is_file() {
        return Err(ProgramProblem::NotAFile);
    }
    crate::identity::exe_id(path).map_err(|e| match e.root_cause().downcast_ref::<io::Error>() {
        Some(io) => stat_problem(io),
        None => ProgramProblem::Stat(format!("{e:#}")),
    })
}

/// Number of normal components, or `None` if there is anything else (`..`, `.`) in between.
fn depth(rel: &Path) -> Option<u32> {
    let mut n = 0u32;
    for c in rel.components() {
        match c {
            Component::Normal(_) => n += 1,
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(n)
}

/// The level of `root` in the cgroup2 hierarchy mounted at `mount`.
fn root_level(root: &Path, mount: &Path, mount_root: &str) -> Result<u32, String> {
    let above = depth(Path::new(mount_root))
        .ok_or_else(|| format!("unexpected cgroup2 mount root {mount_root:?}"))?;
    let lexical = root.strip_prefix(mount).ok().and_then(depth);
    let below = match lexical {
        Some(n) => n,
        None => {
            let canon = |p: &Path| {
                fs::canonicalize(p).map_err(|e| format!("resolving {}: {e}", p.display()))
            };
            let (root_c, mount_c) = (canon(root)?, canon(mount)?);
            root_c
                .strip_prefix(&mount_c)
                .ok()
                .and_then(depth)
                .ok_or_else(|| {
                    format!(
                        "{} is not below the cgroup2 mount {}",
                        root.display(),
                        mount.display()
                    )
                })?
        }
    };
    Ok(above + below)
}

/// Breadth-first search below (and including) `root`, at level `root_level`, for directories
/// named like the `wanted` units; the shallowest of each name wins. Goes down to
/// [`SEARCH_LEVELS`] so that a unit too deep to match can be told from one not running.
/// Unreadable directories, and those [`trust`] refuses (with all below them), are skipped.
fn search(
    root: &Path,
    root_level: u32,
    wanted: &BTreeSet<&str>,
    owner: u32,
) -> BTreeMap<String, (PathBuf, u32)> {
    let mut found = BTreeMap::new();
    let mut queue = VecDeque::from([(root.to_path_buf(), root_level)]);
    if let Some(name) = root.file_name().and_then(|n| n.to_str())
        && wanted.contains(name)
    {
        found.insert(name.to_owned(), (root.to_path_buf(), root_level));
    }
    let mut visited = 0usize;
    while let Some((dir, level)) = queue.pop_front() {
        if found.len() == wanted.len() || visited >= SEARCH_DIRS {
            break;
        }
        visited += 1;
        if level >= SEARCH_LEVELS {
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            if let Err(why) = trust(&path, owner) {
                debug!("unit search: skipping {why}");
                continue;
            }
            if let Some(name) = entry.file_name().to_str()
                && wanted.contains(name)
                && !found.contains_key(name)
            {
                found.insert(name.to_owned(), (path.clone(), level + 1));
            }
            queue.push_back((path, level + 1));
        }
    }
    found
}

/// What inotify reports on a watched directory.
const WATCH_MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF);

/// How long events are drained after the first one, so that an upgrade that touches many
/// files wakes the caller once.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// `AsyncFd` needs `AsRawFd`, which nix's `Inotify` does not implement.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// One inotify watch: the directories it stands for (a symlinked directory and its target
/// share one) and the names in them that lead to a program.
#[derive(Debug, Default)]
struct Watch {
    dirs: BTreeSet<PathBuf>,
    names: BTreeSet<OsString>,
}

/// Says when the rules' selectors may resolve differently: a program file created, replaced,
/// renamed or removed (inotify on its directory, or on the nearest existing ancestor while the
/// directory does not exist), and periodically, for unit cgroups (which do not notify) and for
/// what inotify does not see (a symlink's target replaced elsewhere).
pub struct Watcher {
    programs: Vec<PathBuf>,
    inotify: Option<AsyncFd<InotifyFd>>,
    watches: HashMap<WatchDescriptor, Watch>,
    /// Directories that could not be watched, so each is warned about once.
    failed: BTreeSet<PathBuf>,
    interval: Interval,
}

/// What one wait of [`Watcher::changed`] ended with.
enum Wake {
    Period,
    Event,
    Irrelevant,
    Failed(io::Error),
}

impl Watcher {
    /// Watches the directories of `programs` and wakes every `period` (at least 10 ms). Must
    /// be called within a tokio runtime. If inotify cannot be used, only the period wakes.
    pub fn new(programs: &[PathBuf], period: Duration) -> anyhow::Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            anyhow::bail!("the selector watcher needs a tokio runtime");
        }
        let period = period.max(Duration::from_millis(10));
        let mut interval = tokio::time::interval_at(Instant::now() + period, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(io::Error::from)
            .and_then(|i| {
                // SAFETY: `InotifyFd` owns the descriptor (an `OwnedFd` inside `Inotify`) and
                // always returns that same one; it is closed only when the `AsyncFd` drops it.
                unsafe { AsyncFd::register_with_interest(InotifyFd(i), Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)
            }) {
            Ok(fd) => Some(fd),
            Err(e) => {
                warn!(
                    "cannot watch program files with inotify ({e}); changes are noticed every \
                     {period:?}"
                );
                None
            }
        };
        let mut programs: Vec<PathBuf> = programs
            .iter()
            .filter(|p| p.is_absolute())
            .cloned()
            .collect();
        programs.sort();
        programs.dedup();
        let mut watcher = Self {
            programs,
            inotify,
            watches: HashMap::new(),
            failed: BTreeSet::new(),
            interval,
        };
        watcher.rewatch();
        Ok(watcher)
    }

    /// Returns when something may have changed: a relevant inotify event (then events are
    /// drained for [`DEBOUNCE`] more), or the period elapsed. The caller then resolves again
    /// and compares.
    pub async fn changed(&mut self) {
        loop {
            let wake = match &self.inotify {
                None => {
                    self.interval.tick().await;
                    Wake::Period
                }
                Some(fd) => tokio::select! {
                    _ = self.interval.tick() => Wake::Period,
                    r = read_relevant(fd, &self.watches) => match r {
                        Ok(true) => Wake::Event,
                        Ok(false) => Wake::Irrelevant,
                        Err(e) => Wake::Failed(e),
                    },
                },
            };
            match wake {
                Wake::Period => break,
                Wake::Event => {
                    if let Some(fd) = &self.inotify {
                        drain_for(fd, DEBOUNCE).await;
                    }
                    self.interval.reset();
                    break;
                }
                Wake::Irrelevant => continue,
                Wake::Failed(e) => {
                    warn!(
                        "reading inotify events failed ({e}); program changes are noticed \
                         every {:?} only",
                        self.interval.period()
                    );
                    self.inotify = None;
                    self.watches.clear();
                    break;
                }
            }
        }
        self.rewatch();
    }

    /// The directories to watch and the names in each that lead to a program.
    fn targets(&self) -> BTreeMap<PathBuf, BTreeSet<OsString>> {
        let mut out: BTreeMap<PathBuf, BTreeSet<OsString>> = BTreeMap::new();
        for program in &self.programs {
            let mut child = program.as_path();
            while let Some(dir) = child.parent() {
                if dir.is_dir() {
                    if let Some(name) = child.file_name() {
                        out.entry(dir.to_path_buf())
                            .or_default()
                            .insert(name.to_owned());
                    }
                    break;
                }
                child = dir;
            }
        }
        out
    }

    /// Brings the inotify watches in line with [`Self::targets`]: directories that appeared
    /// are watched instead of their ancestors, deleted ones are replaced by theirs.
    fn rewatch(&mut self) {
        let Some(fd) = &self.inotify else {
            return;
        };
        let inotify = &fd.get_ref().0;
        let mut watches: HashMap<WatchDescriptor, Watch> = HashMap::new();
        for (dir, names) in self.targets() {
            match inotify.add_watch(&dir, WATCH_MASK) {
                Ok(wd) => {
                    self.failed.remove(&dir);
                    let w = watches.entry(wd).or_default();
                    w.dirs.insert(dir);
                    w.names.extend(names);
                }
                Err(e) => {
                    if self.failed.insert(dir.clone()) {
                        warn!(
                            "cannot watch {} for program changes ({e}); changes there are \
                             noticed every {:?}",
                            dir.display(),
                            self.interval.period()
                        );
                    }
                }
            }
        }
        for wd in self.watches.keys() {
            if !watches.contains_key(wd) {
                // Fails harmlessly for a watch the kernel already dropped (deleted directory).
                let _ = inotify.rm_watch(*wd);
            }
        }
        debug!(
            "watching {} director{} for program changes",
            watches.len(),
            if watches.len() == 1 { "y" } else { "ies" }
        );
        self.watches = watches;
    }
}

/// Whether an event may change what a program resolves to.
fn relevant(event: &InotifyEvent, watches: &HashMap<WatchDescriptor, Watch>) -> bool {
    if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
        return true;
    }
    let Some(watch) = watches.get(&event.wd) else {
        // A watch removed by rewatch; its IN_IGNORED arrives later.
        return false;
    };
    match &event.name {
        // The directory itself: deleted, moved, or its watch dropped.
        None => true,
        Some(name) => watch.names.contains(name),
    }
}

/// Waits for events and reads them: `true` if one of them is relevant.
async fn read_relevant(
    fd: &AsyncFd<InotifyFd>,
    watches: &HashMap<WatchDescriptor, Watch>,
) -> io::Result<bool> {
    let mut guard = fd.readable().await?;
    match guard.try_io(|inner| inner.get_ref().0.read_events().map_err(io::Error::from)) {
        Ok(Ok(events)) => Ok(events.iter().any(|e| relevant(e, watches))),
        Ok(Err(e)) => Err(e),
        // Spurious readiness: cleared, wait again.
        Err(_would_block) => Ok(false),
    }
}

/// Reads and discards events for `period`.
async fn drain_for(fd: &AsyncFd<InotifyFd>, period: Duration) {
    let deadline = Instant::now() + period;
    let drain = async {
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            if let Ok(Err(_)) =
                guard.try_io(|inner| inner.get_ref().0.read_events().map_err(io::Error::from))
            {
                return;
            }
        }
    };
    // A read error ends the drain early; the next wait reports it.
    let _ = tokio::time::timeout_at(deadline, drain).await;
    tokio::time::sleep_until(deadline).await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::identity::exe_id;
    use rules::model::Selector;

    /// A rule set with one rule per selector (`rule N` named `rN`).
    fn ruleset(selectors: Vec<Selector>) -> Ruleset {
        let text = "[[rule]]\nname = \"r\"\nproto = \"tcp\"\nport = 22\naction = \"allow\"\n";
        let mut rs = rules::config::parse(text, Path::new("resolve-test.toml")).expect("parse");
        let base = rs.rules[0].clone();
        rs.rules = selectors
            .into_iter()
            .enumerate()
            .map(|(i, selector)| {
                let mut r = base.clone();
                r.index = i as u32;
                r.name = format!("r{}", i + 1);
                r.selector = selector;
                r
            })
            .collect();
        rs
    }

    fn program(p: &Path) -> Selector {
        Selector {
            program: Some(p.to_path_buf()),
            ..Selector::default()
        }
    }

    fn unit(name: &str) -> Selector {
        Selector {
            unit: Some(name.to_owned()),
            ..Selector::default()
        }
    }

    fn write_file(path: &Path, contents: &str) {
        fs::write(path, contents).expect("write file");
    }

    #[test]
    fn program_resolves_like_exe_id_and_follows_replacement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("prog");
        write_file(&bin, "one");
        let rs = ruleset(vec![program(&bin)]);

        let first = Resolved::resolve(&rs, Path::new("/"));
        let id = first.exe(&bin).expect("resolved");
        assert_eq!(id, exe_id(&bin).expect("exe_id"));
        assert_eq!(first.programs.len(), 1);
        assert!(first.warnings(&rs).is_empty(), "{:?}", first.warnings(&rs));
        assert_eq!(first, Resolved::resolve(&rs, Path::new("/")));

        // An upgrade: a new file renamed over the old one.
        let tmp = dir.path().join("prog.new");
        write_file(&tmp, "two");
        fs::rename(&tmp, &bin).expect("rename");
        let second = Resolved::resolve(&rs, Path::new("/"));
        let id2 = second.exe(&bin).expect("resolved again");
        assert_ne!(id, id2);
        assert_eq!(id2, exe_id(&bin).expect("exe_id"));
        assert_ne!(first, second);
    }

    #[test]
    fn missing_and_odd_programs_resolve_to_nothing_with_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("not-yet");
        let below_file = dir.path().join("file/sub");
        write_file(&dir.path().join("file"), "x");
        let rs = ruleset(vec![
            program(&missing),
            program(dir.path()),
            program(Path::new("relative/bin")),
            program(&below_file),
        ]);
        let r = Resolved::resolve(&rs, Path::new("/"));
        assert_eq!(r.programs.len(), 4);
        assert!(r.programs.values().all(Option::is_none), "{r:?}");
        assert_eq!(r.exe(&missing), None);
        let w = r.warnings(&rs);
        assert_eq!(w.len(), 4, "{w:#?}");
        assert_eq!(
            w[0],
            format!(
                "rule 1 (\"r1\"): program {} does not exist yet; the rule matches nothing \
                 until it appears",
                missing.display()
            )
        );
        assert!(w[1].contains("is not a regular file"), "{}", w[1]);
        assert!(w[2].contains("not an absolute path"), "{}", w[2]);
        assert!(w[3].starts_with("rule 4 (\"r4\")"), "{}", w[3]);
        assert!(w[3].contains("cannot be stat'ed"), "{}", w[3]);

        // It appears.
        write_file(&missing, "now");
        let r = Resolved::resolve(&rs, Path::new("/"));
        assert_eq!(r.exe(&missing), Some(exe_id(&missing).expect("exe_id")));
        assert_eq!(r.warnings(&rs).len(), 3);
    }

    /// [`resolve_in`] without systemd, trusting this process's own directories.
    fn resolve_here(rs: &Ruleset, root: &Path, mount: &Path, mount_root: &str) -> Resolved {
        let lookup = UnitLookup {
            systemd: false,
            owner: nix::unistd::geteuid().as_raw(),
        };
        resolve_with(rs, root, mount, mount_root, lookup)
    }

    fn mkdirs(root: &Path, rel: &str) -> PathBuf {
        let p = root.join(rel);
        fs::create_dir_all(&p).expect("create dirs");
        p
    }

    fn ino(p: &Path) -> u64 {
        fs::metadata(p).expect("stat").ino()
    }

    #[test]
    fn units_are_found_breadth_first_with_their_level() {
        let mount = tempfile::tempdir().expect("tempdir");
        let m = mount.path();
        let x = mkdirs(m, "a/system.slice/x.service");
        let dup_shallow = mkdirs(m, "b/dup.service");
        mkdirs(m, "a/c/d/dup.service");
        // A file of the unit's name is not a cgroup.
        write_file(&m.join("a/file.service"), "");
        let file_dir = mkdirs(m, "z/y/file.service");
        let rs = ruleset(vec![
            unit("x.service"),
            unit("dup.service"),
            unit("file.service"),
            unit("x.service"),
            unit("gone.service"),
        ]);

        let r = resolve_here(&rs, m, m, "/");
        assert_eq!(r.units.len(), 4);
        let got = r.unit("x.service").expect("x found");
        assert_eq!(
            *got,
            UnitCgroup {
                id: ino(&x),
                level: 3,
                path: x.clone()
            }
        );
        let dup = r.unit("dup.service").expect("dup found");
        assert_eq!((dup.level, &dup.path), (2, &dup_shallow));
        assert_eq!(dup.id, ino(&dup_shallow));
        let f = r.unit("file.service").expect("directory found");
        assert_eq!((f.level, &f.path), (3, &file_dir));
        assert_eq!(r.unit("gone.service"), None);
        assert_eq!(r.unit_levels(), 1 << 2 | 1 << 3);
        assert_eq!(
            r.warnings(&rs),
            vec![format!(
                "unit gone.service is not running (no cgroup named gone.service under {} that \
                 is owned by root and not delegated); its rules match nothing until it starts",
                m.display()
            )]
        );

        // A mount of a sub-tree (cgroup namespace): levels count from the hierarchy's root.
        let r = resolve_here(&rs, m, m, "/outer/inner");
        assert_eq!(r.unit("x.service").expect("x").level, 5);

        // Searching below a cgroup of our own: levels still count from the mount.
        let a = m.join("a");
        let r = resolve_here(&rs, &a, m, "/");
        assert_eq!(r.unit("x.service").expect("x").level, 3);
        assert_eq!(r.unit("dup.service").expect("dup").level, 4);
        assert_eq!(r.unit("file.service"), None);
        // Not lexically below the mount, but after resolving `..`.
        let r = resolve_here(&rs, &m.join("b/../a"), m, "/");
        assert_eq!(r.unit("x.service").expect("x").level, 3);
    }

    #[test]
    fn units_deeper_than_the_kernel_walks_are_refused() {
        let mount = tempfile::tempdir().expect("tempdir");
        let m = mount.path();
        // Level MAX_UNIT_LEVEL: found. One deeper: found by the search but unmatchable.
        let mut rel = String::new();
        for l in 1..MAX_UNIT_LEVEL {
            rel.push_str(&format!("l{l}/"));
        }
        let ok = mkdirs(m, &format!("{rel}deepest.service"));
        let deep = mkdirs(m, &format!("{rel}l{MAX_UNIT_LEVEL}/deep.service"));
        let rs = ruleset(vec![unit("deepest.service"), unit("deep.service")]);
        let r = resolve_here(&rs, m, m, "/");
        let u = r.unit("deepest.service").expect("at the deepest level");
        assert_eq!((u.level, &u.path), (MAX_UNIT_LEVEL as u32, &ok));
        assert_eq!(r.unit("deep.service"), None);
        assert_eq!(r.unit_levels(), 1 << MAX_UNIT_LEVEL);
        let w = r.warnings(&rs);
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(w[0].contains(&deep.display().to_string()), "{}", w[0]);
        assert!(
            w[0].contains(&format!("level {}", MAX_UNIT_LEVEL + 1)),
            "{}",
            w[0]
        );
        assert!(
            w[0].contains(&format!("deeper than the {MAX_UNIT_LEVEL} levels")),
            "{}",
            w[0]
        );

        // The mount root counts: the same tree one level down in the hierarchy.
        let r = resolve_here(&rs, m, m, "/ns");
        assert_eq!(r.unit("deepest.service"), None);
        assert!(r.warnings(&rs)[0].contains("deeper than"));
    }

    #[test]
    fn units_in_a_users_subtree_are_neither_matched_nor_searched() {
        let mount = tempfile::tempdir().expect("tempdir");
        let m = mount.path();
        mkdirs(
            m,
            "user.slice/user-1000.slice/user@1000.service/app.slice/backup.service",
        );
        mkdirs(
            m,
            "user.slice/user-1000.slice/user@1000.service/app.slice/other.service",
        );
        let rs = ruleset(vec![unit("backup.service"), unit("other.service")]);
        let r = resolve_here(&rs, m, m, "/");
        assert_eq!(r.unit("backup.service"), None);
        assert_eq!(r.unit("other.service"), None);
        // The real one, outside: found, although deeper.
        let real = mkdirs(m, "a/b/c/system.slice/backup.service");
        let r = resolve_here(&rs, m, m, "/");
        assert_eq!(r.unit("backup.service").expect("real unit").path, real);
        // A daemon cgroup inside a user's subtree: nothing below it is trusted.
        let user = m.join("user.slice/user-1000.slice/user@1000.service");
        let r = resolve_here(&rs, &user, m, "/");
        assert_eq!(r.unit("backup.service"), None);
        let w = r.warnings(&rs);
        assert!(w[0].contains("is a user's own subtree"), "{w:?}");
    }

    #[test]
    fn units_in_cgroups_owned_or_delegated_to_others_are_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("needs root to chown: skipped");
            return;
        }
        let chown = |p: &Path, uid: u32| {
            std::os::unix::fs::chown(p, Some(uid), None).expect("chown");
        };
        let mount = tempfile::tempdir().expect("tempdir");
        let m = mount.path();
        let rs = ruleset(vec![unit("backup.service")]);
        // A directory a user owns, and the unit's name below it (even root-owned).
        let owned = mkdirs(m, "owned/backup.service");
        chown(&m.join("owned"), 1000);
        // A root-owned directory delegated to a user (its cgroup.procs is the user's).
        let delegated = mkdirs(m, "delegated/backup.service");
        write_file(&m.join("delegated/cgroup.procs"), "");
        chown(&m.join("delegated/cgroup.procs"), 1000);
        let lookup = UnitLookup {
            systemd: false,
            owner: 0,
        };
        let r = resolve_with(&rs, m, m, "/", lookup);
        assert_eq!(r.unit("backup.service"), None, "{r:?}");
        // The unit's own directory owned by a user.
        let own = mkdirs(m, "a/backup.service");
        chown(&own, 1000);
        let r = resolve_with(&rs, m, m, "/", lookup);
        assert_eq!(r.unit("backup.service"), None, "{r:?}");
        // Root-owned and undelegated: found.
        let real = mkdirs(m, "b/c/backup.service");
        let r = resolve_with(&rs, m, m, "/", lookup);
        assert_eq!(r.unit("backup.service").expect("real").path, real);
        assert!(!owned.starts_with(&real) && !delegated.starts_with(&real));
    }

    #[test]
    fn nested_units_are_reported() {
        let mount = tempfile::tempdir().expect("tempdir");
        let m = mount.path();
        let outer = mkdirs(m, "system.slice/outer.service");
        let inner = mkdirs(m, "system.slice/outer.service/inner.scope");
        mkdirs(m, "system.slice/other.service");
        let rs = ruleset(vec![
            unit("inner.scope"),
            unit("outer.service"),
            unit("other.service"),
        ]);
        let r = resolve_here(&rs, m, m, "/");
        let w = r.warnings(&rs);
        assert_eq!(
            w,
            vec![format!(
                "unit inner.scope ({}) is inside unit outer.service ({}): processes of \
                 inner.scope are matched as inner.scope only, so rules naming outer.service do \
                 not apply to them",
                inner.display(),
                outer.display()
            )]
        );
    }

    #[test]
    fn root_outside_the_mount_resolves_to_nothing() {
        let mount = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        mkdirs(other.path(), "x.service");
        let bin = other.path().join("bin");
        write_file(&bin, "");
        let rs = ruleset(vec![unit("x.service"), program(&bin)]);
        let r = resolve_here(&rs, other.path(), mount.path(), "/");
        assert_eq!(r.unit("x.service"), None);
        assert!(r.exe(&bin).is_some(), "programs still resolve");
        let w = r.warnings(&rs);
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(w[0].contains("is not below the cgroup2 mount"), "{}", w[0]);
    }

    #[test]
    fn own_cgroup_resolves_on_this_host() {
        let Ok((mount, own)) = scratch::own_cgroup() else {
            eprintln!("no cgroup2: skipped");
            return;
        };
        let Some(name) = own.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        if own == mount {
            eprintln!("in the cgroup2 root: skipped");
            return;
        }
        let rs = ruleset(vec![unit(name)]);
        let r = Resolved::resolve(&rs, &mount);
        let Some(u) = r.unit(name) else {
            // Too deep, or a name used twice: only check that it says why.
            assert!(!r.warnings(&rs).is_empty());
            return;
        };
        if u.path == own {
            assert_eq!(u.id, ino(&own));
        }
    }

    fn unique_dir() -> tempfile::TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        tempfile::Builder::new()
            .prefix(&format!(
                "resolve-watch-{}-",
                N.fetch_add(1, Ordering::Relaxed)
            ))
            .tempdir()
            .expect("tempdir")
    }

    #[tokio::test]
    async fn watcher_wakes_on_a_created_program() {
        let dir = unique_dir();
        let bin = dir.path().join("prog");
        let mut w =
            Watcher::new(std::slice::from_ref(&bin), Duration::from_secs(60)).expect("watcher");
        assert!(w.inotify.is_some(), "inotify is available here");
        let started = std::time::Instant::now();
        let path = bin.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            fs::write(&path, "new").expect("create");
        });
        tokio::time::timeout(Duration::from_secs(2), w.changed())
            .await
            .expect("woken by inotify, not the 60 s period");
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn watcher_watches_an_ancestor_until_the_directory_appears() {
        let dir = unique_dir();
        let sub = dir.path().join("opt/app");
        let bin = sub.join("prog");
        let mut w =
            Watcher::new(std::slice::from_ref(&bin), Duration::from_secs(60)).expect("watcher");
        // An unrelated file does not wake it.
        write_file(&dir.path().join("unrelated"), "");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), w.changed())
                .await
                .is_err(),
            "woken by an unrelated file"
        );
        fs::create_dir_all(&sub).expect("mkdir");
        tokio::time::timeout(Duration::from_secs(2), w.changed())
            .await
            .expect("woken by the directory appearing");
        // Now the directory itself is watched.
        let watched: Vec<_> = w.watches.values().flat_map(|w| w.dirs.iter()).collect();
        assert_eq!(watched, vec![&sub]);
        write_file(&bin, "x");
        tokio::time::timeout(Duration::from_secs(2), w.changed())
            .await
            .expect("woken by the program appearing");
    }

    #[tokio::test]
    async fn watcher_wakes_after_the_period() {
        let dir = unique_dir();
        let bin = dir.path().join("prog");
        let mut w =
            Watcher::new(std::slice::from_ref(&bin), Duration::from_millis(200)).expect("watcher");
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(2), w.changed())
            .await
            .expect("woken by the period");
        let took = started.elapsed();
        // Half the period: an immediate wake-up fails, and a guest under software emulation,
        // whose timers were seen firing at 189 ms of a 200 ms period, passes.
        assert!(took >= Duration::from_millis(100), "{took:?}");
        // And again.
        tokio::time::timeout(Duration::from_secs(2), w.changed())
            .await
            .expect("woken by the period again");
    }
}
