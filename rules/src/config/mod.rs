//! Reading `rules.toml`: text in, a validated [`Ruleset`] out — or every problem found, each
//! as `FILE:LINE:COL: message`.
//!
//! The document is first parsed into toml's spanned tree ([`DeTable`]), so every key and value
//! keeps its byte range. Each section, set and rule is then deserialized on its own into one of
//! the `Raw*` structs of `raw.rs` (which mirror the file format and document every key), so a
//! broken rule does not hide the problems of the next one. Last, the raw values are checked and
//! resolved (service names, sets, CIDRs) into [`crate::model`] types.
//!
//! Top-level tables: `[daemon]` (`RawDaemon`), `[defaults]` (`RawDefaults`), `[reject]`
//! (`RawReject`), `[conntrack]` (`RawConntrack`, with `[conntrack.timeouts]` in
//! `RawCtTimeouts`), `[log]` (`RawLog`), `[sets]` (see `RawSetFile`), any number of `[[rule]]`
//! (`RawRule`) and of `[[assert]]` (`RawAssert`, in `assert.rs`), and the top-level key
//! `include` (more files of rules, `include.rs`).
//! Every table and every key is optional except a rule's `action`. Unknown keys are errors:
//! a firewall must never quietly ignore a line the admin wrote.
//!
//! One file per concern: `diagnostic` (what a problem looks like), `raw` (the file format as
//! serde reads it), `checker` (collecting located problems), then one file per section checked
//! (`daemon`, `defaults` with `[reject]`, `conntrack`, `log`, `sets`, `rule` with its selectors, ports
//! and remotes, `services`) and `values` (the scalar values every section shares: durations,
//! ports, addresses, program paths, unit and user names).

mod assert;
mod checker;
mod conntrack;
mod daemon;
mod defaults;
mod diagnostic;
mod dns;
mod include;
mod log;
mod metrics;
mod raw;
mod rule;
mod services;
mod sets;
mod split;
mod values;

use std::{
    collections::HashMap,
    fs, io,
    ops::Range,
    path::{Path, PathBuf},
};

use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

pub use self::diagnostic::{ConfigError, Diagnostic};
pub use self::values::{parse_net, positive_duration_secs};
use self::{
    checker::{Checker, one_of},
    raw::TOP_LEVEL_KEYS,
    rule::RuleTables,
};
use crate::model::{Direction, Ruleset};

/// Where service names (`port = "ssh"`) are looked up unless [`Env`] says otherwise.
pub const DEFAULT_SERVICES_PATH: &str = "/etc/services";

/// The largest rules or set file read, in bytes: far above any real file (a blocklist of a
/// million networks is about 20 MiB), far below what would strain the daemon's memory.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// The parts of the outside world a rules file depends on, injectable for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    /// `services(5)` file for service names in `port`. Default `/etc/services`. Only read when a
    /// rule names a service.
    pub services_path: PathBuf,
    /// Directory that relative set file paths (`{ file = "blocklist.txt" }`) resolve against:
    /// the rules file's directory, so a rules directory can be moved as a whole.
    pub base_dir: PathBuf,
}

impl Env {
    /// The environment [`parse`] and [`load`] use for a rules file at `path`.
    pub fn for_rules_file(path: &Path) -> Self {
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self {
            services_path: PathBuf::from(DEFAULT_SERVICES_PATH),
            base_dir,
        }
    }
}

/// Reads and parses the rules file at `path` (set files relative to its directory, services
/// from `/etc/services`).
pub fn load(path: &Path) -> Result<Ruleset, ConfigError> {
    let text = read_trusted(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text, path)
}

/// Why a file or directory could be changed by someone other than root (or the user this
/// process runs as): the one definition of "trusted" behind every file and directory the
/// firewall reads or puts a socket in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Untrusted {
    /// Owned by this uid, neither root nor this process's user.
    Owner(u32),
    /// Writable by everyone (`group` is `None`) or by this group other than root's.
    Writable { mode: u32, group: Option<u32> },
}

