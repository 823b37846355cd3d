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
//! | `link`  | TCP port of the node's ring link ([`super::link`]), not sealed | no |
//! | `ts`, `addr`, `sig` | the seal of a provider holding the cluster key ([`crate::security::advert`]) | no |
//!
//! Only `svc` is required, so any Avahi or Bonjour host can provide a
//! service with a static service file. Unknown keys and versions are
//! tolerated: an old consumer keeps working with a newer provider, and a
//! consumer without the cluster key ignores the seal. A consumer with the
//! key uses sealed records only.

use std::fmt;

use crate::spec::MAX_WEIGHT;

/// The DNS-SD service type every ambassador advertises and browses.
pub const SERVICE_TYPE: &str = "_amb._tcp.local.";
/// TXT key of the node's ring link port ([`super::link`]).
pub const LINK_KEY: &str = "link";
/// Version of the TXT schema this build writes.
pub const SCHEMA_VERSION: &str = "1";
/// Largest TXT record a consumer accepts, counted as on the wire
/// ([`crate::security::advert::txt_len`]). Twice the ~200 bytes RFC 6763
/// §6.2 recommends, so a third-party advertiser's extra keys fit beside
/// ours; anything bigger is not a mesh service, and refusing it bounds what
/// one instance costs.
pub const MAX_TXT_BYTES: usize = 400;
/// A DNS label's limit (RFC 1035); mDNS libraries differ on enforcing it.
const MAX_LABEL_BYTES: usize = 63;

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

/// `amb-7f3a9c21_redis.local.`: the host name an instance of `service`
/// moves to just before its goodbye, which withdraws that name's address
/// records too (mdns-sd puts them in every goodbye). No other instance
/// uses it, and no node's [`host_name`] can be it: node ids have no `_`.
pub fn leaving_host_name(service: &str, node: &str) -> String {
    format!("amb-{node}_{service}.local.")
}

/// The `<label>` of `<label>.<SERVICE_TYPE>`; `None` for another type.
pub fn label_of(fullname: &str) -> Option<&str> {
    fullname
        .strip_suffix(SERVICE_TYPE)
        .and_then(|l| l.strip_suffix('.'))
}

/// The TXT properties of one of our advertisements (without the seal).
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

/// The ring link port a TXT record names, read through `get(key)`; `None`
/// without a usable one.
pub fn link_port<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<u16> {
    get(LINK_KEY)?
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
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

/// Why an advertised instance is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// The instance label is empty, too long, or holds a dot, a control
    /// character or bytes that were not UTF-8.
    Name,
    /// Port 0: nothing can be dialed.
    Port,
    /// The TXT record is over [`MAX_TXT_BYTES`].
    Txt,
}

impl Flaw {
    /// For the log line.
    pub fn reason(self) -> &'static str {
        match self {
            Flaw::Name => {
                "unusable instance label (a dot, a control character, invalid UTF-8 or its length)"
            }
            Flaw::Port => "port 0",
            Flaw::Txt => "TXT record too big",
        }
    }
}

/// Checks what a consumer acts on besides the TXT keys: the instance label
/// of `fullname` (`<label>._amb._tcp.local.`), the port, and the TXT size
/// in wire bytes. A label with a dot is ambiguous (our labels have none, and
/// Avahi drops such instances); a control character would reach log lines
/// and tools; U+FFFD is what a library leaves of invalid UTF-8.
pub fn check(fullname: &str, port: u16, txt_bytes: usize) -> Result<(), Flaw> {
    let label = label_of(fullname).ok_or(Flaw::Name)?;
    let bad_char = |c: char| c == '.' || c.is_control() || c == char::REPLACEMENT_CHARACTER;
    if label.is_empty() || label.len() > MAX_LABEL_BYTES || label.chars().any(bad_char) {
        return Err(Flaw::Name);
    }
    if port == 0 {
        return Err(Flaw::Port);
    }
    if txt_bytes > MAX_TXT_BYTES {
        return Err(Flaw::Txt);
    }
    Ok(())
}

/// Unicode's bidirectional formatting characters (UAX #9). They are no
/// control characters, and a name in a right-to-left script may hold one,
/// so [`check`] lets them through; but each reorders the text after it
/// (`\u{202e}1h@bew` reads as `web@h1`), so the operator's views of names
/// from the link show them escaped.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

