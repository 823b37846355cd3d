//! The stats page, in the spirit of HAProxy's: one table per consumed
//! service with a row per backend, one for the provided services, and what
//! discovery refused. Rendered on the server from the status document, so
//! it reads without scripts; `page.js` swaps in a fresh copy every two
//! seconds. Everything a stranger on the link can name (instance names,
//! TXT-derived values, failure texts) is escaped.

use std::fmt::Write as _;

use crate::discovery::wire;
use crate::status::{
    human_bytes, human_span, BackendStatus, ConsumeStatus, Document, NodeStatus, ProvideView,
};

pub const CSS: &str = include_str!("page.css");
pub const JS: &str = include_str!("page.js");

/// How often the page's script refreshes it, and the fallback without
/// scripts.
const REFRESH_SECS: u32 = 2;

pub fn render(doc: &Document) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let title = match doc.nodes.as_slice() {
        [one] => format!("mesh-amb · {}", one.node),
        many => format!("mesh-amb · {} nodes", many.len()),
    };
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/page.css\">\
         <script src=\"/page.js\" defer></script>\
         <noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript></head><body>\
         <header><h1>mesh-amb</h1><span id=\"updated\" data-refresh=\"{REFRESH_SECS}\">\
         read at {} UTC</span></header><main id=\"status\">",
        esc(&title),
        clock(doc.generated_at_ms),
    );
    if doc.nodes.is_empty() {
        out.push_str("<p class=\"empty\">No node is running.</p>");
    }
    for n in &doc.nodes {
        node(&mut out, n, doc.generated_at_ms);
    }
    out.push_str(
        "</main><footer>Also: <a href=\"/api/v1/status\">/api/v1/status</a> (JSON) · \
         <a href=\"/metrics\">/metrics</a> (Prometheus) · <a href=\"/healthz\">/healthz</a>\
         </footer></body></html>\n",
    );
    out
}

fn node(out: &mut String, n: &NodeStatus, now_ms: u64) {
    let _ = write!(
        out,
        "<section class=\"node\" data-node=\"{id}\"><h2>node <code>{id}</code></h2>\
         <p class=\"facts\">mesh-amb {} · up {} · ",
        n.version,
        human_span(now_ms.saturating_sub(n.started_at_ms)),
        id = esc(&n.node),
    );
    match &n.cluster_key {
        Some(fp) => {
            let _ = write!(
                out,
                "<span class=\"badge ok\">signed</span> key {} · ",
                esc(fp)
            );
        }
        None => out.push_str("<span class=\"badge warn\">unsigned</span> no cluster key · "),
    }
    out.push_str(if n.tls {
        "<span class=\"badge ok\">mutual TLS</span></p>"
    } else {
        "<span class=\"badge\">plain TCP</span></p>"
    });
    if !n.consumes.is_empty() {
        out.push_str("<h3>Consumed services</h3>");
    }
    for c in &n.consumes {
        consume(out, c, now_ms);
    }
    if !n.provides.is_empty() {
        provides(out, &n.provides, now_ms);
    }
    discovery(out, n);
    out.push_str("</section>");
}

fn consume(out: &mut String, c: &ConsumeStatus, now_ms: u64) {
    let _ = write!(
        out,
        "<div class=\"svc\" data-service=\"{name}\"><h4>{name} \
         <small>listens on {} · {} backends · {}</small></h4>\
         <p class=\"facts\">{} clients · {} turned away · {} waiting · {} active · {} ejections · \
         {} in · {} out</p>",
        c.listen,
        c.source,
        c.policy,
        c.clients,
        c.turned_away,
        c.waiting,
        c.active,
        c.ejections,
        human_bytes(c.bytes_in),
        human_bytes(c.bytes_out),
        name = esc(&c.name),
    );
    if c.backends.is_empty() {
        out.push_str("<p class=\"empty\">No backend known yet.</p></div>");
        return;
    }
    out.push_str(
        "<div class=\"scroll\"><table><thead><tr><th>Backend</th><th>Source</th>\
         <th>Address</th><th>State</th><th class=\"n\">Weight</th><th class=\"n\">Active</th>\
         <th class=\"n\">Total</th><th class=\"n\">Failures</th><th class=\"n\">In</th>\
         <th class=\"n\">Out</th><th>Changed</th></tr></thead><tbody>",
    );
    for b in &c.backends {
        backend(out, b, now_ms);
    }
    out.push_str("</tbody></table></div></div>");
}

