//! The guest's `/init`: mounts what the tests need, loads the kernel modules, runs every test
//! binary of the plan, streams their output to the second serial port and reports the result
//! through QEMU's `isa-debug-exit` device.
//!
//! This file is compiled twice. `cargo xtask` builds it on its own with
//! `rustc --target x86_64-unknown-linux-musl` (std only, no crates: a static binary that needs
//! nothing from the image), and it is also a module of xtask, which reads the output protocol
//! ([`MARK`] lines) and writes the plan ([`PLAN`]) with the constants defined here.
//!
//! Plan (`/xtask/plan`), one instruction a line, fields separated by tabs:
//! - `module PATH`: load this kernel module (in file order; dependencies come first);
//! - `env KEY VALUE`: set for every test that follows;
//! - `test NAME CWD TIMEOUT_SECS PROGRAM [ARG...]`: run a test binary.

use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::{
        fd::AsRawFd as _,
        unix::{
            fs::{FileExt as _, OpenOptionsExt as _},
            process::CommandExt as _,
        },
    },
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Where xtask puts the plan in the image.
pub const PLAN: &str = "/xtask/plan";
/// Prefix of every line the init writes for the host; test output is passed through as is.
pub const MARK: &str = "@@xtask ";
/// Kernel command line word that makes the init report success as soon as it runs (KVM probe).
pub const SMOKE: &str = "xtask.smoke";
/// A link to the init that the kernel runs instead of modprobe when it wants a module it does
/// not have (the guest has no modprobe): it reports the request and fails it, so that a module
/// missing from the image shows in the output instead of as a strange error in a test.
pub const MODPROBE: &str = "/xtask/modprobe";
/// Requests [`MODPROBE`] fails silently: the kernel asks for `bpf_preload` on every bpffs
/// mount, and Debian builds no such module (CONFIG_BPF_PRELOAD unset), so a host's modprobe
/// fails on it the same way.
const NOT_IN_DEBIAN: &[&str] = &["bpf_preload"];
/// Kernel command line parameter naming QEMU's accelerator (`tcg`, `kvm`); the init passes it
/// to the tests as the environment variable [`ACCEL_ENV`] so that timing-bound tests can tell
/// they run under emulation.
pub const ACCEL_PARAM: &str = "xtask.accel=";
pub const ACCEL_ENV: &str = "XTASK_QEMU_ACCEL";
/// isa-debug-exit port (QEMU: `-device isa-debug-exit,iobase=0xf4,iosize=0x04`); QEMU exits
/// with `value * 2 + 1`.
pub const EXIT_PORT: u64 = 0xf4;
/// Status written to [`EXIT_PORT`]: every test binary passed / some failed / the init failed.
pub const EXIT_PASSED: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_BROKEN: u8 = 2;

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// musl (the guest) and glibc (xtask's own build of this file) both provide these.
unsafe extern "C" {
    fn mount(
        src: *const std::ffi::c_char,
        target: *const std::ffi::c_char,
        fstype: *const std::ffi::c_char,
        flags: std::ffi::c_ulong,
        data: *const std::ffi::c_void,
    ) -> std::ffi::c_int;
    fn init_module(
        image: *const std::ffi::c_void,
        len: std::ffi::c_ulong,
        params: *const std::ffi::c_char,
    ) -> std::ffi::c_int;
    fn kill(pid: std::ffi::c_int, sig: std::ffi::c_int) -> std::ffi::c_int;
    fn reboot(cmd: std::ffi::c_int) -> std::ffi::c_int;
    fn setrlimit(resource: std::ffi::c_int, limit: *const RLimit) -> std::ffi::c_int;
    fn sync();
    fn tcdrain(fd: std::ffi::c_int) -> std::ffi::c_int;
}

#[repr(C)]
struct RLimit {
    current: u64,
    max: u64,
}

/// Open files allowed to the tests. The kernel gives init 1024 (hard 4096), where a login on
/// a build machine usually has tens of thousands; a test that loads many rule generations in
/// one process needs more than 1024 descriptors.
const NOFILE: u64 = 65_536;
const RLIMIT_NOFILE: std::ffi::c_int = 7;
const SIGKILL: std::ffi::c_int = 9;
const EEXIST: i32 = 17;
const EBUSY: i32 = 16;
const RB_POWER_OFF: std::ffi::c_int = 0x4321_fedc_u32 as std::ffi::c_int;
const O_NOCTTY: i32 = 0o400;

/// One line of the plan.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Module(String),
    Env(String, String),
    Test {
        name: String,
        cwd: String,
        timeout_secs: u64,
        argv: Vec<String>,
    },
}

