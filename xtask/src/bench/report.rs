//! The figures of one run and their Markdown form (printed and written to BENCHMARKS.md).

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use serde_json::Value;

use super::{
    Plan,
    filters::{Filter, Reload},
    machine_facts,
    traffic::{Flow, Generator},
};

/// The repetitions of one (filter, traffic) cell.
#[derive(Debug, Default)]
pub struct Cell {
    /// Receive rate of each repetition, packets per second of wall-clock time.
    pub pps: Vec<f64>,
    /// Packets per second of the sending core's CPU time (see `traffic::Sample`).
    pub cpu_pps: Vec<f64>,
    /// Fraction delivered to the transport layer, each repetition.
    pub delivered: Vec<f64>,
    /// Windows run again because they measured nothing or failed.
    pub reruns: u32,
    pub failures: Vec<String>,
}

/// Our daemon at one N.
#[derive(Debug, Default)]
pub struct OursRun {
    pub rss_start_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    /// Resident at the end, after the reloads (the daemon at rest).
    pub rss_end_kib: Option<u64>,
    pub reloads: Vec<Reload>,
    /// Packets of the dropped traffic received while reloading, and how many were delivered.
    pub probe_rx: u64,
    pub leaked: u64,
    pub failures: Vec<String>,
}

/// Everything measured at one rule count.
#[derive(Debug)]
pub struct Block {
    pub n: u32,
    pub cells: BTreeMap<(Filter, Flow), Cell>,
    pub load_ms: BTreeMap<Filter, f64>,
    pub ours: BTreeMap<Filter, OursRun>,
}

impl Block {
    pub fn new(n: u32) -> Self {
        Self {
            n,
            cells: BTreeMap::new(),
            load_ms: BTreeMap::new(),
            ours: BTreeMap::new(),
        }
    }

    /// Median packets per CPU-second.
    fn median_pps(&self, f: Filter, flow: Flow) -> Option<f64> {
        self.cells
            .get(&(f, flow))
            .and_then(|c| Stat::of(&c.cpu_pps))
            .map(|s| s.median)
    }

    /// Median packets per wall-clock second.
    fn median_wall(&self, f: Filter, flow: Flow) -> Option<f64> {
        self.cells
            .get(&(f, flow))
            .and_then(|c| Stat::of(&c.pps))
            .map(|s| s.median)
    }

    /// CPU time the filter adds to a packet, from the medians: 1e9/pps − 1e9/pps(none), per
    /// CPU-second.
    fn cost_ns(&self, f: Filter, flow: Flow) -> Option<f64> {
        let p = self.median_pps(f, flow)?;
        let base = self.median_pps(Filter::None, flow)?;
        (p > 0.0 && base > 0.0).then(|| 1e9 / p - 1e9 / base)
    }
}

/// Connection rate of one filter.
#[derive(Debug, Default)]
pub struct TcpCell {
    pub label: String,
    /// Connections per wall-clock second.
    pub rates: Vec<f64>,
    /// Connections per CPU-second of the core running both ends.
    pub cpu_rates: Vec<f64>,
    pub failed: u64,
    pub first_error: Option<String>,
}

/// The names part: reading DNS answers and connect() to a destination with a name.
#[derive(Debug)]
pub struct Names {
    /// `testrun_bench dns --json`.
    pub dns: Value,
    /// `connect_bench names`'s table (markdown, with its heading line).
    pub connect: String,
    /// How many names the rules held in its cases.
    pub name_counts: Vec<u32>,
}

pub struct Results {
    pub plan: Plan,
    facts: BTreeMap<&'static str, String>,
    load_end: String,
    duration: Duration,
    pub testrun: Option<Value>,
    pub blocks: Vec<Block>,
    pub tcp: Vec<TcpCell>,
    /// The connect() table (markdown, with its heading line).
    pub connect: Option<String>,
    pub names: Option<Names>,
}

impl Results {
    pub fn new(plan: Plan) -> Self {
        Self {
            plan,
            facts: machine_facts(),
            load_end: String::new(),
            duration: Duration::ZERO,
            testrun: None,
            blocks: Vec::new(),
            tcp: Vec::new(),
            connect: None,
            names: None,
        }
    }

    pub fn finish(&mut self, duration: Duration) {
        self.duration = duration;
        self.load_end = machine_facts().get("load").cloned().unwrap_or_default();
    }

    /// Every failed measurement or wrong verdict of the run.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for b in &self.blocks {
            for c in b.cells.values() {
                out.extend(c.failures.iter().map(|f| format!("N = {}: {f}", b.n)));
            }
            for (f, o) in &b.ours {
                out.extend(
                    o.failures
                        .iter()
                        .map(|e| format!("N = {}: {}: {e}", b.n, f.label())),
                );
                if o.leaked > 0 {
                    out.push(format!(
                        "N = {}: {}: {} dropped-traffic packets delivered during reloads",
                        b.n,
                        f.label(),
                        o.leaked
                    ));
                }
            }
        }
        for t in &self.tcp {
            if t.failed > 0 {
                out.push(format!(
                    "TCP {}: {} failed connections ({})",
                    t.label,
                    t.failed,
                    t.first_error.as_deref().unwrap_or("")
                ));
            }
        }
        out
    }
}

#[derive(Clone, Copy, Debug)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(v: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    /// `median (min–max)` scaled by `scale`; the spread is left out for one sample.
    fn cell(self, scale: f64, decimals: usize) -> String {
        let (m, lo, hi) = (self.median * scale, self.min * scale, self.max * scale);
        if (self.max - self.min).abs() < f64::EPSILON {
            num(m, decimals)
        } else {
            format!(
                "{} ({}–{})",
                num(m, decimals),
                num(lo, decimals),
                num(hi, decimals)
            )
        }
    }
}

/// A number with thousands separators.
fn num(x: f64, decimals: usize) -> String {
    if !x.is_finite() {
        return "?".into();
    }
    let s = format!("{:.*}", decimals, x.abs());
    let (int, frac) = s.split_once('.').map_or((s.as_str(), ""), |(a, b)| (a, b));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    if x < 0.0 && out.chars().any(|c| c.is_ascii_digit() && c != '0') {
        out.insert(0, '−');
    }
    out
}

fn signed_ns(x: Option<f64>) -> String {
    match x {
        Some(v) if v >= 0.0 => format!("+{}", num(v, 0)),
        Some(v) => num(v, 0),
        None => "?".into(),
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**MISSED**",
        None => "not measured in this run",
    }
}

const OURS: [Filter; 2] = [Filter::OursRules, Filter::OursSet];

