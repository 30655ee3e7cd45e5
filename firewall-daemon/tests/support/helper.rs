//! A helper process: this test binary (or a copy of it) run again as one test function that
//! reads commands on stdin and answers each with one `@@ ...` line on stdout. Tests use it for
//! processes that must be separate from the test (in a namespace, a cgroup, as another uid, as
//! another executable). Killed and reaped when dropped.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

pub struct Helper {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::Receiver<String>,
}

impl Helper {
    /// Runs `exe` as its test function `test` (exact name), with `env` set.
    pub fn spawn(exe: &Path, test: &str, env: &[(&str, String)]) -> Self {
        Self::spawn_cmd(Command::new(exe), exe, test, env)
    }

    /// [`Self::spawn`], started through `loader` (`loader exe ARGS`, as the dynamic loader can
    /// run a program): the process's executable is then the loader, not `exe`.
    pub fn spawn_through(loader: &Path, exe: &Path, test: &str, env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(loader);
        cmd.arg(exe);
        Self::spawn_cmd(cmd, exe, test, env)
    }

    fn spawn_cmd(mut cmd: Command, exe: &Path, test: &str, env: &[(&str, String)]) -> Self {
        cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting the helper {}: {e}", exe.display()));
        let stdin = child.stdin.take().expect("stdin");
        let out = child.stdout.take().expect("stdout");
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // libtest may have started the line ("test helper_process ... ").
                if let Some((_, reply)) = line.split_once("@@ ") {
                    let _ = tx.send(reply.to_string());
                }
            }
        });
        Self {
            child,
            stdin,
            replies,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command and waits up to `wait` for its answer.
    pub fn call_within(&mut self, cmd: &str, wait: Duration) -> String {
        writeln!(self.stdin, "{cmd}").expect("writing to the helper");
        self.stdin.flush().expect("flushing");
        self.replies
            .recv_timeout(wait)
            .unwrap_or_else(|e| panic!("the helper did not answer {cmd:?}: {e}"))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
