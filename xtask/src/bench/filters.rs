//! The filters under test, each installed in the receiver namespace of its own pair: nothing,
//! the veth XDP floor (a program that only passes), iptables-legacy and nftables rule sets (the
//! set at the netdev ingress hook, nftables' fastest place for it, and a stateful set behind
//! conntrack, since this firewall is stateful), `xdp-filter` from xdp-tools (a plain XDP
//! address filter, the XDP peer), and this firewall's daemon. iptables and nftables run only
//! inside the receiver namespace (`nsenter`); their rules disappear with it, and xdp-filter's
//! pins live in a mount namespace of its own.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    interrupted,
    lab::{self, Pair, RX_IF},
    traffic::PORT,
};
use crate::{cgroup::DaemonCgroup, target_bin};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Filter {
    None,
    XdpPass,
    Iptables,
    NftRules,
    NftSet,
    NftCtSet,
    XdpTools,
    OursRules,
    OursSet,
}

/// Entries xdp-filter's IPv4 map holds (`max_entries` of its `filter_ipv4`, fixed at build).
pub const XDP_FILTER_MAX: u32 = 10_000;

impl Filter {
    pub const ALL: [Filter; 9] = [
        Filter::None,
        Filter::XdpPass,
        Filter::Iptables,
        Filter::NftRules,
        Filter::NftSet,
        Filter::NftCtSet,
        Filter::XdpTools,
        Filter::OursRules,
        Filter::OursSet,
    ];

    /// Short name, used for the namespaces.
    pub fn tag(self) -> &'static str {
        match self {
            Filter::None => "none",
            Filter::XdpPass => "xdppass",
            Filter::Iptables => "ipt",
            Filter::NftRules => "nftrules",
            Filter::NftSet => "nftset",
            Filter::NftCtSet => "nftct",
            Filter::XdpTools => "xdpfilter",
            Filter::OursRules => "oursrules",
            Filter::OursSet => "oursset",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::XdpPass => "XDP pass-only program (veth XDP floor)",
            Filter::Iptables => "iptables-legacy, N rules",
            Filter::NftRules => "nftables, N rules",
            Filter::NftSet => "nftables, one rule + N-element set, netdev ingress",
            Filter::NftCtSet => "nftables, conntrack + one rule + N-element set, input",
            Filter::XdpTools => "xdp-filter (xdp-tools), N source addresses (at most 10,000)",
            Filter::OursRules => "this firewall, N rules",
            Filter::OursSet => "this firewall, one rule + N-element [sets] set",
        }
    }

    /// Whether the filter drops the `Hit` traffic (the baselines accept everything).
    pub fn drops_hit(self) -> bool {
        !matches!(self, Filter::None | Filter::XdpPass)
    }

    pub fn is_ours(self) -> bool {
        matches!(self, Filter::OursRules | Filter::OursSet)
    }

    /// How many of the `n` rule addresses the filter holds (and the traffic uses): all but
    /// for xdp-filter, whose map has room for [`XDP_FILTER_MAX`].
    pub fn rules(self, n: u32) -> u32 {
        match self {
            Filter::XdpTools => n.min(XDP_FILTER_MAX),
            _ => n,
        }
    }
}

/// Rule addresses: `RULE_PREFIX | (i * RULE_MUL) & RULE_MASK` (see [`rule_addr`]).
pub const RULE_PREFIX: u32 = 0x6440_0000;
pub const RULE_MUL: u32 = 0x9E37_79B1;
pub const RULE_MASK: u32 = 0x3F_FFFF;

/// Rule (or set element) `i`: distinct addresses spread over 100.64.0.0/10 (a bijection on 22
/// bits, so no two rules share an address and neighbouring rules are not neighbouring
/// addresses that a compiler could merge into one prefix).
pub fn rule_addr(i: u32) -> [u8; 4] {
    (RULE_PREFIX | (i.wrapping_mul(RULE_MUL) & RULE_MASK)).to_be_bytes()
}

