//! Arbitrary bytes into the rules parser and validator (`config::parse_with`), which must never
//! panic: a daemon that crashes on a rules file stops enforcing (or never starts).
//!
//! A file it accepts must mean the same after toml re-serialises it: the parser's result may
//! depend on what the file says, never on how it is laid out (rule lines aside, which say where
//! each rule was written).
//!
//! Set files and service names resolve inside a private directory with one set file and a
//! services file. Inputs naming a set file anywhere else are skipped: the fuzzer must not read
//! the host's files (a FIFO or /dev/zero would hang it or eat its memory).
#![no_main]

use std::{
    fs,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use libfuzzer_sys::fuzz_target;
use rules::{
    config::{self, Env},
    model::Ruleset,
};

const SERVICES: &str = "ssh 22/tcp\ndomain 53/tcp\ndomain 53/udp\nhttp 80/tcp www\n";
const BLOCKLIST: &str =
    "# blocklist\n\n198.51.100.0/24\n203.0.113.99 # one host\n2001:db8:bad::/48\n";

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("firewall-fuzz-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("creating the fuzz directory");
        fs::write(dir.join("services"), SERVICES).expect("writing services");
        fs::write(dir.join("blocklist.txt"), BLOCKLIST).expect("writing the set file");
        Env {
            services_path: dir.join("services"),
            base_dir: dir,
        }
    })
}

/// Whether every `file = ...` of the document names a file inside the private directory. The
/// keys are compared after TOML decoding, so escapes (`"\u0066ile"`) cannot slip past.
fn set_files_stay_inside(value: &toml::Value) -> bool {
    match value {
        toml::Value::Table(t) => t.iter().all(|(k, v)| {
            let plain_name = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
            if k == "file"
                && let toml::Value::String(s) = v
                && !plain_name(s)
            {
                return false;
            }
            set_files_stay_inside(v)
        }),
        toml::Value::Array(a) => a.iter().all(set_files_stay_inside),
        _ => true,
    }
}

/// The meaning of a rule set, without where its rules were written.
fn meaning(mut r: Ruleset) -> Ruleset {
    for rule in &mut r.rules {
        rule.origin.line = 0;
    }
    r.warnings.clear();
    r
}

fn source() -> &'static Path {
    static SOURCE: OnceLock<PathBuf> = OnceLock::new();
    SOURCE.get_or_init(|| PathBuf::from("fuzz.toml"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The parser reads set files only from a document toml can parse.
    let doc: Option<toml::Table> = toml::from_str(text).ok();
    if let Some(doc) = &doc
        && !set_files_stay_inside(&toml::Value::Table(doc.clone()))
    {
        return;
    }
    let Ok(first) = config::parse_with(text, source(), env()) else {
        return;
    };
    let doc = doc.expect("a rules file the parser accepts is TOML");
    let again = toml::to_string(&doc).expect("re-serialising an accepted file");
    let second = config::parse_with(&again, source(), env()).unwrap_or_else(|e| {
        panic!(
            "accepted once, refused after re-serialisation:\n{e}\n--- re-serialised ---\n{again}"
        )
    });
    assert_eq!(
        meaning(first),
        meaning(second),
        "re-serialisation changed the meaning:\n--- re-serialised ---\n{again}"
    );
});
