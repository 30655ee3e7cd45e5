//! What `fwctl list`, `fwctl status` and `fwctl conns` show, read from the kernel objects in
//! force: each attachment is checked against its pin (someone with root may have replaced or
//! removed it), counters and table sizes come from the maps, flows are named by the rule and
//! generation that admitted them.

use std::collections::BTreeMap;

use super::State;
use crate::{
    conntrack::{self},
    control::{
        ConnView, ConnsData, ConntrackStatus, DefaultsView, HookStatus, InterfaceStatus,
        KernelStatus, ListData, OutboundStatus, RuleView, StatusData,
    },
    host::cgroups,
    host::owners::OwnerNames,
    kernel::{self, Hook},
};
use rules::model::Direction;

impl State {
    pub(super) fn list(&self) -> anyhow::Result<ListData> {
        let hits_in = self.generation.rule_hits()?;
        let hits_out = self.outbound.rule_hits()?;
        Ok(ListData {
            source: self.config_path.display().to_string(),
            defaults: DefaultsView::from(&self.ruleset.defaults),
            rules: self
                .ruleset
                .rules
                .iter()
                .map(|r| {
                    let hits = match r.direction {
                        Direction::In => &hits_in,
                        Direction::Out => &hits_out,
                    };
                    RuleView::new(
                        &self.ruleset,
                        r,
                        hits.get(r.index as usize).copied().unwrap_or(0),
                    )
                })
                .collect(),
        })
    }

    pub(super) fn status(&mut self) -> anyhow::Result<StatusData> {
        let counters = self.generation.counters()?;
        let interfaces = self.interface_status();
        let outbound_status = self.outbound_status();
        let rs = &self.ruleset;
        let outbound = rs
            .rules
            .iter()
            .filter(|r| r.direction == Direction::Out)
            .count();
        Ok(StatusData {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            config: self.config_path.display().to_string(),
            pin_dir: rs.daemon.pin_dir.display().to_string(),
            interfaces,
            waiting_for: self.waiting.clone(),
            kernel: self.kernel_status(),
            rules: rs.rules.len(),
            inbound_rules: rs.rules.len() - outbound,
            outbound_rules: outbound,
            outbound_rules_not_enforced: 0,
            outbound: outbound_status,
            defaults: DefaultsView::from(&rs.defaults),
            generation: self.generation_no,
            uptime_secs: self.started.elapsed().as_secs(),
            last_reload: self.last_reload.clone(),
            conntrack: self.conntrack_status(&counters),
            counters: counters
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            warnings: rs
                .warnings
                .iter()
                .chain(&self.resolve_warnings)
                .cloned()
                .collect(),
            pending_confirm: self.pending.as_ref().map(|p| p.view()),
        })
    }

