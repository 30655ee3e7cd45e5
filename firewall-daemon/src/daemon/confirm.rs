//! Changing rules without fear: `fwctl reload --dry-run` (what would change, touching
//! nothing), `fwctl reload --confirm DURATION` with `fwctl confirm` (the previous rules come
//! back unless the new ones are confirmed in time: Juniper's `commit confirmed`), and the
//! lockout guard (a reload whose rules would deny new SSH connections from the caller is
//! refused without `--force` or `--confirm`).
//!
//! The rollback timer lives in the daemon's loop, not in `fwctl`: it fires if `fwctl`, the SSH
//! session or the network path dies, which is the case it is for. Reloads made while one is
//! pending keep its rollback target (the last rules that were confirmed, or in force before the
//! first unconfirmed reload); a `--confirm` among them sets a new deadline. The target is held
//! in memory: a daemon restarted meanwhile starts from the file, as any start does.

use std::time::{Duration, Instant};

use anyhow::bail;
use log::{error, info, warn};

use super::State;
use crate::{
    control::{Caller, ConfirmData, PendingConfirm, ReloadData},
    explain::refuse_broken,
    host::{listeners, selectors::Resolved},
    kernel::ListenerTable,
};
use rules::model::Ruleset;

/// A reload waiting for `fwctl confirm`.
pub(super) struct Pending {
    /// What comes back at the deadline.
    pub(super) rules: Ruleset,
    /// What their programs, units and names resolved to: a rollback keeps the addresses the
    /// names had (unless due), rather than depend on DNS answering at the deadline.
    pub(super) resolved: Resolved,
    pub(super) generation: u64,
    pub(super) deadline: Instant,
    pub(super) deadline_wall: jiff::Timestamp,
}

impl Pending {
    pub(super) fn view(&self) -> PendingConfirm {
        PendingConfirm {
            deadline: self
                .deadline_wall
                .round(jiff::Unit::Second)
                .unwrap_or(self.deadline_wall)
                .to_string(),
            secs_left: self
                .deadline
                .saturating_duration_since(Instant::now())
                .as_secs(),
            rollback_to_generation: self.generation,
        }
    }
}

/// What `fwctl reload` asked for besides the reload itself.
#[derive(Clone, Debug, Default)]
pub(super) struct ReloadOptions {
    pub(super) recheck: bool,
    pub(super) dry_run: bool,
    pub(super) confirm_secs: Option<u64>,
    pub(super) force: bool,
    pub(super) caller: Option<Caller>,
    pub(super) file: Option<std::path::PathBuf>,
}

impl State {
    /// `fwctl reload` with its options, for a client with uid `uid`.
    pub(super) fn reload_with(&mut self, o: ReloadOptions, uid: u32) -> anyhow::Result<ReloadData> {
        if o.file.is_some() && !o.dry_run {
            bail!("a file can only be named with --dry-run (fwctl check --diff)");
        }
        if o.file.is_some() && uid != 0 {
            bail!(
                "only root may have the daemon read another rules file; without one, the \
                 daemon's own file is compared"
            );
        }
        if o.dry_run {
            let path = o.file.clone().unwrap_or_else(|| self.config_path.clone());
            let (new_rules, resolved, lockout) = self.candidate(&path, &o)?;
            return self.dry_run(new_rules, &resolved, lockout);
        }
        self.announced(|state| state.apply(&o))
    }

    /// The rules of `path`, read, resolved and checked as every reload checks them (any
    /// error: nothing changes), with why they would lock the caller out, if they would.
    pub(super) fn candidate(
        &self,
        path: &std::path::Path,
        o: &ReloadOptions,
    ) -> anyhow::Result<(Ruleset, Resolved, Option<String>)> {
        let new_rules = super::reload::load_rules(path, &self.overrides)?;
        let resolved = Resolved::resolve_after(&new_rules, &self.cgroup.path, &self.resolved);
        refuse_broken(&new_rules, &resolved)?;
        let lockout = o
            .caller
            .and_then(|c| self.lockout(&new_rules, &resolved, &c, o.recheck));
        Ok((new_rules, resolved, lockout))
    }

    /// A reload that changes something: validated, checked for a lockout, applied, and with
    /// `--confirm`, armed for the rollback.
    fn apply(&mut self, o: &ReloadOptions) -> anyhow::Result<ReloadData> {
        let (new_rules, resolved, lockout) = self.candidate(&self.config_path.clone(), o)?;
        if let Some(msg) = &lockout
            && !o.force
            && o.confirm_secs.is_none()
        {
            bail!(
                "{msg}\nnothing was changed: fix the rules, or reload with --confirm 60s (the \
                 previous rules come back unless `fwctl confirm` follows) or --force"
            );
        }
        // The rules to roll back to, kept only when a rollback is armed: a copy of 100,000
        // rules is not free.
        let before = o.confirm_secs.map(|_| {
            (
                self.ruleset.clone(),
                self.resolved.clone(),
                self.generation_no,
            )
        });
        let mut data = self.switch_to(new_rules, resolved, o.recheck, Instant::now())?;
        data.lockout = lockout;
        if let (Some(secs), Some(before)) = (o.confirm_secs, before) {
            let (rules, resolved, generation) = match self.pending.take() {
                Some(p) => (p.rules, p.resolved, p.generation),
                None => before,
            };
            let wait = Duration::from_secs(secs);
            self.pending = Some(Pending {
                rules,
                resolved,
                generation,
                deadline: Instant::now() + wait,
                deadline_wall: jiff::Timestamp::now()
                    .checked_add(wait)
                    .unwrap_or_else(|_| jiff::Timestamp::now()),
            });
            warn!(
                generation = data.generation;
                "rules applied with --confirm: generation {generation} comes back in {secs} s \
                 unless `fwctl confirm`"
            );
        }
        data.pending_confirm = self.pending.as_ref().map(Pending::view);
        if self.pending.is_none() {
            self.retain_sets();
        }
        Ok(data)
    }

