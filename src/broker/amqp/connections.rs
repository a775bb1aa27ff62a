//! The pooled AMQP connections and the broker nodes they go to: one deadpool
//! manager opens plain (`amqp://`) and TLS (`amqps://`) connections alike,
//! each from the recipe of one node — its URL, a CA file, a client
//! certificate, a TLS server name other than the URL's host. (deadpool-lapin's
//! manager takes only a URL: none of the TLS material, so it could serve plain
//! URLs alone, and one URL only.)
//!
//! **Several nodes.** `--broker` may list the nodes of one RabbitMQ cluster
//! ([`Nodes`]). A new connection goes to the node that answers and holds the
//! fewest of the pool's connections, round-robin between equals from a random
//! start (so that replicas started together spread too). A node that refuses a
//! connection, or whose connection is lost, is *left*: no new connection goes
//! there while another node serves, and the supervisor tries it again in the
//! background with its own backoff ([`Nodes::check_due`]); once it answers it
//! takes new connections again, and [`Connections::rebalance`] moves one
//! connection at a time to it from the node that holds the most. Only when no
//! node is known to serve does a new connection try every node, the one left
//! longest ago first. [`Connections::fill`] keeps the pool at its size, so the
//! connections (and the channels opened on them in turn) are spread at once.
//!
//! Reconnecting is the pool's: a connection checked out that is no longer
//! connected fails the recycle check and a fresh one is opened; lapin's
//! auto-recovery stays off (the two fight each other).
//!
//! Broker credentials may come from files (a Kubernetes Secret mount): they are
//! read at each new connection, so a rotated password is picked up without a
//! restart, and never appear in the URL that is printed.
//!
//! Must not: open channels (`channels` does) or decide connectivity (the
//! supervisor does, from what the pool hands out).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics as PoolMetrics, RecycleError, RecycleResult};
use futures_util::StreamExt;
use lapin::auth::AuthProvider;
use lapin::tcp::{AMQPUriTcpExt, OwnedIdentity, OwnedTLSConfig, TLSConfig};
use lapin::types::{LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use tokio::sync::Notify;

use super::errors::from_pool;
use crate::broker::{Backoff, BrokerError, BrokerErrorKind};
use crate::config::{BrokerNodes, BrokerTls, SecretUrl};
use crate::telemetry::Metrics;

/// How long a caller waits for a pooled connection, or for one to open.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// The settings every pool of ours shares (connections and operation
/// channels): `size` objects at most, bounded waits, tokio's timers.
pub(crate) fn pool_settings<M: managed::Manager>(
    builder: managed::PoolBuilder<M>,
    size: usize,
) -> managed::PoolBuilder<M> {
    builder
        .max_size(size.max(1))
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .recycle_timeout(Some(Duration::from_secs(2)))
        .runtime(deadpool::Runtime::Tokio1)
}

/// SASL PLAIN with the username and/or password read from files at each
/// connection (what is not in a file comes from the URL).
#[derive(Clone)]
pub(crate) struct FileCredentials {
    username_file: Option<PathBuf>,
    password_file: Option<PathBuf>,
    url_username: String,
    url_password: String,
}

impl FileCredentials {
    fn read(path: &Option<PathBuf>, fallback: &str) -> Result<String, String> {
        match path {
            Some(p) => std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| format!("cannot read {}: {e}", p.display())),
            None => Ok(fallback.to_owned()),
        }
    }
}

impl AuthProvider for FileCredentials {
    fn mechanism(&self) -> ShortString {
        "PLAIN".into()
    }

    fn auth_starter(&self) -> Result<LongString, String> {
        let user = Self::read(&self.username_file, &self.url_username)?;
        let password = Self::read(&self.password_file, &self.url_password)?;
        Ok(format!("\0{user}\0{password}").into())
    }
}

/// The largest AMQP frame asked for when the URL does not say (`?frame_max=`).
/// lapin gives each connection a send and a receive buffer of 32 frames, filled
/// with zeros, so at RabbitMQ's default (128 KiB) a connection holds 8 MiB of
/// resident memory before it carries anything; at 32 KiB, 2 MiB. A body larger
/// than a frame is sent as several, as AMQP does for any body.
pub(crate) const DEFAULT_FRAME_MAX: u32 = 32 * 1024;

