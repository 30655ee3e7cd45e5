//! The host's existing connections, for seeding the connection table at start-up, its
//! listening TCP sockets, and closing one of its TCP sockets.
//!
//! When the daemon starts (or restarts) its BPF connection-tracking table is empty, so return
//! traffic of a connection opened before the firewall — the SSH session of whoever is starting it,
//! say — would meet a stateful "established only" rule with no entry and be dropped. The daemon
//! therefore seeds the table from the sockets that already exist: [`host_flows`] lists every TCP
//! socket that has a peer (all states but LISTEN and CLOSE, including TIME_WAIT and pending
//! SYN_RECV request sockets) and every *connected* UDP socket, IPv4 and IPv6.
//!
//! The list comes from NETLINK_SOCK_DIAG (`inet_diag`, what `ss` uses): one dump per family and
//! protocol, read in kernel-sized chunks. A dump is consistent per hash bucket, not as a whole: a
//! socket created or closed while it runs may or may not be listed (a seed can only ever be a
//! snapshot anyway; the datapath learns new connections from then on).
//!
//! [`tcp_listeners`] lists the listening TCP sockets' addresses, which tell the seeded
//! connections the host accepted from those it opened. [`destroy_tcp`] closes one TCP socket
//! with SOCK_DESTROY, as `ss -K` does, when the rules end a connection the host terminates.
//!
//! IPv4 traffic of dual-stack IPv6 sockets is reported by the kernel with IPv4-mapped addresses
//! (`::ffff:a.b.c.d`); those are normalized to [`SocketAddr::V4`], which is what the datapath
//! sees on the wire.
//!
//! Limits: a netlink socket answers for the network namespace it was created in, which is the
//! namespace of the *calling thread*. Sockets in other network namespaces (containers, `ip netns`)
//! are not seen, so the daemon must run in the namespace whose interfaces it protects. Only
//! sockets are listed: flows that are forwarded or NATed through the host, rather than terminated
//! on it, have no socket and are not seeded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use anyhow::{Context as _, anyhow, bail};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, SockDiagDestroy, SockDiagMessage,
    inet::{
        ExtensionFlags, InetRequest, InetResponse, InetResponseHeader, SocketId, StateFlags,
        nlas::Nla,
    },
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

/// Transport protocol of a [`HostFlow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SockProto {
    Tcp,
    Udp,
}

/// A TCP socket's state, with the kernel's `TCP_*` numbering (include/net/tcp_states.h).
///
/// `LISTEN` (10) is deliberately absent: listeners have no peer and are never listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Closing = 11,
}

impl TcpState {
    /// Maps a kernel `TCP_*` state number; `None` for LISTEN and for numbers this enum does not
    /// know (`TCP_NEW_SYN_RECV`, `TCP_BOUND_INACTIVE`, which inet_diag never reports as such).
    pub fn from_kernel(state: u8) -> Option<Self> {
        Some(match state {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            11 => Self::Closing,
            _ => return None,
        })
    }
}

/// One socket of the host that has a peer, seen from the host: `local` is the socket's own
/// address, `remote` its peer's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostFlow {
    pub proto: SockProto,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The TCP state; `None` for UDP.
    pub tcp_state: Option<TcpState>,
}

/// Every TCP socket with a peer (all states except LISTEN and CLOSE) and every *connected*
/// UDP socket (remote address not unspecified / port not 0), IPv4 and IPv6, in the network
/// namespace of the calling thread.
///
/// IPv4-mapped IPv6 addresses are normalized to [`SocketAddr::V4`] on both ends. Duplicates (a
/// socket seen twice because it moved during a dump) are removed; the order is otherwise the
/// kernel's.
pub fn host_flows() -> anyhow::Result<Vec<HostFlow>> {
    let mut diag = Diag::open()?;
    let tcp_states = StateFlags::all() - StateFlags::LISTEN - StateFlags::CLOSE;
    let mut flows = Vec::new();
    for (proto, protocol) in [(SockProto::Tcp, IPPROTO_TCP), (SockProto::Udp, IPPROTO_UDP)] {
        for family in [AF_INET, AF_INET6] {
            // UDP sockets have TCP-like states too (connected ones are ESTABLISHED), but whether
            // one has a peer is read from its address below, so ask for all of them.
            let states = match proto {
                SockProto::Tcp => tcp_states.clone(),
                SockProto::Udp => StateFlags::all(),
            };
            let what = describe(proto, family);
            let responses = diag
                .dump(family, protocol, states, any_socket(family))
                .with_context(|| format!("listing {what} sockets through NETLINK_SOCK_DIAG"))?;
            flows.extend(responses.iter().filter_map(|r| to_flow(proto, &r.header)));
        }
    }
    let mut seen = std::collections::HashSet::with_capacity(flows.len());
    flows.retain(|f| seen.insert(f.clone()));
    Ok(flows)
}

