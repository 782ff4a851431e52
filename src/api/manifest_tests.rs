//! Tests of the manifest reader: kinds, errors naming document and field, bounds.
use super::*;
use crate::api::MtlsMode;
use crate::policy::TargetPort;

fn parse(text: &str) -> Result<Manifests, ManifestError> {
    let mut m = Manifests::default();
    m.add_str(text, Path::new("test.yaml"))?;
    Ok(m)
}

#[test]
fn reads_istio_and_palisade_kinds_and_skips_others() {
    let m = parse(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: foo}\nspec:\n  mtls: {mode: STRICT}\n  selector: {matchLabels: {app: x}}\n  portLevelMtls:\n    8080: {mode: DISABLE}\n---\napiVersion: networking.palisade.dev/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: reviews}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n",
    )
    .expect("parses");
    assert_eq!(m.peer_authentications.len(), 1);
    let pa = &m.peer_authentications[0];
    assert_eq!(pa.meta.namespace, "foo");
    assert_eq!(pa.spec.port_level_mtls[&8080].mode, Some(MtlsMode::Disable));
    assert_eq!(m.destination_rules[0].meta.namespace, "default");
    assert_eq!(m.destination_rules[0].meta.seq, 1);
    assert_eq!(m.skipped.len(), 1);
    assert_eq!(m.skipped[0].kind, "ConfigMap");
}

#[test]
fn errors_name_document_and_field() {
    let err = parse(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\nmetadata: {name: bad}\nspec:\n  mtls: {mode: STRICTLY}\n",
    )
    .expect_err("invalid mode");
    let text = err.to_string();
    assert!(text.contains("document 2"), "{text}");
    assert!(text.contains("spec.mtls.mode"), "{text}");
    assert!(text.contains("STRICTLY"), "{text}");
}

#[test]
fn unknown_fields_are_errors() {
    let err = parse(
        "apiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\nmetadata: {name: typo}\nspec:\n  mtsl: {mode: STRICT}\n",
    )
    .expect_err("typo");
    assert!(err.to_string().contains("spec.mtsl"), "{err}");
}

#[test]
fn bad_port_key_is_an_error() {
    let err = parse(
        "apiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  selector: {matchLabels: {a: b}}\n  portLevelMtls:\n    http: {mode: STRICT}\n",
    )
    .expect_err("non-numeric port");
    assert!(err.to_string().contains("portLevelMtls"), "{err}");
}

#[test]
fn missing_name_host_and_bad_yaml_are_errors() {
    assert!(
        parse("apiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\nspec: {}\n")
            .is_err()
    );
    assert!(parse("apiVersion: networking.palisade.dev/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {}\n").is_err());
    assert!(matches!(parse("a: [b\n"), Err(ManifestError::Yaml { .. })));
    assert!(parse("- just\n- a list\n").is_err());
}

#[test]
fn creation_timestamps_are_parsed() {
    let m = parse("apiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\nmetadata: {name: p, creationTimestamp: '2024-01-02T03:04:05Z'}\nspec: {}\n").expect("parses");
    assert!(m.peer_authentications[0].meta.creation_timestamp.is_some());
    assert!(parse("apiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\nmetadata: {name: p, creationTimestamp: yesterday}\nspec: {}\n").is_err());
}

#[test]
fn workloads_and_services_feed_the_inventory() {
    let m = parse(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      serviceAccountName: web-sa\n      containers:\n      - name: web\n        image: nginx\n        ports: [{name: http, containerPort: 8080}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p, labels: {app: p}}\n  spec: {containers: [{name: c, image: i}]}\n",
    )
    .expect("parses");
    assert_eq!(m.workloads.len(), 2);
    assert_eq!(m.workloads[0].service_account, "web-sa");
    assert_eq!(m.workloads[0].ports[0].port, 8080);
    assert_eq!(m.workloads[1].service_account, "default");
    assert_eq!(
        m.services[0].ports[0].target_port,
        TargetPort::Name("http".into())
    );
}

#[test]
fn oversized_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, vec![b'#'; (MAX_FILE_BYTES + 1) as usize]).expect("write");
    assert!(matches!(
        Manifests::load(&[path]),
        Err(ManifestError::TooLarge { .. })
    ));
}

#[test]
fn pods_services_and_namespaces_carry_addresses_and_labels() {
    let m = parse(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: pay}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: shop, deletionTimestamp: '2025-01-01T00:00:00Z'}\nspec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.0.0.9, podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}, {ip: 10.0.0.1}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\nspec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.0.0.2, phase: Running}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: None}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: t}\nspec: {clusterIP: 10.96.0.1, clusterIPs: [10.96.0.1, 'fd00::a']}\n",
    )
    .expect("parses");
    assert_eq!(m.namespaces[0].labels["team"], "pay");
    let ips: Vec<String> = m.pods[0].ips.iter().map(|ip| ip.to_string()).collect();
    assert_eq!(
        ips,
        ["10.0.0.1", "fd00::1"],
        "podIPs win over podIP, once each"
    );
    assert!(!m.pods[0].active, "terminating");
    assert!(m.pods[1].active);
    assert_eq!(m.workloads.len(), 2);
    assert!(m.service_ips[0].is_empty(), "headless");
    assert_eq!(m.service_ips[1].len(), 2);
}

#[test]
fn bad_addresses_and_missing_names_are_errors_naming_the_field() {
    let cases = [
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\nstatus: {podIPs: [{ip: 10.0.0}]}\n",
            "status.podIPs[0].ip",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\nstatus: {podIP: 7}\n",
            "status.podIP",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIPs: [10.96.0.1, nope]}\n",
            "spec.clusterIPs[1]",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {labels: {a: b}}\n",
            "metadata.name",
        ),
        ("apiVersion: v1\nkind: Pod\nspec: {}\n", "metadata.name"),
    ];
    for (text, field) in cases {
        let err = parse(text).expect_err(field);
        assert!(
            err.to_string().contains(&format!("field `{field}`")),
            "{err}"
        );
    }
}
