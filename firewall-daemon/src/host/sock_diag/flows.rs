//! The host's existing connections, for seeding the connection table at start-up.
//!
//! When the daemon starts (or restarts) its BPF connection-tracking table is empty, so return
//! traffic of a connection opened before the firewall — the SSH session of whoever is starting it,
//! say — would meet a stateful "established only" rule with no entry and be dropped. The daemon
//! therefore seeds the table from the sockets that already exist: [`host_flows`] lists every TCP
//! socket that has a peer (all states but LISTEN and CLOSE, including TIME_WAIT and pending
//! SYN_RECV request sockets) and every *connected* UDP socket, IPv4 and IPv6, one dump per
//! family and protocol.

use std::{collections::HashSet, net::SocketAddr};

use anyhow::Context as _;
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP,
    inet::{InetResponseHeader, StateFlags},
};

use super::{Diag, SockProto, any_socket, describe, normalize};

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
    let mut seen = HashSet::with_capacity(flows.len());
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
