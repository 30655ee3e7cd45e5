//! The compiled tables for rules about programs, units and users, evaluated in userspace the
//! way the kernel does (`Compiled::lookup_as`: one group lookup per shape), against the oracle
//! (`Policy::with_selectors`), over random rule sets and every kind of owner; outbound rules
//! may name names, and destinations have names (`Compiled::lookup_named`). Needs no
//! privileges; the kernel itself is compared with the oracle in tests/programs.rs.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use firewall_common::{
    DEFAULT_RULE,
    identity::{ExeId, MAX_UNIT_LEVEL, Owner},
    verdict_action, verdict_rule,
};
use firewall_daemon::{
    compile,
    host::selectors::{Resolved, UnitCgroup},
};
use proptest::prelude::*;
use rules::{
    config,
    model::{Action, ConnectMeta, Direction, PacketMeta, PacketProto},
    policy::{Decision, Policy},
};

const PROGRAMS: [&str; 3] = ["/usr/bin/p0", "/usr/bin/p1", "/opt/p2"];
/// u1 is inside u0 (nested units: a process in u1 is matched as u1 only).
const UNITS: [(&str, u64, u32); 3] = [
    ("u0.service", 100, 2),
    ("u1.scope", 200, 3),
    ("u2.service", 300, 2),
];
const USERS: [u32; 2] = [0, 1000];
const PORTS: [u16; 3] = [22, 80, 443];
const REMOTES: [&str; 3] = ["192.0.2.1", "198.51.100.7", "2001:db8::1"];
/// Names outbound rules may name (`remote` indices 3 and 4), and the names each of
/// [`REMOTES`] has (from DNS answers, as far as the oracle and the lookup are told).
const NAMES: [&str; 2] = ["a.example.test", "*.example.test"];
const NAMES_OF: [&[&str]; 3] = [&["a.example.test"], &["b.example.test"], &[]];

struct Seen;

impl rules::names::Names for Seen {
    fn names_of(&self, addr: IpAddr) -> Vec<String> {
        REMOTES
            .iter()
            .position(|r| r.parse::<IpAddr>().ok() == Some(addr))
            .map(|i| NAMES_OF[i].iter().map(|n| (*n).to_owned()).collect())
            .unwrap_or_default()
    }
}

fn exe(i: usize) -> ExeId {
    ExeId {
        dev: 0x0fe0_0001,
        ino: 1000 + i as u64,
    }
}

fn resolved() -> Resolved {
    let mut r = Resolved::default();
    for (i, p) in PROGRAMS.iter().enumerate() {
        r.programs.insert(PathBuf::from(p), Some(exe(i)));
    }
    // A program that does not exist (yet): its rules match nothing.
    r.programs.insert(PathBuf::from("/missing"), None);
    for (name, id, level) in UNITS {
        r.units.insert(
            name.to_string(),
            Some(UnitCgroup {
                id,
                level,
                path: PathBuf::from(format!("/sys/fs/cgroup/x/{name}")),
            }),
        );
    }
    r
}

#[derive(Clone, Debug)]
struct GenRule {
    out: bool,
    program: Option<usize>,
    unit: Option<usize>,
    user: Option<usize>,
    proto: usize,
    port: Option<usize>,
    remote: Option<usize>,
    action: usize,
}

fn gen_rule() -> impl Strategy<Value = GenRule> {
    (
        any::<bool>(),
        proptest::option::weighted(0.6, 0..4usize),
        proptest::option::weighted(0.3, 0..3usize),
        proptest::option::weighted(0.3, 0..2usize),
        0..3usize,
        proptest::option::of(0..3usize),
        proptest::option::weighted(0.3, 0..5usize),
        0..3usize,
    )
        .prop_map(
            |(out, program, unit, user, proto, port, remote, action)| GenRule {
                out,
                program,
                unit,
                user,
                proto,
                port,
                remote,
                action,
            },
        )
}

