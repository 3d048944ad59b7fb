//! Turning a load run into figures: the common ones (throughput, CPU per turn and per token,
//! latencies, server stages, functional checks) and each scenario's own, with its targets.

use std::collections::BTreeMap;
use std::path::Path;

use super::super::driver::LoadResult;
use super::super::fleet::Fleet;
use super::super::peers;
use super::super::procstat::Sample;
use super::super::report::{Outcome, ProcFigures};
use super::super::scrape;
use super::super::sio;
use super::super::{BenchArgs, Scenario};
use super::{name, Params};
use crate::metrics as m;

const MIB: f64 = 1024.0 * 1024.0;

fn counter(r: &LoadResult, k: &str) -> u64 {
    r.report.counters.get(k).copied().unwrap_or(0)
}

/// Steady-state rate: the mean over the run's full seconds, without the first and last one.
fn steady(r: &LoadResult, p: &Params, f: impl Fn(&super::super::stats::Second) -> u64) -> f64 {
    let secs = (p.run_ms / 1000).max(1);
    let (lo, hi) = if secs > 3 { (1, secs - 1) } else { (0, secs) };
    let sum: u64 = r.report.series.0.range(lo..hi).map(|(_, s)| f(s)).sum();
    sum as f64 / (hi - lo) as f64
}

fn cpu_us(r: &LoadResult, prefix: &str) -> f64 {
    r.after
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, a)| a.cpu_us.saturating_sub(r.before.get(k).map_or(a.cpu_us, |b| b.cpu_us)) as f64)
        .sum()
}

