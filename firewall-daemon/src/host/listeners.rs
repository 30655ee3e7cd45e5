//! The sockets that were bound before the daemon started: who owns each bound port.
//!
//! The kernel records the owner of every port bound while the firewall's cgroup hooks are
//! attached (the `post_bind` hooks fill `LISTENERS`). Ports bound *before* that — the SSH server,
//! the resolver, whatever the host ran before the daemon started — are seeded from userspace by
//! [`bound_sockets`], which reconstructs the [`Owner`] the hook would have recorded:
//!
//! * the sockets are the listening TCP sockets and the bound, unconnected UDP sockets that
//!   NETLINK_SOCK_DIAG lists ([`sock_diag::bound_inet_sockets`]), in the network namespace of
//!   the calling thread, keyed by the address and port they are bound to; the key's family is
//!   the socket's own (6 for an AF_INET6 socket, even a dual-stack one);
//! * the socket's process is found by scanning `/proc/[pid]/fd/*` for the link
//!   `socket:[INODE]` (what `ss -p` does); a socket several processes hold (inherited across
//!   fork, passed by socket activation) is attributed to the lowest pid, which is usually the
//!   one that bound it (the parent, systemd);
//! * `exe` is that process's executable ([`exe_id_of_pid`]), `uid` the socket's own
//!   uid as inet_diag reports it (the creator's fsuid at `socket()` time: for a daemon that
//!   binds as root and then drops privileges, root, as at bind time), and `ancestors` the
//!   cgroup ids (inode numbers of the cgroup2 directories) of the process's cgroup and its
//!   ancestors, from `/proc/PID/cgroup`.
//!
//! Limits:
//! * The result is a snapshot of the moment it is taken: the owner is the process's *current*
//!   executable and cgroup, not those at bind time (a process that exec'd or moved since is
//!   seen as it is now).
//! * Sockets held by no file descriptor in `/proc/[pid]/fd` are not attributed and left out
//!   (counted in [`BoundReport::unowned`]): kernel sockets, sockets only in flight in an
//!   `SCM_RIGHTS` message, sockets of processes whose `/proc` entry cannot be read (no
//!   privilege, another PID namespace), and sockets held only by a thread with a file table of
//!   its own (`clone` without `CLONE_FILES`, listed under `/proc/PID/task/TID/fd`).
//! * A UDP socket that was never bound explicitly but got a port from `sendto` (autobind) is
//!   listed too; the `post_bind` hook would not have seen it. Userspace cannot tell the two
//!   apart.
//! * Several sockets may share one [`ListenerKey`] (`SO_REUSEPORT`, which Linux allows only
//!   among sockets of one uid); all are returned. The kernel keeps the last one bound, which
//!   userspace cannot tell.
//! * cgroup paths: `/proc/PID/cgroup` names the cgroup relative to the *reader's* cgroup
//!   namespace root, while the kernel numbers levels from the root of the whole hierarchy. The
//!   paths are taken as absolute, which is right when the daemon runs in the initial cgroup
//!   namespace (a host daemon), also when the cgroup2 mount shows only a subtree (its
//!   mountinfo root is stripped to find the directories). In a nested cgroup namespace the
//!   levels would be off by the depth of the namespace root; a path leading outside the
//!   namespace (`/../..`) yields no ancestors (all zero).
use std::collections::{HashMap, HashSet};

use firewall_common::identity::{ExeId, ListenerKey, MAX_UNIT_LEVEL, Owner};

use crate::host::{
    cgroups::ancestors::Hierarchy,
    exe_id::exe_id_of_pid,
    procfs::socket_holders,
    sock_diag::{self, SockProto},
};

/// One bound socket whose owning process was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundSocket {
    pub key: ListenerKey,
    pub owner: Owner,
    /// The socket cookie (`bpf_get_socket_cookie`), for the `LISTENERS` value.
    pub cookie: u64,
    /// The process it was attributed to (the lowest pid holding it).
    pub pid: u32,
}

/// What [`bound_sockets_report`] found.
#[derive(Debug, Clone, Default)]
pub struct BoundReport {
    /// The bound sockets with an owner, sorted by key, then cookie.
    pub sockets: Vec<BoundSocket>,
    /// Bound sockets left out because no process holding them was found (or it exited while
    /// being looked at).
    pub unowned: usize,
}

