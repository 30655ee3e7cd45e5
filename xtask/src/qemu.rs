//! `cargo xtask test --kernel LIST`: the test suite on other kernels, each booted in QEMU.
//!
//! The workspace's test binaries are built once on the host (`cargo test --no-run`), then for
//! each kernel a self-contained initramfs is packed with them (at their own absolute paths, so
//! `CARGO_BIN_EXE_*` and `CARGO_MANIFEST_DIR` hold in the guest), their shared libraries, the
//! tools the tests run (ip, nsenter, nmap, nstat), the kernel's modules and a Rust `/init`
//! ([`init`]). The guest's output comes back on its second serial port and its verdict through
//! the isa-debug-exit device. Everything is cached under `target/qemu/`.

mod init;
mod initramfs;
mod kernels;

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use cargo_metadata::{Message, TargetKind};

use self::{
    init::{Event, Step},
    initramfs::Image,
    kernels::Kernel,
};
use crate::workspace_root;

/// Programs the integration tests run (firewall-daemon/tests): namespaces and addresses,
/// entering a namespace, scanning, reading SNMP counters, bash (copied by the identity
/// test as a client whose executable it knows), mount, umount, mkfs.btrfs and btrfs (identity
/// on overlayfs and btrfs subvolumes), nft (the NAT of tests/containers.rs) and bpftool (the
/// unit test that checks the structure offsets against its reading of the kernel's BTF).
const TOOLS: &[&str] = &[
    "ip",
    "nsenter",
    "nmap",
    "nstat",
    "bash",
    "mount",
    "umount",
    "mkfs.btrfs",
    "btrfs",
    "nft",
    "bpftool",
];

/// Guest memory and CPUs: two CPUs like this machine, so the tests' concurrency is the same.
const MEMORY: &str = "2G";
const CPUS: &str = "2";
/// One test binary may take this long in the guest before it is killed.
const TEST_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// A whole guest run (boot and every test binary): the whole suite on 6.1 under software
/// emulation takes longer than an hour, and each binary has its own limit above.
const GUEST_TIMEOUT: Duration = Duration::from_secs(180 * 60);

const GUEST_TARGET: &str = "x86_64-unknown-linux-musl";

#[derive(Debug, Clone, Copy)]
enum Target {
    Host,
    Guest(&'static Kernel),
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Target::Host, Target::Host) => true,
            (Target::Guest(a), Target::Guest(b)) => a.name == b.name,
            _ => false,
        }
    }
}

