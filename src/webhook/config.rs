//! What the injector puts into a pod: image, resources, where the CA is, which namespaces are
//! enabled when there is no API server to ask (standalone). Read from flags or from
//! `injection.yaml` (standalone: in the config directory).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Largest `injection.yaml` accepted; a real one is a few hundred bytes.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// CPU and memory requests and limits of an injected container (Kubernetes quantities).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

impl Resources {
    fn new(requests: [(&str, &str); 2], limits: [(&str, &str); 2]) -> Self {
        let map = |pairs: [(&str, &str); 2]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Self {
            requests: map(requests),
            limits: map(limits),
        }
    }
}

/// The injection settings; every field has a default, so an empty file is valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct InjectionConfig {
    /// Image of both injected containers (`palisade init` and `palisade proxy`).
    pub image: String,
    /// `imagePullPolicy` of the injected containers; `None` leaves the Kubernetes default.
    pub image_pull_policy: Option<String>,
    /// Pods in this namespace (the control plane's) are never injected. `palisade controller`
    /// sets it from its `--namespace`.
    pub control_plane_namespace: String,
    /// Address of the CA / xDS service the proxy dials.
    pub ca_address: String,
    /// SPIFFE trust domain, handed to the proxy. `palisade controller` sets it from its
    /// `--trust-domain`.
    pub trust_domain: String,
    /// Resources of the `palisade-proxy` sidecar.
    pub proxy_resources: Resources,
    /// Resources of the `palisade-init` container.
    pub init_resources: Resources,
    /// Standalone mode only: the labels of each namespace (in a cluster they come from the API).
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for InjectionConfig {
    fn default() -> Self {
        Self {
            image: format!(
                "ghcr.io/palisade-dev/palisade:{}",
                env!("CARGO_PKG_VERSION")
            ),
            image_pull_policy: None,
            control_plane_namespace: "palisade-system".into(),
            ca_address: "palisade.palisade-system.svc:15012".into(),
            trust_domain: "cluster.local".into(),
            proxy_resources: Resources::new(
                [("cpu", "100m"), ("memory", "128Mi")],
                [("cpu", "2"), ("memory", "1Gi")],
            ),
            init_resources: Resources::new(
                [("cpu", "10m"), ("memory", "10Mi")],
                [("cpu", "100m"), ("memory", "50Mi")],
            ),
            namespace_labels: BTreeMap::new(),
        }
    }
}

/// Why the injection configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("injection config: {0}")]
    Invalid(String),
}

impl InjectionConfig {
    /// Reads and validates a YAML file (bounded in size).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let io = |source| ConfigError::Io {
            path: shown.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let Some(text) = crate::read_text_limited(file, MAX_CONFIG_BYTES).map_err(io)? else {
            return Err(ConfigError::TooLarge { path: shown });
        };
        Self::from_yaml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: shown,
                message,
            },
            other => other,
        })
    }

    /// Parses and validates YAML text (an empty document gives the defaults).
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: "injection config".into(),
            });
        }
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
                path: "injection config".into(),
                message: e.to_string(),
            })?
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what would otherwise only fail when a pod is created.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err(ConfigError::Invalid(format!(
                "image {:?} is not an image reference",
                self.image
            )));
        }
        if let Some(policy) = &self.image_pull_policy
            && !matches!(policy.as_str(), "Always" | "IfNotPresent" | "Never")
        {
            return Err(ConfigError::Invalid(format!(
                "imagePullPolicy {policy:?} is not Always, IfNotPresent or Never"
            )));
        }
        for (what, res) in [
            ("proxyResources", &self.proxy_resources),
            ("initResources", &self.init_resources),
        ] {
            for (key, value) in res.requests.iter().chain(&res.limits) {
                let ok = !value.is_empty()
                    && value.len() <= 32
                    && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
                if !ok {
                    return Err(ConfigError::Invalid(format!(
                        "{what}.{key}: {value:?} is not a quantity"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(
            InjectionConfig::from_yaml("").unwrap(),
            InjectionConfig::default()
        );
    }

    #[test]
    fn fields_parse_and_unknown_fields_fail() {
        let c = InjectionConfig::from_yaml(
            "image: registry.local/palisade:dev\nimagePullPolicy: Never\n\
             namespaceLabels:\n  shop:\n    palisade.dev/inject: enabled\n",
        )
        .unwrap();
        assert_eq!(c.image, "registry.local/palisade:dev");
        assert_eq!(c.namespace_labels["shop"]["palisade.dev/inject"], "enabled");
        let e = InjectionConfig::from_yaml("imag: x\n").unwrap_err();
        assert!(e.to_string().contains("imag"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "image: ''\n",
            "image: 'a b'\n",
            "imagePullPolicy: Sometimes\n",
            "proxyResources:\n  requests:\n    cpu: '1; rm'\n",
        ] {
            assert!(InjectionConfig::from_yaml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn oversized_input_is_refused() {
        let big = format!("image: x\n#{}\n", "a".repeat(MAX_CONFIG_BYTES as usize));
        assert!(matches!(
            InjectionConfig::from_yaml(&big),
            Err(ConfigError::TooLarge { .. })
        ));
    }
}
