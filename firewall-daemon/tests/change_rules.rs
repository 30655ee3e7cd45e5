//! Changing rules without fear, end to end: the real daemon protects one side of a veth pair
//! between two test namespaces, and `fwctl explain`, `ports`, `reload --dry-run`, `check
//! --diff`, `reload --confirm` / `confirm`, the lockout guard and `[[assert]]` are checked
//! against what the kernel does to real connections (and nmap) from the other side. Nothing
//! is attached outside the namespaces these tests create.

mod support;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use support::{daemon::Daemon, netns::Pair};

const RULES: &str = r#"
[defaults]
inbound = "stealth"

[[rule]]
name = "web"
proto = "tcp"
port = 8080
action = "allow"

[[rule]]
name = "admins"
proto = "tcp"
port = 8081
remote = "10.200.0.0/30"
action = "allow"

[[rule]]
name = "closed"
proto = "tcp"
port = [8081, 8082]
action = "reject"

[[assert]]
in = "tcp 8080"
expect = "allow"
"#;

/// RULES without the rule for 8080 (and without the assertion about it).
const WITHOUT_WEB: &str = r#"
[defaults]
inbound = "stealth"

[[rule]]
name = "admins"
proto = "tcp"
port = 8081
remote = "10.200.0.0/30"
action = "allow"

[[rule]]
name = "closed"
proto = "tcp"
port = [8081, 8082]
action = "reject"
"#;

const PORTS: [u16; 4] = [8080, 8081, 8082, 8083];

struct Lab {
    pair: Pair,
    daemon: Daemon,
    _listeners: Vec<TcpListener>,
}

impl Lab {
    fn new(rules: &str) -> Self {
        let pair = Pair::new();
        let daemon = Daemon::start(&pair.server, &pair.server_if, "generic", rules);
        // Every port listens, so "closed" comes from the firewall, not from the stack.
        let mut listeners = Vec::new();
        for addr in [pair.server_v4, pair.server_v6] {
            for port in PORTS {
                let sa = SocketAddr::new(addr.parse().expect("address"), port);
                listeners.push(
                    pair.server
                        .run(move || TcpListener::bind(sa))
                        .expect("bind"),
                );
            }
        }
        Self {
            pair,
            daemon,
            _listeners: listeners,
        }
    }

    /// What a connection from the client sees: allow (accepted), reject (refused at once) or
    /// stealth (no answer).
    fn observed(&self, addr: &str, port: u16) -> &'static str {
        let sa = SocketAddr::new(addr.parse().expect("address"), port);
        self.pair.client.run(move || {
            match TcpStream::connect_timeout(&sa, Duration::from_millis(1500)) {
                Ok(_) => "allow",
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "reject",
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => "stealth",
                Err(e) => panic!("connecting to {sa}: {e}"),
            }
        })
    }

    fn status(&self) -> serde_json::Value {
        self.daemon.fwctl_json(&["status"])
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `fwctl explain` gives the verdict the kernel gives, for each port and both families, and
/// names the winner and the rule it shadows; `fwctl ports` agrees with nmap from the client.
#[test]
fn explain_and_ports_agree_with_the_kernel_and_nmap() {
    let lab = Lab::new(RULES);
    for (client, server) in [
        (lab.pair.client_v4, lab.pair.server_v4),
        (lab.pair.client_v6, lab.pair.server_v6),
    ] {
        for port in PORTS {
            let e = lab
                .daemon
                .fwctl_json(&["explain", "in", "tcp", client, &port.to_string()]);
            let seen = lab.observed(server, port);
            assert_eq!(
                e["action"], seen,
                "explain from {client} to {port} says {e:#}, the kernel did {seen}"
            );
        }
    }
    // The winner for 8081 from the admin network, and the reject rule it shadows.
    let e = lab
        .daemon
        .fwctl_json(&["explain", "in", "tcp", lab.pair.client_v4, "8081"]);
    assert_eq!(
        (e["rule"].as_u64(), e["name"].as_str()),
        (Some(2), Some("admins")),
        "{e:#}"
    );
    assert_eq!(e["shadowed"][0]["name"], "closed", "{e:#}");
    let out = lab
        .daemon
        .fwctl(&["explain", "in", "tcp", "198.51.100.7", "8081"]);
    assert!(out.status.success());
    let t = text(&out);
    assert!(
        t.contains("in tcp 8081 from 198.51.100.7: reject by rule 3 \"closed\""),
        "{t}"
    );

    // ports: the exposure of each IPv4 listener, checked against nmap from the client.
    let ports = lab.daemon.fwctl_json(&["ports"]);
    let exposure = |port: u16| {
        ports["sockets"]
            .as_array()
            .expect("sockets")
            .iter()
            .find(|s| s["local"] == format!("{}:{port}", lab.pair.server_v4))
            .unwrap_or_else(|| panic!("no socket on {port} in {ports:#}"))["exposure"][0]
            .clone()
    };
    let e8080 = exposure(8080);
    assert_eq!(e8080["everyone"], true, "{e8080:#}");
    let e8081 = exposure(8081);
    assert!(
        e8081["allowed"][0]
            .as_str()
            .is_some_and(|a| a.starts_with("10.200.0.0/30")),
        "{e8081:#}"
    );
    assert_eq!(exposure(8082)["nobody"], true);
    let e8083 = exposure(8083);
    assert_eq!(e8083["nobody"], true);
    assert_eq!(
        e8083["others"][0], "stealth by [defaults] inbound",
        "{e8083:#}"
    );

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
            "-oG",
            "-",
            "-p",
            "8080-8083",
        ])
        .arg(lab.pair.server_v4)
        .output()
        .expect("running nmap (cargo xtask setup installs it)");
    let nmap = String::from_utf8_lossy(&out.stdout);
    for (port, state) in [
        (8080, "open"),
        (8081, "open"),
        (8082, "closed"),
        (8083, "filtered"),
    ] {
        assert!(
            nmap.contains(&format!("{port}/{state}/tcp")),
            "nmap should see {port} {state}:\n{nmap}"
        );
    }
}

