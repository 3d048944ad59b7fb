//! What each packing and guard stage adds to time to first token: retrieval, redaction and
//! moderation, each on and off.
//!
//! Starts a private Redis and PostgreSQL, a moderation endpoint (a real HTTP server speaking
//! OpenAI's `/v1/moderations`, answering "not flagged" at once), one worker and one gateway per
//! case, each gateway serving its own tenant (dev-mode auth names the tenant per gateway):
//! - `base`: no stage on;
//! - `retrieval`: a `[[retrieval.rules]]` rule for the tenant, on a collection of D × C chunks
//!   (default 500 × 20 = 10,000, drawn as in `examples/retrieval_latency.rs`);
//! - `redaction`: `guard.redact` on for the tenant (the built-in detectors);
//! - `moderation`: `guard.moderation` on for the tenant (the message is screened before the model
//!   is called; answer phrases are checked off the streaming path).
//!
//! The demo model answers at once (no first-token delay), so the figures are what the fleet adds.
//! Each turn is a protocol v1 `send` on a socket already open and `hello`'d, timed to the first
//! `delta`; the cases are interleaved turn by turn so they share the machine's noise, and every
//! case sends the same questions (8 words of the collection's vocabulary).
//!
//! Run: `cargo run --release --example stage_ttft -- [TURNS] [DOCUMENTS] [CHUNKS_PER_DOC]`
//! (default 300 turns per case).

use std::time::Instant;

use axum::Json;
use chatfleet::guard::GuardOverride;
use chatfleet::protocol::{ClientMsg, EventBody, ServerMsg};
use chatfleet::retrieval::store::Knowledge;
use chatfleet::retrieval::RetrievalRule;
use chatfleet::settings::TenantSettings;
use rand::SeedableRng;
use words::Zipf;
use ws::{next, send};

#[path = "support/ws.rs"]
mod ws;

#[path = "support/words.rs"]
mod words;

const CASES: [&str; 4] = ["base", "retrieval", "redaction", "moderation"];
const WORDS_PER_CHUNK: usize = 100;

/// One turn on a new session: the socket is open and the session said hello before the clock
/// starts; it stops at the first `delta`. The turn is then read to its end.
async fn turn(addr: std::net::SocketAddr, sid: String, text: &str) -> f64 {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?session_id={sid}")).await.unwrap();
    send(&mut ws, &ClientMsg::Hello { session_id: sid, last_seq: None, epoch: None, coalesce_ms: None }).await;
    next(&mut ws).await; // welcome
    next(&mut ws).await; // snapshot of the new session
    let t0 = Instant::now();
    let msg = ClientMsg::Send { client_msg_id: "m".into(), text: text.into(), model: None, attachments: Vec::new() };
    send(&mut ws, &msg).await;
    let mut ttft = None;
    loop {
        if let ServerMsg::Event(e) = next(&mut ws).await {
            match e.body {
                EventBody::Delta { .. } if ttft.is_none() => ttft = Some(t0.elapsed().as_secs_f64() * 1000.0),
                EventBody::Done { .. } => return ttft.expect("a delta before done"),
                EventBody::Error { code, .. } => panic!("turn failed: {code}"),
                _ => {}
            }
        }
    }
}

fn quantiles(mut v: Vec<f64>) -> [f64; 2] {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |f: f64| v[((v.len() as f64 - 1.0) * f).round() as usize];
    [q(0.5), q(0.99)]
}

/// A moderation endpoint that flags nothing, at once.
async fn moderation() -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/v1/moderations",
        axum::routing::post(|Json(b): Json<serde_json::Value>| async move {
            Json(serde_json::json!({"id": "modr", "model": b["model"], "results": [{"flagged": false, "categories": {}}]}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let turns: usize = args.next().map_or(Ok(300), |a| a.parse())?;
    let docs: usize = args.next().map_or(Ok(500), |a| a.parse())?;
    let per_doc: usize = args.next().map_or(Ok(20), |a| a.parse())?;
    let redis = chatfleet::local_redis::LocalRedis::start(&[]).await?;
    let pg = chatfleet::local_postgres::LocalPostgres::start().await?;
    let mut s = chatfleet::settings::Settings::defaults();
    s.redis.url = redis.url();
    s.redis.partitions = 8;
    s.model.demo.ttft_ms = 0;
    s.model.demo.tokens_per_sec = 0;
    s.model.demo.max_tokens = 20;
    s.archive.url = pg.url();
    s.retrieval.rules.push(RetrievalRule {
        tenant: Some("retrieval".into()),
        collection: "bench".into(),
        ..Default::default()
    });
    s.guard.moderation_url = moderation().await?;
    let tenant = |g: GuardOverride| TenantSettings { guard: Some(g), ..Default::default() };
    s.tenants.insert("redaction".into(), tenant(GuardOverride { redact: Some(true), ..Default::default() }));
    s.tenants.insert("moderation".into(), tenant(GuardOverride { moderation: Some(true), ..Default::default() }));
    s.validate()?;
    let archive = chatfleet::archive::Archive::new(&s.archive)?;
    archive.migrate().await?;

    // The collection and the questions, drawn as in examples/retrieval_latency.rs.
    let zipf = Zipf::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let mut word = |n: usize| (0..n).map(|_| zipf.draw(&mut rng)).collect::<Vec<_>>().join(" ");
    let knowledge = Knowledge::new(archive.pool().clone());
    for d in 0..docs {
        let chunks: Vec<String> = (0..per_doc).map(|_| word(WORDS_PER_CHUNK) + ".").collect();
        let bytes = chunks.iter().map(String::len).sum();
        let (id, title) = (format!("doc-{d}"), format!("Document {d}"));
        knowledge.put("retrieval", "bench", &id, &title, bytes, &chunks, 0, u64::MAX).await?;
    }
    sqlx::query("ANALYZE knowledge_chunks").execute(archive.pool()).await?;
    let warmup = 20;
    let questions: Vec<String> = (0..turns + warmup).map(|_| word(8) + "?").collect();

    let shutdown = tokio_util::sync::CancellationToken::new();
    let store = chatfleet::app::connect_store(&s).await?;
    let model = chatfleet::app::build_model(&s);
    let worker = chatfleet::worker::Worker::start(s.clone(), store.clone(), model, shutdown.clone()).await?;
    let mut addrs = Vec::new();
    for case in CASES {
        let mut gs = s.clone();
        gs.gateway.tenant = case.into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        let gateway = chatfleet::gateway::Gateway::build(gs, store.clone(), shutdown.clone()).await?;
        tokio::spawn(gateway.serve(listener));
    }

    let mut times: Vec<Vec<f64>> = vec![Vec::new(); CASES.len()];
    for (i, q) in questions.iter().enumerate() {
        for (c, addr) in addrs.iter().enumerate() {
            let ms = turn(*addr, format!("{}-{i}", CASES[c]), q).await;
            if i >= warmup {
                times[c].push(ms);
            }
        }
    }
    println!(
        "time to first token by stage, demo model with no delay, {turns} turns per case, {} chunks (ms)",
        docs * per_doc
    );
    let base = quantiles(times[0].clone());
    for (name, v) in CASES.iter().zip(times) {
        let q = quantiles(v);
        println!(
            "{name:<11} p50={:>7.3}  p99={:>7.3}   over base: p50 {:+.3}  p99 {:+.3}",
            q[0],
            q[1],
            q[0] - base[0],
            q[1] - base[1]
        );
    }
    shutdown.cancel();
    worker.wait().await;
    archive.close().await;
    drop(pg);
    Ok(())
}
