//! What the security layer reads from the user and the link: the cluster
//! key file, the seal of an advertisement (anyone on the link can send any
//! TXT, port, label and addresses), the checks a consumer makes before the
//! seal, and the credentials spec and file.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use mesh_amb::credentials::CredentialsSpec;
use mesh_amb::discovery::wire::{self, check, Flaw, State, MAX_TXT_BYTES, SERVICE_TYPE};
use mesh_amb::security::advert::{
    fit_addrs, pairs_len, AdvertKey, Fields, Reject, Verifier, KEY_ADDR, KEY_SIG, KEY_TS,
    MAX_SIGNED_ADDRS, TXT_BUDGET, VALIDITY,
};
use mesh_amb::security::key::KEY_LEN;
use mesh_amb::security::ClusterKey;
use mesh_amb::spec::MAX_WEIGHT;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestRunner;

/// A few whitespace characters, as editors and `echo` leave around a key.
fn blank() -> impl Strategy<Value = String> {
    crate::regex("[ \t\r\n]{0,3}")
}

/// Base64 of about 32 bytes, with whitespace around.
fn near_key() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(any::<u8>(), 30..=34),
        blank(),
        blank(),
    )
        .prop_map(|(b, pre, post)| format!("{pre}{}{post}", STANDARD.encode(b)))
}

/// Text near a key file: [`near_key`], with a character dropped, added or
/// changed, or any bytes at all.
fn key_text() -> impl Strategy<Value = Vec<u8>> {
    let bent = (
        near_key(),
        any::<prop::sample::Index>(),
        any::<char>(),
        0..3,
    )
        .prop_map(|(text, at, c, how)| {
            let mut chars: Vec<char> = text.chars().collect();
            let i = at.index(chars.len() + 1);
            match how {
                0 if i < chars.len() => {
                    chars.remove(i);
                }
                1 if i < chars.len() => chars[i] = c,
                _ => chars.insert(i, c),
            }
            chars.into_iter().collect::<String>()
        });
    prop_oneof![
        near_key().prop_map(String::into_bytes),
        bent.prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// What one record says, owned (a [`Fields`] borrows it).
#[derive(Debug, Clone)]
struct Record {
    label: String,
    service: String,
    node: String,
    port: u16,
    weight: u32,
    state: String,
    tls: bool,
}

impl Record {
    fn fields(&self) -> Fields<'_> {
        Fields {
            label: &self.label,
            service: &self.service,
            node: &self.node,
            port: self.port,
            weight: self.weight,
            state: &self.state,
            tls: self.tls,
        }
    }
}

/// A record as our providers make them.
fn valid_record() -> impl Strategy<Value = Record> {
    (
        crate::regex("[a-z0-9][a-z0-9_-]{0,39}"),
        crate::regex("[a-z0-9-]{1,16}"),
        1..=u16::MAX,
        1..=MAX_WEIGHT,
        select(vec!["up", "draining", "down"]),
        any::<bool>(),
    )
        .prop_map(|(service, node, port, weight, state, tls)| Record {
            label: wire::instance_label(&service, &node),
            service,
            node,
            port,
            weight,
            state: state.into(),
            tls,
        })
}

/// A record as anyone may send it.
fn any_record() -> impl Strategy<Value = Record> {
    (
        any::<String>(),
        any::<String>(),
        any::<String>(),
        any::<u16>(),
        any::<u32>(),
        any::<String>(),
        any::<bool>(),
    )
        .prop_map(|(label, service, node, port, weight, state, tls)| Record {
            label,
            service,
            node,
            port,
            weight,
            state,
            tls,
        })
}

/// Values for the seal's keys: numbers, base64url of any bytes (an address
/// list with any count byte, a tag of any length), or any text.
fn seal_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        crate::regex(" ?[0-9]{0,21} ?"),
        prop::collection::vec(any::<u8>(), 0..90).prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
        any::<String>(),
    ]
}

fn seal_like() -> impl Strategy<Value = HashMap<String, String>> {
    let key = prop_oneof![
        Just(KEY_TS.to_owned()),
        Just(KEY_ADDR.to_owned()),
        Just(KEY_SIG.to_owned()),
        any::<String>(),
    ];
    prop::collection::hash_map(key, seal_value(), 0..5)
}