/// `url` with `frame_max=DEFAULT_FRAME_MAX` added to its query, unless it names one.
pub(crate) fn with_default_frame_max(url: &str) -> String {
    // `BrokerUrl::parse` has checked it is a URL. One with a fragment is left
    // alone too: nothing could be appended after it.
    let Ok(parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    if parsed.fragment().is_some() || parsed.query_pairs().any(|(k, _)| k == "frame_max") {
        return url.to_owned();
    }
    let sep = match parsed.query() {
        None => "?",
        Some("") => "",
        Some(_) => "&",
    };
    format!("{url}{sep}frame_max={DEFAULT_FRAME_MAX}")
}

/// How to open a connection to one broker node: the URL (with the default
/// `frame_max`), the credential files, and the TLS material for `amqps://`
/// (the system's roots unless a CA file is given, a client certificate, a
/// server name other than the URL's host). Complete in itself, so that each
/// node of a cluster has its own behind one manager.
struct ConnectionRecipe {
    url: String,
    credentials: Option<FileCredentials>,
    tls: OwnedTLSConfig,
    server_name: Option<String>,
}

impl ConnectionRecipe {
    /// Reads the TLS files once (a missing one is a configuration error); the
    /// credential files are read at each connection.
    fn new(url: &SecretUrl, tls: &BrokerTls) -> Result<Self, BrokerError> {
        let credentials = (tls.username_file.is_some() || tls.password_file.is_some()).then(|| {
            let parsed = url::Url::parse(url.expose()).ok();
            FileCredentials {
                username_file: tls.username_file.clone(),
                password_file: tls.password_file.clone(),
                url_username: parsed
                    .as_ref()
                    .map(|u| u.username().to_owned())
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| "guest".into()),
                url_password: parsed
                    .as_ref()
                    .and_then(|u| u.password().map(str::to_owned))
                    .unwrap_or_default(),
            }
        });
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                BrokerError::new(
                    BrokerErrorKind::InvalidInput,
                    format!("cannot read {}: {e}", path.display()),
                )
            })
        };
        let cert_chain = match &tls.ca_file {
            Some(p) => Some(String::from_utf8_lossy(&read(p)?).into_owned()),
            None => None,
        };
        let identity = match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read(cert)?,
                key: read(key)?,
            }),
            _ => None,
        };
        Ok(ConnectionRecipe {
            url: with_default_frame_max(url.expose()),
            credentials,
            tls: OwnedTLSConfig {
                identity,
                cert_chain,
            },
            server_name: tls.server_name.clone(),
        })
    }

    /// lapin's auto-recovery stays off (the default): the pool's recycle check
    /// is the one reconnection strategy. `name` is what `rabbitmqctl` shows.
    fn properties(&self, name: &str) -> lapin::ConnectionProperties {
        let props = lapin::ConnectionProperties::default().with_connection_name(name.into());
        match &self.credentials {
            Some(c) => props.with_auth_provider(c.clone()),
            None => props,
        }
    }

    /// Opens a connection (TLS for `amqps://`, with this recipe's material).
    async fn connect(&self, name: &str) -> Result<lapin::Connection, lapin::Error> {
        let Some(server_name) = self.server_name.clone() else {
            return lapin::Connection::connect_with_config(
                &self.url,
                self.properties(name),
                self.tls.clone(),
                async_rs::Runtime::tokio_current(),
            )
            .await;
        };
        // lapin takes the TLS name from the URL's host; to send another one, the
        // TCP connection is made to the URL's host and TLS started with the name.
        let uri: AMQPUri = self
            .url
            .parse()
            .map_err(|e: String| lapin::Error::from(std::io::Error::other(e)))?;
        let tls = self.tls.clone();
        lapin::Connection::connector(
            uri,
            async_rs::Runtime::tokio_current(),
            async move |uri: AMQPUri, runtime| {
                let mut plain = uri.clone();
                plain.scheme = AMQPScheme::AMQP;
                let stream = plain
                    .connect_with_config_async(TLSConfig::default(), &runtime)
                    .await?;
                Ok(stream.into_tls(&server_name, tls.as_ref()).await?)
            },
            self.properties(name),
        )
        .await
    }
}

