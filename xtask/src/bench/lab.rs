//! The benchmark's private world: a run directory with a private bpffs, pairs of network
//! namespaces joined by veth (sender `tx0` in `fwbench-TAG-tx`, receiver `rx0` in
//! `fwbench-TAG-rx`), UDP sinks, and the receiver's counters. Every guard removes what it created
//! when dropped, also on error or Ctrl-C; nothing here touches the root namespace's interfaces
//! or firewall.

use std::{
    fs::File,
    io::{Read as _, Seek as _},
    net::UdpSocket,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::interrupted;

/// Prefix of every namespace the benchmark creates; leftovers of a killed run are removed at
/// start.
pub const NS_PREFIX: &str = "fwbench-";
pub const TX_IF: &str = "tx0";
pub const RX_IF: &str = "rx0";
pub const TX_ADDR: [u8; 4] = [10, 201, 0, 1];
pub const RX_ADDR: [u8; 4] = [10, 201, 0, 2];

/// Runs a command, failing with its stderr when it does not succeed.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `nsenter --net=/run/netns/NS -- PROGRAM`: unlike `ip netns exec`, keeps /sys and the bpffs
/// mounts visible.
pub fn ns_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    c
}

/// Runs `f` on a new thread that entered namespace `ns` (a network namespace is per thread).
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_ns(&path)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread inside {ns} panicked"))?
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_ns(path: &str) -> anyhow::Result<()> {
    let f = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: plain syscall on a valid descriptor; affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// Pins the calling thread to `cpu`.
pub fn pin_thread(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

/// Sleeps, returning early with an error when the run is interrupted.
pub fn sleep(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    loop {
        if interrupted() {
            bail!("interrupted");
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// The run directory with a private bpf filesystem mounted in it. Dropping it unmounts the
/// bpffs (removing every pin made there) and deletes the directory.
pub struct RunDir {
    pub path: PathBuf,
    pub bpffs: PathBuf,
}

impl RunDir {
    pub fn create(path: PathBuf) -> anyhow::Result<Self> {
        let bpffs = path.join("bpffs");
        // Leftovers of a run that was killed before it could clean up.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&bpffs)
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs))
            .context("mounting a private bpffs (the benchmark needs root)")?;
        Ok(Self { path, bpffs })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Deletes namespaces left by an earlier run that was killed (SIGKILL cannot be cleaned up).
pub fn remove_leftovers() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(NS_PREFIX) {
            eprintln!("xtask bench: removing namespace {name} left by an earlier run");
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// A namespace owned by the benchmark, deleted on drop.
struct Ns(String);

impl Ns {
    fn add(name: String) -> anyhow::Result<Self> {
        run(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(Self(name))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// Two namespaces joined by a veth pair: `tx0` (10.201.0.1) sends, `rx0` (10.201.0.2) receives
/// and holds the filter under test.
pub struct Pair {
    pub tag: String,
    pub tx_mac: [u8; 6],
    pub rx_mac: [u8; 6],
    counters: Counters,
    // Declared last: the namespaces go after everything that lives in them.
    rx: Ns,
    tx: Ns,
}

impl Pair {
    /// With `gro`, GRO on `rx0`: veth then receives XDP frames redirected into `tx0` even
    /// without an XDP program of its own (the live generator's frames).
    pub fn new(tag: &str, gro: bool) -> anyhow::Result<Self> {
        let tx = Ns::add(format!("{NS_PREFIX}{tag}-tx"))?;
        let rx = Ns::add(format!("{NS_PREFIX}{tag}-rx"))?;
        run(Command::new("ip").args([
            "link", "add", TX_IF, "netns", &tx.0, "type", "veth", "peer", "name", RX_IF, "netns",
            &rx.0,
        ]))?;
        for (ns, dev, addr) in [(&tx.0, TX_IF, TX_ADDR), (&rx.0, RX_IF, RX_ADDR)] {
            let addr = format!("{}/24", std::net::Ipv4Addr::from(addr));
            // No IPv6 on the pair: no neighbour discovery or MLD traffic in the counters.
            run(ns_command(ns, "sysctl").args([
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
            run(Command::new("ip").args(["-n", ns, "addr", "add", &addr, "dev", dev]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]))?;
        }
        // The TCP benchmark opens many connections: the whole ephemeral range, and a route back
        // for the random source addresses of the new-flow traffic (rp_filter is off in a new
        // namespace; the route keeps the receiver's answers, if any, on the veth).
        run(ns_command(&tx.0, "sysctl").args([
            "-q",
            "-w",
            "net.ipv4.ip_local_port_range=1024 65535",
        ]))?;
        run(Command::new("ip").args([
            "-n",
            &rx.0,
            "route",
            "add",
            "default",
            "via",
            "10.201.0.1",
            "dev",
            RX_IF,
        ]))?;
        if gro {
            run(ns_command(&rx.0, "ethtool").args(["-K", RX_IF, "gro", "on"]))?;
        }
        let tx_mac = mac(&tx.0, TX_IF)?;
        let rx_mac = mac(&rx.0, RX_IF)?;
        let counters = Counters::open(&rx.0)?;
        Ok(Self {
            tag: tag.to_string(),
            tx_mac,
            rx_mac,
            counters,
            rx,
            tx,
        })
    }

    pub fn tx_ns(&self) -> &str {
        &self.tx.0
    }

    pub fn rx_ns(&self) -> &str {
        &self.rx.0
    }

    pub fn rx_ns_path(&self) -> String {
        format!("/run/netns/{}", self.rx.0)
    }

    pub fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        self.counters.read()
    }
}

fn mac(ns: &str, dev: &str) -> anyhow::Result<[u8; 6]> {
    let out = run(Command::new("ip").args(["-n", ns, "-o", "link", "show", "dev", dev]))?;
    let text = out
        .split("link/ether ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .with_context(|| format!("no MAC address for {dev} in {out}"))?;
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = parts
            .next()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .with_context(|| format!("bad MAC address {text:?}"))?;
    }
    Ok(mac)
}

/// The receiver's counters at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    pub at: Instant,
    /// `rx_packets` of `rx0`.
    pub rx_packets: u64,
    /// `Ip: InDelivers`: IPv4 packets handed to a transport protocol (not dropped).
    pub in_delivers: u64,
}

/// `/proc/net/dev` and `/proc/net/snmp` of the receiver namespace, opened from a thread inside
/// it (the files stay bound to that namespace) and re-read from the start for each snapshot.
struct Counters {
    dev: File,
    snmp: File,
}

impl Counters {
    fn open(ns: &str) -> anyhow::Result<Self> {
        let (dev, snmp) = in_ns(ns, || {
            Ok((
                File::open("/proc/thread-self/net/dev")?,
                File::open("/proc/thread-self/net/snmp")?,
            ))
        })?;
        Ok(Self { dev, snmp })
    }

    fn read(&mut self) -> anyhow::Result<Snapshot> {
        let mut dev = String::new();
        self.dev.rewind()?;
        self.dev.read_to_string(&mut dev)?;
        let at = Instant::now();
        let mut snmp = String::new();
        self.snmp.rewind()?;
        self.snmp.read_to_string(&mut snmp)?;
        let rx_packets = dev
            .lines()
            .find_map(|l| {
                let (name, rest) = l.split_once(':')?;
                (name.trim() == RX_IF)
                    .then(|| rest.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .flatten()
            })
            .context("rx0 missing from /proc/net/dev")?;
        Ok(Snapshot {
            at,
            rx_packets,
            in_delivers: snmp_field(&snmp, "Ip", "InDelivers")?,
        })
    }
}

fn snmp_field(text: &str, proto: &str, field: &str) -> anyhow::Result<u64> {
    let prefix = format!("{proto}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next(), lines.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("{proto} missing from /proc/net/snmp");
    };
    let i = names
        .split_whitespace()
        .position(|n| n == field)
        .with_context(|| format!("{proto} {field} missing from /proc/net/snmp"))?;
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{proto} {field}: no value"))
}

/// A UDP socket bound to the receiver's port 9, which nobody reads: accepted traffic is
/// delivered to it (so the stack sends no ICMP errors), and once its buffer is full the stack
/// drops each datagram at the socket (`Udp RcvbufErrors`). That end of the path costs the same
/// for every filter and at every rate; a reader would add wake-ups whose number depends on how
/// fast the packets come.
pub struct Sink {
    _sock: UdpSocket,
}

impl Sink {
    pub fn start(pair: &Pair, port: u16) -> anyhow::Result<Self> {
        let sock = in_ns(pair.rx_ns(), move || {
            Ok(UdpSocket::bind((std::net::Ipv4Addr::from(RX_ADDR), port))?)
        })?;
        Ok(Self { _sock: sock })
    }
}

/// Reads `VmHWM` (peak resident set) of a process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Reads `VmRSS` (resident set now) of a process, in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Time process `pid` has spent on a CPU, in ns (`/proc/PID/schedstat`). Without
/// IRQ_TIME_ACCOUNTING this includes the softirq work done in its context, which on veth is the
/// receiver's whole path.
pub fn runtime_ns(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// (pid, parent pid, command name) of every process.
fn processes() -> Vec<(u32, u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, tail) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            let ppid = tail.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid, comm))
        })
        .collect()
}

/// Every process below `root` (children, grandchildren, ...).
pub fn descendants(root: u32) -> Vec<u32> {
    let all = processes();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, ppid, _) in &all {
            if *ppid == p {
                out.push(*pid);
                frontier.push(*pid);
            }
        }
    }
    out
}

/// The PID of `ksoftirqd/CPU`, which runs the softirq work that did not fit in the sender's
/// own context.
pub fn ksoftirqd(cpu: usize) -> Option<u32> {
    let name = format!("ksoftirqd/{cpu}");
    processes()
        .into_iter()
        .find(|(_, _, comm)| *comm == name)
        .map(|(pid, _, _)| pid)
}