/// Every bound TCP listening socket and every bound UDP socket of the calling thread's network
/// namespace, with the owning process's identity, as the post_bind hook would have recorded it.
///
/// Sockets whose owner is not found are left out; [`bound_sockets_report`] counts them and
/// gives each socket's cookie and process too.
pub fn bound_sockets() -> anyhow::Result<Vec<(ListenerKey, Owner)>> {
    Ok(bound_sockets_report()?
        .sockets
        .into_iter()
        .map(|s| (s.key, s.owner))
        .collect())
}

/// [`bound_sockets`], with each socket's cookie and process, and the number of sockets left out
/// for want of an owner.
pub fn bound_sockets_report() -> anyhow::Result<BoundReport> {
    let bound = sock_diag::bound_inet_sockets()?;
    let wanted: HashSet<u32> = bound.iter().map(|s| s.inode).filter(|&i| i != 0).collect();
    let holders = socket_holders(&wanted)?;
    let hierarchy = Hierarchy::find()?;
    // Owner parts (exe, ancestors) per pid; `None` when the process vanished meanwhile.
    let mut parts: HashMap<u32, Option<(ExeId, [u64; MAX_UNIT_LEVEL])>> = HashMap::new();
    let mut report = BoundReport::default();
    for socket in bound {
        let Some(&pid) = holders.get(&socket.inode) else {
            log::debug!(
                "no process holds the bound socket {} {:?} (inode {})",
                socket.local,
                socket.proto,
                socket.inode
            );
            report.unowned += 1;
            continue;
        };
        let found = parts.entry(pid).or_insert_with(|| {
            match (exe_id_of_pid(pid), hierarchy.ancestors_of_pid(pid)) {
                (Ok(exe), Ok(ancestors)) => Some((exe, ancestors)),
                (Err(e), _) | (_, Err(e)) => {
                    log::debug!("process {pid} holding a bound socket: {e:#}");
                    None
                }
            }
        });
        let Some((exe, ancestors)) = *found else {
            report.unowned += 1;
            continue;
        };
        report.sockets.push(BoundSocket {
            key: ListenerKey::bound(
                if socket.ipv6 { 6 } else { 4 },
                socket.local.ip(),
                match socket.proto {
                    SockProto::Tcp => libc::IPPROTO_TCP as u8,
                    SockProto::Udp => libc::IPPROTO_UDP as u8,
                },
                socket.local.port(),
            ),
            owner: Owner {
                exe,
                uid: socket.uid,
                _pad: 0,
                ancestors,
            },
            cookie: socket.cookie,
            pid,
        });
    }
    report.sockets.sort_by_key(|s| (s.key, s.cookie));
    Ok(report)
}

