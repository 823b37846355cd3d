//! Credentials injection: the ambassador logs in to each backend connection
//! on the application's behalf, so the application holds no password and
//! the same application code runs against staging and production, each
//! node carrying its own credentials file.
//!
//! `--credentials NAME=PROTOCOL:FILE` names a consumed service, the
//! protocol to log in with and the file holding the secret. Only `redis`
//! exists today; the prefix is there so that others (PostgreSQL, AMQP)
//! become one more [`Protocol`] and one more login, not a new flag.
//!
//! A Redis credentials file holds one line, the password (`requirepass`),
//! or two lines, a Redis 6 ACL user name and its password. Each line is
//! taken byte for byte (spaces included); only the line ends (`\n` or
//! `\r\n`) are not part of it. The file goes through
//! [`read_secret_file`], so one that group or others can read is refused.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::resp::{self, Value};
use crate::secret::{read_secret_file, Secret, SecretFileError};
use crate::spec::{parse_name, SpecError};

/// Longest part of a backend's error reply passed on to clients and logs:
/// Redis's own are one short sentence; a longer one is not worth a log
/// line's room.
const MAX_REASON: usize = 200;

/// What a backend speaks, and so how to log in to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `AUTH [user] password`, answered by `+OK`.
    Redis,
}

impl Protocol {
    const ALL: [Protocol; 1] = [Protocol::Redis];

    fn name(self) -> &'static str {
        match self {
            Protocol::Redis => "redis",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Protocol, SpecError> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Protocol::ALL.iter().map(|p| p.name()).collect();
                SpecError::new(format!(
                    "unknown protocol '{s}' (known: {})",
                    known.join(", ")
                ))
            })
    }
}

/// `--credentials NAME=PROTOCOL:FILE` as the user wrote it: which consumed
/// service, how to log in, and where the secret is. Holds no secret, so it
/// can be shown anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsSpec {
    /// The consumed service (`--consume NAME:...`) these are for.
    pub service: String,
    pub protocol: Protocol,
    /// The credentials file.
    pub file: PathBuf,
}

impl fmt::Display for CredentialsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}:{}",
            self.service,
            self.protocol,
            self.file.display()
        )
    }
}

impl FromStr for CredentialsSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<CredentialsSpec, SpecError> {
        let form = || {
            SpecError::new(format!(
                "expected NAME=PROTOCOL:FILE (e.g. redis=redis:/etc/mesh-amb/redis.pass), got '{s}'"
            ))
        };
        let (service, rest) = s.split_once('=').ok_or_else(form)?;
        let (protocol, file) = rest.split_once(':').ok_or_else(form)?;
        if file.is_empty() {
            return Err(form());
        }
        Ok(CredentialsSpec {
            service: parse_name(service)?,
            protocol: protocol.parse()?,
            file: PathBuf::from(file),
        })
    }
}

crate::value::serde_via_str!(CredentialsSpec);

/// Why a credentials file cannot be used. Names the file, never its
/// content.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    File(#[from] SecretFileError),
    #[error(
        "{path}: {why}; a {protocol} credentials file holds a password on one line, \
         or a user name and a password on two"
    )]
    Format {
        path: PathBuf,
        protocol: Protocol,
        why: String,
    },
}

/// Loaded credentials of one consumed service. `Debug` shows the spec,
/// never the secret.
#[derive(Debug)]
pub struct Credentials {
    pub spec: CredentialsSpec,
    login: Login,
}

/// What is sent to log in, per protocol.
#[derive(Debug)]
enum Login {
    Redis {
        /// The whole `AUTH` command, encoded once at start-up, so that no
        /// copy of the password is made per connection.
        auth: Secret,
        /// To blank it out of a backend's reply, should a backend echo it.
        password: Secret,
    },
}

impl Login {
    fn redis(auth: &[&[u8]], password: &[u8]) -> Login {
        // Sized up front: a buffer that grew would leave the password in
        // the memory it gave back, unwiped.
        let mut command = Vec::with_capacity(resp::encoded_len(auth));
        resp::encode_into(&mut command, auth);
        Login::Redis {
            auth: Secret::new(command),
            password: Secret::new(password.to_vec()),
        }
    }
}

