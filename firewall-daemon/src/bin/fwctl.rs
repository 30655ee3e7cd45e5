//! `fwctl`: list, check and reload the firewall's rules; show its status. The command line
//! (flags, exit codes, help) is defined in `firewall_daemon::cli`.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Parser as _;
use firewall_daemon::{
    cli::{self, FwctlArgs as Args, FwctlCmd as Cmd, exit},
    compile, config,
    control::{self, ClientError, ConnsData, ListData, ReloadData, Request, RuleView, StatusData},
    kernel,
    model::{Action, Direction},
    resolve::Resolved,
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
            if let (Cmd::Status { json }, Failure::Client(c)) = (&args.cmd, &e)
                && !matches!(c, ClientError::Permission { .. })
            {
                down_status(&args, &e, *json);
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

/// The rules file named by `--config`, parsed (only when given).
fn config_file(args: &Args) -> Result<Option<firewall_daemon::model::Ruleset>, Failure> {
    match &args.config {
        Some(c) => config::load(c)
            .map(Some)
            .map_err(|e| Failure::Other(e.to_string())),
        None => Ok(None),
    }
}

fn socket_path(args: &Args) -> Result<PathBuf, Failure> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    if let Some(rs) = config_file(args)? {
        return Ok(rs.daemon.control_socket);
    }
    Ok(PathBuf::from(cli::DEFAULT_CONTROL_SOCKET))
}

fn request(args: &Args, req: Request) -> Result<serde_json::Value, Failure> {
    let resp = control::call(&socket_path(args)?, &req, control::answer_timeout(&req))?;
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
        Cmd::Check { file, json } => return Ok(check(file, *json)),
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

/// What protects the host while the daemon cannot be reached: the attachments a previous daemon
/// left pinned (they go on enforcing its last rules), or nothing.
#[derive(Debug, serde::Serialize)]
struct DownStatus {
    daemon: &'static str,
    error: String,
    pin_dir: PathBuf,
    /// Interfaces whose XDP attachment is pinned: still enforcing the last rules.
    enforcing_on: Vec<String>,
    /// Outbound hooks whose cgroup attachment is pinned: still enforcing the last outbound
    /// rules (connect4, ...).
    outbound_hooks: Vec<String>,
    /// Pinned attachments whose interface no longer exists.
    stale: Vec<String>,
    /// Why the pins could not be inspected, if they could not.
    unknown: Option<String>,
}

/// `fwctl status` with the daemon unreachable: says whether the firewall still enforces.
fn down_status(args: &Args, e: &Failure, json: bool) {
    // The pin directory: --config's, else the installed rules file's, else the default.
    let pin_dir = config_file(args)
        .ok()
        .flatten()
        .or_else(|| config::load(Path::new(cli::DEFAULT_CONFIG)).ok())
        .map(|rs| rs.daemon.pin_dir)
        .unwrap_or_else(|| firewall_daemon::model::DaemonConfig::default().pin_dir);
    let mut st = DownStatus {
        daemon: "unreachable",
        error: e.to_string(),
        enforcing_on: Vec::new(),
        outbound_hooks: Vec::new(),
        stale: Vec::new(),
        unknown: None,
        pin_dir,
    };
    let links = st.pin_dir.join(kernel::LINK_DIR);
    match std::fs::read_dir(&links) {
        Ok(dir) => {
            let pins: Vec<String> = dir
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let mut names: Vec<String> = pins
                .iter()
                .filter_map(|name| name.strip_prefix("xdp-").map(str::to_string))
                .collect();
            names.sort();
            st.outbound_hooks = pins
                .iter()
                .filter_map(|name| name.strip_prefix("cgroup-").map(str::to_string))
                .collect();
            st.outbound_hooks.sort();
            for ifname in names {
                // In the caller's network namespace (sysfs may show another one's).
                if nix::net::if_::if_nametoindex(ifname.as_str()).is_ok() {
                    st.enforcing_on.push(ifname);
                } else {
                    st.stale.push(ifname);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => st.unknown = Some(format!("{}: {e}", links.display())),
    }
    if json {
        match serde_json::to_string_pretty(&st) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("fwctl: {e}"),
        }
        return;
    }
    if let Some(why) = &st.unknown {
        println!(
            "daemon:      not reachable; cannot tell whether the firewall still enforces \
             ({}; run as root)",
            esc(why)
        );
    } else if st.enforcing_on.is_empty() && st.outbound_hooks.is_empty() {
        println!(
            "daemon:      not reachable, and no attachment is pinned under {}: \
             NOTHING PROTECTS THIS HOST",
            esc(&links.display().to_string())
        );
    } else {
        let mut on = st.enforcing_on.clone();
        if !st.outbound_hooks.is_empty() {
            on.push(format!(
                "the outbound hooks ({})",
                st.outbound_hooks.join(", ")
            ));
        }
        println!(
            "daemon:      not reachable, but the firewall still enforces its last rules on {} \
             (attachments pinned under {}); start the daemon to manage them again",
            esc(&on.join(", ")),
            esc(&links.display().to_string())
        );
    }
    if !st.stale.is_empty() {
        println!(
            "stale pins:  {} (the interface is gone)",
            esc(&st.stale.join(", "))
        );
    }
}

#[derive(Debug, serde::Serialize)]
struct CheckReport<'a> {
    file: &'a Path,
    valid: bool,
    rules: usize,
    inbound_rules: usize,
    outbound_rules: usize,
    default_inbound: Option<String>,
    default_outbound: Option<String>,
    warnings: Vec<String>,
    /// Every problem, located where possible.
    errors: Vec<CheckError>,
}

#[derive(Debug, serde::Serialize)]
struct CheckError {
    file: PathBuf,
    line: Option<usize>,
    column: Option<usize>,
    message: String,
}

fn check(file: &Path, json: bool) -> ExitCode {
    let mut report = CheckReport {
        file,
        valid: false,
        rules: 0,
        inbound_rules: 0,
        outbound_rules: 0,
        default_inbound: None,
        default_outbound: None,
        warnings: Vec::new(),
        errors: Vec::new(),
    };
    let result = config::load(file).map_err(|e| {
        let located: Vec<CheckError> = e
            .diagnostics()
            .iter()
            .map(|d| CheckError {
                file: d.file.clone(),
                line: d.line,
                column: d.column,
                message: d.message.clone(),
            })
            .collect();
        let errors = if located.is_empty() {
            vec![CheckError {
                file: file.to_path_buf(),
                line: None,
                column: None,
                message: e.to_string(),
            }]
        } else {
            located
        };
        (e.to_string(), errors)
    });
    let rs = result.and_then(|rs| {
        // Selectors resolved as the daemon would (missing programs and units are warnings).
        let cgroup_root = rs
            .daemon
            .cgroup
            .clone()
            .or_else(|| firewall_daemon::cgroup::mount().ok())
            .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
        let resolved = Resolved::resolve(&rs, &cgroup_root);
        match compile::compile(&rs, &resolved)
            .and_then(|_| compile::compile_direction(&rs, Direction::Out, &resolved))
        {
            Ok(_) => Ok(rs),
            Err(e) => Err((
                format!("{}: {e}", file.display()),
                vec![CheckError {
                    file: file.to_path_buf(),
                    line: None,
                    column: None,
                    message: e.to_string(),
                }],
            )),
        }
    });
    let rs = match rs {
        Ok(rs) => rs,
        Err((text, errors)) => {
            if json {
                report.errors = errors;
                print_json(&report);
            } else {
                for line in text.lines() {
                    eprintln!("{}", esc(line));
                }
            }
            return ExitCode::from(exit::INVALID);
        }
    };
    let out: Vec<_> = rs
        .rules
        .iter()
        .filter(|r| r.direction == Direction::Out)
        .collect();
    if json {
        report.valid = true;
        report.rules = rs.rules.len();
        report.outbound_rules = out.len();
        report.inbound_rules = rs.rules.len() - out.len();
        report.default_inbound = Some(rs.defaults.inbound.to_string());
        report.default_outbound = Some(rs.defaults.outbound.to_string());
        report.warnings = rs.warnings.clone();
        print_json(&report);
        return ExitCode::SUCCESS;
    }
    for w in &rs.warnings {
        println!("warning: {}", esc(w));
    }
    println!(
        "{}: OK, {} rules ({} inbound, {} outbound); default inbound {}, outbound {}",
        esc(&file.display().to_string()),
        rs.rules.len(),
        rs.rules.len() - out.len(),
        out.len(),
        rs.defaults.inbound,
        rs.defaults.outbound
    );
    if !out.is_empty() || rs.defaults.outbound != Action::Allow {
        println!(
            "note: outbound rules judge TCP and UDP sockets when they connect or send a datagram \
             with an address; ICMP (ping) and raw sockets are not judged outbound, and \
             destinations on loopback are always allowed"
        );
    }
    ExitCode::SUCCESS
}

fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("fwctl: {e}"),
    }
}

/// `s` made safe to print on a terminal, as `ls -b` and systemd do: control characters (a
/// newline would start a forged row, an escape sequence rewrite the screen), bidirectional and
/// other invisible formatting characters and the backslash are written as C-style escapes.
/// Program paths, user, rule, unit and interface names reach fwctl from files and processes
/// that local users control; `--json` output carries them exactly, with JSON's own escaping.
/// (Paths that are not UTF-8 already arrive with U+FFFD in place of the invalid bytes.)
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() || invisible(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Formatting characters that reorder or hide text (Unicode "Cf" and the line separators).
fn invisible(c: char) -> bool {
    matches!(c as u32,
        0xad | 0x61c | 0x180e | 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x206f | 0xfeff
            | 0xfff9..=0xfffb)
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

/// `  program=/usr/bin/firefox unit=nginx.service user=33` after a rule about a program, unit
/// or user; empty for a rule about every process, so those lines keep their layout.
fn selector_note(r: &RuleView) -> String {
    let mut note = String::new();
    if let Some(program) = &r.program {
        note.push_str(&format!(" program={}", esc(program)));
    }
    if let Some(unit) = &r.unit {
        note.push_str(&format!(" unit={}", esc(unit)));
    }
    if let Some(user) = r.user {
        note.push_str(&format!(" user={user}"));
    }
    if !note.is_empty() {
        note.insert(0, ' ');
    }
    note
}

fn print_list(l: &ListData) {
    println!("rules from {}", esc(&l.source));
    println!(
        "{:>4}  {:<28} {:<4} {:<5} {:<14} {:<28} {:<8} {:>10}",
        "#", "NAME", "DIR", "PROTO", "PORTS", "REMOTE", "ACTION", "PACKETS"
    );
    for r in &l.rules {
        let mut note = selector_note(r);
        if !r.enforced {
            note.push_str("  (not enforced)");
        }
        println!(
            "{:>4}  {:<28} {:<4} {:<5} {:<14} {:<28} {:<8} {:>10}{note}",
            r.number,
            cell(&esc(&r.name), 28),
            r.direction.to_string(),
            r.proto.to_string(),
            cell(&esc(&dash(&r.ports)), 14),
            cell(&esc(&dash(&r.remote)), 28),
            r.action.to_string(),
            r.hits
        );
    }
    println!(
        "default: inbound {}, outbound {}; non-first fragments: {}",
        l.defaults.inbound, l.defaults.outbound, l.defaults.fragments
    );
    if l.rules.iter().any(|r| r.direction == Direction::Out) {
        println!(
            "DIR out: PORTS and REMOTE are the destination, PACKETS counts connect() and UDP \
             sends"
        );
    }
}

fn print_status(s: &StatusData) {
    println!(
        "firewall-daemon {} (pid {}), up {}s",
        s.version, s.pid, s.uptime_secs
    );
    println!("rules file:  {}", esc(&s.config));
    println!("pin dir:     {}", esc(&s.pin_dir));
    if !s.kernel.release.is_empty() {
        println!("kernel:      {}", esc(&s.kernel.release));
    }
    for f in &s.kernel.features {
        println!("feature:     {}", esc(f));
    }
    for d in &s.kernel.degraded {
        println!("DEGRADED:    {}", esc(d));
    }
    for i in &s.interfaces {
        if i.mode.is_empty() && i.state.starts_with("NOT protected") {
            println!("interface:   {} — {}", i.name, i.state);
            continue;
        }
        let egress = if i.egress.is_empty() {
            String::new()
        } else {
            format!(", egress {}", esc(&i.egress))
        };
        let state = if i.state.is_empty() || i.state == "ok" {
            String::new()
        } else {
            format!(" — {}", esc(&i.state))
        };
        let link = if i.link_layer.is_empty() {
            String::new()
        } else {
            format!(", link layer {}", i.link_layer)
        };
        println!(
            "interface:   {} (XDP {} mode{link}{egress}){state}",
            esc(&i.name),
            esc(&i.mode)
        );
    }
    if !s.outbound.cgroup.is_empty() {
        let hooks: Vec<String> = s
            .outbound
            .hooks
            .iter()
            .map(|h| {
                if h.state == "ok" {
                    esc(&h.hook)
                } else {
                    format!("{} — {}", esc(&h.hook), esc(&h.state))
                }
            })
            .collect();
        println!(
            "outbound:    cgroup {} (hooks {})",
            esc(&s.outbound.cgroup),
            hooks.join(", ")
        );
    }
    println!(
        "rules:       {} ({} inbound, {} outbound), generation {}",
        s.rules, s.inbound_rules, s.outbound_rules, s.generation
    );
    println!(
        "defaults:    inbound {}, outbound {}, fragments {}",
        s.defaults.inbound, s.defaults.outbound, s.defaults.fragments
    );
    if let Some(r) = &s.last_reload {
        println!("last reload: {}", esc(r));
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
        println!("  {:<26} {v}", esc(k));
    }
    for w in &s.warnings {
        println!("warning: {}", esc(w));
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
            println!("  + {}", esc(a));
        }
        for r in &d.removed {
            println!("  - {}", esc(r));
        }
        if d.reordered {
            println!("  ~ rules reordered");
        }
        for s in &d.settings {
            println!("  * {}", esc(s));
        }
    }
    for w in &d.warnings {
        println!("warning: {}", esc(w));
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
                println!("  x {}", esc(e));
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

/// The owner column: `program (pid N, user)`, or `-` when nothing was recorded.
fn owner(c: &control::ConnView) -> String {
    let Some(program) = c.program.as_deref().map(esc) else {
        return "-".into();
    };
    match (c.pid, c.user.as_deref().map(esc)) {
        (Some(pid), Some(user)) => format!("{program} (pid {pid}, {user})"),
        (None, Some(user)) => format!("{program} ({user})"),
        (Some(pid), None) => format!("{program} (pid {pid})"),
        (None, None) => program,
    }
}

fn print_conns(d: &ConnsData) {
    if d.connections.is_empty() {
        println!("no tracked connections");
        return;
    }
    let owners: Vec<String> = d.connections.iter().map(owner).collect();
    let w = |f: fn(&control::ConnView) -> usize, min: usize| {
        d.connections.iter().map(f).max().unwrap_or(0).max(min)
    };
    let wl = w(|c| c.local.len(), 5);
    let wr = w(|c| c.remote.len(), 6);
    let wo = owners
        .iter()
        .map(|o| o.chars().count())
        .max()
        .unwrap_or(0)
        .max(7);
    println!(
        "{:<6} {:<wl$} {:<wr$} {:<11} {:>8} {:>9} {:>15} {:>17}  {:<wo$}  ADMITTED BY",
        "PROTO",
        "LOCAL",
        "REMOTE",
        "STATE",
        "AGE",
        "TIMEOUT",
        "PKTS IN/OUT",
        "BYTES IN/OUT",
        "PROGRAM"
    );
    for (c, owner) in d.connections.iter().zip(&owners) {
        let state = if c.denied {
            format!("{}!", c.state)
        } else {
            c.state.clone()
        };
        println!(
            "{:<6} {:<wl$} {:<wr$} {:<11} {:>7}s {:>8}s {:>15} {:>17}  {:<wo$}  {}{}",
            esc(&c.proto),
            esc(&c.local),
            esc(&c.remote),
            esc(&state),
            c.age_secs,
            c.expires_in_secs,
            format!("{}/{}", c.packets_in, c.packets_out),
            format!("{}/{}", human_bytes(c.bytes_in), human_bytes(c.bytes_out)),
            owner,
            esc(&c.admitted_by),
            if c.denied { " (denied by recheck)" } else { "" }
        );
    }
    println!("{} connection(s)", d.connections.len());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use firewall_daemon::model::Proto;

    use super::*;

    fn view() -> RuleView {
        RuleView {
            number: 1,
            name: "web".into(),
            direction: Direction::In,
            proto: Proto::Tcp,
            ports: vec!["443".into()],
            remote: vec![],
            program: None,
            unit: None,
            user: None,
            action: Action::Allow,
            enforced: true,
            hits: 0,
            line: 2,
        }
    }

    #[test]
    fn selectors_are_shown_only_when_given() {
        let mut r = view();
        assert_eq!(selector_note(&r), "");
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            !json.contains("program") && !json.contains("user"),
            "{json}"
        );
        r.program = Some("/usr/bin/firefox".into());
        r.unit = Some("nginx.service".into());
        r.user = Some(33);
        assert_eq!(
            selector_note(&r),
            "  program=/usr/bin/firefox unit=nginx.service user=33"
        );
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<RuleView>(&json).unwrap(), r);
        r.program = None;
        r.unit = None;
        assert_eq!(selector_note(&r), "  user=33");
    }

    /// Issue 14: a program named `x\ntcp 10.0.0.1:22 ...` with escape codes forged a row of
    /// `fwctl conns`.
    #[test]
    fn names_cannot_forge_rows_or_drive_the_terminal() {
        let forged =
            "/tmp/a\ntcp    10.0.0.1:22 10.0.0.9:4444 ESTABLISHED\x1b[2K\u{202e}gpj.exe\\x0a";
        let shown = esc(forged);
        assert_eq!(
            shown,
            "/tmp/a\\ntcp    10.0.0.1:22 10.0.0.9:4444 ESTABLISHED\\x1b[2K\\u{202e}gpj.exe\\\\x0a"
        );
        assert!(!shown.chars().any(|c| c.is_control() || invisible(c)));
        assert_eq!(esc("/usr/sbin/sshd"), "/usr/sbin/sshd");
        assert_eq!(esc("/opt/café/bin"), "/opt/café/bin");
        let c = control::ConnView {
            proto: "tcp".into(),
            local: "10.0.0.2:22".into(),
            remote: "10.0.0.1:5000".into(),
            state: "ESTABLISHED".into(),
            origin: "remote".into(),
            table: "confirmed".into(),
            age_secs: 1,
            expires_in_secs: 2,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            admitted_by: "rule 1 \"ssh\"".into(),
            denied: false,
            program: Some(forged.into()),
            pid: Some(7),
            user: Some("eve\r".into()),
        };
        let row = owner(&c);
        assert!(!row.chars().any(char::is_control), "{row:?}");
        assert!(row.ends_with("(pid 7, eve\\r)"), "{row:?}");
        // JSON carries the name exactly.
        let json: control::ConnView =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(json.program.as_deref(), Some(forged));
    }

    #[test]
    fn rule_views_without_selector_fields_still_parse() {
        let json = r#"{"number":1,"name":"web","direction":"in","proto":"tcp","ports":[],"remote":[],"action":"allow","enforced":true,"hits":0,"line":2}"#;
        let r: RuleView = serde_json::from_str(json).unwrap();
        assert_eq!((r.program, r.unit, r.user), (None, None, None));
    }
}
