//! `cargo xtask install` and `cargo xtask uninstall`: the daemon, fwctl, the systemd unit, the
//! default rules file, man pages and shell completions, where a distribution package would put
//! them. `--destdir` stages everything under a directory for packagers (nothing outside it is
//! touched); `--prefix` (default /usr/local) places the binaries, man pages and completions.
//!
//! Layout, for a prefix P:
//!
//! | what | where |
//! |---|---|
//! | `firewall-daemon` | P/sbin |
//! | `fwctl` | P/bin |
//! | `firewall-daemon.service` | /usr/lib/systemd/system for P = /usr; P/lib/systemd/system for P = /usr/local (both are on systemd's unit path, and /etc/systemd/system stays the administrator's); /etc/systemd/system for any other P |
//! | rules | /etc/firewall/rules.toml, a copy of rules/examples/workstation.toml; never overwritten, kept by uninstall |
//! | examples | P/share/doc/firewall-daemon/examples/{workstation,server}.toml |
//! | fail2ban action | P/share/doc/firewall-daemon/fail2ban/fwctl.conf (copied into /etc/fail2ban/action.d by the administrator who wants it) |
//! | man pages | P/share/man/man1/fwctl.1, fwctl-{list,status,explain,ports,monitor,reload,confirm,debug,conns,dns,check,add,insert,delete,set}.1, man8/firewall-daemon.8, man5/rules.toml.5 |
//! | completions | P/share/bash-completion/completions/{fwctl,firewall-daemon}, P/share/zsh/site-functions/_{fwctl,firewall-daemon}, P/share/fish/vendor_completions.d/{fwctl,firewall-daemon}.fish |
//!
//! Man pages and completions are generated from the clap definitions in
//! `firewall-daemon/src/cli.rs` (compiled here on its own); `rules.toml(5)` from
//! `packaging/rules.toml.5.md`, which includes the README's reference of the file format.

mod markdown;
#[cfg(test)]
mod tests;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::{cargo, workspace_root};

/// The binaries' command lines, shared with the firewall-daemon crate (only `std` and `clap`).
#[expect(
    dead_code,
    reason = "xtask reads the command definitions for man pages and completions, not the rest"
)]
#[path = "../../firewall-daemon/src/cli.rs"]
mod cli;

/// `--destdir` and `--prefix`, shared by install and uninstall.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// Stage the files under this directory instead of / (for packagers): nothing outside it
    /// is touched.
    #[arg(long, value_name = "DIR")]
    pub destdir: Option<PathBuf>,
    /// Installation prefix for the binaries, man pages and completions.
    #[arg(long, value_name = "DIR", default_value = "/usr/local")]
    pub prefix: PathBuf,
}

/// Where everything goes.
#[derive(Debug, Clone)]
pub struct Layout {
    pub prefix: PathBuf,
    pub destdir: Option<PathBuf>,
}

pub const CONFIG: &str = cli::DEFAULT_CONFIG;
pub const UNIT_NAME: &str = "firewall-daemon.service";

impl Layout {
    pub fn new(args: &InstallArgs) -> anyhow::Result<Self> {
        if !args.prefix.is_absolute() {
            bail!("--prefix must be an absolute path");
        }
        let destdir = match &args.destdir {
            Some(d) if d.as_os_str().is_empty() => None,
            Some(d) => Some(std::path::absolute(d).context("resolving --destdir")?),
            None => None,
        };
        Ok(Self {
            prefix: args.prefix.clone(),
            destdir,
        })
    }

    pub fn bindir(&self) -> PathBuf {
        self.prefix.join("bin")
    }

    pub fn sbindir(&self) -> PathBuf {
        self.prefix.join("sbin")
    }

    pub fn mandir(&self) -> PathBuf {
        self.prefix.join("share/man")
    }

    pub fn unitdir(&self) -> PathBuf {
        if self.prefix == Path::new("/usr") || self.prefix == Path::new("/usr/local") {
            self.prefix.join("lib/systemd/system")
        } else {
            PathBuf::from("/etc/systemd/system")
        }
    }

