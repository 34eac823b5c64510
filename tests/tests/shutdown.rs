//! Graceful shutdown: the bridge stops accepting, lets in-flight commands get their device's
//! answer (or a final `offline`), says goodbye to every client with close code 1001 after their
//! last statuses, and ends within its grace period.

use std::time::{Duration, Instant};

use e2e::mqtt::{simple_meta, ManualDevice};
use e2e::{E2eError, TestEnv, WsClient};
use serde_json::{json, Value};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);
const GRACE: Duration = Duration::from_secs(4);
/// The late device answers this long after shutdown began: well inside half the grace period,
/// which is what in-flight commands get.
const ACK_DELAY: Duration = Duration::from_millis(600);

fn set(req: &str, device: &str) -> Value {
    json!({"type": "command", "req": req, "device": device, "action": "set", "params": {"on": true}})
}

async fn wait_sent(client: &mut WsClient, req: &str) -> Result<(), E2eError> {
    client
        .recv_until(|m| m["req"] == req && m["status"] == "sent", WAIT)
        .await
        .map(|_| ())
}

/// The final `command_status` of `req` among `messages`.
fn final_status<'a>(messages: &'a [Value], req: &str) -> Option<&'a Value> {
    messages.iter().find(|m| {
        m["type"] == "command_status"
            && m["req"] == req
            && !matches!(m["status"].as_str(), Some("accepted" | "sent"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_in_flight_commands_then_closes_everyone_with_1001() -> Result<(), E2eError>
{
    let mut env = TestEnv::new()
        .devices(2)
        .telemetry_interval(Duration::from_millis(100))
        .bridge_config(|c| c.shutdown.grace_ms = GRACE.as_millis() as u64)
        .start()
        .await?;
    let meta = simple_meta("switch", &[]);
    let mut late = ManualDevice::start(&env.pki, &env.mosquitto, "late-1", &meta).await?;
    let mut mute = ManualDevice::start(&env.pki, &env.mosquitto, "mute-1", &meta).await?;
    env.wait_online(&["late-1", "mute-1"], WAIT).await?;
    let mut requester = env.connect("alice").await?;
    let mut watcher = env.connect("bob").await?;
    watcher.subscribe(&["*"], "s1", WAIT).await?;

    requester.send(&set("late", "late-1")).await?;
    wait_sent(&mut requester, "late").await?;
    requester.send(&set("never", "mute-1")).await?;
    wait_sent(&mut requester, "never").await?;
    let command = late.next_command(WAIT).await?;
    mute.next_command(WAIT).await?;

    let addr = env.bridge.addr();
    let started = Instant::now();
    let answer_late = async {
        tokio::time::sleep(ACK_DELAY).await;
        late.ack(&command, &json!({"on": true})).await
    };
    // Once shutdown has begun, nobody new gets in.
    let refused = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        TcpStream::connect(addr).await.is_err()
    };
    let (stopped, acked, refused, requester_close, watcher_close) = tokio::join!(
        env.bridge.stop(),
        answer_late,
        refused,
        requester.recv_close(WAIT),
        watcher.recv_close(WAIT)
    );
    let took = started.elapsed();
    stopped?;
    acked?;
    assert!(took < GRACE + Duration::from_secs(1), "stop took {took:?}");
    assert!(
        took >= ACK_DELAY,
        "stopped before the in-flight command was answered: {took:?}"
    );
    assert!(refused, "a new connection was accepted during shutdown");

    for (who, close) in [("requester", requester_close?), ("watcher", watcher_close?)] {
        let code = close.map(|c| u16::from(c.code));
        assert_eq!(code, Some(1001), "{who}'s close frame");
    }
    // Both commands got their final status, before the close frame.
    let seen = requester.take_backlog();
    let ok = final_status(&seen, "late").expect("a final status for the late command");
    assert_eq!(ok["status"], "ok", "{ok}");
    assert_eq!(ok["result"], json!({"on": true}), "{ok}");
    let offline = final_status(&seen, "never").expect("a final status for the mute one");
    assert_eq!(offline["status"], "offline", "{offline}");
    assert!(
        offline["error"]
            .as_str()
            .is_some_and(|e| e.contains("shutting down")),
        "{offline}"
    );
    late.mqtt.disconnect().await;
    mute.mqtt.disconnect().await;
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_bridge_stops_at_once() -> Result<(), E2eError> {
    let mut env = TestEnv::new()
        .devices(2)
        .bridge_config(|c| c.shutdown.grace_ms = GRACE.as_millis() as u64)
        .start()
        .await?;
    let mut client = env.connect("alice").await?;
    client.subscribe(&["*"], "s1", WAIT).await?;
    let started = Instant::now();
    let (stopped, close) = tokio::join!(env.bridge.stop(), client.recv_close(WAIT));
    stopped?;
    let took = started.elapsed();
    // Nothing in flight: no reason to wait out the grace period.
    assert!(took < GRACE / 2, "stop took {took:?}");
    assert_eq!(close?.map(|c| u16::from(c.code)), Some(1001));
    env.shutdown().await
}

/// The close handshake the other way: a client that closes gets its close frame answered, so a
/// browser reports a clean close (1000) rather than 1006, and the bridge counts it as gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_gets_its_close_answered() -> Result<(), E2eError> {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;

    let env = TestEnv::new().devices(1).start().await?;
    let mut client = env.connect("alice").await?;
    client.subscribe(&["*"], "s1", WAIT).await?;
    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    };
    client.send_message(Message::Close(Some(bye))).await?;
    let answer = client.recv_close(WAIT).await?;
    assert_eq!(answer.map(|c| u16::from(c.code)), Some(1000));
    env.shutdown().await
}
