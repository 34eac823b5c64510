//! Scenario (c): many idle mutual-TLS WebSocket connections, each subscribed to every (quiet)
//! device. What it costs a server: resident memory per connection, and CPU while nothing
//! happens (the bridge's keepalive pings included, so the window spans a ping interval).
//!
//! A process can hold only as many connections as it may open files. When the bridge's count
//! is more than one process may hold here, the scenario runs the scale-out model (DESIGN.md):
//! several bridge instances on the one broker, each with its share of the clients, and the
//! clients in as many processes of this program ([`child`]); the figures are the instances'
//! sums.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};

use crate::clients::{ClientSet, Side, Sources, Targets};
use crate::procstat::Usage;
use crate::rig::{Bridge, Rig, USER};
use crate::{tls, BenchError};

/// How long a client process may take to open its connections (handshakes on a busy host).
const CHILD_CONNECT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Idle {
    pub side: Side,
    pub wanted: usize,
    /// Connections set up and still open at the end of the window.
    pub held: usize,
    /// Server processes that held them (bridge instances; 1 for the peer).
    pub instances: usize,
    pub connect_time: Duration,
    pub window: Duration,
    /// What the servers paid, summed; `None` when a server runs inside this process.
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

/// The servers of one side, measured together.
struct Servers<'a> {
    rig: &'a Rig,
    side: Side,
    more: &'a [Bridge],
}

impl Servers<'_> {
    /// The sum over every server process; `None` if any of them runs in this one.
    fn usage(&self) -> Option<Usage> {
        let own = match self.side {
            Side::Bridge => self.rig.bridge.usage(),
            Side::Peer | Side::Direct => self.rig.broker.usage(),
        };
        self.more.iter().try_fold(own?, |sum, b| {
            let u = b.usage()?;
            Some(Usage {
                cpu: sum.cpu + u.cpu,
                rss_bytes: sum.rss_bytes + u.rss_bytes,
            })
        })
    }
}

/// Splits `n` into `parts` shares that differ by at most one.
fn shares(n: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts)
        .map(|i| n / parts + usize::from(i < n % parts))
        .collect()
}

/// Opens `n` connections of `side`, lets them settle, then watches the server for `window`.
/// More bridge connections than `per_process` are spread over bridge instances and client
/// processes (`child_exe`, this program) as the module says.
pub async fn run(
    rig: &Rig,
    side: Side,
    n: usize,
    per_process: usize,
    child_exe: Option<&Path>,
    window: Duration,
) -> Result<Idle, BenchError> {
    let instances = if side == Side::Bridge {
        n.div_ceil(per_process.max(1)).max(1)
    } else {
        1
    };
    let more = rig.more_bridges(instances - 1).await?;
    let result = measure(rig, side, n, instances, &more, child_exe, window).await;
    for mut b in more {
        b.stop().await;
    }
    result
}

async fn measure(
    rig: &Rig,
    side: Side,
    n: usize,
    instances: usize,
    more: &[Bridge],
    child_exe: Option<&Path>,
    window: Duration,
) -> Result<Idle, BenchError> {
    let servers = Servers { rig, side, more };
    let before = servers.usage();
    let started = Instant::now();
    let mut clients = if instances == 1 {
        Clients::Here(
            ClientSet::connect_with(
                &Targets::of(rig),
                side,
                n,
                Sources::for_connections(n, 0),
                true,
            )
            .await?,
        )
    } else {
        let exe = child_exe.ok_or_else(|| {
            BenchError::Setup(format!(
                "(c) needs {instances} client processes for {n} connections, but no program to run them"
            ))
        })?;
        let addrs = std::iter::once(rig.bridge.addr).chain(more.iter().map(|b| b.addr));
        let (ca, (cert, key, _)) = (&rig.certs.paths.ca_cert, rig.certs.paths.user(USER));
        let mut first = 0;
        let mut children = Vec::new();
        for (bridge, count) in addrs.zip(shares(n, instances)) {
            let sources = Sources::for_connections(count, first);
            first += sources.count;
            let spec = ChildSpec {
                bridge,
                count,
                sources,
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            };
            children.push(Child::spawn(exe, &spec)?);
        }
        // They connect side by side; each says when all of its connections are open.
        for c in &mut children {
            tokio::time::timeout(CHILD_CONNECT_TIMEOUT, c.expect("connected"))
                .await
                .map_err(|_| BenchError::Timeout("a client process connecting".into()))??;
        }
        Clients::Children(children)
    };
    let connect_time = started.elapsed();
    // Let allocations from the handshakes settle before taking the "all open" figures.
    let settle = Duration::from_secs(2).min(window);
    tokio::time::sleep(settle).await;
    let bare = (side == Side::Bridge).then(|| servers.usage()).flatten();
    clients.subscribe().await?;
    tokio::time::sleep(settle).await;
    let open = servers.usage();
    let watch = Instant::now();
    tokio::time::sleep(window).await;
    let end = servers.usage();
    let window = watch.elapsed();
    let held = clients.close().await?;
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
        instances,
        connect_time,
        window,
        cost,
    })
}

