//! Differential fuzzing of the inbound datapath: random and mutated frames through the real XDP
//! program (BPF_PROG_TEST_RUN), packets the host sends through the real TC egress program, and
//! the same frames through the reference datapath (`tests/support/frame.rs`, with the stateful
//! model `tracker` and the oracle `policy`). Every frame must get the same XDP action; the
//! counters (every verdict and drop reason) and rule hits must move alike; at the end of each
//! episode the connection tables must hold the same flows in the same states.
//!
//! Frames are built from flows shared by both directions (so the tables see handshakes,
//! replies, resets and ICMP errors about them) with random layouts (VLAN tags, IPv4 options
//! and fragment fields, IPv6 extension-header chains with authentication headers, TCP
//! options, payload, Ethernet padding, IPv4-mapped and special addresses), then mutated
//! (bytes, bits, header fields, truncation, extension); some are plain random bytes, and one
//! in [`SWEEP_ONE_IN`] is also run truncated at every length. One inbound frame in ten goes,
//! without its Ethernet header, through the program of devices without a link-layer header
//! (`firewall_xdp_l3`; same tables, so flows mix both). Each episode draws which
//! addresses are the host's (the maps the reject path reads, and the reference's
//! `HostView`), and some frames go to another host's MAC, so replies and rejects of frames
//! not for this host both occur. Rule sets are random
//! (`support::rules`, as in `verdicts.rs`) and change every [`FRAMES_PER_RULE_SET`] frames.
//!
//! Environment:
//! - `FW_FUZZ_FRAMES`: frames to run (default [`DEFAULT_FRAMES`], [`EMULATED_FRAMES`] under
//!   emulation);
//! - `FW_FUZZ_SEED`: the seed (default: from the clock); the run prints it, and the same seed
//!   and frame count replay the same run;
//! - `FW_FUZZ_RULE_SET_FRAMES`: frames per rule set (default [`FRAMES_PER_RULE_SET`],
//!   [`EMULATED_FRAMES_PER_RULE_SET`] under emulation); part of what a replay must repeat;
//! - `FW_FUZZ_CHECK_EVERY`: frames between two comparisons of the counters (default 256, and
//!   at the end of each rule set); a counter mismatch names the frames since the last
//!   comparison, 1 pins it to one frame.
//!
//! Needs root (it loads programs into a private bpffs).

mod support;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use aya::maps::{Array, Map, MapData};
use firewall_common::{Counter, RateBucket, ct, maps};
use firewall_daemon::{conntrack::Tables, host::interfaces::LinkLayer, kernel::Generation};
use proptest::{
    strategy::{Strategy, ValueTree},
    test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner},
};
use rand::{RngExt, SeedableRng, rngs::Xoshiro256PlusPlus};
use rules::{
    model::{Action, PacketProto, Ruleset},
    tracker::{Segment, Tracker},
};
use support::{
    bpffs::BpfFs,
    frame::{self, HostView, XDP_DROP, XDP_PASS, XDP_TX},
    frames::{self, Ext, LOCAL_MAC, REMOTE_MAC},
    host::Host,
    lab::Loaded,
    rules::{gen_rule, render},
};

/// Frames of a run without `FW_FUZZ_FRAMES`: about 40 s on this 2-core machine (loading the
/// rule sets, about 5 s each, takes most of it), depending on what else runs.
const DEFAULT_FRAMES: u64 = 300_000;
/// Under emulation (the kernel matrix), a fifteenth of it: two rule sets.
const EMULATED_FRAMES: u64 = 20_000;
/// Frames judged under one rule set before the next is loaded (without
/// `FW_FUZZ_RULE_SET_FRAMES`). The verifier takes seconds over the XDP program, far more than
/// the frames of a rule set take.
const FRAMES_PER_RULE_SET: u64 = 50_000;
/// Under emulation: two rule sets in [`EMULATED_FRAMES`].
const EMULATED_FRAMES_PER_RULE_SET: u64 = 10_000;
/// Frames between two progress lines of a long run.
const PROGRESS_EVERY: u64 = 1_000_000;
/// Packets (both directions) between two clearings of the tables: the model has no capacity
/// limits and no clock, so episodes stay far below the tables' sizes and the shortest timeout.
const EPISODE: usize = 48;
/// One generated frame in this many is also run cut at every length.
const SWEEP_ONE_IN: u32 = 200;
/// BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
const MIN_FRAME: usize = 14;

type Rng = Xoshiro256PlusPlus;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

// ---------------------------------------------------------------------------------------------
// Rule sets

fn parse_rules(text: &str) -> Ruleset {
    support::rules::parse(text, "fuzz-datapath.toml")
}

