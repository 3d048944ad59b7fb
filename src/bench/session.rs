//! One load session: connect, hello, then start turns as the plan's mode says, and check every
//! event: seqs contiguous (merged deltas cover `first_seq..=seq`), no duplicates, each answer's
//! final text equal to the demo model's. A dropped socket is resumed per docs/protocol.md (hello
//! with epoch and last seq, on the next gateway), and an unacknowledged send is retried with the
//! same `client_msg_id`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use super::child::{unix_us, Ctx, MAX_RESETS};
use super::client::{self, Frame, Welcome, Ws, CONNECT_TIMEOUT};
use super::plan::Mode;
use crate::model::demo::answer_for;
use crate::protocol::ClientMsg;

/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The turn in flight.
struct Turn {
    cmid: String,
    prompt: String,
    turn_id: Option<String>,
    sent: Instant,
    acked: bool,
    started: bool,
    first_delta: Option<Instant>,
    last_delta: Option<Instant>,
    text: String,
    deadline: Instant,
}

/// A session's place in its event stream.
struct Session {
    id: String,
    epoch: String,
    last_seq: u64,
    target: usize,
    turns: u64,
}

pub async fn run(ctx: Arc<Ctx>, i: usize, connected: Arc<Semaphore>) {
    let plan = &ctx.plan;
    let id = format!("{}-{}", plan.session_prefix, plan.first + i);
    let mut s = Session { id, epoch: String::new(), last_seq: 0, target: i % plan.targets.len(), turns: 0 };
    let began = Instant::now();
    let first = timeout(CONNECT_TIMEOUT, first_connect(&ctx, i, &s)).await;
    let mut ws = match first {
        Ok(Ok((ws, w))) => {
            record(&ctx, "connect", began.elapsed());
            ctx.add("connected", 1);
            s.epoch = w.epoch;
            s.last_seq = w.seq;
            ws
        }
        _ => {
            ctx.add("connect_failed", 1);
            connected.add_permits(1);
            return;
        }
    };
    connected.add_permits(1);
    let mut turn: Option<Turn> = None;
    let mut next_at = Instant::now();
    let mut went = false;
    loop {
        let stopping = ctx.stop_new.is_cancelled();
        if turn.is_none() && stopping {
            break;
        }
        let may_start = went && turn.is_none() && !stopping && plan.mode != Mode::Idle;
        let deadline = turn.as_ref().map_or(next_at, |t| t.deadline);
        tokio::select! {
            biased;
            _ = ctx.hard.cancelled() => {
                if turn.is_some() { ctx.add("unfinished", 1); }
                break;
            }
            _ = ctx.stop_new.cancelled(), if turn.is_none() => break,
            _ = ctx.go.cancelled(), if !went => {
                went = true;
                if let Mode::Closed { think_ms } = plan.mode {
                    // Spread first sends over one think time so sessions do not start in step.
                    next_at = Instant::now() + Duration::from_millis(rand::rng().random_range(0..=think_ms.max(1)));
                }
            }
            ok = trigger(&ctx, next_at), if may_start => {
                if ok && ctx.take_turn() {
                    let t = new_turn(&ctx, &mut s);
                    let sent = client::send(&mut ws, &send_msg(&t)).await;
                    turn = Some(t);
                    if sent.is_err() && !resume(&ctx, i, &mut s, &mut turn, &mut ws).await {
                        break;
                    }
                } else {
                    break;
                }
            }
            m = ws.next() => {
                let alive = match m {
                    Some(Ok(Message::Text(t))) => on_text(&ctx, &mut s, &mut turn, &t, &mut next_at),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => false,
                    Some(Ok(_)) => true,
                };
                if !alive && !resume(&ctx, i, &mut s, &mut turn, &mut ws).await {
                    break;
                }
            }
            _ = sleep_until(deadline), if turn.is_some() => {
                ctx.add("timeouts", 1);
                turn = None;
                next_at = Instant::now();
            }
        }
    }
    let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
}

/// Waits until this session may start a turn; false when no more will come.
async fn trigger(ctx: &Ctx, next_at: Instant) -> bool {
    match ctx.plan.mode {
        Mode::Paced { .. } => match ctx.pace.acquire().await {
            Ok(p) => {
                p.forget();
                true
            }
            Err(_) => false,
        },
        Mode::Closed { .. } => {
            sleep_until(next_at).await;
            true
        }
        Mode::Idle => false,
    }
}

fn new_turn(ctx: &Ctx, s: &mut Session) -> Turn {
    s.turns += 1;
    let cmid = format!("m{}", s.turns);
    let prompt = format!("bench {} turn {}", s.id, s.turns);
    let now = Instant::now();
    let deadline = now + Duration::from_millis(ctx.plan.turn_timeout_ms);
    Turn {
        cmid,
        prompt,
        turn_id: None,
        sent: now,
        acked: false,
        started: false,
        first_delta: None,
        last_delta: None,
        text: String::new(),
        deadline,
    }
}

