//! Peer systems run side by side on the same Redis and box, through the node scripts in
//! `bench/` (installed with `npm ci --prefix bench` when missing): BullMQ for `dispatch`, and
//! Socket.IO with the Redis Streams adapter for `storm` (here) and for `stream` and `capacity`
//! (`super::sio`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::fleet;
use super::procstat::{self, Sample};

/// Longest any peer step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the peer scripts live: `bench/` under the working directory (the repository root).
#[allow(clippy::print_stderr)] // tells the person at the terminal why the run pauses
pub fn dir() -> anyhow::Result<PathBuf> {
    let d = PathBuf::from("bench");
    if !d.join("package.json").exists() {
        bail!("bench/package.json not found: run from the repository root, or pass --no-peer");
    }
    if !d.join("node_modules").exists() {
        eprintln!("installing the peer harnesses (npm ci --prefix bench) …");
        let st =
            std::process::Command::new("npm").args(["ci", "--prefix", "bench", "--no-audit", "--no-fund"]).status();
        if !st.is_ok_and(|s| s.success()) {
            bail!("`npm ci --prefix bench` failed; install Node.js 20 and npm, or pass --no-peer");
        }
    }
    Ok(d)
}

/// A node process with its stdout read line by line as JSON.
pub struct Node {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Node {
    pub fn spawn(dir: &Path, script: &str, args: &[String], log: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new("node");
        cmd.arg(script)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(true);
        fleet::die_with_bench(&mut cmd);
        let mut child = cmd.spawn().context("cannot run node (Node.js 20 is needed for the peers)")?;
        let out = child.stdout.take().context("stdout is piped")?;
        Ok(Self { child, lines: BufReader::new(out).lines() })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn sample(&self) -> Sample {
        self.pid().and_then(procstat::sample).unwrap_or_default()
    }

    /// The next JSON line that has `key`; fails on timeout, exit, or an `error` line.
    pub async fn expect(&mut self, key: &str) -> anyhow::Result<Value> {
        let r = tokio::time::timeout(STEP_TIMEOUT, async {
            while let Some(l) = self.lines.next_line().await? {
                let Ok(v) = serde_json::from_str::<Value>(&l) else { continue };
                if let Some(e) = v.get("error") {
                    bail!("peer failed: {e}");
                }
                if v.get(key).is_some() {
                    return Ok(v);
                }
            }
            bail!("peer exited before printing `{key}`")
        })
        .await;
        r.with_context(|| format!("peer did not print `{key}` in time"))?
    }

    pub async fn say(&mut self, line: &str) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(format!("{line}\n").as_bytes()).await;
        }
    }

    /// Sends SIGKILL without waiting (servers that run until killed).
    pub fn start_kill(&mut self) {
        let _ = self.child.start_kill();
    }

