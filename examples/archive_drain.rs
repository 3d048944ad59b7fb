//! Archive throughput: how fast archivers copy a backlog of finished turns to PostgreSQL.
//!
//! Starts a private Redis and PostgreSQL, fills the 64 partitions' archive streams with N
//! finished turns (the fields `end_turn` writes; 1,000 sessions, a 60-byte question and a 1 KB
//! answer each), then starts A archivers and times them until the backlog is 0, checking that
//! the archive holds exactly N turns. This is the rate at which the archive catches up after an
//! outage, and the ceiling of the finished-turn rate it keeps up with.
//!
//! Run: `cargo run --release --example archive_drain -- [TURNS] [ARCHIVERS]` (default 50000, 1).

use std::time::{Duration, Instant};

use chatfleet::archive::archiver::Archiver;
use chatfleet::archive::Archive;
use chatfleet::local_postgres::LocalPostgres;
use chatfleet::local_redis::LocalRedis;
use chatfleet::settings::Settings;
use fred::prelude::*;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let turns: usize = args.next().map_or(Ok(50_000), |a| a.parse())?;
    let archivers: usize = args.next().map_or(Ok(1), |a| a.parse())?;
    let redis = LocalRedis::start(&[]).await?;
    let pg = LocalPostgres::start().await?;
    let mut s = Settings::defaults();
    s.redis.url = redis.url();
    s.archive.url = pg.url();
    s.archive.stream_max_len = 1_000_000;
    let store = chatfleet::app::connect_store(&s).await?;
    let archive = Archive::new(&s.archive)?;
    archive.migrate().await?;

    let raw = Client::new(Config::from_url(&s.redis.url)?, None, None, None);
    raw.init().await?;
    let answer = "word ".repeat(200);
    let filled = Instant::now();
    for chunk in (0..turns).collect::<Vec<_>>().chunks(1000) {
        let pipe = raw.pipeline();
        for &i in chunk {
            let sid = format!("s{}", i % 1000);
            let keys = store.keys().session("bench", &sid);
            let now = (1_700_000_000_000u64 + i as u64).to_string();
            let fields: Vec<(&str, String)> = vec![
                ("b", keys.base.clone()),
                ("t", format!("{:032x}", i)),
                ("o", "done".into()),
                ("u", format!("question {i}: how does the archive keep up with many turns?")),
                ("a", answer.clone()),
                ("ah", "1".into()),
                ("opts", String::new()),
                ("c", now.clone()),
                ("f", now),
                ("pt", "12".into()),
                ("ct", "200".into()),
                ("ec", String::new()),
                ("em", String::new()),
                ("up", "demo".into()),
                ("mo", "demo".into()),
                ("tv", "1".into()),
                ("su", String::new()),
                ("st", String::new()),
            ];
            let _: () = pipe.xadd(store.archive_stream(keys.partition), false, None, "*", fields).await?;
        }
        let _: Vec<Value> = pipe.all().await?;
    }
    println!("filled {turns} turns in {:.1} s", filled.elapsed().as_secs_f64());

    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let mut running = Vec::new();
    for _ in 0..archivers {
        running.push(Archiver::start(store.clone(), Archive::new(&s.archive)?, shutdown.clone()).await?);
    }
    while store.archive_backlog().await? > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let rows: i64 = sqlx::query("SELECT count(*) FROM turns").fetch_one(archive.pool()).await?.get(0);
    anyhow::ensure!(rows == turns as i64, "the archive holds {rows} turns, not {turns}");
    println!(
        "{archivers} archiver(s): {turns} turns in {took:.2} s = {:.0} turns/s (batch {})",
        turns as f64 / took,
        s.archive.batch
    );
    shutdown.cancel();
    for a in running {
        a.wait().await;
    }
    Ok(())
}
