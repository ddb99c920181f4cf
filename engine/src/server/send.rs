//! Send planning: which bytes of a [`Response`] go out next and how ([`SendPlan`]), and what a
//! completed send moved forward.
//!
//! Bytes in memory (the head, literal pieces, small file pieces straight from the mapping) go
//! in one gathered `sendmsg` described by a [`SendBuf`]; large file pieces go with `sendfile`.
//! The shaper's allowance (see [`shaping`](super::shaping)) caps the body bytes of a send; heads
//! are never shaped. Each sent byte is recorded for the credit policy as overhead or content.

use std::os::fd::RawFd;
use std::time::Instant;

use crate::config::SendPath;

use super::credit::ConnCredit;
use super::respond::{BodyPiece, Response};

/// Largest body chunk handed to the kernel in one send when the connection is not shaped.
const MAX_CHUNK: u64 = 1 << 20;
/// File pieces at least this large go out with `sendfile(2)` (page-cache pages attached to the
/// socket, one copy fewer than sending from the mapping); smaller ones go with the head in one
/// `sendmsg` from the mapping.
const SENDFILE_MIN: u64 = 64 * 1024;
/// Largest `sendfile` chunk (and largest shaped request).
pub const MAX_SENDFILE_CHUNK: u64 = 4 << 20;

/// How the driver should carry out the next send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendPlan {
    /// `sendmsg` with the connection's [`SendBuf`] (`more`: a sendfile follows, set MSG_MORE).
    Iov { len: usize, more: bool },
    /// `sendfile(sock, fd, offset, len)`.
    File { fd: RawFd, offset: u64, len: usize },
    /// The shaper has no bytes for this connection until then: wait, then ask again.
    Wait(Instant),
}

/// The gathered-send description a driver hands the kernel: up to two iovecs (head rest, one
/// body piece) and the `msghdr` pointing at them.
pub struct SendBuf {
    /// INVARIANT: after [`plan`] returned `SendPlan::Iov`, `iov[..msg.msg_iovlen]` point into
    /// the response's head, a literal piece, or a mapping the response holds alive; the owner
    /// (a boxed connection) keeps the response unchanged and this buffer in place until the
    /// send completes.
    iov: [libc::iovec; 2],
    msg: libc::msghdr,
}

impl Default for SendBuf {
    fn default() -> Self {
        SendBuf {
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 2],
            // SAFETY: an all-zero msghdr is valid (no name, no iov, no control data).
            msg: unsafe { std::mem::zeroed() },
        }
    }
}

impl SendBuf {
    /// The iovecs of the planned send.
    pub fn iov(&self) -> &[libc::iovec] {
        &self.iov[..self.msg.msg_iovlen]
    }

    /// The `msghdr` of the planned send (for an io_uring SENDMSG).
    pub fn msg(&self) -> &libc::msghdr {
        &self.msg
    }
}

/// Body bytes the current piece could still send, when it is a file piece (the only body bytes
/// that are shaped), capped at one shaped request.
pub fn shaped_want(resp: &Response) -> Option<u64> {
    match resp.pieces.get(resp.piece) {
        Some(BodyPiece::File { start, end, .. }) => {
            Some((end - start - resp.offset).min(MAX_SENDFILE_CHUNK))
        }
        _ => None,
    }
}

/// Describe the next send of `resp` carrying at most `body_budget` body bytes: `buf` for bytes
/// in memory (the head, literals, small file pieces from the mapping), or a `sendfile` range
/// for large file pieces.
pub fn plan(resp: &Response, buf: &mut SendBuf, body_budget: u64, path: SendPath) -> SendPlan {
    let piece = resp.pieces.get(resp.piece);
    let big_file = match piece {
        Some(BodyPiece::File { start, end, .. }) => {
            path == SendPath::Sendfile && end - start >= SENDFILE_MIN
        }
        _ => false,
    };
    let head_rest = &resp.head[resp.head_sent..];
    if big_file && head_rest.is_empty() {
        if let Some(BodyPiece::File {
            file, start, end, ..
        }) = piece
        {
            let from = start + resp.offset;
            // Shaped: no more than the grant (the head is sent, so a shaped connection that got
            // here holds one).
            return SendPlan::File {
                fd: file.raw_fd(),
                offset: from,
                len: (end - from).min(MAX_SENDFILE_CHUNK).min(body_budget) as usize,
            };
        }
    }
    let mut n = 0;
    let mut total = 0usize;
    if !head_rest.is_empty() {
        buf.iov[n] = libc::iovec {
            iov_base: head_rest.as_ptr() as *mut libc::c_void,
            iov_len: head_rest.len(),
        };
        total += head_rest.len();
        n += 1;
    }
    if !(big_file && n > 0) {
        if let Some(piece) = piece {
            let (ptr, len) = match piece {
                BodyPiece::Literal(bytes) => {
                    let rest = &bytes[resp.offset as usize..];
                    (rest.as_ptr(), rest.len())
                }
                BodyPiece::File {
                    file, start, end, ..
                } => {
                    let from = start + resp.offset;
                    file.kernel_ptr(from, (end - from).min(MAX_CHUNK).min(body_budget))
                }
            };
            if len > 0 {
                buf.iov[n] = libc::iovec {
                    iov_base: ptr as *mut libc::c_void,
                    iov_len: len,
                };
                total += len;
                n += 1;
            }
        }
    }
    buf.msg.msg_iov = buf.iov.as_mut_ptr();
    buf.msg.msg_iovlen = n;
    SendPlan::Iov {
        len: total,
        more: big_file,
    }
}

/// `n` bytes of `resp` went out: move past them, recording each as overhead or content.
pub fn advance(resp: &mut Response, n: usize, credit: &mut ConnCredit) {
    let mut left = n;
    let h = left.min(resp.head_rest());
    resp.head_sent += h;
    left -= h;
    credit.record_overhead(h as u64);
    while left > 0 {
        let Some(piece) = resp.pieces.get(resp.piece) else {
            break;
        };
        let plen = piece.size();
        let take = (left as u64).min(plen - resp.offset);
        match (piece, &resp.owner) {
            (BodyPiece::File { start, part, .. }, Some((user, item))) => {
                credit.record_content(user, item, *part, start + resp.offset, take)
            }
            _ => credit.record_overhead(take),
        }
        resp.offset += take;
        left -= take as usize;
        if resp.offset == plen {
            resp.piece += 1;
            resp.offset = 0;
        }
    }
}
