//! A one-off look at the link: every `_amb._tcp` instance that answers a
//! browse within a time limit, with what a consumer would make of it
//! (behind `mesh-amb ls`).
//!
//! Unlike a consumer's browse ([`super::mdns`]), nothing is left out:
//! records without `svc=`, flawed ones ([`wire::check`]) and ones whose
//! seal fails are listed and marked, because an operator debugging the LAN
//! wants to see the strangers too. Only what the browse keeps in memory is
//! bounded ([`MAX_LISTED`]).

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, RecvTimeoutError, ResolvedService, ServiceDaemon, ServiceEvent};

use super::mdns;
use super::wire::{self, Advert, Flaw, State, SERVICE_TYPE};
use crate::security::advert::{self, AdvertKey, Reject, Verifier, KEY_SIG};
use crate::security::ClusterKey;

/// How long to browse when the caller does not say. mdns-sd queries when
/// the browse starts and again after 1 and 2 seconds, and responders answer
/// within about 0.5 s: three seconds hear the answers to all three queries,
/// so one lost multicast packet does not hide an instance.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most instances one listing keeps. A link holds tens to hundreds of real
/// ones; this is a flood of fake records (10,000 answer in seconds), which
/// is shown as such rather than growing memory without end: about 1 KiB an
/// instance, 10 MiB at most.
pub const MAX_LISTED: usize = 10_000;
/// Pause before re-opening a browse that mdns-sd closed (its channel
/// filled during a flood), so a daemon in trouble is not asked in a loop.
const REBROWSE_DELAY: Duration = Duration::from_millis(100);

/// What to browse for.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// Interfaces to browse on; empty means all.
    pub interfaces: &'a [String],
    /// Checks seals when given; otherwise they are only noticed.
    pub key: Option<&'a ClusterKey>,
    /// Only instances whose `svc=` is this (a parsed service name).
    pub service: Option<&'a str>,
    /// How long to collect answers.
    pub timeout: Duration,
}

/// Whether an instance takes connections, as its record says, or why a
/// consumer would not use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Up,
    Draining,
    Down,
    /// The record is flawed or has no valid `svc=`; the reason.
    Invalid(&'static str),
    /// Found (a PTR record), but its SRV, TXT or addresses never came.
    Unresolved,
}

impl Status {
    /// `up`, `draining`, `down`, `invalid` or `unresolved`.
    pub fn word(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Draining => "draining",
            Status::Down => "down",
            Status::Invalid(_) => "invalid",
            Status::Unresolved => "unresolved",
        }
    }

    /// Why the instance is invalid.
    pub fn problem(self) -> Option<&'static str> {
        match self {
            Status::Invalid(why) => Some(why),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problem() {
            Some(why) => write!(f, "{}: {why}", self.word()),
            None => f.write_str(self.word()),
        }
    }
}

/// The seal of a record ([`crate::security::advert`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// No `sig=`: a keyless node or a third-party publisher.
    Unsigned,
    /// Sealed, not checked: no key was given.
    Unchecked,
    /// Checked with the key, and at least one resolved address is signed.
    Valid,
    /// Checked with the key and refused, as a consumer holding it would.
    Invalid(Reject),
}

impl Seal {
    /// `no`, `yes`, `valid` or `invalid`.
    pub fn word(self) -> &'static str {
        match self {
            Seal::Unsigned => "no",
            Seal::Unchecked => "yes",
            Seal::Valid => "valid",
            Seal::Invalid(_) => "invalid",
        }
    }

    /// Why the seal is refused, in a few words (a table cell).
    pub fn problem(self) -> Option<&'static str> {
        let Seal::Invalid(why) = self else {
            return None;
        };
        Some(match why {
            Reject::Unsigned => "unsigned",
            Reject::BadSignature => "bad signature",
            Reject::Expired => "expired",
            Reject::Future => "signed in the future",
            Reject::Replayed => "replayed",
            Reject::ForeignAddress => "address not signed",
        })
    }
}

/// One instance as the link advertises it. Text fields are as received:
/// escape them before printing to a terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The instance label (`redis@7f3a9c21`): the full name without the
    /// service type.
    pub label: String,
    /// `svc=`, normalised; `None` when absent or invalid.
    pub service: Option<String>,
    /// `node=`: set by mesh-amb, rarely by anyone else.
    pub node: Option<String>,
    /// The SRV target; `None` until resolved.
    pub host: Option<String>,
    /// Resolved addresses, IPv4 first, link-local IPv6 with their
    /// interface (`fe80::1%eth0`).
    pub addresses: Vec<String>,
    /// The SRV port; `None` until resolved.
    pub port: Option<u16>,
    pub status: Status,
    /// `weight=`, or its default 1.
    pub weight: u32,
    /// `tls=1`: the port speaks mutual TLS.
    pub tls: bool,
    pub seal: Seal,
}

