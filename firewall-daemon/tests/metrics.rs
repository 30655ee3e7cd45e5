//! `[metrics]`, end to end: the real daemon protects one side of a veth pair between two test
//! namespaces and serves its metrics on 127.0.0.1 inside that namespace; connections from the
//! other side show in the rule's counter, Prometheus (Debian's package, run in the namespace)
//! scrapes them, the textfile passes `promtool check metrics`, and scrapers that hang do not
//! hold the daemon. Nothing is attached outside the namespaces these tests create.

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use support::{
    daemon::Daemon,
    netns::{NetNs, Pair},
};

const METRICS: &str = "127.0.0.1:9741";

fn rules(textfile: &std::path::Path) -> String {
    format!(
        r#"
[defaults]
inbound = "stealth"

[metrics]
listen = "{METRICS}"
textfile = "{}"
interval = "1s"

[[rule]]
name = "web"
proto = "tcp"
port = 8080
action = "allow"
"#,
        textfile.display()
    )
}

/// A GET inside `ns`: the status line and the body.
fn get(ns: &NetNs, addr: &'static str, request: String) -> (String, String) {
    ns.run(move || {
        let mut s = TcpStream::connect(addr).expect("connecting to the metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.write_all(request.as_bytes()).expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("answer");
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        (head.to_string(), body.to_string())
    })
}

fn request(method: &str, path: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: firewall\r\nConnection: close\r\n\r\n")
}

/// Ends a process this test started, by PID, when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn installed(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_endpoint_serves_every_counter_and_prometheus_scrapes_it() {
    let pair = Pair::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let textfile = dir.path().join("firewall.prom");
    let daemon = Daemon::start(&pair.server, &pair.server_if, "generic", &rules(&textfile));
    let addr: SocketAddr = format!("{}:8080", pair.server_v4).parse().expect("addr");
    let _listener = pair
        .server
        .run(move || TcpListener::bind(addr))
        .expect("bind");
    for _ in 0..3 {
        pair.client
            .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
            .expect("the rule allows 8080");
    }

    let (head, body) = get(&pair.server, METRICS, request("GET", "/metrics"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    for want in [
        "# TYPE firewall_datapath counter",
        "firewall_rule_decisions_total{rule=\"1\",name=\"web\",direction=\"in\",action=\"allow\"} 3\n",
        "firewall_rules{direction=\"in\"} 1\n",
        "firewall_conntrack_capacity{table=\"confirmed\"} 262144\n",
        "firewall_reloads_total{result=\"ok\"} 0\n",
        "firewall_generation 1\n",
        "firewall_interfaces_protected 1\n",
        "firewall_connections{program=\"unknown\",origin=\"remote\"} 3\n",
    ] {
        assert!(body.contains(want), "{want:?} missing:\n{body}");
    }
    assert!(body.ends_with("# EOF\n"), "{body}");
    let allowed = body
        .lines()
        .find_map(|l| l.strip_prefix("firewall_datapath_total{counter=\"allowed\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(allowed >= Some(3), "{body}");
    let (head, _) = get(&pair.server, METRICS, request("GET", "/"));
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = get(&pair.server, METRICS, request("POST", "/metrics"));
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");

    // node_exporter's textfile: Prometheus's text format, which promtool accepts.
    let start = Instant::now();
    while !textfile.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&textfile).expect("the textfile is written");
    assert!(
        text.contains("# TYPE firewall_datapath_total counter") && !text.contains("# EOF"),
        "{text}"
    );
    if installed("promtool") {
        let mut check = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        check
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("writing");
        let out = check.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("SKIPPED promtool check: promtool is not installed (Debian package prometheus)");
    }

    if installed("prometheus") {
        scraped_by_prometheus(&pair.server, dir.path());
    } else {
        eprintln!(
            "SKIPPED the Prometheus scrape: prometheus is not installed (Debian package \
             prometheus; .ci/run installs it)"
        );
    }

    // A reload is counted, and the rule's decisions start again with the new rules.
    let out = daemon.fwctl(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let (_, body) = get(&pair.server, METRICS, request("GET", "/metrics"));
    assert!(
        body.contains("firewall_reloads_total{result=\"ok\"} 1\n"),
        "{body}"
    );
}

/// Prometheus, in the namespace, scrapes the endpoint every second; its query API returns the
/// rule's counter.
fn scraped_by_prometheus(ns: &NetNs, dir: &std::path::Path) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: firewall\n    \
             static_configs:\n      - targets: [\"{METRICS}\"]\n"
        ),
    )
    .expect("prometheus.yml");
    let child = ns
        .command("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg("--web.listen-address=127.0.0.1:19090")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting prometheus");
    let _prometheus = Started(child);
    let query = request(
        "GET",
        "/api/v1/query?query=firewall_rule_decisions_total%7Bname%3D%22web%22%7D",
    );
    let start = Instant::now();
    let mut last = String::new();
    // Prometheus's readiness is its answer: polled until a scrape is in, or 60 s.
    while start.elapsed() < Duration::from_secs(60) {
        let q = query.clone();
        let answer = ns.run(move || {
            let mut s = TcpStream::connect("127.0.0.1:19090").ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(q.as_bytes()).ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        });
        if let Some(a) = answer {
            if let Some((_, body)) = a.split_once("\r\n\r\n")
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(body)
                && let Some(value) = v["data"]["result"][0]["value"][1].as_str()
            {
                assert_eq!(value, "3", "{v:#}");
                assert_eq!(v["data"]["result"][0]["metric"]["job"], "firewall", "{v:#}");
                return;
            }
            last = a;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("Prometheus never had the rule's counter; last answer:\n{last}");
}

/// Connections that send nothing hold only their own task: the control socket answers at once,
/// and a scrape gets through once they time out.
#[test]
fn scrapers_that_hang_do_not_hold_the_daemon() {
    let pair = Pair::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(
        &pair.server,
        &pair.server_if,
        "generic",
        &rules(&dir.path().join("firewall.prom")),
    );
    let idle: Vec<TcpStream> = (0..10)
        .map(|_| {
            pair.server
                .run(|| TcpStream::connect(METRICS))
                .expect("an idle connection")
        })
        .collect();
    let start = Instant::now();
    let status = daemon.fwctl_json(&["status"]);
    assert!(status["generation"].as_u64() == Some(1), "{status:#}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "fwctl status took {:?} with idle metrics connections open",
        start.elapsed()
    );
    let start = Instant::now();
    let (head, _) = get(&pair.server, METRICS, request("GET", "/metrics"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Four idle connections hold the endpoint until their 5 s header timeout, no longer.
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "the scrape waited {:?}",
        start.elapsed()
    );
    drop(idle);
}
