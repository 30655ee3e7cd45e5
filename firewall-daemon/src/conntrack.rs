//! The connection table seen from the daemon: listing (`fwctl conns`), expiry, seeding from the
//! host's sockets at start-up, and re-judging flows after a reload (`fwctl reload --recheck`).
//!
//! The tables are opened from their pins, independently of any program generation, so the
//! expiry thread has handles of its own. Deleting an entry the datapath is updating at the
//! same moment is safe (the kernel's hash maps are RCU-protected); at worst a flow that was
//! just refreshed is forgotten and, for TCP, picked up again by the egress program or judged
//! as a new packet.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use aya::maps::{HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use firewall_common::{
    Counter,
    addr::{self, canonical, family, mapped},
    ct::{
        self, CtConfig, CtEntry, CtKey, FLAG_DENIED, FLAG_FIN_LOCAL, FLAG_FIN_REMOTE, ORIGIN_LOCAL,
        ORIGIN_REMOTE, state,
    },
    maps,
};
use log::{debug, warn};

use crate::host::sock_diag::{HostFlow, SockProto, TcpState};

/// CLOCK_MONOTONIC in nanoseconds: the clock of the datapath (`bpf_ktime_get_coarse_ns`, which
/// is behind it by less than a tick).
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64,
        Err(_) => 0,
    }
}

/// The table a flow is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// `CT_EST`: confirmed, never evicted.
    Confirmed,
    /// `CT_NEW`: unconfirmed flows remote hosts opened (LRU).
    Remote,
    /// `CT_LOCAL`: unconfirmed flows the host opened (LRU).
    Local,
}

/// One tracked flow.
#[derive(Clone, Debug)]
pub struct Flow {
    pub key: CtKey,
    pub entry: CtEntry,
    pub table: Which,
}

impl Flow {
    /// In the confirmed table (else one of the unconfirmed LRU tables).
    pub fn confirmed(&self) -> bool {
        self.table == Which::Confirmed
    }
    pub fn local(&self) -> IpAddr {
        addr::of_family(self.key.local, self.key.family)
    }
    pub fn remote(&self) -> IpAddr {
        addr::of_family(self.key.remote, self.key.family)
    }
}

type Table = HashMap<MapData, CtKey, CtEntry>;

/// Serialises the daemon's read-modify-write of its counter slot (main thread and expiry
/// thread).
static COUNTER_LOCK: Mutex<()> = Mutex::new(());

pub struct Tables {
    est: Table,
    new: Table,
    local: Table,
    counters: PerCpuArray<MapData, u64>,
    est_capacity: u32,
    new_capacity: u32,
    local_capacity: u32,
}

fn open_table(pin_dir: &Path, name: &str) -> anyhow::Result<Table> {
    let map = crate::kernel::open_pinned(pin_dir, name)?;
    Table::try_from(map).with_context(|| format!("map {name} has an unexpected layout"))
}

