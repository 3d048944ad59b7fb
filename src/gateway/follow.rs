//! Following one turn on its session's feed, for the ingresses that answer a request with that
//! turn's answer (OpenAI Chat Completions, the AI SDK's UI message stream).
//!
//! The request joins the session channel before it sends, and the send counts it as watching the
//! session, so it follows its turn without an open of its own ([`TurnFeed::send`]). It reads
//! through the same [`Feed`] as every other transport, so it gets the same ordering,
//! gap filling and resync rules; it only keeps the events of its turn and turns a snapshot (sent
//! when the log cannot fill a gap, or to a resume without a seq) into the text not yet handed out.
//!
//! With `cancel_on_drop`, dropping a [`TurnFeed`] before its turn ended (the client closed the
//! HTTP stream) asks for the turn to stop, so a closed tab does not keep a model generating.

use super::sse::feed_error;
use std::collections::VecDeque;

use super::commands;
use super::error::ApiError;
use super::feed::{Feed, Item};
use super::hub::Subscription;
use super::{App, ConnGuard};
use crate::keys::SessionKeys;
use crate::protocol::{ControlMsg, EventBody, Usage};

/// What the turn did next.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// More text of the answer.
    Text(String),
    /// The turn is being generated again from the start (another worker took it over): the text
    /// handed out so far is void.
    Reset,
    /// A tool call's state changed (`running`, `done`, `failed`, `timed_out`).
    Tool { name: String, state: String },
    /// The turn ended.
    End(Ending),
}

/// How the turn ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// Answered; the usage is zero when only a snapshot reported the end.
    Done(Usage),
    Cancelled,
    Error {
        code: String,
        message: String,
    },
}

/// Asks for the turn to stop when dropped, unless disarmed.
struct CancelOnDrop {
    app: App,
    keys: SessionKeys,
    turn_id: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (app, keys, turn_id) = (self.app.clone(), self.keys.clone(), std::mem::take(&mut self.turn_id));
        // Bounded by the store's command timeout.
        tokio::spawn(async move {
            if let Err(e) = commands::cancel(&app, &keys, &turn_id).await {
                tracing::warn!(error = %e, turn_id, "cancel after the client left failed");
            }
        });
    }
}

/// One turn's events, from one request's point of view.
pub struct TurnFeed {
    app: App,
    feed: Feed,
    turn_id: String,
    /// Bytes of the current attempt's text already handed out (to continue after a snapshot).
    given: usize,
    queue: VecDeque<Piece>,
    ended: bool,
    cancel: Option<CancelOnDrop>,
    _conn: ConnGuard,
}

impl TurnFeed {
    /// Sends `message` (client_msg_id, text) as a new turn of the session (see
    /// [`commands::send_opts`]) and follows it.
    ///
    /// The session channel is joined before the send (unless `joined` is a membership of it
    /// taken ahead, see [`super::prejoin`]), and the send itself counts this request
    /// as watching the session, so the turn's events all arrive live: no `open_session` round
    /// trip stands between the send and the first token (protocol v1 clients opened their
    /// session before they sent).
    pub async fn send(
        app: &App,
        conn: ConnGuard,
        who: &crate::auth::Identity,
        (keys, joined): (SessionKeys, Option<Subscription>),
        message: (&str, &str),
        opts: &crate::payload::TurnOpts,
        cancel_on_drop: bool,
    ) -> Result<(Self, commands::Sent), ApiError> {
        let (client_msg_id, text) = message;
        let sub = match joined {
            Some(sub) => sub,
            None => app.hub.join(&keys.channel()).await.map_err(|e| feed_error(e.into()))?,
        };
        let conn_id = Feed::new_conn_id();
        let follower = format!("{conn_id:x}");
        let sent = match commands::send_opts(app, who, &keys, client_msg_id, text, opts, &follower).await {
            Ok(sent) => sent,
            Err(e) => {
                // A send that failed in transit may have counted the request; uncount it so the
                // disconnect policy does not wait for a follower that never came.
                if matches!(e, ApiError::Store(_)) {
                    let (store, base) = (app.store.clone(), keys.base.clone());
                    tokio::spawn(async move { store.detach(&base, &follower).await });
                }
                return Err(e);
            }
        };
        let actor = who.actor(keys.session_id(), app.settings.session.bind_to_user);
        let cancel = cancel_on_drop.then(|| CancelOnDrop {
            app: app.clone(),
            keys: keys.clone(),
            turn_id: sent.turn_id.clone(),
            armed: true,
        });
        let feed = Feed::following(&app.store, keys, sub, sent.epoch.clone(), sent.seq, conn_id, actor, sent.fresh);
        let tf = Self {
            app: app.clone(),
            feed,
            turn_id: sent.turn_id.clone(),
            given: 0,
            queue: VecDeque::new(),
            ended: false,
            cancel,
            _conn: conn,
        };
        Ok((tf, sent))
    }

