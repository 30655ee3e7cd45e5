//! Who the calling task is: which executable it runs (the (device, inode) of
//! `task->mm->exe_file->f_inode`, walked with `bpf_probe_read_kernel`), its uid and its
//! cgroup ancestors ([`owner_of_current`]).
//!
//! Rust eBPF has no CO-RE field relocations, so the structure offsets are load-time constants
//! the daemon resolves from the running kernel's BTF (firewall-daemon/src/host/btf). Only
//! for cgroup socket hooks (process context); the XDP program never calls this.

use aya_ebpf::{
    Global,
    bindings::BPF_F_NO_PREALLOC,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_probe_read_kernel,
    },
    macros::map,
    maps::HashMap,
};
use firewall_common::{
    Counter,
    identity::{ExeId, IDENTITY_PROBE_ENTRIES, MAX_UNIT_LEVEL, Owner},
};

use crate::counters::count;

// Structure offsets, set by the daemon from /sys/kernel/btf/vmlinux. 0 = not resolved.
#[unsafe(no_mangle)]
static OFF_TASK_MM: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_MM_EXE_FILE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_FILE_INODE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_INODE_INO: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_INODE_SB: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_SB_DEV: Global<u32> = Global::new(0);

/// What `identity_connect4` ([`probe`]) observed: tgid -> executable. Tests read it back. Not
/// preallocated: every generation of the XDP program creates it, and nothing fills it there.
#[map]
static IDENTITY_PROBE: HashMap<u32, ExeId> =
    HashMap::with_max_entries(IDENTITY_PROBE_ENTRIES, BPF_F_NO_PREALLOC);

/// Why [`current_exe`] found no identity.
#[derive(Clone, Copy)]
pub(crate) enum NoExe {
    /// The daemon did not set the offsets.
    Unresolved,
    /// The task has no address space (kernel thread, or an exiting task).
    NoMm,
    /// The address space has no executable file.
    NoExeFile,
    /// A kernel read faulted or found NULL where a pointer was required.
    Fault,
}

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
fn read_at<T>(base: u64, off: u32) -> Result<T, NoExe> {
    let addr = base.wrapping_add(u64::from(off));
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-handling accessor; a bad
    // address is an error return, never a crash, and the result is a plain integer.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.map_err(|_| NoExe::Fault)
}

/// The executable of the task making the current system call.
#[inline(always)]
pub(crate) fn current_exe() -> Result<ExeId, NoExe> {
    let off_mm = OFF_TASK_MM.load();
    let off_exe = OFF_MM_EXE_FILE.load();
    let off_inode = OFF_FILE_INODE.load();
    let off_ino = OFF_INODE_INO.load();
    let off_sb = OFF_INODE_SB.load();
    let off_dev = OFF_SB_DEV.load();
    if off_mm == 0 || off_exe == 0 || off_inode == 0 || off_ino == 0 || off_sb == 0 || off_dev == 0
    {
        return Err(NoExe::Unresolved);
    }
    // SAFETY: no arguments; returns the current task_struct's address (never NULL in process
    // context), which is only ever dereferenced through bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    if task == 0 {
        return Err(NoExe::Fault);
    }
    let mm: u64 = read_at(task, off_mm)?;
    if mm == 0 {
        return Err(NoExe::NoMm);
    }
    let exe_file: u64 = read_at(mm, off_exe)?;
    if exe_file == 0 {
        return Err(NoExe::NoExeFile);
    }
    let inode: u64 = read_at(exe_file, off_inode)?;
    if inode == 0 {
        return Err(NoExe::Fault);
    }
    let ino: u64 = read_at(inode, off_ino)?;
    let sb: u64 = read_at(inode, off_sb)?;
    if sb == 0 {
        return Err(NoExe::Fault);
    }
    let dev: u32 = read_at(sb, off_dev)?;
    Ok(ExeId {
        dev: u64::from(dev),
        ino,
    })
}

/// The calling task: its executable, uid and cgroup ancestors. Only in process context (the
/// cgroup hooks).
#[inline(always)]
pub(crate) fn current_owner() -> Owner {
    owner_of_current(true, true)
}

/// The calling task as an [`Owner`], reading only what is asked for: `exe`, the executable
/// walk (five kernel reads); `ancestors`, the cgroup ancestors (eight helper calls).
#[inline(always)]
pub(crate) fn owner_of_current(exe: bool, ancestors: bool) -> Owner {
    let exe = if exe {
        match current_exe() {
            Ok(exe) => exe,
            Err(_) => {
                count(Counter::OutNoExe);
                ExeId { dev: 0, ino: 0 }
            }
        }
    } else {
        ExeId { dev: 0, ino: 0 }
    };
    let mut owner = Owner {
        exe,
        uid: bpf_get_current_uid_gid() as u32,
        _pad: 0,
        ancestors: [0; MAX_UNIT_LEVEL],
    };
    if ancestors {
        let mut level = 0;
        while level < MAX_UNIT_LEVEL {
            // SAFETY: a helper without pointer arguments; 0 above the task's own level.
            owner.ancestors[level] =
                unsafe { bpf_get_current_ancestor_cgroup_id((level + 1) as i32) };
            level += 1;
        }
    }
    owner
}

/// The per-program connect hook's prototype (`identity_connect4`): records who connects in
/// `IDENTITY_PROBE`, decides nothing.
#[inline(always)]
pub(crate) fn probe() -> i32 {
    if let Ok(exe) = current_exe() {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        // A full map only loses the observation; the connect is allowed either way.
        let _ = IDENTITY_PROBE.insert(&tgid, &exe, 0);
    }
    1
}
