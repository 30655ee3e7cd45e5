//! Connection tracking in the kernel, through BPF_PROG_TEST_RUN: inbound packets run the real
//! XDP program, packets the host sends run the real TC egress program, and the table is read
//! back from its pinned maps. Every transition is checked against a hand-written expectation
//! and against the stateful model (`rules::tracker`), and random packet sequences
//! must leave kernel and model in the same state.

mod support;

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use firewall_common::ct::{self, CtEntry, state};
use firewall_daemon::{compile, conntrack::Tables, kernel::Generation};
use proptest::{
    prelude::*,
    sample::select,
    test_runner::{Config as ProptestConfig, TestRunner},
};
use rules::{
    model::{Action, PacketProto, Ruleset},
    policy::Decision,
    tracker::{Inbound, Quoted, Segment, Tracker},
};
use support::{bpffs::BpfFs, frames, host::Host, lab::Loaded};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const RULES: &str = r#"
[defaults]
inbound = "stealth"

[[rule]]
name = "ssh"
proto = "tcp"
port = 22
action = "allow"

[[rule]]
name = "dns"
proto = "udp"
port = 53
action = "allow"

[[rule]]
name = "closed"
proto = "tcp"
port = 23
action = "reject"

[reject]
rate_per_sec = 1000000
burst = 1000000
global_rate_per_sec = 1000000
"#;

const SYN: u8 = ct::TCP_SYN;
const ACK: u8 = ct::TCP_ACK;
const FIN: u8 = ct::TCP_FIN;
const RST: u8 = ct::TCP_RST;
const SYNACK: u8 = SYN | ACK;
const FINACK: u8 = FIN | ACK;
const RSTACK: u8 = RST | ACK;

fn parse_rules(text: &str) -> Ruleset {
    support::rules::parse(text, "conntrack-test.toml")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// (host, remote, another remote) addresses of a family.
fn addrs(f: Family) -> (IpAddr, IpAddr, IpAddr) {
    let p = |s: &str| s.parse::<IpAddr>().expect("address");
    match f {
        Family::V4 => (p("10.0.0.1"), p("10.0.0.2"), p("10.0.0.3")),
        Family::V6 => (p("2001:db8::1"), p("2001:db8::2"), p("2001:db8::3")),
    }
}

fn tcp(f: Family, local_port: u16, remote_port: u16, flags: u8, seq: u32, ack: u32) -> Segment {
    let (local, remote, _) = addrs(f);
    Segment {
        local,
        remote,
        proto: PacketProto::Tcp,
        local_port,
        remote_port,
        tcp_flags: flags,
        seq,
        ack,
        payload: 0,
        window: 0xfaf0,
        wscale: None,
        icmp_type: 0,
        icmp_id: 0,
        quoted: None,
    }
}

fn udp(f: Family, local_port: u16, remote_port: u16) -> Segment {
    Segment {
        proto: PacketProto::Udp,
        ..tcp(f, local_port, remote_port, 0, 0, 0)
    }
}

fn icmp(f: Family, icmp_type: u8, id: u16) -> Segment {
    Segment {
        proto: PacketProto::Icmp,
        icmp_type,
        icmp_id: id,
        ..tcp(f, 0, 0, 0, 0, 0)
    }
}

fn echo_request(f: Family) -> u8 {
    if f == Family::V4 { 8 } else { 128 }
}

fn echo_reply(f: Family) -> u8 {
    if f == Family::V4 { 0 } else { 129 }
}

/// An ICMP/ICMPv6 destination-unreachable (port) about a packet the host sent.
fn unreachable_about(f: Family, q: Quoted) -> Segment {
    Segment {
        quoted: Some(q),
        ..icmp(f, if f == Family::V4 { 3 } else { 1 }, 0)
    }
}

fn ip_str(ip: IpAddr) -> String {
    ip.to_string()
}

/// The frame of `seg` as it would cross the interface: inbound from the remote, or sent by the
/// host.
fn frame(seg: &Segment, inbound: bool) -> Vec<u8> {
    let (src, dst, sport, dport) = if inbound {
        (seg.remote, seg.local, seg.remote_port, seg.local_port)
    } else {
        (seg.local, seg.remote, seg.local_port, seg.remote_port)
    };
    let v6 = matches!(src, IpAddr::V6(_));
    let (proto, l4) = match seg.proto {
        PacketProto::Tcp => {
            let mut t = Vec::new();
            t.extend_from_slice(&sport.to_be_bytes());
            t.extend_from_slice(&dport.to_be_bytes());
            t.extend_from_slice(&seg.seq.to_be_bytes());
            t.extend_from_slice(&seg.ack.to_be_bytes());
            // Options as Linux sends them on a SYN: MSS, SACK permitted, timestamps, window
            // scale (the parser must find the last behind the others).
            let options: Vec<u8> = match seg.wscale {
                Some(shift) => [
                    &[2u8, 4, 0x05, 0xb4, 4, 2, 8, 10][..],
                    &[0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, shift],
                ]
                .concat(),
                None => Vec::new(),
            };
            let doff = (20 + options.len() as u8) / 4;
            t.extend_from_slice(&[doff << 4, seg.tcp_flags]);
            t.extend_from_slice(&seg.window.to_be_bytes());
            t.extend_from_slice(&[0, 0, 0, 0]);
            t.extend_from_slice(&options);
            t.resize(t.len() + seg.payload as usize, 0x61);
            (6u8, t)
        }
        PacketProto::Udp => {
            let mut u = frames::udp_header(sport, dport, 4);
            u.extend_from_slice(b"ping");
            (17, u)
        }
        PacketProto::Icmp => {
            let body = match seg.quoted {
                None => {
                    let mut b = seg.icmp_id.to_be_bytes().to_vec();
                    b.extend_from_slice(&[0, 1]);
                    b
                }
                Some(q) => {
                    let mut b = vec![0u8; 4];
                    b.extend(quoted_packet(&q));
                    b
                }
            };
            if v6 {
                (
                    58,
                    frames::icmpv6_message(&ip_str(src), &ip_str(dst), seg.icmp_type, 0, &body),
                )
            } else {
                let rest = [body[0], body[1], body[2], body[3]];
                (
                    1,
                    frames::icmpv4_message(
                        seg.icmp_type,
                        if seg.quoted.is_some() { 3 } else { 0 },
                        rest,
                        &body[4..],
                    ),
                )
            }
        }
        PacketProto::Other => (47, vec![0; 8]),
    };
    if v6 {
        frames::ipv6_frame(&ip_str(src), &ip_str(dst), &[], proto, &l4)
    } else {
        frames::ipv4_frame(&ip_str(src), &ip_str(dst), proto, &l4)
    }
}

/// The IP header + first 8 bytes of a packet the host sent, as an ICMP error quotes it.
fn quoted_packet(q: &Quoted) -> Vec<u8> {
    let (proto, l4): (u8, Vec<u8>) = match q.proto {
        PacketProto::Tcp => (
            6,
            frames::tcp_header(q.src_port, q.dst_port, SYN)[..8].to_vec(),
        ),
        PacketProto::Udp => (17, frames::udp_header(q.src_port, q.dst_port, 0)),
        _ => {
            let t = if matches!(q.src, IpAddr::V4(_)) {
                8
            } else {
                128
            };
            let mut m = vec![t, 0, 0, 0];
            m.extend_from_slice(&q.src_port.to_be_bytes());
            m.extend_from_slice(&[0, 1]);
            (if t == 8 { 1 } else { 58 }, m)
        }
    };
    let mut out = match q.src {
        IpAddr::V4(_) => frames::ipv4_header(&ip_str(q.src), &ip_str(q.dst), proto, 64, &[]),
        IpAddr::V6(_) => frames::ipv6_header(&ip_str(q.src), &ip_str(q.dst), proto, 64),
    };
    out.extend(l4);
    out
}

/// The kernel side: one generation of the programs with the pinned tables, and the model.
struct Lab {
    ruleset: &'static Ruleset,
    generation: Generation,
    tables: Tables,
    host: Host,
    _fs: BpfFs,
}

impl Lab {
    fn new(text: &str) -> Self {
        let ruleset: &'static Ruleset = Box::leak(Box::new(parse_rules(text)));
        let fs = BpfFs::new();
        let pin = fs.pin_dir("ct");
        let Loaded {
            generation, tables, ..
        } = Loaded::new(ruleset, &pin, text);
        let host = Host::open(&pin);
        Self {
            ruleset,
            generation,
            tables,
            host,
            _fs: fs,
        }
    }

    fn counters(&self) -> BTreeMap<&'static str, u64> {
        self.generation.counters().expect("counters")
    }

    /// Runs an inbound packet through XDP; returns the XDP action and the tracker outcome the
    /// counters show.
    fn inbound(&mut self, seg: &Segment) -> (u32, Inbound) {
        self.host.add(seg.local);
        let c0 = self.counters();
        let h0 = self.generation.rule_hits().expect("hits");
        let (action, _) = self
            .generation
            .test_run(&frame(seg, true))
            .expect("XDP test run");
        let c1 = self.counters();
        let h1 = self.generation.rule_hits().expect("hits");
        let d = |k: &str| c1[k] - c0[k];
        let verdict = if d("allowed") == 1 {
            Action::Allow
        } else if d("rejected") == 1 {
            Action::Reject
        } else {
            Action::Stealth
        };
        let hit = h1.iter().zip(&h0).position(|(a, b)| a != b);
        let outcome = if d("pass_tracked") == 1 {
            Inbound::Tracked
        } else if d("pass_related") == 1 {
            Inbound::Related
        } else if d("drop_ct_invalid") == 1 {
            Inbound::Invalid
        } else if d("drop_ipv6_embedded_ipv4") == 1 {
            Inbound::EmbeddedIpv4
        } else if d("ct_invalid_no_conn") == 1 {
            Inbound::NoConnection(verdict)
        } else if d("default_verdict") == 1 || hit.is_some() {
            Inbound::Rules(Decision {
                action: verdict,
                rule: hit.map(|i| i as u32),
            })
        } else {
            Inbound::Denied(verdict)
        };
        (action, outcome)
    }

    fn outbound(&mut self, seg: &Segment) {
        let rc = self
            .generation
            .test_run_egress(&frame(seg, false))
            .expect("TC test run");
        assert_eq!(rc, 0, "the egress program never drops (TC_ACT_OK)");
    }

    /// The kernel's entry for `seg`'s flow and whether it is in the confirmed table.
    fn entry(&self, seg: &Segment) -> Option<(CtEntry, bool)> {
        let key = Tracker::key_of(seg);
        self.tables
            .flows()
            .into_iter()
            .find(|f| f.key == key)
            .map(|f| (f.entry, f.confirmed()))
    }
}

