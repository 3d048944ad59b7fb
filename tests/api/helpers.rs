//! Test harness: a private redis-server per test app (or, when `CHATFLEET_TEST_CLUSTER_URL` is
//! set by bin/test's cluster pass, a shared Redis Cluster with a key prefix per test), gateways
//! and workers in-process on port 0,
//! and a WebSocket client with one method per protocol verb. Dropping the app shuts it down.

use std::net::SocketAddr;
use std::time::Duration;

use chatfleet::gateway::Gateway;
use chatfleet::local_redis::LocalRedis;
use chatfleet::model::demo;
use chatfleet::protocol::{ClientMsg, ControlMsg, Event, EventBody, ResumeKind, ServerMsg};
use chatfleet::settings::Settings;
use chatfleet::store::Store;
use chatfleet::worker::Worker;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Longest a test waits for one frame; a hang fails the test instead of blocking CI.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(15);

/// Settings for tests: small, fast, and isolated.
pub fn test_settings() -> Settings {
    let mut s = Settings::defaults();
    s.redis.partitions = 4;
    s.redis.key_prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    s.gateway.listen = "127.0.0.1:0".parse().unwrap();
    s.metrics.listen = "127.0.0.1:0".parse().unwrap();
    s.model.demo.ttft_ms = 5;
    s.model.demo.tokens_per_sec = 400;
    s.model.demo.max_tokens = 30;
    s.worker.coalesce_ms = 10;
    s.worker.read_block_ms = 500;
    s
}

