use tokio::net::TcpListener;

use super::*;

/// What the injector writes for a container `web` (see `webhook::probes`).
const FROM_INJECTOR: &str = r#"{
  "/app-health/web/livez": {"httpGet": {"path": "/live", "port": 8080, "httpHeaders": [{"name": "X-Probe", "value": "1"}]}, "timeoutSeconds": 3},
  "/app-health/web/readyz": {"tcpSocket": {"port": 8080}},
  "/app-health/web/startupz": {"httpGet": {"port": 8443, "scheme": "HTTPS"}},
  "/app-health/grpc-app/readyz": {"grpc": {"port": 9090}}
}"#;

#[test]
fn parses_what_the_injector_writes() {
    let probes = AppProbes::parse(Some(FROM_INJECTOR)).unwrap();
    assert_eq!(probes.len(), 4);
    assert_eq!(
        probes.get("web", "livez"),
        Some(&AppProbe {
            action: Action::Http {
                port: 8080,
                path: "/live".into(),
                headers: vec![("X-Probe".into(), "1".into())],
                tls: false,
            },
            timeout: Duration::from_secs(3),
        })
    );
    assert_eq!(
        probes.get("web", "readyz").unwrap().action,
        Action::Tcp { port: 8080 }
    );
    let startup = probes.get("web", "startupz").unwrap();
    assert!(matches!(&startup.action, Action::Http { tls: true, path, .. } if path == "/"));
    assert_eq!(startup.timeout, Duration::from_secs(1), "the default");
    assert_eq!(
        probes.get("grpc-app", "readyz").unwrap().action,
        Action::Grpc {
            port: 9090,
            service: String::new()
        }
    );
    assert!(probes.get("web", "healthz").is_none());
    assert!(probes.get("other", "livez").is_none());
    assert!(AppProbes::parse(None).unwrap().is_empty());
    assert!(AppProbes::parse(Some("  ")).unwrap().is_empty());
}