fn xdp_action(outcome: Inbound) -> u32 {
    match outcome.action() {
        Action::Allow => XDP_PASS,
        Action::Stealth => XDP_DROP,
        Action::Reject => XDP_TX,
    }
}

/// One step of a scenario.
#[derive(Clone, Debug)]
enum Step {
    /// The host sends this; afterwards the flow is in `state` (0: not tracked).
    Out(Segment, u8),
    /// This arrives; the tracker says `outcome`; afterwards the flow is in `state`.
    In(Segment, Inbound, u8),
}

/// Runs a scenario through the kernel and the model, checking both against the expectations.
fn scenario(name: &str, steps: &[Step]) {
    let mut lab = Lab::new(RULES);
    let mut model = Tracker::new(lab.ruleset);
    for (i, step) in steps.iter().enumerate() {
        let (seg, want_state) = match step {
            Step::Out(seg, st) => {
                lab.outbound(seg);
                model.outbound(seg);
                (seg, *st)
            }
            Step::In(seg, want, st) => {
                let (action, got) = lab.inbound(seg);
                let modeled = model.inbound(seg);
                let what = format!("{name}, step {i}: {seg:?}");
                assert_eq!(got, *want, "kernel outcome: {what}");
                assert_eq!(modeled, *want, "model outcome: {what}");
                // An unanswerable reject (ICMP, RST) is a drop.
                let expected_action = xdp_action(*want);
                assert!(
                    action == expected_action || (expected_action == XDP_TX && action == XDP_DROP),
                    "XDP action {action} (want {expected_action}): {what}"
                );
                (seg, *st)
            }
        };
        let what = format!("{name}, after step {i}: {seg:?}");
        let kernel = lab.entry(seg);
        let key = Tracker::key_of(seg);
        let modeled = model.flow(&key);
        match (want_state, kernel, modeled) {
            (0, None, None) => {}
            (0, k, m) => panic!("{what}: expected no entry, kernel {k:?}, model {m:?}"),
            (st, Some((k, kc)), Some(m)) => {
                assert_eq!(
                    (state::name(k.state), k.origin, k.flags),
                    (state::name(st), m.entry.origin, m.entry.flags),
                    "kernel entry vs expected state and model: {what}"
                );
                assert_eq!(m.entry.state, st, "model state: {what}");
                assert_eq!(kc, m.confirmed, "table (confirmed or not): {what}");
                assert_eq!(
                    kc,
                    state::confirmed(st, k.origin),
                    "table of state {}: {what}",
                    state::name(st)
                );
            }
            (st, k, m) => panic!(
                "{what}: expected {}, kernel {k:?}, model {m:?}",
                state::name(st)
            ),
        }
    }
}