/// How long one attempt to connect to one node may take: a node that does
/// not answer (a host gone, packets dropped) costs the attempt this long before
/// the next node is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// First and longest delay before a node that was left is tried again.
const NODE_RETRY_MIN: Duration = Duration::from_millis(500);
const NODE_RETRY_MAX: Duration = Duration::from_secs(10);

/// What is known of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    /// Not connected to yet: new connections may go there.
    Untried,
    /// The last connection made to it succeeded and none has been lost since.
    Up,
    /// Left: a connection to it failed or was lost; tried again at `retry_at`.
    Down,
}

struct Health {
    state: NodeState,
    retry_at: Instant,
    backoff: Backoff,
}

/// One node of the broker: how to connect to it, and what is known of it.
struct Node {
    recipe: ConnectionRecipe,
    /// `host:port`, for logs (no credentials).
    address: String,
    health: Mutex<Health>,
    /// A background check is under way ([`Nodes::check_due`]).
    checking: AtomicBool,
}

/// The broker's nodes, as `--broker` lists them (a single URL is one node),
/// shared by every pool of one broker, so that a node one pool found gone is
/// left by all of them.
pub(crate) struct Nodes {
    nodes: Vec<Node>,
    metrics: Arc<Metrics>,
    /// Woken when a connection is lost, so that the supervisor acts at once.
    lost: Notify,
}

impl Nodes {
    /// Reads each node's TLS files once (a missing one is a configuration
    /// error); the credential files are read at each connection.
    pub(crate) fn new(
        urls: &BrokerNodes,
        tls: &BrokerTls,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, BrokerError> {
        let nodes = urls
            .urls()
            .iter()
            .map(|url| {
                let address = url::Url::parse(url.expose())
                    .ok()
                    .and_then(|u| {
                        let host = u.host_str()?.to_owned();
                        let port = u.port().unwrap_or(match u.scheme() {
                            "amqps" => 5671,
                            _ => 5672,
                        });
                        Some(format!("{host}:{port}"))
                    })
                    .unwrap_or_else(|| "?".into());
                Ok(Node {
                    recipe: ConnectionRecipe::new(url, tls)?,
                    address,
                    health: Mutex::new(Health {
                        state: NodeState::Untried,
                        retry_at: Instant::now(),
                        backoff: Backoff::new(NODE_RETRY_MIN, NODE_RETRY_MAX).with_jitter(),
                    }),
                    checking: AtomicBool::new(false),
                })
            })
            .collect::<Result<Vec<_>, BrokerError>>()?;
        for node in 0..nodes.len() {
            metrics.set_broker_node_up(node, false);
        }
        Ok(Arc::new(Nodes {
            nodes,
            metrics,
            lost: Notify::new(),
        }))
    }

    /// How many nodes were given.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    fn health(&self, node: usize) -> MutexGuard<'_, Health> {
        self.nodes[node]
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self, node: usize) -> NodeState {
        self.health(node).state
    }

    /// New connections may go to the node (it is not left).
    fn usable(&self, node: usize) -> bool {
        self.state(node) != NodeState::Down
    }

