//! The decision log, daemon side: reading the kernel's events, what an event says once its
//! numbers are named, the journal entry, and what `fwctl monitor` receives.
//!
//! The kernel writes [`LogEvent`]s into the ring buffer `LOG_RING` within its budget (see
//! `firewall_common::LogEvent` for why a ring buffer and a per-CPU token bucket). [`spawn_reader`]
//! drains it on the tokio runtime (an `AsyncFd` on the ring's descriptor: the task sleeps until
//! the kernel signals data) and hands the raw events to the daemon's loop, which names them
//! ([`Event`]: the rule by the event's generation, the interface, the program, unit and user)
//! because it holds the rules of every recent generation. The loop then writes each event to
//! the journal ([`journal`]) and publishes it on a broadcast channel, from which each `fwctl
//! monitor` connection takes what its [`MonitorFilter`] lets through.
//!
//! Nothing in this path waits for a consumer: the reader passes events on with `try_send`
//! (dropped with a warning when the loop is [`READER_BACKLOG`] events behind), and the broadcast channel keeps
//! the last [`MONITOR_BACKLOG`] events for subscribers: a subscriber that reads too slowly
//! misses the oldest, and is told how many ([`MonitorLine::Lost`]). The datapath never waits
//! for any of it.
//!
//! Connection events (`fwctl monitor --conns`) come from the daemon: `new` and `established`
//! from the watcher thread's looks at the tables (`conntrack::spawn_watch`), `closed` when the
//! expiry thread removes an expired flow, `denied` when `fwctl reload --recheck` ends one. They
//! are published only while a subscriber listens, and are not written to the journal (they
//! are routine; the recheck logs its own lines).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use firewall_common::{
    ACTION_ALLOW, ACTION_REJECT, DEFAULT_RULE, EVENT_OUTBOUND, LogEvent, PROTO_ICMP, PROTO_TCP,
    PROTO_UDP, WHY_DEFAULT, WHY_INVALID, WHY_RECHECK, ct, maps,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::io::{BufRead as _, Write as _};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::kernel;

/// Events the broadcast channel keeps for subscribers that have not read them yet: a
/// subscriber further behind loses the oldest.
pub const MONITOR_BACKLOG: usize = 4096;

/// Raw events between the reader and the daemon's loop (reloads hold the loop for about a
/// second; at the default budget that is 50 events per CPU).
pub const READER_BACKLOG: usize = 4096;

/// What one published item is: a decision or a connection event.
pub type Published = Arc<Event>;

/// One decision or connection event, named: what the journal stores and `fwctl monitor
/// --json` prints, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock time, RFC 3339 with milliseconds (UTC).
    pub time: String,
    /// `decision` (a verdict of the rules) or `conn` (a connection event, `--conns`).
    pub kind: String,
    /// Connection events: `closed` (expired and removed) or `denied` (ended by a recheck).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<String>,
    /// `in` or `out`.
    pub direction: String,
    /// `allow`, `reject` or `stealth`; absent for connection events that are no verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The rule's number (1-based, as `fwctl list`), absent when no rule decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    /// The rule's name, absent when no rule decided (or its rules are long gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
    /// Who decided, in words: `rule 3 "telnet"`, `[defaults] inbound`, `[conntrack] invalid`.
    pub by: String,
    /// `rule`, `default`, `invalid` or `recheck`.
    pub why: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or `other`.
    pub proto: String,
    /// Absent outbound (the source address is chosen after the hook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_addr: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
    pub remote_addr: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    /// The receiving interface (inbound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The calling program (outbound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The caller's systemd unit, when its cgroup is a unit's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The caller's user name (or uid when it has no name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The daemon's generation number whose rules decided (kernel events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
}

/// One line a `fwctl monitor` connection receives after the answer to its request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MonitorLine {
    Event(Box<Event>),
    /// This subscriber read too slowly and missed `count` events.
    Lost {
        count: u64,
    },
}

/// Which events a `fwctl monitor` connection wants. Every field given must match; an empty
/// list matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorFilter {
    /// Connection events instead of decisions.
    #[serde(default)]
    pub conns: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// The local port inbound, the destination port outbound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Remote addresses or networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<IpNet>,
    /// Rule names or numbers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
}