fn allowed_by(rule: u32) -> Inbound {
    Inbound::Rules(Decision {
        action: Action::Allow,
        rule: Some(rule),
    })
}

fn default_stealth() -> Inbound {
    Inbound::Rules(Decision {
        action: Action::Stealth,
        rule: None,
    })
}

use Step::{In, Out};
use state::*;

#[test]
fn tcp_opened_by_the_host_full_lifecycle() {
    for f in FAMILIES {
        let t = |flags, seq, ack| tcp(f, 40000, 443, flags, seq, ack);
        let mut data = t(ACK, 501, 101);
        data.payload = 10;
        scenario(
            &format!("{f:?} host-opened"),
            &[
                Out(t(SYN, 100, 0), SYN_SENT),
                // Before the SYN-ACK, nothing but a RST acknowledging the SYN may arrive.
                In(t(ACK, 500, 101), Inbound::Invalid, SYN_SENT),
                In(t(RST, 500, 0), Inbound::Invalid, SYN_SENT),
                In(t(RSTACK, 500, 999), Inbound::Invalid, SYN_SENT),
                In(t(SYNACK, 500, 101), Inbound::Tracked, SYN_RECV),
                Out(t(ACK, 101, 501), ESTABLISHED),
                In(data, Inbound::Tracked, ESTABLISHED),
                // A SYN-ACK from the host in an established flow it opened is impossible; the
                // egress program never drops, it just leaves the state alone.
                Out(t(SYNACK, 101, 511), ESTABLISHED),
                Out(t(FINACK, 101, 511), FIN_WAIT),
                In(t(ACK, 511, 102), Inbound::Tracked, CLOSE_WAIT),
                In(t(FINACK, 511, 102), Inbound::Tracked, LAST_ACK),
                Out(t(ACK, 102, 512), TIME_WAIT),
                In(t(FINACK, 511, 102), Inbound::Tracked, TIME_WAIT),
                // A new SYN on the tuple is a new connection, judged by the rules (no rule
                // allows port 40000: default stealth), and the old flow is forgotten.
                In(t(SYN, 9000, 0), default_stealth(), 0),
            ],
        );
    }
}

#[test]
fn tcp_opened_by_a_remote_host_under_an_allow_rule() {
    for f in FAMILIES {
        let t = |flags, seq, ack| tcp(f, 22, 51000, flags, seq, ack);
        scenario(
            &format!("{f:?} remote-opened"),
            &[
                In(t(SYN, 1000, 0), allowed_by(0), SYN_SENT),
                In(t(SYN, 1000, 0), Inbound::Tracked, SYN_SENT),
                // The opener cannot send a SYN-ACK.
                In(t(SYNACK, 1000, 1), Inbound::Invalid, SYN_SENT),
                Out(t(SYNACK, 7000, 1001), SYN_RECV),
                In(t(ACK, 1001, 7001), Inbound::Tracked, ESTABLISHED),
                // The opener's SYN on its live tuple (a reused port overtaking the old
                // connection's RST) passes to the host and leaves the flow as it is; the
                // host cannot send one.
                In(t(SYN, 3000, 0), Inbound::Tracked, ESTABLISHED),
                In(t(SYNACK, 1001, 1), Inbound::Invalid, ESTABLISHED),
                // RSTs: far from the expected sequence number dropped; plausible but inexact
                // passed to the host without ending the flow; exact ends it.
                In(t(RST, 1001 + (1 << 30), 0), Inbound::Invalid, ESTABLISHED),
                In(t(RST, 1001 + 4000, 0), Inbound::Tracked, ESTABLISHED),
                In(t(RST, 1001, 0), Inbound::Tracked, CLOSE),
                In(t(ACK, 1001, 7001), Inbound::Tracked, CLOSE),
                In(t(SYN, 5000, 0), allowed_by(0), SYN_SENT),
            ],
        );
    }
}

#[test]
fn remote_closes_first_and_simultaneous_close() {
    for f in FAMILIES {
        let t = |flags, seq, ack| tcp(f, 22, 51001, flags, seq, ack);
        scenario(
            &format!("{f:?} remote closes"),
            &[
                In(t(SYN, 1, 0), allowed_by(0), SYN_SENT),
                Out(t(SYNACK, 10, 2), SYN_RECV),
                // The final ACK and the first FIN in one segment.
                In(t(FINACK, 2, 11), Inbound::Tracked, FIN_WAIT),
                Out(t(ACK, 11, 3), CLOSE_WAIT),
                Out(t(FINACK, 11, 3), LAST_ACK),
                In(t(ACK, 3, 12), Inbound::Tracked, TIME_WAIT),
            ],
        );
        let t = |flags, seq, ack| tcp(f, 22, 51002, flags, seq, ack);
        scenario(
            &format!("{f:?} simultaneous close"),
            &[
                In(t(SYN, 1, 0), allowed_by(0), SYN_SENT),
                Out(t(SYNACK, 10, 2), SYN_RECV),
                In(t(ACK, 2, 11), Inbound::Tracked, ESTABLISHED),
                Out(t(FINACK, 11, 2), FIN_WAIT),
                In(t(FINACK, 2, 11), Inbound::Tracked, LAST_ACK),
                Out(t(ACK, 12, 3), TIME_WAIT),
            ],
        );
    }
}

#[test]
fn tcp_without_a_connection_is_judged_by_the_invalid_policy() {
    for f in FAMILIES {
        let t = |flags| tcp(f, 22, 52000, flags, 77, 1);
        // Even on a port a rule allows, a segment that is not a SYN needs a connection.
        scenario(
            &format!("{f:?} no connection"),
            &[
                In(t(ACK), Inbound::NoConnection(Action::Stealth), 0),
                In(t(FINACK), Inbound::NoConnection(Action::Stealth), 0),
                In(t(SYNACK), Inbound::NoConnection(Action::Stealth), 0),
                In(t(RST), Inbound::NoConnection(Action::Stealth), 0),
                In(t(SYN | FIN), Inbound::NoConnection(Action::Stealth), 0),
                In(t(0), Inbound::NoConnection(Action::Stealth), 0),
            ],
        );
        // A SYN the rules do not allow leaves no entry.
        scenario(
            &format!("{f:?} denied SYN"),
            &[
                In(tcp(f, 8080, 52001, SYN, 1, 0), default_stealth(), 0),
                In(
                    tcp(f, 8080, 52001, ACK, 2, 1),
                    Inbound::NoConnection(Action::Stealth),
                    0,
                ),
                In(
                    tcp(f, 23, 52001, SYN, 1, 0),
                    Inbound::Rules(Decision {
                        action: Action::Reject,
                        rule: Some(2),
                    }),
                    0,
                ),
            ],
        );
    }
}