/// A running system: one Redis, some gateways and workers.
pub struct TestApp {
    /// The private server (killed when the app drops), or `None` on the shared cluster.
    _redis: Option<LocalRedis>,
    pub settings: Settings,
    pub store: Store,
    pub gateways: Vec<SocketAddr>,
    /// Shutdown of each gateway alone (children of the app's token), to drain one of them.
    pub gateway_tokens: Vec<CancellationToken>,
    pub worker_ids: Vec<String>,
    /// Renders the process's Prometheus metrics (shared by every app in this test binary).
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: CancellationToken,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::with(test_settings(), 1, 1).await
    }

    /// One gateway and one worker with these settings.
    pub async fn spawn_with(settings: Settings) -> Self {
        Self::with(settings, 1, 1).await
    }

    /// Gateways and workers on an existing Redis (e.g. a cluster a test started itself).
    pub async fn with_url(mut settings: Settings, url: String, gateways: usize, workers: usize) -> Self {
        settings.redis.url = url;
        Self::start(settings, None, gateways, workers).await
    }

    /// Starts `gateways` gateways and `workers` workers sharing one fresh Redis.
    pub async fn with(mut settings: Settings, gateways: usize, workers: usize) -> Self {
        let redis = match std::env::var("CHATFLEET_TEST_CLUSTER_URL") {
            Ok(url) => {
                settings.redis.url = url;
                None
            }
            Err(_) => {
                let r = LocalRedis::start(&[]).await.expect("redis-server starts");
                settings.redis.url = r.url();
                Some(r)
            }
        };
        Self::start(settings, redis, gateways, workers).await
    }

    async fn start(settings: Settings, redis: Option<LocalRedis>, gateways: usize, workers: usize) -> Self {
        // Logs go to the captured test output; RUST_LOG selects them (default: warnings).
        let _ = chatfleet::telemetry::init(&chatfleet::settings::TelemetrySettings {
            format: "pretty".into(),
            filter: "warn".into(),
            otlp_endpoint: String::new(),
        });
        let store = chatfleet::app::connect_store(&settings).await.expect("store connects");
        let shutdown = CancellationToken::new();
        let mut worker_ids = Vec::new();
        for _ in 0..workers {
            let model = chatfleet::app::build_model(&settings);
            let w = Worker::start(settings.clone(), store.clone(), model, shutdown.clone()).await.unwrap();
            worker_ids.push(w.id().to_string());
            tokio::spawn(w.wait());
        }
        let mut addrs = Vec::new();
        let mut gateway_tokens = Vec::new();
        for _ in 0..gateways {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let token = shutdown.child_token();
            let g = Gateway::build(settings.clone(), store.clone(), token.clone()).await.unwrap();
            tokio::spawn(g.serve(listener));
            gateway_tokens.push(token);
        }
        let metrics = chatfleet::metrics::install();
        Self { _redis: redis, settings, store, gateways: addrs, gateway_tokens, worker_ids, metrics, shutdown }
    }

    /// The demo model's full answer to `prompt` under these settings.
    pub fn expected_answer(&self, prompt: &str) -> String {
        demo::answer_for(prompt, self.settings.model.demo.max_tokens)
    }

    /// `http://<gateway gw>`.
    pub fn http(&self, gw: usize) -> String {
        format!("http://{}", self.gateways[gw])
    }

    /// Connects a client to gateway `gw` and says hello on `session`.
    pub async fn client(&self, gw: usize, session: &str) -> Client {
        Client::connect(self.gateways[gw], session, None, None).await
    }

    /// A plain Redis client for inspecting state.
    pub async fn raw(&self) -> fred::clients::Client {
        use fred::prelude::*;
        let c = fred::clients::Client::new(Config::from_url(&self.settings.redis.url).unwrap(), None, None, None);
        c.init().await.unwrap();
        c
    }

    /// Every key matching `pattern`, from every primary (KEYS reaches one node in a cluster).
    pub async fn keys_matching(&self, pattern: &str) -> Vec<String> {
        use fred::interfaces::ClientLike;
        let raw = self.raw().await;
        let nodes = if raw.is_clustered() { raw.split_cluster().unwrap() } else { vec![raw] };
        let mut keys = Vec::new();
        for node in nodes {
            node.init().await.unwrap();
            let mut found: Vec<String> = node.custom(fred::cmd!("KEYS"), vec![pattern]).await.unwrap();
            keys.append(&mut found);
        }
        keys
    }

    /// Asserts that every key of `session` carries a TTL (none was created without one).
    pub async fn assert_every_key_expires(&self, session: &str) -> Vec<String> {
        use fred::interfaces::KeysInterface;
        let raw = self.raw().await;
        let keys = self.keys_matching(&format!("{}*", self.session_keys(session).base)).await;
        for key in &keys {
            let ttl: i64 = raw.ttl(key).await.unwrap();
            assert!(ttl > 0, "{key} has no TTL ({ttl})");
        }
        keys
    }

    pub fn tenant(&self) -> &str {
        &self.settings.gateway.tenant
    }

    /// Session keys as the gateway computes them.
    pub fn session_keys(&self, session: &str) -> chatfleet::keys::SessionKeys {
        self.store.keys().session(self.tenant(), session)
    }

    /// Decoded history of a session.
    pub async fn history(&self, session: &str) -> Vec<chatfleet::payload::HistoryMessage> {
        use fred::prelude::*;
        let raw = self.raw().await;
        let key = format!("{}:hist", self.session_keys(session).base);
        let items: Vec<bytes::Bytes> = raw.lrange(key, 0, -1).await.unwrap();
        items.iter().map(|b| chatfleet::payload::decode_history(b).unwrap()).collect()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking protocol v1.
pub struct Client {
    pub ws: Ws,
    pub session: String,
    pub welcome: ControlMsg,
    /// The snapshot that followed `welcome`, when it announced one.
    pub snapshot: Option<ControlMsg>,
    /// Frames received after `welcome` (and its snapshot), in order.
    pub log: Vec<ServerMsg>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, session: &str, epoch: Option<String>, last_seq: Option<u64>) -> Self {
        let url = format!("ws://{addr}/v1/ws?session_id={session}");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        Self::hello(ws, session, epoch, last_seq).await
    }

    /// Says hello on an open socket and reads the welcome (and its snapshot).
    pub async fn hello(mut ws: Ws, session: &str, epoch: Option<String>, last_seq: Option<u64>) -> Self {
        let hello = ClientMsg::Hello { session_id: session.into(), last_seq, epoch, coalesce_ms: None };
        ws.send(Message::Text(serde_json::to_string(&hello).unwrap().into())).await.unwrap();
        let mut c = Self { ws, session: session.into(), welcome: ControlMsg::Pong, snapshot: None, log: Vec::new() };
        match c.next().await {
            ServerMsg::Control(w @ ControlMsg::Welcome { .. }) => c.welcome = w,
            other => panic!("expected welcome, got {other:?}"),
        }
        if matches!(c.welcome, ControlMsg::Welcome { resume: ResumeKind::Snapshot, .. }) {
            match c.next().await {
                ServerMsg::Control(s @ ControlMsg::Snapshot { .. }) => c.snapshot = Some(s),
                other => panic!("expected a snapshot, got {other:?}"),
            }
        }
        c.log.clear();
        c
    }

    pub fn welcome_seq(&self) -> u64 {
        match &self.welcome {
            ControlMsg::Welcome { seq, .. } => *seq,
            _ => unreachable!(),
        }
    }

    pub fn epoch(&self) -> String {
        match &self.welcome {
            ControlMsg::Welcome { epoch, .. } => epoch.clone(),
            _ => unreachable!(),
        }
    }

    pub async fn send_raw(&mut self, text: String) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    pub async fn send(&mut self, client_msg_id: &str, text: &str) {
        let m = ClientMsg::Send {
            client_msg_id: client_msg_id.into(),
            text: text.into(),
            model: None,
            attachments: Vec::new(),
        };
        self.send_raw(serde_json::to_string(&m).unwrap()).await;
    }

    pub async fn cancel(&mut self, turn_id: &str) {
        let m = ClientMsg::Cancel { turn_id: turn_id.into() };
        self.send_raw(serde_json::to_string(&m).unwrap()).await;
    }

    /// The next frame (pings and pongs skipped); panics after [`FRAME_TIMEOUT`].
    pub async fn next(&mut self) -> ServerMsg {
        match self.next_or_close().await {
            Ok(m) => m,
            Err(code) => panic!("closed: {code:?}"),
        }
    }

    /// The next frame, or the close code when the server closed (None: closed without a code).
    pub async fn next_or_close(&mut self) -> Result<ServerMsg, Option<u16>> {
        loop {
            let m = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next()).await.expect("a frame in time");
            let m = match m {
                None => return Err(None),
                Some(Err(e)) => {
                    eprintln!("client read error: {e}");
                    return Err(None);
                }
                Some(Ok(m)) => m,
            };
            match m {
                Message::Text(t) => {
                    let msg: ServerMsg = serde_json::from_str(&t).unwrap_or_else(|e| panic!("bad frame {t}: {e}"));
                    self.log.push(msg.clone());
                    return Ok(msg);
                }
                Message::Close(c) => return Err(c.map(|c| u16::from(c.code))),
                _ => continue,
            }
        }
    }

    /// The last seq seen (events only), for resuming.
    pub fn last_seq(&self) -> Option<u64> {
        self.events().last().map(|e| e.seq)
    }

    /// Sends and waits for the ack; returns (turn_id, seq of the user message).
    pub async fn send_and_ack(&mut self, client_msg_id: &str, text: &str) -> (String, u64) {
        self.send(client_msg_id, text).await;
        loop {
            if let ServerMsg::Control(ControlMsg::Ack { turn_id, seq, client_msg_id: c }) = self.next().await {
                assert_eq!(c, client_msg_id);
                return (turn_id, seq);
            }
        }
    }

    /// Reads until an event satisfies `done` (e.g. a turn's first delta) and returns it.
    pub async fn until(&mut self, done: impl Fn(&Event) -> bool) -> Event {
        loop {
            if let ServerMsg::Event(e) = self.next().await {
                if done(&e) {
                    return e;
                }
            }
        }
    }

    /// Reads until the terminal event of `turn_id`; returns the events of that turn.
    pub async fn until_end(&mut self, turn_id: &str) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            if let ServerMsg::Event(e) = self.next().await {
                if e.body.turn_id() == turn_id {
                    let end = e.body.is_terminal();
                    events.push(e);
                    if end {
                        return events;
                    }
                }
            }
        }
    }

    /// All events received so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.log
            .iter()
            .filter_map(|m| match m {
                ServerMsg::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }
}

