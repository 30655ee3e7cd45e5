//! Which cgroup a pinned cgroup link is attached to, so a restarted daemon adopts only the
//! attachments to the cgroup it is told to use. aya's link info does not expose the cgroup, so
//! the link is asked with `BPF_OBJ_GET_INFO_BY_FD` directly.

use std::{os::fd::AsRawFd as _, path::Path};

use anyhow::{Context as _, bail};

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
