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
    path::Path,
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
    host::{btf::KernelOffsets, exe_id},
};
use support::{bpffs::BpfFs, cgroup::TestCgroup};

/// How long a child may take to connect before the test gives up.
const CONNECT_TIMEOUT_MS: i32 = 10_000;

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
    firewall_daemon::kernel::prepare_pin_dir(pin_dir).expect("pin dir");
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
    let bins = tempfile::tempdir().expect("temp dir");
    sees_the_executable_in(bins.path());
}

/// On btrfs every subvolume stats with an anonymous device of its own while the superblock
/// (what the kernel program reads) has another: a rule naming a binary there used to match
/// nothing. Copies in the top-level subvolume and in a nested one, on a loop-mounted image.
#[test]
fn identity_on_btrfs_subvolumes() {
    let Some(fs_) = Mounted::btrfs() else { return };
    sees_the_executable_in(&fs_.dir);
    let sub = fs_.dir.join("subvol");
    let out = Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&sub)
        .output()
        .expect("btrfs subvolume create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sees_the_executable_in(&sub);
}

/// overlayfs (every container's root): copies in the lower layer (read through the overlay)
/// and written through the overlay (upper layer), with the layers on different file systems
/// (lower on the test's tmp directory, upper on a tmpfs), where stat reports a layer's device.
#[test]
fn identity_on_overlayfs() {
    let Some(fs_) = Mounted::overlay() else {
        return;
    };
    sees_the_executable_in(&fs_.dir);
}

/// A file system mounted for one test under a temporary directory, unmounted on drop.
struct Mounted {
    dir: std::path::PathBuf,
    mounts: Vec<std::path::PathBuf>,
    _tmp: tempfile::TempDir,
}

impl Mounted {
    fn mount(args: &[&str], target: &Path) -> bool {
        let out = Command::new("mount").args(args).arg(target).output();
        match out {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                eprintln!(
                    "SKIPPED: mount {args:?} failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                false
            }
            Err(e) => {
                eprintln!("SKIPPED: mount not runnable: {e}");
                false
            }
        }
    }

    fn btrfs() -> Option<Self> {
        let tmp = tempfile::tempdir().expect("temp dir");
        let image = tmp.path().join("btrfs.img");
        fs::File::create(&image)
            .and_then(|f| f.set_len(128 << 20))
            .expect("image file");
        match Command::new("mkfs.btrfs").arg("-q").arg(&image).output() {
            Ok(o) if o.status.success() => {}
            other => {
                eprintln!(
                    "SKIPPED: mkfs.btrfs unavailable or failed ({other:?}); `cargo xtask setup` installs btrfs-progs"
                );
                return None;
            }
        }
        let dir = tmp.path().join("mnt");
        fs::create_dir(&dir).expect("mount point");
        let image = image.to_str().expect("utf-8 path").to_owned();
        if !Self::mount(&["-o", "loop", &image], &dir) {
            return None;
        }
        Some(Self {
            mounts: vec![dir.clone()],
            dir,
            _tmp: tmp,
        })
    }

    fn overlay() -> Option<Self> {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (lower, up, dir) = (
            tmp.path().join("lower"),
            tmp.path().join("up"),
            tmp.path().join("merged"),
        );
        for d in [&lower, &up, &dir] {
            fs::create_dir(d).expect("directory");
        }
        // The upper layer on a file system of its own (as the layers of a container often are).
        if !Self::mount(&["-t", "tmpfs", "tmpfs"], &up) {
            return None;
        }
        let mut m = Self {
            mounts: vec![up.clone()],
            dir: dir.clone(),
            _tmp: tmp,
        };
        let (upper, work) = (up.join("upper"), up.join("work"));
        fs::create_dir(&upper).expect("upper");
        fs::create_dir(&work).expect("work");
        // One copy in the lower layer before mounting: read through the overlay.
        copy_bash(&lower.join("client-lower"));
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        if !Self::mount(&["-t", "overlay", "overlay", "-o", &opts], &dir) {
            return None;
        }
        m.mounts.push(dir);
        Some(m)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}

fn bash() -> &'static Path {
    // Where bash is depends on whether / is merged into /usr (not in the QEMU guests' image).
    ["/bin/bash", "/usr/bin/bash"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("bash is installed")
}

fn copy_bash(to: &Path) {
    fs::copy(bash(), to).expect("copying bash");
}

/// Two copies of bash in `dir`, run in a cgroup with the identity probe attached: the kernel
/// records, for each, exactly the identity the daemon computes from its path.
fn sees_the_executable_in(dir: &Path) {
    let offsets = KernelOffsets::resolve().expect("resolving kernel offsets");

    // Two copies of one binary: same contents, different files.
    let one = dir.join("client-one");
    let two = dir.join("client-two");
    copy_bash(&one);
    // On an overlay, the second copy is the one already in the lower layer.
    let lower = dir.join("client-lower");
    let two = if lower.exists() { lower } else { two };
    if !two.exists() {
        copy_bash(&two);
    }
    let id_one = exe_id::exe_id(&one).expect("identity of copy one");
    let id_two = exe_id::exe_id(&two).expect("identity of copy two");
    assert_ne!(id_one, id_two, "two copies are two identities");

    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("local addr").port();

    // Declared before the program, so it is removed after the program is detached.
    let cgroup = TestCgroup::new("identity");
    let fs_ = BpfFs::new();
    let mut ebpf = load(&fs_.pin_dir("identity"), &offsets);
    {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(PROBE_PROGRAM)
            .expect("program")
            .try_into()
            .expect("cgroup_sock_addr");
        let dir = fs::File::open(cgroup.path()).expect("opening the test cgroup");
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
            exe_id::exe_id_of_pid(c.pid()).expect("/proc/PID/exe")
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
