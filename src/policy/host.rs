//! Host names: expansion of short names, wildcard matching and specificity.

/// Expands a host as written in a rule of `namespace`: a name without a dot becomes
/// `<host>.<namespace>.svc.<domain_suffix>`; a name with a dot, and any wildcard (`*`, `*.x`),
/// is taken literally.
pub fn expand_host(host: &str, namespace: &str, domain_suffix: &str) -> String {
    if host.contains('.') || host.starts_with('*') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{domain_suffix}")
    }
}

/// The fully qualified name of a Kubernetes service.
pub fn service_fqdn(name: &str, namespace: &str, domain_suffix: &str) -> String {
    format!("{name}.{namespace}.svc.{domain_suffix}")
}

/// The namespace of a host of the form `<svc>.<ns>.svc.<domain_suffix>`, if it has that form.
pub fn namespace_of_service_host<'h>(host: &'h str, domain_suffix: &str) -> Option<&'h str> {
    let rest = host.strip_suffix(domain_suffix)?.strip_suffix(".svc.")?;
    let (name, namespace) = rest.split_once('.')?;
    if name.is_empty() || namespace.is_empty() || namespace.contains('.') || name.starts_with('*') {
        return None;
    }
    Some(namespace)
}

/// A rule's host after expansion: an exact name or a wildcard suffix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostPattern {
    /// Matches this name only.
    Exact(String),
    /// `*` followed by `suffix`: matches every name ending with `suffix` (`*` alone: all).
    Wildcard(String),
}

impl HostPattern {
    /// Classifies an expanded host.
    pub(crate) fn parse(expanded: &str) -> HostPattern {
        match expanded.strip_prefix('*') {
            Some(suffix) => HostPattern::Wildcard(suffix.to_string()),
            None => HostPattern::Exact(expanded.to_string()),
        }
    }
}

/// True when wildcard suffix `suffix` (the text after `*`) matches `host`.
pub(crate) fn wildcard_matches(suffix: &str, host: &str) -> bool {
    host.len() > suffix.len() && host.ends_with(suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_table() {
        let cases = [
            ("reviews", "default", "reviews.default.svc.cluster.local"),
            ("reviews.prod", "default", "reviews.prod"),
            (
                "reviews.prod.svc.cluster.local",
                "x",
                "reviews.prod.svc.cluster.local",
            ),
            ("*.example.com", "default", "*.example.com"),
            ("*", "default", "*"),
            ("*reviews", "default", "*reviews"),
        ];
        for (host, ns, want) in cases {
            assert_eq!(
                expand_host(host, ns, "cluster.local"),
                want,
                "{host} in {ns}"
            );
        }
        assert_eq!(
            expand_host("a", "b", "corp.internal"),
            "a.b.svc.corp.internal"
        );
    }

    #[test]
    fn service_namespace_parsing() {
        let cases = [
            ("reviews.default.svc.cluster.local", Some("default")),
            ("reviews.default.svc.other.local", None),
            ("a.b.c.svc.cluster.local", None),
            ("default.svc.cluster.local", None),
            ("*.default.svc.cluster.local", None),
            ("example.com", None),
        ];
        for (host, want) in cases {
            assert_eq!(
                namespace_of_service_host(host, "cluster.local"),
                want,
                "{host}"
            );
        }
    }

    #[test]
    fn wildcard_table() {
        let cases = [
            ("", "anything.at.all", true),
            (".example.com", "a.example.com", true),
            (".example.com", "a.b.example.com", true),
            (".example.com", "example.com", false),
            (".example.com", "aexample.com", false),
            (".svc.cluster.local", "r.d.svc.cluster.local", true),
            ("example.com", "myexample.com", true),
        ];
        for (suffix, host, want) in cases {
            assert_eq!(wildcard_matches(suffix, host), want, "*{suffix} vs {host}");
        }
        assert_eq!(
            HostPattern::parse("*.x"),
            HostPattern::Wildcard(".x".into())
        );
        assert_eq!(
            HostPattern::parse("*"),
            HostPattern::Wildcard(String::new())
        );
        assert_eq!(HostPattern::parse("a.x"), HostPattern::Exact("a.x".into()));
    }
}
