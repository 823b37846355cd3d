//! Signed advertisements: a provider holding the cluster key seals what a
//! consumer acts on, and a consumer holding it uses only sealed records.
//!
//! The seal is three TXT keys next to the plain ones:
//!
//! | key    | value                                                        |
//! |--------|--------------------------------------------------------------|
//! | `ts`   | signing time, unix seconds                                   |
//! | `addr` | the addresses a consumer may dial: base64url (no padding) of one byte counting the IPv4 addresses, then those (4 bytes each), then the IPv6 ones (16 bytes each) |
//! | `sig`  | HMAC-SHA256 with the advert sub-key of the cluster key, truncated to 128 bits, base64url |
//!
//! The MAC covers, in this fixed order and length-prefixed (never the TXT's
//! own order, which the network may shuffle): the instance label, service,
//! node id, SRV port, weight, state, TLS flag, signing time and addresses.
//! A consumer rebuilds that input from what it parsed and resolved, so
//! changing any of it breaks the MAC. It does not cover the host name or
//! the A/AAAA records: instead a consumer dials only addresses that are
//! both resolved and signed, so a stranger replaying a valid record from
//! its own address gets nothing.
//!
//! A signature is valid for [`VALIDITY`] after its signing time, with
//! [`MAX_SKEW`] of tolerance both ways, and a consumer refuses a record
//! older than the newest it accepted for the same instance (a replay of an
//! older state). Providers sign again after [`RESIGN_AFTER`].
//!
//! No I/O here: the caller passes the clock, the candidates and the TXT.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use subtle::ConstantTimeEq as _;

use super::key::{ClusterKey, Purpose};

/// TXT key of the signing time.
pub const KEY_TS: &str = "ts";
/// TXT key of the signed addresses.
pub const KEY_ADDR: &str = "addr";
/// TXT key of the MAC.
pub const KEY_SIG: &str = "sig";

/// How long a signature is good for. It bounds two replays the address
/// check cannot stop: an old state of a real provider sent to a consumer
/// that never saw the newer one, and an address the provider gave up and
/// someone else took. Shorter means more re-announcements: each re-sign is
/// one TXT update per instance on the LAN, next to mdns-sd's own queries
/// (about seven a minute per node); five minutes keeps that negligible.
pub const VALIDITY: Duration = Duration::from_secs(300);
/// Providers sign again once a signature is this old: half the validity,
/// so a consumer that missed one re-announcement (multicast is lossy) still
/// holds a valid record until the next.
pub const RESIGN_AFTER: Duration = Duration::from_secs(150);
/// Clock difference tolerated between provider and consumer, each way. A
/// LAN's clocks are NTP-synced within seconds; this also covers a VM that
/// has just resumed and not yet stepped its clock.
pub const MAX_SKEW: Duration = Duration::from_secs(30);
/// Whole TXT record budget of the wire contract (RFC 6763 §6.2 advises
/// staying under about 200 bytes so a record fits one packet with others).
pub const TXT_BUDGET: usize = 200;
/// Most addresses one record signs: a consumer needs one on its link; a few
/// cover dual stack and a second segment.
pub const MAX_SIGNED_ADDRS: usize = 4;
/// 128 bits of HMAC-SHA256: beyond guessing within any signature's life.
const TAG_LEN: usize = 16;
/// Separates this MAC from any other use of the same sub-key.
const DOMAIN: &[u8] = b"mesh-amb advert v1";

/// What a consumer acts on in one record, apart from the seal's own time
/// and addresses. Consumers fill it from the parsed record (parsed values,
/// so a provider and a consumer build the same bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields<'a> {
    /// Instance label (`redis@7f3a9c21`), the part of the full name before
    /// the service type.
    pub label: &'a str,
    /// `svc=`, as parsed.
    pub service: &'a str,
    /// `node=`, empty when absent.
    pub node: &'a str,
    /// The SRV port.
    pub port: u16,
    /// `weight=`, as parsed.
    pub weight: u32,
    /// `state=`, as parsed (`up`, `draining`, `down`).
    pub state: &'a str,
    /// `tls=1`.
    pub tls: bool,
}