impl Tables {
    /// Opens the pinned tables (they exist once a generation has been loaded).
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let counters = MapData::from_pin(pin_dir.join(maps::COUNTERS))
            .context("opening the pinned counters")?;
        let counters = PerCpuArray::try_from(Map::from_map_data(counters)?)
            .context("counters map has an unexpected layout")?;
        let capacity = |name: &str| {
            aya::maps::MapInfo::from_pin(pin_dir.join(name))
                .map(|i| i.max_entries())
                .unwrap_or(0)
        };
        Ok(Self {
            est: open_table(pin_dir, maps::CT_EST)?,
            new: open_table(pin_dir, maps::CT_NEW)?,
            local: open_table(pin_dir, maps::CT_LOCAL)?,
            counters,
            est_capacity: capacity(maps::CT_EST),
            new_capacity: capacity(maps::CT_NEW),
            local_capacity: capacity(maps::CT_LOCAL),
        })
    }

    fn table(&self, which: Which) -> &Table {
        match which {
            Which::Confirmed => &self.est,
            Which::Remote => &self.new,
            Which::Local => &self.local,
        }
    }

    fn table_mut(&mut self, which: Which) -> &mut Table {
        match which {
            Which::Confirmed => &mut self.est,
            Which::Remote => &mut self.new,
            Which::Local => &mut self.local,
        }
    }

    /// Capacity of the confirmed table (`true`) or of the unconfirmed table of flows remote
    /// hosts opened.
    pub fn capacity(&self, confirmed: bool) -> u32 {
        if confirmed {
            self.est_capacity
        } else {
            self.new_capacity
        }
    }

    /// Every entry of the tables (expired ones included; see [`CtEntry::expires_ns`]).
    pub fn flows(&self) -> Vec<Flow> {
        let mut out = Vec::new();
        for which in [Which::Confirmed, Which::Remote, Which::Local] {
            for item in self.table(which).iter() {
                match item {
                    Ok((key, entry)) => out.push(Flow {
                        key,
                        entry,
                        table: which,
                    }),
                    // An entry deleted while we walk: skip it.
                    Err(e) => debug!("walking the connection table: {e}"),
                }
            }
        }
        out
    }

    /// Number of entries in (confirmed, unconfirmed flows remote hosts opened).
    pub fn sizes(&self) -> (usize, usize) {
        (self.est.keys().count(), self.new.keys().count())
    }

    /// Number of entries in the table of the host's own unconfirmed flows, and its capacity.
    pub fn host_pending(&self) -> (usize, u32) {
        (self.local.keys().count(), self.local_capacity)
    }

    fn remove(&mut self, key: &CtKey, which: Which) -> bool {
        self.table_mut(which).remove(key).is_ok()
    }

    /// Deletes every entry (tests that judge packets one at a time, statelessly).
    pub fn clear(&mut self) {
        for f in self.flows() {
            self.remove(&f.key, f.table);
        }
    }

    /// Deletes entries that expired before `now_ns`; returns how many.
    pub fn expire(&mut self, now_ns: u64) -> u64 {
        self.expire_flows(now_ns, &mut BTreeSet::new()).len() as u64
    }

    /// [`Self::expire`], returning the flows removed (for `fwctl monitor --conns`) and adding
    /// to `generations` the rule-set generation of every flow left.
    pub fn expire_flows(&mut self, now_ns: u64, generations: &mut BTreeSet<u32>) -> Vec<Flow> {
        let mut expired = Vec::new();
        for f in self.flows() {
            if f.entry.expires_ns <= now_ns {
                expired.push(f);
            } else {
                generations.insert(f.entry.generation);
            }
        }
        let (mut confirmed_removed, mut unconfirmed_removed) = (0, 0);
        let mut removed = Vec::new();
        for f in expired {
            // Re-check: the datapath may have refreshed it since the walk.
            if let Ok(e) = self.table(f.table).get(&f.key, 0)
                && e.expires_ns <= now_ns
                && self.remove(&f.key, f.table)
            {
                if f.table == Which::Confirmed {
                    confirmed_removed += 1;
                } else {
                    unconfirmed_removed += 1;
                }
                removed.push(f);
            }
        }
        self.add_to_counter(Counter::CtDaemonRemovedConfirmed, confirmed_removed);
        self.add_to_counter(Counter::CtDaemonRemoved, unconfirmed_removed);
        removed
    }

    /// Adds `n` to one of the daemon's counter slots (no datapath program writes them).
    fn add_to_counter(&mut self, counter: Counter, n: u64) {
        if n == 0 {
            return;
        }
        let _guard = COUNTER_LOCK.lock();
        let slot = counter as u32;
        let res = self.counters.get(&slot, 0).and_then(|values| {
            let mut v: Vec<u64> = values.iter().copied().collect();
            if let Some(first) = v.first_mut() {
                *first += n;
            }
            let values = PerCpuValues::try_from(v)?;
            self.counters.set(slot, values, 0)
        });
        if let Err(e) = res {
            warn!("updating the removed-entries counter: {e}");
        }
    }

    /// Inserts the host's existing connections (those the table does not know yet), so that
    /// enforcement starting or restarting does not cut them. Returns how many were added. Each
    /// goes to the table the datapath keeps its state in: established connections (and those
    /// closing, which were established) to the confirmed table, where no flood evicts them;
    /// handshakes (SYN_SENT, and SYN_RECV, which a spoofed SYN creates) to the unconfirmed one.
    /// `listeners` (the host's listening TCP addresses) tell connections the host accepted
    /// (opened by the remote side, so rechecked against the rules) from those it opened.
    pub fn seed(
        &mut self,
        flows: &[HostFlow],
        listeners: &[SocketAddr],
        cfg: &CtConfig,
        now_ns: u64,
    ) -> usize {
        let mut added = 0;
        for f in flows {
            let accepted = f.proto == SockProto::Tcp && accepted_by(listeners, f.local);
            let Some((key, entry)) = seed_entry(f, accepted, cfg, now_ns) else {
                continue;
            };
            let known = [Which::Confirmed, Which::Remote, Which::Local]
                .into_iter()
                .any(|w| self.table(w).get(&key, 0).is_ok());
            if known {
                continue;
            }
            // The table the datapath would keep the flow in: only a socket whose state proves
            // a two-way exchange goes to the confirmed one. A half-open SYN_RECV socket (a SYN
            // that anyone can spoof, answered by the host) is a handshake a remote host opened,
            // in the evictable unconfirmed table; a SYN_SENT one (no answer yet) is the host's
            // own pending flow, in the table floods cannot reach.
            let table = if state::confirmed(entry.state, entry.origin) {
                &mut self.est
            } else if entry.origin == ORIGIN_LOCAL {
                &mut self.local
            } else {
                &mut self.new
            };
            match table.insert(&key, &entry, 0) {
                Ok(()) => added += 1,
                Err(e) => warn!(
                    "seeding {} {} -> {}: {e}",
                    proto_name(key.proto),
                    f.local,
                    f.remote
                ),
            }
        }
        added
    }

    /// Marks a flow as denied by the rules now in force: the XDP program applies `word`'s
    /// action to its packets from now on (rather than forgetting the flow, which the egress
    /// program would pick up again as soon as the host sent on it). The mark lasts the timeout
    /// of the flow's state after the host's last packet, like the flow itself would have.
    pub fn deny(&mut self, flow: &Flow, word: u32, cfg: &CtConfig, now_ns: u64) -> bool {
        let mut e = flow.entry;
        if e.flags & FLAG_DENIED != 0 {
            return false;
        }
        e.flags |= FLAG_DENIED;
        e.rule = word;
        e.generation = cfg.generation;
        e.expires_ns = now_ns + cfg.timeout_ns[e.state as usize & (state::SLOTS - 1)];
        self.table_mut(flow.table).insert(&flow.key, &e, 0).is_ok()
    }
}

