//! `weir-bench report`: the tables of the stored results under `results/`, rendered again from
//! their raw data by the same code that wrote them, so that every figure the top-level README
//! quotes can be regenerated and checked. No run directory carries its own script.
//!
//! What is recognised, in any run directory and its subdirectories:
//! - `summary.json` of the server-against-server runner (`first`, `before-after`): the table of
//!   medians and ratios ([`crate::report::table`]), and the shaping comparison if any;
//! - `summary.json` written by [`crate::report::write_simple`] (`{header, data}`): the table of
//!   the benchmark named in the header;
//! - the raw files of the older runs: `runs.json` of `overhead` (records with `file_mib`),
//!   `loadgen` (`tool`) and `send-path` (`method`), and the shaping benchmark's `summary.json`
//!   (a list of scenario records).
//!
//! Anything else (weir-load's own per-run summaries, logs, perf data) is raw data, not a table.
use anyhow::{Context, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// `weir-bench report` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The results directory [default: results/ of this workspace]
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// Only these run directories (names under the results directory), repeatable
    /// [default: the runs the top-level README quotes; `--all` for every run]
    #[arg(long = "run", value_name = "NAME")]
    pub runs: Vec<String>,
    /// Every run directory, every table found
    #[arg(long)]
    pub all: bool,
}

/// The runs the top-level README quotes, in its order, with what it calls them.
pub const QUOTED: [(&str, &str); 8] = [
    ("2026-11-22-first", "weir vs nginx"),
    ("2026-11-23-idle", "weir vs nginx: idle memory re-measured"),
    (
        "2026-11-22-first-sendfile",
        "weir vs nginx with --send-path sendfile",
    ),
    ("2026-11-22-send-path", "Send path"),
    ("2026-11-23-shaping-grant", "Shaping accuracy"),
    ("2026-11-23-accounting-overhead", "Accounting overhead"),
    (
        "2026-11-23-loadgen-sessions",
        "weir-load vs the classic tools",
    ),
    (
        "2026-11-23-shaping-machine-cpu",
        "Shaping: the whole machine's CPU",
    ),
];

pub fn run(a: Args) -> Result<()> {
    let root = a
        .results
        .clone()
        .unwrap_or_else(|| crate::workspace_root().join("results"));
    let runs: Vec<(String, String)> = if a.all {
        let mut v: Vec<String> = std::fs::read_dir(&root)
            .with_context(|| format!("reading {}", root.display()))?
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        v.sort();
        v.into_iter().map(|n| (n, String::new())).collect()
    } else if !a.runs.is_empty() {
        a.runs.iter().map(|n| (n.clone(), String::new())).collect()
    } else {
        QUOTED
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    };
    let mut out = String::new();
    for (name, what) in runs {
        let dir = root.join(&name);
        let _ = writeln!(
            out,
            "## {name}{}\n",
            if what.is_empty() {
                String::new()
            } else {
                format!(": {what}")
            }
        );
        let tables = render_dir(&dir)?;
        if tables.is_empty() {
            let _ = writeln!(
                out,
                "(no table recognised: see its README.md for its figures)\n"
            );
        }
        for (file, table) in tables {
            let _ = writeln!(out, "`{file}`:\n\n{table}");
        }
    }
    print!("{out}");
    Ok(())
}

/// Every table found under `dir`, with the file (relative to `dir`) it was rendered from.
pub fn render_dir(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    let mut tables = Vec::new();
    // Shaping rounds (`roundN[-VARIANT]/summary.json` side by side): medians across rounds
    // per variant, and shaped against unshaped paired round by round.
    let mut parents: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent()?.parent().map(Path::to_path_buf))
        .collect();
    parents.sort();
    parents.dedup();
    for p in parents {
        if let Some(t) = rounds_table(&p)? {
            let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
            tables.push((format!("{rel}/round*/summary.json"), t));
        }
    }
    // Send-path batches of one run directory: also all together (the README quotes the medians
    // over both batches of 2026-11-22-send-path).
    let mut send_path_runs: Vec<Value> = Vec::new();
    let mut send_path_files = 0;
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let batch = v.as_array().filter(|a| {
            a.first()
                .is_some_and(|r| r.get("method").is_some() && r.get("run").is_some())
        });
        if let Some(a) = batch {
            send_path_runs.extend(a.iter().cloned());
            send_path_files += 1;
        }
        let rel = f.strip_prefix(dir).unwrap_or(&f).display().to_string();
        match render(&v) {
            Ok(Some(t)) => tables.push((rel, t)),
            Ok(None) => {}
            Err(e) => tables.push((rel, format!("(not rendered: {e:#})\n"))),
        }
    }
    if send_path_files > 1 {
        let t = crate::send_path::table_from_runs(&Value::Array(send_path_runs))?;
        tables.push((
            format!("all {send_path_files} send-path runs.json together"),
            t,
        ));
    }
    Ok(tables)
}

