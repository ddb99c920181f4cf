//! The live progress line (indicatif, on stderr, drawn only when stderr is a terminal): elapsed,
//! active users or loops, open connections, MB/s over the last half second, completed downloads,
//! requests per second, and errors by kind.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::Totals;

/// The progress line of one run.
pub struct Progress {
    bar: ProgressBar,
    duration: Duration,
    last: Option<(Instant, u64, u64)>,
    mb_per_s: f64,
    req_per_s: f64,
}

impl Progress {
    /// A line for a run of `duration`; hidden when `enabled` is false or stderr is no terminal.
    pub fn new(duration: Duration, enabled: bool) -> Progress {
        let target = if enabled {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("static template"));
        Progress {
            bar,
            duration,
            last: None,
            mb_per_s: 0.0,
            req_per_s: 0.0,
        }
    }

    /// Update from the current totals.
    pub fn update(&mut self, elapsed: Duration, t: &Totals) {
        let now = Instant::now();
        match self.last {
            Some((at, bytes, reqs)) if now.duration_since(at) >= Duration::from_millis(450) => {
                let dt = now.duration_since(at).as_secs_f64();
                self.mb_per_s = (t.bytes - bytes) as f64 / dt / 1e6;
                self.req_per_s = (t.requests - reqs) as f64 / dt;
                self.last = Some((now, t.bytes, t.requests));
            }
            Some(_) => {}
            None => self.last = Some((now, t.bytes, t.requests)),
        }
        self.bar.set_message(line(
            elapsed,
            self.duration,
            t,
            self.mb_per_s,
            self.req_per_s,
        ));
        self.bar.tick();
    }

    /// Remove the line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The text of the line.
pub fn line(elapsed: Duration, duration: Duration, t: &Totals, mb_s: f64, req_s: f64) -> String {
    let errors = if t.errors.total() == 0 {
        "none".to_string()
    } else {
        t.errors.short()
    };
    format!(
        "{:.1}s/{:.0}s  active {}  conns {}  {:.1} MB/s  done {}  {:.0} req/s  errors: {}",
        elapsed.as_secs_f64(),
        duration.as_secs_f64(),
        t.active,
        t.open,
        mb_s,
        t.completed,
        req_s,
        errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_everything() {
        let mut t = Totals {
            active: 5,
            open: 200,
            completed: 3,
            ..Totals::default()
        };
        t.errors.0.insert("stall".into(), 2);
        let s = line(
            Duration::from_secs(3),
            Duration::from_secs(20),
            &t,
            1234.5,
            10.0,
        );
        assert!(s.contains("active 5"), "{s}");
        assert!(s.contains("conns 200"));
        assert!(s.contains("1234.5 MB/s"));
        assert!(s.contains("done 3"));
        assert!(s.contains("errors: stall=2"));
        assert!(s.len() < 80, "fits a terminal line: {s}");
    }
}
