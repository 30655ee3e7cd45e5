//! Reading `rules.toml`: text in, a validated [`Ruleset`] out — or every problem found, each
//! as `FILE:LINE:COL: message`.
//!
//! The document is first parsed into toml's spanned tree ([`DeTable`]), so every key and value
//! keeps its byte range. Each section, set and rule is then deserialized on its own into one of
//! the `Raw*` structs below (which mirror the file format and document every key), so a broken
//! rule does not hide the problems of the next one. Last, the raw values are checked and
//! resolved (service names, sets, CIDRs) into [`crate::model`] types.
//!
//! Top-level tables: `[daemon]` (`RawDaemon`), `[defaults]` (`RawDefaults`), `[reject]`
//! (`RawReject`), `[conntrack]` (`RawConntrack`, with `[conntrack.timeouts]` in
//! `RawCtTimeouts`), `[sets]` (see `RawSetFile`) and any number of `[[rule]]` (`RawRule`).
//! Every table and every key is optional except a rule's `action`. Unknown keys are errors:
//! a firewall must never quietly ignore a line the admin wrote.

use std::{
    cell::Cell,
    collections::{BTreeMap, BTreeSet, HashMap, hash_map::Entry},
    fmt, fs, io,
    marker::PhantomData,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{
    Deserialize,
    de::{self, DeserializeOwned, IgnoredAny, IntoDeserializer, Visitor},
};
use toml::{
    Spanned,
    de::{DeTable, DeValue, ValueDeserializer},
};

use crate::model::{
    Action, Conntrack, CtTimeouts, DaemonConfig, Defaults, Direction, FragmentPolicy, Interfaces,
    InvalidPolicy, OnStop, Origin, PortRange, Proto, RejectLimits, Rule, Ruleset, Selector,
    XdpMode,
};

/// Where service names (`port = "ssh"`) are looked up unless [`Env`] says otherwise.
pub const DEFAULT_SERVICES_PATH: &str = "/etc/services";

/// The largest rules or set file read, in bytes: far above any real file (a blocklist of a
/// million networks is about 20 MiB), far below what would strain the daemon's memory.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Bounds of `[reject] rate_per_sec`.
const MAX_REJECT_RATE: i64 = 1_000_000;
/// Bounds of `[conntrack] table_size`, the confirmed-flow map: small enough that the kernel
/// memory it pins stays reasonable for a host, large enough to be of use at all.
const CT_TABLE_SIZE: (i64, i64) = (1024, 16_777_216);
/// Bounds of `[conntrack] unconfirmed_size`, the LRU map of handshakes and unreplied flows.
const CT_UNCONFIRMED_SIZE: (i64, i64) = (1024, 4_194_304);
const MINUTE: u32 = 60;
const HOUR: u32 = 60 * MINUTE;
const DAY: u32 = 24 * HOUR;
/// Bounds of `[conntrack] gc_interval`, in seconds.
const CT_GC_INTERVAL: (u32, u32) = (1, HOUR);
/// Bounds of every `[conntrack.timeouts]` value but `tcp_established`, in seconds.
const CT_TIMEOUT: (u32, u32) = (1, DAY);
/// Bounds of `[conntrack.timeouts] tcp_established`, in seconds.
const CT_TIMEOUT_ESTABLISHED: (u32, u32) = (1, 365 * DAY);
/// Linux `IFNAMSIZ` minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;
/// A broken set file (say, the wrong format altogether) would otherwise bury the other
/// messages under one per line.
const MAX_REPORTS_PER_SET_FILE: usize = 20;

/// The parts of the outside world a rules file depends on, injectable for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    /// `services(5)` file for service names in `port`. Default `/etc/services`. Only read when a
    /// rule names a service.
    pub services_path: PathBuf,
    /// Directory that relative set file paths (`{ file = "blocklist.txt" }`) resolve against:
    /// the rules file's directory, so a rules directory can be moved as a whole.
    pub base_dir: PathBuf,
}

impl Env {
    /// The environment [`parse`] and [`load`] use for a rules file at `path`.
    pub fn for_rules_file(path: &Path) -> Self {
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self {
            services_path: PathBuf::from(DEFAULT_SERVICES_PATH),
            base_dir,
        }
    }
}

/// One problem, located. Displays as `FILE:LINE:COL: message` (or `FILE: message` when there is
/// no position).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The rules file, or a set file when the problem is inside one.
    pub file: PathBuf,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    /// Already carries the rule (`rule 2 ("ssh"): ...`) or set it concerns.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The rules file itself could not be read. The I/O error is part of the message rather
    /// than a `source()`, so error-chain printers do not repeat it.
    #[error("{}: cannot read: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    /// The file is not a valid rule set. Every problem found, in file order; never empty.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The located problems (empty for [`ConfigError::Read`]).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid(diagnostics) => diagnostics,
        }
    }
}

fn join_lines(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and parses the rules file at `path` (set files relative to its directory, services
/// from `/etc/services`).
pub fn load(path: &Path) -> Result<Ruleset, ConfigError> {
    let text = read_trusted(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text, path)
}

/// Reads a file that decides what the firewall does (the rules file, a set file), refusing one
/// that could hang or exhaust the reader, or that someone other than root could have written:
/// it must be a regular file (a FIFO would block the daemon forever, a device like /dev/zero
/// never end) of at most [`MAX_FILE_BYTES`], owned by root or the reader's own user, and not
/// writable by others, nor by a group other than root's. Symbolic links are followed (the
/// checks apply to the file they lead to); the directories on the way are not checked.
pub fn read_trusted(path: &Path) -> io::Result<String> {
    use std::{
        io::Read as _,
        os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    };
    // O_NONBLOCK: opening a FIFO for reading blocks until a writer comes, and the type is
    // only known once it is open.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    let refuse = |why: String| Err(io::Error::other(why));
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return refuse(format!("{what}, not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return refuse(format!(
            "{} bytes, more than the {} MiB allowed",
            meta.len(),
            MAX_FILE_BYTES >> 20
        ));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return refuse(format!(
            "owned by uid {}, not by root{}: whoever owns it could change the firewall",
            meta.uid(),
            if euid == 0 {
                String::new()
            } else {
                format!(" or uid {euid}")
            }
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 || (mode & 0o020 != 0 && meta.gid() != 0) {
        return refuse(format!(
            "writable by {} (mode {mode:04o}): they could change the firewall; `chmod go-w` it",
            if mode & 0o002 != 0 {
                "everyone".to_string()
            } else {
                format!("the group gid {}", meta.gid())
            }
        ));
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return refuse(format!(
            "grew beyond the {} MiB allowed while being read",
            MAX_FILE_BYTES >> 20
        ));
    }
    Ok(text)
}

/// Parses rules text; `source` names the file in messages and anchors relative set files.
pub fn parse(text: &str, source: &Path) -> Result<Ruleset, ConfigError> {
    parse_with(text, source, &Env::for_rules_file(source))
}

/// [`parse`] with an explicit environment.
pub fn parse_with(text: &str, source: &Path, env: &Env) -> Result<Ruleset, ConfigError> {
    parse_limited(text, source, env, firewall_common::MAX_RULES as usize)
}

// The raw layer: the file format as serde sees it. Enum-like keys stay strings here so that a
// bad value gets a message listing the allowed ones, at the value's position.

/// `[daemon]`: how the daemon attaches and where it keeps its state.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    /// `"auto"`, or a list of interface names such as `["eth0", "wlan0"]`. `auto` means every
    /// non-loopback interface that is up when the daemon starts. Default `"auto"`.
    interfaces: Option<Spanned<OneOrMany<IfName>>>,
    /// `"auto"` | `"native"` | `"generic"`: XDP attach mode. `auto` uses the driver's native
    /// mode and falls back to generic (skb) mode where the driver has none. Default `"auto"`.
    xdp_mode: Option<Spanned<String>>,
    /// Absolute path of the Unix socket `fwctl` talks to. Default
    /// `"/run/firewall/control.sock"`.
    control_socket: Option<Spanned<String>>,
    /// Name of a group whose members may use the control socket besides root. Default: none.
    control_group: Option<Spanned<String>>,
    /// Absolute path (on a bpffs mount) where the maps shared by every rule-set generation
    /// (counters, reject budgets) are pinned. Default `"/sys/fs/bpf/firewall"`.
    pin_dir: Option<Spanned<String>>,
    /// `"keep"` | `"detach"`: whether a daemon stopped by SIGTERM leaves the firewall
    /// enforcing its last rules (pinned, adopted by the next daemon) or detaches it. Default
    /// `"keep"`.
    on_stop: Option<Spanned<String>>,
    /// Absolute path of a cgroup v2 directory: the outbound rules judge the sockets of the
    /// processes in it and in its descendants. Default: the root of the cgroup2 mount (every
    /// process on the host), found in /proc/self/mountinfo when the daemon starts. The daemon
    /// checks at start that the path is a directory on a cgroup2 file system.
    cgroup: Option<Spanned<String>>,
}

/// `[defaults]`: what happens when no rule matches.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    /// `"allow"` | `"reject"` | `"stealth"` for inbound packets no rule matches. `stealth`
    /// drops silently; `reject` answers with a TCP RST or ICMP port unreachable. Default
    /// `"stealth"`.
    inbound: Option<Spanned<String>>,
    /// `"allow"` | `"reject"` | `"stealth"` for outbound connections no rule matches: a TCP
    /// connect, a UDP connect, or a UDP datagram sent with an address. `reject` makes the call
    /// fail at once with EPERM; `stealth` lets it proceed and drops its packets. Default
    /// `"allow"`.
    outbound: Option<Spanned<String>>,
    /// `"allow"` | `"stealth"`: non-first IP fragments, which carry no port to judge. Default
    /// `"allow"`.
    fragments: Option<Spanned<String>>,
}

/// `[reject]`: rate limit on reject replies, so `reject` rules cannot be turned into a
/// reflector.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReject {
    /// Replies per second each source address may receive, 1 to 1000000; beyond that rejects
    /// degrade to silent drops. Default 100.
    rate_per_sec: Option<Spanned<RawInt>>,
    /// Replies a source may receive in a burst (the token bucket size), at least 1. Default 200.
    burst: Option<Spanned<RawInt>>,
    /// Replies per second the host sends to all sources together, 1 to 1000000, with one
    /// second's worth of burst. Default 1000 (Linux's own cap on its ICMP errors).
    global_rate_per_sec: Option<Spanned<RawInt>>,
}

/// `[conntrack]`: connection tracking: the size of the flow tables, the verdict for stray TCP
/// segments, and (in `[conntrack.timeouts]`) how long idle flows are kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConntrack {
    /// Most confirmed flows (established TCP, replied UDP) tracked at once, 1024 to 16777216.
    /// A plain hash map: entries leave only by expiring, never by eviction. Default 262144.
    table_size: Option<Spanned<RawInt>>,
    /// Most unconfirmed flows (TCP handshakes, unreplied UDP, ICMP echo) tracked at once, 1024 to
    /// 4194304. An LRU map: when full, the least recently used entry is evicted, so a flood of
    /// new flows cannot crowd out confirmed ones. Default 65536.
    unconfirmed_size: Option<Spanned<RawInt>>,
    /// `"stealth"` | `"reject"`: a TCP segment that is not a SYN and belongs to no tracked
    /// connection. `stealth` drops it silently; `reject` answers with a RST. Default
    /// `"stealth"`.
    invalid: Option<Spanned<String>>,
    /// How often the daemon removes expired entries: a duration (see [`RawDuration`]) from 1s
    /// to 1h. Default `"10s"`.
    gc_interval: Option<Spanned<RawDuration>>,
    /// `true` | `false`: record which program owns each connection, for `fwctl conns`. The
    /// outbound hooks then note who connects each socket, which costs every new outbound
    /// connection about a microsecond (see the README). Default `true`.
    record_owner: Option<Spanned<bool>>,
    /// `[conntrack.timeouts]`, see [`RawCtTimeouts`]. Named here so that the key is known; the
    /// table itself is taken out beforehand and checked on its own, so that its unknown keys
    /// and bad values are reported like any other table's.
    #[serde(rename = "timeouts")]
    _timeouts: Option<IgnoredAny>,
}

/// `[conntrack.timeouts]`: how long an idle flow stays tracked, per protocol state. Each is a
/// duration (see [`RawDuration`]) from 1s to 1d, except `tcp_established`: 1s to 365d.
/// Defaults are those of Linux `nf_conntrack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCtTimeouts {
    /// SYN seen, no SYN-ACK yet. Default `"2m"`.
    tcp_syn_sent: Option<Spanned<RawDuration>>,
    /// SYN-ACK seen, handshake not completed. Default `"1m"`.
    tcp_syn_recv: Option<Spanned<RawDuration>>,
    /// Handshake completed. Default `"5d"`.
    tcp_established: Option<Spanned<RawDuration>>,
    /// First FIN seen. Default `"2m"`.
    tcp_fin_wait: Option<Spanned<RawDuration>>,
    /// FIN acknowledged, the other side has not closed yet. Default `"1m"`.
    tcp_close_wait: Option<Spanned<RawDuration>>,
    /// FINs seen both ways, last ACK pending. Default `"30s"`.
    tcp_last_ack: Option<Spanned<RawDuration>>,
    /// Closed, lingering for stray segments. Default `"2m"`.
    tcp_time_wait: Option<Spanned<RawDuration>>,
    /// Reset. Default `"10s"`.
    tcp_close: Option<Spanned<RawDuration>>,
    /// UDP flow seen in one direction only. Default `"30s"`.
    udp_unreplied: Option<Spanned<RawDuration>>,
    /// UDP flow that has seen a reply. Default `"2m"`.
    udp_replied: Option<Spanned<RawDuration>>,
    /// ICMP and ICMPv6 echo. Default `"30s"`.
    icmp: Option<Spanned<RawDuration>>,
}

