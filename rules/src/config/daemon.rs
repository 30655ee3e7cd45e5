//! `[daemon]`: how the daemon attaches and where it keeps its state. Only what the file can
//! be sure of is checked here (names, absolute paths); whether the interfaces, the bpffs pin
//! directory or the cgroup exist is for the daemon to find out when it starts.

use std::path::{Path, PathBuf};

use toml::{Spanned, de::DeValue};

use super::{
    checker::Checker,
    raw::{IfName, OneOrMany, RawDaemon},
};
use crate::model::{DaemonConfig, Interfaces, OnStop, XdpMode};

/// Linux `IFNAMSIZ` minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

impl Checker<'_> {
    pub(super) fn daemon(&mut self, value: Option<Spanned<DeValue<'_>>>) -> DaemonConfig {
        let mut out = DaemonConfig::default();
        let Some(raw) =
            value.and_then(|v| self.table::<RawDaemon>(v, "", "[daemon]", "daemon.", &[]))
        else {
            return out;
        };
        if let Some(interfaces) = raw.interfaces
            && let Some(interfaces) = self.interfaces(interfaces)
        {
            out.interfaces = interfaces;
        }
        if let Some(mode) = raw.xdp_mode {
            let options = [
                ("auto", XdpMode::Auto),
                ("native", XdpMode::Native),
                ("generic", XdpMode::Generic),
            ];
            if let Some(mode) = self.choice(&mode, "", "daemon.xdp_mode", &options) {
                out.xdp_mode = mode;
            }
        }
        if let Some(on_stop) = raw.on_stop {
            let options = [("keep", OnStop::Keep), ("detach", OnStop::Detach)];
            if let Some(v) = self.choice(&on_stop, "", "daemon.on_stop", &options) {
                out.on_stop = v;
            }
        }
        if let Some(path) = raw.control_socket
            && let Some(path) = self.absolute_path(&path, "daemon.control_socket")
        {
            out.control_socket = path;
        }
        if let Some(pin_dir) = raw.pin_dir
            && let Some(path) = self.absolute_path(&pin_dir, "daemon.pin_dir")
        {
            out.pin_dir = path;
        }
        if let Some(dir) = raw.state_dir
            && let Some(path) = self.absolute_path(&dir, "daemon.state_dir")
        {
            out.state_dir = path;
        }
        if let Some(cgroup) = raw.cgroup
            && let Some(path) = self.absolute_path(&cgroup, "daemon.cgroup")
        {
            out.cgroup = Some(path);
        }
        if let Some(group) = raw.control_group {
            let name = group.get_ref();
            // What groupadd accepts is distro policy; this only refuses what no group name can be.
            if name.is_empty()
                || name.contains([':', '/', '\n'])
                || name.contains(char::is_whitespace)
            {
                self.error(
                    Some(group.span()),
                    format!("daemon.control_group {name:?} is not a valid group name"),
                );
            } else {
                out.control_group = Some(name.clone());
            }
        }
        out
    }

    pub(super) fn interfaces(&mut self, value: Spanned<OneOrMany<IfName>>) -> Option<Interfaces> {
        let span = value.span();
        let names = match value.into_inner() {
            OneOrMany::One(IfName(name)) if name == "auto" => return Some(Interfaces::Auto),
            OneOrMany::One(IfName(name)) => {
                self.error(
                    Some(span),
                    format!(
                        r#"daemon.interfaces must be "auto" or a list of names; write [{name:?}] for one interface"#
                    ),
                );
                return None;
            }
            OneOrMany::Many(names) => names,
        };
        if names.is_empty() {
            self.error(
                Some(span),
                r#"daemon.interfaces is an empty list, which would protect nothing; use "auto" or name the interfaces"#
                    .to_owned(),
            );
            return None;
        }
        let mut out: Vec<String> = Vec::new();
        let mut ok = true;
        for name in names {
            let name_span = name.span();
            let IfName(name) = name.into_inner();
            // The kernel's own rule (dev_valid_name).
            let valid = !name.is_empty()
                && name.len() <= MAX_IFNAME_LEN
                && name != "."
                && name != ".."
                && !name.contains(['/', ':'])
                && !name.contains(char::is_whitespace);
            if !valid {
                self.error(
                    Some(name_span),
                    format!(
                        "invalid interface name {name:?} in daemon.interfaces (1-{MAX_IFNAME_LEN} bytes, no '/', ':' or spaces)"
                    ),
                );
                ok = false;
            } else if out.contains(&name) {
                self.warn(
                    name_span,
                    format!("interface {name:?} is listed twice in daemon.interfaces"),
                );
            } else {
                out.push(name);
            }
        }
        ok.then_some(Interfaces::List(out))
    }

    fn absolute_path(&mut self, value: &Spanned<String>, key: &str) -> Option<PathBuf> {
        let path = Path::new(value.get_ref());
        if path.is_absolute() {
            Some(path.to_path_buf())
        } else {
            // Relative paths would depend on the daemon's working directory.
            self.error(
                Some(value.span()),
                format!("{key} must be an absolute path, not {:?}", value.get_ref()),
            );
            None
        }
    }
}