#[test]
fn invalid_policy_reject_answers_with_a_rst() {
    let rules = format!("{RULES}\n[conntrack]\ninvalid = \"reject\"\n");
    let mut lab = Lab::new(&rules);
    for f in FAMILIES {
        let seg = tcp(f, 22, 52002, ACK, 77, 12345);
        let (action, outcome) = lab.inbound(&seg);
        assert_eq!(outcome, Inbound::NoConnection(Action::Reject), "{f:?}");
        assert_eq!(action, XDP_TX, "{f:?}: answered with a RST");
    }
}

#[test]
fn host_traffic_on_an_unknown_connection_is_picked_up() {
    for f in FAMILIES {
        let t = |flags, seq, ack| tcp(f, 41000, 80, flags, seq, ack);
        scenario(
            &format!("{f:?} pick-up"),
            &[
                // The host's RST for something unknown creates nothing.
                Out(t(RSTACK, 5, 6), 0),
                Out(t(ACK, 5, 6), ESTABLISHED),
                // The remote side is learned from the host's acknowledgment.
                In(t(ACK, 6, 5), Inbound::Tracked, ESTABLISHED),
                In(t(ACK, 6, 5 + 1000), Inbound::Invalid, ESTABLISHED),
            ],
        );
        let t = |flags, seq, ack| tcp(f, 22, 41001, flags, seq, ack);
        scenario(
            &format!("{f:?} pick-up of a SYN-ACK"),
            &[
                Out(t(SYNACK, 5, 6), SYN_RECV),
                In(t(ACK, 6, 6), Inbound::Tracked, ESTABLISHED),
            ],
        );
    }
}

#[test]
fn udp_flows_both_ways() {
    for f in FAMILIES {
        scenario(
            &format!("{f:?} udp"),
            &[
                // The host asks, the reply passes, the flow is confirmed.
                Out(udp(f, 40053, 53), UDP_UNREPLIED),
                In(udp(f, 40053, 53), Inbound::Tracked, UDP_REPLIED),
                In(udp(f, 40053, 53), Inbound::Tracked, UDP_REPLIED),
                // A remote host asks a port a rule allows; the host answers.
                In(udp(f, 53, 40100), allowed_by(1), UDP_UNREPLIED),
                In(udp(f, 53, 40100), Inbound::Tracked, UDP_UNREPLIED),
                Out(udp(f, 53, 40100), UDP_REPLIED),
                // No rule, no flow: default stealth, nothing recorded.
                In(udp(f, 5000, 40101), default_stealth(), 0),
                // Another remote port is another flow.
                In(udp(f, 40053, 54), default_stealth(), 0),
            ],
        );
    }
}

#[test]
fn icmp_echo_replies_match_the_request_identifier() {
    for f in FAMILIES {
        scenario(
            &format!("{f:?} echo"),
            &[
                Out(icmp(f, echo_request(f), 7), ICMP_ECHO),
                In(icmp(f, echo_reply(f), 7), Inbound::Tracked, ICMP_ECHO),
                In(icmp(f, echo_reply(f), 8), default_stealth(), 0),
                // An echo request from outside is for the rules (none allows ICMP here).
                In(icmp(f, echo_request(f), 9), default_stealth(), 0),
            ],
        );
    }
}

#[test]
fn icmp_errors_about_tracked_flows_pass() {
    for f in FAMILIES {
        let (host, remote, other) = addrs(f);
        let q = |proto, dst, dport| Quoted {
            proto,
            src: host,
            dst,
            src_port: 40200,
            dst_port: dport,
        };
        scenario(
            &format!("{f:?} related"),
            &[
                Out(udp(f, 40200, 9999), UDP_UNREPLIED),
                In(
                    unreachable_about(f, q(PacketProto::Udp, remote, 9999)),
                    Inbound::Related,
                    0,
                ),
                // About another destination, port or protocol: not related, judged.
                In(
                    unreachable_about(f, q(PacketProto::Udp, other, 9999)),
                    default_stealth(),
                    0,
                ),
                In(
                    unreachable_about(f, q(PacketProto::Udp, remote, 9998)),
                    default_stealth(),
                    0,
                ),
                In(
                    unreachable_about(f, q(PacketProto::Tcp, remote, 9999)),
                    default_stealth(),
                    0,
                ),
                Out(tcp(f, 40200, 443, SYN, 1, 0), SYN_SENT),
                In(
                    unreachable_about(f, q(PacketProto::Tcp, remote, 443)),
                    Inbound::Related,
                    0,
                ),
                Out(icmp(f, echo_request(f), 40200), ICMP_ECHO),
                In(
                    unreachable_about(f, q(PacketProto::Icmp, remote, 0)),
                    Inbound::Related,
                    0,
                ),
            ],
        );
    }
}

/// A flow the rules now deny (`fwctl reload --recheck`) gets the denying verdict.
#[test]
fn denied_flows_get_the_recorded_verdict() {
    let mut lab = Lab::new(RULES);
    let ruleset = lab.ruleset;
    let cfg = firewall_daemon::kernel::ct_config(&ruleset.conntrack, 1);
    for f in FAMILIES {
        let t = |flags, seq, ack| tcp(f, 22, 53000, flags, seq, ack);
        lab.inbound(&t(SYN, 1, 0));
        lab.outbound(&t(SYNACK, 10, 2));
        assert_eq!(lab.inbound(&t(ACK, 2, 11)).1, Inbound::Tracked);
        let key = Tracker::key_of(&t(ACK, 2, 11));
        let flow = lab
            .tables
            .flows()
            .into_iter()
            .find(|fl| fl.key == key)
            .expect("tracked");
        let word = firewall_common::verdict(5, firewall_common::ACTION_REJECT);
        assert!(lab.tables.deny(&flow, word, &cfg, flow.entry.created_ns));
        let (action, outcome) = lab.inbound(&t(ACK, 2, 11));
        assert_eq!(outcome, Inbound::Denied(Action::Reject), "{f:?}");
        assert_eq!(action, XDP_TX, "{f:?}: the reject is answered");
        // The host's packets do not revive it.
        lab.outbound(&t(ACK, 11, 2));
        assert_eq!(
            lab.inbound(&t(ACK, 2, 11)).1,
            Inbound::Denied(Action::Reject)
        );
    }
}

