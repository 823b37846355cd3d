//! `mesh-amb --check`: what a configuration would run, told without running
//! it, as `nginx -t` and `haproxy -c` do. The configuration was resolved as
//! for a start (every value parsed, the secret and PKI files read and
//! checked), but nothing is bound or advertised, so a new file can be
//! checked next to the node that runs the old one.

use std::fmt::Write as _;
use std::net::SocketAddr;

use mesh_amb::settings::{all_or_listed, Config};
use mesh_amb::spec::PLAIN_STATIC;

/// One line per consume, provide and concern, for a person to read.
pub fn summary(config: &Config) -> String {
    let mut out = String::new();
    let security = &config.security;
    for c in &config.consumes {
        let listen = SocketAddr::new(config.bind, c.port);
        let to = if c.backends.is_empty() {
            format!("the providers of '{}' found over mDNS", c.name)
        } else {
            let backends: Vec<String> = c.backends.iter().map(|b| b.to_string()).collect();
            backends.join(", ")
        };
        let login = security
            .credentials
            .iter()
            .find(|cr| cr.spec.service == c.name)
            .map(|cr| {
                format!(
                    ", logging in with the {} credentials in {}",
                    cr.spec.protocol,
                    cr.spec.file.display()
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "consume {}: listen on {listen}, forward to {to}{login}",
            c.name
        );
        if let Some(clear) = security.plain_static(c) {
            let _ = writeln!(out, "warning: consume {}: {clear}: {PLAIN_STATIC}", c.name);
        }
    }
    for p in &config.provides {
        let tls = match (security.tls(), p.tls_port) {
            (false, _) => String::new(),
            (true, Some(port)) => format!(", reached over mutual TLS on port {port}"),
            (true, None) => ", reached over mutual TLS on a port the kernel picks".to_owned(),
        };
        let _ = writeln!(
            out,
            "provide {}: local port {}, weight {}{tls}",
            p.name, p.port, p.weight
        );
    }
    let discovered = config.consumes.iter().any(|c| c.backends.is_empty());
    if discovered || !config.provides.is_empty() {
        let d = &config.discovery;
        let node = match d.probe {
            true => d.node_id.clone(),
            false => "random per start".to_owned(),
        };
        let _ = writeln!(
            out,
            "discovery: mDNS, interfaces={} addresses={}, node id {node}",
            all_or_listed(&d.interfaces),
            all_or_listed(&d.advertise_addrs),
        );
    }
    let mut trust = match (&security.cluster_key, &security.pki) {
        (Some(key), None) => format!(
            "cluster key {}: signed advertisements only, mutual TLS through the cluster CA",
            key.fingerprint()
        ),
        (Some(key), Some(pki)) => format!(
            "cluster key {}: signed advertisements only, mutual TLS through the CA in {}",
            key.fingerprint(),
            pki.ca.display()
        ),
        (None, Some(pki)) => format!("mutual TLS through the CA in {}", pki.ca.display()),
        (None, None) => "no cluster key or TLS: plain TCP, the network is trusted".to_owned(),
    };
    if security.tls() && security.allow_plaintext {
        trust += "; plaintext backends allowed";
    }
    let _ = writeln!(out, "security: {trust}");
    // A provide without TLS is served by the local service itself.
    if !config.consumes.is_empty() || security.tls() {
        let p = &config.proxy;
        let login = match security.credentials.is_empty() {
            true => String::new(),
            false => format!(
                ", login timeout {}",
                humantime::format_duration(p.login_timeout)
            ),
        };
        let _ = writeln!(
            out,
            "proxy: balance {}, at most {} connections, connect timeout {}{login}",
            p.policy,
            p.max_connections,
            humantime::format_duration(p.connect_timeout)
        );
    }
    out
}
