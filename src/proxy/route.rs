//! The outbound decision, pure over the policy: how a connection to an original destination is
//! secured and where it goes. The listener performs it ([`super::outbound`]).

use std::net::{IpAddr, SocketAddr};

use super::state::{Policy, Target};
use crate::xds::proto::palisade_v1 as pb;

/// How the client proxy secures one upstream connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Security {
    /// Bytes as they are (DISABLE, auto mTLS to an unmeshed endpoint, unknown destinations).
    Plaintext,
    /// Mesh mTLS; the server must present one of these SPIFFE IDs (empty: none will do).
    Mesh { expected: Vec<String> },
    /// TLS origination (SIMPLE / MUTUAL) as the rule says.
    Originate(pb::ClientTls),
}

/// Where an outbound connection goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// A Service port: one of these endpoints (address, security), chosen by the caller.
    Service {
        fqdn: String,
        endpoints: Vec<(SocketAddr, Security)>,
    },
    /// Straight to this address, secured so.
    Direct {
        addr: SocketAddr,
        security: Security,
        /// Unknown to the view (counted as passthrough).
        unknown: bool,
    },
    /// Closed, for this reason (metric label).
    Refuse(&'static str),
}

/// The security a [`pb::ClientTls`] asks for. UNSPECIFIED (never sent) is PLAINTEXT, as the
/// contract says; unknown future modes fail closed (refused by an empty mesh expectation).
pub fn client_security(tls: &pb::ClientTls) -> Security {
    use pb::client_tls::Mode;
    match Mode::try_from(tls.mode) {
        Ok(Mode::Unspecified | Mode::Plaintext) => Security::Plaintext,
        Ok(Mode::MeshMtls) => Security::Mesh {
            expected: tls.expected_identities.clone(),
        },
        Ok(Mode::Simple | Mode::Mutual) => Security::Originate(tls.clone()),
        Err(_) => Security::Mesh {
            expected: Vec::new(),
        },
    }
}

/// The security for a meshed pod dialled directly on `port`: plaintext when
/// `plaintext_by_default` XOR the port is an exception, else mesh mTLS expecting exactly the
/// pod's identity.
pub fn pod_security(workload: &pb::Workload, port: u16) -> Security {
    let exception = workload.exception_ports.contains(&u32::from(port));
    if workload.plaintext_by_default != exception {
        Security::Plaintext
    } else {
        Security::Mesh {
            expected: vec![workload.identity.clone()],
        }
    }
}

