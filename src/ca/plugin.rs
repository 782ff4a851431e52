//! Plug-in CA: an intermediate (with its key and chain to an external root) supplied by the
//! operator, in Istio's `cacerts` layout or cert-manager's `tls.crt`/`tls.key`/`ca.crt`.
//! The material is validated when loaded, so a wrong file fails the start with a clear error
//! rather than producing certificates nobody can verify.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::authority::{CaError, SigningCa, asn1_to_system_time, check_is_ca};
use super::bundle::TrustBundle;
use super::keys;
use super::pem;

/// Name of the Istio-style plug-in CA Secret.
pub const SECRET_NAME: &str = "cacerts";
/// Longest chain walked from the signing certificate to the root.
const MAX_CHAIN_DEPTH: usize = 8;
/// No CA file is anywhere near this.
const MAX_FILE_BYTES: usize = 1024 * 1024;

/// Why plug-in CA material was refused.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(
        "plug-in CA: need ca-cert.pem + ca-key.pem + root-cert.pem (+ cert-chain.pem) or \
         tls.crt + tls.key + ca.crt; found {0:?}"
    )]
    Layout(Vec<String>),
    #[error("plug-in CA file {file}: {msg}")]
    File { file: String, msg: String },
    #[error("plug-in CA: {0}")]
    Ca(#[from] CaError),
    #[error("plug-in CA chain does not verify: {0}")]
    Chain(String),
    #[error("plug-in CA certificate {subject:?} is not valid now (valid {from:?} .. {until:?})")]
    NotValidNow {
        subject: String,
        from: SystemTime,
        until: SystemTime,
    },
}

/// A loaded and validated plug-in CA.
pub struct PluginCa {
    pub signing: SigningCa,
    pub bundle: TrustBundle,
}

struct Layout {
    cert: &'static str,
    key: &'static str,
    chain: Option<&'static str>,
    root: &'static str,
}

const ISTIO: Layout = Layout {
    cert: "ca-cert.pem",
    key: "ca-key.pem",
    chain: Some("cert-chain.pem"),
    root: "root-cert.pem",
};
const CERT_MANAGER: Layout = Layout {
    cert: "tls.crt",
    key: "tls.key",
    chain: None,
    root: "ca.crt",
};

fn text<'a>(files: &'a BTreeMap<String, Vec<u8>>, name: &str) -> Result<&'a [u8], PluginError> {
    let data = files.get(name).ok_or_else(|| PluginError::File {
        file: name.into(),
        msg: "missing".into(),
    })?;
    if data.len() > MAX_FILE_BYTES {
        return Err(PluginError::File {
            file: name.into(),
            msg: "larger than 1 MiB".into(),
        });
    }
    Ok(data)
}

