//! The real daemon binary, started inside a test namespace with private pins and socket and a
//! cgroup of its own for the outbound hooks, and stopped (by PID) when the guard drops.
//!
//! The daemon attaches its outbound hooks to `[daemon] cgroup`, which defaults to the root of
//! the cgroup2 mount: every process on the machine. Every daemon a test starts therefore gets
//! `--cgroup` with a [`TestCgroup`] made for it (and removed after it), and [`Launch::spawn`]
//! refuses to start one without.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::Duration,
};

use super::{bpffs::BpfFs, cgroup::TestCgroup, netns::NetNs};

thread_local! {
    /// Seconds a daemon started on this thread has to become ready (times the slowdown).
    static READY_WITHIN: std::cell::Cell<u64> = const { std::cell::Cell::new(30) };
}

/// Gives daemons this thread starts from now on `secs` to become ready: for a test whose
/// daemon has much to load (a million names), on a machine other tests keep busy.
pub fn ready_within(secs: u64) {
    READY_WITHIN.with(|c| c.set(secs));
}

pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    launch: Launch,
    /// Set by [`Self::kill_hard`] until [`Self::restart`]: the pins are orphaned.
    killed: bool,
    _dir: tempfile::TempDir,
    _bpffs: BpfFs,
    /// The outbound hooks' cgroup: processes a test moves here are judged by the outbound
    /// rules. Dropped last, after the daemon and its pins are gone.
    pub cgroup: TestCgroup,
}

/// Where and how the daemon runs: kept so that it can be started again.
struct Launch {
    ns_path: String,
    ifname: String,
    mode: String,
    env: Vec<(String, String)>,
    /// Always a test cgroup: never the default (the cgroup2 root).
    cgroup: PathBuf,
}

impl Launch {
    /// Spawns the daemon inside the namespace; stderr is collected into `stderr`, and the
    /// receiver gets the readiness line.
    fn spawn(
        &self,
        config: &Path,
        pin_dir: &Path,
        socket: &Path,
        stderr: &std::sync::Arc<std::sync::Mutex<String>>,
    ) -> (Child, mpsc::Receiver<String>) {
        assert_daemon_cgroup(&self.cgroup);
        let ns_file = File::open(&self.ns_path).expect("opening the namespace");
        let mut cmd = Command::new(DAEMON);
        cmd.arg("--config").arg(config);
        // No interface: the rules file's setting (by default "auto": every interface of the
        // test namespace but loopback). Several: separated by commas.
        if !self.ifname.is_empty() {
            cmd.args(self.ifname.split(',').flat_map(|i| ["--interface", i]));
        }
        cmd.args(["--xdp-mode", &self.mode])
            .arg("--pin-dir")
            .arg(pin_dir)
            // Runtime sets' members: beside the rules file, never the host's /var/lib.
            .arg("--state-dir")
            .arg(
                config
                    .parent()
                    .expect("the rules file's directory")
                    .join("state"),
            )
            .arg("--control-socket")
            .arg(socket)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let fd = ns_file.as_raw_fd();
        // SAFETY: setns is async-signal-safe; it runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("starting firewall-daemon");
        drop(ns_file);

        let err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("firewall-daemon: ready") {
                    let _ = tx.send(line);
                }
            }
        });
        (child, rx)
    }
}

pub const DAEMON: &str = env!("CARGO_BIN_EXE_firewall-daemon");

/// Panics unless `path` is a test cgroup: strictly below the cgroup2 mount, made by
/// [`TestCgroup`], and existing.
pub fn assert_daemon_cgroup(path: &Path) {
    let (mount, _) = super::cgroup::cgroup2_mount();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        path != mount && path.starts_with(&mount) && name.starts_with("fw-test-") && path.is_dir(),
        "a test daemon must get a test cgroup of its own, not {} (cgroup2 mount {})",
        path.display(),
        mount.display()
    );
}
pub const FWCTL: &str = env!("CARGO_BIN_EXE_fwctl");

/// Runs the daemon on `ifname` inside `ns` with `config` and `cgroup` where it must refuse to
/// start: checks that it exited with an error and attached nothing to `ifname`, and returns
/// what it wrote to stderr.
pub fn refused_start(ns: &NetNs, ifname: &str, config: &Path, cgroup: &Path) -> String {
    let out = ns
        .command(DAEMON)
        .arg("--config")
        .arg(config)
        .args(["--interface", ifname, "--pin-dir", "/nonexistent"])
        .arg("--cgroup")
        .arg(cgroup)
        .output()
        .expect("daemon");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "the daemon started with {} and the cgroup {}: {err}",
        std::fs::read_to_string(config).unwrap_or_default(),
        cgroup.display()
    );
    let link = ns.exec(&["ip", "link", "show", ifname]);
    assert!(!link.contains("xdp"), "nothing may be attached: {link}");
    err
}

