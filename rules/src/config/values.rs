//! The scalar values the sections share, each checked the same way wherever it appears:
//! durations, bounded integers, ports, addresses and networks, program paths, unit names and
//! users. The free functions return the message and leave its position to the caller.

use std::{net::IpAddr, path::PathBuf};

use ipnet::IpNet;
use toml::Spanned;

use super::{
    checker::Checker,
    raw::{RawDuration, RawInt, RawUser},
};
use crate::model::PortRange;

const MINUTE: u32 = 60;
pub(super) const HOUR: u32 = 60 * MINUTE;
pub(super) const DAY: u32 = 24 * HOUR;

impl Checker<'_> {
    /// Whole seconds of a duration, within `lo..=hi` seconds.
    pub(super) fn duration(
        &mut self,
        value: &Spanned<RawDuration>,
        key: &str,
        (lo, hi): (u32, u32),
    ) -> Option<u32> {
        let (written, secs) = match value.get_ref() {
            RawDuration::Seconds(n) => (n.to_string(), *n),
            RawDuration::Text(text) => match duration_secs(text) {
                Ok(secs) => (format!("{text:?}"), secs.into()),
                Err(problem) => {
                    self.error(Some(value.span()), format!("{key} = {text:?} {problem}"));
                    return None;
                }
            },
        };
        match u32::try_from(secs) {
            Ok(n) if (lo..=hi).contains(&n) => Some(n),
            _ => {
                self.error(
                    Some(value.span()),
                    format!(
                        "{key} = {written} is out of range ({} to {}, i.e. {lo}-{hi} seconds)",
                        short_duration(lo),
                        short_duration(hi)
                    ),
                );
                None
            }
        }
    }

    pub(super) fn bounded(
        &mut self,
        value: &Spanned<RawInt>,
        key: &str,
        lo: i64,
        hi: i64,
    ) -> Option<u32> {
        let v = value.get_ref().0;
        match u32::try_from(v) {
            Ok(n) if (i128::from(lo)..=i128::from(hi)).contains(&v) => Some(n),
            _ => {
                self.error(
                    Some(value.span()),
                    format!("{key} = {v} is out of range ({lo}-{hi})"),
                );
                None
            }
        }
    }
}

/// Seconds in a duration string (see [`RawDuration`]), possibly negative; `Err` completes
/// the sentence "KEY = "TEXT" ...".
fn duration_secs(text: &str) -> Result<i64, String> {
    let span: jiff::Span = text.trim().parse().map_err(|_| {
        r#"is not a duration; write seconds (120) or a duration such as "30s", "2m", "1h30m" or "5d""#
            .to_owned()
    })?;
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(r#"uses months or years, which have no fixed length; use days ("30d")"#.into());
    }
    // Only fails on units above weeks, excluded above.
    let duration = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("is not a usable duration ({e})"))?;
    if duration.subsec_nanos() != 0 {
        return Err("is not a whole number of seconds".into());
    }
    Ok(duration.as_secs())
}

/// A positive duration as rules.toml writes durations (`600`, `"10m"`, `"1h30m"`, `"5d"`), in
/// seconds: `fwctl set add --for`. `Err` completes the sentence "TEXT ...".
pub fn positive_duration_secs(text: &str) -> Result<u64, String> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let secs = if digits {
        i64::try_from(parse_decimal(text)).map_err(|_| "is too long".to_owned())?
    } else {
        duration_secs(text)?
    };
    u64::try_from(secs)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| "is not a positive duration".to_owned())
}

/// `86400` as `1d`, `5400` as `90m`: the largest unit that divides exactly.
pub(super) fn short_duration(secs: u32) -> String {
    for (unit, len) in [("d", DAY), ("h", HOUR), ("m", MINUTE)] {
        if secs != 0 && secs.is_multiple_of(len) {
            return format!("{}{unit}", secs / len);
        }
    }
    format!("{secs}s")
}

/// Only called on ASCII digit strings; saturates, which still reads as "out of range".
pub(super) fn parse_decimal(digits: &str) -> i128 {
    digits.bytes().fold(0i128, |acc, b| {
        acc.saturating_mul(10).saturating_add(i128::from(b - b'0'))
    })
}

pub(super) fn port_number(n: i128) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port {n} is out of range (1-65535)")),
    }
}

pub(super) fn merge_ports(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort();
    let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(range.lo) <= u32::from(last.hi) + 1 => {
                last.hi = last.hi.max(range.hi);
            }
            _ => merged.push(range),
        }
    }
    merged
}

pub(super) fn sorted_unique(mut nets: Vec<IpNet>) -> Vec<IpNet> {
    nets.sort();
    nets.dedup();
    nets
}

/// `program`: an absolute path, kept as written (it is resolved when the rules are loaded,
/// so the file need not exist yet).
pub(super) fn program_path(text: &str) -> Result<PathBuf, String> {
    const EXAMPLE: &str = r#"such as "/usr/bin/firefox""#;
    if text.is_empty() {
        return Err(format!(
            "program is empty; expected an absolute path to an executable, {EXAMPLE}"
        ));
    }
    if text.contains('\0') {
        return Err(format!("program {text:?} contains a NUL byte"));
    }
    if !text.starts_with('/') {
        return Err(format!(
            "program must be an absolute path, not {text:?}; expected the full path to the executable, {EXAMPLE}"
        ));
    }
    if text.ends_with('/') {
        return Err(format!(
            "program {text:?} ends with '/'; expected the path of an executable file, not of a directory"
        ));
    }
    if text.split('/').any(|c| c == "." || c == "..") {
        return Err(format!(
            r#"program {text:?} has a "." or ".." component; write the path without them"#
        ));
    }
    Ok(PathBuf::from(text))
}

