//! Which interfaces the firewall protects, and notice of interfaces coming and going.
//!
//! The daemon reconciles instead of interpreting each netlink message: any link notification
//! (RTMGRP_LINK) wakes it, it lists the interfaces as they are now, attaches to the wanted
//! ones it does not protect yet and forgets those that are gone. Missed or coalesced
//! notifications therefore cannot leave it out of step.

use std::collections::BTreeMap;

use anyhow::Context as _;

use rules::model::Interfaces;

mod rtnetlink;

pub use rtnetlink::LinkEvents;

/// An interface as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfInfo {
    pub name: String,
    pub index: u32,
    pub up: bool,
    pub loopback: bool,
    pub link: LinkLayer,
}

/// What comes before the IP header in the frames an interface's XDP program sees, which
/// decides whether, and with which entry point, the firewall can judge them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLayer {
    /// An Ethernet header (VLAN tags included): `firewall_xdp`.
    Ethernet,
    /// Nothing: the frame starts at the IP header (tun, wireguard, ppp, ip tunnels):
    /// `firewall_xdp_l3`.
    Ip,
    /// A header the parser does not know; the interface cannot be protected. The field is the
    /// device type (`ARPHRD_*`).
    Unsupported(u16),
    /// The device type could not be read: not protected either.
    Unreadable,
}

impl LinkLayer {
    /// Classifies a device by its type (`ARPHRD_*`), flags and kind (the driver's link type,
    /// as `ip -d link` shows it). Only the drivers whose receive path is known to hand XDP the
    /// packet at the IP header are [`LinkLayer::Ip`]: they reset the MAC header to the network
    /// header after decapsulation (tun, wireguard, ppp, and since Linux 5.14 ipip, sit,
    /// ip6tnl and GRE without header operations). The type alone is not enough: an xfrm
    /// interface is `ARPHRD_NONE` like tun, but xfrm's decapsulation moves the outer MAC
    /// header in front of the inner packet (`skb_mac_header_rebuild`). Every other device is
    /// [`LinkLayer::Unsupported`], so an interface is never reported protected on a guess.
    pub fn classify(arphrd: u16, flags: u32, kind: &str) -> Self {
        const POINTOPOINT: u32 = libc::IFF_POINTOPOINT as u32;
        const BROADCAST: u32 = libc::IFF_BROADCAST as u32;
        match (arphrd, kind) {
            // Loopback frames carry a (zeroed) Ethernet header.
            (libc::ARPHRD_ETHER | libc::ARPHRD_LOOPBACK, _) => LinkLayer::Ethernet,
            (libc::ARPHRD_NONE, "tun" | "wireguard")
            | (libc::ARPHRD_PPP, "ppp")
            | (libc::ARPHRD_TUNNEL, "ipip")
            | (libc::ARPHRD_TUNNEL6, "ip6tnl")
            | (libc::ARPHRD_SIT, "sit") => LinkLayer::Ip,
            // A GRE device without a fixed remote (NBMA) or with a multicast one has header
            // operations, and its receive path leaves the outer IP and GRE headers in front of
            // the packet: only point-to-point GRE starts at the inner IP header.
            (libc::ARPHRD_IPGRE, "gre") | (ARPHRD_IP6GRE, "ip6gre")
                if flags & POINTOPOINT != 0 && flags & BROADCAST == 0 =>
            {
                LinkLayer::Ip
            }
            (other, _) => LinkLayer::Unsupported(other),
        }
    }

    /// For status and logs.
    pub fn describe(self) -> String {
        match self {
            LinkLayer::Ethernet => "ethernet".into(),
            LinkLayer::Ip => "none (IP)".into(),
            LinkLayer::Unsupported(t) => format!("unsupported (device type {t})"),
            LinkLayer::Unreadable => "unknown (its device type could not be read)".into(),
        }
    }
}

/// Device types (if_arp.h) the libc crate does not name.
const ARPHRD_IP6GRE: u16 = 823;

/// Every interface of the calling thread's network namespace, by name.
pub fn current() -> anyhow::Result<BTreeMap<String, IfInfo>> {
    use nix::net::if_::InterfaceFlags;
    let mut out = BTreeMap::new();
    for i in nix::ifaddrs::getifaddrs().context("listing interfaces")? {
        if out.contains_key(&i.interface_name) {
            continue;
        }
        let Ok(index) = nix::net::if_::if_nametoindex(i.interface_name.as_str()) else {
            continue;
        };
        // An interface whose type cannot be read is one the firewall cannot vouch for.
        let link = match rtnetlink::link_info(index) {
            Ok(l) => LinkLayer::classify(l.arphrd, l.flags, &l.kind),
            Err(_) => LinkLayer::Unreadable,
        };
        out.insert(
            i.interface_name.clone(),
            IfInfo {
                name: i.interface_name,
                index,
                up: i.flags.contains(InterfaceFlags::IFF_UP),
                loopback: i.flags.contains(InterfaceFlags::IFF_LOOPBACK),
                link,
            },
        );
    }
    Ok(out)
}

/// What the `interfaces` setting asks for, among the interfaces there are.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Interfaces to protect.
    pub attach: Vec<IfInfo>,
    /// Configured names that do not exist (yet).
    pub missing: Vec<String>,
    /// Interfaces the setting covers whose frames the firewall cannot parse
    /// ([`LinkLayer::Unsupported`]): not attached, and reported as not protected.
    pub unsupported: Vec<IfInfo>,
}

