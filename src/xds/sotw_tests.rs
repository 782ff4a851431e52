//! Tables for the state-of-the-world rules.

use envoy_types::pb::google::rpc::Status as RpcStatus;

use super::*;

const T: &str = "type.googleapis.com/t";
const U: &str = "type.googleapis.com/u";

fn req(type_url: &str, nonce: &str, names: &[&str], error: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        error_detail: error.map(|m| RpcStatus {
            code: 3,
            message: m.into(),
            details: vec![],
        }),
        ..Default::default()
    }
}

/// One step of a stream: a request (or none) and what should follow, then an optional send.
struct Step {
    what: &'static str,
    request: Option<DiscoveryRequest>,
    kind: Option<RequestKind>,
    /// The current version of T and whether it should be sent now.
    current: &'static str,
    send: bool,
}

fn nack(version: &str, detail: &str) -> Option<RequestKind> {
    Some(RequestKind::Nack {
        version: version.into(),
        detail: detail.into(),
    })
}

#[test]
fn a_stream_follows_the_rules() {
    use RequestKind::*;
    // Nonces are "1", "2", ... in sending order on this stream.
    #[rustfmt::skip]
    let steps = [
        Step { what: "nothing subscribed: nothing to send", request: None, kind: None, current: "v1", send: false },
        Step { what: "first request subscribes", request: Some(req(T, "", &[], None)), kind: Some(Subscribe), current: "v1", send: true },
        Step { what: "ACK of nonce 1 gets silence", request: Some(req(T, "1", &[], None)), kind: Some(Ack), current: "v1", send: false },
        Step { what: "a new version is pushed without a request", request: None, kind: None, current: "v2", send: true },
        Step { what: "stale nonce is ignored", request: Some(req(T, "1", &[], Some("old"))), kind: Some(Stale), current: "v2", send: false },
        Step { what: "unknown nonce is ignored", request: Some(req(T, "99", &[], None)), kind: Some(Stale), current: "v2", send: false },
        Step { what: "NACK of nonce 2 (v2): silence", request: Some(req(T, "2", &[], Some("bad v2"))), kind: nack("v2", "bad v2"), current: "v2", send: false },
        Step { what: "back to the NACKed version: not sent again", request: None, kind: None, current: "v2", send: false },
        Step { what: "a later version after a NACK is sent", request: None, kind: None, current: "v3", send: true },
        Step { what: "ACK of nonce 3 while nothing changed", request: Some(req(T, "3", &[], None)), kind: Some(Ack), current: "v3", send: false },
        Step { what: "the rejected version stays rejected", request: None, kind: None, current: "v2", send: false },
        Step { what: "re-subscription without nonce is answered even with the same version", request: Some(req(T, "", &[], None)), kind: Some(Subscribe), current: "v3", send: true },
        Step { what: "ACK that changes the names is a subscription", request: Some(req(T, "4", &["a"], None)), kind: Some(Subscribe), current: "v3", send: true },
        Step { what: "ACK with the same names", request: Some(req(T, "5", &["a"], None)), kind: Some(Ack), current: "v3", send: false },
        Step { what: "another type does not disturb T", request: Some(req(U, "", &[], None)), kind: Some(Subscribe), current: "v3", send: false },
    ];
    let mut stream = StreamState::new();
    for step in steps {
        if let Some(r) = &step.request {
            assert_eq!(Some(stream.on_request(r)), step.kind, "{}", step.what);
        }
        assert_eq!(
            stream.should_send(T, step.current),
            step.send,
            "{}",
            step.what
        );
        if step.send {
            let resp = stream.respond(T, step.current, vec![]);
            assert_eq!(resp.version_info, step.current, "{}", step.what);
            assert_eq!(resp.type_url, T);
            assert!(!resp.nonce.is_empty());
        }
    }
    assert_eq!(stream.names(T), Some(&["a".to_string()][..]));
    assert_eq!(stream.names("other"), None);
    assert!(
        stream.should_send(U, "x"),
        "U was subscribed and never answered"
    );
}

#[test]
fn first_request_is_a_subscription_whatever_it_carries() {
    for r in [
        req(T, "", &[], None),
        req(T, "7", &[], None),
        req(T, "7", &["ROOTCA"], Some("left over")),
    ] {
        let mut stream = StreamState::new();
        assert_eq!(stream.on_request(&r), RequestKind::Subscribe);
        assert!(stream.should_send(T, "v"));
    }
}

#[test]
fn nonces_are_fresh_on_every_response() {
    let mut stream = StreamState::new();
    stream.on_request(&req(T, "", &[], None));
    stream.on_request(&req(U, "", &[], None));
    let nonces: Vec<String> = [(T, "a"), (U, "a"), (T, "b"), (T, "b")]
        .iter()
        .map(|(t, v)| stream.respond(t, v, vec![]).nonce)
        .collect();
    let mut unique = nonces.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), nonces.len(), "{nonces:?}");
    // Only the latest nonce of a type is current.
    assert_eq!(
        stream.on_request(&req(T, &nonces[2], &[], None)),
        RequestKind::Stale
    );
    assert_eq!(
        stream.on_request(&req(T, &nonces[3], &[], None)),
        RequestKind::Ack
    );
    assert_eq!(
        stream.on_request(&req(U, &nonces[1], &[], None)),
        RequestKind::Ack
    );
}

#[test]
fn nack_details_are_cut_for_the_log() {
    let mut stream = StreamState::new();
    stream.on_request(&req(T, "", &[], None));
    let nonce = stream.respond(T, "v", vec![]).nonce;
    let long = "é".repeat(MAX_DETAIL_LOGGED);
    match stream.on_request(&req(T, &nonce, &[], Some(&long))) {
        RequestKind::Nack { detail, version } => {
            assert_eq!(version, "v");
            assert!(detail.len() <= MAX_DETAIL_LOGGED + 3, "{}", detail.len());
            assert!(detail.ends_with("..."));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn request_bounds() {
    let long = "x".repeat(MAX_FIELD_BYTES + 1);
    let ok = req(T, "1", &["ROOTCA", "default"], None);
    let cases: Vec<(DiscoveryRequest, Result<(), BadRequest>)> = vec![
        (ok.clone(), Ok(())),
        (req("", "", &[], None), Err(BadRequest::NoTypeUrl)),
        (
            req(&long, "", &[], None),
            Err(BadRequest::FieldTooLong("type URL")),
        ),
        (
            req(T, &long, &[], None),
            Err(BadRequest::FieldTooLong("nonce")),
        ),
        (
            DiscoveryRequest {
                version_info: long.clone(),
                ..ok.clone()
            },
            Err(BadRequest::FieldTooLong("version")),
        ),
        (
            req(T, "", &[&long], None),
            Err(BadRequest::FieldTooLong("resource name")),
        ),
        (
            req(T, "", &["n"; MAX_RESOURCE_NAMES + 1], None),
            Err(BadRequest::TooManyNames),
        ),
        (req(T, "", &["n"; MAX_RESOURCE_NAMES], None), Ok(())),
    ];
    for (r, want) in cases {
        assert_eq!(validate(&r), want, "{:?}", r.type_url.len());
    }
}
