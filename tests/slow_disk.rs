//! A cold, slow disk holds up only the requests that need it: `lameduck serve` over a FUSE
//! file system whose reads of `slow*` files take seconds keeps answering hot (cached) files
//! at once while several slow reads are in flight, more of them than it has worker threads.
//! Also the large-file path (`sendfile` warmed in the blocking pool) and the HTTP/2 path
//! (chunks read in the pool when the page cache cannot answer), where each chunk reopens its
//! file: an `open` that waits (here, the second open of a `reopen*` file) waits in the pool
//! too, not on a worker. Needs python3 with fusepy,
//! `fusermount`, /dev/fuse and curl (`.ci/run` installs them). A local file system on a slow
//! device (ext4 on a loop device over that FUSE file system, which needs root and
//! `mkfs.ext4`) shows the `sendfile` path's page-cache check: a file cached only in part
//! is warmed in the pool, not sent from a worker that would wait for the device.
#![cfg(target_os = "linux")]

mod util;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use util::{Lameduck, TempDir, get};

/// How long each read of a `slow*` file (and the second open of a `reopen*` one) takes.
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
            .args([script, source.arg(), mount.arg()])
            .arg(DELAY.as_secs().to_string())
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

/// `lameduck serve` over the slow file system holding `files` and `hot.txt`, which has been
/// asked for once (cached from then on). Dropped in field order: the server, then the file
/// system, then its directories.
struct SlowServer {
    server: Lameduck,
    _fs: SlowFs,
    _mount: TempDir,
    _source: TempDir,
}

impl SlowServer {
    fn start(name: &str, files: &[(&str, &[u8])]) -> SlowServer {
        let source = TempDir::new(&format!("{name}-src"));
        let mount = TempDir::new(&format!("{name}-mnt"));
        source.write("marker", b"up\n");
        source.write("hot.txt", b"hot\n");
        for (name, bytes) in files {
            source.write(name, bytes);
        }
        let fs = SlowFs::mount(&source, &mount);
        let server = Lameduck::serve(&[mount.arg()], false);
        assert_eq!(get(server.addr, "/hot.txt", &[]).text(), "hot\n");
        SlowServer {
            server,
            _fs: fs,
            _mount: mount,
            _source: source,
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 % 251) as u8 + 1).collect()
}

/// How one slow request ended: what it was, its status (0: curl failed), its body, and when
/// (since the slow requests started).
type Done = (String, u16, Vec<u8>, Duration);

/// One HTTP/2 download (curl, prior knowledge) on its own thread; sends how it ended on `done`.
fn h2_download(addr: SocketAddr, path: &str, done: mpsc::Sender<Done>, started: Instant) {
    let url = format!("http://{addr}{path}");
    let what = format!("h2 {path}");
    std::thread::spawn(move || {
        let out = Command::new("curl")
            .args(["--http2-prior-knowledge", "-s", "--max-time", "60"])
            .arg(url)
            .stdin(Stdio::null())
            .output()
            .expect("curl");
        let status = if out.status.success() { 200 } else { 0 };
        let _ = done.send((what, status, out.stdout, started.elapsed()));
    });
}

/// One HTTP/1 request (`Connection: close`) on its own thread; sends how it ended on `done`.
fn h1_download(addr: SocketAddr, path: &'static str, done: mpsc::Sender<Done>, started: Instant) {
    std::thread::spawn(move || {
        let resp = get(addr, path, &[]);
        let _ = done.send((path.to_owned(), resp.status, resp.body, started.elapsed()));
    });
}

/// [`hot_answered_first`], and well within [`DELAY`]: the hot requests did not wait for
/// one slow read to end (`behind` says what they would have waited behind).
fn hot_answered_in_time(
    addr: SocketAddr,
    done: &mpsc::Receiver<Done>,
    started: Instant,
    behind: &str,
) -> Duration {
    let fast_by = hot_answered_first(addr, done, started);
    assert!(
        fast_by < DELAY - Duration::from_millis(500),
        "the hot requests took {fast_by:?}: they waited behind {behind} ({DELAY:?} each)"
    );
    fast_by
}

/// While the slow requests wait, the hot file is answered: five requests for it, every one
/// answered before any slow response arrives. Returns when they were (since `started`).
fn hot_answered_first(addr: SocketAddr, done: &mpsc::Receiver<Done>, started: Instant) -> Duration {
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        assert_eq!(get(addr, "/hot.txt", &[]).text(), "hot\n");
    }
    let fast_by = started.elapsed();
    if let Ok((what, status, body, at)) = done.try_recv() {
        panic!(
            "a slow response ({DELAY:?} on the disk: {what}, {status}, {} bytes, at {at:?}) \
             finished before the hot requests were answered: they waited behind it",
            body.len()
        );
    }
    fast_by
}

