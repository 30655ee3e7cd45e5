//! The daemon and fwctl against what a host, a local user or a previous daemon leaves behind:
//! no bpf filesystem, severed pinned links, hostile set files, idle control clients, forged
//! names, a file at the control socket's path, a closed output pipe. Each test performs the
//! problem for real (in namespaces the test creates) and checks the daemon copes with it.

mod support;

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use support::{cgroup::TestCgroup, daemon::Daemon, netns::Pair};

/// Every port but 8080 is stealthed, so a connect to a port without a listener times out when
/// the firewall protects the interface and is refused at once when it does not.
const STEALTH_ALL: &str = support::rules::WEB_ONLY;

const STEALTH_WAIT: Duration = Duration::from_millis(1500);

/// True when a TCP connect from the client to `port` on the server times out (the firewall
/// drops it); false when the server's stack answers (refused or accepted).
fn filtered(pair: &Pair, port: u16) -> bool {
    let sa = SocketAddr::new(pair.server_v4.parse().expect("address"), port);
    pair.client.run(move || {
        match TcpStream::connect_timeout(&sa, STEALTH_WAIT * support::slowdown()) {
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ),
        }
    })
}

/// Lines of /proc/PID/mountinfo whose mount point is /sys/fs/bpf.
fn bpf_root_mounts(pid: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .expect("reading mountinfo")
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some("/sys/fs/bpf"))
        .map(str::to_string)
        .collect()
}

/// A daemon process started by a test outside [`Daemon`]; killed (by PID) when dropped.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Issue 14: with nothing mounted at /sys/fs/bpf the daemon failed with "creating pin
/// directory /sys/fs/bpf/...: No such file or directory". It now mounts a bpf filesystem there
/// itself. The daemon runs in a mount namespace of its own (private propagation, with any
/// /sys/fs/bpf mount of the host removed from it), so the host's mounts never change.
#[test]
fn mounts_a_bpf_filesystem_at_sys_fs_bpf_when_none_is() {
    let host_before = bpf_root_mounts("self");
    let pair = Pair::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("rules.toml");
    let rules = format!("{STEALTH_ALL}\n[daemon]\non_stop = \"detach\"\n");
    std::fs::write(&config, rules).expect("writing rules");
    let cgroup = TestCgroup::new("bpffs");
    support::daemon::assert_daemon_cgroup(cgroup.path());
    let pin_dir = format!("/sys/fs/bpf/fw-test-{}", std::process::id());
    let ns = std::fs::File::open(pair.server.path()).expect("opening the namespace");
    let ns_fd = std::os::fd::AsRawFd::as_raw_fd(&ns);
    let mut cmd = Command::new(support::daemon::DAEMON);
    cmd.arg("--config")
        .arg(&config)
        .args(["--interface", &pair.server_if, "--xdp-mode", "generic"])
        .args(["--pin-dir", &pin_dir])
        .arg("--control-socket")
        .arg(dir.path().join("control.sock"))
        .arg("--cgroup")
        .arg(cgroup.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe system calls, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 || libc::unshare(libc::CLONE_NEWNS) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // Nothing done in this namespace propagates back to the host's.
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // A host that has a bpf filesystem there: remove it from this namespace only.
            while libc::umount2(c"/sys/fs/bpf".as_ptr(), libc::MNT_DETACH) == 0 {}
            Ok(())
        });
    }
    let mut child = Spawned(cmd.spawn().expect("starting firewall-daemon"));
    drop(ns);
    let (tx, rx) = mpsc::channel();
    let out = child.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("firewall-daemon: ready") {
                let _ = tx.send(line);
            }
        }
    });
    let err = child.0.stderr.take().expect("stderr");
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
        }
        let _ = etx.send(all);
    });
    let ready = rx.recv_timeout(Duration::from_secs(20) * support::slowdown());
    let pid = child.0.id().to_string();
    // A daemon that exited has no mount table to read.
    let daemon_mounts = if ready.is_ok() {
        bpf_root_mounts(&pid)
    } else {
        Vec::new()
    };
    let protected = ready.is_ok() && filtered(&pair, 8082);
    drop(child);
    let stderr = erx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_default();
    assert!(ready.is_ok(), "the daemon did not become ready:\n{stderr}");
    assert!(
        stderr.contains("mounted a bpf filesystem at /sys/fs/bpf"),
        "the mount is logged:\n{stderr}"
    );
    assert!(
        daemon_mounts.iter().any(|l| l.contains(" - bpf ")),
        "a bpf filesystem is mounted at /sys/fs/bpf in the daemon's namespace: {daemon_mounts:?}"
    );
    assert!(protected, "the interface is protected:\n{stderr}");
    assert_eq!(
        bpf_root_mounts("self"),
        host_before,
        "the host's mounts are unchanged"
    );
}

