//! The v1 WebSocket protocol: decoding client requests and encoding bridge messages. No I/O.
//!
//! Decoding is two-step (bytes -> JSON value -> typed request) so that a request that fails
//! validation still has its `req` echoed in the `error` answer.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const SUBPROTOCOL_JSON: &str = "iotbridge.v1.json";
pub const SUBPROTOCOL_CBOR: &str = "iotbridge.v1.cbor";
pub const PROTOCOL_VERSION: &str = "iotbridge.v1";
/// What `welcome.features` announces, so clients need not probe.
pub const FEATURES: &[&str] = &["history", "resume", "max_rate_hz", "fields", "cbor", "acl"];

/// The two wire formats: same messages, JSON text frames or CBOR binary frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Json,
    Cbor,
}

impl Wire {
    pub fn from_subprotocol(name: &str) -> Option<Wire> {
        match name {
            SUBPROTOCOL_JSON => Some(Wire::Json),
            SUBPROTOCOL_CBOR => Some(Wire::Cbor),
            _ => None,
        }
    }

    pub fn subprotocol(self) -> &'static str {
        match self {
            Wire::Json => SUBPROTOCOL_JSON,
            Wire::Cbor => SUBPROTOCOL_CBOR,
        }
    }
}

/// Which encodings a shared frame needs, from the formats of the sessions connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireSet {
    pub json: bool,
    pub cbor: bool,
}

impl WireSet {
    pub fn only(wire: Wire) -> WireSet {
        WireSet {
            json: wire == Wire::Json,
            cbor: wire == Wire::Cbor,
        }
    }
}

/// Maximum nesting of a client message.
const MAX_DEPTH: usize = 32;
/// How deep the parsers go before giving up (serde_json's fixed limit).
const PARSE_DEPTH: usize = 128;

/// Error codes of `error` messages; stable strings, documented in docs/protocol.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a JSON object, not UTF-8, or the wrong frame type for the subprotocol.
    BadFrame,
    /// A known `type` with missing or wrongly typed fields.
    BadRequest,
    UnknownType,
    UnknownDevice,
    InvalidPattern,
    TooManySubscriptions,
    Forbidden,
    RateLimited,
}

/// A request that could not be decoded, with whatever `req` could be recovered.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub req: Option<Value>,
    pub code: ErrorCode,
    pub message: String,
}

/// A decoded client request and its correlation id.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub req: Option<Value>,
    pub body: ClientMsg,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    Subscribe {
        devices: Vec<String>,
        #[serde(default)]
        since: Option<Since>,
        #[serde(default)]
        max_rate_hz: Option<f64>,
        #[serde(default)]
        fields: Option<Vec<String>>,
    },
    Unsubscribe {
        devices: Vec<String>,
    },
    Command {
        device: String,
        action: String,
        #[serde(default)]
        params: Map<String, Value>,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    History {
        device: String,
        #[serde(default)]
        field: Option<String>,
        #[serde(default)]
        from: Option<i64>,
        #[serde(default)]
        to: Option<i64>,
        #[serde(default)]
        limit: Option<usize>,
    },
    List {},
    Ping {},
}

/// Where a resuming client left off: the `resume` token of a snapshot, or the epoch and the
/// last `seq` it received of each device (what a client tracks as telemetry arrives).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Since {
    Token(String),
    Point {
        epoch: String,
        seqs: std::collections::BTreeMap<String, u64>,
    },
}

impl Since {
    /// `None` when the token is not one this bridge makes.
    pub fn resume_point(&self) -> Option<crate::resume::ResumePoint> {
        match self {
            Since::Token(t) => crate::resume::parse(t),
            Since::Point { epoch, seqs } => Some(crate::resume::ResumePoint {
                epoch: epoch.clone(),
                seqs: seqs.clone(),
            }),
        }
    }
}

const KNOWN_TYPES: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "command",
    "history",
    "list",
    "ping",
];

/// Decodes one text frame.
pub fn decode_json(text: &str) -> Result<Request, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError {
        req: None,
        code: ErrorCode::BadFrame,
        message: format!("not valid JSON: {e}"),
    })?;
    decode_value(value)
}

