//! Runtime sets: the members of the sets rules.toml declares empty (`blocklist = []`), added
//! and removed by `fwctl set` (fail2ban's action, scripts) while the rules stay in force.
//!
//! - **Where they go**: into the kernel's address tables in place (`compile/runtime.rs` says
//!   how and why), in both directions' generations. When an update does not fit the maps the
//!   generation was created with, the daemon loads the same rules again as a new generation
//!   sized for the members, switched in like a reload: a packet sees the old members or the
//!   new ones, never a half-written table.
//! - **What they outlive**: reloads (a reload compiles the members in) and restarts
//!   (`[daemon] state_dir`/sets.json, replaced atomically after every change and read at
//!   start). A set the file no longer declares empty loses its runtime members: the file
//!   stays the one place the members of every other set come from.
//! - **Expiry**: a member added `--for` a time is removed by the daemon at that time (wall
//!   clock, so the time holds across restarts).
//! - **What a ban does to connections**: tracked flows a new member opened and the rules now
//!   deny are ended, as `fwctl reload --recheck` ends them: a ban that let an attacker's open
//!   connection go on would not be what fail2ban's users expect.
//! - **Safety**: an addition is checked like a reload: the file's `[[assert]]` entries, and
//!   over SSH, that the caller could still log in; `--force` overrides both.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use ipnet::IpNet;
use log::{error, info, warn};
use serde::{Deserialize, Serialize};

use super::State;
use crate::{
    compile::{Change, NoRoom, Runtime},
    control::{Caller, SetData, SetMember, SetView},
};
use rules::model::{Members, Ruleset};

/// Members of all runtime sets together: each is a table entry in each direction that names
/// its set, and a line of sets.json.
pub const MAX_MEMBERS: usize = 1_000_000;
/// The longest `--for`: ten years.
pub const MAX_FOR_SECS: u64 = 10 * 365 * 86_400;
const FILE: &str = "sets.json";

/// The members, each with when it expires (seconds since the epoch; `None`: until deleted).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct RuntimeSets {
    sets: BTreeMap<String, BTreeMap<IpNet, Option<u64>>>,
    /// When the next member expires: kept, not searched for at every turn of the daemon's
    /// loop (a million members). [`Self::touch`] after every change.
    #[serde(skip)]
    next: Option<u64>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An IPv4-mapped IPv6 network (`::ffff:198.51.100.7`) is the IPv4 network it maps: the
/// datapath judges such traffic as IPv4, and a ban must hold whichever form names it.
fn canonical(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net
        && n.prefix_len() >= 96
        && let Some(v4) = n.addr().to_ipv4_mapped()
        && let Ok(n4) = ipnet::Ipv4Net::new(v4, n.prefix_len() - 96)
    {
        return IpNet::V4(n4);
    }
    net
}

/// The members a client wrote, each once.
fn parse_members(members: &[String]) -> anyhow::Result<BTreeSet<IpNet>> {
    members.iter().map(|m| parse_member(m)).collect()
}

/// A member as a client wrote it: an address or a network (read as rules.toml reads them),
/// without host bits.
pub(super) fn parse_member(text: &str) -> anyhow::Result<IpNet> {
    let net = rules::config::parse_net(text).map_err(|e| anyhow!("{e}"))?;
    if net.trunc() != net {
        bail!(
            "{text:?} has host bits set: write the network ({}) or the address ({})",
            net.trunc(),
            net.addr()
        );
    }
    Ok(canonical(net))
}