/// The interfaces to protect among `all`. `auto` means every interface but loopback, up or
/// not: attaching before an interface comes up leaves no moment in which it passes traffic
/// unfiltered.
pub fn wanted(config: &Interfaces, all: &BTreeMap<String, IfInfo>) -> Wanted {
    let mut out = Wanted::default();
    let mut take = |i: &IfInfo| match i.link {
        LinkLayer::Ethernet | LinkLayer::Ip => out.attach.push(i.clone()),
        LinkLayer::Unsupported(_) | LinkLayer::Unreadable => out.unsupported.push(i.clone()),
    };
    match config {
        Interfaces::Auto => all.values().filter(|i| !i.loopback).for_each(&mut take),
        Interfaces::List(names) => {
            let mut missing = Vec::new();
            for n in names {
                match all.get(n) {
                    Some(i) => take(i),
                    None => missing.push(n.clone()),
                }
            }
            out.missing = missing;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const P2P: u32 = (libc::IFF_POINTOPOINT | libc::IFF_NOARP) as u32;

    #[test]
    fn link_layers_by_device_type_and_kind() {
        use LinkLayer::*;
        let broadcast = P2P | libc::IFF_BROADCAST as u32;
        let noarp = libc::IFF_NOARP as u32;
        let cases: &[(u16, u32, &str, LinkLayer)] = &[
            (libc::ARPHRD_ETHER, 0, "", Ethernet),
            (libc::ARPHRD_ETHER, 0, "veth", Ethernet),
            // tap
            (libc::ARPHRD_ETHER, 0, "tun", Ethernet),
            (libc::ARPHRD_LOOPBACK, 0, "", Ethernet),
            (libc::ARPHRD_NONE, P2P, "tun", Ip),
            (libc::ARPHRD_NONE, P2P, "wireguard", Ip),
            (libc::ARPHRD_PPP, P2P, "ppp", Ip),
            (libc::ARPHRD_TUNNEL, P2P, "ipip", Ip),
            (libc::ARPHRD_TUNNEL6, P2P, "ip6tnl", Ip),
            (libc::ARPHRD_SIT, P2P, "sit", Ip),
            (libc::ARPHRD_IPGRE, P2P, "gre", Ip),
            (ARPHRD_IP6GRE, P2P, "ip6gre", Ip),
            // GRE with header operations: NBMA, multicast
            (
                libc::ARPHRD_IPGRE,
                noarp,
                "gre",
                Unsupported(libc::ARPHRD_IPGRE),
            ),
            (
                libc::ARPHRD_IPGRE,
                broadcast,
                "gre",
                Unsupported(libc::ARPHRD_IPGRE),
            ),
            (ARPHRD_IP6GRE, noarp, "ip6gre", Unsupported(ARPHRD_IP6GRE)),
            // The type alone does not decide: xfrm interfaces keep an Ethernet header, vti
            // goes through xfrm, a tun device given another type with TUNSETLINK.
            (
                libc::ARPHRD_NONE,
                P2P,
                "xfrm",
                Unsupported(libc::ARPHRD_NONE),
            ),
            (libc::ARPHRD_NONE, P2P, "", Unsupported(libc::ARPHRD_NONE)),
            (
                libc::ARPHRD_TUNNEL,
                P2P,
                "vti",
                Unsupported(libc::ARPHRD_TUNNEL),
            ),
            (libc::ARPHRD_IEEE80211_RADIOTAP, 0, "tun", Unsupported(803)),
            // headers the parser does not know
            (
                libc::ARPHRD_INFINIBAND,
                0,
                "",
                Unsupported(libc::ARPHRD_INFINIBAND),
            ),
            (519, 0, "", Unsupported(519)),
            (824, 0, "nlmon", Unsupported(824)),
            (libc::ARPHRD_CAN, 0, "vcan", Unsupported(libc::ARPHRD_CAN)),
            (libc::ARPHRD_VOID, 0, "", Unsupported(libc::ARPHRD_VOID)),
        ];
        for &(t, flags, kind, want) in cases {
            assert_eq!(
                LinkLayer::classify(t, flags, kind),
                want,
                "type {t} flags {flags:#x} kind {kind:?}"
            );
        }
    }

    fn iface(name: &str, link: LinkLayer) -> IfInfo {
        IfInfo {
            name: name.into(),
            index: 1,
            up: true,
            loopback: name == "lo",
            link,
        }
    }

    #[test]
    fn unsupported_interfaces_are_never_attached() {
        let all: BTreeMap<String, IfInfo> = [
            iface("lo", LinkLayer::Ethernet),
            iface("eth0", LinkLayer::Ethernet),
            iface("tun0", LinkLayer::Ip),
            iface("ib0", LinkLayer::Unsupported(libc::ARPHRD_INFINIBAND)),
            iface("odd0", LinkLayer::Unreadable),
        ]
        .into_iter()
        .map(|i| (i.name.clone(), i))
        .collect();
        let names = |v: &[IfInfo]| v.iter().map(|i| i.name.clone()).collect::<Vec<_>>();

        let auto = wanted(&Interfaces::Auto, &all);
        assert_eq!(names(&auto.attach), ["eth0", "tun0"]);
        assert_eq!(names(&auto.unsupported), ["ib0", "odd0"]);
        assert!(auto.missing.is_empty());

        let list = Interfaces::List(vec!["tun0".into(), "ib0".into(), "gone0".into()]);
        let named = wanted(&list, &all);
        assert_eq!(names(&named.attach), ["tun0"]);
        assert_eq!(names(&named.unsupported), ["ib0"]);
        assert_eq!(named.missing, ["gone0"]);
    }
}
