//! TXT records from the network: anyone on the link can send any keys,
//! values and bytes.

use std::collections::HashMap;

use mesh_amb::discovery::wire::{parse_txt, txt, Advert, State};
use mesh_amb::security::advert::pairs_len;
use mesh_amb::spec::{parse_name, MAX_WEIGHT};
use proptest::prelude::*;

/// A value for one of our keys: a plausible one, or anything.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        crate::regex("[a-zA-Z0-9_.-]{0,12}"),
        crate::regex(" ?(up|down|draining|0|1|1000|1001|4294967296|-1) ?"),
        any::<String>(),
    ]
}

fn record() -> impl Strategy<Value = HashMap<String, String>> {
    let key = prop_oneof![
        Just("svc".to_owned()),
        Just("weight".to_owned()),
        Just("state".to_owned()),
        Just("v".to_owned()),
        Just("node".to_owned()),
        any::<String>(),
    ];
    prop::collection::hash_map(key, value(), 0..8)
}

fn state() -> impl Strategy<Value = State> {
    prop_oneof![Just(State::Up), Just(State::Draining), Just(State::Down)]
}

proptest! {
    #![proptest_config(crate::config())]

    /// Whatever a stranger advertises, what a consumer takes from it is a
    /// valid service name and a weight in range.
    #[test]
    fn any_record_gives_a_valid_advert_or_none(r in record()) {
        let Some(a) = parse_txt(|k| r.get(k).map(String::as_str)) else {
            return Ok(());
        };
        prop_assert_eq!(parse_name(&a.service), Ok(a.service.clone()));
        prop_assert!((1..=MAX_WEIGHT).contains(&a.weight), "{a:?}");
        prop_assert!(r.contains_key("svc"));
    }

    /// Our own records read back as what was advertised, and stay within
    /// the wire contract's budget (keys of 9 characters at most, the whole
    /// record far under RFC 6763's ~200 bytes) whatever the name and id.
    #[test]
    fn our_own_records_read_back_and_fit_the_budget(
        service in crate::regex("[a-z0-9][a-z0-9_-]{0,39}"),
        node in crate::regex("[a-z0-9-]{1,16}"),
        weight in 1..=MAX_WEIGHT,
        state in state(),
        tls in any::<bool>(),
    ) {
        let t = txt(&service, &node, weight, state, tls);
        let map: HashMap<&str, &str> = t.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let got = parse_txt(|k| map.get(k).copied());
        prop_assert_eq!(got, Some(Advert { service, weight, state, tls }));
        prop_assert!(t.iter().all(|(k, _)| k.len() <= 9));
        let bytes = pairs_len(&t);
        prop_assert!(bytes < 200, "{bytes} bytes: {t:?}");
    }
}
