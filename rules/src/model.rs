//! The validated rule set: what `rules.toml` means once every name, set and port is resolved.
//!
//! `config` turns text into this; `compile` turns this into kernel maps; `policy` evaluates it
//! directly (the oracle the kernel is tested against). Nothing here can be invalid: every
//! constructor lives in `config`, which reports errors with file, line and column.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use crate::names::NamePattern;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Reject,
    Stealth,
}

impl Action {
    pub const fn to_kernel(self) -> u32 {
        match self {
            Action::Allow => firewall_common::ACTION_ALLOW,
            Action::Reject => firewall_common::ACTION_REJECT,
            Action::Stealth => firewall_common::ACTION_STEALTH,
        }
    }

    pub const fn from_kernel(action: u32) -> Option<Self> {
        match action {
            firewall_common::ACTION_ALLOW => Some(Action::Allow),
            firewall_common::ACTION_REJECT => Some(Action::Reject),
            firewall_common::ACTION_STEALTH => Some(Action::Stealth),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Reject => "reject",
            Action::Stealth => "stealth",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::In => "in",
            Direction::Out => "out",
        })
    }
}

/// `proto` of a rule. `Any` with ports means TCP and UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Any,
    Tcp,
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Any => "any",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        })
    }
}

/// Inclusive port range, `lo <= hi`, both in 1..=65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Where a rule came from in the file, for messages and `fwctl list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// 1-based line of the rule's first key.
    pub line: usize,
    /// 1-based column (in characters) of the rule's first key.
    pub column: usize,
    /// Which file: 0 for the rules file itself, `i` for `Ruleset::included[i - 1]`.
    pub file: usize,
}

/// A rule's name or an entry of its `remote` as written: inline up to 24 bytes ("rule 12345",
/// "203.0.113.7/32"), so that a long rule set is not a million small heap blocks. Measured
/// at 100,000 rules: with one rule set kept while the next was read, each read was slower
/// than the last (255 to 430 ms over twelve), the heap ever more fragmented; see
/// `firewall-daemon/src/daemon/memory.rs`.
pub type Text = compact_str::CompactString;
/// A rule's port ranges: most rules have one or two, kept inline (see [`Text`]).
pub type Ports = smallvec::SmallVec<[PortRange; 2]>;
/// A rule's remote networks: most rules name one, kept inline (see [`Text`]).
pub type Nets = smallvec::SmallVec<[IpNet; 1]>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Position in file order among all rules (both directions), starting at 0. First match by
    /// this index decides.
    pub index: u32,
    pub name: Text,
    pub direction: Direction,
    pub proto: Proto,
    /// Empty: every port. Sorted and merged (no overlaps, no adjacency).
    pub ports: Ports,
    /// `None`: every remote address. `Some`: the union of these networks (sets expanded).
    /// Host bits are cleared and the list is sorted and deduplicated.
    #[serde(skip)]
    pub remote: Option<Nets>,
    /// The names and wildcards of `remote` (`crate::names`; inbound, names only, which the
    /// daemon looks up: [`Ruleset::with_lookups`]). A rule whose
    /// `remote` lists only names has `remote == Some(empty)`: no address matches it but by a
    /// name. Sorted, without duplicates.
    pub names: Vec<NamePattern>,
    /// The `remote` entries as written (`"@trusted"`, `"203.0.113.7"`), for display.
    pub remote_spec: smallvec::SmallVec<[Text; 1]>,
    /// `program`, `unit`, `user`: whose sockets the rule is about. Empty: everyone's.
    pub selector: Selector,
    pub action: Action,
    /// `log`, as written: `Some(true)` logs every decision of this rule, `Some(false)` none;
    /// `None` follows `[log] denied` ([`Ruleset::logs`]).
    pub log: Option<bool>,
    pub origin: Origin,
}

/// Who a rule is about. Every selector given must match; none given matches every process.
/// How each is identified in the kernel is described in `firewall-ebpf/src/identity.rs` and
/// the daemon's `host/selectors`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Selector {
    /// `program`: absolute path of the executable, as written. Matched by the (device,
    /// inode) the path resolves to, re-resolved when the file is replaced.
    pub program: Option<PathBuf>,
    /// `unit`: a systemd unit name (`nginx.service`), matched by the unit's cgroup: processes
    /// in that cgroup or below it.
    pub unit: Option<String>,
    /// `user`: a uid (a user name is resolved to its uid when the file is read).
    pub user: Option<u32>,
}

