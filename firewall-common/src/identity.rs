//! Program identity: which executable a task runs, as the kernel programs see it.
//!
//! An executable is named by the (device, inode) of `task->mm->exe_file->f_inode`. The device
//! is the kernel's own `dev_t` encoding (`MKDEV(major, minor) = major << 20 | minor`), not the
//! `st_dev` userspace gets from stat(2); the daemon converts (firewall-daemon/src/identity.rs).
//! The design and its limits are described there.

/// The executable a task runs: `sb->s_dev` (kernel encoding, widened) and `inode->i_ino`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExeId {
    pub dev: u64,
    pub ino: u64,
}

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
    assert!(kernel_dev(254, 1) == 0x0fe0_0001);
};

#[cfg(feature = "user")]
// SAFETY: repr(C), two u64 fields, no padding (size asserted above), every bit pattern valid.
unsafe impl aya::Pod for ExeId {}
