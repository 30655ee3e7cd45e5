//! cgroup v2, as the outbound hooks need it: where the cgroup2 file system is mounted (the
//! default attach point) and checking `[daemon] cgroup`; which cgroup a pinned link is
//! attached to ([`links`]); the cgroup ancestors of a process ([`ancestors`]).
//!
//! Why `[daemon] cgroup` is checked before anything is attached to it: a wrong setting (a
//! missing directory, a plain one, a cgroup v1 hierarchy) is reported with where cgroup v2 is
//! mounted on this host, rather than as the kernel's bare error number.

use std::{
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};

pub mod ancestors;
pub mod links;

pub use links::{LinkTarget, link_target};

/// statfs magic of a cgroup v2 file system.
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// statfs magic of a cgroup v1 hierarchy.
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;

/// The mount point of the first cgroup2 file system in `/proc/self/mountinfo` (on systemd
/// hosts `/sys/fs/cgroup`; in the "hybrid" layout `/sys/fs/cgroup/unified`).
pub fn mount() -> anyhow::Result<PathBuf> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    mount_in(&info).ok_or_else(|| {
        anyhow!(
            "no cgroup2 file system is mounted (see /proc/self/mountinfo); the outbound rules \
             need one: mount -t cgroup2 none /sys/fs/cgroup"
        )
    })
}

/// [`mount`] on the text of a mountinfo file.
pub fn mount_in(mountinfo: &str) -> Option<PathBuf> {
    firewall_sandbox::cgroup2::cgroup2_in(mountinfo).map(|(mount, _)| mount)
}

/// An open cgroup v2 directory: what the hooks are attached to.
#[derive(Debug)]
pub struct Cgroup {
    pub path: PathBuf,
    /// The kernel's cgroup id (the directory's inode number on cgroup2), as link info reports it.
    pub id: u64,
    pub file: File,
}

impl Cgroup {
    /// Opens `path` (read-only: attaching needs no more) after checking that it is a
    /// directory on a cgroup2 file system.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let hint = || match mount() {
            Ok(m) => format!("cgroup v2 is mounted at {} on this host", m.display()),
            Err(e) => format!("{e:#}"),
        };
        let meta = std::fs::metadata(path).map_err(|e| {
            anyhow!(
                "[daemon] cgroup {}: {e}; it must be an existing cgroup v2 directory ({})",
                path.display(),
                hint()
            )
        })?;
        if !meta.is_dir() {
            bail!(
                "[daemon] cgroup {} is not a directory; it must be a cgroup v2 directory ({})",
                path.display(),
                hint()
            );
        }
        let st =
            nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
        let magic = st.filesystem_type().0 as i64;
        if magic != CGROUP2_SUPER_MAGIC {
            let what = if magic == CGROUP_SUPER_MAGIC {
                "a cgroup v1 hierarchy".to_string()
            } else {
                format!("a file system of type {magic:#x}")
            };
            bail!(
                "[daemon] cgroup {} is not a cgroup v2 directory (it is on {what}); {}",
                path.display(),
                hint()
            );
        }
        let file =
            File::open(path).with_context(|| format!("opening the cgroup {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            id: meta.ino(),
            file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let escaped = "40 30 0:27 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(mount_in(escaped), Some(PathBuf::from("/mnt/my cgroups")));
        assert_eq!(mount_in("33 31 0:28 / /x rw - cgroup cgroup rw\n"), None);
    }
}