    pub fn docdir(&self) -> PathBuf {
        self.prefix.join("share/doc/firewall-daemon")
    }

    /// Where `path` (an installed path) is written: under DESTDIR when there is one.
    pub fn staged(&self, path: &Path) -> PathBuf {
        match &self.destdir {
            Some(d) => d.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }
}

/// Where the installer takes its inputs from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Holds the release binaries `firewall-daemon` and `fwctl`.
    pub bin_dir: PathBuf,
    /// The source tree: packaging/, rules/, README.md.
    pub repo: PathBuf,
}

impl Sources {
    pub fn of_workspace() -> Self {
        let repo = workspace_root();
        Self {
            bin_dir: crate::target_bin(""),
            repo,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Content {
    Copy(PathBuf),
    Data(Vec<u8>),
}

/// One installed file.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The installed path (without DESTDIR).
    pub path: PathBuf,
    pub mode: u32,
    pub content: Content,
    /// Configuration: installed only when absent, and left in place by uninstall.
    pub config: bool,
    pub what: &'static str,
}

/// Every file install writes, generated in memory.
pub fn plan(layout: &Layout, src: &Sources) -> anyhow::Result<Vec<Entry>> {
    let mut v = Vec::new();
    let mut file = |path: PathBuf, mode, content, what| {
        v.push(Entry {
            path,
            mode,
            content,
            config: false,
            what,
        })
    };
    file(
        layout.sbindir().join("firewall-daemon"),
        0o755,
        Content::Copy(src.bin_dir.join("firewall-daemon")),
        "daemon",
    );
    file(
        layout.bindir().join("fwctl"),
        0o755,
        Content::Copy(src.bin_dir.join("fwctl")),
        "client",
    );
    file(
        layout.unitdir().join(UNIT_NAME),
        0o644,
        Content::Data(unit(layout, &src.repo)?.into_bytes()),
        "systemd unit",
    );
    for example in ["workstation.toml", "server.toml"] {
        file(
            layout.docdir().join("examples").join(example),
            0o644,
            Content::Copy(src.repo.join("rules/examples").join(example)),
            "example rules",
        );
    }
    file(
        layout.docdir().join("fail2ban/fwctl.conf"),
        0o644,
        Content::Copy(src.repo.join("packaging/fail2ban/fwctl.conf")),
        "fail2ban action",
    );
    for (name, section, page) in man_pages(&src.repo)? {
        file(
            layout
                .mandir()
                .join(format!("man{section}"))
                .join(format!("{name}.{section}")),
            0o644,
            Content::Data(page.into_bytes()),
            "man page",
        );
    }
    let share = layout.prefix.join("share");
    for (bin, cmd) in [
        ("fwctl", cli::FwctlArgs::command()),
        ("firewall-daemon", cli::DaemonArgs::command()),
    ] {
        for (shell, path) in [
            (
                Shell::Bash,
                share.join("bash-completion/completions").join(bin),
            ),
            (
                Shell::Zsh,
                share.join("zsh/site-functions").join(format!("_{bin}")),
            ),
            (
                Shell::Fish,
                share
                    .join("fish/vendor_completions.d")
                    .join(format!("{bin}.fish")),
            ),
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), bin, &mut out);
            file(path, 0o644, Content::Data(out), "completion");
        }
    }
    v.push(Entry {
        path: PathBuf::from(CONFIG),
        mode: 0o644,
        content: Content::Copy(src.repo.join("rules/examples/workstation.toml")),
        config: true,
        what: "rules",
    });
    Ok(v)
}

