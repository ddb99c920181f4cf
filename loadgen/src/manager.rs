//! The download-manager plan: which byte ranges each of a user's K connections fetches.
//!
//! Pure bookkeeping, no I/O: split the file into K ranges (aligned to the verification block, at
//! least `min_split` each), advance ranges as bytes arrive, and when a connection's range is done,
//! give it the second half of the largest remaining range (axel and IDM do the same). A broken
//! connection's range stays where it stopped, so a new connection resumes it.

/// One connection slot's range: bytes `[pos, end)` still to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRange {
    pub pos: u64,
    pub end: u64,
}

impl SlotRange {
    /// Bytes left.
    pub fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    /// Nothing left.
    pub fn is_done(&self) -> bool {
        self.pos >= self.end
    }
}

/// The ranges of one download.
#[derive(Clone, Debug)]
pub struct Plan {
    size: u64,
    align: u64,
    min_split: u64,
    slots: Vec<SlotRange>,
}

fn align_down(x: u64, a: u64) -> u64 {
    x - x % a
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl Plan {
    /// Split `size` bytes over at most `k` slots of at least `min_split` bytes, boundaries on
    /// multiples of `align`.
    pub fn new(size: u64, k: usize, align: u64, min_split: u64) -> Plan {
        let align = align.max(1);
        let min_split = min_split.max(align);
        let k = (size / min_split).clamp(1, k.max(1) as u64);
        let mut bounds: Vec<u64> = (0..k)
            .map(|i| align_down(size / k * i + (size % k) * i / k, align))
            .collect();
        bounds.push(size);
        bounds.dedup();
        let mut slots: Vec<SlotRange> = bounds
            .windows(2)
            .map(|w| SlotRange {
                pos: w[0],
                end: w[1],
            })
            .collect();
        if slots.is_empty() {
            // An empty file: one slot with nothing to fetch.
            slots.push(SlotRange { pos: 0, end: 0 });
        }
        Plan {
            size,
            align,
            min_split,
            slots,
        }
    }

    /// The file size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many slots (connections) the plan uses.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The range of `slot`.
    pub fn range(&self, slot: usize) -> SlotRange {
        self.slots[slot]
    }

    /// Record `n` bytes received at the slot's position; returns how many of them belong to the
    /// range (the rest lie past an end that a re-split moved).
    pub fn advance(&mut self, slot: usize, n: u64) -> u64 {
        let r = &mut self.slots[slot];
        let take = n.min(r.remaining());
        r.pos += take;
        take
    }

    /// Move a slot back to the start (a server that ignores ranges makes resuming impossible).
    pub fn restart(&mut self, slot: usize) {
        self.slots[slot].pos = 0;
    }

    /// Every byte arrived.
    pub fn is_complete(&self) -> bool {
        self.slots.iter().all(SlotRange::is_done)
    }

    /// Bytes not yet received.
    pub fn remaining(&self) -> u64 {
        self.slots.iter().map(SlotRange::remaining).sum()
    }

    /// `slot` is done: give it the second half of the largest remaining range of another slot,
    /// if that half is worth a connection. Returns the slot's new range.
    pub fn steal(&mut self, slot: usize) -> Option<SlotRange> {
        debug_assert!(self.slots[slot].is_done());
        let (donor, d) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != slot)
            .max_by_key(|(_, r)| r.remaining())
            .map(|(i, r)| (i, *r))?;
        if d.remaining() < 2 * self.min_split {
            return None;
        }
        let mid = align_up(d.pos + d.remaining() / 2, self.align);
        if mid <= d.pos || mid >= d.end {
            return None;
        }
        self.slots[donor].end = mid;
        let new = SlotRange {
            pos: mid,
            end: d.end,
        };
        self.slots[slot] = new;
        Some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte of [0, size) is covered by exactly one slot range at all times.
    fn assert_partition(p: &Plan, received: &[(u64, u64)]) {
        let mut covered: Vec<(u64, u64)> = received.to_vec();
        covered.extend(
            p.slots
                .iter()
                .filter(|r| !r.is_done())
                .map(|r| (r.pos, r.end)),
        );
        covered.sort();
        let mut at = 0;
        for (a, b) in covered {
            assert_eq!(a, at, "gap or overlap at {at}");
            at = b;
        }
        assert_eq!(at, p.size());
    }

    #[test]
    fn splits_aligned_and_covering() {
        let p = Plan::new(64 << 20, 40, 65536, 100 << 10);
        assert_eq!(p.slots(), 40);
        for i in 0..p.slots() {
            assert_eq!(p.range(i).pos % 65536, 0);
        }
        assert_partition(&p, &[]);
        // Small files get fewer slots, never empty ones.
        let p = Plan::new(250 << 10, 40, 65536, 100 << 10);
        assert_eq!(p.slots(), 2);
        let p = Plan::new(0, 40, 65536, 100 << 10);
        assert_eq!(p.slots(), 1);
        assert!(p.is_complete());
        let p = Plan::new(10, 40, 65536, 100 << 10);
        assert_eq!(p.slots(), 1);
        assert_eq!(p.range(0), SlotRange { pos: 0, end: 10 });
    }

    #[test]
    fn steal_halves_the_largest() {
        let mut p = Plan::new(4 << 20, 4, 65536, 100 << 10);
        let mut received = Vec::new();
        // Slot 3 finishes its 1 MiB; slot 0 is at 0, the others part way.
        let r3 = p.range(3);
        p.advance(3, r3.remaining());
        received.push((r3.pos, r3.end));
        for s in [1, 2] {
            let r = p.range(s);
            p.advance(s, 512 << 10);
            received.push((r.pos, r.pos + (512 << 10)));
        }
        let got = p.steal(3).unwrap();
        assert_eq!(
            got,
            SlotRange {
                pos: 512 << 10,
                end: 1 << 20
            }
        );
        assert_eq!(p.range(0).end, 512 << 10);
        assert_partition(&p, &received);
    }

    #[test]
    fn simulated_download_completes_with_resplits() {
        let size = 10_000_000;
        let mut p = Plan::new(size, 8, 65536, 100 << 10);
        let mut received = Vec::new();
        let mut rounds = 0;
        while !p.is_complete() {
            rounds += 1;
            assert!(rounds < 100_000);
            for s in 0..p.slots() {
                let r = p.range(s);
                if r.is_done() {
                    if p.steal(s).is_none() {
                        continue;
                    }
                    continue;
                }
                // Slot s receives a chunk proportional to its index (uneven speeds).
                let n = p.advance(s, 10_000 * (s as u64 + 1));
                received.push((r.pos, r.pos + n));
                assert_partition(&p, &received);
            }
        }
        assert_eq!(p.remaining(), 0);
        let total: u64 = received.iter().map(|(a, b)| b - a).sum();
        assert_eq!(total, size);
    }

    #[test]
    fn advance_past_a_moved_end_is_cut() {
        let mut p = Plan::new(1 << 20, 2, 65536, 100 << 10);
        let r = p.range(1);
        p.advance(1, r.remaining());
        p.steal(1).unwrap();
        let end0 = p.range(0).end;
        assert_eq!(p.advance(0, 1 << 20), end0);
        assert!(p.range(0).is_done());
    }

    proptest::proptest! {
        /// Whatever the file size, K, chunk sizes and order in which slots receive bytes or
        /// steal: the ranges plus the bytes received always partition the file exactly, splits
        /// stay block-aligned, and the download completes.
        #[test]
        fn any_arrival_order_partitions_and_completes(
            size in 0u64..50_000_000,
            k in 1usize..48,
            steps in proptest::collection::vec((0usize..48, 1u64..3_000_000), 1..400),
        ) {
            let align = 65536;
            let mut p = Plan::new(size, k, align, 100 << 10);
            let mut received = Vec::new();
            let run = |p: &mut Plan, s: usize, n: u64, received: &mut Vec<(u64, u64)>| {
                let r = p.range(s);
                if r.is_done() {
                    if let Some(new) = p.steal(s) {
                        assert_eq!(new.pos % align, 0);
                    }
                } else {
                    let got = p.advance(s, n);
                    received.push((r.pos, r.pos + got));
                }
            };
            for (s, n) in steps {
                let s = s % p.slots();
                run(&mut p, s, n, &mut received);
                assert_partition(&p, &received);
            }
            // Then every slot drains in turn until done.
            let mut guard = 0;
            while !p.is_complete() {
                for s in 0..p.slots() {
                    run(&mut p, s, 1 << 20, &mut received);
                }
                guard += 1;
                assert!(guard < 10_000);
            }
            assert_partition(&p, &received);
            let total: u64 = received.iter().map(|(a, b)| b - a).sum();
            assert_eq!(total, size);
        }
    }
}