fn short(f: Filter) -> &'static str {
    match f {
        Filter::OursRules => "ours (N rules)",
        Filter::OursSet => "ours (N-element set)",
        Filter::NftSet => "nftables set (netdev ingress)",
        Filter::NftCtSet => "nftables conntrack + set",
        Filter::XdpTools => "xdp-filter",
        Filter::NftRules => "nftables rules",
        Filter::Iptables => "iptables-legacy",
        Filter::XdpPass => "XDP pass floor",
        Filter::None => "no filter",
    }
}

pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let p = &r.plan;
    let f = |k: &str| r.facts.get(k).cloned().unwrap_or_default();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "This firewall against nftables and iptables on the same machine, in the same run, with \
         the same rule sets. Produced by `cargo xtask bench` (`xtask/src/bench.rs`, \
         `xtask/src/bench/`, `firewall-daemon/examples/testrun_bench.rs`); the file is \
         rewritten by every full run.\n"
    );
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| date | {} |", f("date"));
    let _ = writeln!(
        s,
        "| machine | {}, {} RAM, {} |",
        f("cpu"),
        f("memory"),
        f("os")
    );
    let _ = writeln!(s, "| kernel | {} |", f("kernel"));
    let _ = writeln!(s, "| firewall | commit {} |", f("firewall"));
    let _ = writeln!(
        s,
        "| tools | {}; {}; {}; {}; {} |",
        f("rustc"),
        f("nftables"),
        f("iptables"),
        f("xdp-filter"),
        f("trafgen")
    );
    let _ = writeln!(
        s,
        "| command | `{}` ({:.0} min; reproduce as root with `cargo xtask bench`, or `--quick` for a \
         check in about 2 minutes) |",
        p.command,
        r.duration.as_secs_f64() / 60.0
    );
    let _ = writeln!(
        s,
        "| settings | N = {}; {} repetition(s) of {} s per cell; sender and TCP loop on CPU {}; \
         UDP traffic from {} |",
        p.counts
            .iter()
            .map(|n| num(f64::from(*n), 0))
            .collect::<Vec<_>>()
            .join(", "),
        p.reps,
        p.secs,
        p.cpu,
        p.generator.describe()
    );
    let _ = writeln!(
        s,
        "| load average | {} at the start, {} at the end |\n",
        f("load"),
        r.load_end
    );
    let _ = writeln!(
        s,
        "**The machine was shared**: other builds and test suites ran on it during the run, so \
         absolute figures are noisy (tens of percent between runs). Compare the ratios: they \
         come from the same run, with the repetitions of all filters interleaved. Figures are \
         the median of the repetitions with the min–max range in brackets.\n"
    );

    headline(&mut s, r);
    targets(&mut s, r);
    rates(&mut s, r);
    loading(&mut s, r);
    testrun(&mut s, r);
    tcp(&mut s, r);
    connect(&mut s, r);
    if let Some(n) = &r.names {
        names(&mut s, n);
    }
    failures(&mut s, r);
    notes(&mut s, r);
    s
}

fn largest(r: &Results) -> Option<&Block> {
    r.blocks.iter().max_by_key(|b| b.n)
}

fn headline(s: &mut String, r: &Results) {
    let Some(b) = largest(r) else { return };
    let _ = writeln!(
        s,
        "## Headline (N = {})\n\nReceive rates per second of the sending core's CPU time \
         (see below); the wall-clock ratio follows in brackets.\n",
        num(f64::from(b.n), 0)
    );
    let pps = |f, flow| b.median_pps(f, flow).unwrap_or(f64::NAN);
    let wall = |f, flow| b.median_wall(f, flow).unwrap_or(f64::NAN);
    let ratio_of = |flow, o, other| {
        format!(
            "{} ({})",
            times(pps(o, flow) / pps(other, flow)),
            times(wall(o, flow) / wall(other, flow))
        )
    };
    let ratio = |o, other| ratio_of(Flow::Hit, o, other);
    for o in OURS {
        let _ = writeln!(
            s,
            "- Dropped traffic, {}: {} kpps; {} xdp-filter ({} kpps), {} nftables with a set \
             ({} kpps), {} nftables rules, {} iptables-legacy ({} kpps).",
            short(o),
            num(pps(o, Flow::Hit) / 1e3, 0),
            ratio(o, Filter::XdpTools),
            num(pps(Filter::XdpTools, Flow::Hit) / 1e3, 0),
            ratio(o, Filter::NftSet),
            num(pps(Filter::NftSet, Flow::Hit) / 1e3, 0),
            ratio(o, Filter::NftRules),
            ratio(o, Filter::Iptables),
            num(pps(Filter::Iptables, Flow::Hit) / 1e3, 1),
        );
    }
    for o in OURS {
        let _ = writeln!(
            s,
            "- Dropped traffic from many sources, {}: {} kpps; {} xdp-filter ({} kpps), {} \
             nftables with a set ({} kpps).",
            short(o),
            num(pps(o, Flow::HitMany) / 1e3, 0),
            ratio_of(Flow::HitMany, o, Filter::XdpTools),
            num(pps(Filter::XdpTools, Flow::HitMany) / 1e3, 0),
            ratio_of(Flow::HitMany, o, Filter::NftSet),
            num(pps(Filter::NftSet, Flow::HitMany) / 1e3, 0),
        );
    }
    for o in OURS {
        let _ = writeln!(
            s,
            "- Accepted traffic, {}: {} ns/packet over no filter for one (tracked) flow and {} \
             for a new flow every packet; the XDP pass-only floor costs {} / {}, nftables with \
             a set {} / {}, nftables with conntrack and a set {} / {}.",
            short(o),
            signed_ns(b.cost_ns(o, Flow::Miss)),
            signed_ns(b.cost_ns(o, Flow::NewFlows)),
            signed_ns(b.cost_ns(Filter::XdpPass, Flow::Miss)),
            signed_ns(b.cost_ns(Filter::XdpPass, Flow::NewFlows)),
            signed_ns(b.cost_ns(Filter::NftSet, Flow::Miss)),
            signed_ns(b.cost_ns(Filter::NftSet, Flow::NewFlows)),
            signed_ns(b.cost_ns(Filter::NftCtSet, Flow::Miss)),
            signed_ns(b.cost_ns(Filter::NftCtSet, Flow::NewFlows)),
        );
    }
    if let Some(t) = r
        .tcp
        .iter()
        .map(|t| Stat::of(&t.cpu_rates))
        .collect::<Option<Vec<_>>>()
        && t.len() == 3
    {
        let _ = writeln!(
            s,
            "- TCP connections per CPU-second: {} with this firewall, {} with nftables \
             conntrack, {} with no filter.",
            num(t[2].median, 0),
            num(t[1].median, 0),
            num(t[0].median, 0)
        );
    }
    s.push('\n');
}

