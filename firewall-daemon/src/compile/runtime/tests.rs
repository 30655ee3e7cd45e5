//! Members added in place give the tables the same members written into the file give: the
//! incremental path against the whole compiler and the oracle, on random rule sets and random
//! sequences of additions and removals.

use std::{net::IpAddr, path::Path};

use rand::{RngExt as _, SeedableRng, rngs::Xoshiro256PlusPlus as StdRng};

use super::*;
use crate::compile::compile_direction;
use rules::{
    config,
    model::{Direction, PacketMeta, PacketProto},
    policy::Policy,
};

const SETS: [&str; 2] = ["blocklist", "scanners"];

/// Addresses from a few small networks, so that members, the file's prefixes and probes
/// overlap often.
fn addr(rng: &mut StdRng, v6: bool) -> IpAddr {
    if v6 {
        let mut o = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        o[15] = rng.random_range(0..8);
        o[14] = rng.random_range(0..2);
        IpAddr::from(o)
    } else {
        IpAddr::from([
            10,
            rng.random_range(0..2),
            rng.random_range(0..2),
            rng.random_range(0..8),
        ])
    }
}

fn net(rng: &mut StdRng) -> IpNet {
    let v6 = rng.random_bool(0.3);
    let a = addr(rng, v6);
    let full = if v6 { 128 } else { 32 };
    let len = if rng.random_bool(0.6) {
        full
    } else {
        full - rng.random_range(1..=12u8)
    };
    IpNet::new(a, len).expect("valid").trunc()
}

fn service(rng: &mut StdRng) -> String {
    match rng.random_range(0..5) {
        0 => String::new(),
        1 => "proto = \"udp\"\n".into(),
        2 => "proto = \"icmp\"\n".into(),
        3 => format!("proto = \"tcp\"\nport = {}\n", 20 + rng.random_range(0..4)),
        _ => format!(
            "proto = \"any\"\nport = [{}, {}]\n",
            20 + rng.random_range(0..4),
            20 + rng.random_range(0..4)
        ),
    }
}

fn rules_text(rng: &mut StdRng) -> String {
    let mut text = String::from("[defaults]\ninbound = \"reject\"\n[sets]\n");
    for s in SETS {
        text.push_str(&format!("{s} = []\n"));
    }
    for i in 0..rng.random_range(2..10) {
        let remote = match rng.random_range(0..4) {
            0 => String::new(),
            1 => format!("remote = \"{}\"\n", net(rng)),
            2 => format!("remote = \"@{}\"\n", SETS[rng.random_range(0..2)]),
            _ => format!(
                "remote = [\"@{}\", \"{}\"]\n",
                SETS[rng.random_range(0..2)],
                net(rng)
            ),
        };
        let action = ["allow", "reject", "stealth"][rng.random_range(0..3)];
        text.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\n{}{remote}action = \"{action}\"\n",
            service(rng)
        ));
    }
    text
}

fn probes(rng: &mut StdRng) -> Vec<PacketMeta> {
    (0..60)
        .map(|_| {
            let proto =
                [PacketProto::Tcp, PacketProto::Udp, PacketProto::Icmp][rng.random_range(0..3)];
            let v6 = rng.random_bool(0.3);
            PacketMeta {
                remote: addr(rng, v6),
                proto,
                local_port: if proto == PacketProto::Icmp {
                    0
                } else {
                    20 + rng.random_range(0..4)
                },
            }
        })
        .collect()
}

#[test]
fn members_added_in_place_give_the_tables_the_file_would() {
    let mut rng = StdRng::seed_from_u64(0x5e75);
    let resolved = Default::default();
    let mut checked = 0;
    for case in 0..300 {
        let text = rules_text(&mut rng);
        let rs = config::parse(&text, Path::new("t.toml")).expect("generated rules parse");
        // Some members before the generation is loaded, then additions and removals in place.
        let mut members = Members::new();
        for _ in 0..rng.random_range(0..4) {
            let set = SETS[rng.random_range(0..2)];
            members.entry(set.into()).or_default().push(net(&mut rng));
        }
        let mut live = compile_direction(&rs, Direction::In, &resolved).expect("compiles");
        if live.runtime.is_none() {
            assert!(!rs.uses_runtime_sets(Direction::In), "{text}");
            continue;
        }
        checked += 1;
        live.add_members(&members);
        for step in 0..rng.random_range(1..12) {
            let set = SETS[rng.random_range(0..2)];
            let current: Vec<IpNet> = members.get(set).cloned().unwrap_or_default();
            let remove = !current.is_empty() && rng.random_bool(0.35);
            let n = if remove {
                current[rng.random_range(0..current.len())]
            } else {
                net(&mut rng)
            };
            let rt = live.runtime.as_mut().expect("the rules name runtime sets");
            let ch = if remove {
                members.get_mut(set).expect("present").retain(|m| *m != n);
                rt.remove(set, n)
            } else {
                let m = members.entry(set.into()).or_default();
                if !m.contains(&n) {
                    m.push(n);
                }
                rt.add(set, n)
            }
            .expect("room for a few members");
            live.apply(&ch);
            let now = rs.with_members(&members);
            let whole = compile_direction(&now, Direction::In, &resolved).expect("compiles");
            let oracle = Policy::new(&now);
            for p in probes(&mut rng) {
                let d = oracle.decide(&p);
                let word = firewall_common::verdict(
                    d.rule.unwrap_or(firewall_common::DEFAULT_RULE),
                    d.action.to_kernel(),
                );
                assert_eq!(
                    whole.lookup(&p),
                    word,
                    "case {case} step {step}: the whole compile for {p:?}\n{text}{members:?}"
                );
                assert_eq!(
                    live.lookup(&p),
                    word,
                    "case {case} step {step}: in place for {p:?}\n{text}{members:?}"
                );
            }
        }
    }
    assert!(
        checked > 150,
        "only {checked} rule sets named a runtime set"
    );
}

#[test]
fn an_update_that_does_not_fit_says_so_and_a_sealed_table_has_headroom() {
    let text = "[sets]\nblocklist = []\n[[rule]]\nremote = \"@blocklist\"\naction = \"stealth\"\n";
    let rs = config::parse(text, Path::new("t.toml")).expect("parses");
    let mut c = compile_direction(&rs, Direction::In, &Default::default()).expect("compiles");
    let members = Members::from([(
        "blocklist".to_owned(),
        (0..10u8)
            .map(|i| IpNet::from(IpAddr::from([192, 0, 2, i])))
            .collect(),
    )]);
    c.add_members(&members);
    let rt = c.runtime.as_mut().expect("runtime");
    assert_eq!(rt.capacity(Table::Exact4), 10 + HEADROOM);
    assert_eq!(c.exact4().count(), 10);
    let rt = c.runtime.as_mut().expect("runtime");
    for i in 0..HEADROOM {
        let a = IpAddr::from([198, 18, (i >> 8) as u8, i as u8]);
        rt.add("blocklist", IpNet::from(a))
            .expect("within the headroom");
    }
    assert_eq!(
        rt.add("blocklist", "203.0.113.1/32".parse().expect("net")),
        Err(NoRoom(Table::Exact4))
    );
    // A set no rule of this direction names writes nothing.
    assert!(
        rt.add("other", "203.0.113.1/32".parse().expect("net"))
            .expect("no-op")
            .is_empty()
    );
}