impl Step {
    /// The plan line for this step (no tabs or newlines may appear in the fields).
    pub fn line(&self) -> String {
        match self {
            Step::Module(path) => format!("module\t{path}"),
            Step::Env(k, v) => format!("env\t{k}\t{v}"),
            Step::Test {
                name,
                cwd,
                timeout_secs,
                argv,
            } => format!("test\t{name}\t{cwd}\t{timeout_secs}\t{}", argv.join("\t")),
        }
    }

    pub fn parse(line: &str) -> Result<Step, String> {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["module", path] => Ok(Step::Module(path.to_string())),
            ["env", k, v] => Ok(Step::Env(k.to_string(), v.to_string())),
            ["test", name, cwd, timeout, argv @ ..] if !argv.is_empty() => Ok(Step::Test {
                name: name.to_string(),
                cwd: cwd.to_string(),
                timeout_secs: timeout
                    .parse()
                    .map_err(|_| format!("bad timeout in plan line {line:?}"))?,
                argv: argv.iter().map(|s| s.to_string()).collect(),
            }),
            _ => Err(format!("bad plan line {line:?}")),
        }
    }
}

/// What the init reports, one [`MARK`] line each.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// The init started; the guest kernel's uptime then.
    Booted {
        uptime_secs: f64,
    },
    /// Mounts done and modules loaded.
    Ready {
        uptime_secs: f64,
    },
    Run {
        name: String,
    },
    /// A test binary ended: its exit code, `sigN`, or `timeout`.
    Exit {
        name: String,
        status: String,
        millis: u64,
    },
    /// Something the init could not do (the run goes on where it can).
    Error {
        message: String,
    },
    /// The kernel asked for a module the image does not hold (`request_module`).
    Modprobe {
        module: String,
    },
    Done {
        failed: usize,
    },
}

impl Event {
    pub fn line(&self) -> String {
        let body = match self {
            Event::Booted { uptime_secs } => format!("booted {uptime_secs:.2}"),
            Event::Ready { uptime_secs } => format!("ready {uptime_secs:.2}"),
            Event::Run { name } => format!("run {name}"),
            Event::Exit {
                name,
                status,
                millis,
            } => format!("exit {name} {status} {millis}"),
            Event::Error { message } => format!("error {message}"),
            Event::Modprobe { module } => format!("modprobe {module}"),
            Event::Done { failed } => format!("done {failed}"),
        };
        format!("{MARK}{body}")
    }

    /// Parses a line of guest output; `None` for ordinary output.
    pub fn parse(line: &str) -> Option<Event> {
        let body = line.strip_prefix(MARK)?;
        let (kind, rest) = body.split_once(' ').unwrap_or((body, ""));
        let secs = || rest.parse::<f64>().ok();
        match kind {
            "booted" => Some(Event::Booted {
                uptime_secs: secs()?,
            }),
            "ready" => Some(Event::Ready {
                uptime_secs: secs()?,
            }),
            "run" => Some(Event::Run {
                name: rest.to_string(),
            }),
            "exit" => {
                let mut f = rest.rsplitn(3, ' ');
                let millis = f.next()?.parse().ok()?;
                let status = f.next()?.to_string();
                let name = f.next()?.to_string();
                Some(Event::Exit {
                    name,
                    status,
                    millis,
                })
            }
            "error" => Some(Event::Error {
                message: rest.to_string(),
            }),
            "modprobe" => Some(Event::Modprobe {
                module: rest.to_string(),
            }),
            "done" => Some(Event::Done {
                failed: rest.parse().ok()?,
            }),
            _ => None,
        }
    }
}

#[allow(
    dead_code,
    reason = "the guest's entry point: used when this file is compiled on its own as /init"
)]
pub fn main() {
    if std::env::args()
        .next()
        .is_some_and(|a| a.ends_with("modprobe"))
    {
        // Called by the kernel as `modprobe -q -- NAME`.
        let module = std::env::args().next_back().unwrap_or_default();
        if NOT_IN_DEBIAN.contains(&module.as_str()) {
            std::process::exit(1);
        }
        if let Ok(mut tty) = OpenOptions::new()
            .write(true)
            .custom_flags(O_NOCTTY)
            .open("/dev/ttyS1")
        {
            let _ = writeln!(tty, "{}", Event::Modprobe { module }.line());
            // SAFETY: tcdrain(3) on the descriptor `tty` owns.
            unsafe { tcdrain(tty.as_raw_fd()) };
        }
        std::process::exit(1);
    }
    let mut out = Output::console();
    let code = match run(&mut out) {
        Ok(0) => EXIT_PASSED,
        Ok(_) => EXIT_FAILED,
        Err(message) => {
            out.event(&Event::Error { message });
            EXIT_BROKEN
        }
    };
    power_off(code, &mut out);
}