/// The mDNS port and groups (RFC 6762; the IPv6 one of link-local scope),
/// for the packets mesh-amb writes itself: the witness's probes and
/// goodbyes, the refresh of our records, and a listener's question about
/// a linked node's records.
pub(super) const MDNS_PORT: u16 = 5353;
pub(super) const MDNS_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(224, 0, 0, 251);
pub(super) const MDNS_V6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb);
/// DNS record types and class in those packets.
pub(super) const TYPE_A: u16 = 1;
pub(super) const TYPE_PTR: u16 = 12;
pub(super) const TYPE_TXT: u16 = 16;
pub(super) const TYPE_AAAA: u16 = 28;
pub(super) const TYPE_SRV: u16 = 33;
pub(super) const CLASS_IN: u16 = 1;
/// RFC 6762 §10.2: the record replaces what caches hold under its name.
pub(super) const CACHE_FLUSH: u16 = 0x8000;

/// Appends `name` (dot-separated, trailing dot optional) in DNS label
/// form. Labels were checked on the way in ([`check`]: no
/// dots, at most 63 bytes); a longer one is cut rather than corrupting the
/// packet.
pub(super) fn put_name(p: &mut Vec<u8>, name: &str) {
    for label in name.trim_end_matches('.').split('.') {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        p.push(bytes.len() as u8);
        p.extend_from_slice(bytes);
    }
    p.push(0);
}

/// A one-question query with message id `id` for the `ty` record of
/// `name`, as a legacy querier sends it (RFC 6762 §6.7: from a port other
/// than 5353, answered by unicast).
pub(super) fn question(name: &str, ty: u16, id: u16) -> Vec<u8> {
    query(&[(name, ty)], id)
}

/// A query with message id `id` and these questions (name, type), each
/// asking for a multicast answer (RFC 6762 §5.4: the unicast bit clear).
pub(super) fn query(questions: &[(&str, u16)], id: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(96 * questions.len());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0, 0]); // flags 0: a query
    p.extend_from_slice(&(questions.len() as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    for (name, ty) in questions {
        put_name(&mut p, name);
        p.extend_from_slice(&ty.to_be_bytes());
        p.extend_from_slice(&CLASS_IN.to_be_bytes());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::advert::pairs_len;
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
        let bytes = pairs_len(&t);
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
    fn hostile_names_ports_and_txt_are_flawed() {
        let full = |label: &str| format!("{label}.{SERVICE_TYPE}");
        let ok = full("redis@7f3a9c21");
        assert_eq!(check(&ok, 6379, 60), Ok(()));
        assert_eq!(check(&full("My Redis (2)"), 1, MAX_TXT_BYTES), Ok(()));
        for label in ["a.b", "a\nb", "tab\t", "bad\u{fffd}", "", &"x".repeat(64)] {
            assert_eq!(check(&full(label), 6379, 60), Err(Flaw::Name), "{label:?}");
        }
        assert_eq!(check("x._other._tcp.local.", 1, 0), Err(Flaw::Name));
        assert_eq!(check(&ok, 0, 60), Err(Flaw::Port));
        assert_eq!(check(&ok, 6379, MAX_TXT_BYTES + 1), Err(Flaw::Txt));
        let ours = txt(
            "redis",
            &crate::value::random_node_id(),
            1000,
            State::Draining,
            true,
        );
        let bytes = pairs_len(&ours);
        assert!(
            bytes * 2 < MAX_TXT_BYTES,
            "room for a signature and third-party keys"
        );
    }

    #[test]
    fn a_query_asks_each_question_for_a_multicast_answer() {
        let name = "web@b._amb._tcp.local.";
        let q = query(&[(name, TYPE_SRV), (name, TYPE_TXT)], 0);
        assert_eq!(&q[..12], &[0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0]);
        let label = b"\x05web@b\x04_amb\x04_tcp\x05local\x00";
        // Each name in full, its type, and class IN with the unicast bit
        // clear.
        let srv = [&label[..], &[0, 33, 0, 1]].concat();
        let txt = [&label[..], &[0, 16, 0, 1]].concat();
        assert_eq!(&q[12..], [srv, txt].concat());
    }

    #[test]
    fn names_have_no_dots_in_the_label() {
        let id = random_node_id();
        assert!(valid_node_id(&id) && id.len() == 8);
        assert!(!instance_label("redis", &id).contains('.'));
        assert_eq!(host_name("ab12"), "amb-ab12.local.");
        assert_eq!(leaving_host_name("redis", "ab12"), "amb-ab12_redis.local.");
        // The longest of each still fits one DNS label.
        let longest = leaving_host_name(&"s".repeat(40), &"n".repeat(16));
        assert!(longest.trim_end_matches(".local.").len() <= 63, "{longest}");
        assert_eq!(label_of("redis@ab12._amb._tcp.local."), Some("redis@ab12"));
        assert_eq!(label_of("odd"), None);
        assert!(!valid_node_id("a.b") && !valid_node_id(""));
    }
}
