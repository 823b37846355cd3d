//! mesh-amb: a masterless mesh of ambassadors.
//!
//! An ambassador is a local TCP proxy that stands in for a remote service.
//! Data flows one way through these layers:
//!
//! ```text
//!  discovery (mDNS)          settings (static backends)
//!        │ Update::{Upsert, Remove}     │
//!        ▼                              ▼
//!  backends: Service { table, balancer, source, credentials }   snapshots, lock-free reads
//!        │ snapshot ─> Balancer::order ─> candidates
//!        ▼
//!  data plane: accept ─> connect (dial ─> [tls] ─> [login]) ─> copy
//!        │ connect failure ─> table ejection ─> Service::suspect
//!        ▼                                            │
//!  node: starts and stops all of it        discovery verifies the record
//!        │ status::Observer (reads the live counters)
//!        ▼
//!  admin: stats page, /metrics, /api/v1/status
//!        ▼
//!  the mesh-amb binary: command line, config file, signals, demo
//! ```
//!
//! - [`value`]: typed setting values (durations, counts, node ids), each
//!   parsed in one place.
//! - [`spec`]: the `--consume`/`--provide` specs and Docker-link variables.
//! - [`settings`]: the validated configuration, its defaults and typed values
//!   (the command line and config file live in the `mesh-amb` binary).
//! - [`backends`]: a consumed service: its live table with passive health
//!   ([`backends::table`]), the balancing policies ([`backends::balance`]),
//!   and where its backends come from ([`backends::Source`]).
//! - [`discovery`]: the mDNS mesh: the wire contract, advertising local
//!   services while their check passes, browsing into the tables (what the
//!   link sends is checked, capped and counted; new backends are probed
//!   before they take clients).
//! - [`net`]: the data plane: the accept loops and each connection's
//!   pipeline of stages (both on the per-core runtimes, [`net::shards`],
//!   not the node's), dialing ([`net::dial`]), copying, socket options,
//!   active checks ([`net::checks`], also used by providers for their local
//!   service).
//! - [`files`]: the files a user names (config, certificates, secrets):
//!   regular files or pipes, read to a bound, opened without waiting on a
//!   FIFO.
//! - [`secret`]: secret files (owner-only, read once) and secret bytes
//!   (wiped, never printed).
//! - [`security`]: the cluster key and what derives from it: the seals of
//!   advertisements ([`security::advert`]) and the cluster CA with the
//!   mutual TLS between ambassadors ([`security::tls`]).
//! - [`credentials`]: `--credentials`: the login the connect stage makes to
//!   each backend on the application's behalf (Redis `AUTH`).
//! - [`resp`]: the Redis protocol, for the credentials stage and tests.
//! - [`node`]: one node: its services, listeners and discovery, started and
//!   stopped together by one [`Shutdown`]: `begin` stops every listener and
//!   starts the drain, `force` (or the drain timeout) closes what is left;
//!   [`NodeHandle::reload`] adds, changes and removes them while it runs.
//! - [`status`]: what a running node shows its operators, read from the
//!   live counters: the shape of `/api/v1/status`.
//! - [`admin`]: the read-only admin endpoint (`--admin`): the stats page,
//!   Prometheus metrics and the status API, over HTTP.
//!
//! Dependencies point one way: `value`, `files` and `secret` (on `files`)
//! below everything, then `spec`, `resp` and `security` (on `files` and
//! `secret` only); `credentials` on `spec`, `resp` and `secret`; `backends`
//! on `spec` and `credentials`; `settings` on `spec`, the balancing policy,
//! the key and the credentials;
//! `net` on `backends`, `settings` and `security::tls`; `discovery` on
//! `backends` and `security::advert` (and on `net::checks` for a provider's
//! local check and the probes of new backends); `node` on all of them;
//! `status` reads `node`'s parts and `admin` serves `status`; the binary on
//! `node` and `admin`. No module imports the command line.

#![deny(unsafe_code)]

pub mod admin;
pub mod backends;
pub mod credentials;
pub mod discovery;
pub mod files;
pub mod net;
pub mod node;
pub mod resp;
pub mod secret;
pub mod security;
pub mod settings;
pub mod spec;
pub mod status;
pub mod value;

pub use node::{Node, NodeHandle, ReloadSummary, Shutdown};
