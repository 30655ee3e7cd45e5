//! Benchmark helper for `cargo xtask bench` (which builds and runs it; it needs root).
//!
//! `testrun_bench [--quick] [--json] [--n 10,1000,100000] [--kernel-trace]`: per-packet cost of
//! the XDP program
//! measured in the kernel with BPF_PROG_TEST_RUN, for the pass (new flow), drop, reject and
//! tracked (established TCP, replied and unreplied UDP) paths at several rule counts, against the
//! object's empty program measured in the same run. Prints a Markdown table, or with `--json` one
//! JSON document that the xtask turns into BENCHMARKS.md.
//!
//! Two paths are timed from many sources, so that the rule lookups are not served from a cache
//! that one repeated address keeps warm (README, "Many sources"): **drop, many sources** from up to 20,000
//! of the rule addresses drawn at random, and **pass, new flow near the rules** from the
//! address next to a random rule's, which no rule names (a scan of a network the rules cover,
//! which walks a longest-prefix trie as deep as a hit). Both are single-shot, each packet from
//! the next source.
//!
//! Drop and the tracked paths are timed with `repeat` (the kernel averages over the
//! repetitions). A new flow that the rules allow is recorded in the connection table, so the
//! repetitions after the first would be tracked packets: it is timed with single-shot runs, each
//! from another source address and port, and the median taken. Reject rewrites the frame, and a
//! repeated run would re-judge the rewritten reply, so it is timed single-shot too. Single-shot
//! runs include the kernel's per-run setup: compare them with the empty program's single-shot
//! figure, not with repeated runs. `--kernel-trace` loads the programs with their trace
//! messages on (`fwctl debug on`), to measure what tracing costs (nobody reads the messages:
//! the ring buffer fills and the rest are dropped, as when the daemon falls behind).
//!
//! `testrun_bench runtime-sets [--quick] [--n 1000,100000]`: a runtime set of N members added
//! in place (`fwctl set add`'s path: `compile/runtime.rs` and the map writes) against the same
//! N addresses listed in the file, one rule naming the set either way: the drop from one member
//! (repeated) and from up to 20,000 members drawn at random (single-shot), and what adding one
//! member costs (compile and map writes, no control socket): in place, and the new generations
//! loaded when the tables were full.
//! Prints a Markdown table.
//!
//! `testrun_bench dns [--quick] [--json]`: what reading DNS answers costs (outbound rules that
//! name names, `firewall-ebpf/src/dns.rs`): the XDP program's time for a tracked DNS answer,
//! single shot, each answer to a query the egress program recorded just before (the query is
//! consumed by its answer), with a rule set that names a name (the answer read and recorded)
//! against the same rules naming an address instead (the answer only passes), alternating in
//! one run; for an answer of one A record, one of a CNAME chain and 8 A records, and for an
//! answer to no query. Then the loopback program's time (single shot) for a TCP segment, a DNS
//! query and its answer sent over `lo`, with `DNS_ON` on (the first rule set) against off (the
//! second: the program returns at once). Prints a Markdown table: per answer, the median of each run's median,
//! with the range of the runs' medians; with `--json`, one JSON document (each run's medians
//! too) that `cargo xtask bench` turns into BENCHMARKS.md's "Names".
//!
//! `testrun_bench attach-pass NETNS_PATH IFNAME PIN_DIR`: enters the network namespace, attaches
//! the object's `xdp_pass` program to IFNAME in native mode (the veth XDP floor of the
//! throughput benchmark), prints `attached` and keeps it attached until its standard input
//! closes or it is killed (the kernel releases the link when the process exits).
//!
//! `testrun_bench generate NETNS_PATH IFNAME PIN_DIR FRAME_HEX SECS CPU SOURCES`: enters the
//! network namespace, pins itself to core CPU and sends the frame FRAME_HEX into IFNAME for
//! SECS seconds with the object's generator in live-frame mode (`firewall_common::generator`),
//! each frame with a source address drawn from SOURCES = `PREFIX,MASK,MUL,FIRST,SPAN,COUNT,
//! RANDOM_PORT` (the fields of `GenConfig`, in decimal). Prints `sending` when the first
//! frames went out.

use std::{
    io::Read as _,
    net::Ipv4Addr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail};
use etherparse::PacketBuilder;
use firewall_common::generator::GenConfig;

/// XDP actions, as BPF_PROG_TEST_RUN returns them.
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
use firewall_daemon::{
    compile,
    kernel::{BlocklistProgram, FrameGenerator, Generation, Loopback, PassProgram},
};
use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns},
};
use rand::{RngExt as _, SeedableRng as _, rngs::Xoshiro256PlusPlus};
use rules::{config, model::XdpMode};
use serde_json::{Value, json};

/// How many samples of each kind: the full run and `--quick`.
#[derive(Clone, Copy)]
struct Sizes {
    repeat: u32,
    samples: usize,
    single_shots: usize,
}

const FULL: Sizes = Sizes {
    repeat: 200_000,
    samples: 9,
    single_shots: 3_000,
};
const QUICK: Sizes = Sizes {
    repeat: 50_000,
    samples: 3,
    single_shots: 500,
};

fn frame(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    frame_from(src, 40000, dport)
}