    fn dry_run(
        &self,
        new_rules: Ruleset,
        resolved: &Resolved,
        lockout: Option<String>,
    ) -> anyhow::Result<ReloadData> {
        // Compiling is the last check a reload makes before touching the kernel.
        crate::compile::compile(&new_rules, resolved)?;
        crate::compile::compile_direction(&new_rules, rules::model::Direction::Out, resolved)?;
        let mut data = crate::control::diff(&self.ruleset, &new_rules);
        data.dry_run = true;
        data.would_deny = self
            .judge_flows(&new_rules, resolved, &self.ruleset.daemon.pin_dir, |_| true)
            .into_iter()
            .map(|(line, _)| line)
            .collect();
        data.lockout = lockout;
        data.generation = self.generation_no;
        data.warnings = new_rules.warnings.clone();
        data.warnings.extend(resolved.warnings(&new_rules));
        data.warnings
            .extend(crate::explain::listener_warnings(&new_rules));
        data.pending_confirm = self.pending.as_ref().map(Pending::view);
        Ok(data)
    }

    /// Why `rules` would lock the caller out (see [`crate::explain::lockout`]), judged with
    /// the owner of the socket listening on the caller's SSH port, as the XDP program would.
    pub(super) fn lockout(
        &self,
        rules: &Ruleset,
        resolved: &Resolved,
        caller: &Caller,
        recheck: bool,
    ) -> Option<String> {
        let listeners = ListenerTable::open(&self.ruleset.daemon.pin_dir)
            .map(|t| t.entries())
            .unwrap_or_default();
        let owner = listeners::receiver(
            &listeners,
            caller.local,
            libc::IPPROTO_TCP as u8,
            caller.local_port,
        )
        .map(|l| l.owner);
        crate::explain::lockout(rules, resolved, caller, owner.as_ref(), recheck)
    }

    /// `fwctl debug on|off`: the rules in force, loaded again with the programs' trace
    /// messages kept (on) or removed by the verifier (off).
    pub(super) fn debug(&mut self, on: bool) -> anyhow::Result<crate::control::DebugData> {
        let was = crate::kernel::diagnostics::tracing();
        crate::kernel::diagnostics::set(on);
        let (rules, resolved) = (self.ruleset.clone(), self.resolved.clone());
        match self.reload_resolved(rules, resolved, false) {
            Ok(d) => {
                info!(
                    generation = d.generation;
                    "kernel tracing {}: the rules in force were loaded again",
                    if on { "on" } else { "off" }
                );
                Ok(crate::control::DebugData {
                    tracing: on,
                    generation: d.generation,
                })
            }
            Err(e) => {
                crate::kernel::diagnostics::set(was);
                Err(e.context("loading the rules again with kernel tracing switched"))
            }
        }
    }

    /// `fwctl confirm`.
    pub(super) fn confirm(&mut self) -> anyhow::Result<ConfirmData> {
        match self.pending.take() {
            Some(p) => {
                info!(
                    generation = self.generation_no;
                    "rules of generation {} confirmed; generation {} will not come back",
                    self.generation_no,
                    p.generation
                );
                self.retain_sets();
                Ok(ConfirmData {
                    generation: self.generation_no,
                })
            }
            None => bail!("no reload is waiting for confirmation"),
        }
    }

    /// The deadline passed without `fwctl confirm`: the rules it holds come back.
    pub(super) fn roll_back(&mut self) {
        let Some(p) = self.pending.take() else { return };
        let resolved = Resolved::resolve_after(&p.rules, &self.cgroup.path, &p.resolved);
        let unconfirmed = self.generation_no;
        match self.reload_resolved(p.rules, resolved, false) {
            Ok(d) => warn!(
                generation = d.generation;
                "generation {unconfirmed} was not confirmed in time: rolled back to the rules \
                 of generation {} ({})",
                p.generation,
                super::reload::summarize(&d)
            ),
            Err(e) => error!(
                "generation {unconfirmed} was not confirmed in time, but rolling back to the \
                 rules of generation {} failed; the unconfirmed rules stay in force: {e:#}",
                p.generation
            ),
        }
    }
}
