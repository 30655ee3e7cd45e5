//! `fwctl explain`, `fwctl ports` and `[[assert]]` on this host: the questions of
//! [`rules::explain`] asked with the selectors resolved here, and their answers as the control
//! protocol carries them. Both the daemon (rules in force) and `fwctl` (a file given with
//! `--config`, `fwctl check`) answer through this file, so the two cannot differ.

use std::{net::IpAddr, path::PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use firewall_common::identity::Owner;
use rules::{
    explain::{self, Region},
    model::{Action, Direction, PacketProto, Probe, ProbeError, Rule, Ruleset, Selector},
    policy::Policy,
};

use crate::host::selectors::Resolved;

/// What `fwctl explain` asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    pub direction: Direction,
    /// `tcp`, `udp` or `icmp`.
    pub proto: String,
    pub remote: IpAddr,
    /// Local port inbound, destination port outbound; absent for ICMP.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub program: Option<PathBuf>,
    #[serde(default)]
    pub unit: Option<String>,
    /// A uid (fwctl resolves names).
    #[serde(default)]
    pub user: Option<u32>,
}

impl Query {
    /// The probe this query describes, or why it describes none.
    pub fn probe(&self) -> Result<Probe, String> {
        let proto = match self.proto.as_str() {
            "tcp" => PacketProto::Tcp,
            "udp" => PacketProto::Udp,
            "icmp" => PacketProto::Icmp,
            other => return Err(format!("unknown protocol {other:?}: tcp, udp or icmp")),
        };
        let owner = Selector {
            program: self.program.clone(),
            unit: self.unit.clone(),
            user: self.user,
        };
        Probe::new(self.direction, proto, self.port.unwrap_or(0), owner).map_err(|e| match e {
            ProbeError::Port if proto == PacketProto::Icmp => "icmp has no port".into(),
            ProbeError::Proto | ProbeError::Port => {
                format!("{} needs a port (1-65535)", self.proto)
            }
            ProbeError::OutboundIcmp => "outbound ICMP is not judged by the rules (outbound \
                                         rules are about TCP and UDP sockets)"
                .into(),
            ProbeError::IcmpOwner => {
                "ICMP has no socket owner: --program, --unit and --user do not go with icmp".into()
            }
        })
    }
}

/// A rule as an answer names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// 1-based, as `fwctl list` numbers rules.
    pub number: u32,
    pub name: String,
    pub line: usize,
    /// The included file the rule is in; absent for the rules file's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub action: Action,
}

impl RuleRef {
    fn of(rs: &Ruleset, r: &Rule) -> Self {
        Self {
            number: r.index + 1,
            name: r.name.to_string(),
            line: r.origin.line,
            file: rs.included_name(&r.origin),
            action: r.action,
        }
    }
}

/// `fwctl explain`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainData {
    /// The rules file the answer comes from.
    pub source: String,
    /// What was asked, as one line (`in tcp 22 from 203.0.113.7`).
    pub question: String,
    pub action: Action,
    /// The deciding rule's number; `null` when a default (or a fixed behaviour) decided.
    pub rule: Option<u32>,
    /// The deciding rule's name, `[defaults] inbound`/`outbound`, or `fixed`.
    pub name: String,
    /// The deciding rule's line in the file.
    pub line: Option<usize>,
    /// The included file the deciding rule is in; absent for the rules file's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// When the packet is decided before the rules: why.
    pub fixed: Option<String>,
    /// Rules that match too, after the winner: they never decide this packet.
    pub shadowed: Vec<RuleRef>,
    pub notes: Vec<String>,
    /// Tracked connections between this host and the remote address on that port (from the
    /// daemon only): their packets pass whatever the rules say.
    #[serde(default)]
    pub tracked: Vec<String>,
    /// Outbound: the names the destination has (learnt from DNS answers; from the daemon
    /// only), which rules naming names match it by.
    #[serde(default)]
    pub names: Vec<String>,
}

/// Answers `q` under `ruleset`, its selectors resolved as `resolved`, for an address without
/// names (`fwctl explain --config FILE`: the names addresses have are the running daemon's).
pub fn explain(ruleset: &Ruleset, resolved: &Resolved, q: &Query) -> Result<ExplainData, String> {
    let mut data = explain_named(ruleset, resolved, q, None)?;
    if q.direction == Direction::Out && ruleset.reads_names() {
        data.notes.push(
            "the rules name names, and the names an address has are known to the running \
             daemon only (ask it: fwctl explain without --config): this answer is for the \
             address without a name"
                .into(),
        );
    }
    Ok(data)
}

