//! Outbound rules, end to end, with real sockets: the daemon protects one side of a veth pair
//! and attaches its outbound hooks to a cgroup made for the test; a helper process (this test
//! binary again, see [`helper_process`]) is moved into that cgroup and, from inside the
//! protected namespace, connects and sends to listeners in the other namespace. cgroup
//! sock_addr programs cannot run under BPF_PROG_TEST_RUN, so this is how the hooks are tested.
//!
//! For every family (IPv4, IPv6, IPv4-mapped on an IPv6 socket) × call (TCP connect, UDP
//! connect + send, UDP sendto) × action × match kind (port, remote, remote + port, proto only,
//! default) the kernel's outcome must be what the oracle (`Policy::decide_out`) predicts:
//! allow = the connection or datagram arrives; reject = EPERM at once; stealth = the call
//! succeeds and nothing arrives (the TCP connect stays pending while a later allowed one
//! completes; the UDP datagram never arrives while a later allowed one does). A second helper
//! outside the cgroup makes the same calls and is never affected.
//!
//! Needs root. Everything is created by the tests and removed afterwards, also on failure:
//! namespaces (`NetNs`), a private bpffs, and the cgroup (`TestCgroup`, which moves the
//! helpers back out before removing it).

mod support;

use std::{
    collections::{BTreeMap, HashSet},
    io::{BufRead as _, Write as _},
    net::{SocketAddr, TcpListener, UdpSocket},
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use rules::{
    config,
    model::{Action, ConnectMeta, PacketProto},
    policy::{Decision, Policy},
};
use support::{daemon::Daemon, netns::Pair};

/// Environment variable that turns this test binary into the helper process.
const HELPER_ENV: &str = "FW_OUTBOUND_HELPER_NETNS";
/// Allowed connections and datagrams must arrive within this (scaled under emulation).
const ARRIVE: Duration = Duration::from_secs(5);

fn arrive() -> Duration {
    ARRIVE * support::slowdown()
}
/// A refused call must fail within this (it fails in the system call itself).
const REFUSE_FAST: Duration = Duration::from_millis(200);
/// How long held (stealth) TCP connects are watched at the end of a round: more than the
/// first SYN retransmission (1 s), so a leak shows even if the first SYN was lost.
const STEALTH_WATCH_MS: u64 = 1500;
/// A TCP connect held by stealth must have failed with ETIMEDOUT within this. The kernel
/// retries a SYN its own egress dropped every 500 ms and gives up after about 5 s (Linux
/// 6.18), instead of the two minutes a SYN lost further away takes.
const STEALTH_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The helper process.

/// Not a test: when [`HELPER_ENV`] is set, this test binary is the helper process, which enters
/// the namespace named there and runs the commands it reads on stdin (one per line, answered
/// by one `@@ ...` line on stdout). In a normal test run it returns at once.
#[test]
fn helper_process() {
    let Some(ns) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    support::netns::enter(&ns.to_string_lossy());
    // `udpfill` keeps thousands of sockets open.
    let files = libc::rlimit {
        rlim_cur: 20_000,
        rlim_max: 20_000,
    };
    // SAFETY: a valid rlimit for this process.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &files) } != 0 {
        eprintln!("helper: could not raise RLIMIT_NOFILE");
    }
    let mut held: Vec<helper::Held> = Vec::new();
    let mut udp: Vec<OwnedFd> = Vec::new();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines().map_while(Result::ok) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let reply = match w.as_slice() {
            ["tcp", addr, port, wait_ms] => helper::tcp(addr, port, wait_ms, &mut held),
            ["udpc", addr, port, token] => helper::udp_connect(addr, port, token, &mut udp),
            ["udpt", addr, port, token] => helper::udp_sendto(addr, port, token),
            ["udpsend", index, token] => helper::udp_send_again(index, token, &udp),
            ["udpfill", addr, first, sockets, each, keep] => {
                helper::udp_fill(addr, first, sockets, each, *keep == "keep", &mut udp)
            }
            ["held", wait_ms] => helper::held(wait_ms, &mut held),
            _ => format!("err unknown command {line:?}"),
        };
        println!("@@ {reply}");
        let _ = std::io::stdout().flush();
    }
    std::process::exit(0);
}

mod helper {
    use std::{
        net::{IpAddr, SocketAddr},
        os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
        time::Instant,
    };

    use super::poll_fd;
    use nix::{
        errno::Errno,
        sys::socket::{
            AddressFamily, MsgFlags, SockFlag, SockType, SockaddrStorage, connect, getsockopt,
            send, sendto, socket, sockopt,
        },
    };

    fn target(addr: &str, port: &str) -> (AddressFamily, SockaddrStorage) {
        let ip: IpAddr = addr.parse().expect("address");
        let port: u16 = port.parse().expect("port");
        let family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        (family, SockaddrStorage::from(SocketAddr::new(ip, port)))
    }

    fn outcome(r: Result<(), Errno>, t: Instant) -> String {
        let us = t.elapsed().as_micros();
        match r {
            Ok(()) => format!("ok {us}"),
            Err(Errno::EPERM) => format!("eperm {us}"),
            Err(e) => format!("err {e} {us}"),
        }
    }

    /// A connect that did not complete: its socket, and how it ended once it did.
    pub struct Held {
        fd: OwnedFd,
        end: Option<String>,
    }

    /// A non-blocking connect, waited for up to `wait_ms`: `ok`, `eperm`, `pending` (the socket
    /// is kept, see [`held`]) or `err`.
    pub fn tcp(addr: &str, port: &str, wait_ms: &str, held: &mut Vec<Held>) -> String {
        let (family, sa) = target(addr, port);
        let wait: u16 = wait_ms.parse().expect("wait");
        let fd = socket(family, SockType::Stream, SockFlag::SOCK_NONBLOCK, None).expect("socket");
        let t = Instant::now();
        match connect(fd.as_raw_fd(), &sa) {
            Ok(()) => return outcome(Ok(()), t),
            Err(Errno::EINPROGRESS) => {}
            Err(e) => return outcome(Err(e), t),
        }
        if !poll_fd(fd.as_fd(), libc::POLLOUT, u64::from(wait)) {
            held.push(Held { fd, end: None });
            return format!("pending {}", t.elapsed().as_micros());
        }
        match getsockopt(&fd, sockopt::SocketError) {
            Ok(0) => outcome(Ok(()), t),
            Ok(e) => outcome(Err(Errno::from_raw(e)), t),
            Err(e) => outcome(Err(e), t),
        }
    }