fn toml(rules: &[GenRule], default_in: usize, default_out: usize) -> String {
    let actions = ["allow", "reject", "stealth"];
    let mut t = format!(
        "[defaults]\ninbound = \"{}\"\noutbound = \"{}\"\n",
        actions[default_in], actions[default_out]
    );
    for r in rules {
        t.push_str("[[rule]]\n");
        t.push_str(if r.out {
            "direction = \"out\"\n"
        } else {
            "direction = \"in\"\n"
        });
        if let Some(p) = r.program {
            let path = PROGRAMS.get(p).copied().unwrap_or("/missing");
            t.push_str(&format!("program = \"{path}\"\n"));
        }
        if let Some(u) = r.unit {
            t.push_str(&format!("unit = \"{}\"\n", UNITS[u].0));
        }
        if let Some(u) = r.user {
            t.push_str(&format!("user = {}\n", USERS[u]));
        }
        t.push_str(&format!("proto = \"{}\"\n", ["tcp", "udp", "any"][r.proto]));
        if let Some(p) = r.port {
            t.push_str(&format!("port = {}\n", PORTS[p]));
        }
        if let Some(a) = r.remote {
            // Names only in outbound rules: inbound ones name an address instead.
            let remote = match a.checked_sub(REMOTES.len()) {
                Some(n) if r.out => NAMES[n],
                _ => REMOTES[a % REMOTES.len()],
            };
            t.push_str(&format!("remote = \"{remote}\"\n"));
        }
        t.push_str(&format!("action = \"{}\"\n", actions[r.action]));
    }
    t
}

/// Every kind of owner: each program, another one, none (kernel thread); root, a user, another
/// uid; outside every unit, in u0, in u1 (inside u0), in u2, below u2.
fn owners() -> Vec<Owner> {
    let mut out = Vec::new();
    let exes = [Some(exe(0)), Some(exe(1)), Some(exe(2)), Some(exe(9)), None];
    let cgroups: [&[u64]; 5] = [
        &[],
        &[7, 100],
        &[7, 100, 200],
        &[8, 300],
        &[8, 300, 301, 302],
    ];
    for e in exes {
        for uid in [0, 1000, 5] {
            for cg in cgroups {
                let mut ancestors = [0u64; MAX_UNIT_LEVEL];
                ancestors[..cg.len()].copy_from_slice(cg);
                out.push(Owner {
                    exe: e.unwrap_or_default(),
                    uid,
                    _pad: 0,
                    ancestors,
                });
            }
        }
    }
    out
}

fn decode(word: u32) -> Decision {
    let action = match verdict_action(word) {
        0 => Action::Allow,
        1 => Action::Reject,
        _ => Action::Stealth,
    };
    let rule = verdict_rule(word);
    Decision {
        action,
        rule: (rule != DEFAULT_RULE).then_some(rule),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn compiled_groups_agree_with_the_oracle(
        rules in proptest::collection::vec(gen_rule(), 1..=24),
        default_in in 0..3usize,
        default_out in 0..3usize,
    ) {
        let text = toml(&rules, default_in, default_out);
        let rs = config::parse(&text, Path::new("selectors.toml")).expect("generated rules");
        let res = resolved();
        let policy = Policy::with_selectors(&rs, &res).with_names(&Seen);
        let inbound = compile::compile(&rs, &res).expect("compile in");
        let outbound = compile::compile_direction(&rs, Direction::Out, &res).expect("compile out");
        for owner in owners() {
            for remote in REMOTES {
                let remote: IpAddr = remote.parse().expect("addr");
                for proto in [PacketProto::Tcp, PacketProto::Udp] {
                    for port in PORTS {
                        let pkt = PacketMeta { remote, proto, local_port: port };
                        prop_assert_eq!(
                            decode(inbound.lookup_as(&pkt, Some(&owner))),
                            policy.decide_for(&pkt, Some(&owner)),
                            "inbound {:?} {:?}\n{}", pkt, owner, text
                        );
                        let call = ConnectMeta { remote, proto, remote_port: port };
                        let names: Vec<String> = rules::names::Names::names_of(&Seen, remote);
                        prop_assert_eq!(
                            decode(outbound.lookup_named(&call.as_packet(), Some(&owner), &names)),
                            policy.decide_out_as(&call, &owner),
                            "outbound {:?} {:?}\n{}", call, owner, text
                        );
                    }
                }
                // No owner (nothing listens): only rules without selectors apply.
                let pkt = PacketMeta { remote, proto: PacketProto::Tcp, local_port: 22 };
                prop_assert_eq!(
                    decode(inbound.lookup_as(&pkt, None)),
                    policy.decide_for(&pkt, None)
                );
            }
        }
    }
}
