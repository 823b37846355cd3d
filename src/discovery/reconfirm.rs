//! Before a sweep removes a backend, its own responder is asked whether it
//! still holds the instance.
//!
//! A sweep (see `replay`) removes the discovered backends that a restarted
//! browse's replay of mdns-sd's cache lacks: their removal events were
//! lost. But the replay also leaves out records about to expire, and a
//! goodbye said for a live instance (forged, or a false verdict) in the
//! second before the restart leaves its records so; the answers to the
//! new browse's first query then renew them without an event, and a
//! stranger that says the goodbye again every few hundred milliseconds
//! keeps them out of every replay. Swept then, a live backend stays out
//! of the table until a later restart's replay has it, which may never
//! come: mdns-sd reports an instance only when its records are new or
//! changed, and its owner's refreshes change nothing.
//!
//! So the sweep asks first: an RFC 6762 §6.7 legacy-unicast question for
//! the instance's SRV record, from an ephemeral port straight to port 5353
//! at the backend's address, which the owner's responder answers by
//! unicast, touching no cache on the link. An answer keeps the backend; a
//! refusal (nothing listens there: the responder's other instances go
//! too, unasked) or [`ASKS`] questions unanswered remove it. Our own
//! instances are not asked: they live while we announce them.
//!
//! A responder is asked about one instance at a time until it has shown
//! that it answers or stays silent; only then are its other instances
//! asked about together. A flood's hundreds of instances share one dead
//! responder, whose host refuses about one question a second (the
//! kernel's ICMP rate limit): asked about 32 of them at
//! once, it refused one and left the others to time out and be asked
//! again, about 80 questions per node for one flood in an 8-host lab,
//! where one question now does.
//!
//! A responder can fall silent while its node lives: at 64 hosts on two
//! cores, one node's mdns-sd fell behind a stranger's flood of 1,000
//! records (thousands of datagrams lost from its receive buffer) and
//! answered nothing for about 10 s, while 29 consumers' sweeps asked it
//! within 2 s each and took its live provider out of their tables. So
//! when a responder leaves the questions about its first instance
//! unanswered and that instance is a mesh-amb node's, the node's process
//! is asked on its ring link (see `link`: it echoes a byte), and while it
//! answers, the responder is asked again after each of `BUSY_PAUSES`,
//! about 25 s in all. A process that is gone refuses the link, and its
//! instance is swept as before. Only a responder's first instance that
//! names a node waits so (an instance that names none is asked first if
//! it comes first, then one that does): its others are asked once it has
//! answered or the waits are over. Only a link at the responder's own
//! address counts, and only the byte sent back counts as its echo: a
//! stranger whose fake nodes name links buys one wait per live mesh-amb
//! node on the link, not one per fake. The cost: a live node
//! that withdrew the instance, its goodbye lost, does not answer for it
//! either, and it stays those 25 s longer.
//!
//! Limits. An answer says the responder holds the instance, not that our
//! cache does: one that answers unicast but whose multicast never reaches
//! us keeps its backend until a later sweep. The backend is swept as
//! before (a mesh node's after the waits, its process answering) when its
//! responder cannot answer: it is not at the backend's
//! first IPv4 address, or answers from another of its addresses (the
//! socket is connected, for the refusals); it runs on this host, where
//! the question comes in over loopback, on which a node restricted to
//! chosen interfaces (`--interface`) does not listen; or its host has another
//! daemon on port 5353 that takes unicast questions (see `witness`; each
//! question goes from a new port, which may reach another of them).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info};

use super::link::Link;
use super::wire::{question, MDNS_PORT, TYPE_SRV};
use super::witness::{answered, unspecified, Probe};
use crate::backends::table::Target;

