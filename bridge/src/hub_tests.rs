//! Hub behaviour without sockets: snapshots, fan-out, sequence numbers and gap-free resume.

use std::sync::Arc;

use serde_json::{json, Value};

use super::*;

fn hub(max_samples: usize) -> Arc<Hub> {
    let hub = Hub::new(
        "epoch-1".into(),
        HistoryLimits {
            max_samples,
            max_age_ms: 3_600_000,
            max_bytes: usize::MAX,
        },
    );
    hub.set_broker_up(true);
    hub
}

fn all() -> ReadScope {
    Arc::new(|_: &str| true)
}

/// A registered session, its welcome already read.
fn session(hub: &Hub, readable: ReadScope) -> (SessionId, Arc<Outbox>) {
    let outbox = Outbox::new(10_000, usize::MAX);
    let welcome = |_| Frame::control(&ServerMsg::Pong { req: None }, Wire::Json);
    let sid = hub.register(outbox.clone(), Wire::Json, readable, welcome);
    assert_eq!(outbox.drain_json().len(), 1, "the welcome");
    (sid, outbox)
}

fn subscribe(
    hub: &Hub,
    sid: SessionId,
    patterns: &[&str],
    since: Option<Option<ResumePoint>>,
    opts: SubOptions,
) {
    let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    hub.subscribe(
        sid,
        SubscribeRequest {
            patterns: &patterns,
            req: None,
            since,
            opts,
            max_subscriptions: 16,
            max_replay: 1000,
        },
    )
    .unwrap();
}

/// Telemetry as the broker link hands it over: decoded from the payload's bytes.
fn tele(hub: &Hub, id: &str, payload: Value) {
    let (ts, data) = crate::telemetry::decode(payload.to_string().as_bytes(), 1 << 20).unwrap();
    hub.on_telemetry(id, ts, data);
}

fn telemetry(hub: &Hub, id: &str, n: u64) {
    tele(hub, id, json!({ "n": n, "ts": 1_000 + n as i64 }));
}

#[test]
fn snapshot_then_stream_without_gap_or_duplicate() {
    let hub = hub(100);
    hub.on_meta("lamp", Some(json!({"kind": "light"})));
    hub.on_status("lamp", true);
    telemetry(&hub, "lamp", 1);
    telemetry(&hub, "plug", 1);
    let (sid, outbox) = session(&hub, all());
    subscribe(&hub, sid, &["la*"], None, SubOptions::default());
    telemetry(&hub, "lamp", 2);
    telemetry(&hub, "plug", 2); // not subscribed
    let got = outbox.drain_json();
    assert_eq!(got.len(), 2, "{got:?}");
    let snap = &got[0];
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["devices"][0]["id"], "lamp");
    assert_eq!(snap["devices"][0]["seq"], 1);
    assert_eq!(snap["devices"][0]["presence"], "online");
    assert_eq!(snap["devices"][0]["telemetry"], json!({"n": 1}));
    assert_eq!(
        got[1],
        json!({"type":"telemetry","device":"lamp","seq":2,"ts":1002,"data":{"n":2}})
    );
}

#[test]
fn new_device_reaches_matching_subscribers() {
    let hub = hub(100);
    let (sid, outbox) = session(&hub, all());
    subscribe(&hub, sid, &["*"], None, SubOptions::default());
    outbox.drain_json();
    hub.on_meta("fresh", Some(json!({"kind": "unknown-kind"})));
    telemetry(&hub, "fresh", 1);
    let got = outbox.drain_json();
    assert_eq!(got[0]["type"], "device");
    assert_eq!(got[1]["seq"], 1);
    hub.on_meta("fresh", None);
    assert_eq!(outbox.drain_json()[0]["removed"], true);
    assert_eq!(hub.presence("fresh"), None);
}

#[test]
fn resume_replays_exactly_what_was_missed() {
    let hub = hub(100);
    for n in 1..=3 {
        telemetry(&hub, "a", n);
    }
    let (sid, outbox) = session(&hub, all());
    subscribe(&hub, sid, &["a"], None, SubOptions::default());
    telemetry(&hub, "a", 4);
    outbox.drain_json();
    hub.unregister(sid); // the client goes away having seen seq 4
    for n in 5..=7 {
        telemetry(&hub, "a", n);
    }
    let (sid, outbox) = session(&hub, all());
    let point = ResumePoint {
        epoch: "epoch-1".into(),
        seqs: [("a".to_string(), 4)].into(),
    };
    subscribe(&hub, sid, &["a"], Some(Some(point)), SubOptions::default());
    telemetry(&hub, "a", 8);
    let got = outbox.drain_json();
    assert_eq!(got[0]["recovered"], true);
    assert_eq!(got[0]["devices"][0]["seq"], 4);
    assert!(got[0]["devices"][0]["telemetry"].is_null());
    let seqs: Vec<u64> = got[1..]
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [5, 6, 7, 8]);
}

