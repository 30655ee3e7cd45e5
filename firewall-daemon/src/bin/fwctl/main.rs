//! `fwctl`: list, check and reload the firewall's rules; show its status. The command line
//! (flags, exit codes, help) is defined in `firewall_daemon::cli`.
use std::process::ExitCode;

use clap::Parser as _;
use firewall_daemon::{
    cli::{FwctlArgs as Args, FwctlCmd as Cmd, SetCmd, exit},
    control::{ClientError, Request},
};

/// Every line fwctl prints goes through [`print_line`]: std's `println!` panics when stdout is
/// closed (`fwctl conns | head -1`). This one, shadowing it, ends fwctl quietly instead.
macro_rules! println {
    ($($arg:tt)*) => {
        print_line(format_args!($($arg)*))
    };
}

/// Writes one line to stdout. A reader that went away (EPIPE; Rust ignores SIGPIPE) ends
/// fwctl with success, as a pager or `head` that has seen enough expects; another write error
/// ends it with a message.
fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("fwctl: writing the output: {e}");
        std::process::exit(i32::from(exit::INVALID));
    }
}

mod check;
mod client;
mod edit;
mod explain;
mod monitor;
mod render;

use check::check;
use client::{decode, down_status, request};
use render::{esc, print_confirm, print_conns, print_list, print_reload, print_status};

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            // The daemon's messages name files, rules and programs: one escaped line each.
            for line in e.to_string().lines() {
                eprintln!("fwctl: {}", esc(line));
            }
            if let Some(hint) = hint(&e) {
                eprintln!("fwctl: {hint}");
            }
            if let (Cmd::Status { json, .. }, Failure::Client(c)) = (&args.cmd, &e)
                && !matches!(c, ClientError::Permission { .. })
            {
                down_status(&args, &e, *json);
            } else if wants_json(&args.cmd) {
                // Scripts read stdout: the error goes there too, as JSON.
                render::print_json(&serde_json::json!({
                    "ok": false,
                    "error": e.to_string(),
                    "exit": exit_code(&e),
                }));
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &Failure) -> u8 {
    match e {
        Failure::Client(ClientError::Permission { .. }) => exit::PERMISSION,
        Failure::Client(
            ClientError::NoSocket { .. }
            | ClientError::Refused { .. }
            | ClientError::Io { .. }
            | ClientError::NoAnswer { .. },
        ) => exit::UNREACHABLE,
        _ => exit::INVALID,
    }
}

/// What to do about an error, when there is something to say beyond the error itself.
fn hint(e: &Failure) -> Option<String> {
    let systemd = "`systemctl status firewall-daemon` (or `journalctl -u firewall-daemon`) \
                   shows whether the service runs and why it stopped";
    match e {
        Failure::Client(ClientError::NoSocket { .. } | ClientError::Refused { .. }) => {
            Some(format!("hint: {systemd}"))
        }
        Failure::Client(ClientError::Io { .. }) => {
            Some(format!("hint: the daemon did not answer; {systemd}"))
        }
        Failure::Client(ClientError::NoAnswer { .. }) => Some(format!(
            "hint: it may still be working on the request (`fwctl status` shows the rules in \
             force once it is done); {systemd}"
        )),
        Failure::Client(ClientError::Permission { .. }) => Some(
            "hint: use sudo, or set [daemon] control_group in the rules file and add the user \
             to that group (usermod -aG GROUP USER; takes effect at the next login)"
                .into(),
        ),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Other(String),
}

/// Whether the command prints JSON (`--json`).
fn wants_json(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::List { json }
        | Cmd::Status { json, .. }
        | Cmd::Reload { json, .. }
        | Cmd::Confirm { json }
        | Cmd::Debug { json, .. }
        | Cmd::Conns { json }
        | Cmd::Dns { json }
        | Cmd::Check { json, .. }
        | Cmd::Explain { json, .. }
        | Cmd::Ports { json }
        | Cmd::Monitor { json, .. } => *json,
        Cmd::Set(SetCmd::Add { json, .. })
        | Cmd::Set(SetCmd::Del { json, .. })
        | Cmd::Set(SetCmd::Flush { json, .. })
        | Cmd::Set(SetCmd::List { json, .. }) => *json,
        Cmd::Add { .. } | Cmd::Insert { .. } | Cmd::Delete { .. } => false,
    }
}

