//! Connection tracking end to end: the real daemon protects one side of a veth pair with
//! `[defaults] inbound = "stealth"`; real sockets, ping-style raw sockets, nmap and a spoofed
//! SYN flood on the other side check what tracking promises: the host's own flows get their
//! replies without allow rules, stray segments look filtered, established connections survive
//! reloads, a SIGKILL and a restart of the daemon, connections older than the daemon survive
//! its start, and a flood of half-open connections cannot push out established ones.
//!
//! "protected" is the namespace running the daemon (`Pair::server`), "remote" the other one
//! (`Pair::client`). Nothing is attached outside the namespaces these tests create.

mod support;

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use support::{
    daemon::Daemon,
    flood::{Syn, syn_flood},
    frames::inet_checksum,
    netns::{NetNs, Pair},
};

/// Allows one TCP port inbound and nothing else.
const RULES: &str = support::rules::WEB_ONLY;

/// How long a stealthed connect (or datagram) is waited for before we call it filtered.
const STEALTH_WAIT: Duration = Duration::from_millis(1500);
/// Longest wait for one step of an exchange that must work.
const IO_WAIT: Duration = Duration::from_secs(3);

/// The tests of this file run in parallel, except the flood, which takes this lock exclusively
/// so that its "never stalls" measurement does not depend on what else runs on the machine.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner())
}

fn sa(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(addr.parse().expect("address"), port)
}

fn unspecified(like: SocketAddr) -> SocketAddr {
    if like.is_ipv4() {
        sa("0.0.0.0", 0)
    } else {
        sa("::", 0)
    }
}

/// A TCP listener inside `ns` (bound before anyone connects to it).
fn listen(ns: &NetNs, addr: SocketAddr) -> TcpListener {
    ns.run(move || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("binding {addr}: {e}"))
}

fn udp_bind(ns: &NetNs, addr: SocketAddr) -> UdpSocket {
    let s = ns
        .run(move || UdpSocket::bind(addr))
        .unwrap_or_else(|e| panic!("binding udp {addr}: {e}"));
    s.set_read_timeout(Some(IO_WAIT)).expect("timeout");
    s
}

/// Connects from inside `ns`.
fn connect(ns: &NetNs, to: SocketAddr, wait: Duration) -> std::io::Result<TcpStream> {
    ns.run(move || TcpStream::connect_timeout(&to, wait))
}

/// Asserts that a connection from `ns` to `to` times out: the firewall drops the SYN.
fn assert_filtered(ns: &NetNs, to: SocketAddr, why: &str) {
    let t = Instant::now();
    match connect(ns, to, STEALTH_WAIT) {
        Ok(s) => panic!(
            "{why}: connecting to {to} should time out, but it connected from {:?}",
            s.local_addr()
        ),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
            "{why}: connecting to {to} should time out, got {e} after {:?}",
            t.elapsed()
        ),
    }
}

/// Accepts the connection that comes from `peer`, waiting at most `IO_WAIT`.
fn accept_from(listener: &TcpListener, peer: SocketAddr) -> TcpStream {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + IO_WAIT;
    loop {
        match listener.accept() {
            Ok((s, from)) if from == peer => {
                s.set_nonblocking(false).expect("blocking");
                return s;
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "no connection from {peer} to accept"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A TCP connection from `from` to `listener` (in the other namespace): (connecting end,
/// accepted end), both with `IO_WAIT` timeouts.
fn open(from: &NetNs, listener: &TcpListener) -> (TcpStream, TcpStream) {
    let to = listener.local_addr().expect("listener address");
    let c = connect(from, to, IO_WAIT).unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
    let s = accept_from(listener, c.local_addr().expect("local address"));
    for x in [&c, &s] {
        x.set_read_timeout(Some(IO_WAIT)).expect("timeout");
        x.set_write_timeout(Some(IO_WAIT)).expect("timeout");
        x.set_nodelay(true).expect("nodelay");
    }
    (c, s)
}

/// `first` sends `msg`, `second` receives it and answers, `first` receives the answer.
fn try_exchange(first: &mut TcpStream, second: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    first.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    second.read_exact(&mut got)?;
    assert_eq!(got, msg, "data arrived corrupted");
    let answer: Vec<u8> = msg.iter().rev().copied().collect();
    second.write_all(&answer)?;
    first.read_exact(&mut got)?;
    assert_eq!(got, answer, "answer arrived corrupted");
    Ok(())
}

fn exchange(first: &mut TcpStream, second: &mut TcpStream, what: &str) {
    try_exchange(first, second, what.as_bytes()).unwrap_or_else(|e| {
        panic!(
            "{what}: exchange {:?} -> {:?} failed: {e}",
            first.local_addr(),
            first.peer_addr()
        )
    });
}

/// Data both ways, each side speaking first once.
fn both_ways(remote_end: &mut TcpStream, protected_end: &mut TcpStream, what: &str) {
    exchange(
        remote_end,
        protected_end,
        &format!("{what}: remote speaks first"),
    );
    exchange(
        protected_end,
        remote_end,
        &format!("{what}: protected host speaks first"),
    );
}

/// Sends `count` echo requests (ICMP or ICMPv6, on a raw socket as ping does; the ping
/// program is not among the packages `cargo xtask setup` installs) from inside `ns` with
/// identifier `id`; returns how many got their reply within `wait` each.
fn ping(ns: &NetNs, to: IpAddr, id: u16, count: u16, wait: Duration) -> u16 {
    ns.run(move || ping_here(to, id, count, wait))
}

fn ping_here(to: IpAddr, id: u16, count: u16, wait: Duration) -> u16 {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6, recv,
        sendto, setsockopt, socket, sockopt,
    };
    let (family, proto, request, reply) = match to {
        IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp, 8u8, 0u8),
        IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6, 128, 129),
    };
    let fd = socket(family, SockType::Raw, SockFlag::empty(), proto).expect("raw ICMP socket");
    let mut answered = 0;
    for seq in 1..=count {
        let mut msg = vec![request, 0, 0, 0];
        msg.extend_from_slice(&id.to_be_bytes());
        msg.extend_from_slice(&seq.to_be_bytes());
        msg.extend_from_slice(b"firewall conntrack test");
        let sent = match to {
            IpAddr::V4(a) => {
                let c = inet_checksum(&[&msg]);
                msg[2..4].copy_from_slice(&c.to_be_bytes());
                let addr = SockaddrIn::from(std::net::SocketAddrV4::new(a, 0));
                sendto(fd.as_raw_fd(), &msg, &addr, MsgFlags::empty())
            }
            // The kernel fills in ICMPv6 checksums on raw ICMPv6 sockets.
            IpAddr::V6(a) => {
                let addr = SockaddrIn6::from(std::net::SocketAddrV6::new(a, 0, 0, 0));
                sendto(fd.as_raw_fd(), &msg, &addr, MsgFlags::empty())
            }
        };
        sent.expect("sending an echo request");
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let tv = nix::sys::time::TimeVal::new(
                left.as_secs() as i64,
                i64::from(left.subsec_micros().max(1)),
            );
            setsockopt(&fd, sockopt::ReceiveTimeout, &tv).expect("SO_RCVTIMEO");
            let mut buf = [0u8; 2048];
            let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => panic!("receiving echo replies: {e}"),
            };
            // IPv4 raw sockets deliver the IP header too; IPv6 ones do not.
            let icmp = match to {
                IpAddr::V4(_) => &buf[usize::from(buf[0] & 0x0f) * 4..n],
                IpAddr::V6(_) => &buf[..n],
            };
            if icmp.len() >= 8
                && icmp[0] == reply
                && icmp[4..6] == id.to_be_bytes()
                && icmp[6..8] == seq.to_be_bytes()
            {
                answered += 1;
                break;
            }
        }
    }
    answered
}

