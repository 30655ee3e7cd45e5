//! The host's sockets that wait for traffic from anyone. [`tcp_listeners`] lists the listening
//! TCP sockets' addresses, which tell the seeded connections the host accepted from those it
//! opened; [`bound_inet_sockets`] lists listening TCP and bound UDP sockets with their uid,
//! inode and cookie, from which the owners of ports bound before the daemon started are
//! reconstructed (`host::listeners`).

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr},
};

use anyhow::Context as _;
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP,
    inet::{StateFlags, nlas::Nla},
};

use super::{Diag, SockProto, TCP_LISTEN, any_socket, describe, normalize};

/// The local address of every listening TCP socket, IPv4 and IPv6, in the network namespace
/// of the calling thread: what tells a connection the host *accepted* (the remote side opened
/// it) from one the host opened, by whether a listener covers the connection's local end.
///
/// Each listener appears with the address it is bound to: a wildcard stays `0.0.0.0` / `::`,
/// an IPv4-mapped address (`::ffff:a.b.c.d`) becomes [`SocketAddr::V4`], an IPv6 link-local
/// one carries its interface as scope. In addition, a *dual-stack* `[::]:port` listener (one
/// without `IPV6_V6ONLY`, which the kernel reports as `INET_DIAG_SKV6ONLY`) is listed a second
/// time as `0.0.0.0:port`, since it accepts IPv4 connections to any address too; a v6-only
/// `[::]` listener is not. So a connection `local` was accepted if the list holds
/// `local` itself or the unspecified address of `local`'s family with `local`'s port — no
/// need to look at `[::]` for IPv4. (The kernel reports `INET_DIAG_SKV6ONLY` with every IPv6
/// listener at no cost; should an old kernel not, a `[::]` listener is taken as dual-stack, the
/// default of `net.ipv6.bindv6only = 0`.)
///
/// Duplicates (several `SO_REUSEPORT` listeners on one address) are removed; the order is
/// otherwise the kernel's. Listeners bound to an interface (`SO_BINDTODEVICE`) are listed like
/// the others, without their interface.
pub fn tcp_listeners() -> anyhow::Result<Vec<SocketAddr>> {
    let mut diag = Diag::open()?;
    let mut listeners = Vec::new();
    for family in [AF_INET, AF_INET6] {
        let what = describe(SockProto::Tcp, family);
        let responses = diag
            .dump(family, IPPROTO_TCP, StateFlags::LISTEN, any_socket(family))
            .with_context(|| {
                format!("listing {what} listening sockets through NETLINK_SOCK_DIAG")
            })?;
        for response in responses.iter().filter(|r| r.header.state == TCP_LISTEN) {
            let id = &response.header.socket_id;
            let local = normalize(id.source_address, id.source_port, id.interface_id);
            listeners.push(local);
            let v6_only = response
                .nlas
                .iter()
                .any(|nla| matches!(nla, Nla::SkV6Only(true)));
            if local.is_ipv6() && local.ip().is_unspecified() && !v6_only {
                listeners.push(SocketAddr::from((Ipv4Addr::UNSPECIFIED, local.port())));
            }
        }
    }
    let mut seen = HashSet::with_capacity(listeners.len());
    listeners.retain(|l| seen.insert(*l));
    Ok(listeners)
}

/// A bound socket that waits for traffic from anyone: a listening TCP socket or an unconnected
/// UDP socket with a local port, as [`bound_inet_sockets`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BoundSocket {
    pub proto: SockProto,
    /// Whether the socket is an AF_INET6 one (dual-stack or not); otherwise AF_INET.
    pub ipv6: bool,
    /// The bound address as the kernel reports it (a wildcard stays `0.0.0.0` / `::`; an
    /// IPv4-mapped address is *not* normalized, so that `ipv6` and `local` agree).
    pub local: SocketAddr,
    /// The socket's owner uid (`sk_uid`: the creating task's fsuid), in the caller's user
    /// namespace.
    pub uid: u32,
    /// The socket's inode number (`socket:[INODE]` in `/proc/PID/fd`); 0 if it has no file.
    pub inode: u32,
    /// The socket cookie (`SO_COOKIE`, `bpf_get_socket_cookie`).
    pub cookie: u64,
}

/// Every listening TCP socket and every bound, unconnected UDP socket (local port not 0,
/// remote port 0), IPv4 and IPv6, in the network namespace of the calling thread, with the
/// uid, inode and cookie inet_diag reports for them.
///
/// Duplicates (a socket seen twice because it moved during a dump) are removed; the order is
/// otherwise the kernel's.
pub fn bound_inet_sockets() -> anyhow::Result<Vec<BoundSocket>> {
    let mut diag = Diag::open()?;
    let mut sockets = Vec::new();
    for (proto, protocol) in [(SockProto::Tcp, IPPROTO_TCP), (SockProto::Udp, IPPROTO_UDP)] {
        for family in [AF_INET, AF_INET6] {
            let states = match proto {
                SockProto::Tcp => StateFlags::LISTEN,
                // Unconnected UDP sockets are in TCP_CLOSE, connected ones in
                // TCP_ESTABLISHED; which they are is read from the peer's port below.
                SockProto::Udp => StateFlags::all(),
            };
            let what = describe(proto, family);
            let responses = diag
                .dump(family, protocol, states, any_socket(family))
                .with_context(|| {
                    format!("listing {what} bound sockets through NETLINK_SOCK_DIAG")
                })?;
            for response in &responses {
                let h = &response.header;
                let id = &h.socket_id;
                let bound = match proto {
                    SockProto::Tcp => h.state == TCP_LISTEN,
                    SockProto::Udp => id.source_port != 0 && id.destination_port == 0,
                };
                if !bound {
                    continue;
                }
                sockets.push(BoundSocket {
                    proto,
                    ipv6: h.family == AF_INET6,
                    local: SocketAddr::new(id.source_address, id.source_port),
                    uid: h.uid,
                    inode: h.inode,
                    cookie: cookie_of(&id.cookie),
                });
            }
        }
    }
    let mut seen = HashSet::with_capacity(sockets.len());
    sockets.retain(|s| seen.insert((s.proto, s.cookie)));
    Ok(sockets)
}

/// The socket cookie of an `inet_diag_sockid`: two `__u32` in host byte order, low half
/// first (`sock_diag_save_cookie`).
fn cookie_of(raw: &[u8; 8]) -> u64 {
    let half = |b: &[u8]| u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    half(&raw[..4]) | half(&raw[4..]) << 32
}
