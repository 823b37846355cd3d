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

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use subtle::ConstantTimeEq as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::resp;
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

/// Longest answer to a login read: a Redis server answers `AUTH` with one
/// short line, so a backend that sends more is not answering as Redis
/// does, and must not make each connection buffer (and parse) whatever
/// it streams within the login timeout.
pub const MAX_LOGIN_REPLY: usize = 4 * 1024;

/// A backend's no to the login: it answered with a Redis error. The
/// backend is alive. Most often the credentials are wrong (a wrong
/// password, no such user, no password configured there), and it says so;
/// a Redis at its `maxclients` or with `AUTH` renamed away refuses any
/// login, and is not said to refuse the credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {why}", if *.credentials { "the backend refused the credentials" } else { "the backend answered the login with an error" })]
pub struct Refused {
    why: String,
    credentials: bool,
}

impl Refused {
    /// The error `text` (shown as [`reason`] makes it) a backend answered.
    fn new(why: String) -> Refused {
        let code = why.split(' ').next().unwrap_or_default();
        // Redis's own words for a wrong login: WRONGPASS (6.0 on), "invalid
        // password" and "no password is set" before it, "without any
        // password configured" for a password it has no use for.
        let credentials =
            matches!(code, "WRONGPASS" | "NOAUTH") || why.to_ascii_lowercase().contains("password");
        Refused { why, credentials }
    }

    /// Whether the error was about the credentials: one that was not (a
    /// Redis at its `maxclients`) may pass, and is worth trying again.
    pub fn about_credentials(&self) -> bool {
        self.credentials
    }
}

/// Why a backend connection could not be logged in.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The backend did not answer in time.
    #[error("the backend did not answer the login within {0:?}")]
    Timeout(Duration),
    /// The connection failed under us (closed, reset).
    #[error("the backend connection failed during the login: {0}")]
    Io(io::Error),
    /// The backend answered with something no Redis server answers `AUTH`
    /// with (what it was, never its content, which might echo a secret).
    #[error("the backend answered the login with {0}, not as a Redis server does")]
    NotRedis(&'static str),
}

impl Credentials {
    /// Whether `other` logs in as these do: a reload that read the same
    /// file again tells a rotated password by this. Compared in constant
    /// time, as any test of a secret is.
    pub fn same_login(&self, other: &Credentials) -> bool {
        let (Login::Redis { auth: a, .. }, Login::Redis { auth: b, .. }) =
            (&self.login, &other.login);
        a.expose().ct_eq(b.expose()).into()
    }

