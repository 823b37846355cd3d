//! The mesh at scale, a benchmark rather than a test (`bench/mesh-scale.sh`
//! runs it): N hosts in one namespace lab, each `mesh-amb --provide web:7000
//! --consume web:8080` with a listener on 7000, and one more host that
//! joins and leaves. Printed per N: join, graceful leave and crash removal
//! (p50/p99 over every consumer's table, from the timestamps of their log
//! lines), idle traffic on the bridge (a tcpdump of every frame on the
//! bridge itself, which sees them all: mDNS, the witness ring's beats and
//! links, ARP and neighbour discovery) and idle CPU per host; the mDNS
//! queries and responses of the join, the leave and the crash, and their
//! densest 100 ms; UDP receive-buffer drops by phase; and how many live
//! providers any table dropped during the run (must be 0).
//!
//! `MESH_HOSTS` (default `8`): comma-separated sizes; `MESH_SETTLE` and
//! `MESH_WINDOW` (seconds, default 20 and 60): the idle time before the
//! traffic window and the window itself. `MESH_AMB_BIN`: another
//! mesh-amb binary to measure (an older build, for before/after figures);
//! `MESH_LOG`: the nodes' `RUST_LOG` (default `mesh_amb=info`);
//! `MESH_ARGS`: more arguments for every node, split at spaces, with
//! `{ip}` standing for the host's address (`--advertise-addr {ip}`).
//!
//! `MESH_CONSUMERS` (default 0): the ambassador pattern's usual shape
//! instead, this many of the N nodes only consuming (`--consume web:8080`,
//! application hosts) and the others only providing, with node ids that
//! put the consumers first in the ring (`c00`, `c01`..., then `p00`...):
//! every consumer's ring successor is `p00`, and the joiner (`pz`) and the
//! node killed are providers after providers. Ids in start order make
//! each provider's successor one started after it, whose announcements it
//! heard: a provider learns the nodes started before it only from their
//! next refresh (within 80 s). Join, leave and crash are then measured
//! over the consumers' tables, the only ones there are.
//!
//! `MESH_ROLLING` (seconds, default 0, none): the blind start instead of
//! the above: the usual shape (`MESH_CONSUMERS`, 16 if unset), the
//! providers started this far apart in descending id order, so that each
//! one's successor in the ring started before it (a node that only
//! provides hears of it from its announcements alone, once it is past
//! mdns-sd's first announcements: 4 s apart or more), then every fourth
//! provider started in the last minute killed at once: how long each
//! takes to leave every consumer's table.
//!
//! `MESH_SWITCH` (seconds, default 0, none): a switch's restart instead:
//! the usual shape (`MESH_CONSUMERS`, 16 if unset), `MESH_SETTLE` (30 s
//! at least) after every table is full every host's link loses its
//! carrier at once for this long, and 20 s after it is back every fourth
//! provider is killed: how long each takes to leave every consumer's
//! table, the mDNS traffic of those 20 s, and the live providers dropped.
//! `MESH_SWITCH_WHO=watchers`: only the links of those providers' watchers
//! (each the provider before it, a node that only provides) go down.
//!
//! `MESH_LOSS` (percent, default 0, none): mDNS on a lossy link instead:
//! the usual shape, every host dropping that share of the mDNS packets it
//! receives for `MESH_WINDOW` seconds; how often the nodes that only
//! provide lost and found again a node of their ring, and the traffic.
//!
//! `MESH_FLOOD` (default 0, none): after the crash, a stranger on a host of
//! its own announces this many dead `web` instances once and goes, as in
//! `tests/hostile.rs` but seen by every node at once. Printed over the
//! `MESH_FLOOD_WINDOW` seconds after it (default 150, past the fakes'
//! 120 s records): the mDNS traffic it costs the link, each node's
//! clearings of its cache and when they came (a restart made as one, its
//! cache crowded, among them), the browses mdns-sd ended, and how long
//! the fakes stayed in the tables. `MESH_FLOOD_DEAF` (seconds, default 0): the
//! first node's host hears nothing on UDP port 5353 for this long from the
//! flood's start (its netfilter drops it), as a responder that fell
//! behind the flood. Every flood run prints how the nodes' sweeps
//! treated the live providers missing from their fresh browses (the deaf
//! one's, and any whose responder fell behind the flood).

