//! The reference evaluator with state: [`Policy`] plus a connection table, written as plainly
//! as the datapath allows. Tests feed the same packet sequences to this model and to the real
//! XDP and TC programs (BPF_PROG_TEST_RUN) and require the same verdicts and states.
//!
//! The TCP, UDP and RST decisions are the shared functions of `firewall_common::ct`; what this
//! model re-states independently is everything around them: which table a packet meets, when a
//! flow is created, confirmed, forgotten or picked up, how related ICMP errors and the
//! `[conntrack] invalid` policy apply. It has no capacity limits and no clock (entries never
//! expire); tests that need those run against the kernel only.

use std::{collections::HashMap, net::IpAddr};

use firewall_common::{
    addr::{family, mapped},
    ct::{self, CtEntry, CtKey, FLAG_DENIED, ORIGIN_LOCAL, ORIGIN_REMOTE, TcpSeg, outcome, state},
};

use crate::{
    model::{Action, InvalidPolicy, PacketMeta, PacketProto, Ruleset, embeds_ipv4},
    policy::{Decision, Policy},
};

/// A packet as the tracker sees it, from the host's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub local: IpAddr,
    pub remote: IpAddr,
    pub proto: PacketProto,
    pub local_port: u16,
    pub remote_port: u16,
    /// TCP flags byte, sequence and acknowledgment numbers, payload length, window field and
    /// window scale option (SYN segments).
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub payload: u32,
    pub window: u16,
    pub wscale: Option<u8>,
    /// ICMP/ICMPv6 type and echo identifier.
    pub icmp_type: u8,
    pub icmp_id: u16,
    /// For ICMP errors: the quoted packet (one the host sent).
    pub quoted: Option<Quoted>,
}

/// The header an ICMP error quotes: a packet the host sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub proto: PacketProto,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

/// What happens to an inbound packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Part of a tracked flow.
    Tracked,
    /// An ICMP error about a tracked flow.
    Related,
    /// Impossible in its flow's state: dropped.
    Invalid,
    /// Dropped before the connection table and the rules: an IPv6 packet with an address
    /// that embeds an IPv4 one ([`crate::model::embeds_ipv4`]).
    EmbeddedIpv4,
    /// A flow denied by a recheck: this action.
    Denied(Action),
    /// TCP, not a SYN, no flow: `[conntrack] invalid` decides.
    NoConnection(Action),
    /// Judged by the rules.
    Rules(Decision),
}

impl Inbound {
    /// The action the packet gets.
    pub fn action(self) -> Action {
        match self {
            Inbound::Tracked | Inbound::Related => Action::Allow,
            Inbound::Invalid | Inbound::EmbeddedIpv4 => Action::Stealth,
            Inbound::Denied(a) | Inbound::NoConnection(a) => a,
            Inbound::Rules(d) => d.action,
        }
    }
}

fn ip_proto(proto: PacketProto, ip: IpAddr) -> u8 {
    match (proto, ip) {
        (PacketProto::Tcp, _) => ct::IPPROTO_TCP,
        (PacketProto::Udp, _) => ct::IPPROTO_UDP,
        (_, IpAddr::V4(_)) => ct::IPPROTO_ICMP,
        (_, IpAddr::V6(_)) => ct::IPPROTO_ICMPV6,
    }
}

fn key(seg: &Segment) -> CtKey {
    let (local_port, remote_port) = match seg.proto {
        PacketProto::Icmp => (seg.icmp_id, 0),
        _ => (seg.local_port, seg.remote_port),
    };
    CtKey {
        local: mapped(seg.local),
        remote: mapped(seg.remote),
        local_port,
        remote_port,
        proto: ip_proto(seg.proto, seg.remote),
        family: family(seg.remote),
        _pad: [0; 2],
    }
}

fn is_v6(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(_))
}

fn tcp_seg(seg: &Segment) -> TcpSeg {
    TcpSeg {
        flags: seg.tcp_flags,
        seq: seg.seq,
        ack: seg.ack,
        win: seg.window,
        wscale: seg.wscale.unwrap_or(ct::NO_WSCALE),
        payload: seg.payload,
    }
}

