#![allow(dead_code)]
pub mod bpffs;
pub mod daemon;
pub mod frames;
pub mod netns;
