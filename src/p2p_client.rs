//! A libp2p client that is not a node: it dials one node of the mesh with a
//! throwaway identity (or, in a closed network, a key admitted with `tarn
//! admit`) and runs a network query over `/tarn/rpc/2` (the
//! query family of [`crate::proto`]), the protocol operators and query
//! nodes speak to each other. Used by `tarn query --peer` and
//! `examples/libp2p_client.rs`.

use std::time::Duration;

use anyhow::Context as _;
use tarn_net::{Event, Multiaddr, PeerId};

use crate::api::format::native_rows;
use crate::proto::query::{Chunk, Request};

/// Runs `sql` over the network through the node at `addr` (a multiaddr
/// ending in `/p2p/<peer-id>`) as `identity` (a throwaway key when
/// `None`). Answers like `POST /v1/query`:
/// `{"columns", "rows", "stats", "errors"}`.
///
/// The node is authenticated by the PeerId in `addr` (Noise): no CA is
/// involved, and a node that holds another key cannot answer.
pub async fn query(
    addr: &str,
    identity: Option<tarn_net::Keypair>,
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
    let key = identity.unwrap_or_else(tarn_net::Keypair::generate_ed25519);
    let mut cfg = tarn_net::Config::new(key);
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
        let mut msg = Request::Query {
            db: db.to_owned(),
            sql: sql.to_owned(),
            subset,
            timeout_ms: timeout.as_millis() as u64,
        };
        let mut columns = Vec::new();
        let mut rows = Vec::new();
        loop {
            let chunk = call(&net, peer, &msg).await?;
            if columns.is_empty() {
                columns = chunk.columns;
            }
            rows.extend(chunk.rows);
            if chunk.done {
                let result = crate::exec::result_of(columns, rows);
                let stats = chunk.stats.unwrap_or_default();
                return Ok(serde_json::json!({
                    "columns": result.columns,
                    "rows": native_rows(&result),
                    "stats": {"nodes": stats.asked, "replied": stats.replied, "rows": stats.rows, "ms": stats.ms},
                    "errors": chunk.errors,
                }));
            }
            msg = Request::Next {
                cursor: chunk.cursor,
            };
        }
    };
    tokio::time::timeout(timeout + Duration::from_secs(5), fetch)
        .await
        .context("the query timed out")?
}

async fn call(net: &tarn_net::Client, peer: PeerId, msg: &Request) -> anyhow::Result<Chunk> {
    let data = crate::proto::encode_request(msg)?;
    let bytes = net.request(peer, data).await.map_err(|e| {
        anyhow::anyhow!(
            "{e} (a node of a closed network closes the connections of peers it has not admitted)"
        )
    })?;
    match crate::proto::decode_reply::<Request>(&bytes)? {
        Ok(chunk) => Ok(chunk),
        Err(e) => anyhow::bail!("{} ({})", e.message, e.code),
    }
}
