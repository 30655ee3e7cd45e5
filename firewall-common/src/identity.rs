//! Program identity: which executable a task runs, as the kernel programs see it.
//!
//! An executable is named by the (device, inode) of `task->mm->exe_file->f_inode`. The device
//! is the kernel's own `dev_t` encoding (`MKDEV(major, minor) = major << 20 | minor`), not the
//! `st_dev` userspace gets from stat(2); the daemon converts (firewall-daemon/src/host/exe_id.rs).
//! The design and its limits are described there.

/// The executable a task runs: `sb->s_dev` (kernel encoding, widened) and `inode->i_ino`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExeId {
    pub dev: u64,
    pub ino: u64,
}

/// Deepest cgroup level (below the cgroup2 root, which is level 0) at which a `unit` rule can
/// match. systemd services sit at level 2 (`system.slice/nginx.service`), a user's apps at
/// about level 5.
pub const MAX_UNIT_LEVEL: usize = 8;

/// `uid` of a [`GroupKey`] whose rules name no `user`.
pub const NO_UID: u32 = u32::MAX;

/// Which selectors a group's rules give, as bits: the kernel tries only the shapes a rule set
/// uses (`SCOPED_SHAPES`), one hash lookup each.
pub const SHAPE_PROGRAM: u32 = 1;
pub const SHAPE_UNIT: u32 = 2;
pub const SHAPE_USER: u32 = 4;
/// Shapes are 1..=7 (0 is the unscoped rules, which have maps of their own).
pub const SHAPES: u32 = 8;

/// Who makes a socket call (cgroup hooks) or owns a bound socket (listener table).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The task's executable; all zero when it has none (kernel thread) or the walk failed.
    pub exe: ExeId,
    pub uid: u32,
    pub _pad: u32,
    /// The cgroup ids of the task's cgroup and its ancestors by level: `ancestors[l - 1]` is
    /// the ancestor at level `l` (1..=[`MAX_UNIT_LEVEL`]), 0 below the task's own level.
    pub ancestors: [u64; MAX_UNIT_LEVEL],
}

/// Key of `GROUPS`: the resolved selectors of a group of rules (rules whose `program`, `unit`
/// and `user` resolve to the same values). Parts a rule does not give are zero (`exe`, `unit`)
/// or [`NO_UID`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub exe: ExeId,
    /// cgroup id of the unit's cgroup.
    pub unit: u64,
    pub uid: u32,
    pub _pad: u32,
}

impl GroupKey {
    /// Which parts are given ([`SHAPE_PROGRAM`] | ...).
    pub const fn shape(&self) -> u32 {
        let mut s = 0;
        if self.exe.dev != 0 || self.exe.ino != 0 {
            s |= SHAPE_PROGRAM;
        }
        if self.unit != 0 {
            s |= SHAPE_UNIT;
        }
        if self.uid != NO_UID {
            s |= SHAPE_USER;
        }
        s
    }
}

/// Key of `SCOPED_PORTS`: a group's port slot ([`crate::port_slot`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopedSlot {
    pub group: u32,
    pub slot: u32,
}

/// Key of `LISTENERS`: a bound local address and port, as the socket is bound.
///
/// Keyed by address, not by port alone: a socket bound to `127.0.0.1:8080` must not stand for
/// the server on `0.0.0.0:8080` (any user can bind the former while the latter listens). A new
/// inbound connection is judged by the socket the kernel's own lookup would pick for it, tried
/// in its order ([`ListenerKey::receivers`]): the exact address before the wildcard, an IPv4
/// socket before an IPv6 one.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    /// The bound address: IPv6 as it is, IPv4 as `::ffff:a.b.c.d` (`0.0.0.0` as
    /// `::ffff:0.0.0.0`); all zero for `::`.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// 6 (TCP) or 17 (UDP).
    pub proto: u8,
    /// 4 or 6: the socket's family (an IPv6 socket may also receive IPv4).
    pub family: u8,
    pub _pad: u32,
}

impl ListenerKey {
    /// The key of a socket of `family` (4 or 6) bound to `addr`.
    pub fn bound(family: u8, addr: core::net::IpAddr, proto: u8, port: u16) -> Self {
        Self {
            addr: crate::addr::mapped(addr),
            port,
            proto,
            family,
            _pad: 0,
        }
    }

