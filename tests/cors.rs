//! CORS for polls from pages on another origin (`--cors-origin`): what real
//! clients send passes the preflight, and the answers expose what they read.
//! (The same in a real browser: tests/browser/test/deploy.test.mjs and
//! txlongpoll-clients.test.mjs.)

mod common;

use common::{Backend, TestGateway, unique};
use serde_json::json;

const PAGE: &str = "http://app.example";

/// The request headers real clients add to a poll: YUI 3's io (Launchpad's and
/// MAAS's clients) and jQuery send X-Requested-With on every request.
const CLIENT_HEADERS: [&str; 9] = [
    "x-requested-with",
    "cache-control",
    "pragma",
    "if-none-match",
    "if-modified-since",
    "content-type",
    "last-event-id",
    "traceparent",
    "tracestate",
];

async fn gateway() -> TestGateway {
    TestGateway::start_with(Backend::Memory, |s| s.cors_origins = vec![PAGE.into()]).await
}

async fn preflight(gw: &TestGateway, origin: &str, headers: &str) -> reqwest::Response {
    gw.client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/?uuid=longpoll.subscribe.x&sequence=1", gw.base),
        )
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", headers)
        .send()
        .await
        .expect("preflight")
}

fn listed(r: &reqwest::Response, header: &str) -> Vec<String> {
    r.headers()
        .get(header)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect()
}

#[tokio::test]
async fn a_preflight_allows_the_request_headers_real_clients_send() {
    let gw = gateway().await;
    // YUI 3's io, as Launchpad's client sends it.
    let r = preflight(&gw, PAGE, "x-requested-with").await;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["access-control-allow-origin"], PAGE);
    assert!(listed(&r, "access-control-allow-methods").contains(&"get".to_owned()));
    let allowed = listed(&r, "access-control-allow-headers");
    for header in CLIENT_HEADERS {
        assert!(
            allowed.contains(&header.to_owned()),
            "{header} in {allowed:?}"
        );
    }
    // Every one of them at once.
    let r = preflight(&gw, PAGE, &CLIENT_HEADERS.join(",")).await;
    assert!(r.status().is_success());
    // The preflight is cached by the browser, not repeated before every poll.
    assert_eq!(r.headers()["access-control-max-age"], "600");
}

#[tokio::test]
async fn a_preflight_does_not_allow_other_headers_or_other_origins() {
    let gw = gateway().await;
    let r = preflight(&gw, PAGE, "authorization").await;
    assert!(!listed(&r, "access-control-allow-headers").contains(&"authorization".to_owned()));
    let r = preflight(&gw, "http://elsewhere.example", "x-requested-with").await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_answer_exposes_the_long_poll_headers_and_retry_after() {
    let gw = gateway().await;
    let event = unique("longpoll.event.cors");
    let key = gw.subscribe(&[&event]).await;
    gw.emit(&event, json!({"n": 1})).await;
    let r = gw
        .client
        .get(format!("{}/?uuid={key}&sequence=1", gw.base))
        .header("origin", PAGE)
        .header("x-requested-with", "XMLHttpRequest")
        .send()
        .await
        .expect("poll");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], PAGE);
    let exposed = listed(&r, "access-control-expose-headers");
    for header in [
        "x-longpoll-sequence",
        "x-longpoll-message-id",
        "x-longpoll-count",
        "x-longpoll-message-ids",
        "retry-after",
    ] {
        assert!(
            exposed.contains(&header.to_owned()),
            "{header} in {exposed:?}"
        );
    }
}
