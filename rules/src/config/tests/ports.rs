//! `port`: numbers, ranges, service names (per protocol) and their merging.

use super::*;

#[test]
fn unknown_service() {
    let name = "unknown-service.toml";
    let err = expect(
        name,
        2,
        5,
        &[r#":5:17: rule 1 ("web"): unknown service "htpp" for tcp"#],
    );
    expect_more(
        &err,
        name,
        11,
        &[
            r#"rule 2 ("ssh over udp"): service "ssh" is a tcp service"#,
            "not udp",
        ],
    );
}

#[test]
fn port_zero() {
    expect(
        "port-zero.toml",
        1,
        5,
        &[r#":5:8: rule 1 ("zero"): port 0 is out of range (1-65535)"#],
    );
}

#[test]
fn port_too_large() {
    let name = "port-too-large.toml";
    let err = expect(
        name,
        2,
        5,
        &[r#"rule 1 ("big"): port 65536 is out of range (1-65535)"#],
    );
    expect_more(
        &err,
        name,
        11,
        &[r#"rule 2 ("big range"): port 70000 is out of range"#],
    );
}

#[test]
fn port_range_reversed() {
    expect(
        "port-range-reversed.toml",
        1,
        5,
        &[
            r#"rule 1 ("backwards"): reversed port range "9000-8000""#,
            r#""8000-9000""#,
        ],
    );
}

#[test]
fn port_range_malformed() {
    let name = "port-range-malformed.toml";
    let err = expect(name, 2, 5, &[":5:9:", r#"malformed port range "8000-""#]);
    expect_more(
        &err,
        name,
        5,
        &[":5:18:", r#"malformed port range "80-90-100""#],
    );
}

#[test]
fn port_list_empty() {
    expect(
        "port-list-empty.toml",
        1,
        5,
        &[r#"rule 1 ("nothing"): empty port list"#],
    );
}

#[test]
fn port_with_icmp() {
    expect(
        "port-with-icmp.toml",
        1,
        5,
        &[r#":5:1: rule 1 ("ping"): ports only apply to tcp and udp"#],
    );
}

#[test]
fn services_resolve_per_proto() {
    let t = test_env();
    let text = r#"
[[rule]]
proto = "udp"
port = ["https", "mdns"]
action = "allow"
[[rule]]
proto = "any"
port = ["www", "mdns", "ident"]
action = "allow"
"#;
    let rs = parse_with(text, Path::new("r.toml"), &t.env).unwrap();
    assert_eq!(rs.rules[0].ports[..], [range(443, 443), range(5353, 5353)]);
    assert_eq!(
        rs.rules[1].ports[..],
        [range(80, 80), range(113, 113), range(5353, 5353)]
    );
}

#[test]
fn services_file_is_only_needed_for_names() {
    let env = Env {
        services_path: PathBuf::from("/nonexistent/services"),
        base_dir: PathBuf::from("/nonexistent"),
    };
    let numeric = "[[rule]]\nproto = \"tcp\"\nport = 22\naction = \"allow\"\n";
    assert!(parse_with(numeric, Path::new("r.toml"), &env).is_ok());
    let named = "[[rule]]\nproto = \"tcp\"\nport = \"ssh\"\naction = \"allow\"\n";
    let err = parse_with(named, Path::new("r.toml"), &env)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("r.toml:3:8: rule 1: service name \"ssh\" cannot be looked up: cannot read /nonexistent/services"), "{err}");
}

#[test]
fn port_merging() {
    assert_eq!(
        merge_ports(vec![
            range(10, 20),
            range(21, 30),
            range(5, 5),
            range(25, 40),
            range(65535, 65535),
            range(42, 42)
        ]),
        [
            range(5, 5),
            range(10, 40),
            range(42, 42),
            range(65535, 65535)
        ]
    );
    assert_eq!(
        merge_ports(vec![range(1, 65535), range(7, 7)]),
        [range(1, 65535)]
    );
}