fn send_msg(t: &Turn) -> ClientMsg {
    ClientMsg::Send { client_msg_id: t.cmid.clone(), text: t.prompt.clone(), model: None, attachments: Vec::new() }
}

fn record(ctx: &Ctx, name: &str, d: Duration) {
    let us = d.as_micros() as u64;
    let mut m = ctx.measured.lock().expect("no panics while locked");
    m.hists.entry(name.to_string()).or_default().record(us);
    if name == ctx.plan.series_metric {
        let sec = ctx.second();
        m.series.at(sec).latency.record(us);
    }
}

/// Handles one text frame; false when the socket should be resumed (server asked to reconnect).
// The load child's stderr is its log file: each functional failure is named there.
#[allow(clippy::print_stderr)]
fn on_text(ctx: &Ctx, s: &mut Session, turn: &mut Option<Turn>, text: &str, next_at: &mut Instant) -> bool {
    let Ok(f) = serde_json::from_str::<Frame>(text) else {
        ctx.add("error_frames", 1);
        return true;
    };
    let now = Instant::now();
    if !f.is_event() {
        match f.kind.as_ref() {
            "ack" => {
                if let Some(t) = turn.as_mut().filter(|t| f.client_msg_id.as_deref() == Some(t.cmid.as_str())) {
                    if !t.acked {
                        t.acked = true;
                        record(ctx, "ack", now - t.sent);
                    }
                    t.turn_id = f.turn_id.map(|c| c.into_owned());
                }
            }
            "error" => {
                // A send refused while Redis cannot take it (a stall, a restart) is a clean refusal
                // the client retries; counted apart so a chaos run can tell it from a real error.
                let kind = match f.code.as_deref() {
                    Some("busy") => "busy",
                    Some("unavailable") => "refused_unavailable",
                    _ => "error_frames",
                };
                ctx.add(kind, 1);
                if turn.as_ref().is_some_and(|t| !t.acked) {
                    *turn = None;
                    *next_at = now + Duration::from_millis(f.retry_after_ms.unwrap_or(100));
                }
            }
            "reconnect" => return false,
            "snapshot" => {
                // Mid-connection snapshot: the gateway could not fill a gap from the log. The
                // protocol allows it; it replaces what the client shows, so it is a resync.
                ctx.add("resyncs", 1);
                eprintln!("session {}: snapshot at seq {:?} after seq {}", s.id, f.seq, s.last_seq);
                s.last_seq = f.seq.unwrap_or(s.last_seq);
                if let Some(t) = turn.as_mut() {
                    match f.active.filter(|a| Some(&a.turn_id) == t.turn_id.as_ref()) {
                        Some(a) => t.text = a.text,
                        None if t.acked => end_turn(ctx, turn, next_at),
                        None => {}
                    }
                }
            }
            _ => {}
        }
        return true;
    }
    let seq = f.seq.unwrap_or(0);
    let first = f.first_seq.unwrap_or(seq);
    if seq <= s.last_seq {
        ctx.add("duplicates", 1);
        return true;
    }
    if first <= s.last_seq {
        // A merged delta that overlaps what was applied: its text would be applied twice.
        ctx.add("duplicates", s.last_seq - first + 1);
        eprintln!("session {}: merged delta {first}..={seq} overlaps seq {}", s.id, s.last_seq);
    }
    if first > s.last_seq + 1 {
        ctx.add("lost", first - s.last_seq - 1);
        eprintln!("session {}: {} seq {seq} (first {first}) after seq {}", s.id, f.kind, s.last_seq);
    }
    if f.first_seq.is_some() {
        ctx.add("merged_frames", 1);
    }
    s.last_seq = seq;
    ctx.add("frames", 1);
    let Some(t) = turn.as_mut() else { return true };
    let tid = f.turn_id.as_deref().unwrap_or("");
    if f.kind == "user_message" && f.client_msg_id.as_deref() == Some(t.cmid.as_str()) {
        t.turn_id = Some(tid.to_string());
        return true;
    }
    if t.turn_id.as_deref() != Some(tid) {
        return true;
    }
    match f.kind.as_ref() {
        "turn_started" if !t.started => {
            t.started = true;
            record(ctx, "turn_started", now - t.sent);
        }
        "delta" => {
            ctx.add("deltas", 1);
            match t.last_delta {
                None if t.first_delta.is_none() => record(ctx, "first_delta", now - t.sent),
                Some(prev) => record(ctx, "gap", now - prev),
                None => {}
            }
            t.first_delta.get_or_insert(now);
            t.last_delta = Some(now);
            t.text.push_str(f.text.as_deref().unwrap_or(""));
            let sec = ctx.second();
            ctx.measured.lock().expect("no panics while locked").series.at(sec).frames += 1;
        }
        "reset" => {
            ctx.add("resets", 1);
            t.text.clear();
            // The pause before a reset is a takeover, timed separately from delta gaps.
            t.last_delta = None;
            let mut m = ctx.measured.lock().expect("no panics while locked");
            if m.resets_unix_us.len() < MAX_RESETS {
                m.resets_unix_us.push(unix_us());
            }
        }
        "done" => {
            let plan = &ctx.plan;
            let expected = answer_for(&t.prompt, plan.max_tokens);
            if t.text != expected {
                ctx.add("wrong_text", 1);
                eprintln!(
                    "session {}: turn {:?} text differs ({} bytes, want {})",
                    s.id,
                    t.turn_id,
                    t.text.len(),
                    expected.len()
                );
            }
            record(ctx, "turn", now - t.sent);
            if let (Some(first), true) = (t.first_delta, plan.tokens_per_sec > 0 && plan.max_tokens > 1) {
                let expected = Duration::from_micros((plan.max_tokens as u64 - 1) * 1_000_000 / plan.tokens_per_sec);
                record(ctx, "lag", (now - first).saturating_sub(expected));
            }
            ctx.add("turns_done", 1);
            ctx.add("tokens", plan.max_tokens as u64);
            let sec = ctx.second();
            ctx.measured.lock().expect("no panics while locked").series.at(sec).turns += 1;
            end_turn(ctx, turn, next_at);
        }
        "error" | "cancelled" => {
            ctx.add("turns_failed", 1);
            end_turn(ctx, turn, next_at);
        }
        _ => {}
    }
    true
}