/// The table entry for one of the host's sockets. Loopback flows never cross the protected
/// interfaces and are skipped.
fn seed_entry(
    f: &HostFlow,
    accepted: bool,
    cfg: &CtConfig,
    now_ns: u64,
) -> Option<(CtKey, CtEntry)> {
    if f.local.ip().is_loopback() || f.remote.ip().is_loopback() {
        return None;
    }
    let (proto, st, origin, flags) = match f.proto {
        SockProto::Udp => (ct::IPPROTO_UDP, state::UDP_REPLIED, ORIGIN_LOCAL, 0),
        SockProto::Tcp => {
            let (st, origin, flags) = match f.tcp_state? {
                TcpState::SynSent => (state::SYN_SENT, ORIGIN_LOCAL, 0),
                TcpState::SynRecv => (state::SYN_RECV, ORIGIN_REMOTE, 0),
                TcpState::Established => (state::ESTABLISHED, ORIGIN_LOCAL, 0),
                TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing => {
                    (state::FIN_WAIT, ORIGIN_LOCAL, FLAG_FIN_LOCAL)
                }
                TcpState::CloseWait => (state::CLOSE_WAIT, ORIGIN_LOCAL, FLAG_FIN_REMOTE),
                TcpState::LastAck => (
                    state::LAST_ACK,
                    ORIGIN_LOCAL,
                    FLAG_FIN_LOCAL | FLAG_FIN_REMOTE,
                ),
                TcpState::TimeWait => (state::TIME_WAIT, ORIGIN_LOCAL, 0),
                TcpState::Close => return None,
            };
            let origin = if accepted { ORIGIN_REMOTE } else { origin };
            (ct::IPPROTO_TCP, st, origin, flags)
        }
    };
    let remote = canonical(f.remote.ip());
    let key = CtKey {
        local: mapped(canonical(f.local.ip())),
        remote: mapped(remote),
        local_port: f.local.port(),
        remote_port: f.remote.port(),
        proto,
        family: family(remote),
        _pad: [0; 2],
    };
    let entry = CtEntry {
        created_ns: now_ns,
        expires_ns: now_ns + cfg.timeout_ns[st as usize],
        packets_in: 0,
        packets_out: 0,
        bytes_in: 0,
        bytes_out: 0,
        rule: ct::RULE_SEEDED,
        generation: cfg.generation,
        remote_next: 0,
        local_next: 0,
        remote_maxend: 0,
        local_maxend: 0,
        remote_maxwin: 0,
        local_maxwin: 0,
        state: st,
        origin,
        flags,
        // The handshake was not seen: each side's window scale is unknown (the sequence
        // numbers are learned from the first packets, see `ct::tcp_learn`).
        reuse_seq: 0,
        reuse_win: 0,
        remote_scale: ct::MAX_WSCALE,
        local_scale: ct::MAX_WSCALE,
        reuse_wscale: 0,
        _pad: [0; 4],
        owner: Default::default(),
    };
    Some((key, entry))
}

