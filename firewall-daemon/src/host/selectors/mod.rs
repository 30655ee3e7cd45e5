//! Resolving the rules' `program` and `unit` selectors to what the kernel compares.
//!
//! # Programs
//!
//! A `program` path is resolved to the (device, inode) of the file it names, symlinks followed
//! ([`exe_id`](crate::host::exe_id::exe_id)). A path that does not exist (yet), or that cannot be
//! stat'ed, resolves to nothing: its rules match nothing until the file appears and the daemon
//! resolves again. A package upgrade replaces a binary with a new inode, so the path must be
//! resolved again when it changes: [`Watcher`] says when.
//!
//! # Units
//!
//! A `unit` (`nginx.service`) is resolved to the cgroup v2 directory systemd made for it. When
//! systemd runs (`/run/systemd/system` exists), systemd says where: the unit's `ControlGroup`
//! property (`systemctl show`, bounded by `units::SYSTEMCTL_TIMEOUT`). Otherwise, and for units
//! systemd does not know, the directory is searched for: the first directory named exactly
//! like the unit in a breadth-first search below the daemon's cgroup (`[daemon] cgroup`, the
//! cgroup2 mount by default), so the shallowest one wins, among *trusted* cgroups only
//! (`units::trust`): owned by root, with `cgroup.procs`, `cgroup.threads` and
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
    collections::{BTreeMap, BTreeSet},
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use firewall_common::identity::MAX_UNIT_LEVEL;
use firewall_sandbox::cgroup2;

use crate::host::exe_id::ExeId;
use rules::model::Ruleset;

/// The oracle ([`rules::policy`]) is a crate of its own that knows nothing of how the daemon
/// finds executables and cgroups, only what they resolved to: this is how it asks.
impl rules::policy::Selectors for Resolved {
    fn program_exe(&self, path: &Path) -> Option<ExeId> {
        self.exe(path)
    }

    fn unit_cgroup(&self, name: &str) -> Option<rules::policy::UnitCgroupId> {
        self.unit(name).map(|u| rules::policy::UnitCgroupId {
            id: u.id,
            level: u.level,
        })
    }

    fn addresses(&self, name: &str) -> Vec<std::net::IpAddr> {
        self.lookups.addresses(name)
    }
}

#[cfg(test)]
mod tests;
mod units;
mod watch;

use units::UnitLookup;
pub use watch::Watcher;

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
    /// The addresses of the inbound rules' names.
    pub lookups: super::lookups::Lookups,
}

impl Resolved {
    /// Resolves every selector `ruleset.rules` name. `cgroup_root`: the directory under which
    /// units are searched (the daemon's configured `[daemon] cgroup`, which is the cgroup2
    /// mount by default; tests pass a cgroup of their own).
    pub fn resolve(ruleset: &Ruleset, cgroup_root: &Path) -> Self {
        Self::resolve_after(ruleset, cgroup_root, &Resolved::default())
    }

    /// [`Self::resolve`] after `before`: only the names whose records expired (or that are
    /// new) are looked up, and one no server answered for keeps the addresses it had in
    /// `before` (`super::lookups`).
    pub fn resolve_after(ruleset: &Ruleset, cgroup_root: &Path, before: &Resolved) -> Self {
        let mut out = Self::resolve_selectors(ruleset, cgroup_root);
        out.lookups =
            super::lookups::look_up_due(&ruleset.lookups(), &ruleset.dns, &before.lookups);
        out
    }

    /// The programs and units of [`Self::resolve`], without the names' lookups.
    fn resolve_selectors(ruleset: &Ruleset, cgroup_root: &Path) -> Self {
        let needs_cgroup = ruleset.rules.iter().any(|r| r.selector.unit.is_some());
        match cgroup2::cgroup2() {
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
            // `FILE:LINE:COL: rule N ("name"): `, located like every other warning.
            let ctx = format!("{}program {shown}", rules::lint::at(ruleset, rule));
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
            let at = rules::lint::at(ruleset, rule);
            let msg = match self.unit_problems.get(name) {
                Some(UnitProblem::NotRunning) => format!(
                    "{at}unit {name} is not running (no cgroup named {name} under {root} that \
                     is owned by root and not delegated); its rules match nothing until it \
                     starts"
                ),
                Some(UnitProblem::Unmatchable { path, level }) if *level == 0 => format!(
                    "{at}unit {name}: its cgroup {} is the cgroup2 root, which the firewall cannot \
                     tell apart from no unit; its rules match nothing",
                    path.display()
                ),
                Some(UnitProblem::Unmatchable { path, level }) => format!(
                    "{at}unit {name}: its cgroup {} is at level {level}, deeper than the \
                     {MAX_UNIT_LEVEL} levels the firewall can match; its rules match nothing",
                    path.display()
                ),
                Some(UnitProblem::Search(e)) => {
                    format!("{at}unit {name} cannot be looked up ({e}); its rules match nothing")
                }
                None => format!("{at}unit {name} was not resolved; its rules match nothing"),
            };
            out.push(msg);
        }

        out.extend(self.lookups.warnings(ruleset));

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
        units::from_systemd(&wanted, mount, mount_root)
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
        match units::root_level(cgroup_root, mount, mount_root)
            .and_then(|level| units::trusted_path(cgroup_root, mount, lookup.owner).map(|()| level))
        {
            Ok(level) => found.extend(units::search(cgroup_root, level, &rest, lookup.owner)),
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
    crate::host::exe_id::exe_id(path).map_err(|e| {
        match e.root_cause().downcast_ref::<io::Error>() {
            Some(io) => stat_problem(io),
            None => ProgramProblem::Stat(format!("{e:#}")),
        }
    })
}