    /// connect() then send() on a UDP socket, which is kept for [`udp_send_again`]: `ok N`
    /// (N = its index) or the error of the first call that failed.
    pub fn udp_connect(addr: &str, port: &str, token: &str, keep: &mut Vec<OwnedFd>) -> String {
        let (family, sa) = target(addr, port);
        let fd = socket(family, SockType::Datagram, SockFlag::empty(), None).expect("socket");
        let t = Instant::now();
        if let Err(e) = connect(fd.as_raw_fd(), &sa) {
            return outcome(Err(e), t);
        }
        let r = send(fd.as_raw_fd(), token.as_bytes(), MsgFlags::empty()).map(|_| ());
        let out = outcome(r, t);
        keep.push(fd);
        format!("{out} {}", keep.len() - 1)
    }

    pub fn udp_send_again(index: &str, token: &str, keep: &[OwnedFd]) -> String {
        let fd = &keep[index.parse::<usize>().expect("index")];
        let t = Instant::now();
        outcome(
            send(fd.as_raw_fd(), token.as_bytes(), MsgFlags::empty()).map(|_| ()),
            t,
        )
    }

    /// sendto() on a new, unconnected UDP socket.
    pub fn udp_sendto(addr: &str, port: &str, token: &str) -> String {
        let (family, sa) = target(addr, port);
        let fd = socket(family, SockType::Datagram, SockFlag::empty(), None).expect("socket");
        let t = Instant::now();
        outcome(
            sendto(fd.as_raw_fd(), token.as_bytes(), &sa, MsgFlags::empty()).map(|_| ()),
            t,
        )
    }

    /// `sockets` unconnected UDP sockets, each sending to `each` ports of `addr` (ports from
    /// `first` on, each port once), kept open (`keep`) or closed at the end (a process holding
    /// many destinations): `sent N refused M other K`.
    pub fn udp_fill(
        addr: &str,
        first: &str,
        sockets: &str,
        each: &str,
        keep_open: bool,
        keep: &mut Vec<OwnedFd>,
    ) -> String {
        let first: u32 = first.parse().expect("first port");
        let sockets: u32 = sockets.parse().expect("sockets");
        let each: u32 = each.parse().expect("each");
        let (family, _) = target(addr, "0");
        let (mut sent, mut refused, mut other) = (0, 0, 0);
        let mut port = first;
        for _ in 0..sockets {
            let fd = socket(family, SockType::Datagram, SockFlag::empty(), None).expect("socket");
            for _ in 0..each {
                let (_, sa) = target(addr, &port.to_string());
                port += 1;
                match sendto(fd.as_raw_fd(), b"fill", &sa, MsgFlags::empty()) {
                    Ok(_) => sent += 1,
                    Err(Errno::EPERM) => refused += 1,
                    Err(_) => other += 1,
                }
            }
            if keep_open {
                keep.push(fd);
            }
        }
        format!("sent {sent} refused {refused} other {other}")
    }

    /// Watches the pending TCP connects for up to `wait_ms` (returning early once none is
    /// pending): one letter per connect, in order: `p` still pending, `c` connected, `t`
    /// failed with ETIMEDOUT, `x` failed otherwise (then the errors follow).
    pub fn held(wait_ms: &str, held: &mut [Held]) -> String {
        let wait: u64 = wait_ms.parse().expect("wait");
        let deadline = Instant::now() + std::time::Duration::from_millis(wait);
        loop {
            for h in held.iter_mut().filter(|h| h.end.is_none()) {
                if !poll_fd(h.fd.as_fd(), libc::POLLOUT, 0) {
                    continue;
                }
                // SO_ERROR is reported once: remember it.
                h.end = Some(match getsockopt(&h.fd, sockopt::SocketError) {
                    Ok(0) => "connected".into(),
                    Ok(e) => Errno::from_raw(e).to_string(),
                    Err(e) => e.to_string(),
                });
            }
            let pending = held.iter().any(|h| h.end.is_none());
            if !pending || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut letters = String::new();
        let mut errors = Vec::new();
        for h in held.iter() {
            letters.push(match h.end.as_deref() {
                None => 'p',
                Some("connected") => 'c',
                Some(e) if e.starts_with("ETIMEDOUT") => 't',
                Some(e) => {
                    errors.push(e.to_string());
                    'x'
                }
            });
        }
        format!("held {letters} {errors:?}")
    }
}

/// The helper, seen from the test: a child process in the protected namespace, moved into the
/// daemon's cgroup or not.
struct Helper(support::helper::Helper);

impl Helper {
    fn spawn(netns: &str) -> Self {
        let exe = std::env::current_exe().expect("test binary");
        Self(support::helper::Helper::spawn(
            &exe,
            "helper_process",
            &[(HELPER_ENV, netns.to_string())],
        ))
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }

    fn call(&mut self, cmd: &str) -> String {
        self.0.call_within(cmd, Duration::from_secs(30))
    }
}

/// What a helper reported for one call.
#[derive(Debug, PartialEq, Eq)]
enum Reported {
    Ok(Duration),
    Eperm(Duration),
    Pending,
    Other(String),
}

fn parse_reply(r: &str) -> Reported {
    let w: Vec<&str> = r.split_whitespace().collect();
    let us = |s: &str| Duration::from_micros(s.parse().unwrap_or(0));
    match w.as_slice() {
        ["ok", t, ..] => Reported::Ok(us(t)),
        ["eperm", t, ..] => Reported::Eperm(us(t)),
        ["pending", ..] => Reported::Pending,
        _ => Reported::Other(r.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// The peer: listeners in the unprotected namespace.

/// Waits up to `ms` for `events` on `fd`.
fn poll_fd(fd: std::os::fd::BorrowedFd<'_>, events: libc::c_short, ms: u64) -> bool {
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        events,
        revents: 0,
    };
    let ms = i32::try_from(ms).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, count 1.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0
}

fn poll_in(fd: std::os::fd::BorrowedFd<'_>, ms: u64) -> bool {
    poll_fd(fd, libc::POLLIN, ms)
}

#[derive(Default)]
struct Peer {
    tcp: BTreeMap<u16, TcpListener>,
    udp: BTreeMap<u16, UdpSocket>,
    /// Every UDP token received, on any port.
    seen: HashSet<String>,
}

impl Peer {
    /// Dual-stack listeners (`[::]`, so IPv4 arrives too) on `port`, TCP and UDP.
    fn listen(&mut self, pair: &Pair, port: u16) {
        if self.tcp.contains_key(&port) {
            return;
        }
        let (t, u) = pair.client.run(move || {
            let sa: SocketAddr = format!("[::]:{port}").parse().expect("addr");
            (
                TcpListener::bind(sa).expect("tcp listener"),
                UdpSocket::bind(sa).expect("udp socket"),
            )
        });
        t.set_nonblocking(true).expect("nonblocking");
        u.set_nonblocking(true).expect("nonblocking");
        self.tcp.insert(port, t);
        self.udp.insert(port, u);
    }

    /// Accepts one connection on `port` within `wait`.
    fn accept(&self, port: u16, wait: Duration) -> bool {
        let l = &self.tcp[&port];
        let deadline = Instant::now() + wait;
        loop {
            if l.accept().is_ok() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !poll_in(l.as_fd(), left.as_millis() as u64) {
                return l.accept().is_ok();
            }
        }
    }

    /// Connections waiting on `port` now (accepting them).
    fn waiting(&self, port: u16) -> usize {
        let mut n = 0;
        while self.tcp[&port].accept().is_ok() {
            n += 1;
        }
        n
    }

    fn drain(&mut self, port: u16) {
        let mut buf = [0u8; 256];
        while let Ok(n) = self.udp[&port].recv(&mut buf) {
            self.seen
                .insert(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    /// Waits up to `wait` for `token` on `port`.
    fn received(&mut self, port: u16, token: &str, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            self.drain(port);
            if self.seen.contains(token) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            poll_in(self.udp[&port].as_fd(), left.as_millis() as u64);
        }
    }

    fn drain_all(&mut self) {
        let ports: Vec<u16> = self.udp.keys().copied().collect();
        for p in ports {
            self.drain(p);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The table.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
    /// An IPv4 destination given to an IPv6 socket as `::ffff:a.b.c.d`.
    V4Mapped,
}

const FAMILIES: [Family; 3] = [Family::V4, Family::V6, Family::V4Mapped];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Tcp,
    UdpConnect,
    UdpSendto,
}

const CALLS: [Call; 3] = [Call::Tcp, Call::UdpConnect, Call::UdpSendto];

impl Call {
    fn proto(self) -> &'static str {
        match self {
            Call::Tcp => "tcp",
            _ => "udp",
        }
    }
}

const ACTIONS: [Action; 3] = [Action::Allow, Action::Reject, Action::Stealth];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Port,
    Remote,
    RemotePort,
    ProtoOnly,
    Default,
}

fn fi(f: Family) -> u16 {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
        Family::V4Mapped => 2,
    }
}

fn pi(proto: &str) -> u16 {
    u16::from(proto == "udp")
}

fn ai(a: Action) -> u16 {
    match a {
        Action::Allow => 0,
        Action::Reject => 1,
        Action::Stealth => 2,
    }
}

/// Host part of the peer's extra addresses (10.200.0.N, fd00:200::N).
fn remote_host(kind: Kind, proto: &str, action: Action) -> u16 {
    let base = match kind {
        Kind::Remote => 10,
        _ => 20,
    };
    base + pi(proto) * 3 + ai(action)
}

fn v4(host: u16) -> String {
    format!("10.200.0.{host}")
}

fn v6(host: u16) -> String {
    format!("fd00:200::{host:x}")
}

/// The destination address as the helper is given it, and as the rules name it.
fn dest_addr(f: Family, host: u16) -> (String, String) {
    match f {
        Family::V4 => (v4(host), v4(host)),
        Family::V6 => (v6(host), v6(host)),
        Family::V4Mapped => (format!("::ffff:{}", v4(host)), v4(host)),
    }
}

/// The peer's own address (10.200.0.1 / fd00:200::1).
const PEER_HOST: u16 = 1;
/// The allowed destinations used as "a later allowed one" probes.
const PROBE_PORT: u16 = 29000;

fn port_of(kind: Kind, f: Family, proto: &str, action: Action, round: u16) -> u16 {
    let k = match kind {
        Kind::Port => 21000,
        Kind::Remote => 22000,
        Kind::RemotePort => 23000,
        Kind::ProtoOnly | Kind::Default => 30000 + round * 1000,
    };
    k + fi(f) * 100 + pi(proto) * 10 + ai(action)
}

/// One row: a call, the destination, and what decides it.
#[derive(Clone, Debug)]
struct Case {
    family: Family,
    call: Call,
    action: Action,
    kind: Kind,
    /// As given to the helper.
    addr: String,
    port: u16,
}

impl Case {
    fn meta(&self) -> ConnectMeta {
        ConnectMeta {
            remote: self.addr.parse().expect("address"),
            proto: match self.call {
                Call::Tcp => PacketProto::Tcp,
                _ => PacketProto::Udp,
            },
            remote_port: self.port,
        }
    }
}

/// The rules of round `round` (0..6): every port / remote / remote + port rule, then a
/// proto-only rule and the default, whose action and protocol change from round to round.
/// Returns the file and the cases it decides (the port / remote / remote + port cases in round
/// 0 only). The first rules stay the same in every round, so that the sockets they hold by
/// stealth stay held across the reloads.
fn round_rules(round: u16) -> (String, Vec<Case>) {
    let po_action = ACTIONS[(round / 2) as usize];
    let po_proto = ["tcp", "udp"][(round % 2) as usize];
    let mut text = format!(
        "[defaults]\ninbound = \"stealth\"\noutbound = \"{po_action}\"\n\n\
         [[rule]]\nname = \"probe\"\ndirection = \"out\"\nport = {PROBE_PORT}\n\
         remote = [\"{}\", \"{}\"]\naction = \"allow\"\n",
        v4(PEER_HOST),
        v6(PEER_HOST)
    );
    let mut cases = Vec::new();
    let push = |cases: &mut Vec<Case>, f: Family, action: Action, kind: Kind, host: u16| {
        for call in CALLS {
            let proto = call.proto();
            if kind == Kind::ProtoOnly && proto != po_proto {
                continue;
            }
            if kind == Kind::Default && proto == po_proto {
                continue;
            }
            let host = if matches!(kind, Kind::Remote | Kind::RemotePort) {
                remote_host(kind, proto, action)
            } else {
                host
            };
            cases.push(Case {
                family: f,
                call,
                action,
                kind,
                addr: dest_addr(f, host).0,
                port: port_of(kind, f, proto, action, round),
            });
        }
    };
    {
        for proto in ["tcp", "udp"] {
            for action in ACTIONS {
                let ports: Vec<String> = FAMILIES
                    .iter()
                    .map(|f| port_of(Kind::Port, *f, proto, action, 0).to_string())
                    .collect();
                text.push_str(&format!(
                    "\n[[rule]]\nname = \"port {proto} {action}\"\ndirection = \"out\"\n\
                     proto = \"{proto}\"\nport = [{}]\naction = \"{action}\"\n",
                    ports.join(", ")
                ));
                let h = remote_host(Kind::Remote, proto, action);
                text.push_str(&format!(
                    "\n[[rule]]\nname = \"remote {proto} {action}\"\ndirection = \"out\"\n\
                     remote = [\"{}\", \"{}\"]\naction = \"{action}\"\n",
                    v4(h),
                    v6(h)
                ));
                let h = remote_host(Kind::RemotePort, proto, action);
                let ports: Vec<String> = FAMILIES
                    .iter()
                    .map(|f| port_of(Kind::RemotePort, *f, proto, action, 0).to_string())
                    .collect();
                text.push_str(&format!(
                    "\n[[rule]]\nname = \"pair {proto} {action}\"\ndirection = \"out\"\n\
                     proto = \"{proto}\"\nport = [{}]\nremote = [\"{}\", \"{}\"]\n\
                     action = \"{action}\"\n",
                    ports.join(", "),
                    v4(h),
                    v6(h)
                ));
            }
        }
        for f in FAMILIES.iter().filter(|_| round == 0) {
            for action in ACTIONS {
                push(&mut cases, *f, action, Kind::Port, PEER_HOST);
                push(&mut cases, *f, action, Kind::Remote, 0);
                push(&mut cases, *f, action, Kind::RemotePort, 0);
            }
        }
    }
    text.push_str(&format!(
        "\n[[rule]]\nname = \"only {po_proto}\"\ndirection = \"out\"\nproto = \"{po_proto}\"\n\
         action = \"{po_action}\"\n"
    ));
    for f in FAMILIES {
        push(&mut cases, f, po_action, Kind::ProtoOnly, PEER_HOST);
        push(&mut cases, f, po_action, Kind::Default, PEER_HOST);
    }
    // Inbound rules too, which must not decide any outbound call.
    text.push_str("\n[[rule]]\nname = \"inbound all\"\naction = \"reject\"\n");
    (text, cases)
}

/// The namespaces, the daemon, the peer's listeners and the two helpers (dropped in this
/// order: helpers first, namespaces last).
struct Lab {
    inside: Helper,
    outside: Helper,
    peer: Peer,
    daemon: Daemon,
    pair: Pair,
}

impl Lab {
    fn new(rules: &str) -> Self {
        let pair = Pair::new();
        for host in (10..16).chain(20..26) {
            pair.client.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", v4(host)),
                "dev",
                &pair.client_if,
            ]);
            pair.client.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{}/64", v6(host)),
                "dev",
                &pair.client_if,
                "nodad",
            ]);
        }
        let daemon = Daemon::start(&pair.server, &pair.server_if, "generic", rules);
        let inside = Helper::spawn(&pair.server.path());
        daemon.cgroup.add(inside.pid());
        let outside = Helper::spawn(&pair.server.path());
        assert!(
            daemon.cgroup.procs() == [inside.pid()],
            "exactly the inside helper is in the test cgroup: {:?}",
            daemon.cgroup.procs()
        );
        let mut peer = Peer::default();
        peer.listen(&pair, PROBE_PORT);
        Self {
            inside,
            outside,
            peer,
            daemon,
            pair,
        }
    }

    fn reload(&self, rules: &str) {
        self.daemon.write_rules(rules);
        let out = self.daemon.fwctl(&["reload"]);
        assert!(
            out.status.success(),
            "reload failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An allowed datagram and connection from the inside helper, received: every packet
    /// the helper sent before has had its chance to arrive.
    fn probe(&mut self, token: &str) {
        for addr in [v4(PEER_HOST), v6(PEER_HOST)] {
            let r = self
                .inside
                .call(&format!("udpt {addr} {PROBE_PORT} {token}-{addr}"));
            assert!(matches!(parse_reply(&r), Reported::Ok(_)), "probe: {r}");
            assert!(
                self.peer
                    .received(PROBE_PORT, &format!("{token}-{addr}"), arrive()),
                "the probe datagram to {addr} did not arrive"
            );
            let r = self.inside.call(&format!("tcp {addr} {PROBE_PORT} 5000"));
            assert!(matches!(parse_reply(&r), Reported::Ok(_)), "probe: {r}");
            assert!(self.peer.accept(PROBE_PORT, arrive()), "probe connect");
        }
    }
}

/// Runs one case from `helper`; returns what the kernel did, read from the call and the peer.
fn run_case(
    helper: &mut Helper,
    peer: &mut Peer,
    case: &Case,
    token: &str,
    expect: Action,
) -> (Action, String) {
    let (addr, port) = (&case.addr, case.port);
    let reply = match case.call {
        Call::Tcp => {
            // Wait for an allowed connect; a held one is watched at the end of the round.
            let wait = if expect == Action::Allow { 5000 } else { 0 };
            helper.call(&format!("tcp {addr} {port} {wait}"))
        }
        Call::UdpConnect => helper.call(&format!("udpc {addr} {port} {token}")),
        Call::UdpSendto => helper.call(&format!("udpt {addr} {port} {token}")),
    };
    let got = match parse_reply(&reply) {
        Reported::Eperm(t) => {
            assert!(
                t < REFUSE_FAST * support::slowdown(),
                "{case:?}: EPERM took {t:?}"
            );
            Action::Reject
        }
        Reported::Pending => Action::Stealth,
        Reported::Ok(_) => match case.call {
            Call::Tcp if expect == Action::Allow => {
                assert!(
                    peer.accept(port, arrive()),
                    "{case:?}: connected, never accepted"
                );
                Action::Allow
            }
            // A non-blocking connect that completed at once would be a bug (veth is not that
            // fast): count it as allowed.
            Call::Tcp => Action::Allow,
            // A datagram: allowed if it arrives. Waiting for a datagram that should not come
            // is left to the end of the round (after a later allowed one arrived).
            _ if expect == Action::Allow => {
                if peer.received(port, token, arrive()) {
                    Action::Allow
                } else {
                    Action::Stealth
                }
            }
            _ => Action::Stealth,
        },
        Reported::Other(r) => panic!("{case:?}: unexpected result {r}"),
    };
    (got, reply)
}

#[test]
fn every_family_call_action_and_match_kind_agrees_with_the_oracle() {
    let (text0, _) = round_rules(0);
    let mut lab = Lab::new(&text0);
    let mut rule_hits_checked = 0;
    let mut all_held = Vec::new();
    for round in 0..6u16 {
        let (text, cases) = round_rules(round);
        if round > 0 {
            lab.reload(&text);
        }
        let ruleset =
            config::parse(&text, Path::new("outbound-table.toml")).expect("test rules parse");
        let policy = Policy::new(&ruleset);
        for case in &cases {
            lab.peer.listen(&lab.pair, case.port);
        }
        let mut held = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            assert_eq!(
                case.addr.starts_with("::ffff:"),
                case.family == Family::V4Mapped,
                "{case:?}"
            );
            let d: Decision = policy.decide_out(&case.meta());
            // The oracle decides what the table says, by the rule of the intended kind.
            assert_eq!(d.action, case.action, "oracle, {case:?}");
            assert_eq!(
                d.rule.is_none(),
                case.kind == Kind::Default,
                "oracle rule {d:?}, {case:?}"
            );
            if let Some(r) = d.rule {
                let name = &ruleset.rules[r as usize].name;
                let want = match case.kind {
                    Kind::Port => "port ",
                    Kind::Remote => "remote ",
                    Kind::RemotePort => "pair ",
                    _ => "only ",
                };
                assert!(name.starts_with(want), "{case:?} decided by {name}");
            }
            let token = format!("r{round}-c{i}");
            let (got, reply) = run_case(&mut lab.inside, &mut lab.peer, case, &token, d.action);
            assert_eq!(got, d.action, "kernel vs oracle: {case:?} -> {reply}");
            // `fwctl explain` asks the daemon's rules in force: the same answer, same rule.
            let proto = if case.call == Call::Tcp { "tcp" } else { "udp" };
            let port = case.port.to_string();
            let e = lab
                .daemon
                .fwctl_json(&["explain", "out", proto, &case.addr, &port]);
            assert_eq!(
                (e["action"].as_str(), e["rule"].as_u64()),
                (
                    Some(got.to_string().as_str()),
                    d.rule.map(|r| u64::from(r) + 1)
                ),
                "fwctl explain vs kernel: {case:?}: {e:#}"
            );
            if got == Action::Stealth {
                held.push((case.clone(), token));
            }
        }
        // Stealth: a later allowed datagram and connection arrive, the held ones never do:
        // each held connect is still pending or has timed out.
        lab.probe(&format!("probe{round}"));
        all_held.extend(
            held.iter()
                .filter(|(c, _)| c.call == Call::Tcp)
                .map(|(c, _)| c.clone()),
        );
        let r = lab.inside.call(&format!("held {STEALTH_WATCH_MS}"));
        assert!(
            !r.contains('c') && !r.contains('x'),
            "a connect held by stealth did not stay held: {r}; held in order: {all_held:#?}"
        );
        lab.peer.drain_all();
        for (case, token) in &held {
            match case.call {
                Call::Tcp => assert_eq!(lab.peer.waiting(case.port), 0, "{case:?} arrived"),
                _ => assert!(!lab.peer.seen.contains(token), "{case:?}: {token} arrived"),
            }
        }
        // Refused and held calls never arrived either: the listeners of those cases are empty.
        for case in cases.iter().filter(|c| c.action != Action::Allow) {
            assert_eq!(
                lab.peer.waiting(case.port),
                0,
                "{case:?}: a connection arrived"
            );
        }

        // The same calls from outside the cgroup are never judged: all of them arrive.
        for (i, case) in cases.iter().enumerate() {
            if case.action == Action::Allow {
                continue;
            }
            let token = format!("r{round}-outside-{i}");
            let (got, reply) =
                run_case(&mut lab.outside, &mut lab.peer, case, &token, Action::Allow);
            assert_eq!(
                got,
                Action::Allow,
                "outside the cgroup: {case:?} -> {reply}"
            );
        }

        if round == 0 {
            // fwctl list: every outbound rule of the table decided calls.
            let list = lab.daemon.fwctl_json(&["list"]);
            for r in list["rules"].as_array().expect("rules") {
                let name = r["name"].as_str().unwrap_or("");
                if r["direction"] == "out" && name != "probe" && !name.starts_with("only ") {
                    assert!(r["hits"].as_u64().unwrap_or(0) > 0, "no hits: {r}");
                    rule_hits_checked += 1;
                }
            }
        }
    }
    assert_eq!(rule_hits_checked, 18);
    // Every held connect ends the way a black hole ends it: "Connection timed out".
    let t0 = Instant::now();
    loop {
        let r = lab.inside.call("held 1000");
        assert!(!r.contains('c') && !r.contains('x'), "{r}");
        if !r.contains('p') {
            eprintln!("every held connect timed out: {r}");
            break;
        }
        assert!(
            t0.elapsed() < STEALTH_TIMEOUT * support::slowdown(),
            "held connects did not time out: {r}"
        );
    }
    let status = lab.daemon.fwctl_json(&["status"]);
    let c = &status["counters"];
    for name in [
        "out_judged",
        "out_allowed",
        "out_rejected",
        "out_stealthed",
        "out_default_verdict",
        "out_stealth_dropped",
    ] {
        assert!(c[name].as_u64().unwrap_or(0) > 0, "{name}: {status}");
    }
    assert_eq!(c["out_stealth_record_failed"], 0, "{status}");
    assert_eq!(
        status["outbound"]["cgroup"],
        lab.daemon.cgroup.path().display().to_string(),
        "{status}"
    );
    let hooks = status["outbound"]["hooks"].as_array().expect("hooks");
    assert_eq!(hooks.len(), 4, "{status}");
    assert!(hooks.iter().all(|h| h["state"] == "ok"), "{status}");
}