fn addr_str(a: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

/// What keeps a filter in place; dropping it removes the filter (the namespace holds the rest).
pub struct Installed {
    pub filter: Filter,
    /// Time to install the rule set: `iptables-legacy-restore`, `nft -f`, or the daemon's start
    /// (compile, load, attach) until it reports ready.
    pub load_ms: f64,
    pub daemon: Option<Daemon>,
    _pass: Option<PassProgram>,
    _xdp_filter: Option<XdpFilter>,
}

/// Installs `filter` with `n` rules in the pair's receiver namespace.
pub fn install(filter: Filter, n: u32, pair: &Pair, dir: &Path) -> anyhow::Result<Installed> {
    let t = Instant::now();
    let mut daemon = None;
    let mut pass = None;
    let mut xdp_filter = None;
    match filter {
        Filter::None => {}
        Filter::XdpPass => pass = Some(PassProgram::attach(pair, dir)?),
        Filter::Iptables => {
            let mut s = String::from(
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
            );
            for i in 0..n {
                let _ = writeln!(
                    s,
                    "-A INPUT -s {}/32 -p udp -m udp --dport {PORT} -j DROP",
                    addr_str(rule_addr(i))
                );
            }
            s.push_str("COMMIT\n");
            let file = dir.join(format!("iptables-{n}.rules"));
            std::fs::write(&file, s)?;
            lab::run(lab::ns_command(pair.rx_ns(), "iptables-legacy-restore").arg(&file))?;
        }
        Filter::NftRules => {
            let mut s = String::from("table ip fwbench {\n");
            s.push_str("  chain input {\n    type filter hook input priority 0; policy accept;\n");
            for i in 0..n {
                let _ = writeln!(
                    s,
                    "    ip saddr {} udp dport {PORT} drop",
                    addr_str(rule_addr(i))
                );
            }
            s.push_str("  }\n}\n");
            load_nft(pair, dir, filter, n, &s)?;
        }
        // nftables' strongest form for this traffic: a set, looked up at the netdev ingress
        // hook of the receiving device, before the IP stack (about 13 % faster than at input).
        Filter::NftSet => {
            let mut s = format!("table netdev fwbench {{\n{}", nft_set(n));
            let _ = writeln!(
                s,
                "  chain ingress {{\n    type filter hook ingress device \"{RX_IF}\" priority 0; \
                 policy accept;"
            );
            let _ = writeln!(s, "    ip saddr @blocked udp dport {PORT} drop");
            s.push_str("  }\n}\n");
            load_nft(pair, dir, filter, n, &s)?;
        }
        // The stateful form, as a host firewall is written: packets of known connections
        // accepted by conntrack first, then the set. Unreplied UDP stays `new` in conntrack, so
        // the one-flow traffic reaches the set lookup too, after conntrack found its entry.
        Filter::NftCtSet => {
            let mut s = format!("table ip fwbench {{\n{}", nft_set(n));
            s.push_str("  chain input {\n    type filter hook input priority 0; policy accept;\n");
            s.push_str("    ct state established,related accept\n");
            let _ = writeln!(s, "    ip saddr @blocked udp dport {PORT} drop");
            s.push_str("  }\n}\n");
            load_nft(pair, dir, filter, n, &s)?;
        }
        Filter::XdpTools => xdp_filter = Some(XdpFilter::install(pair, dir, filter.rules(n))?),
        Filter::OursRules | Filter::OursSet => {
            let d = Daemon::start(pair, dir, filter, n)?;
            daemon = Some(d);
        }
    }
    let load_ms = match &daemon {
        Some(d) => d.start_ms,
        None => t.elapsed().as_secs_f64() * 1e3,
    };
    Ok(Installed {
        filter,
        load_ms,
        daemon,
        _pass: pass,
        _xdp_filter: xdp_filter,
    })
}

/// The set `blocked` of the first `n` rule addresses, as nftables declares it in a table.
fn nft_set(n: u32) -> String {
    let mut s = String::from("  set blocked {\n    type ipv4_addr\n    elements = {\n");
    for i in 0..n {
        let _ = writeln!(s, "      {},", addr_str(rule_addr(i)));
    }
    s.push_str("    }\n  }\n");
    s
}

/// `nft -f` of `ruleset` in the pair's receiver namespace (one transaction).
fn load_nft(pair: &Pair, dir: &Path, filter: Filter, n: u32, ruleset: &str) -> anyhow::Result<()> {
    let file = dir.join(format!("nft-{}-{n}.nft", filter.tag()));
    std::fs::write(&file, ruleset)?;
    lab::run(lab::ns_command(pair.rx_ns(), "nft").arg("-f").arg(&file))?;
    Ok(())
}

/// xdp-filter loaded on the receiver's veth (native mode, IPv4 only, default allow) with `n`
/// source addresses to drop; detached when dropped.
///
/// xdp-filter 1.3.1 pins its maps under `/sys/fs/bpf`, or else under the first bpffs it finds
/// mounted (or mounts one at `/sys/fs/bpf`), whatever `LIBXDP_BPFFS` says. So it runs in a
/// private mount namespace with a bpffs of its own at `/sys/fs/bpf`, and its map is filled
/// there with one `bpftool batch` run (xdp-filter itself takes one process per address);
/// the pins go with that namespace, the program stays attached through the link layer
/// (without libxdp's dispatcher, whose parts live only as pins) and keeps its maps alive.
struct XdpFilter {
    ns: String,
}

impl XdpFilter {
    fn install(pair: &Pair, dir: &Path, n: u32) -> anyhow::Result<Self> {
        let mut batch = String::new();
        for i in 0..n {
            let [a, b, c, d] = rule_addr(i);
            // The value is xdp-filter's MAP_FLAG_SRC: drop packets from this address.
            let _ = writeln!(
                batch,
                "map update pinned /sys/fs/bpf/xdp-filter/filter_ipv4 key {a} {b} {c} {d} \
                 value 1 0 0 0 0 0 0 0"
            );
        }
        let file = dir.join(format!("xdp-filter-{n}.batch"));
        std::fs::write(&file, batch)?;
        let guard = Self {
            ns: pair.rx_ns().to_string(),
        };
        let script = format!(
            "set -e; mount -t bpf bpf /sys/fs/bpf; \
             nsenter --net=/run/netns/{ns} -- xdp-filter load {RX_IF} -m native -f ipv4; \
             bpftool batch file \"$1\"",
            ns = guard.ns
        );
        lab::run(
            Command::new("unshare")
                .args([
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    &script,
                    "sh",
                ])
                .arg(&file)
                .env("LIBXDP_SKIP_DISPATCHER", "1"),
        )?;
        Ok(guard)
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.ns, "link", "set", "dev", RX_IF, "xdp", "off"])
            .stderr(Stdio::null())
            .status();
    }
}