fn status(d: &Daemon) -> serde_json::Value {
    d.fwctl_json(&["status"])
}

fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {}", status["counters"]))
}

/// The tracked flows (`fwctl conns --json`).
fn conns(d: &Daemon) -> Vec<serde_json::Value> {
    d.fwctl_json(&["conns"])["connections"]
        .as_array()
        .expect("connections array")
        .clone()
}

/// The flow with these endpoints, as `fwctl conns` shows them.
fn find_flow(d: &Daemon, proto: &str, local: &str, remote: &str) -> serde_json::Value {
    let all = conns(d);
    all.iter()
        .find(|c| c["proto"] == proto && c["local"] == local && c["remote"] == remote)
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no {proto} flow {local} <-> {remote} in fwctl conns:\n{}",
                serde_json::to_string_pretty(&all).unwrap_or_default()
            )
        })
}

/// The host's end of a connection ended by `--recheck` (its socket destroyed) reads EOF or an
/// abort at once.
#[track_caller]
fn assert_host_end_closed(s: &mut TcpStream) {
    s.set_read_timeout(Some(IO_WAIT)).expect("timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
            ) => {}
        other => panic!("the host's end should be closed: {other:?}"),
    }
}

fn endpoints(s: &TcpStream) -> (String, String) {
    (
        s.local_addr().expect("local").to_string(),
        s.peer_addr().expect("peer").to_string(),
    )
}

/// A distinct ICMP echo identifier per call (flows are keyed by it).
fn echo_id() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    (std::process::id() as u16).wrapping_mul(31) ^ NEXT.fetch_add(1, Ordering::Relaxed) as u16
}