/// Up to one more than a record may sign, so the decoder's limit is met.
fn addrs() -> impl Strategy<Value = Vec<IpAddr>> {
    prop::collection::vec(any::<IpAddr>(), 0..=MAX_SIGNED_ADDRS + 1)
}

/// The order the seal stores addresses in: IPv4 first, each family in the
/// order given.
fn canonical(addrs: &[IpAddr]) -> Vec<IpAddr> {
    let (mut v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = addrs.iter().partition(|a| a.is_ipv4());
    v4.extend(v6);
    v4
}

/// Signing times as clocks give them: up to the year 2286, where unix time
/// gets an eleventh digit (the TXT budget counts ten).
fn signing_time() -> impl Strategy<Value = u64> {
    0..10_000_000_000u64
}

fn key(bytes: [u8; KEY_LEN]) -> AdvertKey {
    AdvertKey::new(&ClusterKey::from_bytes(bytes))
}

fn verify(
    key: &AdvertKey,
    rec: &Record,
    txt: &HashMap<String, String>,
    now: u64,
) -> Result<Vec<IpAddr>, Reject> {
    let instance = format!("{}.{SERVICE_TYPE}", rec.label);
    Verifier::new(key.clone()).check(
        &instance,
        &rec.fields(),
        |k| txt.get(k).map(String::as_str),
        now,
    )
}

/// One change to a sealed record, of what the seal covers.
#[derive(Debug, Clone)]
enum Change {
    Label(String),
    Service(String),
    Node(String),
    Port(u16),
    Weight(u32),
    State(String),
    Tls,
    SignedAt(u64),
    Addrs(Vec<IpAddr>),
    /// The tag with the character at this index replaced.
    Tag(prop::sample::Index, char),
    /// Sealed with another key.
    Key([u8; KEY_LEN]),
}

fn change() -> impl Strategy<Value = Change> {
    let text = || prop_oneof![crate::regex("[a-z0-9@_-]{0,20}"), any::<String>()];
    let b64 = select(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            .chars()
            .collect::<Vec<_>>(),
    );
    prop_oneof![
        text().prop_map(Change::Label),
        text().prop_map(Change::Service),
        text().prop_map(Change::Node),
        any::<u16>().prop_map(Change::Port),
        any::<u32>().prop_map(Change::Weight),
        text().prop_map(Change::State),
        Just(Change::Tls),
        signing_time().prop_map(Change::SignedAt),
        addrs().prop_map(Change::Addrs),
        (any::<prop::sample::Index>(), b64).prop_map(|(i, c)| Change::Tag(i, c)),
        any::<[u8; KEY_LEN]>().prop_map(Change::Key),
    ]
}

/// A label holding a dot, a control character or what invalid UTF-8
/// becomes, anywhere.
fn bad_label() -> impl Strategy<Value = String> {
    let bad = prop_oneof![
        Just('.'),
        Just(char::REPLACEMENT_CHARACTER),
        prop::char::range('\0', '\x1f'),
        prop::char::range('\x7f', '\u{9f}'),
    ];
    let part = || prop_oneof![crate::regex("[a-z0-9@ -]{0,12}"), any::<String>()];
    (part(), bad, part()).prop_map(|(a, c, b)| format!("{a}{c}{b}"))
}

/// Text near the `--credentials` grammar, or any.
fn credentials_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("="),
        Just(":"),
        Just("redis"),
        Just("Cache"),
        Just("postgres"),
        Just("/etc/pass"),
        Just("a.b"),
        Just(" "),
        Just("é"),
        Just("\n"),
    ];
    prop_oneof![
        prop::collection::vec(piece, 0..8).prop_map(|p| p.concat()),
        any::<String>(),
    ]
}

/// One line of a credentials file: a secret-looking token (long enough
/// that it cannot turn up in a message by chance), nothing, or any bytes.
#[derive(Debug, Clone)]
enum Line {
    Token(String),
    Empty,
    Bytes(Vec<u8>),
}