/// True if a listening socket covers `local`: same port, and the same address or the
/// wildcard of its family (a `::` listener may be dual-stack, so it covers IPv4 too).
fn accepted_by(listeners: &[SocketAddr], local: SocketAddr) -> bool {
    let local_ip = canonical(local.ip());
    listeners.iter().any(|l| {
        l.port() == local.port()
            && (canonical(l.ip()) == local_ip
                || (l.ip().is_unspecified() && (l.is_ipv6() || matches!(local_ip, IpAddr::V4(_)))))
    })
}

pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        ct::IPPROTO_TCP => "tcp",
        ct::IPPROTO_UDP => "udp",
        ct::IPPROTO_ICMP => "icmp",
        ct::IPPROTO_ICMPV6 => "icmpv6",
        _ => "other",
    }
}

/// The unspecified address of `ip`'s family.
pub fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// How often the tables are looked at for new and established connections while `fwctl
/// monitor` listens.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// A flow as the watcher last saw it: when it was created (a tuple reused by a new
/// connection gets a new entry) and its state.
type Seen = std::collections::HashMap<CtKey, (u64, u8)>;

/// Whether a flow in state `s` has seen both sides: a TCP connection past its handshake, a UDP
/// flow that got an answer.
fn established(s: u8) -> bool {
    use ct::state::*;
    matches!(
        s,
        ESTABLISHED | FIN_WAIT | CLOSE_WAIT | LAST_ACK | TIME_WAIT | UDP_REPLIED
    )
}

/// The connection events between two looks at the tables (`before`, then `now`): `new` for a
/// flow that was not there (or whose tuple a new connection took), `established` for one that
/// reached [`established`] since (a flow that appeared already established gets both).
pub fn changes<'a>(before: &Seen, now: &'a [Flow]) -> Vec<(&'a Flow, &'static str)> {
    let mut out = Vec::new();
    for f in now {
        let was = match before.get(&f.key) {
            Some(&(created, state)) if created == f.entry.created_ns => Some(state),
            _ => None,
        };
        if was.is_none() {
            out.push((f, "new"));
        }
        if established(f.entry.state) && !was.is_some_and(established) {
            out.push((f, "established"));
        }
    }
    out
}

/// Starts the watcher thread: while anyone runs `fwctl monitor`, it looks at the tables every
/// [`WATCH_INTERVAL`] and publishes `new` and `established` connection events ([`changes`]).
/// The datapath reports no such events itself (a message at each state change cost too much
/// verification, see `firewall-ebpf/src/diagnostics.rs`); a flow that starts and ends between
/// two looks is reported only as `closed`. With no monitor it only sleeps.
pub fn spawn_watch(
    pin_dir: &Path,
    events: tokio::sync::broadcast::Sender<crate::decision_log::Published>,
) -> anyhow::Result<()> {
    let tables = Tables::open(pin_dir)?;
    std::thread::Builder::new()
        .name("ct-watch".into())
        .spawn(move || {
            let mut seen: Option<Seen> = None;
            loop {
                std::thread::sleep(WATCH_INTERVAL);
                if events.receiver_count() == 0 {
                    seen = None;
                    continue;
                }
                let now = tables.flows();
                // The first look after a monitor comes is the baseline: it reports what
                // happens from then on, like `conntrack -E`.
                if let Some(before) = &seen {
                    for (f, what) in changes(before, &now) {
                        let e = crate::decision_log::conn_event(f, what, None, "tracked");
                        let _ = events.send(std::sync::Arc::new(e));
                    }
                }
                seen = Some(
                    now.iter()
                        .map(|f| (f.key, (f.entry.created_ns, f.entry.state)))
                        .collect(),
                );
            }
        })
        .map(|_| ())
        .map_err(|e| anyhow!("starting the connection watcher thread: {e}"))
}

