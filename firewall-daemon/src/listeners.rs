//! The sockets that were bound before the daemon started: who owns each bound port.
