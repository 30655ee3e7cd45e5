//! The daemon's resolution of the rules' selectors, as the oracle ([`rules::policy`]) asks
//! for it: the oracle is a crate of its own that knows nothing of how the daemon finds
//! executables and cgroups, only what they resolved to.

use std::path::Path;

use firewall_common::identity::ExeId;
use rules::policy::{Selectors, UnitCgroupId};

use crate::resolve::Resolved;

impl Selectors for Resolved {
    fn program_exe(&self, path: &Path) -> Option<ExeId> {
        self.exe(path)
    }

    fn unit_cgroup(&self, name: &str) -> Option<UnitCgroupId> {
        self.unit(name).map(|u| UnitCgroupId {
            id: u.id,
            level: u.level,
        })
    }
}
