//! `[metrics]`: where the endpoint listens, the textfile, the interval; off by default.

use super::*;

fn parse_text(text: &str) -> Result<Ruleset, ConfigError> {
    let t = test_env();
    parse_with(text, Path::new("r.toml"), &t.env)
}

#[test]
fn metrics_are_off_unless_configured_and_each_form_of_listen_parses() {
    let rs = parse_text("").expect("empty");
    assert_eq!(rs.metrics.listen, None);
    assert_eq!(
        (rs.metrics.textfile.as_ref(), rs.metrics.interval_secs),
        (None, 15)
    );
    for (text, want) in [
        (
            "127.0.0.1:9741",
            MetricsListen::Tcp("127.0.0.1:9741".parse().expect("addr")),
        ),
        (
            "[::1]:9741",
            MetricsListen::Tcp("[::1]:9741".parse().expect("addr")),
        ),
        (
            "/run/firewall/metrics.sock",
            MetricsListen::Unix("/run/firewall/metrics.sock".into()),
        ),
    ] {
        let rs = parse_text(&format!("[metrics]\nlisten = {text:?}\n")).expect(text);
        assert_eq!(rs.metrics.listen, Some(want));
        assert!(rs.warnings.is_empty(), "{text}: {:?}", rs.warnings);
    }
    let rs = parse_text(
        "[metrics]\ntextfile = \"/var/lib/prometheus/node-exporter/firewall.prom\"\n\
         interval = \"1m\"\n",
    )
    .expect("textfile");
    assert_eq!(
        rs.metrics.textfile.as_deref(),
        Some(Path::new("/var/lib/prometheus/node-exporter/firewall.prom"))
    );
    assert_eq!(rs.metrics.interval_secs, 60);
}

#[test]
fn a_public_listen_address_is_allowed_with_a_warning() {
    let rs = parse_text("[metrics]\nlisten = \"0.0.0.0:9741\"\n").expect("parses");
    assert!(
        rs.warnings
            .iter()
            .any(|w| w
                .contains("r.toml:2:10: metrics.listen = \"0.0.0.0:9741\": whoever can connect")),
        "{:?}",
        rs.warnings
    );
}

#[test]
fn bad_metrics_settings_are_errors_with_their_position() {
    for (text, words) in [
        (
            "listen = \"localhost:9741\"",
            ":2:10: metrics.listen = \"localhost:9741\": expected an address and port",
        ),
        ("listen = \"9741\"", "expected an address and port"),
        (
            "textfile = \"firewall.prom\"",
            ":2:12: metrics.textfile = \"firewall.prom\": expected an absolute path ending in .prom",
        ),
        (
            "textfile = \"/tmp/firewall.txt\"",
            "expected an absolute path ending in .prom",
        ),
        (
            "interval = \"0s\"",
            "metrics.interval = \"0s\" is out of range",
        ),
        (
            "interval = \"2h\"",
            "metrics.interval = \"2h\" is out of range",
        ),
        (
            "port = 9741",
            "unknown key \"port\" in [metrics]; expected one of: listen, textfile, interval",
        ),
    ] {
        let e = parse_text(&format!("[metrics]\n{text}\n"))
            .expect_err(text)
            .to_string();
        assert!(e.contains(words), "{text}: {e}");
    }
}