/// Where a connection to `dst` goes under `policy`. Before the first policy every connection
/// is refused (see `outbound` for why).
pub fn route(policy: Option<&Policy>, dst: SocketAddr) -> Route {
    let Some(policy) = policy else {
        return Route::Refuse("no_policy");
    };
    match policy.lookup(dst) {
        Target::Service { destination, port } => {
            let endpoints: Vec<(SocketAddr, Security)> = port
                .endpoints
                .iter()
                .filter_map(|e| {
                    let ip = e.ip.parse::<IpAddr>().ok()?;
                    let port = u16::try_from(e.port).ok().filter(|p| *p != 0)?;
                    let tls = e.tls.clone().unwrap_or_default();
                    Some((SocketAddr::new(ip, port), client_security(&tls)))
                })
                .collect();
            if endpoints.is_empty() {
                return Route::Refuse("no_endpoints");
            }
            Route::Service {
                fqdn: destination.fqdn.clone(),
                endpoints,
            }
        }
        Target::Pod { workload } => Route::Direct {
            addr: dst,
            security: pod_security(workload, dst.port()),
            unknown: false,
        },
        Target::Unknown => Route::Direct {
            addr: dst,
            security: Security::Plaintext,
            unknown: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn tls(mode: pb::client_tls::Mode, expected: &[&str]) -> pb::ClientTls {
        pb::ClientTls {
            mode: mode as i32,
            expected_identities: expected.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn client_tls_table() {
        use pb::client_tls::Mode;
        let id = "spiffe://cluster.local/ns/a/sa/b";
        let simple = tls(Mode::Simple, &["db.example.com"]);
        let cases = [
            (tls(Mode::Unspecified, &[]), Security::Plaintext),
            (tls(Mode::Plaintext, &[id]), Security::Plaintext),
            (
                tls(Mode::MeshMtls, &[id]),
                Security::Mesh {
                    expected: vec![id.into()],
                },
            ),
            (
                tls(Mode::MeshMtls, &[]),
                Security::Mesh { expected: vec![] },
            ),
            (simple.clone(), Security::Originate(simple)),
            (
                pb::ClientTls {
                    mode: 99,
                    ..Default::default()
                },
                Security::Mesh { expected: vec![] },
            ),
        ];
        for (tls, want) in cases {
            assert_eq!(client_security(&tls), want, "{tls:?}");
        }
    }

    #[test]
    fn pod_security_table() {
        let id = "spiffe://cluster.local/ns/a/sa/b".to_string();
        let mesh = Security::Mesh {
            expected: vec![id.clone()],
        };
        // (plaintext_by_default, exception ports, port, want)
        let cases = [
            (false, vec![], 80, mesh.clone()),
            (false, vec![80], 80, Security::Plaintext),
            (false, vec![81], 80, mesh.clone()),
            (true, vec![], 80, Security::Plaintext),
            (true, vec![80], 80, mesh.clone()),
        ];
        for (plaintext_by_default, exception_ports, port, want) in cases {
            let w = pb::Workload {
                identity: id.clone(),
                plaintext_by_default,
                exception_ports: exception_ports.clone(),
                ..Default::default()
            };
            assert_eq!(
                pod_security(&w, port),
                want,
                "{plaintext_by_default} {exception_ports:?} {port}"
            );
        }
    }

    #[test]
    fn routes() {
        let ep = |ip: &str, port: u32, mode| pb::Endpoint {
            ip: ip.into(),
            port,
            tls: Some(tls(mode, &["spiffe://cluster.local/ns/a/sa/web"])),
            ..Default::default()
        };
        use pb::client_tls::Mode;
        let dest = |endpoints| pb::Destination {
            fqdn: "web.a.svc.cluster.local".into(),
            vips: vec!["10.96.0.1".into()],
            ports: vec![pb::ServicePort {
                port: 80,
                endpoints,
                ..Default::default()
            }],
            ..Default::default()
        };
        let workload = pb::Workload {
            ips: vec!["10.0.0.7".into()],
            identity: "spiffe://cluster.local/ns/a/sa/db".into(),
            ..Default::default()
        };
        let policy = Policy::new(
            Default::default(),
            vec![dest(vec![
                ep("10.0.0.1", 8080, Mode::MeshMtls),
                ep("bogus", 8080, Mode::MeshMtls),
                ep("10.0.0.2", 0, Mode::MeshMtls),
                ep("10.0.0.3", 9090, Mode::Plaintext),
            ])],
            vec![workload],
            BTreeMap::new(),
        );
        let vip = "10.96.0.1:80".parse().unwrap();
        assert_eq!(route(None, vip), Route::Refuse("no_policy"));
        let Route::Service { fqdn, endpoints } = route(Some(&policy), vip) else {
            panic!("a service");
        };
        assert_eq!(fqdn, "web.a.svc.cluster.local");
        assert_eq!(
            endpoints
                .iter()
                .map(|e| e.0.to_string())
                .collect::<Vec<_>>(),
            ["10.0.0.1:8080", "10.0.0.3:9090"],
            "unusable endpoints are skipped"
        );
        assert_eq!(endpoints[1].1, Security::Plaintext);
        let pod = "10.0.0.7:5432".parse().unwrap();
        assert_eq!(
            route(Some(&policy), pod),
            Route::Direct {
                addr: pod,
                security: Security::Mesh {
                    expected: vec!["spiffe://cluster.local/ns/a/sa/db".into()]
                },
                unknown: false
            }
        );
        let elsewhere = "192.0.2.1:443".parse().unwrap();
        assert_eq!(
            route(Some(&policy), elsewhere),
            Route::Direct {
                addr: elsewhere,
                security: Security::Plaintext,
                unknown: true
            }
        );
        let empty = Policy::new(
            Default::default(),
            vec![dest(vec![])],
            vec![],
            BTreeMap::new(),
        );
        assert_eq!(route(Some(&empty), vip), Route::Refuse("no_endpoints"));
    }
}
