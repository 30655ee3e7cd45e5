//! Verdicts of the XDP program, run with BPF_PROG_TEST_RUN (no interface is involved), checked
//! against the oracle (`Policy::decide`) and against the userspace model of the compiled tables
//! (`Compiled::lookup`). Needs root: every test mounts a private bpffs and loads programs.
//!
//! The kernel's decision is read back from the counters: exactly one of `allowed`, `stealthed`,
//! `rejected` moves, and either the deciding rule's `RULE_HITS` slot or `default_verdict`.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use firewall_common::{DEFAULT_RULE, verdict_action, verdict_rule};
use firewall_daemon::{
    compile::{self, Compiled},
    conntrack::Tables,
    kernel::Generation,
};
use proptest::{
    prelude::*,
    sample::select,
    test_runner::{Config as ProptestConfig, TestRunner},
};
use rules::{
    model::{Action, PacketMeta, PacketProto, Ruleset},
    policy::{Decision, Policy},
};
use support::{
    bpffs::BpfFs,
    frames::{self, Ext, L4, LOCAL_MAC, REMOTE_MAC, Spec},
    host::Host,
    lab::Loaded,
    rules::{GenRule, NO_RATE_LIMIT, all_port_points, gen_rule, render},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

// ---------------------------------------------------------------------------------------------
// Harness

fn parse_rules(text: &str) -> Ruleset {
    support::rules::parse(text, "verdicts-test.toml")
}

fn rule(index: u32, action: Action) -> Decision {
    Decision {
        action,
        rule: Some(index),
    }
}

fn default(action: Action) -> Decision {
    Decision { action, rule: None }
}

/// A verdict word of the compiled tables, as a decision.
fn decode(word: u32) -> Decision {
    let action = Action::from_kernel(verdict_action(word))
        .unwrap_or_else(|| panic!("verdict word {word:#x} has no valid action"));
    let index = verdict_rule(word);
    Decision {
        action,
        rule: (index != DEFAULT_RULE).then_some(index),
    }
}

/// What the program must return for a verdict on a well-formed, unicast, non-RST packet with a
/// reply budget left.
fn expected_xdp(action: Action, proto: PacketProto) -> u32 {
    match (action, proto) {
        (Action::Allow, _) => XDP_PASS,
        (Action::Stealth, _) => XDP_DROP,
        (Action::Reject, PacketProto::Tcp | PacketProto::Udp) => XDP_TX,
        // Reject of ICMP and other protocols degrades to a silent drop by design.
        (Action::Reject, _) => XDP_DROP,
    }
}

/// Counters (besides `packets`) that such a packet moves.
fn expected_counters(d: Decision, proto: PacketProto) -> BTreeSet<&'static str> {
    let mut set = BTreeSet::new();
    match d.action {
        Action::Allow => set.insert("allowed"),
        Action::Stealth => set.insert("stealthed"),
        Action::Reject => {
            set.insert("rejected");
            set.insert(match proto {
                PacketProto::Tcp => "reject_tcp_rst",
                PacketProto::Udp => "reject_icmp_unreachable",
                PacketProto::Icmp | PacketProto::Other => "reject_no_reply",
            })
        }
    };
    if d.rule.is_none() {
        set.insert("default_verdict");
    }
    set
}

/// One loaded rule set: the parsed rules (for the oracle), the compiled tables (for
/// `Compiled::lookup`) and the kernel program.
struct Fw {
    ruleset: Ruleset,
    compiled: Compiled,
    generation: Generation,
    tables: Tables,
    /// Every frame run is taken as addressed to this host (see [`Fw::run`]).
    host: Host,
    text: String,
}

/// One BPF_PROG_TEST_RUN: the XDP action, the frame as the program left it, and how much every
/// counter and rule-hit slot moved.
#[derive(Debug)]
struct Run {
    action: u32,
    out: Vec<u8>,
    counters: BTreeMap<&'static str, u64>,
    hits: Vec<u64>,
}

impl Run {
    fn counter(&self, name: &str) -> u64 {
        *self
            .counters
            .get(name)
            .unwrap_or_else(|| panic!("no counter named {name}"))
    }

    /// Counters other than `packets` and the connection table's bookkeeping (`ct_*`) that
    /// moved.
    fn moved(&self) -> BTreeSet<&'static str> {
        self.counters
            .iter()
            .filter(|(name, delta)| **name != "packets" && !name.starts_with("ct_") && **delta != 0)
            .map(|(name, _)| *name)
            .collect()
    }

    /// Asserts the program saw exactly one packet, returned `action` and moved exactly
    /// `counters` (each by one) besides `packets`.
    fn assert_outcome(&self, what: &str, action: u32, counters: &[&str]) {
        let want: BTreeSet<&str> = counters.iter().copied().collect();
        let moved: BTreeSet<&str> = self.moved().into_iter().collect();
        assert_eq!(
            (self.action, &moved),
            (action, &want),
            "{what}: (XDP action, counters moved); all deltas: {:?}",
            self.counters
        );
        assert_eq!(self.counter("packets"), 1, "{what}: packets");
        for c in counters {
            assert_eq!(
                self.counter(c),
                1,
                "{what}: counter {c} moved by more than one"
            );
        }
    }

    /// The decision the kernel made, read back from the counters.
    fn kernel_decision(&self) -> Decision {
        let actions: Vec<Action> = [
            ("allowed", Action::Allow),
            ("stealthed", Action::Stealth),
            ("rejected", Action::Reject),
        ]
        .into_iter()
        .filter(|(name, _)| self.counter(name) != 0)
        .map(|(_, a)| a)
        .collect();
        assert!(
            actions.len() == 1 && self.counters.values().all(|v| *v <= 1),
            "not exactly one verdict counted: {:?}",
            self.counters
        );
        let hit: Vec<u32> = self
            .hits
            .iter()
            .enumerate()
            .filter(|(_, n)| **n != 0)
            .map(|(i, _)| i as u32)
            .collect();
        let rule = match (self.counter("default_verdict"), hit.as_slice()) {
            (1, []) => None,
            (0, [i]) if self.hits[*i as usize] == 1 => Some(*i),
            _ => panic!(
                "not exactly one of default_verdict / one rule hit: default_verdict {}, rule hits {:?}",
                self.counter("default_verdict"),
                self.hits
            ),
        };
        Decision {
            action: actions[0],
            rule,
        }
    }
}

impl Fw {
    fn load(fs: &BpfFs, text: &str) -> Self {
        let ruleset = parse_rules(text);
        let Loaded {
            compiled,
            generation,
            tables,
        } = Loaded::new(&ruleset, &fs.pin_dir("fw"), text);
        let host = Host::open(&fs.pin_dir("fw"));
        Self {
            ruleset,
            compiled,
            generation,
            tables,
            host,
            text: text.to_owned(),
        }
    }

    /// Runs one frame with an empty connection table, so it is judged by the rules alone
    /// (tests/conntrack.rs covers the tracked paths). The frame's destination counts as one
    /// of the host's addresses (tests/reply_forging.rs covers frames for other hosts).
    fn run(&mut self, frame: &[u8]) -> Run {
        self.tables.clear();
        self.host.claim(frame);
        let c0 = self.generation.counters().expect("reading counters");
        let h0 = self.generation.rule_hits().expect("reading rule hits");
        let (action, out) = self.generation.test_run(frame).expect("BPF_PROG_TEST_RUN");
        let c1 = self.generation.counters().expect("reading counters");
        let h1 = self.generation.rule_hits().expect("reading rule hits");
        Run {
            action,
            out,
            counters: c1
                .iter()
                .filter(|(k, _)| !support::is_log_counter(k))
                .map(|(k, v)| (*k, v - c0[k]))
                .collect(),
            hits: h1.iter().zip(&h0).map(|(a, b)| a - b).collect(),
        }
    }

    fn oracle(&self, meta: &PacketMeta) -> Decision {
        Policy::new(&self.ruleset).decide(meta)
    }

    fn lookup(&self, meta: &PacketMeta) -> Decision {
        decode(self.compiled.lookup(meta))
    }

    /// Asserts that the oracle, the compiled tables and the kernel all reach `expected` for a
    /// well-formed unicast packet, that the kernel returns the matching XDP action, and that it
    /// counts exactly the verdict, the deciding rule (or the default) and the reply outcome.
    fn check(&mut self, what: &str, meta: &PacketMeta, frame: &[u8], expected: Decision) -> Run {
        let ctx = format!("{what} ({meta:?})\n--- rules ---\n{}", self.text);
        assert_eq!(self.oracle(meta), expected, "oracle: {ctx}");
        assert_eq!(self.lookup(meta), expected, "Compiled::lookup: {ctx}");
        let run = self.run(frame);
        assert_eq!(run.kernel_decision(), expected, "kernel decision: {ctx}");
        assert_eq!(
            run.action,
            expected_xdp(expected.action, meta.proto),
            "XDP action: {ctx}"
        );
        assert_eq!(
            run.moved(),
            expected_counters(expected, meta.proto),
            "counters: {ctx}"
        );
        if let Some(i) = expected.rule {
            assert_eq!(run.hits[i as usize], 1, "rule hit: {ctx}");
        }
        run
    }

    fn check_spec(&mut self, what: &str, spec: &Spec, expected: Decision) -> Run {
        self.check(what, &spec.meta(), &spec.frame(), expected)
    }
}

fn meta(remote: &str, proto: PacketProto, local_port: u16) -> PacketMeta {
    PacketMeta {
        remote: remote.parse().expect("address"),
        proto,
        local_port,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Every verdict path: family x protocol x action x kind of deciding match.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Family {
    V4,
    V6,
}

/// What decides the packet in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// A rule naming only a service (for ICMP/other, which have no ports: port-only rules
    /// covering wide port ranges must not match, and the default decides).
    PortOnly,
    /// A rule naming only a remote address.
    RemoteOnly,
    /// A rule naming a remote address and a service (ports for TCP/UDP).
    RemotePort,
    /// A rule naming only a protocol.
    ProtoOnly,
    /// No rule matches: `[defaults] inbound`.
    Default,
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];
const PROTOS: [PacketProto; 4] = [
    PacketProto::Tcp,
    PacketProto::Udp,
    PacketProto::Icmp,
    PacketProto::Other,
];
const ACTIONS: [Action; 3] = [Action::Allow, Action::Reject, Action::Stealth];
const KINDS: [Kind; 5] = [
    Kind::PortOnly,
    Kind::RemoteOnly,
    Kind::RemotePort,
    Kind::ProtoOnly,
    Kind::Default,
];

/// Rows of the table, written once per (protocols, kind) and expanded over family and action.
/// Each rule is one line, `key = value` pairs separated by `;`. Placeholders:
/// `{act}` the action under test, `{other}` a different action (used by decoys), `{p}` the
/// packet's protocol (tcp/udp rows), `{q}` the other of tcp/udp, `{here}` a list of prefixes
/// holding the packet's source (one per family, so both families share one rule set),
/// `{elsewhere}` a list of prefixes (both families) that do not, `{allports}` see
/// [`WIDE_PORTS`].
/// The packet goes to local port 22.
struct Template {
    protos: &'static [PacketProto],
    kind: Kind,
    rules: &'static [&'static str],
    /// Index of the deciding rule; `None`: the default (`inbound = "{act}"`) decides.
    decides: Option<u32>,
}

