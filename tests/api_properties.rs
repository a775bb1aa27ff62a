//! Property test of the management API's JSON bodies (the proptest stand-in
//! for a cargo-fuzz target, which needs a nightly toolchain): arbitrary bytes
//! and arbitrary JSON on every endpoint never panic the gateway and get only
//! the documented answers, always with a JSON `{"error": ...}` body on errors.
//! The seed corpus in `tests/corpus/api/` is replayed on every run.

mod common;

use common::{Backend, TOKEN, TestGateway};
use proptest::prelude::*;
use serde_json::Value;

struct Target {
    path: String,
    allowed: &'static [u16],
}

fn targets(key: &str) -> Vec<Target> {
    vec![
        Target {
            path: "/api/v1/subscriptions".into(),
            allowed: &[201, 400, 422],
        },
        Target {
            path: format!("/api/v1/subscriptions/{key}/bindings"),
            allowed: &[204, 400, 422],
        },
        Target {
            path: "/api/v1/events/longpoll.event.fuzz".into(),
            allowed: &[202, 400, 422],
        },
    ]
}

async fn post(gw: &TestGateway, path: &str, body: Vec<u8>) -> (u16, String) {
    let r = gw
        .client
        .post(format!("{}{path}", gw.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the gateway answers");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

fn check(target: &Target, status: u16, body: &str, input: &[u8]) -> Result<(), String> {
    if !target.allowed.contains(&status) {
        return Err(format!(
            "{} answered {status} {body:?} to {:?}",
            target.path,
            String::from_utf8_lossy(&input[..input.len().min(200)])
        ));
    }
    if status >= 400 {
        let v: Value =
            serde_json::from_str(body).map_err(|e| format!("error body not JSON ({e}): {body}"))?;
        if v["error"].as_str().is_none_or(|s| s.is_empty()) {
            return Err(format!("error body without \"error\": {body}"));
        }
    }
    Ok(())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
        "longpoll\\.event\\.[a-z0-9.*#]{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(("(event_keys|error|[a-z_]{1,8})", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

#[test]
fn api_bodies_get_only_the_documented_answers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gw = rt.block_on(TestGateway::start(Backend::Memory));
    let key = rt.block_on(gw.subscribe(&["longpoll.event.fuzz"]));
    let targets = targets(&key);

    // The seed corpus.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/api");
    let mut seeds = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let input = std::fs::read(entry.unwrap().path()).unwrap();
        for t in &targets {
            let (status, body) = rt.block_on(post(&gw, &t.path, input.clone()));
            check(t, status, &body, &input).unwrap();
        }
        seeds += 1;
    }
    assert!(seeds >= 10, "corpus present");

    let config = ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    };
    proptest!(config, |(value in json_value(), bytes in proptest::collection::vec(any::<u8>(), 0..64), which in 0usize..3)| {
        let t = &targets[which];
        for input in [serde_json::to_vec(&value).unwrap(), bytes.clone()] {
            let (status, body) = rt.block_on(post(&gw, &t.path, input.clone()));
            prop_assert!(check(t, status, &body, &input).is_ok(), "{}", check(t, status, &body, &input).unwrap_err());
        }
    });
    // Still serving.
    assert_eq!(rt.block_on(gw.get("/")).status, 200);
}
