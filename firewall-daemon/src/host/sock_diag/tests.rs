use std::{
    io::{ErrorKind, Read as _},
    net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket},
    os::fd::OwnedFd,
    time::Duration,
};

use netlink_packet_sock_diag::{AF_INET, AF_INET6, IPPROTO_TCP};

use super::{
    destroy::{exact_socket, find_exact, unmap},
    *,
};

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
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6, bind, listen, setsockopt, socket,
        sockopt::Ipv6V6Only,
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
        flows
            .iter()
            .all(|f| !matches!(f.local, SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some())),
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

    let other =
        std::thread::spawn(
            || match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                Ok(()) => Some(host_flows()),
                Err(nix::errno::Errno::EPERM) => None,
                Err(e) => panic!("unshare(CLONE_NEWNET): {e}"),
            },
        )
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
