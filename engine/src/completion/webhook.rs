//! The completion webhook: the thread that empties the storage's durable outbox.
//!
//! When a webhook is configured, the ledger's completion commit
//! ([`Storage::commit_completion`]) queues one outbox event with the completion (see
//! [`super::ledger`]), so a completion and its notification are committed together or not at
//! all. This module's sender thread then POSTs
//! each due row to the shop:
//!
//! ```text
//! POST <url>
//! Content-Type: application/json
//! Idempotency-Key: weir-completion-<history id>
//!
//! {"completed_at_ms":1700000000000,"event":"item.completed","history_id":42,"item":"album-1","user":"alice"}
//! ```
//!
//! The contract with the receiver:
//! - A 2xx answer acknowledges the event: the row is deleted.
//! - Anything else (another status, a redirect, a timeout, a refused connection) is retried: the
//!   row's `attempts` grows by one and it is due again after [`retry_delay`] (1 s, doubling, at
//!   most 60 s, less up to 10 % jitter so many nodes do not retry in lockstep). There is no
//!   give-up: a receiver that is down for a day gets its events when it is back.
//! - The `Idempotency-Key` names the history row, so it is identical across retries and restarts.
//!   Delivery is at least once: a receiver must treat a repeated key as already handled (a 2xx
//!   whose row delete was lost to a crash or power loss is sent again).
//! - Rows are sent oldest first when due; a failing event does not hold back later ones.
//!
//! The queue lives in storage ([`Storage::outbox_due`], [`Storage::outbox_ack`],
//! [`Storage::outbox_retry`]), so it survives restarts; the sender is its own thread and
//! never runs on an I/O worker. It sleeps until the next row is due or the ledger wakes it
//! (a wake-up signal on a channel) after committing a completion. Its own writes (acks, retry
//! times) use [`Durability::Normal`](crate::storage::Durability): losing one to power loss means
//! one more delivery of the same key.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::stats::LedgerStats;
pub use crate::storage::{idempotency_key, webhook_payload as payload};
use crate::storage::{now_ms, OutboxEntry, Storage, StoreError};

/// First retry delay; each further failure doubles it.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest retry delay.
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Rows fetched per pass over the due queue.
const BATCH: usize = 32;
/// With nothing queued, look at the table again after this long anyway (the ledger normally
/// wakes the sender; this only bounds how long a missed wake-up could delay an event).
const IDLE_RECHECK: Duration = Duration::from_secs(60);
/// Most response body bytes read (and discarded) so the connection can be reused.
const MAX_RESPONSE_BODY: u64 = 64 * 1024;

/// How long to wait after the `attempts`-th failed attempt (1-based): 1 s doubling up to 60 s,
/// shortened by `jitter` (clamped to `0.0..=1.0`) times 10 %.
pub fn retry_delay(attempts: u32, jitter: f64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    let base = FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY);
    base.mul_f64(1.0 - 0.1 * jitter.clamp(0.0, 1.0))
}

/// What the ledger tells the sender thread.
pub(crate) enum Signal {
    /// A completion was committed: look at the queue now.
    Wake,
    /// Finish the POST in flight (if any) and exit.
    Stop,
}

/// Why a pass over the queue ended early.
enum Pass {
    /// Every due row was tried; wait for the next one.
    Done,
    /// A full batch was tried; more may be due.
    More,
    /// The ledger asked the sender to stop.
    Stopped,
}

/// The sender thread's state.
struct Sender {
    storage: Box<dyn Storage>,
    agent: ureq::Agent,
    /// Replaced on SIGHUP ([`super::Ledger::set_webhook_url`]); the next POST, queued events
    /// included, goes to the new one.
    url: Arc<Mutex<String>>,
    signals: Receiver<Signal>,
    stats: Arc<LedgerStats>,
}

/// Refuses what the sender cannot POST to.
pub(crate) fn check_url(url: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    ureq::post(url)
        .request_url()
        .with_context(|| format!("webhook URL {url:?}"))?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        anyhow::bail!("webhook URL {url:?}: only http:// and https:// are supported");
    }
    Ok(())
}

/// Checks `url` and starts the sender thread on `storage` (its own connection).
pub(crate) fn spawn(
    storage: Box<dyn Storage>,
    url: Arc<Mutex<String>>,
    timeout: Duration,
    signals: Receiver<Signal>,
    stats: Arc<LedgerStats>,
) -> anyhow::Result<JoinHandle<()>> {
    use anyhow::Context as _;
    // Redirects are not followed: a 3xx is not an acknowledgement, and a POST must not turn
    // into a GET somewhere else.
    let agent = ureq::AgentBuilder::new()
        .timeout(timeout)
        .redirects(0)
        .build();
    check_url(&url.lock().unwrap_or_else(|e| e.into_inner()))?;
    let sender = Sender {
        storage,
        agent,
        url,
        signals,
        stats,
    };
    std::thread::Builder::new()
        .name("weir-webhook".into())
        .spawn(move || sender.run())
        .context("spawning the webhook thread")
}

