//! The control socket: who may use it (root, the daemon's user, the control group), and one
//! task per connection that reads a request line within a timeout and a size cap. Only
//! complete requests reach the daemon's loop ([`State::answer`]), so a client that sends or
//! reads nothing holds up nothing else.

use std::{os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use log::{error, info, warn};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::UCred},
};

use super::{State, confirm::ReloadOptions};
use super::{monitor, reload::summarize};
use crate::{
    control::{self, Request, Response},
    decision_log::Published,
};

/// Creates the socket with mode 0660 (group set to `group` if given). Failing to set
/// ownership or permissions is fatal: a world-usable control socket would let anyone rewrite
/// the firewall.
pub(super) fn bind_control_socket(
    path: &Path,
    group: Option<&str>,
) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    trusted_socket_dir(path)?;
    remove_stale_socket(path)?;
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    if let Some(g) = group {
        let gid = group_id(g)?;
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("setting group {g} on {}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting mode 0660 on {}", path.display()))?;
    Ok(listener)
}

/// Refuses a socket in a directory others may write. After binding, the daemon sets the
/// socket's group and mode by its path; in such a directory (`/tmp`) the path could be swapped
/// for a link to another file in between, and that file would get the group and mode.
pub(super) fn trusted_socket_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let meta = std::fs::metadata(dir).with_context(|| format!("checking {}", dir.display()))?;
    let mode = meta.mode() & 0o7777;
    if rules::config::untrusted(&meta).is_some() {
        bail!(
            "{} is in {}, which others may write (owner uid {}, mode {mode:04o}): the socket \
             could be swapped for a link there; use a directory only root writes, such as \
             /run/firewall",
            path.display(),
            dir.display(),
            meta.uid()
        );
    }
    Ok(())
}

/// Removes what a previous daemon left at `path`: only a socket nobody listens on. Anything
/// else there (a file, a directory, a symbolic link, a live socket) is not the daemon's to
/// delete, and starting is refused.
pub(super) fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "control_socket {} exists and is not a socket; the daemon only replaces a stale \
             socket: move that file away or set [daemon] control_socket to another path",
            path.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!(
            "another daemon is already answering on {}; stop it first",
            path.display()
        ),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display())),
        Err(e) => Err(e).with_context(|| {
            format!(
                "{} is a socket the daemon cannot tell is stale; remove it if no daemon runs",
                path.display()
            )
        }),
    }
}

pub(super) fn group_id(name: &str) -> anyhow::Result<nix::unistd::Gid> {
    nix::unistd::Group::from_name(name)
        .with_context(|| format!("looking up group {name}"))?
        .map(|g| g.gid)
        .ok_or_else(|| anyhow!("control_group {name:?} does not exist"))
}

/// Root, the daemon's own user, or a member of the control group may use the socket.
pub(super) fn authorize(cred: Result<UCred, String>, group: Option<&str>) -> Result<(), String> {
    let cred = cred?;
    let uid = cred.uid();
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    if let Some(g) = group
        && let Ok(gid) = group_id(g)
    {
        let gid = gid.as_raw();
        if cred.gid() == gid || supplementary_groups(cred.pid()).contains(&gid) {
            return Ok(());
        }
    }
    Err(format!(
        "permission denied: uid {uid} is not root{}",
        group
            .map(|g| format!(" and not in the control group {g:?}"))
            .unwrap_or_default()
    ))
}

pub(super) fn supplementary_groups(pid: Option<i32>) -> Vec<u32> {
    let Some(pid) = pid else { return Vec::new() };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Control connections of users other than root served at once; more are closed at once.
/// Members of the control group must not be able to exhaust the daemon's descriptors.
pub(super) const MAX_CONTROL_CONNECTIONS: usize = 32;

/// A complete request line read from a control connection, for the daemon's loop to answer.
pub(super) struct ControlCall {
    pub(super) cred: Result<UCred, String>,
    pub(super) line: String,
    pub(super) reply: tokio::sync::oneshot::Sender<Response>,
}

/// One control connection's task: reads the request (at most [`control::MAX_REQUEST`] bytes,
/// within [`REQUEST_TIMEOUT`]), has the loop answer it, writes the answer (within
/// [`REQUEST_TIMEOUT`]). A `monitor` request the loop accepted then streams events on the
/// same connection until the client goes away (`monitor.rs`): it holds its permit meanwhile,
/// so monitors count against [`MAX_CONTROL_CONNECTIONS`] like any other connection.
pub(super) async fn serve(
    stream: UnixStream,
    calls: tokio::sync::mpsc::Sender<ControlCall>,
    events: tokio::sync::broadcast::Sender<Published>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    if let Err(e) = serve_one(stream, calls, events).await {
        warn!("control connection: {e:#}");
    }
}

pub(super) async fn serve_one(
    stream: UnixStream,
    calls: tokio::sync::mpsc::Sender<ControlCall>,
    events: tokio::sync::broadcast::Sender<Published>,
) -> anyhow::Result<()> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"));
    let (read, mut write) = stream.into_split();
    // The request is read before answering even a refusal, so the client sees the refusal
    // rather than a broken pipe.
    let mut reader = BufReader::new(read).take(control::MAX_REQUEST as u64 + 1);
    let mut line = String::new();
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Response::err("timed out waiting for the request"),
        Ok(Err(e)) => Response::err(format!("reading the request: {e}")),
        Ok(Ok(_)) => {
            let (reply, answer) = tokio::sync::oneshot::channel();
            calls
                .send(ControlCall {
                    cred,
                    line: line.clone(),
                    reply,
                })
                .await
                .map_err(|_| anyhow!("the daemon is stopping"))?;
            answer
                .await
                .map_err(|_| anyhow!("the daemon is stopping"))?
        }
    };
    // Subscribed before the answer goes out: a client that sees the answer misses no event
    // published after it.
    let monitor = match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Monitor { filter }) if response.ok => Some((filter, events.subscribe())),
        _ => None,
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(&out))
        .await
        .map_err(|_| anyhow!("timed out writing the response"))??;
    if let Some((filter, events)) = monitor {
        // What the request reader buffered beyond the line is of no interest.
        let read = reader.into_inner().into_inner();
        monitor::stream(read, write, events, filter).await?;
    }
    Ok(())
}

