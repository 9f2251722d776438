//! `tarn cert`: a small CA and server certificates for HTTPS on the REST
//! port, for installations without a CA of their own. The CA's key stays in
//! the directory, so one CA signs the certificate of every node: clients
//! trust `ca.pem` once (`--ca`, `TARN_CA`, `curl --cacert`).

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const CA_NAME: &str = "tarn CA";
/// Years a certificate is valid.
const YEARS: i32 = 10;

/// Writes `ca.pem`/`ca.key` (made on first use, reused after) and
/// `<host>.pem`/`<host>.key` for the names and addresses in `hosts` (the
/// first names the files), and prints the flags that use them.
pub fn cert(dir: &Path, hosts: &[String], out: &mut impl Write) -> anyhow::Result<()> {
    let first = hosts.first().context("--host names at least one host")?;
    for h in hosts {
        let ok = !h.is_empty()
            && h.len() <= 253
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '*'));
        anyhow::ensure!(ok, "--host {h:?} is not a host name or an IP address");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_cert, ca_key) = ca(dir)?;
    let file = first.replace([':', '*'], "_");
    let (cert_path, key_path) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    anyhow::ensure!(
        !cert_path.exists() && !key_path.exists(),
        "{} exists; certificates are never overwritten",
        cert_path.display()
    );
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params.distinguished_name = name(first);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem())?;
    writeln!(
        out,
        "tarn node --tls-cert {} --tls-key {}",
        cert_path.display(),
        key_path.display()
    )?;
    writeln!(
        out,
        "clients: --ca {0} (or TARN_CA={0}, curl --cacert {0})",
        dir.join("ca.pem").display()
    )?;
    Ok(())
}

/// The directory's CA: its key read back (and its certificate rebuilt with
/// the same name and key, which is all signing needs), or both made now.
fn ca(dir: &Path) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let key = match std::fs::read_to_string(&key_path) {
        Ok(pem) => KeyPair::from_pem(&pem).with_context(|| format!("{}", key_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate()?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            key
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", key_path.display())),
    };
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params);
    let cert = params.self_signed(&key)?;
    if !cert_path.exists() {
        std::fs::write(&cert_path, cert.pem())?;
    }
    Ok((cert, key))
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn
}

/// From the start of this year for [`YEARS`].
fn validity(params: &mut CertificateParams) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Close enough to the calendar year for a start date.
    let year = 1970 + (secs / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + YEARS, 1, 1);
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}
