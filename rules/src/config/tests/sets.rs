//! Addresses, networks and `[sets]`, inline and from set files.

use super::*;

#[test]
fn cidr_prefix_too_long() {
    let name = "cidr-prefix-too-long.toml";
    let err = expect(
        name,
        2,
        3,
        &[
            r#"set "lan": invalid network "10.0.0.0/33": prefix length 33 is out of range for IPv4 (0-32)"#,
        ],
    );
    expect_more(
        &err,
        name,
        7,
        &[
            r#"rule 1 ("v6"): invalid network "2001:db8::/129""#,
            "IPv6 (0-128)",
        ],
    );
}

#[test]
fn address_invalid() {
    let name = "address-invalid.toml";
    let err = expect(name, 2, 4, &[":4:11:", r#"invalid address "300.1.1.1""#]);
    expect_more(
        &err,
        name,
        4,
        &[
            ":4:24:",
            r#""*.example.com" is a wildcard, and an inbound rule's names are looked up by the daemon"#,
        ],
    );
}

#[test]
fn unknown_set() {
    expect(
        "unknown-set.toml",
        1,
        10,
        &[r#":10:11: rule 1 ("web"): unknown set "@trsted"; defined sets: blocklist, trusted"#],
    );
}

#[test]
fn remote_list_empty() {
    expect(
        "remote-list-empty.toml",
        1,
        4,
        &[r#"rule 1 ("nobody"): empty remote list"#],
    );
}

#[test]
fn remote_any_is_not_a_keyword() {
    expect(
        "remote-any.toml",
        1,
        4,
        &[r#""any" is not a keyword"#, r#"leave out "remote""#],
    );
}

#[test]
fn a_set_declared_empty_is_a_runtime_set_filled_by_with_members() {
    let text = "[sets]\nblocklist = []\nlan = [\"10.0.0.0/8\"]\n\
                [[rule]]\nname = \"f2b\"\nproto = \"tcp\"\nport = 22\nremote = [\"@blocklist\", \"192.0.2.1\"]\naction = \"stealth\"\n\
                [[rule]]\nname = \"ssh\"\nproto = \"tcp\"\nport = 22\naction = \"allow\"\n";
    let rs = parse(text, Path::new("rules.toml")).unwrap();
    assert_eq!(rs.runtime_sets.iter().collect::<Vec<_>>(), ["blocklist"]);
    assert_eq!(rs.sets["blocklist"], []);
    assert_eq!(
        rs.rules[0].remote.as_deref(),
        Some(&[net("192.0.2.1/32")][..])
    );
    assert_eq!(
        rs.runtime_sets_of(&rs.rules[0]).collect::<Vec<_>>(),
        ["blocklist"]
    );
    assert!(rs.uses_runtime_sets(Direction::In) && !rs.uses_runtime_sets(Direction::Out));
    // No warning: an empty runtime set is the normal state, not a mistake.
    assert_eq!(rs.warnings, Vec::<String>::new());
    let members = Members::from([
        (
            "blocklist".to_owned(),
            vec![net("198.51.100.0/24"), net("192.0.2.1/32")],
        ),
        // Not a runtime set: the file stays the one place its members come from.
        ("lan".to_owned(), vec![net("203.0.113.9/32")]),
    ]);
    let now = rs.with_members(&members);
    assert_eq!(
        now.rules[0].remote.as_deref(),
        Some(&[net("192.0.2.1/32"), net("198.51.100.0/24")][..])
    );
    assert_eq!(now.sets["lan"], [net("10.0.0.0/8")]);
    assert_eq!(now.sets["blocklist"].len(), 2);
    assert_eq!(now.rules[1], rs.rules[1]);
}

#[test]
fn a_runtime_set_below_a_rule_that_covers_every_address_is_reported() {
    let text = "[sets]\nblocklist = []\n\
                [[rule]]\nname = \"ssh\"\nproto = \"tcp\"\nport = 22\naction = \"allow\"\n\
                [[rule]]\nname = \"f2b\"\nremote = \"@blocklist\"\naction = \"stealth\"\n\
                [[rule]]\nname = \"f2b-ssh\"\nproto = \"tcp\"\nport = 22\nremote = \"@blocklist\"\naction = \"stealth\"\n";
    let rs = parse(text, Path::new("rules.toml")).unwrap();
    // Rule 2 still matches every other port; rule 3 never matches whatever the set holds.
    assert_eq!(rs.warnings.len(), 1, "{:?}", rs.warnings);
    assert!(rs.warnings[0].contains("rule 3"), "{:?}", rs.warnings);
    assert!(
        rs.warnings[0].contains("never matches, whatever its runtime set holds: rule 1"),
        "{:?}",
        rs.warnings
    );
    assert!(!rs.warnings[0].contains("  "), "{:?}", rs.warnings);
}

#[test]
fn rules_about_programs_cannot_use_a_runtime_set() {
    let text = "[sets]\nblocklist = []\n\
                [[rule]]\ndirection = \"out\"\nuser = 0\nremote = \"@blocklist\"\naction = \"reject\"\n";
    let err = parse(text, Path::new("rules.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("@blocklist is a runtime set"), "{err}");
    assert!(err.contains("\"user\""), "{err}");
}

#[test]
fn set_name_invalid() {
    let name = "set-name-invalid.toml";
    let err = expect(
        name,
        2,
        3,
        &[r#"invalid set name "my set""#, "letters, digits"],
    );
    expect_more(
        &err,
        name,
        4,
        &[r#"invalid set name "@admins""#, "'@' is only written"],
    );
}

#[test]
fn set_file_missing() {
    expect(
        "set-file-missing.toml",
        1,
        3,
        &[
            r#"set "blocklist": cannot read set file"#,
            "does-not-exist.txt",
        ],
    );
}

#[test]
fn normalisation() {
    let rs = valid("normalisation.toml");
    let merged = &rs.rules[0];
    assert_eq!(
        merged.ports[..],
        [
            range(22, 22),
            range(80, 80),
            range(443, 443),
            range(1000, 2501),
            range(65535, 65535)
        ]
    );
    assert_eq!(
        merged.remote.as_deref(),
        Some(&[net("10.0.0.0/8"), net("192.0.2.1/32"), net("2001:db8::/32")][..])
    );
    assert_eq!(
        merged.remote_spec[..],
        ["@a", "@b", "192.0.2.1", "10.1.2.3/8"]
    );
    let second = &rs.rules[1];
    assert_eq!(second.ports[..], [range(100, 100)]);
    assert_eq!(second.remote.as_deref(), Some(&[net("2001:db8::/32")][..]));

    let file = fixture("valid/normalisation.toml").display().to_string();
    assert_eq!(rs.warnings.len(), 3, "{:#?}", rs.warnings);
    assert!(
        rs.warnings[0].starts_with(&format!("{file}:11:")),
        "{:?}",
        rs.warnings
    );
    assert!(rs.warnings[0].contains(r#""10.1.2.3/8" has host bits set; it is read as 10.0.0.0/8"#));
    assert!(
        rs.warnings[1].starts_with(&format!(
            "{file}:14:1: rule 2 (\"merged\"): has the same name as rule 1 (line 7)"
        )),
        "{:?}",
        rs.warnings
    );
    assert!(rs.warnings[2].starts_with(&format!("{file}:18:")));
    assert!(rs.warnings[2].contains("2001:db8::/32"));
}

#[test]
fn set_file_with_comments_blank_lines_and_relative_path() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("rules/sets")).unwrap();
    fs::write(dir.path().join("rules/sets/block.txt"), BLOCKLIST).unwrap();
    let rules = dir.path().join("rules/rules.toml");
    fs::write(
            &rules,
            "[sets]\nblock = { file = \"sets/block.txt\" }\n[[rule]]\nremote = \"@block\"\naction = \"stealth\"\n",
        )
        .unwrap();
    let rs = load(&rules).unwrap();
    let expected = vec![
        net("198.51.100.0/24"),
        net("203.0.113.99/32"),
        net("2001:db8:bad::/48"),
    ];
    assert_eq!(rs.sets["block"], expected);
    assert_eq!(rs.rules[0].remote.as_deref(), Some(&expected[..]));
    assert!(rs.warnings.is_empty(), "{:?}", rs.warnings);
    assert_eq!(
        Env::for_rules_file(&rules).base_dir,
        dir.path().join("rules")
    );
    assert_eq!(
        Env::for_rules_file(Path::new("rules.toml")).base_dir,
        PathBuf::from(".")
    );
}

#[test]
fn set_file_errors_name_the_set_file_and_line() {
    let t = test_env();
    let set_file = t.dir.path().join("bad.txt");
    fs::write(
        &set_file,
        "# header\n10.0.0.0/8\n\n  10.0.0.0/99  # oops\n192.0.2.1/24\n",
    )
    .unwrap();
    let text = "[sets]\nbad = { file = \"bad.txt\" }\n";
    let err = parse_with(text, Path::new("rules.toml"), &t.env).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            r#"{}:4:3: set "bad": invalid network: prefix length is out of range for IPv4 (0-32)"#,
            set_file.display()
        )
    );
    assert_eq!(err.diagnostics()[0].file, set_file);

    // Host bits in a set file: accepted, with a warning naming the file and line.
    fs::write(&set_file, "192.0.2.1/24\n").unwrap();
    let rs = parse_with(text, Path::new("rules.toml"), &t.env).unwrap();
    assert_eq!(rs.sets["bad"], [net("192.0.2.0/24")]);
    assert_eq!(
        rs.warnings,
        [format!(
            r#"{}:1:1: set "bad": this entry has host bits set; they are ignored"#,
            set_file.display()
        )]
    );
}

/// Issue 14: set files were read with no check. A FIFO hung the daemon, /dev/zero ate its
/// memory, a file anyone could write changed the firewall, and errors quoted the lines of
/// files only root may read to control-group members.
#[test]
fn set_files_that_could_hang_exhaust_or_be_forged_are_refused() {
    use std::os::unix::fs::{PermissionsExt as _, chown};
    let t = test_env();
    let refused = |file: &str, why: &str| {
        let text = format!("[sets]\ns = {{ file = \"{file}\" }}\n");
        let start = std::time::Instant::now();
        let err = parse_with(&text, Path::new("rules.toml"), &t.env)
            .expect_err(file)
            .to_string();
        assert!(
            err.contains("cannot read set file") && err.contains(why),
            "{file}: {err}"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "{file}"
        );
    };
    let fifo = t.dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    refused("fifo", "a FIFO, not a regular file");
    refused("/dev/zero", "a device, not a regular file");
    let big = t.dir.path().join("big.txt");
    fs::File::create(&big)
        .unwrap()
        .set_len(MAX_FILE_BYTES + 1)
        .unwrap();
    refused("big.txt", "more than the 64 MiB allowed");
    let open = t.dir.path().join("open.txt");
    fs::write(&open, "192.0.2.1\n").unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o666)).unwrap();
    refused("open.txt", "writable by everyone (mode 0666)");
    if nix::unistd::geteuid().is_root() {
        let theirs = t.dir.path().join("theirs.txt");
        fs::write(&theirs, "192.0.2.1\n").unwrap();
        chown(&theirs, Some(65534), None).unwrap();
        refused("theirs.txt", "owned by uid 65534, not by root");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o664)).unwrap();
        chown(&open, Some(0), Some(65534)).unwrap();
        refused("open.txt", "writable by the group gid 65534 (mode 0664)");
    } else {
        eprintln!("not root: the ownership checks are not exercised");
    }

    // A symbolic link is followed; what it leads to is checked, and never quoted.
    let secret = t.dir.path().join("secret");
    fs::write(&secret, "hunter2-token!\n10.0.0.0/99\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&secret, t.dir.path().join("link.txt")).unwrap();
    let text = "[sets]\ns = { file = \"link.txt\" }\n";
    let err = parse_with(text, Path::new("rules.toml"), &t.env).unwrap_err();
    let shown = format!("{err}");
    assert!(
        shown.contains(":1:1: set \"s\": not an address, a network or a name"),
        "{shown}"
    );
    assert!(
        shown.contains(":2:1: set \"s\": invalid network: "),
        "{shown}"
    );
    for part in ["hunter2", "token"] {
        assert!(!shown.contains(part), "{part:?} quoted: {shown}");
    }
}

#[test]
fn set_file_errors_are_capped() {
    let t = test_env();
    let lines: String = (0..50).map(|i| format!("junk{i}!\n")).collect();
    fs::write(t.dir.path().join("junk.txt"), lines).unwrap();
    let text = "[sets]\njunk = { file = \"junk.txt\" }\n";
    let err = parse_with(text, Path::new("rules.toml"), &t.env).unwrap_err();
    assert_eq!(err.diagnostics().len(), MAX_REPORTS_PER_SET_FILE + 1);
    assert!(
        err.to_string().ends_with("30 more invalid lines not shown"),
        "{err}"
    );
}

#[test]
fn empty_set_file_is_allowed_with_a_warning() {
    let t = test_env();
    fs::write(t.dir.path().join("empty.txt"), "# nothing yet\n\n").unwrap();
    let text = "[sets]\nempty = { file = \"empty.txt\" }\n[[rule]]\nremote = \"@empty\"\naction = \"allow\"\n";
    let rs = parse_with(text, Path::new("rules.toml"), &t.env).unwrap();
    assert_eq!(rs.sets["empty"], []);
    assert_eq!(rs.rules[0].remote.as_deref(), Some(&[][..]));
    assert_eq!(rs.warnings.len(), 1);
    assert!(
        rs.warnings[0].starts_with("rules.toml:2:18: set \"empty\": "),
        "{:?}",
        rs.warnings
    );
    assert!(
        rs.warnings[0].contains("lists no addresses or names; rules using @empty match nothing")
    );
}

#[test]
fn sets_hold_names_inline_and_in_files_plain_or_as_hosts_files() {
    let t = test_env();
    // A blocklist published as a hosts file, and a plain list, with comments.
    fs::write(
        t.dir.path().join("hosts.txt"),
        "# blocklist\n127.0.0.1 localhost\nfe80::1%lo0 localhost\n0.0.0.0 0.0.0.0\n0.0.0.0 Ads.Example.com tracker.example.net # two\n\
         ::1 ip6-localhost\n",
    )
    .unwrap();
    fs::write(
        t.dir.path().join("plain.txt"),
        "malware.example.org.\n*.bad.example\n198.51.100.7\n",
    )
    .unwrap();
    let text = r#"
[sets]
hosts = { file = "hosts.txt" }
plain = { file = "plain.txt" }
inline = ["debian.org", "*.debian.org", "203.0.113.0/24"]
[[rule]]
direction = "out"
remote = ["@hosts", "@plain"]
action = "reject"
[[rule]]
direction = "out"
remote = "@inline"
action = "allow"
"#;
    let rs = parse_with(text, Path::new("rules.toml"), &t.env).unwrap();
    let names =
        |i: usize| -> Vec<String> { rs.rules[i].names.iter().map(ToString::to_string).collect() };
    assert_eq!(
        names(0),
        [
            "ads.example.com",
            "ip6-localhost",
            "localhost",
            "malware.example.org",
            "tracker.example.net",
            "*.bad.example",
        ]
    );
    assert_eq!(
        rs.rules[0].remote.as_deref(),
        Some(&[net("198.51.100.7/32")][..])
    );
    assert_eq!(names(1), ["debian.org", "*.debian.org"]);
    assert_eq!(rs.sets["inline"], [net("203.0.113.0/24")]);

    // An inbound rule's names are looked up by the daemon: a set with a wildcard is refused
    // there, one of names alone is taken.
    let inbound = "[sets]\nplain = { file = \"plain.txt\" }\n[[rule]]\nremote = \"@plain\"\naction = \"stealth\"\n";
    let err = parse_with(inbound, Path::new("rules.toml"), &t.env).unwrap_err();
    assert!(
        err.to_string()
            .contains(r#""*.bad.example" is a wildcard, and an inbound rule's names are looked up by the daemon"#),
        "{err}"
    );
    let inbound = "[sets]\nhosts = { file = \"hosts.txt\" }\n[[rule]]\nremote = \"@hosts\"\naction = \"stealth\"\n";
    let rs = parse_with(inbound, Path::new("rules.toml"), &t.env).unwrap();
    assert_eq!(
        rs.lookups(),
        [
            "ads.example.com",
            "ip6-localhost",
            "localhost",
            "tracker.example.net"
        ]
    );
    // Two fields that are not a hosts line, and a bad name, are errors.
    fs::write(
        t.dir.path().join("bad.txt"),
        "a.example b.example\n0.0.0.0 bad_name!\n",
    )
    .unwrap();
    let bad = "[sets]\nb = { file = \"bad.txt\" }\n";
    let err = parse_with(bad, Path::new("rules.toml"), &t.env).unwrap_err();
    assert_eq!(err.diagnostics().len(), 2, "{err}");
}

#[test]
fn a_mistyped_address_read_as_a_name_is_warned_about() {
    let t = test_env();
    let text = "[[rule]]\ndirection = \"out\"\nremote = [\"10.0.0.1O\", \"a.example.test\"]\naction = \"reject\"\n";
    let rs = parse_with(text, Path::new("rules.toml"), &t.env).unwrap();
    assert_eq!(rs.warnings.len(), 1, "{:?}", rs.warnings);
    assert!(
        rs.warnings[0].contains("\"10.0.0.1O\" is read as a name, not an address"),
        "{:?}",
        rs.warnings
    );
}
