//! The decision log end to end: the real daemon protects one side of a veth pair between two
//! test namespaces, with its outbound hooks on a test cgroup; decisions are watched through the
//! control socket's `monitor` request and `fwctl monitor`. Nothing is attached outside the
//! namespaces and the cgroup these tests create; the flood is bounded in count and time.

mod support;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, PerCpuArray};
use firewall_common::{Counter, maps};
use firewall_daemon::decision_log::{Event, MonitorFilter, MonitorLine};
use support::{
    daemon::Daemon,
    flood::{Syn, syn_flood},
    netns::Pair,
};

const RULES: &str = r#"
[log]
rate = 20
burst = 10

[defaults]
inbound = "stealth"
outbound = "allow"

[[rule]]
name = "telnet"
proto = "tcp"
port = 23
action = "reject"

[[rule]]
name = "quiet"
proto = "tcp"
port = 24
action = "reject"
log = false

[[rule]]
name = "web"
proto = "tcp"
port = 8080
action = "allow"
log = true

[[rule]]
name = "no smtp out"
direction = "out"
proto = "tcp"
port = 25
action = "reject"
"#;

/// How long a test waits for an event it expects before failing (longer in an emulated guest).
fn event_wait() -> Duration {
    Duration::from_secs(10 * u64::from(support::slowdown()))
}

struct Lab {
    pair: Pair,
    daemon: Daemon,
}

impl Lab {
    fn new(rules: &str) -> Self {
        let pair = Pair::new();
        let daemon = Daemon::start(&pair.server, &pair.server_if, "generic", rules);
        Self { pair, daemon }
    }

    /// A TCP connect from the client to the protected side; its outcome does not matter.
    fn connect(&self, port: u16) {
        let sa = SocketAddr::new(self.pair.server_v4.parse().expect("addr"), port);
        self.pair.client.run(move || {
            let _ = TcpStream::connect_timeout(&sa, Duration::from_millis(300));
        });
    }

    /// A `monitor` subscription made on the control socket directly: returns once the daemon
    /// has answered, which is the moment it is subscribed.
    fn subscribe(&self, filter: MonitorFilter) -> Subscription {
        let mut s = UnixStream::connect(self.daemon.socket()).expect("control socket");
        let req = serde_json::json!({ "cmd": "monitor", "filter": filter });
        writeln!(s, "{req}").expect("sending the request");
        let mut reader = BufReader::new(s.try_clone().expect("clone"));
        let mut answer = String::new();
        reader.read_line(&mut answer).expect("the answer");
        let v: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
        assert_eq!(v["ok"], true, "monitor refused: {answer}");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                let parsed: MonitorLine = serde_json::from_str(&line).expect("a monitor line");
                if tx.send(parsed).is_err() {
                    return;
                }
            }
        });
        Subscription { _stream: s, rx }
    }

    fn counters(&self) -> serde_json::Value {
        self.daemon.fwctl_json(&["status"])["counters"].clone()
    }
}

struct Subscription {
    _stream: UnixStream,
    rx: mpsc::Receiver<MonitorLine>,
}

impl Subscription {
    fn next_event(&self) -> Event {
        match self.rx.recv_timeout(event_wait()) {
            Ok(MonitorLine::Event(e)) => *e,
            Ok(other) => panic!("expected an event, got {other:?}"),
            Err(e) => panic!("no event within {:?}: {e}", event_wait()),
        }
    }
}

fn counter(c: &serde_json::Value, name: &str) -> u64 {
    c[name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name} missing from {c}"))
}