/// Decodes one binary frame of the CBOR subprotocol: the same maps as JSON.
pub fn decode_cbor(bytes: &[u8]) -> Result<Request, DecodeError> {
    let bad = |message: String| DecodeError {
        req: None,
        code: ErrorCode::BadFrame,
        message,
    };
    let mut reader = std::io::Cursor::new(bytes);
    // Parse as deep as JSON's parser does (128) and leave the protocol's 32-level rule to
    // decode_value, so both wires refuse a too-deep message the same way, with its req.
    let value: Value = ciborium::de::from_reader_with_recursion_limit(&mut reader, PARSE_DEPTH)
        .map_err(|e| bad(format!("not valid CBOR: {e}")))?;
    if reader.position() as usize != bytes.len() {
        return Err(bad("trailing bytes after the CBOR message".into()));
    }
    decode_value(value)
}

/// Turns a JSON value into a request; shared by every wire format.
pub fn decode_value(value: Value) -> Result<Request, DecodeError> {
    let Value::Object(mut map) = value else {
        return Err(DecodeError {
            req: None,
            code: ErrorCode::BadFrame,
            message: "a message must be a JSON object with a \"type\"".into(),
        });
    };
    let req = match map.remove("req") {
        None | Some(Value::Null) => None,
        Some(v @ Value::String(_)) if v.as_str().is_some_and(|s| s.len() <= 64) => Some(v),
        Some(v @ Value::Number(_)) => Some(v),
        Some(_) => {
            return Err(DecodeError {
                req: None,
                code: ErrorCode::BadRequest,
                message: "\"req\" must be a string of at most 64 bytes or a number".into(),
            })
        }
    };
    let fail = |code, message: String| DecodeError {
        req: req.clone(),
        code,
        message,
    };
    // serde_json stops at 128 levels; the protocol allows 32 (as the CBOR decoder does).
    if 1 + map.values().map(crate::payload::depth).max().unwrap_or(0) > MAX_DEPTH {
        return Err(fail(
            ErrorCode::BadRequest,
            format!("message nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    let kind = match map.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => {
            return Err(fail(
                ErrorCode::BadRequest,
                "\"type\" must be a string".into(),
            ))
        }
        None => return Err(fail(ErrorCode::BadRequest, "missing \"type\"".into())),
    };
    if !KNOWN_TYPES.contains(&kind.as_str()) {
        let shown: String = kind.chars().take(40).collect();
        return Err(fail(
            ErrorCode::UnknownType,
            format!(
                "unknown type {shown:?}; expected one of {}",
                KNOWN_TYPES.join(", ")
            ),
        ));
    }
    let body = ClientMsg::deserialize(Value::Object(map))
        .map_err(|e| fail(ErrorCode::BadRequest, format!("invalid {kind}: {e}")))?;
    Ok(Request { req, body })
}

/// Device presence as clients see it. `Stale` is what we last knew while the broker link is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Online,
    Offline,
    Stale,
    Unknown,
}

/// Where a command is in its life. Final states are everything but `Accepted` and `Sent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    Accepted,
    Sent,
    Ok,
    Rejected,
    Timeout,
    Offline,
    Forbidden,
}

impl CommandStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Accepted => "accepted",
            CommandStatus::Sent => "sent",
            CommandStatus::Ok => "ok",
            CommandStatus::Rejected => "rejected",
            CommandStatus::Timeout => "timeout",
            CommandStatus::Offline => "offline",
            CommandStatus::Forbidden => "forbidden",
        }
    }
}

/// One device as it appears in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView<'a> {
    pub id: &'a str,
    pub meta: Option<&'a Value>,
    pub presence: Presence,
    pub state: Option<&'a Map<String, Value>>,
    pub telemetry: Option<crate::telemetry::View<'a>>,
    pub seq: u64,
    pub ts: Option<i64>,
}

/// Short listing entry for `list`.
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry<'a> {
    pub id: &'a str,
    pub kind: Option<&'a str>,
    pub name: Option<&'a str>,
    pub room: Option<&'a str>,
    pub presence: Presence,
}

/// Every `type` the bridge sends, in the order of [`ServerMsg::type_index`].
pub const MESSAGE_TYPES: &[&str] = &[
    "welcome",
    "snapshot",
    "telemetry",
    "state",
    "presence",
    "device",
    "command_status",
    "unsubscribed",
    "history",
    "list",
    "pong",
    "broker",
    "permissions",
    "lagging",
    "error",
];

