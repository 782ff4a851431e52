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

#[test]
fn renewals_by_certificate_get_at_most_the_default_ttl() {
    let policy = IssuancePolicy::default();
    let (day, max) = (24 * 3600, 90 * 24 * 3600);
    use Credential::*;
    for (requested, credential, granted) in [
        (0, Token, 0),
        (max, Token, max),
        (3600, Token, 3600),
        (0, Certificate, 0),
        (3600, Certificate, 3600),
        (day, Certificate, day),
        (max, Certificate, day),
        (day + 1, Certificate, day),
        // Invalid or over the maximum: left for the authority to refuse, as for tokens.
        (-1, Certificate, -1),
        (max + 1, Certificate, max + 1),
    ] {
        assert_eq!(
            granted_ttl_secs(requested, credential, &policy),
            granted,
            "{requested} {credential:?}"
        );
    }
}

/// A plug-in style hierarchy: one root, our intermediate (signing) and a sibling under the same
/// root that is not ours.
struct Hierarchy {
    ours: SigningCa,
    sibling: SigningCa,
    root: rustls_pki_types::CertificateDer<'static>,
}

fn hierarchy() -> Hierarchy {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_params = |cn: &str| {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
        p.not_after = (SystemTime::now() + Duration::from_secs(365 * 24 * 3600)).into();
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("Root");
    let root = root_params.self_signed(&root_key).unwrap().der().clone();
    let issuer = Issuer::from_params(&root_params, &root_key);
    let intermediate = |cn: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = ca_params(cn).signed_by(&key, &issuer).unwrap();
        SigningCa::new(&key.serialize_pem(), cert.der().clone(), vec![root.clone()]).unwrap()
    };
    Hierarchy {
        ours: intermediate("Ours"),
        sibling: intermediate("Sibling"),
        root,
    }
}

fn leaf(ca: &SigningCa, ns: &str, sa: &str) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    let id = Identity::new(ns, sa).unwrap();
    let issued = ca
        .issue_workload(
            &IssuancePolicy::default(),
            &id,
            &csr(),
            0,
            SystemTime::now(),
        )
        .unwrap();
    issued
        .chain_pem
        .iter()
        .map(|p| pem::parse_certs(p.as_bytes()).unwrap().remove(0))
        .collect()
}

fn renewing_service(h: &Hierarchy, renewal: CertificateRenewal) -> CaService {
    let ours = SigningCa::new(
        h.ours.key_pem(),
        h.ours.cert_der().clone(),
        vec![h.root.clone()],
    )
    .unwrap();
    let authority = Authority::new(
        ours,
        TrustBundle::new(h.root.clone()),
        IssuancePolicy::default(),
        CaMetrics::default(),
    );
    CaService::new(Arc::new(authority), Arc::new(Fake)).with_certificate_renewal(renewal)
}

#[tokio::test]
async fn certificates_authenticate_only_when_renewal_is_enabled() {
    let h = hierarchy();
    let chain = leaf(&h.ours, "prod", "api");
    let now = SystemTime::now();
    let off = renewing_service(&h, CertificateRenewal::default());
    assert!(matches!(
        off.identify_certificate(&chain, now).await,
        Err(AuthError::Unauthenticated(m)) if m.contains("disabled")
    ));
    let on = renewing_service(
        &h,
        CertificateRenewal::Enabled {
            service_accounts: None,
        },
    );
    assert_eq!(
        on.identify_certificate(&chain, now).await,
        Ok(Identity::new("prod", "api").unwrap())
    );
    let expired = now + Duration::from_secs(2 * 24 * 3600);
    assert!(on.identify_certificate(&chain, expired).await.is_err());
}

/// A sibling intermediate under the same root verifies against the trust bundle, so the TLS
/// layer lets it through; renewal must still refuse what it minted.
#[tokio::test]
async fn a_sibling_intermediates_certificate_does_not_renew() {
    let h = hierarchy();
    let svc = renewing_service(
        &h,
        CertificateRenewal::Enabled {
            service_accounts: None,
        },
    );
    let forged = leaf(&h.sibling, "prod", "api");
    // It does chain to the bundle's root, as the TLS layer checks.
    let bundle_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(TrustBundle::new(h.root.clone()).root_store()),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()
    .unwrap();
    assert!(
        bundle_verifier
            .verify_client_cert(&forged[0], &forged[1..], rustls_pki_types::UnixTime::now())
            .is_ok()
    );
    assert!(matches!(
        svc.identify_certificate(&forged, SystemTime::now()).await,
        Err(AuthError::Unauthenticated(m)) if m.contains("signing certificate")
    ));
}

/// In a cluster the ServiceAccount must still exist: GET 200 -> the identity, 404 ->
/// Unauthenticated, an API error -> Unavailable.
#[tokio::test]
async fn renewal_checks_the_service_account_still_exists() {
    use http::{Method, Response, StatusCode};
    use kube::client::Body;
    let (mock, mut handle) = tower_test::mock::pair::<http::Request<Body>, Response<Body>>();
    let accounts = crate::auth::peer::KubeServiceAccounts::new(kube::Client::new(mock, "default"));
    let h = hierarchy();
    let svc = renewing_service(
        &h,
        CertificateRenewal::Enabled {
            service_accounts: Some(Arc::new(accounts)),
        },
    );
    let server = tokio::spawn(async move {
        let found = serde_json::json!({"apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata", "metadata": {"name": "api", "namespace": "prod"}});
        let status = |code: u16, reason: &str| {
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": reason, "code": code, "message": reason})
        };
        for (code, body) in [
            (StatusCode::OK, found),
            (StatusCode::NOT_FOUND, status(404, "NotFound")),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                status(500, "InternalError"),
            ),
        ] {
            let (req, send) = handle.next_request().await.expect("a ServiceAccount GET");
            assert_eq!(req.method(), Method::GET);
            assert_eq!(
                req.uri().path(),
                "/api/v1/namespaces/prod/serviceaccounts/api"
            );
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
        assert!(handle.next_request().await.is_none());
    });
    let chain = leaf(&h.ours, "prod", "api");
    let now = SystemTime::now();
    let id = svc.identify_certificate(&chain, now).await.unwrap();
    assert_eq!(id, Identity::new("prod", "api").unwrap());
    // Exists: the renewal is issued, for at most the default TTL.
    let issued = svc
        .authority
        .issue(
            &id,
            &csr(),
            granted_ttl_secs(
                90 * 24 * 3600,
                Credential::Certificate,
                svc.authority.policy(),
            ),
            "test",
        )
        .unwrap();
    assert!(issued.not_after <= now + Duration::from_secs(24 * 3600 + 60));
    assert!(matches!(
        svc.identify_certificate(&chain, now).await,
        Err(AuthError::Unauthenticated(m)) if m.contains("no longer exists")
    ));
    assert!(matches!(
        svc.identify_certificate(&chain, now).await,
        Err(AuthError::Unavailable(_))
    ));
    // A forged certificate is refused before any API call (the scenario has no fourth GET).
    let forged = leaf(&h.sibling, "prod", "api");
    assert!(svc.identify_certificate(&forged, now).await.is_err());
    drop(svc);
    server.await.unwrap();
}