/// [`Untrusted`] for `meta`, or `None` when only root (or this process's user) can change it.
pub fn untrusted(meta: &fs::Metadata) -> Option<Untrusted> {
    use std::os::unix::fs::MetadataExt as _;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Some(Untrusted::Owner(meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Some(Untrusted::Writable { mode, group: None });
    }
    if mode & 0o020 != 0 && meta.gid() != 0 {
        return Some(Untrusted::Writable {
            mode,
            group: Some(meta.gid()),
        });
    }
    None
}

/// Reads a file that decides what the firewall does (the rules file, a set file), refusing one
/// that could hang or exhaust the reader, or that someone other than root could have written:
/// it must be a regular file (a FIFO would block the daemon forever, a device like /dev/zero
/// never end) of at most [`MAX_FILE_BYTES`], owned by root or the reader's own user, and not
/// writable by others, nor by a group other than root's. Symbolic links are followed (the
/// checks apply to the file they lead to); the directories on the way are not checked.
pub fn read_trusted(path: &Path) -> io::Result<String> {
    use std::{
        io::Read as _,
        os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    };
    // O_NONBLOCK: opening a FIFO for reading blocks until a writer comes, and the type is
    // only known once it is open.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    let refuse = |why: String| Err(io::Error::other(why));
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return refuse(format!("{what}, not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return refuse(format!(
            "{} bytes, more than the {} MiB allowed",
            meta.len(),
            MAX_FILE_BYTES >> 20
        ));
    }
    match untrusted(&meta) {
        Some(Untrusted::Owner(uid)) => {
            let euid = nix::unistd::geteuid().as_raw();
            return refuse(format!(
                "owned by uid {uid}, not by root{}: whoever owns it could change the firewall",
                if euid == 0 {
                    String::new()
                } else {
                    format!(" or uid {euid}")
                }
            ));
        }
        Some(Untrusted::Writable { mode, group }) => {
            return refuse(format!(
                "writable by {} (mode {mode:04o}): they could change the firewall; `chmod go-w` it",
                match group {
                    None => "everyone".to_string(),
                    Some(gid) => format!("the group gid {gid}"),
                }
            ));
        }
        None => {}
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return refuse(format!(
            "grew beyond the {} MiB allowed while being read",
            MAX_FILE_BYTES >> 20
        ));
    }
    Ok(text)
}

/// Parses rules text; `source` names the file in messages and anchors relative set files.
pub fn parse(text: &str, source: &Path) -> Result<Ruleset, ConfigError> {
    parse_with(text, source, &Env::for_rules_file(source))
}

/// [`parse`] with an explicit environment.
pub fn parse_with(text: &str, source: &Path, env: &Env) -> Result<Ruleset, ConfigError> {
    parse_limited(text, source, env, firewall_common::MAX_RULES as usize)
}

fn parse_limited(
    text: &str,
    source: &Path,
    env: &Env,
    max_rules: usize,
) -> Result<Ruleset, ConfigError> {
    parse_chunked(text, source, env, max_rules, split::split(text))
}

/// Reads the document from its pieces if `split` cut it and they parse, else as a whole.
fn parse_chunked(
    text: &str,
    source: &Path,
    env: &Env,
    max_rules: usize,
    split: Option<split::Split>,
) -> Result<Ruleset, ConfigError> {
    if let Some(split) = split
        && split.rules <= max_rules
        && let Ok(rest) = DeTable::parse(&split.rest)
        && let Some(result) = check(
            Checker::new(text, source, env),
            rest.into_inner(),
            Some((text, split.chunks)),
            max_rules,
        )
    {
        return result;
    }
    parse_whole(text, source, env, max_rules)
}

/// The document parsed in one piece: what a file without rule sections, or one [`split`]
/// cannot cut, or one whose pieces do not parse, is read with.
fn parse_whole(
    text: &str,
    source: &Path,
    env: &Env,
    max_rules: usize,
) -> Result<Ruleset, ConfigError> {
    let mut ck = Checker::new(text, source, env);
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc.into_inner(),
        Err(e) => {
            ck.error(e.span(), format!("TOML syntax error: {}", e.message()));
            return Err(ck.into_error());
        }
    };
    check(ck, doc, None, max_rules).unwrap_or_else(|| {
        // Only the rule chunks of a split document can fail to parse on their own.
        Err(ConfigError::Invalid(vec![Diagnostic {
            file: source.to_path_buf(),
            line: None,
            column: None,
            message: "internal error: the rules could not be read".to_owned(),
        }]))
    })
}

