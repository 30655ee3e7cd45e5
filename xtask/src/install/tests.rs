//! `cargo xtask install` into a temporary DESTDIR: every file where the layout says, the rules
//! file never overwritten, man pages that `man` renders without a warning, completions that
//! bash loads, and a unit that `systemd-analyze verify` accepts. Stand-in executables replace
//! the release binaries (the e2e tests cover the real ones), so no cargo build runs here and
//! nothing outside the temporary directory is touched.
//!
//! Needs `man` (man-db, groff-base), `systemd-analyze` (systemd) and `unshare` (util-linux),
//! and root for the private mount namespace systemd-analyze runs in; the tests fail, saying
//! which package to install, when a tool is missing.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use super::*;

struct Staged {
    dir: tempfile::TempDir,
    layout: Layout,
    src: Sources,
}

impl Staged {
    fn new(prefix: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir_all(&bin_dir).expect("mkdir");
        for bin in ["firewall-daemon", "fwctl"] {
            let p = bin_dir.join(bin);
            std::fs::write(&p, "#!/bin/sh\nexit 0\n").expect("stub binary");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        }
        let layout = Layout::new(&InstallArgs {
            destdir: Some(dir.path().join("root")),
            prefix: PathBuf::from(prefix),
        })
        .expect("layout");
        let src = Sources {
            bin_dir,
            repo: workspace_root(),
        };
        Self { dir, layout, src }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn at(&self, path: &str) -> PathBuf {
        self.layout.staged(Path::new(path))
    }

    fn install(&self) -> Vec<(Entry, Outcome)> {
        let mut log = Vec::new();
        let done = install(&self.layout, &self.src, &mut log).expect("install");
        eprintln!("{}", String::from_utf8_lossy(&log));
        done
    }
}

/// Every regular file under `dir`, as absolute paths relative to `dir`.
fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(Path::new("/").join(p.strip_prefix(dir).expect("under dir")));
            }
        }
    }
    out
}

fn run(cmd: &mut Command, needs: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (install the {needs} package)"))
}

const DOCUMENTED: &[(&str, u32)] = &[
    ("/usr/local/sbin/firewall-daemon", 0o755),
    ("/usr/local/bin/fwctl", 0o755),
    (
        "/usr/local/lib/systemd/system/firewall-daemon.service",
        0o644,
    ),
    ("/etc/firewall/rules.toml", 0o644),
    (
        "/usr/local/share/doc/firewall-daemon/examples/workstation.toml",
        0o644,
    ),
    (
        "/usr/local/share/doc/firewall-daemon/examples/server.toml",
        0o644,
    ),
    ("/usr/local/share/man/man1/fwctl.1", 0o644),
    ("/usr/local/share/man/man1/fwctl-list.1", 0o644),
    ("/usr/local/share/man/man1/fwctl-status.1", 0o644),
    ("/usr/local/share/man/man1/fwctl-reload.1", 0o644),
    ("/usr/local/share/man/man1/fwctl-conns.1", 0o644),
    ("/usr/local/share/man/man1/fwctl-dns.1", 0o644),
    ("/usr/local/share/man/man1/fwctl-monitor.1", 0o644),
    ("/usr/local/share/man/man1/fwctl-check.1", 0o644),
    ("/usr/local/share/man/man1/fwctl-confirm.1", 0o644),
    ("/usr/local/share/man/man1/fwctl-debug.1", 0o644),
    ("/usr/local/share/man/man1/fwctl-explain.1", 0o644),
    ("/usr/local/share/man/man1/fwctl-ports.1", 0o644),
    ("/usr/local/share/man/man1/fwctl-add.1", 0o644),
    ("/usr/local/share/man/man1/fwctl-insert.1", 0o644),
    ("/usr/local/share/man/man1/fwctl-delete.1", 0o644),
    ("/usr/local/share/man/man1/fwctl-set.1", 0o644),
    (
        "/usr/local/share/doc/firewall-daemon/fail2ban/fwctl.conf",
        0o644,
    ),
    ("/usr/local/share/man/man8/firewall-daemon.8", 0o644),
    ("/usr/local/share/man/man5/rules.toml.5", 0o644),
    ("/usr/local/share/bash-completion/completions/fwctl", 0o644),
    (
        "/usr/local/share/bash-completion/completions/firewall-daemon",
        0o644,
    ),
    ("/usr/local/share/zsh/site-functions/_fwctl", 0o644),
    (
        "/usr/local/share/zsh/site-functions/_firewall-daemon",
        0o644,
    ),
    (
        "/usr/local/share/fish/vendor_completions.d/fwctl.fish",
        0o644,
    ),
    (
        "/usr/local/share/fish/vendor_completions.d/firewall-daemon.fish",
        0o644,
    ),
];

