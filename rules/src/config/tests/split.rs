//! Long files read in pieces (`split.rs`) against the whole document: the same rule set, or
//! the same messages at the same lines, for every fixture, example and generated document.

use proptest::prelude::*;

use super::*;
use crate::config::split::{split, split_chunks_of};

/// Both readings of `text`, as comparable text: the rule set's debug form or the messages.
/// `chunk_bytes` 1 cuts a chunk at every rule section.
fn both(text: &str, chunk_bytes: usize, max_rules: usize) -> (String, String) {
    let t = test_env();
    let path = Path::new("r.toml");
    let render = |r: Result<Ruleset, ConfigError>| match r {
        Ok(ruleset) => format!("{ruleset:#?}"),
        Err(e) => format!("error:\n{e}"),
    };
    let pieces = parse_chunked(
        text,
        path,
        &t.env,
        max_rules,
        split_chunks_of(text, chunk_bytes),
    );
    let whole = parse_whole(text, path, &t.env, max_rules);
    (render(pieces), render(whole))
}

#[track_caller]
fn same(text: &str, chunk_bytes: usize) {
    let (pieces, whole) = both(text, chunk_bytes, firewall_common::MAX_RULES as usize);
    assert_eq!(pieces, whole, "read in pieces vs whole, for:\n{text}");
}

