//! Runtime sets end to end: the real daemon protects one side of a veth pair between two test
//! namespaces with a runtime set (`blocklist = []`) that a stealth rule drops.
//!
//! - `fwctl set` by hand: a member is stealthed at once and its open connection ended; it
//!   stays through a reload and a restart of the daemon; expires on time; a set the file
//!   lists is refused, and so is a member that breaks an `[[assert]]`.
//! - fail2ban with the action this repository ships (`packaging/fail2ban/fwctl.conf`):
//!   Debian's fail2ban-server, with a configuration of its own in a temporary directory (one
//!   sshd jail reading a temporary log, and only this action), runs the real fwctl against
//!   the daemon's control socket. Failure lines for the peer's address ban it (its new
//!   connections time out while the set lists it with time left), an unban lets it in again,
//!   a permanent ban has no end, and stopping fail2ban empties the set. fail2ban runs in the
//!   root namespace but touches no firewall: its only action is fwctl, which speaks to the
//!   daemon over a Unix socket. Skipped when fail2ban is not installed.

mod support;

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use support::{
    daemon::{Daemon, FWCTL},
    netns::Pair,
};

const FAIL2BAN_SERVER: &str = "/usr/bin/fail2ban-server";
const FAIL2BAN_CLIENT: &str = "/usr/bin/fail2ban-client";
/// Debian's sshd filter and the file it includes, copied into the test's configuration.
const FILTERS: &str = "/etc/fail2ban/filter.d";
const FILTER_FILES: [&str; 2] = ["sshd.conf", "common.conf"];
/// The action under test, as shipped.
const ACTION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../packaging/fail2ban/fwctl.conf"
);

const JAIL: &str = "sshd";
const SET: &str = "blocklist";
/// The protected port: the rules stealth it for members of the set and allow it to others.
const PORT: u16 = 2222;
/// The jail's bantime in seconds: fail2ban runs `fwctl set add blocklist ADDR --for 600s`.
const BANTIME: u64 = 600;
/// An address fail2ban bans by command (`banip`) rather than from the log.
const OTHER: &str = "192.0.2.7";

/// A new connection to a stealthed port gets no answer: given up on after this.
const STEALTH_WAIT: Duration = Duration::from_millis(1500);

fn rules() -> String {
    format!(
        r#"
[defaults]
inbound = "stealth"

[sets]
{SET} = []

[[rule]]
name = "f2b"
proto = "tcp"
port = {PORT}
remote = "@{SET}"
action = "stealth"

[[rule]]
name = "ssh"
proto = "tcp"
port = {PORT}
action = "allow"
"#
    )
}

/// Why the test cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !Path::new(FAIL2BAN_SERVER).exists() || !Path::new(FAIL2BAN_CLIENT).exists() {
        return Some(format!(
            "{FAIL2BAN_SERVER} is not installed (Debian package fail2ban)"
        ));
    }
    FILTER_FILES
        .iter()
        .map(|f| Path::new(FILTERS).join(f))
        .find(|p| !p.exists())
        .map(|p| format!("{} is missing (Debian package fail2ban)", p.display()))
}