impl MonitorFilter {
    pub fn matches(&self, e: &Event) -> bool {
        let conn = e.kind == "conn";
        if conn != self.conns {
            return false;
        }
        let port = if e.direction == "in" {
            e.local_port
        } else {
            e.remote_port
        };
        (self.actions.is_empty()
            || e.action
                .as_ref()
                .is_some_and(|a| self.actions.iter().any(|w| w == a)))
            && self.direction.as_ref().is_none_or(|d| *d == e.direction)
            && self
                .proto
                .as_ref()
                .is_none_or(|p| *p == e.proto || (p == "icmp" && e.proto == "icmpv6"))
            && (self.ports.is_empty() || port.is_some_and(|p| self.ports.contains(&p)))
            && (self.remotes.is_empty() || self.remotes.iter().any(|n| n.contains(&e.remote_addr)))
            && (self.rules.is_empty()
                || self.rules.iter().any(|r| {
                    e.rule_name.as_deref() == Some(r.as_str())
                        || e.rule.is_some_and(|n| r.parse() == Ok(n))
                }))
    }
}

/// Starts draining the ring buffer pinned under `pin_dir` into `to`. Must run on the tokio
/// runtime. Events the loop has no room for are dropped, with a warning for each batch that
/// lost some.
pub fn spawn_reader(pin_dir: &std::path::Path, to: mpsc::Sender<LogEvent>) -> anyhow::Result<()> {
    let ring: RingBuf<MapData> = RingBuf::try_from(kernel::open_pinned(pin_dir, maps::LOG_RING)?)
        .context("LOG_RING is not a ring buffer")?;
    // SAFETY: the ring owns its descriptor, which stays open and the same until the AsyncFd
    // (which owns the ring) is dropped.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the decision log's ring buffer: {e}"))?;
    tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    log::error!("the decision log's ring buffer: {e}; no more events are read");
                    return;
                }
            };
            let ring = guard.get_inner_mut();
            let mut lost = 0u64;
            while let Some(item) = ring.next() {
                let Some(event) = decode(&item) else {
                    log::warn!("decision log: an event of {} bytes, ignored", item.len());
                    continue;
                };
                drop(item);
                if to.try_send(event).is_err() {
                    lost += 1;
                }
            }
            if lost > 0 {
                log::warn!(
                    "decision log: {lost} event(s) dropped, the daemon's loop was {READER_BACKLOG} \
                     events behind"
                );
            }
            guard.clear_ready();
        }
    });
    Ok(())
}

/// A [`LogEvent`] from the bytes of one ring buffer record.
pub fn decode(bytes: &[u8]) -> Option<LogEvent> {
    if bytes.len() < size_of::<LogEvent>() {
        return None;
    }
    // SAFETY: `LogEvent` is plain data valid for every bit pattern (`aya::Pod`), and the
    // slice holds at least its size; the read is unaligned.
    Some(unsafe { bytes.as_ptr().cast::<LogEvent>().read_unaligned() })
}

/// An address of an event (`::ffff:a.b.c.d` for IPv4).
fn address(bytes: [u8; 16], family: u8) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    if family == ct::FAMILY_V4 {
        let [.., a, b, c, d] = bytes;
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    } else {
        IpAddr::V6(v6)
    }
}

/// The protocol's name as fwctl prints it.
pub fn proto_name(class: u8, family: u8) -> &'static str {
    match u32::from(class) {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP if family == ct::FAMILY_V6 => "icmpv6",
        PROTO_ICMP => "icmp",
        _ => "other",
    }
}

/// What the daemon knows to name an event with.
pub struct Names {
    /// The rule's (number, name) for a rule index of the event's generation, if known.
    pub rule: Option<(u32, String)>,
    pub interface: Option<String>,
    pub program: Option<String>,
    pub unit: Option<String>,
    pub user: Option<String>,
}

/// Wall-clock time of a CLOCK_MONOTONIC timestamp of the datapath (coarse: to its last tick).
pub fn wall_time(mono_ns: u64) -> String {
    let now_mono = crate::conntrack::monotonic_ns();
    let now = jiff::Timestamp::now();
    let back = jiff::SignedDuration::from_nanos(now_mono.saturating_sub(mono_ns) as i64);
    let t = now.checked_sub(back).unwrap_or(now);
    t.round(jiff::Unit::Millisecond).unwrap_or(t).to_string()
}