impl Daemon {
    /// Writes `rules` to a file and starts the daemon on `ifname` (several separated by commas;
    /// `""`: as the rules say) inside `ns`, returning once it printed its readiness line
    /// (programs attached, socket listening).
    pub fn start(ns: &NetNs, ifname: &str, mode: &str, rules: &str) -> Self {
        Self::start_with_env(ns, ifname, mode, rules, &[])
    }

    /// [`Self::start`] with extra environment variables (for instance `NOTIFY_SOCKET`).
    pub fn start_with_env(
        ns: &NetNs,
        ifname: &str,
        mode: &str,
        rules: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("rules.toml");
        std::fs::write(&config, rules).expect("writing rules");
        let bpffs = BpfFs::new();
        let pin_dir = bpffs.pin_dir("firewall");
        let socket = dir.path().join("control.sock");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let cgroup = TestCgroup::new("daemon");
        let launch = Launch {
            ns_path: ns.path(),
            ifname: ifname.to_string(),
            mode: mode.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cgroup: cgroup.path().to_path_buf(),
        };
        let (child, ready) = launch.spawn(&config, &pin_dir, &socket, &stderr);
        let mut d = Self {
            child,
            socket,
            config,
            pin_dir,
            stderr,
            launch,
            killed: false,
            _dir: dir,
            _bpffs: bpffs,
            cgroup,
        };
        d.wait_ready(&ready);
        d
    }

    fn wait_ready(&mut self, ready: &mpsc::Receiver<String>) {
        let within = READY_WITHIN.with(std::cell::Cell::get);
        if ready
            .recv_timeout(Duration::from_secs(within) * super::slowdown())
            .is_err()
        {
            let status = self.child.try_wait().ok().flatten();
            panic!(
                "firewall-daemon did not become ready (exit: {status:?}); stderr:\n{}",
                self.stderr()
            );
        }
    }

    /// SIGKILL: the daemon dies without running any cleanup, so its links and tables stay
    /// pinned (and enforcing) in this guard's bpffs. Returns once the process is gone.
    pub fn kill_hard(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let status = self.child.wait().expect("waiting for the killed daemon");
        self.killed = true;
        assert!(
            !status.success(),
            "the daemon should have died of SIGKILL: {status}"
        );
    }

    /// Starts the daemon again, after [`Self::kill_hard`], with the same namespace, interface,
    /// mode, rules file, pin directory (the same bpffs) and control socket; returns once it is
    /// ready. Its stderr is appended to the earlier one.
    pub fn restart(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "restart() needs the previous daemon to be gone"
        );
        if let Ok(mut s) = self.stderr.lock() {
            s.push_str("---- restarted ----\n");
        }
        let (child, ready) =
            self.launch
                .spawn(&self.config, &self.pin_dir, &self.socket, &self.stderr);
        self.child = child;
        self.killed = false;
        self.wait_ready(&ready);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn write_rules(&self, rules: &str) {
        std::fs::write(&self.config, rules).expect("writing rules");
    }

    /// Runs fwctl against this daemon.
    /// Runs fwctl against this daemon, as if not over SSH (whatever session runs the tests).
    pub fn fwctl(&self, args: &[&str]) -> std::process::Output {
        self.fwctl_over_ssh(args, "")
    }

    /// Runs fwctl against this daemon with `SSH_CONNECTION` set to `ssh_connection`.
    pub fn fwctl_over_ssh(&self, args: &[&str], ssh_connection: &str) -> std::process::Output {
        Command::new(FWCTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env("SSH_CONNECTION", ssh_connection)
            .output()
            .expect("running fwctl")
    }

    pub fn fwctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.fwctl(&all);
        assert!(
            out.status.success(),
            "fwctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("fwctl --json output")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .expect("signalling the daemon");
    }

    /// SIGTERM and wait for a clean exit.
    /// SIGTERM, keeping the guard: with `on_stop = "keep"` the pins stay for [`Self::restart`]
    /// (or are removed when the guard drops).
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status =
            wait_timeout(&mut self.child, Duration::from_secs(10)).expect("daemon did not stop");
        self.killed = true;
        status
    }

    pub fn stop(mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        wait_timeout(&mut self.child, Duration::from_secs(10)).expect("daemon did not stop")
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

fn wait_timeout(child: &mut Child, t: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + t;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A daemon killed by kill_hard() and not restarted left its links pinned: unpinning
        // detaches them (unmounting the private bpffs afterwards would too).
        if self.killed {
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if wait_timeout(&mut self.child, Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}
