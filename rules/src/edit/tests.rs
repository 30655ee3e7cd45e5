use std::path::Path;

use super::*;
use crate::config;

const FILE: &str = r#"# Rules of web1. Keep the ssh rule first.
[defaults]
inbound = "stealth"   # nothing unless a rule says so

[sets]
lan = ["192.168.0.0/16"]

# ssh, from the lan only
[[rule]]
name = "ssh"
proto = "tcp"
port = 22
remote = "@lan"
action = "allow"

# the web server
[[rule]]
name = "web"
proto = "tcp"
port = [80, 443]
action = "allow"

[[assert]]
in = "tcp 22"
from = "192.168.1.0/24"
expect = "allow"
"#;

fn rule(name: &str, port: &str) -> NewRule {
    NewRule {
        name: Some(name.into()),
        direction: Some(Direction::In),
        proto: Some("tcp".into()),
        ports: vec![port.into()],
        action: Some(Action::Allow),
        ..NewRule::default()
    }
}

fn names(text: &str) -> Vec<String> {
    config::parse(text, Path::new("t.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .rules
        .iter()
        .map(|r| r.name.to_string())
        .collect()
}

#[test]
fn add_appends_after_the_last_rule_and_keeps_every_other_byte() {
    let out = add(FILE, &rule("imap", "993"), None).expect("add");
    assert_eq!(names(&out), ["ssh", "web", "imap"]);
    let at = out.find("[[rule]]\nname = \"imap\"").expect("the new rule");
    // Before the assertion, and the file around it unchanged.
    assert!(at < out.find("[[assert]]").expect("assert"), "{out}");
    let added = "\n[[rule]]\nname = \"imap\"\ndirection = \"in\"\nproto = \"tcp\"\nport = 993\n\
                 action = \"allow\"\n";
    assert_eq!(out.replacen(added, "", 1), FILE, "{out}");
}

#[test]
fn insert_puts_the_rule_in_front_of_another_and_its_comment() {
    let out = add(FILE, &rule("first", "2222"), Some(1)).expect("insert");
    assert_eq!(names(&out), ["first", "ssh", "web"]);
    // The ssh rule keeps its comment, right above it.
    assert!(
        out.contains("# ssh, from the lan only\n[[rule]]\nname = \"ssh\""),
        "{out}"
    );
    assert!(
        out.find("name = \"first\"") < out.find("# ssh, from the lan only"),
        "{out}"
    );
    let out = add(FILE, &rule("second", "2222"), Some(2)).expect("insert");
    assert_eq!(names(&out), ["ssh", "second", "web"]);
    assert!(
        out.contains("# the web server\n[[rule]]\nname = \"web\""),
        "{out}"
    );
    // Past the end: appended.
    let out = add(FILE, &rule("last", "2222"), Some(9)).expect("insert");
    assert_eq!(names(&out), ["ssh", "web", "last"]);
    assert_eq!(
        add(FILE, &rule("x", "1"), Some(0)),
        Err(EditError::ZeroPosition)
    );
}

#[test]
fn delete_removes_the_rule_with_its_comment_only() {
    let (out, number, removed) = delete(FILE, &Which::Name("ssh".into())).expect("delete");
    assert_eq!((names(&out), number), (vec!["web".to_string()], 1));
    assert!(
        removed.starts_with("# ssh, from the lan only\n[[rule]]"),
        "{removed}"
    );
    assert!(!out.contains("ssh, from the lan"), "{out}");
    for kept in [
        "# Rules of web1",
        "# nothing unless",
        "# the web server",
        "[[assert]]",
    ] {
        assert!(out.contains(kept), "{kept:?} lost:\n{out}");
    }
    let (out, number, _) = delete(FILE, &Which::Number(2)).expect("delete");
    assert_eq!((names(&out), number), (vec!["ssh".to_string()], 2));
    assert_eq!(
        delete(FILE, &Which::Number(3)),
        Err(EditError::NoSuchNumber(3, 2))
    );
    assert_eq!(
        delete(FILE, &Which::Name("nope".into())),
        Err(EditError::NoSuchName("nope".into()))
    );
}

#[test]
fn names_must_be_unique_to_be_given() {
    assert_eq!(
        add(FILE, &rule("web", "8080"), None),
        Err(EditError::DuplicateName(2, "web".into()))
    );
    let twice = format!("{FILE}\n[[rule]]\nname = \"web\"\naction = \"stealth\"\n");
    assert!(matches!(
        delete(&twice, &Which::Name("web".into())),
        Err(EditError::AmbiguousName { count: 2, .. })
    ));
}

#[test]
fn values_are_written_as_the_file_would_have_them() {
    let r = NewRule {
        direction: Some(Direction::Out),
        proto: Some("tcp".into()),
        ports: vec!["25".into(), "smtp".into(), "8000-8100".into()],
        remote: vec!["@lan".into(), "2001:db8::/32".into()],
        user: Some("33".into()),
        unit: Some("postfix.service".into()),
        action: Some(Action::Reject),
        log: Some(true),
        ..NewRule::default()
    };
    assert_eq!(
        render(&r),
        "[[rule]]\ndirection = \"out\"\nproto = \"tcp\"\nport = [25, \"smtp\", \"8000-8100\"]\n\
         remote = [\"@lan\", \"2001:db8::/32\"]\nunit = \"postfix.service\"\nuser = 33\n\
         action = \"reject\"\nlog = true\n"
    );
    let out = add("", &r, None).expect("add");
    let rs = config::parse(&out, Path::new("t.toml"));
    // "@lan" is not defined in an empty file: the parser, not this module, says so.
    let err = rs.expect_err("unknown set").to_string();
    assert!(err.contains("lan"), "{err}");
}

#[test]
fn a_file_that_does_not_parse_or_has_inline_rules_is_not_edited() {
    assert!(matches!(
        add("[[rule]\n", &rule("a", "1"), None),
        Err(EditError::Syntax(_))
    ));
    assert_eq!(
        add("rule = [{ action = \"allow\" }]\n", &rule("a", "1"), None),
        Err(EditError::NotTables)
    );
}

#[test]
fn rule_numbers_and_names_on_the_command_line() {
    assert_eq!(Which::parse("3"), Which::Number(3));
    assert_eq!(Which::parse("ssh"), Which::Name("ssh".into()));
    assert_eq!(Which::parse("3a"), Which::Name("3a".into()));
    assert_eq!(Which::parse("+3"), Which::Name("+3".into()));
}

/// On every example and fixture that parses: adding a rule and deleting it again gives back
/// the file byte for byte, and the rule added is the last one the parser reads.
#[test]
fn add_then_delete_is_the_identity_on_every_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for dir in ["examples", "tests/fixtures/valid"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let Ok(before) = config::parse(&text, &path) else {
                continue;
            };
            let r = rule("added-by-the-test", "4711");
            let out = add(&text, &r, None).expect("add");
            let after = config::parse(&out, &path).unwrap_or_else(|e| panic!("{e}\n{out}"));
            assert_eq!(
                after.rules.len(),
                before.rules.len() + 1,
                "{}",
                path.display()
            );
            assert_eq!(
                after.rules.last().map(|r| r.name.as_str()),
                Some("added-by-the-test")
            );
            let (back, number, _) =
                delete(&out, &Which::Name("added-by-the-test".into())).expect("delete");
            assert_eq!(number, after.rules.len());
            assert_eq!(back, text, "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 3, "only {seen} example files parsed");
}
