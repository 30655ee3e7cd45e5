//! Project tasks: `cargo xtask setup | test | run | bench | install | uninstall`.
//!
//! `setup` installs every prerequisite idempotently; `test` and `run` call it first, so a fresh
//! machine needs nothing but rustup and this repository.

mod bench;
mod cgroup;
mod install;
mod package;
mod qemu;
mod sandbox;
mod setup;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Project tasks for the host firewall")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install prerequisites (apt packages, the pinned toolchain, bpf-linker, test tools).
    Setup,
    /// Set up, check formatting and lints, then run every test (needs root: tests create
    /// network namespaces and load BPF programs).
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Run the suite on these kernels instead, each booted in QEMU: a comma list of
        /// `host`, `6.1`, `6.12`, or `all` (= host,6.1,6.12). In the guests, arguments after a
        /// second `--` go to every test binary.
        #[arg(long, value_name = "LIST")]
        kernel: Option<String>,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Build and run the daemon. With --sandbox it protects a throwaway network namespace
    /// (reachable from a second one) instead of this host.
    Run {
        /// Protect a veth in a new namespace instead of the host's interfaces.
        #[arg(long)]
        sandbox: bool,
        /// Rules file (default: rules/examples/workstation.toml in the sandbox, else
        /// /etc/firewall/rules.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Extra daemon arguments (after `--`), e.g. `-- --interface eth1`.
        #[arg(last = true)]
        daemon_args: Vec<String>,
    },
    /// Benchmark against nftables and iptables side by side (receive rate over veth, reload,
    /// memory, TCP connection rate) plus BPF_PROG_TEST_RUN figures; writes BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Build and install the daemon, fwctl, the systemd unit, man pages, completions and (if
    /// absent) /etc/firewall/rules.toml; see xtask/src/install.rs for where each goes.
    Install(install::InstallArgs),
    /// Remove what `install` put there (same options), except /etc/firewall/rules.toml.
    Uninstall(install::InstallArgs),
    /// Build a Debian package (target/package/firewall-daemon_*.deb); --check installs, runs
    /// and purges it in a Debian root and runs lintian.
    Package(package::PackageArgs),
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Setup => setup::run(),
        Cmd::Test {
            no_lint,
            kernel,
            cargo_args,
        } => {
            setup::run()?;
            if !no_lint {
                cargo(&["fmt", "--all", "--check"])?;
                cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
            }
            if let Some(kernels) = kernel {
                return qemu::test(&kernels, &cargo_args);
            }
            let mut args = vec!["test", "--workspace", "--no-fail-fast"];
            args.extend(cargo_args.iter().map(String::as_str));
            cargo(&args)
        }
        Cmd::Run {
            sandbox,
            config,
            daemon_args,
        } => {
            setup::run()?;
            cargo(&["build", "--release", "-p", "firewall-daemon"])?;
            if sandbox {
                sandbox::run(config, &daemon_args)
            } else {
                // `cargo xtask run -- --config FILE` is how one passes it to a program run by
                // cargo: take it from there rather than pass the option twice.
                let given = names_config(&daemon_args);
                if given && config.is_some() {
                    bail!("--config given twice: before and after `--`");
                }
                let config = config.unwrap_or_else(|| "/etc/firewall/rules.toml".into());
                let mut command = Command::new(target_bin("firewall-daemon"));
                if given {
                    eprintln!("xtask: running the daemon on this host's interfaces");
                } else {
                    eprintln!(
                        "xtask: running the daemon on this host's interfaces with {}",
                        config.display()
                    );
                    command.arg("--config").arg(&config);
                }
                eprintln!(
                    "xtask: Ctrl-C stops the daemon; with [daemon] on_stop = \"keep\" (the \
                     default) the firewall goes on enforcing the last rules until its pins \
                     are removed (rm -r /sys/fs/bpf/firewall), with \"detach\" it is taken \
                     off. Use --sandbox to try it without touching the host."
                );
                let status = command
                    .args(&daemon_args)
                    .status()
                    .context("starting firewall-daemon")?;
                if !status.success() {
                    bail!("firewall-daemon exited with {status}");
                }
                Ok(())
            }
        }
        Cmd::Install(args) => install::install_cmd(&args),
        Cmd::Uninstall(args) => install::uninstall_cmd(&args),
        Cmd::Package(args) => package::run(&args),
        Cmd::Bench(args) => {
            setup::run()?;
            bench::run(args)
        }
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A release binary cargo built: under `CARGO_TARGET_DIR` when set (relative to the
/// workspace, as cargo takes it), else `target/`.
/// Runs `cmd` to its end; its standard output, or an error with everything it printed.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn target_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "target".into());
    workspace_root().join(target).join("release").join(name)
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Whether the daemon's own arguments (after `--`) name its rules file.
fn names_config(daemon_args: &[String]) -> bool {
    daemon_args
        .iter()
        .any(|a| a == "--config" || a.starts_with("--config="))
}

#[cfg(test)]
mod tests {
    use super::names_config;

    #[test]
    fn config_after_the_double_dash_is_seen_in_both_spellings() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(names_config(&args(&[
            "--config",
            "/etc/firewall/rules.toml"
        ])));
        assert!(names_config(&args(&[
            "--interface",
            "eth1",
            "--config=/r.toml"
        ])));
        assert!(!names_config(&args(&["--interface", "eth1"])));
        assert!(!names_config(&args(&["--configuration"])));
    }
}
