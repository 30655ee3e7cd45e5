//! What the outbound hooks add to connect(): `connect_bench [--calls N] [--runs N]` and
//! `connect_bench names [--calls N] [--runs N] [--names 10,1000000]` (needs root).
//!
//! It creates a network namespace of its own (a veth pair in it, with 10.77.0.1/24 and
//! fd77::1/64, so destinations are routable while nothing is ever sent), a private bpffs and a
//! cgroup below its own, moves itself into that cgroup, and times connect() on one UDP socket
//! to 10.77.0.2 and fd77::2 (a UDP connect only looks the route up and sends nothing; each
//! call runs the connect4/connect6 hook): first with no program attached, then with the
//! daemon's cgroup hooks (connect, sendmsg, post_bind, sock_release) and 0 / 10 / 1,000 /
//! 10,000 outbound rules, and with no rule
//! and `[conntrack] record_owner = false` (the hooks judge but record no owner). Each rule names a
//! remote address and a port (the kind that needs all three lookups and the pair table); the
//! destination matches the last rule, which allows it. Then with rules about programs: 10 and
//! 1,000 rules each naming a different executable (the benchmark's own is the last, allowed),
//! and the worst case, rules of all seven selector shapes (program, unit, user and their
//! combinations), each of which the benchmark process matches, so every call makes seven group
//! lookups.
//!
//! `names`: 10 rules naming addresses as above, against names (`remote =
//! ["*.dest.example.test"]`): the destinations have the name `www.dest.example.test` in the
//! names tables (written as the XDP program writes them from a DNS answer), and 10 or
//! 1,000,000 other names (`--names`) are named by an earlier rule, so every call looks up the
//! destination's names and the keys of the name and its suffixes. The cases are loaded
//! together and their runs interleaved (each run attaches one case's hooks after the other, in
//! a rotating order), and two more columns give what the names cost over the address rules
//! (the one-socket medians).
//!
//! Prints ns per connect() call: the median of `--runs` runs (min-max in brackets) of
//! `--calls` calls each, for one socket connected again and again (the hooks' judging alone:
//! the socket's owner is recorded once) and for a new socket per call (socket(), connect(),
//! close(): every call also records a new owner, as every real connection does).
//!
//! Everything it creates is removed when it exits (the namespace with the process; the cgroup
//! and the bpffs by guards, the process moved back to its cgroup first).

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::Path,
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use firewall_daemon::{
    compile,
    host::{cgroups::Cgroup, selectors::Resolved},
    kernel::{self, Hook, OutboundGeneration},
};
// The tests' private bpffs (unmounted on drop).
use firewall_sandbox::{bpffs::BpfFs, scratch::ScratchCgroup};
use nix::sched::{CloneFlags, unshare};
use rules::{config, model::Direction};

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("ip")
        .args(args)
        .status()
        .context("running ip")?;
    if !st.success() {
        bail!("ip {} failed", args.join(" "));
    }
    Ok(())
}

/// N outbound rules naming 10.x.y.z and a port each; the last one allows 10.77.0.2 and fd77::2
/// on port 9000. Outbound default: reject (so a miss would show as an error).
fn rules(n: u32) -> String {
    let mut text = String::from("[defaults]\noutbound = \"reject\"\n");
    for i in 0..n.saturating_sub(1) {
        let a = Ipv4Addr::from(0x0a00_0000u32 + 0x100 + i);
        text.push_str(&format!(
            "[[rule]]\ndirection = \"out\"\nproto = \"udp\"\nport = {}\nremote = \"{a}\"\n\
             action = \"reject\"\n",
            1000 + i % 50_000
        ));
    }
    if n > 0 {
        text.push_str(
            "[[rule]]\ndirection = \"out\"\nproto = \"udp\"\nport = 9000\n\
             remote = [\"10.77.0.2\", \"fd77::2\"]\naction = \"allow\"\n",
        );
    } else {
        text = "[defaults]\noutbound = \"allow\"\n".into();
    }
    text
}