/// A 60-byte UDP frame (64 on the wire with the FCS) from `src`:`sport` to 192.168.0.2:`dport`.
fn frame_from(src: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.octets(), [192, 168, 0, 2], 64)
        .udp(sport, dport)
        .write(&mut out, &[0u8; 18])
        .expect("frame");
    out
}

/// A TCP segment of one connection from `src`:40001 to port 22, as received (`inbound`) or as
/// the host sends it: the opener's SYN (seq 1000), the host's SYN-ACK (seq 7000), then the
/// opener's ACKs carrying 6 bytes each. The numbers follow the handshake: the tracker confirms a
/// connection only on an ACK of exactly what the host sent (RFC 5961's proof, `ct::step`), and
/// passes, without confirming, one that proves less.
fn tcp_frame(src: Ipv4Addr, inbound: bool, syn: bool, ack: bool) -> Vec<u8> {
    let (a, b, sp, dp) = if inbound {
        (src.octets(), [192, 168, 0, 2], 40001, 22)
    } else {
        ([192, 168, 0, 2], src.octets(), 22, 40001)
    };
    let isn = if inbound { 1000 } else { 7000 };
    let mut t = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(a, b, 64)
        .tcp(sp, dp, if syn { isn } else { isn + 1 }, 64240);
    if syn {
        t = t.syn();
    }
    if ack {
        t = t.ack(if inbound { 7001 } else { 1001 });
    }
    let payload: &[u8] = if syn { &[] } else { &[0u8; 6] };
    let mut out = Vec::new();
    t.write(&mut out, payload).expect("frame");
    out
}

/// Rule `i`'s address: every other address of 10.0.0.0/8, so that the addresses between
/// them are named by no rule yet share all but their last bit with one (see `near` below).
fn rule_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + 2 * i)
}

/// Blocked sources of the many-source drop path: up to this many distinct rule addresses.
const MANY_SOURCES: u32 = 20_000;

/// Single-shot runs of `frames` in turn, each packet from the next one: ns per packet.
fn single_shots(
    frames: &[Vec<u8>],
    shots: usize,
    mut time_one: impl FnMut(&[u8]) -> anyhow::Result<f64>,
) -> Stat {
    Stat::of(
        frames
            .iter()
            .cycle()
            .take(shots)
            .map(|f| time_one(f).unwrap_or(f64::NAN))
            .collect(),
    )
}

/// `n` rules, each for one remote address and UDP port 9, all with `action`; the default
/// allows everything else.
fn rules(n: u32, action: &str) -> String {
    let mut s = String::from(
        "[defaults]\ninbound = \"allow\"\n[reject]\nrate_per_sec = 1000000\nburst = 1000000\n\
         global_rate_per_sec = 1000000\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "[[rule]]\nproto = \"udp\"\nport = 9\nremote = \"{}\"\naction = \"{action}\"\n",
            rule_addr(i)
        ));
    }
    s
}

/// Median, min and max of a set of samples (NaN samples, failed runs, are left out).
#[derive(Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(mut v: Vec<f64>) -> Self {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        Self {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    fn json(self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }

    fn cell(self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

fn repeated(sizes: Sizes, mut run: impl FnMut() -> f64) -> Stat {
    Stat::of((0..sizes.samples).map(|_| run()).collect())
}

struct Opts {
    json: bool,
    sizes: Sizes,
    counts: Vec<u32>,
}

fn parse_opts(args: &[String]) -> anyhow::Result<Opts> {
    let mut opts = Opts {
        json: false,
        sizes: FULL,
        counts: vec![10, 1_000, 100_000],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => opts.json = true,
            "--quick" => opts.sizes = QUICK,
            "--kernel-trace" => firewall_daemon::kernel::diagnostics::set(true),
            "--n" => {
                let list = it.next().context("--n needs a list such as 10,1000")?;
                opts.counts = list
                    .split(',')
                    .map(|s| s.trim().replace('_', "").parse::<u32>())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--n {list}"))?;
                if opts.counts.contains(&0) {
                    bail!("--n: rule counts must be at least 1");
                }
            }
            other => bail!(
                "unknown argument {other:?}; usage: testrun_bench [--quick] [--json] [--n LIST] \
                 [--kernel-trace] | testrun_bench runtime-sets [--quick] [--n LIST] | \
                 testrun_bench dns [--quick] [--json] | testrun_bench attach-pass NETNS_PATH \
                 IFNAME PIN_DIR | testrun_bench generate NETNS_PATH IFNAME PIN_DIR FRAME_HEX SECS \
                 CPU SOURCES"
            ),
        }
    }
    Ok(opts)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("attach-pass") => return attach_pass(&args[1..]),
        Some("generate") => return generate(&args[1..]),
        _ => {}
    }
    let runtime_sets = args.first().is_some_and(|a| a == "runtime-sets");
    let dns = args.first().is_some_and(|a| a == "dns");
    let opts = parse_opts(&args[usize::from(runtime_sets || dns)..])?;
    let dir = tempfile::Builder::new()
        .prefix("fw-bench-bpffs-")
        .tempdir()?;
    mount(
        Some("bpf"),
        dir.path(),
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    if dns {
        let result = dns_bench(dir.path(), &opts);
        let _ = umount2(dir.path(), MntFlags::MNT_DETACH);
        let doc = result?;
        if opts.json {
            println!("{doc}");
        } else {
            print_dns_markdown(&doc);
        }
        return Ok(());
    }
    if runtime_sets {
        let result = runtime_sets_bench(dir.path(), &opts);
        let _ = umount2(dir.path(), MntFlags::MNT_DETACH);
        return result;
    }
    let result = bench(dir.path(), &opts);
    let _ = umount2(dir.path(), MntFlags::MNT_DETACH);
    let doc = result?;
    if opts.json {
        println!("{doc}");
    } else {
        print_markdown(&doc);
    }
    Ok(())
}