/// Waits for every slow request (60 s at most each): each one `200` with the bytes `want`
/// says for it, after the hot ones. Returns how many there were.
fn all_answered<'a>(
    done: &mpsc::Receiver<Done>,
    fast_by: Duration,
    want: impl Fn(&str) -> &'a [u8],
) -> usize {
    let mut finished = 0;
    while let Ok((what, status, body, at)) = done.recv_timeout(Duration::from_secs(60)) {
        assert_eq!(status, 200, "{what}");
        let want = want(&what);
        let differ = body.iter().zip(want.iter()).position(|(a, b)| a != b);
        assert!(
            body == want,
            "{what}: the bytes differ: {} bytes of {}, first difference at {differ:?}: {:?} for {:?}",
            body.len(),
            want.len(),
            differ.map(|i| &body[i..(i + 12).min(body.len())]),
            differ.map(|i| &want[i..(i + 12).min(want.len())])
        );
        assert!(
            at > fast_by,
            "{what} answered at {at:?}, hot ones by {fast_by:?}"
        );
        finished += 1;
    }
    finished
}

#[test]
fn hot_files_are_answered_while_slow_disk_reads_are_in_flight() {
    let small = pattern(100_000);
    let large = pattern(3 << 20);
    let slow = SlowServer::start(
        "slowdisk",
        &[("slow.bin", &small), ("slow-large.bin", &large)],
    );
    let addr = slow.server.addr;

    // More slow requests than the server has worker threads (two): small files (read whole
    // when the response is made), a large one over HTTP/1 (sendfile, warmed first).
    let (done_tx, done) = mpsc::channel();
    let started = Instant::now();
    for path in ["/slow.bin", "/slow.bin", "/slow.bin", "/slow-large.bin"] {
        h1_download(addr, path, done_tx.clone(), started);
    }
    // And the large one over HTTP/2: chunks read in the pool.
    h2_download(addr, "/slow-large.bin", done_tx.clone(), started);
    drop(done_tx);
    let fast_by = hot_answered_first(addr, &done, started);
    let finished = all_answered(&done, fast_by, |what| {
        if what.ends_with("/slow.bin") {
            &small
        } else {
            &large
        }
    });
    assert_eq!(finished, 5, "every slow request is answered");
    println!("hot requests answered by {fast_by:?}; slow ones then finished");
}

#[test]
fn http2_chunks_whose_reopen_waits_do_not_hold_the_workers() {
    // Above the cache's largest file and the whole-read limit (256 KiB): the HTTP/2 body
    // reopens its file for each chunk.
    let body = pattern(400_000);
    let paths = [
        "/reopen1.bin",
        "/reopen2.bin",
        "/reopen3.bin",
        "/reopen4.bin",
    ];
    let files: Vec<(&str, &[u8])> = paths.iter().map(|p| (&p[1..], &body[..])).collect();
    let slow = SlowServer::start("slowopen", &files);
    let addr = slow.server.addr;

    // Four downloads, twice the server's worker threads: each one's first chunk reopens its
    // file, and that open waits on the file system's daemon.
    let (done_tx, done) = mpsc::channel();
    let started = Instant::now();
    for p in paths {
        h2_download(addr, p, done_tx.clone(), started);
    }
    drop(done_tx);
    // On a worker, those opens would hold both workers until they return, and the hot
    // requests with them.
    let fast_by = hot_answered_in_time(addr, &done, started, "reopens");
    let finished = all_answered(&done, fast_by, |_| &body);
    assert_eq!(finished, paths.len(), "every download finishes");
}

/// A local file system on a slow device: ext4 in an image on the slow FUSE file system
/// (`lag.img`: every read that reaches the daemon after `armed` is written waits until
/// [`DELAY`] after it), attached read-only to a loop device and mounted. Unlike FUSE,
/// `RWF_NOWAIT` works on it, so the server's page-cache probes run as on a real disk. `None`
/// (the test is skipped, and says so) without root, a loop device or `mkfs.ext4`. Dropped:
/// unmounted, detached, then the FUSE file system and the directories.
struct SlowDevice {
    ext: TempDir,
    device: String,
    _fs: SlowFs,
    _mount: TempDir,
    source: TempDir,
}

