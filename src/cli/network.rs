//! Closed networks from the command line: `tarn network create` makes the
//! root key; `tarn admit` and `tarn revoke` sign `member` entries with an
//! admin key here and hand them to a node, which checks and spreads them.
//! The key never leaves this machine.

use std::io::Write;
use std::path::Path;

use ed25519_dalek::SigningKey;
use tarn_ledger::member::{author_of_peer_id, peer_id_of};
use tarn_ledger::policy::Policy;
use tarn_ledger::{Author, Entry, Op};

use crate::client::Client;
use crate::config::Service;
use crate::mesh::{create_key_file, read_key_file};

/// `tarn network create --out FILE`: a new root key; prints the network id.
pub fn network_create(out_file: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let secret = create_key_file(out_file)?;
    let key = SigningKey::from_bytes(&secret);
    let id = peer_id_of(&Author(key.verifying_key().to_bytes()));
    writeln!(out, "{id}")?;
    Ok(())
}

/// `tarn key --out FILE`: a new key (a libp2p client's identity, to admit
/// with `tarn admit`); prints its PeerId.
pub fn key_create(out_file: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    // The same kind of key as a network's root: an ed25519 secret.
    network_create(out_file, out)
}

/// What `tarn admit` admits.
#[derive(Debug, Clone)]
pub struct Admission {
    pub peer: String,
    pub services: Vec<Service>,
    pub cluster: Option<String>,
    pub admin: bool,
}

/// `tarn admit`: signs a `member` policy for a peer and hands it to `node`.
pub fn admit(node: &str, key: &Path, a: &Admission, out: &mut impl Write) -> anyhow::Result<()> {
    if author_of_peer_id(&a.peer).is_none() {
        anyhow::bail!("{:?} is not a PeerId (12D3KooW...)", a.peer);
    }
    if a.services.is_empty() {
        anyhow::bail!("--services names at least one service");
    }
    if let Some(c) = &a.cluster {
        crate::config::cluster_name(c).map_err(|e| anyhow::anyhow!(e))?;
    }
    if a.cluster.is_some() && !a.services.contains(&Service::Operator) {
        anyhow::bail!("--cluster is for an operator: add operator to --services");
    }
    let key = read_key_file(key)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let services: Vec<&str> = a.services.iter().map(|s| s.name()).collect();
    let policy = Policy::from_value(serde_json::json!({"member": {
        "peer": a.peer,
        "services": services,
        "cluster": a.cluster,
        "admin": a.admin,
        "admitted_ms": now,
    }}))?;
    let op = Op::Put {
        policy: String::from_utf8(policy.canonical()).expect("canonical JSON is UTF-8"),
        supersedes: None,
    };
    submit(&Client::new(node), &key, op)?;
    writeln!(out, "{}", policy.id())?;
    Ok(())
}

/// `tarn revoke`: withdraws every `member` policy that admits the peer.
pub fn revoke(node: &str, key: &Path, peer: &str, out: &mut impl Write) -> anyhow::Result<()> {
    if author_of_peer_id(peer).is_none() {
        anyhow::bail!("{peer:?} is not a PeerId (12D3KooW...)");
    }
    let key = read_key_file(key)?;
    let client = Client::new(node);
    let members = client.get("/v1/members", &[])?.ok_json()?;
    let ids: Vec<String> = members["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["peer"] == peer)
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    if ids.is_empty() {
        anyhow::bail!("{peer} is not a member of the network {node} is in");
    }
    for id in ids {
        submit(&client, &key, Op::Revoke { id: id.clone() })?;
        writeln!(out, "{id}")?;
    }
    Ok(())
}

/// `tarn user add`: a REST user signed with an admin key; prints its token
/// (once: only the secret's hash is stored).
pub fn user_add(
    node: &str,
    key: &Path,
    name: &str,
    role: crate::api::auth::Role,
    dbs: &[String],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    {
        anyhow::bail!("a user name is 1-64 letters, digits, '-' or '_'");
    }
    let key = read_key_file(key)?;
    let (secret, hash) = crate::api::auth::new_secret()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let dbs: Option<Vec<String>> =
        (!dbs.is_empty()).then(|| dbs.iter().map(|d| d.to_ascii_lowercase()).collect());
    let policy = Policy::from_value(serde_json::json!({"user": {
        "name": name,
        "role": role.name(),
        "dbs": dbs,
        "hash": hash,
        "created_ms": now,
    }}))?;
    let op = Op::Put {
        policy: String::from_utf8(policy.canonical()).expect("canonical JSON is UTF-8"),
        supersedes: None,
    };
    submit(&Client::new(node), &key, op)?;
    writeln!(out, "{name}.{secret}")?;
    Ok(())
}

/// `tarn user remove`: withdraws the user's policies (its tokens stop working).
pub fn user_remove(node: &str, key: &Path, name: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let key = read_key_file(key)?;
    let client = Client::new(node);
    let users = client.get("/v1/policies?type=user", &[])?.ok_json()?;
    let ids: Vec<String> = users
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["user"]["name"] == name)
        .filter_map(|u| u["user"]["id"].as_str().map(str::to_owned))
        .collect();
    if ids.is_empty() {
        anyhow::bail!("no user {name:?} on {node}");
    }
    for id in ids {
        submit(&client, &key, Op::Revoke { id: id.clone() })?;
        writeln!(out, "{id}")?;
    }
    Ok(())
}

/// Signs `op` as the next entry of `key`'s chain as `node` holds it, and
/// hands it over; tries again if another entry of the same key got there
/// first.
fn submit(client: &Client, key: &SigningKey, op: Op) -> anyhow::Result<()> {
    let me = peer_id_of(&Author(key.verifying_key().to_bytes()));
    let mut last = None;
    for _ in 0..5 {
        let head = client
            .get(&format!("/v1/ledger/head?author={me}"), &[])?
            .ok_json()?;
        let seq = head["seq"].as_u64().unwrap_or(0);
        let prev = match head["hash"].as_str() {
            None => None,
            Some(h) => Some(parse_hash(h)?),
        };
        let lamport = head["lamport"].as_u64().unwrap_or(0) + 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let e = Entry::sign(key, seq + 1, prev, lamport, now, op.clone())?;
        let a = client.post(
            "/v1/ledger/entries",
            &[("content-type", "application/cbor")],
            e.bytes(),
        )?;
        if a.status == 200 {
            return Ok(());
        }
        let v = a.json().unwrap_or_default();
        let msg = v["error"]["message"].as_str().unwrap_or(&a.body).to_owned();
        if v["error"]["code"] != "invalid_policy" || !msg.contains("sign anew") {
            anyhow::bail!("{} refused the entry: {msg}", client.base());
        }
        last = Some(msg);
    }
    anyhow::bail!(
        "{} kept refusing the entry: {}",
        client.base(),
        last.unwrap_or_default()
    )
}

fn parse_hash(h: &str) -> anyhow::Result<[u8; 32]> {
    let bad = || anyhow::anyhow!("the node sent a malformed head hash {h:?}");
    if h.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(h.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}
