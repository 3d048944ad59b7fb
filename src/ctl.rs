//! `chatfleet ctl`: the operator's tool. Queue state per partition, workers and their turns, dead
//! letters (list, show, replay), stopping a turn by id, and the routing rules with their canary
//! splits ([`routes`], from settings, no Redis). Every command prints a table for people or, with
//! `--json`, one JSON document for scripts ([`run_json`]).

mod routes;

use std::collections::HashMap;
use std::fmt::Write as _;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::store::{entry_ms, CancelOutcome, EnqueueOutcome, Store};

/// `chatfleet ctl [--json] <command>`.
#[derive(Debug, Clone, clap::Args)]
pub struct CtlArgs {
    /// Print one JSON document instead of a table (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// Operator commands.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Per-partition length, lag, pending and oldest age; then the workers and their turns.
    Status,
    /// Dead-lettered turns.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Stop a turn (queued or running) by its id.
    Cancel { turn_id: String },
    /// The routing rules and each rule's canary split, and the retrieval rules, as the settings
    /// given read them (no Redis needed). With `--session`, which side that session is on.
    Routes {
        /// Tenant of `--session`.
        #[arg(long, default_value = "")]
        tenant: String,
        #[arg(long)]
        session: Option<String>,
    },
}

/// Dead-letter commands. Entries are named `<partition>/<entry id>`.
#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        count: u64,
    },
    /// Show one dead letter and its turn.
    Show { id: String },
    /// Run a dead-lettered turn again: its user message becomes a new turn of the same session.
    Replay { id: String },
}

/// What a command found: the text for people and the same as JSON for scripts.
struct Output {
    text: String,
    json: Value,
}

/// `chatfleet ctl routes`: what to print, as text or JSON.
pub fn routes(
    settings: &crate::settings::Settings,
    tenant: &str,
    session: Option<&str>,
    json: bool,
) -> anyhow::Result<String> {
    let (mut text, mut doc) = routes::routes(settings)?;
    if let Some(sid) = session {
        let side = routes::session_variant(settings, tenant, sid);
        writeln!(text, "\nsession {sid} (tenant `{tenant}`): {side}")?;
        doc["session"] = json!({"session_id": sid, "tenant": tenant, "route": side});
    }
    Ok(if json { format!("{doc}\n") } else { text })
}

/// Runs a ctl command and returns what to print.
pub async fn run(store: &Store, cmd: CtlCommand) -> anyhow::Result<String> {
    Ok(exec(store, cmd).await?.text)
}

/// Runs a ctl command and returns its result as JSON (`chatfleet ctl --json …`).
pub async fn run_json(store: &Store, cmd: CtlCommand) -> anyhow::Result<Value> {
    Ok(exec(store, cmd).await?.json)
}

async fn exec(store: &Store, cmd: CtlCommand) -> anyhow::Result<Output> {
    match cmd {
        CtlCommand::Status => status(store).await,
        CtlCommand::Dlq(DlqCommand::List { count }) => dlq_list(store, count).await,
        CtlCommand::Dlq(DlqCommand::Show { id }) => dlq_show(store, &id).await,
        CtlCommand::Dlq(DlqCommand::Replay { id }) => dlq_replay(store, &id).await,
        CtlCommand::Cancel { turn_id } => cancel(store, &turn_id).await,
        CtlCommand::Routes { .. } => anyhow::bail!("`routes` reads settings, not Redis: use ctl::routes"),
    }
}

