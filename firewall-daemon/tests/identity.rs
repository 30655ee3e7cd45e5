//! Program identity, end to end: the `cgroup/connect4` prototype, loaded with the offsets the
//! daemon resolves from the kernel's BTF, records for each connecting process the (device,
//! inode) of its executable, and that is exactly what the daemon computes for the path.
//!
//! Needs root. Touches nothing shared: the program is attached only to a cgroup the test
//! creates (and removes) under the cgroup2 mount, the connections are over loopback to a
//! listener the test owns, and the pins live on a private bpffs. The program only records and
//! allows.

mod support;

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError},
};
use firewall_common::identity::{ExeId, IDENTITY_PROBE, PROBE_PROGRAM};
use firewall_daemon::{
    EBPF_OBJECT,
    identity::{self, KernelOffsets},
};
use support::bpffs::BpfFs;

/// How long a child may take to connect before the test gives up.
const CONNECT_TIMEOUT_MS: i32 = 10_000;

/// The cgroup2 mount point and its root (for a cgroup namespace), from /proc/self/mountinfo.
fn cgroup2_mount() -> (PathBuf, String) {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        if fields.len() < 5 {
            continue;
        }
        return (PathBuf::from(unescape(fields[4])), unescape(fields[3]));
    }
    panic!("no cgroup2 filesystem is mounted (see /proc/self/mountinfo)");
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| u8::from_str_radix(t, 8).ok());
        if b[i] == b'\\'
            && let Some(v) = octal
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 directory this process is in.
fn own_cgroup(mount: &Path, mount_root: &str) -> PathBuf {
    let cg = fs::read_to_string("/proc/self/cgroup").expect("reading /proc/self/cgroup");
    let path = cg
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("no cgroup2 entry in /proc/self/cgroup");
    let rel = path
        .strip_prefix(mount_root.trim_end_matches('/'))
        .unwrap_or(path)
        .trim_start_matches('/');
    mount.join(rel)
}

/// A cgroup made for one test, under the test's own cgroup. Dropping it moves any process left
/// in it back to the parent and removes it, even when the test failed.
struct TestCgroup {
    dir: PathBuf,
    parent: PathBuf,
}

impl TestCgroup {
    fn new() -> Self {
        let (mount, root) = cgroup2_mount();
        let parent = own_cgroup(&mount, &root);
        let dir = parent.join(format!("fw-identity-test-{}", std::process::id()));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        assert_ne!(dir, mount, "never the root cgroup");
        Self { dir, parent }
    }

    fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.dir.display()));
    }

    fn procs(&self) -> Vec<u32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for pid in self.procs() {
            let _ = fs::write(self.parent.join("cgroup.procs"), pid.to_string());
        }
        if let Err(e) = fs::remove_dir(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }
}

/// A copy of bash that connects to `port` when told to, then waits for its stdin to close.
/// Killed and reaped on drop.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Client {
    fn spawn(exe: &Path, port: u16) -> Self {
        let script =
            format!("read -r go || exit 1; exec 3<>/dev/tcp/127.0.0.1/{port}; read -r done");
        let mut child = Command::new(exe)
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let stdin = child.stdin.take();
        Self { child, stdin }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the client connect and returns once the listener accepted its connection.
    fn connect(&mut self, listener: &TcpListener) -> TcpStream {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(b"go\n")
            .expect("telling the client to connect");
        accept(listener)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// accept() with a timeout, so a client that never connects fails the test instead of hanging.
fn accept(listener: &TcpListener) -> TcpStream {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    let n = unsafe { libc::poll(&mut pfd, 1, CONNECT_TIMEOUT_MS) };
    assert_eq!(n, 1, "no connection within {CONNECT_TIMEOUT_MS} ms");
    listener.accept().expect("accept").0
}

fn load(pin_dir: &Path, offsets: &KernelOffsets) -> Ebpf {
    firewall_daemon::datapath::prepare_pin_dir(pin_dir).expect("pin dir");
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_dir);
    offsets.set_globals(&mut loader);
    let mut ebpf = loader.load(EBPF_OBJECT).expect("loading the eBPF object");
    let prog: &mut CgroupSockAddr = ebpf
        .program_mut(PROBE_PROGRAM)
        .expect("connect4 program in the object")
        .try_into()
        .expect("a cgroup_sock_addr program");
    match prog.load() {
        Ok(()) => {}
        Err(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) => panic!("verifier refused {PROBE_PROGRAM}: {io_error}\n{verifier_log}"),
        Err(e) => panic!("loading {PROBE_PROGRAM}: {e}"),
    }
    ebpf
}

fn observed(ebpf: &Ebpf) -> BTreeMap<u32, ExeId> {
    let map: HashMap<&MapData, u32, ExeId> =
        HashMap::try_from(ebpf.map(IDENTITY_PROBE).expect("probe map")).expect("hash map");
    map.iter()
        .map(|r| r.expect("reading the probe map"))
        .collect()
}

#[test]
fn connect4_sees_the_executable_the_daemon_computes() {
    let offsets = KernelOffsets::resolve().expect("resolving kernel offsets");

    // Two copies of one binary: same contents, different files.
    let bins = tempfile::tempdir().expect("temp dir");
    let one = bins.path().join("client-one");
    let two = bins.path().join("client-two");
    fs::copy("/bin/bash", &one).expect("copying bash");
    fs::copy("/bin/bash", &two).expect("copying bash");
    let id_one = identity::exe_id(&one).expect("identity of copy one");
    let id_two = identity::exe_id(&two).expect("identity of copy two");
    assert_ne!(id_one, id_two, "two copies are two identities");

    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("local addr").port();

    // Declared before the program, so it is removed after the program is detached.
    let cgroup = TestCgroup::new();
    let fs_ = BpfFs::new();
    let mut ebpf = load(&fs_.pin_dir("identity"), &offsets);
    {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(PROBE_PROGRAM)
            .expect("program")
            .try_into()
            .expect("cgroup_sock_addr");
        let dir = fs::File::open(&cgroup.dir).expect("opening the test cgroup");
        prog.attach(dir, CgroupAttachMode::Single)
            .expect("attaching connect4 to the test cgroup");
    }

    // Inside the cgroup: one process per copy.
    let mut inside = Vec::new();
    let mut conns = Vec::new();
    for exe in [&one, &two] {
        let mut client = Client::spawn(exe, port);
        cgroup.add(client.pid());
        conns.push(client.connect(&listener));
        inside.push(client);
    }
    // Outside: the same binary, and the test process itself.
    let mut outside = Client::spawn(&one, port);
    conns.push(outside.connect(&listener));
    conns.push(TcpStream::connect(("127.0.0.1", port)).expect("connect from the test"));
    conns.push(accept(&listener));

    let seen = observed(&ebpf);
    eprintln!("observed: {seen:?}; computed: one {id_one:?}, two {id_two:?}");
    let expected: BTreeMap<u32, ExeId> =
        BTreeMap::from([(inside[0].pid(), id_one), (inside[1].pid(), id_two)]);
    assert_eq!(
        seen, expected,
        "exactly the processes in the cgroup, each with the identity of its binary"
    );
    // The kernel's view of the running process agrees with /proc/PID/exe too.
    for c in &inside {
        assert_eq!(
            seen[&c.pid()],
            identity::exe_id_of_pid(c.pid()).expect("/proc/PID/exe")
        );
    }
    assert!(!seen.contains_key(&outside.pid()));
    assert!(!seen.contains_key(&std::process::id()));
    drop(conns);
    drop(inside);
    drop(outside);
    assert!(
        cgroup.procs().is_empty(),
        "children left in the test cgroup"
    );
}
