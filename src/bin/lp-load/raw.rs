//! Targets `raw-consume` and `raw-pipe`: RabbitMQ straight through lapin, no HTTP.
//!
//! - `raw-consume` is what a naive gateway does for every poll, on one queue per
//!   subscriber: `basic.consume` (prefetch 1) → one message → `basic.ack` →
//!   `basic.cancel` (txlongpoll's order; `--raw-cancel-first` swaps the last two).
//!   Each subscriber has a channel of its own, spread over `--raw-connections`.
//! - `raw-pipe` is the AMQP ceiling on this machine: one queue, one consumer
//!   with prefetch `--raw-prefetch`, acking every message on its own.
//! - `raw-queues` is the gateway's topology without HTTP: one queue per
//!   subscriber with one consumer (prefetch 1) each, kept for the whole run and
//!   acking every message; channels spread over `--raw-connections`.
//!
//! Events go through a topic exchange bound per queue, published non-persistent
//! with publisher confirms and the properties the gateway sets, `--publishers`
//! confirms in flight — what the gateway's management API does per event.
//! Queues are exclusive (they vanish with lp-load's connections) and expire
//! after 2 minutes unused in any case.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::task::JoinHandle;

use crate::BoxError;
use crate::cli::{Args, TargetKind};
use crate::stats::{self, Counters, now_us};
use crate::traffic::{Ctx, Publish, PublishPlan, publish_loop};

pub struct Raw {
    url: String,
    /// raw-consume, raw-pipe or raw-queues.
    target: TargetKind,
    connections: usize,
    prefetch: u16,
    cancel_first: bool,
    publishers: usize,
    pub pids: Vec<u32>,
    conns: Vec<Connection>,
    publishers_: Option<AmqpPublishers>,
    exchange: String,
    queues: Vec<(Channel, String)>,
    consuming: Arc<AtomicUsize>,
}

/// Publisher-confirm channels on a connection of their own, shared round-robin
/// by the publish tasks (`--publishers` confirms in flight).
pub struct AmqpPublishers {
    conn: Connection,
    channels: Vec<Channel>,
    exchange: String,
    next: AtomicUsize,
}

pub async fn connect(url: &str, name: &str) -> Result<Connection, BoxError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Ok(Connection::connect(url, props).await?)
}

impl AmqpPublishers {
    /// Publishes to `exchange`, which exists (the gateway declared it) or, with
    /// `declare`, is declared here (a topic exchange deleted with its last binding).
    pub async fn open(
        url: &str,
        exchange: &str,
        publishers: usize,
        declare: bool,
    ) -> Result<AmqpPublishers, BoxError> {
        let conn = connect(url, "lp-load publisher").await?;
        let mut channels = Vec::new();
        for _ in 0..publishers.clamp(1, 16) {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            channels.push(ch);
        }
        if declare {
            channels[0]
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        auto_delete: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(AmqpPublishers {
            conn,
            channels,
            exchange: exchange.to_owned(),
            next: AtomicUsize::new(0),
        })
    }

    pub fn spawn(&self, ctx: &Arc<Ctx>, plan: PublishPlan) -> JoinHandle<()> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let p = AmqpPublisher {
            ch: self.channels[i % self.channels.len()].clone(),
            exchange: self.exchange.clone(),
            ctx: ctx.clone(),
        };
        tokio::spawn(publish_loop(p, ctx.clone(), plan))
    }

    pub async fn close(&self) {
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.conn.close(200, "bye".into())).await;
    }
}

impl Raw {
    pub fn new(args: &Args) -> Raw {
        let pids = if args.pid.is_empty() {
            stats::find_rabbitmq().into_iter().collect()
        } else {
            args.pid.clone()
        };
        Raw {
            url: args.amqp.clone(),
            target: args.target,
            connections: args.raw_connections.max(1),
            prefetch: args.raw_prefetch.max(1),
            cancel_first: args.raw_cancel_first,
            publishers: args.publishers.max(1),
            pids,
            conns: Vec::new(),
            publishers_: None,
            exchange: String::new(),
            queues: Vec::new(),
            consuming: Arc::default(),
        }
    }

    pub async fn prepare(&mut self, ctx: &Arc<Ctx>, subscribers: usize) -> Result<(), BoxError> {
        let pipe = self.target == TargetKind::RawPipe;
        let n_conns = if pipe { 1 } else { self.connections };
        for i in 0..n_conns {
            self.conns
                .push(connect(&self.url, &format!("lp-load consumers {i}")).await?);
        }
        self.exchange = format!("lpload.raw.{}", ctx.run);
        self.publishers_ =
            Some(AmqpPublishers::open(&self.url, &self.exchange, self.publishers, true).await?);

        let queues = if pipe { 1 } else { subscribers };
        let prefetch = if pipe { self.prefetch } else { 1 };
        let exchange = self.exchange.clone();
        let mut made = futures_util::stream::iter(0..queues)
            .map(|i| {
                let conn = &self.conns[i % self.conns.len()];
                let (exchange, ctx) = (exchange.clone(), ctx.clone());
                async move {
                    let ch = conn.create_channel().await?;
                    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
                    let queue = format!("lpload.raw.{}.{i}", ctx.run);
                    let mut qargs = FieldTable::default();
                    qargs.insert("x-expires".into(), AMQPValue::LongLongInt(120_000));
                    ch.queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions {
                            exclusive: true,
                            ..Default::default()
                        },
                        qargs,
                    )
                    .await?;
                    ch.queue_bind(
                        queue.as_str().into(),
                        exchange.as_str().into(),
                        ctx.event_key(i).as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                    Ok::<_, lapin::Error>((i, ch, queue))
                }
            })
            .buffer_unordered(64);
        let mut slots: Vec<Option<(Channel, String)>> = (0..queues).map(|_| None).collect();
        while let Some(r) = made.next().await {
            let (i, ch, q) = r?;
            slots[i] = Some((ch, q));
        }
        drop(made);
        self.queues = slots.into_iter().flatten().collect();
        Ok(())
    }

