//! The connection context a handler receives: who is on the other end, and whether the
//! server is draining.

use std::net::SocketAddr;
use std::time::Instant;

use crate::shutdown::{Phase, Shutdown};

/// What a handler knows about its connection and the server's lifecycle.
///
/// Long-lived sessions (a chat, a stream, a keep-alive loop) should watch
/// [`draining`](Self::draining) or [`is_draining`](Self::is_draining) and close cleanly
/// when it fires; whatever is still open at the drain deadline is closed by the server.
#[derive(Clone, Debug)]
pub struct Connection {
    id: u64,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    shutdown: Shutdown,
}

impl Connection {
    pub(crate) fn new(
        id: u64,
        peer_addr: SocketAddr,
        local_addr: SocketAddr,
        shutdown: Shutdown,
    ) -> Self {
        Connection {
            id,
            peer_addr,
            local_addr,
            shutdown,
        }
    }

    /// The connection's number, unique within its server.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The address the connection was accepted on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's shutdown handle.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// `true` once the server is draining: finish the current exchange and close.
    pub fn is_draining(&self) -> bool {
        self.shutdown.is_draining()
    }

    /// Resolves when the server begins draining.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        let reached = self.shutdown.reached(Phase::Draining);
        async move {
            reached.await;
        }
    }

    /// Blocks until the server begins draining or `deadline` passes; `true` if draining.
    pub fn wait_draining_deadline(&self, deadline: Instant) -> bool {
        self.shutdown
            .wait_for_deadline(Phase::Draining, deadline)
            .is_some()
    }
}
