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
    dns::{NameKey, exact_key, wildcard_key},
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
    /// The `NAMES` entries, keyed with `key`.
    pub fn name_entries(&self, key: &NameKey) -> impl Iterator<Item = (u64, AddrValue)> {
        self.names.iter().map(|(n, v)| (name_key(key, n), *v))
    }

    /// Whether the rules name names: the `DNS_NAMES` load-time constant.
    pub fn uses_names(&self) -> bool {
        !self.names.is_empty()
    }
}
