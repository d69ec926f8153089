//! A connection's last HTTP/1 response and its FIN in the same segment (Linux `TCP_CORK`).
//!
//! When hyper will close a connection after a response (the client sent `Connection: close`
//! or spoke HTTP/1.0 without keep-alive, the response says `Connection: close`, the server is
//! draining), the response went out in its own segments and the FIN, sent when the socket
//! was closed, in one more: with one request per connection, ten segments on the wire per
//! request where nginx (`tcp_nopush`) sends eight. Here the socket is corked before the last
//! response's first write, and shut down for writing when hyper is done with it: the kernel
//! sends the response's tail with the FIN.
//!
//! Corked bytes wait until the cork is pulled (or for at most 200 ms, the kernel's own
//! bound), so the cork never outlives a pause: whenever the connection's future is left
//! waiting (a streaming body with nothing to send yet, a full send buffer) the cork is
//! pulled at once ([`Cork::release`]), and the rest of the response goes out as it would
//! have without it.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::net::TcpStream;

/// Not wanted (yet): the connection's next response is not its last.
const IDLE: u8 = 0;
/// The next write starts the connection's last response: cork before it.
const WANTED: u8 = 1;
/// The socket is corked.
const CORKED: u8 = 2;
/// Pulled, shut down, failed or dropped: nothing more to do.
const DONE: u8 = 3;

/// One connection's cork, shared by its socket wrapper (which corks and shuts down), its
/// service (which says when the last response begins) and its task (which pulls the cork
/// when the connection waits).
#[derive(Debug)]
pub(crate) struct Cork {
    /// The connection's socket. Only used by [`Cork::release`], which runs between polls of
    /// the connection's future, in the task that owns the socket; the socket wrapper's drop
    /// sets [`DONE`] before the descriptor is closed.
    fd: RawFd,
    state: AtomicU8,
}

impl Cork {
    pub(crate) fn new(socket: &TcpStream) -> Self {
        Cork {
            fd: socket.as_raw_fd(),
            state: AtomicU8::new(IDLE),
        }
    }

    /// The response about to be written is the connection's last.
    pub(crate) fn want(&self) {
        let _ = self
            .state
            .compare_exchange(IDLE, WANTED, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Before a write: corks the socket if the last response is about to begin.
    pub(crate) fn before_write(&self, socket: &TcpStream) {
        if self.state.load(Ordering::Relaxed) != WANTED {
            return;
        }
        let corked = socket2::SockRef::from(socket).set_tcp_cork(true).is_ok();
        self.state
            .store(if corked { CORKED } else { DONE }, Ordering::Relaxed);
    }

    /// hyper is done with the connection: whether the socket is corked (and should be shut
    /// down for writing now, which sends what is held with the FIN). A close with unread
    /// bytes in the receive queue would discard what is held, so the FIN cannot wait for the
    /// close.
    pub(crate) fn take_for_shutdown(&self) -> bool {
        self.state.swap(DONE, Ordering::Relaxed) == CORKED
    }

    /// The connection is waiting: pull the cork, so nothing written stays held.
    #[allow(unsafe_code)]
    pub(crate) fn release(&self) {
        if self
            .state
            .compare_exchange(CORKED, DONE, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // SAFETY: `CORKED` is only seen while the socket wrapper that owns `fd` is alive: its
        // drop stores `DONE` first, and this runs in the connection's task, between polls of
        // the future that owns the wrapper (an HTTP/1 connection's socket is never used from
        // another task before an upgrade, and a `101` response never wants the cork).
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        // Not fatal: at worst the kernel sends the held bytes within 200 ms.
        let _ = socket2::SockRef::from(&fd).set_tcp_cork(false);
    }

    /// The socket wrapper is being dropped: the descriptor is about to close.
    pub(crate) fn forget(&self) {
        self.state.store(DONE, Ordering::Relaxed);
    }
}