/// 1. With no allow rule for them, the protected host's own TCP, UDP and ICMP echo flows get
///    their replies; the remote side still cannot open anything towards it.
#[test]
fn host_opened_flows_get_replies_without_allow_rules() {
    let _g = shared();
    let pair = Pair::new();
    // Everything the remote side will try, bound on the protected side before the daemon
    // starts: a listening TCP port and a bound UDP socket, neither allowed.
    let mut traps = Vec::new();
    for addr in [pair.server_v4, pair.server_v6] {
        traps.push((
            listen(&pair.server, sa(addr, 9000)),
            udp_bind(&pair.server, sa(addr, 9001)),
        ));
    }
    let daemon = Daemon::start(&pair.server, &pair.server_if, "generic", RULES);

    for (remote, local) in [
        (pair.client_v4, pair.server_v4),
        (pair.client_v6, pair.server_v6),
    ] {
        // TCP: an HTTP-like request and response to a server on the remote side.
        let web = listen(&pair.client, sa(remote, 80));
        let (mut client, mut server) = open(&pair.server, &web);
        client
            .write_all(b"GET / HTTP/1.0\r\nHost: remote\r\n\r\n")
            .expect("sending the request");
        let mut req = Vec::new();
        let mut buf = [0u8; 256];
        while !req.ends_with(b"\r\n\r\n") {
            let n = server.read(&mut buf).expect("server reading the request");
            assert!(n > 0, "request cut short: {req:?}");
            req.extend_from_slice(&buf[..n]);
        }
        assert!(req.starts_with(b"GET / HTTP/1.0"));
        server
            .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .expect("sending the response");
        let mut resp = [0u8; 43];
        client
            .read_exact(&mut resp)
            .unwrap_or_else(|e| panic!("the response from {remote}:80 did not arrive: {e}"));
        assert!(resp.ends_with(b"\r\n\r\nhello"), "{resp:?}");
        exchange(
            &mut client,
            &mut server,
            "more data on the host's connection",
        );

        // The flow is tracked as opened by the host.
        let (l, r) = endpoints(&client);
        let flow = find_flow(&daemon, "tcp", &l, &r);
        assert_eq!(flow["origin"], "local", "{flow}");
        assert_eq!(flow["state"], "ESTABLISHED", "{flow}");
        assert_eq!(flow["table"], "confirmed", "{flow}");
        assert!(
            flow["packets_in"].as_u64().unwrap_or(0) >= 3,
            "inbound packets counted: {flow}"
        );

        // UDP: a DNS-style query from an ephemeral port, answered by the remote server.
        let dns = udp_bind(&pair.client, sa(remote, 53));
        let dns_addr = dns.local_addr().expect("addr");
        let resolver = udp_bind(&pair.server, unspecified(dns_addr));
        resolver.connect(dns_addr).expect("connect");
        let query = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        resolver.send(&query).expect("sending the query");
        let mut buf = [0u8; 512];
        let (n, from) = dns
            .recv_from(&mut buf)
            .expect("the query reaches the server");
        assert_eq!(&buf[..n], &query);
        let mut answer = query.to_vec();
        answer[2] |= 0x80;
        answer.extend_from_slice(&[192, 0, 2, 1]);
        dns.send_to(&answer, from).expect("answering");
        let n = resolver
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("the answer from {remote}:53 did not arrive: {e}"));
        assert_eq!(&buf[..n], &answer[..]);
        let flow = find_flow(
            &daemon,
            "udp",
            &resolver.local_addr().expect("addr").to_string(),
            &dns_addr.to_string(),
        );
        assert_eq!(flow["origin"], "local", "{flow}");
        assert_eq!(flow["state"], "REPLIED", "{flow}");

        // ICMP echo.
        let id = echo_id();
        let remote_ip: IpAddr = remote.parse().expect("address");
        assert_eq!(
            ping(&pair.server, remote_ip, id, 3, IO_WAIT),
            3,
            "ping {remote} from the protected host"
        );
        let proto = if remote_ip.is_ipv4() {
            "icmp"
        } else {
            "icmpv6"
        };
        let flow = find_flow(&daemon, proto, &format!("{local} id={id}"), remote);
        assert_eq!(flow["origin"], "local", "{flow}");

        // A closed port on the remote side answers with a RST (TCP) or an ICMP port
        // unreachable (UDP, an error quoting the host's datagram, passed as related): the
        // host's sockets learn it at once instead of timing out.
        let t = Instant::now();
        let e = connect(&pair.server, sa(remote, 81), IO_WAIT)
            .expect_err("nothing listens on the remote port 81");
        assert_eq!(
            e.kind(),
            ErrorKind::ConnectionRefused,
            "tcp {remote}:81: {e}"
        );
        assert!(t.elapsed() < STEALTH_WAIT, "refusal took {:?}", t.elapsed());
        let probe = udp_bind(&pair.server, unspecified(dns_addr));
        probe.connect(sa(remote, 54)).expect("connect");
        probe.send(b"anyone?").expect("send");
        let e = probe
            .recv(&mut buf)
            .expect_err("nothing listens on the remote port 54");
        assert_eq!(
            e.kind(),
            ErrorKind::ConnectionRefused,
            "udp {remote}:54: {e}"
        );

        // The negative: the remote side opens nothing.
        assert_filtered(&pair.client, sa(local, 9000), "an unallowed listening port");
        let prober = udp_bind(&pair.client, sa(remote, 0));
        prober
            .send_to(b"unsolicited", sa(local, 9001))
            .expect("sending");
        let trap = &traps[usize::from(remote_ip.is_ipv6())].1;
        trap.set_read_timeout(Some(STEALTH_WAIT)).expect("timeout");
        match trap.recv_from(&mut buf) {
            Ok((n, from)) => panic!(
                "an unsolicited datagram from {from} was delivered to {local}:9001: {:?}",
                &buf[..n]
            ),
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "{e}"
            ),
        }
        assert_eq!(
            ping(
                &pair.client,
                local.parse().expect("address"),
                echo_id(),
                1,
                STEALTH_WAIT
            ),
            0,
            "the protected host must not answer pings (no icmp rule)"
        );
    }

    let st = status(&daemon);
    assert!(counter(&st, "pass_tracked") > 0);
    assert!(counter(&st, "pass_related") >= 2, "{}", st["counters"]);
    assert!(counter(&st, "stealthed") > 0);
}

/// Ports nmap reports, as (port/proto, state) sorted, from its greppable output (with four
/// ports it lists each one, whatever their states).
fn nmap(ns: &NetNs, args: &[&str], ports: &[u16], target: &str) -> Vec<(String, String)> {
    let list = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = ns
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
            "-p",
            &list,
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
    let listed = text
        .lines()
        .find_map(|l| l.split("Ports: ").nth(1))
        .unwrap_or_else(|| panic!("no ports in nmap output:\n{text}"));
    let mut got: Vec<(String, String)> = listed
        .split('\t')
        .next()
        .unwrap_or("")
        .split(", ")
        .map(|p| {
            let f: Vec<&str> = p.split('/').collect();
            (format!("{}/{}", f[0], f[2]), f[1].to_string())
        })
        .collect();
    got.sort();
    got
}