/// [`explain`] for an address that has the names `names` gives (outbound rules that name
/// names match it by them), as the daemon answers it.
pub fn explain_named(
    ruleset: &Ruleset,
    resolved: &Resolved,
    q: &Query,
    names: Option<&dyn rules::names::Names>,
) -> Result<ExplainData, String> {
    let probe = q.probe()?;
    let mut policy = Policy::with_selectors(ruleset, resolved);
    let mut known = Vec::new();
    if let Some(names) = names
        && q.direction == Direction::Out
    {
        policy = policy.with_names(names);
        known = names.names_of(q.remote);
    }
    let mut notes = Vec::new();
    let owner = explain::owner_of(&probe.owner, Some(resolved), &mut notes);
    let e = explain::explain(&policy, ruleset, &probe, q.remote, owner.as_ref());
    notes.extend(e.notes);
    let side = match q.direction {
        Direction::In => "from",
        Direction::Out => "to",
    };
    let rule = e.rule.map(|i| &ruleset.rules[i as usize]);
    Ok(ExplainData {
        source: ruleset.source.display().to_string(),
        question: format!("{probe} {side} {}", q.remote),
        action: e.action,
        rule: rule.map(|r| r.index + 1),
        name: match (rule, &e.fixed) {
            (Some(r), _) => r.name.to_string(),
            (None, Some(_)) => "fixed".into(),
            (None, None) => format!("[defaults] {}bound", q.direction),
        },
        line: rule.map(|r| r.origin.line),
        file: rule.and_then(|r| ruleset.included_name(&r.origin)),
        fixed: e.fixed,
        shadowed: e
            .shadowed
            .iter()
            .map(|&i| RuleRef::of(ruleset, &ruleset.rules[i as usize]))
            .collect(),
        notes,
        tracked: Vec::new(),
        names: known,
    })
}

/// `ruleset`'s selectors resolved on this host as the daemon would (for `fwctl` working from
/// a file): units are searched under `[daemon] cgroup`, else the cgroup2 mount.
pub fn resolve_here(ruleset: &Ruleset) -> Resolved {
    let cgroup_root = ruleset
        .daemon
        .cgroup
        .clone()
        .or_else(|| crate::host::cgroups::mount().ok())
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
    Resolved::resolve(ruleset, &cgroup_root)
}

/// Checks `ruleset`'s `[[assert]]` entries; every one that does not hold, as a located message.
pub fn broken_assertions(ruleset: &Ruleset, resolved: &Resolved) -> Vec<String> {
    explain::check_assertions(ruleset, resolved)
        .iter()
        .map(|b| b.message(ruleset))
        .collect()
}

/// Refuses rules whose `[[assert]]` entries do not hold (at start and at every reload), with
/// every broken one as a located message.
pub fn refuse_broken(ruleset: &Ruleset, resolved: &Resolved) -> anyhow::Result<()> {
    let broken = broken_assertions(ruleset, resolved);
    if broken.is_empty() {
        return Ok(());
    }
    anyhow::bail!("{}", broken.join("\n"))
}

/// Who may reach a socket under the rules, for one address family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exposure {
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// Every address of the family is allowed.
    pub everyone: bool,
    /// No address is allowed.
    pub nobody: bool,
    /// The allowed networks, each with the rule that allows it (at most [`MAX_SHOWN`]).
    pub allowed: Vec<String>,
    /// How many allowed networks were left out of `allowed`.
    #[serde(default)]
    pub more: usize,
    /// What the others get (`stealth by [defaults] inbound`); when everyone is allowed, the
    /// rules (or default) that allow them.
    pub others: Vec<String>,
}

/// Most networks listed per family in `fwctl ports`.
pub const MAX_SHOWN: usize = 8;

/// Who may reach a socket listening on `proto`/`port` owned by `owner`, in `family`.
pub fn exposure(
    ruleset: &Ruleset,
    resolved: &Resolved,
    proto: PacketProto,
    port: u16,
    owner: Option<&Owner>,
    v4: bool,
) -> Exposure {
    let policy = Policy::with_selectors(ruleset, resolved);
    let probe = Probe {
        direction: Direction::In,
        proto,
        port,
        owner: Selector::default(),
    };
    let [all4, all6] = explain::everywhere();
    let regions = explain::regions(
        &policy,
        ruleset,
        &probe,
        owner,
        if v4 { all4 } else { all6 },
    );
    let by = |r: &Region| match r.decision.rule {
        Some(i) => {
            let rule = &ruleset.rules[i as usize];
            format!("rule {} {:?}", rule.index + 1, rule.name)
        }
        None => "[defaults] inbound".into(),
    };
    let mut allowed = Vec::new();
    let mut others: Vec<String> = Vec::new();
    for r in &regions {
        if r.decision.action == Action::Allow {
            for net in networks(r.first, r.last) {
                allowed.push(format!("{net} ({})", by(r)));
            }
        } else {
            let line = format!("{} by {}", r.decision.action, by(r));
            if !others.contains(&line) {
                others.push(line);
            }
        }
    }
    let everyone = others.is_empty();
    if everyone {
        // Who allows it, for the one-line summary.
        for r in &regions {
            let line = format!("allow by {}", by(r));
            if !others.contains(&line) {
                others.push(line);
            }
        }
    }
    let nobody = allowed.is_empty();
    let more = allowed.len().saturating_sub(MAX_SHOWN);
    allowed.truncate(MAX_SHOWN);
    if everyone {
        allowed.clear();
    }
    Exposure {
        family: if v4 { "ipv4" } else { "ipv6" }.into(),
        everyone,
        nobody,
        allowed,
        more: if everyone { 0 } else { more },
        others,
    }
}

