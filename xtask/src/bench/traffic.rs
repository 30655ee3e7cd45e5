//! Load generation and the receive-rate measurement.
//!
//! Two generators send the same 60-byte UDP frames (64 on the wire with the FCS) from `tx0`
//! through the veth; on veth the receiver's whole path runs on the sending core, so the rate
//! is one core's capacity for send + receive + filter.
//!
//! - [`Generator::Live`] (the default): the object's generator program, run in live-frame
//!   mode by `testrun_bench generate`, writes each frame's source address and redirects it
//!   into `tx0`; the receiver gets `xdp_frame`s, as from a NIC's driver, and its XDP program
//!   runs on them without a socket buffer being built first. Frames its XDP program passes
//!   (or every frame, without a program) become socket buffers in the receiver's NAPI poll,
//!   which GRO on `rx0` turns on.
//! - [`Generator::Trafgen`] (netsniff-ng): frames sent through a packet socket arrive at the
//!   receiver as socket buffers, which veth copies into an XDP buffer for its program: a
//!   floor no XDP program can get under, and one nftables does not pay.
//!
//! Every run is bounded twice: by `timeout` and by its own limit (a packet count for trafgen,
//! a deadline for the generator), so it stops by itself even if this process is killed.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    filters::{RULE_MASK, RULE_MUL, RULE_PREFIX, example_bin, rule_addr},
    lab::{self, Pair, RX_ADDR, Snapshot, TX_ADDR, TX_IF},
};

/// What sends the frames (see the module's text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Generator {
    Live,
    Trafgen,
}

impl Generator {
    pub fn describe(self) -> &'static str {
        match self {
            Generator::Live => "live XDP frames (BPF_PROG_RUN, BPF_F_TEST_XDP_LIVE_FRAMES)",
            Generator::Trafgen => "trafgen (socket buffers through a packet socket)",
        }
    }
}

/// What the test traffic looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flow {
    /// From the address of the last rule (the last set element), fixed source port: every
    /// filter under test drops it.
    Hit,
    /// From [`MANY_SOURCES`] rule addresses (every one when N is smaller) in turn, one packet
    /// each, fixed source port: dropped like `Hit`, but no lookup is kept warm by a repeated
    /// address (a scan or a flood from a blocklist).
    HitMany,
    /// From the sender's own address, fixed source port: no rule matches, accepted. One flow:
    /// with connection tracking, every packet after the first is a tracked packet.
    Miss,
    /// From a random address in 10.202.0.0/16 and a random source port for each packet: no
    /// rule matches, accepted, and (nearly) every packet is the first of a new flow.
    NewFlows,
}

impl Flow {
    pub const ALL: [Flow; 4] = [Flow::Hit, Flow::HitMany, Flow::Miss, Flow::NewFlows];

    /// Whether the filters under test drop this traffic (from rule addresses).
    pub fn dropped(self) -> bool {
        matches!(self, Flow::Hit | Flow::HitMany)
    }

    pub fn tag(self) -> &'static str {
        match self {
            Flow::Hit => "hit",
            Flow::HitMany => "hitmany",
            Flow::Miss => "miss",
            Flow::NewFlows => "new",
        }
    }
}

/// UDP port the test traffic goes to (the sink listens there, the rules name it).
pub const PORT: u16 = 9;
/// Sources of the many-source dropped traffic: rule addresses, one packet each in turn.
pub const MANY_SOURCES: u32 = 20_000;

/// Fixed source port of the one-flow traffic.
const SPORT: u16 = 40000;
/// Upper bound on any veth packet rate here, for trafgen's packet budget.
const MAX_PPS: f64 = 4_000_000.0;