/// A reload whose rules break an `[[assert]]` is refused and the old rules stay; `fwctl
/// check` fails on it too; `fwctl reload --json` prints the error as JSON.
#[test]
fn a_broken_assertion_keeps_the_old_rules() {
    let lab = Lab::new(RULES);
    let broken = WITHOUT_WEB.to_owned() + "\n[[assert]]\nin = \"tcp 8080\"\nexpect = \"allow\"\n";
    lab.daemon.write_rules(&broken);
    let out = lab.daemon.fwctl(&["reload", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON error on stdout");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        v["ok"] == false && error.contains("assertion does not hold: in tcp 8080 from 0.0.0.0"),
        "{v:#}"
    );
    let s = lab.status();
    assert_eq!(
        (s["rules"].as_u64(), s["generation"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(lab.observed(lab.pair.server_v4, 8080), "allow");
    let check = lab
        .daemon
        .fwctl(&["check", lab.daemon.config.to_str().expect("path")]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(
        text(&check).contains("assertion does not hold"),
        "{}",
        text(&check)
    );
    // With the broken assertion, `check` prints the file's warnings too: here the one that
    // says why (an earlier rule shadows the one the assertion is about).
    let shadowed = lab.daemon.config.with_file_name("shadowed.toml");
    std::fs::write(
        &shadowed,
        "[[rule]]\nname = \"all tcp\"\nproto = \"tcp\"\naction = \"reject\"\n\n\
         [[rule]]\nname = \"web\"\nproto = \"tcp\"\nport = 8080\naction = \"allow\"\n\n\
         [[assert]]\nin = \"tcp 8080\"\nexpect = \"allow\"\n",
    )
    .expect("writing");
    let check = lab
        .daemon
        .fwctl(&["check", shadowed.to_str().expect("path")]);
    let t = text(&check);
    assert_eq!(check.status.code(), Some(1), "{t}");
    assert!(
        t.contains("rule 2 (\"web\"): never matches: rule 1 (\"all tcp\", line 1)")
            && t.contains(
                "assertion does not hold: in tcp 8080 from 0.0.0.0 to 255.255.255.255: \
                 expected allow, but rule 1 (\"all tcp\", line 1) decides reject"
            ),
        "{t}"
    );
}

/// `--dry-run` and `check --diff` change nothing and name the tracked connection the new rules
/// would deny.
#[test]
fn dry_run_and_check_diff_change_nothing_and_name_the_connections_they_would_deny() {
    let lab = Lab::new(RULES);
    let sa = SocketAddr::new(lab.pair.server_v4.parse().expect("address"), 8080);
    let _open = lab
        .pair
        .client
        .run(move || TcpStream::connect_timeout(&sa, Duration::from_secs(2)))
        .expect("connecting to the web port");
    // `explain` names the tracked connection whose packets pass whatever the rules say.
    let e = lab
        .daemon
        .fwctl_json(&["explain", "in", "tcp", lab.pair.client_v4, "8080"]);
    assert!(
        e["tracked"].to_string().contains(":8080 <-> 10.200.0.1:"),
        "the open connection is tracked: {e:#}"
    );
    lab.daemon.write_rules(WITHOUT_WEB);
    let d = lab.daemon.fwctl_json(&["reload", "--dry-run"]);
    assert_eq!(d["dry_run"], true);
    assert!(
        d["removed"].to_string().contains("web"),
        "the web rule is removed: {d:#}"
    );
    assert!(
        d["would_deny"].to_string().contains(":8080 <- 10.200.0.1:"),
        "the open connection to 8080 would be denied: {d:#}"
    );
    let s = lab.status();
    assert_eq!(
        (s["rules"].as_u64(), s["generation"].as_u64()),
        (Some(3), Some(1)),
        "nothing changed"
    );

    let other = lab.daemon.config.with_file_name("other.toml");
    std::fs::write(&other, WITHOUT_WEB).expect("writing");
    let c = lab
        .daemon
        .fwctl_json(&["check", "--diff", other.to_str().expect("path")]);
    assert!(
        c["diff"]["would_deny"].to_string().contains(":8080"),
        "{c:#}"
    );
    assert_eq!(lab.status()["generation"].as_u64(), Some(1));
}

/// `reload --confirm` puts the previous rules back by itself once fwctl has long exited, unless
/// `fwctl confirm` comes first.
#[test]
fn an_unconfirmed_reload_rolls_back_and_a_confirmed_one_stays() {
    let lab = Lab::new(RULES);
    lab.daemon.write_rules(WITHOUT_WEB);
    let d = lab.daemon.fwctl_json(&["reload", "--confirm", "3s"]);
    assert_eq!(d["pending_confirm"]["rollback_to_generation"], 1, "{d:#}");
    assert_eq!(lab.observed(lab.pair.server_v4, 8080), "stealth");
    let s = lab.status();
    assert!(
        s["pending_confirm"]["secs_left"].as_u64().is_some(),
        "{s:#}"
    );
    let t = text(&lab.daemon.fwctl(&["status"]));
    assert!(t.contains("PENDING:"), "{t}");
    // Counters at zero are left out unless --all (no frame was ever built for a reply here).
    assert!(
        t.contains("counters at zero not shown") && !t.contains("reject_build_failed"),
        "{t}"
    );
    let all = text(&lab.daemon.fwctl(&["status", "--all"]));
    assert!(all.contains("reject_build_failed"), "{all}");
    // The fwctl that asked is gone; the daemon's timer does the rest.
    let deadline = Instant::now() + Duration::from_secs(30) * support::slowdown();
    loop {
        let s = lab.status();
        if s["generation"].as_u64() == Some(3) {
            assert!(s["pending_confirm"].is_null(), "{s:#}");
            assert_eq!(s["rules"].as_u64(), Some(3), "the previous rules are back");
            break;
        }
        assert!(Instant::now() < deadline, "no rollback: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(lab.observed(lab.pair.server_v4, 8080), "allow");

    let d = lab.daemon.fwctl_json(&["reload", "--confirm", "60s"]);
    assert_eq!(d["generation"], 4);
    let c = lab.daemon.fwctl_json(&["confirm"]);
    assert_eq!(c["generation"], 4);
    let s = lab.status();
    assert!(s["pending_confirm"].is_null(), "{s:#}");
    assert_eq!(s["rules"].as_u64(), Some(2));
    let again = lab.daemon.fwctl(&["confirm"]);
    assert_eq!(again.status.code(), Some(1), "nothing left to confirm");
}

/// A reload whose rules would deny new SSH connections from the caller's address is refused
/// without `--force`; `fwctl check` fails on it; `--force` goes ahead and still warns.
#[test]
fn a_reload_that_would_lock_out_the_ssh_caller_is_refused_without_force() {
    let lab = Lab::new(RULES);
    // The caller's session: client address -> the admins port.
    let ssh = format!("{} 50000 {} 8081", lab.pair.client_v4, lab.pair.server_v4);
    let lockout = RULES.replace("remote = \"10.200.0.0/30\"", "remote = \"192.0.2.0/24\"");
    lab.daemon.write_rules(&lockout);
    let out = lab.daemon.fwctl_over_ssh(&["reload"], &ssh);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(
            "LOCKOUT: these rules would reject new SSH connections from 10.200.0.1 to port 8081"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(lab.status()["generation"].as_u64(), Some(1));
    let path = lab.daemon.config.to_str().expect("path").to_owned();
    let check = lab.daemon.fwctl_over_ssh(&["check", &path], &ssh);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    let check = lab
        .daemon
        .fwctl_over_ssh(&["check", "--force", &path], &ssh);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    // Without SSH (or from an address the rules allow) the same reload passes.
    let out = lab
        .daemon
        .fwctl_over_ssh(&["reload", "--force", "--json"], &ssh);
    assert!(out.status.success(), "{}", text(&out));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        d["lockout"].as_str().is_some_and(|l| l.contains("LOCKOUT")),
        "{d:#}"
    );
    assert_eq!(lab.observed(lab.pair.server_v4, 8081), "reject");
}

/// `fwctl add`, `insert` and `delete` edit the daemon's rules file in place (its comment
/// stays), keep the previous file as `FILE~`, reload, and change the kernel's verdicts; an edit
/// the file's `[[assert]]` refuses, an edit of a file with errors, and a reload the daemon
/// refuses (an SSH lockout, the file then put back) change nothing.
#[test]
fn one_line_rule_commands_edit_the_file_and_reload_or_change_nothing() {
    let lab = Lab::new(RULES);
    let server = lab.pair.server_v4;
    let commented = format!("# edited by hand: keep this line\n{RULES}");
    lab.daemon.write_rules(&commented);
    assert!(lab.daemon.fwctl(&["reload"]).status.success());
    let generation = || lab.status()["generation"].as_u64().expect("generation");
    let file = || std::fs::read_to_string(&lab.daemon.config).expect("rules file");
    let backup = lab.daemon.config.with_file_name("rules.toml~");
    assert_eq!(lab.observed(server, 8083), "stealth");

    let out = lab
        .daemon
        .fwctl(&["add", "allow", "in", "tcp", "8083", "--name", "extra"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("+ port = 8083") && t.contains("rules in force, generation 3"),
        "{t}"
    );
    let after_add = file();
    // Appended after the last rule, before the [[assert]]; the comment where it was.
    assert!(
        after_add.starts_with("# edited by hand: keep this line\n")
            && after_add.find("name = \"extra\"") > after_add.find("name = \"closed\"")
            && after_add.find("name = \"extra\"") < after_add.find("[[assert]]"),
        "{after_add}"
    );
    assert_eq!(std::fs::read_to_string(&backup).expect("FILE~"), commented);
    assert_eq!(lab.observed(server, 8083), "allow");

    // The assertion says 8080 is allowed: a stealth rule in front of "web" is refused.
    let g = generation();
    let out = lab.daemon.fwctl(&[
        "insert", "1", "stealth", "in", "tcp", "8080", "--name", "no-web",
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("assertion does not hold") && t.contains("not changed"),
        "{t}"
    );
    assert_eq!((file(), generation()), (after_add.clone(), g));
    assert_eq!(lab.observed(server, 8080), "allow");

    // Deleting "admins" would leave 8081 to "closed": a lockout for an SSH session to it.
    let ssh = format!("{} 50000 {server} 8081", lab.pair.client_v4);
    let out = lab.daemon.fwctl_over_ssh(&["delete", "admins"], &ssh);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("LOCKOUT") && t.contains("put back as it was"),
        "{t}"
    );
    assert_eq!((file(), generation()), (after_add.clone(), g));
    assert_eq!(lab.observed(lab.pair.server_v4, 8081), "allow");

    let out = lab.daemon.fwctl(&["delete", "extra"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(file(), commented);
    assert_eq!(lab.observed(server, 8083), "stealth");

    // A file with an error is not edited, whatever the edit.
    let broken = format!("{commented}\n[[rule]]\nport = 0\naction = \"allow\"\n");
    lab.daemon.write_rules(&broken);
    let out = lab.daemon.fwctl(&["add", "allow", "in", "tcp", "9000"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("refusing to edit"), "{t}");
    assert_eq!(file(), broken);
}

/// `include = ["rules.d/*.toml"]`: a file dropped there and a reload change the kernel's
/// verdicts, `fwctl list` names the file each rule is in, and a broken included file is
/// refused by name with the rules in force kept.
#[test]
fn rules_d_files_are_part_of_the_rules() {
    let lab = Lab::new(&format!("include = [\"rules.d/*.toml\"]\n{RULES}"));
    let server = lab.pair.server_v4;
    assert_eq!(lab.observed(server, 8083), "stealth");
    let dir = lab.daemon.config.with_file_name("rules.d");
    std::fs::create_dir(&dir).expect("rules.d");
    let extra = dir.join("50-extra.toml");
    std::fs::write(
        &extra,
        "[[rule]]\nname = \"dropped in\"\nproto = \"tcp\"\nport = 8083\naction = \"allow\"\n",
    )
    .expect("writing");
    let out = lab.daemon.fwctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(lab.observed(server, 8083), "allow");
    let list = lab.daemon.fwctl_json(&["list"]);
    let last = &list["rules"][3];
    assert_eq!(
        (
            last["name"].as_str(),
            last["number"].as_u64(),
            last["file"].as_str()
        ),
        (Some("dropped in"), Some(4), Some("rules.d/50-extra.toml")),
        "{list:#}"
    );
    assert!(list["rules"][0].get("file").is_none(), "{list:#}");
    let shown = text(&lab.daemon.fwctl(&["list"]));
    assert!(shown.contains("(in rules.d/50-extra.toml)"), "{shown}");

    std::fs::write(&extra, "[[rule]]\nport = 0\naction = \"allow\"\n").expect("writing");
    let out = lab.daemon.fwctl(&["reload"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!("{}:2:8: rule 4: ", extra.display())),
        "{t}"
    );
    assert_eq!(lab.observed(server, 8083), "allow");
}
