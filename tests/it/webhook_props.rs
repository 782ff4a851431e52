//! Property tests of the mutation: for generated pods (any number of containers, init
//! containers, volumes, probes of every kind, metadata maps absent, empty or filled), the
//! patch applies, keeps everything the user wrote, adds exactly what is documented, and a
//! second invocation leaves the result alone.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, ExecAction, GRPCAction, HTTPGetAction, Pod,
    PodSpec, Probe, TCPSocketAction, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use palisade::webhook::{Decision, SkipReason, decide};
use proptest::prelude::*;

use crate::webhook::test_config;

#[derive(Clone, Debug)]
enum ProbeSpec {
    Exec,
    HttpNumeric,
    HttpNamed,
    Tcp,
    Grpc,
}

fn probe(spec: &ProbeSpec) -> Probe {
    let mut p = Probe {
        period_seconds: Some(9),
        ..Probe::default()
    };
    match spec {
        ProbeSpec::Exec => {
            p.exec = Some(ExecAction {
                command: Some(vec!["true".into()]),
            })
        }
        ProbeSpec::HttpNumeric | ProbeSpec::HttpNamed => {
            p.http_get = Some(HTTPGetAction {
                path: Some("/h".into()),
                port: match spec {
                    ProbeSpec::HttpNamed => IntOrString::String("http".into()),
                    _ => IntOrString::Int(8080),
                },
                ..HTTPGetAction::default()
            })
        }
        ProbeSpec::Tcp => {
            p.tcp_socket = Some(TCPSocketAction {
                port: IntOrString::Int(8080),
                host: None,
            })
        }
        ProbeSpec::Grpc => {
            p.grpc = Some(GRPCAction {
                port: 9000,
                service: None,
            })
        }
    }
    p
}

fn probe_spec() -> impl Strategy<Value = Option<ProbeSpec>> {
    prop_oneof![
        Just(None),
        Just(Some(ProbeSpec::Exec)),
        Just(Some(ProbeSpec::HttpNumeric)),
        Just(Some(ProbeSpec::HttpNamed)),
        Just(Some(ProbeSpec::Tcp)),
        Just(Some(ProbeSpec::Grpc)),
    ]
}

fn string_map() -> impl Strategy<Value = Option<BTreeMap<String, String>>> {
    prop_oneof![
        Just(None),
        Just(Some(BTreeMap::new())),
        Just(Some(BTreeMap::from([("app".to_string(), "x".to_string())]))),
    ]
}

fn pod() -> impl Strategy<Value = Pod> {
    let container = (probe_spec(), probe_spec(), probe_spec());
    (
        prop::collection::vec(container, 1..4),
        0usize..3,
        0usize..3,
        string_map(),
        string_map(),
    )
        .prop_map(|(containers, inits, volumes, labels, annotations)| Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                labels,
                annotations,
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .enumerate()
                    .map(|(i, (l, r, s))| Container {
                        name: format!("c{i}"),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: 8080,
                            ..ContainerPort::default()
                        }]),
                        liveness_probe: l.as_ref().map(probe),
                        readiness_probe: r.as_ref().map(probe),
                        startup_probe: s.as_ref().map(probe),
                        ..Container::default()
                    })
                    .collect(),
                init_containers: (inits > 0).then(|| {
                    (0..inits)
                        .map(|i| Container {
                            name: format!("i{i}"),
                            ..Container::default()
                        })
                        .collect()
                }),
                volumes: (volumes > 0).then(|| {
                    (0..volumes)
                        .map(|i| Volume {
                            name: format!("v{i}"),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        })
                        .collect()
                }),
                ..PodSpec::default()
            }),
            status: None,
        })
}

fn enabled() -> BTreeMap<String, String> {
    BTreeMap::from([("palisade.dev/inject".to_string(), "enabled".to_string())])
}

proptest! {
    #[test]
    fn patch_applies_keeps_user_content_and_is_idempotent(original in pod()) {
        let Decision::Patch(ops) = decide(&original, "shop", &enabled(), &test_config()) else {
            panic!("expected a patch");
        };
        let mut doc = serde_json::to_value(&original).unwrap();
        json_patch::patch(&mut doc, &ops).unwrap();
        let injected: Pod = serde_json::from_value(doc).unwrap();
        let (before, after) = (original.spec.clone().unwrap(), injected.spec.clone().unwrap());

        let inits: Vec<String> = after.init_containers.unwrap().into_iter().map(|c| c.name).collect();
        let mut want = vec!["palisade-init".to_string(), "palisade-proxy".to_string()];
        want.extend(before.init_containers.iter().flatten().map(|c| c.name.clone()));
        prop_assert_eq!(inits, want);

        let volumes: Vec<String> = after.volumes.unwrap().into_iter().map(|v| v.name).collect();
        let mut want: Vec<String> = before.volumes.iter().flatten().map(|v| v.name.clone()).collect();
        want.extend(["palisade-token", "palisade-ca-root-cert", "palisade-run"].map(String::from));
        prop_assert_eq!(volumes, want);

        prop_assert_eq!(after.containers.len(), before.containers.len());
        for (b, a) in before.containers.iter().zip(&after.containers) {
            prop_assert_eq!(&a.name, &b.name);
            for (kind, pb, pa) in [
                ("livez", &b.liveness_probe, &a.liveness_probe),
                ("readyz", &b.readiness_probe, &a.readiness_probe),
                ("startupz", &b.startup_probe, &a.startup_probe),
            ] {
                match (pb, pa) {
                    (None, None) => {}
                    (Some(pb), Some(pa)) if pb.exec.is_some() => prop_assert_eq!(pa, pb),
                    (Some(pb), Some(pa)) => {
                        let http = pa.http_get.as_ref().unwrap();
                        prop_assert_eq!(http.port.clone(), IntOrString::Int(15020));
                        let path = format!("/app-health/{}/{kind}", b.name);
                        prop_assert_eq!(http.path.as_deref(), Some(path.as_str()));
                        prop_assert_eq!(pa.period_seconds, pb.period_seconds);
                        prop_assert!(pa.tcp_socket.is_none() && pa.grpc.is_none());
                    }
                    _ => prop_assert!(false, "probe appeared or vanished"),
                }
            }
        }

        let labels = injected.metadata.labels.clone().unwrap();
        prop_assert_eq!(labels.get("security.palisade.dev/tlsMode").map(String::as_str), Some("palisade"));
        for (k, v) in original.metadata.labels.iter().flatten() {
            prop_assert_eq!(labels.get(k), Some(v));
        }
        let annotations = injected.metadata.annotations.clone().unwrap();
        prop_assert!(annotations.contains_key("sidecar.palisade.dev/status"));
        for (k, v) in original.metadata.annotations.iter().flatten() {
            prop_assert_eq!(annotations.get(k), Some(v));
        }

        prop_assert_eq!(
            decide(&injected, "shop", &enabled(), &test_config()),
            Decision::Skip { reason: SkipReason::AlreadyInjected }
        );
    }
}
