//! Queries a tarn mesh over libp2p without running a node: dials one node by
//! its multiaddr (with `/p2p/<peer-id>`, as `tarn node` prints at start) and
//! runs a network query over the same protocol the nodes use.
//!
//! ```sh
//! cargo run --example libp2p_client -- /ip4/127.0.0.1/tcp/32048/p2p/12D3Koo... mydb "SELECT count(*) FROM readings"
//! ```

use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, db, sql] = args.as_slice() else {
        anyhow::bail!("usage: libp2p_client <multiaddr/p2p/peer-id> <db> <select>");
    };
    let rt = tokio::runtime::Runtime::new()?;
    let answer = rt.block_on(tarn::p2p_client::query(
        addr,
        None,
        db,
        sql,
        false,
        Duration::from_secs(60),
    ))?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
