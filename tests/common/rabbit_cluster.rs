//! A private three-node RabbitMQ cluster on this machine, for tests that kill, stop and
//! restart broker nodes: things the shared RabbitMQ on 127.0.0.1:5672 must never go through.
//!
//! ```ignore
//! let cluster = RabbitCluster::start().await;      // three nodes, clustered
//! let urls = cluster.amqp_urls();                  // amqp://guest:guest@127.0.0.1:<port>/%2f each
//! cluster.kill(1);                                 // SIGKILL node 2 by its own pid
//! cluster.wait_noticed_down(1).await;              // the others see it gone
//! cluster.start_node(1).await;                     // back, rejoined
//! cluster
//!     .rolling_restart_with(async |down| { /* traffic while node `down` is away */ })
//!     .await;                                      // each node in turn, as the operator does
//! ```
//!
//! Owns: its nodes' OS processes (started here, signalled by their own pid, never by name),
//! their configuration and data under one temporary directory, a block of ports, and an
//! Erlang cookie of its own. Must not touch: the system node (`rabbit@localhost`, ports 5672
//! and 25672, `/etc/rabbitmq`, `/var/lib/rabbitmq`). Its nodes read neither
//! `/etc/rabbitmq/rabbitmq-env.conf` nor `rabbitmq.conf` (their own files replace both), and
//! with their own cookie they could not even talk to the system node by mistake.
//!
//! **How the nodes run.** Debian's `/usr/sbin/rabbitmq-server` wrapper switches to the
//! `rabbitmq` user through `su`, which resets `HOME` (and so the cookie). The harness runs
//! `/usr/lib/rabbitmq/bin/rabbitmq-server` itself through `setpriv`: as `rabbitmq` when the
//! tests run as root (the data directories are chowned to it), as the current user otherwise
//! (nothing then needs root). `RABBITMQ_ALLOW_INPUT` plus `-noinput` make the script `exec`
//! the VM, so the child's pid is the node's own pid (`kill`, `stop`).
//!
//! **No node outlives its test.** Drop SIGKILLs every node and removes the data, also when
//! the test panics. Should the test process die without unwinding (nextest's SIGKILL after
//! its slow-timeout, an abort), `setpriv --pdeathsig KILL` kills each node with the thread
//! that spawned it: one thread per cluster, living as long as the cluster, does every spawn.
//! The next cluster to claim the same slot removes the data such a run left behind.
//!
//! **Concurrency.** nextest runs test binaries, and each test, as separate processes, and
//! other worktrees run the same harness. Each cluster claims a *slot* by locking
//! `$TMPDIR/longpoll-rabbit-cluster/slot-NN.lock` (`flock`: the kernel releases it when the
//! process dies, so a crash never leaves a slot taken). The slot gives the node names
//! (`lptNNn1@localhost`…) and a block of 100 ports below Linux's ephemeral range
//! (32768–60999), so no port-0 listener or outgoing connection of another test can hold one
//! of them: see [`SlotPorts`]. A slot whose ports are still bound anyway is skipped.
//!
//! **Forming the cluster.** Node 1 starts as a fresh cluster; nodes 2 and 3 start at the
//! same time with `classic_config` peer discovery naming node 1 only, and join it during
//! their boot, retrying every 500 ms (up to 4 minutes) until node 1 answers. Naming node 1
//! only means nodes 2 and 3 can never form a cluster of their own. Measured on this 2-core
//! machine under a load average of 10–19: all three booted and clustered in 13–19 s, against
//! ~35 s for three standalone nodes followed by `stop_app; join_cluster; start_app` on two
//! of them (a node's boot costs about 6 CPU-seconds, each `rabbitmqctl` run about one, and
//! 1–4 s of wall time on a loaded machine).
//! A node that comes back after a kill or a stop has its own database and rejoins by itself.
//!
//! Every wait is on a condition (a port that accepts, `cluster_status` through a running
//! node) and bounded; a failed wait panics with what it last saw, and a panicking test
//! prints the tail of each node's log.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The cluster's size.
pub const NODES: usize = 3;

