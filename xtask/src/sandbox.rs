//! `cargo xtask run --sandbox`: the real daemon protecting a veth inside a throwaway network
//! namespace, so anyone can try rules without risking their own connection. Its outbound hooks
//! are attached to a cgroup made for the sandbox (never the machine's root cgroup): only
//! processes put there are judged by the outbound rules. Everything it creates is removed when
//! it exits (Ctrl-C), even if the daemon fails.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{cgroup::DaemonCgroup, target_bin, workspace_root};

pub(crate) const PROTECTED: &str = "fw-sandbox";
/// The protected end of the veth, in [`PROTECTED`].
pub(crate) const PROTECTED_IF: &str = "fw0";
const PEER: &str = "fw-sandbox-peer";
/// The two ends' addresses: documentation ranges (RFC 5737, RFC 3849), outside the private
/// networks the example rules' `@lan` holds, so the peer is a stranger to the rules, as a
/// scanner on the internet would be: its probes of closed ports go unanswered ("filtered").
const PROTECTED_V4: &str = "192.0.2.2";
const PROTECTED_V6: &str = "2001:db8:99::2";
const PEER_V4: &str = "192.0.2.1";
const PEER_V6: &str = "2001:db8:99::1";

pub(crate) struct Sandbox {
    pub(crate) bpffs: PathBuf,
    /// The daemon's `--cgroup`; removed after the namespaces (the daemon is gone by then).
    pub(crate) cgroup: DaemonCgroup,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("ip")
        .args(args)
        .status()
        .context("running ip")?;
    if !status.success() {
        bail!("ip {} failed", args.join(" "));
    }
    Ok(())
}

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full)
}

impl Sandbox {
    pub(crate) fn create(dir: &std::path::Path) -> anyhow::Result<Self> {
        // Leftovers of an interrupted earlier run.
        let _ = Command::new("ip")
            .args(["netns", "del", PROTECTED])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", PEER])
            .stderr(Stdio::null())
            .status();
        let bpffs = dir.join("bpffs");
        let _ = Command::new("umount")
            .arg(&bpffs)
            .stderr(Stdio::null())
            .status();
        std::fs::create_dir_all(&bpffs)?;
        let cgroup = DaemonCgroup::create("fw-sandbox")?;
        let sb = Self { bpffs, cgroup };
        ip(&["netns", "add", PROTECTED])?;
        ip(&["netns", "add", PEER])?;
        ip(&[
            "link", "add", "fw0", "netns", PROTECTED, "type", "veth", "peer", "name", "peer0",
            "netns", PEER,
        ])?;
        for (ns, dev, v4, v6) in [
            (PROTECTED, "fw0", PROTECTED_V4, PROTECTED_V6),
            (PEER, "peer0", PEER_V4, PEER_V6),
        ] {
            in_ns(ns, &["link", "set", "lo", "up"])?;
            in_ns(ns, &["addr", "add", &format!("{v4}/24"), "dev", dev])?;
            in_ns(
                ns,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            )?;
            in_ns(ns, &["link", "set", dev, "up"])?;
        }
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&sb.bpffs)
            .status()?;
        if !status.success() {
            bail!("mounting a private bpffs at {}", sb.bpffs.display());
        }
        Ok(sb)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The daemon stops with on_stop = "keep": its pins would keep the programs loaded for
        // as long as any process holds a copy of this mount (one started meanwhile in another
        // mount namespace does). Without the pins they go when the namespaces do.
        let _ = std::fs::remove_dir_all(self.bpffs.join("firewall"));
        let _ = Command::new("ip")
            .args(["netns", "del", PROTECTED])
            .status();
        let _ = Command::new("ip").args(["netns", "del", PEER]).status();
        let _ = Command::new("umount").arg(&self.bpffs).status();
        eprintln!("xtask: sandbox removed");
    }
}

/// PID of the sandboxed daemon, for the signal handler.
static DAEMON_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Passes SIGINT/SIGTERM/SIGHUP on to the daemon as SIGTERM, so that whatever stops this
/// process (Ctrl-C, `timeout`, `kill`, a closed terminal) stops the daemon and lets `run` remove
/// the sandbox, instead of leaving the namespaces behind.
extern "C" fn forward(_: libc::c_int) {
    let pid = DAEMON_PID.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

pub fn run(config: Option<PathBuf>, extra: &[String]) -> anyhow::Result<()> {
    let dir = workspace_root().join("target/sandbox");
    std::fs::create_dir_all(&dir)?;
    // Rules to edit: a copy of the workstation example beside the sandbox (kept across runs),
    // not the example itself, which is part of the source tree.
    let config = match config {
        Some(c) => c,
        None => {
            let copy = dir.join("rules.toml");
            if !copy.exists() {
                std::fs::copy(
                    workspace_root().join("rules/examples/workstation.toml"),
                    &copy,
                )
                .context("copying the example rules into the sandbox")?;
            }
            copy
        }
    };
    let socket = dir.join("control.sock");
    let sb = Sandbox::create(&dir)?;
    let fwctl = target_bin("fwctl");
    let cg = sb.cgroup.path().display();
    eprintln!(
        "xtask: sandbox made; starting the daemon. It protects fw0 ({PROTECTED_V4}, \
         {PROTECTED_V6}) in namespace {PROTECTED}, with the rules of {}; probe it from {PEER} \
         (closed ports show as filtered: the peer is no one the rules know):\n  \
         nsenter --net=/run/netns/{PEER} nmap -Pn -sS -T4 {PROTECTED_V4}\n  \
         nsenter --net=/run/netns/{PROTECTED} nc -l 8080   # a server to reach\n\
         Outbound rules judge the processes of the cgroup {cg} only; a shell there:\n  \
         nsenter --net=/run/netns/{PROTECTED} sh -c 'echo $$ > {cg}/cgroup.procs && exec bash'\n  \
         {} --socket {} status\n  \
         edit {} and run: {} --socket {} reload\n\
         Ctrl-C stops the daemon and removes the sandbox.",
        config.display(),
        fwctl.display(),
        socket.display(),
        config.display(),
        fwctl.display(),
        socket.display()
    );
    // This process only passes stop signals on, waits and cleans up. `cargo xtask` runs it
    // under cargo, which does not pass signals on: when cargo dies, treat it as SIGTERM.
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only loads an atomic and calls kill, both async-signal-safe.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{PROTECTED}"))
        .arg("--")
        .arg(target_bin("firewall-daemon"))
        .arg("--config")
        .arg(&config)
        .args(["--interface", "fw0", "--xdp-mode", "generic"])
        .arg("--pin-dir")
        .arg(sb.bpffs.join("firewall"))
        .arg("--control-socket")
        .arg(&socket)
        .arg("--cgroup")
        .arg(sb.cgroup.path())
        .args(extra)
        .spawn()
        .context("starting the daemon in the sandbox")?;
    DAEMON_PID.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
    let status = loop {
        match child.wait() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.context("waiting for the daemon")?,
        }
    };
    drop(sb);
    if !status.success() && status.code() != Some(130) {
        bail!("firewall-daemon exited with {status}");
    }
    Ok(())
}
