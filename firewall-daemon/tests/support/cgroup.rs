//! A cgroup v2 directory made for one test (or one daemon), under the test process's own
//! cgroup in the cgroup2 mount (found in /proc/self/mountinfo, never hard-coded). Dropping the
//! guard moves any process left in it back to the parent and removes it, even when the test
//! failed. It is never the cgroup2 root nor any cgroup that existed before.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The cgroup2 mount point and the root of the mounted tree (for a cgroup namespace).
pub fn cgroup2_mount() -> (PathBuf, String) {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        if fields.len() >= 5 {
            return (
                PathBuf::from(fields[4].replace("\\040", " ")),
                fields[3].to_string(),
            );
        }
    }
    panic!("no cgroup2 filesystem is mounted (see /proc/self/mountinfo)");
}

/// The cgroup2 directory this process is in.
fn own_cgroup(mount: &Path, mount_root: &str) -> PathBuf {
    let cg = fs::read_to_string("/proc/self/cgroup").expect("reading /proc/self/cgroup");
    let path = cg
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("no cgroup2 entry in /proc/self/cgroup");
    let rel = path
        .strip_prefix(mount_root.trim_end_matches('/'))
        .unwrap_or(path)
        .trim_start_matches('/');
    mount.join(rel)
}

pub struct TestCgroup {
    pub dir: PathBuf,
    parent: PathBuf,
}

impl TestCgroup {
    /// Creates a new, empty cgroup for the caller; `tag` makes its name readable.
    pub fn new(tag: &str) -> Self {
        let (mount, root) = cgroup2_mount();
        let parent = own_cgroup(&mount, &root);
        let dir = parent.join(format!(
            "fw-test-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let cg = Self { dir, parent };
        cg.assert_safe();
        cg
    }

    /// A test cgroup is a new directory strictly below the cgroup2 mount: never its root.
    pub fn assert_safe(&self) {
        let (mount, _) = cgroup2_mount();
        assert_ne!(self.dir, mount, "never the cgroup2 root");
        assert!(
            self.dir.starts_with(&mount) && self.dir.parent().is_some(),
            "{} is not below the cgroup2 mount {}",
            self.dir.display(),
            mount.display()
        );
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(name.starts_with("fw-test-"), "not a test cgroup: {name}");
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Moves process `pid` (all its threads) into this cgroup.
    pub fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.dir.display()));
    }

    pub fn procs(&self) -> Vec<u32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for attempt in 0..50 {
            for pid in self.procs() {
                let _ = fs::write(self.parent.join("cgroup.procs"), pid.to_string());
            }
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if attempt == 49 => {
                    eprintln!("removing {}: {e}", self.dir.display());
                }
                // A process that was exiting may still count for a moment.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}