pub fn common(s: Scenario, p: &Params, r: &LoadResult) -> Outcome {
    let mut o = Outcome { scenario: name(s).into(), counters: r.report.counters.clone(), ..Default::default() };
    o.counters.insert("connected_at_go".into(), r.connected);
    for (k, h) in &r.report.hists {
        o.latencies.insert(k.clone(), h.summary());
    }
    let wall_us = r.wall.as_micros().max(1) as f64;
    for (k, a) in &r.after {
        let b = r.before.get(k).copied().unwrap_or(*a);
        let cpu = a.cpu_us.saturating_sub(b.cpu_us) as f64;
        let start = r.baseline.get(k).copied().unwrap_or(b);
        o.processes.insert(
            k.clone(),
            ProcFigures {
                cpu_ms: cpu / 1000.0,
                cores: cpu / wall_us,
                rss_start_mib: start.rss_bytes as f64 / MIB,
                rss_end_mib: a.rss_bytes as f64 / MIB,
            },
        );
    }
    o.series = r
        .report
        .series
        .0
        .iter()
        .map(|(sec, v)| {
            let (p50, p99) = if v.latency.count() > 0 {
                (v.latency.quantile_us(0.5) as f64 / 1e3, v.latency.quantile_us(0.99) as f64 / 1e3)
            } else {
                (0.0, 0.0)
            };
            (*sec, v.turns, v.frames, p50, p99)
        })
        .collect();
    o.rss_mib = r
        .timeline
        .seconds
        .iter()
        .map(|(t, procs)| (*t, procs.iter().map(|(k, v)| (k.clone(), v.rss_bytes as f64 / MIB)).collect()))
        .collect();
    let turns = counter(r, "turns_done").max(1) as f64;
    if !matches!(s, Scenario::Idle | Scenario::Storm) {
        o.fig("turns/s (steady state)", steady(r, p, |s| s.turns), "turns/s");
        for proc in ["redis", "gateway", "worker", "load"] {
            o.fig(&format!("CPU per turn: {proc}"), cpu_us(r, proc) / turns, "µs");
        }
        // Where the box's cores went: on 2 shared cores this, more than any one figure, says
        // what bounds a throughput.
        for proc in ["redis", "gateway", "worker", "load"] {
            o.fig(&format!("cores used: {proc}"), cpu_us(r, proc) / wall_us, "cores");
        }
    }
    let (cb, ca) = &r.redis_cmds;
    let mut cmds: Vec<(String, f64, f64)> = ca
        .iter()
        .map(|(k, (calls, us))| {
            let (c0, u0) = cb.get(k).copied().unwrap_or((0, 0));
            (k.clone(), us.saturating_sub(u0) as f64 / turns, calls.saturating_sub(c0) as f64 / turns)
        })
        .filter(|c| c.2 > 0.0)
        .collect();
    cmds.sort_by(|a, b| b.1.total_cmp(&a.1));
    if counter(r, "turns_done") > 0 {
        o.redis_commands = cmds;
    }
    // Server stages, from the histograms of every gateway and worker.
    let (gb, wb) = &r.pages_before;
    let (ga, wa) = &r.pages_after;
    let stage = |page_a: &str, page_b: &str, metric: &str| {
        scrape::histogram(page_a, metric).since(&scrape::histogram(page_b, metric)).stage()
    };
    if !ga.is_empty() {
        o.stages.insert("gateway ack (send → ack written)".into(), stage(ga, gb, m::GATEWAY_ACK_SECONDS));
        o.stages.insert("queue wait (enqueue → started)".into(), stage(wa, wb, m::TURN_QUEUE_WAIT_SECONDS));
        o.stages.insert("model ttft (started → first token)".into(), stage(wa, wb, m::TURN_MODEL_TTFT_SECONDS));
        o.stages.insert("e2e ttft (enqueue → first delta stored)".into(), stage(wa, wb, m::TURN_TTFT_SECONDS));
        o.stages.insert("turn in worker (started → finished)".into(), stage(wa, wb, m::TURN_DURATION_SECONDS));
        o.stages.insert("session load (start_turn, context)".into(), stage(wa, wb, m::TURN_SESSION_LOAD_SECONDS));
        o.stages.insert("fleet overhead (e2e ttft − model ttft)".into(), stage(wa, wb, m::TURN_FLEET_OVERHEAD_SECONDS));
        let slow = scrape::value(ga, m::GATEWAY_SLOW_CLOSES) - scrape::value(gb, m::GATEWAY_SLOW_CLOSES);
        o.counters.insert("slow_client_closes".into(), slow.max(0.0) as u64);
    }
    let chaos = s == Scenario::Chaos;
    for (k, must_be_zero) in [
        ("lost", true),
        ("duplicates", true),
        ("wrong_text", true),
        ("timeouts", true),
        ("turns_failed", true),
        ("unfinished", true),
        ("connect_failed", true),
        ("error_frames", true),
        // In chaos a turn whose end Redis lost runs again, and the next send meets it (`busy`,
        // with a retry hint): a clean refusal, reported below, not an error.
        ("busy", !chaos),
        ("disconnects", !chaos),
        ("refused_unavailable", !chaos),
    ] {
        if must_be_zero {
            o.check(k, counter(r, k), counter(r, k) == 0);
        }
    }
    if !matches!(s, Scenario::Idle | Scenario::Storm) {
        o.check("turns_done > 0", counter(r, "turns_done"), counter(r, "turns_done") > 0);
    }
    o
}

fn lat(o: &Outcome, name: &str) -> (f64, f64) {
    o.latencies.get(name).map_or((0.0, 0.0), |s| (s.p50_ms, s.p99_ms))
}