/// Turns one inet_diag answer into a flow, or `None` if the socket has no peer.
fn to_flow(proto: SockProto, h: &InetResponseHeader) -> Option<HostFlow> {
    let id = &h.socket_id;
    let tcp_state = match proto {
        SockProto::Tcp => Some(TcpState::from_kernel(h.state)?),
        SockProto::Udp => None,
    };
    if tcp_state == Some(TcpState::Close) {
        return None;
    }
    let local = normalize(id.source_address, id.source_port, id.interface_id);
    let remote = normalize(id.destination_address, id.destination_port, id.interface_id);
    if remote.port() == 0 || remote.ip().is_unspecified() {
        return None;
    }
    Some(HostFlow {
        proto,
        local,
        remote,
        tcp_state,
    })
}

/// An address as the wire carries it: IPv4-mapped IPv6 becomes IPv4; an IPv6 link-local
/// address gets the socket's bound interface as its scope.
fn normalize(ip: IpAddr, port: u16, interface_id: u32) -> SocketAddr {
    match ip {
        IpAddr::V4(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
            None => {
                let scope = if v6.is_unicast_link_local() {
                    interface_id
                } else {
                    0
                };
                SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope))
            }
        },
    }
}

/// The kernel's `TCP_LISTEN` state number.
const TCP_LISTEN: u8 = 10;

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
    let mut seen = std::collections::HashSet::with_capacity(listeners.len());
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
    let mut seen = std::collections::HashSet::with_capacity(sockets.len());
    sockets.retain(|s| seen.insert((s.proto, s.cookie)));
    Ok(sockets)
}

