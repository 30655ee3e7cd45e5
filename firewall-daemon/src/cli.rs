//! The command lines of `firewall-daemon` and `fwctl`, defined once: the binaries parse them,
//! and `cargo xtask install` renders the same definitions into man pages and shell completions.
//!
//! This file uses nothing but `std` and `clap`: xtask compiles it on its own (through
//! `#[path]`), without the rest of this crate, whose build needs the eBPF toolchain.
//!
//! The text shown after the options (`after_help`) follows a small format that the man page
//! generator reads back: blocks separated by blank lines, each opened by a title line ending in
//! `:` and followed by items indented by two spaces. In an `Examples:` block each item is a
//! command line; in any other block an item is `TERM  text` (two or more spaces apart), or text
//! alone. Each block becomes the man page section of the same title (`Exit status:` becomes
//! EXIT STATUS).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// The rules file the daemon reads, and the one the systemd unit names.
pub const DEFAULT_CONFIG: &str = "/etc/firewall/rules.toml";
/// The daemon's control socket unless `[daemon] control_socket` says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/firewall/control.sock";

/// `fwctl`'s exit codes (also listed in its `--help` and man page).
pub mod exit {
    pub const OK: u8 = 0;
    /// The rules file is invalid (`check`), or the daemon refused the request.
    pub const INVALID: u8 = 1;
    /// Bad command line (clap's own code for usage errors).
    pub const USAGE: u8 = 2;
    /// The daemon cannot be reached.
    pub const UNREACHABLE: u8 = 3;
    /// The control socket refused the caller.
    pub const PERMISSION: u8 = 4;
}

const FWCTL_AFTER_HELP: &str = "\
Examples:
  fwctl status
  fwctl list --json | jq '.rules[0]'
  fwctl check /etc/firewall/rules.toml
  fwctl explain in tcp 203.0.113.7 22
  fwctl ports
  fwctl reload --dry-run
  fwctl reload --confirm 60s && fwctl confirm
  fwctl reload --recheck
  fwctl conns
  fwctl monitor --action reject --port 22
  fwctl add allow in tcp 22 --from @lan --name ssh
  fwctl delete ssh

Exit status:
  0  Success.
  1  The rules file is invalid or its [[assert]] entries do not hold (check), the rules would \
lock out the SSH session fwctl runs over (check, reload, add, insert and delete, without \
--force), an edit was refused (add, insert, delete: the file is unchanged), or the daemon \
refused the request, for instance a reload of an invalid file (the previous rules stay in \
force).
  2  Usage error.
  3  The daemon cannot be reached: it is not running, the socket is missing or stale, or it \
does not answer (add, insert and delete have written the file; it applies at the next reload \
or start).
  4  Permission denied on the control socket: run as root, or as a member of the [daemon] \
control_group.

Files:
  /etc/firewall/rules.toml  The rules file (see rules.toml(5)); --config reads its [daemon] \
control_socket.
  /run/firewall/control.sock  The daemon's control socket (default).

See also:
  firewall-daemon(8), rules.toml(5), systemctl(1)";

const DAEMON_AFTER_HELP: &str = "\
Examples:
  firewall-daemon --config /etc/firewall/rules.toml
  systemctl enable --now firewall-daemon
  firewall-daemon --config rules.toml --interface veth0 \\
      --xdp-mode generic --pin-dir /sys/fs/bpf/fw-test \\
      --control-socket /run/fw-test.sock --cgroup /sys/fs/cgroup/fw-test

Signals:
  SIGHUP  Reload the rules file; if it is invalid, the rules in force stay (fwctl reload does \
the same and prints what changed).
  SIGTERM, SIGINT  Stop. With [daemon] on_stop = \"keep\" (the default) the pinned programs go \
on enforcing the last rules and the next daemon adopts them; with \"detach\" the firewall is \
detached and its pins removed.

Environment:
  RUST_LOG  Log filter, overrides --log-level (for instance info,firewall_daemon=debug).

Files:
  /etc/firewall/rules.toml  The rules file (see rules.toml(5)).
  /run/firewall/control.sock  Control socket used by fwctl(1) (default).
  /sys/fs/bpf/firewall  Pinned programs, maps and attachments (default pin_dir).
  /sys/fs/cgroup  The cgroup2 mount (found in /proc/self/mountinfo): its root is the default \
