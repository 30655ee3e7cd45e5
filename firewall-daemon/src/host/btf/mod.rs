//! Program identity for per-program rules: which executable a socket call comes from.
//!
//! # Design
//!
//! The cgroup socket hooks (connect4/6, sendmsg4/6, bind4/6) run in the calling task's context.
//! The kernel program names the task's executable by the (device, inode) of
//! `task->mm->exe_file->f_inode`: `inode->i_sb->s_dev` and `inode->i_ino`
//! (firewall-ebpf/src/identity.rs). The daemon computes the same pair for the path a rule
//! names ([`exe_id`]) and the two are compared as integers.
//!
//! **Why offsets from BTF.** Rust eBPF has no CO-RE field relocations, and the layout of
//! `task_struct`, `mm_struct`, `file`, `inode` and `super_block` changes between kernel
//! versions and configurations. So the daemon reads the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`) at load time ([`KernelOffsets::resolve`]), summing offsets
//! through anonymous struct/union members (where `mm_struct.exe_file` lives on recent
//! kernels), checks each member's type and size against what the kernel program reads
//! (pointers to the expected structs, an 8-byte `i_ino`, a 4-byte `s_dev`), and hands the
//! offsets to the program as load-time constants ([`KernelOffsets::set_globals`]). A kernel
//! without BTF or with an unexpected layout is a clear error at load, never a wrong read. The
//! parser is the `btfparse` crate: `aya-obj`'s BTF types keep struct members crate-private.
//!
//! **Why the device number is converted.** `sb->s_dev` is the kernel's internal `dev_t`,
//! `MKDEV(major, minor) = major << 20 | minor`; `st_dev` from stat(2) uses the userspace
//! encoding (`0xfe00` for 254:0 where the kernel has `0x0fe00000`). [`kernel_dev_of`] splits
//! `st_dev` with `major()`/`minor()` and re-encodes it the kernel's way.
//!
//! **Why the device comes from the mount table.** stat(2) reports what the file system's
//! getattr chooses, not `sb->s_dev`: btrfs gives every subvolume an anonymous device of its own,
//! overlayfs reports a layer's device when its layers are on different file systems. So
//! [`exe_id`] takes the superblock's device from `/proc/self/mountinfo` (which prints
//! `sb->s_dev`), for the mount the file is on, and the inode number from stat.
//!
//! # Limits
//!
//! - A script is identified by its interpreter (`/usr/bin/python3`), not by the script: the
//!   kernel's `exe_file` is what was executed. Rules for interpreted programs name the
//!   interpreter, and so match every script it runs.
//! - The identity is the file, not its contents or path: whoever can write to the binary (or
//!   replace it at its path before the daemon resolves the rule) can run their code under its
//!   identity. Only root-owned, non-writable binaries make meaningful program rules.
//! - A replaced binary (package upgrade: new inode) no longer matches until the daemon resolves
//!   the path again; a running process keeps the old inode.
//! - `comm` (the task name) is never used: any process can set it with prctl(PR_SET_NAME).
//! - Kernel threads (no `mm`) and tasks without an executable have no identity.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::EbpfLoader;
use btfparse::{Offset, Readable, TypeInformation, TypeVariant};
pub use firewall_common::identity::ExeId;
use firewall_common::identity::{globals, kernel_dev};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Offsets (bytes) of the kernel structure members the identity walk reads, for the running
/// kernel. None is 0 (0 means "not resolved" to the kernel program).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `mm_struct.exe_file`
    pub mm_exe_file: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `inode.i_ino`
    pub inode_ino: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `super_block.s_dev`
    pub sb_dev: u32,
}

/// What the kernel program reads at a member, checked against the BTF.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// An 8-byte pointer to `struct <name>`.
    PtrTo(&'static str),
    /// An integer of this many bytes.
    Int(usize),
}

const POINTER_SIZE: usize = 8;

