//! Scenario (c): many idle mutual-TLS WebSocket connections, each subscribed to every (quiet)
//! device. What it costs a server: resident memory per connection, and CPU while nothing
//! happens (the bridge's keepalive pings included, so the window spans a ping interval).
//!
//! A process can hold only as many connections as it may open files. When the bridge's count
//! is more than one process may hold here, the scenario runs the scale-out model
//! (docs/operations.md, "Several instances"): several bridge instances on the one broker, each
//! with its share of the clients, and the clients in as many processes of this program
//! ([`child`]); the figures are the instances' sums.

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
/// More bridge instances than this on one machine would measure the machine, not the bridge.
const MAX_INSTANCES: usize = 16;

/// How many bridge instances hold `n` connections when one process may hold `per_process`.
pub fn instances(n: usize, per_process: usize) -> Result<usize, BenchError> {
    let k = n.div_ceil(per_process.max(1)).max(1);
    if k > MAX_INSTANCES {
        return Err(BenchError::Setup(format!(
            "(c) {n} connections at {per_process} per process would take {k} bridge instances \
             (at most {MAX_INSTANCES}): allow this program more open files, or ask for fewer \
             connections (--idle-connections)"
        )));
    }
    Ok(k)
}

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
        sum(std::iter::once(own).chain(self.more.iter().map(Bridge::usage)))
    }
}

/// The sum of processes' usage; `None` if any is unknown.
fn sum(usages: impl IntoIterator<Item = Option<Usage>>) -> Option<Usage> {
    usages.into_iter().try_fold(
        Usage {
            cpu: Duration::ZERO,
            rss_bytes: 0,
        },
        |total, u| {
            let u = u?;
            Some(Usage {
                cpu: total.cpu + u.cpu,
                rss_bytes: total.rss_bytes + u.rss_bytes,
            })
        },
    )
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
        instances(n, per_process)?
    } else {
        1
    };
    // Stopped at the end, or when dropped on an error.
    let more = rig.more_bridges(instances - 1).await?;
    let servers = Servers {
        rig,
        side,
        more: &more,
    };
    let before = servers.usage();
    let started = Instant::now();
    let mut clients = if instances == 1 {
        let targets = Targets::of(rig);
        let sources = Sources::for_connections(n, 0);
        Clients::Here(ClientSet::connect_with(&targets, side, n, sources, true).await?)
    } else {
        let exe = child_exe.ok_or_else(|| {
            BenchError::Setup(format!(
                "(c) needs {instances} client processes for {n} connections, but no program to run them"
            ))
        })?;
        let bridges: Vec<SocketAddr> = std::iter::once(rig.bridge.addr)
            .chain(more.iter().map(|b| b.addr))
            .collect();
        Clients::children(exe, rig, n, &bridges).await?
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
    for mut b in more {
        b.stop().await;
    }
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
    /// One client process per bridge in `bridges`, each with its share of `n`; returns once
    /// every process has opened its connections.
    async fn children(
        exe: &Path,
        rig: &Rig,
        n: usize,
        bridges: &[SocketAddr],
    ) -> Result<Clients, BenchError> {
        let (cert, key, _) = rig.certs.paths.user(USER);
        let identity = Identity {
            ca: rig.certs.paths.ca_cert.clone(),
            cert,
            key,
        };
        let mut children = Vec::new();
        for (index, spec) in child_specs(n, bridges, &identity).iter().enumerate() {
            children.push(Child::spawn(exe, index, spec)?);
        }
        // They connect side by side; each says when all of its connections are open.
        for c in &mut children {
            let Ok(said) = tokio::time::timeout(CHILD_CONNECT_TIMEOUT, c.expect("connected")).await
            else {
                let what = format!("{} opening its connections", c.name());
                return Err(BenchError::Timeout(what));
            };
            said?;
        }
        Ok(Clients::Children(children))
    }

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
                        .map_err(|_| BenchError::Protocol(format!("{} said {line:?}", c.name())))?;
                    let _ = c.process.wait().await;
                }
                Ok(held)
            }
        }
    }
}

/// What a client process is to do: `count` idle clients of the bridge at `bridge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSpec {
    pub bridge: SocketAddr,
    pub count: usize,
    pub sources: Sources,
    #[serde(flatten)]
    pub identity: Identity,
}

/// The client certificate the idle clients present, and the CA they trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One client process per bridge, each with an equal share of `n` and source addresses of its
/// own.
fn child_specs(n: usize, bridges: &[SocketAddr], identity: &Identity) -> Vec<ChildSpec> {
    let mut first = 0;
    bridges
        .iter()
        .zip(shares(n, bridges.len()))
        .map(|(&bridge, count)| {
            let sources = Sources::for_connections(count, first);
            first += sources.count;
            ChildSpec {
                bridge,
                count,
                sources,
                identity: identity.clone(),
            }
        })
        .collect()
}