/// `runtime-sets`: see the module's documentation.
fn runtime_sets_bench(bpffs: &Path, opts: &Opts) -> anyhow::Result<()> {
    let sizes = opts.sizes;
    println!(
        "BPF_PROG_TEST_RUN, ns/packet, median (min–max): one rule naming a set of N addresses, \
         listed in the file or added at runtime\n"
    );
    println!(
        "| N | drop, one source: file | runtime | drop, many sources: file | runtime | \
         one addition in place (µs) | new generations (the tables full) | load: file (ms) | \
         load + N additions (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|---:|---:|");
    for &n in &opts.counts {
        let head = "[defaults]\ninbound = \"allow\"\n";
        let rule = "[[rule]]\nproto = \"udp\"\nport = 9\nremote = \"@s\"\naction = \"stealth\"\n";
        let listed: Vec<String> = (0..n).map(|i| format!("\"{}\"", rule_addr(i))).collect();
        let file_text = format!("{head}[sets]\ns = [{}]\n{rule}", listed.join(", "));
        let runtime_text = format!("{head}[sets]\ns = []\n{rule}");
        let mut gens = Vec::new();
        let mut loads = Vec::new();
        let mut in_place: Vec<f64> = Vec::new();
        let mut regenerations: Vec<(u32, f64)> = Vec::new();
        for (i, text) in [file_text, runtime_text].iter().enumerate() {
            let t = Instant::now();
            let rs =
                config::parse(text, Path::new("bench.toml")).map_err(|e| anyhow::anyhow!("{e}"))?;
            let c = compile::compile(&rs, &Default::default())?;
            let mut g = Generation::load(&c, &rs, &bpffs.join(format!("sets{n}-{i}")), 1)?;
            if i == 1 {
                for a in 0..n {
                    let net = ipnet::IpNet::from(std::net::IpAddr::V4(rule_addr(a)));
                    let rt = g.runtime.as_mut().context("a runtime set")?;
                    let t = Instant::now();
                    match rt.add("s", net) {
                        Ok(change) => {
                            g.write_change(&change)?;
                            in_place.push(t.elapsed().as_secs_f64() * 1e6);
                        }
                        // Past the room of the generation: the daemon loads the rules again
                        // sized for the members; here, the same with the members so far.
                        Err(_) => {
                            let members = rules::model::Members::from([(
                                "s".to_owned(),
                                (0..=a)
                                    .map(|j| ipnet::IpNet::from(std::net::IpAddr::V4(rule_addr(j))))
                                    .collect(),
                            )]);
                            let mut c = compile::compile(&rs, &Default::default())?;
                            c.add_members(&members);
                            g = Generation::load(
                                &c,
                                &rs,
                                &bpffs.join(format!("sets{n}-{i}-{a}")),
                                1,
                            )?;
                            regenerations.push((a, t.elapsed().as_secs_f64() * 1e3));
                        }
                    }
                }
            }
            loads.push(t.elapsed().as_secs_f64() * 1e3);
            gens.push(g);
        }
        let hit = frame(rule_addr(n - 1), 9);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(u64::from(n));
        let many: Vec<Vec<u8>> = (0..MANY_SOURCES.min(n))
            .map(|_| frame(rule_addr(rng.random_range(0..n)), 9))
            .collect();
        let mut cells = Vec::new();
        for g in &mut gens {
            let c0 = g.counters()?["stealthed"];
            let one = repeated(sizes, || g.time_run(&hit, sizes.repeat).unwrap_or(f64::NAN));
            let spread = single_shots(&many, sizes.single_shots, |f| g.time_run(f, 1));
            let dropped = g.counters()?["stealthed"] - c0;
            anyhow::ensure!(
                dropped
                    == u64::from(sizes.repeat) * sizes.samples as u64 + sizes.single_shots as u64,
                "not every packet from a member was dropped ({dropped})"
            );
            cells.push((one, spread));
        }
        in_place.sort_by(f64::total_cmp);
        let p99 = in_place
            .get(in_place.len() * 99 / 100)
            .copied()
            .unwrap_or(f64::NAN);
        let regen = regenerations
            .iter()
            .map(|(at, ms)| format!("{ms:.0} ms at {at}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "| {n} | {} | {} | {} | {} | {} (p99 {p99:.1}) | {} | {:.0} | {:.0} |",
            cells[0].0.cell(1),
            cells[1].0.cell(1),
            cells[0].1.cell(0),
            cells[1].1.cell(0),
            Stat::of(in_place.clone()).cell(1),
            if regen.is_empty() {
                "none".to_owned()
            } else {
                regen
            },
            loads[0],
            loads[1]
        );
    }
    Ok(())
}

/// A UDP frame between the host (192.168.0.2:`port`) and its resolver (192.168.0.53:53):
/// the query leaving (`to_server`) or the answer arriving.
fn dns_frame(to_server: bool, port: u16, payload: &[u8]) -> Vec<u8> {
    let (host, server) = ([192, 168, 0, 2], [192, 168, 0, 53]);
    let mut out = Vec::new();
    let (src, dst, sport, dport) = if to_server {
        (host, server, port, 53)
    } else {
        (server, host, 53, port)
    };
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, payload)
        .expect("frame");
    out
}