impl CredentialsSpec {
    /// Reads and checks the credentials file.
    pub fn load(&self) -> Result<Credentials, CredentialsError> {
        let secret = read_secret_file(&self.file)?;
        let bad = |why: String| CredentialsError::Format {
            path: self.file.clone(),
            protocol: self.protocol,
            why,
        };
        let text = secret.expose();
        let text = text
            .strip_suffix(b"\n")
            .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
            .unwrap_or(text);
        if text.is_empty() {
            return Err(bad("it is empty".into()));
        }
        let lines: Vec<&[u8]> = text
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .collect();
        if let Some(n) = lines.iter().position(|l| l.is_empty()) {
            return Err(bad(format!("line {} is empty", n + 1)));
        }
        let login = match (self.protocol, lines.as_slice()) {
            (Protocol::Redis, [password]) => Login::redis(&[b"AUTH", password], password),
            (Protocol::Redis, [user, password]) => {
                Login::redis(&[b"AUTH", user, password], password)
            }
            (Protocol::Redis, more) => return Err(bad(format!("it has {} lines", more.len()))),
        };
        Ok(Credentials {
            spec: self.clone(),
            login,
        })
    }
}

/// Why a backend connection could not be logged in.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The backend answered, and not with a yes: wrong password, unknown
    /// user, no password configured there, or not the protocol we speak.
    /// The backend is alive; the credentials (or the service) are wrong.
    #[error("the backend refused the credentials: {0}")]
    Refused(String),
    /// The backend did not answer in time.
    #[error("the backend did not answer the login within {0:?}")]
    Timeout(Duration),
    /// The connection failed under us (closed, reset).
    #[error("the backend connection failed during the login: {0}")]
    Io(io::Error),
}

impl Credentials {
    /// Logs `stream` in, within `timeout` for sending and the whole reply.
    pub async fn log_in<S>(&self, stream: &mut S, timeout: Duration) -> Result<(), LoginError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Login::Redis { auth, password } = &self.login;
        let exchange = async {
            stream.write_all(auth.expose()).await?;
            resp::read_reply(stream).await
        };
        let reply = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => return Err(LoginError::Timeout(timeout)),
            // A reply we cannot parse: the backend answered, in some other
            // protocol than the one configured.
            Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(LoginError::Refused(format!("not a Redis reply ({e})")))
            }
            Ok(Err(e)) => return Err(LoginError::Io(e)),
            Ok(Ok(reply)) => reply,
        };
        match reply {
            Value::Simple(ok) if ok == "OK" => Ok(()),
            Value::Error(text) => Err(LoginError::Refused(reason(&text, password))),
            other => Err(LoginError::Refused(format!(
                "unexpected reply to AUTH: {}",
                kind(&other)
            ))),
        }
    }

    /// What a client turned away is told, in the protocol it speaks, so
    /// that the application reports a reason rather than a closed
    /// connection.
    pub fn client_error(&self, why: &dyn fmt::Display) -> Vec<u8> {
        let why: String = why
            .to_string()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        match self.spec.protocol {
            Protocol::Redis => format!("-ERR mesh-amb: {why}\r\n").into_bytes(),
        }
    }
}

/// A backend's error text, fit to show: one short line, and never the
/// password, even from a backend that repeats what it was sent.
fn reason(text: &str, password: &Secret) -> String {
    let mut text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if let Ok(p) = std::str::from_utf8(password.expose()) {
        text = text.replace(p, "<redacted>");
    }
    if text.chars().count() > MAX_REASON {
        text = text.chars().take(MAX_REASON).collect::<String>() + "...";
    }
    text
}

