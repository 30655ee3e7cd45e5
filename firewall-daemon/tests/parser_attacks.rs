//! Attacks on the parser, through BPF_PROG_TEST_RUN on the real XDP and TC egress programs:
//! IPv6 packets carrying IPv4 addresses (issue 14, item 1) and transport headers read from
//! past the end of the IP packet (item 11, the tiny first fragment). Each test performs the
//! attack and checks that the kernel and the model (`tracker`) both stop it.

mod support;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

use firewall_common::ct;
use firewall_daemon::{conntrack::Tables, kernel::Generation};
use rules::{
    model::{self, PacketProto, Ruleset},
    tracker::{Inbound, Segment, Tracker},
};
use support::{bpffs::BpfFs, frames, host::Host, lab::Loaded};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// An IPv4 blocklist in front of an SSH rule for everyone: the setting of the issue's attack.
const BLOCKLIST: &str = r#"
[defaults]
inbound = "stealth"

[[rule]]
name = "blocklist"
remote = ["10.77.0.1"]
action = "stealth"

[[rule]]
name = "ssh"
proto = "tcp"
port = 22
action = "allow"
"#;

fn parse_rules(text: &str) -> Ruleset {
    support::rules::parse(text, "parser-attacks.toml")
}

struct Lab {
    ruleset: &'static Ruleset,
    generation: Generation,
    tables: Tables,
    _host: Host,
    _fs: BpfFs,
}

impl Lab {
    fn new(text: &str) -> Self {
        let ruleset: &'static Ruleset = Box::leak(Box::new(parse_rules(text)));
        let fs = BpfFs::new();
        let pin = fs.pin_dir("p");
        let Loaded {
            generation, tables, ..
        } = Loaded::new(ruleset, &pin, text);
        let host = Host::open(&pin);
        Self {
            ruleset,
            generation,
            tables,
            _host: host,
            _fs: fs,
        }
    }

    /// Runs `frame` through XDP: the action and the counters that moved.
    fn inbound(&mut self, frame: &[u8]) -> (u32, BTreeMap<&'static str, u64>) {
        let c0 = self.generation.counters().expect("counters");
        let (action, _) = self.generation.test_run(frame).expect("XDP test run");
        let c1 = self.generation.counters().expect("counters");
        let moved = c1
            .iter()
            .map(|(k, v)| (*k, v - c0[k]))
            .filter(|(_, d)| *d != 0)
            .collect();
        (action, moved)
    }

    fn egress(&mut self, frame: &[u8]) {
        let rc = self.generation.test_run_egress(frame).expect("TC test run");
        assert_eq!(rc, 0, "the egress program passes (TC_ACT_OK)");
    }

    fn flows(&self) -> usize {
        self.tables.flows().len()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn tcp_seg(local: &str, remote: &str, local_port: u16, remote_port: u16, flags: u8) -> Segment {
    Segment {
        local: ip(local),
        remote: ip(remote),
        proto: PacketProto::Tcp,
        local_port,
        remote_port,
        tcp_flags: flags,
        seq: 1000,
        ack: 0,
        payload: 0,
        icmp_type: 0,
        icmp_id: 0,
        quoted: None,
        window: 64240,
        wscale: None,
    }
}

/// The frame of `seg`, received (`inbound`) or sent by the host.
fn tcp_frame(seg: &Segment, inbound: bool) -> Vec<u8> {
    let (src, dst, sport, dport) = if inbound {
        (seg.remote, seg.local, seg.remote_port, seg.local_port)
    } else {
        (seg.local, seg.remote, seg.local_port, seg.remote_port)
    };
    let l4 = frames::tcp_header(sport, dport, seg.tcp_flags);
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            frames::ipv4_frame(&src.to_string(), &dst.to_string(), 6, &l4)
        }
        _ => frames::ipv6_frame(&src.to_string(), &dst.to_string(), &[], 6, &l4),
    }
}

fn moved(counters: &BTreeMap<&str, u64>, name: &str) -> u64 {
    counters.get(name).copied().unwrap_or(0)
}