    /// Nodes whose last connection succeeded.
    pub(crate) fn up(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&n| self.state(n) == NodeState::Up)
            .collect()
    }

    /// Waits until a connection is lost (or was since the last wait).
    pub(crate) async fn connection_lost(&self) {
        self.lost.notified().await;
    }

    /// One attempt to connect to `node`, bounded; records what it found.
    async fn connect(&self, node: usize, name: &str) -> Result<lapin::Connection, lapin::Error> {
        let attempt =
            tokio::time::timeout(CONNECT_TIMEOUT, self.nodes[node].recipe.connect(name)).await;
        match attempt {
            Ok(Ok(conn)) => {
                self.answered(node);
                Ok(conn)
            }
            Ok(Err(e)) => {
                self.refused(node, &e.to_string());
                Err(e)
            }
            Err(_) => {
                let why = format!("no answer within {CONNECT_TIMEOUT:?}");
                self.refused(node, &why);
                Err(lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    why,
                )))
            }
        }
    }

    /// A connection to the node was made.
    fn answered(&self, node: usize) {
        let was = {
            let mut h = self.health(node);
            h.backoff.reset();
            std::mem::replace(&mut h.state, NodeState::Up)
        };
        if was == NodeState::Down {
            tracing::info!(
                node,
                address = %self.nodes[node].address,
                "broker node answers again; new connections may use it"
            );
        }
        self.metrics.set_broker_node_up(node, true);
    }

    /// A connection to the node could not be made: it is left, and tried
    /// again after its next backoff step.
    fn refused(&self, node: usize, why: &str) {
        let was = {
            let mut h = self.health(node);
            h.retry_at = Instant::now() + h.backoff.next_delay();
            std::mem::replace(&mut h.state, NodeState::Down)
        };
        if was != NodeState::Down {
            tracing::warn!(
                node,
                address = %self.nodes[node].address,
                error = why,
                "cannot connect to a broker node; leaving it and retrying it with backoff"
            );
        }
        self.metrics.set_broker_node_up(node, false);
    }

    /// A connection to the node was lost: the node is left until a check
    /// finds it answering again (a first check after [`NODE_RETRY_MIN`]).
    fn lost(&self, node: usize) {
        let was = {
            let mut h = self.health(node);
            if h.state == NodeState::Down {
                NodeState::Down
            } else {
                h.backoff.reset();
                h.retry_at = Instant::now() + h.backoff.next_delay();
                std::mem::replace(&mut h.state, NodeState::Down)
            }
        };
        if was != NodeState::Down {
            tracing::warn!(
                node,
                address = %self.nodes[node].address,
                "lost a connection to a broker node; leaving it and retrying it with backoff"
            );
            self.metrics.set_broker_node_up(node, false);
        }
        self.lost.notify_one();
    }

    /// Nodes to check now: left ones whose retry is due, and ones never tried
    /// (more nodes than connections).
    fn due(&self) -> Vec<usize> {
        let now = Instant::now();
        (0..self.len())
            .filter(|&n| {
                let h = self.health(n);
                match h.state {
                    NodeState::Untried => true,
                    NodeState::Down => h.retry_at <= now,
                    NodeState::Up => false,
                }
            })
            .collect()
    }

    /// Checks, in the background, each node that is due: a connection made
    /// (and closed at once) marks it up, a failure schedules the next check.
    pub(crate) fn check_due(self: &Arc<Self>, name: &str) {
        for node in self.due() {
            if self.nodes[node].checking.swap(true, Ordering::AcqRel) {
                continue;
            }
            let nodes = self.clone();
            let name = format!("{name} node check");
            tokio::spawn(async move {
                if let Ok(conn) = nodes.connect(node, &name).await {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        conn.close(200, "node check".into()),
                    )
                    .await;
                }
                nodes.nodes[node].checking.store(false, Ordering::Release);
            });
        }
    }

    /// Wakes the supervisor when the connection fails (lapin also reports
    /// channel errors, such as a probe's 404, as events: those leave the
    /// connection up). A connection closed on purpose (`on_purpose` set
    /// first: taken out of the pool, moved to another node) is no node loss.
    /// Ends with the connection's last handle.
    fn watch(self: &Arc<Self>, conn: &lapin::Connection, node: usize, on_purpose: Arc<AtomicBool>) {
        let mut events = conn.events_listener();
        let status = conn.status().clone();
        let nodes = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if on_purpose.load(Ordering::Acquire) {
                    return;
                }
                if matches!(event, lapin::Event::Error(_)) && !status.connected() {
                    if let Some(nodes) = nodes.upgrade() {
                        nodes.lost(node);
                    }
                    return;
                }
            }
        });
    }
}

/// A pooled connection and the node it goes to.
pub(crate) struct NodeConnection {
    conn: lapin::Connection,
    node: usize,
    /// Set before the gateway closes the connection itself.
    on_purpose: Arc<AtomicBool>,
    _counted: Counted,
}

