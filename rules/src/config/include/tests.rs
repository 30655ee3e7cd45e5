use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

use crate::config::{self, ConfigError};

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("rules.d")).expect("rules.d");
        Self { dir }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        p
    }

    fn main(&self, text: &str) -> PathBuf {
        self.write("rules.toml", text)
    }
}

fn rule(name: &str, port: u16) -> String {
    format!("[[rule]]\nname = \"{name}\"\nproto = \"tcp\"\nport = {port}\naction = \"allow\"\n")
}

fn errors(e: &ConfigError) -> String {
    e.to_string()
}

#[test]
fn rules_come_in_file_then_pattern_then_name_order_numbered_across_files() {
    let d = Dir::new();
    d.write("rules.d/20-db.toml", &rule("db", 5432));
    d.write(
        "rules.d/10-web.toml",
        &format!("{}\n{}", rule("web", 80), rule("tls", 443)),
    );
    d.write("extra.toml", &rule("extra", 25));
    // Not matched: another extension, an editor's leftover.
    d.write("rules.d/30-off.toml.disabled", &rule("off", 1));
    d.write("rules.d/.10-web.toml.swp", "not toml at all [[[");
    let main = d.main(&format!(
        "include = [\"rules.d/*.toml\", \"extra.toml\"]\n\n[sets]\nlan = [\"10.0.0.0/8\"]\n\n{}",
        rule("ssh", 22)
    ));
    let rs = config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = rs.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["ssh", "web", "tls", "db", "extra"]);
    assert!(
        rs.rules
            .iter()
            .enumerate()
            .all(|(i, r)| r.index as usize == i)
    );
    let dir = main.parent().expect("dir");
    assert_eq!(
        rs.included,
        [
            dir.join("rules.d/10-web.toml"),
            dir.join("rules.d/20-db.toml"),
            dir.join("extra.toml")
        ]
    );
    let tls = &rs.rules[2];
    assert_eq!(rs.file_of(&tls.origin), dir.join("rules.d/10-web.toml"));
    assert_eq!(rs.place(&tls.origin), "rules.d/10-web.toml line 7");
    assert_eq!(rs.place(&rs.rules[0].origin), "line 6");
    assert_eq!(rs.included_name(&rs.rules[0].origin), None);
}

#[test]
fn problems_in_an_included_file_name_it_with_the_rules_numbers() {
    let d = Dir::new();
    d.write(
        "rules.d/web.toml",
        &format!(
            "{}\n[[rule]]\nname = \"bad\"\nport = 0\naction = \"allow\"\n",
            rule("web", 80)
        ),
    );
    let main = d.main(&format!(
        "include = [\"rules.d/*.toml\"]\n{}",
        rule("ssh", 22)
    ));
    let e = errors(&config::load(&main).expect_err("port 0"));
    let web = main.with_file_name("rules.d/web.toml");
    assert!(
        e.contains(&format!("{}:9:8: rule 3 (\"bad\"): ", web.display())),
        "{e}"
    );
}

#[test]
fn an_included_file_holds_rules_and_assertions_only_and_uses_the_main_files_sets() {
    let d = Dir::new();
    d.write(
        "rules.d/a.toml",
        "include = [\"x.toml\"]\n[defaults]\ninbound = \"allow\"\n[sets]\nmine = [\"192.0.2.0/24\"]\n\
         [[rule]]\nremote = \"@lan\"\naction = \"allow\"\n\
         [[assert]]\nin = \"tcp 22\"\nexpect = \"allow\"\n",
    );
    let main = d.main("include = [\"rules.d/a.toml\"]\n[sets]\nlan = [\"10.0.0.0/8\"]\n");
    let e = errors(&config::load(&main).expect_err("settings in an include"));
    for key in ["\"include\"", "\"defaults\"", "\"sets\""] {
        assert!(
            e.contains(&format!("{key} is not read in an included file")),
            "{key}: {e}"
        );
    }
    // Without them: the rule uses @lan, the assertion is kept with its file.
    d.write(
        "rules.d/a.toml",
        "[[rule]]\nremote = \"@lan\"\naction = \"allow\"\n\
         [[assert]]\nin = \"tcp 22\"\nexpect = \"allow\"\n",
    );
    let rs = config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rs.rules.len(), 1);
    assert_eq!(rs.assertions.len(), 1);
    assert_eq!(rs.assertions[0].origin.file, 1);
}

