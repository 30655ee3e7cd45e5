//! Issue 14, item 7: reject replies forged for other hosts, and replies as an amplifier.
//! Through BPF_PROG_TEST_RUN on the real XDP program: the kernel runs test frames as received
//! on loopback, so loopback's `IFACE_MAC` entry is "the receiving interface's MAC" here
//! (support/host.rs).
//!
//! Before the fix every reject was answered whatever the frame's destination, from the
//! frame's destination MAC, and only the per-source budget limited replies.

mod support;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use firewall_daemon::kernel::Generation;

use rules::config::{self, Env};
use support::{
    bpffs::BpfFs,
    frames::{self, L4, LOCAL_MAC, REMOTE_MAC, Spec},
    host::Host,
    lab::Loaded,
};

const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;

const FOREIGN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

struct Lab {
    generation: Generation,
    host: Host,
    _fs: BpfFs,
}

impl Lab {
    /// `[defaults] inbound = "reject"` plus `extra`; the host is 10.0.0.1 and 2001:db8::1
    /// behind loopback with [`LOCAL_MAC`].
    fn new(extra: &str) -> Self {
        let text = format!("[defaults]\ninbound = \"reject\"\n{extra}");
        let env = Env {
            services_path: PathBuf::from("/nonexistent/services"),
            base_dir: std::env::temp_dir(),
        };
        let ruleset = config::parse_with(&text, Path::new("reply-forging.toml"), &env)
            .unwrap_or_else(|e| panic!("test rules do not parse:\n{e}"));
        let fs = BpfFs::new();
        let pin = fs.pin_dir("p");
        let Loaded { generation, .. } = Loaded::new(&ruleset, &pin, &text);
        let mut host = Host::open(&pin);
        host.add("10.0.0.1".parse().expect("address"));
        host.add("2001:db8::1".parse().expect("address"));
        Self {
            generation,
            host,
            _fs: fs,
        }
    }

    /// The XDP action, the frame as the program left it, and the counters that moved.
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>, BTreeMap<&'static str, u64>) {
        let c0 = self.generation.counters().expect("counters");
        let (action, out) = self.generation.test_run(frame).expect("XDP test run");
        let c1 = self.generation.counters().expect("counters");
        let moved = c1
            .iter()
            .map(|(k, v)| (*k, v - c0[k]))
            .filter(|(k, d)| *d != 0 && !support::is_log_counter(k))
            .collect();
        (action, out, moved)
    }
}

const NOT_FOR_US: &[&str] = &[
    "default_verdict",
    "packets",
    "reject_not_for_us",
    "rejected",
];

