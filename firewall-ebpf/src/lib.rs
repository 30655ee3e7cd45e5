#![no_std]
// Exists so firewall-daemon can name this crate as a build-dependency (cargo then rebuilds the
// daemon when the kernel program changes); the program itself is src/main.rs.