#[test]
fn expired_entries_are_ignored_and_collected() {
    let rules = format!("{RULES}\n[conntrack.timeouts]\ntcp_syn_sent = 1\nudp_unreplied = 1\n");
    let mut lab = Lab::new(&rules);
    let syn = tcp(Family::V4, 40300, 443, SYN, 1, 0);
    lab.outbound(&syn);
    lab.outbound(&udp(Family::V4, 40300, 53));
    assert!(lab.entry(&syn).is_some());
    // Time passing is the point here, not synchronisation.
    std::thread::sleep(Duration::from_millis(1200));
    let (_, outcome) = lab.inbound(&tcp(Family::V4, 40300, 443, SYNACK, 9, 2));
    assert_eq!(outcome, Inbound::NoConnection(Action::Stealth));
    let (_, outcome) = lab.inbound(&udp(Family::V4, 40300, 53));
    assert_eq!(outcome, default_stealth());
    let removed = lab
        .tables
        .expire(firewall_daemon::conntrack::monotonic_ns());
    assert_eq!(removed, 2, "both expired entries collected");
    assert!(lab.entry(&syn).is_none());
    assert_eq!(lab.counters()["ct_daemon_removed"], 2);
}

/// A flood of SYNs from many sources churns the unconfirmed (LRU) table only: established
/// flows stay, new connections are still judged by the rules, evictions are counted.
#[test]
fn syn_flood_evicts_only_unconfirmed_flows() {
    let rules = format!("{RULES}\n[conntrack]\nunconfirmed_size = 1024\ntable_size = 1024\n");
    let mut lab = Lab::new(&rules);
    let est = |flags, seq, ack| tcp(Family::V4, 22, 54000, flags, seq, ack);
    lab.inbound(&est(SYN, 1, 0));
    lab.outbound(&est(SYNACK, 10, 2));
    assert_eq!(lab.inbound(&est(ACK, 2, 11)).1, Inbound::Tracked);
    const FLOOD: u32 = 5000;
    for i in 0..FLOOD {
        let mut s = tcp(Family::V4, 22, 1024 + (i % 60000) as u16, SYN, i, 0);
        s.remote = IpAddr::V4(std::net::Ipv4Addr::from(0x0a80_0000 + i));
        let (_, outcome) = lab.inbound(&s);
        assert_eq!(outcome, allowed_by(0), "SYN {i} judged by the rules");
    }
    assert_eq!(
        lab.inbound(&est(ACK, 2, 11)).1,
        Inbound::Tracked,
        "the established flow survives the flood"
    );
    let (entry, confirmed) = lab.entry(&est(ACK, 2, 11)).expect("still tracked");
    assert!(confirmed && entry.state == ESTABLISHED);
    let c = lab.counters();
    let (_, unconfirmed) = lab.tables.sizes();
    let evicted = c["ct_new_inserted"] - c["ct_new_removed"] - unconfirmed as u64;
    assert!(
        unconfirmed <= 1024 + 64 && evicted >= u64::from(FLOOD) - 1100,
        "LRU full and evicting: {unconfirmed} present, {evicted} evicted, counters {c:?}"
    );
}

/// When the confirmed table is full, newly confirmed flows stay tracked in the unconfirmed
/// table, and that is counted.
#[test]
fn full_confirmed_table_keeps_tracking_in_the_unconfirmed_one() {
    let rules = format!("{RULES}\n[conntrack]\ntable_size = 1024\nunconfirmed_size = 4096\n");
    let mut lab = Lab::new(&rules);
    const N: u32 = 1100;
    for i in 0..N {
        let mut s = tcp(Family::V4, 22, 2000, SYN, 1, 0);
        s.remote = IpAddr::V4(std::net::Ipv4Addr::from(0x0a90_0000 + i));
        lab.inbound(&s);
        lab.outbound(&Segment {
            tcp_flags: SYNACK,
            seq: 10,
            ack: 2,
            ..s
        });
        let ack = Segment {
            tcp_flags: ACK,
            seq: 2,
            ack: 11,
            ..s
        };
        assert_eq!(lab.inbound(&ack).1, Inbound::Tracked, "flow {i}");
        assert_eq!(lab.inbound(&ack).1, Inbound::Tracked, "flow {i} again");
    }
    let c = lab.counters();
    assert!(c["ct_confirmed_full"] >= u64::from(N) - 1024, "{c:?}");
    let (confirmed, _) = lab.tables.sizes();
    assert!(confirmed <= 1024 + 64, "{confirmed}");
}

// ---------------------------------------------------------------------------------------------
// Attacks on the tracker (issue 14, items 3, 5 and 8). Each performed the attack successfully
// against the tracker before sequence windows and the host-opened table.

/// A spoofed source: one address per attempt.
fn spoofed(seg: Segment, i: u32) -> Segment {
    Segment {
        remote: IpAddr::V4(std::net::Ipv4Addr::from(0x0a80_0000 + i)),
        ..seg
    }
}

/// A remote host's connection to port 22, established: SYN 1000, the host's SYN-ACK 7000,
/// the ACK of it. The host's window is 0xfaf0 (no scaling).
fn established(lab: &mut Lab, model: &mut Tracker, t: impl Fn(u8, u32, u32) -> Segment) {
    for (seg, inbound) in [
        (t(SYN, 1000, 0), true),
        (t(SYNACK, 7000, 1001), false),
        (t(ACK, 1001, 7001), true),
    ] {
        if inbound {
            let (_, got) = lab.inbound(&seg);
            assert_eq!(got, model.inbound(&seg), "kernel and model: {seg:?}");
        } else {
            lab.outbound(&seg);
            model.outbound(&seg);
        }
    }
    assert_eq!(
        lab.entry(&t(ACK, 0, 0)).map(|(e, c)| (e.state, c)),
        Some((ESTABLISHED, true))
    );
}