async fn status(store: &Store) -> anyhow::Result<Output> {
    let mut out = String::new();
    let (mut parts_json, mut turns_json) = (Vec::new(), Vec::new());
    let header = ("partition", "length", "lag", "pending", "oldest_ms", "node");
    writeln!(out, "{:>9} {:>8} {:>8} {:>8} {:>12}  {}", header.0, header.1, header.2, header.3, header.4, header.5)?;
    let (mut total_lag, mut total_pending) = (0, 0);
    // Per node (in Cluster): partitions, streams' length and pending, to spot a hot node.
    let mut per_node: std::collections::BTreeMap<String, (u32, u64, u64)> = Default::default();
    for p in 0..store.keys().partitions() {
        let s = store.partition_stats(p).await?;
        total_lag += s.lag;
        total_pending += s.pending;
        let node = store.node_of(&store.keys().stream(p));
        let n = per_node.entry(node.clone()).or_default();
        *n = (n.0 + 1, n.1 + s.length, n.2 + s.pending);
        parts_json.push(json!({"partition": p, "length": s.length, "lag": s.lag, "pending": s.pending,
            "oldest_age_ms": s.oldest_age_ms, "node": node}));
        if s.length > 0 || s.pending > 0 {
            writeln!(out, "{:>9} {:>8} {:>8} {:>8} {:>12}  {}", p, s.length, s.lag, s.pending, s.oldest_age_ms, node)?;
        }
    }
    writeln!(out, "total: lag {total_lag}, pending {total_pending} (partitions with nothing queued are not listed)")?;
    writeln!(out, "\n{:<24} {:>10} {:>8} {:>8}", "node", "partitions", "length", "pending")?;
    let mut nodes_json = Vec::new();
    for (node, (parts, length, pending)) in per_node {
        writeln!(out, "{node:<24} {parts:>10} {length:>8} {pending:>8}")?;
        nodes_json.push(json!({"node": node, "partitions": parts, "length": length, "pending": pending}));
    }
    writeln!(out, "\n{:<28} {:>8} {:<34} {:<10} {:>7}", "worker", "pending", "turn", "status", "attempt")?;
    for p in 0..store.keys().partitions() {
        for t in store.pending_turns(p, 1000).await? {
            let get = |k: &str| t.fields.get(k).cloned().unwrap_or_else(|| "-".into());
            writeln!(out, "{:<28} {:>8} {:<34} {:<10} {:>7}", t.worker, p, t.turn_id, get("status"), get("attempt"))?;
            turns_json.push(json!({"worker": t.worker, "partition": p, "turn_id": t.turn_id,
                "status": get("status"), "attempt": get("attempt")}));
        }
    }
    let json = json!({"partitions": parts_json, "total": {"lag": total_lag, "pending": total_pending},
        "nodes": nodes_json, "turns": turns_json});
    Ok(Output { text: out, json })
}

fn parse_id(id: &str) -> anyhow::Result<(u16, &str)> {
    let (p, entry) =
        id.split_once('/').ok_or_else(|| anyhow::anyhow!("dead letter ids look like <partition>/<entry id>"))?;
    Ok((p.parse()?, entry))
}

async fn dlq_entry(store: &Store, id: &str) -> anyhow::Result<(u16, HashMap<String, String>)> {
    let (p, entry) = parse_id(id)?;
    let fields = store.dead_letter(p, entry).await?.ok_or_else(|| anyhow::anyhow!("no dead letter {id}"))?;
    Ok((p, fields))
}

async fn dlq_list(store: &Store, count: u64) -> anyhow::Result<Output> {
    let mut rows = Vec::new();
    for p in 0..store.keys().partitions() {
        let entries = store.dead_letters(p, count).await?;
        rows.extend(entries.into_iter().map(|(id, f)| (p, id, f)));
    }
    rows.sort_by_key(|(_, id, _)| std::cmp::Reverse(entry_ms(id).unwrap_or(0)));
    rows.truncate(count as usize);
    let mut out = format!("{:<24} {:<34} {:<22} {}\n", "id", "turn", "reason", "detail");
    let mut json = Vec::new();
    for (p, id, f) in rows {
        let get = |k: &str| f.get(k).cloned().unwrap_or_default();
        writeln!(out, "{:<24} {:<34} {:<22} {}", format!("{p}/{id}"), get("t"), get("reason"), get("detail"))?;
        json.push(
            json!({"id": format!("{p}/{id}"), "turn_id": get("t"), "reason": get("reason"), "detail": get("detail")}),
        );
    }
    Ok(Output { text: out, json: Value::Array(json) })
}

