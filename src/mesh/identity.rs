//! The node's key (its PeerId and its ledger author) and who a ledger
//! author is on the network.

use std::path::Path;

use tarn_ledger::Author;
use tarn_net::{Keypair, PeerId};

/// Loads the node's key from `<data>/identity.key`, creating it on first start.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<([u8; 32], Keypair)> {
    let path = data_dir.join("identity.key");
    let secret: [u8; 32] = match std::fs::read(&path) {
        Ok(b) => b
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key_file(&path)?,
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    };
    let kp =
        Keypair::ed25519_from_bytes(secret).map_err(|e| anyhow::anyhow!("identity key: {e}"))?;
    Ok((secret, kp))
}

/// Makes a new key in a file of its own (refusing to overwrite one) and
/// returns it: a closed network's root key, or an admin's.
pub fn create_key_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    if path.exists() {
        anyhow::bail!("{} exists; a key is never overwritten", path.display());
    }
    let kp = Keypair::generate_ed25519();
    let ed = kp
        .try_into_ed25519()
        .expect("an ed25519 key was just generated");
    let mut secret = [0u8; 32];
    secret.copy_from_slice(ed.secret().as_ref());
    write_private(path, &secret)?;
    Ok(secret)
}

/// Reads a key file written by [`create_key_file`] (or a node's identity).
pub fn read_key_file(path: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let b = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let secret: [u8; 32] = b
        .try_into()
        .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&secret))
}

/// The libp2p identity of a key read by [`read_key_file`].
pub fn keypair_of(key: &ed25519_dalek::SigningKey) -> anyhow::Result<Keypair> {
    Keypair::ed25519_from_bytes(key.to_bytes()).map_err(|e| anyhow::anyhow!("key: {e}"))
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The PeerId of a ledger author (same ed25519 key).
pub fn peer_of(author: &Author) -> Option<PeerId> {
    let pk = tarn_net::identity::ed25519::PublicKey::try_from_bytes(&author.0).ok()?;
    Some(tarn_net::PublicKey::from(pk).to_peer_id())
}

/// The ledger author behind a PeerId (`None` for a key that is not ed25519).
pub fn author_of(peer: &PeerId) -> Option<Author> {
    let hash = peer.as_ref();
    // An ed25519 PeerId is the identity multihash of the key's encoding.
    if hash.code() != 0 {
        return None;
    }
    let key = tarn_net::PublicKey::try_decode_protobuf(hash.digest())
        .ok()?
        .try_into_ed25519()
        .ok()?;
    Some(Author(key.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_and_authors_name_the_same_key() {
        let author = Author([9; 32]);
        let peer = peer_of(&author).unwrap();
        assert_eq!(author_of(&peer), Some(author));
        assert_eq!(peer.to_string(), tarn_ledger::member::peer_id_of(&author));
    }
}
