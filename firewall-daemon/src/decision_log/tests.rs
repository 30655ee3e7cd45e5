//! Naming, filtering and printing events, without a kernel.

use firewall_common::{ACTION_REJECT, ACTION_STEALTH, DEFAULT_RULE, EVENT_INBOUND, WHY_RULE};

use super::*;

fn mapped(v4: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12..].copy_from_slice(&v4);
    a
}

fn inbound_reject() -> LogEvent {
    LogEvent {
        ts_ns: crate::conntrack::monotonic_ns(),
        local: mapped([10, 0, 0, 1]),
        remote: mapped([203, 0, 113, 7]),
        verdict: firewall_common::verdict(2, ACTION_REJECT),
        generation: 7,
        kind: EVENT_INBOUND,
        why: WHY_RULE,
        ifindex: 3,
        local_port: 23,
        remote_port: 51234,
        family: ct::FAMILY_V4,
        proto: PROTO_TCP as u8,
        ..Default::default()
    }
}

fn names(rule: Option<(u32, &str)>) -> Names {
    Names {
        rule: rule.map(|(n, s)| (n, s.to_string())),
        interface: Some("eth0".into()),
        program: None,
        unit: None,
        user: None,
    }
}

#[test]
fn an_inbound_reject_is_named_and_printed_on_one_line() {
    let e = event(&inbound_reject(), names(Some((3, "telnet"))));
    assert_eq!(e.action.as_deref(), Some("reject"));
    assert_eq!((e.rule, e.rule_name.as_deref()), (Some(3), Some("telnet")));
    assert_eq!(
        e.remote_addr,
        "203.0.113.7".parse::<IpAddr>().expect("test value")
    );
    assert_eq!(e.local_addr, Some("10.0.0.1".parse().expect("test value")));
    assert_eq!((e.local_port, e.remote_port), (Some(23), Some(51234)));
    let line = human_line(&e);
    assert!(
        line.ends_with("in reject tcp 203.0.113.7:51234 -> 10.0.0.1:23 eth0 rule 3 \"telnet\""),
        "{line}"
    );
    let f: Vec<&str> = fields(&e).iter().map(|(k, _)| *k).collect();
    for k in [
        "rule",
        "action",
        "direction",
        "proto",
        "local_addr",
        "local_port",
        "remote_addr",
        "remote_port",
        "interface",
    ] {
        assert!(f.contains(&k), "{k} missing from {f:?}");
    }
    assert!(
        !f.contains(&"program"),
        "unknown fields are left out: {f:?}"
    );
}

#[test]
fn defaults_and_invalid_name_no_rule() {
    let mut raw = inbound_reject();
    raw.why = WHY_DEFAULT;
    raw.verdict = firewall_common::verdict(DEFAULT_RULE, ACTION_STEALTH);
    let e = event(&raw, names(None));
    assert_eq!((e.rule, e.by.as_str()), (None, "[defaults] inbound"));
    raw.why = WHY_INVALID;
    let e = event(&raw, names(None));
    assert_eq!(e.by, "[conntrack] invalid");
    // A flow a recheck ended under the default.
    raw.why = WHY_RECHECK;
    let e = event(&raw, names(None));
    assert_eq!((e.rule, e.by.as_str()), (None, "[defaults] inbound"));
}

#[test]
fn filters_combine() {
    let e = event(&inbound_reject(), names(Some((3, "telnet"))));
    let all = MonitorFilter::default();
    assert!(all.matches(&e));
    let f = |f: MonitorFilter| f.matches(&e);
    assert!(f(MonitorFilter {
        actions: vec!["reject".into()],
        ports: vec![23],
        remotes: vec!["203.0.113.0/24".parse().expect("test value")],
        rules: vec!["telnet".into()],
        direction: Some("in".into()),
        proto: Some("tcp".into()),
        ..Default::default()
    }));
    assert!(f(MonitorFilter {
        rules: vec!["3".into()],
        ..Default::default()
    }));
    assert!(!f(MonitorFilter {
        actions: vec!["stealth".into()],
        ..Default::default()
    }));
    assert!(!f(MonitorFilter {
        ports: vec![22],
        ..Default::default()
    }));
    assert!(!f(MonitorFilter {
        remotes: vec!["198.51.100.0/24".parse().expect("test value")],
        ..Default::default()
    }));
    assert!(!f(MonitorFilter {
        conns: true,
        ..Default::default()
    }));
}

#[test]
fn monitor_lines_round_trip() {
    let e = event(&inbound_reject(), names(Some((3, "telnet"))));
    for line in [
        MonitorLine::Event(Box::new(e)),
        MonitorLine::Lost { count: 12 },
    ] {
        let text = serde_json::to_string(&line).expect("test value");
        assert_eq!(
            serde_json::from_str::<MonitorLine>(&text).expect("test value"),
            line
        );
    }
}

#[test]
fn a_short_record_is_not_an_event() {
    assert!(decode(&[0u8; 8]).is_none());
    let raw = inbound_reject();
    // SAFETY: plain data, read as bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&raw as *const LogEvent).cast::<u8>(),
            size_of::<LogEvent>(),
        )
    };
    assert_eq!(decode(bytes), Some(raw));
}