/// Rule set `n`: random rules from the strategies `verdicts.rs` uses, drawn with a proptest
/// runner seeded from `rng`. `[defaults] inbound`, `fragments` and `[conntrack] invalid` go
/// through their values in turn, and rule set 0 has no rules (`inbound = "reject"` decides),
/// so that the first two rule sets reach every outcome.
fn random_rules(rng: &mut Rng, n: u64) -> String {
    let seed: [u8; 32] = rng.random();
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    );
    let wide = rng.random_bool(0.125);
    let mut rules = proptest::collection::vec(gen_rule(wide), 1..=24)
        .new_tree(&mut runner)
        .unwrap_or_else(|e| panic!("drawing a rule set: {e}"))
        .current();
    // A rule matching every inbound packet would leave the default, and every rule after it,
    // unreached.
    rules.retain(|r| r.outbound || r.proto != "any" || !r.ports.is_empty() || !r.remote.is_empty());
    if n == 0 {
        // The default alone: every kind of reply is reached.
        rules.clear();
    }
    let default = [Action::Reject, Action::Allow, Action::Stealth][(n % 3) as usize];
    let fragments = if n.is_multiple_of(2) {
        "allow"
    } else {
        "stealth"
    };
    let invalid = ["stealth", "reject", "reject", "stealth"][(n % 4) as usize];
    let mut text = render(&rules, default);
    if n % 3 == 2 {
        // The host-wide reply budget at its smallest (one reply a second, one of burst): the
        // run sets the bucket before each episode (`Lab::draw_host`).
        text = text.replacen(
            "global_rate_per_sec = 1000000\n",
            "global_rate_per_sec = 1\n",
            1,
        );
    }
    let text = text.replacen(
        "[defaults]\n",
        &format!("[defaults]\nfragments = \"{fragments}\"\n"),
        1,
    );
    // The smallest tables: an episode tracks a few flows, and reading the tables back walks
    // every bucket.
    format!(
        "{text}\n[conntrack]\ninvalid = \"{invalid}\"\ntable_size = 1024\nunconfirmed_size = 1024\n"
    )
}

/// One loaded rule set: the kernel side and what the oracle needs.
struct Lab {
    ruleset: &'static Ruleset,
    text: String,
    generation: Generation,
    tables: Tables,
    /// Counters and rule hits as last compared.
    counters: BTreeMap<&'static str, u64>,
    hits: Vec<u64>,
    /// The reject path's view of this host, in the maps and for the reference.
    host: Host,
    view: HostView,
    /// The host-wide reply budget's bucket, when the rule set limits it.
    global_budget: Option<Array<MapData, RateBucket>>,
    pin: PathBuf,
}

/// A long run loads hundreds of rule sets: their pinned maps (the reply budget's LRU alone is
/// megabytes) must go with them.
impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin);
    }
}

impl Lab {
    fn load(fs: &BpfFs, n: u64, text: String) -> Self {
        let ruleset: &'static Ruleset = Box::leak(Box::new(parse_rules(&text)));
        let pin = fs.pin_dir(&format!("fuzz{n}"));
        let Loaded {
            generation, tables, ..
        } = Loaded::new(ruleset, &pin, &text);
        let counters = generation.counters().expect("reading counters");
        let hits = generation.rule_hits().expect("reading rule hits");
        let host = Host::open(&pin);
        let view = HostView {
            mac: Some(LOCAL_MAC),
            addrs: Default::default(),
            replies_left: None,
        };
        let global_budget = ruleset.reject.global_rate_per_sec.eq(&1).then(|| {
            let data = MapData::from_pin(pin.join(maps::REJECT_GLOBAL)).expect("REJECT_GLOBAL");
            Array::try_from(Map::from_map_data(data).expect("REJECT_GLOBAL"))
                .expect("REJECT_GLOBAL's layout")
        });
        Self {
            ruleset,
            text,
            generation,
            tables,
            counters,
            hits,
            host,
            view,
            global_budget,
            pin,
        }
    }

