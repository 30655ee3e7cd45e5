//! End to end: the real daemon protects one side of a veth pair between two test namespaces;
//! real clients, nmap and fwctl check what a user would see. Nothing is attached outside the
//! namespaces these tests create.

mod support;

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use aya::programs::xdp::XdpLink;
use firewall_daemon::kernel::PassProgram;
use rules::model::XdpMode;
use support::{bpffs::BpfFs, daemon::Daemon, netns::Pair};

const RULES: &str = r#"
[defaults]
inbound = "stealth"

[[rule]]
name = "web"
proto = "tcp"
port = 8080
action = "allow"

[[rule]]
name = "closed tcp"
proto = "tcp"
port = 8081
action = "reject"

[[rule]]
name = "dns"
proto = "udp"
port = 5353
action = "allow"

[[rule]]
name = "closed udp"
proto = "udp"
port = 5354
action = "reject"

[[rule]]
name = "ping"
proto = "icmp"
action = "allow"
"#;

/// How long a stealthed connect may take before we call it filtered.
const STEALTH_WAIT: Duration = Duration::from_millis(1500);
/// A rejected connect must fail well within this.
const REJECT_FAST: Duration = Duration::from_millis(500);

struct Lab {
    pair: Pair,
    daemon: Daemon,
    // Keeps the pass program on the client's veth (native XDP_TX on veth is only delivered
    // when the peer has an XDP program).
    _peer: Option<(PassProgram, XdpLink, BpfFs)>,
}

impl Lab {
    fn new(mode: &str) -> Self {
        Self::with_rules(mode, RULES)
    }

    fn with_rules(mode: &str, rules: &str) -> Self {
        let pair = Pair::new();
        let peer = (mode == "native").then(|| {
            let fs = BpfFs::new();
            let dir = fs.pin_dir("peer");
            let ifname = pair.client_if.clone();
            let (prog, link) = pair.client.run(move || {
                let mut prog = PassProgram::load(&dir).expect("loading xdp_pass");
                let (link, _) = prog
                    .attach(&ifname, XdpMode::Native)
                    .expect("attaching xdp_pass to the client veth");
                (prog, link)
            });
            (prog, link, fs)
        });
        let daemon = Daemon::start(&pair.server, &pair.server_if, mode, rules);
        // Servers listen on every port the tests use, so "closed" answers come from the
        // firewall, not from the stack.
        for addr in [pair.server_v4, pair.server_v6] {
            for port in [8080u16, 8081, 8082] {
                tcp_server(&pair, addr, port);
            }
            for port in [5353u16, 5354, 5355] {
                udp_echo(&pair, addr, port);
            }
        }
        Self {
            pair,
            daemon,
            _peer: peer,
        }
    }

    fn connect(&self, addr: &str, port: u16) -> (std::io::Result<String>, Duration) {
        let sa = sockaddr(addr, port);
        self.pair.client.run(move || {
            let t = Instant::now();
            let r = TcpStream::connect_timeout(&sa, STEALTH_WAIT).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut buf = String::new();
                s.read_to_string(&mut buf)?;
                Ok(buf)
            });
            (r, t.elapsed())
        })
    }

    /// A connected UDP socket sends one datagram and waits for the echo.
    fn udp(&self, addr: &str, port: u16) -> (std::io::Result<Vec<u8>>, Duration) {
        let sa = sockaddr(addr, port);
        self.pair.client.run(move || {
            let bind: SocketAddr = if sa.is_ipv4() {
                "0.0.0.0:0".parse().expect("addr")
            } else {
                "[::]:0".parse().expect("addr")
            };
            let t = Instant::now();
            let r = (|| {
                let s = UdpSocket::bind(bind)?;
                s.connect(sa)?;
                s.set_read_timeout(Some(STEALTH_WAIT))?;
                s.send(b"ping")?;
                let mut buf = [0u8; 64];
                let n = s.recv(&mut buf)?;
                Ok(buf[..n].to_vec())
            })();
            (r, t.elapsed())
        })
    }
}

fn sockaddr(addr: &str, port: u16) -> SocketAddr {
    let ip: std::net::IpAddr = addr.parse().expect("address");
    SocketAddr::new(ip, port)
}

fn tcp_server(pair: &Pair, addr: &str, port: u16) {
    let sa = sockaddr(addr, port);
    let listener = pair
        .server
        .run(move || TcpListener::bind(sa))
        .expect("binding a test server");
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            let _ = s.write_all(b"hello");
        }
    });
}