/// What answered, sorted by service (instances without one last), then
/// label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub instances: Vec<Instance>,
    /// Announcements of further instances not kept once [`MAX_LISTED`]
    /// were held.
    pub left_out: u64,
}

/// Browses the link for `query.timeout` and lists what answered. Blocks
/// the calling thread; the mDNS daemon is told to stop before it returns,
/// and ends on its own thread.
pub fn browse(query: &Query) -> anyhow::Result<Listing> {
    let ifaces: Vec<IfKind> = query
        .interfaces
        .iter()
        .map(|i| IfKind::Name(i.clone()))
        .collect();
    let daemon = Stopping(mdns::start_daemon(&ifaces)?);
    let mut collector = Collector::new(query);
    let deadline = Instant::now() + query.timeout;
    'browse: while Instant::now() < deadline {
        let events = daemon.0.browse(SERVICE_TYPE)?;
        loop {
            match events.recv_deadline(deadline) {
                Ok(ServiceEvent::SearchStopped(_)) | Err(RecvTimeoutError::Disconnected) => {
                    // A browse that was closed: open it again, which
                    // replays what mdns-sd has cached.
                    let left = deadline.saturating_duration_since(Instant::now());
                    std::thread::sleep(REBROWSE_DELAY.min(left));
                    continue 'browse;
                }
                Ok(event) => collector.event(event),
                Err(RecvTimeoutError::Timeout) => break 'browse,
            }
        }
    }
    drop(daemon);
    Ok(collector.finish())
}

/// Stops the daemon thread (dropping its handle would not), without
/// waiting for it: in a flood it has a backlog to get through first, and
/// waiting held `ls` 1.2-1.8 s past its timeout (5.1-5.2 s in all for a
/// 5 s timeout without the wait, 6.2-6.8 s with it, in `tests/ls.rs`).
struct Stopping(ServiceDaemon);

impl Drop for Stopping {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// Turns browse events into the listing.
struct Collector {
    verifier: Option<Verifier>,
    service: Option<String>,
    /// By full name: the newest record of each instance.
    found: HashMap<String, Instance>,
    left_out: u64,
}

impl Collector {
    fn new(query: &Query) -> Collector {
        Collector {
            verifier: query.key.map(|k| Verifier::new(AdvertKey::new(k))),
            service: query.service.map(str::to_owned),
            found: HashMap::new(),
            left_out: 0,
        }
    }

    fn event(&mut self, event: ServiceEvent) {
        match event {
            ServiceEvent::ServiceFound(_, fullname) => self.unresolved(fullname),
            ServiceEvent::ServiceResolved(r) => self.resolved(&r),
            ServiceEvent::ServiceRemoved(_, fullname) => {
                self.found.remove(&fullname);
            }
            _ => {}
        }
    }

    /// An instance only found so far. Which service it belongs to is
    /// unknown until it resolves, so a listing of one service leaves it out.
    fn unresolved(&mut self, fullname: String) {
        if self.service.is_some() || self.found.contains_key(&fullname) || !self.room() {
            return;
        }
        let instance = Instance {
            label: label(&fullname),
            service: None,
            node: None,
            host: None,
            addresses: Vec::new(),
            port: None,
            status: Status::Unresolved,
            weight: 1,
            tls: false,
            seal: Seal::Unsigned,
        };
        self.found.insert(fullname, instance);
    }

    /// Whether one more instance may be kept; counts it when not.
    fn room(&mut self) -> bool {
        let room = self.found.len() < MAX_LISTED;
        if !room {
            self.left_out += 1;
        }
        room
    }

    fn resolved(&mut self, r: &ResolvedService) {
        let advert = wire::parse_txt(|k| r.get_property_val_str(k));
        let wanted = match (&self.service, &advert) {
            (None, _) => true,
            (Some(want), Some(a)) => &a.service == want,
            (Some(_), None) => false,
        };
        if !wanted {
            self.found.remove(&r.fullname);
            return;
        }
        if !self.found.contains_key(&r.fullname) && !self.room() {
            return;
        }
        let instance = self.describe(r, advert);
        self.found.insert(r.fullname.clone(), instance);
    }

