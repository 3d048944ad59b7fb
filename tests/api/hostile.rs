//! Hostile input over real sockets against a real `chatfleet gateway` process (jwt mode).
//!
//! Each of the bad inputs below is sent by an attacker of tenant `acme` while a bystander of
//! tenant `victim` streams answers on the same gateway. After every input the test asserts the
//! exact error code (and close code or HTTP status), that the gateway process is still running and
//! answering, and that the bystander received new events since the input. At the end, the
//! bystander's whole log is checked: seqs contiguous, every answer complete and `done`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatfleet::protocol::{ControlMsg, EventBody, ServerMsg};
use futures::SinkExt;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

/// Per-user connections on the gateway under test.
const MAX_PER_USER: usize = 3;
/// Refused frames in a row before the gateway closes with 4029.
const MAX_REJECTED: u32 = 6;
/// Largest frame the gateway accepts.
const MAX_FRAME: usize = 65536;
/// Largest message text.
const MAX_TEXT: usize = 1024;

/// A `chatfleet gateway` process with a config file of its own. Killed when dropped.
struct GatewayProc {
    child: Child,
    addr: std::net::SocketAddr,
    _config: tempfile::NamedTempFile,
}

impl GatewayProc {
    /// Starts the gateway. Its port is picked free and released before the process binds it, so
    /// another test may take it in between: the process then exits at start, and this tries a
    /// new port (a few times), since that race is not what these tests are about.
    async fn spawn(app: &TestApp) -> Self {
        for _ in 0..5 {
            if let Some(g) = Self::try_spawn(app).await {
                return g;
            }
        }
        panic!("the gateway exited at start on five ports in a row");
    }

