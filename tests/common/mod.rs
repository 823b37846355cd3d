//! Fixtures shared by the integration tests: real `redis-server` processes,
//! an in-process ambassador on an ephemeral port, a minimal RESP client, and
//! waiting on conditions with deadlines.
#![allow(dead_code)] // each test crate uses a different subset

pub mod browser;
pub mod load;
pub mod mesh;
pub mod prometheus;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use mesh_amb::backends::balance::Policy;
use mesh_amb::settings::{Config, ProxySettings};
use mesh_amb::spec::{BackendAddr, ConsumeSpec, Host};
use mesh_amb::{Node, NodeHandle, Shutdown};

/// Generous bound for anything that should take milliseconds, so a loaded
/// CI machine does not turn into a flaky test.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `cond` until it holds or `limit` passes.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while !cond().await {
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port that was free a moment ago. Only for programs that cannot bind
/// port 0 themselves (redis-server, the mesh-amb binary); callers retry if
/// someone else takes it in between.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A real `redis-server` on 127.0.0.1, killed by PID on drop.
pub struct Redis {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Redis {
    pub async fn start() -> Redis {
        Redis::start_with(&[]).await
    }

    /// A server with these arguments too (`--requirepass`, `--user`).
    pub async fn start_with(extra: &[&str]) -> Redis {
        for _ in 0..5 {
            if let Some(r) = Self::try_start(free_port(), extra).await {
                return r;
            }
        }
        panic!("could not start redis-server (is it installed? the test script installs it)");
    }

    async fn try_start(port: u16, extra: &[&str]) -> Option<Redis> {
        let dir =
            std::env::temp_dir().join(format!("mesh-amb-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let mut redis = Redis {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            if let Ok(Some(_)) = redis.child.try_wait() {
                return None; // lost the port race; the caller retries
            }
            if answers(redis.addr).await {
                return Some(redis);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts it again on its port (after [`Redis::kill`]: a restart in
    /// place).
    pub async fn restart(&mut self) {
        self.kill();
        let extra: [&str; 0] = [];
        for _ in 0..5 {
            if let Some(r) = Self::try_start(self.addr.port(), &extra).await {
                *self = r;
                return;
            }
        }
        panic!("redis-server did not start again on {}", self.addr);
    }

    /// SIGKILL, like a crash; returns once the process is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Connections this server has accepted so far (INFO stats).
    pub async fn connections_received(&self) -> u64 {
        let mut s = TcpStream::connect(self.addr)
            .await
            .expect("connect to redis");
        let info = match command(&mut s, &[b"INFO", b"stats"]).await.expect("INFO") {
            Reply::Bulk(Some(b)) => String::from_utf8(b).expect("utf8"),
            other => panic!("INFO answered {other:?}"),
        };
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .expect("total_connections_received in INFO")
            .trim()
            .parse()
            .expect("a number")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An ambassador running in this process on 127.0.0.1:0.
pub struct Amb {
    pub addr: SocketAddr,
    pub node: Option<NodeHandle>,
    pub shutdown: Shutdown,
}

pub fn settings(policy: Policy) -> ProxySettings {
    ProxySettings {
        policy,
        ..ProxySettings::default()
    }
}

impl Amb {
    pub async fn start(backends: &[SocketAddr], proxy: ProxySettings) -> Amb {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let config = Amb::config(addr, backends, proxy);
        let node = Node::start(config, vec![listener]).expect("start the node");
        Amb {
            addr,
            shutdown: node.shutdown().clone(),
            node: Some(node),
        }
    }

    /// One consume named "redis" on `addr`, to static `backends`.
    pub fn config(addr: SocketAddr, backends: &[SocketAddr], proxy: ProxySettings) -> Config {
        Config {
            bind: addr.ip(),
            consumes: vec![ConsumeSpec {
                name: "redis".into(),
                port: addr.port(),
                backends: backends
                    .iter()
                    .map(|a| BackendAddr {
                        host: Host::Ip(a.ip()),
                        port: a.port(),
                        weight: 1,
                        tls: false,
                    })
                    .collect(),
            }],
            provides: vec![],
            proxy,
            discovery: Default::default(),
            security: Default::default(),
        }
    }

    /// Waits for the node to stop, within the test deadline.
    pub async fn join(&mut self) -> anyhow::Result<()> {
        let node = self.node.take().expect("joined once");
        tokio::time::timeout(DEADLINE, node.join())
            .await
            .expect("the node stopped in time")
    }

    /// The node, while it runs.
    pub fn node(&self) -> &NodeHandle {
        self.node.as_ref().expect("the node was joined")
    }

    /// Failed connections recorded against each backend, in config order.
    pub fn failures(&self) -> Vec<u64> {
        self.node().services()[0]
            .table
            .snapshot()
            .backends
            .iter()
            .map(|b| b.stats.failures.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Amb {
    fn drop(&mut self) {
        self.shutdown.force();
    }
}

pub use mesh_amb::resp::{command, Value as Reply};

fn bad_data(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// One new connection, one PING, expect PONG.
pub async fn ping(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    match command(&mut s, &[b"PING"]).await? {
        Reply::Simple(p) if p == "PONG" => Ok(()),
        other => Err(bad_data(format!("PING answered {other:?}"))),
    }
}

/// Whether a server at `addr` answers a PING at all (PONG, or an error
/// such as NOAUTH from a server that wants a password).
pub async fn answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    command(&mut s, &[b"PING"]).await.is_ok()
}

/// Deterministic, incompressible-looking bytes.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A directory of this test's files, removed on drop (also when the test
/// fails).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        // Unique per process and per test: tests run in parallel.
        let dir = std::env::temp_dir().join(format!(
            "mesh-amb-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Where `file` would be in the directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    /// A new owner-only file `name` holding `body`.
    pub fn secret(&self, name: &str, body: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        mesh_amb::secret::write_new_secret_file(&path, body.as_ref()).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
