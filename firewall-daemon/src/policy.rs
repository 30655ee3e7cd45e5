//! The reference evaluator: the meaning of the rules, written as plainly as possible (a linear
//! first-match scan). It is the oracle the compiled tables and the XDP program are tested
//! against, and what `fwctl` will use to explain verdicts.

use serde::Serialize;

use crate::model::{Action, Direction, PacketMeta, PacketProto, Rule, Ruleset};

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
        self.ruleset
            .rules
            .iter()
            .filter(|r| r.direction == Direction::In)
            .find(|r| matches(r, pkt))
            .map(|r| Decision {
                action: r.action,
                rule: Some(r.index),
            })
            .unwrap_or(Decision {
                action: self.ruleset.defaults.inbound,
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
