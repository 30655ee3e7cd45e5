//! The raw layer: the file format as serde sees it, one struct per table. The structs'
//! documentation is the reference of every key (the man page includes it); enum-like keys stay
//! strings here so that a bad value gets a message listing the allowed ones, at the value's
//! position, and numbers stay wide ([`RawInt`]) so that range errors quote what was written.

use std::{fmt, marker::PhantomData};

use serde::{
    Deserialize,
    de::{self, DeserializeOwned, IgnoredAny, IntoDeserializer, Visitor},
};
use toml::Spanned;

/// `[daemon]`: how the daemon attaches and where it keeps its state.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    /// `"auto"`, or a list of interface names such as `["eth0", "wlan0"]`. `auto` means every
    /// non-loopback interface that is up when the daemon starts. Default `"auto"`.
    pub(super) interfaces: Option<Spanned<OneOrMany<IfName>>>,
    /// `"auto"` | `"native"` | `"generic"`: XDP attach mode. `auto` uses the driver's native
    /// mode and falls back to generic (skb) mode where the driver has none. Default `"auto"`.
    pub(super) xdp_mode: Option<Spanned<String>>,
    /// Absolute path of the Unix socket `fwctl` talks to. Default
    /// `"/run/firewall/control.sock"`.
    pub(super) control_socket: Option<Spanned<String>>,
    /// Name of a group whose members may use the control socket besides root. Default: none.
    pub(super) control_group: Option<Spanned<String>>,
    /// Absolute path (on a bpffs mount) where the maps shared by every rule-set generation
    /// (counters, reject budgets) are pinned. Default `"/sys/fs/bpf/firewall"`.
    pub(super) pin_dir: Option<Spanned<String>>,
    /// Absolute path of the directory where the daemon keeps the members of runtime sets
    /// (`sets.json`) across restarts. Default `"/var/lib/firewall"`.
    pub(super) state_dir: Option<Spanned<String>>,
    /// `"keep"` | `"detach"`: whether a daemon stopped by SIGTERM leaves the firewall
    /// enforcing its last rules (pinned, adopted by the next daemon) or detaches it. Default
    /// `"keep"`.
    pub(super) on_stop: Option<Spanned<String>>,
    /// Absolute path of a cgroup v2 directory: the outbound rules judge the sockets of the
    /// processes in it and in its descendants. Default: the root of the cgroup2 mount (every
    /// process on the host), found in /proc/self/mountinfo when the daemon starts. The daemon
    /// checks at start that the path is a directory on a cgroup2 file system.
    pub(super) cgroup: Option<Spanned<String>>,
}

/// `[defaults]`: what happens when no rule matches.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    /// `"allow"` | `"reject"` | `"stealth"` for inbound packets no rule matches. `stealth`
    /// drops silently; `reject` answers with a TCP RST or ICMP port unreachable. Default
    /// `"stealth"`.
    pub(super) inbound: Option<Spanned<String>>,
    /// `"allow"` | `"reject"` | `"stealth"` for outbound connections no rule matches: a TCP
    /// connect, a UDP connect, or a UDP datagram sent with an address. `reject` makes the call
    /// fail at once with EPERM; `stealth` lets it proceed and drops its packets. Default
    /// `"allow"`.
    pub(super) outbound: Option<Spanned<String>>,
    /// `"allow"` | `"stealth"`: non-first IP fragments, which carry no port to judge. Default
    /// `"allow"`.
    pub(super) fragments: Option<Spanned<String>>,
}

/// `[reject]`: rate limit on reject replies, so `reject` rules cannot be turned into a
/// reflector.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReject {
    /// Replies per second each source address may receive, 1 to 1000000; beyond that rejects
    /// degrade to silent drops. Default 100.
    pub(super) rate_per_sec: Option<Spanned<RawInt>>,
    /// Replies a source may receive in a burst (the token bucket size), at least 1. Default 200.
    pub(super) burst: Option<Spanned<RawInt>>,
    /// Replies per second the host sends to all sources together, 1 to 1000000, with one
    /// second's worth of burst. Default 1000 (Linux's own cap on its ICMP errors).
    pub(super) global_rate_per_sec: Option<Spanned<RawInt>>,
}

