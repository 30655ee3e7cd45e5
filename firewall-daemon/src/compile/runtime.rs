//! Runtime sets in the kernel's tables: members added and removed in place, with no new
//! generation (`fwctl set add`, fail2ban's action).
//!
//! Why in the same tables: a member of a runtime set is, to the classifier, one more prefix
//! that some rules name. Written into `EXACT4`/`ADDR4`/`EXACT6`/`ADDR6` with its value folded
//! exactly as the compiler folds a prefix of the file ([`super::addrs`]), it costs a packet
//! nothing more than any other prefix: the same single hash probe or trie lookup, whatever the
//! number of members or rules. A separate table would have been a second probe per packet.
//!
//! What an update touches: the member's own entry, and every entry inside it (a /24 added to
//! a set changes what each /32 of the file inside that /24 says, since entries carry their
//! enclosing prefixes folded in). Each of those is folded again from scratch: its own value
//! and the values of every prefix that contains it, file and runtime members alike, one
//! lookup per prefix length. A new combination of rules naming both an address and a port
//! is a new address class, whose `PAIRS` entries are written before any entry names it.
//!
//! Room: the maps are created with room for more entries than the rules and members of the
//! moment need ([`HEADROOM`]); an update that would not fit says [`NoRoom`], and the daemon
//! loads a new generation sized for the members (a reload of the same rules). After `NoRoom`
//! this value no longer describes any table and is discarded with the generation.
//!
//! The same members written into the file's sets give the same tables: the tests compare
//! this path with [`rules::model::Ruleset::with_members`] compiled whole.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use firewall_common::{AddrValue, NO_MATCH, PairKey};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use rules::model::{Members, Rule, Ruleset};

use super::{Classes, Compiled, Kept, addrs::Own, word};

/// Room for this many new entries in each address table and in `PAIRS` beyond what a
/// generation's rules and members need when it is loaded, or as many as the table holds if
/// that is more (it doubles). At 88 bytes a preallocated hash entry, 4,096 are 360 KiB per
/// table.
pub const HEADROOM: usize = 4096;

/// The tables an update writes to, in [`Runtime`]'s counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Exact4,
    Prefix4,
    Exact6,
    Prefix6,
    Pairs,
}

impl Table {
    fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(n) if n.prefix_len() == 32 => Self::Exact4,
            IpNet::V4(_) => Self::Prefix4,
            IpNet::V6(n) if n.prefix_len() == 128 => Self::Exact6,
            IpNet::V6(_) => Self::Prefix6,
        }
    }
}

/// An update does not fit the maps of the generation in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {0:?} table of this generation is full")]
pub struct NoRoom(pub Table);

/// What an update writes: address entries (`None`: remove), new `PAIRS` entries, and
/// `EXACT4_FILTER` words (their new value). Applied in that order reversed: pairs and filter
/// bits first, so that no entry names a class or sits in a /16 the kernel cannot yet see.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Change {
    pub addrs: BTreeMap<IpNet, Option<AddrValue>>,
    pub pairs: Vec<(PairKey, u32)>,
    pub filter: BTreeMap<u32, u32>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty() && self.pairs.is_empty() && self.filter.is_empty()
    }

    /// This change followed by `later`.
    pub fn merge(&mut self, later: Change) {
        self.addrs.extend(later.addrs);
        self.pairs.extend(later.pairs);
        self.filter.extend(later.filter);
    }
}

/// The state an update of one direction's unscoped tables starts from.
#[derive(Clone, Debug)]
pub struct Runtime {
    /// What the file's rules say, prefix by prefix (not folded).
    own: BTreeMap<IpNet, Own>,
    /// Per runtime set this direction's rules name: what being a member says.
    sets: BTreeMap<String, Own>,
    /// The members in the tables now, with the sets each is in.
    members: BTreeMap<IpNet, BTreeSet<String>>,
    classes: Classes,
    /// Per rule naming both an address and ports: the port classes it is in.
    port_classes_of: HashMap<u32, Vec<u32>>,
    /// Verdict word of each rule this direction compiles, by rule index.
    words: Vec<u32>,
    /// Address classes whose only pair is inlined in their entries.
    inlined: HashMap<u32, (u32, u32)>,
    /// `EXACT4_FILTER` words now.
    filter: BTreeMap<u32, u32>,
    used: [usize; 5],
    room: [usize; 5],
}