/// The named event of a kernel event.
pub fn event(raw: &LogEvent, names: Names) -> Event {
    let outbound = raw.kind == EVENT_OUTBOUND;
    let action = match firewall_common::verdict_action(raw.verdict) {
        ACTION_ALLOW => "allow",
        ACTION_REJECT => "reject",
        _ => "stealth",
    };
    let direction = if outbound { "out" } else { "in" };
    let why = match raw.why {
        WHY_DEFAULT => "default",
        WHY_INVALID => "invalid",
        WHY_RECHECK => "recheck",
        _ => "rule",
    };
    let index = firewall_common::verdict_rule(raw.verdict);
    // A recheck's verdict names `[defaults]` by the rule index it stands for.
    let is_rule = !matches!(raw.why, WHY_DEFAULT | WHY_INVALID) && index != DEFAULT_RULE;
    let by = match (raw.why, &names.rule) {
        (WHY_INVALID, _) => "[conntrack] invalid".to_string(),
        _ if !is_rule => format!("[defaults] {direction}bound"),
        (_, Some((n, name))) => format!("rule {n} \"{name}\""),
        (_, None) => format!("rule {} (earlier rules)", index + 1),
    };
    let has_ports = matches!(u32::from(raw.proto), PROTO_TCP | PROTO_UDP);
    Event {
        time: wall_time(raw.ts_ns),
        kind: "decision".into(),
        conn: None,
        direction: direction.into(),
        action: Some(action.into()),
        rule: is_rule.then_some(index + 1),
        rule_name: names.rule.map(|(_, n)| n).filter(|_| is_rule),
        by,
        why: why.into(),
        proto: proto_name(raw.proto, raw.family).into(),
        local_addr: (!outbound).then(|| address(raw.local, raw.family)),
        local_port: (!outbound && has_ports).then_some(raw.local_port),
        remote_addr: address(raw.remote, raw.family),
        remote_port: has_ports.then_some(raw.remote_port),
        interface: names.interface,
        program: names.program,
        pid: (outbound && raw.pid != 0).then_some(raw.pid),
        unit: names.unit,
        user: names.user,
        uid: outbound.then_some(raw.uid),
        generation: Some(raw.generation),
    }
}

/// The event's fields as journal fields (uppercased by the journal logger): `RULE`,
/// `ACTION`, `DIRECTION`, `PROTO`, `LOCAL_ADDR`, `LOCAL_PORT`, `REMOTE_ADDR`, `REMOTE_PORT`,
/// `INTERFACE`, `PROGRAM`, `PID`, `UNIT`, `USER`, `GENERATION`, each only when known.
pub fn fields(e: &Event) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("rule", e.by.clone()),
        ("direction", e.direction.clone()),
        ("proto", e.proto.clone()),
        ("remote_addr", e.remote_addr.to_string()),
    ];
    let optional = [
        ("rule_number", e.rule.map(|n| n.to_string())),
        ("rule_name", e.rule_name.clone()),
        ("action", e.action.clone()),
        ("conn", e.conn.clone()),
        ("local_addr", e.local_addr.map(|a| a.to_string())),
        ("local_port", e.local_port.map(|p| p.to_string())),
        ("remote_port", e.remote_port.map(|p| p.to_string())),
        ("interface", e.interface.clone()),
        ("program", e.program.clone()),
        ("pid", e.pid.map(|p| p.to_string())),
        ("unit", e.unit.clone()),
        ("user", e.user.clone()),
        ("generation", e.generation.map(|g| g.to_string())),
    ];
    f.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
    f
}

