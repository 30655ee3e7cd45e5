/// The eBPF binary is linked by `bpf-linker`, which cargo does not know about: rebuild when the
/// linker changes (for instance after `cargo xtask setup` upgraded it).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
