//! `fwctl check FILE`: validates a rules file without a daemon, exactly as a reload would
//! (the same parser, resolution and compiler), and prints every error with its position.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use firewall_daemon::{cli::exit, compile, host::selectors::Resolved};
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
}

#[derive(Debug, serde::Serialize)]
pub(super) struct CheckError {
    file: PathBuf,
    line: Option<usize>,
    column: Option<usize>,
    message: String,
}

pub(super) fn check(file: &Path, json: bool) -> ExitCode {
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
            .or_else(|| firewall_daemon::host::cgroups::mount().ok())
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
