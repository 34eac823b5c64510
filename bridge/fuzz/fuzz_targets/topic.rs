//! Fuzz target: MQTT topic parsing and client device patterns (`topic::parse`, `topic::Pattern`).
//!
//! Input: four UTF-8 fields separated by NUL (never part of an MQTT topic): prefix, topic tail,
//! pattern, candidate id.
#![no_main]

use iot_bridge::topic::{self, Pattern};
use iot_bridge_fuzz::{glob_matches, is_device_id};
use libfuzzer_sys::fuzz_target;

const CHANNELS: [&str; 6] = ["meta", "status", "telemetry", "state", "ack", "cmd"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut fields = text.split('\0');
    let prefix = fields.next().unwrap_or("");
    let tail = fields.next().unwrap_or("");
    let pattern = fields.next().unwrap_or("");
    let candidate = fields.next().unwrap_or("");

    // A whole input as a topic: whatever parses must be a safe id and must round-trip.
    check_parse(prefix, text);
    // Prefix + tail: reaches the id and channel checks far more often than random text.
    let built = format!("{prefix}/{tail}");
    let parsed = check_parse(prefix, &built);
    let expected = tail
        .split_once('/')
        .filter(|(id, level)| is_device_id(id) && CHANNELS.contains(level));
    assert_eq!(
        parsed.map(|(id, channel)| (id, channel.as_str())),
        expected,
        "{built:?} with prefix {prefix:?}"
    );

    // Patterns: the id alphabet plus `*` and `?`, at most 128 bytes, matched as a glob.
    let allowed = !pattern.is_empty()
        && pattern.len() <= 128
        && pattern
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '*' | '?'));
    match Pattern::parse(pattern) {
        None => assert!(!allowed, "pattern {pattern:?} refused"),
        Some(p) => {
            assert!(allowed, "pattern {pattern:?} accepted");
            assert_eq!(p.as_str(), pattern);
            assert_eq!(
                p.matches(candidate),
                glob_matches(pattern, candidate),
                "pattern {pattern:?} on {candidate:?}"
            );
        }
    }
});

/// `parse` never yields an id that could act as an MQTT wildcard or level, and the topic built
/// back from its answer is the topic it was given.
fn check_parse<'a>(prefix: &str, topic_name: &'a str) -> Option<(&'a str, topic::Channel)> {
    let parsed = topic::parse(prefix, topic_name);
    if let Some((id, channel)) = parsed {
        assert!(is_device_id(id), "parsed id {id:?} from {topic_name:?}");
        assert!(!id.contains(['+', '#', '/']));
        assert!(topic::is_valid_device_id(id));
        assert_eq!(topic::device_topic(prefix, id, channel), topic_name);
    }
    parsed
}
