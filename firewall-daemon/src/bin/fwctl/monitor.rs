//! `fwctl monitor`: the daemon's decision log (or connection events) as they happen.

use std::io::BufRead as _;

use firewall_daemon::{
    cli::{ActionArg, DirectionArg, FwctlArgs as Args, FwctlCmd as Cmd, ProtoArg},
    control::ClientError,
    decision_log::{self, MonitorFilter, MonitorLine},
};

use super::{Failure, client::socket_path, print_line, render::esc};

/// The filter the command line asks for (addresses checked here, so a typo is a usage error
/// rather than an empty stream).
fn filter(cmd: &Cmd) -> Result<MonitorFilter, Failure> {
    let Cmd::Monitor {
        conns,
        actions,
        direction,
        proto,
        ports,
        remotes,
        rules,
        ..
    } = cmd
    else {
        return Err(Failure::Other("not a monitor command".into()));
    };
    let remotes = remotes
        .iter()
        .map(|r| {
            r.parse::<ipnet::IpNet>()
                .or_else(|_| r.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    Failure::Other(format!("--remote {r:?} is not an address or a network"))
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(MonitorFilter {
        conns: *conns,
        actions: actions
            .iter()
            .map(|a| {
                match a {
                    ActionArg::Allow => "allow",
                    ActionArg::Reject => "reject",
                    ActionArg::Stealth => "stealth",
                }
                .to_string()
            })
            .collect(),
        direction: direction.map(|d| {
            match d {
                DirectionArg::In => "in",
                DirectionArg::Out => "out",
            }
            .to_string()
        }),
        proto: proto.map(|p| {
            match p {
                ProtoArg::Tcp => "tcp",
                ProtoArg::Udp => "udp",
                ProtoArg::Icmp => "icmp",
                ProtoArg::Other => "other",
            }
            .to_string()
        }),
        ports: ports.clone(),
        remotes,
        rules: rules.clone(),
    })
}

/// Streams until the daemon closes the connection (it stopped) or the output goes away.
pub(super) fn run(args: &Args) -> Result<(), Failure> {
    let json = matches!(args.cmd, Cmd::Monitor { json: true, .. });
    let filter = filter(&args.cmd)?;
    let socket = socket_path(args)?;
    let (response, reader) = decision_log::open_monitor(
        &socket,
        filter,
        firewall_daemon::control::answer_timeout(&firewall_daemon::control::Request::Status),
    )?;
    if !response.ok {
        let msg = response.error.unwrap_or_else(|| "request refused".into());
        if msg.starts_with("permission denied") {
            return Err(Failure::Client(ClientError::Permission {
                path: socket.display().to_string(),
            }));
        }
        return Err(Failure::Refused(msg));
    }
    // On stderr, as tcpdump's "listening on": scripts reading stdout see events only, and
    // whoever waits for the stream to start has a line to wait for.
    let what = if matches!(args.cmd, Cmd::Monitor { conns: true, .. }) {
        "connection events"
    } else {
        "decisions"
    };
    eprintln!("fwctl: monitoring {what} (Ctrl-C to stop)");
    for line in reader.lines() {
        let line = line.map_err(|e| Failure::Other(format!("reading events: {e}")))?;
        let parsed: MonitorLine = serde_json::from_str(&line)
            .map_err(|e| Failure::Other(format!("unexpected event from the daemon: {e}")))?;
        match parsed {
            MonitorLine::Event(e) if json => {
                let text = serde_json::to_string(&e)
                    .map_err(|e| Failure::Other(format!("encoding an event: {e}")))?;
                println!("{text}");
            }
            MonitorLine::Event(e) => println!("{}", esc(&decision_log::human_line(&e))),
            MonitorLine::Lost { count } if json => println!("{{\"lost\":{count}}}"),
            MonitorLine::Lost { count } => {
                println!("-- {count} event(s) lost: this monitor read too slowly --")
            }
        }
    }
    Err(Failure::Other(
        "the daemon closed the connection (it stopped)".into(),
    ))
}
