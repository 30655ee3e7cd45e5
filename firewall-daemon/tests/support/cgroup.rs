//! A cgroup v2 directory made for one test (or one daemon), under the test process's own
//! cgroup in the cgroup2 mount (found in /proc/self/mountinfo, never hard-coded). Dropping the
//! guard moves any process left in it back to the parent and removes it, even when the test
//! failed. It is never the cgroup2 root nor any cgroup that existed before.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use firewall_sandbox::{cgroup2, scratch::ScratchCgroup};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The cgroup2 mount point and the root of the mounted tree (for a cgroup namespace).
pub fn cgroup2_mount() -> (PathBuf, String) {
    cgroup2::cgroup2().expect("finding the cgroup2 mount")
}

pub struct TestCgroup(ScratchCgroup);

impl TestCgroup {
    /// Creates a new, empty cgroup for the caller; `tag` makes its name readable.
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "fw-test-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let cg = Self(ScratchCgroup::create(&name).expect("creating the test cgroup"));
        cg.assert_safe();
        cg
    }

    /// A test cgroup is a new directory strictly below the cgroup2 mount: never its root.
    pub fn assert_safe(&self) {
        let (mount, _) = cgroup2_mount();
        let dir = self.path();
        assert_ne!(dir, mount, "never the cgroup2 root");
        assert!(
            dir.starts_with(&mount) && dir.parent().is_some(),
            "{} is not below the cgroup2 mount {}",
            dir.display(),
            mount.display()
        );
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(name.starts_with("fw-test-"), "not a test cgroup: {name}");
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Moves process `pid` (all its threads) into this cgroup.
    pub fn add(&self, pid: u32) {
        self.0
            .add(pid)
            .expect("moving a process into the test cgroup");
    }

    pub fn procs(&self) -> Vec<u32> {
        self.0.procs()
    }
}
