//! The load child (`chatfleet bench load-child`, hidden): runs a share of a scenario's sessions
//! over real sockets, as told by a [`Plan`] on stdin, and reports on stdout. Several children
//! spread the sockets over processes (a process may hold only so many files) and cores.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::plan::{ChildLine, ChildReport, Mode, ParentLine, Plan};
use super::session;
use super::stats::{Hists, Series};

/// Interval of progress lines.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Longest list of reset times kept.
pub const MAX_RESETS: usize = 100_000;

/// Counter names, in report order.
pub const COUNTERS: &[&str] = &[
    "connected",
    "connect_failed",
    "connect_retries",
    "turns_sent",
    "turns_done",
    "turns_failed",
    "wrong_text",
    "lost",
    "duplicates",
    "merged_frames",
    "frames",
    "deltas",
    "tokens",
    "disconnects",
    "reconnects",
    "resyncs",
    "resets",
    "timeouts",
    "unfinished",
    "error_frames",
    "busy",
];

/// State shared by a child's session tasks.
pub struct Ctx {
    pub plan: Plan,
    counters: BTreeMap<&'static str, AtomicU64>,
    pub measured: Mutex<Measured>,
    /// Fired by `go`.
    pub go: CancellationToken,
    /// Fired when sessions must stop starting turns.
    pub stop_new: CancellationToken,
    /// Fired when everything must end.
    pub hard: CancellationToken,
    /// Turn tickets in paced mode.
    pub pace: Semaphore,
    pub t0_unix_ms: AtomicU64,
}

/// Histograms and series, behind one lock (held for a few hundred ns per frame).
#[derive(Default)]
pub struct Measured {
    pub hists: Hists,
    pub series: Series,
    pub resets_unix_us: Vec<u64>,
}

impl Ctx {
    pub fn add(&self, name: &'static str, n: u64) {
        if let Some(c) = self.counters.get(name) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
    pub fn get(&self, name: &str) -> u64 {
        self.counters.get(name).map_or(0, |c| c.load(Ordering::Relaxed))
    }
    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counters.iter().map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed))).collect()
    }
    /// Seconds since the run's origin, for the series.
    pub fn second(&self) -> u64 {
        (unix_us() / 1000).saturating_sub(self.t0_unix_ms.load(Ordering::Relaxed)) / 1000
    }
    /// Takes a turn ticket: true when this session may start a turn under the child's cap.
    pub fn take_turn(&self) -> bool {
        let sent = self.counters["turns_sent"].fetch_add(1, Ordering::Relaxed);
        if self.plan.max_turns > 0 && sent >= self.plan.max_turns {
            self.counters["turns_sent"].fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

pub fn unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn emit(line: &ChildLine) {
    use std::io::Write;
    let text = serde_json::to_string(line).expect("report types serialize");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Runs a load child until its plan is done; reads the plan and commands from stdin.
pub async fn run() -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let first = stdin.next_line().await?.context("no plan on stdin")?;
    let plan: Plan = serde_json::from_str(&first).context("bad plan")?;
    let ctx = Arc::new(Ctx {
        counters: COUNTERS.iter().map(|c| (*c, AtomicU64::new(0))).collect(),
        measured: Mutex::new(Measured::default()),
        go: CancellationToken::new(),
        stop_new: CancellationToken::new(),
        hard: CancellationToken::new(),
        pace: Semaphore::new(0),
        t0_unix_ms: AtomicU64::new(unix_us() / 1000),
        plan,
    });
    let tracker = TaskTracker::new();
    let connected = Arc::new(Semaphore::new(0));
    let start = tokio::time::Instant::now();
    let rate = ctx.plan.connect_per_sec.max(1);
    for i in 0..ctx.plan.count {
        let at = start + Duration::from_micros(i as u64 * 1_000_000 / rate);
        let (ctx, connected) = (ctx.clone(), connected.clone());
        tracker.spawn(async move {
            tokio::time::sleep_until(at).await;
            session::run(ctx, i, connected).await;
        });
    }
    tracker.close();
    let progress = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                emit(&ChildLine::Progress(ctx.snapshot()));
            }
        })
    };
    // Every session signals once, connected or not.
    let _ = connected.acquire_many(ctx.plan.count as u32).await;
    emit(&ChildLine::Ready { connected: ctx.get("connected"), failed: ctx.get("connect_failed") });
    // Commands: go, then an optional early stop. A closed stdin (parent gone) ends the run.
    loop {
        let line = tokio::select! {
            l = stdin.next_line() => l.ok().flatten(),
            _ = tracker.wait() => break,
        };
        match line.as_deref().map(serde_json::from_str::<ParentLine>) {
            Some(Ok(ParentLine::Go { t0_unix_ms })) => {
                ctx.t0_unix_ms.store(t0_unix_ms, Ordering::Relaxed);
                start_run(&ctx);
            }
            Some(Ok(ParentLine::Stop)) => ctx.stop_new.cancel(),
            Some(Err(e)) => tracing::warn!(error = %e, "bad command from the parent"),
            None => {
                ctx.stop_new.cancel();
                ctx.hard.cancel();
                break;
            }
        }
    }
    tracker.wait().await;
    progress.abort();
    let m = std::mem::take(&mut *ctx.measured.lock().expect("no panics while locked"));
    let report =
        ChildReport { counters: ctx.snapshot(), hists: m.hists, series: m.series, resets_unix_us: m.resets_unix_us };
    emit(&ChildLine::Report(Box::new(report)));
    Ok(())
}

/// `go`: releases the sessions, starts the pacer, and arms the stop and hard deadlines.
fn start_run(ctx: &Arc<Ctx>) {
    ctx.go.cancel();
    let c = ctx.clone();
    tokio::spawn(async move {
        let run = Duration::from_millis(c.plan.run_ms);
        let began = tokio::time::Instant::now();
        if let Mode::Paced { per_sec } = c.plan.mode {
            // Tickets accrue at the rate whether or not sessions are free: an open loop, so a
            // slow system builds a backlog instead of slowing the offered load.
            let mut issued = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while began.elapsed() < run && !c.stop_new.is_cancelled() {
                tick.tick().await;
                let due = (began.elapsed().as_secs_f64() * per_sec) as u64;
                if due > issued {
                    c.pace.add_permits((due - issued) as usize);
                    issued = due;
                }
            }
        } else {
            tokio::select! { _ = tokio::time::sleep(run) => {}, _ = c.stop_new.cancelled() => {} }
        }
        c.stop_new.cancel();
        tokio::time::sleep(Duration::from_millis(c.plan.drain_ms)).await;
        c.hard.cancel();
    });
}
