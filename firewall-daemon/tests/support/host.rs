//! The reject path's view of "this host" for BPF_PROG_TEST_RUN: the kernel runs test frames
//! as received on loopback, so loopback's entry in `IFACE_MAC` stands for the receiving
//! interface, and the test names the addresses that count as the host's own.

use std::{net::IpAddr, path::Path};

use firewall_daemon::host::addrs::{HostAddrs, HostMaps};

use super::frames::{self, LOCAL_MAC};

/// Ifindex of loopback in the test's network namespace: BPF_PROG_TEST_RUN's `ingress_ifindex`.
pub fn loopback_index() -> u32 {
    nix::net::if_::if_nametoindex("lo").expect("loopback's ifindex")
}

/// What the reject path takes for this host, kept in sync with the pinned maps.
pub struct Host {
    maps: HostMaps,
    want: HostAddrs,
}

impl Host {
    /// Loopback with [`LOCAL_MAC`] (the destination MAC of the test frames), no address yet.
    pub fn open(pin_dir: &Path) -> Self {
        let mut host = Self {
            maps: HostMaps::open(pin_dir).expect("opening IFACE_MAC and LOCAL_ADDRS"),
            want: HostAddrs::default(),
        };
        host.set_mac(LOCAL_MAC);
        host
    }

    pub fn set_mac(&mut self, mac: [u8; 6]) {
        self.want.macs.insert(loopback_index(), mac);
        self.write();
    }

    /// No interface has a MAC recorded (as before the daemon's first sync).
    pub fn forget_macs(&mut self) {
        self.want.macs.clear();
        self.write();
    }

    pub fn add(&mut self, ip: IpAddr) {
        if self.want.addrs.insert(ip) {
            self.write();
        }
    }

    /// Makes exactly `addrs` the host's addresses.
    pub fn set_addrs(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        self.want.addrs = addrs.into_iter().collect();
        self.write();
    }

    /// Makes the destination address of `frame` (if it is IP) one of the host's.
    pub fn claim(&mut self, frame: &[u8]) {
        if let Some(ip) = destination(frame) {
            self.add(ip);
        }
    }

    fn write(&mut self) {
        let failed = self
            .maps
            .set(&self.want)
            .expect("writing the host's addresses");
        assert_eq!(failed, 0, "host address maps full");
    }
}

/// The destination IP of an Ethernet frame, if it carries IPv4 or IPv6 far enough (malformed
/// and truncated frames included: they yield `None`).
pub fn destination(frame: &[u8]) -> Option<IpAddr> {
    let mut off = 12;
    let ether_type = loop {
        let et = u16::from_be_bytes(frame.get(off..off + 2)?.try_into().ok()?);
        if et == frames::ETH_P_8021Q || et == frames::ETH_P_8021AD {
            off += 4;
        } else {
            break et;
        }
    };
    let ip = frame.get(off + 2..)?;
    match ether_type {
        frames::ETH_P_IP => {
            let a: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            Some(IpAddr::from(a))
        }
        frames::ETH_P_IPV6 => {
            let a: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            Some(IpAddr::from(a))
        }
        _ => None,
    }
}
