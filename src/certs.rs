//! `raftfs certs --config cluster.toml --out DIR`: a cluster CA and one
//! certificate per node for mutual TLS (`net::tls`), made with rcgen.
//!
//! Writes `DIR/ca.pem` + `DIR/ca.key`, `DIR/node-<id>.pem` +
//! `DIR/node-<id>.key` for every `[[node]]`, and `DIR/client.pem` +
//! `DIR/client.key` for the tools (`raftfs status`, `member`, `client`
//! against ports that require a client certificate).
//!
//! With `ca.pem` and `ca.key` already in DIR, only the missing node (and
//! client) files are made, signed by that CA: a member added later gets its
//! certificate without touching the others.
//!
//! Invariants: a node certificate names its node (SAN DNS
//! `node-<id>.raftfs`, which peer links check) and every host of its
//! addresses (client, peer, metrics and listen addresses, as written and as
//! resolved; unspecified addresses such as 0.0.0.0 are left out), and is
//! valid for both server and client authentication. Keys are written with
//! mode 0600. No existing file is ever overwritten unless `force`
//! (which makes a new CA and every file); every file is checked before the
//! first is written.

use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::limits;
use crate::net::tls::{host_of, node_name};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The DNS name of the tools' certificate (`client.pem`).
pub const CLIENT_NAME: &str = "client.raftfs";

/// Makes the files in `out`; returns the paths written. When `out` already
/// holds `ca.pem` and `ca.key` (and not `force`), that CA signs the
/// certificates of the nodes that have none yet (a member added later) and
/// nothing existing is touched.
pub fn run(config: &ClusterConfig, out: &Path, force: bool) -> Result<Vec<PathBuf>> {
    let mut names = vec!["client".to_string()];
    names.extend(config.members.iter().map(|m| format!("node-{}", m.id)));
    let pair = |name: &str| {
        (
            out.join(format!("{name}.pem")),
            out.join(format!("{name}.key")),
        )
    };
    let (ca_pem_path, ca_key_path) = pair("ca");
    let reuse_ca = !force && ca_pem_path.exists() && ca_key_path.exists();
    if !force {
        if !reuse_ca {
            names.insert(0, "ca".to_string());
        }
        let mut missing = Vec::new();
        for name in names {
            let (cert, key) = pair(&name);
            match (cert.exists(), key.exists()) {
                (false, false) => missing.push(name),
                (true, true) if reuse_ca => {}
                (true, _) => return Err(refusing(&cert)),
                (false, true) => return Err(refusing(&key)),
            }
        }
        if missing.is_empty() {
            return Err(Error::Config(format!(
                "every file already exists in {}: nothing to make (--force replaces them all, \
                 with a new CA)",
                out.display()
            )));
        }
        names = missing;
    } else {
        names.insert(0, "ca".to_string());
    }
    std::fs::create_dir_all(out)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", out.display())))?;

    let failed = |what: &str, e: rcgen::Error| Error::Config(format!("cannot make {what}: {e}"));
    let ca_key = if reuse_ca {
        let text = std::fs::read_to_string(&ca_key_path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", ca_key_path.display())))?;
        KeyPair::from_pem(&text).map_err(|e| {
            Error::Config(format!(
                "{}: not a usable CA key: {e}",
                ca_key_path.display()
            ))
        })?
    } else {
        KeyPair::generate().map_err(|e| failed("the CA key", e))?
    };
    let ca_params = ca_params().map_err(|e| failed("the CA certificate", e))?;
    let mut written = Vec::new();
    if !reuse_ca {
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|e| failed("the CA certificate", e))?;
        write_pair(
            out,
            "ca",
            &ca_cert.pem(),
            &ca_key.serialize_pem(),
            &mut written,
        )?;
    }
    // The issuer is the CA's name, key usages and key: what `raftfs certs`
    // made it with, so a reused CA (ca.key) signs the same way.
    let issuer = Issuer::new(ca_params, &ca_key);
    let mut leaf = |name: &str, common_name: &str, sans: Vec<String>| -> Result<()> {
        let key = KeyPair::generate().map_err(|e| failed(name, e))?;
        let mut params = CertificateParams::new(sans).map_err(|e| failed(name, e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| failed(name, e))?;
        write_pair(out, name, &cert.pem(), &key.serialize_pem(), &mut written)
    };
    if names.iter().any(|name| name == "client") {
        leaf("client", CLIENT_NAME, vec![CLIENT_NAME.to_string()])?;
    }
    for member in &config.members {
        let file = format!("node-{}", member.id);
        if names.contains(&file) {
            leaf(&file, &node_name(member.id), node_sans(member))?;
        }
    }
    Ok(written)
}

fn refusing(path: &Path) -> Error {
    Error::Config(format!(
        "{} exists: refusing to overwrite it (--force replaces every file, with a new CA)",
        path.display()
    ))
}

/// The cluster CA's parameters (a made CA and a reused one alike).
fn ca_params() -> std::result::Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "raftfs cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    Ok(params)
}

/// The names a member's certificate carries: its node name, then each host
/// of its addresses (as written and resolved), without duplicates.
pub fn node_sans(member: &crate::config::Member) -> Vec<String> {
    let mut sans = vec![node_name(member.id)];
    let mut add = |host: String| {
        let unspecified = host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        if !host.is_empty() && !unspecified && !sans.contains(&host) {
            sans.push(host);
        }
    };
    add(host_of(&member.client).to_string());
    for address in [
        Some(member.listen_client),
        Some(member.peer),
        Some(member.listen_peer),
        member.metrics,
    ]
    .into_iter()
    .flatten()
    {
        add(address.ip().to_string());
    }
    if let Ok(resolved) = std::net::ToSocketAddrs::to_socket_addrs(member.client.as_str()) {
        for address in resolved {
            add(address.ip().to_string());
        }
    }
    sans
}

