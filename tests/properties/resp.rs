//! RESP replies from Redis backends: a backend, or whoever answers on its
//! address, can send any bytes, cut anywhere.

use std::io::{self, Read, Write};

use mesh_amb::resp::{command_blocking, encode, parse, Value};
use proptest::prelude::*;

/// A value as Redis writes it, written here independently of the parser.
fn write(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Simple(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
        Value::Error(s) => out.extend_from_slice(format!("-{s}\r\n").as_bytes()),
        Value::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
        Value::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
        Value::Bulk(Some(b)) => {
            out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Value::Array(items) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for i in items {
                write(i, out);
            }
        }
    }
}

fn encoded(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(v, &mut out);
    out
}

fn value() -> impl Strategy<Value = Value> {
    let line = || crate::regex("[^\r\n]{0,16}");
    let leaf = prop_oneof![
        line().prop_map(Value::Simple),
        line().prop_map(Value::Error),
        any::<i64>().prop_map(Value::Int),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..24)).prop_map(Value::Bulk),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop::collection::vec(inner, 0..6).prop_map(Value::Array)
    })
}

/// Bytes near the protocol (type bytes, lengths, CRLF in and out of
/// place), or any.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    const PIECES: &[&[u8]] = &[
        b"+",
        b"-",
        b":",
        b"$",
        b"*",
        b"\r\n",
        b"\r",
        b"\n",
        b"0",
        b"1",
        b"2",
        b"-1",
        b"-2",
        b"OK",
        b"9223372036854775807",
        b"99999999999999999999",
        b"\xff",
    ];
    let piece = prop::sample::select(PIECES);
    prop_oneof![
        prop::collection::vec(piece, 0..24).prop_map(|p| p.concat()),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// A stream that hands out a reply in the given chunk sizes, as a
/// socket may, then ends; what is written to it is dropped.
struct Chunked {
    data: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
}

impl Read for Chunked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.sizes.pop().unwrap_or(usize::MAX).max(1);
        let n = size.min(buf.len()).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Chunked {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

proptest! {
    #![proptest_config(crate::config())]

    /// Whatever the bytes: a value, "not yet", or an error. A value is
    /// made of the bytes it claims, which alone give the same value, and
    /// none of which gave one earlier: fed in any pieces, the same reply.
    #[test]
    fn any_bytes_give_a_value_more_to_wait_for_or_an_error(buf in bytes()) {
        if let Ok(Some((v, n))) = parse(&buf) {
            prop_assert!(n > 0 && n <= buf.len());
            prop_assert_eq!(parse(&buf[..n]).ok(), Some(Some((v, n))));
            for cut in 0..n {
                prop_assert!(
                    matches!(parse(&buf[..cut]), Ok(None)),
                    "{:?} cut at {cut}: {:?}",
                    &buf[..n],
                    parse(&buf[..cut])
                );
            }
        }
    }

    /// Every reply reads back whole, with its length, whatever follows it;
    /// cut anywhere, it is incomplete, never an error or another value.
    #[test]
    fn every_reply_round_trips_and_every_cut_waits(v in value(), tail in bytes()) {
        let bytes = encoded(&v);
        prop_assert_eq!(parse(&bytes).unwrap(), Some((v.clone(), bytes.len())));
        let mut more = bytes.clone();
        more.extend_from_slice(&tail);
        prop_assert_eq!(parse(&more).unwrap(), Some((v, bytes.len())));
        for cut in 0..bytes.len() {
            prop_assert_eq!(parse(&bytes[..cut]).unwrap(), None, "cut at {}", cut);
        }
    }

    /// A command is an array of bulk strings, which Redis reads back.
    #[test]
    fn commands_encode_as_arrays_of_bulk_strings(
        args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 0..6),
    ) {
        let slices: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let bytes = encode(&slices);
        let want = Value::Array(args.iter().map(|a| Value::Bulk(Some(a.clone()))).collect());
        prop_assert_eq!(parse(&bytes).unwrap(), Some((want, bytes.len())));
    }

    /// A reply read from a stream, in whatever pieces it arrives, is the
    /// reply sent; a stream that ends first is an error.
    #[test]
    fn a_reply_in_any_pieces_reads_back(
        v in value(),
        sizes in prop::collection::vec(1..40usize, 0..40),
    ) {
        let data = encoded(&v);
        let mut s = Chunked { data: data.clone(), at: 0, sizes: sizes.clone() };
        prop_assert_eq!(command_blocking(&mut s, &[b"PING"]).unwrap(), v);
        let cut = data[..data.len() - 1].to_vec();
        let mut s = Chunked { data: cut, at: 0, sizes };
        let e = command_blocking(&mut s, &[b"PING"]).unwrap_err();
        prop_assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Whatever a backend answers, reading it ends in a value or an error.
    #[test]
    fn any_answer_ends_in_a_value_or_an_error(
        data in bytes(),
        sizes in prop::collection::vec(1..40usize, 0..40),
    ) {
        let mut s = Chunked { data, at: 0, sizes };
        let _ = command_blocking(&mut s, &[b"PING"]);
    }
}
