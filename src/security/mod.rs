//! The authenticated mesh: one cluster key ([`key`]) from which every node
//! derives the same secrets.
pub mod key;

pub use key::ClusterKey;