/// The socket cookie of an `inet_diag_sockid`: two `__u32` in host byte order, low half
/// first (`sock_diag_save_cookie`).
fn cookie_of(raw: &[u8; 8]) -> u64 {
    let half = |b: &[u8]| u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    half(&raw[..4]) | half(&raw[4..]) << 32
}

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
fn find_exact(
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
fn exact_socket(family: u8, local: SocketAddr, remote: SocketAddr) -> SocketId {
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

/// A request's socket id that names no socket (a dump's).
fn any_socket(family: u8) -> SocketId {
    if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    }
}

/// The interface an IPv6 tuple is scoped to (its link-local ends' scope), 0 for none.
fn scope_of(local: SocketAddr, remote: SocketAddr) -> u32 {
    match (local, remote) {
        (SocketAddr::V6(l), _) if l.scope_id() != 0 => l.scope_id(),
        (_, SocketAddr::V6(r)) => r.scope_id(),
        _ => 0,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

fn describe(proto: SockProto, family: u8) -> &'static str {
    match (proto, family == AF_INET6) {
        (SockProto::Tcp, false) => "TCP/IPv4",
        (SockProto::Tcp, true) => "TCP/IPv6",
        (SockProto::Udp, false) => "UDP/IPv4",
        (SockProto::Udp, true) => "UDP/IPv6",
    }
}

/// How often a dump the kernel flags as interrupted (`NLM_F_DUMP_INTR`) is started again.
const DUMP_ATTEMPTS: usize = 3;

/// What the kernel answered to one request.
struct Answer {
    /// The sockets it reported.
    responses: Vec<InetResponse>,
    /// Whether a dump was flagged as inconsistent (`NLM_F_DUMP_INTR`).
    interrupted: bool,
    /// The kernel's verdict: the error code of `NLMSG_DONE` or `NLMSG_ERROR`.
    status: std::io::Result<()>,
}

/// A NETLINK_SOCK_DIAG socket, bound to the creating thread's network namespace.
struct Diag {
    socket: Socket,
    sequence: u32,
}

impl Diag {
    fn open() -> anyhow::Result<Self> {
        let mut socket =
            Socket::new(NETLINK_SOCK_DIAG).context("creating a NETLINK_SOCK_DIAG socket")?;
        socket
            .bind_auto()
            .context("binding the NETLINK_SOCK_DIAG socket")?;
        socket
            .connect(&netlink_sys::SocketAddr::new(0, 0))
            .context("connecting the NETLINK_SOCK_DIAG socket to the kernel")?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// All sockets of one family and protocol in `states`, retrying interrupted dumps. The
    /// kernel skips sockets whose ports differ from non-zero ports of `socket_id`; its
    /// addresses are not used to filter.
    fn dump(
        &mut self,
        family: u8,
        protocol: u8,
        states: StateFlags,
        socket_id: SocketId,
    ) -> anyhow::Result<Vec<InetResponse>> {
        for _ in 0..DUMP_ATTEMPTS {
            let request = SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol,
                extensions: ExtensionFlags::empty(),
                states: states.clone(),
                socket_id: socket_id.clone(),
            });
            let sequence = self
                .send(NLM_F_REQUEST | NLM_F_DUMP, request)
                .context("sending the dump request")?;
            let answer = self.receive(sequence, true).context("receiving the dump")?;
            match answer.status {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    return Err(e).context(
                        "the kernel has no sock_diag handler for this protocol: \
                         load the inet_diag, tcp_diag and udp_diag modules",
                    );
                }
                other => other.context("the kernel failed the dump")?,
            }
            if !answer.interrupted {
                return Ok(answer.responses);
            }
            log::debug!("sock_diag dump was interrupted by a concurrent change; starting again");
        }
        bail!("the dump was interrupted by concurrent changes {DUMP_ATTEMPTS} times in a row")
    }

    /// The socket `socket_id` names exactly (SOCK_DIAG_BY_FAMILY without `NLM_F_DUMP`):
    /// `Ok(None)` if the kernel has none (ENOENT).
    ///
    /// Beware that the kernel's lookup (`inet_diag_find_one_icsk`) falls back to a *listening*
    /// socket on the local address and port when no connection matches, so the answer must be
    /// checked against what was asked.
    fn find_one(
        &mut self,
        family: u8,
        protocol: u8,
        socket_id: SocketId,
    ) -> anyhow::Result<Option<InetResponse>> {
        let request = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id,
        });
        let sequence = self
            .send(NLM_F_REQUEST | NLM_F_ACK, request)
            .context("sending the lookup request")?;
        let answer = self
            .receive(sequence, false)
            .context("receiving the lookup's answer")?;
        match answer.status {
            Ok(()) => Ok(answer.responses.into_iter().next()),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e).context("the kernel refused the lookup"),
        }
    }

    /// SOCK_DESTROY (message type 21) of the socket the kernel reported as `socket`, named by
    /// the kernel's own family, addresses, interface and cookie. `Ok(false)` if that socket no
    /// longer exists.
    fn destroy(&mut self, socket: &InetResponseHeader) -> anyhow::Result<bool> {
        let request = SockDiagDestroy::new(SockDiagMessage::InetRequest(InetRequest {
            family: socket.family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: socket.socket_id.clone(),
        }));
        let sequence = self
            .send(NLM_F_REQUEST | NLM_F_ACK, request)
            .context("sending the SOCK_DESTROY request")?;
        let answer = self
            .receive(sequence, false)
            .context("receiving the SOCK_DESTROY answer")?;
        match answer.status {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Err(e).context(
                "the kernel cannot destroy sockets (it was built without CONFIG_INET_DIAG_DESTROY)",
            ),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                Err(e).context("destroying a socket needs CAP_NET_ADMIN")
            }
            Err(e) => Err(e).context("the kernel refused SOCK_DESTROY"),
        }
    }

    /// Sends one request; returns its sequence number.
    fn send<M: NetlinkSerializable>(&mut self, flags: u16, payload: M) -> anyhow::Result<u32> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        // Sets the message type from the payload: SOCK_DIAG_BY_FAMILY, or SOCK_DESTROY for
        // a `SockDiagDestroy`.
        message.finalize();
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);
        let sent = self.socket.send(&buf, 0)?;
        if sent != buf.len() {
            bail!("sent {sent} of the request's {} bytes", buf.len());
        }
        Ok(self.sequence)
    }

    /// Reads the answers to request `sequence` until its end: `NLMSG_DONE` for a dump,
    /// `NLMSG_ERROR` (an acknowledgement or an error) otherwise.
    fn receive(&mut self, sequence: u32, dump: bool) -> anyhow::Result<Answer> {
        let mut responses = Vec::new();
        let mut interrupted = false;
        loop {
            // Peeks at the datagram's size first, so no chunk of the dump is ever truncated.
            let (datagram, _) = self.socket.recv_from_full()?;
            if datagram.is_empty() {
                bail!("the kernel closed the socket without ending its answer");
            }
            let mut rest = &datagram[..];
            while !rest.is_empty() {
                let message = NetlinkMessage::<SockDiagMessage>::deserialize(rest)
                    .map_err(|e| anyhow!(e))
                    .context("decoding a sock_diag message")?;
                let len = message.header.length as usize;
                if len < 16 || len > rest.len() {
                    bail!(
                        "sock_diag message claims {len} bytes with {} left in the datagram",
                        rest.len()
                    );
                }
                rest = &rest[((len + 3) & !3).min(rest.len())..];
                if message.header.sequence_number != sequence {
                    // A late answer to an earlier request; not ours.
                    continue;
                }
                interrupted |= message.header.flags & NLM_F_DUMP_INTR != 0;
                let status = match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        responses.push(*response);
                        continue;
                    }
                    NetlinkPayload::InnerMessage(other) => {
                        bail!("unexpected sock_diag message in an inet answer: {other:?}");
                    }
                    NetlinkPayload::Done(done) if done.code != 0 => {
                        Err(std::io::Error::from_raw_os_error(done.code.abs()))
                    }
                    NetlinkPayload::Done(_) => Ok(()),
                    // An acknowledgement; a dump ends with NLMSG_DONE.
                    NetlinkPayload::Error(error) if error.code.is_none() && dump => continue,
                    NetlinkPayload::Error(error) if error.code.is_none() => Ok(()),
                    NetlinkPayload::Error(error) => Err(error.to_io()),
                    NetlinkPayload::Noop => continue,
                    NetlinkPayload::Overrun(_) => bail!("the kernel reported an overrun"),
                    _ => bail!("unexpected netlink message in a sock_diag answer"),
                };
                return Ok(Answer {
                    responses,
                    interrupted,
                    status,
                });
            }
        }
    }
}

