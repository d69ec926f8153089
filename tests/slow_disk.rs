//! A cold, slow disk holds up only the requests that need it: `lameduck serve` over a FUSE
//! file system whose reads of `slow*` files take seconds keeps answering hot (cached) files
//! at once while several slow reads are in flight, more of them than it has worker threads.
//! Also the large-file path (`sendfile` warmed in the blocking pool) and the HTTP/2 path
//! (chunks read in the pool when the page cache cannot answer), where each chunk reopens its
//! file: an `open` that waits (here, the second open of a `reopen*` file) waits in the pool
//! too, not on a worker. Needs python3 with fusepy,
//! `fusermount`, /dev/fuse and curl (`.ci/run` installs them).
#![cfg(target_os = "linux")]

mod util;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use util::{Lameduck, TempDir, get};

/// How long each read of a `slow*` file (and the second open of a `reopen*` one) takes.
const DELAY_S: &str = "3";
const DELAY: Duration = Duration::from_secs(3);

/// The FUSE file system, unmounted and stopped on drop.
struct SlowFs {
    child: Child,
    mount: PathBuf,
}

impl SlowFs {
    fn mount(source: &TempDir, mount: &TempDir) -> SlowFs {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/slowfs.py");
        let child = Command::new("python3")
            .args([script, source.arg(), mount.arg(), DELAY_S])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 for the FUSE helper");
        let fs = SlowFs {
            child,
            mount: mount.path().to_path_buf(),
        };
        // Mounted once the marker file shows through.
        assert!(
            util::eventually(Duration::from_secs(10), || fs.mount.join("marker").exists()),
            "the FUSE file system did not come up (python3 -m pip install fusepy; apt-get install fuse libfuse2)"
        );
        fs
    }
}

impl Drop for SlowFs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount")
            .args(["-u", "-z"])
            .arg(&self.mount)
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 % 251) as u8 + 1).collect()
}

#[test]
fn hot_files_are_answered_while_slow_disk_reads_are_in_flight() {
    let source = TempDir::new("slowdisk-src");
    let mount = TempDir::new("slowdisk-mnt");
    source.write("marker", b"up\n");
    source.write("hot.txt", b"hot\n");
    let small = pattern(100_000);
    let large = pattern(3 << 20);
    source.write("slow.bin", &small);
    source.write("slow-large.bin", &large);
    let _fs = SlowFs::mount(&source, &mount);
    let server = Lameduck::serve(&[mount.arg()], false);
    let addr = server.addr;
    // Hot: cached from here on.
    assert_eq!(get(addr, "/hot.txt", &[]).text(), "hot\n");

    // More slow requests than the server has worker threads (two): small files (read whole
    // when the response is made), a large one over HTTP/1 (sendfile, warmed first).
    let (done_tx, done) = mpsc::channel();
    let started = Instant::now();
    for path in ["/slow.bin", "/slow.bin", "/slow.bin", "/slow-large.bin"] {
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            let resp = get(addr, path, &[]);
            let _ = done_tx.send((path, resp.status, resp.body, started.elapsed()));
        });
    }
    // And the large one over HTTP/2 (curl, prior knowledge): chunks read in the pool.
    {
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            let out = Command::new("curl")
                .args(["--http2-prior-knowledge", "-s", "--max-time", "60"])
                .arg(format!("http://{addr}/slow-large.bin"))
                .stdin(Stdio::null())
                .output()
                .expect("curl");
            let status = if out.status.success() { 200 } else { 0 };
            let _ = done_tx.send(("h2 /slow-large.bin", status, out.stdout, started.elapsed()));
        });
    }
    drop(done_tx);
    std::thread::sleep(Duration::from_millis(300));
    // While they wait on the disk, the hot file is answered: every one of these answers
    // arrives before any slow response does.
    for _ in 0..5 {
        assert_eq!(get(addr, "/hot.txt", &[]).text(), "hot\n");
    }
    if let Ok((path, status, body, at)) = done.try_recv() {
        panic!(
            "a slow response ({DELAY_S} s on the disk: {path}, {status}, {} bytes, at \
             {at:?}) finished before the hot requests were answered: they waited behind the \
             slow reads",
            body.len()
        );
    }
    let fast_by = started.elapsed();
    let mut finished = 0;
    while let Ok((path, status, body, at)) = done.recv_timeout(Duration::from_secs(60)) {
        assert_eq!(status, 200, "{path}");
        let want = if path.ends_with("/slow.bin") {
            &small
        } else {
            &large
        };
        let differ = body.iter().zip(want.iter()).position(|(a, b)| a != b);
        assert!(
            body == *want,
            "{path}: the bytes differ: {} bytes of {}, first difference at {differ:?}: {:?} for {:?}",
            body.len(),
            want.len(),
            differ.map(|i| &body[i..(i + 12).min(body.len())]),
            differ.map(|i| &want[i..(i + 12).min(want.len())])
        );
        assert!(
            at > fast_by,
            "{path} answered at {at:?}, hot ones by {fast_by:?}"
        );
        finished += 1;
    }
    assert_eq!(finished, 5, "every slow request is answered");
    println!("hot requests answered by {fast_by:?}; slow ones then finished");
}