impl Sender {
    fn run(self) {
        tracing::info!(url = %self.url(), "webhook sender started");
        loop {
            let wait = match self.pass() {
                Ok(Pass::Stopped) => return,
                Ok(Pass::More) => continue,
                Ok(Pass::Done) => self.next_due_in().unwrap_or_else(|e| {
                    tracing::error!(error = %e, "webhook outbox: reading the next due time");
                    FIRST_RETRY
                }),
                Err(e) => {
                    tracing::error!(error = %e, "webhook outbox: database error");
                    FIRST_RETRY
                }
            };
            match self.signals.recv_timeout(wait) {
                Ok(Signal::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn url(&self) -> String {
        self.url.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether a stop was asked for; swallows wake-ups, which a pass makes moot.
    fn stop_requested(&self) -> bool {
        loop {
            match self.signals.try_recv() {
                Ok(Signal::Wake) => continue,
                Err(TryRecvError::Empty) => return false,
                Ok(Signal::Stop) | Err(TryRecvError::Disconnected) => return true,
            }
        }
    }

    /// Tries every row due now, up to one batch.
    fn pass(&self) -> Result<Pass, StoreError> {
        let rows = self.storage.outbox_due(now_ms(), BATCH)?;
        let full = rows.len() == BATCH;
        for row in rows {
            if self.stop_requested() {
                return Ok(Pass::Stopped);
            }
            match self.post(&row) {
                Ok(status) => {
                    self.storage.outbox_ack(row.id)?;
                    self.stats.webhook_delivered.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(key = %row.key, status, "webhook delivered");
                }
                Err(why) => {
                    let attempts = row.attempts.saturating_add(1);
                    let delay = retry_delay(attempts, rand::random::<f64>());
                    self.storage.outbox_retry(
                        row.id,
                        attempts,
                        now_ms() + delay.as_millis() as u64,
                    )?;
                    self.stats.webhook_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        key = %row.key,
                        attempts,
                        retry_in_ms = delay.as_millis() as u64,
                        error = %why,
                        "webhook delivery failed; will retry"
                    );
                }
            }
        }
        Ok(if full { Pass::More } else { Pass::Done })
    }

    /// POSTs one event; `Ok(status)` only for a 2xx answer.
    fn post(&self, row: &OutboxEntry) -> Result<u16, String> {
        let result = self
            .agent
            .post(&self.url())
            .set("Content-Type", "application/json")
            .set("Idempotency-Key", &row.key)
            .send_string(&row.payload);
        match result {
            Ok(resp) => {
                let status = resp.status();
                // Drain a little of the body so the connection can be reused.
                let _ = std::io::copy(
                    &mut resp.into_reader().take(MAX_RESPONSE_BODY),
                    &mut std::io::sink(),
                );
                if (200..300).contains(&status) {
                    Ok(status)
                } else {
                    Err(format!("HTTP status {status}"))
                }
            }
            Err(ureq::Error::Status(status, _)) => Err(format!("HTTP status {status}")),
            Err(ureq::Error::Transport(t)) => Err(t.to_string()),
        }
    }

    /// How long until the earliest queued row is due (zero if one is due now).
    fn next_due_in(&self) -> Result<Duration, StoreError> {
        Ok(match self.storage.outbox_next_due()? {
            None => IDLE_RECHECK,
            Some(at) => Duration::from_millis(at.saturating_sub(now_ms())).min(IDLE_RECHECK),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_caps_and_jitters_down() {
        let ms = |a, j| retry_delay(a, j).as_millis();
        assert_eq!(ms(1, 0.0), 1000);
        assert_eq!(ms(2, 0.0), 2000);
        assert_eq!(ms(3, 0.0), 4000);
        assert_eq!(ms(6, 0.0), 32_000);
        assert_eq!(ms(7, 0.0), 60_000);
        assert_eq!(ms(u32::MAX, 0.0), 60_000);
        assert_eq!(ms(0, 0.0), 1000, "attempts below 1 count as the first");
        assert_eq!(ms(1, 1.0), 900);
        assert_eq!(ms(7, 0.5), 57_000);
        assert_eq!(ms(7, 7.0), 54_000, "jitter is clamped");
        for a in 0..100 {
            let d = retry_delay(a, rand::random());
            assert!(
                d >= Duration::from_millis(900) && d <= MAX_RETRY,
                "{a}: {d:?}"
            );
        }
    }
}