/// How long one question waits for its answer: a responder answers a
/// unicast question at once (as the witness's probes, whose timeout this
/// is).
const ASK_TIMEOUT: Duration = Duration::from_millis(700);
/// Questions before an instance counts as gone: a lost packet costs a
/// retry, not a live backend.
pub const ASKS: u32 = 3;
/// Questions in flight at once; the rest wait their turn. A sweep after a
/// flood may lack hundreds of the flood's dead instances.
const MOST_AT_ONCE: usize = 32;
/// The waits before a silent responder, whose node's process answers on
/// its ring link, is asked again: with the questions, about 25 s in all,
/// over twice the silence seen (see the module docs).
const BUSY_PAUSES: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];
/// How long the ring link may take to echo: a live process echoes at
/// once, and one that is gone refuses it; a host gone without a word
/// fails the connect within `link::CONNECT_TIMEOUT`.
const ECHO_WITHIN: Duration = Duration::from_secs(3);

/// One instance to ask about.
struct Ask {
    instance: String,
    responder: SocketAddr,
    /// The ring link of the mesh-amb node that announced it, if known.
    node: Option<SocketAddr>,
}

/// The instances being asked about.
#[derive(Default)]
pub struct Reconfirms {
    /// Each question's instance, responder, outcome, and whether it was
    /// asked with its node's link (and so waited for a busy responder).
    running: JoinSet<(String, SocketAddr, Probe, bool)>,
    /// The running questions, by instance, with the responder asked.
    asking: HashMap<String, (AbortHandle, SocketAddr)>,
    /// Those waiting for room.
    waiting: VecDeque<Ask>,
    /// Those waiting for their responder's first answer, by responder.
    parked: HashMap<SocketAddr, Vec<Ask>>,
    /// The instances in `waiting` and `parked`.
    queued: HashSet<String>,
    /// Responders that refused a question: the instances waiting for them
    /// are gone without asking (a flood's hundreds of instances share one
    /// dead responder, whose host sends about one refusal a second).
    refused: HashSet<SocketAddr>,
    /// Responders asked about their first instance, which have not yet
    /// answered, refused or stayed silent: their others are parked.
    scouted: HashSet<SocketAddr>,
    /// Responders that answered or stayed silent: asked about several
    /// instances at once.
    known: HashSet<SocketAddr>,
    /// Outcomes not yet taken.
    ready: VecDeque<(String, bool)>,
}

impl Reconfirms {
    /// Asks the responder at `responder` whether it still holds
    /// `instance`, unless that is already being asked; `node` is the ring
    /// link of the mesh-amb node that announced it, if known, which
    /// answers for the node's process when the responder does not.
    pub fn ask(&mut self, instance: String, responder: SocketAddr, node: Option<SocketAddr>) {
        if self.asking.contains_key(&instance) || !self.queued.insert(instance.clone()) {
            return;
        }
        // A stranger's fake node may name any host's link: only a process
        // at the responder's own address speaks for it.
        let node = node.filter(|n| n.ip() == responder.ip());
        let ask = Ask {
            instance,
            responder,
            node,
        };
        // A sweep asks about thousands at once: they must not be looked
        // through again at each.
        if self.scouted.contains(&responder) {
            self.parked.entry(responder).or_default().push(ask);
            return;
        }
        self.waiting.push_back(ask);
        self.fill();
    }

    /// Whether `instance` is being asked about, or waits its turn.
    pub fn holds(&self, instance: &str) -> bool {
        self.asking.contains_key(instance) || self.queued.contains(instance)
    }

    /// `instance` resolved again meanwhile: it lives, whatever its
    /// responder says. Whether it was being asked about, or waited.
    pub fn resolved(&mut self, instance: &str) -> bool {
        let held = self.holds(instance);
        if let Some((task, at)) = self.asking.remove(instance) {
            task.abort();
            // It may have been the one question to its responder: the
            // next of its instances asks instead (once `next` sees the
            // abort).
            if self.scouted.remove(&at) {
                self.unpark(at);
            }
        }
        if self.queued.remove(instance) {
            self.waiting.retain(|a| a.instance != instance);
            for parked in self.parked.values_mut() {
                parked.retain(|a| a.instance != instance);
            }
        }
        if !self.ready.is_empty() {
            self.ready.retain(|(i, _)| i != instance);
        }
        held
    }

