//! Names in `remote`: `"debian.org"` (that name) and `"*.debian.org"` (any name below it, not
//! `debian.org` itself). An outbound rule naming them matches a destination address the host
//! saw in a DNS answer to a question for a matching name (`firewall_common::dns` says how the
//! datapath learns it); the oracle asks [`Names`] what an address was seen under. An inbound
//! rule's names (no wildcards) are looked up by the daemon instead, and stand for the
//! addresses they looked up to (`Ruleset::with_lookups`, `policy::Selectors::addresses`).
//!
//! Written as users write them: case does not matter, a trailing dot is allowed, IDNA names in
//! their ASCII form (`xn--bcher-kva.example`). Refused: anything that is not a host name
//! (labels of letters, digits, `-` and `_`, 1 to 63 bytes, at most 253 bytes in all), a `*`
//! anywhere but as the whole first label, and wildcards deeper than the datapath keeps
//! ([`WILDCARD_DEPTH`] labels after the `*`).

use std::{fmt, net::IpAddr};

use firewall_common::dns::WILDCARD_DEPTH;
use serde::Serialize;

/// The most names the inbound rules may name in all: the daemon looks each up (A and AAAA)
/// when the rules load and again when its records expire, so a file cannot make it send a
/// flood of queries, or wait on one.
pub const MAX_LOOKUPS: usize = 256;

/// A name or wildcard of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NamePattern {
    /// `*.name`: any name below `name`.
    pub wildcard: bool,
    /// Lower case, without a trailing dot; a wildcard's suffix, without the `*.`.
    pub name: String,
}

impl NamePattern {
    /// Parses a `remote` entry that is not an address. The error says what is wrong, quoting
    /// the entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.is_ascii() {
            return Err(format!(
                "{text:?}: names are written in their ASCII form (an internationalised name as \
                 its xn-- form, as `idn2` prints it)"
            ));
        }
        let lower = text.to_ascii_lowercase();
        let trimmed = lower.strip_suffix('.').unwrap_or(&lower);
        let (wildcard, name) = match trimmed.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        if name.contains('*') {
            return Err(format!(
                "{text:?}: '*' is only allowed as a whole first label (\"*.example.org\": any \
                 name below example.org)"
            ));
        }
        if name.is_empty() {
            return Err(format!("{text:?} is not a name"));
        }
        if name.len() > 253 {
            return Err(format!("{text:?}: a name is at most 253 characters"));
        }
        let mut labels = 0;
        for label in name.split('.') {
            labels += 1;
            if label.is_empty() || label.len() > 63 {
                return Err(format!(
                    "{text:?}: each label (between dots) has 1 to 63 characters"
                ));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            {
                return Err(format!(
                    "{text:?}: {c:?} cannot be in a host name (letters, digits, '-' and '_')"
                ));
            }
        }
        if wildcard && labels > WILDCARD_DEPTH {
            return Err(format!(
                "{text:?}: a wildcard names at most {WILDCARD_DEPTH} labels after the '*'"
            ));
        }
        if name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!(
                "{text:?} is neither an address nor a name (a name's last label is not a number)"
            ));
        }
        Ok(Self {
            wildcard,
            name: name.to_owned(),
        })
    }

    /// Whether `name` (lower case, no trailing dot, as [`Names`] gives it) matches.
    pub fn matches(&self, name: &str) -> bool {
        if self.wildcard {
            name.len() > self.name.len() + 1
                && name.ends_with(self.name.as_str())
                && name.as_bytes()[name.len() - self.name.len() - 1] == b'.'
        } else {
            name == self.name
        }
    }
}

impl NamePattern {
    /// Whether every name `other` matches, this matches too.
    pub fn covers(&self, other: &NamePattern) -> bool {
        match (self.wildcard, other.wildcard) {
            (false, false) => self.name == other.name,
            (false, true) => false,
            // `*.s` covers `n` below `s`, and `*.t` for `t` equal to or below `s`.
            (true, false) => self.matches(&other.name),
            (true, true) => other.name == self.name || self.matches(&other.name),
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// What the oracle knows of the names addresses were seen under (in the daemon: the
/// datapath's table of DNS answers; in tests: what the test's DNS server answered).
pub trait Names {
    /// The names `addr` was seen under and that have not expired: lower case, no trailing dot.
    fn names_of(&self, addr: IpAddr) -> Vec<String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> NamePattern {
        NamePattern::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn names_are_read_as_users_write_them() {
        assert_eq!(p("Debian.ORG.").to_string(), "debian.org");
        assert_eq!(p("*.debian.org").to_string(), "*.debian.org");
        assert!(p("*.debian.org").wildcard);
        assert_eq!(p("xn--bcher-kva.example").name, "xn--bcher-kva.example");
        assert_eq!(p("_dmarc.example.org").name, "_dmarc.example.org");
        assert_eq!(p("intranet").name, "intranet");
    }

    #[test]
    fn what_is_not_a_name_is_refused() {
        for bad in [
            "bücher.example",
            "a.*.example",
            "*",
            "*.",
            "a..b",
            ".a",
            "a b.example",
            "10.0.0.300",
            "1.2.3.4.5",
            "*.a.b.c.d.e.f.g.h.i",
            &format!("{}.example", "a".repeat(64)),
            &format!("{}example", "a.".repeat(127)),
        ] {
            assert!(NamePattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(NamePattern::parse("*.a.b.c.d.e.f.g.h").is_ok());
    }

    #[test]
    fn a_wildcard_matches_the_names_below_only() {
        let w = p("*.debian.org");
        assert!(w.matches("deb.debian.org"));
        assert!(w.matches("a.b.debian.org"));
        assert!(!w.matches("debian.org"));
        assert!(!w.matches("notdebian.org"));
        assert!(!w.matches("org"));
        let e = p("debian.org");
        assert!(e.matches("debian.org"));
        assert!(!e.matches("deb.debian.org"));
    }
}
