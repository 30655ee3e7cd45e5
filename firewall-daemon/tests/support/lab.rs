//! One rule set in the kernel for BPF_PROG_TEST_RUN, loaded the way the daemon loads it: the
//! rules compiled (no selector resolves: tests of rules about programs resolve their own), one
//! generation with its maps pinned, and the connection tables opened from their pins. The test
//! files differ in the rules they load and in what they assert, not in these steps.

use std::path::Path;

use firewall_daemon::{
    compile::{self, Compiled},
    conntrack::Tables,
    kernel::Generation,
};
use rules::model::Ruleset;

pub struct Loaded {
    pub compiled: Compiled,
    pub generation: Generation,
    pub tables: Tables,
}

impl Loaded {
    /// `ruleset` (written as `text`, shown if loading fails) loaded with its maps pinned under
    /// `pin`, as generation 1.
    pub fn new(ruleset: &Ruleset, pin: &Path, text: &str) -> Self {
        let compiled =
            compile::compile(ruleset, &Default::default()).expect("compiling the test rules");
        let generation = Generation::load(&compiled, ruleset, pin, 1)
            .unwrap_or_else(|e| panic!("loading a generation: {e:#}\n--- rules ---\n{text}"));
        let tables = Tables::open(pin).expect("opening the connection tables");
        Self {
            compiled,
            generation,
            tables,
        }
    }
}