fn names(c: &BTreeMap<&'static str, u64>) -> Vec<&'static str> {
    c.keys().copied().collect()
}

/// (local, remote) pairs of both families.
const PAIRS: [(&str, &str); 2] = [("10.0.0.1", "10.1.2.3"), ("2001:db8::1", "2001:db8::2")];

/// (a) A frame whose destination MAC is another host's (a hub, a mirror port, a promiscuous
/// bridge member, or a frame forged to make us answer for that host) gets no reply.
#[test]
fn frames_for_another_mac_get_no_reply() {
    let mut lab = Lab::new("");
    for (local, remote) in PAIRS {
        for l4 in [L4::SYN, L4::Udp] {
            let mut frame = Spec::new(remote, local, l4, 22).frame();
            frames::set_dst_mac(&mut frame, FOREIGN_MAC);
            let (action, _, c) = lab.run(&frame);
            assert_eq!(
                (action, names(&c)),
                (XDP_DROP, NOT_FOR_US.to_vec()),
                "{l4:?} {remote} -> {local} for {FOREIGN_MAC:02x?}"
            );
        }
    }
}

/// (b) A frame sent to our MAC but to an address that is not the host's (the router case:
/// the host is the next hop, not the destination) gets no reply either.
#[test]
fn packets_for_another_address_get_no_reply() {
    let mut lab = Lab::new("");
    for (local, remote) in [("10.77.0.99", "10.1.2.3"), ("2001:db8::99", "2001:db8::2")] {
        for l4 in [L4::SYN, L4::Udp] {
            let frame = Spec::new(remote, local, l4, 22).frame();
            let (action, _, c) = lab.run(&frame);
            assert_eq!(
                (action, names(&c)),
                (XDP_DROP, NOT_FOR_US.to_vec()),
                "{l4:?} {remote} -> {local}"
            );
        }
    }
    // The address becomes the host's: now it is answered.
    lab.host.add("10.77.0.99".parse().expect("address"));
    let (action, _, c) = lab.run(&Spec::new("10.1.2.3", "10.77.0.99", L4::SYN, 22).frame());
    assert_eq!(
        (action, c.get("reject_tcp_rst")),
        (XDP_TX, Some(&1)),
        "{c:?}"
    );
}

/// (c) Replies leave from the interface's own MAC, to the sender's. When the interface's MAC
/// changes, replies follow it, and frames to the old MAC are no longer answered. Without an
/// entry for the interface (the daemon has not recorded it), nothing is answered.
#[test]
fn replies_come_from_the_interface_mac() {
    let mut lab = Lab::new("");
    let new_mac = [0x02, 0, 0, 0, 0, 0x42];
    for mac in [LOCAL_MAC, new_mac] {
        lab.host.set_mac(mac);
        for (local, remote) in PAIRS {
            let mut frame = Spec::new(remote, local, L4::SYN, 22).frame();
            frames::set_dst_mac(&mut frame, mac);
            let (action, out, c) = lab.run(&frame);
            assert_eq!(action, XDP_TX, "SYN {remote} -> {local}: {c:?}");
            let r = frames::parse_tcp_reply(&out);
            assert_eq!(
                (r.link.src_mac, r.link.dst_mac),
                (mac, REMOTE_MAC),
                "RST {local} -> {remote}"
            );
            let mut frame = Spec::new(remote, local, L4::Udp, 53).frame();
            frames::set_dst_mac(&mut frame, mac);
            let (action, out, c) = lab.run(&frame);
            assert_eq!(action, XDP_TX, "UDP {remote} -> {local}: {c:?}");
            let r = frames::parse_icmp_reply(&out);
            assert_eq!(
                (r.link.src_mac, r.link.dst_mac),
                (mac, REMOTE_MAC),
                "port unreachable {local} -> {remote}"
            );
        }
    }
    // The old MAC is not ours any more.
    let (action, _, c) = lab.run(&Spec::new("10.1.2.3", "10.0.0.1", L4::SYN, 22).frame());
    assert_eq!((action, names(&c)), (XDP_DROP, NOT_FOR_US.to_vec()));

    lab.host.forget_macs();
    let (action, _, c) = lab.run(&Spec::new("10.1.2.3", "10.0.0.1", L4::SYN, 22).frame());
    assert_eq!(
        (action, names(&c)),
        (XDP_DROP, NOT_FOR_US.to_vec()),
        "no MAC recorded for the interface"
    );
}

/// Sends one SYN from each of `sources` distinct addresses; returns the replies and the
/// seconds the run took.
fn spoofed_flood(lab: &mut Lab, sources: u32) -> (u64, f64, BTreeMap<&'static str, u64>) {
    let c0 = lab.generation.counters().expect("counters");
    let start = Instant::now();
    let mut replies = 0;
    for i in 0..sources {
        let remote = IpAddr::from((0x0a40_0000u32 + i).to_be_bytes()).to_string();
        let (action, _) = lab
            .generation
            .test_run(&Spec::new(&remote, "10.0.0.1", L4::SYN, 22).frame())
            .expect("XDP test run");
        if action == XDP_TX {
            replies += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let c1 = lab.generation.counters().expect("counters");
    let moved = c1.iter().map(|(k, v)| (*k, v - c0[k])).collect();
    (replies, secs, moved)
}

/// (d) 3,000 spoofed sources, each within its own per-source budget, get at most the global
/// budget: the default 1,000 per second, a full second's worth at first.
#[test]
fn spoofed_sources_get_at_most_the_global_budget() {
    for (extra, rate) in [("", 1000u64), ("[reject]\nglobal_rate_per_sec = 50\n", 50)] {
        let mut lab = Lab::new(extra);
        let sources = 3000;
        let (replies, secs, c) = spoofed_flood(&mut lab, sources);
        // One second's worth of burst, plus what the elapsed time refilled. The kernel refills
        // by its coarse clock (`firewall-ebpf/src/clock.rs`), which moves a tick at a time: it
        // can see up to one tick (10 ms at the lowest HZ, 100) more than this run measured.
        let budget = rate + (rate as f64 * (secs + 0.010)).ceil() as u64;
        assert!(
            replies >= rate.min(u64::from(sources)) && replies <= budget,
            "rate {rate}/s: {replies} replies to {sources} spoofed sources in {secs:.3} s \
             (budget {budget}): {c:?}"
        );
        assert_eq!(
            (c["reject_tcp_rst"], c["reject_global_rate_limited"]),
            (replies, u64::from(sources) - replies),
            "rate {rate}/s: every SYN past the budget is counted: {c:?}"
        );
    }
}