/// Everything the bridge sends. Serialized once per message and shared between sessions.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg<'a> {
    Welcome {
        protocol: &'static str,
        server: String,
        instance: &'a str,
        identity: &'a str,
        permissions: Permissions<'a>,
        broker: &'static str,
        limits: LimitsView,
        /// Optional requests and behaviours this bridge supports.
        features: &'static [&'static str],
    },
    Snapshot {
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a Value>,
        devices: Vec<DeviceView<'a>>,
        epoch: &'a str,
        resume: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Telemetry {
        device: &'a str,
        seq: u64,
        ts: i64,
        data: crate::telemetry::View<'a>,
    },
    State {
        device: &'a str,
        ts: i64,
        state: &'a Map<String, Value>,
    },
    Presence {
        device: &'a str,
        presence: Presence,
    },
    Device {
        device: &'a str,
        meta: Option<&'a Value>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        removed: bool,
    },
    CommandStatus {
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a Value>,
        id: &'a str,
        device: &'a str,
        status: CommandStatus,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a Value>,
        devices: Vec<&'a str>,
    },
    List {
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a Value>,
        devices: Vec<ListEntry<'a>>,
    },
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a Value>,
        device: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        field: Option<&'a str>,
        samples: Vec<SampleView<'a>>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a Value>,
    },
    Broker {
        status: &'static str,
    },
    /// The identity's rights changed (ACL reload).
    Permissions {
        read: &'a [String],
        control: &'a [String],
    },
    Lagging {
        conflated: u64,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a Value>,
        code: ErrorCode,
        message: &'a str,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleView<'a> {
    pub seq: u64,
    pub ts: i64,
    pub data: crate::telemetry::View<'a>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Permissions<'a> {
    pub read: &'a [String],
    pub control: &'a [String],
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitsView {
    pub max_frame_bytes: usize,
    pub max_subscriptions: usize,
}

impl ServerMsg<'_> {
    /// Position of the message's `type` in [`MESSAGE_TYPES`]: what metrics count by, without
    /// comparing strings on the write path.
    pub fn type_index(&self) -> usize {
        match self {
            ServerMsg::Welcome { .. } => 0,
            ServerMsg::Snapshot { .. } => 1,
            ServerMsg::Telemetry { .. } => 2,
            ServerMsg::State { .. } => 3,
            ServerMsg::Presence { .. } => 4,
            ServerMsg::Device { .. } => 5,
            ServerMsg::CommandStatus { .. } => 6,
            ServerMsg::Unsubscribed { .. } => 7,
            ServerMsg::History { .. } => 8,
            ServerMsg::List { .. } => 9,
            ServerMsg::Pong { .. } => 10,
            ServerMsg::Broker { .. } => 11,
            ServerMsg::Permissions { .. } => 12,
            ServerMsg::Lagging { .. } => 13,
            ServerMsg::Error { .. } => 14,
        }
    }

    /// JSON text of the message. Serializing these types cannot fail (string keys, no custom impls).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            // Unreachable in practice; still answer something well-formed rather than panic.
            format!(r#"{{"type":"error","code":"bad_frame","message":"encode failed: {e}"}}"#)
        })
    }

    /// CBOR encoding of the same message.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        if let Err(e) = ciborium::ser::into_writer(self, &mut out) {
            out.clear();
            let msg = format!("encode failed: {e}");
            let fallback = serde_json::json!({"type":"error","code":"bad_frame","message":msg});
            // Encoding a plain JSON value into a Vec cannot fail.
            let _ = ciborium::ser::into_writer(&fallback, &mut out);
        }
        out
    }
}

/// Re-encodes a CBOR message as JSON text (for a frame made before a JSON session appeared).
pub fn cbor_to_json(bytes: &[u8]) -> String {
    ciborium::de::from_reader::<Value, _>(bytes)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| "{}".into())
}

