//! A self-contained initramfs: an uncompressed cpio archive (`newc`, what the kernel unpacks)
//! holding host files at their own paths, symlinks included, so that the absolute paths
//! compiled into the test binaries (`CARGO_BIN_EXE_*`, `CARGO_MANIFEST_DIR`) and the dynamic
//! loader's paths are the same in the guest.
//!
//! Uncompressed on purpose: under software emulation unpacking is a copy, while decompressing
//! 100+ MB would cost seconds of every boot.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::BufWriter,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

#[derive(Debug, Clone)]
enum Entry {
    Dir,
    /// Contents read from `src` when the archive is written.
    File {
        src: PathBuf,
        mode: u32,
    },
    Data {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink(PathBuf),
    CharDev {
        major: u32,
        minor: u32,
    },
}

/// The image's contents, keyed by absolute path; written sorted, so parents come first.
#[derive(Default, Clone)]
pub struct Image {
    entries: BTreeMap<PathBuf, Entry>,
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// `dir` joined with a symlink's target, with `.` and `..` folded (no file system access).
fn resolve_link(dir: &Path, target: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in dir.join(target).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

impl Image {
    /// Adds the directories leading to `path` (not `path` itself).
    fn parents(&mut self, path: &Path) {
        for p in path.ancestors().skip(1) {
            if p == Path::new("/") {
                break;
            }
            self.entries.entry(p.to_path_buf()).or_insert(Entry::Dir);
        }
    }

    pub fn dir(&mut self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        self.parents(path);
        self.entries.insert(path.to_path_buf(), Entry::Dir);
    }

    /// A file at `dest` with the contents of the host file `src`.
    pub fn file_from(&mut self, dest: impl AsRef<Path>, src: impl AsRef<Path>, mode: u32) {
        let dest = dest.as_ref();
        self.parents(dest);
        self.entries.insert(
            dest.to_path_buf(),
            Entry::File {
                src: src.as_ref().to_path_buf(),
                mode,
            },
        );
    }

    pub fn data(&mut self, dest: impl AsRef<Path>, data: impl Into<Vec<u8>>, mode: u32) {
        let dest = dest.as_ref();
        self.parents(dest);
        self.entries.insert(
            dest.to_path_buf(),
            Entry::Data {
                data: data.into(),
                mode,
            },
        );
    }

    pub fn symlink(&mut self, dest: impl AsRef<Path>, target: impl AsRef<Path>) {
        let dest = dest.as_ref();
        self.parents(dest);
        self.entries.insert(
            dest.to_path_buf(),
            Entry::Symlink(target.as_ref().to_path_buf()),
        );
    }

    pub fn char_dev(&mut self, dest: impl AsRef<Path>, major: u32, minor: u32) {
        let dest = dest.as_ref();
        self.parents(dest);
        self.entries
            .insert(dest.to_path_buf(), Entry::CharDev { major, minor });
    }

    /// Copies the host path `path` (file or directory, not its contents) to the same path in
    /// the image, reproducing every symlink met on the way (`/lib64` -> `usr/lib64`, a library's
    /// soname link) and what it points to.
    pub fn host_path(&mut self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        self.host_path_depth(path.as_ref(), 0)
    }

    fn host_path_depth(&mut self, path: &Path, depth: usize) -> anyhow::Result<()> {
        if depth > 40 {
            bail!("too many levels of symlinks at {}", path.display());
        }
        if !path.is_absolute() {
            bail!("{} is not an absolute path", path.display());
        }
        // The first symlink on the way (from the root) decides where the rest lives.
        let mut prefix = PathBuf::from("/");
        let mut comps = path.components().skip(1);
        while let Some(c) = comps.next() {
            prefix.push(c);
            let meta = fs::symlink_metadata(&prefix)
                .with_context(|| format!("reading {}", prefix.display()))?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&prefix)?;
                let parent = prefix.parent().unwrap_or(Path::new("/")).to_path_buf();
                let resolved = resolve_link(&parent, &target);
                if !self.entries.contains_key(&prefix) {
                    self.parents(&prefix);
                    self.entries
                        .insert(prefix.clone(), Entry::Symlink(target.clone()));
                }
                let rest: PathBuf = comps.collect();
                let next = if rest.as_os_str().is_empty() {
                    resolved
                } else {
                    resolved.join(rest)
                };
                return self.host_path_depth(&next, depth + 1);
            }
        }
        if self.entries.contains_key(path) {
            return Ok(());
        }
        let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.is_dir() {
            self.dir(path);
        } else {
            self.file_from(path, path, meta.permissions().mode() & 0o7777);
        }
        Ok(())
    }