#[test]
fn every_fixture_and_example_reads_the_same_in_pieces() {
    let mut files = Vec::new();
    for dir in ["valid", "invalid"] {
        for entry in fs::read_dir(fixture(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    for entry in fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")).unwrap() {
        files.push(entry.unwrap().path());
    }
    let mut cut = 0;
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        if split(&text).is_some() {
            cut += 1;
        }
        for chunk_bytes in [1, 1 << 16] {
            same(&text, chunk_bytes);
        }
    }
    // Most of them have rules: the comparison must have exercised the pieces.
    assert!(
        cut * 2 > files.len(),
        "{cut} of {} files were cut",
        files.len()
    );
}

#[test]
fn split_blanks_the_rule_sections_and_keeps_every_offset() {
    let text = "# root\n[defaults]\ninbound = \"stealth\"\n\n[[rule]]\naction = \"allow\"\n\
                [daemon]\ninterfaces = [\n  \"eth0\",\n]\n[[rule]] # ssh\nport = 22\n\
                action = \"allow\"\n[[rule]]\naction = \"reject\"\n";
    let s = split_chunks_of(text, 1 << 16).unwrap();
    assert_eq!(s.rules, 3);
    let first = text.find("[[rule]]").unwrap();
    let daemon = text.find("[daemon]").unwrap();
    let second = text.find("[[rule]] # ssh").unwrap();
    assert_eq!(s.chunks, vec![first..daemon, second..text.len()]);
    assert_eq!(s.rest.len(), text.len());
    assert_eq!(&s.rest[..first], &text[..first]);
    assert_eq!(&s.rest[daemon..second], &text[daemon..second]);
    assert!(s.rest[first..daemon].bytes().all(|b| b == b' '));
    assert!(s.rest[second..].bytes().all(|b| b == b' '));
    // One chunk per rule section when cut small.
    assert_eq!(split_chunks_of(text, 1).unwrap().chunks.len(), 3);
}

#[test]
fn split_gives_up_where_the_pieces_could_mean_something_else() {
    for text in [
        // Nothing to cut.
        "[defaults]\ninbound = \"allow\"\n",
        // Headers that name the rule array another way, or a table of a rule.
        "[[rule]]\naction = \"allow\"\n[rule.x]\na = 1\n",
        "[[ rule ]]\naction = \"allow\"\n",
        "[[\"rule\"]]\naction = \"allow\"\n[[rule]]\naction = \"allow\"\n",
        "[[rule]]\naction = \"allow\"\n[[rule.ports]]\na = 1\n",
        // Unbalanced brackets.
        "x = [\n[[rule]]\naction = \"allow\"\n",
        "x = ]\n[[rule]]\naction = \"allow\"\n",
    ] {
        assert_eq!(split(text), None, "{text}");
    }
    // Brackets in strings and comments are not headers.
    let text = "x = \"\"\"\n[[rule]]\n\"\"\"\n# [[rule]]\n[[rule]]\naction = \"allow\"\n";
    assert_eq!(split(text).unwrap().rules, 1);
}

#[test]
fn pieces_that_parse_alone_do_not_hide_a_broken_whole() {
    // Each would parse on its own if the `[[rule]]` line were cut out of the array; the whole
    // is invalid, and the message is the whole document's.
    for text in [
        "[defaults]\nx = [\n[[rule]]\naction = \"allow\"\n[1]\n]\n",
        "rule = 1\n[[rule]]\naction = \"allow\"\n",
        "[[rule]]\naction = \"allow\"\naction = \"reject\"\n[[rule]]\naction = \"allow\"\n",
        "[[rule]]\naction = \"allow\"\n[daemon]\n[daemon]\n[[rule]]\naction = \"allow\"\n",
        "[[rule]]\naction = \"allow\"\nport = 22 23\n",
        "[rule]\naction = \"allow\"\n[[rule]]\naction = \"allow\"\n",
    ] {
        let (pieces, whole) = both(text, 1, firewall_common::MAX_RULES as usize);
        assert!(whole.starts_with("error:"), "{text}\n{whole}");
        assert_eq!(pieces, whole, "{text}");
    }
}

#[test]
fn messages_from_later_chunks_point_at_their_lines() {
    // 3,000 rules (several 64 KiB chunks) with problems in the first and the last, a
    // duplicate name between chunks, and a CRLF and non-ASCII comment on the way.
    let mut text = String::from("[defaults]\r\ninbound = \"allow\"\r\n");
    let mut lines = Vec::new();
    for i in 0..3000 {
        let port = if i == 0 || i == 2999 { 70000 } else { 1000 + i };
        let name = if i == 2500 {
            "r1".to_owned()
        } else {
            format!("r{i}")
        };
        text.push_str(&format!(
            "# règle {i}\n[[rule]]\nname = \"{name}\"\nproto = \"tcp\"\nport = {port}\naction = \"allow\"\n"
        ));
        if port == 70000 {
            lines.push(text.lines().count() - 1);
        }
    }
    assert!(split(&text).unwrap().chunks.len() > 2);
    let (pieces, whole) = both(&text, 1 << 16, firewall_common::MAX_RULES as usize);
    assert_eq!(pieces, whole);
    for line in lines {
        assert!(
            pieces.contains(&format!("r.toml:{line}:")),
            "{line}: {pieces}"
        );
    }
    // Valid, with the duplicate name's warning pointing into a later chunk.
    let valid = text.replace("port = 70000", "port = 7");
    let (pieces, whole) = both(&valid, 1 << 16, firewall_common::MAX_RULES as usize);
    assert_eq!(pieces, whole);
    assert!(pieces.contains("same name as rule 2"), "{pieces}");
    // Too many rules: the same message from both.
    let (pieces, whole) = both(&valid, 1 << 16, 2000);
    assert!(pieces.contains("too many rules"), "{pieces}");
    assert_eq!(pieces, whole);
}

/// Pieces of documents, valid and not, that the generated documents are made of.
const FRAGMENTS: &[&str] = &[
    "[[rule]]\naction = \"allow\"\n",
    "[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\nport = [22, \"ssh\"]\nremote = \"@lan\"\naction = \"allow\"\n",
    "[[rule]] # comment [x]\nproto = \"udp\"\nport = \"1000-2000\"\naction = \"reject\"\n",
    "[[rule]]\nremote = [\n  \"10.0.0.0/8\",\n  \"::ffff:10.0.0.1\",\n]\naction = \"stealth\"\n",
    "[[rule]]\nremote = { bad = 1 }\naction = \"allow\"\n",
    "[[rule]]\nport = 0\naction = \"allow\"\nbogus = 1\n",
    "[[rule]]\naction = \"allow\"\naction = \"allow\"\n",
    "[[rule]]\nname = \"\"\"\n[[rule]]\n\"\"\"\naction = \"allow\"\n",
    "[[rule]]\r\naction = \"allow\"\r\n",
    "[[rule]]\naction = \"allow\"\nlog = true\n",
    "[[rule]]\ndirection = \"out\"\nprogram = \"/usr/bin/curl\"\naction = \"reject\"\n",
    "[[rule]]\naction = \n",
    "[[rule]]\n",
    "[sets]\nlan = [\"192.168.0.0/16\", \"fe80::/10\"]\n",
    "[sets]\nblock = { file = \"blocklist.txt\" }\n",
    "[daemon]\ninterfaces = [\"eth0\"]\n",
    "[defaults]\ninbound = \"stealth\"\n",
    "[conntrack]\nmax_entries = 4096\n",
    "[conntrack.timeouts]\ntcp_established = \"1h\"\n",
    "[log]\nrate = 5\n",
    "[[assert]]\ninbound = \"tcp 22\"\nfrom = \"10.0.0.1\"\nexpect = \"allow\"\n",
    "# [[rule]]\n",
    "x = [\n",
    "]\n",
    "[rule]\n",
    "rule = []\n",
    "[rule.x]\n",
    "[[rule.x]]\n",
    "\n",
    "  ",
    "[x]\n",
    "y = '''\n[[rule]]\n'''\n",
    "z = { a = [\n1,\n] }\n",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn generated_documents_read_the_same_in_pieces(
        parts in proptest::collection::vec(0..FRAGMENTS.len(), 0..14),
        chunk_bytes in prop_oneof![Just(1usize), Just(80), Just(1 << 16)],
    ) {
        let text: String = parts.iter().map(|&i| FRAGMENTS[i]).collect();
        let (pieces, whole) = both(&text, chunk_bytes, 4);
        prop_assert_eq!(pieces, whole, "for:\n{}", text);
    }
}
