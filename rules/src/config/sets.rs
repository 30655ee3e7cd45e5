//! `[sets]`: named lists of networks and names, inline or read from a file, that rules use as
//! `remote = "@name"`. A set file holds one address, network or name a line, or lines of a
//! hosts file (`0.0.0.0 ads.example.com`: the names after the address), so the ad and
//! malware blocklists published as hosts files are read as they are; names go to outbound
//! rules only (`crate::names`). A set declared empty (`blocklist = []`) is a *runtime set*: its members
//! come from `fwctl set add` (fail2ban's action, scripts) and live in the daemon, which writes
//! them into the kernel's tables in place; the file stays the one place the members of every
//! other set come from, so `fwctl set add` refuses those. A set file may be large and written by other tools, so its problems are
//! capped and reported at the file's own line and column, without quoting it.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Range,
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::names::NamePattern;
use toml::{
    Spanned,
    de::{DeValue, ValueDeserializer},
};

use super::{
    Diagnostic,
    checker::Checker,
    raw::{RawSetFile, RemoteEntry},
    read_trusted,
    rule::looks_like_a_name,
    values::{host_bits_warning, parse_net, parse_net_quoting, sorted_unique},
};

/// A broken set file (say, the wrong format altogether) would otherwise bury the other
/// messages under one per line.
pub(super) const MAX_REPORTS_PER_SET_FILE: usize = 20;

/// `[sets]` after checking.
pub(super) struct Sets {
    /// Sets that are fine, expanded: their networks.
    pub(super) expanded: BTreeMap<String, Vec<IpNet>>,
    /// Their names (sets without names have no entry).
    pub(super) names: BTreeMap<String, Vec<NamePattern>>,
    /// Every name defined, broken or not: a broken set has already been reported, and its uses
    /// should not add "unknown set" noise.
    pub(super) defined: BTreeSet<String>,
    /// Sets declared empty (`blocklist = []`): runtime sets, filled by `fwctl set add`.
    pub(super) runtime: BTreeSet<String>,
}

