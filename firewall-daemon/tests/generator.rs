//! The benchmark's frame generator (`firewall_common::generator`): `cargo xtask bench` is only
//! as true as the frames it sends. Run in live-frame mode in one test namespace, redirecting
//! into a veth whose peer (in another) holds the pass-only program, it must deliver every frame
//! with a valid IPv4 header from exactly the configured family of sources.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use firewall_common::generator::GenConfig;
use firewall_daemon::kernel::{FrameGenerator, PassProgram};
use rules::model::XdpMode;
use support::{bpffs::BpfFs, frames, netns::Pair};

const FRAMES: u32 = 1_000;

#[test]
fn generator_delivers_every_frame_from_the_configured_sources() {
    let pair = Pair::new();
    let fs = BpfFs::new();
    let pass_dir = fs.pin_dir("pass");
    let server_if = pair.server_if.clone();
    let _pass = pair.server.run(move || {
        let mut prog = PassProgram::load(&pass_dir).expect("loading xdp_pass");
        let (link, _) = prog
            .attach(&server_if, XdpMode::Native)
            .expect("attaching xdp_pass to the receiving veth");
        (prog, link)
    });
    let server_v4: Ipv4Addr = pair.server_v4.parse().expect("address");
    let sock = pair.server.run(move || {
        let s = UdpSocket::bind((server_v4, 9)).expect("binding the sink");
        // Room for every datagram: nothing reads them until the generator is done.
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20))
            .expect("SO_RCVBUFFORCE");
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        s
    });

    let mut frame = frames::ipv4_frame(
        "10.200.0.99",
        pair.server_v4,
        17,
        &[frames::udp_header(40000, 9, 18), vec![0; 18]].concat(),
    );
    frames::set_dst_mac(&mut frame, pair.server.mac(&pair.server_if));
    // Rules 10, 20, 30 and 40 of a span of 40 starting at 10: 10.200.0.{10,20,30,40}.
    let config = GenConfig {
        ifindex: 0,
        prefix: u32::from(Ipv4Addr::new(10, 200, 0, 0)),
        mask: 0xff,
        mul: 1,
        first: 10,
        span: 40,
        sources: 4,
        random_port: 1,
    };
    let gen_dir = fs.pin_dir("generator");
    let client_if = pair.client_if.clone();
    let sent = pair.client.run(move || {
        let ifindex = nix::net::if_::if_nametoindex(client_if.as_str()).expect("ifindex");
        let mut generator = FrameGenerator::load(&gen_dir, GenConfig { ifindex, ..config })
            .expect("loading the generator");
        generator.send(&frame, FRAMES, 64)
    });
    if let Err(e) = sent {
        // BPF_F_TEST_XDP_LIVE_FRAMES arrived in Linux 5.18.
        eprintln!("skipped: this kernel does not run XDP programs on live frames: {e:#}");
        return;
    }

    let mut from: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
    let mut ports = BTreeSet::new();
    let mut buf = [0u8; 64];
    while let Ok((len, peer)) = sock.recv_from(&mut buf) {
        assert_eq!(len, 18, "payload length");
        let SocketAddr::V4(peer) = peer else {
            panic!("IPv6 peer {peer}")
        };
        *from.entry(*peer.ip()).or_default() += 1;
        ports.insert(peer.port());
    }
    let expected: BTreeSet<Ipv4Addr> = [10, 20, 30, 40]
        .into_iter()
        .map(|h| Ipv4Addr::new(10, 200, 0, h))
        .collect();
    assert_eq!(
        from.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "sources seen: {from:?}"
    );
    // The stack drops frames whose IPv4 checksum is wrong: every frame arrived, so the
    // generator's checksum is right for every source it wrote.
    assert_eq!(from.values().sum::<u32>(), FRAMES, "frames delivered");
    // Drawn at random: each source gets a fair share, each frame (nearly) its own port.
    for (addr, n) in &from {
        assert!(*n > FRAMES / 8, "{addr}: {n} of {FRAMES} frames");
    }
    assert!(
        ports.len() > FRAMES as usize * 9 / 10,
        "{} source ports",
        ports.len()
    );
}
