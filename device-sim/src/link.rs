//! One device's MQTT 3.1.1 connection over TLS, kept small: a socket, a read buffer and a write
//! buffer, nothing else per connection. Packets are decoded with rumqttc's codec; the few we
//! send are encoded here so a publish costs no allocation beyond its bytes.
//!
//! The device task owns the link and drives it from its single `select!` loop: reading is
//! cancel-safe ([`Link::read_more`]), writes are queued with the `queue_*` methods and written
//! by [`Link::flush`] outside the `select!`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use rumqttc::mqttbytes::v4::{Connect, Packet};
use rumqttc::mqttbytes::QoS;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use rand::Rng;

/// Largest MQTT packet a device accepts; meta documents and commands are far smaller.
pub(crate) const MAX_PACKET: usize = 64 * 1024;
/// TCP connect + TLS handshake + CONNACK must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that cannot finish in this time means the broker stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffers grow for a large command and are given back above this size.
const KEEP_BUFFER: usize = 4096;

/// Why a connection could not be opened or was lost.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("broker refused the connection: {0}")]
    Refused(String),
    #[error("MQTT: {0}")]
    Protocol(String),
    #[error("connection closed by the broker")]
    Closed,
}

/// Where devices connect.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    pub server_name: ServerName<'static>,
}

pub(crate) struct Link {
    stream: TlsStream<TcpStream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    next_pkid: u16,
}

impl Link {
    /// TCP, TLS with `tls`, CONNECT and its CONNACK, all within [`CONNECT_TIMEOUT`].
    pub(crate) async fn open(
        target: &Target,
        tls: Arc<ClientConfig>,
        connect: &Connect,
    ) -> Result<Link, LinkError> {
        let open = async {
            let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(tls)
                .connect(target.server_name.clone(), tcp)
                .await?;
            let mut link = Link {
                stream,
                rbuf: BytesMut::with_capacity(256),
                wbuf: BytesMut::with_capacity(256),
                next_pkid: 0,
            };
            Packet::Connect(connect.clone())
                .write(&mut link.wbuf, MAX_PACKET)
                .map_err(|e| LinkError::Protocol(e.to_string()))?;
            link.flush().await?;
            loop {
                if let Some(packet) = link.next_packet()? {
                    return match packet {
                        Packet::ConnAck(ack) if ack.code == rumqttc::ConnectReturnCode::Success => {
                            Ok(link)
                        }
                        Packet::ConnAck(ack) => Err(LinkError::Refused(format!("{:?}", ack.code))),
                        other => Err(LinkError::Protocol(format!(
                            "expected CONNACK, got {other:?}"
                        ))),
                    };
                }
                link.read_more().await?;
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, open)
            .await
            .map_err(|_| LinkError::Timeout)?
    }

    /// Reads whatever the socket has. Cancel-safe: bytes are either in the buffer or unread.
    pub(crate) async fn read_more(&mut self) -> Result<(), LinkError> {
        if self.rbuf.capacity() - self.rbuf.len() < 128 {
            self.rbuf.reserve(1024);
        }
        match self.stream.read_buf(&mut self.rbuf).await? {
            0 => Err(LinkError::Closed),
            _ => Ok(()),
        }
    }

    /// The next complete packet in the read buffer, if any.
    pub(crate) fn next_packet(&mut self) -> Result<Option<Packet>, LinkError> {
        match Packet::read(&mut self.rbuf, MAX_PACKET) {
            Ok(packet) => {
                if self.rbuf.is_empty() && self.rbuf.capacity() > KEEP_BUFFER {
                    self.rbuf = BytesMut::with_capacity(256);
                }
                Ok(Some(packet))
            }
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(LinkError::Protocol(e.to_string())),
        }
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
        self.next_pkid
    }

    /// Queues a PUBLISH; returns its packet id (0 for QoS 0).
    pub(crate) fn queue_publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: &[u8],
    ) -> u16 {
        let pkid = if qos == QoS::AtMostOnce {
            0
        } else {
            self.pkid()
        };
        let len = 2 + topic.len() + if pkid == 0 { 0 } else { 2 } + payload.len();
        self.wbuf
            .put_u8(0x30 | ((qos as u8) << 1) | u8::from(retain));
        put_remaining_length(&mut self.wbuf, len);
        put_str(&mut self.wbuf, topic);
        if pkid != 0 {
            self.wbuf.put_u16(pkid);
        }
        self.wbuf.put_slice(payload);
        pkid
    }

    /// Queues a SUBSCRIBE for one filter; returns its packet id.
    pub(crate) fn queue_subscribe(&mut self, filter: &str, qos: QoS) -> u16 {
        let pkid = self.pkid();
        self.wbuf.put_u8(0x82);
        put_remaining_length(&mut self.wbuf, 2 + 2 + filter.len() + 1);
        self.wbuf.put_u16(pkid);
        put_str(&mut self.wbuf, filter);
        self.wbuf.put_u8(qos as u8);
        pkid
    }

    pub(crate) fn queue_puback(&mut self, pkid: u16) {
        self.wbuf.put_slice(&[0x40, 0x02]);
        self.wbuf.put_u16(pkid);
    }