/// Item 3: spoofed SYNs the host answers, then ACKs that do not acknowledge the host's SYN-ACK
/// (a blind sender cannot know it), RSTs answering spoofed SYNs, and spoofed UDP the host
/// answers: none of it reaches the never-evicting confirmed table, which keeps its room for a
/// real connection.
#[test]
fn blind_handshakes_do_not_fill_the_confirmed_table() {
    let rules = format!("{RULES}\n[conntrack]\ntable_size = 1024\nunconfirmed_size = 8192\n");
    let mut lab = Lab::new(&rules);
    const N: u32 = 1200;
    for i in 0..N {
        let t = |flags, seq, ack| spoofed(tcp(Family::V4, 22, 3000, flags, seq, ack), i);
        lab.inbound(&t(SYN, i, 0));
        lab.outbound(&t(SYNACK, 7000 + i, i + 1));
        // The blind ACK: right sequence number (the attacker chose the ISN), guessed ack.
        let guess = (i + 1).wrapping_mul(2_654_435_761);
        let (action, _) = lab.inbound(&t(ACK, i + 1, guess));
        assert_ne!(action, XDP_TX, "attempt {i}");
        // One in the window but not exact passes to the host and proves nothing.
        let (_, outcome) = lab.inbound(&t(ACK, i + 1, 7000 + i));
        assert_eq!(outcome, Inbound::Tracked, "attempt {i}");
    }
    for i in 0..N {
        // A port a rule allows with nothing listening: the host answers with a RST.
        let t = |flags, seq, ack| spoofed(tcp(Family::V4, 22, 3001, flags, seq, ack), N + i);
        lab.inbound(&t(SYN, i, 0));
        lab.outbound(&t(RSTACK, 0, i + 1));
        // The host answers spoofed UDP; the spoofer sends again, blind.
        let u = spoofed(udp(Family::V4, 53, 3002), 2 * N + i);
        lab.inbound(&u);
        lab.outbound(&u);
        assert_eq!(lab.inbound(&u).1, Inbound::Tracked);
    }
    let (confirmed, unconfirmed) = lab.tables.sizes();
    assert_eq!(confirmed, 0, "nothing blind is confirmed");
    assert_eq!(
        unconfirmed,
        2 * N as usize,
        "the handshakes and the UDP flows wait in the LRU table; the reset ones are gone"
    );
    let c = lab.counters();
    assert_eq!(c["ct_handshake_reset"], u64::from(N), "{c:?}");
    assert!(c["ct_out_of_window"] >= u64::from(N) - 2, "{c:?}");
    // A real connection still gets its place.
    let mut model = Tracker::new(lab.ruleset);
    established(&mut lab, &mut model, |flags, seq, ack| {
        tcp(Family::V4, 22, 3003, flags, seq, ack)
    });
    assert_eq!(lab.counters()["ct_confirmed_full"], 0);
}

/// Item 5: a forged FIN (wrong sequence number, or acknowledging data the host never sent)
/// does not move an established flow.
#[test]
fn forged_fin_does_not_close() {
    for f in FAMILIES {
        let t = |flags, seq, ack| tcp(f, 22, 55000, flags, seq, ack);
        scenario(
            &format!("{f:?} forged FIN"),
            &[
                In(t(SYN, 1000, 0), allowed_by(0), SYN_SENT),
                Out(t(SYNACK, 7000, 1001), SYN_RECV),
                In(t(ACK, 1001, 7001), Inbound::Tracked, ESTABLISHED),
                In(
                    t(FINACK, 1001 + (1 << 31), 7001),
                    Inbound::Invalid,
                    ESTABLISHED,
                ),
                In(
                    t(FINACK, 1001 + 3_000_000, 7001),
                    Inbound::Invalid,
                    ESTABLISHED,
                ),
                In(
                    t(FINACK, 1001, 7001 + 50_000),
                    Inbound::Invalid,
                    ESTABLISHED,
                ),
                In(
                    t(FINACK, 1001, 7001u32.wrapping_sub(100_000)),
                    Inbound::Invalid,
                    ESTABLISHED,
                ),
                // The real one.
                In(t(FINACK, 1001, 7001), Inbound::Tracked, FIN_WAIT),
            ],
        );
    }
}

/// Item 5: forged ACKs cannot drag the expected sequence number to a value the attacker
/// chose, so a RST at that value does not close the flow; a RST in the window but not exact
/// reaches the host (for its challenge ACK) without closing anything.
#[test]
fn forged_acks_cannot_drag_the_expected_sequence() {
    for f in FAMILIES {
        let t = |flags, seq, ack| tcp(f, 22, 55001, flags, seq, ack);
        let chosen = 1001 + 3_000_000;
        scenario(
            &format!("{f:?} dragged sequence"),
            &[
                In(t(SYN, 1000, 0), allowed_by(0), SYN_SENT),
                Out(t(SYNACK, 7000, 1001), SYN_RECV),
                In(t(ACK, 1001, 7001), Inbound::Tracked, ESTABLISHED),
                In(t(ACK, chosen - 1, 7001), Inbound::Invalid, ESTABLISHED),
                In(t(ACK, 1001 + 60_000, 7001), Inbound::Tracked, ESTABLISHED),
                In(t(ACK, chosen, 7001), Inbound::Invalid, ESTABLISHED),
                In(t(RST, chosen, 0), Inbound::Invalid, ESTABLISHED),
                // In the window, not exact: passed, not closed.
                In(t(RST, 1001 + 61_000, 0), Inbound::Tracked, ESTABLISHED),
                In(t(ACK, 1001, 7001), Inbound::Tracked, ESTABLISHED),
            ],
        );
    }
}

/// Item 5: a tuple whose only answer was a RST is forgotten: an ACK scan of it meets no
/// connection (`[conntrack] invalid`), whichever side opened it.
#[test]
fn reset_handshakes_are_forgotten() {
    for f in FAMILIES {
        let t = |flags, seq, ack| tcp(f, 22, 55002, flags, seq, ack);
        scenario(
            &format!("{f:?} remote SYN, host RST"),
            &[
                In(t(SYN, 1000, 0), allowed_by(0), SYN_SENT),
                Out(t(RSTACK, 0, 1001), 0),
                In(t(ACK, 1001, 1), Inbound::NoConnection(Action::Stealth), 0),
            ],
        );
        let t = |flags, seq, ack| tcp(f, 40500, 80, flags, seq, ack);
        scenario(
            &format!("{f:?} host SYN, remote RST"),
            &[
                Out(t(SYN, 100, 0), SYN_SENT),
                In(t(RSTACK, 0, 101), Inbound::Tracked, 0),
                In(t(ACK, 5, 101), Inbound::NoConnection(Action::Stealth), 0),
            ],
        );
        let t = |flags, seq, ack| tcp(f, 22, 55003, flags, seq, ack);
        scenario(
            &format!("{f:?} reset during the handshake"),
            &[
                In(t(SYN, 1000, 0), allowed_by(0), SYN_SENT),
                Out(t(SYNACK, 7000, 1001), SYN_RECV),
                In(t(RST, 1001, 0), Inbound::Tracked, 0),
                In(
                    t(ACK, 1001, 7001),
                    Inbound::NoConnection(Action::Stealth),
                    0,
                ),
            ],
        );
    }
}

