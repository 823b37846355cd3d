//! Typed setting values, parsed once: each type's `FromStr` is the one
//! place its text form is checked, and `Display` writes it back in the same
//! form (so a front end can print defaults and round-trip values). Serde
//! goes through the same pair, so a TOML file, a flag and an environment
//! variable accept exactly the same text, with the same messages.
//!
//! Errors say only what is wrong with the value ("must be greater than
//! zero"); the caller adds which setting and which text it was.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Why a value was rejected, without the setting's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(String);

impl ValueError {
    /// `msg` says what is wrong, not which setting: the caller knows that.
    pub fn new(msg: impl Into<String>) -> ValueError {
        ValueError(msg.into())
    }
}

/// A node's identity: 8 hex digits, random per process unless configured.
/// It makes instance labels and the mDNS host name unique per node, which
/// avoids name conflicts between nodes and between reflected copies.
pub fn random_node_id() -> String {
    format!("{:08x}", fastrand::u32(..))
}

/// Node ids become part of DNS labels: keep them short and plain.
pub fn valid_node_id(id: &str) -> bool {
    (1..=16).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Serde through `Display`/`FromStr`: a value is written and read as the
/// same string a user types.
macro_rules! serde_via_str {
    ($($t:ty),* $(,)?) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <$crate::value::Text as serde::Deserialize>::deserialize(d)?;
                s.0.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
pub(crate) use serde_via_str;

/// The text of a value as a file gives it: a string, or a bare integer
/// (`connect_timeout = 5` means five seconds, as `--connect-timeout 5`
/// does), read as the same text a user would type.
#[doc(hidden)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a whole number")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text, E> {
                Ok(Text(s.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Text, E> {
                Ok(Text(n.to_string()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Text, E> {
                Ok(Text(n.to_string()))
            }
        }
        d.deserialize_any(TextVisitor)
    }
}

/// Longest duration accepted anywhere: far beyond any sensible timeout, and
/// small enough that adding it to an instant can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A duration like `500ms`, `1s`, `5m`; a bare number is seconds. Zero is
/// allowed; at most [`MAX_DURATION`].
fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let s = s.trim();
    let d = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u64>().ok().map(Duration::from_secs)
    } else {
        humantime::parse_duration(s).ok()
    };
    match d {
        Some(d) if d <= MAX_DURATION => Ok(d),
        Some(_) => Err(ValueError::new("at most 30 days")),
        None => Err(ValueError::new("not a duration (e.g. 500ms, 2s, 5m)")),
    }
}

/// A length of time that may be zero, meaning "do not wait": grace periods
/// such as the drain timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Wait(pub Duration);

/// A length of time that must be positive: timeouts and intervals, where
/// zero would mean "fail at once" or "spin".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Period(pub Duration);

impl FromStr for Wait {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Wait, ValueError> {
        parse_duration(s).map(Wait)
    }
}

impl FromStr for Period {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Period, ValueError> {
        match parse_duration(s)? {
            d if d.is_zero() => Err(ValueError::new("must be greater than zero")),
            d => Ok(Period(d)),
        }
    }
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Wait(self.0).fmt(f)
    }
}

impl From<Wait> for Duration {
    fn from(w: Wait) -> Duration {
        w.0
    }
}

impl From<Period> for Duration {
    fn from(p: Period) -> Duration {
        p.0
    }
}

/// A value that can be switched off with the word `off`, e.g. an idle
/// timeout: `OrOff(None)` is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrOff<T>(pub Option<T>);

impl<T: FromStr> FromStr for OrOff<T> {
    type Err = T::Err;
    fn from_str(s: &str) -> Result<OrOff<T>, T::Err> {
        match s.trim() {
            "off" => Ok(OrOff(None)),
            s => s.parse().map(|v| OrOff(Some(v))),
        }
    }
}

impl<T: fmt::Display> fmt::Display for OrOff<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("off"),
        }
    }
}

impl<T: fmt::Display> Serialize for OrOff<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de, T: FromStr> Deserialize<'de> for OrOff<T>
where
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Text::deserialize(d)?.0.parse().map_err(de::Error::custom)
    }
}