/// ENOENT: no such socket. The kernel answers it when nothing matches the addresses and also
/// when the cookie of the request is not the cookie of the socket found. ESTALE, which other
/// sock_diag paths answer for a stale cookie, is treated the same.
fn is_not_found(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESTALE))
}

#[cfg(test)]
mod tests {
    use std::{
        io::{ErrorKind, Read as _},
        net::{Ipv6Addr, TcpListener, TcpStream, UdpSocket},
        os::fd::OwnedFd,
        time::Duration,
    };

    use super::*;

    fn flows() -> Vec<HostFlow> {
        host_flows().expect("host_flows")
    }

    fn tcp(local: SocketAddr, remote: SocketAddr) -> HostFlow {
        HostFlow {
            proto: SockProto::Tcp,
            local,
            remote,
            tcp_state: Some(TcpState::Established),
        }
    }

    /// A listener, a client connected to it and the accepted server side, with both directions
    /// asserted as established and the listener asserted absent.
    fn assert_tcp_pair(listen_on: SocketAddr) {
        let listener = TcpListener::bind(listen_on).expect("bind listener");
        let server_addr = listener.local_addr().expect("listener address");
        let client = TcpStream::connect(server_addr).expect("connect");
        let (_accepted, client_addr) = listener.accept().expect("accept");
        assert_eq!(client.local_addr().expect("client address"), client_addr);

        let flows = flows();
        assert!(
            flows.contains(&tcp(client_addr, server_addr)),
            "client side {client_addr} -> {server_addr} missing from {flows:#?}"
        );
        assert!(
            flows.contains(&tcp(server_addr, client_addr)),
            "server side {server_addr} -> {client_addr} missing from {flows:#?}"
        );
        // The listener shares the server's local address; only the accepted socket may show.
        for f in flows.iter().filter(|f| f.local == server_addr) {
            assert_eq!(f.remote, client_addr, "unexpected flow {f:?}");
        }
    }

