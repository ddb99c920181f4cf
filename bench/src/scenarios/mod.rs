//! The scenarios of the first benchmark. Each runs once against one started server and
//! returns an [`Outcome`]: named metrics, the exact client commands, and raw details.
pub mod axel;
pub mod curl_ranges;
pub mod held;
pub mod wrk;

use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::fixture::Fixture;
use crate::servers::Running;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// The big file with `axel -n 40` (client-bound: axel writes the file).
    Axel,
    /// The big file as 40 ranged `curl` processes, one range each, bodies discarded.
    CurlRanges,
    /// The big file under `wrk -t2 -c40` (bodies discarded).
    WrkBig,
    /// The 4 KiB file under `wrk -t2 -c100`, keep-alive.
    #[value(name = "wrk-4k")]
    #[serde(rename = "wrk-4k")]
    Wrk4k,
    /// Memory of idle keep-alive connections.
    Idle,
    /// Memory of connections that stop reading mid-download.
    Stalled,
}

pub const ALL: [Scenario; 6] = [
    Scenario::Axel,
    Scenario::CurlRanges,
    Scenario::WrkBig,
    Scenario::Wrk4k,
    Scenario::Idle,
    Scenario::Stalled,
];

/// Which direction is better, and the goal for a metric if it has one.
#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize)]
pub enum Goal {
    /// weir / nginx must be at least this.
    RatioAtLeast(f64),
    /// weir / nginx must be at most this.
    RatioAtMost(f64),
    /// weir's own value must be at most this.
    AtMost(f64),
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct MetricDef {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub goal: Option<Goal>,
}

const fn m(
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    goal: Option<Goal>,
) -> MetricDef {
    MetricDef {
        key,
        label,
        unit,
        higher_is_better,
        goal,
    }
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Axel => "axel",
            Scenario::CurlRanges => "curl-ranges",
            Scenario::WrkBig => "wrk-big",
            Scenario::Wrk4k => "wrk-4k",
            Scenario::Idle => "idle",
            Scenario::Stalled => "stalled",
        }
    }

    /// One paragraph for the README: what is measured and how.
    pub fn what(self) -> &'static str {
        match self {
            Scenario::Axel => "The big file fetched once with `axel -n 40 -q -o FILE` into a tmpfs (weir: the signed link; nginx: the plain path). Throughput = file bytes / wall time of the axel process; CPU = utime+stime of the server's processes (weir: its one process including io-wq threads; nginx: master + workers) before/after, per GiB. The file axel wrote is hashed after timing (correctness column). axel is known to be client-bound here.",
            Scenario::CurlRanges => "The big file as 40 equal byte ranges, one `curl -s -o /dev/null -r A-B` process per range, all started at once. Throughput = file bytes / wall time until the last curl exits (process start-up included); every response must be 206 with the range's length.",
            Scenario::WrkBig => "`wrk -t2 -c40 --timeout 60s` on the big file for the wrk duration, bodies discarded; bytes from wrk's own count (Lua `done` summary). Throughput = bytes / duration; CPU per GiB as above. Both servers get the same `Authorization: Basic` header (nginx ignores it).",
            Scenario::Wrk4k => "`wrk -t2 -c100 --latency` on the 4 KiB file with keep-alive and an `Authorization: Basic` header (weir verifies it; its credential cache makes repeats cheap). Requests/s, latency p50/p99 from wrk's histogram, server CPU per million requests. Goal: ≥ 1.2× nginx's requests/s.",
            Scenario::Idle => "N keep-alive connections opened from the harness process (blocking connect, one GET of the 4 KiB file read fully, then held idle). Server RssAnon / RssFile (/proc/PID/status; nginx: the workers summed) before and after, per connection; kernel TCP memory from /proc/net/sockstat per connection (both ends are on this host). Goal: ≤ 1 KiB RssAnon each.",
            Scenario::Stalled => "N connections each send a GET for the big file, read ≥ 16 KiB, and never read again. After /proc/net/sockstat `TCP mem` is stable (4 samples 0.5 s apart within 1%), the same memory figures per connection, plus the bytes queued in the server's send queues and the clients' receive queues (/proc/net/tcp). Goal: ≤ 2 KiB RssAnon each.",
        }
    }

    pub fn metrics(self) -> &'static [MetricDef] {
        match self {
            Scenario::Axel | Scenario::CurlRanges | Scenario::WrkBig => THROUGHPUT,
            Scenario::Wrk4k => REQUESTS,
            Scenario::Idle => IDLE,
            Scenario::Stalled => STALLED,
        }
    }
}

