//! Connecting to a backend that may have several addresses (an IPv4 and a
//! link-local IPv6 one, or whatever DNS returns), the way RFC 8305 "Happy
//! Eyeballs" does: start with the first address, start the next one if no
//! answer came within a short delay or the attempt failed, take the first
//! connection that succeeds. A silent first address thus costs a quarter
//! second, not the whole connect timeout.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};

use crate::table::Target;

/// RFC 8305's recommended "Connection Attempt Delay".
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Connects to `target` within `timeout` (name resolution included).
pub async fn dial(target: &Target, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<SocketAddr> = match target {
        Target::Addrs(addrs) => addrs.clone(),
        Target::Name(host, port) => {
            match tokio::time::timeout_at(deadline, tokio::net::lookup_host((host.as_str(), *port)))
                .await
            {
                Ok(found) => found?.collect(),
                Err(_) => return Err(timed_out()),
            }
        }
    };
    let mut pending = addrs.into_iter();
    let mut attempts = JoinSet::new();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
    match pending.next() {
        Some(a) => attempts.spawn(TcpStream::connect(a)),
        None => return Err(last),
    };
    loop {
        tokio::select! {
            done = attempts.join_next(), if !attempts.is_empty() => match done {
                // Dropping `attempts` aborts the slower ones.
                Some(Ok(Ok(stream))) => return Ok(stream),
                Some(Ok(Err(e))) => {
                    last = e;
                    if let Some(a) = pending.next() {
                        attempts.spawn(TcpStream::connect(a));
                    } else if attempts.is_empty() {
                        return Err(last);
                    }
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Err(last),
            },
            _ = sleep(ATTEMPT_DELAY), if pending.len() > 0 => {
                if let Some(a) = pending.next() {
                    attempts.spawn(TcpStream::connect(a));
                }
            }
            _ = sleep_until(deadline) => return Err(timed_out()),
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A port on 127.0.0.1 where nothing listens (just released).
    async fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    /// A listener whose accept queue is full, so connects to it hang.
    async fn silent() -> (std::net::TcpListener, SocketAddr, Vec<TcpStream>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut fill = Vec::new();
        while let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
        {
            fill.push(s);
            assert!(fill.len() < 1000, "the backlog never filled");
        }
        (l, addr, fill)
    }

    #[tokio::test]
    async fn takes_the_first_address_that_answers() {
        let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good_addr = good.local_addr().unwrap();
        let refused = closed_port().await;
        let (_keep, hanging, _fill) = silent().await;

        let t = Target::Addrs(vec![refused, good_addr]);
        let s = dial(&t, Duration::from_secs(5)).await.unwrap();
        assert_eq!(s.peer_addr().unwrap(), good_addr);

        // A silent first address does not eat the whole timeout.
        let t = Target::Addrs(vec![hanging, good_addr]);
        let s = dial(&t, Duration::from_secs(10)).await.unwrap();
        assert_eq!(s.peer_addr().unwrap(), good_addr);

        let t = Target::Addrs(vec![refused]);
        assert_eq!(
            dial(&t, Duration::from_secs(5)).await.unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
        let t = Target::Addrs(vec![hanging]);
        assert_eq!(
            dial(&t, Duration::from_millis(200))
                .await
                .unwrap_err()
                .kind(),
            io::ErrorKind::TimedOut
        );
        assert!(dial(&Target::Addrs(vec![]), Duration::from_secs(1))
            .await
            .is_err());
        let t = Target::Name("localhost".into(), good_addr.port());
        dial(&t, Duration::from_secs(5))
            .await
            .expect("host names are resolved");
    }
}