impl RuntimeSets {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE)
    }

    /// The members kept in `state_dir`; none when there is no file. A file that cannot be
    /// read or understood, or holds more than [`MAX_MEMBERS`], gives none and a problem to
    /// report: the daemon starts with the rules, without the members, rather than not at all,
    /// and [`Self::set_aside`] keeps the file (once the daemon knows it is the only one).
    pub(super) fn load(state_dir: &Path) -> (Self, Option<String>) {
        let path = Self::path(state_dir);
        if !path.exists() {
            return (Self::default(), None);
        }
        let parsed = rules::config::read_trusted(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Self>(&text).map_err(|e| e.to_string()))
            .and_then(|sets| match sets.count() {
                n if n > MAX_MEMBERS => Err(format!("{n} members, more than {MAX_MEMBERS}")),
                _ => Ok(sets),
            });
        match parsed {
            Ok(mut sets) => {
                // Normalise what a hand edit may have written.
                for members in sets.sets.values_mut() {
                    *members = std::mem::take(members)
                        .into_iter()
                        .map(|(n, e)| (canonical(n.trunc()), e))
                        .collect();
                }
                sets.touch();
                (sets, None)
            }
            Err(e) => (
                Self::default(),
                Some(format!(
                    "{}: {e}; runtime sets start empty (the file is kept as {FILE}.bad)",
                    path.display()
                )),
            ),
        }
    }

    /// Moves a file [`Self::load`] could not take to sets.json.bad, so that the next save
    /// does not overwrite it.
    pub(super) fn set_aside(state_dir: &Path) {
        let path = Self::path(state_dir);
        if let Err(e) = std::fs::rename(&path, path.with_extension("json.bad")) {
            warn!("{}: could not be moved aside: {e}", path.display());
        }
    }

    /// Recomputes when the next member expires, after a change.
    fn touch(&mut self) {
        self.next = self
            .sets
            .values()
            .flat_map(|m| m.values().flatten())
            .min()
            .copied();
    }

    /// Writes the members to `state_dir` (created if missing), replacing the file whole.
    pub(super) fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        // Others able to write there could swap the file for a link between the write and the
        // rename, or take it away: the members are kept only where root alone writes.
        let meta = std::fs::metadata(state_dir)?;
        if rules::config::untrusted(&meta).is_some() {
            bail!(
                "{} may be written by others than root; keeping runtime sets' members there is \
                 refused (chmod go-w it, or set [daemon] state_dir)",
                state_dir.display()
            );
        }
        let text = serde_json::to_vec_pretty(self)?;
        crate::replace::replace(&Self::path(state_dir), &text, 0o600, None)
            .with_context(|| format!("writing {}", Self::path(state_dir).display()))
    }

    /// These members but `nets` of `set`.
    fn without(&self, set: &str, nets: &[IpNet]) -> Self {
        let mut after = self.clone();
        if let Some(m) = after.sets.get_mut(set) {
            for n in nets {
                m.remove(n);
            }
        }
        after.touch();
        after
    }

    pub(super) fn count(&self) -> usize {
        self.sets.values().map(BTreeMap::len).sum()
    }

    /// The members, by set, for the compiler and the oracle.
    pub(super) fn members(&self) -> Members {
        self.sets
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(s, m)| (s.clone(), m.keys().copied().collect()))
            .collect()
    }

    /// Drops the members of sets `rules` do not declare empty, and those expired; says which.
    pub(super) fn retain(&mut self, rules: &Ruleset) -> Vec<String> {
        let mut dropped = Vec::new();
        let now = now_secs();
        for (name, members) in &mut self.sets {
            let before = members.len();
            members.retain(|_, e| e.is_none_or(|e| e > now));
            if members.len() < before {
                dropped.push(format!(
                    "set {name:?}: {} member(s) expired while no daemon ran",
                    before - members.len()
                ));
            }
        }
        self.sets.retain(|name, members| {
            let keep = rules.runtime_sets.contains(name);
            if !keep && !members.is_empty() {
                let why = if rules.sets.contains_key(name) {
                    "the rules file now lists its members"
                } else {
                    "the rules file no longer defines it"
                };
                dropped.push(format!(
                    "set {name:?}: {} runtime member(s) dropped: {why}",
                    members.len()
                ));
            }
            keep
        });
        self.touch();
        dropped
    }

    /// When the next member expires.
    pub(super) fn next_expiry(&self) -> Option<u64> {
        self.next
    }
}

