//! Self-test of the network-namespace lab in `lab/src/lib.rs`: each
//! test fails if the lab does not provide what other tests rely on
//! (isolated hosts, unicast and multicast between them, routing across two
//! segments, a working per-host avahi, and cleanup even on panic).
//!
//! Needs root; without it, `Lab::new` panics (these tests fail, they do not
//! skip).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use mesh_amb_lab::{
    list_netns, start_avahi_many, wait_for, wait_until, AvahiOptions, Deadline, Host, Lab,
};

/// Budget for a TCP exchange between lab hosts (takes milliseconds).
const NET_TIMEOUT: Duration = Duration::from_secs(10);
/// Budget for an mDNS service to be seen across the lab: avahi-publish's
/// probe (~1 s) plus one `avahi-browse -t` round (~1 s), with CI headroom.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts one connection on `listener`, reads a line-less 4-byte ping,
/// answers `pong` + the peer address it saw.
fn serve_once(listener: TcpListener) -> std::thread::JoinHandle<SocketAddr> {
    std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        s.set_read_timeout(Some(NET_TIMEOUT)).unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).expect("read ping");
        assert_eq!(&buf, b"ping");
        let answer = format!("pong {}", peer.ip());
        s.write_all(answer.as_bytes()).unwrap();
        peer
    })
}

/// Connects from inside `from` to `to`, sends `ping`, returns the answer.
fn ping_pong(from: &Host, to: SocketAddr) -> String {
    let mut s = from.enter(|| TcpStream::connect_timeout(&to, NET_TIMEOUT).expect("connect"));
    s.set_read_timeout(Some(NET_TIMEOUT)).unwrap();
    s.write_all(b"ping").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read pong");
    answer
}

#[test]
fn hosts_are_separate_stacks_and_reach_each_other_by_tcp() {
    let t0 = Instant::now();
    let lab = Lab::new(2);
    let (h1, h2) = (lab.host("h1"), lab.host("h2"));
    eprintln!("lab of 2 built in {:?}", t0.elapsed());
    assert_eq!(h1.ip, Ipv4Addr::new(10, 77, 0, 1));
    assert_eq!(lab.hosts().len(), 2);
    assert!(lab.namespaces().iter().all(|n| n.starts_with(lab.id())));

    // `enter` really runs in the namespace...
    let (inode, listener) = h1.enter(|| {
        (
            mesh_amb_lab::current_netns_inode(),
            TcpListener::bind((h1.ip, 0)).expect("bind h1's address inside h1"),
        )
    });
    assert_eq!(inode, h1.netns_inode());
    assert_ne!(
        inode,
        mesh_amb_lab::current_netns_inode(),
        "test thread must stay outside"
    );
    assert_ne!(h1.netns_inode(), h2.netns_inode());
    // ...and the lab's addresses do not exist outside it (bind only; no traffic).
    let err = TcpListener::bind((h1.ip, 0)).expect_err("10.77.0.1 must not exist in the root ns");
    assert_eq!(err.raw_os_error(), Some(libc::EADDRNOTAVAIL));
    // h2 cannot bind h1's address either.
    assert!(h2.enter(|| TcpListener::bind((h1.ip, 0))).is_err());

    // The listener keeps living in h1 although we accept on another thread.
    let addr = listener.local_addr().unwrap();
    let server = serve_once(listener);
    assert_eq!(ping_pong(h2, addr), format!("pong {}", h2.ip));
    assert_eq!(server.join().unwrap().ip(), h2.ip);

    // A tokio runtime inside `enter`, as the crate's tests will use it.
    let listener = h1.enter(|| TcpListener::bind((h1.ip, 0)).unwrap());
    let addr = listener.local_addr().unwrap();
    let server = serve_once(listener);
    let answer = h2.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::time::timeout(NET_TIMEOUT, tokio::net::TcpStream::connect(addr))
                .await
                .expect("connect timed out")
                .expect("connect");
            s.write_all(b"ping").await.unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.unwrap();
            answer
        })
    });
    assert_eq!(answer, format!("pong {}", h2.ip));
    server.join().unwrap();

    // One-shot commands run in the host too.
    let addrs = h2.run_ok("ip", ["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains("10.77.0.2/24"), "{addrs}");
    let routes = h2.run_ok("ip", ["route", "show", "224.0.0.0/4"]);
    assert!(routes.contains("dev eth0"), "{routes}");
    eprintln!("tcp test done in {:?}", t0.elapsed());
}

#[test]
fn multicast_crosses_the_bridge_between_namespaces() {
    let t0 = Instant::now();
    let lab = Lab::new(3);
    let (h1, h2, h3) = (lab.host("h1"), lab.host("h2"), lab.host("h3"));
    // The mDNS group and port themselves: they only exist in our namespaces.
    let group = Ipv4Addr::new(224, 0, 0, 251);
    let port = 5353;

    let join = |h: &Host| {
        h.enter(|| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind 5353");
            s.join_multicast_v4(&group, &h.ip).expect("join group");
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            s
        })
    };
    let receivers = [join(h2), join(h3)];
    let sender = h1.enter(|| {
        let s = UdpSocket::bind((h1.ip, 0)).unwrap();
        s.set_multicast_ttl_v4(1).unwrap();
        s
    });

    // Datagrams may be lost; resend until both receivers got one.
    let mut got = [None, None];
    let done = wait_until(NET_TIMEOUT, || {
        sender.send_to(b"hello-mcast", (group, port)).expect("send");
        for (r, slot) in receivers.iter().zip(got.iter_mut()) {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = r.recv_from(&mut buf) {
                *slot = Some((buf[..n].to_vec(), from));
            }
        }
        got.iter().all(Option::is_some)
    });
    assert!(
        done,
        "multicast from h1 not received by both h2 and h3: {got:?}"
    );
    for (payload, from) in got.into_iter().flatten() {
        assert_eq!(payload, b"hello-mcast");
        assert_eq!(
            from.ip(),
            std::net::IpAddr::V4(h1.ip),
            "must come from h1 over eth0"
        );
    }
    eprintln!("multicast test done in {:?}", t0.elapsed());
}

