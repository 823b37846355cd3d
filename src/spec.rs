//! The textual specs a user types: `--consume`, `--provide`, and the
//! Docker-link environment variables that `--from-env` turns into consumes.
//!
//! Parsing is strict and every error names the offending part, because these
//! strings come from shell scripts and unit files where a typo would otherwise
//! surface as a proxy that silently forwards nowhere.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// Upper bound on a backend weight: enough to express any realistic capacity
/// ratio while keeping weight sums far from overflow.
pub const MAX_WEIGHT: u32 = 1000;

/// Service names end up in DNS-SD TXT records and instance labels, which RFC
/// 6763 caps at 63 bytes; the node id suffix needs room too.
const MAX_NAME_LEN: usize = 40;

/// Why a spec was rejected; the caller adds which flag or file it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(String);

impl SpecError {
    pub(crate) fn new(msg: impl Into<String>) -> SpecError {
        SpecError(msg.into())
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(msg.into()))
}

/// `--consume NAME:PORT[=BACKEND,...]`: a local listener standing in for a
/// remote service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeSpec {
    /// Logical service name; matches TXT `svc=` of advertised instances.
    pub name: String,
    /// Port the ambassador listens on (on `--bind`).
    pub port: u16,
    /// Static backends; empty means "discover them".
    pub backends: Vec<BackendAddr>,
}

/// `--provide NAME:PORT[*WEIGHT][@TLSPORT]`: a local service this node
/// offers to the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvideSpec {
    /// Logical service name, advertised as TXT `svc=`.
    pub name: String,
    /// Port of the local service, advertised as the SRV port.
    pub port: u16,
    /// Advertised as TXT `weight=`: this node's share of the service.
    pub weight: u32,
    /// `@PORT`: the port of its TLS terminator (with a cluster key or PKI),
    /// for firewalls and for `tls://` static backends on other sites;
    /// `None` lets the kernel pick one (consumers read it from the SRV).
    pub tls_port: Option<u16>,
}

/// Where a backend lives. Host names are kept unresolved so that DNS changes
/// are picked up on the next connection, as an ambassador in front of a
/// moving service should.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// A link-local IPv6 address with its zone (`fe80::1%eth1`): the
    /// interface it is reached through, by name or index, as `ping` and
    /// socat take it. Without one the kernel cannot tell which link.
    Scoped(Ipv6Addr, String),
    Name(String),
}

/// One backend of a static consume: `[tls://]HOST:PORT[*WEIGHT]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendAddr {
    pub host: Host,
    pub port: u16,
    /// Relative share of new connections (1..=MAX_WEIGHT).
    pub weight: u32,
    /// `tls://`: another ambassador's TLS terminator, dialed with mutual
    /// TLS (a site across an untrusted network, where mDNS does not reach).
    pub tls: bool,
}

/// What is said of the backends of
/// [`crate::settings::SecuritySettings::plain_static`]: at start and by
/// `--check`.
pub const PLAIN_STATIC: &str = "static backends without tls:// are dialed in plain TCP, \
    TLS on or not: their traffic crosses the network in clear (tls://HOST:PORT reaches \
    another ambassador's TLS terminator; --allow-plaintext silences this)";

impl Host {
    /// Whether it names this host over loopback: an address of
    /// `127.0.0.0/8` or `::1` (IPv4-mapped too), or `localhost`.
    pub fn is_loopback(&self) -> bool {
        match self {
            Host::Ip(ip) => ip.to_canonical().is_loopback(),
            Host::Scoped(..) => false,
            Host::Name(name) => name.eq_ignore_ascii_case("localhost"),
        }
    }
}

/// The index of the interface `zone` names, by name (`eth1`) or index
/// (`3`), when this host has it with an address. Read at start and at
/// each reload: an interface made again since (a VPN's, a USB adapter's)
/// takes a reload.
pub fn zone_index(zone: &str) -> Option<u32> {
    let interfaces = if_addrs::get_if_addrs().ok()?;
    let by_index = zone.parse::<u32>().ok();
    interfaces
        .iter()
        .find(|i| i.name == zone || (by_index.is_some() && i.index == by_index))
        .and_then(|i| i.index)
}

