//! Typed views of the bridge's messages (docs/protocol.md), read leniently: unknown fields are
//! ignored and unknown message types kept as [`ServerMsg::Other`], so a newer bridge does not
//! break an older client.

use serde::Deserialize;
use serde_json::{Map, Value};

/// One message from the bridge: the JSON as received and its typed reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub raw: Value,
    pub msg: ServerMsg,
}

impl Message {
    pub fn from_value(raw: Value) -> Message {
        let msg = ServerMsg::deserialize(&raw).unwrap_or_else(|_| ServerMsg::Other {
            kind: raw["type"].as_str().unwrap_or_default().to_owned(),
        });
        Message { raw, msg }
    }

    /// The `req` this message answers, as a string (numbers are spelled out).
    pub fn req(&self) -> Option<String> {
        match &self.raw["req"] {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// The message's `type`.
    pub fn kind(&self) -> &str {
        self.raw["type"].as_str().unwrap_or_default()
    }
}

/// What the bridge sends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Welcome {
        protocol: String,
        identity: String,
        #[serde(default)]
        server: String,
        #[serde(default)]
        permissions: Option<Permissions>,
        /// `up` or `down`: the bridge's own link to the broker.
        #[serde(default)]
        broker: Option<String>,
    },
    Snapshot {
        devices: Vec<DeviceSnapshot>,
        #[serde(default)]
        recovered: Option<bool>,
    },
    Telemetry {
        device: String,
        seq: u64,
        ts: i64,
        data: Map<String, Value>,
    },
    State {
        device: String,
        ts: i64,
        state: Map<String, Value>,
    },
    Presence {
        device: String,
        presence: String,
    },
    Device {
        device: String,
        #[serde(default)]
        meta: Option<Value>,
        #[serde(default)]
        removed: bool,
    },
    CommandStatus {
        id: String,
        device: String,
        status: CommandStatus,
        #[serde(default)]
        result: Option<Value>,
        #[serde(default)]
        error: Option<String>,
    },
    Unsubscribed {
        devices: Vec<String>,
    },
    List {
        devices: Vec<ListEntry>,
    },
    History {
        device: String,
        #[serde(default)]
        field: Option<String>,
        samples: Vec<Sample>,
    },
    Pong {},
    Broker {
        status: String,
    },
    Permissions(Permissions),
    Lagging {
        conflated: u64,
    },
    Error {
        code: String,
        message: String,
    },
    /// A message type this client does not know, or a known one it could not read.
    #[serde(skip)]
    Other {
        kind: String,
    },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Permissions {
    #[serde(default)]
    pub read: Vec<String>,
    #[serde(default)]
    pub control: Vec<String>,
}

/// One device in a `snapshot`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeviceSnapshot {
    pub id: String,
    #[serde(default)]
    pub meta: Option<Value>,
    #[serde(default)]
    pub presence: String,
    #[serde(default)]
    pub state: Option<Map<String, Value>>,
    #[serde(default)]
    pub telemetry: Option<Map<String, Value>>,
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub ts: Option<i64>,
}

/// One device in a `list`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ListEntry {
    pub id: String,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub room: Option<String>,
    #[serde(default)]
    pub presence: String,
}

/// One telemetry sample of a `history` answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Sample {
    pub seq: u64,
    pub ts: i64,
    pub data: Map<String, Value>,
}

/// Where a command is in its life (`command_status`'s `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    Accepted,
    Sent,
    Ok,
    Rejected,
    Timeout,
    Offline,
    Forbidden,
    RateLimited,
    /// A status this client does not know; treated as final.
    #[serde(other)]
    Unknown,
}

impl CommandStatus {
    /// Everything but `accepted` and `sent` ends a command.
    pub fn is_final(self) -> bool {
        !matches!(self, CommandStatus::Accepted | CommandStatus::Sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_known_and_unknown_messages() {
        let m = Message::from_value(json!({"type":"telemetry","device":"t-1","seq":5,"ts":1,
            "data":{"temperature":21.5},"extra":"ignored"}));
        assert!(matches!(&m.msg, ServerMsg::Telemetry { seq: 5, device, .. } if device == "t-1"));

        let m = Message::from_value(json!({"type":"command_status","req":7,"id":"a-1",
            "device":"l","status":"sent"}));
        assert_eq!(m.req().as_deref(), Some("7"));
        assert!(matches!(
            m.msg,
            ServerMsg::CommandStatus {
                status: CommandStatus::Sent,
                ..
            }
        ));

        let m = Message::from_value(json!({"type":"command_status","req":"c","id":"a-1",
            "device":"l","status":"queued_on_mars"}));
        assert!(matches!(&m.msg, ServerMsg::CommandStatus { status, .. } if status.is_final()));

        let m = Message::from_value(json!({"type":"weather","sky":"blue"}));
        assert_eq!(
            m.msg,
            ServerMsg::Other {
                kind: "weather".into()
            }
        );
        // A known type with a wrong field is kept, not fatal.
        let m = Message::from_value(json!({"type":"telemetry","device":"x"}));
        assert_eq!(
            m.msg,
            ServerMsg::Other {
                kind: "telemetry".into()
            }
        );
        assert_eq!(m.kind(), "telemetry");
    }
}
