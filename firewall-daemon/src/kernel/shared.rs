//! The daemon's own handles on pinned shared maps: the sockets an outbound `stealth` holds
//! and the listener table.
//!
//! These maps are written by the kernel programs and read, seeded or trimmed by the daemon
//! while generations come and go, so they are opened from their pins rather than from a
//! generation. A failed read or removal is logged, never taken for an empty map: an entry
//! that vanished meanwhile (the kernel's hooks and LRUs remove entries too) is not a failure.

use std::path::Path;

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, MapError};
use firewall_common::{
    OutStealthKey,
    ct::ConnOwner,
    identity::{Listener, ListenerKey},
    maps,
};
use log::warn;

use super::pins::open_pinned;

/// What a walk over the map `name` (its keys, or its entries) yielded. An entry removed while
/// the walk ran is skipped; any other error is logged and skipped.
fn reported<T>(name: &str, iter: impl Iterator<Item = Result<T, MapError>>) -> Vec<T> {
    let mut out = Vec::new();
    for item in iter {
        match item {
            Ok(item) => out.push(item),
            Err(MapError::KeyNotFound) => {}
            Err(e) => warn!("{name}: reading the map: {e}"),
        }
    }
    out
}

/// Logs a failed removal from the map `name`, unless the entry was already gone.
fn removed(name: &str, result: Result<(), MapError>) {
    match result {
        Ok(()) => {}
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
        Err(MapError::KeyNotFound) => {}
        Err(e) => warn!("{name}: removing an entry: {e}"),
    }
}

/// The sockets held by an outbound `stealth` ([`maps::OUT_STEALTH`]), opened from its pin, with
/// who made them ([`maps::SOCK_OWNER`]) and whether the egress program looks
/// ([`maps::OUT_HOLDING`]).
pub struct StealthTable {
    map: HashMap<MapData, OutStealthKey, u32>,
    owners: HashMap<MapData, u64, ConnOwner>,
    holding: Array<MapData, u32>,
}

impl StealthTable {
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            map: HashMap::try_from(open_pinned(pin_dir, maps::OUT_STEALTH)?)
                .context("OUT_STEALTH has an unexpected layout")?,
            owners: HashMap::try_from(open_pinned(pin_dir, maps::SOCK_OWNER)?)
                .context("SOCK_OWNER has an unexpected layout")?,
            holding: Array::try_from(open_pinned(pin_dir, maps::OUT_HOLDING)?)
                .context("OUT_HOLDING has an unexpected layout")?,
        })
    }

    /// Every held (socket, destination) and the verdict word that holds it.
    pub fn entries(&self) -> Vec<(OutStealthKey, u32)> {
        reported(maps::OUT_STEALTH, self.map.iter())
    }

    /// Who made the socket `cookie` (`None`: not recorded, or forgotten: `SOCK_OWNER` is an
    /// LRU, and the daemon then keeps the socket held where the rules ask who it is).
    pub fn owner(&self, cookie: u64) -> Option<ConnOwner> {
        match self.owners.get(&cookie, 0) {
            Ok(owner) => Some(owner).filter(ConnOwner::is_known),
            Err(MapError::KeyNotFound) => None,
            Err(e) => {
                warn!(
                    "{}: reading the owner of socket {cookie}: {e}",
                    maps::SOCK_OWNER
                );
                None
            }
        }
    }

    /// Releases a socket: its packets to that destination leave again.
    pub fn release(&mut self, key: &OutStealthKey) {
        removed(maps::OUT_STEALTH, self.map.remove(key));
    }

    /// Makes the egress program look packets up in the table (`on`), or not. Off only when
    /// nothing is held and no hook in force can hold ([`Self::follow`]).
    fn set_holding(&mut self, on: bool) -> anyhow::Result<()> {
        self.holding
            .set(0, &u32::from(on), 0)
            .context("writing OUT_HOLDING")
    }

    /// Before hooks that can say `stealth` (`can_stealth`) run: the egress program looks.
    pub fn before_hooks(&mut self, can_stealth: bool) -> anyhow::Result<()> {
        if can_stealth {
            self.set_holding(true)?;
        }
        Ok(())
    }

    /// Once the hooks in force are those of rules that can (`can_stealth`) or cannot say
    /// `stealth`: the egress program stops looking only when they cannot and nothing is held
    /// any more (a socket held by earlier rules and still held stays dropped).
    pub fn follow(&mut self, can_stealth: bool) -> anyhow::Result<()> {
        let on = can_stealth || !self.entries().is_empty();
        self.set_holding(on)
    }
}

/// The listener table ([`maps::LISTENERS`]), opened from its pin.
pub struct ListenerTable {
    map: HashMap<MapData, ListenerKey, Listener>,
    owners: HashMap<MapData, u64, ListenerKey>,
}

impl ListenerTable {
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            map: HashMap::try_from(open_pinned(pin_dir, maps::LISTENERS)?)
                .context("LISTENERS has an unexpected layout")?,
            owners: HashMap::try_from(open_pinned(pin_dir, maps::LISTENER_OF)?)
                .context("LISTENER_OF has an unexpected layout")?,
        })
    }

    /// Forgets every entry (a fresh start: sockets may have closed while no hook ran).
    pub fn clear(&mut self) {
        let keys = reported(maps::LISTENERS, self.map.keys());
        for k in keys {
            removed(maps::LISTENERS, self.map.remove(&k));
        }
        let cookies = reported(maps::LISTENER_OF, self.owners.keys());
        for c in cookies {
            removed(maps::LISTENER_OF, self.owners.remove(&c));
        }
    }

    /// Every recorded socket.
    pub fn entries(&self) -> std::collections::HashMap<ListenerKey, Listener> {
        reported(maps::LISTENERS, self.map.iter())
            .into_iter()
            .collect()
    }

    /// Records a socket bound before the hooks ran, unless the hooks recorded that address and
    /// port since.
    pub fn seed(&mut self, key: ListenerKey, listener: Listener) -> anyhow::Result<bool> {
        if self.map.get(&key, 0).is_ok() {
            return Ok(false);
        }
        self.map
            .insert(&key, &listener, 0)
            .context("recording a listening socket")?;
        if listener.cookie != 0 {
            self.owners
                .insert(&listener.cookie, &key, 0)
                .context("recording a listening socket's cookie")?;
        }
        Ok(true)
    }
}