impl BackendAddr {
    /// Whether its traffic leaves this host in clear: written without
    /// `tls://`, and not on loopback.
    pub fn leaves_the_host_in_clear(&self) -> bool {
        !self.tls && !self.host.is_loopback()
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Scoped(ip, zone) => write!(f, "[{ip}%{zone}]"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tls {
            f.write_str("tls://")?;
        }
        write!(f, "{}:{}", self.host, self.port)?;
        if self.weight != 1 {
            write!(f, "*{}", self.weight)?;
        }
        Ok(())
    }
}

impl fmt::Display for ConsumeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.port)?;
        for (i, b) in self.backends.iter().enumerate() {
            f.write_str(if i == 0 { "=" } else { "," })?;
            write!(f, "{b}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ProvideSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.port)?;
        if self.weight != 1 {
            write!(f, "*{}", self.weight)?;
        }
        if let Some(p) = self.tls_port {
            write!(f, "@{p}")?;
        }
        Ok(())
    }
}

/// Service names: letters, digits, `-` and `_`, starting with a letter or
/// digit; folded to lower case because DNS-SD compares names without case.
pub fn parse_name(s: &str) -> Result<String, SpecError> {
    if s.is_empty() {
        return err("the service name is empty");
    }
    if s.len() > MAX_NAME_LEN {
        return err(format!(
            "service name '{s}' is longer than {MAX_NAME_LEN} characters"
        ));
    }
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok_chars || !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return err(format!(
            "invalid service name '{s}': use letters, digits, '-' and '_', starting with a letter or digit"
        ));
    }
    Ok(s.to_ascii_lowercase())
}

/// A TCP port in 1..=65535; 0 is refused because it means "any port".
pub fn parse_port(s: &str) -> Result<u16, SpecError> {
    if s.is_empty() {
        return err("the port is missing");
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return err(format!("invalid port '{s}': not a number"));
    }
    match s.parse::<u32>() {
        Ok(0) => err("port 0 is not allowed (use 1-65535)"),
        Ok(p) if p <= u32::from(u16::MAX) => Ok(p as u16),
        _ => err(format!("port {s} is out of range (1-65535)")),
    }
}

/// `NAME:PORT`, shared by both spec kinds.
fn parse_name_port(s: &str) -> Result<(String, u16), SpecError> {
    let Some((name, port)) = s.split_once(':') else {
        return err(format!("'{s}' is not NAME:PORT"));
    };
    Ok((parse_name(name)?, parse_port(port)?))
}

/// Splits an optional `*WEIGHT` suffix off `s`.
fn split_weight(s: &str) -> Result<(&str, u32), SpecError> {
    let Some((head, w)) = s.rsplit_once('*') else {
        return Ok((s, 1));
    };
    match w.parse::<u32>() {
        Ok(w) if (1..=MAX_WEIGHT).contains(&w) => Ok((head, w)),
        _ => err(format!(
            "invalid weight '{w}' in '{s}' (use 1-{MAX_WEIGHT})"
        )),
    }
}

/// `[tls://]HOST:PORT[*WEIGHT]`, with IPv6 literals in brackets; `tcp://`
/// may be written for a plain backend.
pub fn parse_backend(s: &str) -> Result<BackendAddr, SpecError> {
    let (tls, rest) = match s.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("tls") => (true, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("tcp") => (false, rest),
        Some((scheme, _)) => {
            return err(format!(
                "invalid backend '{s}': no scheme '{scheme}://' (tls:// for another \
                 ambassador's TLS terminator, or none)"
            ))
        }
        None => (false, s),
    };
    let (hostport, weight) = split_weight(rest)?;
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let Some((ip, port)) = rest.split_once("]:") else {
            return err(format!("invalid backend '{s}': expected [IPV6]:PORT"));
        };
        (parse_ipv6(ip, s)?, port)
    } else {
        let Some((host, port)) = hostport.rsplit_once(':') else {
            return err(format!("invalid backend '{s}': expected HOST:PORT"));
        };
        if host.contains(':') {
            return err(format!(
                "invalid backend '{s}': IPv6 addresses need brackets, e.g. [::1]:6379"
            ));
        }
        (parse_host(host, s)?, port)
    };
    Ok(BackendAddr {
        host,
        port: parse_port(port).map_err(|e| SpecError(format!("{e} in '{s}'")))?,
        weight,
        tls,
    })
}

