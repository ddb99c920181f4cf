//! How large the kernel send buffer of an *unshaped* download may be (shaped ones are sized by
//! [`shaping`](super::shaping) from their share of the user's rate).
//!
//! Left alone, Linux grows a loopback or LAN socket's send buffer to `tcp_wmem[2]` (4 MiB) within
//! the first round trips, whether or not the client reads: a client that sends `GET` and never
//! reads pins ~4 MB of the server's kernel memory until the send timeout. [`SendBufferPolicy`]
//! bounds that without slowing a client that reads:
//!
//! - a download starts at [`START`] (the kernel doubles it: 64 KiB);
//! - it is re-evaluated when a send comes back short or would block, the moment a small
//!   buffer could be what limits the client (one `TCP_INFO` read per buffer-full, never per
//!   send, none once at [`CAP`]);
//! - it grows once the client's TCP acknowledged more than [`PROOF`] since sizing began (more
//!   than a client that does not read can hold in a default receive buffer) and its window is
//!   open: to the measured rate × max(2·RTT, 40 ms) ([`ShaperConfig::sndbuf_for`], the shaper's
//!   rule), at most [`CAP`] (4 MiB in the kernel's count, as autotuning), and never more (in the
//!   kernel's count) than the client acknowledged since sizing began. It never shrinks: a
//!   keep-alive connection keeps what it earned.
//!
//! So a client that never reads holds at most one started buffer (~64 KiB, ~80 KB with the
//! kernel's overshoot of one send); one that inflates its receive buffer to acknowledge more
//! without reading makes the server hold no more than it holds itself; one that reads doubles its
//! buffer at each buffer-full from its first 256 KiB and reaches the cap after ~4 MiB.
//! The policy is pure: [`Conn`](super::conn::Conn) feeds it what its socket reports.

use std::time::{Duration, Instant};

use weir_shaper::{Rate, ShaperConfig};

/// The `SO_SNDBUF` value a download starts at (the kernel doubles it).
pub const START: u32 = 32 * 1024;
/// The largest `SO_SNDBUF` value set: 4 MiB in the kernel's count, what its autotuning reaches
/// by default (`tcp_wmem[2]`).
pub const CAP: u32 = 2 << 20;
/// Bytes the client's TCP must acknowledge before its buffer grows. A client that does not read
/// acknowledges at most what its receive buffer holds: 128 KiB by default (`tcp_rmem[1]`), under
/// 212 KiB of data with the largest `SO_RCVBUF` an unprivileged client gets by default.
pub const PROOF: u64 = 256 * 1024;

/// What the socket reports at a buffer-full (`TCP_INFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// `tcpi_bytes_acked`.
    pub bytes_acked: u64,
    /// `tcpi_snd_wnd` (`None` before Linux 5.4): 0 means the client's receive buffer is full.
    pub window: Option<u32>,
}

/// The send-buffer size of one connection's unshaped downloads.
#[derive(Debug, Default)]
pub struct SendBufferPolicy {
    /// The `SO_SNDBUF` value set, once sized.
    size: Option<u32>,
    /// Stream bytes written when sizing began (the proof counts from there).
    origin: u64,
    /// `bytes_acked` and when, at the last resize (or the start): the rate is measured from there.
    base: Option<(u64, Instant)>,
}

impl SendBufferPolicy {
    /// An unshaped download begins. `written`: stream bytes the connection handed the kernel so
    /// far, at least what the client acknowledged (no `TCP_INFO` read needed). Returns the size
    /// to set, or `None` when the connection keeps the size it has.
    pub fn start(&mut self, written: u64, now: Instant) -> Option<u32> {
        if let Some(size) = self.size {
            if size < CAP {
                // Measure the next rate from this response, not across an idle gap.
                self.base = Some((written, now));
            }
            return None;
        }
        self.size = Some(START);
        self.origin = written;
        self.base = Some((written, now));
        Some(START)
    }

    /// The current size, if sized.
    pub fn size(&self) -> Option<u32> {
        self.size
    }

    /// True when a buffer-full is worth a `TCP_INFO` read: sized and below the cap.
    pub fn may_grow(&self) -> bool {
        self.size.is_some_and(|s| s < CAP)
    }

    /// The connection was sized by the shaper (a shaped response): start over when it next
    /// serves an unshaped one.
    pub fn forget(&mut self) {
        *self = SendBufferPolicy::default();
    }

