//! Where the cgroup2 file system is and which cgroup this process is in, and a throwaway
//! cgroup below it for whatever attaches cgroup programs without touching the host: tests,
//! `cargo xtask run --sandbox`, the benchmarks. Only std and anyhow, so xtask includes this
//! file as it is (`#[path]`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};

/// The first cgroup2 file system in the text of a mountinfo file: its mount point and the
/// root of the mounted tree (not `/` inside a cgroup namespace).
pub fn cgroup2_in(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next() != Some("cgroup2") {
            return None;
        }
        let mut fields = left.split(' ').skip(3);
        let root = unescape(fields.next()?);
        let mount = PathBuf::from(unescape(fields.next()?));
        Some((mount, root))
    })
}

/// [`cgroup2_in`] of this process's `/proc/self/mountinfo`.
pub fn cgroup2() -> anyhow::Result<(PathBuf, String)> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    cgroup2_in(&info).context("no cgroup2 file system is mounted (see /proc/self/mountinfo)")
}

/// The cgroup2 directory of the process whose `/proc/PID/cgroup` text is `proc_cgroup`.
pub fn own_cgroup_in(proc_cgroup: &str, mount: &Path, mount_root: &str) -> Option<PathBuf> {
    let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let rel = path
        .strip_prefix(mount_root.trim_end_matches('/'))
        .unwrap_or(path)
        .trim_start_matches('/');
    Some(mount.join(rel))
}

/// The cgroup2 mount point and the cgroup2 directory this process is in.
pub fn own_cgroup() -> anyhow::Result<(PathBuf, PathBuf)> {
    let (mount, root) = cgroup2()?;
    let cg = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let own = own_cgroup_in(&cg, &mount, &root).context("no cgroup2 entry in /proc/self/cgroup")?;
    Ok((mount, own))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| u8::from_str_radix(t, 8).ok());
        if b[i] == b'\\'
            && let Some(v) = octal
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A new cgroup below this process's own, never the cgroup2 root nor above it. Dropping it
/// moves any process left in it back to the parent and removes it.
pub struct ScratchCgroup {
    dir: PathBuf,
    parent: PathBuf,
}

impl ScratchCgroup {
    /// Creates `name` below this process's cgroup; one left by an interrupted earlier run is
    /// emptied and made again.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let (mount, parent) = own_cgroup()?;
        let dir = parent.join(name);
        if dir == mount || !dir.starts_with(&mount) || dir.parent() != Some(parent.as_path()) {
            bail!("refusing to use {} as a scratch cgroup", dir.display());
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

    /// Moves process `pid` (all its threads) into this cgroup.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.dir.display()))
    }

    /// The processes in this cgroup.
    pub fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn remove(&self) {
        for attempt in 0..50 {
            for pid in self.procs() {
                let _ = std::fs::write(self.parent.join("cgroup.procs"), pid.to_string());
            }
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if attempt == 49 => eprintln!("removing {}: {e}", self.dir.display()),
                // A process that was exiting may still count for a moment.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}