/// 2. An ACK scan learns nothing: every port, open, allowed, rejected or closed, is
///    "filtered", because a segment of no connection is stealthed. With
///    `[conntrack] invalid = "reject"` the same scan sees RSTs ("unfiltered").
#[test]
fn ack_scan_sees_every_port_filtered() {
    let _g = shared();
    let pair = Pair::new();
    let rules = format!(
        "{RULES}\n[[rule]]\nname = \"closed\"\nproto = \"tcp\"\nport = 8081\naction = \"reject\"\n"
    );
    // 8080 listening and allowed, 8081 rejected by a rule, 9000 listening and not allowed,
    // 9002 closed (nothing listens, no rule).
    let ports = [8080u16, 8081, 9000, 9002];
    let mut listeners = Vec::new();
    for addr in [pair.server_v4, pair.server_v6] {
        for port in [8080, 9000] {
            listeners.push(listen(&pair.server, sa(addr, port)));
        }
    }
    let expect = |state: &str| -> Vec<(String, String)> {
        let mut v: Vec<_> = ports
            .iter()
            .map(|p| (format!("{p}/tcp"), state.to_string()))
            .collect();
        v.sort();
        v
    };
    let scans: [(&[&str], &str); 2] =
        [(&["-sA"], pair.server_v4), (&["-6", "-sA"], pair.server_v6)];

    // Without the firewall the host answers every ACK with a RST: the scan works.
    for (flags, target) in scans {
        assert_eq!(
            nmap(&pair.client, flags, &ports, target),
            expect("unfiltered"),
            "nmap {flags:?} {target} before the firewall starts"
        );
    }

    let daemon = Daemon::start(&pair.server, &pair.server_if, "generic", &rules);
    for (flags, target) in scans {
        assert_eq!(
            nmap(&pair.client, flags, &ports, target),
            expect("filtered"),
            "nmap {flags:?} {target}"
        );
    }
    let st = status(&daemon);
    assert!(
        counter(&st, "ct_invalid_no_conn") >= 8,
        "{}",
        st["counters"]
    );
    assert_eq!(counter(&st, "reject_tcp_rst"), 0, "{}", st["counters"]);

    // The policy is configurable: reject answers the stray segments as a closed port would.
    daemon.write_rules(&format!("{rules}\n[conntrack]\ninvalid = \"reject\"\n"));
    let out = daemon.fwctl(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (flags, target) in scans {
        assert_eq!(
            nmap(&pair.client, flags, &ports, target),
            expect("unfiltered"),
            "nmap {flags:?} {target} with invalid = \"reject\""
        );
    }
    assert!(counter(&status(&daemon), "reject_tcp_rst") >= 8);
}

/// 3a. Established connections (IPv4 and IPv6, into the host and opened by the host) keep
///     working across a reload that removes the rule that admitted them, a SIGKILL of the
///     daemon (the pinned programs go on enforcing) and a restart that adopts them.
#[test]
fn established_connections_survive_reload_kill_and_restart() {
    let _g = shared();
    let pair = Pair::new();
    let mut daemon = Daemon::start(&pair.server, &pair.server_if, "generic", RULES);

    let mut conns = Vec::new();
    for (protected, remote) in [
        (pair.server_v4, pair.client_v4),
        (pair.server_v6, pair.client_v6),
    ] {
        let web = listen(&pair.server, sa(protected, 8080));
        let (c, s) = open(&pair.client, &web);
        conns.push((format!("inbound {protected}:8080"), c, s, web));
        let out = listen(&pair.client, sa(remote, 7000));
        let (c, s) = open(&pair.server, &out);
        // (remote end, protected end)
        conns.push((format!("outbound to {remote}:7000"), s, c, out));
    }
    let check_all = |conns: &mut Vec<(String, TcpStream, TcpStream, TcpListener)>, when: &str| {
        for (name, remote_end, protected_end, _) in conns.iter_mut() {
            both_ways(remote_end, protected_end, &format!("{name} {when}"));
        }
    };
    check_all(&mut conns, "before anything");
    let inbound_v4 = endpoints(&conns[0].2);

    // A reload that removes the rule: tracked connections stay, new ones are refused.
    daemon.write_rules(&RULES.replace("port = 8080", "port = 8088"));
    let out = daemon.fwctl(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_all(&mut conns, "after a reload removing their rule");
    assert_filtered(
        &pair.client,
        sa(pair.server_v4, 8080),
        "8080 after the reload",
    );
    let flow = find_flow(&daemon, "tcp", &inbound_v4.0, &inbound_v4.1);
    assert_eq!(flow["origin"], "remote", "{flow}");
    assert_eq!(flow["table"], "confirmed", "{flow}");

    // SIGKILL: nothing is cleaned up; the pinned links keep enforcing the last rules.
    daemon.kill_hard();
    let links = std::fs::read_dir(daemon.pin_dir.join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    // Two (XDP and TCX egress), or one where the egress program is a cls_bpf filter (no TCX
    // before Linux 6.6), which has no pin and stays attached by itself.
    assert!(
        links >= 1
            && daemon
                .pin_dir
                .join("links")
                .join(format!("xdp-{}", pair.server_if))
                .exists(),
        "a killed daemon leaves its links pinned, found {links}"
    );
    let link = pair.server.exec(&["ip", "link", "show", &pair.server_if]);
    assert!(link.contains("xdp"), "still attached: {link}");
    check_all(&mut conns, "while the daemon is dead");
    assert_filtered(
        &pair.client,
        sa(pair.server_v4, 8080),
        "8080 while the daemon is dead",
    );

    // A restart with the same pin dir adopts the links and the tables.
    daemon.restart();
    let st = status(&daemon);
    assert_eq!(st["conntrack"]["adopted"], true, "{}", st["conntrack"]);
    check_all(&mut conns, "after the restart");
    assert_filtered(
        &pair.client,
        sa(pair.server_v4, 8080),
        "8080 after the restart",
    );
    // The entry is the one the first daemon made (the table was adopted, not re-seeded).
    let flow = find_flow(&daemon, "tcp", &inbound_v4.0, &inbound_v4.1);
    assert_eq!(flow["origin"], "remote", "{flow}");
    assert_eq!(flow["table"], "confirmed", "{flow}");
    // (Its rule's name belongs to the first daemon's history; the number stays.)
    assert!(
        flow["admitted_by"]
            .as_str()
            .is_some_and(|a| a.starts_with("rule 1")),
        "admitted by the first daemon's rule, not re-seeded: {flow}"
    );
    assert_eq!(
        st["conntrack"]["seeded_at_start"], 0,
        "every connection was already in the adopted table: {}",
        st["conntrack"]
    );
    // The adopting daemon owns the attachment now: with on_stop = "detach" (set by a reload),
    // SIGTERM detaches and unpins everything.
    daemon.write_rules(&format!(
        "{}\n[daemon]\non_stop = \"detach\"\n",
        RULES.replace("port = 8080", "port = 8088")
    ));
    let out = daemon.fwctl(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pin_dir = daemon.pin_dir.clone();
    let status = daemon.stop();
    assert!(status.success(), "daemon exit: {status}");
    let link = pair.server.exec(&["ip", "link", "show", &pair.server_if]);
    assert!(!link.contains("xdp"), "detached after stop: {link}");
    assert!(!pin_dir.exists(), "pins removed after stop");
}

/// 3a'. An upgrade that changes a pinned table's layout: the daemon finds the killed
///      daemon's connection table in an older shape (entries of 72 bytes, before they
///      recorded their owner), replaces it instead of failing or misreading it, and the
///      connection still open is seeded into the new table, so it keeps working.
#[test]
fn pinned_tables_of_another_layout_are_replaced() {
    use aya::maps::{HashMap, MapData, MapInfo};
    use firewall_common::{ct::CtEntry, maps};
    let _g = shared();
    let pair = Pair::new();
    let mut daemon = Daemon::start(&pair.server, &pair.server_if, "generic", RULES);
    let web = listen(&pair.server, sa(pair.server_v4, 8080));
    let (mut remote_end, mut protected_end) = open(&pair.client, &web);
    both_ways(&mut remote_end, &mut protected_end, "before");
    daemon.kill_hard();

    let pin = daemon.pin_dir.join(maps::CT_EST);
    std::fs::remove_file(&pin).expect("unpinning the table");
    let old: HashMap<MapData, [u8; 40], [u8; 72]> =
        HashMap::create(1024, 0).expect("creating a table of the old layout");
    old.pin(&pin).expect("pinning it where the table was");
    assert_eq!(MapInfo::from_pin(&pin).expect("info").value_size(), 72);

    daemon.restart();
    assert_eq!(
        MapInfo::from_pin(&pin).expect("info").value_size() as usize,
        size_of::<CtEntry>(),
        "the table was replaced"
    );
    assert!(
        daemon.stderr().contains("another layout"),
        "the replacement is logged: {}",
        daemon.stderr()
    );
    let st = status(&daemon);
    assert!(
        st["conntrack"]["seeded_at_start"].as_u64().unwrap_or(0) >= 1,
        "the open connection was seeded into the new table: {}",
        st["conntrack"]
    );
    both_ways(&mut remote_end, &mut protected_end, "after the restart");
    assert_filtered(
        &pair.client,
        sa(pair.server_v4, 8081),
        "8081 after the restart",
    );
}

/// 3b. Connections that exist before the daemon starts (an SSH-like session into the host on
///     a port no rule allows, and one the host opened) survive its start: the table is seeded
///     from the host's sockets before the programs attach. The remote side speaks first after
///     the start, so nothing but the seeded entry can let its segment in.
#[test]
fn connections_older_than_the_daemon_survive_its_start() {
    let _g = shared();
    let pair = Pair::new();
    let mut conns = Vec::new();
    let mut listeners = Vec::new();
    for (protected, remote) in [
        (pair.server_v4, pair.client_v4),
        (pair.server_v6, pair.client_v6),
    ] {
        let ssh = listen(&pair.server, sa(protected, 2222));
        let (c, s) = open(&pair.client, &ssh);
        conns.push((format!("session into {protected}:2222"), c, s));
        listeners.push(ssh);
        let out = listen(&pair.client, sa(remote, 2223));
        let (c, s) = open(&pair.server, &out);
        conns.push((format!("session from the host to {remote}:2223"), s, c));
        listeners.push(out);
    }
    for (name, remote_end, protected_end) in &mut conns {
        both_ways(
            remote_end,
            protected_end,
            &format!("{name} before the start"),
        );
    }

    let daemon = Daemon::start(&pair.server, &pair.server_if, "generic", RULES);
    let st = status(&daemon);
    assert!(
        st["conntrack"]["seeded_at_start"].as_u64().unwrap_or(0) >= 4,
        "{}",
        st["conntrack"]
    );
    for (name, remote_end, protected_end) in &mut conns {
        let (l, r) = endpoints(protected_end);
        let flow = find_flow(&daemon, "tcp", &l, &r);
        assert_eq!(flow["admitted_by"], "host socket at start-up", "{flow}");
        assert_eq!(flow["table"], "confirmed", "{flow}");
        // Remote first: the protected host has sent nothing since the daemon started.
        exchange(
            remote_end,
            protected_end,
            &format!("{name} after the start, remote first"),
        );
        exchange(
            protected_end,
            remote_end,
            &format!("{name} after the start, host first"),
        );
    }
    // The port itself is not open to new connections.
    assert_filtered(&pair.client, sa(pair.server_v4, 2222), "2222 has no rule");
    assert_filtered(&pair.client, sa(pair.server_v6, 2222), "2222 has no rule");
}

/// A small xorshift generator: the flood needs cheap, varied numbers, not good ones.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 4. A flood of spoofed SYNs to an allowed port fills the unconfirmed table, which evicts;
///    an established connection lives in the confirmed table and keeps exchanging data
///    throughout without a stall.
#[test]
fn syn_flood_evicts_half_open_flows_but_not_established_ones() {
    let _g = exclusive();
    const MAX_SYNS: u64 = 200_000;
    const MAX_FLOOD_TIME: Duration = Duration::from_secs(10);
    /// One request/response of the established connection must never take longer.
    const EXCHANGE_WAIT: Duration = Duration::from_secs(2);

    let pair = Pair::new();
    // The host answers the spoofed SYNs; their SYN-ACKs go to the remote namespace, which
    // drops them (it does not forward).
    pair.server
        .exec(&["ip", "route", "add", "198.18.0.0/15", "via", pair.client_v4]);
    let rules = format!("{RULES}\n[conntrack]\nunconfirmed_size = 1024\n");
    let web = listen(&pair.server, sa(pair.server_v4, 8080));
    let daemon = Daemon::start(&pair.server, &pair.server_if, "generic", &rules);
    let st = status(&daemon);
    assert_eq!(st["conntrack"]["unconfirmed_capacity"], 1024, "{}", st);
    let evicted_before = st["conntrack"]["evicted"].as_u64().expect("evicted");

    let (client, mut server) = open(&pair.client, &web);
    let flow_ends = endpoints(&server);
    // The protected side echoes.
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        loop {
            match server.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if server.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    });
    // The remote side exchanges requests and responses until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let worst = Arc::new(Mutex::new(Duration::ZERO));
    let (stop2, done2, worst2) = (stop.clone(), done.clone(), worst.clone());
    let exchanger = std::thread::spawn(move || -> Result<TcpStream, String> {
        let mut c = client;
        c.set_read_timeout(Some(EXCHANGE_WAIT)).expect("timeout");
        let mut i = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            let msg = format!("request {i:>10} padded to a fixed size of 64 bytes......");
            let t = Instant::now();
            c.write_all(msg.as_bytes())
                .map_err(|e| format!("exchange {i}: write: {e}"))?;
            let mut got = vec![0u8; msg.len()];
            c.read_exact(&mut got)
                .map_err(|e| format!("exchange {i}: no answer within {EXCHANGE_WAIT:?}: {e}"))?;
            if got != msg.as_bytes() {
                return Err(format!("exchange {i}: corrupted answer"));
            }
            let took = t.elapsed();
            if let Ok(mut w) = worst2.lock() {
                *w = (*w).max(took);
            }
            i += 1;
            done2.store(i, Ordering::Relaxed);
        }
        Ok(c)
    });
    let wait_for = |n: u64| {
        let deadline = Instant::now() + IO_WAIT;
        while done.load(Ordering::Relaxed) < n && !exchanger.is_finished() {
            assert!(Instant::now() < deadline, "the exchanges do not progress");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for(20);

    let src_mac = pair.client.mac(&pair.client_if);
    let dst_mac = pair.server.mac(&pair.server_if);
    let ifname = pair.client_if.clone();
    let dst: Ipv4Addr = pair.server_v4.parse().expect("address");
    // Meanwhile the remote side also opens new connections to the port under attack (each
    // must complete its handshake through the churning table and receive a greeting).
    let flooding = Arc::new(AtomicBool::new(true));
    let accepting = Arc::new(AtomicBool::new(true));
    let acceptor = {
        let l = web.try_clone().expect("listener");
        l.set_nonblocking(true).expect("nonblocking");
        let accepting = accepting.clone();
        std::thread::spawn(move || {
            while accepting.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(b"hi");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })
    };
    let connector = {
        let flooding = flooding.clone();
        let path = pair.client.path();
        let to = sa(pair.server_v4, 8080);
        std::thread::spawn(move || {
            support::netns::enter(&path);
            let (mut ok, mut failed) = (0u32, Vec::new());
            while flooding.load(Ordering::Relaxed) {
                let r = TcpStream::connect_timeout(&to, EXCHANGE_WAIT).and_then(|mut s| {
                    s.set_read_timeout(Some(EXCHANGE_WAIT))?;
                    let mut hi = [0u8; 2];
                    s.read_exact(&mut hi)
                });
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                // Paced: the point is the handshakes' fate, not load.
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed)
        })
    };
    let at_start = done.load(Ordering::Relaxed);
    let flood = pair.client.run(move || {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
        syn_flood(
            &ifname,
            src_mac,
            dst_mac,
            dst,
            8080,
            MAX_SYNS,
            MAX_FLOOD_TIME,
            |_| {
                let r = rng.next();
                // 198.18.0.0/15, source port 1024-65535, random sequence number and IP id.
                Syn {
                    src: Ipv4Addr::from(0xc612_0000u32 | (r as u32 & 0x0001_ffff)),
                    sport: 1024 + ((r >> 17) as u16 % (65535 - 1024)),
                    seq: (r >> 32) as u32,
                    ip_id: (r >> 48) as u16,
                }
            },
        )
    });
    let during = done.load(Ordering::Relaxed) - at_start;
    flooding.store(false, Ordering::Relaxed);
    let (new_ok, new_failed) = connector.join().expect("connector thread");
    accepting.store(false, Ordering::Relaxed);
    acceptor.join().expect("acceptor thread");
    wait_for(done.load(Ordering::Relaxed) + 20);
    stop.store(true, Ordering::Relaxed);
    let result = exchanger.join().expect("exchange thread");
    let worst = *worst.lock().expect("worst");
    let st = status(&daemon);
    let ct = &st["conntrack"];
    let evicted = ct["evicted"].as_u64().expect("evicted") - evicted_before;
    eprintln!(
        "SYN flood: {} SYNs sent ({} send errors) in {:?} ({:.0}/s); {during} exchanges during \
         the flood, slowest {worst:?}; new connections during the flood: {new_ok} ok, {} failed; \
         evicted {evicted}; conntrack {ct}; ct_new_inserted {}; ct_invalid_no_conn {}",
        flood.sent,
        flood.send_errors,
        flood.elapsed,
        flood.sent as f64 / flood.elapsed.as_secs_f64(),
        new_failed.len(),
        counter(&st, "ct_new_inserted"),
        counter(&st, "ct_invalid_no_conn"),
    );
    let client = match result {
        Ok(c) => c,
        Err(e) => panic!("the established connection stalled during the flood: {e}"),
    };
    // Their handshakes live in the churning table too, but an entry lasts roughly
    // capacity / flood rate (~10 ms here), far longer than a handshake over veth.
    assert!(
        new_ok > 0 && new_failed.is_empty(),
        "new connections during the flood: {new_ok} ok, failed: {new_failed:?}"
    );
    // Ten times the table's capacity churns it through many times over (under emulation
    // the sender manages far fewer SYNs in the same time than on this machine).
    assert!(
        flood.sent >= 10 * 1024,
        "the flood was too small to mean anything: {} SYNs",
        flood.sent
    );
    assert!(
        during >= 10,
        "only {during} exchanges during a {:?} flood",
        flood.elapsed
    );
    assert!(evicted > 0, "the unconfirmed table never evicted: {ct}");
    assert!(
        ct["unconfirmed"].as_u64().unwrap_or(u64::MAX) <= 1024,
        "{ct}"
    );
    let flow = find_flow(&daemon, "tcp", &flow_ends.0, &flow_ends.1);
    assert_eq!(flow["table"], "confirmed", "{flow}");
    assert_eq!(flow["state"], "ESTABLISHED", "{flow}");
    // New connections still get in once the flood is over.
    let (mut c, mut s) = open(&pair.client, &web);
    both_ways(&mut c, &mut s, "a new connection after the flood");
    drop(client);
    echo.join().expect("echo thread");
}

/// 5. `fwctl reload --recheck` ends the inbound connections the new rules deny (their packets
///    get the new rule's action) and keeps the others.
#[test]
fn recheck_ends_connections_the_new_rules_deny() {
    let _g = shared();
    let pair = Pair::new();
    let rules = format!(
        "{RULES}\n[[rule]]\nname = \"api\"\nproto = \"tcp\"\nport = 8090\naction = \"allow\"\n"
    );
    let daemon = Daemon::start(&pair.server, &pair.server_if, "generic", &rules);
    let web = listen(&pair.server, sa(pair.server_v4, 8080));
    let api = listen(&pair.server, sa(pair.server_v4, 8090));
    let (mut web_c, mut web_s) = open(&pair.client, &web);
    let (mut api_c, mut api_s) = open(&pair.client, &api);
    both_ways(&mut web_c, &mut web_s, "web before the recheck");
    both_ways(&mut api_c, &mut api_s, "api before the recheck");

    let (l, r) = endpoints(&web_s);
    // A plain reload keeps established flows; --recheck re-judges them.
    daemon.write_rules(&rules.replacen(
        "port = 8080\naction = \"allow\"",
        "port = 8080\naction = \"reject\"",
        1,
    ));
    let reply = daemon.fwctl_json(&["reload", "--recheck"]);
    assert_eq!(reply["rechecked"], true, "{reply}");
    let ended: Vec<&str> = reply["ended"]
        .as_array()
        .expect("ended")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    let web_remote = web_c.local_addr().expect("addr").to_string();
    assert_eq!(
        ended.len(),
        1,
        "only the web connection is denied: {ended:?}"
    );
    assert!(
        ended[0].contains(":8080") && ended[0].contains(&web_remote),
        "the ended connection is named: {ended:?}"
    );
    let flow = find_flow(&daemon, "tcp", &l, &r);
    assert_eq!(flow["denied"], true, "{flow}");

    assert!(
        ended[0].contains("host socket closed"),
        "the host's end is closed too: {ended:?}"
    );
    // The host's application sees the connection end at once...
    assert_host_end_closed(&mut web_s);
    let mut buf = [0u8; 64];
    // ...and the remote side gets a reset (from the host's aborted socket, or the reject rule
    // answering its data); nothing it sends reaches the host any more.
    let _ = web_c.write_all(b"after the recheck");
    web_c.set_read_timeout(Some(IO_WAIT)).expect("timeout");
    match web_c.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(0) => {}
        other => panic!("the remote side should see the connection reset: {other:?}"),
    }
    // The connection the new rules still allow goes on.
    both_ways(&mut api_c, &mut api_s, "api after the recheck");
}

/// 6. A connection ended by `fwctl reload --recheck` with a `stealth` rule stays ended: the
///    host's socket is closed, and the denial outlives `tcp_close`, so nothing the remote
///    sends later (retransmissions, new data) reaches the host or revives the flow.
#[test]
fn recheck_denial_outlives_the_close_timeout() {
    let _g = shared();
    let pair = Pair::new();
    let timeouts = "\n[conntrack.timeouts]\ntcp_close = \"1s\"\n";
    let rules = format!("{RULES}{timeouts}");
    let daemon = Daemon::start(&pair.server, &pair.server_if, "generic", &rules);
    let web = listen(&pair.server, sa(pair.server_v4, 8080));
    let (mut remote_end, mut host_end) = open(&pair.client, &web);
    both_ways(&mut remote_end, &mut host_end, "before the recheck");
    let (l, r) = endpoints(&host_end);

    daemon.write_rules(&format!(
        "{}{timeouts}",
        RULES.replace("action = \"allow\"", "action = \"stealth\"")
    ));
    let reply = daemon.fwctl_json(&["reload", "--recheck"]);
    assert_eq!(
        reply["ended"].as_array().map(Vec::len),
        Some(1),
        "the connection is ended: {reply}"
    );
    assert_host_end_closed(&mut host_end);
    let picked_before = counter(&status(&daemon), "ct_picked_up");
    // Past tcp_close (STEALTH_WAIT > 1 s), the denial still stands.
    std::thread::sleep(STEALTH_WAIT);
    let flow = find_flow(&daemon, "tcp", &l, &r);
    assert_eq!(flow["denied"], true, "still denied after tcp_close: {flow}");
    let _ = remote_end.write_all(b"remote, later");
    let after = status(&daemon);
    assert_eq!(
        counter(&after, "ct_picked_up"),
        picked_before,
        "nothing picked the flow up again"
    );
}

/// 7. `fwctl reload --recheck` also re-judges an inbound session that existed before the
///    daemon started (seeded from the host's sockets): removing the rule that allows SSH and
///    rechecking must end every SSH session, not only those opened while the daemon ran.
#[test]
fn recheck_judges_inbound_sessions_seeded_at_start() {
    let _g = shared();
    let pair = Pair::new();
    let ssh_rule = "\n[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\nport = 2222\naction = \"allow\"\n";
    let ssh = listen(&pair.server, sa(pair.server_v4, 2222));
    let (mut remote_end, mut host_end) = open(&pair.client, &ssh);
    both_ways(&mut remote_end, &mut host_end, "before the daemon starts");

    let daemon = Daemon::start(
        &pair.server,
        &pair.server_if,
        "generic",
        &format!("{RULES}{ssh_rule}"),
    );
    exchange(
        &mut remote_end,
        &mut host_end,
        "after the start, remote first",
    );
    let (l, r) = endpoints(&host_end);
    let seeded = find_flow(&daemon, "tcp", &l, &r);
    assert_eq!(seeded["admitted_by"], "host socket at start-up", "{seeded}");

    // SSH is no longer allowed: the session must end like one opened after the start would.
    daemon.write_rules(&format!(
        "{RULES}{}",
        ssh_rule.replace("\"allow\"", "\"reject\"")
    ));
    let reply = daemon.fwctl_json(&["reload", "--recheck"]);
    let flow = find_flow(&daemon, "tcp", &l, &r);
    let ended: Vec<&str> = reply["ended"]
        .as_array()
        .expect("ended")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(
        ended.iter().any(|e| e.contains(&r)),
        "the recheck must end the inbound SSH session from {r} (seeded at start-up, tracked \
         with origin {}): ended {ended:?}",
        flow["origin"]
    );
    // The host's socket was closed by the recheck; whatever the remote sends now must not
    // reach the host.
    let _ = remote_end.write_all(b"still here?");
    host_end
        .set_read_timeout(Some(STEALTH_WAIT))
        .expect("timeout");
    let mut buf = [0u8; 64];
    if let Ok(n @ 1..) = host_end.read(&mut buf) {
        panic!(
            "data of a session the rules deny reached the host: {:?}",
            &buf[..n]
        );
    }
}

/// 8. The daemon's expiry thread removes timed-out entries by itself, every `gc_interval`.
#[test]
fn the_daemon_collects_expired_flows() {
    let _g = shared();
    let pair = Pair::new();
    let rules = format!(
        "{RULES}\n[conntrack]\ngc_interval = \"1s\"\n[conntrack.timeouts]\nudp_unreplied = \"1s\"\n"
    );
    let daemon = Daemon::start(&pair.server, &pair.server_if, "generic", &rules);
    // A datagram nobody answers: an unreplied flow, expired a second later.
    let sock = udp_bind(&pair.server, sa(pair.server_v4, 0));
    sock.send_to(b"anyone?", sa(pair.client_v4, 9))
        .expect("send");
    let local = sock.local_addr().expect("addr").to_string();
    let flow = find_flow(&daemon, "udp", &local, &format!("{}:9", pair.client_v4));
    assert_eq!(flow["state"], "UNREPLIED", "{flow}");
    let removed_before = counter(&status(&daemon), "ct_daemon_removed");
    // Polls the daemon's own report; the bound covers the timeout plus two collection rounds.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let st = status(&daemon);
        if counter(&st, "ct_daemon_removed") > removed_before {
            let left = conns(&daemon);
            assert!(
                !left.iter().any(|c| c["local"] == local.as_str()),
                "the expired flow is gone: {left:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no expired entry was collected within 5 s: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 9. A connection's rule keeps its name across reloads for as long as the connection lasts,
///    although the names of generations no connection refers to are dropped after each
///    expiry sweep (`daemon/history.rs`).
#[test]
fn a_connection_keeps_its_rules_name_across_reloads() {
    let _g = shared();
    let pair = Pair::new();
    let rules = |port: u16| {
        format!(
            "{}\n[conntrack]\ngc_interval = \"1s\"\n",
            RULES.replace("port = 8080", &format!("port = {port}"))
        )
    };
    let daemon = Daemon::start(&pair.server, &pair.server_if, "generic", &rules(8080));
    let web = listen(&pair.server, sa(pair.server_v4, 8080));
    let (mut c, mut s) = open(&pair.client, &web);
    let (local, remote) = endpoints(&s);
    for port in [8081, 8082, 8083] {
        daemon.write_rules(&rules(port));
        let out = daemon.fwctl(&["reload"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Sweeps run every second and report no connection of the generations in between:
        // waiting for at least one before the next reload lets that reload drop them.
        std::thread::sleep(Duration::from_millis(1500));
    }
    // A control request also drops what the last sweep shows unused.
    let _ = conns(&daemon);
    let flow = find_flow(&daemon, "tcp", &local, &remote);
    assert_eq!(
        flow["admitted_by"], "rule 1 \"web\" (earlier rules)",
        "{flow}"
    );
    both_ways(&mut c, &mut s, "after three reloads");
}