    pub(crate) fn queue_pingreq(&mut self) {
        self.wbuf.put_slice(&[0xc0, 0x00]);
    }

    pub(crate) fn queue_disconnect(&mut self) {
        self.wbuf.put_slice(&[0xe0, 0x00]);
    }

    pub(crate) fn has_queued(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Writes everything queued.
    pub(crate) async fn flush(&mut self) -> Result<(), LinkError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| LinkError::Timeout)??;
        self.wbuf.clear();
        if self.wbuf.capacity() > KEEP_BUFFER {
            self.wbuf = BytesMut::with_capacity(256);
        }
        Ok(())
    }

    /// Sends TLS close_notify and FIN after a DISCONNECT, so the broker reads a clean goodbye.
    pub(crate) async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}

fn put_str(buf: &mut BytesMut, s: &str) {
    // Topics are built from validated ids and prefixes, far below 64 KiB.
    buf.put_u16(s.len().min(u16::MAX as usize) as u16);
    buf.put_slice(s.as_bytes());
}

fn put_remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

/// Exponential reconnect backoff with "equal jitter": half of each step is fixed, half random, so
/// a fleet that lost the broker together does not reconnect together.
#[derive(Debug)]
pub(crate) struct Backoff {
    step_ms: u32,
    failures: u32,
}

const BACKOFF_MIN_MS: u32 = 100;
const BACKOFF_MAX_MS: u32 = 10_000;

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            step_ms: BACKOFF_MIN_MS,
            failures: 0,
        }
    }
}

impl Backoff {
    pub(crate) fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// Failures since the last reset, counting the one `next_delay` was just called for.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let step = self.step_ms;
        self.step_ms = (self.step_ms * 2).min(BACKOFF_MAX_MS);
        let half = f64::from(step) / 2.0;
        Duration::from_secs_f64((half + half * rand::rng().random_range(0.0..=1.0)) / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rumqttc::mqttbytes::v4::{Publish, Subscribe};

    /// Our hand-written encodings must read back with rumqttc's decoder.
    #[test]
    fn encodings_match_the_codec() {
        let mut buf = BytesMut::new();
        let mut pkid = 0u16;
        let mut next = || {
            pkid += 1;
            pkid
        };
        let payload = vec![7u8; 300]; // remaining length needs two bytes
        for (qos, retain) in [(QoS::AtMostOnce, false), (QoS::AtLeastOnce, true)] {
            buf.clear();
            let id = if qos == QoS::AtMostOnce { 0 } else { next() };
            buf.put_u8(0x30 | ((qos as u8) << 1) | u8::from(retain));
            put_remaining_length(
                &mut buf,
                2 + 10 + if id == 0 { 0 } else { 2 } + payload.len(),
            );
            put_str(&mut buf, "iot/a/tele");
            if id != 0 {
                buf.put_u16(id);
            }
            buf.put_slice(&payload);
            let Ok(Packet::Publish(p)) = Packet::read(&mut buf, MAX_PACKET) else {
                panic!("not a publish");
            };
            let mut want = Publish::from_bytes("iot/a/tele", qos, Bytes::from(payload.clone()));
            want.retain = retain;
            want.pkid = id;
            assert_eq!(p, want);
        }
        let mut buf = BytesMut::new();
        buf.put_u8(0x82);
        put_remaining_length(&mut buf, 2 + 2 + 9 + 1);
        buf.put_u16(4);
        put_str(&mut buf, "iot/a/cmd");
        buf.put_u8(1);
        let Ok(Packet::Subscribe(s)) = Packet::read(&mut buf, MAX_PACKET) else {
            panic!("not a subscribe");
        };
        let mut want = Subscribe::new("iot/a/cmd", QoS::AtLeastOnce);
        want.pkid = 4;
        assert_eq!(s, want);
        for (bytes, packet) in [
            (
                &[0x40u8, 2, 0, 9][..],
                Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(9)),
            ),
            (&[0xc0, 0][..], Packet::PingReq),
            (&[0xe0, 0][..], Packet::Disconnect),
        ] {
            let mut b = BytesMut::from(bytes);
            assert_eq!(Packet::read(&mut b, MAX_PACKET).unwrap(), packet);
        }
    }

    #[test]
    fn remaining_length_varint() {
        for (len, bytes) in [
            (0usize, vec![0u8]),
            (127, vec![0x7f]),
            (128, vec![0x80, 1]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 1]),
        ] {
            let mut b = BytesMut::new();
            put_remaining_length(&mut b, len);
            assert_eq!(&b[..], &bytes[..], "{len}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut backoff = Backoff::default();
        let mut step = Duration::from_millis(u64::from(BACKOFF_MIN_MS));
        let max = Duration::from_millis(u64::from(BACKOFF_MAX_MS));
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} outside {step:?}"
            );
            step = (step * 2).min(max);
        }
        assert!(backoff.next_delay() <= max);
        assert_eq!(backoff.failures(), 13);
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        let spread: std::collections::HashSet<_> = (0..50)
            .map(|_| {
                let mut b = Backoff::default();
                b.next_delay();
                b.next_delay().as_micros()
            })
            .collect();
        assert!(spread.len() > 10, "reconnects bunch up: {spread:?}");
    }
}