/// The running kernel's offsets, resolved once per process: the error says why program
/// identity is unavailable (kernel without BTF, unexpected layout).
pub fn kernel_offsets() -> Result<&'static KernelOffsets, &'static str> {
    static OFFSETS: std::sync::OnceLock<Result<KernelOffsets, String>> = std::sync::OnceLock::new();
    OFFSETS
        .get_or_init(|| KernelOffsets::resolve().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(String::as_str)
}

impl KernelOffsets {
    /// Resolves the offsets from the running kernel's BTF ([`VMLINUX_BTF`]).
    pub fn resolve() -> anyhow::Result<Self> {
        Self::resolve_file(Path::new(VMLINUX_BTF))
    }

    /// Resolves the offsets from a BTF file.
    pub fn resolve_file(path: &Path) -> anyhow::Result<Self> {
        let data = fs::read(path).with_context(|| {
            format!(
                "reading kernel BTF {} (program identity needs a kernel built with \
                 CONFIG_DEBUG_INFO_BTF)",
                path.display()
            )
        })?;
        Self::resolve_btf(&data, &path.display().to_string())
    }

    /// Resolves the offsets from a BTF blob; `source` names it in errors.
    pub fn resolve_btf(data: &[u8], source: &str) -> anyhow::Result<Self> {
        let btf = Btf::parse(data, source)?;
        let offsets = Self {
            task_mm: btf.member("task_struct", "mm", Expect::PtrTo("mm_struct"))?,
            mm_exe_file: btf.member("mm_struct", "exe_file", Expect::PtrTo("file"))?,
            file_inode: btf.member("file", "f_inode", Expect::PtrTo("inode"))?,
            inode_ino: btf.member("inode", "i_ino", Expect::Int(8))?,
            inode_sb: btf.member("inode", "i_sb", Expect::PtrTo("super_block"))?,
            sb_dev: btf.member("super_block", "s_dev", Expect::Int(4))?,
        };
        Ok(offsets)
    }

    /// The load-time constants of the kernel program, by name.
    pub fn globals(&self) -> [(&'static str, &u32); 6] {
        [
            (globals::OFF_TASK_MM, &self.task_mm),
            (globals::OFF_MM_EXE_FILE, &self.mm_exe_file),
            (globals::OFF_FILE_INODE, &self.file_inode),
            (globals::OFF_INODE_INO, &self.inode_ino),
            (globals::OFF_INODE_SB, &self.inode_sb),
            (globals::OFF_SB_DEV, &self.sb_dev),
        ]
    }

    /// Sets the offsets as load-time constants on `loader` (they must exist in the object).
    pub fn set_globals<'a, 'l>(&'a self, loader: &'l mut EbpfLoader<'a>) -> &'l mut EbpfLoader<'a> {
        for (name, value) in self.globals() {
            loader.override_global(name, value, true);
        }
        loader
    }
}

/// A parsed BTF blob and the name of where it came from, for errors.
struct Btf<'s> {
    types: TypeInformation,
    source: &'s str,
}

struct Bytes<'d>(&'d [u8]);

impl Readable for Bytes<'_> {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).ok();
        let src = start
            .and_then(|s| Some(s..s.checked_add(buffer.len())?))
            .and_then(|r| self.0.get(r))
            .ok_or_else(|| btfparse::Error::new(btfparse::ErrorKind::EOF, "read past the end"))?;
        buffer.copy_from_slice(src);
        Ok(())
    }
}

fn btf_error(e: btfparse::Error) -> anyhow::Error {
    anyhow!("{:?}: {}", e.kind(), e.message())
}

impl<'s> Btf<'s> {
    fn parse(data: &[u8], source: &'s str) -> anyhow::Result<Self> {
        let types = TypeInformation::new(&Bytes(data))
            .map_err(btf_error)
            .with_context(|| format!("parsing BTF from {source}"))?;
        Ok(Self { types, source })
    }