fn times(x: f64) -> String {
    if !x.is_finite() {
        "?".into()
    } else if x >= 10.0 {
        format!("{x:.0}×")
    } else {
        format!("{x:.2}×")
    }
}

fn targets(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Targets (issues 5 and 17)\n");
    let _ = writeln!(s, "| target | measured | result |\n|---|---|---|");
    let big = r.blocks.iter().find(|b| b.n == 100_000);
    // Dropped traffic at 100,000.
    for o in OURS {
        for (other, want) in [(Filter::NftSet, 1.2), (Filter::Iptables, 100.0)] {
            let ratio = big
                .and_then(|b| Some(b.median_pps(o, Flow::Hit)? / b.median_pps(other, Flow::Hit)?));
            let wall = big.and_then(|b| {
                Some(b.median_wall(o, Flow::Hit)? / b.median_wall(other, Flow::Hit)?)
            });
            let _ = writeln!(
                s,
                "| dropped, N = 100,000: {} ≥ {want}× {} | {} (wall clock {}) | {} |",
                short(o),
                short(other),
                ratio.map_or("—".into(), times),
                wall.map_or("—".into(), times),
                verdict(ratio.map(|x| x >= want))
            );
        }
    }
    for o in OURS {
        for (other, want, note) in [
            (Filter::NftSet, 1.2, ""),
            (Filter::XdpTools, 0.9, " (xdp-filter holds 10,000 of them)"),
        ] {
            let ratio = big.and_then(|b| {
                Some(b.median_pps(o, Flow::HitMany)? / b.median_pps(other, Flow::HitMany)?)
            });
            let _ = writeln!(
                s,
                "| dropped from many sources, N = 100,000: {} ≥ {want}× {}{note} | {} | {} |",
                short(o),
                short(other),
                ratio.map_or("—".into(), times),
                verdict(ratio.map(|x| x >= want))
            );
        }
    }
    // Accepted traffic within 40 ns of the XDP floor at every N.
    for o in OURS {
        for flow in [Flow::Miss, Flow::NewFlows] {
            let over: Vec<(u32, f64)> = r
                .blocks
                .iter()
                .filter_map(|b| {
                    Some((b.n, b.cost_ns(o, flow)? - b.cost_ns(Filter::XdpPass, flow)?))
                })
                .collect();
            let worst = over.iter().map(|x| x.1).fold(f64::NAN, f64::max);
            let detail = over
                .iter()
                .map(|(n, x)| format!("{}: {}", num(f64::from(*n), 0), signed_ns(Some(*x))))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                s,
                "| accepted ({}), {}: within 40 ns/packet of the XDP floor at every N | {} ns \
                 over the floor (N {}) | {} |",
                if flow == Flow::Miss {
                    "one tracked flow"
                } else {
                    "new flow every packet"
                },
                short(o),
                signed_ns(Some(worst)).replace('?', "—"),
                detail,
                verdict((!over.is_empty()).then_some(worst <= 40.0))
            );
        }
    }
    // Accepted traffic cheaper than nftables with conntrack, at every N.
    for o in OURS {
        for flow in [Flow::Miss, Flow::NewFlows] {
            let diffs: Vec<(u32, f64)> = r
                .blocks
                .iter()
                .filter_map(|b| {
                    Some((
                        b.n,
                        b.cost_ns(o, flow)? - b.cost_ns(Filter::NftCtSet, flow)?,
                    ))
                })
                .collect();
            let worst = diffs.iter().map(|x| x.1).fold(f64::NAN, f64::max);
            let detail = diffs
                .iter()
                .map(|(n, x)| format!("{}: {}", num(f64::from(*n), 0), signed_ns(Some(*x))))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                s,
                "| accepted ({}), {}: cheaper than {} at every N | {} ns against it (N {}) | {} |",
                if flow == Flow::Miss {
                    "one tracked flow"
                } else {
                    "new flow every packet"
                },
                short(o),
                short(Filter::NftCtSet),
                signed_ns(Some(worst)).replace('?', "—"),
                detail,
                verdict((!diffs.is_empty()).then_some(worst < 0.0))
            );
        }
    }
    // BPF_PROG_TEST_RUN.
    if let Some(t) = &r.testrun {
        let rows: Vec<&Value> = t["rows"].as_array().into_iter().flatten().collect();
        let row = |n: u64| rows.iter().find(|r| r["n"].as_u64() == Some(n));
        let med = |v: &Value| v["median"].as_f64();
        for (key, label) in TESTRUN_PATHS {
            let ratio = (|| Some(med(&row(100_000)?[key])? / med(&row(10)?[key])?))();
            let _ = writeln!(
                s,
                "| BPF_PROG_TEST_RUN {label}: N = 100,000 within 1.3× N = 10 | {} | {} |",
                ratio.map_or("—".into(), |x| format!("{x:.2}×")),
                verdict(ratio.map(|x| x <= 1.3))
            );
        }
        for (key, empty, label) in [
            ("pass_new_flow", "single", "pass (new flow, single-shot)"),
            ("drop", "repeated", "drop"),
            (
                "drop_many_sources",
                "single",
                "drop (many sources, single-shot)",
            ),
        ] {
            let e = med(&t["empty"][empty]);
            let worst = rows
                .iter()
                .filter_map(|r| Some(med(&r[key])? / e?))
                .fold(f64::NAN, f64::max);
            let _ = writeln!(
                s,
                "| BPF_PROG_TEST_RUN {label} within 3× the empty program ({} ns) at every N | \
                 up to {worst:.2}× | {} |",
                num(e.unwrap_or(f64::NAN), 0),
                verdict((!rows.is_empty() && worst.is_finite()).then_some(worst <= 3.0))
            );
        }
        // Issue 17's: random sources at 100,000 against 10, and against the reference
        // blocklist (one hash lookup) of the same addresses, in the same run.
        let at = |n: u64, key: &str| row(n).and_then(|r| med(&r[key]));
        let ratio = (|| Some(at(100_000, "drop_many_sources")? / at(10, "drop_many_sources")?))();
        let _ = writeln!(
            s,
            "| BPF_PROG_TEST_RUN drop, many sources: N = 100,000 within 1.2× N = 10 (issue 17) | \
             {} | {} |",
            ratio.map_or("—".into(), |x| format!("{x:.2}×")),
            verdict(ratio.map(|x| x <= 1.2))
        );
        for (ours, reference, label) in [
            ("drop", "reference_drop", "drop"),
            (
                "drop_many_sources",
                "reference_drop_many_sources",
                "drop, many sources (single-shot)",
            ),
            ("established_tcp", "reference_drop", "established TCP"),
        ] {
            let pair = (|| Some((at(100_000, ours)?, at(100_000, reference)?)))();
            let _ = writeln!(
                s,
                "| BPF_PROG_TEST_RUN {label}, N = 100,000: within 2× the reference blocklist's \
                 {} (issue 17) | {} | {} |",
                if reference == "reference_drop" {
                    "repeated drop (empty program + parse + one hash lookup)"
                } else {
                    "many-source drop"
                },
                pair.map_or("—".into(), |(o, x)| format!(
                    "{} ns against {} ns: {:.2}×",
                    num(o, 0),
                    num(x, 0),
                    o / x
                )),
                verdict(pair.map(|(o, x)| o <= 2.0 * x))
            );
        }
    }
    // Reload and memory.
    for o in OURS {
        let run = big.and_then(|b| b.ours.get(&o));
        let wall =
            run.and_then(|x| Stat::of(&x.reloads.iter().map(|r| r.wall_ms).collect::<Vec<_>>()));
        let _ = writeln!(
            s,
            "| reload of 100,000 entries under 1 s, {} | {} | {} |",
            short(o),
            wall.map_or("—".into(), |w| format!(
                "{} ms (max {})",
                num(w.median, 0),
                num(w.max, 0)
            )),
            verdict(wall.map(|w| w.max < 1000.0))
        );
    }
    let leaked: Vec<(u64, u64)> = r
        .blocks
        .iter()
        .flat_map(|b| b.ours.values().map(|o| (o.leaked, o.probe_rx)))
        .collect();
    let total_leak: u64 = leaked.iter().map(|x| x.0).sum();
    let total_rx: u64 = leaked.iter().map(|x| x.1).sum();
    let _ = writeln!(
        s,
        "| no window in which packets are judged by neither rule set | {} of {} dropped-traffic \
         packets delivered during {} reloads (every N, both forms) | {} |",
        num(total_leak as f64, 0),
        num(total_rx as f64, 0),
        r.blocks
            .iter()
            .flat_map(|b| b.ours.values())
            .map(|o| o.reloads.len())
            .sum::<usize>(),
        verdict((!leaked.is_empty()).then_some(total_leak == 0 && total_rx > 0))
    );
    // Memory: at rest (resident after the reloads), with the peak beside it.
    let small = r.blocks.iter().min_by_key(|b| b.n).filter(|b| b.n <= 100);
    for (block, limit, what) in [
        (big, 64, "at N = 100,000"),
        (
            small,
            32,
            "for a workstation's rules (the smallest N, at most 100)",
        ),
    ] {
        for o in OURS {
            let run = block.and_then(|b| b.ours.get(&o));
            let rest = run.and_then(|x| x.rss_end_kib);
            let peak = run.and_then(|x| x.rss_peak_kib);
            let _ = writeln!(
                s,
                "| daemon resident under {limit} MiB {what}, {} | {} at rest (peak {}) | {} |",
                short(o),
                rest.map_or("—".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0)),
                peak.map_or("—".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0)),
                verdict(rest.map(|k| k < limit * 1024))
            );
        }
    }
    s.push_str(
        "\nWhere a target is missed, why, item by item (variants of the program that leave one \
         item out, measured in one session): README.md, \"Where the time goes\".\n\n",
    );
}

