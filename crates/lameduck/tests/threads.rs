//! After the blocking server's `run` returns cleanly, no thread it started is alive. Alone in
//! its own test binary, so that no other test's threads are counted.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

fn threads_in_this_process() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .count()
}

#[test]
fn no_thread_left_after_run_returns() {
    let before = threads_in_this_process();
    let listener = lameduck::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = lameduck::blocking::Server::new()
        .listener(listener)
        .threads(6);
    let shutdown = server.shutdown_handle();
    let acceptor = std::thread::spawn(move || {
        server.run(|stream, _| {
            let mut w = stream.try_clone()?;
            for line in BufReader::new(stream).lines() {
                writeln!(w, "{}", line?)?;
            }
            Ok::<_, std::io::Error>(())
        })
    });
    for i in 0..10 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        writeln!(s, "hello {i}").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        assert_eq!(line, format!("hello {i}\n"));
    }
    // The acceptor thread and six workers, at least, are alive now.
    assert!(threads_in_this_process() >= before + 7);
    shutdown.trigger();
    let report = common::join_within(acceptor, "run() to return").unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.accepted, 10);
    assert_eq!(threads_in_this_process(), before, "threads outlived run()");
}
