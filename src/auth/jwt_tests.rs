use base64::Engine as _;

use super::*;

/// How a JWS part is encoded, for forging tokens by hand.
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn setup() -> (tempfile::TempDir, LocalJwtKey, LocalJwtAuthenticator) {
    let dir = tempfile::tempdir().unwrap();
    let key = LocalJwtKey::load_or_create(dir.path()).unwrap();
    let auth = key.authenticator(vec!["palisade-ca".into()]);
    (dir, key, auth)
}

fn id() -> Identity {
    Identity::new("default", "web").unwrap()
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn racing_key_creation_yields_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let keys: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| LocalJwtKey::load_or_create(&state).unwrap()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().key.public_key().as_ref().to_vec())
            .collect()
    });
    assert!(keys.windows(2).all(|w| w[0] == w[1]));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "a state dir we create is private");
    assert_eq!(
        std::fs::read_dir(&state).unwrap().count(),
        1,
        "temp files cleaned up"
    );
}

#[test]
fn valid_token_is_its_identity() {
    let (_d, key, auth) = setup();
    let token = key
        .issue(&id(), "palisade-ca", HOUR, SystemTime::now())
        .unwrap();
    assert_eq!(auth.verify(&token, SystemTime::now()).unwrap(), id());
}

#[test]
fn key_is_persisted_private_and_reused() {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, key, _) = setup();
    let mode = std::fs::metadata(dir.path().join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = LocalJwtKey::load_or_create(dir.path()).unwrap();
    let token = key
        .issue(&id(), "palisade-ca", HOUR, SystemTime::now())
        .unwrap();
    let auth = again.authenticator(vec!["palisade-ca".into()]);
    assert!(auth.verify(&token, SystemTime::now()).is_ok());
}

fn rejected(auth: &LocalJwtAuthenticator, token: &str, now: SystemTime) -> String {
    match auth.verify(token, now) {
        Err(AuthError::Unauthenticated(m)) => m,
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
}

#[test]
fn wrong_audience_expired_and_not_yet_valid() {
    let (_d, key, auth) = setup();
    let now = SystemTime::now();
    let other_aud = key.issue(&id(), "someone-else", HOUR, now).unwrap();
    assert!(rejected(&auth, &other_aud, now).contains("audience"));
    let token = key.issue(&id(), "palisade-ca", HOUR, now).unwrap();
    assert!(rejected(&auth, &token, now + 2 * HOUR).contains("expired"));
    assert!(rejected(&auth, &token, now - HOUR).contains("not yet valid"));
}

#[test]
fn foreign_key_and_tampering_are_rejected() {
    let (_d, _key, auth) = setup();
    let (_d2, other, _) = setup();
    let now = SystemTime::now();
    let foreign = other.issue(&id(), "palisade-ca", HOUR, now).unwrap();
    assert!(rejected(&auth, &foreign, now).contains("signature"));
    // Swap in claims for another identity, keeping the original signature.
    let (_d3, key, auth3) = setup();
    let good = key.issue(&id(), "palisade-ca", HOUR, now).unwrap();
    let evil = key.issue(
        &Identity::new("kube-system", "admin").unwrap(),
        "palisade-ca",
        HOUR,
        now,
    );
    let evil = evil.unwrap();
    let g: Vec<&str> = good.split('.').collect();
    let e: Vec<&str> = evil.split('.').collect();
    let spliced = format!("{}.{}.{}", g[0], e[1], g[2]);
    assert!(rejected(&auth3, &spliced, now).contains("signature"));
}

#[test]
fn algorithm_is_pinned() {
    let (_d, key, auth) = setup();
    let now = SystemTime::now();
    let token = key.issue(&id(), "palisade-ca", HOUR, now).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    for alg in ["none", "HS256", "RS256", "es256"] {
        let header = B64.encode(format!("{{\"alg\":\"{alg}\"}}"));
        let forged = format!("{header}.{}.{}", parts[1], parts[2]);
        assert!(rejected(&auth, &forged, now).contains("algorithm"), "{alg}");
    }
    let unsigned = format!("{}.{}.", B64.encode("{\"alg\":\"none\"}"), parts[1]);
    assert!(auth.verify(&unsigned, now).is_err());
}

#[test]
fn malformed_tokens_are_rejected() {
    let (_d, _key, auth) = setup();
    let now = SystemTime::now();
    for t in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!.!!.!!",
        &"a".repeat(super::super::MAX_TOKEN_BYTES + 1),
    ] {
        assert!(
            matches!(auth.verify(t, now), Err(AuthError::Unauthenticated(_))),
            "{t:.20}"
        );
    }
}

#[test]
fn non_service_account_subject_is_rejected() {
    let (_d, key, auth) = setup();
    let now = unix_secs(SystemTime::now());
    let claims = serde_json::json!({"iss": ISSUER, "sub": "admin", "aud": ["palisade-ca"],
        "exp": now + 600, "nbf": now, "iat": now});
    let input = format!(
        "{}.{}",
        B64.encode("{\"alg\":\"ES256\"}"),
        B64.encode(claims.to_string())
    );
    let sig = key
        .key
        .sign(&SystemRandom::new(), input.as_bytes())
        .unwrap();
    let token = format!("{input}.{}", B64.encode(sig.as_ref()));
    assert!(rejected(&auth, &token, SystemTime::now()).contains("serviceaccount"));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// No string is accepted that the key did not sign, and none panics the verifier.
        #[test]
        fn arbitrary_tokens_never_authenticate(token in "[A-Za-z0-9_.=-]{0,600}") {
            let (_d, _key, auth) = setup();
            prop_assert!(auth.verify(&token, SystemTime::now()).is_err());
        }
    }
}
