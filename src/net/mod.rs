//! The data plane: the accept loop ([`accept`]), each connection's stages
//! ([`pipeline`]: dial, TLS, login, then copy), and what they are built from: dialing a
//! backend ([`dial`]), copying without holding buffers while idle
//! ([`copy`]), socket options and limits ([`sockopt`]), active checks
//! ([`checks`]); a provider's TLS terminator ([`terminator`]); the
//! per-core runtimes connections run on ([`shards`]); the rate limit of
//! warnings a burst could repeat ([`loglimit`]); when the process last ran
//! out of descriptors ([`shortage`]); and whether this host's own link
//! towards an address is down ([`route`]).

pub mod accept;
pub mod checks;
pub mod copy;
pub mod dial;
pub mod loglimit;
pub mod pipeline;
pub mod route;
pub mod shards;
pub mod shortage;
pub mod sockopt;
pub mod terminator;
