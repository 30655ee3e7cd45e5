//! The reference evaluator: the meaning of the rules, written as plainly as possible (a linear
//! first-match scan). It is the oracle the compiled tables, the XDP program and the outbound
//! cgroup hooks are tested against, and what `fwctl explain`, `[[assert]]` and `fwctl ports` ask (see `explain`).

use std::path::Path;

use serde::Serialize;

use firewall_common::identity::{ExeId, MAX_UNIT_LEVEL, Owner};

use crate::{
    model::{Action, ConnectMeta, Direction, PacketMeta, PacketProto, Rule, Ruleset},
    names::{NamePattern, Names},
};

/// What the `program` and `unit` selectors name on this host, as far as the oracle needs to
/// know. Finding it (stat'ing executables, searching the cgroup tree) is the daemon's job
/// (`firewall_daemon::host::selectors::Resolved` implements this); the oracle only asks, so it judges
/// the daemon's resolution without sharing its code.
pub trait Selectors {
    /// The executable a rule's `program` path resolves to; `None`: it names no file.
    fn program_exe(&self, path: &Path) -> Option<ExeId>;
    /// The cgroup a rule's `unit` resolves to; `None`: no cgroup of that unit (or one that
    /// cannot be matched).
    fn unit_cgroup(&self, name: &str) -> Option<UnitCgroupId>;
    /// The addresses the daemon looked up for `name`, a name an inbound rule names (empty:
    /// none, or it was not looked up).
    fn addresses(&self, name: &str) -> Vec<std::net::IpAddr>;
}

/// A unit's cgroup as the hooks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitCgroupId {
    /// The cgroup id: the directory's inode number.
    pub id: u64,
    /// Path components below the root of the cgroup2 hierarchy (1..=[`MAX_UNIT_LEVEL`] for a
    /// unit that can be matched).
    pub level: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub action: Action,
    /// Index of the deciding rule; `None` when `[defaults]` decided.
    pub rule: Option<u32>,
}

pub struct Policy<'a> {
    ruleset: &'a Ruleset,
    /// What the selectors resolve to; `None`: rules with selectors match nothing.
    resolved: Option<&'a dyn Selectors>,
    /// The names addresses were seen under; `None`: rules' names match nothing.
    names: Option<&'a dyn Names>,
}

impl<'a> Policy<'a> {
    pub fn new(ruleset: &'a Ruleset) -> Self {
        Self {
            ruleset,
            resolved: None,
            names: None,
        }
    }

    /// This policy, with the names of `remote` matching the destinations `names` says were
    /// seen under them.
    pub fn with_names(self, names: &'a dyn Names) -> Self {
        Self {
            names: Some(names),
            ..self
        }
    }

    /// A policy whose rules with `program`, `unit` or `user` selectors match the owners
    /// `resolved` says they name.
    pub fn with_selectors(ruleset: &'a Ruleset, resolved: &'a dyn Selectors) -> Self {
        Self {
            ruleset,
            resolved: Some(resolved),
            names: None,
        }
    }

    /// [`Self::decide`] for a new inbound connection to a port `listener` has bound (`None`:
    /// no recorded socket listens there).
    pub fn decide_for(&self, pkt: &PacketMeta, listener: Option<&Owner>) -> Decision {
        self.decide_by_rules(Direction::In, pkt, listener)
    }

    /// [`Self::decide_out`] for a call made by `caller`.
    pub fn decide_out_as(&self, call: &ConnectMeta, caller: &Owner) -> Decision {
        if call.on_loopback() {
            return Decision {
                action: Action::Allow,
                rule: None,
            };
        }
        self.decide_by_rules(Direction::Out, &call.as_packet(), Some(caller))
    }

    /// The first matching rule of `direction`, else the default: the rules alone, without
    /// what is decided before them (outbound loopback).
    pub fn decide_by_rules(
        &self,
        direction: Direction,
        pkt: &PacketMeta,
        owner: Option<&Owner>,
    ) -> Decision {
        self.matching(direction, pkt, owner)
            .next()
            .map(|r| Decision {
                action: r.action,
                rule: Some(r.index),
            })
            .unwrap_or_else(|| Decision {
                action: match direction {
                    Direction::In => self.ruleset.defaults.inbound,
                    Direction::Out => self.ruleset.default_outbound(self.named(pkt.remote)),
                },
                rule: None,
            })
    }

