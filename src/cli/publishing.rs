//! `longpoll-gateway subscribe` and `longpoll-gateway emit`: the publishing side
//! from a shell, against RabbitMQ directly (`--broker`) or a running gateway's
//! management API (`--gateway` + `--api-token`).

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value, json};
use tracing::Instrument;

use crate::broker::Broker;
use crate::broker::amqp::{AmqpBroker, AmqpOptions};
use crate::config::value::{self, Setting};
use crate::config::{BrokerUrl, ExchangeType, Settings, parse_duration};
use crate::publish::{Publisher, ResumedSubscription, Subscription};
use crate::telemetry::Metrics;

/// Where the command sends its request.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// RabbitMQ to talk to directly (`amqp://user:pass@host:5672/vhost`).
    #[arg(
        long,
        value_name = "URL",
        env = "LONGPOLL_BROKER",
        conflicts_with = "gateway"
    )]
    pub broker: Option<String>,
    /// A running gateway whose management API to call (e.g. `http://127.0.0.1:8080`).
    #[arg(long, value_name = "URL", env = "LONGPOLL_GATEWAY")]
    pub gateway: Option<String>,
    /// The gateway's management API token (with `--gateway`).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "LONGPOLL_API_TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,
    /// Exchange (with `--broker`).
    #[arg(
        long,
        value_name = "NAME",
        env = "LONGPOLL_EXCHANGE",
        default_value = "longpoll"
    )]
    pub exchange: String,
    /// Exchange type used when the exchange must be declared (with `--broker`).
    #[arg(
        long,
        value_name = "TYPE",
        env = "LONGPOLL_EXCHANGE_TYPE",
        default_value = "topic"
    )]
    pub exchange_type: String,
    /// The history stream (with `--broker`; default `longpoll.history`):
    /// declared if absent and bound to the exchange, as the gateway does, so
    /// that what is published is in the history; `subscribe --resume-after` reads it.
    #[arg(long, value_name = "NAME", env = "LONGPOLL_HISTORY_STREAM",
          value_parser = Setting(value::stream_name))]
    pub history_stream: Option<String>,
    /// The history's reach when the stream must be declared (with `--broker`;
    /// default `1h`; `0` = no history).
    #[arg(long, value_name = "DURATION", env = "LONGPOLL_HISTORY_MAX_AGE",
          value_parser = Setting(value::history_max_age))]
    pub history_max_age: Option<Duration>,
    /// The history's size bound when the stream must be declared (with
    /// `--broker`; default `1GB`).
    #[arg(long, value_name = "BYTES", env = "LONGPOLL_HISTORY_MAX_BYTES",
          value_parser = Setting(value::byte_size))]
    pub history_max_bytes: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct SubscribeArgs {
    #[command(flatten)]
    pub target: Target,
    /// Queue name prefix (with `--broker`).
    #[arg(
        long,
        value_name = "PREFIX",
        env = "LONGPOLL_QUEUE_PREFIX",
        default_value = "longpoll.subscribe."
    )]
    pub queue_prefix: String,
    /// Delete the queue after this long unused (with `--broker`).
    #[arg(
        long,
        value_name = "DURATION",
        env = "LONGPOLL_SUBSCRIPTION_EXPIRY",
        default_value = "300s"
    )]
    pub subscription_expiry: String,
    /// The poll URI to print (with `--broker`; default `/`, the same origin).
    #[arg(long, value_name = "URL", env = "LONGPOLL_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Replay first every retained event for the keys published after this
    /// message id (the last one the page received); prints `resumed` and `gap` too.
    #[arg(long, value_name = "MESSAGE_ID")]
    pub resume_after: Option<String>,
    /// Event keys to bind the subscription to.
    #[arg(required = true, value_name = "EVENT_KEY")]
    pub event_keys: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct EmitArgs {
    #[command(flatten)]
    pub target: Target,
    /// The event key.
    #[arg(value_name = "EVENT_KEY")]
    pub event_key: String,
    /// The event: a JSON object.
    #[arg(value_name = "JSON-OBJECT")]
    pub payload: String,
}