#[test]
fn resume_beyond_the_ring_or_from_another_epoch_is_a_fresh_snapshot() {
    let hub = hub(3);
    for n in 1..=10 {
        telemetry(&hub, "a", n);
    }
    for (epoch, seq) in [("epoch-1", 2), ("epoch-0", 9)] {
        let (sid, outbox) = session(&hub, all());
        let point = ResumePoint {
            epoch: epoch.into(),
            seqs: [("a".to_string(), seq)].into(),
        };
        subscribe(&hub, sid, &["a"], Some(Some(point)), SubOptions::default());
        let got = outbox.drain_json();
        assert_eq!(got.len(), 1, "{epoch}: only the snapshot");
        assert_eq!(got[0]["recovered"], false);
        assert_eq!(got[0]["devices"][0]["seq"], 10);
        assert_eq!(got[0]["devices"][0]["telemetry"], json!({"n": 10}));
    }
    // An unreadable token is not a resume either.
    let (sid, outbox) = session(&hub, all());
    subscribe(&hub, sid, &["a"], Some(None), SubOptions::default());
    assert_eq!(outbox.drain_json()[0]["recovered"], false);
}

#[test]
fn fields_project_and_skip_messages_without_them() {
    let hub = hub(100);
    let (sid, outbox) = session(&hub, all());
    let opts = SubOptions {
        fields: Some(Arc::from(vec!["t".to_string()])),
        min_interval: None,
    };
    subscribe(&hub, sid, &["s"], None, opts);
    tele(&hub, "s", json!({"t": 1, "h": 2}));
    tele(&hub, "s", json!({"h": 3}));
    let got = outbox.drain_json();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1]["data"], json!({"t": 1}));
}

#[test]
fn read_scope_hides_devices_everywhere() {
    let hub = hub(100);
    telemetry(&hub, "mine", 1);
    telemetry(&hub, "theirs", 1);
    let only_mine: ReadScope = Arc::new(|id: &str| id == "mine");
    let (sid, outbox) = session(&hub, only_mine.clone());
    subscribe(&hub, sid, &["*"], None, SubOptions::default());
    telemetry(&hub, "theirs", 2);
    hub.on_meta("theirs-too", Some(json!({})));
    let got = outbox.drain_json();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["devices"].as_array().unwrap().len(), 1);
    let list: Value = serde_json::from_str(&hub.list(None, &only_mine, Wire::Json).json()).unwrap();
    assert_eq!(list["devices"].as_array().unwrap().len(), 1);
    let q = Query {
        limit: 10,
        ..Query::default()
    };
    assert!(hub
        .history(None, "theirs", &q, &only_mine, Wire::Json)
        .is_none());
    // Rights shrink at run time: the stream stops.
    hub.set_readable(sid, Arc::new(|_: &str| false));
    telemetry(&hub, "mine", 2);
    assert!(outbox.drain_json().is_empty());
}

#[test]
fn history_answers_from_the_ring() {
    let hub = hub(100);
    for n in 1..=5 {
        tele(&hub, "a", json!({"n": n, "m": 0, "ts": 100 * n}));
    }
    let q = Query {
        field: Some("n".into()),
        from: Some(200),
        to: Some(400),
        limit: 2,
    };
    let frame = hub
        .history(Some(&json!("h1")), "a", &q, &all(), Wire::Json)
        .unwrap();
    let v: Value = serde_json::from_str(&frame.json()).unwrap();
    assert_eq!(v["req"], "h1");
    assert_eq!(
        v["samples"],
        json!([{"seq":3,"ts":300,"data":{"n":3}}, {"seq":4,"ts":400,"data":{"n":4}}])
    );
}

#[test]
fn broker_down_marks_presence_stale_and_tells_everyone() {
    let hub = hub(100);
    hub.on_status("a", true);
    let (sid, outbox) = session(&hub, all());
    subscribe(&hub, sid, &["a"], None, SubOptions::default());
    outbox.drain_json();
    hub.set_broker_up(false);
    assert_eq!(
        outbox.drain_json(),
        [json!({"type":"broker","status":"down"})]
    );
    assert_eq!(hub.presence("a"), Some(Presence::Stale));
    hub.set_broker_up(true);
    assert_eq!(
        hub.presence("a"),
        Some(Presence::Unknown),
        "not confirmed yet"
    );
    hub.on_status("a", true);
    assert_eq!(outbox.drain_json().last().unwrap()["presence"], "online");
}

