//! The results table (markdown), written to target/cluster/results.md and printed.

use std::fmt::Write as _;

use crate::scenario::{Outcome, Scale};

pub fn markdown(scale: &Scale, outcomes: &[Outcome], total: std::time::Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Cluster test, {} scale: {} subscriptions × {} events, 3 replicas behind nginx and haproxy\n",
        scale.name, scale.subscriptions, scale.events
    );
    let _ = writeln!(
        s,
        "| scenario | events | delivered | lost | duplicates shown to the app | retries (client / proxy) | replays | redeliveries | wall time |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {:.1} s |",
            o.spec.title,
            o.events,
            o.delivered,
            o.lost,
            o.duplicates_shown,
            o.retries.retries(),
            o.proxy_retries,
            o.gateway.replays,
            o.gateway.redelivered,
            o.wall.as_secs_f64()
        );
    }
    let _ = writeln!(s, "\nTotal {:.1} s.\n", total.as_secs_f64());
    let _ = writeln!(
        s,
        "Retries: the clients' (rule 5: network errors, 502, 503; and 409 Stale) / the polls \
         the proxy passed to another server (nginx's `proxy_next_upstream`, haproxy's `retry-on` \
         with `option redispatch`, from their access logs). Replays \
         and redeliveries: the replicas' `longpoll_replays_total` and \
         `longpoll_messages_redelivered_total`, summed over every replica (a SIGKILLed replica \
         counts up to its last scrape). Lost: events a client never got; duplicates shown: \
         an event the application saw twice (message ids are deduplicated by the client).\n"
    );
    let _ = writeln!(
        s,
        "| scenario | client retries: network / 502 / 503 / stale | re-polls 408/504 | proxy tried another server | answers cut | duplicates dropped by id | out of order | gateway delivered / skipped / requeued / supersedes | publish retries |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---|---:|");
    for o in outcomes {
        let r = &o.retries;
        let _ = writeln!(
            s,
            "| {} | {} / {} / {} / {} | {} | {} | {} | {} | {} | {} / {} / {} / {} | {} |",
            o.spec.title,
            r.network,
            r.http_502,
            r.http_503,
            r.stale,
            r.timeouts,
            o.proxy_retries,
            o.cut,
            o.duplicates_dropped,
            o.out_of_order,
            o.gateway.delivered,
            o.gateway.skipped,
            o.gateway.requeued,
            o.gateway.supersedes,
            o.publish_retries
        );
    }
    let several: Vec<String> = outcomes
        .iter()
        .map(|o| {
            format!(
                "{} {} ({})",
                o.spec.title.split(')').next().unwrap_or_default(),
                o.several.0,
                o.several.1
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "\nAnswers of several messages (every other subscription polls with `max=5` and \
         polls again only once two more rounds are out), per scenario: answers (messages in them): {}.",
        several.join(", ")
    );
    let browsers: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.browser.as_ref().map(|b| (o, b)))
        .collect();
    if !browsers.is_empty() {
        let _ = writeln!(s);
        for (o, b) in browsers {
            match &b.skipped {
                Some(why) => {
                    let _ = writeln!(s, "Browser clients in {}: SKIPPED ({why}).", o.spec.title);
                }
                None => {
                    let _ = writeln!(
                        s,
                        "Browser clients in {}: {} pages of headless Chromium running the real \
                         longpoll.js: {} events, {} delivered, {} lost, {} duplicates shown, {} \
                         out of order.",
                        o.spec.title,
                        b.clients,
                        b.events,
                        b.delivered,
                        b.lost,
                        b.duplicates_shown,
                        b.out_of_order
                    );
                }
            }
        }
    }
    let notes: Vec<_> = outcomes.iter().filter(|o| !o.notes.is_empty()).collect();
    if !notes.is_empty() {
        let _ = writeln!(s, "\nWhat the faults did:\n");
        for o in notes {
            let _ = writeln!(s, "- {}: {}", o.spec.title, o.notes.join("; "));
        }
    }
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.failures.is_empty()).collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "\nFAILURES:\n");
        for o in failed {
            for f in &o.failures {
                let _ = writeln!(s, "- {}: {f}", o.spec.title);
            }
        }
    }
    s
}
