use std::sync::Arc;

use proptest::prelude::*;

use super::*;

/// The bytes a real rustls client sends first, offering `alpn`.
fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = "10.0.0.1".try_into().unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// `hello` (one record) re-framed as two records, the handshake message split at `at`.
fn split_across_records(hello: &[u8], at: usize) -> Vec<u8> {
    let body = &hello[5..];
    let mut out = Vec::new();
    for part in [&body[..at], &body[at..]] {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

#[test]
fn a_mesh_hello_is_recognised_only_once_complete() {
    let hello = client_hello(&[b"h2", MESH_ALPN]);
    assert!(hello.len() < MAX_PEEK, "one record");
    assert_eq!(detect(&hello), Detection::MeshTls);
    // Every split a TCP read could produce: undecided until the last byte.
    for cut in 0..hello.len() {
        assert_eq!(
            detect(&hello[..cut]),
            Detection::NeedMore,
            "prefix of {cut}"
        );
    }
    // Bytes after the hello (none are sent before the server answers, but harmless).
    let mut more = hello.clone();
    more.extend_from_slice(b"trailing");
    assert_eq!(detect(&more), Detection::MeshTls);
}

#[test]
fn table() {
    let mesh = client_hello(&[MESH_ALPN]);
    let h2 = client_hello(&[b"h2", b"http/1.1"]);
    let no_alpn = client_hello(&[]);
    let mut not_client_hello = mesh.clone();
    not_client_hello[5] = 2; // ServerHello type
    let mut wrong_major = mesh.clone();
    wrong_major[1] = 2;
    let mut truncated_body = mesh.clone();
    // Handshake length one byte longer than the record: continues in another record.
    let hs_len = u32::from_be_bytes([0, mesh[6], mesh[7], mesh[8]]) + 1;
    truncated_body[6..9].copy_from_slice(&hs_len.to_be_bytes()[1..]);
    let mut alpn_prefix = mesh.clone();
    // "palisade-mtls/1" -> "palisade-mtls/0": a near miss is not the mesh token.
    let at = alpn_prefix
        .windows(MESH_ALPN.len())
        .position(|w| w == MESH_ALPN)
        .unwrap();
    alpn_prefix[at + MESH_ALPN.len() - 1] = b'0';
    let cases: Vec<(&str, Vec<u8>, Detection)> = vec![
        ("empty", vec![], Detection::NeedMore),
        ("one handshake byte", vec![22], Detection::NeedMore),
        ("header without length", vec![22, 3, 1], Detection::NeedMore),
        ("mesh hello", mesh.clone(), Detection::MeshTls),
        ("other ALPN (app's own TLS)", h2, Detection::Other),
        ("no ALPN", no_alpn, Detection::Other),
        ("near-miss ALPN", alpn_prefix, Detection::Other),
        ("HTTP", b"GET / HTTP/1.1\r\n".to_vec(), Detection::Other),
        (
            "one plaintext byte decides",
            b"G".to_vec(),
            Detection::Other,
        ),
        (
            "SSLv2 hello",
            vec![0x80, 0x2e, 0x01, 0x03, 0x01],
            Detection::Other,
        ),
        (
            "application data record",
            vec![23, 3, 3, 0, 5, 1, 2, 3, 4, 5],
            Detection::Other,
        ),
        ("record version 2", wrong_major, Detection::Other),
        (
            "record over 16 KiB",
            vec![22, 3, 1, 0x40, 0x01],
            Detection::Other,
        ),
        ("record of length 0", vec![22, 3, 1, 0, 0], Detection::Other),
        (
            "huge record",
            vec![22, 3, 3, 0xff, 0xff, 1],
            Detection::Other,
        ),
        (
            "partial non-ClientHello",
            vec![22, 3, 1, 0, 100, 2],
            Detection::Other,
        ),
        ("not a ClientHello", not_client_hello, Detection::Other),
        (
            "hello longer than its record",
            truncated_body,
            Detection::Other,
        ),
        (
            "hello over two records",
            split_across_records(&mesh, 40),
            Detection::Other,
        ),
        (
            "garbage in a record",
            [&[22, 3, 1, 0, 4][..], &[1, 0, 0, 0]].concat(),
            Detection::Other,
        ),
        (
            "lying extension length",
            {
                let mut b = vec![22, 3, 1, 0, 0];
                let mut hs = vec![1, 0, 0, 0];
                let mut body = vec![3, 3];
                body.extend([0u8; 32]);
                body.extend([0, 0, 2, 0x13, 0x01, 1, 0, 0, 10, 0, 16, 0, 200]);
                let n = body.len() as u32;
                hs[1..4].copy_from_slice(&n.to_be_bytes()[1..]);
                hs.extend(body);
                let n = hs.len() as u16;
                b[3..5].copy_from_slice(&n.to_be_bytes());
                b.extend(hs);
                b
            },
            Detection::Other,
        ),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(detect(&bytes), want, "{name}");
    }
}

proptest! {
    #[test]
    fn never_panics_and_a_decision_is_final(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let first = detect(&bytes);
        // More bytes never change a decision already made.
        if first != Detection::NeedMore {
            let mut more = bytes.clone();
            more.extend_from_slice(&[0xaa; 64]);
            prop_assert_eq!(detect(&more), first);
        }
    }

    #[test]
    fn mutated_hellos_never_panic(at in 0usize..1500, byte in any::<u8>()) {
        let mut hello = client_hello(&[MESH_ALPN]);
        if at < hello.len() {
            hello[at] = byte;
        }
        let _ = detect(&hello);
        for cut in [at.min(hello.len()), hello.len() / 2] {
            let _ = detect(&hello[..cut]);
        }
    }
}