/// `[conntrack]`: connection tracking: the size of the flow tables, the verdict for stray TCP
/// segments, and (in `[conntrack.timeouts]`) how long idle flows are kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConntrack {
    /// Most confirmed flows (established TCP, replied UDP) tracked at once, 1024 to 16777216.
    /// A plain hash map: entries leave only by expiring, never by eviction. Default 262144.
    pub(super) table_size: Option<Spanned<RawInt>>,
    /// Most unconfirmed flows (TCP handshakes, unreplied UDP, ICMP echo) tracked at once, 1024 to
    /// 4194304. An LRU map: when full, the least recently used entry is evicted, so a flood of
    /// new flows cannot crowd out confirmed ones. Default 65536.
    pub(super) unconfirmed_size: Option<Spanned<RawInt>>,
    /// `"stealth"` | `"reject"`: a TCP segment that is not a SYN and belongs to no tracked
    /// connection. `stealth` drops it silently; `reject` answers with a RST. Default
    /// `"stealth"`.
    pub(super) invalid: Option<Spanned<String>>,
    /// How often the daemon removes expired entries: a duration (see [`RawDuration`]) from 1s
    /// to 1h. Default `"10s"`.
    pub(super) gc_interval: Option<Spanned<RawDuration>>,
    /// `true` | `false`: record which program owns each connection, for `fwctl conns`. The
    /// outbound hooks then note who connects each socket, which costs every new outbound
    /// connection about a microsecond (see the README). Default `true`.
    pub(super) record_owner: Option<Spanned<bool>>,
    /// `[conntrack.timeouts]`, see [`RawCtTimeouts`]. Named here so that the key is known; the
    /// table itself is taken out beforehand and checked on its own, so that its unknown keys
    /// and bad values are reported like any other table's.
    #[serde(rename = "timeouts")]
    pub(super) _timeouts: Option<IgnoredAny>,
}

/// `[log]`: the decision log. Events go from the kernel through a ring buffer to the daemon,
/// which writes them to the journal (fields `RULE`, `ACTION`, `DIRECTION`, ...) and streams
/// them to `fwctl monitor`. The budget is a token bucket in the kernel: events over it are
/// dropped and counted (`log_over_budget`), never queued, so a flood costs the datapath no
/// more than the counting.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    /// `true` | `false`: log the `reject` and `stealth` decisions of rules that have no `log`
    /// key of their own, of `[defaults]` and of `[conntrack] invalid`. Default `true`.
    pub(super) denied: Option<Spanned<bool>>,
    /// Events per second each CPU may log, 1 to 100000. Default 50.
    pub(super) rate: Option<Spanned<RawInt>>,
    /// Events each CPU may log in a burst (the token bucket's size), 1 to 100000. Default 100.
    pub(super) burst: Option<Spanned<RawInt>>,
}

/// `[dns]`: how long a name learnt from a DNS answer stays on its addresses (outbound rules
/// that name names, `crate::names`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    /// The shortest time a name stays, whatever the record's TTL: a duration, 0 to 1 day.
    /// Default 60s.
    pub(super) min_ttl: Option<Spanned<RawDuration>>,
    /// The longest time a name stays, whatever the record's TTL: a duration, 1s to 7 days.
    /// Default 1d.
    pub(super) max_ttl: Option<Spanned<RawDuration>>,
    /// Added to every time: connections that start just after the record expired (from a
    /// resolver's cache) still find the name. A duration, 0 to 1 hour. Default 30s.
    pub(super) grace: Option<Spanned<RawDuration>>,
    /// `true`: an outbound connection to an address no DNS answer named, that no rule
    /// decides, is refused (reject) instead of `[defaults] outbound = "allow"`. Default false.
    pub(super) enforce: Option<Spanned<bool>>,
    /// The servers the daemon asks for the addresses of the inbound rules' names: addresses,
    /// with a port or not (53). Default: those of /etc/resolv.conf.
    pub(super) servers: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[metrics]`: the counters for Prometheus, off unless `listen` or `textfile` is given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    /// Where to serve `GET /metrics` (OpenMetrics text): `"127.0.0.1:9741"`, `"[::1]:9741"`,
    /// or an absolute path for a Unix socket (`"/run/firewall/metrics.sock"`).
    pub(super) listen: Option<Spanned<String>>,
    /// A file to rewrite every `interval` for node_exporter's textfile collector (absolute,
    /// ending in `.prom`): `"/var/lib/prometheus/node-exporter/firewall.prom"`.
    pub(super) textfile: Option<Spanned<String>>,
    /// How often the textfile is written, 1s to 1h. Default `"15s"`.
    pub(super) interval: Option<Spanned<RawDuration>>,
}

/// `[conntrack.timeouts]`: how long an idle flow stays tracked, per protocol state. Each is a
/// duration (see [`RawDuration`]) from 1s to 1d, except `tcp_established`: 1s to 365d.
/// Defaults are those of Linux `nf_conntrack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCtTimeouts {
    /// SYN seen, no SYN-ACK yet. Default `"2m"`.
    pub(super) tcp_syn_sent: Option<Spanned<RawDuration>>,
    /// SYN-ACK seen, handshake not completed. Default `"1m"`.
    pub(super) tcp_syn_recv: Option<Spanned<RawDuration>>,
    /// Handshake completed. Default `"5d"`.
    pub(super) tcp_established: Option<Spanned<RawDuration>>,
    /// First FIN seen. Default `"2m"`.
    pub(super) tcp_fin_wait: Option<Spanned<RawDuration>>,
    /// FIN acknowledged, the other side has not closed yet. Default `"1m"`.
    pub(super) tcp_close_wait: Option<Spanned<RawDuration>>,
    /// FINs seen both ways, last ACK pending. Default `"30s"`.
    pub(super) tcp_last_ack: Option<Spanned<RawDuration>>,
    /// Closed, lingering for stray segments. Default `"2m"`.
    pub(super) tcp_time_wait: Option<Spanned<RawDuration>>,
    /// Reset. Default `"10s"`.
    pub(super) tcp_close: Option<Spanned<RawDuration>>,
    /// UDP flow seen in one direction only. Default `"30s"`.
    pub(super) udp_unreplied: Option<Spanned<RawDuration>>,
    /// UDP flow that has seen a reply. Default `"2m"`.
    pub(super) udp_replied: Option<Spanned<RawDuration>>,
    /// ICMP and ICMPv6 echo. Default `"30s"`.
    pub(super) icmp: Option<Spanned<RawDuration>>,
}

