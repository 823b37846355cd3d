//! What a reload changes: the settings a running node cannot take (kept at
//! their running values, named), the live settings that changed, and the
//! summary a reload reports. Pure, so it is tested alone.

use std::fmt;

use crate::settings::Config;

/// Fields of `$new` that differ from `$old`'s, by config key (the field's
/// name unless given: `policy as "balance"`); with `keep`, each
/// one is set back to the old value.
macro_rules! differing {
    (@name $field:ident $name:literal) => { $name };
    (@name $field:ident) => { stringify!($field) };
    ($old:expr, $new:expr, $($field:ident $(as $name:literal)?),+ $(,)?) => {{
        let mut names: Vec<&'static str> = Vec::new();
        $( if $old.$field != $new.$field { names.push(differing!(@name $field $($name)?)); } )+
        names
    }};
    (keep $old:expr, $new:expr, $($field:ident),+ $(,)?) => {{
        let mut names: Vec<&'static str> = Vec::new();
        $( if $old.$field != $new.$field {
            names.push(stringify!($field));
            $new.$field = $old.$field.clone();
        } )+
        names
    }};
}

/// `new` with every setting a running node cannot change set back to
/// `old`'s, and the names of those that differed (config file keys).
/// They are fixed at start: the listeners' address, the mDNS
/// daemon's interfaces and host name, the TLS identity, the connection
/// limit's semaphore, the tables' ejection period and what the browse
/// accepts.
pub(super) fn keep_restart_settings(old: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    let mut kept = Vec::new();
    if old.bind != new.bind {
        kept.push("bind");
        new.bind = old.bind;
    }
    // A node id nobody chose is drawn afresh at each reading of the
    // settings: that is no change.
    if (old.discovery.probe || new.discovery.probe)
        && (old.discovery.node_id != new.discovery.node_id
            || old.discovery.probe != new.discovery.probe)
    {
        kept.push("node_id");
    }
    new.discovery.node_id = old.discovery.node_id.clone();
    new.discovery.probe = old.discovery.probe;
    kept.extend(differing!(keep old.discovery, new.discovery, interfaces, advertise_addrs));
    kept.extend(differing!(keep old.proxy, new.proxy, max_connections, eject_time));
    let fingerprint = |c: &Config| c.security.cluster_key.as_ref().map(|k| k.fingerprint());
    if fingerprint(old) != fingerprint(&new) {
        kept.push("cluster_key");
    }
    new.security.cluster_key = old.security.cluster_key.clone();
    if old.security.pki != new.security.pki {
        kept.push("tls_cert/tls_key/tls_ca");
        new.security.pki = old.security.pki.clone();
    }
    kept.extend(differing!(keep old.security, new.security, allow_plaintext));
    (new, kept)
}

/// Settings every listener's new connections use, which changed.
pub(super) fn proxy_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    differing!(
        old.proxy,
        new.proxy,
        // Named as the user writes it.
        policy as "balance",
        connect_timeout,
        connect_attempts,
        login_timeout,
        wait_for_backend,
        idle_timeout,
        drain_timeout,
        tcp_keepalive,
        tcp_keepalive_interval,
        tcp_keepalive_probes,
        tcp_user_timeout,
        half_close_timeout,
    )
}

/// Settings of the providers' checks and leave, which changed.
pub(super) fn provider_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    differing!(
        old.discovery,
        new.discovery,
        check_interval,
        rise,
        fall,
        drain_period
    )
}

/// Services whose credentials file, named as before, now holds another
/// login (a rotated password): the file is read at each reload, and a
/// summary of `no change` would read as if it had not been.
pub(super) fn rotated_credentials<'a>(old: &Config, new: &'a Config) -> Vec<&'a str> {
    (new.security.credentials.iter())
        .filter(|n| (old.security.credentials.iter()).any(|o| o.spec == n.spec && !o.same_login(n)))
        .map(|n| n.spec.service.as_str())
        .collect()
}

/// What a reload did, in order: consumes and provides added (`+`), removed
/// (`-`) and changed (`~`), then the settings changed live and the
/// credentials rotated (`~`); and the settings that need a restart, kept
/// at their running values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// One entry per change, as `+consume api`.
    pub changes: Vec<String>,
    /// Config file keys whose new values wait for a restart.
    pub needs_restart: Vec<&'static str>,
}

