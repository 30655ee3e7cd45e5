//! What the daemon asks rtnetlink directly: an interface's device type, flags and driver kind
//! ([`link_info`]), and notifications of links and addresses changing ([`LinkEvents`]).
//!
//! Why a hand-written RTM_GETLINK rather than sysfs: sysfs shows the network namespace of
//! whoever mounted /sys, netlink the calling thread's, which is the one the daemon protects.
//! The notifications' content is never read: they only wake the daemon, which then looks at
//! the interfaces and addresses as they are.

use anyhow::Context as _;
use netlink_sys::{AsyncSocket as _, AsyncSocketExt as _, SocketAddr, TokioSocket, protocols};

/// What rtnetlink says about an interface.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct LinkInfo {
    /// `ARPHRD_*`.
    pub(super) arphrd: u16,
    /// `IFF_*`.
    pub(super) flags: u32,
    /// `IFLA_INFO_KIND`: "tun", "wireguard", "ipip", ...; empty for drivers without one (such
    /// as physical NICs).
    pub(super) kind: String,
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
pub(super) fn link_info(index: u32) -> std::io::Result<LinkInfo> {
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

/// Link notifications (interfaces added, removed, changed) from the kernel.
pub struct LinkEvents {
    socket: TokioSocket,
}

/// rtnetlink multicast groups: links, and IPv4 and IPv6 addresses (the reject path needs
/// the host's addresses, `host::addrs`).
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
    use crate::host::interfaces::LinkLayer;

    const P2P: u32 = (libc::IFF_POINTOPOINT | libc::IFF_NOARP) as u32;

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
}
