//! Results of a scenario: named figures (with their targets), functional checks, latency
//! summaries and per-process CPU and memory; printed as a table and written as JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::scrape::Stage;
use super::stats::Summary;

/// One reported number.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// The target as a readable rule, e.g. "≤ 1 ms".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

/// A functional check: these fail the command (missed performance targets never do).
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub value: u64,
    pub ok: bool,
}

/// CPU and memory of one process over the measured window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcFigures {
    pub cpu_ms: f64,
    /// Share of one core over the window.
    pub cores: f64,
    pub rss_start_mib: f64,
    pub rss_end_mib: f64,
}

/// Everything one run of a scenario measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub figures: Vec<Figure>,
    pub checks: Vec<Check>,
    /// Client-observed latencies.
    pub latencies: BTreeMap<String, Summary>,
    /// Server-side stages from `/metrics`.
    pub stages: BTreeMap<String, Stage>,
    pub processes: BTreeMap<String, ProcFigures>,
    pub counters: BTreeMap<String, u64>,
    /// Redis time by command per turn (µs per turn, calls per turn), largest first.
    pub redis_commands: Vec<(String, f64, f64)>,
    /// Per second: (second, turns, frames, p50 ms, p99 ms) of the scenario's main latency.
    pub series: Vec<(u64, u64, u64, f64, f64)>,
    /// Per second since `go`: RSS of each process, MiB.
    pub rss_mib: Vec<(u64, BTreeMap<String, f64>)>,
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn fig(&mut self, name: &str, value: f64, unit: &str) {
        self.figures.push(Figure { name: name.into(), value, unit: unit.into(), target: None, met: None });
    }
    /// A figure with a target; `met` says whether `value` meets it.
    pub fn target(&mut self, name: &str, value: f64, unit: &str, rule: &str, met: bool) {
        let f = Figure { name: name.into(), value, unit: unit.into(), target: Some(rule.into()), met: Some(met) };
        self.figures.push(f);
    }
    pub fn check(&mut self, name: &str, value: u64, ok: bool) {
        self.checks.push(Check { name: name.into(), value, ok });
    }
    pub fn value(&self, name: &str) -> Option<f64> {
        self.figures.iter().find(|f| f.name == name).map(|f| f.value)
    }
    pub fn functional_ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// Median of each figure over runs (figures matched by name; targets re-judged on the median).
pub fn medians(runs: &[Outcome]) -> Vec<Figure> {
    let Some(first) = runs.first() else { return Vec::new() };
    first
        .figures
        .iter()
        .map(|f| {
            let mut vals: Vec<f64> = runs.iter().filter_map(|r| r.value(&f.name)).collect();
            vals.sort_by(|a, b| a.total_cmp(b));
            let value = vals.get(vals.len() / 2).copied().unwrap_or(f.value);
            let met = f.target.as_deref().map(|rule| judge(rule, value));
            Figure { name: f.name.clone(), value, unit: f.unit.clone(), target: f.target.clone(), met }
        })
        .collect()
}

/// Judges "≤ x" or "≥ x" (the only rule forms used) against `value`.
pub fn judge(rule: &str, value: f64) -> bool {
    let num = |s: &str| s.split_whitespace().next().and_then(|n| n.parse::<f64>().ok()).unwrap_or(f64::NAN);
    if let Some(r) = rule.strip_prefix("≤ ") {
        value <= num(r)
    } else if let Some(r) = rule.strip_prefix("≥ ") {
        value >= num(r)
    } else if let Some(r) = rule.strip_prefix("< ") {
        value < num(r)
    } else {
        true
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The summary table: figures (medians when several runs), checks, processes.
#[allow(clippy::print_stdout)] // the benchmark's table is its output
pub fn print_table(scenario: &str, runs: &[Outcome], figures: &[Figure]) {
    println!("\n== {scenario} ({} run{}) ==", runs.len(), if runs.len() == 1 { "" } else { "s" });
    println!("{:<44} {:>12} {:<10} target", "figure", "value", "unit");
    for f in figures {
        let verdict = match f.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!(
            "{:<44} {:>12} {:<10} {:<14} {verdict}",
            f.name,
            fmt(f.value),
            f.unit,
            f.target.as_deref().unwrap_or("")
        );
    }
    if let Some(last) = runs.last() {
        println!("\n{:<20} {:>10} {:>8} {:>12} {:>12}", "process", "cpu ms", "cores", "rss start", "rss end");
        for (name, p) in &last.processes {
            println!(
                "{name:<20} {:>10.0} {:>8.2} {:>10.1}Mi {:>10.1}Mi",
                p.cpu_ms, p.cores, p.rss_start_mib, p.rss_end_mib
            );
        }
        let failed: Vec<String> =
            runs.iter().flat_map(|r| &r.checks).filter(|c| !c.ok).map(|c| format!("{}={}", c.name, c.value)).collect();
        if failed.is_empty() {
            println!(
                "\nfunctional checks: all passed ({})",
                last.checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            );
        } else {
            println!("\nfunctional checks FAILED: {}", failed.join(", "));
        }
        if !last.redis_commands.is_empty() {
            println!("\nRedis time by command (INFO commandstats), per turn:");
            for (cmd, us, calls) in last.redis_commands.iter().take(8) {
                println!("  {cmd:<16} {us:>9.1} µs {calls:>8.2} calls");
            }
        }
        for n in &last.notes {
            println!("note: {n}");
        }
    }
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (UTC), without a date library.
pub fn timestamp(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Civil-from-days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Writes the JSON file and returns its path.
pub fn write_json(dir: &Path, stem: &str, value: &serde_json::Value) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{stem}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0), "19700101T000000Z");
        assert_eq!(timestamp(1_709_210_096), "20240229T123456Z");
    }

    #[test]
    fn rules_are_judged() {
        assert!(judge("≤ 1 ms", 0.5));
        assert!(!judge("≥ 3 ×", 2.0));
        assert!(judge("< 5 %", 4.9));
    }
}