pub fn specific(s: Scenario, p: &Params, r: &LoadResult, o: &mut Outcome) {
    match s {
        Scenario::Dispatch => {}
        Scenario::ClaimLatency => {
            let (p50, p99) = lat(o, "turn_started");
            o.target("client send → turn_started p50", p50, "ms", "≤ 0.3 ms", p50 <= 0.3);
            o.target("client send → turn_started p99", p99, "ms", "≤ 1 ms", p99 <= 1.0);
            let (a50, a99) = lat(o, "ack");
            o.fig("client send → ack p50", a50, "ms");
            o.fig("client send → ack p99", a99, "ms");
            // Stamped by the Redis clock in µs; p50/p99 interpolate inside the histogram buckets
            // (0.1, 0.25, 0.5, 1 ms …), so they are coarse where the mean is exact.
            if let Some(st) = o.stages.get("queue wait (enqueue → started)").copied() {
                o.fig("server queue wait mean", st.mean_ms.unwrap_or(0.0), "ms");
                o.fig("server queue wait p50 (bucketed)", st.p50_ms.unwrap_or(0.0), "ms");
                o.fig("server queue wait p99 (bucketed)", st.p99_ms.unwrap_or(0.0), "ms");
            }
            o.fig("offered rate", steady(r, p, |s| s.latency.count()), "turns/s");
        }
        Scenario::TtftOverhead => {
            let (p50, p99) = lat(o, "first_delta");
            o.fig("client send → first delta p50 (model ttft 0)", p50, "ms");
            o.fig("client send → first delta p99 (model ttft 0)", p99, "ms");
        }
        Scenario::Stream | Scenario::Soak | Scenario::Chaos | Scenario::Capacity => {
            let (_, gap99) = lat(o, "gap");
            let rule = format!("≤ {} ms", 2 * p.coalesce_ms);
            o.target("delta gap p99", gap99, "ms", &rule, gap99 <= 2.0 * p.coalesce_ms as f64);
            let (_, lag99) = lat(o, "lag");
            if s == Scenario::Chaos {
                // Taken-over turns restart from scratch, so they end late by design.
                o.fig("turn lag behind the model p99", lag99, "ms");
            } else {
                o.target("turn lag behind the model p99", lag99, "ms", "≤ 1000 ms", lag99 <= 1000.0);
            }
            o.fig("merged frames (client was behind)", counter(r, "merged_frames") as f64, "frames");
            o.fig(
                "slow-client closes (4008)",
                o.counters.get("slow_client_closes").copied().unwrap_or(0) as f64,
                "closes",
            );
            let tokens = counter(r, "tokens").max(1) as f64;
            let frames = counter(r, "deltas").max(1) as f64;
            o.fig("delivered tokens/s (steady state)", steady(r, p, |s| s.turns) * p.max_tokens as f64, "tokens/s");
            o.fig("delivered delta frames/s (steady state)", steady(r, p, |s| s.frames), "frames/s");
            for proc in ["redis", "gateway", "worker"] {
                o.fig(&format!("CPU per delivered token: {proc}"), cpu_us(r, proc) / tokens, "µs");
            }
            o.fig("CPU per delivered delta: gateway+redis", (cpu_us(r, "gateway") + cpu_us(r, "redis")) / frames, "µs");
            if s == Scenario::Soak {
                soak(r, p, o);
            }
            if s == Scenario::Chaos {
                chaos(r, o);
            }
        }
        Scenario::Idle => idle(r, o),
        Scenario::Storm => storm(r, o),
        Scenario::LoadChild => {}
    }
}

fn rss_of(samples: &BTreeMap<String, Sample>, prefix: &str) -> f64 {
    samples.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, s)| s.rss_bytes as f64).sum()
}

fn idle(r: &LoadResult, o: &mut Outcome) {
    let conns = counter(r, "connected").max(1) as f64;
    // The hold's samples (all sockets open), not the end, when sockets are closing.
    let holding: Vec<&BTreeMap<String, Sample>> = r.timeline.seconds.iter().map(|(_, s)| s).collect();
    let at = holding.get(holding.len().saturating_sub(2)).copied().unwrap_or(&r.before);
    for (proc, target) in [("gateway", Some(4096.0)), ("redis", None), ("load", None)] {
        let per = (rss_of(at, proc) - rss_of(&r.baseline, proc)).max(0.0) / conns;
        let name = format!("RSS per connection: {proc}");
        match target {
            Some(t) => o.target(&name, per, "bytes", "≤ 4096 bytes", per <= t),
            None => o.fig(&name, per, "bytes"),
        }
    }
    o.fig("connections held", conns, "sockets");
    let (c50, c99) = lat(o, "connect");
    o.fig("connect + hello → welcome p50", c50, "ms");
    o.fig("connect + hello → welcome p99", c99, "ms");
}

