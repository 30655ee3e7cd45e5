//! The firewall's rules language, without the kernel: what `rules.toml` may say
//! ([`config`], which reads it into a validated [`model::Ruleset`] or reports every problem with
//! its position), and what it means ([`policy`], the stateless reference evaluator, and
//! [`tracker`], the same with a connection table).
//!
//! It is its own crate so that everything that only needs the meaning of the rules (`fwctl
//! check`, the parser's fuzzer, the tests' oracle) builds without aya and the eBPF object, and
//! so that the oracle cannot lean on the daemon it judges: what it needs from the host (the
//! executables and cgroups the selectors name) comes in through [`policy::Selectors`].
pub mod config;
pub mod edit;
pub mod explain;
pub mod lint;
pub mod model;
pub mod names;
pub mod policy;
pub mod tracker;
