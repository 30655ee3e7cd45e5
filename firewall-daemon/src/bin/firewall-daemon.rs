//! `firewall-daemon`: see `firewall_daemon::daemon`.
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use firewall_daemon::{daemon, model::XdpMode};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Auto,
    Native,
    Generic,
}

/// Host firewall daemon: compiles rules.toml into an XDP program and keeps it in force.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  \
    firewall-daemon --config /etc/firewall/rules.toml\n  \
    firewall-daemon --config rules.toml --interface veth0 --xdp-mode generic \\\n    \
    --pin-dir /sys/fs/bpf/fw-test --control-socket /tmp/fw.sock\n\n\
    Signals: SIGHUP reloads the rules (the old ones stay in force if the file is invalid); \
    SIGTERM/SIGINT detach and exit."
)]
struct Args {
    /// Rules file.
    #[arg(long, short, default_value = "/etc/firewall/rules.toml")]
    config: PathBuf,
    /// Interface to protect (repeatable); overrides [daemon] interfaces.
    #[arg(long = "interface", short = 'i')]
    interfaces: Vec<String>,
    /// Overrides [daemon] xdp_mode.
    #[arg(long, value_enum)]
    xdp_mode: Option<Mode>,
    /// Overrides [daemon] control_socket.
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Overrides [daemon] pin_dir (must be on a bpf filesystem).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace (RUST_LOG also works).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    env_logger::Builder::new()
        .parse_filters(&std::env::var("RUST_LOG").unwrap_or(args.log_level.clone()))
        .format_timestamp(None)
        .init();
    let overrides = daemon::Overrides {
        interfaces: args.interfaces,
        xdp_mode: args.xdp_mode.map(|m| match m {
            Mode::Auto => XdpMode::Auto,
            Mode::Native => XdpMode::Native,
            Mode::Generic => XdpMode::Generic,
        }),
        control_socket: args.control_socket,
        pin_dir: args.pin_dir,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("firewall-daemon: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(daemon::run(args.config, overrides)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("firewall-daemon: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