/// Where Debian's package puts RabbitMQ's own scripts (the ones `/usr/sbin` wraps).
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// Slots are `FIRST_PORT + PORTS_PER_SLOT * slot`: 21000–24199, clear of the system node's
/// 5672/25672 and of the ephemeral range.
const FIRST_PORT: u16 = 21000;
const PORTS_PER_SLOT: u16 = 100;
const SLOTS: u16 = 32;

/// Bounds on the waits (generous: a node boots in ~6 CPU-seconds, and the machine is shared).
const BOOT_LIMIT: Duration = Duration::from_secs(180);
const NOTICE_LIMIT: Duration = Duration::from_secs(60);
const STOP_LIMIT: Duration = Duration::from_secs(90);
const CTL_LIMIT: Duration = Duration::from_secs(90);
const SLOT_LIMIT: Duration = Duration::from_secs(300);

/// The ports of one slot.
///
/// | offset | use |
/// |---|---|
/// | 1–3 | AMQP listener of node 1–3 (`listeners.tcp`) |
/// | 11–13 | Erlang distribution of node 1–3 (`RABBITMQ_DIST_PORT`) |
/// | 20–39 | `rabbitmqctl`'s own distribution port (`RABBITMQ_CTL_DIST_PORT_MIN/MAX`); the default range, 35672–35682, is shared by every CLI call on the machine |
/// | 40–99 | stream replication (`osiris` `port_range`; the default, 6000–6500, would be shared by every cluster) |
#[derive(Debug, Clone, Copy)]
struct SlotPorts {
    base: u16,
}

impl SlotPorts {
    fn of(slot: u16) -> Self {
        SlotPorts {
            base: FIRST_PORT + PORTS_PER_SLOT * slot,
        }
    }
    fn amqp(self, node: usize) -> u16 {
        self.base + 1 + node as u16
    }
    fn dist(self, node: usize) -> u16 {
        self.base + 11 + node as u16
    }
    fn ctl_range(self) -> (u16, u16) {
        (self.base + 20, self.base + 39)
    }
    fn stream_range(self) -> (u16, u16) {
        (self.base + 40, self.base + 99)
    }
    /// The ports a node listens on: all must be free to use the slot.
    fn listened(self) -> Vec<u16> {
        (0..NODES)
            .flat_map(|n| [self.amqp(n), self.dist(n)])
            .collect()
    }
}

/// A queue as `rabbitmqctl list_queues` reports it.
#[derive(Debug, Clone)]
pub struct QueueInfo {
    pub name: String,
    /// `classic`, `quorum` or `stream`.
    pub kind: String,
    /// The node of the queue's process (a classic queue's home, a stream's writer).
    pub pid_node: Option<usize>,
    /// The leader of a stream or quorum queue.
    pub leader: Option<usize>,
    /// A stream's or quorum queue's replicas.
    pub members: Vec<usize>,
    /// The replicas that are online.
    pub online: Vec<usize>,
    /// `running`, `down`, …
    pub state: String,
}

/// A client connection as `rabbitmqctl list_connections` reports it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The name the client gave (its `connection_name` property), or empty.
    pub name: String,
    /// The node the connection goes to (by the port it reached).
    pub node: Option<usize>,
}

/// `rabbitmqctl cluster_status`, seen through one node.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub disk_nodes: Vec<usize>,
    pub running: Vec<usize>,
    /// Nodes under maintenance (`rabbitmq-upgrade drain` not yet undone).
    pub under_maintenance: Vec<usize>,
    pub partitions: Value,
    pub alarms: Value,
}

/// How long each phase of one node's turn in a rolling restart took.
#[derive(Debug, Clone, Copy)]
pub struct RestartTimes {
    pub node: usize,
    /// `await_online_quorum_plus_one` and `drain`.
    pub prepare: Duration,
    /// SIGTERM until the process exited.
    pub stop: Duration,
    /// Start until it runs and the cluster counts it.
    pub start: Duration,
}

/// The user the nodes run as when the tests run as root.
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

struct Node {
    /// `lptNNn1@localhost`
    name: String,
    amqp_port: u16,
    dist_port: u16,
    dir: PathBuf,
    process: Mutex<Option<Child>>,
}

