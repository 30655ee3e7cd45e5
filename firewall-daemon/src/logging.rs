//! Where the daemon's log goes: structured entries in the systemd journal when it runs under
//! systemd (its stderr is the journal stream), plain lines on stderr otherwise.
//!
//! Events about connections and rules carry fields (`RULE`, `ACTION`, `DIRECTION`, `PROTO`,
//! `LOCAL_ADDR`, `LOCAL_PORT`, `REMOTE_ADDR`, `REMOTE_PORT`, `INTERFACE`, `GENERATION`) as
//! `log` key-values, which the journal stores as fields:
//! `journalctl -u firewall-daemon ACTION=reject` finds them.

/// Installs the logger. `filter` is an env_logger filter (`info`, `debug`,
/// `firewall_daemon=debug`); the journal gets its overall level.
pub fn init(filter: &str) {
    let stderr = env_logger::Builder::new()
        .parse_filters(filter)
        .format_timestamp(None)
        .build();
    let level = stderr.filter();
    if systemd_journal_logger::connected_to_journal()
        && let Ok(journal) = systemd_journal_logger::JournalLog::new()
        && journal
            .with_syslog_identifier("firewall-daemon".into())
            .install()
            .is_ok()
    {
        log::set_max_level(level);
        return;
    }
    log::set_max_level(level);
    let _ = log::set_boxed_logger(Box::new(stderr));
}
