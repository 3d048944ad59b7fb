//! The Socket.IO streaming peer (`bench/sio-server.mjs`, `bench/sio-client.mjs`): rooms with one
//! client socket each, producers sending one token message per room at the model's rate through
//! `@socket.io/redis-streams-adapter`, and a gateway in between. It measures what `stream`
//! measures of chatfleet: delivered messages, the gap between consecutive messages of a room
//! (each client's histogram, merged here), messages lost or doubled, and CPU per process.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use super::peers::{Node, PeerRun};
use super::procstat::{self, Sample};
use super::stats::Hist;

/// Longest the clients wait for the last messages after the producers end, beyond the run time.
const DRAIN_WAIT: Duration = Duration::from_secs(5);
/// Client processes the rooms are split over (as `stream` splits sessions over two load children).
const CLIENT_PROCS: usize = 2;

/// The shape of one Socket.IO run.
#[derive(Debug, Clone, Copy)]
pub struct SioSpec {
    /// Rooms, each with one client socket.
    pub rooms: usize,
    /// Messages per second per room.
    pub rate: f64,
    pub seconds: u64,
    /// Producer processes the rooms are split over (chatfleet runs its turns on its workers).
    pub producers: usize,
}

/// What one Socket.IO run measured.
#[derive(Debug, Clone, Default)]
pub struct SioRun {
    /// Delivered messages, messages/s, seconds, CPU ms of Redis, gateway, producers, clients.
    pub peer: PeerRun,
    /// Gaps between consecutive messages of one room, µs.
    pub gaps: Hist,
    /// Messages each room should have got.
    pub per_room: u64,
    pub emitted: u64,
    /// Seqs a client never saw (skipped, or not reached by the end).
    pub missing: u64,
    pub duplicates: u64,
    /// Rooms that got fewer than `per_room` messages.
    pub short_rooms: u64,
    /// Every producer sent all its messages before its deadline (it kept pace).
    pub complete: bool,
}

impl SioRun {
    /// Nothing lost, doubled or left unsent.
    pub fn delivered_all(&self) -> bool {
        self.complete && self.missing == 0 && self.duplicates == 0 && self.short_rooms == 0
    }
}

fn delta_ms(a: Sample, b: Sample) -> f64 {
    b.cpu_us.saturating_sub(a.cpu_us) as f64 / 1000.0
}

/// Merges the clients' gap histograms (`gaps`: [[µs, count], …]) into one.
pub fn merge_gaps<'a>(reports: impl IntoIterator<Item = &'a Value>) -> anyhow::Result<Hist> {
    let mut all = Hist::default();
    for r in reports {
        let pairs: Vec<(u64, u64)> = serde_json::from_value(r.get("gaps").cloned().unwrap_or(Value::Array(Vec::new())))
            .context("a Socket.IO client's `gaps` is not a list of [µs, count] pairs")?;
        all.merge(&Hist::from_wire(&pairs));
    }
    Ok(all)
}

fn spans(total: usize, parts: usize) -> Vec<(usize, usize)> {
    let per = total.div_ceil(parts.max(1)).max(1);
    (0..parts.max(1)).map(|i| (i * per, per.min(total.saturating_sub(i * per)))).filter(|s| s.1 > 0).collect()
}

/// Starts `procs` client processes (`sio-client.mjs`) for `rooms` rooms on the gateway at `port`,
/// each with a share of the rooms and `extra` arguments; process i logs to `<prefix>-<i>.log` in
/// `logs`.
pub fn spawn_clients(
    dir: &Path,
    port: u16,
    rooms: usize,
    procs: usize,
    extra: &[String],
    logs: &Path,
    prefix: &str,
) -> anyhow::Result<Vec<Node>> {
    let mut clients = Vec::new();
    for (i, (first, count)) in spans(rooms, procs).into_iter().enumerate() {
        let mut args = vec!["--url".to_string(), format!("http://127.0.0.1:{port}")];
        args.extend(["--first".to_string(), first.to_string(), "--count".to_string(), count.to_string()]);
        args.extend_from_slice(extra);
        clients.push(Node::spawn(dir, "sio-client.mjs", &args, &logs.join(format!("{prefix}-{i}.log")))?);
    }
    Ok(clients)
}

