//! The inbound rules' names (`remote = ["monitor.example.org"]` on an inbound rule), looked up
//! by the daemon.
//!
//! Outbound, a name is known from the DNS answers the host receives, read in the datapath
//! (`firewall_common::dns`). Inbound there is no answer to read: the peer that connects asked
//! nothing. So the daemon asks, the way nftables and firewalld resolve a name in a rule: A and
//! AAAA for each name, from `[dns] servers` (else the servers of /etc/resolv.conf), when the
//! rules load and again when the records expire (their TTL clamped to `[dns] min_ttl` ..
//! `max_ttl`; due names are asked for when the daemon looks at the rules' programs and units
//! again, every 2 s); the addresses take the name's place in the rule
//! ([`rules::model::Ruleset::with_lookups`] for the compiler, [`rules::policy::Selectors`] for
//! the oracle), and a change recompiles the rules like a changed program does.
//!
//! What a failure does, chosen so that neither kind of rule opens by accident:
//! - an answer that the name has no address (NXDOMAIN, no A or AAAA) empties it: the rule
//!   matches no address by that name;
//! - no answer (timeout, refused, SERVFAIL, no server) keeps the addresses looked up before,
//!   if any, and asks again after [`RETRY`]: a DNS outage neither shuts the monitoring server
//!   out nor lets a refused host in. A and AAAA are asked apart, and the name changes only
//!   when both got a definitive answer: one family's lost query does not take the other's
//!   addresses away.
//!
//! Every name is absolute (no search domains). The lookups of one resolution run together
//! and end within [`TIMEOUT`], so a reload waits at most that long for them.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use hickory_resolver::{
    Resolver,
    config::{ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
    proto::rr::RecordType,
};
use rules::model::DnsConfig;

/// How long one resolution (every name, A and AAAA, each server tried) may take.
pub const TIMEOUT: Duration = Duration::from_secs(4);
/// The most addresses one name may stand for: an answer with more is not used (the name keeps
/// the addresses it had), so a server cannot swell the rules.
pub const MAX_ADDRESSES: usize = 64;

/// When a name with no answer is asked again (sooner when `[dns] min_ttl` is shorter).
pub const RETRY: Duration = Duration::from_secs(30);

/// What one name looked up to.
#[derive(Clone, Debug)]
pub struct Lookup {
    /// Canonical (an IPv4-mapped address as IPv4), sorted, each once.
    pub addrs: Vec<IpAddr>,
    /// Why the last lookup gave no address; with `kept`, the addresses are those of an
    /// earlier lookup.
    pub error: Option<String>,
    /// The last lookup got no answer, and `addrs` are from the one before.
    pub kept: bool,
    /// When it is asked again.
    pub refresh: Instant,
}

/// The inbound rules' names and what each looked up to. Equal when the names and their
/// addresses are: when the next lookup is due is no part of what the rules say.
#[derive(Clone, Debug, Default)]
pub struct Lookups {
    pub by_name: BTreeMap<String, Lookup>,
    asked_with: AskedWith,
}

/// What lookups were made with: the servers asked (`[dns] servers`; empty: /etc/resolv.conf's)
/// and the limits the records' TTLs were clamped to. A reload that changes any of them asks
/// every name again: a `max_ttl` brought down from a day to a minute is what the user wants
/// now, not in a day.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct AskedWith {
    servers: Vec<std::net::SocketAddr>,
    min_ttl: u32,
    max_ttl: u32,
}

impl AskedWith {
    fn of(dns: &DnsConfig) -> Self {
        Self {
            servers: dns.servers.clone(),
            min_ttl: dns.min_ttl,
            max_ttl: dns.max_ttl,
        }
    }
}

impl PartialEq for Lookups {
    fn eq(&self, other: &Self) -> bool {
        self.by_name.len() == other.by_name.len()
            && self
                .by_name
                .iter()
                .zip(&other.by_name)
                .all(|((a, x), (b, y))| a == b && x.addrs == y.addrs)
    }
}

impl Eq for Lookups {}

