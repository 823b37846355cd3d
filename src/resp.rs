//! The Redis protocol (RESP2), as much as an ambassador needs to speak it
//! itself: encode a command, parse a value. Parsing is sans-I/O (bytes in,
//! value and length out) so that the async data plane, blocking test
//! clients and the demo's stand-in server share one implementation; the
//! credentials stage (Redis `AUTH` on behalf of the application) builds on
//! it.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest bulk string or array accepted: Redis's own limit for a bulk
/// string is 512 MB; far smaller keeps a hostile peer from making us
/// allocate much before the bytes arrive.
const MAX_LEN: i64 = 64 * 1024 * 1024;
/// Longest header line (`+...`, `-...`, `$len`) accepted before its CRLF:
/// status and error lines are short; a peer that never ends its line must
/// not grow the buffer without bound.
const MAX_LINE: usize = 64 * 1024;
/// Deepest nesting of arrays accepted, so a hostile peer cannot overflow
/// the stack.
const MAX_DEPTH: usize = 32;
/// Read size of the helpers that wait for a whole reply.
const READ_CHUNK: usize = 16 * 1024;

/// A RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3 foo`, or `$-1` (nil).
    Bulk(Option<Vec<u8>>),
    /// `*2 ...`, or `*-1` (nil, as an empty array).
    Array(Vec<Value>),
}

/// `args` as a RESP array of bulk strings: how clients send commands.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(args));
    encode_into(&mut out, args);
    out
}

/// The length of `args` encoded.
pub fn encoded_len(args: &[&[u8]]) -> usize {
    let digits = |n: usize| n.to_string().len();
    let items: usize = args
        .iter()
        .map(|a| 1 + digits(a.len()) + 2 + a.len() + 2)
        .sum();
    1 + digits(args.len()) + 2 + items
}