    fn describe(&mut self, r: &ResolvedService, advert: Option<Advert>) -> Instance {
        let txt_bytes = advert::txt_len(r.get_properties().iter().map(|p| (p.key(), p.val())));
        let status = match (wire::check(&r.fullname, r.get_port(), txt_bytes), &advert) {
            (Err(flaw), _) => Status::Invalid(flaw_word(flaw)),
            (Ok(()), None) => Status::Invalid("no valid svc"),
            (Ok(()), Some(a)) => match a.state {
                State::Up => Status::Up,
                State::Draining => Status::Draining,
                State::Down => Status::Down,
            },
        };
        let mut addresses: Vec<_> = r.get_addresses().iter().collect();
        addresses.sort_by_key(|a| {
            let ip = a.to_ip_addr();
            (ip.is_ipv6(), ip)
        });
        Instance {
            label: label(&r.fullname),
            service: advert.as_ref().map(|a| a.service.clone()),
            node: r.get_property_val_str("node").map(str::to_owned),
            host: Some(r.get_hostname().to_owned()),
            addresses: addresses.iter().map(ToString::to_string).collect(),
            port: Some(r.get_port()),
            status,
            weight: advert.as_ref().map_or(1, |a| a.weight),
            tls: advert.as_ref().is_some_and(|a| a.tls),
            seal: self.seal(r, advert.as_ref()),
        }
    }

    /// What a consumer holding the key would make of the seal; without the
    /// key, only whether there is one.
    fn seal(&mut self, r: &ResolvedService, advert: Option<&Advert>) -> Seal {
        let sealed = r.get_property(KEY_SIG).is_some();
        match (&mut self.verifier, advert) {
            (_, _) if !sealed => Seal::Unsigned,
            (None, _) => Seal::Unchecked,
            // Nothing to check the MAC against: no provider signs that.
            (Some(_), None) => Seal::Invalid(Reject::BadSignature),
            (Some(v), Some(a)) => match mdns::admit(v, r, a, &mdns::peer_addrs(r)) {
                Ok(_) => Seal::Valid,
                Err(why) => Seal::Invalid(why),
            },
        }
    }

    fn finish(self) -> Listing {
        let mut instances: Vec<Instance> = self.found.into_values().collect();
        let key = |i: &Instance| (i.service.is_none(), i.service.clone(), i.label.clone());
        instances.sort_by_cached_key(key);
        Listing {
            instances,
            left_out: self.left_out,
        }
    }
}

/// The label of `fullname`, or all of it if it is of another type.
fn label(fullname: &str) -> String {
    wire::label_of(fullname).unwrap_or(fullname).to_owned()
}

/// A flaw in a few words (a table cell).
fn flaw_word(flaw: Flaw) -> &'static str {
    match flaw {
        Flaw::Name => "bad instance label",
        Flaw::Port => "port 0",
        Flaw::Txt => "TXT too big",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::mdns::unix_now;
    use crate::security::advert::Fields;
    use mdns_sd::ServiceInfo;
    use std::net::IpAddr;

    const ADDR: &str = "10.77.0.1";

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_bytes([b; 32])
    }

    /// A resolve event for `label` on port `port` with `txt`, as the
    /// network would deliver it; `seal` adds a seal made with that key.
    fn record(label: &str, port: u16, txt: &[(&str, &str)], seal: Option<u8>) -> ServiceEvent {
        let mut txt: Vec<(String, String)> = txt
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if let Some(b) = seal {
            let get = |k: &str| txt.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            let (service, node) = (get("svc").unwrap(), get("node").unwrap_or_default());
            let fields = Fields {
                label,
                service: &service,
                node: &node,
                port,
                weight: 1,
                state: "up",
                tls: false,
            };
            let addr: IpAddr = ADDR.parse().unwrap();
            let pairs = AdvertKey::new(&key(b)).sign(&fields, unix_now(), &[addr]);
            txt.extend(pairs);
        }
        let info = ServiceInfo::new(SERVICE_TYPE, label, "h.local.", ADDR, port, &txt[..]).unwrap();
        ServiceEvent::ServiceResolved(Box::new(info.as_resolved_service()))
    }

    fn fullname(label: &str) -> String {
        format!("{label}.{SERVICE_TYPE}")
    }

    fn list(key: Option<&ClusterKey>, service: Option<&str>, events: Vec<ServiceEvent>) -> Listing {
        let query = Query {
            interfaces: &[],
            key,
            service,
            timeout: DEFAULT_TIMEOUT,
        };
        let mut c = Collector::new(&query);
        for e in events {
            c.event(e);
        }
        c.finish()
    }