fn storm(r: &LoadResult, o: &mut Outcome) {
    let (c50, c99) = lat(o, "connect");
    o.fig("connections", o.counters.get("connected").copied().unwrap_or(0) as f64, "sockets");
    o.fig("connect + hello → welcome p50", c50, "ms");
    o.target("connect + hello → welcome p99", c99, "ms", "≤ 1000 ms", c99 <= 1000.0);
    let refused = o.counters.get("connect_retries").copied().unwrap_or(0);
    o.fig("connects refused with a retry hint (then retried)", refused as f64, "refusals");
    // The storm is the connect phase, which ends before `go`: the process table (from `go`)
    // does not show it. Its CPU is `before` minus `baseline` (load children: all of `before`).
    for proc in ["gateway", "redis", "worker", "load"] {
        let at = |m: &BTreeMap<String, Sample>| -> f64 {
            m.iter().filter(|(k, _)| k.starts_with(proc)).map(|(_, s)| s.cpu_us as f64).sum()
        };
        let ms = (at(&r.before) - at(&r.baseline)) / 1000.0;
        o.fig(&format!("CPU during the connect phase: {proc}"), ms, "ms");
    }
}

fn soak(r: &LoadResult, p: &Params, o: &mut Outcome) {
    let secs = &r.timeline.seconds;
    let run_s = p.run_ms / 1000;
    // Warm-up: the first fifth of the run. End: the last second before the stop.
    let warm = secs.iter().find(|(t, _)| *t >= run_s / 5).map(|(_, s)| s);
    let end = secs.iter().rev().find(|(t, _)| *t < run_s).map(|(_, s)| s);
    if let (Some(w), Some(e)) = (warm, end) {
        for proc in ["gateway", "worker", "redis"] {
            let growth = (rss_of(e, proc) / rss_of(w, proc).max(1.0) - 1.0) * 100.0;
            let name = format!("RSS growth after warm-up: {proc}");
            if proc == "redis" {
                // Redis holds the session logs and histories the soak keeps writing: data, not a leak.
                o.fig(&name, growth, "%");
            } else {
                o.target(&name, growth, "%", "< 5 %", growth < 5.0);
            }
        }
    }
}

fn chaos(r: &LoadResult, o: &mut Outcome) {
    // Every fault (a kill, a restart, a Redis fault) can cause takeovers.
    let kills: Vec<u64> = r.timeline.actions.iter().map(|(t, _)| *t).collect();
    let mut takeovers: Vec<f64> = r
        .report
        .resets_unix_us
        .iter()
        .filter_map(|&t| kills.iter().filter(|&&k| k <= t).max().map(|k| (t - k) as f64 / 1000.0))
        .collect();
    takeovers.sort_by(|a, b| a.total_cmp(b));
    let q = |f: f64| takeovers.get(((takeovers.len() as f64 - 1.0) * f).round() as usize).copied().unwrap_or(0.0);
    o.fig("turns taken over (reset events)", takeovers.len() as f64, "turns");
    o.fig("takeover: fault → reset p50", q(0.5), "ms");
    o.fig("takeover: fault → reset max", q(1.0), "ms");
    let rc = o.latencies.get("reconnect").copied().unwrap_or_default();
    o.fig("reconnects", counter(r, "reconnects") as f64, "sockets");
    o.fig("reconnect: drop → welcome p50", rc.p50_ms, "ms");
    o.fig("reconnect: drop → welcome p99", rc.p99_ms, "ms");
    o.fig("resumes answered with a snapshot", counter(r, "resyncs") as f64, "resumes");
    o.fig("sends refused while Redis was unavailable (retried)", counter(r, "refused_unavailable") as f64, "sends");
    o.fig("sends refused busy (a turn running again, retried)", counter(r, "busy") as f64, "sends");
    let lost = counter(r, "lost") + counter(r, "duplicates") + counter(r, "wrong_text");
    o.target("lost + duplicated + wrong events", lost as f64, "events", "≤ 0 events", lost == 0);
}