fn udp_echo(pair: &Pair, addr: &str, port: u16) {
    let sa = sockaddr(addr, port);
    let sock = pair
        .server
        .run(move || UdpSocket::bind(sa))
        .expect("binding a udp server");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
}

fn assert_allowed(lab: &Lab, addr: &str, port: u16) {
    let (r, _) = lab.connect(addr, port);
    assert_eq!(
        r.as_deref().map_err(|e| e.kind()),
        Ok("hello"),
        "tcp {addr}:{port} should be allowed"
    );
}

fn assert_rejected(lab: &Lab, addr: &str, port: u16) {
    let (r, t) = lab.connect(addr, port);
    let e = r.expect_err("connect should be refused");
    assert_eq!(
        e.kind(),
        ErrorKind::ConnectionRefused,
        "tcp {addr}:{port}: {e}"
    );
    assert!(t < REJECT_FAST, "refusal took {t:?}");
}

fn assert_stealthed(lab: &Lab, addr: &str, port: u16) {
    let (r, t) = lab.connect(addr, port);
    let e = r.expect_err("connect should time out");
    assert!(
        matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "tcp {addr}:{port}: expected a timeout, got {e}"
    );
    assert!(
        t + support::timer_slack() >= STEALTH_WAIT,
        "gave up after {t:?}"
    );
}

fn verdicts(mode: &str) {
    let lab = Lab::new(mode);
    for addr in [lab.pair.server_v4, lab.pair.server_v6] {
        assert_allowed(&lab, addr, 8080);
        assert_rejected(&lab, addr, 8081);
        assert_stealthed(&lab, addr, 8082);

        let (r, _) = lab.udp(addr, 5353);
        assert_eq!(r.expect("udp 5353 should be allowed"), b"ping");
        let (r, t) = lab.udp(addr, 5354);
        let e = r.expect_err("udp 5354 should be refused");
        assert_eq!(
            e.kind(),
            ErrorKind::ConnectionRefused,
            "udp {addr}:5354: {e}"
        );
        assert!(t < REJECT_FAST, "udp refusal took {t:?}");
        let (r, t) = lab.udp(addr, 5355);
        let e = r.expect_err("udp 5355 should be stealthed");
        assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "udp {addr}:5355: {e}"
        );
        assert!(
            t + support::timer_slack() >= STEALTH_WAIT,
            "udp {addr}:5355 gave up after {t:?}"
        );
    }

    // The daemon reports the mode it used and counted what happened.
    let status = lab.daemon.fwctl_json(&["status"]);
    assert_eq!(status["interfaces"][0]["mode"], mode);
    let c = &status["counters"];
    for key in [
        "allowed",
        "stealthed",
        "reject_tcp_rst",
        "reject_icmp_unreachable",
    ] {
        assert!(
            c[key].as_u64().unwrap_or(0) > 0,
            "counter {key} is zero: {c}"
        );
    }
}

#[test]
fn verdicts_native_mode() {
    verdicts("native");
}

#[test]
fn verdicts_generic_mode() {
    verdicts("generic");
}

