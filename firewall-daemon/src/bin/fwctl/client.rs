//! Talking to the daemon: where its control socket is, one request and its answer, and what
//! `fwctl status` can still say when no daemon answers (the pins a stopped daemon left
//! enforcing).
use std::path::{Path, PathBuf};

use firewall_daemon::{
    cli::{self, FwctlArgs as Args},
    control::{self, ClientError, Request},
    kernel,
};
use rules::config;

use super::render::esc;
use super::{Failure, print_line};

/// The rules file named by `--config`, parsed (only when given).
pub(super) fn config_file(args: &Args) -> Result<Option<rules::model::Ruleset>, Failure> {
    match &args.config {
        Some(c) => config::load(c)
            .map(Some)
            .map_err(|e| Failure::Other(e.to_string())),
        None => Ok(None),
    }
}

pub(super) fn socket_path(args: &Args) -> Result<PathBuf, Failure> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    if let Some(rs) = config_file(args)? {
        return Ok(rs.daemon.control_socket);
    }
    Ok(PathBuf::from(cli::DEFAULT_CONTROL_SOCKET))
}

pub(super) fn request(args: &Args, req: Request) -> Result<serde_json::Value, Failure> {
    let resp = control::call(&socket_path(args)?, &req, control::answer_timeout(&req))?;
    if !resp.ok {
        let msg = resp.error.unwrap_or_else(|| "request refused".into());
        if msg.starts_with("permission denied") {
            return Err(Failure::Client(ClientError::Permission {
                path: socket_path(args)?.display().to_string(),
            }));
        }
        return Err(Failure::Refused(msg));
    }
    Ok(resp.data.unwrap_or(serde_json::Value::Null))
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| Failure::Other(format!("unexpected response: {e}")))
}

/// What protects the host while the daemon cannot be reached: the attachments a previous daemon
/// left pinned (they go on enforcing its last rules), or nothing.
#[derive(Debug, serde::Serialize)]
pub(super) struct DownStatus {
    daemon: &'static str,
    error: String,
    pin_dir: PathBuf,
    /// Interfaces whose XDP attachment is pinned: still enforcing the last rules.
    enforcing_on: Vec<String>,
    /// Outbound hooks whose cgroup attachment is pinned: still enforcing the last outbound
    /// rules (connect4, ...).
    outbound_hooks: Vec<String>,
    /// Pinned attachments whose interface no longer exists.
    stale: Vec<String>,
    /// Why the pins could not be inspected, if they could not.
    unknown: Option<String>,
}

/// `fwctl status` with the daemon unreachable: says whether the firewall still enforces.
pub(super) fn down_status(args: &Args, e: &Failure, json: bool) {
    // The pin directory: --config's, else the installed rules file's, else the default.
    let pin_dir = config_file(args)
        .ok()
        .flatten()
        .or_else(|| config::load(Path::new(cli::DEFAULT_CONFIG)).ok())
        .map(|rs| rs.daemon.pin_dir)
        .unwrap_or_else(|| rules::model::DaemonConfig::default().pin_dir);
    let mut st = DownStatus {
        daemon: "unreachable",
        error: e.to_string(),
        enforcing_on: Vec::new(),
        outbound_hooks: Vec::new(),
        stale: Vec::new(),
        unknown: None,
        pin_dir,
    };
    let links = st.pin_dir.join(kernel::LINK_DIR);
    match std::fs::read_dir(&links) {
        Ok(dir) => {
            let pins: Vec<String> = dir
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let mut names: Vec<String> = pins
                .iter()
                .filter_map(|name| name.strip_prefix("xdp-").map(str::to_string))
                .collect();
            names.sort();
            st.outbound_hooks = pins
                .iter()
                .filter_map(|name| name.strip_prefix("cgroup-").map(str::to_string))
                .collect();
            st.outbound_hooks.sort();
            for ifname in names {
                // In the caller's network namespace (sysfs may show another one's).
                if nix::net::if_::if_nametoindex(ifname.as_str()).is_ok() {
                    st.enforcing_on.push(ifname);
                } else {
                    st.stale.push(ifname);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => st.unknown = Some(format!("{}: {e}", links.display())),
    }
    if json {
        match serde_json::to_string_pretty(&st) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("fwctl: {e}"),
        }
        return;
    }
    if let Some(why) = &st.unknown {
        println!(
            "daemon:      not reachable; cannot tell whether the firewall still enforces \
             ({}; run as root)",
            esc(why)
        );
    } else if st.enforcing_on.is_empty() && st.outbound_hooks.is_empty() {
        println!(
            "daemon:      not reachable, and no attachment is pinned under {}: \
             NOTHING PROTECTS THIS HOST",
            esc(&links.display().to_string())
        );
    } else {
        let mut on = st.enforcing_on.clone();
        if !st.outbound_hooks.is_empty() {
            on.push(format!(
                "the outbound hooks ({})",
                st.outbound_hooks.join(", ")
            ));
        }
        println!(
            "daemon:      not reachable, but the firewall still enforces its last rules on {} \
             (attachments pinned under {}); start the daemon to manage them again",
            esc(&on.join(", ")),
            esc(&links.display().to_string())
        );
    }
    if !st.stale.is_empty() {
        println!(
            "stale pins:  {} (the interface is gone)",
            esc(&st.stale.join(", "))
        );
    }
}