/// A `[sets]` entry given as a file: `name = { file = "PATH" }`. The other form is an inline,
/// non-empty list: `name = ["192.168.0.0/16", "fd00::/8", "203.0.113.7"]`.
///
/// Set names use letters, digits, `_` and `-`; rules refer to them as `"@name"`. Entries are
/// CIDRs or plain addresses (`/32` or `/128`); host bits are cleared with a warning.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSetFile {
    /// Path of a file with one CIDR or address per line; `#` starts a comment, blank lines are
    /// ignored. Relative paths resolve against the rules file's directory. An empty file is
    /// allowed (with a warning): rules using the set then match nothing.
    file: Spanned<String>,
}

/// `[[rule]]`: one rule. Rules are evaluated in file order; the first match decides.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    /// Label for messages, logs and `fwctl list`. Default `"rule N"` (N counts from 1).
    /// Names need not be unique (duplicates get a warning).
    name: Option<Spanned<String>>,
    /// `"in"` | `"out"`. Default `"in"`. Outbound rules judge the host's own TCP and UDP
    /// sockets when they connect or send a datagram with an address; `proto = "icmp"` is not
    /// supported outbound.
    direction: Option<Spanned<String>>,
    /// `"tcp"` | `"udp"` | `"icmp"` (ICMP and ICMPv6) | `"any"`. Default `"any"`; `any` with
    /// `port`, `program`, `unit` or `user` means TCP and UDP. `icmp` does not go with
    /// `program`, `unit` or `user`.
    proto: Option<Spanned<String>>,
    /// Local port(s) of an inbound rule, destination port(s) of an outbound one: a number
    /// (`22`), a service name from `/etc/services` looked up for the rule's proto (`"ssh"`; for
    /// `any`, for TCP or UDP), a range (`"8000-8100"`), or a list of these. Absent: every port.
    /// Not allowed with `proto = "icmp"`.
    port: Option<Spanned<OneOrMany<RawPort>>>,
    /// Remote address(es) (the source of an inbound packet, the destination of an outbound
    /// connection): a string or a list of CIDRs, plain addresses and `"@set"` references.
    /// Absent: every address (there is no `"any"` keyword).
    remote: Option<Spanned<OneOrMany<RemoteEntry>>>,
    /// `"allow"` | `"reject"` | `"stealth"`. Required.
    action: Option<Spanned<String>>,
    /// Only sockets of this executable: an absolute path (`"/usr/bin/firefox"`), kept as
    /// written, without `.` or `..` components. The file need not exist yet: the path is
    /// resolved (to the file's device and inode) when the rules are loaded and again when the
    /// file is replaced.
    program: Option<Spanned<ProgramPath>>,
    /// Only sockets of processes in this systemd unit (or below it): a unit name with its type
    /// suffix (`"nginx.service"`, `"session-2.scope"`, `"user.slice"`).
    unit: Option<Spanned<UnitName>>,
    /// Only sockets of processes running as this user: a uid (`33`, 0-4294967294) or a user
    /// name (`"www-data"`), which is resolved to its uid when the file is read.
    ///
    /// `program`, `unit` and `user` combine with each other (all must match) and with every
    /// other key; they are about TCP and UDP sockets, so they do not go with `proto = "icmp"`.
    user: Option<Spanned<RawUser>>,
}

const TOP_LEVEL_KEYS: &[&str] = &["daemon", "defaults", "reject", "conntrack", "sets", "rule"];

/// A value that may be written once or as a list: `port = 22` or `port = [22, 80]`.
#[derive(Debug)]
enum OneOrMany<T> {
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
        enum $name {
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
        struct $name(String);

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
struct RawInt(i128);

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
enum RawDuration {
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

/// The field names of a derived struct, as serde's derive lists them: the single source of
/// truth for the "expected one of" part of unknown-key messages.
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a Cell<&'static [&'static str]>);

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("field probe"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(de::Error::custom("field probe"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let fields = Cell::new(&[][..]);
    // The probe always fails; only what it recorded matters.
    let _ = T::deserialize(Probe(&fields));
    fields.get()
}

/// The list after "expected one of:".
fn one_of(names: &[&str]) -> String {
    names.join(", ")
}

fn parse_limited(
    text: &str,
    source: &Path,
    env: &Env,
    max_rules: usize,
) -> Result<Ruleset, ConfigError> {
    let mut ck = Checker::new(text, source, env);
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc.into_inner(),
        Err(e) => {
            ck.error(e.span(), format!("TOML syntax error: {}", e.message()));
            return Err(ck.into_error());
        }
    };

    let mut sections: HashMap<&'static str, Spanned<DeValue<'_>>> = HashMap::new();
    for (key, value) in doc {
        match TOP_LEVEL_KEYS
            .iter()
            .find(|k| **k == key.get_ref().as_ref())
        {
            Some(known) => {
                sections.insert(known, value);
            }
            None => ck.error(
                Some(key.span()),
                format!(
                    "unknown top-level key {:?}; expected one of: {}",
                    key.get_ref(),
                    one_of(TOP_LEVEL_KEYS)
                ),
            ),
        }
    }

    let daemon = ck.daemon(sections.remove("daemon"));
    let defaults = ck.defaults(sections.remove("defaults"));
    let reject = ck.reject(sections.remove("reject"));
    let conntrack = ck.conntrack(sections.remove("conntrack"));
    let sets = ck.sets(sections.remove("sets"));
    let (rules, written) = ck.rules(sections.remove("rule"), &sets, max_rules);

    // Every path that drops a rule reports why; this guards that promise, since loading a
    // rule set with a rule silently missing is the one outcome worse than refusing it.
    if ck.errors.is_empty() && rules.len() != written {
        ck.error(
            None,
            format!(
                "internal error: only {} of {written} rules were validated; refusing to load a partial rule set",
                rules.len()
            ),
        );
    }
    if !ck.errors.is_empty() {
        return Err(ck.into_error());
    }
    ck.warnings.sort_by_key(|(order, _)| *order);
    Ok(Ruleset {
        source: source.to_path_buf(),
        daemon,
        defaults,
        reject,
        conntrack,
        sets: sets.expanded,
        rules,
        warnings: ck.warnings.into_iter().map(|(_, w)| w).collect(),
    })
}

/// Messages sort by where they point in the rules file, then by line within a set file.
type Order = (usize, usize);

struct Checker<'a> {
    text: &'a str,
    source: &'a Path,
    env: &'a Env,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
    errors: Vec<(Order, Diagnostic)>,
    warnings: Vec<(Order, String)>,
    /// Read on first use: most rule files name no services.
    services: Option<Result<Services, String>>,
}

/// `[sets]` after checking.
struct Sets {
    /// Sets that are fine, expanded.
    expanded: BTreeMap<String, Vec<IpNet>>,
    /// Every name defined, broken or not: a broken set has already been reported, and its uses
    /// should not add "unknown set" noise.
    defined: BTreeSet<String>,
}

impl<'a> Checker<'a> {
    fn new(text: &'a str, source: &'a Path, env: &'a Env) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            text,
            source,
            env,
            line_starts,
            errors: Vec::new(),
            warnings: Vec::new(),
            services: None,
        }
    }

