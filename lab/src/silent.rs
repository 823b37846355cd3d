//! A backend that never answers: a listener whose accept queue is full, so
//! a connect to it stays in SYN_SENT until the caller's timeout. Dials,
//! checks and balancers are tested against it; a closed port would refuse
//! at once and test something else.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// How long one filling connect may take before the queue counts as full:
/// on loopback an accepted handshake takes microseconds.
const FILL_TIMEOUT: Duration = Duration::from_millis(200);
/// Far above any accept queue the kernel grants a default listener (128).
const MAX_FILL: usize = 1000;

/// A listener on 127.0.0.1 with its accept queue full; it stays silent for
/// as long as this value lives.
pub struct SilentListener {
    addr: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl SilentListener {
    /// Binds a listener and fills its queue with connections nobody accepts.
    pub fn new() -> SilentListener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let mut queued = Vec::new();
        while let Ok(s) = TcpStream::connect_timeout(&addr, FILL_TIMEOUT) {
            queued.push(s);
            assert!(queued.len() < MAX_FILL, "the accept queue never filled");
        }
        SilentListener {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }

    /// Where connects hang.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Default for SilentListener {
    fn default() -> Self {
        SilentListener::new()
    }
}
