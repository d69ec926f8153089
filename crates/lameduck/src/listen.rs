//! Binding listening sockets with the options a server wants.
//!
//! Binding is a separate step from serving: servers take already-bound listeners, so tests can
//! bind `127.0.0.1:0` and a supervisor can hand a worker sockets it inherited.

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::Error;

/// The default accept backlog. The kernel caps it at `net.core.somaxconn`; the usual default
/// of 128 overflows under a burst of a few thousand connections, which costs clients a
/// one-second SYN retransmit.
pub const DEFAULT_BACKLOG: i32 = 4096;

/// How to create a listening socket.
#[derive(Clone, Debug)]
pub struct ListenOptions {
    backlog: i32,
    reuse_address: bool,
    reuse_port: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            backlog: DEFAULT_BACKLOG,
            reuse_address: true,
            reuse_port: false,
        }
    }
}

impl ListenOptions {
    /// Default options: backlog [`DEFAULT_BACKLOG`], `SO_REUSEADDR` on, `SO_REUSEPORT` off.
    pub fn new() -> Self {
        Self::default()
    }

    /// The accept backlog (capped by the kernel).
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.backlog = backlog;
        self
    }

    /// `SO_REUSEADDR`: rebind at once after a restart, despite connections in `TIME_WAIT`.
    pub fn reuse_address(mut self, on: bool) -> Self {
        self.reuse_address = on;
        self
    }

    /// `SO_REUSEPORT` (unix): let several processes bind the same address.
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }

    /// Creates, binds and listens. The listener is in blocking mode, as from
    /// [`TcpListener::bind`]; servers switch it as they need.
    pub fn bind(&self, addr: SocketAddr) -> Result<TcpListener, Error> {
        let err = |source| Error::Bind { addr, source };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(err)?;
        if self.reuse_address {
            socket.set_reuse_address(true).map_err(err)?;
        }
        #[cfg(all(
            unix,
            not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
        ))]
        if self.reuse_port {
            socket.set_reuse_port(true).map_err(err)?;
        }
        if addr.is_ipv6() {
            // One socket per address family, as `TcpListener::bind` does on most systems.
            socket.set_only_v6(true).map_err(err)?;
        }
        socket.bind(&addr.into()).map_err(err)?;
        socket.listen(self.backlog).map_err(err)?;
        Ok(socket.into())
    }
}

/// Binds `addr` with the default [`ListenOptions`].
pub fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    ListenOptions::default().bind(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_and_reports_port_in_use() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let err = bind(addr).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot listen on {addr}: address already in use")
        );
    }
}