/// Counts a connection in its pool's per-node tally while it lives.
struct Counted {
    open: Arc<[AtomicUsize]>,
    node: usize,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open[self.node].fetch_sub(1, Ordering::AcqRel);
    }
}

/// The one deadpool manager of AMQP connections, plain and TLS alike: it
/// opens each on the node that should take it, and keeps a pooled one only
/// while it is connected.
pub(crate) struct ConnectionManager {
    nodes: Arc<Nodes>,
    /// What `rabbitmqctl list_connections` shows.
    name: String,
    /// This pool's connections per node.
    open: Arc<[AtomicUsize]>,
    /// Where the round-robin between equally used nodes starts next.
    turn: AtomicUsize,
}

impl ConnectionManager {
    /// The nodes to try, in order: those not left, fewest of this pool's
    /// connections first, round-robin between equals; when every node is
    /// left, all of them, the one whose retry is nearest first.
    fn order(&self) -> Vec<usize> {
        let n = self.nodes.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut usable: Vec<usize> = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&node| self.nodes.usable(node))
            .collect();
        if usable.is_empty() {
            let mut all: Vec<usize> = (0..n).collect();
            all.sort_by_key(|&node| self.nodes.health(node).retry_at);
            return all;
        }
        // Stable: equals keep the round-robin order.
        usable.sort_by_key(|&node| self.open[node].load(Ordering::Acquire));
        usable
    }
}

impl managed::Manager for ConnectionManager {
    type Type = NodeConnection;
    type Error = lapin::Error;