impl Lookups {
    /// Lookups that gave these addresses, due again in a day, made with the default `[dns]`
    /// (for tests).
    #[cfg(test)]
    pub fn fixed(by_name: BTreeMap<String, Vec<IpAddr>>) -> Self {
        let refresh = Instant::now() + Duration::from_secs(86_400);
        Self {
            by_name: by_name
                .into_iter()
                .map(|(name, addrs)| {
                    let lookup = Lookup {
                        addrs,
                        error: None,
                        kept: false,
                        refresh,
                    };
                    (name, lookup)
                })
                .collect(),
            asked_with: AskedWith::of(&DnsConfig::default()),
        }
    }

    /// The addresses `name` looked up to (none when it is not an inbound rule's name).
    pub fn addresses(&self, name: &str) -> Vec<IpAddr> {
        self.by_name
            .get(name)
            .map(|l| l.addrs.clone())
            .unwrap_or_default()
    }

    /// Each name is next asked when `newer` says, its addresses unchanged (a change that could
    /// not be made is not retried before then).
    pub fn postpone_like(&mut self, newer: &Lookups) {
        for (name, l) in &mut self.by_name {
            if let Some(n) = newer.by_name.get(name) {
                l.refresh = n.refresh;
            }
        }
    }

    /// For every name that got no answer, the addresses `before` had for it.
    fn keep_unanswered(&mut self, before: &Lookups) {
        for (name, now) in &mut self.by_name {
            if now.kept
                && let Some(old) = before.by_name.get(name)
            {
                now.addrs.clone_from(&old.addrs);
            }
        }
    }

    /// Messages for the names without an answer, located at each inbound rule naming them.
    pub fn warnings(&self, ruleset: &rules::model::Ruleset) -> Vec<String> {
        let mut out = Vec::new();
        for rule in ruleset.inbound() {
            for name in &rule.names {
                let Some(l) = self.by_name.get(&name.name) else {
                    continue;
                };
                let Some(error) = &l.error else { continue };
                let now = if l.addrs.is_empty() {
                    "the rule matches no address by this name".to_owned()
                } else {
                    format!("the addresses looked up before stay ({})", join(&l.addrs))
                };
                out.push(format!(
                    "{}looking up {:?}: {error}; {now}, asked again in {}s",
                    rules::lint::at(ruleset, rule),
                    name.name,
                    l.refresh
                        .saturating_duration_since(Instant::now())
                        .as_secs()
                ));
            }
        }
        out
    }
}

fn join(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// [`look_up`] for the names of `names` that `before` does not have, or whose records expired
/// (all of them when the servers or the TTL limits changed); the others keep what `before` has. A name no server
/// answered for keeps the addresses `before` had for it.
pub fn look_up_due(names: &[&str], dns: &DnsConfig, before: &Lookups) -> Lookups {
    let now = Instant::now();
    let asked_alike = before.asked_with == AskedWith::of(dns);
    let fresh = |name: &str| {
        before
            .by_name
            .get(name)
            .filter(|l| asked_alike && l.refresh > now)
    };
    let due: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| fresh(n).is_none())
        .collect();
    let mut out = look_up(&due, dns);
    out.keep_unanswered(before);
    for name in names {
        if let Some(l) = fresh(name) {
            out.by_name.insert((*name).to_owned(), l.clone());
        }
    }
    out.asked_with = AskedWith::of(dns);
    out
}

/// Looks up every name of `names` (A and AAAA), all together, within [`TIMEOUT`]. Safe to call
/// from anywhere, an async task included: the lookups run on a thread and runtime of their
/// own.
fn look_up(names: &[&str], dns: &DnsConfig) -> Lookups {
    if names.is_empty() {
        return Lookups {
            asked_with: AskedWith::of(dns),
            ..Lookups::default()
        };
    }
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let answers = std::thread::scope(|scope| {
        scope
            .spawn(|| ask(&names, dns))
            .join()
            .unwrap_or_else(|_| Err("the lookup thread panicked".to_owned()))
    });
    let now = Instant::now();
    let clamp = |ttl: Duration| {
        ttl.clamp(
            Duration::from_secs(u64::from(dns.min_ttl.max(1))),
            Duration::from_secs(u64::from(dns.max_ttl.max(1))),
        )
    };
    // A name without an answer is asked again sooner when `min_ttl` is shorter.
    let retry = RETRY.min(Duration::from_secs(u64::from(dns.min_ttl.max(1))));
    // No lookup could be made at all: every name is unanswered, for the same reason.
    let answers = answers.unwrap_or_else(|why| {
        names
            .iter()
            .map(|_| Answer::Unanswered(why.clone()))
            .collect()
    });
    let by_name = names
        .iter()
        .zip(answers)
        .map(|(name, answer)| {
            let (addrs, error, kept, refresh) = match answer {
                Answer::Addrs(addrs, valid_until) => (
                    addrs,
                    None,
                    false,
                    now + clamp(valid_until.saturating_duration_since(now)),
                ),
                Answer::NoAddress(why) => (Vec::new(), Some(why), false, now + retry),
                Answer::Unanswered(why) => (Vec::new(), Some(why), true, now + retry),
            };
            let lookup = Lookup {
                addrs,
                error,
                kept,
                refresh,
            };
            (name.clone(), lookup)
        })
        .collect();
    Lookups {
        by_name,
        asked_with: AskedWith::of(dns),
    }
}

