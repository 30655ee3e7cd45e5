//! Resolving the rules' `program` and `unit` selectors to what the kernel compares.
//! (placeholder API; replaced by the full resolver)
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::identity::ExeId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitCgroup {
    pub id: u64,
    pub level: u32,
    pub path: PathBuf,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub programs: BTreeMap<PathBuf, Option<ExeId>>,
    pub units: BTreeMap<String, Option<UnitCgroup>>,
}

impl Resolved {
    pub fn exe(&self, path: &Path) -> Option<ExeId> {
        self.programs.get(path).copied().flatten()
    }
    pub fn unit(&self, name: &str) -> Option<&UnitCgroup> {
        self.units.get(name).and_then(Option::as_ref)
    }
}

impl Resolved {
    pub fn resolve(ruleset: &crate::model::Ruleset, _cgroup_root: &Path) -> Self {
        let mut r = Self::default();
        for rule in &ruleset.rules {
            if let Some(p) = &rule.selector.program {
                r.programs
                    .insert(p.clone(), crate::identity::exe_id(p).ok());
            }
        }
        r
    }
    pub fn warnings(&self, _ruleset: &crate::model::Ruleset) -> Vec<String> {
        Vec::new()
    }
}

pub struct Watcher;
impl Watcher {
    pub fn new(_programs: &[PathBuf], _period: std::time::Duration) -> anyhow::Result<Self> {
        Ok(Self)
    }
    pub async fn changed(&mut self) {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await
    }
}