/// Issue 14, item 1: an IPv6 SYN from `::ffff:10.77.0.1` to port 22 (allowed by the IPv6
/// rules, which have no blocklist) must not open the way for the real IPv4 10.77.0.1, which
/// the blocklist stealths. Before the fix the IPv6 SYN was admitted, and its flow entry,
/// keyed `::ffff:10.77.0.1` like an IPv4 flow, passed the IPv4 SYN as a retransmission.
#[test]
fn ipv4_mapped_ipv6_does_not_prime_an_ipv4_flow() {
    let mut lab = Lab::new(BLOCKLIST);
    let mut model = Tracker::new(lab.ruleset);
    let mapped = tcp_seg(
        "::ffff:10.77.0.2",
        "::ffff:10.77.0.1",
        22,
        40000,
        ct::TCP_SYN,
    );
    let real = tcp_seg("10.77.0.2", "10.77.0.1", 22, 40000, ct::TCP_SYN);

    let (action, c) = lab.inbound(&tcp_frame(&mapped, true));
    assert_eq!(
        (action, moved(&c, "drop_ipv6_embedded_ipv4")),
        (XDP_DROP, 1),
        "the mapped IPv6 SYN is dropped before conntrack and rules: {c:?}"
    );
    assert_eq!(model.inbound(&mapped), Inbound::EmbeddedIpv4, "model");
    assert_eq!(lab.flows(), 0, "no flow from the mapped packet");

    let (action, c) = lab.inbound(&tcp_frame(&real, true));
    assert_eq!(
        (action, moved(&c, "stealthed"), moved(&c, "pass_tracked")),
        (XDP_DROP, 1, 0),
        "the blocklisted IPv4 SYN is judged by the blocklist: {c:?}"
    );
    assert_eq!(
        model.inbound(&real).action(),
        model::Action::Stealth,
        "model"
    );
}

/// The same attack from the other side: the host (or a local process crafting packets) sends
/// a mapped IPv6 SYN; the egress program must not create a flow whose replies would then
/// admit the IPv4 peer's SYN-ACK.
#[test]
fn ipv4_mapped_ipv6_sent_by_the_host_creates_no_flow() {
    let mut lab = Lab::new(BLOCKLIST);
    let mut model = Tracker::new(lab.ruleset);
    let mapped = tcp_seg(
        "::ffff:10.77.0.2",
        "::ffff:10.77.0.1",
        40000,
        22,
        ct::TCP_SYN,
    );
    lab.egress(&tcp_frame(&mapped, false));
    model.outbound(&mapped);
    assert_eq!(lab.flows(), 0, "egress created a flow from a mapped packet");
    assert!(model.flows().is_empty(), "model created a flow");

    let synack = tcp_seg(
        "10.77.0.2",
        "10.77.0.1",
        40000,
        22,
        ct::TCP_SYN | ct::TCP_ACK,
    );
    let (action, c) = lab.inbound(&tcp_frame(&synack, true));
    assert_eq!(
        (
            action,
            moved(&c, "pass_tracked"),
            moved(&c, "ct_invalid_no_conn")
        ),
        (XDP_DROP, 0, 1),
        "the IPv4 SYN-ACK belongs to no flow: {c:?}"
    );
    assert_eq!(model.inbound(&synack).action(), model::Action::Stealth);
}

/// Every IPv4-embedding form is dropped, as source or destination; `::` (duplicate address
/// detection, MLD) and `::1` are not IPv4 addresses and go on to the rules.
#[test]
fn embedded_ipv4_forms_are_dropped_and_unspecified_is_not() {
    let mut lab = Lab::new("[defaults]\ninbound = \"allow\"\n");
    let mut model = Tracker::new(lab.ruleset);
    let cases = [
        ("2001:db8::2", "::ffff:10.77.0.1", true),
        ("::ffff:10.77.0.2", "2001:db8::1", true),
        ("2001:db8::2", "::10.77.0.1", true),
        ("::10.77.0.2", "2001:db8::1", true),
        ("2001:db8::2", "::ffff:0.0.0.0", true),
        ("2001:db8::2", "::0.0.0.2", true),
        ("2001:db8::2", "::", false),
        ("2001:db8::2", "::1", false),
        ("::1", "2001:db8::1", false),
        // IPv4-translated (RFC 2765, ::ffff:0:a.b.c.d) and NAT64 are ordinary IPv6.
        ("2001:db8::2", "::ffff:0:10.77.0.1", false),
        ("2001:db8::2", "64:ff9b::10.77.0.1", false),
    ];
    for (local, remote, dropped) in cases {
        let seg = tcp_seg(local, remote, 22, 40000, ct::TCP_SYN);
        let (action, c) = lab.inbound(&tcp_frame(&seg, true));
        let outcome = model.inbound(&seg);
        if dropped {
            assert_eq!(
                (action, moved(&c, "drop_ipv6_embedded_ipv4")),
                (XDP_DROP, 1),
                "{remote} -> {local}: {c:?}"
            );
            assert_eq!(outcome, Inbound::EmbeddedIpv4, "model: {remote} -> {local}");
        } else {
            assert_eq!(
                (
                    action,
                    moved(&c, "drop_ipv6_embedded_ipv4"),
                    moved(&c, "allowed")
                ),
                (XDP_PASS, 0, 1),
                "{remote} -> {local}: {c:?}"
            );
            assert_eq!(
                outcome.action(),
                model::Action::Allow,
                "model: {remote} -> {local}"
            );
        }
    }
    // Duplicate address detection: a neighbour solicitation from ::, before any rule.
    let mut body = vec![0u8; 4];
    body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().expect("v6").octets());
    let ns = frames::icmpv6_message("::", "ff02::1:ff00:1", 135, 0, &body);
    let mut frame = frames::ipv6_frame("::", "ff02::1:ff00:1", &[], 58, &ns);
    frames::set_dst_mac(&mut frame, [0x33, 0x33, 0xff, 0, 0, 1]);
    let (action, c) = lab.inbound(&frame);
    assert_eq!(
        (action, moved(&c, "pass_icmp_essential")),
        (XDP_PASS, 1),
        "DAD from :: passes: {c:?}"
    );
}

