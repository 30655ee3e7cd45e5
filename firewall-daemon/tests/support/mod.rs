#![allow(dead_code)]
pub mod bpffs;
pub mod frames;
