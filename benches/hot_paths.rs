//! Criterion benches of the per-poll hot paths: query parsing, the sequence
//! store's admit/finish cycle, response building and embedded-broker routing.
//! Run with `make bench`; figures go to benches/README.md as ratios.

use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use bytes::Bytes;
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use longpoll_gateway::broker::memory::topic_matches;
use longpoll_gateway::longpoll::sequence::Decision;
use longpoll_gateway::longpoll::{Answer, MessageIds, PollOutcome, SequenceStore, parse_query};
use longpoll_gateway::telemetry::Metrics;

fn query_parsing(c: &mut Criterion) {
    let q = "uuid=longpoll.subscribe.a966e051-8817-4897-840f-9de18404c8f0&sequence=1234";
    c.bench_function("parse_query", |b| {
        b.iter(|| parse_query(black_box(Some(q))))
    });
}

fn sequence_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let store = SequenceStore::new(
        Duration::from_secs(300),
        1_000_000,
        Arc::new(Metrics::new()),
    );
    let keys: Vec<String> = (0..10_000)
        .map(|i| format!("longpoll.subscribe.{i:08}"))
        .collect();
    let answer = |seq| {
        Arc::new(Answer {
            sequence: seq,
            body: Bytes::from_static(b"{\"event_key\":\"k\"}"),
            ids: MessageIds::One("id".into()),
            is_error: false,
        })
    };
    let mut seq = 0u64;
    c.bench_function("sequence_store_admit_answer_replay", |b| {
        b.iter(|| {
            seq += 1;
            let key = &keys[(seq % 10_000) as usize];
            let s = seq / 10_000 + 1;
            if let Decision::Wait(w) = store.begin(key, s, None) {
                store.finish(key, w.ticket, Some((answer(s), None)));
            }
            black_box(store.begin(key, s, None));
        })
    });
}

fn response_building(c: &mut Criterion) {
    let answer = Arc::new(Answer {
        sequence: 42,
        body: Bytes::from(vec![b'x'; 250]),
        ids: MessageIds::One("3f1c2d4e-1111-2222-3333-444455556666".into()),
        is_error: false,
    });
    c.bench_function("answer_response", |b| {
        b.iter(|| PollOutcome::Replay(black_box(answer.clone())).into_response())
    });
}

fn topic_routing(c: &mut Criterion) {
    c.bench_function("topic_match_wildcards", |b| {
        b.iter(|| {
            topic_matches(
                black_box("longpoll.event.#.comments.*"),
                black_box("longpoll.event.bug.1234.comments.5678"),
            )
        })
    });
}

criterion_group!(
    benches,
    query_parsing,
    sequence_store,
    response_building,
    topic_routing
);
criterion_main!(benches);
