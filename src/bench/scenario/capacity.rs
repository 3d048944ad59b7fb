//! `chatfleet bench capacity`: the largest session count at which delta gap p99 stays within
//! 2 × the coalescing window, for chatfleet and for Socket.IO on the same box. Each system runs
//! `stream`'s load (streams of 50 tokens/s) at the counts a [`Search`] proposes, one short run
//! per count on a fresh Redis; a count passes when its gap p99 is within the limit and nothing
//! was lost, doubled, wrong or left unfinished. Only chatfleet's wrong, lost or doubled text
//! fails the command; a count past capacity is a measurement.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::bail;
use indicatif::MultiProgress;
use serde::Serialize;

use super::super::fleet::redis_pid;
use super::super::report::{self, Outcome};
use super::super::sio::{self, SioSpec};
use super::super::{peers, BenchArgs};
use super::search::{Found, Search};
use super::{params, run_once, Params};
use crate::local_redis::LocalRedis;

/// Counts whose failure means wrong results, not a load past capacity.
const CORRECTNESS: [&str; 3] = ["lost", "duplicates", "wrong_text"];

/// One run of one system at one session count.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Which of the `--runs` (from 1).
    pub run: usize,
    pub system: &'static str,
    pub sessions: usize,
    /// Tokens per second the model (chatfleet) or producers (Socket.IO) offer: sessions × rate.
    /// (A delivered rate from completed turns would count a short run's turns in lumps.)
    pub offered_tokens_per_sec: f64,
    /// Delta frames (chatfleet, steady state) or messages (Socket.IO, over the whole run and its
    /// drain) delivered per second.
    pub msgs_per_sec: f64,
    pub gap_p50_ms: f64,
    pub gap_p99_ms: f64,
    pub pass: bool,
    /// Why it failed (empty when it passed).
    pub why: Vec<String>,
    /// Share of a core per process kind (redis, gateway, worker, load; sio-…) over the run.
    pub cores: BTreeMap<String, f64>,
    /// False when chatfleet lost, doubled or garbled text.
    pub correct: bool,
}

impl Step {
    fn line(&self) -> String {
        let cores: Vec<String> = self.cores.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
        format!(
            "{:<10} {:>8} {:>14.0} {:>10.0} {:>8.1} {:>8.1}  {:<5} {}{}",
            self.system,
            self.sessions,
            self.offered_tokens_per_sec,
            self.msgs_per_sec,
            self.gap_p50_ms,
            self.gap_p99_ms,
            if self.pass { "pass" } else { "FAIL" },
            cores.join(", "),
            if self.why.is_empty() { String::new() } else { format!("  ({})", self.why.join(", ")) },
        )
    }
}

fn header() -> String {
    format!(
        "{:<10} {:>8} {:>14} {:>10} {:>8} {:>8}  {:<5} cores per process kind",
        "system", "sessions", "offered tok/s", "msgs/s", "gap p50", "gap p99", ""
    )
}

/// The ladder and bisection budget: `--ladder`/`--bisect`, else the scenario's.
fn ladder(args: &BenchArgs) -> (Vec<usize>, usize) {
    // Quick: two counts per system and no bisection, a smoke run of the whole path.
    let (ladder, bisect) =
        if args.quick { (vec![50, 200], 0) } else { (vec![100, 250, 500, 750, 1000, 1500, 2000, 3000, 4000], 3) };
    let ladder = if args.ladder.is_empty() { ladder } else { args.ladder.clone() };
    (ladder, args.bisect.unwrap_or(bisect))
}

/// Cores used, summed per process kind (`worker-0` and `worker-1` are `worker`).
fn cores_of(o: &Outcome) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (name, p) in &o.processes {
        let kind = name.split('-').next().unwrap_or(name).to_string();
        *out.entry(kind).or_default() += p.cores;
    }
    out
}

