//! Running a scenario: start the fleet (or use `--url`), drive the load, judge the figures,
//! run the peer side by side, repeat for `--runs`, and write the table, JSON and plots.

mod capacity;
mod judge;
mod params;
mod search;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::bail;
use indicatif::MultiProgress;

use super::driver::{self, LoadResult};
use super::fleet::{Fleet, FleetSpec};
use super::plan::Plan;
use super::report::{self, Outcome};
use super::stats::Hist;
use super::{plot, BenchArgs, Scenario};
pub use params::{params, Params};

/// Sockets per source address, below the ~28k ephemeral ports each (address, target) pair has.
const SOCKETS_PER_SOURCE: usize = 20_000;

pub fn name(s: Scenario) -> &'static str {
    match s {
        Scenario::Dispatch => "dispatch",
        Scenario::ClaimLatency => "claim-latency",
        Scenario::TtftOverhead => "ttft-overhead",
        Scenario::Stream => "stream",
        Scenario::Idle => "idle",
        Scenario::Storm => "storm",
        Scenario::Soak => "soak",
        Scenario::Chaos => "chaos",
        Scenario::Capacity => "capacity",
        Scenario::LoadChild => "load-child",
    }
}

/// Runs the scenario `--runs` times and reports; fails only on functional errors.
#[allow(clippy::print_stdout)] // where the results were written
pub async fn run_all(args: &BenchArgs) -> anyhow::Result<()> {
    if args.scenario == Scenario::Capacity {
        return capacity::run(args).await;
    }
    let p = params(args);
    let scenario = name(args.scenario);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let stem = format!("{scenario}-{}", report::timestamp(now));
    let logs = args.out.join("logs").join(&stem);
    std::fs::create_dir_all(&logs)?;
    if !p.actions.is_empty() && !args.url.is_empty() {
        bail!("{scenario} kills and restarts processes, so it needs the system it starts itself (no --url)");
    }
    let mp = MultiProgress::new();
    let mut outcomes = Vec::new();
    let mut last = None;
    for run in 0..args.runs.max(1) {
        if args.runs > 1 {
            let _ = mp.println(format!("{scenario}: run {} of {}", run + 1, args.runs));
        }
        let (o, r) = run_once(args, &p, &mp, &logs).await?;
        outcomes.push(o);
        last = Some(r);
    }
    let figures = report::medians(&outcomes);
    report::print_table(scenario, &outcomes, &figures);
    let json = serde_json::json!({
        "scenario": scenario,
        "unix_time": now,
        "quick": args.quick,
        "redis": match p.cluster_primaries {
            0 => "standalone".to_string(),
            n => format!("cluster of {n} primaries"),
        },
        "params": format!("{p:?}"),
        "medians": figures,
        "runs": outcomes,
    });
    let path = report::write_json(&args.out, &stem, &json)?;
    println!("\nwrote {}", path.display());
    if let (Some(r), Some(o)) = (last, outcomes.last()) {
        plots(&args.out, &stem, scenario, &p, &r, o)?;
    }
    if !outcomes.iter().all(Outcome::functional_ok) {
        bail!("functional checks failed (see the table above and {})", logs.display());
    }
    Ok(())
}

async fn run_once(
    args: &BenchArgs,
    p: &Params,
    mp: &MultiProgress,
    logs: &Path,
) -> anyhow::Result<(Outcome, LoadResult)> {
    let spec = FleetSpec {
        gateways: p.gateways,
        workers: p.workers,
        ttft_ms: p.ttft_ms,
        tokens_per_sec: p.tokens_per_sec,
        max_tokens: p.max_tokens,
        coalesce_ms: p.coalesce_ms,
        max_concurrent_turns: p.max_concurrent_turns,
        cluster_primaries: p.cluster_primaries,
        cluster_replicas: p.cluster_replicas,
        cluster_node_timeout_ms: p.cluster_node_timeout_ms,
        extra_env: p.extra_env.clone(),
    };
    let mut fleet = if args.url.is_empty() { Some(Fleet::start(&spec, logs.to_path_buf()).await?) } else { None };
    let targets = fleet.as_ref().map_or_else(|| args.url.clone(), Fleet::gateway_addrs);
    let n_sources = p.sessions.div_ceil(SOCKETS_PER_SOURCE).max(1);
    let sources: Vec<IpAddr> = (0..n_sources).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8))).collect();
    let prefix = format!("s{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let per = p.sessions.div_ceil(p.clients);
    let plans: Vec<Plan> = (0..p.clients)
        .map(|c| {
            let first = c * per;
            let count = per.min(p.sessions.saturating_sub(first));
            let mode = match p.mode {
                super::plan::Mode::Paced { per_sec } => {
                    super::plan::Mode::Paced { per_sec: per_sec / p.clients as f64 }
                }
                m => m,
            };
            Plan {
                child: c,
                targets: targets.clone(),
                sources: sources.clone(),
                session_prefix: prefix.clone(),
                first,
                count,
                mode,
                connect_per_sec: p.connect_per_sec,
                run_ms: p.run_ms,
                drain_ms: p.drain_ms,
                max_turns: 0,
                max_tokens: p.max_tokens,
                tokens_per_sec: p.tokens_per_sec,
                series_metric: p.series_metric.to_string(),
                turn_timeout_ms: 60_000 + p.max_tokens as u64 * 1000 / p.tokens_per_sec.max(1),
            }
        })
        .filter(|pl| pl.count > 0)
        .collect();
    let result = driver::run(fleet.as_mut(), plans, p.actions.clone(), mp, logs).await;
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            if let Some(f) = fleet {
                f.stop().await;
            }
            return Err(e);
        }
    };
    let mut outcome = judge::common(args.scenario, p, &result);
    judge::specific(args.scenario, p, &result, &mut outcome);
    if p.peer {
        if let Some(f) = fleet.as_ref() {
            // A peer that did not run is a failed check, not a silent gap in the comparison.
            let ran = judge::peer(args, p, f, &result, &mut outcome, logs).await;
            outcome.check("peer_ran", u64::from(ran.is_ok()), ran.is_ok());
            if let Err(e) = ran {
                outcome.notes.push(format!("peer run failed: {e:#}"));
            }
        }
    }
    if let Some(f) = fleet {
        f.stop().await;
    }
    Ok((outcome, result))
}

#[allow(clippy::print_stdout)] // where the plots were written
fn plots(dir: &Path, stem: &str, scenario: &str, p: &Params, r: &LoadResult, o: &Outcome) -> anyhow::Result<()> {
    let names = ["ack", "turn_started", "first_delta", "gap", "turn", "reconnect", "connect", "lag"];
    let hists: Vec<(&str, &Hist)> = names.iter().filter_map(|n| r.report.hists.get(*n).map(|h| (*n, h))).collect();
    let cdf = dir.join(format!("{stem}-cdf.svg"));
    plot::cdf(&cdf, &format!("chatfleet bench {scenario}: client-observed latency CDF"), &hists)?;
    let marks: Vec<(f64, String)> = r
        .timeline
        .actions
        .iter()
        .map(|(us, what)| ((*us / 1000).saturating_sub(r.t0_unix_ms) as f64 / 1000.0, what.clone()))
        .collect();
    let tl = dir.join(format!("{stem}-time.svg"));
    plot::timeline(
        &tl,
        &format!("chatfleet bench {scenario}: throughput and latency over time"),
        p.series_metric,
        &o.series,
        &marks,
    )?;
    println!("plots: {} {}", cdf.display(), tl.display());
    Ok(())
}
