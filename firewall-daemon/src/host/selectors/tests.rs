use std::{fs, path::Path};

use super::*;
use crate::host::exe_id::exe_id;
use rules::model::Selector;

/// A rule set with one rule per selector (`rule N` named `rN`).
fn ruleset(selectors: Vec<Selector>) -> Ruleset {
    let text = "[[rule]]\nname = \"r\"\nproto = \"tcp\"\nport = 22\naction = \"allow\"\n";
    let mut rs = rules::config::parse(text, Path::new("resolve-test.toml")).expect("parse");
    let base = rs.rules[0].clone();
    rs.rules = selectors
        .into_iter()
        .enumerate()
        .map(|(i, selector)| {
            let mut r = base.clone();
            r.index = i as u32;
            r.name = format!("r{}", i + 1).into();
            r.selector = selector;
            r
        })
        .collect();
    rs
}

fn program(p: &Path) -> Selector {
    Selector {
        program: Some(p.to_path_buf()),
        ..Selector::default()
    }
}

fn unit(name: &str) -> Selector {
    Selector {
        unit: Some(name.to_owned()),
        ..Selector::default()
    }
}

fn write_file(path: &Path, contents: &str) {
    fs::write(path, contents).expect("write file");
}

#[test]
fn program_resolves_like_exe_id_and_follows_replacement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("prog");
    write_file(&bin, "one");
    let rs = ruleset(vec![program(&bin)]);

    let first = Resolved::resolve(&rs, Path::new("/"));
    let id = first.exe(&bin).expect("resolved");
    assert_eq!(id, exe_id(&bin).expect("exe_id"));
    assert_eq!(first.programs.len(), 1);
    assert!(first.warnings(&rs).is_empty(), "{:?}", first.warnings(&rs));
    assert_eq!(first, Resolved::resolve(&rs, Path::new("/")));

    // An upgrade: a new file renamed over the old one.
    let tmp = dir.path().join("prog.new");
    write_file(&tmp, "two");
    fs::rename(&tmp, &bin).expect("rename");
    let second = Resolved::resolve(&rs, Path::new("/"));
    let id2 = second.exe(&bin).expect("resolved again");
    assert_ne!(id, id2);
    assert_eq!(id2, exe_id(&bin).expect("exe_id"));
    assert_ne!(first, second);
}

#[test]
fn missing_and_odd_programs_resolve_to_nothing_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("not-yet");
    let below_file = dir.path().join("file/sub");
    write_file(&dir.path().join("file"), "x");
    let rs = ruleset(vec![
        program(&missing),
        program(dir.path()),
        program(Path::new("relative/bin")),
        program(&below_file),
    ]);
    let r = Resolved::resolve(&rs, Path::new("/"));
    assert_eq!(r.programs.len(), 4);
    assert!(r.programs.values().all(Option::is_none), "{r:?}");
    assert_eq!(r.exe(&missing), None);
    let w = r.warnings(&rs);
    assert_eq!(w.len(), 4, "{w:#?}");
    // Located like every warning: FILE:LINE:COL: rule N ("name"): ...
    let want = format!(
        ": rule 1 (\"r1\"): program {} does not exist yet; the rule matches nothing until \
         it appears",
        missing.display()
    );
    assert!(w[0].ends_with(&want), "{}\nshould end with\n{want}", w[0]);
    assert!(w[1].contains("is not a regular file"), "{}", w[1]);
    assert!(w[2].contains("not an absolute path"), "{}", w[2]);
    assert!(w[3].contains(": rule 4 (\"r4\"): "), "{}", w[3]);
    assert!(w[3].contains("cannot be stat'ed"), "{}", w[3]);

    // It appears.
    write_file(&missing, "now");
    let r = Resolved::resolve(&rs, Path::new("/"));
    assert_eq!(r.exe(&missing), Some(exe_id(&missing).expect("exe_id")));
    assert_eq!(r.warnings(&rs).len(), 3);
}

/// [`resolve_in`] without systemd, trusting this process's own directories.
fn resolve_here(rs: &Ruleset, root: &Path, mount: &Path, mount_root: &str) -> Resolved {
    let lookup = UnitLookup {
        systemd: false,
        owner: nix::unistd::geteuid().as_raw(),
    };
    resolve_with(rs, root, mount, mount_root, lookup)
}

fn mkdirs(root: &Path, rel: &str) -> PathBuf {
    let p = root.join(rel);
    fs::create_dir_all(&p).expect("create dirs");
    p
}

fn ino(p: &Path) -> u64 {
    fs::metadata(p).expect("stat").ino()
}