/// Issue 14, item 10: stop the daemon with on_stop = "keep", delete the interface and create
/// it again under the same name. The pinned links are severed (the kernel answers
/// "Link has been severed" to an update); the next daemon exited on them and left the new
/// interface unprotected. It now replaces them with fresh attachments.
#[test]
fn a_severed_pinned_link_is_replaced_by_a_fresh_attachment() {
    let pair = Pair::new();
    let mut d = Daemon::start(&pair.server, &pair.server_if, "generic", STEALTH_ALL);
    assert!(filtered(&pair, 8082), "protected before the restart");
    let status = d.terminate();
    assert!(status.success(), "daemon exit: {status}");

    recreate_veth(&pair);
    assert!(
        !filtered(&pair, 8082),
        "the new interface starts unprotected (the old links went with the old one)"
    );

    d.restart();
    let stderr = d.stderr();
    assert!(
        stderr.contains("no longer exists"),
        "the severed links are named in the log:\n{stderr}"
    );
    let status = d.fwctl_json(&["status"]);
    let iface = &status["interfaces"][0];
    assert_eq!(iface["name"], pair.server_if.as_str(), "{status}");
    assert_eq!(iface["state"], "ok", "{status}");
    assert!(filtered(&pair, 8082), "the new interface is protected");
}

/// Recreates the server's veth (same names, same addresses), as a VPN client or a container
/// runtime does with its interface.
fn recreate_veth(pair: &Pair) {
    pair.server.exec(&["ip", "link", "del", &pair.server_if]);
    let out = Command::new("ip")
        .args(["link", "add", &pair.client_if, "netns", &pair.client.name])
        .args(["type", "veth", "peer", "name", &pair.server_if])
        .args(["netns", &pair.server.name])
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "recreating the veth pair: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (ns, ifname, v4) in [
        (&pair.client, &pair.client_if, pair.client_v4),
        (&pair.server, &pair.server_if, pair.server_v4),
    ] {
        ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", ifname]);
        ns.exec(&["ip", "link", "set", ifname, "up"]);
    }
}

/// Waits until `d`'s log contains `needle` `times` times; returns how long that took.
fn wait_log(d: &Daemon, needle: &str, times: usize, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if d.stderr().matches(needle).count() >= times {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Issue 14, item 11: the control socket was served on the daemon's only thread, so a client
/// that connected and sent nothing held everything for the 5-second request timeout (an
/// interface attach was measured delayed from 25 ms to 7.5 s). Connections are now served by
/// tasks of their own.
#[test]
fn an_idle_control_client_delays_neither_attaches_nor_other_clients() {
    let pair = Pair::new();
    let d = Daemon::start(&pair.server, &pair.server_if, "generic", STEALTH_ALL);
    let limit = Duration::from_secs(2) * support::slowdown();

    let _idle = std::os::unix::net::UnixStream::connect(d.socket()).expect("connecting");
    let t = Instant::now();
    let out = d.fwctl(&["status"]);
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < limit,
        "fwctl status took {took:?} behind an idle client"
    );

    // Another idle client, then the interface goes away and comes back: the daemon attaches
    // to the new one as soon as the kernel says it exists.
    let _idle2 = std::os::unix::net::UnixStream::connect(d.socket()).expect("connecting");
    recreate_veth(&pair);
    let took = wait_log(&d, "appeared; protecting it", 1, Duration::from_secs(15));
    let took = took.unwrap_or_else(|| panic!("never re-attached:\n{}", d.stderr()));
    assert!(
        took < limit,
        "the attach waited {took:?} behind idle control clients"
    );
    assert!(filtered(&pair, 8082), "the new interface is protected");
}

/// Issue 14, item 11: the daemon deleted whatever file sat at `control_socket`. Only a stale
/// socket (nobody listening) is replaced; anything else stops the start, before anything is
/// attached, and is left as it was.
#[test]
fn a_file_at_the_control_socket_path_is_not_deleted() {
    let pair = Pair::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("rules.toml");
    std::fs::write(&config, STEALTH_ALL).expect("writing rules");
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "do not delete\n").expect("writing");
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&precious, &link).expect("symlink");
    let bpffs = support::bpffs::BpfFs::new();
    let cgroup = TestCgroup::new("socketpath");
    support::daemon::assert_daemon_cgroup(cgroup.path());
    for path in [&precious, &link] {
        let mut child = Spawned(
            pair.server
                .command(support::daemon::DAEMON)
                .arg("--config")
                .arg(&config)
                .args(["--interface", &pair.server_if, "--xdp-mode", "generic"])
                .arg("--pin-dir")
                .arg(bpffs.pin_dir("firewall"))
                .arg("--control-socket")
                .arg(path)
                .arg("--cgroup")
                .arg(cgroup.path())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("running the daemon"),
        );
        let deadline = Instant::now() + Duration::from_secs(10) * support::slowdown();
        let status = loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if status.is_some()
            && let Some(mut pipe) = child.0.stderr.take()
        {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut err);
        }
        drop(child);
        let status = status.unwrap_or_else(|| {
            panic!(
                "the daemon started with {} at its control socket path",
                path.display()
            )
        });
        assert!(!status.success(), "{}: {err}", path.display());
        assert!(
            err.contains("exists and is not a socket"),
            "{}: {err}",
            path.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(&precious).expect("the file is still there"),
        "do not delete\n"
    );
    assert!(
        std::fs::symlink_metadata(&link).is_ok(),
        "the link is still there"
    );
    let shown = pair.server.exec(&["ip", "link", "show", &pair.server_if]);
    assert!(!shown.contains("xdp"), "nothing was attached: {shown}");
}