[daemon] cgroup.

See also:
  fwctl(1), rules.toml(5), systemd.service(5), bpftool(8)";

/// XDP attach mode (`--xdp-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    /// Native where the driver supports it, generic elsewhere.
    Auto,
    /// In the network driver (fastest; not every driver supports it).
    Native,
    /// In the kernel's network stack (works with every driver).
    Generic,
}

/// An action, for `fwctl monitor --action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ActionArg {
    Allow,
    Reject,
    Stealth,
}

/// A direction, for `fwctl monitor --direction` and `fwctl explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    /// Packets arriving.
    In,
    /// Connections the host's programs open.
    Out,
}

/// A protocol, for `fwctl monitor --proto` and `fwctl explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtoArg {
    Tcp,
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
    Other,
}

/// Host firewall daemon: compiles rules.toml into an XDP program and keeps it in force.
#[derive(Debug, Parser)]
#[command(
    name = "firewall-daemon",
    version,
    long_about = "Host firewall daemon: compiles rules.toml into an XDP program and keeps it in \
force.\n\nIt loads the XDP program and the TC egress program (connection tracking) onto every \
protected interface, attaches the outbound hooks (cgroup connect4, connect6, sendmsg4 and \
sendmsg6) to the cgroup of [daemon] cgroup (by default the root of the cgroup2 mount, so every \
process on the host), fills their maps from the rules file, and serves fwctl(1) on a Unix \
socket. Reloads (SIGHUP, fwctl reload) switch to the new rules atomically; an invalid file \
changes nothing. It prints \"firewall-daemon: ready (...)\" on stdout once the programs are \
attached and the control socket listens. Under systemd (firewall-daemon.service, \
Type=notify) it also reports readiness, reloads and a status line through sd_notify, and logs \
to the journal with fields. Run it as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
(and CAP_CHOWN for [daemon] control_group).",
    after_help = DAEMON_AFTER_HELP
)]
pub struct DaemonArgs {
    /// Rules file.
    #[arg(long, short, default_value = DEFAULT_CONFIG, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub config: PathBuf,
    /// Interface to protect (repeatable); overrides [daemon] interfaces.
    #[arg(long = "interface", short = 'i', value_name = "IFNAME")]
    pub interfaces: Vec<String>,
    /// Overrides [daemon] xdp_mode.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
    /// Overrides [daemon] control_socket.
    #[arg(long, value_name = "PATH", value_hint = clap::ValueHint::FilePath)]
    pub control_socket: Option<PathBuf>,
    /// Overrides [daemon] pin_dir (must be on a bpf filesystem).
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub pin_dir: Option<PathBuf>,
    /// Overrides [daemon] state_dir (the members of runtime sets are kept there).
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub state_dir: Option<PathBuf>,
    /// Overrides [daemon] cgroup: the cgroup v2 directory whose processes the outbound rules
    /// judge (default: the root of the cgroup2 mount, every process on the host).
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub cgroup: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace (RUST_LOG also works).
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,
}

/// Control the host firewall daemon.
#[derive(Debug, Parser)]
#[command(
    name = "fwctl",
    version,
    long_about = "Control the host firewall daemon.\n\nfwctl shows the rules in force and what \
the datapath did, lists tracked connections, validates rules files and reloads the daemon's \
rules, through the daemon's control socket (root, or members of [daemon] control_group). \
Every command that reads something takes --json for scripts.",
    after_help = FWCTL_AFTER_HELP
)]
pub struct FwctlArgs {
    /// Control socket of the daemon (default: [daemon] control_socket of --config, else
    /// /run/firewall/control.sock).
    #[arg(long, global = true, value_name = "PATH", value_hint = clap::ValueHint::FilePath)]
    pub socket: Option<PathBuf>,
    /// Rules file whose [daemon] control_socket (and pin_dir) to use.
    #[arg(long, global = true, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: FwctlCmd,
}

