//! The names of outbound rules -> the `NAMES` table (compile.md, "Names").
//!
//! A name or wildcard is compiled like an address prefix that nothing encloses: its entry
//! holds the first rule naming it with every protocol, per protocol class, and its class for
//! `PAIRS` (interned with the address classes, so the pairs are computed with them). Nothing
//! is folded: the connect hook looks up every key a destination's names give (the name, and
//! its suffixes as wildcards) and takes the `min` of them all, so no entry needs another's.
//! Keys are the names' keyed hashes (`firewall_common::dns`), computed when the table is
//! written, with the key the kernel uses.

use std::collections::BTreeMap;

use firewall_common::{
    AddrValue, NO_MATCH,
    dns::{NO_GROUP, NameKey, NameSlot, exact_key, wildcard_key},
};
use rules::{model::Rule, names::NamePattern};

use super::{Classes, Compiled, addrs::Own};

/// Each name the rules name, with what they say of it.
pub(super) fn name_values(rules: &[&Rule], classes: &mut Classes) -> Vec<(NamePattern, AddrValue)> {
    let mut own: BTreeMap<&NamePattern, Own> = BTreeMap::new();
    for rule in rules {
        for name in &rule.names {
            own.entry(name).or_insert_with(Own::new).add_rule(rule);
        }
    }
    own.into_iter()
        .map(|(name, o)| {
            let value = AddrValue {
                // `Own::add_rule` keeps the rules ascending and without duplicates.
                class: classes.intern(o.ports),
                any_proto: o.any_proto,
                proto: o.proto,
                pair_port_class: NO_MATCH,
                pair_verdict: NO_MATCH,
            };
            (name.clone(), value)
        })
        .collect()
}

/// The `NAMES` key of `name` under the hash key `key`.
pub fn name_key(key: &NameKey, name: &NamePattern) -> u64 {
    if name.wildcard {
        wildcard_key(key, &name.name)
    } else {
        exact_key(key, &name.name)
    }
}

impl Compiled {
    /// The `NAMES` entries, keyed with `key`: the rules about every process' names, then each
    /// group's.
    pub fn name_entries(&self, key: &NameKey) -> impl Iterator<Item = (NameSlot, AddrValue)> {
        let slot = move |group: u32| {
            move |(n, v): &(NamePattern, AddrValue)| {
                (
                    NameSlot {
                        key: name_key(key, n),
                        group,
                        _pad: 0,
                    },
                    *v,
                )
            }
        };
        self.names.iter().map(slot(NO_GROUP)).chain(
            self.groups
                .iter()
                .flat_map(move |g| g.names.iter().map(slot(g.id))),
        )
    }

    /// Whether the rules name names (the `NAMES` entries to write).
    pub fn uses_names(&self) -> bool {
        !self.names.is_empty() || self.scoped_names()
    }

    /// Whether groups of rules about programs name names: the `NAMES_SCOPED` constant.
    pub fn scoped_names(&self) -> bool {
        self.groups.iter().any(|g| !g.names.is_empty())
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "test code")]
mod tests {
    //! The compiled names, read as the connect hook reads them, against the oracle: random
    //! outbound rule sets mixing names, wildcards, addresses, protocols and ports, and random
    //! calls to destinations seen under random names.

    use std::{net::IpAddr, path::Path};

    use rand::{RngExt as _, SeedableRng, rngs::Xoshiro256PlusPlus as StdRng};
    use rules::{
        config,
        model::{ConnectMeta, Direction, PacketProto},
        names::Names,
        policy::Policy,
    };

    use crate::compile::compile_direction;

    const PATTERNS: [&str; 7] = [
        "example.test",
        "*.example.test",
        "a.example.test",
        "*.a.example.test",
        "other.test",
        "*.test",
        "*.a.b.c.d.e.f.g.h",
    ];
    const NAMES: [&str; 7] = [
        "example.test",
        "a.example.test",
        "b.a.example.test",
        "other.test",
        "x.other.test",
        "unrelated.org",
        "z.a.b.c.d.e.f.g.h",
    ];
    const ADDRS: [&str; 3] = ["10.1.2.3", "10.9.9.9", "2001:db8::7"];

    struct Seen(Vec<String>);

    impl Names for Seen {
        fn names_of(&self, _addr: IpAddr) -> Vec<String> {
            self.0.clone()
        }
    }

    fn rule(rng: &mut StdRng) -> String {
        let mut remote: Vec<String> = (0..rng.random_range(1..=3))
            .map(|_| PATTERNS[rng.random_range(0..PATTERNS.len())].to_owned())
            .collect();
        if rng.random_bool(0.3) {
            remote.push(["10.1.2.3", "10.0.0.0/8", "2001:db8::/64"][rng.random_range(0..3)].into());
        }
        let remote: Vec<String> = remote.iter().map(|r| format!("{r:?}")).collect();
        let service = match rng.random_range(0..4) {
            0 => String::new(),
            1 => "proto = \"udp\"\n".into(),
            2 => format!("proto = \"tcp\"\nport = {}\n", 440 + rng.random_range(0..4)),
            _ => format!(
                "port = [{}, {}]\n",
                440 + rng.random_range(0..4),
                440 + rng.random_range(0..4)
            ),
        };
        let action = ["allow", "reject", "stealth"][rng.random_range(0..3)];
        format!(
            "[[rule]]\ndirection = \"out\"\nremote = [{}]\n{service}action = \"{action}\"\n",
            remote.join(", ")
        )
    }

