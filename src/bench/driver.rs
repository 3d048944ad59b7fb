//! The parent's side of a load run: spawns load children (`chatfleet bench load-child`), hands
//! each its plan, shows progress, runs timed actions (kills, restarts), samples the CPU and RSS
//! of every process each second, and merges the children's reports.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::child::unix_us;
use super::fleet::{self, CmdStats, Fleet, Role};
use super::plan::{ChildLine, ChildReport, ParentLine, Plan};
use super::procstat::{self, Sample};
use super::stats::merge_hists;

/// Time children get to connect all their sessions, beyond what their connect rate needs.
const CONNECT_SLACK: Duration = Duration::from_secs(60);
/// Time children get to report after their plan's hard deadline.
const REPORT_SLACK: Duration = Duration::from_secs(30);

/// Something done to the fleet at a time after `go`.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// SIGKILL worker `i`, then start a new one in its place.
    KillWorker(usize),
    /// SIGTERM gateway `i` (it drains: clients are told to reconnect), then restart it.
    RestartGateway(usize),
    /// A fault of Redis itself (`chatfleet bench chaos --fault`).
    Redis(super::faults::RedisFault),
}

/// Per-second readings of every process (name → samples), and what was done when.
#[derive(Debug, Default)]
pub struct Timeline {
    pub seconds: Vec<(u64, BTreeMap<String, Sample>)>,
    /// (unix µs, action description) of each executed action.
    pub actions: Vec<(u64, String)>,
}

/// What a run produced.
pub struct LoadResult {
    pub report: ChildReport,
    /// CPU and RSS of each server process before any load child connected.
    pub baseline: BTreeMap<String, Sample>,
    pub connected: u64,
    /// CPU and RSS of each process at `go` and at the end.
    pub before: BTreeMap<String, Sample>,
    pub after: BTreeMap<String, Sample>,
    /// Server metrics pages (gateway, worker) at `go` and at the end.
    pub pages_before: (String, String),
    pub pages_after: (String, String),
    /// Redis `INFO commandstats` at `go` and at the end: command → (calls, µs), summed over the
    /// nodes of a cluster.
    pub redis_cmds: (CmdStats, CmdStats),
    pub timeline: Timeline,
    pub t0_unix_ms: u64,
    pub wall: Duration,
}

struct LoadChild {
    proc: Child,
    stdin: ChildStdin,
}

fn spawn_child(plan: &Plan, logs: &Path, tx: mpsc::Sender<(usize, ChildLine)>) -> anyhow::Result<LoadChild> {
    let exe = std::env::current_exe()?;
    let log = std::fs::File::create(logs.join(format!("load-{}.log", plan.child)))?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "load-child"])
        .env("CHATFLEET__TELEMETRY__FILTER", "warn")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true);
    fleet::die_with_bench(&mut cmd);
    let mut proc = cmd.spawn().context("cannot spawn a load child")?;
    let stdout = proc.stdout.take().context("stdout is piped")?;
    let stdin = proc.stdin.take().context("stdin is piped")?;
    let id = plan.child;
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if let Ok(line) = serde_json::from_str::<ChildLine>(&l) {
                if tx.send((id, line)).await.is_err() {
                    break;
                }
            }
        }
    });
    Ok(LoadChild { proc, stdin })
}

async fn tell(c: &mut LoadChild, line: &ParentLine) -> anyhow::Result<()> {
    let mut text = serde_json::to_string(line)?;
    text.push('\n');
    c.stdin.write_all(text.as_bytes()).await?;
    c.stdin.flush().await?;
    Ok(())
}

fn bar(mp: &MultiProgress, len: u64, template: &str) -> ProgressBar {
    let pb = mp.add(ProgressBar::new(len));
    pb.set_style(ProgressStyle::with_template(template).expect("static template").progress_chars("=> "));
    pb
}