async fn dlq_show(store: &Store, id: &str) -> anyhow::Result<Output> {
    let (_, fields) = dlq_entry(store, id).await?;
    let mut out = String::new();
    let mut keys: Vec<_> = fields.iter().collect();
    keys.sort();
    for (k, v) in keys {
        writeln!(out, "{k}: {v}")?;
    }
    let mut json = json!({"id": id, "entry": fields, "turn": null});
    if let (Some(base), Some(tid)) = (fields.get("b"), fields.get("t")) {
        let turn = store.turn_fields(base, tid).await?;
        let mut keys: Vec<_> = turn.iter().filter(|(k, _)| k.as_str() != "opts").collect();
        keys.sort();
        writeln!(out, "turn:")?;
        for (k, v) in &keys {
            writeln!(out, "  {k}: {v}")?;
        }
        json["turn"] = keys.into_iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    }
    Ok(Output { text: out, json })
}

async fn dlq_replay(store: &Store, id: &str) -> anyhow::Result<Output> {
    let (p, fields) = dlq_entry(store, id).await?;
    let (Some(base), Some(tid)) = (fields.get("b"), fields.get("t")) else {
        anyhow::bail!("dead letter {id} names no turn (its payload was lost); nothing to replay")
    };
    let (text, opts) = store.turn_message(base, tid).await?;
    let text = text.ok_or_else(|| anyhow::anyhow!("turn {tid} has expired; nothing to replay"))?;
    // The dead turn's options (e.g. the model the client asked for) carry over to the replay.
    let keys = store.keys().session_of_base(p, base.clone());
    let new_tid = uuid::Uuid::now_v7().simple().to_string();
    let epoch = uuid::Uuid::new_v4().simple().to_string();
    // The client_msg_id is derived from the dead turn, so replaying twice makes one new turn.
    let cmid = format!("replay.{tid}");
    // The operator acts for the session's owner: "*" passes the owner check.
    // The dead turn's attachments ride in its options; the replayed message carries them again.
    let attachments = crate::payload::decode_turn_opts(&opts).map(|o| o.attachments).unwrap_or_default();
    let msg = crate::store::NewMessage { client_msg_id: &cmid, text: &text, attachments: &attachments, follower: "" };
    match store.enqueue_turn(&keys, &new_tid, &msg, &epoch, &opts, "*").await? {
        EnqueueOutcome::New { turn_id, .. } | EnqueueOutcome::Duplicate { turn_id, .. } => {
            let (_, entry) = parse_id(id)?;
            store.delete_dead_letter(p, entry).await?;
            let json = json!({"id": id, "replayed": tid, "turn_id": turn_id});
            Ok(Output { text: format!("replayed {tid} as turn {turn_id}\n"), json })
        }
        EnqueueOutcome::Busy { active_turn } => {
            anyhow::bail!("the session is running turn {active_turn}; replay again after it ends")
        }
        EnqueueOutcome::Forbidden => unreachable!("the operator passes the owner check"),
        EnqueueOutcome::Missing => unreachable!("a plain enqueue creates a missing session"),
        EnqueueOutcome::Quota(_) => unreachable!("a replay takes no quota slot"),
    }
}

async fn cancel(store: &Store, turn_id: &str) -> anyhow::Result<Output> {
    let Some(keys) = store.find_queued_turn(turn_id).await? else {
        anyhow::bail!("no waiting or running turn {turn_id}")
    };
    let (text, mut json) = match store.cancel_turn(&keys, turn_id).await? {
        CancelOutcome::Cancelled { .. } => {
            (format!("turn {turn_id} was queued; cancelled\n"), json!({"outcome": "cancelled"}))
        }
        CancelOutcome::Cancelling { worker } => {
            (format!("turn {turn_id} is stopping on {worker}\n"), json!({"outcome": "stopping", "worker": worker}))
        }
        CancelOutcome::Ended { status } => {
            (format!("turn {turn_id} had already ended: {status}\n"), json!({"outcome": "ended", "status": status}))
        }
        CancelOutcome::Unknown => (format!("turn {turn_id} has expired\n"), json!({"outcome": "expired"})),
    };
    json["turn_id"] = turn_id.into();
    Ok(Output { text, json })
}
