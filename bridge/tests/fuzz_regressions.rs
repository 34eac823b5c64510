//! Regression tests from fuzzing (bridge/fuzz, docs/fuzzing.md): the inputs the fuzz targets
//! found or were pointed at, inline, so the ordinary test run keeps covering those shapes.

use iot_bridge::payload::{decode_ack, decode_map, decode_status, PayloadError};
use iot_bridge::protocol::{decode_cbor, decode_json, ClientMsg, DecodeError, ErrorCode, Request};
use iot_bridge::topic::{self, Channel, Pattern};
use serde_json::{json, Value};

fn cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

/// A `command` whose `params` hold arrays nested so that the whole message is `depth` deep.
fn nested_command(depth: usize) -> String {
    let arrays = depth - 2; // the message object and `params` are two levels
    format!(
        r#"{{"type":"command","device":"x","action":"set","params":{{"a":{}{}}}}}"#,
        "[".repeat(arrays),
        "]".repeat(arrays)
    )
}

fn bad_frame(outcome: Result<Request, DecodeError>) -> DecodeError {
    let err = outcome.expect_err("should be refused");
    assert_eq!(err.code, ErrorCode::BadFrame, "{}", err.message);
    assert!(err.req.is_none() && !err.message.is_empty());
    err
}

// --- WebSocket messages -------------------------------------------------------------------------

#[test]
fn message_at_the_depth_limit_is_read_the_same_from_json_and_cbor() {
    let text = nested_command(32);
    let value: Value = serde_json::from_str(&text).unwrap();
    let from_json = decode_json(&text).unwrap();
    assert!(matches!(from_json.body, ClientMsg::Command { .. }));
    assert_eq!(decode_cbor(&cbor(&value)).unwrap(), from_json);
}

/// Found by the `ws_json` invariant (JSON and CBOR frames read the same): a message nested 33
/// deep used to be accepted on JSON, which had no depth check of its own (only serde_json's 128).
#[test]
fn message_past_the_depth_limit_is_refused_on_both_wires() {
    let text = nested_command(33);
    let value: Value = serde_json::from_str(&text).unwrap();
    assert!(decode_json(&text).is_err());
    assert!(decode_cbor(&cbor(&value)).is_err());
}

/// Found by `ws_cbor` (crashes/ws_cbor/deep_message_error_code.cbor, as minimized by
/// `cargo fuzz tmin`: a 4-entry map whose last value is 32 nested arrays around 31). Past the
/// depth limit the two wires refuse differently: CBOR stops in ciborium's recursion limit
/// (`bad_frame`, no `req`), JSON in `decode_value`'s depth check (`bad_request`, `req` echoed).
#[test]
fn message_past_the_depth_limit_fails_the_same_on_both_wires() {
    let found = [
        &b"\xa4dtypeistbscribecrer2gdvi66375f=lu=g-"[..],
        &[0x81; 32],
        &[0x18, 0x1f],
    ]
    .concat();
    let readable =
        json!({"type": "ping", "req": "r", "x": (0..32).fold(json!(31), |v, _| json!([v]))});
    for frame in [found, cbor(&readable)] {
        let value: Value = ciborium::de::from_reader_with_recursion_limit(&frame[..], 256).unwrap();
        let from_cbor = decode_cbor(&frame).unwrap_err();
        let from_json = decode_json(&value.to_string()).unwrap_err();
        assert_eq!(
            (from_cbor.code, from_cbor.req),
            (from_json.code, from_json.req),
            "{value}"
        );
    }
}

#[test]
fn very_deep_frames_are_bad_frames_not_stack_overflows() {
    bad_frame(decode_json(&"[".repeat(100_000)));
    bad_frame(decode_json(&"{\"a\":".repeat(200)));
    // Definite arrays of one element, and indefinite arrays that are never closed.
    bad_frame(decode_cbor(&[0x81; 100_000]));
    bad_frame(decode_cbor(&[0x9f; 100_000]));
    // Maps of one entry, each value the next map.
    bad_frame(decode_cbor(&[0xa1, 0x61, b'a'].repeat(10_000)));
}

#[test]
fn truncated_cbor_frames_are_bad_frames() {
    let whole = cbor(&json!({
        "type": "command", "req": "c1", "device": "light-1", "action": "set",
        "params": {"on": true, "level": 0.5, "big": u64::MAX, "neg": i64::MIN, "list": [1, "x", null]},
        "timeout_ms": 5000
    }));
    assert!(decode_cbor(&whole).is_ok());
    for end in 0..whole.len() {
        bad_frame(decode_cbor(&whole[..end]));
    }
    let mut trailing = whole.clone();
    trailing.push(0x00);
    let err = bad_frame(decode_cbor(&trailing));
    assert!(err.message.contains("trailing"), "{}", err.message);
}