/// Re-encodes a JSON message as CBOR (for a frame made before a CBOR session appeared).
pub fn json_to_cbor(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        let _ = ciborium::ser::into_writer(&v, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_every_request_type() {
        let cases = [
            (
                r#"{"type":"subscribe","req":"1","devices":["a","light-*"]}"#,
                ClientMsg::Subscribe {
                    devices: vec!["a".into(), "light-*".into()],
                    since: None,
                    max_rate_hz: None,
                    fields: None,
                },
            ),
            (
                r#"{"type":"unsubscribe","devices":["a"]}"#,
                ClientMsg::Unsubscribe {
                    devices: vec!["a".into()],
                },
            ),
            (
                r#"{"type":"command","device":"l","action":"set","params":{"on":true},"timeout_ms":500}"#,
                ClientMsg::Command {
                    device: "l".into(),
                    action: "set".into(),
                    params: json!({"on": true}).as_object().cloned().unwrap_or_default(),
                    timeout_ms: Some(500),
                },
            ),
            (r#"{"type":"list","req":7}"#, ClientMsg::List {}),
            (r#"{"type":"ping"}"#, ClientMsg::Ping {}),
        ];
        for (text, want) in cases {
            assert_eq!(decode_json(text).unwrap().body, want, "{text}");
        }
        assert_eq!(
            decode_json(r#"{"type":"list","req":7}"#).unwrap().req,
            Some(json!(7))
        );
    }

    #[test]
    fn bad_requests_keep_req_and_say_why() {
        let cases = [
            ("{", None, ErrorCode::BadFrame),
            ("[]", None, ErrorCode::BadFrame),
            (r#""hello""#, None, ErrorCode::BadFrame),
            (r#"{"req":"a"}"#, Some(json!("a")), ErrorCode::BadRequest),
            (
                r#"{"req":"a","type":5}"#,
                Some(json!("a")),
                ErrorCode::BadRequest,
            ),
            (
                r#"{"req":"b","type":"dance"}"#,
                Some(json!("b")),
                ErrorCode::UnknownType,
            ),
            (
                r#"{"req":"c","type":"subscribe"}"#,
                Some(json!("c")),
                ErrorCode::BadRequest,
            ),
            (
                r#"{"req":"d","type":"subscribe","devices":"a"}"#,
                Some(json!("d")),
                ErrorCode::BadRequest,
            ),
            (
                r#"{"req":"e","type":"command","device":"x","action":"set","params":[]}"#,
                Some(json!("e")),
                ErrorCode::BadRequest,
            ),
            (
                r#"{"req":"f","type":"command","device":"x","action":"set","timeout_ms":-1}"#,
                Some(json!("f")),
                ErrorCode::BadRequest,
            ),
            (
                r#"{"req":"g","type":"list","extra":1}"#,
                Some(json!("g")),
                ErrorCode::BadRequest,
            ),
            (
                r#"{"req":"g2","type":"subscribe","devices":["*"],"since":{"epoch":"e","seqs":{},"typo":1}}"#,
                Some(json!("g2")),
                ErrorCode::BadRequest,
            ),
            (
                r#"{"req":{"x":1},"type":"list"}"#,
                None,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"req":"h","type":"command","device":"x","action":"set","timeout_ms":1e400}"#,
                None,
                ErrorCode::BadFrame,
            ),
        ];
        for (text, req, code) in cases {
            let err = decode_json(text).unwrap_err();
            assert_eq!(
                (err.req.clone(), err.code),
                (req, code),
                "{text}: {}",
                err.message
            );
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn type_index_names_the_serialized_type() {
        let data = Map::new();
        let tele = crate::telemetry::Data::from_map(&data);
        let no: [String; 0] = [];
        let msgs = [
            ServerMsg::Telemetry {
                device: "d",
                seq: 1,
                ts: 1,
                data: crate::telemetry::View::Whole(&tele),
            },
            ServerMsg::State {
                device: "d",
                ts: 1,
                state: &data,
            },
            ServerMsg::Presence {
                device: "d",
                presence: Presence::Online,
            },
            ServerMsg::Pong { req: None },
            ServerMsg::Broker { status: "up" },
            ServerMsg::Permissions {
                read: &no,
                control: &no,
            },
            ServerMsg::Lagging { conflated: 1 },
            ServerMsg::Error {
                req: None,
                code: ErrorCode::BadFrame,
                message: "m",
            },
        ];
        for msg in &msgs {
            let v: Value = serde_json::from_str(&msg.to_json()).unwrap();
            assert_eq!(v["type"], MESSAGE_TYPES[msg.type_index()]);
        }
    }

    #[test]
    fn server_messages_have_documented_shape() {
        let data = json!({"t": 1}).as_object().cloned().unwrap_or_default();
        let data = crate::telemetry::Data::from_map(&data);
        let msg = ServerMsg::Telemetry {
            device: "d",
            seq: 3,
            ts: 10,
            data: crate::telemetry::View::Whole(&data),
        };
        let v: Value = serde_json::from_str(&msg.to_json()).unwrap();
        assert_eq!(
            v,
            json!({"type":"telemetry","device":"d","seq":3,"ts":10,"data":{"t":1}})
        );

        let req = json!("r1");
        let status = ServerMsg::CommandStatus {
            req: Some(&req),
            id: "i-1",
            device: "d",
            status: CommandStatus::Ok,
            result: None,
            error: None,
        };
        let v: Value = serde_json::from_str(&status.to_json()).unwrap();
        assert_eq!(
            v,
            json!({"type":"command_status","req":"r1","id":"i-1","device":"d","status":"ok"})
        );
    }
}
