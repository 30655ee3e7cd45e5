//! cgroup v2, as the outbound hooks need it: where the cgroup2 file system is mounted (the
//! default attach point), checking `[daemon] cgroup`, and which cgroup a pinned link is
//! attached to (so a restarted daemon adopts only the attachments to the cgroup it is told to
//! use).

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};

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

/// What a pinned cgroup link is attached to, from `BPF_OBJ_GET_INFO_BY_FD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkTarget {
    pub prog_id: u32,
    pub cgroup_id: u64,
    pub attach_type: u32,
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_CGROUP: u32 = 3;

/// The cgroup and program of the cgroup link pinned at `pin` (aya's link info does not expose
/// the cgroup).
pub fn link_target(pin: &Path) -> anyhow::Result<LinkTarget> {
    let info = pinned_link_info(pin)?;
    let link_type = info[0] as u32;
    if link_type != BPF_LINK_TYPE_CGROUP {
        bail!(
            "{} is not a cgroup link (link type {link_type})",
            pin.display()
        );
    }
    Ok(LinkTarget {
        prog_id: info[1] as u32,
        cgroup_id: info[2],
        attach_type: info[3] as u32,
    })
}

/// The `struct bpf_link_info` of the link pinned at `pin`, as words: type and id, then
/// prog_id, then (8-aligned) the member of the link's type.
pub(crate) fn pinned_link_info(pin: &Path) -> anyhow::Result<[u64; 8]> {
    use std::os::unix::ffi::OsStrExt as _;
    let cpath = std::ffi::CString::new(pin.as_os_str().as_bytes())
        .with_context(|| format!("pin path {}", pin.display()))?;
    // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags, path_fd.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let attr = ObjGet {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: a valid bpf_attr of the size passed; the kernel only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            std::mem::size_of::<ObjGet>() as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("opening the pinned link {}", pin.display()));
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let mut info = [0u64; 8];
    #[repr(C)]
    struct GetInfo {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = GetInfo {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `info` is writable for `info_len` bytes and outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const GetInfo,
            std::mem::size_of::<GetInfo>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading the link pinned at {}", pin.display()));
    }
    Ok(info)
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