/// The key keeps the family: the same 16 bytes in an IPv6 flow and an IPv4 flow are two keys.
#[test]
fn flow_keys_keep_the_family() {
    let v4 = Tracker::key_of(&tcp_seg("10.77.0.2", "10.77.0.1", 22, 40000, ct::TCP_SYN));
    let v6 = Tracker::key_of(&tcp_seg(
        "::ffff:10.77.0.2",
        "::ffff:10.77.0.1",
        22,
        40000,
        ct::TCP_SYN,
    ));
    assert_eq!((v4.local, v4.remote), (v6.local, v6.remote));
    assert_eq!((v4.family, v6.family), (ct::FAMILY_V4, ct::FAMILY_V6));
    assert_ne!(v4, v6);
}

/// Issue 14, item 11: a first IPv4 fragment whose IP packet holds only 8 bytes of TCP (ports
/// and sequence number) in a 60-byte Ethernet frame: the rest of the "TCP header" would come
/// from the Ethernet padding, which the sender chooses. Here the padding says SYN to an
/// allowed port; before the fix the parser read it and admitted a flow. The TCP header must
/// end within the IP total length, fragment or not.
#[test]
fn transport_header_is_bounded_by_the_ip_length_not_the_frame() {
    let mut lab = Lab::new(
        "[defaults]\ninbound = \"stealth\"\n[[rule]]\nproto = \"tcp\"\nport = 22\naction = \"allow\"\n[[rule]]\nproto = \"udp\"\nport = 53\naction = \"allow\"\n",
    );
    let tcp = frames::tcp_header(40000, 22, ct::TCP_SYN);
    let padded = |ip_len_l4: usize, more_fragments: bool, l4: &[u8]| {
        let mut f = frames::ethernet(&[], frames::ETH_P_IP);
        f.extend(frames::ipv4_header(
            "10.9.9.9",
            "10.0.0.1",
            6,
            ip_len_l4,
            &[],
        ));
        f.extend_from_slice(l4);
        if f.len() < 60 {
            f.resize(60, 0);
        }
        if more_fragments {
            frames::set_ipv4_fragment(&mut f, 0, true);
        }
        f
    };
    // 14 + 20 + 8 = 42 bytes of packet; the TCP header's bytes 8..20 are in the padding.
    let tiny_first_fragment = padded(8, true, &tcp);
    let short_tcp = padded(8, false, &tcp);
    let mut short_udp = frames::ethernet(&[], frames::ETH_P_IP);
    short_udp.extend(frames::ipv4_header("10.9.9.9", "10.0.0.1", 17, 4, &[]));
    short_udp.extend(frames::udp_header(40000, 53, 0));
    short_udp.resize(60, 0);
    // IPv6: payload length 8, a whole TCP header in the frame after it.
    let mut v6 = frames::ipv6_frame("2001:db8::9", "2001:db8::1", &[], 6, &tcp);
    let l3 = frames::l3_offset(&v6);
    v6[l3 + 4..l3 + 6].copy_from_slice(&8u16.to_be_bytes());
    // Extension headers past the payload length: a destination-options header of 8 bytes
    // with payload length 4.
    let mut ext = frames::ipv6_frame(
        "2001:db8::9",
        "2001:db8::1",
        &[frames::Ext::DstOpts { units: 1 }],
        17,
        &frames::udp_header(40000, 53, 0),
    );
    ext[l3 + 4..l3 + 6].copy_from_slice(&4u16.to_be_bytes());
    for (what, frame, reason) in [
        (
            "tiny first fragment",
            &tiny_first_fragment,
            "drop_malformed_l4",
        ),
        (
            "TCP past the IPv4 total length",
            &short_tcp,
            "drop_malformed_l4",
        ),
        (
            "UDP past the IPv4 total length",
            &short_udp,
            "drop_malformed_l4",
        ),
        ("TCP past the IPv6 payload length", &v6, "drop_malformed_l4"),
        (
            "extension header past the payload length",
            &ext,
            "drop_ipv6_ext_headers",
        ),
    ] {
        let (action, c) = lab.inbound(frame);
        assert_eq!(
            (action, moved(&c, reason), moved(&c, "allowed")),
            (XDP_DROP, 1, 0),
            "{what}: {c:?}"
        );
        assert_eq!(lab.flows(), 0, "{what}: a flow was created");
    }
    // The same TCP header within the IP length, in a padded frame, is judged normally.
    let whole = padded(20, false, &tcp);
    let (action, c) = lab.inbound(&whole);
    assert_eq!((action, moved(&c, "allowed")), (XDP_PASS, 1), "{c:?}");
}
