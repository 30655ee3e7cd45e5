//! `firewall-daemon`: see `firewall_daemon::daemon`; its command line is in
//! `firewall_daemon::cli`.
use clap::Parser as _;
use firewall_daemon::{
    cli::{DaemonArgs, XdpModeArg},
    daemon,
};
use rules::model::XdpMode;

fn main() -> std::process::ExitCode {
    let args = DaemonArgs::parse();
    // The journal (with fields) under systemd, stderr otherwise.
    let filter = std::env::var("RUST_LOG").unwrap_or(args.log_level.clone());
    firewall_daemon::logging::init(&filter);
    // `trace` also turns on the programs' own trace messages (kernel/diagnostics.rs).
    firewall_daemon::kernel::diagnostics::set(firewall_daemon::kernel::diagnostics::wanted_by(
        &filter,
    ));
    let overrides = daemon::Overrides {
        interfaces: args.interfaces,
        xdp_mode: args.xdp_mode.map(|m| match m {
            XdpModeArg::Auto => XdpMode::Auto,
            XdpModeArg::Native => XdpMode::Native,
            XdpModeArg::Generic => XdpMode::Generic,
        }),
        control_socket: args.control_socket,
        pin_dir: args.pin_dir,
        state_dir: args.state_dir,
        cgroup: args.cgroup,
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
