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
        out.insert(
            i.interface_name.clone(),
            IfInfo {
                name: i.interface_name,
                index,
                up: i.flags.contains(InterfaceFlags::IFF_UP),
                loopback: i.flags.contains(InterfaceFlags::IFF_LOOPBACK),
            },
        );
    }
    Ok(out)
}

/// The interfaces to protect among `all`, and the configured names that do not exist (yet).
/// `auto` means every interface but loopback, up or not: attaching before an interface comes
/// up leaves no moment in which it passes traffic unfiltered.
pub fn wanted(config: &Interfaces, all: &BTreeMap<String, IfInfo>) -> (Vec<IfInfo>, Vec<String>) {
    match config {
        Interfaces::Auto => (
            all.values().filter(|i| !i.loopback).cloned().collect(),
            Vec::new(),
        ),
        Interfaces::List(names) => {
            let mut found = Vec::new();
            let mut missing = Vec::new();
            for n in names {
                match all.get(n) {
                    Some(i) => found.push(i.clone()),
                    None => missing.push(n.clone()),
                }
            }
            (found, missing)
        }
    }
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
