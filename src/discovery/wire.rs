//! The wire contract other nodes depend on, described here in full: service type,
//! instance and host names, and the TXT schema.
//!
//! TXT keys (all at most 9 characters; the whole record stays far below the
//! ~200 bytes RFC 6763 §6 recommends):
//!
//! | key     | meaning                                   | required |
//! |---------|-------------------------------------------|----------|
//! | `svc`   | logical service name                      | yes      |
//! | `v`     | schema version, `1`                       | no       |
//! | `node`  | node id of the advertiser                 | no       |
//! | `weight`| relative share of connections, 1..=1000   | no (1)   |
//! | `state` | `up`, `draining` or `down`                | no (up)  |
//! | `tls`   | `1`: the SRV port is a TLS terminator      | no (0)   |
//!
//! Only `svc` is required, so any Avahi or Bonjour host can provide a
//! service with a static service file. Unknown keys and versions are
//! tolerated: an old consumer keeps working with a newer provider.

use std::fmt;

use crate::spec::MAX_WEIGHT;

/// The DNS-SD service type every ambassador advertises and browses.
pub const SERVICE_TYPE: &str = "_amb._tcp.local.";
/// Version of the TXT schema this build writes.
pub const SCHEMA_VERSION: &str = "1";

/// Whether a provider takes new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    /// Leaving: finish what is open, send new clients elsewhere.
    Draining,
    /// The local service stopped answering; a goodbye follows at once.
    /// Announced first because a TXT update reaches consumers in
    /// milliseconds, while a goodbye takes effect only after one second.
    Down,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Up => "up",
            State::Draining => "draining",
            State::Down => "down",
        })
    }
}

/// `redis@7f3a9c21`: no dots (Avahi drops instances whose label holds an
/// unescaped dot), unique per (service, node).
pub fn instance_label(service: &str, node: &str) -> String {
    format!("{service}@{node}")
}

/// `amb-7f3a9c21.local.`: one host name per node, because two mDNS
/// responders sharing a host name make browsers drop each other's records.
pub fn host_name(node: &str) -> String {
    format!("amb-{node}.local.")
}

/// The TXT properties of one of our advertisements.
pub fn txt(
    service: &str,
    node: &str,
    weight: u32,
    state: State,
    tls: bool,
) -> Vec<(String, String)> {
    let mut txt = vec![
        ("v".into(), SCHEMA_VERSION.into()),
        ("svc".into(), service.into()),
        ("node".into(), node.into()),
        ("weight".into(), weight.to_string()),
        ("state".into(), state.to_string()),
    ];
    if tls {
        txt.push(("tls".into(), "1".into()));
    }
    txt
}

/// What a consumer needs from a peer's TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub service: String,
    pub weight: u32,
    pub state: State,
    /// The SRV port speaks mutual TLS.
    pub tls: bool,
}

/// Reads a TXT record through `get(key)`. `None` when it is not a usable
/// mesh service (no or invalid `svc`); bad optional values fall back to
/// their defaults rather than hiding a backend.
pub fn parse_txt<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Advert> {
    let service = crate::spec::parse_name(get("svc")?.trim()).ok()?;
    let weight = get("weight")
        .and_then(|w| w.trim().parse::<u32>().ok())
        .filter(|w| (1..=MAX_WEIGHT).contains(w))
        .unwrap_or(1);
    let state = match get("state").map(str::trim) {
        Some("draining") => State::Draining,
        Some("down") => State::Down,
        _ => State::Up,
    };
    let tls = get("tls").map(str::trim) == Some("1");
    Some(Advert {
        service,
        weight,
        state,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{random_node_id, valid_node_id};
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Option<Advert> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        parse_txt(|k| map.get(k).copied())
    }

    #[test]
    fn our_own_txt_parses_back() {
        let t = txt("redis", "7f3a9c21", 3, State::Draining, true);
        let map: HashMap<&str, &str> = t.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let a = parse_txt(|k| map.get(k).copied()).unwrap();
        assert_eq!(
            a,
            Advert {
                service: "redis".into(),
                weight: 3,
                state: State::Draining,
                tls: true,
            }
        );
        let bytes: usize = t.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        assert!(bytes < 200, "TXT is {bytes} bytes");
        assert!(t.iter().all(|(k, _)| k.len() <= 9));
    }

    /// TXT key/values, and what a consumer makes of them.
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<Advert>);

    #[test]
    fn third_party_and_odd_records() {
        let up = |svc: &str, weight| {
            Some(Advert {
                service: svc.into(),
                weight,
                state: State::Up,
                tls: false,
            })
        };
        let cases: &[Case] = &[
            (&[("svc", "redis")], up("redis", 1)),
            (
                &[("svc", "Redis"), ("v", "7"), ("extra", "x")],
                up("redis", 1),
            ),
            (&[("svc", "redis"), ("weight", "0")], up("redis", 1)),
            (&[("svc", "redis"), ("weight", "99999")], up("redis", 1)),
            (
                &[("svc", "redis"), ("weight", "5"), ("state", "weird")],
                up("redis", 5),
            ),
            (
                &[("svc", "redis"), ("state", "down")],
                Some(Advert {
                    service: "redis".into(),
                    weight: 1,
                    state: State::Down,
                    tls: false,
                }),
            ),
            (&[("svc", "")], None),
            (&[("svc", "a.b")], None),
            (&[("service", "redis")], None),
        ];
        for (pairs, want) in cases {
            assert_eq!(&parse(pairs), want, "{pairs:?}");
        }
    }

    #[test]
    fn names_have_no_dots_in_the_label() {
        let id = random_node_id();
        assert!(valid_node_id(&id) && id.len() == 8);
        assert!(!instance_label("redis", &id).contains('.'));
        assert_eq!(host_name("ab12"), "amb-ab12.local.");
        assert!(!valid_node_id("a.b") && !valid_node_id(""));
    }
}