    /// Copies a host directory tree to the same place, skipping the subdirectories for which
    /// `skip` is true.
    pub fn host_tree(&mut self, root: &Path, skip: &dyn Fn(&Path) -> bool) -> anyhow::Result<()> {
        self.host_path(root)?;
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                let path = entry?.path();
                let ty = fs::symlink_metadata(&path)?.file_type();
                if ty.is_dir() {
                    if !skip(&path) {
                        self.dir(&path);
                        stack.push(path);
                    }
                } else if ty.is_symlink() || ty.is_file() {
                    self.host_path(&path)?;
                }
            }
        }
        Ok(())
    }

    /// Adds an ELF executable's shared libraries (and the dynamic loader), as `ldd` resolves
    /// them on this host.
    pub fn libraries_of(&mut self, binary: &Path) -> anyhow::Result<()> {
        if !is_elf(binary) {
            return Ok(());
        }
        let out = Command::new("ldd")
            .arg(binary)
            .output()
            .context("running ldd (Debian package libc-bin)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            if text.contains("not a dynamic executable") || out.stderr.is_empty() {
                return Ok(());
            }
            bail!(
                "ldd {}: {}",
                binary.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for line in text.lines() {
            let line = line.trim();
            if line.contains("=> not found") {
                bail!("{}: library {line}", binary.display());
            }
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
            let path = match line.split_once("=> ") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                self.host_path(p)?;
            }
        }
        Ok(())
    }

    /// Writes the archive.
    pub fn write(&self, dest: &Path) -> anyhow::Result<u64> {
        let tmp = dest.with_extension("tmp");
        let mut w = CpioWriter::new(BufWriter::with_capacity(
            1 << 20,
            File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        ));
        for (path, entry) in &self.entries {
            let name = path
                .strip_prefix("/")
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned();
            match entry {
                Entry::Dir => w.entry(&name, 0o040_755, 0, 0, &[])?,
                Entry::Data { data, mode } => w.entry(&name, 0o100_000 | mode, 0, 0, data)?,
                Entry::File { src, mode } => {
                    let data =
                        fs::read(src).with_context(|| format!("reading {}", src.display()))?;
                    w.entry(&name, 0o100_000 | mode, 0, 0, &data)?
                }
                Entry::Symlink(target) => w.entry(
                    &name,
                    0o120_777,
                    0,
                    0,
                    target.as_os_str().as_encoded_bytes(),
                )?,
                Entry::CharDev { major, minor } => {
                    w.entry(&name, 0o020_600, *major, *minor, &[])?
                }
            }
        }
        let size = w.finish()?;
        fs::rename(&tmp, dest)?;
        Ok(size)
    }
}

/// The cpio "new ASCII" format (`070701`) the kernel's initramfs unpacker reads.
struct CpioWriter<W: std::io::Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: std::io::Write> CpioWriter<W> {
    fn new(out: W) -> Self {
        Self {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> std::io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        rdev_major: u32,
        rdev_minor: u32,
        data: &[u8],
    ) -> anyhow::Result<()> {
        let size = u32::try_from(data.len()).context("file larger than 4 GiB in the cpio")?;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // dev major
            0, // dev minor
            rdev_major,
            rdev_minor,
            name.len() + 1,
            0, // check
        );
        self.ino += 1;
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()?;
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<u64> {
        self.entry("TRAILER!!!", 0, 0, 0, &[])?;
        self.out.flush()?;
        Ok(self.written)
    }
}

/// `objcopy --strip-debug` into a cache under `cache` (debug info is most of a test binary's
/// size; symbols stay, so panics still name functions). Returns the stripped copy's path.
pub fn stripped(binary: &Path, cache: &Path) -> anyhow::Result<PathBuf> {
    let rel = binary.strip_prefix("/").unwrap_or(binary);
    let dest = cache.join(rel);
    let src_meta = fs::metadata(binary).with_context(|| format!("reading {}", binary.display()))?;
    if let Ok(m) = fs::metadata(&dest)
        && m.mtime() >= src_meta.mtime()
    {
        return Ok(dest);
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(binary)
        .arg(&dest)
        .status()
        .context("running objcopy (Debian package binutils)")?;
    if !status.success() {
        bail!("objcopy --strip-debug {} failed", binary.display());
    }
    Ok(dest)
}

pub fn mode_of(path: &Path) -> u32 {
    fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o755)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned_newc() {
        let mut w = CpioWriter::new(Vec::new());
        w.entry("a", 0o100_644, 0, 0, b"xyz").expect("entry");
        // 110-byte header, "a\0" (ends aligned), 3 data bytes padded to 4.
        assert_eq!(w.written, 116);
        assert!(w.out.starts_with(b"070701"));
        assert_eq!(&w.out[110..112], b"a\0");
        assert_eq!(&w.out[112..116], b"xyz\0");
        assert_eq!(w.finish().expect("finish") % 4, 0);
    }

    #[test]
    fn symlink_targets_fold_dots() {
        assert_eq!(
            resolve_link(Path::new("/usr/lib64"), Path::new("../lib/x/ld.so")),
            PathBuf::from("/usr/lib/x/ld.so")
        );
        assert_eq!(
            resolve_link(Path::new("/"), Path::new("usr/lib")),
            PathBuf::from("/usr/lib")
        );
        assert_eq!(
            resolve_link(Path::new("/lib"), Path::new("/etc/x")),
            PathBuf::from("/etc/x")
        );
    }
}
