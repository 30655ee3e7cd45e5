//! The reference evaluator: the meaning of the rules, written as plainly as possible (a linear
//! first-match scan). It is the oracle the compiled tables, the XDP program and the outbound
//! cgroup hooks are tested against, and what `fwctl` will use to explain verdicts.

use serde::Serialize;

use crate::model::{Action, ConnectMeta, Direction, PacketMeta, PacketProto, Rule, Ruleset};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub action: Action,
    /// Index of the deciding rule; `None` when `[defaults]` decided.
    pub rule: Option<u32>,
}

pub struct Policy<'a> {
    ruleset: &'a Ruleset,
}

impl<'a> Policy<'a> {
    pub fn new(ruleset: &'a Ruleset) -> Self {
        Self { ruleset }
    }

    /// The inbound verdict for a packet.
    pub fn decide(&self, pkt: &PacketMeta) -> Decision {
        self.first_match(Direction::In, pkt)
    }

    /// The outbound verdict for a connect() or a UDP sendmsg() with an address: the first
    /// outbound rule whose `proto`, `port` (the destination port) and `remote` (the destination
    /// address) match, else `[defaults] outbound`. IPv4-mapped destinations are judged as IPv4.
    /// Destinations on loopback are always allowed (`rule: None`), whatever the rules say.
    pub fn decide_out(&self, call: &ConnectMeta) -> Decision {
        if call.on_loopback() {
            return Decision {
                action: Action::Allow,
                rule: None,
            };
        }
        self.first_match(Direction::Out, &call.as_packet())
    }

    fn first_match(&self, direction: Direction, pkt: &PacketMeta) -> Decision {
        self.ruleset
            .of(direction)
            .find(|r| matches(r, pkt))
            .map(|r| Decision {
                action: r.action,
                rule: Some(r.index),
            })
            .unwrap_or(Decision {
                action: self.ruleset.default_action(direction),
                rule: None,
            })
    }
}

fn matches(rule: &Rule, pkt: &PacketMeta) -> bool {
    if !rule.matches_proto(pkt.proto) {
        return false;
    }
    if !rule.ports.is_empty() {
        let has_ports = matches!(pkt.proto, PacketProto::Tcp | PacketProto::Udp);
        if !has_ports || !rule.ports.iter().any(|r| r.contains(pkt.local_port)) {
            return false;
        }
    }
    match &rule.remote {
        None => true,
        Some(nets) => nets.iter().any(|n| n.contains(&pkt.remote)),
    }
}