#[test]
fn every_file_lands_where_documented_and_nowhere_else() {
    let s = Staged::new("/usr/local");
    s.install();
    let expected: BTreeSet<PathBuf> = DOCUMENTED.iter().map(|(p, _)| PathBuf::from(p)).collect();
    assert_eq!(files_under(&s.root()), expected);
    for (path, mode) in DOCUMENTED {
        let meta = std::fs::metadata(s.at(path)).expect(path);
        assert_eq!(meta.permissions().mode() & 0o7777, *mode, "mode of {path}");
    }
    let unit =
        std::fs::read_to_string(s.at("/usr/local/lib/systemd/system/firewall-daemon.service"))
            .expect("unit");
    assert!(
        unit.contains(
            "\nExecStart=/usr/local/sbin/firewall-daemon --config /etc/firewall/rules.toml\n"
        ),
        "{unit}"
    );
    assert!(
        unit.contains(
            "\nExecReload=/usr/local/bin/fwctl --config /etc/firewall/rules.toml reload\n"
        ),
        "{unit}"
    );
    assert_eq!(
        placeholder(&unit),
        None,
        "placeholder left in the unit:\n{unit}"
    );
    assert_eq!(
        std::fs::read(s.at("/etc/firewall/rules.toml")).expect("rules"),
        std::fs::read(workspace_root().join("rules/examples/workstation.toml"))
            .expect("workstation"),
    );
}

#[test]
fn the_rules_file_is_never_overwritten_nor_uninstalled() {
    let s = Staged::new("/usr/local");
    s.install();
    let rules = s.at("/etc/firewall/rules.toml");
    std::fs::write(&rules, "# mine\n").expect("edit rules");
    let done = s.install();
    let kept: Vec<_> = done
        .iter()
        .filter(|(_, o)| *o == Outcome::Kept)
        .map(|(e, _)| e.path.clone())
        .collect();
    assert_eq!(kept, [PathBuf::from("/etc/firewall/rules.toml")]);
    assert_eq!(std::fs::read_to_string(&rules).expect("rules"), "# mine\n");

    let mut log = Vec::new();
    let removed = uninstall(&s.layout, &s.src, &mut log).expect("uninstall");
    assert_eq!(removed.len(), DOCUMENTED.len() - 1);
    assert_eq!(
        files_under(&s.root()),
        BTreeSet::from([PathBuf::from("/etc/firewall/rules.toml")])
    );
    assert!(String::from_utf8_lossy(&log).contains("kept       /etc/firewall/rules.toml"));
    assert!(!s.at("/usr/local/share/doc/firewall-daemon").exists());
    // Uninstalling again finds nothing to do.
    let again = uninstall(&s.layout, &s.src, &mut Vec::new()).expect("uninstall twice");
    assert!(again.is_empty());
}