impl Selector {
    /// No selector: the rule is about every process.
    pub fn is_everyone(&self) -> bool {
        self.program.is_none() && self.unit.is_none() && self.user.is_none()
    }
}

impl Rule {
    pub fn matches_proto(&self, proto: PacketProto) -> bool {
        match self.proto {
            Proto::Any => {
                self.ports.is_empty() || matches!(proto, PacketProto::Tcp | PacketProto::Udp)
            }
            Proto::Tcp => proto == PacketProto::Tcp,
            Proto::Udp => proto == PacketProto::Udp,
            Proto::Icmp => proto == PacketProto::Icmp,
        }
    }
}

/// Protocol of a packet, as the classifier sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketProto {
    Tcp,
    Udp,
    Icmp,
    Other,
}

impl fmt::Display for PacketProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PacketProto::Tcp => "tcp",
            PacketProto::Udp => "udp",
            PacketProto::Icmp => "icmp",
            PacketProto::Other => "other",
        })
    }
}

impl PacketProto {
    pub const fn class(self) -> u32 {
        match self {
            PacketProto::Tcp => firewall_common::PROTO_TCP,
            PacketProto::Udp => firewall_common::PROTO_UDP,
            PacketProto::Icmp => firewall_common::PROTO_ICMP,
            PacketProto::Other => firewall_common::PROTO_OTHER,
        }
    }
}

/// `[daemon] interfaces`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Interfaces {
    /// Every non-loopback interface that is up when the daemon starts.
    Auto,
    List(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic where the driver has none.
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FragmentPolicy {
    Allow,
    Stealth,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DaemonConfig {
    pub interfaces: Interfaces,
    pub xdp_mode: XdpMode,
    pub control_socket: PathBuf,
    /// Group (besides root) allowed to use the control socket.
    pub control_group: Option<String>,
    pub pin_dir: PathBuf,
    /// `[daemon] state_dir`: where the daemon keeps what outlives it besides the pins (the
    /// members of runtime sets).
    pub state_dir: PathBuf,
    pub on_stop: OnStop,
    /// `[daemon] cgroup`: the cgroup v2 directory the outbound hooks are attached to; they
    /// judge the sockets of every process in it and below. `None`: the root of the cgroup2
    /// mount (every process on the host), found in /proc/self/mountinfo when the daemon starts.
    pub cgroup: Option<PathBuf>,
}

/// `[daemon] on_stop`: what a daemon stopped by SIGTERM/SIGINT leaves behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStop {
    /// The pinned programs go on enforcing the last rules; the next daemon adopts them.
    Keep,
    /// Detach every program and remove the pins: nothing filters until the daemon is started.
    Detach,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            interfaces: Interfaces::Auto,
            xdp_mode: XdpMode::Auto,
            control_socket: PathBuf::from("/run/firewall/control.sock"),
            control_group: None,
            pin_dir: PathBuf::from("/sys/fs/bpf/firewall"),
            state_dir: PathBuf::from("/var/lib/firewall"),
            on_stop: OnStop::Keep,
            cgroup: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Defaults {
    pub inbound: Action,
    pub outbound: Action,
    /// Non-first IPv4 fragments and IPv6 fragments with a non-zero offset.
    pub fragments: FragmentPolicy,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            inbound: Action::Stealth,
            outbound: Action::Allow,
            fragments: FragmentPolicy::Allow,
        }
    }
}

/// `[reject]`: budget of reject replies per source address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RejectLimits {
    pub rate_per_sec: u32,
    pub burst: u32,
    /// Replies per second of the whole host (all sources together).
    pub global_rate_per_sec: u32,
}

impl Default for RejectLimits {
    fn default() -> Self {
        Self {
            rate_per_sec: 100,
            burst: 200,
            global_rate_per_sec: 1000,
        }
    }
}

/// `[conntrack] invalid`: what happens to a TCP segment that is not a SYN and belongs to no
/// tracked connection (a stray ACK, a late RST, a scan).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InvalidPolicy {
    /// Dropped silently.
    #[default]
    Stealth,
    /// Answered with a RST (subject to `[reject]`).
    Reject,
}