#[test]
fn indefinite_length_cbor_reads_like_definite() {
    // {_ "type": "command", "device": (_ "lig" "ht-1"), "action": "set",
    //    "params": {_ "on": true, "list": [_ 1, 2]}}
    let mut frame = vec![0xbf];
    frame.extend(b"\x64type\x67command");
    frame.extend(b"\x66device\x7f\x63lig\x64ht-1\xff");
    frame.extend(b"\x66action\x63set");
    frame.extend(b"\x66params\xbf\x62on\xf5\x64list\x9f\x01\x02\xff\xff");
    frame.push(0xff);
    let text =
        r#"{"type":"command","device":"light-1","action":"set","params":{"on":true,"list":[1,2]}}"#;
    assert_eq!(decode_cbor(&frame).unwrap(), decode_json(text).unwrap());
    // A break with nothing open, and an indefinite map missing its break.
    bad_frame(decode_cbor(&[0xff]));
    bad_frame(decode_cbor(&frame[..frame.len() - 1]));
}

#[test]
fn huge_numbers_are_refused_or_kept_exactly() {
    // Beyond f64: not JSON serde_json can hold, so the frame is unreadable.
    bad_frame(decode_json(r#"{"type":"ping","req":1e400}"#));
    // u64::MAX is a fine req and is echoed exactly.
    let max = decode_json(r#"{"type":"ping","req":18446744073709551615}"#).unwrap();
    assert_eq!(max.req, Some(json!(u64::MAX)));
    // One past u64::MAX becomes a float, which a u64 field refuses, keeping the req.
    let err = decode_json(
        r#"{"type":"command","req":"t","device":"x","action":"set","timeout_ms":18446744073709551616}"#,
    )
    .unwrap_err();
    assert_eq!(
        (err.code, err.req),
        (ErrorCode::BadRequest, Some(json!("t")))
    );

    // CBOR integers JSON values cannot hold, as the req of a ping: -2^64 (major type 1, all
    // ones) and a 9-byte bignum (tag 2).
    let ping = b"\xa2\x64type\x64ping\x63req";
    bad_frame(decode_cbor(
        &[&ping[..], b"\x3b\xff\xff\xff\xff\xff\xff\xff\xff"].concat(),
    ));
    bad_frame(decode_cbor(
        &[&ping[..], b"\xc2\x49\x01\0\0\0\0\0\0\0\0"].concat(),
    ));
    // The same header with a value that fits is fine.
    let small = decode_cbor(&[&ping[..], b"\x3b\x7f\xff\xff\xff\xff\xff\xff\xff"].concat());
    assert_eq!(small.unwrap().req, Some(json!(i64::MIN)));
}

#[test]
fn cbor_only_shapes_are_bad_frames() {
    // A byte string, a non-string map key and a tagged value have no JSON equivalent.
    bad_frame(decode_cbor(b"\xa2\x64type\x64ping\x63req\x42ab"));
    bad_frame(decode_cbor(b"\xa2\x64type\x64ping\x01\x02"));
    bad_frame(decode_cbor(b"\xa2\x64type\x64ping\x63req\xc1\x01"));
    // Text that is not UTF-8.
    bad_frame(decode_cbor(b"\xa1\x64type\x64pi\xffg"));
}

// --- Device payloads ----------------------------------------------------------------------------

fn nested_payload(depth: usize) -> Value {
    (1..depth).fold(json!({"v": 1}), |inner, _| json!({ "a": inner }))
}

#[test]
fn payload_depth_limit_is_the_same_for_json_and_cbor() {
    for (depth, accepted) in [(16, true), (17, false)] {
        let v = nested_payload(depth);
        let from_json = decode_map(v.to_string().as_bytes(), 1 << 20);
        let from_cbor = decode_map(&cbor(&v), 1 << 20);
        assert_eq!(from_json.is_ok(), accepted, "JSON, depth {depth}");
        assert_eq!(from_cbor.is_ok(), accepted, "CBOR, depth {depth}");
        if accepted {
            assert_eq!(from_json, from_cbor);
        }
    }
    // Far past the limit: refused without exhausting the stack.
    assert!(decode_map(&[0xa1, 0x61, b'a'].repeat(10_000), 1 << 20).is_err());
    assert!(decode_map("{\"a\":".repeat(10_000).as_bytes(), 1 << 20).is_err());
}

#[test]
fn truncated_and_padded_cbor_payloads_are_refused() {
    let whole =
        cbor(&json!({"temperature": 21.5, "on": true, "mode": "heat", "ts": 1_700_000_000_000i64}));
    assert!(decode_map(&whole, 1024).is_ok());
    for end in 1..whole.len() {
        assert!(
            matches!(decode_map(&whole[..end], 1024), Err(PayloadError::Cbor(_))),
            "prefix of {end} bytes"
        );
    }
    // JSON may have leading whitespace; CBOR may not (0x20 is the CBOR integer -1).
    let mut padded = vec![b' '];
    padded.extend(&whole);
    assert!(matches!(
        decode_map(&padded, 1024),
        Err(PayloadError::Cbor(_))
    ));
}

#[test]
fn indefinite_length_payload_reads_like_json() {
    // {_ "on": true, "name": (_ "kit" "chen"), "levels": [_ 1, 2.5]}
    let bytes =
        b"\xbf\x62on\xf5\x64name\x7f\x63kit\x64chen\xff\x66levels\x9f\x01\xf9\x41\x00\xff\xff";
    let from_json = decode_map(br#"{"on":true,"name":"kitchen","levels":[1,2.5]}"#, 1024);
    assert_eq!(decode_map(bytes, 1024), from_json);
    let ack = decode_ack(b"\xbf\x62id\x63b-1\x62ok\xf5\xff", 1024).unwrap();
    assert!(ack.ok && ack.id == "b-1" && ack.error.is_none());
}

#[test]
fn huge_numbers_in_payloads() {
    assert!(matches!(
        decode_map(br#"{"t":1e400}"#, 1024),
        Err(PayloadError::Json(_))
    ));
    let big = decode_map(br#"{"t":18446744073709551616}"#, 1024).unwrap();
    assert_eq!(big["t"].as_f64(), Some(18_446_744_073_709_551_616.0));
    // -2^64 and a 9-byte bignum in CBOR.
    assert!(decode_map(b"\xa1\x61t\x3b\xff\xff\xff\xff\xff\xff\xff\xff", 1024).is_err());
    assert!(decode_map(b"\xa1\x61t\xc2\x49\x01\0\0\0\0\0\0\0\0", 1024).is_err());
}

#[test]
fn status_with_invalid_utf8_is_an_unknown_status() {
    for bytes in [
        &b"\xffonline"[..],
        b"online\xff",
        b"\xc3",
        b"onl\xc3ine",
        b"\xef\xbb\xbfonline", // a byte order mark is not whitespace
    ] {
        assert!(
            matches!(decode_status(bytes), Err(PayloadError::Status(_))),
            "{bytes:?}"
        );
    }
    // What is shown of an unknown status stays short, however long the junk.
    match decode_status(&[0xff; 1000]) {
        Err(PayloadError::Status(shown)) => assert!(shown.chars().count() <= 32),
        other => panic!("{other:?}"),
    }
    assert_eq!(decode_status(b"\tOnLine \r\n"), Ok(true));
}

// --- Topics and patterns ------------------------------------------------------------------------

#[test]
fn topics_never_yield_wildcard_or_odd_ids() {
    for t in [
        "iot/+/meta",
        "iot/#/meta",
        "iot/a/b/meta",
        "iot/é/meta",
        "iot/a b/meta",
        "iot/a\u{0}/meta",
        "iot//meta",
        "iot/meta",
        "iot/a/meta/",
        "iot/a/",
        "iot",
        "",
    ] {
        assert_eq!(topic::parse("iot", t), None, "{t:?}");
    }
    let long = format!("iot/{}/meta", "a".repeat(65));
    assert_eq!(topic::parse("iot", &long), None);
    let longest = format!("iot/{}/meta", "a".repeat(64));
    assert!(topic::parse("iot", &longest).is_some());
    // An empty prefix and a prefix with wildcards are taken literally.
    assert_eq!(topic::parse("", "/a/ack"), Some(("a", Channel::Ack)));
    assert_eq!(
        topic::parse("i+/#", "i+/#/a/cmd"),
        Some(("a", Channel::Cmd))
    );
    assert_eq!(topic::parse("i+", "ix/a/cmd"), None);
}

#[test]
fn glob_patterns_with_runs_of_wildcards() {
    let cases = [
        ("**", "", true),
        ("*?", "", false),
        ("*?", "a", true),
        ("?*?", "ab", true),
        ("?*?", "a", false),
        ("a*a*a", "aaa", true),
        ("a*a*a", "aa", false),
        ("*-1", "light-1-1", true),
        ("*-1", "light-10", false),
    ];
    for (pattern, id, want) in cases {
        let p = Pattern::parse(pattern).unwrap();
        assert_eq!(p.matches(id), want, "{pattern:?} on {id:?}");
    }
    // A one-character wildcard is one character, not one byte.
    assert!(Pattern::parse("t?").unwrap().matches("té"));
    for bad in ["a/*", "+", "#", "*\u{0}", "é*"] {
        assert!(Pattern::parse(bad).is_none(), "{bad:?}");
    }
}
