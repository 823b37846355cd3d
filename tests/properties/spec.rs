//! `--consume`/`--provide` specs and Docker-link variables: typed by users,
//! written by scripts.

use std::net::{IpAddr, Ipv6Addr};

use mesh_amb::spec::{
    consumes_from_env, parse_backend, parse_consume, parse_provide, BackendAddr, ConsumeSpec, Host,
    ProvideSpec, MAX_WEIGHT,
};
use proptest::prelude::*;

/// Text made of the pieces specs are made of, so that most cases come
/// near the grammar's edges rather than failing at the first character.
fn spec_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just(":"),
        Just("="),
        Just(","),
        Just("*"),
        Just("["),
        Just("]"),
        Just("."),
        Just("-"),
        Just("_"),
        Just(" "),
        Just("::1"),
        Just("redis"),
        Just("Db"),
        Just("10.0.0.5"),
        Just("fe80::1"),
        Just("0"),
        Just("1"),
        Just("6379"),
        Just("65535"),
        Just("65536"),
        Just("1000"),
        Just("1001"),
        Just("é"),
        Just("\n"),
    ];
    prop::collection::vec(piece, 0..16).prop_map(|p| p.concat())
}

/// Any text: near the grammar, or arbitrary Unicode.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![spec_like(), any::<String>()]
}

fn name() -> impl Strategy<Value = String> {
    crate::regex("[a-z0-9][a-z0-9_-]{0,39}")
}

fn host() -> impl Strategy<Value = Host> {
    prop_oneof![
        any::<IpAddr>()
            .prop_filter("link-local needs a zone", |ip| {
                !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
            })
            .prop_map(Host::Ip),
        (any::<u64>(), crate::regex("[a-z0-9._-]{1,15}")).prop_map(|(low, zone)| Host::Scoped(
            Ipv6Addr::from(0xfe80u128 << 112 | u128::from(low)),
            zone
        )),
        crate::regex("[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?){0,3}")
            .prop_map(Host::Name),
    ]
}

fn backend() -> impl Strategy<Value = BackendAddr> {
    (host(), 1..=u16::MAX, 1..=MAX_WEIGHT, any::<bool>()).prop_map(|(host, port, weight, tls)| {
        BackendAddr {
            host,
            port,
            weight,
            tls,
        }
    })
}

fn consume() -> impl Strategy<Value = ConsumeSpec> {
    let backends = prop::collection::vec(backend(), 0..5).prop_map(|mut b| {
        // A spec lists each backend once.
        let mut seen = std::collections::HashSet::new();
        b.retain(|b| seen.insert((b.host.clone(), b.port)));
        b
    });
    (name(), 1..=u16::MAX, backends).prop_map(|(name, port, backends)| ConsumeSpec {
        name,
        port,
        backends,
    })
}

fn provide() -> impl Strategy<Value = ProvideSpec> {
    let tls_port = prop::option::of(1..=u16::MAX);
    (name(), 1..=u16::MAX, 1..=MAX_WEIGHT, tls_port).prop_map(|(name, port, weight, tls_port)| {
        ProvideSpec {
            name,
            port,
            weight,
            tls_port,
        }
    })
}

proptest! {
    #![proptest_config(crate::config())]

    /// Whatever the text, a spec parses or is refused; what parses is
    /// written back as text that parses to the same spec.
    #[test]
    fn any_text_parses_or_is_refused_and_what_parses_round_trips(s in text()) {
        if let Ok(c) = parse_consume(&s) {
            prop_assert_eq!(parse_consume(&c.to_string()), Ok(c.clone()));
            prop_assert!(c.backends.iter().all(|b| (1..=MAX_WEIGHT).contains(&b.weight)));
        }
        if let Ok(p) = parse_provide(&s) {
            prop_assert_eq!(parse_provide(&p.to_string()), Ok(p.clone()));
            prop_assert!(p.port > 0 && (1..=MAX_WEIGHT).contains(&p.weight));
        }
        if let Ok(b) = parse_backend(&s) {
            prop_assert_eq!(parse_backend(&b.to_string()), Ok(b.clone()));
            prop_assert!(b.port > 0);
        }
    }

    /// Every spec the types can hold is written as text that reads back
    /// the same.
    #[test]
    fn every_spec_round_trips_through_text(c in consume(), p in provide()) {
        prop_assert_eq!(c.to_string().parse::<ConsumeSpec>(), Ok(c.clone()));
        prop_assert_eq!(p.to_string().parse::<ProvideSpec>(), Ok(p.clone()));
        for b in &c.backends {
            prop_assert_eq!(b.to_string().parse::<BackendAddr>(), Ok(b.clone()));
        }
    }

    /// Any environment: Docker-link variables become consumes with one
    /// backend each and the service named in the variable; nothing else
    /// panics or slips through.
    #[test]
    fn any_environment_gives_consumes_or_an_error(
        vars in prop::collection::vec(
            (
                prop_oneof![
                    crate::regex("[A-Z_]{1,6}_PORT_[0-9]{1,6}_TCP"),
                    crate::regex("[A-Za-z0-9_.]{0,6}(_PORT_)?[0-9]{0,3}(_TCP)?"),
                    any::<String>(),
                ],
                prop_oneof![
                    ("tcp://", spec_like()).prop_map(|(t, s)| t.to_owned() + &s),
                    text(),
                ],
            ),
            0..6,
        )
    ) {
        let links = vars
            .iter()
            .filter(|(k, _)| {
                k.strip_suffix("_TCP")
                    .and_then(|p| p.rsplit_once("_PORT_"))
                    .is_some_and(|(a, p)| {
                        !a.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
                    })
            })
            .count();
        if let Ok(consumes) = consumes_from_env(vars) {
            prop_assert_eq!(consumes.len(), links);
            for c in consumes {
                prop_assert_eq!(c.backends.len(), 1);
                prop_assert_eq!(c.to_string().parse::<ConsumeSpec>(), Ok(c.clone()));
            }
        }
    }
}
