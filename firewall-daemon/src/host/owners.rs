//! Owners: what the kernel records about the process behind a socket (its executable, uid and
//! cgroup ancestors). [`owner_of_pid`] reconstructs one from `/proc` as the hooks would have
//! recorded it; [`OwnerNames`] names the owners recorded in connection entries
//! ([`ConnOwner`]), for `fwctl conns`.
//!
//! The kernel records an executable as (device, inode), never as a path: a path is what the
//! daemon finds for it when asked. It tries, in order, the programs the rules name (already
//! resolved), `/proc/PID/exe` of the recorded process if that process still runs the same
//! file, and one scan of every process's `/proc/PID/exe`. An executable no running process
//! uses and no rule names is shown by its device and inode.

use std::{collections::HashMap, path::Path};

use firewall_common::{
    ct::ConnOwner,
    identity::{ExeId, Owner},
};

use crate::host::{
    cgroups::ancestors::Hierarchy,
    exe_id::exe_id_of_pid,
    procfs::{self, running_pids},
};

/// The identity of process `pid` as the kernel hooks record it for a task of it: its
/// executable, its real uid (`/proc/PID/status`, what `bpf_get_current_uid_gid` reports) and
/// its cgroup ancestors (with the limits of `host::listeners`).
pub fn owner_of_pid(pid: u32) -> anyhow::Result<Owner> {
    let exe = exe_id_of_pid(pid)?;
    let uid = procfs::real_uid_of_pid(pid)?;
    let ancestors = Hierarchy::find()?.ancestors_of_pid(pid)?;
    Ok(Owner {
        exe,
        uid,
        _pad: 0,
        ancestors,
    })
}

/// One `fwctl conns` request's worth of name lookups: every lookup is cached, and `/proc` is
/// scanned at most once.
pub struct OwnerNames {
    programs: HashMap<ExeId, String>,
    scanned: bool,
    users: HashMap<u32, String>,
}

impl OwnerNames {
    /// `known`: executables whose paths the daemon already has (the rules' programs).
    pub fn new<'a>(known: impl IntoIterator<Item = (&'a Path, ExeId)>) -> Self {
        Self {
            programs: known
                .into_iter()
                .map(|(p, id)| (id, p.display().to_string()))
                .collect(),
            scanned: false,
            users: HashMap::new(),
        }
    }

    /// The owner's program, or `None` when nothing was recorded.
    pub fn program(&mut self, o: &ConnOwner) -> Option<String> {
        if !o.is_known() {
            return None;
        }
        let exe = o.exe;
        if exe == ExeId::default() {
            // The walk found nothing (a kernel without identity offsets): the process may
            // still be there to ask.
            return (o.pid != 0).then(|| procfs::exe_link(o.pid)).flatten();
        }
        if let Some(p) = self.programs.get(&exe) {
            return Some(p.clone());
        }
        if o.pid != 0
            && exe_id_of_pid(o.pid).ok() == Some(exe)
            && let Some(p) = procfs::exe_link(o.pid)
        {
            self.programs.insert(exe, p.clone());
            return Some(p);
        }
        if !self.scanned {
            self.scanned = true;
            self.scan_proc();
            if let Some(p) = self.programs.get(&exe) {
                return Some(p.clone());
            }
        }
        Some(unnamed(exe))
    }

    /// A user name for `uid`, or the number when the system has no name for it.
    pub fn user(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(
                || match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
                    Ok(Some(u)) => u.name,
                    _ => uid.to_string(),
                },
            )
            .clone()
    }

    fn scan_proc(&mut self) {
        let pids = match running_pids() {
            Ok(pids) => pids,
            Err(e) => {
                log::warn!("listing /proc to name executables: {e}");
                return;
            }
        };
        for pid in pids {
            if let Ok(id) = exe_id_of_pid(pid)
                && !self.programs.contains_key(&id)
                && let Some(p) = procfs::exe_link(pid)
            {
                self.programs.insert(id, p);
            }
        }
    }
}

/// An executable with no known path: the kernel's device number (major:minor) and the inode.
fn unnamed(exe: ExeId) -> String {
    format!(
        "(device {}:{}, inode {})",
        exe.dev >> 20,
        exe.dev & 0xf_ffff,
        exe.ino
    )
}

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf};

    use super::*;

    fn me() -> ConnOwner {
        ConnOwner {
            exe: exe_id_of_pid(std::process::id()).expect("own exe"),
            uid: nix::unistd::getuid().as_raw(),
            pid: std::process::id(),
        }
    }

    #[test]
    fn nothing_recorded_is_no_program() {
        assert_eq!(OwnerNames::new([]).program(&ConnOwner::default()), None);
    }

    #[test]
    fn a_running_process_is_named_by_its_exe_link() {
        let want = std::env::current_exe()
            .expect("current exe")
            .display()
            .to_string();
        let mut names = OwnerNames::new([]);
        assert_eq!(names.program(&me()), Some(want.clone()));
        // Without the pid, the /proc scan finds the same process.
        let mut names = OwnerNames::new([]);
        let no_pid = ConnOwner { pid: 0, ..me() };
        assert_eq!(names.program(&no_pid), Some(want));
    }

    #[test]
    fn rule_paths_come_first() {
        let path = PathBuf::from("/usr/local/bin/named-by-a-rule");
        let mut names = OwnerNames::new([(path.as_path(), me().exe)]);
        assert_eq!(names.program(&me()), Some(path.display().to_string()));
    }

    #[test]
    fn an_unknown_executable_is_shown_by_device_and_inode() {
        let o = ConnOwner {
            exe: ExeId {
                dev: (254 << 20) | 1,
                ino: u64::MAX - 7,
            },
            uid: 0,
            pid: 0,
        };
        assert_eq!(
            OwnerNames::new([]).program(&o),
            Some(format!("(device 254:1, inode {})", u64::MAX - 7))
        );
    }

    #[test]
    fn users_are_named() {
        let mut names = OwnerNames::new([]);
        // The matrix guests have no /etc/passwd: there, uid 0 has no name either.
        let root_named = fs::read_to_string("/etc/passwd").is_ok_and(|p| p.starts_with("root:"));
        assert_eq!(names.user(0), if root_named { "root" } else { "0" });
        assert_eq!(names.user(4_000_000_000), "4000000000");
    }
}
