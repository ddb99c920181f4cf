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
    /// the response's head, a literal piece, or a mapping the response holds alive (after
    /// [`SendBuf::point_at`]: into the connection's TLS ciphertext buffer); the owner
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

    /// Describe a send of `bytes` (a TLS connection's pending ciphertext, which its owner keeps
    /// unchanged until the send completes, like the response in [`plan`]).
    pub fn point_at(&mut self, bytes: &[u8]) {
        self.iov[0] = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = 1;
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

/// Copy the next bytes of `resp` into `buf` without moving past them (TLS encrypts them in
/// user space): the head, literals, and at most `body_budget` file bytes read with `pread`
/// (never from the mapping). Returns (bytes copied, body bytes among them). A file that
/// reads short (truncated under weir) stops the copy there; when it yields nothing at all the
/// file is returned as the error.
pub fn copy_next(
    resp: &Response,
    buf: &mut [u8],
    body_budget: u64,
) -> Result<(usize, u64), std::sync::Arc<super::segment::MappedFile>> {
    let head_rest = &resp.head[resp.head_sent..];
    let mut n = head_rest.len().min(buf.len());
    buf[..n].copy_from_slice(&head_rest[..n]);
    let mut budget = body_budget;
    let (mut piece, mut offset) = (resp.piece, resp.offset);
    let mut body = 0u64;
    while n < buf.len() {
        let Some(p) = resp.pieces.get(piece) else {
            break;
        };
        let room = buf.len() - n;
        let take = match p {
            BodyPiece::Literal(bytes) => {
                let rest = &bytes[offset as usize..];
                let k = rest.len().min(room);
                buf[n..n + k].copy_from_slice(&rest[..k]);
                k
            }
            BodyPiece::File {
                file, start, end, ..
            } => {
                let want = (end - start - offset).min(room as u64).min(budget) as usize;
                if want == 0 {
                    break;
                }
                let got = match file.read_at(start + offset, &mut buf[n..n + want]) {
                    Ok(k) => k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                    Err(_) => 0,
                };
                if got == 0 && n == 0 {
                    return Err(file.clone());
                }
                budget -= got as u64;
                if got < want {
                    // Short: the file shrank. Send what was read; the next copy finds nothing.
                    n += got;
                    body += got as u64;
                    break;
                }
                got
            }
        };
        n += take;
        body += take as u64;
        offset += take as u64;
        if offset == p.size() {
            piece += 1;
            offset = 0;
        }
    }
    Ok((n, body))
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