    /// Consumers waiting for a message now.
    pub fn held(&self) -> usize {
        self.consuming.load(Ordering::Relaxed)
    }

    pub fn spawn_subscribers(&self, ctx: &Arc<Ctx>) -> Vec<JoinHandle<()>> {
        self.queues
            .iter()
            .enumerate()
            .map(|(i, (ch, q))| {
                let (ch, q, ctx, consuming) =
                    (ch.clone(), q.clone(), ctx.clone(), self.consuming.clone());
                if self.target != TargetKind::RawConsume {
                    tokio::spawn(kept_consumer(ch, q, i, ctx, consuming))
                } else {
                    tokio::spawn(consume_per_poll(
                        ch,
                        q,
                        i,
                        ctx,
                        consuming,
                        self.cancel_first,
                    ))
                }
            })
            .collect()
    }

    pub fn spawn_publisher(&self, ctx: &Arc<Ctx>, plan: PublishPlan) -> JoinHandle<()> {
        match &self.publishers_ {
            Some(p) => p.spawn(ctx, plan),
            None => tokio::spawn(async {}),
        }
    }

    pub async fn finish(self) {
        for c in &self.conns {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.close(200, "bye".into())).await;
        }
        if let Some(p) = &self.publishers_ {
            p.close().await;
        }
    }
}

struct AmqpPublisher {
    ch: Channel,
    exchange: String,
    ctx: Arc<Ctx>,
}

impl Publish for AmqpPublisher {
    async fn publish(&mut self, key_index: usize, n: u64) -> bool {
        let body = self.ctx.body(n, key_index, true);
        let key = self.ctx.event_key(key_index);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut headers = FieldTable::default();
        headers.insert(
            "timestamp_in_ms".into(),
            AMQPValue::LongLongInt(i64::try_from(now.as_millis()).unwrap_or(i64::MAX)),
        );
        // What the gateway's own publisher sets.
        let props = BasicProperties::default()
            .with_headers(headers)
            .with_message_id(uuid::Uuid::new_v4().to_string().into())
            .with_content_type("application/json".into())
            .with_timestamp(now.as_secs())
            .with_delivery_mode(1);
        let confirm = match self
            .ch
            .basic_publish(
                self.exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
        {
            Ok(c) => c,
            Err(_) => return false,
        };
        matches!(confirm.await, Ok(Confirmation::Ack(_)))
    }
}

/// One subscriber of a naive gateway: a consumer per poll.
async fn consume_per_poll(
    ch: Channel,
    queue: String,
    index: usize,
    ctx: Arc<Ctx>,
    consuming: Arc<AtomicUsize>,
    cancel_first: bool,
) {
    let c = &ctx.counters;
    let mut poll: u64 = 0;
    while !ctx.stopped() {
        poll += 1;
        let tag = format!("lpload-{index}-{poll}");
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        let mut consumer = match consumer {
            Ok(c) => c,
            Err(_) => {
                Counters::inc(&c.amqp_errors);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        consuming.fetch_add(1, Ordering::Relaxed);
        let next = consumer.next().await;
        consuming.fetch_sub(1, Ordering::Relaxed);
        let Some(Ok(delivery)) = next else {
            Counters::inc(&c.amqp_errors);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let received = now_us();
        Counters::inc(&c.delivered);
        Counters::inc(&c.answers);
        ctx.latencies.record(&delivery.data, received);
        let settled = if cancel_first {
            let cancel = ch
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
            let ack = delivery.acker.ack(BasicAckOptions::default()).await;
            cancel.is_ok() && ack.is_ok()
        } else {
            let ack = delivery.acker.ack(BasicAckOptions::default()).await;
            let cancel = ch
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
            cancel.is_ok() && ack.is_ok()
        };
        if !settled {
            Counters::inc(&c.amqp_errors);
        }
        // Deliveries that reached the consumer between the ack and the cancel-ok
        // go back to the queue (the stream ends at the cancel-ok).
        while let Ok(Some(Ok(stray))) =
            tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
        {
            Counters::inc(&c.strays_requeued);
            let _ = stray
                .acker
                .reject(BasicRejectOptions { requeue: true })
                .await;
        }
    }
}

/// A consumer kept for the whole run, acking each message as it comes: the
/// pipe's one, or one of `raw-queues`'s.
async fn kept_consumer(
    ch: Channel,
    queue: String,
    index: usize,
    ctx: Arc<Ctx>,
    consuming: Arc<AtomicUsize>,
) {
    let c = &ctx.counters;
    let tag = format!("lpload-kept-{index}");
    let mut consumer = match ch
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    {
        Ok(c) => c,
        Err(_) => {
            Counters::inc(&c.amqp_errors);
            return;
        }
    };
    consuming.fetch_add(1, Ordering::Relaxed);
    while let Some(next) = consumer.next().await {
        match next {
            Ok(d) => {
                let received = now_us();
                Counters::inc(&c.delivered);
                Counters::inc(&c.answers);
                ctx.latencies.record(&d.data, received);
                if d.acker.ack(BasicAckOptions::default()).await.is_err() {
                    Counters::inc(&c.amqp_errors);
                }
            }
            Err(_) => {
                Counters::inc(&c.amqp_errors);
                break;
            }
        }
    }
    consuming.fetch_sub(1, Ordering::Relaxed);
}
