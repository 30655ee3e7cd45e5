//! Rules -> map contents. The structure and its limits are explained in `compile.md`.
//!
//! Both directions compile into the same map shapes ([`compile_direction`]): inbound the
//! rules' `port` is the packet's local port and `remote` its source; outbound (the cgroup
//! hooks' copy of the program) `port` is the destination port of a connect() or sendmsg() and
//! `remote` its destination address.

use std::collections::{BTreeMap, HashMap, HashSet};

use firewall_common::{
    AddrValue, NO_MATCH, PORT_SLOTS, PROTO_CLASSES, PROTO_ICMP, PROTO_OTHER, PROTO_TCP, PROTO_UDP,
    PairKey, PortValue, port_slot, verdict,
};
use ipnet::{Ipv4Net, Ipv6Net};

use firewall_common::identity::{GroupKey, MAX_UNIT_LEVEL};
use rules::model::{Action, Direction, Proto, Rule, Ruleset};

use crate::host::selectors::Resolved;

mod addrs;
#[cfg(feature = "testrun")]
mod lookup;
pub mod names;
mod ports;
pub mod runtime;
mod selectors;

pub use runtime::{Change, NoRoom, Runtime};

use addrs::address_tries;
use ports::{paint, slot_range};
use selectors::{Scope, UNIT_SHAPES, scope};

/// Most (address class, port class) entries a rule set may need (see compile.md).
pub const MAX_PAIRS: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(
        "the rules that name both a remote address and ports need {needed} address/port \
         combinations; the limit is {limit}. Put addresses that share the same ports into one \
         [sets] entry and use one rule for them"
    )]
    TooManyPairs { needed: usize, limit: usize },
}

/// Everything the kernel program needs for one direction of one rule set.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Whose rules these are.
    pub direction: Direction,
    pub addr4: Vec<(Ipv4Net, AddrValue)>,
    pub addr6: Vec<(Ipv6Net, AddrValue)>,
    /// Only the slots that differ from "no match", by slot index.
    pub ports: BTreeMap<u32, PortValue>,
    /// Per protocol class: the first rule matching every address and port of it (the
    /// `PROTO_VERDICTS` load-time constant).
    pub proto_verdicts: [u32; PROTO_CLASSES],
    pub pairs: HashMap<PairKey, u32>,
    /// Verdict word for packets (outbound: calls) no rule matches: `[defaults] inbound` or
    /// `[defaults] outbound`.
    pub default_verdict: u32,
    /// Outbound: the verdict word for calls no rule matches to an address without a name
    /// (`[dns] enforce`); else `default_verdict`.
    pub unnamed_verdict: u32,
    /// Some verdict of this direction can be `stealth` (a rule or the default).
    pub can_stealth: bool,
    /// Number of rules in the file (both directions): the size of the per-rule counters.
    pub rule_count: u32,
    pub addr_classes: usize,
    pub port_classes: usize,
    /// Rules with `program`, `unit` or `user` selectors, one entry per group of rules whose
    /// selectors resolve to the same values (compile.md, "Rules about programs").
    pub groups: Vec<Group>,
    /// Bit `s` set when a group of shape `s` exists (`SCOPED_SHAPES`).
    pub scoped_shapes: u32,
    /// cgroup id -> level of every resolved unit the groups name (`UNITS`, `UNIT_LEVELS`).
    pub units: BTreeMap<u64, u32>,
    /// Rules whose selectors resolve to nothing right now (a program path that does not
    /// exist, a unit that is not running): they match nothing until the daemon resolves them.
    pub unresolved: Vec<u32>,
    /// Indices of this direction's rules whose decisions are logged (`LOG_RULES`).
    pub log_rules: Vec<u32>,
    /// `LOG_FLAGS`: which decisions of this direction are logged (`firewall_common::LOG_*`).
    pub log_flags: u32,
    /// When the rules name runtime sets: what updating their members in place needs
    /// (`runtime.rs`).
    pub runtime: Option<Box<Runtime>>,
    /// The names and wildcards of this direction's rules, with what the rules say of them
    /// (`NAMES`, `names.rs`).
    pub names: Vec<(rules::names::NamePattern, AddrValue)>,
}

