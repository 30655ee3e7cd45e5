//! `fwctl`: list, check and reload the firewall's rules; show its status.
//!
//! Exit codes: 0 success; 1 the rules file is invalid (`check`) or the daemon refused the
//! request (for instance a reload of an invalid file); 2 usage error; 3 the daemon cannot be
//! reached; 4 permission denied.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use firewall_daemon::{
    compile, config,
    control::{self, ClientError, ConnsData, ListData, ReloadData, Request, StatusData},
    model::Direction,
};

const DEFAULT_SOCKET: &str = "/run/firewall/control.sock";

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Control the host firewall daemon",
    after_help = "Examples:\n  \
    fwctl status\n  fwctl list --json\n  fwctl check /etc/firewall/rules.toml\n  fwctl reload\n  \
    fwctl conns\n\n\
    Exit codes: 0 ok, 1 invalid rules or request refused, 2 usage, 3 daemon unreachable, \
    4 permission denied."
)]
struct Args {
    /// Control socket of the daemon (default: [daemon] control_socket of --config, else
    /// /run/firewall/control.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Rules file whose [daemon] control_socket to use.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Rules in force, in order, with how many packets each decided.
    #[command(after_help = "Example:\n  fwctl list\n  fwctl list --json | jq '.rules[0]'")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Interfaces and XDP mode, rule counts, defaults and datapath counters.
    #[command(after_help = "Example:\n  fwctl status --json | jq .counters")]
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Re-read the daemon's rules file and switch to it atomically; an invalid file changes
    /// nothing and its error is printed.
    #[command(after_help = "Example:\n  fwctl reload\n  fwctl reload --recheck")]
    Reload {
        #[arg(long)]
        json: bool,
        /// Also re-judge tracked inbound connections under the new rules, and end those the
        /// new rules deny: the host's socket is closed and their packets get the denying
        /// rule's action from then on.
        #[arg(long)]
        recheck: bool,
    },
    /// Tracked connections: protocol, both endpoints, state, age, time left, packets and
    /// bytes each way, and what admitted them (like `conntrack -L`).
    #[command(
        after_help = "Example:\n  fwctl conns\n  fwctl conns --json | jq '.connections[] | select(.state == \"ESTABLISHED\")'"
    )]
    Conns {
        #[arg(long)]
        json: bool,
    },
    /// Validate a rules file without touching the running firewall (exit 1 if invalid).
    #[command(after_help = "Example:\n  fwctl check /etc/firewall/rules.toml")]
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fwctl: {e}");
            let code = match e {
                Failure::Client(ClientError::Permission { .. }) => 4,
                Failure::Client(
                    ClientError::NoSocket { .. }
                    | ClientError::Refused { .. }
                    | ClientError::Io { .. },
                ) => 3,
                _ => 1,
            };
            ExitCode::from(code)
        }
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

fn socket_path(args: &Args) -> Result<PathBuf, Failure> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    if let Some(c) = &args.config {
        let rs = config::load(c).map_err(|e| Failure::Other(e.to_string()))?;
        return Ok(rs.daemon.control_socket);
    }
    Ok(PathBuf::from(DEFAULT_SOCKET))
}

fn request(args: &Args, req: Request) -> Result<serde_json::Value, Failure> {
    let resp = control::call(&socket_path(args)?, &req, Duration::from_secs(30))?;
    if !resp.ok {
        let msg = resp.error.unwrap_or_else(|| "request refused".into());
        if msg.starts_with("permission denied") {
            return Err(Failure::Client(ClientError::Permission {
                path: socket_path(args)?.display().to_string(),
            }));
        }
        return Err(Failure::Refused(msg));
    }
    Ok(resp.data.unwrap_or(serde_json::Value::Null))
}

fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| Failure::Other(format!("unexpected response: {e}")))
}

