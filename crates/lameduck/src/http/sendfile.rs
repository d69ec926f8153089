//! `sendfile(2)` for response bodies on plain-TCP HTTP/1 connections (Linux).
//!
//! hyper writes what a body yields; it cannot be told to send a file. So a body that wants
//! the kernel to copy a file straight from the page cache to the socket yields *stand-in*
//! chunks ([`SendFile::chunk`]): slices of one shared, never-written region of zeros, each
//! queued on its connection with the file range it stands for. hyper queues them like any
//! chunk and hands them to the socket in order, by `writev` (hyper writes vectored whenever
//! the socket says it can, which a plain TCP socket does); the connection's socket wrapper
//! recognises a stand-in slice by its address and calls `sendfile` for the file range
//! queued in its place. A stand-in is never copied, so the zeros never reach a client:
//! the extension is only offered where that holds (HTTP/1 over plain TCP, where hyper
//! queues body chunks as they are; never TLS, whose stream copies, nor HTTP/2, whose frames
//! do).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

/// The largest chunk one stand-in can be.
pub const MAX_CHUNK: usize = 1 << 20;

/// The region stand-ins are sliced from. Allocated zeroed and never written, so the kernel
/// backs it with no memory of its own.
static STAND_IN: OnceLock<&'static [u8]> = OnceLock::new();

fn stand_in() -> &'static [u8] {
    STAND_IN.get_or_init(|| Box::leak(vec![0u8; MAX_CHUNK].into_boxed_slice()))
}

/// Whether `slice` lies inside the stand-in region.
pub(crate) fn is_stand_in(slice: &[u8]) -> bool {
    let Some(region) = STAND_IN.get() else {
        return false;
    };
    let start = region.as_ptr() as usize;
    let at = slice.as_ptr() as usize;
    !slice.is_empty() && at >= start && at + slice.len() <= start + region.len()
}

/// A file range waiting to be sent in place of one stand-in chunk.
struct Job {
    file: Arc<File>,
    offset: u64,
    remaining: usize,
}

/// One connection's queue of file ranges, in the order their stand-ins were yielded.
#[derive(Default)]
pub(crate) struct Queue {
    jobs: Mutex<VecDeque<Job>>,
}

impl Queue {
    fn push(&self, job: Job) {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(job);
    }

    /// Sends up to `len` bytes of the front job's range to the socket `out` (non-blocking).
    /// `Ok(0)` never happens: a file that ends early is an error, so the response is cut
    /// short.
    pub(crate) fn send(&self, out: &impl std::os::fd::AsRawFd, len: usize) -> io::Result<usize> {
        let mut jobs = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(job) = jobs.front_mut() else {
            return Err(io::Error::other(
                "a sendfile stand-in chunk reached the socket with no file range behind it",
            ));
        };
        if len > job.remaining {
            return Err(io::Error::other(
                "a sendfile stand-in chunk is longer than its file range",
            ));
        }
        let n = sendfile(out.as_raw_fd(), &job.file, &mut job.offset, len)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being sent",
            ));
        }
        job.remaining -= n;
        if job.remaining == 0 {
            jobs.pop_front();
        }
        Ok(n)
    }
}

/// `sendmsg(2)` of `bufs` with `MSG_MORE` (non-blocking): the kernel holds a short tail
/// back for the bytes that follow (the file range, sent next) instead of sending it as a
/// segment of its own.
#[allow(unsafe_code)]
pub(crate) fn send_more(
    out: &impl std::os::fd::AsRawFd,
    bufs: &[std::io::IoSlice<'_>],
) -> io::Result<usize> {
    // SAFETY: an all-zero `msghdr` is valid (no address, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix (std guarantees it); the kernel only
    // reads through the pointer, and `bufs` outlives the call.
    msg.msg_iov = bufs.as_ptr().cast_mut().cast::<libc::iovec>();
    msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
    // SAFETY: `out` is an open socket, borrowed for the call; `msg` is initialised above.
    let n = unsafe { libc::sendmsg(out.as_raw_fd(), &msg, libc::MSG_MORE | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[allow(unsafe_code)]
fn sendfile(
    out: std::os::fd::RawFd,
    file: &File,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd as _;
    let mut off = libc::off_t::try_from(*offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset too large"))?;
    // SAFETY: `out` is the connection's socket and `file` an open file, both alive for the
    // whole call (the socket is borrowed by the caller, the file by the job); `off` is a
    // local the call updates.
    let n = unsafe { libc::sendfile(out, file.as_raw_fd(), &mut off, count) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    *offset = off as u64;
    Ok(n as usize)
}

/// Request extension offered on plain-TCP HTTP/1 connections (Linux) of a server built with
/// [`Serve::sendfile`](super::Serve::sendfile)`(true)`: lets the response
/// body send a file's bytes with `sendfile(2)`, straight from the page cache, instead of
/// reading them into memory and writing them out.
///
/// ```no_run
/// # use std::sync::Arc;
/// # fn body(req: &http::Request<()>, file: Arc<std::fs::File>) {
/// if let Some(sf) = req.extensions().get::<lameduck::http::SendFile>() {
///     // Yield this, unchanged, as the next data frame of this request's response body.
///     let chunk = sf.chunk(&file, 0, 1 << 20);
/// #   let _ = chunk;
/// }
/// # }
/// ```
///
/// The chunk returned stands for the file range and carries no data of its own: it must be
/// yielded, as it is, as a data frame of the response body of the request the extension
/// came with, and in the order the chunks were made. A layer that copies, splits or
/// compresses the body would send zeros instead; use this only in a body the application
/// controls to the end.
///
/// If the file ends before the range does, the connection is closed: the client sees a short
/// body (fewer bytes than its `Content-Length`), so it can tell the response is incomplete.
/// As with any `sendfile` server (nginx's included), bytes already handed to the kernel refer
/// to the file's pages: a file truncated or rewritten *in place* while it is sent may reach
/// the client with zeros or new bytes in that stretch. Replace files by rename (a new inode),
/// as deploys do, and every response carries one version whole.
#[derive(Clone)]
pub struct SendFile {
    /// The connection's state, which holds its queue of file ranges.
    state: Arc<super::ConnState>,
}

impl std::fmt::Debug for SendFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendFile").finish_non_exhaustive()
    }
}

impl SendFile {
    pub(super) fn new(state: Arc<super::ConnState>) -> Self {
        SendFile { state }
    }

    /// A stand-in chunk for `len` bytes of `file` from `offset` (at most [`MAX_CHUNK`]
    /// bytes; a longer `len` is cut to it, and the chunk's length says how much it covers).
    pub fn chunk(&self, file: &Arc<File>, offset: u64, len: usize) -> Bytes {
        let len = len.min(MAX_CHUNK);
        if len == 0 {
            return Bytes::new();
        }
        self.state.sendfile.push(Job {
            file: Arc::clone(file),
            offset,
            remaining: len,
        });
        Bytes::from_static(&stand_in()[..len])
    }
}