/// One group's tables: the same shapes as the unscoped ones, keyed by `id` in the kernel.
#[derive(Debug, Clone)]
pub struct Group {
    pub key: GroupKey,
    pub id: u32,
    pub addr4: Vec<(Ipv4Net, AddrValue)>,
    pub addr6: Vec<(Ipv6Net, AddrValue)>,
    pub ports: BTreeMap<u32, PortValue>,
    pub proto_verdicts: [u32; PROTO_CLASSES],
    /// The group's names (`NAMES`, keyed by the group's id).
    pub names: Vec<(rules::names::NamePattern, AddrValue)>,
}

/// The tables of one set of rules (the unscoped ones, or one group's).
struct Tables {
    addr4: Vec<(Ipv4Net, AddrValue)>,
    addr6: Vec<(Ipv6Net, AddrValue)>,
    ports: BTreeMap<u32, PortValue>,
    proto_verdicts: [u32; PROTO_CLASSES],
    /// The rules' names.
    names: Vec<(rules::names::NamePattern, AddrValue)>,
    /// What runtime sets need to compute values later (`runtime.rs`), when asked for.
    kept: Option<Kept>,
}

/// The compiler's intermediate results that runtime sets' updates start from.
struct Kept {
    own: BTreeMap<ipnet::IpNet, addrs::Own>,
    port_classes_of: HashMap<u32, Vec<u32>>,
}

/// Which of the three service groups a rule belongs to (compile.md).
enum Service<'a> {
    /// (a): every protocol, every port.
    All,
    /// (b): these protocol classes, every port.
    Protos(&'a [u32]),
    /// (c): TCP and/or UDP, these ports.
    Ports(&'a [u32]),
}

fn proto_classes(proto: Proto) -> &'static [u32] {
    match proto {
        Proto::Any => &[PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_OTHER],
        Proto::Tcp => &[PROTO_TCP],
        Proto::Udp => &[PROTO_UDP],
        Proto::Icmp => &[PROTO_ICMP],
    }
}

fn service(rule: &Rule) -> Service<'static> {
    if !rule.ports.is_empty() {
        // Ports are only valid with tcp, udp or any (= tcp + udp); config rejects the rest.
        Service::Ports(match rule.proto {
            Proto::Tcp => &[PROTO_TCP],
            Proto::Udp => &[PROTO_UDP],
            _ => &[PROTO_TCP, PROTO_UDP],
        })
    } else if rule.proto == Proto::Any {
        Service::All
    } else {
        Service::Protos(proto_classes(rule.proto))
    }
}

fn word(rule: &Rule) -> u32 {
    verdict(rule.index, rule.action.to_kernel())
}

/// Interns rule-index sets as dense class ids.
#[derive(Default, Clone)]
struct Classes {
    ids: HashMap<Vec<u32>, u32>,
    sets: Vec<Vec<u32>>,
}

/// Short: a rule set's classes number in the hundreds of thousands.
impl std::fmt::Debug for Classes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} classes", self.sets.len())
    }
}

impl Classes {
    fn intern(&mut self, set: Vec<u32>) -> u32 {
        if set.is_empty() {
            return NO_MATCH;
        }
        if let Some(&id) = self.ids.get(&set) {
            return id;
        }
        let id = self.sets.len() as u32;
        self.sets.push(set.clone());
        self.ids.insert(set, id);
        id
    }
}

impl Compiled {
    /// Bit `l` set for each level a resolved unit's cgroup is at (`UNIT_LEVELS`).
    pub fn unit_levels(&self) -> u32 {
        self.units.values().fold(0, |m, l| m | (1 << l))
    }
}

/// The inbound rules (the XDP program's maps).
pub fn compile(ruleset: &Ruleset, resolved: &Resolved) -> Result<Compiled, CompileError> {
    compile_direction(ruleset, Direction::In, resolved)
}