/// Time left until `expires`, for listing.
fn left(expires: Option<u64>, now: u64) -> Option<u64> {
    expires.map(|e| e.saturating_sub(now))
}

/// What a change does to its members.
#[derive(Clone, Copy, Debug)]
enum Op {
    Add,
    Remove,
}

impl State {
    /// The rules in force with the runtime sets' members in them: what the rules say now
    /// (explain, ports, recheck). A copy only when the rules name runtime sets.
    pub(super) fn rules_now(&self) -> std::borrow::Cow<'_, Ruleset> {
        if self.ruleset.runtime_sets.is_empty() {
            std::borrow::Cow::Borrowed(&self.ruleset)
        } else {
            std::borrow::Cow::Owned(self.ruleset.with_members(&self.sets.members()))
        }
    }

    /// Refuses `set` unless it is a runtime set of the rules in force, saying what it is.
    fn runtime_set(&self, set: &str) -> anyhow::Result<()> {
        if self.ruleset.runtime_sets.contains(set) {
            return Ok(());
        }
        let runtime: Vec<&str> = self
            .ruleset
            .runtime_sets
            .iter()
            .map(String::as_str)
            .collect();
        let known = if runtime.is_empty() {
            "the rules in force declare no runtime set (declare one empty in [sets], \
             blocklist = [], and reload)"
                .to_owned()
        } else {
            format!("runtime sets: {}", runtime.join(", "))
        };
        match self.ruleset.sets.get(set) {
            Some(m) => bail!(
                "set {set:?} lists {} member(s) in the rules file, which stays the one place \
                 its members come from; only a set declared empty ({set} = []) takes members \
                 at runtime; {known}",
                m.len()
            ),
            None => bail!("no set {set:?}; {known}"),
        }
    }

    /// `fwctl set add`: adds `members` to `set` (for `for_secs`, or until deleted); a member
    /// already there gets the new expiry.
    pub(super) fn set_add(
        &mut self,
        set: &str,
        members: &[String],
        for_secs: Option<u64>,
        force: bool,
        caller: Option<Caller>,
    ) -> anyhow::Result<SetData> {
        self.runtime_set(set)?;
        if members.is_empty() {
            bail!("no member given");
        }
        if for_secs == Some(0) {
            bail!("--for must be at least 1 second");
        }
        // Longer is taken as ten years: fail2ban's growing bantimes (bantime.increment) pass
        // twenty years for a persistent attacker, whom a refusal would leave unbanned.
        let for_secs = for_secs.map(|s| s.min(MAX_FOR_SECS));
        let nets = parse_members(members)?;
        let expires = for_secs.map(|s| now_secs().saturating_add(s));
        let (updated, new): (Vec<IpNet>, Vec<IpNet>) = nets
            .iter()
            .partition(|n| self.sets.sets.get(set).is_some_and(|m| m.contains_key(n)));
        if self.sets.count() + new.len() > MAX_MEMBERS {
            bail!(
                "runtime sets hold {} members; {} more would pass the limit of {MAX_MEMBERS}",
                self.sets.count(),
                new.len()
            );
        }
        let mut after = self.sets.clone();
        let entry = after.sets.entry(set.to_owned()).or_default();
        for n in &nets {
            // The later expiry wins: jails sharing a set (sshd for 10 minutes, recidive for a
            // week) must not cut each other's bans short. Until deleted is the latest.
            let e = match (entry.get(n), expires) {
                (Some(None), _) | (_, None) => None,
                (Some(Some(old)), Some(new)) => Some((*old).max(new)),
                (None, new) => new,
            };
            entry.insert(*n, e);
        }
        after.touch();
        if !new.is_empty() && !force {
            // Only what the new members change: a member added with --force earlier, or an
            // assertion a later reload brought, must not stop every ban after it.
            let was = self.rules_now();
            let now = self.ruleset.with_members(&after.members());
            let broken_before = crate::explain::broken_assertions(&was, &self.resolved);
            let broken: Vec<String> = crate::explain::broken_assertions(&now, &self.resolved)
                .into_iter()
                .filter(|b| !broken_before.contains(b))
                .collect();
            if !broken.is_empty() {
                bail!(
                    "{}\nnothing was changed: the new members break the rules' [[assert]] \
                     entries (--force adds them anyway)",
                    broken.join("\n")
                );
            }
            if let Some(c) = caller
                && self.lockout(&was, &self.resolved, &c, false).is_none()
                && let Some(msg) = self.lockout(&now, &self.resolved, &c, false)
            {
                bail!("{msg}\nnothing was changed (--force adds them anyway)");
            }
        }
        let regenerated = self.change_members(set, Op::Add, &new, after)?;
        let ended = if new.is_empty() {
            Vec::new()
        } else {
            self.end_denied_flows(&new)
        };
        info!(
            set = set;
            "set {set}: added {}{}{}",
            if new.is_empty() { "nothing new".to_owned() } else { new.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ") },
            for_secs.map(|s| format!(" for {s} s")).unwrap_or_default(),
            if ended.is_empty() { String::new() } else { format!("; {} connection(s) ended", ended.len()) }
        );
        Ok(SetData {
            set: set.to_owned(),
            added: new.iter().map(ToString::to_string).collect(),
            updated: updated.iter().map(ToString::to_string).collect(),
            removed: Vec::new(),
            absent: Vec::new(),
            ended,
            members: self.sets.sets.get(set).map_or(0, BTreeMap::len),
            regenerated,
        })
    }

    /// `fwctl set del` (and `flush`, with every member): removes `members` from `set`.
    pub(super) fn set_del(
        &mut self,
        set: &str,
        members: Option<&[String]>,
    ) -> anyhow::Result<SetData> {
        self.runtime_set(set)?;
        let empty = BTreeMap::new();
        let current = self.sets.sets.get(set).unwrap_or(&empty);
        let nets = match members {
            Some(m) => parse_members(m)?,
            None => current.keys().copied().collect(),
        };
        let (present, absent): (Vec<IpNet>, Vec<IpNet>) =
            nets.into_iter().partition(|n| current.contains_key(n));
        let after = self.sets.without(set, &present);
        let regenerated = self.change_members(set, Op::Remove, &present, after)?;
        if !present.is_empty() {
            info!(set = set; "set {set}: removed {}", present.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
        }
        Ok(SetData {
            set: set.to_owned(),
            added: Vec::new(),
            updated: Vec::new(),
            removed: present.iter().map(ToString::to_string).collect(),
            absent: absent.iter().map(ToString::to_string).collect(),
            ended: Vec::new(),
            members: self.sets.sets.get(set).map_or(0, BTreeMap::len),
            regenerated,
        })
    }

    /// `fwctl set list`: the runtime sets (or one), their members and time left.
    pub(super) fn set_list(&self, set: Option<&str>) -> anyhow::Result<Vec<SetView>> {
        if let Some(s) = set {
            self.runtime_set(s)?;
        }
        let now = now_secs();
        let empty = BTreeMap::new();
        Ok(self
            .ruleset
            .runtime_sets
            .iter()
            .filter(|name| set.is_none_or(|s| s == name.as_str()))
            .map(|name| {
                let members = self.sets.sets.get(name).unwrap_or(&empty);
                SetView {
                    name: name.clone(),
                    rules: self
                        .ruleset
                        .rules
                        .iter()
                        .filter(|r| self.ruleset.runtime_sets_of(r).any(|s| s == name))
                        .map(|r| format!("{} \"{}\"", r.index + 1, r.name))
                        .collect(),
                    members: members
                        .iter()
                        .map(|(net, expires)| SetMember {
                            member: net.to_string(),
                            expires: *expires,
                            left_secs: left(*expires, now),
                        })
                        .collect(),
                }
            })
            .collect())
    }

    /// Removes the members whose time has come, one update per set; called when
    /// [`RuntimeSets::next_expiry`] is reached. After a failure it waits a while before trying
    /// again, rather than spinning on a member that is due.
    pub(super) fn expire(&mut self) {
        let now = now_secs();
        self.expiry_retry = None;
        let due: BTreeMap<String, Vec<IpNet>> = self
            .sets
            .sets
            .iter()
            .map(|(s, m)| {
                let due = m
                    .iter()
                    .filter(|(_, e)| e.is_some_and(|e| e <= now))
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>();
                (s.clone(), due)
            })
            .filter(|(_, d)| !d.is_empty())
            .collect();
        for (set, nets) in due {
            let after = self.sets.without(&set, &nets);
            let list = nets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            match self.change_members(&set, Op::Remove, &nets, after) {
                Ok(_) => info!(set = set.as_str(); "set {set}: {list} expired"),
                Err(e) => {
                    error!(
                        "set {set}: removing the expired {list}: {e:#}; trying again in a minute"
                    );
                    self.expiry_retry = Some(Instant::now() + Duration::from_secs(60));
                }
            }
        }
    }

    /// Makes `after` the members, `op` of `nets` on `set` (and at most expiries besides):
    /// applied to both directions' tables and kept on disk. When the tables have no room, or
    /// writing them fails, the rules in force are loaded again with the members (a new
    /// generation, switched like a reload); if that fails too, the members before come back.
    /// Returns whether a new generation was loaded.
    fn change_members(
        &mut self,
        set: &str,
        op: Op,
        nets: &[IpNet],
        after: RuntimeSets,
    ) -> anyhow::Result<bool> {
        let before = std::mem::replace(&mut self.sets, after);
        if nets.is_empty() {
            // An expiry moved, at most.
            self.save_sets();
            return Ok(false);
        }
        let apply = |rt: &mut Runtime| -> Result<Change, NoRoom> {
            let mut all = Change::default();
            for net in nets {
                all.merge(match op {
                    Op::Add => rt.add(set, *net)?,
                    Op::Remove => rt.remove(set, *net)?,
                });
            }
            Ok(all)
        };
        let written = if self.sets_stale {
            Err(anyhow!("an earlier change did not reach the tables"))
        } else {
            let inbound = self.generation.runtime.as_deref_mut().map(apply);
            let outbound = self.outbound.runtime.as_deref_mut().map(apply);
            match (inbound, outbound) {
                (Some(Err(e)), _) | (_, Some(Err(e))) => Err(anyhow!("{e}")),
                (i, o) => {
                    let mut r = Ok(());
                    if let Some(Ok(ch)) = i {
                        r = self.generation.write_change(&ch);
                    }
                    if let (Ok(()), Some(Ok(ch))) = (&r, o) {
                        r = self.outbound.write_change(&ch);
                    }
                    r
                }
            }
        };
        let regenerated = match written {
            Ok(()) => false,
            Err(why) => {
                // The in-place state may now describe no table (members taken before one
                // did not fit, maps written before one refused): only a generation built
                // from the members whole is known to be right, until one is.
                self.sets_stale = true;
                info!("set {set}: {why:#}; loading the rules again with room for the members");
                let (rules, resolved) = (self.ruleset.clone(), self.resolved.clone());
                if let Err(e) = self.switch_to(rules, resolved, false, Instant::now()) {
                    self.sets = before;
                    return Err(e.context(format!(
                        "set {set}: the change was not applied (the tables in force may hold \
                         part of it until the next set change or reload, which loads the \
                         members whole)"
                    )));
                }
                true
            }
        };
        self.save_sets();
        Ok(regenerated)
    }

    /// Keeps the members in `[daemon] state_dir`; a failure is logged and degrades nothing
    /// in force (the members stay until the daemon stops).
    pub(super) fn save_sets(&mut self) {
        if let Err(e) = self.sets.save(&self.ruleset.daemon.state_dir) {
            warn!("runtime sets will not outlive this daemon: {e:#}");
        }
    }

    /// Ends the tracked flows from `nets` that the rules, with the new members, deny.
    fn end_denied_flows(&mut self, nets: &[IpNet]) -> Vec<String> {
        let pin_dir = self.ruleset.daemon.pin_dir.clone();
        let rules = self.rules_now().into_owned();
        self.recheck_with(&rules, &pin_dir, |remote| {
            nets.iter().any(|n| n.contains(&remote))
        })
    }

    /// How long until the next member expires (`None`: none will), or until a failed expiry
    /// is tried again.
    pub(super) fn next_expiry_in(&self) -> Option<Duration> {
        let due = Duration::from_secs(self.sets.next_expiry()?.saturating_sub(now_secs()));
        let retry = self.expiry_retry.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        });
        Some(due.max(retry))
    }

    /// After rules that may no longer declare a set empty are in force for good (a reload
    /// without `--confirm`, or confirmed): drops the members of sets they do not declare, and
    /// those expired, and says so. Not at a `--confirm` reload: its rollback brings the sets
    /// back, and their members with them.
    pub(super) fn retain_sets(&mut self) {
        let dropped = self.sets.retain(&self.ruleset);
        for d in &dropped {
            warn!("{d}");
        }
        if !dropped.is_empty() {
            self.save_sets();
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail by panicking")]
mod tests {
    use super::*;

    #[test]
    fn members_are_addresses_or_networks_without_host_bits_and_mapped_ones_are_ipv4() {
        assert_eq!(
            parse_member("198.51.100.7").unwrap().to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(
            parse_member("2001:db8::/64").unwrap().to_string(),
            "2001:db8::/64"
        );
        assert_eq!(
            parse_member("::ffff:198.51.100.7").unwrap().to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(
            parse_member("::ffff:198.51.100.0/120").unwrap().to_string(),
            "198.51.100.0/24"
        );
        let e = parse_member("198.51.100.7/24").unwrap_err().to_string();
        assert!(
            e.contains("host bits") && e.contains("198.51.100.0/24"),
            "{e}"
        );
        assert!(parse_member("example.org").is_err());
    }

    #[test]
    fn the_file_keeps_members_and_expiry_and_a_broken_one_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut sets = RuntimeSets::default();
        sets.sets
            .entry("blocklist".into())
            .or_default()
            .insert(parse_member("192.0.2.1").unwrap(), Some(4_000_000_000));
        sets.sets
            .entry("blocklist".into())
            .or_default()
            .insert(parse_member("2001:db8::/64").unwrap(), None);
        sets.touch();
        sets.save(dir.path()).unwrap();
        let (back, problem) = RuntimeSets::load(dir.path());
        assert_eq!((back, problem), (sets.clone(), None));
        assert_eq!(sets.next_expiry(), Some(4_000_000_000));
        std::fs::write(dir.path().join(FILE), "{ not json").unwrap();
        let (back, problem) = RuntimeSets::load(dir.path());
        assert_eq!(back, RuntimeSets::default());
        let problem = problem.expect("reported");
        assert!(
            problem.contains("runtime sets start empty") && problem.contains("sets.json.bad"),
            "{problem}"
        );
        // Loading touches nothing (another daemon may be running); the start sets it aside.
        assert!(dir.path().join(FILE).exists());
        RuntimeSets::set_aside(dir.path());
        assert!(dir.path().join("sets.json.bad").exists() && !dir.path().join(FILE).exists());
    }

    #[test]
    fn members_are_not_kept_where_others_may_write() {
        let dir = tempfile::tempdir().unwrap();
        let open = super::super::dir_others_may_write(dir.path());
        let e = RuntimeSets::default().save(&open).unwrap_err().to_string();
        assert!(e.contains("may be written by others"), "{e}");
        assert!(!open.join(FILE).exists());
    }
}
