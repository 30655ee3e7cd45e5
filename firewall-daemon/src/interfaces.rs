//! Which interfaces the firewall protects, and notice of interfaces coming and going.
//!
//! The daemon reconciles instead of interpreting each netlink message: any link notification
//! (RTMGRP_LINK) wakes it, it lists the interfaces as they are now, attaches to the wanted
//! ones it does not protect yet and forgets those that are gone. Missed or coalesced
//! notifications therefore cannot leave it out of step.

use std::collections::BTreeMap;

use anyhow::Context as _;
use netlink_sys::{AsyncSocket as _, AsyncSocketExt as _, SocketAddr, TokioSocket, protocols};

use crate::model::Interfaces;

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
    /// Classifies a device by its type (`ARPHRD_*`, as `ip link` shows after `link/`) and
    /// flags. The Ethernet and IP lists hold the types whose receive path is known to hand
    /// XDP the packet at that header; every other type is [`LinkLayer::Unsupported`], so an
    /// interface is never reported protected on a guess.
    pub fn classify(arphrd: u16, flags: u32) -> Self {
        const POINTOPOINT: u32 = libc::IFF_POINTOPOINT as u32;
        const BROADCAST: u32 = libc::IFF_BROADCAST as u32;
        match arphrd {
            // Loopback frames carry a (zeroed) Ethernet header.
            libc::ARPHRD_ETHER | libc::ARPHRD_LOOPBACK => LinkLayer::Ethernet,
            // tun (and wireguard, xfrm interfaces), ppp, raw-IP modems, ipip/vti, ip6tnl/vti6,
            // sit: the receive path resets the MAC header to the IP header.
            libc::ARPHRD_NONE
            | libc::ARPHRD_PPP
            | ARPHRD_RAWIP
            | libc::ARPHRD_TUNNEL
            | libc::ARPHRD_TUNNEL6
            | libc::ARPHRD_SIT => LinkLayer::Ip,
            // A GRE device without a fixed remote (NBMA) or with a multicast one has header
            // operations, and its receive path leaves the outer IP and GRE headers in front of
            // the packet: only point-to-point GRE starts at the inner IP header.
            libc::ARPHRD_IPGRE | ARPHRD_IP6GRE
                if flags & POINTOPOINT != 0 && flags & BROADCAST == 0 =>
            {
                LinkLayer::Ip
            }
            other => LinkLayer::Unsupported(other),
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
const ARPHRD_RAWIP: u16 = 519;
const ARPHRD_IP6GRE: u16 = 823;

/// The device type (`ARPHRD_*`) of `name` in the calling thread's network namespace, as
/// SIOCGIFHWADDR reports it. (sysfs would show the namespace of whoever mounted /sys.)
fn device_type(name: &str) -> std::io::Result<u16> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= ifr.ifr_name.len() {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the name and writes `ifru_hwaddr` of the ifreq it is given.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the hwaddr member of the union.
    Ok(unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_family })
}

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
        let link = match device_type(&i.interface_name) {
            Ok(t) => LinkLayer::classify(t, i.flags.bits() as u32),
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

/// Link notifications (interfaces added, removed, changed) from the kernel.
pub struct LinkEvents {
    socket: TokioSocket,
}

/// rtnetlink multicast group of link notifications.
const RTMGRP_LINK: u32 = 1;

impl LinkEvents {
    pub fn subscribe() -> anyhow::Result<Self> {
        let mut socket =
            TokioSocket::new(protocols::NETLINK_ROUTE).context("opening an rtnetlink socket")?;
        socket
            .socket_mut()
            .bind(&SocketAddr::new(0, RTMGRP_LINK))
            .context("subscribing to link notifications")?;
        Ok(Self { socket })
    }

    /// Waits for the next batch of notifications. Their content does not matter: the caller
    /// looks at the interfaces as they are.
    pub async fn next(&mut self) -> anyhow::Result<()> {
        self.socket
            .recv_from_full()
            .await
            .context("reading link notifications")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P2P: u32 = (libc::IFF_POINTOPOINT | libc::IFF_NOARP) as u32;

    #[test]
    fn link_layers_by_device_type() {
        use LinkLayer::*;
        let cases: &[(u16, u32, LinkLayer)] = &[
            (libc::ARPHRD_ETHER, 0, Ethernet),
            (libc::ARPHRD_LOOPBACK, 0, Ethernet),
            // tun, wireguard
            (libc::ARPHRD_NONE, P2P, Ip),
            (libc::ARPHRD_PPP, P2P, Ip),
            (ARPHRD_RAWIP, 0, Ip),
            // ipip, ip6tnl, sit
            (libc::ARPHRD_TUNNEL, P2P, Ip),
            (libc::ARPHRD_TUNNEL6, P2P, Ip),
            (libc::ARPHRD_SIT, P2P, Ip),
            // GRE: point-to-point only
            (libc::ARPHRD_IPGRE, P2P, Ip),
            (ARPHRD_IP6GRE, P2P, Ip),
            (
                libc::ARPHRD_IPGRE,
                libc::IFF_NOARP as u32,
                Unsupported(libc::ARPHRD_IPGRE),
            ),
            (
                libc::ARPHRD_IPGRE,
                P2P | libc::IFF_BROADCAST as u32,
                Unsupported(libc::ARPHRD_IPGRE),
            ),
            // headers the parser does not know
            (
                libc::ARPHRD_INFINIBAND,
                0,
                Unsupported(libc::ARPHRD_INFINIBAND),
            ),
            (
                libc::ARPHRD_IEEE80211_RADIOTAP,
                0,
                Unsupported(libc::ARPHRD_IEEE80211_RADIOTAP),
            ),
            // nlmon (ARPHRD_NETLINK)
            (824, 0, Unsupported(824)),
            (libc::ARPHRD_CAN, 0, Unsupported(libc::ARPHRD_CAN)),
            (libc::ARPHRD_VOID, 0, Unsupported(libc::ARPHRD_VOID)),
        ];
        for &(t, flags, want) in cases {
            assert_eq!(
                LinkLayer::classify(t, flags),
                want,
                "type {t} flags {flags:#x}"
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