    /// Draws which addresses are the host's for an episode (the local side of most frames
    /// usually is, so that replies are built, and sometimes is not, so that rejects of frames
    /// for another host are reached), and rarely forgets the interface's MAC (as before the
    /// daemon's first sync). Frames to other MACs are drawn by [`segment_frame`].
    fn draw_host(&mut self, rng: &mut Rng) {
        let mut addrs = std::collections::BTreeSet::new();
        for (ip, p) in [
            (IpAddr::from([10, 200, 0, 1]), 0.8),
            (IpAddr::from([0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1]), 0.8),
            (IpAddr::from([127, 0, 0, 1]), 0.5),
            ("::1".parse().expect("address"), 0.5),
            ("fe80::1".parse().expect("address"), 0.5),
            (IpAddr::from([255, 255, 255, 255]), 0.1),
            ("ff02::1".parse().expect("address"), 0.1),
        ] {
            if rng.random_bool(p) {
                addrs.insert(ip);
            }
        }
        if addrs != self.view.addrs {
            self.host.set_addrs(addrs.iter().copied());
            self.view.addrs = addrs;
        }
        if let Some(bucket) = &mut self.global_budget {
            // No token or one, as of now: at one token a second the bucket gains a thousandth
            // of a token per millisecond, so it stays as set for the episode (unless it takes
            // a second).
            let left = rng.random_range(0..=1u64);
            let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                .expect("CLOCK_MONOTONIC");
            let now = now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64;
            let b = RateBucket {
                millitokens: left * 1000,
                last_ns: now,
            };
            bucket.set(0, &b, 0).expect("writing REJECT_GLOBAL");
            self.view.replies_left = Some(left);
        }
        let mac = (!rng.random_bool(0.03)).then_some(LOCAL_MAC);
        if mac != self.view.mac {
            match mac {
                Some(m) => self.host.set_mac(m),
                None => self.host.forget_macs(),
            }
            self.view.mac = mac;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Frames

/// Addresses on the host's side of a frame.
fn local_addr(rng: &mut Rng, v6: bool) -> IpAddr {
    let special = rng.random_bool(0.05);
    match (v6, special) {
        (false, false) => IpAddr::from([10, 200, 0, 1]),
        (true, false) => IpAddr::from([0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1]),
        (false, true) => pick(
            rng,
            &[
                IpAddr::from([255, 255, 255, 255]),
                IpAddr::from([224, 0, 0, 1]),
                IpAddr::from([0, 0, 0, 0]),
                IpAddr::from([127, 0, 0, 1]),
            ],
        ),
        (true, true) => pick(
            rng,
            &[
                "ff02::1".parse().expect("address"),
                "::ffff:10.200.0.1".parse().expect("address"),
                "::1".parse().expect("address"),
                "fe80::1".parse().expect("address"),
            ],
        ),
    }
}

/// Remote addresses: the rules' small address space, addresses outside it, and ones a
/// firewall must not be fooled by (IPv4-mapped and -compatible IPv6, loopback, multicast,
/// unspecified).
fn remote_addr(rng: &mut Rng, v6: bool) -> IpAddr {
    let (a, b, c) = (
        rng.random_range(0..4u8),
        rng.random_range(0..4u8),
        rng.random_range(0..4u8),
    );
    let v4 = Ipv4Addr::new(10, a, b, c);
    match (v6, rng.random_range(0..16)) {
        (false, 0) => pick(
            rng,
            &[
                IpAddr::from([192, 0, 2, 1]),
                IpAddr::from([0, 0, 0, 0]),
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([224, 0, 0, 5]),
                IpAddr::from([255, 255, 255, 255]),
            ],
        ),
        (false, _) => IpAddr::V4(v4),
        (true, 0) => IpAddr::V6(v4.to_ipv6_mapped()),
        (true, 1) => IpAddr::V6(v4.to_ipv6_compatible()),
        (true, 2) => pick(
            rng,
            &[
                "2001:db9::1".parse().expect("address"),
                "::".parse().expect("address"),
                "::1".parse().expect("address"),
                "ff02::1".parse().expect("address"),
                "fe80::3".parse().expect("address"),
            ],
        ),
        (true, _) => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            a.into(),
            b.into(),
            0,
            0,
            0,
            c.into(),
        )),
    }
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// A flow both directions of an episode use.
#[derive(Clone, Copy, Debug)]
struct Flow {
    local: IpAddr,
    remote: IpAddr,
    proto: PacketProto,
    local_port: u16,
    remote_port: u16,
}

fn random_flow(rng: &mut Rng) -> Flow {
    let v6 = rng.random_bool(0.5);
    let port = |rng: &mut Rng| {
        if rng.random_bool(0.7) {
            let p = pick(rng, &support::rules::all_port_points());
            p.saturating_add(pick(rng, &[0, 0, 1]))
                .saturating_sub(pick(rng, &[0, 0, 1]))
        } else {
            rng.random()
        }
    };
    Flow {
        local: local_addr(rng, v6),
        remote: remote_addr(rng, v6),
        proto: pick(
            rng,
            &[
                PacketProto::Tcp,
                PacketProto::Tcp,
                PacketProto::Tcp,
                PacketProto::Udp,
                PacketProto::Udp,
                PacketProto::Icmp,
                PacketProto::Other,
            ],
        ),
        local_port: port(rng),
        remote_port: port(rng),
    }
}

const SYN: u8 = ct::TCP_SYN;
const ACK: u8 = ct::TCP_ACK;
const FIN: u8 = ct::TCP_FIN;
const RST: u8 = ct::TCP_RST;

/// A packet of `flow` in one direction, with sequence numbers near the ones the flow uses.
fn random_segment(rng: &mut Rng, flow: &Flow, inbound: bool) -> Segment {
    let v6 = flow.remote.is_ipv6();
    let flags = if rng.random_bool(0.1) {
        rng.random()
    } else {
        pick(
            rng,
            &[
                SYN,
                SYN,
                SYN | ACK,
                ACK,
                ACK,
                FIN | ACK,
                RST,
                RST | ACK,
                0,
                SYN | FIN,
            ],
        )
    };
    let near = |rng: &mut Rng| {
        if rng.random_bool(0.2) {
            rng.random()
        } else {
            pick(rng, &[0u32, 1, 2, 1000, 1001, 1011, 7001, 7002, 1 << 31])
        }
    };
    let icmp_type = match (v6, inbound, rng.random_range(0..4)) {
        (false, true, 0) => 0,
        (true, true, 0) => 129,
        (false, false, _) => 8,
        (true, false, _) => 128,
        (_, _, 1) => rng.random(),
        (false, _, _) => pick(rng, &[3, 11, 12, 8, 5, 13]),
        (true, _, _) => pick(rng, &[1, 3, 4, 128, 138, 139]),
    };
    Segment {
        local: flow.local,
        remote: flow.remote,
        proto: flow.proto,
        local_port: flow.local_port,
        remote_port: flow.remote_port,
        tcp_flags: flags,
        seq: near(rng),
        ack: near(rng),
        payload: pick(rng, &[0, 0, 0, 1, 10]),
        icmp_type,
        icmp_id: flow.local_port,
        quoted: None,
        window: pick(rng, &[0, 1, 512, 29200, 64240, 65535]),
        // The options below carry the scale, or junk: the reference reads it from the frame.
        wscale: None,
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The L4 bytes and IP protocol number of a packet from `src` to `dst`.
fn l4_bytes(
    rng: &mut Rng,
    seg: &Segment,
    ports: (u16, u16),
    addrs: (IpAddr, IpAddr),
    quote_of: Option<&Flow>,
) -> (u8, Vec<u8>) {
    let v6 = addrs.0.is_ipv6();
    let payload: Vec<u8> = (0..seg.payload).map(|_| rng.random()).collect();
    match seg.proto {
        PacketProto::Tcp => {
            let mut t = frames::tcp_header(ports.0, ports.1, seg.tcp_flags);
            t[4..8].copy_from_slice(&seg.seq.to_be_bytes());
            t[8..12].copy_from_slice(&seg.ack.to_be_bytes());
            t[14..16].copy_from_slice(&seg.window.to_be_bytes());
            if rng.random_bool(0.2) {
                // Options: MSS, SACK permitted, window scale, timestamps, NOPs, or junk.
                let words = rng.random_range(1..=10usize);
                let opts: Vec<u8> = if rng.random_bool(0.5) {
                    let mut o = vec![2, 4, 5, 0xb4, 4, 2, 3, 3, 7, 1, 8, 10];
                    o.extend_from_slice(&[0; 10]);
                    o.resize(words * 4, 1);
                    o
                } else {
                    (0..words * 4).map(|_| rng.random()).collect()
                };
                t[12] = ((5 + words) as u8) << 4;
                t.extend(opts);
            }
            t.extend(payload);
            (6, t)
        }
        PacketProto::Udp => {
            let mut u = frames::udp_header(ports.0, ports.1, payload.len());
            u.extend(payload);
            (17, u)
        }
        PacketProto::Icmp => {
            let mut body = Vec::new();
            match quote_of {
                Some(flow) => {
                    body.extend_from_slice(&[0; 4]);
                    body.extend(quoted_packet(rng, flow));
                }
                None => {
                    body.extend_from_slice(&seg.icmp_id.to_be_bytes());
                    body.extend_from_slice(&[0, 1]);
                    body.extend(payload);
                }
            }
            let code = if rng.random_bool(0.8) {
                pick(rng, &[0, 3, 4])
            } else {
                rng.random()
            };
            let mut m = vec![seg.icmp_type, code, 0, 0];
            m.extend(body);
            let c = if v6 {
                let len = (m.len() as u32).to_be_bytes();
                frames::inet_checksum(&[
                    &octets(addrs.0),
                    &octets(addrs.1),
                    &len,
                    &[0, 0, 0, 58],
                    &m,
                ])
            } else {
                frames::inet_checksum(&[&m])
            };
            m[2..4].copy_from_slice(&c.to_be_bytes());
            (if v6 { 58 } else { 1 }, m)
        }
        PacketProto::Other => (
            pick(rng, &[47, 50, 132, 1, 58, 41]),
            (0..8 + seg.payload).map(|_| rng.random()).collect(),
        ),
    }
}

/// The IP header and first 8 bytes of a packet the host sent on `flow`, as an ICMP error
/// quotes it.
fn quoted_packet(rng: &mut Rng, flow: &Flow) -> Vec<u8> {
    let seg = Segment {
        tcp_flags: SYN,
        icmp_type: if flow.remote.is_ipv6() { 128 } else { 8 },
        ..random_segment(rng, flow, false)
    };
    let (proto, mut l4) = l4_bytes(
        rng,
        &Segment { payload: 0, ..seg },
        (flow.local_port, flow.remote_port),
        (flow.local, flow.remote),
        None,
    );
    l4.truncate(8);
    let mut out = ip_header(rng, flow.local, flow.remote, proto, 64, false);
    out.extend(l4);
    out
}

/// An IPv4 header (with random options when `options`) or an IPv6 header, for `len` bytes
/// of payload.
fn ip_header(
    rng: &mut Rng,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    len: usize,
    options: bool,
) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let opts: Vec<u8> = if options && rng.random_bool(0.15) {
                let words = rng.random_range(1..=10usize);
                if rng.random_bool(0.5) {
                    vec![1; words * 4]
                } else {
                    (0..words * 4).map(|_| rng.random()).collect()
                }
            } else {
                Vec::new()
            };
            let hdr_len = 20 + opts.len();
            let total = (hdr_len + len) as u16;
            let mut h = vec![0x40 | (hdr_len / 4) as u8, 0];
            h.extend_from_slice(&total.to_be_bytes());
            let frag: u16 = if options && rng.random_bool(0.1) {
                // DF, MF, a non-zero offset, or all at once.
                pick(rng, &[0x4000, 0x2000, 0x0001, 0x00b9, 0x3fff, 0x1fff])
            } else {
                0
            };
            h.extend_from_slice(&[0x12, 0x34]);
            h.extend_from_slice(&frag.to_be_bytes());
            h.extend_from_slice(&[64, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h.extend(opts);
            let c = frames::inet_checksum(&[&h]);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        }
        _ => {
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(len as u16).to_be_bytes());
            h.push(proto);
            h.push(64);
            h.extend(octets(src));
            h.extend(octets(dst));
            h
        }
    }
}

/// A random IPv6 extension-header chain: usually none, sometimes a few, rarely more than
/// the parser follows.
fn ext_chain(rng: &mut Rng) -> Vec<Ext> {
    let n = match rng.random_range(0..20) {
        0..=13 => 0,
        14..=17 => rng.random_range(1..=3),
        _ => rng.random_range(4..=10),
    };
    (0..n)
        .map(|_| match rng.random_range(0..6) {
            0 => Ext::HopByHop {
                units: rng.random_range(1..=3),
            },
            1 => Ext::RouterAlert,
            2 => Ext::DstOpts {
                units: rng.random_range(1..=9),
            },
            3 => Ext::Routing,
            _ => Ext::Fragment {
                offset: if rng.random_bool(0.8) {
                    0
                } else {
                    rng.random_range(1..0x1fff)
                },
                more: rng.random(),
            },
        })
        .collect()
}

/// The frame of `seg`: sent by the remote host (`inbound`) or by the host.
fn segment_frame(rng: &mut Rng, seg: &Segment, inbound: bool, quote_of: Option<&Flow>) -> Vec<u8> {
    let (src, dst, ports) = if inbound {
        (seg.remote, seg.local, (seg.remote_port, seg.local_port))
    } else {
        (seg.local, seg.remote, (seg.local_port, seg.remote_port))
    };
    let (proto, l4) = l4_bytes(rng, seg, ports, (src, dst), quote_of);
    // Packets the host sends are plain; what arrives may have any layout.
    let fancy = inbound;
    let tags: Vec<u16> = if fancy && rng.random_bool(0.15) {
        (0..pick(rng, &[1, 1, 2, 2, 3]))
            .map(|_| pick(rng, &[frames::ETH_P_8021Q, frames::ETH_P_8021AD]))
            .collect()
    } else {
        Vec::new()
    };
    let v6 = src.is_ipv6();
    let mut f = frames::ethernet(
        &tags,
        if v6 {
            frames::ETH_P_IPV6
        } else {
            frames::ETH_P_IP
        },
    );
    if !inbound {
        f[..6].copy_from_slice(&REMOTE_MAC);
        f[6..12].copy_from_slice(&LOCAL_MAC);
    } else if rng.random_bool(0.08) {
        // Group addresses, and another host's MAC (not for us).
        f[..6].copy_from_slice(&pick(
            rng,
            &[
                [0xff; 6],
                [0x33, 0x33, 0, 0, 0, 1],
                [0x01, 0, 0x5e, 0, 0, 1],
                [0x02, 0, 0, 0, 0, 0x99],
                [0x02, 0, 0, 0, 0, 0x99],
            ],
        ));
    }
    if v6 {
        let exts = if fancy { ext_chain(rng) } else { Vec::new() };
        let mut chain = frames::ipv6_ext_chain(&exts, proto);
        let mut first = exts.first().map(Ext::kind).unwrap_or(proto);
        if fancy && rng.random_bool(0.05) {
            // An authentication header in front: its length counts 4-byte words, minus 2.
            let words = rng.random_range(3..=8usize);
            let mut ah = vec![first, (words - 2) as u8];
            ah.extend((2..words * 4).map(|_| rng.random::<u8>()));
            ah.extend(chain);
            chain = ah;
            first = IPPROTO_AH;
        }
        f.extend(ip_header(
            rng,
            src,
            dst,
            first,
            chain.len() + l4.len(),
            false,
        ));
        f.extend(chain);
    } else {
        f.extend(ip_header(rng, src, dst, proto, l4.len(), fancy));
    }
    f.extend(l4);
    if fancy && rng.random_bool(0.1) {
        // Ethernet padding (up to the 60-byte minimum, or junk after the IP packet).
        let pad = rng.random_range(1..=24);
        f.extend((0..pad).map(|_| rng.random::<u8>()));
    }
    f
}

const IPPROTO_AH: u8 = 51;

/// Interesting values for a mutated header byte.
const BYTES: [u8; 10] = [0, 1, 0x40, 0x45, 0x4f, 0x60, 0x7f, 0x80, 0xfe, 0xff];

/// Mutates a frame: 1-4 of byte, bit, field, truncation and extension changes, mostly in the
/// headers.
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        if f.is_empty() {
            return;
        }
        // Headers are in the first ~100 bytes; most changes land there.
        let hot = f.len().min(100);
        let at = if rng.random_bool(0.8) {
            rng.random_range(0..hot)
        } else {
            rng.random_range(0..f.len())
        };
        match rng.random_range(0..7) {
            0 => f[at] = rng.random(),
            1 => f[at] ^= 1 << rng.random_range(0..8),
            2 => f[at] = pick(rng, &BYTES),
            3 => {
                let v: u16 = pick(
                    rng,
                    &[0, 1, 19, 20, 40, 0x8100, 0x88a8, 0x0800, 0x86dd, 0xffff],
                );
                if at + 2 <= f.len() {
                    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
            4 => f.truncate(rng.random_range(0..f.len())),
            5 => f.extend((0..rng.random_range(1..16)).map(|_| rng.random::<u8>())),
            _ => {
                // An IPv6 next-header or IPv4 protocol byte: an extension header or transport.
                f[at] = pick(rng, &[0, 6, 17, 1, 58, 43, 44, IPPROTO_AH, 59, 60]);
            }
        }
    }
}

/// Random bytes, with an IP EtherType most of the time.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let len = rng.random_range(MIN_FRAME..160);
    let mut f: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    if rng.random_bool(0.8) {
        let et = pick(
            rng,
            &[frames::ETH_P_IP, frames::ETH_P_IPV6, frames::ETH_P_8021Q],
        );
        f[12..14].copy_from_slice(&et.to_be_bytes());
        if let Some(b) = f.get_mut(14) {
            *b = pick(rng, &[0x45, 0x46, 0x4f, 0x60, 0x61]);
        }
    }
    f
}

/// Where a frame's IP header would start: after the Ethernet header and its VLAN tags (the
/// frame's length if it ends before).
fn ip_offset(f: &[u8]) -> usize {
    let mut off = 12;
    while let Some(t) = f.get(off..off + 2) {
        let et = u16::from_be_bytes([t[0], t[1]]);
        if et != frames::ETH_P_8021Q && et != frames::ETH_P_8021AD {
            break;
        }
        off += 4;
    }
    (off + 2).min(f.len())
}

// ---------------------------------------------------------------------------------------------
// The run

/// What one packet was, for the report of a disagreement.
#[derive(Clone, Debug)]
struct Step {
    inbound: bool,
    /// Through the program of devices without a link-layer header.
    l3: bool,
    frame: Vec<u8>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn xdp_name(action: u32) -> &'static str {
    match action {
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        _ => "XDP_?",
    }
}

struct Run {
    seed: u64,
    frames: u64,
    rule_set_frames: u64,
    check_every: u64,
    done: u64,
    /// Frames seen per outcome counter, for the coverage report.
    seen: BTreeMap<&'static str, u64>,
    /// Expected counter and rule-hit deltas since the last comparison.
    want_counters: BTreeMap<&'static str, u64>,
    want_hits: BTreeMap<u32, u64>,
    /// Packets of the current episode, and the frames since the last counter comparison.
    episode: Vec<Step>,
    batch: Vec<Step>,
}

impl Run {
    fn replay(&self) -> String {
        format!(
            "replay: FW_FUZZ_SEED={} FW_FUZZ_FRAMES={} FW_FUZZ_RULE_SET_FRAMES={} FW_FUZZ_CHECK_EVERY={} cargo test -p firewall-daemon --test fuzz_datapath",
            self.seed, self.frames, self.rule_set_frames, self.check_every
        )
    }