    async fn create(&self) -> Result<NodeConnection, lapin::Error> {
        let mut last = None;
        for node in self.order() {
            match self.nodes.connect(node, &self.name).await {
                Ok(conn) => {
                    let on_purpose = Arc::new(AtomicBool::new(false));
                    self.nodes.watch(&conn, node, on_purpose.clone());
                    self.open[node].fetch_add(1, Ordering::AcqRel);
                    return Ok(NodeConnection {
                        conn,
                        node,
                        on_purpose,
                        _counted: Counted {
                            open: self.open.clone(),
                            node,
                        },
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| lapin::Error::from(std::io::Error::other("no broker node"))))
    }

    async fn recycle(
        &self,
        conn: &mut NodeConnection,
        _: &PoolMetrics,
    ) -> RecycleResult<lapin::Error> {
        if conn.conn.status().connected() {
            Ok(())
        } else {
            self.nodes.lost(conn.node);
            Err(RecycleError::message("connection lost"))
        }
    }
}

/// A pool of AMQP connections spread over the broker's nodes.
#[derive(Clone)]
pub(crate) struct Connections(managed::Pool<ConnectionManager>);

/// A connection checked out of [`Connections`].
pub(crate) struct Connection(managed::Object<ConnectionManager>);

impl std::ops::Deref for Connection {
    type Target = lapin::Connection;
    fn deref(&self) -> &lapin::Connection {
        &self.0.conn
    }
}

impl Connection {
    /// Takes the connection out of its pool (to close it for good: its
    /// closing is not taken for the loss of its node).
    pub(crate) fn detach(self) -> lapin::Connection {
        let NodeConnection {
            conn, on_purpose, ..
        } = managed::Object::take(self.0);
        on_purpose.store(true, Ordering::Release);
        conn
    }
}

impl Connections {
    /// A pool of `size` connections to `nodes`, named `name` in `rabbitmqctl`.
    pub(crate) fn new(nodes: &Arc<Nodes>, name: String, size: usize) -> Result<Self, BrokerError> {
        let manager = ConnectionManager {
            nodes: nodes.clone(),
            name,
            open: (0..nodes.len()).map(|_| AtomicUsize::new(0)).collect(),
            // A random start, so that replicas started together do not all
            // open their first connection on the first node.
            turn: AtomicUsize::new(rand::random::<u32>() as usize),
        };
        // One create may try every node, each for up to CONNECT_TIMEOUT.
        let create = CONNECT_TIMEOUT * u32::try_from(nodes.len()).unwrap_or(u32::MAX);
        pool_settings(managed::Pool::builder(manager), size)
            .create_timeout(Some(create.max(POOL_WAIT)))
            .build()
            .map(Connections)
            .map_err(|e| BrokerError::new(BrokerErrorKind::Internal, e.to_string()))
    }

    /// A connected connection (a new one when the pooled ones are gone).
    pub(crate) async fn get(&self) -> Result<Connection, BrokerError> {
        self.0
            .get()
            .await
            .map(Connection)
            .map_err(|e| from_pool(e, "connection"))
    }

    /// The most connections the pool holds.
    pub(crate) fn max_size(&self) -> usize {
        self.0.status().max_size
    }

    /// The nodes these connections go to.
    pub(crate) fn nodes(&self) -> &Arc<Nodes> {
        &self.0.manager().nodes
    }

    /// This pool's connections per node (index in `--broker`).
    pub(crate) fn per_node(&self) -> Vec<usize> {
        self.0
            .manager()
            .open
            .iter()
            .map(|n| n.load(Ordering::Acquire))
            .collect()
    }

    /// Brings the pool up to its size (opening what is missing on the nodes
    /// that should take it, dropping lost ones) and returns how many of the
    /// connections it saw are connected; an error when none is. It takes only
    /// what is free at once — never waiting for a connection another task
    /// holds, which would hold up that task's next checkout in turn — and
    /// waits for one only when all are taken.
    pub(crate) async fn fill(&self) -> Result<usize, BrokerError> {
        let size = self.0.status().max_size;
        let at_once = managed::Timeouts {
            wait: Some(Duration::ZERO),
            ..self.0.timeouts()
        };
        let mut held = Vec::with_capacity(size);
        let mut failure = None;
        while held.len() < size {
            match self.0.timeout_get(&at_once).await {
                Ok(conn) => held.push(Connection(conn)),
                // Every other connection is checked out right now.
                Err(managed::PoolError::Timeout(managed::TimeoutType::Wait)) => break,
                Err(e) => {
                    failure = Some(from_pool(e, "connection"));
                    break;
                }
            }
        }
        if held.is_empty() && failure.is_none() {
            match self.get().await {
                Ok(conn) => held.push(conn),
                Err(e) => failure = Some(e),
            }
        }
        let live = held.iter().filter(|c| c.status().connected()).count();
        drop(held);
        match (live, failure) {
            (0, Some(e)) => Err(e),
            (0, None) => Err(BrokerError::new(
                BrokerErrorKind::Unavailable,
                "no connection is connected",
            )),
            (live, _) => Ok(live),
        }
    }

    /// When a node that answers holds at least two connections fewer than
    /// another, closes one idle connection of the busiest node: the next
    /// [`fill`](Self::fill) opens its replacement on the least used node. One
    /// at a time: each move ends the consumers and channels on the closed
    /// connection (their polls carry on, on another channel). Returns the
    /// node a connection was taken from.
    pub(crate) fn rebalance(&self) -> Option<usize> {
        let up = self.nodes().up();
        if up.len() < 2 {
            return None;
        }
        let open = self.per_node();
        let least = up.iter().map(|&n| open[n]).min()?;
        let (busiest, most) = open.iter().copied().enumerate().max_by_key(|&(_, c)| c)?;
        if most < least + 2 {
            return None;
        }
        let mut taken = false;
        let removed = self
            .0
            .retain(|conn, _| {
                if !taken && conn.node == busiest {
                    taken = true;
                    return false;
                }
                true
            })
            .removed;
        if removed.is_empty() {
            return None;
        }
        for NodeConnection {
            conn,
            node,
            on_purpose,
            _counted,
        } in removed
        {
            on_purpose.store(true, Ordering::Release);
            drop(_counted); // counted off now: the replacement goes elsewhere
            tracing::info!(
                node,
                "moving a broker connection to a node that holds fewer"
            );
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    conn.close(200, "rebalancing".into()),
                )
                .await;
            });
        }
        Some(busiest)
    }

    /// Connections idle in the pool now.
    pub(crate) fn available(&self) -> usize {
        self.0.status().available
    }

    pub(crate) fn close(&self) {
        self.0.close();
    }