/// Why a consumer refuses a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// No `sig=`: a plain Avahi/Bonjour service, or a keyless node.
    Unsigned,
    /// A seal that is malformed or made with another key, or a record
    /// changed after signing.
    BadSignature,
    /// Signed longer ago than the validity (plus skew).
    Expired,
    /// Signed further in the future than the skew allows.
    Future,
    /// Older than a record already accepted for the instance.
    Replayed,
    /// Valid, but none of its resolved addresses is signed: a copy sent by
    /// another host.
    ForeignAddress,
}

impl Reject {
    /// For the log line.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::Unsigned => {
                "unsigned (with a cluster key, only advertisements signed with it are used)"
            }
            Reject::BadSignature => {
                "bad signature (another cluster's key, or changed after signing)"
            }
            Reject::Expired => "signature expired",
            Reject::Future => "signed in the future (clocks apart?)",
            Reject::Replayed => "older than one already accepted (replay)",
            Reject::ForeignAddress => "none of its resolved addresses is signed",
        }
    }
}

/// The advert MAC key (a sub-key of the cluster key). `Debug` hides it.
#[derive(Clone)]
pub struct AdvertKey(hmac::Key);

impl fmt::Debug for AdvertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdvertKey(<redacted>)")
    }
}

impl AdvertKey {
    pub fn new(key: &ClusterKey) -> AdvertKey {
        AdvertKey(hmac::Key::new(
            hmac::HMAC_SHA256,
            &key.derive(Purpose::Advert)[..],
        ))
    }

    fn tag(&self, fields: &Fields, signed_at: u64, addrs: &[IpAddr]) -> [u8; TAG_LEN] {
        let full = hmac::sign(&self.0, &mac_input(fields, signed_at, addrs));
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }

    /// The seal's TXT pairs (`ts`, `addr`, `sig`) for `fields`, signed at
    /// `signed_at` over `addrs` (as [`fit_addrs`] chose them).
    pub fn sign(&self, fields: &Fields, signed_at: u64, addrs: &[IpAddr]) -> Vec<(String, String)> {
        let addrs = canonical(addrs);
        let tag = self.tag(fields, signed_at, &addrs);
        vec![
            (KEY_TS.into(), signed_at.to_string()),
            (
                KEY_ADDR.into(),
                URL_SAFE_NO_PAD.encode(encode_addrs(&addrs)),
            ),
            (KEY_SIG.into(), URL_SAFE_NO_PAD.encode(tag)),
        ]
    }
}

/// IPv4 before IPv6, as the encoding stores them; otherwise in the order
/// given (the caller's preference). At most [`MAX_SIGNED_ADDRS`]: what a
/// consumer accepts (callers pick them with [`fit_addrs`]).
fn canonical(addrs: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = addrs.iter().copied().filter(IpAddr::is_ipv4).collect();
    out.extend(addrs.iter().copied().filter(IpAddr::is_ipv6));
    out.truncate(MAX_SIGNED_ADDRS);
    out
}

fn mac_input(f: &Fields, signed_at: u64, addrs: &[IpAddr]) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    // Each text field whole, after its length: no two field sets make the
    // same input.
    let text = |m: &mut Vec<u8>, s: &[u8]| {
        m.extend_from_slice(&(s.len() as u64).to_be_bytes());
        m.extend_from_slice(s);
    };
    text(&mut m, DOMAIN);
    text(&mut m, f.label.as_bytes());
    text(&mut m, f.service.as_bytes());
    text(&mut m, f.node.as_bytes());
    m.extend_from_slice(&f.port.to_be_bytes());
    m.extend_from_slice(&f.weight.to_be_bytes());
    text(&mut m, f.state.as_bytes());
    m.push(u8::from(f.tls));
    m.extend_from_slice(&signed_at.to_be_bytes());
    m.extend_from_slice(&encode_addrs(addrs));
    m
}