#[test]
fn too_many_subscriptions_and_bad_patterns_are_refused() {
    let hub = hub(100);
    let (sid, _outbox) = session(&hub, all());
    let many: Vec<String> = (0..17).map(|i| format!("d{i}")).collect();
    fn r(patterns: &[String]) -> SubscribeRequest<'_> {
        SubscribeRequest {
            patterns,
            req: None,
            since: None,
            opts: SubOptions::default(),
            max_subscriptions: 16,
            max_replay: 1000,
        }
    }
    assert_eq!(
        hub.subscribe(sid, r(&many)),
        Err(SubscribeError::TooMany(16))
    );
    let bad = vec!["iot/#".to_string()];
    assert!(matches!(
        hub.subscribe(sid, r(&bad)),
        Err(SubscribeError::InvalidPattern(_))
    ));
}

/// Each session's entry on a device's list follows every change of its subscriptions and ACL:
/// one frame per message per session, never two, never a stale one.
#[test]
fn subscriber_lists_follow_subscribe_unsubscribe_acl_and_disconnect() {
    let hub = hub(10);
    for id in ["a-1", "a-2", "b-1"] {
        telemetry(&hub, id, 0);
    }
    let only_a: ReadScope = Arc::new(|id: &str| id.starts_with("a-"));
    let (s1, o1) = session(&hub, all());
    let (s2, o2) = session(&hub, all());
    let (s3, o3) = session(&hub, all());
    subscribe(&hub, s1, &["*"], None, SubOptions::default());
    subscribe(&hub, s1, &["a-*"], None, SubOptions::default()); // overlaps: still one entry
    subscribe(&hub, s2, &["a-1", "b-*"], None, SubOptions::default());
    subscribe(&hub, s3, &["*"], None, SubOptions::default());
    let received = |o: &Outbox| -> Vec<String> {
        o.drain_json()
            .iter()
            .filter(|m| m["type"] == "telemetry")
            .map(|m| m["device"].as_str().unwrap().to_owned())
            .collect()
    };
    let round = |n: u64| {
        for id in ["a-1", "a-2", "b-1"] {
            telemetry(&hub, id, n);
        }
    };
    for o in [&o1, &o2, &o3] {
        o.drain_json();
    }
    round(1);
    assert_eq!(received(&o1), ["a-1", "a-2", "b-1"]);
    assert_eq!(received(&o2), ["a-1", "b-1"]);
    assert_eq!(received(&o3), ["a-1", "a-2", "b-1"]);

    // Unsubscribing `*` leaves s1 with `a-*`; s2 drops `b-*`; the ACL narrows s3 to a-*.
    assert_eq!(hub.unsubscribe(s1, &["*".into()]), ["*"]);
    assert_eq!(hub.unsubscribe(s2, &["b-*".into()]), ["b-*"]);
    hub.set_readable(s3, only_a);
    round(2);
    assert_eq!(received(&o1), ["a-1", "a-2"]);
    assert_eq!(received(&o2), ["a-1"]);
    assert_eq!(received(&o3), ["a-1", "a-2"]);

    // The ACL widens again, s2 subscribes anew with options, s1 goes away.
    hub.set_readable(s3, all());
    let opts = subscription_with_fields(&["n"]);
    subscribe(&hub, s2, &["*"], None, opts);
    hub.unregister(s1);
    round(3);
    assert!(received(&o1).is_empty());
    assert_eq!(received(&o2), ["a-1", "a-2", "b-1"]);
    assert_eq!(received(&o3), ["a-1", "a-2", "b-1"]);
    let inner = hub.lock();
    for d in inner.devices.values() {
        let mut sessions: Vec<SessionId> = d.subscribers.iter().map(|(sid, _)| *sid).collect();
        sessions.sort_unstable();
        // s1 (on a-* when it left) is not swept yet (see the next test); its closed outbox
        // took nothing.
        let want = if d.id.starts_with("a-") {
            vec![s1, s2, s3]
        } else {
            vec![s2, s3]
        };
        assert_eq!(sessions, want, "{}", d.id);
    }
}

