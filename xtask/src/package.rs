//! `cargo xtask package`: a Debian package, `target/package/firewall-daemon_VERSION_ARCH.deb`.
//!
//! The files are the ones `cargo xtask install --prefix /usr` puts in place (`install.rs`
//! stages them under a directory), in Debian's shape: man pages and the changelog compressed,
//! a machine-readable copyright file, `md5sums`, and `/etc/firewall/rules.toml` (the
//! workstation example) as a conffile, so an upgrade never overwrites the administrator's
//! rules. The archive is built by Debian's own `dpkg-deb`, its dependencies computed by
//! `dpkg-shlibdeps`.
//!
//! Installing does not start the firewall: its default rules let in nothing no rule allows,
//! which on a server reached over SSH refuses new logins. The administrator reviews them and
//! runs `systemctl enable --now firewall-daemon`. Removing the package stops and disables the
//! service and removes the pins under `/sys/fs/bpf/firewall`, so that the default
//! `on_stop = "keep"` does not leave a firewall enforcing with no package behind it.
//!
//! `--check` proves the package in a Debian root made from Debian's own packages
//! (debootstrap, bookworm, cached under `target/package/`): `apt-get install ./the.deb`,
//! `fwctl check` accepts the installed rules, the installed daemon runs from the root with them
//! (on the veth of a namespace it makes, `sandbox.rs`) and the installed fwctl reaches it,
//! `apt-get purge` leaves nothing behind; then lintian judges the archive.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    cargo,
    install::{self, Layout, Sources},
    output,
};

#[derive(Debug, Clone, clap::Args)]
pub struct PackageArgs {
    /// Also install the package in a Debian root (debootstrap, chroot), run and purge it, and
    /// run lintian on it.
    #[arg(long)]
    pub check: bool,
}

const NAME: &str = "firewall-daemon";
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

pub fn run(args: &PackageArgs) -> anyhow::Result<()> {
    cargo(&["build", "--release", "-p", "firewall-daemon"])?;
    let deb = build()?;
    eprintln!("xtask package: {}", deb.display());
    if args.check {
        check(&deb)?;
    }
    Ok(())
}

/// `target/package` (or under CARGO_TARGET_DIR).
fn out_dir() -> PathBuf {
    let release = crate::target_bin("");
    release
        .parent()
        .map_or_else(|| release.join("package"), |t| t.join("package"))
}

fn version() -> String {
    // Debian revision 1 of the upstream version.
    format!("{}-1", env!("CARGO_PKG_VERSION"))
}

