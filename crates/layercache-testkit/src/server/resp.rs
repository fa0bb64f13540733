//! A minimal blocking RESP2 client, for readiness probes and cluster checks.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A RESP2 reply.
#[derive(Debug)]
pub(crate) enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Upper bound for bulk strings and arrays, so a foreign service on the port cannot make the
/// probe allocate without bound.
const MAX_RESP_LEN: i64 = 64 * 1024 * 1024;

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads one `\r\n`-terminated line (without the terminator).
fn read_resp_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut buf = Vec::new();
    let read = reader
        .by_ref()
        .take(64 * 1024)
        .read_until(b'\n', &mut buf)?;
    if read == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    if !buf.ends_with(b"\r\n") {
        return Err(invalid("RESP line without CRLF"));
    }
    buf.truncate(buf.len() - 2);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn parse_len(text: &str) -> io::Result<i64> {
    let len: i64 = text
        .parse()
        .map_err(|_| invalid(format!("bad RESP length {text:?}")))?;
    if !(-1..=MAX_RESP_LEN).contains(&len) {
        return Err(invalid(format!("RESP length {len} out of range")));
    }
    Ok(len)
}

/// Reads one RESP2 reply.
pub(crate) fn read_reply(reader: &mut impl BufRead, depth: usize) -> io::Result<Reply> {
    if depth > 8 {
        return Err(invalid("RESP reply nested too deeply"));
    }
    let line = read_resp_line(reader)?;
    let mut chars = line.chars();
    let kind = chars.next().ok_or_else(|| invalid("empty RESP line"))?;
    let rest = chars.as_str();
    match kind {
        '+' => Ok(Reply::Simple(rest.to_owned())),
        '-' => Ok(Reply::Error(rest.to_owned())),
        ':' => rest
            .parse()
            .map(Reply::Integer)
            .map_err(|_| invalid(format!("bad RESP integer {rest:?}"))),
        '$' => {
            let len = parse_len(rest)?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(Reply::Bulk(None));
            };
            let mut data = vec![0; len + 2];
            reader.read_exact(&mut data)?;
            if !data.ends_with(b"\r\n") {
                return Err(invalid("RESP bulk string without CRLF"));
            }
            data.truncate(len);
            Ok(Reply::Bulk(Some(data)))
        }
        '*' => {
            let len = parse_len(rest)?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(Reply::Array(None));
            };
            let mut items = Vec::with_capacity(len.min(1024));
            for _ in 0..len {
                items.push(read_reply(reader, depth + 1)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        other => Err(invalid(format!("unexpected RESP type byte {other:?}"))),
    }
}

/// A blocking RESP connection with timeouts.
pub(crate) struct RespConnection {
    reader: BufReader<TcpStream>,
}

impl RespConnection {
    pub(crate) fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    pub(crate) fn call(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&request)?;
        read_reply(&mut self.reader, 0)
    }
}

/// The value of `field` in `INFO`/`CLUSTER INFO` output (`field:value` lines).
pub(crate) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim())
    })
}
