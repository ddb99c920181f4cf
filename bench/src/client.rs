//! A minimal blocking HTTP/1.1 client for readiness checks, warm-ups and the held connections
//! of the memory scenarios. Just enough parsing for responses with Content-Length.
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A GET request head, keep-alive, with optional Authorization and Range values.
pub fn request(path: &str, authorization: Option<&str>, range: Option<&str>) -> String {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n");
    if let Some(a) = authorization {
        r.push_str(&format!("Authorization: {a}\r\n"));
    }
    if let Some(x) = range {
        r.push_str(&format!("Range: bytes={x}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// Status and Content-Length of a response head, and where its body starts in `buf`.
pub fn parse_head(buf: &[u8]) -> Option<Result<(u16, u64, usize)>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok());
    let Some(status) = status else {
        return Some(Err(anyhow::anyhow!("bad status line in {text:?}")));
    };
    let len = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(Ok((status, len, end)))
}

/// Reads one response's head (and whatever body bytes arrived with it). Returns status,
/// Content-Length and the body bytes already read.
pub fn read_head(s: &mut TcpStream) -> Result<(u16, u64, u64)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before a response head");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(r) = parse_head(&buf) {
            let (status, len, end) = r?;
            return Ok((status, len, (buf.len() - end) as u64));
        }
        if buf.len() > 64 * 1024 {
            bail!("response head over 64 KiB");
        }
    }
}

/// Reads and discards `n` bytes.
pub fn discard(s: &mut TcpStream, mut n: u64) -> Result<()> {
    let mut chunk = vec![0u8; 64 * 1024];
    while n > 0 {
        let want = n.min(chunk.len() as u64) as usize;
        let got = s.read(&mut chunk[..want])?;
        if got == 0 {
            bail!("connection closed with {n} body bytes left");
        }
        n -= got as u64;
    }
    Ok(())
}

/// Connects with a timeout and sets read/write timeouts.
pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// One GET on a fresh connection, body read fully and discarded: status and body length.
pub fn get(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
    range: Option<&str>,
) -> Result<(u16, u64)> {
    let mut s = connect(addr, Duration::from_secs(30))?;
    s.write_all(request(path, authorization, range).as_bytes())?;
    let (status, len, have) = read_head(&mut s)?;
    discard(&mut s, len.saturating_sub(have))?;
    Ok((status, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 4").is_none());
        let (st, len, end) = parse_head(b"HTTP/1.1 206 Partial\r\ncontent-length: 4096\r\n\r\nabc")
            .unwrap()
            .unwrap();
        assert_eq!((st, len, end), (206, 4096, 46));
    }
}