/// Runs Socket.IO on the Redis at `redis_url` (pid `redis_pid`); `dir` holds the scripts.
pub async fn stream(dir: &Path, logs: &Path, redis_url: &str, redis_pid: u32, spec: SioSpec) -> anyhow::Result<SioRun> {
    let (mut gw, port) = super::peers::sio_gateway(dir, redis_url, &logs.join("sio-gateway.log")).await?;
    let s = |v: &str| v.to_string();
    let mut clients = spawn_clients(dir, port, spec.rooms, CLIENT_PROCS, &[], logs, "sio-client")?;
    for c in &mut clients {
        c.expect("ready").await?;
    }
    let r0 = procstat::sample(redis_pid).unwrap_or_default();
    let g0 = gw.sample();
    let started = Instant::now();
    let mut producers = Vec::new();
    for (i, (first, count)) in spans(spec.rooms, spec.producers).into_iter().enumerate() {
        let args = [
            s("producer"),
            s("--redis"),
            s(redis_url),
            s("--rooms"),
            spec.rooms.to_string(),
            s("--first"),
            first.to_string(),
            s("--count"),
            count.to_string(),
            s("--rate"),
            format!("{:.2}", spec.rate),
            s("--seconds"),
            spec.seconds.to_string(),
        ];
        producers.push(Node::spawn(dir, "sio-server.mjs", &args, &logs.join(format!("sio-producer-{i}.log")))?);
    }
    let (mut emitted, mut per_room, mut complete, mut producer_ms) = (0, 0, true, 0.0);
    for p in &mut producers {
        let v = p.expect("emitted").await?;
        // Its own count (it exits as it reports), from its first message on.
        producer_ms += v["cpu_us"].as_f64().unwrap_or(0.0) / 1000.0;
        emitted += v["emitted"].as_u64().unwrap_or(0);
        per_room = v["per_room"].as_u64().unwrap_or(0);
        complete &= v["complete"].as_bool().unwrap_or(false);
    }
    // Each client reports once its rooms have every message, or have gone quiet.
    let wait_ms = DRAIN_WAIT.as_millis() as u64 + spec.seconds * 1000;
    for c in &mut clients {
        c.say(&format!("report {per_room} {wait_ms}")).await;
    }
    let mut reports = Vec::new();
    for c in &mut clients {
        reports.push(c.expect("received").await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let g1 = gw.sample();
    let r1 = procstat::sample(redis_pid).unwrap_or_default();
    for c in clients {
        c.wait().await;
    }
    for p in producers {
        p.wait().await;
    }
    gw.start_kill();
    gw.wait().await;
    let sum = |k: &str| reports.iter().map(|r| r[k].as_u64().unwrap_or(0)).sum::<u64>();
    let received = sum("received");
    // The clients' own counts, from `ready` on (they exit as they report).
    let client_ms = sum("cpu_us") as f64 / 1000.0;
    Ok(SioRun {
        peer: PeerRun {
            rate: received as f64 / elapsed,
            count: received,
            seconds: elapsed,
            cpu_ms: vec![
                ("redis".into(), delta_ms(r0, r1)),
                ("sio-gateway".into(), delta_ms(g0, g1)),
                ("sio-producer".into(), producer_ms),
                ("sio-clients".into(), client_ms),
            ],
        },
        gaps: merge_gaps(&reports)?,
        per_room,
        emitted,
        missing: sum("missing"),
        duplicates: sum("duplicates"),
        short_rooms: sum("short_rooms"),
        complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_gap_histograms_merge_exactly() {
        // As two clients print them: µs rounded to 3 significant digits, with counts.
        let a = serde_json::json!({ "received": 6, "gaps": [[19_900, 2], [20_100, 3], [61_000, 1]] });
        let b = serde_json::json!({ "received": 4, "gaps": [[20_100, 3], [150_000, 1]] });
        let h = merge_gaps([&a, &b]).unwrap();
        assert_eq!(h.count(), 10);
        // Within the histogram's own precision (3 significant digits).
        let near = |got: u64, want: u64| got.abs_diff(want) <= want / 500;
        assert!(near(h.quantile_us(0.2), 19_900), "{}", h.quantile_us(0.2));
        assert!(near(h.quantile_us(0.5), 20_100), "{}", h.quantile_us(0.5));
        assert!(near(h.quantile_us(0.9), 61_000), "{}", h.quantile_us(0.9));
        assert!(near(h.max_us(), 150_000), "{}", h.max_us());
        // A client with no gaps (one message, or none) adds nothing.
        let none = serde_json::json!({ "received": 1 });
        assert_eq!(merge_gaps([&a, &none]).unwrap().count(), 6);
        let bad = serde_json::json!({ "gaps": [["x", 1]] });
        assert!(merge_gaps([&bad]).is_err());
    }

    #[test]
    fn rooms_split_into_contiguous_spans() {
        assert_eq!(spans(5, 2), vec![(0, 3), (3, 2)]);
        assert_eq!(spans(1, 2), vec![(0, 1)]);
        assert_eq!(spans(0, 2), Vec::<(usize, usize)>::new());
        assert_eq!(spans(10, 0), vec![(0, 10)]);
    }
}
