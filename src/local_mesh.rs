//! Many nodes in one process on loopback: `tarn demo`, the mesh tests and
//! the propagation benchmark. Node 0 runs every service and is everyone's
//! bootstrap, with node `i / 2` as a second one (so a few hundred nodes do
//! not all queue at node 0's connection cap while starting); links between
//! nodes can be cut and healed, nodes stopped and started again on their
//! data directories.
//!
//! Uses `node` (it only starts nodes) and `config`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Config, Node, Service};

type Tweak = std::sync::Arc<dyn Fn(usize, &mut Config) + Send + Sync>;

/// N in-process nodes.
pub struct LocalMesh {
    base: PathBuf,
    tweak: Tweak,
    nodes: Vec<Option<Node>>,
    bootstrap: Vec<String>,
    blocked: Vec<(usize, usize)>,
    /// Each stopped node's REST address, taken again when it restarts.
    rest: Vec<Option<std::net::SocketAddr>>,
}

impl LocalMesh {
    fn config(base: &Path, i: usize, bootstrap: &[String]) -> Config {
        let mut cfg = Config {
            name: format!("node-{i}"),
            data_dir: base.join(format!("node-{i}")),
            rest: "127.0.0.1:0".parse().expect("a valid address"),
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            bootstrap: bootstrap.to_vec(),
            mdns: false,
            ..Default::default()
        };
        cfg.watch.enabled = false;
        if i == 0 {
            cfg.services = Service::ALL.to_vec();
        } else {
            cfg.services = vec![Service::Operator, Service::Query];
        }
        cfg
    }

    /// Starts `n` nodes with data directories under `base`.
    pub async fn start(n: usize, base: &Path) -> anyhow::Result<LocalMesh> {
        Self::start_with(n, base, |_, _| {}).await
    }

    /// Starts `n` nodes, each configuration changed by `tweak(i, cfg)` first
    /// (services, cluster, limits); restarts apply it again.
    pub async fn start_with(
        n: usize,
        base: &Path,
        tweak: impl Fn(usize, &mut Config) + Send + Sync + 'static,
    ) -> anyhow::Result<LocalMesh> {
        anyhow::ensure!(n >= 1, "a mesh needs at least one node");
        let tweak: Tweak = std::sync::Arc::new(tweak);
        let config = |i: usize, boot: &[String]| {
            let mut c = Self::config(base, i, boot);
            tweak(i, &mut c);
            c
        };
        let first = Node::start(config(0, &[])).await?;
        let bootstrap: Vec<String> = first.p2p_addrs().into_iter().take(1).collect();
        let mut nodes = vec![Some(first)];
        for i in 1..n {
            let boot = Self::boot_for(&nodes, &bootstrap, i);
            nodes.push(Some(Node::start(config(i, &boot)).await?));
        }
        Ok(LocalMesh {
            base: base.to_owned(),
            tweak,
            nodes,
            rest: vec![None; n],
            bootstrap,
            blocked: Vec::new(),
        })
    }

    /// Node `i`'s bootstrap: node 0, and node `i / 2` if it runs.
    fn boot_for(nodes: &[Option<Node>], first: &[String], i: usize) -> Vec<String> {
        let mut boot = first.to_vec();
        if i / 2 > 0
            && let Some(Some(n)) = nodes.get(i / 2)
        {
            boot.extend(n.p2p_addrs().into_iter().take(1));
        }
        boot
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`, if running.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes.get(i).and_then(Option::as_ref)
    }

    /// Running nodes with their index.
    pub fn running(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
    }

    /// Ledger heads of every running node agree (and hold `min_entries`).
    pub fn converged(&self, min_entries: usize) -> bool {
        let mut heads = None;
        for (_, n) in self.running() {
            let (h, len) = n.mesh().ledger_state();
            if len < min_entries {
                return false;
            }
            match &heads {
                None => heads = Some(h),
                Some(x) if *x != h => return false,
                _ => {}
            }
        }
        true
    }

    /// Waits until [`converged`](Self::converged), or fails after `limit`.
    pub async fn wait_converged(
        &self,
        min_entries: usize,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        while !self.converged(min_entries) {
            anyhow::ensure!(
                start.elapsed() < limit,
                "the mesh did not converge within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(start.elapsed())
    }

    /// Cuts every link between group `a` and group `b`.
    pub async fn partition(&mut self, a: &[usize], b: &[usize]) -> anyhow::Result<()> {
        for &x in a {
            for &y in b {
                self.set_link(x, y, true).await?;
                self.blocked.push((x, y));
            }
        }
        Ok(())
    }

    /// Restores every cut link.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        for (x, y) in std::mem::take(&mut self.blocked) {
            self.set_link(x, y, false).await?;
        }
        Ok(())
    }

    async fn set_link(&self, x: usize, y: usize, blocked: bool) -> anyhow::Result<()> {
        if let (Some(nx), Some(ny)) = (self.node(x), self.node(y)) {
            nx.mesh().net().set_blocked(ny.peer_id(), blocked).await?;
            ny.mesh().net().set_blocked(nx.peer_id(), blocked).await?;
        }
        Ok(())
    }

    /// Stops node `i` (its data directory stays).
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(n) = self.nodes.get_mut(i).and_then(Option::take) {
            self.rest[i] = Some(n.rest_addr());
            n.shutdown().await?;
        }
        Ok(())
    }

    /// Starts node `i` again on its data directory.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(i < self.nodes.len(), "no node {i} in this mesh");
        self.stop(i).await?;
        // Node 0 rejoins through another running node.
        let boot = if i == 0 {
            self.running()
                .next()
                .map(|(_, n)| n.p2p_addrs().into_iter().take(1).collect())
                .unwrap_or_default()
        } else {
            Self::boot_for(&self.nodes, &self.bootstrap, i)
        };
        let mut cfg = Self::config(&self.base, i, &boot);
        (self.tweak)(i, &mut cfg);
        // Its old REST address if still free, so scripts keep their URL.
        let node = match self.rest[i] {
            Some(addr) => {
                let mut same = cfg.clone();
                same.rest = addr;
                match Node::start(same).await {
                    Ok(n) => n,
                    Err(_) => Node::start(cfg).await?,
                }
            }
            None => Node::start(cfg).await?,
        };
        self.nodes[i] = Some(node);
        Ok(())
    }

    /// Stops every node.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.stop(i).await?;
        }
        Ok(())
    }
}