#[test]
fn two_segments_route_unicast_through_the_router() {
    let t0 = Instant::now();
    let lab = Lab::two_segments(2, 1);
    eprintln!("two-segment lab built in {:?}", t0.elapsed());
    let (a1, b1) = (lab.host("a1"), lab.host("b1"));
    let router = lab.router().expect("router");
    assert_eq!(lab.hosts().len(), 3);
    assert_eq!(a1.ip, Ipv4Addr::new(10, 77, 1, 1));
    assert_eq!(lab.host("a2").ip, Ipv4Addr::new(10, 77, 1, 2));
    assert_eq!(b1.ip, Ipv4Addr::new(10, 77, 2, 1));
    assert_eq!(router.ifaces.len(), 2);
    assert_eq!(lab.host("r").name, "r");

    let forwarding = router.run_ok("cat", ["/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(forwarding.trim(), "1");
    let route = b1.run_ok("ip", ["route", "get", &a1.ip.to_string()]);
    assert!(route.contains("via 10.77.2.254"), "{route}");

    let listener = a1.enter(|| TcpListener::bind((a1.ip, 0)).unwrap());
    let addr = listener.local_addr().unwrap();
    let server = serve_once(listener);
    // No NAT: a1 sees b1's own address.
    assert_eq!(ping_pong(b1, addr), format!("pong {}", b1.ip));
    server.join().unwrap();
    eprintln!("routing test done in {:?}", t0.elapsed());
}

#[test]
fn proc_captures_output_and_obeys_signals() {
    let lab = Lab::new(1);
    let h1 = lab.host("h1");
    let mut p = h1.spawn(
        "sh",
        ["-c", "echo out-line; echo err-line >&2; exec sleep 1000"],
    );
    assert!(wait_until(Deadline::secs(10), || p
        .stdout()
        .contains("out-line")
        && p.stderr().contains("err-line")));
    assert!(p.is_running());
    assert!(p.output_tail(5).contains("err-line"));
    // The PID is the program's own (exec chain), and it lives in h1.
    let ns = std::fs::read_link(format!("/proc/{}/ns/net", p.pid())).unwrap();
    let ns_inode = ns.to_string_lossy().to_string();
    assert!(
        ns_inode.contains(&h1.netns_inode().to_string()),
        "{ns_inode}"
    );
    assert_eq!(p.wait_exit(Deadline::millis(50)), None);
    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Deadline::secs(10)).expect("exits on SIGTERM");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGTERM));

    let out = h1.run("sh", ["-c", "echo hi; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"hi\n");
}

#[test]
fn avahi_in_two_hosts_sees_each_others_services() {
    let t0 = Instant::now();
    let lab = Lab::new(2);
    let (h1, h2) = (lab.host("h1"), lab.host("h2"));
    let av1 = h1.start_avahi();
    let _av2 = h2.start_avahi(); // one after the other, as most tests will
    eprintln!("2 avahi daemons up after {:?}", t0.elapsed());
    assert_eq!(av1.host_name(), format!("{}.local", h1.netns));

    let t1 = Instant::now();
    let _svc = h1.avahi_publish("redis@h1 test", "_amb._tcp", 6379, &["svc=redis", "v=1"]);
    let rec = wait_for(DISCOVERY_TIMEOUT, || {
        h2.avahi_browse_resolved("_amb._tcp")
            .into_iter()
            .find(|r| r.name == "redis@h1 test")
    })
    .unwrap_or_else(|| panic!("h2 never saw h1's service\n{}", av1.log()));
    eprintln!("published -> resolved on h2 in {:?}", t1.elapsed());
    assert_eq!(rec.address, h1.ip.to_string());
    assert_eq!(rec.port, 6379);
    assert_eq!(rec.txt_value("svc"), Some("redis"));
    assert_eq!(rec.txt_value("v"), Some("1"));
    assert_eq!(rec.host_name, av1.host_name());
    assert_eq!(rec.iface, "eth0");
    assert_eq!(rec.protocol, "IPv4");

    // A static service file (how a third-party host provides a service).
    av1.add_service_file(
        "web.service",
        r#"<?xml version="1.0" standalone='no'?>
<!DOCTYPE service-group SYSTEM "avahi-service.dtd">
<service-group>
  <name>web-static</name>
  <service><type>_amb._tcp</type><port>8080</port><txt-record>svc=web</txt-record></service>
</service-group>
"#,
    );
    let web = wait_for(DISCOVERY_TIMEOUT, || {
        h2.avahi_browse_resolved("_amb._tcp")
            .into_iter()
            .find(|r| r.name == "web-static")
    })
    .unwrap_or_else(|| panic!("h2 never saw the static service\n{}", av1.log()));
    assert_eq!((web.port, web.txt_value("svc")), (8080, Some("web")));
    eprintln!("avahi test done in {:?}", t0.elapsed());
}

#[test]
fn avahi_reflector_on_router_joins_segments() {
    let t0 = Instant::now();
    let lab = Lab::two_segments(1, 1);
    let (a1, b1) = (lab.host("a1"), lab.host("b1"));
    let router = lab.router().unwrap();
    let _avahi = start_avahi_many([
        (a1, AvahiOptions::default()),
        (b1, AvahiOptions::default()),
        (router, AvahiOptions::reflector()),
    ]);
    eprintln!("3 avahi daemons up after {:?}", t0.elapsed());
    let _svc = a1.avahi_publish("api-a1", "_amb._tcp", 8080, &["svc=api"]);
    let rec = wait_for(DISCOVERY_TIMEOUT, || {
        b1.avahi_browse_resolved("_amb._tcp")
            .into_iter()
            .find(|r| r.name == "api-a1")
    })
    .expect("b1 sees a1's service through the reflector");
    assert_eq!(rec.address, a1.ip.to_string());
    assert_eq!(rec.txt_value("svc"), Some("api"));
    eprintln!("reflector test done in {:?}", t0.elapsed());
}

#[test]
fn drop_removes_namespaces_and_processes() {
    let lab = Lab::new(2);
    let names = lab.namespaces().to_vec();
    assert_eq!(names.len(), 3, "{names:?}");
    let listed = list_netns();
    assert!(names.iter().all(|n| listed.contains(n)), "{listed:?}");
    let p = lab.host("h1").spawn("sleep", ["1000"]);
    let pid = p.pid();
    // The lab is dropped *before* the Proc: it must still kill it.
    drop(lab);
    let listed = list_netns();
    assert!(names.iter().all(|n| !listed.contains(n)), "{listed:?}");
    // Killed but not reaped yet (the Proc reaps on drop): a zombie.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.contains(") Z "),
        "sleep not killed by the lab's drop: {stat}"
    );
    drop(p);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn drop_cleans_up_on_panic() {
    let state = std::sync::Mutex::new((Vec::new(), [0u32; 2], std::path::PathBuf::new()));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new(2);
        let p = lab.host("h2").spawn("sleep", ["1000"]);
        let mut avahi = lab.host("h1").start_avahi();
        let pids = [p.pid(), avahi.daemon().pid()];
        *state.lock().unwrap() = (lab.namespaces().to_vec(), pids, lab.dir().to_path_buf());
        panic!("deliberate panic inside a lab");
    }));
    assert!(result.is_err());
    let (names, pids, dir) = state.into_inner().unwrap();
    assert_eq!(names.len(), 3);
    let listed = list_netns();
    assert!(names.iter().all(|n| !listed.contains(n)), "{listed:?}");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} survived"
        );
    }
    assert!(!dir.exists() || std::env::var_os("LAB_KEEP").is_some());
}