/// Issue 14, item 11: `fwctl status | head -1` panicked ("failed printing to stdout: Broken
/// pipe"). Here the reader is gone before fwctl writes, which is what `head` does once it has
/// its line, made certain rather than left to timing.
#[test]
fn fwctl_into_a_closed_pipe_exits_quietly() {
    let pair = Pair::new();
    let d = Daemon::start(&pair.server, &pair.server_if, "generic", STEALTH_ALL);
    for args in [
        &["status"][..],
        &["list"],
        &["conns"],
        &["status", "--json"],
    ] {
        let (reader, writer) = nix::unistd::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(support::daemon::FWCTL)
            .env("SSH_CONNECTION", "")
            .arg("--socket")
            .arg(d.socket())
            .args(args)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .expect("running fwctl");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "fwctl {args:?}: {err}");
        assert!(err.is_empty(), "fwctl {args:?} is quiet: {err}");
        assert!(out.status.success(), "fwctl {args:?}: {}", out.status);
    }
    // What `head -1` does: read one line, then close the pipe while fwctl may still write.
    let mut child = Command::new(support::daemon::FWCTL)
        .env("SSH_CONNECTION", "")
        .arg("--socket")
        .arg(d.socket())
        .arg("status")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running fwctl");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("reading fwctl's first line");
    let out = child.wait_with_output().expect("waiting for fwctl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(first.starts_with("firewall-daemon "), "{first}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{}", out.status);
}

/// Issue 14, item 11: start-up seeding put half-open SYN_RECV sockets (a spoofed SYN the host
/// answered makes one) into the confirmed table, which nothing evicts. Seeding now puts each
/// socket in the table the datapath keeps its state in.
#[test]
fn seeding_confirms_only_connections_that_exchanged_packets_both_ways() {
    use firewall_daemon::{
        compile,
        conntrack::{self, Tables},
        host::sock_diag::{HostFlow, SockProto, TcpState},
        kernel::{self, Generation},
    };
    use rules::config;
    let ruleset = config::parse(STEALTH_ALL, std::path::Path::new("rules.toml")).expect("rules");
    let compiled = compile::compile(&ruleset, &Default::default()).expect("compiling");
    let fs = support::bpffs::BpfFs::new();
    let pin = fs.pin_dir("seed");
    let _generation =
        Generation::load(&compiled, &ruleset, &pin, 1).unwrap_or_else(|e| panic!("{e:#}"));
    let mut tables = Tables::open(&pin).expect("opening the tables");
    let states = [
        (TcpState::SynRecv, false),
        (TcpState::SynSent, false),
        (TcpState::Established, true),
        (TcpState::FinWait1, true),
        (TcpState::CloseWait, true),
        (TcpState::TimeWait, true),
    ];
    let flows: Vec<HostFlow> = states
        .iter()
        .enumerate()
        .map(|(i, (st, _))| HostFlow {
            proto: SockProto::Tcp,
            local: "10.200.0.2:22".parse().expect("addr"),
            remote: SocketAddr::new("10.200.0.1".parse().expect("addr"), 40000 + i as u16),
            tcp_state: Some(*st),
        })
        .collect();
    let listeners: Vec<SocketAddr> = vec!["0.0.0.0:22".parse().expect("addr")];
    let cfg = kernel::ct_config(&ruleset.conntrack, 1);
    let added = tables.seed(&flows, &listeners, &cfg, conntrack::monotonic_ns());
    assert_eq!(added, flows.len());
    let seeded = tables.flows();
    for (i, (st, confirmed)) in states.iter().enumerate() {
        let port = 40000 + i as u16;
        let flow = seeded
            .iter()
            .find(|f| f.key.remote_port == port)
            .unwrap_or_else(|| panic!("{st:?} was not seeded"));
        assert_eq!(
            flow.confirmed(),
            *confirmed,
            "a {st:?} socket belongs in the {} table",
            if *confirmed {
                "confirmed"
            } else {
                "unconfirmed"
            }
        );
    }
}
