//! Asking the rules what they decide, and why: the evaluator behind `fwctl explain`, the
//! `[[assert]]` entries and the exposure `fwctl ports` shows. All of it is [`Policy`], the
//! reference evaluator the kernel programs are tested against, so what these commands say is
//! what the datapath does (for a packet that starts a connection: packets of tracked
//! connections pass whatever the rules say, which [`Explanation::notes`] mentions).
//!
//! Two kinds of question:
//! * one packet or connection from one address ([`explain`]): the deciding rule or default,
//!   and the later rules that match too (shadowed by the winner for this packet);
//! * one packet or connection from every address of a network ([`regions`]): the decision
//!   changes only where some rule's network starts or ends, so evaluating the first address of
//!   each interval between those boundaries covers all 2³² (or 2¹²⁸) addresses exactly. That
//!   answers assertions without `from` and shows who may reach a port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Serialize;

use firewall_common::identity::{ExeId, MAX_UNIT_LEVEL, NO_UID, Owner};

use crate::{
    model::{
        Action, Assertion, ConnectMeta, Direction, PacketMeta, PacketProto, Probe, Ruleset,
        Selector, embeds_ipv4,
    },
    policy::{Decision, Policy, Selectors},
};

/// What the rules decide for one probe from one remote address, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub action: Action,
    /// Index of the deciding rule; `None`: the default, or [`Self::fixed`], decided.
    pub rule: Option<u32>,
    /// Set when the packet is decided before any rule is looked at, and why.
    pub fixed: Option<String>,
    /// Later rules that match the probe too: they never decide it, the winner comes first.
    pub shadowed: Vec<u32>,
    /// What else changes the outcome: tracked connections, selectors that resolve to nothing.
    pub notes: Vec<String>,
}

/// The owner the hooks would see for a process with the properties `who` gives, as far as
/// `resolved` knows them; `None` when `who` gives none (then no rule with a selector matches).
/// Parts that resolve to nothing on this host are noted in `notes`.
pub fn owner_of(
    who: &Selector,
    resolved: Option<&dyn Selectors>,
    notes: &mut Vec<String>,
) -> Option<Owner> {
    if who.is_everyone() {
        return None;
    }
    let mut owner = Owner {
        exe: ExeId::default(),
        uid: who.user.unwrap_or(NO_UID),
        _pad: 0,
        ancestors: [0; MAX_UNIT_LEVEL],
    };
    if let Some(path) = &who.program {
        match resolved.and_then(|r| r.program_exe(path)) {
            Some(exe) => owner.exe = exe,
            None => notes.push(format!(
                "program {} does not exist on this host (or cannot be read): rules naming it \
                 match nothing",
                path.display()
            )),
        }
    }
    if let Some(name) = &who.unit {
        match resolved.and_then(|r| r.unit_cgroup(name)) {
            Some(u) if (1..=MAX_UNIT_LEVEL as u32).contains(&u.level) => {
                owner.ancestors[u.level as usize - 1] = u.id;
            }
            _ => notes.push(format!(
                "unit {name} has no cgroup the firewall can match on this host (not running, \
                 or no rule names it): rules naming it match nothing"
            )),
        }
    }
    Some(owner)
}