fn run(args: &Args) -> Result<ExitCode, Failure> {
    match &args.cmd {
        Cmd::Check {
            file,
            json,
            diff,
            force,
        } => return check(args, file, *json, *diff, *force),
        Cmd::List { json } => show(args, Request::List, *json, print_list)?,
        Cmd::Status { json, all } => show(args, Request::Status, *json, |s| print_status(s, *all))?,
        Cmd::Reload {
            json,
            recheck,
            dry_run,
            confirm,
            force,
        } => show(
            args,
            Request::Reload {
                recheck: *recheck,
                dry_run: *dry_run,
                confirm_secs: *confirm,
                force: *force,
                caller: firewall_daemon::explain::ssh_caller(),
                file: None,
            },
            *json,
            print_reload,
        )?,
        Cmd::Confirm { json } => show(args, Request::Confirm, *json, print_confirm)?,
        Cmd::Debug { state, json } => show(
            args,
            Request::Debug { on: state == "on" },
            *json,
            render::print_debug,
        )?,
        Cmd::Conns { json } => show(args, Request::Conns, *json, print_conns)?,
        Cmd::Dns { json } => show(args, Request::Dns, *json, render::print_dns)?,
        Cmd::Explain { json, .. } => explain::explain(args, *json)?,
        Cmd::Ports { json } => show(args, Request::Ports, *json, explain::print_ports)?,
        Cmd::Monitor { .. } => monitor::run(args)?,
        Cmd::Add { rule, edit } => return edit::run(args, edit::Change::Add(rule, None), edit),
        Cmd::Insert {
            position,
            rule,
            edit,
        } => {
            let before = usize::try_from(*position).unwrap_or(usize::MAX);
            return edit::run(args, edit::Change::Add(rule, Some(before)), edit);
        }
        Cmd::Delete { rule, edit } => return edit::run(args, edit::Change::Delete(rule), edit),
        Cmd::Set(SetCmd::Add {
            set,
            members,
            for_,
            force,
            json,
        }) => show(
            args,
            Request::SetAdd {
                set: set.clone(),
                members: members.clone(),
                for_secs: for_
                    .as_deref()
                    .map(|t| {
                        rules::config::positive_duration_secs(t)
                            .map_err(|e| Failure::Other(format!("--for {t:?} {e}")))
                    })
                    .transpose()?,
                force: *force,
                caller: firewall_daemon::explain::ssh_caller(),
            },
            *json,
            render::print_set_change,
        )?,
        Cmd::Set(SetCmd::Del { set, members, json }) => show(
            args,
            Request::SetDel {
                set: set.clone(),
                members: members.clone(),
            },
            *json,
            render::print_set_change,
        )?,
        Cmd::Set(SetCmd::Flush { set, json }) => show(
            args,
            Request::SetFlush { set: set.clone() },
            *json,
            render::print_set_change,
        )?,
        Cmd::Set(SetCmd::List { set, json }) => show(
            args,
            Request::SetList { set: set.clone() },
            *json,
            |sets: &Vec<_>| render::print_set_list(sets),
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends `req` and prints the answer as JSON or through `print`.
fn show<T: serde::de::DeserializeOwned>(
    args: &Args,
    req: Request,
    json: bool,
    print: impl Fn(&T),
) -> Result<(), Failure> {
    let v = request(args, req)?;
    if json {
        println!("{v:#}");
    } else {
        print(&decode(v)?);
    }
    Ok(())
}