#[test]
fn units_are_found_breadth_first_with_their_level() {
    let mount = tempfile::tempdir().expect("tempdir");
    let m = mount.path();
    let x = mkdirs(m, "a/system.slice/x.service");
    let dup_shallow = mkdirs(m, "b/dup.service");
    mkdirs(m, "a/c/d/dup.service");
    // A file of the unit's name is not a cgroup.
    write_file(&m.join("a/file.service"), "");
    let file_dir = mkdirs(m, "z/y/file.service");
    let rs = ruleset(vec![
        unit("x.service"),
        unit("dup.service"),
        unit("file.service"),
        unit("x.service"),
        unit("gone.service"),
    ]);

    let r = resolve_here(&rs, m, m, "/");
    assert_eq!(r.units.len(), 4);
    let got = r.unit("x.service").expect("x found");
    assert_eq!(
        *got,
        UnitCgroup {
            id: ino(&x),
            level: 3,
            path: x.clone()
        }
    );
    let dup = r.unit("dup.service").expect("dup found");
    assert_eq!((dup.level, &dup.path), (2, &dup_shallow));
    assert_eq!(dup.id, ino(&dup_shallow));
    let f = r.unit("file.service").expect("directory found");
    assert_eq!((f.level, &f.path), (3, &file_dir));
    assert_eq!(r.unit("gone.service"), None);
    assert_eq!(r.unit_levels(), 1 << 2 | 1 << 3);
    let w = r.warnings(&rs);
    let want = format!(
        "unit gone.service is not running (no cgroup named gone.service under {} that is \
         owned by root and not delegated); its rules match nothing until it starts",
        m.display()
    );
    assert!(
        w.len() == 1 && w[0].ends_with(&want),
        "{w:#?}\nshould end with\n{want}"
    );

    // A mount of a sub-tree (cgroup namespace): levels count from the hierarchy's root.
    let r = resolve_here(&rs, m, m, "/outer/inner");
    assert_eq!(r.unit("x.service").expect("x").level, 5);

    // Searching below a cgroup of our own: levels still count from the mount.
    let a = m.join("a");
    let r = resolve_here(&rs, &a, m, "/");
    assert_eq!(r.unit("x.service").expect("x").level, 3);
    assert_eq!(r.unit("dup.service").expect("dup").level, 4);
    assert_eq!(r.unit("file.service"), None);
    // Not lexically below the mount, but after resolving `..`.
    let r = resolve_here(&rs, &m.join("b/../a"), m, "/");
    assert_eq!(r.unit("x.service").expect("x").level, 3);
}

#[test]
fn units_deeper_than_the_kernel_walks_are_refused() {
    let mount = tempfile::tempdir().expect("tempdir");
    let m = mount.path();
    // Level MAX_UNIT_LEVEL: found. One deeper: found by the search but unmatchable.
    let mut rel = String::new();
    for l in 1..MAX_UNIT_LEVEL {
        rel.push_str(&format!("l{l}/"));
    }
    let ok = mkdirs(m, &format!("{rel}deepest.service"));
    let deep = mkdirs(m, &format!("{rel}l{MAX_UNIT_LEVEL}/deep.service"));
    let rs = ruleset(vec![unit("deepest.service"), unit("deep.service")]);
    let r = resolve_here(&rs, m, m, "/");
    let u = r.unit("deepest.service").expect("at the deepest level");
    assert_eq!((u.level, &u.path), (MAX_UNIT_LEVEL as u32, &ok));
    assert_eq!(r.unit("deep.service"), None);
    assert_eq!(r.unit_levels(), 1 << MAX_UNIT_LEVEL);
    let w = r.warnings(&rs);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains(&deep.display().to_string()), "{}", w[0]);
    assert!(
        w[0].contains(&format!("level {}", MAX_UNIT_LEVEL + 1)),
        "{}",
        w[0]
    );
    assert!(
        w[0].contains(&format!("deeper than the {MAX_UNIT_LEVEL} levels")),
        "{}",
        w[0]
    );

    // The mount root counts: the same tree one level down in the hierarchy.
    let r = resolve_here(&rs, m, m, "/ns");
    assert_eq!(r.unit("deepest.service"), None);
    assert!(r.warnings(&rs)[0].contains("deeper than"));
}