    async fn try_spawn(app: &TestApp) -> Option<Self> {
        let s = &app.settings;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = format!(
            r#"
[redis]
url = "{url}"
key_prefix = "{prefix}"
partitions = {partitions}

[session]
max_message_bytes = {MAX_TEXT}

[gateway]
listen = "127.0.0.1:{port}"
max_frame_bytes = {MAX_FRAME}

[gateway.limits]
messages_per_sec = 50
burst = 20
max_connections_per_user = {MAX_PER_USER}
max_rejected_frames = {MAX_REJECTED}

[auth]
mode = "jwt"
leeway_secs = 0

[[auth.keys]]
kid = "test"
alg = "HS256"
secret = "{TEST_SECRET}"

[metrics]
listen = "127.0.0.1:0"

[telemetry]
filter = "warn"
"#,
            url = s.redis.url,
            prefix = s.redis.key_prefix,
            partitions = s.redis.partitions,
        );
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::io::Write::write_all(&mut file, config.as_bytes()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_chatfleet"))
            .args(["gateway", "--config"])
            .arg(file.path())
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway starts");
        let mut g = Self { child, addr: ([127, 0, 0, 1], port).into(), _config: file };
        let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
        while !g.answers().await {
            assert!(tokio::time::Instant::now() < deadline, "the gateway never became ready");
            if g.child.try_wait().unwrap().is_some() {
                return None;
            }
            // Polling readiness with a deadline: the process has no other way to say it.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(g)
    }

    /// True when `/readyz` answers 200.
    async fn answers(&self) -> bool {
        let url = format!("http://{}/readyz", self.addr);
        matches!(reqwest::get(url).await, Ok(r) if r.status() == 200)
    }

    /// Asserts that the process is running and serving.
    async fn assert_alive(&mut self, case: &str) {
        assert!(self.child.try_wait().unwrap().is_none(), "{case}: the gateway process died");
        assert!(self.answers().await, "{case}: the gateway stopped answering");
    }
}

/// The bystander: a `victim` client that keeps sending and streaming answers.
struct Bystander {
    /// Frames received so far.
    progress: Arc<AtomicUsize>,
    /// The turn running now (for the attacker to aim at).
    current_turn: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Client, Vec<String>)>,
}

impl Bystander {
    async fn start(gw: std::net::SocketAddr) -> Self {
        let t = token("victim", "bystander", 600, None);
        let mut client = Client::connect_with_token(gw, &uid("by"), &t, TokenVia::Query).await;
        let progress = Arc::new(AtomicUsize::new(0));
        let current_turn = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, cur, st) = (progress.clone(), current_turn.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut turns = Vec::new();
            let mut n = 0;
            while !st.load(Ordering::SeqCst) {
                n += 1;
                client.send(&format!("m{n}"), &format!("keep streaming {n}")).await;
                let mut turn = None;
                loop {
                    let m = client.next().await;
                    p.fetch_add(1, Ordering::SeqCst);
                    match m {
                        ServerMsg::Control(ControlMsg::Ack { turn_id, .. }) => {
                            *cur.lock().unwrap() = Some(turn_id.clone());
                            turn = Some(turn_id);
                        }
                        ServerMsg::Control(other) => panic!("the bystander got {other:?}"),
                        ServerMsg::Event(e) if e.body.is_terminal() && Some(e.body.turn_id()) == turn.as_deref() => {
                            assert!(
                                matches!(e.body, EventBody::Done { .. }),
                                "the bystander's turn ended {:?}",
                                e.body
                            );
                            break;
                        }
                        ServerMsg::Event(_) => {}
                    }
                }
                turns.push(turn.expect("acked"));
            }
            (client, turns)
        });
        Self { progress, current_turn, stop, task }
    }

    /// Waits until the bystander has received a frame after `since`.
    async fn advances_past(&self, since: usize, case: &str) {
        let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
        while self.progress.load(Ordering::SeqCst) <= since {
            assert!(!self.task.is_finished(), "{case}: the bystander failed");
            assert!(tokio::time::Instant::now() < deadline, "{case}: the bystander stopped streaming");
            // Polling another task's counter with a deadline.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// What a bad input produced.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    /// HTTP status, for refusals before any WebSocket exists.
    status: Option<u16>,
    code: String,
    /// The WebSocket close code, when the input must close the connection.
    close: Option<u16>,
}

fn seen(status: Option<u16>, code: &str, close: Option<u16>) -> Seen {
    Seen { status, code: code.into(), close }
}

/// The bad inputs.
#[derive(Debug, Clone, Copy)]
enum Bad {
    BrokenJson,
    UnknownFrameType,
    BinaryFrame,
    InvalidUtf8,
    HugeText,
    OversizedFrame,
    DeepNesting,
    DeepNestingInAField,
    MissingField,
    UnknownField,
    WrongFieldType,
    InvalidClientMsgId,
    BlankText,
    NotAnObject,
    SeqOverflow,
    NegativeSeq,
    SecondHello,
    SendBeforeHello,
    HelloBadSessionId,
    SeqFromTheFuture,
    CancelUnknownTurn,
    CancelAnotherTenantsTurn,
    CancelBadTurnId,
    Flood,
    PersistentGarbage,
    NoToken,
    ForgedToken,
    ExpiredToken,
    AlgNoneToken,
    GarbageToken,
    UnknownKid,
    TokenForAnotherSession,
    TokenForAnotherSessionInHello,
    TokenExpiresWhileConnected,
    TooManyConnections,
    PostBrokenJson,
    PostHugeBody,
    PostWithoutToken,
    SseBadLastEventId,
    LongPollBadAfter,
    PathBadSessionId,
}

impl Bad {
    const ALL: [Bad; 41] = [
        Bad::BrokenJson,
        Bad::UnknownFrameType,
        Bad::BinaryFrame,
        Bad::InvalidUtf8,
        Bad::HugeText,
        Bad::OversizedFrame,
        Bad::DeepNesting,
        Bad::DeepNestingInAField,
        Bad::MissingField,
        Bad::UnknownField,
        Bad::WrongFieldType,
        Bad::InvalidClientMsgId,
        Bad::BlankText,
        Bad::NotAnObject,
        Bad::SeqOverflow,
        Bad::NegativeSeq,
        Bad::SecondHello,
        Bad::SendBeforeHello,
        Bad::HelloBadSessionId,
        Bad::SeqFromTheFuture,
        Bad::CancelUnknownTurn,
        Bad::CancelAnotherTenantsTurn,
        Bad::CancelBadTurnId,
        Bad::Flood,
        Bad::PersistentGarbage,
        Bad::NoToken,
        Bad::ForgedToken,
        Bad::ExpiredToken,
        Bad::AlgNoneToken,
        Bad::GarbageToken,
        Bad::UnknownKid,
        Bad::TokenForAnotherSession,
        Bad::TokenForAnotherSessionInHello,
        Bad::TokenExpiresWhileConnected,
        Bad::TooManyConnections,
        Bad::PostBrokenJson,
        Bad::PostHugeBody,
        Bad::PostWithoutToken,
        Bad::SseBadLastEventId,
        Bad::LongPollBadAfter,
        Bad::PathBadSessionId,
    ];

    /// What the gateway must answer.
    fn expected(self) -> Seen {
        use Bad::*;
        match self {
            InvalidUtf8 => seen(None, "bad_request", Some(1007)),
            HugeText => seen(None, "too_large", None),
            OversizedFrame => seen(None, "too_large", Some(1009)),
            SendBeforeHello | HelloBadSessionId | SeqOverflow | NegativeSeq => seen(None, "bad_request", Some(1002)),
            CancelUnknownTurn | CancelAnotherTenantsTurn => seen(None, "not_found", None),
            Flood => seen(None, "rate_limited", None),
            PersistentGarbage => seen(None, "bad_request", Some(4029)),
            NoToken | ForgedToken | ExpiredToken | AlgNoneToken | GarbageToken | UnknownKid | PostWithoutToken => {
                seen(Some(401), "unauthorized", None)
            }
            TokenForAnotherSession => seen(Some(403), "forbidden", None),
            TokenForAnotherSessionInHello => seen(None, "forbidden", Some(1008)),
            TokenExpiresWhileConnected => seen(None, "unauthorized", Some(4001)),
            TooManyConnections => seen(Some(429), "too_many_connections", None),
            PostHugeBody => seen(Some(413), "too_large", None),
            PostBrokenJson | SseBadLastEventId | LongPollBadAfter | PathBadSessionId => {
                seen(Some(400), "bad_request", None)
            }
            _ => seen(None, "bad_request", None),
        }
    }
}

/// The attacker's side: one fresh connection (or request) per bad input.
struct Attack<'a> {
    gw: std::net::SocketAddr,
    bystander: &'a Bystander,
}

