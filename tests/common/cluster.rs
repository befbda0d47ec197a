//! A three-node `nats-server` cluster on loopback: routes between the nodes,
//! JetStream on each with its own store directory, nodes that can be killed
//! (SIGKILL) and restarted on the same ports and stores. The binary is the
//! one [`super::server_binary`] picks (`NATS_SERVER_BIN` honoured).
//!
//! Each node is a [`NatsServer`] started with a configuration file naming
//! the node (`server_name`, stable across restarts as JetStream needs), its
//! store, its route port and the route ports of all three. Client ports are
//! chosen by [`NatsServer`] as for a single server.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mandate::client::NatsConnect;

use super::relay::{Passage, RouteRelay};
use super::NatsServer;

/// Nodes in the cluster.
pub const NODES: usize = 3;
/// How long the cluster may take to elect a JetStream meta leader and
/// place a replicated stream, on two busy cores.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running three-node cluster; every node is killed when it is dropped.
pub struct Cluster {
    nodes: Vec<NatsServer>,
    /// How the harness itself connects (probe, leader look-ups,
    /// [`Cluster::connect`]): anonymously, or as a user of the secured
    /// configuration.
    harness: Option<NatsConnect>,
    /// Route relays, when the routes go through them: `relays[i][j]` carries
    /// node `i`'s routes to node `j` (none for `i == j`).
    relays: Vec<Vec<Option<RouteRelay>>>,
    /// Each node's monitoring port (relayed clusters only).
    monitoring: Vec<u16>,
}

impl Cluster {
    /// Starts three routed nodes and waits until the cluster can create a
    /// stream of three replicas (a meta leader is elected and every peer
    /// is known to it).
    pub async fn start() -> Self {
        let name = format!("mandate-test-{}", std::process::id());
        let routes: Vec<u16> = (0..NODES).map(|_| super::free_port()).collect();
        let nodes = (0..NODES)
            .map(|i| {
                let (name, routes) = (name.clone(), routes.clone());
                NatsServer::start_with_config(move |store| node_config(store, &name, i, &routes))
            })
            .collect();
        let cluster = Cluster {
            nodes,
            harness: None,
            relays: Vec::new(),
            monitoring: Vec::new(),
        };
        cluster.wait_until_replicated_streams_can_be_made().await;
        cluster
    }

    /// Starts three nodes whose routes all go through [`RouteRelay`]s the
    /// test controls, one per ordered pair of nodes, so that a node can be
    /// cut off from the others ([`Cluster::isolate`], [`Cluster::sever`])
    /// while it and its clients keep running. A node learns its peers'
    /// route addresses from each other too (gossip) and would dial them
    /// directly: each advertises a closed port instead, so only the
    /// configured routes, through the relays, connect.
    pub async fn start_with_route_relays() -> Self {
        Self::start_relayed(false).await
    }

    /// As [`Cluster::start_with_route_relays`], each node with a monitoring
    /// port as well ([`Cluster::routez`]): one more port chosen ahead of
    /// the start, which another test's server may take meanwhile, so only
    /// where it is read.
    pub async fn start_with_route_relays_and_monitoring() -> Self {
        Self::start_relayed(true).await
    }

    async fn start_relayed(monitored: bool) -> Self {
        let name = format!("mandate-relayed-{}", std::process::id());
        let routes: Vec<u16> = (0..NODES).map(|_| super::free_port()).collect();
        let monitoring: Vec<u16> = if monitored {
            (0..NODES).map(|_| super::free_port()).collect()
        } else {
            Vec::new()
        };
        let mut relays = Vec::new();
        for i in 0..NODES {
            let mut row = Vec::new();
            for (j, &port) in routes.iter().enumerate() {
                row.push(if i == j {
                    None
                } else {
                    Some(RouteRelay::start(port).await)
                });
            }
            relays.push(row);
        }
        let nodes = (0..NODES)
            .map(|i| {
                let name = name.clone();
                let listen = routes[i];
                let through: Vec<u16> = relays[i].iter().flatten().map(|r| r.port()).collect();
                let http = monitoring.get(i).copied();
                NatsServer::start_with_config(move |store| {
                    relayed_node_config(store, &name, i, listen, &through, http)
                })
            })
            .collect();
        let cluster = Cluster {
            nodes,
            harness: None,
            relays,
            monitoring,
        };
        cluster.wait_until_replicated_streams_can_be_made().await;
        cluster
    }