async fn chatfleet_step(
    args: &BenchArgs,
    base: &Params,
    n: usize,
    mp: &MultiProgress,
    logs: &Path,
) -> anyhow::Result<Step> {
    let mut p = base.clone();
    p.sessions = n;
    p.peer = false;
    p.max_concurrent_turns = n.max(256);
    p.clients = p.clients.max(n.div_ceil(9_000));
    std::fs::create_dir_all(logs)?;
    let (o, _) = run_once(args, &p, mp, logs).await?;
    let gap = o.latencies.get("gap").copied().unwrap_or_default();
    let limit = 2.0 * p.coalesce_ms as f64;
    let mut why: Vec<String> = o.checks.iter().filter(|c| !c.ok).map(|c| format!("{}={}", c.name, c.value)).collect();
    if gap.count == 0 || gap.p99_ms > limit {
        why.insert(0, format!("gap p99 > {limit} ms"));
    }
    Ok(Step {
        run: 0,
        system: "chatfleet",
        sessions: n,
        offered_tokens_per_sec: (n as u64 * p.tokens_per_sec) as f64,
        msgs_per_sec: o.value("delivered delta frames/s (steady state)").unwrap_or(0.0),
        gap_p50_ms: gap.p50_ms,
        gap_p99_ms: gap.p99_ms,
        pass: why.is_empty(),
        why,
        cores: cores_of(&o),
        correct: o.checks.iter().all(|c| c.ok || !CORRECTNESS.contains(&c.name.as_str())),
    })
}

async fn sio_step(base: &Params, n: usize, dir: &Path, logs: &Path) -> anyhow::Result<Step> {
    std::fs::create_dir_all(logs)?;
    let redis = LocalRedis::start(&[]).await?;
    let url = redis.url();
    let spec = SioSpec {
        rooms: n,
        rate: base.tokens_per_sec as f64,
        seconds: (base.run_ms / 1000).max(1),
        // One producer per chatfleet worker: the processes that run the streams.
        producers: base.workers,
    };
    let run = match redis_pid(&url).await {
        Ok(pid) => sio::stream(dir, logs, &url, pid, spec).await,
        Err(e) => Err(e),
    };
    redis.stop().await;
    let run = run?;
    let gap = run.gaps.summary();
    let limit = 2.0 * base.coalesce_ms as f64;
    let mut why = Vec::new();
    if gap.count == 0 || gap.p99_ms > limit {
        why.push(format!("gap p99 > {limit} ms"));
    }
    if !run.complete {
        why.push("producer fell behind".into());
    }
    for (k, v) in [("missing", run.missing), ("duplicates", run.duplicates), ("short_rooms", run.short_rooms)] {
        if v > 0 {
            why.push(format!("{k}={v}"));
        }
    }
    let wall_ms = run.peer.seconds * 1000.0;
    Ok(Step {
        run: 0,
        system: "socket.io",
        sessions: n,
        offered_tokens_per_sec: n as f64 * spec.rate,
        msgs_per_sec: run.peer.rate,
        gap_p50_ms: gap.p50_ms,
        gap_p99_ms: gap.p99_ms,
        pass: why.is_empty(),
        why,
        cores: run.peer.cpu_ms.iter().map(|(k, ms)| (k.clone(), ms / wall_ms.max(1.0))).collect(),
        correct: true,
    })
}

/// One search per system; returns every step and what each search found.
async fn search_once(
    args: &BenchArgs,
    base: &Params,
    mp: &MultiProgress,
    logs: &Path,
    steps: &mut Vec<Step>,
) -> anyhow::Result<(Found, Option<Found>)> {
    let (rungs, bisect) = ladder(args);
    let print = |mp: &MultiProgress, s: &Step| {
        let _ = mp.println(s.line());
    };
    let _ = mp.println(header());
    let mut search = Search::new(rungs.clone(), bisect);
    while let Some(n) = search.next() {
        let step = chatfleet_step(args, base, n, mp, &logs.join(format!("chatfleet-{n}"))).await?;
        print(mp, &step);
        search.record(n, step.pass);
        steps.push(step);
    }
    let ours = search.found();
    if !base.peer {
        return Ok((ours, None));
    }
    let dir = peers::dir()?;
    let mut search = Search::new(rungs, bisect);
    while let Some(n) = search.next() {
        let step = sio_step(base, n, &dir, &logs.join(format!("socketio-{n}"))).await?;
        print(mp, &step);
        search.record(n, step.pass);
        steps.push(step);
    }
    Ok((ours, Some(search.found())))
}