/// The visible text of a turn from its events: deltas appended, cleared on `reset`.
pub fn text_of(events: &[Event], turn_id: &str) -> String {
    let mut text = String::new();
    for e in events {
        match &e.body {
            EventBody::Delta { turn_id: t, text: d } if t == turn_id => text.push_str(d),
            EventBody::Reset { turn_id: t, .. } if t == turn_id => text.clear(),
            _ => {}
        }
    }
    text
}

/// Asserts that event seqs run from `from` upward by one (merged deltas cover `first_seq..=seq`).
pub fn assert_contiguous(events: &[Event], from: u64) {
    let mut expect = from;
    for e in events {
        let first = e.first_seq.unwrap_or(e.seq);
        assert_eq!(first, expect, "gap or duplicate before seq {} in {:?}", e.seq, events);
        expect = e.seq + 1;
    }
}

/// One client of a new session per prompt `"<label> <i>"` on gateway `gw`, each with a sent turn
/// that is already streaming (a delta arrived): (client, turn id, prompt).
pub async fn streaming_clients(app: &TestApp, gw: usize, n: usize, label: &str) -> Vec<(Client, String, String)> {
    let mut clients = Vec::new();
    for i in 0..n {
        let mut c = app.client(gw, &uid("s")).await;
        let prompt = format!("{label} {i}");
        let (turn, _) = c.send_and_ack(&uid("m"), &prompt).await;
        clients.push((c, turn, prompt));
    }
    for (c, turn, _) in clients.iter_mut() {
        c.until(|e| e.body.turn_id() == turn && matches!(e.body, EventBody::Delta { .. })).await;
    }
    clients
}

