//! The file as a whole: syntax errors, unknown keys and wrong types everywhere, how a message
//! looks and where it points, files refused before parsing, and the valid files (every key,
//! none, the shipped examples).

use super::*;

#[test]
fn syntax_error_has_position() {
    let err = expect("syntax-error.toml", 1, 6, &["TOML syntax error"]);
    let line = expect_more(&err, "syntax-error.toml", 6, &[":6:10:"]);
    assert!(!line.contains('\n'));
}

#[test]
fn unknown_keys_everywhere_all_reported() {
    let name = "unknown-keys.toml";
    let err = expect(
        name,
        8,
        4,
        &[
            r#":4:1: unknown key "interfaces2" in [daemon]; expected one of: interfaces, xdp_mode, control_socket, control_group, pin_dir, state_dir, on_stop, cgroup"#,
        ],
    );
    expect_more(
        &err,
        name,
        7,
        &[
            r#"unknown key "inbund" in [defaults]"#,
            "inbound, outbound, fragments",
        ],
    );
    expect_more(
        &err,
        name,
        10,
        &[
            r#"unknown key "rate" in [reject]"#,
            "rate_per_sec, burst, global_rate_per_sec",
        ],
    );
    expect_more(
        &err,
        name,
        13,
        &[
            r#"set "blocklist""#,
            r#"unknown key "format""#,
            "expected one of: file",
        ],
    );
    // The selectors (program, unit, user) are regular keys, advertised like the others.
    expect_more(
        &err,
        name,
        17,
        &[
            r#"rule 1 ("ssh"): unknown key "prot" in [[rule]]; expected one of: name, direction, proto, port, remote, action, program, unit, user, log"#,
        ],
    );
    expect_more(
        &err,
        name,
        20,
        &[
            r#"unknown top-level key "logging""#,
            "daemon, defaults, reject, conntrack, log, sets, rule",
        ],
    );
    expect_more(
        &err,
        name,
        24,
        &[
            r#":24:1: unknown key "table" in [conntrack]; expected one of: table_size, unconfirmed_size, invalid, gc_interval, record_owner, timeouts"#,
        ],
    );
    expect_more(
        &err,
        name,
        27,
        &[
            r#":27:1: unknown key "tcp_establised" in [conntrack.timeouts]; expected one of: tcp_syn_sent, tcp_syn_recv, tcp_established, tcp_fin_wait, tcp_close_wait, tcp_last_ack, tcp_time_wait, tcp_close, udp_unreplied, udp_replied, icmp"#,
        ],
    );
    // One line per problem, in file order.
    let lines: Vec<usize> = err.diagnostics().iter().map(|d| d.line.unwrap()).collect();
    assert_eq!(lines, [4, 7, 10, 13, 17, 20, 24, 27]);
}

