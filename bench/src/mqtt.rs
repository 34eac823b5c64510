//! The few MQTT 3.1.1 packets the load generator needs, encoded and decoded without I/O.
//!
//! Devices, the plain subscriber and the MQTT-over-WebSocket subscribers all use this one
//! codec, so the client-side cost per message is the same on every path that is compared.

use bytes::{BufMut, BytesMut};

/// Packet type nibbles (MQTT 3.1.1, section 2.2.1).
const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;

/// Quality of service of a publish or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
}

/// A packet from the broker, borrowing from the receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    ConnAck {
        code: u8,
    },
    SubAck {
        pid: u16,
        codes: &'a [u8],
    },
    Publish {
        topic: &'a str,
        payload: &'a [u8],
        qos: u8,
        pid: Option<u16>,
    },
    PubAck {
        pid: u16,
    },
    PingResp,
    /// Anything else; the type nibble, for errors.
    Other(u8),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MqttError {
    #[error("malformed remaining length")]
    Length,
    #[error("malformed {0} packet")]
    Malformed(&'static str),
    #[error("connection refused by the broker, return code {0}")]
    Refused(u8),
    #[error("subscription refused by the broker")]
    SubscribeRefused,
    #[error("unexpected packet type {0}")]
    Unexpected(u8),
}

fn put_remaining_length(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

/// CONNECT with a clean session and no credentials: the TLS client certificate is the identity.
/// `keep_alive_secs` 0 turns keepalive off, which the load generator's clients rely on.
pub fn connect(out: &mut BytesMut, client_id: &str, keep_alive_secs: u16) {
    let body = 10 + 2 + client_id.len();
    out.put_u8(CONNECT << 4);
    put_remaining_length(out, body);
    put_str(out, "MQTT");
    out.put_u8(4); // protocol level 3.1.1
    out.put_u8(0x02); // clean session
    out.put_u16(keep_alive_secs);
    put_str(out, client_id);
}

pub fn subscribe(out: &mut BytesMut, pid: u16, filter: &str, qos: QoS) {
    out.put_u8((SUBSCRIBE << 4) | 0x02);
    put_remaining_length(out, 2 + 2 + filter.len() + 1);
    out.put_u16(pid);
    put_str(out, filter);
    out.put_u8(qos as u8);
}

/// PUBLISH; `pid` is used (and required) only for QoS 1.
pub fn publish(out: &mut BytesMut, topic: &str, payload: &[u8], qos: QoS, retain: bool, pid: u16) {
    let with_pid = qos == QoS::AtLeastOnce;
    out.put_u8((PUBLISH << 4) | ((qos as u8) << 1) | u8::from(retain));
    put_remaining_length(
        out,
        2 + topic.len() + if with_pid { 2 } else { 0 } + payload.len(),
    );
    put_str(out, topic);
    if with_pid {
        out.put_u16(pid);
    }
    out.put_slice(payload);
}

pub fn puback(out: &mut BytesMut, pid: u16) {
    out.put_u8(PUBACK << 4);
    out.put_u8(2);
    out.put_u16(pid);
}

pub fn pingreq(out: &mut BytesMut) {
    out.put_u8(PINGREQ << 4);
    out.put_u8(0);
}

/// Decodes one packet from the front of `buf`: `Ok(None)` when more bytes are needed, else the
/// packet and how many bytes it took.
pub fn decode(buf: &[u8]) -> Result<Option<(Packet<'_>, usize)>, MqttError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut at = 1;
    loop {
        let Some(&byte) = buf.get(at) else {
            return Ok(None);
        };
        len += usize::from(byte & 0x7f) << (7 * (at - 1));
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Err(MqttError::Length);
        }
    }
    let Some(body) = buf.get(at..at + len) else {
        return Ok(None);
    };
    let kind = first >> 4;
    let u16_at =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*body.get(i)?, *body.get(i + 1)?])) };
    let packet = match kind {
        CONNACK => Packet::ConnAck {
            code: *body.get(1).ok_or(MqttError::Malformed("CONNACK"))?,
        },
        SUBACK => Packet::SubAck {
            pid: u16_at(0).ok_or(MqttError::Malformed("SUBACK"))?,
            codes: &body[2..],
        },
        PUBACK => Packet::PubAck {
            pid: u16_at(0).ok_or(MqttError::Malformed("PUBACK"))?,
        },
        PINGRESP => Packet::PingResp,
        PUBLISH => {
            let qos = (first >> 1) & 0x03;
            let bad = || MqttError::Malformed("PUBLISH");
            let topic_len = usize::from(u16_at(0).ok_or_else(bad)?);
            let topic = body.get(2..2 + topic_len).ok_or_else(bad)?;
            let topic = std::str::from_utf8(topic).map_err(|_| bad())?;
            let mut rest = 2 + topic_len;
            let pid = if qos > 0 {
                let pid = u16_at(rest).ok_or_else(bad)?;
                rest += 2;
                Some(pid)
            } else {
                None
            };
            Packet::Publish {
                topic,
                payload: body.get(rest..).ok_or_else(bad)?,
                qos,
                pid,
            }
        }
        other => Packet::Other(other),
    };
    Ok(Some((packet, at + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_at_both_qos_levels() {
        for (qos, pid) in [(QoS::AtMostOnce, None), (QoS::AtLeastOnce, Some(7))] {
            let mut out = BytesMut::new();
            publish(&mut out, "iot/d1/telemetry", b"{\"a\":1}", qos, false, 7);
            let (packet, used) = decode(&out).unwrap().unwrap();
            assert_eq!(used, out.len());
            assert_eq!(
                packet,
                Packet::Publish {
                    topic: "iot/d1/telemetry",
                    payload: b"{\"a\":1}",
                    qos: qos as u8,
                    pid
                }
            );
        }
    }

    #[test]
    fn long_payloads_use_multi_byte_lengths_and_partial_input_waits() {
        let payload = vec![b'x'; 20_000];
        let mut out = BytesMut::new();
        publish(&mut out, "t", &payload, QoS::AtMostOnce, false, 0);
        assert_eq!(out[1] & 0x80, 0x80, "two or more length bytes");
        for cut in [0, 1, 2, 3, 100, out.len() - 1] {
            assert_eq!(decode(&out[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (packet, used) = decode(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert!(matches!(packet, Packet::Publish { payload: p, .. } if p.len() == 20_000));
    }

    #[test]
    fn control_packets_decode() {
        let cases: [(&[u8], Packet<'_>); 4] = [
            (&[0x20, 2, 0, 0], Packet::ConnAck { code: 0 }),
            (
                &[0x90, 3, 0, 1, 0],
                Packet::SubAck {
                    pid: 1,
                    codes: &[0],
                },
            ),
            (&[0x40, 2, 0, 9], Packet::PubAck { pid: 9 }),
            (&[0xd0, 0], Packet::PingResp),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode(bytes).unwrap(), Some((want, bytes.len())));
        }
        assert_eq!(decode(&[0x40, 1, 0]), Err(MqttError::Malformed("PUBACK")));
        assert_eq!(
            decode(&[0x30, 0xff, 0xff, 0xff, 0xff, 1]),
            Err(MqttError::Length)
        );
    }

    #[test]
    fn encoders_produce_what_the_spec_says() {
        let mut out = BytesMut::new();
        connect(&mut out, "c1", 0);
        assert_eq!(
            &out[..],
            &[0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 0, 0, 2, b'c', b'1']
        );
        out.clear();
        subscribe(&mut out, 1, "a/#", QoS::AtMostOnce);
        assert_eq!(&out[..], &[0x82, 8, 0, 1, 0, 3, b'a', b'/', b'#', 0]);
        out.clear();
        puback(&mut out, 258);
        pingreq(&mut out);
        assert_eq!(&out[..], &[0x40, 2, 1, 2, 0xc0, 0]);
    }
}