fn sample_all(fleet: Option<&Fleet>, children: &[LoadChild]) -> BTreeMap<String, Sample> {
    let mut out: BTreeMap<String, Sample> = BTreeMap::new();
    if let Some(f) = fleet {
        out.extend(f.sample().into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    }
    for (i, c) in children.iter().enumerate() {
        if let Some(s) = c.proc.id().and_then(procstat::sample) {
            out.insert(format!("load-{i}"), s);
        }
    }
    out
}

async fn pages(fleet: Option<&Fleet>) -> (String, String) {
    match fleet {
        Some(f) => (f.scrape(Role::Gateway).await, f.scrape(Role::Worker).await),
        None => Default::default(),
    }
}

async fn commandstats(fleet: Option<&Fleet>) -> CmdStats {
    match fleet {
        Some(f) => f.commandstats().await,
        None => CmdStats::new(),
    }
}

/// Runs `plans` against the fleet (or the `--url` targets they name) with `actions` at their
/// times after `go`. `on_ready` runs once every session has connected, before `go`.
pub async fn run(
    mut fleet: Option<&mut Fleet>,
    plans: Vec<Plan>,
    actions: Vec<(Duration, Action)>,
    mp: &MultiProgress,
    logs: &Path,
) -> anyhow::Result<LoadResult> {
    let total: usize = plans.iter().map(|p| p.count).sum();
    let run_ms = plans.iter().map(|p| p.run_ms + p.drain_ms).max().unwrap_or(0);
    let connect_time = plans.iter().map(|p| p.count as u64 * 1000 / p.connect_per_sec.max(1)).max().unwrap_or(0);
    let baseline = sample_all(fleet.as_deref(), &[]);
    let (tx, mut rx) = mpsc::channel(1024);
    let mut children = Vec::new();
    for p in &plans {
        let mut c = spawn_child(p, logs, tx.clone())?;
        tell_plan(&mut c, p).await?;
        children.push(c);
    }
    drop(tx);
    // 1. connect
    let pb = bar(mp, total as u64, "connect {bar:30} {pos}/{len} sockets {msg}");
    let mut ready = 0;
    let (mut connected, mut failed) = (0, 0);
    let mut progress: BTreeMap<usize, BTreeMap<String, u64>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_millis(connect_time) + CONNECT_SLACK;
    while ready < children.len() {
        let Ok(Some((id, line))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            bail!("load children did not connect in time (see {})", logs.display());
        };
        match line {
            ChildLine::Ready { connected: c, failed: f } => {
                ready += 1;
                connected += c;
                failed += f;
            }
            ChildLine::Progress(p) => {
                progress.insert(id, p);
                let sum: u64 = progress.values().map(|p| p.get("connected").copied().unwrap_or(0)).sum();
                pb.set_position(sum);
            }
            ChildLine::Report(_) => bail!("load child {id} ended before it was ready"),
        }
    }
    pb.finish_with_message(format!("({failed} failed)"));
    // 2. go
    let before = sample_all(fleet.as_deref(), &children);
    let pages_before = pages(fleet.as_deref()).await;
    let cmds_before = commandstats(fleet.as_deref()).await;
    let t0_unix_ms = unix_us() / 1000;
    for c in &mut children {
        tell(c, &ParentLine::Go { t0_unix_ms }).await?;
    }
    let go = Instant::now();
    let pb = bar(mp, run_ms / 1000, "run     {bar:30} {pos}/{len} s {msg}");
    let mut reports = Vec::new();
    let mut timeline = Timeline::default();
    let mut pending: Vec<(Duration, Action)> = actions;
    pending.sort_by_key(|a| a.0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let hard = go + Duration::from_millis(run_ms) + REPORT_SLACK;
    let mut last_turns = 0;
    let mut retired: BTreeMap<String, u64> = BTreeMap::new();
    while reports.len() < children.len() {
        tokio::select! {
            m = rx.recv() => match m {
                Some((id, ChildLine::Progress(p))) => { progress.insert(id, p); }
                Some((_, ChildLine::Report(r))) => reports.push(*r),
                Some(_) => {}
                None => bail!("a load child died (see {})", logs.display()),
            },
            _ = tick.tick() => {
                let sum = |k: &str| progress.values().map(|p| p.get(k).copied().unwrap_or(0)).sum::<u64>();
                let turns = sum("turns_done");
                let errs = sum("lost") + sum("duplicates") + sum("wrong_text") + sum("timeouts") + sum("turns_failed");
                pb.set_position(go.elapsed().as_secs());
                pb.set_message(format!(
                    "turns {turns} ({}/s) frames {} conns {} errors {errs}",
                    turns - last_turns, sum("frames"), sum("connected") ,
                ));
                last_turns = turns;
                timeline.seconds.push((go.elapsed().as_secs(), sample_all(fleet.as_deref(), &children)));
                while pending.first().is_some_and(|a| a.0 <= go.elapsed()) {
                    let (_, action) = pending.remove(0);
                    if let Some(f) = fleet.as_deref_mut() {
                        let (at, what, name, last) = act(f, action).await?;
                        // The replacement starts from zero CPU: carry the old one's time over.
                        *retired.entry(name).or_default() += last.cpu_us;
                        timeline.actions.push((at, what));
                    }
                }
                if Instant::now() > hard {
                    bail!("load children did not report in time (see {})", logs.display());
                }
            }
        }
    }
    pb.finish();
    let wall = go.elapsed();
    let mut after = sample_all(fleet.as_deref(), &children);
    for (name, cpu) in retired {
        if let Some(s) = after.get_mut(&name) {
            s.cpu_us += cpu;
        }
    }
    let pages_after = pages(fleet.as_deref()).await;
    let redis_cmds = (cmds_before, commandstats(fleet.as_deref()).await);
    for mut c in children {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.proc.wait()).await;
    }
    let mut report = ChildReport::default();
    for r in reports {
        for (k, v) in r.counters {
            *report.counters.entry(k).or_default() += v;
        }
        merge_hists(&mut report.hists, &r.hists);
        report.series.merge(&r.series);
        report.resets_unix_us.extend(r.resets_unix_us);
    }
    Ok(LoadResult {
        report,
        baseline,
        connected,
        before,
        after,
        pages_before,
        pages_after,
        redis_cmds,
        timeline,
        t0_unix_ms,
        wall,
    })
}

async fn tell_plan(c: &mut LoadChild, p: &Plan) -> anyhow::Result<()> {
    let mut text = serde_json::to_string(p)?;
    text.push('\n');
    c.stdin.write_all(text.as_bytes()).await?;
    Ok(())
}

/// Executes one action. Returns when it happened (unix µs, at the signal), what it was, the
/// process name, and that process's last reading before it went away.
async fn act(fleet: &mut Fleet, action: Action) -> anyhow::Result<(u64, String, String, Sample)> {
    let (role, i) = match action {
        Action::KillWorker(i) => (Role::Worker, i % fleet.workers.len()),
        Action::RestartGateway(i) => (Role::Gateway, i % fleet.gateways.len()),
        Action::Redis(fault) => return super::faults::act(fleet, fault).await,
    };
    let procs = if role == Role::Worker { &mut fleet.workers } else { &mut fleet.gateways };
    let name = format!("{}-{i}", if role == Role::Worker { "worker" } else { "gateway" });
    let last = procstat::sample(procs[i].pid).unwrap_or_default();
    let at = unix_us();
    let listen = procs[i].listen;
    let what = if role == Role::Worker {
        procs[i].kill().await;
        format!("kill {name}")
    } else {
        procs[i].terminate().await;
        format!("restart {name}")
    };
    let p = fleet.spawn(role, i, listen).await?;
    let procs = if role == Role::Worker { &mut fleet.workers } else { &mut fleet.gateways };
    procs[i] = p;
    Ok((at, what, name, last))
}
