//! File-descriptor exhaustion: the server runs in a child process (this test binary, run
//! again) with `RLIMIT_NOFILE` at 64, is flooded past it, and must survive, not spin, and
//! serve again once the flood is gone. Both flavours.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Client, WAIT};

const CHILD_ENV: &str = "LAMEDUCK_EMFILE_CHILD";
const FD_LIMIT: u64 = 64;
const FLOOD: usize = 150;

/// Kills the child on every exit path.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn flood_survives(flavour: &str) {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args([
            "child_server",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, flavour)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child server");
    let mut child = ChildGuard(child);
    let pid = child.0.id();

    let (lines_tx, lines) = mpsc::channel::<String>();
    for pipe in [
        Box::new(child.0.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.0.stderr.take().unwrap()),
    ] {
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    let wait_line = |pred: &dyn Fn(&str) -> bool, what: &str| -> String {
        let end = Instant::now() + WAIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!("the child never printed {what}"),
            }
        }
    };
    // The harness prints "test child_server ... " on the same line, before the address.
    let addr_line = wait_line(&|l| l.contains("ADDR "), "its address");
    let addr: SocketAddr = addr_line[addr_line.find("ADDR ").unwrap() + 5..]
        .trim()
        .parse()
        .unwrap();

    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let mut c = Client::connect(addr);
        c.stream.write_all(b"x\n").unwrap();
        flood.push(c);
    }
    wait_line(
        &|l| l.contains("out of resources"),
        "the EMFILE back-off warning",
    );

    // While still flooded: alive, and not spinning (a spinning acceptor burns ~100 ticks/s).
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the server died under the flood"
    );
    assert!(
        used < 30,
        "the server burned {used} ticks in one second while out of descriptors"
    );

    drop(flood);
    let mut after = Client::connect(addr);
    after.echo("served again");
}

#[test]
fn tokio_flavour_survives_descriptor_exhaustion() {
    flood_survives("tokio");
}

#[test]
fn blocking_flavour_survives_descriptor_exhaustion() {
    flood_survives("blocking");
}

/// Not a test of its own: the server half of the tests above, run in a child process.
#[test]
#[ignore = "run by the descriptor-exhaustion tests in a child process"]
fn child_server() {
    let Ok(flavour) = std::env::var(CHILD_ENV) else {
        return;
    };
    lower_fd_limit(FD_LIMIT);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let listener = lameduck::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    println!("ADDR {}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    let echo = |line: &str| line.to_owned();
    match flavour.as_str() {
        "tokio" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(lameduck::Server::new().listener(listener).serve(
                move |stream, _| async move {
                    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                    let (r, mut w) = stream.into_split();
                    let mut lines = tokio::io::BufReader::new(r).lines();
                    while let Some(line) = lines.next_line().await? {
                        w.write_all(format!("{}\n", echo(&line)).as_bytes()).await?;
                    }
                    Ok::<_, std::io::Error>(())
                },
            ))
            .unwrap();
        }
        _ => {
            lameduck::blocking::Server::new()
                .listener(listener)
                .threads(FLOOD + 50)
                .run(move |stream, _| {
                    // No `try_clone`: the handler must not need a descriptor of its own, or it
                    // would fail under the very exhaustion this test creates.
                    let mut reader = BufReader::new(&stream);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line)? == 0 {
                            return Ok::<_, std::io::Error>(());
                        }
                        (&stream).write_all(format!("{}\n", echo(line.trim_end())).as_bytes())?;
                    }
                })
                .unwrap();
        }
    }
}

#[allow(unsafe_code)]
fn lower_fd_limit(limit: u64) {
    let rlim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setrlimit only reads the struct we pass, which lives across the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) };
    assert_eq!(
        rc,
        0,
        "setrlimit failed: {}",
        std::io::Error::last_os_error()
    );
}