    /// Logs `stream` in, within `timeout` for sending and the whole reply.
    pub async fn log_in<S>(&self, stream: &mut S, timeout: Duration) -> Result<(), LoginError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Login::Redis { auth, password } = &self.login;
        let exchange = async {
            stream
                .write_all(auth.expose())
                .await
                .map_err(LoginError::Io)?;
            read_answer(stream).await
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| LoginError::Timeout(timeout))??;
        match answer.split_first() {
            Some((&b'+', b"OK")) => Ok(()),
            Some((&b'-', text)) => Err(Refused::new(reason(text, password)).into()),
            Some((&b'+', _)) => Err(LoginError::NotRedis("a status other than OK")),
            _ => Err(LoginError::NotRedis("a line that is no status nor error")),
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
/// password, even from a backend that repeats what it was sent. Redis
/// repeats an unknown command's arguments cut at 128 bytes (an `AUTH`
/// renamed away), so a long password can come back cut short, where
/// replacing it whole would miss it: an answer that still holds
/// [`PASSWORD_RUN`] bytes of it in a row shows only its error code.
fn reason(text: &[u8], password: &Secret) -> String {
    // Compared as shown, control bytes as spaces on both sides: Redis
    // too turns CR and LF into spaces when it repeats an argument.
    let blank = |b: &u8| if b.is_ascii_control() { b' ' } else { *b };
    let password = Secret::new(password.expose().iter().map(blank).collect());
    let password = password.expose();
    let text: Vec<u8> = text.iter().map(blank).collect();
    let text = redacted_cuts(&redacted(&text, password), password);
    let run = password.len().min(PASSWORD_RUN);
    let runs: HashSet<&[u8]> = password.windows(run.max(1)).collect();
    let repeats = |t: &[u8]| run > 0 && t.windows(run).any(|w| runs.contains(w));
    let mut text = if repeats(&text) {
        // Its code alone ("ERR", "WRONGPASS"), when it is one.
        let code = text
            .split(|&b| b == b' ')
            .next()
            .filter(|w| w.len() <= 16 && w.iter().all(u8::is_ascii_uppercase) && !repeats(w))
            .unwrap_or_default();
        format!(
            "{} (the rest repeats part of the password: not shown)",
            String::from_utf8_lossy(code)
        )
        .trim_start()
        .to_owned()
    } else {
        String::from_utf8_lossy(&text).into_owned()
    };
    // What is text only once decoded: C1 controls (U+009B starts a
    // terminal escape too).
    text = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > MAX_REASON {
        text = text.chars().take(MAX_REASON).collect::<String>() + "...";
    }
    text
}

/// Bytes of the password in a row that hide a backend's answer
/// ([`reason`]): a run that long is no chance likeness with an error's
/// words ("password" itself is eight).
const PASSWORD_RUN: usize = 10;

/// `text` with every whole `password` in it replaced, byte for byte (a
/// password may hold bytes that are not text).
fn redacted(text: &[u8], password: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return text.to_vec();
    }
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.windows(password.len()).position(|w| w == password) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(b"<redacted>");
        rest = &rest[at + password.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// `text` with every quoted start of `password` in it replaced: Redis
/// quotes each argument it repeats and cuts them all at 128 bytes in
/// total, so a long user name leaves only the password's first bytes, too
/// few for [`PASSWORD_RUN`], between quotes at the end (`'pass'`). A
/// quoted word that only happens to begin the password is hidden too,
/// which costs the reader a word, never the password.
fn redacted_cuts(text: &[u8], password: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.iter().position(|&b| b == b'\'') {
        let (before, quoted) = rest.split_at(at + 1);
        out.extend_from_slice(before);
        let common = (quoted.iter().zip(password))
            .take_while(|(a, b)| a == b)
            .count();
        rest = quoted;
        if (1..password.len()).contains(&common) && quoted.get(common) == Some(&b'\'') {
            out.extend_from_slice(b"<redacted>");
            rest = &quoted[common..];
        }
    }
    out.extend_from_slice(rest);
    out
}

/// The one line a login is answered with, without its CRLF, read
/// [`MAX_LOGIN_REPLY`] bytes at most. Each read is searched alone (with
/// the byte before it, which may be the CR), so a line that trickles in
/// costs no re-parsing.
async fn read_answer<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, LoginError> {
    let mut buf = vec![0; MAX_LOGIN_REPLY];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await.map_err(LoginError::Io)?;
        if n == 0 {
            return Err(LoginError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let from = len.saturating_sub(1);
        len += n;
        if let Some(at) = buf[from..len].windows(2).position(|w| w == b"\r\n") {
            let end = from + at;
            if end + 2 != len {
                // A Redis server sends nothing unasked; bytes after the
                // answer would reach the client as an answer to its
                // first command.
                return Err(LoginError::NotRedis("more than one line"));
            }
            buf.truncate(end);
            return Ok(buf);
        }
        if len == MAX_LOGIN_REPLY {
            return Err(LoginError::NotRedis(
                "more bytes than an answer to AUTH has",
            ));
        }
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
        let echoed = reason(b"WRONGPASS s3cret\r\nis s3cret", &password);
        assert_eq!(echoed, "WRONGPASS <redacted>  is <redacted>");
        let long = reason("x".repeat(1000).as_bytes(), &password);
        assert_eq!(long.len(), MAX_REASON + 3);

        // Control characters and bytes that are not text are hidden too.
        let odd = b"tab\there\xff\xfe!".to_vec();
        let password = Secret::new(odd.clone());
        let shown = reason(&[b"ERR bad ".as_slice(), &odd].concat(), &password);
        assert_eq!(shown, "ERR bad <redacted>");
        // A CR in it comes back as a space, as Redis repeats it.
        let password = Secret::new(b"abc\rdefghijklm".to_vec());
        let shown = reason(b"ERR x 'abc defghijklm'", &password);
        assert_eq!(shown, "ERR x '<redacted>'");

        // Repeated cut short, as Redis repeats an unknown command's
        // arguments: only the error code shows.
        let long = "0123456789abcdef".repeat(8);
        let password = Secret::new(long.clone().into_bytes());
        let cut = format!(
            "ERR unknown command 'AUTH', with args beginning with: '{}' ",
            &long[..120]
        );
        let shown = reason(cut.as_bytes(), &password);
        assert_eq!(
            shown,
            "ERR unknown command 'AUTH', with args beginning with: '<redacted>' "
        );
        // Unquoted, a run of it hides all but the error code.
        let cut = format!("ERR unknown command AUTH {}", &long[..120]);
        let shown = reason(cut.as_bytes(), &password);
        assert_eq!(
            shown,
            "ERR (the rest repeats part of the password: not shown)"
        );
        assert!(!shown.contains("0123456789"), "{shown}");
        // Cut after a few bytes, behind a long user name: those few are
        // hidden too.
        let password = Secret::new(b"0123456789abcdef".to_vec());
        let user = "u".repeat(110);
        let cut =
            format!("ERR unknown command 'AUTHX', with args beginning with: '{user}' '0123' ");
        let shown = reason(cut.as_bytes(), &password);
        assert!(
            shown
                .trim_end()
                .ends_with(&format!("'{user}' '<redacted>'")),
            "{shown}"
        );
        // A leading word in capitals that repeats it is no error code.
        let password = Secret::new(b"ABCDEFGHIJKLMNOPQRS".to_vec());
        assert_eq!(
            reason(b"ABCDEFGHIJKLMN whatever", &password),
            "(the rest repeats part of the password: not shown)"
        );

        // An error's words are no password, even one made of them.
        let password = Secret::new(b"password123".to_vec());
        let wrong = b"WRONGPASS invalid username-password pair or user is disabled.";
        assert_eq!(reason(wrong, &password), String::from_utf8_lossy(wrong));
    }

    /// How a login outcome shows: its kind, and the message of an error.
    fn shown(r: Result<(), LoginError>) -> String {
        match r {
            Ok(()) => "ok".to_owned(),
            Err(e @ LoginError::Refused(_)) => format!("refused: {e}"),
            Err(LoginError::Timeout(_)) => "timeout".to_owned(),
            Err(LoginError::Io(_)) => "io".to_owned(),
            Err(e @ LoginError::NotRedis(_)) => format!("not redis: {e}"),
        }
    }

    /// Credentials for alice, with their AUTH command.
    fn alice() -> (Credentials, Vec<u8>) {
        let dir = TempDir::new();
        let c = spec(&dir.secret_file("pass", b"alice\ns3cret\n"))
            .load()
            .unwrap();
        (c, resp::encode(&[b"AUTH", b"alice", b"s3cret"]))
    }

    /// Logs in to a scripted backend that reads the AUTH command, then
    /// sends `answer` (through a pipe of `pipe` bytes, so that reads come
    /// in pieces that small) and closes. The outcome, and how many bytes
    /// of the answer the login read.
    async fn log_in_to(answer: &[u8], pipe: usize) -> (String, usize) {
        use tokio::io::AsyncReadExt;
        let (c, auth) = alice();
        let (mut ours, mut theirs) = tokio::io::duplex(pipe);
        let backend = async move {
            let mut got = vec![0; auth.len()];
            theirs.read_exact(&mut got).await.unwrap();
            assert_eq!(got, auth);
            // Fails once the login gave up and dropped the rest.
            let _ = theirs.write_all(answer).await;
        };
        let login = async {
            let r = c.log_in(&mut ours, Duration::from_secs(5)).await;
            let mut rest = Vec::new();
            ours.read_to_end(&mut rest).await.unwrap();
            (shown(r), answer.len() - rest.len())
        };
        tokio::join!(login, backend).0
    }

    /// The login against a scripted backend: how each kind of answer comes
    /// out. (Against real Redis: tests/credentials.rs.)
    #[tokio::test]
    async fn each_answer_is_its_own_outcome() {
        let refused = "refused: the backend refused the credentials:";
        let not_redis = "not redis: the backend answered the login with";
        let cases: &[(&[u8], &str)] = &[
            (b"+OK\r\n", "ok"),
            (
                b"-WRONGPASS invalid username-password pair\r\n",
                "refused: the backend refused the credentials: WRONGPASS invalid",
            ),
            (
                b"-ERR AUTH <password> called without any password configured\r\n",
                refused,
            ),
            (
                b"-ERR max number of clients reached\r\n",
                "refused: the backend answered the login with an error: ERR max number",
            ),
            (
                b"-ERR unknown command 'AUTH', with args beginning with: \r\n",
                "refused: the backend answered the login with an error: ERR unknown",
            ),
            (b"-ERR invalid password\r\n", refused),
            (
                b"-ERR Client sent AUTH, but no password is set\r\n",
                refused,
            ),
            (
                b"-\r\n",
                "refused: the backend answered the login with an error: ",
            ),
            (
                b"+PONG\r\n",
                "not redis: the backend answered the login with a status",
            ),
            (b":1\r\n", not_redis),
            (b"$2\r\nOK\r\n", not_redis),
            (b"HTTP/1.1 400 Bad Request\r\n", not_redis),
            (b"+OK", "io"),
            (b"", "io"),
        ];
        for (answer, want) in cases {
            // Whole, and a byte at a time (a CR and its LF in two reads).
            for pipe in [1024, 1] {
                let (r, _) = log_in_to(answer, pipe).await;
                assert!(r.starts_with(want), "{answer:?} in pieces of {pipe}: {r}");
            }
        }
        // More than the answer, seen when it comes with the answer (what
        // comes after it would go to the client, unasked for).
        for answer in [&b"+OK\r\n+OK\r\n"[..], b"+OK\r\n:1\r\n"] {
            let (r, _) = log_in_to(answer, 1024).await;
            assert!(r.contains("more than one line"), "{answer:?}: {r}");
        }
        // A backend that never answers.
        let (c, _) = alice();
        let (mut ours, _theirs) = tokio::io::duplex(1024);
        let r = c.log_in(&mut ours, Duration::from_millis(50)).await;
        assert_eq!(shown(r), "timeout");
    }

    /// A backend streaming a huge or endless answer gets [`MAX_LOGIN_REPLY`]
    /// bytes read, no more, and is no Redis server; an answer line of the
    /// longest length allowed still counts.
    #[tokio::test]
    async fn the_answer_is_read_up_to_the_cap_and_no_further() {
        let endless = vec![b'x'; 1 << 20];
        let (r, read) = log_in_to(&endless, 64 * 1024).await;
        assert!(r.contains("more bytes than an answer to AUTH has"), "{r}");
        assert_eq!(read, MAX_LOGIN_REPLY);

        // A bulk string of 60 MB announced: given up at its header.
        let mut bulk = b"$60000000\r\n".to_vec();
        bulk.resize(1 << 20, 0);
        let (r, read) = log_in_to(&bulk, 64 * 1024).await;
        assert!(r.starts_with("not redis"), "{r}");
        assert!(read <= MAX_LOGIN_REPLY, "{read}");

        let longest = |len: usize| {
            let mut line = b"-".to_vec();
            line.resize(len - 2, b'x');
            line.extend_from_slice(b"\r\n");
            line
        };
        let (r, _) = log_in_to(&longest(MAX_LOGIN_REPLY), 1024).await;
        assert!(r.starts_with("refused"), "{r}");
        let (r, read) = log_in_to(&longest(MAX_LOGIN_REPLY + 1), 1024).await;
        assert!(r.starts_with("not redis"), "{r}");
        assert_eq!(read, MAX_LOGIN_REPLY);
    }
}
