//! A private bpf filesystem for one test (or one example run): pins made there are invisible to
//! the host's /sys/fs/bpf, and unmounting on drop removes every pin, even when the test fails.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

pub struct BpfFs {
    dir: tempfile::TempDir,
}

impl BpfFs {
    #[expect(
        clippy::new_without_default,
        reason = "new() mounts a file system (and panics without root): not a default value"
    )]
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fw-test-bpffs-")
            .tempdir()
            .expect("creating a temporary directory for bpffs");
        mount(
            Some("bpf"),
            dir.path(),
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("mounting a private bpffs (tests need root)");
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A subdirectory for one daemon's pins.
    pub fn pin_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        // MNT_DETACH: still unmount if a pinned object is open somewhere.
        let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
    }
}