/// A DNS answer with id `id` to `name`: `cnames` CNAMEs, then `addrs` A records.
fn dns_answer(id: u16, name: &str, cnames: usize, addrs: u8) -> Vec<u8> {
    use hickory_proto::{
        op::{Message, MessageType, OpCode, Query},
        rr::{Name, RData, Record, RecordType, rdata},
    };
    use std::str::FromStr as _;
    let mut m = Message::new(id, MessageType::Response, OpCode::Query);
    let mut owner = Name::from_str(name).expect("name");
    m.add_query(Query::query(owner.clone(), RecordType::A));
    for i in 0..cnames {
        let target = Name::from_str(&format!("edge{i}.cdn.example.net.")).expect("name");
        m.add_answer(Record::from_rdata(
            owner.clone(),
            300,
            RData::CNAME(rdata::CNAME(target.clone())),
        ));
        owner = target;
    }
    for i in 0..addrs {
        m.add_answer(Record::from_rdata(
            owner.clone(),
            300,
            RData::A(rdata::A(Ipv4Addr::new(198, 51, 100, i))),
        ));
    }
    m.to_vec().expect("answer")
}

/// The query `answer` (of [`dns_answer`], for www.example.test) answers, as the host sends it:
/// the answer's header (not a response, one question) and its question.
fn query_for(answer: &[u8]) -> Vec<u8> {
    // www.example.test: its labels with their lengths, the root, type and class.
    let question_len = "www.example.test".len() + 2 + 4;
    let mut query = answer[..12].to_vec();
    query[2] = 0x01;
    query[3] = 0;
    query[6..12].fill(0);
    query.extend_from_slice(&answer[12..12 + question_len]);
    query
}

/// `dns`: see the module's documentation.
fn dns_bench(bpffs: &Path, opts: &Opts) -> anyhow::Result<Value> {
    const RUNS: usize = 3;
    let shots = opts.sizes.single_shots;
    let head = "[defaults]\ninbound = \"stealth\"\n";
    let texts = [
        format!(
            "{head}[[rule]]\ndirection = \"out\"\nremote = [\"*.example.test\"]\naction = \"allow\"\n"
        ),
        format!(
            "{head}[[rule]]\ndirection = \"out\"\nremote = [\"198.51.100.0/24\"]\naction = \"allow\"\n"
        ),
    ];
    let mut gens = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let rs =
            config::parse(text, Path::new("bench.toml")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let pin = bpffs.join(format!("dns{i}"));
        let c = compile::compile(&rs, &Default::default())?;
        let g = Generation::load(&c, &rs, &pin, 1)?;
        // The outbound copy draws the names' key (only when the rules name names).
        let out =
            compile::compile_direction(&rs, rules::model::Direction::Out, &Default::default())?;
        let o = firewall_daemon::kernel::OutboundGeneration::load(&out, &rs, &pin, 1)?;
        gens.push((g, o));
    }
    let kinds: [(&str, &str, usize, u8, bool); 3] = [
        ("one_a", "one A record", 0, 1, true),
        ("cnames", "2 CNAMEs, 8 A records", 2, 8, true),
        ("unsolicited", "to no query (ignored)", 0, 1, false),
    ];
    let mut port: u16 = 20000;
    let mut rows = Vec::new();
    for (key, label, cnames, addrs, asked) in kinds {
        eprintln!("testrun_bench: DNS answer, {label}");
        let mut medians: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..RUNS {
            for (i, (g, _)) in gens.iter_mut().enumerate() {
                let mut v = Vec::with_capacity(shots);
                for k in 0..shots {
                    port = if port >= 60000 { 20000 } else { port + 1 };
                    let id = k as u16;
                    let answer = dns_answer(id, "www.example.test.", cnames, addrs);
                    let mut query = query_for(&answer);
                    if asked {
                        g.test_run_egress(&dns_frame(true, port, &query))?;
                    } else {
                        // The flow is tracked, the query id is another.
                        query[..2].copy_from_slice(&id.wrapping_add(1).to_be_bytes());
                        g.test_run_egress(&dns_frame(true, port, &query))?;
                    }
                    let t = g.time_run(&dns_frame(false, port, &answer), 1)?;
                    v.push(t);
                }
                medians[i].push(Stat::of(v).median);
            }
        }
        let read = Stat::of(medians[0].clone());
        let passed = Stat::of(medians[1].clone());
        let c = gens[0].0.counters()?;
        anyhow::ensure!(
            c["dns_answers"] > 0 && (asked || c["dns_unsolicited"] > 0),
            "the answers were not read: {c:?}"
        );
        rows.push(json!({
            "key": key,
            "answer": label,
            "read": read.json(),
            "passed": passed.json(),
            "read_runs": medians[0],
            "passed_runs": medians[1],
        }));
    }
    let loopback = loopback_bench(bpffs, &mut gens, shots, RUNS)?;
    let c = gens[0].0.counters()?;
    Ok(json!({
        "runs": RUNS,
        "shots": shots,
        "rows": rows,
        "loopback": loopback,
        "counters": {
            "dns_answers": c["dns_answers"],
            "dns_addresses": c["dns_addresses"],
            "dns_unsolicited": c["dns_unsolicited"],
            "dns_malformed": c["dns_malformed"],
        },
    }))
}

