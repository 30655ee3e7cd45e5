//! A cgroup v2 directory for a daemon that xtask starts (the sandbox, the benchmarks).
//!
//! The daemon attaches its outbound hooks to `[daemon] cgroup`, whose default is the root of
//! the cgroup2 mount: every process on the machine. Every daemon xtask starts therefore gets
//! `--cgroup` with a cgroup made for it, below xtask's own cgroup in the cgroup2 mount (found
//! in /proc/self/mountinfo, never hard-coded), and removed when the guard drops: processes left
//! in it are moved back to the parent first.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};

/// The cgroup2 mount point and the root of the mounted tree (for a cgroup namespace).
fn cgroup2_mount() -> anyhow::Result<(PathBuf, String)> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        if fields.len() >= 5 {
            return Ok((
                PathBuf::from(fields[4].replace("\\040", " ")),
                fields[3].to_string(),
            ));
        }
    }
    bail!("no cgroup2 file system is mounted (see /proc/self/mountinfo)")
}

/// The cgroup2 directory this process is in.
fn own_cgroup(mount: &Path, mount_root: &str) -> anyhow::Result<PathBuf> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let path = cg
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup2 entry in /proc/self/cgroup")?;
    let rel = path
        .strip_prefix(mount_root.trim_end_matches('/'))
        .unwrap_or(path)
        .trim_start_matches('/');
    Ok(mount.join(rel))
}

pub struct DaemonCgroup {
    dir: PathBuf,
    parent: PathBuf,
}

impl DaemonCgroup {
    /// Creates `NAME` below this process's cgroup; one left by an interrupted earlier run is
    /// emptied and made again.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let (mount, root) = cgroup2_mount()?;
        let parent = own_cgroup(&mount, &root)?;
        let dir = parent.join(name);
        if dir == mount || !dir.starts_with(&mount) {
            bail!("refusing to use {} as the daemon's cgroup", dir.display());
        }
        let cg = Self { dir, parent };
        if cg.dir.exists() {
            cg.remove();
        }
        std::fs::create_dir(&cg.dir).with_context(|| format!("creating {}", cg.dir.display()))?;
        Ok(cg)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn remove(&self) {
        for attempt in 0..50 {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = std::fs::write(self.parent.join("cgroup.procs"), pid.trim());
            }
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if attempt == 49 => eprintln!("xtask: removing {}: {e}", self.dir.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for DaemonCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}
