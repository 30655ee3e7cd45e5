//! Rule sets for the tests: random ones for the tests that compare the kernel with the oracle
//! (`verdicts.rs`, `fuzz_datapath.rs`: proptest strategies over a small address and port
//! space, and the `rules.toml` text they stand for), and fixed ones several files share.

/// Stealth by default, TCP port 8080 allowed: the daemon tests' rules when the question is
/// "protected or not" (a connect to 8080 succeeds, any other port times out only when the
/// firewall judges the interface).
pub const WEB_ONLY: &str = r#"
[defaults]
inbound = "stealth"

[[rule]]
name = "web"
proto = "tcp"
port = 8080
action = "allow"
"#;

use proptest::{prelude::*, sample::select};
use rules::model::{Action, Ruleset};

/// `[reject]` section that never rate-limits within a test.
pub const NO_RATE_LIMIT: &str =
    "[reject]\nrate_per_sec = 1000000\nburst = 1000000\nglobal_rate_per_sec = 1000000\n";

#[derive(Clone, Debug)]
pub struct GenRule {
    pub outbound: bool,
    pub proto: &'static str,
    pub ports: Vec<(u16, u16)>,
    pub remote: Vec<String>,
    pub action: Action,
}

/// Port boundaries rules are built from, in two clusters so that ranges within a cluster stay
/// cheap to load (the loader writes each touched `PORTS` slot with its own syscall).
pub const LOW_PORTS: [u16; 10] = [1, 2, 20, 21, 22, 23, 53, 80, 443, 1000];
pub const HIGH_PORTS: [u16; 4] = [64000, 65000, 65534, 65535];

pub fn all_port_points() -> Vec<u16> {
    LOW_PORTS.iter().chain(&HIGH_PORTS).copied().collect()
}

pub fn gen_net() -> impl Strategy<Value = String> {
    let v4 = (
        0u8..4,
        0u8..4,
        0u8..4,
        select(vec![8u8, 15, 16, 23, 24, 31, 32]),
    )
        .prop_map(|(a, b, c, len)| format!("10.{a}.{b}.{c}/{len}"));
    let v6 = (
        0u16..4,
        0u16..4,
        0u16..4,
        select(vec![32u8, 47, 48, 63, 64, 127, 128]),
    )
        .prop_map(|(a, b, c, len)| format!("2001:db8:{a}:{b}::{c}/{len}"));
    let host = (0u8..4, 0u8..4, 0u8..4).prop_map(|(a, b, c)| format!("10.{a}.{b}.{c}"));
    prop_oneof![4 => v4, 4 => v6, 1 => host]
}

/// A port range within one cluster, or (when `wide`, one rule set in eight) across both.
pub fn gen_range(wide: bool) -> BoxedStrategy<(u16, u16)> {
    let order = |(a, b): (u16, u16)| (a.min(b), a.max(b));
    let low = (select(LOW_PORTS.to_vec()), select(LOW_PORTS.to_vec())).prop_map(order);
    let high = (select(HIGH_PORTS.to_vec()), select(HIGH_PORTS.to_vec())).prop_map(order);
    let across = (select(LOW_PORTS.to_vec()), select(HIGH_PORTS.to_vec()));
    if wide {
        prop_oneof![3 => low, 1 => high, 1 => across].boxed()
    } else {
        prop_oneof![3 => low, 1 => high].boxed()
    }
}

pub fn gen_rule(wide: bool) -> impl Strategy<Value = GenRule> {
    let range = gen_range(wide);
    let ports = prop_oneof![
        2 => Just(Vec::new()),
        3 => proptest::collection::vec(range, 1..=3),
    ];
    let remote = prop_oneof![
        2 => Just(Vec::new()),
        3 => proptest::collection::vec(gen_net(), 1..=3),
    ];
    (
        proptest::bool::weighted(0.1),
        select(vec!["any", "tcp", "udp", "icmp"]),
        ports,
        remote,
        select(vec![Action::Allow, Action::Reject, Action::Stealth]),
    )
        .prop_map(|(outbound, proto, ports, remote, action)| GenRule {
            outbound,
            // Outbound ICMP rules are refused (the outbound hooks see TCP and UDP sockets).
            proto: if outbound && proto == "icmp" {
                "any"
            } else {
                proto
            },
            ports: if proto == "icmp" { Vec::new() } else { ports },
            remote,
            action,
        })
}

pub fn render(rules: &[GenRule], default_action: Action) -> String {
    let mut text = format!("[defaults]\ninbound = \"{default_action}\"\n{NO_RATE_LIMIT}");
    for r in rules {
        text.push_str("\n[[rule]]\n");
        if r.outbound {
            text.push_str("direction = \"out\"\n");
        }
        text.push_str(&format!("proto = \"{}\"\n", r.proto));
        if !r.ports.is_empty() {
            let items: Vec<String> = r
                .ports
                .iter()
                .map(|&(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("\"{lo}-{hi}\"")
                    }
                })
                .collect();
            text.push_str(&format!("port = [{}]\n", items.join(", ")));
        }
        if !r.remote.is_empty() {
            let items: Vec<String> = r.remote.iter().map(|n| format!("\"{n}\"")).collect();
            text.push_str(&format!("remote = [{}]\n", items.join(", ")));
        }
        text.push_str(&format!("action = \"{}\"\n", r.action));
    }
    text
}

/// `text` parsed as the rules file `file` of a test: no services file (port names fail), set
/// files relative to the temporary directory; a parse error fails the test, showing the rules.
pub fn parse(text: &str, file: &str) -> Ruleset {
    let env = rules::config::Env {
        services_path: std::path::PathBuf::from("/nonexistent/services"),
        base_dir: std::env::temp_dir(),
    };
    rules::config::parse_with(text, std::path::Path::new(file), &env)
        .unwrap_or_else(|e| panic!("test rules do not parse:\n{e}\n--- rules ---\n{text}"))
}
