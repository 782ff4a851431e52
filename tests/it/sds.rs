//! Envoy SDS end to end over TLS with envoy-types' generated client: ROOTCA and default, key
//! and chain checks, ACK/NACK, reconnects, bundle pushes and renewal on an open stream, and the
//! live client-certificate trust of the listener.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use palisade::auth::Identity;
use palisade::ca::IssuancePolicy;
use palisade::xds::sds::{DEFAULT, ROOTCA, SECRET_TYPE};
use prost::Message;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use crate::xds_harness::{self as h, Plane, XdsStream};

const WEB_TOKEN: &str = "token:shop:web";

fn names_request(names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: SECRET_TYPE.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

async fn open_sds(channel: Channel, token: Option<&str>, names: &[&str]) -> XdsStream {
    let (tx, rx) = mpsc::channel(16);
    tx.send(names_request(names)).await.unwrap();
    let rx = SecretDiscoveryServiceClient::new(channel)
        .stream_secrets(with_token(ReceiverStream::new(rx), token))
        .await
        .expect("SDS stream opens")
        .into_inner();
    XdsStream { tx, rx }
}

fn inline(source: Option<envoy_types::pb::envoy::config::core::v3::DataSource>) -> String {
    match source.and_then(|s| s.specifier) {
        Some(Specifier::InlineBytes(bytes)) => String::from_utf8(bytes).unwrap(),
        other => panic!("not inline bytes: {other:?}"),
    }
}

/// What a response holds: the ROOTCA bundle and the default (chain, key), when present.
#[derive(Debug, Default)]
struct Secrets {
    names: Vec<String>,
    rootca: Option<String>,
    default: Option<(String, String)>,
}

fn secrets(response: &DiscoveryResponse) -> Secrets {
    assert_eq!(response.type_url, SECRET_TYPE);
    assert!(!response.version_info.is_empty() && !response.nonce.is_empty());
    let mut out = Secrets::default();
    for any in &response.resources {
        assert_eq!(any.type_url, SECRET_TYPE);
        let secret = Secret::decode(any.value.as_slice()).unwrap();
        out.names.push(secret.name.clone());
        match secret.r#type {
            Some(secret::Type::ValidationContext(v)) => out.rootca = Some(inline(v.trusted_ca)),
            Some(secret::Type::TlsCertificate(t)) => {
                out.default = Some((inline(t.certificate_chain), inline(t.private_key)))
            }
            other => panic!("unexpected secret {other:?}"),
        }
    }
    out
}

