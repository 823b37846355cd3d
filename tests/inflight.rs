//! Load-aware policies must see dials in flight: a burst of clients to
//! backends that are slow to answer spreads, instead of landing on whichever
//! backend looked idle when the burst began.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;

use common::{settings, wait_for, Amb, DEADLINE};
use mesh_amb::backends::balance::Policy;
use mesh_amb_lab::SilentListener;

/// Clients in the burst.
const BURST: usize = 10;

/// Sockets of this host in SYN_SENT towards `port` on 127.0.0.1: dials to
/// a hanging backend that are in flight.
fn dials_in_flight(port: u16) -> usize {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2] == want && f[3] == "02"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_slow_backends_is_spread_by_least_conn() {
    // Connects to them hang in SYN_SENT, where they can be counted.
    let (silent_a, silent_b) = (SilentListener::new(), SilentListener::new());
    let (a, b) = (silent_a.addr(), silent_b.addr());
    let mut proxy = settings(Policy::LeastConn);
    proxy.connect_timeout = Duration::from_secs(60);
    proxy.connect_attempts = 1;
    let amb = Amb::start(&[a, b], proxy).await;
    // `a` already carries a connection, so `b` is the first choice.
    amb.node().services()[0].table.snapshot().backends[0]
        .stats
        .active
        .fetch_add(1, Ordering::Relaxed);

    let mut clients = Vec::new();
    for _ in 0..BURST {
        clients.push(TcpStream::connect(amb.addr).await.unwrap());
    }
    wait_for(DEADLINE, "every client's dial to be in flight", || async {
        dials_in_flight(a.port()) + dials_in_flight(b.port()) >= BURST
    })
    .await;
    let (to_a, to_b) = (dials_in_flight(a.port()), dials_in_flight(b.port()));
    assert_eq!(to_a + to_b, BURST);
    // Least-connections levels the two: `a` gets about (BURST - 1) / 2.
    assert!(
        to_a >= BURST / 2 - 2 && to_b >= BURST / 2 - 1,
        "dials to a: {to_a}, to b: {to_b}"
    );
}