use std::collections::{BTreeMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use mesh_amb_lab::{wait_until, FakeInstance, Host, Lab, Proc, Rogue};

mod common;

use common::mesh::*;

/// The provider's log line once its instance is announced (a "not
/// advertising" warning comes first when the local check is slow).
const ADVERTISING: &str = "local service answers: advertising";
/// Starts of the nodes are spaced by this: 64 processes launched in the
/// same instant on 2 cores would measure the machine's start-up queue, not
/// the mesh; 50 ms is far below any timer of the mesh.
const STAGGER: Duration = Duration::from_millis(50);
/// Bound on the whole mesh converging and on each measured event. A crash
/// removed only by the records' TTL takes ~120 s: this lets that be
/// measured too.
const EVENT_DEADLINE: Duration = Duration::from_secs(200);
/// How often the logs are read while waiting: the figures come from the
/// log timestamps, so this only bounds the waiting, not the precision.
const POLL: Duration = Duration::from_millis(200);

#[test]
#[ignore = "benchmark; run bench/mesh-scale.sh"]
fn scale() {
    let sizes: Vec<usize> = env_or("MESH_HOSTS", "8")
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("MESH_HOSTS: comma-separated host counts")
        })
        .collect();
    let settle = Duration::from_secs(env_or("MESH_SETTLE", "20").parse().unwrap());
    let window = Duration::from_secs(env_or("MESH_WINDOW", "60").parse().unwrap());
    let flood = Flood {
        instances: env_or("MESH_FLOOD", "0")
            .parse()
            .expect("MESH_FLOOD: a count"),
        window: Duration::from_secs(env_or("MESH_FLOOD_WINDOW", "150").parse().unwrap()),
        deaf: Duration::from_secs(
            env_or("MESH_FLOOD_DEAF", "0")
                .parse()
                .expect("MESH_FLOOD_DEAF: seconds"),
        ),
    };
    let rolling: f64 = env_or("MESH_ROLLING", "0")
        .parse()
        .expect("MESH_ROLLING: seconds");
    let switch: f64 = env_or("MESH_SWITCH", "0")
        .parse()
        .expect("MESH_SWITCH: seconds");
    let loss: f64 = env_or("MESH_LOSS", "0")
        .parse()
        .expect("MESH_LOSS: a percentage");
    for n in sizes {
        if rolling > 0.0 {
            rolling_start(n, Duration::from_secs_f64(rolling));
        } else if switch > 0.0 {
            switch_restart(n, settle, Duration::from_secs_f64(switch));
        } else if loss > 0.0 {
            lossy_mdns(n, loss, window);
        } else {
            run(n, settle, window, &flood);
        }
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// One mesh-amb node of the benchmark and its instance name.
struct Node {
    proc: Proc,
    /// Empty for a node that only consumes.
    instance: String,
    /// Whether it has a table: it consumes.
    consumes: bool,
}

/// The nodes with a table: those that consume.
fn tables(nodes: &[Node]) -> Vec<&Proc> {
    nodes
        .iter()
        .filter(|x| x.consumes)
        .map(|x| &x.proc)
        .collect()
}

/// Waits until every table holds every node's instance.
fn wait_all_in_every_table(nodes: &[Node]) {
    let all: HashSet<String> = nodes
        .iter()
        .filter(|x| !x.instance.is_empty())
        .map(|x| x.instance.clone())
        .collect();
    let full = wait_until(EVENT_DEADLINE, || {
        tables(nodes)
            .iter()
            .all(|p| table(&p.stderr()).is_superset(&all))
    });
    assert!(full, "the tables never held all {} instances", all.len());
}

/// What each node of a run does: provide and consume (the default), or
/// with `MESH_CONSUMERS` only one of them.
#[derive(Clone, Copy)]
enum Role {
    Both,
    Provider,
    Consumer,
}

/// The role and `--node-id` of node `i` (the joiner is `n`) of `n`, the
/// first `consumers` of them only consuming; `None`: a random id.
fn role(i: usize, n: usize, consumers: usize) -> (Role, Option<String>) {
    if consumers == 0 {
        return (Role::Both, None);
    }
    if i < consumers {
        return (Role::Consumer, Some(format!("c{i:02}")));
    }
    // The joiner last in the ring, whatever the count.
    let id = if i == n {
        "pz".to_owned()
    } else {
        format!("p{:02}", i - consumers)
    };
    (Role::Provider, Some(id))
}

fn run(n: usize, settle: Duration, window: Duration, flood: &Flood) {
    let consumers: usize = env_or("MESH_CONSUMERS", "0")
        .parse()
        .expect("MESH_CONSUMERS: a count");
    assert!(consumers < n, "MESH_CONSUMERS: fewer than the {n} nodes");
    assert!(
        consumers == 0 || flood.instances == 0,
        "MESH_CONSUMERS and MESH_FLOOD: one at a time"
    );
    let drops0 = softnet_drops();
    let neigh0 = neighbour_trouble();
    // The nodes, the joiner, and the stranger if there is a flood.
    let lab = Lab::new(n + 1 + usize::from(flood.instances > 0));
    let hosts = lab.hosts();
    for h in hosts {
        serve_forever(h);
    }
    let t_start = now();
    let mut nodes: Vec<Node> = Vec::new();
    for (i, h) in hosts[..n].iter().enumerate() {
        nodes.push(start_node(h, role(i, n, consumers)));
        std::thread::sleep(STAGGER);
    }
    wait_all_in_every_table(&nodes);
    let converged = now() - t_start;
    // Receive-buffer drops in all nodes' hosts at the end of each phase.
    let rcvbuf_sum = || hosts[..n].iter().map(udp_rcvbuf_errors).sum::<u64>();
    let mut rcvbuf_phases = vec![("the start", rcvbuf_sum())];

    // Idle: traffic and CPU over the window, after the settle time.
    std::thread::sleep(settle);
    let capture = Capture::start(&lab);
    let cpu0: Vec<u64> = nodes.iter().map(|x| cpu_ticks(x.proc.pid())).collect();
    rcvbuf_phases.push(("the settling", rcvbuf_sum()));
    let w0 = now();
    std::thread::sleep(window);
    let w1 = now();
    let cpu1: Vec<u64> = nodes.iter().map(|x| cpu_ticks(x.proc.pid())).collect();
    rcvbuf_phases.push(("the idle window", rcvbuf_sum()));
    let tick = clock_ticks();
    let cpu: Vec<f64> = cpu0
        .iter()
        .zip(&cpu1)
        .map(|(a, b)| (b - a) as f64 / tick / (w1 - w0) * 100.0)
        .collect();

    // Join: the new host's start -> in every table (its own too).
    let joiner_host = &hosts[n];
    let t0 = now();
    let mut phases = Vec::new();
    let mut joiner = start_node(joiner_host, role(n, n, consumers));
    let mut everyone = tables(&nodes);
    if joiner.consumes {
        everyone.push(&joiner.proc);
    }
    let join = delays(&everyone, &joiner.instance, "backend joined", t0);
    rcvbuf_phases.push(("the join", rcvbuf_sum()));
    phases.push(("the join", t0, now()));

    // Graceful leave: SIGTERM -> draining, then gone from every other table.
    let t0 = now();
    joiner.proc.signal(libc::SIGTERM);
    let others = tables(&nodes);
    let drain = delays(&others, &joiner.instance, "backend draining", t0);
    let leave = delays(&others, &joiner.instance, "backend left", t0);
    joiner.proc.wait_exit(EVENT_DEADLINE);
    rcvbuf_phases.push(("the leave", rcvbuf_sum()));
    phases.push(("the leave", t0, now()));

    // Crash: SIGKILL of the last node -> gone from every other table.
    let mut victim = nodes.pop().unwrap();
    let t0 = now();
    victim.proc.kill();
    let survivors = tables(&nodes);
    let crash = delays(&survivors, &victim.instance, "backend left", t0);
    rcvbuf_phases.push(("the crash", rcvbuf_sum()));
    phases.push(("the crash", t0, now()));

    let flooded = (flood.instances > 0).then(|| {
        let cpu0: Vec<u64> = nodes.iter().map(|x| cpu_ticks(x.proc.pid())).collect();
        let (f0, f1) = flood.run(&hosts[n + 1], &hosts[0], &nodes);
        let cpu1: Vec<u64> = nodes.iter().map(|x| cpu_ticks(x.proc.pid())).collect();
        let cpu = cpu0.iter().zip(&cpu1);
        let cpu: Vec<f64> = cpu
            .map(|(a, b)| (b - a) as f64 / tick / (f1 - f0) * 100.0)
            .collect();
        rcvbuf_phases.push(("the flood", rcvbuf_sum()));
        (f0, f1, cpu)
    });
    let frames = capture.finish();
    let traffic = Traffic::of(&frames, w0, w1);

    // A live provider must never have left any table; when one did, what
    // the node logged just before says why (a goodbye, a sweep, a trial).
    let mut dropped = 0;
    let mut before_drop: BTreeMap<String, usize> = BTreeMap::new();
    let mut drop_times: Vec<f64> = Vec::new();
    for x in &nodes {
        let log = x.proc.stderr();
        let lines: Vec<&str> = log.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let live = instance_of(l).is_some_and(|i| {
                i != victim.instance && i != joiner.instance && !i.starts_with(FLOOD_PREFIX)
            });
            if l.contains("backend left") && live {
                dropped += 1;
                drop_times.extend(stamp(l).map(|t| t - t_start));
                let prev = i.checked_sub(1).map_or("(first line)", |p| lines[p]);
                *before_drop.entry(message(prev)).or_default() += 1;
            }
        }
    }

    let shape = match consumers {
        0 => "each providing and consuming".to_owned(),
        c => format!("{c} only consuming, {} only providing", n - c),
    };
    println!("--- {n} hosts, {shape} (all tables full {converged:.1} s after the first start, starts {STAGGER:?} apart)");
    summary("join: start -> in every table", join);
    summary("graceful leave -> draining everywhere", drain);
    summary("graceful leave -> gone everywhere (2 s drain)", leave);
    summary("SIGKILL -> gone from every table", crash);
    let rate = |n: usize| n as f64 / (w1 - w0);
    println!(
        "idle traffic over {:.0} s: {:.1} packets/s in all (mDNS {:.1} multicast + {:.1} unicast, other {:.1}: ring beats and links, ARP, ND), {:.0} B/s, max {} packets in 1 s",
        w1 - w0,
        rate(traffic.packets),
        rate(traffic.mdns_multicast),
        rate(traffic.mdns - traffic.mdns_multicast),
        rate(traffic.packets - traffic.mdns),
        rate(traffic.bytes),
        traffic.max_per_second,
    );
    // Which burst overflows the responders' receive buffers, if one does.
    for (phase, p0, p1) in &phases {
        let burst = Burst::of(&frames, *p0, *p1);
        println!(
            "mDNS during {phase} ({:.1} s): {} queries and {} responses, most {} frames in 100 ms",
            p1 - p0,
            burst.queries,
            burst.responses,
            burst.most_in_100ms,
        );
    }
    let (mean, max) = mean_max(&cpu);
    println!("idle CPU per host: mean {mean:.2} %, max {max:.2} % of one core");
    if let Some((f0, f1, cpu)) = flooded {
        flood.report(&frames, &nodes, f0, f1, &cpu);
    }
    println!(
        "kernel input-queue drops during the run (all namespaces share one backlog): {}",
        softnet_drops() - drops0
    );
    let neigh: Vec<u64> = neighbour_trouble()
        .iter()
        .zip(neigh0)
        .map(|(now, before)| now.saturating_sub(before))
        .collect();
    println!(
        "neighbour tables during the run (machine-wide, sized by the lab): {} forced collections, \
         {} refusals of a full table, {} failed resolutions, {} packets dropped unresolved",
        neigh[0], neigh[1], neigh[2], neigh[3]
    );
    let rcvbuf: Vec<u64> = hosts[..n].iter().map(udp_rcvbuf_errors).collect();
    let mut before = 0;
    let by_phase: Vec<String> = rcvbuf_phases
        .iter()
        .map(|(phase, total)| {
            let during = total - std::mem::replace(&mut before, *total);
            format!("{during} in {phase}")
        })
        .collect();
    let [mdns, other] = udp_socket_drops(&hosts[..n]);
    println!(
        "UDP receive-buffer drops during the run (IPv4 and IPv6): {} over {} of {n} hosts (most {} \
         on one): {}; by the sockets still open, {mdns} on port 5353 and {other} on others (the \
         ring's probes and beats)",
        rcvbuf.iter().sum::<u64>(),
        rcvbuf.iter().filter(|&&d| d > 0).count(),
        rcvbuf.iter().max().unwrap_or(&0),
        by_phase.join(", "),
    );
    println!("live providers dropped from a table during the run: {dropped}");
    for (msg, count) in &before_drop {
        println!("  {count} after: {msg}");
    }
    if let (Some(first), Some(last)) = (
        drop_times.iter().cloned().reduce(f64::min),
        drop_times.iter().cloned().reduce(f64::max),
    ) {
        println!("  between {first:.0} s and {last:.0} s after the first start");
    }
}