/// A fail2ban-server this test started, with its configuration, its log and the log its jail
/// reads, all in a temporary directory; killed (by PID) when dropped.
struct Fail2ban {
    child: Child,
    socket: PathBuf,
    /// The log the jail watches, where the test writes sshd's failure lines.
    watched: PathBuf,
    /// fail2ban's own log: bans, unbans and the commands that failed.
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Fail2ban {
    /// Writes a configuration (fail2ban.conf, one jail, Debian's sshd filter, the shipped
    /// action with `fwctl` and `control_socket` for its parameters), checks that fail2ban
    /// accepts it, and starts fail2ban-server in the foreground; returns once the jail
    /// answers.
    fn start(fwctl: &str, control_socket: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("conf");
        for sub in ["action.d", "filter.d"] {
            std::fs::create_dir_all(conf.join(sub)).expect("creating the configuration");
        }
        for f in FILTER_FILES {
            std::fs::copy(Path::new(FILTERS).join(f), conf.join("filter.d").join(f))
                .unwrap_or_else(|e| panic!("copying {f}: {e}"));
        }
        std::fs::copy(ACTION, conf.join("action.d/fwctl.conf")).expect("copying the action");
        let socket = dir.path().join("fail2ban.sock");
        let watched = dir.path().join("auth.log");
        let log = dir.path().join("fail2ban.log");
        std::fs::write(&watched, "").expect("creating the watched log");
        // No database (`:memory:`): nothing is restored from an earlier run, nothing is kept.
        std::fs::write(
            conf.join("fail2ban.conf"),
            format!(
                "[Definition]\nloglevel = INFO\nlogtarget = {}\nsyslogsocket = auto\nsocket = {}\n\
                 pidfile = {}\ndbfile = :memory:\ndbpurgeage = 1d\nallowipv6 = auto\n",
                log.display(),
                socket.display(),
                dir.path().join("fail2ban.pid").display(),
            ),
        )
        .expect("fail2ban.conf");
        // polling: the test's log is a plain file, and Debian's default backend reads the
        // journal. Two failures within a minute ban for BANTIME seconds.
        std::fs::write(
            conf.join("jail.conf"),
            format!(
                "[DEFAULT]\nbackend = polling\nusedns = no\n\n[{JAIL}]\nenabled = true\n\
                 filter = sshd\nlogpath = {}\nmaxretry = 2\nfindtime = 60\nbantime = {BANTIME}\n\
                 action = fwctl[set={SET}, socket=\"{}\", fwctl=\"{fwctl}\"]\n",
                watched.display(),
                control_socket.display(),
            ),
        )
        .expect("jail.conf");

        // The action file parses, with its parameters filled in.
        let test = Command::new(FAIL2BAN_CLIENT)
            .arg("-c")
            .arg(&conf)
            .arg("-t")
            .output()
            .expect("fail2ban-client -t");
        assert!(
            test.status.success(),
            "fail2ban refuses the configuration: {}",
            text(&test)
        );

        let child = Command::new(FAIL2BAN_SERVER)
            .args(["-f", "-x", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-p")
            .arg(dir.path().join("fail2ban.pid"))
            .arg("--logtarget")
            .arg(&log)
            // As Daemon::fwctl does: fwctl judges no SSH session (the one running the tests,
            // if any) in what fail2ban makes it do.
            .env("SSH_CONNECTION", "")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.err")).expect("server.err"))
            .spawn()
            .expect("starting fail2ban-server");
        let f2b = Self {
            child,
            socket,
            watched,
            log,
            dir,
        };
        // Ready once the server lists the jail (measured: about 0.2 s). Asked with `status`,
        // which every started server answers: `status JAIL` before the jail exists is logged
        // as a failed command, which the end of the test would take for a failed action.
        let deadline = Instant::now() + Duration::from_secs(20) * support::slowdown();
        while !f2b.lists_jail() {
            assert!(
                Instant::now() < deadline,
                "fail2ban-server did not start its jail:\n{}",
                f2b.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        f2b
    }

    /// Whether `fail2ban-client status` answers with JAIL in its jail list
    /// (`` `- Jail list:\tsshd ``).
    fn lists_jail(&self) -> bool {
        let out = self.client(&["status"]);
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).lines().any(|l| {
                l.split_once("Jail list:")
                    .is_some_and(|(_, jails)| jails.split(',').any(|j| j.trim() == JAIL))
            })
    }

    fn client(&self, args: &[&str]) -> Output {
        Command::new(FAIL2BAN_CLIENT)
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running fail2ban-client")
    }

    /// fail2ban-client, which must succeed; its output.
    fn ask(&self, args: &[&str]) -> String {
        let out = self.client(args);
        assert!(
            out.status.success(),
            "fail2ban-client {args:?}: {}\n{}",
            text(&out),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Appends `count` failed logins from `addr` to the watched log, as sshd writes them
    /// through rsyslog on Debian (RFC 3339 time; fail2ban also reads the traditional `Dec  5
    /// 21:00:01` form, but this one needs no time zone). The time is now: fail2ban ignores
    /// failures older than findtime.
    fn fail(&self, addr: &str, count: u16) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.watched)
            .expect("opening the watched log");
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S+00:00")
            .to_string();
        let mut lines = String::new();
        for i in 0..count {
            lines.push_str(&format!(
                "{now} fwtest sshd[4242]: Failed password for root from {addr} port {} ssh2\n",
                40000 + i
            ));
        }
        // One write: fail2ban's polling reads whole lines whenever it looks.
        f.write_all(lines.as_bytes())
            .expect("writing failure lines");
    }

    /// fail2ban's log and the server's stderr, for failure messages.
    fn logs(&self) -> String {
        format!(
            "--- fail2ban log ---\n{}--- fail2ban-server stderr ---\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(self.dir.path().join("server.err")).unwrap_or_default()
        )
    }

    /// `fail2ban-client stop`, then waits for the server to exit (measured: 2 to 3 s); returns
    /// its log.
    fn stop(mut self) -> String {
        self.ask(&["stop"]);
        let deadline = Instant::now() + Duration::from_secs(30) * support::slowdown();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "fail2ban-server did not exit after stop:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.logs()
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        // By PID: the server this guard started, nothing else.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A new TCP connection from the peer to the protected port: accepted (the listener's
/// backlog takes it) or, when the firewall drops its SYN, timed out.
fn connect(pair: &Pair) -> std::io::Result<TcpStream> {
    let to = SocketAddr::new(pair.server_v4.parse().expect("address"), PORT);
    pair.client
        .run(move || TcpStream::connect_timeout(&to, STEALTH_WAIT * support::slowdown()))
}

fn assert_stealthed(pair: &Pair, why: &str) {
    match connect(pair) {
        Ok(_) => panic!("{why}: the peer connected"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ),
            "{why}: the connection should time out (stealth), not: {e}"
        ),
    }
}

/// `fwctl set list SET`, which must succeed.
fn set_list(daemon: &Daemon) -> String {
    fwctl_ok(daemon, &["set", "list", SET])
}

/// The line of `fwctl set list` output that shows `addr` as a member, if one does: a member a
/// line, `ADDR/32  9m58s left` or `ADDR/32  until deleted` (the human form is what an
/// administrator reads; the JSON form is checked in the other test).
fn member_line(list: &str, addr: &str) -> Option<String> {
    list.lines()
        .find(|l| {
            l.split_whitespace().any(|w| {
                let w = w.trim_end_matches([',', ':']);
                w == addr
                    || w.strip_suffix("/32") == Some(addr)
                    || w.strip_suffix("/128") == Some(addr)
            })
        })
        .map(str::to_string)
}

/// The time left a member's line shows, in seconds: the sum of its `<digits><h|m|s>` parts;
/// None when it shows none (a member without an end).
fn time_left(line: &str, addr: &str) -> Option<u64> {
    let mut total = None;
    for word in line.split_whitespace().filter(|w| !w.contains(addr)) {
        let mut digits = String::new();
        for c in word.chars() {
            let unit = match c {
                'h' => Some(3600),
                'm' => Some(60),
                's' => Some(1),
                _ => None,
            };
            if c.is_ascii_digit() {
                digits.push(c);
            } else if let Some(unit) = unit
                && !digits.is_empty()
            {
                let n: u64 = digits.parse().expect("digits");
                total = Some(total.unwrap_or(0) + n * unit);
                digits.clear();
            } else {
                digits.clear();
            }
        }
    }
    total
}

/// Polls `fwctl set list` until `addr` is a member (`present`) or is not; returns the last
/// listing. fail2ban's polling backend looks at the file once a second: bans came 0.1 to 1 s
/// after the lines were written (measured), and the 15 s limit is for loaded machines.
fn wait_member(daemon: &Daemon, f2b: &Fail2ban, addr: &str, present: bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15) * support::slowdown();
    loop {
        let list = set_list(daemon);
        if member_line(&list, addr).is_some() == present {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} is {} the set after 15 s; fwctl set list {SET}:\n{list}\n{}\n\
             --- daemon stderr ---\n{}",
            if present { "still not in" } else { "still in" },
            f2b.logs(),
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn fail2ban_bans_the_peer_through_fwctl_and_unbans_it() {
    if let Some(why) = missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let pair = Pair::new();
    let daemon = Daemon::start(&pair.server, &pair.server_if, "generic", &rules());
    let listen = SocketAddr::new(pair.server_v4.parse().expect("address"), PORT);
    let _listener = pair
        .server
        .run(move || TcpListener::bind(listen))
        .expect("bind");
    let peer = pair.client_v4;

    // Before any ban: the set is empty, the rule after it allows the port.
    let list = set_list(&daemon);
    assert!(member_line(&list, peer).is_none(), "{list}");
    connect(&pair).expect("the peer connects before any ban");

    // fail2ban's actionstart (`fwctl set list blocklist`) runs as the jail starts.
    let f2b = Fail2ban::start(FWCTL, daemon.socket());

    // Two failed logins (maxretry): fail2ban runs `fwctl set add blocklist PEER --for 600s`.
    let written = Instant::now();
    f2b.fail(peer, 2);
    let list = wait_member(&daemon, &f2b, peer, true);
    eprintln!("banned {:?} after the failure lines", written.elapsed());
    let line = member_line(&list, peer).expect("listed");
    let left = time_left(&line, peer);
    assert!(
        left.is_some_and(|s| s > 0 && s <= BANTIME),
        "{peer} should be listed with at most {BANTIME} s left: {line:?}"
    );
    assert!(
        f2b.ask(&["status", JAIL]).contains(peer),
        "fail2ban should count {peer} as banned"
    );
    assert_stealthed(&pair, "banned by fail2ban");

    // fail2ban's unban runs `fwctl set del blocklist PEER`: the peer connects again.
    f2b.ask(&["set", JAIL, "unbanip", peer]);
    wait_member(&daemon, &f2b, peer, false);
    connect(&pair).expect("the peer connects once unbanned");

    // A permanent ban (bantime -1) is added without --for: a member without an end.
    f2b.ask(&["set", JAIL, "bantime", "-1"]);
    f2b.ask(&["set", JAIL, "banip", OTHER]);
    let list = wait_member(&daemon, &f2b, OTHER, true);
    let line = member_line(&list, OTHER).expect("listed");
    assert_eq!(
        time_left(&line, OTHER),
        None,
        "a permanent ban has no time left: {line:?}"
    );

    // Stopping fail2ban flushes the set (actionflush), as its own ipset actions do.
    let logs = f2b.stop();
    let list = set_list(&daemon);
    assert!(
        member_line(&list, OTHER).is_none(),
        "fail2ban's stop should empty the set:\n{list}\n{logs}"
    );
    // Every fwctl fail2ban ran succeeded: it logs a command's non-zero exit as an error.
    assert!(
        !logs.contains(" ERROR ") && !logs.contains(" CRITICAL "),
        "a command of the action failed:\n{logs}"
    );
    connect(&pair).expect("the peer connects after fail2ban stopped");
}

/// `fwctl ARGS`, which must succeed; its stdout.
fn fwctl_ok(daemon: &Daemon, args: &[&str]) -> String {
    let out = daemon.fwctl(args);
    assert!(
        out.status.success(),
        "fwctl {args:?}: {}\n{}",
        text(&out),
        daemon.stderr()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn members_added_at_runtime_are_enforced_at_once_and_outlive_reloads_and_restarts() {
    let pair = Pair::new();
    // `lan` is listed in the file; the assertion's address is never the peer's, and the set
    // may not take it.
    let rules = format!(
        "{}\n[[assert]]\nin = \"tcp {PORT}\"\nfrom = \"203.0.113.5\"\nexpect = \"allow\"\n",
        rules().replace("[sets]\n", "[sets]\nlan = [\"10.99.0.0/16\"]\n")
    );
    let mut daemon = Daemon::start(&pair.server, &pair.server_if, "generic", &rules);
    let listen = SocketAddr::new(pair.server_v4.parse().expect("address"), PORT);
    let listener = pair
        .server
        .run(move || TcpListener::bind(listen))
        .expect("bind");
    let peer = pair.client_v4;

    // An open connection, and a new one, before any member.
    let open = connect(&pair).expect("the peer connects before any member");
    let (_served, _) = listener.accept().expect("accepted");

    // Added: new connections are stealthed at once, and the open one is ended.
    let out = fwctl_ok(&daemon, &["set", "add", SET, peer, "--for", "1h"]);
    assert!(out.contains(&format!("added to {SET}: {peer}/32")), "{out}");
    assert!(
        out.contains("ended: tcp"),
        "the open connection should be ended:\n{out}"
    );
    assert_stealthed(&pair, "a member of the set");
    // The ended connection's next segment is dropped too: nothing it writes arrives.
    drop(open);

    let json: serde_json::Value =
        serde_json::from_str(&fwctl_ok(&daemon, &["set", "list", SET, "--json"])).expect("JSON");
    let member = &json[0]["members"][0];
    assert_eq!(member["member"], format!("{peer}/32"), "{json}");
    let left = member["left_secs"].as_u64().expect("time left");
    assert!((3590..=3600).contains(&left), "{json}");
    assert_eq!(json[0]["rules"][0], "1 \"f2b\"", "{json}");

    // The same member written as IPv4-mapped IPv6 is the same member.
    let out = fwctl_ok(&daemon, &["set", "add", SET, &format!("::ffff:{peer}")]);
    assert!(
        out.contains(&format!("already in {SET} (expiry updated): {peer}/32")),
        "{out}"
    );
    // ... and the later expiry (none: until deleted) won.
    let list = set_list(&daemon);
    assert!(
        member_line(&list, peer).is_some_and(|l| l.contains("until deleted")),
        "{list}"
    );

    // Through a reload and a restart of the daemon (its pins adopted, its members read back).
    fwctl_ok(&daemon, &["reload"]);
    assert_stealthed(&pair, "after a reload");
    daemon.terminate();
    daemon.restart();
    assert!(member_line(&set_list(&daemon), peer).is_some());
    assert_stealthed(&pair, "after a restart");

    // Refused, changing nothing: a set the file lists, a set that does not exist, a member
    // that breaks an [[assert]].
    for (args, says) in [
        (
            vec!["set", "add", "lan", "10.99.1.1"],
            "lists 1 member(s) in the rules file",
        ),
        (
            vec!["set", "add", "nosuch", "10.99.1.1"],
            "no set \"nosuch\"",
        ),
        (vec!["set", "add", SET, "203.0.113.0/24"], "assert"),
        (vec!["set", "add", SET, "198.51.100.7/24"], "host bits"),
    ] {
        let out = daemon.fwctl(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    let list = set_list(&daemon);
    assert!(member_line(&list, "203.0.113.0").is_none(), "{list}");
    // --force adds it; a member already breaking the assertion does not stop the next one.
    fwctl_ok(&daemon, &["set", "add", SET, "203.0.113.0/24", "--force"]);
    fwctl_ok(&daemon, &["set", "add", SET, "198.51.100.9"]);
    fwctl_ok(
        &daemon,
        &["set", "del", SET, "203.0.113.0/24", "198.51.100.9"],
    );

    // Removed: the peer connects again; removing it twice is no error.
    let out = fwctl_ok(&daemon, &["set", "del", SET, peer]);
    assert!(
        out.contains(&format!("removed from {SET}: {peer}/32")),
        "{out}"
    );
    connect(&pair).expect("the peer connects once removed");
    let out = fwctl_ok(&daemon, &["set", "del", SET, peer]);
    assert!(out.contains(&format!("not in {SET}: {peer}/32")), "{out}");

    // What one `fwctl set add` takes, whole (the process, the socket, the checks, sets.json):
    // printed, not asserted (machines differ). Then `flush` empties the set of them.
    let mut took: Vec<Duration> = (1..=20u8)
        .map(|i| {
            let t = Instant::now();
            fwctl_ok(
                &daemon,
                &["set", "add", SET, &format!("198.18.0.{i}"), "--for", "1h"],
            );
            t.elapsed()
        })
        .collect();
    took.sort();
    eprintln!(
        "fwctl set add, 20 runs: median {:?}, min {:?}, max {:?}",
        took[10], took[0], took[19]
    );
    let out = fwctl_ok(&daemon, &["set", "flush", SET]);
    assert!(out.contains(&format!("{SET}: 0 member(s)")), "{out}");
    assert!(out.contains("198.18.0.20/32"), "{out}");

    // Expiry: a member for 2 s is gone by itself.
    // (The daemon counts whole seconds of the wall clock: between 1 and 2 s.)
    let added = Instant::now();
    fwctl_ok(&daemon, &["set", "add", SET, peer, "--for", "2s"]);
    assert_stealthed(&pair, "a member for 2 s");
    let deadline = added + Duration::from_secs(10) * support::slowdown();
    while member_line(&set_list(&daemon), peer).is_some() {
        assert!(Instant::now() < deadline, "not expired after 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        added.elapsed() >= Duration::from_millis(900),
        "expired early: {:?}",
        added.elapsed()
    );
    connect(&pair).expect("the peer connects once its membership expired");
    assert!(
        daemon.stderr().contains(&format!("{peer}/32 expired")),
        "{}",
        daemon.stderr()
    );

    // Rules without the set, reloaded with --confirm and not confirmed: the rollback brings
    // the set back with its member. Reloaded for good: the member is dropped.
    fwctl_ok(&daemon, &["set", "add", SET, peer]);
    let without = format!(
        "[defaults]\ninbound = \"stealth\"\n[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\n\
         port = {PORT}\naction = \"allow\"\n"
    );
    daemon.write_rules(&without);
    fwctl_ok(&daemon, &["reload", "--confirm", "2s"]);
    connect(&pair).expect("the rules without the set let the peer in");
    let deadline = Instant::now() + Duration::from_secs(30) * support::slowdown();
    while !daemon.fwctl(&["set", "list", SET]).status.success() {
        assert!(Instant::now() < deadline, "no rollback after 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        member_line(&set_list(&daemon), peer).is_some(),
        "the member came back"
    );
    assert_stealthed(&pair, "the member after the rollback");
    fwctl_ok(&daemon, &["reload"]);
    assert!(
        daemon
            .stderr()
            .contains("1 runtime member(s) dropped: the rules file no longer defines it"),
        "{}",
        daemon.stderr()
    );
    daemon.write_rules(&rules);
    fwctl_ok(&daemon, &["reload"]);
    assert!(
        member_line(&set_list(&daemon), peer).is_none(),
        "dropped for good"
    );
    connect(&pair).expect("the peer connects once its set was dropped");
}