/// Item 5: segments of a tracked flow outside its windows are dropped: sequence numbers past
/// what the host allowed, acknowledgments of data the host never sent. Window scaling is
/// read from the SYN options: the same sequence number passes with the scaled window.
#[test]
fn out_of_window_segments_are_dropped() {
    for f in FAMILIES {
        for (shift, far_passes) in [(None, false), (Some(7u8), true)] {
            let t = |flags, seq, ack| Segment {
                wscale: if flags & SYN != 0 { shift } else { None },
                ..tcp(f, 22, 55004, flags, seq, ack)
            };
            let mut host_data = t(ACK, 7001, 1001);
            host_data.payload = 1000;
            let mut far = t(ACK, 1001 + 1_000_000, 8001);
            far.payload = 100;
            let far_outcome = if far_passes {
                Inbound::Tracked
            } else {
                Inbound::Invalid
            };
            scenario(
                &format!("{f:?} windows, scale {shift:?}"),
                &[
                    In(t(SYN, 1000, 0), allowed_by(0), SYN_SENT),
                    Out(t(SYNACK, 7000, 1001), SYN_RECV),
                    In(t(ACK, 1001, 7001), Inbound::Tracked, ESTABLISHED),
                    // The host's window 0xfaf0, scaled by 2^7 when both SYNs had the option.
                    Out(host_data, ESTABLISHED),
                    In(t(ACK, 1001, 7001 + 1001), Inbound::Invalid, ESTABLISHED),
                    In(t(ACK, 1001, 8001), Inbound::Tracked, ESTABLISHED),
                    In(far, far_outcome, ESTABLISHED),
                    In(
                        t(ACK, 1001 + 20_000_000, 8001),
                        Inbound::Invalid,
                        ESTABLISHED,
                    ),
                    In(
                        t(ACK, 1001u32.wrapping_sub(10_000_000), 8001),
                        Inbound::Invalid,
                        ESTABLISHED,
                    ),
                ],
            );
        }
    }
}

/// Item 8: a flood of spoofed SYNs to an allowed port fills the LRU table of remote-opened
/// flows; the host's own pending DNS query and TCP handshake are in another table and still
/// get their answers.
#[test]
fn flood_does_not_evict_the_hosts_pending_flows() {
    let rules = format!("{RULES}\n[conntrack]\nunconfirmed_size = 1024\n");
    let mut lab = Lab::new(&rules);
    let query = udp(Family::V4, 40053, 53);
    let syn = tcp(Family::V4, 40600, 443, SYN, 100, 0);
    lab.outbound(&query);
    lab.outbound(&syn);
    for i in 0..6000 {
        let s = spoofed(tcp(Family::V4, 22, 1024 + (i % 60000) as u16, SYN, i, 0), i);
        let (action, _) = lab
            .generation
            .test_run(&frame(&s, true))
            .expect("XDP test run");
        assert_eq!(action, XDP_PASS, "SYN {i} allowed by the rule");
    }
    assert_eq!(lab.inbound(&query).1, Inbound::Tracked, "the DNS answer");
    assert_eq!(
        lab.inbound(&tcp(Family::V4, 40600, 443, SYNACK, 5000, 101))
            .1,
        Inbound::Tracked,
        "the SYN-ACK"
    );
}

/// Item 12: one tuple, the end of a connection and the start of the next on it, in the
/// orders several CPUs can produce. The client closes with a RST and reuses its port at once
/// (as `reload_has_no_gap`'s client does); its new initial sequence number is behind the old
/// one. Orders: the RST before the new SYN; the new SYN overtaking the RST; and the RST lost
/// to the tracker, which is what an ACK confirming the flow on one CPU and the RST on another
/// leave behind (the RST updates the unconfirmed copy the other CPU is deleting). Every
/// packet of the new connection passes, and its RST closes it.
#[test]
fn tuple_reuse_in_every_order_passes() {
    for f in FAMILIES {
        for order in ["in order", "SYN overtakes RST", "RST lost"] {
            let mut lab = Lab::new(RULES);
            let mut model = Tracker::new(lab.ruleset);
            let t = |flags, seq, ack| tcp(f, 22, 56000, flags, seq, ack);
            established(&mut lab, &mut model, t);
            let isn = 1000u32.wrapping_sub(1 << 30);
            let rst1 = (t(RST, 1001, 0), true);
            let syn2 = (t(SYN, isn, 0), true);
            let mut steps = match order {
                "in order" => vec![rst1, syn2],
                "SYN overtakes RST" => vec![syn2, rst1],
                _ => vec![syn2],
            };
            steps.extend([
                (t(SYNACK, 50_000, isn + 1), false),
                (t(ACK, isn + 1, 50_001), true),
                (t(RST, isn + 1, 0), true),
            ]);
            for (i, (seg, inbound)) in steps.iter().enumerate() {
                let what = format!("{f:?} {order}, step {i}: {seg:?}");
                if *inbound {
                    let (_, got) = lab.inbound(seg);
                    let modeled = model.inbound(seg);
                    assert_eq!(got, modeled, "kernel and model: {what}");
                    assert!(
                        matches!(got, Inbound::Tracked) || matches!(got, Inbound::Rules(_)),
                        "dropped: {got:?}, {what}"
                    );
                } else {
                    lab.outbound(seg);
                    model.outbound(seg);
                }
                let k = lab.entry(seg).map(|(e, _)| (e.state, e.flags));
                let m = model
                    .flow(&Tracker::key_of(seg))
                    .map(|t| (t.entry.state, t.entry.flags));
                assert_eq!(k, m, "entry, kernel and model: {what}");
            }
            assert_eq!(lab.entry(&t(ACK, 0, 0)).map(|(e, _)| e.state), Some(CLOSE));
            assert_eq!(lab.counters()["drop_ct_invalid"], 0, "{f:?} {order}");
        }
    }
}

/// Pins the calling thread to one CPU, so that two threads' BPF_PROG_TEST_RUN calls run the
/// programs on two CPUs at once.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_setaffinity(0) applies to the caller.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity({cpu})"
        );
    }
}

/// Releases two threads at once, spinning rather than sleeping: a futex wake-up takes longer
/// than the programs run, so a sleeping barrier would almost never let them overlap.
struct Start(std::sync::atomic::AtomicU32);

impl Start {
    /// Round `k` starts when both threads have arrived (each adds one).
    fn go(&self, k: u32) {
        use std::sync::atomic::Ordering::AcqRel;
        self.0.fetch_add(1, AcqRel);
        while self.0.load(std::sync::atomic::Ordering::Acquire) < 2 * (k + 1) {
            std::hint::spin_loop();
        }
    }
}