/// A private three-node RabbitMQ cluster; see the module documentation. Nodes are
/// numbered 0, 1, 2 in this API; their names and directories say n1, n2, n3.
pub struct RabbitCluster {
    ports: SlotPorts,
    home: PathBuf,
    env_file: PathBuf,
    run_as: Option<RunAs>,
    nodes: Vec<Node>,
    spawner: Spawner,
    /// Removed on drop, after the nodes are dead.
    dir: tempfile::TempDir,
    /// Released last: the slot is free once the data is gone.
    _slot_lock: File,
}

impl RabbitCluster {
    /// Starts three nodes and waits until they form one cluster with all three running.
    /// Panics (with the nodes' logs) when RabbitMQ is missing or the cluster does not form
    /// within its bound.
    pub async fn start() -> Self {
        let started = Instant::now();
        check_installed();
        let run_as = run_as();
        let (slot, slot_lock) = claim_slot().await;
        let ports = SlotPorts::of(slot);
        let root = slots_dir();
        remove_leftovers(&root, slot);
        let dir = tempfile::Builder::new()
            .prefix(&format!("lpt{slot:02}-"))
            .tempdir_in(&root)
            .expect("create the cluster's directory");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");

        let home = dir.path().join("home");
        fs::create_dir_all(&home).expect("create home");
        // The cookie: its own, so these nodes and the system node cannot connect.
        let cookie = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
        let cookie_file = home.join(".erlang.cookie");
        fs::write(&cookie_file, cookie).expect("write the cookie");
        fs::set_permissions(&cookie_file, fs::Permissions::from_mode(0o400)).expect("chmod");
        // Empty: keeps /etc/rabbitmq/rabbitmq-env.conf (NODENAME=rabbit@localhost) out.
        let env_file = dir.path().join("rabbitmq-env.conf");
        fs::write(&env_file, "").expect("write rabbitmq-env.conf");
        fs::write(dir.path().join("enabled_plugins"), "[].\n").expect("write enabled_plugins");

        let names: Vec<String> = (1..=NODES)
            .map(|n| format!("lpt{slot:02}n{n}@localhost"))
            .collect();
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let node_dir = dir.path().join(format!("n{}", i + 1));
            fs::create_dir_all(node_dir.join("mnesia")).expect("create mnesia dir");
            fs::create_dir_all(node_dir.join("log")).expect("create log dir");
            fs::write(
                node_dir.join("rabbitmq.conf"),
                node_conf(ports, i, &names[0]),
            )
            .expect("write rabbitmq.conf");
            let (min, max) = ports.stream_range();
            fs::write(
                node_dir.join("advanced.config"),
                format!("[{{osiris, [{{port_range, {{{min}, {max}}}}}]}}].\n"),
            )
            .expect("write advanced.config");
            nodes.push(Node {
                name: name.clone(),
                amqp_port: ports.amqp(i),
                dist_port: ports.dist(i),
                dir: node_dir,
                process: Mutex::new(None),
            });
        }
        if let Some(user) = &run_as {
            chown_tree(dir.path(), user.uid, user.gid);
        }