/// The decision for `probe` from `remote`, with the owner `owner` (see [`owner_of`]).
pub fn explain(
    policy: &Policy<'_>,
    ruleset: &Ruleset,
    probe: &Probe,
    remote: IpAddr,
    owner: Option<&Owner>,
) -> Explanation {
    let mut notes = Vec::new();
    let fixed = |action, why: &str, notes| Explanation {
        action,
        rule: None,
        fixed: Some(why.to_owned()),
        shadowed: Vec::new(),
        notes,
    };
    match probe.direction {
        Direction::In => {
            if embeds_ipv4(remote) {
                return fixed(
                    Action::Stealth,
                    "an IPv6 source that embeds an IPv4 address (::ffff:0:0/96, ::/96) is \
                     dropped before the rules: no host sends from one",
                    notes,
                );
            }
            notes.push(
                "packets of a connection the firewall tracks pass whatever the rules say: \
                 replies to connections this host opened, and later packets of connections \
                 the rules allowed (until they end, or `fwctl reload --recheck` ends them)"
                    .into(),
            );
            if probe.proto == PacketProto::Icmp {
                notes.push(
                    "this is an echo request; ICMP errors about a tracked connection pass \
                     with it"
                        .into(),
                );
            }
        }
        Direction::Out => {
            let call = ConnectMeta {
                remote,
                proto: probe.proto,
                remote_port: probe.port,
            };
            if call.on_loopback() {
                return fixed(
                    Action::Allow,
                    "destinations on loopback are always allowed outbound",
                    notes,
                );
            }
            notes.push(
                "outbound rules judge each connect() and each UDP datagram sent with an \
                 address; connections already open are not judged again"
                    .into(),
            );
        }
    }
    let remote = firewall_common::addr::canonical(remote);
    let pkt = PacketMeta {
        remote,
        proto: probe.proto,
        local_port: probe.port,
    };
    let mut matching = policy
        .matching(probe.direction, &pkt, owner)
        .map(|r| r.index);
    let winner = matching.next();
    let shadowed = matching.collect();
    let default = match probe.direction {
        Direction::In => ruleset.defaults.inbound,
        Direction::Out => ruleset.default_outbound(policy.named(remote)),
    };
    if winner.is_none() {
        notes.push(format!(
            "no rule matches: [defaults] {} decides",
            match probe.direction {
                Direction::In => "inbound",
                Direction::Out => "outbound",
            }
        ));
        if default != ruleset.default_action(probe.direction) {
            notes.push(
                "no DNS answer named this address, and [dns] enforce refuses such \
                 destinations where [defaults] outbound allows"
                    .into(),
            );
        }
    }
    Explanation {
        action: winner.map_or(default, |i| ruleset.rules[i as usize].action),
        rule: winner,
        fixed: None,
        shadowed,
        notes,
    }
}

/// A run of addresses that all get the same decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Region {
    pub first: IpAddr,
    pub last: IpAddr,
    pub decision: Decision,
}

/// The rules' decisions for `probe` from every address of `within` (every address of its
/// family when it is `/0`), as runs of addresses, in address order. Exact: see the module
/// documentation. What is decided before the rules (outbound loopback) is not looked at.
pub fn regions(
    policy: &Policy<'_>,
    ruleset: &Ruleset,
    probe: &Probe,
    owner: Option<&Owner>,
    within: IpNet,
) -> Vec<Region> {
    let v4 = matches!(within, IpNet::V4(_));
    let (lo, hi) = (number(within.network()), number(within.broadcast()));
    let mut starts = vec![lo];
    // The edges of every rule's networks (an inbound rule's names: the addresses looked up).
    let looked_up: Vec<IpNet> = ruleset
        .of(probe.direction)
        .flat_map(|r| policy.looked_up(r))
        .map(IpNet::from)
        .collect();
    for net in ruleset
        .of(probe.direction)
        .filter_map(|r| r.remote.as_ref())
        .flatten()
        .chain(&looked_up)
        .filter(|n| matches!(n, IpNet::V4(_)) == v4)
    {
        let (a, b) = (number(net.network()), number(net.broadcast()));
        if a > lo && a <= hi {
            starts.push(a);
        }
        if b >= lo && b < hi {
            starts.push(b + 1);
        }
    }
    starts.sort_unstable();
    starts.dedup();
    let mut out: Vec<Region> = Vec::new();
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(hi, |next| next - 1);
        let addr = address(start, v4);
        let pkt = PacketMeta {
            remote: addr,
            proto: probe.proto,
            local_port: probe.port,
        };
        // The rules alone: what is decided before them (outbound loopback and the unspecified
        // address, always allowed) is no part of what a region or an assertion is about.
        let decision = policy.decide_by_rules(probe.direction, &pkt, owner);
        match out.last_mut() {
            Some(last) if last.decision == decision => last.last = address(end, v4),
            _ => out.push(Region {
                first: addr,
                last: address(end, v4),
                decision,
            }),
        }
    }
    out
}

fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn address(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// Every address, of both families.
pub fn everywhere() -> [IpNet; 2] {
    [
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ]
}

/// An assertion that does not hold: where and what the rules decide instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    pub assertion: Assertion,
    /// The first run of addresses that gets another decision.
    pub region: Region,
}

impl Broken {
    /// `FILE:LINE:COL: assert: in tcp 22 from 10.0.0.5 expects allow, but ... decides stealth`.
    pub fn message(&self, ruleset: &Ruleset) -> String {
        let a = &self.assertion;
        let side = match a.probe.direction {
            Direction::In => "from",
            Direction::Out => "to",
        };
        let addrs = if self.region.first == self.region.last {
            self.region.first.to_string()
        } else {
            format!("{} to {}", self.region.first, self.region.last)
        };
        let by = match self.region.decision.rule {
            Some(i) => {
                let r = &ruleset.rules[i as usize];
                format!(
                    "rule {} ({:?}, {})",
                    i + 1,
                    r.name,
                    ruleset.place(&r.origin)
                )
            }
            None => format!("[defaults] {}bound", a.probe.direction),
        };
        format!(
            "{}:{}:{}: assertion does not hold: {} {side} {addrs}: expected {}, but {by} \
             decides {}",
            ruleset.file_of(&a.origin).display(),
            a.origin.line,
            a.origin.column,
            a.probe,
            a.expect,
            self.region.decision.action
        )
    }
}

