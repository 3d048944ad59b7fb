//! The Redis side of the archive (src/archive): the per-partition streams of finished turns that
//! `end_turn` appends to when archiving is on, their consumer group, and the two ops that bring a
//! session back from the archive (`restore`) and erase one (`erase`), both resend-safe.
//!
//! Entries are acked *and deleted* once PostgreSQL committed them, so a stream holds only the
//! backlog: its length is the archive's lag, and an erasure scans only what is not archived yet.

use std::collections::HashMap;

use bytes::Bytes;
use fred::prelude::*;

use super::ops::OpBuilder;
use super::reply::Reply;
use super::{Store, StoreError};
use crate::keys::{turn_block, SessionKeys};
use crate::payload::{self, HistoryMessage};

/// Rounds of `erase` a session may take: each names the turns that appeared since the last
/// (a send racing the erasure); two are the rule (the first names the turns, the second erases).
const ERASE_ROUNDS: usize = 4;

/// Consumer group of the archivers on every archive stream.
pub const ARCHIVE_GROUP: &str = "archivers";

/// A finished turn as `end_turn` appended it to the archive stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedTurn {
    /// The session base (`<prefix>:{pNN}:s:<tenant>:<sid>`).
    pub base: String,
    pub tenant: String,
    pub session_id: String,
    pub turn_id: String,
    /// `done`, `error` or `cancelled`.
    pub outcome: String,
    pub user_text: String,
    /// The assistant's message, when one went into history (not for a turn cancelled before
    /// any text).
    pub assistant_text: Option<String>,
    /// The user who sent the turn (from the turn's options), when the gateway knew it.
    pub user_id: Option<String>,
    /// The user message's attachments (from the turn's options).
    pub attachments: Vec<payload::Attachment>,
    pub created_ms: i64,
    pub finished_ms: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub error_code: String,
    pub error_message: String,
    pub upstream: String,
    pub model: String,
    pub template: String,
    /// The session's summary (turn id it covers up to, text), when it had one.
    pub summary: Option<(String, String)>,
}

/// One archive stream entry delivered to an archiver.
#[derive(Debug, Clone)]
pub struct ArchiveEntry {
    pub partition: u16,
    pub id: String,
    /// `None` when the entry was deleted while pending (an erasure took it); it is only acked.
    /// `Some(Err)` when it cannot be decoded (it is counted, logged and acked).
    pub turn: Option<Result<FinishedTurn, String>>,
}

/// What an erasure removed from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Erased {
    /// Server time of the erasure (ms): archive entries of the session finished up to then are
    /// refused by the archive.
    pub at_ms: i64,
    pub keys: i64,
    pub archive_entries: i64,
}

impl Store {
    /// The archive stream of partition `p` (same hash tag as the partition's sessions).
    pub fn archive_stream(&self, p: u16) -> String {
        self.keys.archive(p)
    }

    /// True when turn ends are appended to the archive streams.
    pub fn archiving(&self) -> bool {
        self.archive_max > 0
    }

    /// The key that ops which can end a turn (`finish`, `cancel`, `reclaim`) declare after the
    /// stream and dead-letter keys when archiving is on (lua/chatfleet.lua, "Keys").
    pub(super) fn archive_key(&self, p: u16) -> Option<String> {
        self.archiving().then(|| self.keys.archive(p))
    }

    /// Creates the archivers' group on every partition's archive stream, if missing.
    pub async fn ensure_archive_groups(&self) -> Result<(), StoreError> {
        let creates = (0..self.keys().partitions()).map(|p| {
            let stream = self.archive_stream(p);
            async move { self.redis().ensure_group(&stream, ARCHIVE_GROUP).await }
        });
        futures::future::try_join_all(creates).await?;
        Ok(())
    }

