//! The host's sockets through NETLINK_SOCK_DIAG (`inet_diag`, what `ss` uses): its
//! connections, for seeding the connection table at start-up ([`host_flows`]), its listening
//! and bound sockets ([`tcp_listeners`], [`bound_inet_sockets`]), and closing one of its TCP
//! sockets ([`destroy_tcp`]). This file holds what they share: the netlink socket (`Diag`),
//! its requests and the reading of the kernel's answers.
//!
//! Why netlink and not `/proc/net/tcp`: a dump is read in kernel-sized chunks, carries the
//! socket cookie and the v6-only flag, and the same socket can destroy. A dump is consistent
//! per hash bucket, not as a whole: a socket created or closed while it runs may or may not be
//! listed (a seed can only ever be a snapshot anyway; the datapath learns new connections from
//! then on). A dump the kernel flags as interrupted is started again.
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
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    AF_INET6, IPPROTO_TCP, SockDiagDestroy, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, InetResponse, InetResponseHeader, SocketId, StateFlags},
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

mod destroy;
mod flows;
mod listening;
#[cfg(test)]
mod tests;

pub use destroy::destroy_tcp;
pub use flows::{HostFlow, TcpState, host_flows};
pub use listening::{BoundSocket, bound_inet_sockets, tcp_listeners};

/// Transport protocol of a [`HostFlow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SockProto {
    Tcp,
    Udp,
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

/// A request's socket id that names no socket (a dump's).
fn any_socket(family: u8) -> SocketId {
    if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
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
