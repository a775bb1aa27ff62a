//! Target `gateway`: subscriptions and events through the management API, polls
//! following the contract's client rules.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::Method;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::BoxError;
use crate::cli::{Args, PublishVia};
use crate::http1::{Conn, Endpoint};
use crate::raw::AmqpPublishers;
use crate::stats::{Counters, now_us};
use crate::traffic::{Backoff, Ctx, HttpPublisher, PublishPlan, publish_loop};

pub struct Gateway {
    client: reqwest::Client,
    base: String,
    admin: Option<String>,
    token: String,
    /// The public endpoint (publishing) and the poll endpoint (from the `uri`
    /// the API hands out, when it names the address we were given).
    api: Arc<Endpoint>,
    poll: Arc<Endpoint>,
    keys: Vec<String>,
    pub pids: Vec<u32>,
    /// Each poll's `max` (--max).
    max: u8,
    /// With --publish-via amqp: (RabbitMQ URL, the gateway's exchange, publishers).
    via_amqp: Option<(String, String, usize)>,
    amqp: Option<AmqpPublishers>,
}

impl Gateway {
    pub fn new(args: &Args) -> Result<Gateway, BoxError> {
        let token = args
            .api_token
            .clone()
            .ok_or("--target gateway needs --api-token (or LONGPOLL_API_TOKEN)")?;
        let base = args.gateway.trim_end_matches('/').to_owned();
        let api = Arc::new(Endpoint::parse(&format!("{base}/"))?);
        Ok(Gateway {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(usize::MAX)
                .timeout(Duration::from_secs(60))
                .build()?,
            poll: api.clone(),
            api,
            base,
            admin: args.admin.clone(),
            token,
            keys: Vec::new(),
            pids: args.pid.clone(),
            max: args.max,
            via_amqp: (args.publish_via == PublishVia::Amqp)
                .then(|| (args.amqp.clone(), args.exchange.clone(), args.publishers)),
            amqp: None,
        })
    }

    pub async fn prepare(&mut self, ctx: &Arc<Ctx>, subscribers: usize) -> Result<(), BoxError> {
        let mut uri = format!("{}/", self.base);
        let mut created = futures_util::stream::iter(0..subscribers)
            .map(|i| {
                let client = self.client.clone();
                let url = format!("{}/api/v1/subscriptions", self.base);
                let token = self.token.clone();
                let key = ctx.event_key(i);
                async move {
                    let v = create_subscription(&client, &url, &token, &key).await?;
                    Ok::<_, BoxError>((i, v))
                }
            })
            .buffer_unordered(64);
        let mut keys = vec![String::new(); subscribers];
        while let Some(r) = created.next().await {
            let (i, v) = r?;
            keys[i] = v["key"].as_str().unwrap_or_default().to_owned();
            if let Some(u) = v["uri"].as_str() {
                uri = u.to_owned();
            }
        }
        drop(created);
        self.keys = keys;
        if let Some((url, exchange, publishers)) = &self.via_amqp {
            self.amqp = Some(AmqpPublishers::open(url, exchange, *publishers, false).await?);
        }
        // The uri handed out names the public host; keep the address we were given.
        if uri.starts_with(&self.base) {
            self.poll = Arc::new(Endpoint::parse(&uri)?);
        }
        Ok(())
    }

    pub fn spawn_subscribers(&self, ctx: &Arc<Ctx>) -> Vec<JoinHandle<()>> {
        self.keys
            .iter()
            .map(|key| {
                let conn = ctx.conn(self.poll.clone());
                tokio::spawn(subscriber(conn, key.clone(), self.max, ctx.clone()))
            })
            .collect()
    }

    pub async fn held(&self) -> Option<usize> {
        let admin = self.admin.as_ref()?;
        let text = self
            .client
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let held = text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == "longpoll_polls_held")
                .then(|| v.parse::<f64>().ok())
                .flatten()
        });
        // Unknown yet (the metric not exported) counts as none held.
        Some(held.unwrap_or(0.0) as usize)
    }

    pub fn spawn_publisher(&self, ctx: &Arc<Ctx>, plan: PublishPlan) -> JoinHandle<()> {
        if let Some(amqp) = &self.amqp {
            return amqp.spawn(ctx, plan);
        }
        let conn = ctx.conn(self.api.clone());
        let headers = conn.headers(&[
            ("Authorization", &format!("Bearer {}", self.token)),
            ("Content-Type", "application/json"),
        ]);
        let p = HttpPublisher {
            conn,
            headers,
            path: format!("{}api/v1/events/", self.api.path),
            with_event_key: false,
            ctx: ctx.clone(),
        };
        tokio::spawn(publish_loop(p, ctx.clone(), plan))
    }

    /// Closes the AMQP publishers and deletes the subscriptions made for the run,
    /// as a tidy client does: left to expire, their RabbitMQ queues would be
    /// deleted by the broker `--subscription-expiry` later, in the middle of
    /// whatever runs next on the machine. Best effort, and bounded in time.
    pub async fn finish(self) {
        if let Some(amqp) = &self.amqp {
            amqp.close().await;
        }
        let deletes = futures_util::stream::iter(self.keys.iter().filter(|k| !k.is_empty()))
            .map(|key| {
                let request = self
                    .client
                    .delete(format!("{}/api/v1/subscriptions/{key}", self.base))
                    .bearer_auth(&self.token)
                    .timeout(Duration::from_secs(10));
                async move {
                    let _ = request.send().await;
                }
            })
            .buffer_unordered(64)
            .for_each(|()| std::future::ready(()));
        let _ = tokio::time::timeout(Duration::from_secs(60), deletes).await;
    }
}

