//! The guest kernels: Debian's own packages, pinned here, fetched once into
//! `target/qemu/kernels/RELEASE/` with `apt-get download` and unpacked there (nothing is
//! installed on the host).
//!
//! To bump a pin: `apt-get update`, then
//! `apt-cache search --names-only '^linux-image-6\.(1\.0-[0-9]+|12\.[0-9]+\+deb12)-amd64$'`
//! and put the newest of each series in [`KERNELS`]. Old ABI names disappear from the mirrors
//! after a while, which is when a fresh machine's download fails and says so.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

#[derive(Debug)]
pub struct Kernel {
    /// What `--kernel` calls it.
    pub name: &'static str,
    /// The Debian package; its name after `linux-image-` is the release (`uname -r`).
    pub package: &'static str,
}

/// The kernels `--kernel` knows, oldest first. 6.1: Debian 12's stock kernel, the oldest the
/// firewall supports. 6.12: Debian's backport, the newest long-term kernel packaged for 12.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.1",
        package: "linux-image-6.1.0-56-amd64",
    },
    Kernel {
        name: "6.12",
        package: "linux-image-6.12.117+deb12-amd64",
    },
];

/// Modules the tests need that Debian builds as modules: veth pairs, the clsact qdisc
/// (`sch_ingress`) and cls_bpf for tc programs where there is no TCX (before 6.6), the
/// NETLINK_SOCK_DIAG dumps the daemon seeds and closes connections with, overlayfs, and the
/// devices without a link-layer header that tests/l3.rs protects (tun, ip tunnels, wireguard).
/// A host loads them on demand through modprobe; the guest has none, so they are loaded at
/// boot.
/// Their dependencies are added from modules.dep.
pub const MODULES: &[&str] = &[
    "veth",
    "sch_ingress",
    "cls_bpf",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
    // tests/identity.rs: a program on overlayfs and on a loop-mounted btrfs (whose modules
    // come after crc32c_generic, below).
    "overlay",
    "loop",
    // tests/containers.rs: a bridge, and the nftables NAT a container engine sets up.
    // libcrc32c (which nf_conntrack and nf_tables need) asks the crypto API for crc32c by
    // name, a soft dependency modules.dep does not list: its module comes first.
    "bridge",
    "crc32c_generic",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "btrfs",
    "tun",
    "ipip",
    "ip_gre",
    "sit",
    "wireguard",
];

impl Kernel {
    pub fn release(&self) -> &'static str {
        self.package
            .strip_prefix("linux-image-")
            .unwrap_or(self.package)
    }

    pub fn find(name: &str) -> Option<&'static Kernel> {
        KERNELS.iter().find(|k| k.name == name)
    }
}

/// A kernel ready to boot.
pub struct Prepared {
    pub release: String,
    /// The uncompressed vmlinux (faster to boot under emulation), or the bzImage when its
    /// compression is not one we can undo.
    pub image: PathBuf,
    /// Modules to load, dependencies first, uncompressed.
    pub modules: Vec<PathBuf>,
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    crate::output(cmd).map(drop)
}

fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
}

fn download(kernel: &Kernel, dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(deb) = find_deb(dir, kernel.package) {
        return Ok(deb);
    }
    eprintln!("xtask: downloading {}", kernel.package);
    let fetch = || {
        run(Command::new("apt-get")
            .args(["download", "-q", kernel.package])
            .current_dir(dir))
    };
    if let Err(first) = fetch() {
        // A fresh machine may have no package lists yet.
        eprintln!("xtask: {first:#}\nxtask: retrying after apt-get update");
        run(Command::new("apt-get").args(["update", "-q"]))?;
        fetch().with_context(|| {
            format!(
                "{} is not in the apt sources: bump the pin in xtask/src/qemu/kernels.rs \
                 (apt-cache search --names-only '^linux-image-6\\.(1\\.0-[0-9]+|12\\.[0-9]+\\+deb12)-amd64$')",
                kernel.package
            )
        })?;
    }
    find_deb(dir, kernel.package).context("apt-get download left no .deb")
}

/// Fetches, unpacks and prepares `kernel` under `cache` (each step skipped when done).
pub fn prepare(kernel: &Kernel, cache: &Path) -> anyhow::Result<Prepared> {
    let release = kernel.release();
    let dir = cache.join(release);
    fs::create_dir_all(&dir)?;
    let root = dir.join("root");
    let unpacked = dir.join("unpacked.stamp");
    if !unpacked.exists() {
        let deb = download(kernel, &dir)?;
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        run(Command::new("depmod").arg("-b").arg(&root).arg(release))
            .context("depmod (Debian package kmod)")?;
        fs::write(&unpacked, "")?;
    }

    let bzimage = root.join(format!("boot/vmlinuz-{release}"));
    let vmlinux = dir.join("vmlinux");
    let image = if vmlinux.exists() {
        vmlinux
    } else {
        match extract_vmlinux(&bzimage)? {
            Some(elf) => {
                let tmp = dir.join("vmlinux.tmp");
                fs::write(&tmp, elf)?;
                fs::rename(&tmp, &vmlinux)?;
                vmlinux
            }
            None => bzimage,
        }
    };

    let modules = modules(&root, release, &dir.join("modules"))?;
    Ok(Prepared {
        release: release.to_string(),
        image,
        modules,
    })
}

