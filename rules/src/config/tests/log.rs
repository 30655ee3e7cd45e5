//! `[log]` and a rule's `log`: values, defaults, positions, and which decisions are logged.

use super::*;

fn parse_text(text: &str) -> Ruleset {
    let t = test_env();
    match parse_with(text, Path::new("r.toml"), &t.env) {
        Ok(rs) => rs,
        Err(e) => panic!("should parse:\n{e}"),
    }
}

#[test]
fn log_values_are_checked_with_their_position() {
    let name = "log-invalid.toml";
    let err = expect(name, 3, 3, &[":3:10: log.denied", "expected a boolean"]);
    expect_more(
        &err,
        name,
        4,
        &[r#":4:1: unknown key "bogus" in [log]; expected one of: denied, rate, burst"#],
    );
    expect_more(&err, name, 8, &[":8:7: rule 1: log", "expected a boolean"]);
    let name = "log-out-of-range.toml";
    let err = expect(
        name,
        2,
        3,
        &[":3:8: log.rate = 0 is out of range (1-100000)"],
    );
    expect_more(
        &err,
        name,
        4,
        &[":4:9: log.burst = 1000000 is out of range (1-100000)"],
    );
}

#[test]
fn log_defaults_to_denials_at_50_per_second() {
    let rs = parse_text("[[rule]]\naction = \"allow\"\n");
    assert_eq!(rs.log, LogConfig::default());
    assert_eq!((rs.log.denied, rs.log.rate, rs.log.burst), (true, 50, 100));
    assert_eq!(rs.rules[0].log, None);
    let rs = parse_text("[log]\ndenied = false\nrate = 7\nburst = 9\n");
    assert_eq!(
        rs.log,
        LogConfig {
            denied: false,
            rate: 7,
            burst: 9
        }
    );
}

#[test]
fn which_decisions_are_logged() {
    let text = "\
[defaults]
inbound = \"reject\"
outbound = \"allow\"

[[rule]]
name = \"quiet reject\"
action = \"reject\"
port = 23
log = false

[[rule]]
name = \"stealth\"
action = \"stealth\"
port = 24

[[rule]]
name = \"allow, logged\"
action = \"allow\"
port = 22
log = true

[[rule]]
name = \"allow\"
action = \"allow\"
port = 80
";
    let rs = parse_text(text);
    let logs: Vec<bool> = rs.rules.iter().map(|r| rs.logs(r)).collect();
    assert_eq!(logs, [false, true, true, false]);
    assert!(rs.logs_default(Direction::In), "default reject is a denial");
    assert!(!rs.logs_default(Direction::Out), "default allow is not");
    assert!(rs.logs_invalid());

    // `denied = false`: only rules that ask.
    let rs = parse_text(&format!("[log]\ndenied = false\n{text}"));
    let logs: Vec<bool> = rs.rules.iter().map(|r| rs.logs(r)).collect();
    assert_eq!(logs, [false, false, true, false]);
    assert!(!rs.logs_default(Direction::In));
    assert!(!rs.logs_invalid());
}