    /// Follows the session's running turn from its first character, or `None` when no turn runs.
    pub async fn active(
        app: &App,
        conn: ConnGuard,
        keys: SessionKeys,
        session_id: &str,
        actor: &str,
        cancel_on_drop: bool,
    ) -> Result<Option<Self>, ApiError> {
        let open = Feed::open(&app.hub, &app.store, keys.clone(), session_id, None, None, true, actor);
        let (feed, opening) = Box::pin(open).await.map_err(feed_error)?;
        let Item::Snapshot(ControlMsg::Snapshot { active: Some(active), .. }) = &opening.first else {
            return Ok(None);
        };
        let turn_id = active.turn_id.clone();
        let cancel =
            cancel_on_drop.then(|| CancelOnDrop { app: app.clone(), keys, turn_id: turn_id.clone(), armed: true });
        let mut tf = Self {
            app: app.clone(),
            feed,
            turn_id,
            given: 0,
            queue: VecDeque::new(),
            ended: false,
            cancel,
            _conn: conn,
        };
        tf.take(opening.first);
        Ok(Some(tf))
    }

    pub fn turn_id(&self) -> &str {
        &self.turn_id
    }

    /// The next piece of the turn; after [`Piece::End`], the feed has nothing more and this
    /// waits forever. Ends with an error when the gateway drains or the feed fails (the client
    /// resumes on the session's feed).
    pub async fn next(&mut self) -> Result<Piece, ApiError> {
        loop {
            if let Some(p) = self.queue.pop_front() {
                return Ok(p);
            }
            if self.ended {
                return std::future::pending().await;
            }
            let item = tokio::select! {
                biased;
                _ = self.app.shutdown.cancelled() => {
                    // The turn goes on; a drain must not stop it.
                    self.disarm();
                    return Err(ApiError::Overloaded("this gateway is draining; resume the turn on its session feed"));
                }
                r = self.feed.next() => r.map_err(feed_error)?,
            };
            self.take(item);
        }
    }

    /// Queues what `item` says about this turn.
    fn take(&mut self, item: Item) {
        match item {
            Item::Frames(frames) => {
                let bytes: usize = frames.iter().map(|f| f.json.len()).sum();
                for f in &frames {
                    if f.body.turn_id() == self.turn_id {
                        self.event(&f.body);
                    }
                }
                self.feed.written(bytes);
            }
            Item::Snapshot(ControlMsg::Snapshot { messages, active, .. }) => {
                if let Some(a) = active.filter(|a| a.turn_id == self.turn_id) {
                    self.catch_up(&a.text);
                } else if let Some(m) = messages.iter().find(|m| m.role == "assistant" && m.turn_id == self.turn_id) {
                    self.catch_up(&m.text);
                    let ending = match m.status.as_deref() {
                        Some("cancelled") => Ending::Cancelled,
                        Some("error") => Ending::Error { code: "error".into(), message: "the turn failed".into() },
                        _ => Ending::Done(Usage::default()),
                    };
                    self.end(ending);
                }
            }
            Item::Snapshot(_) => {}
        }
    }

    fn event(&mut self, body: &EventBody) {
        if self.ended {
            return;
        }
        match body {
            EventBody::Delta { text, .. } => {
                self.given += text.len();
                self.queue.push_back(Piece::Text(text.clone()));
            }
            EventBody::Reset { .. } => {
                self.given = 0;
                self.queue.push_back(Piece::Reset);
            }
            EventBody::ToolStatus { name, state, .. } => {
                self.queue.push_back(Piece::Tool { name: name.clone(), state: state.clone() })
            }
            EventBody::Done { usage, .. } => self.end(Ending::Done(*usage)),
            EventBody::Cancelled { .. } => self.end(Ending::Cancelled),
            EventBody::Error { code, message, .. } => {
                self.end(Ending::Error { code: code.clone(), message: message.clone() })
            }
            EventBody::UserMessage { .. } | EventBody::TurnStarted { .. } => {}
        }
    }

    /// Hands out the part of `text` (the turn's whole text so far) not yet given.
    fn catch_up(&mut self, text: &str) {
        match text.get(self.given..) {
            Some(rest) => {
                if !rest.is_empty() {
                    self.queue.push_back(Piece::Text(rest.to_string()));
                }
            }
            // Shorter than what was given, or cut mid-character: a regenerated answer.
            None => {
                self.queue.push_back(Piece::Reset);
                self.queue.push_back(Piece::Text(text.to_string()));
            }
        }
        self.given = text.len();
    }

    fn disarm(&mut self) {
        if let Some(c) = &mut self.cancel {
            c.armed = false;
        }
    }

    fn end(&mut self, ending: Ending) {
        self.ended = true;
        // Nothing left to stop.
        self.disarm();
        self.queue.push_back(Piece::End(ending));
    }
}