    /// Type ids of the structs named `name` (kernel BTF normally has exactly one).
    fn structs(&self, name: &str) -> Vec<u32> {
        self.types
            .get()
            .iter()
            .filter_map(|(id, ty)| match ty {
                TypeVariant::Struct(s) if s.name().as_deref() == Some(name) => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Follows typedefs and qualifiers (const, volatile, restrict, type tags such as `__rcu`).
    fn strip(&self, mut id: u32) -> anyhow::Result<(u32, TypeVariant)> {
        for _ in 0..32 {
            let ty = self
                .types
                .from_id(id)
                .ok_or_else(|| anyhow!("type id {id} missing from {}", self.source))?;
            id = match &ty {
                TypeVariant::Typedef(t) => *t.tid(),
                TypeVariant::Const(t) => *t.tid(),
                TypeVariant::Volatile(t) => *t.tid(),
                TypeVariant::Restrict(t) => *t.tid(),
                TypeVariant::TypeTag(t) => *t.tid(),
                _ => return Ok((id, ty)),
            };
        }
        bail!("type chain from id {id} too long in {}", self.source)
    }

    /// Byte offset of `field` in `struct strukt`, through anonymous members, after checking
    /// its type against `expect`.
    fn member(&self, strukt: &str, field: &str, expect: Expect) -> anyhow::Result<u32> {
        let candidates = self.structs(strukt);
        if candidates.is_empty() {
            bail!("struct {strukt} not found in {}", self.source);
        }
        let mut found: Option<u32> = None;
        let mut last_err = None;
        for id in candidates {
            match self.member_of(id, strukt, field, expect) {
                Ok(off) => match found {
                    Some(prev) if prev != off => bail!(
                        "{strukt}.{field}: structs of that name disagree ({prev} vs {off}) in {}",
                        self.source
                    ),
                    _ => found = Some(off),
                },
                Err(e) => last_err = Some(e),
            }
        }
        match (found, last_err) {
            (Some(off), _) => Ok(off),
            (None, Some(e)) => Err(e),
            (None, None) => bail!("struct {strukt} not found in {}", self.source),
        }
    }

    fn member_of(&self, id: u32, strukt: &str, field: &str, expect: Expect) -> anyhow::Result<u32> {
        let what = || format!("{strukt}.{field} in {}", self.source);
        let (member_tid, offset) = self
            .types
            .offset_of(id, field)
            .map_err(btf_error)
            .with_context(|| format!("field {} not found", what()))?;
        let offset = match offset {
            Offset::ByteOffset(b) => b,
            Offset::BitOffsetAndSize(..) => bail!("{} is a bitfield", what()),
        };
        if offset == 0 {
            // 0 tells the kernel program "not resolved"; no supported kernel has these fields
            // first.
            bail!(
                "{} is at offset 0, which the kernel program reserves",
                what()
            );
        }
        let size = self
            .types
            .size_of(member_tid)
            .map_err(btf_error)
            .with_context(|| format!("size of {}", what()))?;
        let (_, ty) = self.strip(member_tid)?;
        match expect {
            Expect::PtrTo(target) => {
                let TypeVariant::Ptr(ptr) = &ty else {
                    bail!("{} is not a pointer", what());
                };
                if size != POINTER_SIZE {
                    bail!(
                        "{} is a {size}-byte pointer, expected {POINTER_SIZE}",
                        what()
                    );
                }
                let (_, pointee) = self.strip(*ptr.tid())?;
                let name = match &pointee {
                    TypeVariant::Struct(s) => s.name().clone(),
                    TypeVariant::Fwd(f) => f.name().clone(),
                    _ => None,
                };
                if name.as_deref() != Some(target) {
                    bail!(
                        "{} points to {:?}, expected struct {target}",
                        what(),
                        name.unwrap_or_else(|| "an unnamed type".into())
                    );
                }
            }
            Expect::Int(bytes) => {
                if !matches!(ty, TypeVariant::Int(_)) {
                    bail!("{} is not an integer", what());
                }
                if size != bytes {
                    bail!("{} is {size} bytes, expected {bytes}", what());
                }
            }
        }
        Ok(offset)
    }
}

/// The kernel's internal `dev_t` (`sb->s_dev`) of a device that stat(2) reports as `st_dev`.
pub fn kernel_dev_of(st_dev: u64) -> u64 {
    kernel_dev(libc::major(st_dev), libc::minor(st_dev))
}

/// The identity the kernel program reports for a process executing `path` (symlinks followed,
/// as execve does).
///
/// The kernel reads `inode->i_sb->s_dev`; stat(2) reports whatever the file system's getattr
/// says, which differs on btrfs (each subvolume reports an anonymous device of its own, the
/// superblock has another) and on overlayfs whose layers are on different file systems (the
/// layer's device). The superblock's device is what `/proc/self/mountinfo` prints for the mount
/// the file is on (`show_mountinfo` prints `sb->s_dev`), found by the file's mount id
/// (`statx(STATX_MNT_ID)`); the inode number is the one stat reports (btrfs and overlayfs
/// report `i_ino`). Measured here: a binary on a btrfs subvolume stats as 0:42, its superblock
/// (and so the kernel program) says 0:40.
pub fn exe_id(path: &Path) -> anyhow::Result<ExeId> {
    exe_id_in(path, Path::new("/proc/self/mountinfo"))
}

/// [`exe_id`] with the mount table of another mount namespace (a process's
/// `/proc/PID/mountinfo`, for its `/proc/PID/exe`).
fn exe_id_in(path: &Path, mountinfo: &Path) -> anyhow::Result<ExeId> {
    let st = statx(path).with_context(|| format!("stat {}", path.display()))?;
    let dev = fs::read_to_string(mountinfo)
        .ok()
        .and_then(|text| superblock_dev(&text, st.stx_mnt_id))
        .unwrap_or_else(|| kernel_dev(st.stx_dev_major, st.stx_dev_minor));
    Ok(ExeId {
        dev,
        ino: st.stx_ino,
    })
}

fn statx(path: &Path) -> std::io::Result<libc::statx> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statx is plain old data; the kernel fills it.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            0,
            libc::STATX_INO | libc::STATX_MNT_ID,
            &mut st,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if st.stx_mask & libc::STATX_MNT_ID == 0 {
        st.stx_mnt_id = u64::MAX; // no mount id (before Linux 5.8): the stat device is used
    }
    Ok(st)
}

/// The kernel `dev_t` of the superblock of mount `mnt_id`: the third field of its line in a
/// mountinfo text (`ID PARENT MAJOR:MINOR ...`).
fn superblock_dev(mountinfo: &str, mnt_id: u64) -> Option<u64> {
    mountinfo.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        if f.next()?.parse::<u64>().ok()? != mnt_id {
            return None;
        }
        let (major, minor) = f.nth(1)?.split_once(':')?;
        Some(kernel_dev(major.parse().ok()?, minor.parse().ok()?))
    })
}

