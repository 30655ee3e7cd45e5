//! The real daemon binary, started inside a test namespace with private pins and socket, and
//! stopped (by PID) when the guard drops.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::Duration,
};

use super::{bpffs::BpfFs, netns::NetNs};

pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    _dir: tempfile::TempDir,
    _bpffs: BpfFs,
}

pub const DAEMON: &str = env!("CARGO_BIN_EXE_firewall-daemon");
pub const FWCTL: &str = env!("CARGO_BIN_EXE_fwctl");

impl Daemon {
    /// Writes `rules` to a file and starts the daemon on `ifname` inside `ns`, returning once
    /// it printed its readiness line (programs attached, socket listening).
    pub fn start(ns: &NetNs, ifname: &str, mode: &str, rules: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("rules.toml");
        std::fs::write(&config, rules).expect("writing rules");
        let bpffs = BpfFs::new();
        let pin_dir = bpffs.pin_dir("firewall");
        let socket = dir.path().join("control.sock");
        let ns_file = File::open(ns.path()).expect("opening the namespace");
        let mut cmd = Command::new(DAEMON);
        cmd.arg("--config")
            .arg(&config)
            .args(["--interface", ifname, "--xdp-mode", mode])
            .arg("--pin-dir")
            .arg(&pin_dir)
            .arg("--control-socket")
            .arg(&socket)
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

        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
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
        let mut d = Self {
            child,
            socket,
            config,
            pin_dir,
            stderr,
            _dir: dir,
            _bpffs: bpffs,
        };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(_) => d,
            Err(_) => {
                let status = d.child.try_wait().ok().flatten();
                panic!(
                    "firewall-daemon did not become ready (exit: {status:?}); stderr:\n{}",
                    d.stderr()
                );
            }
        }
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
    pub fn fwctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(FWCTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
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
