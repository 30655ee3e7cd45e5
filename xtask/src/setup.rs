//! Prerequisites, installed idempotently: each step checks first and does nothing when its
//! result is already there, so `cargo xtask test` can call this on every run.

use std::process::Command;

use anyhow::{Context as _, bail};

/// Must match rust-toolchain.toml: aya 0.16 needs >= 1.98, and bpf-linker is built against the
/// LLVM this rustc ships (22).
const TOOLCHAIN: &str = "1.98.0";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM: &str = "22";

/// Debian packages: LLVM for building bpf-linker; iproute2/util-linux for namespaces and
/// nsenter; nmap for the scanner tests; netsniff-ng, nftables, iptables, xdp-tools (the
/// xdp-filter peer) and ethtool (GRO for the live-frame generator) for benchmarks;
/// systemd (systemd-analyze), man-db and groff-base for the install tests.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "util-linux",
    "nmap",
    "netsniff-ng",
    "nftables",
    "iptables",
    "xdp-tools",
    "ethtool",
    "bpftool",
    "systemd",
    "man-db",
    "groff-base",
    // test --kernel (xtask/src/qemu.rs): the emulator, and depmod for the guests' modules.
    "qemu-system-x86",
    "kmod",
    // tests/identity.rs: program identity on a loop-mounted btrfs.
    "btrfs-progs",
];

pub fn run() -> anyhow::Result<()> {
    apt_packages()?;
    toolchain()?;
    bpf_linker()?;
    Ok(())
}

fn ok(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask setup: {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        bail!(
            "missing packages {}: run `sudo cargo xtask setup` (or install them with apt-get)",
            missing.join(" ")
        );
    }
    run_cmd(Command::new("apt-get").arg("update").arg("-q"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn toolchain() -> anyhow::Result<()> {
    let have = Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let has_src = have
        .as_ref()
        .map(|sysroot| {
            std::path::Path::new(sysroot)
                .join("lib/rustlib/src/rust/library")
                .exists()
        })
        .unwrap_or(false);
    if has_src {
        return Ok(());
    }
    run_cmd(Command::new("rustup").args([
        "toolchain",
        "install",
        TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src,clippy,rustfmt",
    ]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let current = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    if current.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    // Built from crates.io against Debian's LLVM (no prebuilt download needed).
    run_cmd(
        Command::new("cargo")
            .args([
                &format!("+{TOOLCHAIN}"),
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM}"),
            ])
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM}")),
    )?;
    if !ok(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker installed but not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}