/// Item 12 with real concurrency: one tuple, reused round after round; each round's final
/// ACK (which moves the flow to the confirmed table) runs on one CPU while the client's RST
/// runs on another, released together. Whatever order the two CPUs produce, including the one
/// that leaves a stale ESTABLISHED entry (the RST applied to the unconfirmed copy the ACK's CPU
/// is deleting), the next round's SYN, its handshake and its RST pass, and no packet is
/// dropped as invalid. (An ACK the RST overtook finds no connection: `[conntrack] invalid`'s
/// business, counted as such, not a drop of a tracked flow.)
#[test]
fn racing_ack_and_rst_on_two_cpus() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("skipped: needs two CPUs, this machine has {cpus}");
        return;
    }
    let ruleset: &'static Ruleset = Box::leak(Box::new(parse_rules(RULES)));
    let compiled = compile::compile(ruleset, &Default::default()).expect("compiling");
    let fs = BpfFs::new();
    let pin = fs.pin_dir("race");
    // Two copies of the programs sharing the pinned tables and counters, one per thread.
    let mut main_gen = Generation::load(&compiled, ruleset, &pin, 1).expect("loading");
    let mut other_gen = Generation::load(&compiled, ruleset, &pin, 1).expect("loading");
    let tables = Tables::open(&pin).expect("tables");
    const ROUNDS: u32 = 4000;
    let t = |flags, seq, ack| tcp(Family::V4, 22, 56100, flags, seq, ack);
    // Initial sequence numbers all over the sequence space, as real ones are.
    let isn = |k: u32| k.wrapping_mul(2_654_435_761);
    let start = std::sync::Arc::new(Start(std::sync::atomic::AtomicU32::new(0)));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (racer_start, racer_done) = (start.clone(), done.clone());
    let racer = std::thread::spawn(move || {
        pin_to_cpu(1);
        for k in 0..ROUNDS {
            let rst = frame(&t(RST, isn(k).wrapping_add(1), 0), true);
            racer_start.go(k);
            let (action, _) = other_gen.test_run(&rst).expect("XDP test run");
            racer_done.store(k + 1, std::sync::atomic::Ordering::Release);
            assert_eq!(action, XDP_PASS, "round {k}: the RST");
        }
    });
    pin_to_cpu(0);
    let mut stale = 0;
    for k in 0..ROUNDS {
        let (action, _) = main_gen
            .test_run(&frame(&t(SYN, isn(k), 0), true))
            .expect("XDP test run");
        assert_eq!(action, XDP_PASS, "round {k}: the SYN");
        let host_isn = isn(k).rotate_left(16);
        main_gen
            .test_run_egress(&frame(&t(SYNACK, host_isn, isn(k).wrapping_add(1)), false))
            .expect("TC test run");
        let ack = frame(
            &t(ACK, isn(k).wrapping_add(1), host_isn.wrapping_add(1)),
            true,
        );
        start.go(k);
        main_gen.test_run(&ack).expect("XDP test run");
        // Wait for the RST before looking at what the two left behind.
        while done.load(std::sync::atomic::Ordering::Acquire) < k + 1 {
            std::hint::spin_loop();
        }
        if k + 1 < ROUNDS {
            let key = Tracker::key_of(&t(ACK, 0, 0));
            if tables
                .flows()
                .iter()
                .any(|f| f.key == key && f.entry.state == ESTABLISHED)
            {
                stale += 1;
            }
        }
    }
    racer.join().expect("racing thread");
    let c = main_gen.counters().expect("counters");
    eprintln!(
        "{ROUNDS} rounds: {stale} left ESTABLISHED after the RST, {} ACKs overtaken by their \
         RST, {} handshakes reset",
        c["ct_invalid_no_conn"], c["ct_handshake_reset"]
    );
    assert_eq!(c["drop_ct_invalid"], 0, "{c:?}");
}

// ---------------------------------------------------------------------------------------------
// Random sequences: the kernel and the model agree on every outcome and every entry.

fn segment_strategy() -> impl Strategy<Value = (bool, Segment)> {
    let flags = select(vec![SYN, SYNACK, ACK, FINACK, RST, RSTACK, 0u8, SYN | FIN]);
    (
        any::<bool>(),
        select(vec![Family::V4, Family::V6]),
        0u8..5,
        flags,
        select(vec![0u32, 1, 2, 1000, 1001, 1 << 31]),
        select(vec![0u32, 1, 2, 1001, 7001]),
        select(vec![0u32, 10]),
    )
        .prop_map(|(inbound, f, kind, flags, seq, ack, payload)| {
            let seg = match kind {
                // Two TCP flows: to a port a rule allows, and one the host opens.
                0 => tcp(f, 22, 50000, flags, seq, ack),
                1 => tcp(f, 40000, 443, flags, seq, ack),
                2 => udp(f, 53, 50001),
                3 => udp(f, 40001, 53),
                _ => icmp(
                    f,
                    if inbound {
                        echo_reply(f)
                    } else {
                        echo_request(f)
                    },
                    3,
                ),
            };
            (inbound, Segment { payload, ..seg })
        })
}

#[test]
fn random_sequences_kernel_agrees_with_the_model() {
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let ruleset: &'static Ruleset = Box::leak(Box::new(parse_rules(RULES)));
    let compiled = compile::compile(ruleset, &Default::default()).expect("compiling");
    let fs = BpfFs::new();
    runner
        .run(
            &proptest::collection::vec(segment_strategy(), 1..40),
            |steps| {
                let pin = fs.pin_dir("prop");
                let mut generation =
                    Generation::load(&compiled, ruleset, &pin, 1).expect("loading");
                let mut tables = Tables::open(&pin).expect("tables");
                tables.clear();
                let mut model = Tracker::new(ruleset);
                for (i, (inbound, seg)) in steps.iter().enumerate() {
                    if *inbound {
                        let (action, _) = generation
                            .test_run(&frame(seg, true))
                            .expect("XDP test run");
                        let want = model.inbound(seg);
                        let expected = xdp_action(want);
                        prop_assert!(
                            action == expected || (expected == XDP_TX && action == XDP_DROP),
                            "step {i} {seg:?}: kernel action {action}, model {want:?}"
                        );
                    } else {
                        generation
                            .test_run_egress(&frame(seg, false))
                            .expect("TC test run");
                        model.outbound(seg);
                    }
                    let kernel: BTreeMap<_, _> = tables
                        .flows()
                        .into_iter()
                        .map(|f| {
                            (
                                format!("{:?}", f.key),
                                (f.entry.state, f.entry.origin, f.entry.flags, f.confirmed()),
                            )
                        })
                        .collect();
                    let modeled: BTreeMap<_, _> = model
                        .flows()
                        .iter()
                        .map(|(k, t)| {
                            (
                                format!("{k:?}"),
                                (t.entry.state, t.entry.origin, t.entry.flags, t.confirmed),
                            )
                        })
                        .collect();
                    prop_assert_eq!(&kernel, &modeled, "tables after step {} {:?}", i, seg);
                }
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}
