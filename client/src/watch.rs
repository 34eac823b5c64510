//! Following devices live: subscribe, print the snapshot, then every message as a line (human
//! or JSON) until a message count, a duration, or a stop signal (Ctrl-C) ends it. With JSON the
//! `welcome` is the first line, so a log of the stream says who was connected to what.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::format::{now_ms, Formatter};
use crate::messages::{Message, ServerMsg};
use crate::{Client, ClientError};

/// How long the bridge may take to answer the subscription with its snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);

/// What to watch and how to show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchOptions {
    /// Device ids or globs; empty means every device (`*`).
    pub patterns: Vec<String>,
    /// Only these telemetry fields.
    pub fields: Option<Vec<String>>,
    /// At most this many telemetry messages per device per second.
    pub max_rate_hz: Option<f64>,
    /// Every message as one JSON line instead of human lines.
    pub json: bool,
    /// Stop after this many messages following the snapshot.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// Why watching ended (all of them are normal ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEnd {
    Count,
    Duration,
    Stopped,
}

/// The `subscribe` request for these options.
pub fn subscribe_request(opts: &WatchOptions) -> Value {
    let patterns = if opts.patterns.is_empty() {
        vec!["*".to_owned()]
    } else {
        opts.patterns.clone()
    };
    let mut msg = json!({"type": "subscribe", "devices": patterns});
    if let Some(fields) = &opts.fields {
        msg["fields"] = json!(fields);
    }
    if let Some(hz) = opts.max_rate_hz {
        msg["max_rate_hz"] = json!(hz);
    }
    msg
}

/// Subscribes and writes what arrives to `out` until the options or `stop` end it. A refused
/// subscription is [`ClientError::Bridge`]; a closed connection is [`ClientError::Closed`].
pub async fn watch(
    client: &mut Client,
    opts: &WatchOptions,
    formatter: &mut Formatter,
    out: &mut impl Write,
    stop: impl Future<Output = ()>,
) -> Result<WatchEnd, ClientError> {
    tokio::pin!(stop);
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let until_deadline = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);

    // The welcome came before the subscription but belongs to the record: with --json it is
    // the first line, and a broker link that is already down is worth saying at once.
    let welcome = client.welcome().clone();
    match &welcome.msg {
        _ if opts.json => emit(&welcome, true, formatter, out)?,
        ServerMsg::Welcome {
            broker: Some(status),
            ..
        } if status != "up" => {
            let line = Message::from_value(json!({"type": "broker", "status": status}));
            emit(&line, false, formatter, out)?;
        }
        _ => {}
    }
    let req = client.request(subscribe_request(opts)).await?;
    let snapshot = async {
        loop {
            let msg = client.next_message().await?;
            let answers_us = msg.req().as_deref() == Some(req.as_str());
            if let (true, ServerMsg::Error { code, message }) = (answers_us, &msg.msg) {
                return Err(ClientError::Bridge {
                    code: code.clone(),
                    message: message.clone(),
                });
            }
            // Anything before the snapshot (a broker status, say) is shown like the rest.
            emit(&msg, opts.json, formatter, out)?;
            if answers_us && matches!(msg.msg, ServerMsg::Snapshot { .. }) {
                return Ok(());
            }
        }
    };
    tokio::select! {
        result = tokio::time::timeout(SNAPSHOT_TIMEOUT, snapshot) => {
            result.map_err(|_| ClientError::timeout("the snapshot", SNAPSHOT_TIMEOUT))??;
        }
        () = &mut stop => return Ok(WatchEnd::Stopped),
        () = &mut until_deadline => return Ok(WatchEnd::Duration),
    }

    let mut seen = 0u64;
    loop {
        if opts.count.is_some_and(|n| seen >= n) {
            return Ok(WatchEnd::Count);
        }
        tokio::select! {
            msg = client.next_message() => {
                emit(&msg?, opts.json, formatter, out)?;
                seen += 1;
            }
            () = &mut stop => return Ok(WatchEnd::Stopped),
            () = &mut until_deadline => return Ok(WatchEnd::Duration),
        }
    }
}

/// Writes one message and flushes, so a pipe (`| grep`) sees each line as it happens.
fn emit(
    msg: &Message,
    json: bool,
    formatter: &mut Formatter,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let result = if json {
        writeln!(out, "{}", msg.raw)
    } else {
        formatter
            .lines(msg, now_ms())
            .iter()
            .try_for_each(|line| writeln!(out, "{line}"))
    };
    result
        .and_then(|()| out.flush())
        .map_err(ClientError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_carries_the_options() {
        assert_eq!(
            subscribe_request(&WatchOptions::default()),
            json!({"type":"subscribe","devices":["*"]})
        );
        let opts = WatchOptions {
            patterns: vec!["thermo-*".into(), "light-1".into()],
            fields: Some(vec!["temperature".into()]),
            max_rate_hz: Some(2.0),
            ..WatchOptions::default()
        };
        assert_eq!(
            subscribe_request(&opts),
            json!({"type":"subscribe","devices":["thermo-*","light-1"],
                   "fields":["temperature"],"max_rate_hz":2.0})
        );
    }
}
