//! Where client connections run: one single-threaded runtime per core, each
//! connection pinned to one of them for its whole life.
//!
//! A connection's two sockets wake its task hundreds of thousands of times a
//! second under a pipelined load. On tokio's work-stealing runtime each of
//! those wakes may hand the task to another worker and unpark it: measured
//! side by side (`bench/dataplane.sh`, pipelined `-P 16`), the whole process
//! on one `current_thread` runtime moved 8-17 % more requests per test than
//! on two work-stealing workers (bench/dataplane-notes.md). A shard per core
//! keeps that and still uses every core. The accept loops run on the
//! shards too, the listeners spread over them in turn, and hand each new
//! connection to the shard with the fewest: one that stays on the
//! accepting shard starts without waking another thread. Run on the node's
//! runtime instead, every connection woke two threads, the loop's and its
//! shard's (measured under `redis-benchmark -k 0`: 1.0 context switch per
//! connection against 0.45, and about a tenth more CPU per connection,
//! bench/dataplane-notes.md).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The shards of a process; dropping it stops them (once their connections
/// are gone: the node drains before it drops its shards).
pub struct Shards {
    shards: Vec<Shard>,
    /// Where the search for the least busy shard starts, so that ties
    /// rotate instead of piling on the first shard.
    next: AtomicUsize,
    /// The shard the next listener's accept loop runs on.
    next_listener: AtomicUsize,
    stop: CancellationToken,
}

/// At most one shard per this many descriptors of the process's limit.
const DESCRIPTORS_PER_SHARD_AT_MOST: u64 = 64;

/// Shards for `cores` under a descriptor limit of `fd_limit`: one per
/// core, but their descriptors never take more than a sixteenth of the
/// limit. Under a tight limit a descriptor is worth more as half a
/// connection than as a quarter of a thread: 64 cores under `ulimit -n 256`
/// would otherwise leave no connection at all.
pub fn shard_count(cores: usize, fd_limit: u64) -> usize {
    let afford = usize::try_from(fd_limit / DESCRIPTORS_PER_SHARD_AT_MOST).unwrap_or(usize::MAX);
    cores.min(afford).max(1)
}

/// Descriptors each shard's runtime holds: its epoll instance and a clone,
/// the eventfd that wakes it, and its end of tokio's signal pipe (counted
/// in /proc/PID/fd).
const DESCRIPTORS_PER_SHARD: u64 = 4;

struct Shard {
    handle: Handle,
    /// Connections running on it now.
    live: Arc<AtomicUsize>,
}

/// Counts a connection on its shard for as long as it lives.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A task with its [`Live`] count. A struct, not an `async` block
    /// awaiting the task: such a block keeps the task it captured and the
    /// one it awaits in separate slots, and a connection's task would take
    /// its size twice (measured: 1.7 KiB more per idle connection).
    struct Counted<F> {
        #[pin]
        task: F,
        live: Live,
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().task.poll(cx)
    }
}

impl Shards {
    /// One shard per core this process may run on, as far as `fd_limit`
    /// allows: see [`shard_count`].
    pub fn per_core(fd_limit: u64) -> anyhow::Result<Shards> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Shards::new(shard_count(cores, fd_limit))
    }

    /// `count` shards (at least one), each a thread running its own runtime.
    pub fn new(count: usize) -> anyhow::Result<Shards> {
        let stop = CancellationToken::new();
        let shards = (0..count.max(1))
            .map(|i| Shard::start(i, stop.clone()))
            .collect::<anyhow::Result<_>>()
            // Already started ones see the token cancelled and end.
            .inspect_err(|_| stop.cancel())?;
        Ok(Shards {
            shards,
            next: AtomicUsize::new(0),
            next_listener: AtomicUsize::new(0),
            stop,
        })
    }

    /// The runtime of the shard a new listener's accept loop runs on: the
    /// shards in turn, so that the work of accepting spreads over them as
    /// the listeners do.
    pub fn home_for_listener(&self) -> Handle {
        let i = self.next_listener.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        self.shards[i].handle.clone()
    }

    /// Descriptors the shards hold, all the process's life.
    pub fn descriptors(&self) -> u64 {
        self.shards.len() as u64 * DESCRIPTORS_PER_SHARD
    }

    /// Runs `task` on the shard with the fewest connections, tracked by
    /// `tracker`. Its first poll is on the shard: sockets it registers
    /// there are polled by that shard.
    pub fn spawn(&self, tracker: &TaskTracker, task: impl Future<Output = ()> + Send + 'static) {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.shards.len();
        let shard = (0..n)
            .map(|k| &self.shards[(start + k) % n])
            .min_by_key(|s| s.live.load(Ordering::Relaxed))
            .expect("at least one shard");
        shard.live.fetch_add(1, Ordering::Relaxed);
        let live = Live(shard.live.clone());
        tracker.spawn_on(Counted { task, live }, &shard.handle);
    }
}