#[test]
fn units_in_a_users_subtree_are_neither_matched_nor_searched() {
    let mount = tempfile::tempdir().expect("tempdir");
    let m = mount.path();
    mkdirs(
        m,
        "user.slice/user-1000.slice/user@1000.service/app.slice/backup.service",
    );
    mkdirs(
        m,
        "user.slice/user-1000.slice/user@1000.service/app.slice/other.service",
    );
    let rs = ruleset(vec![unit("backup.service"), unit("other.service")]);
    let r = resolve_here(&rs, m, m, "/");
    assert_eq!(r.unit("backup.service"), None);
    assert_eq!(r.unit("other.service"), None);
    // The real one, outside: found, although deeper.
    let real = mkdirs(m, "a/b/c/system.slice/backup.service");
    let r = resolve_here(&rs, m, m, "/");
    assert_eq!(r.unit("backup.service").expect("real unit").path, real);
    // A daemon cgroup inside a user's subtree: nothing below it is trusted.
    let user = m.join("user.slice/user-1000.slice/user@1000.service");
    let r = resolve_here(&rs, &user, m, "/");
    assert_eq!(r.unit("backup.service"), None);
    let w = r.warnings(&rs);
    assert!(w[0].contains("is a user's own subtree"), "{w:?}");
}

#[test]
fn units_in_cgroups_owned_or_delegated_to_others_are_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("needs root to chown: skipped");
        return;
    }
    let chown = |p: &Path, uid: u32| {
        std::os::unix::fs::chown(p, Some(uid), None).expect("chown");
    };
    let mount = tempfile::tempdir().expect("tempdir");
    let m = mount.path();
    let rs = ruleset(vec![unit("backup.service")]);
    // A directory a user owns, and the unit's name below it (even root-owned).
    let owned = mkdirs(m, "owned/backup.service");
    chown(&m.join("owned"), 1000);
    // A root-owned directory delegated to a user (its cgroup.procs is the user's).
    let delegated = mkdirs(m, "delegated/backup.service");
    write_file(&m.join("delegated/cgroup.procs"), "");
    chown(&m.join("delegated/cgroup.procs"), 1000);
    let lookup = UnitLookup {
        systemd: false,
        owner: 0,
    };
    let r = resolve_with(&rs, m, m, "/", lookup);
    assert_eq!(r.unit("backup.service"), None, "{r:?}");
    // The unit's own directory owned by a user.
    let own = mkdirs(m, "a/backup.service");
    chown(&own, 1000);
    let r = resolve_with(&rs, m, m, "/", lookup);
    assert_eq!(r.unit("backup.service"), None, "{r:?}");
    // Root-owned and undelegated: found.
    let real = mkdirs(m, "b/c/backup.service");
    let r = resolve_with(&rs, m, m, "/", lookup);
    assert_eq!(r.unit("backup.service").expect("real").path, real);
    assert!(!owned.starts_with(&real) && !delegated.starts_with(&real));
}

#[test]
fn nested_units_are_reported() {
    let mount = tempfile::tempdir().expect("tempdir");
    let m = mount.path();
    let outer = mkdirs(m, "system.slice/outer.service");
    let inner = mkdirs(m, "system.slice/outer.service/inner.scope");
    mkdirs(m, "system.slice/other.service");
    let rs = ruleset(vec![
        unit("inner.scope"),
        unit("outer.service"),
        unit("other.service"),
    ]);
    let r = resolve_here(&rs, m, m, "/");
    let w = r.warnings(&rs);
    assert_eq!(
        w,
        vec![format!(
            "unit inner.scope ({}) is inside unit outer.service ({}): processes of \
             inner.scope are matched as inner.scope only, so rules naming outer.service do \
             not apply to them",
            inner.display(),
            outer.display()
        )]
    );
}

#[test]
fn root_outside_the_mount_resolves_to_nothing() {
    let mount = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    mkdirs(other.path(), "x.service");
    let bin = other.path().join("bin");
    write_file(&bin, "");
    let rs = ruleset(vec![unit("x.service"), program(&bin)]);
    let r = resolve_here(&rs, other.path(), mount.path(), "/");
    assert_eq!(r.unit("x.service"), None);
    assert!(r.exe(&bin).is_some(), "programs still resolve");
    let w = r.warnings(&rs);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains("is not below the cgroup2 mount"), "{}", w[0]);
}

#[test]
fn own_cgroup_resolves_on_this_host() {
    let Ok((mount, own)) = cgroup2::own_cgroup() else {
        eprintln!("no cgroup2: skipped");
        return;
    };
    let Some(name) = own.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    if own == mount {
        eprintln!("in the cgroup2 root: skipped");
        return;
    }
    let rs = ruleset(vec![unit(name)]);
    let r = Resolved::resolve(&rs, &mount);
    let Some(u) = r.unit(name) else {
        // Too deep, or a name used twice: only check that it says why.
        assert!(!r.warnings(&rs).is_empty());
        return;
    };
    if u.path == own {
        assert_eq!(u.id, ino(&own));
    }
}
