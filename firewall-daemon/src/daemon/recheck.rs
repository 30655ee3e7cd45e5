//! Judging established state again under new rules: `fwctl reload --recheck` (flows a remote
//! host opened that the rules in force now deny are ended), and the sockets an outbound
//! `stealth` holds, released when the rules no longer say `stealth` for them.
//!
//! Both ask the reference evaluator ([`Policy`]) rather than the kernel: the question is what
//! the rules say about a flow that already exists, with the owner it recorded.

use std::path::Path;

use firewall_common::{
    ct::ConnOwner,
    identity::{Listener, ListenerKey, Owner},
};
use log::{info, warn};

use super::State;
use crate::{
    conntrack::{self},
    host::listeners,
    host::selectors::Resolved,
    host::sock_diag,
    kernel::{self, ListenerTable, StealthTable},
};
use rules::{
    model::{Action, ConnectMeta, PacketMeta, PacketProto, Ruleset},
    policy::{Decision, Policy},
};

/// Who a flow a remote host opened belongs to, for judging it again as the XDP program judged
/// it: the owner the flow recorded (the listening socket's program and uid), with the unit of
/// the socket listening there now if that is the same program and uid (flows do not record
/// cgroups); a flow without a recorded owner (`record_owner = false`, seeded at start) belongs
/// to the socket that would receive it now.
pub(super) fn flow_owner(
    f: &conntrack::Flow,
    listeners: &std::collections::HashMap<ListenerKey, Listener>,
) -> Option<Owner> {
    let listening =
        listeners::receiver(listeners, f.local(), f.key.proto, f.key.local_port).map(|l| l.owner);
    let recorded = f.entry.owner;
    if !recorded.is_known() {
        return listening;
    }
    let ancestors = listening
        .filter(|l| l.exe == recorded.exe && l.uid == recorded.uid)
        .map(|l| l.ancestors)
        .unwrap_or_default();
    Some(Owner {
        exe: recorded.exe,
        uid: recorded.uid,
        _pad: 0,
        ancestors,
    })
}

/// Who made a socket an outbound rule holds: what the hook recorded, with the cgroup the
/// process is in now (if it still runs the same executable).
pub(super) fn socket_owner(recorded: ConnOwner) -> Owner {
    let ancestors = crate::host::owners::owner_of_pid(recorded.pid)
        .ok()
        .filter(|now| now.exe == recorded.exe)
        .map(|now| now.ancestors)
        .unwrap_or_default();
    Owner {
        exe: recorded.exe,
        uid: recorded.uid,
        _pad: 0,
        ancestors,
    }
}

/// Releases the sockets held by an outbound `stealth` that the rules in force now allow (their
/// next packets leave), then tells the egress program whether to keep looking
/// ([`StealthTable::follow`]). Returns how many were released.
///
/// A socket is judged as its hook judged it: by who held it (recorded with the hold) and by
/// the names its destination has now. It stays held unless the answer is `allow`: rules that
/// now say `reject` keep it held (its packets vanish rather than leave, its next call is
/// refused), and so does a question that cannot be answered (who held it unknown while rules
/// name programs, units or users; the names unknown while rules name names).
pub(super) fn rejudge_stealth(ruleset: &Ruleset, resolved: &Resolved, pin_dir: &Path) -> usize {
    let mut table = match StealthTable::open(pin_dir) {
        Ok(t) => t,
        Err(e) => {
            warn!("{e:#}");
            return 0;
        }
    };
    let names = match crate::names::NameTables::open(pin_dir) {
        Ok(t) => Some(t),
        Err(e) if ruleset.reads_names() => {
            warn!("the held sockets are not judged again (the names are not known): {e:#}");
            None
        }
        Err(_) => None,
    };
    let at = names.as_ref().map(|tables| crate::names::NamesAt {
        tables,
        now: conntrack::monotonic_ns(),
    });
    let mut released = 0;
    if at.is_some() || !ruleset.reads_names() {
        let mut policy = Policy::with_selectors(ruleset, resolved);
        if let Some(at) = &at {
            policy = policy.with_names(at);
        }
        let selectors = ruleset.outbound().any(|r| !r.selector.is_everyone());
        for (key, _) in table.entries() {
            let proto = match key.proto {
                firewall_common::ct::IPPROTO_TCP => PacketProto::Tcp,
                _ => PacketProto::Udp,
            };
            let call = ConnectMeta {
                remote: firewall_common::addr::unmapped(key.remote),
                proto,
                remote_port: key.remote_port,
            };
            let d = match table.owner(key.cookie) {
                Some(recorded) => policy.decide_out_as(&call, &socket_owner(recorded)),
                None if selectors => continue,
                None => policy.decide_out(&call),
            };
            if d.action == Action::Allow {
                table.release(&key);
                released += 1;
            }
        }
    }
    if let Err(e) = table.follow(ruleset.outbound_can_stealth()) {
        warn!("{e:#}");
    }
    released
}

impl State {
    /// Re-judges every tracked flow a remote host opened under the rules now in force; marks
    /// those they deny. Returns their descriptions. `pin_dir`: where the maps are pinned (the
    /// listener table).
    pub(super) fn recheck(&mut self, pin_dir: &Path) -> Vec<String> {
        let judged = {
            let rules = self.rules_now();
            self.judge_flows(&rules, &self.resolved, pin_dir, |_| true)
        };
        self.end_flows(judged)
    }

