//! The decision log in the daemon's loop, and `fwctl monitor` connections.
//!
//! The loop names each kernel event (it holds the rule names of recent generations, see
//! [`State::decision`]), writes it to the journal and publishes it; each monitor connection
//! is a task of its own that takes from the broadcast channel what its filter lets through
//! ([`stream`]). A connection that reads too slowly falls behind in the channel and is told
//! how many events it missed; nothing waits for it.

use std::sync::Arc;

use firewall_common::{EVENT_OUTBOUND, LogEvent, verdict_rule};
use log::warn;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
    sync::broadcast::{self, error::RecvError},
};

use super::State;
use crate::{
    decision_log::{self, MonitorFilter, MonitorLine, Names, Published},
    host::{owners::OwnerNames, procfs},
};

/// The name of interface `index` in the daemon's network namespace.
fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as the function requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

impl State {
    /// A decision the kernel logged: named, written to the journal, published.
    pub(super) fn decision(&mut self, raw: LogEvent) {
        let index = verdict_rule(raw.verdict);
        let rule = self
            .history
            .name(raw.generation, index as usize)
            .map(|name| (index + 1, name.to_string()));
        let outbound = raw.kind == EVENT_OUTBOUND;
        let names = if outbound {
            let mut owners = OwnerNames::new(
                self.resolved
                    .programs
                    .iter()
                    .filter_map(|(p, id)| Some((p.as_path(), (*id)?))),
            );
            let owner = firewall_common::ct::ConnOwner {
                exe: raw.exe,
                uid: raw.uid,
                pid: raw.pid,
            };
            Names {
                rule,
                interface: None,
                program: owners.program(&owner),
                unit: procfs::unit_of_pid(raw.pid),
                user: Some(owners.user(raw.uid)),
            }
        } else {
            Names {
                rule,
                interface: interface_name(raw.ifindex),
                program: None,
                unit: None,
                user: None,
            }
        };
        let event = decision_log::event(&raw, names);
        decision_log::journal(&event);
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(Arc::new(event));
        }
    }
}

/// Serves one `fwctl monitor` connection after its request was answered: one JSON line per
/// event `filter` lets through, and a `lost` line when it fell behind, until the client
/// closes the connection (or the daemon stops).
pub(super) async fn stream(
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
    mut events: broadcast::Receiver<Published>,
    filter: MonitorFilter,
) -> anyhow::Result<()> {
    let mut scratch = [0u8; 256];
    loop {
        let line = tokio::select! {
            // The client has nothing more to say: any read that ends means it is gone.
            n = read.read(&mut scratch) => match n {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => continue,
            },
            got = events.recv() => match got {
                Ok(e) if filter.matches(&e) => MonitorLine::Event(Box::new((*e).clone())),
                Ok(_) => continue,
                Err(RecvError::Lagged(count)) => MonitorLine::Lost { count },
                Err(RecvError::Closed) => return Ok(()),
            },
        };
        let mut out = serde_json::to_vec(&line)?;
        out.push(b'\n');
        // No timeout: a client that does not read only blocks this task, and the channel
        // then drops what it missed (told as `lost` once it reads again).
        if let Err(e) = write.write_all(&out).await {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                warn!("monitor connection: {e}");
            }
            return Ok(());
        }
    }
}