#[derive(Debug, Subcommand)]
pub enum FwctlCmd {
    /// Rules in force, in order, with how many packets each decided.
    #[command(after_help = "Examples:\n  fwctl list\n  fwctl list --json | jq '.rules[0]'")]
    List {
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Interfaces and XDP mode, rule counts, defaults and datapath counters.
    #[command(
        long_about = "Interfaces and XDP mode, rule counts, defaults and datapath counters.\n\n\
When the daemon cannot be reached, says whether the firewall is still enforcing (attachments \
pinned under the pin directory, which a stopped or crashed daemon leaves in force) or whether \
nothing protects the host (with --json, as a JSON object), and exits with status 3.",
        after_help = "Examples:\n  fwctl status\n  fwctl status --json | jq .counters"
    )]
    Status {
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
        /// Show every counter, also those still at zero (by default only the others).
        #[arg(long)]
        all: bool,
    },
    /// Re-read the daemon's rules file and switch to it atomically; an invalid file changes
    /// nothing and its error is printed.
    #[command(
        long_about = "Re-read the daemon's rules file and switch to it atomically; an invalid \
file, or one whose [[assert]] entries do not hold, changes nothing and its errors are \
printed.\n\n\
When fwctl runs over SSH (SSH_CONNECTION in its environment or its parents'), a file whose \
rules would deny new SSH connections from the caller's address is refused unless --force or \
--confirm is given: the session would survive as a tracked connection, but no new one could \
be opened.",
        after_help = "Examples:\n  fwctl reload\n  fwctl reload --dry-run\n  \
fwctl reload --confirm 60s && fwctl confirm\n  fwctl reload --recheck\n  \
systemctl reload firewall-daemon"
    )]
    Reload {
        /// Print the daemon's answer as JSON (errors too).
        #[arg(long)]
        json: bool,
        /// Also re-judge tracked inbound connections under the new rules, and end those the
        /// new rules deny: the host's socket is closed and their packets get the denying
        /// rule's action from then on.
        #[arg(long)]
        recheck: bool,
        /// Change nothing: show what would change (rules added, removed, settings) and every
        /// tracked connection the new rules would deny.
        #[arg(long, conflicts_with_all = ["recheck", "confirm"])]
        dry_run: bool,
        /// Apply the new rules, and put the previous ones back after DURATION (`60s`, `5m`)
        /// unless `fwctl confirm` comes first. The daemon keeps the timer: it fires even if
        /// fwctl or the SSH session dies.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_secs)]
        confirm: Option<u64>,
        /// Reload even if the new rules would deny new SSH connections from the caller.
        #[arg(long)]
        force: bool,
    },
    /// Kernel tracing on or off: the programs' trace messages (parse drops, connection
    /// table, state changes, the rules' verdicts) in the daemon's log.
    #[command(
        long_about = "Kernel tracing on or off: the programs' trace messages (why a frame is \
dropped before the rules, what the connection table says, state changes of tracked flows, the \
rules' verdict on new packets) in the daemon's log (journalctl -u firewall-daemon).\n\n\
Switching loads the rules in force again (a new generation, like a reload). Off, the messages \
are removed from the programs when they are loaded and cost nothing; on, each costs a \
message in a ring buffer per packet: for debugging a verdict, not for production traffic. \
`firewall-daemon --log-level trace` starts with tracing on.",
        after_help = "Examples:\n  fwctl debug on; journalctl -fu firewall-daemon\n  fwctl debug off"
    )]
    Debug {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Keep the rules a `fwctl reload --confirm` applied (stops the rollback timer).
    #[command(after_help = "Examples:\n  fwctl reload --confirm 2m\n  fwctl confirm")]
    Confirm {
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What the rules decide for a packet or connection, and why: the deciding rule (or the
    /// default), the later rules it shadows, and what tracked connections change.
    #[command(
        long_about = "What the rules decide for a packet or connection, and why.\n\n\
Inbound (`in`): a packet from REMOTE to local PORT; --program, --unit and --user describe \
the listening socket's owner. Outbound (`out`): a connection from this host to REMOTE:PORT; \
they describe the caller. The answer comes from the rules in force (the daemon's), or from \
the file given with --config, by the reference evaluator the kernel programs are tested \
against. It prints the action, the deciding rule (number, name, line) or the default, the \
rules that match too but come later, and notes on tracked connections.",
        after_help = "Examples:\n  fwctl explain in tcp 203.0.113.7 22\n  \
fwctl explain in icmp 2001:db8::1\n  \
fwctl explain out tcp 198.51.100.1 443 --program /usr/bin/curl\n  \
fwctl --config new-rules.toml explain in udp 10.0.0.5 53 --json"
    )]
    Explain {
        /// `in` (a packet to this host) or `out` (a connection this host makes).
        direction: DirectionArg,
        /// tcp, udp or icmp (inbound only: an echo request); `other` has nothing to explain.
        proto: ProtoArg,
        /// The remote address: the source inbound, the destination outbound.
        remote: std::net::IpAddr,
        /// The local port inbound, the destination port outbound (not with icmp).
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
        /// The socket's program (an absolute path).
        #[arg(long, value_name = "PATH", value_hint = clap::ValueHint::ExecutablePath)]
        program: Option<PathBuf>,
        /// The socket owner's systemd unit (`nginx.service`).
        #[arg(long, value_name = "UNIT")]
        unit: Option<String>,
        /// The socket owner's user (a name or a uid).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every listening socket (TCP listeners, bound UDP sockets) with its program, pid, user
    /// and unit, and who may reach it under the rules in force, IPv4 and IPv6 apart.
    #[command(
        after_help = "Examples:\n  fwctl ports\n  fwctl ports --json | jq '.sockets[] | select(.exposure[].everyone)'"
    )]
    Ports {
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Tracked connections: protocol, both endpoints, state, age, time left, packets and
    /// bytes each way, and what admitted them (like `conntrack -L`).
    #[command(
        long_about = "Tracked connections, one line each (like `conntrack -L`), with these \
columns:\n\n\
PROTO: tcp, udp or icmp (ICMP and ICMPv6 echo).\n\n\
LOCAL, REMOTE: this host's end and the other one, address and port (ICMP: address and echo \
id); while outbound rules name names, the remote address's name from a DNS answer follows \
in parentheses.\n\n\
STATE: for TCP the state as Linux names it (SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, \
CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE), for UDP UNREPLIED or REPLIED, for ICMP ECHO. A \
trailing ! marks a connection `fwctl reload --recheck` found the new rules deny: its host \
socket was closed, and its packets get the denying rule's action until it expires.\n\n\
AGE: since it was first seen. TIMEOUT: time left before it is forgotten if no packet comes \
(4d23h, 5h07m, 12m30s, 42s).\n\n\
PKTS IN/OUT, BYTES IN/OUT: received and sent (frame bytes; approximate when one connection's \
packets are handled on several CPUs at once).\n\n\
PROGRAM: the program that owns it, with its pid and user, when recorded.\n\n\
ADMITTED BY: rule N \"name\" (marked (earlier rules) if admitted under rules since \
reloaded), [defaults] inbound, host (outbound), host socket at start-up, or host traffic \
(picked up).",
        after_help = "Examples:\n  fwctl conns\n  fwctl conns --json |\n      jq '.connections[] | select(.state == \"ESTABLISHED\")'"
    )]
    Conns {
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The names rules match addresses by: each name the host's DNS answers gave some
    /// addresses (outbound), and each name the daemon looked up for the inbound rules.
    #[command(
        long_about = "The names outbound rules match addresses by, learnt from the DNS answers \
the host received (see \"Outbound rules by name\" in the README), one name a line with its \
addresses, the time each keeps the name, and the outbound rules that name it. Bytes of a name \
other than letters, digits, '-' and '_' are shown as \\DDD. Answers are read only while some \
outbound rule names a name. Then, under \"looked up for the inbound rules\", the names of the \
inbound rules (see \"Inbound rules by name\"): the addresses the daemon looked up, when it asks \
again, why the last lookup gave nothing (if it did), and the rules naming each.",
        after_help = "Examples:\n  fwctl dns\n  fwctl dns --json | jq '.names[] | select(.rules != [])'"
    )]
    Dns {
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stream the decisions the rules log (like `nft monitor trace`), or with --conns the
    /// connection events (like `conntrack -E`), one line each, until interrupted.
    #[command(
        long_about = "Stream the decisions the rules log (like `nft monitor trace`), or with \
--conns the connection events (like `conntrack -E`), one line each, until interrupted.\n\n\
A decision is logged when its rule says `log = true`, or when it is a reject or stealth of a \
rule without `log`, of [defaults] or of [conntrack] invalid while [log] denied is true (the \
default). The kernel logs at most [log] rate events per second per CPU (burst [log] burst); \
what it drops is counted in `fwctl status` (log_over_budget, log_ring_full). The same \
decisions go to the daemon's journal with fields (journalctl -u firewall-daemon \
ACTION=reject). Connection events: new and established (seen by looking at the tables every \
250 ms), closed (an expired flow removed) and denied (ended by `fwctl reload --recheck`). Filters combine: every one given must match; repeated ones are \
alternatives. A monitor that reads too slowly misses events and is told how many.",
        after_help = "Examples:\n  fwctl monitor\n  fwctl monitor --action reject --action stealth \
--direction in\n  fwctl monitor --json --port 22 --remote 203.0.113.0/24 | jq .\n  \
fwctl monitor --rule telnet\n  fwctl monitor --conns"
    )]
    Monitor {
        /// Print each event as one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Connection events (new, established, closed, denied by a recheck) instead of
        /// decisions.
        #[arg(long)]
        conns: bool,
        /// Only events of this action (repeatable).
        #[arg(long = "action", value_enum, value_name = "ACTION")]
        actions: Vec<ActionArg>,
        /// Only events of this direction.
        #[arg(long, value_enum)]
        direction: Option<DirectionArg>,
        /// Only events of this protocol (icmp includes ICMPv6).
        #[arg(long, value_enum)]
        proto: Option<ProtoArg>,
        /// Only events about this port: the local port inbound, the destination port outbound
        /// (repeatable).
        #[arg(long = "port", value_name = "PORT")]
        ports: Vec<u16>,
        /// Only events with this remote address, or an address in this network (repeatable).
        #[arg(long = "remote", value_name = "ADDR")]
        remotes: Vec<String>,
        /// Only decisions of this rule, by name or number (repeatable).
        #[arg(long = "rule", value_name = "NAME")]
        rules: Vec<String>,
    },
    /// Validate a rules file without touching the running firewall (exit 1 if invalid).
    #[command(after_help = "Examples:\n  fwctl check /etc/firewall/rules.toml\n  \