    fn into_error(mut self) -> ConfigError {
        self.errors.sort_by_key(|(order, _)| *order);
        ConfigError::Invalid(self.errors.into_iter().map(|(_, d)| d).collect())
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self
            .line_starts
            .get(line.wrapping_sub(1))
            .copied()
            .unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line.max(1), column + 1)
    }

    fn diagnostic(&self, span: Option<Range<usize>>, message: String) -> Diagnostic {
        let (line, column) = match span {
            Some(span) => {
                let (line, column) = self.locate(span.start);
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        Diagnostic {
            file: self.source.to_path_buf(),
            line,
            column,
            message,
        }
    }

    fn error(&mut self, span: Option<Range<usize>>, message: String) {
        let order = (span.as_ref().map_or(0, |s| s.start), 0);
        let diagnostic = self.diagnostic(span, message);
        self.errors.push((order, diagnostic));
    }

    fn warn(&mut self, span: Range<usize>, message: String) {
        let order = (span.start, 0);
        let diagnostic = self.diagnostic(Some(span), message);
        self.warnings.push((order, diagnostic.to_string()));
    }

    /// Deserializes one table into `T`, reporting unknown keys (all of them, then dropping them
    /// so the remaining keys are still checked) and the first type error.
    ///
    /// `ctx` prefixes every message (`rule 2 ("ssh"): `), `table` names the table in
    /// unknown-key messages (`[daemon]`), `key_prefix` qualifies key names in type errors
    /// (`daemon.`). `reserved` are fields of `T` that are not advertised as expected keys.
    fn table<T: DeserializeOwned>(
        &mut self,
        value: Spanned<DeValue<'_>>,
        ctx: &str,
        table: &str,
        key_prefix: &str,
        reserved: &[&str],
    ) -> Option<T> {
        let span = value.span();
        let mut entries = match value.into_inner() {
            DeValue::Table(entries) => entries,
            other => {
                self.error(
                    Some(span),
                    format!("{ctx}{table} must be a table, not {}", other.type_str()),
                );
                return None;
            }
        };
        let fields = fields_of::<T>();
        let advertised: Vec<&str> = fields
            .iter()
            .copied()
            .filter(|f| !reserved.contains(f))
            .collect();
        let unknown: Vec<(String, Range<usize>)> = entries
            .keys()
            .filter(|k| !fields.contains(&k.get_ref().as_ref()))
            .map(|k| (k.get_ref().to_string(), k.span()))
            .collect();
        for (key, key_span) in &unknown {
            self.error(
                Some(key_span.clone()),
                format!(
                    "{ctx}unknown key {key:?} in {table}; expected one of: {}",
                    one_of(&advertised)
                ),
            );
            entries.remove(key.as_str());
        }
        let value_spans: Vec<(String, Range<usize>)> = entries
            .iter()
            .map(|(k, v)| (k.get_ref().to_string(), v.span()))
            .collect();
        let deserializer =
            ValueDeserializer::from(Spanned::new(span.clone(), DeValue::Table(entries)));
        match T::deserialize(deserializer) {
            Ok(raw) => Some(raw),
            Err(e) => {
                let at = e.span().unwrap_or(span);
                let key = value_spans
                    .iter()
                    .find(|(_, v)| v.start <= at.start && at.start < v.end.max(v.start + 1))
                    .map(|(k, _)| format!("{key_prefix}{k}: "))
                    .unwrap_or_default();
                self.error(Some(at), format!("{ctx}{key}{}", e.message()));
                None
            }
        }
    }

    /// Resolves an enum-like string against its allowed values.
    fn choice<T: Copy>(
        &mut self,
        value: &Spanned<String>,
        ctx: &str,
        key: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let written = value.get_ref().as_str();
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == written) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let hint = match written.to_ascii_lowercase().as_str() {
            "drop" | "deny" | "block" | "discard" if names.contains(&"stealth") => {
                r#" ("stealth" drops silently, "reject" answers)"#
            }
            "accept" | "pass" | "permit" if names.contains(&"allow") => r#" (use "allow")"#,
            "icmp6" | "icmpv6" | "ipv6-icmp" | "icmpv4" if names.contains(&"icmp") => {
                r#" ("icmp" covers ICMP and ICMPv6)"#
            }
            "both" | "all" | "*" if names.contains(&"any") => r#" (use "any")"#,
            "inbound" | "input" | "ingress" if names.contains(&"in") => r#" (use "in")"#,
            "outbound" | "output" | "egress" if names.contains(&"out") => r#" (use "out")"#,
            _ => "",
        };
        self.error(
            Some(value.span()),
            format!(
                "{ctx}invalid {key} {written:?}; expected one of: {}{hint}",
                one_of(&names)
            ),
        );
        None
    }

    fn daemon(&mut self, value: Option<Spanned<DeValue<'_>>>) -> DaemonConfig {
        let mut out = DaemonConfig::default();
        let Some(raw) =
            value.and_then(|v| self.table::<RawDaemon>(v, "", "[daemon]", "daemon.", &[]))
        else {
            return out;
        };
        if let Some(interfaces) = raw.interfaces
            && let Some(interfaces) = self.interfaces(interfaces)
        {
            out.interfaces = interfaces;
        }
        if let Some(mode) = raw.xdp_mode {
            let options = [
                ("auto", XdpMode::Auto),
                ("native", XdpMode::Native),
                ("generic", XdpMode::Generic),
            ];
            if let Some(mode) = self.choice(&mode, "", "daemon.xdp_mode", &options) {
                out.xdp_mode = mode;
            }
        }
        if let Some(on_stop) = raw.on_stop {
            let options = [("keep", OnStop::Keep), ("detach", OnStop::Detach)];
            if let Some(v) = self.choice(&on_stop, "", "daemon.on_stop", &options) {
                out.on_stop = v;
            }
        }
        if let Some(path) = raw.control_socket
            && let Some(path) = self.absolute_path(&path, "daemon.control_socket")
        {
            out.control_socket = path;
        }
        if let Some(pin_dir) = raw.pin_dir
            && let Some(path) = self.absolute_path(&pin_dir, "daemon.pin_dir")
        {
            out.pin_dir = path;
        }
        if let Some(cgroup) = raw.cgroup
            && let Some(path) = self.absolute_path(&cgroup, "daemon.cgroup")
        {
            out.cgroup = Some(path);
        }
        if let Some(group) = raw.control_group {
            let name = group.get_ref();
            // What groupadd accepts is distro policy; this only refuses what no group name can be.
            if name.is_empty()
                || name.contains([':', '/', '\n'])
                || name.contains(char::is_whitespace)
            {
                self.error(
                    Some(group.span()),
                    format!("daemon.control_group {name:?} is not a valid group name"),
                );
            } else {
                out.control_group = Some(name.clone());
            }
        }
        out
    }

    fn interfaces(&mut self, value: Spanned<OneOrMany<IfName>>) -> Option<Interfaces> {
        let span = value.span();
        let names = match value.into_inner() {
            OneOrMany::One(IfName(name)) if name == "auto" => return Some(Interfaces::Auto),
            OneOrMany::One(IfName(name)) => {
                self.error(
                    Some(span),
                    format!(
                        r#"daemon.interfaces must be "auto" or a list of names; write [{name:?}] for one interface"#
                    ),
                );
                return None;
            }
            OneOrMany::Many(names) => names,
        };
        if names.is_empty() {
            self.error(
                Some(span),
                r#"daemon.interfaces is an empty list, which would protect nothing; use "auto" or name the interfaces"#
                    .to_owned(),
            );
            return None;
        }
        let mut out: Vec<String> = Vec::new();
        let mut ok = true;
        for name in names {
            let name_span = name.span();
            let IfName(name) = name.into_inner();
            // The kernel's own rule (dev_valid_name).
            let valid = !name.is_empty()
                && name.len() <= MAX_IFNAME_LEN
                && name != "."
                && name != ".."
                && !name.contains(['/', ':'])
                && !name.contains(char::is_whitespace);
            if !valid {
                self.error(
                    Some(name_span),
                    format!(
                        "invalid interface name {name:?} in daemon.interfaces (1-{MAX_IFNAME_LEN} bytes, no '/', ':' or spaces)"
                    ),
                );
                ok = false;
            } else if out.contains(&name) {
                self.warn(
                    name_span,
                    format!("interface {name:?} is listed twice in daemon.interfaces"),
                );
            } else {
                out.push(name);
            }
        }
        ok.then_some(Interfaces::List(out))
    }

    fn absolute_path(&mut self, value: &Spanned<String>, key: &str) -> Option<PathBuf> {
        let path = Path::new(value.get_ref());
        if path.is_absolute() {
            Some(path.to_path_buf())
        } else {
            // Relative paths would depend on the daemon's working directory.
            self.error(
                Some(value.span()),
                format!("{key} must be an absolute path, not {:?}", value.get_ref()),
            );
            None
        }
    }

    fn defaults(&mut self, value: Option<Spanned<DeValue<'_>>>) -> Defaults {
        let mut out = Defaults::default();
        let Some(raw) =
            value.and_then(|v| self.table::<RawDefaults>(v, "", "[defaults]", "defaults.", &[]))
        else {
            return out;
        };
        let actions = [
            ("allow", Action::Allow),
            ("reject", Action::Reject),
            ("stealth", Action::Stealth),
        ];
        if let Some(v) = raw.inbound
            && let Some(action) = self.choice(&v, "", "defaults.inbound", &actions)
        {
            out.inbound = action;
        }
        if let Some(v) = raw.outbound
            && let Some(action) = self.choice(&v, "", "defaults.outbound", &actions)
        {
            out.outbound = action;
        }
        if let Some(v) = raw.fragments {
            let options = [
                ("allow", FragmentPolicy::Allow),
                ("stealth", FragmentPolicy::Stealth),
            ];
            if let Some(policy) = self.choice(&v, "", "defaults.fragments", &options) {
                out.fragments = policy;
            }
        }
        out
    }

    fn reject(&mut self, value: Option<Spanned<DeValue<'_>>>) -> RejectLimits {
        let mut out = RejectLimits::default();
        let Some(raw) =
            value.and_then(|v| self.table::<RawReject>(v, "", "[reject]", "reject.", &[]))
        else {
            return out;
        };
        if let Some(rate) = raw.rate_per_sec
            && let Some(rate) = self.bounded(&rate, "reject.rate_per_sec", 1, MAX_REJECT_RATE)
        {
            out.rate_per_sec = rate;
        }
        if let Some(burst) = raw.burst
            && let Some(burst) = self.bounded(&burst, "reject.burst", 1, u32::MAX.into())
        {
            out.burst = burst;
        }
        if let Some(rate) = raw.global_rate_per_sec
            && let Some(rate) =
                self.bounded(&rate, "reject.global_rate_per_sec", 1, MAX_REJECT_RATE)
        {
            out.global_rate_per_sec = rate;
        }
        out
    }

    fn conntrack(&mut self, value: Option<Spanned<DeValue<'_>>>) -> Conntrack {
        let mut out = Conntrack::default();
        let Some(mut value) = value else {
            return out;
        };
        // The nested table is checked on its own: a problem in one does not hide the other's.
        if let DeValue::Table(entries) = value.get_mut()
            && let Some(timeouts) = entries.remove("timeouts")
        {
            out.timeouts = self.ct_timeouts(timeouts);
        }
        let Some(raw) = self.table::<RawConntrack>(value, "", "[conntrack]", "conntrack.", &[])
        else {
            return out;
        };
        if let Some(size) = raw.table_size
            && let Some(size) = self.bounded(
                &size,
                "conntrack.table_size",
                CT_TABLE_SIZE.0,
                CT_TABLE_SIZE.1,
            )
        {
            out.table_size = size;
        }
        if let Some(size) = raw.unconfirmed_size
            && let Some(size) = self.bounded(
                &size,
                "conntrack.unconfirmed_size",
                CT_UNCONFIRMED_SIZE.0,
                CT_UNCONFIRMED_SIZE.1,
            )
        {
            out.unconfirmed_size = size;
        }
        if let Some(v) = raw.invalid {
            let options = [
                ("stealth", InvalidPolicy::Stealth),
                ("reject", InvalidPolicy::Reject),
            ];
            if let Some(policy) = self.choice(&v, "", "conntrack.invalid", &options) {
                out.invalid = policy;
            }
        }
        if let Some(v) = raw.gc_interval
            && let Some(secs) = self.duration(&v, "conntrack.gc_interval", CT_GC_INTERVAL)
        {
            out.gc_interval_secs = secs;
        }
        if let Some(v) = raw.record_owner {
            out.record_owner = *v.get_ref();
        }
        out
    }

    fn ct_timeouts(&mut self, value: Spanned<DeValue<'_>>) -> CtTimeouts {
        let mut out = CtTimeouts::default();
        let Some(raw) = self.table::<RawCtTimeouts>(
            value,
            "",
            "[conntrack.timeouts]",
            "conntrack.timeouts.",
            &[],
        ) else {
            return out;
        };
        let fields = [
            (raw.tcp_syn_sent, "tcp_syn_sent", &mut out.tcp_syn_sent),
            (raw.tcp_syn_recv, "tcp_syn_recv", &mut out.tcp_syn_recv),
            (
                raw.tcp_established,
                "tcp_established",
                &mut out.tcp_established,
            ),
            (raw.tcp_fin_wait, "tcp_fin_wait", &mut out.tcp_fin_wait),
            (
                raw.tcp_close_wait,
                "tcp_close_wait",
                &mut out.tcp_close_wait,
            ),
            (raw.tcp_last_ack, "tcp_last_ack", &mut out.tcp_last_ack),
            (raw.tcp_time_wait, "tcp_time_wait", &mut out.tcp_time_wait),
            (raw.tcp_close, "tcp_close", &mut out.tcp_close),
            (raw.udp_unreplied, "udp_unreplied", &mut out.udp_unreplied),
            (raw.udp_replied, "udp_replied", &mut out.udp_replied),
            (raw.icmp, "icmp", &mut out.icmp),
        ];
        for (value, name, slot) in fields {
            let bounds = if name == "tcp_established" {
                CT_TIMEOUT_ESTABLISHED
            } else {
                CT_TIMEOUT
            };
            if let Some(value) = value
                && let Some(secs) =
                    self.duration(&value, &format!("conntrack.timeouts.{name}"), bounds)
            {
                *slot = secs;
            }
        }
        out
    }

    /// Whole seconds of a duration, within `lo..=hi` seconds.
    fn duration(
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

    fn bounded(&mut self, value: &Spanned<RawInt>, key: &str, lo: i64, hi: i64) -> Option<u32> {
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

    fn sets(&mut self, value: Option<Spanned<DeValue<'_>>>) -> Sets {
        let mut out = Sets {
            expanded: BTreeMap::new(),
            defined: BTreeSet::new(),
        };
        let Some(value) = value else {
            return out;
        };
        let span = value.span();
        let entries = match value.into_inner() {
            DeValue::Table(entries) => entries,
            other => {
                self.error(
                    Some(span),
                    format!("[sets] must be a table, not {}", other.type_str()),
                );
                return out;
            }
        };
        for (key, value) in entries {
            let name = key.get_ref().to_string();
            out.defined.insert(name.clone());
            if !valid_set_name(&name) {
                let hint = if name.starts_with('@') {
                    "; '@' is only written where a rule uses the set"
                } else {
                    ""
                };
                self.error(
                    Some(key.span()),
                    format!("invalid set name {name:?}: use letters, digits, '_' and '-'{hint}"),
                );
                continue;
            }
            if let Some(nets) = self.set(&name, value) {
                out.expanded.insert(name, nets);
            }
        }
        out
    }

    fn set(&mut self, name: &str, value: Spanned<DeValue<'_>>) -> Option<Vec<IpNet>> {
        let ctx = format!("set {name:?}: ");
        let span = value.span();
        match value.get_ref() {
            DeValue::Array(_) => {
                let entries = match Vec::<Spanned<RemoteEntry>>::deserialize(
                    ValueDeserializer::from(value),
                ) {
                    Ok(entries) => entries,
                    Err(e) => {
                        self.error(
                            Some(e.span().unwrap_or(span)),
                            format!("{ctx}{}", e.message()),
                        );
                        return None;
                    }
                };
                if entries.is_empty() {
                    self.error(
                        Some(span),
                        format!(
                            "{ctx}empty set; list at least one address or network (an empty set would match nothing)"
                        ),
                    );
                    return None;
                }
                let mut nets = Vec::with_capacity(entries.len());
                let mut ok = true;
                for entry in &entries {
                    let RemoteEntry(text) = entry.get_ref();
                    if text.starts_with('@') {
                        self.error(
                            Some(entry.span()),
                            format!("{ctx}{text:?}: a set cannot include another set"),
                        );
                        ok = false;
                        continue;
                    }
                    match parse_net(text) {
                        Ok(parsed) => nets.push(self.normalise(parsed, text, &ctx, entry.span())),
                        Err(msg) => {
                            self.error(Some(entry.span()), format!("{ctx}{msg}"));
                            ok = false;
                        }
                    }
                }
                ok.then(|| sorted_unique(nets))
            }
            DeValue::Table(_) => {
                let raw = self.table::<RawSetFile>(value, &ctx, "{ file = ... }", "", &[])?;
                self.set_file(name, &ctx, &raw.file)
            }
            other => {
                self.error(
                    Some(span),
                    format!(
                        r#"{ctx}must be a list of addresses or {{ file = "PATH" }}, not {}"#,
                        other.type_str()
                    ),
                );
                None
            }
        }
    }

    fn normalise(&mut self, net: IpNet, text: &str, ctx: &str, span: Range<usize>) -> IpNet {
        let trunc = net.trunc();
        if trunc != net {
            self.warn(span, format!("{ctx}{}", host_bits_warning(text, trunc)));
        }
        trunc
    }

    fn set_file(&mut self, name: &str, ctx: &str, file: &Spanned<String>) -> Option<Vec<IpNet>> {
        if file.get_ref().is_empty() {
            self.error(Some(file.span()), format!("{ctx}file path is empty"));
            return None;
        }
        let path = self.env.base_dir.join(file.get_ref());
        let text = match read_trusted(&path) {
            Ok(text) => text,
            Err(e) => {
                self.error(
                    Some(file.span()),
                    format!("{ctx}cannot read set file {}: {e}", path.display()),
                );
                return None;
            }
        };
        let anchor = file.span().start;
        let mut nets = Vec::new();
        let mut errors = 0usize;
        let mut warnings = 0usize;
        for (index, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or("");
            let entry = content.trim();
            if entry.is_empty() {
                continue;
            }
            let line_no = index + 1;
            let column = content[..content.len() - content.trim_start().len()]
                .chars()
                .count()
                + 1;
            let here = |message: String| Diagnostic {
                file: path.clone(),
                line: Some(line_no),
                column: Some(column),
                message,
            };
            // Messages about a set file never quote it: they go to control-group members, who
            // may not be allowed to read the file (a symbolic link can lead anywhere root can
            // read). The line and column are enough to find the entry.
            match parse_net_quoting(entry, false) {
                Ok(net) => {
                    let trunc = net.trunc();
                    if trunc != net {
                        warnings += 1;
                        if warnings <= MAX_REPORTS_PER_SET_FILE {
                            let warning = here(format!(
                                "{ctx}this entry has host bits set; they are ignored"
                            ));
                            self.warnings.push(((anchor, line_no), warning.to_string()));
                        }
                    }
                    nets.push(trunc);
                }
                Err(msg) => {
                    errors += 1;
                    if errors <= MAX_REPORTS_PER_SET_FILE {
                        self.errors
                            .push(((anchor, line_no), here(format!("{ctx}{msg}"))));
                    }
                }
            }
        }
        let end = (anchor, usize::MAX);
        if errors > MAX_REPORTS_PER_SET_FILE {
            let more = errors - MAX_REPORTS_PER_SET_FILE;
            let summary = Diagnostic {
                file: path.clone(),
                line: None,
                column: None,
                message: format!("{ctx}{more} more invalid lines not shown"),
            };
            self.errors.push((end, summary));
        }
        if warnings > MAX_REPORTS_PER_SET_FILE {
            let more = warnings - MAX_REPORTS_PER_SET_FILE;
            self.warnings.push((
                end,
                format!(
                    "{}: {ctx}{more} more entries with host bits set not shown",
                    path.display()
                ),
            ));
        }
        if errors > 0 {
            return None;
        }
        if nets.is_empty() {
            self.warn(
                file.span(),
                format!(
                    "{ctx}{} lists no addresses; rules using @{name} match nothing",
                    path.display()
                ),
            );
        }
        Some(sorted_unique(nets))
    }

    fn rules(
        &mut self,
        value: Option<Spanned<DeValue<'_>>>,
        sets: &Sets,
        max_rules: usize,
    ) -> (Vec<Rule>, usize) {
        let Some(value) = value else {
            return (Vec::new(), 0);
        };
        let span = value.span();
        let elements = match value.into_inner() {
            DeValue::Array(elements) => elements,
            DeValue::Table(_) => {
                self.error(
                    Some(span),
                    "rules are written [[rule]] (double brackets: one table per rule), not [rule]"
                        .to_owned(),
                );
                return (Vec::new(), 0);
            }
            other => {
                self.error(
                    Some(span),
                    format!(
                        "rule must be an array of tables ([[rule]]), not {}",
                        other.type_str()
                    ),
                );
                return (Vec::new(), 0);
            }
        };
        if elements.len() > max_rules {
            let first_excess = elements.get(max_rules).map(Spanned::span);
            self.error(
                first_excess,
                format!(
                    "too many rules: this file has {}, at most {max_rules} are allowed",
                    elements.len()
                ),
            );
            return (Vec::new(), 0);
        }

        let written = elements.len();
        let mut rules = Vec::with_capacity(elements.len());
        // name -> (1-based rule number, line) of its first use.
        let mut names: HashMap<String, (usize, usize)> = HashMap::new();
        for (index, element) in elements.into_iter().enumerate() {
            let number = index + 1;
            let header = element.span();
            let line = self.locate(header.start).0;
            let given_name = match element.get_ref() {
                DeValue::Table(t) => t
                    .get("name")
                    .and_then(|v| v.get_ref().as_str())
                    .map(str::to_owned),
                _ => None,
            };
            let ctx = match &given_name {
                Some(name) => format!("rule {number} ({name:?}): "),
                None => format!("rule {number}: "),
            };
            let key_spans: HashMap<String, Range<usize>> = match element.get_ref() {
                DeValue::Table(t) => t
                    .keys()
                    .map(|k| (k.get_ref().to_string(), k.span()))
                    .collect(),
                _ => HashMap::new(),
            };
            let Some(raw) = self.table::<RawRule>(element, &ctx, "[[rule]]", "", &[]) else {
                continue;
            };
            let Some(rule) = self.rule(raw, index, &ctx, header.clone(), line, &key_spans, sets)
            else {
                continue;
            };
            match names.entry(rule.name.clone()) {
                Entry::Occupied(first) => {
                    let (first_number, first_line) = *first.get();
                    self.warn(
                        header,
                        format!(
                            "{ctx}has the same name as rule {first_number} (line {first_line}); names are only labels, but duplicates make logs ambiguous"
                        ),
                    );
                }
                Entry::Vacant(slot) => {
                    slot.insert((number, line));
                }
            }
            rules.push(rule);
        }
        (rules, written)
    }

    #[allow(clippy::too_many_arguments)]
    fn rule(
        &mut self,
        raw: RawRule,
        index: usize,
        ctx: &str,
        header: Range<usize>,
        line: usize,
        key_spans: &HashMap<String, Range<usize>>,
        sets: &Sets,
    ) -> Option<Rule> {
        let mut ok = true;
        let name = match &raw.name {
            Some(name) if name.get_ref().trim().is_empty() => {
                self.error(
                    Some(name.span()),
                    format!(
                        "{ctx}name is empty; leave it out to get the default \"rule {}\"",
                        index + 1
                    ),
                );
                ok = false;
                String::new()
            }
            Some(name) => name.get_ref().clone(),
            None => format!("rule {}", index + 1),
        };

        let selector = self.selector(
            raw.program.as_ref(),
            raw.unit.as_ref(),
            raw.user.as_ref(),
            ctx,
        );
        let direction = match &raw.direction {
            Some(v) => {
                let options = [("in", Direction::In), ("out", Direction::Out)];
                self.choice(v, ctx, "direction", &options)
            }
            None => Some(Direction::In),
        };
        let proto = match &raw.proto {
            Some(v) => {
                let options = [
                    ("tcp", Proto::Tcp),
                    ("udp", Proto::Udp),
                    ("icmp", Proto::Icmp),
                    ("any", Proto::Any),
                ];
                self.choice(v, ctx, "proto", &options)
            }
            None => Some(Proto::Any),
        };
        let actions = [
            ("allow", Action::Allow),
            ("reject", Action::Reject),
            ("stealth", Action::Stealth),
        ];
        let action = match &raw.action {
            Some(v) => self.choice(v, ctx, "action", &actions),
            None => {
                self.error(
                    Some(header.clone()),
                    format!(
                        "{ctx}missing \"action\"; expected one of: {}",
                        one_of(&actions.map(|(name, _)| name))
                    ),
                );
                None
            }
        };

        // Ports are checked even when proto is broken, with "any" standing in, so one run
        // reports both problems.
        let ports = match raw.port {
            None => Some(Vec::new()),
            Some(_) if proto == Some(Proto::Icmp) => {
                let at = key_spans.get("port").cloned();
                self.error(
                    at,
                    format!(
                        r#"{ctx}ports only apply to tcp and udp; this rule has proto = "icmp""#
                    ),
                );
                None
            }
            Some(port) => self.ports(port, proto.unwrap_or(Proto::Any), ctx),
        };
        let (remote, remote_spec) = match raw.remote {
            None => (Some(None), Vec::new()),
            Some(remote) => self.remote(remote, ctx, sets),
        };

        let selector_keys: Vec<&str> = [
            ("\"program\"", raw.program.is_some()),
            ("\"unit\"", raw.unit.is_some()),
            ("\"user\"", raw.user.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, given)| given.then_some(key))
        .collect();

        if proto == Some(Proto::Icmp) && !selector_keys.is_empty() {
            // Rules about a program, unit or user are enforced on sockets (connect, send,
            // accept): TCP and UDP only. With proto = "any" they mean TCP and UDP.
            let at = key_spans
                .get("proto")
                .cloned()
                .unwrap_or_else(|| header.clone());
            self.error(
                Some(at),
                format!(
                    r#"{ctx}proto = "icmp" does not go with {}: rules about a program, unit or user are enforced on TCP and UDP sockets, and ICMP (ping, raw sockets) never passes there nor has a listening program; use proto = "tcp" or "udp", or leave proto out ("any" then means TCP and UDP) — the firewall never ignores a rule it cannot enforce"#,
                    selector_keys.join(" and ")
                ),
            );
            ok = false;
        } else if direction == Some(Direction::Out) && proto == Some(Proto::Icmp) {
            let at = key_spans
                .get("proto")
                .cloned()
                .unwrap_or_else(|| header.clone());
            self.error(
                Some(at),
                format!(
                    r#"{ctx}outbound ICMP rules are not supported yet: outbound rules are enforced where TCP and UDP sockets connect or send, and ICMP (ping, raw sockets) never passes there; remove the rule — the firewall never ignores a rule it cannot enforce"#
                ),
            );
            ok = false;
        }
        let (
            Some(direction),
            Some(proto),
            Some(action),
            Some(ports),
            Some(remote),
            Some(selector),
            true,
        ) = (direction, proto, action, ports, remote, selector, ok)
        else {
            return None;
        };
        let Ok(index) = u32::try_from(index) else {
            self.error(Some(header), format!("{ctx}too many rules"));
            return None;
        };
        Some(Rule {
            index,
            name,
            direction,
            proto,
            ports,
            remote,
            remote_spec,
            selector,
            action,
            origin: Origin { line },
        })
    }

    /// `program`, `unit` and `user`, each checked (all problems reported); `None` if any is
    /// invalid.
    fn selector(
        &mut self,
        program: Option<&Spanned<ProgramPath>>,
        unit: Option<&Spanned<UnitName>>,
        user: Option<&Spanned<RawUser>>,
        ctx: &str,
    ) -> Option<Selector> {
        let program = program.map(|v| (v.span(), program_path(&v.get_ref().0)));
        let program = self.selector_part(program, ctx);
        let unit = unit.map(|v| (v.span(), unit_name(&v.get_ref().0)));
        let unit = self.selector_part(unit, ctx);
        let user = user.map(|v| (v.span(), user_id(v.get_ref())));
        let user = self.selector_part(user, ctx);
        Some(Selector {
            program: program?,
            unit: unit?,
            user: user?,
        })
    }

    /// One checked selector key: `Some(None)` if absent, `None` (reported) if invalid.
    fn selector_part<T>(
        &mut self,
        checked: Option<(Range<usize>, Result<T, String>)>,
        ctx: &str,
    ) -> Option<Option<T>> {
        match checked {
            None => Some(None),
            Some((_, Ok(value))) => Some(Some(value)),
            Some((span, Err(message))) => {
                self.error(Some(span), format!("{ctx}{message}"));
                None
            }
        }
    }

    fn ports(
        &mut self,
        value: Spanned<OneOrMany<RawPort>>,
        proto: Proto,
        ctx: &str,
    ) -> Option<Vec<PortRange>> {
        let span = value.span();
        let items = match value.into_inner() {
            OneOrMany::One(port) => vec![Spanned::new(span.clone(), port)],
            OneOrMany::Many(items) => items,
        };
        if items.is_empty() {
            self.error(
                Some(span),
                format!(
                    "{ctx}empty port list, which would match nothing; leave out \"port\" to match every port"
                ),
            );
            return None;
        }
        let mut ranges = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.port(item.get_ref(), proto) {
                Ok(range) => ranges.push(range),
                Err(msg) => {
                    self.error(Some(item.span()), format!("{ctx}{msg}"));
                    ok = false;
                }
            }
        }
        ok.then(|| merge_ports(ranges))
    }

    fn port(&mut self, port: &RawPort, proto: Proto) -> Result<PortRange, String> {
        let text = match port {
            RawPort::Number(n) => {
                let n = port_number(*n)?;
                return Ok(PortRange { lo: n, hi: n });
            }
            RawPort::Text(text) => text.trim(),
        };
        if text.is_empty() {
            return Err("empty port; write a number, a service name or a range".to_owned());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            let n = port_number(parse_decimal(text))?;
            return Ok(PortRange { lo: n, hi: n });
        }
        // Only digits, dashes and spaces: meant as a range, whether or not it is well formed.
        if text
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-' || b == b' ')
        {
            let malformed = || {
                format!(
                    r#"malformed port range {text:?}; write it as "LOW-HIGH", e.g. "8000-8100""#
                )
            };
            let (lo, hi) = text.split_once('-').ok_or_else(malformed)?;
            let (lo, hi) = (lo.trim(), hi.trim());
            let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if !is_number(lo) || !is_number(hi) {
                return Err(malformed());
            }
            let (lo, hi) = (
                port_number(parse_decimal(lo))?,
                port_number(parse_decimal(hi))?,
            );
            if lo > hi {
                return Err(format!(
                    "reversed port range {text:?}; the first port must not be larger than the last (\"{hi}-{lo}\")"
                ));
            }
            return Ok(PortRange { lo, hi });
        }
        let n = self.service(text, proto)?;
        Ok(PortRange { lo: n, hi: n })
    }

    fn service(&mut self, name: &str, proto: Proto) -> Result<u16, String> {
        let path = self.env.services_path.clone();
        let services = self
            .services
            .get_or_insert_with(|| Services::read(&path))
            .as_ref()
            .map_err(|e| format!("service name {name:?} cannot be looked up: {e}"))?;
        let (tcp, udp) = services.by_name.get(name).copied().unwrap_or((None, None));
        let shown = path.display();
        match proto {
            Proto::Tcp | Proto::Udp => {
                let (wanted, other, proto_name, other_name) = match proto {
                    Proto::Tcp => (tcp, udp, "tcp", "udp"),
                    _ => (udp, tcp, "udp", "tcp"),
                };
                match (wanted, other) {
                    (Some(port), _) => Ok(port),
                    (None, Some(_)) => Err(format!(
                        "service {name:?} is a {other_name} service in {shown}, not {proto_name}; use the port number or proto = \"{other_name}\""
                    )),
                    (None, None) => Err(format!(
                        "unknown service {name:?} for {proto_name} in {shown}"
                    )),
                }
            }
            _ => match (tcp, udp) {
                (Some(t), Some(u)) if t != u => Err(format!(
                    "service {name:?} is tcp port {t} but udp port {u} in {shown}; set proto or use port numbers"
                )),
                (Some(port), _) | (None, Some(port)) => Ok(port),
                (None, None) => Err(format!(
                    "unknown service {name:?} for tcp or udp in {shown}"
                )),
            },
        }
    }

    /// Returns `(Some(remote), spec)` when every entry is fine.
    #[allow(clippy::type_complexity)]
    fn remote(
        &mut self,
        value: Spanned<OneOrMany<RemoteEntry>>,
        ctx: &str,
        sets: &Sets,
    ) -> (Option<Option<Vec<IpNet>>>, Vec<String>) {
        let span = value.span();
        let items = match value.into_inner() {
            OneOrMany::One(entry) => vec![Spanned::new(span.clone(), entry)],
            OneOrMany::Many(items) => items,
        };
        let spec: Vec<String> = items.iter().map(|i| i.get_ref().0.clone()).collect();
        if items.is_empty() {
            self.error(
                Some(span),
                format!(
                    "{ctx}empty remote list, which would match nothing; leave out \"remote\" to match every address"
                ),
            );
            return (None, spec);
        }
        let mut nets = Vec::new();
        let mut ok = true;
        for item in &items {
            let text = item.get_ref().0.as_str();
            if let Some(set) = text.strip_prefix('@') {
                match sets.expanded.get(set) {
                    Some(members) => nets.extend_from_slice(members),
                    None if sets.defined.contains(set) => ok = false,
                    None => {
                        let defined = if sets.defined.is_empty() {
                            "no sets are defined".to_owned()
                        } else {
                            let names: Vec<&str> =
                                sets.defined.iter().map(String::as_str).collect();
                            format!("defined sets: {}", one_of(&names))
                        };
                        self.error(
                            Some(item.span()),
                            format!("{ctx}unknown set {text:?}; {defined}"),
                        );
                        ok = false;
                    }
                }
                continue;
            }
            if text.eq_ignore_ascii_case("any") || text == "*" {
                self.error(
                    Some(item.span()),
                    format!(
                        "{ctx}{text:?} is not a keyword; leave out \"remote\" to match every address"
                    ),
                );
                ok = false;
                continue;
            }
            match parse_net(text) {
                Ok(net) => nets.push(self.normalise(net, text, ctx, item.span())),
                Err(msg) => {
                    self.error(Some(item.span()), format!("{ctx}{msg}"));
                    ok = false;
                }
            }
        }
        (ok.then(|| Some(sorted_unique(nets))), spec)
    }
}

fn valid_set_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
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

/// `86400` as `1d`, `5400` as `90m`: the largest unit that divides exactly.
fn short_duration(secs: u32) -> String {
    for (unit, len) in [("d", DAY), ("h", HOUR), ("m", MINUTE)] {
        if secs != 0 && secs.is_multiple_of(len) {
            return format!("{}{unit}", secs / len);
        }
    }
    format!("{secs}s")
}

/// Only called on ASCII digit strings; saturates, which still reads as "out of range".
fn parse_decimal(digits: &str) -> i128 {
    digits.bytes().fold(0i128, |acc, b| {
        acc.saturating_mul(10).saturating_add(i128::from(b - b'0'))
    })
}

fn port_number(n: i128) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port {n} is out of range (1-65535)")),
    }
}

