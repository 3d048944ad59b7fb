//! The load client's socket and frame handling: a WebSocket opened from a chosen 127.0.0.x
//! source address, `hello`, and a lean parse of server frames (one flat struct with borrowed
//! strings, because the load generator shares two cores with the system it measures).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::protocol::ClientMsg;

/// A client socket.
pub type Ws = WebSocketStream<TcpStream>;

/// Time allowed for TCP connect, upgrade and the welcome.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The fields of any server frame the load client looks at; others are skipped unread.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    pub seq: Option<u64>,
    pub first_seq: Option<u64>,
    #[serde(borrow)]
    pub turn_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub client_msg_id: Option<Cow<'a, str>>,
    pub epoch: Option<String>,
    #[serde(borrow)]
    pub code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub resume: Option<Cow<'a, str>>,
    pub active: Option<Active>,
    pub retry_after_ms: Option<u64>,
}

/// The running turn of a snapshot.
#[derive(Debug, Deserialize)]
pub struct Active {
    pub turn_id: String,
    pub text: String,
}

impl Frame<'_> {
    /// True for conversation events. Control frames `welcome`, `snapshot` and `ack` carry a
    /// seq too, so the type decides (an `error` is an event only with a seq).
    pub fn is_event(&self) -> bool {
        self.seq.is_some() && !matches!(self.kind.as_ref(), "welcome" | "snapshot" | "ack")
    }
}

/// Opens `ws://target/v1/ws?session_id=…` from `source` (port chosen by the kernel).
pub async fn open(target: SocketAddr, source: IpAddr, session: &str) -> anyhow::Result<Ws> {
    let sock = TcpSocket::new_v4()?;
    port_at_connect(&sock)?;
    sock.bind(SocketAddr::new(source, 0)).with_context(|| format!("cannot bind {source}"))?;
    let tcp = sock.connect(target).await.with_context(|| format!("cannot connect to {target}"))?;
    tcp.set_nodelay(true)?;
    // A small read buffer: tungstenite's default reserves 128 KiB per socket.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let url = format!("ws://{target}/v1/ws?session_id={session}");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
    Ok(ws)
}

/// Lets the kernel choose the source port at connect instead of at bind
/// (`IP_BIND_ADDRESS_NO_PORT`). A bind to an address with port 0 searches the ports already bound
/// for a free one, and that search grows with every socket the load process holds. Measured in a
/// 15,000-socket storm, the binds took about 0.8 ms of kernel CPU each, which made the harness,
/// not the gateway, the storm's bottleneck. At connect the kernel checks the whole 4-tuple.
#[cfg(target_os = "linux")]
fn port_at_connect(sock: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: `sock` owns a valid socket descriptor, and the option value is a c_int of the size
    // passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn port_at_connect(_: &TcpSocket) -> std::io::Result<()> {
    Ok(())
}

/// The wait a refused upgrade asks for (`retry_after_ms` of its `error` body, else its
/// `Retry-After`), when the refusal is one to retry (429, 503).
pub fn retry_hint(e: &anyhow::Error) -> Option<u64> {
    let tokio_tungstenite::tungstenite::Error::Http(resp) = e.downcast_ref()? else { return None };
    if !matches!(resp.status().as_u16(), 429 | 503) {
        return None;
    }
    let from_body = resp
        .body()
        .as_deref()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v["retry_after_ms"].as_u64());
    let from_header = || {
        let secs = resp.headers().get("retry-after")?.to_str().ok()?.parse::<u64>().ok()?;
        Some(secs * 1000)
    };
    from_body.or_else(from_header).or(Some(1000))
}

/// Sends a client frame.
pub async fn send(ws: &mut Ws, msg: &ClientMsg) -> anyhow::Result<()> {
    let text = serde_json::to_string(msg)?;
    ws.send(Message::Text(text.into())).await?;
    Ok(())
}

/// What `hello` got back.
#[derive(Debug)]
pub struct Welcome {
    pub epoch: String,
    pub seq: u64,
    /// True when the server answered with a snapshot instead of a replay.
    pub snapshot: bool,
    /// The running turn in that snapshot, if any.
    pub active: Option<Active>,
}

/// Says hello (resuming from `last` when given) and reads the welcome and its snapshot. Replayed
/// events that follow are left to the caller.
pub async fn hello(ws: &mut Ws, session: &str, last: Option<(&str, u64)>) -> anyhow::Result<Welcome> {
    let hello = ClientMsg::Hello {
        session_id: session.into(),
        last_seq: last.map(|l| l.1),
        epoch: last.map(|l| l.0.to_string()),
        coalesce_ms: None,
    };
    send(ws, &hello).await?;
    let mut welcome: Option<Welcome> = None;
    loop {
        let msg = match ws.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => bail!("read failed before welcome: {e}"),
            None => bail!("closed before welcome"),
        };
        let Message::Text(t) = msg else {
            if let Message::Close(c) = msg {
                bail!("closed before welcome: {c:?}");
            }
            continue;
        };
        let f: Frame = serde_json::from_str(&t).with_context(|| format!("bad frame {t}"))?;
        match (f.kind.as_ref(), welcome.as_mut()) {
            ("welcome", None) => {
                let snapshot = f.resume.as_deref() == Some("snapshot");
                let w = Welcome { epoch: f.epoch.unwrap_or_default(), seq: f.seq.unwrap_or(0), snapshot, active: None };
                if !snapshot {
                    return Ok(w);
                }
                welcome = Some(w);
            }
            ("snapshot", Some(w)) => {
                w.seq = f.seq.unwrap_or(w.seq);
                w.active = f.active;
                return Ok(welcome.expect("set above"));
            }
            (kind, _) => bail!("unexpected {kind} before welcome"),
        }
    }
}