/// A frame sent over `lo` (zero MAC addresses, as the kernel builds them there): UDP or TCP
/// from `src` to `dst`.
fn lo_frame(src: ([u8; 4], u16), dst: ([u8; 4], u16), tcp: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let ip = PacketBuilder::ethernet2([0; 6], [0; 6]).ipv4(src.0, dst.0, 64);
    if tcp {
        ip.tcp(src.1, dst.1, 1, 65535)
            .ack(1)
            .psh()
            .write(&mut out, payload)
    } else {
        ip.udp(src.1, dst.1).write(&mut out, payload)
    }
    .expect("frame");
    out
}

/// The loopback program's part of `dns`: its time for packets a program of the host sends
/// over `lo` while the rules read names (`DNS_ON` on: `gens[0]`) against its time when they do
/// not (`gens[1]`: it returns at once, the floor of any TC program; the daemon does not even
/// attach it then). Single shot, each shot a TCP segment between two local ports (what most
/// `lo` traffic is), a query to a resolver on 127.0.0.53 from a new port (recorded), and that
/// resolver's answer of one A record (read).
fn loopback_bench(
    bpffs: &Path,
    gens: &mut [(Generation, firewall_daemon::kernel::OutboundGeneration)],
    shots: usize,
    runs: usize,
) -> anyhow::Result<Value> {
    let mut los = Vec::new();
    for (i, (g, _)) in gens.iter_mut().enumerate() {
        // What the daemon does once a generation is in force: DNS_ON says what its rules read.
        g.in_force()?;
        los.push(Loopback::load(&bpffs.join(format!("dns{i}")))?);
    }
    let (client, resolver) = ([127, 0, 0, 1], [127, 0, 0, 53]);
    let before = gens[0].0.counters()?["dns_answers"];
    let kinds = ["tcp", "query", "answer"];
    // [kind][rule set][run]: each run's median.
    let mut medians = vec![[Vec::new(), Vec::new()]; kinds.len()];
    let mut port: u16 = 20000;
    eprintln!("testrun_bench: the loopback program");
    for _ in 0..runs {
        for (i, lo) in los.iter_mut().enumerate() {
            let mut v = vec![Vec::with_capacity(shots); kinds.len()];
            for k in 0..shots {
                port = if port >= 60000 { 20000 } else { port + 1 };
                let answer = dns_answer(k as u16, "www.example.test.", 0, 1);
                let query = query_for(&answer);
                let frames = [
                    lo_frame((client, port), (client, 8080), true, &[0; 100]),
                    lo_frame((client, port), (resolver, 53), false, &query),
                    lo_frame((resolver, 53), (client, port), false, &answer),
                ];
                for (kind, frame) in frames.iter().enumerate() {
                    v[kind].push(lo.time_run(frame, 1)?);
                }
            }
            for (kind, v) in v.into_iter().enumerate() {
                medians[kind][i].push(Stat::of(v).median);
            }
        }
    }
    let read = gens[0].0.counters()?["dns_answers"] - before;
    anyhow::ensure!(
        read == (runs * shots) as u64,
        "the loopback program read {read} answers of {}",
        runs * shots
    );
    let rows: Vec<Value> = kinds
        .iter()
        .zip(medians)
        .map(|(key, [on, off])| {
            json!({
                "key": key,
                "read": Stat::of(on.clone()).json(),
                "passed": Stat::of(off.clone()).json(),
                "read_runs": on,
                "passed_runs": off,
            })
        })
        .collect();
    Ok(json!({ "runs": runs, "shots": shots, "rows": rows, "answers_read": read }))
}

fn print_dns_markdown(doc: &Value) {
    println!(
        "BPF_PROG_TEST_RUN, XDP, one tracked DNS answer (single shot), ns: median of {} runs' \
         medians of {} answers (range of the run medians)\n",
        doc["runs"], doc["shots"]
    );
    println!(
        "| answer | rules name a name: answer read | rules name an address: answer passed | difference |"
    );
    println!("|---|---:|---:|---:|");
    let median = |v: &Value| v["median"].as_f64().unwrap_or(f64::NAN);
    for row in doc["rows"].as_array().into_iter().flatten() {
        println!(
            "| {} | {} | {} | {:.0} |",
            row["answer"].as_str().unwrap_or("?"),
            stat_cell(&row["read"], 0),
            stat_cell(&row["passed"], 0),
            median(&row["read"]) - median(&row["passed"])
        );
    }
    let lo = &doc["loopback"];
    println!(
        "\nthe loopback program, single shot, ns: names read against not read ({} runs of {})\n",
        lo["runs"], lo["shots"]
    );
    println!("| packet on lo | names read | not read | difference |");
    println!("|---|---:|---:|---:|");
    for row in lo["rows"].as_array().into_iter().flatten() {
        println!(
            "| {} | {} | {} | {:.0} |",
            row["key"].as_str().unwrap_or("?"),
            stat_cell(&row["read"], 0),
            stat_cell(&row["passed"], 0),
            median(&row["read"]) - median(&row["passed"])
        );
    }
    let c = &doc["counters"];
    println!(
        "\ncounters (rules naming a name): dns_answers {}, dns_addresses {}, dns_unsolicited {}, \
         dns_malformed {}",
        c["dns_answers"], c["dns_addresses"], c["dns_unsolicited"], c["dns_malformed"]
    );
}