/// Loopback is never judged: with `[defaults] outbound = "reject"`, local services stay
/// reachable over 127.0.0.1, ::1 and ::ffff:127.0.0.1, while the same call to the peer fails.
#[test]
fn loopback_destinations_are_always_allowed() {
    let rules = "[defaults]\noutbound = \"reject\"\n";
    let mut lab = Lab::new(rules);
    let ruleset = config::parse(rules, Path::new("loopback.toml")).expect("parse");
    let policy = Policy::new(&ruleset);
    let port = 7100;
    let (tl, ul) = lab.pair.server.run(move || {
        let sa: SocketAddr = format!("[::]:{port}").parse().expect("addr");
        (
            TcpListener::bind(sa).expect("listener"),
            UdpSocket::bind(sa).expect("udp"),
        )
    });
    ul.set_read_timeout(Some(arrive())).expect("timeout");
    for addr in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
        let meta = ConnectMeta {
            remote: addr.parse().expect("addr"),
            proto: PacketProto::Tcp,
            remote_port: port,
        };
        assert_eq!(
            policy.decide_out(&meta),
            Decision {
                action: Action::Allow,
                rule: None
            }
        );
        let r = lab.inside.call(&format!("tcp {addr} {port} 5000"));
        assert!(matches!(parse_reply(&r), Reported::Ok(_)), "{addr}: {r}");
        tl.accept().expect("accepted over loopback");
        let r = lab.inside.call(&format!("udpt {addr} {port} lo-{addr}"));
        assert!(matches!(parse_reply(&r), Reported::Ok(_)), "{addr}: {r}");
        let mut buf = [0u8; 64];
        let n = ul.recv(&mut buf).expect("datagram over loopback");
        assert_eq!(&buf[..n], format!("lo-{addr}").as_bytes());
    }
    lab.peer.listen(&lab.pair, port);
    let r = lab.inside.call(&format!("tcp {} {port} 0", v4(PEER_HOST)));
    assert!(matches!(parse_reply(&r), Reported::Eperm(_)), "{r}");
    let status = lab.daemon.fwctl_json(&["status"]);
    assert!(
        status["counters"]["out_loopback"].as_u64().unwrap_or(0) >= 8,
        "{status}"
    );
}