/// POST /api/v1/subscriptions, retried (as a client would) while the gateway
/// answers 503 or the connection fails.
async fn create_subscription(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    event_key: &str,
) -> Result<Value, BoxError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut attempts = 0;
    loop {
        attempts += 1;
        let sent = client
            .post(url)
            .bearer_auth(token)
            .json(&json!({ "event_keys": [event_key] }))
            .send()
            .await;
        let retry_after = match sent {
            Ok(r) if r.status().is_success() => return Ok(r.json::<Value>().await?),
            Ok(r) if r.status().as_u16() == 503 => r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .map(Duration::from_secs),
            Ok(r) => return Err(format!("POST {url}: {}", r.status()).into()),
            Err(e) if attempts >= 30 => return Err(e.into()),
            Err(_) => None,
        };
        if attempts >= 30 {
            return Err(format!("POST {url}: still 503 after {attempts} attempts").into());
        }
        backoff.wait(retry_after).await;
    }
}

/// One subscriber following the client rules until stopped; with `max` > 1,
/// an answer that says `x-longpoll-count` is that many events.
async fn subscriber(mut conn: Conn, key: String, max: u8, ctx: Arc<Ctx>) {
    let c = &ctx.counters;
    let mut sequence: u64 = 1;
    let mut seen: HashSet<String> = HashSet::new();
    let mut seen_order: VecDeque<String> = VecDeque::new();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let path = conn.endpoint().path.clone();
    let no_headers = conn.headers(&[]);
    while !ctx.stopped() {
        // Proof of receipt: the last ids shown, so that an answer lost in flight
        // is requeued by whichever replica the retry reaches.
        let mut target = format!("{path}?uuid={key}&sequence={sequence}");
        if max > 1 {
            target.push_str(&format!("&max={max}"));
        }
        for (i, id) in seen_order.iter().rev().take(8).enumerate() {
            target.push_str(if i == 0 { "&seen=" } else { "," });
            target.push_str(id);
        }
        let response = match conn
            .send(Method::GET, &target, &no_headers, Bytes::new())
            .await
        {
            Ok(r) => r,
            Err(_) => {
                Counters::inc(&c.network_errors);
                backoff.wait(None).await;
                continue;
            }
        };
        match response.status {
            200 | 400 => {
                let received = now_us();
                backoff.reset();
                sequence += 1;
                let ids: Vec<String> = match response.header("x-longpoll-count") {
                    Some(_) => response
                        .header("x-longpoll-message-ids")
                        .unwrap_or_default()
                        .split(',')
                        .map(str::to_owned)
                        .collect(),
                    None => vec![
                        response
                            .header("x-longpoll-message-id")
                            .unwrap_or_default()
                            .to_owned(),
                    ],
                };
                let mut new = 0;
                for id in ids {
                    if !seen.insert(id.clone()) {
                        Counters::inc(&c.duplicates);
                        continue;
                    }
                    new += 1;
                    seen_order.push_back(id);
                    if seen_order.len() > 1000
                        && let Some(old) = seen_order.pop_front()
                    {
                        seen.remove(&old);
                    }
                    Counters::inc(&c.delivered);
                }
                if new > 0 {
                    Counters::inc(&c.answers);
                    ctx.latencies.record_each(&response.body, received);
                }
            }
            408 | 504 => Counters::inc(&c.timeouts),
            404 => {
                Counters::inc(&c.gone_404);
                break;
            }
            409 => {
                Counters::inc(&c.conflicts_409);
                match response
                    .header("x-longpoll-sequence")
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    Some(last) => sequence = last + 1,
                    None => break, // superseded
                }
            }
            503 => {
                Counters::inc(&c.unavailable_503);
                let retry_after = response
                    .header("retry-after")
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(Duration::from_secs);
                backoff.wait(retry_after).await;
            }
            _ => {
                Counters::inc(&c.other_errors);
                backoff.wait(None).await;
            }
        }
    }
}
