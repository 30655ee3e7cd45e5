//! Service names in `port` (`"ssh"`), looked up in `services(5)` for the rule's protocol. The
//! file is only read when a rule names a service, and once.

use std::{collections::HashMap, fs, path::Path};

use super::checker::Checker;
use crate::model::Proto;

impl Checker<'_> {
    pub(super) fn service(&mut self, name: &str, proto: Proto) -> Result<u16, String> {
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
}

/// `services(5)`: name -> (tcp port, udp port). Aliases count as names; the first line
/// wins, as with getservbyname(3).
pub(super) struct Services {
    pub(super) by_name: HashMap<String, (Option<u16>, Option<u16>)>,
}

impl Services {
    pub(super) fn read(path: &Path) -> Result<Self, String> {
        let text =
            fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(Self::parse(&text))
    }

    /// Malformed lines are skipped: this is a system file, not ours to police.
    pub(super) fn parse(text: &str) -> Self {
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
