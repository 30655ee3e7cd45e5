//! Socket owners: who connected (or first sent from) each socket the outbound hooks allowed,
//! by socket cookie, so the egress program can name the owner of the flow the socket's first
//! packet creates ([`crate::ct::ConnOwner`]). The hooks run in the caller's process context and
//! can read its identity; the egress program cannot. The kernel side is
//! `firewall-ebpf/src/owners.rs`.

/// Capacity of [`crate::maps::SOCK_OWNER`]. An entry is needed only between a socket's connect()
/// (or first sendmsg()) and its first packet, or again when its flow has expired and a later
/// packet starts a new one; the least recently used socket is forgotten first.
pub const SOCK_OWNER_ENTRIES: u32 = 65536;