    /// XREADGROUP over every partition's archive stream on `reader` (a dedicated client: the
    /// BLOCK holds its connection). `pending`: re-read this consumer's own unacked entries
    /// (after a restart with the same name) instead of new ones.
    pub async fn read_archive_all(
        &self,
        reader: &super::Dedicated,
        consumer: &str,
        count: u64,
        block_ms: u64,
        pending: bool,
    ) -> Result<Vec<ArchiveEntry>, StoreError> {
        let parts = self.keys().partitions();
        let streams: Vec<String> = (0..parts).map(|p| self.archive_stream(p)).collect();
        let ids: Vec<&str> = vec![if pending { "0" } else { ">" }; parts as usize];
        let block = (!pending).then_some(block_ms);
        // A per-call timeout above the BLOCK (the reader has no default command timeout).
        let timeout = std::time::Duration::from_millis(block_ms + self.redis().settings().command_timeout_ms);
        let v: Value = reader
            .client()
            .with_options(&Options { timeout: Some(timeout), ..Default::default() })
            .xreadgroup(ARCHIVE_GROUP, consumer, Some(count), block, false, streams, ids)
            .await?;
        self.parse_xread(v)
    }

    /// Non-blocking XREADGROUP of one partition (Redis Cluster: streams of several slots cannot
    /// be read in one call).
    pub async fn read_archive(&self, p: u16, consumer: &str, count: u64) -> Result<Vec<ArchiveEntry>, StoreError> {
        let v: Value = self
            .redis()
            .client()
            .xreadgroup(ARCHIVE_GROUP, consumer, Some(count), None, false, self.archive_stream(p), ">")
            .await?;
        self.parse_xread(v)
    }

    /// Takes over entries of partition `p` that another archiver left unacked for `min_idle_ms`
    /// (it died mid-batch). Entries deleted meanwhile are acked here.
    pub async fn claim_archive(
        &self,
        p: u16,
        consumer: &str,
        min_idle_ms: u64,
        count: u64,
    ) -> Result<Vec<ArchiveEntry>, StoreError> {
        let stream = self.archive_stream(p);
        let v: Value = self
            .redis()
            .client()
            .xautoclaim(&stream, ARCHIVE_GROUP, consumer, min_idle_ms, "0-0", Some(count), false)
            .await?;
        let mut r = Reply::new("XAUTOCLAIM", v)?;
        let _cursor = r.string()?;
        let mut out = entries(p, r.array()?)?;
        if r.len() > 0 {
            let mut deleted = r.array()?;
            while deleted.len() > 0 {
                out.push(ArchiveEntry { partition: p, id: deleted.string()?, turn: None });
            }
        }
        Ok(out)
    }

    /// Acks and deletes archived entries of partition `p`.
    pub async fn ack_archive(&self, p: u16, ids: Vec<String>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let stream = self.archive_stream(p);
        let c = self.redis().client();
        let _: i64 = c.xack(&stream, ARCHIVE_GROUP, ids.clone()).await?;
        let _: i64 = c.xdel(&stream, ids).await?;
        Ok(())
    }

    /// Finished turns not archived yet, over all partitions (the archive's lag).
    pub async fn archive_backlog(&self) -> Result<u64, StoreError> {
        let lens = (0..self.keys().partitions()).map(|p| {
            let stream = self.archive_stream(p);
            async move { self.redis().client().xlen::<u64, _>(stream).await }
        });
        Ok(futures::future::try_join_all(lens).await?.into_iter().sum())
    }

    /// Rebuilds a session that Redis no longer has from archived history (oldest first) and
    /// summary (upto, text, template), under the new `epoch`. `owner`: who the session is bound
    /// to if its meta is gone too (an actor, see [`super::Actor`]). False when the session has
    /// something live (nothing changed).
    pub async fn restore_session(
        &self,
        s: &SessionKeys,
        epoch: &str,
        owner: &str,
        history: &[HistoryMessage],
        summary: Option<(&str, &str, &str)>,
    ) -> Result<bool, StoreError> {
        let (upto, text, template) = summary.unwrap_or(("", "", ""));
        let mut b = OpBuilder::session("restore", &s.base).str(epoch).str(owner).str(upto).str(text).str(template);
        for m in history {
            b = b.bin(&payload::encode_history(m));
        }
        Ok(self.op(&s.base, b.build()).await?.int()? == 1)
    }