/// The object's `xdp_pass` program attached (native mode) to the receiver's veth by the
/// `testrun_bench attach-pass` helper, which holds the link until its stdin closes.
struct PassProgram {
    child: Child,
    stdin: Option<ChildStdin>,
}

pub fn example_bin() -> PathBuf {
    target_bin("examples/testrun_bench")
}

impl PassProgram {
    fn attach(pair: &Pair, dir: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(example_bin())
            .arg("attach-pass")
            .arg(pair.rx_ns_path())
            .arg(RX_IF)
            .arg(dir.join("bpffs").join(format!("pass-{}", pair.tag)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting testrun_bench attach-pass")?;
        let stdin = child.stdin.take();
        let mut guard = Self { child, stdin };
        let out = guard.child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if !line.starts_with("attached") {
            bail!("attaching xdp_pass to the receiver failed (see above)");
        }
        Ok(guard)
    }
}

impl Drop for PassProgram {
    fn drop(&mut self) {
        // EOF on its stdin ends the helper; its exit releases the link.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon's rules file for `n` rules (or set elements); `variant` 1 replaces the first
/// address with one no other rule has (for reloads that change something while the last
/// rule, which the `Hit` traffic matches, stays).
fn write_rules(filter: Filter, n: u32, variant: u32, dir: &Path) -> anyhow::Result<PathBuf> {
    let addr = |i: u32| {
        if i == 0 && variant % 2 == 1 {
            addr_str(rule_addr(n))
        } else {
            addr_str(rule_addr(i))
        }
    };
    let config = dir.join("rules.toml");
    let mut s =
        String::from("# Written by cargo xtask bench.\n[defaults]\ninbound = \"allow\"\n\n");
    if filter == Filter::OursSet {
        let list = dir.join("blocked.txt");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&list)?);
        for i in 0..n {
            writeln!(f, "{}", addr(i))?;
        }
        f.flush()?;
        let _ = writeln!(
            s,
            "[sets]\nblocked = {{ file = \"blocked.txt\" }}\n\n[[rule]]\nname = \"blocked\"\n\
             proto = \"udp\"\nport = {PORT}\nremote = \"@blocked\"\naction = \"stealth\""
        );
    } else {
        for i in 0..n {
            let _ = writeln!(
                s,
                "[[rule]]\nproto = \"udp\"\nport = {PORT}\nremote = \"{}\"\naction = \"stealth\"",
                addr(i)
            );
        }
    }
    std::fs::write(&config, s)?;
    Ok(config)
}

/// The TCP benchmark's rules: port 8000 open, everything else stealth.
pub const TCP_RULES: &str = "[defaults]\ninbound = \"stealth\"\n\n[[rule]]\nname = \"bench\"\n\
                             proto = \"tcp\"\nport = 8000\naction = \"allow\"\n";

/// The release daemon started inside a pair's receiver namespace, on `rx0` in native mode, with
/// a pin directory on the run's private bpffs and a private control socket; SIGTERM (then
/// SIGKILL) by PID when dropped.
pub struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    filter: Filter,
    n: u32,
    reloads: u32,
    /// Spawn to the readiness line: compile, load (verifier), fill the maps, attach.
    pub start_ms: f64,
    /// The daemon's `--cgroup` (never the machine's root cgroup); removed after the daemon.
    _cgroup: DaemonCgroup,
}

/// One `fwctl reload`.
#[derive(Clone, Copy, Debug)]
pub struct Reload {
    /// From starting `fwctl reload` to its answer (or, when fwctl timed out, to the daemon's
    /// next answer).
    pub wall_ms: f64,
    /// The daemon's own figure (`took_ms`), when fwctl got the answer.
    pub took_ms: Option<f64>,
    /// fwctl gave up waiting (its timeout is 30 s) before the daemon answered.
    pub fwctl_timed_out: bool,
}

impl Daemon {
    pub fn start(pair: &Pair, run_dir: &Path, filter: Filter, n: u32) -> anyhow::Result<Self> {
        let dir = daemon_dir(run_dir, &pair.tag)?;
        let config = write_rules(filter, n, 0, &dir)?;
        Self::spawn(pair, run_dir, dir, &config, filter, n)
    }