#[test]
fn wrong_types() {
    let name = "wrong-types.toml";
    let err = expect(
        name,
        4,
        4,
        &[
            "reject.rate_per_sec:",
            "invalid type",
            "string",
            "an integer",
        ],
    );
    expect_more(
        &err,
        name,
        8,
        &[r#"rule 1 ("web"): port:"#, "boolean", "a port (22)"],
    );
    // The name is the broken value, so the rule is identified by number only.
    expect_more(&err, name, 12, &["rule 2: name:", "integer", "a string"]);
    expect_more(
        &err,
        name,
        16,
        &[
            ":16:8: conntrack.timeouts.icmp:",
            "floating point",
            r#"a duration: seconds (120) or a string such as "30s""#,
        ],
    );
}

#[test]
fn invalid_enum_values_list_the_allowed_ones() {
    let name = "invalid-enums.toml";
    let err = expect(
        name,
        6,
        3,
        &[r#"invalid daemon.xdp_mode "fast"; expected one of: auto, native, generic"#],
    );
    expect_more(
        &err,
        name,
        6,
        &[
            r#"invalid defaults.inbound "drop"; expected one of: allow, reject, stealth"#,
            "stealth",
        ],
    );
    expect_more(
        &err,
        name,
        7,
        &[r#"invalid defaults.fragments "reject"; expected one of: allow, stealth"#],
    );
    expect_more(
        &err,
        name,
        11,
        &[r#"rule 1 ("odd"): invalid direction "inbound"; expected one of: in, out"#],
    );
    expect_more(
        &err,
        name,
        12,
        &[
            r#"invalid proto "icmpv6"; expected one of: tcp, udp, icmp, any"#,
            "ICMPv6",
        ],
    );
    expect_more(
        &err,
        name,
        13,
        &[r#"invalid action "deny"; expected one of: allow, reject, stealth"#],
    );
}

#[test]
fn too_many_rules() {
    let err = invalid_limited("too-many-rules.toml", 2);
    let file = fixture("invalid/too-many-rules.toml").display().to_string();
    expect_line(&err, &file, 8, &["too many rules", "has 3", "at most 2"]);
    assert_eq!(err.diagnostics().len(), 1);
    // The real limit is the kernel's.
    assert!(
        parse_fixture_limited(
            "invalid/too-many-rules.toml",
            firewall_common::MAX_RULES as usize
        )
        .is_ok()
    );
}

#[test]
fn rule_as_single_table() {
    expect("rule-as-table.toml", 1, 2, &["[[rule]]", "not [rule]"]);
}

#[test]
fn unreadable_rules_file() {
    let t = test_env();
    let path = t.dir.path().join("missing.toml");
    let err = load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("{}: cannot read: ", path.display())),
        "{message}"
    );
    assert!(err.diagnostics().is_empty());
}

#[test]
fn error_display_is_file_line_col_message() {
    let d = Diagnostic {
        file: PathBuf::from("rules.toml"),
        line: Some(14),
        column: Some(8),
        message: "boom".into(),
    };
    assert_eq!(d.to_string(), "rules.toml:14:8: boom");
    let d = Diagnostic {
        line: None,
        column: None,
        ..d
    };
    assert_eq!(d.to_string(), "rules.toml: boom");
}

#[test]
fn columns_count_characters() {
    let text = "[[rule]]\nname = \"é\"\nport = 0\naction = \"allow\"\n# ü\n[[rule]]\nremote = [\"ü\", \"300.1.1.1\"]\naction = \"allow\"\n";
    let err = parse_with(text, Path::new("r.toml"), &test_env().env).unwrap_err();
    let lines: Vec<String> = err.diagnostics().iter().map(ToString::to_string).collect();
    assert!(
        lines[0].starts_with("r.toml:3:8: rule 1 (\"é\"): port 0"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("r.toml:7:11: rule 2: \"ü\": names are written in their ASCII form"),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with("r.toml:7:16: rule 2: invalid address \"300.1.1.1\""),
        "{lines:?}"
    );
}

#[test]
fn full_example_every_key() {
    let t = test_env();
    let path = fixture("valid/full.toml");
    let text = fs::read_to_string(&path).unwrap();
    let rs = parse_with(&text, &path, &t.env).unwrap();

    assert_eq!(rs.source, path);
    assert_eq!(
        rs.daemon,
        DaemonConfig {
            interfaces: Interfaces::List(vec!["eth0".into(), "wlan0".into()]),
            xdp_mode: XdpMode::Generic,
            control_socket: PathBuf::from("/run/fw/ctl.sock"),
            control_group: Some("netadmin".into()),
            pin_dir: PathBuf::from("/sys/fs/bpf/fw"),
            state_dir: PathBuf::from("/var/lib/fw"),
            on_stop: OnStop::Detach,
            cgroup: Some(PathBuf::from("/sys/fs/cgroup/firewall")),
        }
    );
    assert_eq!(
        rs.defaults,
        Defaults {
            inbound: Action::Reject,
            outbound: Action::Stealth,
            fragments: FragmentPolicy::Stealth,
        }
    );
    assert_eq!(
        rs.reject,
        RejectLimits {
            rate_per_sec: 50,
            burst: 75,
            global_rate_per_sec: 500,
        }
    );
    assert_eq!(
        rs.conntrack,
        Conntrack {
            table_size: 1_048_576,
            unconfirmed_size: 131_072,
            invalid: InvalidPolicy::Reject,
            gc_interval_secs: 90,
            record_owner: false,
            timeouts: CtTimeouts {
                tcp_syn_sent: 60,
                tcp_syn_recv: 45,
                tcp_established: 7 * 86_400,
                tcp_fin_wait: 90,
                tcp_close_wait: 120,
                tcp_last_ack: 20,
                tcp_time_wait: 5400,
                tcp_close: 5,
                udp_unreplied: 86_400,
                udp_replied: 300,
                icmp: 120,
            },
        }
    );

    let blocklist = vec![
        net("198.51.100.0/24"),
        net("203.0.113.99/32"),
        net("2001:db8:bad::/48"),
    ];
    let trusted = vec![
        net("192.168.0.0/16"),
        net("203.0.113.7/32"),
        net("fd00::/8"),
    ];
    assert_eq!(rs.sets.get("blocklist"), Some(&blocklist));
    assert_eq!(rs.sets.get("trusted"), Some(&trusted));
    // Unused sets are expanded too.
    assert_eq!(rs.sets.get("unused"), Some(&vec![net("198.51.100.1/32")]));
    assert_eq!(rs.sets.len(), 3);

    assert_eq!(rs.rules.len(), 6);
    for (i, rule) in rs.rules.iter().enumerate() {
        assert_eq!(rule.index as usize, i);
    }
    let ssh = &rs.rules[0];
    assert_eq!(ssh.name, "ssh from trusted");
    assert_eq!(ssh.direction, Direction::In);
    assert_eq!(ssh.proto, Proto::Tcp);
    assert_eq!(ssh.ports[..], [range(22, 22)]);
    let mut expected = trusted.clone();
    expected.push(net("2001:db8::1/128"));
    expected.sort();
    assert_eq!(ssh.remote.as_deref(), Some(&expected[..]));
    assert_eq!(ssh.remote_spec[..], ["@trusted", "2001:db8::1"]);
    assert_eq!(ssh.action, Action::Allow);
    assert_eq!(ssh.origin.line, 46);

    let web = &rs.rules[1];
    assert_eq!(
        web.ports[..],
        [range(80, 80), range(443, 443), range(8000, 8100)]
    );
    assert_eq!(web.remote, None);
    assert!(web.remote_spec.is_empty());

    // "auth" resolves through an alias line; "ident" would too.
    assert_eq!(rs.rules[2].ports[..], [range(113, 113)]);
    assert_eq!(rs.rules[2].action, Action::Reject);

    let icmp = &rs.rules[3];
    assert_eq!(icmp.name, "rule 4");
    assert_eq!(icmp.proto, Proto::Icmp);
    assert!(icmp.ports.is_empty());

    let dns = &rs.rules[4];
    assert_eq!(dns.proto, Proto::Any);
    assert_eq!(dns.ports[..], [range(53, 53)]);
    assert_eq!(dns.remote.as_deref(), Some(&blocklist[..]));
    assert_eq!(dns.action, Action::Stealth);

    let out = &rs.rules[5];
    assert_eq!(out.direction, Direction::Out);
    assert_eq!(out.ports[..], [range(25, 25)]);
    assert_eq!(out.origin.line, 77);

    assert!(rs.warnings.is_empty(), "{:?}", rs.warnings);
    assert_eq!(rs.inbound().count(), 5);
}

#[test]
fn minimal_and_empty_files_use_defaults() {
    let rs = valid("minimal.toml");
    assert_eq!(rs.daemon, DaemonConfig::default());
    assert_eq!(rs.defaults, Defaults::default());
    assert_eq!(rs.reject, RejectLimits::default());
    assert_eq!(rs.conntrack, Conntrack::default());
    assert_eq!(rs.log, LogConfig::default());
    assert!(rs.sets.is_empty());
    assert_eq!(
        rs.rules,
        [Rule {
            index: 0,
            name: "rule 1".into(),
            direction: Direction::In,
            proto: Proto::Any,
            ports: Default::default(),
            remote: None,
            names: Vec::new(),
            remote_spec: Default::default(),
            selector: Default::default(),
            action: Action::Allow,
            log: None,
            origin: Origin {
                line: 2,
                column: 1,
                file: 0,
            },
        }]
    );
    let rs = valid("empty.toml");
    assert!(rs.rules.is_empty());
    assert_eq!(rs.daemon.interfaces, Interfaces::Auto);
    assert!(rs.warnings.is_empty());
}

#[test]
fn a_rules_file_that_is_not_a_regular_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("rules.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = load(&fifo).unwrap_err().to_string();
    assert!(err.contains("a FIFO, not a regular file"), "{err}");
    assert!(load(Path::new("/dev/zero")).is_err());
}

#[test]
fn field_lists_come_from_serde() {
    assert_eq!(
        fields_of::<RawReject>(),
        ["rate_per_sec", "burst", "global_rate_per_sec"]
    );
    assert_eq!(
        fields_of::<RawConntrack>(),
        [
            "table_size",
            "unconfirmed_size",
            "invalid",
            "gc_interval",
            "record_owner",
            "timeouts"
        ]
    );
    assert_eq!(
        fields_of::<RawRule>(),
        [
            "name",
            "direction",
            "proto",
            "port",
            "remote",
            "action",
            "program",
            "unit",
            "user",
            "log"
        ]
    );
    assert_eq!(fields_of::<RawLog>(), ["denied", "rate", "burst"]);
}

#[test]
fn raw_structs_deny_unknown_fields() {
    // The backstop behind the friendlier key check in `Checker::table`.
    assert!(toml::from_str::<RawReject>("rate_per_sec = 1\nbogus = 2").is_err());
    assert!(toml::from_str::<RawRule>("action = \"allow\"\nbogus = 2").is_err());
    assert!(toml::from_str::<RawDaemon>("bogus = 2").is_err());
    assert!(toml::from_str::<RawDefaults>("bogus = 2").is_err());
    assert!(toml::from_str::<RawSetFile>("file = \"x\"\nbogus = 2").is_err());
    assert!(toml::from_str::<RawConntrack>("bogus = 2").is_err());
    assert!(toml::from_str::<RawCtTimeouts>("icmp = 1\nbogus = 2").is_err());
    assert!(toml::from_str::<RawLog>("rate = 1\nbogus = 2").is_err());
}

#[test]
fn example_rule_files_parse() {
    let t = test_env();
    for name in ["workstation.toml", "server.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        let text = fs::read_to_string(&path).unwrap();
        let rs = match parse_with(&text, &path, &t.env) {
            Ok(rs) => rs,
            Err(e) => panic!("{name} should parse:\n{e}"),
        };
        assert!(!rs.rules.is_empty(), "{name}");
        assert_eq!(rs.daemon.interfaces, Interfaces::Auto, "{name}");
        assert_eq!(rs.defaults.inbound, Action::Stealth, "{name}");
        assert!(
            rs.rules.iter().any(|r| r.action == Action::Reject),
            "{name}"
        );
        assert!(rs.warnings.is_empty(), "{name}: {:?}", rs.warnings);
    }
}

/// The README says the example files explain every key: each key of every table appears in
/// each of them as `key = ...` or in a `#   key - ...` list (`[[assert]]` in server.toml).
#[test]
fn example_rule_files_explain_every_key() {
    use super::assert::RawAssert;
    let explains = |text: &str, key: &str| {
        text.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ']);
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(['=', '-']))
        })
    };
    let tables: [(&str, &[&str]); 11] = [
        ("top level", &["include"]),
        ("[metrics]", fields_of::<super::raw::RawMetrics>()),
        ("[daemon]", fields_of::<RawDaemon>()),
        ("[defaults]", fields_of::<RawDefaults>()),
        ("[reject]", fields_of::<RawReject>()),
        ("[conntrack]", fields_of::<RawConntrack>()),
        ("[conntrack.timeouts]", fields_of::<RawCtTimeouts>()),
        ("[log]", fields_of::<RawLog>()),
        ("[sets] file", fields_of::<RawSetFile>()),
        ("[[rule]]", fields_of::<RawRule>()),
        ("[[assert]]", fields_of::<RawAssert>()),
    ];
    for name in ["workstation.toml", "server.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        let text = fs::read_to_string(&path).unwrap();
        for (table, keys) in tables {
            if table == "[[assert]]" && name != "server.toml" {
                continue;
            }
            for key in keys {
                assert!(
                    explains(&text, key)
                        || text.contains(&format!("[conntrack.{key}]"))
                        || (table == "[sets] file" && text.contains("{ file =")),
                    "{name} does not explain {table} {key}"
                );
            }
        }
    }
}