    /// The keys of the sockets that may receive a new connection to `local`, best first, as
    /// the kernel prefers them (the XDP program tries them in this order): bound to the exact
    /// address by an IPv4 socket, by an IPv6 socket (a mapped address), then bound to the
    /// wildcard by an IPv4 socket, by an IPv6 socket. IPv6 packets: exact, then `::`.
    pub fn receivers(local: core::net::IpAddr, proto: u8, port: u16) -> ([Self; 4], usize) {
        use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let key = |family, addr| Self::bound(family, addr, proto, port);
        let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        match local {
            IpAddr::V4(a) => (
                [
                    key(4, local),
                    key(6, IpAddr::V6(a.to_ipv6_mapped())),
                    key(4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                    key(6, any6),
                ],
                4,
            ),
            IpAddr::V6(_) => ([key(6, local), key(6, any6), key(6, any6), key(6, any6)], 2),
        }
    }
}

/// Value of `LISTENERS`: who bound the port, and which socket (`bpf_get_socket_cookie`), so
/// that only that socket's release removes the entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listener {
    pub owner: Owner,
    pub cookie: u64,
}

/// Capacity of `LISTENERS`: bound ports tracked at once.
pub const LISTENER_ENTRIES: u32 = 65536;

/// Names of the load-time constants (`Global<u32>`) holding the kernel structure offsets the
/// identity walk needs. 0 means "not resolved": the walk then reports nothing (none of these
/// fields sits at offset 0 in any kernel, and the daemon refuses a resolved 0).
pub mod globals {
    /// `offsetof(struct task_struct, mm)`.
    pub const OFF_TASK_MM: &str = "OFF_TASK_MM";
    /// `offsetof(struct mm_struct, exe_file)` (inside an anonymous member on recent kernels).
    pub const OFF_MM_EXE_FILE: &str = "OFF_MM_EXE_FILE";
    /// `offsetof(struct file, f_inode)`.
    pub const OFF_FILE_INODE: &str = "OFF_FILE_INODE";
    /// `offsetof(struct inode, i_ino)`.
    pub const OFF_INODE_INO: &str = "OFF_INODE_INO";
    /// `offsetof(struct inode, i_sb)`.
    pub const OFF_INODE_SB: &str = "OFF_INODE_SB";
    /// `offsetof(struct super_block, s_dev)`.
    pub const OFF_SB_DEV: &str = "OFF_SB_DEV";
}

/// Prototype `cgroup/connect4` program: records the caller's identity, allows everything.
/// Tests load it on its own; the firewall's own connect hooks are [`crate::CONNECT4_PROGRAM`]
/// and its siblings.
pub const PROBE_PROGRAM: &str = "identity_connect4";
/// Hash, tgid (`u32`) -> [`ExeId`]: what [`PROBE_PROGRAM`] observed (tests only).
pub const IDENTITY_PROBE: &str = "IDENTITY_PROBE";
/// Capacity of [`IDENTITY_PROBE`].
pub const IDENTITY_PROBE_ENTRIES: u32 = 1024;

/// Bits of the minor number in the kernel's internal `dev_t` (`MINORBITS`).
pub const KERNEL_MINOR_BITS: u32 = 20;

/// The kernel's internal `dev_t` for a device number: `MKDEV(major, minor)`.
#[inline(always)]
pub const fn kernel_dev(major: u32, minor: u32) -> u64 {
    ((major as u64) << KERNEL_MINOR_BITS) | (minor as u64 & ((1 << KERNEL_MINOR_BITS) - 1))
}

const _: () = {
    assert!(core::mem::size_of::<ExeId>() == 16);
    assert!(core::mem::size_of::<Owner>() == 24 + 8 * MAX_UNIT_LEVEL);
    assert!(core::mem::size_of::<GroupKey>() == 32);
    assert!(core::mem::size_of::<ScopedSlot>() == 8);
    assert!(core::mem::size_of::<ListenerKey>() == 24);
    assert!(core::mem::size_of::<Listener>() == 32 + 8 * MAX_UNIT_LEVEL);
    assert!(kernel_dev(254, 1) == 0x0fe0_0001);
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), integer fields only, explicit padding (sizes asserted above), every bit
    // pattern valid.
    unsafe impl aya::Pod for super::ExeId {}
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::GroupKey {}
    unsafe impl aya::Pod for super::ScopedSlot {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::Listener {}
}