/// [`encode`], appended to `out`: with room for [`encoded_len`] reserved
/// first, no reallocation leaves a stray copy of a secret argument behind.
pub fn encode_into(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// The value at the start of `buf` and its length in bytes; `Ok(None)`
/// while it is incomplete.
pub fn parse(buf: &[u8]) -> io::Result<Option<(Value, usize)>> {
    parse_at(buf, 0, 0)
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The line starting at `at` (without CRLF) and the offset after it;
/// `Ok(None)` while it is incomplete.
fn line(buf: &[u8], at: usize) -> io::Result<Option<(&[u8], usize)>> {
    let Some(rest) = buf.get(at..) else {
        return Ok(None);
    };
    let window = &rest[..rest.len().min(MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some((&rest[..end], at + end + 2))),
        // Only a full window without CRLF is too long: one byte fewer may
        // end in the CR of a line of the longest length allowed.
        None if window.len() == MAX_LINE + 2 => Err(bad("line too long")),
        None => Ok(None),
    }
}

fn number(text: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| bad(format!("bad number {:?}", String::from_utf8_lossy(text))))
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> io::Result<Option<(Value, usize)>> {
    if depth > MAX_DEPTH {
        return Err(bad("arrays nested too deep"));
    }
    let Some((head, next)) = line(buf, at)? else {
        return Ok(None);
    };
    let Some((&kind, rest)) = head.split_first() else {
        return Err(bad("empty line"));
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    let value = match kind {
        b'+' => (Value::Simple(text()), next),
        b'-' => (Value::Error(text()), next),
        b':' => (Value::Int(number(rest)?), next),
        b'$' => match number(rest)? {
            -1 => (Value::Bulk(None), next),
            n if (0..=MAX_LEN).contains(&n) => {
                let end = next + n as usize;
                match buf.get(end..end + 2) {
                    None => return Ok(None),
                    Some(b"\r\n") => (Value::Bulk(Some(buf[next..end].to_vec())), end + 2),
                    Some(_) => return Err(bad("bulk string without CRLF")),
                }
            }
            n => return Err(bad(format!("bulk length {n}"))),
        },
        b'*' => match number(rest)? {
            -1 => (Value::Array(Vec::new()), next),
            n if (0..=MAX_LEN).contains(&n) => {
                let mut items = Vec::new();
                let mut at = next;
                for _ in 0..n {
                    match parse_at(buf, at, depth + 1)? {
                        Some((v, after)) => {
                            items.push(v);
                            at = after;
                        }
                        None => return Ok(None),
                    }
                }
                (Value::Array(items), at)
            }
            n => return Err(bad(format!("array length {n}"))),
        },
        other => return Err(bad(format!("unexpected type byte {:?}", other as char))),
    };
    Ok(Some(value))
}

/// One reply being read, whatever the stream: the bytes so far, parsed as
/// they come.
#[derive(Default)]
struct ReplyReader(Vec<u8>);

impl ReplyReader {
    /// The reply once it is whole; until then, room to read more into.
    fn next(&mut self) -> io::Result<Result<Value, &mut [u8]>> {
        if let Some((v, _)) = parse(&self.0)? {
            return Ok(Ok(v));
        }
        let len = self.0.len();
        self.0.resize(len + READ_CHUNK, 0);
        Ok(Err(&mut self.0[len..]))
    }

    /// Keeps the `n` bytes read into that room; a stream that ended before
    /// the reply did is an error.
    fn filled(&mut self, n: usize) -> io::Result<()> {
        self.0.truncate(self.0.len() - READ_CHUNK + n);
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// Sends `args` as one command and reads one reply.
pub async fn command<S>(s: &mut S, args: &[&[u8]]) -> io::Result<Value>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(&encode(args)).await?;
    read_reply(s).await
}

/// Reads one reply. Bytes past it are dropped: only for a peer that sends
/// nothing unasked, as a Redis server answering one command.
pub async fn read_reply<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Value> {
    let mut reply = ReplyReader::default();
    loop {
        let n = match reply.next()? {
            Ok(v) => return Ok(v),
            Err(room) => s.read(room).await?,
        };
        reply.filled(n)?;
    }
}

/// [`command`] over a blocking stream.
pub fn command_blocking<S: io::Read + io::Write>(s: &mut S, args: &[&[u8]]) -> io::Result<Value> {
    s.write_all(&encode(args))?;
    let mut reply = ReplyReader::default();
    loop {
        let n = match reply.next()? {
            Ok(v) => return Ok(v),
            Err(room) => s.read(room)?,
        };
        reply.filled(n)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_whole_and_wait_when_cut() {
        let cases: &[(&[u8], Value)] = &[
            (b"+PONG\r\n", Value::Simple("PONG".into())),
            (b"-ERR no\r\n", Value::Error("ERR no".into())),
            (b":-7\r\n", Value::Int(-7)),
            (b"$-1\r\n", Value::Bulk(None)),
            (b"$0\r\n\r\n", Value::Bulk(Some(vec![]))),
            (b"$4\r\na\r\nb\r\n", Value::Bulk(Some(b"a\r\nb".to_vec()))),
            (
                b"*2\r\n$4\r\nPING\r\n*1\r\n:1\r\n",
                Value::Array(vec![
                    Value::Bulk(Some(b"PING".to_vec())),
                    Value::Array(vec![Value::Int(1)]),
                ]),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                parse(bytes).unwrap(),
                Some((want.clone(), bytes.len())),
                "{bytes:?}"
            );
            for cut in 0..bytes.len() {
                assert_eq!(
                    parse(&bytes[..cut]).unwrap(),
                    None,
                    "{bytes:?} cut at {cut}"
                );
            }
        }
        let set: [&[u8]; 3] = [b"SET", b"k", &[b'v'; 100]];
        assert_eq!(encode(&set).len(), encoded_len(&set));
        assert_eq!(
            parse(&encode(&[b"SET", b"k", b"v"])).unwrap().unwrap().0,
            Value::Array(vec![
                Value::Bulk(Some(b"SET".to_vec())),
                Value::Bulk(Some(b"k".to_vec())),
                Value::Bulk(Some(b"v".to_vec())),
            ])
        );
    }

    /// A line of the longest length allowed, cut between its CR and LF,
    /// is incomplete: the next read may bring the LF.
    #[test]
    fn the_longest_line_cut_before_its_lf_waits() {
        let mut line = b"+".to_vec();
        line.resize(MAX_LINE, b'x');
        line.extend_from_slice(b"\r\n");
        let whole = parse(&line).unwrap().map(|(_, n)| n);
        assert_eq!(whole, Some(line.len()));
        assert_eq!(parse(&line[..line.len() - 1]).unwrap(), None);
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let mut deep = Vec::new();
        for _ in 0..1000 {
            deep.extend_from_slice(b"*1\r\n");
        }
        let mut long = b"+".to_vec();
        long.resize(MAX_LINE + 10, b'x');
        for bytes in [
            &b"?\r\n"[..],
            b"\r\n",
            b":x\r\n",
            b"$-2\r\n",
            b"$99999999999\r\n",
            b"*-5\r\n",
            b"$1\r\nab\r\n",
            &deep,
            &long,
        ] {
            assert!(parse(bytes).is_err(), "{bytes:?}");
        }
    }
}
