//! Prometheus metrics of one bridge instance (a registry per instance, so tests running several
//! bridges in one process do not mix their figures), rendered in OpenMetrics text at `/metrics`.
//!
//! Hot-path counters are pre-created per label value so an increment is one atomic add.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::protocol::{CommandStatus, Presence, Wire, MESSAGE_TYPES};
use crate::topic::Channel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubprotocolLabel {
    subprotocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PresenceLabel {
    presence: &'static str,
}

const CHANNELS: &[Channel] = &[
    Channel::Meta,
    Channel::Status,
    Channel::Telemetry,
    Channel::State,
    Channel::Ack,
];
const OUTCOMES: &[CommandStatus] = &[
    CommandStatus::Ok,
    CommandStatus::Rejected,
    CommandStatus::Timeout,
    CommandStatus::Offline,
    CommandStatus::Forbidden,
];
/// Why a TLS handshake failed, as labels.
pub const TLS_REASONS: &[&str] = &[
    "no_certificate",
    "unknown_ca",
    "revoked",
    "expired",
    "bad_certificate",
    "timeout",
    "protocol",
    "io",
];
/// Why the bridge closed a client.
pub const CLOSE_REASONS: &[&str] = &[
    "too_slow",
    "idle",
    "oversized",
    "invalid_utf8",
    "protocol_error",
    "shutdown",
];

pub struct Metrics {
    registry: Registry,
    clients: [Gauge; 2],
    messages_in: Vec<Counter>,
    messages_out: Vec<Counter>,
    pub bad_payloads: Counter,
    pub queue_depth: Histogram,
    pub conflated: Counter,
    pub paced_sessions: Gauge,
    commands: Vec<Histogram>,
    pub rate_limited: Counter,
    pub broker_up: Gauge,
    pub broker_refused: Gauge,
    pub broker_connects: Counter,
    tls_failures: Vec<Counter>,
    closed: Vec<Counter>,
    devices: Family<PresenceLabel, Gauge>,
    pub connections: Gauge,
    process: ProcessGauges,
}

struct ProcessGauges {
    resident: Gauge,
    cpu_ms: Gauge,
    fds: Gauge,
    threads: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn family_members<L>(family: &Family<L, Counter>, labels: impl Iterator<Item = L>) -> Vec<Counter>
where
    L: Clone + std::hash::Hash + Eq,
{
    labels.map(|l| family.get_or_create(&l).clone()).collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("iotbridge");

        let clients = Family::<SubprotocolLabel, Gauge>::default();
        registry.register("clients", "Connected WebSocket clients", clients.clone());
        let clients = [Wire::Json, Wire::Cbor].map(|w| {
            clients
                .get_or_create(&SubprotocolLabel {
                    subprotocol: w.subprotocol(),
                })
                .clone()
        });

        let messages_in = Family::<KindLabel, Counter>::default();
        registry.register(
            "messages_in",
            "Messages received from devices, by channel",
            messages_in.clone(),
        );
        let messages_in = family_members(
            &messages_in,
            CHANNELS.iter().map(|c| KindLabel { kind: c.as_str() }),
        );

        let messages_out = Family::<KindLabel, Counter>::default();
        registry.register(
            "messages_out",
            "Messages written to clients, by type",
            messages_out.clone(),
        );
        let messages_out = family_members(
            &messages_out,
            MESSAGE_TYPES.iter().map(|k| KindLabel { kind: k }),
        );

        let bad_payloads = Counter::default();
        registry.register(
            "bad_payloads",
            "Device payloads refused (undecodable, too large, not a map)",
            bad_payloads.clone(),
        );

        let queue_depth = Histogram::new(exponential_buckets(1.0, 4.0, 8));
        registry.register(
            "session_queue_depth",
            "Frames queued in a session when its writer wakes",
            queue_depth.clone(),
        );
        let conflated = Counter::default();
        registry.register(
            "telemetry_conflated",
            "Telemetry replaced by a newer value for a slow or rate-limited client",
            conflated.clone(),
        );
        let paced_sessions = Gauge::default();
        registry.register(
            "sessions_paced",
            "Sessions writing telemetry at most once per limits.busy_write_interval_ms because the bridge is saturated",
            paced_sessions.clone(),
        );

        let commands = Family::<OutcomeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "command_duration_seconds",
            "Command latency from request to final status, by outcome",
            commands.clone(),
        );
        let commands = OUTCOMES
            .iter()
            .map(|o| {
                commands
                    .get_or_create(&OutcomeLabel {
                        outcome: o.as_str(),
                    })
                    .clone()
            })
            .collect();
        let rate_limited = Counter::default();
        registry.register(
            "commands_rate_limited",
            "Commands refused by the per-identity rate limit",
            rate_limited.clone(),
        );

        let broker_up = Gauge::default();
        registry.register(
            "broker_up",
            "1 while the bridge's link to the broker is up",
            broker_up.clone(),
        );
        let broker_refused = Gauge::default();
        registry.register(
            "broker_subscriptions_refused",
            "Subscriptions the broker refused on the current connection (its ACL); the link is not up while any are",
            broker_refused.clone(),
        );
        let broker_connects = Counter::default();
        registry.register(
            "broker_connects",
            "Successful connections to the broker (first one included)",
            broker_connects.clone(),
        );

        let tls_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by reason",
            tls_failures.clone(),
        );
        let tls_failures = family_members(
            &tls_failures,
            TLS_REASONS.iter().map(|r| ReasonLabel { reason: r }),
        );
        let closed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "clients_closed",
            "Clients closed by the bridge, by reason",
            closed.clone(),
        );
        let closed = family_members(
            &closed,
            CLOSE_REASONS.iter().map(|r| ReasonLabel { reason: r }),
        );

        let devices = Family::<PresenceLabel, Gauge>::default();
        registry.register("devices", "Known devices, by presence", devices.clone());
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open TLS connections (HTTP and WebSocket)",
            connections.clone(),
        );

        let process = ProcessGauges {
            resident: Gauge::default(),
            cpu_ms: Gauge::default(),
            fds: Gauge::default(),
            threads: Gauge::default(),
        };
        let sub = registry.sub_registry_with_prefix("process");
        sub.register(
            "resident_memory_bytes",
            "Resident memory of the bridge process",
            process.resident.clone(),
        );
        sub.register(
            "cpu_milliseconds",
            "CPU time used by the bridge process (user + system)",
            process.cpu_ms.clone(),
        );
        sub.register("open_fds", "Open file descriptors", process.fds.clone());
        sub.register("threads", "Threads of the process", process.threads.clone());

        Metrics {
            registry,
            clients,
            messages_in,
            messages_out,
            bad_payloads,
            queue_depth,
            conflated,
            paced_sessions,
            commands,
            rate_limited,
            broker_up,
            broker_refused,
            broker_connects,
            tls_failures,
            closed,
            devices,
            connections,
            process,
        }
    }

    pub fn client(&self, wire: Wire) -> &Gauge {
        &self.clients[wire as usize]
    }

    pub fn message_in(&self, channel: Channel) {
        if let Some(i) = CHANNELS.iter().position(|c| *c == channel) {
            self.messages_in[i].inc();
        }
    }

    /// Counts a written message by its [`ServerMsg::type_index`](crate::protocol::ServerMsg::type_index).
    pub fn message_out(&self, type_index: usize) {
        self.messages_out(type_index, 1);
    }

    /// `n` messages of one type written (an index out of range counts nothing).
    pub fn messages_out(&self, type_index: usize, n: u64) {
        if let Some(counter) = self.messages_out.get(type_index) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }

    pub fn command_done(&self, outcome: CommandStatus, seconds: f64) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.commands[i].observe(seconds);
        }
    }

    pub fn tls_failure(&self, reason: &str) {
        if let Some(i) = TLS_REASONS.iter().position(|r| *r == reason) {
            self.tls_failures[i].inc();
        }
    }

    pub fn closed(&self, reason: &str) {
        if let Some(i) = CLOSE_REASONS.iter().position(|r| *r == reason) {
            self.closed[i].inc();
        }
    }

    /// Renders every metric, refreshing the ones computed at scrape time.
    pub fn render(&self, presence: &[(Presence, i64)]) -> String {
        for (p, n) in presence {
            let label = PresenceLabel {
                presence: presence_name(*p),
            };
            self.devices.get_or_create(&label).set(*n);
        }
        self.refresh_process();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    fn refresh_process(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            for line in status.lines() {
                let value = |l: &str| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0)
                };
                if line.starts_with("VmRSS:") {
                    self.process.resident.set(value(line) * 1024);
                } else if line.starts_with("Threads:") {
                    self.process.threads.set(value(line));
                }
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces): utime is 14th, stime 15th.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                if f.len() > 12 {
                    // Linux reports in clock ticks of 1/100 s on every common configuration.
                    let ticks = f[11] + f[12];
                    self.process.cpu_ms.set((ticks * 10) as i64);
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.process.fds.set(dir.count() as i64);
        }
    }
}

