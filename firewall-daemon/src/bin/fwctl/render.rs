//! How fwctl prints what the daemon answers: tables for people (every string from the daemon
//! or the rules escaped, so a crafted rule name or path cannot forge lines or terminal
//! escapes), JSON for programs.

use firewall_daemon::control::{self, ConnsData, ListData, ReloadData, RuleView, StatusData};
use rules::model::Direction;

use super::print_line;

pub(super) fn print_json<T: serde::Serialize>(v: &T) {
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
pub(super) fn esc(s: &str) -> String {
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
pub(super) fn invisible(c: char) -> bool {
    matches!(c as u32,
        0xad | 0x61c | 0x180e | 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x206f | 0xfeff
            | 0xfff9..=0xfffb)
}

/// Fits a cell into `width` columns, marking what was cut.
pub(super) fn cell(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(width - 1).collect();
        t.push('…');
        t
    }
}

pub(super) fn dash(v: &[String]) -> String {
    if v.is_empty() {
        "any".into()
    } else {
        v.join(",")
    }
}

/// `  program=/usr/bin/firefox unit=nginx.service user=33` after a rule about a program, unit
/// or user; empty for a rule about every process, so those lines keep their layout.
pub(super) fn selector_note(r: &RuleView) -> String {
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

pub(super) fn print_list(l: &ListData) {
    println!("rules from {}", esc(&l.source));
    println!(
        "{:>4}  {:<28} {:<4} {:<5} {:<14} {:<28} {:<8} {:>10}",
        "#", "NAME", "DIR", "PROTO", "PORTS", "REMOTE", "ACTION", "PACKETS"
    );
    for r in &l.rules {
        let mut note = selector_note(r);
        if let Some(f) = &r.file {
            note.push_str(&format!("  (in {})", esc(f)));
        }
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

/// `all`: every counter, also those at zero.
pub(super) fn print_status(s: &StatusData, all: bool) {
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
    if let Some(p) = &s.pending_confirm {
        println!(
            "PENDING:     these rules are unconfirmed: generation {} comes back at {} (in {} s) \
             unless `fwctl confirm`",
            p.rollback_to_generation,
            esc(&p.deadline),
            p.secs_left
        );
    }
    let zero = s.counters.values().filter(|v| **v == 0).count();
    println!("counters:");
    for (k, v) in &s.counters {
        if all || *v != 0 {
            println!("  {:<26} {v}", esc(k));
        }
    }
    if !all && zero > 0 {
        println!("  ({zero} counters at zero not shown; --all shows them)");
    }
    for w in &s.warnings {
        println!("warning: {}", esc(w));
    }
}

pub(super) fn print_debug(d: &control::DebugData) {
    if d.tracing {
        println!(
            "kernel tracing on (generation {}): the programs' trace messages go to the daemon's \
             log (journalctl -u firewall-daemon); `fwctl debug off` removes them",
            d.generation
        );
    } else {
        println!(
            "kernel tracing off (generation {}): the programs carry no trace messages",
            d.generation
        );
    }
}

/// `fwctl set add|del|flush`: what changed, and what it did to connections.
pub(super) fn print_set_change(d: &control::SetData) {
    let set = esc(&d.set);
    let list = |v: &[String]| v.iter().map(|m| esc(m)).collect::<Vec<_>>().join(", ");
    if !d.added.is_empty() {
        println!("added to {set}: {}", list(&d.added));
    }
    if !d.updated.is_empty() {
        println!("already in {set} (expiry updated): {}", list(&d.updated));
    }
    if !d.removed.is_empty() {
        println!("removed from {set}: {}", list(&d.removed));
    }
    if !d.absent.is_empty() {
        println!("not in {set}: {}", list(&d.absent));
    }
    for c in &d.ended {
        println!("ended: {}", esc(c));
    }
    if d.regenerated {
        println!("(the tables were full: the rules in force were loaded again with room)");
    }
    println!("{set}: {} member(s)", d.members);
}

/// `fwctl set list`: each runtime set, the rules naming it, one member a line.
pub(super) fn print_set_list(sets: &[control::SetView]) {
    if sets.is_empty() {
        println!(
            "no runtime sets: declare one empty in the rules file's [sets] (blocklist = []) and \
             name it in a rule (remote = \"@blocklist\")"
        );
    }
    for s in sets {
        let rules = if s.rules.is_empty() {
            "named by no rule".to_owned()
        } else {
            format!("rules {}", esc(&s.rules.join(", ")))
        };
        println!("{} ({} member(s); {rules})", esc(&s.name), s.members.len());
        for m in &s.members {
            match m.left_secs {
                Some(left) => println!("  {}  {} left", esc(&m.member), human_duration(left)),
                None => println!("  {}  until deleted", esc(&m.member)),
            }
        }
    }
}

pub(super) fn print_confirm(d: &control::ConfirmData) {
    println!(
        "confirmed: the rules of generation {} stay in force",
        d.generation
    );
}

pub(super) fn print_reload(d: &ReloadData) {
    if let Some(l) = &d.lockout {
        println!("WARNING: {}", esc(l));
    }
    if d.dry_run {
        print_dry_run(d);
        return;
    }
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
        print_changes(d);
    }
    for w in &d.warnings {
        println!("warning: {}", esc(w));
    }
    if let Some(p) = &d.pending_confirm {
        println!(
            "UNCONFIRMED: run `fwctl confirm` before {} ({} s), or the rules of generation {} \
             come back",
            esc(&p.deadline),
            p.secs_left,
            p.rollback_to_generation
        );
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

/// The rules added and removed and the settings changed, one line each.
fn print_changes(d: &ReloadData) {
    for a in &d.added {
        println!("  + {}", esc(a));
    }
    for r in &d.removed {
        println!("  - {}", esc(r));
    }
    for c in &d.changed {
        println!("  ~ {}", esc(c));
    }
    if d.reordered {
        println!("  ~ rules reordered");
    }
    for s in &d.settings {
        println!("  * {}", esc(s));
    }
}

/// `fwctl reload --dry-run`, `fwctl check --diff`.
fn print_dry_run(d: &ReloadData) {
    if d.unchanged() {
        println!("dry run: no changes ({} rules)", d.rules);
    } else {
        println!(
            "dry run: {} rules would be in force (nothing was changed)",
            d.rules
        );
        print_changes(d);
    }
    for w in &d.warnings {
        println!("warning: {}", esc(w));
    }
    if d.would_deny.is_empty() {
        println!("every tracked connection would still be allowed");
    } else {
        println!(
            "{} tracked connection(s) the new rules deny (they continue unless reloaded with \
             --recheck, which ends them):",
            d.would_deny.len()
        );
        for c in &d.would_deny {
            println!("  x {}", esc(c));
        }
    }
}

/// `4d23h`, `5h07m`, `12m30s`, `42s`: two units at most, like `ps` and `systemctl`.
pub(super) fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h}h"),
    }
}

pub(super) fn human_bytes(b: u64) -> String {
    match b {
        0..1024 => format!("{b}B"),
        1024..1_048_576 => format!("{:.1}K", b as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1}M", b as f64 / 1_048_576.0),
        _ => format!("{:.1}G", b as f64 / 1_073_741_824.0),
    }
}

/// The owner column: `program (pid N, user)`, or `-` when nothing was recorded.
pub(super) fn owner(c: &control::ConnView) -> String {
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

pub(super) fn print_dns(d: &control::DnsData) {
    print_names_seen(d);
    if d.looked_up.is_empty() {
        return;
    }
    println!("\nlooked up for the inbound rules:");
    for l in &d.looked_up {
        let addrs: Vec<String> = l.addresses.iter().map(ToString::to_string).collect();
        let addrs = if addrs.is_empty() {
            "no address".to_owned()
        } else {
            addrs.join(" ")
        };
        let error = l
            .error
            .as_deref()
            .map(|e| format!("  ({})", esc(e)))
            .unwrap_or_default();
        println!(
            "{}  {addrs}  (again in {}){error}  [{}]",
            esc(&l.name),
            human_duration(l.next_in_secs),
            esc(&l.rules.join(", "))
        );
    }
}

/// The names the datapath learnt from DNS answers.
fn print_names_seen(d: &control::DnsData) {
    if !d.reading {
        println!("no outbound rule names a name: DNS answers are not read");
    }
    if d.names.is_empty() {
        println!("no address has a name");
        return;
    }
    for n in &d.names {
        let addrs: Vec<String> = n
            .addresses
            .iter()
            .map(|a| format!("{} ({})", a.address, human_duration(a.expires_in_secs)))
            .collect();
        let rules = if n.rules.is_empty() {
            "no rule".to_string()
        } else {
            n.rules.join(", ")
        };
        println!("{}  {}  [{}]", esc(&n.name), addrs.join(" "), esc(&rules));
    }
}

pub(super) fn print_conns(d: &ConnsData) {
    if d.connections.is_empty() {
        println!("no tracked connections");
        return;
    }
    let owners: Vec<String> = d.connections.iter().map(owner).collect();
    let w = |f: fn(&control::ConnView) -> usize, min: usize| {
        d.connections.iter().map(f).max().unwrap_or(0).max(min)
    };
    // Every column as wide as its widest cell: addresses, states and counts vary a lot.
    let states: Vec<String> = d
        .connections
        .iter()
        .map(|c| esc(&format!("{}{}", c.state, if c.denied { "!" } else { "" })))
        .collect();
    let pkts: Vec<String> = d
        .connections
        .iter()
        .map(|c| format!("{}/{}", c.packets_in, c.packets_out))
        .collect();
    let bytes: Vec<String> = d
        .connections
        .iter()
        .map(|c| format!("{}/{}", human_bytes(c.bytes_in), human_bytes(c.bytes_out)))
        .collect();
    let widest = |v: &[String], min: usize| {
        v.iter()
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(0)
            .max(min)
    };
    let (ws, wp, wb) = (widest(&states, 5), widest(&pkts, 11), widest(&bytes, 12));
    let wl = w(|c| esc(&c.local).chars().count(), 5);
    let remotes: Vec<String> = d
        .connections
        .iter()
        .map(|c| match &c.name {
            Some(n) => format!("{} ({})", esc(&c.remote), esc(n)),
            None => esc(&c.remote),
        })
        .collect();
    let wr = widest(&remotes, 6);
    let wo = owners
        .iter()
        .map(|o| o.chars().count())
        .max()
        .unwrap_or(0)
        .max(7);
    println!(
        "{:<6} {:<wl$} {:<wr$} {:<ws$} {:>6} {:>7} {:>wp$} {:>wb$}  {:<wo$}  ADMITTED BY",
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
    for (((c, owner), remote), (state, (pkts, bytes))) in d
        .connections
        .iter()
        .zip(&owners)
        .zip(&remotes)
        .zip(states.iter().zip(pkts.iter().zip(&bytes)))
    {
        println!(
            "{:<6} {:<wl$} {:<wr$} {:<ws$} {:>6} {:>7} {:>wp$} {:>wb$}  {:<wo$}  {}{}",
            esc(&c.proto),
            esc(&c.local),
            remote,
            state,
            human_duration(c.age_secs),
            human_duration(c.expires_in_secs),
            pkts,
            bytes,
            owner,
            esc(&c.admitted_by),
            if c.denied { " (denied by recheck)" } else { "" }
        );
    }
    println!("{} connection(s)", d.connections.len());
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test fails on the first thing it cannot unwrap"
)]
mod tests {
    use rules::model::{Action, Proto};

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
            file: None,
        }
    }

    #[test]
    fn durations_read_like_ps_and_systemctl() {
        for (secs, text) in [
            (0, "0s"),
            (42, "42s"),
            (750, "12m30s"),
            (18_420, "5h07m"),
            (431_996, "4d23h"),
        ] {
            assert_eq!(super::human_duration(secs), text);
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
            name: None,
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