/// Ports nmap reports, as (port/proto, state), from its greppable output.
fn nmap(lab: &Lab, args: &[&str], target: &str) -> Vec<(String, String)> {
    let out = lab
        .pair
        .client
        .command("nmap")
        .args([
            "-n",
            "-Pn",
            "-T4",
            "--max-retries",
            "1",
            "--host-timeout",
            "60s",
            "-oG",
            "-",
        ])
        .args(args)
        .arg(target)
        .output()
        .expect("running nmap (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "nmap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let ports = text
        .lines()
        .find_map(|l| l.split("Ports: ").nth(1))
        .unwrap_or_else(|| panic!("no ports in nmap output:\n{text}"));
    ports
        .split(", ")
        .map(|p| {
            let f: Vec<&str> = p.split('/').collect();
            (format!("{}/{}", f[0], f[2]), f[1].to_string())
        })
        .collect()
}

#[test]
fn nmap_sees_open_closed_filtered() {
    let lab = Lab::new("generic");
    let want_tcp = [
        ("8080/tcp", "open"),
        ("8081/tcp", "closed"),
        ("8082/tcp", "filtered"),
    ];
    let want_udp = [
        ("5353/udp", "open"),
        ("5354/udp", "closed"),
        ("5355/udp", "open|filtered"),
    ];
    for (flags, target, want) in [
        (
            &["-sS", "-p", "8080,8081,8082"][..],
            lab.pair.server_v4,
            &want_tcp,
        ),
        (
            &["-6", "-sS", "-p", "8080,8081,8082"][..],
            lab.pair.server_v6,
            &want_tcp,
        ),
        (
            &["-sU", "-p", "5353,5354,5355"][..],
            lab.pair.server_v4,
            &want_udp,
        ),
        (
            &["-6", "-sU", "-p", "5353,5354,5355"][..],
            lab.pair.server_v6,
            &want_udp,
        ),
    ] {
        let got = nmap(&lab, flags, target);
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect();
        assert_eq!(got, want, "nmap {flags:?} {target}");
    }
}

#[test]
fn reload_applies_new_rules_and_keeps_old_ones_on_error() {
    let lab = Lab::new("generic");
    let v4 = lab.pair.server_v4;
    assert_stealthed(&lab, v4, 8082);

    // A valid change: 8082 becomes allowed, 8081 goes from reject to the default (stealth).
    let changed = RULES.replace("port = 8081", "port = 8082").replace(
        "name = \"closed tcp\"\nproto = \"tcp\"\nport = 8082\naction = \"reject\"",
        "name = \"now open\"\nproto = \"tcp\"\nport = 8082\naction = \"allow\"",
    );
    lab.daemon.write_rules(&changed);
    let out = lab.daemon.fwctl(&["reload"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("+ now open"),
        "reload should say what changed:\n{text}"
    );
    assert!(
        text.contains("- closed tcp"),
        "reload should say what changed:\n{text}"
    );
    assert_allowed(&lab, v4, 8082);
    assert_stealthed(&lab, v4, 8081);

    // An invalid file: the error names the line, and the rules in force do not change.
    lab.daemon.write_rules(&format!(
        "{changed}\n[[rule]]\nname = \"bad\"\nport = 0\naction = \"allow\"\n"
    ));
    let out = lab.daemon.fwctl(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "invalid reload must exit 1: {err}"
    );
    assert!(
        err.contains("rules.toml:"),
        "error should name the file and line: {err}"
    );
    assert!(err.contains("previous rules stay in force"), "{err}");
    assert_allowed(&lab, v4, 8082);
    assert_stealthed(&lab, v4, 8081);
    let status = lab.daemon.fwctl_json(&["status"]);
    assert_eq!(
        status["generation"], 2,
        "a failed reload must not create a generation"
    );

    // SIGHUP reloads too.
    lab.daemon.write_rules(RULES);
    lab.daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.daemon.fwctl_json(&["status"])["generation"] != 3 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_rejected(&lab, v4, 8081);
}

/// Connections to a port allowed by both rule sets never fail while the rules are swapped back
/// and forth: there is no moment in which packets meet an empty or partial rule set.
#[test]
fn reload_has_no_gap() {
    let lab = Lab::new("generic");
    let other = RULES.replace("port = 5354", "port = 5356");
    let sa = sockaddr(lab.pair.server_v4, 8080);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let path = lab.pair.client.path();
    let hammer = std::thread::spawn(move || {
        support::netns::enter(&path);
        let (mut ok, mut failed) = (0u32, Vec::new());
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            match TcpStream::connect_timeout(&sa, Duration::from_secs(1)) {
                // Close with RST: thousands of closes per second would otherwise fill the
                // ephemeral port range with TIME_WAIT and make connects fail on their own.
                Ok(s) => {
                    let linger = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &linger)
                        .expect("SO_LINGER");
                    ok += 1
                }
                Err(e) => failed.push(e.to_string()),
            }
        }
        (ok, failed)
    });
    for i in 0..20 {
        lab.daemon
            .write_rules(if i % 2 == 0 { &other } else { RULES });
        let out = lab.daemon.fwctl(&["reload"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = hammer.join().expect("client thread");
    assert!(ok > 20, "too few connections to mean anything: {ok}");
    // Every packet was judged by a complete rule set: all allowed, none dropped or answered.
    let c = lab.daemon.fwctl_json(&["status"])["counters"].clone();
    let n = |k: &str| c[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(
        n("stealthed") + n("rejected") + n("default_verdict") + n("drop_ct_invalid"),
        0,
        "{c}"
    );
    // The first packet of each connection meets the rules; the rest pass as tracked.
    assert!(n("pass_tracked") > 0, "{c}");
    assert_eq!(
        n("packets"),
        n("allowed") + n("pass_tracked") + n("pass_icmp_essential") + n("pass_non_ip"),
        "{c}"
    );
    // A client this fast can outrun the test server's accept loop; such connects fail in the
    // server's listen queue (counted by the kernel), never in the firewall.
    let stat = lab.pair.server.exec(&["nstat", "-az", "TcpExtListenDrops"]);
    let listen_drops: usize = stat
        .lines()
        .find_map(|l| l.strip_prefix("TcpExtListenDrops"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        failed.len() <= listen_drops,
        "{} of {} connections failed during reloads ({listen_drops} listen-queue drops): {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert_eq!(lab.daemon.fwctl_json(&["status"])["generation"], 21);
}

#[test]
fn fwctl_list_status_check_and_errors() {
    let lab = Lab::new("generic");
    let list = lab.daemon.fwctl_json(&["list"]);
    let rules = list["rules"].as_array().expect("rules array");
    assert_eq!(rules.len(), 5);
    assert_eq!(rules[0]["name"], "web");
    assert_eq!(rules[0]["ports"][0], "8080");
    assert_eq!(rules[1]["action"], "reject");
    assert_eq!(list["defaults"]["inbound"], "stealth");

    assert_allowed(&lab, lab.pair.server_v4, 8080);
    let list = lab.daemon.fwctl_json(&["list"]);
    assert!(
        list["rules"][0]["hits"].as_u64().unwrap_or(0) > 0,
        "per-rule counter: {list}"
    );

    // The kernel and how the egress program is attached: TCX from Linux 6.6, else cls_bpf.
    let status = lab.daemon.fwctl_json(&["status"]);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(status["kernel"]["release"], release.trim(), "{status}");
    let mut version = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().expect("kernel version"));
    let tcx = (version.next(), version.next()) >= (Some(6), Some(6));
    let egress = if tcx { "tcx" } else { "netlink" };
    assert_eq!(status["interfaces"][0]["egress"], egress, "{status}");
    let features = status["kernel"]["features"].to_string();
    assert!(
        features.contains(if tcx { "TCX links" } else { "cls_bpf" }),
        "{status}"
    );
    assert!(
        features.contains("program identity: (device, inode) of task->mm->exe_file")
            && features.contains("listener table kept by cgroup post_bind4"),
        "{status}"
    );
    assert_eq!(
        status["kernel"]["degraded"],
        serde_json::json!([]),
        "{status}"
    );
    let text = String::from_utf8_lossy(&lab.daemon.fwctl(&["status"]).stdout).into_owned();
    assert!(
        text.contains(&format!("kernel:      {}", release.trim()))
            && text.contains(&format!("egress {egress}")),
        "{text}"
    );

    let text = String::from_utf8_lossy(&lab.daemon.fwctl(&["list"]).stdout).into_owned();
    assert!(
        text.contains("closed tcp") && text.contains("reject"),
        "{text}"
    );

    // check: valid file exit 0, invalid exit 1 with file:line, outbound rules counted and the
    // outbound scope noted.
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!("{RULES}\n[[rule]]\nname = \"mail out\"\ndirection = \"out\"\nproto = \"tcp\"\nport = 25\naction = \"reject\"\n"),
    )
    .expect("write");
    let out = Command::new(support::daemon::FWCTL)
        .env("SSH_CONNECTION", "")
        .args(["check"])
        .arg(&good)
        .output()
        .expect("fwctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("(5 inbound, 1 outbound)"), "{text}");
    assert!(text.contains("outbound allow"), "{text}");
    assert!(!text.contains("not enforced"), "{text}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nport = 70000\naction = \"allow\"\n").expect("write");
    let out = Command::new(support::daemon::FWCTL)
        .env("SSH_CONNECTION", "")
        .arg("check")
        .arg(&bad)
        .output()
        .expect("fwctl");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:2"),
        "error should name file:line: {err}"
    );

    // No daemon behind the socket: exit 3 with a useful message.
    let out = Command::new(support::daemon::FWCTL)
        .env("SSH_CONNECTION", "")
        .args(["--socket", "/nonexistent/fw.sock", "status"])
        .output()
        .expect("fwctl");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));

    // A caller that is neither root nor in the control group is refused by the daemon.
    let socket = lab.daemon.socket().to_path_buf();
    std::fs::set_permissions(
        socket.parent().expect("dir"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .expect("chmod");
    let out = {
        use std::os::unix::process::CommandExt as _;
        Command::new(support::daemon::FWCTL)
            .env("SSH_CONNECTION", "")
            .arg("--socket")
            .arg(&socket)
            .arg("status")
            .uid(65534)
            .gid(65534)
            .output()
            .expect("fwctl as nobody")
    };
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A malformed request gets an error, and the daemon keeps serving.
    let reply = {
        use std::os::unix::net::UnixStream;
        let mut s = UnixStream::connect(&socket).expect("connect");
        s.write_all(b"{\"cmd\":\"format-disk\"}\n").expect("write");
        let mut r = String::new();
        s.read_to_string(&mut r).expect("read");
        r
    };
    assert!(
        reply.contains("\"ok\":false") && reply.contains("malformed request"),
        "{reply}"
    );
    assert_eq!(lab.daemon.fwctl_json(&["status"])["rules"], 5);
}

#[test]
fn daemon_refuses_invalid_config_and_cleans_up_on_stop() {
    let pair = Pair::new();
    // An invalid file, and one whose [[assert]] entries do not hold (refused at start as at
    // every reload): the daemon exits non-zero naming the problem, attaching nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("rules.toml");
    // It would attach nothing anyway; like every daemon a test starts, it still gets a test
    // cgroup, never the default (the cgroup2 root).
    let cgroup = support::cgroup::TestCgroup::new("invalid");
    support::daemon::assert_daemon_cgroup(cgroup.path());
    for (rules, why) in [
        (
            "[[rule]]\nprogram = \"curl\"\naction = \"allow\"\n",
            &["must be an absolute path"][..],
        ),
        (
            "[[rule]]\nproto = \"tcp\"\nport = 22\naction = \"reject\"\n\
             [[assert]]\nin = \"tcp 22\"\nexpect = \"allow\"\n",
            &[
                "rules.toml:5:1: assertion does not hold: in tcp 22",
                "expected allow, but rule 1",
            ][..],
        ),
    ] {
        std::fs::write(&cfg, rules).expect("write");
        let err =
            support::daemon::refused_start(&pair.server, &pair.server_if, &cfg, cgroup.path());
        assert!(why.iter().all(|w| err.contains(w)), "{err}");
    }

    // With on_stop = "keep" (the default), a clean stop leaves the firewall enforcing: the
    // links stay pinned and attached, the socket goes; the next daemon adopts them.
    let mut d = Daemon::start(&pair.server, &pair.server_if, "generic", RULES);
    let status = d.terminate();
    assert!(status.success(), "daemon exit: {status}");
    let link = pair.server.exec(&["ip", "link", "show", &pair.server_if]);
    assert!(
        link.contains("xdp"),
        "still attached after a keep stop: {link}"
    );
    assert!(
        d.pin_dir
            .join("links")
            .read_dir()
            .map(|mut r| r.next().is_some())
            .unwrap_or(false)
    );
    assert!(!d.socket.exists(), "the control socket is removed");
    d.restart();
    let status = d.fwctl_json(&["status"]);
    assert_eq!(status["conntrack"]["adopted"], true, "{status}");
    drop(d);

    // With on_stop = "detach", a clean stop detaches and removes the socket and pins.
    let detach = format!("{RULES}\n[daemon]\non_stop = \"detach\"\n");
    let d = Daemon::start(&pair.server, &pair.server_if, "generic", &detach);
    let link = pair.server.exec(&["ip", "link", "show", &pair.server_if]);
    assert!(link.contains("xdp"), "attached while running: {link}");
    let socket = d.socket.clone();
    let pin_dir = d.pin_dir.clone();
    assert!(pin_dir.join("COUNTERS").exists());
    assert!(
        pin_dir.join("firewall_xdp").exists(),
        "the program in force is pinned"
    );
    let status = d.stop();
    assert!(status.success(), "daemon exit: {status}");
    let link = pair.server.exec(&["ip", "link", "show", &pair.server_if]);
    assert!(!link.contains("xdp"), "detached after stop: {link}");
    assert!(!socket.exists());
    assert!(!pin_dir.exists());
}

/// Under systemd (`Type=notify`) the daemon says READY=1 only once the programs are attached,
/// RELOADING=1 then READY=1 around a reload (also a failed one), and STOPPING=1.
#[test]
fn sd_notify_ready_after_attaching_and_around_reloads() {
    let pair = Pair::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let recv = |what: &str| {
        let mut buf = [0u8; 4096];
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification ({what}): {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let path_str = path.to_str().expect("utf-8 path").to_owned();
    let server_if = pair.server_if.clone();
    let server = &pair.server;
    // Daemon::start returns after the readiness line, which is printed right before READY=1:
    // the notification is already queued on our socket.
    let d = Daemon::start_with_env(
        server,
        &server_if,
        "generic",
        RULES,
        &[("NOTIFY_SOCKET", &path_str)],
    );
    let ready = recv("start");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains("STATUS="), "a status line: {ready}");
    let link = server.exec(&["ip", "link", "show", &server_if]);
    assert!(
        link.contains("xdp"),
        "attached when READY=1 was sent: {link}"
    );

    let out = d.fwctl(&["reload"]);
    assert!(out.status.success());
    let reloading = recv("reload");
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1")
            && reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading}"
    );
    let ready = recv("after reload");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");

    d.write_rules("[[rule]]\naction = \"maybe\"\n");
    let out = d.fwctl(&["reload"]);
    assert!(!out.status.success(), "an invalid file is refused");
    assert!(recv("failed reload").contains("RELOADING=1"));
    let ready = recv("after the failed reload");
    assert!(
        ready.lines().any(|l| l == "READY=1") && ready.contains("last reload failed"),
        "{ready}"
    );
    let status = d.stop();
    assert!(status.success());
    assert!(recv("stop").lines().any(|l| l == "STOPPING=1"));
}

/// Interfaces follow the host: an interface named in the configuration that appears after the
/// daemon started is protected within a bound, and one that goes away is forgotten.
#[test]
fn interfaces_that_appear_later_are_protected() {
    let pair = Pair::new();
    const LATE: &str = "fwlate0";
    let d = Daemon::start(&pair.server, LATE, "generic", RULES);
    let status = d.fwctl_json(&["status"]);
    assert_eq!(status["waiting_for"][0], LATE, "{status}");
    assert_eq!(status["interfaces"].as_array().map(Vec::len), Some(0));

    // A veth pair inside the test namespace (both ends there).
    pair.server.exec(&[
        "ip", "link", "add", LATE, "type", "veth", "peer", "name", "fwlate1",
    ]);
    let t0 = Instant::now();
    let bound = Duration::from_secs(2);
    let attached = loop {
        let st = d.fwctl_json(&["status"]);
        let ifs = st["interfaces"].as_array().cloned().unwrap_or_default();
        if let Some(i) = ifs.iter().find(|i| i["name"] == LATE) {
            break i.clone();
        }
        assert!(
            t0.elapsed() < bound,
            "{LATE} not protected within {bound:?}: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    assert_eq!(attached["state"], "ok", "{attached}");
    assert!(
        attached["program_id"].as_u64().unwrap_or(0) > 0,
        "{attached}"
    );
    let link = pair.server.exec(&["ip", "link", "show", LATE]);
    assert!(link.contains("xdp"), "{link}");
    eprintln!("{LATE} protected {took:?} after it appeared");

    pair.server.exec(&["ip", "link", "del", LATE]);
    let t0 = Instant::now();
    loop {
        let st = d.fwctl_json(&["status"]);
        let gone = st["interfaces"]
            .as_array()
            .is_some_and(|a| !a.iter().any(|i| i["name"] == LATE));
        if gone && st["waiting_for"][0] == LATE {
            break;
        }
        assert!(t0.elapsed() < bound, "{LATE} not forgotten: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `on_stop = "keep"` (the default): after the daemon exits, the last rules go on enforcing
/// (a stealth port stays filtered, an allowed port stays open), and a new daemon adopts them.
#[test]
fn on_stop_keep_goes_on_enforcing_until_a_new_daemon_adopts() {
    let mut lab = Lab::new("generic");
    let v4 = lab.pair.server_v4;
    assert_allowed(&lab, v4, 8080);
    assert_stealthed(&lab, v4, 8082);
    let status = lab.daemon.terminate();
    assert!(status.success(), "daemon exit: {status}");
    assert!(!lab.daemon.socket.exists(), "the control socket is gone");
    // No daemon now: the pinned programs decide.
    assert_allowed(&lab, v4, 8080);
    assert_stealthed(&lab, v4, 8082);
    assert_rejected(&lab, v4, 8081);
    lab.daemon.restart();
    let status = lab.daemon.fwctl_json(&["status"]);
    assert_eq!(status["conntrack"]["adopted"], true, "{status}");
    assert_allowed(&lab, v4, 8080);
    assert_stealthed(&lab, v4, 8082);
}
