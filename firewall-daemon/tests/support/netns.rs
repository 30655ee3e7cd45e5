//! Two network namespaces joined by a veth pair, owned by the test: dropping the guard deletes
//! both namespaces (and with them the veth pair and any XDP attachment), even when the test
//! fails. Nothing here touches the root namespace's interfaces.

use std::{
    fs::File,
    os::fd::AsFd as _,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{CloneFlags, setns};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(role: &str) -> Self {
        let name = format!(
            "fwt-{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `f` on a thread that has entered this namespace (a netns is per thread): sockets
    /// it creates belong to the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("thread inside the namespace panicked")
    }

    /// Runs a command inside the namespace (nsenter keeps /sys and bpffs mounts visible).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }

    pub fn exec(&self, args: &[&str]) -> String {
        let out = self
            .command(args[0])
            .args(&args[1..])
            .output()
            .expect("running a command in the namespace");
        assert!(
            out.status.success(),
            "{} in {}: {}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The MAC address of `ifname` in this namespace.
    pub fn mac(&self, ifname: &str) -> [u8; 6] {
        let out = self.exec(&["ip", "-o", "link", "show", "dev", ifname]);
        let text = out
            .split("link/ether ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no MAC address for {ifname} in: {out}"));
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for b in &mut mac {
            *b = parts
                .next()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or_else(|| panic!("bad MAC address {text:?}"));
        }
        mac
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).expect("opening the namespace");
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `client` <-> `server` over veth; the server side is the protected host.
pub struct Pair {
    pub client: NetNs,
    pub server: NetNs,
    /// Interface names inside each namespace.
    pub client_if: String,
    pub server_if: String,
    pub client_v4: &'static str,
    pub server_v4: &'static str,
    pub client_v6: &'static str,
    pub server_v6: &'static str,
}

impl Pair {
    pub fn new() -> Self {
        let client = NetNs::new("c");
        let server = NetNs::new("s");
        let (client_if, server_if) = ("veth-c".to_string(), "veth-s".to_string());
        ip(&[
            "link",
            "add",
            &client_if,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &server_if,
            "netns",
            &server.name,
        ]);
        let pair = Self {
            client,
            server,
            client_if,
            server_if,
            client_v4: "10.200.0.1",
            server_v4: "10.200.0.2",
            client_v6: "fd00:200::1",
            server_v6: "fd00:200::2",
        };
        for (ns, ifname, v4, v6) in [
            (
                &pair.client,
                &pair.client_if,
                pair.client_v4,
                pair.client_v6,
            ),
            (
                &pair.server,
                &pair.server_if,
                pair.server_v4,
                pair.server_v6,
            ),
        ] {
            ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", ifname]);
            ns.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                ifname,
                "nodad",
            ]);
            ns.exec(&["ip", "link", "set", ifname, "up"]);
        }
        pair
    }
}
