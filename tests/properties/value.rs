//! Typed setting values: the text of a flag, a variable or a config file.

use std::net::IpAddr;
use std::time::Duration;

use mesh_amb::settings::{Count, Ip, NodeId, OrOff, Period, Wait, MAX_DURATION};
use proptest::prelude::*;

/// Text near the value grammars (units, `off`, digits, signs), or any.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("0"),
        Just("7"),
        Just("99999999999999999999"),
        Just("ms"),
        Just("s"),
        Just("m"),
        Just("h"),
        Just("days"),
        Just("y"),
        Just("ns"),
        Just(" "),
        Just("-"),
        Just("+"),
        Just("."),
        Just(":"),
        Just("off"),
        Just("::1"),
        Just("127.0.0.1"),
        Just("Node"),
    ];
    prop_oneof![
        prop::collection::vec(piece, 0..8).prop_map(|p| p.concat()),
        any::<String>(),
    ]
}

fn duration(max: Duration) -> impl Strategy<Value = Duration> {
    let max = max.as_nanos() as u64;
    prop_oneof![
        // Whole units, as users write them, and any nanosecond count.
        (0..=max / 1_000_000_000).prop_map(Duration::from_secs),
        (0..=max / 1_000_000).prop_map(Duration::from_millis),
        (0..=max).prop_map(Duration::from_nanos),
    ]
}

/// `T` parses `s` or refuses it; what it accepts it writes back as text
/// that parses to the same value.
fn parses_back<T>(s: &str) -> Result<(), TestCaseError>
where
    T: std::str::FromStr + std::fmt::Display + PartialEq + std::fmt::Debug,
    T::Err: std::fmt::Debug,
{
    if let Ok(v) = s.parse::<T>() {
        let again = v.to_string().parse::<T>();
        prop_assert!(
            matches!(&again, Ok(w) if *w == v),
            "{s:?} -> {v:?} -> {:?} -> {again:?}",
            v.to_string()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn any_text_parses_or_is_refused_and_what_parses_round_trips(s in text()) {
        parses_back::<Wait>(&s)?;
        parses_back::<Period>(&s)?;
        parses_back::<OrOff<Period>>(&s)?;
        parses_back::<OrOff<Wait>>(&s)?;
        parses_back::<Count<100>>(&s)?;
        parses_back::<Count<1_000_000>>(&s)?;
        parses_back::<Ip>(&s)?;
        parses_back::<NodeId>(&s)?;
        if let Ok(w) = s.parse::<Wait>() {
            prop_assert!(w.0 <= MAX_DURATION);
        }
        if let Ok(p) = s.parse::<Period>() {
            prop_assert!(!p.0.is_zero() && p.0 <= MAX_DURATION);
        }
    }

    /// Every duration a setting can hold is written as text that reads
    /// back exactly, so `--help`'s defaults and a saved config mean what
    /// they say.
    #[test]
    fn every_duration_round_trips_through_text(d in duration(MAX_DURATION)) {
        prop_assert_eq!(Wait(d).to_string().parse::<Wait>(), Ok(Wait(d)));
        if !d.is_zero() {
            prop_assert_eq!(Period(d).to_string().parse::<Period>(), Ok(Period(d)));
            let on = OrOff(Some(Period(d)));
            prop_assert_eq!(on.to_string().parse::<OrOff<Period>>(), Ok(on));
        }
    }

    #[test]
    fn every_count_address_and_node_id_round_trips(
        n in 1..=100u32,
        ip in any::<IpAddr>(),
        id in crate::regex("[A-Za-z0-9-]{1,16}"),
    ) {
        prop_assert_eq!(n.to_string().parse::<Count<100>>().map(Count::get), Ok(n));
        prop_assert_eq!(Ip(ip).to_string().parse::<Ip>(), Ok(Ip(ip)));
        let node: NodeId = id.parse().map_err(|e| TestCaseError::fail(format!("{id}: {e}")))?;
        prop_assert_eq!(node.to_string(), id.to_ascii_lowercase());
        prop_assert_eq!(node.to_string().parse::<NodeId>(), Ok(node));
    }
}
