//! What any one client can cost the bridge: frame size, subscriptions, connections, stalled
//! handshakes and silent sockets are each bounded, and hitting a bound affects only that client.

use std::time::{Duration, Instant};

use e2e::{raw_ws, tls, ws, E2eError, TestEnv, WsClient};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

fn telemetry(m: &serde_json::Value) -> bool {
    m["type"] == "telemetry"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_only_that_client_with_1009() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(2)
        .telemetry_interval(Duration::from_millis(100))
        .bridge_config(|c| c.limits.max_frame_bytes = 4096)
        .start()
        .await?;
    let mut big = env.connect("alice").await?;
    let mut other = env.connect("bob").await?;
    other.subscribe(&["*"], "s1", WAIT).await?;

    // Just under the limit is an ordinary (refused) request: the connection stays.
    let padding = "x".repeat(3900);
    let under = json!({"type": "ping", "req": "p1", "padding": padding});
    assert!(under.to_string().len() < 4096);
    let answer = big.request(&under, WAIT).await?;
    assert_eq!(
        (&answer["type"], &answer["code"]),
        (&json!("error"), &json!("bad_request")),
        "{answer}"
    );

    let over = json!({"type": "ping", "req": "p2", "padding": "x".repeat(5000)});
    big.send(&over).await?;
    let close = big.recv_close(WAIT).await?;
    let code = close.map(|c| u16::from(c.code));
    assert_eq!(code, Some(1009), "close frame for an oversized message");

    // The neighbour did not notice: its stream goes on and it is still served.
    other.take_backlog();
    other.recv_until(telemetry, WAIT).await?;
    let pong = other
        .request(&json!({"type": "ping", "req": "p3"}), WAIT)
        .await?;
    assert_eq!(pong["type"], "pong");
    let metrics = env.metrics().await?;
    assert_eq!(
        metrics.get("iotbridge_clients_closed_total", &[("reason", "oversized")]),
        1.0
    );
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_subscriptions_is_an_error_and_the_connection_stays() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(3)
        .telemetry_interval(Duration::from_millis(100))
        .bridge_config(|c| c.limits.max_subscriptions = 3)
        .start()
        .await?;
    let ids = env.fleet().ids();
    let mut client = env.connect("alice").await?;
    let first: Vec<&str> = ids.iter().map(String::as_str).collect();
    client.subscribe(&first, "s1", WAIT).await?;

    for (req, patterns) in [
        ("s2", vec!["extra-1"]),
        ("s3", vec!["a*", "b*", "c*", "d*"]),
    ] {
        let msg = json!({"type": "subscribe", "req": req, "devices": patterns});
        let answer = client.request(&msg, WAIT).await?;
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["code"], "too_many_subscriptions", "{answer}");
        assert!(answer["message"].as_str().is_some_and(|m| m.contains('3')));
    }
    // Subscribing again to a pattern it holds replaces its options: not a new subscription.
    let again = client.subscribe(&first[..1], "s4", WAIT).await?;
    assert_eq!(again["devices"].as_array().map(Vec::len), Some(1));

    // Still connected, still streaming what it subscribed to first.
    client.take_backlog();
    let msg = client.recv_until(telemetry, WAIT).await?;
    assert!(ids.iter().any(|id| msg["device"] == id.as_str()), "{msg}");
    let pong = client
        .request(&json!({"type": "ping", "req": "p1"}), WAIT)
        .await?;
    assert_eq!(pong["type"], "pong");
    env.shutdown().await
}

