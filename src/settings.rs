//! Settings of a node, and the typed values they are read from.

pub mod value;

pub use value::{Count, Ip, NodeId, OrOff, Period, ValueError, Wait, MAX_DURATION};