/// `host`, kernel names and `all`, comma-separated, in order, each once.
fn parse_list(list: &str) -> anyhow::Result<Vec<Target>> {
    let mut out = Vec::new();
    let mut add = |t: Target| {
        if !out.contains(&t) {
            out.push(t);
        }
    };
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "all" => {
                add(Target::Host);
                kernels::KERNELS.iter().for_each(|k| add(Target::Guest(k)));
            }
            "host" => add(Target::Host),
            name => match Kernel::find(name) {
                Some(k) => add(Target::Guest(k)),
                None => bail!(
                    "unknown kernel {name:?}: use host, {}, or all",
                    kernels::KERNELS
                        .iter()
                        .map(|k| k.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        }
    }
    if out.is_empty() {
        bail!("--kernel needs a kernel: host, 6.1, 6.12 or all");
    }
    Ok(out)
}

/// A test binary to run in the guests.
struct TestBinary {
    /// "firewall-daemon test e2e", "firewall-daemon lib", ...
    name: String,
    path: PathBuf,
    package: String,
    manifest_dir: PathBuf,
}

/// What `cargo test --no-run` produced.
struct Build {
    tests: Vec<TestBinary>,
    /// The packages' binaries (`CARGO_BIN_EXE_*` of the integration tests).
    bins: Vec<PathBuf>,
}

/// Runs the suite on every kernel in `list` (`host`, `6.1`, `6.12`, `all`). `cargo_args` are
/// `cargo test` arguments; those after a further `--` go to every test binary.
pub fn test(list: &str, cargo_args: &[String]) -> anyhow::Result<()> {
    let targets = parse_list(list)?;
    let mut results: Vec<(String, anyhow::Result<GuestRun>)> = Vec::new();
    let mut host: Option<anyhow::Result<()>> = None;
    let guests: Vec<&Kernel> = targets
        .iter()
        .filter_map(|t| match t {
            Target::Guest(k) => Some(*k),
            Target::Host => None,
        })
        .collect();
    if targets.iter().any(|t| matches!(t, Target::Host)) {
        let mut args = vec!["test", "--workspace", "--no-fail-fast"];
        args.extend(cargo_args.iter().map(String::as_str));
        host = Some(crate::cargo(&args));
    }
    if !guests.is_empty() {
        check_tools()?;
        let (build_args, test_args) = match cargo_args.iter().position(|a| a == "--") {
            Some(i) => (&cargo_args[..i], &cargo_args[i + 1..]),
            None => (cargo_args, &[][..]),
        };
        let root = workspace_root();
        let qemu_dir = root.join("target/qemu");
        fs::create_dir_all(&qemu_dir)?;
        let build = build_tests(build_args)?;
        let init = build_init(&root, &qemu_dir)?;
        let t = Instant::now();
        let common = common_image(&root, &qemu_dir, &build, &init)?;
        let common_secs = t.elapsed().as_secs_f64();
        let mut accel: Option<&'static str> = None;
        for kernel in guests {
            let run = run_kernel(
                kernel,
                &qemu_dir,
                &common,
                common_secs,
                &build,
                test_args,
                &mut accel,
            );
            if let Err(e) = &run {
                eprintln!("xtask: {}: {e:#}", kernel.name);
            }
            results.push((kernel.name.to_string(), run));
        }
    }

    eprintln!("\nxtask: kernel matrix");
    let mut ok = true;
    if let Some(h) = &host {
        match h {
            Ok(()) => eprintln!("  host ({}): passed", host_release()),
            Err(e) => {
                ok = false;
                eprintln!("  host ({}): FAILED: {e:#}", host_release());
            }
        }
    }
    for (name, run) in &results {
        match run {
            Ok(r) => {
                ok &= r.passed();
                r.summary(name);
            }
            Err(e) => {
                ok = false;
                eprintln!("  {name}: could not run: {e:#}");
            }
        }
    }
    if !ok {
        bail!("the suite failed on some kernels (logs under target/qemu/)");
    }
    Ok(())
}

fn host_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn check_tools() -> anyhow::Result<()> {
    let mut needed = vec![
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("depmod", "kmod"),
        ("dpkg-deb", "dpkg"),
        ("apt-get", "apt"),
        ("objcopy", "binutils"),
        ("ldd", "libc-bin"),
    ];
    needed.extend(
        TOOLS
            .iter()
            .map(|t| (*t, "iproute2, util-linux, nmap or bash")),
    );
    let missing: Vec<String> = needed
        .iter()
        .filter(|(prog, _)| which(prog).is_none())
        .map(|(prog, pkg)| format!("{prog} ({pkg})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing for the kernel matrix: {}: run `cargo xtask setup`",
            missing.join(", ")
        );
    }
    Ok(())
}

fn build_tests(build_args: &[String]) -> anyhow::Result<Build> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "test",
        "--workspace",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .args(build_args)
    .current_dir(workspace_root())
    .stdout(Stdio::piped());
    eprintln!(
        "xtask: cargo test --workspace --no-run {}",
        build_args.join(" ")
    );
    let mut child = cmd.spawn().context("running cargo test --no-run")?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut build = Build {
        tests: Vec::new(),
        bins: Vec::new(),
    };
    for msg in Message::parse_stream(BufReader::new(stdout)) {
        let Message::CompilerArtifact(a) = msg.context("reading cargo's messages")? else {
            continue;
        };
        let Some(exe) = a.executable else { continue };
        let package = a.package_id.repr.clone();
        let package = a
            .manifest_path
            .parent()
            .and_then(|d| d.file_name())
            .map(str::to_string)
            .unwrap_or(package);
        if a.profile.test {
            // xtask's own tests check host tooling, not the kernel.
            if package == "xtask" {
                continue;
            }
            let kind = if a.target.kind.contains(&TargetKind::Lib) {
                "lib".to_string()
            } else {
                let k = a
                    .target
                    .kind
                    .first()
                    .map(|k| k.to_string())
                    .unwrap_or_default();
                format!("{k} {}", a.target.name)
            };
            build.tests.push(TestBinary {
                name: format!("{package} {kind}"),
                path: exe.into_std_path_buf(),
                package: package.clone(),
                manifest_dir: a
                    .manifest_path
                    .parent()
                    .map(|p| p.as_std_path().to_path_buf())
                    .unwrap_or_default(),
            });
        } else if a.target.kind.contains(&TargetKind::Bin) {
            build.bins.push(exe.into_std_path_buf());
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo test --no-run failed ({status})");
    }
    build.tests.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(build)
}

/// Compiles [`init`] on its own into a static musl binary (the target is added with rustup
/// for the pinned toolchain if it is missing).
fn build_init(root: &Path, qemu_dir: &Path) -> anyhow::Result<PathBuf> {
    let src = root.join("xtask/src/qemu/init.rs");
    let out = qemu_dir.join("init");
    let fresh = match (fs::metadata(&src), fs::metadata(&out)) {
        (Ok(s), Ok(o)) => o.modified()? >= s.modified()?,
        _ => false,
    };
    if fresh {
        return Ok(out);
    }
    let libdir = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .current_dir(root)
        .output()
        .context("running rustc")?;
    let libdir = PathBuf::from(String::from_utf8_lossy(&libdir.stdout).trim());
    let has_std = fs::read_dir(&libdir)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
        })
        .unwrap_or(false);
    if !has_std {
        eprintln!("xtask: rustup target add {GUEST_TARGET}");
        let st = Command::new("rustup")
            .args(["target", "add", GUEST_TARGET])
            .current_dir(root)
            .status()
            .context("running rustup")?;
        if !st.success() {
            bail!("rustup target add {GUEST_TARGET} failed");
        }
    }
    let st = Command::new("rustc")
        .args([
            "--edition",
            "2024",
            "--crate-type",
            "bin",
            "--crate-name",
            "xtask_guest_init",
            "-C",
            "opt-level=2",
            "-C",
            "strip=debuginfo",
            "--target",
            GUEST_TARGET,
        ])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .current_dir(root)
        .status()
        .context("running rustc for the guest init")?;
    if !st.success() {
        bail!("compiling {} for {GUEST_TARGET} failed", src.display());
    }
    Ok(out)
}

