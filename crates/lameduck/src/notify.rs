//! The sd_notify protocol, worker side (unix): tell whoever started this process (systemd
//! with `Type=notify`, or lameduck's supervisor) that it is ready, reloading or stopping.
//!
//! Each call sends one datagram to the socket named by `NOTIFY_SOCKET` (a path, or `@name`
//! for Linux's abstract namespace) and returns `Ok(false)` when the variable is not set, so
//! a program can call these unconditionally.

use std::io;
use std::os::unix::net::UnixDatagram;

/// The variable that names the supervisor's socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// `READY=1`: the service is up and serving (its listeners are being accepted on).
///
/// # Errors
/// The socket named by `NOTIFY_SOCKET` cannot be reached.
pub fn ready() -> io::Result<bool> {
    send("READY=1")
}

/// `STOPPING=1`: the service is shutting down.
///
/// # Errors
/// As [`ready`].
pub fn stopping() -> io::Result<bool> {
    send("STOPPING=1")
}

/// `RELOADING=1` with `MONOTONIC_USEC`, as `Type=notify-reload` wants; send [`ready`] once
/// the reload is done.
///
/// # Errors
/// As [`ready`].
pub fn reloading() -> io::Result<bool> {
    send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
}

/// `STATUS=…`: a one-line status shown by `systemctl status`.
///
/// # Errors
/// As [`ready`].
pub fn status(line: &str) -> io::Result<bool> {
    send(&format!("STATUS={}", line.replace('\n', " ")))
}

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to `NOTIFY_SOCKET`; `Ok(false)`
/// when there is none.
///
/// # Errors
/// As [`ready`].
pub fn send(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET) else {
        return Ok(false);
    };
    let target = target
        .into_string()
        .map_err(|_| io::Error::other("NOTIFY_SOCKET is not UTF-8"))?;
    let socket = UnixDatagram::unbound()?;
    send_to(&socket, &target, state.as_bytes())?;
    Ok(true)
}

fn send_to(socket: &UnixDatagram, target: &str, bytes: &[u8]) -> io::Result<()> {
    if let Some(name) = target.strip_prefix('@') {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(bytes, &addr)?;
            return Ok(());
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = name;
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "abstract notify sockets exist only on Linux",
            ));
        }
    }
    socket.send_to(bytes, target)?;
    Ok(())
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
#[allow(unsafe_code)]
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own, which lives across the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}