    /// (label, service, status, seal) of each listed instance.
    fn summary(l: &Listing) -> Vec<(String, Option<String>, Status, Seal)> {
        l.instances
            .iter()
            .map(|i| (i.label.clone(), i.service.clone(), i.status, i.seal))
            .collect()
    }

    fn events() -> Vec<ServiceEvent> {
        vec![
            record("web@b", 80, &[("svc", "web"), ("node", "b")], Some(1)),
            record(
                "api@a",
                8080,
                &[("svc", "api"), ("state", "draining")],
                None,
            ),
            record("forged", 81, &[("svc", "web")], Some(2)),
            record("stranger", 9, &[("hello", "1")], None),
            record("zero", 0, &[("svc", "web")], None),
            ServiceEvent::ServiceFound(SERVICE_TYPE.into(), fullname("shy")),
        ]
    }

    #[test]
    fn everything_is_listed_and_marked() {
        let s = |v: &str| Some(v.to_owned());
        let (l, o) = (String::from, Option::<String>::None);
        let bad_sig = Seal::Invalid(Reject::BadSignature);
        let with_key = list(Some(&key(1)), None, events());
        assert_eq!(
            summary(&with_key),
            [
                (l("api@a"), s("api"), Status::Draining, Seal::Unsigned),
                (l("forged"), s("web"), Status::Up, bad_sig),
                (l("web@b"), s("web"), Status::Up, Seal::Valid),
                (
                    l("zero"),
                    s("web"),
                    Status::Invalid("port 0"),
                    Seal::Unsigned
                ),
                (l("shy"), o.clone(), Status::Unresolved, Seal::Unsigned),
                (
                    l("stranger"),
                    o,
                    Status::Invalid("no valid svc"),
                    Seal::Unsigned
                ),
            ]
        );
        let web = &with_key.instances[2];
        assert_eq!(web.addresses, [ADDR]);
        assert_eq!((web.port, web.node.as_deref()), (Some(80), Some("b")));
        assert_eq!(web.host.as_deref(), Some("h.local."));

        let without = list(None, None, events());
        let seals: Vec<Seal> = without.instances.iter().map(|i| i.seal).collect();
        use Seal::{Unchecked, Unsigned};
        assert_eq!(
            seals,
            [Unsigned, Unchecked, Unchecked, Unsigned, Unsigned, Unsigned]
        );
    }

    #[test]
    fn a_service_filter_keeps_only_its_instances() {
        let l = list(None, Some("web"), events());
        let labels: Vec<&str> = l.instances.iter().map(|i| i.label.as_str()).collect();
        assert_eq!(labels, ["forged", "web@b", "zero"]);
    }

    #[test]
    fn a_goodbye_removes_and_a_new_record_replaces() {
        let l = list(
            None,
            None,
            vec![
                record("a", 1, &[("svc", "x")], None),
                record("b", 1, &[("svc", "x")], None),
                record("b", 2, &[("svc", "x"), ("state", "down")], None),
                ServiceEvent::ServiceRemoved(SERVICE_TYPE.into(), fullname("a")),
            ],
        );
        assert_eq!(l.instances.len(), 1);
        assert_eq!(l.instances[0].status, Status::Down);
        assert_eq!(l.instances[0].port, Some(2));
    }

    #[test]
    fn a_flood_is_capped_and_counted() {
        let found = (0..MAX_LISTED + 5)
            .map(|n| ServiceEvent::ServiceFound(SERVICE_TYPE.into(), fullname(&format!("f{n}"))));
        let mut events: Vec<ServiceEvent> = found.collect();
        // Instances already held are still updated.
        events.push(record("f0", 7, &[("svc", "x")], None));
        let l = list(None, None, events);
        assert_eq!(l.instances.len(), MAX_LISTED);
        assert_eq!(l.left_out, 5);
        assert_eq!(l.instances[0].label, "f0");
        assert_eq!(l.instances[0].port, Some(7));
    }

    #[test]
    fn words_for_the_table() {
        assert_eq!(Status::Invalid("port 0").to_string(), "invalid: port 0");
        assert_eq!(Status::Draining.to_string(), "draining");
        let bad = Seal::Invalid(Reject::Expired);
        assert_eq!((bad.word(), bad.problem()), ("invalid", Some("expired")));
        assert_eq!(Seal::Unchecked.word(), "yes");
    }
}