/// A failure reported as one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(String);

fn fail(msg: impl Into<String>) -> CliError {
    CliError(msg.into())
}

enum Via {
    Broker(AmqpBroker),
    Gateway {
        base: String,
        token: String,
        client: reqwest::Client,
    },
}

fn connect(target: &Target, base: &Settings) -> Result<Via, CliError> {
    match (&target.broker, &target.gateway) {
        (Some(url), _) => {
            let url = match BrokerUrl::parse(url)
                .map_err(|e| fail(format!("invalid --broker: {e}")))?
            {
                BrokerUrl::Amqp(url) => url,
                BrokerUrl::Memory => {
                    return Err(fail(
                        "--broker memory:// lives inside a gateway process; use --gateway URL --api-token T",
                    ));
                }
            };
            let broker = AmqpBroker::start(
                AmqpOptions {
                    connections: 1,
                    channel_pool_size: 2,
                    ..AmqpOptions::from_settings(base, url)
                },
                Arc::new(Metrics::new()),
            )
            .map_err(|e| fail(e.to_string()))?;
            Ok(Via::Broker(broker))
        }
        (None, Some(gateway)) => {
            let token = target
                .api_token
                .clone()
                .ok_or_else(|| fail("--gateway needs --api-token (or LONGPOLL_API_TOKEN)"))?;
            let base = gateway.trim_end_matches('/').to_owned();
            url::Url::parse(&base).map_err(|e| fail(format!("invalid --gateway: {e}")))?;
            crate::install_tls_provider();
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| fail(e.to_string()))?;
            Ok(Via::Gateway {
                base,
                token,
                client,
            })
        }
        (None, None) => Err(fail(
            "say where to send it: --broker amqp://... or --gateway URL --api-token T",
        )),
    }
}

fn base_settings(target: &Target) -> Result<Settings, CliError> {
    let exchange_type = match target.exchange_type.as_str() {
        "topic" => ExchangeType::Topic,
        "direct" => ExchangeType::Direct,
        other => {
            return Err(fail(format!(
                "invalid --exchange-type {other:?}: expected topic or direct"
            )));
        }
    };
    let mut settings = Settings {
        exchange: target.exchange.clone(),
        exchange_type,
        ..Settings::default()
    };
    let history = &mut settings.history;
    if let Some(stream) = &target.history_stream {
        history.stream = stream.clone();
    }
    history.max_age = target.history_max_age.unwrap_or(history.max_age);
    history.max_bytes = target.history_max_bytes.unwrap_or(history.max_bytes);
    Ok(settings)
}

async fn call_gateway(
    client: &reqwest::Client,
    token: &str,
    url: String,
    body: &Value,
) -> Result<Value, CliError> {
    // The API request carries this command's trace context.
    let mut trace = Vec::new();
    crate::telemetry::traces::inject(&crate::telemetry::traces::current_context(), &mut trace);
    let mut request = client.post(&url).bearer_auth(token).json(body);
    for (k, v) in trace {
        request = request.header(k, v);
    }
    let response = request
        .send()
        .await
        .map_err(|e| fail(format!("cannot reach the gateway: {}", describe(&e))))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let why = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no details");
        return Err(fail(format!(
            "the gateway answered {}: {why}",
            status.as_u16()
        )));
    }
    Ok(value)
}

