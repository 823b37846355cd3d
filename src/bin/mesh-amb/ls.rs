//! `mesh-amb ls`: what the link advertises under `_amb._tcp`, as a table
//! for people or JSON for scripts. The browse itself is the library's
//! ([`mesh_amb::discovery::listing`]).
//!
//! The JSON is an array with one object per instance, always with every
//! field (null when it does not apply):
//!
//! | field       | value                                                     |
//! |-------------|-----------------------------------------------------------|
//! | `service`   | `svc=`, normalised; null when absent or invalid            |
//! | `instance`  | the instance label (`redis@7f3a9c21`)                      |
//! | `host`      | SRV target; null when unresolved                           |
//! | `addresses` | resolved addresses, IPv4 first (`fe80::1%eth0` for link-local) |
//! | `port`      | SRV port; null when unresolved                             |
//! | `state`     | `up`, `draining`, `down`, `invalid` or `unresolved`        |
//! | `problem`   | why `state` is `invalid`                                   |
//! | `weight`    | `weight=` (1 when absent or invalid)                       |
//! | `tls`       | the port speaks mutual TLS (`tls=1`)                       |
//! | `signed`    | `no`, `yes` (not checked: no key), `valid` or `invalid`    |
//! | `seal_problem` | why `signed` is `invalid`                              |
//! | `node`      | `node=`: the advertising mesh-amb's node id                |
//! | `source`    | `mesh-amb` (a record with `node=`) or `other` (Avahi, Bonjour) |

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use mesh_amb::discovery::listing::{self, Instance, Listing, Query, DEFAULT_TIMEOUT, MAX_LISTED};
use mesh_amb::security::ClusterKey;
use mesh_amb::settings::{DiscoverySettings, Period};

use crate::columns::{self, escape};
use crate::Failure;

/// `mesh-amb ls` arguments.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only instances of this service (their svc= TXT key).
    #[arg(value_name = "SERVICE")]
    service: Option<String>,

    /// How long to wait for answers (e.g. 3, 500ms, 10s).
    #[arg(long, value_name = "DURATION", default_value_t = Period(DEFAULT_TIMEOUT))]
    timeout: Period,

    /// Print a JSON array (one object per instance) instead of a table.
    #[arg(long)]
    json: bool,

    /// Browse only on this interface (repeatable). Default: all.
    #[arg(long, value_name = "IFACE")]
    interface: Vec<String>,

    /// Cluster key file: check each instance's signature as a consumer
    /// holding the key would (valid or INVALID), instead of only showing
    /// whether there is one.
    #[arg(long, value_name = "FILE", env = "MESH_AMB_CLUSTER_KEY")]
    cluster_key: Option<PathBuf>,
}

/// Runs `mesh-amb ls`.
pub fn run(args: LsArgs) -> Result<(), Failure> {
    let service = args
        .service
        .as_deref()
        .map(|s| {
            mesh_amb::spec::parse_name(s).map_err(|e| Failure::Usage(format!("SERVICE '{s}': {e}")))
        })
        .transpose()?;
    let interfaces = DiscoverySettings {
        interfaces: args.interface,
        ..DiscoverySettings::default()
    };
    interfaces
        .validate()
        .map_err(|e| Failure::Usage(format!("--{e}")))?;
    let key = match &args.cluster_key {
        Some(path) => Some(
            ClusterKey::load(path).map_err(|e| Failure::Usage(format!("--cluster-key: {e}")))?,
        ),
        None => None,
    };
    let query = Query {
        interfaces: &interfaces.interfaces,
        key: key.as_ref(),
        service: service.as_deref(),
        timeout: args.timeout.0,
    };
    let listing = listing::browse(&query).map_err(Failure::Runtime)?;
    let out = if args.json {
        json(&listing)
    } else {
        table(&listing.instances)
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
        .map_err(Failure::Runtime)?;
    if listing.left_out > 0 {
        eprintln!(
            "warning: kept the first {MAX_LISTED} instances; {} more announcements were left \
             out (a flood of records on the link?)",
            listing.left_out
        );
    }
    if listing.instances.is_empty() && !args.json {
        let what = match &service {
            Some(s) => format!("_amb._tcp instances of {s}"),
            None => "_amb._tcp instances".to_owned(),
        };
        eprintln!(
            "no {what} answered within {} (is multicast allowed? UDP 5353)",
            args.timeout
        );
    }
    Ok(())
}

/// One instance in the JSON output: the documented, stable field names.
#[derive(Serialize)]
struct Row<'a> {
    service: Option<&'a str>,
    instance: &'a str,
    host: Option<&'a str>,
    addresses: &'a [String],
    port: Option<u16>,
    state: &'static str,
    problem: Option<&'static str>,
    weight: u32,
    tls: bool,
    signed: &'static str,
    seal_problem: Option<&'static str>,
    node: Option<&'a str>,
    source: &'static str,
}