impl fmt::Display for InvalidPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidPolicy::Stealth => "stealth",
            InvalidPolicy::Reject => "reject",
        })
    }
}

/// `[conntrack]`: connection tracking table sizes, policy and timeouts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conntrack {
    /// Most confirmed (established / replied) flows; a plain hash map, never evicted.
    pub table_size: u32,
    /// Most unconfirmed flows (TCP handshakes, unreplied UDP, ICMP echo): an LRU map.
    pub unconfirmed_size: u32,
    /// Verdict for a TCP segment that is not a SYN and belongs to no tracked connection.
    pub invalid: InvalidPolicy,
    /// How often the daemon removes expired entries, in seconds.
    pub gc_interval_secs: u32,
    pub timeouts: CtTimeouts,
    /// Record each connection's owning program (the outbound hooks note who connects; see
    /// [`firewall_common::ct::ConnOwner`]). Off saves the recording's cost on every new
    /// outbound connection; `fwctl conns` then shows no programs.
    pub record_owner: bool,
}

impl Default for Conntrack {
    fn default() -> Self {
        Self {
            table_size: 262_144,
            unconfirmed_size: 65_536,
            invalid: InvalidPolicy::Stealth,
            gc_interval_secs: 10,
            timeouts: CtTimeouts::default(),
            record_owner: true,
        }
    }
}

/// `[conntrack.timeouts]`: how long an idle flow stays tracked in each state, in seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CtTimeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    pub tcp_fin_wait: u32,
    pub tcp_close_wait: u32,
    pub tcp_last_ack: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    /// UDP flow that has only been seen in one direction.
    pub udp_unreplied: u32,
    /// UDP flow that has seen a reply.
    pub udp_replied: u32,
    /// ICMP / ICMPv6 echo.
    pub icmp: u32,
}

/// Linux `nf_conntrack` defaults.
impl Default for CtTimeouts {
    fn default() -> Self {
        Self {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 432_000,
            tcp_fin_wait: 120,
            tcp_close_wait: 60,
            tcp_last_ack: 30,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp_unreplied: 30,
            udp_replied: 120,
            icmp: 30,
        }
    }
}

/// `[log]`: the decision log (events the kernel hands the daemon, which writes them to the
/// journal and to `fwctl monitor`) and its budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogConfig {
    /// Log the `reject` and `stealth` decisions of rules without a `log` key of their own,
    /// of `[defaults]` and of `[conntrack] invalid`.
    pub denied: bool,
    /// Events each CPU may log per second (a token bucket in the kernel, per CPU).
    pub rate: u32,
    /// Events each CPU may log in a burst (the bucket's size).
    pub burst: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            denied: true,
            rate: 50,
            burst: 100,
        }
    }
}

/// `[dns]`: how long a name learnt from a DNS answer stays on its addresses (the shortest TTL
/// of the record and the answer's CNAMEs clamped to `min_ttl..=max_ttl`, plus `grace`;
/// seconds), and whether addresses without a name may have `[defaults] outbound = "allow"`
/// (`enforce`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsConfig {
    pub min_ttl: u32,
    pub max_ttl: u32,
    pub grace: u32,
    /// An outbound call to an address no DNS answer named, that no rule decides, is refused
    /// (`reject`) rather than allowed by `[defaults] outbound`.
    pub enforce: bool,
    /// Where the daemon looks up the inbound rules' names; empty: the servers of
    /// /etc/resolv.conf.
    pub servers: Vec<std::net::SocketAddr>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            min_ttl: 60,
            max_ttl: 86400,
            grace: 30,
            enforce: false,
            servers: Vec::new(),
        }
    }
}

/// `[metrics]`: the counters for Prometheus. Off unless `listen` or `textfile` is set; read
/// when the daemon starts (a reload that changes it says so and changes nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetricsConfig {
    pub listen: Option<MetricsListen>,
    /// node_exporter's textfile collector: rewritten every `interval_secs`.
    pub textfile: Option<PathBuf>,
    pub interval_secs: u32,
}

/// Where the metrics endpoint listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum MetricsListen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsListen::Tcp(a) => write!(f, "http://{a}/metrics"),
            MetricsListen::Unix(p) => write!(f, "unix:{} (GET /metrics)", p.display()),
        }
    }
}