/// The fewest networks that cover `first..=last` exactly.
fn networks(first: IpAddr, last: IpAddr) -> Vec<IpNet> {
    match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => ipnet::Ipv4Subnets::new(a, b, 0).map(IpNet::V4).collect(),
        (IpAddr::V6(a), IpAddr::V6(b)) => ipnet::Ipv6Subnets::new(a, b, 0).map(IpNet::V6).collect(),
        _ => Vec::new(),
    }
}

/// A listening socket as `fwctl ports` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortView {
    /// `tcp` or `udp`.
    pub proto: String,
    /// The bound address and port (`0.0.0.0:22`, `[::]:22`).
    pub local: String,
    pub port: u16,
    pub pid: u32,
    /// The process's executable, as `/proc/PID/exe` shows it.
    pub program: Option<String>,
    /// The socket's owner (a user name, or the uid).
    pub user: String,
    /// The systemd unit the process runs in, when it runs in one.
    pub unit: Option<String>,
    /// Bound to a loopback address: not reachable from the network at all (the firewall does
    /// not filter loopback).
    pub loopback_only: bool,
    /// Who may reach it, per address family it receives.
    pub exposure: Vec<Exposure>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PortsData {
    pub sockets: Vec<PortView>,
    /// Bound sockets whose process was not found (see `host::listeners`).
    pub unowned: usize,
}

/// Every listening TCP socket and bound UDP socket of this network namespace, with its owner
/// and exposure under `ruleset`.
pub fn ports(ruleset: &Ruleset, resolved: &Resolved) -> anyhow::Result<PortsData> {
    use crate::host::{owners::OwnerNames, procfs};
    let report = crate::host::listeners::bound_sockets_report()?;
    let mut names = OwnerNames::new(std::iter::empty());
    let mut sockets = Vec::new();
    for s in report.sockets {
        let k = s.key;
        let mapped = IpAddr::V6(std::net::Ipv6Addr::from(k.addr));
        let local = firewall_common::addr::canonical(mapped);
        let (v4, v6) = match (k.family, local) {
            (6, IpAddr::V6(a)) if a.is_unspecified() => (true, true),
            (_, IpAddr::V4(_)) => (true, false),
            _ => (false, true),
        };
        let (proto, name) = match k.proto {
            6 => (PacketProto::Tcp, "tcp"),
            _ => (PacketProto::Udp, "udp"),
        };
        let loopback_only = local.is_loopback();
        let mut exposures = Vec::new();
        if !loopback_only {
            for (wanted, is_v4) in [(v4, true), (v6, false)] {
                if wanted {
                    let mut e = exposure(ruleset, resolved, proto, k.port, Some(&s.owner), is_v4);
                    if is_v4 && v6 {
                        e.family = "ipv4 (unless the socket is IPv6-only)".into();
                    }
                    exposures.push(e);
                }
            }
        }
        sockets.push(PortView {
            proto: name.into(),
            local: std::net::SocketAddr::new(local, k.port).to_string(),
            port: k.port,
            pid: s.pid,
            program: procfs::exe_link(s.pid),
            user: names.user(s.owner.uid),
            unit: procfs::unit_of_pid(s.pid),
            loopback_only,
            exposure: exposures,
        });
    }
    sockets.sort_by(|a, b| (a.port, &a.proto, &a.local).cmp(&(b.port, &b.proto, &b.local)));
    Ok(PortsData {
        sockets,
        unowned: report.unowned,
    })
}