fn json(listing: &Listing) -> String {
    let rows: Vec<Row> = listing
        .instances
        .iter()
        .map(|i| Row {
            service: i.service.as_deref(),
            instance: &i.label,
            host: i.host.as_deref(),
            addresses: &i.addresses,
            port: i.port,
            state: i.status.word(),
            problem: i.status.problem(),
            weight: i.weight,
            tls: i.tls,
            signed: i.seal.word(),
            seal_problem: i.seal.problem(),
            node: i.node.as_deref(),
            source: source(i),
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&rows).expect("plain data serializes");
    text.push('\n');
    text
}

fn source(i: &Instance) -> &'static str {
    if i.node.is_some() {
        "mesh-amb"
    } else {
        "other"
    }
}

const HEADER: [&str; 10] = [
    "SERVICE",
    "INSTANCE",
    "HOST",
    "ADDRESSES",
    "PORT",
    "STATE",
    "WEIGHT",
    "TLS",
    "SIGNED",
    "SOURCE",
];

/// Aligned columns, one row per instance in the listing's order (grouped
/// by service); nothing at all when there is no instance.
fn table(instances: &[Instance]) -> String {
    if instances.is_empty() {
        return String::new();
    }
    let dash = || "-".to_owned();
    let mut rows: Vec<Vec<String>> = vec![HEADER.map(str::to_owned).to_vec()];
    rows.extend(instances.iter().map(|i| {
        let signed = match i.seal.problem() {
            Some(why) => format!("INVALID ({why})"),
            None => i.seal.word().to_owned(),
        };
        let addresses = match i.addresses.as_slice() {
            [] => dash(),
            a => a.join(","),
        };
        [
            i.service.as_deref().map_or_else(dash, escape),
            escape(&i.label),
            i.host.as_deref().map_or_else(dash, escape),
            addresses,
            i.port.map_or_else(dash, |p| p.to_string()),
            i.status.to_string(),
            i.weight.to_string(),
            if i.tls { "yes" } else { "no" }.to_owned(),
            signed,
            source(i).to_owned(),
        ]
        .to_vec()
    }));
    columns::aligned(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_amb::discovery::listing::{Seal, Status};
    use mesh_amb::security::advert::Reject;

    fn instance(service: Option<&str>, label: &str) -> Instance {
        Instance {
            label: label.to_owned(),
            service: service.map(str::to_owned),
            node: Some("7f3a9c21".into()),
            host: Some("amb-7f3a9c21.local.".into()),
            addresses: vec!["10.0.0.1".into(), "fe80::1%eth0".into()],
            port: Some(6379),
            status: Status::Up,
            weight: 1,
            tls: false,
            seal: Seal::Unsigned,
        }
    }

    #[test]
    fn the_table_is_aligned() {
        let mut stranger = instance(None, "odd\x1b[2Jname");
        stranger.status = Status::Invalid("no valid svc");
        stranger.seal = Seal::Invalid(Reject::BadSignature);
        stranger.node = None;
        stranger.port = None;
        let text = table(&[instance(Some("redis"), "redis@7f3a9c21"), stranger]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("SERVICE  INSTANCE "), "{text}");
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[1][col..col + 2], "up", "{text}");
        assert_eq!(&lines[2][col..col + 21], "invalid: no valid svc", "{text}");
        assert!(lines[2].starts_with("-        odd\\u{1b}[2Jname"), "{text}");
        assert!(
            lines[2].contains("INVALID (bad signature)  other"),
            "{text}"
        );
        assert_eq!(table(&[]), "");
    }

    #[test]
    fn json_has_every_field() {
        let l = Listing::default();
        assert_eq!(json(&l), "[]\n");
        let l = Listing {
            instances: vec![instance(Some("redis"), "redis@7f3a9c21")],
            left_out: 0,
        };
        let v: serde_json::Value = serde_json::from_str(&json(&l)).unwrap();
        let obj = v[0].as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "addresses",
                "host",
                "instance",
                "node",
                "port",
                "problem",
                "seal_problem",
                "service",
                "signed",
                "source",
                "state",
                "tls",
                "weight"
            ]
        );
        assert_eq!(obj["signed"], "no");
        assert_eq!(obj["source"], "mesh-amb");
        assert_eq!(obj["problem"], serde_json::Value::Null);
    }
}
