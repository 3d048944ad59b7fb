//! Retrieval latency: the `retrieval` stage of a turn's TTFT on a collection of N chunks.
//!
//! Starts a private PostgreSQL, stores D documents of C chunks each (100 words a chunk, drawn
//! from a 5,000-word vocabulary with Zipf frequencies past the stop words, so common words have
//! long posting lists like real text), then runs Q searches as a turn does ([`Retriever::retrieve`]: the
//! OR-of-words full-text query, `ts_rank_cd`, top 8, packing under the budget) one after another
//! and prints p50, p99 and max, and how many searches packed something.
//!
//! Run: `cargo run --release --example retrieval_latency -- [DOCUMENTS] [CHUNKS_PER_DOC] [QUERIES]`
//! (default 500 × 20 = 10,000 chunks, 2,000 queries). With `EXPLAIN=1`, it first prints the
//! plan of one search (`EXPLAIN ANALYZE`).

use std::time::{Duration, Instant};

use chatfleet::archive::Archive;
use chatfleet::local_postgres::LocalPostgres;
use chatfleet::retrieval::store::Knowledge;
use chatfleet::retrieval::{Outcome, RetrievalRule, Retriever};
use chatfleet::settings::Settings;
use rand::SeedableRng;
use words::Zipf;

#[path = "support/words.rs"]
mod words;

const WORDS_PER_CHUNK: usize = 100;
const QUESTION_WORDS: usize = 8;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let docs: usize = args.next().map_or(Ok(500), |a| a.parse())?;
    let per_doc: usize = args.next().map_or(Ok(20), |a| a.parse())?;
    let queries: usize = args.next().map_or(Ok(2_000), |a| a.parse())?;
    let pg = LocalPostgres::start().await?;
    let mut s = Settings::defaults();
    s.archive.url = pg.url();
    s.retrieval.rules.push(RetrievalRule { collection: "bench".into(), ..Default::default() });
    s.retrieval.timeout_ms = 10_000;
    let archive = Archive::new(&s.archive)?;
    archive.migrate().await?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let zipf = Zipf::new();
    let word = |rng: &mut rand::rngs::StdRng| zipf.draw(rng);

    let knowledge = Knowledge::new(archive.pool().clone());
    let began = Instant::now();
    for d in 0..docs {
        let chunks: Vec<String> = (0..per_doc)
            .map(|_| (0..WORDS_PER_CHUNK).map(|_| word(&mut rng)).collect::<Vec<_>>().join(" ") + ".")
            .collect();
        let bytes = chunks.iter().map(String::len).sum();
        knowledge
            .put("bench", "bench", &format!("doc-{d}"), &format!("Document {d}"), bytes, &chunks, 0, u64::MAX)
            .await?;
    }
    let ingest = began.elapsed();
    sqlx::query("ANALYZE knowledge_chunks").execute(archive.pool()).await?;
    println!(
        "stored {} chunks in {:.1} s ({:.0} chunks/s)",
        docs * per_doc,
        ingest.as_secs_f64(),
        (docs * per_doc) as f64 / ingest.as_secs_f64()
    );

    let retriever = Retriever::new(&s)?.expect("retrieval is on");
    let questions: Vec<String> = (0..queries + 100)
        .map(|_| (0..QUESTION_WORDS).map(|_| word(&mut rng)).collect::<Vec<_>>().join(" ") + "?")
        .collect();
    if std::env::var_os("EXPLAIN").is_some() {
        let rows = sqlx::query(&format!("EXPLAIN (ANALYZE, BUFFERS) {}", chatfleet::retrieval::store::SEARCH))
            .bind("bench")
            .bind("bench")
            .bind(&questions[0])
            .bind(8i64)
            .bind(1000i64)
            .bind(12i64)
            .bind(s.retrieval.common_word_share)
            .bind(3i64)
            .fetch_all(archive.pool())
            .await?;
        for r in rows {
            let l: String = sqlx::Row::get(&r, 0);
            println!("{l}");
        }
    }
    let mut times = Vec::with_capacity(queries);
    let mut packed = 0;
    for (i, q) in questions.iter().enumerate() {
        let t = Instant::now();
        let outcome = retriever.retrieve("bench", "bench", q).await;
        if i < 100 {
            continue; // warm-up: connections, caches
        }
        times.push(t.elapsed());
        match outcome {
            Outcome::Packed(_) => packed += 1,
            Outcome::Empty => {}
            other => anyhow::bail!("search {i} did not complete: {}", other.label()),
        }
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{queries} searches of {QUESTION_WORDS} words: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {packed} packed chunks",
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(*times.last().unwrap_or(&Duration::ZERO))
    );
    archive.close().await;
    drop(pg);
    Ok(())
}