/// The shaping records of `dir/roundN[-VARIANT]/summary.json`, by variant ("" when none) and
/// round, or None when `dir` holds no such rounds.
fn rounds_table(dir: &Path) -> Result<Option<String>> {
    let mut rounds: Vec<(String, String, Vec<Value>)> = Vec::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("round") else {
            continue;
        };
        let (n, variant) = rest.split_once('-').unwrap_or((rest, ""));
        if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path().join("summary.json")) else {
            continue;
        };
        let v: Value = serde_json::from_str(&text)?;
        let recs = v.get("data").unwrap_or(&v).as_array().cloned();
        if let Some(recs) = recs.filter(|r| r.iter().all(|x| x.get("ratio_p1").is_some())) {
            rounds.push((variant.to_owned(), n.to_owned(), recs));
        }
    }
    if rounds.len() < 2 {
        return Ok(None);
    }
    rounds.sort_by_key(|(v, n, _)| (v.clone(), n.parse::<u32>().unwrap_or(0)));
    Ok(Some(crate::shaping::rounds_table(&rounds)))
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            collect(&p, files)?;
        } else if matches!(
            p.file_name().and_then(|n| n.to_str()),
            Some("summary.json" | "runs.json")
        ) {
            files.push(p);
        }
    }
    Ok(())
}

/// The table of one stored JSON document, or None when it is not one of ours.
pub fn render(v: &Value) -> Result<Option<String>> {
    // The runner's summary (first, before-after).
    if v.get("scenarios").is_some() && v.get("targets").is_some() {
        let s: crate::report::Summary = serde_json::from_value(v.clone())?;
        let mut t = crate::report::table(&s);
        if let Some(sh) = &s.shaping {
            t.push('\n');
            t.push_str(&sh.table());
        }
        return Ok(Some(t));
    }
    // write_simple's {header, data}.
    if let (Some(bench), Some(data)) = (v["header"]["bench"].as_str(), v.get("data")) {
        return render_data(bench, data);
    }
    let kind = match v.as_array().and_then(|a| a.first()) {
        Some(r) if r.get("file_mib").is_some() => "overhead",
        Some(r) if r.get("tool").is_some() => "loadgen",
        Some(r) if r.get("method").is_some() && r.get("run").is_some() => "send-path",
        Some(r) if r.get("ratio_p1").is_some() => "shaping",
        _ => return Ok(None),
    };
    render_data(kind, v)
}

fn render_data(bench: &str, data: &Value) -> Result<Option<String>> {
    Ok(Some(match bench {
        "overhead" => crate::overhead::table(&serde_json::from_value::<Vec<crate::overhead::Run>>(
            data.clone(),
        )?),
        "loadgen" => crate::loadgen_bench::table(data.as_array().map_or(&[], |v| v)),
        "shaping" => crate::shaping::table(data.as_array().map_or(&[], |v| v)),
        "send-path" => crate::send_path::table_from_runs(data)?,
        "tls" => crate::tls_bench::table_from(data)?,
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every run the README quotes is there and yields at least one table.
    #[test]
    fn the_quoted_runs_render() {
        let root = crate::workspace_root().join("results");
        for (name, _) in QUOTED {
            let tables = render_dir(&root.join(name)).unwrap();
            assert!(!tables.is_empty(), "{name}: no table");
        }
    }

    /// The headline figures of the README come out of the stored first run.
    #[test]
    fn first_run_medians_match_the_readme() {
        let t = table_of("2026-11-22-first", "summary.json");
        // 4 KiB: 161,696 vs 159,955 req/s; 40 ranged curls 2.01 vs 1.35 GB/s.
        assert!(t.contains("161696") && t.contains("159955"), "{t}");
        assert!(
            t.contains("| curl-ranges | throughput | GB/s | 2.01 | 1.35 |"),
            "{t}"
        );
    }

    fn table_of(run: &str, file: &str) -> String {
        let root = crate::workspace_root().join("results").join(run);
        render_dir(&root)
            .unwrap()
            .into_iter()
            .find(|(f, _)| f == file)
            .unwrap_or_else(|| panic!("{run}: no table from {file}"))
            .1
    }

    /// The README's send-path figures: medians over both batches.
    #[test]
    fn send_path_medians_match_the_readme() {
        let t = table_of("2026-11-22-send-path", "all 2 send-path runs.json together");
        assert!(t.contains("| uring-send | 256K | 40 | 4.90 "), "{t}");
        assert!(t.contains("| uring-send-zc | 256K | 40 | 4.48 "), "{t}");
        assert!(t.contains("| sendfile | 256K | 40 | 2.20 "), "{t}");
    }

    /// The README's shaping CPU row: shaped ÷ unshaped paired by round, medians.
    #[test]
    fn shaping_paired_rounds_match_the_readme() {
        let t = table_of("2026-11-23-shaping-grant", "rounds/round*/summary.json");
        assert!(t.contains("| uring-a vs uring-paced | 9 |"), "{t}");
        assert!(t.contains("| 0.98 | 1.09 vs 4.16 |"), "{t}");
        assert!(t.contains("| 1.03 | 2.33 vs 4.16 |"), "{t}");
        assert!(t.contains("| 0.81 | 1.10 vs 4.46 |"), "{t}");
    }

    /// The README's accounting figures: 64 MiB +1.0% / +0.4% (paired +1.3% / +0.4%).
    #[test]
    fn accounting_overhead_matches_the_readme() {
        let t = table_of("2026-11-23-accounting-overhead", "rerun-64m/runs.json");
        assert!(
            t.contains("| +1.0% | 0.241 | 0.240 | +0.4% | +1.3% / +0.4% |"),
            "{t}"
        );
    }

    /// The README's weir-load figures: 164,441 vs 199,435 req/s, 1.21×.
    #[test]
    fn loadgen_matches_the_readme() {
        let t = table_of("2026-11-23-loadgen-sessions", "runs.json");
        let row = "| nginx | 4 KiB, each at its best | wrk -t2 -c100: 164441 req/s \
                   | weir-load urlopen --threads 100 --workers 1: 199435 req/s | 1.21× |";
        assert!(t.contains(row), "{t}");
    }
}