const ALLOW_7000: &str = "[defaults]\noutbound = \"stealth\"\n\n[[rule]]\nname = \"web out\"\n\
                          direction = \"out\"\nproto = \"tcp\"\nport = 7000\naction = \"allow\"\n\n\
                          [[rule]]\nname = \"dns out\"\ndirection = \"out\"\nproto = \"udp\"\n\
                          port = 7001\naction = \"allow\"\n";

fn reject_7000(extra: &str) -> String {
    ALLOW_7000.replace(
        "port = 7000\naction = \"allow\"",
        &format!("port = 7000\naction = \"reject\"{extra}"),
    )
}

/// Reloads change the verdict of the next call; an invalid file keeps the rules in force; a
/// socket held by stealth is released when the new rules allow its destination; the hooks
/// survive the daemon (pinned), are adopted by the next one, and `on_stop = "detach"` removes
/// them.
#[test]
fn reloads_restarts_and_on_stop() {
    let mut lab = Lab::new(ALLOW_7000);
    lab.peer.listen(&lab.pair, 7000);
    lab.peer.listen(&lab.pair, 7001);
    lab.peer.listen(&lab.pair, 7002);
    let peer4 = v4(PEER_HOST);
    let connect = |lab: &mut Lab, port: u16, wait: u16| {
        parse_reply(&lab.inside.call(&format!("tcp {peer4} {port} {wait}")))
    };
    assert!(matches!(connect(&mut lab, 7000, 5000), Reported::Ok(_)));
    assert!(lab.peer.accept(7000, arrive()));

    // A UDP socket held by the default (stealth), connected to 7002.
    let r = lab.inside.call(&format!("udpc {peer4} 7002 held-before"));
    let index = r.split_whitespace().last().expect("index").to_string();
    assert!(matches!(parse_reply(&r), Reported::Ok(_)), "{r}");

    // Allowed -> rejected: the next connect fails at once.
    lab.reload(&reject_7000(""));
    assert!(matches!(connect(&mut lab, 7000, 0), Reported::Eperm(_)));

    // An invalid file changes nothing.
    lab.daemon.write_rules(&format!(
        "{ALLOW_7000}\n[[rule]]\nport = 70000\naction = \"allow\"\n"
    ));
    let out = lab.daemon.fwctl(&["reload"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an invalid file must fail the reload"
    );
    assert!(matches!(connect(&mut lab, 7000, 0), Reported::Eperm(_)));
    let r = lab.inside.call(&format!("udpt {peer4} 7001 still-allowed"));
    assert!(matches!(parse_reply(&r), Reported::Ok(_)), "{r}");
    assert!(lab.peer.received(7001, "still-allowed", arrive()));

    // The held UDP socket: still held under rules that still stealth 7002 ...
    let r = lab.inside.call(&format!("udpsend {index} held-still"));
    assert!(matches!(parse_reply(&r), Reported::Ok(_)), "{r}");
    // ... and released by a reload that allows 7002: its next datagram arrives.
    lab.reload(&format!(
        "{}\n[[rule]]\nname = \"7002\"\ndirection = \"out\"\nport = 7002\naction = \"allow\"\n",
        reject_7000("")
    ));
    let r = lab.inside.call(&format!("udpsend {index} held-released"));
    assert!(matches!(parse_reply(&r), Reported::Ok(_)), "{r}");
    assert!(lab.peer.received(7002, "held-released", arrive()));
    lab.peer.drain_all();
    assert!(!lab.peer.seen.contains("held-before"));
    assert!(!lab.peer.seen.contains("held-still"));
    lab.reload(&reject_7000(""));

    // The daemon dies: the pinned hooks go on enforcing; the next daemon adopts them.
    lab.daemon.kill_hard();
    assert!(matches!(connect(&mut lab, 7000, 0), Reported::Eperm(_)));
    lab.daemon.restart();
    let status = lab.daemon.fwctl_json(&["status"]);
    let hooks = status["outbound"]["hooks"].as_array().expect("hooks");
    assert!(hooks.iter().all(|h| h["state"] == "ok"), "{status}");
    assert!(
        lab.daemon
            .stderr()
            .contains("connect4: adopting the pinned attachment"),
        "{}",
        lab.daemon.stderr()
    );
    assert!(matches!(connect(&mut lab, 7000, 0), Reported::Eperm(_)));
    // Four outbound hooks and the three that keep the listener table, each pinned once.
    let mut pins: Vec<String> = std::fs::read_dir(lab.daemon.pin_dir.join("links"))
        .expect("links")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cgroup-"))
        .collect();
    pins.sort();
    assert_eq!(
        pins,
        [
            "cgroup-connect4",
            "cgroup-connect6",
            "cgroup-post_bind4",
            "cgroup-post_bind6",
            "cgroup-sendmsg4",
            "cgroup-sendmsg6",
            "cgroup-sock_release"
        ]
    );

    // on_stop = "keep" (default): a clean stop keeps the hooks.
    let st = lab.daemon.terminate();
    assert!(st.success(), "{st}");
    assert!(matches!(connect(&mut lab, 7000, 0), Reported::Eperm(_)));
    lab.daemon.restart();

    // on_stop = "detach": a clean stop removes them; the same connect goes through.
    lab.reload(&reject_7000("\n\n[daemon]\non_stop = \"detach\""));
    assert!(matches!(connect(&mut lab, 7000, 0), Reported::Eperm(_)));
    let st = lab.daemon.terminate();
    assert!(st.success(), "{st}");
    assert!(matches!(connect(&mut lab, 7000, 5000), Reported::Ok(_)));
    assert!(lab.peer.accept(7000, arrive()));
}

/// A socket held by `stealth` stays held whatever else is held: holds are never forgotten to
/// make room (the table was an LRU, and one process sending to 65,536 held destinations
/// pushed a connected socket's hold out, after which its send()s, which run no hook, left).
/// A call that cannot be held (the table full) is refused instead, and a closed socket's
/// holds are forgotten.
#[test]
fn a_held_socket_stays_held_however_many_others_are_held() {
    let mut lab = Lab::new(ALLOW_7000);
    lab.peer.listen(&lab.pair, 7002);
    let (peer4, peer6) = (v4(PEER_HOST), v6(PEER_HOST));
    let r = lab.inside.call(&format!("udpc {peer4} 7002 victim-before"));
    assert!(matches!(parse_reply(&r), Reported::Ok(_)), "{r}");
    let index = r.split_whitespace().last().expect("index").to_string();
    let counts = |r: &str| -> (u32, u32, u32) {
        let w: Vec<u32> = r
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(w.len(), 3, "{r}");
        (w[0], w[1], w[2])
    };

    // Three times the table's room (65,536) in holds, from sockets closed after (their holds
    // go with them), then more than the room from sockets kept open.
    for _ in 0..3 {
        for addr in [&peer4, &peer6] {
            let (sent, _, other) = counts(
                &lab.inside
                    .call(&format!("udpfill {addr} 2000 8 4100 close")),
            );
            assert_eq!(
                (sent, other),
                (8 * 4100, 0),
                "closed sockets' holds are forgotten"
            );
        }
    }
    let mut sent = 0;
    let mut refused = 0;
    for addr in [&peer4, &peer6] {
        let (s, r, other) = counts(&lab.inside.call(&format!("udpfill {addr} 2000 4100 8 keep")));
        assert_eq!(other, 0);
        sent += s;
        refused += r;
    }
    let r = lab.inside.call(&format!("udpsend {index} victim-after"));
    assert!(matches!(parse_reply(&r), Reported::Ok(_)), "{r}");
    assert!(
        !lab.peer.received(
            7002,
            "victim-after",
            Duration::from_millis(STEALTH_WATCH_MS)
        ),
        "the held socket's datagram left"
    );
    assert!(!lab.peer.seen.contains("victim-before"));
    assert!(
        // (A hash's room is its size and a few spare entries per CPU.)
        refused > 0 && sent + refused == 2 * 4100 * 8,
        "the calls that found the table full were refused: {sent} held, {refused} refused"
    );
}

/// Reloads judge held sockets again and release only those the new rules allow: rules that
/// now refuse the destination keep the socket held, even when they say `stealth` nowhere (the
/// egress program then goes on looking for held sockets).
#[test]
fn a_reload_that_refuses_a_held_destination_keeps_it_held() {
    let mut lab = Lab::new(ALLOW_7000);
    lab.peer.listen(&lab.pair, 7002);
    let peer4 = v4(PEER_HOST);
    let r = lab.inside.call(&format!("udpc {peer4} 7002 held-before"));
    assert!(matches!(parse_reply(&r), Reported::Ok(_)), "{r}");
    let index = r.split_whitespace().last().expect("index").to_string();
    // No stealth left anywhere: 7002 is refused, everything else allowed.
    lab.reload(
        "[defaults]\noutbound = \"allow\"\n\n[[rule]]\nname = \"7002\"\ndirection = \"out\"\n\
         port = 7002\naction = \"reject\"\n",
    );
    let r = lab.inside.call(&format!("udpc {peer4} 7002 new-socket"));
    assert!(matches!(parse_reply(&r), Reported::Eperm(_)), "{r}");
    let r = lab.inside.call(&format!("udpsend {index} held-after"));
    assert!(matches!(parse_reply(&r), Reported::Ok(_)), "{r}");
    assert!(
        !lab.peer
            .received(7002, "held-after", Duration::from_millis(STEALTH_WATCH_MS)),
        "the held socket was released by rules that refuse its destination"
    );
    // Rules that allow it release it.
    lab.reload("[defaults]\noutbound = \"allow\"\n");
    let r = lab.inside.call(&format!("udpsend {index} released"));
    assert!(matches!(parse_reply(&r), Reported::Ok(_)), "{r}");
    assert!(lab.peer.received(7002, "released", arrive()));
    assert!(!lab.peer.seen.contains("held-before") && !lab.peer.seen.contains("held-after"));
}

/// A `[daemon] cgroup` that is not a cgroup v2 directory stops the daemon with a clear message,
/// before anything is attached.
#[test]
fn cgroup_must_be_a_cgroup2_directory() {
    let pair = Pair::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("rules.toml");
    std::fs::write(&cfg, "[defaults]\noutbound = \"reject\"\n").expect("write");
    let (mount, _) = support::cgroup::cgroup2_mount();
    for (cgroup, words) in [
        (dir.path().to_path_buf(), "is not a cgroup v2 directory"),
        (cfg.clone(), "is not a directory"),
        (mount.join("fw-test-does-not-exist"), "No such file"),
    ] {
        let err = support::daemon::refused_start(&pair.server, &pair.server_if, &cfg, &cgroup);
        assert!(
            err.contains(words) && err.contains(&mount.display().to_string()),
            "{}: {err}",
            cgroup.display()
        );
    }
}

/// The outbound hooks run in the calling task, where the XDP program (in a softirq on
/// interrupt exit) or, on a preemptible kernel, another task's hook can run on the same CPU in
/// the middle of one. A per-CPU scratch map the hooks shared with the XDP program let an
/// arriving packet's address, port and listener stand in for a connect()'s destination and
/// caller (`firewall-ebpf/src/scratch.rs`). That race cannot be made to happen at will in a
/// test; what rules it out can be checked: the kernel says which maps each loaded program
/// uses. The per-CPU maps a hook shares with a packet program must be those where a lost
/// update costs a count, and the hooks' own room (`OUT_SCRATCH`, guarded against other tasks'
/// hooks) must be theirs alone.
#[test]
fn the_hooks_share_no_per_cpu_room_with_the_packet_programs() {
    use aya::maps::{MapInfo, MapType};
    use firewall_daemon::kernel::{Hook, OutboundGeneration};

    const ONLY_COUNTS: [&str; 3] = ["COUNTERS", "RULE_HITS", "LOG_BUDGET"];
    let fs = support::bpffs::BpfFs::new();
    let pin = fs.pin_dir("fw");
    // Every path of the hooks is in the program whatever the rules: these name a program, a
    // user and a name, so that each kind of lookup is at least configured.
    let text = "[[rule]]\ndirection = \"out\"\nprogram = \"/usr/bin/env\"\nproto = \"tcp\"\n\
                port = 443\nremote = [\"*.example.test\"]\naction = \"allow\"\n\n[[rule]]\n\
                direction = \"out\"\nremote = [\"*.example.test\"]\naction = \"reject\"\n";
    let ruleset = config::parse(text, Path::new("hooks.toml")).expect("the test rules");
    let inbound = support::lab::Loaded::new(&ruleset, &pin, text);
    // Resolved as the daemon resolves them: the selectors' code is then verified, not pruned.
    let resolved = firewall_daemon::host::selectors::Resolved::resolve(&ruleset, Path::new("/"));
    let out = firewall_daemon::compile::compile_direction(
        &ruleset,
        rules::model::Direction::Out,
        &resolved,
    )
    .expect("compiling the outbound rules");
    let mut hooks = OutboundGeneration::load(&out, &ruleset, &pin, 1)
        .unwrap_or_else(|e| panic!("loading the hooks: {e:#}"));
    let per_cpu_maps = |id: u32| -> Option<Vec<String>> {
        let info = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == id)
            .expect("the kernel lists the loaded program");
        let ids = info.map_ids().expect("the program's maps")?;
        Some(
            ids.into_iter()
                .map(|id| MapInfo::from_id(id).expect("a map the program uses"))
                .filter(|m| {
                    matches!(
                        m.map_type(),
                        Ok(MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash)
                    )
                })
                .map(|m| m.name_as_str().unwrap_or("?").to_owned())
                .collect(),
        )
    };
    let mut packet_programs = Vec::new();
    for (name, id) in inbound.generation.program_ids() {
        let Some(maps) = per_cpu_maps(id) else {
            eprintln!("SKIPPED: this kernel does not say which maps a program uses");
            return;
        };
        packet_programs.push((name, maps));
    }
    assert!(
        packet_programs
            .iter()
            .any(|(_, maps)| maps.iter().any(|m| m == "SCRATCH")),
        "the check sees the packet programs' scratch maps: {packet_programs:?}"
    );
    for hook in Hook::ALL {
        let id = hooks.program_id(hook).expect("the hook's program id");
        let Some(per_cpu) = per_cpu_maps(id) else {
            eprintln!("SKIPPED: this kernel does not say which maps a program uses");
            return;
        };
        // The check sees the maps it is about: the counters are per-CPU and every hook counts.
        assert!(
            per_cpu.iter().any(|m| m == "COUNTERS"),
            "{hook:?}: the kernel listed {per_cpu:?}"
        );
        for (name, maps) in &packet_programs {
            let shared: Vec<&String> = per_cpu
                .iter()
                .filter(|m| maps.contains(m) && !ONLY_COUNTS.contains(&m.as_str()))
                .collect();
            assert!(
                shared.is_empty(),
                "{hook:?} keeps state in per-CPU maps {shared:?} that {name} uses too: it can \
                 overwrite them in the middle of the hook"
            );
        }
        let unguarded: Vec<&String> = per_cpu
            .iter()
            .filter(|m| !ONLY_COUNTS.contains(&m.as_str()) && *m != "OUT_SCRATCH")
            .collect();
        assert!(
            unguarded.is_empty(),
            "{hook:?} keeps state in per-CPU maps {unguarded:?}: another task's hook can \
             overwrite it in the middle of the hook"
        );
    }
}