/// A parsed, validated `rules.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ruleset {
    /// The file it came from, for messages.
    pub source: PathBuf,
    /// The files its `include` patterns matched, in the order their rules come.
    pub included: Vec<PathBuf>,
    pub daemon: DaemonConfig,
    pub defaults: Defaults,
    pub reject: RejectLimits,
    pub conntrack: Conntrack,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub dns: DnsConfig,
    /// Named sets, expanded (files read), for `fwctl list`.
    #[serde(skip)]
    pub sets: BTreeMap<String, Vec<IpNet>>,
    /// The sets declared empty (`blocklist = []`): runtime sets, whose members the daemon
    /// holds (`fwctl set add`) and [`Ruleset::with_members`] puts in the rules.
    pub runtime_sets: BTreeSet<String>,
    /// All rules in file order (`rules[i].index == i`).
    pub rules: Vec<Rule>,
    /// `[[assert]]`: what the rules must decide for given packets and connections, checked
    /// whenever the file is loaded (see `crate::explain`).
    #[serde(skip)]
    pub assertions: Vec<Assertion>,
    /// Things worth telling the user that do not stop the file from loading (for instance an
    /// empty set file, or a rule that can never match), each already prefixed with file and
    /// line.
    pub warnings: Vec<String>,
}

/// The members of runtime sets, by set name (the daemon's, from `fwctl set add`).
pub type Members = BTreeMap<String, Vec<IpNet>>;

impl Ruleset {
    /// The runtime sets `rule`'s `remote` names.
    pub fn runtime_sets_of<'a>(&'a self, rule: &'a Rule) -> impl Iterator<Item = &'a str> {
        rule.remote_spec
            .iter()
            .filter_map(|t| t.strip_prefix('@'))
            .filter(|name| self.runtime_sets.contains(*name))
    }

    /// Whether some rule of `direction` names a runtime set.
    pub fn uses_runtime_sets(&self, direction: Direction) -> bool {
        self.of(direction)
            .any(|r| self.runtime_sets_of(r).next().is_some())
    }

    /// These rules with `members` in their runtime sets, as if the file listed them: what the
    /// rules say now. The oracle's view of a daemon's rules; the daemon's compiler writes the
    /// same members into the kernel's tables in place. Members of sets that are not runtime
    /// sets of these rules are left out.
    pub fn with_members(&self, members: &Members) -> Ruleset {
        let mut rs = self.clone();
        for i in 0..rs.rules.len() {
            let added: Vec<IpNet> = self
                .runtime_sets_of(&self.rules[i])
                .filter_map(|name| members.get(name))
                .flatten()
                .copied()
                .collect();
            if added.is_empty() {
                continue;
            }
            let remote = rs.rules[i].remote.get_or_insert_with(Nets::new);
            remote.extend(added);
            remote.sort_unstable();
            remote.dedup();
        }
        for (name, nets) in members {
            if self.runtime_sets.contains(name) {
                let mut nets = nets.clone();
                nets.sort_unstable();
                nets.dedup();
                rs.sets.insert(name.clone(), nets);
            }
        }
        rs
    }
}

/// A question to the rules: what they decide for a packet or a connection with these
/// properties, from some remote address (`fwctl explain`, `[[assert]]`, `fwctl ports`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Probe {
    pub direction: Direction,
    /// TCP, UDP or ICMP (an echo request).
    pub proto: PacketProto,
    /// Inbound: the local port; outbound: the destination port. 0 for ICMP.
    pub port: u16,
    /// The socket's owner: for inbound, the listening socket's; for outbound, the caller's.
    /// Described the way rules describe it; parts not given are "not what any rule names".
    pub owner: Selector,
}

/// Why a [`Probe`] describes nothing the rules judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// Not TCP, UDP or ICMP.
    Proto,
    /// ICMP outbound: outbound rules are about TCP and UDP sockets.
    OutboundIcmp,
    /// ICMP with an owner: only TCP and UDP sockets have one.
    IcmpOwner,
    /// A port with ICMP, or none (0) with TCP or UDP.
    Port,
}

