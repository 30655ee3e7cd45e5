//! Kernel tracing, the daemon's side (the programs' side and the why are in
//! `firewall-ebpf/src/diagnostics.rs`): whether it is on, the level every copy of the object is
//! loaded with, and the reader that writes a generation's trace messages to the daemon's log.
//!
//! On with `firewall-daemon --log-level trace` (or any filter that says `trace`), switched at
//! run time by `fwctl debug on|off`, which loads the rules in force again with the other level.
//! Off, every loader sets aya-log's level to 0 and the messages are removed by the verifier:
//! the programs cost what they cost without them. On, the messages reach the daemon's log at
//! level info (target `firewall_ebpf`), so they show whatever `--log-level` says.

use std::{
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, Ordering},
};

use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use firewall_common::globals::{AYA_LOG_LEVEL, AYA_LOG_TRACE};

/// Whether copies of the object loaded from now on write trace messages.
static TRACING: AtomicBool = AtomicBool::new(false);

/// Turns kernel tracing on or off for the copies of the object loaded from now on.
pub fn set(on: bool) {
    TRACING.store(on, Ordering::Relaxed);
}

/// Whether kernel tracing is on.
pub fn tracing() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Whether a daemon log filter (`--log-level`) asks for trace messages.
pub fn wanted_by(filter: &str) -> bool {
    filter.to_ascii_lowercase().contains("trace")
}

/// aya-log's level for the next copy of the object: trace, or nothing.
static OFF: u8 = 0;
static ON: u8 = AYA_LOG_TRACE;

/// Sets aya-log's level on `loader`: every loader of the object calls this, since aya-log's
/// own default writes every message.
pub fn set_level(loader: &mut EbpfLoader<'_>) {
    loader.override_global(AYA_LOG_LEVEL, if tracing() { &ON } else { &OFF }, true);
}

/// Reads a generation's trace messages while it lives (the task ends when this is dropped).
pub struct Reader(tokio::task::JoinHandle<()>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts reading `ebpf`'s trace messages, if tracing is on and a runtime runs (the daemon);
/// `None` otherwise (tests and benchmarks that load the object on their own).
pub fn read(ebpf: &mut Ebpf) -> anyhow::Result<Option<Reader>> {
    if !tracing() || tokio::runtime::Handle::try_current().is_err() {
        return Ok(None);
    }
    let logger = EbpfLogger::init_with_logger(ebpf, Forward)?;
    log::debug!(
        "reading kernel trace messages (ring buffer fd {})",
        logger.as_raw_fd()
    );
    // SAFETY: the logger owns its ring buffer's descriptor, which stays open and the same
    // until the AsyncFd (which owns the logger) is dropped; flushing neither closes nor
    // replaces it.
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }?;
    Ok(Some(Reader(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))))
}

/// Passes the programs' messages on to the daemon's logger at level info, so that they show
/// with the default `--log-level` once tracing is on.
struct Forward;

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        log::logger().log(
            &log::Record::builder()
                .level(log::Level::Info)
                .target("firewall_ebpf")
                .args(format_args!(
                    "trace: {}",
                    describe(&record.args().to_string())
                ))
                .build(),
        );
    }

    fn flush(&self) {}
}

/// The programs' messages carry numbers only (see `firewall-ebpf/src/diagnostics.rs`): this
/// puts the words back. Anything it does not recognise is passed on as it came.
pub fn describe(message: &str) -> String {
    use firewall_common::Counter;
    let words: Vec<&str> = message.split_whitespace().collect();
    let number = |s: &str| s.parse::<usize>().ok();
    match words.as_slice() {
        ["drop", n] => match number(n).and_then(|i| Counter::ALL.get(i)) {
            Some(c) => format!("dropped before the rules: {}", c.name()),
            None => message.to_owned(),
        },
        ["conntrack", n] => {
            match number(n).and_then(|i| firewall_common::diagnostics::CT_ANSWERS.get(i)) {
                Some(what) => format!("connection table: {what}"),
                None => message.to_owned(),
            }
        }
        ["rules", addr, proto, port, rule, action] => {
            let proto = match number(proto) {
                Some(p) if p == firewall_common::PROTO_TCP as usize => "tcp",
                Some(p) if p == firewall_common::PROTO_UDP as usize => "udp",
                Some(p) if p == firewall_common::PROTO_ICMP as usize => "icmp",
                _ => "other",
            };
            let action = number(action)
                .and_then(|a| rules::model::Action::from_kernel(a as u32))
                .map_or_else(|| format!("action {action}"), |a| a.to_string());
            let by = match number(rule) {
                Some(r) if r == firewall_common::DEFAULT_RULE as usize => "[defaults]".to_owned(),
                Some(r) => format!("rule {}", r + 1),
                None => format!("rule {rule}"),
            };
            format!("rules: {proto} from {addr} to port {port}: {action} by {by}")
        }
        _ => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn the_programs_numbers_are_put_back_into_words() {
        let drop = firewall_common::Counter::DropMalformedL2 as u32;
        assert_eq!(
            describe(&format!("drop {drop}")),
            format!(
                "dropped before the rules: {}",
                firewall_common::Counter::DropMalformedL2.name()
            )
        );
        assert_eq!(
            describe("conntrack 5"),
            "connection table: not tracked: the rules decide"
        );
        let tcp = firewall_common::PROTO_TCP;
        let reject = firewall_common::ACTION_REJECT;
        assert_eq!(
            describe(&format!("rules 203.0.113.7 {tcp} 22 1 {reject}")),
            "rules: tcp from 203.0.113.7 to port 22: reject by rule 2"
        );
        assert_eq!(describe("something else 1"), "something else 1");
        assert_eq!(describe("drop 99999"), "drop 99999");
    }
}
