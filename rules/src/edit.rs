//! Editing a rules file in place: the `[[rule]]` tables `fwctl add`, `fwctl insert` and `fwctl
//! delete` write or remove, with every other byte of the file (comments, blank lines, key
//! order, quoting) kept as it was. toml_edit keeps the layout; this module decides where a
//! rule goes and how it is written.
//!
//! It only edits text. Whether the result is a valid rule set is for the caller to check with
//! [`crate::config`], exactly as a reload would, before anything is written: a rule given on
//! the command line gets the same messages, positions and all, as one typed into the file.
//!
//! A comment directly above a rule's `[[rule]]` header belongs to that rule: it is removed with
//! it, and a rule inserted before another goes above that one's comment.

use std::fmt;

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, Value, value};

use crate::model::{Action, Direction};

/// A rule given on the command line, keys as in the file. Values are written as given and
/// validated by the caller through the parser.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewRule {
    pub name: Option<String>,
    pub direction: Option<Direction>,
    /// `tcp`, `udp`, `icmp` or `any`; absent means the file's default (`any`).
    pub proto: Option<String>,
    /// Ports as written on the command line: `22`, `ssh`, `8000-8100`, several.
    pub ports: Vec<String>,
    /// Addresses, networks or `@set`s.
    pub remote: Vec<String>,
    pub program: Option<String>,
    pub unit: Option<String>,
    pub user: Option<String>,
    pub action: Option<Action>,
    pub log: Option<bool>,
}

/// Which rule: its number in the file (1 for the first `[[rule]]`, as `fwctl list` and every
/// message number them) or its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Which {
    Number(usize),
    Name(String),
}

impl Which {
    /// A number if the text is all digits, else a name.
    pub fn parse(s: &str) -> Self {
        match s.parse::<usize>() {
            Ok(n) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Which::Number(n),
            _ => Which::Name(s.to_string()),
        }
    }
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Which::Number(n) => write!(f, "rule {n}"),
            Which::Name(n) => write!(f, "the rule named {n:?}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("the file is not valid TOML: {0}")]
    Syntax(String),
    #[error(
        "`rule` is not written as [[rule]] tables here; edit this file by hand (or rewrite its \
         rules as [[rule]] sections)"
    )]
    NotTables,
    #[error("there is no rule {0} (the file has {1})")]
    NoSuchNumber(usize, usize),
    #[error("no rule is named {0:?}")]
    NoSuchName(String),
    #[error("{count} rules are named {name:?} (rules {numbers}); delete one by its number")]
    AmbiguousName {
        name: String,
        count: usize,
        numbers: String,
    },
    #[error("rule {0} is already named {1:?}: rule names given to fwctl must be unique")]
    DuplicateName(usize, String),
    #[error("a position counts from 1 (the first rule)")]
    ZeroPosition,
}

/// The file with `rule` added: at the end of the rules (`before` = `None`), or in front of rule
/// `before`, which becomes the one after it. Positions past the last rule append.
pub fn add(text: &str, rule: &NewRule, before: Option<usize>) -> Result<String, EditError> {
    let mut doc = parse(text)?;
    let rules = rule_tables(&mut doc)?;
    if let Some(name) = &rule.name
        && let Some(i) = rules
            .iter()
            .position(|t| t.get("name").and_then(Item::as_str) == Some(name))
    {
        return Err(EditError::DuplicateName(i + 1, name.clone()));
    }
    let table = to_table(rule);
    match before {
        Some(0) => return Err(EditError::ZeroPosition),
        Some(n) if n <= rules.len() => {
            // The new rule goes above the comment of the rule it is put in front of: that
            // comment is about that rule.
            let mut table = table;
            let next = rules.get_mut(n - 1).expect("n <= len");
            let prefix = next
                .decor()
                .prefix()
                .and_then(|p| p.as_str())
                .map(str::to_string);
            if let Some(prefix) = prefix {
                let (blank, rest) = split_leading_blank(&prefix);
                table.decor_mut().set_prefix(blank.to_string());
                next.decor_mut().set_prefix(format!("\n{rest}"));
            }
            // Placed with the rule it goes in front of: toml_edit orders tables by their
            // position in the file, and a table without one follows the table visited
            // before it.
            table.set_position(next.position());
            rules.insert(n - 1, table);
        }
        _ => rules.push(table),
    }
    Ok(doc.to_string())
}

/// The file without the rule `which`, and that rule's text as it was in the file (its comment
/// included), for showing what was removed.
pub fn delete(text: &str, which: &Which) -> Result<(String, usize, String), EditError> {
    let mut doc = parse(text)?;
    let rules = rule_tables(&mut doc)?;
    let index = find(rules, which)?;
    let removed = rules.remove(index);
    let shown = table_text(&removed);
    if rules.is_empty() {
        doc.remove("rule");
    }
    Ok((doc.to_string(), index + 1, shown))
}