/// Rules about programs: `n - 1` rules refusing port 9000 to other executables (files made in
/// `dir`), then one allowing this benchmark's own executable.
fn program_rules(n: u32, dir: &Path) -> anyhow::Result<String> {
    let me = std::env::current_exe()?;
    let mut text = String::from("[defaults]\noutbound = \"reject\"\n");
    for i in 0..n.saturating_sub(1) {
        let p = dir.join(format!("prog-{i}"));
        std::fs::write(&p, b"")?;
        text.push_str(&format!(
            "[[rule]]\ndirection = \"out\"\nprogram = \"{}\"\nproto = \"udp\"\nport = 9000\n\
             action = \"reject\"\n",
            p.display()
        ));
    }
    text.push_str(&format!(
        "[[rule]]\ndirection = \"out\"\nprogram = \"{}\"\nproto = \"udp\"\nport = 9000\n\
         remote = [\"10.77.0.2\", \"fd77::2\"]\naction = \"allow\"\n",
        me.display()
    ));
    Ok(text)
}

/// One rule of each of the seven selector shapes, all about this process (its executable, its
/// cgroup as the unit `unit`, its uid), each refusing another port; the last allows port 9000.
fn all_shapes_rules(unit: &str) -> anyhow::Result<String> {
    let me = std::env::current_exe()?;
    let program = format!("program = \"{}\"\n", me.display());
    let unit = format!("unit = \"{unit}\"\n");
    let user = format!("user = {}\n", nix::unistd::getuid().as_raw());
    let mut text = String::from("[defaults]\noutbound = \"reject\"\n");
    for (i, sel) in [
        program.clone(),
        unit.clone(),
        user.clone(),
        format!("{program}{unit}"),
        format!("{program}{user}"),
        format!("{unit}{user}"),
    ]
    .iter()
    .enumerate()
    {
        text.push_str(&format!(
            "[[rule]]\ndirection = \"out\"\n{sel}proto = \"udp\"\nport = {}\naction = \"reject\"\n",
            9100 + i
        ));
    }
    text.push_str(&format!(
        "[[rule]]\ndirection = \"out\"\n{program}{unit}{user}proto = \"udp\"\nport = 9000\n\
         remote = [\"10.77.0.2\", \"fd77::2\"]\naction = \"allow\"\n"
    ));
    Ok(text)
}

/// Names: a rule refusing `n` names, then one allowing port 9000 to any name below
/// dest.example.test (the destinations get the name `www.dest.example.test`, [`name_dests`]).
fn name_rules(n: u32) -> String {
    let names: Vec<String> = (0..n).map(|i| format!("\"n{i}.example.test\"")).collect();
    format!(
        "[defaults]\noutbound = \"reject\"\n\
         [[rule]]\ndirection = \"out\"\nproto = \"udp\"\nremote = [{}]\naction = \"reject\"\n\
         [[rule]]\ndirection = \"out\"\nproto = \"udp\"\nport = 9000\n\
         remote = [\"*.dest.example.test\"]\naction = \"allow\"\n",
        names.join(", ")
    )
}

