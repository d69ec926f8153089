//! The behavioural suite, run against both server flavours over real sockets on
//! `127.0.0.1:0`. Each test body takes the flavour; the macro at the bottom instantiates it
//! once per flavour.

mod common;

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Client, Flavour, Options, start, wait_until};
use lameduck::Phase;

fn in_flight_session_completes_after_trigger(flavour: Flavour) {
    let mut server = start(flavour, Options::default());
    let mut client = server.connect();
    client.echo("before");
    server.shutdown.trigger();
    server.wait_phase(Phase::Draining);
    client.echo("after the trigger");
    client.send("drain?");
    assert_eq!(client.read_line(), "true");
    drop(client);
    let report = server.report();
    assert_eq!(
        (report.accepted, report.completed, report.forced),
        (1, 1, 0)
    );
    assert!(report.is_clean());
    assert_eq!(server.shutdown.phase(), Phase::Stopped);
}

fn connect_after_trigger_is_refused(flavour: Flavour) {
    let mut server = start(flavour, Options::default());
    let mut held = server.connect();
    held.echo("hold");
    server.shutdown.trigger();
    server.wait_phase(Phase::Draining);
    // The server is still draining `held`, and new clients are refused at once.
    let err = Client::try_connect(server.addr)
        .err()
        .expect("connect after the trigger succeeded");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(server.shutdown.phase(), Phase::Draining);
    held.echo("still served");
    drop(held);
    assert!(server.report().is_clean());
}

fn limit_holds_under_five_times_the_clients(flavour: Flavour) {
    const N: usize = 4;
    let mut server = start(
        flavour,
        Options {
            max_connections: N,
            ..Options::default()
        },
    );
    let addr = server.addr;
    let clients: Vec<_> = (0..5 * N)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.echo(&format!("client {i}"));
                // Stay a little, so that connections overlap.
                std::thread::sleep(Duration::from_millis(30));
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client was not served");
    }
    assert!(
        server.probe.max.load(Ordering::SeqCst) <= N,
        "more than {N} handled at once"
    );
    server.shutdown.trigger();
    let report = server.report();
    assert_eq!(
        (report.accepted, report.completed),
        (5 * N as u64, 5 * N as u64)
    );
}

fn at_the_limit_clients_wait_in_the_backlog(flavour: Flavour) {
    const N: usize = 2;
    let mut server = start(
        flavour,
        Options {
            max_connections: N,
            ..Options::default()
        },
    );
    let mut held: Vec<Client> = (0..N)
        .map(|i| {
            let mut c = server.connect();
            c.echo(&format!("held {i}"));
            c
        })
        .collect();
    // The kernel completes this handshake, but the server does not accept it.
    let mut waiting = server.connect();
    waiting.send("waiting");
    waiting.expect_silence(Duration::from_millis(300));
    assert_eq!(
        server.tracker.accepted(),
        N as u64,
        "accepted past the limit"
    );
    // A slot frees; the waiting client is accepted and served, not dropped.
    drop(held.pop());
    assert_eq!(waiting.read_line(), "waiting");
    assert_eq!(server.tracker.accepted(), N as u64 + 1);
    drop(held);
    drop(waiting);
    server.shutdown.trigger();
    assert!(server.report().is_clean());
}

fn deadline_closes_what_remains(flavour: Flavour) {
    let mut server = start(
        flavour,
        Options {
            drain_timeout: Duration::from_millis(300),
            ..Options::default()
        },
    );
    // One client idles in the middle of a session: the handler is blocked reading.
    let mut idle = server.connect();
    idle.echo("hello");
    let mut finishing = server.connect();
    finishing.echo("hello");
    server.wait_accepted(2);
    server.shutdown.trigger();
    drop(finishing);
    idle.expect_closed();
    let report = server.report();
    assert_eq!(
        (report.accepted, report.completed, report.forced),
        (2, 1, 1)
    );
    assert!(!report.is_clean());
    assert!(report.drain_duration >= Duration::from_millis(300));
    let phases: Vec<Phase> = server
        .shutdown
        .history()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        phases,
        [
            Phase::Running,
            Phase::LameDuck,
            Phase::Draining,
            Phase::Forced,
            Phase::Stopped
        ]
    );
}