fn merge_ports(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
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

fn sorted_unique(mut nets: Vec<IpNet>) -> Vec<IpNet> {
    nets.sort();
    nets.dedup();
    nets
}

/// `program`: an absolute path, kept as written (it is resolved when the rules are loaded,
/// so the file need not exist yet).
fn program_path(text: &str) -> Result<PathBuf, String> {
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
fn unit_name(text: &str) -> Result<String, String> {
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
fn user_id(raw: &RawUser) -> Result<u32, String> {
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

fn host_bits_warning(text: &str, trunc: IpNet) -> String {
    format!("{text:?} has host bits set; it is read as {trunc}")
}

/// A CIDR or a plain address (which becomes a /32 or /128). Host bits are kept: the caller
/// clears them and warns.
fn parse_net(text: &str) -> Result<IpNet, String> {
    parse_net_quoting(text, true)
}

/// [`parse_net`]; with `quote` false, messages describe the problem without quoting any of
/// `text`.
fn parse_net_quoting(text: &str, quote: bool) -> Result<IpNet, String> {
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

/// `services(5)`: name -> (tcp port, udp port). Aliases count as names; the first line
/// wins, as with getservbyname(3).
struct Services {
    by_name: HashMap<String, (Option<u16>, Option<u16>)>,
}

impl Services {
    fn read(path: &Path) -> Result<Self, String> {
        let text =
            fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(Self::parse(&text))
    }

    /// Malformed lines are skipped: this is a system file, not ours to police.
    fn parse(text: &str) -> Self {
        let mut by_name: HashMap<String, (Option<u16>, Option<u16>)> = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut fields = line.split_whitespace();
            let (Some(name), Some(port_proto)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some((port, proto)) = port_proto.split_once('/') else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            for alias in std::iter::once(name).chain(fields) {
                let entry = by_name.entry(alias.to_owned()).or_default();
                match proto {
                    "tcp" => {
                        entry.0.get_or_insert(port);
                    }
                    "udp" => {
                        entry.1.get_or_insert(port);
                    }
                    _ => {}
                }
            }
        }
        Self { by_name }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

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

    // ---- invalid files ----

    #[test]
    fn syntax_error_has_position() {
        let err = expect("syntax-error.toml", 1, 6, &["TOML syntax error"]);
        let line = expect_more(&err, "syntax-error.toml", 6, &[":6:10:"]);
        assert!(!line.contains('\n'));
    }

    #[test]
    fn unknown_keys_everywhere_all_reported() {
        let name = "unknown-keys.toml";
        let err = expect(
            name,
            8,
            4,
            &[
                r#":4:1: unknown key "interfaces2" in [daemon]; expected one of: interfaces, xdp_mode, control_socket, control_group, pin_dir, on_stop, cgroup"#,
            ],
        );
        expect_more(
            &err,
            name,
            7,
            &[
                r#"unknown key "inbund" in [defaults]"#,
                "inbound, outbound, fragments",
            ],
        );
        expect_more(
            &err,
            name,
            10,
            &[
                r#"unknown key "rate" in [reject]"#,
                "rate_per_sec, burst, global_rate_per_sec",
            ],
        );
        expect_more(
            &err,
            name,
            13,
            &[
                r#"set "blocklist""#,
                r#"unknown key "format""#,
                "expected one of: file",
            ],
        );
        // The selectors (program, unit, user) are regular keys, advertised like the others.
        expect_more(
            &err,
            name,
            17,
            &[
                r#"rule 1 ("ssh"): unknown key "prot" in [[rule]]; expected one of: name, direction, proto, port, remote, action, program, unit, user"#,
            ],
        );
        expect_more(
            &err,
            name,
            20,
            &[
                r#"unknown top-level key "logging""#,
                "daemon, defaults, reject, conntrack, sets, rule",
            ],
        );
        expect_more(
            &err,
            name,
            24,
            &[
                r#":24:1: unknown key "table" in [conntrack]; expected one of: table_size, unconfirmed_size, invalid, gc_interval, record_owner, timeouts"#,
            ],
        );
        expect_more(
            &err,
            name,
            27,
            &[
                r#":27:1: unknown key "tcp_establised" in [conntrack.timeouts]; expected one of: tcp_syn_sent, tcp_syn_recv, tcp_established, tcp_fin_wait, tcp_close_wait, tcp_last_ack, tcp_time_wait, tcp_close, udp_unreplied, udp_replied, icmp"#,
            ],
        );
        // One line per problem, in file order.
        let lines: Vec<usize> = err.diagnostics().iter().map(|d| d.line.unwrap()).collect();
        assert_eq!(lines, [4, 7, 10, 13, 17, 20, 24, 27]);
    }

    #[test]
    fn wrong_types() {
        let name = "wrong-types.toml";
        let err = expect(
            name,
            4,
            4,
            &[
                "reject.rate_per_sec:",
                "invalid type",
                "string",
                "an integer",
            ],
        );
        expect_more(
            &err,
            name,
            8,
            &[r#"rule 1 ("web"): port:"#, "boolean", "a port (22)"],
        );
        // The name is the broken value, so the rule is identified by number only.
        expect_more(&err, name, 12, &["rule 2: name:", "integer", "a string"]);
        expect_more(
            &err,
            name,
            16,
            &[
                ":16:8: conntrack.timeouts.icmp:",
                "floating point",
                r#"a duration: seconds (120) or a string such as "30s""#,
            ],
        );
    }

    #[test]
    fn unknown_service() {
        let name = "unknown-service.toml";
        let err = expect(
            name,
            2,
            5,
            &[r#":5:17: rule 1 ("web"): unknown service "htpp" for tcp"#],
        );
        expect_more(
            &err,
            name,
            11,
            &[
                r#"rule 2 ("ssh over udp"): service "ssh" is a tcp service"#,
                "not udp",
            ],
        );
    }

    #[test]
    fn port_zero() {
        expect(
            "port-zero.toml",
            1,
            5,
            &[r#":5:8: rule 1 ("zero"): port 0 is out of range (1-65535)"#],
        );
    }

    #[test]
    fn port_too_large() {
        let name = "port-too-large.toml";
        let err = expect(
            name,
            2,
            5,
            &[r#"rule 1 ("big"): port 65536 is out of range (1-65535)"#],
        );
        expect_more(
            &err,
            name,
            11,
            &[r#"rule 2 ("big range"): port 70000 is out of range"#],
        );
    }

    #[test]
    fn port_range_reversed() {
        expect(
            "port-range-reversed.toml",
            1,
            5,
            &[
                r#"rule 1 ("backwards"): reversed port range "9000-8000""#,
                r#""8000-9000""#,
            ],
        );
    }

    #[test]
    fn port_range_malformed() {
        let name = "port-range-malformed.toml";
        let err = expect(name, 2, 5, &[":5:9:", r#"malformed port range "8000-""#]);
        expect_more(
            &err,
            name,
            5,
            &[":5:18:", r#"malformed port range "80-90-100""#],
        );
    }

    #[test]
    fn port_list_empty() {
        expect(
            "port-list-empty.toml",
            1,
            5,
            &[r#"rule 1 ("nothing"): empty port list"#],
        );
    }

    #[test]
    fn port_with_icmp() {
        expect(
            "port-with-icmp.toml",
            1,
            5,
            &[r#":5:1: rule 1 ("ping"): ports only apply to tcp and udp"#],
        );
    }

    #[test]
    fn cidr_prefix_too_long() {
        let name = "cidr-prefix-too-long.toml";
        let err = expect(
            name,
            2,
            3,
            &[
                r#"set "lan": invalid network "10.0.0.0/33": prefix length 33 is out of range for IPv4 (0-32)"#,
            ],
        );
        expect_more(
            &err,
            name,
            7,
            &[
                r#"rule 1 ("v6"): invalid network "2001:db8::/129""#,
                "IPv6 (0-128)",
            ],
        );
    }

    #[test]
    fn address_invalid() {
        let name = "address-invalid.toml";
        let err = expect(name, 2, 4, &[":4:11:", r#"invalid address "300.1.1.1""#]);
        expect_more(
            &err,
            name,
            4,
            &[":4:24:", r#"invalid address "example.com""#],
        );
    }

    #[test]
    fn unknown_set() {
        expect(
            "unknown-set.toml",
            1,
            10,
            &[r#":10:11: rule 1 ("web"): unknown set "@trsted"; defined sets: blocklist, trusted"#],
        );
    }

    #[test]
    fn remote_list_empty() {
        expect(
            "remote-list-empty.toml",
            1,
            4,
            &[r#"rule 1 ("nobody"): empty remote list"#],
        );
    }

    #[test]
    fn remote_any_is_not_a_keyword() {
        expect(
            "remote-any.toml",
            1,
            4,
            &[r#""any" is not a keyword"#, r#"leave out "remote""#],
        );
    }

    #[test]
    fn set_empty() {
        // The rule using the broken set adds no second message.
        expect("set-empty.toml", 1, 3, &[r#"set "trusted": empty set"#]);
    }

    #[test]
    fn set_name_invalid() {
        let name = "set-name-invalid.toml";
        let err = expect(
            name,
            2,
            3,
            &[r#"invalid set name "my set""#, "letters, digits"],
        );
        expect_more(
            &err,
            name,
            4,
            &[r#"invalid set name "@admins""#, "'@' is only written"],
        );
    }

    #[test]
    fn set_file_missing() {
        expect(
            "set-file-missing.toml",
            1,
            3,
            &[
                r#"set "blocklist": cannot read set file"#,
                "does-not-exist.txt",
            ],
        );
    }

    #[test]
    fn action_missing() {
        // Reported at the [[rule]] header.
        expect(
            "action-missing.toml",
            1,
            2,
            &[r#":2:1: rule 1 ("ssh"): missing "action"; expected one of: allow, reject, stealth"#],
        );
    }

    #[test]
    fn invalid_enum_values_list_the_allowed_ones() {
        let name = "invalid-enums.toml";
        let err = expect(
            name,
            6,
            3,
            &[r#"invalid daemon.xdp_mode "fast"; expected one of: auto, native, generic"#],
        );
        expect_more(
            &err,
            name,
            6,
            &[
                r#"invalid defaults.inbound "drop"; expected one of: allow, reject, stealth"#,
                "stealth",
            ],
        );
        expect_more(
            &err,
            name,
            7,
            &[r#"invalid defaults.fragments "reject"; expected one of: allow, stealth"#],
        );
        expect_more(
            &err,
            name,
            11,
            &[r#"rule 1 ("odd"): invalid direction "inbound"; expected one of: in, out"#],
        );
        expect_more(
            &err,
            name,
            12,
            &[
                r#"invalid proto "icmpv6"; expected one of: tcp, udp, icmp, any"#,
                "ICMPv6",
            ],
        );
        expect_more(
            &err,
            name,
            13,
            &[r#"invalid action "deny"; expected one of: allow, reject, stealth"#],
        );
    }

    #[test]
    fn program_unit_user_are_parsed_into_the_selector() {
        let t = test_env();
        let text = r#"
[[rule]]
name = "browser"
direction = "out"
program = "/usr/bin/firefox"
action = "allow"

[[rule]]
name = "web server unit"
unit = "nginx.service"
proto = "tcp"
port = 443
remote = "10.0.0.0/8"
action = "allow"

[[rule]]
name = "root by name"
user = "root"
action = "reject"

[[rule]]
name = "highest uid"
direction = "out"
proto = "udp"
user = 4294967294
action = "stealth"

[[rule]]
name = "all three"
program = "/opt/not-installed-yet/bin/server"
unit = "app@1.service"
user = 33
action = "allow"

[[rule]]
name = "everyone"
action = "allow"
"#;
        let rs = match parse_with(text, Path::new("r.toml"), &t.env) {
            Ok(rs) => rs,
            Err(e) => panic!("should parse:\n{e}"),
        };
        assert!(rs.warnings.is_empty(), "{:?}", rs.warnings);
        let selectors: Vec<&Selector> = rs.rules.iter().map(|r| &r.selector).collect();
        assert_eq!(
            selectors,
            [
                &Selector {
                    program: Some("/usr/bin/firefox".into()),
                    ..Selector::default()
                },
                &Selector {
                    unit: Some("nginx.service".into()),
                    ..Selector::default()
                },
                &Selector {
                    user: Some(0),
                    ..Selector::default()
                },
                &Selector {
                    user: Some(4_294_967_294),
                    ..Selector::default()
                },
                &Selector {
                    program: Some("/opt/not-installed-yet/bin/server".into()),
                    unit: Some("app@1.service".into()),
                    user: Some(33),
                },
                &Selector::default(),
            ]
        );
        assert!(rs.rules[5].selector.is_everyone());
        // The other keys are unaffected by a selector.
        let web = &rs.rules[1];
        assert_eq!(web.index, 1);
        assert_eq!(web.proto, Proto::Tcp);
        assert_eq!(web.ports, [range(443, 443)]);
        assert_eq!(web.remote, Some(vec![net("10.0.0.0/8")]));
        assert_eq!(web.origin.line, 8);
        assert_eq!(rs.rules[0].direction, Direction::Out);
        assert_eq!(rs.rules[0].proto, Proto::Any);
        assert_eq!(rs.rules[3].action, Action::Stealth);
    }

    /// Parses inline text that must fail, returning the message.
    fn invalid_text(text: &str) -> ConfigError {
        let t = test_env();
        match parse_with(text, Path::new("r.toml"), &t.env) {
            Ok(rs) => panic!("should not parse, got {rs:#?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn program_must_be_a_plain_absolute_path() {
        let text = r#"
[[rule]]
name = "relative"
program = "bin/firefox"
action = "allow"
[[rule]]
program = ""
action = "allow"
[[rule]]
program = "/usr/bin/"
action = "allow"
[[rule]]
program = "/usr/../bin/sh"
action = "allow"
[[rule]]
program = "/usr/./bin/sh"
action = "allow"
[[rule]]
program = "/usr/bin/a\u0000b"
action = "allow"
[[rule]]
program = 5
action = "allow"
"#;
        let err = invalid_text(text);
        assert_eq!(err.diagnostics().len(), 7, "{err}");
        expect_line(
            &err,
            "r.toml",
            4,
            &[
                r#"r.toml:4:11: rule 1 ("relative"): program must be an absolute path, not "bin/firefox"; expected the full path to the executable, such as "/usr/bin/firefox""#,
            ],
        );
        expect_line(
            &err,
            "r.toml",
            7,
            &[
                r#":7:11: rule 2: program is empty; expected an absolute path to an executable, such as "/usr/bin/firefox""#,
            ],
        );
        expect_line(
            &err,
            "r.toml",
            10,
            &[
                r#"rule 3: program "/usr/bin/" ends with '/'; expected the path of an executable file, not of a directory"#,
            ],
        );
        expect_line(
            &err,
            "r.toml",
            13,
            &[
                r#"rule 4: program "/usr/../bin/sh" has a "." or ".." component; write the path without them"#,
            ],
        );
        expect_line(
            &err,
            "r.toml",
            16,
            &[r#"rule 5: program "/usr/./bin/sh" has a "." or ".." component"#],
        );
        expect_line(
            &err,
            "r.toml",
            19,
            &[r#"rule 6: program "/usr/bin/a\0b" contains a NUL byte"#],
        );
        expect_line(
            &err,
            "r.toml",
            22,
            &[
                "rule 7: program: invalid type: integer `5`",
                r#"expected an absolute path to an executable ("/usr/bin/firefox")"#,
            ],
        );
    }

    #[test]
    fn unit_must_be_a_unit_name() {
        let long = format!("{}.service", "a".repeat(248));
        let text = format!(
            r#"
[[rule]]
name = "no suffix"
unit = "nginx"
action = "allow"
[[rule]]
unit = "/system.slice/nginx.service"
action = "allow"
[[rule]]
unit = ".."
action = "allow"
[[rule]]
unit = "nginx.service2"
action = "allow"
[[rule]]
unit = ".service"
action = "allow"
[[rule]]
unit = ""
action = "allow"
[[rule]]
unit = "{long}"
action = "allow"
[[rule]]
unit = "{}.service"
action = "allow"
"#,
            "a".repeat(247)
        );
        assert_eq!(long.len(), 256);
        let err = invalid_text(&text);
        assert_eq!(err.diagnostics().len(), 7, "{err}");
        expect_line(
            &err,
            "r.toml",
            4,
            &[
                r#"r.toml:4:8: rule 1 ("no suffix"): unit "nginx" has no type suffix; write the full unit name, such as "nginx.service""#,
            ],
        );
        expect_line(
            &err,
            "r.toml",
            7,
            &[
                r#"rule 2: unit "/system.slice/nginx.service" contains '/'; expected a systemd unit name, not a path or cgroup, such as "nginx.service", "session-2.scope" or "user.slice""#,
            ],
        );
        expect_line(
            &err,
            "r.toml",
            10,
            &[
                r#"rule 3: invalid unit "..": expected a systemd unit name with its type suffix, such as "nginx.service""#,
            ],
        );
        expect_line(
            &err,
            "r.toml",
            13,
            &[r#"rule 4: invalid unit "nginx.service2""#],
        );
        expect_line(&err, "r.toml", 16, &[r#"rule 5: invalid unit ".service""#]);
        expect_line(
            &err,
            "r.toml",
            19,
            &[r#"rule 6: unit is empty; expected a systemd unit name, such as "nginx.service""#],
        );
        expect_line(
            &err,
            "r.toml",
            22,
            &["rule 7: unit name is 256 bytes long; systemd unit names are at most 255 bytes"],
        );
    }

    #[test]
    fn user_must_exist_or_be_a_valid_uid() {
        let text = r#"
[[rule]]
name = "ghost"
user = "no-such-user-fw-test"
action = "allow"
[[rule]]
user = 4294967295
action = "allow"
[[rule]]
user = -1
action = "allow"
[[rule]]
user = 4294967296
action = "allow"
[[rule]]
user = "4000000"
action = "allow"
[[rule]]
user = ""
action = "allow"
[[rule]]
user = 1.5
action = "allow"
[[rule]]
user = 0
action = "allow"
"#;
        let err = invalid_text(text);
        assert_eq!(err.diagnostics().len(), 7, "{err}");
        expect_line(
            &err,
            "r.toml",
            4,
            &[
                r#"r.toml:4:8: rule 1 ("ghost"): user "no-such-user-fw-test" does not exist on this system; create it first, or give its numeric uid instead (user = 1000)"#,
            ],
        );
        expect_line(
            &err,
            "r.toml",
            7,
            &[
                "rule 2: user 4294967295 is not a valid uid (it is (uid_t) -1, reserved); a uid is 0-4294967294",
            ],
        );
        expect_line(
            &err,
            "r.toml",
            10,
            &["rule 3: user -1 is out of range; a uid is 0-4294967294"],
        );
        expect_line(
            &err,
            "r.toml",
            13,
            &["rule 4: user 4294967296 is out of range; a uid is 0-4294967294"],
        );
        expect_line(
            &err,
            "r.toml",
            16,
            &[
                r#"rule 5: user "4000000" does not exist; to give a uid, write it as a number without quotes: user = 4000000"#,
            ],
        );
        expect_line(
            &err,
            "r.toml",
            19,
            &[r#"rule 6: user is empty; expected a user name ("www-data") or a uid (33)"#],
        );
        expect_line(
            &err,
            "r.toml",
            22,
            &[
                "rule 7: user: invalid type: floating point `1.5`",
                r#"expected a user name ("www-data") or a uid (33)"#,
            ],
        );
    }

    #[test]
    fn selectors_do_not_go_with_icmp() {
        let text = r#"
[[rule]]
name = "pinger"
proto = "icmp"
program = "/usr/bin/ping"
action = "allow"
[[rule]]
direction = "out"
proto = "icmp"
unit = "nginx.service"
user = 33
action = "allow"
[[rule]]
direction = "out"
proto = "icmp"
action = "allow"
[[rule]]
proto = "icmp"
port = 22
user = 0
action = "allow"
"#;
        let err = invalid_text(text);
        assert_eq!(err.diagnostics().len(), 5, "{err}");
        expect_line(
            &err,
            "r.toml",
            4,
            &[
                r#"r.toml:4:1: rule 1 ("pinger"): proto = "icmp" does not go with "program": rules about a program, unit or user are enforced on TCP and UDP sockets, and ICMP (ping, raw sockets) never passes there nor has a listening program; use proto = "tcp" or "udp", or leave proto out ("any" then means TCP and UDP) — the firewall never ignores a rule it cannot enforce"#,
            ],
        );
        // Outbound: the selector message, not the outbound ICMP one as well.
        let line = expect_line(
            &err,
            "r.toml",
            9,
            &[r#":9:1: rule 2: proto = "icmp" does not go with "unit" and "user": "#],
        );
        assert!(!line.contains("outbound"), "{line}");
        assert!(
            !err.to_string()
                .contains("r.toml:9:1: rule 2: outbound ICMP"),
            "{err}"
        );
        // Without a selector, outbound ICMP keeps its own message.
        expect_line(
            &err,
            "r.toml",
            15,
            &[r#":15:1: rule 3: outbound ICMP rules are not supported yet"#],
        );
        expect_line(
            &err,
            "r.toml",
            18,
            &[r#"rule 4: proto = "icmp" does not go with "user""#],
        );
        expect_line(
            &err,
            "r.toml",
            19,
            &["rule 4: ports only apply to tcp and udp"],
        );
    }

    #[test]
    fn too_many_rules() {
        let err = invalid_limited("too-many-rules.toml", 2);
        let file = fixture("invalid/too-many-rules.toml").display().to_string();
        expect_line(&err, &file, 8, &["too many rules", "has 3", "at most 2"]);
        assert_eq!(err.diagnostics().len(), 1);
        // The real limit is the kernel's.
        assert!(
            parse_fixture_limited(
                "invalid/too-many-rules.toml",
                firewall_common::MAX_RULES as usize
            )
            .is_ok()
        );
    }

    #[test]
    fn reject_limits_out_of_range() {
        let name = "reject-out-of-range.toml";
        let err = expect(
            name,
            2,
            3,
            &["reject.rate_per_sec = 0 is out of range (1-1000000)"],
        );
        expect_more(
            &err,
            name,
            4,
            &["reject.burst = 0 is out of range (1-4294967295)"],
        );
        expect(
            "reject-rate-too-high.toml",
            1,
            3,
            &["reject.rate_per_sec = 2000000 is out of range"],
        );
        expect(
            "reject-global-rate-out-of-range.toml",
            1,
            3,
            &["reject.global_rate_per_sec = 0 is out of range (1-1000000)"],
        );
    }

    #[test]
    fn conntrack_values_out_of_range() {
        let name = "conntrack-invalid.toml";
        let err = expect(
            name,
            12,
            3,
            &[":3:14: conntrack.table_size = 1000 is out of range (1024-16777216)"],
        );
        expect_more(
            &err,
            name,
            4,
            &[":4:20: conntrack.unconfirmed_size = 8388608 is out of range (1024-4194304)"],
        );
        expect_more(
            &err,
            name,
            5,
            &[
                r#":5:11: invalid conntrack.invalid "drop"; expected one of: stealth, reject ("stealth" drops silently, "reject" answers)"#,
            ],
        );
        expect_more(
            &err,
            name,
            6,
            &[
                r#":6:15: conntrack.gc_interval = "2h" is out of range (1s to 1h, i.e. 1-3600 seconds)"#,
            ],
        );
        expect_more(
            &err,
            name,
            9,
            &[
                ":9:16: conntrack.timeouts.tcp_syn_sent = 0 is out of range (1s to 1d, i.e. 1-86400 seconds)",
            ],
        );
        expect_more(
            &err,
            name,
            10,
            &[
                r#":10:19: conntrack.timeouts.tcp_established = "400d" is out of range (1s to 365d, i.e. 1-31536000 seconds)"#,
            ],
        );
        expect_more(
            &err,
            name,
            11,
            &[
                r#":11:15: conntrack.timeouts.udp_replied = "2d" is out of range (1s to 1d, i.e. 1-86400 seconds)"#,
            ],
        );
        expect_more(
            &err,
            name,
            12,
            &[r#":12:8: conntrack.timeouts.icmp = "1.5s" is not a whole number of seconds"#],
        );
        expect_more(
            &err,
            name,
            13,
            &[
                r#":13:13: conntrack.timeouts.tcp_close = "1 month" uses months or years, which have no fixed length; use days ("30d")"#,
            ],
        );
        expect_more(
            &err,
            name,
            14,
            &[
                r#":14:16: conntrack.timeouts.tcp_fin_wait = "soon" is not a duration; write seconds (120) or a duration such as "30s", "2m", "1h30m" or "5d""#,
            ],
        );
        expect_more(
            &err,
            name,
            15,
            &[r#":15:17: conntrack.timeouts.tcp_time_wait = "-5s" is out of range (1s to 1d"#],
        );
        expect_more(
            &err,
            name,
            16,
            &[":16:16: conntrack.timeouts.tcp_last_ack = 86401 is out of range (1s to 1d"],
        );
    }

    #[test]
    fn conntrack_durations_and_bounds() {
        let t = test_env();
        let timeouts = |body: &str| {
            let text = format!("[conntrack.timeouts]\n{body}\n");
            parse_with(&text, Path::new("r.toml"), &t.env).map(|rs| rs.conntrack.timeouts)
        };
        for (written, secs) in [
            ("30", 30),
            (r#""30s""#, 30),
            (r#"" 2m ""#, 120),
            (r#""1h30m""#, 5400),
            (r#""1h 30m""#, 5400),
            (r#""90 seconds""#, 90),
            (r#""2 mins""#, 120),
            (r#""1 day""#, 86_400),
            (r#""PT2M""#, 120),
            (r#""1000ms""#, 1),
            (r#""1.5m""#, 90),
        ] {
            let got = timeouts(&format!("icmp = {written}"));
            assert_eq!(got.map(|t| t.icmp).ok(), Some(secs), "{written}");
        }
        // Bounds are inclusive; only tcp_established may exceed a day.
        assert_eq!(timeouts("icmp = 1").unwrap().icmp, 1);
        assert_eq!(timeouts("icmp = 86400").unwrap().icmp, 86_400);
        assert!(timeouts("icmp = 86401").is_err());
        assert!(timeouts("udp_replied = \"1w\"").is_err());
        let t365 = timeouts("tcp_established = \"365 days\"").unwrap();
        assert_eq!(t365.tcp_established, 365 * 86_400);
        assert_eq!(
            timeouts("tcp_established = \"52w\"")
                .unwrap()
                .tcp_established,
            364 * 86_400
        );
        let err = timeouts("tcp_established = \"366d\"")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            r#"r.toml:2:19: conntrack.timeouts.tcp_established = "366d" is out of range (1s to 365d, i.e. 1-31536000 seconds)"#
        );
        // Far too large for any unit still reads as out of range, not as a wrapped value.
        let err = timeouts("icmp = 4294967326").unwrap_err().to_string();
        assert!(err.contains("icmp = 4294967326 is out of range"), "{err}");
        let err = timeouts(r#"icmp = """#).unwrap_err().to_string();
        assert!(err.contains(r#"icmp = "" is not a duration"#), "{err}");
        let err = timeouts(r#"icmp = "1y""#).unwrap_err().to_string();
        assert!(err.contains("months or years"), "{err}");
        // Settings left out keep their defaults.
        let only = timeouts("udp_replied = 180").unwrap();
        assert_eq!(
            only,
            CtTimeouts {
                udp_replied: 180,
                ..CtTimeouts::default()
            }
        );

        let conntrack = |body: &str| {
            let text = format!("[conntrack]\n{body}\n");
            parse_with(&text, Path::new("r.toml"), &t.env).map(|rs| rs.conntrack)
        };
        let c =
            conntrack("table_size = 1024\nunconfirmed_size = 4194304\ngc_interval = 3600").unwrap();
        assert_eq!(
            (c.table_size, c.unconfirmed_size, c.gc_interval_secs),
            (1024, 4_194_304, 3600)
        );
        let c = conntrack("table_size = 16777216\nunconfirmed_size = 1024\ngc_interval = \"1s\"")
            .unwrap();
        assert_eq!(
            (c.table_size, c.unconfirmed_size, c.gc_interval_secs),
            (16_777_216, 1024, 1)
        );
        assert_eq!(
            conntrack("invalid = \"stealth\"").unwrap().invalid,
            InvalidPolicy::Stealth
        );
        assert!(conntrack("").unwrap().record_owner);
        assert!(!conntrack("record_owner = false").unwrap().record_owner);
        let err = conntrack("record_owner = \"no\"").unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("bool"), "{err}");
        assert!(conntrack("table_size = 16777217").is_err());
        assert!(conntrack("unconfirmed_size = 1023").is_err());
        assert!(conntrack("gc_interval = 0").is_err());
        assert!(conntrack("gc_interval = \"61m\"").is_err());
        // Inline and dotted forms of the nested table work too.
        let c = conntrack("timeouts = { icmp = \"10s\" }").unwrap();
        assert_eq!(c.timeouts.icmp, 10);
        let c = conntrack("timeouts.tcp_close = 3").unwrap();
        assert_eq!(c.timeouts.tcp_close, 3);
    }

    #[test]
    fn conntrack_shape_errors() {
        let t = test_env();
        let check = |text: &str| {
            let err = parse_with(text, Path::new("r.toml"), &t.env).unwrap_err();
            err.diagnostics()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            check("conntrack = 5\n"),
            ["r.toml:1:13: [conntrack] must be a table, not integer"]
        );
        assert_eq!(
            check("[conntrack]\ntimeouts = \"5d\"\n"),
            ["r.toml:2:12: [conntrack.timeouts] must be a table, not string"]
        );
        // A type error in [conntrack] hides neither [conntrack.timeouts] nor a sibling timeout.
        let text = "\
[conntrack]
table_size = \"big\"
[conntrack.timeouts]
icmp = 0
tcp_close = \"x\"
";
        assert_eq!(
            check(text),
            [
                r#"r.toml:2:14: conntrack.table_size: invalid type: string "big", expected an integer"#,
                "r.toml:4:8: conntrack.timeouts.icmp = 0 is out of range (1s to 1d, i.e. 1-86400 seconds)",
                r#"r.toml:5:13: conntrack.timeouts.tcp_close = "x" is not a duration; write seconds (120) or a duration such as "30s", "2m", "1h30m" or "5d""#,
            ]
        );
    }

    #[test]
    fn conntrack_defaults_are_linux_nf_conntrack() {
        let c = Conntrack::default();
        assert_eq!(c.table_size, 262_144);
        assert_eq!(c.unconfirmed_size, 65_536);
        assert_eq!(c.invalid, InvalidPolicy::Stealth);
        assert_eq!(c.gc_interval_secs, 10);
        let t = &c.timeouts;
        assert_eq!(
            [
                t.tcp_syn_sent,
                t.tcp_syn_recv,
                t.tcp_established,
                t.tcp_fin_wait,
                t.tcp_close_wait,
                t.tcp_last_ack,
                t.tcp_time_wait,
                t.tcp_close,
                t.udp_unreplied,
                t.udp_replied,
                t.icmp
            ],
            [120, 60, 432_000, 120, 60, 30, 120, 10, 30, 120, 30]
        );
        // The defaults are within the bounds the file is held to.
        let text = "[conntrack]\ntable_size = 262144\nunconfirmed_size = 65536\ninvalid = \"stealth\"\ngc_interval = \"10s\"\n[conntrack.timeouts]\ntcp_syn_sent = \"2m\"\ntcp_syn_recv = \"1m\"\ntcp_established = \"5d\"\ntcp_fin_wait = \"2m\"\ntcp_close_wait = \"1m\"\ntcp_last_ack = \"30s\"\ntcp_time_wait = \"2m\"\ntcp_close = \"10s\"\nudp_unreplied = \"30s\"\nudp_replied = \"2m\"\nicmp = \"30s\"\n";
        let rs = parse_with(text, Path::new("r.toml"), &test_env().env).unwrap();
        assert_eq!(rs.conntrack, c);
    }

    #[test]
    fn short_durations() {
        assert_eq!(short_duration(1), "1s");
        assert_eq!(short_duration(90), "90s");
        assert_eq!(short_duration(5400), "90m");
        assert_eq!(short_duration(3600), "1h");
        assert_eq!(short_duration(365 * 86_400), "365d");
        assert_eq!(short_duration(0), "0s");
    }

    #[test]
    fn interfaces_invalid() {
        let name = "interfaces-invalid.toml";
        let err = expect(
            name,
            2,
            3,
            &[
                ":3:23:",
                r#"invalid interface name "a-name-that-is-far-too-long""#,
            ],
        );
        expect_more(
            &err,
            name,
            3,
            &[":3:54:", r#"invalid interface name "br/0""#],
        );
        expect(
            "interfaces-not-auto.toml",
            1,
            3,
            &[
                r#"daemon.interfaces must be "auto" or a list"#,
                r#"["eth0"]"#,
            ],
        );
        expect(
            "interfaces-empty.toml",
            1,
            3,
            &["daemon.interfaces is an empty list"],
        );
    }

    #[test]
    fn daemon_paths_must_be_absolute() {
        let name = "daemon-relative-paths.toml";
        let err = expect(
            name,
            3,
            3,
            &[r#"daemon.control_socket must be an absolute path, not "control.sock""#],
        );
        expect_more(&err, name, 4, &["daemon.pin_dir must be an absolute path"]);
        expect_more(
            &err,
            name,
            5,
            &[r#"daemon.cgroup must be an absolute path, not "firewall.slice""#],
        );
    }

    #[test]
    fn rule_as_single_table() {
        expect("rule-as-table.toml", 1, 2, &["[[rule]]", "not [rule]"]);
    }

    #[test]
    fn outbound_rules_are_validated_too() {
        let name = "outbound-rule-invalid.toml";
        let err = expect(
            name,
            3,
            6,
            &[r#"rule 1 ("dns out"): port 0 is out of range"#],
        );
        expect_more(&err, name, 7, &[r#"invalid address "10.0.0.256""#]);
        expect_more(
            &err,
            name,
            13,
            &[
                r#":13:1: rule 2 ("no pings out"): outbound ICMP rules are not supported yet"#,
                "never ignores a rule it cannot enforce",
            ],
        );
    }

    #[test]
    fn unreadable_rules_file() {
        let t = test_env();
        let path = t.dir.path().join("missing.toml");
        let err = load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("{}: cannot read: ", path.display())),
            "{message}"
        );
        assert!(err.diagnostics().is_empty());
    }

    #[test]
    fn error_display_is_file_line_col_message() {
        let d = Diagnostic {
            file: PathBuf::from("rules.toml"),
            line: Some(14),
            column: Some(8),
            message: "boom".into(),
        };
        assert_eq!(d.to_string(), "rules.toml:14:8: boom");
        let d = Diagnostic {
            line: None,
            column: None,
            ..d
        };
        assert_eq!(d.to_string(), "rules.toml: boom");
    }

    #[test]
    fn columns_count_characters() {
        let text = "[[rule]]\nname = \"é\"\nport = 0\naction = \"allow\"\n# ü\n[[rule]]\nremote = [\"ü\", \"300.1.1.1\"]\naction = \"allow\"\n";
        let err = parse_with(text, Path::new("r.toml"), &test_env().env).unwrap_err();
        let lines: Vec<String> = err.diagnostics().iter().map(ToString::to_string).collect();
        assert!(
            lines[0].starts_with("r.toml:3:8: rule 1 (\"é\"): port 0"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("r.toml:7:11: rule 2: invalid address \"ü\""),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with("r.toml:7:16: rule 2: invalid address \"300.1.1.1\""),
            "{lines:?}"
        );
    }

    // ---- valid files ----

    #[test]
    fn full_example_every_key() {
        let t = test_env();
        let path = fixture("valid/full.toml");
        let text = fs::read_to_string(&path).unwrap();
        let rs = parse_with(&text, &path, &t.env).unwrap();

        assert_eq!(rs.source, path);
        assert_eq!(
            rs.daemon,
            DaemonConfig {
                interfaces: Interfaces::List(vec!["eth0".into(), "wlan0".into()]),
                xdp_mode: XdpMode::Generic,
                control_socket: PathBuf::from("/run/fw/ctl.sock"),
                control_group: Some("netadmin".into()),
                pin_dir: PathBuf::from("/sys/fs/bpf/fw"),
                on_stop: OnStop::Detach,
                cgroup: Some(PathBuf::from("/sys/fs/cgroup/firewall")),
            }
        );
        assert_eq!(
            rs.defaults,
            Defaults {
                inbound: Action::Reject,
                outbound: Action::Stealth,
                fragments: FragmentPolicy::Stealth,
            }
        );
        assert_eq!(
            rs.reject,
            RejectLimits {
                rate_per_sec: 50,
                burst: 75,
                global_rate_per_sec: 500,
            }
        );
        assert_eq!(
            rs.conntrack,
            Conntrack {
                table_size: 1_048_576,
                unconfirmed_size: 131_072,
                invalid: InvalidPolicy::Reject,
                gc_interval_secs: 90,
                record_owner: false,
                timeouts: CtTimeouts {
                    tcp_syn_sent: 60,
                    tcp_syn_recv: 45,
                    tcp_established: 7 * 86_400,
                    tcp_fin_wait: 90,
                    tcp_close_wait: 120,
                    tcp_last_ack: 20,
                    tcp_time_wait: 5400,
                    tcp_close: 5,
                    udp_unreplied: 86_400,
                    udp_replied: 300,
                    icmp: 120,
                },
            }
        );

        let blocklist = vec![
            net("198.51.100.0/24"),
            net("203.0.113.99/32"),
            net("2001:db8:bad::/48"),
        ];
        let trusted = vec![
            net("192.168.0.0/16"),
            net("203.0.113.7/32"),
            net("fd00::/8"),
        ];
        assert_eq!(rs.sets.get("blocklist"), Some(&blocklist));
        assert_eq!(rs.sets.get("trusted"), Some(&trusted));
        // Unused sets are expanded too.
        assert_eq!(rs.sets.get("unused"), Some(&vec![net("198.51.100.1/32")]));
        assert_eq!(rs.sets.len(), 3);

        assert_eq!(rs.rules.len(), 6);
        for (i, rule) in rs.rules.iter().enumerate() {
            assert_eq!(rule.index as usize, i);
        }
        let ssh = &rs.rules[0];
        assert_eq!(ssh.name, "ssh from trusted");
        assert_eq!(ssh.direction, Direction::In);
        assert_eq!(ssh.proto, Proto::Tcp);
        assert_eq!(ssh.ports, [range(22, 22)]);
        let mut expected = trusted.clone();
        expected.push(net("2001:db8::1/128"));
        expected.sort();
        assert_eq!(ssh.remote.as_ref(), Some(&expected));
        assert_eq!(ssh.remote_spec, ["@trusted", "2001:db8::1"]);
        assert_eq!(ssh.action, Action::Allow);
        assert_eq!(ssh.origin, Origin { line: 45 });

        let web = &rs.rules[1];
        assert_eq!(
            web.ports,
            [range(80, 80), range(443, 443), range(8000, 8100)]
        );
        assert_eq!(web.remote, None);
        assert!(web.remote_spec.is_empty());

        // "auth" resolves through an alias line; "ident" would too.
        assert_eq!(rs.rules[2].ports, [range(113, 113)]);
        assert_eq!(rs.rules[2].action, Action::Reject);

        let icmp = &rs.rules[3];
        assert_eq!(icmp.name, "rule 4");
        assert_eq!(icmp.proto, Proto::Icmp);
        assert!(icmp.ports.is_empty());

        let dns = &rs.rules[4];
        assert_eq!(dns.proto, Proto::Any);
        assert_eq!(dns.ports, [range(53, 53)]);
        assert_eq!(dns.remote.as_ref(), Some(&blocklist));
        assert_eq!(dns.action, Action::Stealth);

        let out = &rs.rules[5];
        assert_eq!(out.direction, Direction::Out);
        assert_eq!(out.ports, [range(25, 25)]);
        assert_eq!(out.origin.line, 76);

        assert!(rs.warnings.is_empty(), "{:?}", rs.warnings);
        assert_eq!(rs.inbound().count(), 5);
    }

    #[test]
    fn minimal_and_empty_files_use_defaults() {
        let rs = valid("minimal.toml");
        assert_eq!(rs.daemon, DaemonConfig::default());
        assert_eq!(rs.defaults, Defaults::default());
        assert_eq!(rs.reject, RejectLimits::default());
        assert_eq!(rs.conntrack, Conntrack::default());
        assert!(rs.sets.is_empty());
        assert_eq!(
            rs.rules,
            [Rule {
                index: 0,
                name: "rule 1".into(),
                direction: Direction::In,
                proto: Proto::Any,
                ports: vec![],
                remote: None,
                remote_spec: vec![],
                selector: Default::default(),
                action: Action::Allow,
                origin: Origin { line: 2 },
            }]
        );
        let rs = valid("empty.toml");
        assert!(rs.rules.is_empty());
        assert_eq!(rs.daemon.interfaces, Interfaces::Auto);
        assert!(rs.warnings.is_empty());
    }

    #[test]
    fn normalisation() {
        let rs = valid("normalisation.toml");
        let merged = &rs.rules[0];
        assert_eq!(
            merged.ports,
            [
                range(22, 22),
                range(80, 80),
                range(443, 443),
                range(1000, 2501),
                range(65535, 65535)
            ]
        );
        assert_eq!(
            merged.remote.as_ref(),
            Some(&vec![
                net("10.0.0.0/8"),
                net("192.0.2.1/32"),
                net("2001:db8::/32")
            ])
        );
        assert_eq!(merged.remote_spec, ["@a", "@b", "192.0.2.1", "10.1.2.3/8"]);
        let second = &rs.rules[1];
        assert_eq!(second.ports, [range(100, 100)]);
        assert_eq!(second.remote.as_ref(), Some(&vec![net("2001:db8::/32")]));

        let file = fixture("valid/normalisation.toml").display().to_string();
        assert_eq!(rs.warnings.len(), 3, "{:#?}", rs.warnings);
        assert!(
            rs.warnings[0].starts_with(&format!("{file}:11:")),
            "{:?}",
            rs.warnings
        );
        assert!(
            rs.warnings[0].contains(r#""10.1.2.3/8" has host bits set; it is read as 10.0.0.0/8"#)
        );
        assert!(
            rs.warnings[1].starts_with(&format!(
                "{file}:14:1: rule 2 (\"merged\"): has the same name as rule 1 (line 7)"
            )),
            "{:?}",
            rs.warnings
        );
        assert!(rs.warnings[2].starts_with(&format!("{file}:18:")));
        assert!(rs.warnings[2].contains("2001:db8::/32"));
    }

    #[test]
    fn services_resolve_per_proto() {
        let t = test_env();
        let text = r#"
[[rule]]
proto = "udp"
port = ["https", "mdns"]
action = "allow"
[[rule]]
proto = "any"
port = ["www", "mdns", "ident"]
action = "allow"
"#;
        let rs = parse_with(text, Path::new("r.toml"), &t.env).unwrap();
        assert_eq!(rs.rules[0].ports, [range(443, 443), range(5353, 5353)]);
        assert_eq!(
            rs.rules[1].ports,
            [range(80, 80), range(113, 113), range(5353, 5353)]
        );
    }

    #[test]
    fn services_file_is_only_needed_for_names() {
        let env = Env {
            services_path: PathBuf::from("/nonexistent/services"),
            base_dir: PathBuf::from("/nonexistent"),
        };
        let numeric = "[[rule]]\nproto = \"tcp\"\nport = 22\naction = \"allow\"\n";
        assert!(parse_with(numeric, Path::new("r.toml"), &env).is_ok());
        let named = "[[rule]]\nproto = \"tcp\"\nport = \"ssh\"\naction = \"allow\"\n";
        let err = parse_with(named, Path::new("r.toml"), &env)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("r.toml:3:8: rule 1: service name \"ssh\" cannot be looked up: cannot read /nonexistent/services"), "{err}");
    }

    #[test]
    fn set_file_with_comments_blank_lines_and_relative_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("rules/sets")).unwrap();
        fs::write(dir.path().join("rules/sets/block.txt"), BLOCKLIST).unwrap();
        let rules = dir.path().join("rules/rules.toml");
        fs::write(
            &rules,
            "[sets]\nblock = { file = \"sets/block.txt\" }\n[[rule]]\nremote = \"@block\"\naction = \"stealth\"\n",
        )
        .unwrap();
        let rs = load(&rules).unwrap();
        let expected = vec![
            net("198.51.100.0/24"),
            net("203.0.113.99/32"),
            net("2001:db8:bad::/48"),
        ];
        assert_eq!(rs.sets["block"], expected);
        assert_eq!(rs.rules[0].remote.as_ref(), Some(&expected));
        assert!(rs.warnings.is_empty(), "{:?}", rs.warnings);
        assert_eq!(
            Env::for_rules_file(&rules).base_dir,
            dir.path().join("rules")
        );
        assert_eq!(
            Env::for_rules_file(Path::new("rules.toml")).base_dir,
            PathBuf::from(".")
        );
    }

    #[test]
    fn set_file_errors_name_the_set_file_and_line() {
        let t = test_env();
        let set_file = t.dir.path().join("bad.txt");
        fs::write(
            &set_file,
            "# header\n10.0.0.0/8\n\n  10.0.0.0/99  # oops\n192.0.2.1/24\n",
        )
        .unwrap();
        let text = "[sets]\nbad = { file = \"bad.txt\" }\n";
        let err = parse_with(text, Path::new("rules.toml"), &t.env).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                r#"{}:4:3: set "bad": invalid network: prefix length is out of range for IPv4 (0-32)"#,
                set_file.display()
            )
        );
        assert_eq!(err.diagnostics()[0].file, set_file);

        // Host bits in a set file: accepted, with a warning naming the file and line.
        fs::write(&set_file, "192.0.2.1/24\n").unwrap();
        let rs = parse_with(text, Path::new("rules.toml"), &t.env).unwrap();
        assert_eq!(rs.sets["bad"], [net("192.0.2.0/24")]);
        assert_eq!(
            rs.warnings,
            [format!(
                r#"{}:1:1: set "bad": this entry has host bits set; they are ignored"#,
                set_file.display()
            )]
        );
    }

    /// Issue 14: set files were read with no check. A FIFO hung the daemon, /dev/zero ate its
    /// memory, a file anyone could write changed the firewall, and errors quoted the lines of
    /// files only root may read to control-group members.
    #[test]
    fn set_files_that_could_hang_exhaust_or_be_forged_are_refused() {
        use std::os::unix::fs::{PermissionsExt as _, chown};
        let t = test_env();
        let refused = |file: &str, why: &str| {
            let text = format!("[sets]\ns = {{ file = \"{file}\" }}\n");
            let start = std::time::Instant::now();
            let err = parse_with(&text, Path::new("rules.toml"), &t.env)
                .expect_err(file)
                .to_string();
            assert!(
                err.contains("cannot read set file") && err.contains(why),
                "{file}: {err}"
            );
            assert!(
                start.elapsed() < std::time::Duration::from_secs(2),
                "{file}"
            );
        };
        let fifo = t.dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        refused("fifo", "a FIFO, not a regular file");
        refused("/dev/zero", "a device, not a regular file");
        let big = t.dir.path().join("big.txt");
        fs::File::create(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        refused("big.txt", "more than the 64 MiB allowed");
        let open = t.dir.path().join("open.txt");
        fs::write(&open, "192.0.2.1\n").unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o666)).unwrap();
        refused("open.txt", "writable by everyone (mode 0666)");
        if nix::unistd::geteuid().is_root() {
            let theirs = t.dir.path().join("theirs.txt");
            fs::write(&theirs, "192.0.2.1\n").unwrap();
            chown(&theirs, Some(65534), None).unwrap();
            refused("theirs.txt", "owned by uid 65534, not by root");
            fs::set_permissions(&open, fs::Permissions::from_mode(0o664)).unwrap();
            chown(&open, Some(0), Some(65534)).unwrap();
            refused("open.txt", "writable by the group gid 65534 (mode 0664)");
        } else {
            eprintln!("not root: the ownership checks are not exercised");
        }

        // A symbolic link is followed; what it leads to is checked, and never quoted.
        let secret = t.dir.path().join("secret");
        fs::write(&secret, "hunter2-token\n10.0.0.0/99 also-secret\n").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&secret, t.dir.path().join("link.txt")).unwrap();
        let text = "[sets]\ns = { file = \"link.txt\" }\n";
        let err = parse_with(text, Path::new("rules.toml"), &t.env).unwrap_err();
        let shown = format!("{err}");
        assert!(
            shown.contains(":1:1: set \"s\": invalid address: "),
            "{shown}"
        );
        assert!(
            shown.contains(":2:1: set \"s\": invalid network: "),
            "{shown}"
        );
        for part in ["hunter2", "also-secret"] {
            assert!(!shown.contains(part), "{part:?} quoted: {shown}");
        }
    }

    #[test]
    fn a_rules_file_that_is_not_a_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("rules.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = load(&fifo).unwrap_err().to_string();
        assert!(err.contains("a FIFO, not a regular file"), "{err}");
        assert!(load(Path::new("/dev/zero")).is_err());
    }

    #[test]
    fn set_file_errors_are_capped() {
        let t = test_env();
        let lines: String = (0..50).map(|i| format!("junk{i}\n")).collect();
        fs::write(t.dir.path().join("junk.txt"), lines).unwrap();
        let text = "[sets]\njunk = { file = \"junk.txt\" }\n";
        let err = parse_with(text, Path::new("rules.toml"), &t.env).unwrap_err();
        assert_eq!(err.diagnostics().len(), MAX_REPORTS_PER_SET_FILE + 1);
        assert!(
            err.to_string().ends_with("30 more invalid lines not shown"),
            "{err}"
        );
    }

    #[test]
    fn empty_set_file_is_allowed_with_a_warning() {
        let t = test_env();
        fs::write(t.dir.path().join("empty.txt"), "# nothing yet\n\n").unwrap();
        let text = "[sets]\nempty = { file = \"empty.txt\" }\n[[rule]]\nremote = \"@empty\"\naction = \"allow\"\n";
        let rs = parse_with(text, Path::new("rules.toml"), &t.env).unwrap();
        assert_eq!(rs.sets["empty"], []);
        assert_eq!(rs.rules[0].remote, Some(vec![]));
        assert_eq!(rs.warnings.len(), 1);
        assert!(
            rs.warnings[0].starts_with("rules.toml:2:18: set \"empty\": "),
            "{:?}",
            rs.warnings
        );
        assert!(rs.warnings[0].contains("lists no addresses; rules using @empty match nothing"));
    }

    #[test]
    fn field_lists_come_from_serde() {
        assert_eq!(
            fields_of::<RawReject>(),
            ["rate_per_sec", "burst", "global_rate_per_sec"]
        );
        assert_eq!(
            fields_of::<RawConntrack>(),
            [
                "table_size",
                "unconfirmed_size",
                "invalid",
                "gc_interval",
                "record_owner",
                "timeouts"
            ]
        );
        assert_eq!(
            fields_of::<RawRule>(),
            [
                "name",
                "direction",
                "proto",
                "port",
                "remote",
                "action",
                "program",
                "unit",
                "user"
            ]
        );
    }

    #[test]
    fn raw_structs_deny_unknown_fields() {
        // The backstop behind the friendlier key check in `Checker::table`.
        assert!(toml::from_str::<RawReject>("rate_per_sec = 1\nbogus = 2").is_err());
        assert!(toml::from_str::<RawRule>("action = \"allow\"\nbogus = 2").is_err());
        assert!(toml::from_str::<RawDaemon>("bogus = 2").is_err());
        assert!(toml::from_str::<RawDefaults>("bogus = 2").is_err());
        assert!(toml::from_str::<RawSetFile>("file = \"x\"\nbogus = 2").is_err());
        assert!(toml::from_str::<RawConntrack>("bogus = 2").is_err());
        assert!(toml::from_str::<RawCtTimeouts>("icmp = 1\nbogus = 2").is_err());
    }

    #[test]
    fn port_merging() {
        assert_eq!(
            merge_ports(vec![
                range(10, 20),
                range(21, 30),
                range(5, 5),
                range(25, 40),
                range(65535, 65535),
                range(42, 42)
            ]),
            [
                range(5, 5),
                range(10, 40),
                range(42, 42),
                range(65535, 65535)
            ]
        );
        assert_eq!(
            merge_ports(vec![range(1, 65535), range(7, 7)]),
            [range(1, 65535)]
        );
    }

    #[test]
    fn example_rule_files_parse() {
        let t = test_env();
        for name in ["workstation.toml", "server.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join(name);
            let text = fs::read_to_string(&path).unwrap();
            let rs = match parse_with(&text, &path, &t.env) {
                Ok(rs) => rs,
                Err(e) => panic!("{name} should parse:\n{e}"),
            };
            assert!(!rs.rules.is_empty(), "{name}");
            assert_eq!(rs.daemon.interfaces, Interfaces::Auto, "{name}");
            assert_eq!(rs.defaults.inbound, Action::Stealth, "{name}");
            assert!(
                rs.rules.iter().any(|r| r.action == Action::Reject),
                "{name}"
            );
            assert!(rs.warnings.is_empty(), "{name}: {:?}", rs.warnings);
        }
    }
}
