//! Markdown to man page (roff), for `rules.toml(5)`: its source is `packaging/rules.toml.5.md`,
//! which pulls in the README's reference of the file format with an include line, so the
//! reference is written once.
//!
//! Parsing is pulldown-cmark's (CommonMark plus tables); escaping is the `roff` crate's. Level-1
//! headings become sections (`.SH`), deeper ones subsections (`.SS`); `code` and **strong** are
//! bold, *emphasis* italic; lists, code blocks, block quotes and tables (through tbl) are
//! supported. A line `<!-- include FILE "HEADING" -->` is replaced by the section of FILE under
//! the level-2 heading HEADING (up to the next level-2 or level-1 heading), its `###` headings
//! becoming sections. What stands between `<!-- man: skip -->` and `<!-- /man -->` (whole blocks,
//! or within a paragraph) is left out: the README's measurements and the tests it cites as
//! evidence, which belong to readers of the source and would go stale in an installed page.

use std::path::Path;

use anyhow::{Context as _, bail};
use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};
use roff::{Inline, Roff, bold, italic, line_break, roman};

/// Brackets the width of a table's widest column in the rendered text, replaced afterwards by
/// a roff expression the `roff` crate would escape: the line length less the indent and what
/// the other columns take.
const WIDTH_MARK: &str = "\u{E000}";

/// Renders `source` (the man page's markdown) as a complete man page.
///
/// `name` and `section` make the title line; `base` is the directory include lines resolve
/// against.
pub fn man_page(
    source: &str,
    name: &str,
    section: &str,
    date: &str,
    footer: &str,
    base: &Path,
) -> anyhow::Result<String> {
    let mut r = Renderer::default();
    r.roff.control(
        "TH",
        [
            name.to_uppercase().as_str(),
            section,
            date,
            footer,
            "File Formats Manual",
        ],
    );
    r.render(source, 0, base)?;
    r.flush();
    // tbl(1) runs when the first line asks for it; preconv(1) reads the coding tag.
    let mut out = String::from("'\\\" t\n.\\\" -*- coding: UTF-8 -*-\n");
    let body = r.roff.render();
    let mut parts = body.split(WIDTH_MARK);
    out.push_str(parts.next().unwrap_or_default());
    while let (Some(taken), Some(rest)) = (parts.next(), parts.next()) {
        out.push_str(&format!("\\n(.lu-\\n(.iu-{taken}n"));
        out.push_str(rest);
    }
    Ok(out)
}

/// The text of the section of markdown `text` under the level-2 heading `heading` (without
/// the heading itself), up to the next heading of level 2 or 1.
pub fn section<'a>(text: &'a str, heading: &str) -> Option<&'a str> {
    let mut start = None;
    let mut in_heading: Option<(HeadingLevel, std::ops::Range<usize>, String)> = None;
    for (event, range) in Parser::new_ext(text, Options::ENABLE_TABLES).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                in_heading = Some((level, range, String::new()));
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some((_, _, s)) = &mut in_heading {
                    s.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                let Some((level, range, title)) = in_heading.take() else {
                    continue;
                };
                if level > HeadingLevel::H2 {
                    continue;
                }
                if let Some(s) = start {
                    return Some(&text[s..range.start]);
                }
                if level == HeadingLevel::H2 && title.trim() == heading {
                    start = Some(range.end);
                }
            }
            _ => {}
        }
    }
    start.map(|s| &text[s..])
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Font {
    Roman,
    Bold,
    Italic,
}

#[derive(Default)]
struct Renderer {
    roff: Roff,
    /// Inline text of the block being read.
    line: Vec<Inline>,
    bold: usize,
    italic: usize,
    /// Nesting of lists: the next number of each ordered one, `None` for bullets.
    lists: Vec<Option<u64>>,
    heading: Option<HeadingLevel>,
    code_block: bool,
    /// Just after a list item's marker: its first paragraph needs no paragraph macro.
    item_start: bool,
    link: Vec<String>,
    table: Option<Table>,
    /// Between `<!-- man: skip -->` and `<!-- /man -->`.
    skipping: bool,
}

const SKIP_START: &str = "<!-- man: skip -->";
const SKIP_END: &str = "<!-- /man -->";

#[derive(Default)]
struct Table {
    rows: Vec<Vec<Vec<Inline>>>,
    head_rows: usize,
}

impl Renderer {
    fn font(&self) -> Font {
        if self.bold > 0 {
            Font::Bold
        } else if self.italic > 0 {
            Font::Italic
        } else {
            Font::Roman
        }
    }

    fn push_text(&mut self, text: &str, font: Font) {
        self.item_start = false;
        let inline = match font {
            Font::Roman => roman(text),
            Font::Bold => bold(text),
            Font::Italic => italic(text),
        };
        match &mut self.table {
            Some(t) => {
                if let Some(cell) = t.rows.last_mut().and_then(|r| r.last_mut()) {
                    cell.push(inline);
                }
            }
            None => self.line.push(inline),
        }
    }