use Goal::{AtMost, RatioAtLeast, RatioAtMost};

const THROUGHPUT: &[MetricDef] = &[
    m(
        "gb_per_s",
        "throughput",
        "GB/s",
        true,
        Some(RatioAtLeast(1.0)),
    ),
    m(
        "cpu_s_per_gib",
        "server CPU",
        "s/GiB",
        false,
        Some(RatioAtMost(1.0)),
    ),
];

const REQUESTS: &[MetricDef] = &[
    m(
        "requests_per_s",
        "requests/s",
        "req/s",
        true,
        Some(RatioAtLeast(1.2)),
    ),
    m("latency_p50_ms", "latency p50", "ms", false, None),
    m("latency_p99_ms", "latency p99", "ms", false, None),
    m("cpu_s_per_mreq", "server CPU", "s/M req", false, None),
];

const RSS_FILE: MetricDef = m(
    "rss_file_kib_per_conn",
    "RssFile per conn",
    "KiB",
    false,
    None,
);
const TCP_MEM: MetricDef = m(
    "tcp_mem_kib_per_conn",
    "kernel TCP mem per conn (both ends)",
    "KiB",
    false,
    None,
);
const FDS: MetricDef = m("fds_per_conn", "server fds per conn", "", false, None);

const IDLE: &[MetricDef] = &[
    m(
        "rss_anon_kib_per_conn",
        "RssAnon per conn",
        "KiB",
        false,
        Some(AtMost(1.0)),
    ),
    RSS_FILE,
    TCP_MEM,
    FDS,
];

const STALLED: &[MetricDef] = &[
    m(
        "rss_anon_kib_per_conn",
        "RssAnon per conn",
        "KiB",
        false,
        Some(AtMost(2.0)),
    ),
    RSS_FILE,
    TCP_MEM,
    m(
        "server_sendq_kib_per_conn",
        "server send queue per conn",
        "KiB",
        false,
        None,
    ),
    m(
        "client_recvq_kib_per_conn",
        "client recv queue per conn",
        "KiB",
        false,
        None,
    ),
    FDS,
];

/// Sizes and durations for one invocation (`--quick` shrinks them).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Plan {
    pub runs: usize,
    pub big_bytes: u64,
    pub wrk_seconds: u64,
    pub conns: usize,
}

/// What a scenario gets besides the server.
pub struct Ctx<'a> {
    pub plan: &'a Plan,
    pub fixture: &'a Fixture,
    /// tmpfs directory for axel's output.
    pub axel_dir: PathBuf,
    /// The wrk Lua script that prints the summary as JSON.
    pub wrk_script: PathBuf,
}

/// The result of one run of one scenario against one server.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub ok: bool,
    pub problems: Vec<String>,
    pub metrics: BTreeMap<String, f64>,
    pub commands: Vec<String>,
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Outcome {
    pub fn metric(&mut self, k: &str, v: f64) {
        self.metrics.insert(k.to_owned(), v);
    }

    pub fn detail(&mut self, k: &str, v: impl Serialize) {
        self.details.insert(
            k.to_owned(),
            serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
        );
    }

    pub fn problem(&mut self, p: impl Into<String>) {
        self.problems.push(p.into());
    }
}

pub fn run(s: Scenario, ctx: &Ctx, srv: &Running) -> Result<Outcome> {
    let mut o = match s {
        Scenario::Axel => axel::run(ctx, srv)?,
        Scenario::CurlRanges => curl_ranges::run(ctx, srv)?,
        Scenario::WrkBig => wrk::run_big(ctx, srv)?,
        Scenario::Wrk4k => wrk::run_4k(ctx, srv)?,
        Scenario::Idle => held::run(ctx, srv, held::Mode::Idle)?,
        Scenario::Stalled => held::run(ctx, srv, held::Mode::Stalled)?,
    };
    o.ok = o.problems.is_empty();
    Ok(o)
}

pub const GIB: f64 = (1u64 << 30) as f64;