    /// Closes the idle connections with an AMQP `connection.close` (each
    /// waiting at most `step` for the broker's reply), then the pool.
    pub(crate) async fn close_idle(&self, step: Duration) {
        for _ in 0..self.available() {
            match tokio::time::timeout(Duration::from_secs(1), self.get()).await {
                Ok(Ok(conn)) => {
                    let conn = conn.detach();
                    if conn.status().connected() {
                        let _ =
                            tokio::time::timeout(step, conn.close(200, "shutdown".into())).await;
                    }
                }
                _ => break,
            }
        }
        self.close();
    }
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("status", &self.0.status())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::{
        ConnectionManager, Connections, DEFAULT_FRAME_MAX, NodeState, Nodes, with_default_frame_max,
    };
    use crate::config::{BrokerTls, BrokerUrl};
    use crate::telemetry::Metrics;

    fn nodes(urls: &str) -> Arc<Nodes> {
        let Ok(BrokerUrl::Amqp(urls)) = BrokerUrl::parse(urls) else {
            panic!("{urls} is not a list of AMQP URLs");
        };
        Nodes::new(&urls, &BrokerTls::default(), Arc::new(Metrics::new())).expect("nodes")
    }

    fn manager(nodes: &Arc<Nodes>) -> ConnectionManager {
        ConnectionManager {
            nodes: nodes.clone(),
            name: "test".into(),
            open: (0..nodes.len())
                .map(|_| std::sync::atomic::AtomicUsize::new(0))
                .collect(),
            turn: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    const THREE: &str = "amqp://a:5672/%2f,amqp://b:5672/%2f,amqp://c:5672/%2f";

    #[test]
    fn new_connections_go_round_robin_to_the_least_used_node() {
        let nodes = nodes(THREE);
        let m = manager(&nodes);
        assert_eq!(m.order(), [0, 1, 2]);
        assert_eq!(m.order(), [1, 2, 0], "equals take turns");
        m.open[1].store(1, Ordering::Release);
        m.open[2].store(2, Ordering::Release);
        assert_eq!(m.order(), [0, 1, 2], "fewest connections first");
        m.open[0].store(1, Ordering::Release);
        assert_eq!(m.order(), [0, 1, 2]);
        assert_eq!(m.order(), [1, 0, 2]);
    }

    #[test]
    fn a_node_that_went_away_is_left_until_it_answers() {
        let nodes = nodes(THREE);
        let m = manager(&nodes);
        nodes.lost(1);
        assert_eq!(nodes.state(1), NodeState::Down);
        assert_eq!(m.order(), [0, 2]);
        nodes.refused(2, "refused");
        assert_eq!(m.order(), [0]);
        nodes.answered(1);
        m.open[0].store(2, Ordering::Release);
        assert_eq!(
            m.order(),
            [1, 0],
            "back, and holding none of the connections"
        );
        assert_eq!(nodes.up(), [1]);
    }

    #[test]
    fn with_every_node_left_each_is_tried_the_nearest_retry_first() {
        let nodes = nodes(THREE);
        let m = manager(&nodes);
        for node in [2, 0, 1] {
            nodes.refused(node, "refused");
        }
        nodes.health(0).retry_at = Instant::now() + Duration::from_secs(60);
        nodes.health(1).retry_at = Instant::now() + Duration::from_secs(1);
        nodes.health(2).retry_at = Instant::now() + Duration::from_secs(30);
        assert_eq!(m.order(), [1, 2, 0]);
        assert!(nodes.due().is_empty(), "no retry is due yet");
        nodes.health(2).retry_at = Instant::now();
        assert_eq!(nodes.due(), [2]);
    }

    #[test]
    fn each_refusal_waits_longer_and_an_answer_resets_the_wait() {
        let nodes = nodes(THREE);
        let delay = |nodes: &Nodes| nodes.health(0).retry_at - Instant::now();
        nodes.refused(0, "refused");
        let first = delay(&nodes);
        for _ in 0..5 {
            nodes.refused(0, "refused");
        }
        let later = delay(&nodes);
        assert!(later > first * 4, "{first:?} then {later:?}");
        assert!(later <= super::NODE_RETRY_MAX * 3 / 2, "capped: {later:?}");
        nodes.answered(0);
        nodes.lost(0);
        assert!(
            delay(&nodes) <= super::NODE_RETRY_MIN * 3 / 2,
            "reset by the answer"
        );
    }

    /// Against the real RabbitMQ: a node that refuses is left, the pool's
    /// connections go to the one that answers, and the node gauge says so.
    #[tokio::test]
    async fn a_pool_connects_to_the_node_that_answers() {
        let live = std::env::var("LONGPOLL_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        // A port nothing listens on: bound, then released.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = dead.local_addr().expect("its address").port();
        drop(dead);
        let vhost = url::Url::parse(&live).expect("a URL").path().to_owned();
        let nodes = nodes(&format!(
            "amqp://guest:guest@127.0.0.1:{port}{vhost},{live}"
        ));
        let pool = Connections::new(&nodes, "connections test".into(), 2).expect("a pool");
        assert_eq!(pool.fill().await.expect("connected"), 2);
        assert_eq!(pool.per_node(), [0, 2]);
        assert_eq!(nodes.up(), [1]);
        assert_eq!(nodes.state(0), NodeState::Down);
        let conn = pool.get().await.expect("a connection");
        assert_eq!(conn.0.node, 1);
        // The connection held is not waited for: filling takes the free one.
        let filled = tokio::time::timeout(Duration::from_millis(500), pool.fill())
            .await
            .expect("filling does not wait for a connection in use");
        assert_eq!(filled.expect("connected"), 1);
        let _ = conn.detach().close(200, "test done".into()).await;
        assert_eq!(
            pool.per_node(),
            [0, 1],
            "a detached connection is counted off"
        );
        pool.close_idle(Duration::from_secs(1)).await;
    }

    /// Against the real RabbitMQ, on a plain URL: the password file is read
    /// at each new connection, so a rotated password is used without a restart.
    #[tokio::test]
    async fn the_password_file_is_read_at_each_new_connection() {
        let url = std::env::var("LONGPOLL_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let Ok(BrokerUrl::Amqp(urls)) = BrokerUrl::parse(&url) else {
            panic!("LONGPOLL_TEST_AMQP_URL is not an AMQP URL");
        };
        let password = url::Url::parse(urls.urls()[0].expose())
            .expect("a URL")
            .password()
            .expect("the test URL has a password")
            .to_owned();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("password");
        std::fs::write(&file, "not-the-password\n").expect("written");
        let tls = BrokerTls {
            password_file: Some(file.clone()),
            ..BrokerTls::default()
        };
        let nodes = Nodes::new(&urls, &tls, Arc::new(Metrics::new())).expect("nodes");
        let pool = Connections::new(&nodes, "connections test".into(), 1).expect("a pool");
        assert!(
            pool.get().await.is_err(),
            "the broker took the file's wrong password"
        );
        std::fs::write(&file, format!("{password}\n")).expect("written");
        let conn = pool.get().await.expect("connected with the new password");
        assert!(conn.status().connected());
        let _ = conn.detach().close(200, "test done".into()).await;
    }

    #[test]
    fn a_url_without_frame_max_asks_for_the_default() {
        let fm = DEFAULT_FRAME_MAX;
        assert_eq!(
            with_default_frame_max("amqp://u:p@h:5672/%2f"),
            format!("amqp://u:p@h:5672/%2f?frame_max={fm}")
        );
        assert_eq!(
            with_default_frame_max("amqps://h/vh?heartbeat=10"),
            format!("amqps://h/vh?heartbeat=10&frame_max={fm}")
        );
        assert_eq!(
            with_default_frame_max("amqp://h?"),
            format!("amqp://h?frame_max={fm}")
        );
        let parsed: lapin::uri::AMQPUri = with_default_frame_max("amqp://u:p@h:5672/%2f")
            .parse()
            .expect("still an AMQP URI");
        assert_eq!(parsed.query.frame_max, Some(fm));
        assert_eq!(parsed.vhost, "/");
    }

    #[test]
    fn a_url_that_names_a_frame_max_keeps_it() {
        for url in [
            "amqp://h:5672/%2f?frame_max=131072",
            "amqp://h/?heartbeat=5&frame_max=4096",
        ] {
            assert_eq!(with_default_frame_max(url), url);
        }
    }
}