fwctl check --diff /etc/firewall/rules.toml.new\n  \
fwctl check --json rules.toml | jq '.errors[].message'")]
    Check {
        /// Print the result as JSON (also when the file is invalid).
        #[arg(long)]
        json: bool,
        /// Also show what would change against the rules in force (asks the daemon; root
        /// only): rules added and removed, settings, and the tracked connections the file's
        /// rules would deny.
        #[arg(long)]
        diff: bool,
        /// Pass even if the file's rules would deny new SSH connections from the caller.
        #[arg(long)]
        force: bool,
        /// The rules file to check.
        #[arg(value_hint = clap::ValueHint::FilePath)]
        file: PathBuf,
    },
    /// Add a rule after the last one in the rules file, then reload.
    #[command(
        long_about = "Add a rule after the last one in the rules file, then reload.\n\n\
The file is the daemon's (or --config FILE). It is edited in place: its comments and layout \
stay as they are, and the rule is written as a [[rule]] section. The result is checked as a \
reload would check it (fwctl check); if it is valid, the file is replaced atomically, the \
previous one kept as FILE~, the daemon reloads it and fwctl prints what changed. A rule the \
file would refuse, a file that already has errors, or a reload the daemon refuses (the file is \
then put back) changes nothing. Rules are tried in file order and the first that matches \
decides: a rule added after a broader one may never match (fwctl says so; use fwctl insert).",
        after_help = "Examples:\n  fwctl add allow in tcp 22 --from @lan --name ssh\n  \
fwctl add reject out tcp 25\n  fwctl add stealth in --from 198.51.100.0/24 --name scanner\n  \
fwctl add allow in udp 51820 --dry-run"
    )]
    Add {
        #[command(flatten)]
        rule: RuleArgs,
        #[command(flatten)]
        edit: EditArgs,
    },
    /// Add a rule in front of rule POSITION (1 = first) in the rules file, then reload.
    #[command(
        long_about = "Add a rule in front of rule POSITION (1 = first) in the rules file, \
then reload: the new rule becomes rule POSITION, so it decides before the rules after it. \
Otherwise as fwctl add.",
        after_help = "Examples:\n  fwctl insert 1 stealth in --from 203.0.113.0/24 --name \
blocked\n  fwctl insert 3 allow in tcp 8080 --from @lan"
    )]
    Insert {
        /// The rule number the new rule takes (fwctl list numbers them); past the last: at the
        /// end.
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        position: u64,
        #[command(flatten)]
        rule: RuleArgs,
        #[command(flatten)]
        edit: EditArgs,
    },
    /// Remove a rule, by number or name, from the rules file, then reload.
    #[command(
        long_about = "Remove a rule, by number (as fwctl list numbers them) or name, from \
the rules file, then reload. The comment directly above the rule goes with it. Otherwise as \
fwctl add: checked first (an [[assert]] the removal would break refuses it), the previous file \
kept as FILE~.",
        after_help = "Examples:\n  fwctl delete ssh\n  fwctl delete 3 --dry-run"
    )]
    Delete {
        /// The rule's number or its name.
        #[arg(value_name = "NUMBER|NAME")]
        rule: String,
        #[command(flatten)]
        edit: EditArgs,
    },
    /// Members of runtime sets (sets declared empty in the rules file): add, remove, list.
    #[command(
        subcommand,
        long_about = "Members of runtime sets: the sets the rules file declares empty \
(blocklist = []), filled while the rules stay in force (fail2ban's action, scripts). Changes \
apply to the kernel's tables at once, in place, and outlive reloads and restarts of the \
daemon ([daemon] state_dir)."
    )]
    Set(SetCmd),
}

