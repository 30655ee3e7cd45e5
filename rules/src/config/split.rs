//! Long rules files read a chunk of `[[rule]]` sections at a time.
//!
//! toml's spanned tree of a whole document costs about 2.6 KiB per rule at its peak (the token
//! vector, the parser's event vector and a B-tree node per table, all alive at once): 262 MiB
//! to read 100,000 rules. A rule section can only define its own element of the `rule` array,
//! so the document is cut into the `[[rule]]` sections and the rest: each run of rule sections
//! (up to [`CHUNK_BYTES`]) is parsed on its own when its rules are checked, and the rest is
//! parsed from a copy of the file with the rule sections blanked, the same length so that every
//! span still points into the file.
//!
//! The cut is found with toml's own lexer (strings and comments are single tokens, so a `[` in
//! one is never taken for a table): a section starts at a `[` first on its line outside any
//! array or inline table. A rule section is one whose header is exactly `[[rule]]`; that
//! sequence of tokens cannot appear inside a value of a valid document, since a bare `rule` is
//! no value. Whenever the pieces might not mean what the whole does, [`split`] gives up and the
//! whole document is parsed as before: a header other than `[[rule]]` that mentions `rule`
//! (`[rule.x]`, `[[ rule ]]`, `["rule"]`), unbalanced brackets, no rule section at all; and the
//! caller starts over with the whole document when any piece has a syntax error or the rest
//! defines `rule` too, so every message stays the one the whole document gives.

use std::ops::Range;

use toml_parser::{Source, lexer::TokenKind};

/// The most text of rule sections parsed at once (a section longer than this is one chunk).
/// At ~75 bytes a rule, ~900 rules: a few hundred KiB of parser memory, well inside the cache
/// of the allocator's free lists, so the next chunk reuses it.
const CHUNK_BYTES: usize = 64 << 10;

/// The tokens of a rule section's header.
const RULE_HEADER: [&str; 5] = ["[", "[", "rule", "]", "]"];

/// A rules document cut into its rule sections and the rest.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Split {
    /// The document with every rule section replaced by spaces.
    pub(super) rest: String,
    /// Byte ranges of the file, each one or more consecutive rule sections, in file order.
    pub(super) chunks: Vec<Range<usize>>,
    /// How many rule sections there are.
    pub(super) rules: usize,
}

/// Cuts `text` into rule sections and the rest, or `None` if it has no rule section or cannot
/// be cut safely (see the module comment).
pub(super) fn split(text: &str) -> Option<Split> {
    split_chunks_of(text, CHUNK_BYTES)
}

/// [`split`] with runs of rule sections cut at `chunk_bytes` (tests cut at every section).
pub(super) fn split_chunks_of(text: &str, chunk_bytes: usize) -> Option<Split> {
    // Start offsets of every section after the root table, and whether it is a rule section.
    let mut headers: Vec<(usize, bool)> = Vec::new();
    let mut depth = 0usize;
    let mut line_start = true;
    let mut tokens = Source::new(text).lex();
    while let Some(token) = tokens.next() {
        let kind = token.kind();
        match kind {
            TokenKind::Eof => break,
            TokenKind::Newline => line_start = true,
            TokenKind::Whitespace => {}
            TokenKind::LeftSquareBracket if line_start && depth == 0 => {
                let start = token.span().start();
                let mut end = text.len();
                // How many of the header's tokens were seen, and whether all are RULE_HEADER's.
                let (mut seen, mut exact) = (1, true);
                for token in tokens.by_ref() {
                    let span = token.span();
                    match token.kind() {
                        TokenKind::Newline | TokenKind::Eof => {
                            end = span.start();
                            break;
                        }
                        // Trailing whitespace and comment are not part of the header.
                        TokenKind::Whitespace | TokenKind::Comment if seen >= RULE_HEADER.len() => {
                        }
                        _ => {
                            let written = text.get(span.start()..span.end())?;
                            exact &= RULE_HEADER.get(seen) == Some(&written);
                            seen += 1;
                        }
                    }
                }
                let rule = exact && seen == RULE_HEADER.len();
                if !rule && text.get(start..end)?.contains("rule") {
                    return None;
                }
                headers.push((start, rule));
                line_start = true;
            }
            TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => {
                depth += 1;
                line_start = false;
            }
            TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                depth = depth.checked_sub(1)?;
                line_start = false;
            }
            _ => line_start = false,
        }
    }
    if depth != 0 {
        return None;
    }

    let mut chunks: Vec<Range<usize>> = Vec::new();
    let mut rules = 0;
    for (i, &(start, rule)) in headers.iter().enumerate() {
        if !rule {
            continue;
        }
        rules += 1;
        let end = headers.get(i + 1).map_or(text.len(), |&(next, _)| next);
        match chunks.last_mut() {
            Some(last) if last.end == start && last.len() < chunk_bytes => last.end = end,
            _ => chunks.push(start..end),
        }
    }
    if chunks.is_empty() {
        return None;
    }
    let mut rest = text.as_bytes().to_vec();
    for chunk in &chunks {
        rest.get_mut(chunk.clone())?.fill(b' ');
    }
    // Chunks start and end at a `[` or the end, so the blanked text is still UTF-8.
    let rest = String::from_utf8(rest).ok()?;
    Some(Split {
        rest,
        chunks,
        rules,
    })
}