/// One line for a person: `12:00:01.123 in reject tcp 203.0.113.7:51234 -> 10.0.0.1:23 eth0
/// rule 3 "telnet"` (outbound: `out reject tcp -> 198.51.100.1:25 /usr/bin/curl (pid 12,
/// alice) rule 5 "no smtp"`).
pub fn human_line(e: &Event) -> String {
    let time = e
        .time
        .get(11..23)
        .filter(|_| e.time.len() >= 23)
        .unwrap_or(&e.time);
    let endpoint = |addr: IpAddr, port: Option<u16>| match port {
        Some(p) => std::net::SocketAddr::new(addr, p).to_string(),
        None => addr.to_string(),
    };
    let what = match (&e.conn, &e.action) {
        (Some(c), Some(a)) => format!("{c} {a}"),
        (Some(c), None) => c.clone(),
        (None, Some(a)) => a.clone(),
        (None, None) => "-".into(),
    };
    let mut line = format!("{time} {} {what} {}", e.direction, e.proto);
    if e.direction == "in" {
        let local = e
            .local_addr
            .map(|a| endpoint(a, e.local_port))
            .unwrap_or_else(|| "-".into());
        line += &format!(" {} -> {local}", endpoint(e.remote_addr, e.remote_port));
        if let Some(i) = &e.interface {
            line += &format!(" {i}");
        }
    } else {
        line += &format!(" -> {}", endpoint(e.remote_addr, e.remote_port));
        if let Some(p) = &e.program {
            line += &format!(" {p}");
        }
        let who: Vec<String> = [
            e.pid.map(|p| format!("pid {p}")),
            e.user.clone(),
            e.unit.clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !who.is_empty() {
            line += &format!(" ({})", who.join(", "));
        }
    }
    line += &format!(" {}", e.by);
    line
}

/// Writes a decision to the daemon's log (the journal under systemd) with its fields.
pub fn journal(e: &Event) {
    const TARGET: &str = "firewall_daemon::decision_log";
    // `--log-level warn` (or RUST_LOG) silences the decision log too.
    if !log::log_enabled!(target: TARGET, log::Level::Info) {
        return;
    }
    let fields = fields(e);
    let message = format!("decision: {}", human_line(e));
    log::logger().log(
        &log::Record::builder()
            .level(log::Level::Info)
            .target(TARGET)
            .module_path_static(Some(module_path!()))
            .key_values(&fields)
            .args(format_args!("{message}"))
            .build(),
    );
}

#[cfg(test)]
mod tests;

/// A connection event about flow `f`: `new` or `established` (seen by the watcher), `closed`
/// (expired) or `denied` (by a recheck, with the recheck's verdict `action` and who gave it,
/// `by`).
pub fn conn_event(f: &crate::conntrack::Flow, conn: &str, action: Option<&str>, by: &str) -> Event {
    let has_ports = matches!(f.key.proto, ct::IPPROTO_TCP | ct::IPPROTO_UDP);
    Event {
        time: jiff::Timestamp::now()
            .round(jiff::Unit::Millisecond)
            .unwrap_or(jiff::Timestamp::now())
            .to_string(),
        kind: "conn".into(),
        conn: Some(conn.into()),
        direction: if f.entry.origin == ct::ORIGIN_LOCAL {
            "out"
        } else {
            "in"
        }
        .into(),
        action: action.map(Into::into),
        rule: None,
        rule_name: None,
        by: by.into(),
        why: match conn {
            "denied" => "recheck",
            "closed" => "expired",
            _ => "tracked",
        }
        .into(),
        proto: crate::conntrack::proto_name(f.key.proto).into(),
        local_addr: Some(f.local()),
        local_port: has_ports.then_some(f.key.local_port),
        remote_addr: f.remote(),
        remote_port: has_ports.then_some(f.key.remote_port),
        interface: None,
        program: None,
        pid: (f.entry.owner.pid != 0).then_some(f.entry.owner.pid),
        unit: None,
        user: None,
        uid: f.entry.owner.is_known().then_some(f.entry.owner.uid),
        generation: None,
    }
}

/// Opens a `fwctl monitor` stream on the daemon's socket: sends the request and reads the
/// answer (within `timeout`); the events then follow on the returned reader, one
/// [`MonitorLine`] per line, with no timeout.
pub fn open_monitor(
    socket: &std::path::Path,
    filter: MonitorFilter,
    timeout: std::time::Duration,
) -> Result<
    (
        crate::control::Response,
        std::io::BufReader<std::os::unix::net::UnixStream>,
    ),
    crate::control::ClientError,
> {
    use crate::control::{ClientError, Request};
    let path = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ClientError::NoSocket { path: path.clone() },
        std::io::ErrorKind::PermissionDenied => ClientError::Permission { path: path.clone() },
        _ => ClientError::Refused {
            path: path.clone(),
            source: e,
        },
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(&Request::Monitor { filter })
        .map_err(|e| ClientError::BadResponse(e.to_string()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut reader = std::io::BufReader::new(stream);
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
    let response =
        serde_json::from_str(&buf).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    reader.get_ref().set_read_timeout(None).map_err(io)?;
    Ok((response, reader))
}