/// `MESH_ROLLING` (seconds): the blind start at scale. The usual shape
/// (`MESH_CONSUMERS`, 16 if unset), the consumers started first, then the
/// providers one every `every`, in descending id order: each provider's
/// successor in the ring started before it, and a node that only provides
/// hears of such a node only from its announcements (its introduction, or
/// its next refresh, 60-80 s after its start; mdns-sd announces a new
/// node three times in its first seconds, so starts 4 s apart or more
/// make the case). Then every fourth provider started in the last minute
/// (younger than its first refresh) is killed at once, and
/// the time each takes to leave every consumer's table is printed, with
/// the live providers any table dropped.
fn rolling_start(n: usize, every: Duration) {
    let (consumers, lab) = usual_shape(n, "MESH_ROLLING");
    let hosts = lab.hosts();
    let t_start = now();
    let mut nodes: Vec<Node> = Vec::new();
    for (i, h) in hosts[..consumers].iter().enumerate() {
        nodes.push(start_node(h, role(i, n, consumers)));
        std::thread::sleep(STAGGER);
    }
    let mut started = Vec::new();
    for i in (consumers..n).rev() {
        nodes.push(start_node(&hosts[i], role(i, n, consumers)));
        started.push(now());
        std::thread::sleep(every);
    }
    wait_all_in_every_table(&nodes);
    // Providers sit in `nodes` after the consumers in start order: the
    // last id first. Every fourth of those started in the last minute
    // (younger than their first refresh), not the last one.
    let providers = n - consumers;
    let recent = (60.0 / every.as_secs_f64()) as usize;
    let first = providers.saturating_sub(recent.max(2));
    let victims: Vec<usize> = (first..providers - 1).rev().step_by(4).collect();
    let t0 = now();
    let ages: Vec<f64> = victims.iter().map(|&v| t0 - started[v]).collect();
    let at: Vec<usize> = victims.iter().map(|&v| consumers + v).collect();
    let (killed, crash, dropped) = kill_and_time(&mut nodes, &at);
    let youngest = ages.iter().cloned().fold(f64::MAX, f64::min);
    let oldest = ages.iter().cloned().fold(0.0, f64::max);
    println!(
        "--- {n} hosts, {consumers} only consuming, {providers} only providing, started {every:?} apart in descending id order (all tables full {:.1} s after the first start)",
        t0 - t_start
    );
    summary(
        &format!(
            "SIGKILL of {} providers {youngest:.0}-{oldest:.0} s old -> gone from every table",
            killed.len()
        ),
        crash,
    );
    println!("live providers dropped from a table during the run: {dropped}");
}