const TESTRUN_PATHS: [(&str, &str); 8] = [
    ("pass_new_flow", "pass, new flow"),
    ("drop", "drop"),
    ("drop_many_sources", "drop, many sources"),
    ("pass_new_flow_near", "pass, new flow near the rules"),
    ("reject", "reject"),
    ("established_tcp", "established TCP"),
    ("replied_udp", "replied UDP"),
    ("unreplied_udp", "unreplied UDP"),
];

fn rates(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Receive rate over veth\n");
    let sender = match r.plan.generator {
        Generator::Live => {
            "The generator is an XDP program of the object (`firewall-ebpf/src/generator.rs`) \
             run in live-frame mode (`BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`, \
             `testrun_bench generate`): it writes each frame's source address (and port) and \
             redirects it into the sender's veth, so the receiver gets `xdp_frame`s, as from a \
             NIC's driver: its XDP program runs without a socket buffer being built or copied \
             first. Frames the receiver passes (all of them without an XDP program: GRO is on \
             for that) become socket buffers in its NAPI poll. The floor of the dropped path is \
             the generator plus the redirect; xdp-filter, a plain hash lookup, shows how close \
             to it an XDP filter gets."
        }
        Generator::Trafgen => {
            "trafgen sends the frames through a packet socket; they reach the receiver as \
             socket buffers, which veth copies into a new buffer with XDP headroom before any \
             XDP program runs (`--generator trafgen`): a floor of veth's that no XDP program \
             gets under and that nftables does not pay."
        }
    };
    let _ = writeln!(
        s,
        "60-byte UDP frames (64 on the wire) from one core through a veth pair; on veth the \
         receiver's whole path runs on the sending core, so the rate is one core's capacity for \
         send + receive + filter. {sender} The receiver counts them: rate = change of its \
         `rx_packets`, and the verdict of every window is checked with `Ip InDelivers` in its \
         `/proc/net/snmp` (none delivered when dropped, all when accepted). Accepted packets go \
         to a UDP socket bound to port 9 that is never read: once its buffer is full the stack \
         drops them at the socket, which costs the same for every filter (a reader would add \
         wake-ups whose number depends on the rate).\n\n\
         Two rates from the same windows: per second of **CPU time** of the sending core \
         (the generator's processes, in whose context the receive path runs, plus that core's \
         ksoftirqd; `/proc/PID/schedstat`), which is the rate the core reaches when nothing \
         else runs on it, and per second of **wall-clock** time, which on this shared machine \
         also measures how much of the core the other jobs left. The targets and the ns/packet \
         columns use the CPU-time rate. \"ns/packet\" is the CPU time the filter adds to a \
         packet: 1e9/rate(filter) − 1e9/rate(no filter), from the medians, against the same \
         traffic with no filter; negative when dropping early saves the rest of the stack.\n\n\
         Traffic: **dropped** comes from the address of the last rule (set element) to UDP port \
         9; **dropped, many sources** from 20,000 rule addresses spread over the N rules (all N \
         when fewer; for xdp-filter, over the 10,000 its map holds), a random one for each \
         frame (trafgen: in turn), so that no lookup stays warm on a repeated address; **one \
         flow** from the sender's address and one source port, matching no rule; **new \
         flows** from a random address in 10.202.0.0/16 and a random port for every packet, \
         matching no rule. With connection tracking, the one-flow traffic is a tracked flow \
         after its first packet (an unreplied UDP flow in the unconfirmed table: its packets \
         skip the rules), while every new-flow packet goes through the table lookups, the rules \
         and an insert into the unconfirmed LRU table (which evicts all the time at these \
         rates). The stateful nftables peer accepts `ct state established,related` first and \
         then looks the set up at the input hook (unreplied UDP stays `new`, so every packet \
         reaches the set after conntrack's lookup, and every new flow allocates a conntrack \
         entry); the other nftables and iptables rows have no conntrack rules.\n"
    );
    for b in &r.blocks {
        let _ = writeln!(
            s,
            "### N = {}\n\nkpps per CPU-second, median (min–max), and the CPU time added per \
             packet:\n",
            num(f64::from(b.n), 0)
        );
        let _ = writeln!(
            s,
            "| filter | dropped: kpps | ns/packet | dropped, many sources: kpps | ns/packet | \
             accepted, one flow: kpps | ns/packet | accepted, new flows: kpps | ns/packet \
             |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for filter in Filter::ALL {
            let mut row = format!("| {} |", filter.label());
            for flow in Flow::ALL {
                let cell = b.cells.get(&(filter, flow));
                let st = cell.and_then(|c| Stat::of(&c.cpu_pps));
                let cost = if filter == Filter::None {
                    "baseline".to_string()
                } else {
                    signed_ns(b.cost_ns(filter, flow))
                };
                let _ = write!(
                    row,
                    " {}{} | {} |",
                    st.map_or("—".into(), |x| x.cell(1e-3, 0)),
                    marks(filter, flow, cell),
                    cost
                );
            }
            let _ = writeln!(s, "{row}");
        }
        let _ = writeln!(
            s,
            "\nWall-clock kpps, median (min–max):\n\n| filter | dropped | dropped, many sources \
             | accepted, one flow | accepted, new flows |\n|---|---:|---:|---:|---:|"
        );
        for filter in Filter::ALL {
            let mut row = format!("| {} |", filter.label());
            for flow in Flow::ALL {
                let cell = b.cells.get(&(filter, flow));
                let st = cell.and_then(|c| Stat::of(&c.pps));
                let _ = write!(
                    row,
                    " {}{} |",
                    st.map_or("—".into(), |x| x.cell(1e-3, 0)),
                    marks(filter, flow, cell)
                );
            }
            let _ = writeln!(s, "{row}");
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "(accepted): the baselines accept the traffic that the filters drop. [k re-run]: \
         windows that measured nothing and were run again.\n"
    );
}

fn marks(filter: Filter, flow: Flow, cell: Option<&Cell>) -> String {
    let mut m = String::new();
    if flow.dropped() && !filter.drops_hit() {
        m.push_str(" (accepted)");
    }
    let reruns = cell.map_or(0, |c| c.reruns);
    if reruns > 0 {
        let _ = write!(m, " [{reruns} re-run]");
    }
    if cell.is_some_and(|c| !c.failures.is_empty()) {
        m.push_str(" **(failed: see Failures)**");
    }
    m
}

fn loading(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Loading rules, reloading, memory\n");
    let _ = writeln!(
        s,
        "Time to install each rule set once in an empty namespace: `iptables-legacy-restore`, \
         `nft -f` (one transaction), `xdp-filter load` and one `bpftool batch` of map updates \
         (at most 10,000), and for this firewall the daemon's start until it prints \
         `ready` (parse, compile, load through the verifier, fill the maps, attach).\n"
    );
    let _ = writeln!(
        s,
        "| N | iptables-legacy-restore | nft -f, N rules | nft -f, N-element set | nft -f, \
         conntrack + set | xdp-filter | ours, N rules: start | ours, N-element set: start \
         |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for b in &r.blocks {
        let ms = |f| {
            b.load_ms
                .get(&f)
                .map_or("—".into(), |x: &f64| format!("{} ms", num(*x, 0)))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            num(f64::from(b.n), 0),
            ms(Filter::Iptables),
            ms(Filter::NftRules),
            ms(Filter::NftSet),
            ms(Filter::NftCtSet),
            ms(Filter::XdpTools),
            ms(Filter::OursRules),
            ms(Filter::OursSet)
        );
    }
    let _ = writeln!(
        s,
        "\n`fwctl reload` against the running daemon after rewriting the file (the first \
         rule's or element's address changes, the last one stays), while the dropped traffic \
         flows at full rate into the receiver: wall time of the command, and the daemon's own \
         figure. \"Delivered\" counts packets of that traffic the \
         receiver's stack got during the reloads: any would mean a moment without the rules \
         (the default is `allow`). Peak RSS is the daemon's `VmHWM` after start, and at the \
         end (after the reloads); resident is its `VmRSS` at the end, at rest.\n"
    );
    let _ = writeln!(
        s,
        "| N | form | reload (fwctl) | daemon's `took_ms` | delivered during reloads | peak RSS \
         after start | peak RSS at the end | resident at the end |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for b in &r.blocks {
        for o in OURS {
            let Some(run) = b.ours.get(&o) else { continue };
            let wall = Stat::of(&run.reloads.iter().map(|r| r.wall_ms).collect::<Vec<_>>());
            let took = Stat::of(
                &run.reloads
                    .iter()
                    .filter_map(|r| r.took_ms)
                    .collect::<Vec<_>>(),
            );
            let timed_out = run.reloads.iter().filter(|r| r.fwctl_timed_out).count();
            let note = if timed_out > 0 {
                format!(" ({timed_out} beyond fwctl's 30 s timeout)")
            } else {
                String::new()
            };
            let mib = |k: Option<u64>| {
                k.map_or("—".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
            };
            let _ = writeln!(
                s,
                "| {} | {} | {}{note} | {} | {} of {} | {} | {} | {} |",
                num(f64::from(b.n), 0),
                short(o),
                wall.map_or("—".into(), |w| format!("{} ms", w.cell(1.0, 0))),
                took.map_or("—".into(), |w| format!("{} ms", w.cell(1.0, 0))),
                num(run.leaked as f64, 0),
                num(run.probe_rx as f64, 0),
                mib(run.rss_start_kib),
                mib(run.rss_peak_kib),
                mib(run.rss_end_kib)
            );
        }
    }
    s.push('\n');
}

fn testrun(s: &mut String, r: &Results) {
    let Some(t) = &r.testrun else { return };
    let _ = writeln!(s, "## BPF_PROG_TEST_RUN\n");
    let cell = |v: &Value| {
        let st = Stat {
            median: v["median"].as_f64().unwrap_or(f64::NAN),
            min: v["min"].as_f64().unwrap_or(f64::NAN),
            max: v["max"].as_f64().unwrap_or(f64::NAN),
        };
        st.cell(1.0, 0)
    };
    let _ = writeln!(
        s,
        "The XDP program alone, in the kernel, on 60-byte UDP frames, ns/packet. Repeated paths: \
         {} samples of {} runs each (the kernel averages within a sample). Single-shot paths \
         ({} runs, one packet each): a new flow would be tracked after its first repetition and \
         reject rewrites the frame, so both are timed one packet at a time, which includes the \
         kernel's per-run setup; compare them with the empty program's single-shot figure. \
         Rules are N `remote + port` rules; drop and reject hit the last one; \"drop, many \
         sources\" comes from up to 20,000 rule addresses drawn at random and \"pass, new flow \
         near the rules\" from the unnamed address next to a random rule's, one packet from each \
         source in turn, so that no lookup is kept warm by a repeated address. The empty XDP \
         program measures {} repeated and {} single-shot in the same run. Verified instructions: \
         the kernel's count of what its verifier walked for all four programs of a generation \
         (XDP and TC, Ethernet and without a link layer), which the load time follows; the limit \
         is 1,000,000 per program. The reference blocklist (`firewall-ebpf/src/blocklist.rs`) \
         is the smallest XDP blocklist: one hash lookup of the IPv4 source, holding the same N \
         addresses, timed on the same frames.\n",
        t["samples"],
        num(t["repeat"].as_f64().unwrap_or(0.0), 0),
        num(t["single_shots"].as_f64().unwrap_or(0.0), 0),
        cell(&t["empty"]["repeated"]),
        cell(&t["empty"]["single"])
    );
    let _ = writeln!(
        s,
        "| rules | compile + load | verified instructions | pass, new flow (single-shot) | drop | \
         drop, many sources (single-shot) | pass, new flow near the rules (single-shot) | \
         reject (single-shot) | established TCP | replied UDP | unreplied UDP | reference: \
         drop | reference: drop, many sources (single-shot) \
         |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in t["rows"].as_array().into_iter().flatten() {
        let _ = write!(
            s,
            "| {} | {} ms | {} |",
            num(row["n"].as_f64().unwrap_or(f64::NAN), 0),
            num(row["load_ms"].as_f64().unwrap_or(f64::NAN), 0),
            row["verified_insns"]
                .as_f64()
                .map_or("—".into(), |v| num(v, 0))
        );
        for (key, _) in TESTRUN_PATHS {
            let _ = write!(s, " {} |", cell(&row[key]));
        }
        for key in ["reference_drop", "reference_drop_many_sources"] {
            let _ = write!(s, " {} |", cell(&row[key]));
        }
        s.push('\n');
    }
    s.push('\n');
}

fn tcp(s: &mut String, r: &Results) {
    if r.tcp.is_empty() {
        return;
    }
    let _ = writeln!(s, "## TCP connection setup rate\n");
    let _ = writeln!(
        s,
        "A client in the sender namespace connects to port 8000 across the veth, reads until the \
         server's FIN and closes; the server accepts and closes at once. Client and server are \
         pinned to the same core, so the rate is one core's capacity for both ends, both stacks \
         and the filter; CPU time is that of the two threads and the core's ksoftirqd. {} \
         windows of {} s each:\n",
        r.plan.reps, r.plan.secs
    );
    let _ = writeln!(
        s,
        "| filter | connections per CPU-second | vs no filter | connections per wall-clock \
         second | failed |\n|---|---:|---:|---:|---:|"
    );
    let base = r
        .tcp
        .first()
        .and_then(|t| Stat::of(&t.cpu_rates))
        .map(|x| x.median);
    for t in &r.tcp {
        let st = Stat::of(&t.cpu_rates);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            t.label,
            st.map_or("—".into(), |x| x.cell(1.0, 0)),
            match (st, base) {
                (Some(x), Some(b)) if b > 0.0 => format!("{:.2}×", x.median / b),
                _ => "—".into(),
            },
            Stat::of(&t.rates).map_or("—".into(), |x| x.cell(1.0, 0)),
            t.failed
        );
    }
    s.push('\n');
}

fn connect(s: &mut String, r: &Results) {
    let Some(table) = &r.connect else {
        return;
    };
    let _ = writeln!(
        s,
        "## connect() with outbound rules and rules about programs
"
    );
    let _ = writeln!(
        s,
        "What the cgroup hooks add to a process's `connect()` (no other firewall here has \
         per-program rules to compare with). A UDP `connect()` looks the route up and sends \
         nothing, so the figure is the system call plus the hooks. \"new socket\" creates, \
         connects and closes a socket per call, so the hooks also record a new owner each time \
         (`[conntrack] record_owner`), as for every real connection. The program rules name \
         10 or 1,000 different executables, the benchmark's own last; \"all 7 selector \
         shapes\" is the worst case, every combination of program, unit and user in use. From \
         `firewall-daemon/examples/connect_bench.rs`, ns per call:\n"
    );
    let mut lines = table.lines();
    if let Some(heading) = lines.next() {
        let _ = writeln!(s, "{heading}\n");
    }
    for line in lines {
        let _ = writeln!(s, "{line}");
    }
    s.push('\n');
}

/// What each DNS answer of `testrun_bench dns` is, by its key.
fn dns_answer_label(key: &str) -> Option<&'static str> {
    Some(match key {
        "one_a" => "one A record for the name asked",
        "cnames" => "the name asked → 2 CNAMEs → 8 A records",
        "unsolicited" => "one A record answering no query the host sent (ignored)",
        _ => return None,
    })
}

