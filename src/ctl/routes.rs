//! `chatfleet ctl routes`: the routing rules as this process's settings read them, with each
//! rule's canary split (which share of its sessions gets which chain, prompt and template), and
//! the retrieval rules. It reads settings only: run it with the config the workers use.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::model::RouteHints;
use crate::settings::Settings;
use crate::upstream::canary::CONTROL;
use crate::upstream::settings::RouteRule;

/// The routes as a table and as JSON.
pub fn routes(s: &Settings) -> anyhow::Result<(String, Value)> {
    let mut out = String::new();
    let mut rules_json = Vec::new();
    writeln!(
        out,
        "{:<8} {:<32} {:<16} {:>8}  {:<24} {:<14} template",
        "rule", "matches", "variant", "share", "chain", "system prompt"
    )?;
    let template = &s.context.template_version;
    let row = |out: &mut String,
               rule: &str,
               matches: &str,
               variant: &str,
               pct: f64,
               chain: &[String],
               prompt: &str,
               tpl: &str| {
        writeln!(out, "{rule:<8} {matches:<32} {variant:<16} {pct:>7.2}%  {:<24} {prompt:<14} {tpl}", chain.join(","))
    };
    for (i, r) in s.routing.rules.iter().enumerate() {
        let matches = conditions(r);
        let mut split = Vec::new();
        let canary_pct = r.canary.as_ref().map_or(0.0, |c| c.percent);
        row(&mut out, &i.to_string(), &matches, CONTROL, 100.0 - canary_pct, &r.chain, "context", template)?;
        split.push(json!({"variant": CONTROL, "percent": 100.0 - canary_pct, "chain": r.chain,
            "system_prompt": "context", "template": template}));
        if let Some(c) = &r.canary {
            let chain = if c.chain.is_empty() { &r.chain } else { &c.chain };
            let prompt = match &c.system_prompt {
                Some(p) => format!("own ({} B)", p.len()),
                None => "context".into(),
            };
            let tpl = c.template_version.clone().unwrap_or_else(|| format!("{template}+{}", c.name));
            row(&mut out, &i.to_string(), &matches, &c.name, c.percent, chain, &prompt, &tpl)?;
            split.push(json!({"variant": c.name, "percent": c.percent, "chain": chain,
                "system_prompt": if c.system_prompt.is_some() { "own" } else { "context" }, "template": tpl}));
        }
        rules_json.push(json!({"rule": i, "matches": matches, "split": split}));
    }
    row(&mut out, "default", "(no rule matched)", CONTROL, 100.0, &s.routing.default, "context", template)?;
    let enabled = s.archive.enabled() && !s.retrieval.rules.is_empty();
    writeln!(out, "\nretrieval: {}", if enabled { "on" } else { "off (needs archive.url and a rule)" })?;
    let mut retrieval_json = Vec::new();
    for (i, r) in s.retrieval.rules.iter().enumerate() {
        let mut m = Vec::new();
        r.tenant.iter().for_each(|t| m.push(format!("tenant={t}")));
        r.flag.iter().for_each(|f| m.push(format!("flag={f}")));
        r.model.iter().for_each(|x| m.push(format!("model={x}")));
        let matches = if m.is_empty() { "(every session)".to_string() } else { m.join(" ") };
        writeln!(out, "{i:<8} {matches:<32} collection {}", r.collection)?;
        retrieval_json.push(json!({"rule": i, "matches": matches, "collection": r.collection}));
    }
    let json = json!({
        "rules": rules_json,
        "default": {"chain": s.routing.default, "template": template},
        "retrieval": {"enabled": enabled, "rules": retrieval_json},
    });
    Ok((out, json))
}

/// A rule's conditions as `key=value` words.
fn conditions(r: &RouteRule) -> String {
    let mut m = Vec::new();
    r.tenant.iter().for_each(|t| m.push(format!("tenant={t}")));
    r.flag.iter().for_each(|f| m.push(format!("flag={f}")));
    r.model.iter().for_each(|x| m.push(format!("model={x}")));
    r.min_message_chars.iter().for_each(|n| m.push(format!("chars>={n}")));
    r.max_message_chars.iter().for_each(|n| m.push(format!("chars<={n}")));
    if m.is_empty() {
        "(every session)".into()
    } else {
        m.join(" ")
    }
}

/// Which side of every rule's split a session is on (for `chatfleet ctl routes --session`).
pub fn session_variant(s: &Settings, tenant: &str, session_id: &str) -> String {
    let h = RouteHints { tenant: tenant.into(), session_id: session_id.into(), ..Default::default() };
    let route = s.routing.route(&h);
    match route.rule {
        Some(i) => format!("rule {i}, variant {}, chain {}", route.label(), route.chain.join(",")),
        None => format!("default chain {}", route.chain.join(",")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::settings::{Canary, RouteRule};

    #[test]
    fn each_rule_shows_its_split_in_text_and_json() {
        let mut s = Settings::defaults();
        s.routing.rules.push(RouteRule {
            tenant: Some("acme".into()),
            chain: vec!["demo".into()],
            canary: Some(Canary {
                name: "trial".into(),
                percent: 12.5,
                system_prompt: Some("be terse".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let (text, json) = routes(&s).unwrap();
        assert!(text.contains("trial") && text.contains("12.50%") && text.contains("87.50%"), "{text}");
        assert_eq!(json["rules"][0]["split"][1]["variant"], "trial");
        assert_eq!(json["rules"][0]["split"][1]["percent"], 12.5);
        assert_eq!(json["rules"][0]["split"][1]["template"], "v1+trial");
        assert_eq!(json["rules"][0]["split"][0]["percent"], 87.5);
        assert_eq!(json["retrieval"]["enabled"], false);
    }
}
