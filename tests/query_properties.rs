//! Property test: arbitrary request targets (paths and query strings, raw bytes
//! on the wire) never make the gateway panic or answer anything outside the
//! contract's table. The proptest stand-in for a cargo-fuzz target of the
//! query/sequence parsing (cargo-fuzz needs nightly); the seed corpus in
//! `tests/corpus/queries.txt` is replayed first, and failures proptest finds are
//! kept in `tests/query_properties.proptest-regressions`.

mod common;

use std::net::SocketAddr;

use common::{Backend, TestGateway};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one raw HTTP/1.1 request and returns (status, body).
async fn raw_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Pieces that make interesting queries.
fn query_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("uuid=".to_owned()),
        Just("sequence=".to_owned()),
        Just("uuid=longpoll.subscribe.".to_owned()),
        "[a-z0-9.%+=&_-]{0,40}",
        "sequence=[0-9+-]{0,25}",
        "max=[0-9a-z+-]{0,4}",
        "uuid=longpoll\\.subscribe\\.[!-~]{0,30}",
        "[!-~]{0,20}",
    ]
}

fn target() -> impl Strategy<Value = String> {
    (
        "(/[a-zA-Z0-9._~%-]{0,12}){0,3}/?",
        proptest::collection::vec(query_piece(), 0..5),
    )
        .prop_map(|(path, pieces)| {
            let path = if path.is_empty() {
                "/".to_owned()
            } else {
                path
            };
            // The API's own routes are tested elsewhere; here, the long-poll side.
            let path = if path.starts_with("/api")
                || path.starts_with("/demo")
                || path.starts_with("/longpoll.")
            {
                format!("/x{path}")
            } else {
                path
            };
            if pieces.is_empty() {
                path
            } else {
                format!("{path}?{}", pieces.join("&"))
            }
        })
}

#[test]
fn arbitrary_queries_get_only_the_contracts_answers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gw = rt.block_on(TestGateway::start_with(Backend::Memory, |s| {
        s.poll_timeout = std::time::Duration::from_millis(200);
    }));
    let addr = gw.public_addr();
    // The seed corpus first.
    let corpus = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/queries.txt"),
    )
    .unwrap();
    for target in corpus.lines().filter(|l| !l.is_empty()) {
        let (status, _) = rt.block_on(raw_get(addr, target));
        assert!(matches!(status, 200 | 400 | 404), "{status} for {target}");
    }
    let config = ProptestConfig {
        cases: 400,
        ..ProptestConfig::default()
    };
    proptest!(config, |(target in target())| {
        let (status, body) = rt.block_on(raw_get(addr, &target));
        match status {
            200 => prop_assert_eq!(body.as_str(), "Async frontend for longpoll.subscribe."),
            400 => prop_assert!(
                matches!(body.as_str(), "Invalid request" | "Invalid sequence" | "Invalid max" | ""),
                "400 with {:?} for {}", body, target
            ),
            404 => {}
            other => prop_assert!(false, "unexpected status {} for {}", other, target),
        }
    });
    // Still alive and well.
    let (status, _) = rt.block_on(raw_get(addr, "/"));
    assert_eq!(status, 200);
    drop(gw);
}