fn bytes(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("0x{x:02x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// trafgen packet configuration: Ethernet, IPv4 (checksum computed by trafgen, per packet when
/// fields vary), UDP without checksum (allowed for IPv4), 18 bytes of payload: 60 bytes. With
/// `n` rules; many-source traffic is one packet per source, which trafgen sends in turn.
pub fn trafgen_config(pair: &Pair, flow: Flow, n: u32, cpu: usize) -> String {
    let sources: Vec<String> = match flow {
        Flow::Hit => vec![bytes(&rule_addr(n - 1))],
        // Spread over all N rules, so that with N > MANY_SOURCES the sources are not one
        // corner of the rule set.
        Flow::HitMany => {
            let k = n.min(MANY_SOURCES);
            (0..k)
                .map(|i| {
                    bytes(&rule_addr(
                        (u64::from(i) * u64::from(n) / u64::from(k)) as u32,
                    ))
                })
                .collect()
        }
        Flow::Miss => vec![bytes(&TX_ADDR)],
        Flow::NewFlows => vec!["10, 202, drnd(2)".to_string()],
    };
    let sport = match flow {
        Flow::NewFlows => "drnd(2)".to_string(),
        _ => bytes(&SPORT.to_be_bytes()),
    };
    let mut out = format!("/* {flow:?} traffic for the {} pair */\n", pair.tag);
    for src in sources {
        out.push_str(&format!(
            "cpu({cpu}): {{\n  {dst},\n  {srcmac},\n  0x08, 0x00,\n  \
             0x45, 0x00, 0x00, 46, 0x00, 0x00, 0x40, 0x00, 64, 17, csumip(14, 33),\n  \
             {src},\n  {dstip},\n  {sport}, {dport}, 0x00, 26, 0x00, 0x00,\n  fill(0x00, 18),\n}}\n",
            dst = bytes(&pair.rx_mac),
            srcmac = bytes(&pair.tx_mac),
            dstip = bytes(&RX_ADDR),
            dport = bytes(&PORT.to_be_bytes()),
        ));
    }
    out
}

/// The frame both generators send (the live generator rewrites its source address, and its
/// source port for [`Flow::NewFlows`]): Ethernet, IPv4 with its checksum, UDP without one.
pub fn frame(pair: &Pair, src: [u8; 4]) -> Vec<u8> {
    let mut ip = vec![0x45, 0x00, 0x00, 46, 0x00, 0x00, 0x40, 0x00, 64, 17, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&RX_ADDR);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&pair.rx_mac);
    f.extend_from_slice(&pair.tx_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&SPORT.to_be_bytes());
    f.extend_from_slice(&PORT.to_be_bytes());
    f.extend_from_slice(&[0x00, 26, 0x00, 0x00]);
    f.extend_from_slice(&[0; 18]);
    f
}

/// The live generator's sources for `flow` with `n` rules: the fields of `GenConfig` after
/// the interface, in order (`PREFIX,MASK,MUL,FIRST,SPAN,COUNT,RANDOM_PORT`). They draw the
/// same addresses as [`trafgen_config`], at random instead of in turn.
pub fn live_sources(flow: Flow, n: u32) -> [u32; 7] {
    match flow {
        Flow::Hit => [RULE_PREFIX, RULE_MASK, RULE_MUL, n - 1, 1, 1, 0],
        Flow::HitMany => [
            RULE_PREFIX,
            RULE_MASK,
            RULE_MUL,
            0,
            n,
            n.min(MANY_SOURCES),
            0,
        ],
        Flow::Miss => [u32::from_be_bytes(TX_ADDR), 0, 0, 0, 1, 1, 0],
        Flow::NewFlows => [0x0aca_0000, 0xffff, 1, 0, 1 << 16, 1 << 16, 1],
    }
}

/// `testrun_bench generate ...`: the live generator for `flow`.
fn live_args(
    pair: &Pair,
    dir: &Path,
    flow: Flow,
    n: u32,
    cpu: usize,
    max_secs: f64,
) -> Vec<String> {
    let src = match flow {
        Flow::Miss => TX_ADDR,
        _ => rule_addr(0),
    };
    let hex: String = frame(pair, src)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let sources = live_sources(flow, n)
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    vec![
        example_bin().display().to_string(),
        "generate".into(),
        format!("/run/netns/{}", pair.tx_ns()),
        TX_IF.into(),
        dir.join("bpffs")
            .join(format!("generator-{}", pair.tag))
            .display()
            .to_string(),
        hex,
        format!("{max_secs}"),
        cpu.to_string(),
        sources,
    ]
}

/// `trafgen ...` for `flow` (its configuration written to the run directory).
fn trafgen_args(
    pair: &Pair,
    dir: &Path,
    flow: Flow,
    n: u32,
    cpu: usize,
    max_secs: f64,
) -> anyhow::Result<Vec<String>> {
    let cfg = dir.join(format!("trafgen-{}-{}.cfg", pair.tag, flow.tag()));
    std::fs::write(&cfg, trafgen_config(pair, flow, n, cpu))?;
    let budget = ((max_secs + 1.0) * MAX_PPS) as u64;
    // `-P cpu+1` forks one worker per core up to `cpu`; the `cpu(N):` prefix of the packet
    // gives it to that core's worker only, the others exit at once. trafgen pins each worker
    // to its core.
    Ok([
        "trafgen",
        "-o",
        TX_IF,
        "-i",
        &cfg.display().to_string(),
        "-P",
        &(cpu + 1).to_string(),
        "--no-sock-mem",
        "--notouch-irq",
        "-n",
        &budget.to_string(),
    ]
    .map(String::from)
    .to_vec())
}

/// A running generator, stopped (SIGINT, then SIGKILL) when dropped.
pub struct Sender {
    child: Child,
    log: PathBuf,
}

impl Sender {
    /// Starts a generator for the pair's sender, sending `flow` (for `n` rules) from core
    /// `cpu` for at most `max_secs` seconds. Either runs under `timeout`, which forwards SIGINT
    /// and kills it 3 s later if it has not stopped.
    pub fn start(
        generator: Generator,
        pair: &Pair,
        dir: &Path,
        flow: Flow,
        n: u32,
        cpu: usize,
        max_secs: f64,
    ) -> anyhow::Result<Self> {
        let limit = format!("{}", max_secs.ceil() as u64 + 2);
        let mut cmd = match generator {
            // The generator enters the sender namespace itself.
            Generator::Live => {
                let mut c = std::process::Command::new("timeout");
                c.args(["-s", "INT", "-k", "3", &limit])
                    .args(live_args(pair, dir, flow, n, cpu, max_secs));
                c
            }
            Generator::Trafgen => {
                let mut c = lab::ns_command(pair.tx_ns(), "timeout");
                c.args(["-s", "INT", "-k", "3", &limit])
                    .args(trafgen_args(pair, dir, flow, n, cpu, max_secs)?);
                c
            }
        };
        let log = dir.join(format!("generator-{}.log", pair.tag));
        let out = File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {generator:?}"))?;
        Ok(Self { child, log })
    }

    /// PID of the `timeout` process that runs the generator.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(6)..].join("\n")
    }

    /// Waits until the receiver sees packets (trafgen sets up its ring first, the generator
    /// loads its program).
    pub fn wait_flowing(&mut self, pair: &mut Pair) -> anyhow::Result<()> {
        let first = pair.snapshot()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            lab::sleep(Duration::from_millis(20))?;
            if pair.snapshot()?.rx_packets > first.rx_packets + 100 {
                return Ok(());
            }
            if !self.running() {
                bail!("the generator exited before sending:\n{}", self.log_tail());
            }
        }
        bail!("no packets arrived within 5 s:\n{}", self.log_tail())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.running() {
            // SAFETY: signalling our own child by its PID.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.running() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// CPU time of a set of processes, in ns, by PID: the sender's processes and the core's
/// ksoftirqd. Only the processes present at both readings count.
pub struct CpuClock {
    pids: Vec<u32>,
}

impl CpuClock {
    /// The generator's processes (below `root`) and `ksoftirqd/cpu`.
    pub fn new(root: u32, cpu: usize) -> Self {
        let mut pids = lab::descendants(root);
        pids.extend(lab::ksoftirqd(cpu));
        Self { pids }
    }

    pub fn read(&self) -> BTreeMap<u32, u64> {
        self.pids
            .iter()
            .filter_map(|&p| Some((p, lab::runtime_ns(p)?)))
            .collect()
    }

    pub fn elapsed_ns(a: &BTreeMap<u32, u64>, b: &BTreeMap<u32, u64>) -> u64 {
        b.iter()
            .filter_map(|(p, t)| Some(t.saturating_sub(*a.get(p)?)))
            .sum()
    }
}

/// One measurement window.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Packets received per second of wall-clock time.
    pub pps: f64,
    /// Packets received per second of CPU time spent by the sender's processes (whose context
    /// runs the receiver's path) and the core's ksoftirqd: the rate the core would reach with
    /// nothing else to run. On a shared machine this is the steadier figure.
    pub cpu_pps: f64,
    /// Fraction of the received packets delivered to a transport protocol (`Ip InDelivers`):
    /// about 1 when accepted, 0 when dropped.
    pub delivered: f64,
}

pub fn sample(a: &Snapshot, b: &Snapshot, cpu_ns: u64) -> Sample {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let rx = b.rx_packets.saturating_sub(a.rx_packets);
    let delivered = b.in_delivers.saturating_sub(a.in_delivers);
    Sample {
        pps: if secs > 0.0 { rx as f64 / secs } else { 0.0 },
        cpu_pps: if cpu_ns > 0 {
            rx as f64 / (cpu_ns as f64 / 1e9)
        } else {
            0.0
        },
        delivered: if rx > 0 {
            delivered as f64 / rx as f64
        } else {
            0.0
        },
    }
}

/// Sends `flow` into `pair` and measures the receive rate over `secs` seconds, after a short
/// warm-up.
pub fn measure(
    generator: Generator,
    pair: &mut Pair,
    dir: &Path,
    flow: Flow,
    n: u32,
    cpu: usize,
    secs: f64,
) -> anyhow::Result<Sample> {
    let warmup = Duration::from_millis(300);
    let mut tg = Sender::start(generator, pair, dir, flow, n, cpu, secs + 5.0)?;
    tg.wait_flowing(pair)?;
    lab::sleep(warmup)?;
    let clock = CpuClock::new(tg.pid(), cpu);
    let c0 = clock.read();
    let a = pair.snapshot()?;
    lab::sleep(Duration::from_secs_f64(secs))?;
    let b = pair.snapshot()?;
    let c1 = clock.read();
    if !tg.running() {
        bail!(
            "the generator stopped during the window:\n{}",
            tg.log_tail()
        );
    }
    drop(tg);
    Ok(sample(&a, &b, CpuClock::elapsed_ns(&c0, &c1)))
}