/// Gives the destinations the name `www.dest.example.test` in the pinned names tables, as the
/// XDP program records a DNS answer (`firewall-ebpf/src/dns.rs`), with the key the outbound
/// copy drew.
fn name_dests(pin_dir: &Path, dests: &[SocketAddr]) -> anyhow::Result<()> {
    use aya::maps::{Array, HashMap, Map, MapData};
    use firewall_common::dns::{
        NAME_TEXT, NameKey, Resolved, ResolvedName, SeenName, WILDCARD_DEPTH, exact_key,
        wildcard_key,
    };
    let open = |name: &str| -> anyhow::Result<Map> {
        Ok(Map::from_map_data(MapData::from_pin(pin_dir.join(name))?)?)
    };
    let key: NameKey = Array::<MapData, NameKey>::try_from(open("NAME_KEY")?)?.get(&0, 0)?;
    anyhow::ensure!(!key.is_unset(), "no name key was drawn");
    let name = "www.dest.example.test";
    let labels: Vec<&str> = name.split('.').collect();
    let mut seen = SeenName {
        suffixes: [0; WILDCARD_DEPTH],
        count: 0,
        len: 0,
        text: [0; NAME_TEXT],
    };
    for depth in 1..labels.len() {
        seen.suffixes[depth - 1] = wildcard_key(&key, &labels[labels.len() - depth..].join("."));
        seen.count = depth as u32;
    }
    let mut at = 0;
    for l in &labels {
        seen.text[at] = l.len() as u8;
        seen.text[at + 1..at + 1 + l.len()].copy_from_slice(l.as_bytes());
        at += 1 + l.len();
    }
    seen.len = at as u32;
    let exact = exact_key(&key, name);
    let mut names: HashMap<MapData, u64, SeenName> = HashMap::try_from(open("SEEN_NAMES")?)?;
    names.insert(&exact, &seen, 0)?;
    let mut resolved: HashMap<MapData, [u8; 16], Resolved> = HashMap::try_from(open("RESOLVED")?)?;
    let mut r = Resolved::default();
    r.names[0] = ResolvedName {
        name: exact,
        expires: u64::MAX,
    };
    for d in dests {
        resolved.insert(&firewall_common::addr::mapped(d.ip()), &r, 0)?;
    }
    Ok(())
}

/// ns per call of `once`, after 1,000 calls of warm-up (route and neighbour caches, the hooks'
/// maps): the median and range of `runs` runs of `calls` calls.
fn timed(
    calls: u32,
    runs: usize,
    mut once: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64, f64)> {
    for _ in 0..1000 {
        once()?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        for _ in 0..calls {
            once()?;
        }
        samples.push(t.elapsed().as_nanos() as f64 / f64::from(calls));
    }
    samples.sort_by(f64::total_cmp);
    Ok((
        samples[samples.len() / 2],
        samples[0],
        samples[samples.len() - 1],
    ))
}

/// socket() + connect() + close() to `to`, a new socket each time (so the hooks record a new
/// owner every call). The socket is not bound first, as clients' are not (an explicit bind()
/// would also run the listener table's hook).
fn time_new_sockets(to: SocketAddr, calls: u32, runs: usize) -> anyhow::Result<(f64, f64, f64)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, connect, socket};
    let family = if to.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let addr = SockaddrStorage::from(to);
    timed(calls, runs, || {
        let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
        // The socket is closed when `fd` drops.
        connect(fd.as_raw_fd(), &addr).context("connect")
    })
}

/// connect() of one socket to `to`, again and again.
fn time_connects(to: SocketAddr, calls: u32, runs: usize) -> anyhow::Result<(f64, f64, f64)> {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind)?;
    timed(calls, runs, || sock.connect(to).context("connect"))
}

/// One case's four cells: one socket and a new socket per call, IPv4 and IPv6; each the median,
/// min and max ns per call.
type Cells = [(f64, f64, f64); 4];

fn cell((m, lo, hi): &(f64, f64, f64)) -> String {
    format!("{m:.0} ({lo:.0}-{hi:.0})")
}

