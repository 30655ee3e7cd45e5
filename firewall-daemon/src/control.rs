//! The control protocol between `fwctl` and the daemon: one JSON request line, one JSON response
//! line, over a Unix stream socket. Both sides use these types, so they cannot disagree.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use ipnet::IpNet;
use rules::model::{Action, Defaults, Direction, PortRange, Proto, Rule, Ruleset, Selector};

/// Longest request line the daemon reads; anything longer is refused.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    List,
    Status,
    Reload {
        /// Also re-judge tracked inbound flows under the new rules and end those now denied.
        #[serde(default)]
        recheck: bool,
        /// Change nothing; answer what would change.
        #[serde(default)]
        dry_run: bool,
        /// Roll back to the rules in force now unless `confirm` arrives within this many
        /// seconds.
        #[serde(default)]
        confirm_secs: Option<u64>,
        /// Reload even if the new rules would deny `caller`'s new connections.
        #[serde(default)]
        force: bool,
        /// The SSH connection the request is made over, when there is one.
        #[serde(default)]
        caller: Option<Caller>,
        /// With `dry_run`: another rules file to compare with the rules in force (root only).
        #[serde(default)]
        file: Option<PathBuf>,
    },
    /// Keep the rules a reload with `confirm_secs` applied.
    Confirm,
    Conns,
    /// The names the datapath learnt from DNS answers (`fwctl dns`).
    Dns,
    Explain(crate::explain::Query),
    Ports,
    /// Kernel tracing on or off (`fwctl debug on|off`): the rules in force are loaded again
    /// with the programs' trace messages kept or removed.
    Debug {
        on: bool,
    },
    /// Stream decision (or, with `conns`, connection) events: after the answer, one
    /// [`crate::decision_log::MonitorLine`] per line until the client goes away.
    Monitor {
        #[serde(default)]
        filter: crate::decision_log::MonitorFilter,
    },
    /// `fwctl set add`: members into a runtime set, for `for_secs` or until deleted.
    SetAdd {
        set: String,
        members: Vec<String>,
        #[serde(default)]
        for_secs: Option<u64>,
        /// Add them even if they break an `[[assert]]` or would lock `caller` out.
        #[serde(default)]
        force: bool,
        #[serde(default)]
        caller: Option<Caller>,
    },
    /// `fwctl set del`: members out of a runtime set.
    SetDel {
        set: String,
        members: Vec<String>,
    },
    /// `fwctl set flush`: every member out of a runtime set.
    SetFlush {
        set: String,
    },
    /// `fwctl set list`: the runtime sets (or one) and their members.
    SetList {
        #[serde(default)]
        set: Option<String>,
    },
}

/// The answer to `fwctl set add`, `del` and `flush`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetData {
    pub set: String,
    /// Members that were not in the set.
    pub added: Vec<String>,
    /// Members that were, now with the new expiry.
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    /// Members asked to be removed that were not in the set.
    pub absent: Vec<String>,
    /// Tracked connections of the new members that the rules now deny, ended.
    pub ended: Vec<String>,
    /// Members of the set now.
    pub members: usize,
    /// The tables had no room: the rules in force were loaded again, sized for the members.
    pub regenerated: bool,
}

/// One runtime set in `fwctl set list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetView {
    pub name: String,
    /// The rules naming it (`NUMBER "NAME"`).
    pub rules: Vec<String>,
    pub members: Vec<SetMember>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMember {
    pub member: String,
    /// Seconds since the epoch; `None`: until deleted.
    pub expires: Option<u64>,
    pub left_secs: Option<u64>,
}

/// The SSH connection `fwctl` runs over (from `SSH_CONNECTION`): new connections like it must
/// stay possible under the rules a reload applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The SSH client's address.
    pub remote: std::net::IpAddr,
    /// The SSH server's address and port on this host.
    pub local: std::net::IpAddr,
    pub local_port: u16,
}

