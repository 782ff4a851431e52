//! State-of-the-world xDS bookkeeping shared by SDS and ADS: per type URL what this stream last
//! sent (version and nonce), which names the client asked for, and what a request means
//! relative to that. Pure: the services feed it requests and ask it whether to respond.
//!
//! The rules (Envoy's xDS protocol, state of the world):
//! - every response carries `version_info` and a fresh `nonce`;
//! - a request whose `response_nonce` is not the latest nonce sent for its type is stale and
//!   ignored (the client has not seen the latest response yet);
//! - a request with the latest nonce and no `error_detail` is an ACK and gets no answer;
//! - with `error_detail` it is a NACK: logged and counted by the caller, not answered, and the
//!   rejected version is never sent again on this stream (a later, different version is);
//! - a request without a nonce (the first one for a type, or a client restarting the
//!   subscription) and an ACK that changes the resource names are answered with the current
//!   state, even when its version was sent before.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;

/// Most resource names one request may list (SDS asks for one or two; ADS for none).
pub const MAX_RESOURCE_NAMES: usize = 16;
/// Longest resource name, type URL, version or nonce accepted in a request.
pub const MAX_FIELD_BYTES: usize = 512;
/// Longest NACK detail kept for the log; the rest is cut.
pub const MAX_DETAIL_LOGGED: usize = 1024;

/// Why a request is refused outright (the stream ends with `INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// No `type_url`.
    #[error("request without a type URL")]
    NoTypeUrl,
    /// A field over [`MAX_FIELD_BYTES`].
    #[error("{0} longer than {MAX_FIELD_BYTES} bytes")]
    FieldTooLong(&'static str),
    /// More than [`MAX_RESOURCE_NAMES`] names.
    #[error("more than {MAX_RESOURCE_NAMES} resource names")]
    TooManyNames,
}

/// Checks the size bounds of a request's bookkeeping fields (the message size is bounded by
/// the transport; these keep what a stream stores small).
pub fn validate(req: &DiscoveryRequest) -> Result<(), BadRequest> {
    if req.type_url.is_empty() {
        return Err(BadRequest::NoTypeUrl);
    }
    for (what, value) in [
        ("type URL", &req.type_url),
        ("version", &req.version_info),
        ("nonce", &req.response_nonce),
    ] {
        if value.len() > MAX_FIELD_BYTES {
            return Err(BadRequest::FieldTooLong(what));
        }
    }
    if req.resource_names.len() > MAX_RESOURCE_NAMES {
        return Err(BadRequest::TooManyNames);
    }
    if req.resource_names.iter().any(|n| n.len() > MAX_FIELD_BYTES) {
        return Err(BadRequest::FieldTooLong("resource name"));
    }
    Ok(())
}

/// What a request means for its type on this stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// A (re)subscription or a change of names: answer with the current state.
    Subscribe,
    /// The client accepted the latest response: answer nothing.
    Ack,
    /// The client rejected the latest response (`detail`, cut to [`MAX_DETAIL_LOGGED`]):
    /// log, count, answer nothing.
    Nack {
        /// The version rejected.
        version: String,
        /// The client's error message.
        detail: String,
    },
    /// About a response that is not the latest one: ignore.
    Stale,
}

/// The last response sent for a type.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    version: String,
    nonce: String,
}

/// One subscribed type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TypeState {
    names: Vec<String>,
    sent: Option<Sent>,
    rejected: Option<String>,
    must_respond: bool,
}

/// Classifies `req` against what was sent for its type (`None`: not subscribed yet).
fn classify(state: Option<&TypeState>, req: &DiscoveryRequest) -> RequestKind {
    let Some(state) = state else {
        // The first request for a type is a subscription whatever nonce it carries: a client
        // that kept one from an earlier stream would otherwise wait forever.
        return RequestKind::Subscribe;
    };
    if req.response_nonce.is_empty() {
        return RequestKind::Subscribe;
    }
    let Some(sent) = &state.sent else {
        return RequestKind::Stale;
    };
    if req.response_nonce != sent.nonce {
        return RequestKind::Stale;
    }
    if let Some(error) = &req.error_detail {
        return RequestKind::Nack {
            version: sent.version.clone(),
            detail: cut(&error.message, MAX_DETAIL_LOGGED),
        };
    }
    if req.resource_names != state.names {
        return RequestKind::Subscribe;
    }
    RequestKind::Ack
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The bookkeeping of one stream. The caller passes only type URLs it serves, so the map holds
/// at most as many entries as the service has types.
#[derive(Debug, Default)]
pub struct StreamState {
    types: BTreeMap<String, TypeState>,
    nonces: u64,
}

impl StreamState {
    /// A stream that has sent nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `req` (a validated request for a served type) and says what it means.
    pub fn on_request(&mut self, req: &DiscoveryRequest) -> RequestKind {
        let kind = classify(self.types.get(&req.type_url), req);
        match &kind {
            RequestKind::Subscribe => {
                let state = self.types.entry(req.type_url.clone()).or_default();
                state.names = req.resource_names.clone();
                state.must_respond = true;
            }
            RequestKind::Nack { version, .. } => {
                if let Some(state) = self.types.get_mut(&req.type_url) {
                    state.rejected = Some(version.clone());
                }
            }
            RequestKind::Ack | RequestKind::Stale => {}
        }
        kind
    }

    /// The resource names the client asked for (empty: wildcard), or `None` when the type is
    /// not subscribed.
    pub fn names(&self, type_url: &str) -> Option<&[String]> {
        self.types.get(type_url).map(|s| s.names.as_slice())
    }

    /// Whether `type_url` should get a response now, its current content being `version`:
    /// after a subscription, or when the version differs from the last sent and from the last
    /// rejected one.
    pub fn should_send(&self, type_url: &str, version: &str) -> bool {
        let Some(state) = self.types.get(type_url) else {
            return false;
        };
        if state.must_respond {
            return true;
        }
        let sent = state.sent.as_ref().map(|s| s.version.as_str());
        sent != Some(version) && state.rejected.as_deref() != Some(version)
    }

    /// Records that `version` of `type_url` is being sent and returns the fresh nonce of the
    /// response that carries it (for servers that encode the response themselves).
    pub fn record_sent(&mut self, type_url: &str, version: &str) -> String {
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let state = self.types.entry(type_url.to_string()).or_default();
        state.sent = Some(Sent {
            version: version.to_string(),
            nonce: nonce.clone(),
        });
        state.must_respond = false;
        nonce
    }

    /// Records that `version` of `type_url` is being sent and builds the response with a fresh
    /// nonce.
    pub fn respond(
        &mut self,
        type_url: &str,
        version: &str,
        resources: Vec<Any>,
    ) -> DiscoveryResponse {
        let nonce = self.record_sent(type_url, version);
        DiscoveryResponse {
            version_info: version.to_string(),
            resources,
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        }
    }
}

#[cfg(test)]
#[path = "sotw_tests.rs"]
mod tests;