/// A process in the protected namespace, moved into the daemon's cgroup before it connects,
/// so the outbound hooks judge its connect(): `bash`'s /dev/tcp, started once a line arrives
/// on its standard input. It stays until the returned guard drops (so the daemon can still
/// read its executable when it names the event), and says whether it connected.
fn outbound_connect(lab: &Lab, dst: &str, port: u16) -> (String, KillOnDrop) {
    let mut child: Child = lab
        .pair
        .server
        .command("bash")
        .args([
            "-c",
            &format!(
                "read go; (exec 3<>/dev/tcp/{dst}/{port}) 2>/dev/null && echo connected || \
                 echo refused; read bye"
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("bash");
    lab.daemon.cgroup.add(child.id());
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("go");
    let mut out = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut out)
        .expect("bash's answer");
    (out.trim().to_string(), KillOnDrop(child, Some(stdin)))
}

/// A reject, a stealth and an outbound denial each give one event with the fields the README
/// promises; a rule with `log = false` gives none, and an allow rule with `log = true` logs.
#[test]
fn events_carry_the_fields_of_the_decision() {
    let lab = Lab::new(RULES);
    let sub = lab.subscribe(MonitorFilter::default());

    // Rule 2 rejects with `log = false`: no event. The next event is rule 1's, so 2's was
    // not logged (the RST answering it came before the next connect started).
    lab.connect(24);
    lab.connect(23);
    let e = sub.next_event();
    assert_eq!(
        (e.action.as_deref(), e.rule, e.rule_name.as_deref()),
        (Some("reject"), Some(1), Some("telnet")),
        "{e:?}"
    );
    assert_eq!((e.direction.as_str(), e.proto.as_str()), ("in", "tcp"));
    assert_eq!(
        e.local_addr,
        Some(lab.pair.server_v4.parse().expect("addr"))
    );
    assert_eq!(e.local_port, Some(23));
    assert_eq!(
        e.remote_addr,
        lab.pair
            .client_v4
            .parse::<std::net::IpAddr>()
            .expect("addr")
    );
    assert!(e.remote_port.is_some_and(|p| p != 0), "{e:?}");
    assert_eq!(e.interface.as_deref(), Some(lab.pair.server_if.as_str()));
    assert_eq!(e.by, "rule 1 \"telnet\"");
    assert!(e.time.contains('T') && e.time.ends_with('Z'), "{}", e.time);

    // No rule: the default stealth, logged under `[log] denied`.
    lab.connect(9999);
    let e = sub.next_event();
    assert_eq!(
        (e.action.as_deref(), e.rule, e.by.as_str(), e.why.as_str()),
        (Some("stealth"), None, "[defaults] inbound", "default"),
        "{e:?}"
    );
    assert_eq!(e.local_port, Some(9999));

    // An allow rule with `log = true`: its connection's first packet.
    lab.connect(8080);
    let e = sub.next_event();
    assert_eq!(
        (e.action.as_deref(), e.rule_name.as_deref()),
        (Some("allow"), Some("web")),
        "{e:?}"
    );

    // Outbound: the caller is known.
    let (out, _bash) = outbound_connect(&lab, lab.pair.client_v4, 25);
    assert_eq!(out, "refused", "the outbound rule refuses the connect");
    let e = sub.next_event();
    assert_eq!(
        (
            e.direction.as_str(),
            e.action.as_deref(),
            e.rule_name.as_deref()
        ),
        ("out", Some("reject"), Some("no smtp out")),
        "{e:?}"
    );
    assert_eq!(e.remote_port, Some(25));
    assert_eq!(e.local_addr, None);
    assert!(e.pid.is_some_and(|p| p != 0), "{e:?}");
    assert_eq!((e.uid, e.user.as_deref()), (Some(0), Some("root")), "{e:?}");
    let program = e.program.as_deref().unwrap_or_default();
    assert!(program.ends_with("bash"), "program {program:?} in {e:?}");

    // The same decisions went to the daemon's log (stderr outside systemd).
    let log = lab.daemon.stderr();
    assert!(
        log.contains("decision: ") && log.contains("rule 1 \"telnet\""),
        "{log}"
    );
    let c = lab.counters();
    assert_eq!(counter(&c, "log_events"), 4, "{c}");
    assert_eq!(
        counter(&c, "log_over_budget") + counter(&c, "log_ring_full"),
        0
    );
}

/// Per CPU: what the decision log counted on each CPU.
fn per_cpu(lab: &Lab, which: Counter) -> Vec<u64> {
    let data =
        MapData::from_pin(lab.daemon.pin_dir.join(maps::COUNTERS)).expect("the pinned counters");
    let map: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).expect("per-CPU array");
    map.get(&(which as u32), 0)
        .expect("counter")
        .iter()
        .copied()
        .collect()
}

/// Floods the telnet rule from the client namespace (bounded: `n` frames, 5 s at most).
/// Returns the frames sent and how long the flood took.
fn flood(lab: &Lab, port: u16, n: u64) -> (u64, Duration) {
    let src_mac = lab.pair.client.mac(&lab.pair.client_if);
    let dst_mac = lab.pair.server.mac(&lab.pair.server_if);
    let ifname = lab.pair.client_if.clone();
    let dst: Ipv4Addr = lab.pair.server_v4.parse().expect("addr");
    lab.pair.client.run(move || {
        // Each from another source port of the client's address.
        let f = syn_flood(
            &ifname,
            src_mac,
            dst_mac,
            dst,
            port,
            n,
            Duration::from_secs(5),
            |i| Syn {
                src: Ipv4Addr::new(10, 200, 0, 1),
                sport: 20000 + (i % 40000) as u16,
                seq: i as u32,
                ip_id: 0,
            },
        );
        (f.sent, f.elapsed)
    })
}

/// 5,000 SYNs to a reject rule: each CPU logs at most its budget (`burst` + `rate` x the
/// flood's duration), every judged packet is either logged or counted as dropped, and the
/// monitor receives exactly what the kernel logged.
#[test]
fn a_bounded_flood_keeps_the_log_within_its_budget_and_counts_what_it_dropped() {
    let lab = Lab::new(RULES);
    let sub = lab.subscribe(MonitorFilter::default());
    let hits_before = lab.daemon.fwctl_json(&["list"])["rules"][0]["hits"]
        .as_u64()
        .expect("hits");
    let before = lab.counters();
    let t0 = Instant::now();
    let (sent, flood_time) = flood(&lab, 23, 5_000);
    // Every frame sent has been judged once the rule's hit count has them all (XDP runs as
    // the frame is sent on veth; this is a readiness check, not a wait for time to pass).
    let deadline = Instant::now() + event_wait();
    let hits = loop {
        let hits = lab.daemon.fwctl_json(&["list"])["rules"][0]["hits"]
            .as_u64()
            .expect("hits")
            - hits_before;
        if hits >= sent || Instant::now() > deadline {
            break hits;
        }
    };
    let elapsed = t0.elapsed();
    let after = lab.counters();
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    let (logged, over, full) = (
        delta("log_events"),
        delta("log_over_budget"),
        delta("log_ring_full"),
    );
    println!(
        "flood: sent {sent} in {flood_time:?}, judged {hits}, logged {logged}, over budget \
         {over}, ring full {full} ({elapsed:?} until counted)"
    );
    assert!(sent >= 4_000, "the flood sent {sent} of 5000 frames");
    assert_eq!(hits, sent, "every frame judged by the telnet rule");
    assert_eq!(
        logged + over + full,
        hits,
        "each decision logged or counted as dropped"
    );
    assert_eq!(full, 0, "20 events a second never fill the ring");
    // The budget, per CPU (each CPU has its own bucket, full at the start).
    let (rate, burst) = (20.0, 10.0);
    let bound = burst + rate * elapsed.as_secs_f64();
    let events = per_cpu(&lab, Counter::LogEvents);
    let cpus_used = events.iter().filter(|&&n| n > 0).count().max(1);
    for (cpu, &n) in events.iter().enumerate() {
        assert!(
            n as f64 <= bound.floor(),
            "CPU {cpu} logged {n} events, its budget is {bound:.1}"
        );
    }
    assert!(
        logged as f64 <= cpus_used as f64 * bound,
        "{logged} events over {cpus_used} CPU(s), budget {bound:.1} each"
    );
    assert!(logged >= burst as u64, "the burst was logged: {logged}");
    assert_eq!(
        over,
        sent - logged,
        "the over-budget counter is what was dropped"
    );
    // Every event the kernel wrote reaches the monitor.
    let mut received = 0;
    while received < logged {
        match sub.rx.recv_timeout(event_wait()) {
            Ok(MonitorLine::Event(e)) => {
                assert_eq!(e.rule_name.as_deref(), Some("telnet"), "{e:?}");
                received += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("{received} of {logged} events received: {e}"),
        }
    }
}

/// `fwctl monitor --json` with filters: only what they let through is printed; the human form
/// is one line per event.
#[test]
fn fwctl_monitor_prints_what_its_filters_let_through() {
    let lab = Lab::new(RULES);
    let spawn = |args: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fwctl"))
            .arg("--socket")
            .arg(lab.daemon.socket())
            .arg("monitor")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fwctl monitor");
        // Ready once it says so on stderr (it is subscribed by then).
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        err.read_line(&mut line).expect("fwctl's first line");
        assert!(line.contains("monitoring decisions"), "{line}");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (KillOnDrop(child, None), rx)
    };
    let (_json, json) = spawn(&["--json", "--action", "reject", "--port", "23"]);
    let (_human, human) = spawn(&["--rule", "telnet", "--direction", "in"]);
    // Filtered out by both: the default stealth, and a reject of another port (which logs).
    lab.connect(9999);
    let (out, _bash) = outbound_connect(&lab, lab.pair.client_v4, 25);
    assert_eq!(out, "refused");
    lab.connect(23);
    let line = json.recv_timeout(event_wait()).expect("a JSON event");
    let e: Event = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(
        (e.action.as_deref(), e.local_port, e.rule_name.as_deref()),
        (Some("reject"), Some(23), Some("telnet")),
        "{line}"
    );
    let line = human.recv_timeout(event_wait()).expect("a line");
    let want = format!("in reject tcp {}:", lab.pair.client_v4);
    let tail = format!(
        " -> {}:23 {} rule 1 \"telnet\"",
        lab.pair.server_v4, lab.pair.server_if
    );
    assert!(line.contains(&want) && line.ends_with(&tail), "{line}");
}

/// A child process killed (by its PID, through `Child::kill`) when the test ends; its standard
/// input, if kept, is closed first.
struct KillOnDrop(Child, Option<std::process::ChildStdin>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        drop(self.1.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A monitor client that never reads holds up nothing: the daemon answers other requests and
/// other monitors at once, and the stuck client, once it reads, is told how many events it
/// missed.
#[test]
fn a_monitor_that_never_reads_does_not_stall_the_daemon() {
    let lab = Lab::new(
        "[log]\nrate = 100000\nburst = 100000\n\n[[rule]]\nname = \"telnet\"\nproto = \"tcp\"\n\
         port = 23\naction = \"reject\"\n",
    );
    let mut stuck = UnixStream::connect(lab.daemon.socket()).expect("control socket");
    // A small receive buffer, so the daemon's writes block soon.
    let small: libc::c_int = 4096;
    // SAFETY: a valid socket and a c_int option of its size.
    unsafe {
        libc::setsockopt(
            stuck.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const small).cast(),
            size_of::<libc::c_int>() as u32,
        );
    }
    writeln!(stuck, "{}", serde_json::json!({ "cmd": "monitor" })).expect("request");
    // More events than its socket buffers (about 1,400 events here) and the channel's backlog
    // hold together, with room to spare: floods of 5,000 SYNs (each bounded in time) until the
    // kernel has logged enough, at most twenty.
    let enough = 4 * firewall_daemon::decision_log::MONITOR_BACKLOG as u64;
    let mut floods = 0;
    while counter(&lab.counters(), "log_events") < enough {
        assert!(
            floods < 20,
            "twenty floods logged fewer than {enough} events"
        );
        let (sent, _) = flood(&lab, 23, 5_000);
        assert!(sent >= 4_000, "sent {sent}");
        floods += 1;
    }
    // The daemon still answers at once, and a second monitor gets new events.
    let t = Instant::now();
    let status = lab.daemon.fwctl_json(&["status"]);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "status took {:?}",
        t.elapsed()
    );
    assert!(counter(&status["counters"], "log_events") > 0, "{status}");
    let sub = lab.subscribe(MonitorFilter::default());
    lab.connect(23);
    let e = sub.next_event();
    assert_eq!(e.rule_name.as_deref(), Some("telnet"));
    // The stuck client reads now: its answer, the events that fitted, then how many it lost.
    stuck
        .set_read_timeout(Some(event_wait()))
        .expect("read timeout");
    let mut reader = BufReader::new(&mut stuck);
    let mut lost = None;
    let mut line = String::new();
    let mut lines = 0;
    while lost.is_none() {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .expect("reading the stuck monitor");
        assert!(
            n > 0,
            "the daemon closed the stuck monitor after {lines} lines"
        );
        lines += 1;
        if lines == 1 {
            assert!(line.contains("\"ok\":true"), "{line}");
            continue;
        }
        if let Ok(MonitorLine::Lost { count }) = serde_json::from_str(&line) {
            lost = Some(count);
        }
    }
    let lost = lost.expect("a lost line");
    println!(
        "stuck monitor: {floods} flood(s); {lines} lines read, then told {lost} events were lost"
    );
    assert!(lost > 0);
}

/// `monitor --conns`: an expired flow is reported `closed` when the expiry removes it, and a
/// connection `fwctl reload --recheck` ends is reported `denied`, with the rule that denies it.
#[test]
fn connection_events_report_new_established_expired_and_rechecked_flows() {
    let rules = "[conntrack]\ngc_interval = \"1s\"\n\n[conntrack.timeouts]\nudp_unreplied = \"1s\"\n\n\
                 [[rule]]\nname = \"dns\"\nproto = \"udp\"\nport = 5353\naction = \"allow\"\n\n\
                 [[rule]]\nname = \"web\"\nproto = \"tcp\"\nport = 8080\naction = \"allow\"\n";
    let lab = Lab::new(rules);
    let sub = lab.subscribe(MonitorFilter {
        conns: true,
        ..Default::default()
    });
    let wait_for = |conn: &str, port: u16| -> Event {
        let deadline = Instant::now() + event_wait();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match sub.rx.recv_timeout(left) {
                Ok(MonitorLine::Event(e))
                    if e.conn.as_deref() == Some(conn) && e.local_port == Some(port) =>
                {
                    return *e;
                }
                Ok(_) => {}
                Err(e) => panic!(
                    "no {conn} event for port {port} within {:?}: {e}",
                    event_wait()
                ),
            }
        }
    };

    // One datagram: an unreplied flow, expired after 1 s, removed within the next second.
    let server: std::net::IpAddr = lab.pair.server_v4.parse().expect("addr");
    lab.pair.client.run(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
        s.send_to(b"hello", SocketAddr::new(server, 5353))
            .expect("sending a datagram");
    });
    let e = wait_for("closed", 5353);
    assert_eq!(
        (e.kind.as_str(), e.proto.as_str(), e.direction.as_str()),
        ("conn", "udp", "in")
    );
    assert_eq!(
        e.remote_addr,
        lab.pair
            .client_v4
            .parse::<std::net::IpAddr>()
            .expect("addr")
    );

    // An established connection, then rules that reject its port, rechecked.
    let listen = SocketAddr::new(server, 8080);
    let listener = lab
        .pair
        .server
        .run(move || std::net::TcpListener::bind(listen))
        .expect("a test server");
    let accepted = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let client = lab
        .pair
        .client
        .run(move || TcpStream::connect_timeout(&listen, Duration::from_secs(2)))
        .expect("connecting to the allowed port");
    let _server_side = accepted.join().expect("accept thread").expect("accepted");
    // The watcher took its first look within a quarter second of the subscription, long before
    // the UDP flow above expired: this connection is new to it.
    let e = wait_for("new", 8080);
    assert_eq!(
        (e.proto.as_str(), e.direction.as_str(), e.why.as_str()),
        ("tcp", "in", "tracked")
    );
    wait_for("established", 8080);
    lab.daemon.write_rules(&rules.replace(
        "name = \"web\"\nproto = \"tcp\"\nport = 8080\naction = \"allow\"",
        "name = \"web closed\"\nproto = \"tcp\"\nport = 8080\naction = \"reject\"",
    ));
    let out = lab.daemon.fwctl(&["reload", "--recheck"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = wait_for("denied", 8080);
    assert_eq!(
        (e.action.as_deref(), e.by.as_str(), e.why.as_str()),
        (Some("reject"), "rule 2 \"web closed\"", "recheck"),
        "{e:?}"
    );
    drop(client);
}

/// `fwctl debug on` loads the rules in force again with the programs' trace messages, which
/// reach the daemon's log in words; `fwctl debug off` removes them again.
#[test]
fn kernel_tracing_writes_the_programs_messages_to_the_log_only_while_on() {
    let lab = Lab::new(RULES);
    let d = lab.daemon.fwctl_json(&["debug", "on"]);
    assert_eq!(
        (d["tracing"].as_bool(), d["generation"].as_u64()),
        (Some(true), Some(2))
    );
    let features = lab.daemon.fwctl_json(&["status"])["kernel"]["features"].to_string();
    assert!(features.contains("kernel tracing ON"), "{features}");
    lab.connect(23);
    let verdict = format!(
        "trace: rules: tcp from {} to port 23: reject by rule 1",
        lab.pair.client_v4
    );
    let deadline = Instant::now() + event_wait();
    while !lab.daemon.stderr().contains(&verdict) {
        assert!(
            Instant::now() < deadline,
            "no trace of the verdict in the daemon's log:\n{}",
            lab.daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        lab.daemon
            .stderr()
            .contains("trace: connection table: not tracked: the rules decide"),
        "{}",
        lab.daemon.stderr()
    );

    let d = lab.daemon.fwctl_json(&["debug", "off"]);
    assert_eq!(d["tracing"], false);
    let traced = lab.daemon.stderr().matches("trace: ").count();
    // The decision log says when the next packet has been judged; tracing adds nothing.
    let sub = lab.subscribe(MonitorFilter::default());
    lab.connect(23);
    let e = sub.next_event();
    assert_eq!(e.local_port, Some(23), "{e:?}");
    assert_eq!(
        lab.daemon.stderr().matches("trace: ").count(),
        traced,
        "trace messages after `fwctl debug off`:\n{}",
        lab.daemon.stderr()
    );
    let features = lab.daemon.fwctl_json(&["status"])["kernel"]["features"].to_string();
    assert!(!features.contains("kernel tracing ON"), "{features}");
}