    /// A send came back short (the buffer is full): grow if the client proved it reads. `rtt` is
    /// asked only when it does. Returns the new size to set.
    pub fn on_full(
        &mut self,
        sample: Sample,
        rtt: impl FnOnce() -> Duration,
        cfg: &ShaperConfig,
        now: Instant,
    ) -> Option<u32> {
        let (Some(size), Some((base_acked, at))) = (self.size, self.base) else {
            return None;
        };
        if size >= CAP
            || sample.window == Some(0)
            || sample.bytes_acked.saturating_sub(self.origin) < PROOF
        {
            return None;
        }
        let secs = now.saturating_duration_since(at).as_secs_f64().max(1e-6);
        let rate = (sample.bytes_acked.saturating_sub(base_acked) as f64 / secs) as u64;
        // Never more (in the kernel's count, twice the value set) than the client acknowledged:
        // a client that fills a large receive buffer without reading holds at least as much of
        // its own memory as it makes the server hold.
        let acked = sample.bytes_acked.saturating_sub(self.origin);
        let earned = u32::try_from(acked / 2).unwrap_or(u32::MAX);
        let want = cfg
            .sndbuf_for(Rate::BytesPerSec(rate), rtt())?
            .min(CAP)
            .min(earned);
        if want <= size {
            return None;
        }
        self.size = Some(want);
        self.base = Some((sample.bytes_acked, now));
        Some(want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_micros(50);

    fn cfg() -> ShaperConfig {
        ShaperConfig {
            min_grant_bytes: 32 * 1024,
            ..ShaperConfig::default()
        }
    }

    fn full(p: &mut SendBufferPolicy, acked: u64, window: u32, at: Instant) -> Option<u32> {
        let s = Sample {
            bytes_acked: acked,
            window: Some(window),
        };
        p.on_full(s, || RTT, &cfg(), at)
    }

    #[test]
    fn a_reader_doubles_its_buffer_at_each_buffer_full_up_to_the_cap() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut p = SendBufferPolicy::default();
        assert_eq!(p.start(0, t0), Some(START));
        // Early buffer-fulls: the client read, but not yet enough to prove it.
        assert_eq!(full(&mut p, 64 * 1024, 65_000, ms(1)), None);
        assert_eq!(full(&mut p, 200 * 1024, 65_000, ms(2)), None);
        // 400 KiB in 3 ms (136 MB/s): 40 ms of it is past the cap, but the buffer holds no more
        // than what the client acknowledged (twice the value set, in the kernel's count).
        assert_eq!(full(&mut p, 400 << 10, 65_000, ms(3)), Some(200 << 10));
        // Each buffer-full drains a buffer: the size doubles.
        assert_eq!(full(&mut p, 800 << 10, 65_000, ms(4)), Some(400 << 10));
        assert_eq!(full(&mut p, 1600 << 10, 65_000, ms(5)), Some(800 << 10));
        assert_eq!(full(&mut p, 3200 << 10, 65_000, ms(6)), Some(1600 << 10));
        assert_eq!(full(&mut p, 6400 << 10, 65_000, ms(7)), Some(CAP));
        assert!(!p.may_grow(), "no more TCP_INFO reads at the cap");
        assert_eq!(full(&mut p, 9000 << 10, 65_000, ms(8)), None);
        // A keep-alive connection keeps what it earned.
        assert_eq!(p.start(1 << 30, ms(500)), None);
        assert_eq!(p.size(), Some(CAP));
    }

    #[test]
    fn a_client_that_does_not_read_stays_at_the_start() {
        let t0 = Instant::now();
        let mut p = SendBufferPolicy::default();
        p.start(0, t0);
        // Its receive buffer (128 KiB) fills, then its window shuts.
        assert_eq!(full(&mut p, 64 * 1024, 64 * 1024, t0), None);
        assert_eq!(full(&mut p, 128 * 1024, 0, t0), None);
        // Even a receive buffer past the proof does not count while its window is shut.
        assert_eq!(
            full(&mut p, 400 * 1024, 0, t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(p.size(), Some(START));
        assert!(p.may_grow());
    }

    #[test]
    fn an_inflated_receive_buffer_earns_no_more_than_it_holds() {
        // A client with an 8 MiB receive buffer that does not read: while it fills, its window
        // is open and it acknowledges fast; the server's buffer (twice the value set) stays
        // within what it acknowledged, so the client holds at least as much as the server.
        let t0 = Instant::now();
        let mut p = SendBufferPolicy::default();
        p.start(0, t0);
        let mut acked = 0u64;
        for k in 1..=40u64 {
            acked = ((k * 300) << 10).min(8 << 20);
            if let Some(size) = full(&mut p, acked, 1 << 20, t0 + Duration::from_millis(k)) {
                assert!(
                    2 * u64::from(size) <= acked,
                    "{size} for {acked} acknowledged"
                );
            }
        }
        assert_eq!(acked, 8 << 20);
        assert_eq!(p.size(), Some(CAP), "the cap bounds it past 4 MiB");
    }

    #[test]
    fn the_proof_counts_from_where_sizing_began() {
        // A keep-alive connection whose earlier (shaped) responses were read: what it
        // acknowledged before does not prove this download is read.
        let t0 = Instant::now();
        let mut p = SendBufferPolicy::default();
        p.start(10 << 20, t0);
        assert_eq!(
            full(
                &mut p,
                (10 << 20) + 100_000,
                30_000,
                t0 + Duration::from_millis(5)
            ),
            None
        );
        p.forget();
        assert_eq!(p.size(), None);
        assert_eq!(
            p.start(0, t0),
            Some(START),
            "sized again after a shaped response"
        );
    }

    #[test]
    fn a_slow_reader_grows_to_its_rate_times_forty_milliseconds() {
        // 2 MB/s on loopback: 80 kB, more than the start, far from the cap.
        let t0 = Instant::now();
        let mut p = SendBufferPolicy::default();
        p.start(0, t0);
        let at = t0 + Duration::from_millis(150);
        assert_eq!(full(&mut p, 300_000, 20_000, at), Some(80_000));
        // Then it only grows when a faster rate says so.
        let later = at + Duration::from_millis(100);
        assert_eq!(full(&mut p, 300_000 + 150_000, 20_000, later), None);
        assert_eq!(
            full(&mut p, 300_000 + 1_000_000, 20_000, later),
            Some(400_000)
        );
    }

    #[test]
    fn a_long_round_trip_sizes_from_twice_the_rtt() {
        // 10 MB/s at 100 ms: 2 MB.
        let t0 = Instant::now();
        let mut p = SendBufferPolicy::default();
        p.start(0, t0);
        let s = Sample {
            bytes_acked: 4_000_000,
            window: None,
        };
        let at = t0 + Duration::from_millis(400);
        let got = p.on_full(s, || Duration::from_millis(100), &cfg(), at);
        assert_eq!(got, Some(2_000_000));
    }
}