enum Answer {
    /// The addresses, and until when the records hold.
    Addrs(Vec<IpAddr>, Instant),
    /// The server says the name has no address.
    NoAddress(String),
    /// No server said anything about it.
    Unanswered(String),
}

/// The lookups, on a runtime of this thread's own (the resolver's tasks and the lookups on
/// one thread). `Err`: no lookup could be made at all.
fn ask(names: &[String], dns: &DnsConfig) -> Result<Vec<Answer>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the lookups: {e}"))?;
    runtime.block_on(async {
        let resolver = resolver(dns)?;
        let mut lookups = tokio::task::JoinSet::new();
        for (i, name) in names.iter().enumerate() {
            for qtype in [RecordType::A, RecordType::AAAA] {
                let (resolver, name) = (resolver.clone(), name.clone());
                lookups.spawn(async move {
                    // Absolute: no search domain is tried.
                    let asked =
                        tokio::time::timeout(TIMEOUT, resolver.lookup(format!("{name}."), qtype));
                    (i, family(asked.await))
                });
            }
        }
        let mut families: Vec<Vec<Family>> = names.iter().map(|_| Vec::new()).collect();
        while let Some(done) = lookups.join_next().await {
            if let Ok((i, family)) = done {
                families[i].push(family);
            }
        }
        Ok(families.into_iter().map(combine).collect())
    })
}

/// What one family's query (A or AAAA) got.
enum Family {
    /// Its addresses, and until when they hold.
    Addrs(Vec<IpAddr>, Instant),
    /// The server says there is none (NXDOMAIN: `true`; or no record of the type).
    Nothing { nx_domain: bool },
    /// No definitive answer.
    Unanswered(String),
}

fn family(
    asked: Result<
        Result<hickory_resolver::lookup::Lookup, hickory_resolver::net::NetError>,
        tokio::time::error::Elapsed,
    >,
) -> Family {
    match asked {
        Err(_) => Family::Unanswered(format!("no answer within {}s", TIMEOUT.as_secs())),
        Ok(Ok(found)) => Family::Addrs(
            found
                .answers()
                .iter()
                .filter_map(|r| r.data.ip_addr())
                .collect(),
            found.valid_until(),
        ),
        Ok(Err(e)) if e.is_nx_domain() => Family::Nothing { nx_domain: true },
        Ok(Err(e)) if e.is_no_records_found() => Family::Nothing { nx_domain: false },
        Ok(Err(e)) => Family::Unanswered(e.to_string()),
    }
}

/// A name's answer from both families' (two, unless a task failed): the name changes only when
/// both got a definitive answer, so a lost or failed query of one family never takes the
/// other family's addresses away, nor the name's (it keeps what it had).
fn combine(families: Vec<Family>) -> Answer {
    if families.len() < 2 {
        return Answer::Unanswered("a lookup did not end".to_owned());
    }
    let mut addrs = Vec::new();
    let mut until: Option<Instant> = None;
    let mut nx_domain = false;
    for f in families {
        match f {
            Family::Unanswered(why) => return Answer::Unanswered(why),
            Family::Addrs(a, valid_until) => {
                addrs.extend(a);
                until = Some(until.map_or(valid_until, |u| u.min(valid_until)));
            }
            Family::Nothing { nx_domain: nx } => nx_domain |= nx,
        }
    }
    match until {
        Some(until) => addresses(addrs, until),
        None if nx_domain => Answer::NoAddress("no such name (NXDOMAIN)".to_owned()),
        None => Answer::NoAddress("no A or AAAA record".to_owned()),
    }
}

