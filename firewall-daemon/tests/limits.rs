//! The documented limits hold: 10,000 distinct rules and a 1,000,000-address set compile, load
//! into the kernel and give the oracle's verdicts.

mod support;

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::Instant,
};

use firewall_daemon::{compile, kernel::Generation};

use rules::{config, model::Action, policy::Policy};
use support::{
    bpffs::BpfFs,
    frames::{L4, Spec},
    host::Host,
};

fn xdp_action(a: Action) -> u32 {
    match a {
        Action::Allow => 2,
        Action::Stealth => 1,
        Action::Reject => 3,
    }
}

fn check(generation: &mut Generation, rs: &rules::model::Ruleset, spec: &Spec) {
    let want = Policy::new(rs).decide(&spec.meta());
    let (got, _) = generation.test_run(&spec.frame()).expect("test run");
    assert_eq!(
        got,
        xdp_action(want.action),
        "{spec:?}: oracle says {want:?}"
    );
}

#[test]
fn ten_thousand_distinct_rules() {
    // Each rule: its own remote /32, its own port, alternating actions: no two rules share a
    // class, the worst shape for the pair table short of overlap.
    let mut text = String::from("[defaults]\ninbound = \"stealth\"\n");
    for i in 0..10_000u32 {
        let a = Ipv4Addr::from(0x0a00_0000 + i);
        let action = ["allow", "reject"][(i % 2) as usize];
        text.push_str(&format!(
            "[[rule]]\nproto = \"tcp\"\nport = {}\nremote = \"{a}\"\naction = \"{action}\"\n",
            1000 + i
        ));
    }
    let t = Instant::now();
    let rs = config::parse(&text, Path::new("many.toml")).expect("parse");
    let c = compile::compile(&rs, &Default::default()).expect("compile");
    let fs = BpfFs::new();
    let mut generation = Generation::load(&c, &rs, &fs.pin_dir("p"), 1).expect("load");
    eprintln!("10,000 rules: parse+compile+load {:?}", t.elapsed());
    // Half the rules reject: the test frames are for this host, so they are answered.
    Host::open(&fs.pin_dir("p")).add(IpAddr::from([192, 168, 0, 2]));
    // Each address class has one pair, carried in its address entry instead of `PAIRS`.
    assert!(c.pairs.is_empty(), "{} pairs left in PAIRS", c.pairs.len());
    assert_eq!(
        c.exact4()
            .filter(|(_, v)| v.pair_verdict != firewall_common::NO_MATCH)
            .count(),
        10_000
    );
    for i in [0u32, 1, 4_999, 9_998, 9_999] {
        let a = Ipv4Addr::from(0x0a00_0000 + i).to_string();
        check(
            &mut generation,
            &rs,
            &Spec::new(&a, "192.168.0.2", L4::SYN, (1000 + i) as u16),
        );
        // Right address, another rule's port: no match, default stealth.
        check(
            &mut generation,
            &rs,
            &Spec::new(&a, "192.168.0.2", L4::SYN, (1001 + i) as u16),
        );
    }
}

#[test]
fn million_address_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.txt");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    // 1,000,000 host addresses in 10.0.0.0/8, every other address (so neighbours differ).
    for i in 0..1_000_000u32 {
        writeln!(f, "{}", Ipv4Addr::from(0x0a00_0000 + 2 * i)).expect("write");
    }
    drop(f);
    let text = format!(
        "[defaults]\ninbound = \"allow\"\n[sets]\nbig = {{ file = \"{}\" }}\n\
         [[rule]]\nname = \"block the set\"\nremote = \"@big\"\naction = \"stealth\"\n",
        path.display()
    );
    let t = Instant::now();
    let rs = config::parse(&text, &dir.path().join("rules.toml")).expect("parse");
    let c = compile::compile(&rs, &Default::default()).expect("compile");
    let fs = BpfFs::new();
    let mut generation = Generation::load(&c, &rs, &fs.pin_dir("p"), 1).expect("load");
    eprintln!(
        "1,000,000-address set: parse+compile+load {:?}",
        t.elapsed()
    );
    assert_eq!(c.addr4.len(), 1_000_000);
    for i in [0u32, 1, 2, 999_998, 1_999_998, 1_999_999, 2_000_000] {
        let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)).to_string();
        check(
            &mut generation,
            &rs,
            &Spec::new(&a, "192.168.0.2", L4::Udp, 53),
        );
    }
}
