//! The library's error type.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// What can go wrong when starting or running a server.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A listening socket could not be created or bound.
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why it failed.
        source: io::Error,
    },
    /// An already-bound listener could not be used (for example, it could not be made
    /// non-blocking or registered with the event loop).
    Listener(io::Error),
    /// The server was given no listener.
    NoListener,
    /// Any other I/O failure while setting up the server.
    Io(io::Error),
}

/// A short, lower-case description of common OS errors, without the OS error number; an
/// error that carries its own message keeps it.
pub(crate) fn describe(err: &io::Error) -> String {
    if err.get_ref().is_some() {
        return err.to_string();
    }
    match err.kind() {
        io::ErrorKind::AddrInUse => "address already in use".to_owned(),
        io::ErrorKind::AddrNotAvailable => "address not available on this machine".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        _ => err.to_string(),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bind { addr, source } => {
                write!(f, "cannot listen on {addr}: {}", describe(source))
            }
            Error::Listener(e) => write!(f, "cannot use listener: {}", describe(e)),
            Error::NoListener => f.write_str("the server has no listener to accept on"),
            Error::Io(e) => write!(f, "{}", describe(e)),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. } => Some(source),
            Error::Listener(e) | Error::Io(e) => Some(e),
            Error::NoListener => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_error_reads_like_a_sentence() {
        let e = Error::Bind {
            addr: "127.0.0.1:8080".parse().unwrap(),
            source: io::Error::from(io::ErrorKind::AddrInUse),
        };
        assert_eq!(
            e.to_string(),
            "cannot listen on 127.0.0.1:8080: address already in use"
        );
    }

    #[test]
    fn an_os_error_reads_lower_case_and_a_message_of_its_own_is_kept() {
        let os = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(describe(&os), "no such file or directory");
        let own = io::Error::new(io::ErrorKind::NotFound, "cannot run x: not found");
        assert_eq!(describe(&own), "cannot run x: not found");
    }
}
