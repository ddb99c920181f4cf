//! Mapping acknowledged TCP stream bytes back to the content bytes they carried.
//!
//! A connection writes one byte stream: response heads, body bytes of one or several items
//! (ranges, multipart boundaries, zip literals), then the next response on keep-alive. The kernel
//! tells the server how much of that stream the client's TCP acknowledged (`tcpi_bytes_acked`,
//! counted from the start of the connection). A [`StreamMap`] remembers, for the part of the
//! stream still in flight, which offsets are content of which target, and turns a new
//! acknowledgement count into the content ranges it newly covers.
//!
//! Only content is stored: overhead (heads, boundaries, zip headers) is a gap between entries.
//! Contiguous content of one target is one entry however many writes it took, and entries are
//! dropped once acknowledged, so memory is bounded by what is in flight, not by what was sent.

use std::collections::VecDeque;
use std::ops::Range;

/// One run of content in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    /// Stream offset of the first byte not yet acknowledged.
    stream_start: u64,
    /// Bytes of the run not yet acknowledged; never zero while stored.
    len: u64,
    /// The server's tag for (user, item or track).
    target: u32,
    /// Content offset carried at `stream_start`.
    content_start: u64,
}

/// Per connection: which stream offsets carry which content bytes.
///
/// Offsets count from the first byte the server wrote on the connection, the same origin as
/// `tcpi_bytes_acked` on a freshly accepted socket.
#[derive(Debug, Clone, Default)]
pub struct StreamMap {
    /// INVARIANT: sorted by `stream_start`, non-overlapping, each run entirely at or after
    /// `acked` and before `written`.
    runs: VecDeque<Run>,
    /// Stream bytes handed to the kernel so far.
    written: u64,
    /// Stream bytes acknowledged so far (never more than `written`).
    acked: u64,
}

impl StreamMap {
    /// An empty map for a new connection.
    pub fn new() -> StreamMap {
        StreamMap::default()
    }

    /// Record that the next `len` stream bytes are not content (a response head, a boundary,
    /// a zip literal).
    pub fn push_overhead(&mut self, len: u64) {
        self.written += len;
    }

    /// Record that the next `len` stream bytes are content bytes `start..start + len` of
    /// `target` (a tag the server maps to (user, item or track)). Continuing the previous
    /// content of the same target extends its entry instead of adding one.
    pub fn push_content(&mut self, target: u32, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let written = self.written;
        self.written += len;
        if let Some(last) = self.runs.back_mut() {
            if last.target == target
                && last.stream_start + last.len == written
                && last.content_start + last.len == start
            {
                last.len += len;
                return;
            }
        }
        self.runs.push_back(Run {
            stream_start: written,
            len,
            target,
            content_start: start,
        });
    }

