//! Which interfaces the firewall protects, and notice of interfaces coming and going.
//!
//! The daemon reconciles instead of interpreting each netlink message: any link notification
//! (RTMGRP_LINK) wakes it, it lists the interfaces as they are now, attaches to the wanted
//! ones it does not protect yet and forgets those that are gone. Missed or coalesced
//! notifications therefore cannot leave it out of step.

use std::collections::BTreeMap;

use anyhow::Context as _;
use netlink_sys::{AsyncSocket as _, AsyncSocketExt as _, SocketAddr, TokioSocket, protocols};

use rules::model::Interfaces;

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

/// What rtnetlink says about an interface.
#[derive(Debug, PartialEq, Eq)]
struct LinkInfo {
    /// `ARPHRD_*`.
    arphrd: u16,
    /// `IFF_*`.
    flags: u32,
    /// `IFLA_INFO_KIND`: "tun", "wireguard", "ipip", ...; empty for drivers without one (such
    /// as physical NICs).
    kind: String,
}

const NLMSG_HDR_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
/// Attribute type bits without NLA_F_NESTED and NLA_F_NET_BYTEORDER.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// RTM_GETLINK for the interface `index` of the calling thread's network namespace. (sysfs
/// would show the namespace of whoever mounted /sys.)
fn link_info(index: u32) -> std::io::Result<LinkInfo> {
    let mut sock = netlink_sys::Socket::new(protocols::NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut req = Vec::with_capacity(NLMSG_HDR_LEN + IFINFOMSG_LEN);
    req.extend(((NLMSG_HDR_LEN + IFINFOMSG_LEN) as u32).to_ne_bytes());
    req.extend(libc::RTM_GETLINK.to_ne_bytes());
    req.extend((libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend(1u32.to_ne_bytes()); // sequence number
    req.extend(0u32.to_ne_bytes()); // port id: the kernel
    req.extend([libc::AF_UNSPEC as u8, 0]);
    req.extend(0u16.to_ne_bytes()); // type
    req.extend(index.to_ne_bytes());
    req.extend(0u32.to_ne_bytes()); // flags
    req.extend(0u32.to_ne_bytes()); // change mask
    sock.send(&req, 0)?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = sock.recv(&mut &mut buf[..], 0)?;
    parse_link_reply(&buf[..n.min(buf.len())])
}

/// The [`LinkInfo`] in an RTM_NEWLINK reply (or the error of an NLMSG_ERROR one).
fn parse_link_reply(msg: &[u8]) -> std::io::Result<LinkInfo> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed RTM_NEWLINK");
    let u16_at = |o: usize| msg.get(o..o + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        msg.get(o..o + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let len = u32_at(0).ok_or_else(bad)? as usize;
    let kind = u16_at(4).ok_or_else(bad)?;
    if kind == NLMSG_ERROR {
        let errno = u32_at(NLMSG_HDR_LEN).ok_or_else(bad)? as i32;
        return Err(std::io::Error::from_raw_os_error(-errno));
    }
    let body = NLMSG_HDR_LEN + IFINFOMSG_LEN;
    if kind != RTM_NEWLINK || len < body || len > msg.len() {
        return Err(bad());
    }
    let mut info = LinkInfo {
        arphrd: u16_at(NLMSG_HDR_LEN + 2).ok_or_else(bad)?,
        flags: u32_at(NLMSG_HDR_LEN + 8).ok_or_else(bad)?,
        kind: String::new(),
    };
    for (t, payload) in attributes(&msg[body..len]) {
        if t & NLA_TYPE_MASK != IFLA_LINKINFO {
            continue;
        }
        for (t, value) in attributes(payload) {
            if t & NLA_TYPE_MASK == IFLA_INFO_KIND {
                info.kind = String::from_utf8_lossy(value)
                    .trim_end_matches('\0')
                    .to_string();
            }
        }
    }
    Ok(info)
}

/// The (type, payload) of each netlink attribute in `buf`, up to the first malformed one.
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes([*buf.first()?, *buf.get(1)?]));
        let t = u16::from_ne_bytes([*buf.get(2)?, *buf.get(3)?]);
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((t, payload))
    })
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
        let link = match link_info(index) {
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

/// Link notifications (interfaces added, removed, changed) from the kernel.
pub struct LinkEvents {
    socket: TokioSocket,
}

/// rtnetlink multicast groups: links, and IPv4 and IPv6 addresses (the reject path needs
/// the host's addresses, `hostaddrs`).
const RTMGRP_LINK: u32 = 1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;

impl LinkEvents {
    pub fn subscribe() -> anyhow::Result<Self> {
        let mut socket =
            TokioSocket::new(protocols::NETLINK_ROUTE).context("opening an rtnetlink socket")?;
        socket
            .socket_mut()
            .bind(&SocketAddr::new(
                0,
                RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
            ))
            .context("subscribing to link and address notifications")?;
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

    /// An RTM_NEWLINK as the kernel sends it for a tun device (attributes before and after
    /// IFLA_LINKINFO, the nested flag set, the kind NUL-terminated), and an error reply.
    #[test]
    fn link_replies_parse() {
        fn attr(t: u16, payload: &[u8]) -> Vec<u8> {
            let mut a = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
            a.extend(t.to_ne_bytes());
            a.extend(payload);
            a.resize((a.len() + 3) & !3, 0);
            a
        }
        let mut attrs = attr(3, b"fwtun0\0"); // IFLA_IFNAME
        attrs.extend(attr(
            IFLA_LINKINFO | 0x8000,
            &attr(IFLA_INFO_KIND, b"tun\0"),
        ));
        attrs.extend(attr(4, &1500u32.to_ne_bytes())); // IFLA_MTU
        let mut msg = ((32 + attrs.len()) as u32).to_ne_bytes().to_vec();
        msg.extend(RTM_NEWLINK.to_ne_bytes());
        msg.extend([0u8; 10]);
        msg.extend([0, 0]);
        msg.extend(libc::ARPHRD_NONE.to_ne_bytes());
        msg.extend(7u32.to_ne_bytes());
        msg.extend(P2P.to_ne_bytes());
        msg.extend(0u32.to_ne_bytes());
        msg.extend(&attrs);
        assert_eq!(
            parse_link_reply(&msg).expect("parses"),
            LinkInfo {
                arphrd: libc::ARPHRD_NONE,
                flags: P2P,
                kind: "tun".into()
            }
        );
        assert!(parse_link_reply(&msg[..20]).is_err());

        let mut err = 36u32.to_ne_bytes().to_vec();
        err.extend(NLMSG_ERROR.to_ne_bytes());
        err.extend([0u8; 10]);
        err.extend((-libc::ENODEV).to_ne_bytes());
        err.extend([0u8; 16]);
        assert_eq!(
            parse_link_reply(&err).map_err(|e| e.raw_os_error()),
            Err(Some(libc::ENODEV))
        );
    }

    /// The query itself, on this namespace's loopback (no privileges needed).
    #[test]
    fn loopback_is_read_from_rtnetlink() {
        let lo = nix::net::if_::if_nametoindex("lo").expect("lo exists");
        let info = link_info(lo).expect("RTM_GETLINK");
        assert_eq!(info.arphrd, libc::ARPHRD_LOOPBACK);
        assert_eq!(
            LinkLayer::classify(info.arphrd, info.flags, &info.kind),
            LinkLayer::Ethernet
        );
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