impl SlowDevice {
    fn start(name: &str, files: &[(&str, &[u8])]) -> Option<SlowDevice> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let mkfs = Command::new("mkfs.ext4")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !root || !std::path::Path::new("/dev/loop-control").exists() || !mkfs {
            eprintln!("skipped: needs root, a loop device and mkfs.ext4 (e2fsprogs)");
            return None;
        }
        let tree = TempDir::new(&format!("{name}-tree"));
        tree.write("hot.txt", b"hot\n");
        for (name, bytes) in files {
            tree.write(name, bytes);
        }
        let source = TempDir::new(&format!("{name}-src"));
        source.write("marker", b"up\n");
        let image = source.path().join("lag.img");
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d", tree.arg()])
            .stdout(Stdio::null())
            .arg(&image)
            .arg("32M")
            .status()
            .expect("mkfs.ext4");
        assert!(made.success(), "mkfs.ext4 -d failed");
        let mount = TempDir::new(&format!("{name}-mnt"));
        let fs = SlowFs::mount(&source, &mount);
        let out = Command::new("losetup")
            .args(["-r", "-f", "--show"])
            .arg(mount.path().join("lag.img"))
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let ext = TempDir::new(&format!("{name}-ext"));
        let dev = SlowDevice {
            ext,
            device,
            _fs: fs,
            _mount: mount,
            source,
        };
        let mounted = Command::new("mount")
            .args(["-t", "ext4", "-o", "ro", &dev.device, dev.ext.arg()])
            .status()
            .expect("mount");
        assert!(mounted.success(), "mount of {} failed", dev.device);
        Some(dev)
    }

    /// From now on, reads that reach the device wait (until [`DELAY`] from now).
    fn arm(&self) {
        self.source.write("armed", b"");
    }
}

impl Drop for SlowDevice {
    fn drop(&mut self) {
        // Lazy: a server still holding a file open does not keep the device attached.
        let _ = Command::new("umount").args(["-l", self.ext.arg()]).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// How many pages of `len` bytes of `file` at `offset` are in the page cache
/// (`cachestat(2)`, Linux 6.5 and later, which reads nothing and starts no readahead);
/// `None` without it.
#[allow(unsafe_code)]
fn cached_pages(file: &std::fs::File, offset: u64, len: u64) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    let range = [offset, len];
    let mut stat = [0u64; 5];
    // SAFETY: `file` is open for the call; `range` and `stat` are live locals laid out as
    // the kernel's `struct cachestat_range` and `struct cachestat`. 451 is `cachestat` on
    // every architecture.
    let r = unsafe {
        libc::syscall(
            451,
            file.as_raw_fd(),
            range.as_ptr(),
            stat.as_mut_ptr(),
            0u32,
        )
    };
    (r == 0).then_some(stat[0])
}

/// A large file cached only in part (read in part before, or some pages evicted) is warmed
/// in the blocking pool before `sendfile`. Here each file's first 1 MiB chunk has its first
/// and its last page cached and the pages between not: were any single byte (the first, or
/// the first and the last) taken to stand for the chunk, each download's `sendfile` would
/// wait for the device on a worker thread, and with more downloads than workers the hot
/// file would wait behind them. The server counts the chunk's cached pages (`cachestat`);
/// skipped on kernels without it, where it falls back to probing the first and last byte.
#[test]
fn a_file_cached_only_in_part_is_warmed_before_sendfile() {
    let body = pattern(2 << 20);
    let paths = ["/part1.bin", "/part2.bin", "/part3.bin", "/part4.bin"];
    let files: Vec<(&str, &[u8])> = paths.iter().map(|p| (&p[1..], &body[..])).collect();
    let Some(dev) = SlowDevice::start("slowdev", &files) else {
        return;
    };
    let chunk = lameduck::http::SENDFILE_MAX_CHUNK as u64;
    let page = 4096;
    // The chunk's first and last pages into the page cache (readahead brings a little more
    // after each, nothing before); the names into the dentry cache. Checked, so that the test
    // shows what it says on any kernel.
    for p in paths {
        let file = std::fs::File::open(dev.ext.path().join(&p[1..])).unwrap();
        if cached_pages(&file, 0, page).is_none() {
            eprintln!("skipped: no cachestat(2) (Linux 6.5) here");
            return;
        }
        for at in [0, chunk - page] {
            let mut bytes = [0u8; 4096];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, at).unwrap();
            assert_eq!(&bytes[..], &body[at as usize..(at + page) as usize]);
            assert_eq!(cached_pages(&file, at, page), Some(1), "{p} at {at}");
        }
        assert_eq!(
            cached_pages(&file, chunk / 2, page),
            Some(0),
            "{p}: readahead cached the middle of the first chunk"
        );
    }
    let server = Lameduck::serve(&[dev.ext.arg()], false);
    let addr = server.addr;
    assert_eq!(get(addr, "/hot.txt", &[]).text(), "hot\n");

    dev.arm();
    let (done_tx, done) = mpsc::channel();
    let started = Instant::now();
    // More downloads than the server has worker threads: HTTP/1, sent by `sendfile`.
    for path in paths {
        h1_download(addr, path, done_tx.clone(), started);
    }
    drop(done_tx);
    let fast_by = hot_answered_in_time(addr, &done, started, "sendfile waiting for the device");
    let finished = all_answered(&done, fast_by, |_| &body);
    assert_eq!(finished, paths.len(), "every download finishes");
    drop(server);
}
