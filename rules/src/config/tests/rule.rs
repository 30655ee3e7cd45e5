//! `[[rule]]`: the action, the direction, and the selectors `program`, `unit` and `user`.

use super::*;

#[test]
fn action_missing() {
    // Reported at the [[rule]] header.
    expect(
        "action-missing.toml",
        1,
        2,
        &[r#":2:1: rule 1 ("ssh"): missing "action"; expected one of: allow, reject, stealth"#],
    );
}

#[test]
fn program_unit_user_are_parsed_into_the_selector() {
    let t = test_env();
    let text = r#"
[[rule]]
name = "browser"
direction = "out"
program = "/usr/bin/firefox"
action = "allow"

[[rule]]
name = "web server unit"
unit = "nginx.service"
proto = "tcp"
port = 443
remote = "10.0.0.0/8"
action = "allow"

[[rule]]
name = "root by name"
user = "root"
action = "reject"

[[rule]]
name = "highest uid"
direction = "out"
proto = "udp"
user = 4294967294
action = "stealth"

[[rule]]
name = "all three"
program = "/opt/not-installed-yet/bin/server"
unit = "app@1.service"
user = 33
action = "allow"

[[rule]]
name = "everyone"
action = "allow"
"#;
    let rs = match parse_with(text, Path::new("r.toml"), &t.env) {
        Ok(rs) => rs,
        Err(e) => panic!("should parse:\n{e}"),
    };
    assert!(rs.warnings.is_empty(), "{:?}", rs.warnings);
    let selectors: Vec<&Selector> = rs.rules.iter().map(|r| &r.selector).collect();
    assert_eq!(
        selectors,
        [
            &Selector {
                program: Some("/usr/bin/firefox".into()),
                ..Selector::default()
            },
            &Selector {
                unit: Some("nginx.service".into()),
                ..Selector::default()
            },
            &Selector {
                user: Some(0),
                ..Selector::default()
            },
            &Selector {
                user: Some(4_294_967_294),
                ..Selector::default()
            },
            &Selector {
                program: Some("/opt/not-installed-yet/bin/server".into()),
                unit: Some("app@1.service".into()),
                user: Some(33),
            },
            &Selector::default(),
        ]
    );
    assert!(rs.rules[5].selector.is_everyone());
    // The other keys are unaffected by a selector.
    let web = &rs.rules[1];
    assert_eq!(web.index, 1);
    assert_eq!(web.proto, Proto::Tcp);
    assert_eq!(web.ports[..], [range(443, 443)]);
    assert_eq!(web.remote.as_deref(), Some(&[net("10.0.0.0/8")][..]));
    assert_eq!(web.origin.line, 8);
    assert_eq!(rs.rules[0].direction, Direction::Out);
    assert_eq!(rs.rules[0].proto, Proto::Any);
    assert_eq!(rs.rules[3].action, Action::Stealth);
}

#[test]
fn program_must_be_a_plain_absolute_path() {
    let text = r#"
[[rule]]
name = "relative"
program = "bin/firefox"
action = "allow"
[[rule]]
program = ""
action = "allow"
[[rule]]
program = "/usr/bin/"
action = "allow"
[[rule]]
program = "/usr/../bin/sh"
action = "allow"
[[rule]]
program = "/usr/./bin/sh"
action = "allow"
[[rule]]
program = "/usr/bin/a\u0000b"
action = "allow"
[[rule]]
program = 5
action = "allow"
"#;
    let err = invalid_text(text);
    assert_eq!(err.diagnostics().len(), 7, "{err}");
    expect_line(
        &err,
        "r.toml",
        4,
        &[
            r#"r.toml:4:11: rule 1 ("relative"): program must be an absolute path, not "bin/firefox"; expected the full path to the executable, such as "/usr/bin/firefox""#,
        ],
    );
    expect_line(
        &err,
        "r.toml",
        7,
        &[
            r#":7:11: rule 2: program is empty; expected an absolute path to an executable, such as "/usr/bin/firefox""#,
        ],
    );
    expect_line(
        &err,
        "r.toml",
        10,
        &[
            r#"rule 3: program "/usr/bin/" ends with '/'; expected the path of an executable file, not of a directory"#,
        ],
    );
    expect_line(
        &err,
        "r.toml",
        13,
        &[
            r#"rule 4: program "/usr/../bin/sh" has a "." or ".." component; write the path without them"#,
        ],
    );
    expect_line(
        &err,
        "r.toml",
        16,
        &[r#"rule 5: program "/usr/./bin/sh" has a "." or ".." component"#],
    );
    expect_line(
        &err,
        "r.toml",
        19,
        &[r#"rule 6: program "/usr/bin/a\0b" contains a NUL byte"#],
    );
    expect_line(
        &err,
        "r.toml",
        22,
        &[
            "rule 7: program: invalid type: integer `5`",
            r#"expected an absolute path to an executable ("/usr/bin/firefox")"#,
        ],
    );
}

#[test]
fn unit_must_be_a_unit_name() {
    let long = format!("{}.service", "a".repeat(248));
    let text = format!(
        r#"
[[rule]]
name = "no suffix"
unit = "nginx"
action = "allow"
[[rule]]
unit = "/system.slice/nginx.service"
action = "allow"
[[rule]]
unit = ".."
action = "allow"
[[rule]]
unit = "nginx.service2"
action = "allow"
[[rule]]
unit = ".service"
action = "allow"
[[rule]]
unit = ""
action = "allow"
[[rule]]
unit = "{long}"
action = "allow"
[[rule]]
unit = "{}.service"
action = "allow"
"#,
        "a".repeat(247)
    );
    assert_eq!(long.len(), 256);
    let err = invalid_text(&text);
    assert_eq!(err.diagnostics().len(), 7, "{err}");
    expect_line(
        &err,
        "r.toml",
        4,
        &[
            r#"r.toml:4:8: rule 1 ("no suffix"): unit "nginx" has no type suffix; write the full unit name, such as "nginx.service""#,
        ],
    );
    expect_line(
        &err,
        "r.toml",
        7,
        &[
            r#"rule 2: unit "/system.slice/nginx.service" contains '/'; expected a systemd unit name, not a path or cgroup, such as "nginx.service", "session-2.scope" or "user.slice""#,
        ],
    );
    expect_line(
        &err,
        "r.toml",
        10,
        &[
            r#"rule 3: invalid unit "..": expected a systemd unit name with its type suffix, such as "nginx.service""#,
        ],
    );
    expect_line(
        &err,
        "r.toml",
        13,
        &[r#"rule 4: invalid unit "nginx.service2""#],
    );
    expect_line(&err, "r.toml", 16, &[r#"rule 5: invalid unit ".service""#]);
    expect_line(
        &err,
        "r.toml",
        19,
        &[r#"rule 6: unit is empty; expected a systemd unit name, such as "nginx.service""#],
    );
    expect_line(
        &err,
        "r.toml",
        22,
        &["rule 7: unit name is 256 bytes long; systemd unit names are at most 255 bytes"],
    );
}

#[test]
fn user_must_exist_or_be_a_valid_uid() {
    let text = r#"
[[rule]]
name = "ghost"
user = "no-such-user-fw-test"
action = "allow"
[[rule]]
user = 4294967295
action = "allow"
[[rule]]
user = -1
action = "allow"
[[rule]]
user = 4294967296
action = "allow"
[[rule]]
user = "4000000"
action = "allow"
[[rule]]
user = ""
action = "allow"
[[rule]]
user = 1.5
action = "allow"
[[rule]]
user = 0
action = "allow"
"#;
    let err = invalid_text(text);
    assert_eq!(err.diagnostics().len(), 7, "{err}");
    expect_line(
        &err,
        "r.toml",
        4,
        &[
            r#"r.toml:4:8: rule 1 ("ghost"): user "no-such-user-fw-test" does not exist on this system; create it first, or give its numeric uid instead (user = 1000)"#,
        ],
    );
    expect_line(
        &err,
        "r.toml",
        7,
        &[
            "rule 2: user 4294967295 is not a valid uid (it is (uid_t) -1, reserved); a uid is 0-4294967294",
        ],
    );
    expect_line(
        &err,
        "r.toml",
        10,
        &["rule 3: user -1 is out of range; a uid is 0-4294967294"],
    );
    expect_line(
        &err,
        "r.toml",
        13,
        &["rule 4: user 4294967296 is out of range; a uid is 0-4294967294"],
    );
    expect_line(
        &err,
        "r.toml",
        16,
        &[
            r#"rule 5: user "4000000" does not exist; to give a uid, write it as a number without quotes: user = 4000000"#,
        ],
    );
    expect_line(
        &err,
        "r.toml",
        19,
        &[r#"rule 6: user is empty; expected a user name ("www-data") or a uid (33)"#],
    );
    expect_line(
        &err,
        "r.toml",
        22,
        &[
            "rule 7: user: invalid type: floating point `1.5`",
            r#"expected a user name ("www-data") or a uid (33)"#,
        ],
    );
}

#[test]
fn selectors_do_not_go_with_icmp() {
    let text = r#"
[[rule]]
name = "pinger"
proto = "icmp"
program = "/usr/bin/ping"
action = "allow"
[[rule]]
direction = "out"
proto = "icmp"
unit = "nginx.service"
user = 33
action = "allow"
[[rule]]
direction = "out"
proto = "icmp"
action = "allow"
[[rule]]
proto = "icmp"
port = 22
user = 0
action = "allow"
"#;
    let err = invalid_text(text);
    assert_eq!(err.diagnostics().len(), 5, "{err}");
    expect_line(
        &err,
        "r.toml",
        4,
        &[
            r#"r.toml:4:1: rule 1 ("pinger"): proto = "icmp" does not go with "program": rules about a program, unit or user are enforced on TCP and UDP sockets, and ICMP (ping, raw sockets) never passes there nor has a listening program; use proto = "tcp" or "udp", or leave proto out ("any" then means TCP and UDP) — the firewall never ignores a rule it cannot enforce"#,
        ],
    );
    // Outbound: the selector message, not the outbound ICMP one as well.
    let line = expect_line(
        &err,
        "r.toml",
        9,
        &[r#":9:1: rule 2: proto = "icmp" does not go with "unit" and "user": "#],
    );
    assert!(!line.contains("outbound"), "{line}");
    assert!(
        !err.to_string()
            .contains("r.toml:9:1: rule 2: outbound ICMP"),
        "{err}"
    );
    // Without a selector, outbound ICMP keeps its own message.
    expect_line(
        &err,
        "r.toml",
        15,
        &[r#":15:1: rule 3: outbound ICMP rules are not supported yet"#],
    );
    expect_line(
        &err,
        "r.toml",
        18,
        &[r#"rule 4: proto = "icmp" does not go with "user""#],
    );
    expect_line(
        &err,
        "r.toml",
        19,
        &["rule 4: ports only apply to tcp and udp"],
    );
}

#[test]
fn outbound_rules_are_validated_too() {
    let name = "outbound-rule-invalid.toml";
    let err = expect(
        name,
        3,
        6,
        &[r#"rule 1 ("dns out"): port 0 is out of range"#],
    );
    expect_more(&err, name, 7, &[r#"invalid address "10.0.0.256""#]);
    expect_more(
        &err,
        name,
        13,
        &[
            r#":13:1: rule 2 ("no pings out"): outbound ICMP rules are not supported yet"#,
            "never ignores a rule it cannot enforce",
        ],
    );
}