        let cluster = RabbitCluster {
            ports,
            home,
            env_file,
            run_as,
            nodes,
            spawner: Spawner::new(),
            dir,
            _slot_lock: slot_lock,
        };
        // Node 1 boots alone first: a node that joins it while it is still creating its
        // tables can wipe them under it (RabbitMQ 3.10 then fails node 1's boot with
        // `no_exists rabbit_durable_queue`, and every later boot with
        // `user_already_exists`). Nodes 2 and 3 join a node that is up, side by side.
        cluster.spawn_node(0).await;
        cluster.wait_accepting(0, BOOT_LIMIT).await;
        for i in 1..NODES {
            cluster.spawn_node(i).await;
        }
        for i in 1..NODES {
            cluster.wait_accepting(i, BOOT_LIMIT).await;
        }
        cluster.wait_clustered().await;
        eprintln!(
            "rabbit_cluster: slot {slot}, nodes {:?} up and clustered in {:.1} s",
            names,
            started.elapsed().as_secs_f64()
        );
        cluster
    }

    /// The node's Erlang name, `lptNNn1@localhost`.
    pub fn node_name(&self, node: usize) -> &str {
        &self.nodes[node].name
    }

    /// The node's index from its Erlang name (or from a pid such as `<lpt03n2@localhost.1.2.0>`).
    pub fn node_index(&self, name_or_pid: &str) -> Option<usize> {
        let name = name_or_pid.trim_start_matches('<');
        let name = name.split_once('.').map_or(name, |(n, _)| n);
        self.nodes.iter().position(|n| n.name == name)
    }

    pub fn amqp_addr(&self, node: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nodes[node].amqp_port))
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`: `guest` may log in because the
    /// connection comes from the loopback interface (RabbitMQ's `loopback_users`).
    pub fn amqp_url(&self, node: usize) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp_addr(node))
    }

    pub fn amqp_urls(&self) -> Vec<String> {
        (0..NODES).map(|n| self.amqp_url(n)).collect()
    }

    /// The node's OS pid while its process runs.
    pub fn os_pid(&self, node: usize) -> Option<u32> {
        let mut process = self.nodes[node].process.lock().unwrap();
        match process.as_mut() {
            Some(child) => match child.try_wait() {
                Ok(None) => Some(child.id()),
                _ => None,
            },
            None => None,
        }
    }

    /// The node's process runs and its AMQP listener accepts connections (RabbitMQ opens
    /// it at the end of its boot and closes it first when it stops or drains).
    pub async fn is_running(&self, node: usize) -> bool {
        self.os_pid(node).is_some()
            && tokio::net::TcpStream::connect(self.amqp_addr(node))
                .await
                .is_ok()
    }

    /// SIGKILLs the node by its own pid and reaps it. Returns at once: the other nodes
    /// notice through the closed distribution links ([`Self::wait_noticed_down`]).
    pub fn kill(&self, node: usize) {
        let mut process = self.nodes[node].process.lock().unwrap();
        let child = process
            .as_mut()
            .unwrap_or_else(|| panic!("{} is not running", self.nodes[node].name));
        child.kill().expect("SIGKILL the node"); // std's kill is SIGKILL to child.id()
        child.wait().expect("reap the node");
        *process = None;
    }

    /// Stops the node gracefully (SIGTERM to its pid: RabbitMQ's own handler runs a clean
    /// shutdown) and waits for the process to exit.
    pub async fn stop(&self, node: usize) {
        let pid = self
            .os_pid(node)
            .unwrap_or_else(|| panic!("{} is not running", self.nodes[node].name));
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            {
                let mut process = self.nodes[node].process.lock().unwrap();
                if let Some(child) = process.as_mut()
                    && child.try_wait().expect("try_wait").is_some()
                {
                    *process = None;
                    return;
                }
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!(
                    "{} did not stop within {STOP_LIMIT:?} of SIGTERM",
                    self.nodes[node].name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a node that was killed or stopped and waits until it runs and the cluster
    /// counts it again. A node syncs its metadata from a running peer while it boots, so
    /// after *every* node went down use [`Self::heal`], which starts them together.
    pub async fn start_node(&self, node: usize) {
        assert!(
            self.os_pid(node).is_none(),
            "{} is already running",
            self.nodes[node].name
        );
        self.spawn_node(node).await;
        self.wait_accepting(node, BOOT_LIMIT).await;
        let what = format!("{} counted as running again", self.nodes[node].name);
        self.wait_view(BOOT_LIMIT, &what, Some(node), |v| {
            v.running.contains(&node) && !v.under_maintenance.contains(&node)
        })
        .await;
    }

    /// Restarts every node in turn as the RabbitMQ Cluster Operator restarts its pods:
    /// [`Self::prepare_stop`] (its pre-stop hook), SIGTERM, then `while_down(node)` (the
    /// test's checks and traffic while that node is away), then start, and the next node
    /// only once this one is back and the cluster whole. Returns how long each phase took.
    pub async fn rolling_restart_with(
        &self,
        mut while_down: impl AsyncFnMut(usize),
    ) -> Vec<RestartTimes> {
        let mut times = Vec::new();
        for node in 0..NODES {
            let phase = Instant::now();
            self.prepare_stop(node).await;
            let prepare = phase.elapsed();
            let phase = Instant::now();
            self.stop(node).await;
            let stop = phase.elapsed();
            while_down(node).await;
            let phase = Instant::now();
            self.start_node(node).await;
            self.wait_clustered().await;
            times.push(RestartTimes {
                node,
                prepare,
                stop,
                start: phase.elapsed(),
            });
        }
        times
    }

    /// What the Cluster Operator's pre-stop hook runs before a pod's node stops:
    /// `rabbitmq-upgrade await_online_quorum_plus_one` (waits until stopping the node leaves
    /// every stream and quorum queue a majority: with three replicas, until all three are
    /// online) and `rabbitmq-upgrade drain` (maintenance mode: listeners suspended, client
    /// connections closed, leaders moved away; a restart undoes it).
    pub async fn prepare_stop(&self, node: usize) {
        let limit = CTL_LIMIT.as_secs().to_string();
        self.tool_ok(
            "rabbitmq-upgrade",
            node,
            &["await_online_quorum_plus_one", "-t", &limit],
        )
        .await;
        self.tool_ok("rabbitmq-upgrade", node, &["drain", "-t", &limit])
            .await;
    }

    /// Starts every node whose process is gone and waits until the cluster is whole: what a
    /// test that killed nodes calls before handing the cluster on. (A node left drained by
    /// [`Self::prepare_stop`] without a restart stays drained.)
    pub async fn heal(&self) {
        for node in 0..NODES {
            if self.os_pid(node).is_none() {
                self.spawn_node(node).await;
            }
        }
        for node in 0..NODES {
            self.wait_accepting(node, BOOT_LIMIT).await;
        }
        self.wait_clustered().await;
    }

    /// Waits until a running node's `cluster_status` lists every node as running, none
    /// under maintenance and no partition.
    pub async fn wait_clustered(&self) {
        let all: Vec<usize> = (0..NODES).collect();
        self.wait_view(
            BOOT_LIMIT,
            "all three nodes running, clustered",
            None,
            |v| {
                v.running == all
                    && v.disk_nodes == all
                    && v.under_maintenance.is_empty()
                    && v.partitions.as_object().is_none_or(|p| p.is_empty())
            },
        )
        .await;
    }

    /// Waits until the other nodes no longer count `node` as running.
    pub async fn wait_noticed_down(&self, node: usize) {
        let what = format!("the others to see {} down", self.nodes[node].name);
        self.wait_view(NOTICE_LIMIT, &what, Some(node), |v| {
            !v.running.contains(&node)
        })
        .await;
    }

    /// `cluster_status` through `via`.
    pub async fn view(&self, via: usize) -> Result<ClusterView, String> {
        let out = self
            .ctl(via, &["cluster_status", "--formatter", "json"])
            .await?;
        let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        let nodes = |key: &str| -> Vec<usize> {
            let mut found: Vec<usize> = v[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| self.node_index(n.as_str()?))
                .collect();
            found.sort_unstable();
            found
        };
        let mut under_maintenance: Vec<usize> = v["maintenance_status"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, status)| status.as_str() != Some("not under maintenance"))
            .filter_map(|(name, _)| self.node_index(name))
            .collect();
        under_maintenance.sort_unstable();
        Ok(ClusterView {
            disk_nodes: nodes("disk_nodes"),
            running: nodes("running_nodes"),
            under_maintenance,
            partitions: v["partitions"].clone(),
            alarms: v["alarms"].clone(),
        })
    }

    /// Every queue of the default vhost, as a running node lists them (queues whose node
    /// is down included).
    ///
    /// The table output, not `--formatter json`: JSON renders a pid as `#PID<10986.1139.0>`,
    /// which names no node, where the table gives `<lpt00n2@localhost.1796615800.1143.0>`.
    pub async fn queues(&self) -> Vec<QueueInfo> {
        let columns = [
            "name", "type", "pid", "leader", "members", "online", "state",
        ];
        let mut args = vec!["list_queues", "-q", "--no-table-headers"];
        args.extend(columns);
        let via = self.some_running_node(None).await;
        let out = self
            .ctl(via, &args)
            .await
            .unwrap_or_else(|e| panic!("list_queues through node {}: {e}", via + 1));
        out.lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('\t').collect();
                let [name, kind, pid, leader, members, online, state] = cells[..] else {
                    return None;
                };
                Some(QueueInfo {
                    name: name.to_owned(),
                    kind: kind.to_owned(),
                    pid_node: self.node_index(pid),
                    leader: self.node_index(leader),
                    members: self.nodes_named_in(members),
                    online: self.nodes_named_in(online),
                    state: state.to_owned(),
                })
            })
            .collect()
    }

    /// Every client connection to the cluster, as a running node lists them (each node
    /// answers for its own).
    pub async fn connections(&self) -> Vec<ConnectionInfo> {
        let via = self.some_running_node(None).await;
        let out = self
            .ctl(
                via,
                &[
                    "list_connections",
                    "port",
                    "client_properties",
                    "--formatter",
                    "json",
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("list_connections through node {}: {e}", via + 1));
        // JSON: `client_properties` is a list of [key, type, value].
        let listed: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("list_connections: {e}: {out}"));
        listed
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let port = c["port"].as_u64();
                let name = c["client_properties"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p[0].as_str() == Some("connection_name"))
                    .and_then(|p| p[2].as_str())
                    .unwrap_or_default();
                ConnectionInfo {
                    name: name.to_owned(),
                    node: self
                        .nodes
                        .iter()
                        .position(|n| Some(u64::from(n.amqp_port)) == port),
                }
            })
            .collect()
    }

    /// The nodes whose names appear in `text` (a list as rabbitmqctl prints it), in order.
    fn nodes_named_in(&self, text: &str) -> Vec<usize> {
        (0..NODES)
            .filter(|&n| text.contains(self.nodes[n].name.as_str()))
            .collect()
    }

    pub async fn queue(&self, name: &str) -> Option<QueueInfo> {
        self.queues().await.into_iter().find(|q| q.name == name)
    }

    /// The node that hosts a classic queue (its process), down or not.
    pub async fn node_of_queue(&self, name: &str) -> Option<usize> {
        self.queue(name).await.and_then(|q| q.pid_node)
    }

    /// The node of a stream's leader (its writer).
    pub async fn leader_of_stream(&self, name: &str) -> Option<usize> {
        self.queue(name).await.and_then(|q| q.leader.or(q.pid_node))
    }

    /// Runs `rabbitmqctl -n <node> args…` with this cluster's cookie; its standard output,
    /// or why it failed.
    pub async fn ctl(&self, node: usize, args: &[&str]) -> Result<String, String> {
        self.tool("rabbitmqctl", node, args).await
    }

    /// The tail of the node's log (the last `lines` lines) and its console output.
    pub fn log_tail(&self, node: usize, lines: usize) -> String {
        let n = &self.nodes[node];
        let log = n.dir.join("log").join(format!("{}.log", n.name));
        let mut out = String::new();
        for path in [log, n.dir.join("console.log")] {
            let text = fs::read_to_string(&path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {} (last {lines} lines)\n", path.display()));
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    // ---- internals

    /// `setpriv` (as `rabbitmq` when root) with the environment every RabbitMQ script here
    /// gets: nothing inherited but `PATH`. The caller adds its options, `--` and the program.
    fn setpriv(&self) -> Command {
        let mut cmd = Command::new("setpriv");
        if let Some(user) = &self.run_as {
            cmd.args([
                "--reuid",
                &user.name,
                "--regid",
                &user.name,
                "--init-groups",
            ]);
        }
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("LANG", "C.UTF-8")
            .env("HOME", &self.home)
            .env("RABBITMQ_CONF_ENV_FILE", &self.env_file)
            .current_dir(self.dir.path());
        cmd
    }

    async fn spawn_node(&self, node: usize) {
        let n = &self.nodes[node];
        let mut cmd = self.setpriv();
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(Path::new(RABBITMQ_BIN).join("rabbitmq-server"))
            .env("RABBITMQ_NODENAME", &n.name)
            .env("RABBITMQ_CONFIG_FILE", n.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                n.dir.join("advanced.config"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.path().join("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", n.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", n.dir.join("log"))
            .env("RABBITMQ_DIST_PORT", n.dist_port.to_string())
            // With input allowed the script `exec`s the VM (instead of running it in the
            // background under a shell that traps signals): the child is the node itself.
            .env("RABBITMQ_ALLOW_INPUT", "true")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-noinput -kernel inet_dist_use_interface {127,0,0,1}",
            )
            // An epmd started by the first node binds to loopback, like the system's.
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .current_dir(&n.dir);
        let console = OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("console.log"))
            .expect("open console.log");
        cmd.stdin(Stdio::null())
            .stdout(console.try_clone().expect("dup console.log"))
            .stderr(console);
        let child = self
            .spawner
            .spawn(cmd)
            .await
            .unwrap_or_else(|e| panic!("start {}: {e}", n.name));
        *n.process.lock().unwrap() = Some(child);
    }

    /// Waits until the node's AMQP listener accepts; panics at once if the process exits.
    async fn wait_accepting(&self, node: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut delay = Duration::from_millis(50);
        loop {
            if self.os_pid(node).is_none() {
                self.dump_logs();
                panic!("{} exited while booting", self.nodes[node].name);
            }
            if tokio::net::TcpStream::connect(self.amqp_addr(node))
                .await
                .is_ok()
            {
                return;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!(
                    "{} did not accept AMQP connections within {limit:?}",
                    self.nodes[node].name
                );
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// A node whose process runs and accepts connections, other than `not` if possible.
    async fn some_running_node(&self, not: Option<usize>) -> usize {
        let mut fallback = None;
        for node in 0..NODES {
            if self.is_running(node).await {
                if Some(node) != not {
                    return node;
                }
                fallback = Some(node);
            }
        }
        fallback.unwrap_or_else(|| panic!("no node of the cluster is running"))
    }

    /// Polls `cluster_status` (through a running node other than `not`) until `done`.
    async fn wait_view(
        &self,
        limit: Duration,
        what: &str,
        not: Option<usize>,
        done: impl Fn(&ClusterView) -> bool,
    ) -> ClusterView {
        let deadline = Instant::now() + limit;
        loop {
            let via = self.some_running_node(not).await;
            let last = match self.view(via).await {
                Ok(view) if done(&view) => return view,
                Ok(view) => format!("through node {}: {view:?}", via + 1),
                Err(e) => format!("through node {}: {e}", via + 1),
            };
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("timed out after {limit:?} waiting for {what}; last seen {last}");
            }
            // A rabbitmqctl run costs about a CPU-second: poll gently.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn tool(&self, program: &str, node: usize, args: &[&str]) -> Result<String, String> {
        let mut cmd = self.setpriv();
        let (min, max) = self.ports.ctl_range();
        // Dies with the test process too (a call can take seconds).
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(Path::new(RABBITMQ_BIN).join(program))
            .args(["-n", &self.nodes[node].name])
            .args(args)
            .env("RABBITMQ_CTL_DIST_PORT_MIN", min.to_string())
            .env("RABBITMQ_CTL_DIST_PORT_MAX", max.to_string());
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true).stdin(Stdio::null());
        match tokio::time::timeout(CTL_LIMIT, cmd.output()).await {
            Err(_) => Err(format!("{program} {args:?} ran over {CTL_LIMIT:?}")),
            Ok(Err(e)) => Err(format!("{program}: {e}")),
            Ok(Ok(out)) if out.status.success() => {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Ok(Ok(out)) => Err(format!(
                "{program} {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }

    async fn tool_ok(&self, program: &str, node: usize, args: &[&str]) -> String {
        match self.tool(program, node, args).await {
            Ok(out) => out,
            Err(e) => {
                self.dump_logs();
                panic!("{e}");
            }
        }
    }

    fn dump_logs(&self) {
        for node in 0..NODES {
            eprintln!("{}", self.log_tail(node, 40));
        }
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "rabbit_cluster: the test failed; the nodes' logs ({}):",
                self.dir.path().display()
            );
            self.dump_logs();
        }
        for node in &self.nodes {
            let mut process = node.process.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(child) = process.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
            *process = None;
        }
        // Then the fields: the spawner's thread ends, the directory goes, the slot frees.
    }
}

/// `rabbitmq.conf` of one node.
fn node_conf(ports: SlotPorts, node: usize, first: &str) -> String {
    let mut conf = format!(
        "listeners.tcp.local = 127.0.0.1:{}\n\
         log.file.level = info\n",
        ports.amqp(node)
    );
    if node > 0 {
        // Join node 1 while booting; naming node 1 only, nodes 2 and 3 cannot pair up
        // between themselves. 480 × 500 ms: node 1 may boot slowly on a busy machine.
        conf.push_str(&format!(
            "cluster_formation.peer_discovery_backend = classic_config\n\
             cluster_formation.classic_config.nodes.1 = {first}\n\
             cluster_formation.discovery_retry_limit = 480\n\
             cluster_formation.discovery_retry_interval = 500\n"
        ));
    }
    conf
}

fn check_installed() {
    let server = Path::new(RABBITMQ_BIN).join("rabbitmq-server");
    assert!(
        server.exists(),
        "{} is missing: install Debian's rabbitmq-server (scripts/ensure-rabbitmq does, and \
         `make test` runs it)",
        server.display()
    );
}

/// Root runs the nodes as `rabbitmq` (as Debian's wrapper would); anyone else as themselves.
fn run_as() -> Option<RunAs> {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("effective uid");
    if euid != "0" {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let entry = passwd
        .lines()
        .find(|l| l.starts_with("rabbitmq:"))
        .expect("the rabbitmq user (created by Debian's rabbitmq-server package)");
    let fields: Vec<&str> = entry.split(':').collect();
    Some(RunAs {
        name: "rabbitmq".into(),
        uid: fields[2].parse().expect("uid"),
        gid: fields[3].parse().expect("gid"),
    })
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if path.is_dir() {
        for entry in fs::read_dir(path).expect("read_dir") {
            chown_tree(&entry.expect("dir entry").path(), uid, gid);
        }
    }
}

fn slots_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("longpoll-rabbit-cluster");
    if fs::create_dir_all(&dir).is_ok() {
        // Anyone may claim a slot (sticky, like /tmp); the rabbitmq user must traverse it.
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777));
    }
    dir
}

/// Claims the first slot that no live process holds and whose ports are free; waits
/// (bounded) when every slot is taken.
async fn claim_slot() -> (u16, File) {
    let dir = slots_dir();
    let deadline = Instant::now() + SLOT_LIMIT;
    loop {
        for slot in 0..SLOTS {
            let path = dir.join(format!("slot-{slot:02}.lock"));
            let Ok(file) = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            else {
                continue;
            };
            // Whoever runs the tests next may be another user.
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o666));
            if file.try_lock().is_err() {
                continue;
            }
            let ports = SlotPorts::of(slot);
            if ports
                .listened()
                .iter()
                .all(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
            {
                return (slot, file);
            }
        }
        assert!(
            Instant::now() < deadline,
            "every one of the {SLOTS} RabbitMQ cluster slots stayed taken for {SLOT_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Removes what a cluster of this slot left behind when its process died without
/// unwinding (its nodes died with it; the slot lock proves no one uses the data).
fn remove_leftovers(root: &Path, slot: u16) {
    let prefix = format!("lpt{slot:02}-");
    for entry in fs::read_dir(root).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

type SpawnRequest = (Command, tokio::sync::oneshot::Sender<io::Result<Child>>);

/// Spawns the nodes from one thread that lives as long as the cluster. `--pdeathsig`
/// fires when the *thread* that forked the child ends, so spawning from a tokio worker or
/// a test's thread could kill a node that is still wanted (a cluster shared between the
/// tests of one process); this thread ends only after Drop has killed the nodes.
struct Spawner {
    requests: Option<mpsc::Sender<SpawnRequest>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Spawner {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let thread = thread::Builder::new()
            .name("rabbit-cluster-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        Spawner {
            requests: Some(tx),
            thread: Some(thread),
        }
    }

    async fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests
            .as_ref()
            .expect("spawner open")
            .send((cmd, tx))
            .expect("spawner thread alive");
        rx.await.expect("spawner answered")
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