/// Where the init writes: the second serial port once /dev is mounted, the console before.
struct Output {
    file: Option<File>,
}

impl Output {
    fn console() -> Self {
        Self {
            file: OpenOptions::new().write(true).open("/dev/console").ok(),
        }
    }

    fn line(&mut self, text: &str) {
        match &mut self.file {
            Some(f) => {
                let _ = writeln!(f, "{text}");
            }
            None => eprintln!("{text}"),
        }
    }

    fn event(&mut self, e: &Event) {
        self.line(&e.line());
    }

    fn stdio(&self) -> Stdio {
        match self.file.as_ref().map(File::try_clone) {
            Some(Ok(f)) => Stdio::from(f),
            _ => Stdio::inherit(),
        }
    }
}

fn uptime() -> f64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(-1.0)
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("NUL in {s:?}"))
}

fn mount_fs(fstype: &str, target: &str, data: Option<&str>) -> Result<(), String> {
    fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    let (src, tgt, ty) = (cstr(fstype)?, cstr(target)?, cstr(fstype)?);
    let data = data.map(cstr).transpose()?;
    // SAFETY: every pointer is a valid NUL-terminated string (or null for no data) that
    // outlives the call.
    let rc = unsafe {
        mount(
            src.as_ptr(),
            tgt.as_ptr(),
            ty.as_ptr(),
            0,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(EBUSY) {
            return Err(format!("mount -t {fstype} {target}: {e}"));
        }
    }
    Ok(())
}

fn load_module(path: &str) -> Result<(), String> {
    let image = fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
    let params = cstr("")?;
    // SAFETY: `image` is a readable buffer of `image.len()` bytes and `params` a valid C
    // string, both alive for the call.
    let rc = unsafe { init_module(image.as_ptr().cast(), image.len() as _, params.as_ptr()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(EEXIST) {
            return Err(format!("loading {path}: {e}"));
        }
    }
    Ok(())
}

/// Returns how many test binaries failed.
fn run(out: &mut Output) -> Result<usize, String> {
    mount_fs("devtmpfs", "/dev", None)?;
    if let Ok(f) = OpenOptions::new()
        .write(true)
        .custom_flags(O_NOCTTY)
        .open("/dev/ttyS1")
    {
        out.file = Some(f);
    }
    mount_fs("proc", "/proc", None)?;
    if let Err(e) = fs::write("/proc/sys/kernel/modprobe", MODPROBE) {
        out.event(&Event::Error {
            message: format!("setting /proc/sys/kernel/modprobe: {e}"),
        });
    }
    out.event(&Event::Booted {
        uptime_secs: uptime(),
    });
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline.split_whitespace().any(|w| w == SMOKE) {
        out.event(&Event::Done { failed: 0 });
        return Ok(0);
    }
    mount_fs("sysfs", "/sys", None)?;
    mount_fs("bpf", "/sys/fs/bpf", Some("mode=0700"))?;
    mount_fs("cgroup2", "/sys/fs/cgroup", None)?;
    // A workspace under /tmp or /run is in the image there: keep it visible (the initramfs
    // itself is a writable tmpfs).
    for (dir, mode) in [("/run", "mode=0755"), ("/tmp", "mode=1777")] {
        let empty = fs::read_dir(dir).map_or(true, |mut d| d.next().is_none());
        if empty {
            mount_fs("tmpfs", dir, Some(mode))?;
        }
    }
    mount_fs("tmpfs", "/dev/shm", Some("mode=1777"))?;
    mount_fs("devpts", "/dev/pts", None)?;

    let plan = fs::read_to_string(PLAN).map_err(|e| format!("reading {PLAN}: {e}"))?;
    let steps = plan
        .lines()
        .filter(|l| !l.is_empty())
        .map(Step::parse)
        .collect::<Result<Vec<_>, _>>()?;
    for step in &steps {
        if let Step::Module(path) = step
            && let Err(message) = load_module(path)
        {
            out.event(&Event::Error { message });
        }
    }
    let lo = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .env("PATH", PATH)
        .status();
    if !matches!(lo, Ok(s) if s.success()) {
        out.event(&Event::Error {
            message: format!("ip link set lo up: {lo:?}"),
        });
    }
    out.event(&Event::Ready {
        uptime_secs: uptime(),
    });

    let limit = RLimit {
        current: NOFILE,
        max: NOFILE,
    };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    if unsafe { setrlimit(RLIMIT_NOFILE, &limit) } != 0 {
        out.event(&Event::Error {
            message: format!("setrlimit NOFILE: {}", std::io::Error::last_os_error()),
        });
    }

    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), PATH.into()),
        ("HOME".into(), "/root".into()),
    ];
    if let Some(accel) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(ACCEL_PARAM))
    {
        env.push((ACCEL_ENV.into(), accel.into()));
    }
    let mut failed = 0;
    for step in steps {
        match step {
            Step::Module(_) => {}
            Step::Env(k, v) => {
                env.retain(|(key, _)| *key != k);
                env.push((k, v));
            }
            Step::Test {
                name,
                cwd,
                timeout_secs,
                argv,
            } => {
                out.event(&Event::Run { name: name.clone() });
                let start = Instant::now();
                let status = run_test(out, &env, &cwd, &argv, Duration::from_secs(timeout_secs));
                if status != "0" {
                    failed += 1;
                }
                out.event(&Event::Exit {
                    name,
                    status,
                    millis: start.elapsed().as_millis() as u64,
                });
            }
        }
    }
    out.event(&Event::Done { failed });
    Ok(failed)
}