/// The unit with its paths filled in.
pub fn unit(layout: &Layout, repo: &Path) -> anyhow::Result<String> {
    let template = repo.join("packaging").join(UNIT_NAME);
    let text = std::fs::read_to_string(&template)
        .with_context(|| format!("reading {}", template.display()))?;
    let text = text
        .replace("@SBINDIR@", &layout.sbindir().display().to_string())
        .replace("@BINDIR@", &layout.bindir().display().to_string())
        .replace("@CONFIG@", CONFIG);
    if let Some(name) = placeholder(&text) {
        bail!("{}: unknown placeholder {name}", template.display());
    }
    Ok(text)
}

/// The first `@NAME@` left in `text`, if any.
fn placeholder(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        let after = &rest[at + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .unwrap_or(after.len());
        if len > 0 && after[len..].starts_with('@') {
            return Some(&rest[at..at + len + 2]);
        }
        rest = after;
    }
    None
}

/// Date for the man pages: `SOURCE_DATE_EPOCH` (reproducible builds), else the last commit's,
/// else none.
fn man_date(repo: &Path) -> String {
    if let Some(secs) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
    {
        return civil_date(secs);
    }
    Command::new("git")
        .args(["log", "-1", "--format=%cs"])
        .current_dir(repo)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// YYYY-MM-DD of a Unix time (proleptic Gregorian, UTC).
fn civil_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

const MANUAL: &str = "Host firewall";

/// Every man page: (name, section, roff source).
pub fn man_pages(repo: &Path) -> anyhow::Result<Vec<(String, &'static str, String)>> {
    let date = man_date(repo);
    let footer = format!("firewall {}", env!("CARGO_PKG_VERSION"));
    let mut pages = Vec::new();
    let mut fwctl = cli::FwctlArgs::command().disable_help_subcommand(true);
    fwctl.build();
    for sub in fwctl.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("fwctl-{}", sub.get_name());
        let page = command_page(sub.clone(), "1", &date, &footer, &["fwctl(1)"])?;
        pages.push((name, "1", page));
    }
    pages.push((
        "fwctl".into(),
        "1",
        command_page(fwctl, "1", &date, &footer, &[])?,
    ));
    let mut daemon = cli::DaemonArgs::command();
    daemon.build();
    pages.push((
        "firewall-daemon".into(),
        "8",
        command_page(daemon, "8", &date, &footer, &[])?,
    ));
    let source = repo.join("packaging/rules.toml.5.md");
    let text = std::fs::read_to_string(&source)
        .with_context(|| format!("reading {}", source.display()))?;
    let page = markdown::man_page(&text, "rules.toml", "5", &date, &footer, repo)
        .with_context(|| format!("rendering {}", source.display()))?;
    pages.push(("rules.toml".into(), "5", page));
    Ok(pages)
}

/// A command's man page: clap_mangen's title, name, synopsis, description, options and
/// subcommands, then one section per block of the command's `after_help` (see cli.rs).
fn command_page(
    cmd: clap::Command,
    section: &str,
    date: &str,
    footer: &str,
    see_also: &[&str],
) -> anyhow::Result<String> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .date(date)
        .source(footer)
        .manual(MANUAL);
    // Each of clap_mangen's section renderers starts with the roff crate's preamble; it is
    // kept once, at the top.
    let mut page = String::new();
    let mut add = |render: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| -> anyhow::Result<()> {
        let mut buf = Vec::new();
        render(&mut buf)?;
        let text = String::from_utf8(buf).context("man page is not UTF-8")?;
        page.push_str(if page.is_empty() {
            &text
        } else {
            strip_preamble(&text)
        });
        Ok(())
    };
    add(&|w| man.render_title(w))?;
    add(&|w| man.render_name_section(w))?;
    add(&|w| man.render_synopsis_section(w))?;
    add(&|w| man.render_description_section(w))?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        add(&|w| man.render_options_section(w))?;
    }
    if cmd.has_subcommands() {
        add(&|w| man.render_subcommands_section(w))?;
    }
    let mut roff = roff::Roff::new();
    let help = cmd
        .get_after_help()
        .map(|h| h.to_string())
        .unwrap_or_default();
    let mut blocks = after_help_blocks(&help);
    if !see_also.is_empty() && !blocks.iter().any(|b| b.title == "SEE ALSO") {
        blocks.push(Block {
            title: "SEE ALSO".into(),
            items: vec![(None, see_also.join(", "))],
        });
    }
    for b in blocks {
        render_block(&mut roff, &b);
    }
    page.push_str(strip_preamble(&roff.render()));
    Ok(page)
}

