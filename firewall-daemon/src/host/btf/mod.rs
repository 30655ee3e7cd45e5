//! The offsets of the kernel structure members the program identity walk reads
//! (`task->mm->exe_file->f_inode`, then `i_ino` and `i_sb->s_dev`: see `host::exe_id`), for the
//! running kernel.
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

use std::{fs, path::Path};

use anyhow::{Context as _, anyhow, bail};
use aya::EbpfLoader;
use btfparse::{Offset, Readable, TypeInformation, TypeVariant};
use firewall_common::identity::globals;

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

#[cfg(test)]
mod tests;
