//! `fwctl explain` and `fwctl ports`: what the rules decide for a packet or connection, and
//! who may reach each listening socket. The answers come from the daemon (rules in force), or
//! for `explain --config FILE` from that file, through `firewall_daemon::explain` either way.

use firewall_daemon::{
    cli::{DirectionArg, FwctlCmd as Cmd, ProtoArg},
    explain::{self, ExplainData, PortsData, Query},
};
use rules::model::Direction;

use super::{
    Args, Failure,
    client::{decode, request},
    print_line,
    render::{esc, print_json},
};

pub(super) fn explain(args: &Args, json: bool) -> Result<(), Failure> {
    let Cmd::Explain {
        direction,
        proto,
        remote,
        port,
        program,
        unit,
        user,
        ..
    } = &args.cmd
    else {
        return Err(Failure::Other("not an explain command".into()));
    };
    let user = user.as_deref().map(uid_of).transpose()?;
    let q = Query {
        direction: match direction {
            DirectionArg::In => Direction::In,
            DirectionArg::Out => Direction::Out,
        },
        proto: match proto {
            ProtoArg::Tcp => "tcp",
            ProtoArg::Udp => "udp",
            ProtoArg::Icmp => "icmp",
            ProtoArg::Other => "other",
        }
        .into(),
        remote: *remote,
        port: *port,
        program: program.clone(),
        unit: unit.clone(),
        user,
    };
    q.probe().map_err(Failure::Other)?;
    let data: ExplainData = match &args.config {
        Some(file) => {
            let rs = rules::config::load(file).map_err(|e| Failure::Other(e.to_string()))?;
            let resolved = explain::resolve_here(&rs);
            explain::explain(&rs, &resolved, &q).map_err(Failure::Other)?
        }
        None => decode(request(
            args,
            firewall_daemon::control::Request::Explain(q),
        )?)?,
    };
    if json {
        print_json(&data);
    } else {
        print_explanation(&data);
    }
    Ok(())
}

/// A user name or a uid.
fn uid_of(user: &str) -> Result<u32, Failure> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(Failure::Other(format!("no user {user:?} on this host"))),
    }
}

fn print_explanation(d: &ExplainData) {
    let by = match (d.rule, d.line) {
        (Some(n), Some(line)) => format!(
            "rule {n} {:?} ({}line {line})",
            esc(&d.name),
            in_file(d.file.as_deref())
        ),
        _ => esc(&d.name),
    };
    match &d.fixed {
        Some(f) => println!(
            "{}: {}, before any rule: {}",
            esc(&d.question),
            d.action,
            esc(f)
        ),
        None => println!("{}: {} by {by}", esc(&d.question), d.action),
    }
    println!("  rules:    {}", esc(&d.source));
    if !d.names.is_empty() {
        let names: Vec<String> = d.names.iter().map(|n| esc(n)).collect();
        println!("  names:    {} (from DNS answers)", names.join(", "));
    }
    for r in &d.shadowed {
        println!(
            "  shadowed: rule {} {:?} ({}line {}, {}) matches too, but comes later",
            r.number,
            esc(&r.name),
            in_file(r.file.as_deref()),
            r.line,
            r.action
        );
    }
    for t in &d.tracked {
        println!("  tracked:  {}", esc(t));
    }
    for n in &d.notes {
        println!("  note:     {}", esc(n));
    }
}

pub(super) fn print_ports(d: &PortsData) {
    if d.sockets.is_empty() {
        println!("no listening sockets");
    }
    for s in &d.sockets {
        let who = [
            s.program.as_deref().map(esc),
            Some(format!("pid {}", s.pid)),
            Some(esc(&s.user)),
            s.unit.as_deref().map(esc),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
        println!("{} {}  {who}", s.proto, esc(&s.local));
        if s.loopback_only {
            println!("    loopback only: not reachable from the network");
        }
        for e in &s.exposure {
            let family = esc(&e.family);
            if e.everyone {
                println!("    {family}: everyone ({})", e.others.join("; "));
                continue;
            }
            if e.nobody {
                println!("    {family}: nobody ({})", esc(&e.others.join("; ")));
                continue;
            }
            let more = if e.more > 0 {
                format!(" and {} more", e.more)
            } else {
                String::new()
            };
            println!(
                "    {family}: {}{more}; others: {}",
                esc(&e.allowed.join(", ")),
                esc(&e.others.join("; "))
            );
        }
    }
    if d.unowned > 0 {
        println!(
            "({} bound socket(s) whose process was not found are not shown)",
            d.unowned
        );
    }
}

/// `rules.d/web.toml ` before a line number of an included file's rule; nothing for the rules
/// file's own.
fn in_file(file: Option<&str>) -> String {
    file.map(|f| format!("{} ", esc(f))).unwrap_or_default()
}
