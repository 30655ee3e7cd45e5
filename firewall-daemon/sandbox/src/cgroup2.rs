//! Where the cgroup2 file system is mounted and which cgroup a process is in, from
//! `/proc/self/mountinfo` and `/proc/PID/cgroup`: never a hard-coded `/sys/fs/cgroup`, since
//! the mount may be elsewhere ("hybrid" hosts) or show only a subtree (a cgroup namespace).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_process_cgroup_below_the_mount_and_its_root() {
        let in_ns = "40 30 0:27 /payload /sys/fs/cgroup rw - cgroup2 none rw\n";
        let (mount, root) = cgroup2_in(in_ns).expect("cgroup2");
        assert_eq!(
            (mount.as_path(), root.as_str()),
            (Path::new("/sys/fs/cgroup"), "/payload")
        );
        assert_eq!(
            own_cgroup_in("0::/payload/svc\n", &mount, &root),
            Some(PathBuf::from("/sys/fs/cgroup/svc"))
        );
        assert_eq!(
            own_cgroup_in("1:name=systemd:/x\n0::/\n", Path::new("/m"), "/"),
            Some(PathBuf::from("/m"))
        );
        assert_eq!(own_cgroup_in("1:name=systemd:/x\n", &mount, &root), None);
    }
}
