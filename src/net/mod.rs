//! The network side of the data plane: dialing backends, checking them,
//! and the socket options every connection gets.

pub mod checks;
pub mod dial;