fn certs(
    files: &BTreeMap<String, Vec<u8>>,
    name: &str,
) -> Result<Vec<CertificateDer<'static>>, PluginError> {
    let certs = pem::parse_certs(text(files, name)?).map_err(|msg| PluginError::File {
        file: name.into(),
        msg,
    })?;
    if certs.is_empty() {
        return Err(PluginError::File {
            file: name.into(),
            msg: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, PluginError> {
    X509Certificate::from_der(der.as_ref())
        .map(|(_, c)| c)
        .map_err(|e| PluginError::Chain(format!("unparseable certificate: {e}")))
}

/// Whether `issuer` issued `cert`: names match and the signature verifies with its key.
fn issued_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && keys::verify_signature(
            issuer.public_key(),
            &cert.signature_algorithm,
            cert.tbs_certificate.as_ref(),
            &cert.signature_value.data,
        )
        .is_ok()
}

/// Validates and loads plug-in CA material given as file name -> contents (a Secret's data or a
/// directory's files).
pub fn load(files: &BTreeMap<String, Vec<u8>>, now: SystemTime) -> Result<PluginCa, PluginError> {
    let layout = [&ISTIO, &CERT_MANAGER]
        .into_iter()
        .find(|l| files.contains_key(l.cert) && files.contains_key(l.key))
        .ok_or_else(|| PluginError::Layout(files.keys().cloned().collect()))?;
    let mut leaf_and_rest = certs(files, layout.cert)?;
    let signing = leaf_and_rest.remove(0);
    let key_pem = std::str::from_utf8(text(files, layout.key)?).map_err(|_| PluginError::File {
        file: layout.key.into(),
        msg: "not UTF-8".into(),
    })?;
    let roots = certs(files, layout.root)?;
    let mut candidates = leaf_and_rest;
    if let Some(chain) = layout.chain.filter(|c| files.contains_key(*c)) {
        candidates.extend(certs(files, chain)?);
    }
    candidates.retain(|c| c != &signing && !roots.contains(c));

    // Walk up from the signing certificate until a root signs the current certificate.
    let mut path: Vec<CertificateDer<'static>> = Vec::new();
    let mut current = signing.clone();
    let root = loop {
        if path.len() > MAX_CHAIN_DEPTH {
            return Err(PluginError::Chain(format!("longer than {MAX_CHAIN_DEPTH}")));
        }
        let cur = parse(&current)?;
        check_valid_now(&cur, now)?;
        if let Some(root) = roots
            .iter()
            .find(|r| parse(r).is_ok_and(|r| issued_by(&cur, &r)))
        {
            break root.clone();
        }
        let next = candidates
            .iter()
            .find(|c| parse(c).is_ok_and(|c| issued_by(&cur, &c)))
            .cloned()
            .ok_or_else(|| {
                PluginError::Chain(format!(
                    "no certificate in the chain or root file issued {:?}",
                    cur.subject().to_string()
                ))
            })?;
        check_is_ca(&parse(&next)?)?;
        path.push(next.clone());
        current = next;
    };
    let root_x509 = parse(&root)?;
    check_valid_now(&root_x509, now)?;
    check_is_ca(&root_x509)?;
    path.push(root.clone());
    let signing = SigningCa::new(key_pem, signing, path)?;
    let mut bundle = TrustBundle::default();
    for r in roots {
        bundle
            .add(r)
            .map_err(|e| PluginError::Chain(e.to_string()))?;
    }
    Ok(PluginCa { signing, bundle })
}

fn check_valid_now(cert: &X509Certificate<'_>, now: SystemTime) -> Result<(), PluginError> {
    let from = asn1_to_system_time(cert.validity().not_before);
    let until = asn1_to_system_time(cert.validity().not_after);
    if now < from || now >= until {
        return Err(PluginError::NotValidNow {
            subject: cert.subject().to_string(),
            from,
            until,
        });
    }
    Ok(())
}

/// Reads the plug-in files present in `dir` (standalone mode); `None` when there are none.
pub fn read_dir(dir: &Path) -> Result<Option<BTreeMap<String, Vec<u8>>>, PluginError> {
    let mut files = BTreeMap::new();
    for l in [&ISTIO, &CERT_MANAGER] {
        for name in [Some(l.cert), Some(l.key), l.chain, Some(l.root)]
            .into_iter()
            .flatten()
        {
            let path = dir.join(name);
            if path.exists() {
                let data = super::store::read_bounded(&path).map_err(|e| PluginError::File {
                    file: name.into(),
                    msg: e.to_string(),
                })?;
                files.insert(name.to_string(), data.into_bytes());
            }
        }
    }
    Ok((!files.is_empty()).then_some(files))
}

/// Reads the `cacerts` Secret in `namespace`; `None` when it does not exist.
pub async fn read_secret(
    client: kube::Client,
    namespace: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, PluginError> {
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client, namespace);
    let secret = api
        .get_opt(SECRET_NAME)
        .await
        .map_err(|e| PluginError::File {
            file: format!("Secret {namespace}/{SECRET_NAME}"),
            msg: e.to_string(),
        })?;
    Ok(secret.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }))
}

#[cfg(test)]
#[path = "plugin_tests.rs"]
mod tests;