impl Probe {
    /// A probe of something the rules judge: TCP or UDP with a port (1-65535), or an inbound
    /// ICMP echo request, without port or owner. `fwctl explain` and `[[assert]]` both ask
    /// this, each wording the error for its own input.
    pub fn new(
        direction: Direction,
        proto: PacketProto,
        port: u16,
        owner: Selector,
    ) -> Result<Self, ProbeError> {
        match proto {
            PacketProto::Other => return Err(ProbeError::Proto),
            PacketProto::Icmp if port != 0 => return Err(ProbeError::Port),
            PacketProto::Icmp if direction == Direction::Out => {
                return Err(ProbeError::OutboundIcmp);
            }
            PacketProto::Icmp if !owner.is_everyone() => return Err(ProbeError::IcmpOwner),
            PacketProto::Tcp | PacketProto::Udp if port == 0 => return Err(ProbeError::Port),
            _ => {}
        }
        Ok(Self {
            direction,
            proto,
            port,
            owner,
        })
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.direction, self.proto)?;
        if self.proto != PacketProto::Icmp {
            write!(f, " {}", self.port)?;
        }
        if let Some(p) = &self.owner.program {
            write!(f, " program {}", p.display())?;
        }
        if let Some(u) = &self.owner.unit {
            write!(f, " unit {u}")?;
        }
        if let Some(u) = self.owner.user {
            write!(f, " user {u}")?;
        }
        Ok(())
    }
}

/// One `[[assert]]` entry: `probe` from every address of `remote` must get `expect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assertion {
    pub probe: Probe,
    /// `from` (inbound) or `to` (outbound). `None`: every address, IPv4 and IPv6.
    pub remote: Option<IpNet>,
    pub expect: Action,
    pub origin: Origin,
}

impl Ruleset {
    /// The file a rule or assertion was written in.
    pub fn file_of(&self, origin: &Origin) -> &Path {
        match origin.file.checked_sub(1) {
            Some(i) => self.included.get(i).map_or(&self.source, |p| p),
            None => &self.source,
        }
    }

    /// Where a rule or assertion is, for messages: `line 12` in the rules file itself,
    /// `rules.d/web.toml line 3` in an included file (relative to the rules file's directory
    /// where it is inside it).
    pub fn place(&self, origin: &Origin) -> String {
        match self.included_name(origin) {
            Some(file) => format!("{file} line {}", origin.line),
            None => format!("line {}", origin.line),
        }
    }

    /// The included file `origin` is in, as [`Self::place`] shows it; `None` for the rules
    /// file itself.
    pub fn included_name(&self, origin: &Origin) -> Option<String> {
        if origin.file == 0 {
            return None;
        }
        let file = self.file_of(origin);
        let shown = self
            .source
            .parent()
            .and_then(|dir| file.strip_prefix(dir).ok())
            .unwrap_or(file);
        Some(shown.display().to_string())
    }

    pub fn inbound(&self) -> impl Iterator<Item = &Rule> {
        self.of(Direction::In)
    }

    pub fn outbound(&self) -> impl Iterator<Item = &Rule> {
        self.of(Direction::Out)
    }

