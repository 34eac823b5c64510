//! Fuzz target: WebSocket text frames through `protocol::decode_json`, held to the CBOR path.
#![no_main]

use iot_bridge::protocol::{decode_cbor, decode_json, ErrorCode};
use iot_bridge_fuzz::{assert_same_outcome, check_outcome, to_cbor};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // A text frame that is not UTF-8 is closed with 1007 before it reaches the decoder.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let decoded = decode_json(text);
    check_outcome(&decoded);

    let Ok(value) = serde_json::from_str::<Value>(text) else {
        // Not JSON at all: only `bad_frame` fits.
        assert!(
            matches!(&decoded, Err(e) if e.code == ErrorCode::BadFrame),
            "unparsable text not refused as bad_frame: {decoded:?}"
        );
        return;
    };
    // The same message sent on the CBOR subprotocol must be read the same way.
    let from_cbor = decode_cbor(&to_cbor(&value));
    assert_same_outcome(&decoded, &from_cbor, "JSON frame re-sent as CBOR");
});
