//! The backends of each consumed service: who they are, how healthy, and
//! which to try first. Fed by configuration and discovery; read by the data
//! plane.

pub mod balance;
pub mod counters;
pub mod service;
pub mod table;

pub use counters::ServiceCounters;
pub use service::{Service, Source, Suspects};