/// The inside of `[...]`: an IPv6 address, with a zone (`%eth1`) when it
/// is link-local, and only then.
fn parse_ipv6(text: &str, whole: &str) -> Result<Host, SpecError> {
    let (ip, zone) = match text.split_once('%') {
        Some((ip, zone)) => (ip, Some(zone)),
        None => (text, None),
    };
    let ip: Ipv6Addr = ip
        .parse()
        .map_err(|_| SpecError(format!("invalid IPv6 address '{ip}' in '{whole}'")))?;
    let link_local = ip.is_unicast_link_local();
    match zone {
        None if link_local => err(format!(
            "link-local address '{ip}' in '{whole}' needs its interface: [{ip}%eth0]"
        )),
        None => Ok(Host::Ip(IpAddr::V6(ip))),
        Some(_) if !link_local => err(format!(
            "'{text}' in '{whole}': only a link-local address (fe80::/10) takes an interface"
        )),
        Some(zone) if valid_zone(zone) => Ok(Host::Scoped(ip, zone.to_owned())),
        Some(zone) => err(format!(
            "invalid interface '{zone}' in '{whole}': use its name (eth0) or index"
        )),
    }
}

/// An interface's name as Linux allows it (at most 15 bytes, no '/' nor
/// space), narrowed to what names are made of, or its index.
fn valid_zone(zone: &str) -> bool {
    (1..=15).contains(&zone.len())
        && zone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn parse_host(host: &str, whole: &str) -> Result<Host, SpecError> {
    if host.is_empty() {
        return err(format!("invalid backend '{whole}': the host is missing"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    let bad = |why: &str| err(format!("invalid host '{host}' in '{whole}': {why}"));
    // A name made of digits and dots is a mistyped IPv4 address, not a host.
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return bad("not an IPv4 address");
    }
    // A trailing dot names the root (`cache.lan.`): the resolver takes it.
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 {
        return bad("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("an empty label (two dots in a row)");
        }
        if label.len() > 63 {
            return bad("a label longer than 63 characters");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return bad("use letters, digits, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with '-'");
        }
    }
    Ok(Host::Name(host.to_ascii_lowercase()))
}

/// `NAME:PORT` or `NAME:PORT=HOST:PORT[*W][,HOST:PORT[*W]...]`.
pub fn parse_consume(s: &str) -> Result<ConsumeSpec, SpecError> {
    let (head, tail) = match s.split_once('=') {
        Some((h, t)) => (h, Some(t)),
        None => (s, None),
    };
    let (name, port) = parse_name_port(head)?;
    let mut backends = Vec::new();
    if let Some(tail) = tail {
        if tail.trim().is_empty() {
            return err("no backend after '='");
        }
        let mut seen = HashSet::new();
        for part in tail.split(',') {
            let b = parse_backend(part.trim())?;
            if !seen.insert((b.host.clone(), b.port)) {
                return err(format!("backend '{}' is listed twice", part.trim()));
            }
            backends.push(b);
        }
    }
    Ok(ConsumeSpec {
        name,
        port,
        backends,
    })
}

/// `NAME:PORT[*WEIGHT][@TLSPORT]`.
pub fn parse_provide(s: &str) -> Result<ProvideSpec, SpecError> {
    if s.contains('=') {
        return err("a provide is NAME:PORT[*WEIGHT][@TLSPORT], it takes no backends");
    }
    let (s, tls_port) = match s.rsplit_once('@') {
        Some((head, p)) => {
            let p =
                parse_port(p).map_err(|e| SpecError(format!("invalid TLS port in '{s}': {e}")))?;
            (head, Some(p))
        }
        None => (s, None),
    };
    let (head, weight) = split_weight(s)?;
    let (name, port) = parse_name_port(head)?;
    Ok(ProvideSpec {
        name,
        port,
        weight,
        tls_port,
    })
}

impl std::str::FromStr for ConsumeSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<ConsumeSpec, SpecError> {
        parse_consume(s)
    }
}

impl std::str::FromStr for ProvideSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<ProvideSpec, SpecError> {
        parse_provide(s)
    }
}

impl std::str::FromStr for BackendAddr {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<BackendAddr, SpecError> {
        parse_backend(s)
    }
}

// A spec is written and read as the text a user types (`Display` gives it
// back in the form `FromStr` takes).
crate::value::serde_via_str!(ConsumeSpec, ProvideSpec, BackendAddr);

/// Translates Docker-link variables (`REDIS_PORT_6379_TCP=tcp://10.0.0.5:6379`)
/// into consumes (`redis:6379=10.0.0.5:6379`), as the classic
/// svendowideit/ambassador image does with socat. Other variables, including
/// Docker's `_TCP_ADDR`/`_TCP_PORT` companions, are ignored. Output is sorted
/// by variable name so the result does not depend on environment order.
pub fn consumes_from_env<I>(vars: I) -> Result<Vec<ConsumeSpec>, SpecError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut found: Vec<(String, ConsumeSpec)> = Vec::new();
    for (key, value) in vars {
        let Some(prefix) = key.strip_suffix("_TCP") else {
            continue;
        };
        let Some((alias, port)) = prefix.rsplit_once("_PORT_") else {
            continue;
        };
        if alias.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let what = |e: SpecError| SpecError(format!("{key}={value}: {e}"));
        let name = parse_name(alias).map_err(what)?;
        let port = parse_port(port).map_err(what)?;
        let Some(target) = value.strip_prefix("tcp://") else {
            return err(format!("{key}={value}: expected tcp://HOST:PORT"));
        };
        let backend = parse_backend(target.trim_end_matches('/')).map_err(what)?;
        found.push((
            key,
            ConsumeSpec {
                name,
                port,
                backends: vec![backend],
            },
        ));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found.into_iter().map(|(_, c)| c).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().unwrap())
    }

    fn be(host: Host, port: u16, weight: u32) -> BackendAddr {
        BackendAddr {
            host,
            port,
            weight,
            tls: false,
        }
    }

    #[test]
    fn consume_specs_that_parse() {
        let cases: &[(&str, &str, u16, Vec<BackendAddr>)] = &[
            ("api:8080", "api", 8080, vec![]),
            ("Redis:6379", "redis", 6379, vec![]),
            (
                "redis:6379=10.0.0.5:6379",
                "redis",
                6379,
                vec![be(ip("10.0.0.5"), 6379, 1)],
            ),
            (
                "redis:7379=127.0.0.1:6379, 127.0.0.2:6380*3",
                "redis",
                7379,
                vec![be(ip("127.0.0.1"), 6379, 1), be(ip("127.0.0.2"), 6380, 3)],
            ),
            (
                "pg_main:5432=[::1]:5432,db.example.org:5433",
                "pg_main",
                5432,
                vec![
                    be(ip("::1"), 5432, 1),
                    be(Host::Name("db.example.org".into()), 5433, 1),
                ],
            ),
            (
                "x:65535=[fe80::1%eth1]:1*1000",
                "x",
                65535,
                vec![be(
                    Host::Scoped("fe80::1".parse().unwrap(), "eth1".into()),
                    1,
                    1000,
                )],
            ),
            // A fully qualified name, as DNS writes it.
            (
                "c:1=Cache.LAN.:6379",
                "c",
                1,
                vec![be(Host::Name("cache.lan.".into()), 6379, 1)],
            ),
        ];
        for (input, name, port, backends) in cases {
            let c = parse_consume(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(&c.name, name, "{input}");
            assert_eq!(c.port, *port, "{input}");
            assert_eq!(&c.backends, backends, "{input}");
        }
    }

    #[test]
    fn consume_specs_that_fail_name_the_bad_part() {
        let cases: &[(&str, &str)] = &[
            ("", "not NAME:PORT"),
            ("redis", "not NAME:PORT"),
            (":6379", "service name is empty"),
            ("re.dis:6379", "invalid service name 're.dis'"),
            ("-redis:6379", "invalid service name '-redis'"),
            ("redis:", "port is missing"),
            ("redis:0", "port 0 is not allowed"),
            ("redis:65536", "port 65536 is out of range"),
            ("redis:99999999999", "out of range"),
            ("redis:-1", "invalid port '-1'"),
            ("redis:63x", "invalid port '63x'"),
            ("redis:6379=", "no backend after '='"),
            ("redis:6379=10.0.0.5", "expected HOST:PORT"),
            (
                "redis:6379=10.0.0.5:0",
                "port 0 is not allowed (use 1-65535) in '10.0.0.5:0'",
            ),
            ("redis:6379=10.0.0.5:70000", "port 70000 is out of range"),
            ("redis:6379=:6379", "host is missing"),
            ("redis:6379=::1:6379", "IPv6 addresses need brackets"),
            ("redis:6379=[::1:6379", "expected [IPV6]:PORT"),
            ("redis:6379=[zz::1]:6379", "invalid IPv6 address 'zz::1'"),
            (
                "redis:6379=[fe80::1]:6379",
                "link-local address 'fe80::1' in '[fe80::1]:6379' needs its interface: [fe80::1%eth0]",
            ),
            (
                "redis:6379=[::1%lo]:6379",
                "'::1%lo' in '[::1%lo]:6379': only a link-local address",
            ),
            ("redis:6379=[fe80::1%]:6379", "invalid interface ''"),
            ("redis:6379=[fe80::1%a/b]:6379", "invalid interface 'a/b'"),
            ("redis:6379=[fe80::1%a234567890123456]:1", "invalid interface"),
            ("redis:6379=10.0.0.300:6379", "invalid host '10.0.0.300'"),
            ("redis:6379=bad_host:1", "invalid host 'bad_host'"),
            ("redis:6379=a:1*0", "invalid weight '0'"),
            ("redis:6379=a:1*1001", "invalid weight '1001'"),
            ("redis:6379=a:1*x", "invalid weight 'x'"),
            ("redis:6379=a:1,,b:2", "expected HOST:PORT"),
            ("redis:6379=a:1,a:1", "listed twice"),
            ("redis:6379=http://a:1", "no scheme 'http://'"),
            ("redis:6379=a..b:1", "an empty label"),
            ("redis:6379=-a:1", "starts or ends with '-'"),
        ];
        for (input, want) in cases {
            let e = parse_consume(input).expect_err(input).to_string();
            assert!(e.contains(want), "{input:?}: got {e:?}, want {want:?}");
        }
    }

    #[test]
    fn provide_specs() {
        assert_eq!(
            parse_provide("redis:6379").unwrap(),
            ProvideSpec {
                name: "redis".into(),
                port: 6379,
                weight: 1,
                tls_port: None,
            }
        );
        assert_eq!(parse_provide("api:80*5").unwrap().weight, 5);
        assert_eq!(parse_provide("api:80*5").unwrap().to_string(), "api:80*5");
        let tls = parse_provide("redis:6379*2@16379").unwrap();
        assert_eq!((tls.weight, tls.tls_port), (2, Some(16379)));
        assert_eq!(tls.to_string(), "redis:6379*2@16379");
        for (input, want) in [
            ("api:80*0", "invalid weight '0'"),
            ("redis:0", "port 0"),
            ("redis", "not NAME:PORT"),
            ("redis:6379=a:1", "takes no backends"),
            ("red is:1", "invalid service name"),
            ("redis:6379@0", "invalid TLS port in 'redis:6379@0': port 0"),
            (
                "redis:6379@x",
                "invalid TLS port in 'redis:6379@x': invalid port 'x'",
            ),
            (
                "redis:6379@",
                "invalid TLS port in 'redis:6379@': the port is missing",
            ),
        ] {
            let e = parse_provide(input).expect_err(input).to_string();
            assert!(e.contains(want), "{input:?}: got {e:?}");
        }
    }

    #[test]
    fn only_plain_backends_off_this_host_leave_it_in_clear() {
        for (backend, clear) in [
            ("10.0.0.5:6379", true),
            ("cache.lan:6379", true),
            ("[fe80::1%eth0]:6379", true),
            ("tls://10.0.0.5:16379", false),
            ("127.0.0.2:6379", false),
            ("[::1]:6379", false),
            ("[::ffff:127.0.0.1]:6379", false),
            ("LocalHost:6379", false),
        ] {
            let parsed = parse_backend(backend).unwrap();
            assert_eq!(parsed.leaves_the_host_in_clear(), clear, "{backend}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "redis:7379=127.0.0.1:6379,[::1]:6380*2,db.lan:1",
            "api:8080",
            "redis:7379=[fe80::1%eth1]:6379,[fe80::2%3]:6379*2",
        ] {
            assert_eq!(parse_consume(s).unwrap().to_string(), s);
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn docker_link_variables_become_consumes() {
        let got = consumes_from_env(env(&[
            ("REDIS_PORT_6379_TCP", "tcp://172.17.0.5:6379"),
            ("REDIS_PORT_6379_TCP_ADDR", "172.17.0.5"),
            ("REDIS_PORT_6379_TCP_PORT", "6379"),
            ("REDIS_PORT", "tcp://172.17.0.5:6379"),
            ("MY_DB_PORT_5432_TCP", "tcp://db.internal:15432"),
            ("DNS_PORT_53_UDP", "udp://10.0.0.2:53"),
            ("PATH", "/usr/bin"),
            ("SUPPORT_PORT_TCP", "tcp://1.2.3.4:5"),
        ]))
        .unwrap();
        let rendered: Vec<String> = got.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            rendered,
            ["my_db:5432=db.internal:15432", "redis:6379=172.17.0.5:6379"]
        );
    }

    #[test]
    fn malformed_docker_link_variables_are_errors() {
        for (k, v, want) in [
            (
                "REDIS_PORT_6379_TCP",
                "udp://1.2.3.4:6379",
                "expected tcp://",
            ),
            ("REDIS_PORT_6379_TCP", "tcp://1.2.3.4", "expected HOST:PORT"),
            ("REDIS_PORT_0_TCP", "tcp://1.2.3.4:1", "port 0"),
            (
                "RE.DIS_PORT_1_TCP",
                "tcp://1.2.3.4:1",
                "invalid service name",
            ),
        ] {
            let e = consumes_from_env(env(&[(k, v)])).expect_err(k).to_string();
            assert!(e.contains(want) && e.contains(k), "{k}={v}: got {e:?}");
        }
    }

    #[test]
    fn specs_round_trip_through_text() {
        for text in [
            "redis:7379=127.0.0.1:6379,127.0.0.2:6380*3",
            "pg:5432=[::1]:5432,db.example.org:5433",
            "api:8080",
        ] {
            let c: ConsumeSpec = text.parse().unwrap();
            assert_eq!(c.to_string(), text);
        }
        let p: ProvideSpec = "web:80*5".parse().unwrap();
        assert_eq!(p.to_string(), "web:80*5");
        let b: BackendAddr = "[fe80::1%2]:1*2".parse().unwrap();
        assert_eq!(b.to_string(), "[fe80::1%2]:1*2");
        assert!("redis:0".parse::<ConsumeSpec>().is_err());
    }
}