/// One byte counting the IPv4 addresses, then those, then the IPv6 ones.
/// The caller passes IPv4 first and at most [`MAX_SIGNED_ADDRS`]
/// ([`canonical`]), so the count fits its byte.
fn encode_addrs(addrs: &[IpAddr]) -> Vec<u8> {
    let v4 = addrs.iter().filter(|a| a.is_ipv4()).count();
    let mut out = vec![u8::try_from(v4).expect("at most MAX_SIGNED_ADDRS addresses")];
    for a in addrs {
        match a {
            IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
        }
    }
    out
}

fn decode_addrs(text: &str) -> Option<Vec<IpAddr>> {
    let bytes = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
    let (&v4, rest) = bytes.split_first()?;
    let v4_len = usize::from(v4) * 4;
    if rest.len() < v4_len || (rest.len() - v4_len) % 16 != 0 {
        return None;
    }
    let (v4s, v6s) = rest.split_at(v4_len);
    let mut out: Vec<IpAddr> = v4s
        .chunks_exact(4)
        .map(|c| IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3])))
        .collect();
    out.extend(v6s.chunks_exact(16).map(|c| {
        let octets: [u8; 16] = c.try_into().expect("chunks of 16");
        IpAddr::V6(Ipv6Addr::from(octets))
    }));
    (out.len() <= MAX_SIGNED_ADDRS).then_some(out)
}

/// Length of a TXT record on the wire: each string `key=value`, or a bare
/// `key` when the value is `None` (a DNS-SD flag), with its length byte.
/// The one measure of a record's size: for the budget of our own records
/// here, and for the limit discovery puts on peers' records.
pub fn txt_len<K, V>(strings: impl IntoIterator<Item = (K, Option<V>)>) -> usize
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    strings
        .into_iter()
        .map(|(k, v)| 1 + k.as_ref().len() + v.map_or(0, |v| 1 + v.as_ref().len()))
        .sum()
}

/// [`txt_len`] of `key=value` pairs, as records are built.
pub fn pairs_len(pairs: &[(String, String)]) -> usize {
    txt_len(pairs.iter().map(|(k, v)| (k, Some(v))))
}

/// Which of this host's addresses to sign, best first, and which are left
/// out, for a record whose other TXT pairs take `base_len` bytes.
///
/// Preferred: IPv4, then global and unique-local IPv6, then link-local
/// IPv4 and IPv6 (a consumer on the same link usually has IPv4 too), and
/// loopback only when the host has nothing else (a node alone in its
/// network stack). At most [`MAX_SIGNED_ADDRS`], and no more than the
/// [`TXT_BUDGET`] leaves room for.
pub fn fit_addrs(candidates: &[IpAddr], base_len: usize) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let rank = |ip: &IpAddr| match ip {
        ip if ip.is_loopback() => 4,
        IpAddr::V4(v4) if v4.is_link_local() => 2,
        IpAddr::V4(_) => 0,
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => 3,
        IpAddr::V6(_) => 1,
    };
    let mut sorted: Vec<IpAddr> = candidates
        .iter()
        .copied()
        .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
        .collect();
    sorted.sort_by_key(|ip| (rank(ip), *ip));
    sorted.dedup();
    let only_loopback = sorted.iter().all(IpAddr::is_loopback);
    // The seal without addresses: ts, sig and the addr key itself.
    let seal_len = (KEY_TS.len() + 1 + 10 + 1)
        + (KEY_SIG.len() + 1 + b64_len(TAG_LEN) + 1)
        + (KEY_ADDR.len() + 1 + 1);
    // Strictly under the budget.
    let room = TXT_BUDGET.saturating_sub(base_len + seal_len + 1);
    let (mut signed, mut left_out) = (Vec::new(), Vec::new());
    let mut raw = 1; // the IPv4 count
    for ip in sorted {
        let size = if ip.is_ipv4() { 4 } else { 16 };
        let fits = b64_len(raw + size) <= room;
        if (only_loopback || !ip.is_loopback()) && signed.len() < MAX_SIGNED_ADDRS && fits {
            raw += size;
            signed.push(ip);
        } else if !ip.is_loopback() {
            left_out.push(ip);
        }
    }
    (signed, left_out)
}

