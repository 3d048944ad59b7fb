//! A protocol v1 WebSocket for the examples that time answers: send a frame, read the next one.
//! Shared by path (`#[path = "support/ws.rs"] mod ws;`), since examples are separate crates.

use std::time::Duration;

use chatfleet::protocol::{ClientMsg, ServerMsg};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// How long any one frame or answer may take before the example gives up.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn send(ws: &mut Ws, msg: &ClientMsg) {
    ws.send(Message::Text(serde_json::to_string(msg).unwrap().into())).await.unwrap();
}

/// The next text frame, parsed (pings and other frames are skipped).
pub async fn next(ws: &mut Ws) -> ServerMsg {
    loop {
        let m = tokio::time::timeout(FRAME_TIMEOUT, ws.next()).await.expect("frame in time").unwrap().unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}
