//! Load-balancing policies over a [`Snapshot`].
//!
//! A policy does not pick one backend; it orders all of them, so the
//! connection handler can fail over down the list without asking again.
//! Healthy, non-draining, proven backends come first in policy order; then
//! healthy ones still on probation (see [`crate::backends::table`]), so a
//! fresh mesh, where every backend is new, works at once while a flood of
//! never-answering records next to proven backends takes no client; then
//! ejected ones, soonest-to-return first (better to try a recently failed
//! backend than to refuse a client, as Envoy's panic threshold does);
//! draining ones come last, used only when nothing else is left.
//!
//! [`Balancer::candidates`] also keeps a proven backend among the attempts
//! a client makes whenever one exists, even ejected: a client behind a
//! briefly failing real provider and hundreds of untested records tries
//! the real one too.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backends::table::{Backend, Health, Snapshot, Table};

/// How new connections are spread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// In turn, each backend `weight` times per cycle.
    RoundRobin,
    /// Uniformly at random, in proportion to weight.
    Random,
    /// Fewest active connections (dials in flight included) per unit of
    /// weight; ties (every backend idle) in proportion to weight.
    LeastConn,
    /// Power of two choices: sample two backends by weight, take the one with
    /// fewer active connections per unit of weight. Nearly as good as
    /// least-connections without herding every new client onto the one
    /// backend that just came back empty.
    #[default]
    P2c,
}

impl Policy {
    /// Every policy, in the order a user is shown them.
    pub const ALL: [Policy; 4] = [
        Policy::RoundRobin,
        Policy::Random,
        Policy::LeastConn,
        Policy::P2c,
    ];

    /// The name a user types, as in a config file.
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::Random => "random",
            Policy::LeastConn => "least-conn",
            Policy::P2c => "p2c",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = crate::value::ValueError;
    fn from_str(s: &str) -> Result<Policy, Self::Err> {
        let s = s.trim();
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Policy::ALL.iter().map(|p| p.name()).collect();
                crate::value::ValueError::new(format!("use one of {}", names.join(", ")))
            })
    }
}

