//! The rules parser's tests, by what they check; this file holds their shared fixtures: a
//! services file and a set file in a temporary directory (no test depends on the machine's
//! `/etc/services`), and helpers asserting a message's file, line and words.

mod document;
mod log;
mod metrics;
mod ports;
mod rule;
mod sections;
mod sets;
mod split;

use ipnet::IpNet;

use super::{
    checker::fields_of,
    raw::{
        RawConntrack, RawCtTimeouts, RawDaemon, RawDefaults, RawLog, RawReject, RawRule, RawSetFile,
    },
    sets::MAX_REPORTS_PER_SET_FILE,
    values::{merge_ports, short_duration},
    *,
};
use crate::model::*;

const SERVICES: &str = "\
# test services(5)
ssh             22/tcp                          # SSH Remote Login Protocol
domain          53/tcp
domain          53/udp
http            80/tcp          www             # WorldWideWeb HTTP
auth            113/tcp         authentication tap ident
https           443/tcp
https           443/udp                         # HTTP/3
mdns            5353/udp                        # Multicast DNS
";

const BLOCKLIST: &str = "\
# test blocklist

198.51.100.0/24
203.0.113.99   # a single host
2001:db8:bad::/48
";

/// A temporary directory with a services file and `blocklist.txt`, and an [`Env`] using
/// them, so no test depends on the machine's /etc/services.
struct TestEnv {
    dir: tempfile::TempDir,
    env: Env,
}

fn test_env() -> TestEnv {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("services"), SERVICES).unwrap();
    fs::write(dir.path().join("blocklist.txt"), BLOCKLIST).unwrap();
    let env = Env {
        services_path: dir.path().join("services"),
        base_dir: dir.path().to_path_buf(),
    };
    TestEnv { dir, env }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn parse_fixture_limited(name: &str, max_rules: usize) -> Result<Ruleset, ConfigError> {
    let path = fixture(name);
    let text = fs::read_to_string(&path).unwrap();
    let t = test_env();
    parse_limited(&text, &path, &t.env, max_rules)
}

fn valid(name: &str) -> Ruleset {
    match parse_fixture_limited(
        &format!("valid/{name}"),
        firewall_common::MAX_RULES as usize,
    ) {
        Ok(ruleset) => ruleset,
        Err(e) => panic!("valid/{name} should parse, got:\n{e}"),
    }
}

fn invalid_limited(name: &str, max_rules: usize) -> ConfigError {
    match parse_fixture_limited(&format!("invalid/{name}"), max_rules) {
        Ok(ruleset) => panic!("invalid/{name} should not parse, got {ruleset:#?}"),
        Err(e) => e,
    }
}

fn invalid(name: &str) -> ConfigError {
    invalid_limited(name, firewall_common::MAX_RULES as usize)
}

/// Asserts that some line of the error's message starts with `FILE:LINE:` and contains
/// every word; returns that line.
#[track_caller]
fn expect_line(err: &ConfigError, file: &str, line: usize, words: &[&str]) -> String {
    let prefix = format!("{file}:{line}:");
    let message = err.to_string();
    message
        .lines()
        .find(|l| l.starts_with(&prefix) && words.iter().all(|w| l.contains(w)))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            panic!("no line starting with {prefix:?} containing {words:?} in:\n{message}")
        })
}

/// [`expect_line`] for an invalid fixture, which must report exactly `count` problems.
#[track_caller]
fn expect(name: &str, count: usize, line: usize, words: &[&str]) -> ConfigError {
    let err = invalid(name);
    let file = fixture(&format!("invalid/{name}")).display().to_string();
    expect_line(&err, &file, line, words);
    assert_eq!(err.diagnostics().len(), count, "{err}");
    err
}

#[track_caller]
fn expect_more(err: &ConfigError, name: &str, line: usize, words: &[&str]) -> String {
    let file = fixture(&format!("invalid/{name}")).display().to_string();
    expect_line(err, &file, line, words)
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn range(lo: u16, hi: u16) -> PortRange {
    PortRange { lo, hi }
}

/// Parses inline text that must fail, returning the message.
fn invalid_text(text: &str) -> ConfigError {
    let t = test_env();
    match parse_with(text, Path::new("r.toml"), &t.env) {
        Ok(rs) => panic!("should not parse, got {rs:#?}"),
        Err(e) => e,
    }
}
