//! Canary rollouts end to end: a routing rule sends a share of sessions to a variant (another
//! upstream and system prompt), two sessions on either side get answered by the expected real
//! HTTP upstream, keep their side on every turn, and a rollback (`percent = 0`) moves new turns
//! back to the rule's own chain.

use chatfleet::settings::Settings;
use chatfleet::upstream::canary::in_canary;
use chatfleet::upstream::settings::{Canary, RouteRule};
use serde_json::json;

use crate::fake_llm::*;
use crate::helpers::*;
use crate::upstreams::{openai, spawn, turn_hash, with_upstreams};

fn canary(percent: f64) -> Canary {
    Canary {
        name: "trial".into(),
        percent,
        chain: vec!["b".into()],
        system_prompt: Some("You are the trial assistant.".into()),
        template_version: None,
    }
}

fn settings(a: &Fake, b: &Fake, percent: f64) -> Settings {
    let mut s =
        with_upstreams(vec![("a", openai(a, "model-a", json!({}))), ("b", openai(b, "model-b", json!({})))], &["a"]);
    s.context.system_prompt = "You are the usual assistant.".into();
    s.routing.rules.push(RouteRule { chain: vec!["a".into()], canary: Some(canary(percent)), ..Default::default() });
    s
}

/// A session id on the given side of the 30% split.
fn session_on(variant: bool) -> String {
    let c = canary(30.0);
    std::iter::repeat_with(|| uid("s")).find(|sid| in_canary(&c, sid) == variant).unwrap()
}

/// One turn; returns its answer and the turn's Redis hash.
async fn turn(app: &TestApp, sid: &str) -> (String, std::collections::HashMap<String, String>) {
    let mut c = app.client(0, sid).await;
    let (t, _) = c.send_and_ack(&uid("m"), "hello there").await;
    let answer = text_of(&c.until_end(&t).await, &t);
    (answer, turn_hash(app, sid, &t).await)
}

#[tokio::test]
async fn sessions_on_either_side_of_a_split_keep_their_upstream_and_a_rollback_moves_them_back() {
    let hits = HitLog::default();
    let a = Fake::start("a", &hits, vec![], stream(events(&openai_text(&["from ", "a"], (2, 2)), 0))).await;
    let b = Fake::start("b", &hits, vec![], stream(events(&openai_text(&["from ", "b"], (2, 2)), 0))).await;
    let (control, trial) = (session_on(false), session_on(true));

    let app = spawn(settings(&a, &b, 30.0)).await;
    for round in 0..2 {
        let (answer, h) = turn(&app, &control).await;
        assert_eq!((answer.as_str(), h["upstream"].as_str(), h["template"].as_str()), ("from a", "a", "v1"), "{round}");
        let (answer, h) = turn(&app, &trial).await;
        assert_eq!((answer.as_str(), h["upstream"].as_str(), h["template"].as_str()), ("from b", "b", "v1+trial"));
    }
    assert_eq!(*hits.lock().unwrap(), ["a", "b", "a", "b"]);
    // Each side got its own system prompt.
    let system = |f: &Fake| f.bodies().iter().map(|b| b["messages"][0]["content"].to_string()).collect::<Vec<_>>();
    assert_eq!(system(&a), ["\"You are the usual assistant.\""; 2]);
    assert_eq!(system(&b), ["\"You are the trial assistant.\""; 2]);
    let m = app.metrics.render();
    for variant in ["control", "trial"] {
        let line = m
            .lines()
            .find(|l| {
                l.starts_with("chatfleet_variant_turns_total{")
                    && l.contains(&format!("variant=\"{variant}\""))
                    && l.contains("outcome=\"done\"")
            })
            .unwrap_or_else(|| panic!("no done turns of {variant}:\n{m}"));
        let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count >= 2.0, "{line}");
    }
    drop(app);

    // Rollback: the same settings with the percentage at 0; the trial session's next turn goes
    // to the rule's own chain and prompt.
    let app = spawn(settings(&a, &b, 0.0)).await;
    let (answer, h) = turn(&app, &trial).await;
    assert_eq!((answer.as_str(), h["upstream"].as_str(), h["template"].as_str()), ("from a", "a", "v1"));
}
