//! The cgroup ancestors of a process, as the kernel hooks record them for a task
//! (`bpf_get_current_ancestor_cgroup_id` at each level): the ids (inode numbers of the cgroup2
//! directories) of its cgroup and of that cgroup's ancestors, by level.
//!
//! Why userspace computes them too: the owners of sockets bound before the daemon started, and
//! of connections whose recorded process is asked about, are reconstructed from `/proc`
//! (`host::listeners`, `host::owners`). The limits (a snapshot; levels counted from the
//! hierarchy's root, which is right in the initial cgroup namespace only) are those of
//! `host::listeners`.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

use firewall_common::identity::MAX_UNIT_LEVEL;
use firewall_sandbox::cgroup2;

use crate::host::procfs;

/// The cgroup2 file system as this process sees it.
pub(crate) struct Hierarchy {
    /// Its mount point.
    mount: PathBuf,
    /// The root of the mounted tree within the hierarchy (`/` unless only a subtree is
    /// mounted).
    root: String,
}

impl Hierarchy {
    pub(crate) fn find() -> anyhow::Result<Self> {
        let (mount, root) = cgroup2::cgroup2()?;
        Ok(Self { mount, root })
    }

    /// [`ancestors_of`] the cgroup2 path of process `pid`.
    pub(crate) fn ancestors_of_pid(&self, pid: u32) -> anyhow::Result<[u64; MAX_UNIT_LEVEL]> {
        let path = procfs::cgroup_of_pid(pid)?;
        Ok(ancestors_of(&path, |prefix| {
            let dir = in_mount(&self.mount, &self.root, prefix)?;
            fs::metadata(dir).ok().map(|m| m.ino())
        }))
    }
}

/// The cgroup ids of the cgroup at `cgroup_path` (as `/proc/PID/cgroup` gives it, absolute in
/// the hierarchy: `/a/b/c`) and of its ancestors, by level: element `l - 1` is the id of the
/// ancestor at level `l` (the prefix of `l` components, `a/b` for level 2), which `stat_ino` is
/// asked for as a relative path; 0 beyond the cgroup's own level, and where `stat_ino` finds
/// nothing. Levels deeper than [`MAX_UNIT_LEVEL`] are not looked at. A path with `..` (a cgroup
/// outside the reader's cgroup namespace) gives all zero.
fn ancestors_of(
    cgroup_path: &str,
    stat_ino: impl Fn(&Path) -> Option<u64>,
) -> [u64; MAX_UNIT_LEVEL] {
    let mut ancestors = [0; MAX_UNIT_LEVEL];
    let components: Vec<&str> = cgroup_path
        .trim_end_matches('\n')
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if components.contains(&"..") {
        return ancestors;
    }
    let mut prefix = PathBuf::new();
    for (slot, component) in ancestors.iter_mut().zip(&components) {
        prefix.push(component);
        *slot = stat_ino(&prefix).unwrap_or(0);
    }
    ancestors
}

/// Where the cgroup at `prefix` (relative to the hierarchy's root) is in a cgroup2 mount of the
/// tree rooted at `mount_root`; `None` if it lies outside that tree.
fn in_mount(mount: &Path, mount_root: &str, prefix: &Path) -> Option<PathBuf> {
    let root = Path::new(mount_root.trim_start_matches('/'));
    let rest = prefix.strip_prefix(root).ok()?;
    if rest
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return None;
    }
    Some(mount.join(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_ino(path: &Path) -> Option<u64> {
        // A distinct number per path: its length times 1000 plus its last byte.
        let s = path.to_str()?;
        Some(s.len() as u64 * 1000 + u64::from(*s.as_bytes().last()?))
    }

    #[test]
    fn ancestors_by_level() {
        let ino = |p: &str| fake_ino(Path::new(p)).expect("ino");
        let mut expected = [0; MAX_UNIT_LEVEL];
        expected[..3].copy_from_slice(&[ino("a"), ino("a/b"), ino("a/b/c")]);
        assert_eq!(ancestors_of("/a/b/c", fake_ino), expected);
        assert_eq!(ancestors_of("/a/b/c\n", fake_ino), expected);
        assert_eq!(ancestors_of("/", fake_ino), [0; MAX_UNIT_LEVEL]);
        assert_eq!(ancestors_of("", fake_ino), [0; MAX_UNIT_LEVEL]);

        // Deeper than MAX_UNIT_LEVEL: truncated.
        let deep = "/l1/l2/l3/l4/l5/l6/l7/l8/l9/l10";
        let got = ancestors_of(deep, fake_ino);
        let mut prefix = String::new();
        for (level, part) in deep.trim_start_matches('/').split('/').take(8).enumerate() {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            assert_eq!(got[level], ino(&prefix), "level {}", level + 1);
        }

        // A level that cannot be stat'ed is 0; outside the namespace, nothing is known.
        let missing = ancestors_of("/a/b", |p| {
            if p == Path::new("a") {
                None
            } else {
                fake_ino(p)
            }
        });
        assert_eq!(missing[..3], [0, ino("a/b"), 0]);
        assert_eq!(ancestors_of("/../../a", fake_ino), [0; MAX_UNIT_LEVEL]);
    }

    #[test]
    fn cgroup_directories_in_a_subtree_mount() {
        let mount = Path::new("/sys/fs/cgroup");
        assert_eq!(
            in_mount(mount, "/", Path::new("a/b")),
            Some(PathBuf::from("/sys/fs/cgroup/a/b"))
        );
        assert_eq!(
            in_mount(mount, "/x/y", Path::new("x/y/z")),
            Some(PathBuf::from("/sys/fs/cgroup/z"))
        );
        assert_eq!(
            in_mount(mount, "/x/y", Path::new("x/y")),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(in_mount(mount, "/x/y", Path::new("x")), None);
        assert_eq!(in_mount(mount, "/x/y", Path::new("q/y/z")), None);
    }
}