/// Warnings about inbound `allow` rules for ports no socket of this network namespace is bound
/// to now (a typo in the port, a service not installed): `FILE:LINE:COL: rule N ...`. Empty
/// when the sockets cannot be listed.
pub fn listener_warnings(ruleset: &Ruleset) -> Vec<String> {
    use crate::host::sock_diag::{SockProto, bound_inet_sockets};
    let Ok(bound) = bound_inet_sockets() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for r in ruleset.inbound() {
        if r.action != Action::Allow || r.ports.is_empty() {
            continue;
        }
        let listens = |proto: SockProto| {
            bound
                .iter()
                .any(|s| s.proto == proto && r.ports.iter().any(|p| p.contains(s.local.port())))
        };
        let (tcp, udp) = match r.proto {
            rules::model::Proto::Tcp => (true, false),
            rules::model::Proto::Udp => (false, true),
            _ => (true, true),
        };
        if (tcp && listens(SockProto::Tcp)) || (udp && listens(SockProto::Udp)) {
            continue;
        }
        let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
        out.push(format!(
            "{}nothing listens on {} port {} now: the rule opens a port no program accepts \
             connections on (yet)",
            rules::lint::at(ruleset, r),
            match (tcp, udp) {
                (true, false) => "tcp",
                (false, true) => "udp",
                _ => "tcp or udp",
            },
            ports.join(", ")
        ));
    }
    out
}

/// Why `rules` would lock `caller` out: new TCP connections from its address to its SSH
/// server's port (owned by `owner`) would be denied. `None`: they would be allowed.
pub fn lockout(
    rules: &Ruleset,
    resolved: &Resolved,
    caller: &crate::control::Caller,
    owner: Option<&Owner>,
    recheck: bool,
) -> Option<String> {
    let d = Policy::with_selectors(rules, resolved).decide_for(
        &rules::model::PacketMeta {
            remote: firewall_common::addr::canonical(caller.remote),
            proto: PacketProto::Tcp,
            local_port: caller.local_port,
        },
        owner,
    );
    if d.action == Action::Allow {
        return None;
    }
    let by = d
        .rule
        .map(|i| {
            let r = &rules.rules[i as usize];
            format!("rule {} {:?}, {}", i + 1, r.name, rules.place(&r.origin))
        })
        .unwrap_or_else(|| "[defaults] inbound".into());
    Some(format!(
        "LOCKOUT: these rules would {} new SSH connections from {} to port {} (the address and \
         port of the session this command runs over; by {by}). {}",
        d.action,
        caller.remote,
        caller.local_port,
        if recheck {
            "With --recheck, this session would be ended at once."
        } else {
            "This session stays up as a tracked connection, but once it ends no new one could \
             be opened."
        }
    ))
}

/// The SSH connection this process runs over: `SSH_CONNECTION` in its environment (set but
/// empty: none), or else in the nearest ancestor's that has it (`sudo` clears the variable, the login shell above keeps it;
/// reading another process's environment needs root or the same user).
pub fn ssh_caller() -> Option<crate::control::Caller> {
    use crate::control::Caller;
    // Set, even empty, in fwctl's own environment: that is the answer (empty: no SSH session,
    // which is also how scripts and tests turn the check off).
    if let Some(v) = std::env::var_os("SSH_CONNECTION") {
        return Caller::from_ssh_connection(&v.to_string_lossy());
    }
    let mut pid = std::os::unix::process::parent_id();
    for _ in 0..64 {
        if pid <= 1 {
            return None;
        }
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            let found = env
                .split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(b"SSH_CONNECTION="))
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(Caller::from_ssh_connection);
            if found.is_some() {
                return found;
            }
        }
        pid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                // `PID (COMM) STATE PPID ...`: COMM may hold spaces and parentheses.
                let rest = &s[s.rfind(')')? + 1..];
                rest.split_whitespace().nth(1)?.parse().ok()
            })?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::Query;
    use rules::model::Direction;

    fn query(direction: Direction, proto: &str, port: Option<u16>, user: Option<u32>) -> Query {
        Query {
            direction,
            proto: proto.into(),
            remote: "203.0.113.7".parse().expect("address"),
            port,
            program: None,
            unit: None,
            user,
        }
    }

    /// `fwctl explain` refuses what the rules never judge, saying why in its own terms.
    #[test]
    fn only_what_the_rules_judge_can_be_explained() {
        let err = |q: Query| q.probe().expect_err("refused");
        assert!(
            query(Direction::In, "tcp", Some(22), Some(0))
                .probe()
                .is_ok()
        );
        assert!(query(Direction::In, "icmp", None, None).probe().is_ok());
        assert_eq!(
            err(query(Direction::In, "tcp", None, None)),
            "tcp needs a port (1-65535)"
        );
        assert_eq!(
            err(query(Direction::In, "icmp", Some(7), None)),
            "icmp has no port"
        );
        assert!(err(query(Direction::Out, "icmp", None, None)).starts_with("outbound ICMP"));
        assert!(
            err(query(Direction::In, "icmp", None, Some(0)))
                .starts_with("ICMP has no socket owner")
        );
        assert!(err(query(Direction::In, "sctp", Some(1), None)).starts_with("unknown protocol"));
    }
}
