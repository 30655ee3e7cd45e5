//! Rule names of past generations, so that `fwctl conns` can name the rule that admitted a
//! connection after the rules were reloaded, and a decision logged just before a reload is
//! named by the rules that made it.
//!
//! A generation's names are kept while a tracked connection refers to it, and no longer: the
//! connection-expiry sweep (`conntrack::spawn_expiry`) reports the generations of the
//! connections it walked past, and a generation replaced before that sweep began and not among
//! them is dropped, since no connection can still name it. The one in force is always kept,
//! and at most [`MAX_GENERATIONS`] in all. A name a generation shares with the one before is
//! stored once ([`rule_names`]): a generation costs a pointer per rule, 1.6 MB at 100,000
//! rules, which sixteen reloads used to keep whatever the connections.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Instant,
};

use rules::model::Ruleset;

use crate::conntrack::{InUse, SharedInUse};

/// The most generations kept, whatever the connections: a bound on memory if connections
/// of many generations stay open across many reloads.
const MAX_GENERATIONS: usize = 16;

struct Generation {
    id: u32,
    names: Vec<Arc<str>>,
    /// When a newer generation took over (`None`: in force).
    replaced: Option<Instant>,
}

pub(super) struct RuleHistory {
    generations: VecDeque<Generation>,
    in_use: SharedInUse,
}

impl RuleHistory {
    /// The history of a daemon whose first generation `id` has `rules`; `in_use` is where the
    /// expiry sweep reports the generations connections still name.
    pub(super) fn new(id: u32, rules: &Ruleset, in_use: SharedInUse) -> Self {
        let mut generations = VecDeque::new();
        generations.push_back(Generation {
            id,
            names: rule_names(rules, None),
            replaced: None,
        });
        Self {
            generations,
            in_use,
        }
    }

    /// The names of the generation in force, for [`rule_names`] to share.
    pub(super) fn current(&self) -> Option<&[Arc<str>]> {
        self.generations.back().map(|g| g.names.as_slice())
    }

    /// The name of rule `index` (0-based) of generation `id`, if still known.
    pub(super) fn name(&self, id: u32, index: usize) -> Option<&Arc<str>> {
        self.generations
            .iter()
            .find(|g| g.id == id)
            .and_then(|g| g.names.get(index))
    }

    /// Records the names of the generation `id` now in force, and forgets the ones no
    /// connection can name any more.
    pub(super) fn push(&mut self, id: u32, names: Vec<Arc<str>>) {
        let now = Instant::now();
        for g in &mut self.generations {
            g.replaced.get_or_insert(now);
        }
        self.generations.push_back(Generation {
            id,
            names,
            replaced: None,
        });
        self.prune();
    }

    /// Drops the generations the last sweep shows no connection names.
    pub(super) fn prune(&mut self) {
        let sweep = self
            .in_use
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.generations
            .retain(|g| keep(g.id, g.replaced, sweep.as_ref()));
        while self.generations.len() > MAX_GENERATIONS {
            self.generations.pop_front();
        }
    }

    /// How many generations' names are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.generations.len()
    }
}

/// Whether to keep the names of generation `id`, replaced at `replaced` (`None`: in force),
/// given the last sweep.
fn keep(id: u32, replaced: Option<Instant>, sweep: Option<&InUse>) -> bool {
    let Some(replaced) = replaced else {
        return true;
    };
    match sweep {
        // Connections may have been admitted by it after that sweep walked by.
        Some(sweep) if replaced < sweep.started => sweep.generations.contains(&id),
        _ => true,
    }
}

/// The rule names of `rs`, sharing each name that `previous` (the generation before) holds.
pub(super) fn rule_names(rs: &Ruleset, previous: Option<&[Arc<str>]>) -> Vec<Arc<str>> {
    let known: HashMap<&str, &Arc<str>> = previous
        .unwrap_or_default()
        .iter()
        .map(|n| (&**n, n))
        .collect();
    rs.rules
        .iter()
        .map(|r| {
            known
                .get(r.name.as_str())
                .map_or_else(|| Arc::from(r.name.as_str()), |n| Arc::clone(n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        path::Path,
        sync::{Arc, Mutex},
        time::Instant,
    };

    use super::{MAX_GENERATIONS, RuleHistory};
    use crate::conntrack::InUse;

    fn history() -> (RuleHistory, crate::conntrack::SharedInUse) {
        let rules = rules::config::parse(
            "[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\nport = 22\naction = \"allow\"\n",
            Path::new("r.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let in_use = Arc::new(Mutex::new(None));
        (RuleHistory::new(1, &rules, in_use.clone()), in_use)
    }

    fn sweep(in_use: &crate::conntrack::SharedInUse, generations: &[u32]) {
        *in_use.lock().unwrap_or_else(|e| e.into_inner()) = Some(InUse {
            started: Instant::now(),
            generations: generations.iter().copied().collect::<BTreeSet<_>>(),
        });
    }

    #[test]
    fn names_are_kept_while_a_connection_names_their_generation() {
        let (mut h, in_use) = history();
        let names = |n: &str| vec![Arc::<str>::from(n)];
        h.push(2, names("two"));
        // No sweep since generation 1 was replaced: its connections are not known yet.
        assert_eq!(h.len(), 2);
        assert_eq!(h.name(1, 0).map(|n| &**n), Some("ssh"));
        // A sweep finds a connection of generation 1 only.
        sweep(&in_use, &[1]);
        h.push(3, names("three"));
        // 1 is named by a connection, 2 was replaced after the sweep began: both kept.
        assert_eq!(h.len(), 3);
        // The next sweep finds connections of 3 only: 1 and 2 go, 3 and 4 stay.
        h.push(4, names("four"));
        sweep(&in_use, &[3]);
        h.prune();
        assert_eq!(h.len(), 2);
        assert_eq!(h.name(1, 0), None);
        assert_eq!(h.name(2, 0), None);
        assert_eq!(h.name(3, 0).map(|n| &**n), Some("three"));
        assert_eq!(h.current().map(|n| &*n[0]), Some("four"));
        // A sweep that finds no connection at all: only the generation in force stays.
        sweep(&in_use, &[]);
        h.prune();
        assert_eq!(h.len(), 1);
        assert_eq!(h.name(4, 0).map(|n| &**n), Some("four"));
    }

    #[test]
    fn at_most_sixteen_generations_whatever_the_connections() {
        let (mut h, in_use) = history();
        for id in 2..40 {
            h.push(id, vec![Arc::from("x")]);
            sweep(&in_use, &(1..id).collect::<Vec<_>>());
        }
        h.prune();
        assert_eq!(h.len(), MAX_GENERATIONS);
        assert!(h.name(39, 0).is_some());
    }
}
