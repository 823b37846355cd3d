//! mesh-amb: a masterless mesh of ambassadors.
//!
//! An ambassador is a local TCP proxy that stands in for a remote service.
//! Data flows one way through these modules:
//!
//! ```text
//! settings::Config ──> node::Node::start
//!                        │  static backends (spec) ──┐
//!                        │  discovery::mdns::browse ─┴─> table::Update
//!                        ▼
//!                    table::Table  (one per consume; snapshots for readers)
//!                        │
//!   proxy::serve ── accept ──> balance::Balancer::order(snapshot)
//!                        │         └─> proxy::connect: dial down the list,
//!                        │             report failures back to the table
//!                        ▼
//!                    copy both ways until both sides are done
//!
//! discovery::provider: local health check ──> advertise / withdraw (mDNS)
//! proxy::connect failure ──> Service::suspect ──> mdns verify ──> Remove
//! ```
//!
//! - [`spec`]: the `--consume`/`--provide` strings and Docker-link variables.
//! - [`settings`]: the validated configuration, its defaults and typed values
//!   (the command line and config file live in the `mesh-amb` binary).
//! - [`backends`]: a consumed service and where its backends come from.
//! - [`table`]: live backends of one service, with passive health.
//! - [`balance`]: policies that order a snapshot's backends.
//! - [`proxy`]: listeners, the connection pipeline, byte copying.
//! - [`dial`]: connecting to a backend with several addresses.
//! - [`discovery`]: the mDNS mesh: advertising, browsing, the wire contract.
//! - [`resp`]: the Redis protocol, for the credentials stage and tests.
//! - [`health`]: active TCP checks (provider-side and consumer-side).
//! - [`node`]: one node: its services, listeners and discovery, started and
//!   stopped together.
//!
//! Shutdown is one [`Shutdown`] handle: `begin` stops every listener and
//! starts the drain, `force` (or the drain timeout) closes what is left.

#![deny(unsafe_code)]

pub mod backends;
pub mod balance;
pub mod dial;
pub mod discovery;
pub mod health;
pub mod node;
pub mod proxy;
pub mod resp;
pub mod settings;
pub mod spec;
pub mod table;

pub use node::{Node, NodeHandle, Shutdown};
