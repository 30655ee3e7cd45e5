//! The compiled tables read back in userspace exactly as the kernel reads them, so tests check
//! the compiler against the oracle without a kernel. Test-only: built with the `testrun`
//! feature (see Cargo.toml), never into the shipped binaries.

use std::net::IpAddr;

use firewall_common::{AddrValue, NO_MATCH, PROTO_CLASSES, PairKey, PortValue, port_slot};
use ipnet::{Ipv4Net, Ipv6Net};

use firewall_common::identity::{
    GroupKey, MAX_UNIT_LEVEL, NO_UID, Owner, SHAPE_PROGRAM, SHAPE_UNIT, SHAPE_USER, SHAPES,
};
use rules::model::PacketMeta;

use super::Compiled;

impl Compiled {
    /// The compiled tables evaluated in userspace exactly as the XDP program (inbound) or the
    /// cgroup hooks (outbound, with [`rules::model::ConnectMeta::as_packet`]) do, for a packet
    /// or call no rule with selectors can match (no owner known): used by tests to check the
    /// compiler against the oracle independently of the kernel.
    pub fn lookup(&self, pkt: &PacketMeta) -> u32 {
        self.lookup_as(pkt, None)
    }

    /// [`Self::lookup`] for a call made by `owner` (outbound), or a new connection to a port
    /// `owner` listens on (inbound): the unscoped tables, then one `GROUPS` lookup per shape,
    /// as the kernel does.
    pub fn lookup_as(&self, pkt: &PacketMeta, owner: Option<&Owner>) -> u32 {
        self.lookup_named(pkt, owner, &[])
    }

    /// [`Self::lookup_as`] for a destination seen under `names` (lower case, no trailing
    /// dot): the `NAMES` entries are looked up as the connect hook does, by the keys of each
    /// name and of its suffixes (`firewall-ebpf/src/dns.rs`).
    pub fn lookup_named(&self, pkt: &PacketMeta, owner: Option<&Owner>, names: &[String]) -> u32 {
        let proto = pkt.proto.class();
        let mut best = self.table_lookup(
            pkt,
            &self.addr4,
            &self.addr6,
            self.ports.get(&port_slot(proto, pkt.local_port)).copied(),
            &self.proto_verdicts,
        );
        if let Some(owner) = owner {
            for group in self.groups_of(owner) {
                let g = &self.groups[group as usize];
                best = best.min(self.table_lookup(
                    pkt,
                    &g.addr4,
                    &g.addr6,
                    g.ports.get(&port_slot(proto, pkt.local_port)).copied(),
                    &g.proto_verdicts,
                ));
                best = best.min(self.names_lookup(pkt, names, &g.names, &g.ports));
            }
        }
        best = best.min(self.names_lookup(pkt, names, &self.names, &self.ports));
        match best {
            NO_MATCH if names.is_empty() => self.unnamed_verdict,
            NO_MATCH => self.default_verdict,
            _ => best,
        }
    }

    /// The first rule the names' entries `entries` (the unscoped ones, or a group's, with its
    /// `ports`) give, as `names_rule` in the kernel computes it.
    fn names_lookup(
        &self,
        pkt: &PacketMeta,
        names: &[String],
        entries: &[(rules::names::NamePattern, AddrValue)],
        ports: &std::collections::BTreeMap<u32, PortValue>,
    ) -> u32 {
        use firewall_common::dns::{NameKey, WILDCARD_DEPTH, exact_key, wildcard_key};
        if names.is_empty() || entries.is_empty() {
            return NO_MATCH;
        }
        let key = NameKey { k0: 7, k1: 11 };
        let table: std::collections::HashMap<u64, AddrValue> = entries
            .iter()
            .map(|(n, v)| (super::names::name_key(&key, n), *v))
            .collect();
        let proto = pkt.proto.class();
        let port = ports
            .get(&port_slot(proto, pkt.local_port))
            .copied()
            .unwrap_or(PortValue::EMPTY)
            .class();
        let mut best = NO_MATCH;
        for name in names {
            let labels: Vec<&str> = name.split('.').collect();
            let mut keys = vec![exact_key(&key, name)];
            for depth in 1..labels.len().min(WILDCARD_DEPTH + 1) {
                keys.push(wildcard_key(
                    &key,
                    &labels[labels.len() - depth..].join("."),
                ));
            }
            for v in keys.iter().filter_map(|k| table.get(k)) {
                best = best
                    .min(v.any_proto)
                    .min(v.proto[proto as usize])
                    .min(v.inline_pair(port));
                if v.class != NO_MATCH && port != NO_MATCH {
                    let pair = PairKey {
                        addr_class: v.class,
                        port_class: port,
                    };
                    if let Some(w) = self.pairs.get(&pair) {
                        best = best.min(*w);
                    }
                }
            }
        }
        best
    }

    /// The groups `owner` belongs to: at most one per shape.
    pub fn groups_of(&self, owner: &Owner) -> Vec<u32> {
        let has_exe = owner.exe != Default::default();
        // The deepest ancestor cgroup that is a unit the rules name.
        let unit = (0..MAX_UNIT_LEVEL)
            .rev()
            .map(|i| owner.ancestors[i])
            .find(|id| *id != 0 && self.units.contains_key(id))
            .unwrap_or(0);
        let mut out = Vec::new();
        for shape in 1..SHAPES {
            if self.scoped_shapes & (1 << shape) == 0
                || (shape & SHAPE_PROGRAM != 0 && !has_exe)
                || (shape & SHAPE_UNIT != 0 && unit == 0)
            {
                continue;
            }
            let key = GroupKey {
                exe: if shape & SHAPE_PROGRAM != 0 {
                    owner.exe
                } else {
                    Default::default()
                },
                unit: if shape & SHAPE_UNIT != 0 { unit } else { 0 },
                uid: if shape & SHAPE_USER != 0 {
                    owner.uid
                } else {
                    NO_UID
                },
                _pad: 0,
            };
            if let Some(g) = self.groups.iter().find(|g| g.key == key) {
                out.push(g.id);
            }
        }
        out
    }

    fn table_lookup(
        &self,
        pkt: &PacketMeta,
        addr4: &[(Ipv4Net, AddrValue)],
        addr6: &[(Ipv6Net, AddrValue)],
        port: Option<PortValue>,
        proto_verdicts: &[u32; PROTO_CLASSES],
    ) -> u32 {
        let proto = pkt.proto.class();
        let addr = match pkt.remote {
            IpAddr::V4(a) => addr4
                .iter()
                .filter(|(n, _)| n.contains(&a))
                .max_by_key(|(n, _)| n.prefix_len())
                .map(|(_, v)| *v),
            IpAddr::V6(a) => addr6
                .iter()
                .filter(|(n, _)| n.contains(&a))
                .max_by_key(|(n, _)| n.prefix_len())
                .map(|(_, v)| *v),
        };
        let port = port.unwrap_or(PortValue::EMPTY);
        let (addr_class, mut best) = match addr {
            Some(v) => (
                v.class,
                v.any_proto
                    .min(v.proto[proto as usize])
                    .min(v.inline_pair(port.class())),
            ),
            None => (NO_MATCH, NO_MATCH),
        };
        best = best
            .min(port.any_addr())
            .min(proto_verdicts[proto as usize]);
        if addr_class != NO_MATCH && port.class() != NO_MATCH {
            let key = PairKey {
                addr_class,
                port_class: port.class(),
            };
            if let Some(w) = self.pairs.get(&key) {
                best = best.min(*w);
            }
        }
        best
    }
}