/// Everything but the kernel modules and the plan: the init, test binaries, daemon binaries,
/// their libraries, the tools and their data, a few /etc files, and the workspace's source
/// tree at its own path (tests read fixtures and the example rules from it).
fn common_image(root: &Path, qemu_dir: &Path, build: &Build, init: &Path) -> anyhow::Result<Image> {
    let mut img = Image::default();
    img.file_from("/init", init, 0o755);
    for d in ["/proc", "/sys", "/run", "/tmp", "/root", "/dev"] {
        img.dir(d);
    }
    img.char_dev("/dev/console", 5, 1);
    img.symlink(init::MODPROBE, "/init");

    img.data(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        0o644,
    );
    img.data("/etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644);
    img.data(
        "/etc/hosts",
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    );
    img.data(
        "/etc/nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files\nservices: files\nprotocols: files\n",
        0o644,
    );
    img.data("/etc/hostname", "guest\n", 0o644);
    for f in ["/etc/services", "/etc/protocols"] {
        if Path::new(f).exists() {
            img.host_path(f)?;
        }
    }
    if Path::new("/etc/iproute2").is_dir() {
        img.host_tree(Path::new("/etc/iproute2"), &|_| false)?;
    }
    // glibc reads passwd/group through NSS; the files module is a separate library on some
    // releases.
    let nss = Path::new("/lib/x86_64-linux-gnu/libnss_files.so.2");
    if nss.exists() {
        img.host_path(nss)?;
    }

    for tool in TOOLS {
        let path = which(tool).with_context(|| format!("{tool} is not installed"))?;
        img.host_path(&path)?;
        img.libraries_of(&fs::canonicalize(&path)?)?;
    }
    // nmap's port, protocol and probe tables; the NSE scripts are not used.
    let nmap_data = Path::new("/usr/share/nmap");
    if nmap_data.is_dir() {
        img.host_tree(nmap_data, &|p| {
            p.file_name()
                .is_some_and(|n| n == "scripts" || n == "nselib")
        })?;
    }

    let strip_cache = qemu_dir.join("stripped");
    for bin in build.bins.iter().chain(build.tests.iter().map(|t| &t.path)) {
        let small = initramfs::stripped(bin, &strip_cache)?;
        img.file_from(bin, &small, initramfs::mode_of(bin));
        img.libraries_of(bin)?;
    }

    // The source tree without build output and history.
    let target_dir = root.join("target");
    let git_dir = root.join(".git");
    img.host_tree(root, &|p| p == target_dir || p == git_dir)?;
    Ok(img)
}

/// Timings and results of one guest.
struct GuestRun {
    release: String,
    accel: &'static str,
    image_secs: f64,
    image_bytes: u64,
    /// Host wall time from starting QEMU to the init's first line.
    boot_secs: Option<f64>,
    /// The guest kernel's uptime when the init started.
    guest_uptime: Option<f64>,
    /// From the init being ready to its last test's end.
    tests_secs: Option<f64>,
    total_secs: f64,
    qemu_status: String,
    /// The init reported that it ran everything and how many test binaries failed.
    done: Option<usize>,
    binaries: Vec<BinaryResult>,
    errors: Vec<String>,
    /// Modules the kernel asked for and the image does not hold.
    modprobe: Vec<String>,
    log: PathBuf,
    /// The guest kernel's own crash report (first "Oops"/"BUG"/"Kernel panic" line and the
    /// faulting instruction), read from its console log.
    kernel_crash: Option<String>,
    /// The crash of an earlier attempt of this kernel that was booted again.
    crashed_before: Option<String>,
}

#[derive(Default)]
struct BinaryResult {
    name: String,
    status: Option<String>,
    millis: u64,
    result_line: Option<String>,
    /// Failed tests, with their panic's location and first line when one was seen.
    failures: BTreeMap<String, String>,
    /// Panics seen, by thread name (a test's thread is named after it).
    panics: BTreeMap<String, String>,
}

impl GuestRun {
    fn passed(&self) -> bool {
        self.done == Some(0)
            && self.errors.is_empty()
            && self
                .binaries
                .iter()
                .all(|b| b.status.as_deref() == Some("0"))
    }

    fn summary(&self, name: &str) {
        let fmt = |s: Option<f64>| s.map_or("?".into(), |s| format!("{s:.1} s"));
        eprintln!(
            "  {name} ({}, {}): {} — initramfs {:.0} MB in {:.1} s, boot {} (guest kernel {}), \
             tests {}, total {:.1} s; log {}",
            self.release,
            self.accel,
            if self.passed() { "passed" } else { "FAILED" },
            self.image_bytes as f64 / 1e6,
            self.image_secs,
            fmt(self.boot_secs),
            fmt(self.guest_uptime),
            fmt(self.tests_secs),
            self.total_secs,
            self.log.display()
        );
        if let Some(c) = &self.crashed_before {
            eprintln!("    the first attempt crashed the guest kernel and was re-run: {c}");
        }
        if let Some(c) = &self.kernel_crash {
            eprintln!("    the guest kernel crashed: {c}");
        }
        for e in &self.errors {
            eprintln!("    error: {e}");
        }
        if !self.modprobe.is_empty() {
            eprintln!(
                "    the kernel asked for modules the image lacks (add them to \
                 xtask/src/qemu/kernels.rs MODULES): {}",
                self.modprobe.join(", ")
            );
        }
        if self.done.is_none() {
            eprintln!(
                "    the guest did not finish (QEMU: {}); see {}",
                self.qemu_status,
                self.log.with_file_name("console.log").display()
            );
        }
        for b in &self.binaries {
            let status = b.status.as_deref().unwrap_or("did not finish");
            eprintln!(
                "    {:<40} {:>8} {:>7.1} s  {}",
                b.name,
                if status == "0" { "ok" } else { status },
                b.millis as f64 / 1000.0,
                b.result_line.as_deref().unwrap_or("")
            );
            for (test, why) in &b.failures {
                let why: String = why.chars().take(400).collect();
                eprintln!("      FAILED {test}: {why}");
            }
        }
    }
}

fn run_kernel(
    kernel: &Kernel,
    qemu_dir: &Path,
    common: &Image,
    common_secs: f64,
    build: &Build,
    test_args: &[String],
    accel: &mut Option<&'static str>,
) -> anyhow::Result<GuestRun> {
    let started = Instant::now();
    let prepared = kernels::prepare(kernel, &qemu_dir.join("kernels"))?;
    let dir = qemu_dir.join(&prepared.release);
    fs::create_dir_all(&dir)?;

    let t = Instant::now();
    let mut img = common.clone();
    let mut plan = Vec::new();
    for m in &prepared.modules {
        let dest = Path::new("/xtask/modules").join(m.file_name().context("module name")?);
        img.file_from(&dest, m, 0o644);
        plan.push(Step::Module(dest.to_string_lossy().into_owned()));
    }
    for var in ["RUST_BACKTRACE", "RUST_LOG"] {
        if let Ok(v) = std::env::var(var) {
            plan.push(Step::Env(var.into(), v));
        }
    }
    for t in &build.tests {
        let dir = t.manifest_dir.to_string_lossy().into_owned();
        plan.push(Step::Env("CARGO_MANIFEST_DIR".into(), dir.clone()));
        plan.push(Step::Env("CARGO_PKG_NAME".into(), t.package.clone()));
        let mut argv = vec![t.path.to_string_lossy().into_owned()];
        argv.extend(test_args.iter().cloned());
        plan.push(Step::Test {
            name: t.name.clone(),
            cwd: dir,
            timeout_secs: TEST_TIMEOUT.as_secs(),
            argv,
        });
    }
    let mut text = String::new();
    for step in &plan {
        let line = step.line();
        if line.contains('\n') {
            bail!("plan line with a newline: {line:?}");
        }
        text.push_str(&line);
        text.push('\n');
    }
    img.data(init::PLAN, text, 0o644);
    let initrd = dir.join("initramfs.cpio");
    let image_bytes = img.write(&initrd)?;
    let image_secs = common_secs + t.elapsed().as_secs_f64();
    eprintln!(
        "xtask: {}: initramfs {:.0} MB ({} test binaries, {} modules) in {:.1} s",
        kernel.name,
        image_bytes as f64 / 1e6,
        build.tests.len(),
        prepared.modules.len(),
        image_secs
    );

    let accel = *accel.get_or_insert_with(|| pick_accel(&prepared.image, &initrd, &dir));
    let log = dir.join("tests.log");
    let mut run = boot(kernel.name, accel, &prepared.image, &initrd, &dir, &log)?;
    // A guest kernel that crashes is booted once more, and the summary says so: under
    // software emulation 6.12 has been seen to oops on a stale int3 in the XDP dispatcher
    // while a program was being replaced (README, "Supported kernels"). A second crash fails.
    if !run.passed()
        && let Some(crash) = run.kernel_crash.clone()
    {
        eprintln!(
            "xtask: {}: the guest kernel crashed ({crash}); booting it once more",
            kernel.name
        );
        let first = dir.join("console.first.log");
        let _ = fs::rename(dir.join("console.log"), &first);
        run = boot(kernel.name, accel, &prepared.image, &initrd, &dir, &log)?;
        run.crashed_before = Some(format!("{crash} (console: {})", first.display()));
    }
    run.release = prepared.release;
    run.image_secs = image_secs;
    run.image_bytes = image_bytes;
    run.total_secs = started.elapsed().as_secs_f64();
    Ok(run)
}

fn qemu_command(accel: &str, kernel: &Path, initrd: &Path, console: &Path, extra: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    let accel_arg = if accel == "kvm" {
        "kvm"
    } else {
        "tcg,thread=multi"
    };
    let append = format!(
        "console=ttyS0 panic=-1 quiet {}{accel} {extra}",
        init::ACCEL_PARAM
    );
    cmd.args([
        "-accel", accel_arg, "-cpu", "max", "-m", MEMORY, "-smp", CPUS,
    ])
    .args(["-nodefaults", "-no-reboot", "-display", "none"])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", append.trim()])
    // ttyS0: the kernel's console, to a file; ttyS1: the init and the tests, to stdout.
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .args(["-serial", "stdio"])
    .args([
        "-device",
        &format!("isa-debug-exit,iobase={:#x},iosize=0x04", init::EXIT_PORT),
    ])
    .stdin(Stdio::null());
    cmd
}

/// KVM only when it really boots a kernel here (`/dev/kvm` can exist without a usable CPU
/// extension: the nested module then fails in the kernel's decompressor), else emulation.
/// `XTASK_QEMU_ACCEL=tcg|kvm` skips the probe.
fn pick_accel(kernel: &Path, initrd: &Path, dir: &Path) -> &'static str {
    match std::env::var("XTASK_QEMU_ACCEL").as_deref() {
        Ok("kvm") => return "kvm",
        Ok("tcg") => return "tcg",
        _ => {}
    }
    let cpu_ok = fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false);
    let dev_ok = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !(cpu_ok && dev_ok) {
        eprintln!(
            "xtask: no usable KVM (vmx/svm: {cpu_ok}, /dev/kvm: {dev_ok}): software emulation"
        );
        return "tcg";
    }
    let mut cmd = qemu_command(
        "kvm",
        kernel,
        initrd,
        &dir.join("kvm-smoke.log"),
        init::SMOKE,
    );
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let ok = cmd.spawn().ok().and_then(|mut child| {
        let st = wait_timeout(&mut child, Duration::from_secs(60));
        if st.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        st
    });
    let works = ok.and_then(|s| s.code()) == Some(i32::from(init::EXIT_PASSED) * 2 + 1);
    eprintln!(
        "xtask: KVM smoke boot {}",
        if works {
            "works: using KVM"
        } else {
            "failed: software emulation"
        }
    );
    if works { "kvm" } else { "tcg" }
}

