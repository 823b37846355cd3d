//! Running out of file descriptors is the ambassador's problem, not the
//! backend's: a burst that exhausts them must not eject a healthy backend.
//!
//! A test binary of its own, because it lowers RLIMIT_NOFILE, which holds
//! for the whole process and would break any test running beside it.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use common::{Amb, DEADLINE};
use mesh_amb::backends::balance::{Balancer, Policy};
use mesh_amb::backends::table::{BackendSpec, Health, Origin, Table, Target, Update};
use mesh_amb::backends::{Service, Source, Suspects};
use mesh_amb::net::pipeline::{connect, ConnectError};
use mesh_amb::settings::ProxySettings;

/// Clients in the burst.
const BURST: usize = 20;

/// An echo server that survives EMFILE on accept.
async fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                // Out of descriptors: the connection waits in the queue.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn echo_through(amb: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(amb).await?;
    s.write_all(b"hello").await?;
    s.shutdown().await?;
    let mut back = Vec::new();
    s.read_to_end(&mut back).await?;
    Ok(back)
}

fn get_limit() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) },
        0,
        "getrlimit"
    );
    lim
}

fn set_limit(lim: &libc::rlimit) {
    // SAFETY: setrlimit reads one rlimit through a valid pointer.
    assert_eq!(
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, lim) },
        0,
        "setrlimit"
    );
}

/// Lowers the soft descriptor limit so that exactly `free` descriptor
/// numbers stay available, and restores it on drop.
struct FdLimit(libc::rlimit);

impl FdLimit {
    fn leave_free(free: usize) -> FdLimit {
        let old = get_limit();
        let listed: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        // The listing's own descriptor is closed by now: ask each one.
        // SAFETY: F_GETFD only queries the descriptor table.
        let open: BTreeSet<i32> = listed
            .into_iter()
            .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } != -1)
            .collect();
        let mut limit = 0;
        let mut left = free;
        while left > 0 {
            if !open.contains(&limit) {
                left -= 1;
            }
            limit += 1;
        }
        set_limit(&libc::rlimit {
            rlim_cur: limit as libc::rlim_t,
            rlim_max: old.rlim_max,
        });
        FdLimit(old)
    }
}

impl Drop for FdLimit {
    fn drop(&mut self) {
        set_limit(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_does_not_eject_a_healthy_backend() {
    let backend = echo_backend().await;
    let amb = Amb::start(&[backend], ProxySettings::default()).await;
    // Client sockets exist before the limit drops: connecting them takes
    // no new descriptor, so the ambassador alone competes for the last one.
    let sockets: Vec<TcpSocket> = (0..BURST).map(|_| TcpSocket::new_v4().unwrap()).collect();

    // One free descriptor: accepting a client takes it, so its dial fails
    // with EMFILE.
    let limit = FdLimit::leave_free(1);
    let clients: Vec<_> = sockets
        .into_iter()
        .map(|sock| {
            let addr = amb.addr;
            tokio::spawn(async move {
                let mut s = sock.connect(addr).await.expect("connect to the ambassador");
                s.write_all(b"hello").await.expect("the kernel queues it");
                let _ = s.shutdown().await;
                let mut back = Vec::new();
                let _ = s.read_to_end(&mut back).await;
                // Returned, not dropped: freeing its descriptor now would
                // give the ambassador a second one.
                (back, s)
            })
        })
        .collect();
    let mut served = 0;
    let mut done = Vec::new();
    for c in clients {
        let (back, s) = tokio::time::timeout(DEADLINE, c)
            .await
            .expect("every client of the burst is answered or turned away in time")
            .unwrap();
        served += usize::from(!back.is_empty());
        done.push(s);
    }
    drop(done);
    drop(limit);
    assert!(served < BURST, "no dial ran out of descriptors");

    assert_eq!(amb.failures(), [0], "local errors are not the backend's");
    let svc = &amb.node().services()[0];
    let snap = svc.table.snapshot();
    let stats = &snap.backends[0].stats;
    assert_eq!(
        svc.table.health(stats),
        Health::Healthy,
        "still in rotation"
    );
    assert_eq!(
        echo_through(amb.addr)
            .await
            .expect("served after the burst"),
        b"hello"
    );
    assert_eq!(stats.failures.load(Ordering::Relaxed), 0);

    // A discovered backend is not handed to discovery to verify either.
    let (tx, mut suspects) = Suspects::channel(Duration::from_secs(4));
    let table = std::sync::Arc::new(Table::new(Duration::from_secs(1)));
    table.apply(Update::Upsert(BackendSpec {
        key: "redis@peer".into(),
        target: Target::Addrs(vec![backend]),
        weight: 1,
        draining: false,
        tls: false,
        origin: Origin::Static,
    }));
    let svc = Service {
        name: "redis".into(),
        table,
        balancer: Balancer::new(Policy::P2c),
        source: Source::Discovered(tx),
        listener: None,
        credentials: None,
        counters: Default::default(),
    };
    let limit = FdLimit::leave_free(0);
    let r = connect(&svc, &ProxySettings::default(), None).await;
    drop(limit);
    assert!(matches!(r, Err(ConnectError::Local(_))), "{r:?}");
    assert!(
        suspects.try_recv().is_err(),
        "no mDNS verify for our own shortage"
    );
    let snap = svc.table.snapshot();
    assert_eq!(snap.backends[0].stats.failures.load(Ordering::Relaxed), 0);

    // A provider's check of its local service cannot be made either: that
    // is an error to skip, not "the service is down" (which would withdraw
    // its advertisement).
    let limit = FdLimit::leave_free(0);
    let checked = mesh_amb::net::checks::probe(
        &Target::Addrs(vec![backend]),
        DEADLINE,
        mesh_amb::net::checks::CLOSE_GRACE,
    )
    .await;
    drop(limit);
    assert!(checked.is_err(), "{checked:?}");
}