impl ReloadSummary {
    pub(super) fn add(&mut self, sign: char, what: &str, name: &str) {
        self.changes.push(format!("{sign}{what} {name}"));
    }

    /// Whether the running node is exactly what the new settings asked.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.needs_restart.is_empty()
    }
}

/// `+consume x, -provide y, ~consume z`, or `no change`.
impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            return f.write_str("no change");
        }
        f.write_str(&self.changes.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::security::ClusterKey;
    use crate::settings::{DiscoverySettings, ProxySettings, SecuritySettings};

    fn config() -> Config {
        Config {
            bind: [127, 0, 0, 1].into(),
            consumes: vec!["a:1=h:1".parse().unwrap()],
            provides: vec![],
            proxy: ProxySettings::default(),
            discovery: DiscoverySettings {
                node_id: "n1".into(),
                ..DiscoverySettings::default()
            },
            security: SecuritySettings::default(),
        }
    }

    #[test]
    fn settings_fixed_at_start_are_kept_and_named() {
        type Edit = fn(&mut Config);
        let cases: &[(Edit, &[&str])] = &[
            (|_| {}, &[]),
            (|c| c.consumes.clear(), &[]),
            (|c| c.proxy.connect_timeout = Duration::from_secs(9), &[]),
            (|c| c.bind = [0, 0, 0, 0].into(), &["bind"]),
            // Drawn at random both times: not a change.
            (|c| c.discovery.node_id = "n2".into(), &[]),
            (
                |c| {
                    c.discovery.node_id = "n2".into();
                    c.discovery.probe = true;
                },
                &["node_id"],
            ),
            (
                |c| c.discovery.interfaces = vec!["eth9".into()],
                &["interfaces"],
            ),
            (
                |c| {
                    c.proxy.max_connections = 5;
                    c.proxy.eject_time = Duration::from_secs(7);
                },
                &["max_connections", "eject_time"],
            ),
            (
                |c| c.security.cluster_key = Some(Arc::new(ClusterKey::from_bytes([3; 32]))),
                &["cluster_key"],
            ),
            (|c| c.security.allow_plaintext = true, &["allow_plaintext"]),
        ];
        for (edit, want) in cases {
            let old = config();
            let mut new = config();
            edit(&mut new);
            let (kept, names) = keep_restart_settings(&old, new.clone());
            assert_eq!(&names[..], *want);
            assert_eq!(kept.bind, old.bind);
            assert_eq!(kept.discovery.node_id, old.discovery.node_id);
            assert_eq!(kept.discovery.interfaces, old.discovery.interfaces);
            assert_eq!(kept.proxy.max_connections, old.proxy.max_connections);
            assert_eq!(kept.proxy.eject_time, old.proxy.eject_time);
            assert!(kept.security.cluster_key.is_none());
            assert_eq!(kept.security.allow_plaintext, old.security.allow_plaintext);
            // What may change live is taken as given.
            assert_eq!(kept.consumes, new.consumes);
            assert_eq!(kept.proxy.connect_timeout, new.proxy.connect_timeout);
        }
    }

    #[test]
    fn live_setting_changes_are_named() {
        let old = config();
        let mut new = config();
        assert!(proxy_changes(&old, &new).is_empty());
        new.proxy.policy = crate::backends::balance::Policy::LeastConn;
        new.proxy.connect_timeout = Duration::from_secs(5);
        new.proxy.idle_timeout = Some(Duration::from_secs(60));
        new.discovery.rise = 5;
        assert_eq!(
            proxy_changes(&old, &new),
            ["balance", "connect_timeout", "idle_timeout"]
        );
        assert_eq!(provider_changes(&old, &new), ["rise"]);
    }

    #[test]
    fn the_summary_reads_as_one_line() {
        let mut s = ReloadSummary::default();
        assert_eq!(s.to_string(), "no change");
        assert!(s.is_empty());
        s.add('+', "consume", "x");
        s.add('-', "provide", "y");
        s.add('~', "consume", "z");
        assert_eq!(s.to_string(), "+consume x, -provide y, ~consume z");
        assert!(!s.is_empty());
    }
}
