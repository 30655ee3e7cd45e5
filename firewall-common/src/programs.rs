//! The names of the object's programs, as the loader looks them up.
//!
//! One object holds every program: the XDP and TC datapath (an Ethernet and an L3 entry point
//! each), the outbound cgroup hooks and the listener hooks. The daemon loads two copies of it,
//! inbound and outbound, and attaches from each only the programs of that direction; these
//! names must match the entry points' function names in `firewall-ebpf/src/main.rs`.

/// Name of the firewall's XDP program in the object file (devices with Ethernet headers).
pub const XDP_PROGRAM: &str = "firewall_xdp";
/// The same for devices without a link-layer header, whose frames start at the IP header.
pub const XDP_L3_PROGRAM: &str = "firewall_xdp_l3";
/// The reader of DNS answers, tail-called by the XDP programs through
/// [`crate::maps::DNS_PROGS`] (`firewall-ebpf/src/dns.rs`); never attached.
pub const DNS_PROGRAM: &str = "firewall_dns";
/// Name of a program that only returns `XDP_PASS` (veth peers in tests, the benchmark floor).
pub const XDP_PASS_PROGRAM: &str = "xdp_pass";
/// The benchmark's reference blocklist: one hash lookup of the IPv4 source, drop on a hit
/// (`firewall-ebpf/src/blocklist.rs`, map [`crate::maps::BENCH_BLOCKLIST`]).
pub const XDP_BLOCKLIST_PROGRAM: &str = "xdp_blocklist";
/// Name of the TC egress program that records the flows the host opens (and drops the packets
/// of sockets an outbound verdict said `stealth` for).
pub const TC_EGRESS_PROGRAM: &str = "firewall_egress";
/// The egress program for devices without a link-layer header.
pub const TC_EGRESS_L3_PROGRAM: &str = "firewall_egress_l3";
/// The outbound hooks: `cgroup/connect4`, `cgroup/connect6` (TCP and connected UDP),
/// `cgroup/sendmsg4`, `cgroup/sendmsg6` (UDP datagrams sent with an address).
pub const CONNECT4_PROGRAM: &str = "firewall_connect4";
pub const CONNECT6_PROGRAM: &str = "firewall_connect6";
pub const SENDMSG4_PROGRAM: &str = "firewall_sendmsg4";
pub const SENDMSG6_PROGRAM: &str = "firewall_sendmsg6";
/// `cgroup/post_bind4`, `cgroup/post_bind6`: record who bound a port (`LISTENERS`).
pub const POST_BIND4_PROGRAM: &str = "firewall_post_bind4";
pub const POST_BIND6_PROGRAM: &str = "firewall_post_bind6";
/// `cgroup/sock_release`: forget a released socket's port.
pub const SOCK_RELEASE_PROGRAM: &str = "firewall_sock_release";
/// TC egress on `lo`: DNS queries to a resolver on the host and its answers
/// (`firewall-ebpf/src/dns.rs`); never drops.
pub const DNS_LOOPBACK_PROGRAM: &str = "firewall_dns_loopback";
/// The loopback program's reader of answers, tail-called through
/// [`crate::maps::DNS_LOOPBACK_PROGS`]; never attached.
pub const DNS_LOOPBACK_READ_PROGRAM: &str = "firewall_dns_loopback_read";