/// Table rows of `rows` (`testrun_bench dns`'s shape: `key`, `read` and `passed` with their
/// median and range, and each run's medians), labelled by `label` from the key: both medians,
/// their difference taken run by run (each run measured both), and their ratio.
fn difference_rows(s: &mut String, rows: &Value, label: fn(&str) -> Option<&'static str>) {
    let stat = |v: &Value| Stat {
        median: v["median"].as_f64().unwrap_or(f64::NAN),
        min: v["min"].as_f64().unwrap_or(f64::NAN),
        max: v["max"].as_f64().unwrap_or(f64::NAN),
    };
    let runs = |v: &Value| -> Vec<f64> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|x| x.as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    for row in rows.as_array().into_iter().flatten() {
        let (read, passed) = (stat(&row["read"]), stat(&row["passed"]));
        let diffs: Vec<f64> = runs(&row["read_runs"])
            .iter()
            .zip(runs(&row["passed_runs"]))
            .map(|(r, p)| r - p)
            .collect();
        let difference = Stat::of(&diffs).map_or("—".into(), |x| {
            let c = x.cell(1.0, 0);
            if x.median >= 0.0 { format!("+{c}") } else { c }
        });
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            row["key"]
                .as_str()
                .and_then(label)
                .or(row["answer"].as_str())
                .unwrap_or("?"),
            read.cell(1.0, 0),
            passed.cell(1.0, 0),
            difference,
            times(read.median / passed.median)
        );
    }
}

