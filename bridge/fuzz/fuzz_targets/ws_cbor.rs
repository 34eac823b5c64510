//! Fuzz target: WebSocket binary frames through `protocol::decode_cbor`, held to the JSON path.
#![no_main]

use iot_bridge::protocol::{decode_cbor, decode_json, ErrorCode};
use iot_bridge_fuzz::{assert_same_outcome, check_outcome};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let decoded = decode_cbor(data);
    check_outcome(&decoded);

    // Read the frame independently, with a recursion limit well above the protocol's (32) and
    // serde_json's (128), so that messages past the depth limit are compared too: both wires
    // must refuse them the same way.
    let mut reader = std::io::Cursor::new(data);
    let read = ciborium::de::from_reader_with_recursion_limit::<Value, _>(&mut reader, 256);
    let whole = usize::try_from(reader.position()).is_ok_and(|p| p == data.len());
    let value = match read {
        Ok(value) if whole => value,
        _ => {
            // Undecodable, or an item followed by trailing bytes: only `bad_frame` fits.
            assert!(
                matches!(&decoded, Err(e) if e.code == ErrorCode::BadFrame),
                "bad CBOR not refused as bad_frame: {decoded:?}"
            );
            return;
        }
    };
    // The same message sent on the JSON subprotocol must be read the same way.
    let from_json = decode_json(&value.to_string());
    assert_same_outcome(&decoded, &from_json, "CBOR frame re-sent as JSON");
});
