//! # lameduck
//!
//! A correct lifecycle for network servers: stop accepting the instant you are told to,
//! finish what is in flight under a deadline, bound how many connections you hold, and report
//! what happened.
//!
//! The core types work from plain threads (blocking waits) and from async tasks (futures)
//! alike, with no runtime of their own:
//!
//! - [`Shutdown`]: the lifecycle phase ([`Phase`]: `Running → LameDuck → Draining → Stopped`,
//!   or `Forced`), triggered from anywhere, with the drain deadline;
//! - [`Tracker`]: counts connections through RAII guards registered before each handler
//!   starts, so "drained" cannot race with "accepted";
//! - [`Admission`]: a permit taken *before* `accept()`, so at the limit clients wait in the
//!   kernel backlog instead of being accepted and dropped.
//!
//! On top of them, [`Server`] (feature `tokio`) is a TCP server that serves a handler per
//! connection on a task, and [`blocking::Server`] one that serves it on a bounded pool of
//! threads; [`signals`] (feature `signals`) maps SIGINT/SIGTERM (Ctrl-C on Windows) onto a
//! [`Shutdown`];
//! [`listen`] binds sockets with a high backlog and adopts inherited ones; [`notify`] speaks
//! sd_notify; [`supervisor`] (feature `supervisor`, unix) holds the sockets in a parent
//! process while workers come and go, for reloads that refuse no client.
//!
//! ```no_run
//! # #[cfg(all(feature = "tokio", feature = "signals"))]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
//!
//! let listener = lameduck::listen::bind("127.0.0.1:7878".parse()?)?;
//! let server = lameduck::Server::new()
//!     .listener(listener)
//!     .max_connections(512)
//!     .drain_timeout(Duration::from_secs(10));
//! // SIGINT/SIGTERM start a graceful shutdown; a second one forces it.
//! let _signals = lameduck::signals::install(&server.shutdown_handle())?;
//! let report = server
//!     .serve(|stream, _conn| async move {
//!         let (read, mut write) = stream.into_split();
//!         let mut lines = BufReader::new(read).lines();
//!         while let Some(line) = lines.next_line().await? {
//!             write.write_all(format!("{line}\n").as_bytes()).await?;
//!         }
//!         Ok::<_, std::io::Error>(())
//!     })
//!     .await?;
//! println!("{report}");
//! # Ok(()) }
//! ```

mod accept;
mod admission;
pub mod blocking;
mod connection;
mod error;
mod hooks;
#[cfg(feature = "http")]
pub mod http;
mod lifecycle;
pub mod listen;
#[cfg(unix)]
pub mod notify;
mod report;
#[cfg(feature = "tokio")]
mod server;
mod shutdown;
#[cfg(all(any(unix, windows), feature = "signals"))]
pub mod signals;
#[cfg(all(unix, feature = "supervisor"))]
pub mod supervisor;
#[cfg(feature = "tls")]
pub mod tls;
mod tracker;

pub use admission::{Admission, Permit};
pub use connection::Connection;
pub use error::Error;
pub use report::{EXIT_FORCED, Report};
#[cfg(feature = "tokio")]
pub use server::{IntoListener, Overload, Server};
pub use shutdown::{DEFAULT_DRAIN_TIMEOUT, Phase, Shutdown};
pub use tracker::{ConnectionGuard, Tracker};

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(all(doctest, feature = "http", feature = "signals", feature = "tls"))]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
