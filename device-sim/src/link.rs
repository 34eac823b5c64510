//! The MQTT connection of one device: the event loop polled through an owned future, and the
//! reconnect backoff.
//!
//! The poll future owns the `EventLoop` and survives `select!` iterations, so a telemetry tick or
//! a control message never cancels a half-finished TLS handshake or socket write.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rand::Rng;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions};

/// Requests a device may queue for its event loop: the connect burst (subscribe, meta, status,
/// state) plus a command answer and a few telemetry messages, with room to spare.
pub(crate) const REQUEST_CHANNEL: usize = 32;
/// Seconds allowed for TCP connect + TLS handshake + ConnAck.
const CONNECT_TIMEOUT_SECS: u64 = 10;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

pub(crate) type PollResult = (EventLoop, Result<Event, ConnectionError>);
type PollFut = Pin<Box<dyn Future<Output = PollResult> + Send>>;

/// Polls the event loop once, after `delay` (the reconnect backoff), handing it back with the result.
fn poll_after(mut eventloop: EventLoop, delay: Duration) -> PollFut {
    Box::pin(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let result = eventloop.poll().await;
        (eventloop, result)
    })
}

/// A live MQTT session: the client handle and the in-flight poll of its event loop.
/// Dropping it drops the event loop and closes the socket without DISCONNECT.
pub(crate) struct Link {
    pub client: AsyncClient,
    poll: Option<PollFut>,
}

impl Link {
    /// A new client and event loop (fresh socket, clean session), polled at once.
    pub(crate) fn open(mqtt: &MqttOptions) -> Link {
        let (client, mut eventloop) = AsyncClient::new(mqtt.clone(), REQUEST_CHANNEL);
        let mut net = NetworkOptions::new();
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(CONNECT_TIMEOUT_SECS);
        eventloop.set_network_options(net);
        Link {
            client,
            poll: Some(poll_after(eventloop, Duration::ZERO)),
        }
    }

    /// Hands the event loop back after a completed poll; the next poll starts after `delay`.
    pub(crate) fn poll_again(&mut self, eventloop: EventLoop, delay: Duration) {
        self.poll = Some(poll_after(eventloop, delay));
    }
}

/// The next event of `link`; never resolves while there is no link (the device is down).
/// After it resolves, the caller must give the event loop back with [`Link::poll_again`] or drop
/// the link.
pub(crate) async fn next_event(link: &mut Option<Link>) -> PollResult {
    // Borrowed, not taken: if another `select!` branch wins, the poll stays in the link, half
    // done, and resumes on the next iteration.
    match link.as_mut().and_then(|l| l.poll.as_mut()) {
        Some(poll) => poll.await,
        None => std::future::pending().await,
    }
}

/// Exponential reconnect backoff with "equal jitter": half of each step is fixed, half random, so
/// a fleet that lost the broker together does not reconnect together.
#[derive(Debug)]
pub(crate) struct Backoff {
    step: Duration,
    /// Failures since the last reset.
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            step: BACKOFF_MIN,
            failures: 0,
        }
    }
}

impl Backoff {
    pub(crate) fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// Failures since the last reset, counting the one `next_delay` was just called for.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let step = self.step;
        self.step = (self.step * 2).min(BACKOFF_MAX);
        let half = step / 2;
        half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut backoff = Backoff::default();
        let mut step = BACKOFF_MIN;
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} outside {step:?}"
            );
            step = (step * 2).min(BACKOFF_MAX);
        }
        assert!(backoff.next_delay() <= BACKOFF_MAX);
        assert_eq!(backoff.failures(), 13);
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        assert!(backoff.next_delay() <= BACKOFF_MIN);
    }

    #[test]
    fn jitter_spreads_a_fleet() {
        let delays: std::collections::HashSet<_> = (0..50)
            .map(|_| {
                let mut b = Backoff::default();
                b.next_delay();
                b.next_delay().as_micros()
            })
            .collect();
        assert!(delays.len() > 10, "reconnects bunch up: {delays:?}");
    }
}
