//! `[daemon]`, `[reject]` and `[conntrack]`: values, bounds, durations and shapes.

use super::*;

#[test]
fn reject_limits_out_of_range() {
    let name = "reject-out-of-range.toml";
    let err = expect(
        name,
        2,
        3,
        &["reject.rate_per_sec = 0 is out of range (1-1000000)"],
    );
    expect_more(
        &err,
        name,
        4,
        &["reject.burst = 0 is out of range (1-4294967295)"],
    );
    expect(
        "reject-rate-too-high.toml",
        1,
        3,
        &["reject.rate_per_sec = 2000000 is out of range"],
    );
    expect(
        "reject-global-rate-out-of-range.toml",
        1,
        3,
        &["reject.global_rate_per_sec = 0 is out of range (1-1000000)"],
    );
}

#[test]
fn conntrack_values_out_of_range() {
    let name = "conntrack-invalid.toml";
    let err = expect(
        name,
        12,
        3,
        &[":3:14: conntrack.table_size = 1000 is out of range (1024-16777216)"],
    );
    expect_more(
        &err,
        name,
        4,
        &[":4:20: conntrack.unconfirmed_size = 8388608 is out of range (1024-4194304)"],
    );
    expect_more(
        &err,
        name,
        5,
        &[
            r#":5:11: invalid conntrack.invalid "drop"; expected one of: stealth, reject ("stealth" drops silently, "reject" answers)"#,
        ],
    );
    expect_more(
        &err,
        name,
        6,
        &[r#":6:15: conntrack.gc_interval = "2h" is out of range (1s to 1h, i.e. 1-3600 seconds)"#],
    );
    expect_more(
        &err,
        name,
        9,
        &[
            ":9:16: conntrack.timeouts.tcp_syn_sent = 0 is out of range (1s to 1d, i.e. 1-86400 seconds)",
        ],
    );
    expect_more(
        &err,
        name,
        10,
        &[
            r#":10:19: conntrack.timeouts.tcp_established = "400d" is out of range (1s to 365d, i.e. 1-31536000 seconds)"#,
        ],
    );
    expect_more(
        &err,
        name,
        11,
        &[
            r#":11:15: conntrack.timeouts.udp_replied = "2d" is out of range (1s to 1d, i.e. 1-86400 seconds)"#,
        ],
    );
    expect_more(
        &err,
        name,
        12,
        &[r#":12:8: conntrack.timeouts.icmp = "1.5s" is not a whole number of seconds"#],
    );
    expect_more(
        &err,
        name,
        13,
        &[
            r#":13:13: conntrack.timeouts.tcp_close = "1 month" uses months or years, which have no fixed length; use days ("30d")"#,
        ],
    );
    expect_more(
        &err,
        name,
        14,
        &[
            r#":14:16: conntrack.timeouts.tcp_fin_wait = "soon" is not a duration; write seconds (120) or a duration such as "30s", "2m", "1h30m" or "5d""#,
        ],
    );
    expect_more(
        &err,
        name,
        15,
        &[r#":15:17: conntrack.timeouts.tcp_time_wait = "-5s" is out of range (1s to 1d"#],
    );
    expect_more(
        &err,
        name,
        16,
        &[":16:16: conntrack.timeouts.tcp_last_ack = 86401 is out of range (1s to 1d"],
    );
}

#[test]
fn conntrack_durations_and_bounds() {
    let t = test_env();
    let timeouts = |body: &str| {
        let text = format!("[conntrack.timeouts]\n{body}\n");
        parse_with(&text, Path::new("r.toml"), &t.env).map(|rs| rs.conntrack.timeouts)
    };
    for (written, secs) in [
        ("30", 30),
        (r#""30s""#, 30),
        (r#"" 2m ""#, 120),
        (r#""1h30m""#, 5400),
        (r#""1h 30m""#, 5400),
        (r#""90 seconds""#, 90),
        (r#""2 mins""#, 120),
        (r#""1 day""#, 86_400),
        (r#""PT2M""#, 120),
        (r#""1000ms""#, 1),
        (r#""1.5m""#, 90),
    ] {
        let got = timeouts(&format!("icmp = {written}"));
        assert_eq!(got.map(|t| t.icmp).ok(), Some(secs), "{written}");
    }
    // Bounds are inclusive; only tcp_established may exceed a day.
    assert_eq!(timeouts("icmp = 1").unwrap().icmp, 1);
    assert_eq!(timeouts("icmp = 86400").unwrap().icmp, 86_400);
    assert!(timeouts("icmp = 86401").is_err());
    assert!(timeouts("udp_replied = \"1w\"").is_err());
    let t365 = timeouts("tcp_established = \"365 days\"").unwrap();
    assert_eq!(t365.tcp_established, 365 * 86_400);
    assert_eq!(
        timeouts("tcp_established = \"52w\"")
            .unwrap()
            .tcp_established,
        364 * 86_400
    );
    let err = timeouts("tcp_established = \"366d\"")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        r#"r.toml:2:19: conntrack.timeouts.tcp_established = "366d" is out of range (1s to 365d, i.e. 1-31536000 seconds)"#
    );
    // Far too large for any unit still reads as out of range, not as a wrapped value.
    let err = timeouts("icmp = 4294967326").unwrap_err().to_string();
    assert!(err.contains("icmp = 4294967326 is out of range"), "{err}");
    let err = timeouts(r#"icmp = """#).unwrap_err().to_string();
    assert!(err.contains(r#"icmp = "" is not a duration"#), "{err}");
    let err = timeouts(r#"icmp = "1y""#).unwrap_err().to_string();
    assert!(err.contains("months or years"), "{err}");
    // Settings left out keep their defaults.
    let only = timeouts("udp_replied = 180").unwrap();
    assert_eq!(
        only,
        CtTimeouts {
            udp_replied: 180,
            ..CtTimeouts::default()
        }
    );

    let conntrack = |body: &str| {
        let text = format!("[conntrack]\n{body}\n");
        parse_with(&text, Path::new("r.toml"), &t.env).map(|rs| rs.conntrack)
    };
    let c = conntrack("table_size = 1024\nunconfirmed_size = 4194304\ngc_interval = 3600").unwrap();
    assert_eq!(
        (c.table_size, c.unconfirmed_size, c.gc_interval_secs),
        (1024, 4_194_304, 3600)
    );
    let c =
        conntrack("table_size = 16777216\nunconfirmed_size = 1024\ngc_interval = \"1s\"").unwrap();
    assert_eq!(
        (c.table_size, c.unconfirmed_size, c.gc_interval_secs),
        (16_777_216, 1024, 1)
    );
    assert_eq!(
        conntrack("invalid = \"stealth\"").unwrap().invalid,
        InvalidPolicy::Stealth
    );
    assert!(conntrack("").unwrap().record_owner);
    assert!(!conntrack("record_owner = false").unwrap().record_owner);
    let err = conntrack("record_owner = \"no\"").unwrap_err().to_string();
    assert!(err.contains(":2:") && err.contains("bool"), "{err}");
    assert!(conntrack("table_size = 16777217").is_err());
    assert!(conntrack("unconfirmed_size = 1023").is_err());
    assert!(conntrack("gc_interval = 0").is_err());
    assert!(conntrack("gc_interval = \"61m\"").is_err());
    // Inline and dotted forms of the nested table work too.
    let c = conntrack("timeouts = { icmp = \"10s\" }").unwrap();
    assert_eq!(c.timeouts.icmp, 10);
    let c = conntrack("timeouts.tcp_close = 3").unwrap();
    assert_eq!(c.timeouts.tcp_close, 3);
}

#[test]
fn conntrack_shape_errors() {
    let t = test_env();
    let check = |text: &str| {
        let err = parse_with(text, Path::new("r.toml"), &t.env).unwrap_err();
        err.diagnostics()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        check("conntrack = 5\n"),
        ["r.toml:1:13: [conntrack] must be a table, not integer"]
    );
    assert_eq!(
        check("[conntrack]\ntimeouts = \"5d\"\n"),
        ["r.toml:2:12: [conntrack.timeouts] must be a table, not string"]
    );
    // A type error in [conntrack] hides neither [conntrack.timeouts] nor a sibling timeout.
    let text = "\
[conntrack]
table_size = \"big\"
[conntrack.timeouts]
icmp = 0
tcp_close = \"x\"
";
    assert_eq!(
        check(text),
        [
            r#"r.toml:2:14: conntrack.table_size: invalid type: string "big", expected an integer"#,
            "r.toml:4:8: conntrack.timeouts.icmp = 0 is out of range (1s to 1d, i.e. 1-86400 seconds)",
            r#"r.toml:5:13: conntrack.timeouts.tcp_close = "x" is not a duration; write seconds (120) or a duration such as "30s", "2m", "1h30m" or "5d""#,
        ]
    );
}

#[test]
fn conntrack_defaults_are_linux_nf_conntrack() {
    let c = Conntrack::default();
    assert_eq!(c.table_size, 262_144);
    assert_eq!(c.unconfirmed_size, 65_536);
    assert_eq!(c.invalid, InvalidPolicy::Stealth);
    assert_eq!(c.gc_interval_secs, 10);
    let t = &c.timeouts;
    assert_eq!(
        [
            t.tcp_syn_sent,
            t.tcp_syn_recv,
            t.tcp_established,
            t.tcp_fin_wait,
            t.tcp_close_wait,
            t.tcp_last_ack,
            t.tcp_time_wait,
            t.tcp_close,
            t.udp_unreplied,
            t.udp_replied,
            t.icmp
        ],
        [120, 60, 432_000, 120, 60, 30, 120, 10, 30, 120, 30]
    );
    // The defaults are within the bounds the file is held to.
    let text = "[conntrack]\ntable_size = 262144\nunconfirmed_size = 65536\ninvalid = \"stealth\"\ngc_interval = \"10s\"\n[conntrack.timeouts]\ntcp_syn_sent = \"2m\"\ntcp_syn_recv = \"1m\"\ntcp_established = \"5d\"\ntcp_fin_wait = \"2m\"\ntcp_close_wait = \"1m\"\ntcp_last_ack = \"30s\"\ntcp_time_wait = \"2m\"\ntcp_close = \"10s\"\nudp_unreplied = \"30s\"\nudp_replied = \"2m\"\nicmp = \"30s\"\n";
    let rs = parse_with(text, Path::new("r.toml"), &test_env().env).unwrap();
    assert_eq!(rs.conntrack, c);
}

#[test]
fn short_durations() {
    assert_eq!(short_duration(1), "1s");
    assert_eq!(short_duration(90), "90s");
    assert_eq!(short_duration(5400), "90m");
    assert_eq!(short_duration(3600), "1h");
    assert_eq!(short_duration(365 * 86_400), "365d");
    assert_eq!(short_duration(0), "0s");
}

#[test]
fn interfaces_invalid() {
    let name = "interfaces-invalid.toml";
    let err = expect(
        name,
        2,
        3,
        &[
            ":3:23:",
            r#"invalid interface name "a-name-that-is-far-too-long""#,
        ],
    );
    expect_more(
        &err,
        name,
        3,
        &[":3:54:", r#"invalid interface name "br/0""#],
    );
    expect(
        "interfaces-not-auto.toml",
        1,
        3,
        &[
            r#"daemon.interfaces must be "auto" or a list"#,
            r#"["eth0"]"#,
        ],
    );
    expect(
        "interfaces-empty.toml",
        1,
        3,
        &["daemon.interfaces is an empty list"],
    );
}

#[test]
fn daemon_paths_must_be_absolute() {
    let name = "daemon-relative-paths.toml";
    let err = expect(
        name,
        3,
        3,
        &[r#"daemon.control_socket must be an absolute path, not "control.sock""#],
    );
    expect_more(&err, name, 4, &["daemon.pin_dir must be an absolute path"]);
    expect_more(
        &err,
        name,
        5,
        &[r#"daemon.cgroup must be an absolute path, not "firewall.slice""#],
    );
}

/// `[[assert]]`: every key checked, all problems reported with their position.
#[test]
fn assertion_errors_are_located() {
    let text = r#"
[[assert]]
in = "tcp 22"
out = "tcp 25"
expect = "allow"

[[assert]]
in = "tcp"
expect = "allow"

[[assert]]
in = "tcp 22"
to = "10.0.0.1"
expect = "deny"

[[assert]]
out = "icmp"
expect = "reject"

[[assert]]
in = "icmp"
program = "/usr/bin/ping"
expect = "allow"

[[assert]]
out = "udp 53"
to = "10.0.0.0/8"
user = 0
expect = "allow"
"#;
    let e = crate::config::parse(text, std::path::Path::new("a.toml")).unwrap_err();
    let msgs: Vec<String> = e.diagnostics().iter().map(ToString::to_string).collect();
    let want = [
        "a.toml:4:7: assert 1: give either `in` or `out`, not both",
        "a.toml:8:6: assert 2: in: \"tcp\" is not a packet to assert about",
        "a.toml:13:6: assert 3: `to` does not go with `in`",
        "a.toml:14:10: assert 3: invalid expect \"deny\"",
        "a.toml:17:7: assert 4: out: outbound ICMP is not judged",
        "a.toml:21:6: assert 5: ICMP has no socket owner",
    ];
    assert_eq!(msgs.len(), want.len(), "{msgs:#?}");
    for (m, w) in msgs.iter().zip(want) {
        assert!(m.starts_with(w), "{m}\n  should start with\n{w}");
    }
}

#[test]
fn dns_servers_are_addresses_with_or_without_a_port() {
    let rs = parse(
        "[dns]\nservers = [\"192.0.2.53\", \"2001:db8::53\", \"192.0.2.54:5353\", \"[2001:db8::54]:5353\"]\n",
        Path::new("a.toml"),
    )
    .unwrap();
    let servers: Vec<String> = rs.dns.servers.iter().map(ToString::to_string).collect();
    assert_eq!(
        servers,
        [
            "192.0.2.53:53",
            "[2001:db8::53]:53",
            "192.0.2.54:5353",
            "[2001:db8::54]:5353"
        ]
    );
    assert!(
        parse("", Path::new("a.toml"))
            .unwrap()
            .dns
            .servers
            .is_empty()
    );
    let err = parse(
        "[dns]\nservers = [\"ns1.example\", \"192.0.2.53:0\"]\n",
        Path::new("a.toml"),
    )
    .unwrap_err();
    assert_eq!(err.diagnostics().len(), 2, "{err}");
    assert!(
        err.to_string()
            .contains(r#"dns.servers: "ns1.example" is not an address"#),
        "{err}"
    );
}

#[test]
fn inbound_rules_name_at_most_max_lookups_names() {
    let names = |n: usize| -> String {
        let list: Vec<String> = (0..n).map(|i| format!("\"h{i}.example\"")).collect();
        format!(
            "[[rule]]\nport = 22\nremote = [{}]\naction = \"allow\"\n",
            list.join(", ")
        )
    };
    let rs = parse(&names(crate::names::MAX_LOOKUPS), Path::new("a.toml")).unwrap();
    assert_eq!(rs.lookups().len(), crate::names::MAX_LOOKUPS);
    let err = parse(&names(crate::names::MAX_LOOKUPS + 1), Path::new("a.toml")).unwrap_err();
    assert!(
        err.to_string().contains("the daemon looks up at most"),
        "{err}"
    );
    // The same in two rules: the total counts.
    let half = crate::names::MAX_LOOKUPS / 2 + 1;
    let two = format!("{}{}", names(half), names(half).replace("\"h", "\"g"));
    let err = parse(&two, Path::new("a.toml")).unwrap_err();
    assert!(err.to_string().contains("the inbound rules name"), "{err}");
}
