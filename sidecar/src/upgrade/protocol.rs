//! The handover conversation between the old and the new process: one JSON
//! message per frame, each prefixed with its length (u32, big-endian).
//!
//! ```text
//! new → old  hello     {protocol, pid}
//! old → new  offer     {protocol, pid, listeners:[{name, addr}], config}  + fd marker (SCM_RIGHTS)
//! new → old  prepared                      (listeners wrapped; ready to build)
//! old → new  state     {state}             (exported now, as late as possible)
//! new → old  complete                      (new process accepts on the listeners)
//! old → new  released                      (old stopped accepting; now draining)
//! either     refused   {reason}            (the conversation ends; the old keeps serving)
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use meshgate_xds::config::ConfigSpec;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Bumped on any incompatible change; both sides refuse a mismatch.
pub const PROTOCOL_VERSION: u32 = 1;

/// State exports can be large (nonce caches); anything beyond this is refused.
const MAX_FRAME: usize = 512 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListenerInfo {
    /// `inbound`, `admin`, `health`, `egress`: for logs.
    pub name: String,
    /// The key: the new process looks its listeners up by bind address.
    pub addr: SocketAddr,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Hello {
        protocol: u32,
        pid: u32,
    },
    Offer {
        protocol: u32,
        pid: u32,
        listeners: Vec<ListenerInfo>,
        config: Box<ConfigSpec>,
    },
    Prepared,
    State {
        state: HashMap<String, serde_json::Value>,
    },
    Complete,
    Released,
    Refused {
        reason: String,
    },
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Offer { .. } => "offer",
            Message::Prepared => "prepared",
            Message::State { .. } => "state",
            Message::Complete => "complete",
            Message::Released => "released",
            Message::Refused { .. } => "refused",
        }
    }
}

pub async fn write(stream: &mut UnixStream, message: &Message) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| (*n as usize) <= MAX_FRAME)
        .ok_or_else(|| io::Error::other("handover message too large"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(&body).await?;
    stream.flush().await
}

/// Reads one message. Reads exactly the frame, so that an fd marker that
/// follows is left for `fds::recv`.
pub async fn read(stream: &mut UnixStream) -> io::Result<Message> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::other("handover message too large"));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads one message of the expected kind; a `refused` or any other kind is an error.
pub async fn expect(stream: &mut UnixStream, kind: &'static str) -> io::Result<Message> {
    match read(stream).await? {
        Message::Refused { reason } => Err(io::Error::other(format!("peer refused: {reason}"))),
        m if m.kind() == kind => Ok(m),
        m => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected {kind}, got {}", m.kind()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_roundtrip_with_config_and_state() {
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        let spec: ConfigSpec = meshgate_xds::config::parse_yaml(
            "inbound: { listen: 127.0.0.1:15006 }\nroutes:\n  - name: all\n    match: { path_prefix: / }\n",
        )
        .expect("spec");
        let sent = Message::Offer {
            protocol: PROTOCOL_VERSION,
            pid: 7,
            listeners: vec![ListenerInfo {
                name: "inbound".into(),
                addr: "127.0.0.1:15006".parse().expect("addr"),
            }],
            config: Box::new(spec.clone()),
        };
        write(&mut a, &sent).await.expect("write");
        write(
            &mut a,
            &Message::State {
                state: HashMap::from([("limit/x".to_string(), serde_json::json!([1, 2]))]),
            },
        )
        .await
        .expect("write");
        match expect(&mut b, "offer").await.expect("offer") {
            Message::Offer {
                listeners, config, ..
            } => {
                assert_eq!(listeners.len(), 1);
                assert_eq!(*config, spec);
            }
            other => panic!("unexpected {other:?}"),
        }
        match expect(&mut b, "state").await.expect("state") {
            Message::State { state } => assert_eq!(state["limit/x"], serde_json::json!([1, 2])),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn refusal_and_wrong_kind_are_errors() {
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        write(
            &mut a,
            &Message::Refused {
                reason: "busy".into(),
            },
        )
        .await
        .expect("write");
        write(&mut a, &Message::Prepared).await.expect("write");
        let e = expect(&mut b, "offer").await.expect_err("refused");
        assert!(e.to_string().contains("busy"));
        assert!(expect(&mut b, "offer").await.is_err());
    }
}