fn run(args: &Args) -> Result<ExitCode, Failure> {
    match &args.cmd {
        Cmd::Check { file } => return Ok(check(file)),
        Cmd::List { json } => show(args, Request::List, *json, print_list)?,
        Cmd::Status { json } => show(args, Request::Status, *json, print_status)?,
        Cmd::Reload { json, recheck } => show(
            args,
            Request::Reload { recheck: *recheck },
            *json,
            print_reload,
        )?,
        Cmd::Conns { json } => show(args, Request::Conns, *json, print_conns)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends `req` and prints the answer as JSON or through `print`.
fn show<T: serde::de::DeserializeOwned>(
    args: &Args,
    req: Request,
    json: bool,
    print: fn(&T),
) -> Result<(), Failure> {
    let v = request(args, req)?;
    if json {
        println!("{v:#}");
    } else {
        print(&decode(v)?);
    }
    Ok(())
}

fn check(file: &std::path::Path) -> ExitCode {
    let rs = match config::load(file) {
        Ok(rs) => rs,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = compile::compile(&rs) {
        eprintln!("{}: {e}", file.display());
        return ExitCode::FAILURE;
    }
    for w in &rs.warnings {
        println!("warning: {w}");
    }
    let out: Vec<_> = rs
        .rules
        .iter()
        .filter(|r| r.direction == Direction::Out)
        .collect();
    println!(
        "{}: OK, {} rules ({} inbound, {} outbound); default inbound {}",
        file.display(),
        rs.rules.len(),
        rs.rules.len() - out.len(),
        out.len(),
        rs.defaults.inbound
    );
    for r in out {
        println!(
            "note: rule {} ({:?}, line {}) is outbound: parsed, but not enforced by this version",
            r.index + 1,
            r.name,
            r.origin.line
        );
    }
    ExitCode::SUCCESS
}

/// Fits a cell into `width` columns, marking what was cut.
fn cell(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(width - 1).collect();
        t.push('…');
        t
    }
}

fn dash(v: &[String]) -> String {
    if v.is_empty() {
        "any".into()
    } else {
        v.join(",")
    }
}

fn print_list(l: &ListData) {
    println!("rules from {}", l.source);
    println!(
        "{:>4}  {:<28} {:<4} {:<5} {:<14} {:<28} {:<8} {:>10}",
        "#", "NAME", "DIR", "PROTO", "PORTS", "REMOTE", "ACTION", "PACKETS"
    );
    for r in &l.rules {
        let note = if r.enforced {
            ""
        } else {
            "  (not enforced yet)"
        };
        println!(
            "{:>4}  {:<28} {:<4} {:<5} {:<14} {:<28} {:<8} {:>10}{note}",
            r.number,
            cell(&r.name, 28),
            r.direction.to_string(),
            r.proto.to_string(),
            cell(&dash(&r.ports), 14),
            cell(&dash(&r.remote), 28),
            r.action.to_string(),
            r.hits
        );
    }
    println!(
        "default: inbound {}, outbound {} (not enforced yet); non-first fragments: {}",
        l.defaults.inbound, l.defaults.outbound, l.defaults.fragments
    );
}

fn print_status(s: &StatusData) {
    println!(
        "firewall-daemon {} (pid {}), up {}s",
        s.version, s.pid, s.uptime_secs
    );
    println!("rules file:  {}", s.config);
    println!("pin dir:     {}", s.pin_dir);
    for i in &s.interfaces {
        println!("interface:   {} (XDP {} mode)", i.name, i.mode);
    }
    println!(
        "rules:       {} ({} inbound enforced, {} outbound not enforced yet), generation {}",
        s.rules, s.inbound_rules, s.outbound_rules_not_enforced, s.generation
    );
    println!(
        "defaults:    inbound {}, outbound {}, fragments {}",
        s.defaults.inbound, s.defaults.outbound, s.defaults.fragments
    );
    if let Some(r) = &s.last_reload {
        println!("last reload: {r}");
    }
    let c = &s.conntrack;
    println!(
        "connections: {} confirmed (of {}), {} unconfirmed (of {}), {} evicted; {} seeded at start{}",
        c.confirmed,
        c.confirmed_capacity,
        c.unconfirmed,
        c.unconfirmed_capacity,
        c.evicted,
        c.seeded_at_start,
        if c.adopted {
            "; adopted the pinned state of a previous daemon"
        } else {
            ""
        }
    );
    println!("counters:");
    for (k, v) in &s.counters {
        println!("  {k:<26} {v}");
    }
    for w in &s.warnings {
        println!("warning: {w}");
    }
}

fn print_reload(d: &ReloadData) {
    if d.unchanged() {
        println!(
            "reloaded: no changes ({} rules, generation {})",
            d.rules, d.generation
        );
    } else {
        println!(
            "reloaded in {} ms: {} rules in force, generation {}",
            d.took_ms, d.rules, d.generation
        );
        for a in &d.added {
            println!("  + {a}");
        }
        for r in &d.removed {
            println!("  - {r}");
        }
        if d.reordered {
            println!("  ~ rules reordered");
        }
        for s in &d.settings {
            println!("  * {s}");
        }
    }
    for w in &d.warnings {
        println!("warning: {w}");
    }
    if d.rechecked {
        if d.ended.is_empty() {
            println!("recheck: every tracked connection is still allowed");
        } else {
            println!(
                "recheck: ended {} connection(s) the new rules deny:",
                d.ended.len()
            );
            for e in &d.ended {
                println!("  x {e}");
            }
        }
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        0..1024 => format!("{b}B"),
        1024..1_048_576 => format!("{:.1}K", b as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1}M", b as f64 / 1_048_576.0),
        _ => format!("{:.1}G", b as f64 / 1_073_741_824.0),
    }
}

fn print_conns(d: &ConnsData) {
    if d.connections.is_empty() {
        println!("no tracked connections");
        return;
    }
    let w = |f: fn(&control::ConnView) -> usize, min: usize| {
        d.connections.iter().map(f).max().unwrap_or(0).max(min)
    };
    let wl = w(|c| c.local.len(), 5);
    let wr = w(|c| c.remote.len(), 6);
    println!(
        "{:<6} {:<wl$} {:<wr$} {:<11} {:>8} {:>9} {:>15} {:>17}  ADMITTED BY",
        "PROTO", "LOCAL", "REMOTE", "STATE", "AGE", "TIMEOUT", "PKTS IN/OUT", "BYTES IN/OUT"
    );
    for c in &d.connections {
        let state = if c.denied {
            format!("{}!", c.state)
        } else {
            c.state.clone()
        };
        println!(
            "{:<6} {:<wl$} {:<wr$} {:<11} {:>7}s {:>8}s {:>15} {:>17}  {}{}",
            c.proto,
            c.local,
            c.remote,
            state,
            c.age_secs,
            c.expires_in_secs,
            format!("{}/{}", c.packets_in, c.packets_out),
            format!("{}/{}", human_bytes(c.bytes_in), human_bytes(c.bytes_out)),
            c.admitted_by,
            if c.denied { " (denied by recheck)" } else { "" }
        );
    }
    println!("{} connection(s)", d.connections.len());
}