    /// The addresses looked up for an inbound `rule`'s names (canonical: IPv4-mapped
    /// addresses as IPv4); none for an outbound rule, or without selectors.
    pub fn looked_up(&self, rule: &Rule) -> Vec<std::net::IpAddr> {
        match (rule.direction, self.resolved) {
            (Direction::In, Some(s)) => rule
                .names
                .iter()
                .flat_map(|n| s.addresses(&n.name))
                .map(firewall_common::addr::canonical)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether `addr` has a name (from a DNS answer); without [`Self::with_names`], it has
    /// none.
    pub fn named(&self, addr: std::net::IpAddr) -> bool {
        self.names.is_some_and(|n| !n.names_of(addr).is_empty())
    }

    /// Every rule of `direction` that matches `pkt` with owner `owner`, in file order: the
    /// first decides, the others are shadowed by it (for this packet).
    pub fn matching<'p>(
        &'p self,
        direction: Direction,
        pkt: &'p PacketMeta,
        owner: Option<&'p Owner>,
    ) -> impl Iterator<Item = &'a Rule> + 'p {
        // Outbound, a rule's names match the names the destination was seen under in DNS
        // answers; inbound, the addresses the daemon looked up for them.
        let seen: Vec<String> = match self.names {
            Some(n)
                if direction == Direction::Out
                    && self.ruleset.of(direction).any(|r| !r.names.is_empty()) =>
            {
                n.names_of(pkt.remote)
            }
            _ => Vec::new(),
        };
        self.ruleset.of(direction).filter(move |r| {
            matches(r, pkt, &|p| match direction {
                Direction::Out => seen.iter().any(|name| p.matches(name)),
                Direction::In => self.resolved.is_some_and(|s| {
                    s.addresses(&p.name)
                        .into_iter()
                        .any(|a| firewall_common::addr::canonical(a) == pkt.remote)
                }),
            }) && self.about(r, pkt, owner)
        })
    }

    /// Whether `rule`'s selectors name `owner`: its executable is the file the `program` path
    /// resolves to, its `unit` is the unit's cgroup (the deepest cgroup of a unit the rules
    /// name among the owner's ancestors), its uid is `user`.
    /// Only TCP and UDP have owners (a socket that connects, sends or listens), so a rule
    /// with selectors never matches other protocols.
    fn about(&self, rule: &Rule, pkt: &PacketMeta, owner: Option<&Owner>) -> bool {
        let sel = &rule.selector;
        if sel.is_everyone() {
            return true;
        }
        if !matches!(pkt.proto, PacketProto::Tcp | PacketProto::Udp) {
            return false;
        }
        let (Some(owner), Some(resolved)) = (owner, self.resolved) else {
            return false;
        };
        if let Some(path) = &sel.program
            && (owner.exe == ExeId::default() || resolved.program_exe(path) != Some(owner.exe))
        {
            return false;
        }
        if let Some(name) = &sel.unit {
            let Some(unit) = resolved.unit_cgroup(name) else {
                return false;
            };
            // The units any rule of the file names, resolved.
            let named: Vec<u64> = self
                .ruleset
                .rules
                .iter()
                .filter_map(|r| r.selector.unit.as_deref())
                .filter_map(|n| resolved.unit_cgroup(n))
                .filter(|u| (1..=MAX_UNIT_LEVEL as u32).contains(&u.level))
                .map(|u| u.id)
                .collect();
            let deepest = owner
                .ancestors
                .iter()
                .rev()
                .find(|id| **id != 0 && named.contains(id));
            if deepest != Some(&unit.id) {
                return false;
            }
        }
        if let Some(uid) = sel.user
            && owner.uid != uid
        {
            return false;
        }
        true
    }

    /// The inbound verdict for a packet.
    pub fn decide(&self, pkt: &PacketMeta) -> Decision {
        self.first_match(Direction::In, pkt)
    }

    /// The outbound verdict for a connect() or a UDP sendmsg() with an address: the first
    /// outbound rule whose `proto`, `port` (the destination port) and `remote` (the destination
    /// address) match, else `[defaults] outbound`. IPv4-mapped destinations are judged as IPv4.
    /// Destinations on loopback are always allowed (`rule: None`), whatever the rules say.
    pub fn decide_out(&self, call: &ConnectMeta) -> Decision {
        if call.on_loopback() {
            return Decision {
                action: Action::Allow,
                rule: None,
            };
        }
        self.first_match(Direction::Out, &call.as_packet())
    }

    /// First match for a packet or call whose owner is unknown: rules with selectors never
    /// match it.
    fn first_match(&self, direction: Direction, pkt: &PacketMeta) -> Decision {
        self.decide_by_rules(direction, pkt, None)
    }
}

/// Whether `rule` matches `pkt`, whose remote address was seen under the names `seen`.
/// Whether `rule` matches `pkt`; `named(p)`: whether the rule's name `p` names `pkt`'s remote.
fn matches(rule: &Rule, pkt: &PacketMeta, named: &dyn Fn(&NamePattern) -> bool) -> bool {
    if !rule.matches_proto(pkt.proto) {
        return false;
    }
    if !rule.ports.is_empty() {
        let has_ports = matches!(pkt.proto, PacketProto::Tcp | PacketProto::Udp);
        if !has_ports || !rule.ports.iter().any(|r| r.contains(pkt.local_port)) {
            return false;
        }
    }
    match &rule.remote {
        None => true,
        Some(nets) => nets.iter().any(|n| n.contains(&pkt.remote)) || rule.names.iter().any(named),
    }
}