/// A `[sets]` entry given as a file: `name = { file = "PATH" }`. The other form is an inline,
/// non-empty list: `name = ["192.168.0.0/16", "fd00::/8", "203.0.113.7"]`.
///
/// Set names use letters, digits, `_` and `-`; rules refer to them as `"@name"`. Entries are
/// CIDRs or plain addresses (`/32` or `/128`); host bits are cleared with a warning.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSetFile {
    /// Path of a file with one CIDR or address per line; `#` starts a comment, blank lines are
    /// ignored. Relative paths resolve against the rules file's directory. An empty file is
    /// allowed (with a warning): rules using the set then match nothing.
    pub(super) file: Spanned<String>,
}

/// `[[rule]]`: one rule. Rules are evaluated in file order; the first match decides.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    /// Label for messages, logs and `fwctl list`. Default `"rule N"` (N counts from 1).
    /// Names need not be unique (duplicates get a warning).
    pub(super) name: Option<Spanned<String>>,
    /// `"in"` | `"out"`. Default `"in"`. Outbound rules judge the host's own TCP and UDP
    /// sockets when they connect or send a datagram with an address; `proto = "icmp"` is not
    /// supported outbound.
    pub(super) direction: Option<Spanned<String>>,
    /// `"tcp"` | `"udp"` | `"icmp"` (ICMP and ICMPv6) | `"any"`. Default `"any"`; `any` with
    /// `port`, `program`, `unit` or `user` means TCP and UDP. `icmp` does not go with
    /// `program`, `unit` or `user`.
    pub(super) proto: Option<Spanned<String>>,
    /// Local port(s) of an inbound rule, destination port(s) of an outbound one: a number
    /// (`22`), a service name from `/etc/services` looked up for the rule's proto (`"ssh"`; for
    /// `any`, for TCP or UDP), a range (`"8000-8100"`), or a list of these. Absent: every port.
    /// Not allowed with `proto = "icmp"`.
    pub(super) port: Option<Spanned<OneOrMany<RawPort>>>,
    /// Remote address(es) (the source of an inbound packet, the destination of an outbound
    /// connection): a string or a list of CIDRs, plain addresses and `"@set"` references.
    /// Absent: every address (there is no `"any"` keyword).
    pub(super) remote: Option<Spanned<OneOrMany<RemoteEntry>>>,
    /// `"allow"` | `"reject"` | `"stealth"`. Required.
    pub(super) action: Option<Spanned<String>>,
    /// Only sockets of this executable: an absolute path (`"/usr/bin/firefox"`), kept as
    /// written, without `.` or `..` components. The file need not exist yet: the path is
    /// resolved (to the file's device and inode) when the rules are loaded and again when the
    /// file is replaced.
    pub(super) program: Option<Spanned<ProgramPath>>,
    /// Only sockets of processes in this systemd unit (or below it): a unit name with its type
    /// suffix (`"nginx.service"`, `"session-2.scope"`, `"user.slice"`).
    pub(super) unit: Option<Spanned<UnitName>>,
    /// Only sockets of processes running as this user: a uid (`33`, 0-4294967294) or a user
    /// name (`"www-data"`), which is resolved to its uid when the file is read.
    ///
    /// `program`, `unit` and `user` combine with each other (all must match) and with every
    /// other key; they are about TCP and UDP sockets, so they do not go with `proto = "icmp"`.
    pub(super) user: Option<Spanned<RawUser>>,
    /// `true` | `false`: log this rule's decisions (`true` also logs the connections an
    /// `allow` rule admits, one event for each connection's first packet or call). Default:
    /// `[log] denied` for `reject` and `stealth` rules, no for `allow` rules.
    pub(super) log: Option<Spanned<bool>>,
}

