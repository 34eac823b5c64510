//! Per-subscription options over real sockets: `max_rate_hz` thins a fast device's stream to the
//! asked rate and still delivers its newest value; `fields` sends only the asked fields and
//! skips messages that carry none of them.

use std::time::{Duration, Instant};

use e2e::mqtt::{simple_meta, ManualDevice};
use e2e::{E2eError, TestEnv};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn telemetry_of(device: &str) -> impl Fn(&Value) -> bool + '_ {
    move |m: &Value| m["type"] == "telemetry" && m["device"] == device
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rate_hz_thins_the_stream_and_delivers_the_newest_value() -> Result<(), E2eError> {
    const HZ: f64 = 2.0;
    const PUBLISH_EVERY: Duration = Duration::from_millis(50); // 20 Hz
    const BURST: Duration = Duration::from_secs(3);
    let env = TestEnv::new().start().await?;
    let meta = simple_meta("meter", &["n"]);
    let mut device = ManualDevice::start(&env.pki, &env.mosquitto, "meter-1", &meta).await?;
    env.wait_online(&["meter-1"], WAIT).await?;
    let mut slow = env.connect("slow").await?;
    let mut full = env.connect("full").await?;
    let msg = json!({"type": "subscribe", "req": "s1", "devices": ["meter-1"], "max_rate_hz": HZ});
    let snapshot = slow.request(&msg, WAIT).await?;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    full.subscribe(&["meter-1"], "s2", WAIT).await?;

    let started = Instant::now();
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    let mut last = 0;
    while started.elapsed() < BURST {
        tick.tick().await;
        last += 1;
        device.telemetry(&json!({"n": last})).await?;
    }
    // The unthrottled client sees every one of them: the device really sent `last` values.
    let end = full
        .recv_until(
            |m| telemetry_of("meter-1")(m) && m["data"]["n"] == last,
            WAIT,
        )
        .await?;
    let first_seq = full
        .take_backlog()
        .into_iter()
        .find(telemetry_of("meter-1"))
        .and_then(|m| m["seq"].as_u64())
        .unwrap_or(0);
    assert_eq!(end["seq"].as_u64(), Some(first_seq + last as u64 - 1));

    // The throttled one gets the newest value once its next slot comes, and no more than the
    // rate allows in between.
    let newest = slow
        .recv_until(
            |m| telemetry_of("meter-1")(m) && m["data"]["n"] == last,
            WAIT,
        )
        .await?;
    let mut got: Vec<Value> = slow
        .take_backlog()
        .into_iter()
        .filter(telemetry_of("meter-1"))
        .collect();
    got.push(newest);
    // One at once, one per slot, and the last one held past the end: never near the 60 sent.
    let allowed = (BURST.as_secs_f64() * HZ).ceil() as usize + 3;
    assert!(
        got.len() >= 3 && got.len() <= allowed,
        "{} messages at {HZ} Hz over {BURST:?} of a 20 Hz device",
        got.len()
    );
    let seqs: Vec<u64> = got.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    // Skipped seqs are expected; the values that do arrive are the device's, unchanged.
    for m in &got {
        let n = m["data"]["n"].as_u64().unwrap_or(0);
        assert_eq!(m["seq"].as_u64(), Some(first_seq + n - 1), "{m}");
    }
    // Nothing more comes once the device is quiet.
    let extra = slow
        .recv_until(telemetry_of("meter-1"), Duration::from_secs(1))
        .await;
    assert!(extra.as_ref().is_err_and(E2eError::is_timeout), "{extra:?}");
    device.mqtt.disconnect().await;
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_sends_only_those_fields_and_skips_messages_without_them() -> Result<(), E2eError> {
    let env = TestEnv::new().start().await?;
    let meta = simple_meta("multi", &["a", "b", "c"]);
    let mut device = ManualDevice::start(&env.pki, &env.mosquitto, "multi-1", &meta).await?;
    env.wait_online(&["multi-1"], WAIT).await?;
    device
        .telemetry(&json!({"a": 1.5, "b": 2.5, "c": 3.5}))
        .await?;
    let mut picky = env.connect("picky").await?;
    let mut everything = env.connect("everything").await?;
    everything.subscribe(&["multi-1"], "s0", WAIT).await?;
    let msg =
        json!({"type": "subscribe", "req": "s1", "devices": ["multi-*"], "fields": ["a", "c"]});
    let snapshot = picky.request(&msg, WAIT).await?;
    // The snapshot's last telemetry is projected too.
    let entry = &snapshot["devices"][0];
    assert_eq!(
        entry["telemetry"],
        json!({"a": 1.5, "c": 3.5}),
        "{snapshot}"
    );

    let sent = [
        json!({"a": 10.5, "b": 20.5}),
        json!({"b": 21.5}), // none of the asked fields: not sent to picky
        json!({"c": 30.5, "b": 22.5}),
        json!({"a": 11.5, "b": 23.5, "c": 31.5, "extra": true}),
    ];
    for data in &sent {
        device.telemetry(data).await?;
    }
    let all: Vec<Value> = collect(&mut everything, "multi-1", sent.len()).await?;
    let want = [
        (all[0]["seq"].clone(), json!({"a": 10.5})),
        (all[2]["seq"].clone(), json!({"c": 30.5})),
        (all[3]["seq"].clone(), json!({"a": 11.5, "c": 31.5})),
    ];
    let got = collect(&mut picky, "multi-1", want.len()).await?;
    for (m, (seq, data)) in got.iter().zip(&want) {
        assert_eq!((&m["seq"], &m["data"]), (seq, data), "{m}");
    }
    // The skipped message is not sent later either.
    let more = picky
        .recv_until(telemetry_of("multi-1"), Duration::from_millis(500))
        .await;
    assert!(more.as_ref().is_err_and(E2eError::is_timeout), "{more:?}");
    device.mqtt.disconnect().await;
    env.shutdown().await
}

/// The next `n` telemetry messages of `device`, in order.
async fn collect(
    client: &mut e2e::WsClient,
    device: &str,
    n: usize,
) -> Result<Vec<Value>, E2eError> {
    let mut got = Vec::new();
    while got.len() < n {
        got.push(client.recv_until(telemetry_of(device), WAIT).await?);
    }
    Ok(got)
}
