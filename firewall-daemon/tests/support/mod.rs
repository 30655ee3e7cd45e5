#![allow(
    dead_code,
    reason = "each test binary includes all of support and uses a part of it"
)]
pub use firewall_sandbox::bpffs;
pub mod cgroup;
pub mod daemon;
pub mod flood;
pub mod frame;
pub mod frames;
pub mod helper;
pub mod host;
pub mod lab;
pub mod netns;
pub mod rules;

/// How much slower than this machine the tests run: 8 in a guest under QEMU's software
/// emulation (`cargo xtask test --kernel`, which sets XTASK_QEMU_ACCEL), else 1. Only waits
/// are scaled by it, never what a test asserts about the firewall's behaviour.
pub fn slowdown() -> u32 {
    match std::env::var("XTASK_QEMU_ACCEL").as_deref() {
        Ok("tcg") => 8,
        _ => 1,
    }
}

/// How far a guest's kernel timers may run ahead of its CLOCK_MONOTONIC: under QEMU's software
/// emulation a socket timeout of 1.5 s has been measured to end slightly before 1.5 s had
/// passed on the clock the test reads. Zero on a real kernel, where a timeout never ends
/// early.
pub fn timer_slack() -> std::time::Duration {
    if slowdown() > 1 {
        std::time::Duration::from_millis(100)
    } else {
        std::time::Duration::ZERO
    }
}

/// Whether a counter is the decision log's (`log_events`, `log_over_budget`, `log_ring_full`).
/// The verdict tests run rule sets that log their denials (`[log] denied` is on by default), so
/// the log's code runs under them; but what it counts depends on a budget in time that no
/// reference models, so they leave these counters out. `tests/decision_log.rs` tests them.
pub fn is_log_counter(name: &str) -> bool {
    name.starts_with("log_")
}