/// How long after the links came back the providers are killed: past a
/// node's asks of the link about what it held for it, and the grace those
/// instances have to resolve again (`removals::LINK_BACK_GRACE`, 15 s).
const AFTER_THE_SWITCH: Duration = Duration::from_secs(20);

/// `MESH_SWITCH` (seconds): the switch restarts. The usual shape
/// (`MESH_CONSUMERS`, 16 if unset), started together; `settle` after every
/// table is full (30 s at least: past the young nodes' watch), every
/// host's port on the bridge goes down at once for this long (each
/// host's link loses its carrier) and comes back; with
/// `MESH_SWITCH_WHO=watchers`, only the ports of the watchers of the
/// providers killed next. Then every fourth
/// provider is killed, [`AFTER_THE_SWITCH`] later: the time each takes to
/// leave every consumer's table says whether its watcher, a node that
/// only provides, still knew the ring. Printed too: the mDNS traffic of
/// the 20 s after the links came back, and the live providers any table
/// dropped.
fn switch_restart(n: usize, settle: Duration, outage: Duration) {
    let (consumers, lab, mut nodes) = started_together(n, "MESH_SWITCH");
    let hosts = lab.hosts();
    std::thread::sleep(settle.max(Duration::from_secs(30)));
    // Providers sit in `nodes` after the consumers, in id order: each
    // one's watcher is the provider before it.
    let victims: Vec<usize> = (consumers + 4..n).step_by(4).collect();
    let cut: Vec<&Host> = match env_or("MESH_SWITCH_WHO", "all").as_str() {
        "all" => hosts.iter().collect(),
        "watchers" => victims.iter().map(|&v| &hosts[v - 1]).collect(),
        other => panic!("MESH_SWITCH_WHO: all or watchers, not {other:?}"),
    };
    let capture = Capture::start(&lab);
    let ports = |state: &str| {
        for h in &cut {
            let bridge = &h.ifaces[0].bridge_netns;
            h.run_ok("ip", ["-n", bridge, "link", "set", &h.name, state]);
        }
    };
    ports("down");
    std::thread::sleep(outage);
    ports("up");
    let back = now();
    std::thread::sleep(AFTER_THE_SWITCH);
    let (killed, crash, dropped) = kill_and_time(&mut nodes, &victims);
    let frames = capture.finish();
    let burst = Burst::of(&frames, back, back + AFTER_THE_SWITCH.as_secs_f64());
    let who = match cut.len() {
        all if all == n => "every link".to_owned(),
        some => format!("the links of the {some} killed providers' watchers"),
    };
    println!(
        "--- {n} hosts, {consumers} only consuming, {} only providing; {who} down for {outage:?} at once",
        n - consumers
    );
    println!(
        "mDNS in the {AFTER_THE_SWITCH:?} after the links came back: {} queries and {} responses, most {} frames in 100 ms",
        burst.queries, burst.responses, burst.most_in_100ms
    );
    summary(
        &format!(
            "SIGKILL of {} providers {AFTER_THE_SWITCH:?} after -> gone from every table",
            killed.len()
        ),
        crash,
    );
    println!("live providers dropped from a table during the run: {dropped}");
}

/// `MESH_LOSS` (percent): mDNS on a lossy link (Wi-Fi's multicast, sent
/// without retries, loses a few percent). The usual shape
/// (`MESH_CONSUMERS`, 16 if unset), started together, its nodes logging
/// at debug (unless `MESH_LOG` says otherwise); once every table is full
/// and past the young nodes' watch, every host drops this share of the
/// mDNS packets it receives, each at random (netfilter's `statistic`: no
/// netem here), for `window` (`MESH_WINDOW`). Printed, from the nodes'
/// logs in that window: how often a node that only provides watched a
/// node anew (it had dropped it from its ring, its refresh missed, and
/// found it again), introduced itself to a node before it found anew,
/// asked for the records of a linked node that ran out, and kept it; the
/// mDNS traffic, and in the seconds after each ask; and the live
/// providers any table dropped.
fn lossy_mdns(n: usize, percent: f64, window: Duration) {
    let (consumers, lab, nodes) = started_together(n, "MESH_LOSS");
    let hosts = lab.hosts();
    std::thread::sleep(Duration::from_secs(35));
    let probability = format!("{}", percent / 100.0);
    for h in hosts {
        let rule = [
            "-A",
            "INPUT",
            "-p",
            "udp",
            "--dport",
            "5353",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &probability,
            "-j",
            "DROP",
        ];
        h.run_ok("iptables", rule);
        h.run_ok("ip6tables", rule);
    }
    let capture = Capture::start(&lab);
    let t0 = now();
    std::thread::sleep(window);
    let t1 = now();
    let frames = capture.finish();
    let providers: Vec<&Proc> = nodes
        .iter()
        .filter(|x| !x.consumes)
        .map(|x| &x.proc)
        .collect();
    let count = |what: &[&str]| -> usize {
        providers
            .iter()
            .map(|p| {
                p.stderr()
                    .lines()
                    .filter(|l| what.iter().all(|w| l.contains(w)))
                    .filter(|l| stamp(l).is_some_and(|t| t >= t0 && t < t1))
                    .count()
            })
            .sum()
    };
    let dropped: usize = tables(&nodes)
        .iter()
        .map(|p| {
            p.stderr()
                .lines()
                .filter(|l| l.contains("backend left"))
                .filter(|l| stamp(l).is_some_and(|t| t >= t0))
                .count()
        })
        .sum();
    let secs = t1 - t0;
    let traffic = Traffic::of(&frames, t0, t1);
    println!(
        "--- {n} hosts, {consumers} only consuming, {} only providing; {percent} % of the mDNS packets each host receives dropped for {secs:.0} s",
        n - consumers
    );
    let lines = [
        (
            "watched a node anew",
            &["witness: watching a young node's process"][..],
        ),
        (
            "introduced itself to a node before it found anew",
            &["announcing again for a new node before us"][..],
        ),
        (
            "asked for a linked node's records that ran out",
            &["their refresh missed"][..],
        ),
        (
            "kept an instance mDNS reported gone",
            &["resolved it again; it stays"][..],
        ),
    ];
    for (what, pattern) in lines {
        println!(
            "  the nodes that only provide {what}: {} times",
            count(pattern)
        );
    }
    println!(
        "  mDNS on the link: {:.2} packets/s ({} in all)",
        traffic.mdns as f64 / secs,
        traffic.mdns
    );
    // What an ask costs: the link's mDNS in the seconds after each one,
    // against its usual share of the window.
    let after_asks: Vec<usize> = providers
        .iter()
        .flat_map(|p| {
            p.stderr()
                .lines()
                .filter(|l| l.contains("their refresh missed"))
                .filter_map(stamp)
                .filter(|t| *t >= t0 && *t < t1)
                .collect::<Vec<f64>>()
        })
        .map(|t| Traffic::of(&frames, t, t + ASK_COST_WINDOW).mdns)
        .collect();
    if !after_asks.is_empty() {
        println!(
            "  mDNS in the {ASK_COST_WINDOW} s after an ask: {:.1} packets on average, {} at most (in any {ASK_COST_WINDOW} s of the window: {:.1})",
            after_asks.iter().sum::<usize>() as f64 / after_asks.len() as f64,
            after_asks.iter().max().unwrap_or(&0),
            traffic.mdns as f64 / secs * ASK_COST_WINDOW
        );
    }
    println!("live providers dropped from a table during the window: {dropped}");
}

