//! mesh-amb as a library inside a program of your own: a node built from a
//! `Config` in code, with one static consume in front of an echo server
//! that this program starts itself; one round trip through it, then a
//! graceful stop.
//!
//! ```text
//! cargo run --example embed
//! ```
//!
//! Every address is on 127.0.0.1 with a port the kernel picks, and the
//! consume has a static backend, so the node starts no mDNS at all: nothing
//! leaves the host. A discovered consume (no backends) or a provide would
//! join the mesh of the local network instead.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use anyhow::{ensure, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use mesh_amb::settings::Config;
use mesh_amb::spec::{BackendAddr, ConsumeSpec, Host};
use mesh_amb::Node;

const MESSAGE: &[u8] = b"hello through the ambassador\n";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backend = start_echo_server().await?;
    println!("echo server on {backend}");

    // The caller binds the listener (port 0 here) and hands it over, so the
    // address is known before the node starts and nothing can take it.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let ambassador = listener.local_addr()?;
    let config = Config {
        bind: ambassador.ip(),
        consumes: vec![ConsumeSpec {
            name: "echo".to_owned(),
            port: ambassador.port(),
            backends: vec![BackendAddr {
                host: Host::Ip(backend.ip()),
                port: backend.port(),
                weight: 1,
                tls: false,
            }],
        }],
        provides: Vec::new(),
        proxy: Default::default(),
        discovery: Default::default(),
        security: Default::default(),
    };
    let node = Node::start(config, vec![listener]).context("cannot start the node")?;
    println!("ambassador for 'echo' on {ambassador}, forwarding to {backend}");

    let reply = round_trip(ambassador).await?;
    ensure!(reply == MESSAGE, "the echo came back as {reply:?}");
    println!(
        "sent {} bytes through {ambassador}, got them back: {:?}",
        MESSAGE.len(),
        String::from_utf8_lossy(&reply).trim_end()
    );

    // Kept past `join`, which takes the node: the counters are final once
    // every connection has drained.
    let service = node.services()[0].clone();
    node.shutdown().begin();
    node.join().await?;
    for b in &service.table.snapshot().backends {
        println!(
            "backend {}: {} connection(s), {} bytes out, {} bytes in, {} failed connect(s)",
            b.spec.target,
            b.stats.total.load(Ordering::Relaxed),
            b.stats.bytes_out.load(Ordering::Relaxed),
            b.stats.bytes_in.load(Ordering::Relaxed),
            b.stats.failures.load(Ordering::Relaxed),
        );
    }
    println!("node stopped");
    Ok(())
}

/// Sends [`MESSAGE`], half-closes, and reads until the ambassador closes:
/// the half-close travels through the proxy to the echo server, whose end
/// of the echo travels back.
async fn round_trip(addr: SocketAddr) -> anyhow::Result<Vec<u8>> {
    let mut client = TcpStream::connect(addr).await?;
    client.write_all(MESSAGE).await?;
    client.shutdown().await?;
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).await?;
    Ok(reply)
}

/// A server on 127.0.0.1 that sends back whatever each connection sends,
/// until that connection half-closes.
async fn start_echo_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rx, mut tx) = conn.split();
                let _ = tokio::io::copy(&mut rx, &mut tx).await;
            });
        }
    });
    Ok(addr)
}
