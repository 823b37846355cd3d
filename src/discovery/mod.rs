//! The discovery mesh: advertise local services and browse for remote ones
//! over multicast DNS / DNS-SD, with no registry.
//!
//! - [`wire`]: the contract with other nodes (names, TXT schema).
//! - [`addr`]: which of a peer's addresses to dial.
//! - [`away`]: whether this node was away (suspended, stopped, its wall
//!   clock set), which runs mdns-sd's cache out.
//! - [`ifaces`]: the host's interfaces as last read, and mdns-sd's
//!   interface check, paused while the process is out of descriptors.
//! - [`mdns`]: the mdns-sd daemon of this node: one per process, one browse
//!   of `_amb._tcp`, fanned out to every consumed service's table.
//! - [`replay`]: when a restarted browse may sweep what its replay of the
//!   cache lacks, and when it clears the cache of what it cannot resolve.
//! - [`verifying`]: how many failing instances are verified one by one
//!   before they are taken for a flood and the cache is cleared instead.
//! - [`names`]: a bounded set of names, for what a node remembers of
//!   floods.
//! - [`refusals`]: a burst of new instances this node refuses is cleared
//!   from the cache before mdns-sd asks the link about each.
//! - [`removals`]: removals reported by mdns-sd wait a moment, and wait
//!   for the link when this host has none towards the instance.
//! - [`reconfirm`]: before a sweep removes a backend, its responder is
//!   asked whether it still holds the instance.
//! - [`provider`]: advertises a local service while its health check passes,
//!   drains and says goodbye on shutdown.
//! - [`probation`]: dials each new backend once before it may take clients.
//! - [`stats`]: what discovery ignored, dropped and probed.
//! - [`witness`]: crash removal for the whole link: each node probes the
//!   next node in node-id order and multicasts its goodbye when
//!   it dies.
//! - [`held`]: which nodes or addresses a ring link is held to now.
//! - [`link`]: the TCP link each witness holds to the node it watches, so a
//!   dead process is news at once.
//! - [`listing`]: a one-off browse of everything the link advertises
//!   (`mesh-amb ls`).

pub mod addr;
pub mod away;
pub mod bucket;
pub mod held;
pub mod ifaces;
pub mod link;
pub mod listing;
pub mod mdns;
pub mod names;
pub mod probation;
pub mod provider;
pub mod reconfirm;
pub mod refresh;
pub mod refusals;
pub mod removals;
pub mod replay;
pub mod stats;
pub mod verifying;
pub mod wire;
pub mod witness;