/// Stages the files and builds the archive.
fn build() -> anyhow::Result<PathBuf> {
    let out = std::path::absolute(out_dir())?;
    let stage = out.join("root");
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    std::fs::create_dir_all(&stage)?;
    let layout = Layout {
        prefix: PathBuf::from("/usr"),
        destdir: Some(stage.clone()),
    };
    install::install(&layout, &Sources::of_workspace(), &mut std::io::sink())?;
    // Stripped as dh_strip does (symbols and notes out): a sixth of the size.
    for bin in ["usr/sbin/firewall-daemon", "usr/bin/fwctl"] {
        output(
            Command::new("strip")
                .args([
                    "--strip-unneeded",
                    "--remove-section=.comment",
                    "--remove-section=.note",
                ])
                .arg(stage.join(bin)),
        )?;
    }
    // Debian compresses man pages and changelogs (gzip -n: no name or time stamp, so the
    // archive is the same for the same files).
    let man = stage.join("usr/share/man");
    for section in std::fs::read_dir(&man)? {
        for page in std::fs::read_dir(section?.path())? {
            output(Command::new("gzip").args(["-9n"]).arg(page?.path()))?;
        }
    }
    let doc = stage.join("usr/share/doc").join(NAME);
    std::fs::create_dir_all(&doc)?;
    std::fs::write(doc.join("copyright"), COPYRIGHT)?;
    let changelog = doc.join("changelog.Debian");
    std::fs::write(
        &changelog,
        format!(
            "{NAME} ({}) unstable; urgency=medium\n\n  * Built from the source tree by \
             `cargo xtask package`.\n\n -- {MAINTAINER}  {}\n",
            version(),
            output(Command::new("date").args(["-R", "-d", "@0"]))?.trim()
        ),
    )?;
    output(Command::new("gzip").args(["-9n"]).arg(&changelog))?;

    let control_dir = stage.join("DEBIAN");
    std::fs::create_dir_all(&control_dir)?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let control = format!(
        "Package: {NAME}\nVersion: {}\nArchitecture: {}\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {}\nDepends: {}, netbase\nSection: net\nPriority: optional\n\
         Homepage: {HOMEPAGE}\nDescription: {DESCRIPTION}",
        version(),
        arch.trim(),
        installed_size_kib(&stage)?,
        // And netbase: /etc/services, for the service names in rules (`port = "ssh"`),
        // which the default rules use. Found by --check: a minimal root has none.
        depends(&stage)?,
    );
    std::fs::write(control_dir.join("control"), control)?;
    std::fs::write(
        control_dir.join("conffiles"),
        format!("{}\n", install::CONFIG),
    )?;
    for (name, text) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        let p = control_dir.join(name);
        std::fs::write(&p, text)?;
        set_mode(&p, 0o755)?;
    }
    std::fs::write(control_dir.join("md5sums"), md5sums(&stage)?)?;
    let deb = out.join(format!("{NAME}_{}_{}.deb", version(), arch.trim()));
    output(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

fn set_mode(p: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

fn installed_size_kib(stage: &Path) -> anyhow::Result<u64> {
    let text = output(
        Command::new("du")
            .args(["-sk", "--exclude=DEBIAN"])
            .arg(stage),
    )?;
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du printed no size")
}

/// The shared libraries' packages, as `dpkg-shlibdeps` reads them off the binaries.
fn depends(stage: &Path) -> anyhow::Result<String> {
    // dpkg-shlibdeps wants to run in a source tree: a bare debian/control is enough.
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("debian"))?;
    std::fs::write(
        dir.path().join("debian/control"),
        format!("Source: {NAME}\n\nPackage: {NAME}\nArchitecture: any\n"),
    )?;
    let text = output(
        Command::new("dpkg-shlibdeps")
            .current_dir(dir.path())
            .arg("-O")
            .arg(format!(
                "-e{}",
                stage.join("usr/sbin/firewall-daemon").display()
            ))
            .arg(format!("-e{}", stage.join("usr/bin/fwctl").display())),
    )?;
    text.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .context("dpkg-shlibdeps printed no dependencies")
}

fn md5sums(stage: &Path) -> anyhow::Result<String> {
    let mut files = Vec::new();
    collect(stage, stage, &mut files)?;
    files.sort();
    let mut out = String::new();
    for rel in files {
        if rel.starts_with("DEBIAN") || rel.starts_with("etc") {
            continue; // conffiles have their own checksums in dpkg's database
        }
        let sum = output(Command::new("md5sum").arg(stage.join(&rel)))?;
        let hash = sum.split_whitespace().next().context("md5sum")?;
        out.push_str(&format!("{hash}  {}\n", rel.display()));
    }
    Ok(out)
}

/// Bind mounts into the Debian root, undone (lazily, last first) when dropped.
#[derive(Default)]
struct Binds(Vec<PathBuf>);

impl Binds {
    /// Makes `from` visible at the same path inside `root`.
    fn bind(&mut self, root: &Path, from: &Path) -> anyhow::Result<()> {
        let to = root.join(from.strip_prefix("/")?);
        std::fs::create_dir_all(&to)?;
        output(Command::new("mount").arg("--bind").arg(from).arg(&to))?;
        self.0.push(to);
        Ok(())
    }
}

impl Drop for Binds {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

/// The daemon this check started, stopped (SIGTERM, then SIGKILL) when dropped, by its PID.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill on the PID of a child this process started and has not reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The installed daemon run from the Debian root, with the installed rules, as the unit runs
/// it but protecting the veth of a namespace made for it (`sandbox.rs`), its outbound hooks on
/// a cgroup made for it and its pins in a private bpffs: it must say it is ready, and the
/// installed fwctl must reach it. (systemd cannot run here, so `systemctl enable --now` is
/// not what runs it.)
fn run_installed(
    root: &Path,
    inside: &dyn Fn(&[&str]) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let sandbox = crate::sandbox::Sandbox::create(&std::path::absolute(out_dir())?.join("run"))?;
    let mut binds = Binds::default();
    // Only what the daemon reads: not the whole of /sys (its cgroup and bpf mounts would come
    // with it, and unmounting them from the root must never reach the host's).
    binds.bind(root, Path::new("/proc"))?;
    // BTF for the offsets of rules about programs; the possible CPUs for per-CPU maps.
    for dir in ["/sys/kernel/btf", "/sys/devices/system/cpu"] {
        if Path::new(dir).is_dir() {
            binds.bind(root, Path::new(dir))?;
        }
    }
    binds.bind(root, &sandbox.bpffs)?;
    binds.bind(root, sandbox.cgroup.path())?;
    std::fs::create_dir_all(root.join("run/firewall"))?;
    let pin_dir = sandbox.bpffs.join("firewall");
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", crate::sandbox::PROTECTED))
        .arg("--")
        .arg("chroot")
        .arg(root)
        .args([
            "/usr/sbin/firewall-daemon",
            "--config",
            "/etc/firewall/rules.toml",
            "--interface",
            crate::sandbox::PROTECTED_IF,
            "--xdp-mode",
            "generic",
        ])
        .arg("--pin-dir")
        .arg(&pin_dir)
        .arg("--cgroup")
        .arg(sandbox.cgroup.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting the installed daemon")?;
    let stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("firewall-daemon: ready") {
                let _ = tx.send(line);
            }
        }
    });
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let ready = rx.recv_timeout(std::time::Duration::from_secs(120));
    let status = ready.as_ref().ok().map(|_| inside(&["fwctl", "status"]));
    drop(running);
    let log = log.join().unwrap_or_default();
    let ready = ready.map_err(|_| anyhow::anyhow!("the installed daemon did not start:\n{log}"))?;
    let status = status.context("fwctl status")??;
    if !status.contains(crate::sandbox::PROTECTED_IF) {
        bail!("the installed fwctl's status does not show the protected interface:\n{status}");
    }
    eprintln!("xtask package: the installed daemon ran in the root: {ready}");
    drop(binds);
    drop(sandbox);
    Ok(())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            collect(root, &p, out)?;
        } else {
            out.push(p.strip_prefix(root)?.to_path_buf());
        }
    }
    Ok(())
}

