//! The remote-address side of the classifier: one longest-prefix-match trie per family whose
//! value at each prefix already folds in every enclosing prefix, so the kernel needs one trie
//! lookup, never a walk up the parents (compile.md, "Splitting rules by what they name").
//!
//! The kernel keeps full-length prefixes (/32, /128) in a hash and only shorter ones in the
//! trie (`firewall_common::ADDR_EXACT4` says why); [`Compiled::exact4`] and its siblings are
//! that split, and [`Compiled::addr_tables`] which of the four tables hold entries.

use std::collections::BTreeMap;

use firewall_common::{AddrValue, NO_MATCH, PROTO_CLASSES};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use rules::model::Rule;

use super::{Classes, Compiled, Service, service, word};

impl Compiled {
    /// The IPv4 /32 prefixes: the `EXACT4` hash.
    pub fn exact4(&self) -> impl Iterator<Item = &(Ipv4Net, AddrValue)> {
        self.addr4.iter().filter(|(n, _)| n.prefix_len() == 32)
    }

    /// The shorter IPv4 prefixes: the `ADDR4` trie.
    pub fn prefixes4(&self) -> impl Iterator<Item = &(Ipv4Net, AddrValue)> {
        self.addr4.iter().filter(|(n, _)| n.prefix_len() < 32)
    }

    /// The IPv6 /128 prefixes: the `EXACT6` hash.
    pub fn exact6(&self) -> impl Iterator<Item = &(Ipv6Net, AddrValue)> {
        self.addr6.iter().filter(|(n, _)| n.prefix_len() == 128)
    }

    /// The shorter IPv6 prefixes: the `ADDR6` trie.
    pub fn prefixes6(&self) -> impl Iterator<Item = &(Ipv6Net, AddrValue)> {
        self.addr6.iter().filter(|(n, _)| n.prefix_len() < 128)
    }

    /// The non-zero words of `EXACT4_FILTER`: which /16 networks hold /32 entries.
    pub fn exact4_filter(&self) -> BTreeMap<u32, u32> {
        filter_words(self.exact4().map(|(n, _)| n))
    }

    /// The `ADDR_TABLES` load-time constant: a bit for each address table with entries.
    /// With runtime sets, every table: members may come to any of them.
    pub fn addr_tables(&self) -> u32 {
        use firewall_common::{ADDR_EXACT4, ADDR_EXACT6, ADDR_PREFIX4, ADDR_PREFIX6};
        if self.runtime.is_some() {
            return ADDR_EXACT4 | ADDR_PREFIX4 | ADDR_EXACT6 | ADDR_PREFIX6;
        }
        let bit = |any: bool, b: u32| if any { b } else { 0 };
        bit(self.exact4().next().is_some(), ADDR_EXACT4)
            | bit(self.prefixes4().next().is_some(), ADDR_PREFIX4)
            | bit(self.exact6().next().is_some(), ADDR_EXACT6)
            | bit(self.prefixes6().next().is_some(), ADDR_PREFIX6)
    }
}

/// The non-zero `EXACT4_FILTER` words for these /32 networks.
pub(super) fn filter_words<'a>(nets: impl Iterator<Item = &'a Ipv4Net>) -> BTreeMap<u32, u32> {
    let mut words = BTreeMap::new();
    for n in nets {
        let (word, bit) = firewall_common::exact4_filter_slot(n.addr().octets());
        *words.entry(word).or_insert(0) |= bit;
    }
    words
}

/// Per-prefix accumulation of what the rules naming that prefix (not its ancestors) say.
#[derive(Clone, Debug)]
pub(super) struct Own {
    pub(super) any_proto: u32,
    pub(super) proto: [u32; PROTO_CLASSES],
    /// The (y,c) rules naming it, ascending.
    pub(super) ports: Vec<u32>,
}

impl Own {
    pub(super) fn new() -> Self {
        Self {
            any_proto: NO_MATCH,
            proto: [NO_MATCH; PROTO_CLASSES],
            ports: Vec::new(),
        }
    }

    /// Adds what `rule` says of the addresses it names (rules come in ascending order).
    pub(super) fn add_rule(&mut self, rule: &Rule) {
        let w = word(rule);
        match service(rule) {
            Service::All => self.any_proto = self.any_proto.min(w),
            Service::Protos(ps) => {
                for &p in ps {
                    self.proto[p as usize] = self.proto[p as usize].min(w);
                }
            }
            Service::Ports(_) => {
                if self.ports.last() != Some(&rule.index) {
                    self.ports.push(rule.index);
                }
            }
        }
    }

    /// Folds in what another prefix holding the same addresses says (an enclosing prefix, or
    /// a runtime set the prefix is a member of). `ports` is left unsorted.
    pub(super) fn fold(&mut self, other: &Own) {
        self.any_proto = self.any_proto.min(other.any_proto);
        for (p, o) in self.proto.iter_mut().zip(other.proto) {
            *p = (*p).min(o);
        }
        self.ports.extend_from_slice(&other.ports);
    }
}

/// A resolved trie node: own values folded with every enclosing prefix.
struct Folded {
    net: IpNet,
    any_proto: u32,
    proto: [u32; PROTO_CLASSES],
    ports: Vec<u32>,
}

pub(super) type Tries = (Vec<(Ipv4Net, AddrValue)>, Vec<(Ipv6Net, AddrValue)>);

/// What the rules naming each prefix say, prefix by prefix (not folded).
pub(super) fn own_values(rules: &[&Rule]) -> BTreeMap<IpNet, Own> {
    let mut own: BTreeMap<IpNet, Own> = BTreeMap::new();
    for rule in rules {
        let Some(nets) = &rule.remote else { continue };
        for net in nets {
            own.entry(*net).or_insert_with(Own::new).add_rule(rule);
        }
    }
    own
}

pub(super) fn address_tries(own: &BTreeMap<IpNet, Own>, classes: &mut Classes) -> Tries {
    // IpNet orders by address then prefix length, so a prefix comes right before everything it
    // contains: a stack of open ancestors gives each prefix its closest enclosing one.
    let mut stack: Vec<Folded> = Vec::new();
    let mut addr4 = Vec::new();
    let mut addr6 = Vec::new();
    for (&net, o) in own {
        while let Some(top) = stack.last() {
            if top.net.contains(&net) && same_family(&top.net, &net) {
                break;
            }
            stack.pop();
        }
        let folded = match stack.last() {
            Some(parent) => {
                let mut proto = o.proto;
                for (p, parent_p) in proto.iter_mut().zip(parent.proto) {
                    *p = (*p).min(parent_p);
                }
                let ports = if o.ports.is_empty() {
                    parent.ports.clone()
                } else {
                    merge_sorted(&parent.ports, &o.ports)
                };
                Folded {
                    net,
                    any_proto: o.any_proto.min(parent.any_proto),
                    proto,
                    ports,
                }
            }
            None => Folded {
                net,
                any_proto: o.any_proto,
                proto: o.proto,
                ports: o.ports.clone(),
            },
        };
        let value = AddrValue {
            class: classes.intern(folded.ports.clone()),
            any_proto: folded.any_proto,
            proto: folded.proto,
            pair_port_class: NO_MATCH,
            pair_verdict: NO_MATCH,
        };
        match net {
            IpNet::V4(n) => addr4.push((n, value)),
            IpNet::V6(n) => addr6.push((n, value)),
        }
        stack.push(folded);
    }
    (addr4, addr6)
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

fn merge_sorted(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = a.iter().chain(b).copied().collect();
    out.sort_unstable();
    out.dedup();
    out
}
