//! Bounded SYN floods for the tests that need one (connection table eviction, the decision
//! log's budget): Ethernet frames written on an AF_PACKET socket, so that sources can be forged
//! and nothing of the sender's own stack is involved.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use super::frames::inet_checksum;

/// What one SYN of a flood varies.
pub struct Syn {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub seq: u32,
    pub ip_id: u16,
}

pub struct Flood {
    pub sent: u64,
    pub send_errors: u64,
    pub elapsed: Duration,
}

/// Sends up to `max_packets` TCP SYNs to `dst:port` (stopping after `max_time` whatever the
/// count), the `i`th as `syn(i)` says, as Ethernet frames on an AF_PACKET socket bound to
/// `ifname`. Runs in the calling thread's namespace.
#[expect(
    clippy::too_many_arguments,
    reason = "the link, the target and the bounds, as each caller has them"
)]
pub fn syn_flood(
    ifname: &str,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    dst: Ipv4Addr,
    port: u16,
    max_packets: u64,
    max_time: Duration,
    mut syn: impl FnMut(u64) -> Syn,
) -> Flood {
    let ifname_c = std::ffi::CString::new(ifname).expect("ifname");
    // SAFETY: a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(ifname_c.as_ptr()) };
    assert!(ifindex != 0, "no interface {ifname}");
    // SAFETY: plain socket(2); the descriptor is owned right away. Protocol 0: send only, the
    // socket receives nothing.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&dst_mac);

    let mut frame = [0u8; 54];
    frame[0..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = 14;
    frame[ip] = 0x45;
    frame[ip + 2..ip + 4].copy_from_slice(&40u16.to_be_bytes());
    frame[ip + 6] = 0x40; // DF
    frame[ip + 8] = 64;
    frame[ip + 9] = 6;
    frame[ip + 16..ip + 20].copy_from_slice(&dst.octets());
    let tcp = ip + 20;
    frame[tcp + 2..tcp + 4].copy_from_slice(&port.to_be_bytes());
    frame[tcp + 12] = 5 << 4;
    frame[tcp + 13] = 0x02; // SYN
    frame[tcp + 14..tcp + 16].copy_from_slice(&64240u16.to_be_bytes());

    let start = Instant::now();
    let (mut sent, mut send_errors) = (0u64, 0u64);
    for i in 0..max_packets {
        if i % 256 == 0 && start.elapsed() > max_time {
            break;
        }
        let s = syn(i);
        frame[ip + 4..ip + 6].copy_from_slice(&s.ip_id.to_be_bytes());
        frame[ip + 10..ip + 12].fill(0);
        frame[ip + 12..ip + 16].copy_from_slice(&s.src.octets());
        let c = inet_checksum(&[&frame[ip..ip + 20]]);
        frame[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        frame[tcp..tcp + 2].copy_from_slice(&s.sport.to_be_bytes());
        frame[tcp + 4..tcp + 8].copy_from_slice(&s.seq.to_be_bytes());
        frame[tcp + 16..tcp + 18].fill(0);
        let mut pseudo = [0u8; 12];
        pseudo[0..8].copy_from_slice(&frame[ip + 12..ip + 20]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
        let c = inet_checksum(&[&pseudo, &frame[tcp..tcp + 20]]);
        frame[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
        // SAFETY: the buffer and address outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n == frame.len() as isize {
            sent += 1;
        } else {
            send_errors += 1;
        }
    }
    Flood {
        sent,
        send_errors,
        elapsed: start.elapsed(),
    }
}