/// A tracked flow and the table it is in (without capacity limits: the confirmed table when
/// its state is confirmed, else the unconfirmed table of its origin, which `entry.origin`
/// tells).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub entry: CtEntry,
    pub confirmed: bool,
}

pub struct Tracker<'a> {
    ruleset: &'a Ruleset,
    policy: Policy<'a>,
    flows: HashMap<CtKey, Tracked>,
}

impl<'a> Tracker<'a> {
    pub fn new(ruleset: &'a Ruleset) -> Self {
        Self {
            ruleset,
            policy: Policy::new(ruleset),
            flows: HashMap::new(),
        }
    }

    pub fn flow(&self, key: &CtKey) -> Option<&Tracked> {
        self.flows.get(key)
    }

    pub fn flows(&self) -> &HashMap<CtKey, Tracked> {
        &self.flows
    }

    /// The key a segment's flow has.
    pub fn key_of(seg: &Segment) -> CtKey {
        key(seg)
    }

    /// Applies a packet of a tracked flow; returns the outcome.
    fn step(&mut self, k: &CtKey, seg: &Segment, from_local: bool) -> u8 {
        let Some(t) = self.flows.get_mut(k) else {
            return outcome::NEW;
        };
        let e = &mut t.entry;
        if e.flags & FLAG_DENIED != 0 {
            return outcome::DENIED;
        }
        let tcp = k.proto == ct::IPPROTO_TCP;
        let tseg = tcp_seg(seg);
        let s = ct::step(e, tcp, from_local, &tseg);
        match s.outcome {
            outcome::PASS | outcome::RESTART => {}
            // Dropped like any packet its flow's state does not allow.
            outcome::WINDOW => return outcome::INVALID,
            outcome::FORGET => {
                self.flows.remove(k);
                return outcome::FORGET;
            }
            out => return out,
        }
        e.state = s.state;
        e.flags = s.flags;
        ct::learn(e, s.outcome, tcp, from_local, &tseg);
        if state::confirmed(e.state, e.origin) {
            t.confirmed = true;
        }
        outcome::PASS
    }

    fn insert(&mut self, k: CtKey, st: u8, origin: u8, rule: u32) -> &mut CtEntry {
        let entry = CtEntry {
            created_ns: 0,
            expires_ns: 0,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            rule,
            generation: 0,
            remote_next: 0,
            local_next: 0,
            remote_maxend: 0,
            local_maxend: 0,
            remote_maxwin: 0,
            local_maxwin: 0,
            state: st,
            origin,
            flags: 0,
            reuse_seq: 0,
            reuse_win: 0,
            remote_scale: 0,
            local_scale: 0,
            reuse_wscale: 0,
            _pad: [0; 4],
            owner: Default::default(),
        };
        let t = self.flows.entry(k).insert_entry(Tracked {
            entry,
            confirmed: state::confirmed(st, origin),
        });
        &mut t.into_mut().entry
    }

