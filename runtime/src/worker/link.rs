//! A worker's link to the control plane: two channels of protocol messages,
//! carried by a WebSocket ([`connect`]) or, for the worker inside
//! `carapace serve`, by nothing at all ([`Link::pair`]).

use carapace_scheduler::protocol::{ControlMessage, MAX_MESSAGE_BYTES, WorkerMessage};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// Messages waiting in either direction before the sender waits.
const QUEUE: usize = 256;

/// The worker's end.
pub struct Link {
    /// To the control plane.
    pub tx: mpsc::Sender<WorkerMessage>,
    /// From the control plane.
    pub rx: mpsc::Receiver<ControlMessage>,
}

/// The control plane's end.
pub struct ControlEnd {
    /// To the worker.
    pub tx: mpsc::Sender<ControlMessage>,
    /// From the worker.
    pub rx: mpsc::Receiver<WorkerMessage>,
}

impl Link {
    /// Both ends of an in-process link.
    pub fn pair() -> (Link, ControlEnd) {
        let (to_control, from_worker) = mpsc::channel(QUEUE);
        let (to_worker, from_control) = mpsc::channel(QUEUE);
        (
            Link {
                tx: to_control,
                rx: from_control,
            },
            ControlEnd {
                tx: to_worker,
                rx: from_worker,
            },
        )
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The control plane URL is not `http(s)://` or `ws(s)://`.
    #[error("the control plane URL must start with http://, https://, ws:// or wss://")]
    Url,
    /// The credential cannot be sent as a header.
    #[error("the worker credential is malformed")]
    Credential,
    /// The WebSocket handshake failed (refused, unauthorised, TLS...).
    #[error("{0}")]
    Handshake(String),
}

/// The WebSocket URL of the worker endpoint under a control plane base URL.
pub fn endpoint(base: &str) -> Result<String, ConnectError> {
    let base = base.trim_end_matches('/');
    let rest = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_owned()
    } else {
        return Err(ConnectError::Url);
    };
    Ok(format!("{rest}/worker/v1/connect"))
}

/// Opens the worker connection to the control plane at `base`,
/// authenticated by the node credential.
pub async fn connect(base: &str, credential: &str) -> Result<Link, ConnectError> {
    let mut request = endpoint(base)?
        .into_client_request()
        .map_err(|_| ConnectError::Url)?;
    let header = HeaderValue::from_str(&format!("Bearer {credential}"))
        .map_err(|_| ConnectError::Credential)?;
    request.headers_mut().insert("authorization", header);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(response) => {
                ConnectError::Handshake(format!("the control plane answered {}", response.status()))
            }
            other => ConnectError::Handshake(other.to_string()),
        })?;
    let (mut sink, mut stream) = socket.split();
    let (link, mut end) = Link::pair();
    // Control plane → worker.
    let to_worker = end.tx;
    tokio::spawn(async move {
        while let Some(frame) = stream.next().await {
            let text = match frame {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            match serde_json::from_str::<ControlMessage>(&text) {
                Ok(message) => {
                    if to_worker.send(message).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "malformed message from the control plane; disconnecting");
                    break;
                }
            }
        }
    });
    // Worker → control plane.
    tokio::spawn(async move {
        while let Some(message) = end.rx.recv().await {
            let Ok(text) = serde_json::to_string(&message) else {
                continue;
            };
            if sink.send(Message::text(text)).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_base_url() {
        assert_eq!(
            endpoint("http://cp.example:8080/").unwrap(),
            "ws://cp.example:8080/worker/v1/connect"
        );
        assert_eq!(
            endpoint("https://cp.example").unwrap(),
            "wss://cp.example/worker/v1/connect"
        );
        assert!(endpoint("ftp://cp.example").is_err());
    }
}
