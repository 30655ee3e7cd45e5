//! The names the datapath learnt from DNS answers, seen from the daemon: what `fwctl dns`
//! lists, and the names `fwctl explain` takes into account for an address. It reads the
//! pinned `RESOLVED` and `SEEN_NAMES` (`firewall_common::dns` says what they hold) and writes
//! nothing: the kernel alone decides what a name is.
//!
//! A name's labels may hold any byte (they come from the wire). They are shown in DNS's
//! presentation form with every byte other than a letter, a digit, `-` and `_` written `\DDD`
//! (a dot inside a label too), so a name is always one line of printable ASCII whose dots are
//! its label separators: that text is what the oracle's `Names` gives, and a rule's name (only
//! letters, digits, `-`, `_`) can match it exactly where the kernel's keys do.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr, path::Path};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use firewall_common::{
    addr,
    dns::{Resolved, SeenName},
    maps,
};

/// One name an address has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    /// Presentation form (see above).
    pub name: String,
    /// CLOCK_MONOTONIC ns.
    pub expires_ns: u64,
}

/// The pinned name tables.
pub struct NameTables {
    resolved: HashMap<MapData, [u8; 16], Resolved>,
    seen: HashMap<MapData, u64, SeenName>,
}

impl NameTables {
    /// Opens the pinned tables (they exist once a generation has been loaded).
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let open = |name: &str| crate::kernel::pins::open_pinned(pin_dir, name);
        Ok(Self {
            resolved: HashMap::try_from(open(maps::RESOLVED)?)
                .context("RESOLVED has an unexpected layout")?,
            seen: HashMap::try_from(open(maps::SEEN_NAMES)?)
                .context("SEEN_NAMES has an unexpected layout")?,
        })
    }

    fn name(&self, key: u64) -> Option<String> {
        self.seen.get(&key, 0).ok().map(|s| present(&s))
    }

    /// The names `ip` has at `now` (not expired), the latest expiry first.
    pub fn names_of(&self, ip: IpAddr, now: u64) -> Vec<Known> {
        let Ok(r) = self.resolved.get(&addr::mapped(ip), 0) else {
            return Vec::new();
        };
        let mut out: Vec<Known> = r
            .names
            .iter()
            .filter(|n| n.name != 0 && n.expires >= now)
            .filter_map(|n| {
                Some(Known {
                    name: self.name(n.name)?,
                    expires_ns: n.expires,
                })
            })
            .collect();
        out.sort_by_key(|k| std::cmp::Reverse(k.expires_ns));
        out
    }

    /// Every name that some address has at `now`: name -> (address, expiry), by name.
    pub fn all(&self, now: u64) -> BTreeMap<String, Vec<(IpAddr, u64)>> {
        let mut out: BTreeMap<String, Vec<(IpAddr, u64)>> = BTreeMap::new();
        for (a, r) in self.resolved.iter().filter_map(Result::ok) {
            for n in r.names.iter().filter(|n| n.name != 0 && n.expires >= now) {
                if let Some(name) = self.name(n.name) {
                    out.entry(name)
                        .or_default()
                        .push((addr::unmapped(a), n.expires));
                }
            }
        }
        for v in out.values_mut() {
            v.sort();
        }
        out
    }
}

/// The oracle's view of the tables at one instant.
pub struct NamesAt<'a> {
    pub tables: &'a NameTables,
    pub now: u64,
}

impl rules::names::Names for NamesAt<'_> {
    fn names_of(&self, addr: IpAddr) -> Vec<String> {
        self.tables
            .names_of(addr, self.now)
            .into_iter()
            .map(|k| k.name)
            .collect()
    }
}

/// A name's labels (as `SEEN_NAMES` holds them: length, bytes) in presentation form.
pub fn present(seen: &SeenName) -> String {
    let text = &seen.text[..(seen.len as usize).min(seen.text.len())];
    let mut labels = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let l = usize::from(text[i]);
        let end = (i + 1 + l).min(text.len());
        labels.push(&text[i + 1..end]);
        i = end;
    }
    let mut out = String::new();
    for (n, label) in labels.iter().enumerate() {
        if n > 0 {
            out.push('.');
        }
        for &b in *label {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                out.push(b as char);
            } else {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use firewall_common::dns::{NAME_TEXT, WILDCARD_DEPTH};

    fn seen(wire: &[u8]) -> SeenName {
        let mut text = [0u8; NAME_TEXT];
        text[..wire.len()].copy_from_slice(wire);
        SeenName {
            suffixes: [0; WILDCARD_DEPTH],
            count: 0,
            len: wire.len() as u32,
            text,
        }
    }

    #[test]
    fn names_are_shown_as_one_line_of_printable_ascii() {
        assert_eq!(
            present(&seen(b"\x03www\x07example\x04test")),
            "www.example.test"
        );
        // A dot inside a label, a space, a newline, an escape: escaped, so the dots left are
        // the separators and nothing reaches a terminal raw.
        assert_eq!(
            present(&seen(b"\x07a.b c\n\x1b\x04test")),
            "a\\046b\\032c\\010\\027.test"
        );
        // A length past the text ends the name there.
        assert_eq!(present(&seen(b"\x03ab")), "ab");
    }
}