    /// The next answer: an instance, and whether its responder holds it.
    /// Pending while nothing is being asked.
    pub async fn next(&mut self) -> (String, bool) {
        loop {
            if let Some(outcome) = self.ready.pop_front() {
                return outcome;
            }
            let Some(done) = self.running.join_next_with_id().await else {
                // A sweep's questions are over: a responder that refused
                // then may be back for the next one.
                self.forget_responders();
                return std::future::pending().await;
            };
            let Ok((id, (instance, at, held, waited))) = done else {
                // Aborted: it resolved again.
                self.fill();
                continue;
            };
            // Else it resolved again while its task was ending (and may be
            // asked again since): `resolved` saw to its responder.
            if self
                .asking
                .get(&instance)
                .is_some_and(|(t, _)| t.id() == id)
            {
                self.asking.remove(&instance);
                let scout = self.scouted.remove(&at);
                // Its first instance named no node (a stranger's, at a
                // node's address, or one past the ring's list of a node's
                // instances): one that does is asked next, with the waits.
                let silent = matches!(held, Probe::Silent);
                let relayed = scout && silent && !waited && self.relay(at);
                if !relayed {
                    if matches!(held, Probe::Refused) {
                        self.refused.insert(at);
                    } else {
                        self.known.insert(at);
                    }
                    if scout {
                        self.unpark(at);
                    }
                }
                self.ready
                    .push_back((instance, matches!(held, Probe::Answered)));
            }
            self.fill();
        }
    }

    /// Makes a parked instance of `responder` that names its node the next
    /// to ask, if there is one (see `next`).
    fn relay(&mut self, responder: SocketAddr) -> bool {
        let Some(parked) = self.parked.get_mut(&responder) else {
            return false;
        };
        let Some(i) = parked.iter().position(|a| a.node.is_some()) else {
            return false;
        };
        let ask = parked.swap_remove(i);
        self.waiting.push_front(ask);
        true
    }

    /// Forgets what responders said: a new sweep asks afresh, as what they
    /// said during an earlier one may be half a minute old (one question
    /// waiting for a busy responder keeps a sweep going that long).
    pub fn forget_responders(&mut self) {
        self.known.clear();
        self.refused.clear();
    }

    /// `responder`'s scouting is over: its parked instances wait for
    /// room like the others.
    fn unpark(&mut self, responder: SocketAddr) {
        self.waiting
            .extend(self.parked.remove(&responder).unwrap_or_default());
    }

    fn fill(&mut self) {
        while self.asking.len() < MOST_AT_ONCE {
            let Some(ask) = self.waiting.pop_front() else {
                break;
            };
            if self.refused.contains(&ask.responder) {
                self.queued.remove(&ask.instance);
                self.ready.push_back((ask.instance, false));
                continue;
            }
            let scout = !self.known.contains(&ask.responder);
            if scout && !self.scouted.insert(ask.responder) {
                self.parked.entry(ask.responder).or_default().push(ask);
                continue;
            }
            let Ask {
                instance,
                responder,
                node,
            } = ask;
            self.queued.remove(&instance);
            let name = instance.clone();
            // Only a responder's first question waits for a busy one.
            let node = node.filter(|_| scout);
            let task = self.running.spawn(async move {
                let held = holds(&name, responder, node).await;
                (name, responder, held, node.is_some())
            });
            self.asking.insert(instance, (task, responder));
        }
    }
}

/// Where the responder of a backend at `target` listens: port 5353 at its
/// first IPv4 address, else its first address.
pub fn responder(target: &Target) -> Option<SocketAddr> {
    let Target::Addrs(addrs) = target else {
        return None;
    };
    let mut at = *addrs.iter().find(|a| a.is_ipv4()).or(addrs.first())?;
    // A link-local IPv6 address keeps its interface.
    at.set_port(MDNS_PORT);
    Some(at)
}

/// What the responder at `responder` says of `instance`, asked again
/// after each of [`BUSY_PAUSES`] while it is silent and the process at
/// the ring link `node` answers.
async fn holds(instance: &str, responder: SocketAddr, node: Option<SocketAddr>) -> Probe {
    let mut pauses = BUSY_PAUSES.iter();
    loop {
        let said = asked(instance, responder).await;
        let (Probe::Silent, Some(node), Some(pause)) = (&said, node, pauses.next()) else {
            return said;
        };
        if !Link::default().answers(node, ECHO_WITHIN).await {
            return said;
        }
        info!(
            instance = %instance,
            %node,
            "the responder of a backend the restarted browse's replay lacked is silent, but its node's process answers on its ring link (a responder behind a flood); asking again"
        );
        tokio::time::sleep(*pause).await;
    }
}

