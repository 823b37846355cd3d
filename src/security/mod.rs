//! The authenticated mesh: one cluster key ([`key`]) from which every node
//! derives the same secrets: the advert MAC key of signed advertisements
//! ([`advert`]) and the cluster CA of the mutual TLS between ambassadors
//! ([`tls`]).

pub mod advert;
pub mod key;
pub mod tls;

pub use key::ClusterKey;
pub use tls::Tls;
