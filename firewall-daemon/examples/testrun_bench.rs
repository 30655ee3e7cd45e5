//! `cargo xtask bench`: per-packet cost of the XDP program measured in the kernel with
//! BPF_PROG_TEST_RUN, for pass, drop and reject verdicts at several rule counts, against the
//! object's empty program measured in the same run.
//!
//! Pass and drop are timed with `repeat` (the kernel averages over the repetitions). Reject
//! rewrites the frame, and a repeated run would re-judge the rewritten reply, so it is timed
//! with single-shot runs and the median taken.

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
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.octets(), [192, 168, 0, 2], 64)
        .udp(40000, dport)
        .write(&mut out, &[0u8; 18])
        .expect("frame");
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
    let (e_med, e_lo, e_hi) = repeated(|| empty.time_run(&miss, REPEAT).unwrap_or(f64::NAN));
    println!(
        "BPF_PROG_TEST_RUN, 64-byte UDP frames, ns/packet: median of {SAMPLES} x {REPEAT} runs (min-max)"
    );
    println!("empty XDP program: {e_med:.1} ({e_lo:.1}-{e_hi:.1})\n");
    println!(
        "| rules | compile+load ms | pass (no rule matches) | drop (last rule, stealth) | reject (last rule, ICMP reply, single-shot median) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for n in [10u32, 1_000, 10_000, 100_000] {
        let t = Instant::now();
        let rs = config::parse(&rules(n, "stealth"), Path::new("bench.toml"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let c = compile::compile(&rs)?;
        let mut drop_gen = Generation::load(&c, &rs, &pin, 1)?;
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let hit = frame(rule_addr(n - 1), 9);
        let (p, p_lo, p_hi) = repeated(|| drop_gen.time_run(&miss, REPEAT).unwrap_or(f64::NAN));
        let (d, d_lo, d_hi) = repeated(|| drop_gen.time_run(&hit, REPEAT).unwrap_or(f64::NAN));
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
            "| {n} | {load_ms:.0} | {p:.1} ({p_lo:.1}-{p_hi:.1}) | {d:.1} ({d_lo:.1}-{d_hi:.1}) | {r:.0} ({r_lo:.0}-{r_hi:.0}) |"
        );
    }
    Ok(())
}