fn second_trigger_forces_at_once(flavour: Flavour) {
    let mut server = start(
        flavour,
        Options {
            drain_timeout: Duration::from_secs(3600),
            ..Options::default()
        },
    );
    let mut held = server.connect();
    held.echo("hello");
    server.shutdown.trigger();
    server.wait_phase(Phase::Draining);
    let forced_at = Instant::now();
    assert_eq!(server.shutdown.trigger(), Phase::Forced);
    held.expect_closed();
    let report = server.report();
    assert!(
        forced_at.elapsed() < common::WAIT,
        "the second trigger did not force"
    );
    assert_eq!((report.completed, report.forced), (0, 1));
}

fn lame_duck_keeps_serving_then_drains(flavour: Flavour) {
    let mut server = start(
        flavour,
        Options {
            lame_duck: Duration::from_millis(500),
            ..Options::default()
        },
    );
    server.shutdown.trigger();
    assert_eq!(server.shutdown.phase(), Phase::LameDuck);
    assert!(!server.shutdown.is_running());
    // Still accepting and serving during the lame-duck period.
    let mut during = server.connect();
    during.echo("during lame duck");
    during.send("drain?");
    assert_eq!(during.read_line(), "false");
    server.wait_phase(Phase::Draining);
    let err = Client::try_connect(server.addr)
        .err()
        .expect("accepting after lame duck");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    during.echo("still served while draining");
    drop(during);
    let report = server.report();
    assert_eq!(
        (report.accepted, report.completed, report.forced),
        (1, 1, 0)
    );
    let history = server.shutdown.history();
    let entered = |phase| {
        history
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, at)| *at)
            .unwrap()
    };
    assert!(entered(Phase::Draining) - entered(Phase::LameDuck) >= Duration::from_millis(500));
}

fn phases_are_observed_in_order(flavour: Flavour) {
    let mut server = start(flavour, Options::default());
    assert_eq!(server.shutdown.phase(), Phase::Running);
    let mut c = server.connect();
    c.echo("x");
    server.shutdown.trigger();
    drop(c);
    server.report();
    let phases: Vec<Phase> = server
        .shutdown
        .history()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        phases,
        [
            Phase::Running,
            Phase::LameDuck,
            Phase::Draining,
            Phase::Stopped
        ]
    );
}

fn handler_learns_that_the_server_drains(flavour: Flavour) {
    let mut server = start(flavour, Options::default());
    let mut session = server.connect();
    session.echo("hi");
    session.send("wait-drain");
    session.expect_silence(Duration::from_millis(100));
    server.shutdown.trigger();
    assert_eq!(session.read_line(), "bye");
    session.expect_closed();
    let report = server.report();
    assert_eq!((report.completed, report.forced), (1, 0));
}

fn panicking_handler_does_not_stop_the_server(flavour: Flavour) {
    let mut server = start(
        flavour,
        Options {
            max_connections: 1,
            ..Options::default()
        },
    );
    let mut bad = server.connect();
    bad.send("panic");
    bad.expect_closed();
    // With a single slot (one worker, for the blocking flavour), the next client is served
    // only if the slot and its worker survived the panic.
    let mut good = server.connect();
    good.echo("still alive");
    drop(good);
    wait_until(|| server.tracker.active() == 0, "connections to end");
    server.shutdown.trigger();
    let report = server.report();
    assert_eq!((report.accepted, report.panicked), (2, 1));
}

macro_rules! both_flavours {
    ($($name:ident),* $(,)?) => {
        mod tokio_flavour {
            $( #[test] fn $name() { super::$name(super::Flavour::Tokio) } )*
        }
        mod blocking_flavour {
            $( #[test] fn $name() { super::$name(super::Flavour::Blocking) } )*
        }
    };
}

both_flavours!(
    in_flight_session_completes_after_trigger,
    connect_after_trigger_is_refused,
    limit_holds_under_five_times_the_clients,
    at_the_limit_clients_wait_in_the_backlog,
    deadline_closes_what_remains,
    second_trigger_forces_at_once,
    lame_duck_keeps_serving_then_drains,
    phases_are_observed_in_order,
    handler_learns_that_the_server_drains,
    panicking_handler_does_not_stop_the_server,
);
