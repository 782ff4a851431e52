//! Standalone-mode tokens: compact JWS with ES256 only (the algorithm is pinned: the header
//! must say ES256, so `none` / HMAC confusion is impossible), signed by a P-256 key kept in the
//! state directory. `palisade token` issues them; [`LocalJwtAuthenticator`] verifies them.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use base64::Engine as _;
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
const ALG: &str = "ES256";
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: i64 = 30;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why the token key could not be used or a token not made.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("token signing key {path}: {msg}")]
    Key { path: PathBuf, msg: String },
    #[error("signing a token failed")]
    Sign,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
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
    key: EcdsaKeyPair,
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
        Ok(Self { key })
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
        let header = Header {
            alg: ALG.into(),
            typ: Some("JWT".into()),
        };
        let claims = Claims {
            iss: ISSUER.into(),
            sub: identity.username(),
            aud: Audience::One(audience.into()),
            exp: now + ttl.as_secs() as i64,
            nbf: now,
            iat: now,
        };
        let signing_input = format!("{}.{}", b64_json(&header), b64_json(&claims));
        let sig = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| JwtError::Sign)?;
        Ok(format!("{signing_input}.{}", B64.encode(sig.as_ref())))
    }

    /// An authenticator accepting this key's tokens for `audiences`.
    pub fn authenticator(&self, audiences: Vec<String>) -> LocalJwtAuthenticator {
        LocalJwtAuthenticator {
            public_key: self.key.public_key().as_ref().to_vec(),
            audiences,
        }
    }
}

/// base64url(JSON) of a token part; serializing these plain structs cannot fail.
fn b64_json<T: Serialize>(value: &T) -> String {
    B64.encode(serde_json::to_vec(value).unwrap_or_default())
}

/// Verifies standalone tokens: ES256 signature by the state-dir key, `iss`, `aud` (one of the
/// configured audiences), `exp` and `nbf` (30 s leeway), and a ServiceAccount `sub`.
#[derive(Clone, Debug)]
pub struct LocalJwtAuthenticator {
    public_key: Vec<u8>,
    audiences: Vec<String>,
}

impl LocalJwtAuthenticator {
    /// Verifies `token` at time `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, AuthError> {
        let bad = |m: &str| AuthError::Unauthenticated(format!("local token: {m}"));
        check_token_size(token)?;
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a compact JWS"));
        };
        let header: Header = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| bad("malformed header"))?;
        if header.alg != ALG {
            return Err(bad(&format!("algorithm {:?} is not {ALG}", header.alg)));
        }
        let sig = B64.decode(s).map_err(|_| bad("malformed signature"))?;
        let signing_input = &token[..h.len() + 1 + p.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public_key)
            .verify(signing_input.as_bytes(), &sig)
            .map_err(|_| bad("signature does not verify"))?;
        let claims: Claims = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| bad("malformed claims"))?;
        if claims.iss != ISSUER {
            return Err(bad("wrong issuer"));
        }
        let auds = match &claims.aud {
            Audience::One(a) => std::slice::from_ref(a),
            Audience::Many(v) => v.as_slice(),
        };
        if !auds.iter().any(|a| self.audiences.contains(a)) {
            return Err(bad("wrong audience"));
        }
        let now = unix_secs(now);
        if now >= claims.exp + LEEWAY_SECS {
            return Err(bad("expired"));
        }
        if now + LEEWAY_SECS < claims.nbf {
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
