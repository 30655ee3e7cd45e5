//! Warnings about rules that are valid but cannot do what they seem to: a rule that can never
//! match because an earlier rule already decides everything it would (with the same action: a
//! duplicate; with another: a rule that is silently dead), and a catch-all followed by rules.
//! They are warnings, in the errors' `FILE:LINE:COL` format, printed by `fwctl check` and by
//! every reload; the file still loads.
//!
//! "Covers" is decided rule against rule: an earlier rule covers a later one when every packet
//! the later one matches (protocol, ports, remote addresses, socket owner) also matches the
//! earlier one. A rule covered only by the union of several earlier rules is not reported
//! (that needs a region analysis per rule; `fwctl explain` shows the winner for any packet).
//! The pairwise check costs rules² / 2 comparisons: above [`PAIRWISE_LIMIT`] rules per
//! direction only catch-alls are looked for, and a note says so.
//!
//! Warnings that need the host (a program that does not exist, a unit that is not running, a
//! port nothing listens on) come from the daemon's resolution, not from here.

use crate::model::{Direction, Proto, Rule, Ruleset};

/// Most rules in one direction checked pairwise for shadowing.
pub const PAIRWISE_LIMIT: usize = 4096;

/// `FILE:LINE:COL: rule N ("name"): `, the prefix of every warning about `rule` (FILE the one
/// it is written in: the rules file or an included one).
pub fn at(rs: &Ruleset, rule: &Rule) -> String {
    format!(
        "{}:{}:{}: rule {} ({:?}): ",
        rs.file_of(&rule.origin).display(),
        rule.origin.line,
        rule.origin.column,
        rule.index + 1,
        rule.name
    )
}

/// The warnings for the rules of `rs`, in rule order.
pub fn lint(rs: &Ruleset) -> Vec<String> {
    let mut out = Vec::new();
    for direction in [Direction::In, Direction::Out] {
        let of: Vec<&Rule> = rs
            .rules
            .iter()
            .filter(|r| r.direction == direction)
            .collect();
        lint_direction(rs, &of, direction, &mut out);
    }
    out.sort_by_key(|(index, _)| *index);
    out.into_iter().map(|(_, w)| w).collect()
}

fn lint_direction(
    rs: &Ruleset,
    rules: &[&Rule],
    direction: Direction,
    out: &mut Vec<(u32, String)>,
) {
    let default = match direction {
        Direction::In => "[defaults] inbound",
        Direction::Out => "[defaults] outbound",
    };
    // Rules after a catch-all are reported once, at the catch-all.
    let catch_all = rules.iter().position(|r| is_catch_all(r));
    // A catch-all as the last rule is an explicit default, worth no warning.
    if let Some(i) = catch_all
        && i + 1 < rules.len()
    {
        let r = rules[i];
        let after = rules.len() - i - 1;
        out.push((
            r.index,
            format!(
                "{}matches every {direction}bound packet and connection: the {after} \
                 {direction}bound rule(s) after it never match, and {default} never applies",
                at(rs, r)
            ),
        ));
    }
    let checked = &rules[..catch_all.unwrap_or(rules.len())];
    if checked.len() > PAIRWISE_LIMIT {
        if let Some(first) = checked.first() {
            out.push((
                first.index,
                format!(
                    "{}: {} {direction}bound rules: more than {PAIRWISE_LIMIT}, so rules that \
                     earlier ones shadow were not looked for",
                    rs.source.display(),
                    checked.len()
                ),
            ));
        }
        return;
    }
    for (i, later) in checked.iter().enumerate() {
        // A rule naming a runtime set may come to match any address: it never matches only
        // when an earlier rule covers it whatever the set holds (a fail2ban rule below the
        // rule that allows SSH, say).
        let runtime = rs.runtime_sets_of(later).next().is_some();
        let widened;
        let later_any = if runtime {
            widened = Rule {
                remote: None,
                ..(*later).clone()
            };
            &widened
        } else {
            if later.remote.as_ref().is_some_and(|r| r.is_empty()) && later.names.is_empty() {
                continue; // Reported where the set is defined.
            }
            *later
        };
        let Some(earlier) = checked[..i].iter().find(|e| covers(e, later_any)) else {
            continue;
        };
        let same = earlier.action == later.action;
        let why = if runtime {
            format!(
                "never matches, whatever its runtime set holds: rule {} ({:?}, {}) matches \
                 every address for what it does and decides it first, with {}; move this \
                 rule above it",
                earlier.index + 1,
                earlier.name,
                rs.place(&earlier.origin),
                earlier.action
            )
        } else if same && covers(later, earlier) {
            format!(
                "duplicates rule {} ({:?}, {}): it matches exactly the same packets, and \
                 that rule decides them first",
                earlier.index + 1,
                earlier.name,
                rs.place(&earlier.origin)
            )
        } else if same {
            format!(
                "never matches: rule {} ({:?}, {}) matches everything it does and decides \
                 it first, the same way ({}); the rule is redundant",
                earlier.index + 1,
                earlier.name,
                rs.place(&earlier.origin),
                earlier.action
            )
        } else {
            format!(
                "never matches: rule {} ({:?}, {}) matches everything it does and decides \
                 it first, with {} instead of {}; move this rule above it if it should win",
                earlier.index + 1,
                earlier.name,
                rs.place(&earlier.origin),
                earlier.action,
                later.action
            )
        };
        out.push((later.index, format!("{}{why}", at(rs, later))));
    }
}

