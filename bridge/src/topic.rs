//! MQTT topic names of the device contract, device ids and subscription patterns. Pure functions.

use wildmatch::WildMatch;

/// What a device topic carries, from its last level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Meta,
    Status,
    Telemetry,
    State,
    Ack,
    Cmd,
}

impl Channel {
    fn from_level(level: &str) -> Option<Channel> {
        Some(match level {
            "meta" => Channel::Meta,
            "status" => Channel::Status,
            "telemetry" => Channel::Telemetry,
            "state" => Channel::State,
            "ack" => Channel::Ack,
            "cmd" => Channel::Cmd,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Meta => "meta",
            Channel::Status => "status",
            Channel::Telemetry => "telemetry",
            Channel::State => "state",
            Channel::Ack => "ack",
            Channel::Cmd => "cmd",
        }
    }
}

/// Device ids are `[A-Za-z0-9_-]{1,64}`: never an MQTT wildcard, never a `/`.
pub fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Splits `{prefix}/{id}/{channel}` into its device id and channel; anything else is `None`.
pub fn parse<'a>(prefix: &str, topic: &'a str) -> Option<(&'a str, Channel)> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let (id, level) = rest.split_once('/')?;
    if !is_valid_device_id(id) {
        return None;
    }
    Some((id, Channel::from_level(level)?))
}

/// The topic to write to. Only called with ids that passed [`is_valid_device_id`].
pub fn device_topic(prefix: &str, id: &str, channel: Channel) -> String {
    debug_assert!(is_valid_device_id(id));
    format!("{prefix}/{id}/{}", channel.as_str())
}

/// The MQTT subscriptions the bridge needs: everything a device publishes, nothing it receives.
pub fn bridge_filters(prefix: &str) -> [String; 5] {
    [
        format!("{prefix}/+/meta"),
        format!("{prefix}/+/status"),
        format!("{prefix}/+/telemetry"),
        format!("{prefix}/+/state"),
        format!("{prefix}/+/ack"),
    ]
}

/// A client's device pattern: an exact id or a glob with `*` and `?`.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    matcher: Option<WildMatch>,
}

impl Pattern {
    /// Patterns use the device id alphabet plus `*` and `?`, at most 128 bytes.
    pub fn parse(source: &str) -> Option<Pattern> {
        let ok = !source.is_empty()
            && source.len() <= 128
            && source
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'*' | b'?'));
        if !ok {
            return None;
        }
        let is_glob = source.contains(['*', '?']);
        Some(Pattern {
            source: source.to_owned(),
            matcher: is_glob.then(|| WildMatch::new(source)),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, id: &str) -> bool {
        match &self.matcher {
            Some(m) => m.matches(id),
            None => self.source == id,
        }
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_topics() {
        let cases = [
            ("iot/t-1/meta", Some(("t-1", Channel::Meta))),
            ("iot/t_1/telemetry", Some(("t_1", Channel::Telemetry))),
            ("iot/x/ack", Some(("x", Channel::Ack))),
            ("iot/x/unknown", None),
            ("iot/x/meta/extra", None),
            ("iot//meta", None),
            ("iot/a+b/meta", None),
            ("iotx/a/meta", None),
            ("other/a/meta", None),
            ("iot/a", None),
        ];
        for (topic, want) in cases {
            assert_eq!(parse("iot", topic), want, "{topic}");
        }
        assert_eq!(
            parse("site/1", "site/1/d/state"),
            Some(("d", Channel::State))
        );
    }

    #[test]
    fn device_ids() {
        assert!(is_valid_device_id("light-1"));
        assert!(is_valid_device_id(&"a".repeat(64)));
        for bad in ["", "a/b", "+", "#", "a b", "é", &"a".repeat(65)] {
            assert!(!is_valid_device_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("light-*").unwrap();
        assert!(p.matches("light-1") && p.matches("light-") && !p.matches("plug-1"));
        let q = Pattern::parse("t?").unwrap();
        assert!(q.matches("t1") && !q.matches("t12"));
        let exact = Pattern::parse("plug-1").unwrap();
        assert!(exact.matches("plug-1") && !exact.matches("plug-10"));
        assert!(Pattern::parse("*").unwrap().matches("anything"));
        for bad in ["", "a/b", "+", "#", "iot/#", "a b", &"a".repeat(129)] {
            assert!(Pattern::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn topics_round_trip() {
        let t = device_topic("iot", "lamp", Channel::Cmd);
        assert_eq!(t, "iot/lamp/cmd");
        assert_eq!(parse("iot", &t), Some(("lamp", Channel::Cmd)));
    }
}
