//! TLS for the HTTP server (feature `tls`): rustls through tokio-rustls, with the ring
//! provider (a C compiler is all it needs to build). The handshake runs inside the
//! connection's lifecycle: under its permit, counted, bounded by the header timeout, cut at
//! the drain deadline. Certificates live in a [`CertResolver`] that can be swapped while
//! serving: new handshakes get the new certificate, open connections keep theirs.
//!
//! ```no_run
//! # async fn run(app: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
//! use lameduck::tls::{CertResolver, load_pem, server_config};
//!
//! let resolver = CertResolver::new(load_pem(
//!     "/etc/letsencrypt/live/example.com/fullchain.pem".as_ref(),
//!     "/etc/letsencrypt/live/example.com/privkey.pem".as_ref(),
//! )?);
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
//! let serve = lameduck::http::serve(listener, app).tls(server_config(resolver.clone())?);
//! // After renewal: resolver.set(load_pem(...)?) — no connection is dropped.
//! serve.await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

pub use rustls;

/// Loads a certificate chain (PEM, leaf first, as certbot's `fullchain.pem`) and its private
/// key (PEM: PKCS#8, PKCS#1 or SEC1), and checks that they belong together.
///
/// # Errors
/// A file cannot be read or holds no certificate or key, the key type is not supported, or
/// the key does not match the certificate. The message names the file.
pub fn load_pem(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, Error> {
    let tls_err = |what: String| Error::Io(io::Error::new(io::ErrorKind::InvalidData, what));
    let cert_bytes = std::fs::read(cert).map_err(|e| {
        tls_err(format!(
            "cannot load TLS certificate {}: {}",
            cert.display(),
            io_words(&e)
        ))
    })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            tls_err(format!(
                "cannot load TLS certificate {}: {e}",
                cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(tls_err(format!(
            "cannot load TLS certificate {}: no PEM certificate in it",
            cert.display()
        )));
    }
    let key_bytes = std::fs::read(key).map_err(|e| {
        tls_err(format!(
            "cannot load TLS key {}: {}",
            key.display(),
            io_words(&e)
        ))
    })?;
    let private = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| tls_err(format!("cannot load TLS key {}: {e}", key.display())))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| tls_err(format!("cannot load TLS key {}: {e}", key.display())))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        tls_err(format!(
            "cannot load TLS key {}: it does not match the certificate {}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(Arc::new(certified))
}

fn io_words(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

/// When the leaf certificate of `key` stops being valid (its `notAfter`), if it can be read.
pub fn not_after(key: &CertifiedKey) -> Option<SystemTime> {
    key.cert.first().and_then(|c| der::not_after(c.as_ref()))
}

/// The certificate a server presents, swappable while it serves. Cloning gives another
/// handle to the same slot.
#[derive(Clone)]
pub struct CertResolver {
    current: Arc<RwLock<Arc<CertifiedKey>>>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("not_after", &not_after(&self.get()))
            .finish()
    }
}

impl CertResolver {
    /// Presents `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        CertResolver {
            current: Arc::new(RwLock::new(key)),
        }
    }

    /// Presents `key` from the next handshake on; connections already open keep theirs.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
    }

    /// The certificate presented now.
    pub fn get(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// A rustls server configuration presenting `resolver`'s certificate, with TLS 1.2 and 1.3
/// and ALPN `h2` then `http/1.1`.
///
/// # Errors
/// The crypto provider refuses the protocol versions (it does not with ring).
pub fn server_config(resolver: CertResolver) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Io(io::Error::other(e)))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Handshakes done and failed, for metrics. Cloning gives another handle to the same counts.
#[derive(Clone, Debug, Default)]
pub struct TlsStats {
    inner: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    handshakes: AtomicU64,
    failures: AtomicU64,
}

impl TlsStats {
    /// Handshakes that completed.
    pub fn handshakes(&self) -> u64 {
        self.inner.handshakes.load(Ordering::Relaxed)
    }

    /// Handshakes that failed or timed out (the connection was closed).
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn record(&self, ok: bool) {
        // Relaxed: independent counters, read for reporting only.
        let counter = if ok {
            &self.inner.handshakes
        } else {
            &self.inner.failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs a TLS handshake on an accepted stream for a handler of the raw
/// [`Server`](crate::Server): bounded by `timeout`, counted in `stats`. (The HTTP server
/// does this itself; see [`Serve::tls`](crate::http::Serve::tls).)
///
/// # Errors
/// The handshake failed or took longer than `timeout`; the stream is dropped.
pub async fn accept<S>(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: S,
    timeout: Duration,
    stats: &TlsStats,
) -> io::Result<tokio_rustls::server::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let result = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    };
    stats.record(result.is_ok());
    result
}

/// Just enough DER to find a certificate's validity: `Certificate ::= SEQUENCE {
/// tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
/// validity SEQUENCE { notBefore, notAfter }, … } … }` (RFC 5280 4.1).
mod der {
    use super::{Duration, SystemTime, UNIX_EPOCH};

    /// One TLV: (tag, contents, rest).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    pub(super) fn not_after(cert: &[u8]) -> Option<SystemTime> {
        let (_, certificate, _) = tlv(cert)?;
        let (_, tbs, _) = tlv(certificate)?;
        let mut rest = tbs;
        // [0] EXPLICIT version, when present.
        if rest.first() == Some(&0xa0) {
            rest = tlv(rest)?.2;
        }
        for _ in 0..3 {
            // serialNumber, signature, issuer
            rest = tlv(rest)?.2;
        }
        let (_, validity, _) = tlv(rest)?;
        let (_, _, after) = tlv(validity)?;
        let (tag, time, _) = tlv(after)?;
        parse_time(tag, time)
    }

    /// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, 0x18).
    fn parse_time(tag: u8, text: &[u8]) -> Option<SystemTime> {
        let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
        let num = |s: &str| s.parse::<u64>().ok();
        let (year, rest) = match tag {
            0x17 if text.len() == 12 => {
                let yy = num(&text[..2])?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
            }
            0x18 if text.len() == 14 => (num(&text[..4])?, &text[4..]),
            _ => return None,
        };
        let (month, day) = (num(&rest[..2])?, num(&rest[2..4])?);
        let (h, m, s) = (num(&rest[4..6])?, num(&rest[6..8])?, num(&rest[8..10])?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
            return None;
        }
        let days = days_from_civil(year, month, day)?;
        Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + s))
    }

    /// Days from 1970-01-01 to the given date (Howard Hinnant's algorithm), for years from
    /// 1970 on.
    fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
        if y < 1970 {
            return None;
        }
        let y = if m <= 2 { y - 1 } else { y };
        let era = y / 400;
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        (era * 146_097 + doe).checked_sub(719_468)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn civil_days() {
            assert_eq!(days_from_civil(1970, 1, 1), Some(0));
            assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
            assert_eq!(days_from_civil(2026, 11, 24), Some(20_781));
        }

        #[test]
        fn times() {
            let t = parse_time(0x17, b"261124100000Z").unwrap();
            assert_eq!(
                t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
                20_781 * 86_400 + 36_000
            );
            assert!(parse_time(0x18, b"20261124100000Z").is_some());
            assert!(parse_time(0x17, b"garbage").is_none());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_generated_certificates_expiry() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let at = der::not_after(cert.der()).unwrap();
        let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        // 2031-05-17T00:00:00Z
        assert_eq!(secs, 1_936_742_400);
    }
}
