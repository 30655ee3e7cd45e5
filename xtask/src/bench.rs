//! `cargo xtask bench`: this firewall against nftables and iptables, side by side in one run.
//!
//! 1. BPF_PROG_TEST_RUN figures of the XDP program (`firewall-daemon/examples/testrun_bench.rs`).
//! 2. Receive rate over veth: for each rule count N, one pair of network namespaces per filter
//!    (no filter, XDP pass-only, iptables-legacy rules, nftables rules, nftables set at netdev
//!    ingress, nftables conntrack + set, xdp-filter, this firewall's rules, this firewall's
//!    set), all installed at once; a generator (live XDP frames by default, or trafgen) sends
//!    60-byte UDP frames (64 on the wire) from one core into one pair at a time, the
//!    repetitions going round the pairs so that every filter sees the same machine load. Four
//!    kinds of traffic: from the last rule's address (dropped), from 20,000 rule addresses
//!    (dropped, many sources), matching none from one source (accepted; tracked after its
//!    first packet by our connection table), matching none from a new source address and port
//!    every packet (accepted; a new flow each time). Rates are taken per second of wall-clock time
//!    and per second of the sending core's CPU time (trafgen's processes, in whose context the
//!    receive path runs, and the core's ksoftirqd): on a shared machine the second is the
//!    steady one, and the targets use it.
//! 3. Our daemon's start (compile + load + attach) and `fwctl reload` time at each N, while
//!    dropped traffic flows (the receiver must deliver none of it: no window without rules),
//!    and its peak RSS.
//! 4. TCP connection setup rate with no filter, nftables conntrack and this firewall.
//! 5. What the outbound hooks add to connect(), with and without rules about programs
//!    (`firewall-daemon/examples/connect_bench.rs`).
//! 6. Names: what the XDP program pays to read a DNS answer (`testrun_bench dns`, read against
//!    passed in one run), and connect() to a destination with a name, with 10 and 1,000,000
//!    names in the rules, against 10 rules naming addresses (`connect_bench names`).
//!
//! Everything runs in namespaces created here (`fwbench-*`) with a private bpffs; the guards
//! remove them on error and Ctrl-C, and a later run removes what a killed one left.

mod filters;
mod lab;
mod report;
mod tcp;
mod traffic;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::workspace_root;
use filters::{Daemon, Filter, Installed};
use lab::{Pair, Sink};
use report::{Block, Cell, Names, OursRun, Results, TcpCell};
use traffic::{Flow, Generator, PORT};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Quick check (CI): N = 1,000 only, one repetition, 1-second windows.
    #[arg(long)]
    quick: bool,
    /// Rule counts, comma-separated [default: 10,1000,100000; --quick: 1000].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    n: Option<Vec<u32>>,
    /// Repetitions of every measurement [default: 5; --quick: 1].
    #[arg(long)]
    reps: Option<usize>,
    /// Seconds per measurement window [default: 2; --quick: 1].
    #[arg(long)]
    secs: Option<f64>,
    /// Core that sends (the generator) and runs the TCP loop [default: 1, or 0 on one core].
    #[arg(long)]
    cpu: Option<usize>,
    /// What sends the UDP traffic: XDP frames injected into the veth (`live`, needs Linux
    /// 5.18), or trafgen's socket buffers (`trafgen`, the veth floor of earlier runs).
    #[arg(long, value_enum, default_value = "live")]
    generator: Generator,
    /// Report file [default: BENCHMARKS.md; --quick: target/bench/BENCHMARKS.quick.md].
    #[arg(long)]
    output: Option<PathBuf>,
    /// Skip the BPF_PROG_TEST_RUN part.
    #[arg(long)]
    no_testrun: bool,
    /// Skip the connect() part.
    #[arg(long)]
    no_connect: bool,
    /// Skip the names part (reading DNS answers, connect() to a destination with a name).
    #[arg(long)]
    no_names: bool,
    /// Measure only the names part, and replace the Names section of the report in place
    /// (the rest of the file stays as its full run wrote it; the section says when and where
    /// it was measured).
    #[arg(long, conflicts_with = "no_names")]
    only_names: bool,
    /// Skip the build (use the release binaries already in target/).
    #[arg(long)]
    no_build: bool,
}

