//! A hello route served by actix-web, for lameduck's side-by-side benchmarks.
//!
//! Usage: `actix_hello ADDR`
//!
//! actix-web's defaults, but for the keep-alive timeout, raised from 5 s to 60 s to match
//! `lameduck serve --idle-timeout` (the idle-connection benchmarks hold connections longer
//! than 5 s). SIGTERM and SIGINT are actix's own graceful stop: stop accepting, let the
//! workers finish, give up after `shutdown_timeout` (30 s, its default).

use std::time::Duration;

use actix_web::{get, App, HttpServer, Responder};

const HELLO: &str = "Hello, world!\n";

#[get("/")]
async fn hello() -> impl Responder {
    HELLO
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    HttpServer::new(|| App::new().service(hello))
        .keep_alive(Duration::from_secs(60))
        .bind(addr)?
        .run()
        .await
}
