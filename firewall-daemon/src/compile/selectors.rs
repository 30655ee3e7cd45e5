//! What a rule's `program`, `unit` and `user` selectors resolve to now: everyone, one group
//! (the key the kernel builds from a socket's owner), or nothing (a program that does not
//! exist yet: the rule matches nothing until it does) (compile.md, "Rules about programs").

use firewall_common::identity::{GroupKey, MAX_UNIT_LEVEL, NO_UID};
use rules::model::Rule;

use crate::host::selectors::Resolved;

/// Shapes that include a unit: 2, 3, 6 and 7.
pub(super) const UNIT_SHAPES: u32 = (1 << 2) | (1 << 3) | (1 << 6) | (1 << 7);

/// What a rule's selectors resolve to.
pub(super) enum Scope {
    /// No selector: every process.
    Everyone,
    /// The group these resolved values name.
    Group(GroupKey),
    /// A selector resolves to nothing now: the rule matches nothing.
    Unresolved,
}

pub(super) fn scope(rule: &Rule, resolved: &Resolved) -> Scope {
    let sel = &rule.selector;
    if sel.is_everyone() {
        return Scope::Everyone;
    }
    let mut key = GroupKey {
        uid: NO_UID,
        ..GroupKey::default()
    };
    if let Some(path) = &sel.program {
        match resolved.exe(path) {
            Some(exe) => key.exe = exe,
            None => return Scope::Unresolved,
        }
    }
    if let Some(unit) = &sel.unit {
        match resolved.unit(unit) {
            Some(u) if (1..=MAX_UNIT_LEVEL as u32).contains(&u.level) => key.unit = u.id,
            _ => return Scope::Unresolved,
        }
    }
    if let Some(uid) = sel.user {
        key.uid = uid;
    }
    Scope::Group(key)
}
