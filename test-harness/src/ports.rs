//! Ports on 127.0.0.1 for the processes a test starts.
//!
//! - [`free_port`]: a port that was free a moment ago (another test may take
//!   it first; [`crate::Sidecar::start`] retries on fresh ports for that).
//! - [`port_open`]: whether something accepts connections on a port.

use std::net::{TcpListener, TcpStream};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// True when a TCP connection to 127.0.0.1:`port` succeeds.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}