/// `unit`: a systemd unit name, `NAME.TYPE`.
pub(super) fn unit_name(text: &str) -> Result<String, String> {
    const EXAMPLE: &str = r#"such as "nginx.service", "session-2.scope" or "user.slice""#;
    if text.is_empty() {
        return Err(format!(
            "unit is empty; expected a systemd unit name, {EXAMPLE}"
        ));
    }
    if text.contains('\0') {
        return Err(format!("unit {text:?} contains a NUL byte"));
    }
    if text.len() > 255 {
        return Err(format!(
            "unit name is {} bytes long; systemd unit names are at most 255 bytes",
            text.len()
        ));
    }
    if text.contains('/') {
        return Err(format!(
            "unit {text:?} contains '/'; expected a systemd unit name, not a path or cgroup, {EXAMPLE}"
        ));
    }
    match text.rsplit_once('.') {
        None => Err(format!(
            "unit {text:?} has no type suffix; write the full unit name, such as \"{text}.service\""
        )),
        Some((stem, suffix))
            if !stem.is_empty()
                && !suffix.is_empty()
                && suffix.bytes().all(|b| b.is_ascii_alphabetic()) =>
        {
            Ok(text.to_owned())
        }
        Some(_) => Err(format!(
            "invalid unit {text:?}: expected a systemd unit name with its type suffix, {EXAMPLE}"
        )),
    }
}

/// `user`: a uid, or a user name resolved to its uid now.
pub(super) fn user_id(raw: &RawUser) -> Result<u32, String> {
    const RANGE: &str = "a uid is 0-4294967294";
    match raw {
        RawUser::Uid(uid) if *uid == i128::from(u32::MAX) => Err(format!(
            "user {uid} is not a valid uid (it is (uid_t) -1, reserved); {RANGE}"
        )),
        RawUser::Uid(uid) => {
            u32::try_from(*uid).map_err(|_| format!("user {uid} is out of range; {RANGE}"))
        }
        RawUser::Name(name) if name.is_empty() => {
            Err(r#"user is empty; expected a user name ("www-data") or a uid (33)"#.to_owned())
        }
        RawUser::Name(name) if name.contains('\0') => {
            Err(format!("user {name:?} contains a NUL byte"))
        }
        RawUser::Name(name) => match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => Ok(user.uid.as_raw()),
            Ok(None) if name.bytes().all(|b| b.is_ascii_digit()) => Err(format!(
                "user {name:?} does not exist; to give a uid, write it as a number without quotes: user = {name}"
            )),
            Ok(None) => Err(format!(
                "user {name:?} does not exist on this system; create it first, or give its numeric uid instead (user = 1000)"
            )),
            Err(e) => Err(format!(
                "user {name:?} cannot be looked up: {e}; give its numeric uid instead (user = 1000)"
            )),
        },
    }
}

pub(super) fn host_bits_warning(text: &str, trunc: IpNet) -> String {
    format!("{text:?} has host bits set; it is read as {trunc}")
}

/// A CIDR or a plain address (which becomes a /32 or /128). Host bits are kept: the caller
/// clears them and warns.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    parse_net_quoting(text, true)
}

/// [`parse_net`]; with `quote` false, messages describe the problem without quoting any of
/// `text`.
pub(super) fn parse_net_quoting(text: &str, quote: bool) -> Result<IpNet, String> {
    // "invalid network \"TEXT\"" or just "invalid network".
    let invalid = |noun: &str| {
        if quote {
            format!("invalid {noun} {text:?}")
        } else {
            format!("invalid {noun}")
        }
    };
    let Some((addr, len)) = text.split_once('/') else {
        return text.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            format!(
                "{}: not an IPv4 or IPv6 address or network",
                invalid("address")
            )
        });
    };
    let addr: IpAddr = addr.parse().map_err(|_| {
        let part = if quote {
            format!("{addr:?}")
        } else {
            "the part before '/'".to_string()
        };
        format!(
            "{}: {part} is not an IPv4 or IPv6 address",
            invalid("network")
        )
    })?;
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let family = if max == 32 { "IPv4" } else { "IPv6" };
    let prefix = if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) {
        parse_decimal(len)
    } else {
        let len = if quote {
            format!(" {len:?}")
        } else {
            String::new()
        };
        return Err(format!(
            "{}: prefix length{len} is not a number",
            invalid("network")
        ));
    };
    match u8::try_from(prefix) {
        Ok(prefix) if prefix <= max => {
            IpNet::new(addr, prefix).map_err(|e| format!("{}: {e}", invalid("network")))
        }
        _ => {
            let shown = if quote {
                format!(" {prefix}")
            } else {
                String::new()
            };
            Err(format!(
                "{}: prefix length{shown} is out of range for {family} (0-{max})",
                invalid("network")
            ))
        }
    }
}
