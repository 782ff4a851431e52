//! Standalone-mode tokens: compact JWS with ES256 only (the algorithm is pinned: the header
//! must say ES256, so `none` / HMAC confusion is impossible), signed by a P-256 key kept in the
//! state directory. `palisade token` issues them; [`LocalJwtAuthenticator`] verifies them.
//!
//! The JWS itself (encoding, the algorithm pin, the signature, `iss`, `aud` and the presence of
//! every claim) is `jsonwebtoken` with its aws-lc-rs backend. `exp` and `nbf` are checked here
//! against the caller's clock: `jsonwebtoken` reads the system clock inside `decode` (there is
//! no way to pass the time), which would leave expiry untestable at a chosen instant.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::{Deserialize, Serialize};

use super::{AuthError, Authenticator, Identity, check_token_size};
use crate::ca::authority::unix_secs;
use crate::ca::pem;
use crate::ca::store::{create_private_dir, publish_private_once, read_bounded};

/// `iss` of standalone tokens.
pub const ISSUER: &str = "palisade-standalone";
/// File name of the signing key in the state directory.
pub const KEY_FILE: &str = "token-signing-key.pem";
/// The one accepted algorithm.
const ALG: Algorithm = Algorithm::ES256;
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: i64 = 30;

/// Why the token key could not be used or a token not made.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("token signing key {path}: {msg}")]
    Key { path: PathBuf, msg: String },
    #[error("signing a token failed")]
    Sign,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Audience,
    exp: i64,
    nbf: i64,
    iat: i64,
}

/// The standalone token-signing key (ECDSA P-256, PKCS#8 PEM, 0600 in the state directory).
pub struct LocalJwtKey {
    /// Checked to be a P-256 key when loaded; its public half verifies.
    key: EcdsaKeyPair,
    /// The same key, as `jsonwebtoken` signs with it (PKCS#8 DER).
    encoding: EncodingKey,
}

impl LocalJwtKey {
    /// Loads `<state_dir>/token-signing-key.pem`, creating it on first use. Two processes
    /// creating at once both end up with the one file that was published first, and neither
    /// can read a half-written key.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, JwtError> {
        let path = state_dir.join(KEY_FILE);
        let err = |msg: String| JwtError::Key {
            path: path.clone(),
            msg,
        };
        if !path.exists() {
            create_private_dir(state_dir).map_err(|e| err(e.to_string()))?;
            let doc = EcdsaKeyPair::generate_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &SystemRandom::new(),
            )
            .map_err(|_| err("key generation failed".into()))?;
            let text = pem::encode("PRIVATE KEY", doc.as_ref());
            // Losing the race (false) means another process published first: use theirs.
            publish_private_once(&path, text.as_bytes()).map_err(|e| err(e.to_string()))?;
        }
        let text = read_bounded(&path).map_err(|e| err(e.to_string()))?;
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes())
            .map_err(|e| err(e.to_string()))?;
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der())
                .map_err(|e| err(format!("not a P-256 PKCS#8 key: {e}")))?;
        let encoding = EncodingKey::from_ec_der(der.secret_pkcs8_der());
        Ok(Self { key, encoding })
    }

    /// Issues a token for `identity`, valid for `ttl` from `now`, for `audience`.
    pub fn issue(
        &self,
        identity: &Identity,
        audience: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, JwtError> {
        let now = unix_secs(now);
        let claims = Claims {
            iss: ISSUER.into(),
            sub: identity.username(),
            aud: Audience::One(audience.into()),
            exp: now + ttl.as_secs() as i64,
            nbf: now,
            iat: now,
        };
        jsonwebtoken::encode(&jsonwebtoken::Header::new(ALG), &claims, &self.encoding)
            .map_err(|_| JwtError::Sign)
    }

    /// An authenticator accepting this key's tokens for `audiences`.
    pub fn authenticator(&self, audiences: Vec<String>) -> LocalJwtAuthenticator {
        let mut validation = Validation::new(ALG);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&audiences);
        validation.set_required_spec_claims(&["iss", "sub", "aud", "exp", "nbf"]);
        // Checked in `verify` against the caller's clock (see the module comment).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        LocalJwtAuthenticator {
            public_key: DecodingKey::from_ec_der(self.key.public_key().as_ref()),
            validation,
        }
    }
}

/// Verifies standalone tokens: ES256 signature by the state-dir key, `iss`, `aud` (one of the
/// configured audiences), `exp` and `nbf` (30 s leeway), and a ServiceAccount `sub`.
#[derive(Clone)]
pub struct LocalJwtAuthenticator {
    public_key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for LocalJwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalJwtAuthenticator")
            .field("audiences", &self.validation.aud)
            .finish_non_exhaustive()
    }
}

impl LocalJwtAuthenticator {
    /// Verifies `token` at time `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, AuthError> {
        let bad = |m: &str| AuthError::Unauthenticated(format!("local token: {m}"));
        check_token_size(token)?;
        // The header first, to say why a token with another algorithm is refused (jsonwebtoken
        // does not parse an `alg` it does not know, such as `none`).
        match jsonwebtoken::decode_header(token) {
            Ok(header) if header.alg == ALG => {}
            Ok(header) => return Err(bad(&format!("algorithm {:?} is not ES256", header.alg))),
            Err(_) => return Err(bad("malformed header, or an algorithm other than ES256")),
        }
        use jsonwebtoken::errors::ErrorKind;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.public_key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => bad("signature does not verify"),
                ErrorKind::InvalidAlgorithm => bad("algorithm is not ES256"),
                ErrorKind::InvalidIssuer => bad("wrong issuer"),
                ErrorKind::InvalidAudience => bad("wrong audience"),
                ErrorKind::MissingRequiredClaim(claim) => bad(&format!("no {claim} claim")),
                _ => bad("malformed token"),
            })?
            .claims;
        let now = unix_secs(now);
        if now >= claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(bad("expired"));
        }
        if now.saturating_add(LEEWAY_SECS) < claims.nbf {
            return Err(bad("not yet valid"));
        }
        Identity::from_username(&claims.sub).map_err(|e| bad(&e.to_string()))
    }
}

#[async_trait::async_trait]
impl Authenticator for LocalJwtAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify(token, SystemTime::now())
    }
}

use rustls_pki_types::pem::PemObject as _;

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