    /// Emits the pending inline text as one text line.
    fn flush(&mut self) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.roff.text(line);
        }
    }

    /// `shift` is added to heading levels (an included README section starts at `###`).
    fn render(&mut self, source: &str, shift: i32, base: &Path) -> anyhow::Result<()> {
        for event in Parser::new_ext(source, Options::ENABLE_TABLES) {
            if let Event::Html(html) | Event::InlineHtml(html) = &event {
                match html.trim() {
                    SKIP_START if self.skipping => bail!("{SKIP_START} inside another"),
                    SKIP_START => self.skipping = true,
                    SKIP_END if !self.skipping => bail!("{SKIP_END} without {SKIP_START}"),
                    SKIP_END => self.skipping = false,
                    _ => {}
                }
            }
            if self.skipping {
                continue;
            }
            match event {
                Event::Start(tag) => self.start(tag, shift),
                Event::End(tag) => self.end(tag),
                Event::Text(t) => {
                    if self.code_block {
                        for l in t.lines() {
                            self.roff.text([roman(l)]);
                        }
                    } else {
                        self.push_text(&t, self.font());
                    }
                }
                Event::Code(t) => self.push_text(&t, Font::Bold),
                Event::SoftBreak => self.push_text(" ", Font::Roman),
                Event::HardBreak => self.line.push(line_break()),
                Event::Html(html) | Event::InlineHtml(html) => self.html(&html, base)?,
                Event::Rule => {
                    self.flush();
                    self.roff.control("PP", []);
                }
                Event::InlineMath(t) | Event::DisplayMath(t) => self.push_text(&t, Font::Italic),
                Event::FootnoteReference(_) | Event::TaskListMarker(_) => {}
            }
        }
        if self.skipping {
            bail!("{SKIP_START} without {SKIP_END}");
        }
        Ok(())
    }

    fn start(&mut self, tag: Tag<'_>, shift: i32) {
        match tag {
            Tag::Paragraph => {
                self.flush();
                // The first paragraph of a list item goes on the item's own line.
                if self.item_start {
                    self.item_start = false;
                } else if self.lists.is_empty() {
                    self.roff.control("PP", []);
                } else {
                    self.roff.control("IP", ["", "4"]);
                }
            }
            Tag::Heading { level, .. } => {
                self.flush();
                let level = (level as i32 + shift).max(1);
                self.heading = Some(if level == 1 {
                    HeadingLevel::H1
                } else {
                    HeadingLevel::H2
                });
            }
            Tag::BlockQuote(_) => {
                self.flush();
                self.roff.control("RS", ["4"]);
            }
            Tag::CodeBlock(_) => {
                self.flush();
                if self.lists.is_empty() {
                    self.roff.control("PP", []);
                }
                self.roff.control("RS", ["4"]).control("nf", []);
                self.code_block = true;
            }
            Tag::List(first) => {
                self.flush();
                if !self.lists.is_empty() {
                    self.roff.control("RS", ["2"]);
                }
                self.lists.push(first);
            }
            Tag::Item => {
                self.flush();
                let marker = match self.lists.last_mut() {
                    Some(Some(n)) => {
                        let m = format!("{n}.");
                        *n += 1;
                        m
                    }
                    _ => "\\(bu".to_string(),
                };
                self.roff.control("IP", [marker.as_str(), "4"]);
                self.item_start = true;
            }
            Tag::Emphasis => self.italic += 1,
            Tag::Strong => self.bold += 1,
            Tag::Link { dest_url, .. } => self.link.push(dest_url.to_string()),
            Tag::Table(_) => {
                self.flush();
                self.table = Some(Table::default());
            }
            Tag::TableHead | Tag::TableRow => {
                if let Some(t) = &mut self.table {
                    t.rows.push(Vec::new());
                    if matches!(tag, Tag::TableHead) {
                        t.head_rows += 1;
                    }
                }
            }
            Tag::TableCell => {
                if let Some(t) = &mut self.table
                    && let Some(r) = t.rows.last_mut()
                {
                    r.push(Vec::new());
                }
            }
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph => self.flush(),
            TagEnd::Heading(_) => {
                let text: String = std::mem::take(&mut self.line)
                    .into_iter()
                    .map(|i| match i {
                        Inline::Roman(s) | Inline::Bold(s) | Inline::Italic(s) => s,
                        Inline::LineBreak => " ".into(),
                    })
                    .collect();
                match self.heading.take() {
                    Some(HeadingLevel::H1) => {
                        self.roff.control("SH", [text.to_uppercase().as_str()]);
                    }
                    _ => {
                        self.roff.control("SS", [text.as_str()]);
                    }
                }
            }
            TagEnd::BlockQuote(_) => {
                self.flush();
                self.roff.control("RE", []);
            }
            TagEnd::CodeBlock => {
                self.code_block = false;
                self.roff.control("fi", []).control("RE", []);
            }
            TagEnd::List(_) => {
                self.flush();
                self.lists.pop();
                if !self.lists.is_empty() {
                    self.roff.control("RE", []);
                }
            }
            TagEnd::Item => self.flush(),
            TagEnd::Emphasis => self.italic = self.italic.saturating_sub(1),
            TagEnd::Strong => self.bold = self.bold.saturating_sub(1),
            TagEnd::Link => {
                if let Some(url) = self.link.pop()
                    && (url.starts_with("http://") || url.starts_with("https://"))
                {
                    self.push_text(&format!(" <{url}>"), Font::Roman);
                }
            }
            TagEnd::Table => {
                if let Some(t) = self.table.take() {
                    self.table(t);
                }
            }
            _ => {}
        }
    }

    fn html(&mut self, html: &str, base: &Path) -> anyhow::Result<()> {
        let Some(rest) = html.trim().strip_prefix("<!-- include ") else {
            return Ok(());
        };
        let Some(spec) = rest.strip_suffix("-->") else {
            bail!("unterminated include line: {html}");
        };
        let spec = spec.trim();
        let Some((file, heading)) = spec.split_once(' ') else {
            bail!("include line needs a file and a quoted heading: {html}");
        };
        let heading = heading.trim().trim_matches('"');
        let path = base.join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let Some(body) = section(&text, heading) else {
            bail!(
                "{} has no \"## {heading}\" section (included by the rules.toml(5) source)",
                path.display()
            );
        };
        self.flush();
        // The section's own subsections (###) become sections of the page.
        self.render(body, -2, base)
    }

    /// tbl(1) table, boxed, header in bold. Columns up to 22 characters wide keep their
    /// width; wider ones wrap at 22 (or their longest word), except the widest, which takes
    /// what is left of the line.
    fn table(&mut self, t: Table) {
        const NARROW: usize = 22;
        let columns = t.rows.iter().map(Vec::len).max().unwrap_or(0);
        if columns == 0 {
            return;
        }
        let text_len = |cell: &Vec<Inline>| -> usize {
            cell.iter()
                .map(|i| match i {
                    Inline::Roman(s) | Inline::Bold(s) | Inline::Italic(s) => s.chars().count(),
                    Inline::LineBreak => 0,
                })
                .sum()
        };
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                t.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(text_len)
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let widest = (0..columns).max_by_key(|&c| widths[c]).unwrap_or(0);
        // A wrapped column is never narrower than its longest word (a counter name): tbl
        // cannot break a word, and warns.
        let longest_word = |c: usize| -> usize {
            t.rows
                .iter()
                .filter_map(|r| r.get(c))
                .flat_map(|cell| cell.iter())
                .flat_map(|i| match i {
                    Inline::Roman(s) | Inline::Bold(s) | Inline::Italic(s) => {
                        s.split_whitespace().map(|w| w.chars().count()).max()
                    }
                    Inline::LineBreak => None,
                })
                .max()
                .unwrap_or(0)
        };
        let wrap: Vec<usize> = (0..columns).map(|c| NARROW.max(longest_word(c))).collect();
        // What the other columns, the gaps (3n) and the box take from the line.
        let taken: usize = (0..columns)
            .filter(|&c| c != widest)
            .map(|c| widths[c].min(wrap[c]) + 3)
            .sum::<usize>()
            + 10;
        // Text blocks (T{ ... T}) wrap; plain cells do not.
        let block = |c: usize| c == widest || widths[c] > wrap[c];
        let spec = |c: usize, font: &str| {
            if c == widest {
                format!("l{font}w({WIDTH_MARK}{taken}{WIDTH_MARK})")
            } else if widths[c] > wrap[c] {
                format!("l{font}w({}n)", wrap[c])
            } else {
                format!("l{font}")
            }
        };
        let head: Vec<String> = (0..columns).map(|c| spec(c, "b")).collect();
        let body: Vec<String> = (0..columns).map(|c| spec(c, "")).collect();
        // Ragged right and no hyphenation: narrow columns cannot be justified.
        self.roff
            .control("PP", [])
            .control("na", [])
            .control("nh", [])
            .control("TS", []);
        let mut format = String::from("box;\n");
        if t.head_rows > 0 {
            format.push_str(&head.join(" "));
            format.push('\n');
        }
        format.push_str(&body.join(" "));
        format.push('.');
        self.roff.text([roman(format)]);
        for (i, row) in t.rows.into_iter().enumerate() {
            let mut line = Vec::new();
            for (j, cell) in row.into_iter().enumerate() {
                if j > 0 {
                    line.push(roman("\t"));
                }
                if block(j) {
                    line.push(roman("T{\n"));
                    line.extend(cell);
                    line.push(roman("\nT}"));
                } else {
                    line.extend(cell);
                }
            }
            self.roff.text(line);
            if i + 1 == t.head_rows {
                self.roff.text([roman("_")]);
            }
        }
        self.roff
            .control("TE", [])
            .control("ad", [])
            .control("hy", []);
    }
}