/// The rules of one direction. Outbound rules compile exactly like inbound ones, their `port`
/// standing for the destination port. Rules with selectors are grouped by what `resolved`
/// says their selectors are now.
pub fn compile_direction(
    ruleset: &Ruleset,
    direction: Direction,
    resolved: &Resolved,
) -> Result<Compiled, CompileError> {
    // An inbound rule's names are the addresses the daemon looked up for them
    // (`crate::host::lookups`): compiled as if the file listed those.
    let looked_up;
    let ruleset = if direction == Direction::In && !ruleset.lookups().is_empty() {
        looked_up = ruleset.with_lookups(&|name| resolved.lookups.addresses(name));
        &looked_up
    } else {
        ruleset
    };
    let mut unscoped: Vec<&Rule> = Vec::new();
    let mut scoped: BTreeMap<GroupKey, Vec<&Rule>> = BTreeMap::new();
    let mut unresolved = Vec::new();
    for rule in ruleset.of(direction) {
        match scope(rule, resolved) {
            Scope::Everyone => unscoped.push(rule),
            Scope::Group(key) => scoped.entry(key).or_default().push(rule),
            Scope::Unresolved => unresolved.push(rule.index),
        }
    }
    let mut addr_classes = Classes::default();
    let mut port_classes = Classes::default();
    let mut pairs = HashMap::new();
    let runtime_used = ruleset.uses_runtime_sets(direction);
    let mut base = tables(
        &unscoped,
        &mut addr_classes,
        &mut port_classes,
        &mut pairs,
        runtime_used,
    )?;
    let mut groups = Vec::new();
    let mut scoped_shapes = 0;
    let mut units = BTreeMap::new();
    for (id, (key, rules)) in scoped.into_iter().enumerate() {
        let t = tables(
            &rules,
            &mut addr_classes,
            &mut port_classes,
            &mut pairs,
            false,
        )?;
        scoped_shapes |= 1 << key.shape();
        groups.push(Group {
            key,
            id: id as u32,
            addr4: t.addr4,
            addr6: t.addr6,
            ports: t.ports,
            proto_verdicts: t.proto_verdicts,
            names: t.names,
        });
    }
    // A process's unit is the deepest of its cgroups that *any* rule names (both directions
    // agree on it, and so does the oracle).
    if scoped_shapes & UNIT_SHAPES != 0 {
        for rule in &ruleset.rules {
            if let Some(u) = rule.selector.unit.as_deref().and_then(|n| resolved.unit(n))
                && (1..=MAX_UNIT_LEVEL as u32).contains(&u.level)
            {
                units.insert(u.id, u.level);
            }
        }
    }
    let inlined = inline_sole_pairs(&mut base, &mut pairs);
    let addr_class_count = addr_classes.sets.len();
    let runtime = base.kept.take().map(|kept| {
        Box::new(Runtime::new(
            ruleset,
            &unscoped,
            kept,
            std::mem::take(&mut addr_classes),
            inlined,
            &pairs,
        ))
    });
    let all: Vec<&Rule> = ruleset.of(direction).collect();
    let default_action = ruleset.default_action(direction);
    let log_rules: Vec<u32> = all
        .iter()
        .filter(|r| ruleset.logs(r))
        .map(|r| r.index)
        .collect();
    let log_flags = [
        (
            ruleset.logs_default(direction),
            firewall_common::LOG_DEFAULT,
        ),
        (
            direction == Direction::In && ruleset.logs_invalid(),
            firewall_common::LOG_INVALID,
        ),
        (!log_rules.is_empty(), firewall_common::LOG_SOME_RULE),
    ]
    .into_iter()
    .filter_map(|(on, bit)| on.then_some(bit))
    .fold(0, |a, b| a | b);
    Ok(Compiled {
        direction,
        can_stealth: default_action == Action::Stealth
            || all.iter().any(|r| r.action == Action::Stealth),
        addr4: base.addr4,
        addr6: base.addr6,
        ports: base.ports,
        proto_verdicts: base.proto_verdicts,
        pairs,
        default_verdict: verdict(firewall_common::DEFAULT_RULE, default_action.to_kernel()),
        unnamed_verdict: verdict(
            firewall_common::DEFAULT_RULE,
            match direction {
                Direction::In => default_action,
                Direction::Out => ruleset.default_outbound(false),
            }
            .to_kernel(),
        ),
        rule_count: ruleset.rules.len() as u32,
        addr_classes: addr_class_count,
        port_classes: port_classes.sets.len(),
        groups,
        scoped_shapes,
        units,
        unresolved,
        log_rules,
        log_flags,
        runtime,
        names: base.names,
    })
}

