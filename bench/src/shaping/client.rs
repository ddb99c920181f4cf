//! The shaping benchmark's client: thousands of ranged downloads in one mio event loop (threads
//! would not do for 8,000 connections), each a small state machine that connects, sends its
//! request, reads the `206` head and then counts body bytes; a `503` is retried after a second
//! as a download manager honouring `Retry-After: 1` would.
use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::time::{Duration, Instant};

use mio::net::TcpStream;

#[derive(PartialEq)]
pub enum State {
    Connecting,
    Head,
    Body,
    Dead,
    /// Answered 503 (weir's auth queue is bounded); reconnect at this time, as a download
    /// manager honouring `Retry-After: 1` would.
    Retry(Instant),
}

pub struct Conn {
    pub stream: TcpStream,
    pub user: usize,
    pub request: Vec<u8>,
    pub state: State,
    pub head: Vec<u8>,
    pub body: u64,
    /// Edge-triggered: data may be waiting until a read says WouldBlock.
    pub readable: bool,
}

/// Reads what `c` has, up to `limit` bytes; returns body bytes read.
pub fn read_conn(
    c: &mut Conn,
    buf: &mut [u8],
    limit: usize,
    errors: &mut HashMap<String, u64>,
) -> u64 {
    let mut got = 0u64;
    let mut left = limit;
    while left > 0 {
        let want = left.min(buf.len());
        match c.stream.read(&mut buf[..want]) {
            Ok(0) => {
                *errors.entry("eof".into()).or_default() += 1;
                c.state = State::Dead;
                c.readable = false;
                return got;
            }
            Ok(n) => {
                left -= n;
                if c.state == State::Head {
                    c.head.extend_from_slice(&buf[..n]);
                    // The same head parser as every other client of the harness.
                    if let Some(head) = crate::client::parse_head(&c.head) {
                        let (status, end) = match head {
                            Ok((status, _, end)) => (status, end),
                            Err(_) => (0, c.head.len()),
                        };
                        if status == 503 {
                            *errors.entry("retried after 503".into()).or_default() += 1;
                            c.state = State::Retry(Instant::now() + Duration::from_secs(1));
                            c.head.clear();
                            c.readable = false;
                            return got;
                        }
                        if status != 206 {
                            *errors.entry(format!("status {status}")).or_default() += 1;
                            c.state = State::Dead;
                            return got;
                        }
                        let extra = (c.head.len() - end) as u64;
                        c.head = Vec::new();
                        c.state = State::Body;
                        c.body += extra;
                        got += extra;
                    }
                } else {
                    c.body += n as u64;
                    got += n as u64;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                c.readable = false;
                return got;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                *errors.entry(format!("read {:?}", e.kind())).or_default() += 1;
                c.state = State::Dead;
                return got;
            }
        }
    }
    got
}
