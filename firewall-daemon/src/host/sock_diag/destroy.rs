//! Closing one of the host's TCP sockets with SOCK_DESTROY, as `ss -K` does, when the rules end
//! a connection the host terminates.
//!
//! Why the lookup is careful: the kernel's lookup by tuple falls back to a listener on the
//! local address, misses sockets bound to an interface, and a connection may end between the
//! lookup and the destroy; [`destroy_tcp`] checks every answer and names the socket found by
//! the kernel's own family, addresses, interface and cookie.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use anyhow::{Context as _, bail};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP,
    inet::{InetResponseHeader, SocketId, StateFlags},
};

use super::{Diag, SockProto, TCP_LISTEN, any_socket, describe, normalize};

/// Closes the host's TCP socket of the connection `local` ↔ `remote` (`local` being the
/// host's end) like `ss -K` does: SOCK_DESTROY through NETLINK_SOCK_DIAG, in the network
/// namespace of the calling thread. The kernel aborts the socket: its application gets
/// ECONNABORTED, the peer a RST (if the connection was still synchronized). Any state but
/// LISTEN can be destroyed, TIME_WAIT and pending SYN_RECV ones included.
///
/// Returns `Ok(true)` if a socket was destroyed, `Ok(false)` if the host has no such socket
/// (a listening socket on `local` is never taken for it). Errors: EOPNOTSUPP if the kernel
/// lacks `CONFIG_INET_DIAG_DESTROY` (the message says so), EPERM without `CAP_NET_ADMIN`.
///
/// IPv4-mapped addresses are accepted for IPv4; an IPv4 connection is found whether its socket
/// is AF_INET or a dual-stack AF_INET6 one. The socket is first looked up by its exact tuple
/// (in an IPv6 link-local tuple, the scope names the interface); only if that finds nothing is
/// a dump of the connections with those ports searched, which also finds sockets bound to an
/// interface (`SO_BINDTODEVICE`, VRFs) that the exact lookup misses; should several sockets in
/// different interfaces' scopes share the tuple, all are destroyed. The destroy request names
/// the socket found with the kernel's own family, addresses, interface and cookie, so a
/// connection that ends meanwhile makes it fail as "no such socket" rather than hitting
/// another socket.
pub fn destroy_tcp(local: SocketAddr, remote: SocketAddr) -> anyhow::Result<bool> {
    let local = unmap(local);
    let remote = unmap(remote);
    if local.is_ipv4() != remote.is_ipv4() {
        bail!("cannot destroy a TCP socket {local} <-> {remote}: the addresses' families differ");
    }
    let mut diag = Diag::open()?;
    let sockets = find_tcp(&mut diag, local, remote)
        .with_context(|| format!("looking up the TCP socket {local} <-> {remote}"))?;
    let mut destroyed = false;
    for socket in &sockets {
        destroyed |= diag
            .destroy(socket)
            .with_context(|| format!("destroying the TCP socket {local} <-> {remote}"))?;
    }
    Ok(destroyed)
}

/// The sockets of the TCP connection `local` ↔ `remote` (already unmapped), as the kernel
/// reports them: by exact lookup in the natural family, then in the other form for IPv4
/// (AF_INET6 with IPv4-mapped addresses), then by a dump.
fn find_tcp(
    diag: &mut Diag,
    local: SocketAddr,
    remote: SocketAddr,
) -> anyhow::Result<Vec<InetResponseHeader>> {
    let forms: &[u8] = if local.is_ipv4() {
        &[AF_INET, AF_INET6]
    } else {
        &[AF_INET6]
    };
    for &family in forms {
        if let Some(found) = find_exact(diag, family, local, remote)? {
            log::debug!(
                "found TCP socket {local} <-> {remote} by exact lookup in {}",
                describe(SockProto::Tcp, family)
            );
            return Ok(vec![found]);
        }
    }
    // Not found by its tuple alone: maybe bound to an interface. Dump the connections with
    // these ports (IPv4 ones may be dual-stack AF_INET6 sockets) and match the tuple here.
    let scope = scope_of(local, remote);
    let mut found = Vec::new();
    for &family in forms {
        let mut filter = any_socket(family);
        filter.source_port = local.port();
        filter.destination_port = remote.port();
        let responses = diag.dump(
            family,
            IPPROTO_TCP,
            StateFlags::all() - StateFlags::LISTEN,
            filter,
        )?;
        found.extend(
            responses
                .into_iter()
                .map(|r| r.header)
                .filter(|h| is_connection(h, local, remote))
                .filter(|h| scope == 0 || h.socket_id.interface_id == scope),
        );
    }
    if !found.is_empty() {
        log::debug!("found TCP socket {local} <-> {remote} by dump");
    }
    Ok(found)
}

/// The exact lookup of `local` ↔ `remote` in one family form, checked: `None` if the kernel
/// has no such socket or answered with something else (its lookup falls back to a listener on
/// `local`).
pub(super) fn find_exact(
    diag: &mut Diag,
    family: u8,
    local: SocketAddr,
    remote: SocketAddr,
) -> anyhow::Result<Option<InetResponseHeader>> {
    let found = diag.find_one(family, IPPROTO_TCP, exact_socket(family, local, remote))?;
    Ok(found
        .map(|r| r.header)
        .filter(|h| is_connection(h, local, remote)))
}

/// Whether the kernel's answer is the connection `local` ↔ `remote` (not a listener).
fn is_connection(h: &InetResponseHeader, local: SocketAddr, remote: SocketAddr) -> bool {
    let id = &h.socket_id;
    let same = |a: SocketAddr, b: SocketAddr| a.ip() == b.ip() && a.port() == b.port();
    h.state != TCP_LISTEN
        && same(normalize(id.source_address, id.source_port, 0), local)
        && same(
            normalize(id.destination_address, id.destination_port, 0),
            remote,
        )
}

/// The `inet_diag_sockid` naming one connection in `family` (IPv4 addresses are written
/// IPv4-mapped for AF_INET6), with cookie `INET_DIAG_NOCOOKIE` (any socket).
pub(super) fn exact_socket(family: u8, local: SocketAddr, remote: SocketAddr) -> SocketId {
    let in_family = |ip: IpAddr| match (family == AF_INET6, ip) {
        (true, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
        _ => ip,
    };
    SocketId {
        source_port: local.port(),
        destination_port: remote.port(),
        source_address: in_family(local.ip()),
        destination_address: in_family(remote.ip()),
        interface_id: scope_of(local, remote),
        cookie: INET_DIAG_NOCOOKIE,
    }
}

/// `INET_DIAG_NOCOOKIE`: a request naming a socket by addresses alone.
const INET_DIAG_NOCOOKIE: [u8; 8] = [0xff; 8];

/// The interface an IPv6 tuple is scoped to (its link-local ends' scope), 0 for none.
fn scope_of(local: SocketAddr, remote: SocketAddr) -> u32 {
    match (local, remote) {
        (SocketAddr::V6(l), _) if l.scope_id() != 0 => l.scope_id(),
        (_, SocketAddr::V6(r)) => r.scope_id(),
        _ => 0,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub(super) fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}