/// A policy plus the little state it needs.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    /// Round-robin position, in units of weight.
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(policy: Policy) -> Balancer {
        Balancer {
            policy,
            next: AtomicUsize::new(0),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Every backend of the snapshot, best candidate first.
    pub fn order(&self, table: &Table, snap: &Snapshot) -> Vec<Arc<Backend>> {
        let mut ready = Vec::with_capacity(snap.backends.len());
        let mut probation = Vec::new();
        let mut ejected: Vec<(Duration, Arc<Backend>)> = Vec::new();
        let mut draining = Vec::new();
        for b in &snap.backends {
            let health = table.health(&b.stats);
            match (b.spec.draining, health) {
                (true, _) => draining.push((health != Health::Healthy, b.clone())),
                (false, Health::Healthy) if table.is_proven(&b.stats) => ready.push(b.clone()),
                (false, Health::Healthy) => probation.push(b.clone()),
                (false, Health::Ejected { remaining }) => ejected.push((remaining, b.clone())),
            }
        }
        let mut out = self.order_ready(ready);
        out.extend(self.order_ready(probation));
        ejected.sort_by_key(|(remaining, _)| *remaining);
        out.extend(ejected.into_iter().map(|(_, b)| b));
        draining.sort_by_key(|(ejected, _)| *ejected);
        out.extend(draining.into_iter().map(|(_, b)| b));
        out
    }

    /// The first `attempts` of [`Balancer::order`], the last of them
    /// replaced by the best proven backend when none of them is proven and
    /// one exists.
    pub fn candidates(&self, table: &Table, snap: &Snapshot, attempts: usize) -> Vec<Arc<Backend>> {
        let mut order = self.order(table, snap);
        let attempts = attempts.max(1);
        let proven = |b: &Arc<Backend>| table.is_proven(&b.stats);
        if order.len() > attempts && !order[..attempts].iter().any(proven) {
            if let Some(i) = order[attempts..].iter().position(proven) {
                order.swap(attempts - 1, attempts + i);
            }
        }
        order.truncate(attempts);
        order
    }

    fn order_ready(&self, mut ready: Vec<Arc<Backend>>) -> Vec<Arc<Backend>> {
        if ready.len() < 2 {
            return ready;
        }
        match self.policy {
            Policy::RoundRobin => {
                let total: usize = ready.iter().map(|b| weight(b) as usize).sum();
                let mut pos = self.next.fetch_add(1, Ordering::Relaxed) % total;
                let start = ready
                    .iter()
                    .position(|b| {
                        let w = weight(b) as usize;
                        if pos < w {
                            true
                        } else {
                            pos -= w;
                            false
                        }
                    })
                    .unwrap_or(0);
                ready.rotate_left(start);
                ready
            }
            Policy::Random => weighted_shuffle(ready),
            Policy::LeastConn => {
                // Ties (every backend idle, as with one client at a time)
                // in a weighted random order: plain shuffled, they ignored
                // the weights (a backend of weight 3 beside one of weight 1
                // took 113 of 200 sequential clients).
                let ready = weighted_shuffle(ready);
                // The loads are read once: live counters change under a
                // sort, and a comparison that is not a total order may make
                // the sort panic. Stable: ties keep the weighted order.
                let mut loaded: Vec<(u64, u64, Arc<Backend>)> = ready
                    .into_iter()
                    .map(|b| {
                        (
                            b.stats.active.load(Ordering::Relaxed),
                            u64::from(weight(&b)),
                            b,
                        )
                    })
                    .collect();
                // active/weight compared without dividing.
                loaded.sort_by(|(la, wa, _), (lb, wb, _)| (la * wb).cmp(&(lb * wa)));
                loaded.into_iter().map(|(_, _, b)| b).collect()
            }
            Policy::P2c => {
                let mut order = weighted_shuffle(ready);
                if load_cmp(&order[1], &order[0]).is_lt() {
                    order.swap(0, 1);
                }
                order
            }
        }
    }
}

fn weight(b: &Backend) -> u32 {
    b.spec.weight.max(1)
}

/// Compares active connections per unit of weight without dividing.
fn load_cmp(a: &Backend, b: &Backend) -> std::cmp::Ordering {
    let la = a.stats.active.load(Ordering::Relaxed) * u64::from(weight(b));
    let lb = b.stats.active.load(Ordering::Relaxed) * u64::from(weight(a));
    la.cmp(&lb)
}

/// A random permutation where each backend's chance of coming before the
/// others is proportional to its weight (Efraimidis-Spirakis: sort by
/// u^(1/w), here as ln(u)/w to stay precise).
fn weighted_shuffle(backends: Vec<Arc<Backend>>) -> Vec<Arc<Backend>> {
    let mut keyed: Vec<(f64, Arc<Backend>)> = backends
        .into_iter()
        .map(|b| {
            let u = 1.0 - fastrand::f64(); // (0, 1]
            (u.ln() / f64::from(weight(&b)), b)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().map(|(_, b)| b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::table::{BackendSpec, Origin, Target, Update};

    fn table(weights: &[u32]) -> Table {
        let t = Table::new(Duration::from_secs(1));
        for (i, w) in weights.iter().enumerate() {
            t.apply(Update::Upsert(BackendSpec {
                key: format!("b{i}"),
                target: Target::Name(format!("b{i}"), 1),
                weight: *w,
                draining: false,
                tls: false,
                origin: Origin::Static,
            }));
        }
        t
    }

    fn index(b: &Backend) -> usize {
        b.spec.key[1..].parse().unwrap()
    }

    /// Share of first picks per backend over `n` orderings.
    fn first_picks(policy: Policy, t: &Table, n: usize) -> Vec<usize> {
        fastrand::seed(7);
        let bal = Balancer::new(policy);
        let snap = t.snapshot();
        let mut counts = vec![0; snap.backends.len()];
        for _ in 0..n {
            let order = bal.order(t, &snap);
            assert_eq!(
                order.len(),
                snap.backends.len(),
                "every backend listed once"
            );
            counts[index(&order[0])] += 1;
        }
        counts
    }

    fn assert_shares(counts: &[usize], weights: &[u32], tolerance: f64) {
        let n: usize = counts.iter().sum();
        let wsum: u32 = weights.iter().sum();
        for (c, w) in counts.iter().zip(weights) {
            let want = n as f64 * f64::from(*w) / f64::from(wsum);
            let off = (*c as f64 - want).abs() / want;
            assert!(
                off <= tolerance,
                "counts {counts:?} weights {weights:?}: off by {off:.3}"
            );
        }
    }

    #[test]
    fn round_robin_is_exact_and_honours_weights() {
        for weights in [&[1, 1, 1][..], &[1, 2, 3], &[5], &[1, 1000]] {
            let t = table(weights);
            let cycle: u32 = weights.iter().sum();
            let counts = first_picks(Policy::RoundRobin, &t, cycle as usize * 10);
            let want: Vec<usize> = weights.iter().map(|w| *w as usize * 10).collect();
            assert_eq!(counts, want, "weights {weights:?}");
        }
    }

    #[test]
    fn every_random_policy_follows_weights_when_idle() {
        for policy in [Policy::Random, Policy::P2c, Policy::LeastConn] {
            for weights in [&[1, 1, 1][..], &[1, 3], &[2, 1, 1]] {
                let t = table(weights);
                let counts = first_picks(policy, &t, 40_000);
                assert_shares(&counts, weights, 0.05);
            }
        }
    }

    #[test]
    fn load_aware_policies_avoid_the_busy_backend() {
        let t = table(&[1, 1]);
        t.snapshot().backends[0]
            .stats
            .active
            .store(10, Ordering::Relaxed);
        for policy in [Policy::P2c, Policy::LeastConn] {
            assert_eq!(first_picks(policy, &t, 1000), [0, 1000], "{policy:?}");
        }
        // Per unit of weight: 10 active on weight 10 beats 2 active on weight 1.
        let t = table(&[10, 1]);
        let snap = t.snapshot();
        snap.backends[0].stats.active.store(10, Ordering::Relaxed);
        snap.backends[1].stats.active.store(2, Ordering::Relaxed);
        assert_eq!(first_picks(Policy::LeastConn, &t, 100), [100, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_then_draining_go_last() {
        let t = table(&[1, 1, 1, 1]);
        let snap = t.snapshot();
        t.report_failure(&snap.backends[0].stats, &"refused");
        tokio::time::advance(Duration::from_millis(100)).await;
        t.report_failure(&snap.backends[1].stats, &"refused");
        let mut spec = snap.backends[2].spec.clone();
        spec.draining = true;
        t.apply(Update::Upsert(spec));
        let snap = t.snapshot();
        for policy in [
            Policy::RoundRobin,
            Policy::Random,
            Policy::LeastConn,
            Policy::P2c,
        ] {
            let order = Balancer::new(policy).order(&t, &snap);
            let idx: Vec<usize> = order.iter().map(|b| index(b)).collect();
            assert_eq!(idx, [3, 0, 1, 2], "{policy:?}");
        }
    }

    /// A table on probation: backends `0..n`, those in `proven` answered.
    fn probation_table(n: usize, proven: &[usize]) -> Table {
        let t = Table::with_probation(Duration::from_secs(1));
        for i in 0..n {
            t.apply(Update::Upsert(BackendSpec {
                key: format!("b{i}"),
                target: Target::Name(format!("b{i}"), 1),
                weight: 1,
                draining: false,
                tls: false,
                origin: Origin::Static,
            }));
        }
        for &i in proven {
            t.report_success(&t.snapshot().backends[i].stats);
        }
        t
    }

    #[test]
    fn proven_backends_come_before_those_on_probation() {
        let t = probation_table(500, &[250]);
        for policy in Policy::ALL {
            let b = Balancer::new(policy);
            for _ in 0..100 {
                let c = b.candidates(&t, &t.snapshot(), 3);
                assert_eq!(c.len(), 3);
                assert_eq!(index(&c[0]), 250, "{policy:?}: the proven one first");
            }
        }
    }

    #[test]
    fn a_fresh_mesh_spreads_over_backends_on_probation() {
        let t = probation_table(3, &[]);
        let counts = first_picks(Policy::RoundRobin, &t, 300);
        assert_eq!(counts, [100, 100, 100]);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_include_a_proven_backend_even_ejected() {
        let t = probation_table(500, &[7]);
        let snap = t.snapshot();
        t.report_failure(&snap.backends[7].stats, &"refused");
        for policy in Policy::ALL {
            let c = Balancer::new(policy).candidates(&t, &snap, 3);
            let idx: Vec<usize> = c.iter().map(|b| index(b)).collect();
            assert_eq!(idx.len(), 3);
            assert_eq!(idx[2], 7, "{policy:?}: the last attempt is the proven one");
            assert!(!idx[..2].contains(&7));
        }
        // Nothing proven at all: plain order, no swap to make.
        let fresh = probation_table(5, &[]);
        assert_eq!(
            Balancer::new(Policy::P2c)
                .candidates(&fresh, &fresh.snapshot(), 3)
                .len(),
            3
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probation_is_ejected_long_behind_everything_ready() {
        let t = probation_table(3, &[0]);
        let snap = t.snapshot();
        t.report_failure(&snap.backends[1].stats, &"refused");
        // b1 failed without ever answering: after b2, still on probation.
        let order = Balancer::new(Policy::RoundRobin).order(&t, &snap);
        let idx: Vec<usize> = order.iter().map(|b| index(b)).collect();
        assert_eq!(idx, [0, 2, 1]);
        tokio::time::advance(Duration::from_secs(2)).await;
        let order = Balancer::new(Policy::RoundRobin).order(&t, &snap);
        assert_eq!(
            index(&order[2]),
            1,
            "still out after the ordinary eject time"
        );
    }

    #[test]
    fn policy_names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(p.to_string().parse::<Policy>(), Ok(p));
            // serde (the config file) spells it the same way.
            let v = toml::Value::try_from(p).unwrap();
            assert_eq!(v.as_str(), Some(p.name()));
        }
        let e = "fastest".parse::<Policy>().unwrap_err().to_string();
        assert_eq!(e, "use one of round-robin, random, least-conn, p2c");
    }
}