/// Connects a WebSocket client as `name`, retrying while the bridge refuses: connections of the
/// harness's own readiness checks may still hold a slot for a moment.
async fn connect_retrying(env: &TestEnv, name: &str) -> Result<WsClient, E2eError> {
    let started = Instant::now();
    loop {
        match env.connect(name).await {
            Ok(c) => return Ok(c),
            Err(e) if started.elapsed() > WAIT => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_after_the_limit_is_refused_and_the_first_keep_working(
) -> Result<(), E2eError> {
    const LIMIT: usize = 3;
    let env = TestEnv::new()
        .devices(1)
        .telemetry_interval(Duration::from_millis(100))
        .bridge_config(|c| c.limits.max_connections = LIMIT)
        .start()
        .await?;
    let mut held = Vec::new();
    for n in 0..LIMIT {
        let mut c = connect_retrying(&env, &format!("user-{n}")).await?;
        c.subscribe(&["*"], "s", WAIT).await?;
        held.push(c);
    }

    let cert = env.client_cert("one-too-many")?;
    let config = tls::client_config(env.pki.ca_pem(), Some(&cert))?;
    for attempt in 0..2 {
        let refused = WsClient::connect_with(env.bridge.addr(), config.clone()).await;
        match refused {
            Ok(_) => panic!("connection {} got in (attempt {attempt})", LIMIT + 1),
            Err(e) => assert!(!e.is_timeout(), "refused at once, not left hanging: {e}"),
        }
    }
    // Plain HTTPS counts too: the limit is on connections, not on WebSockets.
    assert!(env.get("/healthz").await.is_err());

    for (n, c) in held.iter_mut().enumerate() {
        c.take_backlog();
        c.recv_until(telemetry, WAIT).await?;
        let pong = c
            .request(&json!({"type": "ping", "req": format!("p{n}")}), WAIT)
            .await?;
        assert_eq!(pong["type"], "pong");
    }
    // A slot freed is a slot for the next one.
    if let Some(c) = held.pop() {
        c.close().await?;
    }
    let mut late = connect_retrying(&env, "one-too-many").await?;
    let pong = late
        .request(&json!({"type": "ping", "req": "late"}), WAIT)
        .await?;
    assert_eq!(pong["type"], "pong");
    env.shutdown().await
}

/// Reads from a socket until it ends; returns how long after `since` that was.
async fn time_until_closed<S>(
    mut socket: S,
    since: Instant,
    limit: Duration,
) -> Result<Duration, E2eError>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| E2eError::timeout("the bridge to drop a stalled handshake", limit))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_dropped_after_the_handshake_timeout() -> Result<(), E2eError> {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let env = TestEnv::new()
        .devices(1)
        .bridge_config(|c| c.limits.handshake_timeout_ms = 500)
        .start()
        .await?;
    let addr = env.bridge.addr();
    let before = env.metrics().await?;

    // One opens TCP and says nothing; one completes TLS and never sends its HTTP request.
    let silent_tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| E2eError::Bridge(format!("connecting: {e}")))?;
    let tcp_opened = Instant::now();
    let cert = env.client_cert("stalling")?;
    let silent_tls = tls::connect(addr, tls::client_config(env.pki.ca_pem(), Some(&cert))?).await?;
    let tls_done = Instant::now();
    // While both stall, everybody else gets in as usual.
    let mut fine = env.connect("alice").await?;

    let (tcp, tls) = tokio::join!(
        time_until_closed(silent_tcp, tcp_opened, WAIT),
        time_until_closed(silent_tls, tls_done, WAIT)
    );
    let (tcp, tls) = (tcp?, tls?);
    // Dropped because of the deadline, not at once; and within a few deadlines (the TLS
    // handshake and the HTTP request each get one).
    for (what, took) in [("TCP only", tcp), ("TLS, no request", tls)] {
        assert!(took >= TIMEOUT * 3 / 4, "{what}: dropped after {took:?}");
        assert!(took < TIMEOUT * 6, "{what}: dropped after {took:?}");
    }

    let after = env.metrics().await?;
    let timeouts = |s: &e2e::metrics::Scrape| {
        s.get(
            "iotbridge_tls_handshake_failures_total",
            &[("reason", "timeout")],
        )
    };
    assert_eq!(
        timeouts(&after) - timeouts(&before),
        1.0,
        "the TCP-only one"
    );
    // Neither became a session: the one connected client is alice.
    assert_eq!(after.get("iotbridge_clients", &[]), 1.0);
    let pong = fine
        .request(&json!({"type": "ping", "req": "p1"}), WAIT)
        .await?;
    assert_eq!(pong["type"], "pong");
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_deadline_covers_tls_and_the_request_together() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .bridge_config(|c| c.limits.handshake_timeout_ms = 500)
        .start()
        .await?;
    let cert = env.client_cert("slowpoke")?;
    let config = tls::client_config(env.pki.ca_pem(), Some(&cert))?;
    let tcp = TcpStream::connect(env.bridge.addr())
        .await
        .map_err(|e| E2eError::Bridge(format!("connecting: {e}")))?;
    // Each step alone is within the deadline; together they are well over it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let name = rustls_pki_types::ServerName::try_from(tls::SERVER_NAME)
        .map_err(|e| E2eError::Tls(e.to_string()))?;
    let mut stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| E2eError::Tls(e.to_string()))?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let request = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    // The bridge may already have closed: a failed write is the expected outcome too.
    let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "served after 800 ms with a 500 ms handshake deadline: {answer:?}"
    );
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_closed_after_the_idle_timeout(
) -> Result<(), E2eError> {
    const IDLE: Duration = Duration::from_secs(3);
    let env = TestEnv::new()
        .devices(1)
        .bridge_config(|c| {
            c.limits.ping_interval_secs = 1;
            c.limits.idle_timeout_secs = 3;
        })
        .start()
        .await?;
    let cert = env.client_cert("sleeper")?;
    let config = tls::client_config(env.pki.ca_pem(), Some(&cert))?;
    // Upgraded, then never writes again: pings go unanswered.
    let mut sleeper = raw_ws::upgrade(env.bridge.addr(), config, ws::SUBPROTOCOL, None).await?;
    let connected = Instant::now();
    // This one keeps reading, so the WebSocket library answers every ping.
    let mut awake = env.connect("awake").await?;

    let closed_at = loop {
        let result = awake.recv(Duration::from_millis(200)).await;
        if let Err(e) = result {
            assert!(
                e.is_timeout(),
                "the reading client must stay connected: {e}"
            );
        }
        let m = env.metrics().await?;
        if m.get("iotbridge_clients_closed_total", &[("reason", "idle")]) > 0.0 {
            break connected.elapsed();
        }
        assert!(connected.elapsed() < IDLE * 4, "never closed for idleness");
    };
    assert!(closed_at >= IDLE, "closed after {closed_at:?}");
    // The session is gone once its goodbye had its chance (a second for the client's reply).
    let gone = Instant::now();
    while env.metrics().await?.get("iotbridge_clients", &[]) != 1.0 {
        assert!(gone.elapsed() < WAIT, "the idle session never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // When the sleeper finally reads, the bridge's goodbye is there: 1001, idle timeout.
    let (frames, ended) = raw_ws::read_to_end(&mut sleeper, WAIT).await;
    assert!(ended, "the bridge ended the connection");
    let close = frames.iter().find(|f| f.opcode == raw_ws::OP_CLOSE);
    let close = close.unwrap_or_else(|| panic!("no close frame in {frames:?}"));
    assert_eq!(close.close_code(), Some(1001), "{close:?}");
    assert!(close.text().contains("idle"), "{close:?}");
    let pings = frames
        .iter()
        .filter(|f| f.opcode == raw_ws::OP_PING)
        .count();
    assert!(
        pings >= 2,
        "pinged every second before giving up: {frames:?}"
    );

    // The awake client outlived the idle timeout several times over.
    assert!(connected.elapsed() > IDLE);
    let pong = awake
        .request(&json!({"type": "ping", "req": "p1"}), WAIT)
        .await?;
    assert_eq!(pong["type"], "pong");
    env.shutdown().await
}