/// Characters of `n` bytes in unpadded base64.
fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// A consumer's check of records: the key, and the newest signing time
/// accepted per instance (forgotten once expired, when a replay of it is
/// refused as expired anyway, so only the cluster's live instances are
/// remembered).
#[derive(Debug)]
pub struct Verifier {
    key: AdvertKey,
    newest: HashMap<String, u64>,
}

impl Verifier {
    pub fn new(key: AdvertKey) -> Verifier {
        Verifier {
            key,
            newest: HashMap::new(),
        }
    }

    /// Checks the record of `instance` (its full name, the key of what is
    /// remembered) at `now` (unix seconds): its `fields` and, through
    /// `get`, its seal. On success, the signed addresses.
    pub fn check<'a>(
        &mut self,
        instance: &str,
        fields: &Fields,
        get: impl Fn(&str) -> Option<&'a str>,
        now: u64,
    ) -> Result<Vec<IpAddr>, Reject> {
        let sig = get(KEY_SIG).ok_or(Reject::Unsigned)?;
        let signed_at: u64 = get(KEY_TS)
            .and_then(|t| t.trim().parse().ok())
            .ok_or(Reject::BadSignature)?;
        let addrs = get(KEY_ADDR)
            .and_then(decode_addrs)
            .ok_or(Reject::BadSignature)?;
        let mut tag = [0u8; TAG_LEN];
        let tag_ok = matches!(
            URL_SAFE_NO_PAD.decode_slice(sig.trim(), &mut tag),
            Ok(TAG_LEN)
        );
        let want = self.key.tag(fields, signed_at, &addrs);
        if !(tag_ok && bool::from(want.ct_eq(&tag))) {
            return Err(Reject::BadSignature);
        }
        if signed_at > now.saturating_add(MAX_SKEW.as_secs()) {
            return Err(Reject::Future);
        }
        if expired(signed_at, now) {
            return Err(Reject::Expired);
        }
        match self.newest.get_mut(instance) {
            Some(newest) if signed_at < *newest => return Err(Reject::Replayed),
            Some(newest) => *newest = signed_at,
            None => {
                self.newest.insert(instance.to_owned(), signed_at);
            }
        }
        Ok(addrs)
    }

    /// Instances whose newest accepted record has expired at `now`: they
    /// must leave the tables. They are forgotten.
    pub fn expire(&mut self, now: u64) -> Vec<String> {
        let gone: Vec<String> = self
            .newest
            .iter()
            .filter(|(_, at)| expired(**at, now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.newest.remove(k);
        }
        gone
    }
}

