//! `admission.k8s.io/v1` AdmissionReview in and out.
//!
//! Both directions are our own serde types rather than kube-core's: kube-core 5 serializes
//! `AdmissionResponse.patch` as an array of numbers (kube-rs issue 1781) where the API server
//! expects base64, and parsing the object leniently here lets a pod we cannot read be denied
//! with a reason (we still know the request's uid) instead of failing the whole request.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::inject::Decision;

/// The only AdmissionReview version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// Longest request uid accepted (the API server sends a 36-character UUID).
pub const MAX_UID_LEN: usize = 128;

/// Why a body is not an AdmissionReview we can answer (the server answers 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("body is not AdmissionReview JSON: {0}")]
    Json(String),
    #[error("expected apiVersion {API_VERSION} kind AdmissionReview, got {0}")]
    Version(String),
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("request uid is empty or longer than {MAX_UID_LEN} characters")]
    Uid,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<RequestIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn {
    uid: String,
    kind: Option<Gvk>,
    operation: Option<String>,
    namespace: Option<String>,
    dry_run: Option<bool>,
    object: Option<Value>,
}

#[derive(Deserialize)]
struct Gvk {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

/// What the request asks about.
#[derive(Debug)]
pub enum Target {
    /// A Pod CREATE, with the namespace it is created in.
    PodCreate { pod: Box<Pod>, namespace: String },
    /// Anything else (another kind or operation): admitted unchanged.
    Other(String),
    /// A Pod CREATE whose object cannot be read as a Pod: denied with this reason.
    Unreadable(String),
}

/// A parsed AdmissionReview request.
#[derive(Debug)]
pub struct Request {
    pub uid: String,
    /// `dryRun`: nothing is persisted. The webhook has no side effects to skip, so the answer
    /// is the same; it only goes to the log.
    pub dry_run: bool,
    pub target: Target,
}

/// Parses a request body.
pub fn parse(body: &[u8]) -> Result<Request, ReviewError> {
    let review: ReviewIn =
        serde_json::from_slice(body).map_err(|e| ReviewError::Json(e.to_string()))?;
    if review.api_version != API_VERSION || review.kind != "AdmissionReview" {
        return Err(ReviewError::Version(format!(
            "apiVersion {:?} kind {:?}",
            review.api_version, review.kind
        )));
    }
    let req = review.request.ok_or(ReviewError::NoRequest)?;
    if req.uid.is_empty() || req.uid.len() > MAX_UID_LEN {
        return Err(ReviewError::Uid);
    }
    let is_pod = req
        .kind
        .as_ref()
        .is_some_and(|k| k.group.is_empty() && k.kind == "Pod");
    let operation = req.operation.unwrap_or_default();
    let target = if !is_pod || operation != "CREATE" {
        Target::Other(format!(
            "{} {}",
            operation,
            req.kind.map(|k| k.kind).unwrap_or_default()
        ))
    } else {
        match req.object.map(serde_json::from_value::<Pod>) {
            None => Target::Unreadable("the request carries no object".into()),
            Some(Err(e)) => Target::Unreadable(format!("the object is not a valid Pod: {e}")),
            Some(Ok(pod)) => {
                let namespace = req
                    .namespace
                    .filter(|n| !n.is_empty())
                    .or_else(|| pod.metadata.namespace.clone());
                match namespace {
                    // It becomes part of an API URL and a cache key: only a real namespace
                    // name goes on.
                    Some(namespace) if !super::namespaces::is_dns1123_label(&namespace) => {
                        Target::Unreadable(format!(
                            "namespace {:?} is not a valid namespace name (a DNS-1123 label)",
                            super::namespaces::shown(&namespace)
                        ))
                    }
                    Some(namespace) => Target::PodCreate {
                        pod: Box::new(pod),
                        namespace,
                    },
                    None => Target::Unreadable("the request names no namespace".into()),
                }
            }
        }
    };
    Ok(Request {
        uid: req.uid,
        dry_run: req.dry_run.unwrap_or(false),
        target,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    /// Base64 of the JSONPatch, as the API specifies.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

#[derive(Serialize)]
struct StatusOut {
    status: &'static str,
    code: u16,
    reason: &'static str,
    message: String,
}

/// The AdmissionReview JSON answering `uid` with `decision`.
pub fn respond(uid: &str, decision: &Decision) -> Vec<u8> {
    let (allowed, status, patch) = match decision {
        Decision::Patch(ops) => {
            // Serializing PatchOperations to a Vec cannot fail (string keys only); if it ever
            // did, denying is the safe answer.
            match serde_json::to_vec(ops) {
                Ok(json) => (
                    true,
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(json)),
                ),
                Err(e) => (
                    false,
                    Some(deny_status(format!("internal error: {e}"))),
                    None,
                ),
            }
        }
        Decision::Skip { .. } => (true, None, None),
        Decision::Deny { message } => (false, Some(deny_status(message.clone())), None),
    };
    let out = ReviewOut {
        api_version: API_VERSION,
        kind: "AdmissionReview",
        response: ResponseOut {
            uid,
            allowed,
            status,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
        },
    };
    // Plain structs of strings and bools: serialization cannot fail.
    serde_json::to_vec(&out).unwrap_or_default()
}

fn deny_status(message: String) -> StatusOut {
    StatusOut {
        status: "Failure",
        code: 400,
        reason: "BadRequest",
        message: format!("palisade sidecar injection: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::SkipReason;
    use serde_json::json;

    fn review(request: Value) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"apiVersion": API_VERSION, "kind": "AdmissionReview",
            "request": request}),
        )
        .unwrap()
    }

    fn pod_request(object: Value) -> Value {
        json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
               "kind": {"group": "", "version": "v1", "kind": "Pod"},
               "resource": {"group": "", "version": "v1", "resource": "pods"},
               "operation": "CREATE", "namespace": "shop", "dryRun": true,
               "object": object})
    }

    #[test]
    fn pod_create_parses() {
        let r = parse(&review(pod_request(
            json!({"metadata": {"generateName": "web-"}, "spec": {"containers": [{"name": "web"}]}}),
        )))
        .unwrap();
        assert!(r.dry_run);
        assert!(matches!(r.target, Target::PodCreate { ref namespace, .. } if namespace == "shop"));
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for (body, want) in [
            (b"".to_vec(), "Json"),
            (b"[1,2".to_vec(), "Json"),
            (b"{\"kind\":\"AdmissionReview\"}".to_vec(), "Version"),
            (
                serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1beta1",
                    "kind": "AdmissionReview"}))
                .unwrap(),
                "Version",
            ),
            (
                serde_json::to_vec(&json!({"apiVersion": API_VERSION, "kind": "AdmissionReview"}))
                    .unwrap(),
                "NoRequest",
            ),
            (review(json!({"uid": ""})), "Uid"),
            (review(json!({"uid": "x".repeat(129)})), "Uid"),
            (b"{\"a\":".repeat(10_000), "Json"),
        ] {
            let e = parse(&body).unwrap_err();
            assert!(format!("{e:?}").starts_with(want), "{e:?} != {want}");
        }
    }

    #[test]
    fn unreadable_pod_and_other_operations() {
        let r = parse(&review(pod_request(
            json!({"spec": {"containers": "nope"}}),
        )))
        .unwrap();
        assert!(matches!(r.target, Target::Unreadable(ref m) if m.contains("not a valid Pod")));
        let mut update = pod_request(json!({}));
        update["operation"] = json!("UPDATE");
        assert!(matches!(
            parse(&review(update)).unwrap().target,
            Target::Other(_)
        ));
        for bad in ["../x?y", "a/b", "Shop", "n".repeat(64).as_str()] {
            let mut request = pod_request(json!({"spec": {"containers": []}}));
            request["namespace"] = json!(bad);
            assert!(
                matches!(
                    parse(&review(request)).unwrap().target,
                    Target::Unreadable(ref m) if m.contains("not a valid namespace name")
                ),
                "{bad}"
            );
            // The object's own namespace is held to the same rule when the request has none.
            let mut request = pod_request(json!({"metadata": {"namespace": bad},
                "spec": {"containers": []}}));
            request["namespace"] = json!("");
            assert!(
                matches!(
                    parse(&review(request)).unwrap().target,
                    Target::Unreadable(ref m) if m.contains("not a valid namespace name")
                ),
                "{bad}"
            );
        }
        let mut no_ns = pod_request(json!({"spec": {"containers": []}}));
        no_ns["namespace"] = json!("");
        assert!(matches!(
            parse(&review(no_ns)).unwrap().target,
            Target::Unreadable(_)
        ));
    }

    #[test]
    fn patch_is_base64_and_deny_has_a_message() {
        let ops: Vec<json_patch::PatchOperation> =
            serde_json::from_value(json!([{"op": "add", "path": "/metadata/labels", "value": {}}]))
                .unwrap();
        let out: Value = serde_json::from_slice(&respond("u1", &Decision::Patch(ops))).unwrap();
        assert_eq!(out["apiVersion"], API_VERSION);
        assert_eq!(out["response"]["uid"], "u1");
        assert_eq!(out["response"]["allowed"], true);
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(out["response"]["patch"].as_str().unwrap())
            .unwrap();
        let patch: Value = serde_json::from_slice(&patch).unwrap();
        assert_eq!(patch[0]["path"], "/metadata/labels");

        let skip = Decision::Skip {
            reason: SkipReason::OptedOut,
        };
        let out: Value = serde_json::from_slice(&respond("u2", &skip)).unwrap();
        assert_eq!(out["response"], json!({"uid": "u2", "allowed": true}));

        let deny = Decision::Deny {
            message: "annotation x: bad".into(),
        };
        let out: Value = serde_json::from_slice(&respond("u3", &deny)).unwrap();
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(
            out["response"]["status"]["message"],
            "palisade sidecar injection: annotation x: bad"
        );
        assert!(out["response"].get("patch").is_none());
    }
}