/// Checks that `key` is the key of the chain's leaf, that the chain verifies against `bundle`
/// as a client certificate, and returns the leaf's SPIFFE ID.
fn check_default(chain: &str, key: &str, bundle: &str) -> String {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let (_, leaf) = x509_parser::parse_x509_certificate(certs[0].as_ref()).unwrap();
    let key = rcgen::KeyPair::from_pem(key).expect("PKCS#8 PEM key");
    assert_eq!(
        rcgen::PublicKeyData::subject_public_key_info(&key),
        leaf.public_key().raw,
        "the key is the certificate's"
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(
        CertificateDer::pem_slice_iter(bundle.as_bytes()).map(|c| c.unwrap()),
    );
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap()
        .verify_client_cert(&certs[0], &certs[1..], UnixTime::now())
        .expect("chain verifies against the bundle");
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    match &san.value.general_names[..] {
        [x509_parser::extensions::GeneralName::URI(u)] => u.to_string(),
        other => panic!("unexpected SANs {other:?}"),
    }
}

#[tokio::test]
async fn rootca_and_default_on_a_stream() {
    let plane = h::start(IssuancePolicy::default()).await;
    let channel = plane.channel(None).await;
    let mut stream = open_sds(channel.clone(), Some(WEB_TOKEN), &[ROOTCA]).await;
    let first = stream.next().await.unwrap();
    let got = secrets(&first);
    assert_eq!(got.names, [ROOTCA]);
    assert_eq!(got.rootca.as_deref(), Some(plane.root_pem().as_str()));

    // An ACK that adds `default` is a subscription change: both come back.
    stream
        .send(DiscoveryRequest {
            resource_names: vec![ROOTCA.into(), DEFAULT.into()],
            ..h::ack(&first, None)
        })
        .await;
    let both = stream.next().await.unwrap();
    let got = secrets(&both);
    assert_eq!(got.names, [ROOTCA, DEFAULT]);
    let (chain, key) = got.default.clone().unwrap();
    assert_eq!(
        check_default(&chain, &key, &plane.root_pem()),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    stream
        .send(DiscoveryRequest {
            resource_names: vec![ROOTCA.into(), DEFAULT.into()],
            ..h::ack(&both, None)
        })
        .await;

    // The ACK got silence: the next response is the bundle change, default unchanged.
    plane.authority.set_signing(h::new_ca()).unwrap();
    let rotated = stream.next().await.unwrap();
    let got = secrets(&rotated);
    let bundle = got.rootca.unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    assert_eq!(got.default, Some((chain.clone(), key.clone())));
    assert_ne!(rotated.version_info, both.version_info);

    // NACK it: no answer; the next change is sent.
    stream
        .send(DiscoveryRequest {
            resource_names: vec![ROOTCA.into(), DEFAULT.into()],
            ..h::ack(&rotated, Some("cannot load"))
        })
        .await;
    // (Seen before the next change, or the change would make the NACK's nonce stale.)
    plane
        .wait_metric(
            "palisade_xds_nacks_total{service=\"sds\",type=\"Secret\"}",
            "1",
        )
        .await;
    plane.authority.set_signing(h::new_ca()).unwrap();
    let next = stream.next().await.unwrap();
    assert_eq!(
        secrets(&next)
            .rootca
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        3
    );

    // Reconnect: a new stream gets a new certificate on a new key.
    drop(stream);
    let mut again = open_sds(channel, Some(WEB_TOKEN), &[DEFAULT]).await;
    let (chain2, key2) = secrets(&again.next().await.unwrap()).default.unwrap();
    assert_ne!(key2, key);
    check_default(&chain2, &key2, &plane.root_pem());
}

#[tokio::test]
async fn default_is_renewed_on_an_open_stream() {
    let policy = IssuancePolicy {
        default_ttl: Duration::from_secs(4),
        ..IssuancePolicy::default()
    };
    let plane = h::start(policy).await;
    let mut stream = open_sds(plane.channel(None).await, Some(WEB_TOKEN), &[DEFAULT]).await;
    let first = stream.next().await.unwrap();
    let (chain, key) = secrets(&first).default.unwrap();
    stream
        .send(DiscoveryRequest {
            resource_names: vec![DEFAULT.into()],
            ..h::ack(&first, None)
        })
        .await;
    let started = SystemTime::now();
    let renewed = stream.next().await.unwrap();
    let (chain2, key2) = secrets(&renewed).default.unwrap();
    assert!(
        started.elapsed().unwrap() < Duration::from_secs(2),
        "pushed before half of the 4 s lifetime"
    );
    assert_ne!((&chain2, &key2), (&chain, &key), "new certificate, new key");
    check_default(&chain2, &key2, &plane.root_pem());
}

#[tokio::test]
async fn a_revoked_credential_ends_the_stream_instead_of_a_renewal() {
    let policy = IssuancePolicy {
        default_ttl: Duration::from_secs(4),
        ..IssuancePolicy::default()
    };
    let plane = h::start(policy).await;
    let mut stream = open_sds(plane.channel(None).await, Some(WEB_TOKEN), &[DEFAULT]).await;
    assert!(secrets(&stream.next().await.unwrap()).default.is_some());
    plane.tokens.revoke(WEB_TOKEN);
    let status = stream
        .next()
        .await
        .expect_err("no renewal for a revoked caller");
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "unauthenticated")
    );
}