/// What each packet of `testrun_bench dns`'s loopback part is, by its key.
fn loopback_packet_label(key: &str) -> Option<&'static str> {
    Some(match key {
        "tcp" => "a TCP segment between two local ports (not DNS)",
        "query" => "a query for www.example.test to a resolver on 127.0.0.53 (recorded)",
        "answer" => "that resolver's answer, one A record (read)",
        _ => return None,
    })
}

/// The Names section alone, with `provenance` under its heading (`--only-names`).
pub fn names_markdown(n: &Names, provenance: &str) -> String {
    let mut s = String::new();
    names(&mut s, n);
    s.replacen("## Names\n\n", &format!("## Names\n\n{provenance}\n\n"), 1)
}

/// `text` with the section starting at the line `heading` (up to the next `## ` heading, or
/// the end) replaced by `section`; when `text` has no such section, it goes where a full run
/// puts it, before "How to read this" (else at the end).
pub fn replace_section(text: &str, heading: &str, section: &str) -> String {
    let Some(start) = text
        .match_indices(heading)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || text[..i].ends_with('\n'))
    else {
        return match text.find("\n## How to read this") {
            Some(i) => format!("{}{}\n{}", &text[..=i], section.trim_end(), &text[i..]),
            None => format!("{}\n\n{section}", text.trim_end()),
        };
    };
    let rest = &text[start + heading.len()..];
    let end = rest
        .find("\n## ")
        .map_or(text.len(), |i| start + heading.len() + i + 1);
    let mut out = String::with_capacity(text.len() + section.len());
    out.push_str(&text[..start]);
    out.push_str(section.trim_end());
    out.push_str("\n\n");
    out.push_str(&text[end..]);
    out
}