/// The idle clients: in this process, or in client processes when there are too many.
enum Clients {
    Here(ClientSet),
    Children(Vec<Child>),
}

impl Clients {
    async fn subscribe(&mut self) -> Result<(), BenchError> {
        match self {
            Clients::Here(set) => set.subscribe_deferred().await,
            Clients::Children(children) => {
                for c in children.iter_mut() {
                    c.say("subscribe").await?;
                }
                for c in children.iter_mut() {
                    c.expect("subscribed").await?;
                }
                Ok(())
            }
        }
    }

    /// Closes every connection; returns how many were still open.
    async fn close(self) -> Result<usize, BenchError> {
        match self {
            Clients::Here(set) => {
                let held = set.len() - set.lost();
                set.close().await;
                Ok(held)
            }
            Clients::Children(children) => {
                let mut held = 0;
                for mut c in children {
                    c.say("close").await?;
                    let line = c.expect("held").await?;
                    held += line
                        .trim_start_matches("held ")
                        .parse::<usize>()
                        .map_err(|_| BenchError::Protocol(format!("client process: {line}")))?;
                    let _ = c.process.wait().await;
                }
                Ok(held)
            }
        }
    }
}

/// What a client process is to do: `count` idle clients of the bridge at `bridge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildSpec {
    pub bridge: SocketAddr,
    pub count: usize,
    pub sources: Sources,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A client process (this program with `--idle-child`), spoken to a line at a time.
struct Child {
    process: tokio::process::Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Child {
    fn spawn(exe: &Path, spec: &ChildSpec) -> Result<Child, BenchError> {
        let spec = serde_json::to_string(spec).map_err(|e| BenchError::Setup(e.to_string()))?;
        let mut process = tokio::process::Command::new(exe)
            .arg("--idle-child")
            .arg(spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(BenchError::io(format!("starting {}", exe.display())))?;
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            return Err(BenchError::Setup("client process without pipes".into()));
        };
        Ok(Child {
            process,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    async fn say(&mut self, word: &str) -> Result<(), BenchError> {
        self.stdin
            .write_all(format!("{word}\n").as_bytes())
            .await
            .map_err(BenchError::io("writing to a client process"))
    }

    /// The next line, which must start with `word`; a line starting with `error` fails.
    async fn expect(&mut self, word: &str) -> Result<String, BenchError> {
        let line = self
            .lines
            .next_line()
            .await
            .map_err(BenchError::io("reading from a client process"))?;
        match line {
            Some(l) if l.starts_with(word) => Ok(l),
            Some(l) => Err(BenchError::Protocol(format!(
                "client process said {l:?}, expected {word:?}"
            ))),
            None => Err(BenchError::Protocol(format!(
                "client process ended before {word:?}"
            ))),
        }
    }
}

/// The client process's side: opens the spec's connections (deferred subscriptions), then
/// answers on stdout as its parent speaks on stdin: `connected`, then on `subscribe`
/// `subscribed`, then on `close` (or the end of stdin) `held N`.
pub async fn child(spec: ChildSpec) -> Result<(), BenchError> {
    let user = tls::client_config(&spec.ca, Some((&spec.cert, &spec.key)))?;
    let targets = Targets {
        bridge: spec.bridge,
        peer: None,
        direct: spec.bridge,
        user,
    };
    let mut set =
        ClientSet::connect_with(&targets, Side::Bridge, spec.count, spec.sources, true).await?;
    say("connected").await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut subscribed = false;
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(BenchError::io("reading from the parent process"))?
    {
        match line.as_str() {
            "subscribe" if !subscribed => {
                set.subscribe_deferred().await?;
                subscribed = true;
                say("subscribed").await?;
            }
            "close" => break,
            other => {
                return Err(BenchError::Protocol(format!(
                    "unknown word from the parent: {other:?}"
                )))
            }
        }
    }
    let held = set.len() - set.lost();
    set.close().await;
    say(&format!("held {held}")).await
}

/// One line to the parent process.
async fn say(line: &str) -> Result<(), BenchError> {
    let mut out = tokio::io::stdout();
    out.write_all(format!("{line}\n").as_bytes())
        .await
        .map_err(BenchError::io("writing to the parent process"))?;
    out.flush()
        .await
        .map_err(BenchError::io("writing to the parent process"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_differ_by_at_most_one_and_add_up() {
        assert_eq!(shares(50_000, 3), [16_667, 16_667, 16_666]);
        assert_eq!(shares(20, 1), [20]);
        assert_eq!(shares(2, 3), [1, 1, 0]);
    }

    #[test]
    fn client_processes_take_separate_source_addresses() {
        assert_eq!(Sources::for_connections(14_000, 0).of(5), None);
        let a = Sources::for_connections(16_667, 0);
        let b = Sources::for_connections(16_667, a.count);
        let of = |s: Sources, i| s.of(i).map(|ip| ip.to_string());
        assert_eq!(
            (of(a, 0), of(a, 1)),
            (Some("127.0.0.2".into()), Some("127.0.0.3".into()))
        );
        assert_eq!(
            (of(b, 0), of(b, 1)),
            (Some("127.0.0.4".into()), Some("127.0.0.5".into()))
        );
    }
}
