//! Program identity for per-program rules: which executable a socket call comes from.
//!
//! # Design
//!
//! The cgroup socket hooks (connect4/6, sendmsg4/6, bind4/6) run in the calling task's context.
//! The kernel program names the task's executable by the (device, inode) of
//! `task->mm->exe_file->f_inode`: `inode->i_sb->s_dev` and `inode->i_ino`
//! (firewall-ebpf/src/identity.rs). The daemon computes the same pair for the path a rule
//! names ([`exe_id`]) and the two are compared as integers.
//!
//! The structure offsets that walk needs come from the kernel's BTF: `host::btf`.
//!
//! **Why the device number is converted.** `sb->s_dev` is the kernel's internal `dev_t`,
//! `MKDEV(major, minor) = major << 20 | minor`; `st_dev` from stat(2) uses the userspace
//! encoding (`0xfe00` for 254:0 where the kernel has `0x0fe00000`). [`kernel_dev_of`] splits
//! `st_dev` with `major()`/`minor()` and re-encodes it the kernel's way.
//!
//! **Why the device comes from the mount table.** stat(2) reports what the file system's
//! getattr chooses, not `sb->s_dev`: btrfs gives every subvolume an anonymous device of its own,
//! overlayfs reports a layer's device when its layers are on different file systems. So
//! [`exe_id`] takes the superblock's device from `/proc/self/mountinfo` (which prints
//! `sb->s_dev`), for the mount the file is on, and the inode number from stat.
//!
//! # Limits
//!
//! - A script is identified by its interpreter (`/usr/bin/python3`), not by the script: the
//!   kernel's `exe_file` is what was executed. Rules for interpreted programs name the
//!   interpreter, and so match every script it runs.
//! - The identity is the file, not its contents or path: whoever can write to the binary (or
//!   replace it at its path before the daemon resolves the rule) can run their code under its
//!   identity. Only root-owned, non-writable binaries make meaningful program rules.
//! - A replaced binary (package upgrade: new inode) no longer matches until the daemon resolves
//!   the path again; a running process keeps the old inode.
//! - `comm` (the task name) is never used: any process can set it with prctl(PR_SET_NAME).
//! - Kernel threads (no `mm`) and tasks without an executable have no identity.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
pub use firewall_common::identity::ExeId;
use firewall_common::identity::kernel_dev;

/// The kernel's internal `dev_t` (`sb->s_dev`) of a device that stat(2) reports as `st_dev`.
pub fn kernel_dev_of(st_dev: u64) -> u64 {
    kernel_dev(libc::major(st_dev), libc::minor(st_dev))
}

/// The identity the kernel program reports for a process executing `path` (symlinks followed,
/// as execve does).
///
/// The kernel reads `inode->i_sb->s_dev`; stat(2) reports whatever the file system's getattr
/// says, which differs on btrfs (each subvolume reports an anonymous device of its own, the
/// superblock has another) and on overlayfs whose layers are on different file systems (the
/// layer's device). The superblock's device is what `/proc/self/mountinfo` prints for the mount
/// the file is on (`show_mountinfo` prints `sb->s_dev`), found by the file's mount id
/// (`statx(STATX_MNT_ID)`); the inode number is the one stat reports (btrfs and overlayfs
/// report `i_ino`). Measured here: a binary on a btrfs subvolume stats as 0:42, its superblock
/// (and so the kernel program) says 0:40.
pub fn exe_id(path: &Path) -> anyhow::Result<ExeId> {
    exe_id_in(path, Path::new("/proc/self/mountinfo"))
}

/// [`exe_id`] with the mount table of another mount namespace (a process's
/// `/proc/PID/mountinfo`, for its `/proc/PID/exe`).
fn exe_id_in(path: &Path, mountinfo: &Path) -> anyhow::Result<ExeId> {
    let st = statx(path).with_context(|| format!("stat {}", path.display()))?;
    // Deliberately a fallback, not an error: a mount table that cannot be read, or without the
    // file's mount (no mount id before Linux 5.8), leaves the device stat reports, which is
    // the superblock's everywhere but on btrfs subvolumes and split overlayfs.
    let dev = fs::read_to_string(mountinfo)
        .ok()
        .and_then(|text| superblock_dev(&text, st.stx_mnt_id))
        .unwrap_or_else(|| kernel_dev(st.stx_dev_major, st.stx_dev_minor));
    Ok(ExeId {
        dev,
        ino: st.stx_ino,
    })
}

fn statx(path: &Path) -> std::io::Result<libc::statx> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statx is plain old data; the kernel fills it.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            0,
            libc::STATX_INO | libc::STATX_MNT_ID,
            &mut st,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if st.stx_mask & libc::STATX_MNT_ID == 0 {
        st.stx_mnt_id = u64::MAX; // no mount id (before Linux 5.8): the stat device is used
    }
    Ok(st)
}

/// The kernel `dev_t` of the superblock of mount `mnt_id`: the third field of its line in a
/// mountinfo text (`ID PARENT MAJOR:MINOR ...`).
fn superblock_dev(mountinfo: &str, mnt_id: u64) -> Option<u64> {
    mountinfo.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        if f.next()?.parse::<u64>().ok()? != mnt_id {
            return None;
        }
        let (major, minor) = f.nth(1)?.split_once(':')?;
        Some(kernel_dev(major.parse().ok()?, minor.parse().ok()?))
    })
}

/// The identity of the executable process `pid` runs (`/proc/PID/exe`, valid even when the
/// file was deleted or replaced since).
pub fn exe_id_of_pid(pid: u32) -> anyhow::Result<ExeId> {
    exe_id_in(
        &PathBuf::from(format!("/proc/{pid}/exe")),
        &PathBuf::from(format!("/proc/{pid}/mountinfo")),
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn kernel_dev_encoding() {
        // 254:0 (virtio disk): glibc st_dev 0xfe00, kernel MKDEV 0x0fe00000.
        assert_eq!(kernel_dev_of(libc::makedev(254, 0)), 0x0fe0_0000);
        assert_eq!(libc::makedev(254, 0), 0xfe00);
        // 8:17 (sdb1).
        assert_eq!(kernel_dev_of(libc::makedev(8, 17)), (8 << 20) | 17);
        // Minor numbers above 255 are split in the userspace encoding, whole in the kernel's.
        assert_eq!(kernel_dev_of(libc::makedev(0, 300)), 300);
        assert_eq!(
            kernel_dev_of(libc::makedev(259, 70000)),
            (259 << 20) | 70000
        );
        // Anonymous devices (tmpfs, proc): major 0.
        assert_eq!(kernel_dev_of(libc::makedev(0, 28)), 28);
    }

    #[test]
    fn exe_id_of_a_path_matches_proc_self_exe() {
        let me = std::env::current_exe().expect("current exe");
        let by_path = exe_id(&me).expect("stat current exe");
        assert_eq!(
            by_path,
            exe_id_of_pid(std::process::id()).expect("/proc/self/exe")
        );
        let md = fs::metadata(&me).expect("stat");
        assert_eq!(by_path.ino, md.ino());
        assert_eq!(by_path.dev, kernel_dev_of(md.dev()));
        assert!(exe_id(Path::new("/nonexistent/binary")).is_err());
    }
}