    /// The rules of one direction, in file order.
    pub fn of(&self, direction: Direction) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(move |r| r.direction == direction)
    }

    /// The default verdict of a direction.
    /// The names the inbound rules name, which the daemon looks up: sorted, each once.
    pub fn lookups(&self) -> Vec<&str> {
        let names: std::collections::BTreeSet<&str> = self
            .of(Direction::In)
            .flat_map(|r| r.names.iter().map(|n| n.name.as_str()))
            .collect();
        names.into_iter().collect()
    }

    /// These rules with each inbound rule's names replaced by the addresses `addresses` gives
    /// for them, as if the file listed them: what the compiler writes into the tables. (The
    /// oracle asks for the addresses instead, per packet: [`crate::policy::Selectors`].)
    pub fn with_lookups(&self, addresses: &dyn Fn(&str) -> Vec<std::net::IpAddr>) -> Ruleset {
        let mut rs = self.clone();
        for rule in rs.rules.iter_mut().filter(|r| r.direction == Direction::In) {
            if rule.names.is_empty() {
                continue;
            }
            let remote = rule.remote.get_or_insert_with(Nets::new);
            for name in std::mem::take(&mut rule.names) {
                remote.extend(
                    addresses(&name.name)
                        .into_iter()
                        .map(|a| IpNet::from(firewall_common::addr::canonical(a))),
                );
            }
            remote.sort_unstable();
            remote.dedup();
        }
        rs
    }

    /// Whether DNS answers are read: some outbound rule names a name, or `[dns] enforce`.
    pub fn reads_names(&self) -> bool {
        self.dns.enforce || self.of(Direction::Out).any(|r| !r.names.is_empty())
    }

    /// What an outbound call no rule decides gets: `[defaults] outbound`, or with
    /// `[dns] enforce` and a destination without a name, `reject` instead of `allow`.
    pub fn default_outbound(&self, named: bool) -> Action {
        match self.defaults.outbound {
            Action::Allow if self.dns.enforce && !named => Action::Reject,
            a => a,
        }
    }

    pub fn default_action(&self, direction: Direction) -> Action {
        match direction {
            Direction::In => self.defaults.inbound,
            Direction::Out => self.defaults.outbound,
        }
    }

    /// Whether the decisions of `rule` are logged: its own `log`, else `[log] denied` for its
    /// `reject` and `stealth`.
    pub fn logs(&self, rule: &Rule) -> bool {
        rule.log
            .unwrap_or(self.log.denied && rule.action != Action::Allow)
    }

    /// Whether the decisions of `[defaults]` for `direction` are logged.
    pub fn logs_default(&self, direction: Direction) -> bool {
        self.log.denied && self.default_action(direction) != Action::Allow
    }

    /// Whether a segment `[conntrack] invalid` judges is logged (that verdict always denies).
    pub fn logs_invalid(&self) -> bool {
        self.log.denied
    }

    /// Whether some outbound call can be held by `stealth` under these rules.
    pub fn outbound_can_stealth(&self) -> bool {
        self.defaults.outbound == Action::Stealth
            || self.outbound().any(|r| r.action == Action::Stealth)
    }
}

/// What the outbound hooks judge: a connect() of a TCP or UDP socket, or a UDP sendmsg() with
/// an address. The rules' `remote` is the destination address and their `port` the
/// destination port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectMeta {
    /// Destination address. An IPv4-mapped IPv6 address is judged as the IPv4 address it
    /// maps (that is what the packets carry).
    pub remote: IpAddr,
    /// TCP or UDP (other sockets are not judged).
    pub proto: PacketProto,
    pub remote_port: u16,
}

impl ConnectMeta {
    /// The destination as the classifier sees it: IPv4-mapped addresses as IPv4.
    pub fn normalised(&self) -> Self {
        Self {
            remote: firewall_common::addr::canonical(self.remote),
            ..*self
        }
    }

    /// The same lookup as an inbound packet's: `port` is the port the rules name.
    pub fn as_packet(&self) -> PacketMeta {
        let n = self.normalised();
        PacketMeta {
            remote: n.remote,
            proto: n.proto,
            local_port: n.remote_port,
        }
    }

    /// Destinations Linux reaches over loopback, which outbound rules never judge:
    /// 127.0.0.0/8, ::1, IPv4-mapped 127.0.0.0/8, and the unspecified addresses (a connect to
    /// 0.0.0.0 or :: reaches the host itself).
    pub fn on_loopback(&self) -> bool {
        let n = self.normalised();
        n.remote.is_loopback() || n.remote.is_unspecified()
    }
}

/// Whether `ip` is an IPv6 address standing for an IPv4 one: IPv4-mapped (`::ffff:0:0/96`)
/// or IPv4-compatible (`::/96`, except `::` and `::1`). The datapath drops IPv6 packets with
/// such a source or destination, in both directions, before the connection table and the
/// rules: no host sends them, and judged by the IPv6 rules they could open a flow for the
/// IPv4 peer they name. `::` stays (duplicate address detection and MLD send from it).
pub fn embeds_ipv4(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => false,
        IpAddr::V6(a) => {
            let s = a.segments();
            s[..5] == [0; 5]
                && (s[5] == 0xffff || (s[5] == 0 && !a.is_unspecified() && !a.is_loopback()))
        }
    }
}

/// What the classifier needs to know about an inbound packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PacketMeta {
    pub remote: IpAddr,
    pub proto: PacketProto,
    /// Local (destination) port for TCP and UDP; 0 otherwise.
    pub local_port: u16,
}
