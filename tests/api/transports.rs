//! SSE, long-poll and the HTTP send/cancel routes: the same events as the WebSocket.

use chatfleet::protocol::{ControlMsg, Event, EventBody};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;

use crate::helpers::*;

async fn post_send(app: &TestApp, sid: &str, cmid: &str, text: &str) -> ControlMsg {
    let url = format!("{}/v1/sessions/{sid}/messages", app.http(0));
    let body = serde_json::json!({"client_msg_id": cmid, "text": text});
    let r = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "send: {}", r.status());
    r.json().await.unwrap()
}

/// An SSE connection, opened up to its `welcome` (and snapshot).
struct Sse {
    stream: std::pin::Pin<Box<dyn futures::Stream<Item = Result<eventsource_stream::Event, String>> + Send>>,
    epoch: String,
    resume: Option<chatfleet::protocol::ResumeKind>,
}

impl Sse {
    async fn open(app: &TestApp, sid: &str, last_event_id: Option<String>, epoch: Option<&str>) -> Self {
        let mut url = format!("{}/v1/sessions/{sid}/events", app.http(0));
        if let Some(e) = epoch {
            url.push_str(&format!("?epoch={e}"));
        }
        let mut req = reqwest::Client::new().get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let stream = resp.bytes_stream().eventsource().map(|r| r.map_err(|e| e.to_string())).boxed();
        let mut sse = Self { stream, epoch: String::new(), resume: None };
        match sse.next_raw().await {
            (Some(ControlMsg::Welcome { epoch, resume, .. }), _) => {
                sse.epoch = epoch;
                sse.resume = Some(resume);
                if resume == chatfleet::protocol::ResumeKind::Snapshot {
                    assert!(matches!(sse.next_raw().await, (Some(ControlMsg::Snapshot { .. }), _)));
                }
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        sse
    }

    async fn next_raw(&mut self) -> (Option<ControlMsg>, Option<Event>) {
        let ev = tokio::time::timeout(FRAME_TIMEOUT, self.stream.next()).await.expect("an SSE event in time");
        let ev = ev.expect("the stream is open").expect("a valid SSE event");
        if ev.event == "control" {
            return (Some(serde_json::from_str(&ev.data).unwrap()), None);
        }
        let e: Event = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(ev.id, format!("{}:{}", self.epoch, e.seq), "the SSE id is the epoch and the seq");
        (None, Some(e))
    }

    /// Reads `n` events, or until `turn` ends.
    async fn events(&mut self, n: usize, turn: Option<&str>) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < n {
            if let (_, Some(e)) = self.next_raw().await {
                let end = turn.is_some_and(|t| e.body.turn_id() == t && e.body.is_terminal());
                out.push(e);
                if end {
                    break;
                }
            }
        }
        out
    }
}

#[tokio::test]
async fn sse_streams_a_turn_and_resumes_from_last_event_id() {
    let mut s = test_settings();
    s.model.demo.max_tokens = 200;
    s.model.demo.tokens_per_sec = 300;
    let app = TestApp::spawn_with(s).await;
    let sid = uid("s");
    let prompt = "over sse";
    let mut sse = Sse::open(&app, &sid, None, None).await;
    let ControlMsg::Ack { turn_id, .. } = post_send(&app, &sid, &uid("m"), prompt).await else { panic!() };
    let part1 = sse.events(6, None).await;
    let epoch = sse.epoch.clone();
    drop(sse);
    let last = part1.last().unwrap().seq;
    // A bare seq with `?epoch=`, as clients before `epoch:seq` ids resumed.
    let mut again = Sse::open(&app, &sid, Some(last.to_string()), Some(&epoch)).await;
    let part2 = again.events(usize::MAX, Some(&turn_id)).await;
    assert_eq!(part2[0].first_seq.unwrap_or(part2[0].seq), last + 1, "resume continues right after Last-Event-ID");
    let mut all = part1;
    all.extend(part2);
    assert_contiguous(&all, all[0].first_seq.unwrap_or(all[0].seq));
    assert_eq!(text_of(&all, &turn_id), app.expected_answer(prompt));
}

#[tokio::test]
async fn sse_resumes_with_a_replay_from_the_last_event_id_alone_as_a_browser_sends_it() {
    let mut s = test_settings();
    s.model.demo.max_tokens = 200;
    s.model.demo.tokens_per_sec = 300;
    let app = TestApp::spawn_with(s).await;
    let sid = uid("s");
    let prompt = "eventsource resume";
    let mut sse = Sse::open(&app, &sid, None, None).await;
    let ControlMsg::Ack { turn_id, .. } = post_send(&app, &sid, &uid("m"), prompt).await else { panic!() };
    let part1 = sse.events(6, None).await;
    let epoch = sse.epoch.clone();
    drop(sse);
    let last = part1.last().unwrap().seq;
    // No `?epoch=`: EventSource reconnects to the URL it first used, with `Last-Event-ID` only.
    let mut again = Sse::open(&app, &sid, Some(format!("{epoch}:{last}")), None).await;
    assert_eq!(again.resume, Some(chatfleet::protocol::ResumeKind::Replay), "a replay, not a snapshot");
    let part2 = again.events(usize::MAX, Some(&turn_id)).await;
    assert_eq!(part2[0].first_seq.unwrap_or(part2[0].seq), last + 1);
    let mut all = part1;
    all.extend(part2);
    assert_contiguous(&all, all[0].first_seq.unwrap_or(all[0].seq));
    assert_eq!(text_of(&all, &turn_id), app.expected_answer(prompt));
}

#[tokio::test]
async fn long_poll_returns_the_same_events_as_the_websocket() {
    let app = TestApp::spawn().await;
    let sid = uid("s");
    let mut ws = app.client(0, &sid).await;
    let epoch = ws.epoch();
    let (turn, _) = ws.send_and_ack(&uid("m"), "poll me").await;
    ws.until_end(&turn).await;
    let ws_events = ws.events();

    let http = reqwest::Client::new();
    let mut after = ws.welcome_seq();
    let end = ws_events.last().unwrap().seq;
    let mut polled: Vec<Event> = Vec::new();
    while after < end {
        let url = format!("{}/v1/sessions/{sid}/events?after={after}&epoch={epoch}&wait_ms=2000", app.http(0));
        let body: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        let events = body["events"].as_array().expect("events, not a snapshot").clone();
        assert!(!events.is_empty(), "the events exist, so the poll returns at once");
        after = body["seq"].as_u64().unwrap();
        polled.extend(events.into_iter().map(|e| serde_json::from_value::<Event>(e).unwrap()));
    }
    // The WebSocket may merge deltas when its queue holds several (first_seq); long-poll sends
    // each stored event. Same coverage, same non-delta events, same text.
    assert_contiguous(&polled, ws.welcome_seq() + 1);
    assert_contiguous(&ws_events, ws.welcome_seq() + 1);
    assert!(polled.iter().all(|e| e.first_seq.is_none()));
    let not_deltas = |v: &[Event]| -> Vec<Event> {
        v.iter().filter(|e| !matches!(e.body, EventBody::Delta { .. })).cloned().collect()
    };
    assert_eq!(not_deltas(&polled), not_deltas(&ws_events));
    assert_eq!(text_of(&polled, &turn), text_of(&ws_events, &turn));
    assert_eq!(text_of(&polled, &turn), app.expected_answer("poll me"));
}

#[tokio::test]
async fn long_poll_waits_for_the_next_event_and_returns_empty_at_the_deadline() {
    let app = TestApp::spawn().await;
    let sid = uid("s");
    let ws = app.client(0, &sid).await;
    let (epoch, seq) = (ws.epoch(), ws.welcome_seq());
    let http = reqwest::Client::new();
    let url = format!("{}/v1/sessions/{sid}/events?after={seq}&epoch={epoch}&wait_ms=100", app.http(0));
    let body: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["events"], serde_json::json!([]));
    assert_eq!(body["seq"].as_u64(), Some(seq));
    // A poll that is waiting when the message is sent returns it.
    let url = format!("{}/v1/sessions/{sid}/events?after={seq}&epoch={epoch}&wait_ms=10000", app.http(0));
    let poll = tokio::spawn(async move { reqwest::get(url).await.unwrap().json::<Value>().await.unwrap() });
    let ack = post_send(&app, &sid, &uid("m"), "wake the poll").await;
    assert!(matches!(ack, ControlMsg::Ack { .. }));
    let body = poll.await.unwrap();
    assert_eq!(body["events"][0]["type"], "user_message");
}

#[tokio::test]
async fn http_cancel_stops_a_queued_or_running_turn_and_unknown_turns_are_404() {
    let mut s = test_settings();
    s.model.demo.ttft_ms = 3000;
    let app = TestApp::spawn_with(s).await;
    let sid = uid("s");
    let mut ws = app.client(0, &sid).await;
    let ControlMsg::Ack { turn_id, .. } = post_send(&app, &sid, &uid("m"), "cancel me").await else { panic!() };
    let http = reqwest::Client::new();
    let url = format!("{}/v1/sessions/{sid}/turns/{turn_id}/cancel", app.http(0));
    assert_eq!(http.post(&url).send().await.unwrap().status(), 202);
    let events = ws.until_end(&turn_id).await;
    assert!(matches!(events.last().unwrap().body, EventBody::Cancelled { .. }));
    let url = format!("{}/v1/sessions/{sid}/turns/nosuchturn/cancel", app.http(0));
    let r = http.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
}
