//! The client half of `bench/idle-memory.sh`: RSS growth per idle connection
//! of running proxies. Ignored in normal test runs; the script starts the
//! proxies and passes them in the environment:
//!
//! - `IDLE_MEMORY_TARGETS`: space-separated `name=host:port/pid`
//! - `IDLE_MEMORY_CONNS`: client connections per proxy (default 2000)
//! - `IDLE_MEMORY_VALUE`: bytes moved each way per connection (default 61440)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use common::{command, wait_for, Reply, DEADLINE};

/// Resident set size of `pid` and its descendants, in KiB: nginx holds its
/// connections in worker processes under the master.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proxy status");
    let own: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    let children: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|kids| {
            kids.split_whitespace()
                .filter_map(|k| k.parse().ok())
                .collect::<Vec<u32>>()
        })
        .map(rss_kib)
        .sum();
    own + children
}

/// One client: SET a `len`-byte value (client to proxy to Redis), GET it
/// back (the other way), and keep the connection open.
async fn client(addr: SocketAddr, i: usize, len: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let key = format!("idle-memory:{i}");
    let value = vec![b'a' + (i % 26) as u8; len];
    let set = command(&mut s, &[b"SET", key.as_bytes(), &value]).await;
    assert_eq!(set.expect("SET"), Reply::Simple("OK".into()));
    match command(&mut s, &[b"GET", key.as_bytes()])
        .await
        .expect("GET")
    {
        Reply::Bulk(Some(v)) => assert_eq!(v.len(), len),
        other => panic!("GET answered {other:?}"),
    }
    s
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().expect(name))
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run bench/idle-memory.sh"]
async fn idle_memory() {
    let targets = std::env::var("IDLE_MEMORY_TARGETS").expect("IDLE_MEMORY_TARGETS");
    let conns = env_or("IDLE_MEMORY_CONNS", 2000);
    let len = env_or("IDLE_MEMORY_VALUE", 61440);
    println!(
        "{:<10} {:>12} {:>12} {:>16}",
        "proxy", "RSS before", "RSS idle", "per connection"
    );
    for target in targets.split_whitespace() {
        let (name, rest) = target.split_once('=').expect("name=addr/pid");
        let (addr, pid) = rest.split_once('/').expect("addr/pid");
        let addr: SocketAddr = addr.parse().expect("address");
        let pid: u32 = pid.parse().expect("pid");

        let before = rss_kib(pid);
        // 50 at a time: the old binary's listen backlog is 128.
        let mut open = Vec::with_capacity(conns);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..conns {
            if set.len() >= 50 {
                open.push(set.join_next().await.unwrap().expect("client"));
            }
            set.spawn(tokio::time::timeout(DEADLINE, client(addr, i, len)));
        }
        while let Some(r) = set.join_next().await {
            open.push(r.expect("client"));
        }
        let open: Vec<TcpStream> = open
            .into_iter()
            .map(|r| r.expect("client within the deadline"))
            .collect();
        // Every reply arrived, so the proxy is idle; let its threads settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = rss_kib(pid);
        println!(
            "{name:<10} {:>9} KiB {:>9} KiB {:>12.1} KiB",
            before,
            idle,
            idle.saturating_sub(before) as f64 / conns as f64
        );
        drop(open);
        // Let the proxy close its side before the next one is measured.
        wait_for(DEADLINE, "the proxy to answer again", || async move {
            TcpStream::connect(addr).await.is_ok()
        })
        .await;
    }
}
