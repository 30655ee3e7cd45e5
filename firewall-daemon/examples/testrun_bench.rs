//! `cargo xtask bench`: per-packet cost of the XDP program measured in the kernel with
//! BPF_PROG_TEST_RUN, for pass, drop and reject verdicts at several rule counts, against the
//! object's empty program measured in the same run.
//!
//! Drop and the tracked (established) paths are timed with `repeat` (the kernel averages over
//! the repetitions). A new flow that the rules allow is recorded in the connection table, so
//! the repetitions after the first would be tracked packets: it is timed with single-shot runs,
//! each from another source port, and the median taken. Reject rewrites the frame, and a
//! repeated run would re-judge the rewritten reply, so it is timed single-shot too.

use std::{net::Ipv4Addr, path::Path, time::Instant};

use etherparse::PacketBuilder;
use firewall_daemon::{
    compile, config,
    datapath::{Generation, PassProgram},
};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

const REPEAT: u32 = 200_000;
const SAMPLES: usize = 9;
const SINGLE_SHOTS: usize = 3_000;

fn frame(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    frame_from(src, 40000, dport)
}

fn frame_from(src: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.octets(), [192, 168, 0, 2], 64)
        .udp(sport, dport)
        .write(&mut out, &[0u8; 18])
        .expect("frame");
    out
}

/// A TCP segment from `src`:40001 to port 22 with `flags`, as received (`inbound`) or as the
/// host sends it.
fn tcp_frame(src: Ipv4Addr, inbound: bool, syn: bool, ack: bool) -> Vec<u8> {
    let (a, b, sp, dp) = if inbound {
        (src.octets(), [192, 168, 0, 2], 40001, 22)
    } else {
        ([192, 168, 0, 2], src.octets(), 22, 40001)
    };
    let mut t = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(a, b, 64)
        .tcp(sp, dp, if inbound { 1000 } else { 7000 }, 64240);
    if syn {
        t = t.syn();
    }
    if ack {
        t = t.ack(if inbound { 7001 } else { 1001 });
    }
    let mut out = Vec::new();
    t.write(&mut out, &[0u8; 6]).expect("frame");
    out
}

fn rule_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + i)
}

/// `n` rules, each for one remote address and UDP port 9, all with `action`; the default
/// allows everything else.
fn rules(n: u32, action: &str) -> String {
    let mut s = String::from(
        "[defaults]\ninbound = \"allow\"\n[reject]\nrate_per_sec = 1000000\nburst = 1000000\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "[[rule]]\nproto = \"udp\"\nport = 9\nremote = \"{}\"\naction = \"{action}\"\n",
            rule_addr(i)
        ));
    }
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    (min, max)
}

fn repeated(mut run: impl FnMut() -> f64) -> (f64, f64, f64) {
    let v: Vec<f64> = (0..SAMPLES).map(|_| run()).collect();
    let (lo, hi) = spread(&v);
    (median(v), lo, hi)
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    mount(
        Some("bpf"),
        dir.path(),
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    let result = bench(dir.path());
    let _ = umount2(dir.path(), MntFlags::MNT_DETACH);
    result
}

fn bench(bpffs: &Path) -> anyhow::Result<()> {
    let pin = bpffs.join("bench");
    let mut empty = PassProgram::load(&pin)?;
    let miss = frame(Ipv4Addr::new(192, 0, 2, 1), 9);
    println!(
        "single-shot runs include the kernel's per-run setup; compare them with each other, \
         not with repeated runs\n"
    );
    let (e_med, e_lo, e_hi) = repeated(|| empty.time_run(&miss, REPEAT).unwrap_or(f64::NAN));
    println!(
        "BPF_PROG_TEST_RUN, 64-byte UDP frames, ns/packet: median of {SAMPLES} x {REPEAT} runs (min-max)"
    );
    let single: Vec<f64> = (0..SINGLE_SHOTS)
        .map(|_| empty.time_run(&miss, 1).unwrap_or(f64::NAN))
        .collect();
    println!(
        "empty XDP program: {e_med:.1} ({e_lo:.1}-{e_hi:.1}); single-shot median {:.0}\n",
        median(single)
    );
    println!(
        "| rules | compile+load ms | pass, new flow (no rule matches; single-shot median) | drop (last rule, stealth) | reject (last rule, ICMP reply, single-shot median) | established TCP | replied UDP |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let ns: Vec<u32> = std::env::var("BENCH_N")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![10, 1_000, 10_000, 100_000]);
    for n in ns {
        let t = Instant::now();
        let rs = config::parse(&rules(n, "stealth"), Path::new("bench.toml"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let c = compile::compile(&rs)?;
        let mut drop_gen = Generation::load(&c, &rs, &pin, 1)?;
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let hit = frame(rule_addr(n - 1), 9);
        // Each shot a new flow (another source address and port), so each meets the rules.
        let shots: Vec<f64> = (0..SINGLE_SHOTS as u32)
            .map(|i| {
                let src = Ipv4Addr::from(0xc000_0000 + (n << 12) + i);
                drop_gen
                    .time_run(&frame_from(src, 1024 + i as u16, 9), 1)
                    .unwrap_or(f64::NAN)
            })
            .collect();
        let (p_lo, p_hi) = spread(&shots);
        let p = median(shots);
        let (d, d_lo, d_hi) = repeated(|| drop_gen.time_run(&hit, REPEAT).unwrap_or(f64::NAN));
        // Established TCP: a handshake through the programs, then the opener's ACKs.
        let peer = Ipv4Addr::new(198, 51, 100, 7);
        drop_gen.test_run(&tcp_frame(peer, true, true, false))?;
        drop_gen.test_run_egress(&tcp_frame(peer, false, true, true))?;
        let ack = tcp_frame(peer, true, false, true);
        drop_gen.test_run(&ack)?;
        let (t, t_lo, t_hi) = repeated(|| drop_gen.time_run(&ack, REPEAT).unwrap_or(f64::NAN));
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
        let (u, u_lo, u_hi) = repeated(|| drop_gen.time_run(&reply, REPEAT).unwrap_or(f64::NAN));
        let counters = drop_gen.counters()?;
        anyhow::ensure!(
            counters["pass_tracked"] >= 2 * u64::from(REPEAT),
            "the established paths were not tracked: {counters:?}"
        );
        drop(drop_gen);

        let rs = config::parse(&rules(n, "reject"), Path::new("bench.toml"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let c = compile::compile(&rs)?;
        let mut reject_gen = Generation::load(&c, &rs, &pin, 1)?;
        let (action, _) = reject_gen.test_run(&hit)?;
        anyhow::ensure!(
            action == 3,
            "reject path returned {action}, expected XDP_TX"
        );
        let shots: Vec<f64> = (0..SINGLE_SHOTS)
            .map(|_| reject_gen.time_run(&hit, 1).unwrap_or(f64::NAN))
            .collect();
        let (r_lo, r_hi) = spread(&shots);
        let r = median(shots);
        println!(
            "| {n} | {load_ms:.0} | {p:.0} ({p_lo:.0}-{p_hi:.0}) | {d:.1} ({d_lo:.1}-{d_hi:.1}) | {r:.0} ({r_lo:.0}-{r_hi:.0}) | {t:.1} ({t_lo:.1}-{t_hi:.1}) | {u:.1} ({u_lo:.1}-{u_hi:.1}) |"
        );
    }
    Ok(())
}
