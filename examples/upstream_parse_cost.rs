//! What decoding an OpenAI-compatible stream costs the worker: SSE framing plus chunk decoding,
//! per chunk. A benchmark, not a test: `cargo run --release --example upstream_parse_cost`.

use chatfleet::upstream::http::Decoder;
use chatfleet::upstream::openai::OpenAiDecoder;
use eventsource_stream::Eventsource;
use futures::StreamExt;

const N: usize = 200_000;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let chunk = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" token"},"logprobs":null,"finish_reason":null}]}"#;
    let mut runs = Vec::new();
    for _ in 0..5 {
        let body: Vec<Result<bytes::Bytes, std::convert::Infallible>> =
            (0..N).map(|_| Ok(bytes::Bytes::from(format!("{chunk}\n\n")))).collect();
        let started = std::time::Instant::now();
        let mut events = futures::stream::iter(body).eventsource();
        let mut d = OpenAiDecoder::default();
        let mut texts = 0;
        while let Some(ev) = events.next().await {
            texts += d.event(&ev.expect("well-formed SSE")).expect("a text chunk").out.len();
        }
        assert_eq!(texts, N, "every chunk decodes to one text event");
        runs.push(started.elapsed().as_nanos() as f64 / N as f64);
    }
    runs.sort_by(f64::total_cmp);
    println!("openai: median {:.0} ns per chunk (SSE framing + JSON decoding), 5 runs of {N} chunks", runs[2]);
}
