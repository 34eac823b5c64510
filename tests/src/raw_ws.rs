//! A WebSocket client that only does what the test says, byte for byte: it upgrades, then
//! never writes again (no automatic pongs, no close reply) and reads the bridge's frames raw.
//! That is a client that stalled or died, as the bridge sees it; a WebSocket library would
//! answer pings as soon as it reads, and fail on writing to a closed socket before handing out
//! the close frame it already holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::{tls, E2eError};

const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// One frame from the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;

impl ServerFrame {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// The text of a text frame, or the reason of a close frame.
    pub fn text(&self) -> String {
        let body = if self.opcode == OP_CLOSE {
            self.payload.get(2..).unwrap_or_default()
        } else {
            &self.payload[..]
        };
        String::from_utf8_lossy(body).into_owned()
    }
}

/// TLS connect (optionally with a small receive buffer) and the `/ws` upgrade offering
/// `subprotocol`, written by hand; returns the stream right after the `101` response.
pub async fn upgrade(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    subprotocol: &str,
    recv_buffer: Option<u32>,
) -> Result<TlsStream<TcpStream>, E2eError> {
    let handshake = async {
        let mut stream = tls::connect_tuned(addr, config, recv_buffer).await?;
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: {subprotocol}\r\n\r\n",
            host = tls::SERVER_NAME,
            port = addr.port()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(E2eError::io("sending the upgrade request"))?;
        // Byte by byte up to the blank line, so no frame that follows is swallowed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let b = stream
                .read_u8()
                .await
                .map_err(E2eError::io("reading the upgrade response"))?;
            head.push(b);
        }
        let head = String::from_utf8_lossy(&head);
        if !head.starts_with("HTTP/1.1 101") {
            return Err(E2eError::Http(format!("upgrade refused: {head}")));
        }
        Ok(stream)
    };
    tokio::time::timeout(UPGRADE_TIMEOUT, handshake)
        .await
        .map_err(|_| E2eError::timeout("a hand-written WebSocket upgrade", UPGRADE_TIMEOUT))?
}

/// Writes one text frame (masked, as a client must). For the one request a stalled client makes
/// before it stalls, e.g. its `subscribe`.
pub async fn send_text(stream: &mut TlsStream<TcpStream>, text: &str) -> Result<(), E2eError> {
    let payload = text.as_bytes();
    let mut frame = vec![0x80 | OP_TEXT];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend((n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend((n as u64).to_be_bytes());
        }
    }
    // An all-zero masking key leaves the payload as it is; servers must accept any key.
    frame.extend([0u8; 4]);
    frame.extend_from_slice(payload);
    stream
        .write_all(&frame)
        .await
        .map_err(E2eError::io("writing a WebSocket frame"))?;
    stream
        .flush()
        .await
        .map_err(E2eError::io("flushing a WebSocket frame"))
}

/// Reads everything the bridge sends until the connection ends (EOF or an error) or `timeout`
/// passes, and splits it into frames. Returns the frames and whether the connection ended.
pub async fn read_to_end(
    stream: &mut TlsStream<TcpStream>,
    timeout: Duration,
) -> (Vec<ServerFrame>, bool) {
    read_rest(stream, Vec::new(), timeout).await
}

/// [`read_to_end`] for a stream whose reader stopped in the middle of a frame: `partial` is
/// what it had read of that frame (see [`take_frames`]).
pub async fn read_rest(
    stream: &mut TlsStream<TcpStream>,
    partial: Vec<u8>,
    timeout: Duration,
) -> (Vec<ServerFrame>, bool) {
    let mut raw = partial;
    let mut buf = vec![0u8; 64 * 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    };
    let ended = tokio::time::timeout(timeout, read).await.is_ok();
    (parse_frames(&raw), ended)
}

/// Splits unmasked server frames; an incomplete last frame is left out.
pub fn parse_frames(raw: &[u8]) -> Vec<ServerFrame> {
    parse_prefix(raw).0
}

/// Removes the complete frames at the front of `raw` and returns them; what is left is the
/// start of the next frame.
pub fn take_frames(raw: &mut Vec<u8>) -> Vec<ServerFrame> {
    let (frames, used) = parse_prefix(raw);
    raw.drain(..used);
    frames
}

/// The complete frames at the front of `raw`, and how many bytes they take.
fn parse_prefix(raw: &[u8]) -> (Vec<ServerFrame>, usize) {
    let mut frames = Vec::new();
    let mut used = 0;
    while let Some(rest) = raw.get(used..).filter(|r| r.len() >= 2) {
        let opcode = rest[0] & 0x0f;
        let masked = rest[1] & 0x80 != 0;
        let (len, mut at): (usize, usize) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 if rest.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&rest[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if masked {
            at += 4;
        }
        let Some(payload) = rest.get(at..at.saturating_add(len)) else {
            break;
        };
        frames.push(ServerFrame {
            opcode,
            payload: payload.to_vec(),
        });
        used += at + len;
    }
    (frames, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_of_every_length_encoding() {
        let mut raw = vec![0x81, 2, b'h', b'i', 0x89, 0];
        raw.extend([0x82, 126, 0x01, 0x00]);
        raw.extend(vec![7u8; 256]);
        raw.extend([0x88, 4, 0x03, 0xe9, b'b', b'y']);
        raw.extend([0x81, 5, b'x']); // incomplete
        let frames = parse_frames(&raw);
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0].text(), "hi");
        assert_eq!(frames[1].opcode, OP_PING);
        assert_eq!(frames[2].payload.len(), 256);
        assert_eq!(frames[3].close_code(), Some(1001));
        assert_eq!(frames[3].text(), "by");
        let mut buffer = raw.clone();
        assert_eq!(take_frames(&mut buffer).len(), 4);
        assert_eq!(buffer, [0x81, 5, b'x'], "the incomplete frame stays");
    }
}