/// From January 1st of last year (clock skew between hosts) to
/// `CERT_VALIDITY_YEARS` later.
fn set_validity(params: &mut CertificateParams) {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    let year = 1970 + (days as f64 / 365.2425) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + limits::CERT_VALIDITY_YEARS, 1, 1);
}

fn write_pair(
    out: &Path,
    name: &str,
    cert_pem: &str,
    key_pem: &str,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}.key"));
    write_file(&cert_path, cert_pem.as_bytes(), 0o644)?;
    write_file(&key_path, key_pem.as_bytes(), 0o600)?;
    written.push(cert_path);
    written.push(key_path);
    Ok(())
}

/// Writes `bytes` to `path` with `mode` (also when it replaces a file).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |e: std::io::Error| Error::Config(format!("cannot write {}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(failed)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.sync_all().map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config() -> ClusterConfig {
        ClusterConfig::parse(
            "[[node]]\nid = 1\nclient = \"127.0.0.1:8080\"\npeer = \"127.0.0.2:9080\"\n\
             listen_client = \"0.0.0.0:8080\"\n",
        )
        .expect("parses")
    }

    #[test]
    fn makes_a_ca_and_node_certificates_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("certs");
        let written = run(&config(), &out, false).expect("made");
        assert_eq!(written.len(), 6);
        let mode = std::fs::metadata(out.join("node-1.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let cert = &crate::net::tls::load_certs(&out.join("node-1.pem")).expect("loads")[0];
        crate::net::tls::check_node_identity(cert, 1).expect("names node 1");
        assert!(crate::net::tls::check_node_identity(cert, 2).is_err());
        crate::net::tls::PeerTls::load(
            &out.join("ca.pem"),
            &out.join("node-1.pem"),
            &out.join("node-1.key"),
        )
        .expect("usable");
        let error = run(&config(), &out, false).unwrap_err().to_string();
        assert!(error.contains("nothing to make"), "{error}");
        assert!(!error.contains('\n'));
        std::fs::remove_file(out.join("node-1.key")).expect("remove");
        let error = run(&config(), &out, false).unwrap_err().to_string();
        assert!(
            error.contains("node-1.pem exists: refusing to overwrite"),
            "{error}"
        );
        assert_eq!(run(&config(), &out, true).expect("forced").len(), 6);
        // A member added later: the existing CA signs only its files.
        let ca_before = std::fs::read(out.join("ca.pem")).expect("ca");
        let node_1_before = std::fs::read(out.join("node-1.pem")).expect("node 1");
        let grown = ClusterConfig::parse(
            "[[node]]\nid = 1\nclient = \"127.0.0.1:8080\"\npeer = \"127.0.0.2:9080\"\n\
             [[node]]\nid = 2\nclient = \"127.0.0.1:8081\"\npeer = \"127.0.0.2:9081\"\n\
             [[node]]\nid = 3\nclient = \"127.0.0.1:8082\"\npeer = \"127.0.0.2:9082\"\n",
        )
        .expect("parses");
        let written = run(&grown, &out, false).expect("adds nodes 2 and 3");
        assert_eq!(written.len(), 4, "{written:?}");
        assert_eq!(std::fs::read(out.join("ca.pem")).expect("ca"), ca_before);
        assert_eq!(
            std::fs::read(out.join("node-1.pem")).expect("n1"),
            node_1_before
        );
        // Node 3's new certificate chains to the old CA: a TLS handshake
        // between node 1 (old) and node 3 (new) succeeds.
        handshake(&out, 1, 3);
    }

    /// Node `client`'s certificate dials node `server` in memory.
    fn handshake(out: &Path, client: u64, server: u64) {
        use crate::net::tls::{load_certs, load_key, load_roots};
        use rustls::pki_types::ServerName;
        let roots = load_roots(&out.join("ca.pem")).expect("roots");
        let file = |id: u64, ext: &str| out.join(format!("node-{id}.{ext}"));
        let provider = std::sync::Arc::new(
            #[allow(deprecated)]
            rustls::crypto::ring::default_provider(),
        );
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .expect("verifier");
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                load_certs(&file(server, "pem")).unwrap(),
                load_key(&file(server, "key")).unwrap(),
            )
            .expect("server config");
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(
                load_certs(&file(client, "pem")).unwrap(),
                load_key(&file(client, "key")).unwrap(),
            )
            .expect("client config");
        let name = ServerName::try_from(node_name(server)).expect("name");
        let mut client_side =
            rustls::ClientConnection::new(std::sync::Arc::new(client_config), name)
                .expect("client");
        let mut server_side =
            rustls::ServerConnection::new(std::sync::Arc::new(server_config)).expect("server");
        for _ in 0..10 {
            let mut bytes = Vec::new();
            client_side.write_tls(&mut bytes).expect("client writes");
            server_side.read_tls(&mut &bytes[..]).expect("server reads");
            server_side
                .process_new_packets()
                .expect("server accepts the client certificate");
            let mut bytes = Vec::new();
            server_side.write_tls(&mut bytes).expect("server writes");
            client_side.read_tls(&mut &bytes[..]).expect("client reads");
            client_side
                .process_new_packets()
                .expect("client accepts the server certificate");
        }
        assert!(!client_side.is_handshaking() && !server_side.is_handshaking());
    }

    #[test]
    fn node_names_cover_its_addresses_but_not_unspecified_ones() {
        let sans = node_sans(&config().members[0]);
        assert_eq!(sans, vec!["node-1.raftfs", "127.0.0.1", "127.0.0.2"]);
    }
}