    #[test]
    fn tcp_v4_connection_both_directions() {
        assert_tcp_pair((Ipv4Addr::LOCALHOST, 0).into());
    }

    #[test]
    fn tcp_v6_connection_both_directions() {
        assert_tcp_pair((Ipv6Addr::LOCALHOST, 0).into());
    }

    #[test]
    fn udp_connected_listed_unconnected_not() {
        let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind peer");
        let peer_addr = peer.local_addr().expect("peer address");
        let connected = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind connected");
        connected.connect(peer_addr).expect("connect");
        let connected_addr = connected.local_addr().expect("connected address");
        let lone = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind unconnected");
        let lone_addr = lone.local_addr().expect("unconnected address");

        let flows = flows();
        let expected = HostFlow {
            proto: SockProto::Udp,
            local: connected_addr,
            remote: peer_addr,
            tcp_state: None,
        };
        assert!(
            flows.contains(&expected),
            "{expected:?} missing from {flows:#?}"
        );
        for addr in [peer_addr, lone_addr] {
            assert!(
                !flows.iter().any(|f| f.local == addr),
                "unconnected UDP socket {addr} listed in {flows:#?}"
            );
        }
    }

    #[test]
    fn udp_v6_connected_listed() {
        let peer = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind peer");
        let peer_addr = peer.local_addr().expect("peer address");
        let connected = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind connected");
        connected.connect(peer_addr).expect("connect");
        let connected_addr = connected.local_addr().expect("connected address");

        let flows = flows();
        let expected = HostFlow {
            proto: SockProto::Udp,
            local: connected_addr,
            remote: peer_addr,
            tcp_state: None,
        };
        assert!(
            flows.contains(&expected),
            "{expected:?} missing from {flows:#?}"
        );
        assert!(!flows.iter().any(|f| f.local == peer_addr));
    }

    /// A listener on [::] with IPV6_V6ONLY off, whatever net.ipv6.bindv6only says.
    fn dual_stack_listener() -> TcpListener {
        wildcard_v6_listener(false)
    }

