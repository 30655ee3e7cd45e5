//! `[dns]`: how long a name learnt from a DNS answer stays on its addresses.

use std::net::{IpAddr, SocketAddr};

use toml::{Spanned, de::DeValue};

use super::{
    checker::Checker,
    raw::RawDns,
    values::{DAY, HOUR},
};
use crate::model::DnsConfig;

impl Checker<'_> {
    pub(super) fn dns(&mut self, value: Option<Spanned<DeValue<'_>>>) -> DnsConfig {
        let mut out = DnsConfig::default();
        let Some(raw) = value.and_then(|v| self.table::<RawDns>(v, "", "[dns]", "dns.", &[]))
        else {
            return out;
        };
        if let Some(v) = &raw.min_ttl
            && let Some(secs) = self.duration(v, "dns.min_ttl", (0, DAY))
        {
            out.min_ttl = secs;
        }
        if let Some(v) = &raw.max_ttl
            && let Some(secs) = self.duration(v, "dns.max_ttl", (1, 7 * DAY))
        {
            out.max_ttl = secs;
        }
        if let Some(v) = &raw.grace
            && let Some(secs) = self.duration(v, "dns.grace", (0, HOUR))
        {
            out.grace = secs;
        }
        if let Some(v) = &raw.enforce {
            out.enforce = *v.get_ref();
        }
        if let Some(list) = &raw.servers {
            if list.get_ref().len() > MAX_SERVERS {
                self.error(
                    Some(list.span()),
                    format!("dns.servers: at most {MAX_SERVERS} servers"),
                );
            }
            for item in list.get_ref() {
                match server(item.get_ref()) {
                    Some(addr) => out.servers.push(addr),
                    None => self.error(
                        Some(item.span()),
                        format!(
                            "dns.servers: {:?} is not an address (\"192.0.2.53\", \"2001:db8::53\", or with a port: \"192.0.2.53:5353\", \"[2001:db8::53]:5353\")",
                            item.get_ref()
                        ),
                    ),
                }
            }
        }
        if out.min_ttl > out.max_ttl {
            let at = raw
                .min_ttl
                .as_ref()
                .or(raw.max_ttl.as_ref())
                .map(Spanned::span);
            self.error(
                at,
                format!(
                    "dns.min_ttl ({}s) is longer than dns.max_ttl ({}s)",
                    out.min_ttl, out.max_ttl
                ),
            );
        }
        out
    }
}

/// The most `[dns] servers`: the daemon asks them in turn.
const MAX_SERVERS: usize = 8;

/// A server: an address (port 53) or an address and port.
fn server(text: &str) -> Option<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    text.parse::<SocketAddr>().ok().filter(|a| a.port() != 0)
}