/// Sessions that go away leave the device lists in sweeps, not one search each.
#[test]
fn gone_sessions_are_swept_from_device_lists() {
    let hub = hub(10);
    telemetry(&hub, "a", 0);
    let keep: Vec<_> = (0..10).map(|_| session(&hub, all())).collect();
    let go: Vec<_> = (0..100).map(|_| session(&hub, all())).collect();
    for (sid, _) in keep.iter().chain(&go) {
        subscribe(&hub, *sid, &["*"], None, SubOptions::default());
    }
    let listed = || hub.lock().devices["a"].subscribers.len();
    assert_eq!(listed(), 110);
    for (sid, _) in &go[..63] {
        hub.unregister(*sid);
    }
    assert_eq!(listed(), 110, "fewer than 64 gone: not swept yet");
    hub.unregister(go[63].0);
    assert_eq!(listed(), 46, "swept: the 10 kept and 36 still connected");
    for (sid, _) in &go[64..] {
        hub.unregister(*sid);
    }
    telemetry(&hub, "a", 1);
    for (_, o) in &keep {
        assert_eq!(
            o.drain_json().last().unwrap()["seq"],
            2,
            "live sessions still get telemetry"
        );
    }
    for (_, o) in &go {
        assert!(o.drain_json().is_empty(), "a closed outbox takes nothing");
    }
}

fn subscription_with_fields(fields: &[&str]) -> SubOptions {
    SubOptions {
        fields: Some(fields.iter().map(|f| f.to_string()).collect()),
        min_interval: None,
    }
}

fn throttled(every: Duration) -> SubOptions {
    SubOptions {
        fields: None,
        min_interval: Some(every),
    }
}

/// What `frames` say, in order: `snapshot@seq` (the first device's; `null` when empty) or
/// `telemetry@seq`.
fn kinds(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match f["type"].as_str() {
            Some("snapshot") => format!("snapshot@{}", f["devices"][0]["seq"]),
            Some(t) => format!("{t}@{}", f["seq"]),
            None => panic!("a frame without a type: {f}"),
        })
        .collect()
}

#[test]
fn a_new_subscribe_drops_what_the_old_rate_limit_held_since_its_snapshot_carries_it() {
    let hub = hub(100);
    let (sid, outbox) = session(&hub, all());
    subscribe(&hub, sid, &["m"], None, throttled(Duration::from_secs(60)));
    telemetry(&hub, "m", 1); // the first one goes at once
    telemetry(&hub, "m", 2); // held for a minute
    subscribe(&hub, sid, &["m"], None, SubOptions::default());
    assert_eq!(outbox.next_due(), None, "nothing is held any more");
    telemetry(&hub, "m", 3); // no rate limit now: goes at once
    assert_eq!(
        kinds(&outbox.drain_json()),
        ["snapshot@null", "telemetry@1", "snapshot@2", "telemetry@3"],
        "seq 2 comes once, in the snapshot"
    );
}

#[test]
fn unsubscribing_a_rate_limited_pattern_sends_what_it_held_before_anything_newer() {
    let hub = hub(100);
    let (sid, outbox) = session(&hub, all());
    telemetry(&hub, "m", 1);
    subscribe(&hub, sid, &["*"], None, SubOptions::default());
    subscribe(&hub, sid, &["m*"], None, throttled(Duration::from_secs(60)));
    telemetry(&hub, "m", 2); // the first one goes at once
    telemetry(&hub, "m", 3); // held by m*
    assert_eq!(hub.unsubscribe(sid, &["m*".to_string()]), ["m*"]);
    telemetry(&hub, "m", 4); // through *, unthrottled
    assert_eq!(
        kinds(&outbox.drain_json()),
        [
            "snapshot@1",
            "snapshot@1",
            "telemetry@2",
            "telemetry@3",
            "telemetry@4"
        ]
    );
    assert_eq!(outbox.next_due(), None);
}

#[test]
fn a_resume_that_would_replay_more_than_the_queue_holds_is_a_fresh_snapshot() {
    let hub = hub(100);
    for id in ["a", "b"] {
        for n in 1..=10 {
            telemetry(&hub, id, n);
        }
    }
    // The client says it saw seq 2 of each: 16 messages to replay.
    let point = || ResumePoint {
        epoch: "epoch-1".into(),
        seqs: [("a".to_string(), 2), ("b".to_string(), 2)].into(),
    };
    let resume = |max_replay| {
        let (sid, outbox) = session(&hub, all());
        let patterns = vec!["*".to_string()];
        let request = SubscribeRequest {
            patterns: &patterns,
            req: None,
            since: Some(Some(point())),
            opts: SubOptions::default(),
            max_subscriptions: 16,
            max_replay,
        };
        hub.subscribe(sid, request).unwrap();
        outbox.drain_json()
    };
    let fits = resume(16);
    assert_eq!(fits[0]["recovered"], true);
    assert_eq!(
        fits.len(),
        1 + 16,
        "the snapshot, then every missed message"
    );
    let too_long = resume(15);
    assert_eq!(too_long[0]["recovered"], false);
    assert_eq!(too_long.len(), 1, "a fresh snapshot and nothing replayed");
    assert_eq!(too_long[0]["devices"][0]["seq"], 10);
}