/// Matches every packet of its direction: any protocol, port, address and owner.
fn is_catch_all(r: &Rule) -> bool {
    r.proto == Proto::Any && r.ports.is_empty() && r.remote.is_none() && r.selector.is_everyone()
}

/// Protocols a rule can match, as a bit set: TCP, UDP, ICMP, other.
fn protos(r: &Rule) -> u8 {
    const TCP: u8 = 1;
    const UDP: u8 = 2;
    const ICMP: u8 = 4;
    const OTHER: u8 = 8;
    let written = match r.proto {
        Proto::Any if r.ports.is_empty() => TCP | UDP | ICMP | OTHER,
        Proto::Any => TCP | UDP,
        Proto::Tcp => TCP,
        Proto::Udp => UDP,
        Proto::Icmp => ICMP,
    };
    // Only TCP and UDP sockets have owners: a rule with selectors matches nothing else.
    if r.selector.is_everyone() {
        written
    } else {
        written & (TCP | UDP)
    }
}

/// Whether every packet `b` matches is matched by `a` too.
pub(crate) fn covers(a: &Rule, b: &Rule) -> bool {
    let (pa, pb) = (protos(a), protos(b));
    if pb & !pa != 0 {
        return false;
    }
    let ports = a.ports.is_empty()
        || (!b.ports.is_empty()
            && b.ports
                .iter()
                .all(|rb| a.ports.iter().any(|ra| ra.lo <= rb.lo && rb.hi <= ra.hi)));
    if !ports {
        return false;
    }
    let remote = match (&a.remote, &b.remote) {
        (None, _) => true,
        (Some(_), None) => false,
        // Every address and every name of `b` is one of `a`'s: an address can have any name.
        (Some(na), Some(nb)) => {
            nb.iter().all(|n| na.iter().any(|m| m.contains(n)))
                && b.names.iter().all(|n| a.names.iter().any(|m| m.covers(n)))
        }
    };
    if !remote {
        return false;
    }
    let (sa, sb) = (&a.selector, &b.selector);
    (sa.program.is_none() || sa.program == sb.program)
        && (sa.unit.is_none() || sa.unit == sb.unit)
        && (sa.user.is_none() || sa.user == sb.user)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail by panicking")]
mod tests {
    use std::path::Path;

    fn warnings(text: &str) -> Vec<String> {
        crate::config::parse(text, Path::new("t.toml"))
            .unwrap()
            .warnings
    }

    #[test]
    fn a_rule_shadowed_by_an_earlier_wider_one_is_reported_with_both_positions() {
        let w = warnings(
            r#"
[[rule]]
name = "web"
proto = "tcp"
port = [80, 443]
action = "allow"

[[rule]]
name = "block-https-from-bad"
proto = "tcp"
port = 443
remote = "203.0.113.0/24"
action = "reject"
"#,
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("t.toml:8:1: rule 2 (\"block-https-from-bad\"): never matches: rule 1 (\"web\", line 2)"),
            "{w:?}"
        );
        assert!(w[0].contains("with allow instead of reject"), "{w:?}");
    }

    #[test]
    fn duplicates_under_another_name_and_catch_alls_are_reported() {
        let w = warnings(
            r#"
[[rule]]
name = "ssh"
proto = "tcp"
port = 22
action = "allow"

[[rule]]
name = "ssh-again"
proto = "tcp"
port = 22
action = "allow"

[[rule]]
name = "everything"
action = "allow"

[[rule]]
name = "late"
proto = "udp"
port = 53
action = "reject"
"#,
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("rule 2 (\"ssh-again\"): duplicates rule 1"),
            "{w:?}"
        );
        assert!(
            w[1].contains("rule 3 (\"everything\"): matches every inbound packet")
                && w[1].contains("the 1 inbound rule(s) after it never match"),
            "{w:?}"
        );
    }

    /// Narrower earlier rules, other directions, other owners and partial overlaps are not
    /// shadowing: no warning may be a false alarm.
    #[test]
    fn rules_that_can_still_match_are_not_reported() {
        let w = warnings(
            r#"
[[rule]]
proto = "tcp"
port = 443
remote = "203.0.113.0/24"
action = "reject"

[[rule]]
proto = "tcp"
port = [80, 443]
action = "allow"

[[rule]]
proto = "tcp"
port = "1000-2000"
action = "allow"

[[rule]]
proto = "tcp"
port = "1500-2500"
action = "reject"

[[rule]]
proto = "any"
port = 53
action = "allow"

[[rule]]
action = "reject"
proto = "icmp"

[[rule]]
direction = "out"
proto = "tcp"
port = 443
action = "reject"

[[rule]]
proto = "tcp"
port = 9000
user = 0
action = "allow"

[[rule]]
proto = "tcp"
port = 9000
action = "reject"
"#,
        );
        assert!(w.is_empty(), "{w:?}");
    }

    /// An `any` rule with ports matches TCP and UDP only: it does not cover an ICMP rule, and
    /// a rule with an owner only matches TCP and UDP, so an `any` rule covers it.
    #[test]
    fn names_are_covered_by_the_same_name_or_a_wildcard_above_them() {
        let w = warnings(
            r#"
[[rule]]
direction = "out"
remote = ["*.example.test"]
action = "reject"
[[rule]]
name = "below the wildcard"
direction = "out"
remote = ["a.example.test", "*.b.example.test"]
action = "allow"
[[rule]]
name = "the wildcard's own name"
direction = "out"
remote = ["example.test"]
action = "allow"
[[rule]]
direction = "out"
remote = ["10.0.0.0/8"]
action = "reject"
[[rule]]
name = "an address and a name"
direction = "out"
remote = ["10.1.0.0/16", "other.test"]
action = "allow"
"#,
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("below the wildcard") && w[0].contains("never matches"),
            "{w:?}"
        );
    }

    #[test]
    fn protocol_coverage_follows_the_rules_meaning() {
        let w = warnings(
            r#"
[[rule]]
proto = "any"
port = "1-65535"
action = "allow"

[[rule]]
proto = "icmp"
action = "reject"

[[rule]]
proto = "udp"
port = 53
user = 0
action = "reject"
"#,
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("rule 3"), "{w:?}");
    }
}
