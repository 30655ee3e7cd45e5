//! `[[rule]]`: one rule at a time, every key checked even when another is broken, so one run
//! reports all of a rule's problems; then its `port`, `remote` and selectors (`program`,
//! `unit`, `user`). Every path that drops a rule reports why.

use std::{borrow::Cow, collections::hash_map::Entry, ops::Range};

use ipnet::IpNet;
use toml::{
    Spanned,
    de::{DeArray, DeTable, DeValue},
};

use super::{
    checker::{Checker, one_of},
    raw::{OneOrMany, ProgramPath, RawPort, RawRule, RawUser, RemoteEntry, UnitName},
    sets::Sets,
    values::{
        merge_ports, parse_decimal, parse_net, port_number, program_path, sorted_unique, unit_name,
        user_id,
    },
};
use crate::{
    model::{Action, Direction, Nets, Origin, PortRange, Proto, Rule, Selector, Text},
    names::{MAX_LOOKUPS, NamePattern},
};

/// Where the `[[rule]]` tables come from.
pub(super) enum RuleTables<'t> {
    /// The `rule` value of the whole document.
    Document(Option<Spanned<DeValue<'t>>>),
    /// Runs of rule sections of `text`, each parsed when its rules are checked (`split.rs`).
    Chunks {
        text: &'t str,
        chunks: Vec<Range<usize>>,
    },
}

/// Where each key of a rule is (keys are mostly borrowed from the text; a rule has a handful).
type KeySpans<'t> = Vec<(Cow<'t, str>, Range<usize>)>;

fn key_span(keys: &KeySpans<'_>, name: &str) -> Option<Range<usize>> {
    keys.iter()
        .find(|(k, _)| k == name)
        .map(|(_, span)| span.clone())
}

/// What checking rules one at a time carries from one to the next.
#[derive(Default)]
struct RuleList {
    rules: Vec<Rule>,
    written: usize,
    /// name -> (1-based rule number, line) of its first use.
    names: foldhash::HashMap<Text, (usize, usize)>,
}