    /// A verdict word as the oracle says it: the action, and the rule (`None`: the default).
    fn decided(word: u32) -> (u32, Option<u32>) {
        let rule = firewall_common::verdict_rule(word);
        (
            firewall_common::verdict_action(word),
            (rule != firewall_common::DEFAULT_RULE).then_some(rule),
        )
    }

    #[test]
    fn compiled_names_agree_with_the_oracle() {
        let seed: u64 = rand::random();
        let mut rng = StdRng::seed_from_u64(seed);
        for round in 0..300 {
            let default = ["allow", "reject", "stealth"][rng.random_range(0..3)];
            let mut text = format!("[defaults]\noutbound = \"{default}\"\n");
            if rng.random_bool(0.5) {
                text.push_str("[dns]\nenforce = true\n");
            }
            for _ in 0..rng.random_range(1..=8) {
                text.push_str(&rule(&mut rng));
            }
            let ruleset = config::parse(&text, Path::new("names.toml")).unwrap();
            let compiled =
                compile_direction(&ruleset, Direction::Out, &Default::default()).unwrap();
            for _ in 0..50 {
                let names: Vec<String> = (0..rng.random_range(0..=2))
                    .map(|_| NAMES[rng.random_range(0..NAMES.len())].to_owned())
                    .collect();
                let call = ConnectMeta {
                    remote: ADDRS[rng.random_range(0..ADDRS.len())].parse().unwrap(),
                    proto: if rng.random_bool(0.5) {
                        PacketProto::Tcp
                    } else {
                        PacketProto::Udp
                    },
                    remote_port: 440 + rng.random_range(0..5),
                };
                let seen = Seen(names.clone());
                let oracle = Policy::new(&ruleset).with_names(&seen).decide_out(&call);
                let word = compiled.lookup_named(&call.as_packet(), None, &names);
                assert_eq!(
                    decided(word),
                    (oracle.action.to_kernel(), oracle.rule),
                    "seed {seed}, round {round}: {call:?} seen as {names:?}\n{text}"
                );
            }
        }
    }

    /// Inbound rules' names: the compiler writes the addresses the daemon looked up for them
    /// (`Ruleset::with_lookups`), the oracle asks for them per packet (`Selectors`); the two
    /// agree.
    #[test]
    fn inbound_names_compile_to_their_looked_up_addresses_as_the_oracle_matches_them() {
        const HOSTS: [&str; 3] = ["a.example.test", "b.example.test", "monitor.test"];
        const FROM: [&str; 5] = [
            "10.1.2.3",
            "10.9.9.9",
            "2001:db8::7",
            "::ffff:10.1.2.3",
            "192.0.2.1",
        ];
        let seed: u64 = rand::random();
        let mut rng = StdRng::seed_from_u64(seed);
        for round in 0..300 {
            let default = ["allow", "reject", "stealth"][rng.random_range(0..3)];
            let mut text = format!("[defaults]\ninbound = \"{default}\"\n");
            for _ in 0..rng.random_range(1..=6) {
                let mut remote: Vec<String> = (0..rng.random_range(1..=2))
                    .map(|_| format!("{:?}", HOSTS[rng.random_range(0..HOSTS.len())]))
                    .collect();
                if rng.random_bool(0.3) {
                    remote.push("\"10.0.0.0/8\"".into());
                }
                let port = if rng.random_bool(0.5) {
                    format!("proto = \"tcp\"\nport = {}\n", 440 + rng.random_range(0..3))
                } else {
                    String::new()
                };
                let action = ["allow", "reject", "stealth"][rng.random_range(0..3)];
                text.push_str(&format!(
                    "[[rule]]\nremote = [{}]\n{port}action = \"{action}\"\n",
                    remote.join(", ")
                ));
            }
            let ruleset = config::parse(&text, Path::new("in.toml")).unwrap();
            // Each name looked up to none, one or two of the addresses (mapped ones too).
            let lookups: std::collections::BTreeMap<String, Vec<IpAddr>> = HOSTS
                .iter()
                .map(|h| {
                    let addrs = (0..rng.random_range(0..=2))
                        .map(|_| FROM[rng.random_range(0..FROM.len())].parse().unwrap())
                        .collect();
                    ((*h).to_owned(), addrs)
                })
                .collect();
            let mut resolved = crate::host::selectors::Resolved::default();
            resolved.lookups = crate::host::lookups::Lookups::fixed(lookups.clone());
            let compiled = compile_direction(&ruleset, Direction::In, &resolved).unwrap();
            let policy = Policy::with_selectors(&ruleset, &resolved);
            for from in FROM {
                let pkt = rules::model::PacketMeta {
                    remote: firewall_common::addr::canonical(from.parse().unwrap()),
                    proto: PacketProto::Tcp,
                    local_port: 440 + rng.random_range(0..4),
                };
                let oracle = policy.decide(&pkt);
                let word = compiled.lookup(&pkt);
                assert_eq!(
                    decided(word),
                    (oracle.action.to_kernel(), oracle.rule),
                    "seed {seed}, round {round}: {pkt:?} with {lookups:?}\n{text}"
                );
            }
        }
    }
}
