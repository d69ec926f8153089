//! A peer for benchmarks: a re-creation of the web server the Rust book builds in its final
//! chapter. Four worker threads fed by a channel; one request per connection, recognised by
//! its request line; the file contents are inlined. It is as the book leaves it (`unwrap()`
//! included, no shutdown), since it is what lameduck's `blocking_http` example is measured
//! against, with one change: a connection that closes before sending a request line is
//! skipped. The book's version panics there and loses the worker thread; wrk closes its
//! connections that way at the end of every run, so after one run all four workers are gone
//! and the server answers nothing.
//!
//! Usage: `book_server ADDR`

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

const HELLO: &str = "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Hello!</title></head>\n<body><h1>Hello!</h1><p>Hi from a lameduck blocking server.</p></body>\n</html>\n";
const NOT_FOUND: &str = "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Not found</title></head>\n<body><h1>Oops!</h1><p>Sorry, I don't know what you're asking for.</p></body>\n</html>\n";

type Job = Box<dyn FnOnce() + Send + 'static>;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7878".into());
    let listener = TcpListener::bind(addr).unwrap();
    let (sender, receiver) = mpsc::channel::<Job>();
    let receiver = Arc::new(Mutex::new(receiver));
    let _workers: Vec<_> = (0..4)
        .map(|_| {
            let receiver = Arc::clone(&receiver);
            thread::spawn(move || {
                loop {
                    let job = receiver.lock().unwrap().recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    for stream in listener.incoming() {
        let stream = stream.unwrap();
        sender.send(Box::new(|| handle_connection(stream))).unwrap();
    }
}

fn handle_connection(mut stream: TcpStream) {
    let reader = BufReader::new(&stream);
    let Some(Ok(request_line)) = reader.lines().next() else {
        return;
    };
    let (status, body) = match &request_line[..] {
        "GET / HTTP/1.1" => ("HTTP/1.1 200 OK", HELLO),
        "GET /sleep HTTP/1.1" => {
            thread::sleep(Duration::from_secs(5));
            ("HTTP/1.1 200 OK", HELLO)
        }
        _ => ("HTTP/1.1 404 NOT FOUND", NOT_FOUND),
    };
    let response = format!("{status}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(response.as_bytes()).unwrap();
}