/// Runs one test binary in its own process group (so a timeout kills what it started too);
/// returns its exit code, `sigN`, `timeout` or `spawn: ERROR`.
fn run_test(
    out: &mut Output,
    env: &[(String, String)],
    cwd: &str,
    argv: &[String],
    timeout: Duration,
) -> String {
    let Some((program, args)) = argv.split_first() else {
        return "spawn: empty command".into();
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(if Path::new(cwd).is_dir() { cwd } else { "/" })
        .stdin(Stdio::null())
        .stdout(out.stdio())
        .stderr(out.stdio())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return format!("spawn: {e}").replace(' ', "_"),
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return match (
                    status.code(),
                    std::os::unix::process::ExitStatusExt::signal(&status),
                ) {
                    (Some(code), _) => code.to_string(),
                    (None, Some(sig)) => format!("sig{sig}"),
                    (None, None) => "unknown".into(),
                };
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) | Err(_) => {
                // SAFETY: kill(2) with a negative pid signals the test's process group.
                unsafe { kill(-(child.id() as i32), SIGKILL) };
                let _ = child.wait();
                return "timeout".into();
            }
        }
    }
}

/// Reports `code` to QEMU (which exits at once), or powers off if the device is missing.
fn power_off(code: u8, out: &mut Output) -> ! {
    // QEMU exits on the port write: first wait until the UART has sent everything written to
    // it (a write to a tty returns once the line discipline has the bytes).
    if let Some(f) = &out.file {
        // SAFETY: tcdrain(3) on a descriptor the File owns and keeps open.
        unsafe { tcdrain(f.as_raw_fd()) };
    }
    // SAFETY: sync(2) has no preconditions.
    unsafe { sync() };
    match OpenOptions::new().write(true).open("/dev/port") {
        Ok(port) => {
            if let Err(e) = port.write_at(&[code], EXIT_PORT) {
                out.line(&format!("{MARK}error writing the exit port: {e}"));
            }
        }
        Err(e) => out.line(&format!("{MARK}error opening /dev/port: {e}")),
    }
    // SAFETY: reboot(2) with RB_POWER_OFF; we are PID 1 and done.
    unsafe { reboot(RB_POWER_OFF) };
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_lines_round_trip() {
        for step in [
            Step::Module("/xtask/modules/veth.ko".into()),
            Step::Env("CARGO_MANIFEST_DIR".into(), "/work/x".into()),
            Step::Test {
                name: "firewall-daemon test e2e".into(),
                cwd: "/work/x".into(),
                timeout_secs: 60,
                argv: vec!["/work/x/e2e".into(), "--nocapture".into()],
            },
        ] {
            assert_eq!(Step::parse(&step.line()), Ok(step));
        }
    }

    #[test]
    fn events_round_trip() {
        for e in [
            Event::Booted { uptime_secs: 1.5 },
            Event::Run {
                name: "firewall-daemon test e2e".into(),
            },
            Event::Exit {
                name: "firewall-daemon test e2e".into(),
                status: "101".into(),
                millis: 1234,
            },
            Event::Modprobe {
                module: "net-pf-16-proto-4-type-2".into(),
            },
            Event::Done { failed: 2 },
        ] {
            assert_eq!(Event::parse(&e.line()), Some(e));
        }
        assert_eq!(Event::parse("test foo ... ok"), None);
    }
}