impl Checker<'_> {
    /// The rules and how many were written; `None` when a chunk does not parse on its own,
    /// for the caller to read the whole document instead (its messages are the ones to give).
    pub(super) fn rules(
        &mut self,
        tables: RuleTables<'_>,
        sets: &Sets,
        max_rules: usize,
    ) -> Option<(Vec<Rule>, usize)> {
        let mut list = RuleList::default();
        match tables {
            RuleTables::Document(value) => {
                if let Some(elements) = self.rule_array(value, max_rules) {
                    list.rules.reserve(elements.len());
                    for element in elements {
                        self.next_rule(element, sets, &mut list);
                    }
                }
            }
            RuleTables::Chunks { text, chunks } => {
                for chunk in chunks {
                    let mut doc = DeTable::parse(text.get(chunk.clone())?).ok()?.into_inner();
                    let DeValue::Array(elements) = doc.remove("rule")?.into_inner() else {
                        return None;
                    };
                    if !doc.is_empty() {
                        return None;
                    }
                    self.base = chunk.start;
                    for element in elements {
                        self.next_rule(element, sets, &mut list);
                    }
                    self.base = 0;
                }
            }
        }
        Some((list.rules, list.written))
    }

    /// The elements of the whole document's `rule` array, or none if it is not an array of
    /// at most `max_rules` tables (reported).
    fn rule_array<'t>(
        &mut self,
        value: Option<Spanned<DeValue<'t>>>,
        max_rules: usize,
    ) -> Option<DeArray<'t>> {
        let value = value?;
        let span = value.span();
        let elements = match value.into_inner() {
            DeValue::Array(elements) => elements,
            DeValue::Table(_) => {
                self.error(
                    Some(span),
                    "rules are written [[rule]] (double brackets: one table per rule), not [rule]"
                        .to_owned(),
                );
                return None;
            }
            other => {
                self.error(
                    Some(span),
                    format!(
                        "rule must be an array of tables ([[rule]]), not {}",
                        other.type_str()
                    ),
                );
                return None;
            }
        };
        if elements.len() > max_rules {
            let first_excess = elements.get(max_rules).map(Spanned::span);
            self.error(
                first_excess,
                format!(
                    "too many rules: this file has {}, at most {max_rules} are allowed",
                    elements.len()
                ),
            );
            return None;
        }
        Some(elements)
    }

    /// Checks the next rule of the file and adds it to `list` (or reports why not).
    fn next_rule(&mut self, element: Spanned<DeValue<'_>>, sets: &Sets, list: &mut RuleList) {
        let index = self.first_rule + list.written;
        list.written += 1;
        let number = index + 1;
        let header = element.span();
        let line = self.locate(header.start).0;
        let given_name = match element.get_ref() {
            DeValue::Table(t) => t
                .get("name")
                .and_then(|v| v.get_ref().as_str())
                .map(str::to_owned),
            _ => None,
        };
        let ctx = match &given_name {
            Some(name) => format!("rule {number} ({name:?}): "),
            None => format!("rule {number}: "),
        };
        let key_spans: KeySpans<'_> = match element.get_ref() {
            DeValue::Table(t) => t.keys().map(|k| (k.get_ref().clone(), k.span())).collect(),
            _ => Vec::new(),
        };
        let Some(raw) = self.table::<RawRule>(element, &ctx, "[[rule]]", "", &[]) else {
            return;
        };
        let Some(rule) = self.rule(raw, index, &ctx, header.clone(), line, &key_spans, sets) else {
            return;
        };
        match list.names.entry(rule.name.clone()) {
            Entry::Occupied(first) => {
                let (first_number, first_line) = *first.get();
                self.warn(
                    header,
                    format!(
                        "{ctx}has the same name as rule {first_number} (line {first_line}); names are only labels, but duplicates make logs ambiguous"
                    ),
                );
            }
            Entry::Vacant(slot) => {
                slot.insert((number, line));
            }
        }
        list.rules.push(rule);
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "a rule's parts as the caller already split them; a struct for one call would only rename them"
    )]
    pub(super) fn rule(
        &mut self,
        raw: RawRule,
        index: usize,
        ctx: &str,
        header: Range<usize>,
        line: usize,
        key_spans: &KeySpans<'_>,
        sets: &Sets,
    ) -> Option<Rule> {
        let mut ok = true;
        let name = match &raw.name {
            Some(name) if name.get_ref().trim().is_empty() => {
                self.error(
                    Some(name.span()),
                    format!(
                        "{ctx}name is empty; leave it out to get the default \"rule {}\"",
                        index + 1
                    ),
                );
                ok = false;
                String::new()
            }
            Some(name) => name.get_ref().clone(),
            None => format!("rule {}", index + 1),
        };

        let selector = self.selector(
            raw.program.as_ref(),
            raw.unit.as_ref(),
            raw.user.as_ref(),
            ctx,
        );
        let direction = match &raw.direction {
            Some(v) => {
                let options = [("in", Direction::In), ("out", Direction::Out)];
                self.choice(v, ctx, "direction", &options)
            }
            None => Some(Direction::In),
        };
        let proto = match &raw.proto {
            Some(v) => {
                let options = [
                    ("tcp", Proto::Tcp),
                    ("udp", Proto::Udp),
                    ("icmp", Proto::Icmp),
                    ("any", Proto::Any),
                ];
                self.choice(v, ctx, "proto", &options)
            }
            None => Some(Proto::Any),
        };
        let actions = [
            ("allow", Action::Allow),
            ("reject", Action::Reject),
            ("stealth", Action::Stealth),
        ];
        let action = match &raw.action {
            Some(v) => self.choice(v, ctx, "action", &actions),
            None => {
                self.error(
                    Some(header.clone()),
                    format!(
                        "{ctx}missing \"action\"; expected one of: {}",
                        one_of(&actions.map(|(name, _)| name))
                    ),
                );
                None
            }
        };

        // Ports are checked even when proto is broken, with "any" standing in, so one run
        // reports both problems.
        let ports = match raw.port {
            None => Some(Vec::new()),
            Some(_) if proto == Some(Proto::Icmp) => {
                let at = key_span(key_spans, "port");
                self.error(
                    at,
                    format!(
                        r#"{ctx}ports only apply to tcp and udp; this rule has proto = "icmp""#
                    ),
                );
                None
            }
            Some(port) => self.ports(port, proto.unwrap_or(Proto::Any), ctx),
        };
        let (remote, names, remote_spec) = match raw.remote {
            None => (Some(None), Vec::new(), Vec::new()),
            Some(remote) => self.remote(remote, ctx, sets),
        };

        let selector_keys: Vec<&str> = [
            ("\"program\"", raw.program.is_some()),
            ("\"unit\"", raw.unit.is_some()),
            ("\"user\"", raw.user.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, given)| given.then_some(key))
        .collect();

        let runtime: Vec<&str> = remote_spec
            .iter()
            .filter_map(|t| t.strip_prefix('@'))
            .filter(|name| sets.runtime.contains(*name))
            .collect();
        if let (Some(set), false) = (runtime.first(), selector_keys.is_empty()) {
            let at = key_span(key_spans, "remote").unwrap_or_else(|| header.clone());
            self.error(
                Some(at),
                format!(
                    r#"{ctx}@{set} is a runtime set (declared empty, filled by `fwctl set add`), which rules with {} cannot use yet: the tables of rules about programs are not updated in place; list its addresses in the file, or drop the selector — the firewall never ignores a rule it cannot enforce"#,
                    selector_keys.join(" and ")
                ),
            );
            ok = false;
        }
        if direction == Some(Direction::In) {
            // Inbound, a name is looked up by the daemon (`firewall_daemon::host::lookups`): a
            // wildcard names no address anyone can look up.
            if let Some((name, at)) = names.iter().find(|(n, _)| n.wildcard) {
                self.error(
                    Some(at.clone()),
                    format!(
                        r#"{ctx}{name:?} is a wildcard, and an inbound rule's names are looked up by the daemon, which cannot look up every name below {suffix:?}; name the hosts ("monitor.{suffix}") or write their addresses — the firewall never ignores a rule it cannot enforce"#,
                        name = name.to_string(),
                        suffix = name.name
                    ),
                );
                ok = false;
            } else if names.len() > MAX_LOOKUPS {
                let at = key_span(key_spans, "remote").unwrap_or_else(|| header.clone());
                self.error(
                    Some(at),
                    format!(
                        "{ctx}{} names in an inbound rule; the daemon looks up at most {MAX_LOOKUPS} names for the inbound rules (a list of names to refuse belongs in outbound rules, or as addresses in a set)",
                        names.len()
                    ),
                );
                ok = false;
            }
        }
        if proto == Some(Proto::Icmp) && !selector_keys.is_empty() {
            // Rules about a program, unit or user are enforced on sockets (connect, send,
            // accept): TCP and UDP only. With proto = "any" they mean TCP and UDP.
            let at = key_span(key_spans, "proto").unwrap_or_else(|| header.clone());
            self.error(
                Some(at),
                format!(
                    r#"{ctx}proto = "icmp" does not go with {}: rules about a program, unit or user are enforced on TCP and UDP sockets, and ICMP (ping, raw sockets) never passes there nor has a listening program; use proto = "tcp" or "udp", or leave proto out ("any" then means TCP and UDP) — the firewall never ignores a rule it cannot enforce"#,
                    selector_keys.join(" and ")
                ),
            );
            ok = false;
        } else if direction == Some(Direction::Out) && proto == Some(Proto::Icmp) {
            let at = key_span(key_spans, "proto").unwrap_or_else(|| header.clone());
            self.error(
                Some(at),
                format!(
                    r#"{ctx}outbound ICMP rules are not supported yet: outbound rules are enforced where TCP and UDP sockets connect or send, and ICMP (ping, raw sockets) never passes there; remove the rule — the firewall never ignores a rule it cannot enforce"#
                ),
            );
            ok = false;
        }
        let (
            Some(direction),
            Some(proto),
            Some(action),
            Some(ports),
            Some(remote),
            Some(selector),
            true,
        ) = (direction, proto, action, ports, remote, selector, ok)
        else {
            return None;
        };
        let Ok(index) = u32::try_from(index) else {
            self.error(Some(header), format!("{ctx}too many rules"));
            return None;
        };
        let column = self.locate(header.start).1;
        Some(Rule {
            index,
            name: name.into(),
            direction,
            proto,
            ports: ports.into(),
            remote: remote.map(Nets::from_vec),
            names: {
                let mut names: Vec<NamePattern> = names.into_iter().map(|(n, _)| n).collect();
                names.sort();
                names.dedup();
                names
            },
            remote_spec: remote_spec.into_iter().map(Text::from).collect(),
            selector,
            action,
            log: raw.log.map(|v| *v.get_ref()),
            origin: Origin {
                line,
                column,
                file: self.file,
            },
        })
    }

    /// `program`, `unit` and `user`, each checked (all problems reported); `None` if any is
    /// invalid.
    pub(super) fn selector(
        &mut self,
        program: Option<&Spanned<ProgramPath>>,
        unit: Option<&Spanned<UnitName>>,
        user: Option<&Spanned<RawUser>>,
        ctx: &str,
    ) -> Option<Selector> {
        let program = program.map(|v| (v.span(), program_path(&v.get_ref().0)));
        let program = self.selector_part(program, ctx);
        let unit = unit.map(|v| (v.span(), unit_name(&v.get_ref().0)));
        let unit = self.selector_part(unit, ctx);
        let user = user.map(|v| (v.span(), user_id(v.get_ref())));
        let user = self.selector_part(user, ctx);
        Some(Selector {
            program: program?,
            unit: unit?,
            user: user?,
        })
    }

    /// One checked selector key: `Some(None)` if absent, `None` (reported) if invalid.
    fn selector_part<T>(
        &mut self,
        checked: Option<(Range<usize>, Result<T, String>)>,
        ctx: &str,
    ) -> Option<Option<T>> {
        match checked {
            None => Some(None),
            Some((_, Ok(value))) => Some(Some(value)),
            Some((span, Err(message))) => {
                self.error(Some(span), format!("{ctx}{message}"));
                None
            }
        }
    }

    pub(super) fn ports(
        &mut self,
        value: Spanned<OneOrMany<RawPort>>,
        proto: Proto,
        ctx: &str,
    ) -> Option<Vec<PortRange>> {
        let span = value.span();
        let items = match value.into_inner() {
            OneOrMany::One(port) => vec![Spanned::new(span.clone(), port)],
            OneOrMany::Many(items) => items,
        };
        if items.is_empty() {
            self.error(
                Some(span),
                format!(
                    "{ctx}empty port list, which would match nothing; leave out \"port\" to match every port"
                ),
            );
            return None;
        }
        let mut ranges = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.port(item.get_ref(), proto) {
                Ok(range) => ranges.push(range),
                Err(msg) => {
                    self.error(Some(item.span()), format!("{ctx}{msg}"));
                    ok = false;
                }
            }
        }
        ok.then(|| merge_ports(ranges))
    }

    pub(super) fn port(&mut self, port: &RawPort, proto: Proto) -> Result<PortRange, String> {
        let text = match port {
            RawPort::Number(n) => {
                let n = port_number(*n)?;
                return Ok(PortRange { lo: n, hi: n });
            }
            RawPort::Text(text) => text.trim(),
        };
        if text.is_empty() {
            return Err("empty port; write a number, a service name or a range".to_owned());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            let n = port_number(parse_decimal(text))?;
            return Ok(PortRange { lo: n, hi: n });
        }
        // Only digits, dashes and spaces: meant as a range, whether or not it is well formed.
        if text
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-' || b == b' ')
        {
            let malformed = || {
                format!(
                    r#"malformed port range {text:?}; write it as "LOW-HIGH", e.g. "8000-8100""#
                )
            };
            let (lo, hi) = text.split_once('-').ok_or_else(malformed)?;
            let (lo, hi) = (lo.trim(), hi.trim());
            let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if !is_number(lo) || !is_number(hi) {
                return Err(malformed());
            }
            let (lo, hi) = (
                port_number(parse_decimal(lo))?,
                port_number(parse_decimal(hi))?,
            );
            if lo > hi {
                return Err(format!(
                    "reversed port range {text:?}; the first port must not be larger than the last (\"{hi}-{lo}\")"
                ));
            }
            return Ok(PortRange { lo, hi });
        }
        let n = self.service(text, proto)?;
        Ok(PortRange { lo: n, hi: n })
    }

    /// Returns `(Some(remote), spec)` when every entry is fine.
    pub(super) fn remote(
        &mut self,
        value: Spanned<OneOrMany<RemoteEntry>>,
        ctx: &str,
        sets: &Sets,
    ) -> RemoteParts {
        let span = value.span();
        let items = match value.into_inner() {
            OneOrMany::One(entry) => vec![Spanned::new(span.clone(), entry)],
            OneOrMany::Many(items) => items,
        };
        let spec: Vec<String> = items.iter().map(|i| i.get_ref().0.clone()).collect();
        if items.is_empty() {
            self.error(
                Some(span),
                format!(
                    "{ctx}empty remote list, which would match nothing; leave out \"remote\" to match every address"
                ),
            );
            return (None, Vec::new(), spec);
        }
        let mut nets = Vec::new();
        let mut names = Vec::new();
        let mut ok = true;
        for item in &items {
            let text = item.get_ref().0.as_str();
            if let Some(set) = text.strip_prefix('@') {
                match sets.expanded.get(set) {
                    Some(members) => {
                        nets.extend_from_slice(members);
                        if let Some(set_names) = sets.names.get(set) {
                            names.extend(set_names.iter().map(|n| (n.clone(), item.span())));
                        }
                    }
                    None if sets.defined.contains(set) => ok = false,
                    None => {
                        let defined = if sets.defined.is_empty() {
                            "no sets are defined".to_owned()
                        } else {
                            let names: Vec<&str> =
                                sets.defined.iter().map(String::as_str).collect();
                            format!("defined sets: {}", one_of(&names))
                        };
                        self.error(
                            Some(item.span()),
                            format!("{ctx}unknown set {text:?}; {defined}"),
                        );
                        ok = false;
                    }
                }
                continue;
            }
            if text.eq_ignore_ascii_case("any") || text == "*" {
                self.error(
                    Some(item.span()),
                    format!(
                        "{ctx}{text:?} is not a keyword; leave out \"remote\" to match every address"
                    ),
                );
                ok = false;
                continue;
            }
            match parse_net(text) {
                Ok(net) => nets.push(self.normalise(net, text, ctx, item.span())),
                // Not an address, and not written like one: a name.
                Err(_) if looks_like_a_name(text) => match NamePattern::parse(text) {
                    Ok(name) => {
                        if looks_like_a_mistyped_address(&name.name) {
                            self.warn(
                                item.span(),
                                format!(
                                    "{ctx}{text:?} is read as a name, not an address (an \
                                     address has only digits and dots, or hex digits and \
                                     colons): check it for a typo"
                                ),
                            );
                        }
                        names.push((name, item.span()));
                    }
                    Err(msg) => {
                        self.error(Some(item.span()), format!("{ctx}{msg}"));
                        ok = false;
                    }
                },
                Err(msg) => {
                    self.error(Some(item.span()), format!("{ctx}{msg}"));
                    ok = false;
                }
            }
        }
        (ok.then(|| Some(sorted_unique(nets))), names, spec)
    }
}

/// What `remote` says: its networks (`Some(None)`: every address; `None`: an error), its names
/// with where each is written, and its entries as written.
type RemoteParts = (
    Option<Option<Vec<IpNet>>>,
    Vec<(NamePattern, Range<usize>)>,
    Vec<String>,
);

/// A name most of whose labels are numbers (`10.0.0.1O`): more likely a mistyped address
/// than a name.
fn looks_like_a_mistyped_address(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() >= 3
        && labels
            .iter()
            .filter(|l| l.bytes().all(|b| b.is_ascii_digit()))
            .count()
            + 1
            >= labels.len()
}

/// Whether a `remote` entry that is not an address is meant as a name: it has a letter (or is
/// not ASCII, or is a wildcard) and nothing only addresses have (':' or '/'). "10.0.0.300"
/// keeps its address error.
pub(super) fn looks_like_a_name(text: &str) -> bool {
    !text.contains([':', '/'])
        && (text.starts_with("*.")
            || text
                .bytes()
                .any(|b| b.is_ascii_alphabetic() || !b.is_ascii()))
}
