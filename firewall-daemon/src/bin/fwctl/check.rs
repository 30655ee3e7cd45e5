//! `fwctl check FILE`: validates a rules file without a daemon, exactly as a reload would
//! (the same parser, resolution, compiler and `[[assert]]` checks), and prints every error with
//! its position; warns about rules that can never match, ports nothing listens on, and rules
//! that would lock out the SSH session it runs over. `--diff` asks the daemon what would change.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use firewall_daemon::{cli::exit, compile};
use rules::{
    config,
    model::{Action, Direction},
};

use super::{
    print_line,
    render::{esc, print_json},
};

#[derive(Debug, serde::Serialize)]
pub(super) struct CheckReport<'a> {
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
    /// Set when the rules would deny new SSH connections from the caller.
    lockout: Option<String>,
    /// With `--diff`: what would change against the rules in force.
    diff: Option<firewall_daemon::control::ReloadData>,
}

#[derive(Debug, serde::Serialize)]
pub(super) struct CheckError {
    file: PathBuf,
    line: Option<usize>,
    column: Option<usize>,
    message: String,
}

pub(super) fn check(
    args: &super::Args,
    file: &Path,
    json: bool,
    diff: bool,
    force: bool,
) -> Result<ExitCode, super::Failure> {
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
        lockout: None,
        diff: None,
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
    let rs = result.and_then(|rs| judge(rs, file));
    let (mut rs, resolved) = match rs {
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
            return Ok(ExitCode::from(exit::INVALID));
        }
    };
    rs.warnings.extend(resolved.warnings(&rs));
    rs.warnings
        .extend(firewall_daemon::explain::listener_warnings(&rs));
    report.lockout = firewall_daemon::explain::ssh_caller().and_then(|caller| {
        let listeners: std::collections::HashMap<_, _> =
            firewall_daemon::host::listeners::bound_sockets()
                .unwrap_or_default()
                .into_iter()
                .collect();
        let owner = firewall_daemon::host::listeners::receiver(
            &listeners,
            caller.local,
            libc::IPPROTO_TCP as u8,
            caller.local_port,
        );
        firewall_daemon::explain::lockout(&rs, &resolved, &caller, owner, false)
    });
    if diff {
        let path = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        let data = super::client::request(
            args,
            firewall_daemon::control::Request::Reload {
                recheck: false,
                dry_run: true,
                confirm_secs: None,
                force: true,
                caller: None,
                file: Some(path),
            },
        )?;
        report.diff = Some(super::client::decode(data)?);
    }
    let code = if report.lockout.is_some() && !force {
        ExitCode::from(exit::INVALID)
    } else {
        ExitCode::SUCCESS
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
        return Ok(code);
    }
    for w in &rs.warnings {
        println!("warning: {}", esc(w));
    }
    if let Some(d) = &report.diff {
        // Its warnings are the file's, printed above.
        let mut d = d.clone();
        d.warnings.clear();
        super::render::print_reload(&d);
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
    if let Some(l) = &report.lockout {
        println!("WARNING: {}", esc(l));
        if !force {
            println!(
                "fwctl: failing because of the lockout; --force passes anyway (fwctl reload \
                 --confirm 60s applies such rules with an automatic rollback)"
            );
        }
    }
    if !rs.assertions.is_empty() {
        println!("{} assertion(s) hold", rs.assertions.len());
    }
    Ok(code)
}

/// What a reload checks beyond the parser: the `[[assert]]` entries, with the selectors
/// resolved as the daemon would resolve them, and the compiler. The rule set and what
/// resolution found, or the message and the located errors.
pub(super) fn judge(
    rs: rules::model::Ruleset,
    file: &Path,
) -> Result<
    (
        rules::model::Ruleset,
        firewall_daemon::host::selectors::Resolved,
    ),
    (String, Vec<CheckError>),
> {
    // Selectors resolved as the daemon would (missing programs and units are warnings).
    let resolved = firewall_daemon::explain::resolve_here(&rs);
    let broken = firewall_daemon::explain::broken_assertions(&rs, &resolved);
    if !broken.is_empty() {
        let errors = broken
            .iter()
            .map(|m| CheckError {
                file: file.to_path_buf(),
                line: None,
                column: None,
                message: m.clone(),
            })
            .collect();
        // The file's warnings too: a rule an earlier one shadows is often why.
        let mut lines: Vec<String> = rs
            .warnings
            .iter()
            .map(|w| format!("warning: {w}"))
            .collect();
        lines.extend(broken);
        return Err((lines.join("\n"), errors));
    }
    match compile::compile(&rs, &resolved)
        .and_then(|_| compile::compile_direction(&rs, Direction::Out, &resolved))
    {
        Ok(_) => Ok((rs, resolved)),
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
}
