//! Property tests: the two wire formats carry the same messages, device payloads decode the same
//! from JSON and CBOR, and topic/pattern handling agrees with simple reference definitions.

use iot_bridge::protocol::{self, CommandStatus, ServerMsg};
use iot_bridge::topic::{self, Channel, Pattern};
use iot_bridge::{payload, telemetry};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u32>().prop_map(|n| json!(n)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-z_]{1,8}", value(), 0..5).prop_map(|m| m.into_iter().collect())
}

fn client_message() -> impl Strategy<Value = Value> {
    let req = prop_oneof![
        Just(Value::Null),
        "[a-z0-9]{1,8}".prop_map(Value::String),
        any::<u16>().prop_map(|n| json!(n))
    ];
    let ids = prop::collection::vec("[a-z*?-]{1,10}", 0..4);
    prop_oneof![
        (req.clone(), ids.clone()).prop_map(|(req, devices)| json!({"type":"subscribe","req":req,"devices":devices})),
        (req.clone(), ids).prop_map(|(req, devices)| json!({"type":"unsubscribe","req":req,"devices":devices})),
        (req.clone(), "[a-z0-9-]{1,10}", object(), proptest::option::of(1u64..100_000)).prop_map(
            |(req, device, params, timeout)| {
                json!({"type":"command","req":req,"device":device,"action":"set","params":params,"timeout_ms":timeout})
            }
        ),
        (req.clone(), "[a-z]{1,6}").prop_map(|(req, t)| json!({"type": t, "req": req})),
        (req, value()).prop_map(|(req, junk)| json!({"type":"command","req":req,"device":junk})),
        value(),
    ]
}

fn cbor(v: &impl serde::Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

proptest! {
    #[test]
    fn client_messages_decode_the_same_from_json_and_cbor(msg in client_message()) {
        let from_json = protocol::decode_json(&msg.to_string());
        let from_cbor = protocol::decode_cbor(&cbor(&msg));
        match (from_json, from_cbor) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => {
                prop_assert_eq!(a.code, b.code);
                prop_assert_eq!(a.req, b.req);
            }
            (a, b) => prop_assert!(false, "formats disagree: {:?} vs {:?}", a, b),
        }
    }

    #[test]
    fn server_messages_encode_the_same_in_json_and_cbor(data in object(), seq in any::<u64>(), ts in any::<i64>(), result in value(), err in proptest::option::of(".{0,20}")) {
        let req = json!("r");
        let tele = telemetry::Data::from_map(&data);
        let msgs = [
            ServerMsg::Telemetry { device: "d-1", seq, ts, data: telemetry::View::Whole(&tele) },
            ServerMsg::State { device: "d-1", ts, state: &data },
            ServerMsg::CommandStatus { req: Some(&req), id: "i-1", device: "d", status: CommandStatus::Rejected, result: Some(&result), error: err.as_deref() },
        ];
        for msg in &msgs {
            let from_json: Value = serde_json::from_str(&msg.to_json()).unwrap();
            let from_cbor: Value = ciborium::de::from_reader(&msg.to_cbor()[..]).unwrap();
            prop_assert_eq!(&from_json, &from_cbor);
            let converted: Value = serde_json::from_str(&protocol::cbor_to_json(&msg.to_cbor())).unwrap();
            prop_assert_eq!(&from_json, &converted);
        }
    }

    #[test]
    fn device_maps_decode_the_same_from_json_and_cbor(map in object()) {
        let v = Value::Object(map);
        let a = payload::decode_map(v.to_string().as_bytes(), 1 << 20);
        let b = payload::decode_map(&cbor(&v), 1 << 20);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn telemetry_keeps_what_a_map_decode_keeps_but_ts(map in object()) {
        let v = Value::Object(map);
        for bytes in [v.to_string().into_bytes(), cbor(&v)] {
            let as_map = payload::decode_map(&bytes, 1 << 20);
            let as_telemetry = telemetry::decode(&bytes, 1 << 20);
            match (as_map, as_telemetry) {
                (Ok(mut m), Ok((ts, data))) => {
                    prop_assert_eq!(ts, payload::timestamp(&m));
                    m.remove("ts");
                    prop_assert_eq!(data.map(), m);
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "decoders disagree: {:?} vs {:?}", a, b),
            }
        }
    }

    #[test]
    fn telemetry_text_is_the_compact_payload_without_ts(
        map in prop::collection::btree_map(".{0,6}", value(), 0..5),
        ts in proptest::option::of(any::<i64>()),
    ) {
        // Keys of any characters (quotes, backslashes, controls, non-ASCII), with or without a
        // `ts`: sent compact, the kept text is the map without `ts`, byte for byte; sent pretty,
        // the same map (values keep the device's spelling, whitespace inside them included).
        let mut map: Map<String, Value> = map.into_iter().collect();
        if let Some(ts) = ts {
            map.insert("ts".into(), json!(ts));
        }
        let v = Value::Object(map.clone());
        map.remove("ts");
        let want = Value::Object(map).to_string();
        let (got_ts, data) = telemetry::decode(v.to_string().as_bytes(), 1 << 20).unwrap();
        prop_assert_eq!(data.as_str(), want.as_str());
        prop_assert_eq!(got_ts, ts.filter(|t| *t > 0));
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        let (got_ts, data) = telemetry::decode(pretty.as_bytes(), 1 << 20).unwrap();
        prop_assert_eq!(serde_json::from_str::<Value>(data.as_str()).unwrap(), serde_json::from_str::<Value>(&want).unwrap());
        prop_assert_eq!(got_ts, ts.filter(|t| *t > 0));
    }

    #[test]
    fn device_payload_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = telemetry::decode(&bytes, 1024);
        let _ = payload::decode_map(&bytes, 1024);
        let _ = payload::decode_ack(&bytes, 1024);
        let _ = payload::decode_status(&bytes);
        let _ = protocol::decode_cbor(&bytes);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = protocol::decode_json(text);
        }
    }

    #[test]
    fn topics_never_yield_an_id_a_command_could_misuse(t in "[a-z+#/]{0,6}/[a-zA-Z0-9_+#/-]{0,8}/[a-z+#/]{0,10}") {
        if let Some((id, _)) = topic::parse("iot", &t) {
            prop_assert!(topic::is_valid_device_id(id));
            prop_assert!(!id.contains(['+', '#', '/']));
        }
    }

    #[test]
    fn topics_round_trip(id in "[A-Za-z0-9_-]{1,64}") {
        for channel in [Channel::Meta, Channel::Status, Channel::Telemetry, Channel::State, Channel::Ack, Channel::Cmd] {
            let t = topic::device_topic("iot", &id, channel);
            prop_assert_eq!(topic::parse("iot", &t), Some((id.as_str(), channel)));
        }
    }

    #[test]
    fn patterns_agree_with_a_reference_glob(pattern in "[ab*?]{1,8}", id in "[ab]{0,8}") {
        let p = Pattern::parse(&pattern).unwrap();
        prop_assert_eq!(p.matches(&id), reference_glob(pattern.as_bytes(), id.as_bytes()), "{} vs {}", pattern, id);
    }
}

/// The textbook recursive definition of `*` and `?`, slow and obviously right.
fn reference_glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            reference_glob(&p[1..], s) || (!s.is_empty() && reference_glob(p, &s[1..]))
        }
        (Some(b'?'), Some(_)) => reference_glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => reference_glob(&p[1..], &s[1..]),
        _ => false,
    }
}