#[test]
fn unit_directory_follows_the_prefix() {
    for (prefix, dir) in [
        ("/usr", "/usr/lib/systemd/system"),
        ("/usr/local", "/usr/local/lib/systemd/system"),
        ("/opt/firewall", "/etc/systemd/system"),
    ] {
        let layout = Layout::new(&InstallArgs {
            destdir: None,
            prefix: prefix.into(),
        })
        .expect("layout");
        assert_eq!(layout.unitdir(), Path::new(dir), "prefix {prefix}");
        let unit = unit(&layout, &workspace_root()).expect("unit");
        assert!(unit.contains(&format!("ExecStart={prefix}/sbin/firewall-daemon ")));
    }
    assert!(
        Layout::new(&InstallArgs {
            destdir: None,
            prefix: "usr".into()
        })
        .is_err()
    );
}

fn man(page: &Path) -> (String, String) {
    let out = run(
        Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .env("LANG", "C.UTF-8")
            .env_remove("MAN_KEEP_FORMATTING"),
        "man-db and groff-base",
    );
    assert!(out.status.success(), "man -l {}: {out:?}", page.display());
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn man_pages_render_without_warnings() {
    let s = Staged::new("/usr/local");
    s.install();
    let mandir = s.at("/usr/local/share/man");
    let expect: &[(&str, &[&str])] = &[
        (
            "man1/fwctl.1",
            &[
                "NAME",
                "SYNOPSIS",
                "DESCRIPTION",
                "OPTIONS",
                "SUBCOMMANDS",
                "fwctl-reload(1)",
                "EXAMPLES",
                "EXIT STATUS",
                "Permission denied",
                "FILES",
                "SEE ALSO",
            ],
        ),
        (
            "man1/fwctl-reload.1",
            &[
                "fwctl reload",
                "--recheck",
                "--json",
                "--socket",
                "SEE ALSO",
            ],
        ),
        ("man1/fwctl-check.1", &["--json", "EXAMPLES"]),
        (
            "man8/firewall-daemon.8",
            &[
                "NAME",
                "SYNOPSIS",
                "--xdp-mode",
                "generic",
                "SIGNALS",
                "SIGHUP",
                "ENVIRONMENT",
                "RUST_LOG",
                "FILES",
                "SEE ALSO",
            ],
        ),
        (
            "man5/rules.toml.5",
            &[
                "NAME",
                "rules.toml - rules and settings",
                "SYNOPSIS",
                "DESCRIPTION",
                "[daemon]",
                "[[rule]]",
                "first rule that matches",
                "CONNECTION TRACKING",
                "MALFORMED PACKETS",
                "drop_malformed_l2",
                "FILES",
                "SEE ALSO",
            ],
        ),
    ];
    for (page, words) in expect {
        let (text, warnings) = man(&mandir.join(page));
        assert!(warnings.trim().is_empty(), "{page}: {warnings}");
        // Justified lines get extra spaces between words: compare with single spaces.
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for w in *words {
            assert!(flat.contains(w), "{page} lacks {w:?}:\n{text}");
        }
    }
    // Every page renders.
    for (path, _) in DOCUMENTED.iter().filter(|(p, _)| p.contains("/man/")) {
        let (_, warnings) = man(&s.at(path));
        assert!(warnings.trim().is_empty(), "{path}: {warnings}");
    }
}

/// A man page is read in an 80-column terminal and is the reference of what the program does:
/// no line wider than that, and in rules.toml(5) none of the README's measurements or source
/// paths (they belong to readers of the source, and go stale in an installed page).
#[test]
fn man_pages_fit_80_columns_and_rules_toml_5_is_only_the_reference() {
    let s = Staged::new("/usr/local");
    s.install();
    let mut wide = Vec::new();
    for (path, _) in DOCUMENTED.iter().filter(|(p, _)| p.contains("/man/")) {
        let (text, _) = man(&s.at(path));
        for line in text.lines().filter(|l| l.chars().count() > 80) {
            wide.push(format!("{path}: {line}"));
        }
    }
    assert!(
        wide.is_empty(),
        "lines wider than 80 columns:\n{}",
        wide.join("\n")
    );
    let (text, _) = man(&s.at("/usr/local/share/man/man5/rules.toml.5"));
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut found = Vec::new();
    for word in flat.split(' ') {
        let w = word.trim_matches(|c: char| !c.is_alphanumeric() && c != '/' && c != '.');
        if w.ends_with(".rs") || w.contains("src/") || w.contains("BENCHMARKS") {
            found.push(w.to_string());
        }
    }
    for phrase in [
        "BPF_PROG_TEST_RUN",
        "kpps",
        "ns/packet",
        "testrun_bench",
        "easured",
    ] {
        if flat.contains(phrase) {
            found.push(phrase.to_string());
        }
    }
    // A figure in nanoseconds is a measurement of this machine, not a property of the file.
    let words: Vec<&str> = flat.split(' ').collect();
    for pair in words.windows(2) {
        if pair[1].trim_end_matches([',', '.', ')', ';']) == "ns"
            && pair[0].chars().any(|c| c.is_ascii_digit())
        {
            found.push(pair.join(" "));
        }
    }
    assert!(
        found.is_empty(),
        "rules.toml(5) carries source paths or measurements: {found:?}"
    );
}

#[test]
fn bash_completion_loads_and_completes() {
    let s = Staged::new("/usr/local");
    s.install();
    let dir = s.at("/usr/local/share/bash-completion/completions");
    for (bin, func_word, partial, expected) in [
        ("fwctl", "fwctl", "rel", "reload"),
        ("firewall-daemon", "firewall-daemon", "--xdp", "--xdp-mode"),
    ] {
        let script = format!(
            "set -e; source {file}; complete -p {bin}; \
             COMP_WORDS=({bin} {partial}); COMP_CWORD=1; COMP_LINE='{bin} {partial}'; \
             COMP_POINT=${{#COMP_LINE}}; \
             f=$(complete -p {bin} | sed -n 's/.*-F \\([^ ]*\\) .*/\\1/p'); \
             $f {func_word} {partial} {bin}; echo \"reply: ${{COMPREPLY[*]}}\"",
            file = dir.join(bin).display(),
        );
        let out = run(Command::new("bash").arg("-c").arg(&script), "bash");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{bin}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(&format!(" {bin}\n")), "{text}");
        assert!(
            text.contains(&format!("reply: {expected}")),
            "{bin}: {text}"
        );
    }
}