/// `text` without the two lines the roff crate puts first (defining the apostrophe string).
fn strip_preamble(text: &str) -> &str {
    match text.strip_prefix(".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n") {
        Some(rest) => rest,
        None => text,
    }
}

#[derive(Debug, PartialEq)]
pub struct Block {
    pub title: String,
    /// (term, text)
    pub items: Vec<(Option<String>, String)>,
}

/// Splits an `after_help` text (format described in cli.rs) into titled blocks.
pub fn after_help_blocks(text: &str) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(item) = line.strip_prefix("  ") {
            let item = item.trim();
            let Some(b) = blocks.last_mut() else { continue };
            let entry = if b.title == "EXAMPLES" {
                (None, item.to_string())
            } else {
                match item.split_once("  ") {
                    Some((term, text)) => (Some(term.trim().to_string()), text.trim().to_string()),
                    None => (None, item.to_string()),
                }
            };
            b.items.push(entry);
        } else {
            let title = line.trim().trim_end_matches(':');
            let title = match title {
                "Example" | "Examples" => "EXAMPLES".to_string(),
                t => t.to_uppercase(),
            };
            blocks.push(Block {
                title,
                items: Vec::new(),
            });
        }
    }
    blocks
}

fn render_block(roff: &mut roff::Roff, b: &Block) {
    use roff::{bold, roman};
    roff.control("SH", [b.title.as_str()]);
    if b.title == "EXAMPLES" {
        roff.control("PP", [])
            .control("RS", ["4"])
            .control("nf", []);
        for (_, line) in &b.items {
            roff.text([roman(line.as_str())]);
        }
        roff.control("fi", []).control("RE", []);
        return;
    }
    for (term, text) in &b.items {
        match term {
            Some(t) => {
                roff.control("TP", []).text([bold(t.as_str())]);
            }
            None => {
                roff.control("PP", []);
            }
        }
        if b.title == "SEE ALSO" {
            // name(section) references: the name in bold.
            let mut inlines = Vec::new();
            for (i, r) in text.split(", ").enumerate() {
                if i > 0 {
                    inlines.push(roman(", "));
                }
                match r.split_once('(') {
                    Some((name, rest)) => {
                        inlines.push(bold(name));
                        inlines.push(roman(format!("({rest}")));
                    }
                    None => inlines.push(roman(r)),
                }
            }
            roff.text(inlines);
        } else {
            roff.text([roman(text.as_str())]);
        }
    }
}

/// What install did with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Installed,
    /// An existing configuration file, left as it was.
    Kept,
}

/// Writes every file of the plan under the layout; returns what happened to each.
pub fn install(
    layout: &Layout,
    src: &Sources,
    log: &mut dyn std::io::Write,
) -> anyhow::Result<Vec<(Entry, Outcome)>> {
    for bin in ["firewall-daemon", "fwctl"] {
        let p = src.bin_dir.join(bin);
        if !p.is_file() {
            bail!(
                "{} is missing: build the release binaries first",
                p.display()
            );
        }
    }
    let mut done = Vec::new();
    for e in plan(layout, src)? {
        let dest = layout.staged(&e.path);
        if e.config && dest.exists() {
            writeln!(
                log,
                "  kept       {} (already there; the new default is in {})",
                e.path.display(),
                layout.docdir().join("examples/workstation.toml").display()
            )?;
            done.push((e, Outcome::Kept));
            continue;
        }
        write_file(&dest, &e)?;
        writeln!(log, "  installed  {:<13} {}", e.what, e.path.display())?;
        done.push((e, Outcome::Installed));
    }
    Ok(done)
}

