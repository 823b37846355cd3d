//! `/metrics`: the status document in Prometheus text format (0.0.4).
//!
//! The counters live in the data path's atomics; a scrape reads them once
//! into a [`Document`] and encodes that through prometheus-client's
//! [`Collector`], so nothing on the data path knows about Prometheus.
//! Every series carries `node` (the demo serves several nodes), and
//! `service` with its `listen` address where it has one (two consumes may
//! share a name); per-backend series carry `backend` (the instance name or
//! `static:HOST:PORT`) and go when the backend goes, while the per-service
//! totals stay monotonic.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::status::{BackendState, Document};

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;

/// A value of a series: counters and gauges are whole numbers here.
enum Value {
    Counter(u64),
    Gauge(u64),
}

/// Renders `doc` as Prometheus text.
pub fn render(doc: Document) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(doc)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct Scrape(Document);

/// One metric family: its rows of labels and values.
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: Vec<(Labels, Value)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        let mut series = metric.encode_family(&labels)?;
        match value {
            Value::Counter(v) => series.encode_counter::<NoLabelSet, _, u64>(&v, None)?,
            Value::Gauge(v) => series.encode_gauge(&v)?,
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let doc = &self.0;
        let nodes = || doc.nodes.iter();
        let services = || {
            nodes().flat_map(|n| {
                n.consumes.iter().map(move |c| {
                    // The listener too: two consumes may share a name.
                    let labels: Labels = vec![
                        ("node", n.node.clone()),
                        ("service", c.name.clone()),
                        ("listen", c.listen.to_string()),
                    ];
                    (labels, c)
                })
            })
        };
        let backends = || {
            services().flat_map(|(labels, c)| {
                c.backends.iter().map(move |b| {
                    let mut l = labels.clone();
                    l.push(("backend", b.key.clone()));
                    (l, b)
                })
            })
        };
        let with = |labels: &Labels, k: &'static str, v: &str| {
            let mut l = labels.clone();
            l.push((k, v.to_owned()));
            l
        };

        family(
            &mut enc,
            "mesh_amb_build_info",
            "The mesh-amb version of each node (always 1)",
            MetricType::Gauge,
            nodes()
                .map(|n| {
                    let l = vec![("node", n.node.clone()), ("version", n.version.to_owned())];
                    (l, Value::Gauge(1))
                })
                .collect(),
        )?;
        family(
            &mut enc,
            "mesh_amb_client_connections",
            "Client connections accepted by a consumed service",
            MetricType::Counter,
            services()
                .map(|(l, c)| (l, Value::Counter(c.clients)))
                .collect(),
        )?;
        family(
            &mut enc,
            "mesh_amb_client_connections_turned_away",
            "Client connections closed without a backend (none known, none answered, login refused, the client left first)",
            MetricType::Counter,
            services()
                .map(|(l, c)| (l, Value::Counter(c.turned_away)))
                .collect(),
        )?;
        family(
            &mut enc,
            "mesh_amb_clients_waiting_for_backend",
            "Clients held now for a backend (--wait-for-backend)",
            MetricType::Gauge,
            services()
                .map(|(l, c)| (l, Value::Gauge(c.waiting)))
                .collect(),
        )?;
        family(
            &mut enc,
            "mesh_amb_active_connections",
            "Connections open to a service's backends now, dials in flight included",
            MetricType::Gauge,
            services()
                .map(|(l, c)| (l, Value::Gauge(c.active)))
                .collect(),
        )?;
        family(
            &mut enc,
            "mesh_amb_bytes",
            "Bytes proxied, counted as they move; direction out is client to backend",
            MetricType::Counter,
            services()
                .flat_map(|(l, c)| {
                    [
                        (with(&l, "direction", "in"), Value::Counter(c.bytes_in)),
                        (with(&l, "direction", "out"), Value::Counter(c.bytes_out)),
                    ]
                })
                .collect(),
        )?;
        family(
            &mut enc,
            "mesh_amb_ejections",
            "Backend ejections started after a failed connect or check",
            MetricType::Counter,
            services()
                .map(|(l, c)| (l, Value::Counter(c.ejections)))
                .collect(),
        )?;
        family(
            &mut enc,
            "mesh_amb_backends",
            "Backends of a consumed service by state",
            MetricType::Gauge,
            services()
                .flat_map(|(l, c)| {
                    [
                        BackendState::Up,
                        BackendState::Unproven,
                        BackendState::Draining,
                        BackendState::Ejected,
                        BackendState::Down,
                    ]
                    .map(|s| {
                        let n = c.backends.iter().filter(|b| b.state == s).count();
                        (with(&l, "state", s.as_str()), Value::Gauge(n as u64))
                    })
                })
                .collect(),
        )?;
        // The histogram by hand: a family of one series per service.
        {
            let mut metric = enc.encode_descriptor(
                "mesh_amb_connect_latency_seconds",
                "Time from a client's accept to a ready backend (dial, TLS, login, failed candidates, a wait for a backend)",
                None,
                MetricType::Histogram,
            )?;
            for (l, c) in services() {
                let h = &c.connect_latency;
                // The encoder sums the buckets itself.
                let mut below = 0;
                let counts: Vec<(f64, u64)> = h
                    .buckets
                    .iter()
                    .map(|&(le, cumulative)| {
                        (le, cumulative - std::mem::replace(&mut below, cumulative))
                    })
                    .collect();
                metric
                    .encode_family(&l)?
                    .encode_histogram::<NoLabelSet>(h.sum, h.count, &counts, None)?;
            }
        }
        family(
            &mut enc,
            "mesh_amb_backend_connections",
            "Connections proxied to a backend since it appeared",
            MetricType::Counter,
            backends()
                .map(|(l, b)| (l, Value::Counter(b.total)))
                .collect(),
        )?;
        family(
            &mut enc,
            "mesh_amb_backend_active_connections",
            "Connections open to a backend now",
            MetricType::Gauge,
            backends()
                .map(|(l, b)| (l, Value::Gauge(b.active)))
                .collect(),
        )?;
        family(
            &mut enc,
            "mesh_amb_backend_connect_failures",
            "Failed connections to a backend since it appeared: connects (dial, TLS, login), and connections it closed at once unanswered",
            MetricType::Counter,
            backends()
                .map(|(l, b)| (l, Value::Counter(b.failures)))
                .collect(),
        )?;
        family(
            &mut enc,
            "mesh_amb_backend_bytes",
            "Bytes proxied through a backend since it appeared, counted as they move",
            MetricType::Counter,
            backends()
                .flat_map(|(l, b)| {
                    [
                        (with(&l, "direction", "in"), Value::Counter(b.bytes_in)),
                        (with(&l, "direction", "out"), Value::Counter(b.bytes_out)),
                    ]
                })
                .collect(),
        )?;
        family(
            &mut enc,
            "mesh_amb_backend_up",
            "1 while a backend takes new connections (up), 0 while unproven, draining, ejected or down",
            MetricType::Gauge,
            backends()
                .map(|(l, b)| (l, Value::Gauge((b.state == BackendState::Up).into())))
                .collect(),
        )?;
        family(
            &mut enc,
            "mesh_amb_provide_local_up",
            "1 while a provided service's local check passes",
            MetricType::Gauge,
            nodes()
                .flat_map(|n| {
                    n.provides.iter().map(|p| {
                        let l = vec![("node", n.node.clone()), ("service", p.name.clone())];
                        (l, Value::Gauge((p.local == "up").into()))
                    })
                })
                .collect(),
        )?;
        family(
            &mut enc,
            "mesh_amb_provide_advertised",
            "1 while a provided service is advertised (up or draining)",
            MetricType::Gauge,
            nodes()
                .flat_map(|n| {
                    n.provides.iter().map(|p| {
                        let l = vec![
                            ("node", n.node.clone()),
                            ("service", p.name.clone()),
                            ("state", p.advertised.to_owned()),
                        ];
                        let on = matches!(p.advertised, "up" | "draining");
                        (l, Value::Gauge(on.into()))
                    })
                })
                .collect(),
        )?;
        family(
            &mut enc,
            "mesh_amb_discovery_events",
            "mDNS browse events received from the link",
            MetricType::Counter,
            nodes()
                .map(|n| {
                    (
                        vec![("node", n.node.clone())],
                        Value::Counter(n.discovery_events),
                    )
                })
                .collect(),
        )?;
        let discovery = |probes: bool| {
            nodes()
                .flat_map(move |n| {
                    n.discovery
                        .iter()
                        .filter(move |(name, _)| name.starts_with("probes_") == probes)
                        .map(|(name, v)| {
                            let (key, value) = match name.strip_prefix("probes_") {
                                Some(result) => ("result", result),
                                None => ("reason", *name),
                            };
                            let l = vec![("node", n.node.clone()), (key, value.to_owned())];
                            (l, Value::Counter(*v))
                        })
                })
                .collect()
        };
        family(
            &mut enc,
            "mesh_amb_discovery_ignored",
            "Advertisements refused or dropped, by reason (instances ignored)",
            MetricType::Counter,
            discovery(false),
        )?;
        family(
            &mut enc,
            "mesh_amb_discovery_probes",
            "Probation probes of newly discovered backends, by result",
            MetricType::Counter,
            discovery(true),
        )?;
        Ok(())
    }
}
