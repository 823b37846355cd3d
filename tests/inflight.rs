//! Load-aware policies must see dials in flight: a burst of clients to
//! backends that are slow to answer spreads, instead of landing on whichever
//! backend looked idle when the burst began.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use common::{settings, wait_for, Amb, DEADLINE};
use mesh_amb::backends::balance::Policy;

/// Clients in the burst.
const BURST: usize = 10;

/// A listener whose accept queue is full, so a connect to it hangs in
/// SYN_SENT. Returns what must stay alive.
async fn hanging() -> (tokio::net::TcpListener, SocketAddr, Vec<TcpStream>) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = sock.listen(1).unwrap();
    let addr = l.local_addr().unwrap();
    let mut fill = Vec::new();
    while let Ok(Ok(s)) =
        tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
    {
        fill.push(s);
        assert!(fill.len() < 100, "the backlog never filled");
    }
    (l, addr, fill)
}

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
    let (_a, a, _fill_a) = hanging().await;
    let (_b, b, _fill_b) = hanging().await;
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
