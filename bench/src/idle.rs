//! Scenario (c): many idle mutual-TLS WebSocket connections, each subscribed to every (quiet)
//! device. What it costs a server: resident memory per connection, and CPU while nothing
//! happens (the bridge's keepalive pings included, so the window spans a ping interval).

use std::time::{Duration, Instant};

use crate::clients::{ClientSet, Side};
use crate::procstat::Usage;
use crate::rig::Rig;
use crate::BenchError;

/// Connections per source address: well under the ~28,000 ephemeral ports of one address.
const PER_SOURCE: usize = 15_000;

#[derive(Debug, Clone)]
pub struct Idle {
    pub side: Side,
    pub wanted: usize,
    /// Connections set up and still open at the end of the window.
    pub held: usize,
    pub connect_time: Duration,
    pub window: Duration,
    /// What the server paid; `None` when it runs inside this process.
    pub cost: Option<ServerCost>,
}

#[derive(Debug, Clone, Copy)]
pub struct ServerCost {
    /// Resident memory before the first connection and with all of them open and subscribed.
    pub rss_before: u64,
    pub rss_after: u64,
    /// With all of them open but not yet subscribed (bridge only: its clients subscribe later).
    pub rss_bare: Option<u64>,
    /// CPU time during the idle window.
    pub idle_cpu: Duration,
}

impl Idle {
    pub fn bytes_per_connection(&self) -> Option<f64> {
        let c = self.cost?;
        Some(c.rss_after.saturating_sub(c.rss_before) as f64 / self.held.max(1) as f64)
    }

    /// The same before subscribing: what a bare mutual-TLS WebSocket session costs.
    pub fn bare_bytes_per_connection(&self) -> Option<f64> {
        let c = self.cost?;
        Some(c.rss_bare?.saturating_sub(c.rss_before) as f64 / self.held.max(1) as f64)
    }

    /// CPU used while idle, as a share of one core.
    pub fn cpu_share(&self) -> Option<f64> {
        Some(self.cost?.idle_cpu.as_secs_f64() / self.window.as_secs_f64().max(1e-9))
    }
}

fn server_usage(rig: &Rig, side: Side) -> Option<Usage> {
    match side {
        Side::Bridge => rig.bridge.usage(),
        Side::Peer | Side::Direct => rig.broker.usage(),
    }
}

/// Opens `n` connections of `side`, lets them settle, then watches the server for `window`.
pub async fn run(rig: &Rig, side: Side, n: usize, window: Duration) -> Result<Idle, BenchError> {
    let before = server_usage(rig, side);
    let started = Instant::now();
    let spread = n.div_ceil(PER_SOURCE);
    let mut clients = ClientSet::connect_with(rig, side, n, spread, true).await?;
    let connect_time = started.elapsed();
    // Let allocations from the handshakes settle before taking the "all open" figures.
    let settle = Duration::from_secs(2).min(window);
    tokio::time::sleep(settle).await;
    let bare = (side == Side::Bridge)
        .then(|| server_usage(rig, side))
        .flatten();
    clients.subscribe_deferred().await?;
    tokio::time::sleep(settle).await;
    let open = server_usage(rig, side);
    let watch = Instant::now();
    tokio::time::sleep(window).await;
    let end = server_usage(rig, side);
    let window = watch.elapsed();
    let held = clients.len() - clients.lost();
    clients.close().await;
    let cost = match (before, open, end) {
        (Some(before), Some(open), Some(end)) => Some(ServerCost {
            rss_before: before.rss_bytes,
            rss_after: open.rss_bytes.max(end.rss_bytes),
            rss_bare: bare.map(|u| u.rss_bytes),
            idle_cpu: end.cpu_since(&open),
        }),
        _ => None,
    };
    Ok(Idle {
        side,
        wanted: n,
        held,
        connect_time,
        window,
        cost,
    })
}