/// The type of a reply, without its content (which might echo a secret).
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Simple(_) => "a status",
        Value::Error(_) => "an error",
        Value::Int(_) => "an integer",
        Value::Bulk(_) => "a bulk string",
        Value::Array(_) => "an array",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::test_files::TempDir;
    use std::path::Path;

    fn spec(file: &Path) -> CredentialsSpec {
        format!("cache=redis:{}", file.display()).parse().unwrap()
    }

    #[test]
    fn specs_parse_and_show_as_written() {
        let s: CredentialsSpec = "Cache=redis:/etc/a:b".parse().unwrap();
        assert_eq!(s.service, "cache");
        assert_eq!(s.protocol, Protocol::Redis);
        assert_eq!(s.file, Path::new("/etc/a:b"));
        assert_eq!(s.to_string(), "cache=redis:/etc/a:b");
        for (bad, want) in [
            ("cache", "expected NAME=PROTOCOL:FILE"),
            ("cache=/etc/pass", "expected NAME=PROTOCOL:FILE"),
            ("cache=redis:", "expected NAME=PROTOCOL:FILE"),
            (
                "cache=memcached:/f",
                "unknown protocol 'memcached' (known: redis)",
            ),
            ("=redis:/f", "the service name is empty"),
            ("a.b=redis:/f", "invalid service name 'a.b'"),
        ] {
            let e = bad.parse::<CredentialsSpec>().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    fn auth_of(c: &Credentials) -> Vec<u8> {
        let Login::Redis { auth, .. } = &c.login;
        auth.expose().to_vec()
    }

    #[test]
    fn one_line_is_a_password_two_are_a_user_and_a_password() {
        for (body, args) in [
            (&b"s3cret\n"[..], &[&b"AUTH"[..], b"s3cret"][..]),
            (b"s3cret", &[b"AUTH", b"s3cret"]),
            (b"with space \r\n", &[b"AUTH", b"with space "]),
            (b"alice\ns3cret\n", &[b"AUTH", b"alice", b"s3cret"]),
            (b"alice\r\ns3cret", &[b"AUTH", b"alice", b"s3cret"]),
        ] {
            let dir = TempDir::new();
            let path = dir.secret_file("pass", body);
            let c = spec(&path).load().unwrap();
            assert_eq!(auth_of(&c), resp::encode(args), "{body:?}");
        }
    }

    #[test]
    fn bad_files_name_the_file_and_never_the_content() {
        for (body, want) in [
            (&b""[..], "it is empty"),
            (b"\n", "it is empty"),
            (b"alice\n\n", "line 2 is empty"),
            (b"\ns3cret", "line 1 is empty"),
            (b"alice\ns3cret\nmore\n", "it has 3 lines"),
        ] {
            let dir = TempDir::new();
            let path = dir.secret_file("pass", body);
            let e = spec(&path).load().unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(shown.contains(want), "{body:?}: {shown}");
            assert!(shown.contains(&path.display().to_string()), "{shown}");
            for word in ["alice", "s3cret", "more"] {
                assert!(!shown.contains(word), "{body:?}: {shown}");
            }
        }
    }

    #[test]
    fn debug_shows_the_file_not_the_secret() {
        let dir = TempDir::new();
        let path = dir.secret_file("pass", b"alice\ns3cret\n");
        let c = spec(&path).load().unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("cache") && shown.contains("pass"), "{shown}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("alice"),
            "{shown}"
        );
    }

    #[test]
    fn a_backend_echoing_the_password_does_not_get_it_shown() {
        let password = Secret::new(b"s3cret".to_vec());
        let echoed = reason("WRONGPASS s3cret\r\nis s3cret", &password);
        assert_eq!(echoed, "WRONGPASS <redacted>  is <redacted>");
        let long = reason(&"x".repeat(1000), &password);
        assert_eq!(long.len(), MAX_REASON + 3);
    }

    /// The login against a scripted backend: what it is sent and how each
    /// kind of answer comes out. (Against real Redis: tests/credentials.rs.)
    #[tokio::test]
    async fn each_answer_is_its_own_outcome() {
        use tokio::io::AsyncReadExt;
        let dir = TempDir::new();
        let c = spec(&dir.secret_file("pass", b"alice\ns3cret\n"))
            .load()
            .unwrap();
        drop(dir);
        let t = Duration::from_secs(5);
        // How each outcome shows: its kind, and a refusal's reason.
        let shown = |r: Result<(), LoginError>| match r {
            Ok(()) => "ok".to_owned(),
            Err(LoginError::Refused(why)) => format!("refused: {why}"),
            Err(LoginError::Timeout(_)) => "timeout".to_owned(),
            Err(LoginError::Io(_)) => "io".to_owned(),
        };
        let cases: [(&[u8], &str); 5] = [
            (b"+OK\r\n", "ok"),
            (
                b"-WRONGPASS invalid username-password pair\r\n",
                "refused: WRONGPASS invalid username-password pair",
            ),
            (b":1\r\n", "refused: unexpected reply to AUTH: an integer"),
            (
                b"HTTP/1.1 400 Bad Request\r\n",
                "refused: not a Redis reply",
            ),
            (b"", "io"),
        ];
        for (answer, want) in cases {
            let (mut ours, mut theirs) = tokio::io::duplex(1024);
            let backend = async {
                let mut got = vec![0; resp::encode(&[b"AUTH", b"alice", b"s3cret"]).len()];
                theirs.read_exact(&mut got).await.unwrap();
                theirs.write_all(answer).await.unwrap();
                drop(theirs);
                got
            };
            let (r, got) = tokio::join!(c.log_in(&mut ours, t), backend);
            assert_eq!(got, resp::encode(&[b"AUTH", b"alice", b"s3cret"]));
            let r = shown(r);
            assert!(r.starts_with(want), "{answer:?}: {r}");
        }
        // A backend that never answers.
        let (mut ours, _theirs) = tokio::io::duplex(1024);
        let r = c.log_in(&mut ours, Duration::from_millis(50)).await;
        assert_eq!(shown(r), "timeout");
    }
}