#[test]
fn a_named_file_must_exist_and_a_pattern_may_match_nothing() {
    let d = Dir::new();
    let main = d.main("include = [\"rules.d/*.toml\", \"nowhere.d/*.toml\"]\n");
    let rs = config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    assert!(rs.rules.is_empty() && rs.included.is_empty());
    let main = d.main("include = [\"rules.d/web.toml\"]\n");
    let e = errors(&config::load(&main).expect_err("missing"));
    assert!(
        e.contains("rules.toml:1:12: include \"rules.d/web.toml\": ")
            && e.contains("does not exist"),
        "{e}"
    );
    for bad in [
        "include = \"rules.d/*.toml\"",
        "include = [1]",
        "include = [\"\"]",
    ] {
        let main = d.main(bad);
        let e = errors(&config::load(&main).expect_err(bad));
        assert!(
            e.contains("include is a list of file names or patterns"),
            "{bad}: {e}"
        );
    }
    let main = d.main("include = [\"*/x.toml\"]\n");
    let e = errors(&config::load(&main).expect_err("wildcard directory"));
    assert!(e.contains("only be in the file name"), "{e}");
}

/// Whoever can write the directory a wildcard reads, or an included file, could add rules.
#[test]
fn a_directory_or_file_others_may_write_is_refused() {
    let d = Dir::new();
    d.write("rules.d/a.toml", &rule("a", 1));
    let rules_d = d.dir.path().join("rules.d");
    std::fs::set_permissions(&rules_d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let main = d.main("include = [\"rules.d/*.toml\"]\n");
    let e = errors(&config::load(&main).expect_err("world-writable rules.d"));
    assert!(e.contains("is writable by others (mode 0777)"), "{e}");
    std::fs::set_permissions(&rules_d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    let a = rules_d.join("a.toml");
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let e = errors(&config::load(&main).expect_err("world-writable file"));
    assert!(
        e.contains("a.toml") && e.contains("writable by everyone"),
        "{e}"
    );
}

#[test]
fn a_file_matched_twice_is_read_once_where_it_first_comes() {
    let d = Dir::new();
    d.write("rules.d/a.toml", &rule("a", 1));
    d.write("rules.d/b.toml", &rule("b", 2));
    let main = d.main("include = [\"rules.d/b.toml\", \"rules.d/*.toml\"]\n");
    let rs = config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = rs.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["b", "a"]);
    assert!(
        rs.warnings.iter().any(|w| w.contains("is read once")),
        "{:?}",
        rs.warnings
    );
}

/// A rule shadowed by a rule of another file says which file that rule is in.
#[test]
fn warnings_about_shadowed_rules_name_the_other_file() {
    let d = Dir::new();
    d.write("rules.d/late.toml", &rule("late", 22));
    let main = d.main(&format!(
        "include = [\"rules.d/late.toml\"]\n[[rule]]\nname = \"all tcp\"\nproto = \"tcp\"\naction = \"allow\"\n\n{}",
        rule("ssh", 2222)
    ));
    let rs = config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    let late = main.with_file_name("rules.d/late.toml");
    assert!(
        rs.warnings.iter().any(|w| w
            .starts_with(&format!("{}:1:1: rule 3 (\"late\"): ", late.display()))
            && w.contains("rule 1 (\"all tcp\", line 2)")),
        "{:?}",
        rs.warnings
    );
}

#[test]
fn without_include_nothing_else_is_read() {
    let d = Dir::new();
    d.write("rules.d/a.toml", &rule("a", 1));
    let rs = config::load(&d.main(&rule("ssh", 22))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((rs.rules.len(), rs.included.len()), (1, 0));
}