fn credentials_file() -> impl Strategy<Value = (Vec<Line>, Vec<&'static str>, bool)> {
    let line = prop_oneof![
        4 => crate::regex("[A-Za-z0-9+/]{12,24}").prop_map(Line::Token),
        1 => Just(Line::Empty),
        1 => prop::collection::vec(any::<u8>(), 1..20)
            .prop_map(|b| Line::Bytes(b.into_iter().filter(|&b| b != b'\n').collect())),
    ];
    (
        prop::collection::vec(line, 0..5),
        prop::collection::vec(select(vec!["\n", "\r\n"]), 5),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(crate::config())]

    /// Whatever the file holds, it is a key or it is not; a key is read
    /// from its one canonical text, and its `Debug` shows none of it.
    #[test]
    fn any_key_file_is_a_key_or_refused(text in key_text()) {
        let Some(key) = ClusterKey::parse(&text) else {
            return Ok(());
        };
        let written = key.to_file_text();
        let given = std::str::from_utf8(&text).unwrap();
        prop_assert_eq!(written.trim(), given.trim());
        let shown = format!("{key:?}");
        prop_assert!(!shown.contains(written.trim()), "{shown}");
    }

    /// Exactly 32 bytes in base64 are a key, whatever whitespace is
    /// around them, and the key is those bytes.
    #[test]
    fn exactly_32_bytes_in_base64_are_a_key(
        bytes in prop::collection::vec(any::<u8>(), 0..=48),
        pre in blank(),
        post in blank(),
    ) {
        let text = format!("{pre}{}{post}", STANDARD.encode(&bytes));
        let got = ClusterKey::parse(text.as_bytes());
        prop_assert_eq!(got.is_some(), bytes.len() == KEY_LEN, "{:?}", text);
        if let Some(key) = got {
            let want = ClusterKey::from_bytes(bytes.try_into().unwrap());
            prop_assert_eq!(key.to_file_text(), want.to_file_text());
        }
    }

    /// What `keygen` writes reads back as the same key.
    #[test]
    fn a_written_key_reads_back(bytes in any::<[u8; KEY_LEN]>()) {
        let key = ClusterKey::from_bytes(bytes);
        let back = ClusterKey::parse(key.to_file_text().as_bytes());
        prop_assert!(back.is_some());
        let back = back.unwrap();
        prop_assert_eq!(back.to_file_text(), key.to_file_text());
        prop_assert_eq!(back.fingerprint(), key.fingerprint());
    }

    /// Whatever a stranger sends, the check answers; with no `sig` it is
    /// always "unsigned", and nothing it accepts signs more addresses than
    /// a record may.
    #[test]
    fn any_record_is_checked_without_panic(
        rec in any_record(),
        txt in seal_like(),
        now in any::<u64>(),
        key_bytes in any::<[u8; KEY_LEN]>(),
    ) {
        let got = verify(&key(key_bytes), &rec, &txt, now);
        if !txt.contains_key(KEY_SIG) {
            prop_assert_eq!(got, Err(Reject::Unsigned));
        } else if let Ok(addrs) = got {
            prop_assert!(addrs.len() <= MAX_SIGNED_ADDRS);
        }
    }

    /// A sealed record verifies, within its validity, and yields exactly
    /// the addresses it signs (the address list reads back as written); of
    /// more than a record may hold, the first ones are signed.
    #[test]
    fn a_sealed_record_verifies_with_its_addresses(
        rec in valid_record(),
        addrs in addrs(),
        signed_at in signing_time(),
        age in 0..VALIDITY.as_secs(),
        key_bytes in any::<[u8; KEY_LEN]>(),
    ) {
        let k = key(key_bytes);
        let txt: HashMap<String, String> =
            k.sign(&rec.fields(), signed_at, &addrs).into_iter().collect();
        let got = verify(&k, &rec, &txt, signed_at + age);
        let mut want = canonical(&addrs);
        want.truncate(MAX_SIGNED_ADDRS);
        prop_assert_eq!(got, Ok(want));
    }

    /// Any change to what the seal covers, or to the seal, is refused.
    #[test]
    fn any_change_to_a_sealed_record_is_refused(
        rec in valid_record(),
        addrs in prop::collection::vec(any::<IpAddr>(), 0..=MAX_SIGNED_ADDRS),
        signed_at in signing_time(),
        key_bytes in any::<[u8; KEY_LEN]>(),
        change in change(),
    ) {
        let k = key(key_bytes);
        let mut txt: HashMap<String, String> =
            k.sign(&rec.fields(), signed_at, &addrs).into_iter().collect();
        prop_assert!(verify(&k, &rec, &txt, signed_at).is_ok());
        let mut got = rec.clone();
        let changed = match change.clone() {
            Change::Label(v) => std::mem::replace(&mut got.label, v) != got.label,
            Change::Service(v) => std::mem::replace(&mut got.service, v) != got.service,
            Change::Node(v) => std::mem::replace(&mut got.node, v) != got.node,
            Change::Port(v) => std::mem::replace(&mut got.port, v) != got.port,
            Change::Weight(v) => std::mem::replace(&mut got.weight, v) != got.weight,
            Change::State(v) => std::mem::replace(&mut got.state, v) != got.state,
            Change::Tls => {
                got.tls = !got.tls;
                true
            }
            Change::SignedAt(at) => {
                txt.insert(KEY_TS.into(), at.to_string());
                at != signed_at
            }
            Change::Addrs(other) => {
                let sealed = k.sign(&rec.fields(), signed_at, &other);
                let (_, value) = sealed.into_iter().find(|(key, _)| key == KEY_ADDR).unwrap();
                txt.insert(KEY_ADDR.into(), value);
                canonical(&other) != canonical(&addrs)
            }
            Change::Tag(at, c) => {
                let mut tag: Vec<char> = txt[KEY_SIG].chars().collect();
                let i = at.index(tag.len());
                let before = std::mem::replace(&mut tag[i], c);
                txt.insert(KEY_SIG.into(), tag.into_iter().collect());
                before != c
            }
            Change::Key(other) => {
                txt = key(other).sign(&rec.fields(), signed_at, &addrs).into_iter().collect();
                other != key_bytes
            }
        };
        prop_assume!(changed);
        prop_assert_eq!(
            verify(&k, &got, &txt, signed_at),
            Err(Reject::BadSignature),
            "{:?}", change
        );
    }

    /// Our own record, sealed over the addresses `fit_addrs` picks from any
    /// host's, fits the wire contract's budget and verifies with them; it
    /// signs an address whenever the host has one worth dialing.
    #[test]
    fn a_sealed_record_fits_the_txt_budget(
        rec in valid_record(),
        host in prop::collection::vec(any::<IpAddr>(), 0..12),
        signed_at in signing_time(),
    ) {
        let state = match rec.state.as_str() {
            "up" => State::Up,
            "draining" => State::Draining,
            _ => State::Down,
        };
        let mut txt = wire::txt(&rec.service, &rec.node, rec.weight, state, rec.tls);
        let (signed, left_out) = fit_addrs(&host, pairs_len(&txt));
        let k = key([7; KEY_LEN]);
        txt.extend(k.sign(&rec.fields(), signed_at, &signed));
        let len = pairs_len(&txt);
        prop_assert!(len < TXT_BUDGET, "{} bytes: {:?}", len, txt);
        prop_assert!(txt.iter().all(|(k, _)| k.len() <= 9));
        prop_assert!(signed.len() <= MAX_SIGNED_ADDRS);
        prop_assert!(signed.iter().chain(&left_out).all(|a| host.contains(a)));
        let worth = host.iter().any(|a| !a.is_unspecified() && !a.is_multicast());
        prop_assert_eq!(!signed.is_empty(), worth, "{:?} from {:?}", signed, host);
        let txt: HashMap<String, String> = txt.into_iter().collect();
        prop_assert_eq!(verify(&k, &rec, &txt, signed_at), Ok(canonical(&signed)));
    }

    /// Whatever the name, port and size, the check answers; what it lets
    /// through has a plain label of ours, a port and a bounded TXT.
    #[test]
    fn any_instance_is_checked_without_panic(
        name in prop_oneof![
            any::<String>(),
            any::<String>().prop_map(|l| format!("{l}.{SERVICE_TYPE}")),
        ],
        port in any::<u16>(),
        txt_bytes in any::<usize>(),
    ) {
        if check(&name, port, txt_bytes).is_ok() {
            let label = wire::label_of(&name);
            prop_assert!(label.is_some(), "{:?}", name);
            let label = label.unwrap();
            prop_assert!(!label.is_empty() && label.len() <= 63, "{:?}", label);
            prop_assert!(!label.contains('.') && !label.chars().any(char::is_control));
            prop_assert!(port != 0 && txt_bytes <= MAX_TXT_BYTES);
        }
    }

    /// A label with a dot or a control character is refused, whatever else
    /// the record says.
    #[test]
    fn a_label_with_a_dot_or_control_character_is_refused(
        label in bad_label(),
        port in any::<u16>(),
        txt_bytes in any::<usize>(),
    ) {
        let name = format!("{label}.{SERVICE_TYPE}");
        prop_assert_eq!(check(&name, port, txt_bytes), Err(Flaw::Name), "{:?}", label);
    }

    /// With a good label, port 0 and a TXT over the limit are refused, and
    /// anything else passes.
    #[test]
    fn port_0_and_txt_over_the_limit_are_refused(
        rec in valid_record(),
        port in any::<u16>(),
        txt_bytes in prop_oneof![0..=MAX_TXT_BYTES * 2, any::<usize>()],
    ) {
        let name = format!("{}.{SERVICE_TYPE}", rec.label);
        let want = if port == 0 {
            Err(Flaw::Port)
        } else if txt_bytes > MAX_TXT_BYTES {
            Err(Flaw::Txt)
        } else {
            Ok(())
        };
        prop_assert_eq!(check(&name, port, txt_bytes), want);
    }

    /// Any `--credentials` value parses or is refused, and what parses
    /// writes back as text that parses the same.
    #[test]
    fn any_credentials_spec_parses_back(s in credentials_like()) {
        if let Ok(spec) = s.parse::<CredentialsSpec>() {
            let again = spec.to_string().parse::<CredentialsSpec>();
            prop_assert_eq!(again, Ok(spec));
        }
    }

    /// Every service name and file path make a spec that shows as written
    /// (the name in lower case).
    #[test]
    fn every_credentials_spec_reads_as_written(
        service in crate::regex("[A-Za-z0-9][A-Za-z0-9_-]{0,39}"),
        file in any::<String>().prop_filter("a path", |f| !f.is_empty()),
    ) {
        let text = format!("{service}=redis:{file}");
        let spec = text.parse::<CredentialsSpec>();
        prop_assert!(spec.is_ok(), "{:?}: {:?}", text, spec);
        let spec = spec.unwrap();
        prop_assert_eq!(&spec.service, &service.to_ascii_lowercase());
        prop_assert_eq!(&spec.file, &PathBuf::from(&file));
        prop_assert_eq!(spec.to_string(), format!("{}=redis:{file}", spec.service));
    }
}