/// The neighbour tables' collection thresholds the lab raises (they are
/// machine-wide), IPv4 and IPv6.
fn neighbour_thresholds() -> Vec<(String, u64)> {
    ["ipv4", "ipv6"]
        .iter()
        .flat_map(|t| (1..=3).map(move |i| format!("/proc/sys/net/{t}/neigh/default/gc_thresh{i}")))
        .filter_map(|p| {
            let v = std::fs::read_to_string(&p).ok()?.trim().parse().ok()?;
            Some((p, v))
        })
        .collect()
}

#[test]
fn a_big_lab_has_room_in_the_neighbour_tables_while_it_lives() {
    // 12 hosts that all talk hold up to 12 x 20 entries: past the kernel's
    // default gc_thresh1 (128), so the lab must raise it and put it back.
    const HOSTS: u64 = 12;
    let before = neighbour_thresholds();
    assert!(!before.is_empty(), "no neighbour tables in /proc/sys");
    let lab = Lab::new(HOSTS as usize);
    let during = neighbour_thresholds();
    for (path, value) in &during {
        let least = match path.chars().last() {
            Some('1') => HOSTS * (HOSTS + 8),
            _ => 2 * HOSTS * (HOSTS + 8),
        };
        assert!(
            *value >= least,
            "{path} = {value} in a lab of {HOSTS} hosts"
        );
    }
    drop(lab);
    assert_eq!(neighbour_thresholds(), before, "not put back after the lab");
}