/// The kernel inside a bzImage, uncompressed: booting it skips the decompressor, which takes
/// seconds under emulation (6.1, XZ: 8.0 s to the root mount against 3.1 s). `None` when the
/// payload's compression is not XZ or zstd.
fn extract_vmlinux(bzimage: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let data = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let le32 = |at: usize| -> anyhow::Result<usize> {
        let b: [u8; 4] = data
            .get(at..at + 4)
            .and_then(|s| s.try_into().ok())
            .context("bzImage header truncated")?;
        Ok(u32::from_le_bytes(b) as usize)
    };
    // Boot protocol (Documentation/arch/x86/boot.rst): the protected-mode code starts after
    // the setup sectors; payload_offset/length (>= 2.08) locate the compressed kernel in it.
    if data.get(0x202..0x206) != Some(b"HdrS") {
        bail!("{} is not a bzImage", bzimage.display());
    }
    let setup_sects = match data[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + le32(0x248)?;
    let payload = data
        .get(start..start + le32(0x24c)?)
        .context("bzImage payload out of bounds")?;
    let mut out = Vec::new();
    if payload.starts_with(b"\xfd7zXZ\0") {
        liblzma::read::XzDecoder::new(payload)
            .read_to_end(&mut out)
            .context("decompressing the XZ kernel")?;
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        ruzstd::decoding::StreamingDecoder::new(payload)
            .map_err(|e| anyhow::anyhow!("zstd kernel: {e}"))?
            .read_to_end(&mut out)
            .context("decompressing the zstd kernel")?;
    } else {
        return Ok(None);
    }
    if !out.starts_with(b"\x7fELF") {
        bail!("the kernel in {} is not an ELF file", bzimage.display());
    }
    Ok(Some(out))
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// [`MODULES`] and their dependencies in load order, decompressed into `out_dir`.
fn modules(root: &Path, release: &str, out_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let moddir = root.join("lib/modules").join(release);
    let dep = fs::read_to_string(moddir.join("modules.dep"))
        .with_context(|| format!("reading modules.dep in {}", moddir.display()))?;
    let builtin = fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let builtin: Vec<String> = builtin.lines().map(module_name).collect();
    // name -> (file, dependencies as depmod lists them: the ones loaded last first)
    let mut table = std::collections::HashMap::new();
    for line in dep.lines() {
        if let Some((file, deps)) = line.split_once(':') {
            table.insert(
                module_name(file),
                (
                    file.to_string(),
                    deps.split_whitespace()
                        .map(String::from)
                        .collect::<Vec<_>>(),
                ),
            );
        }
    }
    let mut order: Vec<String> = Vec::new();
    for &wanted in MODULES {
        if builtin.iter().any(|b| b == wanted) {
            continue;
        }
        let (file, deps) = table
            .get(wanted)
            .with_context(|| format!("module {wanted} is neither built in nor in modules.dep"))?;
        for f in deps.iter().rev().chain(std::iter::once(file)) {
            if !order.contains(f) {
                order.push(f.clone());
            }
        }
    }
    fs::create_dir_all(out_dir)?;
    let mut out = Vec::new();
    for file in order {
        let dest = out_dir.join(format!("{}.ko", module_name(&file)));
        if !dest.exists() {
            let src = moddir.join(&file);
            let raw = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            let mut ko = Vec::new();
            if file.ends_with(".xz") {
                liblzma::read::XzDecoder::new(raw.as_slice()).read_to_end(&mut ko)?;
            } else if file.ends_with(".zst") {
                ruzstd::decoding::StreamingDecoder::new(raw.as_slice())
                    .map_err(|e| anyhow::anyhow!("{file}: {e}"))?
                    .read_to_end(&mut ko)?;
            } else if file.ends_with(".ko") {
                ko = raw;
            } else {
                bail!("{file}: unknown module compression");
            }
            fs::write(&dest, ko)?;
        }
        out.push(dest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_as_the_kernel_sees_them() {
        assert_eq!(
            module_name("kernel/net/sched/sch_ingress.ko.xz"),
            "sch_ingress"
        );
        assert_eq!(module_name("kernel/drivers/net/veth.ko"), "veth");
        assert_eq!(module_name("kernel/x/foo-bar.ko.zst"), "foo_bar");
    }

    #[test]
    fn pins_name_their_release() {
        for k in KERNELS {
            assert!(k.release().ends_with("-amd64"), "{}", k.package);
            assert!(k.release().starts_with(k.name), "{}", k.package);
        }
    }
}
