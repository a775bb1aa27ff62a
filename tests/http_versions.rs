//! What a connection speaks is told from its first bytes without consuming
//! them: HTTP/1.1, or HTTP/2 with prior knowledge (as ingresses speak it), and
//! a connection that says nothing is closed at the header read timeout.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Backend, TestGateway, unique};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 (prior knowledge) client connection to the gateway.
async fn h2_client(gw: &TestGateway) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

async fn h2_get(
    send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    gw: &TestGateway,
    path_and_query: &str,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let req = http::Request::get(format!("{}{path_and_query}", gw.base))
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.expect("HTTP/2 response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_over_http2_with_prior_knowledge_is_held_and_answered() {
    let gw = TestGateway::start(Backend::Memory).await;
    let event = unique("longpoll.event.h2");
    let key = gw.subscribe(&[&event]).await;
    let mut send = h2_client(&gw).await;
    let held = {
        let mut send = send.clone();
        let base = gw.base.clone();
        let path = format!("/?uuid={key}&sequence=1");
        tokio::spawn(async move {
            let req = http::Request::get(format!("{base}{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.expect("HTTP/2 response");
            let status = resp.status();
            let seq = resp.headers().get("x-longpoll-sequence").cloned();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, seq, body)
        })
    };
    gw.wait_metric("longpoll_polls_held", 1.0).await;
    gw.emit(&event, json!({"over": "h2"})).await;
    let (status, _seq, body) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["over"], "h2");

    // The same connection carries the other routes too.
    let (status, _, _) = h2_get(&mut send, &gw, "/longpoll.js").await;
    assert_eq!(status, 200);
    let (status, _, _) = h2_get(&mut send, &gw, "/?uuid=longpoll.subscribe.nope&sequence=1").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preface_split_across_segments_still_selects_http2() {
    let gw = TestGateway::start(Backend::Memory).await;
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(&H2_PREFACE[..10]).await.unwrap();
    // The rest later, as a separate segment: the server must wait for it
    // rather than decide on the first ten bytes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(&H2_PREFACE[10..]).await.unwrap();
    // An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
    stream
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut header = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut header))
        .await
        .expect("the server answers")
        .expect("a frame header");
    assert_eq!(
        header[3], 4,
        "the server's first frame is SETTINGS: {header:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_request_beginning_like_the_preface_is_http1() {
    // "P" as in PRI, then not the preface: an HTTP/1 request with an unknown
    // method, answered by HTTP/1 (405), not taken for HTTP/2.
    let gw = TestGateway::start(Backend::Memory).await;
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    stream
        .write_all(b"PRIX / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_read_timeout() {
    let gw = TestGateway::start_with(Backend::Memory, |s| {
        s.limits.header_read_timeout = Duration::from_secs(2);
    })
    .await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    gw.wait_metric("longpoll_connections_open", 1.0).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
        .await
        .expect("closed by the server");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(1900),
        "closed after {after:?}"
    );
    gw.wait_metric("longpoll_connections_open", 0.0).await;
}