    /// The daemon with the TCP benchmark's rules ([`TCP_RULES`]); not reloaded.
    pub fn start_tcp(pair: &Pair, run_dir: &Path) -> anyhow::Result<Self> {
        let dir = daemon_dir(run_dir, &pair.tag)?;
        let config = dir.join("rules.toml");
        std::fs::write(&config, TCP_RULES)?;
        Self::spawn(pair, run_dir, dir, &config, Filter::None, 0)
    }

    fn spawn(
        pair: &Pair,
        run_dir: &Path,
        dir: PathBuf,
        config: &Path,
        filter: Filter,
        n: u32,
    ) -> anyhow::Result<Self> {
        let socket = dir.join("control.sock");
        let log = dir.join("daemon.log");
        let cgroup = DaemonCgroup::create(&format!(
            "fw-bench-{}-{}",
            std::process::id(),
            dir.file_name().unwrap_or_default().to_string_lossy()
        ))?;
        let t = Instant::now();
        let mut child = lab::ns_command(pair.rx_ns(), target_bin("firewall-daemon"))
            .arg("--config")
            .arg(config)
            .args(["--interface", RX_IF, "--xdp-mode", "native"])
            .arg("--pin-dir")
            .arg(
                run_dir
                    .join("bpffs")
                    .join(dir.file_name().unwrap_or_default()),
            )
            .arg("--control-socket")
            .arg(&socket)
            .arg("--cgroup")
            .arg(cgroup.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting firewall-daemon")?;
        let out = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("firewall-daemon: ready") {
                    let _ = tx.send(());
                }
            }
        });
        let mut d = Self {
            child,
            dir,
            socket,
            filter,
            n,
            reloads: 0,
            start_ms: 0.0,
            _cgroup: cgroup,
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(()) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = d.child.wait();
                    bail!(
                        "firewall-daemon exited before it was ready; {}:\n{}",
                        log.display(),
                        tail(&log)
                    );
                }
            }
            if interrupted() {
                bail!("interrupted");
            }
            if Instant::now() > deadline {
                bail!("firewall-daemon not ready after 600 s:\n{}", tail(&log));
            }
        }
        d.start_ms = t.elapsed().as_secs_f64() * 1e3;
        Ok(d)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn fwctl(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new(target_bin("fwctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    fn generation(&self) -> Option<u64> {
        let out = self.fwctl(&["status", "--json"]).ok()?;
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["generation"].as_u64()
    }

    /// Rewrites the rules file (alternating which address the first rule has, the last rule
    /// staying) and times `fwctl reload`.
    pub fn reload(&mut self) -> anyhow::Result<Reload> {
        self.reloads += 1;
        write_rules(self.filter, self.n, self.reloads, &self.dir)?;
        let before = self
            .generation()
            .context("fwctl status before the reload")?;
        let t = Instant::now();
        let out = self.fwctl(&["reload", "--json"])?;
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            return Ok(Reload {
                wall_ms: t.elapsed().as_secs_f64() * 1e3,
                took_ms: v["took_ms"].as_f64(),
                fwctl_timed_out: false,
            });
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if !err.contains("Resource temporarily unavailable") && !err.contains("timed out") {
            bail!("fwctl reload failed: {}", err.trim());
        }
        // fwctl's 30 s timeout ran out; the daemon is still reloading (it answers nothing
        // else meanwhile). Its next answer marks the end.
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            if let Some(g) = self.generation() {
                if g <= before {
                    bail!("the reload fwctl gave up on did not happen (generation {g})");
                }
                return Ok(Reload {
                    wall_ms: t.elapsed().as_secs_f64() * 1e3,
                    took_ms: None,
                    fwctl_timed_out: true,
                });
            }
            if interrupted() {
                bail!("interrupted");
            }
            if Instant::now() > deadline {
                bail!("the daemon did not answer within 900 s of a reload");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A directory of its own for each daemon started (rules, socket, log), named after the pair
/// and a sequence number; its pin directory on the bpffs gets the same name, so no daemon ever
/// adopts another's pins.
fn daemon_dir(run_dir: &Path, tag: &str) -> anyhow::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = run_dir.join(format!(
        "daemon-{tag}-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child by its PID.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            // A reload in progress delays the exit; the namespace and the bpffs go anyway.
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The nftables stateful rule set of the TCP benchmark: established/related by conntrack, new
/// connections to port 8000, nothing else.
pub fn install_nft_conntrack(pair: &Pair, dir: &Path) -> anyhow::Result<()> {
    let file = dir.join("nft-conntrack.nft");
    std::fs::write(
        &file,
        "table ip fwbench {\n  chain input {\n    type filter hook input priority 0; policy drop;\n    \
         ct state established,related accept\n    iif lo accept\n    \
         tcp dport 8000 accept\n  }\n}\n",
    )?;
    lab::run(lab::ns_command(pair.rx_ns(), "nft").arg("-f").arg(&file))?;
    Ok(())
}