/// Moves the `PAIRS` entry of each unscoped address class that has exactly one into the
/// address entries of that class ([`AddrValue::pair_port_class`]), and out of `pairs`. Group
/// classes are never the same as unscoped ones (a class is a set of rules, and a rule is
/// either scoped or not), and the selectors' lookup keeps reading `PAIRS`.
/// Returns the classes inlined, with their pair.
fn inline_sole_pairs(
    base: &mut Tables,
    pairs: &mut HashMap<PairKey, u32>,
) -> HashMap<u32, (u32, u32)> {
    let used: HashSet<u32> = base
        .addr4
        .iter()
        .map(|(_, v)| v.class)
        .chain(base.addr6.iter().map(|(_, v)| v.class))
        .chain(base.names.iter().map(|(_, v)| v.class))
        .filter(|c| *c != NO_MATCH)
        .collect();
    // Per class: how many pairs, and the last one seen.
    let mut per_class: HashMap<u32, (usize, u32, u32)> = HashMap::new();
    for (k, w) in pairs.iter() {
        if used.contains(&k.addr_class) {
            let e = per_class
                .entry(k.addr_class)
                .or_insert((0, NO_MATCH, NO_MATCH));
            *e = (e.0 + 1, k.port_class, *w);
        }
    }
    let sole: HashMap<u32, (u32, u32)> = per_class
        .into_iter()
        .filter(|(_, (n, _, _))| *n == 1)
        .map(|(class, (_, port_class, w))| (class, (port_class, w)))
        .collect();
    let values = base
        .addr4
        .iter_mut()
        .map(|(_, v)| v)
        .chain(base.addr6.iter_mut().map(|(_, v)| v))
        .chain(base.names.iter_mut().map(|(_, v)| v));
    for v in values {
        if let Some((port_class, w)) = sole.get(&v.class) {
            v.pair_port_class = *port_class;
            v.pair_verdict = *w;
            v.class = NO_MATCH;
        }
    }
    for (class, (port_class, _)) in &sole {
        pairs.remove(&PairKey {
            addr_class: *class,
            port_class: *port_class,
        });
    }
    sole
}