    /// `fwctl explain` against the rules in force, with the tracked connections to that
    /// remote address and port.
    pub(super) fn explain(
        &self,
        q: &crate::explain::Query,
    ) -> anyhow::Result<crate::explain::ExplainData> {
        let rules = self.rules_now();
        let now = crate::conntrack::monotonic_ns();
        // The names table exists once names were used; without it no address has a name.
        let tables = crate::names::NameTables::open(&self.ruleset.daemon.pin_dir).ok();
        let at = tables
            .as_ref()
            .map(|tables| crate::names::NamesAt { tables, now });
        let mut data = crate::explain::explain_named(
            &rules,
            &self.resolved,
            q,
            at.as_ref().map(|a| a as &dyn rules::names::Names),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        // TCP and UDP flows with that remote address and port (ICMP flows are keyed by echo id).
        let remote = firewall_common::addr::canonical(q.remote);
        let now = crate::conntrack::monotonic_ns();
        for f in self.tables.flows() {
            let port = match q.direction {
                Direction::In => f.key.local_port,
                Direction::Out => f.key.remote_port,
            };
            let proto = crate::conntrack::proto_name(f.key.proto);
            if f.entry.expires_ns <= now
                || !matches!(proto, "tcp" | "udp")
                || proto != q.proto
                || Some(port) != q.port
                || f.remote() != remote
            {
                continue;
            }
            data.tracked.push(format!(
                "{proto} {} <-> {} {} ({}, admitted by {}): its packets pass whatever the rules say",
                std::net::SocketAddr::new(f.local(), f.key.local_port),
                std::net::SocketAddr::new(f.remote(), f.key.remote_port),
                firewall_common::ct::state::name(f.entry.state),
                if f.entry.origin == firewall_common::ct::ORIGIN_LOCAL {
                    "local"
                } else {
                    "remote"
                },
                self.admitted_by(f.entry.rule, f.entry.generation)
            ));
        }
        Ok(data)
    }

    /// Each protected interface, checked against its pinned attachment: someone with root can
    /// point the link at another program or unpin it, and the user should hear of it.
    pub(super) fn interface_status(&mut self) -> Vec<InterfaceStatus> {
        let pin_dir = self.ruleset.daemon.pin_dir.clone();
        let generation = &mut self.generation;
        self.attached
            .iter()
            .map(|a| {
                let ours = generation.program_id(a.layer).unwrap_or(0);
                let running =
                    kernel::pinned_link_program(&kernel::link_pin(&pin_dir, "xdp", &a.ifname));
                let state = match running {
                    None => "the pinned attachment was removed by someone else".to_string(),
                    Some(id) if id != ours => {
                        format!("replaced: runs program {id}, not the firewall's {ours}")
                    }
                    Some(_) => "ok".to_string(),
                };
                InterfaceStatus {
                    name: a.ifname.clone(),
                    mode: a.mode.into(),
                    index: a.ifindex,
                    program_id: running.unwrap_or(0),
                    state,
                    egress: a.egress_kind.into(),
                    link_layer: a.layer.describe(),
                }
            })
            .chain(self.unprotected.iter().map(|(name, why)| InterfaceStatus {
                name: name.clone(),
                mode: String::new(),
                index: 0,
                program_id: 0,
                state: why.clone(),
                egress: String::new(),
                link_layer: String::new(),
            }))
            .collect()
    }

    /// The outbound hooks, each checked against its pinned link like the interfaces.
    pub(super) fn outbound_status(&mut self) -> OutboundStatus {
        let pin_dir = self.ruleset.daemon.pin_dir.clone();
        let mut hooks = Vec::new();
        for hook in Hook::ALL {
            let ours = self.outbound.program_id(hook).unwrap_or(0);
            let pin = kernel::hook_pin(&pin_dir, hook);
            let target = cgroups::link_target(&pin).ok();
            let state = match target {
                None => "the pinned attachment was removed by someone else".to_string(),
                Some(t) if t.prog_id != ours => {
                    format!(
                        "replaced: runs program {}, not the firewall's {ours}",
                        t.prog_id
                    )
                }
                Some(t) if t.cgroup_id != self.cgroup.id => format!(
                    "attached to cgroup id {}, not {} (id {})",
                    t.cgroup_id,
                    self.cgroup.path.display(),
                    self.cgroup.id
                ),
                Some(_) => "ok".to_string(),
            };
            hooks.push(HookStatus {
                hook: hook.name().into(),
                program_id: target.map(|t| t.prog_id).unwrap_or(0),
                state,
            });
        }
        OutboundStatus {
            cgroup: self.cgroup.path.display().to_string(),
            cgroup_id: self.cgroup.id,
            hooks,
        }
    }

    pub(super) fn kernel_status(&self) -> KernelStatus {
        let mut features = vec![
            "XDP attached through pinned bpf links".to_string(),
            "outbound rules in cgroup connect4/connect6/sendmsg4/sendmsg6 hooks (pinned bpf \
             links on the cgroup)"
                .to_string(),
        ];
        let kinds: std::collections::BTreeSet<&str> =
            self.attached.iter().map(|a| a.egress_kind).collect();
        for kind in kinds {
            features.push(match kind {
                "tcx" => "tc egress through TCX links (Linux 6.6 and later)".into(),
                _ => "tc egress through a cls_bpf filter under clsact (no TCX before Linux 6.6): \
                      not pinned, found again by its fixed priority and handle"
                    .into(),
            });
        }
        features.push(format!(
            "listener table kept by cgroup post_bind4/post_bind6/sock_release hooks on {} \
             (read by XDP for inbound rules that name programs)",
            self.cgroup.path.display()
        ));
        if crate::kernel::diagnostics::tracing() {
            features.push(
                "kernel tracing ON: the programs write trace messages to the daemon's log \
                 (costs time per packet; `fwctl debug off`)"
                    .into(),
            );
        }
        let mut degraded = self.degraded.clone();
        match crate::host::btf::kernel_offsets() {
            Ok(_) => features.push(format!(
                "program identity: (device, inode) of task->mm->exe_file, structure offsets \
                 from {}",
                crate::host::btf::VMLINUX_BTF
            )),
            Err(why) => degraded.push(format!(
                "program identity unavailable ({why}): rules that name a program cannot be \
                 loaded"
            )),
        }
        KernelStatus {
            release: crate::kernel::features::release(),
            features,
            degraded,
        }
    }

    /// `counters`: the datapath's counters as `status` read them (they cover both LRU tables).
    pub(super) fn conntrack_status(&self, c: &BTreeMap<&'static str, u64>) -> ConntrackStatus {
        let (confirmed, unconfirmed) = self.tables.sizes();
        let (host_pending, host_pending_capacity) = self.tables.host_pending();
        let get = |name: &str| c.get(name).copied().unwrap_or(0);
        // The counters cover both LRU tables.
        let evicted = get("ct_new_inserted")
            .saturating_sub(get("ct_new_removed"))
            .saturating_sub(get("ct_daemon_removed"))
            .saturating_sub((unconfirmed + host_pending) as u64);
        ConntrackStatus {
            confirmed,
            confirmed_capacity: self.tables.capacity(true),
            unconfirmed,
            unconfirmed_capacity: self.tables.capacity(false),
            host_pending,
            host_pending_capacity,
            evicted,
            seeded_at_start: self.seeded,
            adopted: self.adopted,
        }
    }

    /// What admitted a flow, in words.
    pub(super) fn admitted_by(&self, rule: u32, generation: u32) -> String {
        use firewall_common::{DEFAULT_RULE, ct, verdict_rule};
        match rule {
            ct::RULE_LOCAL => "host (outbound)".into(),
            ct::RULE_SEEDED => "host socket at start-up".into(),
            ct::RULE_PICKUP => "host traffic (picked up)".into(),
            word => {
                let idx = verdict_rule(word);
                if idx == DEFAULT_RULE {
                    return "[defaults] inbound".into();
                }
                let name = self.history.name(generation, idx as usize);
                match name {
                    Some(n) if generation == self.generation.id => {
                        format!("rule {} \"{n}\"", idx + 1)
                    }
                    Some(n) => format!("rule {} \"{n}\" (earlier rules)", idx + 1),
                    None => format!("rule {} (earlier rules)", idx + 1),
                }
            }
        }
    }

    /// `fwctl dns`: every name some address has now, with the rules that name it.
    pub(super) fn dns(&self) -> anyhow::Result<crate::control::DnsData> {
        use crate::control::{DnsAddress, DnsData, DnsName};
        let rules = self.rules_now();
        let outbound: Vec<&rules::model::Rule> = rules
            .of(Direction::Out)
            .filter(|r| !r.names.is_empty())
            .collect();
        let now = conntrack::monotonic_ns();
        let tables = crate::names::NameTables::open(&self.ruleset.daemon.pin_dir)?;
        let names = tables
            .all(now)
            .into_iter()
            .map(|(name, addrs)| DnsName {
                rules: outbound
                    .iter()
                    .filter(|r| r.names.iter().any(|p| p.matches(&name)))
                    .map(|r| format!("rule {} {:?}", r.index + 1, r.name.as_str()))
                    .collect(),
                name,
                addresses: addrs
                    .into_iter()
                    .map(|(address, expires)| DnsAddress {
                        address,
                        expires_in_secs: expires.saturating_sub(now) / 1_000_000_000,
                    })
                    .collect(),
            })
            .collect();
        let at = std::time::Instant::now();
        let looked_up = self
            .resolved
            .lookups
            .by_name
            .iter()
            .map(|(name, l)| crate::control::LookedUp {
                name: name.clone(),
                addresses: l.addrs.clone(),
                next_in_secs: l.refresh.saturating_duration_since(at).as_secs(),
                error: l.error.clone(),
                rules: rules
                    .of(Direction::In)
                    .filter(|r| r.names.iter().any(|p| p.name == *name))
                    .map(|r| format!("rule {} {:?}", r.index + 1, r.name.as_str()))
                    .collect(),
            })
            .collect();
        Ok(DnsData {
            reading: rules.reads_names(),
            names,
            looked_up,
        })
    }

    pub(super) fn conns(&self) -> anyhow::Result<ConnsData> {
        use firewall_common::ct::{self, FLAG_DENIED, ORIGIN_LOCAL, state};
        let now = conntrack::monotonic_ns();
        let mut names = OwnerNames::new(
            self.resolved
                .programs
                .iter()
                .filter_map(|(p, id)| Some((p.as_path(), (*id)?))),
        );
        // Names only while the rules name names: otherwise the tables may hold stale ones.
        let name_tables = if self.ruleset.reads_names() {
            crate::names::NameTables::open(&self.ruleset.daemon.pin_dir).ok()
        } else {
            None
        };
        let mut connections: Vec<ConnView> = self
            .tables
            .flows()
            .into_iter()
            .filter(|f| f.entry.expires_ns > now)
            .map(|f| {
                let e = &f.entry;
                let icmp = matches!(f.key.proto, ct::IPPROTO_ICMP | ct::IPPROTO_ICMPV6);
                let endpoint = |ip: std::net::IpAddr, port: u16| {
                    if icmp {
                        ip.to_string()
                    } else {
                        std::net::SocketAddr::new(ip, port).to_string()
                    }
                };
                let local = if icmp {
                    format!("{} id={}", f.local(), f.key.local_port)
                } else {
                    endpoint(f.local(), f.key.local_port)
                };
                ConnView {
                    proto: conntrack::proto_name(f.key.proto).into(),
                    local,
                    remote: endpoint(f.remote(), f.key.remote_port),
                    name: name_tables
                        .as_ref()
                        .and_then(|t| t.names_of(f.remote(), now).into_iter().next())
                        .map(|k| k.name),
                    state: state::name(e.state).into(),
                    origin: if e.origin == ORIGIN_LOCAL {
                        "local"
                    } else {
                        "remote"
                    }
                    .into(),
                    table: if f.confirmed() {
                        "confirmed"
                    } else {
                        "unconfirmed"
                    }
                    .into(),
                    age_secs: now.saturating_sub(e.created_ns) / 1_000_000_000,
                    expires_in_secs: e.expires_ns.saturating_sub(now) / 1_000_000_000,
                    packets_in: e.packets_in,
                    packets_out: e.packets_out,
                    bytes_in: e.bytes_in,
                    bytes_out: e.bytes_out,
                    admitted_by: self.admitted_by(e.rule, e.generation),
                    denied: e.flags & FLAG_DENIED != 0,
                    program: names.program(&e.owner),
                    pid: (e.owner.pid != 0).then_some(e.owner.pid),
                    user: e.owner.is_known().then(|| names.user(e.owner.uid)),
                }
            })
            .collect();
        connections
            .sort_by(|a, b| (&a.proto, &a.local, &a.remote).cmp(&(&b.proto, &b.local, &b.remote)));
        Ok(ConnsData { connections })
    }

    /// One line for `systemctl status`.
    pub(super) fn status_line(&self) -> String {
        let (confirmed, unconfirmed) = self.tables.sizes();
        let (host_pending, _) = self.tables.host_pending();
        format!(
            "{} rules (generation {}) on {}, outbound on cgroup {}; {} connections tracked",
            self.ruleset.rules.len(),
            self.generation_no,
            self.attached
                .iter()
                .map(|a| a.ifname.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            self.cgroup.path.display(),
            confirmed + unconfirmed + host_pending
        )
    }
}