fn wait_timeout(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => return None,
        }
    }
}

/// Boots the guest, streams its output (prefixed with the kernel's name) and collects what
/// the init reported.
fn boot(
    name: &str,
    accel: &'static str,
    kernel: &Path,
    initrd: &Path,
    dir: &Path,
    log: &Path,
) -> anyhow::Result<GuestRun> {
    let console = dir.join("console.log");
    let mut cmd = qemu_command(accel, kernel, initrd, &console, "");
    cmd.stdout(Stdio::piped());
    eprintln!("xtask: {name}: booting {} ({accel})", kernel.display());
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("QEMU's stdout")?;
    let mut log_file = fs::File::create(log)?;
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let prefix = format!("[{name}] ");
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        let mut out = std::io::stdout();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']).to_string();
            let _ = writeln!(log_file, "{line}");
            let _ = writeln!(out, "{prefix}{line}");
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });

    let status = wait_timeout(&mut child, GUEST_TIMEOUT);
    let qemu_status = match status {
        Some(st) => match st.code() {
            Some(c) if c & 1 == 1 => format!("exit {c} (guest status {})", c >> 1),
            Some(c) => format!("exit {c} (no status from the guest)"),
            None => format!("{st}"),
        },
        None => {
            let _ = child.kill();
            let _ = child.wait();
            format!("killed after {} s", GUEST_TIMEOUT.as_secs())
        }
    };
    let _ = reader.join();

    let mut run = GuestRun {
        release: String::new(),
        accel,
        image_secs: 0.0,
        image_bytes: 0,
        boot_secs: None,
        guest_uptime: None,
        tests_secs: None,
        total_secs: 0.0,
        qemu_status,
        done: None,
        binaries: Vec::new(),
        errors: Vec::new(),
        modprobe: Vec::new(),
        log: log.to_path_buf(),
        kernel_crash: kernel_crash(&console),
        crashed_before: None,
    };
    let mut ready_at = None;
    let mut pending_panic: Option<(String, String)> = None;
    for (at, line) in rx.try_iter() {
        if let Some((thread, location)) = pending_panic.take()
            && let Some(b) = run.binaries.last_mut()
        {
            b.panics
                .entry(thread)
                .or_insert_with(|| format!("{location}: {}", line.trim()));
        }
        match Event::parse(&line) {
            Some(Event::Booted { uptime_secs }) => {
                run.boot_secs = Some((at - start).as_secs_f64());
                run.guest_uptime = Some(uptime_secs);
            }
            Some(Event::Ready { .. }) => ready_at = Some(at),
            Some(Event::Run { name }) => run.binaries.push(BinaryResult {
                name,
                ..Default::default()
            }),
            Some(Event::Exit { status, millis, .. }) => {
                if let Some(b) = run.binaries.last_mut() {
                    b.status = Some(status);
                    b.millis = millis;
                }
                if let Some(r) = ready_at {
                    run.tests_secs = Some((at - r).as_secs_f64());
                }
            }
            Some(Event::Error { message }) => run.errors.push(message),
            Some(Event::Modprobe { module }) => {
                if !run.modprobe.contains(&module) {
                    run.modprobe.push(module);
                }
            }
            Some(Event::Done { failed }) => run.done = Some(failed),
            None => {
                let Some(b) = run.binaries.last_mut() else {
                    continue;
                };
                if let Some(test) = line
                    .strip_prefix("test ")
                    .and_then(|l| l.strip_suffix(" ... FAILED"))
                {
                    b.failures.entry(test.to_string()).or_default();
                } else if line.starts_with("test result:") {
                    b.result_line = Some(line.clone());
                } else if let Some(rest) = line.strip_prefix("thread '")
                    && let Some((test, tail)) = rest.split_once('\'')
                    && let Some(loc) = tail.split(" panicked at ").nth(1)
                {
                    pending_panic = Some((test.to_string(), loc.trim_end_matches(':').to_string()));
                }
            }
        }
    }
    for b in &mut run.binaries {
        for (test, why) in b.failures.iter_mut() {
            *why = b
                .panics
                .get(test)
                .cloned()
                .unwrap_or_else(|| "(no panic message seen)".into());
        }
    }
    Ok(run)
}