impl Caller {
    /// Parses `SSH_CONNECTION`: `CLIENT_ADDR CLIENT_PORT SERVER_ADDR SERVER_PORT`.
    pub fn from_ssh_connection(value: &str) -> Option<Self> {
        let f: Vec<&str> = value.split_whitespace().collect();
        let [remote, _, local, port] = f[..] else {
            return None;
        };
        // A zone suffix (fe80::1%eth0) is not part of the address.
        let addr = |s: &str| s.split('%').next().and_then(|a| a.parse().ok());
        Some(Self {
            remote: addr(remote)?,
            local: addr(local)?,
            local_port: port.parse().ok().filter(|p| *p != 0)?,
        })
    }
}

/// A reload waiting for `fwctl confirm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingConfirm {
    /// When the rules are put back (RFC 3339, UTC).
    pub deadline: String,
    pub secs_left: u64,
    /// The generation that will be put back.
    pub rollback_to_generation: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Response {
    pub fn ok(data: impl Serialize) -> Self {
        match serde_json::to_value(data) {
            Ok(v) => Self {
                ok: true,
                error: None,
                data: Some(v),
            },
            Err(e) => Self::err(format!("encoding the response: {e}")),
        }
    }

    pub fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            data: None,
        }
    }
}

/// A rule as `fwctl list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    /// 1-based position in the file.
    pub number: u32,
    pub name: String,
    pub direction: Direction,
    pub proto: Proto,
    /// Empty: every port.
    pub ports: Vec<String>,
    /// Empty: any remote address.
    pub remote: Vec<String>,
    /// `program` selector, the path as written. Absent (and left out of the JSON): every
    /// program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// `unit` selector, a systemd unit name. Absent: every unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// `user` selector, a uid (names were resolved when the file was read). Absent: every
    /// user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<u32>,
    pub action: Action,
    /// Whether the datapath enforces the rule: always true since outbound rules are enforced
    /// (kept for clients that read it).
    pub enforced: bool,
    /// Inbound: packets this rule decided; outbound: socket calls (connect, UDP sends with an
    /// address) it decided. Since the current rules were loaded.
    pub hits: u64,
    pub line: usize,
    /// The included file the rule is written in (relative to the rules file's directory where
    /// it is inside it); absent for the rules file's own rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl RuleView {
    pub fn new(rs: &Ruleset, rule: &Rule, hits: u64) -> Self {
        Self {
            number: rule.index + 1,
            name: rule.name.to_string(),
            direction: rule.direction,
            proto: rule.proto,
            ports: rule.ports.iter().map(ToString::to_string).collect(),
            remote: rule.remote_spec.iter().map(ToString::to_string).collect(),
            program: rule
                .selector
                .program
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            unit: rule.selector.unit.clone(),
            user: rule.selector.user,
            action: rule.action,
            enforced: true,
            hits,
            line: rule.origin.line,
            file: rs.included_name(&rule.origin),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListData {
    pub source: String,
    pub defaults: DefaultsView,
    pub rules: Vec<RuleView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultsView {
    pub inbound: Action,
    pub outbound: Action,
    pub fragments: String,
}

impl From<&Defaults> for DefaultsView {
    fn from(d: &Defaults) -> Self {
        Self {
            inbound: d.inbound,
            outbound: d.outbound,
            fragments: format!("{:?}", d.fragments).to_lowercase(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    /// "native", "generic", or "adopted" (from a previous daemon).
    pub mode: String,
    #[serde(default)]
    pub index: u32,
    /// The XDP program the interface's attachment runs (0 if unknown).
    #[serde(default)]
    pub program_id: u32,
    /// "ok", or what is wrong: the attachment runs another program, or its pin was removed, or
    /// "NOT protected: ..." for an interface the setting covers that the firewall could not
    /// attach to or cannot parse (`interfaces = "auto"` only: a named one stops the start).
    #[serde(default)]
    pub state: String,
    /// How the egress program is attached: "tcx", or "netlink" (cls_bpf under clsact, on
    /// kernels before 6.6).
    #[serde(default)]
    pub egress: String,
    /// What precedes the IP header in its frames: "ethernet" or "none (IP)" (tun, wireguard,
    /// ppp, ip tunnels), which decides the programs attached. Empty for an interface that is
    /// not protected (its `state` says why).
    #[serde(default)]
    pub link_layer: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusData {
    pub version: String,
    pub pid: u32,
    pub config: String,
    pub pin_dir: String,
    pub interfaces: Vec<InterfaceStatus>,
    pub rules: usize,
    pub inbound_rules: usize,
    #[serde(default)]
    pub outbound_rules: usize,
    /// Always 0 since outbound rules are enforced; kept so that older clients can read the
    /// status.
    #[serde(default)]
    pub outbound_rules_not_enforced: usize,
    /// Where the outbound rules are enforced.
    #[serde(default)]
    pub outbound: OutboundStatus,
    pub defaults: DefaultsView,
    /// Rule-set generation: 1 at start, +1 per successful reload.
    pub generation: u64,
    pub uptime_secs: u64,
    pub last_reload: Option<String>,
    /// Every datapath counter, summed over CPUs, since the pin directory was created.
    pub counters: BTreeMap<String, u64>,
    pub warnings: Vec<String>,
    #[serde(default)]
    pub conntrack: ConntrackStatus,
    /// Configured interfaces that do not exist (yet); attached when they appear.
    #[serde(default)]
    pub waiting_for: Vec<String>,
    #[serde(default)]
    pub kernel: KernelStatus,
    /// A reload waiting for `fwctl confirm`.
    #[serde(default)]
    pub pending_confirm: Option<PendingConfirm>,
}

/// `fwctl debug`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DebugData {
    /// Whether the programs now write trace messages.
    pub tracing: bool,
    /// The generation loaded with that setting.
    pub generation: u64,
}

/// `fwctl confirm`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfirmData {
    /// The generation kept.
    pub generation: u64,
}

/// The outbound hooks: the cgroup they are attached to and each hook's attachment.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OutboundStatus {
    /// The cgroup v2 directory whose processes (and their descendants') the outbound rules
    /// judge.
    pub cgroup: String,
    pub cgroup_id: u64,
    pub hooks: Vec<HookStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HookStatus {
    /// connect4, connect6, sendmsg4 or sendmsg6.
    pub hook: String,
    /// The program the hook's pinned link runs (0 if unknown).
    pub program_id: u32,
    /// "ok", or what is wrong (the link runs another program, its pin was removed, it is on
    /// another cgroup).
    pub state: String,
}

/// The running kernel and how the firewall uses it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KernelStatus {
    pub release: String,
    /// Kernel mechanisms in use that differ between supported kernels, one line each.
    pub features: Vec<String>,
    /// What does not work as documented on this host, and why, one line each.
    pub degraded: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConntrackStatus {
    /// Entries in the confirmed table, and its capacity.
    pub confirmed: usize,
    pub confirmed_capacity: u32,
    /// Entries in the unconfirmed (LRU) table of flows remote hosts opened, and its capacity.
    pub unconfirmed: usize,
    pub unconfirmed_capacity: u32,
    /// Entries in the LRU table of the host's own unconfirmed flows, and its capacity.
    #[serde(default)]
    pub host_pending: usize,
    #[serde(default)]
    pub host_pending_capacity: u32,
    /// Unconfirmed entries the two LRU tables dropped to make room (derived from the
    /// counters: inserted - removed by the datapath - removed by the daemon - present).
    pub evicted: u64,
    /// Connections seeded from the host's sockets when this daemon started.
    pub seeded_at_start: usize,
    /// True when this daemon adopted the programs and tables a previous one left pinned.
    pub adopted: bool,
}

/// A tracked connection, as `fwctl conns` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnView {
    /// tcp, udp, icmp or icmpv6.
    pub proto: String,
    /// `address:port` (IPv6 in brackets); for ICMP echo the address and `id=N`.
    pub local: String,
    pub remote: String,
    /// The name the remote address has from a DNS answer, while the rules name names
    /// (`fwctl dns`); the one that lasts longest if several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub state: String,
    /// "local" (the host opened it) or "remote".
    pub origin: String,
    /// "confirmed" or "unconfirmed".
    pub table: String,
    pub age_secs: u64,
    pub expires_in_secs: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// What admitted the flow: a rule (`rule 3 "ssh"`), the default, the host itself,
    /// seeding at start-up, or a pick-up from the host's traffic.
    pub admitted_by: String,
    /// Denied by the rules in force after `fwctl reload --recheck`.
    pub denied: bool,
    /// The program that owns the connection on this host (see the README, "Connections and
    /// their programs"): a path, or `(device M:N, inode I)` for an executable without one.
    #[serde(default)]
    pub program: Option<String>,
    /// The process that opened it (connections the host opened).
    #[serde(default)]
    pub pid: Option<u32>,
    /// The owner's user name (or uid).
    #[serde(default)]
    pub user: Option<String>,
}

/// One name some addresses have (`fwctl dns`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DnsName {
    /// Presentation form: bytes other than letters, digits, `-` and `_` as `\DDD`.
    pub name: String,
    /// Each address with the seconds it keeps the name.
    pub addresses: Vec<DnsAddress>,
    /// The outbound rules that name it (`rule N "name"`), in file order: the first of them
    /// that also matches a connection's protocol and port decides it.
    pub rules: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DnsAddress {
    pub address: std::net::IpAddr,
    pub expires_in_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DnsData {
    /// False when no outbound rule names a name: answers are not read.
    pub reading: bool,
    pub names: Vec<DnsName>,
    /// The inbound rules' names, looked up by the daemon.
    #[serde(default)]
    pub looked_up: Vec<LookedUp>,
}

/// An inbound rule's name and what it looked up to (`fwctl dns`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LookedUp {
    pub name: String,
    /// The addresses the rules use for it now.
    pub addresses: Vec<std::net::IpAddr>,
    /// Seconds until it is asked again.
    pub next_in_secs: u64,
    /// Why the last lookup gave no address (the addresses are then those of an earlier one,
    /// or none).
    pub error: Option<String>,
    /// The inbound rules that name it (`rule N "name"`).
    pub rules: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnsData {
    pub connections: Vec<ConnView>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReloadData {
    /// Rules (shown as `name (line N)`) that are new.
    pub added: Vec<String>,
    /// Rules no longer present.
    pub removed: Vec<String>,
    /// Rules whose name is in both files (once in each) with other contents, as
    /// `name (line N): field old -> new; ...`.
    #[serde(default)]
    pub changed: Vec<String>,
    /// Settings that changed, as `key: old -> new`.
    pub settings: Vec<String>,
    /// True when the same rules are now in a different order.
    pub reordered: bool,
    pub rules: usize,
    pub generation: u64,
    pub took_ms: u64,
    pub warnings: Vec<String>,
    /// With `--recheck`: the tracked flows the new rules deny, which were ended.
    #[serde(default)]
    pub ended: Vec<String>,
    /// True when the flows were re-judged (`--recheck`).
    #[serde(default)]
    pub rechecked: bool,
    /// True when nothing was changed (`--dry-run`).
    #[serde(default)]
    pub dry_run: bool,
    /// With `--dry-run`: the tracked connections the new rules would deny (a reload with
    /// `--recheck` would end them).
    #[serde(default)]
    pub would_deny: Vec<String>,
    /// Set when the new rules would deny new SSH connections from the caller (applied only
    /// with `--force` or `--confirm`).
    #[serde(default)]
    pub lockout: Option<String>,
    /// With `--confirm`: when the previous rules come back unless `fwctl confirm`.
    #[serde(default)]
    pub pending_confirm: Option<PendingConfirm>,
}

impl ReloadData {
    pub fn unchanged(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.settings.is_empty()
            && !self.reordered
    }
}

type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A rule's identity: everything but its position (a moved rule is not "changed") and where
/// it was written.
type RuleIdentity<'r> = (
    &'r str,
    Direction,
    Proto,
    &'r [PortRange],
    Option<&'r [IpNet]>,
    &'r Selector,
    Action,
    Option<bool>,
);

fn identity(r: &Rule) -> RuleIdentity<'_> {
    (
        &r.name,
        r.direction,
        r.proto,
        &r.ports,
        r.remote.as_deref(),
        &r.selector,
        r.action,
        r.log,
    )
}

/// What changed between two rule sets, for `fwctl reload`.
pub fn diff(old: &Ruleset, new: &Ruleset) -> ReloadData {
    // Hash sets: a linear `contains` made reloading 100,000 rules take minutes; keys of
    // references, not strings, and a fast hasher (the files are the administrator's own):
    // formatting and SipHash were a tenth of such a reload.
    let old_keys: Vec<RuleIdentity> = old.rules.iter().map(identity).collect();
    let new_keys: Vec<RuleIdentity> = new.rules.iter().map(identity).collect();
    let old_set: FastSet<&RuleIdentity> = old_keys.iter().collect();
    let new_set: FastSet<&RuleIdentity> = new_keys.iter().collect();
    let describe = |rs: &Ruleset, r: &Rule| format!("{} ({})", r.name, rs.place(&r.origin));
    let gone: Vec<&Rule> = old
        .rules
        .iter()
        .zip(&old_keys)
        .filter(|(_, k)| !new_set.contains(k))
        .map(|(r, _)| r)
        .collect();
    let came: Vec<&Rule> = new
        .rules
        .iter()
        .zip(&new_keys)
        .filter(|(_, k)| !old_set.contains(k))
        .map(|(r, _)| r)
        .collect();
    // A rule that left and one that came under the same name, a name each file gives one rule,
    // is that rule changed.
    let (old_names, new_names) = (name_counts(&old.rules), name_counts(&new.rules));
    let once = |name: &str| old_names.get(name) == Some(&1) && new_names.get(name) == Some(&1);
    let came_by_name: FastMap<&str, &Rule> = came
        .iter()
        .filter(|r| once(&r.name))
        .map(|r| (r.name.as_str(), *r))
        .collect();
    let mut changed = Vec::new();
    let mut paired = FastSet::default();
    let mut removed = Vec::new();
    for r in gone {
        match came_by_name.get(r.name.as_str()) {
            Some(n) if once(&r.name) => {
                changed.push(format!("{}: {}", describe(new, n), rule_changes(r, n)));
                paired.insert(r.name.as_str());
            }
            _ => removed.push(describe(old, r)),
        }
    }
    let added = came
        .iter()
        .filter(|r| !paired.contains(r.name.as_str()))
        .map(|r| describe(new, r))
        .collect();
    let common_old: Vec<&RuleIdentity> = old_keys.iter().filter(|k| new_set.contains(k)).collect();
    let common_new: Vec<&RuleIdentity> = new_keys.iter().filter(|k| old_set.contains(k)).collect();
    let mut settings = Vec::new();
    let mut setting = |name: &str, a: String, b: String| {
        if a != b {
            settings.push(format!("{name}: {a} -> {b}"));
        }
    };
    setting(
        "defaults.inbound",
        old.defaults.inbound.to_string(),
        new.defaults.inbound.to_string(),
    );
    setting(
        "defaults.outbound",
        old.defaults.outbound.to_string(),
        new.defaults.outbound.to_string(),
    );
    setting(
        "defaults.fragments",
        format!("{:?}", old.defaults.fragments),
        format!("{:?}", new.defaults.fragments),
    );
    setting(
        "reject.rate_per_sec",
        old.reject.rate_per_sec.to_string(),
        new.reject.rate_per_sec.to_string(),
    );
    setting(
        "reject.burst",
        old.reject.burst.to_string(),
        new.reject.burst.to_string(),
    );
    setting(
        "reject.global_rate_per_sec",
        old.reject.global_rate_per_sec.to_string(),
        new.reject.global_rate_per_sec.to_string(),
    );
    if old.conntrack.invalid != new.conntrack.invalid {
        settings.push(format!(
            "conntrack.invalid: {:?} -> {:?}",
            old.conntrack.invalid, new.conntrack.invalid
        ));
    }
    if old.conntrack.timeouts != new.conntrack.timeouts {
        settings.push("conntrack.timeouts changed (apply to each flow at its next packet)".into());
    }
    if old.conntrack.record_owner != new.conntrack.record_owner {
        settings.push(format!(
            "conntrack.record_owner: {} -> {} (for connections opened from now on)",
            old.conntrack.record_owner, new.conntrack.record_owner
        ));
    }
    if old.conntrack.gc_interval_secs != new.conntrack.gc_interval_secs {
        settings.push(format!(
            "conntrack.gc_interval: {}s -> {}s",
            old.conntrack.gc_interval_secs, new.conntrack.gc_interval_secs
        ));
    }
    if old.conntrack.table_size != new.conntrack.table_size
        || old.conntrack.unconfirmed_size != new.conntrack.unconfirmed_size
    {
        settings.push(
            "conntrack table sizes changed: take effect when the tables are next created \
             (after the daemon is stopped with SIGTERM, or a reboot)"
                .into(),
        );
    }
    if old.daemon.on_stop != new.daemon.on_stop {
        settings.push(format!(
            "daemon.on_stop: {:?} -> {:?} (applies when the daemon stops)",
            old.daemon.on_stop, new.daemon.on_stop
        ));
    }
    // What each asserts, not where it is written: an edit above them moves their lines.
    let meaning = |rs: &Ruleset| -> Vec<_> {
        rs.assertions
            .iter()
            .map(|a| (a.probe.clone(), a.remote, a.expect))
            .collect()
    };
    if meaning(old) != meaning(new) {
        settings.push(format!(
            "[[assert]] entries changed ({} before, {} now)",
            old.assertions.len(),
            new.assertions.len()
        ));
    }
    if old.metrics != new.metrics {
        settings.push("[metrics] changed: takes effect when the daemon restarts".into());
    }
    let mut old_daemon = old.daemon.clone();
    old_daemon.on_stop = new.daemon.on_stop;
    if old_daemon != new.daemon {
        settings.push("[daemon] changed: takes effect when the daemon restarts".into());
    }
    ReloadData {
        added,
        removed,
        changed,
        settings,
        reordered: common_old != common_new,
        rules: new.rules.len(),
        ..Default::default()
    }
}

/// How many rules bear each name.
fn name_counts(rules: &[Rule]) -> FastMap<&str, usize> {
    let mut n = FastMap::default();
    for r in rules {
        *n.entry(r.name.as_str()).or_default() += 1;
    }
    n
}

/// What differs between two versions of a rule, field by field: `port 8080 -> 8443; ...`.
fn rule_changes(old: &Rule, new: &Rule) -> String {
    let ports = |r: &Rule| {
        if r.ports.is_empty() {
            "every port".to_string()
        } else {
            r.ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let remote = |r: &Rule| {
        if r.remote_spec.is_empty() {
            "anywhere".to_string()
        } else {
            r.remote_spec.join(",")
        }
    };
    let opt = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    let fields = [
        (
            "direction",
            old.direction.to_string(),
            new.direction.to_string(),
        ),
        ("proto", old.proto.to_string(), new.proto.to_string()),
        ("port", ports(old), ports(new)),
        ("remote", remote(old), remote(new)),
        (
            "program",
            opt(old
                .selector
                .program
                .as_ref()
                .map(|p| p.display().to_string())),
            opt(new
                .selector
                .program
                .as_ref()
                .map(|p| p.display().to_string())),
        ),
        (
            "unit",
            opt(old.selector.unit.clone()),
            opt(new.selector.unit.clone()),
        ),
        (
            "user",
            opt(old.selector.user.map(|u| u.to_string())),
            opt(new.selector.user.map(|u| u.to_string())),
        ),
        ("action", old.action.to_string(), new.action.to_string()),
        (
            "log",
            opt(old.log.map(|l| l.to_string())),
            opt(new.log.map(|l| l.to_string())),
        ),
    ];
    let mut out: Vec<String> = fields
        .iter()
        .filter(|(_, a, b)| a != b)
        .map(|(f, a, b)| format!("{f} {a} -> {b}"))
        .collect();
    if out.is_empty() {
        // Same text, other addresses: a set the rule names changed.
        out.push("its addresses changed (a set it names)".into());
    }
    out.join("; ")
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no control socket at {path}: the daemon is not running, or uses another socket \
         (see --socket / [daemon] control_socket)"
    )]
    NoSocket { path: String },
    #[error("the daemon is not accepting connections on {path} (stale socket?): {source}")]
    Refused {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "permission denied on {path}: run as root, or as a member of the [daemon] \
         control_group"
    )]
    Permission { path: String },
    #[error("talking to the daemon on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The daemon accepted the request and has not answered in time: it may still be working
    /// on it (a reload verifies programs, which takes seconds, more on a slow machine).
    #[error("the daemon on {path} did not answer within {secs} s")]
    NoAnswer { path: String, secs: u64 },
    #[error("the daemon sent a response that is not valid: {0}")]
    BadResponse(String),
}

/// How long `fwctl` waits for the answer to a request. A reload compiles the rules and has the
/// kernel verify the programs (about 1 s on the test machine, up to 16 s in an emulated 6.1 guest,
/// where 30 s was too short): it gets five minutes; the rest are quick lookups.
pub fn answer_timeout(req: &Request) -> Duration {
    match req {
        Request::Reload { .. } => Duration::from_secs(300),
        Request::List
        | Request::Status
        | Request::Conns
        | Request::Dns
        | Request::Confirm
        | Request::Explain(_)
        | Request::Ports
        | Request::Monitor { .. } => Duration::from_secs(30),
        // Loads the programs again, as a reload does; a set change may too (its tables full).
        Request::Debug { .. }
        | Request::SetAdd { .. }
        | Request::SetDel { .. }
        | Request::SetFlush { .. } => Duration::from_secs(300),
        Request::SetList { .. } => Duration::from_secs(30),
    }
}

/// Sends one request and waits for the response.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ClientError::NoSocket { path: path.clone() },
        std::io::ErrorKind::PermissionDenied => ClientError::Permission { path: path.clone() },
        _ => ClientError::Refused {
            path: path.clone(),
            source: e,
        },
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line =
        serde_json::to_string(req).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut reader = BufReader::new(&stream);
    let mut buf = String::new();
    reader.read_line(&mut buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::NoAnswer {
            path: path.clone(),
            secs: timeout.as_secs(),
        },
        _ => io(e),
    })?;
    if buf.is_empty() {
        return Err(ClientError::BadResponse(
            "the daemon closed the connection without answering".into(),
        ));
    }
    serde_json::from_str(&buf).map_err(|e| ClientError::BadResponse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A daemon that takes the request and does not answer in time is reported as such, with
    /// the time waited, not as an I/O error; a reload waits longer than a query.
    #[test]
    fn a_silent_daemon_is_reported_as_not_answering_in_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
        let err = call(&path, &Request::Status, Duration::from_millis(200)).expect_err("no answer");
        assert!(
            matches!(err, ClientError::NoAnswer { secs: 0, .. }),
            "{err:?}"
        );
        drop(held.join());
        assert!(
            answer_timeout(&Request::Reload {
                recheck: false,
                dry_run: false,
                confirm_secs: None,
                force: false,
                caller: None,
                file: None,
            }) > answer_timeout(&Request::Status)
        );
    }

    /// `SSH_CONNECTION` as sshd sets it; anything else is no caller, never a wrong one.
    #[test]
    fn the_ssh_caller_is_read_from_ssh_connection() {
        let c = Caller::from_ssh_connection("203.0.113.7 50022 10.0.0.5 22").expect("v4");
        assert_eq!(
            (c.remote.to_string(), c.local.to_string(), c.local_port),
            ("203.0.113.7".into(), "10.0.0.5".into(), 22)
        );
        let c = Caller::from_ssh_connection("fe80::1%eth0 1 fe80::2%eth0 2222").expect("v6");
        assert_eq!(
            (c.remote.to_string(), c.local_port),
            ("fe80::1".into(), 2222)
        );
        for bad in [
            "",
            "203.0.113.7 50022 10.0.0.5",
            "a b c d",
            "1.2.3.4 1 5.6.7.8 0",
        ] {
            assert_eq!(Caller::from_ssh_connection(bad), None, "{bad:?}");
        }
    }

    fn rules(n: usize, first_port: usize) -> Ruleset {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!(
                "[[rule]]\nname = \"r{i}\"\nproto = \"tcp\"\nport = {}\naction = \"allow\"\n",
                1 + (first_port + i) % 65535
            ));
        }
        rules::config::parse(&text, Path::new("diff-test.toml")).expect("rules parse")
    }

    /// An assertion that moved (a rule added above it) is the same assertion; one that says
    /// something else is a change.
    #[test]
    fn diff_compares_assertions_by_what_they_assert() {
        let parse = |t: &str| rules::config::parse(t, Path::new("d.toml")).expect("parse");
        let assert = "[[assert]]\nin = \"tcp 22\"\nexpect = \"allow\"\n";
        let rule = "[[rule]]\nproto = \"tcp\"\nport = 22\naction = \"allow\"\n";
        let a = parse(&format!("{rule}{assert}"));
        let moved = parse(&format!("{rule}\n\n# a comment\n{assert}"));
        assert!(
            diff(&a, &moved).settings.is_empty(),
            "{:?}",
            diff(&a, &moved)
        );
        let other = parse(&format!("{rule}{}", assert.replace("tcp 22", "tcp 23")));
        assert!(
            diff(&a, &other)
                .settings
                .iter()
                .any(|s| s.contains("[[assert]] entries changed")),
            "{:?}",
            diff(&a, &other)
        );
    }

    #[test]
    fn diff_names_changed_rules_with_what_changed_including_selectors_and_log() {
        let parse = |t: &str| rules::config::parse(t, Path::new("d.toml")).expect("parse");
        let a = parse(
            "[sets]\nlan = [\"10.0.0.0/8\"]\n\
             [[rule]]\nname = \"web\"\nproto = \"tcp\"\nport = 8080\naction = \"allow\"\n\
             [[rule]]\nname = \"lan\"\nremote = \"@lan\"\naction = \"allow\"\n\
             [[rule]]\nname = \"ssh\"\nproto = \"tcp\"\nport = 22\naction = \"allow\"\n",
        );
        let b = parse(
            "[sets]\nlan = [\"10.1.0.0/16\"]\n\
             [[rule]]\nname = \"web\"\nproto = \"tcp\"\nport = 8443\naction = \"allow\"\nlog = true\n\
             [[rule]]\nname = \"lan\"\nremote = \"@lan\"\naction = \"allow\"\n\
             [[rule]]\nname = \"ssh\"\nproto = \"tcp\"\nport = 22\nuser = 0\naction = \"allow\"\n",
        );
        let d = diff(&a, &b);
        assert!(d.added.is_empty() && d.removed.is_empty(), "{d:?}");
        assert_eq!(
            d.changed,
            [
                "web (line 3): port 8080 -> 8443; log none -> true",
                "lan (line 9): its addresses changed (a set it names)",
                "ssh (line 13): user none -> 0",
            ]
        );
        assert!(!d.unchanged());
    }

    #[test]
    fn diff_names_added_removed_and_reordered_rules() {
        let d = diff(&rules(3, 0), &rules(3, 1));
        assert_eq!(
            d.changed.len(),
            3,
            "the same names with other ports: every rule changed"
        );
        assert!(d.added.is_empty() && d.removed.is_empty(), "{d:?}");
        let d = diff(&rules(2, 0), &rules(3, 0));
        assert_eq!(d.added, ["r2 (line 11)"]);
        let d = diff(&rules(3, 0), &rules(2, 0));
        assert_eq!(d.removed, ["r2 (line 11)"]);
        let a = rules(3, 0);
        let mut b = a.clone();
        b.rules.reverse();
        let d = diff(&a, &b);
        assert!(
            d.added.is_empty() && d.removed.is_empty() && d.reordered,
            "{d:?}"
        );
    }

    /// Reloading a large rule set must not cost quadratic time in the diff.
    #[test]
    fn diff_of_large_rule_sets_is_fast() {
        let (a, b) = (rules(20_000, 0), rules(20_000, 7));
        let t = std::time::Instant::now();
        let d = diff(&a, &b);
        assert_eq!(d.rules, 20_000);
        // Under the kernel matrix's software emulation everything runs about 8 times slower.
        let slowdown = match std::env::var("XTASK_QEMU_ACCEL").as_deref() {
            Ok("tcg") => 8,
            _ => 1,
        };
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2) * slowdown,
            "diff of 20,000 rules took {:?}",
            t.elapsed()
        );
    }
}
