//! `include = ["rules.d/*.toml"]`: rule files dropped into a directory by packages and
//! configuration management (Ansible, Puppet, Salt), read as part of the rules file.
//!
//! Order is what the rules mean (the first rule that matches decides), so it is fixed and
//! visible: the rules file's own rules first, then each pattern in the order written, the
//! files a pattern matches in byte order of their paths (`10-web.toml` before `20-db.toml`).
//! Rules are numbered across files in that order, and every message and `fwctl list` names the
//! file a rule is in.
//!
//! An included file holds `[[rule]]` and `[[assert]]` only: the settings (`[daemon]`,
//! `[defaults]`, ...), the sets and further includes belong to the rules file, so one file
//! says how the firewall behaves and which names mean what. Included files are read as the
//! rules file is (`read_trusted`: regular, bounded, owned by root, not writable by others), and
//! so is the directory a pattern's wildcard reads: whoever may create a file there could
//! otherwise add rules. A pattern without a wildcard names one file, which must exist; one
//! with a wildcard may match none (an empty or missing `rules.d`).

use std::{
    ops::Range,
    path::{Path, PathBuf},
};

use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use super::{Diagnostic, checker::Checker, read_trusted, rule::RuleTables, sets::Sets};
use crate::model::{Assertion, Rule};

/// What the included files added.
#[derive(Default)]
pub(super) struct Included {
    pub(super) files: Vec<PathBuf>,
    pub(super) rules: Vec<Rule>,
    /// Rules written in them, checked or not.
    pub(super) written: usize,
    pub(super) assertions: Vec<Assertion>,
    pub(super) errors: Vec<Diagnostic>,
    pub(super) warnings: Vec<String>,
}

impl Checker<'_> {
    /// The patterns of `include`, with where each is written.
    pub(super) fn include_patterns(
        &mut self,
        value: Option<Spanned<DeValue<'_>>>,
    ) -> Vec<(String, Range<usize>)> {
        let Some(value) = value else {
            return Vec::new();
        };
        let span = value.span();
        let expected =
            "include is a list of file names or patterns: include = [\"rules.d/*.toml\"]";
        let DeValue::Array(items) = value.into_inner() else {
            self.error(Some(span), expected.to_owned());
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            let span = item.span();
            match item.into_inner() {
                DeValue::String(s) if !s.trim().is_empty() => out.push((s.into_owned(), span)),
                _ => self.error(Some(span), expected.to_owned()),
            }
        }
        out
    }

    /// Reads the files `patterns` match, checking each as a part of this rules file: its rules
    /// numbered after the `written` before them, at most `max_rules` in all.
    pub(super) fn include(
        &mut self,
        patterns: Vec<(String, Range<usize>)>,
        sets: &Sets,
        written: usize,
        max_rules: usize,
    ) -> Included {
        let mut out = Included::default();
        for (pattern, span) in patterns {
            let paths = match expand(&self.env.base_dir, &pattern) {
                Ok(paths) => paths,
                Err(why) => {
                    self.error(Some(span), format!("include {pattern:?}: {why}"));
                    continue;
                }
            };
            for path in paths {
                if path == self.source || out.files.contains(&path) {
                    self.warn(
                        span.clone(),
                        format!(
                            "include {pattern:?}: {} is read once, where it first comes",
                            path.display()
                        ),
                    );
                    continue;
                }
                let text = match read_trusted(&path) {
                    Ok(text) => text,
                    Err(e) => {
                        self.error(
                            Some(span.clone()),
                            format!("include {pattern:?}: {}: {e}", path.display()),
                        );
                        continue;
                    }
                };
                out.files.push(path.clone());
                let first = written + out.written;
                let mut sub = Checker::new(&text, &path, self.env);
                sub.file = out.files.len();
                sub.first_rule = first;
                let (rules, n, assertions) =
                    sub.included_document(self.source, sets, max_rules.saturating_sub(first));
                out.rules.extend(rules);
                out.written += n;
                out.assertions.extend(assertions);
                out.warnings.extend(sub.warnings.drain(..).map(|(_, w)| w));
                if let super::ConfigError::Invalid(d) = sub.into_error() {
                    out.errors.extend(d);
                }
            }
        }
        out
    }

    /// An included file's rules (and how many it wrote) and assertions; everything else in it
    /// is an error.
    fn included_document(
        &mut self,
        rules_file: &Path,
        sets: &Sets,
        max_rules: usize,
    ) -> (Vec<Rule>, usize, Vec<Assertion>) {
        let doc = match DeTable::parse(self.text) {
            Ok(doc) => doc.into_inner(),
            Err(e) => {
                self.error(e.span(), format!("TOML syntax error: {}", e.message()));
                return (Vec::new(), 0, Vec::new());
            }
        };
        let mut rule = None;
        let mut assert = None;
        for (key, value) in doc {
            match key.get_ref().as_ref() {
                "rule" => rule = Some(value),
                "assert" => assert = Some(value),
                other => self.error(
                    Some(key.span()),
                    format!(
                        "{other:?} is not read in an included file, which holds [[rule]] and \
                         [[assert]] only; settings, sets and includes go in {}",
                        rules_file.display()
                    ),
                ),
            }
        }
        let (rules, written) = self
            .rules(RuleTables::Document(rule), sets, max_rules)
            .unwrap_or_default();
        let assertions = self.assertions(assert);
        (rules, written, assertions)
    }
}

/// The files `pattern` names, relative to `base` unless absolute: one file, or with `*`, `?`
/// or `[...]` in its last part every file that matches there, in byte order.
fn expand(base: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    // A rules file named without a directory has "." as its base: its includes are shown
    // as written (`rules.d/web.toml`, not `./rules.d/web.toml`).
    let full = if base == Path::new(".") {
        PathBuf::from(pattern)
    } else {
        base.join(pattern)
    };
    let name = full
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("names no file")?;
    let wild = |s: &str| s.contains(['*', '?', '[']);
    let dir = full.parent().ok_or("names no file")?;
    if wild(&dir.to_string_lossy()) {
        return Err("a wildcard may only be in the file name, not in a directory".into());
    }
    if !wild(name) {
        if !full.exists() {
            return Err(format!("{} does not exist", full.display()));
        }
        return Ok(vec![full]);
    }
    // No directory: nothing to read (a rules.d not created yet), as with an empty one.
    if !dir.exists() {
        return Ok(Vec::new());
    }
    trusted_dir(dir)?;
    let pattern = glob::Pattern::new(name).map_err(|e| format!("bad pattern: {e}"))?;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        // Editors' and package managers' leftovers start with a dot (`.rules.toml.swp`,
        // `.#web.toml`); a `*` does not match them, as in a shell.
        if file_name.starts_with('.') {
            continue;
        }
        if pattern.matches(file_name) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// A directory whose files may become rules: owned by root (or the reader), not writable by
/// others nor by a group other than root's.
fn trusted_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    match super::untrusted(&meta) {
        Some(super::Untrusted::Owner(uid)) => Err(format!(
            "{} is owned by uid {uid}, not by root: whoever owns it could add rules",
            dir.display()
        )),
        Some(super::Untrusted::Writable { mode, .. }) => Err(format!(
            "{} is writable by others (mode {mode:04o}): they could add rules; `chmod go-w` it",
            dir.display()
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
