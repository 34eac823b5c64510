//! Sending one command and following it to its final status; what each outcome means as a
//! process exit code, so scripts can branch on it without parsing text.

use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::messages::{CommandStatus, Message, ServerMsg};
use crate::{Client, ClientError};

/// Exit codes of `iotctl`, one per command outcome.
pub mod exit_code {
    /// The device acknowledged the command (and every other subcommand's success).
    pub const OK: u8 = 0;
    /// Anything else: unknown device, bad request, connection or certificate trouble.
    pub const FAILURE: u8 = 1;
    /// The device refused the command.
    pub const REJECTED: u8 = 2;
    /// The device or the bridge's broker link is down.
    pub const OFFLINE: u8 = 3;
    /// No acknowledgement in time.
    pub const TIMEOUT: u8 = 4;
    /// The certificate's identity may not control the device.
    pub const FORBIDDEN: u8 = 5;
}

/// The bridge's own timeout is the command's; the client waits this much longer for the
/// bridge to report it, so a slow network does not turn a bridge `timeout` into no answer.
const ANSWER_SLACK: Duration = Duration::from_secs(5);

/// One command to send.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandSpec {
    pub device: String,
    pub action: String,
    pub params: Map<String, Value>,
    /// Sent as `timeout_ms`; the bridge caps it by its config.
    pub timeout: Duration,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The device acknowledged it; its `result`, if any.
    Ok(Option<Value>),
    /// The device refused it, for this reason.
    Rejected(String),
    Offline,
    Timeout,
    Forbidden,
    /// The bridge did not take the command (`unknown_device`, `bad_request`, `rate_limited`).
    Refused {
        code: String,
        message: String,
    },
    /// A final status this client does not know.
    Other(String),
    /// The bridge said nothing final within the timeout plus a margin.
    NoAnswer,
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Ok(_) => exit_code::OK,
            Outcome::Rejected(_) => exit_code::REJECTED,
            Outcome::Offline => exit_code::OFFLINE,
            Outcome::Timeout | Outcome::NoAnswer => exit_code::TIMEOUT,
            Outcome::Forbidden => exit_code::FORBIDDEN,
            Outcome::Refused { .. } | Outcome::Other(_) => exit_code::FAILURE,
        }
    }
}

/// Sends `spec` and reads until its final status, handing every status (and an `error`
/// answer) to `on_status` as it arrives. Other messages on the connection are skipped.
pub async fn run_command(
    client: &mut Client,
    spec: &CommandSpec,
    mut on_status: impl FnMut(&Message) -> Result<(), ClientError>,
) -> Result<Outcome, ClientError> {
    let timeout_ms = u64::try_from(spec.timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let req = client
        .request(json!({
            "type": "command",
            "device": spec.device,
            "action": spec.action,
            "params": spec.params,
            "timeout_ms": timeout_ms,
        }))
        .await?;
    let deadline = Instant::now() + spec.timeout + ANSWER_SLACK;
    loop {
        let msg = match tokio::time::timeout_at(deadline, client.next_message()).await {
            Err(_) => return Ok(Outcome::NoAnswer),
            Ok(msg) => msg?,
        };
        if msg.req().as_deref() != Some(req.as_str()) {
            continue;
        }
        match &msg.msg {
            ServerMsg::CommandStatus { status, .. } => {
                on_status(&msg)?;
                if status.is_final() {
                    return Ok(outcome_of(&msg));
                }
            }
            ServerMsg::Error { code, message } => {
                on_status(&msg)?;
                return Ok(Outcome::Refused {
                    code: code.clone(),
                    message: message.clone(),
                });
            }
            _ => {}
        }
    }
}

/// The outcome a final `command_status` stands for.
pub fn outcome_of(msg: &Message) -> Outcome {
    let ServerMsg::CommandStatus {
        status,
        result,
        error,
        ..
    } = &msg.msg
    else {
        return Outcome::Other(msg.kind().to_owned());
    };
    let reason = || error.clone().unwrap_or_default();
    match status {
        CommandStatus::Ok => Outcome::Ok(result.clone()),
        CommandStatus::Rejected => Outcome::Rejected(reason()),
        CommandStatus::Offline => Outcome::Offline,
        CommandStatus::Timeout => Outcome::Timeout,
        CommandStatus::Forbidden => Outcome::Forbidden,
        CommandStatus::RateLimited => Outcome::Refused {
            code: "rate_limited".into(),
            message: reason(),
        },
        CommandStatus::Accepted | CommandStatus::Sent | CommandStatus::Unknown => {
            Outcome::Other(msg.raw["status"].as_str().unwrap_or_default().to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: &str, extra: Value) -> Message {
        let mut raw = json!({"type":"command_status","req":"1","id":"i-1","device":"d",
            "status":status});
        if let (Value::Object(raw), Value::Object(extra)) = (&mut raw, extra) {
            raw.extend(extra);
        }
        Message::from_value(raw)
    }

    #[test]
    fn final_statuses_map_to_exit_codes() {
        let cases = [
            ("ok", json!({"result":{"on":true}}), 0),
            ("rejected", json!({"error":"too bright"}), 2),
            ("offline", json!({}), 3),
            ("timeout", json!({}), 4),
            ("forbidden", json!({"error":"not yours"}), 5),
            ("rate_limited", json!({}), 1),
            ("something_new", json!({}), 1),
        ];
        for (name, extra, code) in cases {
            let outcome = outcome_of(&status(name, extra));
            assert_eq!(outcome.exit_code(), code, "{name}: {outcome:?}");
        }
        assert_eq!(
            outcome_of(&status("rejected", json!({"error":"too bright"}))),
            Outcome::Rejected("too bright".into())
        );
        assert_eq!(
            outcome_of(&status("ok", json!({"result":{"on":true}}))),
            Outcome::Ok(Some(json!({"on": true})))
        );
        assert_eq!(Outcome::NoAnswer.exit_code(), exit_code::TIMEOUT);
        let refused = Outcome::Refused {
            code: "unknown_device".into(),
            message: "unknown device \"x\"".into(),
        };
        assert_eq!(refused.exit_code(), exit_code::FAILURE);
    }
}