impl State {
    /// The response to one request line from a client with credentials `cred`.
    pub(super) fn answer(&mut self, cred: Result<UCred, String>, line: &str) -> Response {
        let group = self.ruleset.daemon.control_group.clone();
        let uid = cred.as_ref().map_or(u32::MAX, |c| c.uid());
        match authorize(cred, group.as_deref()) {
            Err(msg) => Response::err(msg),
            Ok(()) if line.len() > control::MAX_REQUEST => Response::err(format!(
                "request longer than {} bytes",
                control::MAX_REQUEST
            )),
            Ok(()) => match serde_json::from_str::<Request>(line.trim()) {
                Err(e) => Response::err(format!(
                    "malformed request ({e}); expected one JSON line like {{\"cmd\":\"status\"}}"
                )),
                Ok(req) => self.handle(req, uid),
            },
        }
    }

    /// Answers `req` from a client with uid `uid`.
    pub(super) fn handle(&mut self, req: Request, uid: u32) -> Response {
        fn answer<T: serde::Serialize>(r: anyhow::Result<T>) -> Response {
            match r {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(format!("{e:#}")),
            }
        }
        match req {
            Request::List => answer(self.list()),
            Request::Status => answer(self.status()),
            Request::Conns => answer(self.conns()),
            Request::Dns => answer(self.dns()),
            Request::Explain(q) => answer(self.explain(&q)),
            Request::Ports => answer(crate::explain::ports(&self.rules_now(), &self.resolved)),
            Request::Confirm => answer(self.confirm()),
            Request::Debug { on } => answer(self.debug(on)),
            // The connection's task streams the events once it has this answer.
            Request::SetAdd {
                set,
                members,
                for_secs,
                force,
                caller,
            } => answer(self.set_add(&set, &members, for_secs, force, caller)),
            Request::SetDel { set, members } => answer(self.set_del(&set, Some(&members))),
            Request::SetFlush { set } => answer(self.set_del(&set, None)),
            Request::SetList { set } => answer(self.set_list(set.as_deref())),
            Request::Monitor { filter } => Response::ok(serde_json::json!({
                "monitoring": if filter.conns { "connections" } else { "decisions" },
            })),
            Request::Reload {
                recheck,
                dry_run,
                confirm_secs,
                force,
                caller,
                file,
            } => {
                let options = ReloadOptions {
                    recheck,
                    dry_run,
                    confirm_secs,
                    force,
                    caller,
                    file,
                };
                match self.reload_with(options, uid) {
                    Ok(d) if d.dry_run => Response::ok(d),
                    Ok(d) => {
                        info!(generation = d.generation; "reloaded on request: {}", summarize(&d));
                        Response::ok(d)
                    }
                    Err(e) if dry_run => Response::err(format!("{e:#}")),
                    Err(e) => {
                        error!("reload failed, previous rules stay in force: {e:#}");
                        Response::err(format!("{e:#}\nthe previous rules stay in force"))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Like `/tmp`: the control socket's group and mode are set by path after binding, and
    /// there the path could be swapped for a link to another file in between.
    #[tokio::test]
    async fn the_control_socket_is_refused_in_a_directory_others_may_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = super::super::dir_others_may_write(dir.path());
        let err = super::bind_control_socket(&open.join("control.sock"), None)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("which others may write"), "{err}");
        assert!(!open.join("control.sock").exists());
        super::bind_control_socket(&dir.path().join("control.sock"), None)
            .expect("a directory only root writes");
    }
}
