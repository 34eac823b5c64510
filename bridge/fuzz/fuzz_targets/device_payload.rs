//! Fuzz target: MQTT payloads through `payload::{decode_map, decode_ack, decode_status}` and
//! `telemetry::decode`.
#![no_main]

use iot_bridge::payload::{decode_ack, decode_map, decode_status, timestamp, PayloadError};
use iot_bridge_fuzz::{depth, to_cbor, PAYLOAD_DEPTH};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// A typical `limits.max_payload_bytes`; fuzz inputs stay below it.
const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let map = decode_map(data, LIMIT);
    match &map {
        Ok(map) => {
            let value = Value::Object(map.clone());
            assert!(
                depth(&value) <= PAYLOAD_DEPTH,
                "accepted a map nested too deeply"
            );
            // A device may send either format: the same map must come back from both.
            let json = value.to_string();
            assert_eq!(
                decode_map(json.as_bytes(), usize::MAX).as_ref(),
                Ok(map),
                "map re-encoded as JSON decodes differently: {json}"
            );
            let cbor = to_cbor(&value);
            assert_eq!(
                decode_map(&cbor, usize::MAX).as_ref(),
                Ok(map),
                "map re-encoded as CBOR decodes differently: {cbor:02x?}"
            );
            // The limit is a byte count, checked before anything is parsed.
            assert_eq!(
                decode_map(data, data.len() - 1),
                Err(PayloadError::TooLarge(data.len()))
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    // Telemetry keeps the device's text: it accepts exactly what decode_map accepts, and it
    // holds the same map without `ts`.
    match (iot_bridge::telemetry::decode(data, LIMIT), &map) {
        (Ok((ts, tele)), Ok(map)) => {
            let mut map = map.clone();
            assert_eq!(ts, timestamp(&map), "telemetry read another ts");
            map.remove("ts");
            assert_eq!(tele.map(), map, "telemetry kept other data: {}", tele.as_str());
        }
        (Err(e), Ok(_)) => panic!("telemetry refused a map decode_map accepts: {e}"),
        (Ok((_, tele)), Err(e)) => {
            panic!("telemetry kept {} where decode_map refuses: {e}", tele.as_str())
        }
        (Err(_), Err(_)) => {}
    }

    // An ack is a map with a non-empty string `id`; `error` is set exactly when `ok` is not true.
    match (decode_ack(data, LIMIT), &map) {
        (Ok(ack), Ok(map)) => {
            assert!(matches!(map.get("id"), Some(Value::String(id)) if *id == ack.id));
            assert!(!ack.id.is_empty());
            assert_eq!(ack.ok, map.get("ok") == Some(&Value::Bool(true)));
            assert_eq!(ack.ok, ack.error.is_none(), "{ack:?}");
            assert_eq!(ack.result.as_ref(), map.get("result"));
        }
        (Err(PayloadError::AckId), Ok(map)) => assert!(
            !matches!(map.get("id"), Some(Value::String(id)) if !id.is_empty()),
            "ack with a usable id refused"
        ),
        (Err(e), Err(map_err)) => assert_eq!(&e, map_err),
        (ack, map) => panic!("ack and map decoding disagree: {ack:?} vs {map:?}"),
    }

    // Status words: `online` / `offline`, whitespace and case aside; never panics on junk.
    let text = String::from_utf8_lossy(data);
    let word = text.trim();
    match decode_status(data) {
        Ok(true) => assert!(
            word.eq_ignore_ascii_case("online"),
            "{word:?} read as online"
        ),
        Ok(false) => assert!(
            word.eq_ignore_ascii_case("offline"),
            "{word:?} read as offline"
        ),
        Err(PayloadError::Empty) => assert!(word.is_empty()),
        Err(PayloadError::Status(shown)) => {
            assert!(!word.is_empty() && shown.chars().count() <= 32);
        }
        Err(other) => panic!("unexpected status error {other:?}"),
    }
});