fn stat_cell(v: &Value, decimals: usize) -> String {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Stat {
        median: f("median"),
        min: f("min"),
        max: f("max"),
    }
    .cell(decimals)
}

fn print_markdown(doc: &Value) {
    println!(
        "BPF_PROG_TEST_RUN, 60-byte UDP frames (64 on the wire), ns/packet, median (min–max): \
         repeated paths {} samples x {} runs, single-shot paths {} runs\n",
        doc["samples"], doc["repeat"], doc["single_shots"]
    );
    println!(
        "empty XDP program: repeated {}, single-shot {}\n",
        stat_cell(&doc["empty"]["repeated"], 1),
        stat_cell(&doc["empty"]["single"], 0)
    );
    println!(
        "| rules | compile+load ms | verified insns | pass, new flow (single-shot) | drop (last \
         rule) | drop, many sources (single-shot) | pass, new flow near the rules (single-shot) \
         | reject (last rule, single-shot) | established TCP | replied UDP | unreplied UDP \
         (tracked) | reference blocklist: drop | reference: drop, many sources (single-shot) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in doc["rows"].as_array().into_iter().flatten() {
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row["n"],
            row["load_ms"].as_f64().unwrap_or(f64::NAN),
            row["verified_insns"],
            stat_cell(&row["pass_new_flow"], 0),
            stat_cell(&row["drop"], 1),
            stat_cell(&row["drop_many_sources"], 0),
            stat_cell(&row["pass_new_flow_near"], 0),
            stat_cell(&row["reject"], 0),
            stat_cell(&row["established_tcp"], 1),
            stat_cell(&row["replied_udp"], 1),
            stat_cell(&row["unreplied_udp"], 1),
            stat_cell(&row["reference_drop"], 1),
            stat_cell(&row["reference_drop_many_sources"], 0),
        );
    }
}