#[test]
fn other_shells_completions_parse_where_the_shell_is_installed() {
    let s = Staged::new("/usr/local");
    s.install();
    for (shell, path) in [
        ("zsh", "/usr/local/share/zsh/site-functions/_fwctl"),
        (
            "fish",
            "/usr/local/share/fish/vendor_completions.d/fwctl.fish",
        ),
    ] {
        let text = std::fs::read_to_string(s.at(path)).expect(path);
        assert!(text.contains("recheck"), "{path}");
        match Command::new(shell).arg("-n").arg(s.at(path)).output() {
            Ok(out) => assert!(out.status.success(), "{shell} -n {path}: {out:?}"),
            Err(_) => eprintln!("{shell} is not installed: checked the contents only"),
        }
    }
}

/// `systemd-analyze ARGS` in a private mount namespace with an empty /run: it would otherwise
/// touch /run/systemd/systemd-units-load, the timestamp the running manager compares unit files
/// against.
fn systemd_analyze(args: &[&std::ffi::OsStr]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs none /run && exec \"$@\"")
        .args(["sh", "systemd-analyze"])
        .args(args);
    c
}

#[test]
fn systemd_analyze_verifies_the_installed_unit() {
    let s = Staged::new("/usr/local");
    s.install();
    let unit = s.at("/usr/local/lib/systemd/system/firewall-daemon.service");
    // --root makes verify look for the ExecStart=/ExecReload= binaries under DESTDIR; MANPATH
    // lets it find the Documentation= man pages there.
    let root = format!("--root={}", s.root().display());
    let out = run(
        systemd_analyze(&["verify".as_ref(), root.as_ref(), unit.as_os_str()])
            .env("MANPATH", s.at("/usr/local/share/man"))
            .env("SYSTEMD_LOG_LEVEL", "notice"),
        "systemd and util-linux",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");

    // The sandboxing does not regress unnoticed (2.1 when written; 10 is unprotected; 2.4
    // since AF_INET and AF_INET6 are allowed for the [metrics] endpoint, which
    // IPAddressAllow=localhost keeps to this host).
    let out = run(
        &mut systemd_analyze(&[
            "security".as_ref(),
            "--offline=true".as_ref(),
            "--no-pager".as_ref(),
            root.as_ref(),
            unit.as_os_str(),
        ]),
        "systemd and util-linux",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for firewall-daemon.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    assert!(score <= 2.4, "exposure level {score}:\n{text}");
}

#[test]
fn a_broken_unit_is_caught_by_verify() {
    // The check above would pass vacuously if verify ignored the file.
    let s = Staged::new("/usr/local");
    s.install();
    let unit = s.at("/usr/local/lib/systemd/system/firewall-daemon.service");
    let text = std::fs::read_to_string(&unit).expect("unit");
    std::fs::write(&unit, text.replace("Type=notify", "Type=notifyy")).expect("break unit");
    let root = format!("--root={}", s.root().display());
    let out = run(
        systemd_analyze(&["verify".as_ref(), root.as_ref(), unit.as_os_str()])
            .env("MANPATH", s.at("/usr/local/share/man")),
        "systemd and util-linux",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("notifyy"),
        "verify did not notice a bad Type=: {stderr}"
    );
}

#[test]
fn after_help_blocks_become_sections() {
    let blocks = after_help_blocks("Examples:\n  fwctl a  b\n\nExit status:\n  0  ok\n  3  down\n");
    assert_eq!(
        blocks,
        [
            Block {
                title: "EXAMPLES".into(),
                items: vec![(None, "fwctl a  b".into())],
            },
            Block {
                title: "EXIT STATUS".into(),
                items: vec![
                    (Some("0".into()), "ok".into()),
                    (Some("3".into()), "down".into())
                ],
            },
        ]
    );
}

#[test]
fn man_date_is_reproducible() {
    assert_eq!(civil_date(0), "1970-01-01");
    assert_eq!(civil_date(951_782_400), "2000-02-29");
    assert_eq!(civil_date(1_763_683_200), "2025-11-21");
}

#[test]
fn skip_markers_leave_out_blocks_and_inline_text() {
    let md = "# A\n\nkept<!-- man: skip --> (`tests/x.rs`)<!-- /man -->, and kept.\n\n\
              <!-- man: skip -->\n\nMeasured: 5 ns.\n\n| a |\n|---|\n| 1 |\n\n<!-- /man -->\n\n\
              Also kept.\n";
    let page = markdown::man_page(md, "x", "5", "2026-01-01", "f", Path::new(".")).expect("page");
    for gone in ["tests/x.rs", "Measured", "5 ns", "TS"] {
        assert!(!page.contains(gone), "{gone:?} left in:\n{page}");
    }
    for kept in ["kept, and kept.", "Also kept."] {
        assert!(page.contains(kept), "{kept:?} missing from:\n{page}");
    }
    for broken in [
        "a <!-- man: skip --> b",
        "a <!-- /man --> b",
        "a <!-- man: skip --> <!-- man: skip --> b <!-- /man -->",
    ] {
        assert!(
            markdown::man_page(broken, "x", "5", "d", "f", Path::new(".")).is_err(),
            "{broken:?} rendered"
        );
    }
}

#[test]
fn readme_section_extraction() {
    let md = "# T\n\n## a\n\nx\n\n### a.1\n\ny\n\n## b\n\nz\n";
    assert_eq!(markdown::section(md, "a"), Some("\nx\n\n### a.1\n\ny\n\n"));
    assert_eq!(markdown::section(md, "b"), Some("\nz\n"));
    assert_eq!(markdown::section(md, "c"), None);
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README");
    assert!(
        markdown::section(&readme, "rules.toml").is_some(),
        "README.md lost its \"## rules.toml\" section, the source of rules.toml(5)"
    );
}
