//! The daemon's kernel side: everything between a compiled rule set and the running kernel.
//!
//! A rule set reaches the kernel as a *generation*: a fresh copy of the eBPF object whose maps
//! are sized for and filled with that rule set before anything points at it, then switched to
//! with one `bpf_link_update` per attachment, so there is never a moment without a program or
//! with half a rule set (compile.md, "Atomic replacement"). What outlives a generation (the
//! counters, connections, listeners, and the attachments themselves) is pinned by name under
//! the pin directory, which is how a restarted daemon takes over from the previous one.
//!
//! Every map the object has is described once, in the registry [`firewall_common::maps`]; the
//! loading, sizing, pinning, adopting and layout checks here all walk that registry.
//!
//! - [`pins`]: the pin directory and the pinned maps (bpffs, layout checks, openers).
//! - [`object`]: loading one copy of the object with its load-time constants.
//! - [`tables`]: sizing and filling the rule maps of a generation.
//! - [`generation`]: the inbound and outbound generations.
//! - [`links`]: attaching, adopting, updating and pinning links on interfaces.
//! - [`hooks`]: the outbound and listener cgroup hooks.
//! - [`shared`]: the daemon's handles on the pinned shared maps it reads and writes.
//! - [`features`]: what the running kernel offers.
//! - `testrun` (feature `testrun`, tests and examples only): BPF_PROG_TEST_RUN.

pub mod diagnostics;
pub mod features;
pub mod generation;
pub mod hooks;
pub mod links;
pub mod loopback;
pub mod object;
pub mod pins;
pub mod shared;
pub mod tables;
#[cfg(feature = "testrun")]
pub mod testrun;

pub use generation::{Generation, OutboundGeneration};
pub use hooks::{Hook, SockHook, attach_listener_hooks, hook_pin, sock_hook_pin};
pub use links::{
    EGRESS_NL_HANDLE, EGRESS_NL_PRIORITY, EgressLink, LINK_DIR, adopt_interface_link, adopt_link,
    adopt_or_attach, detach_netlink_egress, link_interface, link_pin, pin_egress_link,
    pin_hook_link, pin_xdp_link, pinned_link_program, remove_pins,
};
pub use pins::{
    BPF_FS_ROOT, PROGRAM_PIN, discard_incompatible_pins, open_pinned, pinned_capacity,
    prepare_pin_dir,
};
pub use shared::{ListenerTable, StealthTable};
pub use tables::ct_config;
#[cfg(feature = "testrun")]
pub use testrun::{BlocklistProgram, FrameGenerator, Loopback, PassProgram};