/// Seconds after a listener's ask in which the mDNS on the link is
/// counted as its cost: the ask and its answers, asked again once.
const ASK_COST_WINDOW: f64 = 2.0;

/// The usual shape's nodes ([`usual_shape`]) started together, once every
/// table holds every instance: how many only consume, the lab and the
/// nodes.
fn started_together(n: usize, mode: &str) -> (usize, Lab, Vec<Node>) {
    let (consumers, lab) = usual_shape(n, mode);
    let mut nodes: Vec<Node> = Vec::new();
    for (i, h) in lab.hosts().iter().enumerate() {
        nodes.push(start_node(h, role(i, n, consumers)));
        std::thread::sleep(STAGGER);
    }
    wait_all_in_every_table(&nodes);
    (consumers, lab, nodes)
}

/// The lab of `n` hosts of a run in the usual shape (`MESH_CONSUMERS`,
/// 16 if unset; `mode` names the run in what it refuses), every host
/// serving: how many only consume, and the lab.
fn usual_shape(n: usize, mode: &str) -> (usize, Lab) {
    let consumers: usize = env_or("MESH_CONSUMERS", "16")
        .parse()
        .expect("MESH_CONSUMERS: a count");
    assert!(
        consumers > 0 && consumers + 8 <= n,
        "{mode}: some consumers, and at least 8 providers"
    );
    let lab = Lab::new(n);
    for h in lab.hosts() {
        serve_forever(h);
    }
    (consumers, lab)
}

/// Kills the nodes at `victims` at once and waits until each has left
/// every table: their instances, how long each took in each table (s),
/// and how many live providers any table dropped during the run.
fn kill_and_time(nodes: &mut [Node], victims: &[usize]) -> (Vec<String>, Vec<f64>, usize) {
    let t0 = now();
    for &v in victims {
        nodes[v].proc.kill();
    }
    let killed: Vec<String> = victims.iter().map(|&v| nodes[v].instance.clone()).collect();
    let readers = tables(nodes);
    let mut crash = Vec::new();
    for instance in &killed {
        crash.extend(delays(&readers, instance, "backend left", t0));
    }
    let mut dropped = 0;
    for p in &readers {
        let log = p.stderr();
        dropped += log
            .lines()
            .filter(|l| l.contains("backend left"))
            .filter(|l| instance_of(l).is_some_and(|i| !killed.iter().any(|k| k == i)))
            .count();
    }
    (killed, crash, dropped)
}

fn mean_max(v: &[f64]) -> (f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    (mean, v.iter().cloned().fold(0.0, f64::max))
}

/// The instance names of the stranger's flood.
const FLOOD_PREFIX: &str = "flood-";
/// First port of the fakes: nothing listens there, so every probe is
/// refused.
const FLOOD_PORTS: u16 = 20_000;

/// The stranger's one-off flood of dead instances (`MESH_FLOOD`).
struct Flood {
    instances: usize,
    window: Duration,
    /// How long the first node's responder hears nothing from the flood's
    /// start (`MESH_FLOOD_DEAF`).
    deaf: Duration,
}

/// The netfilter rule that makes a host's responder deaf.
const DEAF_RULE: [&str; 6] = ["INPUT", "-p", "udp", "--dport", "5353", "-j"];

impl Flood {
    /// Announces the fakes once from `stranger`, stops, and watches until
    /// the window is over, `deaf_host` hearing nothing on port 5353 for
    /// the first `self.deaf`; the window's start and end.
    fn run(&self, stranger: &Host, deaf_host: &Host, nodes: &[Node]) -> (f64, f64) {
        // IPv6 too: a responder deaf on one family still answers on the
        // other, and mdns-sd resolves an instance from either.
        let deafen = |op: &str| {
            for tables in ["iptables", "ip6tables"] {
                let rule = [op].into_iter().chain(DEAF_RULE).chain(["DROP"]);
                deaf_host.run_ok(tables, rule);
            }
        };
        let prefix = FLOOD_PREFIX.trim_end_matches('-');
        let fakes = FakeInstance::many(
            prefix,
            self.instances,
            "web",
            FLOOD_PORTS,
            stranger.ip.into(),
        );
        let t0 = now();
        if !self.deaf.is_zero() {
            deafen("-I");
        }
        let rogue = Rogue::start(stranger, fakes);
        assert!(
            wait_until(EVENT_DEADLINE, || rogue.rounds() >= 1),
            "the flood was never sent"
        );
        drop(rogue);
        // Every table took some fakes in, or the flood tells nothing; but
        // a deaf node's, which never hears them.
        let hearing = &nodes[usize::from(!self.deaf.is_zero())..];
        let joined = wait_until(EVENT_DEADLINE, || {
            hearing
                .iter()
                .all(|x| flood_lines(&x.proc, "backend joined", t0) > 0)
        });
        assert!(joined, "some nodes never took in the flood");
        if !self.deaf.is_zero() {
            let until = t0 + self.deaf.as_secs_f64();
            std::thread::sleep(Duration::from_secs_f64((until - now()).max(0.0)));
            deafen("-D");
        }
        let end = t0 + self.window.as_secs_f64();
        std::thread::sleep(Duration::from_secs_f64((end - now()).max(0.0)));
        (t0, now())
    }