    /// [`Self::recheck`] of the flows whose remote address `remote` accepts, under `rules`.
    pub(super) fn recheck_with(
        &mut self,
        rules: &Ruleset,
        pin_dir: &Path,
        remote: impl Fn(std::net::IpAddr) -> bool,
    ) -> Vec<String> {
        let judged = self.judge_flows(rules, &self.resolved, pin_dir, remote);
        self.end_flows(judged)
    }

    /// Marks the flows `judged` denied and closes the host's TCP sockets of them.
    fn end_flows(&mut self, judged: Vec<(String, (conntrack::Flow, Decision))>) -> Vec<String> {
        use firewall_common::{DEFAULT_RULE, ct, verdict};
        let now = conntrack::monotonic_ns();
        let cfg = kernel::ct_config(&self.ruleset.conntrack, self.generation.id);
        let mut ended = Vec::new();
        for (line, (f, d)) in judged {
            let word = verdict(d.rule.unwrap_or(DEFAULT_RULE), d.action.to_kernel());
            if self.tables.deny(&f, word, &cfg, now) {
                let local = std::net::SocketAddr::new(f.local(), f.key.local_port);
                let remote = std::net::SocketAddr::new(f.remote(), f.key.remote_port);
                // Close the host's end too (like `ss -K`), so the application sees the
                // connection end instead of waiting on a peer it can no longer hear.
                let closed = if f.key.proto == ct::IPPROTO_TCP {
                    match sock_diag::destroy_tcp(local, remote) {
                        Ok(true) => "; host socket closed",
                        Ok(false) => "",
                        Err(e) => {
                            warn!("closing the host's socket {local} <- {remote}: {e:#}");
                            "; host socket left open"
                        }
                    }
                } else {
                    ""
                };
                let by = by_rule(&self.ruleset, d.rule);
                info!(
                    rule = by.as_str(), action = d.action.to_string().as_str(), direction = "in",
                    proto = conntrack::proto_name(f.key.proto), local_addr = local.ip().to_string().as_str(),
                    local_port = local.port(), remote_addr = remote.ip().to_string().as_str(),
                    remote_port = remote.port();
                    "recheck ended {line}{closed}"
                );
                if self.events.receiver_count() > 0 {
                    let e = crate::decision_log::conn_event(
                        &f,
                        "denied",
                        Some(&d.action.to_string()),
                        &by,
                    );
                    let _ = self.events.send(std::sync::Arc::new(e));
                }
                ended.push(format!("{line}{closed}"));
            }
        }
        ended
    }

    /// Every live tracked flow a remote host opened that `rules` (selectors resolved as
    /// `resolved`) deny, described, with its decision: what `--recheck` ends and `--dry-run`
    /// reports. Asks the reference evaluator with the owner each flow recorded.
    pub(super) fn judge_flows(
        &self,
        rules: &Ruleset,
        resolved: &Resolved,
        pin_dir: &Path,
        remote: impl Fn(std::net::IpAddr) -> bool,
    ) -> Vec<(String, (conntrack::Flow, Decision))> {
        use firewall_common::ct;
        let now = conntrack::monotonic_ns();
        let policy = Policy::with_selectors(rules, resolved);
        let listeners = match ListenerTable::open(pin_dir) {
            Ok(t) => t.entries(),
            Err(e) => {
                warn!(
                    "recheck: {e:#}; rules about programs are judged by the owners flows recorded only"
                );
                std::collections::HashMap::new()
            }
        };
        let mut denied = Vec::new();
        for f in self.tables.flows() {
            if f.entry.origin != ct::ORIGIN_REMOTE
                || f.entry.expires_ns <= now
                || f.entry.flags & ct::FLAG_DENIED != 0
                || !remote(f.remote())
            {
                continue;
            }
            let proto = match f.key.proto {
                ct::IPPROTO_TCP => PacketProto::Tcp,
                ct::IPPROTO_UDP => PacketProto::Udp,
                _ => continue,
            };
            let owner = flow_owner(&f, &listeners);
            let d = policy.decide_for(
                &PacketMeta {
                    remote: f.remote(),
                    proto,
                    local_port: f.key.local_port,
                },
                owner.as_ref(),
            );
            if d.action == Action::Allow {
                continue;
            }
            let local = std::net::SocketAddr::new(f.local(), f.key.local_port);
            let remote = std::net::SocketAddr::new(f.remote(), f.key.remote_port);
            let line = format!(
                "{} {local} <- {remote} ({}): {} by {}",
                conntrack::proto_name(f.key.proto),
                ct::state::name(f.entry.state),
                d.action,
                by_rule(rules, d.rule)
            );
            denied.push((line, (f, d)));
        }
        denied
    }
}

fn by_rule(rules: &Ruleset, rule: Option<u32>) -> String {
    rule.and_then(|i| rules.rules.get(i as usize))
        .map(|r| format!("rule {} \"{}\"", r.index + 1, r.name))
        .unwrap_or_else(|| "[defaults] inbound".into())
}