/// The pids of the processes running now (the numeric entries of `/proc`).
pub fn running_pids() -> std::io::Result<impl Iterator<Item = u32>> {
    Ok(fs::read_dir("/proc")?.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()))
}

/// The identity of the executable process `pid` runs (`/proc/PID/exe`, valid even when the
/// file was deleted or replaced since).
pub fn exe_id_of_pid(pid: u32) -> anyhow::Result<ExeId> {
    exe_id_in(
        &PathBuf::from(format!("/proc/{pid}/exe")),
        &PathBuf::from(format!("/proc/{pid}/mountinfo")),
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    /// The offset in bytes of `strukt.field` according to bpftool's own reading of the running
    /// kernel's BTF (`bpftool btf dump file ... format raw`), summed through anonymous members
    /// the way the kernel lays them out. An independent reader of the same BTF: offsets depend
    /// on the kernel's configuration, not its version, so no number in this file could be
    /// right on every build. `None` with a reason when bpftool cannot answer.
    fn bpftool_offset(raw: &str, strukt: &str, field: &str) -> Option<u32> {
        // [ID] KIND 'name' ... then one tab-indented line per member: 'name' type_id=N bits_offset=B
        struct Ty<'a> {
            kind: &'a str,
            name: &'a str,
            members: Vec<(&'a str, u32, u32)>,
        }
        let mut types: std::collections::HashMap<u32, Ty> = Default::default();
        let mut current = None;
        let kv = |line: &str, key: &str| -> Option<u32> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.parse().ok())
        };
        for line in raw.lines() {
            if let Some(rest) = line.strip_prefix('[') {
                let (id, rest) = rest.split_once("] ")?;
                let id: u32 = id.parse().ok()?;
                let (kind, rest) = rest.split_once(' ')?;
                let name = rest.split('\'').nth(1).unwrap_or("");
                types.insert(
                    id,
                    Ty {
                        kind,
                        name,
                        members: Vec::new(),
                    },
                );
                current = Some(id);
            } else if let (Some(id), Some(member)) = (current, line.strip_prefix('\t')) {
                let name = member.split('\'').nth(1).unwrap_or("");
                if let (Some(ty), Some(bits)) = (kv(member, "type_id="), kv(member, "bits_offset="))
                {
                    types.get_mut(&id)?.members.push((name, ty, bits));
                }
            }
        }
        fn find(types: &std::collections::HashMap<u32, Ty>, id: u32, field: &str) -> Option<u32> {
            for &(name, ty, bits) in &types.get(&id)?.members {
                if name == field {
                    return Some(bits / 8);
                }
                let inner = types.get(&ty)?;
                if name == "(anon)"
                    && matches!(inner.kind, "STRUCT" | "UNION")
                    && let Some(off) = find(types, ty, field)
                {
                    return Some(bits / 8 + off);
                }
            }
            None
        }
        let id = types
            .iter()
            .find(|(_, t)| t.kind == "STRUCT" && t.name == strukt)
            .map(|(id, _)| *id)?;
        find(&types, id, field)
    }

    #[test]
    fn offsets_resolve_on_this_kernel() {
        let started = std::time::Instant::now();
        let off = KernelOffsets::resolve().expect("resolving offsets from vmlinux BTF");
        eprintln!("{off:?} in {:?}", started.elapsed());
        for (name, value) in off.globals() {
            assert_ne!(*value, 0, "{name}");
        }
        let raw = match std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
            .output()
        {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(out) => {
                eprintln!(
                    "SKIPPED the cross-check: bpftool failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return;
            }
            Err(e) => {
                eprintln!(
                    "SKIPPED the cross-check: bpftool not runnable ({e}); `cargo xtask setup` installs it"
                );
                return;
            }
        };
        for (strukt, field, ours) in [
            ("task_struct", "mm", off.task_mm),
            ("mm_struct", "exe_file", off.mm_exe_file),
            ("file", "f_inode", off.file_inode),
            ("inode", "i_ino", off.inode_ino),
            ("inode", "i_sb", off.inode_sb),
            ("super_block", "s_dev", off.sb_dev),
        ] {
            let theirs = bpftool_offset(&raw, strukt, field)
                .unwrap_or_else(|| panic!("bpftool's dump has no {strukt}.{field}"));
            assert_eq!(
                ours, theirs,
                "{strukt}.{field}: ours {ours}, bpftool {theirs}"
            );
        }
    }

    /// The cross-check's reader on a hand-made dump: a member inside an anonymous struct at a
    /// non-zero offset is found at the sum of both offsets (as `mm_struct.exe_file` is).
    #[test]
    fn bpftool_reader_sums_anonymous_members() {
        let raw = "[1] INT 'long' size=8 bits_offset=0 nr_bits=64 encoding=(none)\n\
                   [2] STRUCT 'outer' size=64 vlen=2\n\
                   \t'a' type_id=1 bits_offset=0\n\
                   \t'(anon)' type_id=3 bits_offset=128\n\
                   [3] STRUCT '(anon)' size=16 vlen=2\n\
                   \t'b' type_id=1 bits_offset=0\n\
                   \t'c' type_id=1 bits_offset=64\n";
        assert_eq!(bpftool_offset(raw, "outer", "a"), Some(0));
        assert_eq!(bpftool_offset(raw, "outer", "c"), Some(24));
        assert_eq!(bpftool_offset(raw, "outer", "missing"), None);
    }

    #[test]
    fn missing_btf_file_is_named() {
        let err = KernelOffsets::resolve_file(Path::new("/nonexistent/vmlinux"))
            .expect_err("no such file");
        assert!(
            format!("{err:#}").contains("/nonexistent/vmlinux"),
            "{err:#}"
        );
    }

    #[test]
    fn garbage_btf_is_an_error() {
        let err = KernelOffsets::resolve_btf(&[0u8; 64], "garbage.btf").expect_err("not BTF");
        assert!(format!("{err:#}").contains("garbage.btf"), "{err:#}");
    }

    #[test]
    fn missing_struct_and_field_are_named() {
        let data = fs::read(VMLINUX_BTF).expect("vmlinux BTF");
        let btf = Btf::parse(&data, VMLINUX_BTF).expect("parse");
        let err = btf
            .member("no_such_struct_xyz", "mm", Expect::PtrTo("mm_struct"))
            .expect_err("no such struct");
        let msg = format!("{err:#}");
        assert!(msg.contains("struct no_such_struct_xyz not found"), "{msg}");
        assert!(msg.contains(VMLINUX_BTF), "{msg}");

        let err = btf
            .member("task_struct", "no_such_field", Expect::PtrTo("mm_struct"))
            .expect_err("no such field");
        let msg = format!("{err:#}");
        assert!(msg.contains("task_struct.no_such_field"), "{msg}");
        assert!(msg.contains(VMLINUX_BTF), "{msg}");

        // Wrong expectations are refused, not silently accepted.
        let err = btf
            .member("task_struct", "mm", Expect::PtrTo("file"))
            .expect_err("mm points to mm_struct");
        assert!(
            format!("{err:#}").contains("expected struct file"),
            "{err:#}"
        );
        let err = btf
            .member("super_block", "s_dev", Expect::Int(8))
            .expect_err("s_dev is 4 bytes");
        assert!(
            format!("{err:#}").contains("is 4 bytes, expected 8"),
            "{err:#}"
        );
    }

    /// A hand-built BTF blob, so the anonymous-member arithmetic and the checks are tested
    /// independently of the running kernel's layout.
    #[derive(Default)]
    struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    const KIND_INT: u32 = 1;
    const KIND_PTR: u32 = 2;
    const KIND_STRUCT: u32 = 4;
    const KIND_UNION: u32 = 5;
    const KIND_TYPEDEF: u32 = 8;

    impl BtfBuilder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn header(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32) -> u32 {
            let name = self.string(name);
            for w in [name, (kind << 24) | vlen, size_or_type] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, bytes: u32) -> u32 {
            let id = self.header(name, KIND_INT, 0, bytes);
            self.types.extend_from_slice(&(bytes * 8).to_le_bytes());
            id
        }

        fn ptr(&mut self, to: u32) -> u32 {
            self.header("", KIND_PTR, 0, to)
        }

        fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.header(name, KIND_TYPEDEF, 0, to)
        }

        /// Members: (name, type id, byte offset).
        fn aggregate(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.header(name, kind, members.len() as u32, size);
            for (m, ty, off) in members {
                let m = self.string(m);
                for w in [m, *ty, off * 8] {
                    self.types.extend_from_slice(&w.to_le_bytes());
                }
            }
            id
        }

        fn finish(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            for w in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// The six structs, with `mm_struct.exe_file` two anonymous levels down (a struct inside
    /// a union), as on recent kernels.
    fn synthetic(ino_bytes: u32) -> Vec<u8> {
        let mut b = BtfBuilder::new();
        let ulong = b.int("long unsigned int", 8);
        let uint = b.int("unsigned int", 4);
        let ino = b.int("ino_int", ino_bytes);
        let dev_t = b.typedef("dev_t", uint);
        // btfparse derives the pointer size from list_head (two pointers).
        b.aggregate(KIND_STRUCT, "list_head", 16, &[]);
        let sb = b.aggregate(
            KIND_STRUCT,
            "super_block",
            32,
            &[("s_list", ulong, 0), ("s_dev", dev_t, 16)],
        );
        let sb_ptr = b.ptr(sb);
        let inode = b.aggregate(
            KIND_STRUCT,
            "inode",
            96,
            &[
                ("i_mode", uint, 0),
                ("i_sb", sb_ptr, 40),
                ("i_ino", ino, 64),
            ],
        );
        let inode_ptr = b.ptr(inode);
        let file = b.aggregate(
            KIND_STRUCT,
            "file",
            64,
            &[("f_mode", uint, 0), ("f_inode", inode_ptr, 32)],
        );
        let file_ptr = b.ptr(file);
        let inner = b.aggregate(
            KIND_STRUCT,
            "",
            24,
            &[("pad", ulong, 0), ("exe_file", file_ptr, 16)],
        );
        let union = b.aggregate(KIND_UNION, "", 24, &[("", inner, 0), ("other", ulong, 0)]);
        let mm = b.aggregate(
            KIND_STRUCT,
            "mm_struct",
            2048,
            &[("pgd", ulong, 0), ("", union, 1000)],
        );
        let mm_ptr = b.ptr(mm);
        b.aggregate(
            KIND_STRUCT,
            "task_struct",
            4096,
            &[("state", uint, 0), ("mm", mm_ptr, 1136)],
        );
        b.finish()
    }

    #[test]
    fn offsets_sum_through_anonymous_members() {
        let off = KernelOffsets::resolve_btf(&synthetic(8), "synthetic").expect("resolve");
        assert_eq!(
            off,
            KernelOffsets {
                task_mm: 1136,
                mm_exe_file: 1016,
                file_inode: 32,
                inode_ino: 64,
                inode_sb: 40,
                sb_dev: 16,
            }
        );
    }

    #[test]
    fn wrong_member_size_is_refused() {
        let err = KernelOffsets::resolve_btf(&synthetic(4), "synthetic").expect_err("4-byte i_ino");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("inode.i_ino in synthetic is 4 bytes, expected 8"),
            "{msg}"
        );
    }

    #[test]
    fn kernel_dev_encoding() {
        // 254:0 (virtio disk): glibc st_dev 0xfe00, kernel MKDEV 0x0fe00000.
        assert_eq!(kernel_dev_of(libc::makedev(254, 0)), 0x0fe0_0000);
        assert_eq!(libc::makedev(254, 0), 0xfe00);
        // 8:17 (sdb1).
        assert_eq!(kernel_dev_of(libc::makedev(8, 17)), (8 << 20) | 17);
        // Minor numbers above 255 are split in the userspace encoding, whole in the kernel's.
        assert_eq!(kernel_dev_of(libc::makedev(0, 300)), 300);
        assert_eq!(
            kernel_dev_of(libc::makedev(259, 70000)),
            (259 << 20) | 70000
        );
        // Anonymous devices (tmpfs, proc): major 0.
        assert_eq!(kernel_dev_of(libc::makedev(0, 28)), 28);
    }

    #[test]
    fn exe_id_of_a_path_matches_proc_self_exe() {
        let me = std::env::current_exe().expect("current exe");
        let by_path = exe_id(&me).expect("stat current exe");
        assert_eq!(
            by_path,
            exe_id_of_pid(std::process::id()).expect("/proc/self/exe")
        );
        let md = fs::metadata(&me).expect("stat");
        assert_eq!(by_path.ino, md.ino());
        assert_eq!(by_path.dev, kernel_dev_of(md.dev()));
        assert!(exe_id(Path::new("/nonexistent/binary")).is_err());
    }
}