    /// Every relay that carries a route of node `i` (to it or from it).
    fn relays_of(&self, i: usize) -> impl Iterator<Item = &RouteRelay> {
        assert!(
            !self.relays.is_empty(),
            "the cluster was not started with route relays"
        );
        (0..NODES).flat_map(move |k| {
            [self.relays[i][k].as_ref(), self.relays[k][i].as_ref()]
                .into_iter()
                .flatten()
        })
    }

    /// Node `i`'s routes stop carrying anything, both ways, without being
    /// closed: neither it nor its peers see a connection end, and its
    /// clients stay connected to it. It lags from now on.
    pub fn isolate(&self, i: usize) {
        for relay in self.relays_of(i) {
            relay.set(Passage::Blackhole);
        }
    }

    /// Node `i`'s routes are closed and refused: it and its peers see them
    /// end at once.
    pub fn sever(&self, i: usize) {
        for relay in self.relays_of(i) {
            relay.set(Passage::Severed);
        }
    }

    /// Node `i`'s routes carry again (routes that lost bytes while isolated
    /// are closed, and the nodes route again).
    pub fn heal(&self, i: usize) {
        for relay in self.relays_of(i) {
            relay.set(Passage::Open);
        }
    }

    /// Node `i`'s `/routez` (its monitoring port), as JSON.
    pub fn routez(&self, i: usize) -> serde_json::Value {
        assert!(
            !self.monitoring.is_empty(),
            "the cluster was not started with monitoring"
        );
        use std::io::{Read, Write};
        // HTTP/1.0: the answer comes whole (not chunked), then the close.
        let addr = format!("127.0.0.1:{}", self.monitoring[i]);
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect to /routez");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(b"GET /routez HTTP/1.0\r\n\r\n").unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).expect("read /routez");
        let (head, body) = raw.split_once("\r\n\r\n").expect("headers end");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "/routez of node {i}: {head}"
        );
        serde_json::from_str(body).expect("/routez answers JSON")
    }

    /// How many distinct peers node `i` has a route to now (by server id,
    /// from its `/routez`: a pair of nodes may share several connections).
    pub fn routed_peers(&self, i: usize) -> usize {
        let routez = self.routez(i);
        let ids: std::collections::BTreeSet<&str> = routez["routes"]
            .as_array()
            .map(|routes| {
                routes
                    .iter()
                    .filter_map(|r| r["remote_id"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        ids.len()
    }

    /// Starts three nodes configured as `examples/nats-cluster-node.conf`
    /// says (which includes the least-privilege users of
    /// `examples/nats-server.conf` and `sync_interval: always`, so servers
    /// 2.10 and later only), moved to loopback ports and private stores.
    /// The harness connects as `harness` (its settings, given a URL), a
    /// user allowed to manage streams (the engine's).
    pub async fn start_secured(harness: impl Fn(&str) -> NatsConnect) -> Self {
        let name = format!("mandate-secured-{}", std::process::id());
        let routes: Vec<u16> = (0..NODES).map(|_| super::free_port()).collect();
        let nodes = (0..NODES)
            .map(|i| {
                let (name, routes) = (name.clone(), routes.clone());
                NatsServer::start_with_config(move |store| {
                    secured_node_config(store, &name, i, &routes)
                })
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            harness: None,
            relays: Vec::new(),
            monitoring: Vec::new(),
        };
        // Every node's URL: the harness fails over as clients do.
        cluster.harness = Some(harness(&cluster.urls()));
        cluster.wait_until_replicated_streams_can_be_made().await;
        cluster
    }

    /// A connection of the harness to `url` (one or more, comma-separated;
    /// anonymous, or as its user).
    async fn harness_connect(&self, url: &str) -> Result<async_nats::Client, String> {
        match &self.harness {
            None => {
                let urls: Vec<&str> = url.split(',').collect();
                async_nats::connect(urls).await.map_err(|e| e.to_string())
            }
            Some(settings) => {
                let mut settings = settings.clone();
                settings.url = url.to_string();
                settings.connect().await.map_err(|e| e.to_string())
            }
        }
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Every node's client URL, comma-separated (the form `--nats` and
    /// `async_nats::connect` take).
    pub fn urls(&self) -> String {
        (0..NODES)
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A connection that knows every node (and fails over between them).
    pub async fn connect(&self) -> async_nats::Client {
        self.harness_connect(&self.urls())
            .await
            .expect("connect to the cluster")
    }

    /// The `server_name` of node `i` (what stream info names as leader).
    pub fn name(&self, i: usize) -> String {
        format!("n{i}")
    }

    /// Node `i`'s index from its `server_name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        (0..NODES).find(|&i| self.name(i) == name)
    }

    /// SIGKILLs node `i`; its store stays.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again on its ports and store (killing it first if it
    /// runs).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
    }

    /// The node that leads `stream` now, asked through node `via`.
    pub async fn stream_leader(&self, via: usize, stream: &str) -> Option<usize> {
        let nc = self.harness_connect(&self.url(via)).await.ok()?;
        let js = async_nats::jetstream::new(nc);
        let mut s = js.get_stream(stream).await.ok()?;
        let info = s.info().await.ok()?;
        let leader = info.cluster.as_ref()?.leader.clone()?;
        self.index_of(&leader)
    }

    /// Polls (through node 0) until an R3 stream can be created and
    /// deleted again: the meta leader is elected and sees all three peers.
    async fn wait_until_replicated_streams_can_be_made(&self) {
        let url = self.url(0);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let probe = match self.harness_connect(&url).await {
                Ok(nc) => probe(nc).await,
                Err(e) => Err(e),
            };
            match probe {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "the cluster could not place a stream of three replicas within {READY_TIMEOUT:?}: {last}"
        );
    }
}

/// One attempt at creating (and deleting) a stream of three replicas.
async fn probe(nc: async_nats::Client) -> Result<(), String> {
    let js = async_nats::jetstream::new(nc);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "CLUSTER_PROBE".into(),
        subjects: vec!["cluster.probe".into()],
        num_replicas: NODES,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    js.delete_stream("CLUSTER_PROBE")
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Writes node `i`'s configuration file into its store directory.
fn node_config(store: &Path, cluster: &str, i: usize, route_ports: &[u16]) -> PathBuf {
    let routes = route_ports
        .iter()
        .map(|p| format!("nats-route://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "server_name: n{i}\n\
         jetstream {{ store_dir: {js:?} }}\n\
         cluster {{\n  name: {cluster}\n  listen: 127.0.0.1:{port}\n  routes: [{routes}]\n}}\n",
        js = store.join("js"),
        port = route_ports[i],
    );
    let path = store.join("node.conf");
    std::fs::write(&path, text).expect("write a node's configuration");
    path
}

/// Writes node `i`'s configuration file for a cluster whose routes go
/// through relays: it listens for routes on `listen`, dials its peers at
/// the relay ports `through`, advertises a closed route port (so that its
/// peers never learn a way around the relays), and serves monitoring on
/// `http` if given.
fn relayed_node_config(
    store: &Path,
    cluster: &str,
    i: usize,
    listen: u16,
    through: &[u16],
    http: Option<u16>,
) -> PathBuf {
    let routes = through
        .iter()
        .map(|p| format!("nats-route://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(", ");
    let closed = super::free_port();
    let text = format!(
        "server_name: n{i}\n\
         {http}\
         jetstream {{ store_dir: {js:?} }}\n\
         cluster {{\n  name: {cluster}\n  listen: 127.0.0.1:{listen}\n  \
         advertise: 127.0.0.1:{closed}\n  routes: [{routes}]\n}}\n",
        js = store.join("js"),
        http = http.map_or(String::new(), |p| format!("http: 127.0.0.1:{p}\n")),
    );
    let path = store.join("node.conf");
    std::fs::write(&path, text).expect("write a node's configuration");
    path
}

/// Writes node `i`'s configuration into its store directory: the example
/// users' files as [`super::secured::example_config`] copies them (store
/// moved into `store`), and `examples/nats-cluster-node.conf` with the
/// node's name, the cluster's name and the loopback route ports put in
/// (the client port is the harness's, given on the command line).
fn secured_node_config(store: &Path, cluster: &str, i: usize, route_ports: &[u16]) -> PathBuf {
    super::secured::example_config(store, "");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nats-cluster-node.conf");
    let mut text = std::fs::read_to_string(&example).expect("read examples/nats-cluster-node.conf");
    let mut replace = |from: &str, to: &str| {
        assert!(
            text.contains(from),
            "examples/nats-cluster-node.conf no longer has {from:?}, which this harness replaces"
        );
        text = text.replace(from, to);
    };
    replace("server_name: node1", &format!("server_name: n{i}"));
    replace("listen: 0.0.0.0:4222\n", "");
    replace("name: mandate\n", &format!("name: {cluster}\n"));
    replace(
        "listen: 0.0.0.0:6222",
        &format!("listen: 127.0.0.1:{}", route_ports[i]),
    );
    for (k, port) in route_ports.iter().enumerate() {
        replace(
            &format!("@node{}:6222", k + 1),
            &format!("@127.0.0.1:{port}"),
        );
    }
    let path = store.join("node.conf");
    std::fs::write(&path, text).expect("write a node's configuration");
    path
}