/// One case's rules loaded as the daemon's outbound generation, pinned in `pin_dir`; when the
/// rules name names, the destinations `dests` get theirs. With the load time in ms.
fn load_case(
    text: &str,
    cgroup_path: &Path,
    pin_dir: &Path,
    dests: &[SocketAddr],
) -> anyhow::Result<(OutboundGeneration, f64)> {
    let rs =
        config::parse(text, Path::new("connect-bench.toml")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let resolved = Resolved::resolve(&rs, cgroup_path);
    let unresolved = resolved.warnings(&rs);
    if !unresolved.is_empty() {
        bail!("selectors did not resolve: {unresolved:?}");
    }
    let compiled = compile::compile_direction(&rs, Direction::Out, &resolved)?;
    let t = Instant::now();
    let generation = OutboundGeneration::load(&compiled, &rs, pin_dir, 1)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    if !compiled.names.is_empty() {
        name_dests(pin_dir, dests)?;
    }
    Ok((generation, load_ms))
}

/// `measure` with the generation's hooks attached to `cgroup` as the daemon attaches them,
/// detached again afterwards.
fn with_hooks<T>(
    generation: &mut OutboundGeneration,
    cgroup: &Cgroup,
    pin_dir: &Path,
    measure: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    // Dropping the links detaches the hooks again.
    let links: Vec<_> = Hook::ALL
        .iter()
        .map(|h| generation.attach(*h, cgroup))
        .collect::<anyhow::Result<_>>()?;
    // The socket hooks the daemon always attaches too: post_bind (the listener table) and
    // sock_release, which also forgets each closed socket's recorded owner.
    let sock_links = kernel::attach_listener_hooks(cgroup, pin_dir)?;
    let out = measure();
    drop(links);
    for link in sock_links {
        drop(link.unpin().context("unpinning a socket hook")?);
    }
    out
}

fn main() -> anyhow::Result<()> {
    const USAGE: &str = "usage: connect_bench [--calls N] [--runs N] | connect_bench names \
                         [--calls N] [--runs N] [--names 10,1000000]";
    let mut calls = 200_000u32;
    let mut runs = 9usize;
    let mut name_counts = vec![10u32, 1_000_000];
    let mut args = std::env::args().skip(1).peekable();
    let names_mode = args.next_if(|a| a == "names").is_some();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--calls" => calls = args.next().context("--calls N")?.parse()?,
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "--names" if names_mode => {
                let list = args
                    .next()
                    .context("--names needs a list such as 10,1000000")?;
                name_counts = list
                    .split(',')
                    .map(|s| s.trim().replace('_', "").parse::<u32>())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--names {list}"))?;
            }
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    if calls == 0 || runs == 0 {
        bail!("--calls and --runs must be at least 1");
    }
    // A network namespace of our own: gone with the process.
    unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET) (needs root)")?;
    ip(&["link", "set", "lo", "up"])?;
    // A veth pair inside the namespace (dummy is not built on every kernel).
    ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])?;
    ip(&["link", "set", "d1", "up"])?;
    ip(&["addr", "add", "10.77.0.1/24", "dev", "d0"])?;
    ip(&["-6", "addr", "add", "fd77::1/64", "dev", "d0", "nodad"])?;
    ip(&["link", "set", "d0", "up"])?;
    let bpffs = BpfFs::new();
    // A cgroup below this process's own, with this process in it (moved back out on drop).
    // Named like a systemd scope, so the rules can name it as a unit.
    let unit = format!("fw-connect-bench-{}.scope", std::process::id());
    let cg = ScratchCgroup::create(&unit)?;
    cg.add(std::process::id())
        .context("moving the benchmark into its cgroup")?;
    let cgroup = Cgroup::open(cg.path())?;
    let to4: SocketAddr = "10.77.0.2:9000".parse()?;
    let to6: SocketAddr = "[fd77::2]:9000".parse()?;
    // The four cells, each the median and range of `runs` runs.
    let measure = |runs: usize| -> anyhow::Result<Cells> {
        Ok([
            time_connects(to4, calls, runs)?,
            time_connects(to6, calls, runs)?,
            time_new_sockets(to4, calls, runs)?,
            time_new_sockets(to6, calls, runs)?,
        ])
    };

    if names_mode {
        println!(
            "connect() of a UDP socket, ns per call: median of {runs} runs of {calls} calls \
             (min-max), the cases' runs interleaved; \"new socket\": socket() + connect() + \
             close() per call; \"names' cost\": the median against the 10 address rules'"
        );
        println!(
            "| outbound rules | IPv4 | IPv6 | IPv4, new socket | IPv6, new socket | IPv4: names' \
             cost | IPv6: names' cost |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        let mut cases = vec![("10 rules naming addresses".to_string(), rules(10))];
        for &n in &name_counts {
            cases.push((
                format!("a destination with a name; the rules name {n} names"),
                name_rules(n),
            ));
        }
        // All loaded first; then run by run, each case's hooks attached in turn (in a rotating
        // order), so that a slow phase of a shared machine does not fall on one case alone.
        let mut loaded = Vec::new();
        for (i, (label, text)) in cases.into_iter().enumerate() {
            let pin_dir = bpffs.pin_dir(&format!("names{i}"));
            let (generation, load_ms) = load_case(&text, cg.path(), &pin_dir, &[to4, to6])?;
            loaded.push((label, generation, pin_dir, load_ms));
        }
        let k = loaded.len();
        let mut samples = vec![[const { Vec::new() }; 4]; k];
        for run in 0..runs {
            for j in 0..k {
                let c = (j + run) % k;
                let (_, generation, pin_dir, _) = &mut loaded[c];
                let cells = with_hooks(generation, &cgroup, pin_dir, || measure(1))?;
                for (x, (median, _, _)) in cells.iter().enumerate() {
                    samples[c][x].push(*median);
                }
            }
        }
        let cells: Vec<Cells> = samples
            .into_iter()
            .map(|s| {
                s.map(|mut v: Vec<f64>| {
                    v.sort_by(f64::total_cmp);
                    (v[v.len() / 2], v[0], v[v.len() - 1])
                })
            })
            .collect();
        for (c, (label, _, _, load_ms)) in loaded.iter().enumerate() {
            let mut row = format!(
                "| {label} (load {load_ms:.0} ms) | {} |",
                cells[c].iter().map(cell).collect::<Vec<_>>().join(" | ")
            );
            // The one-socket cells, IPv4 and IPv6.
            for (&(m, _, _), &(base, _, _)) in cells[c].iter().zip(&cells[0]).take(2) {
                row.push_str(&if c == 0 {
                    " baseline |".to_string()
                } else {
                    format!(" {:+.0} ({:.2}×) |", m - base, m / base)
                });
            }
            println!("{row}");
        }
    } else {
        println!(
            "connect() of a UDP socket, ns per call: median of {runs} runs of {calls} calls \
             (min-max); \"new socket\": socket() + connect() + close() per call"
        );
        println!("| outbound hooks | IPv4 | IPv6 | IPv4, new socket | IPv6, new socket |");
        println!("|---|---:|---:|---:|---:|");
        let print = |label: &str, cells: Cells| {
            let cells: Vec<String> = cells.iter().map(cell).collect();
            println!("| {label} | {} |", cells.join(" | "));
        };
        print("none attached", measure(runs)?);
        let programs = tempfile::tempdir()?;
        let mut cases: Vec<(String, String)> = [0u32, 10, 1_000, 10_000]
            .into_iter()
            .map(|n| {
                let label = match n {
                    0 => "attached, no rule (default allow)".to_string(),
                    n => format!("attached, {n} rules"),
                };
                (label, rules(n))
            })
            .collect();
        cases.insert(
            1,
            (
                "attached, no rule, `record_owner = false`".into(),
                "[defaults]\noutbound = \"allow\"\n[conntrack]\nrecord_owner = false\n".into(),
            ),
        );
        for n in [10u32, 1_000] {
            cases.push((
                format!("attached, {n} program rules"),
                program_rules(n, programs.path())?,
            ));
        }
        cases.push((
            "attached, rules of all 7 selector shapes".into(),
            all_shapes_rules(&unit)?,
        ));
        for (i, (label, text)) in cases.into_iter().enumerate() {
            let pin_dir = bpffs.pin_dir(&format!("gen{i}"));
            let (mut generation, load_ms) = load_case(&text, cg.path(), &pin_dir, &[to4, to6])?;
            let cells = with_hooks(&mut generation, &cgroup, &pin_dir, || measure(runs))?;
            print(&format!("{label} (load {load_ms:.0} ms)"), cells);
        }
    }
    drop(cg);
    drop(bpffs);
    Ok(())
}