fn bench(bpffs: &Path, opts: &Opts) -> anyhow::Result<Value> {
    let sizes = opts.sizes;
    let pin = bpffs.join("bench");
    // A directory of its own: the object's maps pinned by the empty program would otherwise be
    // the generations' shared maps, at the object's size of one entry (a connection table of
    // one flow, which every new flow evicts and no second flow is confirmed into).
    let mut empty = PassProgram::load(&bpffs.join("empty"))?;
    let miss = frame(Ipv4Addr::new(192, 0, 2, 1), 9);
    let e_rep = repeated(sizes, || {
        empty.time_run(&miss, sizes.repeat).unwrap_or(f64::NAN)
    });
    let e_single = Stat::of(
        (0..sizes.single_shots)
            .map(|_| empty.time_run(&miss, 1).unwrap_or(f64::NAN))
            .collect(),
    );
    let mut rows = Vec::new();
    for (round, &n) in opts.counts.iter().enumerate() {
        eprintln!("testrun_bench: {n} rules");
        let t = Instant::now();
        let rs = config::parse(&rules(n, "stealth"), Path::new("bench.toml"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let c = compile::compile(&rs, &Default::default())?;
        let mut drop_gen = Generation::load(&c, &rs, &pin, 1)?;
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let verified = drop_gen.verified_instructions();
        let hit = frame(rule_addr(n - 1), 9);
        // Each shot a new flow (another source address and port), so each meets the rules.
        let new_flows: Vec<Vec<u8>> = (0..sizes.single_shots as u32)
            .map(|i| {
                frame_from(
                    Ipv4Addr::from(0xc000_0000 + (n << 12) + i),
                    1024 + i as u16,
                    9,
                )
            })
            .collect();
        let pass = single_shots(&new_flows, sizes.single_shots, |f| drop_gen.time_run(f, 1));
        let dropped = repeated(sizes, || {
            drop_gen.time_run(&hit, sizes.repeat).unwrap_or(f64::NAN)
        });
        // Seeded: the same sources in every run, so runs compare.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(u64::from(n));
        let mut blocked: Vec<u32> = (0..n).collect();
        for i in 0..blocked.len().min(MANY_SOURCES as usize) {
            let j = rng.random_range(i..blocked.len());
            blocked.swap(i, j);
        }
        blocked.truncate(MANY_SOURCES as usize);
        let many: Vec<Vec<u8>> = blocked.iter().map(|&i| frame(rule_addr(i), 9)).collect();
        let c0 = drop_gen.counters()?;
        let drop_many = single_shots(&many, sizes.single_shots, |f| drop_gen.time_run(f, 1));
        let c1 = drop_gen.counters()?;
        // The address next to a random rule's: in the region the rules cover, named by none
        // (a scan of a blocklisted network), each a new flow the default allows.
        let near: Vec<Vec<u8>> = (0..sizes.single_shots as u32)
            .map(|i| {
                let src = u32::from(rule_addr(rng.random_range(0..n))) + 1;
                // Ports of this round's own: a flow of an earlier round is still tracked.
                frame_from(
                    Ipv4Addr::from(src),
                    (1024 + round * 8192 + i as usize) as u16,
                    9,
                )
            })
            .collect();
        let pass_near = single_shots(&near, sizes.single_shots, |f| drop_gen.time_run(f, 1));
        let c2 = drop_gen.counters()?;
        // Each cell checks its verdicts: every many-source packet dropped by a rule, every
        // near packet allowed by the default.
        let shots = sizes.single_shots as u64;
        anyhow::ensure!(
            c1["stealthed"] - c0["stealthed"] == shots
                && c2["default_verdict"] - c1["default_verdict"] == shots
                && c2["allowed"] - c1["allowed"] == shots,
            "many-source paths: wrong verdicts (before {c0:?}, after drop {c1:?}, after pass {c2:?})"
        );
        // Established TCP: a handshake through the programs, then the opener's ACKs.
        // A peer of its own per rule count: the connection table outlives the generation.
        let peer = Ipv4Addr::new(198, 51, 100, 7 + round as u8);
        let confirmed = drop_gen.counters()?["ct_confirmed"];
        drop_gen.test_run(&tcp_frame(peer, true, true, false))?;
        drop_gen.test_run_egress(&tcp_frame(peer, false, true, true))?;
        let ack = tcp_frame(peer, true, false, true);
        drop_gen.test_run(&ack)?;
        // Confirmed, so found in the first table looked up: an established connection's path,
        // not a handshake's.
        anyhow::ensure!(
            drop_gen.counters()?["ct_confirmed"] == confirmed + 1,
            "the benchmark's TCP connection was not established"
        );
        let est = repeated(sizes, || {
            drop_gen.time_run(&ack, sizes.repeat).unwrap_or(f64::NAN)
        });
        // Replied UDP: the host asked, the answers come back.
        let reply = frame_from(peer, 53, 9);
        drop_gen.test_run_egress(&{
            let mut out = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
                .ipv4([192, 168, 0, 2], peer.octets(), 64)
                .udp(9, 53)
                .write(&mut out, &[0u8; 18])
                .expect("frame");
            out
        })?;
        drop_gen.test_run(&reply)?;
        let replied = repeated(sizes, || {
            drop_gen.time_run(&reply, sizes.repeat).unwrap_or(f64::NAN)
        });
        // Unreplied UDP: a remote host opened the flow (no rule matched, the default allowed
        // it) and keeps sending without an answer: the path of the veth benchmark's
        // "accepted, one flow" traffic.
        let one_way = frame_from(Ipv4Addr::new(203, 0, 113, 9), 40000, 9);
        drop_gen.test_run(&one_way)?;
        let unreplied = repeated(sizes, || {
            drop_gen
                .time_run(&one_way, sizes.repeat)
                .unwrap_or(f64::NAN)
        });
        let counters = drop_gen.counters()?;
        anyhow::ensure!(
            counters["pass_tracked"] >= 3 * u64::from(sizes.repeat),
            "the tracked paths were not tracked: {counters:?}"
        );
        drop(drop_gen);

        let rs = config::parse(&rules(n, "reject"), Path::new("bench.toml"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let c = compile::compile(&rs, &Default::default())?;
        let mut reject_gen = Generation::load(&c, &rs, &pin, 1)?;
        // The frames are for this host: loopback (BPF_PROG_TEST_RUN's interface) has their
        // destination MAC and their destination address is local, so reject answers them.
        firewall_daemon::host::addrs::HostMaps::open(&pin)?.set(
            &firewall_daemon::host::addrs::HostAddrs {
                macs: [(nix::net::if_::if_nametoindex("lo")?, [2, 0, 0, 0, 0, 2])].into(),
                addrs: [std::net::IpAddr::from([192, 168, 0, 2])].into(),
            },
        )?;
        let (action, _) = reject_gen.test_run(&hit)?;
        anyhow::ensure!(
            action == 3,
            "reject path returned {action}, expected XDP_TX"
        );
        let reject = single_shots(std::slice::from_ref(&hit), sizes.single_shots, |f| {
            reject_gen.time_run(f, 1)
        });
        drop(reject_gen);

        // The reference: the smallest XDP blocklist (one hash lookup of the source), holding
        // the same addresses, on the same frames.
        let addrs: Vec<[u8; 4]> = (0..n).map(|i| rule_addr(i).octets()).collect();
        let mut reference = BlocklistProgram::load(&bpffs.join("blocklist"), &addrs)?;
        for f in many.iter().take(1_000).chain([&hit]) {
            anyhow::ensure!(
                reference.test_run(f)? == XDP_DROP,
                "the reference blocklist passed a blocked source"
            );
        }
        anyhow::ensure!(
            reference.test_run(&miss)? == XDP_PASS,
            "the reference blocklist dropped an unlisted source"
        );
        let ref_drop = repeated(sizes, || {
            reference.time_run(&hit, sizes.repeat).unwrap_or(f64::NAN)
        });
        let ref_many = single_shots(&many, sizes.single_shots, |f| reference.time_run(f, 1));
        drop(reference);
        rows.push(json!({
            "n": n,
            "load_ms": load_ms,
            // The kernel's count, for every loaded program together and for each: what the
            // verifier walked, which its time follows (null where the kernel does not say).
            "verified_insns": (!verified.is_empty())
                .then(|| verified.iter().map(|(_, c)| u64::from(*c)).sum::<u64>()),
            "verified_insns_by_program": verified
                .iter()
                .map(|(name, c)| (name.clone(), json!(c)))
                .collect::<serde_json::Map<_, _>>(),
            "pass_new_flow": pass.json(),
            "drop": dropped.json(),
            "drop_many_sources": drop_many.json(),
            "pass_new_flow_near": pass_near.json(),
            "reject": reject.json(),
            "established_tcp": est.json(),
            "replied_udp": replied.json(),
            "unreplied_udp": unreplied.json(),
            "reference_drop": ref_drop.json(),
            "reference_drop_many_sources": ref_many.json(),
        }));
    }
    Ok(json!({
        "repeat": sizes.repeat,
        "samples": sizes.samples,
        "single_shots": sizes.single_shots,
        "empty": { "repeated": e_rep.json(), "single": e_single.json() },
        "rows": rows,
    }))
}

/// Attaches `xdp_pass` to an interface of another namespace and holds it until stdin closes.
fn attach_pass(args: &[String]) -> anyhow::Result<()> {
    let [ns_path, ifname, pin_dir] = args else {
        bail!("usage: testrun_bench attach-pass NETNS_PATH IFNAME PIN_DIR");
    };
    // Single-threaded so far: the whole process moves into the namespace, so the interface
    // name and the attachment are resolved there.
    let ns = std::fs::File::open(ns_path).with_context(|| format!("opening {ns_path}"))?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).context("setns")?;
    let mut prog = PassProgram::load(&PathBuf::from(pin_dir))?;
    let (link, mode) = prog.attach(ifname, XdpMode::Native)?;
    println!("attached {ifname} {mode}");
    // SIGTERM/SIGINT end the process with the default action; the kernel releases the link
    // with its file descriptor, which detaches the program.
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    drop(link);
    drop(prog);
    Ok(())
}

/// Sends frames into an interface of another namespace with the generator, for `SECS` seconds.
fn generate(args: &[String]) -> anyhow::Result<()> {
    const USAGE: &str = "usage: testrun_bench generate NETNS_PATH IFNAME PIN_DIR FRAME_HEX SECS \
                         CPU PREFIX,MASK,MUL,FIRST,SPAN,COUNT,RANDOM_PORT";
    let [ns_path, ifname, pin_dir, frame_hex, secs, cpu, sources] = args else {
        bail!("{USAGE}");
    };
    let frame = (0..frame_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(frame_hex.get(i..i + 2).unwrap_or("?"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .with_context(|| format!("FRAME_HEX {frame_hex:?}: {USAGE}"))?;
    let secs: f64 = secs.parse().with_context(|| format!("SECS {secs:?}"))?;
    let cpu: usize = cpu.parse().with_context(|| format!("CPU {cpu:?}"))?;
    let fields = sources
        .split(',')
        .map(str::parse::<u32>)
        .collect::<Result<Vec<u32>, _>>()
        .with_context(|| format!("SOURCES {sources:?}: {USAGE}"))?;
    let [prefix, mask, mul, first, span, count, random_port] = fields[..] else {
        bail!("SOURCES {sources:?}: {USAGE}");
    };
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("CPU")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .context("sched_setaffinity")?;
    // Single-threaded: the whole process moves into the namespace, where the interface index
    // and the redirect are resolved.
    let ns = std::fs::File::open(ns_path).with_context(|| format!("opening {ns_path}"))?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).context("setns")?;
    let ifindex = nix::net::if_::if_nametoindex(ifname.as_str())
        .with_context(|| format!("no interface {ifname} in {ns_path}"))?;
    let config = GenConfig {
        ifindex,
        prefix,
        mask,
        mul,
        first,
        span,
        sources: count.max(1),
        random_port,
    };
    let mut generator = FrameGenerator::load(&PathBuf::from(pin_dir), config)?;
    let deadline = Instant::now() + std::time::Duration::from_secs_f64(secs);
    // Each call sets up and tears down the kernel's page pool, which sleeps (an RCU grace
    // period): with calls of about half a second, the core idles a few percent of the time
    // instead of most of it. A signal ends a call between two batches.
    let mut frames = 100_000u32;
    let mut announced = false;
    while Instant::now() < deadline {
        let t = Instant::now();
        generator.send(&frame, frames, 64)?;
        let rate = f64::from(frames) / t.elapsed().as_secs_f64().max(1e-6);
        frames = (rate * 0.5).clamp(100_000.0, 50_000_000.0) as u32;
        if !announced {
            println!("sending");
            announced = true;
        }
    }
    Ok(())
}
