//! A libp2p client that is not a node: it dials one node of the mesh with a
//! throwaway identity and runs a network query over `/tarn/rpc/1`, the
//! protocol operators and query nodes speak to each other. Used by
//! `tarn query --peer` and `examples/libp2p_client.rs`.

use std::time::Duration;

use anyhow::Context as _;
use tarn_net::{Event, Multiaddr, PeerId};

use crate::format::native_rows;
use crate::mesh::Rpc;

/// Runs `sql` over the network through the node at `addr` (a multiaddr
/// ending in `/p2p/<peer-id>`). Answers like `POST /v1/query`:
/// `{"columns", "rows", "stats", "errors"}`.
pub async fn query(
    addr: &str,
    db: &str,
    sql: &str,
    subset: bool,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let ma: Multiaddr = addr
        .parse()
        .with_context(|| format!("{addr:?} is not a multiaddr"))?;
    let peer = ma
        .iter()
        .find_map(|p| match p {
            tarn_net::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .with_context(|| format!("{addr} does not end in /p2p/<peer-id>"))?;
    let mut cfg = tarn_net::Config::new(tarn_net::Keypair::generate_ed25519());
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr")];
    cfg.mdns = false;
    // The node answers the first chunk only once the whole query has run.
    cfg.request_timeout = timeout + Duration::from_secs(5);
    let (net, mut events) = tarn_net::start(cfg).await?;
    net.dial(ma.clone()).await?;
    let connected = async {
        while let Some(ev) = events.recv().await {
            if matches!(ev, Event::Connected(p) if p == peer) {
                return true;
            }
        }
        false
    };
    anyhow::ensure!(
        tokio::time::timeout(Duration::from_secs(10), connected)
            .await
            .unwrap_or(false),
        "could not connect to {addr}"
    );
    // Keep the event channel drained while the query runs.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let fetch = async {
        let mut msg = Rpc::Query {
            db: db.to_owned(),
            sql: sql.to_owned(),
            subset,
            timeout_ms: timeout.as_millis() as u64,
        };
        let mut columns = Vec::new();
        let mut rows = Vec::new();
        loop {
            let reply = call(&net, peer, &msg).await?;
            let chunk = match reply {
                Rpc::Chunk(c) => c,
                Rpc::Failed { code, message } => anyhow::bail!("{message} ({code})"),
                Rpc::Error(e) => anyhow::bail!("{e}"),
                _ => anyhow::bail!("the node answered with the wrong message"),
            };
            if columns.is_empty() {
                columns = chunk.columns;
            }
            rows.extend(chunk.rows);
            if chunk.done {
                let result = crate::scatter::result_of(columns, rows);
                let stats = chunk.stats.unwrap_or_default();
                return Ok(serde_json::json!({
                    "columns": result.columns,
                    "rows": native_rows(&result),
                    "stats": {"nodes": stats.asked, "replied": stats.replied, "rows": stats.rows, "ms": stats.ms},
                    "errors": chunk.errors,
                }));
            }
            msg = Rpc::Next {
                cursor: chunk.cursor,
            };
        }
    };
    tokio::time::timeout(timeout + Duration::from_secs(5), fetch)
        .await
        .context("the query timed out")?
}

async fn call(net: &tarn_net::Client, peer: PeerId, msg: &Rpc) -> anyhow::Result<Rpc> {
    let data = tarn_net::codec::encode(msg, crate::mesh::MAX_RPC)?;
    let bytes = net.request(peer, data).await?;
    Ok(tarn_net::codec::decode::<Rpc>(
        &bytes,
        crate::mesh::MAX_RPC,
    )?)
}