pub(super) const TOP_LEVEL_KEYS: &[&str] = &[
    "daemon",
    "defaults",
    "reject",
    "conntrack",
    "log",
    "sets",
    "rule",
    "assert",
    "include",
    "metrics",
    "dns",
];

/// A value that may be written once or as a list: `port = 22` or `port = [22, 80]`.
#[derive(Debug)]
pub(super) enum OneOrMany<T> {
    One(T),
    Many(Vec<Spanned<T>>),
}

/// What one element of a [`OneOrMany`] is, for "expected ..." messages.
trait Item: DeserializeOwned {
    const WHAT: &'static str;
}

impl<'de, T: Item> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor<T>(PhantomData<T>);

        // Scalars go to the item's own visitor, which owns the "expected" wording.
        impl<'de, T: Item> Visitor<'de> for OneOrManyVisitor<T> {
            type Value = OneOrMany<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}, or a list of these", T::WHAT)
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }

        deserializer.deserialize_any(OneOrManyVisitor(PhantomData))
    }
}

/// Deserializes an integer or a string into the two variants of an enum, with `WHAT` in the type
/// error. Both are checked later, with their position, rather than by serde.
macro_rules! number_or_text_item {
    ($(#[$doc:meta])* $name:ident { $number:ident, $text:ident }, $what:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub(super) enum $name {
            $number(i128),
            $text(String),
        }

        impl Item for $name {
            const WHAT: &'static str = $what;
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct NumberOrTextVisitor;

                impl Visitor<'_> for NumberOrTextVisitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }

                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$name, E> {
                        Ok($name::$number(v.into()))
                    }

                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        Ok($name::$number(v.into()))
                    }

                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        Ok($name::$text(v.to_owned()))
                    }
                }

                deserializer.deserialize_any(NumberOrTextVisitor)
            }
        }
    };
}

number_or_text_item!(
    /// One `port` element.
    RawPort { Number, Text },
    r#"a port (22), a service name ("ssh") or a range ("8000-8100")"#
);

/// Deserializes a string, with `WHAT` in the type error.
macro_rules! string_item {
    ($name:ident, $what:expr) => {
        #[derive(Debug)]
        pub(super) struct $name(pub(super) String);

        impl Item for $name {
            const WHAT: &'static str = $what;
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct StrVisitor;

                impl Visitor<'_> for StrVisitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }

                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        Ok($name(v.to_owned()))
                    }
                }

                deserializer.deserialize_str(StrVisitor)
            }
        }
    };
}

string_item!(
    RemoteEntry,
    r#"an address, a network ("10.0.0.0/8") or a set ("@trusted")"#
);
string_item!(IfName, r#""auto" or an interface name"#);
string_item!(
    ProgramPath,
    r#"an absolute path to an executable ("/usr/bin/firefox")"#
);
string_item!(UnitName, r#"a systemd unit name ("nginx.service")"#);

number_or_text_item!(
    /// A `user`: a uid or a user name.
    RawUser { Uid, Name },
    r#"a user name ("www-data") or a uid (33)"#
);

/// An integer, range-checked later with its position.
#[derive(Debug)]
pub(super) struct RawInt(pub(super) i128);

impl<'de> Deserialize<'de> for RawInt {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl Visitor<'_> for IntVisitor {
            type Value = RawInt;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawInt, E> {
                Ok(RawInt(v.into()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawInt, E> {
                Ok(RawInt(v.into()))
            }
        }

        deserializer.deserialize_any(IntVisitor)
    }
}

/// A duration: whole seconds as a non-negative integer (`120`), or a string that
/// [`jiff::Span`] reads, with days as 24 hours: `"30s"`, `"2m"`, `"1h30m"`, `"5d"`, `"5 days"`,
/// `"1w"`, ISO 8601 `"PT2M"`. Checked later, with its position: the result must be whole
/// seconds, and months and years (which have no fixed length) are refused.
#[derive(Debug)]
pub(super) enum RawDuration {
    Seconds(i128),
    Text(String),
}

impl RawDuration {
    const WHAT: &'static str =
        r#"a duration: seconds (120) or a string such as "30s", "2m", "1h30m" or "5d""#;
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = RawDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(RawDuration::WHAT)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(v.into()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(v.into()))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_owned()))
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}
