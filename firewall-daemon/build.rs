//! Compiles `firewall-ebpf` for the BPF target with the pinned toolchain (see
//! rust-toolchain.toml) and leaves the object in OUT_DIR for `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// The eBPF side must be built by the same rustc as the rest (its LLVM must match
/// bpf-linker's); `RUSTC_BOOTSTRAP=1` lets that stable toolchain use `-Z build-std=core`.
const EBPF_TOOLCHAIN: &str = "1.98.0";

fn main() -> anyhow::Result<()> {
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    // aya-build turns every line the nested cargo prints on stderr into a cargo warning: its
    // progress ("Compiling ...", "Finished ...") made every build of the daemon print dozens
    // of them. Quiet, it prints only what matters: compiler messages and errors.
    // SAFETY: as above.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "firewall-ebpf")
        .ok_or_else(|| anyhow!("firewall-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?
        .to_string();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
