//! `fwctl add`, `fwctl insert`, `fwctl delete`: one-line rule commands that edit the rules file
//! and reload it.
//!
//! The order of things is what keeps the file and the rules in force from parting ways: the
//! file must be valid before it is touched (an edit never hides an error already there), the
//! edited text is checked exactly as a reload checks a file (`check::judge`) before anything
//! is written, the previous file is kept as `FILE~`, the new one replaces it by rename (never
//! half-written), and a reload the daemon refuses (an SSH lockout, say) puts the previous file
//! back, so the file on disk is again the rules in force. The text itself is edited by
//! `rules::edit`, which keeps comments and layout.
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use firewall_daemon::{
    cli::{self, DirectionArg, EditArgs, RuleArgs, RuleProtoArg, exit},
    control::{ReloadData, Request, StatusData},
};
use rules::{
    config,
    edit::{self, NewRule, Which},
    model::{Action, Direction},
};

use super::{
    Failure,
    client::{decode, request},
    print_line,
    render::{esc, print_reload},
};

/// What to do to the file.
pub(super) enum Change<'a> {
    Add(&'a RuleArgs, Option<usize>),
    Delete(&'a str),
}

pub(super) fn run(
    args: &super::Args,
    change: Change<'_>,
    opts: &EditArgs,
) -> Result<ExitCode, Failure> {
    let (file, daemons) = target(args)?;
    // Edit the file a link leads to, not the link: configuration management often links it.
    let file = std::fs::canonicalize(&file)
        .map_err(|e| Failure::Other(format!("{}: {e}", file.display())))?;
    // One edit at a time: two read-modify-write cycles at once would lose one of them. The
    // directory is locked, not the file, which the edit replaces by another.
    let _lock = lock_dir(&file)?;
    let old = config::read_trusted(&file)
        .map_err(|e| Failure::Other(format!("{}: cannot read: {e}", file.display())))?;
    let current = config::parse(&old, &file).map_err(|e| {
        Failure::Other(format!(
            "{}\nrefusing to edit {}: it has errors already (fwctl check {} shows them); fix \
             them first",
            e,
            file.display(),
            file.display()
        ))
    })?;
    in_this_file(&current, &change)?;
    let refused = |e: edit::EditError| Failure::Other(format!("{}: {e}", file.display()));
    let (new, shown) = match change {
        Change::Add(rule, before) => {
            let rule = new_rule(rule)?;
            let new = edit::add(&old, &rule, before).map_err(refused)?;
            let added = edit::render(&rule);
            (new, diff_lines('+', &added))
        }
        Change::Delete(which) => {
            let (new, _, removed) = edit::delete(&old, &Which::parse(which)).map_err(refused)?;
            (new, diff_lines('-', &removed))
        }
    };
    // Checked as a reload would check it; positions are those of the edited file.
    let checked = config::parse(&new, &file)
        .map_err(|e| e.to_string())
        .and_then(|rs| super::check::judge(rs, &file).map_err(|(text, _)| text));
    let rs = match checked {
        Ok((rs, _)) => rs,
        Err(text) => {
            return Err(Failure::Other(format!(
                "{text}\n{}: not changed: the edited file would not load (the positions above \
                 are in the edited text)",
                file.display()
            )));
        }
    };
    println!("{}:", esc(&file.display().to_string()));
    for line in &shown {
        println!("{}", esc(line));
    }
    for w in &rs.warnings {
        println!("warning: {}", esc(w));
    }
    if opts.dry_run {
        println!("dry run: the result is valid; nothing written");
        return Ok(ExitCode::SUCCESS);
    }
    let backup = backup_path(&file);
    write_like(&backup, old.as_bytes(), &file)?;
    write_like(&file, new.as_bytes(), &file)?;
    println!(
        "written ({} rules); the previous file is {}",
        rs.rules.len(),
        esc(&backup.display().to_string())
    );
    if opts.no_reload {
        println!("not reloaded (--no-reload): `fwctl reload` applies it");
        return Ok(ExitCode::SUCCESS);
    }
    match daemons {
        Daemon::Unreachable(e) => {
            eprintln!(
                "fwctl: not applied: {e}; the daemon reads {} when it starts",
                esc(&file.display().to_string())
            );
            Ok(ExitCode::from(exit::UNREACHABLE))
        }
        Daemon::Other(theirs) => {
            println!(
                "not reloaded: the daemon's rules file is {}, not this one",
                esc(&theirs.display().to_string())
            );
            Ok(ExitCode::SUCCESS)
        }
        Daemon::Ours => {
            let answer = request(
                args,
                Request::Reload {
                    recheck: false,
                    dry_run: false,
                    confirm_secs: None,
                    force: opts.force,
                    caller: firewall_daemon::explain::ssh_caller(),
                    file: None,
                },
            );
            match answer {
                Ok(v) => {
                    print_reload(&decode::<ReloadData>(v)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ Failure::Refused(_)) => {
                    // The rules in force are the previous file's: so is the file again.
                    write_like(&file, old.as_bytes(), &file)?;
                    Err(Failure::Refused(format!(
                        "{e}\n{} put back as it was: nothing changed",
                        file.display()
                    )))
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Refuses an edit about a rule of an included file: fwctl edits the rules file only, whose
/// own rules come first.
fn in_this_file(rs: &rules::model::Ruleset, change: &Change<'_>) -> Result<(), Failure> {
    let own = rs.rules.iter().filter(|r| r.origin.file == 0).count();
    let elsewhere = |r: &rules::model::Rule| {
        Failure::Other(format!(
            "rule {} ({:?}) is in {}, which this file includes: edit that file (fwctl edits \
             {} only, whose own rules are 1 to {own})",
            r.index + 1,
            r.name.as_str(),
            rs.file_of(&r.origin).display(),
            rs.source.display()
        ))
    };
    match change {
        Change::Delete(which) => {
            let found = match Which::parse(which) {
                Which::Number(n) => n.checked_sub(1).and_then(|i| rs.rules.get(i)),
                Which::Name(name) => rs.rules.iter().find(|r| r.name.as_str() == name),
            };
            match found {
                Some(r) if r.origin.file != 0 => Err(elsewhere(r)),
                _ => Ok(()),
            }
        }
        Change::Add(_, Some(before)) if *before > own + 1 => match rs.rules.get(before - 1) {
            Some(r) => Err(elsewhere(r)),
            None => Ok(()),
        },
        Change::Add(..) => Ok(()),
    }
}

/// Whether the daemon runs the file being edited.
enum Daemon {
    Ours,
    Other(PathBuf),
    Unreachable(String),
}

/// The file to edit: `--config`, else the daemon's, else the default; and whether the daemon
/// that answers runs it.
fn target(args: &super::Args) -> Result<(PathBuf, Daemon), Failure> {
    let status = request(args, Request::Status).and_then(decode::<StatusData>);
    let theirs = match status {
        Ok(s) => Ok(PathBuf::from(s.config)),
        Err(Failure::Client(c)) => Err(c.to_string()),
        Err(e) => return Err(e),
    };
    let file = args.config.clone().unwrap_or_else(|| match &theirs {
        Ok(p) => p.clone(),
        Err(_) => PathBuf::from(cli::DEFAULT_CONFIG),
    });
    let daemon = match theirs {
        Err(e) => Daemon::Unreachable(e),
        Ok(p) if same_file(&p, &file) => Daemon::Ours,
        Ok(p) => Daemon::Other(p),
    };
    Ok((file, daemon))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => a == b,
    }
}

/// An exclusive lock on the directory of `file`, held until dropped; waits for another fwctl
/// editing there.
fn lock_dir(file: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, Failure> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let d = std::fs::File::open(dir)
        .map_err(|e| Failure::Other(format!("opening {}: {e}", dir.display())))?;
    nix::fcntl::Flock::lock(d, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Failure::Other(format!("locking {}: {e}", dir.display())))
}

/// `FILE~`, beside it.
fn backup_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push("~");
    file.with_file_name(name)
}

/// Replaces `path` with `bytes` (`firewall_daemon::replace`), with the mode and owner of
/// `like`: the daemon refuses a rules file that others may write.
fn write_like(path: &Path, bytes: &[u8], like: &Path) -> Result<(), Failure> {
    let fail =
        |what: &str, e: std::io::Error| Failure::Other(format!("{what} {}: {e}", path.display()));
    let meta = std::fs::metadata(like).map_err(|e| fail("reading the mode of", e))?;
    firewall_daemon::replace::replace(
        path,
        bytes,
        meta.mode() & 0o7777,
        Some((meta.uid(), meta.gid())),
    )
    .map_err(|e| fail("replacing", e))
}

fn diff_lines(mark: char, text: &str) -> Vec<String> {
    text.trim_end()
        .lines()
        .map(|l| format!("{mark} {l}").trim_end().to_string())
        .collect()
}

/// The command line's rule as the file would say it. Only what the command line itself
/// decides is checked here (which of --from and --to); the values are the parser's to judge.
fn new_rule(r: &RuleArgs) -> Result<NewRule, Failure> {
    let direction = match r.direction {
        DirectionArg::In => Direction::In,
        DirectionArg::Out => Direction::Out,
    };
    let remote = match (direction, r.from.is_empty(), r.to.is_empty()) {
        (Direction::In, _, false) => {
            return Err(Failure::Other(
                "--to is for outbound rules; an inbound rule names where packets come from \
                 with --from"
                    .into(),
            ));
        }
        (Direction::Out, false, _) => {
            return Err(Failure::Other(
                "--from is for inbound rules; an outbound rule names where connections go \
                 with --to"
                    .into(),
            ));
        }
        (Direction::In, ..) => r.from.clone(),
        (Direction::Out, ..) => r.to.clone(),
    };
    Ok(NewRule {
        name: r.name.clone(),
        direction: Some(direction),
        proto: r.proto.map(|p| {
            match p {
                RuleProtoArg::Tcp => "tcp",
                RuleProtoArg::Udp => "udp",
                RuleProtoArg::Icmp => "icmp",
                RuleProtoArg::Any => "any",
            }
            .to_string()
        }),
        ports: r
            .port
            .iter()
            .flat_map(|p| p.split(','))
            .map(|p| p.trim().to_string())
            .collect(),
        remote,
        program: r.program.clone(),
        unit: r.unit.clone(),
        user: r.user.clone(),
        action: Some(match r.action {
            cli::ActionArg::Allow => Action::Allow,
            cli::ActionArg::Reject => Action::Reject,
            cli::ActionArg::Stealth => Action::Stealth,
        }),
        log: r.log.then_some(true),
    })
}