/// Whatever a credentials file holds, loading it gives credentials (one
/// or two non-empty lines) or an error, and no line of it shows in the
/// error or in the credentials' `Debug`. (Not in `proptest!`: its files
/// need one directory, removed at the end.)
#[test]
fn a_credentials_file_never_shows_in_errors_or_debug() {
    let dir = crate::common::TempDir::new();
    let mut runner = TestRunner::new(crate::config());
    let result = runner.run(&credentials_file(), |(lines, ends, final_end)| {
        let mut body = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                body.extend_from_slice(ends[i].as_bytes());
            }
            match line {
                Line::Token(t) => body.extend_from_slice(t.as_bytes()),
                Line::Empty => {}
                Line::Bytes(b) => body.extend_from_slice(b),
            }
        }
        if final_end && !lines.is_empty() {
            body.extend_from_slice(ends[0].as_bytes());
        }
        let file = dir.secret(&format!("pass-{}", fastrand::u64(..)), &body);
        let spec: CredentialsSpec = format!("cache=redis:{}", file.display()).parse().unwrap();
        let loaded = spec.load();
        std::fs::remove_file(&file).unwrap();
        let shown = match &loaded {
            Ok(c) => format!("{c:?}"),
            Err(e) => format!("{e} {e:?}"),
        };
        for line in &lines {
            if let Line::Token(t) = line {
                prop_assert!(!shown.contains(t.as_str()), "{:?} in {}", t, shown);
            }
        }
        if lines
            .iter()
            .all(|l| matches!(l, Line::Token(_) | Line::Empty))
        {
            // One line end closes the file: an empty last line without
            // one is that line end.
            let mut read = lines.clone();
            if !final_end && read.len() >= 2 && matches!(read.last(), Some(Line::Empty)) {
                read.pop();
            }
            let want =
                (1..=2).contains(&read.len()) && read.iter().all(|l| matches!(l, Line::Token(_)));
            prop_assert_eq!(loaded.is_ok(), want, "{:?}: {}", lines, shown);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