impl Runtime {
    pub(super) fn new(
        ruleset: &Ruleset,
        unscoped: &[&Rule],
        kept: Kept,
        classes: Classes,
        inlined: HashMap<u32, (u32, u32)>,
        pairs: &HashMap<PairKey, u32>,
    ) -> Self {
        let mut sets: BTreeMap<String, Own> = BTreeMap::new();
        let mut words = vec![NO_MATCH; ruleset.rules.len()];
        for rule in unscoped {
            words[rule.index as usize] = word(rule);
            for set in ruleset.runtime_sets_of(rule) {
                sets.entry(set.to_owned())
                    .or_insert_with(Own::new)
                    .add_rule(rule);
            }
        }
        let mut used = [0; 5];
        for net in kept.own.keys() {
            used[Table::of(net) as usize] += 1;
        }
        let filter = super::addrs::filter_words(kept.own.keys().filter_map(|n| match n {
            IpNet::V4(n) if n.prefix_len() == 32 => Some(n),
            _ => None,
        }));
        used[Table::Pairs as usize] = pairs.len();
        let mut rt = Self {
            own: kept.own,
            sets,
            members: BTreeMap::new(),
            classes,
            port_classes_of: kept.port_classes_of,
            words,
            inlined,
            filter,
            used,
            room: [usize::MAX; 5],
        };
        rt.seal();
        rt
    }

    /// Whether this direction's rules name `set`.
    pub fn names(&self, set: &str) -> bool {
        self.sets.contains_key(set)
    }

    /// How many entries the map behind `table` must be created with.
    pub fn capacity(&self, table: Table) -> usize {
        self.room[table as usize]
    }

    /// Fixes the room of each table: what it holds now and [`HEADROOM`] more, or twice what
    /// it holds if that is more. Per table: a million IPv4 members leave the IPv6 tables small.
    fn seal(&mut self) {
        for (room, used) in self.room.iter_mut().zip(self.used) {
            *room = used.saturating_add(HEADROOM.max(used));
        }
    }

    /// Adds `net` to `set`. Nothing to write when this direction's rules do not name the set
    /// or it holds `net` already.
    pub fn add(&mut self, set: &str, net: IpNet) -> Result<Change, NoRoom> {
        let net = net.trunc();
        let mut ch = Change::default();
        if !self.names(set) || self.members.get(&net).is_some_and(|s| s.contains(set)) {
            return Ok(ch);
        }
        if !self.is_entry(&net) {
            self.take_room(Table::of(&net))?;
            if let IpNet::V4(n) = net
                && n.prefix_len() == 32
            {
                let (w, bit) = firewall_common::exact4_filter_slot(n.addr().octets());
                let word = self.filter.entry(w).or_insert(0);
                if *word & bit == 0 {
                    *word |= bit;
                    ch.filter.insert(w, *word);
                }
            }
        }
        self.members.entry(net).or_default().insert(set.to_owned());
        self.refold(net, &mut ch)?;
        Ok(ch)
    }

    /// Removes `net` from `set` (nothing to write when it is not a member).
    pub fn remove(&mut self, set: &str, net: IpNet) -> Result<Change, NoRoom> {
        let net = net.trunc();
        let mut ch = Change::default();
        let Some(sets) = self.members.get_mut(&net) else {
            return Ok(ch);
        };
        if !sets.remove(set) {
            return Ok(ch);
        }
        if sets.is_empty() {
            self.members.remove(&net);
        }
        if !self.is_entry(&net) {
            // Its /16's filter bit stays: it costs a hash probe, never a wrong answer.
            self.used[Table::of(&net) as usize] -= 1;
            ch.addrs.insert(net, None);
        }
        self.refold(net, &mut ch)?;
        Ok(ch)
    }

    fn is_entry(&self, net: &IpNet) -> bool {
        self.own.contains_key(net) || self.members.contains_key(net)
    }

    fn take_room(&mut self, table: Table) -> Result<(), NoRoom> {
        let i = table as usize;
        if self.used[i] >= self.room[i] {
            return Err(NoRoom(table));
        }
        self.used[i] += 1;
        Ok(())
    }

    /// Folds again every entry at or inside `net` into `ch`.
    fn refold(&mut self, net: IpNet, ch: &mut Change) -> Result<(), NoRoom> {
        let last = match net {
            IpNet::V4(n) => IpNet::V4(Ipv4Net::new(n.broadcast(), 32).expect("/32")),
            IpNet::V6(n) => IpNet::V6(Ipv6Net::new(n.broadcast(), 128).expect("/128")),
        };
        let inside: BTreeSet<IpNet> = self
            .own
            .range(net..=last)
            .map(|(k, _)| *k)
            .chain(self.members.range(net..=last).map(|(k, _)| *k))
            .filter(|k| net.contains(k))
            .collect();
        for entry in inside {
            let value = self.value(entry, ch)?;
            ch.addrs.insert(entry, Some(value));
        }
        Ok(())
    }