fn presence_name(p: Presence) -> &'static str {
    match p {
        Presence::Online => "online",
        Presence::Offline => "offline",
        Presence::Stale => "stale",
        Presence::Unknown => "unknown",
    }
}

/// The reason label for a failed TLS accept.
pub fn tls_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => "no_certificate",
        Some(Error::InvalidCertificate(c)) => match c {
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Revoked => "revoked",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            _ => "bad_certificate",
        },
        Some(_) => "protocol",
        None => "io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_with_every_family() {
        let m = Metrics::new();
        m.client(Wire::Json).inc();
        m.message_in(Channel::Telemetry);
        let telemetry = MESSAGE_TYPES
            .iter()
            .position(|k| *k == "telemetry")
            .unwrap();
        m.message_out(telemetry);
        m.command_done(CommandStatus::Ok, 0.002);
        m.tls_failure("unknown_ca");
        let text = m.render(&[(Presence::Online, 3)]);
        for needle in [
            "iotbridge_clients{subprotocol=\"iotbridge.v1.json\"} 1",
            "iotbridge_messages_in_total{kind=\"telemetry\"} 1",
            "iotbridge_messages_out_total{kind=\"telemetry\"} 1",
            "iotbridge_command_duration_seconds_count{outcome=\"ok\"} 1",
            "iotbridge_tls_handshake_failures_total{reason=\"unknown_ca\"} 1",
            "iotbridge_devices{presence=\"online\"} 3",
            "iotbridge_process_resident_memory_bytes",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
