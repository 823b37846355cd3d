//! One listener of the node with the connections it accepted: started,
//! handed a new handler or new settings, stopped and drained on its own, so
//! that a reload can add, change or remove one listener while the others
//! serve on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::net::accept::{self, Handler, Listener, Shared};

/// An accept loop, which gives its listener back when stopped.
type AcceptLoop<H> = JoinHandle<Vec<(Listener, Arc<H>)>>;

/// A listener, its accept loop and its connections.
pub(super) struct Serving<H: Handler> {
    /// Where it listens, for log lines and the advertised TLS port.
    pub addr: SocketAddr,
    /// What its connections run.
    handler: Arc<H>,
    /// Settings and limit of the loop now running; its `hard_stop` (a child
    /// of the node's) closes this listener's connections only.
    shared: Arc<Shared>,
    /// The node's token this listener stops on too; each loop gets a child.
    stop_parent: CancellationToken,
    /// Stops the loop now running.
    stop: CancellationToken,
    /// Stops it when this is dropped without [`Self::close`] (the node
    /// dropped with its runtime): the loop runs on a shard's thread, which
    /// would accept on without the node.
    _stop_when_dropped: DropGuard,
    /// The loop now running; gives the listener back when stopped. `None`
    /// once it panicked.
    accept: Option<AcceptLoop<H>>,
    /// Its connections, across loops.
    tracker: TaskTracker,
}

/// A listener's connections after it stopped accepting.
pub(super) struct Draining {
    pub tracker: TaskTracker,
    /// Closes them.
    pub hard_stop: CancellationToken,
}

/// `base`'s settings, limit and TLS with `hard_stop`.
fn with_hard_stop(base: &Shared, hard_stop: CancellationToken) -> Arc<Shared> {
    Arc::new(Shared {
        settings: base.settings.clone(),
        limit: base.limit.clone(),
        hard_stop,
        tls: base.tls.clone(),
        shards: base.shards.clone(),
    })
}

impl<H: Handler> Serving<H> {
    /// Starts accepting on `listener` with `base`'s settings and connection
    /// limit, until `stop_parent` (or [`Self::close`]).
    pub fn start(
        listener: Listener,
        addr: SocketAddr,
        handler: Arc<H>,
        base: &Shared,
        stop_parent: &CancellationToken,
    ) -> Serving<H> {
        let shared = with_hard_stop(base, base.hard_stop.child_token());
        let stop = stop_parent.child_token();
        let tracker = TaskTracker::new();
        let home = listener.home().clone();
        let accept = home.spawn(accept::serve(
            vec![(listener, handler.clone())],
            shared.clone(),
            stop.clone(),
            tracker.clone(),
        ));
        Serving {
            addr,
            handler,
            shared,
            stop_parent: stop_parent.clone(),
            _stop_when_dropped: stop.clone().drop_guard(),
            stop,
            accept: Some(accept),
            tracker,
        }
    }

    /// Moves the listener to a new loop running `handler` with `base`'s
    /// settings, for new connections; open ones carry on as they were.
    /// Clients that come meanwhile wait in the listen backlog.
    pub async fn replace(&mut self, handler: Arc<H>, base: &Shared) -> anyhow::Result<()> {
        self.stop.cancel();
        let task = self.accept.take().context("the listener is closed")?;
        let listener = task
            .await
            .context("the accept loop failed")?
            .pop()
            .map(|(l, _)| l)
            .context("the accept loop lost its listener")?;
        self.handler = handler;
        self.shared = with_hard_stop(base, self.shared.hard_stop.clone());
        self.stop = self.stop_parent.child_token();
        self._stop_when_dropped = self.stop.clone().drop_guard();
        let home = listener.home().clone();
        self.accept = Some(home.spawn(accept::serve(
            vec![(listener, self.handler.clone())],
            self.shared.clone(),
            self.stop.clone(),
            self.tracker.clone(),
        )));
        Ok(())
    }

    /// Stops accepting and closes the listener (new clients are refused);
    /// its open connections go on until drained.
    pub async fn close(self) -> (Draining, anyhow::Result<()>) {
        self.stop.cancel();
        // The listener is dropped, so closed, with what the loop returns.
        let stopped = match self.accept {
            Some(task) => task.await.map(drop).context("the accept loop failed"),
            None => Ok(()),
        };
        self.tracker.close();
        let draining = Draining {
            tracker: self.tracker,
            hard_stop: self.shared.hard_stop.clone(),
        };
        (draining, stopped)
    }
}

impl Draining {
    /// Lets the connections finish for up to `timeout`, then closes the
    /// rest.
    pub async fn drain(self, timeout: Duration, what: &str) {
        let drained = tokio::select! {
            _ = self.tracker.wait() => true,
            _ = tokio::time::sleep(timeout) => false,
            _ = self.hard_stop.cancelled() => false,
        };
        if !drained {
            if !self.tracker.is_empty() {
                warn!(
                    connections = self.tracker.len(),
                    listener = what,
                    "closing connections that did not finish in time"
                );
            }
            self.hard_stop.cancel();
            self.tracker.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read};
    use std::time::Instant;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use crate::net::shards::Shards;
    use crate::settings::ProxySettings;

    /// Says "hi" and hangs up.
    struct Hi;

    impl Handler for Hi {
        fn name(&self) -> &str {
            "hi"
        }

        async fn handle(self: Arc<Self>, mut client: TcpStream, _: SocketAddr, _: Arc<Shared>) {
            let _ = client.write_all(b"hi").await;
        }
    }

    /// A listener on its shard, started from a runtime that is not driven
    /// afterwards: the node's, as busy or as blocked as it can be.
    fn start_then_block_the_node() -> (Serving<Hi>, SocketAddr, tokio::runtime::Runtime) {
        let node = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let shards = Arc::new(Shards::new(2).unwrap());
        let base = Shared::new(
            ProxySettings::default(),
            CancellationToken::new(),
            None,
            shards.clone(),
        );
        let (serving, addr) = node.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let listener = Listener::register(listener, shards.home_for_listener()).unwrap();
            let serving = Serving::start(
                listener,
                addr,
                Arc::new(Hi),
                &base,
                &CancellationToken::new(),
            );
            (serving, addr)
        });
        (serving, addr, node)
    }

    #[test]
    fn a_listener_accepts_and_serves_without_the_nodes_runtime() {
        let (_serving, addr, _node) = start_then_block_the_node();
        for _ in 0..4 {
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut said = String::new();
            client
                .read_to_string(&mut said)
                .expect("no answer in 10 s: the accept loop waits for the node's runtime");
            assert_eq!(said, "hi");
        }
    }

    #[test]
    fn a_listener_dropped_with_its_node_stops_accepting() {
        let (serving, addr, node) = start_then_block_the_node();
        drop(serving);
        drop(node);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::net::TcpStream::connect(addr) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
                _ if Instant::now() > deadline => {
                    panic!("{addr} still accepts 10 s after its node was dropped")
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}