impl Shard {
    fn start(index: usize, stop: CancellationToken) -> anyhow::Result<Shard> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a connection runtime")?;
        let handle = runtime.handle().clone();
        // Detached: it ends by itself once `stop` is cancelled, and the
        // runtime is dropped on its own thread, outside any async context.
        std::thread::Builder::new()
            .name(format!("amb-shard-{index}"))
            .spawn(move || runtime.block_on(stop.cancelled()))
            .context("cannot start a connection thread")?;
        Ok(Shard {
            handle,
            live: Arc::new(AtomicUsize::new(0)),
        })
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Spawns a task that reports its thread's name and lives until the
    /// token of that thread in `release` is cancelled.
    fn hold(
        shards: &Shards,
        tracker: &TaskTracker,
        release: &Arc<HashMap<String, CancellationToken>>,
        tx: &mpsc::Sender<String>,
    ) {
        let (release, tx) = (release.clone(), tx.clone());
        shards.spawn(tracker, async move {
            let thread = std::thread::current().name().unwrap().to_owned();
            tx.send(thread.clone()).unwrap();
            release[&thread].cancelled().await;
        });
    }

    fn count(rx: &mpsc::Receiver<String>, n: usize) -> HashMap<String, usize> {
        let mut per_thread = HashMap::new();
        for _ in 0..n {
            let name = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            *per_thread.entry(name).or_insert(0) += 1;
        }
        per_thread
    }

    #[test]
    fn a_tight_descriptor_limit_caps_the_shards() {
        assert_eq!(shard_count(2, 256), 2);
        assert_eq!(shard_count(64, 256), 4);
        assert_eq!(shard_count(64, 1 << 20), 64);
        assert_eq!(shard_count(8, 10), 1);
        assert_eq!(shard_count(0, 1 << 20), 1);
    }

    #[test]
    fn connections_go_to_the_least_busy_shard_and_are_tracked() {
        let shards = Shards::new(3).unwrap();
        let tracker = TaskTracker::new();
        let names: Vec<String> = (0..3).map(|i| format!("amb-shard-{i}")).collect();
        let release: Arc<HashMap<_, _>> = Arc::new(
            names
                .iter()
                .map(|n| (n.clone(), CancellationToken::new()))
                .collect(),
        );
        let (tx, rx) = mpsc::channel();
        for _ in 0..6 {
            hold(&shards, &tracker, &release, &tx);
        }
        let spread = count(&rx, 6);
        let even: HashMap<_, _> = names.iter().map(|n| (n.clone(), 2)).collect();
        assert_eq!(spread, even, "two live connections on each shard");
        assert_eq!(tracker.len(), 6);

        // Shard 1's connections end: the next two go there, where a plain
        // rotation would put one on shard 0.
        release[&names[1]].cancel();
        let deadline = Instant::now() + Duration::from_secs(10);
        while shards.shards[1].live.load(Ordering::Relaxed) > 0 {
            assert!(Instant::now() < deadline, "shard 1 never counted out");
            std::thread::yield_now();
        }
        hold(&shards, &tracker, &release, &tx);
        hold(&shards, &tracker, &release, &tx);
        assert_eq!(count(&rx, 2), HashMap::from([(names[1].clone(), 2)]));

        release.values().for_each(CancellationToken::cancel);
        tracker.close();
        let waited = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await
            });
        assert!(waited.is_ok(), "the tracker saw every task end");
        let live: Vec<usize> = shards
            .shards
            .iter()
            .map(|s| s.live.load(Ordering::Relaxed))
            .collect();
        assert_eq!(live, [0, 0, 0], "each shard counted its connections out");
    }
}