fn expired(signed_at: u64, now: u64) -> bool {
    now > signed_at.saturating_add((VALIDITY + MAX_SKEW).as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const NOW: u64 = 1_764_600_000;

    fn key(b: u8) -> AdvertKey {
        AdvertKey::new(&ClusterKey::from_bytes([b; 32]))
    }

    fn fields() -> Fields<'static> {
        Fields {
            label: "redis@7f3a9c21",
            service: "redis",
            node: "7f3a9c21",
            port: 6379,
            weight: 3,
            state: "up",
            tls: true,
        }
    }

    fn addrs() -> Vec<IpAddr> {
        ["10.77.0.1", "fd00::1", "fe80::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect()
    }

    fn txt_map(pairs: &[(String, String)]) -> HashMap<String, String> {
        pairs.iter().cloned().collect()
    }

    fn check(
        v: &mut Verifier,
        f: &Fields,
        txt: &HashMap<String, String>,
        now: u64,
    ) -> Result<Vec<IpAddr>, Reject> {
        v.check(
            "redis@7f3a9c21._amb._tcp.local.",
            f,
            |k| txt.get(k).map(String::as_str),
            now,
        )
    }

    #[test]
    fn a_signed_record_verifies_and_yields_its_addresses() {
        let seal = key(1).sign(&fields(), NOW, &addrs());
        let mut v = Verifier::new(key(1));
        assert_eq!(
            check(&mut v, &fields(), &txt_map(&seal), NOW + 5),
            Ok(addrs())
        );
        // Repeats of the same record (mDNS resends) stay accepted.
        assert_eq!(
            check(&mut v, &fields(), &txt_map(&seal), NOW + 6),
            Ok(addrs())
        );
    }

    #[test]
    fn every_covered_field_is_covered() {
        let seal = txt_map(&key(1).sign(&fields(), NOW, &addrs()));
        let f = fields();
        let changed: Vec<(&str, Fields)> = vec![
            (
                "label",
                Fields {
                    label: "redis@other",
                    ..f
                },
            ),
            (
                "service",
                Fields {
                    service: "redis2",
                    ..f
                },
            ),
            ("node", Fields { node: "other", ..f }),
            ("port", Fields { port: 6380, ..f }),
            ("weight", Fields { weight: 4, ..f }),
            (
                "state",
                Fields {
                    state: "draining",
                    ..f
                },
            ),
            ("tls", Fields { tls: false, ..f }),
        ];
        for (what, g) in changed {
            let mut v = Verifier::new(key(1));
            assert_eq!(
                check(&mut v, &g, &seal, NOW),
                Err(Reject::BadSignature),
                "{what}"
            );
        }
        // The seal's own fields: time, addresses (one more, one less,
        // another), the tag.
        let other_addrs = key(1).sign(&fields(), NOW, &addrs()[..2])[1].1.clone();
        let more_addrs = key(1).sign(
            &fields(),
            NOW,
            &[addrs(), vec!["10.9.9.9".parse().unwrap()]].concat(),
        )[1]
        .1
        .clone();
        let moved = key(1).sign(&fields(), NOW, &["10.77.0.66".parse().unwrap()])[1]
            .1
            .clone();
        let mut tampered_tag = seal[KEY_SIG].clone().into_bytes();
        tampered_tag[0] = if tampered_tag[0] == b'A' { b'B' } else { b'A' };
        let seals: Vec<(&str, &str, String)> = vec![
            ("ts", KEY_TS, (NOW + 1).to_string()),
            ("fewer addrs", KEY_ADDR, other_addrs),
            ("more addrs", KEY_ADDR, more_addrs),
            ("other addr", KEY_ADDR, moved),
            ("tag", KEY_SIG, String::from_utf8(tampered_tag).unwrap()),
            ("short tag", KEY_SIG, seal[KEY_SIG][..10].to_owned()),
            ("garbage addr", KEY_ADDR, "!!".into()),
            ("garbage ts", KEY_TS, "soon".into()),
        ];
        for (what, k, value) in seals {
            let mut txt = seal.clone();
            txt.insert(k.into(), value);
            let mut v = Verifier::new(key(1));
            assert_eq!(
                check(&mut v, &fields(), &txt, NOW),
                Err(Reject::BadSignature),
                "{what}"
            );
        }
    }

    #[test]
    fn another_key_or_no_seal_is_refused() {
        let seal = txt_map(&key(2).sign(&fields(), NOW, &addrs()));
        let mut v = Verifier::new(key(1));
        assert_eq!(
            check(&mut v, &fields(), &seal, NOW),
            Err(Reject::BadSignature)
        );
        let mut unsigned = seal.clone();
        unsigned.remove(KEY_SIG);
        assert_eq!(
            check(&mut v, &fields(), &unsigned, NOW),
            Err(Reject::Unsigned)
        );
        let mut missing = seal;
        missing.remove(KEY_ADDR);
        assert_eq!(
            check(&mut v, &fields(), &missing, NOW),
            Err(Reject::BadSignature)
        );
    }

    #[test]
    fn validity_window_with_skew() {
        let life = (VALIDITY + MAX_SKEW).as_secs();
        let skew = MAX_SKEW.as_secs();
        let cases = [
            (NOW - life, Ok(())),
            (NOW - life - 1, Err(Reject::Expired)),
            (NOW + skew, Ok(())),
            (NOW + skew + 1, Err(Reject::Future)),
            (0, Err(Reject::Expired)),
            (u64::MAX, Err(Reject::Future)),
        ];
        for (at, want) in cases {
            let seal = txt_map(&key(1).sign(&fields(), at, &addrs()));
            let mut v = Verifier::new(key(1));
            let got = check(&mut v, &fields(), &seal, NOW).map(|_| ());
            assert_eq!(got, want, "signed at {at}");
        }
    }

    #[test]
    fn an_older_record_than_one_accepted_is_a_replay() {
        let up = txt_map(&key(1).sign(&fields(), NOW, &addrs()));
        let down_fields = Fields {
            state: "down",
            ..fields()
        };
        let down = txt_map(&key(1).sign(&down_fields, NOW + 1, &addrs()));
        let mut v = Verifier::new(key(1));
        assert!(check(&mut v, &fields(), &up, NOW).is_ok());
        assert!(check(&mut v, &down_fields, &down, NOW + 1).is_ok());
        assert_eq!(
            check(&mut v, &fields(), &up, NOW + 2),
            Err(Reject::Replayed)
        );
        // Another instance has its own history.
        let other = v.check(
            "redis@other._amb._tcp.local.",
            &Fields {
                label: "redis@7f3a9c21",
                ..fields()
            },
            |k| up.get(k).map(String::as_str),
            NOW + 2,
        );
        assert!(other.is_ok());
        // Once the newest has expired it is forgotten, and the old one is
        // refused as expired rather than remembered forever.
        let later = NOW + 1 + (VALIDITY + MAX_SKEW).as_secs() + 1;
        let mut gone = v.expire(later);
        gone.sort();
        assert_eq!(
            gone,
            [
                "redis@7f3a9c21._amb._tcp.local.",
                "redis@other._amb._tcp.local."
            ]
        );
        assert!(v.newest.is_empty());
        assert_eq!(check(&mut v, &fields(), &up, later), Err(Reject::Expired));
    }

    #[test]
    fn the_record_fits_the_budget_with_a_realistic_address_set() {
        // A dual-stack host on two segments, with a docker bridge.
        let host: Vec<IpAddr> = [
            "127.0.0.1",
            "::1",
            "10.77.0.1",
            "192.168.1.20",
            "172.17.0.1",
            "2001:db8::20",
            "fd00::20",
            "fe80::1:2:3:4",
            "fe80::5:6:7:8",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        // The plain keys of a long-named service with a 16-character node id.
        let base: Vec<(String, String)> = [
            ("v", "1"),
            ("svc", "a-service-name-of-forty-characters-long0"),
            ("node", "0123456789abcdef"),
            ("weight", "1000"),
            ("state", "draining"),
            ("tls", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for base in [&base[..], &base[..1]] {
            let (signed, left_out) = fit_addrs(&host, pairs_len(base));
            assert!(
                !signed.is_empty() && signed.iter().all(|a| !a.is_loopback()),
                "{signed:?}"
            );
            assert_eq!(
                signed.len() + left_out.len(),
                host.len() - 2,
                "loopback is never listed"
            );
            assert!(signed[0].is_ipv4(), "IPv4 first: {signed:?}");
            let mut txt = base.to_vec();
            txt.extend(key(1).sign(&fields(), NOW, &signed));
            let len = pairs_len(&txt);
            assert!(len < TXT_BUDGET, "{len} bytes: {txt:?}");
            assert!(txt.iter().all(|(k, _)| k.len() <= 9));
        }
        // The short record of the common case signs the full count.
        let (signed, _) = fit_addrs(&host, pairs_len(&base[..1]));
        assert_eq!(signed.len(), MAX_SIGNED_ADDRS);
        // A host alone in its stack signs its loopback addresses.
        let lo: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(fit_addrs(&lo, 50).0, lo);
    }

    #[test]
    fn txt_len_counts_the_wire_bytes() {
        // `svc=redis` and a bare flag `x`, each after its length byte.
        assert_eq!(txt_len([("svc", Some("redis")), ("x", None)]), 10 + 2);
        let pairs = [
            ("v".to_owned(), "1".to_owned()),
            ("e".into(), String::new()),
        ];
        assert_eq!(pairs_len(&pairs), 4 + 3);
    }

    #[test]
    fn debug_hides_the_key() {
        let shown = format!("{:?}", Verifier::new(key(0x41)));
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
