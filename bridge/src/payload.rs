//! Decoding device payloads (JSON or CBOR maps, status words, acks). Pure functions, no I/O.

use serde_json::{Map, Value};

/// Why a device payload was refused. Counted and logged by the caller; never fatal.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PayloadError {
    #[error("payload is empty")]
    Empty,
    #[error("payload of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid CBOR: {0}")]
    Cbor(String),
    #[error("payload is not a map")]
    NotAMap,
    #[error("unknown status {0:?}, expected online or offline")]
    Status(String),
    #[error("ack has no string id")]
    AckId,
}

/// Maximum nesting accepted in a device map: deeper payloads are junk, and deep recursion is a risk.
pub(crate) const MAX_DEPTH: usize = 16;

/// Decodes a telemetry or state map. JSON maps start with `{` (after whitespace); CBOR maps
/// start with a major-type-5 byte (0xa0..=0xbf), so the first byte tells the two apart.
pub fn decode_map(bytes: &[u8], limit: usize) -> Result<Map<String, Value>, PayloadError> {
    let value: Value = if is_cbor_map(first_byte(bytes, limit)?) {
        let mut reader = std::io::Cursor::new(bytes);
        let value = ciborium::de::from_reader_with_recursion_limit(&mut reader, MAX_DEPTH)
            .map_err(|e| PayloadError::Cbor(e.to_string()))?;
        if reader.position() as usize != bytes.len() {
            return Err(PayloadError::Cbor("trailing bytes after the map".into()));
        }
        value
    } else {
        // serde_json's own recursion limit (128) bounds the parse; MAX_DEPTH is checked after.
        serde_json::from_slice(bytes).map_err(|e| PayloadError::Json(e.to_string()))?
    };
    if depth(&value) > MAX_DEPTH {
        return Err(PayloadError::Json("nested too deeply".into()));
    }
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(PayloadError::NotAMap),
    }
}

/// The payload's first byte after whitespace, once its size is checked against `limit`.
pub(crate) fn first_byte(bytes: &[u8], limit: usize) -> Result<u8, PayloadError> {
    if bytes.len() > limit {
        return Err(PayloadError::TooLarge(bytes.len()));
    }
    bytes
        .iter()
        .copied()
        .find(|b| !b.is_ascii_whitespace())
        .ok_or(PayloadError::Empty)
}

/// Whether a payload's first byte is a CBOR map header (major type 5): JSON maps start with `{`.
pub(crate) fn is_cbor_map(first: u8) -> bool {
    (0xa0..=0xbf).contains(&first)
}

/// Nesting depth of a JSON value (a scalar is 0); shared by every decoder's depth limit.
pub(crate) fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// `online` / `offline` (surrounding whitespace and case ignored).
pub fn decode_status(bytes: &[u8]) -> Result<bool, PayloadError> {
    let text = String::from_utf8_lossy(bytes);
    match text.trim().to_ascii_lowercase().as_str() {
        "online" => Ok(true),
        "offline" => Ok(false),
        "" => Err(PayloadError::Empty),
        other => Err(PayloadError::Status(other.chars().take(32).collect())),
    }
}

/// A device's answer to a command.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub id: String,
    pub ok: bool,
    pub result: Option<Value>,
    pub error: Option<String>,
}

pub fn decode_ack(bytes: &[u8], limit: usize) -> Result<Ack, PayloadError> {
    let mut map = decode_map(bytes, limit)?;
    let id = match map.remove("id") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return Err(PayloadError::AckId),
    };
    let ok = map.get("ok").and_then(Value::as_bool).unwrap_or(false);
    let error = match map.remove("error") {
        Some(Value::String(s)) => Some(s),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    Ok(Ack {
        id,
        ok,
        result: map.remove("result"),
        error: if ok {
            None
        } else {
            Some(error.unwrap_or_else(|| "device refused the command".into()))
        },
    })
}

/// The `ts` field of a telemetry map if it is a plausible ms timestamp.
pub fn timestamp(map: &Map<String, Value>) -> Option<i64> {
    map.get("ts").and_then(Value::as_i64).filter(|ts| *ts > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cbor(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(v, &mut out).unwrap();
        out
    }

    #[test]
    fn json_and_cbor_maps_decode_the_same() {
        let v = json!({"temperature": 21.5, "on": true, "mode": "heat", "ts": 1700000000000i64});
        let from_json = decode_map(v.to_string().as_bytes(), 1024).unwrap();
        let from_cbor = decode_map(&cbor(&v), 1024).unwrap();
        assert_eq!(from_json, from_cbor);
        assert_eq!(timestamp(&from_json), Some(1700000000000));
    }

    #[test]
    fn bad_payloads_are_errors() {
        type Check = fn(&PayloadError) -> bool;
        let cases: &[(&[u8], Check)] = &[
            (b"", |e| *e == PayloadError::Empty),
            (b"   ", |e| *e == PayloadError::Empty),
            (b"{\"a\":", |e| matches!(e, PayloadError::Json(_))),
            (b"[1,2]", |e| *e == PayloadError::NotAMap),
            (b"42", |e| *e == PayloadError::NotAMap),
            (b"\xff\xfe\x00", |e| matches!(e, PayloadError::Json(_))),
            (&[0xa2, 0x61, 0x61], |e| matches!(e, PayloadError::Cbor(_))),
            (&[0xbf, 0xff, 0xff], |e| matches!(e, PayloadError::Cbor(_))),
        ];
        for (bytes, check) in cases {
            let err = decode_map(bytes, 1024).unwrap_err();
            assert!(check(&err), "{bytes:?}: {err:?}");
        }
        assert_eq!(
            decode_map(&[b' '; 2000], 1024),
            Err(PayloadError::TooLarge(2000))
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = "{\"a\":".repeat(40) + "1" + &"}".repeat(40);
        assert!(decode_map(deep.as_bytes(), 1 << 20).is_err());
        let mut v = json!(1);
        for _ in 0..40 {
            v = json!({ "a": v });
        }
        assert!(decode_map(&cbor(&v), 1 << 20).is_err());
    }

    #[test]
    fn status_words() {
        assert_eq!(decode_status(b"online"), Ok(true));
        assert_eq!(decode_status(b" OFFLINE\n"), Ok(false));
        assert!(matches!(
            decode_status(b"maybe"),
            Err(PayloadError::Status(_))
        ));
        assert_eq!(decode_status(b""), Err(PayloadError::Empty));
    }

    #[test]
    fn acks() {
        let ok = decode_ack(br#"{"id":"b-1","ok":true,"result":{"on":true}}"#, 1024).unwrap();
        assert!(ok.ok && ok.error.is_none() && ok.result == Some(json!({"on": true})));
        let no = decode_ack(br#"{"id":"b-2","ok":false,"error":"too hot"}"#, 1024).unwrap();
        assert_eq!(no.error.as_deref(), Some("too hot"));
        let vague = decode_ack(br#"{"id":"b-3"}"#, 1024).unwrap();
        assert!(!vague.ok && vague.error.is_some());
        assert_eq!(
            decode_ack(br#"{"ok":true}"#, 1024),
            Err(PayloadError::AckId)
        );
    }
}
