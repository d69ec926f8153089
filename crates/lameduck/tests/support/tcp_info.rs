//! `TCP_INFO` of a test's client socket, for tests that count what reached the client.

use std::os::fd::AsRawFd;

/// The kernel's `tcp_info` for `stream` (Linux): a std or a tokio socket.
#[allow(unsafe_code)]
pub(crate) fn tcp_info(stream: &impl AsRawFd) -> libc::tcp_info {
    // SAFETY: an all-zero `tcp_info` is valid; the kernel fills at most `len` bytes of it
    // and the socket is open for the whole call.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info
}
