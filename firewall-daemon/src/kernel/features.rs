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

/// (major, minor) of a release string such as "6.1.0-56-amd64".
fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether `release` is older than [`OLDEST_TESTED`] (unknown: no).
pub fn older_than_tested(release: &str) -> bool {
    let oldest = version(OLDEST_TESTED).unwrap_or((0, 0));
    version(release).is_some_and(|v| v < oldest)
}

/// Fails, naming every missing piece, if the kernel lacks something the datapath needs;
/// warns on a kernel older than any the tests run on.
pub fn check_required() -> anyhow::Result<()> {
    let release = release();
    if older_than_tested(&release) {
        log::warn!(
            "kernel {release} is older than the oldest tested ({OLDEST_TESTED}); \
             the firewall may work but this is unverified"
        );
    }
    let mut missing = Vec::new();
    for (ty, what) in [
        (ProgramType::Xdp, "XDP programs"),
        (ProgramType::SchedClassifier, "tc (sched_cls) programs"),
        (
            ProgramType::CgroupSockAddr,
            "cgroup socket-address programs (outbound rules)",
        ),
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
        (
            BpfHelper::BPF_FUNC_ktime_get_coarse_ns,
            "bpf_ktime_get_coarse_ns",
        ),
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
            release,
            missing.join(", "),
            OLDEST_TESTED
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_compare_by_major_and_minor() {
        assert!(older_than_tested("5.15.0-91-generic"));
        assert!(older_than_tested("4.19.0"));
        assert!(!older_than_tested("6.1.0-56-amd64"));
        assert!(!older_than_tested("6.12.117+deb12-amd64"));
        assert!(!older_than_tested("6.18.44-fc-v595"));
        assert!(!older_than_tested("7.0"));
        assert!(!older_than_tested("unknown"));
    }

    #[test]
    fn this_kernel_has_what_the_firewall_needs() {
        check_required().expect("the test machine's kernel runs the firewall");
    }
}