/// A unique id for client_msg_id and session names.
pub fn uid(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// HS256 secret of the test signing key (kid `test`).
pub const TEST_SECRET: &str = "chatfleet-test-signing-secret-0123456789";

/// Test settings in jwt mode, accepting tokens signed with [`TEST_SECRET`].
pub fn jwt_settings() -> Settings {
    use chatfleet::auth::{AuthMode, KeyAlg, KeySettings};
    let mut s = test_settings();
    s.auth.mode = AuthMode::Jwt;
    s.auth.keys = vec![KeySettings {
        kid: Some("test".into()),
        alg: KeyAlg::HS256,
        secret: Some(secrecy::SecretString::from(TEST_SECRET.to_string())),
        secret_file: None,
        public_key_pem: None,
        public_key_file: None,
    }];
    s
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A token for `user` of `tenant` that expires in `ttl_secs` (negative: already expired),
/// optionally restricted to `sessions`.
pub fn token(tenant: &str, user: &str, ttl_secs: i64, sessions: Option<&[&str]>) -> String {
    let mut claims = serde_json::json!({"tenant": tenant, "sub": user, "exp": unix_now() + ttl_secs});
    if let Some(list) = sessions {
        claims["sessions"] = serde_json::json!(list);
    }
    sign(&claims, TEST_SECRET, Some("test"))
}

/// Signs `claims` with an HS256 `secret` (for forged tokens, a secret the server does not know).
pub fn sign(claims: &serde_json::Value, secret: &str, kid: Option<&str>) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = kid.map(String::from);
    jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

/// How a WebSocket client presents its token.
#[derive(Debug, Clone, Copy)]
pub enum TokenVia {
    Query,
    /// `Sec-WebSocket-Protocol: chatfleet.v1, bearer.<token>`.
    Subprotocol,
}

/// Opens a WebSocket to `addr` for `session` with `token`; the handshake's outcome as is.
pub async fn ws_open(
    addr: SocketAddr,
    session: &str,
    token: Option<&str>,
    via: TokenVia,
) -> Result<(Ws, tokio_tungstenite::tungstenite::handshake::client::Response), tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut url = format!("ws://{addr}/v1/ws?session_id={session}");
    if let (Some(t), TokenVia::Query) = (token, via) {
        url.push_str(&format!("&token={t}"));
    }
    let mut req = url.into_client_request().unwrap();
    if let (Some(t), TokenVia::Subprotocol) = (token, via) {
        req.headers_mut().insert("sec-websocket-protocol", format!("chatfleet.v1, bearer.{t}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await
}

impl Client {
    /// Connects with a token and says hello on `session`.
    pub async fn connect_with_token(addr: SocketAddr, session: &str, token: &str, via: TokenVia) -> Self {
        let (ws, _) = ws_open(addr, session, Some(token), via).await.expect("websocket connects");
        Self::hello(ws, session, None, None).await
    }
}

/// The HTTP status and `error.code` of a refused handshake (or request) response.
pub async fn refusal(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("an error body");
    (status, body["code"].as_str().unwrap_or_default().to_string())
}

/// The HTTP status and `error.code` of a refused WebSocket handshake.
pub fn handshake_refusal(e: tokio_tungstenite::tungstenite::Error) -> (u16, String) {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            let body: serde_json::Value = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}")).unwrap();
            (resp.status().as_u16(), body["code"].as_str().unwrap_or_default().to_string())
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

/// A snapshot of the session's epoch replaces what the client had of the turn (Redis is behind
/// what it saw), as a real client redraws from it. `true` when it shows the turn ended.
pub fn redraw(events: &mut Vec<Event>, snap: &ControlMsg, turn: &str) -> bool {
    let ControlMsg::Snapshot { seq, messages, active, .. } = snap else { return false };
    events.retain(|e| e.body.turn_id() != turn);
    if let Some(m) = messages.iter().find(|m| m.role == "assistant" && m.turn_id == turn) {
        events.push(Event {
            seq: *seq,
            first_seq: None,
            body: EventBody::Delta { turn_id: turn.into(), text: m.text.clone() },
        });
        return true;
    }
    if let Some(a) = active.as_ref().filter(|a| a.turn_id == turn) {
        events.push(Event {
            seq: *seq,
            first_seq: None,
            body: EventBody::Delta { turn_id: turn.into(), text: a.text.clone() },
        });
    }
    false
}

/// Opens `session` resuming after `last_seq` of `epoch`, with the snapshot that follows a
/// `snapshot` welcome; `None` while the gateway cannot serve it (the client retries).
pub async fn try_open(
    addr: SocketAddr,
    session: &str,
    epoch: &str,
    last_seq: u64,
) -> Option<(Client, Option<ControlMsg>)> {
    let url = format!("ws://{addr}/v1/ws?session_id={session}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
    let hello = ClientMsg::Hello {
        session_id: session.into(),
        last_seq: Some(last_seq),
        epoch: Some(epoch.into()),
        coalesce_ms: None,
    };
    ws.send(Message::Text(serde_json::to_string(&hello).unwrap().into())).await.ok()?;
    let mut welcome = None;
    loop {
        let Ok(Message::Text(t)) = tokio::time::timeout(FRAME_TIMEOUT, ws.next()).await.ok()?? else { return None };
        match serde_json::from_str::<ServerMsg>(&t).ok()? {
            ServerMsg::Control(w @ ControlMsg::Welcome { .. }) => {
                if matches!(w, ControlMsg::Welcome { resume: ResumeKind::Replay, .. }) {
                    let c = Client { ws, session: session.into(), welcome: w, snapshot: None, log: Vec::new() };
                    return Some((c, None));
                }
                welcome = Some(w);
            }
            ServerMsg::Control(s @ ControlMsg::Snapshot { .. }) => {
                let w = welcome?;
                return Some((
                    Client { ws, session: session.into(), welcome: w, snapshot: None, log: Vec::new() },
                    Some(s),
                ));
            }
            // "last_seq is ahead of the session": the snapshot follows.
            ServerMsg::Control(ControlMsg::Error { .. }) => continue,
            _ => return None,
        }
    }
}
