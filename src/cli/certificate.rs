//! `palisade certificate`: ask a running control plane for a workload certificate, as a proxy
//! would. For checking a CA by hand (does this token get a certificate, and with which identity?)
//! and for scripts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use crate::ca::client::{CaClient, ExpectedIdentity, KeyAlgorithm};

/// Largest token accepted from a file or stdin (a projected token is about 1 KiB).
const MAX_TOKEN_BYTES: u64 = 64 * 1024;
/// Largest trust bundle accepted (a bundle of a few roots is a few KiB).
const MAX_ROOT_BYTES: u64 = 1024 * 1024;

/// Request a workload certificate from a Palisade (or Istio-compatible) CA.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The CA's gRPC address, `host:port`.
    #[arg(long, default_value = "localhost:15012")]
    pub ca_addr: String,
    /// PEM file of the roots to trust for the CA's own certificate (`root-cert.pem`).
    #[arg(long, value_name = "FILE")]
    pub ca_root: PathBuf,
    /// Name the CA's serving certificate must carry (default: the host of `--ca-addr`).
    #[arg(long)]
    pub server_name: Option<String>,
    /// File holding the bearer token (`-` for stdin), e.g. the output of `palisade token`.
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// Key algorithm of the new workload key.
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,
    /// Requested lifetime (default: the CA's, 24h unless configured otherwise).
    #[arg(long, value_parser = super::duration::parse)]
    pub ttl: Option<Duration>,
    /// Trust domain the issued SPIFFE ID must belong to (the chain is refused otherwise).
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Write `key.pem` (0600) and `cert-chain.pem` here; without it, only the summary prints.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Key algorithms on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA P-256.
    EcdsaP256,
    /// ECDSA P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

/// Runs the request and prints the identity, serial and expiry of what was issued.
pub fn run(args: Args) -> anyhow::Result<()> {
    crate::server::install_crypto_provider();
    let root_pem = read_bounded(&args.ca_root, MAX_ROOT_BYTES, "CA root file")
        .with_context(|| format!("reading {}", args.ca_root.display()))?;
    let token = read_token(&args.token_file)?;
    let server_name = match &args.server_name {
        Some(name) => name.clone(),
        None => host_of(&args.ca_addr).to_string(),
    };
    let algorithm = match args.key_type {
        KeyType::EcdsaP256 => KeyAlgorithm::EcdsaP256,
        KeyType::EcdsaP384 => KeyAlgorithm::EcdsaP384,
        KeyType::Ed25519 => KeyAlgorithm::Ed25519,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let issued = runtime.block_on(async {
        let mut client = CaClient::connect(&args.ca_addr, &root_pem, &server_name).await?;
        let expected = ExpectedIdentity::AnyIn {
            trust_domain: args.trust_domain.clone(),
        };
        client.request(&token, algorithm, args.ttl, &expected).await
    })?;
    let leaf = CertificateDer::from_pem_slice(issued.chain_pem[0].as_bytes())
        .context("the CA's leaf certificate is not PEM")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| anyhow::anyhow!("the CA's leaf certificate does not parse: {e}"))?;
    let identities: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|name| name.to_string())
                .collect()
        })
        .unwrap_or_default();
    println!("identity:  {}", identities.join(", "));
    println!("serial:    {}", cert.raw_serial_as_string());
    println!("not after: {}", cert.validity().not_after);
    println!("chain:     {} certificates", issued.chain_pem.len());
    if let Some(dir) = &args.out_dir {
        write_files(dir, &issued.key_pem, &issued.chain_pem.concat())?;
        println!(
            "wrote:     {}/key.pem, {}/cert-chain.pem",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    }
}

/// Reads at most `max` bytes of `path` (`-`: stdin); more is an error naming `what`.
fn read_bounded(path: &Path, max: u64, what: &str) -> anyhow::Result<String> {
    let source: Box<dyn std::io::Read> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?)
    };
    match crate::read_text_limited(source, max).with_context(|| format!("reading the {what}"))? {
        Some(text) => Ok(text),
        None => bail!("the {what} is larger than {max} bytes"),
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = read_bounded(path, MAX_TOKEN_BYTES, "token")?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("the token file is empty");
    }
    Ok(token)
}

/// Writes `key.pem` and `cert-chain.pem` in `dir`. Each goes to a new temporary file in the
/// same directory (created exclusively, the key's with mode 0600 from its first byte), is
/// synced, then renamed over the old file: an existing `key.pem` of any mode, or a symlink in
/// its place, is replaced rather than written through, and a reader never sees half a file.
fn write_files(dir: &Path, key_pem: &str, chain_pem: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    replace_file(dir, "key.pem", key_pem.as_bytes(), 0o600)?;
    replace_file(dir, "cert-chain.pem", chain_pem.as_bytes(), 0o644)
}

/// Atomically replaces `dir/name` with `data`, created with `mode` (see [`write_files`]).
fn replace_file(dir: &Path, name: &str, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let target = dir.join(name);
    let mut random = [0u8; 8];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| anyhow::anyhow!("no randomness"))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", crate::hex(&random)));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &target));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", target.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_defaults_to_the_host() {
        assert_eq!(host_of("localhost:15012"), "localhost");
        assert_eq!(
            host_of("palisade.palisade-system.svc:15012"),
            "palisade.palisade-system.svc"
        );
        assert_eq!(host_of("[::1]:15012"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn tokens_are_bounded_and_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        std::fs::write(&path, "abc.def.ghi\n").expect("write");
        assert_eq!(read_token(&path).expect("reads"), "abc.def.ghi");
        std::fs::write(&path, "\n").expect("write");
        assert!(read_token(&path).is_err());
        std::fs::write(&path, vec![b'a'; (MAX_TOKEN_BYTES + 1) as usize]).expect("write");
        assert!(read_token(&path).is_err());
        std::fs::write(&path, vec![b'a'; (MAX_ROOT_BYTES + 1) as usize]).expect("write");
        let err = read_bounded(&path, MAX_ROOT_BYTES, "CA root file").expect_err("too large");
        assert!(err.to_string().contains("CA root file is larger"), "{err}");
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::symlink_metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn an_existing_world_readable_key_ends_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "old key").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_files(dir.path(), "new key", "chain").expect("writes");
        assert_eq!(std::fs::read_to_string(&key).expect("read"), "new key");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cert-chain.pem")).expect("read"),
            "chain"
        );
        // Nothing else is left behind (no temporary files).
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["cert-chain.pem", "key.pem"]);
    }

    #[test]
    fn a_symlinked_key_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "not a key").expect("write");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        std::os::unix::fs::symlink(&elsewhere, out.join("key.pem")).expect("symlink");
        write_files(&out, "new key", "chain").expect("writes");
        assert_eq!(
            std::fs::read_to_string(&elsewhere).expect("read"),
            "not a key"
        );
        assert!(
            !std::fs::symlink_metadata(out.join("key.pem"))
                .expect("exists")
                .is_symlink()
        );
        assert_eq!(mode(&out.join("key.pem")), 0o600);
    }
}