/// What an answer's addresses make of the name: canonical, sorted, each once, without those no
/// packet from the network has; more than [`MAX_ADDRESSES`] are not used.
fn addresses(found: Vec<IpAddr>, valid_until: Instant) -> Answer {
    let mut addrs: Vec<IpAddr> = found
        .into_iter()
        .map(firewall_common::addr::canonical)
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    let all = addrs.len();
    // No packet from the network comes from these: an answer naming them is a mistake or a
    // trick, never a host to let in.
    addrs.retain(|a| from_the_network(*a));
    if addrs.len() > MAX_ADDRESSES {
        Answer::Unanswered(format!(
            "the answer has {} addresses, more than the {MAX_ADDRESSES} a name may stand for",
            addrs.len()
        ))
    } else if addrs.is_empty() && all > 0 {
        Answer::NoAddress(
            "only addresses no packet from the network has (unspecified, loopback, multicast, \
             broadcast)"
                .to_owned(),
        )
    } else if addrs.is_empty() {
        Answer::NoAddress("no A or AAAA record".to_owned())
    } else {
        Answer::Addrs(addrs, valid_until)
    }
}

/// Whether packets from the network may come from `addr`.
fn from_the_network(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast())
        }
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_loopback() || a.is_multicast()),
    }
}

/// A resolver asking `[dns] servers`, else those of /etc/resolv.conf, over UDP (TCP when an
/// answer is truncated).
fn resolver(dns: &DnsConfig) -> Result<Resolver<TokioRuntimeProvider>, String> {
    let (config, mut options) = if dns.servers.is_empty() {
        hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("reading /etc/resolv.conf: {e}"))?
    } else {
        let servers = dns
            .servers
            .iter()
            .map(|s| {
                let on = |protocol| {
                    let mut c = ConnectionConfig::new(protocol);
                    c.port = s.port();
                    c
                };
                NameServerConfig::new(
                    s.ip(),
                    true,
                    vec![on(ProtocolConfig::Udp), on(ProtocolConfig::Tcp)],
                )
            })
            .collect();
        (
            ResolverConfig::from_parts(None, Vec::new(), servers),
            ResolverOpts::default(),
        )
    };
    options.timeout = Duration::from_secs(2);
    options.attempts = 2;
    options.cache_size = 0;
    // The servers only, not /etc/hosts: what the README says a name rule follows.
    options.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
    let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    *builder.options_mut() = options;
    builder.build().map_err(|e| format!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().expect("address")).collect()
    }

    #[test]
    fn an_answer_stands_for_addresses_packets_from_the_network_have() {
        let t = Instant::now();
        // IPv4-mapped as IPv4, sorted, each once.
        match addresses(
            ips(&["::ffff:192.0.2.7", "192.0.2.7", "2001:db8::1", "192.0.2.1"]),
            t,
        ) {
            Answer::Addrs(a, _) => assert_eq!(a, ips(&["192.0.2.1", "192.0.2.7", "2001:db8::1"])),
            _ => panic!("addresses expected"),
        }
        // Loopback, unspecified, multicast and broadcast are dropped...
        match addresses(
            ips(&["127.0.0.1", "192.0.2.1", "::", "ff02::1", "255.255.255.255"]),
            t,
        ) {
            Answer::Addrs(a, _) => assert_eq!(a, ips(&["192.0.2.1"])),
            _ => panic!("addresses expected"),
        }
        // ...and a name that has only those has no address.
        assert!(matches!(
            addresses(
                ips(&["127.0.0.1", "::ffff:127.0.0.1", "224.0.0.1", "0.0.0.0"]),
                t
            ),
            Answer::NoAddress(_)
        ));
        assert!(matches!(addresses(Vec::new(), t), Answer::NoAddress(_)));
        // Too many: not used at all (the name keeps what it had), never a part of them.
        let many: Vec<IpAddr> = (0..=MAX_ADDRESSES as u32)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0001 + i)))
            .collect();
        assert!(matches!(addresses(many.clone(), t), Answer::Unanswered(_)));
        assert!(matches!(
            addresses(many[..MAX_ADDRESSES].to_vec(), t),
            Answer::Addrs(a, _) if a.len() == MAX_ADDRESSES
        ));
    }

    #[test]
    fn a_name_without_an_answer_keeps_its_addresses_and_one_without_an_address_loses_them() {
        let dns = DnsConfig::default();
        let before = Lookups::fixed(BTreeMap::from([
            ("a.test".to_owned(), ips(&["192.0.2.1"])),
            ("b.test".to_owned(), ips(&["192.0.2.2"])),
        ]));
        let mut now = Lookups::fixed(BTreeMap::from([
            ("a.test".to_owned(), Vec::new()),
            ("b.test".to_owned(), Vec::new()),
        ]));
        for (name, kept) in [("a.test", true), ("b.test", false)] {
            let l = now.by_name.get_mut(name).expect("name");
            l.kept = kept;
            l.error = Some("why".to_owned());
        }
        now.keep_unanswered(&before);
        assert_eq!(now.addresses("a.test"), ips(&["192.0.2.1"]));
        assert!(now.addresses("b.test").is_empty());
        // Names not due are not asked again: what `before` had stays, without a lookup.
        let due = look_up_due(&["a.test", "b.test"], &dns, &before);
        assert_eq!(due, before);
        assert_eq!(due.addresses("b.test"), ips(&["192.0.2.2"]));
    }

    #[test]
    fn other_servers_or_ttl_limits_ask_every_name_again() {
        // A server that refuses every query: a name asked keeps its addresses and says why,
        // one not asked has no error.
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("a server's socket");
        let nobody = DnsConfig {
            servers: vec![server.local_addr().expect("its address")],
            ..DnsConfig::default()
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            // Ends with the test's process.
            while let Ok((n, from)) = server.recv_from(&mut buf) {
                if n >= 12 {
                    // The query back as a response (QR), REFUSED.
                    buf[2] |= 0x80;
                    buf[3] = (buf[3] & 0xf0) | 5;
                    let _ = server.send_to(&buf[..n], from);
                }
            }
        });
        let before = |servers: &[std::net::SocketAddr]| {
            let mut l =
                Lookups::fixed(BTreeMap::from([("a.test".to_owned(), ips(&["192.0.2.1"]))]));
            l.asked_with.servers = servers.to_vec();
            l
        };
        let asked = |dns: &DnsConfig, before: &Lookups| {
            let out = look_up_due(&["a.test"], dns, before);
            assert_eq!(out.addresses("a.test"), ips(&["192.0.2.1"]));
            out.by_name["a.test"].error.is_some()
        };
        let same = before(&nobody.servers);
        assert!(!asked(&nobody, &same), "nothing changed: not due");
        assert!(asked(&nobody, &before(&[])), "other servers");
        for dns in [
            DnsConfig {
                max_ttl: 60,
                ..nobody.clone()
            },
            DnsConfig {
                min_ttl: 5,
                ..nobody.clone()
            },
        ] {
            assert!(asked(&dns, &same), "other TTL limits: {dns:?}");
        }
    }

    #[test]
    fn a_name_changes_only_when_both_families_answered() {
        let t = Instant::now();
        let v4 = || Family::Addrs(vec!["192.0.2.1".parse().expect("address")], t);
        let v6 = || Family::Addrs(vec!["2001:db8::1".parse().expect("address")], t);
        let none = || Family::Nothing { nx_domain: false };
        let lost = || Family::Unanswered("timeout".to_owned());
        assert!(matches!(combine(vec![v4(), v6()]), Answer::Addrs(a, _) if a.len() == 2));
        assert!(matches!(combine(vec![v4(), none()]), Answer::Addrs(a, _) if a.len() == 1));
        // One family lost: the name keeps what it had, whatever the other says.
        assert!(matches!(combine(vec![v4(), lost()]), Answer::Unanswered(_)));
        assert!(matches!(
            combine(vec![none(), lost()]),
            Answer::Unanswered(_)
        ));
        assert!(matches!(combine(vec![v4()]), Answer::Unanswered(_)));
        assert!(matches!(
            combine(vec![none(), none()]),
            Answer::NoAddress(_)
        ));
        assert!(matches!(
            combine(vec![Family::Nothing { nx_domain: true }, none()]),
            Answer::NoAddress(why) if why.contains("NXDOMAIN")
        ));
    }
}
