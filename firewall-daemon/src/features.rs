//! What the running kernel offers, probed once at start-up.
//!
//! The firewall needs a fixed set of program types, map types and helpers; a kernel without
//! one of them gets a start-up error naming what is missing instead of a verifier log. What
//! differs between supported kernels (TCX, sock_diag modules, SOCK_DESTROY) is not probed
//! here but recorded where it is used, and `fwctl status` reports it.

use anyhow::bail;
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

/// The oldest kernel the test matrix runs on (Debian 12's); see README "Supported kernels".
pub const OLDEST_TESTED: &str = "6.1";

/// The running kernel's release, as `uname -r` prints it.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Fails, naming every missing piece, if the kernel lacks something the datapath needs.
pub fn check_required() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for (ty, what) in [
        (ProgramType::Xdp, "XDP programs"),
        (ProgramType::SchedClassifier, "tc (sched_cls) programs"),
    ] {
        if !is_program_supported(ty).unwrap_or(false) {
            missing.push(what);
        }
    }
    for (ty, what) in [
        (MapType::Hash, "hash maps"),
        (MapType::Array, "array maps"),
        (MapType::PerCpuArray, "per-CPU array maps"),
        (MapType::LruHash, "LRU hash maps"),
        (MapType::LpmTrie, "LPM trie maps"),
    ] {
        if !is_map_supported(ty).unwrap_or(false) {
            missing.push(what);
        }
    }
    for (helper, what) in [
        (BpfHelper::BPF_FUNC_ktime_get_ns, "bpf_ktime_get_ns"),
        (BpfHelper::BPF_FUNC_xdp_adjust_head, "bpf_xdp_adjust_head"),
        (BpfHelper::BPF_FUNC_xdp_adjust_tail, "bpf_xdp_adjust_tail"),
    ] {
        if !is_helper_supported(ProgramType::Xdp, helper).unwrap_or(false) {
            missing.push(what);
        }
    }
    if !missing.is_empty() {
        bail!(
            "this kernel ({}) lacks what the firewall needs: {}; supported kernels are Linux {} \
             and later",
            release(),
            missing.join(", "),
            OLDEST_TESTED
        );
    }
    Ok(())
}