/// Runs the scenario's peer on the same Redis and box, right after chatfleet's run.
pub async fn peer(
    args: &BenchArgs,
    p: &Params,
    f: &Fleet,
    r: &LoadResult,
    o: &mut Outcome,
    logs: &Path,
) -> anyhow::Result<()> {
    let (Some(&redis_pid), false) = (f.redis_pids.first(), f.redis.is_cluster()) else {
        anyhow::bail!("the peers run on one standalone Redis only");
    };
    let dir = peers::dir()?;
    let url = f.redis.url();
    match args.scenario {
        Scenario::Dispatch => {
            let jobs = if args.quick { 5_000 } else { 30_000 };
            let b = peers::bullmq(&dir, logs, &url, redis_pid, jobs, p.sessions).await?;
            let ours = o.value("turns/s (steady state)").unwrap_or(0.0);
            o.fig("BullMQ jobs/s", b.rate, "jobs/s");
            o.fig("BullMQ CPU per job: redis", b.cpu("redis") * 1000.0 / jobs as f64, "µs");
            o.fig("BullMQ CPU per job: node", (b.cpu("bullmq")) * 1000.0 / jobs as f64, "µs");
            o.target("chatfleet turns/s ÷ BullMQ jobs/s", ours / b.rate.max(1e-9), "×", "≥ 3 ×", ours >= 3.0 * b.rate);
            let ours_redis = o.value("CPU per turn: redis").unwrap_or(0.0);
            o.fig(
                "Redis CPU per turn ÷ BullMQ's per job",
                ours_redis / (b.cpu("redis") * 1000.0 / jobs as f64).max(1e-9),
                "×",
            );
        }
        Scenario::Stream => {
            // The same streams, at the delta rate chatfleet actually delivered per stream.
            let turn_secs = counter(r, "turns_done") as f64 * (p.max_tokens as f64 / p.tokens_per_sec.max(1) as f64);
            let rate = counter(r, "deltas") as f64 / turn_secs.max(1.0);
            let secs = (p.run_ms / 1000).clamp(5, 30);
            let spec = sio::SioSpec { rooms: p.sessions, rate, seconds: secs, producers: 1 };
            let run = sio::stream(&dir, logs, &url, redis_pid, spec).await?;
            if !run.delivered_all() {
                o.notes.push(format!(
                    "Socket.IO: {} of {} messages delivered ({} per room), {} missing, {} doubled, producer kept pace: {}",
                    run.peer.count, run.emitted, run.per_room, run.missing, run.duplicates, run.complete
                ));
            }
            let gaps = run.gaps.summary();
            let s = run.peer;
            let per_msg = (s.cpu("sio-gateway") + s.cpu("redis")) * 1000.0 / s.count.max(1) as f64;
            o.fig("Socket.IO delivered messages/s", s.rate, "msgs/s");
            o.fig("Socket.IO message gap p50", gaps.p50_ms, "ms");
            o.fig("Socket.IO message gap p99", gaps.p99_ms, "ms");
            o.fig("Socket.IO CPU per delivered message: gateway+redis", per_msg, "µs");
            o.fig(
                "Socket.IO CPU per delivered message: producer",
                s.cpu("sio-producer") * 1000.0 / s.count.max(1) as f64,
                "µs",
            );
            let ours = o.value("CPU per delivered delta: gateway+redis").unwrap_or(0.0);
            let ratio = ours / per_msg.max(1e-9);
            o.target("chatfleet ÷ Socket.IO CPU per delivered message", ratio, "×", "≤ 0.2 ×", ratio <= 0.2);
        }
        Scenario::Storm => {
            let s = peers::socketio_storm(&dir, logs, &url, p.sessions, p.clients).await?;
            o.fig("Socket.IO connect + join → connected p50", s.p50_ms, "ms");
            o.fig("Socket.IO connect + join → connected p99", s.p99_ms, "ms");
            o.fig("Socket.IO sockets connected", s.connected as f64, "sockets");
        }
        _ => {}
    }
    Ok(())
}