/// What the responder at `responder` says of `instance`, in up to
/// [`ASKS`] questions. Each goes from a socket of its own: a host whose
/// port 5353 several daemons share hands each source port to one of them.
async fn asked(instance: &str, responder: SocketAddr) -> Probe {
    for _ in 0..ASKS {
        // Connected, so that a host with nothing on port 5353 says so at
        // once (ICMP port unreachable comes back as ECONNREFUSED).
        let sock = async {
            let sock = UdpSocket::bind(unspecified(responder.ip())).await?;
            sock.connect(responder).await?;
            Ok::<_, std::io::Error>(sock)
        };
        let sock = match sock.await {
            Ok(sock) => sock,
            Err(e) => {
                debug!(instance, error = %e, "cannot ask the responder; taken for gone");
                return Probe::Silent;
            }
        };
        let id = fastrand::u16(..);
        match sock.send(&question(instance, TYPE_SRV, id)).await {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Probe::Refused,
            _ => {}
        }
        match answered(&sock, responder, &[id], ASK_TIMEOUT).await {
            Probe::Silent => debug!(instance, "the responder did not answer for the instance"),
            said => return said,
        }
    }
    Probe::Silent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_responder_is_asked_at_the_backends_ipv4_address_first() {
        let v6: SocketAddr = "[fe80::1%3]:7000".parse().unwrap();
        let v4: SocketAddr = "10.0.0.2:7000".parse().unwrap();
        let both = Target::Addrs(vec![v6, v4]);
        assert_eq!(responder(&both), Some("10.0.0.2:5353".parse().unwrap()));
        // A link-local address keeps its interface.
        let only_v6 = Target::Addrs(vec![v6]);
        assert_eq!(
            responder(&only_v6),
            Some("[fe80::1%3]:5353".parse().unwrap())
        );
        assert_eq!(responder(&Target::Name("db.example".into(), 7000)), None);
    }

    /// A responder on loopback that answers every question `answers`
    /// times, echoing its id with one answer; where it listens.
    async fn responder_answering(answers: usize) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            for _ in 0..answers {
                let (n, from) = sock.recv_from(&mut buf).await.unwrap();
                sock.send_to(&answer(&buf[..n]), from).await.unwrap();
            }
        });
        at
    }

    /// A loopback address where nothing listens.
    fn nobody() -> SocketAddr {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    async fn next_within(r: &mut Reconfirms, wait: Duration) -> Option<(String, bool)> {
        tokio::time::timeout(wait, r.next()).await.ok()
    }

    #[tokio::test]
    async fn an_answer_keeps_the_backend_and_refusals_sweep_more_than_fit_in_flight() {
        let mut r = Reconfirms::default();
        r.ask("live".into(), responder_answering(1).await, None);
        assert_eq!(r.next().await, ("live".to_string(), true));
        // Nothing listens: each is swept, however many wait their turn.
        let dead = nobody();
        for i in 0..MOST_AT_ONCE * 3 {
            r.ask(format!("gone-{i}"), dead, None);
        }
        let mut outcomes = Vec::new();
        while let Some(o) = next_within(&mut r, ASK_TIMEOUT * ASKS * 2).await {
            outcomes.push(o);
        }
        assert_eq!(outcomes.len(), MOST_AT_ONCE * 3, "{outcomes:?}");
        assert!(outcomes.iter().all(|(_, held)| !held), "{outcomes:?}");
    }

    /// The echo of `responder_answering` to `question`.
    fn answer(question: &[u8]) -> Vec<u8> {
        let mut reply = question.to_vec();
        reply[2] |= 0x80;
        reply[7] = 1;
        reply
    }

    #[tokio::test]
    async fn a_responder_is_asked_about_one_instance_until_it_answers() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = sock.local_addr().unwrap();
        let mut r = Reconfirms::default();
        for i in ["a", "b", "c"] {
            r.ask(i.into(), at, None);
        }
        let mut buf = [0u8; 512];
        let (n, from) = sock.recv_from(&mut buf).await.unwrap();
        let first = answer(&buf[..n]);
        // Its retry would come after ASK_TIMEOUT; a second question
        // sooner is another instance's.
        let second = tokio::time::timeout(ASK_TIMEOUT / 2, sock.recv_from(&mut buf)).await;
        assert!(second.is_err(), "asked about two instances at once");
        sock.send_to(&first, from).await.unwrap();
        assert!(r.next().await.1);
        // It answers: the others are asked about together, both questions
        // coming before either is answered.
        let mut replies = Vec::new();
        for _ in 0..2 {
            let (n, from) = sock.recv_from(&mut buf).await.unwrap();
            replies.push((answer(&buf[..n]), from));
        }
        for (reply, from) in replies {
            sock.send_to(&reply, from).await.unwrap();
        }
        let mut rest = vec![r.next().await, r.next().await];
        rest.sort();
        assert_eq!(rest, [("b".into(), true), ("c".into(), true)]);
    }

    /// A node's ring link on loopback, served while the token lives.
    async fn node_link() -> (SocketAddr, tokio_util::sync::DropGuard) {
        let listener = super::super::link::bind().unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(super::super::link::serve(
            listener,
            Default::default(),
            stop.clone(),
        ));
        (SocketAddr::from(([127, 0, 0, 1], port)), stop.drop_guard())
    }

    /// Reads one question at `sock` within `wait`; whom to answer, and how.
    async fn question_within(sock: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 512];
        let (n, from) = tokio::time::timeout(wait, sock.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some((answer(&buf[..n]), from))
    }

    #[tokio::test]
    async fn a_silent_responder_whose_node_answers_on_its_link_is_asked_again() {
        let (node, _serving) = node_link().await;
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut r = Reconfirms::default();
        r.ask("busy".into(), sock.local_addr().unwrap(), Some(node));
        // Silent through a whole round: not swept, since its process
        // echoes; the next round comes after the first pause.
        let round = ASK_TIMEOUT * (ASKS + 1);
        for _ in 0..ASKS {
            assert!(question_within(&sock, round).await.is_some());
        }
        let (reply, from) = question_within(&sock, round + ECHO_WITHIN + BUSY_PAUSES[0])
            .await
            .expect("asked again while its node answers");
        sock.send_to(&reply, from).await.unwrap();
        assert_eq!(r.next().await, ("busy".to_string(), true));
    }

    #[tokio::test]
    async fn only_a_responders_first_question_waits_for_its_node() {
        let (node, _serving) = node_link().await;
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = sock.local_addr().unwrap();
        let mut r = Reconfirms::default();
        r.ask("first".into(), at, Some(node));
        let (reply, from) = question_within(&sock, ASK_TIMEOUT).await.unwrap();
        sock.send_to(&reply, from).await.unwrap();
        assert_eq!(r.next().await, ("first".to_string(), true));
        // It answered once: a silence now is the instance's, swept after
        // one round whatever its node says.
        r.ask("second".into(), at, Some(node));
        assert_eq!(
            next_within(&mut r, ASK_TIMEOUT * (ASKS + 1)).await,
            Some(("second".to_string(), false))
        );
        // A new sweep asks afresh: its first instance waits again.
        r.forget_responders();
        r.ask("third".into(), at, Some(node));
        let round = ASK_TIMEOUT * (ASKS + 1);
        let asked = tokio::join!(
            next_within(&mut r, round + ECHO_WITHIN + BUSY_PAUSES[0]),
            async {
                let mut n = 0;
                while question_within(&sock, round).await.is_some() {
                    n += 1;
                }
                n
            }
        );
        assert_eq!(asked.0, None, "swept without waiting");
        assert!(asked.1 > ASKS, "asked {} times", asked.1);
    }

    /// The instance a question of `reply` (its echo) is about.
    fn about(reply: &[u8]) -> String {
        String::from_utf8_lossy(&reply[13..reply[12] as usize + 13]).into_owned()
    }

    #[tokio::test]
    async fn a_responders_instance_that_names_its_node_waits_even_if_not_first() {
        let (node, _serving) = node_link().await;
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = sock.local_addr().unwrap();
        let mut r = Reconfirms::default();
        // A stranger's fake at the node's address, first, then the node's.
        r.ask("fake".into(), at, None);
        r.ask("real".into(), at, Some(node));
        let round = ASK_TIMEOUT * (ASKS + 1);
        let mut asked = Vec::new();
        for _ in 0..ASKS {
            let (reply, _) = question_within(&sock, round).await.unwrap();
            asked.push(about(&reply));
        }
        assert_eq!(r.next().await, ("fake".to_string(), false));
        for _ in 0..ASKS {
            let (reply, _) = question_within(&sock, round).await.unwrap();
            asked.push(about(&reply));
        }
        assert_eq!(asked, ["fake", "fake", "fake", "real", "real", "real"]);
        let (reply, from) = question_within(&sock, round + ECHO_WITHIN + BUSY_PAUSES[0])
            .await
            .expect("the node's instance asked again");
        assert_eq!(about(&reply), "real");
        sock.send_to(&reply, from).await.unwrap();
        assert_eq!(r.next().await, ("real".to_string(), true));
    }

    #[tokio::test]
    async fn a_link_at_another_address_than_the_responder_does_not_count() {
        let (node, _serving) = node_link().await;
        // The link listens on every address: 127.0.0.2 reaches it too.
        let elsewhere = SocketAddr::from(([127, 0, 0, 2], node.port()));
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut r = Reconfirms::default();
        r.ask("x".into(), sock.local_addr().unwrap(), Some(elsewhere));
        assert_eq!(
            next_within(&mut r, ASK_TIMEOUT * (ASKS + 1)).await,
            Some(("x".to_string(), false))
        );
    }

    #[tokio::test]
    async fn an_instance_resolved_while_it_waits_hands_the_responder_to_the_next() {
        let (node, _serving) = node_link().await;
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = sock.local_addr().unwrap();
        let mut r = Reconfirms::default();
        r.ask("a".into(), at, Some(node));
        r.ask("b".into(), at, Some(node));
        let round = ASK_TIMEOUT * (ASKS + 1);
        for _ in 0..ASKS {
            let (reply, _) = question_within(&sock, round).await.unwrap();
            assert_eq!(about(&reply), "a");
        }
        // Its round is over or about to be: it waits, or is about to.
        assert!(r.resolved("a"));
        let (asked, outcome) = tokio::join!(
            question_within(&sock, round),
            next_within(&mut r, ASK_TIMEOUT / 2)
        );
        assert_eq!(outcome, None);
        assert_eq!(about(&asked.expect("b never asked").0), "b");
    }

    #[tokio::test]
    async fn a_silent_responder_whose_node_is_gone_is_swept_after_one_round() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut r = Reconfirms::default();
        // Nothing listens at the link: the process is gone.
        r.ask("gone".into(), sock.local_addr().unwrap(), Some(nobody()));
        assert_eq!(
            next_within(&mut r, ASK_TIMEOUT * (ASKS + 1)).await,
            Some(("gone".to_string(), false))
        );
        let mut asked = 0;
        while question_within(&sock, Duration::ZERO).await.is_some() {
            asked += 1;
        }
        assert_eq!(asked, ASKS);
    }

    #[tokio::test]
    async fn an_instance_resolved_again_meanwhile_is_left_alone() {
        let mut r = Reconfirms::default();
        // A responder that never answers: the question runs its course.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        r.ask("back".into(), silent.local_addr().unwrap(), None);
        r.ask("back".into(), silent.local_addr().unwrap(), None);
        r.resolved("back");
        assert_eq!(next_within(&mut r, ASK_TIMEOUT * (ASKS + 1)).await, None);
        // Asked again afterwards, it is asked afresh.
        r.ask("back".into(), responder_answering(1).await, None);
        assert_eq!(r.next().await, ("back".to_string(), true));
    }
}