/// One HTTP/2 download (curl, prior knowledge) on its own thread; sends what it got on `done`.
fn h2_download(
    addr: std::net::SocketAddr,
    path: &'static str,
    done: mpsc::Sender<(&'static str, bool, Vec<u8>, Duration)>,
    started: Instant,
) {
    std::thread::spawn(move || {
        let out = Command::new("curl")
            .args(["--http2-prior-knowledge", "-s", "--max-time", "60"])
            .arg(format!("http://{addr}{path}"))
            .stdin(Stdio::null())
            .output()
            .expect("curl");
        let _ = done.send((path, out.status.success(), out.stdout, started.elapsed()));
    });
}

#[test]
fn http2_chunks_whose_reopen_waits_do_not_hold_the_workers() {
    let source = TempDir::new("slowopen-src");
    let mount = TempDir::new("slowopen-mnt");
    source.write("marker", b"up\n");
    source.write("hot.txt", b"hot\n");
    // Above the cache's largest file and the whole-read limit (256 KiB): the HTTP/2 body
    // reopens its file for each chunk.
    let body = pattern(400_000);
    let paths = [
        "/reopen1.bin",
        "/reopen2.bin",
        "/reopen3.bin",
        "/reopen4.bin",
    ];
    for p in paths {
        source.write(&p[1..], &body);
    }
    let _fs = SlowFs::mount(&source, &mount);
    let server = Lameduck::serve(&[mount.arg()], false);
    let addr = server.addr;
    assert_eq!(get(addr, "/hot.txt", &[]).text(), "hot\n");

    // Four downloads, twice the server's worker threads: each one's first chunk reopens its
    // file, and that open waits on the file system's daemon.
    let (done_tx, done) = mpsc::channel();
    let started = Instant::now();
    for p in paths {
        h2_download(addr, p, done_tx.clone(), started);
    }
    drop(done_tx);
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        assert_eq!(get(addr, "/hot.txt", &[]).text(), "hot\n");
    }
    let fast_by = started.elapsed();
    if let Ok((path, ok, got, at)) = done.try_recv() {
        panic!(
            "a download whose reopen waits {DELAY:?} ({path}, ok {ok}, {} bytes, at {at:?}) \
             finished before the hot requests were answered",
            got.len()
        );
    }
    // On a worker, those opens would hold both workers until they return, and the hot
    // requests with them.
    assert!(
        fast_by < DELAY - Duration::from_millis(500),
        "the hot requests took {fast_by:?}: they waited behind reopens ({DELAY:?} each)"
    );
    let mut finished = 0;
    while let Ok((path, ok, got, at)) = done.recv_timeout(Duration::from_secs(60)) {
        assert!(ok, "{path}: curl failed");
        assert!(
            got == body,
            "{path}: {} bytes, not the file's {}",
            got.len(),
            body.len()
        );
        assert!(
            at > fast_by,
            "{path} answered at {at:?}, hot ones by {fast_by:?}"
        );
        finished += 1;
    }
    assert_eq!(finished, paths.len(), "every download finishes");
}