    fn report(&self, frames: &[Frame], nodes: &[Node], t0: f64, t1: f64, cpu: &[f64]) {
        println!(
            "--- a stranger announces {} dead web instances once, from one host; {:.0} s after it",
            self.instances,
            t1 - t0
        );
        for (from, to) in [(0.0, 10.0), (10.0, 60.0), (60.0, t1 - t0)] {
            let (w0, w1) = (t0 + from, (t0 + to).min(t1));
            if w1 <= w0 {
                continue;
            }
            let burst = Burst::of(frames, w0, w1);
            let all = in_window(frames, w0, w1).len();
            println!(
                "flood {from:>3.0}-{:<3.0} s: mDNS {} queries and {} responses ({:.1}/s, most {} in 100 ms), other frames {} (the probes' connects among them)",
                w1 - t0,
                burst.queries,
                burst.responses,
                (burst.queries + burst.responses) as f64 / (w1 - w0),
                burst.most_in_100ms,
                all - burst.queries - burst.responses,
            );
        }
        let mut took_in = Vec::new();
        let mut gone = Vec::new();
        let mut left_in = 0;
        let mut clearings: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let (mut ended, mut ended_crowded) = (0, 0);
        let mut holds = 0;
        for x in nodes {
            let log = x.proc.stderr();
            took_in.push(flood_lines(&x.proc, "backend joined", t0) as f64);
            let fakes = table(&log)
                .iter()
                .filter(|i| i.starts_with(FLOOD_PREFIX))
                .count();
            left_in += fakes;
            if fakes == 0 {
                let last = log
                    .lines()
                    .filter(|l| l.contains("backend left"))
                    .filter(|l| instance_of(l).is_some_and(|i| i.starts_with(FLOOD_PREFIX)))
                    .filter_map(stamp)
                    .fold(t0, f64::max);
                gone.push(last - t0);
            }
            for l in log.lines().filter(|l| stamp(l).is_some_and(|t| t >= t0)) {
                if l.contains("the mDNS browse ended") {
                    ended += 1;
                    if l.contains("a clearing reopens it") {
                        ended_crowded += 1;
                    }
                } else if l.contains("fails again") {
                    holds += 1;
                } else if l.contains("clearing the cache instead") {
                    clearings
                        .entry("a restart, crowded")
                        .or_default()
                        .extend(stamp(l).map(|t| t - t0));
                } else if l.contains("clearing the cache and browsing afresh") {
                    let cause = if l.contains("failed their probes") {
                        "failing (flood)"
                    } else if l.contains("refuses") {
                        "refused"
                    } else {
                        "stale"
                    };
                    clearings
                        .entry(cause)
                        .or_default()
                        .extend(stamp(l).map(|t| t - t0));
                }
            }
        }
        let (mean, most) = mean_max(&took_in);
        println!("fakes taken into each table: mean {mean:.0}, most {most:.0}");
        summary("flood -> last fake out of a table", gone);
        println!("fakes still in a table at the end: {left_in}");
        for (cause, times) in clearings {
            let nodes_clearing = times.len();
            summary(
                &format!("flood -> clearing ({cause}), {nodes_clearing} made"),
                times,
            );
        }
        println!("floods held off: {holds}");
        println!(
            "browses ended by mdns-sd (its channel full): {ended}, {ended_crowded} of them with a crowded cache (reopened by a clearing)"
        );
        self.report_sweeps(nodes, t0);
        let (mean, max) = mean_max(cpu);
        println!(
            "CPU per host over the flood window: mean {mean:.2} %, max {max:.2} % of one core"
        );
    }

    /// How the nodes' sweeps from the flood's start `t0` on treated the
    /// live providers whose responders did not answer the fresh browses:
    /// the first node's, if deafened, and those that fell behind the
    /// flood.
    fn report_sweeps(&self, nodes: &[Node], t0: f64) {
        let live: HashSet<&str> = nodes.iter().map(|x| x.instance.as_str()).collect();
        let deaf = (!self.deaf.is_zero()).then(|| nodes[0].instance.as_str());
        // Lines with `what`, of live providers, in all logs: how many,
        // of how many providers, and how many of the deaf one's.
        let count = |what: &str| {
            let mut of = Vec::new();
            for x in nodes {
                let log = x.proc.stderr();
                let lines = log.lines().filter(|l| stamp(l).is_some_and(|t| t >= t0));
                of.extend(
                    lines
                        .filter(|l| l.contains(what))
                        .filter_map(instance_of)
                        .filter(|i| live.contains(i))
                        .map(str::to_owned),
                );
            }
            let providers = of.iter().collect::<HashSet<_>>().len();
            let deaf = of.iter().filter(|i| Some(i.as_str()) == deaf).count();
            format!(
                "{} ({providers} providers, {deaf} the deaf one's)",
                of.len()
            )
        };
        println!(
            "flood, live providers missing from the fresh browses{}: swept {}; waits on a ring link {}; kept by an answer {}, by their records {}",
            deaf.map_or(String::new(), |_| format!(
                " (the first node's port 5353 deaf for {} s from the start)",
                self.deaf.as_secs()
            )),
            count("gone from the mDNS cache"),
            count("answers on its ring link"),
            count("still answers for itself"),
            count("resolved again while"),
        );
    }
}

/// Lines of `p`'s log from `t0` on that hold `what` for one of the fakes.
fn flood_lines(p: &Proc, what: &str, t0: f64) -> usize {
    p.stderr()
        .lines()
        .filter(|l| l.contains(what))
        .filter(|l| instance_of(l).is_some_and(|i| i.starts_with(FLOOD_PREFIX)))
        .filter(|l| stamp(l).is_some_and(|t| t >= t0))
        .count()
}

/// A log line without its timestamp and fields: what kind of line it is.
fn message(line: &str) -> String {
    let text = line.split_once("Z ").map_or(line, |(_, rest)| rest);
    let cut = text.find('=').and_then(|eq| text[..eq].rfind(' '));
    text[..cut.unwrap_or(text.len())].to_owned()
}

