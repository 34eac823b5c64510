//! `/metrics` end to end: real traffic (telemetry, a command, failed TLS handshakes, a broker
//! outage) moves the figures it should; and the shipped Grafana dashboard queries only metrics a
//! live bridge exports, with labels they carry.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use device_sim::Kind;
use e2e::metrics::Scrape;
use e2e::{E2eError, TestEnv, WsClient};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// Scrapes until `check` holds (figures computed at scrape time settle within moments).
async fn scrape_until(
    env: &TestEnv,
    what: &str,
    check: impl Fn(&Scrape) -> bool,
) -> Result<Scrape, E2eError> {
    let started = Instant::now();
    loop {
        let scrape = env.metrics().await?;
        if check(&scrape) {
            return Ok(scrape);
        }
        if started.elapsed() > WAIT {
            return Err(E2eError::timeout(what, WAIT));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_traffic_moves_the_figures() -> Result<(), E2eError> {
    let mut env = TestEnv::new()
        .devices(3)
        .kinds(&[Kind::Light, Kind::Plug, Kind::Sensor])
        .telemetry_interval(Duration::from_millis(100))
        .bridge_config(|c| {
            c.broker.reconnect_min_ms = 50;
            c.broker.reconnect_max_ms = 300;
        })
        .start()
        .await?;
    let light = env.ids_of(Kind::Light)[0].clone();
    let before = scrape_until(&env, "no session left from start-up", |s| {
        s.get("iotbridge_clients", &[]) == 0.0
    })
    .await?;
    assert_eq!(before.get("iotbridge_broker_up", &[]), 1.0);
    assert_eq!(
        before.get("iotbridge_devices", &[("presence", "online")]),
        3.0
    );
    assert_eq!(before.get("iotbridge_broker_connects_total", &[]), 1.0);

    let mut client = env.connect("alice").await?;
    client.subscribe(&["*"], "s1", WAIT).await?;
    for _ in 0..10 {
        client
            .recv_until(|m| m["type"] == "telemetry", WAIT)
            .await?;
    }
    let command = json!({"type": "command", "req": "c1", "device": light, "action": "set",
                         "params": {"on": true}});
    client.send(&command).await?;
    client
        .recv_until(|m| m["req"] == "c1" && m["status"] == "ok", WAIT)
        .await?;
    let addr = env.bridge.addr();
    let refused = WsClient::connect_without_cert(addr, env.pki.ca_pem()).await;
    assert!(refused.is_err());
    let foreign = env.pki.foreign_client("alice")?;
    let refused =
        WsClient::connect(addr, &foreign.cert_pem, &foreign.key_pem, env.pki.ca_pem()).await;
    assert!(refused.is_err());

    let after = scrape_until(&env, "both TLS failures counted", |s| {
        s.get("iotbridge_tls_handshake_failures_total", &[])
            >= before.get("iotbridge_tls_handshake_failures_total", &[]) + 2.0
    })
    .await?;
    let moved =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert!(moved("iotbridge_messages_in_total", &[("kind", "telemetry")]) >= 10.0);
    assert_eq!(
        moved("iotbridge_messages_in_total", &[("kind", "ack")]),
        1.0
    );
    assert!(moved("iotbridge_messages_in_total", &[("kind", "state")]) >= 1.0);
    assert!(moved("iotbridge_messages_out_total", &[("kind", "telemetry")]) >= 10.0);
    assert!(
        moved(
            "iotbridge_messages_out_total",
            &[("kind", "command_status")]
        ) >= 3.0
    );
    assert_eq!(
        moved("iotbridge_messages_out_total", &[("kind", "snapshot")]),
        1.0
    );
    let ok = [("outcome", "ok")];
    assert_eq!(moved("iotbridge_command_duration_seconds_count", &ok), 1.0);
    assert!(moved("iotbridge_command_duration_seconds_sum", &ok) > 0.0);
    assert_eq!(
        moved(
            "iotbridge_tls_handshake_failures_total",
            &[("reason", "no_certificate")]
        ),
        1.0
    );
    assert_eq!(moved("iotbridge_tls_handshake_failures_total", &[]), 2.0);
    assert_eq!(
        after.get("iotbridge_clients", &[("subprotocol", "iotbridge.v1.json")]),
        1.0
    );
    assert_eq!(
        after.get("iotbridge_clients", &[("subprotocol", "iotbridge.v1.cbor")]),
        0.0
    );
    assert!(after.get("iotbridge_process_resident_memory_bytes", &[]) > 1e6);
    assert!(after.get("iotbridge_process_threads", &[]) >= 1.0);

    // The broker link: down, everything stale; back, a second connect.
    env.mosquitto.stop().await?;
    scrape_until(&env, "broker_up 0 and every device stale", |s| {
        s.get("iotbridge_broker_up", &[]) == 0.0
            && s.get("iotbridge_devices", &[("presence", "stale")]) == 3.0
    })
    .await?;
    env.mosquitto.restart().await?;
    let back = scrape_until(&env, "broker_up 1 again", |s| {
        s.get("iotbridge_broker_up", &[]) == 1.0
    })
    .await?;
    assert_eq!(back.get("iotbridge_broker_connects_total", &[]), 2.0);
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_counted() -> Result<(), E2eError> {
    let env = TestEnv::new().start().await?;
    let _a = env.connect("alice").await?;
    let _b = env.connect("bob").await?;
    // Two WebSockets plus the scrape's own connection.
    let scrape = scrape_until(&env, "iotbridge_connections >= 3", |s| {
        s.get("iotbridge_connections", &[]) >= 3.0
    })
    .await?;
    assert!(scrape.get("iotbridge_connections", &[]) <= 4.0);
    env.shutdown().await
}

/// What a PromQL expression uses: metric names, label matchers (`key`, exact value if `=`) and
/// the labels of `by (...)` clauses.
#[derive(Debug, Default)]
struct PromQl {
    metrics: Vec<String>,
    matchers: Vec<(String, Option<String>)>,
    grouping: Vec<String>,
}

/// PromQL functions and aggregations the dashboard may use: never metric names.
const FUNCTIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "deriv",
    "delta",
    "histogram_quantile",
    "topk",
    "bottomk",
    "quantile",
    "abs",
    "clamp_min",
    "clamp_max",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "time",
    "vector",
    "scalar",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &["bool", "and", "or", "unless", "offset"];

fn parse_promql(expr: &str) -> PromQl {
    let mut out = PromQl::default();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let until = |from: usize, end: char| (from..chars.len()).find(|&j| chars[j] == end);
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            let end = until(i, '}').unwrap_or(chars.len());
            let inner: String = chars[i + 1..end].iter().collect();
            for m in inner.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                let key: String = m
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let rest = m[key.len()..].trim_start();
                let exact = (rest.starts_with('=') && !rest.starts_with("=~"))
                    .then(|| rest[1..].trim().trim_matches('"').to_owned());
                out.matchers.push((key, exact));
            }
            i = end + 1;
        } else if c == '[' {
            i = until(i, ']').map_or(chars.len(), |e| e + 1);
        } else if c == '"' {
            i = until(i + 1, '"').map_or(chars.len(), |e| e + 1);
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if GROUPING.contains(&word.as_str()) {
                let open = until(i, '(').unwrap_or(chars.len());
                let close = until(open, ')').unwrap_or(chars.len());
                let labels: String = chars[(open + 1).min(close)..close].iter().collect();
                out.grouping.extend(
                    labels
                        .split(',')
                        .map(|l| l.trim().to_owned())
                        .filter(|l| !l.is_empty()),
                );
                i = close + 1;
            } else if !FUNCTIONS.contains(&word.as_str()) && !KEYWORDS.contains(&word.as_str()) {
                out.metrics.push(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn promql_parsing_finds_metrics_labels_and_grouping() {
    let q = parse_promql(
        r#"histogram_quantile(0.99, sum by (le, outcome) (rate(iotbridge_x_bucket{instance=~"$i", kind="a"}[$__rate_interval]))) / 1000 + on (job) iotbridge_y"#,
    );
    assert_eq!(q.metrics, ["iotbridge_x_bucket", "iotbridge_y"]);
    assert_eq!(q.grouping, ["le", "outcome", "job"]);
    let want = [
        ("instance".to_owned(), None),
        ("kind".to_owned(), Some("a".to_owned())),
    ];
    assert_eq!(q.matchers, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_what_the_bridge_exports() -> Result<(), E2eError> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana/iot-bridge.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| E2eError::Bridge(format!("reading {}: {e}", path.display())))?;
    let dashboard: Value =
        serde_json::from_str(&text).map_err(|source| E2eError::Json { text, source })?;
    let schema = dashboard["schemaVersion"].as_u64().unwrap_or(0);
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "a Prometheus datasource variable"
    );

    let env = TestEnv::new().devices(1).start().await?;
    let scrape = env.metrics().await?;
    env.shutdown().await?;
    let exposed: BTreeSet<String> = scrape.exposed_names().into_iter().collect();
    let label_exists = |metrics: &[String], label: &str, value: Option<&str>| {
        // Prometheus adds `instance` and `job` itself; `le` is every bucket's.
        ["instance", "job"].contains(&label)
            || scrape.samples.iter().any(|s| {
                metrics.contains(&s.name)
                    && s.labels
                        .get(label)
                        .is_some_and(|v| value.is_none_or(|want| v == want))
            })
    };

    let panels: Vec<Value> = dashboard["panels"].as_array().cloned().unwrap_or_default();
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut exprs: Vec<String> = Vec::new();
    for p in &panels {
        assert!(
            ids.insert(p["id"].as_u64()),
            "duplicate panel id: {}",
            p["id"]
        );
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(p["gridPos"]["w"].as_u64().is_some() && p["gridPos"]["h"].as_u64().is_some());
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {}",
            p["title"]
        );
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "panel {}",
                p["title"]
            );
            exprs.push(t["expr"].as_str().unwrap_or_default().to_owned());
        }
    }
    for expr in &exprs {
        let q = parse_promql(expr);
        assert!(!q.metrics.is_empty(), "no metric in {expr}");
        for m in &q.metrics {
            assert!(
                exposed.contains(m),
                "{m} (in {expr}) is not exported; exported: {exposed:?}"
            );
            used.insert(m.clone());
        }
        for (label, value) in &q.matchers {
            assert!(
                label_exists(&q.metrics, label, value.as_deref()),
                "{label}={value:?} in {expr}"
            );
        }
        for label in &q.grouping {
            assert!(
                label_exists(&q.metrics, label, None),
                "by ({label}) in {expr}"
            );
        }
    }
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let definition = v["definition"].as_str().unwrap_or_default();
        let args = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected variable query {definition}"));
        let (metric, _label) = args.split_once(',').unwrap_or((args, ""));
        assert!(
            exposed.contains(metric.trim()),
            "variable query {definition}"
        );
    }
    // It shows what an operator needs.
    for family in [
        "iotbridge_clients",
        "iotbridge_messages_in_total",
        "iotbridge_messages_out_total",
        "iotbridge_session_queue_depth_bucket",
        "iotbridge_telemetry_conflated_total",
        "iotbridge_command_duration_seconds_bucket",
        "iotbridge_broker_up",
        "iotbridge_tls_handshake_failures_total",
        "iotbridge_devices",
        "iotbridge_process_resident_memory_bytes",
        "iotbridge_process_cpu_milliseconds",
    ] {
        assert!(
            used.contains(family),
            "the dashboard does not show {family}"
        );
    }
    Ok(())
}
