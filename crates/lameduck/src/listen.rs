//! Binding listening sockets with the options a server wants.
//!
//! Binding is a separate step from serving: servers take already-bound listeners, so tests can
//! bind `127.0.0.1:0` and a supervisor (or systemd's socket activation) can hand a worker
//! sockets it inherited; [`inherited`] adopts those.

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

    /// `SO_REUSEADDR`: rebind at once after a restart, despite connections in `TIME_WAIT`
    /// (unix; ignored on Windows, where the option would let another socket take the port).
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
        // On Windows SO_REUSEADDR means something else: it lets another socket bind the
        // same port while this one listens (and steal its connections). Windows rebinds a
        // port with connections in TIME_WAIT without it, so it is left off there.
        #[cfg(not(windows))]
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

/// Defers accepting connections on `listener` until the client has sent data, for at most
/// `wait` (Linux's `TCP_DEFER_ACCEPT`; nginx's `listen … deferred`, HAProxy's
/// `defer-accept`). For protocols where the client speaks first (HTTP, TLS), a connection
/// then reaches `accept` with its request already readable: the server's first read finds
/// it, with no wait for readiness in between, and a client that connects and sends nothing
/// waits in the kernel instead of in one of the server's connection slots. After `wait`
/// the kernel hands the connection over anyway. Works on a socket already listening,
/// inherited ones included; `wait` is rounded up to whole seconds (at least one).
///
/// # Errors
/// The option could not be set; on systems other than Linux and Android,
/// [`std::io::ErrorKind::Unsupported`].
#[allow(unsafe_code)]
pub fn defer_accept(listener: &TcpListener, wait: std::time::Duration) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let secs = libc::c_int::try_from(secs.max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: the descriptor is open for the call (borrowed from `listener`), and the
        // option value is a c_int that lives across it, with its size passed.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&secs as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (listener, wait);
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "deferred accept (TCP_DEFER_ACCEPT) needs Linux",
        ))
    }
}

/// Adopts the listening sockets this process inherited through the `LISTEN_FDS` protocol
/// (systemd socket activation, or a supervisor that keeps the sockets open across restarts).
///
/// Returns an empty list when `LISTEN_PID` does not name this process (the variables were
/// meant for someone else) or is absent. The sockets are file descriptors 3, 4, … in order;
/// each is checked to be a listening stream socket and marked close-on-exec, so it does not
/// leak into programs this one starts.
///
/// # Errors
/// `LISTEN_FDS` is malformed, or one of the descriptors is not a listening TCP socket.
///
/// # Panics
/// Never; but only the first call adopts the descriptors (a second one returns an empty
/// list), since two owners of one descriptor would close it twice.
#[cfg(unix)]
pub fn inherited() -> Result<Vec<TcpListener>, Error> {
    Ok(inherited_named()?.into_iter().map(|(_, l)| l).collect())
}

/// [`inherited`], with each socket's name from `LISTEN_FDNAMES` (systemd's
/// `FileDescriptorName=`, or the names lameduck's supervisor gives: `http`, `admin`). A socket
/// without a name is called `unknown`, as systemd does.
///
/// # Errors
/// As [`inherited`].
#[cfg(unix)]
pub fn inherited_named() -> Result<Vec<(String, TcpListener)>, Error> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);

    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    if !for_us {
        return Ok(Vec::new());
    }
    let count = match std::env::var("LISTEN_FDS") {
        Ok(n) => n.trim().parse::<i32>().map_err(|_| {
            Error::Io(std::io::Error::other(format!(
                "LISTEN_FDS is not a number: {n:?}"
            )))
        })?,
        Err(_) => return Ok(Vec::new()),
    };
    // AcqRel: whoever wins the swap owns the descriptors; nothing else is published here.
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(Vec::new());
    }
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names.split(':');
    const FIRST: i32 = 3;
    (FIRST..FIRST.saturating_add(count.max(0)))
        .map(|fd| {
            let name = names
                .next()
                .filter(|n| !n.is_empty())
                .unwrap_or("unknown")
                .to_owned();
            adopt_fd(fd).map(|l| (name, l))
        })
        .collect()
}

#[cfg(unix)]
#[allow(unsafe_code)]
fn adopt_fd(fd: i32) -> Result<TcpListener, Error> {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    let bad = |what: String| {
        Error::Io(std::io::Error::other(format!(
            "inherited descriptor {fd}: {what}"
        )))
    };
    // SAFETY: fcntl(F_GETFD) only queries the descriptor table; it tells us whether `fd` is
    // open before we so much as borrow it.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(bad("not open".into()));
    }
    {
        // Checked through a borrow first: a stale LISTEN_FDS may name a descriptor that
        // something else in this process owns (a log file, say). Taking ownership before
        // knowing it is ours would close it on the error path.
        // SAFETY: `fd` is open (checked above) and stays open for this block, which only
        // queries it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        if socket.r#type().map_err(|e| bad(e.to_string()))? != Type::STREAM {
            return Err(bad("not a stream socket".into()));
        }
        let addr = socket.local_addr().map_err(|e| bad(e.to_string()))?;
        if addr.as_socket().is_none() {
            return Err(bad("not an IPv4 or IPv6 socket".into()));
        }
        #[cfg(any(
            target_os = "linux",
            target_os = "android",
            target_os = "freebsd",
            target_os = "fuchsia"
        ))]
        if !socket.is_listener().map_err(|e| bad(e.to_string()))? {
            return Err(bad("not listening".into()));
        }
    }
    // SAFETY: `fd` is a listening TCP socket handed to this process by the LISTEN_FDS
    // protocol, nothing else in it owns it, and `inherited` adopts the set once (guarded by
    // TAKEN).
    let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    socket.set_cloexec(true).map_err(|e| bad(e.to_string()))?;
    Ok(socket.into())
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

    #[cfg(unix)]
    #[test]
    fn a_descriptor_that_is_not_a_listener_is_refused_and_left_open() {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join(format!("lameduck-adopt-{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let err = adopt_fd(file.as_raw_fd()).unwrap_err();
        assert!(err.to_string().starts_with("inherited descriptor"), "{err}");
        // The file is still open and still ours.
        file.write_all(b"still mine").unwrap();
        file.rewind().unwrap();
        let mut back = String::new();
        file.read_to_string(&mut back).unwrap();
        assert_eq!(back, "still mine");

        // A connected (not listening) TCP socket is refused, and left open too.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let err = adopt_fd(stream.as_raw_fd()).unwrap_err();
        assert!(err.to_string().contains("not listening"), "{err}");
        assert!(stream.peer_addr().is_ok(), "the stream was closed");
        drop(file);
        let _ = std::fs::remove_file(path);
    }
}
