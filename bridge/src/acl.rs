//! Access control: which identities may read and control which devices.
//!
//! An ACL file is a list of rules; a rule names identities (exact or glob) and the device
//! patterns they may `read` and `control`. An identity gets the union of every rule naming it;
//! anything not granted is denied. `control` implies nothing about `read`: grant both.
//! Without an ACL file every holder of a client certificate may do everything.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use wildmatch::WildMatch;

use crate::topic::Pattern;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default, rename = "rule")]
    rules: Vec<RuleFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    identity: String,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    control: Vec<String>,
}

/// Why an ACL file cannot be used. Each variant says its cause in its own message and none
/// reports it as a `source`, so a report of the error chain says each cause once.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read ACL file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("invalid ACL file {path}: {message}")]
    Parse { path: String, message: String },
}

#[derive(Debug)]
struct Rule {
    identity: WildMatch,
    read: Vec<Pattern>,
    control: Vec<Pattern>,
}

/// The loaded ACL, or full access when there is none.
#[derive(Debug)]
pub struct Acl {
    rules: Option<Vec<Rule>>,
}

/// What one identity may do, resolved once per connection (and again on reload).
#[derive(Debug, Clone)]
pub struct Grants {
    pub read: Arc<[Pattern]>,
    pub control: Arc<[Pattern]>,
}

impl Grants {
    pub fn can_read(&self, device: &str) -> bool {
        self.read.iter().any(|p| p.matches(device))
    }

    pub fn can_control(&self, device: &str) -> bool {
        self.control.iter().any(|p| p.matches(device))
    }

    pub fn read_patterns(&self) -> Vec<String> {
        self.read.iter().map(|p| p.as_str().to_owned()).collect()
    }

    pub fn control_patterns(&self) -> Vec<String> {
        self.control.iter().map(|p| p.as_str().to_owned()).collect()
    }
}

impl Acl {
    /// Everyone may read and control everything.
    pub fn allow_all() -> Acl {
        Acl { rules: None }
    }

    pub fn is_open(&self) -> bool {
        self.rules.is_none()
    }

    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| AclError::Read {
            path: shown.clone(),
            error,
        })?;
        Acl::parse(&text).map_err(|message| AclError::Parse {
            path: shown,
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Acl, String> {
        let file: AclFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, r) in file.rules.into_iter().enumerate() {
            if r.identity.is_empty() {
                return Err(format!("rule {}: identity is empty", i + 1));
            }
            let patterns = |list: Vec<String>, what: &str| {
                list.iter()
                    .map(|p| {
                        Pattern::parse(p).ok_or_else(|| {
                            format!(
                                "rule {} ({}): invalid {what} pattern {p:?}",
                                i + 1,
                                r.identity
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            rules.push(Rule {
                identity: WildMatch::new(&r.identity),
                read: patterns(r.read, "read")?,
                control: patterns(r.control, "control")?,
            });
        }
        Ok(Acl { rules: Some(rules) })
    }

    /// The union of every rule naming `identity`.
    pub fn grants(&self, identity: &str) -> Grants {
        let Some(rules) = &self.rules else {
            let all: Arc<[Pattern]> = Pattern::parse("*").into_iter().collect();
            return Grants {
                read: all.clone(),
                control: all,
            };
        };
        let mut read = Vec::new();
        let mut control = Vec::new();
        for rule in rules.iter().filter(|r| r.identity.matches(identity)) {
            for p in &rule.read {
                if !read.contains(p) {
                    read.push(p.clone());
                }
            }
            for p in &rule.control {
                if !control.contains(p) {
                    control.push(p.clone());
                }
            }
        }
        Grants {
            read: read.into(),
            control: control.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acl_file_that_cannot_be_read_names_its_cause_once() {
        let err = Acl::load(Path::new("no/such/acl.toml")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("cannot read ACL file no/such/acl.toml: "),
            "{text}"
        );
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
        assert!(std::error::Error::source(&err).is_none());
    }

    const EXAMPLE: &str = r#"
        [[rule]]
        identity = "alice"
        read = ["*"]
        control = ["light-*", "plug-*"]

        [[rule]]
        identity = "guest-*"
        read = ["sensor-*"]

        [[rule]]
        identity = "*"
        read = ["weather"]
    "#;

    #[test]
    fn grants_are_the_union_of_matching_rules() {
        let acl = Acl::parse(EXAMPLE).unwrap();
        let alice = acl.grants("alice");
        assert!(alice.can_read("anything") && alice.can_control("light-2"));
        assert!(!alice.can_control("thermostat-1"));
        let guest = acl.grants("guest-7");
        assert!(guest.can_read("sensor-1") && guest.can_read("weather"));
        assert!(!guest.can_read("light-1") && !guest.can_control("sensor-1"));
        let stranger = acl.grants("mallory");
        assert!(stranger.can_read("weather") && !stranger.can_read("light-1"));
        assert_eq!(stranger.control_patterns(), Vec::<String>::new());
    }

    #[test]
    fn empty_acl_denies_everything_and_no_acl_allows_everything() {
        let none = Acl::parse("").unwrap().grants("alice");
        assert!(!none.can_read("x") && !none.can_control("x"));
        let open = Acl::allow_all().grants("anyone");
        assert!(open.can_read("x") && open.can_control("x"));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        for (text, needle) in [
            (
                "[[rule]]\nidentity = \"a\"\nread = [\"iot/#\"]",
                "invalid read pattern",
            ),
            ("[[rule]]\nidentity = \"\"", "identity is empty"),
            ("[[rule]]\nidentity = \"a\"\nwrite = []", "unknown field"),
            ("[[rule]]\nread = []", "identity"),
        ] {
            let err = Acl::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