/// The first crash report in a guest's console log: its "Oops"/"BUG"/"Kernel panic" line and
/// the faulting instruction's line.
fn kernel_crash(console: &Path) -> Option<String> {
    let text = fs::read_to_string(console).ok()?;
    let strip = |l: &str| {
        l.split_once("] ")
            .map_or(l, |(_, rest)| rest)
            .trim()
            .to_string()
    };
    let mut lines = text.lines();
    let first = lines.find(|l| {
        ["Oops:", "BUG:", "Kernel panic", "general protection fault"]
            .iter()
            .any(|m| l.contains(m))
    })?;
    let rip = lines.take(8).find(|l| l.contains("RIP:")).map(strip);
    Some(match rip {
        Some(rip) => format!("{}; {rip}", strip(first)),
        None => strip(first),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_crash_names_the_oops_and_its_instruction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let console = dir.path().join("console.log");
        fs::write(
            &console,
            "[    1.0] Run /init as init process\n\
             [  220.7] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n\
             [  220.7] CPU: 0 UID: 0 PID: 832 Comm: reload_has_no_g\n\
             [  220.7] RIP: 0010:bpf_dispatcher_xdp_func+0xa/0x10\n\
             [  220.8] Kernel panic - not syncing: Fatal exception in interrupt\n",
        )
        .expect("write");
        assert_eq!(
            kernel_crash(&console).as_deref(),
            Some(
                "Oops: int3: 0000 [#1] PREEMPT SMP NOPTI; RIP: 0010:bpf_dispatcher_xdp_func+0xa/0x10"
            )
        );
        fs::write(&console, "[    1.0] Run /init as init process\n").expect("write");
        assert_eq!(kernel_crash(&console), None);
        assert_eq!(kernel_crash(&dir.path().join("missing")), None);
    }

    fn names(list: &str) -> Vec<&'static str> {
        parse_list(list)
            .expect("valid list")
            .into_iter()
            .map(|t| match t {
                Target::Host => "host",
                Target::Guest(k) => k.name,
            })
            .collect()
    }

    #[test]
    fn kernel_lists() {
        assert_eq!(names("6.1"), ["6.1"]);
        assert_eq!(names("6.1,6.12"), ["6.1", "6.12"]);
        assert_eq!(names("all"), ["host", "6.1", "6.12"]);
        assert_eq!(names("6.12, all"), ["6.12", "host", "6.1"]);
        assert!(parse_list("5.10").is_err());
        assert!(parse_list(",").is_err());
    }
}
