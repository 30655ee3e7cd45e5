//! A throwaway cgroup below this process's own, for whatever attaches cgroup programs without
//! touching the host: tests, `cargo xtask run --sandbox`, the benchmarks.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::cgroup2::own_cgroup;

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

    /// The processes in this cgroup; none when `cgroup.procs` cannot be read (the cgroup is
    /// gone), which is what the callers (cleanup, tests' checks of who is inside) want.
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
                // Best effort: a process that cannot be moved keeps remove_dir failing, and
                // the last attempt reports that.
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