    fn history(&self, steps: &[Step]) -> String {
        steps
            .iter()
            .map(|s| {
                format!(
                    "  {} {}",
                    match (s.inbound, s.l3) {
                        (true, false) => "in   ",
                        (true, true) => "in l3",
                        _ => "out  ",
                    },
                    hex(&s.frame)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn fail(&self, lab: &Lab, what: String) -> ! {
        panic!(
            "fuzz_datapath: {what}\n--- rules ---\n{}\n--- the host (interface MAC, addresses) ---\n{:?}\n--- this episode's packets so far (oldest first; the tables were empty before) ---\n{}\n{}",
            lab.text,
            lab.view,
            self.history(&self.episode),
            self.replay()
        )
    }

    fn outbound(&mut self, lab: &mut Lab, model: &mut Tracker, frame: Vec<u8>) {
        // BPF_PROG_TEST_RUN refuses some mangled socket buffers before running anything.
        let Ok(rc) = lab.generation.test_run_egress(&frame) else {
            return;
        };
        self.episode.push(Step {
            inbound: false,
            l3: false,
            frame,
        });
        if rc != 0 {
            self.fail(
                lab,
                format!("the egress program returned {rc} (it never drops)"),
            );
        }
        frame::outbound(model, &self.episode.last().expect("just pushed").frame);
    }

    fn inbound(&mut self, lab: &mut Lab, model: &mut Tracker, frame: Vec<u8>, l3: bool) {
        if frame.len() < MIN_FRAME {
            return;
        }
        let (want, (action, out)) = if l3 {
            (
                frame::inbound_l3(model, lab.ruleset, &mut lab.view, &frame),
                lab.generation
                    .test_run_on(LinkLayer::Ip, &frame)
                    .expect("XDP test run (L3)"),
            )
        } else {
            (
                frame::inbound(model, lab.ruleset, &mut lab.view, &frame),
                lab.generation.test_run(&frame).expect("XDP test run"),
            )
        };
        self.done += 1;
        let step = Step {
            inbound: true,
            l3,
            frame,
        };
        self.episode.push(step.clone());
        self.batch.push(step);
        if action != want.xdp {
            let accidental = action == XDP_PASS;
            self.fail(
                lab,
                format!(
                    "{}kernel {} / oracle {} ({:?}) for frame\n  {}",
                    if accidental { "ACCIDENTAL ALLOW: " } else { "" },
                    xdp_name(action),
                    xdp_name(want.xdp),
                    want,
                    hex(&self.episode.last().expect("just pushed").frame)
                ),
            );
        }
        if action == XDP_TX {
            self.check_reply(lab, &out);
        }
        for c in &want.counters {
            *self.want_counters.entry(c.name()).or_default() += 1;
            *self.seen.entry(c.name()).or_default() += 1;
        }
        if let Some(i) = want.rule {
            *self.want_hits.entry(i).or_default() += 1;
        }
        if self.batch.len() as u64 >= self.check_every {
            self.compare_counters(lab);
        }
    }

    /// A reply goes back to where the frame came from: it parses, and it is a RST or a port
    /// unreachable.
    fn check_reply(&self, lab: &Lab, out: &[u8]) {
        let ok = match frame::parse(out) {
            Ok(frame::Parsed::Packet(p)) => match p.segment.proto {
                PacketProto::Tcp => p.segment.tcp_flags & RST != 0,
                PacketProto::Icmp => matches!(
                    (p.segment.remote.is_ipv6(), p.segment.icmp_type),
                    (false, 3) | (true, 1)
                ),
                _ => false,
            },
            _ => false,
        };
        if !ok {
            self.fail(
                lab,
                format!(
                    "XDP_TX with a reply that is no RST or port unreachable:\n  {}",
                    hex(out)
                ),
            );
        }
    }

    fn compare_counters(&mut self, lab: &mut Lab) {
        let counters = lab.generation.counters().expect("reading counters");
        let hits = lab.generation.rule_hits().expect("reading rule hits");
        let moved: BTreeMap<&'static str, u64> = Counter::ALL
            .iter()
            .filter(|c| frame::is_verdict_counter(**c))
            .map(|c| (c.name(), counters[c.name()] - lab.counters[c.name()]))
            .filter(|(_, d)| *d != 0)
            .collect();
        let hit: BTreeMap<u32, u64> = hits
            .iter()
            .zip(&lab.hits)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (i as u32, a - b))
            .collect();
        if moved != self.want_counters || hit != self.want_hits {
            let what = format!(
                "counters or rule hits differ over the last {} frames (FW_FUZZ_CHECK_EVERY=1 pins the frame)\n  kernel counters {moved:?}\n  oracle counters {:?}\n  kernel rule hits {hit:?}\n  oracle rule hits {:?}\n--- those frames ---\n{}",
                self.batch.len(),
                self.want_counters,
                self.want_hits,
                self.history(&self.batch)
            );
            self.fail(lab, what);
        }
        lab.counters = counters;
        lab.hits = hits;
        self.want_counters.clear();
        self.want_hits.clear();
        self.batch.clear();
    }

    /// The tables hold what the model holds: same flows, states, origins, flags and table.
    fn compare_tables(&self, lab: &Lab, model: &Tracker) {
        let kernel: BTreeMap<String, (u8, u8, u8, bool)> = lab
            .tables
            .flows()
            .into_iter()
            .map(|f| {
                (
                    format!("{:?}", f.key),
                    (f.entry.state, f.entry.origin, f.entry.flags, f.confirmed()),
                )
            })
            .collect();
        let modeled: BTreeMap<String, (u8, u8, u8, bool)> = model
            .flows()
            .iter()
            .map(|(k, t)| {
                (
                    format!("{k:?}"),
                    (t.entry.state, t.entry.origin, t.entry.flags, t.confirmed),
                )
            })
            .collect();
        if kernel != modeled {
            self.fail(
                lab,
                format!(
                    "connection tables differ at the end of the episode (state, origin, flags, confirmed)\n  kernel {kernel:#?}\n  model {modeled:#?}"
                ),
            );
        }
    }

    /// One episode: empty tables, a few flows, packets both ways.
    fn episode(&mut self, rng: &mut Rng, lab: &mut Lab) {
        lab.tables.clear();
        lab.draw_host(rng);
        self.episode.clear();
        let mut model = Tracker::new(lab.ruleset);
        let flows: Vec<Flow> = (0..rng.random_range(1..=4))
            .map(|_| random_flow(rng))
            .collect();
        for _ in 0..EPISODE {
            if self.done >= self.frames {
                break;
            }
            let flow = pick(rng, &flows);
            if rng.random_bool(0.25) {
                let seg = random_segment(rng, &flow, false);
                let mut frame = segment_frame(rng, &seg, false, None);
                // Raw sockets can send anything.
                if rng.random_bool(0.05) {
                    mutate(rng, &mut frame);
                }
                if frame.len() >= MIN_FRAME {
                    self.outbound(lab, &mut model, frame);
                }
                continue;
            }
            let mut frame = match rng.random_range(0..20) {
                0 => random_frame(rng),
                1 => {
                    // An ICMP error about one of the flows, from its remote host.
                    let about = pick(rng, &flows);
                    let v6 = about.remote.is_ipv6();
                    let err = Segment {
                        proto: PacketProto::Icmp,
                        icmp_type: if v6 {
                            pick(rng, &[1, 3, 4, 2])
                        } else {
                            pick(rng, &[3, 11, 12])
                        },
                        ..random_segment(rng, &about, true)
                    };
                    segment_frame(rng, &err, true, Some(&about))
                }
                _ => {
                    let seg = random_segment(rng, &flow, true);
                    segment_frame(rng, &seg, true, None)
                }
            };
            if rng.random_range(0..SWEEP_ONE_IN) == 0 {
                // Every truncation of this frame, judged on the tables as they are.
                for len in MIN_FRAME..frame.len() {
                    self.inbound(lab, &mut model, frame[..len].to_vec(), false);
                }
            }
            if rng.random_bool(0.5) {
                mutate(rng, &mut frame);
            }
            if rng.random_bool(0.1) {
                // As a device without a link-layer header would receive it.
                let l3 = frame.split_off(ip_offset(&frame));
                self.inbound(lab, &mut model, l3, true);
            } else {
                self.inbound(lab, &mut model, frame, false);
            }
        }
        self.compare_tables(lab, &model);
    }
}

#[test]
fn kernel_agrees_with_the_reference_datapath_on_random_and_mutated_frames() {
    let emulated = support::slowdown() > 1;
    let frames = env_u64("FW_FUZZ_FRAMES").unwrap_or(if emulated {
        EMULATED_FRAMES
    } else {
        DEFAULT_FRAMES
    });
    let rule_set_frames = env_u64("FW_FUZZ_RULE_SET_FRAMES")
        .unwrap_or(if emulated {
            EMULATED_FRAMES_PER_RULE_SET
        } else {
            FRAMES_PER_RULE_SET
        })
        .max(1);
    let seed = env_u64("FW_FUZZ_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
    });
    let check_every = env_u64("FW_FUZZ_CHECK_EVERY").unwrap_or(256).max(1);
    eprintln!(
        "fuzz_datapath: seed {seed}, {frames} frames, {rule_set_frames} per rule set (FW_FUZZ_SEED={seed} FW_FUZZ_FRAMES={frames} FW_FUZZ_RULE_SET_FRAMES={rule_set_frames} replays this run)"
    );
    let mut rng = Rng::seed_from_u64(seed);
    let fs = BpfFs::new();
    let mut run = Run {
        seed,
        frames,
        rule_set_frames,
        check_every,
        done: 0,
        seen: BTreeMap::new(),
        want_counters: BTreeMap::new(),
        want_hits: BTreeMap::new(),
        episode: Vec::new(),
        batch: Vec::new(),
    };
    let start = Instant::now();
    let mut rule_sets = 0;
    let mut next_progress = PROGRESS_EVERY;
    let mut loading = 0.0;
    while run.done < frames {
        let load_start = Instant::now();
        let mut lab = Lab::load(&fs, rule_sets, random_rules(&mut rng, rule_sets));
        loading += load_start.elapsed().as_secs_f64();
        rule_sets += 1;
        let until = (run.done + rule_set_frames).min(frames);
        while run.done < until {
            run.episode(&mut rng, &mut lab);
        }
        run.compare_counters(&mut lab);
        if run.done >= next_progress {
            next_progress += PROGRESS_EVERY;
            eprintln!(
                "fuzz_datapath: {} frames, {:.0} frames/s",
                run.done,
                run.done as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "fuzz_datapath: {} frames, {rule_sets} rule sets, {secs:.1} s ({loading:.1} s loading rule sets; {:.0} frames/s), no disagreement; outcomes: {:?}",
        run.done,
        run.done as f64 / secs,
        run.seen
    );
    // A run over two rule sets or more must have reached every outcome of the datapath, and
    // one over three the host-wide reply budget's.
    if rule_sets >= 2 {
        let missing: Vec<&str> = Counter::ALL
            .iter()
            .filter(|c| {
                (OUTCOMES.contains(c)
                    || (rule_sets >= 3 && **c == Counter::RejectGlobalRateLimited))
                    && !run.seen.contains_key(c.name())
            })
            .map(|c| c.name())
            .collect();
        assert!(
            missing.is_empty(),
            "outcomes never reached in {frames} frames: {missing:?} (the generator lost coverage)"
        );
    }
}

/// Outcomes a run over two rule sets reaches: every verdict and drop reason of the XDP program
/// but the reply budgets' (the per-source one is never used up; rule set 2 limits the
/// host-wide one).
const OUTCOMES: &[Counter] = &[
    Counter::Allowed,
    Counter::Stealthed,
    Counter::Rejected,
    Counter::DefaultVerdict,
    Counter::PassNonIp,
    Counter::PassIcmpEssential,
    Counter::PassFragment,
    Counter::DropFragment,
    Counter::DropMalformedL2,
    Counter::DropTooManyVlans,
    Counter::DropMalformedIpv4,
    Counter::DropMalformedIpv6,
    Counter::DropIpv6ExtHeaders,
    Counter::DropMalformedL4,
    Counter::RejectTcpRst,
    Counter::RejectIcmpUnreachable,
    Counter::RejectNoReply,
    Counter::RejectBuildFailed,
    Counter::RejectNotForUs,
    Counter::RejectNoLinkLayer,
    Counter::DropL3NotIp,
    Counter::PassTracked,
    Counter::PassRelated,
    Counter::DropCtInvalid,
    Counter::CtInvalidNoConn,
];