/// Ports for "a port rule that would match any port": the low range holds the packet's port 22
/// and the high one reaches 65535, whose UDP slot borders the ICMP slot in `PORTS`. (Not
/// "1-65535": the loader writes every touched slot with its own syscall, ~1 s per full range.)
const WIDE_PORTS: &str = r#"["1-1024", "65000-65535"]"#;

const TCP_UDP: &[PacketProto] = &[PacketProto::Tcp, PacketProto::Udp];
const ICMP: &[PacketProto] = &[PacketProto::Icmp];
const OTHER: &[PacketProto] = &[PacketProto::Other];

const TABLE: &[Template] = &[
    // --- TCP and UDP
    Template {
        protos: TCP_UDP,
        kind: Kind::PortOnly,
        rules: &[
            r#"proto = "{p}"; port = 23; action = "{other}""#,
            r#"proto = "{q}"; port = 22; action = "{other}""#,
            r#"proto = "{p}"; port = 22; action = "{act}""#,
            r#"remote = {here}; action = "{other}""#,
        ],
        decides: Some(2),
    },
    Template {
        protos: TCP_UDP,
        kind: Kind::RemoteOnly,
        rules: &[
            r#"remote = {elsewhere}; action = "{other}""#,
            r#"remote = {here}; action = "{act}""#,
            r#"proto = "{p}"; port = 22; action = "{other}""#,
        ],
        decides: Some(1),
    },
    Template {
        protos: TCP_UDP,
        kind: Kind::RemotePort,
        rules: &[
            r#"remote = {here}; proto = "{p}"; port = 23; action = "{other}""#,
            r#"remote = {elsewhere}; proto = "{p}"; port = 22; action = "{other}""#,
            r#"remote = {here}; proto = "{q}"; port = 22; action = "{other}""#,
            r#"remote = {here}; proto = "{p}"; port = "20-30"; action = "{act}""#,
            r#"proto = "{p}"; action = "{other}""#,
        ],
        decides: Some(3),
    },
    Template {
        protos: TCP_UDP,
        kind: Kind::ProtoOnly,
        rules: &[
            r#"proto = "{q}"; action = "{other}""#,
            r#"proto = "icmp"; action = "{other}""#,
            r#"remote = {elsewhere}; proto = "{p}"; action = "{other}""#,
            r#"proto = "{p}"; action = "{act}""#,
            r#"proto = "{p}"; port = 22; action = "{other}""#,
        ],
        decides: Some(3),
    },
    Template {
        protos: TCP_UDP,
        kind: Kind::Default,
        rules: &[
            r#"proto = "{p}"; port = 23; action = "{other}""#,
            r#"proto = "{q}"; action = "{other}""#,
            r#"remote = {elsewhere}; action = "{other}""#,
            r#"remote = {here}; proto = "{p}"; port = 21; action = "{other}""#,
            r#"proto = "icmp"; action = "{other}""#,
        ],
        decides: None,
    },
    // --- ICMP / ICMPv6 echo
    Template {
        protos: ICMP,
        kind: Kind::PortOnly,
        rules: &[
            r#"proto = "any"; port = {allports}; action = "{other}""#,
            r#"proto = "tcp"; action = "{other}""#,
        ],
        decides: None,
    },
    Template {
        protos: ICMP,
        kind: Kind::RemoteOnly,
        rules: &[
            r#"remote = {elsewhere}; action = "{other}""#,
            r#"remote = {here}; action = "{act}""#,
            r#"proto = "icmp"; action = "{other}""#,
        ],
        decides: Some(1),
    },
    Template {
        protos: ICMP,
        kind: Kind::RemotePort,
        rules: &[
            r#"remote = {here}; proto = "any"; port = {allports}; action = "{other}""#,
            r#"remote = {elsewhere}; proto = "icmp"; action = "{other}""#,
            r#"remote = {here}; proto = "icmp"; action = "{act}""#,
        ],
        decides: Some(2),
    },
    Template {
        protos: ICMP,
        kind: Kind::ProtoOnly,
        rules: &[
            r#"proto = "tcp"; action = "{other}""#,
            r#"remote = {elsewhere}; proto = "icmp"; action = "{other}""#,
            r#"proto = "icmp"; action = "{act}""#,
            r#"action = "{other}""#,
        ],
        decides: Some(2),
    },
    Template {
        protos: ICMP,
        kind: Kind::Default,
        rules: &[
            r#"proto = "tcp"; action = "{other}""#,
            r#"proto = "udp"; action = "{other}""#,
            r#"remote = {elsewhere}; action = "{other}""#,
            r#"proto = "any"; port = {allports}; action = "{other}""#,
        ],
        decides: None,
    },
    // --- another protocol (GRE): no ports, no protocol class of its own in the rules
    Template {
        protos: OTHER,
        kind: Kind::PortOnly,
        rules: &[
            r#"proto = "any"; port = {allports}; action = "{other}""#,
            r#"proto = "icmp"; action = "{other}""#,
        ],
        decides: None,
    },
    Template {
        protos: OTHER,
        kind: Kind::RemoteOnly,
        rules: &[
            r#"remote = {elsewhere}; action = "{other}""#,
            r#"remote = {here}; proto = "icmp"; action = "{other}""#,
            r#"remote = {here}; action = "{act}""#,
            r#"action = "{other}""#,
        ],
        decides: Some(2),
    },
    Template {
        protos: OTHER,
        kind: Kind::RemotePort,
        rules: &[
            r#"remote = {here}; proto = "any"; port = {allports}; action = "{other}""#,
            r#"remote = {here}; proto = "tcp"; action = "{other}""#,
            r#"remote = {here}; proto = "any"; action = "{act}""#,
        ],
        decides: Some(2),
    },
    Template {
        protos: OTHER,
        kind: Kind::ProtoOnly,
        rules: &[
            r#"proto = "tcp"; action = "{other}""#,
            r#"proto = "udp"; action = "{other}""#,
            r#"proto = "icmp"; action = "{other}""#,
            r#"proto = "any"; action = "{act}""#,
        ],
        decides: Some(3),
    },
    Template {
        protos: OTHER,
        kind: Kind::Default,
        rules: &[
            r#"proto = "tcp"; action = "{other}""#,
            r#"proto = "udp"; action = "{other}""#,
            r#"proto = "icmp"; action = "{other}""#,
            r#"remote = {elsewhere}; action = "{other}""#,
            r#"proto = "any"; port = {allports}; action = "{other}""#,
        ],
        decides: None,
    },
];

/// One expanded row.
struct Row {
    family: Family,
    proto: PacketProto,
    action: Action,
    kind: Kind,
    rules: String,
    expected: Decision,
    spec: Spec,
}

/// (remote, local) addresses of the test packets.
fn v4_or_v6(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::V4 => ("10.1.2.3", "10.0.0.1"),
        Family::V6 => ("2001:db8:1:2::3", "2001:db8::1"),
    }
}

fn other_action(a: Action) -> Action {
    match a {
        Action::Allow => Action::Stealth,
        Action::Reject => Action::Allow,
        Action::Stealth => Action::Reject,
    }
}

