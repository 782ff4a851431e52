//! The self-signed CA persisted in the Kubernetes Secret `palisade-ca` of the root namespace.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

use super::store::{KeyStore, StoreError, StoredCa};

/// Name of the Secret that holds the self-signed CA.
pub const SECRET_NAME: &str = "palisade-ca";
const KEY: &str = "ca-key.pem";
const CERT: &str = "ca-cert.pem";
/// Secrets are capped at 1 MiB by the API server; a CA key and certificate are a few KiB.
const MAX_VALUE_BYTES: usize = 64 * 1024;

/// A [`KeyStore`] on a Kubernetes Secret: create-if-absent (409 means someone else won: read
/// theirs back) and optimistic replace with the resourceVersion.
#[derive(Clone)]
pub struct KubeSecretStore {
    api: Api<Secret>,
    name: String,
}

impl KubeSecretStore {
    /// The Secret `palisade-ca` in `namespace`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: SECRET_NAME.into(),
        }
    }

    fn err(&self, e: kube::Error) -> StoreError {
        StoreError::Kube {
            name: self.name.clone(),
            source: Box::new(e),
        }
    }

    fn to_secret(&self, ca: &StoredCa, version: Option<String>) -> Secret {
        let data = BTreeMap::from([
            (KEY.to_string(), ByteString(ca.key_pem.clone().into_bytes())),
            (
                CERT.to_string(),
                ByteString(ca.cert_pem.clone().into_bytes()),
            ),
        ]);
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: version,
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".to_string(),
                    "palisade".to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("palisade.dev/ca-root".into()),
            data: Some(data),
            ..Default::default()
        }
    }
}

fn from_secret(secret: Secret) -> Result<StoredCa, StoreError> {
    let data = secret.data.unwrap_or_default();
    let field = |k: &str| -> Result<String, StoreError> {
        let v = data
            .get(k)
            .ok_or_else(|| StoreError::Malformed(format!("Secret has no {k:?} key")))?;
        if v.0.len() > MAX_VALUE_BYTES {
            return Err(StoreError::Malformed(format!(
                "Secret key {k:?} is oversize"
            )));
        }
        String::from_utf8(v.0.clone())
            .map_err(|_| StoreError::Malformed(format!("Secret key {k:?} is not UTF-8")))
    };
    Ok(StoredCa {
        key_pem: field(KEY)?,
        cert_pem: field(CERT)?,
        version: secret.metadata.resource_version,
    })
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[async_trait::async_trait]
impl KeyStore for KubeSecretStore {
    async fn load(&self) -> Result<Option<StoredCa>, StoreError> {
        match self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?
        {
            Some(s) => from_secret(s).map(Some),
            None => Ok(None),
        }
    }

    async fn create_if_absent(&self, ca: &StoredCa) -> Result<StoredCa, StoreError> {
        match self
            .api
            .create(&PostParams::default(), &self.to_secret(ca, None))
            .await
        {
            Ok(created) => from_secret(created),
            Err(e) if is_conflict(&e) => self.load().await?.ok_or_else(|| {
                StoreError::Malformed("Secret exists (409) but reads as absent".into())
            }),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn replace(&self, current: &StoredCa, new: &StoredCa) -> Result<StoredCa, StoreError> {
        let secret = self.to_secret(new, current.version.clone());
        match self
            .api
            .replace(&self.name, &PostParams::default(), &secret)
            .await
        {
            Ok(s) => from_secret(s),
            Err(e) if is_conflict(&e) => self
                .load()
                .await?
                .ok_or_else(|| StoreError::Malformed("Secret vanished during replace".into())),
            Err(e) => Err(self.err(e)),
        }
    }
}

#[cfg(test)]
#[path = "kube_store_tests.rs"]
mod tests;
