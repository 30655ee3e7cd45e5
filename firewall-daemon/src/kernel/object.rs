//! Loading the eBPF object: one copy per generation, its load-time constants set.
//!
//! Each copy of the object is loaded with the rule set's constants (defaults, reject budget,
//! which lookups can be skipped) baked in as globals, so the verifier prunes what this rule
//! set cannot reach, and with its per-generation maps sized by [`tables::capacity`]. The
//! shared maps are opened from, or pinned to, the pin directory by the loader itself. No
//! program is loaded into the kernel here: which ones are depends on the direction.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{Program, ProgramError},
};
use firewall_common::{DEFAULT_RULE, globals, maps::MAPS, verdict};

use super::{pins::prepare_pin_dir, tables};
use crate::{EBPF_OBJECT, compile::Compiled};
use rules::model::{Direction, FragmentPolicy, Ruleset};

/// Loads one copy of the object for `compiled` (one direction of `ruleset`): the rule maps
/// sized for it and filled, the load-time constants set, the shared maps opened from (or
/// pinned to) `pin_dir`. No program is loaded into the kernel yet.
pub(super) fn load_object(
    compiled: &Compiled,
    ruleset: &Ruleset,
    pin_dir: &Path,
    generation: u32,
) -> anyhow::Result<Ebpf> {
    prepare_pin_dir(pin_dir)?;
    let frag = match ruleset.defaults.fragments {
        FragmentPolicy::Allow => firewall_common::FRAG_ALLOW,
        FragmentPolicy::Stealth => firewall_common::FRAG_STEALTH,
    };
    // Runtime sets may bring pairs to a rule set that has none yet.
    let has_pairs = u32::from(!compiled.pairs.is_empty() || compiled.runtime.is_some());
    let addr_tables = compiled.addr_tables();
    // The outbound copy's hooks fall back to `[defaults] outbound`.
    let record_owner = u32::from(ruleset.conntrack.record_owner);
    let (default_in, default_out) = match compiled.direction {
        Direction::In => (
            compiled.default_verdict,
            verdict(DEFAULT_RULE, ruleset.defaults.outbound.to_kernel()),
        ),
        Direction::Out => (
            verdict(DEFAULT_RULE, ruleset.defaults.inbound.to_kernel()),
            compiled.default_verdict,
        ),
    };
    // Both copies: the inbound one reads queries and answers, the outbound one looks names up.
    let dns_names = u32::from(ruleset.reads_names());
    let unnamed = verdict(DEFAULT_RULE, ruleset.default_outbound(false).to_kernel());
    let names_scoped = u32::from(compiled.scoped_names());
    let scoped_shapes = compiled.scoped_shapes;
    let unit_levels = compiled.unit_levels();
    let offsets = crate::host::btf::kernel_offsets();
    let names_programs = compiled
        .groups
        .iter()
        .any(|g| g.key.shape() & firewall_common::identity::SHAPE_PROGRAM != 0);
    if names_programs && let Err(why) = offsets {
        bail!(
            "{} rules name programs, but this kernel's structure offsets for program \
             identity could not be resolved: {why}",
            compiled.direction
        );
    }
    let mut loader = EbpfLoader::new();
    super::diagnostics::set_level(&mut loader);
    if let Ok(offsets) = offsets {
        offsets.set_globals(&mut loader);
    }
    // Every map the rules or `[conntrack]` size; the others keep the object's size.
    for spec in &MAPS {
        if let Some(n) = tables::capacity(spec, compiled, ruleset, pin_dir)? {
            loader.map_max_entries(spec.name, n);
        }
    }
    let mut ebpf = loader
        .default_map_pin_directory(pin_dir)
        .override_global(globals::SCOPED_SHAPES, &scoped_shapes, true)
        .override_global(globals::UNIT_LEVELS, &unit_levels, true)
        .override_global(globals::DEFAULT_INBOUND, &default_in, true)
        .override_global(globals::DEFAULT_OUTBOUND, &default_out, true)
        .override_global(globals::RECORD_OWNER, &record_owner, true)
        .override_global(globals::FRAGMENTS, &frag, true)
        .override_global(
            globals::REJECT_RATE_PER_SEC,
            &ruleset.reject.rate_per_sec,
            true,
        )
        .override_global(globals::REJECT_BURST, &ruleset.reject.burst, true)
        .override_global(
            globals::REJECT_GLOBAL_RATE,
            &ruleset.reject.global_rate_per_sec,
            true,
        )
        .override_global(globals::HAS_PAIRS, &has_pairs, true)
        .override_global(globals::ADDR_TABLES, &addr_tables, true)
        .override_global(globals::LOG_FLAGS, &compiled.log_flags, true)
        .override_global(globals::LOG_RATE, &ruleset.log.rate, true)
        .override_global(globals::LOG_BURST, &ruleset.log.burst, true)
        .override_global(globals::GENERATION, &generation, true)
        .override_global(globals::DNS_NAMES, &dns_names, true)
        .override_global(globals::DNS_MIN_TTL, &ruleset.dns.min_ttl, true)
        .override_global(globals::DNS_MAX_TTL, &ruleset.dns.max_ttl, true)
        .override_global(globals::DNS_GRACE, &ruleset.dns.grace, true)
        .override_global(globals::DNS_UNNAMED, &unnamed, true)
        .override_global(globals::NAMES_SCOPED, &names_scoped, true)
        .override_global(globals::PROTO_VERDICTS, &compiled.proto_verdicts, true)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    if ruleset.reads_names() {
        // Before any program of either copy reads an answer or writes `NAMES`.
        tables::name_key(&mut ebpf).context("the names' hash key")?;
    }
    tables::fill(&mut ebpf, compiled).context("writing the rule maps")?;
    Ok(ebpf)
}

/// The program `name` of `ebpf`, as the program type `P` (`what` names it for the error).
pub(super) fn program_mut<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &str,
    what: &str,
) -> anyhow::Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("{name} is not {what}"))
}

pub(super) fn verifier_context(e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            // The message keeps the log's tail; FW_VERIFIER_DUMP=<file> keeps all of it, for
            // whoever changes the kernel programs.
            if let Ok(p) = std::env::var("FW_VERIFIER_DUMP") {
                let _ = std::fs::write(p, verifier_log.to_string());
            }
            anyhow!(
                "the kernel refused an eBPF program: {io_error}\nverifier log (tail):\n{}",
                tail(&verifier_log.to_string(), 40)
            )
        }
        other => anyhow::Error::new(other).context("loading the eBPF program"),
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests;