impl From<OrOff<Period>> for Option<Duration> {
    fn from(v: OrOff<Period>) -> Option<Duration> {
        v.0.map(Duration::from)
    }
}

/// A count in `1..=MAX`. Read from text (a flag) or from an integer or a
/// string (a file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Count<const MAX: u32>(u32);

impl<const MAX: u32> Count<MAX> {
    /// `n`, which must be in range: for defaults written in code.
    ///
    /// # Panics
    /// If `n` is 0 or above `MAX`.
    pub const fn new(n: u32) -> Count<MAX> {
        assert!(n >= 1 && n <= MAX, "count out of range");
        Count(n)
    }

    /// The count.
    pub const fn get(self) -> u32 {
        self.0
    }

    fn check(n: Option<u64>) -> Result<Count<MAX>, ValueError> {
        match n {
            Some(n) if (1..=u64::from(MAX)).contains(&n) => Ok(Count(n as u32)),
            _ => Err(ValueError::new(format!(
                "expected a number from 1 to {MAX}"
            ))),
        }
    }
}

impl<const MAX: u32> FromStr for Count<MAX> {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Count<MAX>, ValueError> {
        Count::check(s.trim().parse().ok())
    }
}

impl<const MAX: u32> fmt::Display for Count<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<const MAX: u32> From<Count<MAX>> for u32 {
    fn from(c: Count<MAX>) -> u32 {
        c.0
    }
}

impl<const MAX: u32> From<Count<MAX>> for usize {
    fn from(c: Count<MAX>) -> usize {
        c.0 as usize
    }
}

impl<const MAX: u32> Serialize for Count<MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de, const MAX: u32> Deserialize<'de> for Count<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CountVisitor<const MAX: u32>;
        impl<const MAX: u32> Visitor<'_> for CountVisitor<MAX> {
            type Value = Count<MAX>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a number from 1 to {MAX}")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Count<MAX>, E> {
                Count::check(Some(n)).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Count<MAX>, E> {
                Count::check(u64::try_from(n).ok()).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Count<MAX>, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(CountVisitor::<MAX>)
    }
}

/// An IP address, with a message that shows what one looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ip(pub IpAddr);

impl FromStr for Ip {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Ip, ValueError> {
        s.trim()
            .parse()
            .map(Ip)
            .map_err(|_| ValueError::new("not an IP address (e.g. 127.0.0.1, 0.0.0.0, ::)"))
    }
}

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Ip> for IpAddr {
    fn from(ip: Ip) -> IpAddr {
        ip.0
    }
}

/// The admin endpoint's address: `PORT` alone is on loopback (the page
/// shows the mesh's layout, so exposing it is the user's explicit choice),
/// `localhost:PORT` too; otherwise `IP:PORT` or `[IPv6]:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AdminAddr(pub SocketAddr);

impl FromStr for AdminAddr {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<AdminAddr, ValueError> {
        let s = s.trim();
        let loopback = |port: &str| -> Result<AdminAddr, ValueError> {
            let port: u16 = port
                .parse()
                .map_err(|_| ValueError::new("not a port number (1-65535, or 0 for any)"))?;
            Ok(AdminAddr(SocketAddr::from((Ipv4Addr::LOCALHOST, port))))
        };
        if let Some(port) = s.strip_prefix("localhost:") {
            return loopback(port);
        }
        if !s.contains(':') {
            return loopback(s);
        }
        s.parse().map(AdminAddr).map_err(|_| {
            ValueError::new(
                "not PORT, localhost:PORT, IP:PORT or [IPv6]:PORT (e.g. 9090, 0.0.0.0:9090)",
            )
        })
    }
}

impl fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A node id as a user may choose it: 1-16 letters, digits or '-', folded
/// to lower case (it becomes part of DNS names, which ignore case).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId(String);

impl NodeId {
    /// A fresh random id, as a node gets when the user names none.
    pub fn random() -> NodeId {
        NodeId(random_node_id())
    }
}