/// `fwctl set ...`.
#[derive(Debug, Subcommand)]
pub enum SetCmd {
    /// Add addresses or networks to a runtime set, for a time or until deleted.
    #[command(
        long_about = "Add addresses or networks to a runtime set, for a time (--for) or until \
deleted. A member already there keeps the later of its two expiries. Tracked connections \
from the new members that the rules now deny are ended. Refused, changing nothing, when the \
new members break an [[assert]] of the rules file or, over SSH, would keep the caller from \
logging in again (--force adds them anyway).",
        after_help = "Examples:\n  fwctl set add blocklist 198.51.100.7 --for 1h\n  \
fwctl set add blocklist 2001:db8:bad::/48"
    )]
    Add {
        /// The set's name (without @).
        set: String,
        /// Addresses or networks (198.51.100.7, 2001:db8::/64).
        #[arg(required = true, value_name = "ADDR")]
        members: Vec<String>,
        /// How long: seconds (600) or a duration (10m, 1h30m, 7d); without it, until deleted.
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        /// Add them even if they break an [[assert]] or would lock the SSH caller out.
        #[arg(long)]
        force: bool,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove addresses or networks from a runtime set (one that is not there is no error).
    #[command(after_help = "Examples:\n  fwctl set del blocklist 198.51.100.7")]
    Del {
        set: String,
        #[arg(required = true, value_name = "ADDR")]
        members: Vec<String>,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove every member of a runtime set.
    #[command(after_help = "Examples:\n  fwctl set flush blocklist")]
    Flush {
        set: String,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The runtime sets (or one), the rules naming them, their members and time left.
    #[command(after_help = "Examples:\n  fwctl set list\n  fwctl set list blocklist --json")]
    List {
        set: Option<String>,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The rule of `fwctl add` and `fwctl insert`, as the file would say it.
#[derive(Debug, clap::Args)]
pub struct RuleArgs {
    /// allow, reject or stealth.
    pub action: ActionArg,
    /// in (packets arriving) or out (connections the host's programs open).
    pub direction: DirectionArg,
    /// tcp, udp, icmp (inbound only) or any; without it, every protocol.
    pub proto: Option<RuleProtoArg>,
    /// The port: 22, ssh, 8000-8100, or several with commas (80,443). Inbound the local port,
    /// outbound the destination port; without it, every port.
    pub port: Option<String>,
    /// Inbound: where the packets come from, an address, a network or @set (repeatable);
    /// without it, anywhere.
    #[arg(long, value_name = "ADDR")]
    pub from: Vec<String>,
    /// Outbound: where the connections go, an address, a network or @set (repeatable);
    /// without it, anywhere.
    #[arg(long, value_name = "ADDR")]
    pub to: Vec<String>,
    /// The rule's name (unique among the file's rules), for fwctl list, the log and delete.
    #[arg(long)]
    pub name: Option<String>,
    /// Only this executable (absolute path): the caller outbound, the listening program
    /// inbound.
    #[arg(long, value_name = "PATH", value_hint = clap::ValueHint::ExecutablePath)]
    pub program: Option<String>,
    /// Only processes of this systemd unit.
    #[arg(long, value_name = "UNIT")]
    pub unit: Option<String>,
    /// Only processes of this user (a name or a uid).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Log the rule's decisions (by default only denials are logged).
    #[arg(long)]
    pub log: bool,
}

/// How `fwctl add`, `insert` and `delete` apply the edit.
#[derive(Debug, clap::Args)]
pub struct EditArgs {
    /// Show the change and check the result; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the file, but do not ask the daemon to reload it.
    #[arg(long, conflicts_with = "dry_run")]
    pub no_reload: bool,
    /// Apply even if the new rules would deny new SSH connections from the caller.
    #[arg(long)]
    pub force: bool,
}

/// A rule's protocol, for `fwctl add` and `fwctl insert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuleProtoArg {
    Tcp,
    Udp,
    /// ICMP and ICMPv6 (inbound only).
    Icmp,
    /// Every protocol (TCP and UDP when a port or a program is given).
    Any,
}

/// A duration for `--confirm`: `90`, `90s`, `5m`, `1h` (at most a day), in seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 90s, 5m or 1h"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    }
    .ok_or_else(|| format!("{text:?} is not a duration such as 90s, 5m or 1h"))?;
    if !(1..=86_400).contains(&secs) {
        return Err(format!("{text:?}: the confirm timeout is 1 s to 24 h"));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn definitions_are_consistent() {
        FwctlArgs::command().debug_assert();
        DaemonArgs::command().debug_assert();
    }

    #[test]
    fn existing_command_lines_still_parse() {
        let a = FwctlArgs::try_parse_from(["fwctl", "reload", "--recheck", "--socket", "/s"])
            .expect("fwctl reload");
        assert!(matches!(
            a.cmd,
            FwctlCmd::Reload {
                recheck: true,
                json: false,
                dry_run: false,
                confirm: None,
                force: false
            }
        ));
        assert_eq!(a.socket, Some(PathBuf::from("/s")));
        let d = DaemonArgs::try_parse_from([
            "firewall-daemon",
            "-c",
            "r.toml",
            "-i",
            "a",
            "--interface",
            "b",
            "--xdp-mode",
            "generic",
            "--cgroup",
            "/sys/fs/cgroup/fw",
        ])
        .expect("daemon args");
        assert_eq!(d.interfaces, ["a", "b"]);
        assert_eq!(d.cgroup, Some(PathBuf::from("/sys/fs/cgroup/fw")));
        assert_eq!(d.xdp_mode, Some(XdpModeArg::Generic));
        assert_eq!(d.log_level, "info");
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("2m"), Ok(120));
        assert!(parse_duration_secs("0s").is_err() && parse_duration_secs("5d").is_err());
        let m = FwctlArgs::try_parse_from([
            "fwctl",
            "monitor",
            "--json",
            "--action",
            "reject",
            "--action",
            "stealth",
            "--port",
            "22",
            "--remote",
            "10.0.0.0/8",
            "--rule",
            "ssh",
        ])
        .expect("fwctl monitor");
        let FwctlCmd::Monitor {
            json,
            conns,
            actions,
            ports,
            remotes,
            rules,
            ..
        } = m.cmd
        else {
            panic!("not monitor: {:?}", m.cmd);
        };
        assert!(json && !conns);
        assert_eq!(actions, [ActionArg::Reject, ActionArg::Stealth]);
        assert_eq!(
            (ports, remotes, rules),
            (
                vec![22],
                vec!["10.0.0.0/8".to_string()],
                vec!["ssh".to_string()]
            )
        );
        let e = FwctlArgs::try_parse_from(["fwctl", "frobnicate"]).expect_err("unknown verb");
        assert_eq!(e.exit_code(), i32::from(exit::USAGE));
    }
}