    /// A listener on [::] with IPV6_V6ONLY set as asked.
    fn wildcard_v6_listener(v6_only: bool) -> TcpListener {
        use nix::sys::socket::{
            AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6, bind, listen, setsockopt,
            socket, sockopt::Ipv6V6Only,
        };
        let fd: OwnedFd = socket(
            AddressFamily::Inet6,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        setsockopt(&fd, Ipv6V6Only, &v6_only).expect("IPV6_V6ONLY");
        let any = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0));
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &any).expect("bind [::]:0");
        listen(&fd, Backlog::new(8).expect("backlog")).expect("listen");
        TcpListener::from(fd)
    }

    #[test]
    fn v4_through_dual_stack_socket_is_normalized() {
        let listener = dual_stack_listener();
        let port = listener.local_addr().expect("listener address").port();
        let server_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let client = TcpStream::connect(server_addr).expect("connect from 127.0.0.1");
        let (accepted, _) = listener.accept().expect("accept");
        let client_addr = client.local_addr().expect("client address");
        // The accepted socket is an AF_INET6 one with IPv4-mapped addresses.
        assert!(accepted.local_addr().expect("accepted address").is_ipv6());

        let flows = flows();
        assert!(
            flows.contains(&tcp(server_addr, client_addr)),
            "dual-stack server side {server_addr} -> {client_addr} missing from {flows:#?}"
        );
        assert!(flows.contains(&tcp(client_addr, server_addr)));
        assert!(
            flows.iter().all(
                |f| !matches!(f.local, SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some())
            ),
            "IPv4-mapped address left in {flows:#?}"
        );
    }

    /// Sockets follow the calling thread's network namespace: a thread in a fresh namespace sees
    /// none of this namespace's connections.
    #[test]
    fn reads_the_calling_threads_namespace() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind listener");
        let server_addr = listener.local_addr().expect("listener address");
        let _client = TcpStream::connect(server_addr).expect("connect");
        let _accepted = listener.accept().expect("accept");
        assert!(flows().iter().any(|f| f.local == server_addr));

        let other = std::thread::spawn(|| {
            match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                Ok(()) => Some(host_flows()),
                Err(nix::errno::Errno::EPERM) => None,
                Err(e) => panic!("unshare(CLONE_NEWNET): {e}"),
            }
        })
        .join()
        .expect("thread");
        match other {
            Some(result) => {
                let flows = result.expect("host_flows in a new namespace");
                assert!(
                    flows.is_empty(),
                    "a new namespace has no sockets: {flows:#?}"
                );
            }
            None => eprintln!("skipped: no permission to create a network namespace"),
        }
    }

    fn listeners() -> Vec<SocketAddr> {
        tcp_listeners().expect("tcp_listeners")
    }

    #[test]
    fn listeners_listed_with_wildcards_and_dual_stack() {
        let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1");
        let v4_addr = v4.local_addr().expect("address");
        let v6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind ::1");
        let v6_addr = v6.local_addr().expect("address");
        let dual = dual_stack_listener();
        let dual_addr = dual.local_addr().expect("address");
        let v6_only = wildcard_v6_listener(true);
        let v6_only_addr = v6_only.local_addr().expect("address");
        let client = TcpStream::connect(v4_addr).expect("connect");
        let client_addr = client.local_addr().expect("client address");
        let _accepted = v4.accept().expect("accept");

        let listeners = listeners();
        for addr in [v4_addr, v6_addr, dual_addr, v6_only_addr] {
            assert!(
                listeners.contains(&addr),
                "{addr} missing from {listeners:?}"
            );
        }
        let dual_v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, dual_addr.port()));
        assert!(
            listeners.contains(&dual_v4),
            "dual-stack [::] listener not also listed as {dual_v4}: {listeners:?}"
        );
        let v6_only_v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, v6_only_addr.port()));
        assert!(
            !listeners.contains(&v6_only_v4),
            "v6-only [::] listener listed as {v6_only_v4}: {listeners:?}"
        );
        // The client's socket is no listener; the accepted one shares the listener's address.
        assert!(
            !listeners.iter().any(|l| l.port() == client_addr.port()),
            "established socket {client_addr} listed in {listeners:?}"
        );
        assert_eq!(
            listeners.iter().filter(|l| **l == v4_addr).count(),
            1,
            "duplicates in {listeners:?}"
        );
    }

    /// A connected client and its accepted server side.
    fn tcp_connection(listen_on: SocketAddr) -> (TcpStream, TcpStream, SocketAddr, SocketAddr) {
        let listener = TcpListener::bind(listen_on).expect("bind listener");
        let server_addr = listener.local_addr().expect("listener address");
        let client = TcpStream::connect(server_addr).expect("connect");
        let (accepted, client_addr) = listener.accept().expect("accept");
        (client, accepted, client_addr, server_addr)
    }

    /// What reading `stream` fails with (reading must fail, not block or see data or EOF).
    fn read_error(stream: &mut TcpStream) -> ErrorKind {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let mut buf = [0; 16];
        match stream.read(&mut buf) {
            Ok(n) => panic!("read returned {n} bytes instead of an error"),
            Err(e) => e.kind(),
        }
    }

    #[test]
    fn destroy_v4_server_side() {
        let (mut client, mut accepted, client_addr, server_addr) =
            tcp_connection((Ipv4Addr::LOCALHOST, 0).into());
        assert!(destroy_tcp(server_addr, client_addr).expect("destroy_tcp"));
        assert_eq!(read_error(&mut accepted), ErrorKind::ConnectionAborted);
        assert_eq!(read_error(&mut client), ErrorKind::ConnectionReset);
        assert!(
            !destroy_tcp(server_addr, client_addr).expect("destroy_tcp again"),
            "destroyed twice"
        );
        assert!(
            !flows()
                .iter()
                .any(|f| f.local == server_addr && f.remote == client_addr)
        );
    }

    #[test]
    fn destroy_v6_client_side() {
        let (mut client, mut accepted, client_addr, server_addr) =
            tcp_connection((Ipv6Addr::LOCALHOST, 0).into());
        assert!(destroy_tcp(client_addr, server_addr).expect("destroy_tcp"));
        assert_eq!(read_error(&mut client), ErrorKind::ConnectionAborted);
        assert_eq!(read_error(&mut accepted), ErrorKind::ConnectionReset);
        assert!(!destroy_tcp(client_addr, server_addr).expect("destroy_tcp again"));
    }

    #[test]
    fn destroy_v4_on_dual_stack_socket() {
        let listener = dual_stack_listener();
        let port = listener.local_addr().expect("listener address").port();
        let server_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut client = TcpStream::connect(server_addr).expect("connect from 127.0.0.1");
        let (mut accepted, _) = listener.accept().expect("accept");
        let client_addr = client.local_addr().expect("client address");
        assert!(accepted.local_addr().expect("accepted address").is_ipv6());

        // Both request forms find the AF_INET6 socket: the kernel looks an AF_INET request,
        // and an AF_INET6 one with IPv4-mapped addresses, up in the same IPv4 hash.
        let mut diag = Diag::open().expect("open");
        for family in [AF_INET, AF_INET6] {
            let found = find_exact(&mut diag, family, server_addr, client_addr)
                .expect("lookup")
                .unwrap_or_else(|| panic!("not found in form {family}"));
            assert_eq!(
                found.family, AF_INET6,
                "the socket's own family is reported"
            );
        }

        assert!(destroy_tcp(server_addr, client_addr).expect("destroy_tcp"));
        assert_eq!(read_error(&mut accepted), ErrorKind::ConnectionAborted);
        assert_eq!(read_error(&mut client), ErrorKind::ConnectionReset);
        // The mapped spelling of the same tuple names the same (now gone) socket.
        let mapped = |a: SocketAddr| match a {
            SocketAddr::V4(v4) => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
            v6 => v6,
        };
        assert!(!destroy_tcp(mapped(server_addr), mapped(client_addr)).expect("destroy_tcp"));
    }

    /// The kernel's lookup by tuple falls back to a listener on the local address: that must
    /// not be destroyed in place of a connection that does not exist.
    #[test]
    fn destroy_missing_connection_spares_listener() {
        for listen_on in [
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        ] {
            let listener = TcpListener::bind(listen_on).expect("bind listener");
            let server_addr = listener.local_addr().expect("listener address");
            let nobody = SocketAddr::new(server_addr.ip(), 1);
            assert!(!destroy_tcp(server_addr, nobody).expect("destroy_tcp"));
            assert!(!destroy_tcp(nobody, server_addr).expect("destroy_tcp"));
            let mut diag = Diag::open().expect("open");
            let family = if server_addr.is_ipv4() {
                AF_INET
            } else {
                AF_INET6
            };
            let raw = diag
                .find_one(
                    family,
                    IPPROTO_TCP,
                    exact_socket(family, server_addr, nobody),
                )
                .expect("lookup");
            if let Some(raw) = raw {
                assert_eq!(raw.header.state, TCP_LISTEN, "what else could it be");
            }
            // Still listening.
            let _client = TcpStream::connect(server_addr).expect("connect after destroy_tcp");
            listener.accept().expect("accept after destroy_tcp");
            assert!(listeners().contains(&server_addr));
        }
        let nowhere = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 1));
        let nobody = SocketAddr::from((Ipv4Addr::new(198, 51, 100, 1), 2));
        assert!(!destroy_tcp(nowhere, nobody).expect("destroy_tcp"));
    }

    /// A socket bound to an interface is missed by the kernel's exact lookup without that
    /// interface, and found by the dump.
    #[test]
    fn destroy_socket_bound_to_interface() {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrIn, connect, setsockopt, socket,
            sockopt::BindToDevice,
        };
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind listener");
        let server_addr = listener.local_addr().expect("listener address");
        let fd: OwnedFd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        setsockopt(&fd, BindToDevice, &"lo".into()).expect("SO_BINDTODEVICE lo");
        let SocketAddr::V4(server_v4) = server_addr else {
            unreachable!("bound to IPv4")
        };
        connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(server_v4),
        )
        .expect("connect");
        let mut client = TcpStream::from(fd);
        let (mut accepted, client_addr) = listener.accept().expect("accept");

        let mut diag = Diag::open().expect("open");
        assert!(
            find_exact(&mut diag, AF_INET, client_addr, server_addr)
                .expect("lookup")
                .is_none(),
            "the exact lookup was expected to miss a socket bound to an interface"
        );
        assert!(destroy_tcp(client_addr, server_addr).expect("destroy_tcp"));
        assert_eq!(read_error(&mut client), ErrorKind::ConnectionAborted);
        assert_eq!(read_error(&mut accepted), ErrorKind::ConnectionReset);
    }

    #[test]
    fn destroy_rejects_mixed_families() {
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 2));
        assert!(destroy_tcp(v4, v6).is_err());
    }

    #[test]
    fn nocookie_and_mapped_forms() {
        let local: SocketAddr = "192.0.2.1:22".parse().expect("addr");
        let remote: SocketAddr = "198.51.100.2:40000".parse().expect("addr");
        let v4 = exact_socket(AF_INET, local, remote);
        assert_eq!(v4.cookie, [0xff; 8]);
        assert_eq!(v4.source_address, local.ip());
        assert_eq!((v4.source_port, v4.destination_port), (22, 40000));
        let v6 = exact_socket(AF_INET6, local, remote);
        assert_eq!(
            v6.destination_address,
            "::ffff:198.51.100.2".parse::<IpAddr>().expect("addr")
        );
        assert_eq!(unmap("[::ffff:192.0.2.1]:22".parse().expect("addr")), local);
    }

    #[test]
    fn normalize_maps_v4_mapped_and_scopes_link_local() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("addr");
        assert_eq!(
            normalize(mapped, 22, 3),
            "192.0.2.7:22".parse().expect("addr")
        );
        let global: IpAddr = "2001:db8::1".parse().expect("addr");
        assert_eq!(
            normalize(global, 80, 3),
            "[2001:db8::1]:80".parse().expect("addr")
        );
        let link_local: IpAddr = "fe80::1".parse().expect("addr");
        assert_eq!(
            normalize(link_local, 80, 3),
            SocketAddr::V6(SocketAddrV6::new(
                "fe80::1".parse().expect("addr"),
                80,
                0,
                3
            ))
        );
    }

    #[test]
    fn tcp_state_numbering_is_the_kernels() {
        for (n, s) in [
            (1, TcpState::Established),
            (2, TcpState::SynSent),
            (3, TcpState::SynRecv),
            (4, TcpState::FinWait1),
            (5, TcpState::FinWait2),
            (6, TcpState::TimeWait),
            (7, TcpState::Close),
            (8, TcpState::CloseWait),
            (9, TcpState::LastAck),
            (11, TcpState::Closing),
        ] {
            assert_eq!(TcpState::from_kernel(n), Some(s));
            assert_eq!(s as u8, n);
        }
        assert_eq!(TcpState::from_kernel(10), None, "LISTEN");
        assert_eq!(TcpState::from_kernel(12), None, "NEW_SYN_RECV");
    }
}