impl Attack<'_> {
    fn token(&self, user: &str) -> String {
        token("acme", user, 600, None)
    }

    /// A connected attacker (hello done) on its own session.
    async fn client(&self, user: &str) -> Client {
        Client::connect_with_token(self.gw, &uid("atk"), &self.token(user), TokenVia::Query).await
    }

    /// An attacker socket with no hello yet.
    async fn socket(&self, user: &str, session: &str) -> Ws {
        ws_open(self.gw, session, Some(&self.token(user)), TokenVia::Query).await.expect("handshake").0
    }

    async fn handshake(&self, token: Option<&str>) -> Seen {
        let err = ws_open(self.gw, &uid("atk"), token, TokenVia::Query).await.map(|_| ()).expect_err("refused");
        let (status, code) = handshake_refusal(err);
        seen(Some(status), &code, None)
    }

    async fn http(&self, req: reqwest::RequestBuilder) -> Seen {
        let (status, code) = refusal(req.send().await.unwrap()).await;
        seen(Some(status), &code, None)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gw)
    }

    async fn run(&self, bad: Bad) -> Seen {
        use Bad::*;
        let user = format!("{bad:?}");
        match bad {
            BrokenJson => self.frame(&user, r#"{"type":"send","#).await,
            UnknownFrameType => self.frame(&user, r#"{"type":"launch_missiles"}"#).await,
            BinaryFrame => {
                let mut c = self.client(&user).await;
                c.ws.send(Message::Binary(vec![0u8, 159, 146, 150].into())).await.unwrap();
                error_then(&mut c, false).await
            }
            InvalidUtf8 => {
                let mut c = self.client(&user).await;
                raw_frame(&mut c.ws, 0x1, &[b'{', 0xff, 0xfe, b'}']).await;
                error_then(&mut c, true).await
            }
            HugeText => {
                let text = "x".repeat(MAX_TEXT + 1);
                self.frame(&user, &serde_json::json!({"type":"send","client_msg_id":"m1","text":text}).to_string())
                    .await
            }
            OversizedFrame => {
                // Only the header of a frame far over the limit: the gateway must refuse it from
                // the header, before reading (or buffering) any of it.
                let mut c = self.client(&user).await;
                let mut header = vec![0x81, 0x80 | 127];
                header.extend_from_slice(&(10 * MAX_FRAME as u64).to_be_bytes());
                header.extend_from_slice(&[0, 0, 0, 0]);
                c.ws.get_mut().write_all(&header).await.unwrap();
                error_then(&mut c, true).await
            }
            DeepNesting => self.frame(&user, &"[".repeat(MAX_FRAME - 100)).await,
            DeepNestingInAField => {
                let deep = format!(r#"{{"type":"send","client_msg_id":"m","text":{}"#, "{\"a\":".repeat(10_000));
                self.frame(&user, &deep).await
            }
            MissingField => self.frame(&user, r#"{"type":"send","text":"hi"}"#).await,
            UnknownField => {
                self.frame(&user, r#"{"type":"send","client_msg_id":"m1","text":"hi","tenant":"victim"}"#).await
            }
            WrongFieldType => self.frame(&user, r#"{"type":"send","client_msg_id":5,"text":"hi"}"#).await,
            InvalidClientMsgId => self.frame(&user, r#"{"type":"send","client_msg_id":"a:{b}","text":"hi"}"#).await,
            BlankText => self.frame(&user, r#"{"type":"send","client_msg_id":"m1","text":"  \n "}"#).await,
            NotAnObject => self.frame(&user, "[1,2,3]").await,
            SeqOverflow => {
                let sid = uid("atk");
                let hello = format!(r#"{{"type":"hello","session_id":"{sid}","last_seq":18446744073709551616}}"#);
                self.first_frame(&user, &sid, &hello).await
            }
            NegativeSeq => {
                let sid = uid("atk");
                self.first_frame(&user, &sid, &format!(r#"{{"type":"hello","session_id":"{sid}","last_seq":-1}}"#))
                    .await
            }
            SecondHello => self.frame(&user, r#"{"type":"hello","session_id":"again"}"#).await,
            SendBeforeHello => {
                let sid = uid("atk");
                self.first_frame(&user, &sid, r#"{"type":"send","client_msg_id":"m1","text":"hi"}"#).await
            }
            HelloBadSessionId => {
                // No session_id in the URL, so only hello names it.
                let url = format!("ws://{}/v1/ws?token={}", self.gw, self.token(&user));
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                ws.send(Message::Text(r#"{"type":"hello","session_id":"../{p00}:x"}"#.into())).await.unwrap();
                let mut c = bare(ws);
                error_then(&mut c, true).await
            }
            SeqFromTheFuture => {
                let sid = uid("atk");
                let epoch =
                    Client::connect_with_token(self.gw, &sid, &self.token(&user), TokenVia::Query).await.epoch();
                let mut ws = self.socket(&user, &sid).await;
                let hello = format!(r#"{{"type":"hello","session_id":"{sid}","last_seq":999999,"epoch":"{epoch}"}}"#);
                ws.send(Message::Text(hello.into())).await.unwrap();
                let mut c = bare(ws);
                let s = error_then(&mut c, false).await;
                // Then the session goes on: welcome and a snapshot resync the client.
                assert!(matches!(c.next().await, ServerMsg::Control(ControlMsg::Welcome { .. })));
                assert!(matches!(c.next().await, ServerMsg::Control(ControlMsg::Snapshot { .. })));
                s
            }
            CancelUnknownTurn => self.frame(&user, r#"{"type":"cancel","turn_id":"0000feedbeef"}"#).await,
            CancelAnotherTenantsTurn => {
                let victim = self.bystander.current_turn.lock().unwrap().clone().expect("the bystander has a turn");
                self.frame(&user, &format!(r#"{{"type":"cancel","turn_id":"{victim}"}}"#)).await
            }
            CancelBadTurnId => self.frame(&user, r#"{"type":"cancel","turn_id":"x y"}"#).await,
            Flood => {
                let mut c = self.client(&user).await;
                for _ in 0..60 {
                    c.send_raw(r#"{"type":"ping"}"#.into()).await;
                }
                loop {
                    match c.next().await {
                        ServerMsg::Control(ControlMsg::Pong) => continue,
                        ServerMsg::Control(ControlMsg::Error { code, retry_after_ms, .. }) => {
                            assert!(retry_after_ms.is_some_and(|ms| ms > 0), "a retry hint");
                            break seen(None, &code_str(code), None);
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            PersistentGarbage => {
                let mut c = self.client(&user).await;
                for _ in 0..MAX_REJECTED {
                    c.send_raw("nope".into()).await;
                }
                let mut code = String::new();
                loop {
                    match c.next_or_close().await {
                        Ok(ServerMsg::Control(ControlMsg::Error { code: cd, .. })) => code = code_str(cd),
                        Ok(other) => panic!("unexpected {other:?}"),
                        Err(close) => break seen(None, &code, close),
                    }
                }
            }
            NoToken => self.handshake(None).await,
            ForgedToken => {
                let claims = serde_json::json!({"tenant":"victim","sub":"x","exp": unix_now() + 600});
                self.handshake(Some(&sign(&claims, "not-the-servers-secret-but-long-enough", Some("test")))).await
            }
            ExpiredToken => self.handshake(Some(&token("acme", &user, -60, None))).await,
            AlgNoneToken => {
                let genuine = self.token(&user);
                let claims = genuine.split('.').nth(1).unwrap();
                // {"alg":"none","typ":"JWT"}, the claims of a genuine token, no signature.
                self.handshake(Some(&format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}."))).await
            }
            GarbageToken => self.handshake(Some("not.a.jwt")).await,
            UnknownKid => {
                let claims = serde_json::json!({"tenant":"acme","sub":"x","exp": unix_now() + 600});
                self.handshake(Some(&sign(&claims, TEST_SECRET, Some("retired-key")))).await
            }
            TokenForAnotherSession => {
                // The URL names the session: refused before the upgrade.
                let t = token("acme", &user, 600, Some(&["mine"]));
                let err =
                    ws_open(self.gw, "theirs", Some(&t), TokenVia::Subprotocol).await.map(|_| ()).expect_err("refused");
                let (status, code) = handshake_refusal(err);
                seen(Some(status), &code, None)
            }
            TokenForAnotherSessionInHello => {
                // Only hello names it: refused there, and closed 1008.
                use tokio_tungstenite::tungstenite::client::IntoClientRequest;
                let t = token("acme", &user, 600, Some(&["mine"]));
                let mut req = format!("ws://{}/v1/ws", self.gw).into_client_request().unwrap();
                req.headers_mut()
                    .insert("sec-websocket-protocol", format!("chatfleet.v1, bearer.{t}").parse().unwrap());
                let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
                assert_eq!(resp.headers()["sec-websocket-protocol"], "chatfleet.v1", "the protocol is echoed");
                ws.send(Message::Text(r#"{"type":"hello","session_id":"theirs"}"#.into())).await.unwrap();
                error_then(&mut bare(ws), true).await
            }
            TokenExpiresWhileConnected => {
                let sid = uid("atk");
                let t = token("acme", &user, 2, None);
                let mut c = Client::connect_with_token(self.gw, &sid, &t, TokenVia::Subprotocol).await;
                error_then(&mut c, true).await
            }
            TooManyConnections => {
                let mut open = Vec::new();
                for _ in 0..MAX_PER_USER {
                    open.push(self.client(&user).await);
                }
                let s = self.handshake(Some(&self.token(&user))).await;
                drop(open);
                s
            }
            PostBrokenJson => {
                let req = reqwest::Client::new()
                    .post(self.url(&format!("/v1/sessions/{}/messages", uid("atk"))))
                    .bearer_auth(self.token(&user))
                    .body(r#"{"client_msg_id":"#);
                self.http(req).await
            }
            PostHugeBody => {
                let req = reqwest::Client::new()
                    .post(self.url(&format!("/v1/sessions/{}/messages", uid("atk"))))
                    .bearer_auth(self.token(&user))
                    .body(vec![b'x'; MAX_FRAME * 2]);
                self.http(req).await
            }
            PostWithoutToken => {
                let body = serde_json::json!({"client_msg_id":"m1","text":"hi"});
                let req =
                    reqwest::Client::new().post(self.url(&format!("/v1/sessions/{}/messages", uid("atk")))).json(&body);
                self.http(req).await
            }
            SseBadLastEventId => {
                let req = reqwest::Client::new()
                    .get(self.url(&format!("/v1/sessions/{}/events", uid("atk"))))
                    .bearer_auth(self.token(&user))
                    .header("accept", "text/event-stream")
                    .header("last-event-id", "'; DROP TABLE sessions; --");
                self.http(req).await
            }
            LongPollBadAfter => {
                let url =
                    self.url(&format!("/v1/sessions/{}/events?after=soon&token={}", uid("atk"), self.token(&user)));
                self.http(reqwest::Client::new().get(url)).await
            }
            PathBadSessionId => {
                let req = reqwest::Client::new()
                    .post(self.url("/v1/sessions/a%3Ab%7Bc%7D/messages"))
                    .bearer_auth(self.token(&user))
                    .json(&serde_json::json!({"client_msg_id":"m1","text":"hi"}));
                self.http(req).await
            }
        }
    }

    /// A connected attacker sends one frame; the error it gets (the connection stays open).
    async fn frame(&self, user: &str, text: &str) -> Seen {
        let mut c = self.client(user).await;
        c.send_raw(text.to_string()).await;
        let s = error_then(&mut c, false).await;
        // The connection still works after the refusal.
        c.send_raw(r#"{"type":"ping"}"#.into()).await;
        assert_eq!(c.next().await, ServerMsg::Control(ControlMsg::Pong), "the connection stays usable");
        s
    }

    /// A fresh socket whose first frame is `text`: the error, then the close.
    async fn first_frame(&self, user: &str, sid: &str, text: &str) -> Seen {
        let mut ws = self.socket(user, sid).await;
        ws.send(Message::Text(text.to_string().into())).await.unwrap();
        error_then(&mut bare(ws), true).await
    }
}

/// A [`Client`] around a socket that has not said hello.
fn bare(ws: Ws) -> Client {
    Client { ws, session: String::new(), welcome: ControlMsg::Pong, snapshot: None, log: Vec::new() }
}

/// Reads the next `error` frame; with `closes`, then the close code.
async fn error_then(c: &mut Client, closes: bool) -> Seen {
    let code = match c.next_or_close().await {
        Ok(ServerMsg::Control(ControlMsg::Error { code, .. })) => code_str(code),
        other => panic!("expected an error frame, got {other:?}"),
    };
    let close = if closes {
        match c.next_or_close().await {
            Err(code) => code,
            Ok(other) => panic!("expected a close, got {other:?}"),
        }
    } else {
        None
    };
    seen(None, &code, close)
}

fn code_str(code: chatfleet::protocol::ErrorCode) -> String {
    serde_json::to_value(code).unwrap().as_str().unwrap().to_string()
}

/// Writes one masked (zero key) frame with `opcode` straight to the socket, bypassing the
/// client library's checks (it would refuse invalid UTF-8).
async fn raw_frame(ws: &mut Ws, opcode: u8, payload: &[u8]) {
    assert!(payload.len() < 126);
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    ws.get_mut().write_all(&frame).await.unwrap();
}

#[tokio::test]
async fn forty_one_hostile_inputs_each_get_their_exact_error_while_the_gateway_keeps_serving_a_bystander() {
    let mut s = jwt_settings();
    s.model.demo.tokens_per_sec = 100;
    s.model.demo.max_tokens = 60;
    let app = TestApp::with(s, 0, 1).await;
    let mut gw = GatewayProc::spawn(&app).await;
    let bystander = Bystander::start(gw.addr).await;
    bystander.advances_past(0, "start").await;
    let attack = Attack { gw: gw.addr, bystander: &bystander };
    for bad in Bad::ALL {
        let case = format!("{bad:?}");
        eprintln!("hostile case: {case}");
        let before = bystander.progress.load(Ordering::SeqCst);
        let got =
            tokio::time::timeout(FRAME_TIMEOUT * 2, attack.run(bad)).await.unwrap_or_else(|_| panic!("{case}: hung"));
        assert_eq!(got, bad.expected(), "{case}");
        gw.assert_alive(&case).await;
        bystander.advances_past(before, &case).await;
    }
    bystander.stop.store(true, Ordering::SeqCst);
    let (client, turns) = bystander.task.await.expect("the bystander ran cleanly");
    let events = client.events();
    assert_contiguous(&events, events[0].seq);
    for (n, turn) in turns.iter().enumerate() {
        let want = app.expected_answer(&format!("keep streaming {}", n + 1));
        assert_eq!(text_of(&events, turn), want, "the bystander's answer {turn} is whole");
    }
    assert!(turns.len() >= 2, "the bystander streamed throughout ({} turns)", turns.len());
}
