#![allow(dead_code)]
pub mod bpffs;
pub mod frames;
pub mod daemon;
pub mod netns;
