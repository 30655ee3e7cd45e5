//! What the daemon reads from `/proc` about other processes: which run, which hold a socket,
//! their real uid and their cgroup.
//!
//! Why it is read at all: the kernel records a socket's owner when a hook sees the socket
//! bound or connected; for what happened before the hooks were attached, and for naming the
//! owners `fwctl conns` shows, `/proc` is the only source. Everything here is a snapshot:
//! processes come and go while it is read, so one that vanishes or cannot be read is skipped
//! (the callers count or say what was left out), never an error of the whole scan.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    fs,
    os::unix::ffi::OsStrExt as _,
};

use anyhow::{Context as _, bail};

/// The pids of the processes running now (the numeric entries of `/proc`).
pub fn running_pids() -> std::io::Result<impl Iterator<Item = u32>> {
    Ok(fs::read_dir("/proc")?.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()))
}

/// The path `/proc/PID/exe` links to (with " (deleted)" when the file was removed or replaced
/// since the process started); `None` when the process is gone or its link cannot be read.
pub fn exe_link(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string())
}

/// The real uid of process `pid` (`/proc/PID/status`), what `bpf_get_current_uid_gid` reports
/// for its tasks.
pub fn real_uid_of_pid(pid: u32) -> anyhow::Result<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    real_uid(&status).with_context(|| format!("no Uid line in /proc/{pid}/status"))
}

/// The real uid of a `/proc/PID/status` text (`Uid:\treal\teffective\tsaved\tfs`).
fn real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The cgroup2 path of process `pid` (the `0::` line of `/proc/PID/cgroup`), relative to the
/// reader's cgroup namespace root.
pub fn cgroup_of_pid(pid: u32) -> anyhow::Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
    let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
        bail!("no cgroup2 entry in /proc/{pid}/cgroup");
    };
    Ok(path.to_owned())
}

/// The systemd unit of a cgroup path (`/system.slice/nginx.service/x` -> `nginx.service`):
/// its deepest component named like a unit.
pub fn unit_of_cgroup(cgroup: &str) -> Option<String> {
    const SUFFIXES: [&str; 3] = [".service", ".scope", ".slice"];
    cgroup
        .split('/')
        .rev()
        .find(|c| SUFFIXES.iter().any(|s| c.ends_with(s)))
        .map(str::to_owned)
}

/// The systemd unit process `pid` runs in, if it runs in one (and still runs).
pub fn unit_of_pid(pid: u32) -> Option<String> {
    cgroup_of_pid(pid).ok().and_then(|c| unit_of_cgroup(&c))
}

/// For each socket inode of `wanted`, the lowest pid that has it open, from `/proc/[pid]/fd`.
/// Processes and descriptors that vanish or cannot be read are skipped.
pub fn socket_holders(wanted: &HashSet<u32>) -> anyhow::Result<HashMap<u32, u32>> {
    let mut holders = HashMap::with_capacity(wanted.len());
    if wanted.is_empty() {
        return Ok(holders);
    }
    for pid in running_pids().context("listing /proc")? {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = socket_inode(target.as_os_str()) else {
                continue;
            };
            if wanted.contains(&inode) {
                holders
                    .entry(inode)
                    .and_modify(|p: &mut u32| *p = (*p).min(pid))
                    .or_insert(pid);
            }
        }
    }
    Ok(holders)
}

/// The inode of a `/proc/PID/fd/N` link target `socket:[INODE]`.
fn socket_inode(target: &OsStr) -> Option<u32> {
    let digits = target
        .as_bytes()
        .strip_prefix(b"socket:[")?
        .strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unit_is_the_deepest_unit_named_cgroup() {
        use super::unit_of_cgroup;
        assert_eq!(
            unit_of_cgroup("/system.slice/nginx.service").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            unit_of_cgroup("/user.slice/user-1000.slice/session-2.scope").as_deref(),
            Some("session-2.scope")
        );
        assert_eq!(
            unit_of_cgroup("/system.slice/x.service/worker").as_deref(),
            Some("x.service")
        );
        assert_eq!(unit_of_cgroup("/"), None);
    }

    use super::*;

    #[test]
    fn parses_proc_links_and_status() {
        assert_eq!(socket_inode(OsStr::new("socket:[12345]")), Some(12345));
        assert_eq!(socket_inode(OsStr::new("pipe:[12345]")), None);
        assert_eq!(socket_inode(OsStr::new("/dev/null")), None);
        assert_eq!(socket_inode(OsStr::new("socket:[]")), None);
        let status = "Name:\tsshd\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(real_uid(status), Some(1000));
        assert_eq!(real_uid("Name:\tx\n"), None);
    }
}
