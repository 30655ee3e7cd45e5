//! The host's own addresses, as the reject path needs them: each interface's MAC
//! ([`maps::IFACE_MAC`]) and every local IP address ([`maps::LOCAL_ADDRS`]). The XDP program
//! answers a `reject` only for a frame sent to the receiving interface's MAC and to one of
//! these addresses, and sends the reply from that MAC (see `firewall-ebpf/src/reply.rs`).
//!
//! Like the interfaces, the maps are reconciled rather than patched per message: on any link
//! or address notification the daemon reads the addresses as they are and makes the maps hold
//! exactly those. Until the first sync (or for an address the maps have no room for) rejects
//! degrade to silent drops, never to replies in another host's name.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use firewall_common::{IfaceMac, LocalAddrKey, addr, maps};

/// What the maps should hold: MAC by ifindex, and the local addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostAddrs {
    pub macs: BTreeMap<u32, [u8; 6]>,
    pub addrs: BTreeSet<IpAddr>,
}

/// The addresses of the calling thread's network namespace, now. Interfaces without a
/// link-layer address (loopback's is all zero, tun devices have none) get no MAC entry.
pub fn current() -> anyhow::Result<HostAddrs> {
    let mut out = HostAddrs::default();
    for i in nix::ifaddrs::getifaddrs().context("listing interface addresses")? {
        let Some(a) = i.address else { continue };
        if let Some(link) = a.as_link_addr() {
            if let (Some(mac), Ok(index)) = (link.addr(), u32::try_from(link.ifindex()))
                && mac != [0; 6]
            {
                out.macs.insert(index, mac);
            }
        } else if let Some(v4) = a.as_sockaddr_in() {
            out.addrs.insert(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = a.as_sockaddr_in6() {
            out.addrs.insert(IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}

fn key(ip: IpAddr) -> LocalAddrKey {
    LocalAddrKey {
        addr: addr::mapped(ip),
        family: addr::family(ip),
        _pad: [0; 3],
    }
}

fn open<K: aya::Pod, V: aya::Pod>(
    pin_dir: &Path,
    name: &str,
) -> anyhow::Result<HashMap<MapData, K, V>> {
    let map = crate::kernel::open_pinned(pin_dir, name)?;
    HashMap::try_from(map).with_context(|| format!("map {name} has an unexpected layout"))
}

/// The two pinned maps (they exist once a generation has been loaded).
pub struct HostMaps {
    macs: HashMap<MapData, u32, IfaceMac>,
    addrs: HashMap<MapData, LocalAddrKey, u32>,
}

impl HostMaps {
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            macs: open(pin_dir, maps::IFACE_MAC)?,
            addrs: open(pin_dir, maps::LOCAL_ADDRS)?,
        })
    }

    /// Makes the maps hold exactly `want`. Entries are added before stale ones are removed,
    /// so an address that stays is never missing in between. Returns the number of entries
    /// that could not be written (a full map: those addresses get no reject replies).
    pub fn set(&mut self, want: &HostAddrs) -> anyhow::Result<usize> {
        let mut failed = 0;
        for (index, mac) in &want.macs {
            let v = IfaceMac {
                mac: *mac,
                _pad: [0; 2],
            };
            // A failed read (absent, or an error) is rewritten; a failed write is counted.
            if self.macs.get(index, 0).ok() != Some(v) && self.macs.insert(index, &v, 0).is_err() {
                failed += 1;
            }
        }
        let keys: BTreeSet<LocalAddrKey> = want.addrs.iter().map(|ip| key(*ip)).collect();
        for k in &keys {
            if self.addrs.get(k, 0).is_err() && self.addrs.insert(k, &1, 0).is_err() {
                failed += 1;
            }
        }
        // A key the map cannot list is an error, not a key to skip: a stale address left in
        // LOCAL_ADDRS would have the host answer rejects in another host's name.
        let stale_macs: Vec<u32> = self
            .macs
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("listing {}", maps::IFACE_MAC))?
            .into_iter()
            .filter(|i| !want.macs.contains_key(i))
            .collect();
        for i in stale_macs {
            self.macs
                .remove(&i)
                .with_context(|| format!("removing the MAC of interface {i}"))?;
        }
        let stale_addrs: Vec<LocalAddrKey> = self
            .addrs
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("listing {}", maps::LOCAL_ADDRS))?
            .into_iter()
            .filter(|k| !keys.contains(k))
            .collect();
        for k in stale_addrs {
            self.addrs
                .remove(&k)
                .context("removing a former local address")?;
        }
        Ok(failed)
    }

    /// Reads the namespace's addresses and writes them ([`Self::set`]).
    pub fn sync(&mut self) -> anyhow::Result<usize> {
        self.set(&current()?)
    }
}