fn expand_table() -> Vec<Row> {
    let mut rows = Vec::new();
    for t in TABLE {
        for &proto in t.protos {
            for family in FAMILIES {
                for action in ACTIONS {
                    let (remote, local) = v4_or_v6(family);
                    let (p, q) = match proto {
                        PacketProto::Udp => ("udp", "tcp"),
                        _ => ("tcp", "udp"),
                    };
                    let other = other_action(action);
                    let default_action = if t.decides.is_none() { action } else { other };
                    let mut text =
                        format!("[defaults]\ninbound = \"{default_action}\"\n{NO_RATE_LIMIT}");
                    for r in t.rules {
                        text.push_str("\n[[rule]]\n");
                        for kv in r.split("; ") {
                            text.push_str(kv);
                            text.push('\n');
                        }
                    }
                    let text = text
                        .replace("{act}", &action.to_string())
                        .replace("{other}", &other.to_string())
                        .replace("{p}", p)
                        .replace("{q}", q)
                        .replace("{here}", r#"["10.1.2.0/24", "2001:db8:1:2::/64"]"#)
                        .replace("{allports}", WIDE_PORTS)
                        .replace("{elsewhere}", r#"["10.9.0.0/16", "2001:db8:9::/48"]"#);
                    let l4 = match proto {
                        PacketProto::Tcp => L4::SYN,
                        PacketProto::Udp => L4::Udp,
                        PacketProto::Icmp => L4::Echo,
                        PacketProto::Other => L4::Other,
                    };
                    let mut spec = Spec::new(remote, local, l4, 22);
                    spec.payload = vec![0xab; 12];
                    rows.push(Row {
                        family,
                        proto,
                        action,
                        kind: t.kind,
                        rules: text,
                        expected: Decision {
                            action,
                            rule: t.decides,
                        },
                        spec,
                    });
                }
            }
        }
    }
    rows
}

#[test]
fn table_has_one_row_per_combination() {
    let rows = expand_table();
    let mut seen = HashSet::new();
    for r in &rows {
        assert!(
            seen.insert((r.family, r.proto, r.action, r.kind)),
            "duplicate row {:?}",
            (r.family, r.proto, r.action, r.kind)
        );
    }
    let mut missing = Vec::new();
    for family in FAMILIES {
        for proto in PROTOS {
            for action in ACTIONS {
                for kind in KINDS {
                    if !seen.contains(&(family, proto, action, kind)) {
                        missing.push((family, proto, action, kind));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "combinations without a row: {missing:?}"
    );
    assert_eq!(rows.len(), 2 * 4 * 3 * 5);
}

#[test]
fn table_every_verdict_path() {
    let fs = BpfFs::new();
    // Rows that differ only in family share their rules: load each rule set once (a load
    // costs ~0.1-0.5 s, see WIDE_PORTS).
    let mut loaded: HashMap<String, Fw> = HashMap::new();
    for row in expand_table() {
        let what = format!(
            "{:?} {:?} {:?} {:?}",
            row.family, row.proto, row.action, row.kind
        );
        let fw = loaded
            .entry(row.rules.clone())
            .or_insert_with(|| Fw::load(&fs, &row.rules));
        fw.check_spec(&what, &row.spec, row.expected);
    }
    assert_eq!(
        loaded.len(),
        60,
        "one rule set per (protocol, kind, action)"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Reject replies.

/// Rejects every new packet by default, and every TCP segment that belongs to no connection
/// (not a SYN) by `[conntrack] invalid`, which uses the same reply builders.
fn reject_everything(fs: &BpfFs) -> Fw {
    Fw::load(
        fs,
        &format!(
            "[defaults]\ninbound = \"reject\"\n[conntrack]\ninvalid = \"reject\"\n{NO_RATE_LIMIT}"
        ),
    )
}

const REJECTED_RST: &[&str] = &["rejected", "default_verdict", "reject_tcp_rst"];
const REJECTED_ICMP: &[&str] = &["rejected", "default_verdict", "reject_icmp_unreachable"];
const REJECTED_SILENTLY: &[&str] = &["rejected", "default_verdict", "reject_no_reply"];
/// The same outcomes for a TCP segment that is not a SYN: decided by `[conntrack] invalid`
/// (counted under `ct_invalid_no_conn`), not by `[defaults]`.
const INVALID_REJECTED_RST: &[&str] = &["rejected", "reject_tcp_rst"];
const INVALID_REJECTED_SILENTLY: &[&str] = &["rejected", "reject_no_reply"];

/// True for a frame the tracker treats as a new connection (a SYN without ACK, FIN or RST),
/// judged by the rules; other TCP segments without a connection go to `[conntrack] invalid`.
fn opens_connection(l4: L4) -> bool {
    matches!(
        l4,
        L4::Tcp {
            syn: true,
            ack: None,
            fin: false,
            rst: false,
            ..
        }
    )
}

fn tcp(syn: bool, ack: Option<u32>, fin: bool, rst: bool, seq: u32) -> L4 {
    L4::Tcp {
        syn,
        ack,
        fin,
        rst,
        seq,
    }
}

/// Checks a TCP RST built in reply to `request` (from `spec`).
fn assert_rst(what: &str, spec: &Spec, request: &[u8], run: &Run, seq: u32, ack: u32, flags: u8) {
    if opens_connection(spec.l4) {
        run.assert_outcome(what, XDP_TX, REJECTED_RST);
    } else {
        run.assert_outcome(what, XDP_TX, INVALID_REJECTED_RST);
        assert_eq!(run.counter("ct_invalid_no_conn"), 1, "{what}: invalid path");
    }
    let r = frames::parse_tcp_reply(&run.out);
    let l3 = frames::l3_offset(request);
    assert_eq!(
        r.link.dst_mac, REMOTE_MAC,
        "{what}: reply goes back to the sender's MAC"
    );
    assert_eq!(
        r.link.src_mac, LOCAL_MAC,
        "{what}: reply comes from our MAC"
    );
    assert_eq!(
        r.link.tags_and_type,
        request[12..l3].to_vec(),
        "{what}: VLAN tags and EtherType kept"
    );
    assert_eq!(
        (r.ip.src, r.ip.dst),
        (spec.local, spec.remote),
        "{what}: IPs swapped"
    );
    assert_eq!(r.ip.ttl, 64, "{what}: TTL / hop limit");
    assert!(r.ip.header_checksum_ok, "{what}: IPv4 header checksum");
    assert_eq!(
        r.ip.hdr_len,
        if spec.remote.is_ipv4() { 20 } else { 40 },
        "{what}: no IP options"
    );
    assert_eq!(r.ip.total_len, r.ip.hdr_len + 20, "{what}: IP length");
    assert_eq!(
        (r.src_port, r.dst_port),
        (spec.local_port, spec.remote_port),
        "{what}: ports swapped"
    );
    assert_eq!(
        (r.seq, r.ack, r.flags),
        (seq, ack, flags),
        "{what}: (seq, ack, flags)"
    );
    assert_eq!(r.data_offset, 5, "{what}: data offset");
    assert_eq!(
        (r.payload_len, r.trailing),
        (0, 0),
        "{what}: no payload, no trailing bytes"
    );
    assert!(r.checksum_ok, "{what}: TCP checksum: {:02x?}", run.out);
}

const RST: u8 = 0x04;
const RST_ACK: u8 = 0x14;

#[test]
fn reject_tcp_syn_gets_rst_ack_with_every_link_and_ip_layout() {
    let fs = BpfFs::new();
    let mut fw = reject_everything(&fs);
    for family in FAMILIES {
        for vlans in 0..=2 {
            for ip_options in [false, true] {
                let (remote, local) = v4_or_v6(family);
                let mut spec = Spec::new(remote, local, L4::SYN, 22);
                spec.vlans = vlans;
                spec.ip_options = ip_options;
                spec.remote_port = 40001;
                // Payload on a SYN: SEG.LEN must not count the options / extension headers.
                spec.payload = vec![0x42; 3];
                let what = format!("{family:?} SYN, {vlans} VLAN tags, IP options {ip_options}");
                let frame = spec.frame();
                let run = fw.run(&frame);
                assert_rst(&what, &spec, &frame, &run, 0, 1004, RST_ACK);
            }
        }
    }
}

#[test]
fn reject_tcp_rst_acknowledges_syn_fin_and_payload() {
    let fs = BpfFs::new();
    let mut fw = reject_everything(&fs);
    // (flags, seq, payload length, expected ack)
    let cases: &[(L4, usize, u32)] = &[
        (tcp(true, None, false, false, 1000), 0, 1001),
        (tcp(true, None, false, false, 1000), 7, 1008),
        (tcp(true, None, true, false, 5000), 5, 5007),
        (tcp(false, None, true, false, 70), 3, 74),
        (tcp(false, None, false, false, 9), 10, 19),
        (tcp(true, None, false, false, u32::MAX), 0, 0),
        (tcp(false, None, false, false, u32::MAX - 1), 4, 2),
    ];
    for family in FAMILIES {
        for (i, &(l4, payload, ack)) in cases.iter().enumerate() {
            let (remote, local) = v4_or_v6(family);
            let mut spec = Spec::new(remote, local, l4, 443);
            spec.payload = vec![0x5a; payload];
            let frame = spec.frame();
            let run = fw.run(&frame);
            let what = format!("{family:?} case {i}: {l4:?} with {payload} payload bytes");
            assert_rst(&what, &spec, &frame, &run, 0, ack, RST_ACK);
            // Ethernet padding after the IP packet is not payload (SEG.LEN comes from the IP
            // length fields), and is not sent back.
            let mut padded = frame.clone();
            padded.extend_from_slice(&[0; 18]);
            let run = fw.run(&padded);
            assert_rst(
                &format!("{what}, padded"),
                &spec,
                &padded,
                &run,
                0,
                ack,
                RST_ACK,
            );
        }
    }
}

#[test]
fn reject_tcp_segment_with_ack_gets_rst_from_its_ack_number() {
    let fs = BpfFs::new();
    let mut fw = reject_everything(&fs);
    for family in FAMILIES {
        for (l4, payload) in [
            (tcp(false, Some(0xdead_beef), false, false, 1000), 20),
            (tcp(true, Some(77), false, false, 1000), 0),
            (tcp(false, Some(5), true, false, 1000), 0),
        ] {
            let (remote, local) = v4_or_v6(family);
            let mut spec = Spec::new(remote, local, l4, 80);
            spec.payload = vec![1; payload];
            let frame = spec.frame();
            let run = fw.run(&frame);
            let L4::Tcp { ack: Some(ack), .. } = l4 else {
                unreachable!("cases carry ACK")
            };
            let what = format!("{family:?} {l4:?}");
            // <SEQ=SEG.ACK><CTL=RST>: no ACK flag, acknowledgment field unused.
            assert_rst(&what, &spec, &frame, &run, ack, 0, RST);
        }
    }
}

#[test]
fn reject_never_answers_a_rst() {
    let fs = BpfFs::new();
    let mut fw = reject_everything(&fs);
    for family in FAMILIES {
        for l4 in [
            tcp(false, None, false, true, 1000),
            tcp(false, Some(9), false, true, 1000),
        ] {
            let (remote, local) = v4_or_v6(family);
            let spec = Spec::new(remote, local, l4, 22);
            let run = fw.run(&spec.frame());
            run.assert_outcome(
                &format!("{family:?} {l4:?}"),
                XDP_DROP,
                INVALID_REJECTED_SILENTLY,
            );
        }
    }
}

/// Checks an ICMP / ICMPv6 port unreachable built in reply to `request`.
fn assert_port_unreachable(what: &str, spec: &Spec, request: &[u8], run: &Run) {
    run.assert_outcome(what, XDP_TX, REJECTED_ICMP);
    let r = frames::parse_icmp_reply(&run.out);
    let l3 = frames::l3_offset(request);
    let l4 = frames::l4_offset(request);
    assert_eq!(
        r.link.dst_mac, REMOTE_MAC,
        "{what}: reply goes back to the sender's MAC"
    );
    assert_eq!(
        r.link.src_mac, LOCAL_MAC,
        "{what}: reply comes from our MAC"
    );
    assert_eq!(
        r.link.tags_and_type,
        request[12..l3].to_vec(),
        "{what}: VLAN tags and EtherType kept"
    );
    assert_eq!(r.link.l3, l3, "{what}: link header length");
    assert_eq!(
        (r.ip.src, r.ip.dst),
        (spec.local, spec.remote),
        "{what}: IPs swapped"
    );
    assert_eq!(r.ip.ttl, 64, "{what}: TTL / hop limit");
    assert!(r.ip.header_checksum_ok, "{what}: IPv4 header checksum");
    let (hdr, ty, code) = if spec.remote.is_ipv4() {
        (20, 3, 3)
    } else {
        (40, 1, 4)
    };
    assert_eq!(
        r.ip.hdr_len, hdr,
        "{what}: reply IP header carries no options"
    );
    assert_eq!(
        (r.icmp_type, r.code),
        (ty, code),
        "{what}: ICMP type and code"
    );
    assert_eq!(r.rest, [0; 4], "{what}: unused field");
    assert_eq!(
        r.quoted,
        request[l3..l4 + 8].to_vec(),
        "{what}: quotes the IP header (with options / extension headers) and 8 bytes of UDP"
    );
    assert_eq!(
        r.ip.total_len,
        hdr + 8 + r.quoted.len(),
        "{what}: IP length"
    );
    assert_eq!(r.trailing, 0, "{what}: no bytes after the reply");
    assert!(r.checksum_ok, "{what}: ICMP checksum: {:02x?}", run.out);
}

#[test]
fn reject_udp_gets_port_unreachable_quoting_the_datagram() {
    let fs = BpfFs::new();
    let mut fw = reject_everything(&fs);
    for family in FAMILIES {
        for vlans in 0..=2 {
            for ip_options in [false, true] {
                for frag_header in [false, true] {
                    if frag_header && family == Family::V4 {
                        continue;
                    }
                    let (remote, local) = v4_or_v6(family);
                    let mut spec = Spec::new(remote, local, L4::Udp, 53);
                    spec.vlans = vlans;
                    spec.ip_options = ip_options;
                    spec.frag_header = frag_header;
                    spec.remote_port = 41000;
                    spec.payload = (0..40).collect();
                    let frame = spec.frame();
                    let run = fw.run(&frame);
                    let what = format!(
                        "{family:?} UDP, {vlans} VLAN tags, IP options {ip_options}, \
                         fragment header {frag_header}"
                    );
                    assert_port_unreachable(&what, &spec, &frame, &run);
                    let mut padded = frame.clone();
                    padded.extend_from_slice(&[0; 18]);
                    let run = fw.run(&padded);
                    assert_port_unreachable(&format!("{what}, padded"), &spec, &padded, &run);
                }
            }
        }
    }
}

#[test]
fn reject_udp_quotes_up_to_64_bytes_of_extension_headers() {
    let fs = BpfFs::new();
    let mut fw = reject_everything(&fs);
    let (remote, local) = v4_or_v6(Family::V6);
    let payload = [7u8; 16];
    let mut l4 = frames::udp_header(41000, 53, payload.len());
    l4.extend_from_slice(&payload);

    // 64 bytes of extension headers: quoted back whole.
    let frame = frames::ipv6_frame(
        remote,
        local,
        &[
            Ext::HopByHop { units: 2 },
            Ext::Routing,
            Ext::DstOpts { units: 5 },
        ],
        frames::IPPROTO_UDP,
        &l4,
    );
    let mut spec = Spec::new(remote, local, L4::Udp, 53);
    spec.remote_port = 41000;
    let run = fw.run(&frame);
    assert_port_unreachable("64 bytes of extension headers", &spec, &frame, &run);

    // 72 bytes: more than a reply quotes; the reject degrades to a counted drop.
    let frame = frames::ipv6_frame(
        remote,
        local,
        &[Ext::DstOpts { units: 9 }],
        frames::IPPROTO_UDP,
        &l4,
    );
    fw.run(&frame).assert_outcome(
        "72 bytes of extension headers",
        XDP_DROP,
        &["rejected", "default_verdict", "reject_build_failed"],
    );
}

#[test]
fn reject_udp_with_longest_ipv4_header_is_quoted_whole() {
    let fs = BpfFs::new();
    let mut fw = reject_everything(&fs);
    let mut l4 = frames::udp_header(41000, 53, 4);
    l4.extend_from_slice(&[1, 2, 3, 4]);
    let options = [1u8; 40]; // 40 bytes of NOP: IHL 15
    let mut frame = frames::ethernet(
        &[frames::ETH_P_8021AD, frames::ETH_P_8021Q],
        frames::ETH_P_IP,
    );
    frame.extend(frames::ipv4_header(
        "10.1.2.3",
        "10.0.0.1",
        frames::IPPROTO_UDP,
        l4.len(),
        &options,
    ));
    frame.extend_from_slice(&l4);
    let mut spec = Spec::new("10.1.2.3", "10.0.0.1", L4::Udp, 53);
    spec.remote_port = 41000;
    let run = fw.run(&frame);
    assert_port_unreachable("IHL 15, two VLAN tags", &spec, &frame, &run);
}

// ---------------------------------------------------------------------------------------------
// 3. No replies to or from broadcast and multicast addresses.

#[test]
fn reject_never_answers_broadcast_or_multicast() {
    let fs = BpfFs::new();
    let mut fw = reject_everything(&fs);
    let bcast_mac = [0xff; 6];
    let mcast4_mac = [0x01, 0x00, 0x5e, 0, 0, 1];
    let mcast6_mac = [0x33, 0x33, 0, 0, 0, 1];
    // (what, remote, local, destination MAC or None for unicast)
    let cases: &[(&str, &str, &str, Option<[u8; 6]>)] = &[
        ("broadcast MAC", "10.1.2.3", "10.0.0.1", Some(bcast_mac)),
        (
            "IPv4 multicast MAC",
            "10.1.2.3",
            "10.0.0.1",
            Some(mcast4_mac),
        ),
        (
            "IPv6 broadcast MAC",
            "2001:db8:1::3",
            "2001:db8::1",
            Some(bcast_mac),
        ),
        (
            "IPv6 multicast MAC",
            "2001:db8:1::3",
            "2001:db8::1",
            Some(mcast6_mac),
        ),
        ("to 255.255.255.255", "10.1.2.3", "255.255.255.255", None),
        ("to 224.0.0.1", "10.1.2.3", "224.0.0.1", None),
        ("to 239.1.2.3", "10.1.2.3", "239.1.2.3", None),
        ("to ff02::1", "2001:db8:1::3", "ff02::1", None),
        ("to ff05::2", "2001:db8:1::3", "ff05::2", None),
        ("from 0.0.0.0", "0.0.0.0", "10.0.0.1", None),
        ("from 255.255.255.255", "255.255.255.255", "10.0.0.1", None),
        ("from 224.0.0.5", "224.0.0.5", "10.0.0.1", None),
        ("from 127.0.0.1", "127.0.0.1", "10.0.0.1", None),
        ("from ::", "::", "2001:db8::1", None),
        ("from ::1", "::1", "2001:db8::1", None),
        ("from ff02::1", "ff02::1", "2001:db8::1", None),
    ];
    for &(what, remote, local, mac) in cases {
        for l4 in [L4::SYN, L4::Udp] {
            let spec = Spec::new(remote, local, l4, 22);
            let mut frame = spec.frame();
            if let Some(mac) = mac {
                frames::set_dst_mac(&mut frame, mac);
            }
            fw.run(&frame)
                .assert_outcome(&format!("{what}, {l4:?}"), XDP_DROP, REJECTED_SILENTLY);
        }
    }
    // The same packets between unicast addresses are answered.
    for (remote, local) in [("10.1.2.3", "10.0.0.1"), ("2001:db8:1::3", "2001:db8::1")] {
        let spec = Spec::new(remote, local, L4::Udp, 22);
        fw.run(&spec.frame())
            .assert_outcome(&format!("unicast {remote}"), XDP_TX, REJECTED_ICMP);
        let spec = Spec::new(remote, local, L4::SYN, 22);
        fw.run(&spec.frame())
            .assert_outcome(&format!("unicast {remote}"), XDP_TX, REJECTED_RST);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Reply rate limit.

#[test]
fn reject_replies_are_rate_limited_per_source() {
    let fs = BpfFs::new();
    let mut fw = Fw::load(
        &fs,
        "[defaults]\ninbound = \"reject\"\n[conntrack]\ninvalid = \"reject\"\n\
         [reject]\nrate_per_sec = 1\nburst = 3\n",
    );
    const LIMITED: &[&str] = &["rejected", "default_verdict", "reject_rate_limited"];
    for (a, b) in [("10.1.2.3", "10.1.2.4"), ("2001:db8::a", "2001:db8::b")] {
        let local = if a.contains(':') {
            "2001:db8::1"
        } else {
            "10.0.0.1"
        };
        let syn_a = Spec::new(a, local, L4::SYN, 22).frame();
        let udp_a = Spec::new(a, local, L4::Udp, 53).frame();
        // The budget is per source, whatever the protocol.
        for i in 0..3 {
            let (frame, outcome) = if i == 1 {
                (&udp_a, REJECTED_ICMP)
            } else {
                (&syn_a, REJECTED_RST)
            };
            fw.run(frame).assert_outcome(
                &format!("{a}: reply {i} within the burst"),
                XDP_TX,
                outcome,
            );
        }
        for i in 0..3 {
            fw.run(&syn_a).assert_outcome(
                &format!("{a}: SYN {i} past the burst"),
                XDP_DROP,
                LIMITED,
            );
        }
        fw.run(&udp_a)
            .assert_outcome(&format!("{a}: UDP past the burst"), XDP_DROP, LIMITED);
        // Non-replies do not consume or need tokens: a RST is still a silent no-reply.
        let rst_a = Spec::new(a, local, tcp(false, None, false, true, 1), 22).frame();
        fw.run(&rst_a)
            .assert_outcome(&format!("{a}: RST"), XDP_DROP, INVALID_REJECTED_SILENTLY);
        // Another source has its own budget.
        let syn_b = Spec::new(b, local, L4::SYN, 22).frame();
        fw.run(&syn_b)
            .assert_outcome(&format!("{b}: own budget"), XDP_TX, REJECTED_RST);
    }
    // One token per second comes back.
    std::thread::sleep(Duration::from_millis(1100));
    let syn = Spec::new("10.1.2.3", "10.0.0.1", L4::SYN, 22).frame();
    fw.run(&syn)
        .assert_outcome("10.1.2.3 after a second", XDP_TX, REJECTED_RST);
}

// ---------------------------------------------------------------------------------------------
// 5. Malformed frames: dropped and counted under their reason, whatever the rules say.

fn allow_everything(fs: &BpfFs) -> Fw {
    Fw::load(
        fs,
        "[defaults]\ninbound = \"allow\"\n[[rule]]\naction = \"allow\"\n",
    )
}

/// Runs every case and reports all mismatches at once.
fn assert_drops(fw: &mut Fw, cases: &[(&str, Vec<u8>, &str)]) {
    let mut failures = Vec::new();
    for (what, frame, counter) in cases {
        let run = fw.run(frame);
        let moved = run.moved();
        let want: BTreeSet<&str> = [*counter].into_iter().collect();
        if run.action != XDP_DROP || moved != want || run.counter(counter) != 1 {
            failures.push(format!(
                "{what}: expected XDP_DROP counting only {counter}, got action {} moving {moved:?}",
                run.action
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn udp4_frame() -> Vec<u8> {
    frames::ipv4_frame(
        "10.1.2.3",
        "10.0.0.1",
        frames::IPPROTO_UDP,
        &frames::udp_header(40000, 53, 0),
    )
}

fn udp6_frame() -> Vec<u8> {
    frames::ipv6_frame(
        "2001:db8::3",
        "2001:db8::1",
        &[],
        frames::IPPROTO_UDP,
        &frames::udp_header(40000, 53, 0),
    )
}

fn truncated(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    assert!(len < frame.len(), "truncation must remove something");
    frame.truncate(len);
    frame
}

fn patched(mut frame: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    frame[at..at + bytes.len()].copy_from_slice(bytes);
    frame
}

#[test]
fn malformed_frames_are_dropped_under_their_reason() {
    let fs = BpfFs::new();
    let mut fw = allow_everything(&fs);
    // The frames themselves are sane apart from the defect: the same frames, intact, pass.
    for (what, frame) in [("UDP/IPv4", udp4_frame()), ("UDP/IPv6", udp6_frame())] {
        fw.run(&frame).assert_outcome(what, XDP_PASS, &["allowed"]);
    }

    let (v6r, v6l) = ("2001:db8::3", "2001:db8::1");
    let tcp4 = frames::ipv4_frame(
        "10.1.2.3",
        "10.0.0.1",
        frames::IPPROTO_TCP,
        &frames::tcp_header(40000, 22, 0x02),
    );
    let tcp6 = frames::ipv6_frame(
        v6r,
        v6l,
        &[],
        frames::IPPROTO_TCP,
        &frames::tcp_header(40000, 22, 0x02),
    );
    let echo4 = frames::ipv4_frame(
        "10.1.2.3",
        "10.0.0.1",
        frames::IPPROTO_ICMP,
        &frames::icmpv4_message(8, 0, [0, 1, 0, 1], &[]),
    );
    let echo6 = frames::ipv6_frame(
        v6r,
        v6l,
        &[],
        frames::IPPROTO_ICMPV6,
        &frames::icmpv6_message(v6r, v6l, 128, 0, &[0, 1, 0, 1]),
    );
    let mut three_tags = frames::ethernet(
        &[
            frames::ETH_P_8021AD,
            frames::ETH_P_8021Q,
            frames::ETH_P_8021Q,
        ],
        frames::ETH_P_IP,
    );
    three_tags.extend_from_slice(&udp4_frame()[14..]);
    let mut two_tags_ok = frames::ethernet(
        &[frames::ETH_P_8021AD, frames::ETH_P_8021Q],
        frames::ETH_P_IP,
    );
    two_tags_ok.extend_from_slice(&udp4_frame()[14..]);
    fw.run(&two_tags_ok)
        .assert_outcome("two VLAN tags are fine", XDP_PASS, &["allowed"]);

    let nine_exts: Vec<Ext> = (0..9).map(|_| Ext::DstOpts { units: 1 }).collect();
    let eight_exts: Vec<Ext> = (0..8).map(|_| Ext::DstOpts { units: 1 }).collect();
    let udp = frames::udp_header(40000, 53, 0);
    fw.run(&frames::ipv6_frame(
        v6r,
        v6l,
        &eight_exts,
        frames::IPPROTO_UDP,
        &udp,
    ))
    .assert_outcome(
        "eight extension headers are followed",
        XDP_PASS,
        &["allowed"],
    );

    // IPv4 header at 14, IPv6 header at 14, transport at 34 (IPv4) / 54 (IPv6).
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "VLAN EtherType, tag missing",
            frames::ethernet(&[], frames::ETH_P_8021Q),
            "drop_malformed_l2",
        ),
        (
            "VLAN tag cut short",
            truncated(
                frames::ethernet(&[frames::ETH_P_8021Q], frames::ETH_P_IP),
                16,
            ),
            "drop_malformed_l2",
        ),
        (
            "second VLAN tag cut short",
            truncated(
                frames::ethernet(
                    &[frames::ETH_P_8021AD, frames::ETH_P_8021Q],
                    frames::ETH_P_IP,
                ),
                20,
            ),
            "drop_malformed_l2",
        ),
        ("third VLAN tag", three_tags, "drop_too_many_vlans"),
        (
            "IPv4 header cut short",
            truncated(udp4_frame(), 14 + 19),
            "drop_malformed_ipv4",
        ),
        (
            "IPv4 EtherType, no IP header",
            frames::ethernet(&[], frames::ETH_P_IP),
            "drop_malformed_ipv4",
        ),
        (
            "IPv4 version 6",
            patched(udp4_frame(), 14, &[0x65]),
            "drop_malformed_ipv4",
        ),
        (
            "IPv4 version 0",
            patched(udp4_frame(), 14, &[0x05]),
            "drop_malformed_ipv4",
        ),
        (
            "IPv4 IHL 4",
            patched(udp4_frame(), 14, &[0x44]),
            "drop_malformed_ipv4",
        ),
        (
            "IPv4 IHL 0",
            patched(udp4_frame(), 14, &[0x40]),
            "drop_malformed_ipv4",
        ),
        (
            "IPv4 IHL past the frame",
            patched(udp4_frame(), 14, &[0x4f]),
            "drop_malformed_ipv4",
        ),
        (
            "IPv4 IHL 6 past the frame",
            truncated(patched(udp4_frame(), 14, &[0x46]), 14 + 22),
            "drop_malformed_ipv4",
        ),
        (
            "IPv4 total length 19",
            patched(udp4_frame(), 16, &[0, 19]),
            "drop_malformed_ipv4",
        ),
        (
            "IPv4 total length 0",
            patched(udp4_frame(), 16, &[0, 0]),
            "drop_malformed_ipv4",
        ),
        (
            "IPv6 header cut short",
            truncated(udp6_frame(), 14 + 39),
            "drop_malformed_ipv6",
        ),
        (
            "IPv6 EtherType, no IP header",
            frames::ethernet(&[], frames::ETH_P_IPV6),
            "drop_malformed_ipv6",
        ),
        (
            "IPv6 version 4",
            patched(udp6_frame(), 14, &[0x40]),
            "drop_malformed_ipv6",
        ),
        (
            "nine extension headers",
            frames::ipv6_frame(v6r, v6l, &nine_exts, frames::IPPROTO_UDP, &udp),
            "drop_ipv6_ext_headers",
        ),
        (
            "extension header missing",
            frames::ipv6_frame(v6r, v6l, &[], frames::IPPROTO_DSTOPTS, &[]),
            "drop_ipv6_ext_headers",
        ),
        (
            "fragment header missing",
            frames::ipv6_frame(
                v6r,
                v6l,
                &[Ext::HopByHop { units: 1 }],
                frames::IPPROTO_FRAGMENT,
                &[],
            ),
            "drop_ipv6_ext_headers",
        ),
        (
            "TCP/IPv4 header cut short",
            truncated(tcp4.clone(), 34 + 19),
            "drop_malformed_l4",
        ),
        (
            "TCP/IPv6 header cut short",
            truncated(tcp6.clone(), 54 + 19),
            "drop_malformed_l4",
        ),
        (
            "TCP/IPv4 data offset 4",
            patched(tcp4.clone(), 34 + 12, &[4 << 4]),
            "drop_malformed_l4",
        ),
        (
            "TCP/IPv6 data offset 0",
            patched(tcp6.clone(), 54 + 12, &[0]),
            "drop_malformed_l4",
        ),
        (
            "TCP/IPv4 data offset past the frame",
            patched(tcp4.clone(), 34 + 12, &[15 << 4]),
            "drop_malformed_l4",
        ),
        (
            "TCP/IPv6 data offset past the frame",
            patched(tcp6.clone(), 54 + 12, &[6 << 4]),
            "drop_malformed_l4",
        ),
        (
            "UDP/IPv4 header cut short",
            truncated(udp4_frame(), 34 + 7),
            "drop_malformed_l4",
        ),
        (
            "UDP/IPv6 header cut short",
            truncated(udp6_frame(), 54 + 7),
            "drop_malformed_l4",
        ),
        (
            "ICMP header cut short",
            truncated(echo4.clone(), 34 + 3),
            "drop_malformed_l4",
        ),
        (
            "ICMP header of 7 bytes (the header is 8)",
            truncated(echo4, 34 + 7),
            "drop_malformed_l4",
        ),
        (
            "ICMPv6 header cut short",
            truncated(echo6.clone(), 54 + 3),
            "drop_malformed_l4",
        ),
        (
            "ICMPv6 header of 7 bytes (the header is 8)",
            truncated(echo6, 54 + 7),
            "drop_malformed_l4",
        ),
        (
            "ICMPv6 after extension headers cut short",
            truncated(
                frames::ipv6_frame(
                    v6r,
                    v6l,
                    &[
                        Ext::HopByHop { units: 1 },
                        Ext::Fragment {
                            offset: 0,
                            more: true,
                        },
                    ],
                    frames::IPPROTO_ICMPV6,
                    &frames::icmpv6_message(v6r, v6l, 135, 0, &[0; 20]),
                ),
                54 + 16 + 2,
            ),
            "drop_malformed_l4",
        ),
    ];
    assert_drops(&mut fw, &cases);
}

/// parse.rs documents "an extension header truncated" as `drop_ipv6_ext_headers`. These frames
/// end inside an extension header (its first bytes are there, the rest of its declared length
/// is not).
#[test]
fn truncated_extension_headers_are_dropped_as_extension_header_errors() {
    let fs = BpfFs::new();
    let mut fw = allow_everything(&fs);
    let (r, l) = ("2001:db8::3", "2001:db8::1");
    let tcp = frames::tcp_header(40000, 22, 0x02);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "destination options (16 bytes declared, 8 present), then TCP",
            truncated(
                frames::ipv6_frame(
                    r,
                    l,
                    &[Ext::DstOpts { units: 2 }],
                    frames::IPPROTO_TCP,
                    &tcp,
                ),
                54 + 8,
            ),
            "drop_ipv6_ext_headers",
        ),
        (
            "destination options (16 bytes declared, 8 present), no next header",
            truncated(
                frames::ipv6_frame(
                    r,
                    l,
                    &[Ext::DstOpts { units: 2 }],
                    frames::IPPROTO_NONE,
                    &[],
                ),
                54 + 8,
            ),
            "drop_ipv6_ext_headers",
        ),
        (
            "hop-by-hop (8 bytes declared, 2 present), then UDP",
            truncated(
                frames::ipv6_frame(
                    r,
                    l,
                    &[Ext::HopByHop { units: 1 }],
                    frames::IPPROTO_UDP,
                    &frames::udp_header(1, 53, 0),
                ),
                54 + 2,
            ),
            "drop_ipv6_ext_headers",
        ),
        (
            "fragment header (8 bytes) with 4 present, then TCP",
            truncated(
                frames::ipv6_frame(
                    r,
                    l,
                    &[Ext::Fragment {
                        offset: 0,
                        more: true,
                    }],
                    frames::IPPROTO_TCP,
                    &tcp,
                ),
                54 + 4,
            ),
            "drop_ipv6_ext_headers",
        ),
    ];
    assert_drops(&mut fw, &cases);
}

// ---------------------------------------------------------------------------------------------
// 6. Always-pass traffic, and ICMP that follows the rules.

#[test]
fn non_ip_and_essential_icmp_pass_before_the_rules() {
    let fs = BpfFs::new();
    let mut fw = Fw::load(
        &fs,
        "[defaults]\ninbound = \"stealth\"\n\
         [[rule]]\nproto = \"icmp\"\naction = \"stealth\"\n\
         [[rule]]\naction = \"stealth\"\n",
    );
    let mut lldp = frames::ethernet(&[], 0x88cc);
    lldp.extend_from_slice(&[0; 46]);
    for (what, frame) in [
        ("ARP", frames::arp_frame(&[])),
        ("ARP in a VLAN", frames::arp_frame(&[frames::ETH_P_8021Q])),
        (
            "ARP in two VLANs",
            frames::arp_frame(&[frames::ETH_P_8021AD, frames::ETH_P_8021Q]),
        ),
        ("LLDP", lldp),
    ] {
        fw.run(&frame)
            .assert_outcome(what, XDP_PASS, &["pass_non_ip"]);
    }

    let (r, l) = ("fe80::3", "fe80::1");
    let essential6: &[(u8, &str)] = &[
        (2, "packet too big"),
        (130, "MLD query"),
        (131, "MLD report"),
        (132, "MLD done"),
        (133, "router solicitation"),
        (134, "router advertisement"),
        (135, "neighbour solicitation"),
        (136, "neighbour advertisement"),
        (137, "redirect"),
        (143, "MLDv2 report"),
    ];
    for &(ty, what) in essential6 {
        let msg = frames::icmpv6_message(r, l, ty, 0, &[0; 20]);
        let frame = frames::ipv6_frame(r, l, &[], frames::IPPROTO_ICMPV6, &msg);
        fw.run(&frame)
            .assert_outcome(what, XDP_PASS, &["pass_icmp_essential"]);
    }
    // MLD as it really arrives: to a multicast group, behind a hop-by-hop Router Alert.
    let msg = frames::icmpv6_message(r, "ff02::16", 143, 0, &[0; 20]);
    let mut frame = frames::ipv6_frame(
        r,
        "ff02::16",
        &[Ext::RouterAlert],
        frames::IPPROTO_ICMPV6,
        &msg,
    );
    frames::set_dst_mac(&mut frame, [0x33, 0x33, 0, 0, 0, 0x16]);
    fw.run(&frame).assert_outcome(
        "MLDv2 report with Router Alert",
        XDP_PASS,
        &["pass_icmp_essential"],
    );

    let needfrag = frames::icmpv4_message(3, 4, [0, 0, 0x05, 0xdc], &[0x45; 28]);
    let frame = frames::ipv4_frame("10.1.2.3", "10.0.0.1", frames::IPPROTO_ICMP, &needfrag);
    fw.run(&frame).assert_outcome(
        "ICMP fragmentation needed",
        XDP_PASS,
        &["pass_icmp_essential"],
    );
}

#[test]
fn other_icmp_follows_the_rules() {
    let fs = BpfFs::new();
    let (r6, l6) = ("2001:db8::3", "2001:db8::1");
    // (what, frame, remote)
    let mut frames_: Vec<(String, Vec<u8>, &str)> = Vec::new();
    for (ty, code) in [
        (8u8, 0u8),
        (0, 0),
        (3, 3),
        (3, 1),
        (3, 13),
        (11, 0),
        (5, 0),
        (12, 0),
    ] {
        let msg = frames::icmpv4_message(ty, code, [0, 1, 0, 1], &[0; 28]);
        frames_.push((
            format!("ICMP {ty}/{code}"),
            frames::ipv4_frame("10.1.2.3", "10.0.0.1", frames::IPPROTO_ICMP, &msg),
            "10.1.2.3",
        ));
    }
    for (ty, code) in [
        (128u8, 0u8),
        (129, 0),
        (1, 4),
        (1, 0),
        (3, 0),
        (4, 0),
        (138, 0),
        (139, 0),
    ] {
        let msg = frames::icmpv6_message(r6, l6, ty, code, &[0; 28]);
        frames_.push((
            format!("ICMPv6 {ty}/{code}"),
            frames::ipv6_frame(r6, l6, &[], frames::IPPROTO_ICMPV6, &msg),
            r6,
        ));
    }
    let rule_sets: &[(&str, Decision)] = &[
        (
            "[defaults]\ninbound = \"stealth\"\n",
            default(Action::Stealth),
        ),
        (
            "[defaults]\ninbound = \"stealth\"\n[[rule]]\nproto = \"tcp\"\naction = \"allow\"\n\
             [[rule]]\nproto = \"icmp\"\naction = \"allow\"\n",
            rule(1, Action::Allow),
        ),
        (
            "[defaults]\ninbound = \"allow\"\n[[rule]]\nproto = \"icmp\"\naction = \"reject\"\n",
            rule(0, Action::Reject),
        ),
        (
            "[defaults]\ninbound = \"allow\"\n[[rule]]\nproto = \"any\"\nport = [\"1-1024\", \"65000-65535\"]\naction = \"stealth\"\n",
            default(Action::Allow),
        ),
    ];
    for (text, expected) in rule_sets {
        let mut fw = Fw::load(&fs, text);
        for (what, frame, remote) in &frames_ {
            fw.check(what, &meta(remote, PacketProto::Icmp, 0), frame, *expected);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Fragments.

fn later_fragments() -> Vec<(&'static str, Vec<u8>)> {
    let (r, l) = ("2001:db8::3", "2001:db8::1");
    let mut v4_middle = Spec::new("10.1.2.3", "10.0.0.1", L4::Udp, 22).frame();
    frames::set_ipv4_fragment(&mut v4_middle, 185, true);
    let mut v4_last = Spec::new("10.1.2.3", "10.0.0.1", L4::SYN, 22).frame();
    frames::set_ipv4_fragment(&mut v4_last, 1, false);
    let mut v4_vlan = Spec::new("10.1.2.3", "10.0.0.1", L4::Udp, 22);
    v4_vlan.vlans = 2;
    let mut v4_vlan = v4_vlan.frame();
    frames::set_ipv4_fragment(&mut v4_vlan, 0x1fff, false);
    // A later fragment carries payload bytes where a transport header would be; make them look
    // like a truncated header to be sure nothing parses past the fragment header.
    vec![
        ("IPv4 middle fragment", v4_middle),
        ("IPv4 last fragment", v4_last),
        ("IPv4 largest offset, VLANs", v4_vlan),
        (
            "IPv6 middle fragment",
            frames::ipv6_frame(
                r,
                l,
                &[Ext::Fragment {
                    offset: 185,
                    more: true,
                }],
                frames::IPPROTO_UDP,
                &[1, 2, 3],
            ),
        ),
        (
            "IPv6 last fragment after hop-by-hop",
            frames::ipv6_frame(
                r,
                l,
                &[
                    Ext::HopByHop { units: 1 },
                    Ext::Fragment {
                        offset: 1,
                        more: false,
                    },
                ],
                frames::IPPROTO_TCP,
                &[9; 8],
            ),
        ),
    ]
}

#[test]
fn later_fragments_follow_the_fragments_setting() {
    let fs = BpfFs::new();
    // Rules that would drop (or allow) everything: fragments bypass them.
    let mut fw = Fw::load(
        &fs,
        "[defaults]\ninbound = \"stealth\"\nfragments = \"allow\"\n[[rule]]\naction = \"reject\"\n",
    );
    for (what, frame) in later_fragments() {
        fw.run(&frame).assert_outcome(
            &format!("{what}, fragments = allow"),
            XDP_PASS,
            &["pass_fragment"],
        );
    }
    let mut fw = Fw::load(
        &fs,
        "[defaults]\ninbound = \"allow\"\nfragments = \"stealth\"\n[[rule]]\naction = \"allow\"\n",
    );
    for (what, frame) in later_fragments() {
        fw.run(&frame).assert_outcome(
            &format!("{what}, fragments = stealth"),
            XDP_DROP,
            &["drop_fragment"],
        );
    }
}

#[test]
fn first_fragments_are_judged_by_the_rules() {
    let fs = BpfFs::new();
    let (r6, l6) = ("2001:db8::3", "2001:db8::1");
    for (fragments, text) in [
        (
            "stealth",
            "[[rule]]\nproto = \"udp\"\nport = 53\naction = \"allow\"\n",
        ),
        (
            "allow",
            "[[rule]]\nproto = \"udp\"\nport = 53\naction = \"allow\"\n",
        ),
    ] {
        let mut fw = Fw::load(
            &fs,
            &format!("[defaults]\ninbound = \"stealth\"\nfragments = \"{fragments}\"\n{text}"),
        );
        for (port, expected) in [(53, rule(0, Action::Allow)), (54, default(Action::Stealth))] {
            let mut l4 = frames::udp_header(40000, port, 100);
            l4.extend_from_slice(&[0; 32]);
            let mut v4 = frames::ipv4_frame("10.1.2.3", "10.0.0.1", frames::IPPROTO_UDP, &l4);
            frames::set_ipv4_fragment(&mut v4, 0, true);
            fw.check(
                &format!("IPv4 first fragment to {port}, fragments = {fragments}"),
                &meta("10.1.2.3", PacketProto::Udp, port),
                &v4,
                expected,
            );
            let v6 = frames::ipv6_frame(
                r6,
                l6,
                &[Ext::Fragment {
                    offset: 0,
                    more: true,
                }],
                frames::IPPROTO_UDP,
                &l4,
            );
            fw.check(
                &format!("IPv6 first fragment to {port}, fragments = {fragments}"),
                &meta(r6, PacketProto::Udp, port),
                &v6,
                expected,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 8. First match wins across the groups of compile.md.

/// Loads `rules` (with `[defaults] inbound = "stealth"` unless they set it) and checks each
/// packet: (remote, l4, local port, expected).
fn check_precedence(fs: &BpfFs, name: &str, rules: &str, packets: &[(&str, L4, u16, Decision)]) {
    let text = if rules.contains("[defaults]") {
        format!("{NO_RATE_LIMIT}{rules}")
    } else {
        format!("[defaults]\ninbound = \"stealth\"\n{NO_RATE_LIMIT}{rules}")
    };
    let mut fw = Fw::load(fs, &text);
    for &(remote, l4, port, expected) in packets {
        let local = if remote.contains(':') {
            "2001:db8::1"
        } else {
            "10.0.0.1"
        };
        let spec = Spec::new(remote, local, l4, port);
        fw.check_spec(
            &format!("{name}: {remote} {l4:?} port {port}"),
            &spec,
            expected,
        );
    }
}

fn rules_of(list: &[&str]) -> String {
    let mut text = String::new();
    for r in list {
        text.push_str("[[rule]]\n");
        for kv in r.split("; ") {
            text.push_str(kv);
            text.push('\n');
        }
    }
    text
}

#[test]
fn first_match_wins_across_groups() {
    use Action::{Allow, Reject, Stealth};
    let fs = BpfFs::new();
    let syn = L4::SYN;
    let udp = L4::Udp;
    let echo = L4::Echo;
    let gre = L4::Other;

    check_precedence(
        &fs,
        "remote-only before port-only",
        &rules_of(&[
            r#"remote = "10.1.0.0/16"; action = "stealth""#,
            r#"proto = "tcp"; port = 22; action = "allow""#,
        ]),
        &[
            ("10.1.2.3", syn, 22, rule(0, Stealth)),
            ("10.2.0.1", syn, 22, rule(1, Allow)),
            ("10.2.0.1", syn, 23, default(Stealth)),
        ],
    );
    check_precedence(
        &fs,
        "port-only before remote-only",
        &rules_of(&[
            r#"proto = "tcp"; port = 22; action = "allow""#,
            r#"remote = "10.1.0.0/16"; action = "reject""#,
        ]),
        &[
            ("10.1.2.3", syn, 22, rule(0, Allow)),
            ("10.1.2.3", syn, 23, rule(1, Reject)),
            ("10.1.2.3", udp, 22, rule(1, Reject)),
            ("10.1.2.3", gre, 0, rule(1, Reject)),
            ("10.2.0.1", udp, 22, default(Stealth)),
        ],
    );
    check_precedence(
        &fs,
        "remote+port before remote-only and port-only",
        &rules_of(&[
            r#"remote = "10.1.0.0/16"; proto = "udp"; port = 53; action = "reject""#,
            r#"proto = "udp"; port = 53; action = "allow""#,
            r#"remote = "10.1.2.0/24"; action = "allow""#,
        ]),
        &[
            ("10.1.2.3", udp, 53, rule(0, Reject)),
            ("10.1.9.9", udp, 53, rule(0, Reject)),
            ("10.2.0.1", udp, 53, rule(1, Allow)),
            ("10.1.2.3", syn, 53, rule(2, Allow)),
            ("10.1.9.9", syn, 53, default(Stealth)),
        ],
    );
    check_precedence(
        &fs,
        "remote+port after remote-only",
        &rules_of(&[
            r#"remote = "10.1.2.0/24"; proto = "tcp"; action = "stealth""#,
            r#"remote = "10.1.0.0/16"; proto = "tcp"; port = 22; action = "allow""#,
        ]),
        &[
            ("10.1.2.3", syn, 22, rule(0, Stealth)),
            ("10.1.3.3", syn, 22, rule(1, Allow)),
            ("10.1.3.3", syn, 23, default(Stealth)),
        ],
    );
    for (name, rules, inner, outer) in [
        (
            "nested CIDRs, wide first",
            [
                r#"remote = "10.0.0.0/8"; action = "allow""#,
                r#"remote = "10.1.0.0/16"; action = "stealth""#,
            ],
            rule(0, Allow),
            rule(0, Allow),
        ),
        (
            "nested CIDRs, narrow first",
            [
                r#"remote = "10.1.0.0/16"; action = "stealth""#,
                r#"remote = "10.0.0.0/8"; action = "allow""#,
            ],
            rule(0, Stealth),
            rule(1, Allow),
        ),
    ] {
        check_precedence(
            &fs,
            name,
            &format!("[defaults]\ninbound = \"reject\"\n{}", rules_of(&rules)),
            &[
                ("10.1.2.3", syn, 22, inner),
                ("10.1.2.3", echo, 0, inner),
                ("10.2.3.4", udp, 22, outer),
                ("11.1.2.3", udp, 22, default(Reject)),
            ],
        );
    }
    check_precedence(
        &fs,
        "three nested prefixes with different services",
        &rules_of(&[
            r#"remote = "10.1.2.0/24"; proto = "udp"; action = "reject""#,
            r#"remote = "10.0.0.0/8"; proto = "tcp"; port = 22; action = "reject""#,
            r#"remote = "10.1.0.0/16"; proto = "icmp"; action = "stealth""#,
            r#"remote = "10.1.0.0/16"; action = "allow""#,
            r#"remote = "10.1.2.3"; action = "stealth""#,
        ]),
        &[
            ("10.1.2.3", udp, 1, rule(0, Reject)),
            ("10.1.2.3", syn, 22, rule(1, Reject)),
            ("10.1.2.3", echo, 0, rule(2, Stealth)),
            ("10.1.2.3", syn, 23, rule(3, Allow)),
            ("10.1.2.3", gre, 0, rule(3, Allow)),
            ("10.1.3.1", udp, 1, rule(3, Allow)),
            ("10.2.0.1", syn, 22, rule(1, Reject)),
            ("10.2.0.1", syn, 23, default(Stealth)),
        ],
    );
    check_precedence(
        &fs,
        "overlapping remote+port rules",
        &rules_of(&[
            r#"remote = "10.1.0.0/16"; proto = "tcp"; port = 22; action = "stealth""#,
            r#"remote = "10.0.0.0/8"; proto = "tcp"; port = "20-30"; action = "allow""#,
            r#"remote = ["10.1.2.0/24", "10.3.0.0/16"]; proto = "any"; port = [25, "1000-2000"]; action = "reject""#,
        ]),
        &[
            ("10.1.2.3", syn, 22, rule(0, Stealth)),
            ("10.1.2.3", syn, 25, rule(1, Allow)),
            ("10.1.2.3", udp, 25, rule(2, Reject)),
            ("10.1.2.3", udp, 1500, rule(2, Reject)),
            ("10.3.4.5", syn, 1000, rule(2, Reject)),
            ("10.3.4.5", syn, 22, rule(1, Allow)),
            ("10.2.0.1", syn, 22, rule(1, Allow)),
            ("10.2.0.1", udp, 25, default(Stealth)),
            ("10.1.2.3", echo, 0, default(Stealth)),
        ],
    );
    check_precedence(
        &fs,
        "a set holding both families",
        &format!(
            "[sets]\nmixed = [\"10.1.0.0/16\", \"2001:db8:1::/48\", \"192.0.2.7\"]\n{}",
            rules_of(&[
                r#"remote = "@mixed"; proto = "tcp"; port = 22; action = "allow""#,
                r#"remote = ["@mixed", "2001:db8:2::1"]; proto = "icmp"; action = "reject""#,
            ])
        ),
        &[
            ("10.1.2.3", syn, 22, rule(0, Allow)),
            ("2001:db8:1:5::9", syn, 22, rule(0, Allow)),
            ("192.0.2.7", syn, 22, rule(0, Allow)),
            ("192.0.2.8", syn, 22, default(Stealth)),
            ("2001:db8:2::1", syn, 22, default(Stealth)),
            ("2001:db8:2::1", echo, 0, rule(1, Reject)),
            ("2001:db8:1::1", echo, 0, rule(1, Reject)),
            ("10.1.0.1", echo, 0, rule(1, Reject)),
            ("10.2.0.1", echo, 0, default(Stealth)),
        ],
    );
    let mut lists = vec![];
    for (port, hit) in [
        (21, false),
        (22, true),
        (23, false),
        (442, false),
        (443, true),
        (444, false),
        (7999, false),
        (8000, true),
        (8050, true),
        (8100, true),
        (8101, false),
        (65535, true),
        (65534, false),
    ] {
        for l4 in [syn, udp] {
            let tcp_only = matches!(l4, L4::Tcp { .. });
            let expected = match (hit, tcp_only, port) {
                (true, true, _) => rule(1, Allow),
                (true, false, 443 | 65535) => rule(2, Reject),
                _ => default(Stealth),
            };
            lists.push(("10.5.5.5", l4, port, expected));
        }
    }
    check_precedence(
        &fs,
        "port lists and ranges",
        &rules_of(&[
            r#"proto = "tcp"; port = 8100; remote = "10.9.0.0/16"; action = "stealth""#,
            r#"proto = "tcp"; port = [22, "8000-8100", 443, 65535]; action = "allow""#,
            r#"proto = "udp"; port = ["443", "65535-65535"]; action = "reject""#,
        ]),
        &lists,
    );
    check_precedence(
        &fs,
        "proto any with ports is tcp and udp only",
        &format!(
            "[defaults]\ninbound = \"allow\"\n{}",
            rules_of(&[
                r#"proto = "any"; port = ["1-1000"]; action = "allow""#,
                r#"proto = "icmp"; remote = "10.7.0.0/16"; action = "reject""#,
                r#"proto = "any"; port = "1-65535"; action = "stealth""#,
            ])
        ),
        &[
            ("10.1.2.3", syn, 1, rule(0, Allow)),
            ("10.1.2.3", udp, 1000, rule(0, Allow)),
            ("10.1.2.3", syn, 1001, rule(2, Stealth)),
            ("10.1.2.3", udp, 65535, rule(2, Stealth)),
            ("10.1.2.3", syn, 0, default(Allow)),
            ("10.1.2.3", echo, 0, default(Allow)),
            ("10.1.2.3", gre, 0, default(Allow)),
            ("10.7.0.1", echo, 0, rule(1, Reject)),
            ("10.7.0.1", gre, 0, default(Allow)),
            ("2001:db8::5", udp, 999, rule(0, Allow)),
            ("2001:db8::5", echo, 0, default(Allow)),
        ],
    );
    check_precedence(
        &fs,
        "outbound rules take an index but never decide inbound packets",
        &rules_of(&[
            r#"direction = "out"; action = "reject""#,
            r#"direction = "out"; proto = "tcp"; port = 22; action = "allow""#,
            r#"proto = "tcp"; port = 22; action = "allow""#,
        ]),
        &[
            ("10.1.2.3", syn, 22, rule(2, Allow)),
            ("10.1.2.3", syn, 23, default(Stealth)),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Property: random rule sets, random packets; kernel == oracle == compiled tables.

#[derive(Clone, Debug)]
struct GenPacket {
    l4: L4,
    remote: IpAddr,
    local_port: u16,
}

impl GenPacket {
    /// The frame: a UDP, TCP SYN, echo or other packet from `remote` to the host's address of
    /// its family, with a 4-byte payload.
    fn spec(&self) -> Spec {
        let local = if self.remote.is_ipv4() {
            "10.200.0.1"
        } else {
            "2001:db8:ffff::1"
        };
        let mut spec = Spec::new(&self.remote.to_string(), local, self.l4, self.local_port);
        spec.payload = vec![0x11; 4];
        spec
    }
}

impl Fw {
    /// The compiled tables and the kernel reach the oracle's decision for `p`, with the XDP
    /// action and the counters that go with it; `context` (the rules) goes into failures.
    fn agree_on(&mut self, p: &GenPacket, context: &str) -> Result<(), TestCaseError> {
        let spec = p.spec();
        let m = spec.meta();
        let oracle = self.oracle(&m);
        prop_assert_eq!(
            self.lookup(&m),
            oracle,
            "Compiled::lookup for {:?}\n{}",
            m,
            context
        );
        let run = self.run(&spec.frame());
        prop_assert_eq!(
            run.kernel_decision(),
            oracle,
            "kernel for {:?}\n{}",
            m,
            context
        );
        prop_assert_eq!(
            run.action,
            expected_xdp(oracle.action, m.proto),
            "XDP action for {:?}\n{}",
            m,
            context
        );
        prop_assert_eq!(
            run.moved(),
            expected_counters(oracle, m.proto),
            "counters for {:?}\n{}",
            m,
            context
        );
        Ok(())
    }
}

fn gen_packet() -> impl Strategy<Value = GenPacket> {
    let v4 = (0u8..4, 0u8..4, 0u8..4).prop_map(|(a, b, c)| IpAddr::from([10, a, b, c]));
    let v6 = (0u16..4, 0u16..4, 0u16..4)
        .prop_map(|(a, b, c)| IpAddr::from([0x2001, 0xdb8, a, b, 0, 0, 0, c]));
    let remote = prop_oneof![
        8 => v4,
        8 => v6,
        1 => Just(IpAddr::from([192, 0, 2, 1])),
        1 => Just(IpAddr::from([0x2001, 0xdb9, 0, 0, 0, 0, 0, 1])),
    ];
    let port = prop_oneof![
        select(all_port_points()),
        select(all_port_points()).prop_map(|p| p.saturating_add(1)),
        select(all_port_points()).prop_map(|p| p - 1),
        any::<u16>(),
    ];
    let l4 = select(vec![L4::SYN, L4::Udp, L4::Echo, L4::Other]);
    (l4, remote, port).prop_map(|(l4, remote, local_port)| GenPacket {
        l4,
        remote,
        local_port,
    })
}

/// Every packet of the small address and port space, for the userspace comparison.
fn exhaustive_metas() -> Vec<PacketMeta> {
    let mut remotes: Vec<IpAddr> = vec![
        IpAddr::from([192, 0, 2, 1]),
        IpAddr::from([0x2001, 0xdb9, 0, 0, 0, 0, 0, 1]),
    ];
    for a in 0..4u8 {
        for b in 0..4u8 {
            for c in 0..4u8 {
                remotes.push(IpAddr::from([10, a, b, c]));
                remotes.push(IpAddr::from([
                    0x2001,
                    0xdb8,
                    a.into(),
                    b.into(),
                    0,
                    0,
                    0,
                    c.into(),
                ]));
            }
        }
    }
    let mut ports: BTreeSet<u16> = BTreeSet::new();
    for p in all_port_points() {
        ports.extend([p.saturating_sub(1), p, p.saturating_add(1)]);
    }
    ports.extend([0, 5000, 30000]);
    let mut out = Vec::new();
    for remote in remotes {
        for proto in [PacketProto::Icmp, PacketProto::Other] {
            out.push(PacketMeta {
                remote,
                proto,
                local_port: 0,
            });
        }
        for proto in [PacketProto::Tcp, PacketProto::Udp] {
            for &local_port in &ports {
                out.push(PacketMeta {
                    remote,
                    proto,
                    local_port,
                });
            }
        }
    }
    out
}

/// A random rule set (1-40 rules), default and `packets` random packets. One case in eight may
/// use port ranges spanning both clusters.
fn gen_case(packets: usize) -> impl Strategy<Value = (Vec<GenRule>, Action, Vec<GenPacket>)> {
    proptest::bool::weighted(0.125).prop_flat_map(move |wide| {
        (
            proptest::collection::vec(gen_rule(wide), 1..=40),
            select(ACTIONS.to_vec()),
            proptest::collection::vec(gen_packet(), packets),
        )
    })
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        // No regression files next to the test: a failure prints its minimal case.
        failure_persistence: None,
        max_shrink_iters: 300,
        ..ProptestConfig::default()
    })
}

/// Userspace only (no root needed): the compiled tables, evaluated by `Compiled::lookup`, agree
/// with the oracle on every packet of the small address/port space.
#[test]
fn random_rule_sets_compiled_tables_agree_with_the_oracle() {
    let metas = exhaustive_metas();
    let result = runner(96).run(&gen_case(0), |(rules, default_action, _)| {
        let text = render(&rules, default_action);
        let ruleset = parse_rules(&text);
        let compiled = compile::compile(&ruleset, &Default::default()).expect("compiling");
        let policy = Policy::new(&ruleset);
        for m in &metas {
            let oracle = policy.decide(m);
            prop_assert_eq!(
                decode(compiled.lookup(m)),
                oracle,
                "Compiled::lookup for {:?}\n{}",
                m,
                text
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The kernel (BPF_PROG_TEST_RUN) agrees with the oracle and with `Compiled::lookup` on random
/// packets: same deciding rule (read back from RULE_HITS / default_verdict), same action
/// (counters), and the XDP action and reply counters that go with it.
#[test]
fn random_rule_sets_kernel_agrees_with_the_oracle() {
    let fs = BpfFs::new();
    let result = runner(40).run(&gen_case(64), |(rules, default_action, packets)| {
        let text = render(&rules, default_action);
        let mut fw = Fw::load(&fs, &text);
        for p in &packets {
            fw.agree_on(p, &text)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Runtime sets (`fwctl set add`): members written into a loaded generation's maps in place
/// (`compile/runtime.rs`) and removed again leave the kernel, `Compiled::lookup` on the tables
/// the same changes produce, and the oracle on the rules with those members
/// (`Ruleset::with_members`) in agreement. Random rule sets whose rules name `@blocklist` in
/// place of some of their addresses; those addresses, and random others, come and go as
/// members.
#[test]
fn runtime_set_members_written_in_place_agree_with_the_oracle_in_the_kernel() {
    let fs = BpfFs::new();
    let case = (gen_case(48), proptest::collection::vec(gen_packet(), 12));
    let result = runner(24).run(&case, |((mut rules, default_action, packets), extra)| {
        // Rules naming @blocklist instead of their first address; that address a member.
        let mut members: Vec<ipnet::IpNet> = Vec::new();
        for (i, r) in rules.iter_mut().enumerate() {
            if i % 2 == 0 && !r.remote.is_empty() {
                let net = r.remote.remove(0);
                let member = net
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| net.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .expect("generated network");
                members.push(member.trunc());
                r.remote.insert(0, "@blocklist".into());
            }
        }
        // And addresses no rule names, which the packets then come from too.
        members.extend(extra.iter().map(|p| ipnet::IpNet::from(p.remote)));
        let packets: Vec<GenPacket> = packets.into_iter().chain(extra).collect();
        let text = format!(
            "{}\n[sets]\nblocklist = []\n",
            render(&rules, default_action)
        );
        let mut fw = Fw::load(&fs, &text);
        let base = fw.ruleset.clone();
        if fw.generation.runtime.is_none() {
            // Only outbound rules name the set: nothing of it in the XDP program's tables.
            prop_assert!(
                !base.uses_runtime_sets(rules::model::Direction::In),
                "{}",
                text
            );
            return Ok(());
        }
        let mut now = rules::model::Members::new();
        // Add every member, then remove every other one; compare after each half.
        for (phase, remove) in [("added", false), ("half removed", true)] {
            for (i, net) in members.iter().enumerate() {
                if remove && i % 2 == 1 {
                    continue;
                }
                let rt = fw
                    .generation
                    .runtime
                    .as_mut()
                    .expect("rules name a runtime set");
                let change = if remove {
                    rt.remove("blocklist", *net)
                } else {
                    rt.add("blocklist", *net)
                }
                .expect("room for a few members");
                fw.generation
                    .write_change(&change)
                    .expect("writing the maps");
                fw.compiled.apply(&change);
                let set = now.entry("blocklist".into()).or_default();
                set.retain(|m| m != net);
                if !remove {
                    set.push(*net);
                }
            }
            fw.ruleset = base.with_members(&now);
            for p in &packets {
                fw.agree_on(p, &format!("{phase}, members {now:?}\n{text}"))?;
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
