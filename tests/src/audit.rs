//! Captures the bridge's audit log (tracing target `audit`) and its warnings in memory so tests
//! can check what it records for each command and what it tells an operator. Installed by
//! [`crate::init_tracing`] beside the usual log output.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// The tracing target the bridge writes its audit records on.
pub const TARGET: &str = "audit";
/// The bridge's own targets (`iot_bridge::*`), whose warnings are kept.
pub const BRIDGE: &str = "iot_bridge";

/// Every audit record of this test process, oldest first. Tests in one binary share it: pick
/// records by a field only your test uses (an identity of its own).
static RECORDS: Mutex<Vec<AuditRecord>> = Mutex::new(Vec::new());
/// Every warning (and error) of the bridge in this test process, oldest first; shared like
/// `RECORDS`.
static WARNINGS: Mutex<Vec<AuditRecord>> = Mutex::new(Vec::new());

/// One audit event: its fields as text (`message` holds the event's message).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditRecord {
    pub fields: BTreeMap<String, String>,
}

impl AuditRecord {
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }
}

/// The audit records whose `identity` field is `identity`.
pub fn records_of(identity: &str) -> Vec<AuditRecord> {
    RECORDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|r| r.get("identity") == Some(identity))
        .cloned()
        .collect()
}

/// The bridge's warnings that have `field` set to `value`.
pub fn warnings_with(field: &str, value: &str) -> Vec<AuditRecord> {
    WARNINGS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|r| r.get(field) == Some(value))
        .cloned()
        .collect()
}

/// The layer that fills the record lists; give it a filter for [`TARGET`] at `INFO` and
/// [`BRIDGE`] at `WARN`.
pub(crate) struct AuditCapture;

impl<S: Subscriber> Layer<S> for AuditCapture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let list = if event.metadata().target() == TARGET {
            &RECORDS
        } else if *event.metadata().level() <= tracing::Level::WARN {
            &WARNINGS
        } else {
            return;
        };
        let mut record = AuditRecord::default();
        event.record(&mut record);
        list.lock().unwrap_or_else(|e| e.into_inner()).push(record);
    }
}

impl Visit for AuditRecord {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields
            .insert(field.name().to_owned(), value.to_owned());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields
            .insert(field.name().to_owned(), value.to_string());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields
            .insert(field.name().to_owned(), value.to_string());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields
            .insert(field.name().to_owned(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%x` fields arrive here as Display wrapped in Debug: the text as the log shows it.
        self.fields
            .insert(field.name().to_owned(), format!("{value:?}"));
    }
}