/// A listener on 7000 in `host` that accepts (and holds) connections for
/// the whole run: the local service the provider checks.
fn serve_forever(host: &Host) {
    let l = host.enter(|| TcpListener::bind(("0.0.0.0", 7000)).expect("bind 7000"));
    std::thread::spawn(move || {
        for c in l.incoming() {
            hold(c);
        }
    });
}

/// A node providing `web`, consuming it or both (`role`), under node id
/// `id` or a random one, once it advertises (or browses).
fn start_node(host: &Host, (role, id): (Role, Option<String>)) -> Node {
    let bin = std::env::var("MESH_AMB_BIN").unwrap_or_else(|_| BIN.to_owned());
    let mut cmd = host.command(bin);
    let ip = host.ip.to_string();
    let (provides, consumes) = match role {
        Role::Both => (true, true),
        Role::Provider => (true, false),
        Role::Consumer => (false, true),
    };
    if provides {
        cmd.args(["--provide", "web:7000"]);
    }
    if consumes {
        cmd.args(["--consume", "web:8080"]);
    }
    if let Some(id) = id {
        cmd.args(["--node-id", &id]);
    }
    cmd.args(
        env_or("MESH_ARGS", "")
            .split_whitespace()
            .map(|a| a.replace("{ip}", &ip)),
    )
    .env("RUST_LOG", env_or("MESH_LOG", default_log()));
    let proc = host.spawn_cmd("mesh-amb", cmd);
    if !provides {
        wait_log(&proc, "mDNS discovery started");
        return Node {
            proc,
            instance: String::new(),
            consumes,
        };
    }
    wait_log(&proc, ADVERTISING);
    let instance = proc
        .stderr()
        .lines()
        .find(|l| l.contains(ADVERTISING))
        .and_then(instance_of)
        .expect("the instance name in the log")
        .to_owned();
    Node {
        proc,
        instance,
        consumes,
    }
}

/// The nodes' `RUST_LOG` unless `MESH_LOG` says: debug where a run counts
/// debug lines (`MESH_LOSS`).
fn default_log() -> &'static str {
    match std::env::var_os("MESH_LOSS") {
        Some(_) => "mesh_amb=debug",
        None => "mesh_amb=info",
    }
}

/// `instance=NAME` of a log line.
fn instance_of(line: &str) -> Option<&str> {
    log_field(line, "instance")
}

/// Seconds since the epoch, as f64 (log timestamps are compared with it).
fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The RFC 3339 UTC timestamp that starts a log line, in unix seconds.
fn stamp(line: &str) -> Option<f64> {
    let t = line.get(..27)?; // 2026-12-01T19:10:00.123456Z
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac: f64 = format!("0{}", t.get(19..26)?).parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) as f64 + frac)
}

/// The instances in a consumer's table, replayed from its log.
fn table(log: &str) -> HashSet<String> {
    let mut t = HashSet::new();
    for l in log.lines() {
        let Some(i) = instance_of(l) else { continue };
        if l.contains("backend joined") {
            t.insert(i.to_owned());
        } else if l.contains("backend left") {
            t.remove(i);
        }
    }
    t
}

/// For each of `procs`, seconds from `t0` to its first log line holding
/// `what` for `instance` (waits for all of them, up to the deadline).
fn delays(procs: &[&Proc], instance: &str, what: &str, t0: f64) -> Vec<f64> {
    let first = |p: &Proc| {
        p.stderr()
            .lines()
            .filter(|l| l.contains(what) && instance_of(l) == Some(instance))
            .filter_map(stamp)
            .find(|t| *t >= t0)
    };
    let deadline = std::time::Instant::now() + EVENT_DEADLINE;
    loop {
        let got: Vec<Option<f64>> = procs.iter().map(|p| first(p)).collect();
        let missing = got.iter().filter(|g| g.is_none()).count();
        if missing == 0 || std::time::Instant::now() > deadline {
            if missing > 0 {
                println!("  {what} {instance}: {missing} of {} never", procs.len());
            }
            return got.into_iter().flatten().map(|t| t - t0).collect();
        }
        std::thread::sleep(POLL);
    }
}

fn summary(name: &str, mut runs: Vec<f64>) {
    if runs.is_empty() {
        println!("{name:<48} no samples");
        return;
    }
    runs.sort_by(f64::total_cmp);
    let pick = |q: f64| runs[((runs.len() - 1) as f64 * q).round() as usize] * 1000.0;
    println!(
        "{name:<48} n {:>3}  p50 {:>7.0} ms  p99 {:>7.0} ms",
        runs.len(),
        pick(0.5),
        pick(0.99)
    );
}

/// Packets the kernel dropped because a CPU's input queue
/// (`net.core.netdev_max_backlog`) was full, since boot: every lab host's
/// veth delivers into the same per-CPU queues, and a multicast packet on
/// the bridge is one entry per host, so bursts overflow them where a real
/// LAN's separate machines would not.
fn softnet_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|d| u64::from_str_radix(d, 16).ok())
        .sum()
}

/// The columns of the kernel's neighbour-table statistics that mean
/// trouble for the lab, whose namespaces share the tables
/// (`lab/src/neigh.rs`): collections forced by a crowded table, entries
/// refused by a full one, resolutions that failed, packets dropped while
/// waiting for one.
const NEIGH_TROUBLE: [&str; 4] = [
    "forced_gc_runs",
    "table_fulls",
    "res_failed",
    "unresolved_discards",
];

/// [`NEIGH_TROUBLE`] since boot, summed over CPUs and over the ARP and
/// IPv6 neighbour-discovery tables (machine-wide, like the tables).
fn neighbour_trouble() -> [u64; 4] {
    let mut sum = [0; 4];
    for table in ["arp_cache", "ndisc_cache"] {
        let text = std::fs::read_to_string(format!("/proc/net/stat/{table}")).unwrap_or_default();
        let mut lines = text.lines();
        let Some(header) = lines.next() else { continue };
        let columns: Vec<&str> = header.split_whitespace().collect();
        for line in lines {
            let values: Vec<&str> = line.split_whitespace().collect();
            for (total, name) in sum.iter_mut().zip(NEIGH_TROUBLE) {
                *total += columns
                    .iter()
                    .position(|c| *c == name)
                    .and_then(|i| values.get(i))
                    .and_then(|v| u64::from_str_radix(v, 16).ok())
                    .unwrap_or(0);
            }
        }
    }
    sum
}