/// chatfleet's capacity ÷ Socket.IO's; none when either is unknown or zero (nothing passed).
fn ratio(ours: Option<usize>, theirs: Option<usize>) -> Option<f64> {
    match (ours?, theirs?) {
        (_, 0) | (0, _) => None,
        (a, b) => Some(a as f64 / b as f64),
    }
}

fn median(mut v: Vec<usize>) -> Option<usize> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Runs the capacity search `--runs` times and reports.
#[allow(clippy::print_stdout)] // the benchmark's table is its output
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let base = params(args);
    let limit = 2 * base.coalesce_ms;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let stem = format!("capacity-{}", report::timestamp(now));
    let logs = args.out.join("logs").join(&stem);
    let mp = MultiProgress::new();
    let mut runs = Vec::new();
    let mut steps = Vec::new();
    for run in 0..args.runs.max(1) {
        let _ = mp.println(format!("capacity: run {} of {}, delta gap p99 ≤ {limit} ms", run + 1, args.runs.max(1)));
        let first = steps.len();
        let found = search_once(args, &base, &mp, &logs.join(format!("run-{run}")), &mut steps).await?;
        for s in &mut steps[first..] {
            s.run = run + 1;
        }
        runs.push(found);
    }
    println!("\n== capacity: largest session count with delta gap p99 ≤ {limit} ms ({} run(s)) ==", runs.len());
    println!("{}", header());
    for s in &steps {
        println!("{}", s.line());
    }
    for (i, (ours, theirs)) in runs.iter().enumerate() {
        let theirs = theirs.map_or("not run (--no-peer)".to_string(), |t| t.label());
        println!("run {}: chatfleet {}; Socket.IO {theirs}", i + 1, ours.label());
    }
    let ours = median(runs.iter().map(|r| r.0.passed.unwrap_or(0)).collect());
    let theirs = median(runs.iter().filter_map(|r| r.1).map(|t| t.passed.unwrap_or(0)).collect());
    println!("capacity, chatfleet (median): {}", ours.map_or("-".into(), |n| n.to_string()));
    println!("capacity, Socket.IO (median): {}", theirs.map_or("-".into(), |n| n.to_string()));
    let ratio = ratio(ours, theirs);
    if let Some(r) = ratio {
        let verdict = if r >= 2.0 { "met" } else { "MISSED" };
        println!("chatfleet ÷ Socket.IO: {r:.2} ×   target ≥ 2 ×   {verdict}");
    }
    let json = serde_json::json!({
        "scenario": "capacity",
        "unix_time": now,
        "quick": args.quick,
        "gap_p99_limit_ms": limit,
        "params": format!("{base:?}"),
        "runs": runs.iter().map(|(o, t)| serde_json::json!({ "chatfleet": o, "socketio": t })).collect::<Vec<_>>(),
        "capacity_chatfleet": ours,
        "capacity_socketio": theirs,
        "ratio": ratio,
        "steps": steps,
    });
    let path = report::write_json(&args.out, &stem, &json)?;
    println!("\nwrote {}", path.display());
    let wrong: Vec<String> =
        steps.iter().filter(|s| !s.correct).map(|s| format!("{} sessions: {}", s.sessions, s.why.join(", "))).collect();
    if !wrong.is_empty() {
        bail!("chatfleet lost, doubled or garbled text at {} (see {})", wrong.join("; "), logs.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_needs_a_passing_count_on_both_sides_and_runs_take_the_median() {
        assert_eq!(ratio(Some(1000), Some(250)), Some(4.0));
        assert_eq!(ratio(Some(0), Some(250)), None);
        assert_eq!(ratio(Some(500), Some(0)), None);
        assert_eq!(ratio(Some(500), None), None);
        assert_eq!(median(vec![620, 500, 750]), Some(620));
        assert_eq!(median(Vec::new()), None);
    }
}