fn names(s: &mut String, n: &Names) {
    let _ = writeln!(s, "## Names\n");
    let _ = writeln!(
        s,
        "What rules that name domain names cost: the XDP program reading the DNS answers that \
         give the names their addresses, the loopback program on every packet sent over `lo`, \
         and a connect() to a destination known by a name.\n"
    );
    let d = &n.dns;
    let _ = writeln!(s, "### Reading a DNS answer\n");
    let _ = writeln!(
        s,
        "BPF_PROG_TEST_RUN (`testrun_bench dns`): the XDP program's time for one DNS answer from \
         the resolver (192.168.0.53, port 53), each to a query for www.example.test the host \
         sent just before through the egress program, from a new port each time, and timed \
         single-shot (so the kernel's per-run setup is included, as in the single-shot paths \
         of BPF_PROG_TEST_RUN above). Two rule sets, loaded together and measured in turn \
         within each run: an outbound rule naming `*.example.test`, so the answer is **read** \
         (its question compared with the query's, CNAMEs followed, each A record recorded \
         with the name), and the same rule naming 198.51.100.0/24 instead, so the same answer \
         is only **passed** as a tracked UDP reply. ns per answer: the median of {} runs' \
         medians of {} answers each (min–max of the runs' medians). \"The reading\" is read − \
         passed, the median of the runs' differences (min–max); the ratio is of the medians. \
         Only UDP from port 53 reaches the reader (a program of its own, tail-called), and it \
         is loaded only when the rules name names: other packets do not pay this.\n",
        d["runs"],
        num(d["shots"].as_f64().unwrap_or(f64::NAN), 0)
    );
    let _ = writeln!(
        s,
        "| DNS answer | read (the rules name a name) | passed (the rules name an address) | the \
         reading | read / passed |\n|---|---:|---:|---:|---:|"
    );
    difference_rows(s, &d["rows"], dns_answer_label);
    let c = &d["counters"];
    let count = |k: &str| num(c[k].as_f64().unwrap_or(f64::NAN), 0);
    let _ = writeln!(
        s,
        "\nThe reader's counters over the run (rules naming a name): {} answers read, {} \
         addresses recorded, {} answers to no query, {} malformed.\n",
        count("dns_answers"),
        count("dns_addresses"),
        count("dns_unsolicited"),
        count("dns_malformed")
    );

    // Older runs' output has no loopback part.
    let lo = &d["loopback"];
    if lo.is_object() {
        let _ = writeln!(s, "### The loopback program\n");
        let _ = writeln!(
            s,
            "BPF_PROG_TEST_RUN (`testrun_bench dns`): the TC program on `lo` (attached while the \
             rules read names, to see a local resolver's answers) has every packet the host \
             sends over `lo` to parse. Its time per packet, single shot (the test run of a TC \
             program has no setup comparable to XDP's), with the rules above **reading names** \
             against the same program when they read none (it looks at `DNS_ON` and returns: \
             the floor of any TC program; the daemon does not even attach it then). Each shot a \
             TCP segment between two ports of 127.0.0.1, a query from a new port to a resolver \
             on 127.0.0.53, and that resolver's answer. ns per packet: the median of {} runs' \
             medians of {} packets each (min–max of the runs' medians); the difference is taken \
             run by run.\n",
            lo["runs"],
            num(lo["shots"].as_f64().unwrap_or(f64::NAN), 0)
        );
        let _ = writeln!(
            s,
            "| packet sent over lo | names read | no names read | the difference | read / not \
             read |\n|---|---:|---:|---:|---:|"
        );
        difference_rows(s, &lo["rows"], loopback_packet_label);
        let _ = writeln!(
            s,
            "\nAnswers the loopback program read: {}.\n",
            num(lo["answers_read"].as_f64().unwrap_or(f64::NAN), 0)
        );
    }

    let _ = writeln!(s, "### connect() to a destination with a name\n");
    let _ = writeln!(
        s,
        "`connect_bench names`, in a namespace and cgroup of its own like the connect() part, ns \
         per call. **10 rules naming addresses**: 10 outbound `remote + port` rules, the \
         destination (10.77.0.2, fd77::2, port 9000) allowed by the last: the comparison. **A \
         destination with a name**: a rule refusing N other names ({}), then one allowing port \
         9000 to `*.dest.example.test`; the destination has the name www.dest.example.test in \
         the names tables (written as the XDP program writes them from a DNS answer), so each \
         call looks up the destination's names, then the keys of the name and of each of its \
         suffixes: the same lookups whatever N, though with the largest N the tables are far \
         larger than the caches. The cases are loaded together and their runs interleaved. \
         \"Names' cost\" is the row's median against the address rules' (one socket connected \
         again and again: the hooks' judging alone). \"load\": the outbound generation's load \
         (programs and maps, the names' keys hashed and written).\n",
        n.name_counts
            .iter()
            .map(|c| num(f64::from(*c), 0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut lines = n.connect.lines();
    if let Some(heading) = lines.next() {
        let _ = writeln!(s, "{heading}\n");
    }
    for line in lines {
        let _ = writeln!(s, "{line}");
    }
    s.push('\n');
}

fn failures(s: &mut String, r: &Results) {
    let f = r.failures();
    if f.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Failures\n");
    for line in f {
        let _ = writeln!(s, "- {line}");
    }
    s.push('\n');
}

fn notes(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "## How to read this\n\n\
         - Each filter has its own pair of namespaces, installed once per N; the repetitions go \
         round the pairs (in a rotating order), so slow phases of the shared machine hit every \
         filter alike. A window that measured no packets is run again and counted as a re-run \
         in the table.\n\
         - {floor}\n\
         - Our firewall runs in native XDP mode on the veth with connection tracking (the \
         daemon's defaults: 262,144 confirmed and 65,536 unconfirmed entries).\n\
         - Rule addresses are spread over 100.64.0.0/10 by a bijective hash, so that no \
         compiler can merge neighbouring rules into one prefix.\n\
         - xdp-filter (xdp-tools) runs in native mode with IPv4 features only and the rule \
         addresses in its per-CPU hash of source addresses, its strongest form for this \
         traffic; its map holds 10,000 addresses, so at larger N it holds (and the traffic to \
         it uses) the first 10,000 rule addresses.\n",
        floor = match r.plan.generator {
            Generator::Live => {
                "The XDP pass-only row is the floor of accepted traffic for any XDP program: \
                 the frames reach the receiver as `xdp_frame`s, the program runs, and veth \
                 builds a socket buffer around each frame it passes. The dropped path builds no \
                 socket buffer at all, which is where XDP saves against netfilter."
            }
            Generator::Trafgen => {
                "The XDP pass-only row is the floor of any XDP program on veth with trafgen: \
                 attaching one moves the receiver to veth's NAPI path, where veth copies every \
                 frame into a new buffer with XDP headroom (the frames an AF_PACKET sender \
                 builds have neither that headroom nor a linear layout). A NIC driver builds \
                 its XDP buffer in place, so this fixed cost, paid before our program runs, is \
                 particular to veth (the default generator, live XDP frames, avoids it)."
            }
        }
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Names, names, replace_section};

    #[test]
    fn a_section_is_replaced_in_place_or_appended() {
        let text = "# B\n\n## A\n\na\n\n## Names\n\nold\n\n## How to read this\n\nz\n";
        let out = replace_section(text, "## Names\n", "## Names\n\nnew\n");
        assert_eq!(
            out,
            "# B\n\n## A\n\na\n\n## Names\n\nnew\n\n## How to read this\n\nz\n"
        );
        let out = replace_section("# B\n\n## A\n\na\n", "## Names\n", "## Names\n\nnew\n");
        assert_eq!(out, "# B\n\n## A\n\na\n\n## Names\n\nnew\n");
        let out = replace_section(
            "# B\n\n## A\n\na\n\n## How to read this\n\nz\n",
            "## Names\n",
            "## Names\n\nnew\n",
        );
        assert_eq!(
            out,
            "# B\n\n## A\n\na\n\n## Names\n\nnew\n\n## How to read this\n\nz\n"
        );
        // At the end of the file.
        let out = replace_section("# B\n## Names\nold\n", "## Names\n", "## Names\nnew\n");
        assert_eq!(out, "# B\n## Names\nnew\n\n");
    }

    /// The names section from the examples' output: each answer's medians with the range of
    /// the runs, the reading taken run by run, and connect_bench's table as printed.
    #[test]
    fn names_section() {
        let stat = |v: [f64; 3]| json!({ "median": v[1], "min": v[0], "max": v[2] });
        let n = Names {
            dns: json!({
                "runs": 3,
                "shots": 3000,
                "rows": [
                    {
                        "key": "one_a",
                        "answer": "one A record",
                        "read": stat([2003.0, 2023.0, 2083.0]),
                        "passed": stat([621.0, 621.0, 621.0]),
                        "read_runs": [2083.0, 2003.0, 2023.0],
                        "passed_runs": [621.0, 621.0, 621.0],
                    },
                    {
                        "key": "later",
                        "answer": "a kind the report does not know",
                        "read": stat([800.0, 821.0, 821.0]),
                        "passed": stat([601.0, 601.0, 610.0]),
                        "read_runs": [821.0, 821.0, 800.0],
                        "passed_runs": [610.0, 601.0, 601.0],
                    },
                ],
                "counters": {
                    "dns_answers": 27000, "dns_addresses": 90000,
                    "dns_unsolicited": 9000, "dns_malformed": 0,
                },
                "loopback": {
                    "runs": 3,
                    "shots": 3000,
                    "answers_read": 9000,
                    "rows": [{
                        "key": "tcp",
                        "read": stat([108.0, 110.0, 111.0]),
                        "passed": stat([91.0, 100.0, 100.0]),
                        "read_runs": [110.0, 108.0, 111.0],
                        "passed_runs": [100.0, 91.0, 100.0],
                    }],
                },
            }),
            connect: "connect() of a UDP socket, ns per call: heading\n\
                      | outbound rules | IPv4 |\n|---|---:|\n| 10 rules naming addresses | 1259 |\n"
                .into(),
            name_counts: vec![10, 1_000_000],
        };
        let mut s = String::new();
        names(&mut s, &n);
        assert!(s.starts_with("## Names\n"), "{s}");
        assert!(
            s.contains(
                "| one A record for the name asked | 2,023 (2,003–2,083) | 621 | +1,402 \
                 (1,382–1,462) | 3.26× |"
            ),
            "{s}"
        );
        assert!(
            s.contains(
                "| a kind the report does not know | 821 (800–821) | 601 (601–610) | +211 \
                 (199–220) | 1.37× |"
            ),
            "{s}"
        );
        assert!(
            s.contains("median of 3 runs' medians of 3,000 answers"),
            "{s}"
        );
        assert!(
            s.contains("27,000 answers read, 90,000 addresses recorded"),
            "{s}"
        );
        assert!(
            s.contains(
                "heading\n\n| outbound rules | IPv4 |\n|---|---:|\n| 10 rules naming addresses | \
                 1259 |\n"
            ),
            "{s}"
        );
        assert!(s.contains("refusing N other names (10, 1,000,000)"), "{s}");
        assert!(
            s.contains(
                "| a TCP segment between two local ports (not DNS) | 110 (108–111) | 100 \
                 (91–100) | +11 (10–17) | 1.10× |"
            ),
            "{s}"
        );
        assert!(
            s.contains("Answers the loopback program read: 9,000."),
            "{s}"
        );
    }
}
