//! Behaviour particular to the blocking flavour: per-connection I/O timeouts and handlers
//! stuck in something that is not I/O.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Client, WAIT, join_within};

#[test]
fn read_timeout_ends_a_silent_connection() {
    let listener = lameduck::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = lameduck::blocking::Server::new()
        .listener(listener)
        .threads(1)
        .read_timeout(Some(Duration::from_millis(200)));
    let shutdown = server.shutdown_handle();
    let (errors_tx, errors) = mpsc::channel();
    let acceptor = std::thread::spawn(move || {
        server.run(move |stream, _| {
            let mut w = stream.try_clone()?;
            for line in BufReader::new(stream).lines() {
                match line {
                    Ok(line) => writeln!(w, "{line}")?,
                    Err(e) => {
                        let _ = errors_tx.send(e.kind());
                        return Err(e);
                    }
                }
            }
            Ok(())
        })
    });
    let mut silent = Client::connect(addr);
    silent.echo("one line, then silence");
    let kind = errors.recv_timeout(WAIT).expect("the read never timed out");
    assert!(matches!(
        kind,
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    silent.expect_closed();
    // The single worker is free again.
    let mut next = Client::connect(addr);
    next.echo("next");
    drop(next);
    shutdown.trigger();
    let report = join_within(acceptor, "run() to return").unwrap();
    assert_eq!(
        (report.accepted, report.completed, report.forced),
        (2, 2, 0)
    );
}

#[test]
fn a_handler_stuck_outside_io_is_reported_not_waited_for() {
    let listener = lameduck::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = lameduck::blocking::Server::new()
        .listener(listener)
        .threads(2)
        .drain_timeout(Duration::from_millis(200))
        .force_grace(Duration::from_millis(200));
    let shutdown = server.shutdown_handle();
    let (started_tx, started) = mpsc::channel();
    let acceptor = std::thread::spawn(move || {
        server.run(move |_stream, _| {
            let _ = started_tx.send(());
            // Not I/O: shutting the socket down cannot interrupt this.
            std::thread::sleep(Duration::from_secs(3));
            Ok::<_, std::io::Error>(())
        })
    });
    let _client = Client::connect(addr);
    started
        .recv_timeout(WAIT)
        .expect("the handler never started");
    let triggered = Instant::now();
    shutdown.trigger();
    let report = join_within(acceptor, "run() to return").unwrap();
    let took = triggered.elapsed();
    assert_eq!(report.stuck, 1, "{report}");
    assert!(!report.is_clean());
    assert!(
        took < Duration::from_secs(3),
        "run waited for the stuck handler ({took:?})"
    );
}

#[test]
fn write_timeout_ends_a_client_that_stops_reading() {
    let listener = lameduck::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = lameduck::blocking::Server::new()
        .listener(listener)
        .threads(1)
        .write_timeout(Some(Duration::from_millis(200)));
    let shutdown = server.shutdown_handle();
    let (errors_tx, errors) = mpsc::channel();
    let acceptor = std::thread::spawn(move || {
        server.run(move |mut stream, _| {
            let chunk = vec![b'x'; 64 * 1024];
            loop {
                if let Err(e) = stream.write_all(&chunk) {
                    let _ = errors_tx.send(e.kind());
                    return Err(e);
                }
            }
        })
    });
    // Connects and never reads: the socket buffers fill and the handler's write blocks.
    let stalled = Client::connect(addr);
    let kind = errors
        .recv_timeout(WAIT)
        .expect("the write never timed out");
    assert!(
        matches!(
            kind,
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{kind:?}"
    );
    drop(stalled);
    shutdown.trigger();
    let report = join_within(acceptor, "run() to return").unwrap();
    assert_eq!(
        (report.accepted, report.completed, report.forced),
        (1, 1, 0)
    );
}