/// The settings of one run, after defaults.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    pub counts: Vec<u32>,
    pub reps: usize,
    pub secs: f64,
    pub cpu: usize,
    pub generator: Generator,
    pub command: String,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// True once SIGINT/SIGTERM/SIGHUP arrived: every wait checks it and unwinds, the guards
/// cleaning up.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench needs root (namespaces, BPF programs, trafgen)");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plan = Plan {
        quick: args.quick,
        counts: args.n.clone().unwrap_or_else(|| {
            if args.quick {
                vec![1_000]
            } else {
                vec![10, 1_000, 100_000]
            }
        }),
        reps: args.reps.unwrap_or(if args.quick { 1 } else { 5 }).max(1),
        secs: args.secs.unwrap_or(if args.quick { 1.0 } else { 2.0 }),
        cpu: args.cpu.unwrap_or(if cpus > 1 { 1 } else { 0 }),
        generator: args.generator,
        command: format!(
            "cargo xtask {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        ),
    };
    if plan.counts.is_empty() || plan.counts.contains(&0) {
        bail!("--n: rule counts must be at least 1");
    }
    if plan.cpu >= cpus {
        bail!("--cpu {}: this machine has {cpus} cores", plan.cpu);
    }
    if !(0.2..=60.0).contains(&plan.secs) {
        bail!("--secs must be between 0.2 and 60");
    }
    let output = args.output.clone().unwrap_or_else(|| {
        if args.quick {
            workspace_root().join("target/bench/BENCHMARKS.quick.md")
        } else {
            workspace_root().join("BENCHMARKS.md")
        }
    });
    let mut tools = vec![
        "trafgen",
        "nft",
        "iptables-legacy-restore",
        "nsenter",
        "timeout",
        "xdp-filter",
        "bpftool",
    ];
    if plan.generator == Generator::Live {
        tools.push("ethtool");
    }
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            bail!(
                "{tool} not found (cargo xtask setup installs netsniff-ng, nftables, iptables, \
                 xdp-tools, bpftool, ethtool)"
            );
        }
    }
    if !args.no_build {
        crate::cargo(&[
            "build",
            "--release",
            "-p",
            "firewall-daemon",
            "--bins",
            "--example",
            "testrun_bench",
            "--example",
            "connect_bench",
        ])?;
    }

    let started = Instant::now();
    if args.only_names {
        let names = names(&plan)?;
        let facts = machine_facts();
        let fact = |k: &str| facts.get(k).cloned().unwrap_or_default();
        let section = report::names_markdown(
            &names,
            &format!(
                "Measured apart from the rest of this file, by `{}` on {} at commit {} \
                 (kernel {}); the next full run measures it with the rest.",
                plan.command,
                fact("date"),
                fact("firewall"),
                fact("kernel")
            ),
        );
        let before = std::fs::read_to_string(&output).unwrap_or_default();
        let text = report::replace_section(&before, "## Names\n", &section);
        println!("{section}");
        std::fs::write(&output, &text).with_context(|| format!("writing {}", output.display()))?;
        eprintln!(
            "xtask bench: replaced the Names section of {} ({:.1} min)",
            output.display(),
            started.elapsed().as_secs_f64() / 60.0
        );
        return Ok(());
    }
    let mut results = Results::new(plan.clone());
    if !args.no_testrun {
        results.testrun = Some(testrun(&plan)?);
    }
    lab::remove_leftovers();
    let run_dir = lab::RunDir::create(workspace_root().join("target/bench/run"))?;
    for &n in &plan.counts {
        results.blocks.push(udp_block(n, &plan, &run_dir)?);
    }
    results.tcp = tcp_block(&plan, &run_dir)?;
    drop(run_dir);
    if !args.no_connect {
        results.connect = Some(connect_cost(&plan)?);
    }
    if !args.no_names {
        results.names = Some(names(&plan)?);
    }
    results.finish(started.elapsed());

    let text = report::markdown(&results);
    println!("{text}");
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&output, &text).with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "xtask bench: wrote {} ({:.1} min)",
        output.display(),
        started.elapsed().as_secs_f64() / 60.0
    );
    let failures = results.failures();
    if !failures.is_empty() {
        bail!(
            "{} measurement(s) failed or had the wrong verdict:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// The BPF_PROG_TEST_RUN part, as JSON from the example.
fn testrun(plan: &Plan) -> anyhow::Result<serde_json::Value> {
    eprintln!("xtask bench: BPF_PROG_TEST_RUN");
    let mut cmd = Command::new(filters::example_bin());
    cmd.arg("--json").arg("--n").arg(
        plan.counts
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );
    if plan.quick {
        cmd.arg("--quick");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running testrun_bench")?;
    if !out.status.success() {
        bail!("testrun_bench failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).context("testrun_bench --json output")
}

/// The connect() table printed by the example (markdown), which runs in a namespace, bpffs and
/// cgroup of its own.
fn connect_cost(plan: &Plan) -> anyhow::Result<String> {
    eprintln!("xtask bench: connect() cost");
    let (runs, calls) = if plan.quick {
        ("1", "10000")
    } else {
        ("5", "100000")
    };
    let out = Command::new(crate::target_bin("examples/connect_bench"))
        .args(["--runs", runs, "--calls", calls])
        .stderr(Stdio::inherit())
        .output()
        .context("running connect_bench")?;
    if !out.status.success() {
        bail!("connect_bench failed ({})", out.status);
    }
    String::from_utf8(out.stdout).context("connect_bench output")
}

/// The names part: `testrun_bench dns` (JSON) and `connect_bench names` (its markdown table).
/// Both take seconds, the quick run's too (1,000,000 names included: about 1 s to load).
fn names(plan: &Plan) -> anyhow::Result<Names> {
    eprintln!("xtask bench: names: reading DNS answers (BPF_PROG_TEST_RUN)");
    let mut cmd = Command::new(filters::example_bin());
    cmd.args(["dns", "--json"]);
    if plan.quick {
        cmd.arg("--quick");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running testrun_bench dns")?;
    if !out.status.success() {
        bail!("testrun_bench dns failed ({})", out.status);
    }
    let dns = serde_json::from_slice(&out.stdout).context("testrun_bench dns --json output")?;

    eprintln!("xtask bench: names: connect() to a destination with a name");
    let name_counts = vec![10, 1_000_000];
    // Three runs even when quick: the names' cost is a difference of medians, and their
    // spread is what says whether it is more than noise.
    let (runs, calls) = if plan.quick {
        ("3", "10000")
    } else {
        ("5", "100000")
    };
    let list = name_counts
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new(crate::target_bin("examples/connect_bench"))
        .args(["names", "--runs", runs, "--calls", calls, "--names", &list])
        .stderr(Stdio::inherit())
        .output()
        .context("running connect_bench names")?;
    if !out.status.success() {
        bail!("connect_bench names failed ({})", out.status);
    }
    Ok(Names {
        dns,
        connect: String::from_utf8(out.stdout).context("connect_bench names output")?,
        name_counts,
    })
}

/// One filter in its own namespace pair with a UDP sink. Fields drop in order: the filter (and
/// daemon) first, the namespaces last.
struct Lane {
    inst: Installed,
    _sink: Sink,
    pair: Pair,
}

fn udp_block(n: u32, plan: &Plan, run_dir: &lab::RunDir) -> anyhow::Result<Block> {
    let dir = &run_dir.path;
    let mut block = Block::new(n);
    let mut lanes = Vec::new();
    for f in Filter::ALL {
        eprintln!("xtask bench: N = {n}: installing {}", f.label());
        let pair = Pair::new(f.tag(), plan.generator == Generator::Live)?;
        let sink = Sink::start(&pair, PORT)?;
        let inst = filters::install(f, n, &pair, dir)?;
        block.load_ms.insert(f, inst.load_ms);
        if let Some(d) = &inst.daemon {
            block.ours.insert(
                f,
                OursRun {
                    rss_start_kib: lab::vm_hwm_kib(d.pid()),
                    ..Default::default()
                },
            );
        }
        lanes.push(Lane {
            inst,
            _sink: sink,
            pair,
        });
    }
    for rep in 0..plan.reps {
        eprintln!("xtask bench: N = {n}: repetition {}/{}", rep + 1, plan.reps);
        // Rotate the order so that no filter is always measured right after the same one.
        let k = lanes.len();
        for i in 0..k {
            let lane = &mut lanes[(i + rep) % k];
            for flow in Flow::ALL {
                let cell = block.cells.entry((lane.inst.filter, flow)).or_default();
                measure_cell(cell, lane, flow, n, plan, dir)?;
            }
        }
    }
    for lane in lanes.iter_mut().filter(|l| l.inst.filter.is_ours()) {
        let filter = lane.inst.filter;
        // At most three reloads per N: under load, a reload of many rules can take long.
        let reloads = plan.reps.min(3);
        for rep in 0..reloads {
            eprintln!(
                "xtask bench: N = {n}: {}: reload {}/{reloads} while dropped traffic flows",
                filter.label(),
                rep + 1,
            );
            reload_under_load(lane, &mut block, n, plan, dir)?;
        }
        let pid = lane.inst.daemon.as_ref().map(Daemon::pid);
        if let (Some(run), Some(pid)) = (block.ours.get_mut(&filter), pid) {
            run.rss_peak_kib = lab::vm_hwm_kib(pid);
            run.rss_end_kib = lab::vm_rss_kib(pid);
        }
    }
    drop(lanes);
    Ok(block)
}

/// One repetition of one cell; a failed or empty window is run again (up to three times in
/// all) and counted, a wrong verdict is recorded.
fn measure_cell(
    cell: &mut Cell,
    lane: &mut Lane,
    flow: Flow,
    n: u32,
    plan: &Plan,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let filter = lane.inst.filter;
    let expect_drop = filter.drops_hit() && flow.dropped();
    let mut last_err = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            cell.reruns += 1;
            eprintln!(
                "xtask bench: {} / {flow:?}: running the repetition again ({last_err})",
                filter.label()
            );
        }
        match traffic::measure(
            plan.generator,
            &mut lane.pair,
            dir,
            flow,
            filter.rules(n),
            plan.cpu,
            plan.secs,
        ) {
            Ok(s) if s.pps > 0.0 => {
                let ok = if expect_drop {
                    s.delivered < 0.01
                } else {
                    s.delivered > 0.9
                };
                if !ok {
                    cell.failures.push(format!(
                        "{} / {flow:?}: {:.1}% of the received packets were delivered, expected {}",
                        filter.label(),
                        s.delivered * 100.0,
                        if expect_drop { "none" } else { "all" }
                    ));
                }
                cell.pps.push(s.pps);
                cell.cpu_pps.push(s.cpu_pps);
                cell.delivered.push(s.delivered);
                return Ok(());
            }
            Ok(_) => last_err = "0 pps".into(),
            Err(e) => {
                if interrupted() {
                    return Err(e);
                }
                last_err = format!("{e:#}");
            }
        }
    }
    cell.failures.push(format!(
        "{} / {flow:?}: no packets measured after 3 attempts: {last_err}",
        filter.label()
    ));
    cell.pps.push(0.0);
    cell.cpu_pps.push(0.0);
    Ok(())
}

/// Sends the dropped traffic while the daemon reloads; no packet of it may be delivered.
fn reload_under_load(
    lane: &mut Lane,
    block: &mut Block,
    n: u32,
    plan: &Plan,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let filter = lane.inst.filter;
    let mut tg = traffic::Sender::start(
        plan.generator,
        &lane.pair,
        dir,
        Flow::Hit,
        n,
        plan.cpu,
        960.0,
    )?;
    tg.wait_flowing(&mut lane.pair)?;
    let a = lane.pair.snapshot()?;
    let daemon = lane
        .inst
        .daemon
        .as_mut()
        .context("our filter without a daemon")?;
    let r = daemon.reload()?;
    lab::sleep(Duration::from_millis(100))?;
    let b = lane.pair.snapshot()?;
    let still_sending = tg.running();
    drop(tg);
    let run = block.ours.entry(filter).or_default();
    run.reloads.push(r);
    run.probe_rx += b.rx_packets.saturating_sub(a.rx_packets);
    run.leaked += b.in_delivers.saturating_sub(a.in_delivers);
    if !still_sending {
        run.failures
            .push("the generator stopped before the reload ended".to_string());
    }
    Ok(())
}

/// The TCP connection-rate comparison.
fn tcp_block(plan: &Plan, run_dir: &lab::RunDir) -> anyhow::Result<Vec<TcpCell>> {
    struct TcpLane {
        _daemon: Option<Daemon>,
        server: tcp::Server,
        pair: Pair,
        cell: TcpCell,
    }
    let mut lanes = Vec::new();
    for (tag, label) in [
        ("tcpnone", "no filter"),
        (
            "tcpnft",
            "nftables conntrack (ct state established,related accept; tcp dport 8000 accept; policy drop)",
        ),
        (
            "tcpours",
            "this firewall (inbound stealth; tcp port 8000 allow; connection tracking)",
        ),
    ] {
        eprintln!("xtask bench: TCP: installing {label}");
        let pair = Pair::new(tag, false)?;
        let server = tcp::Server::start(&pair, plan.cpu)?;
        let daemon = match tag {
            "tcpnft" => {
                filters::install_nft_conntrack(&pair, &run_dir.path)?;
                None
            }
            "tcpours" => Some(Daemon::start_tcp(&pair, &run_dir.path)?),
            _ => None,
        };
        lanes.push(TcpLane {
            _daemon: daemon,
            server,
            pair,
            cell: TcpCell {
                label: label.to_string(),
                ..Default::default()
            },
        });
    }
    for rep in 0..plan.reps {
        eprintln!("xtask bench: TCP: repetition {}/{}", rep + 1, plan.reps);
        let k = lanes.len();
        for i in 0..k {
            let lane = &mut lanes[(i + rep) % k];
            let s = tcp::connect_loop(&lane.pair, &lane.server, plan.cpu, plan.secs)?;
            if interrupted() {
                bail!("interrupted");
            }
            lane.cell.rates.push(s.rate);
            lane.cell.cpu_rates.push(s.cpu_rate);
            lane.cell.failed += s.failed;
            if let Some(e) = s.first_error {
                lane.cell.first_error.get_or_insert(e);
            }
        }
    }
    Ok(lanes.into_iter().map(|l| l.cell).collect())
}

/// Facts about the machine and the tools, for the report.
pub fn machine_facts() -> BTreeMap<&'static str, String> {
    let cmd = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .current_dir(workspace_root())
            .output()
            .ok()
            .map(|o| {
                let s = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&s)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|| "?".into())
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "?".into());
    let root = workspace_root();
    let root = root.to_string_lossy();
    let commit = cmd("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
    let dirty = Command::new("git")
        .args(["-C", &root, "status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let mut m = BTreeMap::new();
    m.insert(
        "cpu",
        format!(
            "{model}, {} vCPUs",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
    );
    m.insert("memory", mem);
    m.insert("os", os);
    m.insert("kernel", cmd("uname", &["-r"]));
    m.insert(
        "firewall",
        format!(
            "{commit}{}",
            if dirty {
                " with uncommitted changes"
            } else {
                ""
            }
        ),
    );
    m.insert("rustc", cmd("rustc", &["--version"]));
    m.insert("nftables", cmd("nft", &["--version"]));
    m.insert("iptables", cmd("iptables-legacy", &["--version"]));
    m.insert("trafgen", cmd("trafgen", &["--version"]));
    m.insert("xdp-filter", cmd("xdp-filter", &["load", "--version"]));
    m.insert("date", cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    m.insert(
        "load",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    m
}