/// A client process (this program with `--idle-child`), spoken to a line at a time.
struct Child {
    index: usize,
    bridge: SocketAddr,
    process: tokio::process::Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Child {
    fn spawn(exe: &Path, index: usize, spec: &ChildSpec) -> Result<Child, BenchError> {
        let json = serde_json::to_string(spec).map_err(|e| BenchError::Setup(e.to_string()))?;
        let mut process = tokio::process::Command::new(exe)
            .arg("--idle-child")
            .arg(json)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(BenchError::io(format!("starting {}", exe.display())))?;
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            return Err(BenchError::Setup("client process without pipes".into()));
        };
        Ok(Child {
            index,
            bridge: spec.bridge,
            process,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// For messages: which one, and whose clients it holds.
    fn name(&self) -> String {
        format!("client process {} (bridge {})", self.index, self.bridge)
    }

    async fn say(&mut self, word: &str) -> Result<(), BenchError> {
        let context = format!("writing to {}", self.name());
        self.stdin
            .write_all(format!("{word}\n").as_bytes())
            .await
            .map_err(BenchError::io(context))
    }

    /// The next line, which must start with `word`. A process that ended instead is waited
    /// for, and its exit status told (its own error went to the shared stderr).
    async fn expect(&mut self, word: &str) -> Result<String, BenchError> {
        let context = format!("reading from {}", self.name());
        match self
            .lines
            .next_line()
            .await
            .map_err(BenchError::io(context))?
        {
            Some(l) if l.starts_with(word) => Ok(l),
            Some(l) => Err(BenchError::Protocol(format!(
                "{} said {l:?}, expected {word:?}",
                self.name()
            ))),
            None => {
                let status = self.process.wait().await.ok();
                Err(BenchError::Protocol(format!(
                    "{} ended ({}) before saying {word:?}; its error is above",
                    self.name(),
                    status.map_or("status unknown".into(), |s| s.to_string())
                )))
            }
        }
    }
}

/// The client process's side: opens the spec's connections (deferred subscriptions), then
/// answers on stdout as its parent speaks on stdin: `connected`, then on `subscribe`
/// `subscribed`, then on `close` (or the end of stdin) `held N`.
pub async fn child(spec: ChildSpec) -> Result<(), BenchError> {
    let id = &spec.identity;
    let user = tls::client_config(&id.ca, Some((&id.cert, &id.key)))?;
    let targets = Targets {
        bridge: spec.bridge,
        peer: None,
        direct: None,
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
            "subscribe" if subscribed => {
                return Err(BenchError::Protocol("told to subscribe twice".into()))
            }
            "subscribe" => {
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
    fn client_processes_each_take_one_bridge_and_source_addresses_of_their_own() {
        let bridges: Vec<SocketAddr> = (0..3)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
            .collect();
        let id = Identity {
            ca: "ca.pem".into(),
            cert: "u.pem".into(),
            key: "u.key".into(),
        };
        let specs = child_specs(50_000, &bridges, &id);
        assert_eq!(specs.iter().map(|c| c.bridge).collect::<Vec<_>>(), bridges);
        assert_eq!(specs.iter().map(|c| c.count).sum::<usize>(), 50_000);
        let mut seen = std::collections::HashSet::new();
        for c in &specs {
            let used: std::collections::HashSet<_> =
                (0..c.count).map(|i| c.sources.of(i)).collect();
            assert!(
                used.iter().all(Option::is_some),
                "{c:?}: explicit addresses"
            );
            assert!(used.len() * crate::clients::PER_SOURCE >= c.count, "{c:?}");
            assert!(
                used.iter().all(|ip| seen.insert(*ip)),
                "{c:?} shares an address"
            );
        }
        // One process's worth needs no explicit address.
        let one = child_specs(14_000, &bridges[..1], &id);
        assert_eq!(one[0].sources.of(7), None);
        // The spec crosses the process boundary as JSON.
        let json = serde_json::to_string(&specs[1]).unwrap();
        assert_eq!(serde_json::from_str::<ChildSpec>(&json).unwrap(), specs[1]);
    }

    #[test]
    fn instances_are_counted_and_capped() {
        assert_eq!(instances(50_000, 18_000).unwrap(), 3);
        assert_eq!(instances(18_000, 18_000).unwrap(), 1);
        assert_eq!(instances(0, 18_000).unwrap(), 1);
        assert!(
            instances(50_000, 1).is_err(),
            "50,000 processes is not a benchmark"
        );
    }

    #[test]
    fn usage_is_summed_over_processes_and_unknown_if_any_is() {
        let u = |ms: u64, kb: u64| {
            Some(Usage {
                cpu: Duration::from_millis(ms),
                rss_bytes: kb * 1000,
            })
        };
        let total = sum([u(10, 100), u(5, 50), u(1, 1)]).unwrap();
        assert_eq!(
            (total.cpu, total.rss_bytes),
            (Duration::from_millis(16), 151_000)
        );
        assert!(
            sum([u(10, 100), None]).is_none(),
            "an in-process server has no figures"
        );
    }
}
