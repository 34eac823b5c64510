//! A minimal HTTPS/1.1 GET over the bridge's mTLS port, for `/readyz` and `/healthz`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{tls, ClientCert, E2eError};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Health answers are a few bytes; anything near this is a bug.
const MAX_RESPONSE: usize = 64 * 1024;

/// Status and body of an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET path` with `Connection: close`, presenting `client`; reads the whole response.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    client: &ClientCert,
    ca_pem: &str,
) -> Result<HttpResponse, E2eError> {
    let config = tls::client_config(ca_pem, Some(client))?;
    let exchange = async {
        let mut stream = tls::connect(addr, config).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            tls::SERVER_NAME
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(E2eError::io("sending the HTTP request"))?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    if raw.len() > MAX_RESPONSE {
                        return Err(E2eError::Http("response too large".into()));
                    }
                }
                // A server that closes without close_notify after a complete response is fine
                // for a `Connection: close` exchange.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
                Err(e) => return Err(E2eError::io("reading the HTTP response")(e)),
            }
        }
        parse(&raw)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| E2eError::timeout(format!("GET {path}"), REQUEST_TIMEOUT))?
}

fn parse(raw: &[u8]) -> Result<HttpResponse, E2eError> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| E2eError::Http(format!("incomplete response: {text:?}")))?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| E2eError::Http(format!("bad status line {status_line:?}")))?;
    // Chunked bodies (no Content-Length) keep their chunk framing; callers only look for words.
    Ok(HttpResponse {
        status,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r = parse(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 17\r\n\r\nbroker link down\n",
        )
        .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "broker link down\n");
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse(b"garbage\r\n\r\n").is_err());
    }
}
