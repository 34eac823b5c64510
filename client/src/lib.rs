//! `iotctl`, the terminal client of iot-bridge, as a library: connect to the bridge's
//! WebSocket endpoint with a client certificate and speak the `iotbridge.v1.json` protocol
//! (docs/protocol.md), for people and scripts without a browser, tests and tools.
//!
//! Modules and how data flows between them:
//! - [`connection`]: [`ConnectOptions`] names the URL and certificate files; [`Client::connect`]
//!   does TCP, TLS (rustls, ring, client certificate) and the WebSocket upgrade, and reads the
//!   `welcome`. [`Client::request`] sends a request and returns its `req`;
//!   [`Client::next_message`] returns each message from the bridge.
//! - [`messages`]: every message arrives as a [`Message`]: the JSON as received plus a typed
//!   [`ServerMsg`], read leniently so newer bridges do not break older clients.
//! - [`command`]: [`run_command`] follows a command to its final status; [`Outcome`] maps it
//!   to the exit codes in [`exit_code`].
//! - [`watch`]: [`watch::watch`] subscribes and writes each message as a line until a count,
//!   a duration or Ctrl-C.
//! - [`format`]: human lines and tables, with units from each device's meta (pure).
//! - [`params`]: `key=value` command parameters and durations (pure).
//!
//! ```no_run
//! # async fn demo() -> Result<(), iot_client::ClientError> {
//! use iot_client::{Client, ConnectOptions};
//! let opts = ConnectOptions::from_certs_dir("wss://localhost:8443/ws", "dev-certs".as_ref(), "alice");
//! let mut client = Client::connect(&opts).await?;
//! let req = client.request(serde_json::json!({"type": "list"})).await?;
//! let answer = client.next_message().await?;
//! assert_eq!(answer.req(), Some(req));
//! # Ok(()) }
//! ```

pub mod command;
pub mod connection;
mod error;
pub mod format;
pub mod messages;
pub mod params;
pub mod watch;

pub use command::{exit_code, run_command, CommandSpec, Outcome};
pub use connection::{parse_url, Client, ConnectOptions, Endpoint, DEFAULT_URL, SUBPROTOCOL};
pub use error::ClientError;
pub use format::{Clock, Formatter};
pub use messages::{CommandStatus, Message, ServerMsg};
pub use watch::{WatchEnd, WatchOptions};