impl Checker<'_> {
    pub(super) fn sets(&mut self, value: Option<Spanned<DeValue<'_>>>) -> Sets {
        let mut out = Sets {
            expanded: BTreeMap::new(),
            names: BTreeMap::new(),
            defined: BTreeSet::new(),
            runtime: BTreeSet::new(),
        };
        let Some(value) = value else {
            return out;
        };
        let span = value.span();
        let entries = match value.into_inner() {
            DeValue::Table(entries) => entries,
            other => {
                self.error(
                    Some(span),
                    format!("[sets] must be a table, not {}", other.type_str()),
                );
                return out;
            }
        };
        for (key, value) in entries {
            let name = key.get_ref().to_string();
            out.defined.insert(name.clone());
            if !valid_set_name(&name) {
                let hint = if name.starts_with('@') {
                    "; '@' is only written where a rule uses the set"
                } else {
                    ""
                };
                self.error(
                    Some(key.span()),
                    format!("invalid set name {name:?}: use letters, digits, '_' and '-'{hint}"),
                );
                continue;
            }
            let declared_empty = matches!(value.get_ref(), DeValue::Array(a) if a.is_empty());
            if let Some((nets, names)) = self.set(&name, value) {
                if declared_empty {
                    out.runtime.insert(name.clone());
                }
                if !names.is_empty() {
                    out.names.insert(name.clone(), names);
                }
                out.expanded.insert(name, nets);
            }
        }
        out
    }

    pub(super) fn set(&mut self, name: &str, value: Spanned<DeValue<'_>>) -> Option<SetMembers> {
        let ctx = format!("set {name:?}: ");
        let span = value.span();
        match value.get_ref() {
            DeValue::Array(_) => {
                let entries = match Vec::<Spanned<RemoteEntry>>::deserialize(
                    ValueDeserializer::from(value),
                ) {
                    Ok(entries) => entries,
                    Err(e) => {
                        self.error(
                            Some(e.span().unwrap_or(span)),
                            format!("{ctx}{}", e.message()),
                        );
                        return None;
                    }
                };
                // Declared empty: a runtime set (`fwctl set add`), which matches nothing
                // until members are added (`runtime.rs` in the daemon's compiler).
                if entries.is_empty() {
                    return Some((Vec::new(), Vec::new()));
                }
                let mut nets = Vec::with_capacity(entries.len());
                let mut names = Vec::new();
                let mut ok = true;
                for entry in &entries {
                    let RemoteEntry(text) = entry.get_ref();
                    if text.starts_with('@') {
                        self.error(
                            Some(entry.span()),
                            format!("{ctx}{text:?}: a set cannot include another set"),
                        );
                        ok = false;
                        continue;
                    }
                    match parse_net(text) {
                        Ok(parsed) => nets.push(self.normalise(parsed, text, &ctx, entry.span())),
                        Err(_) if looks_like_a_name(text) => match NamePattern::parse(text) {
                            Ok(n) => names.push(n),
                            Err(msg) => {
                                self.error(Some(entry.span()), format!("{ctx}{msg}"));
                                ok = false;
                            }
                        },
                        Err(msg) => {
                            self.error(Some(entry.span()), format!("{ctx}{msg}"));
                            ok = false;
                        }
                    }
                }
                ok.then(|| (sorted_unique(nets), sorted_names(names)))
            }
            DeValue::Table(_) => {
                let raw = self.table::<RawSetFile>(value, &ctx, "{ file = ... }", "", &[])?;
                self.set_file(name, &ctx, &raw.file)
            }
            other => {
                self.error(
                    Some(span),
                    format!(
                        r#"{ctx}must be a list of addresses and names or {{ file = "PATH" }}, not {}"#,
                        other.type_str()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn normalise(
        &mut self,
        net: IpNet,
        text: &str,
        ctx: &str,
        span: Range<usize>,
    ) -> IpNet {
        let trunc = net.trunc();
        if trunc != net {
            self.warn(span, format!("{ctx}{}", host_bits_warning(text, trunc)));
        }
        trunc
    }

    pub(super) fn set_file(
        &mut self,
        name: &str,
        ctx: &str,
        file: &Spanned<String>,
    ) -> Option<SetMembers> {
        if file.get_ref().is_empty() {
            self.error(Some(file.span()), format!("{ctx}file path is empty"));
            return None;
        }
        let path = self.env.base_dir.join(file.get_ref());
        let text = match read_trusted(&path) {
            Ok(text) => text,
            Err(e) => {
                self.error(
                    Some(file.span()),
                    format!("{ctx}cannot read set file {}: {e}", path.display()),
                );
                return None;
            }
        };
        let anchor = file.span().start;
        let mut nets = Vec::new();
        let mut names = Vec::new();
        let mut errors = 0usize;
        let mut warnings = 0usize;
        for (index, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or("");
            let entry = content.trim();
            if entry.is_empty() {
                continue;
            }
            let line_no = index + 1;
            let column = content[..content.len() - content.trim_start().len()]
                .chars()
                .count()
                + 1;
            let here = |message: String| Diagnostic {
                file: path.clone(),
                line: Some(line_no),
                column: Some(column),
                message,
            };
            // Messages about a set file never quote it: they go to control-group members, who
            // may not be allowed to read the file (a symbolic link can lead anywhere root can
            // read). The line and column are enough to find the entry.
            let mut fields = entry.split_whitespace();
            let first = fields.next().unwrap_or(entry);
            let rest: Vec<&str> = fields.collect();
            // A hosts file's line: an address, then names. The address is where the names
            // were sent (0.0.0.0, 127.0.0.1); only the names are members.
            // `fe80::1%lo0`: a zone, as some published hosts files have in their header.
            let address = first.split('%').next().unwrap_or(first);
            let hosts_line = !rest.is_empty() && address.parse::<std::net::IpAddr>().is_ok();
            let problem = if hosts_line {
                rest.iter()
                    .filter(|f| f.parse::<std::net::IpAddr>().is_err())
                    .find_map(|f| match NamePattern::parse(f) {
                        Ok(n) => {
                            names.push(n);
                            None
                        }
                        Err(_) => Some(format!(
                            "{ctx}a hosts line's field after the address is not a name"
                        )),
                    })
            } else if !rest.is_empty() {
                Some(format!(
                    "{ctx}one address, network or name a line (or a hosts file's \
                     \"ADDRESS NAME...\")"
                ))
            } else {
                match parse_net_quoting(entry, false) {
                    Ok(net) => {
                        let trunc = net.trunc();
                        if trunc != net {
                            warnings += 1;
                            if warnings <= MAX_REPORTS_PER_SET_FILE {
                                let warning = here(format!(
                                    "{ctx}this entry has host bits set; they are ignored"
                                ));
                                self.warnings.push(((anchor, line_no), warning.to_string()));
                            }
                        }
                        nets.push(trunc);
                        None
                    }
                    Err(_) if looks_like_a_name(entry) => match NamePattern::parse(entry) {
                        Ok(n) => {
                            names.push(n);
                            None
                        }
                        Err(_) => Some(format!("{ctx}not an address, a network or a name")),
                    },
                    Err(msg) => Some(format!("{ctx}{msg}")),
                }
            };
            if let Some(msg) = problem {
                errors += 1;
                if errors <= MAX_REPORTS_PER_SET_FILE {
                    self.errors.push(((anchor, line_no), here(msg)));
                }
            }
        }
        let end = (anchor, usize::MAX);
        if errors > MAX_REPORTS_PER_SET_FILE {
            let more = errors - MAX_REPORTS_PER_SET_FILE;
            let summary = Diagnostic {
                file: path.clone(),
                line: None,
                column: None,
                message: format!("{ctx}{more} more invalid lines not shown"),
            };
            self.errors.push((end, summary));
        }
        if warnings > MAX_REPORTS_PER_SET_FILE {
            let more = warnings - MAX_REPORTS_PER_SET_FILE;
            self.warnings.push((
                end,
                format!(
                    "{}: {ctx}{more} more entries with host bits set not shown",
                    path.display()
                ),
            ));
        }
        if errors > 0 {
            return None;
        }
        if nets.is_empty() && names.is_empty() {
            self.warn(
                file.span(),
                format!(
                    "{ctx}{} lists no addresses or names; rules using @{name} match nothing",
                    path.display()
                ),
            );
        }
        Some((sorted_unique(nets), sorted_names(names)))
    }
}

/// A set's networks and names.
pub(super) type SetMembers = (Vec<IpNet>, Vec<NamePattern>);

fn sorted_names(mut names: Vec<NamePattern>) -> Vec<NamePattern> {
    names.sort_unstable();
    names.dedup();
    names
}

fn valid_set_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