    pub async fn wait(mut self) {
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// What a peer run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PeerRun {
    /// Jobs (BullMQ) or delivered messages (Socket.IO) per second.
    pub rate: f64,
    /// Jobs or delivered messages.
    pub count: u64,
    pub seconds: f64,
    /// CPU ms of Redis and of each peer process over the run.
    pub cpu_ms: Vec<(String, f64)>,
}

impl PeerRun {
    pub fn cpu(&self, name: &str) -> f64 {
        self.cpu_ms.iter().filter(|(n, _)| n.starts_with(name)).map(|(_, v)| v).sum()
    }
}

fn delta_ms(a: Sample, b: Sample) -> f64 {
    b.cpu_us.saturating_sub(a.cpu_us) as f64 / 1000.0
}

/// BullMQ: `jobs` no-op jobs through add → process → complete, `concurrency` in flight.
pub async fn bullmq(
    dir: &Path,
    logs: &Path,
    redis_url: &str,
    redis_pid: u32,
    jobs: u64,
    concurrency: usize,
) -> anyhow::Result<PeerRun> {
    let queue = format!("q{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let args = |_: &str| {
        vec![
            "--redis".into(),
            redis_url.into(),
            "--jobs".into(),
            jobs.to_string(),
            "--concurrency".into(),
            concurrency.to_string(),
            "--queue".into(),
            queue.clone(),
        ]
    };
    let mut worker = Node::spawn(
        dir,
        "bullmq-dispatch.mjs",
        &[vec!["work".to_string()], args("work")].concat(),
        &logs.join("bullmq-work.log"),
    )?;
    worker.expect("ready").await?;
    let r0 = procstat::sample(redis_pid).unwrap_or_default();
    let w0 = worker.sample();
    let mut producer = Node::spawn(
        dir,
        "bullmq-dispatch.mjs",
        &[vec!["produce".to_string()], args("produce")].concat(),
        &logs.join("bullmq-produce.log"),
    )?;
    let p0 = producer.sample();
    let mut p1 = p0;
    // Sample the producer just before it exits: it prints `added` last.
    let added = producer.expect("added");
    let done = worker.expect("done");
    let (added, done) = tokio::join!(
        async {
            let v = added.await;
            v
        },
        done
    );
    if let Some(s) = producer.pid().and_then(procstat::sample) {
        p1 = s;
    }
    let done = done?;
    added?;
    let w1 = worker.sample();
    let r1 = procstat::sample(redis_pid).unwrap_or_default();
    producer.wait().await;
    worker.wait().await;
    Ok(PeerRun {
        rate: done["jobs_per_sec"].as_f64().unwrap_or(0.0),
        count: jobs,
        seconds: done["seconds"].as_f64().unwrap_or(0.0),
        cpu_ms: vec![
            ("redis".into(), delta_ms(r0, r1)),
            ("bullmq-worker".into(), delta_ms(w0, w1)),
            ("bullmq-producer".into(), delta_ms(p0, p1)),
        ],
    })
}

/// What the Socket.IO storm measured.
#[derive(Debug, Clone, Default)]
pub struct StormRun {
    pub connected: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Starts a Socket.IO gateway (`sio-server.mjs gateway`) on a free port, once it is ready.
pub async fn sio_gateway(dir: &Path, redis_url: &str, log: &Path) -> anyhow::Result<(Node, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let args = ["gateway".to_string(), "--redis".into(), redis_url.into(), "--port".into(), port.to_string()];
    let mut gw = Node::spawn(dir, "sio-server.mjs", &args, log)?;
    gw.expect("ready").await?;
    Ok((gw, port))
}

/// Socket.IO's reconnect storm: `sockets` clients (over `procs` processes) connect at once, each
/// joining its room, as after a server restart; connect → `connect` event percentiles.
pub async fn socketio_storm(
    dir: &Path,
    logs: &Path,
    redis_url: &str,
    sockets: usize,
    procs: usize,
) -> anyhow::Result<StormRun> {
    let (mut gw, port) = sio_gateway(dir, redis_url, &logs.join("sio-storm-gateway.log")).await?;
    let s = |v: &str| v.to_string();
    let storm = [s("--storm"), s("1")];
    let mut clients = super::sio::spawn_clients(dir, port, sockets, procs, &storm, logs, "sio-storm-client")?;
    let mut ms: Vec<f64> = Vec::new();
    let mut connected = 0;
    for c in &mut clients {
        let v = c.expect("storm").await?;
        connected += v["storm"]["connected"].as_u64().unwrap_or(0);
        ms.extend(v["storm"]["ms"].as_array().into_iter().flatten().filter_map(Value::as_f64));
    }
    for mut c in clients {
        c.say("report").await;
        c.wait().await;
    }
    gw.start_kill();
    gw.wait().await;
    ms.sort_by(|a, b| a.total_cmp(b));
    let q = |f: f64| ms.get(((ms.len() as f64 - 1.0) * f).round() as usize).copied().unwrap_or(0.0);
    Ok(StormRun { connected, p50_ms: q(0.5), p99_ms: q(0.99) })
}