fn end_turn(ctx: &Ctx, turn: &mut Option<Turn>, next_at: &mut Instant) {
    *turn = None;
    if let Mode::Closed { think_ms } = ctx.plan.mode {
        let jitter = if think_ms > 1 { rand::rng().random_range(0..think_ms) } else { 0 };
        *next_at = Instant::now() + Duration::from_millis(think_ms / 2 + jitter);
    }
}

/// The first connect. A refusal with a retry hint (a gateway admitting a reconnect storm at its
/// own pace) is retried after the hint, as docs/client.md asks of clients; the caller bounds the
/// whole by [`CONNECT_TIMEOUT`].
async fn first_connect(ctx: &Ctx, i: usize, s: &Session) -> anyhow::Result<(Ws, Welcome)> {
    loop {
        match connect(ctx, i, s, None).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                let Some(ms) = client::retry_hint(&e) else { return Err(e) };
                ctx.add("connect_retries", 1);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    }
}

async fn connect(ctx: &Ctx, i: usize, s: &Session, last: Option<(&str, u64)>) -> anyhow::Result<(Ws, Welcome)> {
    let plan = &ctx.plan;
    let source = plan.sources[i % plan.sources.len()];
    let mut ws = client::open(plan.targets[s.target], source, &s.id).await?;
    let w = client::hello(&mut ws, &s.id, last).await?;
    Ok((ws, w))
}

/// Reconnects after a drop (to the next gateway, with backoff) and resumes from the last seq.
/// Replaces `ws` with the new socket; false when the run ended first.
async fn resume(ctx: &Ctx, i: usize, s: &mut Session, turn: &mut Option<Turn>, ws: &mut Ws) -> bool {
    ctx.add("disconnects", 1);
    let began = Instant::now();
    let mut backoff = Duration::from_millis(20);
    while !ctx.hard.is_cancelled() {
        s.target = (s.target + 1) % ctx.plan.targets.len();
        let last = (s.epoch.clone(), s.last_seq);
        if let Ok(Ok((mut new, w))) = timeout(CONNECT_TIMEOUT, connect(ctx, i, s, Some((&last.0, last.1)))).await {
            record(ctx, "reconnect", began.elapsed());
            ctx.add("reconnects", 1);
            if w.snapshot {
                // The log could not fill the gap: the snapshot replaces what the client shows.
                ctx.add("resyncs", 1);
                s.epoch = w.epoch;
                s.last_seq = w.seq;
                if let Some(t) = turn.as_mut() {
                    match w.active.filter(|a| Some(&a.turn_id) == t.turn_id.as_ref()) {
                        Some(a) => t.text = a.text,
                        None if t.acked => *turn = None,
                        None => {}
                    }
                }
            }
            if let Some(t) = turn.as_ref().filter(|t| !t.acked) {
                // Not acknowledged: retry with the same id, which never creates a second turn.
                if client::send(&mut new, &send_msg(t)).await.is_err() {
                    continue;
                }
            }
            *ws = new;
            return true;
        }
        tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = ctx.hard.cancelled() => {} }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    if turn.is_some() {
        ctx.add("unfinished", 1);
    }
    false
}