/// Datagrams the kernel dropped in `host` because a socket's receive
/// buffer was full, per namespace: a responder that falls behind loses
/// questions, unicast probes among them.
fn udp_rcvbuf_errors(host: &Host) -> u64 {
    udp_counter(host, "RcvbufErrors")
}

/// Datagrams dropped by the UDP sockets open in `hosts`, those bound to
/// mDNS's port 5353 and the others (the `drops` column of
/// `/proc/net/udp` and `udp6`; a closed socket's count is gone).
fn udp_socket_drops(hosts: &[Host]) -> [u64; 2] {
    let mut drops = [0, 0];
    for (host, table) in hosts.iter().flat_map(|h| [(h, "udp"), (h, "udp6")]) {
        let text = host.enter(|| std::fs::read_to_string(format!("/proc/thread-self/net/{table}")));
        for line in text.as_deref().unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f.get(1).and_then(|a| a.rsplit_once(':'));
            let port = port.and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            let dropped = f.last().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
            drops[usize::from(port != Some(5353))] += dropped;
        }
    }
    drops
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12) // fields 14 and 15 of stat(5)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// tcpdump of every frame on the lab's bridge, which in promiscuous mode
/// sees every frame the hosts exchange, multicast and unicast.
struct Capture {
    child: Child,
    file: PathBuf,
}

/// One captured frame.
struct Frame {
    /// Seconds since the epoch.
    ts: f64,
    /// Its length on the wire.
    len: usize,
    /// For UDP to or from port 5353, whether it is a response (the DNS
    /// header's QR bit) and whether it went to a multicast group.
    mdns: Option<Mdns>,
}

struct Mdns {
    response: bool,
    multicast: bool,
}

/// What crossed the bridge in a window.
struct Traffic {
    packets: usize,
    /// Frames to or from UDP port 5353.
    mdns: usize,
    /// Of those, the ones sent to a multicast group.
    mdns_multicast: usize,
    /// Ethernet frame bytes.
    bytes: usize,
    /// Most packets in any one-second bucket of the window.
    max_per_second: usize,
}

impl Traffic {
    fn of(frames: &[Frame], w0: f64, w1: f64) -> Traffic {
        let within = in_window(frames, w0, w1);
        let mdns = || within.iter().filter_map(|f| f.mdns.as_ref());
        Traffic {
            packets: within.len(),
            mdns: mdns().count(),
            mdns_multicast: mdns().filter(|m| m.multicast).count(),
            bytes: within.iter().map(|f| f.len).sum(),
            max_per_second: most_in(within.iter(), w0, 1.0),
        }
    }
}

/// The mDNS frames of a window, which at 64 hosts come in bursts.
struct Burst {
    queries: usize,
    responses: usize,
    most_in_100ms: usize,
}

impl Burst {
    fn of(frames: &[Frame], w0: f64, w1: f64) -> Burst {
        let within = in_window(frames, w0, w1);
        let mdns: Vec<&Mdns> = within.iter().filter_map(|f| f.mdns.as_ref()).collect();
        let responses = mdns.iter().filter(|m| m.response).count();
        Burst {
            queries: mdns.len() - responses,
            responses,
            most_in_100ms: most_in(within.iter().filter(|f| f.mdns.is_some()), w0, 0.1),
        }
    }
}

/// The frames whose time is in `[w0, w1)` (tcpdump writes them in the
/// order of their times).
fn in_window(frames: &[Frame], w0: f64, w1: f64) -> &[Frame] {
    let from = frames.partition_point(|f| f.ts < w0);
    let to = frames.partition_point(|f| f.ts < w1);
    &frames[from..to.max(from)]
}

/// Most frames in any bucket of `width` seconds counted from `w0`.
fn most_in<'a>(frames: impl Iterator<Item = &'a Frame>, w0: f64, width: f64) -> usize {
    let mut buckets: BTreeMap<u64, usize> = BTreeMap::new();
    for f in frames {
        *buckets.entry(((f.ts - w0) / width) as u64).or_default() += 1;
    }
    buckets.values().copied().max().unwrap_or(0)
}

impl Capture {
    fn start(lab: &Lab) -> Capture {
        let ns = lab
            .namespaces()
            .iter()
            .find(|n| n.ends_with("-br"))
            .expect("the lab's bridge namespace");
        let file = lab.dir().join("bridge.pcap");
        let log = lab.dir().join("tcpdump.log");
        // 96 bytes reach the DNS header's flags over IPv6 too.
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-i", "br0", "-n", "-U", "-s", "96",
            ])
            .arg("-w")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("tcpdump");
        let ready = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&log).is_ok_and(|s| s.contains("listening on"))
        });
        assert!(ready, "tcpdump did not start");
        Capture { child, file }
    }

    fn finish(mut self) -> Vec<Frame> {
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        read_pcap(&self.file)
    }
}

/// The mDNS part of an Ethernet frame carrying UDP to or from port 5353
/// (IPv4, or IPv6 without extension headers, as mDNS goes).
fn mdns_of(frame: &[u8]) -> Option<Mdns> {
    let udp_at = match frame.get(12..14) {
        Some([0x08, 0x00]) if frame.get(23) == Some(&17) => {
            14 + usize::from(frame.get(14).map_or(0, |b| b & 0x0f)) * 4
        }
        Some([0x86, 0xdd]) if frame.get(20) == Some(&17) => 54,
        _ => return None,
    };
    let port = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
    };
    if port(udp_at) != Some(5353) && port(udp_at + 2) != Some(5353) {
        return None;
    }
    Some(Mdns {
        // The DNS header follows the 8-byte UDP header; QR is the flags'
        // top bit.
        response: frame.get(udp_at + 10).is_some_and(|b| b & 0x80 != 0),
        multicast: frame.first().is_some_and(|b| b & 1 == 1),
    })
}

/// Every frame of a pcap file, in the order captured.
fn read_pcap(file: &Path) -> Vec<Frame> {
    let data = std::fs::read(file).expect("the capture");
    let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
    let mut frames = Vec::new();
    let mut at = 24; // global header
    while at + 16 <= data.len() {
        let ts = u32_at(at) as f64 + u32_at(at + 4) as f64 / 1e6;
        let (incl, orig) = (u32_at(at + 8) as usize, u32_at(at + 12) as usize);
        let frame = &data[at + 16..(at + 16 + incl).min(data.len())];
        at += 16 + incl;
        frames.push(Frame {
            ts,
            len: orig,
            mdns: mdns_of(frame),
        });
    }
    frames
}