#[tokio::test]
async fn shutdown_ends_open_ads_and_sds_streams_with_unavailable() {
    let plane = h::start(IssuancePolicy::default()).await;
    plane.registry.add_pod("shop", "web-1", "web");
    let mut sds = open_sds(plane.channel(None).await, Some(WEB_TOKEN), &[DEFAULT]).await;
    assert!(secrets(&sds.next().await.unwrap()).default.is_some());
    let id = plane.workload("shop", "web");
    let mut ads = h::open_ads(
        plane.channel(Some(&id)).await,
        h::request(
            palisade::xds::views::INBOUND_POLICY_TYPE,
            Some(h::node("shop", "web-1")),
        ),
    )
    .await
    .expect("admitted");
    ads.next().await.expect("the InboundPolicy");
    plane.shutdown.send_replace(true);
    for (name, stream) in [("ADS", &mut ads), ("SDS", &mut sds)] {
        let status = stream.next().await.expect_err("the stream ends");
        assert_eq!(status.code(), Code::Unavailable, "{name}: {status:?}");
    }
    // A stream opened during shutdown ends at once too.
    let mut late = open_sds(plane.channel(None).await, Some(WEB_TOKEN), &[DEFAULT]).await;
    let status = late.next().await.expect_err("ends");
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn fetch_and_authentication() {
    let plane = h::start(IssuancePolicy::default()).await;
    let mut client = SecretDiscoveryServiceClient::new(plane.channel(None).await);
    let fetched = client
        .fetch_secrets(with_token(
            names_request(&[ROOTCA, DEFAULT, "other", "spiffe://x"]),
            Some(WEB_TOKEN),
        ))
        .await
        .unwrap()
        .into_inner();
    let got = secrets(&fetched);
    assert_eq!(got.names, [ROOTCA, DEFAULT], "unknown names get nothing");
    let (chain, key) = got.default.unwrap();
    check_default(&chain, &key, &plane.root_pem());

    for (what, token) in [("none", None), ("bad", Some("garbage"))] {
        let status = client
            .fetch_secrets(with_token(names_request(&[DEFAULT]), token))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, "unauthenticated"),
            "{what}"
        );
    }
    let mut wrong_type = names_request(&[DEFAULT]);
    wrong_type.type_url = "type.googleapis.com/x".into();
    let status = client
        .fetch_secrets(with_token(wrong_type, Some(WEB_TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // A workload certificate authenticates too, as its own identity.
    let id = plane.workload("bank", "api");
    let mut by_cert = SecretDiscoveryServiceClient::new(plane.channel(Some(&id)).await);
    let fetched = by_cert
        .fetch_secrets(names_request(&[DEFAULT]))
        .await
        .unwrap()
        .into_inner();
    let (chain, key) = secrets(&fetched).default.unwrap();
    assert_eq!(
        check_default(&chain, &key, &plane.root_pem()),
        "spiffe://cluster.local/ns/bank/sa/api"
    );
}

/// Fetches `default` with only a client certificate; `Err` when the listener refuses it.
async fn fetch_by_certificate(
    plane: &Plane,
    identity: &(String, String),
) -> Result<String, String> {
    let config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(plane.root_pem()))
        .domain_name("localhost")
        .identity(tonic::transport::Identity::from_pem(
            &identity.0,
            &identity.1,
        ));
    let channel = Channel::from_shared(format!("https://{}", plane.addr))
        .unwrap()
        .tls_config(config)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let fetched = SecretDiscoveryServiceClient::new(channel)
        .fetch_secrets(names_request(&[DEFAULT]))
        .await
        .map_err(|s| format!("fetch: {s:?}"))?
        .into_inner();
    let (chain, key) = secrets(&fetched).default.unwrap();
    Ok(check_default(&chain, &key, &plane.root_pem()))
}

#[tokio::test]
async fn a_root_added_later_is_trusted_without_restart() {
    let plane = h::start(IssuancePolicy::default()).await;
    let later = h::new_ca();
    let (key, csr) = h::key_and_csr();
    let issued = later
        .issue_workload(
            &IssuancePolicy::default(),
            &Identity::new("shop", "web").unwrap(),
            &csr,
            0,
            SystemTime::now(),
        )
        .unwrap();
    let identity = (issued.chain_pem.concat(), key.serialize_pem());
    let refused = fetch_by_certificate(&plane, &identity).await;
    assert!(refused.is_err(), "not trusted yet: {refused:?}");
    plane.authority.set_signing(later).unwrap();
    assert_eq!(
        fetch_by_certificate(&plane, &identity).await,
        Ok("spiffe://cluster.local/ns/shop/sa/web".to_string())
    );
}