/// Checks a document's top-level tables (`doc`; without its rule sections when `chunks` gives
/// them, as the file's text and the ranges of its rule sections). `None` when the pieces of a
/// split document do not mean what the whole does (a rule chunk that does not parse alone, a
/// `rule` key in the rest): the caller reads the whole document instead.
fn check<'t>(
    mut ck: Checker<'_>,
    doc: DeTable<'t>,
    chunks: Option<(&'t str, Vec<Range<usize>>)>,
    max_rules: usize,
) -> Option<Result<Ruleset, ConfigError>> {
    let mut sections: HashMap<&'static str, Spanned<DeValue<'_>>> = HashMap::new();
    for (key, value) in doc {
        match TOP_LEVEL_KEYS
            .iter()
            .find(|k| **k == key.get_ref().as_ref())
        {
            Some(known) => {
                sections.insert(known, value);
            }
            None => ck.error(
                Some(key.span()),
                format!(
                    "unknown top-level key {:?}; expected one of: {}",
                    key.get_ref(),
                    one_of(TOP_LEVEL_KEYS)
                ),
            ),
        }
    }
    let rule_tables = match chunks {
        Some(_) if sections.contains_key("rule") => return None,
        Some((text, chunks)) => RuleTables::Chunks { text, chunks },
        None => RuleTables::Document(sections.remove("rule")),
    };

    let daemon = ck.daemon(sections.remove("daemon"));
    let defaults = ck.defaults(sections.remove("defaults"));
    let reject = ck.reject(sections.remove("reject"));
    let conntrack = ck.conntrack(sections.remove("conntrack"));
    let log = ck.log(sections.remove("log"));
    let metrics = ck.metrics(sections.remove("metrics"));
    let dns = ck.dns(sections.remove("dns"));
    let sets = ck.sets(sections.remove("sets"));
    let (mut rules, mut written) = ck.rules(rule_tables, &sets, max_rules)?;
    let mut assertions = ck.assertions(sections.remove("assert"));
    let patterns = ck.include_patterns(sections.remove("include"));
    let included = ck.include(patterns, &sets, written, max_rules);
    rules.extend(included.rules);
    written += included.written;
    assertions.extend(included.assertions);

    let lookups = rules
        .iter()
        .filter(|r| r.direction == Direction::In)
        .flat_map(|r| &r.names)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if lookups > crate::names::MAX_LOOKUPS {
        ck.error(
            None,
            format!(
                "the inbound rules name {lookups} names; the daemon looks up at most {} (a list of names to refuse belongs in outbound rules, or as addresses in a set)",
                crate::names::MAX_LOOKUPS
            ),
        );
    }

    // Every path that drops a rule reports why; this guards that promise, since loading a
    // rule set with a rule silently missing is the one outcome worse than refusing it.
    if ck.errors.is_empty() && included.errors.is_empty() && rules.len() != written {
        ck.error(
            None,
            format!(
                "internal error: only {} of {written} rules were validated; refusing to load a partial rule set",
                rules.len()
            ),
        );
    }
    if !ck.errors.is_empty() || !included.errors.is_empty() {
        // The rules file's problems in its order, then each included file's.
        let mut all = match ck.into_error() {
            ConfigError::Invalid(d) => d,
            read @ ConfigError::Read { .. } => return Some(Err(read)),
        };
        all.extend(included.errors);
        return Some(Err(ConfigError::Invalid(all)));
    }
    ck.warnings.sort_by_key(|(order, _)| *order);
    let mut warnings: Vec<String> = ck.warnings.into_iter().map(|(_, w)| w).collect();
    warnings.extend(included.warnings);
    let mut ruleset = Ruleset {
        source: ck.source.to_path_buf(),
        included: included.files,
        daemon,
        defaults,
        reject,
        conntrack,
        log,
        metrics,
        dns,
        sets: sets.expanded,
        runtime_sets: sets.runtime,
        rules,
        assertions,
        warnings,
    };
    ruleset.warnings.extend(crate::lint::lint(&ruleset));
    Some(Ok(ruleset))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail by panicking")]
mod tests;