/// The text of a rule's table as it is in the file, header included.
pub fn rule_text(text: &str, which: &Which) -> Result<String, EditError> {
    let mut doc = parse(text)?;
    let rules = rule_tables(&mut doc)?;
    let index = find(rules, which)?;
    Ok(table_text(rules.get(index).expect("found")))
}

/// How `rule` is written in the file.
pub fn render(rule: &NewRule) -> String {
    let mut doc = DocumentMut::new();
    let mut rules = ArrayOfTables::new();
    rules.push(to_table(rule));
    doc.insert("rule", Item::ArrayOfTables(rules));
    doc.to_string().trim_start().to_string()
}

fn parse(text: &str) -> Result<DocumentMut, EditError> {
    text.parse::<DocumentMut>()
        .map_err(|e| EditError::Syntax(e.to_string().trim().to_string()))
}

fn rule_tables(doc: &mut DocumentMut) -> Result<&mut ArrayOfTables, EditError> {
    if !doc.contains_key("rule") {
        doc.insert("rule", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    doc.get_mut("rule")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or(EditError::NotTables)
}

fn find(rules: &ArrayOfTables, which: &Which) -> Result<usize, EditError> {
    match which {
        Which::Number(n) if *n >= 1 && *n <= rules.len() => Ok(n - 1),
        Which::Number(n) => Err(EditError::NoSuchNumber(*n, rules.len())),
        Which::Name(name) => {
            let found: Vec<usize> = rules
                .iter()
                .enumerate()
                .filter(|(_, t)| t.get("name").and_then(Item::as_str) == Some(name.as_str()))
                .map(|(i, _)| i)
                .collect();
            match found.as_slice() {
                [] => Err(EditError::NoSuchName(name.clone())),
                [i] => Ok(*i),
                many => Err(EditError::AmbiguousName {
                    name: name.clone(),
                    count: many.len(),
                    numbers: many
                        .iter()
                        .map(|i| (i + 1).to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            }
        }
    }
}

fn table_text(t: &Table) -> String {
    let mut doc = DocumentMut::new();
    let mut rules = ArrayOfTables::new();
    let mut t = t.clone();
    t.set_position(None);
    rules.push(t);
    doc.insert("rule", Item::ArrayOfTables(rules));
    doc.to_string().trim().to_string()
}

/// The blank lines at the start of a table's prefix, and the rest (its comment).
fn split_leading_blank(prefix: &str) -> (&str, &str) {
    let mut end = 0;
    for line in prefix.split_inclusive('\n') {
        if !line.trim().is_empty() {
            break;
        }
        end += line.len();
    }
    prefix.split_at(end)
}

fn to_table(rule: &NewRule) -> Table {
    let mut t = Table::new();
    t.decor_mut().set_prefix("\n");
    if let Some(name) = &rule.name {
        t.insert("name", value(name.as_str()));
    }
    if let Some(d) = rule.direction {
        t.insert("direction", value(d.to_string()));
    }
    if let Some(p) = &rule.proto {
        t.insert("proto", value(p.as_str()));
    }
    if !rule.ports.is_empty() {
        t.insert(
            "port",
            Item::Value(match rule.ports.as_slice() {
                [one] => number_or_text(one),
                many => Value::Array(many.iter().map(|p| number_or_text(p)).collect::<Array>()),
            }),
        );
    }
    if !rule.remote.is_empty() {
        t.insert(
            "remote",
            match rule.remote.as_slice() {
                [one] => value(one.as_str()),
                many => Item::Value(Value::Array(
                    many.iter().map(String::as_str).collect::<Array>(),
                )),
            },
        );
    }
    for (key, v) in [("program", &rule.program), ("unit", &rule.unit)] {
        if let Some(v) = v {
            t.insert(key, value(v.as_str()));
        }
    }
    if let Some(user) = &rule.user {
        // A uid is written as a number: a string is a user name.
        t.insert("user", Item::Value(number_or_text(user)));
    }
    if let Some(a) = rule.action {
        t.insert("action", value(a.to_string()));
    }
    if let Some(l) = rule.log {
        t.insert("log", value(l));
    }
    t
}

/// Digits as a TOML integer (a port, a uid), anything else as a string (a service or range, a
/// user name), as the file's own syntax tells them apart.
fn number_or_text(s: &str) -> Value {
    match s.parse::<i64>() {
        Ok(n) if s.bytes().all(|b| b.is_ascii_digit()) => n.into(),
        _ => s.into(),
    }
}

#[cfg(test)]
mod tests;