/// A Debian root (cached), the package installed, run and purged in it; lintian on the archive.
fn check(deb: &Path) -> anyhow::Result<()> {
    let root = std::path::absolute(out_dir())?.join(SUITE);
    if !root.join("usr/bin/apt-get").exists() {
        eprintln!("xtask package: making a {SUITE} root with debootstrap (a few minutes)");
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        output(
            Command::new("debootstrap")
                .args(["--variant=minbase", SUITE])
                .arg(&root)
                .arg(MIRROR),
        )?;
    }
    let inside = |args: &[&str]| -> anyhow::Result<String> {
        output(
            Command::new("chroot")
                .arg(&root)
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    let name = deb.file_name().context("deb name")?;
    std::fs::copy(deb, root.join("tmp").join(name))?;
    let local = format!("/tmp/{}", name.to_string_lossy());
    inside(&["apt-get", "install", "-y", "-q", &local])?;
    let listed = inside(&["dpkg", "-L", NAME])?;
    for want in [
        "/usr/sbin/firewall-daemon",
        "/usr/bin/fwctl",
        "/usr/lib/systemd/system/firewall-daemon.service",
        "/usr/share/man/man5/rules.toml.5.gz",
        "/usr/share/man/man1/fwctl-add.1.gz",
        "/usr/share/bash-completion/completions/fwctl",
        "/etc/firewall/rules.toml",
    ] {
        if !listed.lines().any(|l| l == want) {
            bail!("the installed package lacks {want}:\n{listed}");
        }
    }
    let conffiles = inside(&["dpkg-query", "-W", "-f=${Conffiles}", NAME])?;
    if !conffiles.contains("/etc/firewall/rules.toml") {
        bail!("/etc/firewall/rules.toml is not a conffile: {conffiles}");
    }
    let version = inside(&["fwctl", "--version"])?;
    eprintln!(
        "xtask package: installed in {}: {}",
        root.display(),
        version.trim()
    );
    inside(&["firewall-daemon", "--version"])?;
    let checked = inside(&["fwctl", "check", "/etc/firewall/rules.toml"])?;
    eprintln!(
        "xtask package: fwctl check in the root: {}",
        checked.lines().last().unwrap_or("")
    );
    run_installed(&root, &inside)?;
    // An administrator's edit survives a reinstall: the conffile is not replaced.
    std::fs::write(
        root.join("etc/firewall/rules.toml"),
        std::fs::read_to_string(root.join("etc/firewall/rules.toml"))? + "\n# edited\n",
    )?;
    inside(&[
        "apt-get",
        "install",
        "-y",
        "-q",
        "--reinstall",
        "-o",
        "Dpkg::Options::=--force-confold",
        &local,
    ])?;
    if !std::fs::read_to_string(root.join("etc/firewall/rules.toml"))?.ends_with("# edited\n") {
        bail!("reinstalling replaced the edited /etc/firewall/rules.toml");
    }
    inside(&["apt-get", "purge", "-y", "-q", NAME])?;
    for path in listed.lines().filter(|l| l.starts_with('/')) {
        let p = root.join(path.trim_start_matches('/'));
        if p.is_file() {
            bail!("{path} is left after purge");
        }
    }
    if root.join("etc/firewall").exists() {
        bail!("/etc/firewall is left after purge");
    }
    eprintln!(
        "xtask package: installed, run, reinstalled over an edited conffile and purged in a {SUITE} root"
    );
    let lint = Command::new("lintian")
        .args(["--no-tag-display-limit", "--info"])
        .arg(deb)
        .output()
        .context("running lintian (apt-get install lintian)")?;
    let text = String::from_utf8_lossy(&lint.stdout);
    eprintln!("xtask package: lintian:\n{text}");
    // Errors fail the check; of the warnings, only initial-upload-closes-no-bugs is expected
    // (this package is not uploaded to Debian, so there is no ITP bug to close).
    let unexpected: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .filter(|l| !l.contains("initial-upload-closes-no-bugs"))
        .collect();
    if !unexpected.is_empty() {
        bail!("lintian: {}", unexpected.join("\n"));
    }
    Ok(())
}

const MAINTAINER: &str = "firewall maintainers <firewall@example.org>";
const HOMEPAGE: &str = "https://example.org/firewall";
const DESCRIPTION: &str = "host firewall decided in XDP, with per-program rules
 A stateful host firewall: an XDP program decides every packet arriving on
 the host's interfaces (allow, reject like a closed port, or drop without an
 answer) against rules per program, port and address; outbound and
 per-program rules are enforced at cgroup socket hooks. The daemon compiles
 /etc/firewall/rules.toml into BPF maps and reloads atomically; fwctl lists,
 checks, edits and reloads the rules and shows status and connections.
 .
 The service is not started on installation: review the rules, then run
 systemctl enable --now firewall-daemon.
";

const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: firewall
Source: https://example.org/firewall

Files: *
Copyright: 2026 the firewall authors
License: MIT or Apache-2.0

License: MIT or Apache-2.0
 This software is available under either of the MIT license or the Apache
 License, Version 2.0, at your option.
 .
 On Debian systems, the full text of the Apache License, Version 2.0 can be
 found in /usr/share/common-licenses/Apache-2.0.
 .
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the \"Software\"), to
 deal in the Software without restriction, including without limitation the
 rights to use, copy, modify, merge, publish, distribute, sublicense, and/or
 sell copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in
 all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING
 FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS
 IN THE SOFTWARE.
";

/// Not started on installation (see the module's notes); an upgrade restarts a running
/// daemon, which adopts the pinned firewall without a gap.
const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = \"configure\" ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    if [ -n \"$2\" ] && command -v deb-systemd-invoke >/dev/null; then
        deb-systemd-invoke try-restart firewall-daemon.service >/dev/null || true
    fi
fi
";

/// On removal: stop and disable the service, and remove the pins it leaves enforcing.
const PRERM: &str = "#!/bin/sh
set -e
if [ \"$1\" = \"remove\" ]; then
    if [ -d /run/systemd/system ] && command -v deb-systemd-invoke >/dev/null; then
        deb-systemd-invoke stop firewall-daemon.service >/dev/null || true
    fi
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper disable firewall-daemon.service >/dev/null || true
    fi
    # With on_stop = \"keep\" (the default) a stopped daemon's firewall goes on enforcing from
    # its pins: a removed package must not leave it so. (Another [daemon] pin_dir is the
    # administrator's to remove.)
    rm -rf /sys/fs/bpf/firewall
fi
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ \"$1\" = \"purge\" ]; then
    rm -f /etc/firewall/rules.toml~
    # [daemon] state_dir: the members of runtime sets.
    rm -rf /var/lib/firewall
    rmdir --ignore-fail-on-non-empty /etc/firewall 2>/dev/null || true
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper purge firewall-daemon.service >/dev/null || true
    fi
fi
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
";