/// Writes through a temporary file and a rename, so a running binary is never written over.
fn write_file(dest: &Path, e: &Entry) -> anyhow::Result<()> {
    let dir = dest
        .parent()
        .with_context(|| format!("{} has no parent", dest.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.xtask-install"));
    match &e.content {
        Content::Copy(from) => {
            std::fs::copy(from, &tmp).with_context(|| format!("copying {}", from.display()))?;
        }
        Content::Data(bytes) => {
            std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?
        }
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(e.mode))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("installing {}", dest.display()))?;
    Ok(())
}

/// Removes what install put there, except the rules file. Returns the removed paths.
pub fn uninstall(
    layout: &Layout,
    src: &Sources,
    log: &mut dyn std::io::Write,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for e in plan(layout, src)? {
        let dest = layout.staged(&e.path);
        if e.config {
            if dest.exists() {
                writeln!(
                    log,
                    "  kept       {} (your rules; delete it yourself if you no longer want it)",
                    e.path.display()
                )?;
            }
            continue;
        }
        match std::fs::remove_file(&dest) {
            Ok(()) => {
                writeln!(log, "  removed    {}", e.path.display())?;
                removed.push(e.path);
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", dest.display())),
        }
    }
    // Directories that only this package uses.
    for dir in [
        layout.docdir().join("examples"),
        layout.docdir().join("fail2ban"),
        layout.docdir(),
    ] {
        let _ = std::fs::remove_dir(layout.staged(&dir));
    }
    Ok(removed)
}

/// Whether this machine runs systemd (as PID 1).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// `cargo xtask install`.
pub fn install_cmd(args: &InstallArgs) -> anyhow::Result<()> {
    let layout = Layout::new(args)?;
    cargo(&["build", "--release", "-p", "firewall-daemon"])?;
    let src = Sources::of_workspace();
    match &layout.destdir {
        Some(d) => eprintln!(
            "xtask: installing under {} (prefix {})",
            d.display(),
            layout.prefix.display()
        ),
        None => eprintln!("xtask: installing (prefix {})", layout.prefix.display()),
    }
    let mut log = std::io::stderr();
    install(&layout, &src, &mut log)?;
    if layout.destdir.is_none() {
        eprintln!(
            "xtask: done. Next:\n  \
             fwctl check {CONFIG}            # review the rules first: inbound is stealth by default\n  \
             systemctl daemon-reload\n  \
             systemctl enable --now firewall-daemon\n  \
             fwctl status\n\
             Roll back with: systemctl disable --now firewall-daemon; rm -r /sys/fs/bpf/firewall \
             (stopping keeps the last rules enforcing until then); cargo xtask uninstall"
        );
    }
    Ok(())
}

/// `cargo xtask uninstall`.
pub fn uninstall_cmd(args: &InstallArgs) -> anyhow::Result<()> {
    let layout = Layout::new(args)?;
    if layout.destdir.is_none() && systemd_running() {
        let state = |verb: &str| {
            Command::new("systemctl")
                .args([verb, "--quiet", UNIT_NAME])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if state("is-active") || state("is-enabled") {
            bail!(
                "{UNIT_NAME} is still enabled or running: run `systemctl disable --now \
                 firewall-daemon` first"
            );
        }
    }
    let src = Sources::of_workspace();
    let mut log = std::io::stderr();
    uninstall(&layout, &src, &mut log)?;
    if layout.destdir.is_none() {
        let links = Path::new("/sys/fs/bpf/firewall/links");
        if links.is_dir() {
            eprintln!(
                "xtask: note: attachments are still pinned under {}: the last rules stay \
                 enforced until they are removed (`rm -r /sys/fs/bpf/firewall`) or the machine \
                 reboots",
                links.display()
            );
        }
        if systemd_running() {
            eprintln!("xtask: run `systemctl daemon-reload` to forget the unit");
        }
    }
    Ok(())
}
