//! A connection's last HTTP/1 response and its FIN in the same segment (Linux `TCP_CORK`).
//!
//! When hyper will close a connection after a response (the client sent `Connection: close`
//! or spoke HTTP/1.0 without keep-alive, the response says `Connection: close`, the server is
//! draining), the response went out in its own segments and the FIN, sent when the socket
//! was closed, in one more: with one request per connection, ten segments on the wire per
//! request where nginx (`tcp_nopush`) sends eight. Here the socket is corked before the last
//! response's first write, and shut down for writing when hyper is done with it (or when the
//! socket is dropped first, on an error or at the drain deadline): the kernel sends the
//! response's tail with the FIN. The shutdown always comes before the close, since a close
//! with unread bytes in the receive queue resets the connection and discards what is held. A
//! response after which hyper hands the socket over (an upgrade asked for, a `CONNECT`) is
//! never corked: hyper does not shut those down.
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
/// The last response is under way with the cork pulled (the connection waited, or corking
/// failed): the write side is still shut down before the close.
const RELEASED: u8 = 3;
/// Shut down or dropped: nothing more to do.
const DONE: u8 = 4;

/// One connection's cork, shared by its socket wrapper (which corks and shuts down), its
/// service (which says when the last response begins) and its task (which pulls the cork
/// when the connection waits).
#[derive(Debug)]
pub(crate) struct Cork {
    /// The connection's socket, for [`Cork::release`] only.
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

    /// The response about to be written is the connection's last. Not for a response that
    /// hands the socket over afterwards (an upgrade, a `CONNECT` tunnel): hyper never shuts
    /// those down.
    pub(crate) fn want(&self) {
        let _ = self
            .state
            .compare_exchange(IDLE, WANTED, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether the socket is corked now.
    pub(crate) fn is_corked(&self) -> bool {
        self.state.load(Ordering::Relaxed) == CORKED
    }

    /// Before a write: corks the socket if the last response is about to begin.
    pub(crate) fn before_write(&self, socket: &TcpStream) {
        if self.state.load(Ordering::Relaxed) != WANTED {
            return;
        }
        let corked = socket2::SockRef::from(socket).set_tcp_cork(true).is_ok();
        self.state
            .store(if corked { CORKED } else { RELEASED }, Ordering::Relaxed);
    }

    /// hyper is done with the connection, or its socket is being dropped: whether the last
    /// response was (or is being) written, so the write side should be shut down now. That
    /// sends what is held with the FIN; and it must come before the close, because a close
    /// with unread bytes in the receive queue resets the connection and discards what the
    /// socket still holds.
    pub(crate) fn take_for_shutdown(&self) -> bool {
        matches!(
            self.state.swap(DONE, Ordering::Relaxed),
            WANTED | CORKED | RELEASED
        )
    }

    /// The connection is waiting: pull the cork, so nothing written stays held.
    #[allow(unsafe_code)]
    pub(crate) fn release(&self) {
        if self
            .state
            .compare_exchange(CORKED, RELEASED, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // SAFETY: this runs only in the connection's task, right after hyper's connection
        // future returned `Pending`, so that future still owns the socket wrapper that owns
        // `fd` (hyper hands the socket on only when it returns `Ready`, and the wrapper's drop
        // moves the state past `CORKED` before the descriptor is closed).
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        // Not fatal: at worst the kernel sends the held bytes within 200 ms.
        let _ = socket2::SockRef::from(&fd).set_tcp_cork(false);
    }
}
