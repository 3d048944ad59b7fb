//! What one Redis round trip costs inside chatfleet, and where the cost above the network goes.
//!
//! Starts a private Redis and times N sequential PINGs and N sequential FCALLs of a no-op
//! function (loaded by this example, so Lua work is nil) under several runtime and client set-ups:
//!
//! - runtime: tokio current_thread, or multi_thread (chatfleet's, `#[tokio::main]`) with its
//!   default knobs, one worker thread, `event_interval` / `global_queue_interval` of 1;
//! - caller: the runtime's `block_on` future (as in the examples' and tests' mains), or a spawned
//!   task (as every gateway and worker call is);
//! - client: a plain tokio `TcpStream` writing RESP by hand (the floor: what the kernel and Redis
//!   cost), fred with its defaults, or `chatfleet::store::Redis` (the real connection config and
//!   pool, round-robin through `client()`).
//!
//! Run: `cargo run --release --example redis_rtt -- [N] [FILTER]` (N 5000; FILTER keeps rows
//! whose name contains it). Compare with `redis-benchmark -c 1 -n 20000 -t ping`.

use std::time::Instant;

use chatfleet::local_redis::LocalRedis;
use chatfleet::store::Redis;
use fred::interfaces::{ClientLike, FunctionInterface};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A function that does nothing, so an FCALL's time is the client's and the protocol's.
const NOOP_LIBRARY: &str = "#!lua name=rtt_probe\n\
    redis.register_function('rtt_noop', function(keys, args) return 1 end)\n";

#[derive(Clone, Copy, Debug)]
enum Rt {
    Current,
    Multi,
    MultiOneWorker,
    MultiEventInterval1,
    MultiGlobalQueue1,
}

#[derive(Clone, Copy, Debug)]
enum Client {
    Tcp,
    FredDefault,
    Chatfleet,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Ping,
    Fcall,
}

fn runtime(rt: Rt) -> tokio::runtime::Runtime {
    let mut b = match rt {
        Rt::Current => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    match rt {
        Rt::MultiOneWorker => b.worker_threads(1),
        Rt::MultiEventInterval1 => b.event_interval(1),
        Rt::MultiGlobalQueue1 => b.global_queue_interval(1),
        _ => &mut b,
    };
    b.enable_all().build().expect("a runtime")
}

/// Microseconds per call (sorted), after a warm-up of `n / 10` calls.
async fn time_calls(client: Client, op: Op, url: String, n: usize) -> Vec<f64> {
    let warmup = n / 10;
    let mut out = Vec::with_capacity(n);
    let mut record = |i: usize, t: Instant| {
        if i >= warmup {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    };
    match client {
        Client::Tcp => {
            let addr = url.trim_start_matches("redis://").to_string();
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connects");
            s.set_nodelay(true).expect("nodelay");
            let (req, reply): (&[u8], &[u8]) = match op {
                Op::Ping => (b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
                Op::Fcall => (b"*3\r\n$5\r\nFCALL\r\n$8\r\nrtt_noop\r\n$1\r\n0\r\n", b":1\r\n"),
            };
            let mut buf = [0u8; 64];
            for i in 0..n + warmup {
                let t = Instant::now();
                s.write_all(req).await.expect("writes");
                let mut got = 0;
                while got < reply.len() {
                    got += s.read(&mut buf[got..]).await.expect("reads");
                }
                assert_eq!(&buf[..got], reply);
                record(i, t);
            }
        }
        Client::FredDefault | Client::Chatfleet => {
            let mut settings = chatfleet::settings::Settings::defaults().redis;
            settings.url = url;
            let (redis, plain) = match client {
                Client::Chatfleet => (Some(Redis::connect(&settings).await.expect("connects")), None),
                _ => {
                    let config = fred::prelude::Config::from_url(&settings.url).expect("a url");
                    let c = fred::clients::Client::new(config, None, None, None);
                    c.init().await.expect("connects");
                    (None, Some(c))
                }
            };
            for i in 0..n + warmup {
                let c = redis.as_ref().map(|r| r.client()).or(plain.as_ref()).expect("a client");
                let t = Instant::now();
                match op {
                    Op::Ping => {
                        let _: String = c.ping(None).await.expect("pong");
                    }
                    Op::Fcall => {
                        let one: i64 =
                            c.fcall("rtt_noop", Vec::<String>::new(), Vec::<String>::new()).await.expect("1");
                        assert_eq!(one, 1);
                    }
                }
                record(i, t);
            }
            if let Some(r) = redis {
                r.quit().await;
            }
        }
    }
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(5000);
    let filter = std::env::args().nth(2).unwrap_or_default();
    // Redis runs for the whole example, driven by a runtime of its own.
    let host = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let redis = host.block_on(LocalRedis::start(&[]))?;
    let url = redis.url();
    host.block_on(async {
        let c = fred::clients::Client::new(fred::prelude::Config::from_url(&url)?, None, None, None);
        c.init().await?;
        let _: String = c.function_load(true, NOOP_LIBRARY).await?;
        c.quit().await?;
        anyhow::Ok(())
    })?;

    use {Client::*, Rt::*};
    let rows: &[(Rt, bool, Client)] = &[
        (Current, false, Tcp),
        (Multi, false, Tcp),
        (Multi, true, Tcp),
        (Current, false, FredDefault),
        (Multi, false, FredDefault),
        (Multi, true, FredDefault),
        (Current, false, Chatfleet),
        (Multi, false, Chatfleet),
        (Multi, true, Chatfleet),
        (MultiOneWorker, true, Chatfleet),
        (MultiEventInterval1, true, Chatfleet),
        (MultiGlobalQueue1, true, Chatfleet),
    ];
    println!("{n} sequential calls per row, µs per call (p50 / p90 / p99)");
    for &(rt, spawned, client) in rows {
        for op in [Op::Ping, Op::Fcall] {
            let name = format!("{rt:?}/{}/{client:?}/{op:?}", if spawned { "task" } else { "block_on" });
            if !name.contains(filter.as_str()) {
                continue;
            }
            let runtime = runtime(rt);
            let job = time_calls(client, op, url.clone(), n);
            let v = if spawned { runtime.block_on(runtime.spawn(job))? } else { runtime.block_on(job) };
            let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
            println!("{name:<48} {:>7.1} {:>7.1} {:>7.1}", q(0.5), q(0.9), q(0.99));
            runtime.shutdown_background();
        }
    }
    host.block_on(redis.stop());
    Ok(())
}