#[test]
fn refuses_what_it_could_not_run_faithfully() {
    let probe = |key: &str, body: &str| format!("{{\"{key}\": {body}}}");
    let ok_key = "/app-health/web/livez";
    for (json, why) in [
        ("[1]".to_string(), "JSON"),
        (
            probe("/healthz", r#"{"tcpSocket": {"port": 1}}"#),
            "app-health",
        ),
        (
            probe("/app-health/web/deadz", r#"{"tcpSocket": {"port": 1}}"#),
            "app-health",
        ),
        (
            probe("/app-health//livez", r#"{"tcpSocket": {"port": 1}}"#),
            "app-health",
        ),
        (
            probe(ok_key, r#"{"tcpSocket": {"port": "http"}}"#),
            "named port",
        ),
        (
            probe(ok_key, r#"{"tcpSocket": {"port": 70000}}"#),
            "1..65535",
        ),
        (
            probe(ok_key, r#"{"httpGet": {"port": 80, "path": "/a b"}}"#),
            "request target",
        ),
        (
            probe(ok_key, r#"{"httpGet": {"port": 80, "path": "/\r\nX: y"}}"#),
            "request target",
        ),
        (
            probe(
                ok_key,
                r#"{"httpGet": {"port": 80, "httpHeaders": [{"name": "X", "value": "a\r\nEvil: 1"}]}}"#,
            ),
            "header",
        ),
        (
            probe(ok_key, r#"{"httpGet": {"port": 80, "scheme": "FTP"}}"#),
            "scheme",
        ),
        (
            probe(ok_key, r#"{"exec": {"command": ["true"]}}"#),
            "no httpGet",
        ),
        (
            format!("{{\"x\": \"{}\"}}", "a".repeat(MAX_PROBES_JSON)),
            "larger",
        ),
    ] {
        let err = AppProbes::parse(Some(&json)).expect_err(why).to_string();
        assert!(err.contains(why), "{why}: {err}");
    }
    let many: Vec<String> = (0..=MAX_PROBES)
        .map(|i| format!("\"/app-health/c{i}/livez\": {{\"tcpSocket\": {{\"port\": 1}}}}"))
        .collect();
    let err = AppProbes::parse(Some(&format!("{{{}}}", many.join(",")))).unwrap_err();
    assert_eq!(err, ProbesError::TooMany);
}

#[test]
fn status_lines() {
    for (line, code) in [
        ("HTTP/1.1 200 OK", Some(200)),
        ("HTTP/1.0 302 Found", Some(302)),
        ("HTTP/1.1 503", Some(503)),
        ("HTTP/2 200", None),
        ("HTTP/1.1 2000 OK", None),
        ("HTTP/1.1 099 x", None),
        ("SSH-2.0-OpenSSH", None),
        ("", None),
    ] {
        assert_eq!(status_code(line.as_bytes()), code, "{line}");
    }
}

/// A one-shot HTTP server answering `status`; returns its port and what it received.
async fn http_app(status: u16) -> (u16, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
        s.write_all(answer.as_bytes()).await.unwrap();
        String::from_utf8(got).unwrap()
    });
    (port, task)
}

fn http(port: u16, path: &str) -> AppProbe {
    AppProbe {
        action: Action::Http {
            port,
            path: path.into(),
            headers: vec![("X-Probe".into(), "yes".into())],
            tls: false,
        },
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn http_probes_succeed_on_2xx_3xx_and_fail_otherwise() {
    for (status, ok) in [
        (200, true),
        (204, true),
        (302, true),
        (404, false),
        (503, false),
    ] {
        let (port, app) = http_app(status).await;
        let outcome = run(&http(port, "/ready?x=1")).await;
        assert_eq!(outcome.is_ok(), ok, "{status}: {outcome:?}");
        let request = app.await.unwrap();
        assert!(
            request.starts_with("GET /ready?x=1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nX-Probe: yes\r\n"), "{request}");
        assert!(
            request.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")),
            "{request}"
        );
    }
}

#[tokio::test]
async fn tcp_and_grpc_probes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let probe = |action| AppProbe {
        action,
        timeout: Duration::from_secs(5),
    };
    assert!(run(&probe(Action::Tcp { port: open })).await.is_ok());
    assert!(run(&probe(Action::Tcp { port: closed })).await.is_err());
    assert!(
        run(&probe(Action::Http {
            port: closed,
            path: "/".into(),
            headers: vec![],
            tls: false
        }))
        .await
        .is_err()
    );
    // Something that is not a gRPC server fails the gRPC probe.
    drop(listener);
    assert!(
        run(&probe(Action::Grpc {
            port: open,
            service: String::new()
        }))
        .await
        .is_err()
    );
}

/// A gRPC health server: "" is SERVING, "down" NOT_SERVING, anything else NOT_FOUND.
struct Health;

#[tonic::async_trait]
impl crate::xds::proto::grpc_health_v1::health_server::Health for Health {
    async fn check(
        &self,
        request: tonic::Request<crate::xds::proto::grpc_health_v1::HealthCheckRequest>,
    ) -> Result<
        tonic::Response<crate::xds::proto::grpc_health_v1::HealthCheckResponse>,
        tonic::Status,
    > {
        use crate::xds::proto::grpc_health_v1::health_check_response::ServingStatus;
        let status = match request.get_ref().service.as_str() {
            "" => ServingStatus::Serving,
            "down" => ServingStatus::NotServing,
            _ => return Err(tonic::Status::not_found("unknown service")),
        };
        Ok(tonic::Response::new(
            crate::xds::proto::grpc_health_v1::HealthCheckResponse {
                status: status as i32,
            },
        ))
    }
}

#[tokio::test]
async fn grpc_probes_ask_the_health_service() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                crate::xds::proto::grpc_health_v1::health_server::HealthServer::new(Health),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let probe = |service: &str| AppProbe {
        action: Action::Grpc {
            port,
            service: service.into(),
        },
        timeout: Duration::from_secs(5),
    };
    assert_eq!(run(&probe("")).await, Ok("SERVING".into()));
    assert_eq!(run(&probe("down")).await, Err("NOT_SERVING".into()));
    let unknown = run(&probe("other")).await.unwrap_err();
    assert!(unknown.contains("NotFound"), "{unknown}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_app_fails_the_probe_at_its_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _hold = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(s);
    });
    let started = tokio::time::Instant::now();
    let outcome = run(&http(port, "/")).await;
    assert_eq!(outcome, Err("timed out after 5s".into()));
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}