/// Checks every `[[assert]]` of `ruleset` against its rules, with the selectors resolved as
/// `resolved` says. Returns those that do not hold, in file order.
pub fn check_assertions(ruleset: &Ruleset, resolved: &dyn Selectors) -> Vec<Broken> {
    let policy = Policy::with_selectors(ruleset, resolved);
    let mut broken = Vec::new();
    for a in &ruleset.assertions {
        let mut notes = Vec::new();
        let owner = owner_of(&a.probe.owner, Some(resolved), &mut notes);
        let nets = match a.remote {
            Some(net) => vec![net],
            None => everywhere().to_vec(),
        };
        let wrong = nets
            .into_iter()
            .flat_map(|net| regions(&policy, ruleset, &a.probe, owner.as_ref(), net))
            .find(|r| r.decision.action != a.expect);
        if let Some(region) = wrong {
            broken.push(Broken {
                assertion: a.clone(),
                region,
            });
        }
    }
    broken
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail by panicking")]
mod tests {
    use std::{net::IpAddr, path::Path};

    use super::*;
    use crate::config::parse;

    fn rs(text: &str) -> Ruleset {
        match parse(text, Path::new("a.toml")) {
            Ok(rs) => rs,
            Err(e) => panic!("{e}"),
        }
    }

    /// No host: `program` and `unit` resolve to nothing.
    struct NoHost;
    impl Selectors for NoHost {
        fn program_exe(&self, _: &Path) -> Option<ExeId> {
            None
        }
        fn unit_cgroup(&self, _: &str) -> Option<crate::policy::UnitCgroupId> {
            None
        }
        fn addresses(&self, _: &str) -> Vec<std::net::IpAddr> {
            Vec::new()
        }
    }

    const RULES: &str = r#"
[sets]
admins = ["10.0.0.0/24", "2001:db8::/64"]

[[rule]]
name = "ssh-admins"
proto = "tcp"
port = 22
remote = "@admins"
action = "allow"

[[rule]]
name = "ssh-others"
proto = "tcp"
port = 22
action = "reject"

[[rule]]
name = "web"
proto = "tcp"
port = [22, 80]
action = "allow"
"#;

    #[test]
    fn explain_names_the_winner_and_the_rules_it_shadows() {
        let rs = rs(RULES);
        let policy = Policy::new(&rs);
        let probe = Probe {
            direction: Direction::In,
            proto: PacketProto::Tcp,
            port: 22,
            owner: Selector::default(),
        };
        let e = explain(&policy, &rs, &probe, "10.0.0.5".parse().unwrap(), None);
        assert_eq!(
            (e.action, e.rule, e.shadowed.clone()),
            (Action::Allow, Some(0), vec![1, 2])
        );
        let e = explain(&policy, &rs, &probe, "192.0.2.1".parse().unwrap(), None);
        assert_eq!(
            (e.action, e.rule, e.shadowed.clone()),
            (Action::Reject, Some(1), vec![2])
        );
        // The IPv4-mapped form of an admin address is dropped before the rules.
        let e = explain(
            &policy,
            &rs,
            &probe,
            "::ffff:10.0.0.5".parse().unwrap(),
            None,
        );
        assert_eq!((e.action, e.rule), (Action::Stealth, None));
        assert!(e.fixed.is_some());
        let udp = Probe {
            proto: PacketProto::Udp,
            port: 53,
            ..probe
        };
        let e = explain(&policy, &rs, &udp, "10.0.0.5".parse().unwrap(), None);
        assert_eq!((e.action, e.rule), (Action::Stealth, None), "the default");
    }

    #[test]
    fn assertions_hold_or_name_the_first_address_and_rule_that_break_them() {
        let text = format!(
            "{RULES}\n[[assert]]\nin = \"tcp 22\"\nfrom = \"10.0.0.0/24\"\nexpect = \"allow\"\n\
             \n[[assert]]\nin = \"tcp 22\"\nexpect = \"allow\"\n\
             \n[[assert]]\nin = \"udp 53\"\nfrom = \"2001:db8::1\"\nexpect = \"stealth\"\n"
        );
        let rs = rs(&text);
        assert_eq!(rs.assertions.len(), 3);
        let broken = check_assertions(&rs, &NoHost);
        assert_eq!(broken.len(), 1, "{broken:?}");
        let m = broken[0].message(&rs);
        assert!(
            m.starts_with("a.toml:29:1: assertion does not hold: in tcp 22 from 0.0.0.0 to 9.255.255.255: expected allow, but rule 2 (\"ssh-others\", line 12) decides reject"),
            "{m}"
        );
    }

    /// Outbound, loopback and the unspecified address are allowed before any rule: they are
    /// not what an assertion about the rules is about, and must not decide it.
    #[test]
    fn outbound_assertions_are_about_the_rules_not_loopback() {
        let rs = rs(
            "[defaults]\noutbound = \"reject\"\n\n[[assert]]\nout = \"tcp 25\"\nexpect = \"reject\"\n",
        );
        assert_eq!(check_assertions(&rs, &NoHost), []);
    }

    /// The regions are exact: the decision at any address is the decision of the region that
    /// holds it. Checked against the plain evaluator at random addresses, for random rules.
    #[test]
    fn regions_agree_with_the_evaluator_at_random_addresses() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..40 {
            let mut text = String::new();
            for i in 0..(next() % 12) {
                let a = next();
                let len = 8 + (next() % 25) as u8;
                let net = format!(
                    "{}.{}.{}.{}/{len}",
                    a as u8 % 4 + 10,
                    (a >> 8) as u8,
                    (a >> 16) as u8,
                    (a >> 24) as u8
                );
                let action = ["allow", "reject", "stealth"][(next() % 3) as usize];
                text.push_str(&format!(
                    "[[rule]]\nname = \"r{i}\"\nproto = \"tcp\"\nport = 22\nremote = \"{net}\"\naction = \"{action}\"\n"
                ));
            }
            let rs = rs(&text);
            let policy = Policy::new(&rs);
            let probe = Probe {
                direction: Direction::In,
                proto: PacketProto::Tcp,
                port: 22,
                owner: Selector::default(),
            };
            let within: IpNet = "8.0.0.0/5".parse().unwrap();
            let regions = regions(&policy, &rs, &probe, None, within);
            for w in regions.windows(2) {
                assert_ne!(w[0].decision, w[1].decision, "adjacent runs are merged");
            }
            for _ in 0..2000 {
                let n = 0x0800_0000 + (next() as u32 % 0x0800_0000);
                let addr = IpAddr::V4(n.into());
                let r = regions
                    .iter()
                    .find(|r| number(r.first) <= u128::from(n) && u128::from(n) <= number(r.last))
                    .unwrap();
                let want = policy.decide(&PacketMeta {
                    remote: addr,
                    proto: PacketProto::Tcp,
                    local_port: 22,
                });
                assert_eq!(r.decision, want, "{addr} in {r:?}\n{text}");
            }
        }
    }
}
