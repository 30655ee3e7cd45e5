//! How a unit's cgroup is found (the why is in the module above): systemd is asked when it
//! runs; otherwise, and for units it does not know, the trusted cgroups below the daemon's
//! cgroup are searched breadth-first, and levels are counted from the hierarchy's root.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
    time::Duration,
};

use firewall_common::identity::MAX_UNIT_LEVEL;
use firewall_sandbox::cgroup2;
use log::debug;

/// How deep the unit search goes at most, to tell "too deep to match" from "not running".
const SEARCH_LEVELS: u32 = MAX_UNIT_LEVEL as u32 + 8;
/// Most directories one unit search visits (a host has hundreds to a few thousand cgroups).
const SEARCH_DIRS: usize = 100_000;
/// How long asking systemd for one unit's cgroup may take; past it, the cgroups are searched.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(2);

/// How units are looked up.
#[derive(Clone, Copy, Debug)]
pub(super) struct UnitLookup {
    /// systemd runs: ask it first.
    pub(super) systemd: bool,
    /// The owner of trusted cgroups: root (the search's own tests use theirs).
    pub(super) owner: u32,
}

impl UnitLookup {
    pub(super) fn host() -> Self {
        Self {
            // What sd_booted(3) checks.
            systemd: Path::new("/run/systemd/system").is_dir(),
            owner: 0,
        }
    }
}

/// The cgroups systemd gives the `wanted` units that have one (running units), with their
/// levels. A unit systemd cannot be asked about is left out (and then searched for).
pub(super) fn from_systemd(
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
                    cgroup2::own_cgroup_in(&format!("0::{cg}"), mount, mount_root),
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
                // The timeout is what is reported; killing a child that has just exited fails
                // harmlessly.
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
pub(super) fn trusted_path(root: &Path, mount: &Path, owner: u32) -> Result<(), String> {
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
pub(super) fn root_level(root: &Path, mount: &Path, mount_root: &str) -> Result<u32, String> {
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
pub(super) fn search(
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
