//! The checker: it walks the spanned document, deserializes each table on its own and
//! collects every problem with its position instead of stopping at the first, so one broken
//! rule never hides the problems of the next. The sections' checks are `impl Checker` blocks
//! in their own files.

use std::{borrow::Cow, cell::Cell, ops::Range, path::Path};

use serde::de::{self, DeserializeOwned, Visitor};
use toml::{
    Spanned,
    de::{DeValue, ValueDeserializer},
};

use super::{ConfigError, Diagnostic, Env, services::Services};

/// The field names of a derived struct, as serde's derive lists them: the single source of
/// truth for the "expected one of" part of unknown-key messages.
pub(super) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a Cell<&'static [&'static str]>);

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("field probe"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(de::Error::custom("field probe"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let fields = Cell::new(&[][..]);
    // The probe always fails; only what it recorded matters.
    let _ = T::deserialize(Probe(&fields));
    fields.get()
}

/// The list after "expected one of:".
pub(super) fn one_of(names: &[&str]) -> String {
    names.join(", ")
}

/// Messages sort by where they point in the rules file, then by line within a set file.
type Order = (usize, usize);

pub(super) struct Checker<'a> {
    pub(super) text: &'a str,
    pub(super) source: &'a Path,
    pub(super) env: &'a Env,
    /// Byte offset of the start of each line.
    pub(super) line_starts: Vec<usize>,
    pub(super) errors: Vec<(Order, Diagnostic)>,
    pub(super) warnings: Vec<(Order, String)>,
    /// Read on first use: most rule files name no services.
    pub(super) services: Option<Result<Services, String>>,
    /// Where in the file the spans being checked start: non-zero while the rules of a chunk
    /// parsed on its own (`split.rs`) are checked, whose spans count from the chunk.
    pub(super) base: usize,
    /// Which file this is: 0 for the rules file, `i` for its `i`-th included file
    /// ([`crate::model::Origin::file`]).
    pub(super) file: usize,
    /// The number of the first rule of this file less one: the rules of included files are
    /// numbered after those before them.
    pub(super) first_rule: usize,
}

impl<'a> Checker<'a> {
    pub(super) fn new(text: &'a str, source: &'a Path, env: &'a Env) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            text,
            source,
            env,
            line_starts,
            errors: Vec::new(),
            warnings: Vec::new(),
            services: None,
            base: 0,
            file: 0,
            first_rule: 0,
        }
    }

    pub(super) fn into_error(mut self) -> ConfigError {
        self.errors.sort_by_key(|(order, _)| *order);
        ConfigError::Invalid(self.errors.into_iter().map(|(_, d)| d).collect())
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(super) fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = offset.saturating_add(self.base).min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self
            .line_starts
            .get(line.wrapping_sub(1))
            .copied()
            .unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line.max(1), column + 1)
    }

    pub(super) fn diagnostic(&self, span: Option<Range<usize>>, message: String) -> Diagnostic {
        let (line, column) = match span {
            Some(span) => {
                let (line, column) = self.locate(span.start);
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        Diagnostic {
            file: self.source.to_path_buf(),
            line,
            column,
            message,
        }
    }

    pub(super) fn error(&mut self, span: Option<Range<usize>>, message: String) {
        let order = (span.as_ref().map_or(0, |s| s.start + self.base), 0);
        let diagnostic = self.diagnostic(span, message);
        self.errors.push((order, diagnostic));
    }

    pub(super) fn warn(&mut self, span: Range<usize>, message: String) {
        let order = (span.start + self.base, 0);
        let diagnostic = self.diagnostic(Some(span), message);
        self.warnings.push((order, diagnostic.to_string()));
    }

    /// Deserializes one table into `T`, reporting unknown keys (all of them, then dropping them
    /// so the remaining keys are still checked) and the first type error.
    ///
    /// `ctx` prefixes every message (`rule 2 ("ssh"): `), `table` names the table in
    /// unknown-key messages (`[daemon]`), `key_prefix` qualifies key names in type errors
    /// (`daemon.`). `reserved` are fields of `T` that are not advertised as expected keys.
    pub(super) fn table<T: DeserializeOwned>(
        &mut self,
        value: Spanned<DeValue<'_>>,
        ctx: &str,
        table: &str,
        key_prefix: &str,
        reserved: &[&str],
    ) -> Option<T> {
        let span = value.span();
        let mut entries = match value.into_inner() {
            DeValue::Table(entries) => entries,
            other => {
                self.error(
                    Some(span),
                    format!("{ctx}{table} must be a table, not {}", other.type_str()),
                );
                return None;
            }
        };
        let fields = fields_of::<T>();
        let unknown: Vec<(String, Range<usize>)> = entries
            .keys()
            .filter(|k| !fields.contains(&k.get_ref().as_ref()))
            .map(|k| (k.get_ref().to_string(), k.span()))
            .collect();
        if !unknown.is_empty() {
            let advertised: Vec<&str> = fields
                .iter()
                .copied()
                .filter(|f| !reserved.contains(f))
                .collect();
            for (key, key_span) in &unknown {
                self.error(
                    Some(key_span.clone()),
                    format!(
                        "{ctx}unknown key {key:?} in {table}; expected one of: {}",
                        one_of(&advertised)
                    ),
                );
                entries.remove(key.as_str());
            }
        }
        // Keys are mostly borrowed from the text: cloning them copies no string.
        let value_spans: Vec<(Cow<'_, str>, Range<usize>)> = entries
            .iter()
            .map(|(k, v)| (k.get_ref().clone(), v.span()))
            .collect();
        let deserializer =
            ValueDeserializer::from(Spanned::new(span.clone(), DeValue::Table(entries)));
        match T::deserialize(deserializer) {
            Ok(raw) => Some(raw),
            Err(e) => {
                let at = e.span().unwrap_or(span);
                let key = value_spans
                    .iter()
                    .find(|(_, v)| v.start <= at.start && at.start < v.end.max(v.start + 1))
                    .map(|(k, _)| format!("{key_prefix}{k}: "))
                    .unwrap_or_default();
                self.error(Some(at), format!("{ctx}{key}{}", e.message()));
                None
            }
        }
    }

    /// Resolves an enum-like string against its allowed values.
    pub(super) fn choice<T: Copy>(
        &mut self,
        value: &Spanned<String>,
        ctx: &str,
        key: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let written = value.get_ref().as_str();
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == written) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let hint = match written.to_ascii_lowercase().as_str() {
            "drop" | "deny" | "block" | "discard" if names.contains(&"stealth") => {
                r#" ("stealth" drops silently, "reject" answers)"#
            }
            "accept" | "pass" | "permit" if names.contains(&"allow") => r#" (use "allow")"#,
            "icmp6" | "icmpv6" | "ipv6-icmp" | "icmpv4" if names.contains(&"icmp") => {
                r#" ("icmp" covers ICMP and ICMPv6)"#
            }
            "both" | "all" | "*" if names.contains(&"any") => r#" (use "any")"#,
            "inbound" | "input" | "ingress" if names.contains(&"in") => r#" (use "in")"#,
            "outbound" | "output" | "egress" if names.contains(&"out") => r#" (use "out")"#,
            _ => "",
        };
        self.error(
            Some(value.span()),
            format!(
                "{ctx}invalid {key} {written:?}; expected one of: {}{hint}",
                one_of(&names)
            ),
        );
        None
    }
}