    /// Erases a session's data from Redis (the `erase` op): its keys, its turns' keys, and its
    /// entries still waiting in the archive stream (up to `scan_max` looked at).
    pub async fn erase_session(&self, s: &SessionKeys, scan_max: u64) -> Result<Erased, StoreError> {
        let archive = self.archive_key(s.partition);
        let mut turns: Vec<String> = Vec::new();
        for _ in 0..ERASE_ROUNDS {
            let mut b = OpBuilder::session("erase", &s.base).uint(scan_max).uint(u64::from(archive.is_some()));
            b = b.keys(archive.clone());
            for t in &turns {
                b = b.keys(turn_block(&s.base, t)).str(t);
            }
            let mut r = self.op(&s.base, b.build()).await?;
            match r.string()?.as_str() {
                "erased" => return Ok(Erased { at_ms: r.int()?, keys: r.int()?, archive_entries: r.int()? }),
                "more" => {
                    let mut missing = r.array()?;
                    while missing.len() > 0 {
                        turns.push(missing.string()?);
                    }
                }
                other => return Err(r.bad(format!("unknown status {other}"))),
            }
        }
        Err(StoreError::Reply {
            function: "erase",
            detail: format!("new turns kept arriving for {ERASE_ROUNDS} rounds"),
        })
    }

    /// Entries of an XREADGROUP reply: `[[stream, [[id, fields] ...]] ...]`, or nil (no data).
    fn parse_xread(&self, v: Value) -> Result<Vec<ArchiveEntry>, StoreError> {
        if v.is_null() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut streams = Reply::new("XREADGROUP", v)?;
        while streams.len() > 0 {
            let mut s = streams.array()?;
            let name = s.string()?;
            let p = crate::keys::Keyspace::partition_in(&name).ok_or_else(|| s.bad("stream without partition"))?;
            out.extend(entries(p, s.array()?)?);
        }
        Ok(out)
    }
}

/// `[[id, [field, value, ...] | nil] ...]` of partition `p`.
fn entries(p: u16, mut list: Reply) -> Result<Vec<ArchiveEntry>, StoreError> {
    let mut out = Vec::with_capacity(list.len());
    while list.len() > 0 {
        let mut e = list.array()?;
        let id = e.string()?;
        let turn = match e.array() {
            Ok(mut f) => {
                let mut fields = HashMap::new();
                while f.len() > 1 {
                    fields.insert(f.string()?, f.bytes()?);
                }
                Some(decode(fields))
            }
            // A pending entry deleted since its delivery comes back with nil fields.
            Err(_) => None,
        };
        out.push(ArchiveEntry { partition: p, id, turn });
    }
    Ok(out)
}

/// A [`FinishedTurn`] from an entry's fields.
fn decode(mut f: HashMap<String, Bytes>) -> Result<FinishedTurn, String> {
    let opts = f.remove("opts").unwrap_or_default();
    let mut text = |k: &str| -> Result<String, String> {
        let b = f.remove(k).unwrap_or_default();
        String::from_utf8(b.to_vec()).map_err(|_| format!("field {k} is not UTF-8"))
    };
    let base = text("b")?;
    // `<prefix>:{pNN}:s:<tenant>:<sid>`: components never contain ':' (keys::is_valid_component).
    let parts: Vec<&str> = base.split(':').collect();
    let [_, _, "s", tenant, session_id] = parts[..] else { return Err(format!("bad session base {base:?}")) };
    let (tenant, session_id) = (tenant.to_string(), session_id.to_string());
    let num = |s: String, k: &str| s.parse::<i64>().map_err(|_| format!("field {k} is not a number"));
    let opts = payload::decode_turn_opts(&opts).map_err(|e| format!("opts: {e}"))?;
    let (user_id, attachments) = (opts.owner, opts.attachments);
    let assistant = text("a")?;
    let pushed = text("ah")? == "1";
    let (su, st) = (text("su")?, text("st")?);
    Ok(FinishedTurn {
        turn_id: text("t")?,
        outcome: text("o")?,
        user_text: text("u")?,
        assistant_text: pushed.then_some(assistant),
        user_id,
        attachments,
        created_ms: num(text("c")?, "c")?,
        finished_ms: num(text("f")?, "f")?,
        prompt_tokens: num(text("pt")?, "pt")?,
        completion_tokens: num(text("ct")?, "ct")?,
        error_code: text("ec")?,
        error_message: text("em")?,
        upstream: text("up")?,
        model: text("mo")?,
        template: text("tv")?,
        summary: (!su.is_empty()).then_some((su, st)),
        base,
        tenant,
        session_id,
    })
}