impl FromStr for NodeId {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<NodeId, ValueError> {
        if valid_node_id(s) {
            Ok(NodeId(s.to_ascii_lowercase()))
        } else {
            Err(ValueError::new("use 1-16 letters, digits or '-'"))
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

serde_via_str!(Wait, Period, Ip, AdminAddr, NodeId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok: &[(&str, Duration)] = &[
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            (" 5m ", Duration::from_secs(300)),
            ("7", Duration::from_secs(7)),
            ("30days", MAX_DURATION),
        ];
        for (text, want) in ok {
            assert_eq!(text.parse::<Period>().unwrap().0, *want, "{text}");
            assert_eq!(text.parse::<Wait>().unwrap().0, *want, "{text}");
        }
        assert_eq!("0".parse::<Wait>().unwrap().0, Duration::ZERO);
        let bad: &[(&str, &str)] = &[
            ("0s", "must be greater than zero"),
            ("soon", "not a duration (e.g. 500ms, 2s, 5m)"),
            ("-3", "not a duration"),
            ("", "not a duration"),
            ("31days", "at most 30 days"),
            ("500000000000y", "at most 30 days"),
        ];
        for (text, want) in bad {
            let e = text.parse::<Period>().expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: got {e:?}");
        }
    }

    #[test]
    fn off_and_display_round_trip() {
        assert_eq!("off".parse::<OrOff<Period>>().unwrap(), OrOff(None));
        let some: OrOff<Period> = "90s".parse().unwrap();
        assert_eq!(some.0, Some(Period(Duration::from_secs(90))));
        for v in ["off", "1s", "500ms", "1m 30s", "30days"] {
            let parsed: OrOff<Period> = v.parse().unwrap();
            assert_eq!(parsed.to_string(), v);
        }
        assert_eq!(Wait(Duration::ZERO).to_string(), "0s");
    }

    #[test]
    fn counts_from_text_and_integers() {
        assert_eq!("3".parse::<Count<100>>().unwrap().get(), 3);
        for bad in ["0", "101", "x", "-1", ""] {
            let e = bad.parse::<Count<100>>().expect_err(bad).to_string();
            assert_eq!(e, "expected a number from 1 to 100", "{bad:?}");
        }
        #[derive(Debug, Deserialize)]
        struct File {
            n: Count<100>,
        }
        let f: File = toml::from_str("n = 5").unwrap();
        assert_eq!(f.n.get(), 5);
        let f: File = toml::from_str("n = \"6\"").unwrap();
        assert_eq!(f.n.get(), 6);
        let e = toml::from_str::<File>("n = 0").unwrap_err();
        assert!(e.message().contains("from 1 to 100"), "{e}");
        let e = toml::from_str::<File>("n = -2").unwrap_err();
        assert!(e.message().contains("from 1 to 100"), "{e}");
    }

    #[test]
    fn addresses_and_node_ids() {
        assert_eq!("::1".parse::<Ip>().unwrap().to_string(), "::1");
        let e = "localhost".parse::<Ip>().unwrap_err().to_string();
        assert!(e.starts_with("not an IP address"), "{e}");
        assert_eq!("H1".parse::<NodeId>().unwrap().to_string(), "h1");
        assert!("a.b".parse::<NodeId>().is_err());
        assert!("".parse::<NodeId>().is_err());
        assert_eq!(NodeId::random().to_string().len(), 8);
    }

    #[test]
    fn admin_addresses_default_to_loopback() {
        let a = |s: &str| s.parse::<AdminAddr>().map(|a| a.to_string());
        assert_eq!(a("9090").unwrap(), "127.0.0.1:9090");
        assert_eq!(a("localhost:9090").unwrap(), "127.0.0.1:9090");
        assert_eq!(a("0.0.0.0:9090").unwrap(), "0.0.0.0:9090");
        assert_eq!(a("[::1]:0").unwrap(), "[::1]:0");
        for bad in ["", "x", "99999", "host.lan:9090", "1.2.3.4", "::1:9090"] {
            assert!(a(bad).is_err(), "{bad:?}");
        }
    }
}
