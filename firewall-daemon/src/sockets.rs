//! The host's existing connections, for seeding the connection table at start-up.
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
//! IPv4 traffic of dual-stack IPv6 sockets is reported by the kernel with IPv4-mapped addresses
//! (`::ffff:a.b.c.d`); those are normalized to [`SocketAddr::V4`], which is what the datapath
//! sees on the wire.
//!
//! Limits: a netlink socket answers for the network namespace it was created in, which is the
//! namespace of the *calling thread*. Sockets in other network namespaces (containers, `ip netns`)
//! are not seen, so the daemon must run in the namespace whose interfaces it protects. Only
//! sockets are listed: flows that are forwarded or NATed through the host, rather than terminated
//! on it, have no socket and are not seeded.

use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};

use anyhow::{Context as _, anyhow, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
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
            let headers = diag
                .dump(family, protocol, states)
                .with_context(|| format!("listing {what} sockets through NETLINK_SOCK_DIAG"))?;
            flows.extend(headers.iter().filter_map(|h| to_flow(proto, h)));
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

    /// All sockets of one family and protocol in `states`, retrying interrupted dumps.
    fn dump(
        &mut self,
        family: u8,
        protocol: u8,
        states: StateFlags,
    ) -> anyhow::Result<Vec<InetResponseHeader>> {
        for _ in 0..DUMP_ATTEMPTS {
            let (headers, interrupted) = self.dump_once(family, protocol, states.clone())?;
            if !interrupted {
                return Ok(headers);
            }
            log::debug!("sock_diag dump was interrupted by a concurrent change; starting again");
        }
        bail!("the dump was interrupted by concurrent changes {DUMP_ATTEMPTS} times in a row")
    }

    /// One dump: the answers, and whether the kernel flagged the dump as inconsistent.
    fn dump_once(
        &mut self,
        family: u8,
        protocol: u8,
        states: StateFlags,
    ) -> anyhow::Result<(Vec<InetResponseHeader>, bool)> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = sequence;
        let socket_id = if family == AF_INET6 {
            SocketId::new_v6()
        } else {
            SocketId::new_v4()
        };
        let mut request = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol,
                extensions: ExtensionFlags::empty(),
                states,
                socket_id,
            })),
        );
        request.finalize();
        let mut buf = vec![0; request.buffer_len()];
        request.serialize(&mut buf);
        let sent = self
            .socket
            .send(&buf, 0)
            .context("sending the dump request")?;
        if sent != buf.len() {
            bail!("sent {sent} of the request's {} bytes", buf.len());
        }

        let mut headers = Vec::new();
        let mut interrupted = false;
        loop {
            // Peeks at the datagram's size first, so no chunk of the dump is ever truncated.
            let (datagram, _) = self.socket.recv_from_full().context("receiving the dump")?;
            if datagram.is_empty() {
                bail!("the kernel closed the dump without NLMSG_DONE");
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
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        headers.push(response.header);
                    }
                    NetlinkPayload::InnerMessage(other) => {
                        bail!("unexpected sock_diag message in an inet dump: {other:?}");
                    }
                    NetlinkPayload::Done(done) => {
                        if done.code != 0 {
                            return Err(std::io::Error::from_raw_os_error(done.code.abs()))
                                .context("the kernel ended the dump with an error");
                        }
                        return Ok((headers, interrupted));
                    }
                    NetlinkPayload::Error(error) => {
                        if error.code.is_none() {
                            // An acknowledgement; a dump ends with NLMSG_DONE.
                            continue;
                        }
                        return Err(error.to_io()).context("the kernel refused the dump");
                    }
                    NetlinkPayload::Noop => {}
                    NetlinkPayload::Overrun(_) => bail!("the kernel reported an overrun"),
                    _ => bail!("unexpected netlink message in a sock_diag dump"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket},
        os::fd::OwnedFd,
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
        setsockopt(&fd, Ipv6V6Only, &false).expect("IPV6_V6ONLY off");
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
