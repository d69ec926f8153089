//! `lameduck serve --tls-cert --tls-key`, with certificates made at test time (rcgen) and
//! real TLS clients (curl with `--cacert`, and tokio-rustls to see which certificate is
//! presented): HTTPS over HTTP/1.1 and HTTP/2, `--redirect-http`, certificate reloads on
//! SIGHUP (in place, and by a new worker), and the start-up errors.
#![cfg(unix)]

mod util;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use libc::{SIGHUP, SIGTERM};
use util::{Lameduck, TempDir, WAIT, run_to_end};

/// A CA and leaf certificates for localhost, written as PEM files.
struct Pki {
    dir: TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = TempDir::new(name);
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "lameduck test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    /// Writes `cert.pem` and `key.pem` for a leaf called `name`, valid until `until`.
    fn issue(&self, name: &str, expired: bool) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) = (
            self.dir.path().join("cert.pem"),
            self.dir.path().join("key.pem"),
        );
        // Replaced by rename, as certbot does.
        std::fs::write(c.with_extension("tmp"), cert.pem()).unwrap();
        std::fs::rename(c.with_extension("tmp"), &c).unwrap();
        std::fs::write(k.with_extension("tmp"), key.serialize_pem()).unwrap();
        std::fs::rename(k.with_extension("tmp"), &k).unwrap();
        (c, k)
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The common name of the certificate `addr` presents now.
    fn presented(&self, addr: SocketAddr) -> String {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(
                    rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                    tcp,
                )
                .await
                .expect("TLS handshake");
            let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            let text = String::from_utf8_lossy(der.as_ref()).into_owned();
            ["first", "second", "expired"]
                .into_iter()
                .find(|n| text.contains(n))
                .unwrap_or("unknown")
                .to_owned()
        })
    }
}

/// `curl --cacert` against `https://localhost:PORT/path`; returns (status line, headers+body).
fn curl(pki: &Pki, addr: SocketAddr, path: &str, extra: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--cacert"])
        .arg(pki.ca_path())
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", addr.port()))
        .args(extra)
        .arg(format!("https://localhost:{}{path}", addr.port()))
        .output()
        .expect("curl (apt-get install curl)");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn serve_tls(pki: &Pki, cert: &Path, key: &Path, extra: &[&str]) -> Lameduck {
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let _ = pki;
    Lameduck::serve(&args, true)
}

#[test]
fn https_over_http1_and_http2_with_curl_and_counted_handshakes() {
    let pki = Pki::new("tls-basic");
    let (cert, key) = pki.issue("first", false);
    let mut server = serve_tls(&pki, &cert, &key, &[]);
    let h1 = curl(&pki, server.addr, "/", &["--http1.1"]);
    assert!(h1.starts_with("HTTP/1.1 200"), "{h1}");
    assert!(h1.contains("lameduck"));
    let h2 = curl(&pki, server.addr, "/", &["--http2"]);
    assert!(h2.starts_with("HTTP/2 200"), "{h2}");
    // A client that does not trust the certificate gets nowhere, and that is counted too.
    let refused = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("https://127.0.0.1:{}/", server.addr.port()))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let metrics = server.admin_get("/metrics").text();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
    };
    assert_eq!(value("lameduck_tls_handshakes_total"), 2);
    assert_eq!(value("lameduck_tls_handshake_failures_total"), 1);
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn redirect_http_answers_308_to_the_https_url() {
    let pki = Pki::new("tls-redirect");
    let (cert, key) = pki.issue("first", false);
    let mut server = serve_tls(&pki, &cert, &key, &["--redirect-http", "127.0.0.1:0"]);
    let line = server.wait_log("redirecting plain HTTP");
    let plain = util::field_addr(&line);
    let resp = util::get(plain, "/docs/page.html?x=1", &[]);
    assert_eq!(resp.status, 308);
    assert_eq!(
        resp.header("location"),
        Some(format!("https://test:{}/docs/page.html?x=1", server.addr.port()).as_str())
    );
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn sighup_swaps_the_certificate_in_place_and_keeps_the_old_one_when_the_new_is_broken() {
    let pki = Pki::new("tls-reload-alone");
    let (cert, key) = pki.issue("first", false);
    let mut server = serve_tls(&pki, &cert, &key, &["--no-supervisor"]);
    assert_eq!(pki.presented(server.addr), "first");
    pki.issue("second", false);
    server.signal(SIGHUP);
    server.wait_log("TLS certificate reloaded");
    assert_eq!(pki.presented(server.addr), "second");
    // A key that does not match: refused, the old certificate stays.
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&key, other.serialize_pem()).unwrap();
    server.signal(SIGHUP);
    server.wait_log("the old certificate stays");
    assert_eq!(pki.presented(server.addr), "second");
    assert!(curl(&pki, server.addr, "/", &[]).contains("200"));
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn a_supervised_reload_reads_the_new_certificate_and_refuses_a_broken_one() {
    let pki = Pki::new("tls-reload-sup");
    let (cert, key) = pki.issue("first", false);
    let mut server = serve_tls(&pki, &cert, &key, &[]);
    assert_eq!(pki.presented(server.addr), "first");
    pki.issue("second", false);
    server.signal(SIGHUP);
    server.wait_log("new worker ready");
    // The old worker may still take a connection or two until its listener closes.
    assert!(
        util::eventually(WAIT, || pki.presented(server.addr) == "second"),
        "the new worker does not present the new certificate"
    );
    std::fs::write(&cert, "not a certificate\n").unwrap();
    server.signal(SIGHUP);
    server.wait_log("reload failed");
    assert_eq!(pki.presented(server.addr), "second");
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn start_up_errors_are_one_line_and_an_expired_certificate_is_a_warning() {
    let pki = Pki::new("tls-errors");
    let (cert, key) = pki.issue("first", false);
    let missing = pki.dir.path().join("nope.pem");
    let (status, err) = run_to_end(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        missing.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        err.trim(),
        format!(
            "lameduck: cannot load TLS certificate {}: no such file or directory",
            missing.display()
        )
    );
    let other = pki.dir.path().join("other-key.pem");
    std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let (status, err) = run_to_end(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        other.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(1));
    assert!(
        err.starts_with(&format!(
            "lameduck: cannot load TLS key {}",
            other.display()
        )) && err.contains("does not match")
            && err.trim().lines().count() == 1,
        "{err}"
    );
    let (status, err) = run_to_end(&["serve", "--tls-cert", cert.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{err}");
    // Expired: it serves, and says so.
    pki.issue("expired", true);
    let mut server = serve_tls(&pki, &cert, &key, &[]);
    server.wait_log("the TLS certificate has expired");
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}
