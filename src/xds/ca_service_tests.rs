//! Status-code mapping of CreateCertificate, called directly (no network): every refusal kind.

use std::time::{Duration, SystemTime};

use super::*;
use crate::ca::authority::generate_root;
use crate::ca::{IssuancePolicy, SigningCa, TrustBundle, pem};
use crate::metrics::CaMetrics;

fn md(value: &str) -> MetadataMap {
    let mut m = MetadataMap::new();
    m.insert("authorization", value.parse().unwrap());
    m
}

#[test]
fn bearer_parsing() {
    assert_eq!(bearer_token(&md("Bearer abc")), Some(Ok("abc")));
    assert_eq!(bearer_token(&md("bearer  abc ")), Some(Ok("abc")));
    assert!(matches!(bearer_token(&md("Basic abc")), Some(Err(_))));
    assert!(matches!(bearer_token(&md("abc")), Some(Err(_))));
    assert_eq!(bearer_token(&MetadataMap::new()), None);
}

/// Answers by token: "ok" is default/web, "down" is Unavailable, "busy" is Exhausted, the rest
/// Unauthenticated.
struct Fake;

#[async_trait::async_trait]
impl Authenticator for Fake {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        match token {
            "ok" => Ok(Identity::new("default", "web").unwrap()),
            "down" => Err(AuthError::Unavailable("apiserver 503".into())),
            "busy" => Err(AuthError::Exhausted),
            _ => Err(AuthError::Unauthenticated("secret detail".into())),
        }
    }
}

fn service(root_created: SystemTime) -> (CaService, CaMetrics) {
    let (key, cert) = generate_root(root_created).unwrap();
    let der = pem::parse_certs(cert.as_bytes()).unwrap().remove(0);
    let ca = SigningCa::new(&key, der.clone(), vec![]).unwrap();
    let metrics = CaMetrics::default();
    let authority = Authority::new(
        ca,
        TrustBundle::new(der),
        IssuancePolicy::default(),
        metrics.clone(),
    );
    (CaService::new(Arc::new(authority), Arc::new(Fake)), metrics)
}

fn csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

fn request(token: Option<&str>, csr: String, ttl: i64) -> Request<IstioCertificateRequest> {
    let mut req = Request::new(IstioCertificateRequest {
        csr,
        validity_duration: ttl,
        metadata: None,
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

async fn code(svc: &CaService, req: Request<IstioCertificateRequest>) -> (tonic::Code, String) {
    match svc.create_certificate(req).await {
        Ok(_) => (tonic::Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

#[tokio::test]
async fn every_refusal_maps_to_its_status() {
    let (svc, metrics) = service(SystemTime::now());
    use tonic::Code::*;
    assert_eq!(code(&svc, request(Some("ok"), csr(), 0)).await.0, Ok);
    for (token, want) in [
        (None, Unauthenticated),
        (Some("bad"), Unauthenticated),
        (Some("down"), Unavailable),
        (Some("busy"), ResourceExhausted),
    ] {
        let (got, message) = code(&svc, request(token, csr(), 0)).await;
        assert_eq!(got, want, "{token:?}");
        assert!(
            !message.contains("secret detail"),
            "details stay in the log"
        );
    }
    let (got, message) = code(&svc, request(Some("bad"), csr(), 0)).await;
    assert_eq!(
        (got, message.as_str()),
        (Unauthenticated, "unauthenticated")
    );
    let mut basic = request(None, csr(), 0);
    basic
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_eq!(code(&svc, basic).await.0, Unauthenticated);
    for (csr, ttl) in [("junk".to_string(), 0), (csr(), 91 * 24 * 3600)] {
        assert_eq!(
            code(&svc, request(Some("ok"), csr, ttl)).await.0,
            InvalidArgument
        );
    }
    let refused = |r: &str| {
        metrics
            .refused
            .get_or_create(&crate::metrics::ReasonLabel { reason: r.into() })
            .get()
    };
    let counts = (
        refused("unauthenticated"),
        refused("auth_unavailable"),
        refused("shed"),
        refused("ttl_over_max"),
    );
    assert_eq!(counts, (4, 1, 1, 1));
    assert_eq!(metrics.issued.get(), 1);
}

#[tokio::test]
async fn server_side_failures_are_internal_without_details() {
    // A root past its end: issuance fails on our side, not the caller's.
    let (svc, _) = service(SystemTime::now() - Duration::from_secs(3653 * 24 * 3600));
    let (got, message) = code(&svc, request(Some("ok"), csr(), 0)).await;
    assert_eq!(
        (got, message.as_str()),
        (tonic::Code::Internal, "internal error")
    );
}