    /// Stream bytes recorded so far (what was handed to the kernel).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Stream bytes acknowledged so far, as clamped by [`StreamMap::acknowledge`].
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Stream bytes written but not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.written - self.acked
    }

    /// Content entries still waiting for acknowledgement (memory in use).
    pub fn pending_entries(&self) -> usize {
        self.runs.len()
    }

    /// The client acknowledged the first `acked` stream bytes. Returns the newly acknowledged
    /// content as (target, range); see [`StreamMap::acknowledge_into`].
    pub fn acknowledge(&mut self, acked: u64) -> Vec<(u32, Range<u64>)> {
        let mut out = Vec::new();
        self.acknowledge_into(acked, &mut out);
        out
    }

    /// Appends to `out` the content newly covered by an acknowledgement of the first `acked`
    /// stream bytes, each content byte reported at most once over the life of the map, and
    /// drops what is fully acknowledged. `acked` past [`StreamMap::written`] is clamped (the
    /// FIN takes one sequence number, so `tcpi_bytes_acked` can exceed the bytes written by
    /// one); a count lower than an earlier one credits nothing.
    pub fn acknowledge_into(&mut self, acked: u64, out: &mut Vec<(u32, Range<u64>)>) {
        let acked = acked.min(self.written);
        if acked <= self.acked {
            return;
        }
        self.acked = acked;
        while let Some(run) = self.runs.front_mut() {
            if run.stream_start >= acked {
                break;
            }
            let n = (acked - run.stream_start).min(run.len);
            out.push((run.target, run.content_start..run.content_start + n));
            if n == run.len {
                self.runs.pop_front();
            } else {
                run.stream_start += n;
                run.content_start += n;
                run.len -= n;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn heads_and_boundaries_never_credit_content() {
        let mut s = StreamMap::new();
        s.push_overhead(200);
        assert!(s.acknowledge(200).is_empty());
        s.push_content(1, 0, 100);
        s.push_overhead(50); // multipart boundary
        s.push_content(1, 500, 100);
        s.push_overhead(40); // closing boundary
        assert_eq!(s.written(), 490);
        assert_eq!(s.acknowledge(320), vec![(1, 0..100)]);
        assert_eq!(s.acknowledge(350), vec![]);
        assert_eq!(s.acknowledge(490), vec![(1, 500..600)]);
        assert_eq!(s.pending_entries(), 0);
    }

    #[test]
    fn acked_beyond_written_is_clamped() {
        let mut s = StreamMap::new();
        s.push_overhead(10);
        s.push_content(3, 0, 90);
        // FIN: one more than written.
        assert_eq!(s.acknowledge(101), vec![(3, 0..90)]);
        assert_eq!(s.acked(), 100);
        // Later content is credited from where the stream really is.
        s.push_content(3, 90, 10);
        assert_eq!(s.acknowledge(105), vec![(3, 90..95)]);
    }

    #[test]
    fn partial_acks_split_an_entry() {
        let mut s = StreamMap::new();
        s.push_content(9, 1000, 300);
        assert_eq!(s.acknowledge(100), vec![(9, 1000..1100)]);
        assert_eq!(s.acknowledge(100), vec![]);
        assert_eq!(s.acknowledge(50), vec![], "a lower count never credits");
        assert_eq!(s.acknowledge(250), vec![(9, 1100..1250)]);
        assert_eq!(s.in_flight(), 50);
        assert_eq!(s.acknowledge(300), vec![(9, 1250..1300)]);
    }

    #[test]
    fn a_client_that_reads_nothing_delivers_nothing() {
        let mut s = StreamMap::new();
        s.push_overhead(150);
        s.push_content(1, 0, 4 << 20);
        assert!(s.acknowledge(0).is_empty());
        // Only the head got through.
        assert!(s.acknowledge(150).is_empty());
        assert_eq!(s.in_flight(), 4 << 20);
    }

    #[test]
    fn a_long_download_is_one_entry() {
        let mut s = StreamMap::new();
        s.push_overhead(100);
        for i in 0..10_000u64 {
            s.push_content(5, i * 65536, 65536);
        }
        assert_eq!(s.pending_entries(), 1);
        // A different target, or a jump in content, starts a new entry.
        s.push_content(6, 0, 10);
        s.push_content(6, 20, 10);
        assert_eq!(s.pending_entries(), 3);
        let got = s.acknowledge(u64::MAX);
        assert_eq!(got, vec![(5, 0..10_000 * 65536), (6, 0..10), (6, 20..30)]);
    }

    #[derive(Debug, Clone)]
    enum Push {
        Overhead(u64),
        Content { target: u32, start: u64, len: u64 },
    }

    fn arb_push() -> impl Strategy<Value = Push> {
        prop_oneof![
            (0..50u64).prop_map(Push::Overhead),
            (0..3u32, 0..100u64, 0..50u64).prop_map(|(target, start, len)| Push::Content {
                target,
                start,
                len
            }),
        ]
    }

    proptest! {
        /// Against a byte-per-byte model of the stream: every ack credits exactly the content
        /// bytes between the previous and the new (clamped) count.
        #[test]
        fn matches_a_per_byte_model(
            pushes in prop::collection::vec(arb_push(), 0..30),
            acks in prop::collection::vec(0..1500u64, 0..10),
        ) {
            let mut s = StreamMap::new();
            let mut model: Vec<Option<(u32, u64)>> = Vec::new();
            for p in &pushes {
                match *p {
                    Push::Overhead(n) => {
                        s.push_overhead(n);
                        model.extend((0..n).map(|_| None));
                    }
                    Push::Content { target, start, len } => {
                        s.push_content(target, start, len);
                        model.extend((0..len).map(|i| Some((target, start + i))));
                    }
                }
            }
            prop_assert_eq!(s.written(), model.len() as u64);
            let mut prev = 0usize;
            for a in acks {
                let got = s.acknowledge(a);
                let now = (a as usize).min(model.len()).max(prev);
                let expected: Vec<(u32, u64)> = model[prev..now].iter().flatten().copied().collect();
                let flat: Vec<(u32, u64)> = got
                    .iter()
                    .flat_map(|(t, r)| r.clone().map(move |b| (*t, b)))
                    .collect();
                prop_assert_eq!(flat, expected);
                prop_assert!(got.iter().all(|(_, r)| r.start < r.end));
                prev = now;
            }
        }
    }
}