/// The socket among `bound` that a new connection to `local`:`port` is judged by: the one the
/// kernel would hand it to, as the XDP program picks it ([`ListenerKey::receivers`]).
pub fn receiver<T>(
    bound: &HashMap<ListenerKey, T>,
    local: std::net::IpAddr,
    proto: u8,
    port: u16,
) -> Option<&T> {
    let (keys, n) = ListenerKey::receivers(local, proto, port);
    keys[..n].iter().find_map(|k| bound.get(k))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket};

    use std::{fs, os::unix::fs::MetadataExt as _, path::Path, path::PathBuf};

    use super::*;
    use crate::host::owners::owner_of_pid;

    fn key(addr: std::net::SocketAddr, proto: i32, family: u8) -> ListenerKey {
        ListenerKey::bound(family, addr.ip(), proto as u8, addr.port())
    }

    #[test]
    fn the_exact_address_is_preferred_and_other_addresses_never_stand_in() {
        let tcp = libc::IPPROTO_TCP as u8;
        let at = |a: &str| -> std::net::SocketAddr { a.parse().expect("addr") };
        let mut bound = HashMap::new();
        // The real server on the wildcard, and a user's socket on loopback.
        bound.insert(key(at("0.0.0.0:8080"), libc::IPPROTO_TCP, 4), "server");
        bound.insert(key(at("127.0.0.1:8080"), libc::IPPROTO_TCP, 4), "loopback");
        let local = |a: &str| a.parse().expect("addr");
        assert_eq!(
            receiver(&bound, local("10.0.0.1"), tcp, 8080),
            Some(&"server")
        );
        assert_eq!(
            receiver(&bound, local("127.0.0.1"), tcp, 8080),
            Some(&"loopback")
        );
        assert_eq!(receiver(&bound, local("2001:db8::1"), tcp, 8080), None);
        assert_eq!(receiver(&bound, local("10.0.0.1"), tcp, 8081), None);
        assert_eq!(receiver(&bound, local("10.0.0.1"), 17, 8080), None);
        // A dual-stack socket: after the IPv4 ones, for both families.
        bound.insert(key(at("[::]:8080"), libc::IPPROTO_TCP, 6), "dual");
        assert_eq!(
            receiver(&bound, local("10.0.0.1"), tcp, 8080),
            Some(&"server")
        );
        assert_eq!(
            receiver(&bound, local("2001:db8::1"), tcp, 8080),
            Some(&"dual")
        );
        bound.remove(&key(at("0.0.0.0:8080"), libc::IPPROTO_TCP, 4));
        assert_eq!(
            receiver(&bound, local("10.0.0.1"), tcp, 8080),
            Some(&"dual")
        );
        // The exact address wins over the wildcard, in either family.
        bound.insert(
            key(at("[::ffff:10.0.0.1]:8080"), libc::IPPROTO_TCP, 6),
            "mapped",
        );
        assert_eq!(
            receiver(&bound, local("10.0.0.1"), tcp, 8080),
            Some(&"mapped")
        );
        bound.insert(key(at("10.0.0.1:8080"), libc::IPPROTO_TCP, 4), "exact");
        assert_eq!(
            receiver(&bound, local("10.0.0.1"), tcp, 8080),
            Some(&"exact")
        );
        bound.insert(
            key(at("[2001:db8::1]:8080"), libc::IPPROTO_TCP, 6),
            "exact6",
        );
        assert_eq!(
            receiver(&bound, local("2001:db8::1"), tcp, 8080),
            Some(&"exact6")
        );
    }

    #[test]
    fn lists_own_tcp_and_udp_sockets() {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind TCP 127.0.0.1");
        let tcp_key = key(tcp.local_addr().expect("addr"), libc::IPPROTO_TCP, 4);
        let udp = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind UDP ::1");
        let udp_key = key(udp.local_addr().expect("addr"), libc::IPPROTO_UDP, 6);
        // Neither a connected UDP socket nor a TCP connection is a bound socket.
        let connected = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind UDP");
        connected
            .connect((Ipv4Addr::LOCALHOST, tcp.local_addr().expect("addr").port()))
            .expect("connect UDP");
        let connected_key = key(connected.local_addr().expect("addr"), libc::IPPROTO_UDP, 4);
        let client = TcpStream::connect(tcp.local_addr().expect("addr")).expect("connect");
        let client_key = key(client.local_addr().expect("addr"), libc::IPPROTO_TCP, 4);

        let me = owner_of_pid(std::process::id()).expect("owner_of_pid");
        let exe = exe_id_of_pid(std::process::id()).expect("exe_id_of_pid");
        assert_eq!(me.exe, exe);
        let uid = nix::unistd::getuid().as_raw();
        assert_eq!(me.uid, uid);

        let bound = bound_sockets().expect("bound_sockets");
        for wanted in [tcp_key, udp_key] {
            let owner = bound
                .iter()
                .find(|(k, o)| *k == wanted && o.exe == exe)
                .map(|(_, o)| *o)
                .unwrap_or_else(|| panic!("{wanted:?} missing from {bound:#?}"));
            assert_eq!(owner.uid, uid);
            assert_eq!(owner, me, "the owner of {wanted:?}");
        }
        for unwanted in [connected_key, client_key] {
            assert!(
                !bound.iter().any(|(k, o)| *k == unwanted && o.exe == exe),
                "{unwanted:?} is not a bound socket: {bound:#?}"
            );
        }
    }

    /// The cookie and process of the report are the socket's `SO_COOKIE` and this process.
    #[test]
    fn report_gives_cookie_and_pid() {
        use std::os::fd::AsRawFd as _;
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind UDP");
        let udp_key = key(udp.local_addr().expect("addr"), libc::IPPROTO_UDP, 4);
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: `cookie` and `len` are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                udp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&raw mut cookie).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0, "SO_COOKIE: {}", std::io::Error::last_os_error());
        let report = bound_sockets_report().expect("bound_sockets_report");
        let found = report
            .sockets
            .iter()
            .find(|s| s.cookie == cookie)
            .unwrap_or_else(|| panic!("cookie {cookie:#x} missing from {report:#?}"));
        assert_eq!(found.key, udp_key);
        assert_eq!(found.pid, std::process::id());
    }

    /// The inodes of the cgroup2 directory `cgroup` and of those above it, by level.
    fn directories_by_level(mount: &Path, cgroup: &Path) -> [u64; MAX_UNIT_LEVEL] {
        let depth = cgroup
            .strip_prefix(mount)
            .expect("cgroup under the mount")
            .components()
            .count();
        let mut dir = cgroup.to_path_buf();
        let mut expected = [0; MAX_UNIT_LEVEL];
        for level in (1..=depth).rev() {
            if level <= MAX_UNIT_LEVEL {
                expected[level - 1] = fs::metadata(&dir).expect("stat").ino();
            }
            dir.pop();
        }
        expected
    }

    /// The ancestors of this process are the inodes of its cgroup2 directory and those above.
    #[test]
    fn own_ancestors_are_own_cgroup_directories() {
        let (mount, own) = firewall_sandbox::cgroup2::own_cgroup().expect("own cgroup");
        let ancestors = owner_of_pid(std::process::id())
            .expect("owner_of_pid")
            .ancestors;
        assert_eq!(
            ancestors,
            directories_by_level(&mount, &own),
            "cgroup {}",
            own.display()
        );
    }

    /// A child process and the cgroup it was moved to, both gone when dropped.
    struct Child {
        process: std::process::Child,
        cgroup: PathBuf,
    }

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.process.kill();
            let _ = self.process.wait();
            for _ in 0..50 {
                if fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    /// A socket held only by another process, in a cgroup two levels below this one's, is
    /// attributed to that process, its executable and its cgroup.
    #[test]
    fn socket_of_another_process_in_a_nested_cgroup() {
        let scratch = firewall_sandbox::scratch::ScratchCgroup::create("listeners-test")
            .expect("scratch cgroup");
        let inner = scratch.path().join("inner");
        fs::create_dir(&inner).expect("creating the inner cgroup");
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind UDP");
        let udp_key = key(udp.local_addr().expect("addr"), libc::IPPROTO_UDP, 4);
        // The socket becomes the child's stdin; this process's descriptor is closed when the
        // `Command` is dropped.
        // bash (which the kernel matrix's guests carry too; coreutils they do not) blocks
        // reading its stdin, the socket, until it is killed.
        let bash = ["/bin/bash", "/usr/bin/bash"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("bash");
        let process = std::process::Command::new(bash)
            .args(["-c", "read -r line"])
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(udp)))
            .spawn()
            .expect("spawning bash");
        let child = Child {
            process,
            cgroup: inner.clone(),
        };
        let pid = child.process.id();
        fs::write(inner.join("cgroup.procs"), pid.to_string()).expect("moving the child");

        let report = bound_sockets_report().expect("bound_sockets_report");
        let found = report
            .sockets
            .iter()
            .find(|s| s.key == udp_key)
            .unwrap_or_else(|| panic!("{udp_key:?} missing from {report:#?}"));
        assert_eq!(found.pid, pid);
        let exe = exe_id_of_pid(pid).expect("exe_id_of_pid");
        assert_ne!(exe, exe_id_of_pid(std::process::id()).expect("own exe"));
        assert_eq!(found.owner.exe, exe);
        assert_eq!(found.owner.uid, nix::unistd::getuid().as_raw());
        let (mount, _) = firewall_sandbox::cgroup2::own_cgroup().expect("own cgroup");
        let expected = directories_by_level(&mount, &inner);
        assert!(expected.iter().filter(|&&i| i != 0).count() >= 2);
        assert_eq!(found.owner.ancestors, expected);
        assert_eq!(owner_of_pid(pid).expect("owner_of_pid"), found.owner);
        drop(child);
    }
}