/// A transport error in a few words; reqwest's own message carries the URL.
fn describe(e: &reqwest::Error) -> String {
    if e.is_connect() {
        return "connection refused or unreachable".into();
    }
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut last = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

/// `longpoll-gateway subscribe`: prints `{"key": ..., "uri": ...}`, and with
/// `--resume-after` `{"key", "uri", "resumed", "gap"}`.
pub async fn subscribe(args: SubscribeArgs) -> Result<(), CliError> {
    let mut settings = base_settings(&args.target)?;
    settings.queue_prefix = args.queue_prefix.clone();
    settings.subscription_expiry = parse_duration(&args.subscription_expiry)
        .map_err(|e| fail(format!("invalid --subscription-expiry: {e}")))?;
    let uri = args.public_url.clone().unwrap_or_else(|| "/".into());
    let printed = match connect(&args.target, &settings)? {
        Via::Broker(broker) => {
            let publisher = Publisher::new(Arc::new(broker.clone()), settings.queue_prefix.clone());
            let printed = match &args.resume_after {
                Some(after) => publisher
                    .subscribe_resuming(&args.event_keys, after)
                    .await
                    .map(|r| {
                        Printed::Resumed(ResumedSubscription {
                            key: r.key,
                            uri,
                            resumed: r.resumed,
                            gap: r.gap,
                        })
                    }),
                None => publisher
                    .subscribe(&args.event_keys)
                    .await
                    .map(|key| Printed::Plain(Subscription { key, uri })),
            };
            broker.close().await;
            printed.map_err(|e| fail(e.to_string()))?
        }
        Via::Gateway {
            base,
            token,
            client,
        } => {
            let mut body = json!({ "event_keys": args.event_keys });
            if let Some(after) = &args.resume_after {
                body["resume_after"] = json!(after);
            }
            let value = call_gateway(
                &client,
                &token,
                format!("{base}/api/v1/subscriptions"),
                &body,
            )
            .await?;
            let unexpected =
                |e: serde_json::Error| fail(format!("unexpected answer from the gateway: {e}"));
            // Read into the type of the answer expected, so that what is
            // printed is that shape and nothing else.
            if args.resume_after.is_some() {
                Printed::Resumed(serde_json::from_value(value).map_err(unexpected)?)
            } else {
                Printed::Plain(serde_json::from_value(value).map_err(unexpected)?)
            }
        }
    };
    println!("{}", serde_json::to_string(&printed).unwrap_or_default());
    Ok(())
}

/// What `subscribe` prints.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Printed {
    Plain(Subscription),
    Resumed(ResumedSubscription),
}

/// `longpoll-gateway emit`: prints `{"event_key": ..., "message_id": ...}`.
/// Runs in a `longpoll-gateway emit` span: the published message carries its
/// trace context (and with `--gateway`, the API request does too).
pub async fn emit(args: EmitArgs) -> Result<(), CliError> {
    let span = tracing::info_span!("longpoll-gateway emit", event_key = %args.event_key);
    emit_in_span(args).instrument(span).await
}

async fn emit_in_span(args: EmitArgs) -> Result<(), CliError> {
    let payload: Map<String, Value> = match serde_json::from_str::<Value>(&args.payload) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(fail("the event must be a JSON object")),
        Err(e) => return Err(fail(format!("the event is not valid JSON: {e}"))),
    };
    crate::broker::validate_event_key(&args.event_key, false)
        .map_err(|e| fail(format!("invalid event key: {e}")))?;
    let settings = base_settings(&args.target)?;
    let out = match connect(&args.target, &settings)? {
        Via::Broker(broker) => {
            let publisher = Publisher::new(Arc::new(broker.clone()), settings.queue_prefix.clone());
            let result = publisher.emit(&args.event_key, payload).await;
            broker.close().await;
            let message_id = result.map_err(|e| fail(e.to_string()))?;
            json!({"event_key": args.event_key, "message_id": message_id})
        }
        Via::Gateway {
            base,
            token,
            client,
        } => {
            let encoded: String =
                url::form_urlencoded::byte_serialize(args.event_key.as_bytes()).collect();
            call_gateway(
                &client,
                &token,
                format!("{base}/api/v1/events/{encoded}"),
                &Value::Object(payload),
            )
            .await?
        }
    };
    println!("{out}");
    Ok(())
}
