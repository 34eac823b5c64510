//! Telemetry and state payload encoding: JSON or CBOR maps, told apart on the wire by the first byte.

use serde_json::{Map, Value};

/// Wire format of a device's `telemetry` and `state` payloads (`meta`, `status`, `ack` are always JSON/text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    Json,
    Cbor,
}

/// Why a payload could not be decoded. Causes are in the messages, never `source`s (see
/// [`crate::SimError`]).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("JSON: {0}")]
    Json(serde_json::Error),
    #[error("CBOR: {0}")]
    Cbor(ciborium::de::Error<std::io::Error>),
    #[error("payload is not a map")]
    NotAMap,
}

impl From<serde_json::Error> for CodecError {
    fn from(e: serde_json::Error) -> CodecError {
        CodecError::Json(e)
    }
}

impl From<ciborium::de::Error<std::io::Error>> for CodecError {
    fn from(e: ciborium::de::Error<std::io::Error>) -> CodecError {
        CodecError::Cbor(e)
    }
}

impl PayloadFormat {
    /// The format of a received payload, by the contract's rule: JSON maps start with `{`
    /// (after optional whitespace); anything else is CBOR.
    pub fn detect(payload: &[u8]) -> PayloadFormat {
        match payload.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => PayloadFormat::Json,
            _ => PayloadFormat::Cbor,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Json => "json",
            PayloadFormat::Cbor => "cbor",
        }
    }
}

/// Encodes a map. Encoding an in-memory `serde_json` map cannot fail in either format.
pub fn encode(format: PayloadFormat, map: &Map<String, Value>) -> Vec<u8> {
    match format {
        PayloadFormat::Json => serde_json::to_vec(map).unwrap_or_default(),
        PayloadFormat::Cbor => {
            let mut out = Vec::with_capacity(128);
            // Writing to a Vec has no I/O errors and every serde_json value has a CBOR form.
            let _ = ciborium::into_writer(map, &mut out);
            out
        }
    }
}

/// Decodes a JSON or CBOR map, choosing the format from the first byte.
pub fn decode(payload: &[u8]) -> Result<Map<String, Value>, CodecError> {
    let value: Value = match PayloadFormat::detect(payload) {
        PayloadFormat::Json => serde_json::from_slice(payload)?,
        PayloadFormat::Cbor => ciborium::from_reader(payload)?,
    };
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(CodecError::NotAMap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Kind;
    use crate::model::Model;
    use serde_json::json;

    #[test]
    fn both_formats_round_trip_every_kind() {
        for kind in Kind::ALL {
            let mut model = Model::new(kind, 11);
            for _ in 0..20 {
                let mut t = model.step(1.0);
                t.insert("ts".into(), json!(1_700_000_000_123u64));
                for format in [PayloadFormat::Json, PayloadFormat::Cbor] {
                    let bytes = encode(format, &t);
                    assert_eq!(PayloadFormat::detect(&bytes), format, "{kind}");
                    assert_eq!(decode(&bytes).unwrap(), t, "{kind} {format:?}");
                }
                let state = model.controls().clone();
                assert_eq!(decode(&encode(PayloadFormat::Cbor, &state)).unwrap(), state);
            }
        }
    }

    #[test]
    fn cbor_is_smaller_and_not_json() {
        let t = json!({"temperature": 21.25, "humidity": 40.5, "hvac": "idle", "ts": 1_700_000_000_000u64});
        let map = t.as_object().unwrap();
        let cbor = encode(PayloadFormat::Cbor, map);
        let json = encode(PayloadFormat::Json, map);
        assert_ne!(cbor[0], b'{');
        assert!(cbor.len() < json.len());
    }

    #[test]
    fn decode_rejects_non_maps_and_garbage() {
        // `[` is not `{`, so this is read as CBOR, where it is not a valid map either.
        assert!(decode(b"[1,2]").is_err());
        assert!(matches!(decode(b"{oops"), Err(CodecError::Json(_))));
        assert!(matches!(decode(&[0xff, 0x00]), Err(CodecError::Cbor(_))));
        let mut cbor_array = Vec::new();
        ciborium::into_writer(&json!([1, 2]), &mut cbor_array).unwrap();
        assert!(matches!(decode(&cbor_array), Err(CodecError::NotAMap)));
        assert_eq!(decode(b" {\"a\":1}").unwrap()["a"], 1);
    }
}