fn backend(out: &mut String, b: &BackendStatus, now_ms: u64) {
    let state = b.state.as_str();
    let _ = write!(
        out,
        "<tr class=\"{state}\" data-backend=\"{key}\"><td class=\"key\" data-label=\"Backend\" \
         title=\"{key}\">{}</td><td data-label=\"Source\">{}</td>\
         <td data-label=\"Address\"><code>{}</code>{}</td>\
         <td data-label=\"State\"><span class=\"badge {state}\">{state}</span>",
        esc(short_name(&b.key)),
        b.origin.as_str(),
        esc(&b.address),
        if b.tls {
            " <span class=\"badge ok\">TLS</span>"
        } else {
            ""
        },
        key = esc(&b.key),
    );
    let why = esc(b.ejected_for.as_deref().unwrap_or("failed"));
    match b.ejected_remaining_ms {
        Some(left) => {
            let _ = write!(
                out,
                " <span class=\"why\">{why}; retried in {}</span>",
                human_span(left)
            );
        }
        None if b.ejected_for.is_some() => {
            let _ = write!(
                out,
                " <span class=\"why\">{why}; the next client tries it</span>"
            );
        }
        None => {}
    }
    let _ = write!(
        out,
        "</td><td class=\"n\" data-label=\"Weight\">{}</td>\
         <td class=\"n\" data-label=\"Active\">{}</td><td class=\"n\" data-label=\"Total\">{}</td>\
         <td class=\"n\" data-label=\"Failures\">{}</td><td class=\"n\" data-label=\"In\">{}</td>\
         <td class=\"n\" data-label=\"Out\">{}</td><td data-label=\"Changed\">{} ago</td></tr>",
        b.weight,
        b.active,
        b.total,
        b.failures,
        human_bytes(b.bytes_in),
        human_bytes(b.bytes_out),
        human_span(now_ms.saturating_sub(b.changed_at_ms)),
    );
}

fn provides(out: &mut String, provides: &[ProvideView], now_ms: u64) {
    out.push_str(
        "<h3>Provided services</h3><div class=\"scroll\"><table><thead><tr><th>Service</th>\
         <th>Local port</th><th>Local check</th><th>Advertised</th><th>Port offered</th>\
         <th class=\"n\">Weight</th><th>Signed addresses</th><th>Changed</th></tr></thead><tbody>",
    );
    for p in provides {
        let local = match p.local {
            "up" => "up",
            "down" => "ejected",
            _ => "unproven",
        };
        let advertised = match p.advertised {
            "up" => "up",
            "draining" => "draining",
            _ => "ejected",
        };
        let signed: Vec<String> = p.signed_addrs.iter().map(|a| a.to_string()).collect();
        let _ = write!(
            out,
            "<tr data-provide=\"{name}\"><td data-label=\"Service\" title=\"{}\">{name}</td>\
             <td data-label=\"Local port\">{}</td>\
             <td data-label=\"Local check\"><span class=\"badge {local}\">{}</span></td>\
             <td data-label=\"Advertised\"><span class=\"badge {advertised}\">{}</span></td>\
             <td data-label=\"Port offered\">{}{}</td><td class=\"n\" data-label=\"Weight\">{}</td>\
             <td data-label=\"Signed addresses\">{}</td><td data-label=\"Changed\">{} ago</td></tr>",
            esc(&p.instance),
            p.port,
            p.local,
            p.advertised,
            p.advertised_port,
            if p.tls {
                " <span class=\"badge ok\">TLS</span>"
            } else {
                ""
            },
            p.weight,
            if signed.is_empty() {
                "-".to_owned()
            } else {
                signed.join(", ")
            },
            human_span(now_ms.saturating_sub(p.changed_at_ms)),
            name = esc(&p.name),
        );
    }
    out.push_str("</tbody></table></div>");
}

fn discovery(out: &mut String, n: &NodeStatus) {
    let _ = write!(
        out,
        "<h3>Discovery</h3><p class=\"facts\">{} mDNS events received",
        n.discovery_events
    );
    let nonzero: Vec<_> = n.discovery.iter().filter(|(_, v)| *v > 0).collect();
    if nonzero.is_empty() {
        out.push_str("; nothing ignored.</p>");
        return;
    }
    out.push_str(". Ignored, dropped and probed:</p><ul class=\"counters\">");
    for (name, v) in nonzero {
        let _ = write!(out, "<li><code>{}</code> {v}</li>", name.replace('_', " "));
    }
    out.push_str("</ul>");
}

/// An instance's label without the service type every one of them ends
/// with (`redis@h1`); other keys as they are.
fn short_name(key: &str) -> &str {
    wire::label_of(key).unwrap_or(key)
}

/// Escapes text for HTML content and quoted attribute values. Bidi
/// controls become visible escapes: a name must not reorder its cell and
/// pass for another.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            c if wire::is_bidi_control(c) => out.extend(c.escape_default()),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `HH:MM:SS` of a Unix time in ms, UTC.
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_the_link_can_name() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(esc("\u{202e}1h@bew"), "\\u{202e}1h@bew");
        assert_eq!(esc("\u{5d0}\u{200f}"), "\u{5d0}\\u{200f}", "letters stay");
    }

    #[test]
    fn units_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_span(999), "999 ms");
        assert_eq!(human_span(61_000), "61 s");
        assert_eq!(human_span(3 * 60_000), "3 min");
        assert_eq!(human_span(3 * 3_600_000), "3 h");
        assert_eq!(clock(((13 * 60 + 5) * 60 + 9) * 1000 + 999), "13:05:09");
    }
}