    /// The value of entry `e`: what every prefix holding it says, file and members alike,
    /// folded as the compiler folds (`addrs.rs`).
    fn value(&mut self, e: IpNet, ch: &mut Change) -> Result<AddrValue, NoRoom> {
        let mut acc = Own::new();
        for len in 0..=e.prefix_len() {
            let k = IpNet::new(e.addr(), len).expect("shorter prefix").trunc();
            if let Some(o) = self.own.get(&k) {
                acc.fold(o);
            }
            if let Some(sets) = self.members.get(&k) {
                for s in sets {
                    acc.fold(&self.sets[s]);
                }
            }
        }
        acc.ports.sort_unstable();
        acc.ports.dedup();
        let class = self.class(acc.ports, ch)?;
        let mut v = AddrValue {
            class,
            any_proto: acc.any_proto,
            proto: acc.proto,
            pair_port_class: NO_MATCH,
            pair_verdict: NO_MATCH,
        };
        if let Some(&(port_class, w)) = self.inlined.get(&class) {
            v.pair_port_class = port_class;
            v.pair_verdict = w;
            v.class = NO_MATCH;
        }
        Ok(v)
    }

    /// The address class of the rules `set` (ascending), created with its pairs if new.
    fn class(&mut self, set: Vec<u32>, ch: &mut Change) -> Result<u32, NoRoom> {
        if set.is_empty() {
            return Ok(NO_MATCH);
        }
        if let Some(&id) = self.classes.ids.get(&set) {
            return Ok(id);
        }
        let id = self.classes.sets.len() as u32;
        // The first rule of each port class, as the compiler writes them: rules ascend, so
        // the first written wins.
        let mut pairs: BTreeMap<u32, u32> = BTreeMap::new();
        for r in &set {
            for &pc in self.port_classes_of.get(r).into_iter().flatten() {
                pairs.entry(pc).or_insert(self.words[*r as usize]);
            }
        }
        if pairs.len() == 1 {
            let (pc, w) = pairs.into_iter().next().expect("one pair");
            self.inlined.insert(id, (pc, w));
        } else {
            let i = Table::Pairs as usize;
            if self.used[i].saturating_add(pairs.len()) > self.room[i] {
                return Err(NoRoom(Table::Pairs));
            }
            self.used[i] += pairs.len();
            for (pc, w) in pairs {
                let key = PairKey {
                    addr_class: id,
                    port_class: pc,
                };
                ch.pairs.push((key, w));
            }
        }
        self.classes.intern(set);
        Ok(id)
    }
}

impl Compiled {
    /// Writes `members` into the tables before the generation is loaded, then fixes the room
    /// its maps are created with. Members of sets these rules do not name are left out.
    pub fn add_members(&mut self, members: &Members) {
        let Some(mut rt) = self.runtime.take() else {
            return;
        };
        let mut all = Change::default();
        // Unbounded until sealed again: the maps are not created yet.
        rt.room = [usize::MAX; 5];
        for (set, nets) in members {
            for net in nets {
                // The room is unbounded until sealed.
                if let Ok(ch) = rt.add(set, *net) {
                    all.merge(ch);
                }
            }
        }
        rt.seal();
        self.runtime = Some(rt);
        self.apply(&all);
    }

    /// Applies `ch` to these tables, as [`crate::kernel`] applies it to the maps.
    pub fn apply(&mut self, ch: &Change) {
        let mut v4: BTreeMap<Ipv4Net, AddrValue> = self.addr4.drain(..).collect();
        let mut v6: BTreeMap<Ipv6Net, AddrValue> = self.addr6.drain(..).collect();
        for (net, value) in &ch.addrs {
            match (net, value) {
                (IpNet::V4(n), Some(v)) => {
                    v4.insert(*n, *v);
                }
                (IpNet::V4(n), None) => {
                    v4.remove(n);
                }
                (IpNet::V6(n), Some(v)) => {
                    v6.insert(*n, *v);
                }
                (IpNet::V6(n), None) => {
                    v6.remove(n);
                }
            }
        }
        self.addr4 = v4.into_iter().collect();
        self.addr6 = v6.into_iter().collect();
        self.pairs.extend(ch.pairs.iter().copied());
    }
}

#[cfg(test)]
mod tests;