/// Starts the expiry thread: every `interval_secs` (re-read each round, so a reload can change
/// it) it deletes expired entries. It has its own handles on the pinned tables, so the daemon's
/// main loop (control socket, reloads) never waits for it. Each flow removed is published on
/// `events` as a `closed` connection event while `fwctl monitor --conns` listens.
/// The rule-set generations tracked connections were admitted under, as one expiry sweep
/// found them: what the daemon must still be able to name (`daemon/history.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InUse {
    /// When the sweep began walking the tables.
    pub started: Instant,
    pub generations: BTreeSet<u32>,
}

/// The last sweep's [`InUse`], shared between the expiry thread and the daemon.
pub type SharedInUse = Arc<Mutex<Option<InUse>>>;

pub fn spawn_expiry(
    pin_dir: &Path,
    interval_secs: Arc<AtomicU32>,
    events: tokio::sync::broadcast::Sender<crate::decision_log::Published>,
    in_use: SharedInUse,
) -> anyhow::Result<()> {
    let mut tables = Tables::open(pin_dir)?;
    std::thread::Builder::new()
        .name("ct-expiry".into())
        .spawn(move || {
            loop {
                let secs = interval_secs.load(Ordering::Relaxed).max(1);
                std::thread::sleep(Duration::from_secs(u64::from(secs)));
                let started = Instant::now();
                let mut generations = BTreeSet::new();
                let removed = tables.expire_flows(monotonic_ns(), &mut generations);
                *in_use.lock().unwrap_or_else(|e| e.into_inner()) = Some(InUse {
                    started,
                    generations,
                });
                if !removed.is_empty() {
                    debug!("removed {} expired connection(s)", removed.len());
                }
                if events.receiver_count() > 0 {
                    for f in &removed {
                        let e = crate::decision_log::conn_event(f, "closed", None, "expired");
                        let _ = events.send(std::sync::Arc::new(e));
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(|e| anyhow!("starting the expiry thread: {e}"))
}

#[cfg(test)]
mod tests {
    use firewall_common::ct::{CtEntry, CtKey, state};

    use super::{Flow, Seen, Which, changes};

    fn flow(port: u16, created_ns: u64, st: u8) -> Flow {
        // SAFETY: both are plain #[repr(C)] integers and arrays; all zero is a valid value.
        let (mut key, mut entry): (CtKey, CtEntry) = unsafe { std::mem::zeroed() };
        key.local_port = port;
        key.proto = firewall_common::ct::IPPROTO_TCP;
        entry.created_ns = created_ns;
        entry.state = st;
        Flow {
            key,
            entry,
            table: Which::Remote,
        }
    }

    fn seen(flows: &[Flow]) -> Seen {
        flows
            .iter()
            .map(|f| (f.key, (f.entry.created_ns, f.entry.state)))
            .collect()
    }

    /// `new` once per connection (a tuple reused by a later connection is new again),
    /// `established` once when it gets there, nothing for a flow that only moves on.
    #[test]
    fn watcher_reports_each_connection_once_new_and_once_established() {
        let before = seen(&[
            flow(1, 10, state::SYN_RECV),
            flow(2, 10, state::ESTABLISHED),
            flow(3, 10, state::TIME_WAIT),
        ]);
        let now = [
            flow(1, 10, state::ESTABLISHED),
            flow(2, 10, state::FIN_WAIT),
            flow(3, 99, state::SYN_RECV),
            flow(4, 50, state::ESTABLISHED),
        ];
        let got: Vec<(u16, &str)> = changes(&before, &now)
            .into_iter()
            .map(|(f, what)| (f.key.local_port, what))
            .collect();
        assert_eq!(
            got,
            [
                (1, "established"),
                (3, "new"),
                (4, "new"),
                (4, "established")
            ]
        );
        assert!(changes(&seen(&now), &now).is_empty());
    }
}