/// Compiles `rules` (ascending index order) into tables; their address/port classes are
/// interned into the shared `addr_classes`/`port_classes` (a class is a set of rule indices,
/// so classes of different groups never coincide) and their pairs added to `pairs`.
fn tables(
    rules: &[&Rule],
    addr_classes: &mut Classes,
    port_classes: &mut Classes,
    pairs: &mut HashMap<PairKey, u32>,
    keep: bool,
) -> Result<Tables, CompileError> {
    // --- service side: (x,a)/(x,b) rules become per-protocol constants; (x,c) rules are
    // written into their port slots; port classes come from (y,c) rules.
    let mut proto_verdicts = [NO_MATCH; PROTO_CLASSES];
    let mut any_addr = vec![NO_MATCH; PORT_SLOTS as usize];
    // Rules are in ascending index order, so the first word written to a slot is its minimum:
    // `paint` skips slots already written using a next-unwritten pointer (union-find), which
    // keeps wide port ranges linear overall.
    let mut next_free: Vec<u32> = (0..=PORT_SLOTS).collect();
    for rule in rules.iter().filter(|r| r.remote.is_none()) {
        let w = word(rule);
        match service(rule) {
            Service::All => {
                for v in &mut proto_verdicts {
                    *v = (*v).min(w);
                }
            }
            Service::Protos(protos) => {
                for &p in protos {
                    proto_verdicts[p as usize] = proto_verdicts[p as usize].min(w);
                }
            }
            Service::Ports(protos) => {
                for &p in protos {
                    for range in &rule.ports {
                        let (lo, hi) = slot_range(p, range.lo, range.hi);
                        paint(&mut any_addr, &mut next_free, lo, hi, w);
                    }
                }
            }
        }
    }

    let yc: Vec<&Rule> = rules
        .iter()
        .copied()
        .filter(|r| r.remote.is_some() && !r.ports.is_empty())
        .collect();
    let mut port_class = vec![NO_MATCH; PORT_SLOTS as usize];
    for proto in [PROTO_TCP, PROTO_UDP] {
        // Sweep the port line: the set of (y,c) rules is constant between range boundaries.
        let mut edges: BTreeMap<u32, (Vec<u32>, Vec<u32>)> = BTreeMap::new();
        for rule in &yc {
            let Service::Ports(protos) = service(rule) else {
                continue;
            };
            if !protos.contains(&proto) {
                continue;
            }
            for range in &rule.ports {
                edges.entry(range.lo as u32).or_default().0.push(rule.index);
                edges
                    .entry(range.hi as u32 + 1)
                    .or_default()
                    .1
                    .push(rule.index);
            }
        }
        let mut active: BTreeMap<u32, usize> = BTreeMap::new();
        let points: Vec<u32> = edges.keys().copied().collect();
        for (i, &start) in points.iter().enumerate() {
            let (opens, closes) = &edges[&start];
            for r in closes {
                if let Some(n) = active.get_mut(r) {
                    *n -= 1;
                    if *n == 0 {
                        active.remove(r);
                    }
                }
            }
            for r in opens {
                *active.entry(*r).or_default() += 1;
            }
            let end = points.get(i + 1).copied().unwrap_or(65536).min(65536);
            if start >= 65536 || active.is_empty() {
                continue;
            }
            let class = port_classes.intern(active.keys().copied().collect());
            for port in start..end {
                port_class[port_slot(proto, port as u16) as usize] = class;
            }
        }
    }

    let mut ports = BTreeMap::new();
    for slot in 0..PORT_SLOTS {
        let v = PortValue::new(port_class[slot as usize], any_addr[slot as usize]);
        if v != PortValue::EMPTY {
            ports.insert(slot, v);
        }
    }

    // --- address side.
    let own = addrs::own_values(rules);
    let (addr4, addr6) = address_tries(&own, addr_classes);
    // Names take their classes now, so the pairs below are computed for them too.
    let name_values = names::name_values(rules, addr_classes);

    // --- pairs: for each (y,c) rule in order, every (address class, port class) it covers
    // that has no earlier rule yet.
    let mut addr_classes_of: HashMap<u32, Vec<u32>> = HashMap::new();
    for (id, set) in addr_classes.sets.iter().enumerate() {
        for r in set {
            addr_classes_of.entry(*r).or_default().push(id as u32);
        }
    }
    let mut port_classes_of: HashMap<u32, Vec<u32>> = HashMap::new();
    for (id, set) in port_classes.sets.iter().enumerate() {
        for r in set {
            port_classes_of.entry(*r).or_default().push(id as u32);
        }
    }
    for rule in &yc {
        let (Some(acs), Some(pcs)) = (
            addr_classes_of.get(&rule.index),
            port_classes_of.get(&rule.index),
        ) else {
            continue;
        };
        let needed = pairs
            .len()
            .saturating_add(acs.len().saturating_mul(pcs.len()));
        if needed > MAX_PAIRS {
            // Count what the whole rule set would need, for an honest message.
            return Err(CompileError::TooManyPairs {
                needed: count_pairs(&yc, &addr_classes_of, &port_classes_of),
                limit: MAX_PAIRS,
            });
        }
        let w = word(rule);
        for &a in acs {
            for &p in pcs {
                pairs
                    .entry(PairKey {
                        addr_class: a,
                        port_class: p,
                    })
                    .or_insert(w);
            }
        }
    }

    Ok(Tables {
        addr4,
        addr6,
        ports,
        proto_verdicts,
        names: name_values,
        kept: keep.then_some(Kept {
            own,
            port_classes_of,
        }),
    })
}

fn count_pairs(
    yc: &[&Rule],
    addr_classes_of: &HashMap<u32, Vec<u32>>,
    port_classes_of: &HashMap<u32, Vec<u32>>,
) -> usize {
    let mut seen = std::collections::HashSet::new();
    for rule in yc {
        if let (Some(acs), Some(pcs)) = (
            addr_classes_of.get(&rule.index),
            port_classes_of.get(&rule.index),
        ) {
            for &a in acs {
                for &p in pcs {
                    seen.insert((a, p));
                }
            }
        }
    }
    seen.len()
}