    /// A packet from a remote host.
    pub fn inbound(&mut self, seg: &Segment) -> Inbound {
        if embeds_ipv4(seg.local) || embeds_ipv4(seg.remote) {
            return Inbound::EmbeddedIpv4;
        }
        match seg.proto {
            PacketProto::Tcp | PacketProto::Udp => {
                let k = key(seg);
                match self.step(&k, seg, false) {
                    outcome::PASS | outcome::FORGET => return Inbound::Tracked,
                    outcome::INVALID => return Inbound::Invalid,
                    outcome::DENIED => {
                        let word = self.flows[&k].entry.rule;
                        return Inbound::Denied(action_of(word));
                    }
                    _ => {
                        self.flows.remove(&k);
                    }
                }
                if seg.proto == PacketProto::Tcp && !ct::is_initial_syn(seg.tcp_flags) {
                    return Inbound::NoConnection(match self.ruleset.conntrack.invalid {
                        InvalidPolicy::Stealth => Action::Stealth,
                        InvalidPolicy::Reject => Action::Reject,
                    });
                }
                let d = self.judge(seg);
                if d.action == Action::Allow {
                    let word = firewall_common::verdict(
                        d.rule.unwrap_or(firewall_common::DEFAULT_RULE),
                        firewall_common::ACTION_ALLOW,
                    );
                    let syn = seg.proto == PacketProto::Tcp;
                    let st = if syn {
                        state::SYN_SENT
                    } else {
                        state::UDP_UNREPLIED
                    };
                    let e = self.insert(k, st, ORIGIN_REMOTE, word);
                    if syn {
                        ct::tcp_learn(e, false, &tcp_seg(seg));
                    }
                }
                Inbound::Rules(d)
            }
            PacketProto::Icmp => {
                let v6 = is_v6(seg.remote);
                let echo_reply = if v6 {
                    seg.icmp_type == 129
                } else {
                    seg.icmp_type == 0
                };
                if echo_reply {
                    if self.flows.contains_key(&key(seg)) {
                        return Inbound::Tracked;
                    }
                } else if matches!(
                    (v6, seg.icmp_type),
                    (true, 1 | 3 | 4) | (false, 3 | 11 | 12)
                ) && let Some(q) = seg.quoted
                {
                    let (local_port, remote_port) = match q.proto {
                        PacketProto::Icmp => (q.src_port, 0),
                        _ => (q.src_port, q.dst_port),
                    };
                    let k = CtKey {
                        local: mapped(q.src),
                        remote: mapped(q.dst),
                        local_port,
                        remote_port,
                        proto: ip_proto(q.proto, q.src),
                        family: family(q.src),
                        _pad: [0; 2],
                    };
                    if self.flows.contains_key(&k) {
                        return Inbound::Related;
                    }
                }
                Inbound::Rules(self.judge(seg))
            }
            PacketProto::Other => Inbound::Rules(self.judge(seg)),
        }
    }

    fn judge(&self, seg: &Segment) -> Decision {
        self.policy.decide(&PacketMeta {
            remote: seg.remote,
            proto: seg.proto,
            local_port: match seg.proto {
                PacketProto::Tcp | PacketProto::Udp => seg.local_port,
                _ => 0,
            },
        })
    }

    /// A packet the host sends (never dropped here; it only changes the table).
    pub fn outbound(&mut self, seg: &Segment) {
        if embeds_ipv4(seg.local) || embeds_ipv4(seg.remote) {
            return;
        }
        let k = key(seg);
        match seg.proto {
            PacketProto::Tcp => {
                match self.step(&k, seg, true) {
                    outcome::NEW => {
                        self.flows.remove(&k);
                    }
                    _ => return,
                }
                let Some((st, origin, rule)) = ct::local_tcp_pickup(seg.tcp_flags) else {
                    return;
                };
                let e = self.insert(k, st, origin, rule);
                if st != state::SYN_SENT {
                    ct::pickup(e, &tcp_seg(seg));
                }
                ct::tcp_learn(e, true, &tcp_seg(seg));
            }
            PacketProto::Udp => {
                if self.step(&k, seg, true) == outcome::NEW {
                    self.insert(k, state::UDP_UNREPLIED, ORIGIN_LOCAL, ct::RULE_LOCAL);
                }
            }
            PacketProto::Icmp => {
                let request = if is_v6(seg.local) {
                    seg.icmp_type == 128
                } else {
                    seg.icmp_type == 8
                };
                if request && !self.flows.contains_key(&k) {
                    self.insert(k, state::ICMP_ECHO, ORIGIN_LOCAL, ct::RULE_LOCAL);
                }
            }
            PacketProto::Other => {}
        }
    }
}

fn action_of(word: u32) -> Action {
    // The datapath drops whatever is neither allow nor reject.
    Action::from_kernel(firewall_common::verdict_action(word)).unwrap_or(Action::Stealth)
}
